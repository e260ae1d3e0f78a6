#!/usr/bin/env bash
# `make test`: starts a throwaway Postgres, builds, runs every test (unit, integration against
# Postgres, end-to-end with the real binaries and the devbroker), and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'scripts/pg.sh stop >/dev/null 2>&1 || true' EXIT
scripts/pg.sh start
# shellcheck disable=SC1091
source .local/pg.env
export REFSTREAM_TEST_DATABASE_URL="$DATABASE_URL"
cargo build --workspace --bins
# docker-compose.yml cannot run here (no Docker engine): at least check that it parses.
python3 -c 'import yaml; d = yaml.safe_load(open("docker-compose.yml")); assert {"kafka", "postgres", "attribution", "fraud-scorer", "reward-engine", "outbox-relay"} <= set(d["services"]), d["services"].keys()'
cargo test --workspace --all-targets -- --test-threads="${TEST_THREADS:-2}"
