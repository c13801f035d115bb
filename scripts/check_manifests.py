#!/usr/bin/env python3
"""Check the Kubernetes manifests in deploy/kubernetes/ (run by scripts/check-deploy.sh).

- Schema: every built-in resource against Kubernetes' own OpenAPI schema (kubernetes-validate,
  strict: an unknown field is an error). The ServiceMonitor (a CRD) gets its fields checked here.
- The "restricted" Pod Security Standard, rule by rule
  (https://kubernetes.io/docs/concepts/security/pod-security-standards/), for every pod
  template: no host namespaces, ports or paths, no privileged containers, only the allowed
  volume types, runAsNonRoot and a non-zero runAsUser, seccomp RuntimeDefault or Localhost,
  allowPrivilegeEscalation false, every capability dropped (NET_BIND_SERVICE the only one
  that may be added back).
- What the README promises of them: no service account token, a read-only root filesystem,
  a startup probe, a CPU limit equal to the `threads` of the gateway config the manifest
  names, a grace period longer than drain_delay + shutdown_grace, a PodDisruptionBudget per
  Deployment, a ServiceMonitor selecting a Service with a `metrics` port.

The checker tests itself first: each rule must refuse a manifest made to break it.
"""

import copy
import re
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = {
    "deploy/kubernetes/sidecar.yaml": "deploy/sidecar.toml",
    "deploy/kubernetes/edge.yaml": "deploy/edge.toml",
}
KUBERNETES_VERSION = "1.30.0"
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def seconds(text):
    """A humantime duration as the gateway reads it ("5s", "1m", "500ms")."""
    total = 0.0
    for n, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def cpu(text):
    text = str(text)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def restricted(pod):
    """Problems of one pod spec under the restricted profile."""
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is set")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {v['name']} is of type {sorted(kinds)}")
    psc = pod.get("securityContext", {})
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities add {caps['add']}")
    return problems


def secret_files(gateway):
    """Every `(key, path)` of a `*_secret_file`, and of a TLS private key (`tls_key`, `key`
    of `[[server.tls_certificates]]`), in a gateway config."""
    found = []
    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif key.endswith("_secret_file") or key == "server.tls_key" or (
                key.startswith("server.tls_certificates[") and key.endswith(".key")):
            found.append((key, value))
    walk(gateway, "")
    return found


def promises(docs, config):
    """Problems with what the README says the manifests do."""
    problems = []
    gateway = tomllib.loads((ROOT / config).read_text())
    server = gateway.get("server", {})
    threads = server.get("threads")
    window = seconds(server.get("drain_delay", "5s")) + seconds(server.get("shutdown_grace", "10s"))
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if not deployments:
        problems.append("no Deployment")
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{d['metadata']['name']}: automountServiceAccountToken is not false")
        if pod.get("terminationGracePeriodSeconds", 30) <= window:
            problems.append(f"{d['metadata']['name']}: terminationGracePeriodSeconds is not above drain_delay + shutdown_grace ({window:g} s)")
        gw = [c for c in pod["containers"] if c["name"] == "portcullis"]
        if len(gw) != 1:
            problems.append(f"{d['metadata']['name']}: no portcullis container")
            continue
        c = gw[0]
        if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
            problems.append("portcullis: the root filesystem is not read-only")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in c:
                problems.append(f"portcullis: no {probe}")
        # Secrets come in as files: no secret in an environment variable, and every
        # `*_secret_file` of the config under a mounted Secret volume.
        if any("secretKeyRef" in e.get("valueFrom", {}) for e in c.get("env", [])):
            problems.append("portcullis: a secret comes in as an environment variable, not a file")
        secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        secret_dirs = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
        for key, path in secret_files(gateway):
            if not any(path.startswith(d.rstrip("/") + "/") for d in secret_dirs):
                problems.append(f"portcullis: {key} = {path} of {config} is not in a mounted Secret")
        # The proxy's port (server.listen) is the container's, and a NetworkPolicy lets it in
        # (found when the edge moved to TLS on 8443: the policy still opened 8080).
        listen = int(server.get("listen", "0.0.0.0:8080").rsplit(":", 1)[1])
        if listen not in [p.get("containerPort") for p in c.get("ports", [])]:
            problems.append(f"portcullis: server.listen's port {listen} of {config} is not a containerPort")
        opened = [p.get("port") for n in docs if n["kind"] == "NetworkPolicy"
                  for rule in n["spec"].get("ingress", []) for p in rule.get("ports", [])]
        if opened and listen not in opened:
            problems.append(f"NetworkPolicy: server.listen's port {listen} of {config} is not let in")
        limit = c.get("resources", {}).get("limits", {}).get("cpu")
        if limit is None or threads is None or cpu(limit) != threads:
            problems.append(f"portcullis: CPU limit {limit} does not match threads = {threads} of {config}")
        pdbs = [p for p in docs if p["kind"] == "PodDisruptionBudget"
                and p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        if not pdbs:
            problems.append(f"{d['metadata']['name']}: no PodDisruptionBudget")
    monitors = [m for m in docs if m["kind"] == "ServiceMonitor"]
    if not monitors:
        problems.append("no ServiceMonitor")
    for m in monitors:
        want = m["spec"]["selector"]["matchLabels"]
        services = [s for s in docs if s["kind"] == "Service"
                    and want.items() <= s["metadata"].get("labels", {}).items()]
        ports = [p for s in services for p in s["spec"]["ports"]]
        if not any(p.get("name") == "metrics" for p in ports):
            problems.append(f"ServiceMonitor {m['metadata']['name']} selects no Service with a metrics port")
        if any(e.get("port") != "metrics" for e in m["spec"]["endpoints"]):
            problems.append(f"ServiceMonitor {m['metadata']['name']} scrapes a port other than metrics")
    if not any(d["kind"] == "NetworkPolicy" for d in docs):
        problems.append("no NetworkPolicy")
    return problems


def schema_problems(docs):
    """Every built-in resource against Kubernetes' schema (the ServiceMonitor is a CRD)."""
    problems = []
    for d in docs:
        if d["kind"] == "ServiceMonitor":
            continue
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{d['kind']}/{d['metadata']['name']}: {e.message}")
    return problems


def check(path, config):
    docs = [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]
    problems = schema_problems(docs)
    for d in docs:
        if d["kind"] == "Deployment":
            problems += restricted(d["spec"]["template"]["spec"])
    problems += promises(docs, config)
    return docs, problems


def self_test(docs, config):
    """Each rule refuses a copy of a passing manifest broken for it."""
    def broken(change):
        copied = copy.deepcopy(docs)
        pod = next(d for d in copied if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        change(pod, next(c for c in pod["containers"] if c["name"] == "portcullis"), copied)
        return restricted(pod) + promises(copied, config)

    def set_(d, k, v):
        d[k] = v

    cases = {
        "drop ALL": lambda p, c, _: c["securityContext"]["capabilities"].update(drop=[]),
        "seccomp": lambda p, c, _: p["securityContext"].pop("seccompProfile"),
        "escalation": lambda p, c, _: c["securityContext"].pop("allowPrivilegeEscalation"),
        "non-root": lambda p, c, _: (p["securityContext"].pop("runAsNonRoot"),
                                     c["securityContext"].pop("runAsNonRoot")),
        "root user": lambda p, c, _: set_(c["securityContext"], "runAsUser", 0),
        "added capability": lambda p, c, _: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "host network": lambda p, c, _: set_(p, "hostNetwork", True),
        "hostPath": lambda p, c, _: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "token": lambda p, c, _: p.pop("automountServiceAccountToken"),
        "read-only root": lambda p, c, _: c["securityContext"].pop("readOnlyRootFilesystem"),
        "CPU limit": lambda p, c, _: c["resources"]["limits"].update(cpu="4"),
        "startup probe": lambda p, c, _: c.pop("startupProbe"),
        "grace": lambda p, c, _: set_(p, "terminationGracePeriodSeconds", 5),
        "secret as env": lambda p, c, _: c.setdefault("env", []).append(
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        "PDB": lambda p, c, docs: docs.remove(next(d for d in docs if d["kind"] == "PodDisruptionBudget")),
        "proxy port": lambda p, c, _: set_(c, "ports", [q for q in c["ports"] if q["name"] == "metrics"]),
        "policy port": lambda p, c, docs: [rule.update(ports=[{"port": 9090, "protocol": "TCP"}])
                                           for n in docs if n["kind"] == "NetworkPolicy"
                                           for rule in n["spec"]["ingress"]],
    }
    if secret_files(tomllib.loads((ROOT / config).read_text())):
        cases["secret file mount"] = lambda p, c, _: set_(
            c, "volumeMounts", [m for m in c["volumeMounts"] if not m["mountPath"].startswith("/var/run/secrets")])
    for name, change in cases.items():
        if not broken(change):
            sys.exit(f"check_manifests: the {name!r} rule accepted a manifest that breaks it")


def check_rendered(path):
    """What `kubectl kustomize deploy` made: every resource passes the schema, each gateway
    config is a ConfigMap holding the shipped file as it is, and every ConfigMap a Deployment
    mounts is there."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    problems = schema_problems(docs)
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for manifest, config in MANIFESTS.items():
        shipped = [d for d in yaml.safe_load_all((ROOT / manifest).read_text()) if d]
        for d in (d for d in shipped if d["kind"] == "Deployment"):
            for v in d["spec"]["template"]["spec"].get("volumes", []):
                if "configMap" not in v:
                    continue
                name = v["configMap"]["name"]
                held = maps.get(name, {}).get("data", {}).get("gateway.toml")
                if held is None:
                    problems.append(f"{manifest}: ConfigMap {name} is not rendered")
                elif held != (ROOT / config).read_text():
                    problems.append(f"ConfigMap {name} does not hold {config} as it is")
    if not any(d["kind"] == "Deployment" for d in docs):
        problems.append("no Deployment rendered")
    return docs, problems


def main():
    if len(sys.argv) > 1:
        docs, problems = check_rendered(sys.argv[1])
        for p in problems:
            print(f"kustomization: {p}")
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        print(f"deploy/kustomization.yaml: {'FAILED' if problems else 'ok'} ({kinds})")
        sys.exit(1 if problems else 0)
    failed = False
    for path, config in MANIFESTS.items():
        docs, problems = check(path, config)
        if not problems:
            self_test(docs, config)
        for p in problems:
            print(f"{path}: {p}")
        failed |= bool(problems)
        kinds = ", ".join(sorted({d["kind"] for d in docs}))
        print(f"{path}: {'FAILED' if problems else 'ok'} ({kinds})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
