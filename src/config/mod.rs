//! Configuration: `gateway.toml` parsed into [`raw`] structs, then validated into [`Config`].
//!
//! Validation collects every problem rather than stopping at the first, and each problem names
//! the key path and the fix, e.g. `routes[2].upstreams: must list at least one host:port`.
//! URLs, durations, addresses and methods are parsed here, so the running gateway only ever
//! holds typed values.

mod dpop;
mod issuer;
mod policy;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;

pub use crate::auth::settings::{
    Algorithm, AuthConfig, ClientAuth, IntrospectionConfig, IssuerConfig, KeySource, ScopeClaim,
    SecretError, SecretSource, TokenTypes, TokensConfig,
};
pub use crate::auth::RoutePolicy;
pub use crate::gate::headers::IdentityNames;
pub use crate::gate::limit::{LimitKey, RateLimit};
pub use crate::gate::metadata::ResourceMetadata;
pub use raw::RawConfig;

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub upstream: UpstreamConfig,
    pub tokens: TokensConfig,
    pub issuers: Vec<IssuerConfig>,
    pub introspection: Option<IntrospectionConfig>,
    /// `[dpop]`; the defaults when only a route's `dpop` asks for DPoP.
    pub dpop: Option<crate::auth::dpop::DpopSettings>,
    pub decision: Option<DecisionConfig>,
    /// `[identity] strip_headers` and every mapped claim header: the names no client may send.
    pub identity: IdentityNames,
    /// `[resource_metadata]` and the routes' `resource`: the RFC 9728 documents to serve.
    pub resource_metadata: Option<ResourceMetadata>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[tracing]`: absent, no span is exported.
    pub tracing: Option<TracingConfig>,
    pub routes: Vec<RouteConfig>,
}

/// `[tracing]`: one span per proxied request, with a child span for each identity-provider
/// call it waited on, exported over OTLP/HTTP (protobuf) to a collector.
///
/// Sampling is parent-based by default (OpenTelemetry's `ParentBased(TraceIdRatioBased)`): a
/// request with a valid `traceparent` is exported exactly when its sampled flag is set, and a
/// trace started here is sampled with probability `sample_ratio`, the flag the upstream
/// receives saying which.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `otlp_endpoint`: required; the collector's traces URL, e.g.
    /// `http://otel-collector:4318/v1/traces` (used as given; no path is appended).
    pub endpoint: url::Url,
    /// `service_name`, default `"portcullis"`: the resource's `service.name`.
    pub service_name: String,
    /// `sample_ratio`, default `1.0`: the share of traces started here that are sampled (and,
    /// without `follow_client_sampling`, of every trace).
    pub sample_ratio: f64,
    /// `follow_client_sampling`, default `true`: a client's `traceparent` sampled flag decides
    /// for its trace. `false` (an edge facing untrusted clients): `sample_ratio` decides for
    /// every request, and the flag the upstream receives says what was decided, so no client
    /// can make the gateway export its requests.
    pub follow_client_sampling: bool,
    /// `export_timeout`, default `"10s"`: the bound on one batch's export, retries included.
    pub export_timeout: Duration,
}

/// `[log]`: the binary's log lines on stderr (`RUST_LOG` filters them, default `info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// `format`, default `"text"`; `"json"`: one JSON object per line, the event's fields at
    /// the top level beside `timestamp`, `level` and `target`.
    pub json: bool,
    /// `log_subject`, default `false`: the access line also names the token's `sub`, which is
    /// personal data in many places.
    pub log_subject: bool,
}

/// `[decision]`: a listener answering forward-auth checks for other proxies.
#[derive(Debug, Clone)]
pub struct DecisionConfig {
    /// `listen`: required; keep it private to the proxy that asks (loopback or a private network).
    pub listen: SocketAddr,
    /// `convention`: where the original request's method and URI are read from.
    pub convention: Convention,
}

/// Which headers carry the original request to the decision endpoint. Only the decision
/// listener reads them; the proxy listener never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// `"nginx"`: `X-Original-Method` and `X-Original-URI` (nginx `auth_request`).
    Nginx,
    /// `"traefik"`: `X-Forwarded-Method` and `X-Forwarded-Uri` (Traefik `forwardAuth`).
    Traefik,
    /// `"envoy"`: the check request's own method and path (Envoy `ext_authz` HTTP service).
    Envoy,
    /// `"ingress-nginx"`: `X-Original-Method` and `X-Original-URL`, the whole URL
    /// (`$scheme://$http_host$request_uri`), as the Kubernetes ingress-nginx controller's
    /// `auth-url` annotation sends them.
    IngressNginx,
}

impl AuthConfig {
    /// Parse and validate TOML holding only `realm`, `[tokens]`, `[[issuers]]` and
    /// `[introspection]` (the middleware's config; unknown keys are errors as everywhere).
    pub fn parse(text: &str) -> Result<AuthConfig, ConfigError> {
        validate::validate_auth(parse_toml(text)?)
    }
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `listen`, default `0.0.0.0:8080`. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// `realm`, default `portcullis`: the `realm` attribute of every challenge (RFC 6750 §3).
    pub realm: String,
    /// `threads`, default: the number of cores. Worker threads of the proxy.
    pub threads: usize,
    /// `shutdown_grace`, default `5s`: after SIGTERM/SIGINT, how long in-flight requests may run.
    pub shutdown_grace: Duration,
    /// `drain_delay`, default `5s`: after SIGTERM, `/readyz` answers 503 at once while the
    /// listeners keep accepting this long (load balancers stop sending meanwhile); then the
    /// drain of `shutdown_grace` begins. SIGINT drains without the delay.
    pub drain_delay: Duration,
    /// `reload_poll_interval`, default none: also reload when the config file or a secret file
    /// it names changes, looked at this often (Kubernetes updates mounted ConfigMaps and
    /// Secrets in place, with no `SIGHUP` to send to each pod).
    pub reload_poll_interval: Option<Duration>,
    /// `trust_forwarded_headers`, default `false`: when true, `X-Forwarded-For` from the client
    /// is appended to and `X-Forwarded-Proto` / `-Host` are kept; when false they are replaced.
    pub trust_forwarded_headers: bool,
    /// `max_uri_bytes`, default 8192: a longer request target gets 414.
    pub max_uri_bytes: usize,
    /// `max_header_bytes`, default 32768: a larger header section (`name: value\r\n` per
    /// field) gets 431.
    pub max_header_bytes: usize,
    /// `client_header_timeout`, default `10s`: the whole time a client has to send a request
    /// head, counted from the connection's accept for its first request and from the first byte
    /// of each later one. A connection that misses it is answered 408 and closed (slowloris).
    pub client_header_timeout: Duration,
    /// `client_body_timeout`, default `60s`: the longest wait for the next bytes of a request
    /// body (or of an upgraded connection). Exceeding it answers 408, or closes the connection
    /// once the response has begun.
    pub client_body_timeout: Duration,
    /// `send_timeout`, default `60s`: the longest time the client may leave the gateway's
    /// writes waiting (a client that stops reading). The connection is then closed.
    pub send_timeout: Duration,
    /// `keepalive_timeout`, default `60s`: how long a kept-alive client connection may sit
    /// idle between requests before it is closed (without an answer).
    pub keepalive_timeout: Duration,
    /// `max_body_bytes`, default: no limit. A request body longer than this is refused with
    /// 413 (before forwarding, when `Content-Length` says so; otherwise the forwarded request
    /// is cut off and the client answered 413 if nothing was answered yet).
    pub max_body_bytes: Option<u64>,
    /// `tls_cert` and `tls_key` (and `[[server.tls_certificates]]`): `listen` speaks TLS.
    pub tls: Option<TlsConfig>,
    /// `plain_listen`, default none; only with TLS: a plain-HTTP listener beside the TLS one
    /// (a sidecar's loopback, say).
    pub plain_listen: Option<SocketAddr>,
    /// `tls_reload_interval`, default `10s`: how often the certificate and key files are looked
    /// at for a change (a renewal), which is then loaded without a restart.
    pub tls_reload_interval: Duration,
    /// `[server.http2]`: HTTP/2 from clients.
    pub http2: Http2Config,
}

/// `[server.http2]`: HTTP/2 from clients (RFC 9113), by TLS ALPN `h2` and, with `cleartext`,
/// with prior knowledge on plain listeners. Every HTTP/1.1 rule holds per stream: the size
/// limits, the canonical target, the gate, identity and forwarded headers; the upstream hop
/// stays HTTP/1.1. Read at start: a change needs a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Config {
    /// `enabled`, default `true`: TLS listeners offer `h2` before `http/1.1` by ALPN
    /// (RFC 7301); `false` offers `http/1.1` only.
    pub enabled: bool,
    /// `cleartext`, default `false`: plain listeners (`listen` without TLS, `plain_listen`)
    /// also take HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3), told apart from HTTP/1.1 by
    /// the connection preface. For a sidecar behind a mesh that speaks h2c to it. The
    /// HTTP/1.1 `Upgrade: h2c` is never honoured nor forwarded.
    pub cleartext: bool,
    /// `max_concurrent_streams`, default 100 (RFC 9113 §6.5.2 recommends no fewer): streams a
    /// client may have open on one connection; more are refused by the protocol.
    pub max_concurrent_streams: u32,
    /// `max_header_list_size`, default (`None`) `max_uri_bytes + max_header_bytes + 4096`, the
    /// HTTP/1.1 head buffer's size (so that changing those alone needs no HTTP/2 restart): the largest
    /// decoded header block (RFC 9113 §6.5.2: name and value plus 32 per field, pseudo-header
    /// fields included). A larger one is answered 431 by the protocol layer, and a block that
    /// never ends (a CONTINUATION flood) closes the connection. `max_header_bytes` still applies
    /// to the regular fields, as on HTTP/1.1.
    pub max_header_list_size: Option<u32>,
    /// `initial_stream_window_size`, default 262144 (256 KiB): how much of one stream's request
    /// body a client may send ahead of the upstream's reading (flow control, §5.2).
    pub initial_stream_window_size: u32,
    /// `initial_connection_window_size`, default 1048576 (1 MiB): the same for all of one
    /// connection's streams together; the most request body one connection can make the
    /// gateway hold.
    pub initial_connection_window_size: u32,
    /// `ping_interval`, default `60s`; `0s` turns it off: a connection that has sent nothing for
    /// this long is sent a PING (§6.7), to find a peer that is gone.
    pub ping_interval: Option<Duration>,
    /// `ping_timeout`, default `20s`: a PING unanswered this long closes the connection.
    pub ping_timeout: Duration,
    /// `max_cancelled_streams`, default 200: streams a client may cancel (`RST_STREAM`) before
    /// their answer, on one connection within 10 s. Beyond, the connection is closed (GOAWAY):
    /// the rapid-reset attack (CVE-2023-44487) opens and cancels streams so that their work
    /// is never bounded by `max_concurrent_streams`. Streams cancelled before they were
    /// handed to the gateway are bounded by the protocol layer itself (20).
    pub max_cancelled_streams: u32,
    /// `max_streams_per_worker`, default 1000: HTTP/2 streams open at once on one worker, over
    /// all its connections. Each holds an upstream connection (a file descriptor), so without
    /// a bound a few hundred connections at `max_concurrent_streams` could use up the
    /// process's descriptors. A stream beyond is answered 503 with `Retry-After: 1`.
    pub max_streams_per_worker: u32,
}

/// TLS termination on `server.listen` (TLS 1.2 and 1.3, rustls): a default certificate and
/// more chosen by the client's SNI. The files are read again when they change and at reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `tls_cert` / `tls_key`: the certificate chain and private key (PEM) presented when no
    /// other certificate's names match the client's SNI (or it sends none).
    pub default: TlsPair,
    /// `[[server.tls_certificates]]`: more pairs; the first whose certificate names the SNI
    /// host (exactly, or by a `*.` wildcard) is presented.
    pub more: Vec<TlsPair>,
    /// `client_ca`, default none: client certificates are asked for and verified against these
    /// CA certificates (PEM); a verified one's SHA-256 thumbprint reaches the auth core, for
    /// certificate-bound tokens (RFC 8705 §3). Read at start; a change needs a restart.
    pub client_ca: Option<std::path::PathBuf>,
    /// `client_auth`, default `"optional"`: `"required"` refuses a handshake without a valid
    /// client certificate.
    pub client_required: bool,
}

/// A certificate chain file and its private key file, with the keys they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPair {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// `server.tls_cert` or `server.tls_certificates[i].cert` (the key's ends in `key`).
    pub cert_key: String,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `listen`, default `127.0.0.1:9090`: serves `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

/// `[upstream]`: how the gateway talks to the services behind it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `connect_timeout`, default `2s`. Exceeding it answers 504.
    pub connect_timeout: Duration,
    /// `read_timeout`, default `30s`: the longest wait for each read from the upstream. 504.
    pub read_timeout: Duration,
    /// `write_timeout`, default `30s`: the longest wait for each write to the upstream.
    pub write_timeout: Duration,
    /// `idle_timeout`, default `60s`: how long a pooled upstream connection may sit idle.
    pub idle_timeout: Duration,
    /// `health_check_interval`, default `5s`: the TCP health check of every upstream.
    pub health_check_interval: Duration,
    /// `resolve_interval`, default `30s`: upstream host names are resolved again this often;
    /// an address that appears joins the rotation, one that goes leaves it, and pooled
    /// connections to addresses that stay are kept. A name that fails to resolve keeps its
    /// last addresses.
    pub resolve_interval: Duration,
    /// `keepalive_pool_size`, default `128`: idle upstream connections kept per upstream address
    /// and worker.
    pub keepalive_pool_size: usize,
    /// `http2_max_streams_per_connection`, default `100`: streams one HTTP/2 upstream
    /// connection carries at once (`upstream_protocol = "http2"`); more open another.
    pub http2_max_streams_per_connection: usize,
    /// `http2_keepalive_interval`, default `30s`: an HTTP/2 upstream connection that has been
    /// silent this long is sent a PING (RFC 9113 §6.7), and one not answered within as long
    /// is closed: a connection the network dropped without a FIN (a NAT or conntrack entry
    /// expired, a node gone) fails its streams (502) and is replaced, rather than taking new
    /// requests until each times out.
    pub http2_keepalive_interval: Duration,
}

/// Whether a route checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `auth = "required"` (default): a valid bearer token with the route's scopes.
    Required,
    /// `auth = "none"`: forwarded without any check.
    None,
}

/// `upstream_protocol`: how the gateway speaks to a route's upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// `"http1"` (default): HTTP/1.1, one pooled connection per request in flight.
    #[default]
    Http1,
    /// `"http2"`: HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3), or chosen by ALPN over TLS.
    /// Streams share a connection per upstream address and worker, another opened when all are
    /// full (`http2_max_streams_per_connection`). gRPC servers need it: trailers and streams.
    Http2,
}

/// `upstream_tls = true`: TLS to a route's upstreams, and what verifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// `upstream_server_name`: the name sent by SNI and verified in the upstream's certificate;
    /// default each `upstreams` entry's host.
    pub server_name: Option<String>,
    /// `upstream_ca_file`: the CA certificates (PEM) upstream certificates are verified
    /// against, instead of the system trust store.
    pub ca_file: Option<std::path::PathBuf>,
    /// `upstream_client_cert` / `upstream_client_key`: the certificate presented to upstreams
    /// that ask for one (mTLS).
    pub client: Option<TlsPair>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `name`: unique; the `route` label of every metric.
    pub name: String,
    /// `path_prefix`: normalised without a trailing `/` (except the root `/`).
    pub path_prefix: String,
    /// `methods`, default every method (`None`).
    pub methods: Option<Vec<Method>>,
    /// `upstreams`: `host:port` entries, resolved when the gateway starts.
    pub upstreams: Vec<String>,
    /// `upstream_protocol`, default `"http1"`; `"http2"`: HTTP/2 with prior knowledge.
    pub upstream_protocol: UpstreamProtocol,
    /// `upstream_tls`, default `false`.
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// What the route requires of a token: `scopes` (every one), `scopes_any` (at least one),
    /// `token_types` (default `["jwt", "opaque"]`), `issuers`, `audiences`,
    /// `[[routes.claims]]` with `claims_match`, `acr_values` and `max_age`; and the claims it
    /// passes on (`claim_headers`, `claims_header`, or the `[identity]` defaults).
    pub policy: RoutePolicy,
    /// `auth`, default `required`.
    pub auth: AuthMode,
    /// `forward_token`, default `false`: keep `Authorization` on the forwarded request.
    pub forward_token: bool,
    /// `allow_path_parameters`, default `false`: accept `;` parameters in the path (400
    /// otherwise), as long as stripping them would not choose another route.
    pub allow_path_parameters: bool,
    /// `allow_method_override`, default `false`: keep `X-HTTP-Method-Override`,
    /// `X-Method-Override`, `X-HTTP-Method` and `X-Original-Method` on the forwarded request
    /// (removed otherwise) and accept a `_method` query parameter (400 otherwise).
    pub allow_method_override: bool,
    /// `allow_options_asterisk`, default `false`: route `OPTIONS *` here (only on `/`).
    pub allow_options_asterisk: bool,
    /// `cors_preflight`, default `"off"`; `"forward"`: a CORS preflight (`OPTIONS` with
    /// `Origin` and `Access-Control-Request-Method`) passes without a token, to the upstream
    /// that answers CORS.
    pub cors_preflight: bool,
    /// The route's resource identifier (RFC 9728): its own `resource`, else
    /// `[resource_metadata] resource`; `None` without `[resource_metadata]`. Its challenges
    /// carry the document's URL as `resource_metadata`.
    pub resource: Option<String>,
    /// `[routes.rate_limit]`: `key`, `requests` per `per`, `burst`.
    pub rate_limit: Option<RateLimit>,
}

/// One thing wrong with a configuration: the key path and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{key}: {message} ({} line {line})", path.display())]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
        line: usize,
    },
    /// The file parsed, but values are wrong; one entry per problem.
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// One line per problem, for `portcullis check`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems } => problems.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse {
                key, message, line, ..
            } => ConfigError::Parse {
                path: path.to_owned(),
                key,
                message,
                line,
            },
            other => other,
        })
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::try_from(parse_toml::<RawConfig>(text)?)
    }

    /// Settings that are valid but weaken a default on purpose: `portcullis check` prints them
    /// and the gateway logs them at start-up.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        if self
            .introspection
            .as_ref()
            .is_some_and(|i| i.allow_any_audience)
        {
            warnings.push(Problem {
                key: "introspection.allow_any_audience".into(),
                message:
                    "introspection answers are accepted whatever their `aud`: a refresh token the \
                          authorization server calls active opens the routes its scopes allow"
                        .into(),
            });
        }
        warnings
    }

    /// The keys whose change a reload cannot apply, with `next` as the reloaded file: the
    /// listeners and their threads, the head size limits (they size each listener's parser),
    /// the drain timings, the log format, the upstream pool settings and the health-check
    /// interval. A reload applies everything else and warns about these; they take effect at
    /// the next restart.
    pub fn restart_needed(&self, next: &Config) -> Vec<&'static str> {
        let (s, n) = (&self.server, &next.server);
        let (u, nu) = (&self.upstream, &next.upstream);
        let decision = |d: &Option<DecisionConfig>| d.as_ref().map(|d| (d.listen, d.convention));
        [
            ("server.listen", s.listen != n.listen),
            ("server.plain_listen", s.plain_listen != n.plain_listen),
            (
                "server.tls_reload_interval",
                s.tls_reload_interval != n.tls_reload_interval,
            ),
            // On or off: the listener's protocol. The certificates themselves reload.
            ("server.tls_cert", s.tls.is_some() != n.tls.is_some()),
            (
                "server.client_ca",
                s.tls.as_ref().map(|t| &t.client_ca) != n.tls.as_ref().map(|t| &t.client_ca),
            ),
            (
                "server.client_auth",
                s.tls.as_ref().map(|t| t.client_required)
                    != n.tls.as_ref().map(|t| t.client_required),
            ),
            ("server.http2", s.http2 != n.http2),
            ("server.threads", s.threads != n.threads),
            ("server.max_uri_bytes", s.max_uri_bytes != n.max_uri_bytes),
            (
                "server.max_header_bytes",
                s.max_header_bytes != n.max_header_bytes,
            ),
            (
                "server.shutdown_grace",
                s.shutdown_grace != n.shutdown_grace,
            ),
            ("server.drain_delay", s.drain_delay != n.drain_delay),
            (
                "server.reload_poll_interval",
                s.reload_poll_interval != n.reload_poll_interval,
            ),
            ("metrics.listen", self.metrics.listen != next.metrics.listen),
            (
                "decision",
                decision(&self.decision) != decision(&next.decision),
            ),
            ("log.format", self.log.json != next.log.json),
            ("tracing", self.tracing != next.tracing),
            (
                "upstream.connect_timeout",
                u.connect_timeout != nu.connect_timeout,
            ),
            (
                "upstream.write_timeout",
                u.write_timeout != nu.write_timeout,
            ),
            ("upstream.idle_timeout", u.idle_timeout != nu.idle_timeout),
            (
                "upstream.keepalive_pool_size",
                u.keepalive_pool_size != nu.keepalive_pool_size,
            ),
            (
                "upstream.http2_max_streams_per_connection",
                u.http2_max_streams_per_connection != nu.http2_max_streams_per_connection,
            ),
            (
                "upstream.http2_keepalive_interval",
                u.http2_keepalive_interval != nu.http2_keepalive_interval,
            ),
            (
                "upstream.health_check_interval",
                u.health_check_interval != nu.health_check_interval,
            ),
            (
                "upstream.resolve_interval",
                u.resolve_interval != nu.resolve_interval,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Every secret the config names that cannot be read now, by key: an unset variable, an
    /// unreadable or empty file, an HMAC secret shorter than 32 bytes; and every `ca_file` that
    /// cannot be read or holds no certificate. Start-up and reload refuse a config with any;
    /// `portcullis check` reports them. (`[dpop]`'s nonce secret is
    /// read, and checked, with the rest of the file.)
    pub fn unreadable_secrets(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut check = |key: String, source: &SecretSource, min: usize| {
            let message = match (source.read_at_least(min), source) {
                (Ok(_), _) => return,
                (Err(_), SecretSource::Env(name)) if min > 1 => {
                    format!("the variable {name} must hold a secret of at least {min} bytes")
                }
                (Err(_), SecretSource::Env(name)) => {
                    format!("the variable {name} is unset or empty; set it to the secret")
                }
                (Err(e), SecretSource::File(_)) => {
                    format!("{e}; mount the secret there or fix the path")
                }
            };
            problems.push(Problem {
                key: format!("{key}_{}", source.suffix()),
                message,
            });
        };
        for (key, source, min) in self.secret_sources() {
            check(key, source, min);
        }
        for (key, path) in self.ca_files() {
            if let Err(e) = crate::auth::fetch::read_trust(path) {
                problems.push(Problem {
                    key,
                    message: format!("{e}; mount the CA certificates there or fix the path"),
                });
            }
        }
        problems
    }

    /// Every `ca_file` of the identity providers, with its key (upstream CA files are the data
    /// plane's: [`Config::upstream_tls_files`]).
    pub fn ca_files(&self) -> Vec<(String, &std::path::Path)> {
        let issuers = self.issuers.iter().enumerate();
        let issuers = issuers
            .filter_map(|(i, c)| Some((format!("issuers[{i}].ca_file"), c.ca_file.as_deref()?)));
        let introspection = self
            .introspection
            .iter()
            .filter_map(|c| Some(("introspection.ca_file".to_owned(), c.ca_file.as_deref()?)));
        issuers.chain(introspection).collect()
    }

    /// The files of TLS to upstreams: CA files, client certificates and keys (the data plane
    /// reads and checks them, `portcullis check` included).
    pub fn upstream_tls_files(&self) -> Vec<&std::path::Path> {
        let settings = self.routes.iter().filter_map(|r| r.upstream_tls.as_ref());
        settings
            .flat_map(|t| {
                let client = t.client.iter();
                let pair = client.flat_map(|c| [c.cert.as_path(), c.key.as_path()]);
                t.ca_file.as_deref().into_iter().chain(pair)
            })
            .collect()
    }

    /// Every host name the config names that does not resolve now, by key: upstreams, key set
    /// and discovery URLs, the introspection endpoint (`portcullis check` without
    /// `--offline`). Start-up refuses an upstream that does not resolve; an identity provider's
    /// host that does not resolve leaves `/readyz` at 503.
    pub fn unresolvable_hosts(&self) -> Vec<Problem> {
        use std::net::ToSocketAddrs;
        let mut problems = Vec::new();
        let mut check = |key: String, host: &str, port: u16| {
            if let Err(e) = (host, port).to_socket_addrs() {
                problems.push(Problem {
                    key,
                    message: format!("{host:?} does not resolve ({e})"),
                });
            }
        };
        let url_host = |url: &url::Url| {
            let host = url
                .host_str()?
                .trim_start_matches('[')
                .trim_end_matches(']');
            Some((host.to_owned(), url.port_or_known_default()?))
        };
        for (i, route) in self.routes.iter().enumerate() {
            for (j, upstream) in route.upstreams.iter().enumerate() {
                if let Some((host, port)) = upstream.rsplit_once(':') {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    if let Ok(port) = port.parse() {
                        check(format!("routes[{i}].upstreams[{j}]"), host, port);
                    }
                }
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let (key, url) = match &issuer.keys {
                KeySource::JwksUri(url) => ("jwks_uri", Some(url.clone())),
                KeySource::Discovery => ("issuer", url::Url::parse(&issuer.issuer).ok()),
                KeySource::HmacSecret(_) => continue,
            };
            if let Some((host, port)) = url.as_ref().and_then(url_host) {
                check(format!("issuers[{i}].{key}"), &host, port);
            }
        }
        if let Some(i) = &self.introspection {
            let (key, url) = match &i.endpoint {
                Some(url) => ("endpoint", Some(url.clone())),
                None => (
                    "issuer",
                    i.issuer.as_deref().and_then(|s| url::Url::parse(s).ok()),
                ),
            };
            if let Some((host, port)) = url.as_ref().and_then(url_host) {
                check(format!("introspection.{key}"), &host, port);
            }
        }
        problems
    }

    /// `[tracing] otlp_endpoint`'s host, when it does not resolve. Not a problem that stops the
    /// gateway (start-up needs no collector; spans are dropped while it is away), so `check`
    /// warns about it.
    pub fn unresolvable_collector(&self) -> Option<Problem> {
        use std::net::ToSocketAddrs;
        let url = &self.tracing.as_ref()?.endpoint;
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = url.port_or_known_default()?;
        let e = (host, port).to_socket_addrs().err()?;
        Some(Problem {
            key: "tracing.otlp_endpoint".into(),
            message: format!("{host:?} does not resolve ({e}); spans are dropped until it does"),
        })
    }

    /// Every secret the config names, with its key (without the `_env` / `_file` suffix) and
    /// the shortest value it may have.
    pub fn secret_sources(&self) -> Vec<(String, &SecretSource, usize)> {
        use crate::auth::settings::MIN_HMAC_SECRET_BYTES;
        let mut sources = Vec::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            if let KeySource::HmacSecret(source) = &issuer.keys {
                let key = format!("issuers[{i}].hmac_secret");
                sources.push((key, source, MIN_HMAC_SECRET_BYTES));
            }
        }
        if let Some(i) = &self.introspection {
            sources.push(("introspection.client_secret".into(), &i.client_secret, 1));
        }
        sources
    }

    /// The sections the auth core is built from.
    pub fn auth(&self) -> AuthConfig {
        AuthConfig {
            realm: self.server.realm.clone(),
            tokens: self.tokens.clone(),
            issuers: self.issuers.clone(),
            introspection: self.introspection.clone(),
            dpop: self.dpop.clone(),
            keep_claims: self.routes.iter().any(|r| r.policy.reads_claims()),
        }
    }
}

/// TOML text into raw structs; an unknown or mistyped key is named with its path and line.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    {
        let parse_error = |key: String, e: &toml::de::Error| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            key,
            message: e.message().trim().to_owned(),
            line: e.span().map_or(0, |s| {
                1 + text[..s.start.min(text.len())].matches('\n').count()
            }),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error("(syntax)".into(), &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(file)".into() } else { key };
            parse_error(key, e.inner())
        })
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        validate::validate(raw)
    }
}
