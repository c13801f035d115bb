//! TLS termination on the proxy listener: rustls with aws-lc-rs, TLS 1.3 and 1.2 only (RFC 8446,
//! RFC 5246; RFC 8996 retired 1.0 and 1.1), ALPN `h2` and `http/1.1` (RFC 7301: a client offering
//! only protocols the gateway does not speak is refused with `no_application_protocol`).
//!
//! Certificates: a default pair (`tls_cert`, `tls_key`) and more chosen by the client's SNI
//! (RFC 6066 §3), each by the DNS names of its certificate's subjectAltName, exact or by a
//! leftmost `*.` wildcard (RFC 6125 §6.4.3). The files are read again when they change (a
//! renewal by cert-manager or certbot) and at every reload: a set that loads whole replaces the
//! old one for new handshakes, and open connections keep theirs; a set with any bad file (a key
//! that does not match its certificate, a half-written file) keeps the old set, and is logged
//! by key and counted.
//!
//! Session resumption uses stateless tickets (RFC 8446 §4.6.1) whose keys rotate, shared by
//! every worker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::auth::settings::{read_regular_file, MAX_FILE_BYTES};
use crate::config::{Problem, TlsConfig, TlsPair};
use tokio_rustls::rustls::pki_types::pem;

/// How far a certificate's `notBefore` may be ahead of this host's clock.
const NOT_BEFORE_SKEW: i64 = 300;

/// How often the certificate files are looked at for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// One certificate chain with its key, and the names it is chosen by.
#[derive(Debug)]
pub(super) struct Pair {
    pub(super) key: Arc<CertifiedKey>,
    /// subjectAltName DNS names, lower case; `*.example.com` for a wildcard.
    names: Vec<String>,
    /// The leaf's `notAfter`, seconds since the epoch.
    not_after: i64,
    /// The config key of its certificate (`server.tls_cert`, ...): the expiry gauge's label.
    cert_key: String,
}

impl Pair {
    /// Load a pair and check it at `now` (seconds since the epoch): readable regular files of
    /// at most [`MAX_FILE_BYTES`], PEM, a key that is the certificate's, a leaf that parses
    /// and is valid now.
    pub(super) fn load(
        pair: &TlsPair,
        provider: &CryptoProvider,
        now: i64,
    ) -> Result<Pair, Problem> {
        let key_key = format!("{}key", pair.cert_key.trim_end_matches("cert"));
        let problem = |key: &str, message: String| Problem {
            key: key.to_owned(),
            message,
        };
        let shown = |path: &std::path::Path| path.display().to_string();
        let read = |path: &std::path::Path, key: &str, what: &str| {
            read_regular_file(path, MAX_FILE_BYTES).map_err(|e| {
                problem(
                    key,
                    format!(
                        "cannot read {}: {e}; mount the {what} (PEM) there",
                        shown(path)
                    ),
                )
            })
        };
        let cert_pem = read(&pair.cert, &pair.cert_key, "certificate chain")?;
        let not_pem = |path: &std::path::Path, key: &str, e: pem::Error| {
            let why = match e {
                pem::Error::NoItemsFound => "holds no PEM item".to_owned(),
                pem::Error::MissingSectionEnd { .. } => {
                    "has a PEM section without its end line".to_owned()
                }
                pem::Error::IllegalSectionStart { .. } => "has a malformed PEM section".to_owned(),
                pem::Error::Base64Decode(_) => "has a PEM section that is not base64".to_owned(),
                other => format!("is not PEM ({other:?})"),
            };
            problem(key, format!("{} {why}", shown(path)))
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| not_pem(&pair.cert, &pair.cert_key, e))?;
        if chain.is_empty() {
            let message = format!("{} holds no PEM certificate", shown(&pair.cert));
            return Err(problem(&pair.cert_key, message));
        }
        let key_pem = read(&pair.key, &key_key, "private key")?;
        let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            // rustls reads no encrypted key, and has no passphrase to read it with.
            pem::Error::NoItemsFound if contains(&key_pem, b"-----BEGIN ENCRYPTED PRIVATE KEY") => {
                let message = format!(
                    "{} holds an encrypted private key; give it unencrypted (`openssl pkey -in KEY -out KEY.pem`)",
                    shown(&pair.key)
                );
                problem(&key_key, message)
            }
            pem::Error::NoItemsFound => problem(
                &key_key,
                format!(
                    "{} holds no private key (PEM `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY`)",
                    shown(&pair.key)
                ),
            ),
            e => not_pem(&pair.key, &key_key, e),
        })?;
        let signing = provider.key_provider.load_private_key(der).map_err(|e| {
            problem(
                &key_key,
                format!("{}: not a usable private key: {e}", shown(&pair.key)),
            )
        })?;
        // The leaf first: a certificate webpki cannot read (X.509 v1, say) would make the key
        // look like another one's.
        let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
            problem(
                &pair.cert_key,
                format!(
                    "{}: the certificate cannot be used: {e:?}",
                    shown(&pair.cert)
                ),
            )
        })?;
        let names = leaf
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let (not_before, not_after) = validity(&chain[0]).ok_or_else(|| {
            problem(
                &pair.cert_key,
                format!(
                    "{}: the certificate's validity does not parse",
                    shown(&pair.cert)
                ),
            )
        })?;
        // A renewal issued moments ago by a CA whose clock runs ahead is not refused.
        if now > not_after || now + NOT_BEFORE_SKEW < not_before {
            let (when, at) = match now > not_after {
                true => ("expired on", not_after),
                false => ("is valid only from", not_before),
            };
            let message = format!(
                "{}: the certificate {when} {}",
                shown(&pair.cert),
                rfc3339(at)
            );
            return Err(problem(&pair.cert_key, message));
        }
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|_| {
            let message = format!(
                "{} is not the key of the certificate in {}",
                shown(&pair.key),
                shown(&pair.cert)
            );
            problem(&key_key, message)
        })?;
        Ok(Pair {
            key: Arc::new(key),
            names,
            not_after,
            cert_key: pair.cert_key.clone(),
        })
    }

    /// Whether the certificate names `host` (lower case): exactly, or by a wildcard for its
    /// leftmost label only.
    fn names(&self, host: &str) -> bool {
        self.names.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => name == host,
        })
    }
}

/// Every pair of a config, loaded whole or not at all.
fn load_all(config: &TlsConfig, provider: &CryptoProvider) -> Result<Vec<Pair>, Vec<Problem>> {
    let now = crate::auth::jwt::unix_seconds(std::time::SystemTime::now());
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for pair in std::iter::once(&config.default).chain(&config.more) {
        match Pair::load(pair, provider, now) {
            Ok(p) => pairs.push(p),
            Err(p) => problems.push(p),
        }
    }
    match problems.is_empty() {
        true => Ok(pairs),
        false => Err(problems),
    }
}

/// Every problem of the config's certificate files (`portcullis check`, start-up).
pub fn problems(config: &TlsConfig) -> Vec<Problem> {
    let mut problems = load_all(config, &provider()).err().unwrap_or_default();
    if let Some(Err(p)) = config.client_ca.as_deref().map(client_roots) {
        problems.push(p);
    }
    problems
}

/// The CA certificates client certificates are verified against (`client_ca`).
fn client_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, Problem> {
    ca_roots(path, "server.client_ca", "client CA certificates")
}

/// The CA certificates of the PEM file at `path` (config key `key`), `what` they are for.
pub(super) fn ca_roots(
    path: &std::path::Path,
    key: &str,
    what: &str,
) -> Result<rustls::RootCertStore, Problem> {
    let problem = |message: String| Problem {
        key: key.into(),
        message,
    };
    let shown = path.display();
    let pem = read_regular_file(path, MAX_FILE_BYTES).map_err(|e| {
        problem(format!(
            "cannot read {shown}: {e}; mount the {what} (PEM) there"
        ))
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| problem(format!("{shown} is not PEM")))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    match added {
        0 => Err(problem(format!("{shown} holds no usable CA certificate"))),
        _ => Ok(roots),
    }
}

/// `haystack` holds `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A client certificate's SHA-256 thumbprint, base64url without padding: what a
/// certificate-bound token's `cnf.x5t#S256` names (RFC 8705 §3.1).
pub fn thumbprint(certificate: &[u8]) -> Box<str> {
    use base64::Engine as _;
    let digest = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, certificate);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(digest.as_ref())
        .into_boxed_str()
}

/// Each certificate's expiry, by its config key; keys no longer in use go.
fn publish(expiry: &prometheus::GaugeVec, pairs: &[Pair]) {
    expiry.reset();
    for pair in pairs {
        expiry
            .with_label_values(&[&pair.cert_key])
            .set(pair.not_after as f64);
    }
}

pub(super) fn provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

/// The certificates in use; the resolver of every worker's TLS handshakes.
#[derive(Debug)]
pub struct Certificates {
    pairs: ArcSwap<Vec<Pair>>,
    provider: Arc<CryptoProvider>,
    /// The files' digest when last loaded or refused, so a change is tried once, and the
    /// config in use (a reload may change the paths).
    seen: Mutex<([u8; 32], TlsConfig)>,
    reloads: IntCounterVec,
    expiry: prometheus::GaugeVec,
}

impl Certificates {
    /// Load the config's files; every problem, by key, when any is bad.
    pub fn load(
        config: &TlsConfig,
        reloads: IntCounterVec,
        expiry: prometheus::GaugeVec,
    ) -> Result<Certificates, Vec<Problem>> {
        let provider = Arc::new(provider());
        let pairs = load_all(config, &provider)?;
        publish(&expiry, &pairs);
        Ok(Certificates {
            pairs: ArcSwap::from_pointee(pairs),
            provider,
            seen: Mutex::new((digest(config), config.clone())),
            reloads,
            expiry,
        })
    }

    /// Read the files again (a reload, or a change seen by [`Certificates::watch`]): the new set
    /// for new handshakes when every pair loads, else the old set stays and the problems are
    /// returned.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), Vec<Problem>> {
        // One reload at a time (a reload's and the watch's), each from files to swap whole.
        let mut seen = self.seen.lock().expect("not poisoned");
        let result = self.load_and_swap(config);
        if result.is_ok() {
            // A refused reload leaves the watch on the files in use.
            *seen = (digest(config), config.clone());
        }
        result
    }

    /// The watch's step: reload when the files in use changed since they were last tried (a
    /// set that fails is not tried again until its files change once more).
    fn refresh(&self) {
        let mut seen = self.seen.lock().expect("not poisoned");
        let now = digest(&seen.1);
        if now != seen.0 {
            seen.0 = now;
            let _ = self.load_and_swap(&seen.1.clone());
        }
    }

    fn load_and_swap(&self, config: &TlsConfig) -> Result<(), Vec<Problem>> {
        let result = load_all(config, &self.provider).map(|pairs| {
            publish(&self.expiry, &pairs);
            self.pairs.store(Arc::new(pairs));
        });
        let label = if result.is_ok() { "success" } else { "failure" };
        self.reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(()) => tracing::info!("TLS certificates reloaded"),
            Err(problems) => {
                for p in problems {
                    tracing::error!(key = %p.key, problem = %p.message, "TLS certificates not reloaded; the old ones stay");
                }
            }
        }
        result
    }

    /// Look at the files every `interval` ([`WATCH_INTERVAL`]) and reload when their bytes
    /// changed.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.refresh()).await;
        }
    }

    /// The server config of the listener: TLS 1.3 and 1.2, ALPN `h2` (with `http2`) and
    /// `http/1.1`, these
    /// certificates, session tickets, and client certificates verified against `client_ca`
    /// when it is set (asked for, and required with `client_auth = "required"`).
    pub fn server_config(
        self: &Arc<Self>,
        tls: &TlsConfig,
        http2: bool,
    ) -> Result<Arc<ServerConfig>, Vec<Problem>> {
        let refused = |e: rustls::Error| {
            vec![Problem {
                key: "server.tls_cert".into(),
                message: format!("the TLS settings are refused: {e}"),
            }]
        };
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(refused)?;
        let builder = match tls.client_ca.as_deref() {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = client_roots(path).map_err(|p| vec![p])?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                );
                let verifier = match tls.client_required {
                    true => verifier,
                    false => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| {
                    vec![Problem {
                        key: "server.client_ca".into(),
                        message: format!("cannot verify client certificates with it: {e}"),
                    }]
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.clone());
        // The server's order wins (RFC 7301 §3.2): HTTP/2 when the client offers both.
        config.alpn_protocols = match http2 {
            true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        config.ticketer = aws_lc_rs::Ticketer::new().map_err(refused)?;
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let pairs = self.pairs.load();
        let chosen = hello.server_name().and_then(|name| {
            let host = name.to_ascii_lowercase();
            pairs.iter().find(|p| p.names(&host))
        });
        chosen.or(pairs.first()).map(|p| p.key.clone())
    }
}

/// A certificate's validity (RFC 5280 §4.1.2.5): `notBefore` and `notAfter`, seconds since the
/// epoch, read from the DER of `tbsCertificate` (version, serialNumber, signature, issuer,
/// validity). `None` when it is not laid out so.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    /// One DER element: its tag, its contents, and what follows it.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let length = match first {
            0..=0x7f => usize::from(first),
            0x81..=0x84 => {
                let (bytes, after) = rest.split_at_checked(usize::from(first & 0x7f))?;
                rest = after;
                bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
            }
            _ => return None,
        };
        let (contents, rest) = rest.split_at_checked(length)?;
        Some((tag, contents, rest))
    }
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (tag, _, after_version) = element(tbs)?;
    // `[0] EXPLICIT version` is absent in a v1 certificate.
    let mut rest = if tag == 0xa0 { after_version } else { tbs };
    for _ in 0..3 {
        rest = element(rest)?.2; // serialNumber, signature, issuer
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (before_tag, before, rest) = element(validity)?;
    let (after_tag, after, _) = element(rest)?;
    Some((time(before_tag, before)?, time(after_tag, after)?))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950-2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`), as
/// RFC 5280 §4.1.2.5 requires them: seconds since the epoch.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    if !text.is_ascii()
        || !text[..text.len().saturating_sub(1)]
            .iter()
            .all(u8::is_ascii_digit)
    {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(0..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 11 || !rest.ends_with('Z') || !rest[..10].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| rest[at..at + 2].parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    // Days from 1970-01-01 to the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn rfc3339(seconds: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A digest of every certificate and key file's bytes (an unreadable file counts as empty).
fn digest(config: &TlsConfig) -> [u8; 32] {
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    for pair in std::iter::once(&config.default).chain(&config.more) {
        for path in [&pair.cert, &pair.key] {
            let bytes = read_regular_file(path, MAX_FILE_BYTES).unwrap_or_default();
            state.update(&(bytes.len() as u64).to_le_bytes());
            state.update(&bytes);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(state.finalize().as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_names_one_label_only() {
        let pair = |names: &[&str]| Pair {
            key: Arc::new(CertifiedKey::new(vec![], Arc::new(NoKey))),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: 0,
            cert_key: "server.tls_cert".into(),
        };
        let p = pair(&["*.example.com", "api.example.org"]);
        assert!(p.names("a.example.com"));
        assert!(!p.names("example.com"));
        assert!(!p.names("a.b.example.com"));
        assert!(!p.names(".example.com"));
        assert!(p.names("api.example.org"));
        assert!(!p.names("www.api.example.org"));
    }

    #[test]
    fn the_validity_is_read_from_the_der_in_both_time_forms() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        // 2049 is UTCTime's last year; 2050 on needs GeneralizedTime (RFC 5280 §4.1.2.5).
        params.not_before = rcgen::date_time_ymd(2020, 2, 29);
        params.not_after = rcgen::date_time_ymd(2050, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            validity(cert.der()),
            Some((1_582_934_400, 2_524_608_000)),
            "2020-02-29T00:00:00Z and 2050-01-01T00:00:00Z"
        );
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        for bad in [
            &b"7001010000Z"[..],
            b"700101000000+0100",
            b"70010100000aZ",
            b"701332000000Z",
            b"700101246000Z",
            b"+70101000000Z",
        ] {
            assert_eq!(time(0x17, bad), None);
        }
        assert_eq!(validity(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(rfc3339(2_524_608_000), "2050-01-01T00:00:00Z");
    }

    #[derive(Debug)]
    struct NoKey;

    impl rustls::sign::SigningKey for NoKey {
        fn choose_scheme(
            &self,
            _: &[rustls::SignatureScheme],
        ) -> Option<Box<dyn rustls::sign::Signer>> {
            None
        }

        fn algorithm(&self) -> rustls::SignatureAlgorithm {
            rustls::SignatureAlgorithm::ECDSA
        }
    }
}
