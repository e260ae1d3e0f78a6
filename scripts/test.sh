#!/usr/bin/env bash
# `make test`: starts a throwaway Postgres, builds, runs every test (unit, property,
# integration against Postgres, end-to-end with the real binaries and the devbroker, and a
# short run of the fault-injection suite), and stops what it started.
#   FAULT_SCALE=N   scales the fault suite (make test-faults runs it with N=9: 100+ kills)
#   ONLY_FAULTS=1   runs the fault suite alone
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'scripts/pg.sh stop >/dev/null 2>&1 || true' EXIT
scripts/pg.sh start
# shellcheck disable=SC1091
source .local/pg.env
export REFSTREAM_TEST_DATABASE_URL="$DATABASE_URL"
# Tests run in development mode: the binaries accept the development fraud.hash_key.
export REFSTREAM__DEV_MODE=true
# The browser tests (tests/links.rs, tests/dashboard.rs) drive Debian's Chromium, headless,
# directly and through chromedriver (package chromium-driver).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "test.sh: error: chromium/chromedriver are not installed and we are not root (no sudo)" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "test.sh: chromium or chromedriver not found; installing them for the browser tests:" >&2
  echo "test.sh: + apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver" >&2
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
  command -v chromium >/dev/null 2>&1 || { echo "test.sh: error: installed chromium but it is not on PATH" >&2; exit 1; }
  command -v chromedriver >/dev/null 2>&1 || { echo "test.sh: error: installed chromium-driver but chromedriver is not on PATH" >&2; exit 1; }
fi
# tests/api.rs validates the OpenAPI document with an independent validator (PyPI's
# openapi-spec-validator), installed once into .local/api-venv.
if ! .local/api-venv/bin/python -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  echo "test.sh: installing openapi-spec-validator into .local/api-venv" >&2
  mkdir -p .local
  python3 -m venv .local/api-venv
  .local/api-venv/bin/pip install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<0.8'
fi
cargo build --workspace --bins
if [ -z "${ONLY_FAULTS:-}" ]; then
  # docker-compose.yml cannot run here (no Docker engine): at least check that it parses.
  python3 -c 'import yaml; d = yaml.safe_load(open("docker-compose.yml")); assert {"kafka", "postgres", "attribution", "fraud-scorer", "reward-engine", "outbox-relay"} <= set(d["services"]), d["services"].keys()'
  # The operator's kit (deploy/): Kubernetes manifests against the Kubernetes schemas, KEDA
  # ScaledObjects against KEDA's CRD schema, the Grafana dashboard's metrics against the code.
  scripts/check-deploy.sh
  cargo test --workspace --all-targets -- --test-threads="${TEST_THREADS:-2}" --skip chaos_
fi
# The fault suite restarts Postgres itself (scenario c): it runs alone, one scenario at a time.
mkdir -p .local
set +e
FAULT_SCALE="${FAULT_SCALE:-1}" cargo test -p refstream-e2e --test faults -- --test-threads=1 --nocapture chaos_ >.local/faults.log 2>&1
rc=$?
set -e
grep -E '^(==|   I|test |running )|test result' .local/faults.log || true
if [ "$rc" -ne 0 ]; then
  echo "fault suite failed (full log: .local/faults.log):" >&2
  tail -60 .local/faults.log >&2
  exit "$rc"
fi
