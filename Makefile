# The two commands of the README's quick start, and a few more.
.PHONY: setup run test check bench

setup:
	@./scripts/setup.sh

# Run the gateway with the shipped gateway.toml.
run: setup
	cargo run --release --locked -- run --config gateway.toml

# Every test: unit, integration (real servers on 127.0.0.1:0) and doc tests.
test: setup
	cargo test --locked

# Validate a configuration: make check CONFIG=path/to/gateway.toml
CONFIG ?= gateway.toml
check: setup
	cargo run --locked --quiet -- check --config $(CONFIG)

# Criterion micro-benchmarks of the hot path.
bench: setup
	cargo bench --locked --bench hot_path
