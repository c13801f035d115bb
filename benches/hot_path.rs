//! Micro-benchmarks of the per-request work: route matching over 200 routes, the canonical target
//! and route together (the gate's first step), the upstream request's header work, bearer extraction,
//! the JWT shape check, JWT validation (parse, key lookup, signature, claims) per algorithm, a
//! verified-token cache hit, the scope check, the whole `authorize` decision on a cache hit (JWT
//! and introspected opaque token), challenge rendering, W3C trace context, and a sampled
//! request's span queued for OTLP export. Run with `make bench`.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::auth::cache::KeyMemo;
use portcullis::auth::jwt::{self, ClaimRules};
use portcullis::auth::keys::{self, KeySet, Lookup};
use portcullis::auth::{
    bearer, AuthError, Authenticator, Challenge, Principal, RequestInfo, RequestUri, RoutePolicy,
    TokenCache, TokenSource,
};
use portcullis::config::{Algorithm, AuthConfig, AuthMode, RouteConfig, ScopeClaim};
use portcullis::devkeys::{jwks, DevKey};
use portcullis::gate;
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
            upstream_protocol: Default::default(),
            upstream_tls: None,
            policy: RoutePolicy::new(vec![format!("svc{i}:read")], vec![]),
            auth: AuthMode::Required,
            forward_token: false,
            allow_path_parameters: false,
            allow_method_override: false,
            allow_options_asterisk: false,
            cors_preflight: false,
            resource: None,
            rate_limit: None,
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

/// The gate's first step on every request: the canonical target, then the route. `normal` is a
/// target already in normal form (borrowed, no allocation); `encoded` needs rewriting.
fn canonical_target_and_route(c: &mut Criterion) {
    let router = Router::new(&routes(200));
    let mut g = c.benchmark_group("gate_route_200_routes");
    for (name, target) in [
        (
            "normal",
            "/svc7/v1/res187/items/42/details?page=2&sort=name",
        ),
        ("encoded", "/svc7/v1/res187/%69tems/42/caf%c3%a9?page=2"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let routed = gate::route(&router, &Method::GET, black_box(target.as_bytes()));
                assert!(routed.is_ok());
            })
        });
    }
    g.finish();
}

/// The upstream request's header work: hop-by-hop removal, stripping what the client may not
/// choose, then the forwarding headers and the request id, on a browser-like request of 12
/// fields.
fn upstream_headers(c: &mut Criterion) {
    use portcullis::dataplane::headers;
    let mut req = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ("cookie", "session=abc"),
        ("x-request-id", "7f6c1e2a-req"),
        ("x-forwarded-for", "203.0.113.9"),
        ("content-type", "application/json"),
        ("origin", "https://app.example.com"),
        ("connection", "keep-alive"),
    ] {
        req.append(name, HeaderValue::from_static(value));
    }
    // The default list of other gateways' identity headers, as every request is checked against.
    let identity = portcullis::config::IdentityNames::new(portcullis::gate::headers::DEFAULT_STRIP);
    let strip = headers::Strip {
        trusted: false,
        method_override: false,
        identity: &identity,
    };
    let client = headers::ClientAddr::new("10.1.2.3".parse().unwrap());
    let mut g = c.benchmark_group("upstream_headers_12_fields");
    // `forwarding_only` is the same run's baseline: what stripping adds is the difference.
    for (name, strip_first) in [("strip_and_forwarding", true), ("forwarding_only", false)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || req.clone(),
                |mut r| {
                    if strip_first {
                        headers::remove_hop_by_hop(&mut r);
                        headers::strip_client_headers(&mut r, strip);
                    }
                    headers::set_forwarded_headers(&mut r, &client, false, false);
                    headers::set_request_id(&mut r);
                    r
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Choosing a route's upstream: round-robin over the healthy ones of a group of four, from a
/// worker's own rotation (the issue's bar for a selection: well under 100 ns).
fn upstream_select(c: &mut Criterion) {
    use portcullis::dataplane::upstreams::Upstreams;
    let gauge =
        prometheus::IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["upstream"]).unwrap();
    let list: Vec<String> = (1..=4).map(|p| format!("127.0.0.1:{p}")).collect();
    let upstreams = Upstreams::resolve([list.as_slice()], &gauge).unwrap();
    let rotation = upstreams.rotation(0);
    c.bench_function("upstream_select_4_backends", |b| {
        b.iter(|| black_box(upstreams.select(&rotation, 0, &[]).map(|m| m.backend.addr)))
    });
}

/// A JWT-shaped token of 700 bytes, the size of a typical RS256 access token.
fn token_700_bytes() -> String {
    format!("{}.{}.{}", "e".repeat(36), "p".repeat(300), "s".repeat(342))
}

fn bearer_extraction(c: &mut Criterion) {
    let token = format!("Bearer {}", token_700_bytes());
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&token).unwrap());
    c.bench_function("bearer_extract_700_byte_jwt", |b| {
        b.iter(|| bearer::extract(black_box(&headers)).unwrap().unwrap().len())
    });
}

/// The JWT shape check (three base64url parts), run on every token the cache does not know.
fn jwt_shape(c: &mut Criterion) {
    let token = token_700_bytes();
    c.bench_function("jwt_shape_700_byte_token", |b| {
        b.iter(|| assert!(jwt::looks_like_jwt(black_box(&token))))
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

/// One request through a route's rate limit (`sub` key, never over): what every request on a
/// limited route pays, against the request's ~30 µs in the load benchmark.
fn rate_limit_admit(c: &mut Criterion) {
    use portcullis::gate::limit::{LimitKey, Limiter, RateLimit};
    let limiter = Limiter::new(RateLimit {
        key: LimitKey::Subject,
        requests: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000_000,
    });
    let principal = Principal::new(
        Some("user-7".into()),
        Some("app".into()),
        vec!["orders:read".into()],
        "https://id.example".into(),
        None,
        TokenSource::Jwt,
    )
    .unwrap();
    let client = "192.0.2.7".parse().unwrap();
    c.bench_function("rate_limit_admit_by_sub", |b| {
        b.iter(|| limiter.admit(Some(black_box(&principal)), client).is_ok())
    });
}

/// What a cache hit costs: hashing the token and the lookup.
fn token_cache_hit(c: &mut Criterion) {
    let cache = TokenCache::new(100_000, Duration::from_secs(300));
    let token = token_700_bytes();
    let principal = std::sync::Arc::new(
        Principal::new(
            Some("user".into()),
            None,
            vec!["orders:read".into()],
            "https://id.example".into(),
            Some(SystemTime::now() + Duration::from_secs(3600)),
            TokenSource::Jwt,
        )
        .unwrap(),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let issuer = AuthConfig::parse(
        "[[issuers]]\nissuer = \"https://id.example\"\njwks_uri = \"https://id.example/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n",
    )
    .unwrap()
    .issuers
    .remove(0);
    let metrics = portcullis::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let keys = std::sync::Arc::new(portcullis::auth::IssuerKeys::new(
        issuer,
        reqwest::Client::new(),
        metrics,
    ));
    cache.insert(TokenCache::key(&token), principal, keys, 1, now + 3600, now);
    c.bench_function("token_cache_hit_700_byte_token", |b| {
        b.iter(|| assert!(cache.get(&TokenCache::key(black_box(&token))).is_some()))
    });
}

/// The cache key of a 700-byte token, side by side: SHA-256 (aws-lc), the portable BLAKE2b-256
/// (blake2 crate) and `TokenCache::key` (BLAKE2b-256 with run-time SIMD). All are
/// collision-resistant; the fastest one wins.
fn cache_key_hash(c: &mut Criterion) {
    use blake2::Digest;
    let token = token_700_bytes();
    let mut g = c.benchmark_group("cache_key_700_byte_token");
    g.bench_function("sha256", |b| {
        b.iter(|| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(&token).as_bytes())
        })
    });
    g.bench_function("blake2b256", |b| {
        b.iter(|| blake2::Blake2b::<blake2::digest::consts::U32>::digest(black_box(&token)))
    });
    g.bench_function("blake2b256_simd", |b| {
        b.iter(|| TokenCache::key(black_box(&token)))
    });
    g.finish();
}

/// The route's scope check, run on every request (cached token or not): two required scopes
/// against a token granting six.
fn scope_check(c: &mut Criterion) {
    let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let policy = RoutePolicy::new(strings(&["orders:read", "orders:write"]), vec![]);
    let granted = strings(&[
        "openid",
        "profile",
        "email",
        "invoices:read",
        "orders:read",
        "orders:write",
    ]);
    c.bench_function("scope_check_2_of_6", |b| {
        b.iter(|| assert!(policy.allows(black_box(&granted))))
    });
}

/// `Authenticator::authorize` end to end on a cache hit, as an adapter calls it: bearer
/// extraction, token kind, cache lookup, claim checks, scope check and the decision metrics.
/// The identity provider is a loopback server that is asked once (keys, or the one
/// introspection answer) before measuring. Each iteration includes a `block_on` of a
/// current-thread runtime, a few hundred nanoseconds.
fn authorize_cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = DevKey::generate(Algorithm::RS256, "k1");
    let idp = rt.block_on(fixed_idp(jwks(&[&key]).to_string()));
    std::env::set_var("PORTCULLIS_BENCH_INTROSPECTION_SECRET", "bench-secret");
    let config = AuthConfig::parse(&format!(
        r#"
        [[issuers]]
        issuer = "{idp}"
        jwks_uri = "{idp}/jwks"
        audiences = ["api"]
        algorithms = ["RS256"]
        [introspection]
        endpoint = "{idp}/introspect"
        client_id = "bench"
        client_secret_env = "PORTCULLIS_BENCH_INTROSPECTION_SECRET"
        audiences = ["api"]
        "#
    ))
    .unwrap();
    let auth = started(&rt, &config);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = key.sign(
        &serde_json::json!({ "iss": idp, "sub": "user", "aud": "api",
        "scope": "orders:read orders:write", "iat": secs, "exp": secs + 3600 }),
    );
    let policy = RoutePolicy::new(vec!["orders:read".into()], vec![]);
    let mut g = c.benchmark_group("authorize_cache_hit");
    for (kind, token) in [
        ("jwt", jwt),
        ("opaque", format!("opaque-{}", "x".repeat(40))),
    ] {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        headers.insert("authorization", value);
        let info = RequestInfo {
            headers: &headers,
            query: None,
            route: "bench",
            policy: &policy,
            method: "GET",
            uri: RequestUri::exact("/orders", Some("api.example.com")),
            calls: None,
            client_cert: None,
            token_key: None,
        };
        rt.block_on(auth.authorize(&info))
            .expect("the first call fills the cache");
        g.bench_function(kind, |b| {
            b.iter(|| rt.block_on(auth.authorize(black_box(&info))).unwrap())
        });
        // As the gateway asks on a connection that presented the token before: no hashing.
        let memo = KeyMemo::default();
        let info = RequestInfo {
            token_key: Some(&memo),
            ..info
        };
        g.bench_function(format!("{kind}_same_connection"), |b| {
            b.iter(|| rt.block_on(auth.authorize(black_box(&info))).unwrap())
        });
    }
    g.finish();
}

/// What a DPoP-bound token costs over a bearer one per request (RFC 9449): the proof's checks
/// alone (ES256 verify, thumbprint, `htu`, `ath`), and the whole decision on a cache hit with
/// a fresh proof each time (the replay-cache insert included). Proofs are signed outside the
/// measured time.
fn dpop_per_request(c: &mut Criterion) {
    use criterion::BatchSize;
    use portcullis::auth::dpop::{self, DpopSettings};
    use portcullis::auth::DpopMode;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = DevKey::generate(Algorithm::RS256, "k1");
    let client = DevKey::generate(Algorithm::ES256, "client");
    let idp = rt.block_on(fixed_idp(jwks(&[&key]).to_string()));
    let mut config = AuthConfig::parse(&format!(
        "[[issuers]]\nissuer = \"{idp}\"\njwks_uri = \"{idp}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n"
    ))
    .unwrap();
    config.dpop = Some(DpopSettings::default());
    let auth = started(&rt, &config);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key.sign(
        &serde_json::json!({ "iss": idp, "sub": "user", "aud": "api",
        "scope": "orders:read", "iat": secs, "exp": secs + 3600,
        "cnf": { "jkt": client.thumbprint() } }),
    );
    let htu = "http://api.example.com/orders";
    let mut policy = RoutePolicy::new(vec!["orders:read".into()], vec![]);
    policy.dpop = DpopMode::Required;
    let headers_with = |proof: String| {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("DPoP {token}")).unwrap();
        headers.insert("authorization", value);
        headers.insert("dpop", HeaderValue::from_str(&proof).unwrap());
        headers.insert("host", HeaderValue::from_static("api.example.com"));
        headers
    };
    let fresh = || client.dpop_proof("GET", htu, &token, &serde_json::json!({}));
    let mut g = c.benchmark_group("dpop_per_request");
    let checker = dpop::Dpop::new(
        DpopSettings::default(),
        prometheus::IntCounter::new("e", "e").unwrap(),
    );
    let headers = headers_with(fresh());
    let uri = RequestUri::exact("/orders", None);
    g.bench_function("proof_check_es256", |b| {
        b.iter(|| {
            let now = portcullis::auth::jwt::unix_seconds(SystemTime::now());
            checker
                .check(black_box(&headers), "GET", &uri, &token, now)
                .unwrap()
        })
    });
    // The first call fills the verified-token cache.
    fn info<'a>(headers: &'a HeaderMap, policy: &'a RoutePolicy) -> RequestInfo<'a> {
        RequestInfo {
            headers,
            query: None,
            route: "bench",
            policy,
            method: "GET",
            uri: RequestUri::exact("/orders", None),
            calls: None,
            client_cert: None,
            token_key: None,
        }
    }
    let first = headers_with(fresh());
    rt.block_on(auth.authorize(&info(&first, &policy))).unwrap();
    g.bench_function("authorize_cache_hit_fresh_proof", |b| {
        b.iter_batched(
            || headers_with(fresh()),
            |h| rt.block_on(auth.authorize(&info(&h, &policy))).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// An authenticator for `config` with its background tasks on `rt`, once its keys loaded.
fn started(rt: &tokio::runtime::Runtime, config: &AuthConfig) -> Authenticator {
    let metrics = portcullis::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let auth = Authenticator::new(config, metrics);
    for task in auth.refresh_tasks() {
        rt.spawn(task);
    }
    while !auth.issuers_without_keys().is_empty() {
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
    }
    auth
}

/// A loopback identity provider with fixed answers: `GET /jwks` gets `jwks`, anything else an
/// active introspection answer. One request per connection. Returns its base URL.
async fn fixed_idp(jwks: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let active = format!(
        r#"{{"active":true,"sub":"svc","aud":"api","scope":"orders:read","exp":{}}}"#,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0; 8192];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let body = if buf[..n].starts_with(b"GET /jwks") {
                &jwks
            } else {
                &active
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all((head + body).as_bytes()).await;
        }
    });
    base
}

/// What W3C Trace Context costs per request: continuing a client's `traceparent` (parse, a new
/// span id, the header rewritten) and starting a trace when there is none.
fn trace_context(c: &mut Criterion) {
    use portcullis::dataplane::{headers::random_u64, trace};
    let sent = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    c.bench_function("traceparent_continue", |b| {
        b.iter_batched_ref(
            || {
                let mut h = HeaderMap::new();
                h.insert("traceparent", sent.clone());
                h
            },
            |h| trace::propagate(black_box(h), random_u64, |c, _| c.unwrap_or(false)),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("traceparent_start", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |h| trace::propagate(black_box(h), random_u64, |c, _| c.unwrap_or(false)),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// What a sampled request's span costs the worker that ends it: the span built whole and
/// queued for the export thread (which sends it to a local sink; only the queueing is timed,
/// the queue emptied between rounds so that no span is dropped).
fn span_record(c: &mut Criterion) {
    use portcullis::dataplane::trace::Trace;
    use portcullis::otlp::{Exporter, RequestSpan};
    use std::io::{BufRead, BufReader, Read, Write};
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if out.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let config = portcullis::config::TracingConfig {
        endpoint: format!("http://{addr}/v1/traces").parse().unwrap(),
        service_name: "bench".into(),
        sample_ratio: 1.0,
        follow_client_sampling: true,
        export_timeout: Duration::from_secs(5),
    };
    let exports =
        prometheus::IntCounterVec::new(prometheus::Opts::new("e", "e"), &["result"]).unwrap();
    let exporter = Exporter::start(&config, exports).unwrap();
    let now = SystemTime::now();
    let span = RequestSpan {
        trace: Trace {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            parent: Some(0x1234),
            sampled: true,
        },
        method: "GET",
        route: "orders",
        status: 200,
        outcome: "allowed",
        started: now - Duration::from_micros(300),
        ended: now,
        request_id: Some("0b6d9f8e-6a43-4f1c-9f3e-5b2a7c1d9e00"),
        client: Some("10.0.0.7".parse().unwrap()),
        upstream: Some("10.0.1.3:8080".parse().unwrap()),
        client_id: Some("orders-app"),
    };
    c.bench_function("span_record", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let round = left.min(1024);
                let start = std::time::Instant::now();
                for _ in 0..round {
                    exporter.record(black_box(&span), Vec::new());
                }
                timed += start.elapsed();
                exporter.flush();
                left -= round;
            }
            timed
        })
    });
    exporter.shutdown(Duration::from_secs(1));
}

criterion_group!(
    benches,
    route_match,
    canonical_target_and_route,
    upstream_headers,
    upstream_select,
    bearer_extraction,
    jwt_shape,
    jwt_validation,
    verify_backends,
    token_cache_hit,
    cache_key_hash,
    scope_check,
    authorize_cache_hit,
    challenge_rendering,
    rate_limit_admit,
    dpop_per_request,
    trace_context,
    span_record
);
criterion_main!(benches);
