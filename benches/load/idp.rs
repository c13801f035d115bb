//! The load benchmark's identity provider and token mint (run by `benches/load/run.py`).
//!
//! `load_idp <dir> <count>` generates an RS256 and an ES256 signing key, serves their JWKS at
//! `/jwks` and an RFC 7662 introspection endpoint at `/introspect` on 127.0.0.1:0, and writes
//! the tokens the scenarios cycle through into `<dir>`, one per line:
//!
//! - `reused.txt`: one RS256 token (the common case: a client reusing its access token);
//! - `rs256.txt`, `es256.txt`: `count` distinct valid tokens each;
//! - `forged.txt`: the RS256 tokens, each with its signature altered (the rejection path);
//! - `opaque.txt`: `count / 10` opaque tokens that introspection calls active;
//! - `dpop-token.txt`: one RS256 token bound to a DPoP client key (`cnf.jkt`, RFC 9449).
//!
//! `POST /proofs?count=N&out=FILE` writes `N` fresh DPoP proofs by that client key for
//! `GET http://bench.example/dpop` with that token, one per line, each with its own `jti`, and
//! answers when the file is complete: the DPoP scenario asks for a new file before each run,
//! since a proof is accepted once.
//!
//! Then it prints `ready http://127.0.0.1:PORT` and serves until killed. `GET /stats` answers
//! `{"jwks":N,"introspect":N}`: how often each endpoint was called, so the script can show that
//! the caches held.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::config::Algorithm;
use portcullis::devkeys::{jwks, DevKey};
use serde_json::json;
use tokio::net::TcpListener;

/// The audience and scope every minted token carries; the benchmark's routes require them.
const AUDIENCE: &str = "bench-api";
const SCOPE: &str = "orders:read orders:write";
/// Opaque tokens the introspection endpoint calls active start with this.
const OPAQUE_PREFIX: &str = "opq-";

#[derive(Default)]
struct Counters {
    jwks: AtomicU64,
    introspect: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(count)) = (args.next(), args.next().and_then(|c| c.parse().ok())) else {
        eprintln!("usage: load_idp <output dir> <distinct tokens per scenario>");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());

    let rs = DevKey::generate(Algorithm::RS256, "rs");
    let es = DevKey::generate(Algorithm::ES256, "es");
    let mint = |key: &DevKey| (0..count).map(|i| key.sign(&claims(&issuer, i))).collect();
    let (rs256, es256): (Vec<String>, Vec<String>) = std::thread::scope(|s| {
        let es256 = s.spawn(|| mint(&es));
        (mint(&rs), es256.join().unwrap())
    });
    let write = |name: &str, tokens: &[String]| {
        std::fs::write(dir.join(name), tokens.join("\n") + "\n").unwrap();
    };
    write("reused.txt", &rs256[..1]);
    write(
        "forged.txt",
        &rs256.iter().map(|t| forge(t)).collect::<Vec<_>>(),
    );
    write("rs256.txt", &rs256);
    write("es256.txt", &es256);
    write(
        "opaque.txt",
        &(0..count.div_ceil(10))
            .map(|i| format!("{OPAQUE_PREFIX}{i:08}-{}", "x".repeat(32)))
            .collect::<Vec<_>>(),
    );

    let client = Arc::new(DevKey::generate(Algorithm::ES256, "dpop-client"));
    let mut bound = claims(&issuer, count);
    bound["cnf"] = json!({ "jkt": client.thumbprint() });
    let dpop_token: Arc<str> = Arc::from(rs.sign(&bound));
    write("dpop-token.txt", &[dpop_token.to_string()]);

    let keys = jwks(&[&rs, &es]).to_string();
    let counters = Arc::new(Counters::default());
    println!("ready {issuer}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (keys, counters, issuer) = (keys.clone(), counters.clone(), issuer.clone());
        let (client, dpop_token) = (client.clone(), dpop_token.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (keys, counters, issuer) = (keys.clone(), counters.clone(), issuer.clone());
                let (client, dpop_token) = (client.clone(), dpop_token.clone());
                async move {
                    if req.uri().path() == "/proofs" {
                        return Ok::<_, Infallible>(proofs(&req, client, dpop_token).await);
                    }
                    Ok::<_, Infallible>(answer(req, &keys, &counters, &issuer).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `POST /proofs?count=N&out=FILE`: N fresh proofs for the DPoP scenario, one per line.
async fn proofs(
    req: &Request<Incoming>,
    client: Arc<DevKey>,
    token: Arc<str>,
) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or_default();
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let (Some(count), Some(out)) = (param("count").and_then(|c| c.parse().ok()), param("out"))
    else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .unwrap();
    };
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let file = std::fs::File::create(out).unwrap();
        let mut w = std::io::BufWriter::new(file);
        for _ in 0..count {
            let proof = client.dpop_proof("GET", "http://bench.example/dpop", &token, &json!({}));
            writeln!(w, "{proof}").unwrap();
        }
        w.flush().unwrap();
    })
    .await
    .unwrap();
    Response::new(Full::new(Bytes::from_static(b"{}")))
}

/// The token with one character in the middle of its signature changed: it still decodes, and
/// its signature no longer verifies (a mid-string base64url character carries 6 whole bits).
fn forge(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 20;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The claims of the `i`th token: valid for an hour, unique by `jti`.
fn claims(issuer: &str, i: usize) -> serde_json::Value {
    let now = now();
    json!({ "iss": issuer, "sub": format!("user-{i}"), "aud": AUDIENCE, "scope": SCOPE,
        "client_id": "bench-client", "iat": now, "exp": now + 3600, "jti": format!("t{i}") })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn answer(
    req: Request<Incoming>,
    keys: &str,
    counters: &Counters,
    issuer: &str,
) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/jwks" => {
            counters.jwks.fetch_add(1, Ordering::Relaxed);
            keys.to_owned()
        }
        "/introspect" => {
            counters.introspect.fetch_add(1, Ordering::Relaxed);
            let form = req.into_body().collect().await.unwrap().to_bytes();
            let active = url::form_urlencoded::parse(&form)
                .any(|(k, v)| k == "token" && v.starts_with(OPAQUE_PREFIX));
            if active {
                json!({ "active": true, "iss": issuer, "sub": "opaque-user", "aud": AUDIENCE,
                    "scope": SCOPE, "client_id": "bench-client", "exp": now() + 3600 })
                .to_string()
            } else {
                json!({ "active": false }).to_string()
            }
        }
        "/stats" => json!({
            "jwks": counters.jwks.load(Ordering::Relaxed),
            "introspect": counters.introspect.load(Ordering::Relaxed),
        })
        .to_string(),
        _ => {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
