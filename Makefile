# The two commands of the README's quick start, and a few more.
.PHONY: setup run serve test check deploy-check image-test bench load-bench fuzz soak flood

setup:
	@./scripts/setup.sh

# Try it: the gateway with a development issuer and a demo upstream, on loopback (portcullis dev).
run: setup
	cargo run --release --locked -- dev

# Run the gateway with a configuration: make serve CONFIG=gateway.toml
serve: setup
	cargo run --release --locked -- run --config $(CONFIG)

# Every test: unit, integration (real servers on 127.0.0.1:0) and doc tests.
test:
	@./scripts/setup.sh test
	cargo test --locked

CONFIG ?= gateway.toml

# Validate a configuration: make check CONFIG=path/to/gateway.toml
check: setup
	cargo run --locked --quiet -- check --config $(CONFIG)

# The alert rules (promtool check + unit tests) and the dashboard's queries; installs promtool.
deploy-check:
	./scripts/check-deploy.sh

# The runtime image of deploy/Dockerfile, built with buildah from a debootstrap base (no registry),
# run with podman read-only, without capabilities, as uid 65532, against portcullis dev; as root,
# installs podman, buildah, debootstrap and runc. PORTCULLIS_BIN=path packages another binary.
image-test:
	./scripts/image-test.sh

# Criterion micro-benchmarks of the hot path.
bench: setup
	cargo bench --locked --bench hot_path

# The load benchmark: Portcullis beside nginx and bare hyper on loopback, about 10 minutes.
# Pass options with ARGS, e.g. make load-bench ARGS="--rounds 5".
load-bench:
	./benches/load/run.py $(ARGS)

# Fuzz the token, key set, introspection and config parsers: make fuzz FUZZ_SECONDS=600 (each).
FUZZ_SECONDS ?= 600
fuzz: setup
	./scripts/fuzz.sh $(FUZZ_SECONDS)

# The soak: the release binary for SOAK_SECONDS (default 600) under mixed traffic while keys rotate and
# the upstream restarts; fails on a wrong decision, a lost request or memory growth.
SOAK_SECONDS ?= 600
soak: setup
	cargo build --release --locked --bin portcullis --example soak
	./target/release/examples/soak --seconds $(SOAK_SECONDS)

# The flood: 1,000,000 distinct forged JWTs, random kids and random opaque tokens as fast as they
# go; fails unless all are refused within the memory, key-fetch and introspection bounds.
FLOOD_COUNT ?= 1000000
flood: setup
	cargo build --release --locked --bin portcullis --example soak
	./target/release/examples/soak --flood --count $(FLOOD_COUNT)
