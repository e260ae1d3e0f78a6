#!/usr/bin/env bash
# Validates the operator's kit in deploy/ without Docker or a cluster (make test runs it):
# the Kubernetes manifests against the Kubernetes JSON schemas of a pinned version, strictly
# (unknown fields are errors), the KEDA ScaledObjects against the CRD schema kept in
# deploy/kubernetes/schemas/, the pod security and resource policy and the manifests'
# cross-references; the Grafana dashboard's PromQL (every metric registered in crates/) and
# provisioning; deploy/prometheus (promtool too when installed); docker-compose.yml against the
# Compose Specification schema (deploy/schemas/) and its services and binaries.
#
#   scripts/check-deploy.sh                    # one line per check; exit 1 if any failed
#   K8S_VERSION=1.37.0 scripts/check-deploy.sh # another Kubernetes version (1.25 to 1.37)
#
# Needs only python3 and PyPI: the first run makes .local/deploy-venv with pinned packages
# (kubernetes-validate bundles the Kubernetes schemas, so validation is offline); later runs
# reuse it and take a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.local/deploy-venv
REQUIREMENTS=(
    "kubernetes-validate==1.37.0"
    "jsonschema==4.26.0"
    "PyYAML==6.0.3"
    "promql-parser==0.12.0"
    "tomli==2.2.1; python_version < '3.11'"
)
STAMP="$VENV/.requirements"

if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$STAMP" 2>/dev/null)" != "$(printf '%s\n' "${REQUIREMENTS[@]}")" ]]; then
    echo "setting up $VENV (first run: installs ${REQUIREMENTS[*]:0:4} from PyPI)"
    mkdir -p .local
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian without python3-venv has no ensurepip: make the venv without pip and install
        # into it with the system's pip (pip >= 22.3 can target another interpreter).
        rm -rf "$VENV"
        python3 -m venv --without-pip "$VENV"
        PIP=(python3 -m pip --python "$VENV/bin/python")
    else
        PIP=("$VENV/bin/python" -m pip)
    fi
    "${PIP[@]}" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    printf '%s\n' "${REQUIREMENTS[@]}" >"$STAMP"
fi

exec "$VENV/bin/python" scripts/check_deploy.py "$@"
