# The commands the README gives. Everything starts what it needs and stops it afterwards.
.PHONY: build demo test test-faults bench lint fmt clean

build:
	cargo build --workspace --bins

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# Throughput and latency of the release fleet beside pgbench on the same Postgres (prints a
# table; about 5 minutes plus the release build). More options: make bench BENCH_ARGS="--burst 5000".
bench:
	scripts/bench.sh $(BENCH_ARGS)

# A long steady load: make bench with a ten-minute paced phase (180,000 deposits after 200,000
# registrations), printed minute by minute: latency, CPU per deposit, resident memory, database
# size, and the last minute against the first (about 15 minutes plus the release build).
BENCH_SOAK_ARGS ?= --referrers 20000 --paced-secs 600 --soak-window-secs 60
.PHONY: bench-soak
bench-soak:
	scripts/bench.sh $(BENCH_SOAK_ARGS)

# refstream through a Kafka-compatible broker its tests never use (Tansu, from PyPI), driven by a
# pure-Python client: 20,000 deposits at once must come back as 20,000 RewardGranted, each once.
.PHONY: trial-outside
trial-outside:
	scripts/outside-broker.sh $(TRIAL_ARGS)

# The full fault-injection suite: every scenario, over a hundred kills.
test-faults:
	ONLY_FAULTS=1 FAULT_SCALE=9 scripts/test.sh

lint:
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	scripts/pg.sh destroy || true
	rm -rf .local

# Measures the fraud rules: starts the local stack, produces a labeled adversarial stream of
# 10,000 registrations through it, prints precision, recall and false-positive rate per fraud
# kind, and stops everything. More options: make fraud-eval FRAUD_EVAL_ARGS="--seed 7 --json";
# the lag case: FRAUD_EVAL_ARGS="--scorer-delay 120" (the fleet then starts without its scorer,
# and fraud-eval starts one 120 s after the stream began).
.PHONY: fraud-eval
fraud-eval:
	cargo build --bins
	bash -c 'set -euo pipefail; trap "scripts/fleet.sh down" EXIT; scripts/pg.sh destroy >/dev/null 2>&1 || true; $(if $(findstring --scorer-delay,$(FRAUD_EVAL_ARGS)),FLEET_SKIP=fraud-scorer) scripts/fleet.sh up; . .local/fleet.env; "$${CARGO_TARGET_DIR:-target}/debug/refstream" fraud-eval --registrations 10000 $(FRAUD_EVAL_ARGS)'
