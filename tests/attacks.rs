//! The attack catalogue, tokens and key sets: each hostile input gets the RFC 6750 answer and the
//! upstream sees nothing. (`tokens.rs` holds the first hostile-token cases; the HTTP attacks are in
//! `http_attacks.rs`.)

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::idp::{challenge, claims, now, setup, MockIdp, Setup};
use common::{became_ready, scrape, start_gateway, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::{jwks, DevKey};
use serde_json::{json, Value};
use std::time::Duration;

const INVALID_TOKEN: &str = r#"Bearer realm="api", error="invalid_token""#;

/// Each case gets 401 `invalid_token`; the upstream saw none of them.
async fn all_refused(s: &Setup, cases: &[(String, String)]) {
    for (name, token) in cases {
        let resp = s.get("/orders/1", token).await;
        let status = resp.status();
        let ch = challenge(&resp);
        assert!(
            status == 401 && ch.starts_with(INVALID_TOKEN),
            "{name}: {status} {ch:?}"
        );
    }
    assert_eq!(s.up.hits(), 0, "a hostile token reached the upstream");
}

/// A compact JWS with this header and claims and an arbitrary signature.
fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// PEM text of DER bytes, 64 columns (RFC 7468).
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// SubjectPublicKeyInfo DER of an RSA-2048 key (PKCS#1 bytes) or a P-256 point.
fn spki(key: &DevKey) -> Vec<u8> {
    let raw = key.public_key_bytes();
    let mut der = match key.alg {
        Algorithm::ES256 => hex("3059301306072a8648ce3d020106082a8648ce3d030107034200"),
        _ => hex("30820122300d06092a864886f70d01010105000382010f00"),
    };
    der.extend_from_slice(&raw);
    der
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// alg `none` in every casing, and HS256/384/512 signed with the issuer's own public keys in
/// every form an attacker might guess the verifier uses as a secret.
#[tokio::test(flavor = "multi_thread")]
async fn alg_none_and_algorithm_confusion() {
    let s = setup("").await;
    let base = claims(&s.idp, "orders:read");
    let mut cases = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE", "NoNe"] {
        for sig in [&b""[..], b"sig"] {
            cases.push((
                format!("alg {alg}, signature {sig:?}"),
                forged(&json!({"alg": alg, "kid": "rsa-1"}), &base, sig),
            ));
        }
    }
    for key in [&s.rsa, &s.ec] {
        let secrets = [
            ("raw", key.public_key_bytes()),
            ("SPKI DER", spki(key)),
            ("SPKI PEM", pem("PUBLIC KEY", &spki(key)).into_bytes()),
            (
                "PKCS#1 PEM",
                pem("RSA PUBLIC KEY", &key.public_key_bytes()).into_bytes(),
            ),
            ("JWK", key.jwk().to_string().into_bytes()),
            ("JWKS", jwks(&[key]).to_string().into_bytes()),
        ];
        for (form, secret) in &secrets {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let hmac = DevKey::hmac(alg, &key.kid, secret);
                cases.push((
                    format!("{} with the {} key as {form}", alg.name(), key.alg.name()),
                    hmac.sign_raw(&json!({"alg": alg.name(), "kid": key.kid}), &base),
                ));
            }
        }
    }
    all_refused(&s, &cases).await;
}

/// Headers that point at other keys are ignored (the local server gets no request); hostile
/// kids cause no file or network access, at most one refetch, and never appear in /metrics.
#[tokio::test(flavor = "multi_thread")]
async fn key_pointers_and_hostile_kids() {
    let s = setup("").await;
    let trap = EchoUpstream::start("trap").await;
    let attacker = DevKey::generate(Algorithm::RS256, "rsa-1");
    let base = claims(&s.idp, "orders:read");
    let at = |path: &str| format!("http://{}/{path}", trap.addr);
    let mut cases = vec![
        (
            "jku".to_owned(),
            json!({"alg": "RS256", "kid": "x", "jku": at("jwks")}),
        ),
        (
            "x5u".to_owned(),
            json!({"alg": "RS256", "kid": "x", "x5u": at("cert.pem")}),
        ),
        (
            "jwk".to_owned(),
            json!({"alg": "RS256", "jwk": attacker.jwk()}),
        ),
        (
            "x5c".to_owned(),
            json!({"alg": "RS256", "kid": "rsa-1", "x5c": [STANDARD.encode(spki(&attacker))]}),
        ),
    ];
    let hostile_kids = [
        "../../../../etc/passwd".to_owned(),
        "/dev/zero".to_owned(),
        "' OR '1'='1' --".to_owned(),
        "k".repeat(10 * 1024),
        "kid\u{0}\r\nX-Injected: 1".to_owned(),
        "file:///etc/shadow".to_owned(),
        format!("http://{}/kid", trap.addr),
    ];
    for kid in &hostile_kids {
        cases.push((
            format!("kid {:?}", &kid[..kid.len().min(24)]),
            json!({"alg": "RS256", "kid": kid}),
        ));
    }
    let jwks_before = s.idp.hits("/jwks");
    let tokens: Vec<(String, String)> = cases
        .iter()
        .map(|(name, header)| (name.clone(), attacker.sign_raw(header, &base)))
        .collect();
    // Twice: the second round meets the refetch limit.
    all_refused(&s, &tokens).await;
    all_refused(&s, &tokens).await;
    assert_eq!(trap.hits(), 0, "a key pointer in a token was followed");
    assert!(
        s.idp.hits("/jwks") <= jwks_before + 1,
        "{} key set fetches for unknown kids; the limit is one per jwks_min_refetch",
        s.idp.hits("/jwks") - jwks_before
    );
    let text = client_text(&format!("http://{}/metrics", s.gw.metrics_addr)).await;
    for needle in [
        "passwd",
        "OR '1'",
        "kkkkkkkk",
        "X-Injected",
        "shadow",
        "/kid",
    ] {
        assert!(!text.contains(needle), "/metrics holds {needle:?}");
    }
}

async fn client_text(url: &str) -> String {
    common::client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Broken signatures and broken shapes: stripped, zeroed, truncated, ES256 r = s = 0 (the
/// "psychic signature"), trailing garbage, padding, the other base64 alphabet, 5 parts (JWE),
/// and headers or claims nested beyond any parser's patience.
#[tokio::test(flavor = "multi_thread")]
async fn broken_signatures_and_shapes() {
    let s = setup("").await;
    let base = claims(&s.idp, "orders:read");
    let rsa = s.rsa.sign(&base);
    let ec = s.ec.sign(&base);
    let (head, sig) = rsa.rsplit_once('.').unwrap();
    let (ec_head, _) = ec.rsplit_once('.').unwrap();
    // 1,500 levels: far past serde_json's recursion limit of 128, and still under the 8 KiB
    // token limit, so the parser meets them. In a member we read, they are a type error; in one
    // we ignore, serde_json skips them without recursing, and the signature decides.
    let nested = format!("{}1{}", "[".repeat(1_500), "]".repeat(1_500));
    let nest =
        |json: &str, member: &str| json.replacen('{', &format!(r#"{{"{member}":{nested},"#), 1);
    let header = r#"{"alg":"RS256","kid":"rsa-1"}"#;
    let body = base.to_string();
    let attacker = DevKey::generate(Algorithm::RS256, "rsa-1");
    let other_alphabet = rsa.replace('-', "+").replace('_', "/");
    assert_ne!(other_alphabet, rsa, "the token has a - or _ to swap");
    let cases = vec![
        ("signature stripped", format!("{head}.")),
        (
            "signature zeroed",
            format!("{head}.{}", "A".repeat(sig.len())),
        ),
        (
            "signature truncated",
            format!("{head}.{}", &sig[..sig.len() - 8]),
        ),
        (
            "ES256 r = s = 0",
            format!("{ec_head}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])),
        ),
        (
            "ES256 DER-encoded r = s = 0",
            format!(
                "{ec_head}.{}",
                URL_SAFE_NO_PAD.encode(hex("3006020100020100"))
            ),
        ),
        ("trailing garbage", format!("{rsa}garbage")),
        ("trailing dot", format!("{rsa}.")),
        ("padded signature", format!("{rsa}==")),
        ("standard base64 alphabet", other_alphabet),
        ("five parts (JWE)", format!("{rsa}.{sig}.{sig}")),
        (
            "deeply nested typ",
            s.rsa.sign_text(&nest(header, "typ"), &body),
        ),
        (
            "deeply nested aud",
            s.rsa.sign_text(header, &nest(&body, "aud")),
        ),
        (
            "deeply nested unknown header member, forged",
            attacker.sign_text(&nest(header, "x"), &body),
        ),
        (
            "deeply nested unknown claim, forged",
            attacker.sign_text(header, &nest(&body, "x")),
        ),
    ];
    for (_, token) in &cases {
        assert!(
            token.len() <= 8192,
            "under the size limit, so the parser sees it"
        );
    }
    let cases: Vec<_> = cases.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
    all_refused(&s, &cases).await;
    // Not a b64token at all (`=` only ends one; no spaces): a malformed request, RFC 6750 §3.1.
    for token in [rsa.replacen('.', "=.", 1), format!("{head}. {sig}")] {
        let resp = s.get("/orders/1", &token).await;
        assert_eq!(resp.status(), 400, "{token}");
        assert!(challenge(&resp).contains(r#"error="invalid_request""#));
    }
    assert_eq!(s.up.hits(), 0);
    // The issuer's own signature over deep nesting in members nobody reads: parsed, accepted.
    for token in [
        s.rsa.sign_text(&nest(header, "x"), &body),
        s.rsa.sign_text(header, &nest(&body, "x")),
    ] {
        assert_eq!(s.get("/orders/1", &token).await.status(), 200);
    }
}

/// Numeric claims: JSON numbers of any form are NumericDates (RFC 7519 §2); strings, booleans
/// and out-of-range values are not; exp / nbf / iat are judged with the 30 s leeway.
#[tokio::test(flavor = "multi_thread")]
async fn numeric_claims_and_time_boundaries() {
    let s = setup("").await;
    let base = claims(&s.idp, "orders:read");
    let with = |claim: &str, value: Value| {
        let mut c = base.clone();
        c[claim] = value;
        s.rsa.sign(&c)
    };
    let t = now();
    let refused: Vec<(String, String)> = [
        (
            "exp as a string",
            with("exp", json!((t + 3600).to_string())),
        ),
        ("exp as a boolean", with("exp", json!(true))),
        ("exp null", with("exp", Value::Null)),
        ("exp negative", with("exp", json!(-1))),
        ("exp zero", with("exp", json!(0))),
        ("exp 35 s ago (leeway 30 s)", with("exp", json!(t - 35))),
        (
            "exp as a float 35 s ago",
            with("exp", json!(t as f64 - 35.5)),
        ),
        ("exp as an array", with("exp", json!([t + 3600]))),
        ("nbf in 35 s", with("nbf", json!(t + 35))),
        ("nbf huge", with("nbf", json!(u64::MAX))),
        ("iat in 35 s", with("iat", json!(t + 35))),
        ("iat 1e300", with("iat", json!(1e300))),
        ("exp beyond any number type", {
            let exp = format!("\"exp\":{}", base["exp"]);
            let text = base
                .to_string()
                .replace(&exp, &format!("\"exp\":{}", "9".repeat(400)));
            assert_ne!(text, base.to_string());
            s.rsa
                .sign_text(r#"{"alg":"RS256","kid":"rsa-1","typ":"at+jwt"}"#, &text)
        }),
    ]
    .into_iter()
    .map(|(n, tok)| (n.to_owned(), tok))
    .collect();
    all_refused(&s, &refused).await;

    let accepted = [
        ("exp 25 s ago, within leeway", with("exp", json!(t - 25))),
        ("exp as a float", with("exp", json!(t as f64 + 3600.75))),
        ("exp as an exponent", with("exp", json!(4e9))),
        ("nbf in 25 s, within leeway", with("nbf", json!(t + 25))),
        ("nbf negative", with("nbf", json!(-5))),
        ("iat in 25 s, within leeway", with("iat", json!(t + 25))),
    ];
    for (name, token) in &accepted {
        assert_eq!(s.get("/orders/1", token).await.status(), 200, "{name}");
    }
    assert_eq!(s.up.hits(), accepted.len());
}

/// Two trusted issuers: a token naming one but signed with the other's key is refused, even
/// with the other's kid.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_signed_by_another_trusted_issuers_key() {
    let a_key = DevKey::generate(Algorithm::RS256, "a-1");
    let b_key = DevKey::generate(Algorithm::RS256, "b-1");
    let a = MockIdp::start(&[&a_key]).await;
    let b = MockIdp::start(&[&b_key]).await;
    let up = EchoUpstream::start("app").await;
    let issuer = |idp: &MockIdp| {
        format!(
            "[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n",
            idp.issuer()
        )
    };
    let gw = start_gateway(&format!(
        "{}{}[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        issuer(&a),
        issuer(&b),
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let status = |token: String| {
        let gw = &gw;
        async move { common::idp::status_with(gw, "/x", &token).await }
    };
    let mut as_a = claims(&a, "");
    assert_eq!(status(a_key.sign(&as_a)).await, 200, "A's own token");
    assert_eq!(
        status(b_key.sign(&claims(&b, ""))).await,
        200,
        "B's own token"
    );
    let hits = up.hits();
    assert_eq!(
        status(b_key.sign(&as_a)).await,
        401,
        "iss A, signed by B with B's kid"
    );
    let a_kid = DevKey::generate(Algorithm::RS256, "a-1");
    assert_eq!(
        status(a_kid.sign(&as_a)).await,
        401,
        "iss A, kid a-1, another key"
    );
    as_a["iss"] = json!(format!("{}/", a.issuer()));
    assert_eq!(
        status(a_key.sign(&as_a)).await,
        401,
        "an issuer with a trailing slash"
    );
    assert_eq!(up.hits(), hits, "a cross-issuer token reached the upstream");
    let m = scrape(gw.metrics_addr).await;
    assert!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "unknown_key")]
        ) >= 1.0
    );
}

/// One key set with every kind of bad key beside two good ones: only the good ones are used.
/// Skipped: `use: enc`, private members, a 1024-bit RSA modulus, an EC key whose curve does not
/// fit its alg, an `oct` secret; a kid naming two different keys refuses tokens with that kid.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_set_with_bad_keys_uses_only_the_good_ones() {
    let good_rsa = DevKey::generate(Algorithm::RS256, "rsa-1");
    let good_ec = DevKey::generate(Algorithm::ES256, "ec-1");
    let dup_a = DevKey::generate(Algorithm::RS256, "dup");
    let dup_b = DevKey::generate(Algorithm::RS256, "dup");
    let enc = DevKey::generate(Algorithm::RS256, "enc-1");
    let private = DevKey::generate(Algorithm::RS256, "priv-1");
    let p384 = DevKey::generate(Algorithm::ES256, "crv-1");
    let jwk = |k: &DevKey, f: &dyn Fn(&mut Value)| {
        let mut j = k.jwk();
        f(&mut j);
        j
    };
    let body = json!({"keys": [
        good_rsa.jwk(),
        good_ec.jwk(),
        dup_a.jwk(),
        dup_b.jwk(),
        jwk(&enc, &|j| j["use"] = json!("enc")),
        jwk(&private, &|j| j["d"] = json!("AQAB")),
        jwk(&p384, &|j| j["crv"] = json!("P-384")),
        {"kty": "RSA", "kid": "short-1", "alg": "RS256", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128])},
        {"kty": "oct", "kid": "oct-1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(b"a shared secret of thirty-two bytes!")},
    ]});
    let idp = MockIdp::start(&[&good_rsa]).await;
    idp.set_jwks_body(&body.to_string());
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&format!(
        "[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\n\
         algorithms = [\"RS256\", \"ES256\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        idp.issuer(),
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let base = claims(&idp, "");
    let oct = DevKey::hmac(
        Algorithm::HS256,
        "oct-1",
        b"a shared secret of thirty-two bytes!",
    );
    let cases = [
        ("good RSA", good_rsa.sign(&base), 200),
        ("good EC", good_ec.sign(&base), 200),
        ("a kid with two keys (first)", dup_a.sign(&base), 401),
        ("a kid with two keys (second)", dup_b.sign(&base), 401),
        ("use enc", enc.sign(&base), 401),
        ("published with private members", private.sign(&base), 401),
        ("curve not fitting alg", p384.sign(&base), 401),
        ("oct secret from the key set", oct.sign(&base), 401),
    ];
    for (name, token, want) in &cases {
        assert_eq!(
            common::idp::status_with(&gw, "/x", token).await,
            *want,
            "{name}"
        );
    }
    assert_eq!(up.hits(), 2, "only the good keys' tokens passed");
    let m = scrape(gw.metrics_addr).await;
    assert_eq!(
        m.get("portcullis_jwks_keys", &[]),
        3.0,
        "usable: rsa-1, ec-1, and the first `dup` (held, never used)"
    );
}

/// Key set answers that are not key sets, served after good keys were loaded: a token with a
/// new kid gets 503 (the keys cannot be checked; fail closed), known keys keep working, and the
/// fetch is counted as `bad_jwks`.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_key_set_answers_keep_the_last_good_keys() {
    let key = DevKey::generate(Algorithm::RS256, "rsa-1");
    let newcomer = DevKey::generate(Algorithm::RS256, "rsa-2");
    let many: Vec<Value> = (0..10_000)
        .map(|i| json!({"kty": "RSA", "kid": format!("k{i}"), "n": "AQAB", "e": "AQAB"}))
        .collect();
    let bodies = [
        ("an empty set", r#"{"keys":[]}"#.to_owned()),
        ("HTML", "<html><body>Sign in</body></html>".to_owned()),
        (
            "10 MB",
            format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(10 << 20)),
        ),
        ("10,000 keys", json!({ "keys": many }).to_string()),
        ("keys not an array", r#"{"keys":{"kty":"RSA"}}"#.to_owned()),
        (
            "JSON nested 100,000 deep",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
    ];
    for (name, body) in &bodies {
        let idp = MockIdp::start(&[&key]).await;
        let up = EchoUpstream::start("app").await;
        let gw = common::idp::gateway_for(&idp.issuer(), "discovery = true", up.addr);
        assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
        idp.set_jwks_body(body);
        let base = claims(&idp, "");
        let fetches = idp.hits("/jwks");
        let resp = common::client()
            .get(format!("http://{}/x", gw.proxy_addr))
            .bearer_auth(newcomer.sign(&base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "{name}: a new kid");
        assert!(resp.headers().contains_key("retry-after"), "{name}");
        assert_eq!(idp.hits("/jwks"), fetches + 1, "{name}: one refetch");
        assert_eq!(
            common::idp::status_with(&gw, "/x", &key.sign(&base)).await,
            200,
            "{name}: the known key"
        );
        assert_eq!(up.hits(), 1, "{name}");
        let m = scrape(gw.metrics_addr).await;
        assert_eq!(
            m.get("portcullis_jwks_fetch_total", &[("result", "bad_jwks")]),
            1.0,
            "{name}"
        );
    }
}

/// The real binary at `debug` level: accepted, forged, opaque and refused-at-the-provider
/// tokens, and an authorization server that rejects the gateway's credentials. No token and no
/// secret appears in anything it logs.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_secret_reaches_the_logs() {
    use common::authz::{MockAs, Mode, CLIENT_ID, CLIENT_SECRET};
    let key = DevKey::generate(Algorithm::RS256, "rsa-1");
    let idp = MockIdp::start(&[&key]).await;
    let authz = MockAs::start().await;
    let up = EchoUpstream::start("app").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
         [introspection]\nendpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"ATTACK_SECRET\"\naudiences = [\"api\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        idp.issuer(),
        authz.endpoint(),
        up.addr
    );
    let gw = common::binary::GatewayProcess::start(
        &config,
        &[("ATTACK_SECRET", CLIENT_SECRET), ("RUST_LOG", "debug")],
    );
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let valid = key.sign(&claims(&idp, "orders:read"));
    let forged = DevKey::generate(Algorithm::RS256, "rsa-1").sign(&claims(&idp, "x"));
    let opaque = "opaque-Zm9vYmFyYmF6cXV1eA".to_owned();
    let refused = "refused-cXV1eGNvcmdlZ3JhdWx0".to_owned();
    authz.activate(&opaque, "orders:read");
    use common::idp::status_at;
    assert_eq!(status_at(gw.proxy, "/x?k=v", &valid).await, 200);
    assert_eq!(status_at(gw.proxy, "/x?k=v", &forged).await, 401);
    assert_eq!(status_at(gw.proxy, "/x?k=v", &opaque).await, 200);
    authz.set_mode(Mode::Status(401));
    assert_eq!(status_at(gw.proxy, "/x?k=v", &refused).await, 503);
    // The access log line of the last request is written after its response: wait for it.
    let logged = common::eventually(Duration::from_secs(10), || {
        let log = gw.log();
        async move { log.contains("401") && log.contains("503") }
    })
    .await;
    let log = gw.log();
    assert!(logged, "the access log never showed the requests:\n{log}");
    assert!(
        log.contains(CLIENT_ID),
        "the credential error names the client:\n{log}"
    );
    let encoded_secret =
        url::form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>();
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for (what, needle) in [
        ("the valid token", signature(&valid)),
        ("the forged token", signature(&forged)),
        ("the opaque token", opaque),
        ("the refused token", refused),
        ("the client secret", CLIENT_SECRET.to_owned()),
        ("the encoded client secret", encoded_secret),
    ] {
        assert!(!log.contains(&needle), "{what} is in the log:\n{log}");
    }
}
