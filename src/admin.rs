//! The admin listener (`metrics.listen`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process is alive) and `GET /readyz` (it can serve traffic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::auth::Authenticator;
use crate::dataplane::simple::Handler;
use crate::metrics::Metrics;
use crate::response::Synthetic;

/// What must hold before `/readyz` answers 200: the proxy listener runs, every issuer's keys
/// have loaded once, and the introspection endpoint (when discovered) is known.
pub struct Readiness {
    proxy_listening: AtomicBool,
    /// SIGTERM arrived: not ready, whatever else holds, so load balancers stop sending.
    draining: AtomicBool,
    auth: Arc<Authenticator>,
}

impl Readiness {
    pub fn new(auth: Arc<Authenticator>) -> Readiness {
        Readiness {
            proxy_listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            auth,
        }
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
        for issuer in self.auth.issuers_without_keys() {
            pending.push(format!("no keys loaded yet for issuer {issuer}"));
        }
        if self
            .auth
            .introspection()
            .is_some_and(|i| !i.endpoint_known())
        {
            pending.push("introspection endpoint not discovered yet".to_owned());
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
                self.readiness.auth.update_gauges().await;
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
