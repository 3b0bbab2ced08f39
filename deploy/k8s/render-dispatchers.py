#!/usr/bin/env python3
"""Renders every provider's dispatcher objects (Deployment, Service, PodDisruptionBudget,
KEDA ScaledObject) from dispatcher.yaml.tmpl, for the providers listed in
providers/src/lib.rs, into dispatcher-<provider>.yaml, and lists them in
kustomization.yaml. The ScaledObject has one lag trigger per partition of the provider's
push stream (`partitions` in the [nats] section of its ConfigMap, 1 when not set) and
scales on their sum.

  deploy/k8s/render-dispatchers.py           # write the files
  deploy/k8s/render-dispatchers.py --check   # fail unless they are up to date (CI)

A provider also needs its own ConfigMap (dispatcher-<provider>-configmap.yaml) and Secret
(pushline-<provider>, in secrets.example.yaml); --check fails when one is missing.
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HEADER = "# Rendered by deploy/k8s/render-dispatchers.py from dispatcher.yaml.tmpl; do not edit.\n"


def providers():
    source = open(os.path.join(ROOT, "providers", "src", "lib.rs")).read()
    listed = re.search(r"static LIST: &\[&dyn Spec\] = &\[(.*?)\];", source, re.S)
    if not listed:
        sys.exit("providers/src/lib.rs: no `static LIST` found")
    names = re.findall(r"&dispatcher_([a-z0-9]+)::spec::SPEC", listed.group(1))
    if not names:
        sys.exit("providers/src/lib.rs: the list is empty")
    return names


def partitions(provider):
    """`nats.partitions` in the provider's ConfigMap (1 when not set)."""
    path = os.path.join(HERE, f"dispatcher-{provider}-configmap.yaml")
    text = open(path).read() if os.path.exists(path) else ""
    found = re.search(r"^\s*partitions\s*=\s*(\d+)\s*$", text, re.M)
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


def kustomization(names):
    path = os.path.join(HERE, "kustomization.yaml")
    lines = open(path).read().splitlines()
    kept = [l for l in lines if not re.match(r"\s+- dispatchers?-[a-z0-9-]+\.yaml$", l)]
    at = next(i for i, l in enumerate(kept) if l.strip() == "- registry-pdb.yaml") + 1
    entries = []
    for name in names:
        entries += [f"  - dispatcher-{name}-configmap.yaml", f"  - dispatcher-{name}.yaml"]
    return "\n".join(kept[:at] + entries + kept[at:]) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    names = providers()
    wanted = {f"dispatcher-{n}.yaml": rendered(n) for n in names}
    wanted["kustomization.yaml"] = kustomization(names)
    stale = []
    for file, text in wanted.items():
        path = os.path.join(HERE, file)
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(file)
            if not check:
                open(path, "w").write(text)
    leftovers = [f for f in os.listdir(HERE)
                 if re.fullmatch(r"dispatcher-[a-z0-9]+\.yaml", f) and f not in wanted]
    secrets = open(os.path.join(HERE, "secrets.example.yaml")).read()
    missing = [f"dispatcher-{n}-configmap.yaml" for n in names
               if not os.path.exists(os.path.join(HERE, f"dispatcher-{n}-configmap.yaml"))]
    missing += [f"Secret pushline-{n} in secrets.example.yaml" for n in names
                if f"name: pushline-{n}\n" not in secrets]
    if missing:
        sys.exit("each provider needs its own settings; missing: " + ", ".join(missing))
    if check and (stale or leftovers):
        sys.exit(f"out of date: {stale + leftovers}; run deploy/k8s/render-dispatchers.py")
    for f in leftovers:
        os.remove(os.path.join(HERE, f))
    print(f"dispatchers for {', '.join(names)}: {'up to date' if not stale else 'rendered'}")


main()
