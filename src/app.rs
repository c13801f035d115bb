//! Assembly only: [`Config`] -> metrics, auth core, upstream pools, pingora server and services.
//!
//! Listeners are bound here, before pingora starts, and handed to it through its listen-fd table:
//! a port that is taken fails start-up at once with the key that names it, and `listen = "...:0"`
//! picks a free port whose number [`App::proxy_addr`] reports (the tests rely on this).

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, HealthCheckService, HealthRegistry, LoadBalancer};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service as ListeningService;
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use prometheus::{IntGaugeVec, Registry};
use tokio::sync::oneshot;

use crate::admin::{AdminApp, Readiness};
use crate::auth::Authenticator;
use crate::config::{Config, KeySource};
use crate::decision::DecisionApp;
use crate::metrics::Metrics;
use crate::proxy::slow_clients::Guarded;
use crate::proxy::{ClientTimeouts, Pools, Proxy, RequestLimits};
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
    #[error("issuers[{issuer}].hmac_secret_env: the variable {env} must hold a secret of at least 32 bytes")]
    Secret { issuer: usize, env: String },
    #[error("introspection.client_secret_env: the variable {env} is unset or empty; set it to the gateway's client secret")]
    IntrospectionSecret { env: String },
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot build the upstream pool of routes[{route}]: {source}")]
    Pool {
        route: usize,
        #[source]
        source: Box<pingora::Error>,
    },
}

/// A gateway ready to run: listeners bound, services assembled.
pub struct App {
    server: Server,
    proxy_addr: SocketAddr,
    metrics_addr: SocketAddr,
    decision_addr: Option<SocketAddr>,
}

impl App {
    /// Bind the listeners and assemble every service. Nothing runs until [`App::run`].
    pub fn build(config: &Config, registry: Registry) -> Result<App, StartupError> {
        for (issuer, c) in config.issuers.iter().enumerate() {
            if let KeySource::HmacSecret { env } = &c.keys {
                if std::env::var(env).map_or(true, |s| s.len() < 32) {
                    return Err(StartupError::Secret {
                        issuer,
                        env: env.clone(),
                    });
                }
            }
        }
        if let Some(i) = &config.introspection {
            if std::env::var(&i.client_secret_env).map_or(true, |s| s.is_empty()) {
                return Err(StartupError::IntrospectionSecret {
                    env: i.client_secret_env.clone(),
                });
            }
        }
        let metrics = Metrics::new(registry)?;
        let auth = Arc::new(Authenticator::new(&config.auth(), metrics.clone()));
        let readiness = Arc::new(Readiness::new(auth.clone()));
        let (proxy_listener, proxy_addr) = bind("server.listen", config.server.listen)?;
        let (admin_listener, metrics_addr) = bind("metrics.listen", config.metrics.listen)?;

        let conf = ServerConf {
            threads: config.server.threads,
            grace_period_seconds: Some(config.server.shutdown_grace.as_secs_f64().ceil() as u64),
            graceful_shutdown_timeout_seconds: Some(5),
            upstream_keepalive_pool_size: config.upstream.keepalive_pool_size,
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();

        let health = Arc::new(HealthRegistry::new());
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(config.upstream.connect_timeout);
        check.health_changed_callback =
            Some(Box::new(HealthGauge(metrics.upstream_healthy.clone())));
        health.set_health_check(check);
        let pools = build_pools(config, &health, &metrics.upstream_healthy)?;
        let mut health_service = HealthCheckService::new(health);
        health_service.health_check_frequency = Some(config.upstream.health_check_interval);
        health_service.parallel_health_check = true;

        let client_timeouts = ClientTimeouts {
            header: config.server.client_header_timeout,
            body: config.server.client_body_timeout,
            send: config.server.send_timeout,
        };
        let proxy = Proxy {
            router: Router::new(&config.routes),
            pools,
            auth: auth.clone(),
            metrics: metrics.clone(),
            peer_options: crate::proxy::peer_options(&config.upstream),
            trust_forwarded_headers: config.server.trust_forwarded_headers,
            limits: RequestLimits {
                max_uri_bytes: config.server.max_uri_bytes,
                max_header_bytes: config.server.max_header_bytes,
            },
            client_timeouts,
        };
        let mut proxy = HttpProxy::new(proxy, server.configuration.clone());
        proxy.handle_init_modules();
        let guarded = Guarded::new(proxy, client_timeouts, &metrics);
        let mut proxy_service = ListeningService::new("proxy".into(), guarded);
        proxy_service.add_tcp(&proxy_addr.to_string());
        let ready = readiness.clone();
        server.add_service(Prebound {
            inner: proxy_service,
            fds: vec![(proxy_addr.to_string(), proxy_listener)],
            on_start: Some(Box::new(move || ready.set_proxy_listening())),
            threads: Some(config.server.threads),
        });

        let mut admin_service =
            ListeningService::new("admin".into(), AdminApp { metrics, readiness });
        admin_service.add_tcp(&metrics_addr.to_string());
        server.add_service(Prebound {
            inner: admin_service,
            fds: vec![(metrics_addr.to_string(), admin_listener)],
            on_start: None,
            threads: Some(1),
        });
        let decision_addr = match &config.decision {
            None => None,
            Some(d) => {
                let (listener, addr) = bind("decision.listen", d.listen)?;
                let app = DecisionApp {
                    auth: auth.clone(),
                    router: Router::new(&config.routes),
                    convention: d.convention,
                    max_uri_bytes: config.server.max_uri_bytes,
                };
                let mut service = ListeningService::new("decision".into(), app);
                service.add_tcp(&addr.to_string());
                server.add_service(Prebound {
                    inner: service,
                    fds: vec![(addr.to_string(), listener)],
                    on_start: None,
                    threads: Some(config.server.threads),
                });
                Some(addr)
            }
        };
        server.add_service(background_service("health check", health_service));
        server.add_service(background_service("key refresh", KeyRefresh(auth)));
        Ok(App {
            server,
            proxy_addr,
            metrics_addr,
            decision_addr,
        })
    }

    /// Serve `app` on an already bound listener, beside the gateway (`portcullis dev`).
    pub fn add_http_service<A>(
        &mut self,
        name: &'static str,
        listener: TcpListener,
        app: A,
    ) -> Result<SocketAddr, StartupError>
    where
        A: pingora::apps::http_app::ServeHttp + Send + Sync + 'static,
    {
        let addr = listener.local_addr().map_err(|source| StartupError::Bind {
            key: name,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartupError::Bind {
                key: name,
                addr,
                source,
            })?;
        let mut service = ListeningService::new(name.into(), app);
        service.add_tcp(&addr.to_string());
        self.server.add_service(Prebound {
            inner: service,
            fds: vec![(addr.to_string(), listener.into_raw_fd())],
            on_start: None,
            threads: Some(1),
        });
        Ok(addr)
    }

    /// Where the proxy listens (the real port when the config said 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where the decision endpoint listens, when `[decision]` is configured.
    pub fn decision_addr(&self) -> Option<SocketAddr> {
        self.decision_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Run until SIGTERM or SIGINT, then stop accepting, let in-flight requests finish within
    /// `server.shutdown_grace`, and return.
    pub fn run_until_signal(self) {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(TerminationSignals),
        });
    }

    /// Run on a thread of its own; the gateway stops when the handle is dropped. For tests and
    /// for `portcullis dev`.
    pub fn spawn(self) -> RunningApp {
        let (stop, stopped) = oneshot::channel();
        let (proxy_addr, metrics_addr, decision_addr) =
            (self.proxy_addr, self.metrics_addr, self.decision_addr);
        let thread = std::thread::spawn(move || {
            self.server.run(RunArgs {
                shutdown_signal: Box::new(ChannelSignal(Mutex::new(Some(stopped)))),
            })
        });
        RunningApp {
            proxy_addr,
            metrics_addr,
            decision_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A gateway running on its own thread; dropping it shuts the gateway down and waits.
pub struct RunningApp {
    pub proxy_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Where the decision endpoint listens, when `[decision]` is configured.
    pub decision_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(ShutdownSignal::FastShutdown);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<(RawFd, SocketAddr), StartupError> {
    let error = |source| StartupError::Bind { key, addr, source };
    let listener = TcpListener::bind(addr).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener.into_raw_fd(), local))
}

/// One round-robin pool per distinct upstream list; routes with the same list share it.
/// Host names are resolved once, here. Every pool reports to one shared health registry.
fn build_pools(
    config: &Config,
    health: &Arc<HealthRegistry>,
    gauge: &IntGaugeVec,
) -> Result<Pools, StartupError> {
    let mut by_list: HashMap<&[String], Arc<LoadBalancer<RoundRobin>>> = HashMap::new();
    let mut pools = Vec::with_capacity(config.routes.len());
    for (route, rc) in config.routes.iter().enumerate() {
        if let Some(pool) = by_list.get(rc.upstreams.as_slice()) {
            pools.push(pool.clone());
            continue;
        }
        let mut backends = BTreeSet::new();
        for upstream in &rc.upstreams {
            let addrs = upstream
                .to_socket_addrs()
                .map_err(|source| StartupError::Resolve {
                    route,
                    upstream: upstream.clone(),
                    source,
                })?;
            for addr in addrs {
                gauge.with_label_values(&[&addr.to_string()]).set(1);
                backends.insert(
                    Backend::new(&addr.to_string())
                        .map_err(|source| StartupError::Pool { route, source })?,
                );
            }
        }
        let view = Backends::new_with_health_registry(Static::new(backends), health.clone());
        let pool = Arc::new(LoadBalancer::<RoundRobin>::from_backends(view));
        populate(&pool).map_err(|source| StartupError::Pool { route, source })?;
        by_list.insert(&rc.upstreams, pool.clone());
        pools.push(pool);
    }
    Ok(pools)
}

/// Load a pool's static backend list once. `update` is async only for dynamic discovery; it runs
/// on a helper thread so that `App::build` may be called from inside a tokio runtime too.
fn populate(pool: &LoadBalancer<RoundRobin>) -> pingora::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(pool.update())
        })
        .join()
        .expect("pool update does not panic")
    })
}

/// Loads and refreshes every issuer's keys in the background.
struct KeyRefresh(Arc<Authenticator>);

#[async_trait]
impl BackgroundService for KeyRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks: Vec<_> = self
            .0
            .refresh_tasks()
            .into_iter()
            .map(tokio::spawn)
            .collect();
        let _ = shutdown.changed().await;
        tasks.iter().for_each(|t| t.abort());
    }
}

/// Mirrors health-check results into `portcullis_upstream_healthy`.
struct HealthGauge(IntGaugeVec);

#[async_trait]
impl HealthObserve for HealthGauge {
    async fn observe(&self, target: &Backend, healthy: bool) {
        tracing::warn!(upstream = %target.addr, healthy, "upstream health changed");
        self.0
            .with_label_values(&[&target.addr.to_string()])
            .set(i64::from(healthy));
    }
}

/// A listening service whose sockets were bound before pingora started: they are put into
/// pingora's listen-fd table, where its listener finds them instead of binding again.
struct Prebound<S> {
    inner: S,
    fds: Vec<(String, RawFd)>,
    on_start: Option<Box<dyn FnOnce() + Send + Sync>>,
    threads: Option<usize>,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Prebound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(table) = &fds {
            let mut table = table.lock();
            for (addr, fd) in self.fds.drain(..) {
                table.add(addr, fd);
            }
        }
        if let Some(on_start) = self.on_start.take() {
            on_start();
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, ready)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// SIGTERM and SIGINT both mean: stop accepting, finish in-flight requests, exit 0.
struct TerminationSignals;

#[async_trait]
impl ShutdownSignalWatch for TerminationSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Shutdown on request of a [`RunningApp`] handle (or when the handle is gone).
struct ChannelSignal(Mutex<Option<oneshot::Receiver<ShutdownSignal>>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let receiver = self.0.lock().expect("not poisoned").take();
        match receiver {
            Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
            None => std::future::pending().await,
        }
    }
}
