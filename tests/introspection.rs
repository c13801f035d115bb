//! Opaque tokens through the real gateway against a mock authorization server (RFC 7662):
//! answers, failures, the cache and its bounds, client authentication, and which tokens go where.

mod common;

use std::sync::Once;
use std::time::{Duration, Instant};

use common::authz::{MockAs, Mode, CLIENT_SECRET};
use common::idp::{challenge, now, MockIdp};
use common::{became_ready, client, scrape, scrape_until, start_gateway, EchoUpstream};
use futures_util::StreamExt as _;
use portcullis::app::RunningApp;
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::json;

const SECRET_ENV: &str = "PORTCULLIS_TEST_INTROSPECTION_SECRET";

/// Set the client secret once, before any test of this binary reads the environment.
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var(SECRET_ENV, CLIENT_SECRET));
}

/// A gateway whose `[introspection]` points at `az`, with routes `GET /orders` (orders:read)
/// and `POST /orders` (orders:write) to `up`. `settings` go into `[introspection]`; `more` after.
fn gateway(az: &MockAs, up: &EchoUpstream, settings: &str, more: &str) -> RunningApp {
    init();
    start_gateway(&format!(
        r#"[introspection]
endpoint = "{endpoint}"
issuer = "{issuer}"
client_id = "gateway client"
client_secret_env = "{SECRET_ENV}"
audiences = ["api"]
{settings}
{orders}
{more}"#,
        endpoint = az.endpoint(),
        issuer = az.issuer(),
        orders = common::orders_routes(up.addr),
    ))
}

async fn send(gw: &RunningApp, method: &str, path: &str, token: &str) -> reqwest::Response {
    client()
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", gw.proxy_addr),
        )
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn status(gw: &RunningApp, token: &str) -> u16 {
    send(gw, "GET", "/orders/1", token).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_token_passes_with_identity_headers_and_an_inactive_one_gets_401() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "", "");
    az.activate("opaque-token-1", "orders:read profile");

    let resp = send(&gw, "GET", "/orders/1", "opaque-token-1").await;
    assert_eq!(resp.status(), 200);
    let seen = up.seen().pop().unwrap();
    let h = &seen.headers;
    assert_eq!(h["x-auth-subject"], "user-7");
    assert_eq!(h["x-auth-client-id"], "app-1");
    assert_eq!(h["x-auth-scopes"], "orders:read profile");
    assert_eq!(h["x-auth-issuer"], az.issuer().as_str());
    assert!(!h.contains_key("authorization"));

    let call = &az.calls()[0];
    assert_eq!(call.field("token"), Some("opaque-token-1"));
    assert_eq!(call.field("token_type_hint"), Some("access_token"));
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    let resp = send(&gw, "GET", "/orders/1", "never-issued").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"The access token is not active.\""
    );
    assert_eq!(up.hits(), 1, "the inactive token reached the upstream");
    let m = scrape_until(gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "inactive")],
        ) == 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_introspection_requests_total",
            &[("result", "active")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "portcullis_introspection_requests_total",
            &[("result", "inactive")]
        ),
        1.0
    );
    assert_eq!(
        m.get("portcullis_introspection_duration_seconds_count", &[]),
        2.0
    );
}

/// Active answers that must still not open a route: other audience, other issuer, a refresh
/// token, expired, not yet valid; and a 400 for a token the endpoint cannot introspect.
#[tokio::test(flavor = "multi_thread")]
async fn active_answers_that_do_not_fit_are_refused() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "", "");
    let base = json!({ "active": true, "scope": "orders:read", "aud": "api", "exp": now() + 600 });
    let with = |k: &str, v: serde_json::Value| {
        let mut a = base.clone();
        a[k] = v;
        a
    };
    let cases = [
        (
            "other-audience",
            with("aud", json!(["other-api"])),
            "The access token is not meant for this resource.",
        ),
        (
            "no-audience",
            json!({ "active": true, "scope": "orders:read", "exp": now() + 600 }),
            "The access token is not meant for this resource.",
        ),
        (
            "other-issuer",
            with("iss", json!("https://evil.example")),
            "The access token comes from an untrusted issuer.",
        ),
        (
            "refresh-token",
            with("token_type", json!("refresh_token")),
            "The token is not an access token.",
        ),
        // How node-oidc-provider introspects a refresh token: active, with a scope, a subject
        // and a client, and neither `token_type` nor `aud`. The required audience refuses it.
        (
            "refresh-token-as-node-oidc-provider-answers",
            json!({ "active": true, "scope": "orders:read", "sub": "user-7", "client_id": "app-1",
                    "iss": az.issuer(), "exp": now() + 86_400, "iat": now() }),
            "The access token is not meant for this resource.",
        ),
        // Bound to a client certificate this connection did not present (RFC 8705 §3), or to
        // a DPoP key on a route without DPoP: not a bearer token (RFC 9449 §7.1).
        (
            "certificate-bound",
            with(
                "cnf",
                json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            ),
            "The access token is bound to a client certificate that this connection did not present.",
        ),
        (
            "dpop-bound",
            with(
                "cnf",
                json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            ),
            "The access token is bound to a key or certificate",
        ),
        (
            "expired",
            with("exp", json!(now() - 5)),
            "The access token expired.",
        ),
        (
            "not-yet",
            with("nbf", json!(now() + 3600)),
            "The access token is not valid yet.",
        ),
        // Claims bound for identity headers: a control character or a 50 KB value refuses the
        // token instead of dropping or passing on the header.
        (
            "newline-subject",
            with("sub", json!("user-7\r\nX-Auth-Scopes: admin")),
            "The access token carries a claim that cannot be passed on",
        ),
        (
            "nul-client",
            with("client_id", json!("app\u{0}")),
            "The access token carries a claim that cannot be passed on",
        ),
        (
            "huge-scope",
            with(
                "scope",
                json!(format!("orders:read {}", "x".repeat(50_000))),
            ),
            "The access token carries a claim that cannot be passed on",
        ),
    ];
    for (token, answer, description) in cases {
        az.set_answer(token, answer);
        let resp = send(&gw, "GET", "/orders/1", token).await;
        assert_eq!(resp.status(), 401, "{token}");
        assert!(
            challenge(&resp).contains(description),
            "{token}: {}",
            challenge(&resp)
        );
    }
    az.set_answer("fits", base.clone());
    assert_eq!(
        status(&gw, "fits").await,
        200,
        "the base answer itself is fine"
    );

    az.set_mode(Mode::Status(400));
    let resp = send(&gw, "GET", "/orders/1", "cannot-introspect").await;
    assert_eq!(
        resp.status(),
        401,
        "a 400 is about the token, not an outage"
    );
    assert_eq!(up.hits(), 1);
}

/// Bad answers and a failing endpoint: 503 with Retry-After, never 401, never a pass; nothing of
/// it cached, so the same token passes once the endpoint is well again.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_gives_503_within_the_timeout_and_recovers() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "timeout = \"500ms\"", "");
    az.activate("tok", "orders:read");
    let big = format!("{{\"active\":true,\"pad\":\"{}\"}}", "x".repeat(10 << 20));
    let modes = [
        (
            "active as a string",
            Mode::Body("{\"active\":\"true\"}".into()),
        ),
        (
            "active missing",
            Mode::Body("{\"scope\":\"orders:read\"}".into()),
        ),
        ("html", Mode::Body("<html><body>Login</body></html>".into())),
        ("10 MB", Mode::Body(big)),
        ("500", Mode::Status(500)),
        ("401 to our credentials", Mode::Status(401)),
        ("reset mid-answer", Mode::Reset),
        ("slow", Mode::Hold),
    ];
    for (what, mode) in modes {
        az.set_mode(mode);
        let started = Instant::now();
        let resp = send(&gw, "GET", "/orders/1", "tok").await;
        assert_eq!(resp.status(), 503, "{what}");
        assert_eq!(resp.headers()["retry-after"], "5", "{what}");
        assert!(challenge(&resp).is_empty(), "{what}: a 503 is no challenge");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    az.set_mode(Mode::Normal);
    az.release();
    assert_eq!(status(&gw, "tok").await, 200, "recovered");
    assert_eq!(up.hits(), 1);
    let m = scrape(gw.metrics_addr).await;
    for (result, n) in [
        ("bad_answer", 4.0),
        ("bad_status", 1.0),
        ("unauthorized", 1.0),
        ("unreachable", 1.0),
        ("timeout", 1.0),
        ("active", 1.0),
    ] {
        assert_eq!(
            m.get(
                "portcullis_introspection_requests_total",
                &[("result", result)]
            ),
            n,
            "{result}"
        );
    }
    assert_eq!(m.get("portcullis_introspection_in_flight", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_endpoint_gives_503() {
    init();
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&format!(
        "[introspection]\nendpoint = \"http://{}/introspect\"\nclient_id = \"gateway client\"\nclient_secret_env = \"{SECRET_ENV}\"\naudiences = [\"api\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        common::dead_addr(),
        up.addr
    ));
    let resp = send(&gw, "GET", "/x", "tok").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_token_a_hundred_times_costs_one_call_and_200_concurrent_misses_share_one() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "", "");
    az.activate("popular", "orders:read");
    for _ in 0..100 {
        assert_eq!(status(&gw, "popular").await, 200);
    }
    assert_eq!(az.call_count(), 1);

    // 200 requests with a new token, all waiting on the endpoint, which holds its answer until
    // every one of them has missed the cache.
    az.activate("fresh", "orders:read");
    az.set_mode(Mode::Hold);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let gw_addr = gw.proxy_addr;
            tokio::spawn(async move {
                client()
                    .get(format!("http://{gw_addr}/orders/1"))
                    .bearer_auth("fresh")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    scrape_until(gw.metrics_addr, |m| {
        m.get(
            "portcullis_introspection_cache_requests_total",
            &[("result", "miss")],
        ) >= 201.0
    })
    .await;
    assert_eq!(az.in_flight(), 1, "one call for 200 waiting requests");
    az.set_mode(Mode::Normal);
    az.release();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(az.call_count(), 2);
    let m = scrape(gw.metrics_addr).await;
    assert_eq!(
        m.get(
            "portcullis_introspection_cache_requests_total",
            &[("result", "hit")]
        ),
        99.0
    );
    // "popular" and "fresh".
    assert_eq!(m.get("portcullis_introspection_cache_entries", &[]), 2.0);
}

/// A cached answer never outlives the token's `exp`, even with a long `cache_ttl`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_answer_never_outlives_exp() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "cache_ttl = \"5m\"", "");
    let exp = now() + 2;
    az.set_answer(
        "short-lived",
        json!({ "active": true, "scope": "orders:read", "aud": "api", "exp": exp }),
    );
    assert_eq!(status(&gw, "short-lived").await, 200);
    // The server would still call it active; only the gateway's own TTL can stop it.
    let refused = common::eventually(Duration::from_secs(10), || async {
        status(&gw, "short-lived").await == 401
    })
    .await;
    assert!(refused, "still accepted long after exp");
    assert!(now() >= exp, "refused before exp");
    assert!(now() <= exp + 3, "accepted for {}s after exp", now() - exp);
}

/// Revocation latency is `cache_ttl`: a revoked token works until its entry expires, then not.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_once_its_cache_entry_expires() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "cache_ttl = \"1s\"", "");
    az.activate("revocable", "orders:read");
    assert_eq!(status(&gw, "revocable").await, 200);
    let revoked_at = Instant::now();
    az.revoke("revocable");
    let refused = common::eventually(Duration::from_secs(10), || async {
        status(&gw, "revocable").await == 401
    })
    .await;
    assert!(refused, "a revoked token kept working");
    let latency = revoked_at.elapsed();
    assert!(
        latency >= Duration::from_millis(500) && latency < Duration::from_secs(4),
        "revocation took {latency:?} with cache_ttl 1s"
    );
    assert_eq!(
        az.call_count(),
        2,
        "one call to cache it, one after it expired"
    );
    // Inactive answers are cached too (negative_cache_ttl): no call for the next refusal.
    assert_eq!(status(&gw, "revocable").await, 401);
    assert_eq!(az.call_count(), 2);
}

/// Claims are cached, decisions are not: a token cached through the read route gets 403 on the
/// write route, without another call.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_cached_through_a_read_route_is_refused_on_a_write_route() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "", "");
    az.activate("reader", "orders:read");
    assert_eq!(status(&gw, "reader").await, 200);
    let resp = send(&gw, "POST", "/orders", "reader").await;
    assert_eq!(resp.status(), 403);
    assert!(challenge(&resp).contains("error=\"insufficient_scope\""));
    assert!(challenge(&resp).contains("scope=\"orders:write\""));
    assert_eq!(az.call_count(), 1);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_and_post_client_authentication_are_what_the_server_checks() {
    let up = EchoUpstream::start("app").await;
    let basic = MockAs::start().await;
    let gw = gateway(&basic, &up, "", "");
    basic.activate("t", "orders:read");
    assert_eq!(status(&gw, "t").await, 200);
    let call = &basic.calls()[0];
    assert!(call.authorization.as_deref().unwrap().starts_with("Basic "));
    assert_eq!(
        call.field("client_secret"),
        None,
        "the secret went into the body"
    );

    let post = MockAs::start().await;
    post.expect_post_auth();
    let gw = gateway(&post, &up, "auth_method = \"client_secret_post\"", "");
    post.activate("t", "orders:read");
    assert_eq!(status(&gw, "t").await, 200);
    let call = &post.calls()[0];
    assert_eq!(call.authorization, None);
    assert_eq!(call.field("client_id"), Some("gateway client"));
    assert_eq!(call.field("client_secret"), Some(CLIENT_SECRET));

    // The server expects Basic; a gateway sending post auth is refused: 503, loudly.
    let wrong = MockAs::start().await;
    let gw = gateway(&wrong, &up, "auth_method = \"client_secret_post\"", "");
    wrong.activate("t", "orders:read");
    assert_eq!(status(&gw, "t").await, 503);
    let m = scrape(gw.metrics_addr).await;
    assert_eq!(
        m.get(
            "portcullis_introspection_requests_total",
            &[("result", "unauthorized")]
        ),
        1.0
    );
}

/// The form is encoded properly: what the gateway accepts as a bearer token (`+`, `/`, `=`)
/// arrives intact, and so does anything else through the library (`&`, `%`, `=` inside).
#[tokio::test(flavor = "multi_thread")]
async fn tokens_reach_the_endpoint_intact() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "", "");
    let token = "a+b/c.d~e-f_g==";
    assert_eq!(
        send(&gw, "GET", "/orders/1", token).await.status(),
        401,
        "unknown"
    );
    assert_eq!(az.calls()[0].field("token"), Some(token));

    let config = portcullis::config::Config::parse(&format!(
        "[introspection]\nendpoint = \"{}\"\nclient_id = \"gateway client\"\nclient_secret_env = \"{SECRET_ENV}\"\naudiences = [\"api\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\n",
        az.endpoint()
    ))
    .unwrap();
    let introspector = portcullis::auth::Introspector::new(
        config.introspection.unwrap(),
        portcullis::auth::fetch::http_client(),
        portcullis::metrics::Metrics::new(prometheus::Registry::new()).unwrap(),
    );
    let hostile = "tok&token_type_hint=x&token=other%41=+ =";
    az.activate(hostile, "orders:read");
    let principal = introspector
        .validate(hostile, None, std::time::SystemTime::now(), None)
        .await
        .expect("active");
    assert_eq!(principal.scopes, vec!["orders:read"]);
    let call = az.calls().pop().unwrap();
    assert_eq!(call.field("token"), Some(hostile));
    assert_eq!(call.field("token_type_hint"), Some("access_token"));
    assert_eq!(call.form.len(), 2, "{:?}", call.form);
}

/// 10,000 distinct random tokens: never more than `max_in_flight` calls at once, the cache
/// within its capacity, nothing let through.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_random_tokens_is_bounded() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(&az, &up, "max_in_flight = 4\ncache_capacity = 1000", "");
    az.set_delay(Duration::from_millis(2));
    let gw_addr = gw.proxy_addr;
    let c = client();
    let statuses = futures_util::stream::iter(0..10_000u32)
        .map(|i| {
            let c = c.clone();
            async move {
                c.get(format!("http://{gw_addr}/orders/1"))
                    .bearer_auth(format!("random-{i}-{:x}", i.wrapping_mul(2654435761)))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<u16>>()
        .await;
    assert!(statuses.iter().all(|s| *s == 401 || *s == 503));
    assert!(statuses.contains(&401));
    assert_eq!(up.hits(), 0);
    let most = az.max_in_flight();
    assert!(
        (2..=4).contains(&most),
        "{most} calls at once (max_in_flight 4)"
    );
    assert!(az.call_count() <= 10_000);
    let m = scrape(gw.metrics_addr).await;
    let entries = m.get("portcullis_introspection_cache_entries", &[]);
    assert!(entries <= 1000.0, "{entries} entries");
    assert!(entries > 0.0);
    assert_eq!(m.get("portcullis_introspection_in_flight", &[]), 0.0);
}

/// The endpoint from the issuer's discovery metadata; readiness waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_can_come_from_discovery() {
    init();
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = start_gateway(&format!(
        "[introspection]\nissuer = \"{}\"\nclient_id = \"gateway client\"\nclient_secret_env = \"{SECRET_ENV}\"\naudiences = [\"api\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        az.issuer(),
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    assert_eq!(az.discoveries(), 1);
    az.activate("t", "orders:read");
    assert_eq!(send(&gw, "GET", "/x", "t").await.status(), 200);
    assert_eq!(az.call_count(), 1);
}

/// JWTs from configured issuers are checked locally; anything else goes to introspection; a
/// route's `token_types` keeps the other kind out without a call.
#[tokio::test(flavor = "multi_thread")]
async fn each_token_goes_where_it_belongs() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(
        &az,
        &up,
        "",
        &format!(
            r#"[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["api"]
algorithms = ["ES256"]
[[routes]]
name = "jwt-only"
path_prefix = "/jwt"
upstreams = ["{up}"]
token_types = ["jwt"]
[[routes]]
name = "opaque-only"
path_prefix = "/opaque"
upstreams = ["{up}"]
token_types = ["opaque"]
"#,
            issuer = idp.issuer(),
            up = up.addr
        ),
    );
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let local = key.sign(&json!({
        "iss": idp.issuer(), "aud": "api", "exp": now() + 300, "scope": "orders:read", "sub": "jwt-user"
    }));
    // A JWT from an issuer the gateway does not know: the authorization server may know it.
    let stranger = DevKey::generate(Algorithm::ES256, "k9").sign(&json!({
        "iss": "https://elsewhere.example", "aud": "api", "exp": now() + 300
    }));
    az.activate(&stranger, "orders:read");
    az.activate("opaque", "orders:read");

    assert_eq!(status(&gw, &local).await, 200);
    assert_eq!(az.call_count(), 0, "a local JWT went to introspection");
    assert_eq!(status(&gw, &stranger).await, 200);
    assert_eq!(az.call_count(), 1);
    assert_eq!(az.calls()[0].field("token"), Some(stranger.as_str()));

    assert_eq!(send(&gw, "GET", "/jwt/x", &local).await.status(), 200);
    let resp = send(&gw, "GET", "/jwt/x", "opaque").await;
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).contains("does not accept this kind of access token"));
    assert_eq!(send(&gw, "GET", "/opaque/x", "opaque").await.status(), 200);
    let resp = send(&gw, "GET", "/opaque/x", &local).await;
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).contains("does not accept this kind of access token"));
    assert_eq!(
        az.call_count(),
        2,
        "only the stranger and the opaque token were introspected"
    );
}

/// The endpoint fails in another way every other round. A failure is never cached (the same
/// tokens are answered rightly once the endpoint is back), answers cached before the outage
/// keep serving through it, and nothing fails open.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_endpoint_caches_no_failure_and_lets_nothing_through() {
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(
        &az,
        &up,
        "timeout = \"500ms\"\nnegative_cache_ttl = \"1m\"",
        "",
    );
    az.activate("cached-active", "orders:read");
    assert_eq!(status(&gw, "cached-active").await, 200);
    assert_eq!(status(&gw, "cached-inactive").await, 401);
    let failures = [
        Mode::Status(500),
        Mode::Reset,
        Mode::Body("<html>maintenance</html>".into()),
        Mode::Status(401),
        Mode::Status(503),
    ];
    let mut passed = 1;
    for (round, failure) in failures.into_iter().enumerate() {
        let (active, inactive) = (format!("active-{round}"), format!("inactive-{round}"));
        az.activate(&active, "orders:read");
        az.set_mode(failure.clone());
        for (token, want) in [
            (active.as_str(), 503),
            (inactive.as_str(), 503),
            ("cached-active", 200),
            ("cached-inactive", 401),
        ] {
            assert_eq!(status(&gw, token).await, want, "{failure:?}: {token}");
        }
        az.set_mode(Mode::Normal);
        assert_eq!(status(&gw, &active).await, 200, "after {failure:?}");
        assert_eq!(status(&gw, &inactive).await, 401, "after {failure:?}");
        passed += 2;
    }
    assert_eq!(up.hits(), passed, "only the 200s reached the upstream");
    assert_eq!(
        az.call_count(),
        2 + 4 * 5,
        "each fresh token is asked about once per state; cached answers are not asked again"
    );
}

/// Claim rules and claim headers read an introspection answer's members as they read a JWT's
/// claims: nested members, arrays, the whole answer as base64url JSON.
#[tokio::test(flavor = "multi_thread")]
async fn claim_rules_and_claim_headers_read_the_answer() {
    use base64::Engine as _;
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let gw = gateway(
        &az,
        &up,
        "",
        &format!(
            "[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstreams = [\"{}\"]\n\
             [[routes.claims]]\nclaim = \"groups\"\ncontains = \"admins\"\n\
             [identity]\nclaims_header = \"X-Claims\"\n[identity.claim_headers]\nX-Tenant = \"org.id\"\nX-Groups = \"groups\"\n",
            up.addr
        ),
    );
    let answer = |groups: serde_json::Value| {
        json!({ "active": true, "scope": "orders:read", "aud": "api", "sub": "user-7",
                "exp": now() + 600, "org": {"id": "acme"}, "groups": groups })
    };
    az.set_answer("admin", answer(json!(["admins", "eng"])));
    az.set_answer("member", answer(json!(["eng"])));
    let resp = send(&gw, "GET", "/admin/x", "admin").await;
    assert_eq!(resp.status(), 200);
    let seen = up.seen().pop().unwrap().headers;
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-groups"], "admins,eng");
    let whole: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seen["x-claims"].as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(whole["org"]["id"], "acme");
    assert_eq!(whole["active"], true);
    let resp = send(&gw, "GET", "/admin/x", "member").await;
    assert_eq!(resp.status(), 403);
    // The same cached answer on a route without the rule.
    assert_eq!(status(&gw, "member").await, 200);
    assert_eq!(up.seen().pop().unwrap().headers["x-groups"], "eng");
}

/// A route restricted to an issuer accepts an introspected token only when `[introspection]
/// issuer` vouches for it: without that setting the answer names its issuer itself, or the
/// endpoint's origin stands in, and that origin may be a JWT issuer's name (red team).
#[tokio::test(flavor = "multi_thread")]
async fn a_route_restricted_to_an_issuer_trusts_no_self_named_introspection_issuer() {
    init();
    let (az, up) = (MockAs::start().await, EchoUpstream::start("app").await);
    let origin = az.issuer();
    let routes = |introspection_issuer: &str| {
        format!(
            "[[issuers]]\nissuer = \"{origin}\"\njwks_uri = \"{origin}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n\
             [introspection]\nendpoint = \"{}\"\n{introspection_issuer}client_id = \"gateway client\"\nclient_secret_env = \"{SECRET_ENV}\"\naudiences = [\"api\"]\n\
             [[routes]]\nname = \"only\"\npath_prefix = \"/only\"\nupstreams = [\"{}\"]\nissuers = [\"{origin}\"]\n",
            az.endpoint(),
            up.addr
        )
    };
    az.set_answer(
        "no-iss",
        json!({ "active": true, "aud": "api", "exp": now() + 600 }),
    );
    az.set_answer(
        "self-named",
        json!({ "active": true, "aud": "api", "iss": origin, "exp": now() + 600 }),
    );
    let unvouched = start_gateway(&routes(""));
    for token in ["no-iss", "self-named"] {
        let resp = send(&unvouched, "GET", "/only/x", token).await;
        assert_eq!(resp.status(), 401, "{token}");
    }
    let vouched = start_gateway(&routes(&format!("issuer = \"{origin}\"\n")));
    for token in ["no-iss", "self-named"] {
        let resp = send(&vouched, "GET", "/only/x", token).await;
        assert_eq!(resp.status(), 200, "{token}");
    }
}
