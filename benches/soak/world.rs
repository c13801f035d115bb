//! The soak's and the flood's world on loopback: the issuer (discovery, a key set that rotates,
//! introspection), the token mint and its register, an upstream that checks every token it is
//! given, and the gateway binary in front.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::config::Algorithm;
use portcullis::devkeys::{jwks, DevKey};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const AUDIENCE: &str = "soak-api";
const POOL: usize = 200;

/// What a request is, and the status it deserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ValidRead,
    ValidWrite,
    ReadOnlyWrite,
    Expired,
    Forged,
    Missing,
    OpaqueActive,
    OpaqueInactive,
}

pub const KINDS: [Kind; 8] = [
    Kind::ValidRead,
    Kind::ValidWrite,
    Kind::ReadOnlyWrite,
    Kind::Expired,
    Kind::Forged,
    Kind::Missing,
    Kind::OpaqueActive,
    Kind::OpaqueInactive,
];

impl Kind {
    pub fn expected(self) -> u16 {
        match self {
            Kind::ValidRead | Kind::ValidWrite | Kind::OpaqueActive => 200,
            Kind::ReadOnlyWrite => 403,
            _ => 401,
        }
    }
    pub fn post(self) -> bool {
        matches!(self, Kind::ValidWrite | Kind::ReadOnlyWrite)
    }
}

/// The tokens in use, replaced at every rotation, and the register of every token minted valid:
/// its scope and expiry, which the upstream checks.
#[derive(Default)]
pub struct Mint {
    pools: Mutex<HashMap<Kind, Arc<Vec<String>>>>,
    valid: Mutex<HashMap<String, (String, u64)>>,
    /// Opaque tokens the introspection endpoint calls active.
    active: Mutex<HashSet<String>>,
    /// The published keys: the next, the signing one, the previous.
    keys: Mutex<Vec<Arc<DevKey>>>,
    jwks: Mutex<String>,
    generation: AtomicU64,
}

impl Mint {
    /// A new signing key, published beside the previous one; fresh token pools signed by it.
    ///
    /// As identity providers do, each key is published one rotation before it signs: the key
    /// set holds the next key, the signing key and the previous one.
    pub fn rotate(&self, issuer: &str) {
        let n = self.generation.fetch_add(1, Ordering::SeqCst);
        let mut keys = self.keys.lock().unwrap();
        if keys.is_empty() {
            keys.push(Arc::new(DevKey::generate(Algorithm::RS256, "k0")));
        }
        keys.insert(
            0,
            Arc::new(DevKey::generate(Algorithm::RS256, &format!("k{}", n + 1))),
        );
        keys.truncate(3);
        let key = keys[1].clone();
        let published: Vec<&DevKey> = keys.iter().map(|k| k.as_ref()).collect();
        *self.jwks.lock().unwrap() = jwks(&published).to_string();
        drop(keys);
        let now = now();
        let claims = |i: usize, scope: &str, exp: u64| {
            json!({ "iss": issuer, "sub": format!("user-{n}-{i}"), "aud": AUDIENCE, "scope": scope,
                "client_id": "soak", "iat": now, "exp": exp, "jti": format!("{n}-{i}-{scope}") })
        };
        let mut pools = HashMap::new();
        let mut valid = Vec::new();
        for (kind, scope) in [
            (Kind::ValidRead, "orders:read"),
            (Kind::ValidWrite, "orders:read orders:write"),
            (Kind::ReadOnlyWrite, "orders:read"),
        ] {
            let tokens: Vec<String> = (0..POOL)
                .map(|i| key.sign(&claims(i, scope, now + 600 + (i as u64 % 300))))
                .collect();
            valid.extend(tokens.iter().map(|t| (t.clone(), scope, now + 600)));
            pools.insert(kind, Arc::new(tokens));
        }
        let expired = (0..POOL)
            .map(|i| key.sign(&claims(i, "orders:read", now - 120)))
            .collect();
        pools.insert(Kind::Expired, Arc::new(expired));
        let forged = pools[&Kind::ValidRead].iter().map(|t| forge(t)).collect();
        pools.insert(Kind::Forged, Arc::new(forged));
        pools.insert(Kind::Missing, Arc::new(vec![String::new()]));
        let active: Vec<String> = (0..POOL)
            .map(|i| format!("soak-opq-{n}-{i}-active"))
            .collect();
        valid.extend(active.iter().map(|t| (t.clone(), "orders:read", now + 600)));
        self.active.lock().unwrap().extend(active.iter().cloned());
        pools.insert(Kind::OpaqueActive, Arc::new(active));
        let inactive = (0..POOL)
            .map(|i| format!("soak-opq-{n}-{i}-gone"))
            .collect();
        pools.insert(Kind::OpaqueInactive, Arc::new(inactive));

        let mut register = self.valid.lock().unwrap();
        for (token, scope, exp) in valid {
            register.insert(token, (scope.to_owned(), exp));
        }
        *self.pools.lock().unwrap() = pools;
    }

    pub fn pick(&self, kind: Kind, r: u64) -> String {
        let pool = self.pools.lock().unwrap()[&kind].clone();
        pool[r as usize % pool.len()].clone()
    }
}

/// One character in the middle of the signature changed: it decodes, and does not verify.
pub fn forge(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 20;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Serve `handler` on `listener` until `stop` changes; then finish in-flight requests
/// (graceful shutdown of every connection) and return.
async fn serve<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (handler, mut stop) = (handler.clone(), stop.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

#[derive(Default)]
pub struct UpstreamCounts {
    pub ok: AtomicU64,
    /// Requests that reached the upstream without a valid token holding the route's scope.
    pub wrong: AtomicU64,
}

/// The upstream: 200 when the forwarded token is in the mint's register, unexpired, with the
/// route's scope; anything else is a wrong decision by the gateway, answered 500.
async fn upstream(
    req: Request<Incoming>,
    mint: Arc<Mint>,
    counts: Arc<UpstreamCounts>,
) -> Response<Full<Bytes>> {
    let scope = if req.method() == "POST" {
        "orders:write"
    } else {
        "orders:read"
    };
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = mint
        .valid
        .lock()
        .unwrap()
        .get(token)
        .is_some_and(|(scopes, exp)| *exp > now() && scopes.split(' ').any(|s| s == scope));
    let _ = req.into_body().collect().await;
    if ok {
        counts.ok.fetch_add(1, Ordering::SeqCst);
        reply(200, "{}".into())
    } else {
        counts.wrong.fetch_add(1, Ordering::SeqCst);
        reply(500, "{\"wrong\":true}".into())
    }
}

#[derive(Default)]
pub struct IdpCounts {
    pub jwks: AtomicU64,
    pub introspect: AtomicU64,
    /// Introspection calls being answered now, and the most ever at once.
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// Each introspection call takes this long (the flood sets it, so calls overlap).
    pub introspect_delay_ms: AtomicU64,
}

async fn idp(
    req: Request<Incoming>,
    issuer: String,
    mint: Arc<Mint>,
    counts: Arc<IdpCounts>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/.well-known/openid-configuration" => reply(
            200,
            json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                "introspection_endpoint": format!("{issuer}/introspect") })
            .to_string(),
        ),
        "/jwks" => {
            counts.jwks.fetch_add(1, Ordering::SeqCst);
            reply(200, mint.jwks.lock().unwrap().clone())
        }
        "/introspect" => {
            counts.introspect.fetch_add(1, Ordering::SeqCst);
            let now_in = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            counts.peak_in_flight.fetch_max(now_in, Ordering::SeqCst);
            let delay = counts.introspect_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            counts.in_flight.fetch_sub(1, Ordering::SeqCst);
            let form = req.into_body().collect().await.unwrap().to_bytes();
            let token = url::form_urlencoded::parse(&form)
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if mint.active.lock().unwrap().contains(&token) {
                reply(
                    200,
                    json!({ "active": true, "iss": issuer, "sub": "opaque-user",
                    "aud": AUDIENCE, "scope": "orders:read", "client_id": "soak",
                    "token_type": "Bearer", "exp": now() + 600 })
                    .to_string(),
                )
            } else {
                reply(200, "{\"active\":false}".into())
            }
        }
        _ => reply(404, "{}".into()),
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Append the verdict to `report` (PASS, or FAIL naming each failed check), print it, write it
/// to `path`, stop the gateway and exit: 1 when a check failed.
pub fn conclude(world: World, mut report: String, checks: Vec<(bool, String)>, path: &str) -> ! {
    let failures: Vec<String> = checks
        .into_iter()
        .filter_map(|(failed, what)| failed.then_some(what))
        .collect();
    report += &if failures.is_empty() {
        "\nResult: PASS\n".to_owned()
    } else {
        format!("\nResult: FAIL ({})\n", failures.join("; "))
    };
    print!("{report}");
    let _ = std::fs::write(path, &report);
    drop(world); // stops the gateway: process::exit runs no destructors
    std::process::exit(i32::from(!failures.is_empty()));
}

/// Everything but the client, running.
pub struct World {
    pub mint: Arc<Mint>,
    pub issuer: String,
    pub idp_counts: Arc<IdpCounts>,
    pub up_counts: Arc<UpstreamCounts>,
    up_addr: SocketAddr,
    up: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    _idp_stop: watch::Sender<bool>,
    gateway: std::process::Child,
    pub pid: u32,
    pub proxy: SocketAddr,
    pub metrics: SocketAddr,
    config_path: std::path::PathBuf,
}

impl World {
    /// Start the issuer and the upstream, then `binary` in front of them; `introspection`
    /// is extra TOML for the `[introspection]` table.
    pub async fn start(binary: &str, introspection: &str) -> World {
        let mint = Arc::new(Mint::default());
        let idp_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", idp_listener.local_addr().unwrap());
        mint.rotate(&issuer);
        let idp_counts = Arc::new(IdpCounts::default());
        let (idp_stop, idp_stop_rx) = watch::channel(false);
        {
            let (issuer, mint, counts) = (issuer.clone(), mint.clone(), idp_counts.clone());
            tokio::spawn(serve(idp_listener, idp_stop_rx, move |req| {
                idp(req, issuer.clone(), mint.clone(), counts.clone())
            }));
        }
        let up_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up_listener.local_addr().unwrap();

        let config = format!(
            r#"[server]
listen = "127.0.0.1:0"
threads = 1
[metrics]
listen = "127.0.0.1:0"
[upstream]
health_check_interval = "1s"
[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
leeway = "5s"
[introspection]
issuer = "{issuer}"
client_id = "soak"
client_secret_env = "SOAK_INTROSPECTION_SECRET"
audiences = ["{AUDIENCE}"]
{introspection}
[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET"]
upstreams = ["{up_addr}"]
scopes = ["orders:read"]
forward_token = true
[[routes]]
name = "orders-write"
path_prefix = "/orders"
methods = ["POST"]
upstreams = ["{up_addr}"]
scopes = ["orders:write"]
forward_token = true
"#
        );
        let config_path = std::env::temp_dir().join(format!("soak-{}.toml", std::process::id()));
        std::fs::write(&config_path, config).unwrap();
        let mut gateway = std::process::Command::new(binary)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn,portcullis=info,portcullis::access=off")
            .env("SOAK_INTROSPECTION_SECRET", "soak-secret")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (build it: cargo build --release)"));
        let pid = gateway.id();
        // `... listening proxy=ADDR metrics=ADDR`; the rest of the log goes to our stderr.
        let log = std::io::BufReader::new(gateway.stderr.take().unwrap());
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<(SocketAddr, SocketAddr)>();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in log.lines().map_while(Result::ok) {
                let field = |name: &str| -> Option<SocketAddr> {
                    let rest = line.split(&format!("{name}=")).nth(1)?;
                    rest.split_whitespace().next()?.parse().ok()
                };
                match (field("proxy"), field("metrics"), addr_tx.take()) {
                    (Some(p), Some(m), Some(tx)) if line.contains("listening") => {
                        let _ = tx.send((p, m));
                    }
                    (_, _, tx) => {
                        addr_tx = tx;
                        eprintln!("gateway: {line}");
                    }
                }
            }
        });
        let (proxy, metrics) = tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
            .expect("the gateway listens within 30 s")
            .expect("the gateway exited before listening");
        let mut world = World {
            mint,
            issuer,
            idp_counts,
            up_counts: Arc::new(UpstreamCounts::default()),
            up_addr,
            up: None,
            _idp_stop: idp_stop,
            gateway,
            pid,
            proxy,
            metrics,
            config_path,
        };
        world.start_upstream(up_listener);
        // Ready: listening, and the issuer's keys loaded.
        let readyz = format!("http://{}/readyz", world.metrics);
        let ready = async {
            while !reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 200) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("the gateway is ready within 30 s");
        world
    }

    fn start_upstream(&mut self, listener: TcpListener) {
        let (stop, stop_rx) = watch::channel(false);
        let (mint, counts) = (self.mint.clone(), self.up_counts.clone());
        let task = tokio::spawn(serve(listener, stop_rx, move |req| {
            upstream(req, mint.clone(), counts.clone())
        }));
        self.up = Some((stop, task));
    }

    /// Stop the upstream, letting its in-flight requests finish.
    pub async fn stop_upstream(&mut self) {
        if let Some((stop, task)) = self.up.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Stop the upstream, and start it again on the same port after `pause`.
    pub async fn restart_upstream(&mut self, pause: Duration) {
        self.stop_upstream().await;
        tokio::time::sleep(pause).await;
        let listener = TcpListener::bind(self.up_addr)
            .await
            .expect("rebind the upstream port");
        self.start_upstream(listener);
    }

    pub fn rotate(&self) {
        self.mint.rotate(&self.issuer);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}
