#!/usr/bin/env bash
# Starts or stops the local stack: a throwaway Postgres (scripts/pg.sh), the devbroker, the
# four workers, the links service (http://127.0.0.1:8080, plain HTTP: cookies not Secure) and the
# analytics worker (metrics 9106) as separate processes. State lives in .local/ (git-ignored).
#   scripts/fleet.sh up     start everything, write .local/fleet.env
#   scripts/fleet.sh down   stop everything this script started
#   FLEET_BROKER=host:port  use that Kafka-protocol broker (topics already created) instead of
#                           starting the devbroker
#   FLEET_SKIP="w1 w2"      workers `up` does not start (e.g. fraud-scorer, for
#                           `refstream fraud-eval --scorer-delay`, which starts it later)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLEET_BIN:-${CARGO_TARGET_DIR:-target}/debug}
LOCAL=.local
mkdir -p "$LOCAL/logs"
# A development stack: the development fraud.hash_key of the defaults is allowed here.
export REFSTREAM__DEV_MODE=${REFSTREAM__DEV_MODE:-true}

# Metrics ports 9101.. in this order.
SERVICES="attribution fraud-scorer reward-engine outbox-relay links analytics"

skipped() { case " ${FLEET_SKIP:-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

up() {
  scripts/pg.sh start >/dev/null
  # shellcheck disable=SC1091
  source "$LOCAL/pg.env"
  rm -f "$LOCAL/broker.addr"
  if [ -n "${FLEET_BROKER:-}" ]; then
    echo "$FLEET_BROKER" >"$LOCAL/broker.addr"
  else
    "$BIN/devbroker" --bootstrap-file "$LOCAL/broker.addr" >"$LOCAL/logs/devbroker.log" 2>&1 &
    echo $! >"$LOCAL/devbroker.pid"
  fi
  for _ in $(seq 1 100); do [ -s "$LOCAL/broker.addr" ] && break; sleep 0.1; done
  [ -s "$LOCAL/broker.addr" ] || { echo "devbroker did not start: see $LOCAL/logs/devbroker.log" >&2; exit 1; }
  cat >"$LOCAL/fleet.env" <<ENV
export REFSTREAM__DATABASE__URL=$REFSTREAM__DATABASE__URL
export REFSTREAM__KAFKA__BROKERS=$(cat "$LOCAL/broker.addr")
export REFSTREAM__KAFKA__SESSION_TIMEOUT_MS=6000
export REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS=${REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS:-30}
export REFSTREAM__DEV_MODE=$REFSTREAM__DEV_MODE
ENV
  # shellcheck disable=SC1091
  source "$LOCAL/fleet.env"
  "$BIN/refstream" migrate >/dev/null
  port=9101
  for w in $SERVICES; do
    if skipped "$w"; then rm -f "$LOCAL/$w.pid"; port=$((port + 1)); continue; fi
    REFSTREAM__METRICS__LISTEN=127.0.0.1:$port REFSTREAM__LINKS__COOKIE_SECURE=false "$BIN/$w" >"$LOCAL/logs/$w.log" 2>&1 &
    echo $! >"$LOCAL/$w.pid"
    port=$((port + 1))
  done
  for w in $SERVICES; do
    skipped "$w" && continue
    port=$((9101 + $(echo "$SERVICES" | tr ' ' '\n' | grep -n "^$w$" | cut -d: -f1) - 1))
    for _ in $(seq 1 150); do
      curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
      kill -0 "$(cat "$LOCAL/$w.pid")" 2>/dev/null || { echo "$w exited: see $LOCAL/logs/$w.log" >&2; tail -5 "$LOCAL/logs/$w.log" >&2; exit 1; }
      sleep 0.2
    done
  done
  echo "fleet up: broker $(cat "$LOCAL/broker.addr"), links http://127.0.0.1:8080, logs in $LOCAL/logs/"
}

down() {
  for w in $SERVICES devbroker; do
    if [ -f "$LOCAL/$w.pid" ]; then
      kill -TERM "$(cat "$LOCAL/$w.pid")" 2>/dev/null || true
    fi
  done
  for w in $SERVICES devbroker; do
    if [ -f "$LOCAL/$w.pid" ]; then
      pid=$(cat "$LOCAL/$w.pid")
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$LOCAL/$w.pid"
    fi
  done
  scripts/pg.sh stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
