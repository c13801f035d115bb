//! The per-key policy of a JWKS document (RFC 7517, RFC 8725 §3.1): which keys are usable, and
//! the one algorithm each is bound to.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{ecdsa_algorithm, rsa_parameters, Verifier, VerifyingKey};
use crate::auth::settings::Algorithm;
use aws_lc_rs::signature::{ParsedPublicKey, RsaPublicKeyComponents};

#[derive(Deserialize)]
pub(crate) struct RawJwk {
    kty: String,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    // Private members: their presence disqualifies the key (RFC 7517 §9.2, RFC 7518 §6).
    d: Option<IgnoredAny>,
    p: Option<IgnoredAny>,
    q: Option<IgnoredAny>,
    dp: Option<IgnoredAny>,
    dq: Option<IgnoredAny>,
    qi: Option<IgnoredAny>,
    oth: Option<IgnoredAny>,
    // A symmetric key's secret: `oct` keys are refused anyway.
    k: Option<IgnoredAny>,
}

impl RawJwk {
    /// The JWK SHA-256 thumbprint (RFC 7638 §3): the required members only, in lexicographic
    /// order, without whitespace, hashed and base64url-encoded. Called on a key [`bind`]
    /// accepted, whose members are base64url (no character needs escaping in JSON).
    pub(crate) fn thumbprint(&self) -> Option<String> {
        let canonical = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                self.e.as_deref()?,
                self.n.as_deref()?
            ),
            ("EC", Some(crv)) => format!(
                r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                self.x.as_deref()?,
                self.y.as_deref()?
            ),
            ("OKP", Some(crv)) => {
                format!(
                    r#"{{"crv":"{crv}","kty":"OKP","x":"{}"}}"#,
                    self.x.as_deref()?
                )
            }
            _ => return None,
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        Some(URL_SAFE_NO_PAD.encode(digest.as_ref()))
    }

    /// Whether the JWK holds a private member (RFC 7517 §9.2, RFC 7518 §6).
    pub(crate) fn is_private(&self) -> bool {
        self.d.is_some()
            || self.p.is_some()
            || self.q.is_some()
            || self.dp.is_some()
            || self.dq.is_some()
            || self.qi.is_some()
            || self.oth.is_some()
            || self.k.is_some()
    }
}

fn is_rsa(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    )
}

/// Apply the key policy to one JWK: a key bound to one allowed algorithm, or `None` to skip it.
pub(super) fn bind(jwk: &RawJwk, allowed: &[Algorithm]) -> Option<VerifyingKey> {
    if jwk.is_private() || jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return None;
    }
    let named = match jwk.alg.as_deref() {
        Some(name) => Some(Algorithm::from_name(name)?),
        None => None,
    };
    let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
    let (alg, key, material) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (b64(&jwk.n)?, b64(&jwk.e)?);
            let n_bytes = n.iter().skip_while(|&&b| b == 0).count();
            if n_bytes * 8 < 2048 || e.is_empty() || e.len() > 8 {
                return None;
            }
            let alg = match named {
                Some(a) => a,
                // Only the type is known: RS256 when allowed, else the one allowed RSA algorithm.
                None if allowed.contains(&Algorithm::RS256) => Algorithm::RS256,
                None => {
                    let mut rsa = allowed.iter().copied().filter(|&a| is_rsa(a));
                    match (rsa.next(), rsa.next()) {
                        (Some(a), None) => a,
                        _ => return None,
                    }
                }
            };
            if !is_rsa(alg) {
                return None;
            }
            let key = RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(rsa_parameters(alg)?)
                .ok()?;
            (alg, Verifier::Public(key), [n, e])
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (implied, len) = if crv == "P-256" {
                (Algorithm::ES256, 32)
            } else {
                (Algorithm::ES384, 48)
            };
            if named.is_some_and(|a| a != implied) {
                return None;
            }
            let (x, y) = (jwk.x.as_deref()?, jwk.y.as_deref()?);
            let (xb, yb) = (
                URL_SAFE_NO_PAD.decode(x).ok()?,
                URL_SAFE_NO_PAD.decode(y).ok()?,
            );
            if xb.len() != len || yb.len() != len {
                return None;
            }
            // The uncompressed point (SEC 1 §2.3.3); parsing checks it is on the curve.
            let point = [&[4u8][..], &xb, &yb].concat();
            let key = ParsedPublicKey::new(ecdsa_algorithm(implied)?, point).ok()?;
            (implied, Verifier::Public(key), [xb, yb])
        }
        ("OKP", Some("Ed25519")) => {
            if named.is_some_and(|a| a != Algorithm::EdDSA) {
                return None;
            }
            let x = jwk.x.as_deref()?;
            let xb = URL_SAFE_NO_PAD.decode(x).ok()?;
            if xb.len() != 32 {
                return None;
            }
            let key = Verifier::Ed25519(xb.as_slice().try_into().ok()?);
            (Algorithm::EdDSA, key, [xb, Vec::new()])
        }
        // `oct` (shared secrets never come from a remote document), other types and curves.
        _ => return None,
    };
    if !allowed.contains(&alg) {
        return None;
    }
    Some(VerifyingKey {
        kid: jwk.kid.clone(),
        alg,
        verifier: key,
        fingerprint: fingerprint(&[alg.name().as_bytes(), &material[0], &material[1]]),
    })
}

pub(super) fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let digest = ctx.finish();
    u64::from_be_bytes(
        digest.as_ref()[..8]
            .try_into()
            .expect("SHA-256 has 32 bytes"),
    )
}
