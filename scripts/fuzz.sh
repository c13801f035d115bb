#!/usr/bin/env bash
# Fuzz the parsers that read attacker-controlled bytes with cargo-fuzz (libFuzzer + AddressSanitizer).
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 600 seconds each, every target
# Targets and their checks: fuzz/fuzz_targets/, fuzz/harness.rs. Each run starts from the committed
# corpus (fuzz/corpus/<target>/) and adds what it finds there; a crash is saved under
# fuzz/artifacts/<target>/ and fails the script. `make test` replays the corpus (tests/fuzz_corpus.rs).
# cargo-fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bearer jwt jwks introspection_answer config request_target)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  cargo fuzz run --fuzz-dir fuzz "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1
done
