#!/usr/bin/env bash
# Validates what operators deploy: YAML lint; docker-compose references; Kubernetes
# manifests against a pinned Kubernetes version, each provider's dispatcher rendered from
# the provider list; the KEDA ScaledObjects' pushline fields;
# Prometheus rules and their unit tests; the Grafana dashboard's queries.
# Needs yamllint, kubernetes-validate (PyPI) and promtool (Debian package prometheus).
set -euo pipefail
cd "$(dirname "$0")/../.."
K8S_VERSION=1.30.0

echo "== yamllint"
yamllint -s docker-compose.yml deploy .yamllint.yml

echo "== OpenAPI documents are YAML (the services serve them; schemathesis reads them)"
python3 -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' docs/openapi/*.yaml

echo "== docker-compose references"
python3 - <<'PY'
import os, sys, yaml
compose = yaml.safe_load(open("docker-compose.yml"))
missing = []
for name, svc in compose["services"].items():
    build = svc.get("build")
    if isinstance(build, dict):
        if not os.path.exists(os.path.join(build.get("context", "."), build.get("dockerfile", "Dockerfile"))):
            missing.append(f"{name}: dockerfile")
    for volume in svc.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith("./") and not os.path.exists(source):
            missing.append(f"{name}: {source}")
    for secret in svc.get("secrets", []):
        if secret not in compose.get("secrets", {}):
            missing.append(f"{name}: secret {secret} undefined")
    for dep in (svc.get("depends_on") or {}):
        if dep not in compose["services"]:
            missing.append(f"{name}: depends on unknown {dep}")
for name, secret in compose.get("secrets", {}).items():
    if not os.path.exists(secret["file"]):
        missing.append(f"secret {name}: {secret['file']}")
if missing:
    sys.exit("missing: " + ", ".join(missing))
print(f"ok: {len(compose['services'])} services, every referenced file exists")
PY
if docker compose version >/dev/null 2>&1; then
  docker compose --profile sandbox config -q && echo "docker compose config: ok"
else
  echo "docker compose not installed here: skipped its own config check"
fi

echo "== Kubernetes manifests (kubernetes $K8S_VERSION)"
# Every provider's dispatcher objects are rendered from one template, for the providers
# listed in providers/src/lib.rs.
python3 deploy/k8s/render-dispatchers.py --check
python3 - <<'PY'
import os, sys, yaml
k = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
missing = [r for r in k["resources"] if not os.path.exists(os.path.join("deploy/k8s", r))]
if missing:
    sys.exit(f"kustomization lists missing files: {missing}")
deployments, scaled = set(), []
for r in k["resources"]:
    for doc in yaml.safe_load_all(open(os.path.join("deploy/k8s", r))):
        if doc and doc["kind"] == "Deployment":
            deployments.add(doc["metadata"]["name"])
        if doc and doc["kind"] == "ScaledObject":
            scaled.append(doc)
dispatchers = {d for d in deployments if d.startswith("dispatcher-")}
if {d["spec"]["scaleTargetRef"]["name"] for d in scaled} != dispatchers:
    sys.exit(f"every dispatcher needs one ScaledObject: {sorted(dispatchers)}")
for doc in scaled:
    target = doc["spec"]["scaleTargetRef"]["name"]
    provider = target.removeprefix("dispatcher-")
    triggers = doc["spec"]["triggers"]
    names = []
    for n, trigger in enumerate(triggers):
        stream = f"PUSH_{provider.upper()}" + (f"_{n}" if n else "")
        wanted = (stream, f"dispatch-{provider}")
        meta = trigger["metadata"]
        if trigger["type"] != "nats-jetstream" or (meta["stream"], meta["consumer"]) != wanted:
            sys.exit(f"ScaledObject {target} trigger {n} must scale on {wanted}")
        for key in ("natsServerMonitoringEndpoint", "account", "lagThreshold"):
            if not meta.get(key):
                sys.exit(f"ScaledObject {target}: {key} missing")
        names.append(trigger["name"])
    formula = doc["spec"]["advanced"]["scalingModifiers"]["formula"]
    if formula != " + ".join(names):
        sys.exit(f"ScaledObject {target} must scale on the sum of its partitions' lags")
print(f"ok: {len(k['resources'])} resources listed and present; ScaledObjects scale the right consumers")
PY
kubernetes-validate --quiet --strict -k "$K8S_VERSION" $(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)

echo "== Prometheus rules"
promtool check rules deploy/prometheus/rules.yml
(cd deploy/prometheus && promtool test rules rules.test.yml)
# Every alert is tested and points at a runbook entry that exists.
python3 - <<'PY'
import re, sys, yaml
rules = [r for g in yaml.safe_load(open("deploy/prometheus/rules.yml"))["groups"] for r in g["rules"] if "alert" in r]
tests = open("deploy/prometheus/rules.test.yml").read()
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip("# ").lower()).replace(" ", "-")
           for h in open("docs/operations.md") if h.startswith("#")}
for r in rules:
    name, description = r["alert"], r["annotations"]["description"]
    if f"alertname: {name}\n" not in tests:
        sys.exit(f"alert {name} has no promtool test")
    link = re.search(r"docs/operations\.md#([a-z0-9_-]+)", description)
    if not link or link.group(1) not in anchors:
        sys.exit(f"alert {name}: its runbook link is missing or points at no heading of docs/operations.md")
print(f"ok: {len(rules)} alerts, each with a promtool test and a runbook entry")
PY
promtool check config deploy/prometheus/prometheus.yml >/dev/null 2>&1 || promtool check config --syntax-only deploy/prometheus/prometheus.yml

echo "== Grafana dashboard queries"
QUERIES=$(mktemp --suffix=.yml)
trap 'rm -f "$QUERIES"' EXIT
python3 - <<'PY' > "$QUERIES"
import json, yaml
d = json.load(open("deploy/grafana/dashboards/pushline.json"))
uid = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"][0]["uid"]
rules = []
for p in d["panels"]:
    assert p["datasource"]["uid"] == uid, p["title"]
    for t in p["targets"]:
        rules.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": t["expr"]})
print(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
PY
promtool check rules "$QUERIES"
echo "deploy validation: ok"
