//! DPoP (RFC 9449) through the real gateway: bound JWTs and introspected tokens with proofs,
//! replays, the binding against the verified-token cache, challenges, nonces, RFC 9728
//! metadata, and replay protection shared by two gateways through a real `redis-server`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::authz::MockAs;
use common::binary::TempFile;
use common::idp::{now, MockIdp};
use common::{became_ready, client, scrape_until, EchoUpstream};
use portcullis::app::RunningApp;
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::{json, Value};

/// An identity provider, an introspection endpoint, an upstream, the client's proof key, and
/// a gateway with `/opt` (dpop = "optional"), `/req` ("required") and `/off` routes.
struct World {
    gw: RunningApp,
    up: EchoUpstream,
    idp: (MockIdp, DevKey),
    az: MockAs,
    client_key: DevKey,
}

const SECRET_ENV: &str = "PORTCULLIS_TEST_DPOP_INTROSPECTION_SECRET";

impl World {
    async fn start(dpop: &str) -> World {
        World::start_with(dpop, "").await
    }

    /// [`World::start`] with more keys for the issuer and for `[introspection]`.
    async fn start_with(dpop: &str, issuer_extra: &str) -> World {
        let signing = DevKey::generate(Algorithm::ES256, "idp");
        let idp = MockIdp::start(&[&signing]).await;
        let az = MockAs::start().await;
        let up = EchoUpstream::start("app").await;
        let gw = World::gateway_with(&idp, &az, &up, dpop, issuer_extra);
        World {
            gw,
            up,
            idp: (idp, signing),
            az,
            client_key: DevKey::generate(Algorithm::ES256, "client"),
        }
    }

    fn gateway(idp: &MockIdp, az: &MockAs, up: &EchoUpstream, dpop: &str) -> RunningApp {
        World::gateway_with(idp, az, up, dpop, "")
    }

    fn gateway_with(
        idp: &MockIdp,
        az: &MockAs,
        up: &EchoUpstream,
        dpop: &str,
        issuer_extra: &str,
    ) -> RunningApp {
        std::env::set_var(SECRET_ENV, common::authz::CLIENT_SECRET);
        common::start_gateway(&format!(
            r#"{dpop}
[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["api"]
algorithms = ["ES256"]
{issuer_extra}
[introspection]
endpoint = "{endpoint}"
issuer = "{az_issuer}"
client_id = "gateway client"
client_secret_env = "{SECRET_ENV}"
audiences = ["api"]
{issuer_extra}
[resource_metadata]
resource = "https://api.example.com"
[[routes]]
name = "opt"
path_prefix = "/opt"
upstreams = ["{up}"]
dpop = "optional"
[[routes]]
name = "req"
path_prefix = "/req"
upstreams = ["{up}"]
dpop = "required"
[[routes]]
name = "off"
path_prefix = "/off"
upstreams = ["{up}"]
[[routes]]
name = "fwd"
path_prefix = "/fwd"
upstreams = ["{up}"]
dpop = "optional"
forward_token = true
"#,
            issuer = idp.issuer(),
            endpoint = az.endpoint(),
            az_issuer = az.issuer(),
            up = up.addr,
        ))
    }

    async fn ready(&self) {
        assert!(became_ready(&self.gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    }

    /// A JWT for audience `api`, bound to `key` when given.
    fn token(&self, key: Option<&DevKey>) -> String {
        let (idp, signing) = &self.idp;
        let mut claims = json!({ "iss": idp.issuer(), "sub": "user-7", "aud": "api",
                                 "scope": "read", "iat": now(), "exp": now() + 3600 });
        if let Some(k) = key {
            claims["cnf"] = json!({ "jkt": k.thumbprint() });
        }
        signing.sign(&claims)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.proxy_addr)
    }

    /// The proof the client's key makes for `GET path` on this gateway with `token`.
    fn proof(&self, path: &str, token: &str) -> String {
        self.client_key
            .dpop_proof("GET", &self.url(path), token, &json!({}))
    }

    /// `GET path` with `token` in the `DPoP` scheme and a fresh proof for it.
    async fn with_proof(&self, path: &str, token: &str) -> reqwest::Response {
        let proof = self.proof(path, token);
        self.send("GET", path, &format!("DPoP {token}"), &[&proof])
            .await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        auth: &str,
        proofs: &[&str],
    ) -> reqwest::Response {
        let mut req = client()
            .request(method.parse().unwrap(), self.url(path))
            .header("authorization", auth);
        for p in proofs {
            req = req.header("dpop", *p);
        }
        req.send().await.unwrap()
    }
}

fn challenges(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn error_of(resp: &reqwest::Response) -> String {
    challenges(resp).first().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_bound_token_with_its_proof_passes_once_and_its_replay_is_refused() {
    let w = World::start("").await;
    w.ready().await;
    let token = w.token(Some(&w.client_key));
    let proof = w.proof("/req/orders", &token);
    let auth = format!("DPoP {token}");
    let r = w.send("GET", "/req/orders", &auth, &[&proof]).await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    assert_eq!(w.up.hits(), 1);
    let seen = &w.up.seen()[0];
    assert_eq!(seen.headers["x-auth-subject"], "user-7");
    assert!(
        !seen.headers.contains_key("authorization"),
        "the token is not forwarded by default"
    );

    // The same proof again: a replay, refused before the upstream.
    let r = w.send("GET", "/req/orders", &auth, &[&proof]).await;
    assert_eq!(r.status(), 401);
    let c = error_of(&r);
    assert!(c.starts_with("DPoP realm=\"api\", algs=\"ES256 ES384 PS256 RS256 EdDSA PS384\", error=\"invalid_dpop_proof\""), "{c}");
    assert_eq!(w.up.hits(), 1);
    // A fresh proof for the same token passes: the token is reused, proofs are not.
    let r = w
        .send(
            "GET",
            "/req/orders",
            &auth,
            &[&w.proof("/req/orders", &token)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("route", "req"), ("outcome", "dpop_proof_replayed")],
        ) == 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("route", "req"), ("outcome", "allowed")]
        ),
        2.0
    );
    assert_eq!(m.get("portcullis_dpop_replay_cache_full_total", &[]), 0.0);
}

#[tokio::test]
async fn the_token_cache_never_lets_a_bound_token_pass_without_its_proof() {
    let w = World::start("").await;
    w.ready().await;
    let token = w.token(Some(&w.client_key));
    // Verified once with its proof: the token's claims are now in the cache.
    let r = w.with_proof("/opt/a", &token).await;
    assert_eq!(r.status(), 200);
    let bearer = format!("Bearer {token}");
    // As a bearer token, on each kind of route.
    let r = w.send("GET", "/opt/a", &bearer, &[]).await;
    assert_eq!(r.status(), 401);
    assert!(
        error_of(&r).starts_with("Bearer realm=\"api\", error=\"invalid_token\""),
        "{}",
        error_of(&r)
    );
    assert!(
        challenges(&r)[1].starts_with("DPoP realm=\"api\", algs="),
        "{:?}",
        challenges(&r)
    );
    let r = w.send("GET", "/off/a", &bearer, &[]).await;
    assert_eq!(r.status(), 401);
    assert!(error_of(&r).contains("error=\"invalid_token\""));
    assert_eq!(
        challenges(&r).len(),
        1,
        "a bearer-only route names Bearer only"
    );
    // Bearer on a DPoP-only route: an unsupported method, so a challenge without error.
    let r = w.send("GET", "/req/a", &bearer, &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(challenges(&r), vec!["DPoP realm=\"api\", algs=\"ES256 ES384 PS256 RS256 EdDSA PS384\", resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource\"".to_string()]);
    // The DPoP scheme without a proof; a proof for another token (`ath`); a proof with a
    // Bearer header (the proof is ignored, the bound token still refused).
    let r = w.send("GET", "/opt/a", &format!("DPoP {token}"), &[]).await;
    assert_eq!(r.status(), 401);
    assert!(error_of(&r).contains("error=\"invalid_dpop_proof\""));
    let other = w.token(Some(&w.client_key));
    let r = w
        .send(
            "GET",
            "/opt/a",
            &format!("DPoP {token}"),
            &[&w.proof("/opt/a", &other)],
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = w
        .send("GET", "/opt/a", &bearer, &[&w.proof("/opt/a", &token)])
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(w.up.hits(), 1);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "dpop_bound_token_as_bearer")],
        ) == 2.0
    })
    .await;
    for (route, outcome, n) in [
        ("off", "sender_constrained", 1.0),
        ("req", "dpop_required", 1.0),
        ("opt", "dpop_proof_missing", 1.0),
        ("opt", "dpop_proof_wrong_ath", 1.0),
    ] {
        assert_eq!(
            m.get(
                "portcullis_auth_decisions_total",
                &[("route", route), ("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn proofs_for_another_request_or_key_are_refused() {
    let w = World::start("").await;
    w.ready().await;
    let token = w.token(Some(&w.client_key));
    let auth = format!("DPoP {token}");
    let k = &w.client_key;
    let other_key = DevKey::generate(Algorithm::ES256, "other");
    let addr = w.gw.proxy_addr;
    let cases = [
        (
            "wrong method",
            k.dpop_proof("POST", &w.url("/req/a"), &token, &json!({})),
            "dpop_proof_wrong_method",
        ),
        (
            "another path",
            k.dpop_proof("GET", &w.url("/req/b"), &token, &json!({})),
            "dpop_proof_wrong_uri",
        ),
        (
            "another host",
            k.dpop_proof(
                "GET",
                &format!("http://evil.example:{}/req/a", addr.port()),
                &token,
                &json!({}),
            ),
            "dpop_proof_wrong_uri",
        ),
        (
            "https",
            k.dpop_proof("GET", &format!("https://{addr}/req/a"), &token, &json!({})),
            "dpop_proof_wrong_uri",
        ),
        (
            "stale",
            k.dpop_proof(
                "GET",
                &w.url("/req/a"),
                &token,
                &json!({"iat": now() - 600}),
            ),
            "dpop_proof_stale",
        ),
        (
            "another key",
            other_key.dpop_proof("GET", &w.url("/req/a"), &token, &json!({})),
            "dpop_proof_key_mismatch",
        ),
    ];
    for (name, proof, outcome) in &cases {
        let r = w.send("GET", "/req/a", &auth, &[proof]).await;
        assert_eq!(r.status(), 401, "{name}");
        assert!(
            error_of(&r).contains("error=\"invalid_dpop_proof\""),
            "{name}: {}",
            error_of(&r)
        );
        let _ = outcome;
    }
    // The path compares in the gateway's normal form: `%7E` is `~`, on either side.
    let k2 = w
        .client_key
        .dpop_proof("GET", &w.url("/req/%7e1"), &token, &json!({}));
    let r = w.send("GET", "/req/~1", &auth, &[&k2]).await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    let r = w
        .send("GET", "/req/%7E1", &auth, &[&w.proof("/req/~1", &token)])
        .await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    // Two DPoP headers, even both good.
    let (a, b) = (w.proof("/req/a", &token), w.proof("/req/a", &token));
    let r = w.send("GET", "/req/a", &auth, &[&a, &b]).await;
    assert_eq!(r.status(), 401);
    // The query is not part of htu; the proof still names the path.
    let r = w
        .send("GET", "/req/a?page=2", &auth, &[&w.proof("/req/a", &token)])
        .await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    // An unbound token with the DPoP scheme and a good proof.
    let unbound = w.token(None);
    let r = w.with_proof("/req/a", &unbound).await;
    assert_eq!(r.status(), 401);
    assert!(error_of(&r).contains("error=\"invalid_token\""));
    assert_eq!(w.up.hits(), 3);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "dpop_token_not_bound")],
        ) == 1.0
    })
    .await;
    for (name, _, outcome) in &cases {
        assert!(
            m.get(
                "portcullis_auth_decisions_total",
                &[("route", "req"), ("outcome", outcome)]
            ) >= 1.0,
            "{name}"
        );
    }
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "dpop_proof_multiple")]
        ),
        1.0
    );
    // Unbound bearer tokens still work on the optional route and the bearer-only one.
    assert_eq!(
        w.send("GET", "/opt/a", &format!("Bearer {unbound}"), &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send("GET", "/off/a", &format!("Bearer {unbound}"), &[])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn an_introspected_dpop_token_needs_its_proof() {
    let w = World::start("").await;
    w.ready().await;
    let token = "opaque-dpop-token-1";
    w.az.set_answer(
        token,
        json!({
            "active": true, "scope": "read", "sub": "user-9", "token_type": "DPoP", "aud": "api",
            "iss": w.az.issuer(), "exp": now() + 3600, "cnf": {"jkt": w.client_key.thumbprint()},
        }),
    );
    let r = w
        .send(
            "GET",
            "/opt/x",
            &format!("DPoP {token}"),
            &[&w.proof("/opt/x", token)],
        )
        .await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    assert_eq!(w.up.seen()[0].headers["x-auth-subject"], "user-9");
    // Cached now; as Bearer, or with a proof by another key, it is still refused.
    let r = w
        .send("GET", "/opt/x", &format!("Bearer {token}"), &[])
        .await;
    assert_eq!(r.status(), 401);
    let stranger = DevKey::generate(Algorithm::ES256, "s");
    let proof = stranger.dpop_proof("GET", &w.url("/opt/x"), token, &json!({}));
    let r = w
        .send("GET", "/opt/x", &format!("DPoP {token}"), &[&proof])
        .await;
    assert_eq!(r.status(), 401);
    // `token_type: DPoP` without a binding is not an access token the gateway can check.
    w.az.set_answer("opaque-unbound-dpop", json!({
        "active": true, "scope": "read", "token_type": "DPoP", "aud": "api", "exp": now() + 3600,
    }));
    let r = w
        .send("GET", "/opt/x", "Bearer opaque-unbound-dpop", &[])
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(w.up.hits(), 1);
    assert_eq!(w.az.call_count(), 2, "one introspection per token");
}

#[tokio::test]
async fn resource_metadata_advertises_dpop() {
    let w = World::start("").await;
    w.ready().await;
    let doc: Value = client()
        .get(w.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "PS256", "RS256", "EdDSA", "PS384"])
    );
    // One route of the resource also takes bearer tokens.
    assert_eq!(doc["dpop_bound_access_tokens_required"], json!(false));
}

#[tokio::test]
async fn nonces_are_demanded_issued_and_shared_by_replicas_with_the_secret() {
    let secret = TempFile::with("a-nonce-secret-of-at-least-thirty-two-bytes\n");
    let dpop = format!(
        "[dpop]\nalgorithms = [\"ES256\"]\nnonce = true\nnonce_secret_file = \"{}\"\n",
        secret.0.display()
    );
    let w = World::start(&dpop).await;
    w.ready().await;
    let token = w.token(Some(&w.client_key));
    let auth = format!("DPoP {token}");
    // Without a nonce: 401 use_dpop_nonce and a nonce to use.
    let r = w
        .send("GET", "/req/n", &auth, &[&w.proof("/req/n", &token)])
        .await;
    assert_eq!(r.status(), 401);
    assert!(
        error_of(&r).starts_with("DPoP realm=\"api\", algs=\"ES256\", error=\"use_dpop_nonce\""),
        "{}",
        error_of(&r)
    );
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    let with_nonce = |n: &str| {
        w.client_key
            .dpop_proof("GET", &w.url("/req/n"), &token, &json!({"nonce": n}))
    };
    let r = w.send("GET", "/req/n", &auth, &[&with_nonce(&nonce)]).await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    // A made-up nonce is refused with a fresh one.
    let r = w
        .send("GET", "/req/n", &auth, &[&with_nonce("made-up")])
        .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("dpop-nonce"));
    // Another replica with the same secret accepts the first one's nonce.
    let replica = World::gateway(&w.idp.0, &w.az, &w.up, &dpop);
    assert!(became_ready(&replica.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let url = format!("http://{}/req/n", replica.proxy_addr);
    let proof = w
        .client_key
        .dpop_proof("GET", &url, &token, &json!({"nonce": nonce}));
    let r = client()
        .get(&url)
        .header("authorization", &auth)
        .header("dpop", proof)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(w.up.hits(), 2);
}

/// A `redis-server` on a free loopback port, stopped when dropped.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/setup.sh test)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ready = common::eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(ready, "redis-server did not start");
        Redis { child, addr }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_gateways_sharing_redis_refuse_a_proof_replayed_on_the_other_and_fail_closed_without_it(
) {
    let mut redis = Redis::start().await;
    let dpop = format!(
        "[dpop]\nreplay_store = \"redis://{}\"\nreplay_store_timeout = \"500ms\"\n",
        redis.addr
    );
    let w = World::start(&dpop).await;
    w.ready().await;
    let second = World::gateway(&w.idp.0, &w.az, &w.up, &dpop);
    assert!(became_ready(&second.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let token = w.token(Some(&w.client_key));
    let auth = format!("DPoP {token}");
    // The client signs for the name both replicas answer to behind a load balancer.
    let proof = w
        .client_key
        .dpop_proof("GET", "http://api.example.com/req/r", &token, &json!({}));
    let send = |gw: SocketAddr, proof: String| {
        let auth = auth.clone();
        async move {
            client()
                .get(format!("http://{gw}/req/r"))
                .header("host", "api.example.com")
                .header("authorization", auth)
                .header("dpop", proof)
                .send()
                .await
                .unwrap()
        }
    };
    let r = send(w.gw.proxy_addr, proof.clone()).await;
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    let r = send(second.proxy_addr, proof.clone()).await;
    assert_eq!(r.status(), 401, "replayed on the other replica");
    assert!(error_of(&r).contains("error=\"invalid_dpop_proof\""));
    let r = send(w.gw.proxy_addr, proof).await;
    assert_eq!(r.status(), 401, "replayed on the first");
    assert_eq!(w.up.hits(), 1);

    // Redis goes away: fail closed with 503, never a pass.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let fresh = w
        .client_key
        .dpop_proof("GET", "http://api.example.com/req/r", &token, &json!({}));
    let r = send(second.proxy_addr, fresh).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(w.up.hits(), 1);
    let m = scrape_until(second.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "dpop_replay_store_unavailable")],
        ) == 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "dpop_proof_replayed")]
        ),
        1.0
    );
}

/// Behind another proxy: the decision endpoint checks the proof against the original request
/// the asking proxy describes (`X-Original-*`, `X-Forwarded-Proto` / `-Host`).
#[tokio::test]
async fn the_decision_endpoint_checks_proofs_against_the_original_request() {
    let w = World::start("[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"nginx\"\n").await;
    w.ready().await;
    let decision = w.gw.decision_addr.expect("decision listener");
    let token = w.token(Some(&w.client_key));
    let ask = |proof: String| {
        client()
            .get(format!("http://{decision}/auth"))
            .header("x-original-method", "GET")
            .header("x-original-uri", "/req/a?x=1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
    };
    let proof = w
        .client_key
        .dpop_proof("GET", "https://api.example.com/req/a", &token, &json!({}));
    let r = ask(proof.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", challenges(&r));
    assert_eq!(r.headers()["x-auth-subject"], "user-7");
    let r = ask(proof).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        error_of(&r).starts_with("DPoP realm=\"api\""),
        "{}",
        error_of(&r)
    );
    // A proof for the decision endpoint's own address is not one for the original request.
    let own = w.client_key.dpop_proof(
        "GET",
        &format!("http://{decision}/req/a"),
        &token,
        &json!({}),
    );
    assert_eq!(ask(own).await.unwrap().status(), 401);
}

/// Red team: a client flooding its own fresh proofs made a replay cache with eviction forget a
/// victim's proof, which was then accepted again. A full set refuses new proofs (503) instead,
/// and the victim's proof stays a replay.
#[tokio::test]
async fn a_flood_of_fresh_proofs_never_makes_the_gateway_forget_a_used_one() {
    let w = World::start("[dpop]\nreplay_cache_capacity = 10\n").await;
    w.ready().await;
    let victim = w.token(Some(&w.client_key));
    let victim_proof = w.proof("/req/v", &victim);
    let auth = format!("DPoP {victim}");
    assert_eq!(
        w.send("GET", "/req/v", &auth, &[&victim_proof])
            .await
            .status(),
        200
    );
    let attacker_key = DevKey::generate(Algorithm::ES256, "attacker");
    let attacker = w.token(Some(&attacker_key));
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let proof = attacker_key.dpop_proof("GET", &w.url("/req/v"), &attacker, &json!({}));
        let r = w
            .send("GET", "/req/v", &format!("DPoP {attacker}"), &[&proof])
            .await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        21,
        "{statuses:?}"
    );
    let r = w.send("GET", "/req/v", &auth, &[&victim_proof]).await;
    assert_eq!(r.status(), 401, "the victim's proof is still a replay");
    assert_eq!(w.up.hits(), 10);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get("portcullis_dpop_replay_cache_full_total", &[]) == 21.0
    })
    .await;
    assert_eq!(m.get("portcullis_dpop_replay_cache_entries", &[]), 10.0);
}

/// The proof goes with the token it names: removed from the forwarded request unless the
/// route forwards the token (red team: proofs landed in upstream logs).
#[tokio::test]
async fn the_proof_is_forwarded_only_with_the_token() {
    let w = World::start("").await;
    w.ready().await;
    let token = w.token(Some(&w.client_key));
    let r = w.with_proof("/opt/p", &token).await;
    assert_eq!(r.status(), 200);
    let unbound = w.token(None);
    let r = w
        .send(
            "GET",
            "/opt/p",
            &format!("Bearer {unbound}"),
            &[&w.proof("/opt/p", &unbound)],
        )
        .await;
    assert_eq!(r.status(), 200);
    for seen in w.up.seen() {
        assert!(!seen.headers.contains_key("dpop"), "{:?}", seen.headers);
        assert!(!seen.headers.contains_key("authorization"));
    }
    let proof = w.proof("/fwd/p", &token);
    let r = w
        .send("GET", "/fwd/p", &format!("DPoP {token}"), &[&proof])
        .await;
    assert_eq!(r.status(), 200);
    let last = w.up.seen().pop().unwrap();
    assert_eq!(last.headers["dpop"], proof.as_str());
    assert_eq!(
        last.headers["authorization"],
        format!("DPoP {token}").as_str()
    );
    // Beside a bearer token the DPoP header was never checked: it stays behind (red team).
    let bearer = format!("Bearer {unbound}");
    let r = w.send("GET", "/fwd/p", &bearer, &["x", "y"]).await;
    assert_eq!(r.status(), 200);
    let last = w.up.seen().pop().unwrap();
    assert!(!last.headers.contains_key("dpop"), "{:?}", last.headers);
    assert_eq!(last.headers["authorization"], bearer.as_str());
}

/// An issuer's `require_dpop` holds for its tokens that come by introspection too, when the
/// answer names it and `[introspection]` names no issuer of its own (red team).
#[tokio::test]
async fn require_dpop_holds_for_the_issuers_tokens_by_introspection() {
    let signing = DevKey::generate(Algorithm::ES256, "idp");
    let idp = MockIdp::start(&[&signing]).await;
    let az = MockAs::start().await;
    let up = EchoUpstream::start("app").await;
    std::env::set_var(SECRET_ENV, common::authz::CLIENT_SECRET);
    let gw = common::start_gateway(&format!(
        "[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\nrequire_dpop = true\n\
         [introspection]\nendpoint = \"{}\"\nclient_id = \"gateway client\"\nclient_secret_env = \"{SECRET_ENV}\"\naudiences = [\"api\"]\n\
         [[routes]]\nname = \"opt\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\ndpop = \"optional\"\n",
        idp.issuer(),
        az.endpoint(),
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    for (token, iss) in [
        ("opaque-of-the-issuer", idp.issuer()),
        ("opaque-of-another", "https://other.example".to_string()),
    ] {
        az.set_answer(
            token,
            json!({ "active": true, "scope": "read", "aud": "api", "iss": iss, "exp": now() + 3600 }),
        );
    }
    let get = |token: &str| {
        client()
            .get(format!("http://{}/x", gw.proxy_addr))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(get("opaque-of-the-issuer").await.unwrap().status(), 401);
    assert_eq!(get("opaque-of-another").await.unwrap().status(), 200);
    assert_eq!(up.hits(), 1);
}

/// `require_dpop` on an issuer (and on `[introspection]`): its unbound tokens are refused on
/// every route, while its bound tokens pass with their proofs.
#[tokio::test]
async fn an_issuer_that_requires_dpop_has_its_bearer_tokens_refused_everywhere() {
    let w = World::start_with("", "require_dpop = true").await;
    w.ready().await;
    let unbound = w.token(None);
    for path in ["/opt/i", "/off/i"] {
        let r = w.send("GET", path, &format!("Bearer {unbound}"), &[]).await;
        assert_eq!(r.status(), 401, "{path}");
        assert!(error_of(&r).contains("error=\"invalid_token\""), "{path}");
    }
    w.az.activate("opaque-unbound", "read");
    let r = w.send("GET", "/opt/i", "Bearer opaque-unbound", &[]).await;
    assert_eq!(r.status(), 401);
    let bound = w.token(Some(&w.client_key));
    let r = w.with_proof("/opt/i", &bound).await;
    assert_eq!(r.status(), 200);
    assert_eq!(w.up.hits(), 1);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "dpop_unbound_token")],
        ) == 3.0
    })
    .await;
    assert_eq!(
        m.get("portcullis_auth_decisions_total", &[("outcome", "allowed")]),
        1.0
    );
}

/// Behind the Kubernetes ingress-nginx controller: the original URL's scheme and host are what
/// the proof names.
#[tokio::test]
async fn behind_ingress_nginx_the_proof_names_the_original_url() {
    let w = World::start("[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"ingress-nginx\"\n")
        .await;
    w.ready().await;
    let decision = w.gw.decision_addr.expect("decision listener");
    let token = w.token(Some(&w.client_key));
    let ask = |proof: String| {
        client()
            .get(format!("http://{decision}/"))
            .header("x-original-method", "GET")
            .header("x-original-url", "https://api.example.com/req/a?x=1")
            .header("x-forwarded-proto", "")
            .header("x-auth-request-redirect", "/req/a?x=1")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
    };
    let https = w
        .client_key
        .dpop_proof("GET", "https://api.example.com/req/a", &token, &json!({}));
    assert_eq!(ask(https).await.unwrap().status(), 200);
    let http = w
        .client_key
        .dpop_proof("GET", "http://api.example.com/req/a", &token, &json!({}));
    assert_eq!(ask(http).await.unwrap().status(), 401, "another scheme");
}
