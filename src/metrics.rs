//! Prometheus metrics: typed handles registered on a [`Registry`] passed in.
//!
//! Production registers on the default registry that `/metrics` serves; each test builds its own.
//! Label values are bounded: route names from the config, fixed enums, configured upstreams.
//! Never a token, a subject, or a request path.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `route` label of a request that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route,status}`; status is the class: `2xx`, `4xx`...
    pub requests: IntCounterVec,
    /// `portcullis_request_duration_seconds{route}`: from request header read to response end.
    pub request_duration: HistogramVec,
    /// `portcullis_upstream_errors_total{route,kind}`; kind from [`UpstreamErrorKind`].
    pub upstream_errors: IntCounterVec,
    /// `portcullis_upstream_resends_total{route,reason}`: requests sent once more because an
    /// HTTP/2 upstream left their stream unprocessed; reason from [`ResendReason`].
    pub upstream_resends: IntCounterVec,
    /// `portcullis_upstream_healthy{upstream}`: 1 when the last health check passed.
    pub upstream_healthy: IntGaugeVec,
    /// `portcullis_auth_decisions_total{route,outcome}`; outcome from `AuthError::kind` or `allowed`.
    pub auth_decisions: IntCounterVec,
    /// `portcullis_rate_limited_total{route}`: requests answered 429.
    pub rate_limited: IntCounterVec,
    /// `portcullis_auth_duration_seconds`: time spent deciding, including any key refetch.
    pub auth_duration: Histogram,
    /// `portcullis_jwks_fetch_total{issuer,result}`.
    pub jwks_fetches: IntCounterVec,
    /// `portcullis_jwks_keys{issuer}`: usable keys in the current set.
    pub jwks_keys: IntGaugeVec,
    /// `portcullis_jwks_age_seconds{issuer}`: age of the current key set, set at each scrape.
    pub jwks_age: GaugeVec,
    /// `portcullis_token_cache_requests_total{result}`: `hit` or `miss`.
    pub token_cache: IntCounterVec,
    /// `portcullis_introspection_requests_total{result}`: `active`, `inactive`, or an error kind.
    pub introspection_requests: IntCounterVec,
    /// `portcullis_introspection_duration_seconds`: one call to the endpoint.
    pub introspection_duration: Histogram,
    /// `portcullis_introspection_cache_requests_total{result}`: `hit`, `negative_hit`, `miss`.
    pub introspection_cache: IntCounterVec,
    /// `portcullis_introspection_cache_entries`: set at each scrape.
    pub introspection_cache_entries: IntGauge,
    /// `portcullis_introspection_in_flight`: calls to the endpoint outstanding now.
    pub introspection_in_flight: IntGauge,
    /// `portcullis_client_timeouts_total{phase}`: connections closed because the client was too
    /// slow; phase `header` (`client_header_timeout`), `body` (`client_body_timeout`) or `send`
    /// (`send_timeout`).
    pub client_timeouts: IntCounterVec,
    /// `portcullis_dpop_replay_cache_full_total`: proofs refused (503) because the in-memory
    /// replay set was full of proofs still inside their window: raise
    /// `[dpop] replay_cache_capacity`.
    pub dpop_replay_full: IntCounter,
    /// `portcullis_dpop_replay_cache_entries`: proofs remembered in memory, set at each scrape.
    pub dpop_replay_entries: IntGauge,
    /// `portcullis_config_reloads_total{result}`: `success` or `failure` (the old config kept).
    pub config_reloads: IntCounterVec,
    /// `portcullis_config_last_reload_successful`: 1 when the last reload (or the start) applied
    /// its file, 0 when the last reload was refused.
    pub config_last_reload_successful: IntGauge,
    /// `portcullis_config_last_reload_success_timestamp_seconds`: when the config now in use
    /// was loaded (the start, or the last reload that applied).
    pub config_last_reload_success: prometheus::Gauge,
    /// `portcullis_trace_exports_total{result}`: OTLP export requests (`[tracing]`), by result:
    /// `ok`, `bad_status` (the collector refused the batch) or `unreachable`.
    pub trace_exports: IntCounterVec,
    /// `portcullis_tls_certificate_reloads_total{result}`: `success`, or `failure` (the old
    /// certificates stay).
    pub tls_reloads: IntCounterVec,
    /// `portcullis_tls_handshakes_total{result}`: `ok`, `failed` (a protocol error, no shared
    /// version, cipher or ALPN protocol) or `timeout` (not done within `client_header_timeout`).
    pub tls_handshakes: IntCounterVec,
    /// `portcullis_tls_certificate_expiry_timestamp_seconds{certificate}`: the `notAfter` of
    /// each certificate in use, by its config key (`server.tls_cert`, ...).
    pub tls_certificate_expiry: prometheus::GaugeVec,
    /// `portcullis_connections_total{protocol}`: client connections of the proxy listeners by
    /// the protocol they speak: `http/1.1` or `h2`.
    pub connections: IntCounterVec,
    /// `portcullis_http2_rapid_reset_closes_total`: HTTP/2 connections closed because their
    /// client cancelled more streams than `server.http2.max_cancelled_streams` allows.
    pub http2_rapid_reset_closes: prometheus::IntCounter,
}

/// What [`Metrics::initialise`] needs to know of the configuration.
pub struct Known<'a> {
    pub routes: Vec<KnownRoute<'a>>,
    pub issuers: Vec<&'a str>,
    pub introspection: bool,
}

/// What [`Metrics::initialise`] needs to know of one route.
pub struct KnownRoute<'a> {
    pub name: &'a str,
    /// The route checks tokens: its decisions are counted.
    pub checks_tokens: bool,
    /// The route has a rate limit.
    pub limited: bool,
    /// The route speaks HTTP/2 to its upstreams, so a request may be sent once more.
    pub http2_upstream: bool,
}

/// Why a request went to an HTTP/2 upstream once more: the `reason` label of
/// `portcullis_upstream_resends_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResendReason {
    /// The upstream reset the stream with `REFUSED_STREAM` (RFC 9113 §8.7).
    RefusedStream,
    /// The upstream's `GOAWAY` ended the stream unprocessed (§6.8).
    GoAway,
}

impl ResendReason {
    pub const ALL: [ResendReason; 2] = [ResendReason::RefusedStream, ResendReason::GoAway];

    pub fn as_str(self) -> &'static str {
        match self {
            ResendReason::RefusedStream => "refused_stream",
            ResendReason::GoAway => "goaway",
        }
    }
}

/// The `result` values of `portcullis_trace_exports_total`.
pub const TRACE_EXPORT_RESULTS: [&str; 3] = ["ok", "bad_status", "unreachable"];

/// The `result` values of `portcullis_jwks_fetch_total` (`FetchError::kind`, and `ok`).
const JWKS_RESULTS: [&str; 6] = [
    "ok",
    "unreachable",
    "bad_status",
    "bad_jwks",
    "bad_discovery",
    "bad_secret",
];

/// The `result` values of `portcullis_introspection_requests_total` (`CallError::kind`, and
/// the two answers).
const INTROSPECTION_RESULTS: [&str; 10] = [
    "active",
    "inactive",
    "no_endpoint",
    "overloaded",
    "timeout",
    "bad_answer",
    "unreachable",
    "unauthorized",
    "bad_status",
    "no_secret",
];

/// Why a request could not be served by its upstream: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connection refused or reset while connecting.
    Connect,
    /// Connecting or reading took longer than the configured timeout.
    Timeout,
    /// Every upstream of the route failed its health check.
    NoHealthyUpstream,
    /// The upstream closed or broke the connection mid-exchange, or answered garbage.
    Protocol,
    /// The TLS handshake with the upstream failed (`upstream_tls`): its certificate did not
    /// verify for the name, or no common TLS version.
    Tls,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::NoHealthyUpstream,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Tls => "tls",
        }
    }
}

impl Metrics {
    /// Create every labelled series the configuration can produce, at 0, so that dashboards
    /// and alerts see a 0 rather than no data before the first event: routes × status classes,
    /// outcomes and upstream error kinds, routes to HTTP/2 upstreams × resend reasons, issuers
    /// × key-fetch results, introspection results.
    pub fn initialise(&self, known: &Known) {
        for r in &known.routes {
            let route = r.name;
            for class in ["2xx", "4xx", "5xx"] {
                self.requests.with_label_values(&[route, class]);
            }
            // Found by the dashboard's check (tests/deploy_assets.rs): a route's latency
            // histogram was absent until its first request.
            self.request_duration.with_label_values(&[route]);
            for kind in UpstreamErrorKind::ALL {
                self.upstream_errors
                    .with_label_values(&[route, kind.as_str()]);
            }
            if r.http2_upstream {
                for reason in ResendReason::ALL {
                    self.upstream_resends
                        .with_label_values(&[route, reason.as_str()]);
                }
            }
            if r.checks_tokens {
                for outcome in crate::auth::AuthError::OUTCOMES {
                    self.auth_decisions.with_label_values(&[route, outcome]);
                }
            }
            if r.limited {
                self.rate_limited.with_label_values(&[route]);
            }
        }
        for class in ["4xx", "5xx"] {
            self.requests.with_label_values(&[NO_ROUTE, class]);
        }
        for issuer in &known.issuers {
            for result in JWKS_RESULTS {
                self.jwks_fetches.with_label_values(&[issuer, result]);
            }
        }
        if known.introspection {
            for result in INTROSPECTION_RESULTS {
                self.introspection_requests.with_label_values(&[result]);
            }
            for result in ["hit", "negative_hit", "miss"] {
                self.introspection_cache.with_label_values(&[result]);
            }
        }
        for result in ["hit", "miss"] {
            self.token_cache.with_label_values(&[result]);
        }
        for phase in ["header", "body", "send"] {
            self.client_timeouts.with_label_values(&[phase]);
        }
    }

    /// Create and register every metric. Fails only if a name is already registered.
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests answered, by route and status class.",
            ),
            &["route", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request header to the end of the response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_errors_total",
                "Requests that failed at the upstream, by route and kind.",
            ),
            &["route", "kind"],
        )?;
        let upstream_resends = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_resends_total",
                "Requests sent once more because an HTTP/2 upstream left their stream \
                 unprocessed, by route and reason.",
            ),
            &["route", "reason"],
        )?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_healthy",
                "1 when the upstream passed its last health check, else 0.",
            ),
            &["upstream"],
        )?;
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_auth_decisions_total",
                "Authorization decisions, by route and outcome.",
            ),
            &["route", "outcome"],
        )?;
        let auth_duration = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_auth_duration_seconds",
                "Time spent deciding whether a request may pass, including key refetches.",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 0.5,
                2.5,
            ]),
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "portcullis_jwks_fetch_total",
                "Key set fetches, by issuer and result.",
            ),
            &["issuer", "result"],
        )?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new(
                "portcullis_jwks_keys",
                "Usable keys in the issuer's current key set.",
            ),
            &["issuer"],
        )?;
        let jwks_age = GaugeVec::new(
            Opts::new(
                "portcullis_jwks_age_seconds",
                "Age of the issuer's current key set.",
            ),
            &["issuer"],
        )?;
        let token_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_token_cache_requests_total",
                "Verified-token cache lookups, by result.",
            ),
            &["result"],
        )?;
        let introspection_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_introspection_requests_total",
                "Token introspection calls, by result: active, inactive or the error kind.",
            ),
            &["result"],
        )?;
        let introspection_duration = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_introspection_duration_seconds",
                "Duration of one call to the introspection endpoint.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let introspection_cache = IntCounterVec::new(
            Opts::new(
                "portcullis_introspection_cache_requests_total",
                "Introspection cache lookups, by result: hit, negative_hit or miss.",
            ),
            &["result"],
        )?;
        let introspection_cache_entries = IntGauge::new(
            "portcullis_introspection_cache_entries",
            "Entries in the introspection cache.",
        )?;
        let introspection_in_flight = IntGauge::new(
            "portcullis_introspection_in_flight",
            "Calls to the introspection endpoint outstanding now.",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "portcullis_rate_limited_total",
                "Requests refused with 429 by their route's rate limit, by route.",
            ),
            &["route"],
        )?;
        let client_timeouts = IntCounterVec::new(
            Opts::new(
                "portcullis_client_timeouts_total",
                "Connections closed because the client was too slow, by phase: header, body, send.",
            ),
            &["phase"],
        )?;
        let dpop_replay_full = IntCounter::new(
            "portcullis_dpop_replay_cache_full_total",
            "DPoP proofs refused because the in-memory replay set was full of live proofs.",
        )?;
        let dpop_replay_entries = IntGauge::new(
            "portcullis_dpop_replay_cache_entries",
            "DPoP proofs remembered in memory against replay.",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reloads (SIGHUP), by result: success, or failure (the old configuration stays).",
            ),
            &["result"],
        )?;
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_last_reload_successful = IntGauge::new(
            "portcullis_config_last_reload_successful",
            "1 when the last reload (or the start) applied its configuration, 0 when the last reload was refused.",
        )?;
        config_last_reload_successful.set(1);
        let config_last_reload_success = prometheus::Gauge::new(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "When the configuration in use was loaded (the start or the last reload that applied), seconds since the epoch.",
        )?;
        config_last_reload_success.set(unix_now());
        let trace_exports = IntCounterVec::new(
            Opts::new(
                "portcullis_trace_exports_total",
                "OTLP span export requests ([tracing]), by result: ok, bad_status (the collector refused the batch) or unreachable.",
            ),
            &["result"],
        )?;
        for result in TRACE_EXPORT_RESULTS {
            trace_exports.with_label_values(&[result]);
        }
        registry.register(Box::new(trace_exports.clone()))?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_certificate_reloads_total",
                "TLS certificate reloads (a file changed, or a configuration reload), by result: success, or failure (the old certificates stay).",
            ),
            &["result"],
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_handshakes_total",
                "TLS handshakes on the proxy listener, by result: ok, failed or timeout.",
            ),
            &["result"],
        )?;
        for result in ["success", "failure"] {
            tls_reloads.with_label_values(&[result]);
        }
        for result in ["ok", "failed", "timeout"] {
            tls_handshakes.with_label_values(&[result]);
        }
        let tls_certificate_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "portcullis_tls_certificate_expiry_timestamp_seconds",
                "When each TLS certificate in use expires (its notAfter), seconds since the epoch, by its config key.",
            ),
            &["certificate"],
        )?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        let connections = IntCounterVec::new(
            Opts::new(
                "portcullis_connections_total",
                "Client connections of the proxy listeners, by protocol: http/1.1 or h2.",
            ),
            &["protocol"],
        )?;
        for protocol in ["http/1.1", "h2"] {
            connections.with_label_values(&[protocol]);
        }
        registry.register(Box::new(connections.clone()))?;
        let http2_rapid_reset_closes = prometheus::IntCounter::new(
            "portcullis_http2_rapid_reset_closes_total",
            "HTTP/2 connections closed because their client cancelled more streams than server.http2.max_cancelled_streams allows.",
        )?;
        registry.register(Box::new(http2_rapid_reset_closes.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(dpop_replay_full.clone()))?;
        registry.register(Box::new(dpop_replay_entries.clone()))?;
        registry.register(Box::new(introspection_duration.clone()))?;
        registry.register(Box::new(introspection_cache_entries.clone()))?;
        registry.register(Box::new(introspection_in_flight.clone()))?;
        for metric in [
            &auth_decisions,
            &jwks_fetches,
            &token_cache,
            &introspection_requests,
            &introspection_cache,
            &client_timeouts,
            &rate_limited,
        ] {
            registry.register(Box::new(metric.clone()))?;
        }
        registry.register(Box::new(auth_duration.clone()))?;
        registry.register(Box::new(jwks_keys.clone()))?;
        registry.register(Box::new(jwks_age.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(upstream_resends.clone()))?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "Always 1; the version of the running binary is its label.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, process_virtual_memory_bytes, process_start_time_seconds. The
        // default registry has them already (the crate's `process` feature registers them).
        #[cfg(target_os = "linux")]
        match registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => return Err(e),
        }
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_errors,
            upstream_resends,
            upstream_healthy,
            auth_decisions,
            rate_limited,
            auth_duration,
            jwks_fetches,
            jwks_keys,
            jwks_age,
            token_cache,
            introspection_requests,
            introspection_duration,
            introspection_cache,
            introspection_cache_entries,
            introspection_in_flight,
            client_timeouts,
            dpop_replay_full,
            dpop_replay_entries,
            config_reloads,
            config_last_reload_successful,
            config_last_reload_success,
            trace_exports,
            tls_reloads,
            tls_handshakes,
            tls_certificate_expiry,
            connections,
            http2_rapid_reset_closes,
        })
    }

    /// Count a reload: applied (`true`) or refused.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_last_reload_successful.set(i64::from(applied));
        if applied {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// The Prometheus text exposition of everything on the registry.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Seconds since the epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The request method for logs: one of the methods of RFC 9110 §9 and RFC 5789 (`PATCH`), or
/// `OTHER`. A method is any token the client likes, of any length: never log it as sent.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// `200` -> `2xx`: the bounded status label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}
