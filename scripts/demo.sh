#!/usr/bin/env bash
# `make demo`: build, start a throwaway Postgres, the devbroker and the four workers, drive the
# demo workload, print the summary, and stop everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bins
trap 'scripts/fleet.sh down' EXIT
# The demo settles rewards 2 s after their deposit (production default: 30 s).
export REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS=2
scripts/pg.sh destroy >/dev/null 2>&1 || true
scripts/fleet.sh up
# shellcheck disable=SC1091
source .local/fleet.env
"${CARGO_TARGET_DIR:-target}/debug/refstream" demo "$@"
