#!/usr/bin/env bash
# Check the shipped deployment assets:
# - the alert rules parse and pass their unit tests, and every query of the Grafana dashboard
#   parses as PromQL (promtool; that every metric they name is one the gateway exports is
#   tests/deploy_assets.rs, part of `make test`);
# - the Kubernetes manifests pass Kubernetes' schema and the restricted Pod Security Standard
#   (scripts/check_manifests.py, with kubernetes-validate from PyPI in target/deploy-venv), and
#   so does what deploy/kustomization.yaml renders (kubectl kustomize), ConfigMaps included.
# Installs promtool (Debian's prometheus package) when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check-deploy: installing promtool (prometheus)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    }
    # The package starts a server where a service manager runs; the check needs only promtool.
    (systemctl stop prometheus || service prometheus stop) >/dev/null 2>&1 || true
  else
    echo "check-deploy: promtool not found; install with: sudo apt-get install -y prometheus" >&2
    exit 1
  fi
fi

promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

# Each dashboard query as a recording rule, Grafana's variables replaced, so promtool parses it.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - deploy/grafana/portcullis.json "$work/dashboard-rules.yml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
lines = ["groups:", "  - name: dashboard", "    rules:"]
n = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = (target["expr"].replace("$__rate_interval", "5m")
                .replace('instance=~"$instance"', 'instance=~".*"'))
        n += 1
        lines.append(f"      - record: dashboard:query_{n}")
        lines.append(f"        expr: {json.dumps(expr)}")
if n == 0:
    sys.exit("the dashboard has no queries")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print(f"dashboard: {len(dashboard['panels'])} panels, {n} queries")
PY
promtool check rules "$work/dashboard-rules.yml"

venv=target/deploy-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import kubernetes_validate, yaml" 2>/dev/null; then
  echo "check-deploy: installing kubernetes-validate and PyYAML into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0" "PyYAML>=6"
fi
"$venv/bin/python" scripts/check_manifests.py

# The kustomization renders both deployments with their configs (kubectl's built-in kustomize).
if ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check-deploy: installing kubectl" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq kubectl >/dev/null 2>&1 || apt-get install -y -qq kubernetes-client >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq kubectl >/dev/null 2>&1 || apt-get install -y -qq kubernetes-client >/dev/null
    }
  else
    echo "check-deploy: kubectl not found; install it (it renders deploy/kustomization.yaml)" >&2
    exit 1
  fi
fi
kubectl kustomize deploy > "$work/rendered.yaml"
"$venv/bin/python" scripts/check_manifests.py "$work/rendered.yaml"
echo "check-deploy: ok"
