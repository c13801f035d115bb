//! A mock OAuth 2.0 authorization server with an RFC 7662 introspection endpoint on 127.0.0.1:0.
//!
//! - `POST /introspect`: checks the client credentials (Basic or in the form, as configured),
//!   answers with the JSON set for the token (`{"active":false}` for unknown tokens), and counts
//!   calls, calls in flight and the most ever in flight at once.
//! - `/.well-known/openid-configuration`: `issuer` and `introspection_endpoint` (RFC 8414).
//! - Switches: a fixed status or body for every answer, a connection reset, a hold that keeps
//!   every call waiting until released, and a delay per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::{full, Body};

pub const CLIENT_ID: &str = "gateway client";
/// Characters that must be form-encoded before Basic encoding (RFC 6749 §2.3.1).
pub const CLIENT_SECRET: &str = "s3cr:et+/%&=";

/// What every introspection call answers, overriding the per-token answers.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    #[default]
    Normal,
    Status(u16),
    Body(String),
    /// Close the connection without answering.
    Reset,
    /// Keep each call waiting until [`MockAs::release`].
    Hold,
}

/// One introspection request as received.
#[derive(Debug, Clone)]
pub struct Call {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The decoded form fields.
    pub form: Vec<(String, String)>,
    /// The W3C `traceparent` the call carried.
    pub traceparent: Option<String>,
}

impl Call {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    issuer: String,
    answers: Mutex<HashMap<String, Value>>,
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    post_auth: AtomicBool,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    discoveries: AtomicUsize,
    release: Notify,
}

#[derive(Clone)]
pub struct MockAs {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl MockAs {
    pub async fn start() -> MockAs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            issuer: format!("http://{addr}"),
            ..State::default()
        });
        let server = state.clone();
        super::serve_http(listener, move |req| answer(server.clone(), req));
        MockAs { addr, state }
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Answer `body` (the `active` member included) when `token` is introspected.
    pub fn set_answer(&self, token: &str, body: Value) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), body);
    }

    /// An active access token with these scopes, audience `api`, expiring in an hour.
    pub fn activate(&self, token: &str, scope: &str) {
        self.set_answer(
            token,
            json!({
                "active": true, "scope": scope, "client_id": "app-1", "sub": "user-7",
                "token_type": "Bearer", "aud": "api", "iss": self.issuer(),
                "exp": super::idp::now() + 3600, "iat": super::idp::now(),
            }),
        );
    }

    /// Revoke: from now on the token is inactive.
    pub fn revoke(&self, token: &str) {
        self.set_answer(token, json!({ "active": false }));
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Simulated latency of each call.
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// Expect the client credentials in the form body instead of Basic.
    pub fn expect_post_auth(&self) {
        self.state.post_auth.store(true, Ordering::SeqCst);
    }

    /// Let every held call answer.
    pub fn release(&self) {
        self.state.release.notify_waiters();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn call_count(&self) -> usize {
        self.state.calls.lock().unwrap().len()
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn discoveries(&self) -> usize {
        self.state.discoveries.load(Ordering::SeqCst)
    }
}

/// Decrements the in-flight count however the call ends.
struct Flight<'a>(&'a AtomicUsize);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reply(status: u16, body: impl Into<bytes::Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    if req.uri().path() == "/.well-known/openid-configuration" {
        state.discoveries.fetch_add(1, Ordering::SeqCst);
        let base = &state.issuer;
        let body =
            json!({ "issuer": base, "introspection_endpoint": format!("{base}/introspect") });
        return Ok(reply(200, body.to_string()));
    }
    if req.uri().path() != "/introspect" || req.method() != "POST" {
        return Ok(reply(404, "{}"));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("<binary>").to_owned())
    };
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let traceparent = header("traceparent");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let call = Call {
        authorization,
        content_type,
        form,
        traceparent,
    };
    state.calls.lock().unwrap().push(call.clone());
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _flight = Flight(&state.in_flight);
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);

    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Normal => {}
        Mode::Status(status) => return Ok(reply(status, "{\"error\":\"mock\"}")),
        Mode::Body(body) => return Ok(reply(200, body)),
        // A service error makes hyper close the connection without an answer.
        Mode::Reset => return Err(std::io::Error::other("reset")),
        Mode::Hold => state.release.notified().await,
    }
    if !credentials_ok(&call, state.post_auth.load(Ordering::SeqCst)) {
        return Ok(reply(401, "{\"error\":\"invalid_client\"}"));
    }
    if call.content_type.as_deref() != Some("application/x-www-form-urlencoded")
        || call.field("token_type_hint") != Some("access_token")
    {
        return Ok(reply(400, "{\"error\":\"invalid_request\"}"));
    }
    let Some(token) = call.field("token") else {
        return Ok(reply(400, "{\"error\":\"invalid_request\"}"));
    };
    let answer = state
        .answers
        .lock()
        .unwrap()
        .get(token)
        .cloned()
        .unwrap_or_else(|| json!({ "active": false }));
    Ok(reply(200, answer.to_string()))
}

/// RFC 6749 §2.3.1: Basic over the form-url-encoded id and secret, or both in the form.
fn credentials_ok(call: &Call, post: bool) -> bool {
    if post {
        return call.authorization.is_none()
            && call.field("client_id") == Some(CLIENT_ID)
            && call.field("client_secret") == Some(CLIENT_SECRET);
    }
    let Some(b64) = call
        .authorization
        .as_deref()
        .and_then(|h| h.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let Some((id, secret)) = raw.split_once(':') else {
        return false;
    };
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    call.field("client_secret").is_none()
        && decode(id).as_deref() == Some(CLIENT_ID)
        && decode(secret).as_deref() == Some(CLIENT_SECRET)
}
