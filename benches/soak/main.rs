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

mod flood;
mod slowloris;
mod world;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use world::{rss_kib, Kind, World, KINDS};

const MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;

/// Per kind: answers as deserved, 5xx while the upstream restarts, and wrong answers.
#[derive(Default, Clone)]
struct Tally {
    sent: u64,
    right: u64,
    unavailable: u64,
    wrong: u64,
}

pub struct Args {
    /// Run the flood instead of the soak.
    flood: bool,
    /// Invalid JWTs in the flood's first phase; a tenth of it in the others.
    count: u64,
    /// Slow connections in the flood's slowloris phase.
    slowloris: usize,
    seconds: u64,
    concurrency: usize,
    binary: String,
    rotate_every: Duration,
    restart_every: Duration,
}

fn args() -> Args {
    let mut a = Args {
        flood: false,
        count: 1_000_000,
        slowloris: 1000,
        seconds: 600,
        concurrency: 32,
        binary: "target/release/portcullis".into(),
        rotate_every: Duration::from_secs(60),
        restart_every: Duration::from_secs(90),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--flood" {
            a.flood = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => a.count = value.parse().expect("--count N"),
            "--slowloris" => a.slowloris = value.parse().expect("--slowloris N"),
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
    if args.flood {
        flood::run(&args).await;
        return;
    }
    let mut world = World::start(&args.binary, "cache_ttl = \"30s\"").await;
    let (mint, gateway_addr, pid) = (world.mint.clone(), world.proxy, world.pid);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .unwrap();

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
            world.rotate();
            rotations += 1;
            next_rotation += args.rotate_every;
        }
        if Instant::now() >= next_restart {
            world.restart_upstream(Duration::from_millis(500)).await;
            restarts += 1;
            next_restart += args.restart_every;
        }
    }
    while workers.join_next().await.is_some() {}
    // The upstream counts a request before its answer is written: let in-flight answers land.
    world.stop_upstream().await;

    let tallies = tallies.lock().unwrap().clone();
    let total = |f: fn(&Tally) -> u64| tallies.values().map(f).sum::<u64>();
    let (sent, wrong, unavailable) = (
        total(|t| t.sent),
        total(|t| t.wrong),
        total(|t| t.unavailable),
    );
    let client_ok = client_ok.load(Ordering::SeqCst);
    let upstream_ok = world.up_counts.ok.load(Ordering::SeqCst);
    let upstream_wrong = world.up_counts.wrong.load(Ordering::SeqCst);
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
        world.idp_counts.jwks.load(Ordering::SeqCst),
        world.idp_counts.introspect.load(Ordering::SeqCst),
        first,
        last,
        growth,
        MAX_RSS_GROWTH_KIB,
    );
    for e in examples.lock().unwrap().iter() {
        report += &format!("- wrong: {e}\n");
    }
    let checks = [
        (wrong > 0, "wrong decisions"),
        (
            upstream_wrong > 0,
            "tokens the upstream should not have seen",
        ),
        (client_ok != upstream_ok, "lost requests"),
        (growth > MAX_RSS_GROWTH_KIB, "memory growth"),
    ]
    .map(|(failed, what)| (failed, what.to_owned()))
    .to_vec();
    world::conclude(world, report, checks, "target/soak-report.md");
}
