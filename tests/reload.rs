//! `SIGHUP` reloads `gateway.toml` in the running binary: a scope change with no failed
//! request under load, warm key sets (the identity provider's JWKS counter does not move),
//! a refused reload that keeps the old config, issuers removed and added, keys that need a
//! restart, secret files read again, and DPoP replay state that survives the swap.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::binary::GatewayProcess;
use common::idp::{claims, now, MockIdp};
use common::{became_ready, client, scrape, scrape_until, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::json;

const RELOADS: &str = "portcullis_config_reloads_total";

/// A gateway with one issuer (keys at `jwks_uri`, so only `/jwks` is fetched) and route `api`
/// requiring `scopes`; `extra` goes before the issuer (more sections, more routes after).
fn config(idp: &MockIdp, up: SocketAddr, scopes: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\nscopes = [{scopes}]\n",
        iss = idp.issuer(),
    )
}

/// A signing key and a mock identity provider that serves it.
async fn issuer(kid: &str) -> (DevKey, MockIdp) {
    let key = DevKey::generate(Algorithm::ES256, kid);
    let idp = MockIdp::start(&[&key]).await;
    (key, idp)
}

/// Wait until the gateway has counted `success` applied and `failure` refused reloads.
async fn reloads(gw: &GatewayProcess, success: f64, failure: f64) -> common::Metrics {
    let m = scrape_until(gw.metrics, |m| {
        m.get(RELOADS, &[("result", "success")]) >= success
            && m.get(RELOADS, &[("result", "failure")]) >= failure
    })
    .await;
    assert_eq!(
        (
            m.get(RELOADS, &[("result", "success")]),
            m.get(RELOADS, &[("result", "failure")])
        ),
        (success, failure),
        "{}",
        gw.log()
    );
    m
}

async fn status(gw: &GatewayProcess, path: &str, token: &str) -> u16 {
    common::idp::status_at(gw.proxy, path, token).await
}

/// The reload a platform team does most: a route's scopes change while traffic flows. Not one
/// request of the token that both configs allow fails; the token only the old one allowed gets
/// 403 at once after; the key set is not fetched again.
#[tokio::test(flavor = "multi_thread")]
async fn a_scope_change_applies_with_no_failed_request_under_load() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let mut gw = GatewayProcess::start(&config(&idp, up.addr, "\"read\"", ""), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let both = key.sign(&claims(&idp, "read write"));
    let read_only = key.sign(&claims(&idp, "read"));
    assert_eq!(status(&gw, "/api/x", &read_only).await, 200);
    let before = scrape(gw.metrics).await;
    let jwks_hits = idp.hits("/jwks");
    assert_eq!(jwks_hits, 1, "one fetch at start");

    // Load: four clients, each on its own keep-alive connection, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = format!("http://{}/api/x", gw.proxy);
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let (url, token) = (url.clone(), both.clone());
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    let ok = http
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < 200 {
        tokio::task::yield_now().await;
    }
    gw.rewrite_config(&config(&idp, up.addr, "\"write\"", ""));
    gw.sighup();
    let after = reloads(&gw, 1.0, 0.0).await;
    let at_reload = sent.load(Ordering::Relaxed);
    while sent.load(Ordering::Relaxed) < at_reload + 200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(status(&gw, "/api/x", &read_only).await, 403);
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let total = sent.load(Ordering::Relaxed);
    eprintln!("{total} requests across the reload, {at_reload} of them sent by the time the reload was seen applied");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {total} requests across the reload"
    );
    assert_eq!(idp.hits("/jwks"), jwks_hits, "the key set stayed warm");
    assert!(gw.running(), "SIGHUP does not kill the gateway");
    let log = gw.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("issuers_kept_warm=1"), "{log}");
    assert_eq!(
        after.get("portcullis_config_last_reload_successful", &[]),
        1.0
    );
    let stamp = "portcullis_config_last_reload_success_timestamp_seconds";
    assert!(after.get(stamp, &[]) > before.get(stamp, &[]));
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(1)).await);
}

/// A file that fails validation, or names an upstream that does not resolve, is refused as a
/// whole: the old config keeps serving, every problem is logged with its key, and the metrics
/// say the last reload failed until one succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reload_keeps_the_running_config() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let mut gw = GatewayProcess::start(&config(&idp, up.addr, "\"read\"", ""), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let read_only = key.sign(&claims(&idp, "read"));

    // Two problems in one file: both are logged.
    let bad = config(&idp, up.addr, "\"write\"", "")
        .replace("scopes = ", "scope = ")
        .replace("threads = 2", "threads = 2\nshutdown_grace = \"soon\"");
    gw.rewrite_config(&bad);
    gw.sighup();
    let m = reloads(&gw, 0.0, 1.0).await;
    assert_eq!(m.get("portcullis_config_last_reload_successful", &[]), 0.0);
    assert_eq!(
        status(&gw, "/api/x", &read_only).await,
        200,
        "the old scopes hold"
    );
    let log = gw.log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("routes[0].scope: unknown field `scope`"),
        "{log}"
    );

    // Valid TOML whose upstream does not resolve: refused too.
    let unresolvable = config(&idp, up.addr, "\"write\"", "").replace(
        &format!("upstreams = [\"{}\"]", up.addr),
        "upstreams = [\"no-such-host.invalid:80\"]",
    );
    gw.rewrite_config(&unresolvable);
    gw.sighup();
    reloads(&gw, 0.0, 2.0).await;
    assert_eq!(status(&gw, "/api/x", &read_only).await, 200);
    let log = gw.log();
    assert!(
        log.contains("routes[0].upstreams: cannot resolve \\\"no-such-host.invalid:80\\\"")
            || log.contains("routes[0].upstreams: cannot resolve \"no-such-host.invalid:80\""),
        "{log}"
    );

    // A good file again: applied, and the metrics say so.
    gw.rewrite_config(&config(&idp, up.addr, "\"write\"", ""));
    gw.sighup();
    let m = reloads(&gw, 1.0, 2.0).await;
    assert_eq!(m.get("portcullis_config_last_reload_successful", &[]), 1.0);
    assert_eq!(status(&gw, "/api/x", &read_only).await, 403);
    assert!(gw.running());
}

/// An issuer a reload removes is gone at once: its token, cached a moment before, is refused.
/// An issuer it adds has its keys before the swap (fetched once, during the reload), so its
/// first token passes and `/readyz` never drops.
#[tokio::test(flavor = "multi_thread")]
async fn removed_issuers_are_gone_at_once_and_added_ones_arrive_warm() {
    let ((key_a, idp_a), (key_b, idp_b)) = (issuer("a").await, issuer("b").await);
    let up = EchoUpstream::start("app").await;
    let mut gw = GatewayProcess::start(&config(&idp_a, up.addr, "\"read\"", ""), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let token_a = key_a.sign(&claims(&idp_a, "read"));
    let token_b = key_b.sign(&claims(&idp_b, "read"));
    assert_eq!(status(&gw, "/api/x", &token_a).await, 200);
    assert_eq!(
        status(&gw, "/api/x", &token_a).await,
        200,
        "now from the cache"
    );
    assert_eq!(status(&gw, "/api/x", &token_b).await, 401);
    assert_eq!(idp_b.hits("/jwks"), 0);

    gw.rewrite_config(&config(&idp_b, up.addr, "\"read\"", ""));
    gw.sighup();
    reloads(&gw, 1.0, 0.0).await;
    assert_eq!(idp_b.hits("/jwks"), 1, "fetched during the reload");
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_millis(1)).await);
    assert_eq!(status(&gw, "/api/x", &token_b).await, 200);
    assert_eq!(idp_b.hits("/jwks"), 1, "the first token needed no fetch");
    let refused = client()
        .get(format!("http://{}/api/x", gw.proxy))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(gw.log().contains("issuers_removed=1"), "{}", gw.log());
    assert!(gw.running());
}

/// Keys a reload cannot apply (listener threads here) are named in a warning; the rest of the
/// file is applied (a route added).
#[tokio::test(flavor = "multi_thread")]
async fn keys_that_need_a_restart_are_named_and_the_rest_applies() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let mut gw = GatewayProcess::start(&config(&idp, up.addr, "\"read\"", ""), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    assert_eq!(status(&gw, "/open/x", "t").await, 404);
    let next = config(&idp, up.addr, "\"read\"", "")
        .replace("threads = 2", "threads = 1\nmax_uri_bytes = 200")
        + &format!(
            "[[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        );
    gw.rewrite_config(&next);
    gw.sighup();
    let m = reloads(&gw, 1.0, 0.0).await;
    assert_eq!(status(&gw, "/open/x", "t").await, 200);
    // The running limit stays, as warned: a 300-byte target is not refused with 414.
    let long = format!("/open/{}", "a".repeat(300));
    assert_eq!(status(&gw, &long, "t").await, 200);
    let log = gw.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("takes effect only at the next restart"))
        .collect();
    assert_eq!(warned.len(), 2, "{log}");
    let names = |key: &str| {
        let (quoted, bare) = (format!("key=\"{key}\""), format!("key={key}"));
        warned
            .iter()
            .any(|l| l.contains(&quoted) || l.contains(&bare))
    };
    assert!(
        names("server.threads") && names("server.max_uri_bytes"),
        "{log}"
    );
    // Reloaded again with the same file: the running value still differs, so still warned.
    gw.sighup();
    reloads(&gw, 2.0, 0.0).await;
    let log = gw.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("takes effect only at the next restart"))
        .count();
    assert_eq!(warned, 4, "{log}");
    // The new route's series exist from the reload on, before its first request is counted.
    assert!(
        m.has(
            "portcullis_auth_decisions_total",
            &[("route", "open"), ("outcome", "none")]
        ) || m.has("portcullis_requests_total", &[("route", "open")])
    );
    assert!(gw.running());
}

/// An HMAC issuer's secret in a file (a mounted Kubernetes Secret): a rotation written to the
/// file takes effect on the reload, and the old secret's tokens, cached or not, stop working.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_file_is_read_again_on_reload() {
    let up = EchoUpstream::start("app").await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("reload-hmac-{}", std::process::id()));
    let (old, new) = (
        "the first hmac secret, thirty-two bytes or more",
        "the second hmac secret, thirty-two bytes or more",
    );
    std::fs::write(&file, format!("{old}\n")).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[issuers]]\nissuer = \"https://hs.example\"\nhmac_secret_file = {:?}\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        file.display().to_string(),
        up.addr
    );
    let mut gw = GatewayProcess::start(&text, &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let token = |secret: &str| {
        let claims = json!({ "iss": "https://hs.example", "aud": "api", "exp": now() + 60 });
        DevKey::hmac(Algorithm::HS256, "any", secret.as_bytes()).sign(&claims)
    };
    assert_eq!(status(&gw, "/x", &token(old)).await, 200);
    assert_eq!(status(&gw, "/x", &token(old)).await, 200, "cached");
    assert_eq!(status(&gw, "/x", &token(new)).await, 401);
    std::fs::write(&file, format!("{new}\n")).unwrap();
    gw.sighup();
    reloads(&gw, 1.0, 0.0).await;
    assert_eq!(status(&gw, "/x", &token(new)).await, 200);
    assert_eq!(status(&gw, "/x", &token(old)).await, 401);

    // A secret file that disappears refuses the reload; the running secret stays.
    std::fs::remove_file(&file).unwrap();
    gw.sighup();
    reloads(&gw, 1.0, 1.0).await;
    assert_eq!(status(&gw, "/x", &token(new)).await, 200);
    assert!(
        gw.log().contains("issuers[0].hmac_secret_file: the file"),
        "{}",
        gw.log()
    );
    assert!(gw.running());
}

/// A proof used before a reload stays used after it (RFC 9449 §11.1): the replay state is kept
/// across the swap, not emptied with the old config.
#[tokio::test(flavor = "multi_thread")]
async fn a_dpop_proof_used_before_a_reload_is_refused_after_it() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    // The reload changes `[dpop]` itself (not its replay store) as well as the scopes.
    let dpop = |scopes: &str, leeway: &str| {
        let section = format!("[dpop]\nalgorithms = [\"ES256\"]\nproof_leeway = \"{leeway}\"\n");
        config(&idp, up.addr, scopes, &section) + "dpop = \"required\"\n"
    };
    let mut gw = GatewayProcess::start(&dpop("\"read\"", "5s"), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let client_key = DevKey::generate(Algorithm::ES256, "client");
    let mut bound = claims(&idp, "read write");
    bound["cnf"] = json!({ "jkt": client_key.thumbprint() });
    let token = key.sign(&bound);
    let url = format!("http://{}/api/x", gw.proxy);
    let proof = client_key.dpop_proof("GET", &url, &token, &json!({}));
    let send = |proof: String| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            client()
                .get(url)
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(send(proof.clone()).await.status(), 200);
    gw.rewrite_config(&dpop("\"write\"", "4s"));
    gw.sighup();
    reloads(&gw, 1.0, 0.0).await;
    let replayed = send(proof).await;
    assert_eq!(replayed.status(), 401);
    let challenge = replayed.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    let fresh = client_key.dpop_proof("GET", &url, &token, &json!({}));
    assert_eq!(
        send(fresh.clone()).await.status(),
        200,
        "the new config applies"
    );
    // Another replay store (a larger capacity, as the runbook of a full replay set says):
    // the old one is still asked, so the proof just used stays used.
    gw.rewrite_config(&dpop("\"write\"", "4s").replace(
        "proof_leeway",
        "replay_cache_capacity = 999999\nproof_leeway",
    ));
    gw.sighup();
    reloads(&gw, 2.0, 0.0).await;
    assert_eq!(send(fresh).await.status(), 401);
    assert!(gw.running());
}

/// With `reload_poll_interval`, a change written to the file (as Kubernetes does to a mounted
/// ConfigMap) is reloaded without a signal; a refused file is not retried until it changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_polled_config_file_reloads_when_it_changes() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let poll = "[server]\nreload_poll_interval = \"1s\"\n";
    let text = |scopes: &str| config(&idp, up.addr, scopes, "").replacen("[server]\n", poll, 1);
    let mut gw = GatewayProcess::start(&text("\"read\""), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let read_only = key.sign(&claims(&idp, "read"));
    assert_eq!(status(&gw, "/api/x", &read_only).await, 200);
    gw.rewrite_config(&text("\"write\""));
    reloads(&gw, 1.0, 0.0).await;
    assert_eq!(status(&gw, "/api/x", &read_only).await, 403);
    gw.rewrite_config(&text("\"write\"").replace("scopes = ", "scope = "));
    reloads(&gw, 1.0, 1.0).await;
    assert_eq!(
        status(&gw, "/api/x", &read_only).await,
        403,
        "the running config stays"
    );
    assert!(gw
        .log()
        .contains("configuration file or a secret file changed"));
    assert!(gw.running());
}

/// Upstream host names are resolved again every `resolve_interval`: when the name moves to
/// another address, requests follow it, the old address's health series goes, and a name that
/// stops resolving keeps its last address. The gateway runs in a mount namespace of its own
/// whose `/etc/hosts` the test rewrites (root, as CI is).
#[tokio::test(flavor = "multi_thread")]
async fn a_dns_change_is_picked_up() {
    let first = EchoUpstream::start("first").await;
    let port = first.addr.port();
    let second = EchoUpstream::start_on(&format!("127.0.0.2:{port}"), "second").await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let hosts = dir.join(format!("hosts-{}", std::process::id()));
    let name = "portcullis-upstream.test";
    std::fs::write(&hosts, format!("127.0.0.1 {name}\n")).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nresolve_interval = \"1s\"\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{name}:{port}\"]\nauth = \"none\"\n"
    );
    let hosts_arg = hosts.display().to_string();
    let wrapper = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        hosts_arg.as_str(),
    ];
    let mut gw = GatewayProcess::start_in(&wrapper, &text, &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let answered_by = || async {
        let r = client()
            .get(format!("http://{}/x", gw.proxy))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["x-upstream"].to_str().unwrap().to_owned()
    };
    assert_eq!(answered_by().await, "first");

    // Rewritten in place: the bind mount holds the file, not its name.
    std::fs::write(&hosts, format!("127.0.0.2 {name}\n")).unwrap();
    let moved = common::eventually(Duration::from_secs(10), || async {
        answered_by().await == "second"
    })
    .await;
    assert!(moved, "{}", gw.log());
    let hits = first.hits();
    for _ in 0..10 {
        assert_eq!(answered_by().await, "second");
    }
    assert_eq!(first.hits(), hits, "the old address left the rotation");
    assert!(second.hits() >= 11);
    let m = scrape(gw.metrics).await;
    assert!(m.has(
        "portcullis_upstream_healthy",
        &[("upstream", &format!("127.0.0.2:{port}"))]
    ));
    assert!(!m.has(
        "portcullis_upstream_healthy",
        &[("upstream", &format!("127.0.0.1:{port}"))]
    ));

    // The name stops resolving: its last address stays in use.
    std::fs::write(&hosts, "").unwrap();
    let warned = common::eventually(Duration::from_secs(10), || {
        let log = gw.log();
        async move { log.contains("no longer resolves") }
    })
    .await;
    assert!(warned, "{}", gw.log());
    assert_eq!(answered_by().await, "second");
    assert!(gw.running());
    let _ = std::fs::remove_file(&hosts);
}

/// A reload that adds an issuer whose keys cannot be had, and changes only the claim rules of
/// one whose provider is down, takes no working traffic away: the changed issuer keeps its
/// last good keys, `/readyz` stays 200, and only the new issuer's tokens get 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_never_takes_working_issuers_or_readiness_down() {
    let ((key_a, idp_a), (key_c, idp_c)) = (issuer("a").await, issuer("c").await);
    let up = EchoUpstream::start("app").await;
    let mut gw = GatewayProcess::start(&config(&idp_a, up.addr, "\"read\"", ""), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let token_a = key_a.sign(&claims(&idp_a, "read"));
    let token_c = key_c.sign(&claims(&idp_c, "read"));
    assert_eq!(status(&gw, "/api/x", &token_a).await, 200);
    idp_a.set_failing(true);
    idp_c.set_failing(true);
    let next = config(&idp_a, up.addr, "\"read\"", "").replace(
        "algorithms = [\"ES256\"]\n",
        &format!(
            "algorithms = [\"ES256\"]\nleeway = \"10s\"\n[[issuers]]\nissuer = \"{c}\"\njwks_uri = \"{c}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n",
            c = idp_c.issuer()
        ),
    );
    gw.rewrite_config(&next);
    gw.sighup();
    reloads(&gw, 1.0, 0.0).await;
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_millis(1)).await);
    assert_eq!(
        status(&gw, "/api/x", &token_a).await,
        200,
        "the last good keys"
    );
    assert_eq!(status(&gw, "/api/x", &token_c).await, 503);
    idp_c.set_failing(false);
    let fetched = common::eventually(Duration::from_secs(10), || async {
        status(&gw, "/api/x", &token_c).await == 200
    })
    .await;
    assert!(
        fetched,
        "the new issuer's keys load once its provider answers"
    );
    assert!(gw.running());
}

/// A route's rate limit tightened by a reload keeps counting where it was: no fresh burst.
#[tokio::test(flavor = "multi_thread")]
async fn a_tightened_rate_limit_keeps_its_counts() {
    let key = DevKey::generate(Algorithm::ES256, "k1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let limited = |n: u32| {
        config(&idp, up.addr, "\"read\"", "")
            + &format!(
                "[routes.rate_limit]\nkey = \"client_address\"\nrequests = {n}\nper = \"1m\"\n"
            )
    };
    let mut gw = GatewayProcess::start(&limited(3), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let token = key.sign(&claims(&idp, "read"));
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(status(&gw, "/api/x", &token).await);
    }
    assert_eq!(answers, [200, 200, 200, 429]);
    gw.rewrite_config(&limited(2));
    gw.sighup();
    reloads(&gw, 1.0, 0.0).await;
    assert_eq!(status(&gw, "/api/x", &token).await, 429, "no fresh burst");
    assert!(gw.running());
}

/// With polling, an edit made while a reload is still running (waiting for a new issuer's
/// slow key set) is applied by the next looks, and a file caught half-written is never
/// loaded: a change is reloaded only once two looks in a row find the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn polling_applies_edits_made_during_a_reload_and_never_a_half_written_file() {
    let ((key_a, idp_a), (_, idp_c)) = (issuer("a").await, issuer("c").await);
    let up = EchoUpstream::start("app").await;
    let poll = "[server]\nreload_poll_interval = \"1s\"\n";
    let text = |scopes: &str, extra_issuer: bool| {
        let mut t = config(&idp_a, up.addr, scopes, "").replacen("[server]\n", poll, 1);
        if extra_issuer {
            t.push_str(&format!(
                "[[issuers]]\nissuer = \"{c}\"\njwks_uri = \"{c}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n",
                c = idp_c.issuer()
            ));
        }
        t
    };
    let mut gw = GatewayProcess::start(&text("\"read\"", false), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await);
    let read_only = key_a.sign(&claims(&idp_a, "read"));

    // Edit 1 adds an issuer whose key set answers after 3 s; edit 2 comes while that reload waits.
    idp_c.set_delay(Duration::from_secs(3));
    gw.rewrite_config(&text("\"read\"", true));
    let reloading = common::eventually(Duration::from_secs(10), || async {
        idp_c.hits("/jwks") > 0
    })
    .await;
    assert!(reloading, "{}", gw.log());
    gw.rewrite_config(&text("\"write\"", false));
    reloads(&gw, 2.0, 0.0).await;
    assert_eq!(
        status(&gw, "/api/x", &read_only).await,
        403,
        "edit 2 applied"
    );

    // A slow writer: the file is half there for 900 ms, less than one look apart. The half
    // (which would open /api to everyone) is valid TOML on its own.
    let whole = text("\"read\"", false);
    let half = format!(
        "{}auth = \"none\"\n",
        whole.split("scopes = ").next().unwrap()
    );
    // The looks come about 1 s apart from the one that applied edit 2 (moments ago): writing
    // half a second later puts the half-written moment across the next look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.rewrite_config(&half);
    tokio::time::sleep(Duration::from_millis(900)).await;
    gw.rewrite_config(&whole);
    reloads(&gw, 3.0, 0.0).await;
    // Had the half been loaded, the whole would be a fourth reload within the next looks.
    let fourth = common::eventually(Duration::from_secs(3), || async {
        scrape(gw.metrics)
            .await
            .get(RELOADS, &[("result", "success")])
            > 3.0
    })
    .await;
    assert!(!fourth, "{}", gw.log());
    assert_eq!(status(&gw, "/api/x", &read_only).await, 200);
    assert_eq!(
        status(&gw, "/api/x", "not-a-token").await,
        401,
        "the half never went live"
    );
    assert!(gw.running());
}
