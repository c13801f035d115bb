//! The gateway as a reverse proxy: real upstreams on 127.0.0.1:0, the real gateway in front.

mod common;

use std::time::Duration;

use common::{
    became_ready, client, dead_addr, eventually, raw_request, scrape, scrape_until, start_gateway,
    EchoUpstream,
};

fn open_route(name: &str, prefix: &str, upstreams: &[std::net::SocketAddr]) -> String {
    let list = upstreams
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [{list}]\nauth = \"none\"\n")
}

/// An issuer whose keys can never load: the protected routes of these tests refuse everything.
fn issuer_nowhere() -> String {
    format!(
        "[[issuers]]\nissuer = \"https://id.invalid\"\njwks_uri = \"http://{}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n",
        dead_addr()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_post_stream_a_mebibyte_both_ways() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&open_route("all", "/", &[up.addr]));
    let base = format!("http://{}", gw.proxy_addr);

    let resp = client()
        .get(format!("{base}/items/7?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "a GET /items/7?x=1");

    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let stream = futures_util::stream::iter(
        body.chunks(16 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = client()
        .post(format!("{base}/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.bytes().await.unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the body came back changed");
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_pick_the_longest_prefix_on_segment_boundaries_then_the_method() {
    let (root, orders, writes) = (
        EchoUpstream::start("root").await,
        EchoUpstream::start("orders").await,
        EchoUpstream::start("writes").await,
    );
    let config = format!(
        "{}{}methods = [\"GET\", \"HEAD\"]\n{}methods = [\"POST\"]\n",
        open_route("root", "/", &[root.addr]).replace(
            "auth = \"none\"\n",
            "auth = \"none\"\nmethods = [\"GET\"]\n"
        ),
        open_route("orders-read", "/orders", &[orders.addr]),
        open_route("orders-write", "/orders", &[writes.addr]),
    );
    let gw = start_gateway(&config);
    let base = format!("http://{}", gw.proxy_addr);
    let c = client();
    let upstream_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    for (method, path, want) in [
        ("GET", "/orders", "orders"),
        ("GET", "/orders/7", "orders"),
        ("POST", "/orders/7", "writes"),
        ("GET", "/ordersX", "root"),
        ("GET", "/", "root"),
    ] {
        let resp = c
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        assert_eq!(upstream_of(&resp).as_deref(), Some(want), "{method} {path}");
    }

    let resp = c.delete(format!("{base}/orders/7")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD, POST");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    // The query never takes part in matching.
    let resp = c
        .get(format!("{base}/ordersX?/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_of(&resp).as_deref(), Some("root"));

    // Nor does a header that claims another URI.
    let resp = c
        .post(format!("{base}/"))
        .header("x-original-url", "/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(writes.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_path_is_a_json_404() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&open_route("orders", "/orders", &[up.addr]));
    let resp = client()
        .get(format!("http://{}/other", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&open_route("all", "/", &[up.addr]));
    let request = b"GET /h HTTP/1.1\r\nHost: api.example\r\nConnection: close, X-Hop-Secret\r\n\
X-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
X-Forwarded-For: 6.6.6.6\r\nX-Auth-Subject: admin\r\nX_Auth_Scopes: everything\r\nX-Request-Id: req-42\r\n\r\n";
    let answer = raw_request(gw.proxy_addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let seen = up.seen();
    let h = &seen[0].headers;
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-auth-subject",
        "x_auth_scopes",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example");
    assert_eq!(h["x-request-id"], "req-42", "a client's request id is kept");
    assert_eq!(h["host"], "api.example");

    client()
        .get(format!("http://{}/again", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    let id = up.seen()[1].headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a request id is added when absent: {id}");
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_refused() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&open_route("all", "/", &[up.addr]));
    let smuggle =
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let answer = raw_request(gw.proxy_addr, smuggle).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Transfer-Encoding"), "{answer}");

    let conflicting = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde";
    let answer = raw_request(gw.proxy_addr, conflicting).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.hits(), 0, "the upstream saw a smuggling attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_is_a_json_502_and_counted() {
    let dead = dead_addr();
    let gw = start_gateway(&open_route("gone", "/", &[dead]));
    let resp = client()
        .get(format!("http://{}/x", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    // The connection is closed after a failure, and the answer says so: a client must not send
    // its next request into it (found by the soak: resets under upstream restarts).
    assert_eq!(resp.headers()["connection"], "close");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    let m = scrape_until(gw.metrics_addr, |m| {
        m.get("portcullis_requests_total", &[("route", "gone")]) >= 1.0
    })
    .await;
    // Whether the first health check or the request found the upstream dead first is a race;
    // either way exactly one upstream error is counted, with one of these two kinds.
    let connect = m.get(
        "portcullis_upstream_errors_total",
        &[("route", "gone"), ("kind", "connect")],
    );
    let unhealthy = m.get(
        "portcullis_upstream_errors_total",
        &[("route", "gone"), ("kind", "no_healthy_upstream")],
    );
    assert_eq!(connect + unhealthy, 1.0);
    assert_eq!(
        m.get(
            "portcullis_requests_total",
            &[("route", "gone"), ("status", "5xx")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_is_a_json_504() {
    let up = EchoUpstream::start("slow").await;
    let gw = start_gateway(&format!(
        "[upstream]\nread_timeout = \"300ms\"\n{}",
        open_route("slow", "/", &[up.addr])
    ));
    let started = std::time::Instant::now();
    let resp = client()
        .get(format!("http://{}/hang", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["connection"], "close");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "504 took {:?}",
        started.elapsed()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout");
    let m = scrape_until(gw.metrics_addr, |m| {
        m.get("portcullis_requests_total", &[("route", "slow")]) >= 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_upstream_errors_total",
            &[("route", "slow"), ("kind", "timeout")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_alternates_between_upstreams() {
    let (a, b) = (
        EchoUpstream::start("a").await,
        EchoUpstream::start("b").await,
    );
    let gw = start_gateway(&open_route("pair", "/", &[a.addr, b.addr]));
    let c = client();
    for _ in 0..10 {
        let resp = c
            .get(format!("http://{}/rr", gw.proxy_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_leaves_the_rotation() {
    let live = EchoUpstream::start("live").await;
    let dead = dead_addr();
    let gw = start_gateway(&format!(
        "[upstream]\nhealth_check_interval = \"100ms\"\nconnect_timeout = \"500ms\"\n{}",
        open_route("mixed", "/", &[live.addr, dead])
    ));
    let dead_label = dead.to_string();
    let marked_down = eventually(Duration::from_secs(15), || async {
        scrape(gw.metrics_addr)
            .await
            .get("portcullis_upstream_healthy", &[("upstream", &dead_label)])
            == 0.0
    })
    .await;
    assert!(marked_down, "the health check never marked {dead} down");
    let errors_before = scrape(gw.metrics_addr)
        .await
        .get("portcullis_upstream_errors_total", &[]);
    let c = client();
    for _ in 0..10 {
        let resp = c
            .get(format!("http://{}/x", gw.proxy_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(live.hits(), 10);
    let m = scrape_until(gw.metrics_addr, |m| {
        m.get("portcullis_requests_total", &[("route", "mixed")]) >= 10.0
    })
    .await;
    assert_eq!(
        m.get("portcullis_upstream_errors_total", &[]),
        errors_before,
        "the dead upstream was still tried"
    );
    assert_eq!(
        m.get(
            "portcullis_upstream_healthy",
            &[("upstream", &live.addr.to_string())]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_failure_retries_on_the_next_upstream() {
    let live = EchoUpstream::start("live").await;
    // The health check runs rarely, so both upstreams stay in rotation during the test.
    let gw = start_gateway(&format!(
        "[upstream]\nhealth_check_interval = \"1h\"\n{}",
        open_route("mixed", "/", &[live.addr, dead_addr()])
    ));
    for _ in 0..4 {
        let resp = client()
            .post(format!("http://{}/x", gw.proxy_addr))
            .body("b")
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "a refused connection sent nothing, so even POST may retry"
        );
    }
    assert_eq!(live.hits(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_requiring_auth_never_reaches_the_upstream_without_validation() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&format!(
        "[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstreams = [\"{}\"]\nscopes = [\"orders:read\"]\n{}",
        up.addr,
        issuer_nowhere()
    ));
    let url = format!("http://{}/orders/1", gw.proxy_addr);
    let c = client();

    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"api\"");

    let resp = c.get(&url).bearer_auth("abc.def.ghi").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"api\", error=\"invalid_token\""),
        "{challenge}"
    );

    let resp = c
        .get(&url)
        .header("authorization", "Bearer a b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_count_and_probes_answer() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&open_route("all", "/", &[up.addr]));
    let admin = format!("http://{}", gw.metrics_addr);
    let c = client();
    assert_eq!(
        c.get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(10)).await;
    assert!(ready, "/readyz never became ready");
    assert_eq!(
        c.get(format!("{admin}/nothing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let before = scrape(gw.metrics_addr).await;
    assert_eq!(
        before.get("portcullis_requests_total", &[("route", "all")]),
        0.0
    );
    for _ in 0..3 {
        c.get(format!("http://{}/m", gw.proxy_addr))
            .send()
            .await
            .unwrap();
    }
    let after = scrape_until(gw.metrics_addr, |m| {
        m.get("portcullis_requests_total", &[("route", "all")]) >= 3.0
    })
    .await;
    assert_eq!(
        after.get(
            "portcullis_requests_total",
            &[("route", "all"), ("status", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        after.get(
            "portcullis_request_duration_seconds_count",
            &[("route", "all")]
        ),
        3.0
    );
    assert_eq!(
        after.get(
            "portcullis_upstream_healthy",
            &[("upstream", &up.addr.to_string())]
        ),
        1.0
    );
}

/// Open a WebSocket through the gateway: the upgrade request, then the response head.
async fn websocket_handshake(gw: &portcullis::app::RunningApp) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_handshakes_pass_through() {
    let up = EchoUpstream::start("ws").await;
    let gw = start_gateway(&open_route("ws", "/", &[up.addr]));
    let (_stream, head) = websocket_handshake(&gw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let seen = up.seen();
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    assert!(seen[0].headers["connection"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    assert!(seen[0].headers.contains_key("sec-websocket-key"));
}

/// 1,000 tunnels, none closed early (pingora 0.9.1 closed 1-2% of them right after the 101:
/// cloudflare/pingora#946).
#[tokio::test(flavor = "multi_thread")]
async fn websocket_tunnels_carry_data_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoUpstream::start("ws").await;
    let gw = start_gateway(&open_route("ws", "/", &[up.addr]));
    for attempt in 0..1000 {
        let (mut s, head) = websocket_handshake(&gw).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping over the tunnel").await.unwrap();
        let mut echoed = [0u8; 20];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("attempt {attempt}: the tunnel closed: {e}"));
        assert_eq!(&echoed, b"ping over the tunnel");
    }
}

/// A tunnel whose client sends nothing for `client_body_timeout` is closed; one that talks is
/// not.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tunnel_is_closed_after_client_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoUpstream::start("ws").await;
    let gw = common::start_gateway_with_server(
        "client_body_timeout = \"1s\"\n",
        &open_route("ws", "/", &[up.addr]),
    );
    let (mut s, head) = websocket_handshake(&gw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Talking keeps it open past the timeout.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        s.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
    }
    // Silence closes it.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle tunnel stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_body_is_never_parsed_as_a_second_request() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&format!(
        "{}[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstreams = [\"{}\"]\n{}",
        open_route("public", "/public", &[up.addr]),
        up.addr,
        issuer_nowhere()
    ));
    let inner = "GET /public/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer abc\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    // raw_request reads until the gateway closes the connection.
    let answer = raw_request(gw.proxy_addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "a second response came back: {answer}"
    );
    assert_eq!(
        up.hits(),
        0,
        "the body was parsed as a request and forwarded"
    );
}

/// A path an upstream would normalise into another route's path is refused, never matched.
#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_cannot_reach_a_protected_route_through_an_open_one() {
    let up = EchoUpstream::start("a").await;
    let gw = start_gateway(&format!(
        "{}[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstreams = [\"{}\"]\n{}",
        open_route("public", "/public", &[up.addr]),
        up.addr,
        issuer_nowhere()
    ));
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/.%2E/admin",
        "//admin",
        "/public%2f..%2fadmin",
        "/public/./admin",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw_request(gw.proxy_addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert_eq!(up.hits(), 0, "a path trick reached the upstream");
    let ok = client()
        .get(format!("http://{}/public/page", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// W3C Trace Context through the gateway: a valid `traceparent` keeps its trace id and flags
/// with the gateway's span as the new parent, and its `tracestate` goes along; an absent or
/// invalid one starts a new trace, and a `tracestate` without a valid parent is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn traceparent_is_continued_when_valid_and_started_when_not() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&open_route("open", "/", &[up.addr]));
    let url = format!("http://{}/x", gw.proxy_addr);
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let ok = client()
        .get(&url)
        .header("traceparent", sent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let invalid = client()
        .get(&url)
        .header("traceparent", sent.to_uppercase())
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 200);
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    let seen = up.seen();
    let parent = |i: usize| {
        let all: Vec<&str> = seen[i]
            .headers
            .get_all("traceparent")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all.len(), 1, "{all:?}");
        all[0].to_owned()
    };
    let kept = parent(0);
    assert!(
        kept.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{kept}"
    );
    assert!(kept.ends_with("-01"), "{kept}");
    assert_ne!(
        &kept[36..52],
        "00f067aa0ba902b7",
        "the gateway's own span is the parent"
    );
    assert_eq!(seen[0].headers["tracestate"], "congo=t61rcWkgMzE");
    for i in [1, 2] {
        let started = parent(i);
        assert_eq!(started.len(), 55, "{started}");
        assert!(
            // Not sampled (no [tracing]); the random-trace-id flag of Level 2 set.
            started.starts_with("00-") && started.ends_with("-02"),
            "{started}"
        );
        assert!(
            !started.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{started}"
        );
        assert!(seen[i].headers.get("tracestate").is_none());
    }
    assert_ne!(
        parent(1)[3..35],
        parent(2)[3..35],
        "each started trace is new"
    );
}
