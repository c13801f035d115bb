//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' checks
//! (`fuzz/harness.rs`), so every `make test` re-runs what the fuzzers found interesting. The
//! fuzzing itself is `make fuzz` (cargo-fuzz); this is its regression suite.

use std::path::Path;

#[path = "../fuzz/harness.rs"]
mod harness;

/// Every file of one target's corpus through `check`; the count, so an empty corpus fails.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its check",
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "{target}: the corpus is empty");
    n
}

#[test]
fn bearer_corpus() {
    replay("bearer", harness::bearer);
}

#[test]
fn jwt_corpus() {
    replay("jwt", harness::jwt);
}

/// The fixture key set is the one the seeds were signed with: the good seed of each key
/// (ES256, RS256, EdDSA, HS256) passes, so the target's checks after the signature run too.
#[test]
fn jwt_seeds_signed_by_the_fixture_keys_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jwt");
    let passing: Vec<_> = ["seed-01", "seed-04", "seed-07", "seed-10"]
        .iter()
        .filter(|seed| harness::jwt_accepted(&std::fs::read(dir.join(seed)).unwrap()))
        .collect();
    assert_eq!(passing.len(), 4, "only {passing:?} pass");
}

#[test]
fn jwks_corpus() {
    replay("jwks", harness::jwks);
}

#[test]
fn introspection_answer_corpus() {
    replay("introspection_answer", harness::introspection_answer);
}

#[test]
fn config_corpus() {
    replay("config", harness::config);
}

#[test]
fn request_target_corpus() {
    replay("request_target", harness::request_target);
}
