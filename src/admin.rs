//! The admin listener (`metrics.listen`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process is alive) and `GET /readyz` (it can serve traffic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::auth::Authenticator;
use crate::dataplane::simple::Handler;
use crate::gate::Gate;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::response::Synthetic;

/// What must hold before `/readyz` answers 200: the proxy listener runs, every issuer's keys
/// have loaded once, and the introspection endpoint (when discovered) is known.
pub struct Readiness {
    proxy_listening: AtomicBool,
    /// SIGTERM arrived: not ready, whatever else holds, so load balancers stop sending.
    draining: AtomicBool,
    /// Every condition held once. From then on only a drain makes the gateway unready: an
    /// issuer a reload adds whose keys do not load answers its own tokens with 503, but does
    /// not take every other issuer's traffic off the pod (and every replica that reloaded the
    /// same file off the service).
    ready_once: AtomicBool,
    /// The gate now: a reload's issuers count from the moment it is swapped in.
    gate: Arc<Live<Gate>>,
}

impl Readiness {
    pub fn new(gate: Arc<Live<Gate>>) -> Readiness {
        Readiness {
            proxy_listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready_once: AtomicBool::new(false),
            gate,
        }
    }

    /// The auth core now.
    pub fn auth(&self) -> Arc<Authenticator> {
        self.gate.load().auth.clone()
    }

    pub fn set_proxy_listening(&self) {
        self.proxy_listening.store(true, Ordering::Release);
    }

    /// From now on `/readyz` answers 503.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The conditions not met yet; empty when ready.
    pub fn pending(&self) -> Vec<String> {
        let mut pending = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            pending.push("draining: shutting down".to_owned());
        }
        if !self.proxy_listening.load(Ordering::Acquire) {
            pending.push("proxy listener not started".to_owned());
        }
        if self.ready_once.load(Ordering::Acquire) {
            return pending;
        }
        let auth = self.auth();
        for issuer in auth.issuers_without_keys() {
            pending.push(format!("no keys loaded yet for issuer {issuer}"));
        }
        if auth.introspection().is_some_and(|i| !i.endpoint_known()) {
            pending.push("introspection endpoint not discovered yet".to_owned());
        }
        if pending.is_empty() {
            self.ready_once.store(true, Ordering::Release);
        }
        pending
    }
}

/// Serves the admin endpoints.
pub struct AdminApp {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
}

impl Handler for AdminApp {
    async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
        }
        match req.uri().path() {
            "/metrics" => {
                self.readiness.auth().update_gauges().await;
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" => match self.readiness.pending() {
                pending if pending.is_empty() => reply(StatusCode::OK, "text/plain", "ready\n"),
                pending => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", pending.join("; ")),
                ),
            },
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Bytes> {
    Synthetic::text(status.as_u16(), content_type, body).render()
}

/// `portcullis healthcheck`: one `GET /readyz` to the admin listener at `addr`, for container
/// `HEALTHCHECK`s in images without curl. `Ok` when it answers 200 within `timeout`; otherwise
/// what it answered or why there was no answer. No request body, no redirects, no TLS: the
/// admin listener is plain HTTP on a private address.
pub fn healthcheck(addr: std::net::SocketAddr, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot ask {addr}: {e}"))?;
    // The status line is all that is read: `HTTP/1.1 200 ...`.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("no answer from {addr}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let line = line.lines().next().unwrap_or_default();
    match line.split(' ').nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("{addr}/readyz answered {status}: not ready")),
        None => Err(format!("{addr} did not answer HTTP")),
    }
}

/// The address a healthcheck reaches the admin listener at: `metrics.listen`, with an
/// unspecified address (`0.0.0.0`, `::`) replaced by loopback.
pub fn local_admin_addr(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}
