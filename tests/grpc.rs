//! gRPC through the gateway, with a real gRPC client and server (tonic): a route with
//! `upstream_protocol = "http2"` carries unary and bidirectional streaming calls unbuffered,
//! with the identity headers and the upstream's trailers; a refused call gets a trailers-only
//! answer with `grpc-status` and the RFC 6750 challenge; a deadline and a cancelled call end the
//! upstream's call. Trailers from the client reach an HTTP/2 upstream, filtered.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use common::idp::{claims, setup_with, Setup};
use common::{counted, dead_addr, eventually};
use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Messages as raw bytes: no generated code, no protoc.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    /// Calls that reached a method.
    calls: AtomicUsize,
    /// `Slow` calls whose handler began, and those dropped before they finished (cancelled).
    slow: AtomicUsize,
    cancelled: AtomicUsize,
    /// The last call's `grpc-timeout` and `authorization` metadata.
    timeout: Mutex<Option<String>>,
    authorization: Mutex<Option<String>>,
}

/// Counts a `Slow` call dropped before its end.
struct Guard(Arc<Seen>, bool);

impl Guard {
    fn finished(&mut self) {
        self.1 = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// `test.Echo`: `Unary` answers its message with the subject the gateway named; `Bidi` echoes
/// each message as it comes and, on `fail`, ends with ABORTED and trailer metadata; `Slow`
/// never answers in time.
#[derive(Clone)]
struct Echo(Arc<Seen>);

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let seen = self.0.clone();
        Box::pin(async move {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let headers = req.headers();
            let text = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            *seen.timeout.lock().unwrap() = text("grpc-timeout");
            *seen.authorization.lock().unwrap() = text("authorization");
            let mut grpc = tonic::server::Grpc::new(Raw);
            let response = match req.uri().path() {
                "/test.Echo/Unary" => {
                    let unary = tower::service_fn(|r: tonic::Request<Bytes>| async move {
                        let subject = r
                            .metadata()
                            .get("x-auth-subject")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        let mut out = r.into_inner().to_vec();
                        out.extend_from_slice(format!(" for {subject}").as_bytes());
                        Ok::<_, Status>(tonic::Response::new(Bytes::from(out)))
                    });
                    grpc.unary(unary, req).await
                }
                "/test.Echo/Bidi" => {
                    let bidi = tower::service_fn(
                        |r: tonic::Request<tonic::Streaming<Bytes>>| async move {
                            let inbound = r.into_inner();
                            let out =
                                futures_util::stream::unfold(Some(inbound), |inbound| async {
                                    let mut inbound = inbound?;
                                    match inbound.message().await {
                                        Ok(Some(m)) if &m[..] == b"fail" => {
                                            let mut md = tonic::metadata::MetadataMap::new();
                                            md.insert("order-id", "7".parse().unwrap());
                                            let status = Status::with_metadata(
                                                Code::Aborted,
                                                "told to fail",
                                                md,
                                            );
                                            Some((Err(status), None))
                                        }
                                        Ok(Some(m)) => Some((Ok(m), Some(inbound))),
                                        Ok(None) => None,
                                        Err(status) => Some((Err(status), None)),
                                    }
                                });
                            Ok::<_, Status>(tonic::Response::new(Box::pin(out) as Responses))
                        },
                    );
                    grpc.streaming(bidi, req).await
                }
                "/test.Echo/Slow" => {
                    let seen = seen.clone();
                    let slow = tower::service_fn(move |_: tonic::Request<Bytes>| {
                        seen.slow.fetch_add(1, Ordering::SeqCst);
                        let mut guard = Guard(seen.clone(), false);
                        async move {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            guard.finished();
                            Ok::<_, Status>(tonic::Response::new(Bytes::new()))
                        }
                    });
                    grpc.unary(slow, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

/// A tonic server of `test.Echo` on a new port.
async fn grpc_upstream() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let service = Echo(seen.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_of(listener))
            .await
            .unwrap();
    });
    (addr, seen)
}

/// The listener's connections as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}

/// The gateway (h2c on, so a gRPC client can reach it in cleartext) with a `grpc` route to
/// `upstream` over HTTP/2 that requires `orders:read`, and a `down` route to nothing.
async fn gateway(upstream: SocketAddr) -> Setup {
    gateway_with(upstream, "").await
}

/// [`gateway`] with more top-level configuration.
async fn gateway_with(upstream: SocketAddr, top: &str) -> Setup {
    setup_with(
        &format!("[server.http2]\ncleartext = true\n{top}"),
        &format!(
            r#"
[[routes]]
name = "grpc"
path_prefix = "/test.Echo"
upstreams = ["{upstream}"]
upstream_protocol = "http2"
scopes = ["orders:read"]
[[routes]]
name = "down"
path_prefix = "/test.Down"
upstreams = ["{dead}"]
upstream_protocol = "http2"
auth = "none"
"#,
            dead = dead_addr()
        ),
    )
    .await
}

async fn client(gateway: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        req.metadata_mut().insert("authorization", value);
    }
    req
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    req: tonic::Request<Bytes>,
) -> Result<tonic::Response<Bytes>, Status> {
    grpc.ready().await.unwrap();
    grpc.unary(req, PathAndQuery::from_static(path), Raw).await
}

#[tokio::test(flavor = "multi_thread")]
async fn unary_and_bidirectional_calls_pass_with_identity_and_trailers() {
    let (upstream, seen) = grpc_upstream().await;
    let s = gateway(upstream).await;
    let mut grpc = client(s.gw.proxy_addr).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));

    // Unary: the upstream names the subject the gateway set; the token is not forwarded.
    let mut req = with_token(Bytes::from_static(b"hello"), Some(&token));
    req.metadata_mut()
        .insert("x-auth-subject", "admin".parse().unwrap());
    let resp = unary(&mut grpc, "/test.Echo/Unary", req).await.unwrap();
    assert_eq!(&resp.into_inner()[..], b"hello for user-7");
    assert_eq!(*seen.authorization.lock().unwrap(), None);

    // Bidirectional: each message is echoed before the next is sent, so neither direction is
    // buffered to its end; the upstream's status, with its metadata, arrives in trailers after
    // the messages.
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let resp = grpc
        .streaming(
            with_token(outbound, Some(&token)),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            Raw,
        )
        .await
        .unwrap();
    let mut inbound = resp.into_inner();
    for i in 0..5 {
        let message = Bytes::from(format!("message {i}"));
        tx.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("an echo held back: a direction was buffered")
            .unwrap();
        assert_eq!(echoed, Some(message));
    }
    tx.send(Bytes::from_static(b"fail")).await.unwrap();
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "told to fail");
    assert_eq!(status.metadata().get("order-id").unwrap(), "7");

    // A method the upstream lacks: its UNIMPLEMENTED passes through.
    let req = with_token(Bytes::new(), Some(&token));
    let status = unary(&mut grpc, "/test.Echo/Nope", req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        s.up.hits(),
        0,
        "the echo upstream of the other routes got a call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_calls_get_grpc_status_and_the_challenge() {
    let (upstream, seen) = grpc_upstream().await;
    let s = gateway(upstream).await;
    let mut grpc = client(s.gw.proxy_addr).await;

    // No token: UNAUTHENTICATED, with the Bearer challenge kept.
    let status = unary(
        &mut grpc,
        "/test.Echo/Unary",
        with_token(Bytes::new(), None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "This resource requires a bearer token.");
    let challenge = status.metadata().get("www-authenticate").unwrap();
    assert!(challenge
        .to_str()
        .unwrap()
        .starts_with("Bearer realm=\"api\""));

    // A bad token: UNAUTHENTICATED with error="invalid_token", the refresh-and-retry signal.
    let req = with_token(Bytes::new(), Some("not.a.jwt"));
    let status = unary(&mut grpc, "/test.Echo/Unary", req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let challenge = status.metadata().get("www-authenticate").unwrap();
    assert!(challenge
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));

    // The scope missing: PERMISSION_DENIED, insufficient_scope.
    let weak = s.rsa.sign(&claims(&s.idp, "profile"));
    let req = with_token(Bytes::new(), Some(&weak));
    let status = unary(&mut grpc, "/test.Echo/Unary", req).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let challenge = status.metadata().get("www-authenticate").unwrap();
    assert!(challenge.to_str().unwrap().contains("insufficient_scope"));

    // Two Authorization fields: 400 invalid_request, INVALID_ARGUMENT.
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let mut req = with_token(Bytes::new(), Some(&token));
    let again = format!("Bearer {token}").parse().unwrap();
    req.metadata_mut().append("authorization", again);
    let status = unary(&mut grpc, "/test.Echo/Unary", req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.metadata().get("www-authenticate").is_some());

    // The upstream cannot be reached: the gateway's 502 is UNAVAILABLE, which clients retry.
    let status = unary(
        &mut grpc,
        "/test.Down/Unary",
        with_token(Bytes::new(), None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    // Counted by the status each answer stands for, not the 200 it is sent with (a request
    // is counted as its answer ends, which may be just after the client has it).
    let total = "portcullis_requests_total";
    counted(
        s.gw.metrics_addr,
        total,
        &[("route", "grpc"), ("status", "4xx")],
        4.0,
    )
    .await;
    counted(
        s.gw.metrics_addr,
        total,
        &[("route", "down"), ("status", "5xx")],
        1.0,
    )
    .await;
    let m = common::scrape(s.gw.metrics_addr).await;
    assert_eq!(m.get(total, &[("route", "grpc"), ("status", "2xx")]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_that_expires_ends_the_upstream_call() {
    let (upstream, seen) = grpc_upstream().await;
    let s = gateway(upstream).await;
    let mut grpc = client(s.gw.proxy_addr).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));

    let mut req = with_token(Bytes::new(), Some(&token));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = unary(&mut grpc, "/test.Echo/Slow", req).await.unwrap_err();
    let took = started.elapsed();
    // tonic's client gives up at its deadline ("Timeout expired", CANCELLED), unless the
    // upstream's DEADLINE_EXCEEDED, sent at the same deadline, arrives first.
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The deadline went on to the upstream, and its call ended rather than running 30 s.
    assert!(seen.timeout.lock().unwrap().is_some());
    let ended = eventually(Duration::from_secs(5), || async {
        seen.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(ended, "the upstream's call outlived its deadline");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_call_is_cancelled_upstream() {
    let (upstream, seen) = grpc_upstream().await;
    let s = gateway(upstream).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));

    // No deadline: only the client's RST_STREAM, passed on by the gateway, can end the call.
    let mut client = common::h2::client(s.gw.proxy_addr).await;
    let req = http::Request::post(format!("http://{}/test.Echo/Slow", s.gw.proxy_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(req, false).unwrap();
    // One empty message: the 5-byte gRPC frame header.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    // The handler runs (its message read): only now can its end be seen.
    let reached = eventually(Duration::from_secs(5), || async {
        seen.slow.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(reached);
    drop(response);
    body.send_reset(h2::Reason::CANCEL);
    let ended = eventually(Duration::from_secs(5), || async {
        seen.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        ended,
        "the upstream's call went on after the client cancelled it"
    );
    // Logged and counted as the client closing the request.
    counted(
        s.gw.metrics_addr,
        "portcullis_requests_total",
        &[("route", "grpc"), ("status", "4xx")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trailers_reach_an_http2_upstream_filtered_and_come_back() {
    // A plain HTTP/2 upstream that reads the request's trailers and answers with its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let te = req.headers().get("te").cloned();
                        let collected = req.into_body().collect().await.unwrap();
                        let trailers = collected.trailers().cloned().unwrap_or_default();
                        let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
                        let mut answer = http::HeaderMap::new();
                        answer.insert("x-answer-trailer", "yes".parse().unwrap());
                        let body = http_body_util::StreamBody::new(futures_util::stream::iter([
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                Bytes::from(names.join(",")),
                            )),
                            Ok(hyper::body::Frame::trailers(answer)),
                        ]));
                        let mut resp = http::Response::new(body);
                        if let Some(te) = te {
                            resp.headers_mut().insert("x-seen-te", te);
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    let s = gateway(upstream).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));

    let mut client = common::h2::client(s.gw.proxy_addr).await;
    let req = http::Request::post(format!("http://{}/test.Echo/Any", s.gw.proxy_addr))
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"payload"), false)
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    // Identity and forwarding fields in trailers never reach the upstream.
    trailers.insert("x-auth-subject", "admin".parse().unwrap());
    trailers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-seen-te"], "trailers");
    let mut body = response.into_body();
    let text = common::h2::read_body(&mut body).await;
    assert_eq!(String::from_utf8(text).unwrap(), "x-checksum");
    let answer = body
        .trailers()
        .await
        .unwrap()
        .expect("the upstream's trailers");
    assert_eq!(answer["x-answer-trailer"], "yes");
}

/// A plain HTTP/2 upstream answering `ok`; with `once`, each connection serves one request and
/// then closes with GOAWAY. Returns its address and its count of connections that carried a
/// request (the gateway's health checks connect too, and send none).
async fn h2_upstream(once: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let (served, mut told) = tokio::sync::mpsc::channel::<()>(64);
                let first = Arc::new(std::sync::Once::new());
                let service =
                    hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
                        let served = served.clone();
                        first.call_once(|| {
                            count.fetch_add(1, Ordering::SeqCst);
                        });
                        async move {
                            let _ = served.try_send(());
                            let body = http_body_util::Full::new(Bytes::from_static(b"ok"));
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    });
                let builder =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                tokio::pin!(conn);
                loop {
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        Some(()) = told.recv(), if once => conn.as_mut().graceful_shutdown(),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_share_one_upstream_connection_and_a_closed_one_is_replaced() {
    // Many concurrent streams on one client connection (one worker) share one upstream
    // connection: HTTP/1.1 would have opened one per request in flight.
    let (upstream, accepted) = h2_upstream(false).await;
    let s = gateway(upstream).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let client = common::h2::client(s.gw.proxy_addr).await;
    let request = || {
        http::Request::get(format!("http://{}/test.Echo/x", s.gw.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    };
    let send = |client: h2::client::SendRequest<Bytes>, req| async move {
        let mut client = client.ready().await.unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        response.await.unwrap().status()
    };
    assert_eq!(send(client.clone(), request()).await, 200);
    let calls: Vec<_> = (0..32).map(|_| send(client.clone(), request())).collect();
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // An upstream that closes its connection (GOAWAY) after every request: each next request
    // goes out on a new one, never to the closed one.
    let (upstream, accepted) = h2_upstream(true).await;
    let s = gateway(upstream).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let url = format!("http://{}/test.Echo/x", s.gw.proxy_addr);
    for _ in 0..10 {
        let resp = common::client()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    assert!(accepted.load(Ordering::SeqCst) >= 2);
}

/// What [`held_upstream`] saw: connections that carried a request, and the most streams one
/// connection had open at once.
#[derive(Default)]
struct Held {
    connections: AtomicUsize,
    most_at_once: AtomicUsize,
}

/// An HTTP/2 upstream: `…/held` answers once `held` requests are open at once (across all
/// connections), `…/big` answers 4 MiB, anything else `ok`.
async fn held_upstream(held: usize) -> (SocketAddr, Arc<Held>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Held::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(held));
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (seen, barrier) = (counts.clone(), barrier.clone());
            let open = Arc::new(AtomicUsize::new(0));
            let first = Arc::new(std::sync::Once::new());
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let (seen, barrier, open) = (seen.clone(), barrier.clone(), open.clone());
                first.call_once(|| {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                });
                async move {
                    let body = match req.uri().path().rsplit('/').next() {
                        Some("held") => {
                            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.most_at_once.fetch_max(now, Ordering::SeqCst);
                            barrier.wait().await;
                            open.fetch_sub(1, Ordering::SeqCst);
                            Bytes::from_static(b"ok")
                        }
                        Some("big") => Bytes::from(vec![b'x'; 4 << 20]),
                        _ => Bytes::from_static(b"ok"),
                    };
                    let _: &hyper::body::Incoming = req.body();
                    let body = http_body_util::Full::new(body);
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                }
            });
            common::h2::serve(tcp, service);
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_upstream_connection_makes_the_worker_open_another() {
    // 12 requests open at once on one client connection (one worker), with 4 streams allowed
    // per upstream connection: the upstream answers only when all 12 are open, which takes 3
    // connections of 4 streams each.
    let (upstream, seen) = held_upstream(12).await;
    let s = gateway_with(
        upstream,
        "[upstream]\nhttp2_max_streams_per_connection = 4\n",
    )
    .await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let client = common::h2::client(s.gw.proxy_addr).await;
    let calls = (0..12).map(|_| {
        let req = http::Request::get(format!("http://{}/test.Echo/held", s.gw.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let client = client.clone();
        async move {
            let mut client = client.ready().await.unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            let mut response = response.await.unwrap();
            let status = response.status();
            (status, common::h2::read_body(response.body_mut()).await)
        }
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("the 12 requests were open upstream at once");
    for (status, body) in answers {
        assert_eq!(
            (status, body.as_slice()),
            (http::StatusCode::OK, &b"ok"[..])
        );
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    assert_eq!(seen.most_at_once.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_does_not_stall_the_shared_upstream_connection() {
    // Three 4 MiB answers a client never reads, then a small one on the same client
    // connection (so the same worker and upstream connection). Only the unread streams'
    // windows fill: the connection's is large enough for every stream it carries.
    let (upstream, seen) = held_upstream(1).await;
    let s = gateway(upstream).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let tcp = tokio::net::TcpStream::connect(s.gw.proxy_addr)
        .await
        .unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .initial_connection_window_size(1 << 30)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = |path: &str| {
        http::Request::get(format!("http://{}/test.Echo/{path}", s.gw.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    };
    let mut unread = Vec::new();
    for _ in 0..3 {
        let mut client = client.clone().ready().await.unwrap();
        let (response, _) = client.send_request(request("big"), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        unread.push(response);
    }
    let mut client = client.clone().ready().await.unwrap();
    let (response, _) = client.send_request(request("small"), true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut response = response.await.unwrap();
        common::h2::read_body(response.body_mut()).await
    })
    .await
    .expect("the small answer came while the big ones sat unread");
    assert_eq!(answer, b"ok");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    drop(unread);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_upstream_has_no_stream_for_times_out() {
    // The upstream allows one stream per connection (below the pool's 100) and answers none.
    // A second request waits for a stream that never opens, so its body is never read:
    // read_timeout bounds the wait (504), as it bounds a bodiless request's.
    use common::h2::{frame, HEADERS, SETTINGS};
    let opened = Arc::new(AtomicUsize::new(0));
    let count = opened.clone();
    let upstream = common::h2::raw_upstream(move |mut upstream| {
        let count = count.clone();
        async move {
            // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) = 1.
            let one = [0u8, 3, 0, 0, 0, 1];
            upstream.send(&frame(SETTINGS, 0, 0, &one)).await.unwrap();
            while let Some(f) = upstream.next(Duration::from_secs(30)).await {
                if f.kind == HEADERS {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
    .await;
    let s = gateway_with(upstream, "[upstream]\nread_timeout = \"1s\"\n").await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let client = common::h2::client(s.gw.proxy_addr).await;
    let request = |method: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}/test.Echo/x", s.gw.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    };
    // The first holds the upstream's one stream: its body stays open (bounded only by
    // client_body_timeout, 60 s).
    let mut first = client.clone().ready().await.unwrap();
    let (_unanswered, mut open_body) = first.send_request(request("POST"), false).unwrap();
    open_body
        .send_data(Bytes::from_static(b"a"), false)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            opened.load(Ordering::SeqCst) == 1
        })
        .await
    );

    let mut second = client.clone().ready().await.unwrap();
    let (response, mut body) = second.send_request(request("POST"), false).unwrap();
    body.send_data(Bytes::from_static(b"abc"), true).unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered, not left waiting for a stream")
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the second stream never opened"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_upstream_gets_the_client_s_host_as_authority() {
    // HTTP/2 carries the target in `:scheme` and `:authority`, not in Host (RFC 9113 §8.3.1):
    // the client's Host becomes `:authority` on the h2c hop, and a request without one (HTTP/1.0)
    // names the upstream's address, as the HTTP/1.1 hop's Host would.
    let upstream = common::h2::target_echo().await;
    let gw = common::start_gateway(&format!(
        "[[routes]]\nname = \"h2\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\n\
         upstream_protocol = \"http2\"\nauth = \"none\"\n"
    ));
    let named = common::raw_request(
        gw.proxy_addr,
        b"GET /x HTTP/1.1\r\nHost: orders.example:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    assert!(
        named.ends_with("\r\n\r\nHTTP/2.0 http orders.example:8443"),
        "{named}"
    );
    let unnamed = common::raw_request(gw.proxy_addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(unnamed.starts_with("HTTP/1.0 200"), "{unnamed}");
    assert!(
        unnamed.ends_with(&format!("\r\n\r\nHTTP/2.0 http {upstream}")),
        "{unnamed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_upstream_connection_is_pinged_and_replaced() {
    // An upstream connection the network dropped without a FIN looks open and answers nothing,
    // PINGs included. Its request fails once a PING goes unanswered (502 well before
    // read_timeout), and the next request opens a new connection.
    use common::h2::{frame, ACK, HEADERS, PING, SETTINGS};
    #[derive(Default)]
    struct Silent {
        connections: AtomicUsize,
        requests: AtomicUsize,
        pings: AtomicUsize,
        closed: AtomicUsize,
    }
    let seen = Arc::new(Silent::default());
    let counts = seen.clone();
    let upstream = common::h2::raw_upstream(move |mut upstream| {
        let seen = counts.clone();
        async move {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            upstream.send(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            // Frames as they come, never answered: no response, no SETTINGS or PING
            // acknowledgement.
            let (frames, closed) = upstream.read_to_close(Duration::from_secs(30)).await;
            for f in &frames {
                match f.kind {
                    HEADERS => _ = seen.requests.fetch_add(1, Ordering::SeqCst),
                    PING if f.flags & ACK == 0 => _ = seen.pings.fetch_add(1, Ordering::SeqCst),
                    _ => {}
                }
            }
            if closed {
                seen.closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let gw = common::start_gateway(&format!(
        "[upstream]\nread_timeout = \"30s\"\nhttp2_keepalive_interval = \"300ms\"\n\
         [[routes]]\nname = \"h2\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\n\
         upstream_protocol = \"http2\"\nauth = \"none\"\n"
    ));
    let url = format!("http://{}/x", gw.proxy_addr);
    for n in 1..=2 {
        let started = Instant::now();
        let resp = common::client().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 502, "request {n}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                seen.closed.load(Ordering::SeqCst) == n
            })
            .await,
            "the gateway closed connection {n}"
        );
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    assert!(seen.pings.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_connection_s_idle_time_counts_from_its_last_stream_s_end() {
    // One stream held open longer than idle_timeout (its 4 MiB answer read only after 4 s),
    // then a pause shorter than idle_timeout: the next request reuses the connection, which
    // was idle for the pause only.
    let (upstream, seen) = held_upstream(1).await;
    let gw = common::start_gateway_with_server(
        "[server.http2]\ncleartext = true",
        &format!(
            "[upstream]\nidle_timeout = \"3s\"\n\
         [[routes]]\nname = \"h2\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\n\
         upstream_protocol = \"http2\"\nauth = \"none\"\n"
        ),
    );
    let client = common::h2::client(gw.proxy_addr).await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", gw.proxy_addr))
            .body(())
            .unwrap()
    };
    let mut sender = client.clone().ready().await.unwrap();
    let (response, _) = sender.send_request(get("/big"), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(common::h2::read_body(&mut body).await.len(), 4 << 20);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sender = client.clone().ready().await.unwrap();
    let (response, _) = sender.send_request(get("/x"), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_opens_no_stream_is_retired_and_closed() {
    // An upstream that allows no stream at all (SETTINGS_MAX_CONCURRENT_STREAMS = 0): each
    // request queues on the connection and gets 504 after read_timeout. hyper keeps a queued
    // request until its connection closes, so a connection on which a request waited in vain
    // and nothing else was answered takes no new request, and is closed once its streams end.
    // (A new connection's first stream may go out before the upstream's SETTINGS arrive; it
    // is not answered either.)
    use common::h2::{frame, SETTINGS};
    #[derive(Default)]
    struct Refusing {
        connections: AtomicUsize,
        closed: AtomicUsize,
    }
    let seen = Arc::new(Refusing::default());
    let counts = seen.clone();
    let upstream = common::h2::raw_upstream(move |mut upstream| {
        let seen = counts.clone();
        async move {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let none = [0u8, 3, 0, 0, 0, 0];
            upstream.send(&frame(SETTINGS, 0, 0, &none)).await.unwrap();
            // SETTINGS and PINGs answered; a stream never.
            while upstream.next(Duration::from_secs(30)).await.is_some() {}
            seen.closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let gw = common::start_gateway(&format!(
        "[upstream]\nread_timeout = \"300ms\"\n\
         [[routes]]\nname = \"h2\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\n\
         upstream_protocol = \"http2\"\nauth = \"none\"\n"
    ));
    let url = format!("http://{}/x", gw.proxy_addr);
    for n in 1..=3 {
        let resp = common::client().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 504, "request {n}");
        assert!(
            eventually(Duration::from_secs(10), || async {
                seen.closed.load(Ordering::SeqCst) == n
            })
            .await,
            "connection {n} closed by the gateway"
        );
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

/// What the scripted HTTP/2 upstream below does with the next stream.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    Answer,
    /// `RST_STREAM` with `REFUSED_STREAM` (0x7): not processed (RFC 9113 §8.7).
    Refuse,
    /// `GOAWAY` whose last processed stream is 0: this one was not (§6.8).
    GoAway,
}

#[derive(Default)]
struct Script {
    next: Mutex<std::collections::VecDeque<Next>>,
    /// Streams opened, and how many of them ended with their HEADERS (bodiless).
    streams: AtomicUsize,
    bodiless: AtomicUsize,
    connections: AtomicUsize,
}

/// A raw HTTP/2 upstream that answers each stream as `script` says (200 when it says nothing).
async fn scripted_upstream(script: Arc<Script>) -> SocketAddr {
    use common::h2::{frame, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS};
    common::h2::raw_upstream(move |mut upstream| {
        let script = script.clone();
        async move {
            script.connections.fetch_add(1, Ordering::SeqCst);
            upstream.send(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            while let Some(f) = upstream.next(Duration::from_secs(30)).await {
                if f.kind != HEADERS {
                    continue;
                }
                script.streams.fetch_add(1, Ordering::SeqCst);
                if f.flags & END_STREAM != 0 {
                    script.bodiless.fetch_add(1, Ordering::SeqCst);
                }
                let next = script.next.lock().unwrap().pop_front();
                match next.unwrap_or(Next::Answer) {
                    // `:status: 200`, indexed (RFC 7541 Appendix A, entry 8).
                    Next::Answer => {
                        let flags = END_HEADERS | END_STREAM;
                        upstream
                            .send(&frame(HEADERS, flags, f.stream, &[0x88]))
                            .await
                            .unwrap()
                    }
                    Next::Refuse => upstream
                        .send(&frame(RST_STREAM, 0, f.stream, &7u32.to_be_bytes()))
                        .await
                        .unwrap(),
                    Next::GoAway => {
                        upstream.send(&frame(GOAWAY, 0, 0, &[0; 8])).await.unwrap();
                        upstream.read_to_close(Duration::from_secs(10)).await;
                        return;
                    }
                }
            }
        }
    })
    .await
}

const RESENDS: &str = "portcullis_upstream_resends_total";

#[tokio::test(flavor = "multi_thread")]
async fn a_bodiless_request_an_http2_upstream_left_unprocessed_is_sent_once_more() {
    // RFC 9113 §8.7: a stream reset with REFUSED_STREAM was not processed, so any method may
    // go again; a stream ended by GOAWAY may have been, as far as h2 tells, so only an
    // idempotent one goes again. Only a bodiless request can (its body is not kept), once.
    let script = Arc::new(Script::default());
    let upstream = scripted_upstream(script.clone()).await;
    // A route where `X-HTTP-Method-Override` reaches the upstream: a GET may run as a POST.
    let overridable = format!(
        "[[routes]]\nname = \"override\"\npath_prefix = \"/test.Override\"\n\
         upstreams = [\"{upstream}\"]\nupstream_protocol = \"http2\"\n\
         allow_method_override = true\nscopes = [\"orders:read\"]\n"
    );
    let s = gateway_with(upstream, &overridable).await;
    let token = s.rsa.sign(&claims(&s.idp, "orders:read"));
    let client = common::client();
    let cases: [(&str, &str, &[Next], u16, usize); 9] = [
        ("plain GET", "GET", &[], 200, 1),
        ("refused GET", "GET", &[Next::Refuse], 200, 2),
        ("refused bodiless POST", "POST", &[Next::Refuse], 200, 2),
        (
            "refused POST with a body",
            "POST+body",
            &[Next::Refuse],
            502,
            1,
        ),
        (
            "refused twice",
            "GET",
            &[Next::Refuse, Next::Refuse],
            502,
            2,
        ),
        ("GOAWAY, GET", "GET", &[Next::GoAway], 200, 2),
        ("GOAWAY, bodiless POST", "POST", &[Next::GoAway], 502, 1),
        (
            "GOAWAY, GET that may be overridden",
            "override GET",
            &[Next::GoAway],
            502,
            1,
        ),
        (
            "refused GET that may be overridden",
            "override GET",
            &[Next::Refuse],
            200,
            2,
        ),
    ];
    for (case, method, next, status, streams) in cases {
        *script.next.lock().unwrap() = next.iter().copied().collect();
        let before = script.streams.load(Ordering::SeqCst);
        let request = match method {
            "GET" => client.get(format!("http://{}/test.Echo/x", s.gw.proxy_addr)),
            "override GET" => client
                .get(format!("http://{}/test.Override/x", s.gw.proxy_addr))
                .header("x-http-method-override", "POST"),
            "POST" => client
                .post(format!("http://{}/test.Echo/x", s.gw.proxy_addr))
                .header("content-length", "0"),
            _ => client
                .post(format!("http://{}/test.Echo/x", s.gw.proxy_addr))
                .body("abc"),
        };
        let counted = common::scrape(s.gw.metrics_addr).await;
        let resp = request.bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), status, "{case}");
        let opened = script.streams.load(Ordering::SeqCst) - before;
        assert_eq!(opened, streams, "{case}: streams the upstream saw");
        assert!(script.next.lock().unwrap().is_empty(), "{case}");
        // Every stream after the first was a resend, counted by route and by what the
        // upstream's first answer was.
        let m = common::scrape(s.gw.metrics_addr).await;
        let route = if method.starts_with("override") {
            "override"
        } else {
            "grpc"
        };
        for (reason, kind) in [("refused_stream", Next::Refuse), ("goaway", Next::GoAway)] {
            let labels = [("route", route), ("reason", reason)];
            let resent = m.get(RESENDS, &labels) - counted.get(RESENDS, &labels);
            let expected = usize::from(next.first() == Some(&kind)) * (streams - 1);
            assert_eq!(resent, expected as f64, "{case}: {reason} resends counted");
        }
    }
    assert_eq!(
        script.bodiless.load(Ordering::SeqCst),
        script.streams.load(Ordering::SeqCst) - 1,
        "every replayed stream ended with its head, as the original did"
    );
}
