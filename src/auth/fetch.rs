//! Outbound HTTP to the identity provider, shared by key sets and introspection: one client with
//! bounded timeouts, same-origin redirects only, capped bodies, and metadata discovery.
//!
//! Discovery (RFC 8414 §3, OpenID Connect Discovery §4): OIDC metadata first, then RFC 8414's
//! well-known path; the metadata's `issuer` must equal the configured issuer exactly (RFC 8414
//! §3.3), and every URL taken from it must be https unless on loopback or explicitly allowed.

use std::time::Duration;

use url::Url;

use super::keys::JwksError;

/// Why something could not be fetched from the identity provider. Never shown to clients;
/// logged and counted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: {source}")]
    Jwks {
        url: String,
        #[source]
        source: JwksError,
    },
    #[error("discovery metadata at {url} is invalid: {reason}")]
    Discovery { url: String, reason: &'static str },
    #[error("the HMAC secret: {0}")]
    Secret(#[source] super::settings::SecretError),
}

impl FetchError {
    /// The bounded `result` label of `portcullis_jwks_fetch_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Http { .. } => "unreachable",
            FetchError::Status { .. } => "bad_status",
            FetchError::TooLarge { .. } | FetchError::Jwks { .. } => "bad_jwks",
            FetchError::Discovery { .. } => "bad_discovery",
            FetchError::Secret(_) => "bad_secret",
        }
    }
}

/// What the gateway reads from an issuer's metadata.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub jwks_uri: Option<Url>,
    pub introspection_endpoint: Option<Url>,
}

/// Why a `ca_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("{path}: a certificate does not parse: {reason}")]
    Invalid { path: String, reason: String },
}

/// The PEM certificates of a `ca_file`, to trust besides the system store.
pub fn read_trust(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, TrustError> {
    let shown = path.display().to_string();
    let limit = super::settings::MAX_FILE_BYTES;
    let pem =
        super::settings::read_regular_file(path, limit).map_err(|source| TrustError::Read {
            path: shown.clone(),
            source,
        })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(TrustError::NoCertificate { path: shown });
    }
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TrustError::Invalid {
            path: shown.clone(),
            reason: error_chain(&e),
        })?;
    match certificates.is_empty() {
        true => Err(TrustError::NoCertificate { path: shown }),
        false => Ok(certificates),
    }
}

/// The HTTP client for an issuer or introspection endpoint with a `ca_file`: the shared
/// client's settings, trusting the file's certificates besides the system store. A file that
/// cannot be read (it was checked at start and at reload, so it changed since) gives the
/// client without it, which fails closed on the private CA's certificates.
pub fn http_client_trusting(ca_file: Option<&std::path::Path>) -> reqwest::Client {
    let Some(path) = ca_file else {
        return http_client();
    };
    let mut builder = builder();
    match read_trust(path) {
        Ok(certificates) => {
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "ca_file unusable; only the system trust store is used")
        }
    }
    builder.build().expect("a TLS backend is compiled in")
}

/// The shared HTTP client for key, discovery and introspection requests: bounded timeouts,
/// redirects only within the same origin, the system trust store (and the web's roots).
pub fn http_client() -> reqwest::Client {
    builder().build().expect("a TLS backend is compiled in")
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if same_origin && attempt.previous().len() < 3 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
}

/// An error with its causes, outermost first (`reqwest`'s own text names none of them: "error
/// sending request" hides an unknown certificate issuer or a refused connection).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// https, or plain http on loopback, or anywhere when explicitly allowed.
pub fn secure_enough(url: &Url, allow_insecure_http: bool) -> bool {
    let loopback = url.host().is_some_and(|h| match h {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    });
    url.scheme() == "https" || (url.scheme() == "http" && (loopback || allow_insecure_http))
}

/// Read a response body of at most `limit` bytes; longer ones are an error before they are
/// buffered.
pub async fn read_capped(
    url: &Url,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge {
        url: url.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_error(url, e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn http_error(url: &Url, e: reqwest::Error) -> FetchError {
    FetchError::Http {
        url: url.to_string(),
        reason: error_chain(&e.without_url()),
    }
}

/// GET with a body cap; returns the body and the response's `Cache-Control: max-age`.
pub async fn get(
    http: &reqwest::Client,
    url: &Url,
    limit: usize,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| http_error(url, e))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let max_age = resp
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    Ok((read_capped(url, resp, limit).await?, max_age))
}

/// `max-age=N` from a Cache-Control value.
pub fn max_age(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse().ok())
        .map(Duration::from_secs)
}

/// Metadata documents are small; anything larger is not one.
const MAX_METADATA_BYTES: usize = 256 * 1024;

/// Fetch the issuer's metadata: OpenID Connect Discovery first, then RFC 8414.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
    allow_insecure_http: bool,
) -> Result<Metadata, FetchError> {
    let parsed = Url::parse(issuer).map_err(|_| FetchError::Discovery {
        url: issuer.to_owned(),
        reason: "the issuer is not a URL",
    })?;
    let oidc = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let path = parsed.path().trim_end_matches('/');
    let rfc8414 = format!(
        "{}/.well-known/oauth-authorization-server{path}",
        parsed.origin().ascii_serialization()
    );
    let mut last = None;
    for candidate in [oidc, rfc8414] {
        let url = Url::parse(&candidate).expect("built from a valid URL");
        match get(http, &url, MAX_METADATA_BYTES).await {
            Ok((body, _)) => return read_metadata(&url, &body, issuer, allow_insecure_http),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("two candidates were tried"))
}

fn read_metadata(
    url: &Url,
    body: &[u8],
    issuer: &str,
    allow_insecure_http: bool,
) -> Result<Metadata, FetchError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        issuer: String,
        jwks_uri: Option<String>,
        introspection_endpoint: Option<String>,
    }
    let bad = |reason| FetchError::Discovery {
        url: url.to_string(),
        reason,
    };
    let m: Raw =
        serde_json::from_slice(body).map_err(|_| bad("not a JSON object with `issuer`"))?;
    if m.issuer != issuer {
        return Err(bad("its `issuer` differs from the configured issuer"));
    }
    let checked = |value: Option<String>, reason| match value {
        None => Ok(None),
        Some(u) => match Url::parse(&u) {
            Ok(u) if secure_enough(&u, allow_insecure_http) => Ok(Some(u)),
            _ => Err(bad(reason)),
        },
    };
    Ok(Metadata {
        jwks_uri: checked(m.jwks_uri, "its `jwks_uri` is not an https URL")?,
        introspection_endpoint: checked(
            m.introspection_endpoint,
            "its `introspection_endpoint` is not an https URL",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(
            max_age("public, max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn metadata_issuer_must_match_and_urls_must_be_secure() {
        let url = Url::parse("https://idp.example/.well-known/openid-configuration").unwrap();
        let ok = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/keys","introspection_endpoint":"https://idp.example/introspect"}"#;
        let m = read_metadata(&url, ok, "https://idp.example", false).unwrap();
        assert_eq!(m.jwks_uri.unwrap().as_str(), "https://idp.example/keys");
        assert_eq!(
            m.introspection_endpoint.unwrap().as_str(),
            "https://idp.example/introspect"
        );
        assert!(read_metadata(&url, ok, "https://idp.example/", false).is_err());
        let plain =
            br#"{"issuer":"https://idp.example","introspection_endpoint":"http://idp.example/i"}"#;
        assert!(read_metadata(&url, plain, "https://idp.example", false).is_err());
        assert!(read_metadata(&url, plain, "https://idp.example", true).is_ok());
        let loopback = br#"{"issuer":"https://idp.example","jwks_uri":"http://127.0.0.1:9/k"}"#;
        assert!(read_metadata(&url, loopback, "https://idp.example", false).is_ok());
        assert!(read_metadata(&url, b"<html>", "https://idp.example", false).is_err());
    }
}
