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

# The API and its dashboard: a fresh viewer token; the analytics worker's funnel next to the
# summary's numbers (they must agree once analytics has read the topics).
BIN=${CARGO_TARGET_DIR:-target}/debug
"$BIN/refstream" serve >.local/logs/api.log 2>&1 &
echo $! >.local/api.pid
trap 'kill "$(cat .local/api.pid)" 2>/dev/null || true; scripts/fleet.sh down' EXIT
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:8081/healthz >/dev/null 2>&1 && break; sleep 0.2; done
token=$("$BIN/refstream" api-token create --role viewer --name "demo-viewer-$$" 2>/dev/null)
echo
echo "== the API: GET http://127.0.0.1:8081/v1/admin/funnel with a fresh viewer token, next to the summary =="
for attempt in $(seq 1 60); do
  funnel=$(curl -fs -H "Authorization: Bearer $token" http://127.0.0.1:8081/v1/admin/funnel)
  summary=$(curl -fs -H "Authorization: Bearer $token" http://127.0.0.1:8081/v1/admin/summary)
  if FUNNEL="$funnel" SUMMARY="$summary" python3 - "$attempt" <<'PY'
import json, os, sys
f = json.loads(os.environ["FUNNEL"])["totals"]
s = json.loads(os.environ["SUMMARY"])
pairs = [("signups", f["signups"], "users registered", s["users"]),
         ("attributed", f["attributed"], "referrals attributed", s["referrals"]),
         ("rewards", f["rewards"], "rewards granted", s["rewards_granted"]),
         ("reversals", f["reversals"], "rewards reversed", s["rewards_reversed"])]
if any(a != b for _, a, _, b in pairs) and sys.argv[1] != "60":
    sys.exit(1)
for name, a, label, b in pairs:
    print(f"  funnel {name:<11} {a:>6}   summary {label:<21} {b:>6}   {'equal' if a == b else 'DIFFERENT'}")
for stage in ("clicks", "approved", "held", "rejected", "first_deposits"):
    print(f"  funnel {stage:<11} {f[stage]:>6}")
sys.exit(0 if all(a == b for _, a, _, b in pairs) else 2)
PY
  then break; fi
  sleep 1
done
echo "   (dashboard: http://127.0.0.1:8081/dashboard while a fleet runs; OpenAPI: /openapi.json)"
