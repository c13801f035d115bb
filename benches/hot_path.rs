//! Micro-benchmarks of the per-request work: route matching over 200 routes, bearer extraction,
//! JWT validation (parse, key lookup, signature, claims) per algorithm, a verified-token cache
//! hit, and challenge rendering. Run with `make bench`.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::auth::jwt::{self, ClaimRules};
use portcullis::auth::keys::{self, KeySet, Lookup};
use portcullis::auth::{bearer, AuthError, Challenge, Principal, TokenCache, TokenSource};
use portcullis::config::{Algorithm, AuthMode, RouteConfig, ScopeClaim};
use portcullis::devkeys::{jwks, DevKey};
use portcullis::routing::{RouteMatch, Router};
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn routes(n: usize) -> Vec<RouteConfig> {
    (0..n)
        .map(|i| RouteConfig {
            name: format!("r{i}"),
            path_prefix: format!("/svc{}/v{}/res{i}", i % 20, i % 3),
            methods: Some(vec![Method::GET, Method::POST]),
            upstreams: vec!["127.0.0.1:1".into()],
            scopes: vec![format!("svc{i}:read")],
            scopes_any: vec![],
            auth: AuthMode::Required,
            token_types: Default::default(),
            forward_token: false,
        })
        .collect()
}

fn route_match(c: &mut Criterion) {
    let router = Router::new(&routes(200));
    let mut g = c.benchmark_group("route_match_200_routes");
    g.bench_function("hit_deep_path", |b| {
        b.iter(|| {
            let m = router.find(&Method::GET, black_box("/svc7/v1/res187/items/42/details"));
            assert!(matches!(m, RouteMatch::Found(_)));
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            let m = router.find(&Method::GET, black_box("/nothing/here/at/all"));
            assert!(matches!(m, RouteMatch::NotFound));
        })
    });
    g.finish();
}

fn bearer_extraction(c: &mut Criterion) {
    let token = format!(
        "Bearer {}.{}.{}",
        "e".repeat(36),
        "p".repeat(300),
        "s".repeat(342)
    );
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&token).unwrap());
    c.bench_function("bearer_extract_700_byte_jwt", |b| {
        b.iter(|| bearer::extract(black_box(&headers)).unwrap().unwrap().len())
    });
}

fn challenge_rendering(c: &mut Criterion) {
    let scopes = vec!["orders:read".to_string(), "orders:write".to_string()];
    c.bench_function("challenge_insufficient_scope", |b| {
        b.iter(|| Challenge::new(black_box(&AuthError::InsufficientScope), "api", &scopes))
    });
}

/// Parse, pick the key, verify the signature, check the claims: what a cache miss costs.
fn jwt_validation(c: &mut Criterion) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({ "iss": "https://id.example", "sub": "user", "aud": "api",
        "scope": "orders:read orders:write", "iat": secs, "exp": secs + 3600 });
    let rules = ClaimRules {
        audiences: vec!["api".into()],
        leeway: Duration::from_secs(30),
        require_typ: true,
        scope_claim: ScopeClaim::Scope,
        max_token_lifetime: None,
    };
    let mut g = c.benchmark_group("jwt_validate_cold");
    for alg in BENCHED_ALGORITHMS {
        let (key, set) = key_and_set(alg);
        let token = key.sign(&claims);
        g.bench_function(alg.name(), |b| {
            b.iter(|| {
                let t = jwt::parse(black_box(&token), 8192).unwrap();
                let Lookup::Candidates(keys) = set.lookup(t.header.kid.as_deref(), t.alg) else {
                    panic!()
                };
                assert!(keys::verify(&t, keys[0]));
                jwt::check_claims(&t.header, &t.claims, &rules, now).unwrap();
            })
        });
    }
    g.finish();
}

/// The algorithms the JWT benches measure, one per key type (RSA PKCS#1 and PSS, P-256, Ed25519).
const BENCHED_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// A fresh key and the key set that holds it alone.
fn key_and_set(alg: Algorithm) -> (DevKey, KeySet) {
    let key = DevKey::generate(alg, "k1");
    let set = KeySet::from_jwks(jwks(&[&key]).to_string().as_bytes(), &[alg]).unwrap();
    (key, set)
}

/// Signature verification alone, side by side in one run: our keys (parsed once when the key
/// set loads) against jsonwebtoken 10 with its aws-lc backend (key material rebuilt per call),
/// the backend Portcullis used before. Read the ratio of the two lines of each algorithm.
fn verify_backends(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify_same_run");
    for alg in BENCHED_ALGORITHMS {
        let (key, set) = key_and_set(alg);
        let token = key.sign(&serde_json::json!({ "iss": "i" }));
        let t = jwt::parse(&token, 8192).unwrap();
        let Lookup::Candidates(ours) = set.lookup(t.header.kid.as_deref(), t.alg) else {
            panic!()
        };
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk()).unwrap();
        let theirs = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let jose = match alg {
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            _ => jsonwebtoken::Algorithm::EdDSA,
        };
        g.bench_function(format!("{}/pre_parsed", alg.name()), |b| {
            b.iter(|| assert!(keys::verify(black_box(&t), ours[0])))
        });
        g.bench_function(format!("{}/jsonwebtoken", alg.name()), |b| {
            b.iter(|| {
                assert!(jsonwebtoken::crypto::verify(
                    black_box(t.signature),
                    t.signing_input.as_bytes(),
                    &theirs,
                    jose
                )
                .unwrap())
            })
        });
    }
    g.finish();
}

/// What a cache hit costs: hashing the token and the lookup.
fn token_cache_hit(c: &mut Criterion) {
    let cache = TokenCache::new(100_000, Duration::from_secs(300));
    let token = format!("{}.{}.{}", "e".repeat(36), "p".repeat(300), "s".repeat(342));
    let principal = Principal {
        subject: Some("user".into()),
        client_id: None,
        scopes: vec!["orders:read".into()],
        issuer: "https://id.example".into(),
        expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
        source: TokenSource::Jwt,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    cache.insert(TokenCache::key(&token), principal, 0, 1, now + 3600, now);
    c.bench_function("token_cache_hit_700_byte_token", |b| {
        b.iter(|| assert!(cache.get(&TokenCache::key(black_box(&token))).is_some()))
    });
}

criterion_group!(
    benches,
    route_match,
    bearer_extraction,
    jwt_validation,
    verify_backends,
    token_cache_hit,
    challenge_rendering
);
criterion_main!(benches);
