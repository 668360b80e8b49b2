#!/usr/bin/env bash
# Checks everything under deploy/ without a cluster, a registry or Docker:
#
#   - Kubernetes manifests (base and overlays) against the Kubernetes schemas, and
#     against the code they deploy (subcommands, configuration keys, ports, metrics):
#     deploy/check_manifests.py;
#   - the kustomize output too, when kubectl or kustomize is installed;
#   - the Prometheus rules (promtool check rules) and their unit tests
#     (promtool test rules), and the dashboard's PromQL;
#   - the container image: built locally (buildah, from scratch: no registry needed)
#     and started (podman) against the local Postgres and RabbitMQ: deploy/image_check.sh.
#
# Installs what it needs when missing: kubernetes-validate (pip), promtool (Debian's
# prometheus package) and podman, buildah and runc (Debian packages; root needed). Runs from any directory.
#
# Ends with "deploy checks: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0

# step NAME COMMAND...: runs one check, shows its output only when it fails.
step() {
  local name="$1"
  shift
  if "$@" >"$work/step.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok    $name"
  else
    failed=$((failed + 1))
    echo "FAIL  $name"
    sed 's/^/      /' "$work/step.log"
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "need root for: $*" >&2
    return 1
  fi
}

# --- tools ----------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || { echo "python3 is required" >&2; exit 2; }

python=python3
if ! "$python" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  echo "installing kubernetes-validate (pip)"
  if ! "$python" -m pip install --quiet kubernetes-validate pyyaml; then
    # A system Python that refuses pip installs (PEP 668): use a private venv.
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/qr3-deploy-check/venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    python="$venv/bin/python"
    "$python" -m pip install --quiet kubernetes-validate pyyaml
  fi
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  as_root apt-get update -qq
  # Only the package: its service is not started where no init system runs it.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# --- kustomize output, when a renderer is at hand ---------------------------------------------
rendered=()
# render DIR OUT: kustomize's output to OUT (warnings go to the step's log).
render() {
  if command -v kustomize >/dev/null 2>&1; then
    kustomize build "$1" >"$2"
  else
    kubectl kustomize "$1" >"$2"
  fi
}
if command -v kustomize >/dev/null 2>&1 || command -v kubectl >/dev/null 2>&1; then
  for dir in "$here/kubernetes/base" "$here"/kubernetes/overlays/*/; do
    dir="${dir%/}"
    label="${dir#"$here/kubernetes/"}"
    out="$work/$(echo "$label" | tr '/' '-').yaml"
    step "kustomize build $label" render "$dir" "$out"
    [ -s "$out" ] && rendered+=(--rendered "$label=$out")
  done
else
  echo "skip  kustomize build (neither kustomize nor kubectl installed; the overlays are still checked)"
fi

# --- manifests against the code ---------------------------------------------------------------
set +e
"$python" "$here/check_manifests.py" ${rendered[@]+"${rendered[@]}"} --promql-out "$work/dashboard-rules.yml" \
  | tee "$work/manifests.log" | grep -v '^ok '
set -e
summary="$(tail -n 1 "$work/manifests.log")"
if [[ "$summary" =~ ^check_manifests:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  passed=$((passed + BASH_REMATCH[1]))
  failed=$((failed + BASH_REMATCH[2]))
else
  failed=$((failed + 1))
  echo "FAIL  check_manifests.py did not finish"
fi

# --- Prometheus rules and dashboard queries --------------------------------------------------
cd "$here/prometheus"
step "promtool check rules prometheus/alerts.yml" promtool check rules alerts.yml
step "promtool test rules prometheus/alerts.test.yml" promtool test rules alerts.test.yml
if [ -s "$work/dashboard-rules.yml" ]; then
  step "promtool: every dashboard query is valid PromQL" promtool check rules "$work/dashboard-rules.yml"
else
  failed=$((failed + 1))
  echo "FAIL  the dashboard's queries were not extracted"
fi
cd "$repo"

# --- the container image, built locally and started (deploy/image_check.sh) ------------------
# No registry is reachable from CI, so the image is built from scratch with buildah around
# the workspace's (debug) binary, then started with podman against the local services.
if ! command -v podman >/dev/null 2>&1 || ! command -v buildah >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  echo "installing podman, buildah and runc (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman buildah runc >/dev/null
fi
binary="${CARGO_TARGET_DIR:-$repo/target}/debug/qr3-webhooks"
step "cargo build -p qr3-webhooks (the image's binary)" cargo build -q -p qr3-webhooks
step "container image: built from scratch with buildah" bash "$here/image_check.sh" build "$binary"
step "container image: runs all, ready, clean SIGTERM stop without ERROR" bash "$here/image_check.sh" smoke "$binary"

# --- compose, when Docker's compose plugin is installed ----------------------------------------
if docker compose version >/dev/null 2>&1; then
  step "docker compose config" docker compose -f "$here/docker-compose.yml" config --quiet
fi

echo "deploy checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
