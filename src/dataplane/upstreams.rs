//! Upstream groups, their health, and the choice of an upstream for a request.
//!
//! One [`Upstreams`] is shared by every worker: each distinct address is one [`Backend`] with
//! an atomic health flag, checked by one background task ([`Upstreams::health_checks`]) that
//! never runs on a worker. Each worker keeps its own round-robin position per group
//! ([`Rotation`]), so choosing an upstream takes no lock and shares no cache line.
//!
//! Why not `pingora-load-balancing`: it depends on `pingora-core` (its health checks connect
//! through pingora's connectors), the very crate this data plane leaves, and a round-robin
//! choice over a handful of atomics is a few nanoseconds (`benches/hot_path.rs`,
//! `upstream_select`).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGaugeVec;

/// One upstream address.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    healthy: AtomicBool,
}

impl Backend {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// One address of a group, and the host of the `upstreams` entry it came from: the name TLS
/// verifies (`upstream_tls`) unless the route sets `upstream_server_name`.
#[derive(Debug, Clone)]
pub struct Member {
    pub backend: Arc<Backend>,
    pub host: Arc<str>,
}

/// The host of a `host:port` entry, without an IPv6 literal's brackets.
pub fn host_of(entry: &str) -> &str {
    let host = entry.rsplit_once(':').map_or(entry, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The upstreams of each route, and their health.
#[derive(Debug)]
pub struct Upstreams {
    /// The distinct groups; routes with the same upstream list share one.
    groups: Vec<Vec<Member>>,
    /// Each route's group, indexed by [`crate::routing::Route::index`].
    route_group: Vec<usize>,
    /// Every distinct backend, for the health checks.
    all: Vec<Arc<Backend>>,
    /// Each route's `upstreams` as configured, to resolve again.
    lists: Vec<Vec<String>>,
}

/// A route's upstream list named a host that does not resolve.
#[derive(Debug)]
pub struct Unresolved {
    pub route: usize,
    pub upstream: String,
    pub source: std::io::Error,
}

impl Upstreams {
    /// Resolve every route's `upstreams` (once, here) and group them. Every address starts
    /// healthy; `gauge` (`portcullis_upstream_healthy`) says so.
    pub fn resolve<'a>(
        routes: impl IntoIterator<Item = &'a [String]>,
        gauge: &IntGaugeVec,
    ) -> Result<Upstreams, Unresolved> {
        Upstreams::renewed(routes, gauge, None)
    }

    /// [`Upstreams::resolve`] for a reloaded config: an address `previous` has keeps its
    /// backend, health included (the pools, keyed by address, keep its connections).
    pub fn renewed<'a>(
        routes: impl IntoIterator<Item = &'a [String]>,
        gauge: &IntGaugeVec,
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, Unresolved> {
        let mut by_addr: HashMap<SocketAddr, Arc<Backend>> = HashMap::new();
        let known = |addr: SocketAddr| previous?.all.iter().find(|b| b.addr == addr).cloned();
        let mut by_list: HashMap<&'a [String], usize> = HashMap::new();
        let mut groups = Vec::new();
        let mut route_group = Vec::new();
        let mut all = Vec::new();
        let mut lists = Vec::new();
        for (route, list) in routes.into_iter().enumerate() {
            lists.push(list.to_vec());
            if let Some(&group) = by_list.get(list) {
                route_group.push(group);
                continue;
            }
            let mut group: Vec<Member> = Vec::new();
            for upstream in list {
                let host: Arc<str> = host_of(upstream).into();
                let addrs = upstream.to_socket_addrs().map_err(|source| Unresolved {
                    route,
                    upstream: upstream.clone(),
                    source,
                })?;
                for addr in addrs {
                    let backend = by_addr.entry(addr).or_insert_with(|| {
                        if let Some(b) = known(addr) {
                            all.push(b.clone());
                            return b;
                        }
                        gauge.with_label_values(&[&addr.to_string()]).set(1);
                        let b = Arc::new(Backend {
                            addr,
                            healthy: AtomicBool::new(true),
                        });
                        all.push(b.clone());
                        b
                    });
                    if !group.iter().any(|m| m.backend.addr == addr) {
                        group.push(Member {
                            backend: backend.clone(),
                            host: host.clone(),
                        });
                    }
                }
            }
            by_list.insert(list, groups.len());
            route_group.push(groups.len());
            groups.push(group);
        }
        Ok(Upstreams {
            groups,
            route_group,
            all,
            lists,
        })
    }

    /// Resolve every host name again (blocking: run it off the workers). `None` when every
    /// group has the same addresses as now (in any order: resolvers rotate them), or when a
    /// name does not resolve: its last addresses stay, with a warning. Otherwise the new set,
    /// keeping the backends (and health) of addresses that stay.
    pub fn re_resolved(&self, gauge: &IntGaugeVec) -> Option<Upstreams> {
        let addresses = |groups: &[Vec<Member>], route_group: &[usize]| {
            route_group
                .iter()
                .map(|&g| {
                    let mut a: Vec<SocketAddr> = groups[g].iter().map(|m| m.backend.addr).collect();
                    a.sort_unstable();
                    a
                })
                .collect::<Vec<_>>()
        };
        let lists = self.lists.iter().map(Vec::as_slice);
        let next = match Upstreams::renewed(lists, gauge, Some(self)) {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(route = e.route, upstream = %e.upstream, error = %e.source, "an upstream no longer resolves; keeping the last addresses");
                return None;
            }
        };
        (addresses(&next.groups, &next.route_group) != addresses(&self.groups, &self.route_group))
            .then_some(next)
    }

    /// A round-robin position for each group, for one worker. Worker `n` starts at each
    /// group's `n`-th upstream, so the workers' first requests do not all go to the first one.
    pub fn rotation(&self, worker: usize) -> Rotation {
        Rotation(self.groups.iter().map(|_| Cell::new(worker)).collect())
    }

    /// The route's next healthy upstream in round-robin order that is not in `tried`.
    pub fn select(
        &self,
        rotation: &Rotation,
        route: usize,
        tried: &[SocketAddr],
    ) -> Option<&Member> {
        let group = self.route_group[route];
        let members = &self.groups[group];
        let start = rotation.0[group].get();
        rotation.0[group].set(start.wrapping_add(1));
        (0..members.len())
            .map(|i| &members[start.wrapping_add(i) % members.len()])
            .find(|m| m.backend.healthy() && !tried.contains(&m.backend.addr))
    }

    /// The addresses this set has and `next` has not: their health series go.
    pub fn dropped_by(&self, next: &Upstreams) -> Vec<SocketAddr> {
        self.all
            .iter()
            .filter(|b| !next.all.iter().any(|n| n.addr == b.addr))
            .map(|b| b.addr)
            .collect()
    }

    /// Check every upstream of `current()` (the set of the config now) by TCP connect every
    /// `interval`, forever; changes are logged and mirrored into `gauge`. Runs on the
    /// background thread, never on a worker.
    pub async fn health_checks(
        current: impl Fn() -> Arc<Upstreams>,
        interval: Duration,
        timeout: Duration,
        gauge: IntGaugeVec,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let upstreams = current();
            let checks = upstreams.all.iter().map(|b| async {
                let up = matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(b.addr)).await,
                    Ok(Ok(_))
                );
                if b.healthy.swap(up, Ordering::Relaxed) != up {
                    tracing::warn!(upstream = %b.addr, healthy = up, "upstream health changed");
                    gauge
                        .with_label_values(&[&b.addr.to_string()])
                        .set(i64::from(up));
                }
            });
            futures_util::future::join_all(checks).await;
        }
    }
}

/// A worker's round-robin position in each upstream group.
#[derive(Debug)]
pub struct Rotation(Vec<Cell<usize>>);

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGaugeVec {
        IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["upstream"]).unwrap()
    }

    #[test]
    fn routes_with_one_list_share_a_group_and_rotate() {
        let a = vec!["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        let b = vec!["127.0.0.1:2".to_owned()];
        let lists = [a.as_slice(), b.as_slice(), a.as_slice()];
        let up = Upstreams::resolve(lists, &gauge()).unwrap();
        assert_eq!(up.groups.len(), 2);
        assert_eq!(up.all.len(), 2, "one backend per address");
        assert_eq!(up.route_group, [0, 1, 0]);
        let rotation = up.rotation(0);
        let picks: Vec<u16> = (0..4)
            .map(|_| up.select(&rotation, 0, &[]).unwrap().backend.addr.port())
            .collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        let second_worker = up.rotation(1);
        assert_eq!(
            up.select(&second_worker, 0, &[])
                .unwrap()
                .backend
                .addr
                .port(),
            2
        );
    }

    #[test]
    fn unhealthy_and_tried_upstreams_are_skipped() {
        let a = vec!["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        let up = Upstreams::resolve([a.as_slice()], &gauge()).unwrap();
        let rotation = up.rotation(0);
        up.all[0].healthy.store(false, Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(up.select(&rotation, 0, &[]).unwrap().backend.addr.port(), 2);
        }
        let tried = [up.all[1].addr];
        assert!(up.select(&rotation, 0, &tried).is_none());
    }

    #[test]
    fn an_entry_s_host_is_its_name_without_the_port_or_brackets() {
        assert_eq!(host_of("api.internal:8443"), "api.internal");
        assert_eq!(host_of("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        let a = vec!["localhost:1".to_owned()];
        let up = Upstreams::resolve([a.as_slice()], &gauge()).unwrap();
        assert_eq!(
            &*up.select(&up.rotation(0), 0, &[]).unwrap().host,
            "localhost"
        );
    }

    #[test]
    fn an_unresolvable_host_names_its_route() {
        let a = vec!["127.0.0.1:1".to_owned()];
        let b = vec!["no-such-host.invalid:80".to_owned()];
        let err = Upstreams::resolve([a.as_slice(), b.as_slice()], &gauge()).unwrap_err();
        assert_eq!(err.route, 1);
    }
}
