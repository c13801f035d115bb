//! Slow clients: slowloris heads, stalled bodies and clients that stop reading are cut off by
//! `client_header_timeout`, `client_body_timeout` and `send_timeout`, while normal clients keep
//! full success. The timeouts are 1 s here; the bounds below allow for a loaded machine.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const TIMEOUTS: &str =
    "client_header_timeout = \"1s\"\nclient_body_timeout = \"1s\"\nsend_timeout = \"1s\"";

/// What "cut off by a 1 s timeout" may take: not before it, and not much after.
const EARLIEST: Duration = Duration::from_millis(900);
const LATEST: Duration = Duration::from_secs(5);

fn open_route(up: SocketAddr) -> String {
    format!("[[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{up}\"]\nauth = \"none\"\n")
}

/// Read until the gateway closes (or resets) the connection: what arrived, and when it ended.
async fn until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    start: Instant,
) -> (String, Duration) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the gateway closes a slow client's connection");
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// Connect, send `bytes` (perhaps none) and nothing more: the gateway must cut the connection
/// off on time. What it answered.
async fn sent_and_cut_off(addr: SocketAddr, what: &str, bytes: &[u8]) -> String {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let (answer, took) = until_closed(&mut stream, start).await;
    assert_cut_off(what, took);
    answer
}

fn assert_cut_off(what: &str, took: Duration) {
    assert!(
        (EARLIEST..LATEST).contains(&took),
        "{what}: the connection ended after {took:?}, expected 1 s and not much later"
    );
}

/// One slowloris connection: a request head that grows by one header line every 100 ms.
async fn slowloris(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n").await;
        for i in 0..600 {
            if writer
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (_, took) = until_closed(&mut reader, start).await;
    trickle.abort();
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_cut_off_while_normal_clients_pass() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway_with_server(TIMEOUTS, &open_route(up.addr));
    let url = format!("http://{}/normal", gw.proxy_addr);

    let attackers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(slowloris(gw.proxy_addr)))
        .collect();
    let normal = tokio::spawn(async move {
        let client = client();
        let (mut ok, mut other) = (0, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                r => other.push(format!("{r:?}")),
            }
        }
        (ok, other)
    });
    for attacker in attackers {
        assert_cut_off("slowloris", attacker.await.unwrap());
    }
    let (ok, other) = normal.await.unwrap();
    assert!(other.is_empty(), "normal requests failed: {other:?}");
    assert!(ok > 10, "only {ok} normal requests in 2 s");
    assert_eq!(up.hits(), ok, "no slowloris request reached the upstream");
    let m = scrape(gw.metrics_addr).await;
    assert_eq!(
        m.get("portcullis_client_timeouts_total", &[("phase", "header")]),
        50.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_head_gets_408_and_a_silent_connection_is_closed() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway_with_server(TIMEOUTS, &open_route(up.addr));

    let partial = b"GET /x HTTP/1.1\r\nHost: a\r\n";
    let answer = sent_and_cut_off(gw.proxy_addr, "partial head", partial).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "answer: {answer:?}"
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"));

    let answer = sent_and_cut_off(gw.proxy_addr, "silent connection", b"").await;
    assert_eq!(answer, "", "nothing was asked, so nothing is answered");
    assert_eq!(up.hits(), 0);
}

/// Read one response with a `Content-Length` body from a kept-alive connection.

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_of_a_later_request_starts_at_its_first_byte() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway_with_server(TIMEOUTS, &open_route(up.addr));
    let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
    let request = b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n";

    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle between requests for longer than the head's timeout: keep-alive governs that wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert_eq!(up.hits(), 2);

    // A third head that starts and stalls is cut off one timeout after its first byte.
    let start = Instant::now();
    stream.write_all(b"GET /again HTTP/1.1\r\n").await.unwrap();
    let (answer, took) = until_closed(&mut stream, start).await;
    assert_cut_off("third head", took);
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408() {
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway_with_server(TIMEOUTS, &open_route(up.addr));
    // `/hang` never answers, so only the client's silence can end this request.
    let request = b"POST /hang HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789";
    let answer = sent_and_cut_off(gw.proxy_addr, "stalled body", request).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert!(
        answer.contains("\"error\":\"request_timeout\""),
        "answer: {answer:?}"
    );
    let m = scrape(gw.metrics_addr).await;
    assert_eq!(
        m.get("portcullis_client_timeouts_total", &[("phase", "body")]),
        1.0
    );
}

/// An upstream whose every answer is 256 MiB, and which says when a body was dropped unfinished.
async fn huge_upstream() -> (SocketAddr, Arc<Notify>) {
    struct Dropped(Arc<Notify>, bool);
    impl Dropped {
        fn finished(mut self) {
            self.1 = true;
        }
    }
    impl Drop for Dropped {
        fn drop(&mut self) {
            if !self.1 {
                self.0.notify_one();
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(Notify::new());
    let signal = dropped.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let signal = signal.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let guard = Dropped(signal.clone(), false);
                    let chunks =
                        futures_util::stream::unfold((0, guard), |(i, guard)| async move {
                            if i == 4096 {
                                guard.finished();
                                return None;
                            }
                            let chunk = Frame::data(Bytes::from(vec![b'x'; 64 * 1024]));
                            Some((Ok::<_, std::convert::Infallible>(chunk), (i + 1, guard)))
                        });
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(chunks)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, dropped)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_and_so_is_its_upstream() {
    let (huge, dropped) = huge_upstream().await;
    let gw = start_gateway_with_server(TIMEOUTS, &open_route(huge));
    let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Never read: the socket buffers fill, the gateway's writes wait, and send_timeout ends it.
    tokio::time::timeout(Duration::from_secs(20), dropped.notified())
        .await
        .expect("the gateway gave up on the client and dropped the upstream response");
    let m = scrape(gw.metrics_addr).await;
    assert_eq!(
        m.get("portcullis_client_timeouts_total", &[("phase", "send")]),
        1.0
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_is_closed_after_keepalive_timeout() {
    let up = EchoUpstream::start("app").await;
    let server = format!("{TIMEOUTS}\nkeepalive_timeout = \"1s\"");
    let gw = start_gateway_with_server(&server, &open_route(up.addr));
    let mut stream = TcpStream::connect(gw.proxy_addr).await.unwrap();
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Nothing more is sent: the connection is closed once it has been idle for 1 s, silently
    // (no 408: no request was started).
    let start = Instant::now();
    let (answer, took) = until_closed(&mut stream, start).await;
    assert_cut_off("idle keep-alive", took);
    assert_eq!(answer, "");
}
