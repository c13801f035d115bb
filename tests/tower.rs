//! The auth core as tower middleware, driven in-process with `ServiceExt::oneshot`: the same
//! decisions and challenges as the gateway, the principal in the request's extensions.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::idp::{now, MockIdp};
use http::{Request, Response};
use portcullis::auth::{Authenticator, Principal, TokenTypes};
use portcullis::config::{Algorithm, AuthConfig};
use portcullis::devkeys::DevKey;
use portcullis::metrics::Metrics;
use portcullis::tower_layer::AuthLayer;
use serde_json::json;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

struct Fixture {
    idp: MockIdp,
    key: DevKey,
    layer: AuthLayer,
    metrics: Metrics,
}

/// A layer trusting a mock identity provider (ES256, audience `api`) and, as a second issuer,
/// one whose keys can never load.
async fn fixture() -> Fixture {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let config = AuthConfig::parse(&format!(
        r#"realm = "orders"
[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["api"]
algorithms = ["ES256"]
[[issuers]]
issuer = "https://down.example"
jwks_uri = "http://{dead}/jwks"
audiences = ["api"]
algorithms = ["ES256"]
"#,
        issuer = idp.issuer(),
        dead = common::dead_addr()
    ))
    .unwrap();
    let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
    let layer = AuthLayer::new(Authenticator::new(&config, metrics.clone()));
    let loaded = common::eventually(Duration::from_secs(10), || {
        let layer = layer.clone();
        let issuer = idp.issuer();
        async move {
            !layer
                .authenticator()
                .issuers_without_keys()
                .contains(&issuer.as_str())
        }
    })
    .await;
    assert!(loaded, "keys never loaded");
    Fixture {
        idp,
        key,
        layer,
        metrics,
    }
}

impl Fixture {
    fn token(&self, scope: &str) -> String {
        self.key.sign(&json!({
            "iss": self.idp.issuer(), "aud": "api", "exp": now() + 300, "sub": "user-7", "scope": scope
        }))
    }
}

/// An inner service that counts its calls and answers with the principal's subject.
fn inner(
    calls: Arc<AtomicUsize>,
) -> BoxCloneService<Request<String>, Response<String>, Infallible> {
    BoxCloneService::new(tower::service_fn(move |req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let p = req.extensions().get::<Principal>().cloned();
        async move {
            // The verified claims ride along for handlers (the middleware's config keeps them).
            let body = p.map_or("no principal".into(), |p| {
                let aud = p
                    .verified
                    .claims
                    .as_ref()
                    .and_then(|c| c.get("aud").cloned());
                format!(
                    "{} {} aud={}",
                    p.subject.unwrap_or_default(),
                    p.scopes.join(","),
                    aud.unwrap_or_default()
                )
            });
            Ok::<_, Infallible>(Response::new(body))
        }
    }))
}

fn get(token: Option<&str>) -> Request<String> {
    let mut req = Request::get("/orders/1");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(String::new()).unwrap()
}

fn header(resp: &Response<String>, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_layer_allows_refuses_and_puts_the_principal_in_extensions() {
    let f = fixture().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = f
        .layer
        .clone()
        .require_scopes(["orders:read"])
        .route_name("orders-read")
        .layer(inner(calls.clone()));

    let resp = svc
        .clone()
        .oneshot(get(Some(&f.token("orders:read profile"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body(), "user-7 orders:read,profile aud=\"api\"");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let resp = svc.clone().oneshot(get(None)).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(header(&resp, "www-authenticate"), "Bearer realm=\"orders\"");

    let resp = svc.clone().oneshot(get(Some("not-a-token"))).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "www-authenticate").contains("error=\"invalid_token\""));

    let resp = svc
        .clone()
        .oneshot(get(Some(&f.token("profile"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        header(&resp, "www-authenticate"),
        "Bearer realm=\"orders\", error=\"insufficient_scope\", error_description=\"The token does not carry the scopes this resource requires.\", scope=\"orders:read\""
    );
    assert_eq!(header(&resp, "content-type"), "application/json");
    let body: serde_json::Value = serde_json::from_str(resp.body()).unwrap();
    assert_eq!(body["error"], "insufficient_scope");

    let mut two = get(Some(&f.token("orders:read")));
    two.headers_mut()
        .append("authorization", "Bearer other".parse().unwrap());
    let resp = svc.clone().oneshot(two).await.unwrap();
    assert_eq!(resp.status(), 400);

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused request reached the service"
    );
    let text = String::from_utf8(f.metrics.render()).unwrap();
    assert!(
        text.contains("portcullis_auth_decisions_total{outcome=\"insufficient_scope\",route=\"orders-read\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_identity_provider_gives_503_not_401() {
    let f = fixture().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = f.layer.clone().layer(inner(calls.clone()));
    let other = DevKey::generate(Algorithm::ES256, "k2");
    let token =
        other.sign(&json!({ "iss": "https://down.example", "aud": "api", "exp": now() + 300 }));
    let resp = svc.oneshot(get(Some(&token))).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), "5");
    assert_eq!(header(&resp, "www-authenticate"), "");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_compose_per_service_over_one_authenticator() {
    let f = fixture().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let either = f
        .layer
        .clone()
        .require_any_scope(["a", "b"])
        .layer(inner(calls.clone()));
    assert_eq!(
        either
            .clone()
            .oneshot(get(Some(&f.token("b"))))
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = either.oneshot(get(Some(&f.token("c")))).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(header(&resp, "www-authenticate").contains("scope=\"a b\""));

    let opaque_only = f
        .layer
        .clone()
        .token_types(TokenTypes {
            jwt: false,
            opaque: true,
        })
        .layer(inner(calls.clone()));
    let resp = opaque_only.oneshot(get(Some(&f.token("a")))).await.unwrap();
    assert_eq!(resp.status(), 401, "a JWT on an opaque-only service");

    // The layer's wrappers reach the inner service.
    let wrapped = f.layer.clone().layer(inner(calls.clone()));
    let _ = wrapped.get_ref();
    let _inner = wrapped.into_inner();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// DPoP in the middleware: `.dpop(Required)` takes a bound token with its proof once, and the
/// proof names the request's URI (`Host` and path).
#[tokio::test(flavor = "multi_thread")]
async fn the_layer_checks_dpop_proofs() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let config = AuthConfig::parse(&format!(
        "[dpop]\nalgorithms = [\"ES256\"]\n[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n",
        idp.issuer()
    ))
    .unwrap();
    let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
    let layer = AuthLayer::new(Authenticator::new(&config, metrics));
    let loaded = common::eventually(Duration::from_secs(10), || {
        let layer = layer.clone();
        async move { layer.authenticator().issuers_without_keys().is_empty() }
    })
    .await;
    assert!(loaded);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer
        .dpop(portcullis::auth::DpopMode::Required)
        .layer(inner(calls.clone()));
    let client = DevKey::generate(Algorithm::ES256, "client");
    let token = key.sign(
        &json!({ "iss": idp.issuer(), "aud": "api", "exp": now() + 300,
        "sub": "user-7", "cnf": { "jkt": client.thumbprint() } }),
    );
    let request = |proof: &str, scheme: &str| {
        Request::get("/orders/1")
            .header("host", "api.example.com")
            .header("authorization", format!("{scheme} {token}"))
            .header("dpop", proof)
            .body(String::new())
            .unwrap()
    };
    let proof = client.dpop_proof("GET", "http://api.example.com/orders/1", &token, &json!({}));
    let resp = svc.clone().oneshot(request(&proof, "DPoP")).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", header(&resp, "www-authenticate"));
    let resp = svc.clone().oneshot(request(&proof, "DPoP")).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "www-authenticate")
        .starts_with("DPoP realm=\"portcullis\", algs=\"ES256\", error=\"invalid_dpop_proof\""));
    let other = client.dpop_proof("GET", "http://api.example.com/admin", &token, &json!({}));
    assert_eq!(
        svc.clone()
            .oneshot(request(&other, "DPoP"))
            .await
            .unwrap()
            .status(),
        401
    );
    let fresh = client.dpop_proof("GET", "http://api.example.com/orders/1", &token, &json!({}));
    let resp = svc
        .clone()
        .oneshot(request(&fresh, "Bearer"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "www-authenticate"),
        "DPoP realm=\"portcullis\", algs=\"ES256\""
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_grpc_call_gets_a_trailers_only_answer_from_the_layer() {
    // The layer in front of a tonic server: a refused call is answered as gRPC clients read
    // it (HTTP 200, grpc-status in the one header block), the RFC 6750 challenge kept.
    let f = fixture().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = f
        .layer
        .clone()
        .require_scopes(["orders:read"])
        .layer(inner(calls.clone()));
    let grpc = |token: Option<&str>| {
        let mut req = Request::post("/orders.v1.Orders/Get")
            .header("content-type", "application/grpc+proto")
            .header("te", "trailers");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(String::new()).unwrap()
    };
    let cases = [
        (None, "16", "Bearer realm=\"orders\""),
        (
            Some("not-a-token".to_owned()),
            "16",
            "error=\"invalid_token\"",
        ),
        (
            Some(f.token("profile")),
            "7",
            "error=\"insufficient_scope\"",
        ),
    ];
    for (token, status, challenge) in cases {
        let resp = svc.clone().oneshot(grpc(token.as_deref())).await.unwrap();
        assert_eq!(resp.status(), 200, "{token:?}");
        assert_eq!(header(&resp, "content-type"), "application/grpc");
        assert_eq!(header(&resp, "grpc-status"), status, "{token:?}");
        assert!(!header(&resp, "grpc-message").is_empty());
        assert!(
            header(&resp, "www-authenticate").contains(challenge),
            "{token:?}: {}",
            header(&resp, "www-authenticate")
        );
        assert_eq!(resp.body(), "");
    }
    // Not gRPC (gRPC-Web is answered as any HTTP request): the plain 401.
    let mut web = grpc(None);
    web.headers_mut().insert(
        "content-type",
        "application/grpc-web+proto".parse().unwrap(),
    );
    let resp = svc.clone().oneshot(web).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(header(&resp, "grpc-status"), "");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
