# The commands the README gives. Everything starts what it needs and stops it afterwards.
.PHONY: build demo test lint fmt clean

build:
	cargo build --workspace --bins

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	scripts/pg.sh destroy || true
	rm -rf .local
