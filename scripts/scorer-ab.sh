#!/usr/bin/env bash
# An A/B of two fraud-scorer binaries over the same work: make bench's 26,000 registrations are
# attributed once (the fleet runs without its scorer), then each binary in turn scores all of
# them from an empty scorer state, alternating, with a warm-up run first. For each run it prints
# the time to score them all, the CPU of the scorer's Postgres backends (each scorer names its
# connections) and of the scorer itself; then the mean per binary and new/old.
#
#   scripts/scorer-ab.sh OLD_BINARY NEW_BINARY [PAIRS]     (PAIRS: 3)
#   AB_OLD_SQL / AB_NEW_SQL   SQL run before each run of that binary (a schema difference the
#                             two expect, e.g. an index one of them dropped)
#
# Build the old binary from the commit to compare with, e.g.:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p fraud-scorer)
# Both binaries must embed the same migrations (the database is migrated once, by the fleet).
# The scorer's state is reset between runs on this throwaway database only: assessments, their
# history (its append-only trigger is switched off for the delete), identity links, the scorer's
# progress, dedupe rows and unpublished referral-scored rows; each run reads the topics from the
# start under a consumer group of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-3}
export REFSTREAM__DEV_MODE=true
cargo build --release --bins
REL=${CARGO_TARGET_DIR:-target}/release
trap 'scripts/fleet.sh down' EXIT
scripts/pg.sh destroy >/dev/null 2>&1 || true
export REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS=0 REFSTREAM__KAFKA__FETCH_WAIT_MAX_MS=6
FLEET_SKIP="analytics fraud-scorer" FLEET_BIN=$REL scripts/fleet.sh up
# shellcheck disable=SC1091
source .local/fleet.env
# shellcheck disable=SC1091
source .local/pg.env
"$REL/refstream-bench" --attribute-only
# The index notices of AB_*_SQL are not news.
export PGOPTIONS="-c client_min_messages=warning"
referrals=$(psql -Atc "SELECT count(*) FROM referrals")
ticks() { cut -d')' -f2 "/proc/$1/stat" | awk '{print $12 + $13}'; }
cpu_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }
declare -A pg_sum=([old]=0 [new]=0) runs=([old]=0 [new]=0)
order="new"
for _ in $(seq 1 "$PAIRS"); do order="$order old new"; done
n=0
for which in $order; do
  n=$((n + 1))
  psql -q -c "ALTER TABLE assessment_history DISABLE TRIGGER assessment_history_append_only" \
    -c "DELETE FROM assessment_history" \
    -c "ALTER TABLE assessment_history ENABLE TRIGGER assessment_history_append_only" \
    -c "DELETE FROM assessments" -c "DELETE FROM identity_links" \
    -c "DELETE FROM processed_events WHERE consumer = 'fraud-scorer'" \
    -c "DELETE FROM consumer_progress WHERE consumer = 'fraud-scorer'" \
    -c "DELETE FROM outbox WHERE topic = 'referral-scored'" \
    -c "VACUUM ANALYZE assessments" -c "VACUUM ANALYZE assessment_history" -c "VACUUM ANALYZE identity_links" \
    -c "VACUUM ANALYZE processed_events" -c "VACUUM ANALYZE outbox" -c "CHECKPOINT" >/dev/null
  if [ "$which" = new ]; then bin=$NEW; sql=${AB_NEW_SQL:-}; else bin=$OLD; sql=${AB_OLD_SQL:-}; fi
  [ -z "$sql" ] || psql -q -c "$sql" >/dev/null
  sleep 2
  started=$(date +%s%N)
  REFSTREAM__KAFKA__GROUP_PREFIX="scorer-ab-$n-$$" REFSTREAM__METRICS__LISTEN=127.0.0.1:9102 "$bin" >".local/logs/scorer-ab-$n.log" 2>&1 &
  scorer=$!
  until [ "$(psql -Atc "SELECT count(*) FROM assessments")" -ge "$referrals" ]; do
    kill -0 "$scorer" 2>/dev/null || { echo "the scorer of run $n exited: see .local/logs/scorer-ab-$n.log" >&2; exit 1; }
    sleep 0.2
  done
  elapsed_ms=$((($(date +%s%N) - started) / 1000000))
  pg=0
  for pid in $(psql -Atc "SELECT pid FROM pg_stat_activity WHERE application_name = 'fraud-scorer'"); do
    pg=$((pg + $(ticks "$pid")))
  done
  own=$(ticks "$scorer")
  kill -9 "$scorer"
  wait "$scorer" 2>/dev/null || true
  label=$which
  if [ "$n" = 1 ]; then label="$which (warm-up)"; else pg_sum[$which]=$((pg_sum[$which] + pg)); runs[$which]=$((runs[$which] + 1)); fi
  printf '%-14s %s referrals scored in %5.2f s   postgres for the scorer %6s CPU-s   scorer %5s CPU-s\n' \
    "$label" "$referrals" "$(awk -v m="$elapsed_ms" 'BEGIN { print m / 1000 }')" "$(cpu_s "$pg")" "$(cpu_s "$own")"
done
awk -v o="${pg_sum[old]}" -v on="${runs[old]}" -v w="${pg_sum[new]}" -v wn="${runs[new]}" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "mean postgres for the scorer: old %.2f CPU-s, new %.2f CPU-s, new/old %.2f\n", o / on / hz, w / wn / hz, (w / wn) / (o / on) }'
