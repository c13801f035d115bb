//! Micro-benchmarks of the per-request work that exists so far: route matching over 200 routes,
//! bearer extraction, and challenge rendering. Run with `make bench`.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::auth::{bearer, AuthError, Challenge};
use portcullis::config::{AuthMode, RouteConfig};
use portcullis::routing::{RouteMatch, Router};
use std::hint::black_box;

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

criterion_group!(benches, route_match, bearer_extraction, challenge_rendering);
criterion_main!(benches);
