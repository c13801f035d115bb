//! The soak (`make soak`): the release `portcullis` binary under mixed traffic for a bounded time
//! (default 10 minutes) on loopback, while the issuer rotates its signing key and the upstream
//! restarts. It asserts what must hold however long a gateway runs:
//!
//! - **zero wrong decisions**: every answer is the one the token deserves (200, 401, 403), or a
//!   5xx while the upstream restarts; and every request the upstream receives carries a token
//!   that is valid, unexpired and holds the route's scope (the routes forward the token, and the
//!   upstream checks it against the mint's own register);
//! - **zero lost requests**: the client's 2xx count equals the upstream's;
//! - **flat memory**: the gateway's RSS in the last minute is within 16 MiB of the first.
//!
//! `soak [--seconds N] [--concurrency N] [--binary PATH] [--rotate-every S] [--restart-every S]`
//! (defaults 600, 32, target/release/portcullis, 60, 90); prints a Markdown report (also
//! written to `target/soak-report.md`) and exits 1 when an assertion fails.
//!
//! Traffic, each picked at random per request: valid JWTs for GET (read) and POST (write), a
//! read-only token on POST (403), expired and forged JWTs, no token, active and inactive opaque
//! tokens. Valid tokens are minted in fresh pools at every key rotation (once a minute), so the
//! caches keep meeting new tokens; each key is published one rotation before it signs and stays
//! published for one rotation after. The
//! memory check compares the first and the last minute, so it needs a run of two minutes or more.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::config::Algorithm;
use portcullis::devkeys::{jwks, DevKey};
use serde_json::json;
use std::io::BufRead;
use tokio::net::TcpListener;
use tokio::sync::watch;

const AUDIENCE: &str = "soak-api";
const POOL: usize = 200;
const MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;

/// What a request is, and the status it deserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    ValidRead,
    ValidWrite,
    ReadOnlyWrite,
    Expired,
    Forged,
    Missing,
    OpaqueActive,
    OpaqueInactive,
}

const KINDS: [Kind; 8] = [
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
    fn expected(self) -> u16 {
        match self {
            Kind::ValidRead | Kind::ValidWrite | Kind::OpaqueActive => 200,
            Kind::ReadOnlyWrite => 403,
            _ => 401,
        }
    }
    fn post(self) -> bool {
        matches!(self, Kind::ValidWrite | Kind::ReadOnlyWrite)
    }
}

/// The tokens in use, replaced at every rotation, and the register of every token minted valid:
/// its scope and expiry, which the upstream checks.
#[derive(Default)]
struct Mint {
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
    fn rotate(&self, issuer: &str) {
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

    fn pick(&self, kind: Kind, r: u64) -> String {
        let pool = self.pools.lock().unwrap()[&kind].clone();
        pool[r as usize % pool.len()].clone()
    }
}

/// One character in the middle of the signature changed: it decodes, and does not verify.
fn forge(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 20;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn now() -> u64 {
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
struct UpstreamCounts {
    ok: AtomicU64,
    /// Requests that reached the upstream without a valid token holding the route's scope.
    wrong: AtomicU64,
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
struct IdpCounts {
    jwks: AtomicU64,
    introspect: AtomicU64,
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

/// Per kind: answers as deserved, 5xx while the upstream restarts, and wrong answers.
#[derive(Default, Clone)]
struct Tally {
    sent: u64,
    right: u64,
    unavailable: u64,
    wrong: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Args {
    seconds: u64,
    concurrency: usize,
    binary: String,
    rotate_every: Duration,
    restart_every: Duration,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 600,
        concurrency: 32,
        binary: "target/release/portcullis".into(),
        rotate_every: Duration::from_secs(60),
        restart_every: Duration::from_secs(90),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--binary" => a.binary = value,
            "--rotate-every" => {
                a.rotate_every = Duration::from_secs(value.parse().expect("--rotate-every SECONDS"))
            }
            "--restart-every" => {
                a.restart_every =
                    Duration::from_secs(value.parse().expect("--restart-every SECONDS"))
            }
            other => panic!("unknown option {other}"),
        }
    }
    a
}

#[tokio::main]
async fn main() {
    let args = args();
    let mint = Arc::new(Mint::default());

    let idp_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", idp_listener.local_addr().unwrap());
    mint.rotate(&issuer);
    let idp_counts = Arc::new(IdpCounts::default());
    let (_idp_stop, idp_stop_rx) = watch::channel(false);
    {
        let (issuer, mint, counts) = (issuer.clone(), mint.clone(), idp_counts.clone());
        tokio::spawn(serve(idp_listener, idp_stop_rx, move |req| {
            idp(req, issuer.clone(), mint.clone(), counts.clone())
        }));
    }

    let up_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr: SocketAddr = up_listener.local_addr().unwrap();
    let up_counts = Arc::new(UpstreamCounts::default());
    let start_upstream = |listener: TcpListener| {
        let (stop, stop_rx) = watch::channel(false);
        let (mint, counts) = (mint.clone(), up_counts.clone());
        let task = tokio::spawn(serve(listener, stop_rx, move |req| {
            upstream(req, mint.clone(), counts.clone())
        }));
        (stop, task)
    };
    let mut up = start_upstream(up_listener);

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
cache_ttl = "30s"
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
    let mut gateway = std::process::Command::new(&args.binary)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn,portcullis=info,portcullis::access=off")
        .env("SOAK_INTROSPECTION_SECRET", "soak-secret")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build --release)", args.binary));
    let pid = gateway.id();
    // `... listening proxy=ADDR metrics=ADDR`; the rest of the log is copied to our stderr.
    let log = std::io::BufReader::new(gateway.stderr.take().unwrap());
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        for line in log.lines().map_while(Result::ok) {
            let addr = line
                .split("proxy=")
                .nth(1)
                .filter(|_| line.contains("listening"));
            match (addr, addr_tx.take()) {
                (Some(rest), Some(tx)) => {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().parse().unwrap());
                }
                (_, tx) => {
                    addr_tx = tx;
                    eprintln!("gateway: {line}");
                }
            }
        }
    });
    let gateway_addr = tokio::time::timeout(Duration::from_secs(30), addr_rx)
        .await
        .expect("the gateway listens within 30 s")
        .expect("the gateway exited before listening");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .unwrap();
    let ready = async {
        loop {
            let r = client
                .get(format!("http://{gateway_addr}/orders/1"))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 401) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the gateway answers within 30 s");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let tallies: Arc<Mutex<HashMap<Kind, Tally>>> = Arc::default();
    let examples: Arc<Mutex<Vec<String>>> = Arc::default();
    let client_ok = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let (client, mint, tallies, examples, client_ok) = (
            client.clone(),
            mint.clone(),
            tallies.clone(),
            examples.clone(),
            client_ok.clone(),
        );
        workers.spawn(async move {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            while Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let kind = KINDS[(rng % KINDS.len() as u64) as usize];
                let token = mint.pick(kind, rng >> 8);
                let url = format!("http://{gateway_addr}/orders/{}", rng % 1000);
                let mut req = if kind.post() {
                    client.post(url).body("{}")
                } else {
                    client.get(url)
                };
                if !token.is_empty() {
                    req = req.bearer_auth(&token);
                }
                let mut error = None;
                let status = match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        if s != kind.expected() {
                            error = r
                                .headers()
                                .get("www-authenticate")
                                .map(|v| format!("{v:?}"));
                        }
                        let _ = r.bytes().await;
                        s
                    }
                    Err(e) => {
                        error = Some(format!("{e:?}"));
                        0
                    }
                };
                if (200..300).contains(&status) {
                    client_ok.fetch_add(1, Ordering::SeqCst);
                }
                let mut t = tallies.lock().unwrap();
                let t = t.entry(kind).or_default();
                t.sent += 1;
                if status == kind.expected() {
                    t.right += 1;
                } else if matches!(status, 0 | 502..=504) && kind.expected() == 200 {
                    t.unavailable += 1;
                } else {
                    t.wrong += 1;
                    let mut e = examples.lock().unwrap();
                    if e.len() < 10 {
                        e.push(format!(
                            "{kind:?}: expected {}, got {status} {}",
                            kind.expected(),
                            error.unwrap_or_default()
                        ));
                    }
                }
            }
        });
    }

    let (mut rotations, mut restarts) = (0, 0);
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let mut next_rotation = started + args.rotate_every;
    let mut next_restart = started + args.restart_every;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss.push((started.elapsed().as_secs(), rss_kib(pid)));
        if Instant::now() >= next_rotation {
            mint.rotate(&issuer);
            rotations += 1;
            next_rotation += args.rotate_every;
        }
        if Instant::now() >= next_restart {
            let (stop, task) = up;
            let _ = stop.send(true);
            let _ = task.await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            up = start_upstream(
                TcpListener::bind(up_addr)
                    .await
                    .expect("rebind the upstream port"),
            );
            restarts += 1;
            next_restart += args.restart_every;
        }
    }
    while workers.join_next().await.is_some() {}
    // The upstream counts a request before its answer is written: let in-flight answers land.
    let (stop, task) = up;
    let _ = stop.send(true);
    let _ = task.await;
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = std::fs::remove_file(&config_path);

    let tallies = tallies.lock().unwrap().clone();
    let total = |f: fn(&Tally) -> u64| tallies.values().map(f).sum::<u64>();
    let (sent, wrong, unavailable) = (
        total(|t| t.sent),
        total(|t| t.wrong),
        total(|t| t.unavailable),
    );
    let client_ok = client_ok.load(Ordering::SeqCst);
    let upstream_ok = up_counts.ok.load(Ordering::SeqCst);
    let upstream_wrong = up_counts.wrong.load(Ordering::SeqCst);
    let window = |from: u64, to: u64| {
        rss.iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    };
    let secs = started.elapsed().as_secs();
    let (first, last) = (window(0, 60), window(secs.saturating_sub(60), secs + 1));
    let growth = last.saturating_sub(first);

    let mut report = format!(
        "# Soak report\n\n{secs} s, {} concurrent clients, {rotations} key rotations, {restarts} upstream restarts.\n\n\
         | kind | sent | as deserved | 5xx while restarting | wrong |\n|---|---:|---:|---:|---:|\n",
        args.concurrency
    );
    for kind in KINDS {
        let t = tallies.get(&kind).cloned().unwrap_or_default();
        report += &format!(
            "| {kind:?} ({}) | {} | {} | {} | {} |\n",
            kind.expected(),
            t.sent,
            t.right,
            t.unavailable,
            t.wrong
        );
    }
    report += &format!(
        "| **all** | {sent} | {} | {unavailable} | {wrong} |\n\n\
         - requests: {sent} in {secs} s ({:.0}/s)\n\
         - client 2xx: {client_ok}; upstream 200: {upstream_ok}; lost: {}\n\
         - requests reaching the upstream without a valid token for the route: {upstream_wrong}\n\
         - key set fetches: {}; introspection calls: {}\n\
         - gateway RSS: first minute max {} KiB, last minute max {} KiB, growth {} KiB (limit {} KiB)\n",
        total(|t| t.right),
        sent as f64 / secs.max(1) as f64,
        client_ok.abs_diff(upstream_ok),
        idp_counts.jwks.load(Ordering::SeqCst),
        idp_counts.introspect.load(Ordering::SeqCst),
        first,
        last,
        growth,
        MAX_RSS_GROWTH_KIB,
    );
    for e in examples.lock().unwrap().iter() {
        report += &format!("- wrong: {e}\n");
    }
    let failures: Vec<&str> = [
        (wrong > 0, "wrong decisions"),
        (
            upstream_wrong > 0,
            "tokens the upstream should not have seen",
        ),
        (client_ok != upstream_ok, "lost requests"),
        (growth > MAX_RSS_GROWTH_KIB, "memory growth"),
    ]
    .into_iter()
    .filter_map(|(failed, what)| failed.then_some(what))
    .collect();
    report += &if failures.is_empty() {
        "\nResult: PASS\n".to_owned()
    } else {
        format!("\nResult: FAIL ({})\n", failures.join(", "))
    };
    print!("{report}");
    let _ = std::fs::write("target/soak-report.md", &report);
    std::process::exit(i32::from(!failures.is_empty()));
}
