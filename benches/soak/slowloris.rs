//! The flood's slowloris phase: `connections` clients each send a request head one header line
//! per second, against the gateway's default `client_header_timeout` (10 s), while normal
//! clients send valid requests. Every slow connection must be closed within 15 s of its start,
//! and every normal request must succeed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a slow connection may live (the bound; the default deadline is 10 s).
pub const CLOSE_WITHIN: Duration = Duration::from_secs(15);
/// A connection still open after this is counted as never closed.
const GIVE_UP: Duration = Duration::from_secs(40);

pub struct Slowloris {
    pub connections: usize,
    pub connect_failures: usize,
    /// Seconds from connect to close, per connection that closed before [`GIVE_UP`].
    pub closed_after: Vec<f64>,
    pub normal_ok: u64,
    pub normal_failed: u64,
    pub p99_before_ms: f64,
    pub p99_during_ms: f64,
}

impl Slowloris {
    pub fn never_closed(&self) -> usize {
        self.connections - self.connect_failures - self.closed_after.len()
    }

    pub fn last_close(&self) -> f64 {
        self.closed_after.iter().copied().fold(0.0, f64::max)
    }

    pub fn first_close(&self) -> f64 {
        self.closed_after.iter().copied().fold(f64::MAX, f64::min)
    }
}

/// One slow client: seconds from connect to the gateway's close, or `None` if it never came.
async fn slow_client(proxy: SocketAddr, n: usize) -> Result<Option<f64>, ()> {
    let stream = TcpStream::connect(proxy).await.map_err(|_| ())?;
    let start = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let head = format!("GET /orders/{n} HTTP/1.1\r\nHost: slow\r\n");
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for i in 0.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let line = format!("x-slow-{i}: {n}\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(GIVE_UP, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    Ok(closed.ok().map(|()| start.elapsed().as_secs_f64()))
}

/// Valid requests from `workers` clients until `stop`; (successes, failures, latencies in ms).
async fn normal_traffic(
    url: String,
    token: String,
    workers: usize,
    stop: Arc<tokio::sync::Notify>,
) -> (u64, u64, Vec<f64>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (client, url, token, stop) = (client.clone(), url.clone(), token.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let t = Instant::now();
                let sent = client.get(&url).bearer_auth(&token).send();
                tokio::select! {
                    _ = &mut stopped => break,
                    r = sent => match r {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    },
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (ok, failed, latencies)
        });
    }
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    while let Some(Ok((o, f, l))) = tasks.join_next().await {
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    (ok, failed, latencies)
}

fn p99(mut ms: Vec<f64>) -> f64 {
    if ms.is_empty() {
        return f64::NAN;
    }
    ms.sort_by(f64::total_cmp);
    ms[(ms.len() * 99 / 100).min(ms.len() - 1)]
}

pub async fn run(proxy: SocketAddr, token: &str, connections: usize) -> Slowloris {
    let url = format!("http://{proxy}/orders/1");
    let stop = Arc::new(tokio::sync::Notify::new());
    let baseline = tokio::spawn(normal_traffic(url.clone(), token.into(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.notify_waiters();
    let (_, _, before) = baseline.await.unwrap();

    let stop = Arc::new(tokio::sync::Notify::new());
    let normal = tokio::spawn(normal_traffic(url, token.into(), 4, stop.clone()));
    let mut attackers = tokio::task::JoinSet::new();
    for n in 0..connections {
        attackers.spawn(slow_client(proxy, n));
    }
    let (mut closed_after, mut connect_failures) = (Vec::new(), 0);
    while let Some(result) = attackers.join_next().await {
        match result.unwrap() {
            Err(()) => connect_failures += 1,
            Ok(Some(secs)) => closed_after.push(secs),
            Ok(None) => {}
        }
    }
    stop.notify_waiters();
    let (normal_ok, normal_failed, during) = normal.await.unwrap();
    Slowloris {
        connections,
        connect_failures,
        closed_after,
        normal_ok,
        normal_failed,
        p99_before_ms: p99(before),
        p99_during_ms: p99(during),
    }
}
