//! Assembly only: [`Config`] -> metrics, auth core, gate, upstream groups, workers, admin and
//! decision listeners.
//!
//! Every listener is bound in [`App::build`]: a port that is taken fails start-up at once with
//! the key that names it, and `listen = "...:0"` picks a free port whose number
//! [`App::proxy_addr`] reports (the tests rely on this). [`App::run_until_signal`] then starts
//! `server.threads` workers (one thread and one current-thread runtime each, see
//! [`crate::dataplane`]) and runs the admin listener and the background work (key refresh,
//! health checks) on a thread of their own, so that neither ever delays a request.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::{oneshot, watch};

use crate::admin::{AdminApp, Readiness};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::dataplane::client_stream::ClientTimeouts;
use crate::dataplane::framing::RequestLimits;
use crate::dataplane::pool::PoolSettings;
use crate::dataplane::proxy::{Settings, Shared};
use crate::dataplane::upstreams::Upstreams;
use crate::dataplane::{self, simple, Stop};
use crate::decision::DecisionApp;
use crate::gate::Gate;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::otlp::Exporter;
use crate::routing::Router;

/// Why the gateway could not start with a valid config.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("routes[{route}].upstreams: cannot resolve {upstream:?}: {source}")]
    Resolve {
        route: usize,
        upstream: String,
        #[source]
        source: io::Error,
    },
    /// Secrets the config names that cannot be read ([`Config::unreadable_secrets`]).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Secrets(Vec<crate::config::Problem>),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] io::Error),
    #[error("tracing.otlp_endpoint: cannot export to it: {0}")]
    Tracing(#[source] opentelemetry_otlp::ExporterBuildError),
    /// Certificate or key files of `[server]` or upstream TLS that cannot be used.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Tls(Vec<crate::config::Problem>),
}

/// TLS on the proxy listener: the certificates (reloaded in place) and the acceptor every
/// worker's listener uses.
#[derive(Clone)]
struct Tls {
    certificates: Arc<dataplane::tls::Certificates>,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A service run on the background thread beside the admin listener (`portcullis dev`).
type Extra = Box<dyn FnOnce(watch::Receiver<Stop>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A gateway ready to run: listeners bound, parts assembled.
pub struct App {
    /// What the proxy's workers read; a reload replaces it.
    live: Arc<Live<Shared>>,
    /// The same config's gate, for the decision endpoint and readiness.
    gate: Arc<Live<Gate>>,
    /// The config in use, and the file a `SIGHUP` reloads it from ([`App::reloading_from`]).
    config: Config,
    path: Option<PathBuf>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    proxy: Vec<TcpListener>,
    proxy_addr: SocketAddr,
    /// `server.plain_listen`'s listeners (one per worker), beside TLS on `proxy`.
    plain: Vec<TcpListener>,
    plain_addr: Option<SocketAddr>,
    tls: Option<Tls>,
    admin: TcpListener,
    metrics_addr: SocketAddr,
    decision: Option<(Vec<TcpListener>, SocketAddr, crate::config::Convention)>,
    extras: Vec<Extra>,
    pool: PoolSettings,
    grace: Duration,
    drain_delay: Duration,
    header_timeout: Duration,
    health_interval: Duration,
    connect_timeout: Duration,
}

impl App {
    /// Bind the listeners and assemble every part. Nothing runs until [`App::run_until_signal`]
    /// or [`App::spawn`].
    pub fn build(config: &Config, registry: Registry) -> Result<App, StartupError> {
        let metrics = Metrics::new(registry)?;
        let shared = Arc::new(assemble(config, &metrics, None)?);
        let live = Arc::new(Live::new(shared.clone()));
        let gate = Arc::new(Live::new(shared.gate.clone()));
        let readiness = Arc::new(Readiness::new(gate.clone()));
        let threads = config.server.threads;
        let bind_error = |key, addr| move |source| StartupError::Bind { key, addr, source };
        let proxy = dataplane::bind_reuseport(config.server.listen, threads)
            .map_err(bind_error("server.listen", config.server.listen))?;
        let proxy_addr = local_addr(&proxy[0], "server.listen")?;
        let tls = match &config.server.tls {
            None => None,
            Some(t) => {
                let (reloads, expiry) = (
                    metrics.tls_reloads.clone(),
                    metrics.tls_certificate_expiry.clone(),
                );
                let certificates = dataplane::tls::Certificates::load(t, reloads, expiry)
                    .map(Arc::new)
                    .map_err(StartupError::Tls)?;
                let server = certificates
                    .server_config(t, config.server.http2.enabled)
                    .map_err(StartupError::Tls)?;
                Some(Tls {
                    certificates,
                    acceptor: tokio_rustls::TlsAcceptor::from(server),
                })
            }
        };
        let plain = match config.server.plain_listen {
            None => Vec::new(),
            Some(addr) => dataplane::bind_reuseport(addr, threads)
                .map_err(bind_error("server.plain_listen", addr))?,
        };
        let plain_addr = match plain.first() {
            None => None,
            Some(l) => Some(local_addr(l, "server.plain_listen")?),
        };
        let admin = dataplane::bind_one(config.metrics.listen)
            .map_err(bind_error("metrics.listen", config.metrics.listen))?;
        let metrics_addr = local_addr(&admin, "metrics.listen")?;
        let decision = match &config.decision {
            None => None,
            Some(d) => {
                let listeners = dataplane::bind_reuseport(d.listen, threads)
                    .map_err(bind_error("decision.listen", d.listen))?;
                let addr = local_addr(&listeners[0], "decision.listen")?;
                Some((listeners, addr, d.convention))
            }
        };
        let s = &config.server;
        let u = &config.upstream;
        Ok(App {
            live,
            gate,
            config: config.clone(),
            path: None,
            metrics,
            readiness,
            proxy,
            proxy_addr,
            plain,
            plain_addr,
            tls,
            admin,
            metrics_addr,
            decision,
            extras: Vec::new(),
            pool: PoolSettings {
                connect_timeout: u.connect_timeout,
                write_timeout: u.write_timeout,
                idle_timeout: u.idle_timeout,
                max_idle: u.keepalive_pool_size,
                streams_per_connection: u.http2_max_streams_per_connection,
                keepalive_interval: u.http2_keepalive_interval,
            },
            grace: s.shutdown_grace,
            drain_delay: s.drain_delay,
            header_timeout: s.client_header_timeout,
            health_interval: u.health_check_interval,
            connect_timeout: u.connect_timeout,
        })
    }

    /// Reload the config from `path` on `SIGHUP` ([`App::run_until_signal`]).
    pub fn reloading_from(mut self, path: &std::path::Path) -> App {
        self.path = Some(path.to_owned());
        self
    }

    /// Serve `handler` on an already bound listener, on the background thread, beside the
    /// gateway (`portcullis dev`).
    pub fn add_http_service<H>(
        &mut self,
        name: &'static str,
        listener: TcpListener,
        handler: H,
    ) -> Result<SocketAddr, StartupError>
    where
        H: simple::Handler + Send,
    {
        let addr = local_addr(&listener, name)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartupError::Bind {
                key: name,
                addr,
                source,
            })?;
        let timeout = self.header_timeout;
        self.extras.push(Box::new(move |stop| {
            Box::pin(dataplane::run_simple(
                Rc::new(handler),
                listener,
                timeout,
                stop,
            ))
        }));
        Ok(addr)
    }

    /// Where the proxy listens (the real port when the config said 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where the plain-HTTP listener beside the TLS one listens (`server.plain_listen`).
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    /// Where the decision endpoint listens, when `[decision]` is configured.
    pub fn decision_addr(&self) -> Option<SocketAddr> {
        self.decision.as_ref().map(|d| d.1)
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Run until SIGTERM or SIGINT. On SIGTERM `/readyz` turns 503 at once and the listeners
    /// keep accepting for `server.drain_delay` (a second signal ends the delay); then, and at
    /// once on SIGINT, stop accepting, let in-flight requests finish within
    /// `server.shutdown_grace`, and return as soon as none is left.
    pub fn run_until_signal(self) -> Result<(), StartupError> {
        let (grace, delay) = (self.grace, self.drain_delay);
        let readiness = self.readiness.clone();
        self.run(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install the SIGTERM / SIGINT handlers");
                return Stop::Drain(grace);
            };
            let delayed = tokio::select! {
                _ = term.recv() => true,
                _ = int.recv() => false,
            };
            readiness.set_draining();
            if delayed && !delay.is_zero() {
                tracing::info!(drain_delay = ?delay, "SIGTERM: not ready; still accepting for drain_delay");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            tracing::info!("draining: no new connections");
            Stop::Drain(grace)
        })
    }

    /// Run on a thread of its own; the gateway stops when the handle is dropped. For tests and
    /// for `portcullis dev`.
    pub fn spawn(self) -> RunningApp {
        let (stop, stopped) = oneshot::channel::<Stop>();
        let (proxy_addr, metrics_addr, decision_addr) =
            (self.proxy_addr, self.metrics_addr, self.decision_addr());
        let thread = std::thread::spawn(move || {
            let _ = self.run(async move { stopped.await.unwrap_or(Stop::Drain(Duration::ZERO)) });
        });
        RunningApp {
            proxy_addr,
            metrics_addr,
            decision_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Start the workers, then run the background thread's work on this thread until `signal`
    /// says to stop; then drain everything and return once every worker has.
    fn run(self, signal: impl Future<Output = Stop> + 'static) -> Result<(), StartupError> {
        let (tx, rx) = watch::channel(Stop::Running);
        let exporting = (
            self.live.load().exporter.clone(),
            (self.config.tracing.as_ref()).map(|t| t.export_timeout.min(EXPORT_AT_EXIT)),
        );
        let starting = Arc::new(AtomicUsize::new(self.proxy.len()));
        let mut decision = self.decision.map(|(listeners, _, convention)| {
            let app = DecisionApp {
                gate: self.gate.clone(),
                convention,
                max_uri_bytes: self.config.server.max_uri_bytes,
            };
            (listeners.into_iter(), Arc::new(app))
        });
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        let mut plain = self.plain.into_iter();
        let acceptor = self.tls.as_ref().map(|t| t.acceptor.clone());
        for (i, listener) in self.proxy.into_iter().enumerate() {
            let plain = plain.next();
            let acceptor = acceptor.clone();
            let live = self.live.clone();
            let pool = self.pool;
            let stop = rx.clone();
            let (starting, readiness) = (starting.clone(), self.readiness.clone());
            let decision = decision
                .as_mut()
                .and_then(|(listeners, app)| Some((listeners.next()?, app.clone())));
            let header_timeout = self.header_timeout;
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-{i}"))
                .spawn(move || {
                    let Ok(runtime) = dataplane::runtime() else {
                        tracing::error!("cannot build a worker runtime");
                        return;
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        let worker = dataplane::worker(live, pool, i);
                        let decision = decision.map(|(listener, app)| {
                            let handler = Rc::new(DecisionRef(app));
                            let stop = stop.clone();
                            tokio::task::spawn_local(dataplane::run_simple(
                                handler,
                                listener,
                                header_timeout,
                                stop,
                            ))
                        });
                        let beside = plain.map(|listener| {
                            let run =
                                dataplane::run_proxy(worker.clone(), listener, stop.clone(), None);
                            tokio::task::spawn_local(run)
                        });
                        let proxy = tokio::task::spawn_local(dataplane::run_proxy(
                            worker, listener, stop, acceptor,
                        ));
                        if starting.fetch_sub(1, Ordering::AcqRel) == 1 {
                            readiness.set_proxy_listening();
                        }
                        let _ = proxy.await;
                        if let Some(beside) = beside {
                            let _ = beside.await;
                        }
                        if let Some(decision) = decision {
                            let _ = decision.await;
                        }
                    });
                })
                .map_err(StartupError::Thread);
            match thread {
                Ok(t) => workers.push(t),
                Err(e) => {
                    let _ = tx.send(Stop::Drain(Duration::ZERO));
                    workers.into_iter().for_each(|w| drop(w.join()));
                    return Err(e);
                }
            }
        }
        let runtime = dataplane::runtime().map_err(StartupError::Thread)?;
        let local = tokio::task::LocalSet::new();
        let admin = self.admin;
        let auth = self.live.load().gate.auth.clone();
        let tls_reload_interval = self.config.server.tls_reload_interval;
        let reloader = Reloader {
            path: self.path,
            started: self.config.clone(),
            config: self.config,
            live: self.live.clone(),
            gate: self.gate,
            readiness: self.readiness.clone(),
            metrics: self.metrics.clone(),
            tls: self.tls.as_ref().map(|t| t.certificates.clone()),
        };
        let live = self.live;
        let admin_app = Rc::new(AdminApp {
            metrics: self.metrics.clone(),
            readiness: self.readiness,
        });
        let (health_interval, connect_timeout) = (self.health_interval, self.connect_timeout);
        let gauge = self.metrics.upstream_healthy.clone();
        let header_timeout = self.header_timeout;
        let extras = self.extras;
        let watch_certificates = self.tls.map(|t| t.certificates.watch(tls_reload_interval));
        local.block_on(&runtime, async move {
            let background: Vec<_> = auth
                .refresh_tasks()
                .into_iter()
                .map(tokio::spawn)
                .chain([tokio::spawn(Upstreams::health_checks(
                    move || live.load().upstreams.clone(),
                    health_interval,
                    connect_timeout,
                    gauge,
                ))])
                .chain(watch_certificates.map(tokio::spawn))
                .collect();
            drop(auth);
            let mut served = vec![tokio::task::spawn_local(dataplane::run_simple(
                admin_app,
                admin,
                header_timeout,
                rx.clone(),
            ))];
            served.push(tokio::task::spawn_local(reload_on_sighup(
                reloader,
                rx.clone(),
            )));
            for extra in extras {
                served.push(tokio::task::spawn_local(extra(rx.clone())));
            }
            let stop = signal.await;
            let _ = tx.send(stop);
            for task in served {
                let _ = task.await;
            }
            background.iter().for_each(|t| t.abort());
        });
        for worker in workers {
            let _ = worker.join();
        }
        // The spans of the last requests, before the process ends.
        if let (Some(exporter), Some(wait)) = exporting {
            exporter.shutdown(wait);
        }
        Ok(())
    }
}

/// Everything of `config` that the workers read, built anew or, with `previous` (the running
/// config's), keeping what did not change: issuers' keys, caches, limiter counters, DPoP
/// replay state, upstream health ([`Authenticator::renewed`], [`Router::renewed`],
/// [`Upstreams::renewed`]). Fails, touching nothing that serves, when a secret cannot be read
/// or an upstream host does not resolve, or an upstream TLS file cannot be used.
fn assemble(
    config: &Config,
    metrics: &Metrics,
    previous: Option<&Shared>,
) -> Result<Shared, StartupError> {
    let secrets = config.unreadable_secrets();
    if !secrets.is_empty() {
        return Err(StartupError::Secrets(secrets));
    }
    let upstreams = Upstreams::renewed(
        config.routes.iter().map(|r| r.upstreams.as_slice()),
        &metrics.upstream_healthy,
        previous.map(|p| &*p.upstreams),
    )
    .map_err(|e| StartupError::Resolve {
        route: e.route,
        upstream: e.upstream,
        source: e.source,
    })?;
    let upstream_tls = dataplane::upstream_tls::for_routes(config).map_err(StartupError::Tls)?;
    metrics.initialise(&crate::metrics::Known {
        routes: config
            .routes
            .iter()
            .map(|r| crate::metrics::KnownRoute {
                name: r.name.as_str(),
                checks_tokens: r.auth == crate::config::AuthMode::Required,
                limited: r.rate_limit.is_some(),
                http2_upstream: r.upstream_protocol == crate::config::UpstreamProtocol::Http2,
            })
            .collect(),
        issuers: config.issuers.iter().map(|i| i.issuer.as_str()).collect(),
        introspection: config.introspection.is_some(),
    });
    let auth = Arc::new(Authenticator::renewed(
        &config.auth(),
        metrics.clone(),
        previous.map(|p| &*p.gate.auth),
    ));
    let gate = Arc::new(Gate {
        router: Router::renewed(&config.routes, previous.map(|p| &p.gate.router)),
        auth,
        identity: config.identity.clone(),
        metadata: config.resource_metadata.clone(),
        rate_limited: config
            .routes
            .iter()
            .map(|r| {
                let counter = || metrics.rate_limited.with_label_values(&[&r.name]);
                r.rate_limit.as_ref().map(|_| counter())
            })
            .collect(),
    });
    let s = &config.server;
    let settings = Settings {
        log_subject: config.log.log_subject,
        trust_forwarded_headers: s.trust_forwarded_headers,
        limits: RequestLimits {
            max_uri_bytes: s.max_uri_bytes,
            max_header_bytes: s.max_header_bytes,
        },
        timeouts: ClientTimeouts {
            header: s.client_header_timeout,
            body: s.client_body_timeout,
            send: s.send_timeout,
            keepalive: s.keepalive_timeout,
        },
        read_timeout: config.upstream.read_timeout,
        max_body_bytes: s.max_body_bytes,
        http2: s.http2,
    };
    // `[tracing]` takes effect at a restart: the exporter stays the one the process started.
    let exporter = match (previous, &config.tracing) {
        (Some(p), _) => p.exporter.clone(),
        (None, Some(t)) => Some(Arc::new(
            Exporter::start(t, metrics.trace_exports.clone()).map_err(StartupError::Tracing)?,
        )),
        (None, None) => None,
    };
    Ok(Shared {
        gate,
        metrics: metrics.clone(),
        upstreams: Arc::new(upstreams),
        upstream_tls: upstream_tls.into(),
        settings,
        exporter,
    })
}

/// The longest wait at exit for the last spans' export.
const EXPORT_AT_EXIT: Duration = Duration::from_secs(5);

/// How long a reload waits for the key sets of issuers it adds (and an introspection endpoint
/// it must discover) before it swaps the config in anyway: requests never meet a new issuer
/// without keys while its first fetch is quick, and a slow identity provider delays a reload
/// this long at most (its tokens then fetch on demand, or answer 503 while it is down).
const RELOAD_WARM_UP: Duration = Duration::from_secs(5);

/// The state `SIGHUP` and the upstream re-resolution work on: the file (none for an app
/// built in-process), the config in use, and where to swap a new one in.
struct Reloader {
    path: Option<PathBuf>,
    /// The config the process started with: what the keys that need a restart still hold.
    started: Config,
    /// The config in use.
    config: Config,
    live: Arc<Live<Shared>>,
    gate: Arc<Live<Gate>>,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    /// The TLS listener's certificates, read again at each reload.
    tls: Option<Arc<dataplane::tls::Certificates>>,
}

impl Reloader {
    /// Re-read and validate the file; if it passes, build its parts (keeping the unchanged ones
    /// warm), let new issuers' keys load, and swap it in. In-flight requests finish on the old
    /// config. If anything fails, the old config keeps serving and every problem is logged by
    /// key. Never logs a secret, a path of a request or a token.
    async fn reload(&mut self, stop: &watch::Receiver<Stop>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let next = match loaded {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => return self.refused(e.lines()),
            Err(e) => return self.refused(vec![format!("the reload task failed: {e}")]),
        };
        let previous = self.live.load();
        let metrics = self.metrics.clone();
        let built = {
            let mut next = next.clone();
            // The head limits size each listener's parser buffer at start: the running values
            // stay, for the proxy as for the decision listener, as the restart warning says.
            next.server.max_uri_bytes = self.started.server.max_uri_bytes;
            next.server.max_header_bytes = self.started.server.max_header_bytes;
            let previous = previous.clone();
            tokio::task::spawn_blocking(move || assemble(&next, &metrics, Some(&previous))).await
        };
        let shared = match built {
            Ok(Ok(shared)) => Arc::new(shared),
            Ok(Err(e)) => return self.refused(e.to_string().lines().map(str::to_owned).collect()),
            Err(e) => return self.refused(vec![format!("the reload task failed: {e}")]),
        };
        let auth = shared.gate.auth.clone();
        for task in auth.refresh_tasks() {
            tokio::spawn(task);
        }
        let started = tokio::time::Instant::now();
        while !warm(&auth) && started.elapsed() < RELOAD_WARM_UP {
            // A drain that begins meanwhile ends the reload: the old config drains.
            if *stop.borrow() != Stop::Running {
                return self.refused(vec!["the gateway began to drain".into()]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !warm(&auth) {
            tracing::warn!(
                waited = ?RELOAD_WARM_UP,
                "reload: some new issuer's keys (or the introspection endpoint) have not loaded yet; swapping in anyway"
            );
        }
        // The certificates last: a set that does not load refuses the reload, and nothing of it
        // is swapped in.
        if let (Some(certificates), Some(tls)) = (&self.tls, next.server.tls.clone()) {
            let certificates = certificates.clone();
            let loaded = tokio::task::spawn_blocking(move || certificates.reload(&tls)).await;
            match loaded {
                Ok(Ok(())) => {}
                Ok(Err(problems)) => {
                    return self.refused(problems.iter().map(ToString::to_string).collect())
                }
                Err(e) => return self.refused(vec![format!("the reload task failed: {e}")]),
            }
        }
        // Readiness notes that the running config was ready before the new one comes in
        // (the probe may not have asked since).
        let _ = self.readiness.pending();
        self.gate.replace(shared.gate.clone());
        let old = self.live.replace(shared.clone());
        let retired = old.gate.auth.retire_replaced(&auth);
        for addr in old.upstreams.dropped_by(&shared.upstreams) {
            let _ = gauge_remove(&self.metrics, addr);
        }
        let restart = self.started.restart_needed(&next);
        for key in &restart {
            tracing::warn!(
                key,
                "reload: this key changed but takes effect only at the next restart; the running value stays"
            );
        }
        for warning in next.warnings() {
            tracing::warn!(key = %warning.key, "{}", warning.message);
        }
        tracing::info!(
            routes = next.routes.len(),
            issuers = next.issuers.len(),
            issuers_kept_warm = old.gate.auth.kept_issuers(&auth),
            issuers_removed = retired.len(),
            restart_needed = restart.len(),
            "configuration reloaded"
        );
        self.metrics.reloaded(true);
        self.config = next;
    }

    /// A digest of the config file's bytes and of every secret file the config in use names
    /// (an unreadable file counts as empty), to notice a change when polling.
    async fn fingerprint(&self) -> [u8; 32] {
        let mut files: Vec<PathBuf> = self.path.iter().cloned().collect();
        for (_, source, _) in self.config.secret_sources() {
            if let crate::config::SecretSource::File(path) = source {
                files.push(path.clone());
            }
        }
        for (_, path) in self.config.ca_files() {
            files.push(path.to_owned());
        }
        for path in self.config.upstream_tls_files() {
            files.push(path.to_owned());
        }
        let digest = tokio::task::spawn_blocking(move || {
            let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
            for file in files {
                let limit = crate::auth::settings::MAX_FILE_BYTES;
                let bytes =
                    crate::auth::settings::read_regular_file(&file, limit).unwrap_or_default();
                state.update(&(bytes.len() as u64).to_le_bytes());
                state.update(&bytes);
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(state.finalize().as_bytes());
            out
        })
        .await;
        digest.unwrap_or([0; 32])
    }

    /// Resolve the upstream host names again; when an address came or went, swap in the new
    /// set with the same gate and settings (the workers' pools keep their connections to the
    /// addresses that stay).
    async fn re_resolve(&self) {
        let current = self.live.load();
        let gauge = self.metrics.upstream_healthy.clone();
        let upstreams = current.upstreams.clone();
        let found = tokio::task::spawn_blocking(move || upstreams.re_resolved(&gauge)).await;
        let Ok(Some(next)) = found else { return };
        // A reload may have swapped in a new config meanwhile: its own resolution is newer.
        if !Arc::ptr_eq(&self.live.load(), &current) {
            return;
        }
        let next = Arc::new(next);
        let old = self.live.replace(Arc::new(Shared {
            gate: current.gate.clone(),
            metrics: current.metrics.clone(),
            upstreams: next.clone(),
            upstream_tls: current.upstream_tls.clone(),
            settings: current.settings,
            exporter: current.exporter.clone(),
        }));
        let dropped = old.upstreams.dropped_by(&next);
        for addr in &dropped {
            let _ = gauge_remove(&self.metrics, *addr);
        }
        tracing::info!(
            addresses_dropped = dropped.len(),
            "upstream addresses changed; swapped in"
        );
    }

    fn refused(&self, problems: Vec<String>) {
        for problem in &problems {
            tracing::error!(problem = %problem, "reload refused");
        }
        tracing::error!(
            problems = problems.len(),
            "reload refused: the running configuration stays in use"
        );
        self.metrics.reloaded(false);
    }
}

/// Until the drain begins: reload on every `SIGHUP` (and, with `server.reload_poll_interval`,
/// when the file or a secret file it names changes), and resolve the upstream host names again
/// every `upstream.resolve_interval`. One task does both, so a reload and a re-resolution never
/// race. Installing the handler is what keeps `SIGHUP` from killing the process (its default
/// action); an app built in-process (no file) takes no `SIGHUP`.
async fn reload_on_sighup(mut reloader: Reloader, mut stop: watch::Receiver<Stop>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match &reloader.path {
        None => None,
        Some(_) => match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(_) => {
                tracing::error!("cannot install the SIGHUP handler: reloads are off");
                None
            }
        },
    };
    let mut resolve = tokio::time::interval(reloader.config.upstream.resolve_interval);
    resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resolve.reset();
    let poll = reloader.config.server.reload_poll_interval;
    let mut tick = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `seen`: the files as they were when the config in use was read. `settling`: a change
    // seen once; it is reloaded when the next look finds the same bytes, so a file caught
    // half-written (a slow copy, `cat >`) is never loaded as it was at that moment.
    let mut seen = reloader.fingerprint().await;
    let mut settling = None;
    let drain = stop.clone();
    loop {
        let hangup = async {
            match &mut hup {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = hangup => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                // Taken before the file is read: an edit made while the reload runs (it may
                // wait for a new issuer's keys) is a change the next looks see.
                seen = reloader.fingerprint().await;
                settling = None;
                reloader.reload(&drain).await;
            }
            _ = tick.tick(), if poll.is_some() => {
                let now = reloader.fingerprint().await;
                if now == seen {
                    settling = None;
                } else if settling == Some(now) {
                    tracing::info!("the configuration file or a secret file changed: reloading");
                    // A refused file is not tried again until it changes again.
                    seen = now;
                    settling = None;
                    reloader.reload(&drain).await;
                } else {
                    settling = Some(now);
                }
            }
            _ = resolve.tick() => reloader.re_resolve().await,
            _ = stop.wait_for(|s| *s != Stop::Running) => return,
        }
    }
}

/// An upstream address is gone: its health series goes with it.
fn gauge_remove(metrics: &Metrics, addr: SocketAddr) -> Result<(), prometheus::Error> {
    metrics
        .upstream_healthy
        .remove_label_values(&[&addr.to_string()])
}

/// The auth core has what `/readyz` waits for: every issuer's keys and the introspection
/// endpoint.
fn warm(auth: &Authenticator) -> bool {
    auth.issuers_without_keys().is_empty()
        && auth.introspection().is_none_or(|i| i.endpoint_known())
}

/// The decision endpoint, shared by every worker.
struct DecisionRef(Arc<DecisionApp>);

impl simple::Handler for DecisionRef {
    fn handle(
        &self,
        req: http::Request<bytes::Bytes>,
    ) -> impl Future<Output = http::Response<bytes::Bytes>> {
        self.0.handle(req)
    }
}

fn local_addr(listener: &TcpListener, key: &'static str) -> Result<SocketAddr, StartupError> {
    listener.local_addr().map_err(|source| StartupError::Bind {
        key,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })
}

/// A gateway running on its own thread; dropping it shuts the gateway down and waits.
pub struct RunningApp {
    pub proxy_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Where the decision endpoint listens, when `[decision]` is configured.
    pub decision_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Drain(Duration::ZERO));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
