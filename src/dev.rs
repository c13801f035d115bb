//! `portcullis dev`: DEVELOPMENT ONLY. One process with a throwaway identity provider (fresh
//! in-memory key; discovery, JWKS and a client-credentials token endpoint), a demo upstream, and
//! the gateway in front, all on loopback. It prints curl commands that show a 200, a 401 and a 403.

use std::net::{SocketAddr, TcpListener};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::app::{App, StartupError};
use crate::config::{Algorithm, Config};
use crate::dataplane::simple::Handler;
use crate::devkeys::DevKey;
use crate::response::Synthetic;

const CLIENT_ID: &str = "demo";
const CLIENT_SECRET: &str = "demo-secret";
const AUDIENCE: &str = "demo-api";
const SCOPES: [&str; 2] = ["orders:read", "orders:write"];
const TOKEN_LIFETIME_SECS: i64 = 900;

/// Start everything and block until SIGTERM / SIGINT.
pub fn run(listen: SocketAddr, metrics_listen: SocketAddr) -> Result<(), StartupError> {
    let bind = |key: &'static str| {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        TcpListener::bind(addr).map_err(|source| StartupError::Bind { key, addr, source })
    };
    let (issuer_listener, upstream_listener) = (bind("dev issuer")?, bind("dev upstream")?);
    let local = |l: &TcpListener, key| {
        l.local_addr().map_err(|source| StartupError::Bind {
            key,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })
    };
    let issuer = format!("http://{}", local(&issuer_listener, "dev issuer")?);
    let upstream = local(&upstream_listener, "dev upstream")?;
    let config = Config::parse(&demo_config(listen, metrics_listen, &issuer, upstream))
        .expect("the demo config is valid");

    let mut app = App::build(&config, prometheus::default_registry().clone())?;
    let key = DevKey::generate(Algorithm::ES256, "dev-1");
    app.add_http_service(
        "dev issuer",
        issuer_listener,
        DevIssuer {
            issuer: issuer.clone(),
            key,
        },
    )?;
    app.add_http_service("dev upstream", upstream_listener, DemoUpstream)?;
    println!(
        "{}",
        instructions(app.proxy_addr(), app.metrics_addr(), &issuer)
    );
    app.run_until_signal()
}

fn demo_config(
    listen: SocketAddr,
    metrics: SocketAddr,
    issuer: &str,
    upstream: SocketAddr,
) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
realm = "demo"
shutdown_grace = "1s"
[metrics]
listen = "{metrics}"
[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
require_typ = true
[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstreams = ["{upstream}"]
scopes = ["orders:read"]
[[routes]]
name = "orders-write"
path_prefix = "/orders"
methods = ["POST", "PUT", "DELETE"]
upstreams = ["{upstream}"]
scopes = ["orders:write"]
[[routes]]
name = "public"
path_prefix = "/public"
upstreams = ["{upstream}"]
auth = "none"
"#
    )
}

fn instructions(gateway: SocketAddr, metrics: SocketAddr, issuer: &str) -> String {
    format!(
        r#"Portcullis development mode. NOT FOR PRODUCTION: a throwaway issuer with an in-memory key.

  gateway  http://{gateway}   GET /orders needs orders:read, POST /orders needs orders:write, /public is open
  issuer   {issuer}   discovery, JWKS, POST /token (client "{CLIENT_ID}", secret "{CLIENT_SECRET}")
  metrics  http://{metrics}/metrics

Try:
  TOKEN=$(curl -s {issuer}/token -d grant_type=client_credentials -d client_id={CLIENT_ID} -d client_secret={CLIENT_SECRET} -d scope=orders:read | sed -E 's/.*"access_token":"([^"]*)".*/\1/')
  curl -i -H "Authorization: Bearer $TOKEN" http://{gateway}/orders/1           # 200: the upstream echoes the X-Auth-* headers it got
  curl -i http://{gateway}/orders/1                                              # 401: no token
  curl -i -X POST -H "Authorization: Bearer $TOKEN" http://{gateway}/orders      # 403: needs orders:write
Stop with Ctrl-C."#
    )
}

/// The development issuer.
struct DevIssuer {
    issuer: String,
    key: DevKey,
}

impl Handler for DevIssuer {
    async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        match (req.method().clone(), req.uri().path()) {
            (Method::GET, "/.well-known/openid-configuration") => json_reply(
                StatusCode::OK,
                json!({
                    "issuer": self.issuer,
                    "jwks_uri": format!("{}/jwks", self.issuer),
                    "token_endpoint": format!("{}/token", self.issuer),
                    "grant_types_supported": ["client_credentials"],
                    "scopes_supported": SCOPES,
                }),
            ),
            (Method::GET, "/jwks") => {
                json_reply(StatusCode::OK, crate::devkeys::jwks(&[&self.key]))
            }
            (Method::POST, "/token") => self.token(&req),
            _ => json_reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
        }
    }
}

impl DevIssuer {
    /// RFC 6749 §4.4 client credentials, client authentication in the body or by HTTP Basic.
    fn token(&self, req: &Request<Bytes>) -> Response<Bytes> {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(req.body())
            .into_owned()
            .collect();
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let basic = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| basic_credentials(v.as_bytes()));
        let (client_id, secret) = basic.unwrap_or((
            field("client_id").unwrap_or_default(),
            field("client_secret").unwrap_or_default(),
        ));
        if client_id != CLIENT_ID || secret != CLIENT_SECRET {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                json!({ "error": "invalid_client" }),
            );
        }
        if field("grant_type").as_deref() != Some("client_credentials") {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "unsupported_grant_type" }),
            );
        }
        let scope = field("scope").unwrap_or_else(|| "orders:read".into());
        if scope.split(' ').any(|s| !SCOPES.contains(&s)) {
            return json_reply(StatusCode::BAD_REQUEST, json!({ "error": "invalid_scope" }));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let token = self.key.sign(&json!({
            "iss": self.issuer, "sub": client_id, "client_id": client_id, "aud": AUDIENCE,
            "scope": scope, "iat": now, "exp": now + TOKEN_LIFETIME_SECS, "jti": uuid::Uuid::new_v4().to_string(),
        }));
        json_reply(
            StatusCode::OK,
            json!({ "access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_SECS, "scope": scope }),
        )
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let encoded = value.strip_prefix(b"Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// The demo upstream: shows what the gateway forwarded.
struct DemoUpstream;

impl Handler for DemoUpstream {
    async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        json_reply(
            StatusCode::OK,
            json!({
                "message": "hello from the demo upstream",
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "x-auth-subject": header("x-auth-subject"),
                "x-auth-client-id": header("x-auth-client-id"),
                "x-auth-scopes": header("x-auth-scopes"),
                "x-auth-issuer": header("x-auth-issuer"),
            }),
        )
    }
}

fn json_reply(status: StatusCode, body: Value) -> Response<Bytes> {
    Synthetic::json(status.as_u16(), Bytes::from(body.to_string())).render()
}
