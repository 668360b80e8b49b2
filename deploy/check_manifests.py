#!/usr/bin/env python3
"""Checks deploy/ against the code it deploys.

Run by deploy/check.sh (which installs kubernetes-validate and PyYAML first); it can also
be run alone from any directory. What it checks:

- every Kubernetes document of the base and of each overlay (the overlay with its
  patches applied): standard kinds against the Kubernetes OpenAPI schemas, strictly
  (kubernetes-validate); KEDA and Prometheus Operator kinds for their required fields;
- that the manifests fit together: Services, PodDisruptionBudgets, autoscalers and the
  ServiceMonitor find what they point at, probes use real ports, security settings,
  grace periods longer than shutdown.grace_period_ms, the KEDA queue name;
- that every container's first argument is a real subcommand (crates/cli/src/cli.rs);
- that every QR3__SECTION__KEY variable (manifests and docker-compose.yml) is a real
  configuration key (crates/config/src/default.toml) with a value of the right type;
- that every metric the alert rules and the dashboard use exists: qr3_* metrics in
  docs/metrics.md and in crates/telemetry/src/metrics.rs, and no other metric but `up`
  and RabbitMQ's rabbitmq_queue_messages_ready;
- the dashboard's JSON, that every panel has a data source and a query, and that
  every alert links to an existing section of docs/operations.md and is unit-tested
  both firing and not firing.

Prints one line per check and ends with "check_manifests: N passed, M failed"; exits 1
on any failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

try:
    import kubernetes_validate
except ImportError:  # reported as a failed check below
    kubernetes_validate = None

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
KUBE = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"

NAME = "qr3-webhooks"
SECRET_NAME = "qr3-webhooks"
SECRET_KEYS = ("QR3__DATABASE__URL", "QR3__AMQP__URL", "QR3__SECRETS__ENCRYPTION_KEY")
ROLES = ("api", "ingest", "sender")
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# The standard process collector of the `prometheus` crate, registered in metrics.rs
# with the namespace "qr3".
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
}
# Metrics that are not ours but may be queried: Prometheus' own `up`, and RabbitMQ's.
FOREIGN_METRICS = {"up", "rabbitmq_queue_messages_ready"}
SEVERITIES = {"critical", "warning", "info"}


# --- reporting ----------------------------------------------------------------------

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {what}")
        else:
            self.failed += 1
            print(f"FAIL  {what}" + (f": {detail}" if detail else ""))
        return ok

    def run(self, what: str, fn: Callable[[], Any]) -> None:
        """A check that passes unless `fn` raises (AssertionError carries the reason)."""
        try:
            fn()
        except AssertionError as e:
            self.check(False, what, str(e))
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, with its reason
            self.check(False, what, f"{type(e).__name__}: {e}")
        else:
            self.check(True, what)


R = Report()


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# --- facts from the code ------------------------------------------------------------

def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def subcommands() -> set[str]:
    """Variants of `enum Command` in cli.rs, as clap names them (kebab-case)."""
    text = (REPO / "crates/cli/src/cli.rs").read_text()
    m = re.search(r"pub enum Command\s*\{(.*?)\n\}", text, re.S)
    assert m, "enum Command not found in crates/cli/src/cli.rs"
    body = m.group(1)
    # A variant starts a line at the enum's first indentation level.
    variants = re.findall(r"^    ([A-Z][A-Za-z0-9]*)\b", body, re.M)
    return {kebab(v) for v in variants}


def config_keys() -> dict[str, Any]:
    """section.key -> default value, from default.toml; commented-out assignments
    (`# encryption_key = "..."`) are optional string keys."""
    path = REPO / "crates/config/src/default.toml"
    text = path.read_text()
    keys: dict[str, Any] = {}
    for section, table in tomllib.loads(text).items():
        for key, value in table.items():
            keys[f"{section}.{key}"] = value
    section = None
    for line in text.splitlines():
        s = re.match(r"^\[([a-z_]+)\]\s*$", line)
        if s:
            section = s.group(1)
            continue
        c = re.match(r"^#\s*([a-z_]+)\s*=", line)
        if c and section:
            keys.setdefault(f"{section}.{c.group(1)}", "")
    return keys


def metric_names() -> tuple[set[str], set[str]]:
    """(names in docs/metrics.md, names registered in metrics.rs outside its tests)."""
    docs = set(re.findall(r"\bqr3_[a-z0-9_]+", (REPO / "docs/metrics.md").read_text()))
    source = (REPO / "crates/telemetry/src/metrics.rs").read_text()
    source = source.split("#[cfg(test)]")[0]
    code = set(re.findall(r'"(qr3_[a-z0-9_]+)"', source))
    if re.search(r'ProcessCollector::new\([^)]*"qr3"\)', source):
        code |= {"qr3_" + m for m in PROCESS_METRICS}
    return docs, code


SUBCOMMANDS: set[str] = set()
CONFIG: dict[str, Any] = {}
METRICS_DOCS: set[str] = set()
METRICS_CODE: set[str] = set()


def load_facts() -> bool:
    global SUBCOMMANDS, CONFIG, METRICS_DOCS, METRICS_CODE
    ok = True
    try:
        SUBCOMMANDS = subcommands()
        missing = {"migrate", *ROLES} - SUBCOMMANDS
        ok &= R.check(not missing, f"cli.rs subcommands parsed: {sorted(SUBCOMMANDS)}",
                      f"expected {sorted(missing)} among them")
    except Exception as e:  # noqa: BLE001
        ok &= R.check(False, "cli.rs subcommands parsed", str(e))
    try:
        CONFIG = config_keys()
        ok &= R.check(len(CONFIG) > 10 and "database.url" in CONFIG
                      and "secrets.encryption_key" in CONFIG,
                      f"default.toml keys parsed: {len(CONFIG)}")
    except Exception as e:  # noqa: BLE001
        ok &= R.check(False, "default.toml keys parsed", str(e))
    try:
        METRICS_DOCS, METRICS_CODE = metric_names()
        ok &= R.check(len(METRICS_CODE) > 10 and len(METRICS_DOCS) > 10,
                      f"metric names parsed: {len(METRICS_CODE)} in metrics.rs, "
                      f"{len(METRICS_DOCS)} in docs/metrics.md")
    except Exception as e:  # noqa: BLE001
        ok &= R.check(False, "metric names parsed", str(e))
    return ok


# --- configuration variables ----------------------------------------------------------

def env_key(name: str) -> str | None:
    m = re.fullmatch(r"QR3__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    return f"{m.group(1).lower()}.{m.group(2).lower()}" if m else None


def check_env_value(name: str, value: Any) -> None:
    """Asserts that `name` is a real key and `value` parses like its default."""
    key = env_key(name)
    assert key is not None, f"{name} is not of the form QR3__SECTION__KEY"
    assert key in CONFIG, f"{name}: no key {key} in crates/config/src/default.toml"
    if value is None:
        return
    default = CONFIG[key]
    text = str(value).strip()
    if isinstance(default, bool):
        assert text.lower() in ("true", "false"), f"{name}={text!r}: expected true or false"
    elif isinstance(default, int):
        assert re.fullmatch(r"\d+", text), f"{name}={text!r}: expected an integer"
    elif isinstance(default, list):
        assert re.fullmatch(r"\d+(,\d+)*", text), \
            f"{name}={text!r}: expected comma-separated integers"
    if key.endswith(".listen"):
        assert re.fullmatch(r"[0-9.]+:\d+|\[[0-9a-f:]+\]:\d+", text), \
            f"{name}={text!r}: expected ADDRESS:PORT"


def effective(config_map: dict[str, str], key: str) -> Any:
    name = "QR3__" + "__".join(part.upper() for part in key.split("."))
    return config_map.get(name, CONFIG[key])


def port_of(listen: str) -> int:
    return int(str(listen).rsplit(":", 1)[1])


# --- loading Kubernetes documents -------------------------------------------------------

class Doc:
    def __init__(self, body: dict, source: str) -> None:
        self.body = body
        self.source = source

    @property
    def kind(self) -> str:
        return self.body.get("kind", "")

    @property
    def api(self) -> str:
        return self.body.get("apiVersion", "")

    @property
    def name(self) -> str:
        return self.body.get("metadata", {}).get("name", "")

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.source})"


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def deep_merge(base: Any, patch: Any) -> Any:
    """A strategic-merge subset: maps merge, lists of named maps merge by name, other
    lists and scalars replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            assert not str(k).startswith("$"), f"patch directive {k} is not supported here"
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = deep_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def json_patch(body: dict, ops: list[dict]) -> dict:
    body = copy.deepcopy(body)
    for op in ops:
        assert op.get("op") in ("add", "replace", "remove"), f"unsupported op {op.get('op')}"
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = body
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
            continue
        if op["op"] == "replace":
            assert (isinstance(node, list) and int(last) < len(node)) or \
                (isinstance(node, dict) and last in node), f"replace of missing {op['path']}"
        if isinstance(node, list):
            if last == "-":
                node.append(op["value"])
            else:
                node.insert(int(last), op["value"]) if op["op"] == "add" else \
                    node.__setitem__(int(last), op["value"])
        else:
            node[last] = op["value"]
    return body


def build(directory: Path) -> tuple[list[Doc], dict]:
    """A small kustomize: resources, patches (strategic-merge files and inline JSON
    patches), namespace and images. Enough for this repository's kustomizations; the
    kustomization itself is checked along the way."""
    kfile = directory / "kustomization.yaml"
    where = rel(kfile)
    kust = yaml.safe_load(kfile.read_text())
    R.check(kust.get("kind") == "Kustomization"
            and kust.get("apiVersion") == "kustomize.config.k8s.io/v1beta1",
            f"{where}: is a kustomize.config.k8s.io/v1beta1 Kustomization")
    docs: list[Doc] = []
    listed: set[Path] = set()
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            ok = R.check((target / "kustomization.yaml").is_file(),
                         f"{where}: resource {entry} is a kustomization")
            if ok:
                docs += build(target)[0]
        else:
            if R.check(target.is_file(), f"{where}: resource {entry} exists"):
                listed.add(target)
                docs += [Doc(d, rel(target)) for d in load_yaml_docs(target)]
    for patch in kust.get("patches", []):
        if "path" in patch:
            path = (directory / patch["path"]).resolve()
            if not R.check(path.is_file(), f"{where}: patch {patch['path']} exists"):
                continue
            listed.add(path)
            for body in load_yaml_docs(path):
                hits = [d for d in docs if d.kind == body.get("kind")
                        and d.name == body.get("metadata", {}).get("name")]
                label = f"{rel(path)}: patches {body.get('kind')}/{body.get('metadata', {}).get('name')}"
                if R.check(len(hits) == 1, label, f"{len(hits)} matching resources"):
                    R.run(label + " cleanly",
                          lambda h=hits[0], b=body, p=path: setattr(
                              h, "body", deep_merge(h.body, b)) or setattr(h, "source", h.source + " + " + rel(p)))
        else:
            target = patch.get("target", {})
            hits = [d for d in docs if d.kind == target.get("kind") and d.name == target.get("name")]
            label = f"{where}: inline patch of {target.get('kind')}/{target.get('name')}"
            if R.check(len(hits) == 1, label, f"{len(hits)} matching resources"):
                def apply(h=hits[0], p=patch) -> None:
                    ops = yaml.safe_load(p["patch"])
                    assert isinstance(ops, list), "only JSON 6902 inline patches are supported"
                    h.body = json_patch(h.body, ops)
                    h.source += " + inline patch"
                R.run(label + " applies", apply)
    own = {p.resolve() for p in [*directory.glob("*.yaml"), *directory.glob("patches/*.yaml")]
           if p.name != "kustomization.yaml"}
    unlisted = sorted(rel(p) for p in own - listed)
    R.check(not unlisted, f"{where}: every YAML file beside it is used", f"unused: {unlisted}")
    if "namespace" in kust:
        for d in docs:
            if d.kind != "Namespace":
                d.body.setdefault("metadata", {})["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        for d in docs:
            for c in containers(d):
                name, tag = split_image(c.get("image", ""))
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return docs, kust


# --- Kubernetes checks -----------------------------------------------------------------

def split_image(ref: str) -> tuple[str, str]:
    """("registry/path/name", "tag") of an image reference (the digest dropped)."""
    ref = ref.split("@")[0]
    head, _, last = ref.rpartition("/")
    name, _, tag = last.partition(":")
    return (f"{head}/{name}" if head else name), tag


def pod_template(doc: Doc) -> dict | None:
    if doc.kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return doc.body.get("spec", {}).get("template", {})
    if doc.kind == "CronJob":
        return doc.body.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {})
    return None


def pod_spec(doc: Doc) -> dict | None:
    template = pod_template(doc)
    return None if template is None else template.get("spec", {})


def containers(doc: Doc) -> list[dict]:
    spec = pod_spec(doc)
    return (spec or {}).get("containers", [])


def pod_labels(doc: Doc) -> dict:
    return (pod_template(doc) or {}).get("metadata", {}).get("labels", {})


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def validate_schema(doc: Doc) -> None:
    assert kubernetes_validate is not None, "kubernetes-validate is not installed"
    try:
        kubernetes_validate.validate(doc.body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        raise AssertionError(f"{path}: {e.message}") from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(str(e)) from None


def check_crd(doc: Doc, docs: list[Doc], config_map: dict[str, str]) -> None:
    spec = doc.body.get("spec")
    assert isinstance(spec, dict), "no spec"
    allowed_meta = {"name", "namespace", "labels", "annotations"}
    extra = set(doc.body.get("metadata", {})) - allowed_meta
    assert not extra, f"unexpected metadata fields {sorted(extra)}"
    assert set(doc.body) <= {"apiVersion", "kind", "metadata", "spec"}, \
        f"unexpected top-level fields {sorted(set(doc.body) - {'apiVersion', 'kind', 'metadata', 'spec'})}"
    if doc.kind == "ScaledObject":
        known = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount",
                 "initialCooldownPeriod", "minReplicaCount", "maxReplicaCount", "advanced",
                 "triggers", "fallback"}
        assert set(spec) <= known, f"unknown spec fields {sorted(set(spec) - known)}"
        ref = spec.get("scaleTargetRef", {})
        assert ref.get("name"), "spec.scaleTargetRef.name is required"
        targets = [d for d in docs if d.kind == ref.get("kind", "Deployment") and d.name == ref["name"]]
        assert targets, f"scaleTargetRef {ref.get('kind', 'Deployment')}/{ref['name']} not found"
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        assert isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi, \
            f"need 1 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi}): a sender must always run"
        triggers = spec.get("triggers")
        assert isinstance(triggers, list) and triggers, "spec.triggers must be a non-empty list"
        for t in triggers:
            assert t.get("type") and isinstance(t.get("metadata"), dict), \
                "each trigger needs type and metadata"
            if t["type"] == "rabbitmq":
                md = t["metadata"]
                assert md.get("mode") in ("QueueLength", "MessageRate"), f"mode {md.get('mode')!r}"
                assert re.fullmatch(r"\d+(\.\d+)?", str(md.get("value", ""))), \
                    f"value {md.get('value')!r} must be a number in a string"
                assert md.get("protocol", "auto") in ("amqp", "http", "auto")
                prefix = effective(config_map, "amqp.prefix")
                assert md.get("queueName") == f"{prefix}.deliveries", \
                    f"queueName {md.get('queueName')!r}, expected {prefix}.deliveries (amqp.prefix)"
                auth = t.get("authenticationRef", {}).get("name")
                assert auth or md.get("host") or md.get("hostFromEnv"), "no broker address"
                assert "host" not in md, "the broker URL holds credentials: use authenticationRef"
                if auth:
                    assert any(d.kind == "TriggerAuthentication" and d.name == auth for d in docs), \
                        f"TriggerAuthentication {auth} not found"
    elif doc.kind == "TriggerAuthentication":
        refs = spec.get("secretTargetRef")
        assert isinstance(refs, list) and refs, "spec.secretTargetRef must be a non-empty list"
        for r in refs:
            assert r.get("parameter") and r.get("name") and r.get("key"), \
                "each secretTargetRef needs parameter, name and key"
            assert r["name"] == SECRET_NAME and r["key"] in SECRET_KEYS, \
                f"reads {r['name']}/{r['key']}, expected a key of Secret {SECRET_NAME}"
        users = [d for d in docs if d.kind == "ScaledObject" and any(
            t.get("authenticationRef", {}).get("name") == doc.name
            for t in d.body.get("spec", {}).get("triggers", []))]
        for user in users:
            for t in user.body["spec"]["triggers"]:
                if t.get("type") == "rabbitmq":
                    assert any(r["parameter"] == "host" and r["key"] == "QR3__AMQP__URL" for r in refs), \
                        "the rabbitmq trigger needs parameter host from QR3__AMQP__URL"
    elif doc.kind == "ServiceMonitor":
        known = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels",
                 "podTargetLabels", "sampleLimit", "attachMetadata"}
        assert set(spec) <= known, f"unknown spec fields {sorted(set(spec) - known)}"
        selector = spec.get("selector", {}).get("matchLabels")
        assert selector, "spec.selector.matchLabels is required"
        endpoints = spec.get("endpoints")
        assert isinstance(endpoints, list) and endpoints, "spec.endpoints must be a non-empty list"
        services = [d for d in docs if d.kind == "Service"
                    and selects(selector, d.body.get("metadata", {}).get("labels", {}))]
        assert services, "selects no Service"
        for ep in endpoints:
            assert ep.get("port"), "each endpoint needs a port name"
            assert ep.get("path", "/metrics") == "/metrics", f"path {ep.get('path')}"
            for rl in ep.get("relabelings", []):
                assert rl.get("action", "replace") in ("replace", "keep", "drop", "labelmap",
                                                       "labeldrop", "labelkeep", "hashmod")
        scraped = {s.name for s in services for ep in endpoints
                   if any(p.get("name") == ep["port"] for p in s.body["spec"].get("ports", []))}
        for role in ROLES:
            svc = [s for s in services if s.body["metadata"]["labels"].get("app.kubernetes.io/component") == role]
            assert svc and svc[0].name in scraped, f"no endpoint scrapes the {role} Service"
        # The alert rules select job="qr3-webhooks" and a component label.
        for ep in endpoints:
            targets = {rl.get("targetLabel"): rl for rl in ep.get("relabelings", [])}
            assert targets.get("job", {}).get("replacement") == NAME, \
                f"endpoint {ep['port']}: relabel job to {NAME}"
            assert "component" in targets, f"endpoint {ep['port']}: add a component label"
    else:
        raise AssertionError(f"no checker for {doc.kind}")


def check_workload(doc: Doc, docs: list[Doc], config_map: dict[str, str], kust_images: set[str]) -> None:
    spec = pod_spec(doc)
    assert spec is not None
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", \
        "pod seccompProfile must be RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False, "mount no service account token"
    assert spec.get("serviceAccountName") in {d.name for d in docs if d.kind == "ServiceAccount"}, \
        f"serviceAccountName {spec.get('serviceAccountName')!r} not defined"
    cs = spec.get("containers", [])
    assert len(cs) == 1, "one container per pod"
    c = cs[0]
    image = split_image(c.get("image", ""))[0]
    assert image.rsplit("/", 1)[-1] == NAME or image in kust_images, \
        f"image {c.get('image')!r} is not {NAME}"
    args = c.get("args") or []
    assert not c.get("command"), "keep the image's ENTRYPOINT; pass the subcommand in args"
    assert args and args[0] in SUBCOMMANDS, f"args[0]={args[:1]} is not a subcommand of {sorted(SUBCOMMANDS)}"
    component = pod_labels(doc).get("app.kubernetes.io/component")
    if doc.kind == "Deployment":
        assert args[0] == component, f"Deployment of component {component} runs {args[0]!r}"
    elif doc.kind == "CronJob":
        assert args[0] == "maintain", f"CronJob runs {args[0]!r}"
    else:
        assert args[0] == "migrate", f"Job runs {args[0]!r}"
    sc = c.get("securityContext", {})
    assert sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false"
    assert sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop ALL"
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            assert r in res.get(part, {}), f"resources.{part}.{r} missing"
    # Configuration: every variable real, secrets only from the Secret.
    names = []
    for e in c.get("env", []):
        names.append(e["name"])
        if e["name"] in SECRET_KEYS:
            ref = e.get("valueFrom", {}).get("secretKeyRef", {})
            assert "value" not in e and ref.get("name") == SECRET_NAME and ref.get("key") == e["name"], \
                f"{e['name']} must come from Secret {SECRET_NAME}, key {e['name']}"
        if e["name"].startswith("QR3"):
            check_env_value(e["name"], e.get("value"))
    assert set(SECRET_KEYS) <= set(names), f"missing {sorted(set(SECRET_KEYS) - set(names))}"
    cms = [ref["configMapRef"]["name"] for ref in c.get("envFrom", []) if "configMapRef" in ref]
    assert cms and all(any(d.kind == "ConfigMap" and d.name == n for d in docs) for n in cms), \
        f"envFrom ConfigMaps {cms} not all defined"
    assert not any("secretRef" in ref for ref in c.get("envFrom", [])), \
        "take secrets key by key (env.valueFrom), not with envFrom"
    if doc.kind in ("Job", "CronJob"):
        assert spec.get("restartPolicy") in ("Never", "OnFailure"), "a Job needs restartPolicy Never/OnFailure"
        return
    # Probes on the port the role really listens on.
    listen = effective(config_map, "api.listen" if args[0] == "api" else "metrics.listen")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    assert port_of(listen) in ports.values(), f"no containerPort {port_of(listen)} ({listen})"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        assert get.get("path") == path, f"{probe} must GET {path}"
        port = get.get("port")
        assert (ports.get(port) if isinstance(port, str) else port) == port_of(listen), \
            f"{probe} port {port!r} is not the {listen} listener"
    grace_ms = int(effective(config_map, "shutdown.grace_period_ms"))
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    pause = pre_stop.get("sleep", {}).get("seconds", 0)
    command = pre_stop.get("exec", {}).get("command", [])
    if command:
        assert command[0] == "sleep" and len(command) == 2 and str(command[1]).isdigit(), \
            f"preStop {command}: only a sleep is expected"
        pause = int(command[1])
    assert tgps * 1000 > grace_ms + pause * 1000, \
        f"terminationGracePeriodSeconds {tgps}s must exceed the preStop pause ({pause}s) " \
        f"plus shutdown.grace_period_ms ({grace_ms}ms)"
    # Whoever scales it must own the replica count.
    scaled = any(d.kind == "HorizontalPodAutoscaler" and d.body["spec"]["scaleTargetRef"]["name"] == doc.name
                 for d in docs) or any(d.kind == "ScaledObject" and d.body["spec"]["scaleTargetRef"]["name"] == doc.name
                                       for d in docs)
    if scaled:
        assert "replicas" not in doc.body.get("spec", {}), "autoscaled: leave spec.replicas unset"
    pdbs = [d for d in docs if d.kind == "PodDisruptionBudget"
            and selects(d.body["spec"]["selector"].get("matchLabels", {}), pod_labels(doc))]
    assert len(pdbs) == 1, f"{len(pdbs)} PodDisruptionBudgets select it, expected 1"
    assert selects(doc.body["spec"]["selector"]["matchLabels"], pod_labels(doc)), \
        "spec.selector does not match the pod template's labels"


def check_set(label: str, docs: list[Doc], kust_images: set[str]) -> None:
    """Every check that runs on one complete set of documents (base, overlay, rendered)."""
    secrets = [str(d) for d in docs if d.kind == "Secret"]
    R.check(not secrets, f"[{label}] no Secret in the manifests",
            f"{secrets}: the operator creates Secret {SECRET_NAME}; keep secret values out of the repository")
    config_maps = [d for d in docs if d.kind == "ConfigMap" and d.name == NAME]
    R.check(len(config_maps) == 1, f"[{label}] one ConfigMap {NAME}")
    config_map = config_maps[0].body.get("data", {}) if config_maps else {}

    for doc in docs:
        if (doc.api, doc.kind) in CRD_KINDS:
            R.run(f"[{label}] {doc}: {doc.kind} fields", lambda d=doc: check_crd(d, docs, config_map))
        else:
            R.run(f"[{label}] {doc}: schema (Kubernetes {KUBERNETES_VERSION}, strict)",
                  lambda d=doc: validate_schema(d))
        labels = doc.body.get("metadata", {}).get("labels", {})
        R.check(labels.get("app.kubernetes.io/name") == NAME and bool(labels.get("app.kubernetes.io/component")),
                f"[{label}] {doc}: app.kubernetes.io/name and component labels")
        if pod_spec(doc) is not None:
            R.run(f"[{label}] {doc}: pod spec, args, env, probes, security",
                  lambda d=doc: check_workload(d, docs, config_map, kust_images))

    def config_map_values() -> None:
        bad = []
        for name, value in config_map.items():
            try:
                check_env_value(name, value)
            except AssertionError as e:
                bad.append(str(e))
        for name in SECRET_KEYS:
            if name in config_map:
                bad.append(f"{name} is secret: it belongs in Secret {SECRET_NAME}")
        assert not bad, "; ".join(bad)
    R.run(f"[{label}] ConfigMap {NAME}: every QR3__ variable is a real key with a valid value",
          config_map_values)

    def drain_fits() -> None:
        timeout = int(effective(config_map, "delivery.timeout_ms"))
        grace = int(effective(config_map, "shutdown.grace_period_ms"))
        assert timeout < grace, \
            f"delivery.timeout_ms ({timeout}) must stay below shutdown.grace_period_ms ({grace}) " \
            "so that a draining sender can finish its attempts"
    R.run(f"[{label}] an attempt in flight fits in the shutdown grace period", drain_fits)

    deployments = {d.body["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component"): d
                   for d in docs if d.kind == "Deployment"}
    R.check(set(ROLES) <= set(deployments), f"[{label}] a Deployment per role {ROLES}",
            f"found {sorted(deployments)}")
    R.check(any(d.kind == "Job" and containers(d) and (containers(d)[0].get("args") or [""])[0] == "migrate"
                for d in docs), f"[{label}] a Job runs migrate")
    R.check(any(d.kind == "CronJob" and containers(d) and (containers(d)[0].get("args") or [""])[0] == "maintain"
                for d in docs), f"[{label}] a CronJob runs maintain (partitions, retention)")
    R.check(any(d.kind == "HorizontalPodAutoscaler" and d.body["spec"]["scaleTargetRef"]["name"]
                == getattr(deployments.get("api"), "name", None) for d in docs),
            f"[{label}] the API has a HorizontalPodAutoscaler")
    R.check(any(d.kind == "ScaledObject" and d.body["spec"]["scaleTargetRef"]["name"]
                == getattr(deployments.get("sender"), "name", None) for d in docs),
            f"[{label}] the sender has a KEDA ScaledObject")
    R.check(any(d.kind == "ServiceMonitor" for d in docs), f"[{label}] a ServiceMonitor")

    for doc in docs:
        if doc.kind == "Service":
            def service(d=doc) -> None:
                sel = d.body["spec"].get("selector", {})
                targets = [w for w in deployments.values() if selects(sel, pod_labels(w))]
                assert len(targets) == 1, f"selects {len(targets)} Deployments"
                names = {p.get("name") for c in containers(targets[0]) for p in c.get("ports", [])}
                for p in d.body["spec"].get("ports", []):
                    assert p.get("targetPort") in names, f"targetPort {p.get('targetPort')!r} not a container port name"
            R.run(f"[{label}] {doc}: selects one Deployment and its named port", service)
        if doc.kind == "HorizontalPodAutoscaler":
            def hpa(d=doc) -> None:
                s = d.body["spec"]
                assert s["scaleTargetRef"]["name"] in {w.name for w in deployments.values()}, "target not found"
                assert 1 <= s.get("minReplicas", 1) <= s["maxReplicas"], "minReplicas <= maxReplicas"
                assert any(m.get("resource", {}).get("name") == "cpu" for m in s.get("metrics", [])), \
                    "scales on CPU"
            R.run(f"[{label}] {doc}: target and bounds", hpa)
        if doc.kind == "PodDisruptionBudget":
            R.check(any(selects(doc.body["spec"]["selector"].get("matchLabels", {}), pod_labels(w))
                        for w in deployments.values()), f"[{label}] {doc}: selects a Deployment")


def check_kubernetes(rendered: list[tuple[str, Path]]) -> None:
    base_docs, base_kust = build(KUBE / "base")
    images = {i["name"] for i in base_kust.get("images", [])}
    check_set("base", base_docs, images)
    for overlay in sorted((KUBE / "overlays").iterdir()):
        if (overlay / "kustomization.yaml").is_file():
            docs, kust = build(overlay)
            check_set(f"overlay {overlay.name}", docs, images | {i.get("newName", "") for i in kust.get("images", [])})
            R.check(not kust.get("namePrefix") and not kust.get("nameSuffix"),
                    f"overlay {overlay.name}: no namePrefix/nameSuffix",
                    "the ScaledObject target, Secret references and alert labels would not follow")
    for label, path in rendered:
        docs = [Doc(d, f"{label} rendered") for d in load_yaml_docs(path)]
        R.check(len(docs) > 0, f"[{label} rendered by kustomize] has documents")
        check_set(f"{label} rendered by kustomize", docs,
                  {split_image(c.get("image", ""))[0] for d in docs for c in containers(d)})


# --- docker-compose.yml -----------------------------------------------------------------

def check_compose() -> None:
    path = DEPLOY / "docker-compose.yml"
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    roles = {}
    for name, svc in services.items():
        if "build" not in svc:
            continue
        def service(name=name, svc=svc) -> None:
            build = svc["build"]
            context = (DEPLOY / build["context"]).resolve()
            assert (context / "Cargo.toml").is_file(), f"build context {context} is not the workspace root"
            assert (context / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve(), \
                "builds deploy/Dockerfile"
            cmd = svc.get("command") or []
            assert cmd and cmd[0] in SUBCOMMANDS, f"command {cmd[:1]} is not a subcommand"
            roles[cmd[0]] = svc
            env = svc.get("environment", {})
            if isinstance(env, list):
                env = dict(e.split("=", 1) for e in env)
            for k, v in env.items():
                if k.startswith("QR3"):
                    check_env_value(k, v)
            grace = int(env.get("QR3__SHUTDOWN__GRACE_PERIOD_MS", CONFIG["shutdown.grace_period_ms"]))
            stop = svc.get("stop_grace_period", "10s")
            m = re.fullmatch(r"(\d+)s", str(stop))
            assert m and int(m.group(1)) * 1000 > grace, \
                f"stop_grace_period {stop} must exceed shutdown.grace_period_ms {grace}ms"
            for dep, cond in (svc.get("depends_on") or {}).items():
                assert dep in services, f"depends_on unknown service {dep}"
                c = cond.get("condition") if isinstance(cond, dict) else "service_started"
                if c == "service_healthy":
                    assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if cmd[0] in ROLES:
                listen = env.get("QR3__API__LISTEN" if cmd[0] == "api" else "QR3__METRICS__LISTEN",
                                 CONFIG["api.listen" if cmd[0] == "api" else "metrics.listen"])
                test = " ".join(svc.get("healthcheck", {}).get("test", []))
                assert f"/{port_of(listen)} " in test and "/readyz" in test, \
                    f"healthcheck must GET /readyz on port {port_of(listen)}"
        R.run(f"docker-compose.yml: service {name}", service)
    R.check({"migrate", *ROLES} <= set(roles), "docker-compose.yml: migrate and every role run",
            f"found {sorted(roles)}")
    for role in ROLES:
        deps = (roles.get(role) or {}).get("depends_on") or {}
        R.check(any(isinstance(c, dict) and c.get("condition") == "service_completed_successfully"
                    and (services[d].get("command") or [""])[0] == "migrate" for d, c in deps.items()),
                f"docker-compose.yml: {role} starts after migrate completed")


# --- Dockerfile --------------------------------------------------------------------------

def check_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    package = re.search(r'^name\s*=\s*"([^"]+)"', (REPO / "crates/cli/Cargo.toml").read_text(), re.M)

    def content() -> None:
        assert package and package.group(1) == NAME, "crates/cli is not the qr3-webhooks package"
        assert re.search(r"^FROM rust:1-bookworm|^ARG RUST_IMAGE=rust:1-bookworm", text, re.M), "rust:1-bookworm builder"
        assert f"cargo build --release -p {NAME} --locked" in text, "cargo build --release -p qr3-webhooks --locked"
        assert re.search(r"^USER 10001", text, re.M), "runs as uid 10001"
        assert f'ENTRYPOINT ["/usr/local/bin/{NAME}"]' in text, "ENTRYPOINT is the binary"
        assert re.search(r"^EXPOSE 8080 9090$", text, re.M), "EXPOSE 8080 9090"
        assert port_of(CONFIG["api.listen"]) == 8080 and port_of(CONFIG["metrics.listen"]) == 9090, \
            "EXPOSE does not match the default listeners"
        assert "ca-certificates" in text, "installs ca-certificates"
    R.run("Dockerfile: builder, user, entrypoint, ports", content)
    R.check((DEPLOY / "Dockerfile.dockerignore").is_file()
            and "target" in (DEPLOY / "Dockerfile.dockerignore").read_text(),
            "Dockerfile.dockerignore keeps target/ out of the build context")


# --- PromQL -------------------------------------------------------------------------------

PROMQL_WORDS = {
    # aggregations and keywords
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "atan2",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "days_in_month", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp",
    "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time",
    "last_over_time", "present_over_time", "inf", "nan",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, grouping
    labels, durations and keywords removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"\$\w+", " ", s)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", s)
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", w)}


def base_metric(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name) if not name.endswith("_total") else name


def check_metric_names(where: str, exprs: Iterable[str]) -> None:
    used = set()
    for e in exprs:
        used |= promql_metrics(e)
    ours = {m for m in used if m.startswith("qr3_")}
    R.check(bool(ours), f"{where}: queries qr3 metrics ({len(ours)} names)")
    for m in sorted(ours):
        name = m if m in METRICS_CODE else base_metric(m)
        R.check(name in METRICS_DOCS, f"{where}: {m} is in docs/metrics.md", f"{name} is not documented")
        R.check(name in METRICS_CODE, f"{where}: {m} is registered in crates/telemetry/src/metrics.rs",
                f"{name} is not a metric name in metrics.rs")
    foreign = used - ours
    R.check(foreign <= FOREIGN_METRICS, f"{where}: no metric but qr3_*, {sorted(FOREIGN_METRICS)}",
            f"also uses {sorted(foreign - FOREIGN_METRICS)}")


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            base, n = slug, 1
            while slug in anchors:
                slug = f"{base}-{n}"
                n += 1
            anchors.add(slug)
        anchors.update(re.findall(r'<a (?:name|id)="([^"]+)"', line))
    return anchors


def check_alerts() -> None:
    rules_file = DEPLOY / "prometheus/alerts.yml"
    tests_file = DEPLOY / "prometheus/alerts.test.yml"
    rules = [r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    ops = REPO / "docs/operations.md"
    anchors = github_anchors(ops.read_text()) if ops.is_file() else set()
    R.check(ops.is_file(), "docs/operations.md exists")
    if ops.is_file():
        links = set(re.findall(r"\]\(#([\w-]+)\)", ops.read_text()))
        R.check(links <= anchors, f"docs/operations.md: its {len(links)} in-page links lead to sections",
                f"broken: {sorted(links - anchors)}")
    for r in alerts:
        def rule(r=r) -> None:
            assert re.fullmatch(r"\d+[smh]", str(r.get("for", ""))), "needs a for: duration"
            assert r.get("labels", {}).get("severity") in SEVERITIES, f"severity in {sorted(SEVERITIES)}"
            ann = r.get("annotations", {})
            for a in ("summary", "description", "runbook_url"):
                assert ann.get(a), f"annotation {a} missing"
            m = re.fullmatch(r"docs/operations\.md#([\w-]+)", ann["runbook_url"])
            assert m, "runbook_url must point to docs/operations.md#anchor"
            assert m.group(1) in anchors, f"no section #{m.group(1)} in docs/operations.md"
        R.run(f"alerts.yml: {r['alert']}: for, severity, summary, description, runbook", rule)
    check_metric_names("alerts.yml", [r["expr"] for r in rules])

    tests = yaml.safe_load(tests_file.read_text())
    fires, quiet = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    for r in alerts:
        R.check(r["alert"] in fires and r["alert"] in quiet,
                f"alerts.test.yml: {r['alert']} is tested firing and not firing",
                f"firing: {r['alert'] in fires}, not firing: {r['alert'] in quiet}")
    series = [s["series"].split("{")[0] for t in tests.get("tests", []) for s in t.get("input_series", [])]
    check_metric_names("alerts.test.yml input series", series)


# --- the Grafana dashboard --------------------------------------------------------------------

def check_dashboard(promql_out: Path | None) -> None:
    path = DEPLOY / "grafana/qr3-webhooks.json"
    try:
        dash = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001
        R.check(False, "grafana/qr3-webhooks.json parses", str(e))
        return
    R.check(True, "grafana/qr3-webhooks.json parses")
    R.check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36,
            f"dashboard schemaVersion {dash.get('schemaVersion')}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    dsvar = [v for v in variables.values() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    R.check(len(dsvar) == 1, "dashboard has one Prometheus data-source variable")
    ds_ref = "${%s}" % dsvar[0]["name"] if dsvar else None

    panels = []
    def walk(items):
        for p in items:
            panels.append(p)
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    ids = [p.get("id") for p in panels]
    R.check(len(ids) == len(set(ids)) and None not in ids, "dashboard panel ids are unique")
    exprs = []
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        def panel(p=p) -> None:
            ds = p.get("datasource")
            assert isinstance(ds, dict) and ds.get("uid") == ds_ref, f"datasource {ds!r}, expected uid {ds_ref}"
            targets = p.get("targets") or []
            assert targets, "no target"
            for t in targets:
                assert t.get("expr", "").strip(), f"target {t.get('refId')} has no expr"
                tds = t.get("datasource", ds)
                assert tds.get("uid") == ds_ref, f"target {t.get('refId')} datasource {tds!r}"
            assert {"h", "w", "x", "y"} <= set(p.get("gridPos", {})), "gridPos incomplete"
        R.run(f"dashboard panel {title!r}: data source, queries, position", panel)
        exprs += [t.get("expr", "") for t in p.get("targets") or []]
    used_vars = {v for e in exprs for v in re.findall(r"\$(\w+)", e)} - {"__rate_interval", "__interval", "__range"}
    R.check(used_vars <= set(variables), "dashboard queries use only defined variables",
            f"undefined: {sorted(used_vars - set(variables))}")
    check_metric_names("dashboard", exprs)
    if promql_out:
        # Grafana's variables replaced by plain values: promtool then checks the syntax.
        def plain(e: str) -> str:
            e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
            return re.sub(r"\$(\w+)", lambda m: ".*" if m.group(1) == "namespace" else "qr3", e)
        rules = {"groups": [{"name": "dashboard-queries", "rules": [
            {"record": f"dashboard:query_{i}", "expr": plain(e)} for i, e in enumerate(exprs)]}]}
        promql_out.write_text(yaml.safe_dump(rules, sort_keys=False))


# --- main ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rendered", action="append", default=[], metavar="LABEL=FILE",
                        help="also check the output of `kustomize build` (repeatable)")
    parser.add_argument("--promql-out", type=Path,
                        help="write the dashboard's queries as a rules file for `promtool check rules`")
    args = parser.parse_args()

    R.check(kubernetes_validate is not None, "kubernetes-validate is importable",
            "pip install kubernetes-validate")
    if load_facts():
        rendered = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in args.rendered]
        for name, fn in (("kubernetes", lambda: check_kubernetes(rendered)),
                         ("docker-compose.yml", check_compose),
                         ("Dockerfile", check_dockerfile),
                         ("alerts", check_alerts),
                         ("dashboard", lambda: check_dashboard(args.promql_out))):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - report and go on with the next part
                R.check(False, f"{name} checks ran to the end", f"{type(e).__name__}: {e}")
    print(f"check_manifests: {R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
