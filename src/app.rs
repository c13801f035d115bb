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
use crate::metrics::Metrics;
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
}

/// A service run on the background thread beside the admin listener (`portcullis dev`).
type Extra = Box<dyn FnOnce(watch::Receiver<Stop>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A gateway ready to run: listeners bound, parts assembled.
pub struct App {
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    auth: Arc<Authenticator>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    proxy: Vec<TcpListener>,
    proxy_addr: SocketAddr,
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
        let secrets = config.unreadable_secrets();
        if !secrets.is_empty() {
            return Err(StartupError::Secrets(secrets));
        }
        let metrics = Metrics::new(registry)?;
        metrics.initialise(&crate::metrics::Known {
            routes: config
                .routes
                .iter()
                .map(|r| {
                    let checks = r.auth == crate::config::AuthMode::Required;
                    (r.name.as_str(), checks, r.rate_limit.is_some())
                })
                .collect(),
            issuers: config.issuers.iter().map(|i| i.issuer.as_str()).collect(),
            introspection: config.introspection.is_some(),
        });
        let auth = Arc::new(Authenticator::new(&config.auth(), metrics.clone()));
        let readiness = Arc::new(Readiness::new(auth.clone()));
        let threads = config.server.threads;
        let bind_error = |key, addr| move |source| StartupError::Bind { key, addr, source };
        let proxy = dataplane::bind_reuseport(config.server.listen, threads)
            .map_err(bind_error("server.listen", config.server.listen))?;
        let proxy_addr = local_addr(&proxy[0], "server.listen")?;
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
        let upstreams = Upstreams::resolve(
            config.routes.iter().map(|r| r.upstreams.as_slice()),
            &metrics.upstream_healthy,
        )
        .map_err(|e| StartupError::Resolve {
            route: e.route,
            upstream: e.upstream,
            source: e.source,
        })?;
        let upstreams = Arc::new(upstreams);
        let gate = Arc::new(Gate {
            router: Router::new(&config.routes),
            auth: auth.clone(),
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
        };
        let shared = Arc::new(Shared {
            gate: gate.clone(),
            metrics: metrics.clone(),
            upstreams: upstreams.clone(),
            settings,
        });
        let u = &config.upstream;
        Ok(App {
            shared,
            gate,
            auth,
            upstreams,
            metrics,
            readiness,
            proxy,
            proxy_addr,
            admin,
            metrics_addr,
            decision,
            extras: Vec::new(),
            pool: PoolSettings {
                connect_timeout: u.connect_timeout,
                write_timeout: u.write_timeout,
                idle_timeout: u.idle_timeout,
                max_idle: u.keepalive_pool_size,
            },
            grace: s.shutdown_grace,
            drain_delay: s.drain_delay,
            header_timeout: s.client_header_timeout,
            health_interval: u.health_check_interval,
            connect_timeout: u.connect_timeout,
        })
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
        let starting = Arc::new(AtomicUsize::new(self.proxy.len()));
        let mut decision = self.decision.map(|(listeners, _, convention)| {
            let app = DecisionApp {
                gate: self.gate.clone(),
                convention,
                max_uri_bytes: self.shared.settings.limits.max_uri_bytes,
            };
            (listeners.into_iter(), Arc::new(app))
        });
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        for (i, listener) in self.proxy.into_iter().enumerate() {
            let shared = self.shared.clone();
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
                        let worker = dataplane::worker(shared, pool, i);
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
                        let proxy =
                            tokio::task::spawn_local(dataplane::run_proxy(worker, listener, stop));
                        if starting.fetch_sub(1, Ordering::AcqRel) == 1 {
                            readiness.set_proxy_listening();
                        }
                        let _ = proxy.await;
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
        let (admin, upstreams, auth) = (self.admin, self.upstreams, self.auth);
        let admin_app = Rc::new(AdminApp {
            metrics: self.metrics.clone(),
            readiness: self.readiness,
        });
        let (health_interval, connect_timeout) = (self.health_interval, self.connect_timeout);
        let gauge = self.metrics.upstream_healthy.clone();
        let header_timeout = self.header_timeout;
        let extras = self.extras;
        local.block_on(&runtime, async move {
            let background: Vec<_> = auth
                .refresh_tasks()
                .into_iter()
                .map(tokio::spawn)
                .chain([tokio::spawn(upstreams.health_checks(
                    health_interval,
                    connect_timeout,
                    gauge,
                ))])
                .collect();
            let mut served = vec![tokio::task::spawn_local(dataplane::run_simple(
                admin_app,
                admin,
                header_timeout,
                rx.clone(),
            ))];
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
        Ok(())
    }
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
