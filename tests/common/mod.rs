//! Test harness: real servers on 127.0.0.1:0 and the real gateway in front of them.
#![allow(dead_code)] // each test binary uses its own subset

pub mod authz;
pub mod binary;
pub mod collector;
pub mod framework;
pub mod h2;
pub mod idp;
pub mod oidc;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::app::{App, RunningApp};
use portcullis::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
}

#[derive(Default)]
struct EchoState {
    name: String,
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// `/gate`: requests announce their arrival and wait to be released.
    arrived: Notify,
    release: Notify,
}

/// An HTTP/1.1 upstream that records what it receives.
///
/// - any path: `200`, body `<name> <method> <uri>`, header `x-upstream: <name>` and
///   `x-app-path`: the path an application would route on ([`framework::app_path`]);
/// - a request with a body: the body is streamed back unchanged;
/// - `/hang`: never answers;
/// - `/gate`: answers once [`EchoUpstream::release`] is called;
/// - `Upgrade: websocket`: `101`, then echoes raw bytes.
#[derive(Clone)]
pub struct EchoUpstream {
    pub addr: SocketAddr,
    state: Arc<EchoState>,
}

impl EchoUpstream {
    pub async fn start(name: &str) -> EchoUpstream {
        EchoUpstream::start_on("127.0.0.1:0", name).await
    }

    /// [`EchoUpstream::start`] on a given address (another loopback address, a chosen port).
    pub async fn start_on(addr: &str, name: &str) -> EchoUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(EchoState {
            name: name.into(),
            ..Default::default()
        });
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        EchoUpstream { addr, state }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Wait until a request has arrived at `/gate`.
    pub async fn arrived(&self) {
        self.state.arrived.notified().await
    }

    /// Let every waiting `/gate` request answer.
    pub fn release(&self) {
        self.state.release.notify_waiters();
    }
}

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn handle(
    state: Arc<EchoState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    // What an application would route on, escaped to visible ASCII for the header.
    let app_path = framework::app_path(req.uri().path())
        .escape_default()
        .to_string();
    let ok = |body: Body| {
        Ok(Response::builder()
            .header("x-upstream", state.name.clone())
            .header("x-app-path", app_path)
            .body(body)
            .unwrap())
    };
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket")
    {
        let upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap());
    }
    match req.uri().path() {
        "/hang" => std::future::pending().await,
        "/gate" => {
            let released = state.release.notified();
            state.arrived.notify_waiters();
            released.await;
            ok(full("released"))
        }
        _ => {
            let has_body = req.headers().contains_key("content-length")
                || req.headers().contains_key("transfer-encoding");
            if has_body {
                ok(req.into_body().boxed())
            } else {
                ok(full(format!(
                    "{} {} {}",
                    state.name,
                    req.method(),
                    req.uri()
                )))
            }
        }
    }
}

/// The two routes most tests use: `GET /orders` needs `orders:read` (route `orders-read`),
/// `POST /orders` needs `orders:write` (route `orders-write`), both to `up`.
pub fn orders_routes(up: SocketAddr) -> String {
    format!(
        r#"[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET"]
upstreams = ["{up}"]
scopes = ["orders:read"]
[[routes]]
name = "orders-write"
path_prefix = "/orders"
methods = ["POST"]
upstreams = ["{up}"]
scopes = ["orders:write"]
"#
    )
}

/// A port free now, for a server the test starts in another process (nginx) to listen on: bound,
/// then released.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A port on which nothing listens: a socket bound to it and never listening, kept open for
/// the rest of the test process, so that a connection to it is refused and no server another
/// test starts meanwhile can be given the port (a released port was, and a collector expected
/// to be unreachable answered 404).
pub fn dead_addr() -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr
}

/// Start the real gateway in-process with its own metrics registry.
/// `routes_and_more` is TOML appended after a `[server]` / `[metrics]` on 127.0.0.1:0.
pub fn start_gateway(routes_and_more: &str) -> RunningApp {
    start_gateway_with_server("", routes_and_more)
}

/// [`start_gateway`] with more `[server]` keys.
pub fn start_gateway_with_server(server: &str, routes_and_more: &str) -> RunningApp {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrealm = \"api\"\nthreads = 2\n{server}\n[metrics]\nlisten = \"127.0.0.1:0\"\n{routes_and_more}"
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    App::build(&config, prometheus::Registry::new())
        .unwrap()
        .spawn()
}

/// Start the real gateway in-process from a whole config text.
pub fn start_gateway_text(text: &str) -> RunningApp {
    let config = Config::parse(text).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    App::build(&config, prometheus::Registry::new())
        .unwrap()
        .spawn()
}

/// A reqwest client that never reuses connections between tests and has a hard deadline. It
/// skips the system trust store: reading it on every build made 200 concurrent requests slow
/// enough to miss their deadlines (tests that need trust add their own roots).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_native_certs(false)
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Send raw bytes and read the whole answer (the request should ask for `Connection: close`,
/// or the gateway closes the connection itself).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out));
    let _ = read
        .await
        .expect("the gateway answers and closes within 20 s");
    String::from_utf8_lossy(&out).into_owned()
}

/// The text of `/metrics`.
pub async fn scrape_text(metrics_addr: SocketAddr) -> String {
    client()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Scrape `/metrics` and check that every sample line parses.
pub async fn scrape(metrics_addr: SocketAddr) -> Metrics {
    let text = scrape_text(metrics_addr).await;
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        samples.push((series.to_owned(), value));
    }
    Metrics(samples)
}

/// Scrape until `condition` holds (at most 10 s) and return that scrape. Counters are updated
/// when a response's end is recorded, which is after the client already has its response.
pub async fn scrape_until(
    metrics_addr: SocketAddr,
    condition: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(metrics_addr).await;
        if condition(&m) || tokio::time::Instant::now() > end {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    /// Whether a series with this name and these labels was exported at all.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.iter().any(|(series, _)| {
            series.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
    }

    /// The value of the series whose name is `name` and whose labels include every `labels` pair.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| series == name || series.starts_with(&format!("{name}{{")))
            .filter(|(series, _)| {
                labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| *v)
            .sum()
    }
}

/// Wait (at most `deadline`) until `GET {admin}/readyz` answers 200; `admin` is `host:port`.
pub async fn became_ready(admin: &str, deadline: Duration) -> bool {
    let url = format!("http://{admin}/readyz");
    eventually(deadline, || async {
        client()
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

/// Send SIGTERM to a child process (returns once the signal is sent).
pub fn sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
}

/// Wait for a child process to exit; its exit code.
pub async fn exit_code(mut child: std::process::Child) -> Option<i32> {
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap()
        .code()
}

/// Poll `condition` until it holds, for at most `deadline`. For state that changes in the
/// background (health checks); never a substitute for waiting on an event.
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Read one HTTP/1.1 response with a `Content-Length` (none: no body) from `stream`: its head
/// and body as text. Fails when the stream closes first or nothing arrives for 10 s.
pub async fn read_response<S: AsyncReadExt + Unpin>(stream: &mut S) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed early after {text:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

/// Serve HTTP/1.1 on `listener` with `handler`, one task per connection, until the test ends.
pub fn serve_http<F, Fut, E>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
}

/// Wait (10 s at most) until the counter `name{labels}` reaches `n`, and assert it is exactly `n`.
pub async fn counted(metrics_addr: SocketAddr, name: &str, labels: &[(&str, &str)], n: f64) {
    let m = scrape_until(metrics_addr, |m| m.get(name, labels) >= n).await;
    assert_eq!(m.get(name, labels), n, "{name}{labels:?}");
}
