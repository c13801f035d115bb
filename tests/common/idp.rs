//! A mock identity provider, and a gateway set up to trust it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::app::RunningApp;
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{became_ready, client, full, start_gateway, Body, EchoUpstream};

/// A mock identity provider on 127.0.0.1:0: OpenID discovery at
/// `/.well-known/openid-configuration` and the JWKS at `/jwks`, with per-path hit counters and
/// switches for the JWKS content and for failure.
#[derive(Clone)]
pub struct MockIdp {
    pub addr: SocketAddr,
    state: Arc<IdpState>,
}

#[derive(Default)]
struct IdpState {
    issuer: Mutex<String>,
    jwks: Mutex<String>,
    failing: std::sync::atomic::AtomicBool,
    /// Milliseconds every answer waits before it is sent.
    delay_ms: std::sync::atomic::AtomicU64,
    /// `/moved` answers 302 to this URL.
    redirect_to: Mutex<String>,
    hits: Mutex<std::collections::HashMap<String, usize>>,
}

impl MockIdp {
    pub async fn start(keys: &[&portcullis::devkeys::DevKey]) -> MockIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState::default());
        *state.issuer.lock().unwrap() = format!("http://{addr}");
        let idp = MockIdp {
            addr,
            state: state.clone(),
        };
        idp.set_keys(keys);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            // Counted on arrival, so a test can see a request the delay holds.
                            *state
                                .hits
                                .lock()
                                .unwrap()
                                .entry(req.uri().path().to_owned())
                                .or_default() += 1;
                            let delay = state.delay_ms.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            Ok::<_, Infallible>(idp_answer(&state, req.uri().path()))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        idp
    }

    /// The issuer identifier, `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        self.state.issuer.lock().unwrap().clone()
    }

    /// Make discovery announce another issuer (a mix-up attack).
    pub fn set_announced_issuer(&self, issuer: &str) {
        *self.state.issuer.lock().unwrap() = issuer.to_owned();
    }

    pub fn set_keys(&self, keys: &[&portcullis::devkeys::DevKey]) {
        self.set_jwks_body(&portcullis::devkeys::jwks(keys).to_string());
    }

    pub fn set_jwks_body(&self, body: &str) {
        *self.state.jwks.lock().unwrap() = body.to_owned();
    }

    /// Make `/moved` redirect (302) to `url`.
    pub fn set_redirect(&self, url: &str) {
        *self.state.redirect_to.lock().unwrap() = url.to_owned();
    }

    /// While failing, every path answers 500.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Make every answer wait this long (a slow identity provider).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn idp_answer(state: &IdpState, path: &str) -> Response<Body> {
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap()
    };
    if state.failing.load(Ordering::SeqCst) {
        return reply(500, "{}".into());
    }
    let issuer = state.issuer.lock().unwrap().clone();
    match path {
        "/.well-known/openid-configuration" => {
            // jwks_uri is built from the listener's own address, whatever issuer is announced.
            let base = issuer.clone();
            reply(
                200,
                serde_json::json!({ "issuer": issuer, "jwks_uri": format!("{base}/jwks") })
                    .to_string(),
            )
        }
        "/jwks" => reply(200, state.jwks.lock().unwrap().clone()),
        "/moved" => Response::builder()
            .status(302)
            .header("location", state.redirect_to.lock().unwrap().clone())
            .body(full(""))
            .unwrap(),
        _ => reply(404, "{}".into()),
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims valid for an hour, for audience `api`.
pub fn claims(idp: &MockIdp, scope: &str) -> Value {
    json!({ "iss": idp.issuer(), "sub": "user-7", "client_id": "app", "aud": "api",
            "scope": scope, "iat": now(), "exp": now() + 3600 })
}

pub struct Setup {
    pub gw: RunningApp,
    pub idp: MockIdp,
    pub up: EchoUpstream,
    pub rsa: DevKey,
    pub ec: DevKey,
}

impl Setup {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.proxy_addr)
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

/// An IdP with an RSA and an EC key, and a gateway that trusts it, ready (keys loaded).
pub async fn setup(issuer_extra: &str) -> Setup {
    setup_with("", issuer_extra).await
}

pub async fn setup_with(top: &str, issuer_extra: &str) -> Setup {
    let (rsa, ec) = (
        DevKey::generate(Algorithm::RS256, "rsa-1"),
        DevKey::generate(Algorithm::ES256, "ec-1"),
    );
    let idp = MockIdp::start(&[&rsa, &ec]).await;
    let up = EchoUpstream::start("app").await;
    let gw = start_gateway(&format!(
        r#"{top}
[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["api"]
algorithms = ["RS256", "ES256"]
{issuer_extra}
{orders}
[[routes]]
name = "either"
path_prefix = "/either"
upstreams = ["{up}"]
scopes_any = ["a", "b"]
[[routes]]
name = "fwd"
path_prefix = "/fwd"
upstreams = ["{up}"]
forward_token = true
"#,
        issuer = idp.issuer(),
        orders = super::orders_routes(up.addr),
        up = up.addr
    ));
    let ready = became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await;
    assert!(ready, "keys never loaded");
    Setup {
        gw,
        idp,
        up,
        rsa,
        ec,
    }
}

pub fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A gateway trusting one RS256 issuer, with audience `api` and one catch-all route to
/// `upstream`. `keys` is the issuer's key line, e.g. `discovery = true`.
pub fn gateway_for(issuer: &str, keys: &str, upstream: SocketAddr) -> RunningApp {
    start_gateway(&format!(
        "[[issuers]]\nissuer = \"{issuer}\"\n{keys}\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{upstream}\"]\n"
    ))
}

/// The status of `GET path` on the gateway with this bearer token.
pub async fn status_with(gw: &RunningApp, path: &str, token: &str) -> u16 {
    status_at(gw.proxy_addr, path, token).await
}

/// The status of `GET path` at `proxy` with this bearer token.
pub async fn status_at(proxy: SocketAddr, path: &str, token: &str) -> u16 {
    let url = format!("http://{proxy}{path}");
    client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
