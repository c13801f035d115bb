//! The file format: serde structs that mirror `gateway.toml` key for key.
//!
//! Every struct denies unknown fields: in an auth gateway a typo (`scope =` for `scopes =`) must
//! never leave a route open. Nothing here is validated; [`super::Config::try_from`] turns these
//! into typed values and names the key of every problem it finds.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    pub introspection: Option<RawIntrospection>,
    pub dpop: Option<RawDpop>,
    pub decision: Option<RawDecision>,
    #[serde(default)]
    pub identity: RawIdentity,
    pub resource_metadata: Option<RawResourceMetadata>,
    #[serde(default)]
    pub log: RawLog,
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[tracing]`: OTLP export of the gateway's spans.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
    pub follow_client_sampling: Option<bool>,
    pub export_timeout: Option<String>,
}

/// `[identity]`: what the upstream learns about the caller, and which client headers that
/// could pose as it are removed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub auth_headers: Option<bool>,
    pub claims_header: Option<String>,
    pub strip_headers: Option<Vec<String>>,
    pub claim_headers: Option<BTreeMap<String, String>>,
}

/// `[log]`: the binary's log lines.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub log_subject: Option<bool>,
}

/// `[resource_metadata]`: RFC 9728 protected resource metadata.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourceMetadata {
    pub resource: Option<String>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
}

/// One `[[routes.claims]]` rule: a claim and exactly one matcher.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    pub claim: Option<String>,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub contains: Option<serde_json::Value>,
    pub all_of: Option<Vec<serde_json::Value>>,
    pub present: Option<bool>,
}

/// `[decision]`: the forward-auth listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecision {
    pub listen: Option<String>,
    pub convention: Option<String>,
}

/// The auth sections alone (`realm`, `[tokens]`, `[[issuers]]`, `[introspection]`), for services
/// that embed the auth core as middleware.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthConfig {
    pub realm: Option<String>,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    pub introspection: Option<RawIntrospection>,
    pub dpop: Option<RawDpop>,
}

/// `[dpop]`: how DPoP proofs (RFC 9449) are checked, for routes with `dpop` set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    pub algorithms: Option<Vec<String>>,
    pub proof_max_age: Option<String>,
    pub proof_leeway: Option<String>,
    pub replay_cache_capacity: Option<u64>,
    pub replay_store: Option<String>,
    pub replay_store_timeout: Option<String>,
    pub replay_store_prefix: Option<String>,
    pub nonce: Option<bool>,
    pub nonce_secret_env: Option<String>,
    pub nonce_secret_file: Option<String>,
    pub nonce_lifetime: Option<String>,
}

/// `[server]`: the proxy listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Default `0.0.0.0:8080`.
    pub listen: Option<String>,
    /// Default `portcullis`.
    pub realm: Option<String>,
    /// Default: the number of cores.
    pub threads: Option<i64>,
    /// Default `5s`.
    pub shutdown_grace: Option<String>,
    /// Default `5s`.
    pub drain_delay: Option<String>,
    pub reload_poll_interval: Option<String>,
    /// Default `false`.
    pub trust_forwarded_headers: Option<bool>,
    /// Default 8192.
    pub max_uri_bytes: Option<i64>,
    /// Default 32768.
    pub max_header_bytes: Option<i64>,
    /// Default `10s`.
    pub client_header_timeout: Option<String>,
    /// Default `60s`.
    pub client_body_timeout: Option<String>,
    /// Default `60s`.
    pub send_timeout: Option<String>,
    /// Default `60s`.
    pub keepalive_timeout: Option<String>,
    /// Default: no limit.
    pub max_body_bytes: Option<i64>,
    /// TLS on `listen`: the certificate chain (PEM).
    pub tls_cert: Option<String>,
    /// TLS on `listen`: the private key (PEM).
    pub tls_key: Option<String>,
    /// More certificates, chosen by the client's SNI.
    pub tls_certificates: Option<Vec<RawTlsPair>>,
    /// A plain-HTTP listener beside the TLS one.
    pub plain_listen: Option<String>,
    /// Default `10s`.
    pub tls_reload_interval: Option<String>,
    /// Client certificates: the CAs (PEM) they are verified against.
    pub client_ca: Option<String>,
    /// `"optional"` (default with `client_ca`) or `"required"`.
    pub client_auth: Option<String>,
    /// `[server.http2]`.
    #[serde(default)]
    pub http2: RawHttp2,
}

/// `[server.http2]`: HTTP/2 from clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    /// Default `true`.
    pub enabled: Option<bool>,
    /// Default `false`.
    pub cleartext: Option<bool>,
    /// Default 100.
    pub max_concurrent_streams: Option<i64>,
    /// Default `max_uri_bytes + max_header_bytes + 4096`.
    pub max_header_list_size: Option<i64>,
    /// Default 262144.
    pub initial_stream_window_size: Option<i64>,
    /// Default 1048576.
    pub initial_connection_window_size: Option<i64>,
    /// Default `60s`; `0s` for none.
    pub ping_interval: Option<String>,
    /// Default `20s`.
    pub ping_timeout: Option<String>,
    /// Default 200.
    pub max_cancelled_streams: Option<i64>,
    /// Default 1000.
    pub max_streams_per_worker: Option<i64>,
}

/// One `[[server.tls_certificates]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsPair {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[metrics]`: the admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Default `127.0.0.1:9090`.
    pub listen: Option<String>,
}

/// `[upstream]`: connection settings shared by every route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub health_check_interval: Option<String>,
    pub resolve_interval: Option<String>,
    pub keepalive_pool_size: Option<i64>,
    pub http2_max_streams_per_connection: Option<i64>,
    pub http2_keepalive_interval: Option<String>,
}

/// `[tokens]`: limits and the verified-token cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub max_size: Option<i64>,
    pub cache_capacity: Option<i64>,
    pub cache_max_ttl: Option<String>,
}

/// One `[[issuers]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    pub discovery: Option<bool>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub leeway: Option<String>,
    pub jwks_refresh: Option<String>,
    pub jwks_max_stale: Option<String>,
    pub jwks_min_refetch: Option<String>,
    pub hmac_secret_env: Option<String>,
    pub hmac_secret_file: Option<String>,
    pub require_typ: Option<bool>,
    pub scope_claim: Option<String>,
    pub max_token_lifetime: Option<String>,
    pub allow_insecure_http: Option<bool>,
    pub require_dpop: Option<bool>,
    pub ca_file: Option<String>,
}

/// `[introspection]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub endpoint: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    pub auth_method: Option<String>,
    pub timeout: Option<String>,
    pub cache_ttl: Option<String>,
    pub negative_cache_ttl: Option<String>,
    pub cache_capacity: Option<i64>,
    pub max_in_flight: Option<i64>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub allow_any_audience: Option<bool>,
    pub leeway: Option<String>,
    pub allow_insecure_http: Option<bool>,
    pub require_dpop: Option<bool>,
    pub ca_file: Option<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub upstreams: Vec<String>,
    pub upstream_protocol: Option<String>,
    pub upstream_tls: Option<bool>,
    pub upstream_server_name: Option<String>,
    pub upstream_ca_file: Option<String>,
    pub upstream_client_cert: Option<String>,
    pub upstream_client_key: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub scopes_any: Vec<String>,
    pub auth: Option<String>,
    pub token_types: Option<Vec<String>>,
    pub forward_token: Option<bool>,
    pub allow_path_parameters: Option<bool>,
    pub allow_method_override: Option<bool>,
    pub allow_options_asterisk: Option<bool>,
    pub issuers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub claims_match: Option<String>,
    pub acr_values: Option<Vec<String>>,
    pub max_age: Option<String>,
    pub cors_preflight: Option<String>,
    pub claims_header: Option<String>,
    pub claim_headers: Option<BTreeMap<String, String>>,
    pub claims: Option<Vec<RawClaimRule>>,
    pub resource: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
    pub dpop: Option<String>,
    pub require_certificate_bound: Option<bool>,
}

/// `[routes.rate_limit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub key: Option<String>,
    pub requests: Option<i64>,
    pub per: Option<String>,
    pub burst: Option<i64>,
}
