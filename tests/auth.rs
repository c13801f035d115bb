//! Issuer keys over time, through the real gateway against a mock identity provider: rotation,
//! refetch, outages, discovery, redirects, the verified-token cache switched off.

mod common;

use std::time::{Duration, Instant};

use common::idp::{claims, gateway_for, now, setup, setup_with, status_with, MockIdp};
use common::{became_ready, client, eventually, scrape, scrape_until, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_is_picked_up_and_removed_keys_stop_at_once() {
    let s = setup("").await;
    let old = s.rsa.sign(&claims(&s.idp, "orders:read"));
    assert_eq!(
        s.get("/orders/1", &old).await.status(),
        200,
        "old key, now cached"
    );
    let fetches = s.idp.hits("/jwks");

    let new_key = DevKey::generate(Algorithm::RS256, "rsa-2");
    s.idp.set_keys(&[&new_key, &s.ec]);
    let fresh = new_key.sign(&claims(&s.idp, "orders:read"));
    assert_eq!(
        s.get("/orders/1", &fresh).await.status(),
        200,
        "the new kid triggers a refetch"
    );
    assert_eq!(s.idp.hits("/jwks"), fetches + 1);

    let resp = s.get("/orders/1", &old).await;
    assert_eq!(
        resp.status(),
        401,
        "a cached token signed by a removed key still passed"
    );
    assert_eq!(
        s.idp.hits("/jwks"),
        fetches + 1,
        "a refetch within jwks_min_refetch"
    );
}

/// 50 requests at once with a kid the gateway has not seen: exactly one JWKS fetch.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_unknown_kids_share_one_refetch() {
    let s = setup("").await;
    let fetches = s.idp.hits("/jwks");
    let new_key = DevKey::generate(Algorithm::ES256, "ec-2");
    s.idp.set_keys(&[&s.rsa, &s.ec, &new_key]);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (barrier, url) = (barrier.clone(), s.url("/orders/1"));
            let token = new_key.sign(
                &json!({ "iss": s.idp.issuer(), "aud": "api", "scope": "orders:read",
                                              "exp": now() + 3600, "jti": i }),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                client()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(s.idp.hits("/jwks"), fetches + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_down_at_start_is_503_and_not_ready_then_recovers() {
    let rsa = DevKey::generate(Algorithm::RS256, "k");
    let idp = MockIdp::start(&[&rsa]).await;
    idp.set_failing(true);
    let up = EchoUpstream::start("app").await;
    let gw = gateway_for(
        &idp.issuer(),
        &format!("jwks_uri = \"{}/jwks\"", idp.issuer()),
        up.addr,
    );
    let token = rsa.sign(&json!({ "iss": idp.issuer(), "aud": "api", "exp": now() + 3600 }));
    let url = format!("http://{}/x", gw.proxy_addr);
    let readyz = format!("http://{}/readyz", gw.metrics_addr);

    let resp = client().get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(
        resp.headers().get("www-authenticate").is_none(),
        "503 is not a challenge"
    );
    let not_ready = client().get(&readyz).send().await.unwrap();
    assert_eq!(not_ready.status(), 503);
    assert!(not_ready
        .text()
        .await
        .unwrap()
        .contains("no keys loaded yet"));

    idp.set_failing(false);
    let ready = became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(20)).await;
    assert!(ready, "never recovered");
    assert_eq!(status_with(&gw, "/x", &token).await, 200);
    assert_eq!(up.hits(), 1);
    let m = scrape(gw.metrics_addr).await;
    assert!(m.get("portcullis_jwks_fetch_total", &[("result", "bad_status")]) >= 1.0);
    assert!(m.get("portcullis_jwks_fetch_total", &[("result", "ok")]) >= 1.0);
    assert_eq!(m.get("portcullis_jwks_keys", &[]), 1.0);
    assert!(m.has("portcullis_jwks_age_seconds", &[("issuer", &idp.issuer())]));
    assert!(m.get("portcullis_jwks_age_seconds", &[]) < 60.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_down_later_keeps_known_keys_working() {
    let s = setup("jwks_min_refetch = \"1ms\"").await;
    s.idp.set_failing(true);
    let token = s.ec.sign(&claims(&s.idp, "orders:read"));
    assert_eq!(
        s.get("/orders/1", &token).await.status(),
        200,
        "known keys keep working"
    );
    // An unknown kid while the IdP is down cannot be checked: 503, not 401.
    let stranger = DevKey::generate(Algorithm::ES256, "ec-9");
    let resp = s
        .get("/orders/1", &stranger.sign(&claims(&s.idp, "orders:read")))
        .await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_must_announce_the_configured_issuer() {
    let rsa = DevKey::generate(Algorithm::RS256, "k");
    let idp = MockIdp::start(&[&rsa]).await;
    let real = idp.issuer();
    idp.set_announced_issuer("https://someone-else.example");
    let up = EchoUpstream::start("app").await;
    let gw = gateway_for(&real, "discovery = true", up.addr);
    let token = rsa.sign(&json!({ "iss": real, "aud": "api", "exp": now() + 3600 }));
    assert_eq!(
        status_with(&gw, "/x", &token).await,
        503,
        "keys from a mixed-up issuer were used"
    );
    let m = scrape_until(gw.metrics_addr, |m| {
        m.get(
            "portcullis_jwks_fetch_total",
            &[("result", "bad_discovery")],
        ) >= 1.0
    })
    .await;
    assert!(
        m.get(
            "portcullis_jwks_fetch_total",
            &[("result", "bad_discovery")]
        ) >= 1.0
    );
    assert_eq!(idp.hits("/jwks"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_disabled_every_request_is_verified() {
    let s = setup_with("[tokens]\ncache_capacity = 0\n", "").await;
    let token = s.ec.sign(&claims(&s.idp, "orders:read"));
    for _ in 0..3 {
        assert_eq!(s.get("/orders/1", &token).await.status(), 200);
    }
    let m = scrape_until(s.gw.metrics_addr, |m| {
        m.get("portcullis_auth_decisions_total", &[("outcome", "allowed")]) >= 3.0
    })
    .await;
    assert_eq!(
        m.get("portcullis_token_cache_requests_total", &[]),
        0.0,
        "a disabled cache was consulted"
    );
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("route", "orders-read"), ("outcome", "allowed")]
        ),
        3.0
    );
}

/// A JWKS redirect is followed within the same origin only.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_redirects_stay_within_the_origin() {
    let rsa = DevKey::generate(Algorithm::RS256, "k");
    let (idp, elsewhere) = (MockIdp::start(&[&rsa]).await, MockIdp::start(&[&rsa]).await);
    let up = EchoUpstream::start("app").await;
    let moved = format!("jwks_uri = \"{}/moved\"", idp.issuer());
    let token = rsa.sign(&json!({ "iss": idp.issuer(), "aud": "api", "exp": now() + 3600 }));

    idp.set_redirect(&format!("{}/jwks", elsewhere.issuer()));
    let gw = gateway_for(&idp.issuer(), &moved, up.addr);
    assert_eq!(
        status_with(&gw, "/x", &token).await,
        503,
        "keys behind a cross-origin redirect were used"
    );
    assert_eq!(
        elsewhere.hits("/jwks"),
        0,
        "a cross-origin redirect was followed"
    );
    drop(gw);

    idp.set_redirect(&format!("{}/jwks", idp.issuer()));
    let gw = gateway_for(&idp.issuer(), &moved, up.addr);
    let ok = eventually(Duration::from_secs(15), || async {
        status_with(&gw, "/x", &token).await == 200
    })
    .await;
    assert!(ok, "a same-origin redirect was not followed");
}

/// A key set that answers slowly holds up only the requests that need it: known keys answer at
/// once while the refetch hangs, and the token waiting on it gets 503 when the fetch times out
/// (5 s), never a hang and never a pass.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_key_set_holds_up_only_the_requests_that_need_it() {
    let s = setup("jwks_min_refetch = \"1ms\"").await;
    let newcomer = DevKey::generate(Algorithm::ES256, "ec-2");
    s.idp.set_keys(&[&s.rsa, &s.ec, &newcomer]);
    s.idp.set_delay(Duration::from_secs(30));
    let fetches = s.idp.hits("/jwks");
    let waiting = newcomer.sign(&claims(&s.idp, "orders:read"));
    let started = Instant::now();
    let slow = tokio::spawn({
        let url = s.url("/orders/1");
        let waiting = waiting.clone();
        async move { client().get(url).bearer_auth(waiting).send().await.unwrap() }
    });
    let refetching = eventually(Duration::from_secs(5), || async {
        s.idp.hits("/jwks") > fetches
    })
    .await;
    assert!(refetching, "the unknown kid started a refetch");

    let known = s.ec.sign(&claims(&s.idp, "orders:read"));
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(s.get("/orders/1", &known).await.status(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
    }
    let resp = slow.await.unwrap();
    assert_eq!(resp.status(), 503, "the key could not be fetched in time");
    assert_eq!(resp.headers()["retry-after"], "5");
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(10)).contains(&took),
        "answered after {took:?}; the fetch timeout is 5 s"
    );

    s.idp.set_delay(Duration::ZERO);
    assert_eq!(
        s.get("/orders/1", &waiting).await.status(),
        200,
        "recovered"
    );
    assert_eq!(s.up.hits(), 21);
}

/// The identity provider goes down and up every round while keys are added: a new kid is 503
/// while it cannot be fetched and 200 once it can, known keys keep working, and forged or
/// expired tokens are 401 whatever the provider's state.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_key_set_never_lets_a_wrong_token_through() {
    let s = setup("jwks_min_refetch = \"1ms\"").await;
    // Same kid as a trusted key, another private key.
    let forger = DevKey::generate(Algorithm::ES256, "ec-1");
    let mut added: Vec<DevKey> = Vec::new();
    let mut passed = 0;
    for round in 0..12 {
        let down = round % 2 == 1;
        added.push(DevKey::generate(
            Algorithm::ES256,
            &format!("ec-new-{round}"),
        ));
        let mut keys = vec![&s.rsa, &s.ec];
        keys.extend(added.iter());
        s.idp.set_keys(&keys);
        s.idp.set_failing(down);

        let mut expired = claims(&s.idp, "orders:read");
        expired["exp"] = json!(now() - 3600);
        let mut cases = vec![
            (
                "fresh kid",
                added[round].sign(&claims(&s.idp, "orders:read")),
                if down { 503 } else { 200 },
            ),
            ("known key", s.ec.sign(&claims(&s.idp, "orders:read")), 200),
            ("forged", forger.sign(&claims(&s.idp, "orders:read")), 401),
            ("expired", s.ec.sign(&expired), 401),
        ];
        if round > 0 {
            // Fetched last round (up) or with this round's refetch (down last round, up now).
            let previous = added[round - 1].sign(&claims(&s.idp, "orders:read"));
            cases.push(("last round's kid", previous, 200));
        }
        for (what, token, want) in cases {
            let got = s.get("/orders/1", &token).await.status().as_u16();
            assert_eq!(got, want, "round {round} (down: {down}): {what}");
            passed += usize::from(got == 200);
        }
    }
    assert_eq!(s.up.hits(), passed, "only the 200s reached the upstream");
}
