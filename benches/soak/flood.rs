//! The flood (`soak --flood [--count N]`): hostile traffic as fast as the client can send it,
//! and the bounds that must hold whatever arrives.
//!
//! 1. `count` (default 1,000,000) distinct JWTs naming the issuer and its signing key, each
//!    with a random signature: all 401, no key set fetch, RSS growth under 32 MiB.
//! 2. `count / 10` JWTs with random kids: all 401, key set fetches bounded by the refetch
//!    limit (one per `jwks_min_refetch`, 10 s).
//! 3. `count / 10` random opaque tokens, with `max_in_flight = 8` and a cache of 1,000: each is
//!    401 (or 503 when no introspection slot frees in time), never more than 8 calls at the
//!    authorization server at once, and the cache holds at most 1,000 entries.
//! 4. `--slowloris N` (default 1,000) connections sending a request head one line per second,
//!    against the default `client_header_timeout` (10 s), while four clients send valid
//!    requests: every slow connection closed within 15 s, every normal request a 200.
//! 5. `/metrics` afterwards holds no label value from any of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::world::{now, rss_kib, Kind, World, AUDIENCE};
use crate::Args;

const MAX_RSS_GROWTH_KIB: u64 = 32 * 1024;

/// What one phase saw.
struct Phase {
    name: &'static str,
    sent: u64,
    secs: f64,
    statuses: BTreeMap<u16, u64>,
    rss_before: u64,
    rss_peak: u64,
    jwks_fetches: u64,
    introspections: u64,
}

/// Send `count` requests, each with the token `make(i, random)`, from `concurrency` tasks.
async fn blast(
    world: &World,
    name: &'static str,
    count: u64,
    concurrency: usize,
    make: impl Fn(u64, u64) -> String + Send + Sync + 'static,
) -> Phase {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let (jwks0, intro0) = (
        world.idp_counts.jwks.load(Ordering::SeqCst),
        world.idp_counts.introspect.load(Ordering::SeqCst),
    );
    let rss_before = rss_kib(world.pid);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, pid) = (peak.clone(), world.pid);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (client, make, next, statuses, done) = (
            client.clone(),
            make.clone(),
            next.clone(),
            statuses.clone(),
            done.clone(),
        );
        let url = format!("http://{}/orders/1", world.proxy);
        workers.spawn(async move {
            let mut rng =
                0x2545_F491_4F6C_DD1Du64 ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut mine = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    break;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let status = match client.get(&url).bearer_auth(make(i, rng)).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                *mine.entry(status).or_insert(0) += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            let mut all = statuses.lock().unwrap();
            for (s, n) in mine {
                *all.entry(s).or_insert(0) += n;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    sampler.abort();
    let statuses = statuses.lock().unwrap().clone();
    Phase {
        name,
        sent: done.load(Ordering::SeqCst),
        secs: started.elapsed().as_secs_f64(),
        statuses,
        rss_before,
        rss_peak: peak.load(Ordering::SeqCst),
        jwks_fetches: world.idp_counts.jwks.load(Ordering::SeqCst) - jwks0,
        introspections: world.idp_counts.introspect.load(Ordering::SeqCst) - intro0,
    }
}

/// 342 random base64url characters: the length of an RS256 signature.
fn random_signature(mut r: u64) -> String {
    let mut bytes = [0u8; 256];
    for chunk in bytes.chunks_mut(8) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        chunk.copy_from_slice(&r.to_le_bytes());
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

pub async fn run(args: &Args) {
    let world = World::start(
        &args.binary,
        "max_in_flight = 8\ncache_capacity = 1000\nnegative_cache_ttl = \"10s\"",
    )
    .await;
    world
        .idp_counts
        .introspect_delay_ms
        .store(5, Ordering::SeqCst);
    let probe = reqwest::Client::new();
    let valid = world.mint.pick(Kind::ValidRead, 0);
    let status = probe
        .get(format!("http://{}/orders/1", world.proxy))
        .bearer_auth(&valid)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(
        status.ok(),
        Some(200),
        "a valid token passes before the flood"
    );

    let header = valid.split('.').next().unwrap().to_owned();
    let (issuer, n) = (world.issuer.clone(), args.count);
    let forged = blast(
        &world,
        "distinct JWTs, known kid, random signatures",
        n,
        args.concurrency,
        {
            let (header, issuer) = (header.clone(), issuer.clone());
            move |i, r| {
                let claims = json!({ "iss": issuer, "sub": "flood", "aud": AUDIENCE,
                "exp": now() + 600, "jti": i });
                format!("{header}.{}.{}", b64(&claims), random_signature(r))
            }
        },
    )
    .await;

    let kids: Arc<Mutex<Vec<String>>> = Arc::default();
    let random_kids = blast(&world, "JWTs with random kids", n / 10, args.concurrency, {
        let (issuer, kids) = (issuer.clone(), kids.clone());
        move |i, r| {
            let kid = format!("{r:016x}");
            if i < 100 {
                kids.lock().unwrap().push(kid.clone());
            }
            let header = json!({ "alg": "RS256", "kid": kid, "typ": "at+jwt" });
            let claims = json!({ "iss": issuer, "aud": AUDIENCE, "exp": now() + 600, "jti": i });
            format!("{}.{}.{}", b64(&header), b64(&claims), random_signature(r))
        }
    })
    .await;

    let opaque = blast(
        &world,
        "random opaque tokens",
        n / 10,
        args.concurrency,
        |i, r| format!("flood-{i}-{r:016x}{:016x}", r.rotate_left(17)),
    )
    .await;

    let slow = crate::slowloris::run(world.proxy, &valid, args.slowloris).await;

    let metrics = probe
        .get(format!("http://{}/metrics", world.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let cache_entries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_introspection_cache_entries "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(-1.0);
    let series = metrics.lines().filter(|l| !l.starts_with('#')).count();
    let leaked = kids
        .lock()
        .unwrap()
        .iter()
        .filter(|k| metrics.contains(k.as_str()))
        .count();
    let flood_label = metrics.contains("flood");
    let peak_in_flight = world.idp_counts.peak_in_flight.load(Ordering::SeqCst);

    let mut report = String::from("# Flood report\n\n| phase | requests | s | req/s | statuses | RSS before → peak (KiB) | key set fetches | introspection calls |\n|---|---:|---:|---:|---|---|---:|---:|\n");
    for p in [&forged, &random_kids, &opaque] {
        report += &format!(
            "| {} | {} | {:.1} | {:.0} | {:?} | {} → {} | {} | {} |\n",
            p.name,
            p.sent,
            p.secs,
            p.sent as f64 / p.secs,
            p.statuses,
            p.rss_before,
            p.rss_peak,
            p.jwks_fetches,
            p.introspections
        );
    }
    report += &format!(
        "\n- introspection calls at once, at most: {peak_in_flight} (max_in_flight 8)\n\
         - introspection cache entries after: {cache_entries} (capacity 1000)\n\
         - /metrics: {series} series; random kids in labels: {leaked}; `flood` in labels: {flood_label}\n"
    );
    report += &format!(
        "\n| slowloris connections | connect failures | closed after (s), first – last | never closed | normal requests meanwhile: 200 / other | normal p99 before → during (ms) |\n\
         |---:|---:|---|---:|---|---|\n| {} | {} | {:.1} – {:.1} | {} | {} / {} | {:.1} → {:.1} |\n",
        slow.connections,
        slow.connect_failures,
        slow.first_close(),
        slow.last_close(),
        slow.never_closed(),
        slow.normal_ok,
        slow.normal_failed,
        slow.p99_before_ms,
        slow.p99_during_ms,
    );
    let only = |p: &Phase, allowed: &[u16]| p.statuses.keys().all(|s| allowed.contains(s));
    let refetch_bound = (random_kids.secs / 10.0).ceil() as u64 + 1;
    let checks = vec![
        (
            !only(&forged, &[401]),
            "a forged JWT was not answered 401".to_owned(),
        ),
        (
            forged.jwks_fetches > 0,
            "forged JWTs with a known kid caused key set fetches".to_owned(),
        ),
        (
            forged.rss_peak.saturating_sub(forged.rss_before) > MAX_RSS_GROWTH_KIB,
            format!("RSS grew more than {MAX_RSS_GROWTH_KIB} KiB"),
        ),
        (
            !only(&random_kids, &[401]),
            "a random-kid JWT was not answered 401".to_owned(),
        ),
        (
            random_kids.jwks_fetches > refetch_bound,
            format!("more than {refetch_bound} key set fetches for random kids"),
        ),
        (
            !only(&opaque, &[401, 503]),
            "a random opaque token got something but 401 or 503".to_owned(),
        ),
        (
            peak_in_flight > 8,
            "more than max_in_flight introspection calls at once".to_owned(),
        ),
        (
            !(0.0..=1000.0).contains(&cache_entries),
            "the introspection cache outgrew its capacity".to_owned(),
        ),
        (
            slow.never_closed() > 0
                || slow.last_close() > crate::slowloris::CLOSE_WITHIN.as_secs_f64(),
            "a slowloris connection lived past 15 s".to_owned(),
        ),
        (
            slow.normal_failed > 0 || slow.normal_ok == 0,
            "a normal request failed during the slowloris phase".to_owned(),
        ),
        (
            leaked > 0 || flood_label,
            "request data in metric labels".to_owned(),
        ),
    ];
    crate::world::conclude(world, report, checks, "target/flood-report.md");
}
