#!/usr/bin/env python3
"""Checks the operator's kit in deploy/ (run by scripts/check-deploy.sh, which provides the venv).

One line per check: `ok`, `FAIL` (with the reasons) or `skip`; exits 1 when any check failed.

- deploy/kubernetes/*.yaml: every document against the Kubernetes JSON schemas of K8S_VERSION,
  strictly (unknown fields are errors); KEDA ScaledObjects against the CRD's schema kept in
  deploy/kubernetes/schemas/; the pod security and resource policy; the cross-references
  (selectors, Services, the relay pair's PodDisruptionBudget, one ScaledObject per consumer with
  its consumer group, topics and partition bound taken from the runtime's defaults).
- deploy/grafana: the dashboard's JSON and PromQL, every metric it names registered in crates/,
  the provisioning files.
- deploy/prometheus: prometheus.yml scrapes every refstream container of docker-compose.yml on
  its metrics port; alerts.yaml parses and names registered metrics; promtool when installed.
- docker-compose.yml: the Compose Specification schema, every service, and every binary it or a
  manifest runs is one the Dockerfile copies and the workspace builds.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import jsonschema
import kubernetes_validate
import promql_parser
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = os.environ.get("K8S_VERSION", "1.33.0")
# The Kafka consumers (the crates implementing refstream_runtime::consumer::Worker, each named
# after its worker): each gets a KEDA ScaledObject. The relay, links and the API are not consumers.
CONSUMERS = ["attribution", "fraud-scorer", "reward-engine", "analytics"]
COMPOSE_SERVICES = [
    "kafka", "postgres", "init", "attribution", "fraud-scorer", "reward-engine", "outbox-relay",
    "links", "analytics", "api", "prometheus", "grafana",
]
# What the dashboard must show (the operator's kit issue).
DASHBOARD_METRICS = [
    "refstream_consumer_lag", "refstream_batch_seconds_bucket", "refstream_batch_records_bucket",
    "refstream_outbox_backlog", "refstream_outbox_oldest_age_seconds",
    "refstream_records_dead_lettered_total", "refstream_outcomes_total",
    "refstream_records_applied_total", "refstream_records_deduplicated_total",
    "refstream_settlement_waiting_payouts", "refstream_settlement_gate_wait_seconds",
    "refstream_settlement_gate_behind_records", "refstream_settlement_gate_stalled",
    "refstream_links_clicks_total",
]
# The trigger metadata KEDA's kafka scaler reads (pkg/scalers/kafka_scaler.go, KEDA v2.20.2, the
# version of deploy/kubernetes/schemas/): the CRD types metadata as a free map and the scaler
# does not reject a key it does not read, so a misspelt one would silently leave the default.
KAFKA_TRIGGER_METADATA = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv",
    "topic", "topicFromEnv", "partitionLimitation", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag", "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "version", "tls",
    "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion",
}
# Series Prometheus makes itself (any target label), and the target labels a scrape adds to every
# series: job and instance, prometheus.yml's service, and what Kubernetes discovery relabels.
BUILTIN_METRICS = {"up": None}
TARGET_LABELS = {"job", "instance", "service", "namespace", "pod"}
TARGET_LABEL_PREFIXES = ("app_kubernetes_io_",)

failures = 0


def report(name, errors=(), skipped=None):
    global failures
    if skipped:
        print(f"skip {name}: {skipped}", flush=True)
    elif errors:
        failures += 1
        print(f"FAIL {name}")
        for e in errors:
            print(f"       - {e}")
    else:
        print(f"ok   {name}")
    sys.stdout.flush()


def rel(p):
    return str(Path(p).relative_to(ROOT))


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------------------------------------
# What the code says: metrics, binaries, defaults.


def registered_metrics():
    """{name: labels} of every metric a register_* macro (or *Opts::new) names under crates/."""
    metrics = {}
    macro = re.compile(r'register_(\w+?)!\s*\(\s*(?:(?:histogram_)?opts!\s*\(\s*)?"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
    opts = re.compile(r'\b(Histogram)?Opts::new\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
    for src in sorted((ROOT / "crates").rglob("*.rs")):
        text = src.read_text(errors="replace")
        for rx, is_hist in ((macro, lambda m: "histogram" in m.group(1)), (opts, lambda m: bool(m.group(1)))):
            for m in rx.finditer(text):
                name = m.group(2)
                # The label names: the first &[...] of the call, before its end.
                tail = text[m.end():]
                end = min([i for i in (tail.find(".expect"), tail.find(";")) if i >= 0] or [len(tail)])
                lm = re.search(r"&\[([^\]]*)\]", tail[:end])
                labels = set(re.findall(r'"([^"]+)"', lm.group(1))) if lm else set()
                if is_hist(m):
                    metrics[name + "_bucket"] = labels | {"le"}
                    metrics[name + "_sum"] = labels
                    metrics[name + "_count"] = labels
                else:
                    metrics[name] = labels
    return metrics


def workspace_binaries():
    """Names of the binaries the workspace builds (explicit [[bin]] or src/main.rs)."""
    bins = set()
    for manifest in (ROOT / "crates").glob("*/Cargo.toml"):
        data = tomllib.loads(manifest.read_text())
        explicit = data.get("bin", [])
        bins.update(b["name"] for b in explicit if "name" in b)
        if not explicit and (manifest.parent / "src" / "main.rs").exists():
            bins.add(data["package"]["name"])
        bins.update(p.stem for p in (manifest.parent / "src" / "bin").glob("*.rs"))
    return bins


def dockerfile_binaries():
    text = (ROOT / "Dockerfile").read_text()
    return set(re.findall(r"target/release/([A-Za-z0-9_-]+)", text))


def runtime_defaults():
    return tomllib.loads((ROOT / "crates/refstream-runtime/src/defaults.toml").read_text())


# ---------------------------------------------------------------------------------------------
# PromQL.


def promql_selectors(expr):
    """[(metric name or None, [(label, op, value)])] of every vector selector in `expr`.
    Grafana's variables are replaced by values of the same shape first."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)
    tree = promql_parser.parse(expr)
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, [(m.name, str(m.op), m.value) for m in node.matchers.matchers]))

    promql_parser.walk(tree, pre_visit=visit)
    return found


def check_promql(expr, metrics, where):
    """Errors of one PromQL expression: syntax, unknown metric names, unknown label names."""
    try:
        selectors = promql_selectors(expr)
    except Exception as e:  # the parser's ValueError
        return [f"{where}: PromQL does not parse ({e}): {expr}"], set()
    errors, names = [], set()
    for name, matchers in selectors:
        if name is None:
            errors.append(f"{where}: a selector without a metric name: {expr}")
            continue
        names.add(name)
        if name in BUILTIN_METRICS:
            continue
        known = metrics.get(name)
        if known is None:
            errors.append(f"{where}: metric {name} is registered nowhere under crates/")
            continue
        for label, _, _ in matchers:
            if not (label == "__name__" or label in known or label in TARGET_LABELS
                    or label.startswith(TARGET_LABEL_PREFIXES)):
                errors.append(f"{where}: {name} has no label {label!r} (it has {sorted(known) or 'none'})")
    return errors, names


# ---------------------------------------------------------------------------------------------
# Kubernetes.

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def pod_spec(doc):
    if doc.get("kind") in POD_KINDS:
        return doc["spec"]["template"]["spec"]
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(doc):
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return doc["spec"]["template"]["metadata"].get("labels", {})


def kn(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def policy_errors(doc):
    """Pod security (the restricted profile and a fixed uid) and resources of one workload."""
    spec = pod_spec(doc)
    errors = []
    psc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        errors.append("automountServiceAccountToken must be false (refstream never calls the Kubernetes API)")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            errors.append(f"{host} must not be set")
    long_running = doc["kind"] != "Job" and doc["kind"] != "CronJob"
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind) or []:
            where = f"{kind[:-1]} {c.get('name')}"
            csc = c.get("securityContext") or {}

            def eff(key):
                return csc.get(key, psc.get(key))

            if eff("runAsNonRoot") is not True:
                errors.append(f"{where}: runAsNonRoot must be true")
            if eff("runAsUser") != 10001:
                errors.append(f"{where}: runAsUser must be 10001 (the image's user), is {eff('runAsUser')}")
            if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
                errors.append(f"{where}: seccompProfile.type must be RuntimeDefault")
            if csc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: allowPrivilegeEscalation must be false")
            if csc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{where}: readOnlyRootFilesystem must be true")
            if csc.get("privileged"):
                errors.append(f"{where}: privileged must not be set")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                errors.append(f"{where}: capabilities.drop must contain ALL")
            if caps.get("add"):
                errors.append(f"{where}: capabilities.add must be empty")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        errors.append(f"{where}: resources.{part}.{r} is missing")
            if long_running and kind == "containers" and "readinessProbe" not in c:
                errors.append(f"{where}: no readinessProbe")
    return errors


def check_kubernetes(metrics):
    kdir = ROOT / "deploy/kubernetes"
    files = sorted(kdir.glob("*.yaml"))
    if not files:
        report("deploy/kubernetes has manifests", ["no *.yaml in deploy/kubernetes"])
        return []
    so_schema = json.loads((kdir / "schemas/scaledobject-keda-v1alpha1.json").read_text())
    jsonschema.Draft7Validator.check_schema(so_schema)
    so_validator = jsonschema.Draft7Validator(so_schema)
    # ObjectMeta of the pinned Kubernetes version (strict), to check a custom resource's metadata.
    defs = kv_utils.schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json", K8S_VERSION)
    meta_validator = jsonschema.Draft202012Validator(
        {"$ref": defs["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        registry=Resource.from_contents(defs) @ Registry())

    docs = []
    for path in files:
        try:
            file_docs = load_yaml_docs(path)
        except yaml.YAMLError as e:
            report(f"{rel(path)} parses", [str(e)])
            continue
        for doc in file_docs:
            name = f"{rel(path)} {kn(doc)}"
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                report(f"{name}: a Kubernetes object", ["no apiVersion/kind"])
                continue
            docs.append((path, doc))
            if doc["kind"] == "ScaledObject":
                errs = [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"
                        for e in so_validator.iter_errors(doc)]
                errs += [f"metadata.{'.'.join(map(str, e.path))}: {e.message}"
                         for e in meta_validator.iter_errors(doc.get("metadata", {}))]
                report(f"{name}: KEDA ScaledObject schema (keda.sh/v1alpha1, strict)", errs)
                continue
            try:
                got = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                report(f"{name}: Kubernetes {got} schema (strict)")
            except kv_utils.ValidationError as e:
                report(f"{name}: Kubernetes {e.version} schema (strict)",
                       [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"])
            except kv_utils.SchemaNotFoundError as e:
                report(f"{name}: Kubernetes schema", [e.message])
            if pod_spec(doc) is not None:
                report(f"{name}: pod security and resources", policy_errors(doc))
    check_kubernetes_references(docs)
    return docs


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes_references(docs):
    defaults = runtime_defaults()
    group_prefix = defaults["kafka"]["group_prefix"]
    partitions = defaults["topics"]["partitions"]
    topic_keys = {v: k for k, v in defaults["topics"].items() if isinstance(v, str)}
    shipped = dockerfile_binaries()
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    config = {}
    for c in by_kind.get("ConfigMap", []):
        config.update(c.get("data", {}))
    secret_keys = {c["metadata"]["name"]: set((c.get("stringData") or c.get("data") or {}).keys())
                   for c in by_kind.get("Secret", [])}
    configmaps = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}

    # Selectors, commands, references to the ConfigMap and the Secret.
    errs = []
    for _, d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            if not matches(d["spec"]["selector"].get("matchLabels", {}), pod_labels(d)):
                errs.append(f"{kn(d)}: spec.selector does not match the pod template's labels")
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            cmd = c.get("command") or []
            if not cmd or cmd[0] not in shipped:
                errs.append(f"{kn(d)} container {c['name']}: command {cmd} is not a binary the Dockerfile copies ({sorted(shipped)})")
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    errs.append(f"{kn(d)}: ConfigMap {ef['configMapRef']['name']} is not in deploy/kubernetes")
            for ev in c.get("env") or []:
                ref = (ev.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in secret_keys.get(ref["name"], set()):
                    errs.append(f"{kn(d)}: Secret {ref['name']} key {ref['key']} is not in secret.example.yaml")
    report("kubernetes: selectors match, commands are shipped binaries, ConfigMap and Secret keys exist", errs)

    # Services select pods and name their ports.
    errs = []
    for s in by_kind.get("Service", []):
        targets = [d for d in docs if pod_spec(d[1]) is not None and matches(s["spec"].get("selector", {}), pod_labels(d[1]))]
        if not targets:
            errs.append(f"{kn(s)} selects no pod template")
            continue
        ports = {p.get("name") for _, d in targets for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
        for p in s["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                errs.append(f"{kn(s)}: targetPort {p['targetPort']} is no container port name ({sorted(ports)})")
    report("kubernetes: every Service selects pods and names their ports", errs)

    # The relay pair and its PodDisruptionBudget.
    errs = []
    relays = [d for d in deployments.values() if pod_spec(d)["containers"][0].get("command", [None])[0] == "outbox-relay"]
    if len(relays) != 1:
        errs.append(f"expected one outbox-relay Deployment, found {len(relays)}")
    for r in relays:
        if r["spec"].get("replicas", 1) < 2:
            errs.append(f"{kn(r)}: replicas must be 2 (an active relay and a standby)")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if matches(p["spec"]["selector"].get("matchLabels", {}), pod_labels(r))]
        if len(pdbs) != 1:
            errs.append(f"{kn(r)}: expected one PodDisruptionBudget selecting its pods, found {len(pdbs)}")
        for p in pdbs:
            if p["spec"].get("minAvailable") != 1:
                errs.append(f"{kn(p)}: minAvailable must be 1")
    report("kubernetes: the outbox-relay runs as a pair with a PodDisruptionBudget (minAvailable 1)", errs)

    # One ScaledObject per consumer, bounded by the partition count, on the worker's group.
    errs = []
    implemented = set()
    for lib in (ROOT / "crates").glob("*/src/*.rs"):
        if re.search(r"\bimpl\b[^{;]*\bWorker\s+for\b", lib.read_text(errors="replace")):
            implemented.add(lib.parent.parent.name)
    for crate in sorted(implemented - set(CONSUMERS)):
        errs.append(f"crate {crate} implements Worker but is not in CONSUMERS (scripts/check_deploy.py): give it a ScaledObject")
    brokers = config.get("REFSTREAM__KAFKA__BROKERS")
    scaled = {}
    for so in by_kind.get("ScaledObject", []):
        ref = so["spec"]["scaleTargetRef"]
        target = deployments.get(ref["name"])
        if ref.get("kind", "Deployment") != "Deployment" or target is None:
            errs.append(f"{kn(so)}: scaleTargetRef {ref['name']} is not a Deployment in deploy/kubernetes")
            continue
        worker = pod_spec(target)["containers"][0]["command"][0]
        scaled.setdefault(worker, []).append(so)
        if worker not in CONSUMERS:
            errs.append(f"{kn(so)}: {worker} is not a Kafka consumer and must not be lag-scaled")
            continue
        if "replicas" in target["spec"]:
            errs.append(f"{kn(target)}: sets replicas although {kn(so)} owns them")
        if so["spec"].get("minReplicaCount") != 1:
            errs.append(f"{kn(so)}: minReplicaCount must be 1")
        if so["spec"].get("maxReplicaCount") != partitions:
            errs.append(f"{kn(so)}: maxReplicaCount must be topics.partitions ({partitions})")
        for t in so["spec"]["triggers"]:
            md, tn = t.get("metadata", {}), t.get("name", t.get("type"))
            if t["type"] != "kafka":
                errs.append(f"{kn(so)} trigger {tn}: type must be kafka")
                continue
            for key in sorted(set(md) - KAFKA_TRIGGER_METADATA):
                errs.append(f"{kn(so)} trigger {tn}: {key} is not a setting of KEDA's kafka scaler")
            if md.get("consumerGroup") != f"{group_prefix}.{worker}":
                errs.append(f"{kn(so)} trigger {tn}: consumerGroup must be {group_prefix}.{worker} (kafka.group_prefix + worker)")
            if md.get("bootstrapServers") != brokers:
                errs.append(f"{kn(so)} trigger {tn}: bootstrapServers {md.get('bootstrapServers')} differs from the ConfigMap's {brokers}")
            if md.get("allowIdleConsumers") != "false":
                errs.append(f"{kn(so)} trigger {tn}: allowIdleConsumers must be \"false\"")
            if md.get("offsetResetPolicy") != "earliest":
                errs.append(f"{kn(so)} trigger {tn}: offsetResetPolicy must be earliest (the workers' auto.offset.reset)")
            if not re.fullmatch(r"[1-9][0-9]*", str(md.get("lagThreshold", ""))):
                errs.append(f"{kn(so)} trigger {tn}: lagThreshold must be a positive integer")
            if "topic" in md and md["topic"] not in topic_keys:
                errs.append(f"{kn(so)} trigger {tn}: topic {md['topic']} is not a topic of defaults.toml")
            elif "topic" in md:
                # The worker's crate must name the topic's setting (settings.topics.<key>).
                src = "".join(p.read_text(errors="replace") for p in (ROOT / "crates" / worker / "src").rglob("*.rs"))
                if not re.search(rf"\.{topic_keys[md['topic']]}\b", src):
                    errs.append(f"{kn(so)} trigger {tn}: crates/{worker} never names topics.{topic_keys[md['topic']]}, so {worker} cannot consume it")
            if md.get("limitToPartitionsWithLag") == "true" and not md.get("topic"):
                errs.append(f"{kn(so)} trigger {tn}: limitToPartitionsWithLag needs a topic")
    for worker in CONSUMERS:
        if len(scaled.get(worker, [])) != 1:
            errs.append(f"consumer {worker}: expected one ScaledObject, found {len(scaled.get(worker, []))}")
    report(f"kubernetes: one KEDA ScaledObject per consumer ({', '.join(CONSUMERS)}), groups {group_prefix}.<worker>, 1..{partitions} replicas", errs)


# ---------------------------------------------------------------------------------------------
# Grafana.


def check_grafana(metrics, compose):
    gdir = ROOT / "deploy/grafana"
    path = gdir / "dashboards/refstream.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        report(f"{rel(path)} parses", [str(e)])
        return
    errs = []
    if dash.get("uid") != "refstream":
        errs.append("uid must be refstream")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        errs.append("schemaVersion must be an integer >= 36")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        errs.append("needs a `datasource` variable of type datasource for prometheus")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        errs.append("panel ids must be present and unique")
    allowed_ds = {"${datasource}", "$datasource"}
    shown = set()
    for p in panels:
        g = p.get("gridPos", {})
        if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
            errs.append(f"panel {p.get('title')!r}: gridPos {g} outside the 24-column grid")
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            errs.append(f"panel {p.get('title')!r} has no query")
        for t in p.get("targets", []):
            for ds in (p.get("datasource"), t.get("datasource")):
                if ds is not None and (ds.get("type") != "prometheus" or ds.get("uid") not in allowed_ds):
                    errs.append(f"panel {p.get('title')!r}: datasource {ds} is not the ${{datasource}} variable")
            e, names = check_promql(t.get("expr", ""), metrics, f"panel {p.get('title')!r}")
            errs += e
            shown |= names
    for v in variables.values():
        if v.get("type") == "query":
            q = v.get("definition") or v.get("query")
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q if isinstance(q, str) else q.get("query", ""))
            if not m or m.group(1) not in metrics or m.group(2) not in metrics[m.group(1)]:
                errs.append(f"variable {v['name']}: {q} is not label_values of a registered metric and label")
    for m in DASHBOARD_METRICS:
        if m not in shown:
            errs.append(f"no panel shows {m}")
    report(f"{rel(path)}: Grafana dashboard ({len(panels)} panels), PromQL parses, every metric registered in crates/", errs)

    # Provisioning.
    errs = []
    dsp = gdir / "provisioning/datasources/prometheus.yaml"
    dbp = gdir / "provisioning/dashboards/refstream.yaml"
    try:
        ds = yaml.safe_load(dsp.read_text())
        db = yaml.safe_load(dbp.read_text())
    except (OSError, yaml.YAMLError) as e:
        report("grafana provisioning parses", [str(e)])
        return
    proms = [d for d in ds.get("datasources", []) if d.get("type") == "prometheus"]
    if ds.get("apiVersion") != 1 or len(proms) != 1:
        errs.append(f"{rel(dsp)}: expected apiVersion 1 and one prometheus datasource")
    else:
        want = (ds_var or {}).get("current", {}).get("value")
        if proms[0].get("uid") != want:
            errs.append(f"{rel(dsp)}: uid {proms[0].get('uid')} is not the dashboard's default datasource {want}")
        m = re.fullmatch(r"https?://([\w.-]+):(\d+)/?", proms[0].get("url", ""))
        if not m or m.group(1) not in compose.get("services", {}):
            errs.append(f"{rel(dsp)}: url {proms[0].get('url')} is not a docker-compose service")
    providers = db.get("providers", []) if isinstance(db, dict) else []
    if db.get("apiVersion") != 1 or len(providers) != 1:
        errs.append(f"{rel(dbp)}: expected apiVersion 1 and one provider")
    else:
        mounts = {}
        for v in compose.get("services", {}).get("grafana", {}).get("volumes", []):
            src, dst = v.split(":")[:2]
            mounts[dst] = os.path.normpath(src)
        path_in = providers[0].get("options", {}).get("path")
        if mounts.get(path_in) != "deploy/grafana/dashboards":
            errs.append(f"{rel(dbp)}: path {path_in} is not where docker-compose.yml mounts deploy/grafana/dashboards")
        if mounts.get("/etc/grafana/provisioning") != "deploy/grafana/provisioning":
            errs.append("docker-compose.yml: grafana must mount deploy/grafana/provisioning at /etc/grafana/provisioning")
    report("deploy/grafana/provisioning: datasource and dashboard provider parse and match docker-compose.yml", errs)


# ---------------------------------------------------------------------------------------------
# Prometheus.


def check_prometheus(metrics, compose):
    pdir = ROOT / "deploy/prometheus"
    cfg_path = pdir / "prometheus.yml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        report(f"{rel(cfg_path)} parses", [str(e)])
        return
    errs = []
    for rf in cfg.get("rule_files", []):
        if not (pdir / rf).exists():
            errs.append(f"rule file {rf} does not exist next to prometheus.yml")
    if "alerts.yaml" not in cfg.get("rule_files", []):
        errs.append("rule_files must load alerts.yaml")
    # What every refstream container of docker-compose.yml serves /metrics on.
    expected = {}
    for name, svc in compose.get("services", {}).items():
        if svc.get("image") != "refstream:local" or name == "init":
            continue
        env = svc.get("environment", {})
        listen = env.get("REFSTREAM__METRICS__LISTEN", "")
        port = listen.rsplit(":", 1)[-1]
        if not listen.startswith("0.0.0.0:"):
            errs.append(f"docker-compose.yml {name}: metrics listen {listen!r} is not reachable from Prometheus")
        expected[f"{name}:{port}"] = name
    targets, refstream_jobs = {}, 0
    for job in cfg.get("scrape_configs", []):
        if "refstream" in job.get("job_name", ""):
            refstream_jobs += 1
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                targets[t] = job.get("job_name")
    if not refstream_jobs:
        errs.append("no scrape job named *refstream* (alerts.yaml's RefstreamTargetDown selects on it)")
    for t, svc in sorted(expected.items()):
        if t not in targets:
            errs.append(f"docker-compose service {svc} is not scraped (expected target {t})")
        elif "refstream" not in targets[t]:
            errs.append(f"target {t} is in job {targets[t]}, not a *refstream* job")
    for t, job in targets.items():
        host = t.rsplit(":", 1)[0]
        if host not in compose.get("services", {}) and host != "localhost":
            errs.append(f"target {t} (job {job}) is not a docker-compose service")
    report(f"{rel(cfg_path)}: parses, loads alerts.yaml, scrapes every refstream container ({', '.join(sorted(expected.values()))})", errs)

    # Alert rules.
    errs = []
    try:
        rules = yaml.safe_load((pdir / "alerts.yaml").read_text())
        for g in rules["groups"]:
            for r in g["rules"]:
                e, _ = check_promql(r["expr"], metrics, f"rule {r.get('alert') or r.get('record')}")
                errs += e
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        errs.append(f"does not parse as a rule file: {e}")
    report("deploy/prometheus/alerts.yaml: rules parse, every metric registered in crates/", errs)

    promtool = shutil.which("promtool")
    if not promtool:
        report("promtool check config (and rules)", skipped="promtool not installed (Debian: apt-get install prometheus)")
        return
    out = subprocess.run([promtool, "check", "config", str(cfg_path)], capture_output=True, text=True)
    report("promtool check config deploy/prometheus/prometheus.yml (and its rule files)",
           [] if out.returncode == 0 else (out.stdout + out.stderr).strip().splitlines())


# ---------------------------------------------------------------------------------------------
# docker-compose.yml and the Dockerfile.


def check_compose():
    path = ROOT / "docker-compose.yml"
    try:
        compose = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        report("docker-compose.yml parses", [str(e)])
        return {}
    schema = json.loads((ROOT / "deploy/schemas/compose-spec.json").read_text())
    errs = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    report("docker-compose.yml: Compose Specification schema", errs)

    errs = []
    services = compose.get("services", {})
    for s in COMPOSE_SERVICES:
        if s not in services:
            errs.append(f"service {s} is missing")
    shipped, built = dockerfile_binaries(), workspace_binaries()
    for b in sorted(shipped - built):
        errs.append(f"the Dockerfile copies {b}, which no workspace crate builds")
    for name, svc in services.items():
        if svc.get("image") != "refstream:local":
            continue
        cmd = svc.get("command") or []
        binary = cmd[0] if cmd and cmd[0] not in ("sh", "bash") else None
        if binary and binary not in shipped:
            errs.append(f"service {name}: runs {binary}, which the Dockerfile does not copy")
        if cmd and cmd[0] in ("sh", "bash"):
            for b in re.findall(r"(?:^|&&|;|\|\|)\s*([\w-]+)", cmd[-1]):
                if b not in shipped:
                    errs.append(f"service {name}: runs {b}, which the Dockerfile does not copy")
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith(".") and not (ROOT / src).exists():
                errs.append(f"service {name}: bind mount {src} does not exist")
    report(f"docker-compose.yml: services {', '.join(COMPOSE_SERVICES)}; binaries shipped by the Dockerfile", errs)
    return compose


def guarded(name, check, *args, default=None):
    """Runs one group of checks; a file too malformed for its checks to read is a failure too."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001 - reported, and the exit status says it failed
        report(f"{name} (could not finish)", [f"{type(e).__name__}: {e}"])
        return default


def main():
    metrics = registered_metrics()
    report(f"crates/: {len(metrics)} metric series names registered",
           [] if metrics else ["no register_* macro found under crates/"])
    compose = guarded("docker-compose.yml", check_compose, default={})
    guarded("deploy/kubernetes", check_kubernetes, metrics)
    guarded("deploy/grafana", check_grafana, metrics, compose)
    guarded("deploy/prometheus", check_prometheus, metrics, compose)
    if failures:
        print(f"check-deploy: {failures} check(s) failed")
        return 1
    print("check-deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
