#!/usr/bin/env bash
# `make bench`: release build, a throwaway Postgres, the devbroker and the four release workers
# (settlement delay 0), then refstream-bench: registrations, a burst of qualifying deposits, a
# paced load, read back from Kafka, and pgbench on the same Postgres with the same reward
# transaction once per event and in batches of 100. Prints one table; stops everything.
#   BENCH_BROKER=tansu   run against Tansu (scripts/tansu.sh), an independent Kafka-compatible
#                        broker, instead of the devbroker (librdkafka's mock cluster)
#   BENCH_PG_PROFILE=1   load pg_stat_statements; refstream-bench then prints the statements
#                        that took most of Postgres' time after each phase
set -euo pipefail
cd "$(dirname "$0")/.."
# A development run: the development fraud.hash_key of the defaults is allowed.
export REFSTREAM__DEV_MODE=true
cargo build --release --bins
REL=${CARGO_TARGET_DIR:-target}/release
trap 'scripts/fleet.sh down; scripts/tansu.sh stop' EXIT
scripts/pg.sh destroy >/dev/null 2>&1 || true
export REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS=0
# The devbroker (librdkafka's mock cluster) cannot wake a waiting fetch: a record waits up to
# fetch.wait.max.ms at every hop, and a quiet topic is fetched again every fetch.wait.max.ms.
# Apache Kafka answers a waiting fetch when a record arrives. 6 ms: at 3 the fleet's empty
# fetches cost about 0.15 of a core, 7-8% of the registrations' CPU (README, How fast it is).
if [ "${BENCH_BROKER:-devbroker}" = devbroker ]; then
  export REFSTREAM__KAFKA__FETCH_WAIT_MAX_MS=${REFSTREAM__KAFKA__FETCH_WAIT_MAX_MS:-6}
fi
# Commit times let the bench say where the paced load's time went (fleet and pgbench alike).
export PG_EXTRA_OPTS="${PG_EXTRA_OPTS:-} -c track_commit_timestamp=on"
if [ -n "${BENCH_PG_PROFILE:-}" ]; then
  PG_EXTRA_OPTS="$PG_EXTRA_OPTS -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on"
fi
if [ "${BENCH_BROKER:-devbroker}" = tansu ]; then
  export FLEET_BROKER
  FLEET_BROKER=$(scripts/tansu.sh start)
fi
# The money path is measured: the analytics worker (a reader of the public topics) is not run.
FLEET_SKIP=${FLEET_SKIP:-analytics} FLEET_BIN=$REL scripts/fleet.sh up
# shellcheck disable=SC1091
source .local/fleet.env
# shellcheck disable=SC1091
source .local/pg.env
psql -q -c "CREATE DATABASE refstream_pgbench" >/dev/null
if [ -n "${BENCH_PG_PROFILE:-}" ]; then
  psql -q -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()" >/dev/null
fi
PGBENCH_URL="${DATABASE_URL%/*}/refstream_pgbench"
REFSTREAM__DATABASE__URL=$PGBENCH_URL "$REL/refstream" migrate >/dev/null
psql -q -d refstream_pgbench -f bench/pgbench/setup.sql >/dev/null
"$REL/refstream-bench" --pgbench-url "$PGBENCH_URL" "$@"
