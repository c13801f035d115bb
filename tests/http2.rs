//! HTTP/2 from clients: TLS ALPN `h2` and h2c with prior knowledge, each stream held to every
//! HTTP/1.1 rule (the gate, size limits, canonical targets, identity and forwarded headers),
//! `:authority` and `Cookie` as an HTTP/1.1 upstream needs them, and the connection deadlines.
//! The attacks (rapid reset, CONTINUATION flood, HPACK bomb) are in tests/http_attacks.rs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::{GatewayProcess, TempFile};
use common::h2::{self as raw, Raw};
use common::idp::{claims, setup_with};
use common::tls::Ca;
use common::{became_ready, counted, scrape, start_gateway_with_server, EchoUpstream};
use http::{Request, StatusCode, Version};

/// A client that speaks HTTP/2 with prior knowledge (h2c).
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_native_certs(false)
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Send `req` (no body) and read the whole answer.
async fn h2_send(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    req: Request<()>,
) -> (StatusCode, String) {
    let mut client = client.clone().ready().await.unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let text = raw::read_body(&mut body).await;
    (status, String::from_utf8_lossy(&text).into_owned())
}

const CLEARTEXT: &str = "[server.http2]\ncleartext = true\n";

/// A ready gateway with h2c and one open route to a new echo upstream; `server`: more
/// `[server]` keys.
async fn open_h2c(server: &str) -> (EchoUpstream, portcullis::app::RunningApp) {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway_with_server(
        server,
        &format!(
            "{CLEARTEXT}[[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
    );
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(10)).await);
    (up, gw)
}

/// `portcullis_client_timeouts_total{phase}` reaches 1.
async fn timed_out(gw: &portcullis::app::RunningApp, phase: &str) {
    counted(
        gw.metrics_addr,
        "portcullis_client_timeouts_total",
        &[("phase", phase)],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stream_passes_the_gate_as_an_http1_request_would() {
    let s = setup_with(CLEARTEXT, "").await;
    let addr = s.gw.proxy_addr;
    let client = h2c();
    let url = |path: &str| format!("http://{addr}{path}");

    // No token: the RFC 6750 challenge, over HTTP/2.
    let resp = client.get(url("/orders/1")).send().await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm=\"api\""), "{challenge}");
    // A token without the scope: 403 insufficient_scope.
    let weak = s.rsa.sign(&claims(&s.idp, "profile"));
    let resp = client
        .get(url("/orders/1"))
        .bearer_auth(&weak)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(s.up.hits(), 0);

    // A good token: forwarded over HTTP/1.1 with the identity headers, the client's own
    // identity and forwarding headers replaced, `:authority` as Host.
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let resp = client
        .get(url("/orders/1?x=%2F"))
        .bearer_auth(&token)
        .header("x-auth-subject", "admin")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = s.up.seen();
    let h = &seen[0].headers;
    assert_eq!(seen[0].uri, "/orders/1?x=%2F");
    assert_eq!(h["host"], addr.to_string());
    assert_eq!(h["x-auth-subject"], "user-7");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        !h.contains_key("authorization"),
        "the token is not forwarded"
    );

    // Canonical targets hold per stream: a dot segment or an encoded slash cannot reach
    // `/orders` under the open-looking prefix of another route.
    let mut h2 = raw::client(addr).await;
    for path in [
        "/either/../orders/1",
        "/either/%2e%2e/orders/1",
        "/orders%2f1",
    ] {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(())
            .unwrap();
        let (status, _) = h2_send(&mut h2, req).await;
        assert!(
            status == 400 || status == 401 || status == 404,
            "{path}: {status}"
        );
    }
    assert_eq!(s.up.hits(), 1, "no refused stream reached the upstream");

    // Size limits per stream: a field section over `max_header_bytes` (32 KiB) is 431 from
    // the gate's own check, and one over the header list size from the protocol layer.
    for size in [36 << 10, 60 << 10] {
        let req = Request::get(format!("http://{addr}/orders/1"))
            .header("x-big", "a".repeat(size))
            .body(())
            .unwrap();
        let (status, _) = h2_send(&mut h2, req).await;
        assert_eq!(status, 431, "{size}");
    }
    assert_eq!(s.up.hits(), 1);

    // Many streams at once on one connection, each decided on its own.
    let bad = s.rsa.sign(&claims(&s.idp, "other"));
    let mut answers = Vec::new();
    for i in 0..64 {
        let (client, token, bad) = (client.clone(), token.clone(), bad.clone());
        let url = url(&format!("/orders/{i}"));
        answers.push(tokio::spawn(async move {
            let token = if i % 2 == 0 { token } else { bad };
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            (i, resp.status().as_u16())
        }));
    }
    for answer in answers {
        let (i, status) = answer.await.unwrap();
        assert_eq!(status, if i % 2 == 0 { 200 } else { 403 }, "stream {i}");
    }
    assert_eq!(s.up.hits(), 1 + 32);
    let m = scrape(s.gw.metrics_addr).await;
    assert!(m.get("portcullis_connections_total", &[("protocol", "h2")]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn authority_host_and_cookies_reach_an_http1_upstream_as_it_expects() {
    let (up, gw) = open_h2c("").await;
    let addr = gw.proxy_addr;
    let mut h2 = raw::client(addr).await;

    // Several Cookie fields (RFC 9113 §8.2.3) become one.
    let req = Request::get("http://api.example/c")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    assert_eq!(h2_send(&mut h2, req).await.0, 200);
    let seen = up.seen();
    let cookies: Vec<_> = seen[0].headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    assert_eq!(seen[0].headers["host"], "api.example");
    assert_eq!(seen[0].headers["x-forwarded-host"], "api.example");
    assert_eq!(seen[0].uri, "/c", "origin-form, as HTTP/1.1 sends it");

    // A Host that names another host than `:authority` is refused; the same host is served.
    let req = Request::get("http://api.example/h")
        .header("host", "admin.internal")
        .body(())
        .unwrap();
    let (status, body) = h2_send(&mut h2, req).await;
    assert_eq!(status, 400, "{body}");
    let req = Request::get("http://API.example/h")
        .header("host", "api.example")
        .body(())
        .unwrap();
    assert_eq!(h2_send(&mut h2, req).await.0, 200);
    assert_eq!(up.hits(), 2);

    // Raw frames for what the h2 client would refuse to send.
    let mut conn = Raw::connect(addr).await;
    // No :authority and no Host: refused as an HTTP/1.1 request without Host is.
    let block = raw::request("GET", "/none", "", &[]);
    conn.request(1, &block).await;
    let frames = conn
        .until(Duration::from_secs(10), |f| {
            f.stream == 1 && f.kind == raw::HEADERS
        })
        .await;
    let head = frames.iter().find(|f| f.kind == raw::HEADERS).unwrap();
    assert_eq!(raw::status(&head.payload), Some(400));
    // Userinfo in :authority.
    let block = raw::request("GET", "/u", "user@api.example", &[]);
    conn.request(3, &block).await;
    let frames = conn.until(Duration::from_secs(10), |f| f.stream == 3).await;
    let last = frames.last().unwrap();
    assert!(
        last.kind == raw::RST_STREAM || raw::status(&last.payload) == Some(400),
        "{frames:?}"
    );
    // A connection-specific field is malformed in HTTP/2 (§8.2.2): the stream is reset by
    // the protocol layer, and nothing is forwarded.
    let block = raw::request("GET", "/te", "a", &[("transfer-encoding", "chunked")]);
    conn.request(5, &block).await;
    let frames = conn.until(Duration::from_secs(10), |f| f.stream == 5).await;
    assert_eq!(frames.last().unwrap().kind, raw::RST_STREAM, "{frames:?}");
    assert_eq!(up.hits(), 2, "none of these reached the upstream");

    // The same port still serves HTTP/1.1.
    let answer = common::raw_request(
        addr,
        b"GET /h1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_connections_close_when_idle_or_when_no_stream_comes() {
    let (up, gw) = open_h2c("client_header_timeout = \"1s\"\nkeepalive_timeout = \"2s\"").await;

    // The preface and SETTINGS, then nothing: GOAWAY after client_header_timeout, and the
    // connection ends.
    let started = std::time::Instant::now();
    let mut silent = Raw::connect(gw.proxy_addr).await;
    let (frames, closed) = silent.read_to_close(Duration::from_secs(10)).await;
    assert!(closed, "{frames:?}");
    assert!(frames.iter().any(|f| f.kind == raw::GOAWAY), "{frames:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // A stream answered, then idle: closed after keepalive_timeout, not before the stream
    // ended and not while one is open.
    let mut conn = Raw::connect(gw.proxy_addr).await;
    let block = raw::request("GET", "/gate", "a", &[]);
    conn.request(1, &block).await;
    assert!(
        common::eventually(Duration::from_secs(10), || async { up.hits() == 1 }).await,
        "the stream reached the upstream"
    );
    // Longer than both deadlines with the stream open: nothing closes it.
    let (early, closed) = conn.read_to_close(Duration::from_millis(2500)).await;
    assert!(!closed, "{early:?}");
    assert!(!early.iter().any(|f| f.kind == raw::GOAWAY), "{early:?}");
    up.release();
    let idle_from = std::time::Instant::now();
    let (frames, closed) = conn.read_to_close(Duration::from_secs(10)).await;
    assert!(closed);
    let head = frames
        .iter()
        .find(|f| f.kind == raw::HEADERS && f.stream == 1)
        .expect("the stream was answered");
    assert_eq!(raw::status(&head.payload), Some(200));
    assert!(frames.iter().any(|f| f.kind == raw::GOAWAY));
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(1800), "{idle:?}");
    assert!(idle < Duration::from_secs(4), "{idle:?}");
    timed_out(&gw, "header").await;
}

/// A client that never opens its flow-control window (SETTINGS_INITIAL_WINDOW_SIZE = 0, no
/// WINDOW_UPDATE) stalls no socket write, yet its response can never be sent: the connection
/// is closed after `send_timeout`, as a client that stops reading is on HTTP/1.1, and counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_opens_its_window_is_cut_off_after_send_timeout() {
    let (_up, gw) = open_h2c("send_timeout = \"1s\"").await;
    let mut conn = Raw::connect_with(gw.proxy_addr, &[(raw::INITIAL_WINDOW_SIZE, 0)]).await;
    let block = raw::request("GET", "/body", "a", &[]);
    conn.request(1, &block).await;
    let started = std::time::Instant::now();
    let (frames, closed) = conn.read_to_close(Duration::from_secs(10)).await;
    assert!(closed, "the connection is closed: {frames:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.kind == raw::HEADERS && f.stream == 1),
        "the head was sent (it is not flow-controlled): {frames:?}"
    );
    assert!(!frames.iter().any(|f| f.kind == raw::DATA), "{frames:?}");
    timed_out(&gw, "send").await;
}

/// A CORS preflight passes a `cors_preflight = "forward"` route without a token only when it
/// has no body. On HTTP/2 a body needs no `Content-Length` (DATA frames after HEADERS): such a
/// request is chunked on the upstream hop, and the gate sees it so; it needs a token.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_preflight_with_a_body_needs_a_token() {
    let s = setup_with(CLEARTEXT, "").await;
    let gw = start_gateway_with_server(
        "",
        &format!(
            "{CLEARTEXT}[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\n\
             algorithms = [\"RS256\"]\n[[routes]]\nname = \"cors\"\npath_prefix = \"/\"\n\
             upstreams = [\"{}\"]\ncors_preflight = \"forward\"\n",
            s.idp.issuer(),
            s.up.addr
        ),
    );
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(10)).await);
    let preflight = raw::request(
        "OPTIONS",
        "/p",
        "a",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "DELETE"),
        ],
    );
    let mut conn = Raw::connect(gw.proxy_addr).await;
    // Without a body: a preflight, forwarded unchecked.
    conn.request(1, &preflight).await;
    // With DATA frames and no Content-Length: not a preflight.
    conn.send(&raw::frame(raw::HEADERS, raw::END_HEADERS, 3, &preflight))
        .await
        .unwrap();
    conn.send(&raw::frame(
        raw::DATA,
        raw::END_STREAM,
        3,
        b"DELETE everything",
    ))
    .await
    .unwrap();
    let mut statuses = std::collections::HashMap::new();
    let frames = conn
        .until(Duration::from_secs(10), |f| {
            if f.kind == raw::HEADERS {
                statuses.insert(f.stream, raw::status(&f.payload));
            }
            statuses.len() == 2
        })
        .await;
    assert_eq!(statuses.get(&1), Some(&Some(200)), "{frames:?}");
    assert_eq!(statuses.get(&3), Some(&Some(401)), "{frames:?}");
    let seen = s.up.seen();
    assert_eq!(
        seen.len(),
        1,
        "only the bodiless preflight reached the upstream"
    );
    assert_eq!(seen[0].method, "OPTIONS");
}

fn tls_config(pair: (&TempFile, &TempFile), up: SocketAddr, http2: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\nplain_listen = \"127.0.0.1:0\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n{http2}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{up}\"]\nauth = \"none\"\n",
        pair.0 .0.display(),
        pair.1 .0.display()
    )
}

#[tokio::test]
async fn tls_chooses_http2_by_alpn_unless_it_is_turned_off() {
    let ca = Ca::new("Portcullis test CA");
    let leaf = ca.server(&["localhost"]);
    let (cert, key) = (
        TempFile::with(&leaf.cert_pem),
        TempFile::with(&leaf.key_pem),
    );
    let up = EchoUpstream::start("app").await;
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_native_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    for (http2, want) in [
        ("", Version::HTTP_2),
        ("[server.http2]\nenabled = false\n", Version::HTTP_11),
    ] {
        let gw = GatewayProcess::start(&tls_config((&cert, &key), up.addr, http2), &[]);
        assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(10)).await);
        let url = format!("https://localhost:{}/alpn", gw.proxy.port());
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), want, "{http2:?}");
        let seen = up.seen();
        let h = &seen.last().unwrap().headers;
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["host"], format!("localhost:{}", gw.proxy.port()));
        let protocol = if want == Version::HTTP_2 {
            "h2"
        } else {
            "http/1.1"
        };
        counted(
            gw.metrics,
            "portcullis_connections_total",
            &[("protocol", protocol)],
            1.0,
        )
        .await;

        // Prior knowledge on the plain listener beside needs `cleartext`: refused here.
        let plain = gw.plain.unwrap();
        let refused = h2c().get(format!("http://{plain}/x")).send().await;
        assert!(refused.is_err(), "{refused:?}");
    }
}

#[tokio::test]
async fn a_reload_that_changes_http2_settings_says_it_needs_a_restart() {
    let up = EchoUpstream::start("app").await;
    let text = |streams: u32| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[server.http2]\ncleartext = true\n\
             max_concurrent_streams = {streams}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        )
    };
    let gw = GatewayProcess::start(&text(100), &[]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(10)).await);
    gw.rewrite_config(&text(50));
    gw.sighup();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            gw.log().contains("server.http2")
        })
        .await,
        "{}",
        gw.log()
    );
    let resp = h2c()
        .get(format!("http://{}/x", gw.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
}

/// Each HTTP/2 stream holds an upstream connection: past `max_streams_per_worker` open
/// streams on a worker (over all its connections), a new stream is answered 503 with
/// `Retry-After` before any other work, so that a few hundred connections at
/// `max_concurrent_streams` cannot use up the process's file descriptors (red team).
#[tokio::test(flavor = "multi_thread")]
async fn streams_beyond_the_workers_bound_are_answered_503() {
    let up = EchoUpstream::start("app").await;
    let gw = common::start_gateway_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[server.http2]\ncleartext = true\n\
         max_streams_per_worker = 3\n[metrics]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"open\"\n\
         path_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(10)).await);
    let gate = raw::request("GET", "/gate", "a", &[]);
    let mut first = Raw::connect(gw.proxy_addr).await;
    first.request(1, &gate).await;
    first.request(3, &gate).await;
    let mut second = Raw::connect(gw.proxy_addr).await;
    second.request(1, &gate).await;
    assert!(
        common::eventually(Duration::from_secs(10), || async { up.hits() == 3 }).await,
        "three streams reached the upstream"
    );
    // A fourth, on either connection: 503 at once.
    second.request(3, &gate).await;
    let frames = second
        .until(Duration::from_secs(10), |f| {
            f.stream == 3 && f.kind == raw::HEADERS
        })
        .await;
    let head = frames
        .iter()
        .find(|f| f.stream == 3 && f.kind == raw::HEADERS);
    assert_eq!(
        head.and_then(|f| raw::status(&f.payload)),
        Some(503),
        "{frames:?}"
    );
    assert_eq!(up.hits(), 3);
    // Once the three are answered, streams are taken again.
    up.release();
    let frames = first
        .until(Duration::from_secs(10), |f| {
            f.stream == 3 && f.flags & raw::END_STREAM != 0
        })
        .await;
    assert!(frames.iter().any(|f| f.stream == 3), "{frames:?}");
    let resp = h2c()
        .get(format!("http://{}/again", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Even at `RUST_LOG=debug`, no log line carries a request's path or query: the h2 crate's
/// debug lines, which quote a malformed `:path`, are capped (red team).
#[tokio::test]
async fn a_malformed_path_is_not_logged_even_at_debug() {
    let up = EchoUpstream::start("app").await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n{CLEARTEXT}[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        up.addr
    );
    let gw = GatewayProcess::start(&text, &[("RUST_LOG", "debug")]);
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(10)).await);
    let mut conn = Raw::connect(gw.proxy).await;
    // No leading slash: malformed (RFC 9113 §8.3.1), refused by h2 itself.
    conn.request(
        1,
        &raw::request("GET", "admin?access_token=SECRETPAYLOAD", "a", &[]),
    )
    .await;
    let frames = conn
        .until(Duration::from_secs(10), |f| {
            f.stream == 1 || f.kind == raw::GOAWAY
        })
        .await;
    assert!(!frames.is_empty());
    // And a request that is served, so that the log has caught up past the malformed one.
    let resp = h2c()
        .get(format!("http://{}/fine?q=SECRETQUERY", gw.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            gw.log().contains("portcullis::access")
        })
        .await
    );
    let log = gw.log();
    for secret in ["SECRETPAYLOAD", "SECRETQUERY", "access_token"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
