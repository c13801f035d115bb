//! The attack catalogue: HTTP/1.1 request smuggling, framing, trailers, oversize requests; the
//! HTTP/2 attacks (rapid reset, CONTINUATION floods, an HPACK bomb) against a live HTTP/2 listener.

mod common;

use std::time::Duration;

use common::idp::{claims, MockIdp};
use common::{became_ready, counted, orders_routes, raw_request, start_gateway, EchoUpstream};
use portcullis::app::RunningApp;
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;

/// Sent after every attack on the same connection: it closes the exchange, so reading to EOF
/// needs no timeout, and anything the gateway took for a request in between reaches the upstream.
const SENTINEL: &str = "GET /public/sentinel HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

struct World {
    gw: RunningApp,
    up: EchoUpstream,
    key: DevKey,
    idp: MockIdp,
}

async fn world() -> World {
    let key = DevKey::generate(Algorithm::RS256, "rsa-1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&format!(
        "[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
         {}[[routes]]\nname = \"public\"\npath_prefix = \"/public\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        idp.issuer(),
        orders_routes(up.addr),
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    World { gw, up, key, idp }
}

/// The status of every response on the connection, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

const SMUGGLED: &str = "GET /public/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Send `request` then the sentinel on one connection; the statuses answered, and what reached
/// the upstream meanwhile (`METHOD URI` each).
async fn exchange(w: &World, request: &str) -> (Vec<u16>, Vec<String>) {
    let before = w.up.hits();
    let answer = raw_request(w.gw.proxy_addr, format!("{request}{SENTINEL}").as_bytes()).await;
    let seen = w.up.seen()[before..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    (statuses(&answer), seen)
}

fn post(headers: &str, body: &str) -> String {
    format!("POST /public/x HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}")
}

/// Every ambiguous framing, malformed length, unknown coding or malformed header is answered
/// 400 and the connection closed: nothing reaches the upstream, least of all the request hidden
/// in the body (RFC 9112 §6.1, §6.3, §5.1, §3.2).
#[tokio::test(flavor = "multi_thread")]
async fn smuggling_and_malformed_framing_are_refused() {
    let w = world().await;
    let chunked_then_smuggled = format!("0\r\n\r\n{SMUGGLED}");
    let cases = [
        (
            "CL.TE",
            post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", &chunked_then_smuggled),
        ),
        (
            "TE chunked, identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                &chunked_then_smuggled,
            ),
        ),
        (
            "TE identity, chunked",
            post(
                "Transfer-Encoding: identity, chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
        (
            "TE gzip, chunked",
            post(
                "Transfer-Encoding: gzip, chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
        (
            "TE twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
        (
            "space before the colon",
            post(
                "Transfer-Encoding : chunked\r\nContent-Length: 3\r\n",
                &format!("abc{SMUGGLED}"),
            ),
        ),
        (
            "obs-fold TE",
            post(
                "X-A: b\r\n Transfer-Encoding: chunked\r\n",
                &chunked_then_smuggled,
            ),
        ),
        (
            "HTTP/1.0 with TE",
            chunked_then_smuggled.replace(
                "0\r\n",
                "POST /public/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            ),
        ),
        (
            "conflicting CL",
            post(
                "Content-Length: 3\r\nContent-Length: 44\r\n",
                &format!("abc{SMUGGLED}"),
            ),
        ),
        (
            "CL list",
            post("Content-Length: 3, 44\r\n", &format!("abc{SMUGGLED}")),
        ),
        // Two equal lines, or an equal list, would be forwarded as sent, for the upstream to
        // read its own way (RFC 9110 §8.6 allows refusing them).
        (
            "the same CL twice",
            post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
        ),
        (
            "CL list of equal values",
            post("Content-Length: 3, 3\r\n", "abc"),
        ),
        ("CL +3", post("Content-Length: +3\r\n", "abc")),
        ("CL -1", post("Content-Length: -1\r\n", "")),
        ("CL 0x3", post("Content-Length: 0x3\r\n", "abc")),
        ("CL 3 3", post("Content-Length: 3 3\r\n", "abc")),
        (
            "CL beyond u64",
            post("Content-Length: 99999999999999999999999\r\n", "abc"),
        ),
        ("NUL in a value", post("X-A: b\0c\r\n", "")),
        ("space in a name", post("X A: b\r\n", "")),
        (
            "no Host",
            "GET /public/x HTTP/1.1\r\nX-A: b\r\n\r\n".to_owned(),
        ),
        (
            "two Hosts",
            "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
        ),
    ];
    for (name, request) in &cases {
        let (statuses, seen) = exchange(&w, request).await;
        assert_eq!(statuses, [400], "{name}: answered {statuses:?}");
        assert!(seen.is_empty(), "{name}: the upstream saw {seen:?}");
    }
}

/// Framings that are valid but unusual pass, with the body the client meant.
#[tokio::test(flavor = "multi_thread")]
async fn unusual_but_valid_framing_passes_once() {
    let w = world().await;
    let cases = [
        (
            "TE with a tab",
            post("Transfer-Encoding:\tchunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "TE upper case",
            post("Transfer-Encoding: CHUNKED\r\n", "3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "chunk extension",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3;x=y\r\nabc\r\n0\r\n\r\n",
            ),
        ),
    ];
    for (name, request) in &cases {
        let before = w.up.hits();
        let request = request.replace("Host: a\r\n", "Host: a\r\nConnection: close\r\n");
        let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
        assert_eq!(statuses(&answer), [200], "{name}: {answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(
            body == "abc" || body == "3\r\nabc\r\n0\r\n\r\n",
            "{name}: the body arrived changed: {body:?}"
        );
        assert_eq!(w.up.hits(), before + 1, "{name}");
    }
}

/// A chunk size that is not one: 400 and the connection closed. The body streams, so the
/// upstream may already have the request head; it never gets a complete request, and the next
/// request is served normally (no broken pooled connection).
#[tokio::test(flavor = "multi_thread")]
async fn bad_chunk_sizes_abort_the_request() {
    let w = world().await;
    for (name, body) in [
        ("not hex", "zz\r\nabc\r\n0\r\n\r\n"),
        ("beyond u64", "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ("negative", "-1\r\nabc\r\n0\r\n\r\n"),
        ("shorter than announced", "5\r\nabc\r\n0\r\n\r\n"),
    ] {
        let request = post(
            "Transfer-Encoding: chunked\r\n",
            &format!("{body}{SMUGGLED}"),
        );
        let (statuses, seen) = exchange(&w, &request).await;
        assert_eq!(statuses, [400], "{name}");
        assert!(
            seen.iter().all(|s| s == "POST /public/x"),
            "{name}: {seen:?}"
        );
        let ok = common::client()
            .post(format!("http://{}/public/after", w.gw.proxy_addr))
            .body("fine")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{name}: the request after");
        assert_eq!(ok.text().await.unwrap(), "fine");
    }
}

/// Credentials in chunked trailers are not credentials: the token is read from the request
/// head only, before the body.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_the_trailers_does_not_authenticate() {
    let w = world().await;
    let token = w.key.sign(&claims(&w.idp, "orders:write"));
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: Authorization\r\n\
         Connection: close\r\n\r\n3\r\nabc\r\n0\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
    assert_eq!(statuses(&answer), [401], "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"api\"\r\n"),
        "no credentials, so a challenge without error: {answer}"
    );
    assert_eq!(w.up.hits(), 0);
    // The same token in the head passes: the refusal was about where it was.
    let ok = common::client()
        .post(format!("http://{}/orders", w.gw.proxy_addr))
        .bearer_auth(&token)
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// Oversize request targets get 414 and oversize header sections 431 before any token work,
/// even with a valid token; a request just under the limits passes.
#[tokio::test(flavor = "multi_thread")]
async fn oversize_targets_and_headers_are_refused_first() {
    let w = world().await;
    let token = w.key.sign(&claims(&w.idp, "orders:read"));
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n")
    };
    let cases = [
        (
            "a 10 KiB target",
            get(&format!("/orders/{}", "a".repeat(10 << 10)), ""),
            414,
        ),
        (
            "a 40 KiB header",
            get("/orders/1", &format!("X-Big: {}\r\n", "a".repeat(40 << 10))),
            431,
        ),
        (
            "many small headers",
            get(
                "/orders/1",
                &"X-H: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(250),
            ),
            431,
        ),
        // RFC 6585 §5: too many fields is "Request Header Fields Too Large" too.
        (
            "more than 256 fields",
            get("/orders/1", &"X-H: v\r\n".repeat(300)),
            431,
        ),
        (
            "just under both limits",
            get(
                &format!("/orders/{}", "a".repeat(8000)),
                &format!("X-Big: {}\r\n", "a".repeat(30 << 10)),
            ),
            200,
        ),
    ];
    let jwks_before = w.idp.hits("/jwks");
    for (name, request, want) in &cases {
        let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
        assert_eq!(statuses(&answer), [*want], "{name}");
    }
    assert_eq!(w.up.hits(), 1, "only the request under the limits");
    assert_eq!(w.idp.hits("/jwks"), jwks_before);
}

/// One HTTP/2 frame: 9-byte header (RFC 9113 §4.1) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// The listener speaks HTTP/1.1 only (no h2c): an HTTP/2 connection preface is refused with
/// 400 (or a bare close) and the connection closed, so no HTTP/2 frame is ever parsed. The
/// preface is followed by the frames of the known HTTP/2 attacks: rapid reset (HEADERS then
/// RST_STREAM, a thousand times), a CONTINUATION flood, and an HPACK bomb (one large literal
/// indexed, then referenced over and over). None reaches anything, and the gateway serves the
/// next client as usual.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_preface_is_refused_with_the_attacks_behind_it() {
    let w = world().await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let settings = h2_frame(0x4, 0, 0, &[]);
    // :method GET, :scheme http, :path /, :authority "a" (RFC 7541 Appendix A).
    let request = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut rapid_reset = Vec::new();
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        rapid_reset.extend(h2_frame(0x1, 0x5, stream, &request));
        rapid_reset.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let mut continuation = h2_frame(0x1, 0x1, 1, &request);
    for _ in 0..1000 {
        continuation.extend(h2_frame(0x9, 0, 1, &[0x40, 0x01, b'x', 0x01, b'y']));
    }
    // A literal with a new name and a 4,096-byte value, added to the dynamic table: the length
    // is 127 + 3969 in HPACK's 7-bit prefix integer (RFC 7541 §5.1).
    let mut bomb = vec![0x40, 0x01, b'b', 0x7f, 0x81, 0x1f];
    bomb.extend([b'z'; 4096]);
    let mut hpack_bomb = h2_frame(0x1, 0x4, 1, &bomb);
    hpack_bomb.extend(h2_frame(0x1, 0x5, 3, &[0xbe; 1000])); // index 62, a thousand times
    for attack in [vec![], rapid_reset, continuation, hpack_bomb] {
        let bytes = [preface.clone(), settings.clone(), attack].concat();
        let answer = raw_request(w.gw.proxy_addr, &bytes).await;
        assert!(
            statuses(&answer) == [400] || answer.is_empty(),
            "answered {answer:?}"
        );
    }
    assert_eq!(w.up.hits(), 0);
    let answer = raw_request(w.gw.proxy_addr, SENTINEL.as_bytes()).await;
    assert_eq!(
        statuses(&answer),
        [200],
        "the gateway still serves HTTP/1.1"
    );
}

/// h2c smuggling: an `Upgrade: h2c` must never reach the upstream, or an upstream that speaks
/// h2c would answer 101 and every later HTTP/2 stream on that tunnel would bypass the gateway's
/// per-request checks. Only WebSocket upgrades are forwarded; this request is answered as plain
/// HTTP/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_upgrade_is_never_forwarded() {
    let w = world().await;
    for connection in [
        "Upgrade, HTTP2-Settings",
        "Upgrade",
        "upgrade, http2-settings, keep-alive",
    ] {
        let before = w.up.hits();
        let request = format!(
            "GET /public/h2c HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n{SENTINEL}"
        );
        let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
        let statuses = statuses(&answer);
        assert_eq!(statuses.first(), Some(&200), "{connection}: {answer:?}");
        let seen = &w.up.seen()[before..];
        assert_eq!(seen[0].uri, "/public/h2c");
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !seen[0].headers.contains_key(name),
                "{connection}: the upstream saw {name}"
            );
        }
        // pingora closes the connection after an upgrade request that was not upgraded, so the
        // pipelined request may go unanswered; it must never reach the upstream inside another.
        let rest: Vec<&str> = seen[1..].iter().map(|s| s.uri.as_str()).collect();
        assert!(
            rest.is_empty() && statuses.len() == 1
                || rest == ["/public/sentinel"] && statuses == [200, 200],
            "{connection}: statuses {statuses:?}, upstream saw {rest:?}"
        );
    }
}

/// A gateway process with h2c, for the HTTP/2 attacks: its memory and CPU time are read from
/// /proc around each attack.
struct H2World {
    gw: common::binary::GatewayProcess,
    up: EchoUpstream,
}

async fn h2_world(max_cancelled: u32) -> H2World {
    let up = EchoUpstream::start("app").await;
    let gw = common::binary::GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[server.http2]\ncleartext = true\n\
             max_cancelled_streams = {max_cancelled}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
        &[],
    );
    assert!(became_ready(&gw.metrics.to_string(), Duration::from_secs(10)).await);
    H2World { gw, up }
}

impl H2World {
    /// A well-behaved HTTP/2 client is served at once, on a new connection.
    async fn next_client_served(&self) {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .tls_built_in_native_certs(false)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let resp = client
            .get(format!("http://{}/next", self.gw.proxy))
            .send()
            .await
            .expect("the next client is served within 2 s");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
    }

    /// Run `attack`, then check that it cost at most `max_cpu_ms` of the gateway's CPU time
    /// and `max_rss_mb` of memory that stayed, and that the next client is served.
    async fn bounded<F: std::future::Future>(
        &self,
        name: &str,
        max_cpu_ms: u64,
        attack: F,
    ) -> F::Output {
        let (rss, cpu) = common::h2::usage(self.gw.pid());
        let out = attack.await;
        let (rss_after, cpu_after) = common::h2::usage(self.gw.pid());
        // /proc counts CPU time in clock ticks, 100 per second on Linux.
        let cpu_ms = (cpu_after - cpu) * 10;
        let grown_mb = rss_after.saturating_sub(rss) / 1024;
        eprintln!("{name}: {cpu_ms} ms of CPU, {grown_mb} MB more resident");
        assert!(cpu_ms <= max_cpu_ms, "{name}: {cpu_ms} ms of CPU");
        assert!(grown_mb <= 32, "{name}: {grown_mb} MB more resident");
        self.next_client_served().await;
        out
    }
}

use common::h2::{self as h2raw, Raw};

/// Rapid reset (CVE-2023-44487), both ways. Streams reset before the gateway took them: h2
/// ends the connection with ENHANCE_YOUR_CALM after 20. Streams reset after (each waited for
/// until it reached the upstream, the costly case): the connection is closed once more than
/// `max_cancelled_streams` were cancelled, and counted.
#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_is_cut_short() {
    let w = h2_world(20).await;
    let request = h2raw::request("GET", "/hang", "a", &[]);
    let (frames, closed) = w
        .bounded("rapid reset, one burst", 1500, async {
            let mut conn = Raw::connect(w.gw.proxy).await;
            let mut burst = Vec::new();
            for i in 0..5000u32 {
                let stream = 2 * i + 1;
                burst.extend(h2raw::frame(
                    h2raw::HEADERS,
                    h2raw::END_HEADERS | h2raw::END_STREAM,
                    stream,
                    &request,
                ));
                burst.extend(h2raw::frame(
                    h2raw::RST_STREAM,
                    0,
                    stream,
                    &h2raw::CANCEL.to_be_bytes(),
                ));
            }
            let _ = conn.send(&burst).await;
            conn.read_to_close(Duration::from_secs(10)).await
        })
        .await;
    assert!(closed, "the connection ends");
    let goaway = frames
        .iter()
        .find(|f| f.kind == h2raw::GOAWAY)
        .expect("a GOAWAY");
    assert_eq!(goaway.error_code(), Some(h2raw::ENHANCE_YOUR_CALM));
    let forwarded = w.up.hits();
    assert!(
        forwarded < 200,
        "{forwarded} of 5000 reset streams reached the upstream"
    );
    let m = common::scrape(w.gw.metrics).await;
    assert_eq!(
        m.get("portcullis_http2_rapid_reset_closes_total", &[]),
        0.0,
        "h2's own limit, not the gateway's count, ended that one"
    );

    let before = w.up.hits();
    let (frames, closed, sent) = w
        .bounded("rapid reset, after accept", 1500, async {
            let mut conn = Raw::connect(w.gw.proxy).await;
            let mut sent = 0;
            for i in 0..40u32 {
                let stream = 2 * i + 1;
                let headers = h2raw::frame(
                    h2raw::HEADERS,
                    h2raw::END_HEADERS | h2raw::END_STREAM,
                    stream,
                    &request,
                );
                if conn.send(&headers).await.is_err() {
                    break;
                }
                let reached = before + i as usize + 1;
                if !common::eventually(Duration::from_secs(5), || async { w.up.hits() >= reached })
                    .await
                {
                    break;
                }
                sent += 1;
                let reset =
                    h2raw::frame(h2raw::RST_STREAM, 0, stream, &h2raw::CANCEL.to_be_bytes());
                if conn.send(&reset).await.is_err() {
                    break;
                }
            }
            let (frames, closed) = conn.read_to_close(Duration::from_secs(10)).await;
            (frames, closed, sent)
        })
        .await;
    assert!(closed, "the connection ends");
    assert!(frames.iter().any(|f| f.kind == h2raw::GOAWAY), "{frames:?}");
    assert!(
        (21..=22).contains(&sent),
        "{sent} streams reached the upstream and were cancelled"
    );
    counted(
        w.gw.metrics,
        "portcullis_http2_rapid_reset_closes_total",
        &[],
        1.0,
    )
    .await;
}

/// A CONTINUATION flood (CVE-2024-27316 class): a header block that never ends, in large
/// frames and in tiny ones. h2 ends the connection after a few frames beyond what
/// `max_header_list_size` needs; nothing is forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_floods_end_the_connection() {
    let w = h2_world(200).await;
    for (name, size) in [("large frames", 16_000usize), ("tiny frames", 1)] {
        let (frames, closed, sent) = w
            .bounded(name, 1500, async {
                let mut conn = Raw::connect(w.gw.proxy).await;
                let first = h2raw::request("GET", "/flood", "a", &[]);
                conn.send(&h2raw::frame(h2raw::HEADERS, 0, 1, &first))
                    .await
                    .unwrap();
                // Each CONTINUATION adds bytes of a literal that never completes.
                let junk = h2raw::frame(h2raw::CONTINUATION, 0, 1, &vec![b'x'; size]);
                let batch = junk.repeat((64 << 10) / junk.len() + 1);
                let mut sent = 0usize;
                while sent < 256 << 20 {
                    if conn.send(&batch).await.is_err() {
                        break;
                    }
                    sent += batch.len();
                }
                let (frames, closed) = conn.read_to_close(Duration::from_secs(10)).await;
                (frames, closed, sent)
            })
            .await;
        assert!(closed, "{name}: the connection ends");
        assert!(
            sent < 256 << 20,
            "{name}: the gateway took {sent} bytes of one header block"
        );
        if let Some(goaway) = frames.iter().find(|f| f.kind == h2raw::GOAWAY) {
            assert_eq!(
                goaway.error_code(),
                Some(h2raw::ENHANCE_YOUR_CALM),
                "{name}"
            );
        }
    }
    assert!(
        w.up.seen().iter().all(|s| s.uri == "/next"),
        "only the well-behaved clients' requests were forwarded"
    );
}

/// An HPACK bomb: one 4 KB literal put in the dynamic table, then header blocks that name it
/// over and over. Twenty times (80 KB decoded, over `max_header_list_size`): the stream is
/// answered 431 and the connection goes on to serve its next stream. Sixteen thousand times
/// (64 MB decoded from 16 KB): h2 stops decoding and ends the connection with
/// ENHANCE_YOUR_CALM. Neither block is kept or forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_hpack_bomb_is_refused_without_being_decoded_into_memory() {
    let w = h2_world(200).await;
    let mut conn = Raw::connect(w.gw.proxy).await;
    let headers = |stream: u32, block: &[u8]| {
        h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            stream,
            block,
        )
    };
    // Index 62 is the newest dynamic entry (RFC 7541 §2.3.3).
    let naming = |times: usize| {
        let mut block = h2raw::request("GET", "/bomb", "a", &[]);
        block.extend(std::iter::repeat_n(0xbe, times));
        block
    };
    let mut first = h2raw::request("GET", "/table", "a", &[]);
    first.extend(h2raw::indexed_literal("x-bomb", &[b'z'; 4000]));
    conn.send(&headers(1, &first)).await.unwrap();
    conn.send(&headers(3, &naming(20))).await.unwrap();
    conn.send(&headers(5, &h2raw::request("GET", "/after", "a", &[])))
        .await
        .unwrap();
    let frames = conn
        .until(Duration::from_secs(10), |f| {
            f.stream == 5 && f.kind == h2raw::HEADERS
        })
        .await;
    let status = |stream: u32| {
        frames
            .iter()
            .find(|f| f.stream == stream && f.kind == h2raw::HEADERS)
            .and_then(|f| h2raw::status(&f.payload))
    };
    assert_eq!(status(3), Some(431), "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 5 && f.kind == h2raw::HEADERS),
        "the connection goes on: {frames:?}"
    );

    let (frames, closed) = w
        .bounded("HPACK bomb", 1500, async {
            conn.send(&headers(7, &naming(16_000))).await.unwrap();
            conn.read_to_close(Duration::from_secs(10)).await
        })
        .await;
    assert!(closed);
    let goaway = frames
        .iter()
        .find(|f| f.kind == h2raw::GOAWAY)
        .expect("a GOAWAY");
    assert_eq!(goaway.error_code(), Some(h2raw::ENHANCE_YOUR_CALM));
    let mut uris: Vec<String> = w.up.seen().iter().map(|s| s.uri.clone()).collect();
    uris.sort();
    assert_eq!(uris, ["/after", "/next", "/table"]);
}
