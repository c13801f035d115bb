//! TLS to a route's upstreams (`upstream_tls = true`): rustls on aws-lc-rs, TLS 1.3 and 1.2
//! only (RFC 8446, RFC 5246; RFC 8996), the same versions the listener speaks.
//!
//! - Verification is always on: the upstream's chain must lead to the system trust store (as
//!   for identity providers: `SSL_CERT_FILE` too), or, with `upstream_ca_file`, to those CA
//!   certificates alone (a mesh's or a private CA's: a public certificate for the name is then
//!   not enough). The name checked (RFC 6125 §6) is `upstream_server_name`, or else the host
//!   of the `upstreams` entry the address came from; a DNS name is sent by SNI (RFC 6066 §3),
//!   an IP address is checked against the certificate's IP addresses and not sent.
//! - ALPN (RFC 7301) offers the route's protocol only: `h2` for `upstream_protocol = "http2"`
//!   (RFC 9113 §3.2), `http/1.1` otherwise. An `http2` route's upstream must select `h2` (the
//!   pool refuses the connection otherwise); an `http1` route's may select none.
//! - `upstream_client_cert` / `upstream_client_key`: a certificate presented when the upstream
//!   asks for one (mTLS, as meshes require), checked when loaded like the listener's: PEM, the
//!   key is the certificate's, valid now.
//!
//! The files are read at start-up, at every reload and by `portcullis check`; a reload whose
//! files do not load is refused whole, and the running settings stay.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::tls::{ca_roots, provider, Pair};
use super::upstreams::host_of;
use crate::config::{Config, Problem, RouteConfig, UpstreamProtocol, UpstreamTlsConfig};

/// Tells apart the settings of every build, so that pooled connections made with one route's
/// settings never serve another's, nor a reloaded config's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One route's TLS to its upstreams.
pub struct UpstreamTls {
    /// Part of the pool's key: nonzero, unique to this build of these settings.
    pub id: u64,
    connector: TlsConnector,
    /// `upstream_server_name`, parsed.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("id", &self.id)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The name to verify on a connection to an address of the `upstreams` entry with host
    /// `host`. (Each entry's host was checked when the settings were built.)
    pub fn name_for(&self, host: &str) -> Option<ServerName<'static>> {
        match &self.server_name {
            Some(name) => Some(name.clone()),
            None => ServerName::try_from(host.to_owned()).ok(),
        }
    }

    /// The TLS handshake on `io`, verifying `name`.
    pub async fn handshake<IO>(
        &self,
        name: ServerName<'static>,
        io: IO,
    ) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector.connect(name, io).await
    }
}

/// The TLS failure behind an upstream error on a TLS connection, if one is: TLS 1.3 sends a
/// server's refusal of the client certificate (none, or one it does not trust) only after the
/// client's side of the handshake has finished, so it arrives as the first read of the answer
/// fails. tokio-rustls gives a TLS error as an `InvalidData` I/O error around rustls's; h2
/// hands each stream a copy of its connection's I/O error with the text alone.
pub fn failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        // io::Error's source() skips the error it wraps, and h2's error has no source().
        let io = e
            .downcast_ref::<io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>()?.get_io());
        if let Some(io) = io.filter(|io| io.kind() == io::ErrorKind::InvalidData) {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// The client certificate, presented whenever the upstream asks.
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Each route's TLS settings (`None` for a route without `upstream_tls`), by route index; or
/// every problem of their files, by key.
pub fn for_routes(config: &Config) -> Result<Vec<Option<Arc<UpstreamTls>>>, Vec<Problem>> {
    let mut system: Option<Result<Arc<RootCertStore>, String>> = None;
    let mut problems = Vec::new();
    let mut built = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let Some(tls) = &route.upstream_tls else {
            built.push(None);
            continue;
        };
        let key = format!("routes[{i}]");
        // The system store is read only when a route trusts it (it can take a while).
        let system = match tls.ca_file {
            Some(_) => None,
            None => Some(&*system.get_or_insert_with(system_roots)),
        };
        match build(&key, route, tls, system) {
            Ok(t) => built.push(Some(Arc::new(t))),
            Err(mut p) => {
                problems.append(&mut p);
                built.push(None);
            }
        }
    }
    match problems.is_empty() {
        true => Ok(built),
        false => Err(problems),
    }
}

/// Every problem of the upstream TLS files (`portcullis check`).
pub fn problems(config: &Config) -> Vec<Problem> {
    for_routes(config).err().unwrap_or_default()
}

/// The system's trust store, or why it holds nothing.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    match (added, found.errors.first()) {
        (0, Some(e)) => Err(format!("the system trust store cannot be read: {e}")),
        (0, None) => Err("the system trust store holds no certificate".to_owned()),
        _ => Ok(Arc::new(roots)),
    }
}

fn build(
    key: &str,
    route: &RouteConfig,
    tls: &UpstreamTlsConfig,
    system: Option<&Result<Arc<RootCertStore>, String>>,
) -> Result<UpstreamTls, Vec<Problem>> {
    let problem = |key: String, message: String| Problem { key, message };
    let mut problems = Vec::new();
    let roots = match (&tls.ca_file, system) {
        (Some(path), _) => {
            let key = format!("{key}.upstream_ca_file");
            ca_roots(path, &key, "upstreams' CA certificates").map(Arc::new)
        }
        (None, Some(Ok(system))) => Ok(system.clone()),
        (None, Some(Err(why))) => {
            let fix = "install the CA certificates (ca-certificates) or set upstream_ca_file";
            Err(problem(
                format!("{key}.upstream_tls"),
                format!("{why}; {fix}"),
            ))
        }
        (None, None) => Err(problem(
            format!("{key}.upstream_tls"),
            "no CA certificates to verify upstreams against".to_owned(),
        )),
    };
    let roots = roots.map_err(|p| problems.push(p)).ok();
    let provider = Arc::new(provider());
    let now = crate::auth::jwt::unix_seconds(std::time::SystemTime::now());
    let client = match &tls.client {
        None => None,
        Some(pair) => Pair::load(pair, &provider, now)
            .map(|p| p.key)
            .map_err(|p| problems.push(p))
            .ok(),
    };
    let server_name = match tls.server_name.as_deref() {
        None => None,
        Some(name) => match ServerName::try_from(name.to_owned()) {
            Ok(name) => Some(name),
            Err(_) => {
                let message = format!("{name:?} is neither a DNS name nor an IP address");
                problems.push(problem(format!("{key}.upstream_server_name"), message));
                None
            }
        },
    };
    if tls.server_name.is_none() {
        for entry in &route.upstreams {
            let host = host_of(entry);
            if ServerName::try_from(host).is_err() {
                let message = format!(
                    "{host:?} is not a name a certificate can be verified for; set upstream_server_name"
                );
                problems.push(problem(format!("{key}.upstreams"), message));
            }
        }
    }
    let Some(roots) = roots.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    let refused = |e: rustls::Error| {
        let message = format!("the TLS settings are refused: {e}");
        vec![problem(format!("{key}.upstream_tls"), message)]
    };
    let versions: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(refused)?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(certified) => {
            builder.with_client_cert_resolver(Arc::new(ClientCertificate(certified)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match route.upstream_protocol {
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(UpstreamTls {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}
