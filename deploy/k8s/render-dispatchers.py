#!/usr/bin/env python3
"""Renders everything the deployment holds per provider, for the providers listed in
providers/src/lib.rs, so that adding a provider touches nothing here by hand:

- Kubernetes: each dispatcher's Deployment, Service, PodDisruptionBudget and KEDA
  ScaledObject from dispatcher.yaml.tmpl into dispatcher-<provider>.yaml (the
  ScaledObject has one lag trigger per partition of the provider's push stream —
  `partitions` in the [nats] section of its k8s.toml, 1 when not set — and scales on
  their sum); its ConfigMap
  (dispatcher-<provider>-configmap.yaml) from the provider's own
  dispatcher-<provider>/deploy/k8s.toml; both listed in kustomization.yaml; its example
  Secret from dispatcher-<provider>/deploy/secret.example.yaml into secrets.example.yaml;
- docker-compose: each dispatcher's service in docker-compose.yml, and its configuration
  deploy/compose/dispatcher-<provider>.toml from dispatcher-<provider>/deploy/compose.toml
  (whose `admin_listen` port is also its health check's and Prometheus target's);
- the image: the dispatchers' lines of deploy/Dockerfile and .dockerignore;
- Prometheus: the dispatchers' targets in deploy/prometheus/prometheus.yml;
- the scripts: the list of dispatchers (DISPATCHERS) that deploy/ci/container-check.sh,
  deploy/ci/live-checks.sh and deploy/local/run.sh build and start (and, for the local
  run, their admin ports: DISPATCHER_ADMIN_PORTS). What each dispatcher is configured
  with and which device each provider's mock accepts, those scripts take from
  `pushline-mock` (the providers' sandboxes).

Rendered parts of hand-written files sit between `BEGIN rendered` and `END rendered`
comment lines; whole rendered files say so in their first line.

  deploy/k8s/render-dispatchers.py           # write the files
  deploy/k8s/render-dispatchers.py --check   # fail unless they are up to date (CI)
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SELF = "deploy/k8s/render-dispatchers.py"
HEADER = f"# Rendered by {SELF} from dispatcher.yaml.tmpl; do not edit.\n"


def providers():
    source = open(os.path.join(ROOT, "providers", "src", "lib.rs")).read()
    listed = re.search(r"static LIST: &\[&dyn Spec\] = &\[(.*?)\];", source, re.S)
    if not listed:
        sys.exit("providers/src/lib.rs: no `static LIST` found")
    names = re.findall(r"&dispatcher_([a-z0-9]+)::spec::SPEC", listed.group(1))
    if not names:
        sys.exit("providers/src/lib.rs: the list is empty")
    return names


def own(provider, file):
    """A file of the provider's own folder (dispatcher-<provider>/deploy/)."""
    path = os.path.join(ROOT, f"dispatcher-{provider}", "deploy", file)
    if not os.path.exists(path):
        sys.exit(f"dispatcher-{provider}/deploy/{file} is missing: each provider brings it")
    return open(path).read()


def admin_port(provider):
    found = re.search(r'^admin_listen = "[^"]*:(\d+)"', own(provider, "compose.toml"), re.M)
    if not found:
        sys.exit(f"dispatcher-{provider}/deploy/compose.toml: no admin_listen with a port")
    return found.group(1)


def partitions(provider):
    """`nats.partitions` in the provider's own k8s.toml (1 when not set)."""
    found = re.search(r"^\s*partitions\s*=\s*(\d+)\s*$", own(provider, "k8s.toml"), re.M)
    return int(found.group(1)) if found else 1


TRIGGER = """\
    - type: nats-jetstream
      name: p{n}
      metadata:
        natsServerMonitoringEndpoint: "nats.pushline.svc.cluster.local:8222"
        account: "$G"
        stream: "{stream}"
        consumer: "dispatch-{provider}"
        lagThreshold: "500"
        activationLagThreshold: "0"
"""


def rendered(provider):
    lines = open(os.path.join(HERE, "dispatcher.yaml.tmpl")).read().splitlines()
    start = next(i for i, l in enumerate(lines) if not l.startswith("#"))
    body = "\n".join(lines[start:])
    count = partitions(provider)
    stream = lambda n: f"PUSH_{provider.upper()}" + (f"_{n}" if n else "")
    triggers = "".join(TRIGGER.format(n=n, stream=stream(n), provider=provider)
                       for n in range(count)).rstrip("\n")
    body = (body.replace("@TRIGGERS@", triggers)
            .replace("@LAG_SUM@", " + ".join(f"p{n}" for n in range(count)))
            .replace("@PROVIDER@", provider))
    return HEADER + body + "\n"


def configmap(provider):
    name = f"dispatcher-{provider}"
    data = "".join(f"    {l}\n" if l else "\n" for l in own(provider, "k8s.toml").splitlines())
    return (
        f"# Rendered by {SELF} from {name}/deploy/k8s.toml; do not edit.\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
        f"  name: {name}\n  labels:\n    app.kubernetes.io/name: {name}\n"
        "    app.kubernetes.io/part-of: pushline\n"
        f"data:\n  {name}.toml: |\n{data}"
    )


def compose_config(provider):
    return (f"# Rendered by {SELF} from dispatcher-{provider}/deploy/compose.toml; do not edit.\n"
            + own(provider, "compose.toml"))


def kustomization(names):
    path = os.path.join(HERE, "kustomization.yaml")
    lines = open(path).read().splitlines()
    kept = [l for l in lines if not re.match(r"\s+- dispatchers?-[a-z0-9-]+\.yaml$", l)]
    at = next(i for i, l in enumerate(kept) if l.strip() == "- registry-pdb.yaml") + 1
    entries = []
    for name in names:
        entries += [f"  - dispatcher-{name}-configmap.yaml", f"  - dispatcher-{name}.yaml"]
    return "\n".join(kept[:at] + entries + kept[at:]) + "\n"


def block(path, name, lines):
    """`path`'s text with the lines between its BEGIN/END rendered markers for `name`
    replaced by `lines`."""
    text = open(os.path.join(ROOT, path)).read()
    begin = f"# BEGIN rendered by {SELF} ({name}); do not edit"
    end = f"# END rendered ({name})"
    found = re.search(
        rf"^([ \t]*){re.escape(begin)}\n.*?^[ \t]*{re.escape(end)}\n", text, re.M | re.S)
    if not found:
        sys.exit(f"{path}: no `{begin}` … `{end}` block")
    indent = found.group(1)
    body = "".join(f"{indent}{l}\n" if l else "\n" for l in lines)
    return text[:found.start()] + f"{indent}{begin}\n{body}{indent}{end}\n" + text[found.end():]


def compose_services(names):
    lines = []
    for i, n in enumerate(names):
        lines += [""] if i else []
        lines += [
            f"dispatcher-{n}:",
            "  <<: *pushline",
            f'  command: ["pushline-dispatcher-{n}", "--config", "/etc/pushline/dispatcher-{n}.toml"]',
            "  volumes:",
            f'    - "./deploy/compose/dispatcher-{n}.toml:/etc/pushline/dispatcher-{n}.toml:ro"',
            '    - "mock-credentials:/mock:ro"',
            "  healthcheck:",
            f'    test: ["CMD", "pushctl", "health", "http://127.0.0.1:{admin_port(n)}/readyz"]',
            "    interval: 10s",
            "    timeout: 3s",
            "    retries: 3",
        ]
    return lines


def dockerfile(names):
    dispatchers = [f"pushline-dispatcher-{n}" for n in names]
    return [
        "RUN --mount=type=cache,target=/usr/local/cargo/registry \\",
        "    --mount=type=cache,target=/src/target \\",
        "    cargo build --release --locked \\",
        "      -p pushline-ingest -p pushline-registry -p pushline-gateway \\",
        "      --bin pushline-ingest --bin pushline-registry --bin pushctl --bin pushline-gateway \\",
        *[f"      -p {d} --bin {d} \\" for d in dispatchers],
        " && cargo build --release --locked -p pushline-tests --bin pushline-mock \\",
        " && mkdir /out \\",
        " && cp target/release/pushline-ingest target/release/pushline-registry target/release/pushctl \\",
        "       target/release/pushline-gateway target/release/pushline-mock \\",
        *[f"       target/release/{d} \\" for d in dispatchers],
        "       /out/",
        "",
        "FROM scratch AS prebuilt",
        "COPY target/release/pushline-ingest target/release/pushline-registry target/release/pushctl \\",
        "     target/release/pushline-gateway target/release/pushline-mock \\",
        *[f"     target/release/{d} \\" for d in dispatchers],
        "     /out/",
    ]


def main():
    check = sys.argv[1:] == ["--check"]
    names = providers()
    k8s = lambda f: os.path.join("deploy", "k8s", f)
    wanted = {k8s(f"dispatcher-{n}.yaml"): rendered(n) for n in names}
    wanted.update({k8s(f"dispatcher-{n}-configmap.yaml"): configmap(n) for n in names})
    wanted.update({f"deploy/compose/dispatcher-{n}.toml": compose_config(n) for n in names})
    wanted[k8s("kustomization.yaml")] = kustomization(names)
    secrets = []
    for i, n in enumerate(names):
        secrets += (["---"] if i else []) + own(n, "secret.example.yaml").rstrip("\n").splitlines()
    wanted[k8s("secrets.example.yaml")] = block(k8s("secrets.example.yaml"), "secrets", secrets + ["---"])
    wanted["docker-compose.yml"] = block("docker-compose.yml", "dispatchers", compose_services(names))
    wanted["deploy/Dockerfile"] = block("deploy/Dockerfile", "binaries", dockerfile(names))
    wanted[".dockerignore"] = block(
        ".dockerignore", "binaries", [f"!target/release/pushline-dispatcher-{n}" for n in names])
    targets = ", ".join(f'"dispatcher-{n}:{admin_port(n)}"' for n in names)
    wanted["deploy/prometheus/prometheus.yml"] = block(
        "deploy/prometheus/prometheus.yml", "targets",
        [f'- targets: ["ingest:9080", "registry:9081", {targets}]'])
    listed = "DISPATCHERS=(" + " ".join(f"dispatcher-{n}" for n in names) + ")"
    for script in ("deploy/ci/container-check.sh", "deploy/ci/live-checks.sh"):
        wanted[script] = block(script, "dispatchers", [listed])
    admin_ports = "DISPATCHER_ADMIN_PORTS=(" + " ".join(admin_port(n) for n in names) + ")"
    wanted["deploy/local/run.sh"] = block("deploy/local/run.sh", "dispatchers", [listed, admin_ports])
    stale = []
    for file, text in wanted.items():
        path = os.path.join(ROOT, file)
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(file)
            if not check:
                open(path, "w").write(text)
    rendered_here = re.compile(r"dispatcher-[a-z0-9]+(-configmap)?\.yaml")
    leftovers = [k8s(f) for f in os.listdir(HERE) if rendered_here.fullmatch(f) and k8s(f) not in wanted]
    leftovers += [f"deploy/compose/{f}" for f in os.listdir(os.path.join(ROOT, "deploy", "compose"))
                  if re.fullmatch(r"dispatcher-[a-z0-9]+\.toml", f)
                  and f"deploy/compose/{f}" not in wanted]
    if check and (stale or leftovers):
        sys.exit(f"out of date: {stale + leftovers}; run {SELF}")
    for f in leftovers:
        os.remove(os.path.join(ROOT, f))
    print(f"dispatchers for {', '.join(names)}: {'up to date' if not stale else 'rendered'}")


main()
