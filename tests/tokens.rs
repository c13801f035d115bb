//! What a token must be to pass, through the real gateway against a mock identity provider:
//! identity headers, scopes, malformed credentials, hostile tokens, HMAC issuers.

mod common;

use std::time::Duration;

use common::idp::{challenge, claims, now, setup};
use common::{became_ready, client, scrape_until, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_reaches_the_upstream_with_identity_headers_and_without_authorization() {
    let s = setup("").await;
    for key in [&s.rsa, &s.ec] {
        let token = key.sign(&claims(&s.idp, "orders:read profile"));
        let resp = client()
            .get(s.url("/orders/1"))
            .bearer_auth(&token)
            .header("x-auth-subject", "admin")
            .header("x_auth_scopes", "everything")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", key.alg.name());
        let seen = s.up.seen().pop().unwrap();
        let h = &seen.headers;
        assert_eq!(h["x-auth-subject"], "user-7");
        assert_eq!(h["x-auth-client-id"], "app");
        assert_eq!(h["x-auth-scopes"], "orders:read profile");
        assert_eq!(h["x-auth-issuer"], s.idp.issuer().as_str());
        assert!(!h.contains_key("authorization"), "the token was forwarded");
        assert!(
            !h.contains_key("x_auth_scopes"),
            "a forged identity header was forwarded"
        );
    }
    let token = s.rsa.sign(&claims(&s.idp, ""));
    assert_eq!(s.get("/fwd/x", &token).await.status(), 200);
    let seen = s.up.seen().pop().unwrap();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {token}").as_str(),
        "forward_token keeps it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_are_checked_per_route_even_for_cached_tokens() {
    let s = setup("").await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    assert_eq!(s.get("/orders/1", &token).await.status(), 200);
    // The same token, now from the cache, on a route needing a scope it lacks.
    let resp = client()
        .post(s.url("/orders/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"The token does not carry the scopes this resource requires.\", scope=\"orders:write\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    // scopes_any: one of a / b.
    assert_eq!(
        s.get("/either", &s.rsa.sign(&claims(&s.idp, "b")))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.get("/either", &s.rsa.sign(&claims(&s.idp, "c")))
            .await
            .status(),
        403
    );
    let m = scrape_until(s.gw.metrics_addr, |m| {
        m.get("portcullis_auth_decisions_total", &[]) >= 4.0
    })
    .await;
    assert!(
        m.get(
            "portcullis_token_cache_requests_total",
            &[("result", "hit")]
        ) >= 1.0
    );
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("route", "orders-write"), ("outcome", "insufficient_scope")]
        ),
        1.0
    );
    assert_eq!(s.up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_malformed_and_doubled_credentials() {
    let s = setup("").await;
    let resp = client().get(s.url("/orders/1")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), challenge(&resp)),
        (401, "Bearer realm=\"api\"".to_owned())
    );
    let resp = client()
        .get(s.url("/orders/1"))
        .header("authorization", "Bearer a b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(challenge(&resp).contains("error=\"invalid_request\""));
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let resp = client()
        .get(s.url("/orders/1"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "two Authorization headers");
    let resp = s
        .get(&format!("/orders/1?access_token={token}"), &token)
        .await;
    assert_eq!(resp.status(), 400, "a token in the header and the query");
    let resp = client()
        .get(s.url(&format!("/orders/1?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the query form alone is not accepted");
    assert_eq!(challenge(&resp), "Bearer realm=\"api\"");
    assert_eq!(s.up.hits(), 0);
}

/// Every hostile token gets 401 invalid_token and the upstream sees nothing.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_tokens_are_invalid_tokens() {
    let s = setup("").await;
    let jku_target = EchoUpstream::start("attacker").await;
    let attacker = DevKey::generate(Algorithm::RS256, "rsa-1");
    let base = claims(&s.idp, "orders:read");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let unsigned = |header: Value| {
        use base64::Engine;
        let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", e(&header), e(&base))
    };
    let confusion = DevKey::hmac(Algorithm::HS256, "rsa-1", &s.rsa.public_key_bytes());
    let valid = s.rsa.sign(&base);
    let (head, _) = valid.rsplit_once('.').unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("alg none, empty signature", unsigned(json!({"alg": "none", "kid": "rsa-1"}))),
        ("alg none with a signature", s.rsa.sign_raw(&json!({"alg": "none"}), &base)),
        ("alg NoNe", s.rsa.sign_raw(&json!({"alg": "NoNe", "kid": "rsa-1"}), &base)),
        ("HS256 with the RSA public key", confusion.sign_raw(&json!({"alg": "HS256", "kid": "rsa-1"}), &base)),
        ("signed by another key with the same kid", attacker.sign(&base)),
        (
            "jku pointing at the attacker",
            attacker.sign_raw(&json!({"alg": "RS256", "kid": "evil", "jku": format!("http://{}/jwks", jku_target.addr)}), &base),
        ),
        ("embedded jwk", attacker.sign_raw(&json!({"alg": "RS256", "jwk": attacker.jwk()}), &base)),
        ("crit", s.rsa.sign_raw(&json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}), &base)),
        ("signature stripped", format!("{head}.")),
        ("signature zeroed", format!("{head}.AAAA")),
        ("expired", s.rsa.sign(&with(&|c| c["exp"] = json!(now() - 31)))),
        ("not yet valid", s.rsa.sign(&with(&|c| c["nbf"] = json!(now() + 3600)))),
        ("issued in the future", s.rsa.sign(&with(&|c| c["iat"] = json!(now() + 3600)))),
        ("no exp", s.rsa.sign(&with(&|c| c.as_object_mut().unwrap().remove("exp").map(drop).unwrap()))),
        ("wrong audience", s.rsa.sign(&with(&|c| c["aud"] = json!(["other"])))),
        ("missing audience", s.rsa.sign(&with(&|c| c.as_object_mut().unwrap().remove("aud").map(drop).unwrap()))),
        ("wrong issuer", s.rsa.sign(&with(&|c| c["iss"] = json!("https://evil.example")))),
        ("exp as a string", s.rsa.sign(&with(&|c| c["exp"] = json!("99999999999")))),
        ("oversize", s.rsa.sign(&with(&|c| c["pad"] = json!("x".repeat(9000))))),
        ("opaque token", "abcdef0123456789".to_owned()),
        ("four parts", format!("{valid}.x")),
    ];
    for (name, token) in &cases {
        let resp = s.get("/orders/1", token).await;
        assert_eq!(resp.status(), 401, "{name}");
        assert!(
            challenge(&resp).starts_with("Bearer realm=\"api\", error=\"invalid_token\""),
            "{name}: {}",
            challenge(&resp)
        );
    }
    // Duplicate claims cannot be built with serde_json's map: sign the JSON text itself.
    let duplicated = base.to_string().replacen('{', "{\"aud\":\"other\",", 1);
    let dup = s.rsa.sign_text(
        &json!({"alg": "RS256", "kid": "rsa-1"}).to_string(),
        &duplicated,
    );
    assert_eq!(
        s.get("/orders/1", &dup).await.status(),
        401,
        "duplicate claims"
    );
    assert_eq!(s.up.hits(), 0, "a hostile token reached the upstream");
    assert_eq!(jku_target.hits(), 0, "the jku URL was fetched");
}

/// An HS256 issuer: the secret comes from the environment variable the config names, and a
/// short or missing secret stops start-up with the key that names it.
#[tokio::test(flavor = "multi_thread")]
async fn hmac_issuers_take_their_secret_from_the_environment() {
    let secret = "an hmac secret of at least thirty-two bytes";
    // Variable names unique to this test: nothing else in the process reads them.
    std::env::set_var("PORTCULLIS_TEST_HMAC_GOOD", secret);
    std::env::set_var("PORTCULLIS_TEST_HMAC_SHORT", "too short");
    let up = EchoUpstream::start("app").await;
    let config = |env: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[issuers]]\nissuer = \"https://hs.example\"\nhmac_secret_env = \"{env}\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
            up.addr
        )
    };
    let short = portcullis::config::Config::parse(&config("PORTCULLIS_TEST_HMAC_SHORT")).unwrap();
    let error = portcullis::app::App::build(&short, prometheus::Registry::new())
        .err()
        .expect("a short secret is refused");
    assert_eq!(
        error.to_string(),
        "issuers[0].hmac_secret_env: the variable PORTCULLIS_TEST_HMAC_SHORT must hold a secret of at least 32 bytes"
    );

    let good = portcullis::config::Config::parse(&config("PORTCULLIS_TEST_HMAC_GOOD")).unwrap();
    let gw = portcullis::app::App::build(&good, prometheus::Registry::new())
        .unwrap()
        .spawn();
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let claims = json!({ "iss": "https://hs.example", "aud": "api", "exp": now() + 60 });
    let key = DevKey::hmac(Algorithm::HS256, "any", secret.as_bytes());
    let url = format!("http://{}/x", gw.proxy_addr);
    assert_eq!(
        client()
            .get(&url)
            .bearer_auth(key.sign(&claims))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let wrong = DevKey::hmac(
        Algorithm::HS256,
        "any",
        b"another secret, also thirty-two bytes long",
    );
    assert_eq!(
        client()
            .get(&url)
            .bearer_auth(wrong.sign(&claims))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// Tokens `a` (user-7) and `b` (user-8), and `a` with one signature character changed.
fn three_tokens(s: &common::idp::Setup) -> [String; 3] {
    let mut c = claims(&s.idp, "orders:read");
    let a = s.rsa.sign(&c);
    c["sub"] = json!("user-8");
    let b = s.rsa.sign(&c);
    let signature = a.rfind('.').unwrap() + 20;
    let swapped = if a.as_bytes()[signature] == b'A' {
        "B"
    } else {
        "A"
    };
    let mut forged = a.clone();
    forged.replace_range(signature..signature + 1, swapped);
    assert_eq!(forged.len(), a.len());
    [a, b, forged]
}

/// The gateway remembers each connection's last token and its cache key: a connection that
/// presents one token, another, the first again and a forgery of the first that differs in
/// one byte has every request judged on its own token, over HTTP/1.1 keep-alive and over the
/// concurrent streams of one HTTP/2 connection.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_on_one_connection_is_judged_on_its_own_token() {
    use tokio::io::AsyncWriteExt;
    let s = common::idp::setup_with("[server.http2]\ncleartext = true\n", "").await;
    let [a, b, forged] = three_tokens(&s);
    let sequence = [&a, &a, &b, &a, &forged, &a, &b, &b, &forged, &forged, &a];
    let subject = |t: &String| match t {
        t if *t == a => "user-7",
        t if *t == b => "user-8",
        _ => "forged",
    };
    // HTTP/1.1: one kept-alive connection, one request after another.
    let mut tcp = tokio::net::TcpStream::connect(s.gw.proxy_addr)
        .await
        .unwrap();
    for (i, token) in sequence.iter().enumerate() {
        let request =
            format!("GET /orders/1 HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let answer = common::read_response(&mut tcp).await;
        match subject(token) {
            "forged" => assert!(answer.starts_with("HTTP/1.1 401"), "request {i}: {answer}"),
            want => {
                assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
                let up = s.up.seen().pop().unwrap();
                assert_eq!(up.headers["x-auth-subject"], want, "request {i}");
            }
        }
    }
    // HTTP/2: one connection, the same sequence as concurrent streams.
    let h2 = common::h2::client(s.gw.proxy_addr).await;
    let statuses = futures_util::future::join_all(sequence.iter().map(|token| {
        let h2 = h2.clone();
        async move {
            let req = http::Request::get(format!("http://{}/orders/1", s.gw.proxy_addr))
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap();
            let mut h2 = h2.ready().await.unwrap();
            let (response, _) = h2.send_request(req, true).unwrap();
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            common::h2::read_body(&mut response.into_body()).await;
            status
        }
    }))
    .await;
    let want: Vec<u16> = sequence
        .iter()
        .map(|t| if subject(t) == "forged" { 401 } else { 200 })
        .collect();
    assert_eq!(statuses, want);
    let mut subjects: Vec<String> =
        s.up.seen()
            .iter()
            .rev()
            .take(8)
            .map(|seen| seen.headers["x-auth-subject"].to_str().unwrap().to_string())
            .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["user-7", "user-7", "user-7", "user-7", "user-7", "user-8", "user-8", "user-8"]
    );
    let m = common::scrape(s.gw.metrics_addr).await;
    for protocol in ["http/1.1", "h2"] {
        assert_eq!(
            m.get("portcullis_connections_total", &[("protocol", protocol)]),
            1.0,
            "{protocol}: the sequence shared one connection"
        );
    }
}
