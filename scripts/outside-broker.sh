#!/usr/bin/env bash
# `make trial-outside`: refstream tried the way a new user would, through a Kafka-protocol broker
# its tests never use: Tansu (scripts/tansu.sh), an independent Apache-Kafka-compatible broker.
# Runs the release fleet against it with settlement delay 0, then bench/outside/trial.py, where a
# pure-Python client (kafka-python, fastavro) registers 2,875 referrers and 20,000 referees and
# pushes 20,000 qualifying deposits at once: they must come back as exactly 20,000
# RewardGranted, each once, with the ledger balanced. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# A development run: the development fraud.hash_key of the defaults is allowed.
export REFSTREAM__DEV_MODE=true
cargo build --release --bins
REL=${CARGO_TARGET_DIR:-target}/release
trap 'FLEET_BIN=$REL scripts/fleet.sh down || true; scripts/tansu.sh stop' EXIT
BROKER=$(scripts/tansu.sh start)
scripts/pg.sh destroy >/dev/null 2>&1 || true
FLEET_SKIP=${FLEET_SKIP:-analytics} FLEET_BROKER=$BROKER FLEET_BIN=$REL REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS=0 scripts/fleet.sh up
# shellcheck disable=SC1091
source .local/fleet.env
.local/outside-venv/bin/python bench/outside/trial.py --bootstrap "$BROKER" --database-url "$REFSTREAM__DATABASE__URL" "$@"
