#!/usr/bin/env bash
# `make demo`: build, start a throwaway Postgres, the devbroker and the four workers, drive the
# demo workload, print the summary, and stop everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# A development run: the development fraud.hash_key of the defaults is allowed.
export REFSTREAM__DEV_MODE=true
cargo build --bins
trap 'scripts/fleet.sh down' EXIT
# The demo settles rewards 2 s after their deposit (production default: 30 s).
export REFSTREAM__CAMPAIGN__SETTLE_DELAY_SECS=2
# Where the links service sends phones (a real deployment names its store pages here).
export REFSTREAM__LINKS__DESTINATIONS__IOS=https://apps.apple.com/app/id0000000000
export REFSTREAM__LINKS__DESTINATIONS__ANDROID=https://play.google.com/store/apps/details?id=example.app
scripts/pg.sh destroy >/dev/null 2>&1 || true
scripts/fleet.sh up
# shellcheck disable=SC1091
source .local/fleet.env
"${CARGO_TARGET_DIR:-target}/debug/refstream" demo "$@"

# A referral link, as a phone opens it, and the app's deferred-attribution claim on first open.
IPHONE='Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148'
code=$(psql "$REFSTREAM__DATABASE__URL" -AtXq -c "SELECT code FROM referral_codes ORDER BY created_at LIMIT 1")
echo
echo "== a referral link: GET http://127.0.0.1:8080/r/$code from an iPhone =="
curl -s -o /dev/null -A "$IPHONE" -w '%{http_code} -> %{redirect_url}\n' "http://127.0.0.1:8080/r/$code"
echo "== the app's first open: POST /v1/attribution/claim with its signals only =="
curl -s -X POST -H 'Content-Type: application/json' -d "{\"platform\": \"ios\", \"user_agent\": \"$IPHONE\"}" \
  http://127.0.0.1:8080/v1/attribution/claim
echo

# The API and its dashboard: a fresh viewer token; the analytics worker's funnel next to what
# `refstream summary` printed (they must agree once analytics has read the topics), then again
# after analytics replayed every topic from offset zero into emptied tables.
BIN=${CARGO_TARGET_DIR:-target}/debug
"$BIN/refstream" serve >.local/logs/api.log 2>&1 &
echo $! >.local/api.pid
trap 'kill "$(cat .local/api.pid)" 2>/dev/null || true; scripts/fleet.sh down' EXIT
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:8081/healthz >/dev/null 2>&1 && break; sleep 0.2; done
token=$("$BIN/refstream" api-token create --role viewer --name "demo-viewer-$$" 2>/dev/null)
summary_json=$(psql "$REFSTREAM__DATABASE__URL" -AtXq -c "SELECT json_build_object('users', (SELECT count(*) FROM users), \
  'referrals', (SELECT count(*) FROM referrals), 'rewards_granted', (SELECT count(*) FROM rewards), \
  'rewards_reversed', (SELECT count(*) FROM rewards WHERE reversed_at IS NOT NULL))")

# Polls the funnel until it equals the summary (60 s at most); prints both; fails otherwise.
compare_funnel() {
  local attempt funnel
  for attempt in $(seq 1 60); do
    funnel=$(curl -fs -H "Authorization: Bearer $token" http://127.0.0.1:8081/v1/admin/funnel || echo '{}')
    if FUNNEL="$funnel" SUMMARY="$summary_json" python3 - "$attempt" <<'PY'
import json, os, sys
f = json.loads(os.environ["FUNNEL"]).get("totals")
s = json.loads(os.environ["SUMMARY"])
last = sys.argv[1] == "60"
if f is None:
    sys.exit(2 if last else 1)
pairs = [("signups", f["signups"], "users registered", s["users"]),
         ("attributed", f["attributed"], "referrals attributed", s["referrals"]),
         ("rewards", f["rewards"], "rewards granted", s["rewards_granted"]),
         ("reversals", f["reversals"], "rewards reversed", s["rewards_reversed"])]
same = all(a == b for _, a, _, b in pairs)
if not same and not last:
    sys.exit(1)
for name, a, label, b in pairs:
    print(f"  funnel {name:<14} {a:>6}   summary {label:<21} {b:>6}   {'equal' if a == b else 'DIFFERENT'}")
for stage in ("clicks", "approved", "held", "rejected", "first_deposits"):
    print(f"  funnel {stage:<14} {f[stage]:>6}")
sys.exit(0 if same else 2)
PY
    then return 0; fi
    [ "$attempt" = 60 ] && { echo "demo: the funnel does not match the summary" >&2; return 1; }
    sleep 1
  done
}

echo
echo "== the API: GET http://127.0.0.1:8081/v1/admin/funnel with a fresh viewer token, next to the summary =="
compare_funnel
echo "== analytics replayed from offset zero into emptied tables (analytics --rebuild): the same numbers =="
kill "$(cat .local/analytics.pid)" 2>/dev/null || true
while kill -0 "$(cat .local/analytics.pid)" 2>/dev/null; do sleep 0.2; done
: >.local/logs/analytics-rebuild.log
REFSTREAM__METRICS__LISTEN=127.0.0.1:9106 "$BIN/analytics" --rebuild >.local/logs/analytics-rebuild.log 2>&1 &
echo $! >.local/analytics.pid
# Compare only once the tables were emptied and the group rewound.
for _ in $(seq 1 300); do grep -q "replaying from the first record" .local/logs/analytics-rebuild.log && break; sleep 0.2; done
grep -q "replaying from the first record" .local/logs/analytics-rebuild.log || { echo "demo: analytics --rebuild did not start:" >&2; tail -5 .local/logs/analytics-rebuild.log >&2; exit 1; }
compare_funnel
echo "   (dashboard: http://127.0.0.1:8081/dashboard while a fleet runs; OpenAPI: /openapi.json)"
