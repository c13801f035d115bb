//! HTTP/1.1 semantics a proxy must get right (RFC 9110, RFC 9112), each driven through the real
//! gateway with raw sockets on both sides: a scripted upstream that records the exact bytes it
//! receives and answers with canned bytes, and a client that writes raw requests.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{raw_request, start_gateway, EchoUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with `answer` and keeps each request's raw bytes.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

/// Whether `buf` holds one whole request: its head, then its body by `Content-Length` or
/// chunked framing (trailers included).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.windows(5).any(|w| w == b"0\r\n\r\n")
            || body
                .windows(3)
                .position(|w| w == b"0\r\n")
                .is_some_and(|i| body[i..].windows(4).any(|w| w == b"\r\n\r\n"));
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

impl Scripted {
    async fn start(answer: &'static [u8]) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !complete(&buf) {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    record
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Scripted { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn open_route(upstream: SocketAddr) -> String {
    format!("[[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\nauth = \"none\"\n")
}

/// The head of an answer, its field lines lower-cased, and its body.
fn split(answer: &str) -> (String, Vec<String>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let fields = lines.map(|l| l.to_ascii_lowercase()).collect();
    (status, fields, body.to_owned())
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";

/// Everything the gateway still sends on `stream` until it closes (10 s at most).
async fn rest_of(stream: &mut TcpStream) -> String {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes within 10 s")
        .unwrap();
    String::from_utf8_lossy(&rest).into_owned()
}

/// RFC 9110 §8.6: a list of equal `Content-Length` values, or two equal lines, reach the client
/// as one valid value. (pingora 0.9.1 passed both on unchanged.)
#[tokio::test(flavor = "multi_thread")]
async fn a_response_length_reaches_the_client_as_one_value() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let up = Scripted::start(answer).await;
        let gw = start_gateway(&open_route(up.addr));
        let (status, fields, body) = split(&raw_request(gw.proxy_addr, GET).await);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let lengths: Vec<_> = fields
            .iter()
            .filter(|f| f.starts_with("content-length:"))
            .collect();
        assert_eq!(lengths, ["content-length: 5"], "{fields:?}");
        assert_eq!(body, "hello");
    }
}

/// RFC 9110 §7.6.1: `Connection` and every field it names, `Keep-Alive` and
/// `Proxy-Connection` are one hop's; the upstream's never reach the client.
#[tokio::test(flavor = "multi_thread")]
async fn response_hop_by_hop_fields_stay_with_the_upstream() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: k\r\n\
          Content-Length: 2\r\n\r\nok",
    )
    .await;
    let gw = start_gateway(&open_route(up.addr));
    let request = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let (status, fields, _) = split(&String::from_utf8_lossy(&got));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(fields.contains(&"x-kept: k".to_owned()), "{fields:?}");
    for name in [
        "connection:",
        "x-secret:",
        "keep-alive:",
        "proxy-connection:",
    ] {
        assert!(
            !fields.iter().any(|f| f.starts_with(name)),
            "{name} reached the client: {fields:?}"
        );
    }
}

/// RFC 9112 §6.1 and RFC 9110 §15.2: an HTTP/1.0 client gets neither chunked framing nor an
/// interim (1xx) response; the body arrives whole, delimited by the close.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_client_gets_no_chunks_and_no_interim_answer() {
    let up = Scripted::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let gw = start_gateway(&open_route(up.addr));
    let answer = raw_request(gw.proxy_addr, b"GET /x HTTP/1.0\r\nHost: h\r\n\r\n").await;
    assert!(!answer.contains("103"), "{answer}");
    let (status, fields, body) = split(&answer);
    assert!(status.ends_with("200 OK"), "{answer}");
    assert!(
        !fields.iter().any(|f| f.starts_with("transfer-encoding")),
        "{answer}"
    );
    assert_eq!(body, "hello", "{answer}");
}

/// An HTTP/1.0 request may come without Host; the HTTP/1.1 request forwarded has one (RFC 9112
/// §3.2), the upstream's address.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_request_without_host_is_forwarded_with_one() {
    let up = Scripted::start(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = start_gateway(&open_route(up.addr));
    let answer = raw_request(gw.proxy_addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 204") || answer.starts_with("HTTP/1.0 204"),
        "{answer}"
    );
    let (line, fields, _) = split(&up.seen()[0]);
    assert_eq!(line, "GET /x HTTP/1.1");
    assert!(fields.contains(&format!("host: {}", up.addr)), "{fields:?}");
}

/// An upstream that sends a body after an answer that has none (HEAD, 204, 304), late, must
/// not have those bytes read as the answer to another client's request: such a connection is
/// never pooled (response queue poisoning, found by the red team).
#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_late_after_a_bodiless_answer_reaches_no_other_client() {
    for (request, answer) in [
        (
            &b"HEAD /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"[..],
        ),
        (
            b"GET /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 12\r\n\r\n",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = answer.to_vec();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut stream, _)) = listener.accept().await {
                let poison = std::mem::replace(&mut first, false);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    loop {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => got.extend_from_slice(&buf[..k]),
                            }
                        }
                        n += 1;
                        if poison && n == 1 {
                            let _ = stream.write_all(&answer).await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
                                .await;
                        } else {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest")
                                .await;
                        }
                    }
                });
            }
        });
        let gw = common::start_gateway_text(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
            open_route(addr)
        ));
        let _ = raw_request(gw.proxy_addr, request).await;
        // The poisoned bytes come 100 ms after the first answer: the next requests, sent
        // meanwhile and after, each get the upstream's answer to their own request.
        for _ in 0..5 {
            let next = raw_request(gw.proxy_addr, GET).await;
            assert!(next.ends_with("honest"), "{next}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// Body framing is checked on every head as it arrived, whichever blank line ends it (hyper
/// also ends a head at `\n\r\n`), and a request with a body pipelined behind another, whose
/// head the gateway did not see as sent, is refused (found by the red team).
#[tokio::test(flavor = "multi_thread")]
async fn framing_refusals_hold_for_every_head_ending_and_for_pipelined_bodies() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&open_route(up.addr));
    for request in [
        &b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\n\r\n0\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\n\r\nhello",
        b"\r\n\r\nPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /public#/../admin HTTP/1.1\r\nHost: h\r\nConnection: close\n\r\n",
    ] {
        let answer = raw_request(gw.proxy_addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let pipelined = b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let answer = raw_request(gw.proxy_addr, pipelined).await;
    let statuses: Vec<&str> = answer.matches("HTTP/1.1 ").map(|_| "").collect();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(statuses.len(), 2, "{answer}");
    let uris: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/first"], "only the first request was forwarded");
}

/// A head pipelined behind another and split across segments is still checked as it arrived
/// (red team, round 2: the checker took the second segment's first line for a request line).
#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_head_split_across_segments_is_checked_whole() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&open_route(up.addr));
    for second in [
        &b"gth: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"[..],
        b"gth: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    ] {
        let before = up.hits();
        let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
        stream
            .write_all(
                b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n\
                  POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Len",
            )
            .await
            .unwrap();
        // The first answer is out before the rest of the second head arrives.
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stream.write_all(second).await.unwrap();
        let rest = rest_of(&mut stream).await;
        assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
        let uris: Vec<String> = up.seen()[before..].iter().map(|s| s.uri.clone()).collect();
        assert_eq!(uris, ["/first"]);
    }
}

/// Trailers end only at CRLF CRLF, for the head checks as for the parser: a bare LF at the
/// start of a trailer line does not end them (red team, round 3).
#[tokio::test(flavor = "multi_thread")]
async fn heads_after_odd_trailers_are_still_checked() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&open_route(up.addr));
    let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
    stream
        .write_all(b"POST /m1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nX: y\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream
        .write_all(b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let rest = rest_of(&mut stream).await;
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    let uris: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/m1"]);
}

/// An upstream that answers before the request's body has arrived keeps its connection out of
/// the pool until that body is through: what the client sends as its body never reaches the
/// upstream as another client's request (red team, round 2).
#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_does_not_hand_the_connection_to_another_client() {
    // Answers every head at once with its own request line, and reads no body (as a server
    // that ignores Content-Length would): what follows a head is read as the next head.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let line = String::from_utf8_lossy(&head);
                        let line = line.lines().next().unwrap_or_default().to_owned();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}",
                            line.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let gw = common::start_gateway_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        open_route(addr)
    ));
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut a = TcpStream::connect(gw.proxy_addr).await.unwrap();
    a.write_all(
        format!(
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = a.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("POST /a HTTP/1.1"));
    // B asks while A's body has not come; then A sends a body that is a request.
    let b = tokio::spawn(raw_request(
        gw.proxy_addr,
        b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.write_all(smuggled).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .unwrap()
        .unwrap();
    assert!(b.ends_with("GET /b HTTP/1.1"), "{b}");
}

/// `read_timeout` counts from the end of the request body: an upload slower than it, within
/// `client_body_timeout` per read, is answered (found by the red team).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    // It answers once the whole body is in.
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = common::start_gateway_with_server(
        "client_body_timeout = \"2s\"\n",
        &format!("[upstream]\nread_timeout = \"1s\"\n{}", open_route(up.addr)),
    );
    let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for byte in b"abcd" {
        tokio::time::sleep(Duration::from_millis(600)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let answer = rest_of(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(up.seen()[0].ends_with("abcd"), "{:?}", up.seen());
}

/// CONNECT is refused in every target form: a gateway is no tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn connect_is_refused() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&open_route(up.addr));
    for request in [
        &b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    ] {
        let answer = raw_request(gw.proxy_addr, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(up.hits(), 0);
}

/// RFC 9110 §15.2.2: a server switches protocols only when asked; an upstream `101` to a
/// request that asked for no upgrade is a broken upstream, 502.
#[tokio::test(flavor = "multi_thread")]
async fn an_unasked_101_is_a_502() {
    let up = Scripted::start(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let gw = start_gateway(&open_route(up.addr));
    let answer = raw_request(gw.proxy_addr, GET).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(up.seen().len(), 1);
}

/// RFC 9112 §3.2.1 and §3.2.2: an absolute-form target is forwarded in origin-form, its
/// authority as Host; RFC 9110 §7.6.3: the gateway adds no `Via`.
#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_is_forwarded_in_origin_form_without_via() {
    let up = Scripted::start(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = start_gateway(&open_route(up.addr));
    let answer = raw_request(
        gw.proxy_addr,
        b"GET http://api.example/orders/1?x=1 HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let seen = up.seen();
    let (line, fields, _) = split(&seen[0]);
    assert_eq!(line, "GET /orders/1?x=1 HTTP/1.1");
    assert!(
        fields.contains(&"host: api.example".to_owned()),
        "{fields:?}"
    );
    assert!(!fields.iter().any(|f| f.starts_with("via:")), "{fields:?}");
    assert!(
        !answer.to_ascii_lowercase().contains("\r\nvia:"),
        "{answer}"
    );
}

/// RFC 9112 §9.3.2: pipelined requests are answered, each once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&open_route(up.addr));
    let mut pipelined = String::new();
    for i in 0..5 {
        pipelined.push_str(&format!("GET /p/{i} HTTP/1.1\r\nHost: h\r\n\r\n"));
    }
    pipelined.push_str("GET /p/last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let answer = raw_request(gw.proxy_addr, pipelined.as_bytes()).await;
    let bodies: Vec<&str> = answer
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a.split("\r\n\r\n").nth(1).unwrap_or_default())
        .collect();
    let want: Vec<String> = (0..5)
        .map(|i| format!("app GET /p/{i}"))
        .chain(["app GET /p/last".to_owned()])
        .collect();
    assert_eq!(bodies, want, "{answer}");
}

/// A client that closes its side while its request waits for the upstream has left (a read of
/// zero bytes cannot tell a half-close from a close): the gateway gives up the upstream request
/// and closes that connection, so a slow upstream is not kept busy for nobody. nginx, Envoy and
/// Go's `ReverseProxy` do the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = start_gateway(&open_route(upstream.local_addr().unwrap()));
    let mut client = TcpStream::connect(gw.proxy_addr).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    // The forwarded request's connection; the health checker's probes connect and close.
    let mut buf = [0u8; 4096];
    let mut held = 'accept: loop {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => continue 'accept,
            }
        }
        break conn;
    };
    client.shutdown().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), held.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the upstream connection stays open after the client left: {closed:?}"
    );
}

/// Trailers pass both ways (gRPC needs them): the client's to the upstream, the upstream's to
/// a client that said `TE: trailers`, each with its `Trailer` declaration.
#[tokio::test(flavor = "multi_thread")]
async fn trailers_pass_both_ways() {
    let up = Scripted::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-status\r\n\r\n\
          2\r\nok\r\n0\r\nx-status: done\r\n\r\n",
    )
    .await;
    let gw = start_gateway(&open_route(up.addr));
    let answer = raw_request(
        gw.proxy_addr,
        b"POST /x HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nTrailer: x-checksum\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          3\r\nabc\r\n0\r\nx-checksum: 900150983cd24fb0\r\n\r\n",
    )
    .await;
    let seen = up.seen();
    let lower = seen[0].to_ascii_lowercase();
    assert!(
        lower.contains("\r\n0\r\nx-checksum: 900150983cd24fb0\r\n"),
        "{}",
        seen[0]
    );
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\n0\r\nx-status: done\r\n"), "{answer}");
}

/// Request trailers never carry a field the gateway sets in the head (found by the red team):
/// an upstream that merges trailers into the headers would read the client's.
#[tokio::test(flavor = "multi_thread")]
async fn request_trailers_cannot_carry_the_gateways_own_fields() {
    let up = Scripted::start(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = start_gateway(&open_route(up.addr));
    let _ = raw_request(
        gw.proxy_addr,
        b"POST /x HTTP/1.1\r\nHost: h\r\nTrailer: x-forwarded-for, x-request-id, x-auth-subject, proxy-authorization, upgrade, traceparent, tracestate, x-kept\r\n\
          Transfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n2\r\nhi\r\n0\r\nx-forwarded-for: 6.6.6.6\r\n\
          x-request-id: forged\r\nx-auth-subject: admin\r\nproxy-authorization: Basic eA==\r\n\
          upgrade: h2c\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
          tracestate: evil=1\r\nx-kept: k\r\n\r\n",
    )
    .await;
    let seen = up.seen()[0].to_ascii_lowercase();
    let trailers = seen.rsplit("\r\n0\r\n").next().unwrap();
    assert!(trailers.contains("x-kept: k"), "{seen}");
    for gone in [
        "6.6.6.6",
        "forged",
        "x-auth-subject",
        "proxy-authorization",
        "h2c",
        // The trace fields the gateway rewrites in the head (red team).
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "evil=1",
    ] {
        assert!(!trailers.contains(gone), "{gone} in the trailers: {seen}");
    }
}

/// A client that names a header the gateway sets in `Connection` loses its own copy and the
/// upstream gets the gateway's (it was 400 on pingora).
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_option_naming_a_gateway_header_drops_only_the_clients_copy() {
    let up = Scripted::start(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = start_gateway(&open_route(up.addr));
    let answer = raw_request(
        gw.proxy_addr,
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Forwarded-For\r\n\
          X-Forwarded-For: 6.6.6.6\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let seen = up.seen();
    let (_, fields, _) = split(&seen[0]);
    let forwarded: Vec<_> = fields
        .iter()
        .filter(|f| f.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(forwarded, ["x-forwarded-for: 127.0.0.1"], "{fields:?}");
}

/// `[server] max_body_bytes`: a body declared longer is 413 before anything is forwarded; a
/// chunked one that grows past it is cut off, and the client answered 413.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_max_body_bytes_is_413() {
    let up = EchoUpstream::start("app").await;
    let gw = common::start_gateway_with_server("max_body_bytes = 10\n", &open_route(up.addr));
    let declared = raw_request(
        gw.proxy_addr,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert_eq!(up.hits(), 0, "nothing was forwarded");
    let fits = raw_request(
        gw.proxy_addr,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhelloworld",
    )
    .await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    let chunked = raw_request(
        gw.proxy_addr,
        b"POST /gate HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
}

/// A client that goes away while its request waits for the upstream is still counted and logged,
/// as 499 (nginx's "client closed request"), in the 4xx class of its route. hyper drops the
/// request's future when its connection ends; before, such a request left no trace at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_client_leaves_is_counted_as_499() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&format!(
        "[[routes]]\nname = \"held\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        up.addr
    ));
    let arrived = up.arrived();
    let mut client = TcpStream::connect(gw.proxy_addr).await.unwrap();
    client
        .write_all(b"GET /gate HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    arrived.await;
    drop(client);
    let m = common::scrape_until(gw.metrics_addr, |m| {
        m.get(
            "portcullis_requests_total",
            &[("route", "held"), ("status", "4xx")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_requests_total",
            &[("route", "held"), ("status", "4xx")]
        ),
        1.0,
        "the abandoned request is not counted"
    );
    up.release();
}
