#!/usr/bin/env bash
# Builds the qr3-webhooks container image locally and smoke-tests it with podman, for
# deploy/check.sh. No registry is needed: where deploy/Dockerfile starts from registry
# images (rust:1-bookworm, debian:bookworm-slim), this builds the runtime image with
# `buildah from scratch`: the binary, the shared libraries `ldd` lists for it, the
# system's CA bundle, and the Dockerfile's runtime settings (uid/gid 10001, ports 8080
# and 9090, SIGTERM, the binary as entrypoint, `--help` as default command).
#
# The smoke test runs `all` in the image on the host network against the local Postgres
# and RabbitMQ (QR3_TEST_DATABASE_SERVER, QR3_TEST_AMQP_URL), with a read-only root
# filesystem, waits for /readyz, checks /metrics, stops it with SIGTERM (podman stop)
# and expects exit code 0 and no ERROR line in its log. It reuses one database
# (qr3_image_check) and one broker prefix (qr3imagecheck) from run to run.
#
# Usage: deploy/image_check.sh build|smoke BINARY
set -euo pipefail

what="$1"
binary="$2"
image="localhost/qr3-webhooks:check"
db_server="${QR3_TEST_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}"
amqp_url="${QR3_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

# Container runtimes differ in what they can do in a sandbox: crun refuses hybrid
# cgroup hierarchies, and raising a resource limit needs CAP_SYS_RESOURCE. Limits at or
# below the caller's own, and the first runtime that can start the image.
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
runtime_args() {
  for runtime in "" runc crun; do
    local args=()
    [ -n "$runtime" ] && args=(--runtime "$runtime")
    if podman "${args[@]}" run --rm "${limits[@]}" "$image" --version >/dev/null 2>&1; then
      echo "${args[@]}"
      return 0
    fi
  done
  echo "no container runtime can start $image:" >&2
  podman run --rm "${limits[@]}" "$image" --version >&2 || true
  return 1
}

# What to remove when the script ends, however it ends (set -e exits skip RETURN traps).
ctr=""
container=""
log=""
cleanup() {
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
  [ -n "$container" ] && podman rm -f "$container" >/dev/null 2>&1
  [ -n "$log" ] && rm -f "$log"
  return 0
}
trap cleanup EXIT

build() {
  local mnt lib old
  old="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  ctr="$(buildah from scratch)"
  mnt="$(buildah mount "$ctr")"
  install -D -m 0755 "$binary" "$mnt/usr/local/bin/qr3-webhooks"
  # The dynamic loader and every library the binary links (glibc, libgcc_s).
  for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$lib" "$mnt$lib"
  done
  # System roots for sslmode=verify-full without sslrootcert.
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0::/:/sbin/nologin\nqr3:x:10001:10001::/nonexistent:/sbin/nologin\n' >"$mnt/etc/passwd"
  printf 'root:x:0:\nqr3:x:10001:\n' >"$mnt/etc/group"
  mkdir -p "$mnt/tmp" && chmod 1777 "$mnt/tmp"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --user 10001:10001 \
    --port 8080 --port 9090 \
    --stop-signal SIGTERM \
    --entrypoint '["/usr/local/bin/qr3-webhooks"]' \
    --cmd '--help' \
    --label org.opencontainers.image.title=qr3-webhooks \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$image" >/dev/null
  ctr=""
  # The previous build's image, untagged by this one.
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  # Without arguments the image prints --help, as deploy/Dockerfile's does.
  local args help
  args="$(runtime_args)"
  # shellcheck disable=SC2086
  help="$(podman $args run --rm "${limits[@]}" "$image")"
  if ! grep -q '^Usage: qr3-webhooks' <<<"$help"; then
    echo "the image without arguments printed: $help"
    return 1
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

smoke() {
  local args name api ops status
  args="$(runtime_args)"
  name="qr3-image-check-$$"
  api="$(free_port)"
  ops="$(free_port)"
  log="$(mktemp)"
  container="$name"
  # shellcheck disable=SC2086
  podman $args run -d --name "$name" "${limits[@]}" --network host --read-only \
    -e QR3__SECRETS__ALLOW_INSECURE_DEV_KEY=true \
    -e QR3__DATABASE__URL="$db_server/qr3_image_check" \
    -e QR3__AMQP__URL="$amqp_url" \
    -e QR3__AMQP__PREFIX=qr3imagecheck \
    -e QR3__AMQP__EVENTS_EXCHANGE=qr3imagecheck.events \
    -e QR3__API__LISTEN="127.0.0.1:$api" \
    -e QR3__METRICS__LISTEN="127.0.0.1:$ops" \
    -e QR3__LOG__FORMAT=json \
    "$image" all >/dev/null
  local ready=""
  for _ in $(seq 1 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api/readyz")" = 200 ]; then
      ready=yes
      break
    fi
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    echo "the container never became ready:"
    podman logs "$name" 2>&1 | tail -n 30
    return 1
  fi
  local metrics
  metrics="$(curl -sf "http://127.0.0.1:$api/metrics")"
  if ! grep -q '^qr3_events_rejected_total{reason="too_large"} 0$' <<<"$metrics"; then
    echo "/metrics lacks qr3_events_rejected_total{reason=\"too_large\"} 0"
    return 1
  fi
  podman stop -t 30 "$name" >/dev/null
  status="$(podman inspect "$name" --format '{{.State.ExitCode}}')"
  podman logs "$name" >"$log" 2>&1
  if [ "$status" != 0 ]; then
    echo "exit code $status after SIGTERM:"
    tail -n 30 "$log"
    return 1
  fi
  if grep '"level":"ERROR"' "$log"; then
    echo "ERROR lines in the log of a clean start and stop"
    return 1
  fi
  if ! grep -q 'shut' "$log"; then
    echo "the log does not show a shutdown:"
    tail -n 30 "$log"
    return 1
  fi
}

case "$what" in
  build) build ;;
  smoke) smoke ;;
  *) echo "usage: $0 build|smoke BINARY" >&2; exit 2 ;;
esac
