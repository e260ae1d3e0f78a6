# The commands the README gives. Everything starts what it needs and stops it afterwards.
.PHONY: build demo test test-faults lint fmt clean

build:
	cargo build --workspace --bins

demo:
	scripts/demo.sh

test:
	scripts/test.sh

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
