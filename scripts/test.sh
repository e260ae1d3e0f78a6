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
cargo test --workspace --all-targets -- --test-threads="${TEST_THREADS:-2}"
