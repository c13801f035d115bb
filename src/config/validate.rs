//! Raw structs -> typed [`Config`], collecting every problem with its key path and fix.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use url::Url;

use super::issuer::{secure_enough, HTTPS_RULE};
use super::raw::{
    RawAuthConfig, RawConfig, RawIntrospection, RawIssuer, RawRoute, RawServer, RawTokens,
    RawUpstream,
};
use super::{
    AuthConfig, AuthMode, ClientAuth, Config, ConfigError, Convention, DecisionConfig, Http2Config,
    IntrospectionConfig, MetricsConfig, Problem, RouteConfig, SecretSource, ServerConfig,
    TokenTypes, TokensConfig, UpstreamConfig,
};

#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// A humantime duration ("30s", "5m"), or the default when the key is absent.
    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        match value.map(humantime::parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                self.push(
                    key,
                    "must be a duration such as \"500ms\", \"30s\" or \"5m\"",
                );
                default
            }
        }
    }

    /// `{key}_env` or `{key}_file` (`key` is the whole path without the suffix, e.g.
    /// `introspection.client_secret`): exactly one of them, a variable name or a path. `None`
    /// when neither is set (the caller says whether that is a problem) or after a problem.
    pub(super) fn secret_source(
        &mut self,
        key: &str,
        env: Option<&str>,
        file: Option<&str>,
    ) -> Option<SecretSource> {
        match (env, file) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                self.push(
                    format!("{key}_file"),
                    format!("set either {key}_env or {key}_file, not both"),
                );
                None
            }
            (Some(name), None) if is_env_name(name) => Some(SecretSource::Env(name.to_owned())),
            (Some(_), None) => {
                self.push(
                    format!("{key}_env"),
                    "must name the environment variable holding the secret (letters, digits, _); secrets are never written in the file",
                );
                None
            }
            (None, Some(path)) if !path.is_empty() => {
                Some(SecretSource::File(std::path::PathBuf::from(path)))
            }
            (None, Some(_)) => {
                self.push(
                    format!("{key}_file"),
                    "must be the path of a file holding the secret (a mounted Kubernetes Secret)",
                );
                None
            }
        }
    }

    /// A client-facing timeout: a duration from 100ms to 1h, `default_secs` when absent.
    fn timeout(&mut self, key: &str, value: &Option<String>, default_secs: u64) -> Duration {
        let d = self.duration(key, value.as_deref(), Duration::from_secs(default_secs));
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
            self.push(key, "must be from 100ms to 1h");
        }
        d
    }

    fn socket_addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.push(
                key,
                "must be an IP address and port such as \"0.0.0.0:8080\" or \"[::1]:8080\"",
            );
            default.parse().expect("default address parses")
        })
    }

    pub(super) fn positive(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: usize,
        max: usize,
    ) -> usize {
        match value {
            None => default,
            Some(n) if n >= 1 && (n as u64) <= max as u64 => n as usize,
            Some(_) => {
                self.push(key, format!("must be a whole number from 1 to {max}"));
                default
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let s = &raw.server;
    let tls = tls(&mut p, s);
    let plain_listen = s
        .plain_listen
        .as_deref()
        .map(|a| p.socket_addr("server.plain_listen", Some(a), "127.0.0.1:0"));
    if plain_listen.is_some() && tls.is_none() {
        p.push(
            "server.plain_listen",
            "goes with tls_cert and tls_key: without TLS, listen speaks plain HTTP already",
        );
    }
    let auth = auth_sections(
        &mut p,
        "server.realm",
        s.realm.as_deref(),
        &raw.tokens,
        &raw.issuers,
        raw.introspection.as_ref(),
        raw.dpop.as_ref(),
    );
    // Each at most 1 MiB: the head buffer holds both.
    let max_uri_bytes = p.positive("server.max_uri_bytes", s.max_uri_bytes, 8192, 1 << 20);
    let max_header_bytes = p.positive(
        "server.max_header_bytes",
        s.max_header_bytes,
        32768,
        1 << 20,
    );
    let server = ServerConfig {
        listen: p.socket_addr("server.listen", s.listen.as_deref(), "0.0.0.0:8080"),
        realm: auth.realm.clone(),
        threads: p.positive("server.threads", s.threads, cores, 1024),
        shutdown_grace: p.duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref(),
            Duration::from_secs(5),
        ),
        drain_delay: {
            let d = p.duration(
                "server.drain_delay",
                s.drain_delay.as_deref(),
                Duration::from_secs(5),
            );
            if d > Duration::from_secs(3600) {
                p.push("server.drain_delay", "must be at most 1h");
            }
            d
        },
        reload_poll_interval: match s.reload_poll_interval.as_deref() {
            None => None,
            Some(text) => {
                let d = p.duration("server.reload_poll_interval", Some(text), Duration::ZERO);
                if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                    p.push(
                        "server.reload_poll_interval",
                        "must be from 1s to 1h; leave it out to reload on SIGHUP only",
                    );
                }
                Some(d)
            }
        },
        trust_forwarded_headers: s.trust_forwarded_headers.unwrap_or(false),
        max_uri_bytes,
        max_header_bytes,
        client_header_timeout: p.timeout(
            "server.client_header_timeout",
            &s.client_header_timeout,
            10,
        ),
        client_body_timeout: p.timeout("server.client_body_timeout", &s.client_body_timeout, 60),
        send_timeout: p.timeout("server.send_timeout", &s.send_timeout, 60),
        keepalive_timeout: p.timeout("server.keepalive_timeout", &s.keepalive_timeout, 60),
        max_body_bytes: s
            .max_body_bytes
            .map(|_| p.positive("server.max_body_bytes", s.max_body_bytes, 1, usize::MAX) as u64),
        tls,
        plain_listen,
        tls_reload_interval: {
            let key = "server.tls_reload_interval";
            let raw = s.tls_reload_interval.as_deref();
            let d = p.duration(key, raw, Duration::from_secs(10));
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                p.push(key, "must be from 1s to 1h");
            }
            d
        },
        http2: http2(&mut p, s),
    };
    if let Some(plain) = server.plain_listen {
        // Both bind with SO_REUSEPORT: overlapping addresses would share connections.
        let (a, b) = (plain, server.listen);
        let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        if a.port() == b.port() && a.port() != 0 && overlap {
            p.push(
                "server.plain_listen",
                "must not overlap server.listen: use another port",
            );
        }
    }
    let metrics = MetricsConfig {
        listen: p.socket_addr(
            "metrics.listen",
            raw.metrics.listen.as_deref(),
            "127.0.0.1:9090",
        ),
    };
    if server.listen == metrics.listen && server.listen.port() != 0 {
        p.push("metrics.listen", "must differ from server.listen");
    }

    let upstream = upstream(&mut p, &raw.upstream);
    let decision = raw.decision.as_ref().and_then(|d| {
        let listen = p.socket_addr("decision.listen", d.listen.as_deref(), "127.0.0.1:0");
        if d.listen.is_none() {
            p.push(
                "decision.listen",
                "is required, e.g. \"127.0.0.1:9191\"; keep it reachable only by the proxy that asks",
            );
        }
        if listen.port() != 0 && (listen == server.listen || listen == metrics.listen) {
            p.push("decision.listen", "must differ from server.listen and metrics.listen");
        }
        let convention = match d.convention.as_deref() {
            Some("nginx") => Some(Convention::Nginx),
            Some("traefik") => Some(Convention::Traefik),
            Some("envoy") => Some(Convention::Envoy),
            Some("ingress-nginx") => Some(Convention::IngressNginx),
            _ => {
                p.push(
                    "decision.convention",
                    "must be \"nginx\" (X-Original-Method / X-Original-URI), \"ingress-nginx\" (X-Original-Method / X-Original-URL), \"traefik\" (X-Forwarded-Method / X-Forwarded-Uri) or \"envoy\" (the request itself)",
                );
                None
            }
        };
        Some(DecisionConfig {
            listen,
            convention: convention?,
        })
    });
    let identity = super::policy::identity(&mut p, &raw.identity);
    let issuers_known: Vec<String> = auth
        .issuers
        .iter()
        .map(|i| i.issuer.clone())
        .chain(auth.introspection.iter().filter_map(|i| i.issuer.clone()))
        .collect();
    let global_resource = raw.resource_metadata.as_ref().and_then(|m| match &m.resource {
        Some(r) => super::policy::resource_id(&mut p, "resource_metadata.resource", r),
        None => {
            p.push(
                "resource_metadata.resource",
                "is required: the resource identifier clients ask tokens for, e.g. \"https://api.example.com\"",
            );
            None
        }
    });
    let context = RouteContext {
        client_certificates: server.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        identity: &identity,
        issuers_known: &issuers_known,
        resource: global_resource.as_deref(),
    };
    let routes = raw
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| route(&mut p, &format!("routes[{i}]"), r, &context))
        .collect::<Vec<_>>();
    let log = super::LogConfig {
        json: match raw.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                p.push(
                    "log.format",
                    format!("{other:?} is not a format; use \"text\" or \"json\""),
                );
                false
            }
        },
        log_subject: raw.log.log_subject.unwrap_or(false),
    };
    let tracing = raw.tracing.as_ref().and_then(|t| tracing(&mut p, t));
    let resource_metadata = raw.resource_metadata.as_ref().map(|m| {
        let algorithms = auth.dpop.as_ref().map_or_else(
            || crate::auth::dpop::DEFAULT_ALGORITHMS.to_vec(),
            |d| d.algorithms.clone(),
        );
        super::policy::resource_metadata(&mut p, m, &routes, &issuers_known, &algorithms)
    });
    let identity_names = super::policy::identity_names(
        &identity,
        &routes.iter().map(|r| &r.policy).collect::<Vec<_>>(),
    );
    if raw.routes.is_empty() {
        p.push("routes", "must list at least one [[routes]] entry");
    }
    check_route_set(&mut p, &routes);
    check_validators(
        &mut p,
        &routes,
        !raw.issuers.is_empty(),
        raw.introspection.is_some(),
    );

    if p.0.is_empty() {
        Ok(Config {
            server,
            metrics,
            upstream,
            tokens: auth.tokens,
            issuers: auth.issuers,
            introspection: auth.introspection,
            // A route's `dpop` alone takes the defaults.
            dpop: auth.dpop.or_else(|| {
                routes
                    .iter()
                    .any(|r| r.policy.dpop != crate::auth::DpopMode::Off)
                    .then(Default::default)
            }),
            decision,
            identity: identity_names,
            resource_metadata,
            log,
            tracing,
            routes,
        })
    } else {
        Err(ConfigError::Invalid { problems: p.0 })
    }
}

/// The auth sections alone, for the middleware; at least one validator must be configured.
pub(super) fn validate_auth(raw: RawAuthConfig) -> Result<AuthConfig, ConfigError> {
    let mut p = Problems::default();
    let auth = auth_sections(
        &mut p,
        "realm",
        raw.realm.as_deref(),
        &raw.tokens,
        &raw.issuers,
        raw.introspection.as_ref(),
        raw.dpop.as_ref(),
    );
    if raw.issuers.is_empty() && raw.introspection.is_none() {
        p.push(
            "issuers",
            "configure at least one [[issuers]] entry or [introspection] to validate tokens with",
        );
    }
    if p.0.is_empty() {
        Ok(auth)
    } else {
        Err(ConfigError::Invalid { problems: p.0 })
    }
}

/// `realm`, `[tokens]`, `[[issuers]]`, `[introspection]`: shared by the gateway file and the
/// middleware's config. `realm_key` names the realm's key in its file.
fn auth_sections(
    p: &mut Problems,
    realm_key: &str,
    realm: Option<&str>,
    tokens: &RawTokens,
    issuers: &[RawIssuer],
    introspection: Option<&RawIntrospection>,
    dpop: Option<&super::raw::RawDpop>,
) -> AuthConfig {
    let realm = realm.unwrap_or("portcullis").to_owned();
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        p.push(
            realm_key,
            "must be non-empty printable ASCII without quotes or backslashes (RFC 6750 §3)",
        );
    }
    let tokens = self::tokens(p, tokens);
    let valid_issuers = issuers
        .iter()
        .enumerate()
        .filter_map(|(i, issuer)| super::issuer::issuer(p, &format!("issuers[{i}]"), issuer))
        .collect::<Vec<_>>();
    let mut seen = HashSet::new();
    for (i, issuer) in valid_issuers.iter().enumerate() {
        if !seen.insert(issuer.issuer.clone()) {
            p.push(
                format!("issuers[{i}].issuer"),
                "appears twice; list each issuer once",
            );
        }
    }
    AuthConfig {
        realm,
        tokens,
        issuers: valid_issuers,
        introspection: introspection.and_then(|i| self::introspection(p, i)),
        dpop: dpop.map(|d| super::dpop::settings(p, d)),
        keep_claims: true,
    }
}

fn upstream(p: &mut Problems, u: &RawUpstream) -> UpstreamConfig {
    let secs = Duration::from_secs;
    let d = |p: &mut Problems, key: &str, v: &Option<String>, default| {
        let value = p.duration(&format!("upstream.{key}"), v.as_deref(), default);
        if value.is_zero() {
            p.push(format!("upstream.{key}"), "must be longer than zero");
        }
        value
    };
    UpstreamConfig {
        connect_timeout: d(p, "connect_timeout", &u.connect_timeout, secs(2)),
        read_timeout: d(p, "read_timeout", &u.read_timeout, secs(30)),
        write_timeout: d(p, "write_timeout", &u.write_timeout, secs(30)),
        idle_timeout: d(p, "idle_timeout", &u.idle_timeout, secs(60)),
        health_check_interval: d(
            p,
            "health_check_interval",
            &u.health_check_interval,
            secs(5),
        ),
        resolve_interval: d(p, "resolve_interval", &u.resolve_interval, secs(30)),
        keepalive_pool_size: p.positive(
            "upstream.keepalive_pool_size",
            u.keepalive_pool_size,
            128,
            1_000_000,
        ),
        http2_max_streams_per_connection: p.positive(
            "upstream.http2_max_streams_per_connection",
            u.http2_max_streams_per_connection,
            100,
            // 8000 streams of 256 KiB fit the largest connection window (2^31 − 1).
            8_000,
        ),
        http2_keepalive_interval: p.timeout(
            "upstream.http2_keepalive_interval",
            &u.http2_keepalive_interval,
            30,
        ),
    }
}

fn tokens(p: &mut Problems, t: &RawTokens) -> TokensConfig {
    let max_size = p.positive("tokens.max_size", t.max_size, 8192, 1 << 20);
    if max_size < 256 {
        p.push(
            "tokens.max_size",
            "must be at least 256 bytes; real access tokens are longer",
        );
    }
    let cache_capacity = match t.cache_capacity {
        None => 100_000,
        Some(n) if (0..=100_000_000).contains(&n) => n as u64,
        Some(_) => {
            p.push(
                "tokens.cache_capacity",
                "must be from 0 (cache off) to 100000000 entries",
            );
            100_000
        }
    };
    let cache_max_ttl = p.duration(
        "tokens.cache_max_ttl",
        t.cache_max_ttl.as_deref(),
        Duration::from_secs(300),
    );
    TokensConfig {
        max_size,
        cache_capacity,
        cache_max_ttl,
    }
}

/// `[server] tls_cert`, `tls_key` and `[[server.tls_certificates]]`: paths only; the files
/// are read (and checked) at start-up, at reload and by `portcullis check`.
fn tls(p: &mut Problems, s: &super::raw::RawServer) -> Option<super::TlsConfig> {
    let pair = |p: &mut Problems, at: &str, cert: Option<&str>, key: Option<&str>| {
        let (cert_key, key_key) = (format!("{at}cert"), format!("{at}key"));
        match (cert, key) {
            (Some(cert), Some(key)) => Some(super::TlsPair {
                cert: cert.into(),
                key: key.into(),
                cert_key,
            }),
            (Some(_), None) => {
                p.push(
                    key_key,
                    "is required with the certificate: the private key's PEM file",
                );
                None
            }
            (None, Some(_)) => {
                p.push(
                    cert_key,
                    "is required with the key: the certificate chain's PEM file",
                );
                None
            }
            (None, None) => None,
        }
    };
    let default = pair(
        p,
        "server.tls_",
        s.tls_cert.as_deref(),
        s.tls_key.as_deref(),
    );
    let listed = s.tls_certificates.as_deref().unwrap_or_default();
    let mut more = Vec::new();
    for (i, raw) in listed.iter().enumerate() {
        let at = format!("server.tls_certificates[{i}].");
        match pair(p, &at, raw.cert.as_deref(), raw.key.as_deref()) {
            Some(pair) => more.push(pair),
            None if raw.cert.is_none() && raw.key.is_none() => {
                p.push(
                    format!("{at}cert"),
                    "is required: the certificate chain's PEM file",
                );
            }
            None => {}
        }
    }
    if default.is_none() && !listed.is_empty() && s.tls_cert.is_none() && s.tls_key.is_none() {
        p.push(
            "server.tls_certificates",
            "goes with tls_cert and tls_key, the certificate presented when no SNI name matches",
        );
    }
    let client_ca = s.client_ca.as_deref().map(std::path::PathBuf::from);
    let client_required = match s.client_auth.as_deref() {
        None | Some("optional") => false,
        Some("required") => true,
        Some(other) => {
            p.push(
                "server.client_auth",
                format!("{other:?} is not a mode; use \"optional\" or \"required\""),
            );
            false
        }
    };
    if s.client_auth.is_some() && client_ca.is_none() {
        p.push(
            "server.client_auth",
            "goes with client_ca, the CA certificates (PEM) client certificates are verified against",
        );
    }
    if client_ca.is_some() && default.is_none() {
        p.push(
            "server.client_ca",
            "goes with tls_cert and tls_key: client certificates come only over TLS",
        );
    }
    Some(super::TlsConfig {
        default: default?,
        more,
        client_ca,
        client_required,
    })
}

/// `[tracing]`.
fn tracing(p: &mut Problems, raw: &super::raw::RawTracing) -> Option<super::TracingConfig> {
    let before = p.0.len();
    let endpoint = match raw.otlp_endpoint.as_deref() {
        Some(e) => match Url::parse(e) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") || url.fragment().is_some() => {
                p.push(
                    "tracing.otlp_endpoint",
                    "must be an absolute http:// or https:// URL without a #fragment",
                );
                None
            }
            // Credentials in the URL would be logged with every failed export (red team).
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                p.push(
                    "tracing.otlp_endpoint",
                    "must not hold credentials; give the collector's headers in OTEL_EXPORTER_OTLP_HEADERS",
                );
                None
            }
            Ok(url) => Some(url),
            Err(_) => {
                p.push(
                    "tracing.otlp_endpoint",
                    "must be an absolute http:// or https:// URL without a #fragment",
                );
                None
            }
        },
        None => {
            p.push(
                "tracing.otlp_endpoint",
                "is required in [tracing]: the collector's OTLP/HTTP traces URL, e.g. \"http://otel-collector:4318/v1/traces\" (or remove [tracing] to export nothing)",
            );
            None
        }
    };
    let service_name = raw
        .service_name
        .clone()
        .unwrap_or_else(|| "portcullis".into());
    if service_name.trim().is_empty() || service_name.chars().any(char::is_control) {
        p.push(
            "tracing.service_name",
            "must not be empty nor hold control characters",
        );
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.push(
            "tracing.sample_ratio",
            "must be between 0.0 (sample no trace started here) and 1.0 (every one)",
        );
    }
    let export_timeout = p.duration(
        "tracing.export_timeout",
        raw.export_timeout.as_deref(),
        Duration::from_secs(10),
    );
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&export_timeout) {
        p.push("tracing.export_timeout", "must be from 100ms to 60s");
    }
    (p.0.len() == before).then(|| super::TracingConfig {
        endpoint: endpoint.expect("no problem means a URL"),
        service_name,
        sample_ratio,
        follow_client_sampling: raw.follow_client_sampling.unwrap_or(true),
        export_timeout,
    })
}

/// An absolute http(s) URL without a fragment.
pub(super) fn http_url(p: &mut Problems, key: &str, value: &str) -> Option<Url> {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "https" | "http") && url.fragment().is_none() => {
            Some(url)
        }
        _ => {
            p.push(key, "must be an absolute https:// URL without a #fragment");
            None
        }
    }
}

fn introspection(p: &mut Problems, raw: &RawIntrospection) -> Option<IntrospectionConfig> {
    let before = p.0.len();
    let insecure_ok = raw.allow_insecure_http.unwrap_or(false);
    let issuer = raw.issuer.as_deref().and_then(|s| {
        let url = http_url(p, "introspection.issuer", s)?;
        if raw.endpoint.is_none() && !secure_enough(&url, insecure_ok) {
            p.push("introspection.issuer", HTTPS_RULE);
        }
        Some(s.to_owned())
    });
    let endpoint = match raw.endpoint.as_deref() {
        Some(e) => {
            let url = http_url(p, "introspection.endpoint", e);
            if url.as_ref().is_some_and(|u| !secure_enough(u, insecure_ok)) {
                p.push("introspection.endpoint", HTTPS_RULE);
            }
            url
        }
        None if raw.issuer.is_some() => None,
        None => {
            p.push(
                "introspection.endpoint",
                "is required (the RFC 7662 introspection URL), unless `issuer` is set and its discovery metadata names it",
            );
            None
        }
    };
    let client_id = raw.client_id.clone().filter(|c| !c.is_empty());
    if client_id.is_none() {
        p.push(
            "introspection.client_id",
            "is required: the gateway's client id at the authorization server",
        );
    }
    let (env, file) = (&raw.client_secret_env, &raw.client_secret_file);
    let secret = p.secret_source(
        "introspection.client_secret",
        env.as_deref(),
        file.as_deref(),
    );
    if env.is_none() && file.is_none() {
        p.push(
            "introspection.client_secret_env",
            "is required: name the environment variable (or set client_secret_file to the file) holding the gateway's client secret; secrets are never written in the file",
        );
    }
    let auth_method = match raw.auth_method.as_deref() {
        None | Some("client_secret_basic") => ClientAuth::Basic,
        Some("client_secret_post") => ClientAuth::Post,
        Some(other) => {
            p.push(
                "introspection.auth_method",
                format!("{other:?} is not supported; use \"client_secret_basic\" or \"client_secret_post\""),
            );
            ClientAuth::Basic
        }
    };
    let secs = Duration::from_secs;
    let mut d = |key: &str, value: &Option<String>, default: Duration| {
        let key = format!("introspection.{key}");
        let v = p.duration(&key, value.as_deref(), default);
        if v.is_zero() {
            p.push(key, "must be longer than zero");
        }
        v
    };
    let timeout = d("timeout", &raw.timeout, secs(2));
    let cache_ttl = d("cache_ttl", &raw.cache_ttl, secs(300));
    let negative_cache_ttl = d("negative_cache_ttl", &raw.negative_cache_ttl, secs(10));
    let leeway = p.duration("introspection.leeway", raw.leeway.as_deref(), secs(30));
    if timeout > secs(60) {
        p.push("introspection.timeout", "must be at most 60s");
    }
    if leeway > secs(300) {
        p.push(
            "introspection.leeway",
            "must be at most 5m; clock skew beyond that is a broken clock",
        );
    }
    let cache_capacity = match raw.cache_capacity {
        None => 100_000,
        Some(n) if (0..=100_000_000).contains(&n) => n as u64,
        Some(_) => {
            p.push(
                "introspection.cache_capacity",
                "must be from 0 (cache off) to 100000000 entries",
            );
            100_000
        }
    };
    let max_in_flight = p.positive("introspection.max_in_flight", raw.max_in_flight, 64, 4096);
    if raw.audiences.iter().any(String::is_empty) {
        p.push(
            "introspection.audiences",
            "must not contain an empty audience",
        );
    }
    let allow_any_audience = raw.allow_any_audience.unwrap_or(false);
    match (raw.audiences.is_empty(), allow_any_audience) {
        (true, false) => p.push(
            "introspection.audiences",
            "is required: list the audiences (`aud`) of the APIs behind this gateway, e.g. [\"orders-api\"]. \
             An answer without one of them is refused: refresh tokens introspect as active, often without `aud`, \
             and are never meant for a resource server (RFC 6749 §1.5). Only if your authorization server never \
             puts `aud` in its answers, set allow_any_audience = true instead",
        ),
        (false, true) => p.push(
            "introspection.allow_any_audience",
            "contradicts `audiences`; remove allow_any_audience to check the audiences listed",
        ),
        _ => {}
    }
    if p.0.len() > before {
        return None;
    }
    Some(IntrospectionConfig {
        endpoint,
        issuer,
        client_id: client_id?,
        client_secret: secret?,
        auth_method,
        timeout,
        cache_ttl,
        negative_cache_ttl,
        cache_capacity,
        max_in_flight,
        audiences: raw.audiences.clone(),
        allow_any_audience,
        leeway,
        allow_insecure_http: insecure_ok,
        require_dpop: raw.require_dpop.unwrap_or(false),
        ca_file: raw.ca_file.as_deref().map(Into::into),
    })
}

/// `token_types`: a non-empty subset of `jwt` and `opaque`.
fn token_types(p: &mut Problems, key: &str, raw: Option<&[String]>) -> TokenTypes {
    let Some(list) = raw else {
        return TokenTypes::default();
    };
    let mut types = TokenTypes {
        jwt: false,
        opaque: false,
    };
    for (i, t) in list.iter().enumerate() {
        match t.as_str() {
            "jwt" => types.jwt = true,
            "opaque" => types.opaque = true,
            other => p.push(
                format!("{key}.token_types[{i}]"),
                format!("{other:?} is not a token type; use \"jwt\" or \"opaque\""),
            ),
        }
    }
    if list.is_empty() {
        p.push(
            format!("{key}.token_types"),
            "must not be empty; omit the key to accept both \"jwt\" and \"opaque\"",
        );
    }
    types
}

pub(super) fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Route names are metric label values: short and from a small alphabet.
fn is_route_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// A scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
/// What every route's validation needs from the rest of the file.
struct RouteContext<'a> {
    /// `[server] client_ca` is set: connections may present verified client certificates.
    client_certificates: bool,
    identity: &'a super::policy::Identity,
    issuers_known: &'a [String],
    /// `[resource_metadata] resource`, when valid.
    resource: Option<&'a str>,
}

/// A route's `upstream_tls` and the keys that go with it. The files are read when the gateway
/// starts, reloads, or `portcullis check` runs (`dataplane::upstream_tls`).
fn upstream_tls(p: &mut Problems, key: &str, raw: &RawRoute) -> Option<super::UpstreamTlsConfig> {
    let path = |v: &Option<String>, name: &str, p: &mut Problems| match v.as_deref() {
        Some("") => {
            p.push(format!("{key}.{name}"), "is empty; name a PEM file");
            None
        }
        v => v.map(std::path::PathBuf::from),
    };
    let ca_file = path(&raw.upstream_ca_file, "upstream_ca_file", p);
    let cert = path(&raw.upstream_client_cert, "upstream_client_cert", p);
    let client_key = path(&raw.upstream_client_key, "upstream_client_key", p);
    let server_name = raw.upstream_server_name.clone();
    if server_name.as_deref().is_some_and(|n| n.is_empty()) {
        p.push(
            format!("{key}.upstream_server_name"),
            "is empty; name the host the upstreams' certificate is for, or leave the key out",
        );
    }
    let client = match (cert, client_key) {
        (Some(cert), Some(client_key)) => Some(super::TlsPair {
            cert,
            key: client_key,
            cert_key: format!("{key}.upstream_client_cert"),
        }),
        (None, None) => None,
        (Some(_), None) => {
            p.push(
                format!("{key}.upstream_client_cert"),
                "goes with upstream_client_key, the private key (PEM) of the client certificate",
            );
            None
        }
        (None, Some(_)) => {
            p.push(
                format!("{key}.upstream_client_key"),
                "goes with upstream_client_cert, the client certificate chain (PEM)",
            );
            None
        }
    };
    if raw.upstream_tls != Some(true) {
        let set = [
            ("upstream_server_name", raw.upstream_server_name.is_some()),
            ("upstream_ca_file", raw.upstream_ca_file.is_some()),
            ("upstream_client_cert", raw.upstream_client_cert.is_some()),
            ("upstream_client_key", raw.upstream_client_key.is_some()),
        ];
        for (name, _) in set.iter().filter(|(_, set)| *set) {
            p.push(
                format!("{key}.{name}"),
                "goes with upstream_tls = true: without it the upstreams are spoken to in plain text",
            );
        }
        return None;
    }
    Some(super::UpstreamTlsConfig {
        server_name,
        ca_file,
        client,
    })
}

fn route(p: &mut Problems, key: &str, raw: &RawRoute, cx: &RouteContext) -> Option<RouteConfig> {
    let before = p.0.len();
    let name = raw.name.clone().unwrap_or_default();
    if !is_route_name(&name) {
        p.push(
            format!("{key}.name"),
            "is required: up to 64 letters, digits or _ . : - (it becomes a metric label)",
        );
    }
    let path_prefix = match raw.path_prefix.as_deref() {
        Some(prefix) => normalise_prefix(p, &format!("{key}.path_prefix"), prefix),
        None => {
            p.push(
                format!("{key}.path_prefix"),
                "is required, e.g. \"/orders\" (\"/\" matches every path)",
            );
            None
        }
    };
    let methods = raw.methods.as_ref().map(|list| {
        if list.is_empty() {
            p.push(
                format!("{key}.methods"),
                "must not be empty; omit the key to allow every method",
            );
        }
        let mut methods: Vec<Method> = Vec::new();
        for (i, m) in list.iter().enumerate() {
            let k = format!("{key}.methods[{i}]");
            match Method::from_bytes(m.as_bytes()) {
                Ok(_) if m.bytes().any(|b| b.is_ascii_lowercase()) => p.push(
                    k,
                    format!(
                        "methods are case-sensitive; write {:?}",
                        m.to_ascii_uppercase()
                    ),
                ),
                Ok(method) if methods.contains(&method) => {
                    p.push(k, format!("{m} is listed twice"))
                }
                Ok(method) => methods.push(method),
                Err(_) => p.push(k, format!("{m:?} is not an HTTP method, e.g. \"GET\"")),
            }
        }
        methods
    });
    if raw.upstreams.is_empty() {
        p.push(
            format!("{key}.upstreams"),
            "must list at least one host:port",
        );
    }
    for (i, u) in raw.upstreams.iter().enumerate() {
        if !is_host_port(u) {
            p.push(
                format!("{key}.upstreams[{i}]"),
                format!("{u:?} must be host:port, e.g. \"127.0.0.1:9001\" or \"orders.svc:8080\""),
            );
        }
    }
    for (list, name) in [(&raw.scopes, "scopes"), (&raw.scopes_any, "scopes_any")] {
        for (i, s) in list.iter().enumerate() {
            if !crate::auth::scope::is_scope_token(s) {
                p.push(
                    format!("{key}.{name}[{i}]"),
                    "must be one scope token: printable ASCII without spaces, quotes or backslashes (RFC 6749 §3.3)",
                );
            }
        }
    }
    let auth = match raw.auth.as_deref() {
        None | Some("required") => AuthMode::Required,
        Some("none") => AuthMode::None,
        Some(other) => {
            p.push(
                format!("{key}.auth"),
                format!("{other:?} is not a mode; use \"required\" or \"none\""),
            );
            AuthMode::Required
        }
    };
    if auth == AuthMode::None && !(raw.scopes.is_empty() && raw.scopes_any.is_empty()) {
        p.push(
            format!("{key}.scopes"),
            "a route with auth = \"none\" checks no token, so it cannot require scopes; remove scopes or set auth = \"required\"",
        );
    }
    if raw.allow_options_asterisk == Some(true) && path_prefix.as_deref() != Some("/") {
        p.push(
            format!("{key}.allow_options_asterisk"),
            "OPTIONS * is routed to the route on path_prefix \"/\"; set it there or remove it",
        );
    }
    let token_types = token_types(p, key, raw.token_types.as_deref());
    if auth == AuthMode::None && raw.token_types.is_some() {
        p.push(
            format!("{key}.token_types"),
            "a route with auth = \"none\" checks no token; remove token_types or set auth = \"required\"",
        );
    }
    let token_policy = [
        ("issuers", raw.issuers.is_some()),
        ("audiences", raw.audiences.is_some()),
        ("claims", raw.claims.is_some()),
        ("claims_match", raw.claims_match.is_some()),
        ("acr_values", raw.acr_values.is_some()),
        ("max_age", raw.max_age.is_some()),
        ("claim_headers", raw.claim_headers.is_some()),
        ("claims_header", raw.claims_header.is_some()),
        ("cors_preflight", raw.cors_preflight.is_some()),
        ("resource", raw.resource.is_some()),
        ("dpop", raw.dpop.is_some()),
        (
            "require_certificate_bound",
            raw.require_certificate_bound.is_some(),
        ),
    ];
    for (name, _) in token_policy.iter().filter(|(_, set)| *set) {
        if auth == AuthMode::None {
            p.push(
                format!("{key}.{name}"),
                format!("a route with auth = \"none\" checks no token; remove {name} or set auth = \"required\""),
            );
        }
    }
    let cors_preflight = match raw.cors_preflight.as_deref() {
        None | Some("off") => false,
        Some("forward") => true,
        Some(other) => {
            p.push(
                format!("{key}.cors_preflight"),
                format!("{other:?} is not a mode; use \"off\" or \"forward\" (the upstream answers CORS preflights)"),
            );
            false
        }
    };
    if cors_preflight && raw.allow_method_override == Some(true) {
        p.push(
            format!("{key}.cors_preflight"),
            "cannot be combined with allow_method_override: an unchecked preflight could carry another method to the upstream",
        );
    }
    if cors_preflight
        && raw
            .methods
            .as_ref()
            .is_some_and(|m| !m.iter().any(|m| m == "OPTIONS"))
    {
        p.push(
            format!("{key}.cors_preflight"),
            "the route's methods leave out OPTIONS, so no preflight reaches it; add \"OPTIONS\" to methods",
        );
    }
    let mut policy =
        super::policy::route_policy(p, key, raw, token_types, cx.identity, cx.issuers_known);
    policy.dpop = super::dpop::mode(p, key, raw.dpop.as_deref());
    policy.require_certificate_bound = raw.require_certificate_bound.unwrap_or(false);
    if policy.require_certificate_bound && !cx.client_certificates {
        p.push(
            format!("{key}.require_certificate_bound"),
            "needs client certificates: set [server] client_ca (and tls_cert, tls_key)",
        );
    }
    let rate_limit = raw
        .rate_limit
        .as_ref()
        .and_then(|r| super::policy::rate_limit(p, &format!("{key}.rate_limit"), r, auth));
    let resource = match (&raw.resource, cx.resource) {
        (Some(own), Some(_)) => super::policy::resource_id(p, &format!("{key}.resource"), own),
        (Some(_), None) => {
            p.push(
                format!("{key}.resource"),
                "needs a [resource_metadata] section (its resource is the default of every route)",
            );
            None
        }
        (None, global) => global.map(str::to_owned),
    };
    let upstream_protocol = match raw.upstream_protocol.as_deref() {
        None | Some("http1") => super::UpstreamProtocol::Http1,
        Some("http2") => super::UpstreamProtocol::Http2,
        Some(_) => {
            p.push(
                format!("{key}.upstream_protocol"),
                "must be \"http1\" (the default) or \"http2\" (HTTP/2 with prior knowledge, as gRPC servers speak)",
            );
            super::UpstreamProtocol::Http1
        }
    };
    let upstream_tls = upstream_tls(p, key, raw);
    if p.0.len() > before {
        return None;
    }
    Some(RouteConfig {
        name,
        path_prefix: path_prefix?,
        methods,
        upstreams: raw.upstreams.clone(),
        upstream_protocol,
        upstream_tls,
        policy,
        auth,
        forward_token: raw.forward_token.unwrap_or(false),
        allow_path_parameters: raw.allow_path_parameters.unwrap_or(false),
        allow_method_override: raw.allow_method_override.unwrap_or(false),
        allow_options_asterisk: raw.allow_options_asterisk.unwrap_or(false),
        cors_preflight,
        resource,
        rate_limit,
    })
}

/// `/orders/` -> `/orders`; `/` stays `/`. Rejects what a request path could never match.
/// A prefix must be in the canonical form request paths are matched in (crate::gate::target).
fn normalise_prefix(p: &mut Problems, key: &str, prefix: &str) -> Option<String> {
    let normal = match crate::gate::target::normalise_path(prefix) {
        Ok(normal) => normal,
        Err(_) => {
            p.push(
                key,
                "must be an absolute path such as \"/orders\": starts with /, no query, no // or dot segments, no space, \\ or encoded /",
            );
            return None;
        }
    };
    if normal != prefix {
        p.push(
            key,
            format!("request paths are matched in normal form (RFC 3986 §6.2.2); write {normal:?}"),
        );
        return None;
    }
    if prefix.contains(';') || prefix.contains("%3B") {
        p.push(
            key,
            "must not hold ; parameters: frameworks strip them, so no request path carries them",
        );
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    port_ok && host_ok
}

/// Every route that checks tokens has something to check them with.
fn check_validators(p: &mut Problems, routes: &[RouteConfig], issuers: bool, introspection: bool) {
    for (i, r) in routes.iter().enumerate() {
        if r.auth != AuthMode::Required {
            continue;
        }
        let types = r.policy.token_types;
        let jwt = types.jwt && issuers;
        let opaque = types.opaque && introspection;
        if !jwt && !opaque {
            let fix = match (types.jwt, types.opaque) {
                (true, false) => "it accepts only JWTs but no [[issuers]] entry is configured",
                (false, true) => {
                    "it accepts only opaque tokens but [introspection] is not configured"
                }
                _ => "configure an [[issuers]] entry or [introspection], or set auth = \"none\"",
            };
            p.push(
                format!("routes[{i}].auth"),
                format!("this route requires a token that nothing can validate: {fix}"),
            );
        }
    }
}

/// Cross-route rules: unique names, no two routes claiming the same prefix and method, and no
/// two prefixes that differ only by letter case (requests are refused when folding their case
/// would change the route, which needs one prefix per folded spelling).
fn check_route_set(p: &mut Problems, routes: &[RouteConfig]) {
    let mut folded: HashMap<String, &str> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        match folded.get(&r.path_prefix.to_ascii_lowercase()) {
            Some(other) if *other != r.path_prefix => p.push(
                format!("routes[{i}].path_prefix"),
                format!(
                    "{:?} differs from {other:?} only by letter case; applications that route without regard to case cannot tell them apart: use one spelling",
                    r.path_prefix
                ),
            ),
            _ => {
                folded.insert(r.path_prefix.to_ascii_lowercase(), &r.path_prefix);
            }
        }
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut claims: HashMap<(&str, Option<&Method>), &str> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(first) = names.insert(&r.name, i) {
            p.push(
                format!("routes[{i}].name"),
                format!(
                    "{:?} is already the name of routes[{first}]; route names must be unique",
                    r.name
                ),
            );
            continue;
        }
        let methods: Vec<Option<&Method>> = match &r.methods {
            None => vec![None],
            Some(list) => list.iter().map(Some).collect(),
        };
        for m in methods {
            // A route without methods overlaps every route on the same prefix.
            let clash = claims
                .iter()
                .find(|((prefix, other), _)| {
                    *prefix == r.path_prefix && (m.is_none() || other.is_none() || *other == m)
                })
                .map(|(_, name)| *name);
            if let Some(other) = clash {
                p.push(
                    format!("routes[{i}].methods"),
                    format!(
                        "overlaps route {other:?} on path_prefix {:?}; give each route on one prefix distinct methods",
                        r.path_prefix
                    ),
                );
                break;
            }
            claims.insert((&r.path_prefix, m), &r.name);
        }
    }
}

/// `[server.http2]`, with its defaults and ranges.
fn http2(p: &mut Problems, s: &RawServer) -> Http2Config {
    let h = &s.http2;
    // RFC 9113 §6.9.2: at most 2^31 - 1; a connection window below the protocol's initial
    // 65535 cannot be announced at all.
    let window = |p: &mut Problems, key: &str, value: Option<i64>, default: u32| match value {
        None => default,
        Some(n) if (65_535..=(1 << 31) - 1).contains(&n) => n as u32,
        Some(_) => {
            p.push(key, "must be a whole number from 65535 to 2147483647");
            default
        }
    };
    let ping_interval = {
        let key = "server.http2.ping_interval";
        let d = p.duration(key, h.ping_interval.as_deref(), Duration::from_secs(60));
        if !d.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
            p.push(key, "must be from 1s to 1h, or 0s for no pings");
        }
        (!d.is_zero()).then_some(d)
    };
    Http2Config {
        enabled: h.enabled.unwrap_or(true),
        cleartext: h.cleartext.unwrap_or(false),
        max_concurrent_streams: p.positive(
            "server.http2.max_concurrent_streams",
            h.max_concurrent_streams,
            100,
            10_000,
        ) as u32,
        max_header_list_size: h
            .max_header_list_size
            .map(|n| p.positive("server.http2.max_header_list_size", Some(n), 1, 4 << 20) as u32),
        initial_stream_window_size: window(
            p,
            "server.http2.initial_stream_window_size",
            h.initial_stream_window_size,
            256 << 10,
        ),
        initial_connection_window_size: window(
            p,
            "server.http2.initial_connection_window_size",
            h.initial_connection_window_size,
            1 << 20,
        ),
        ping_interval,
        ping_timeout: p.timeout("server.http2.ping_timeout", &h.ping_timeout, 20),
        max_cancelled_streams: p.positive(
            "server.http2.max_cancelled_streams",
            h.max_cancelled_streams,
            200,
            1_000_000,
        ) as u32,
        max_streams_per_worker: p.positive(
            "server.http2.max_streams_per_worker",
            h.max_streams_per_worker,
            1000,
            1_000_000,
        ) as u32,
    }
}
