//! The auth core's own settings: what [`super::Authenticator`] needs to run. The core owns
//! these types; the configuration module parses TOML and produces them (the arrow points into
//! the core, never out of it), and re-exports them under their old paths.

use std::time::Duration;

use url::Url;

/// What the auth core needs: the gateway's `server.realm`, `[tokens]`, `[[issuers]]` and
/// `[introspection]`; or the same sections alone (with a top-level `realm`) for middleware.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub realm: String,
    pub tokens: TokensConfig,
    pub issuers: Vec<IssuerConfig>,
    pub introspection: Option<IntrospectionConfig>,
    /// `[dpop]`: set when some route takes DPoP-bound tokens.
    pub dpop: Option<super::dpop::DpopSettings>,
    /// Not a key: keep every verified claim with the principal ([`super::Verified::claims`]).
    /// The gateway sets it when some route has claim rules or claim headers; the middleware's
    /// config always does, for handlers that read claims.
    pub keep_claims: bool,
}

/// `[tokens]`: limits applied to every bearer token, and the verified-token cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensConfig {
    /// `max_size`, default `8192` bytes: longer tokens are refused before any decoding.
    pub max_size: usize,
    /// `cache_capacity`, default `100000` entries; `0` disables the verified-token cache.
    pub cache_capacity: u64,
    /// `cache_max_ttl`, default `5m`: a cached token is dropped at `min(exp, this)`.
    pub cache_max_ttl: Duration,
}

/// The signature algorithms an issuer may be allowed (RFC 7518 §3.1, RFC 8037).
/// `none` has no variant: it cannot be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// HS256/384/512: a shared secret, never mixed with public-key algorithms (RFC 8725 §3.1).
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    /// The JOSE name, exactly as in a JWT header's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    /// Parse a JOSE name; names are case-sensitive (RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `jwks_uri = "..."`.
    JwksUri(Url),
    /// `discovery = true`: `jwks_uri` from the issuer's metadata (RFC 8414, OIDC Discovery).
    Discovery,
    /// `hmac_secret_env = "NAME"` or `hmac_secret_file = "/path"`: HS256/384/512 with a
    /// shared secret, read again at every key refresh.
    HmacSecret(SecretSource),
}

/// Where a secret comes from: an environment variable, or a file (a Kubernetes Secret mounted
/// as a volume). Never the configuration file itself. A file is read again on every reload,
/// so a rotated Secret takes effect without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// `*_secret_env`: the variable's name.
    Env(String),
    /// `*_secret_file`: the file's path.
    File(std::path::PathBuf),
}

/// The most bytes read from a secret, CA, certificate or key file the config names.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The bytes of a regular file of at most `limit` bytes. Anything else (a FIFO, a device such
/// as `/dev/zero`, a directory) is refused before it is opened, so that reading a file the
/// config names never blocks the reload or the shutdown behind it, nor fills memory (red
/// team). Symbolic links are followed (Kubernetes mounts files through `..data` links).
pub fn read_regular_file(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || Error::new(ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    // Opened without blocking and checked again on the open file: a path swapped to a FIFO
    // between the two looks neither blocks the open nor is read.
    const O_NONBLOCK: i32 = 0o4000; // Linux's value (the gateway is built for Linux).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::FileTooLarge,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// A secret that cannot be read, said without its value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("the variable {0} is unset or empty")]
    Unset(String),
    #[error("the file {} cannot be read ({})", .0.display(), .1)]
    Unreadable(std::path::PathBuf, std::io::ErrorKind),
    #[error("the file {} is empty or not UTF-8", .0.display())]
    Empty(std::path::PathBuf),
    #[error("the secret in {0} is shorter than {1} bytes")]
    Short(String, usize),
}

impl SecretSource {
    /// The key suffix that names this source: `env` or `file`.
    pub fn suffix(&self) -> &'static str {
        match self {
            SecretSource::Env(_) => "env",
            SecretSource::File(_) => "file",
        }
    }

    /// The secret now. A file's trailing line break (and any other surrounding ASCII
    /// whitespace) is not part of it: `kubectl create secret --from-file` and `echo` both add one.
    pub fn read(&self) -> Result<String, SecretError> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SecretError::Unset(name.clone()))?,
            SecretSource::File(path) => {
                let bytes = read_regular_file(path, MAX_FILE_BYTES)
                    .map_err(|e| SecretError::Unreadable(path.clone(), e.kind()))?;
                String::from_utf8(bytes.trim_ascii().to_vec())
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| SecretError::Empty(path.clone()))?
            }
        };
        Ok(value)
    }

    /// [`SecretSource::read`], refusing a secret shorter than `min` bytes.
    pub fn read_at_least(&self, min: usize) -> Result<String, SecretError> {
        let value = self.read()?;
        if value.len() < min {
            let at = match self {
                SecretSource::Env(name) => name.clone(),
                SecretSource::File(path) => path.display().to_string(),
            };
            return Err(SecretError::Short(at, min));
        }
        Ok(value)
    }
}

/// The shortest HMAC secret an issuer may have: 256 bits (RFC 7518 §3.2 for HS256).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Which claim carries a token's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeClaim {
    /// `scope`: a space-separated string (RFC 9068 §2.2.3, RFC 8693 §4.2).
    Scope,
    /// `scp`: a space-separated string or an array of strings (Azure AD, Okta).
    Scp,
}

/// One `[[issuers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// `issuer`: compared exactly with a token's `iss` (RFC 7519 §4.1.1).
    pub issuer: String,
    /// `jwks_uri` or `discovery = true`; exactly one.
    pub keys: KeySource,
    /// `audiences`: a token's `aud` must contain one of these (RFC 7519 §4.1.3).
    pub audiences: Vec<String>,
    /// `algorithms`: the allow-list (RFC 8725 §3.1).
    pub algorithms: Vec<Algorithm>,
    /// `leeway`, default `30s`: clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// `jwks_refresh`, default `5m`; shortened by a JWKS response's `Cache-Control: max-age`
    /// (never below 1 minute).
    pub jwks_refresh: Duration,
    /// `jwks_max_stale`, default `24h`: while refreshes fail, the last good keys are used this
    /// long after they were fetched; after that, requests for the issuer answer 503.
    pub jwks_max_stale: Duration,
    /// `jwks_min_refetch`, default `10s`: at most one refetch on an unknown `kid` this often.
    pub jwks_min_refetch: Duration,
    /// `require_typ`, default `false`: only `typ` `at+jwt` / `application/at+jwt` (RFC 9068 §4).
    pub require_typ: bool,
    /// `scope_claim`, default `scope`.
    pub scope_claim: ScopeClaim,
    /// `max_token_lifetime`, optional: tokens whose `exp - iat` exceeds it are refused.
    pub max_token_lifetime: Option<Duration>,
    /// `allow_insecure_http`, default `false`: permit `http://` key and discovery URLs that are
    /// not on a loopback address.
    pub allow_insecure_http: bool,
    /// `require_dpop`, default `false`: the issuer's tokens pass only DPoP-bound, with their
    /// proofs (RFC 9449), on every route.
    pub require_dpop: bool,
    /// `ca_file`, optional: PEM certificates trusted for this issuer's https URLs besides the
    /// system trust store (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[introspection]`: opaque tokens checked at the authorization server (RFC 7662).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// `endpoint`: the introspection URL. `None` when it comes from the discovery metadata
    /// (`introspection_endpoint`, RFC 8414 §2) of `issuer`.
    pub endpoint: Option<Url>,
    /// `issuer`, optional: an answer's `iss`, when present, must equal it; also where the
    /// endpoint is discovered when `endpoint` is absent.
    pub issuer: Option<String>,
    /// `client_id`: the gateway's own client at the authorization server.
    pub client_id: String,
    /// `client_secret_env` or `client_secret_file`: where the client secret is read from.
    pub client_secret: SecretSource,
    /// `auth_method`, default `client_secret_basic`.
    pub auth_method: ClientAuth,
    /// `timeout`, default `2s`: the whole miss (waiting for a slot, the call, the answer).
    pub timeout: Duration,
    /// `cache_ttl`, default `5m`: an active answer is cached until `min(exp, cache_ttl)`. This
    /// bounds how long a token revoked at the authorization server keeps working.
    pub cache_ttl: Duration,
    /// `negative_cache_ttl`, default `10s`: how long an inactive answer is cached.
    pub negative_cache_ttl: Duration,
    /// `cache_capacity`, default `100000` entries; 0 turns the cache off.
    pub cache_capacity: u64,
    /// `max_in_flight`, default `64`: concurrent calls to the endpoint.
    pub max_in_flight: usize,
    /// `audiences`: an answer's `aud` must contain one of them. Required unless
    /// `allow_any_audience`: a refresh token introspects as active, often without `aud` or
    /// `token_type`, and is never meant for a resource server (RFC 6749 §1.5).
    pub audiences: Vec<String>,
    /// `allow_any_audience`, default `false`: accept answers whatever their `aud` (and without
    /// one). Only for an authorization server that never names audiences; `portcullis check`
    /// warns about it.
    pub allow_any_audience: bool,
    /// `leeway`, default `30s`: clock skew allowed on an answer's `nbf`.
    pub leeway: Duration,
    /// `allow_insecure_http`, default `false`: permit a plain-http endpoint off loopback.
    pub allow_insecure_http: bool,
    /// `require_dpop`, default `false`: introspected tokens pass only DPoP-bound (`cnf.jkt`),
    /// with their proofs (RFC 9449), on every route.
    pub require_dpop: bool,
    /// `ca_file`, optional: PEM certificates trusted for the endpoint (and discovery) besides
    /// the system trust store.
    pub ca_file: Option<std::path::PathBuf>,
}

/// How the gateway authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-url-encoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
}

/// Which kinds of token a route accepts (`token_types`, default both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTypes {
    /// `"jwt"`: a JWT whose `iss` is a configured issuer, validated locally.
    pub jwt: bool,
    /// `"opaque"`: any other token, validated by introspection.
    pub opaque: bool,
}

impl Default for TokenTypes {
    fn default() -> TokenTypes {
        TokenTypes {
            jwt: true,
            opaque: true,
        }
    }
}
