//! Upstreams that misbehave: reset before or during the answer, broken framing, garbage. The
//! client gets a short 502 (or, once the head is out, a body that visibly breaks), a request that
//! was sent is never retried, and the next request is served normally.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{client, start_gateway, EchoUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the raw upstream does once a request head has arrived.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Close with a TCP reset, answering nothing.
    Reset,
    /// A head announcing 100 bytes, 3 of them, then a reset.
    ResetMidBody,
    /// Two different Content-Length values.
    ConflictingLength,
    /// Not HTTP at all.
    Garbage,
    /// A chunked body whose chunk size is not hex.
    BadChunk,
}

/// A TCP upstream on 127.0.0.1:0 that misbehaves on every request; counts request heads
/// (health checks connect and send nothing, so they are not counted).
struct RawUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(how: Misbehaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer: &[u8] = match how {
                        Misbehaviour::Reset => b"",
                        Misbehaviour::ResetMidBody => {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
                        }
                        Misbehaviour::ConflictingLength => {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
                        }
                        Misbehaviour::Garbage => b"\x16\x03\x01 this is not HTTP\r\n\r\n",
                        Misbehaviour::BadChunk => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
                        }
                    };
                    let _ = stream.write_all(answer).await;
                    let _ = stream.flush().await;
                    // SO_LINGER 0: close sends RST, not FIN.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                });
            }
        });
        RawUpstream { addr, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn routes(bad: SocketAddr, good: SocketAddr) -> String {
    format!(
        "[[routes]]\nname = \"bad\"\npath_prefix = \"/bad\"\nupstreams = [\"{bad}\"]\nauth = \"none\"\n\
         [[routes]]\nname = \"good\"\npath_prefix = \"/good\"\nupstreams = [\"{good}\"]\nauth = \"none\"\n"
    )
}

/// Before a head reaches the client, every misbehaviour is a JSON 502; after it, the body
/// breaks off (the client sees an error, never a short body taken for complete).
#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_upstream_is_a_502_or_a_visibly_broken_body() {
    let good = EchoUpstream::start("good").await;
    for how in [
        Misbehaviour::Reset,
        Misbehaviour::ConflictingLength,
        Misbehaviour::Garbage,
        Misbehaviour::ResetMidBody,
        Misbehaviour::BadChunk,
    ] {
        let bad = RawUpstream::start(how).await;
        let gw = start_gateway(&routes(bad.addr, good.addr));
        let resp = client()
            .get(format!("http://{}/bad/x", gw.proxy_addr))
            .send()
            .await;
        match how {
            Misbehaviour::ResetMidBody | Misbehaviour::BadChunk => {
                let body = match resp {
                    Ok(r) => r.bytes().await,
                    Err(e) => Err(e),
                };
                assert!(
                    body.is_err(),
                    "{how:?}: a broken body read as complete: {body:?}"
                );
            }
            _ => {
                let resp = resp.unwrap_or_else(|e| panic!("{how:?}: no answer: {e}"));
                assert_eq!(resp.status(), 502, "{how:?}");
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "bad_gateway", "{how:?}");
            }
        }
        let ok = client()
            .get(format!("http://{}/good/after", gw.proxy_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{how:?}: the next request");
        assert!(bad.requests() >= 1, "{how:?}");
    }
}

/// A POST that reached an upstream which then failed is not sent again, to it or to another
/// upstream of the route: the client gets 502 and decides.
#[tokio::test(flavor = "multi_thread")]
async fn a_sent_post_is_never_retried() {
    let bad = RawUpstream::start(Misbehaviour::Reset).await;
    let good = EchoUpstream::start("good").await;
    let gw = start_gateway(&format!(
        "[[routes]]\nname = \"pair\"\npath_prefix = \"/\"\nupstreams = [\"{}\", \"{}\"]\nauth = \"none\"\n",
        bad.addr, good.addr
    ));
    // Round robin: within two POSTs, one goes to the resetting upstream first.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = client()
            .post(format!("http://{}/orders", gw.proxy_addr))
            .body("order")
            .send()
            .await
            .unwrap();
        answers.push(resp.status().as_u16());
    }
    answers.sort();
    assert_eq!(answers, [200, 502]);
    assert_eq!(bad.requests(), 1, "the failed POST was sent once");
    assert_eq!(good.hits(), 1, "and not again to the other upstream");
}
