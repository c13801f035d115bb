//! Key sets: a JWKS document (RFC 7517) filtered by our key policy, and signature checks.
//!
//! Policy (RFC 8725 §3.1, §3.5; RFC 7517 §4): keys with `use` other than `sig`, with `key_ops`
//! lacking `verify`, of an unsupported type or curve, RSA under 2048 bits, with private members,
//! or of type `oct` are skipped, not fatal. Each key is bound to exactly one algorithm: the one
//! its `alg` names, or the one its type and curve imply. A `kid` that appears twice with
//! different keys is ambiguous and never validates. A document that is too large, not JSON, has
//! too many keys or no usable key is a failed fetch, never an empty key set.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_lc_rs::{hmac, signature};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

use super::jwt::Unverified;
use crate::auth::settings::Algorithm;

mod policy;
pub(crate) use policy::RawJwk;
use policy::{bind, fingerprint};

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys accepted in one JWKS document.
pub const MAX_JWKS_KEYS: usize = 100;
/// Most keys tried for a token without `kid`.
pub const MAX_KIDLESS_TRIES: usize = 3;

/// Why a JWKS document was refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWKS is not a JSON object with a `keys` array")]
    NotJwks,
    #[error("the JWKS has more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
    #[error("the JWKS has no key usable with the issuer's algorithms")]
    NoUsableKeys,
}

/// A public key (or HMAC secret) bound to one algorithm, parsed once when the key set loads so
/// that a verification does no key parsing.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    verifier: Verifier,
    /// A digest of the key material; verified-token cache entries remember it.
    pub fingerprint: u64,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// The key material, ready to verify.
enum Verifier {
    /// RSA (PKCS#1 v1.5 or PSS) or ECDSA (fixed-length `r || s`, RFC 7518 §3.4).
    Public(signature::ParsedPublicKey),
    /// Ed25519 (RFC 8037), the raw 32-byte key: parsing it into an `EVP_PKEY` first measured
    /// no faster.
    Ed25519([u8; 32]),
    /// Boxed: an HMAC key holds its precomputed state, far larger than the other variants.
    Hmac(Box<hmac::Key>),
}

/// The outcome of looking up keys for a token.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Keys to try, in order (one when the token names a `kid`).
    Candidates(Vec<&'a Arc<VerifyingKey>>),
    /// The `kid` is not in the set: a refetch may find it.
    UnknownKid,
    /// The `kid` names different keys in one set.
    Ambiguous,
    /// The key exists but is bound to another algorithm.
    AlgorithmMismatch,
}

/// An issuer's usable keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    by_kid: HashMap<String, usize>,
    ambiguous: HashSet<String>,
    fingerprints: HashSet<u64>,
    /// A shared-secret set has no `kid`s: a token's `kid` is ignored.
    ignore_kid: bool,
    /// Keys in the document that the policy skipped.
    pub skipped: usize,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parse a JWKS document, keeping the keys usable with `allowed` algorithms.
    pub fn from_jwks(body: &[u8], allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
        if body.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        // UTF-8 throughout (RFC 8259 §8.1): serde_json would not check members it ignores.
        let text = std::str::from_utf8(body).map_err(|_| JwksError::NotJwks)?;
        let raw: RawJwks = serde_json::from_str(text).map_err(|_| JwksError::NotJwks)?;
        if raw.keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut set = KeySet::default();
        for value in raw.keys {
            match serde_json::from_value::<RawJwk>(value)
                .ok()
                .and_then(|jwk| bind(&jwk, allowed))
            {
                Some(key) => set.insert(key),
                None => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(set)
    }

    /// An HMAC issuer's key set: the shared secret, once per allowed HS algorithm.
    pub fn from_hmac_secret(secret: &[u8], allowed: &[Algorithm]) -> KeySet {
        let mut set = KeySet {
            ignore_kid: true,
            ..KeySet::default()
        };
        for &alg in allowed.iter().filter(|a| a.is_hmac()) {
            set.insert(VerifyingKey {
                kid: None,
                alg,
                verifier: Verifier::Hmac(Box::new(hmac::Key::new(hmac_algorithm(alg), secret))),
                fingerprint: fingerprint(&[alg.name().as_bytes(), secret]),
            });
        }
        set
    }

    fn insert(&mut self, key: VerifyingKey) {
        if let Some(kid) = &key.kid {
            if let Some(&i) = self.by_kid.get(kid) {
                if self.keys[i].fingerprint != key.fingerprint {
                    self.ambiguous.insert(kid.clone());
                }
                return;
            }
            self.by_kid.insert(kid.clone(), self.keys.len());
        }
        self.fingerprints.insert(key.fingerprint);
        self.keys.push(Arc::new(key));
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this fingerprint is (still) in the set.
    pub fn contains(&self, fingerprint: u64) -> bool {
        self.fingerprints.contains(&fingerprint)
    }

    /// The keys to try for a token with this `kid` and `alg`. `kid` is only ever a map key.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid.filter(|_| !self.ignore_kid) {
            Some(kid) if self.ambiguous.contains(kid) => Lookup::Ambiguous,
            Some(kid) => match self.by_kid.get(kid).map(|&i| &self.keys[i]) {
                Some(key) if key.alg == alg => Lookup::Candidates(vec![key]),
                Some(_) => Lookup::AlgorithmMismatch,
                None => Lookup::UnknownKid,
            },
            None => {
                let keys: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|k| {
                        k.alg == alg
                            && !k
                                .kid
                                .as_ref()
                                .is_some_and(|kid| self.ambiguous.contains(kid))
                    })
                    .take(MAX_KIDLESS_TRIES)
                    .collect();
                if keys.is_empty() {
                    Lookup::AlgorithmMismatch
                } else {
                    Lookup::Candidates(keys)
                }
            }
        }
    }
}

/// Check a token's signature with one key. The key's bound algorithm must be the token's.
pub fn verify(token: &Unverified<'_>, key: &VerifyingKey) -> bool {
    key.alg == token.alg && verify_parts(key, token.signing_input, token.signature)
}

/// Check a compact JWS's base64url `signature` over its `signing_input` with one key.
pub fn verify_parts(key: &VerifyingKey, signing_input: &str, signature: &str) -> bool {
    // The largest signature: RSA-8192, 1024 bytes. A longer one cannot verify.
    let mut buf = [0u8; 1024];
    if signature.len() > 1366 {
        return false;
    }
    let Ok(len) = URL_SAFE_NO_PAD.decode_slice(signature, &mut buf) else {
        return false;
    };
    let (message, sig) = (signing_input.as_bytes(), &buf[..len]);
    match &key.verifier {
        Verifier::Public(k) => k.verify_sig(message, sig).is_ok(),
        Verifier::Ed25519(k) => signature::UnparsedPublicKey::new(&signature::ED25519, k)
            .verify(message, sig)
            .is_ok(),
        Verifier::Hmac(k) => hmac::verify(k, message, sig).is_ok(),
    }
}

/// The public key a DPoP proof carries in its `jwk` header (RFC 9449 §4.2), bound to the
/// proof's `alg`, and its RFC 7638 thumbprint; `None` when the key policy refuses it (private
/// members, `use` other than `sig`, an unsupported type or curve, RSA under 2048 bits, `oct`).
pub(crate) fn proof_key(jwk: &RawJwk, alg: Algorithm) -> Option<(VerifyingKey, String)> {
    let key = bind(jwk, &[alg])?;
    Some((key, jwk.thumbprint()?))
}

fn hmac_algorithm(alg: Algorithm) -> hmac::Algorithm {
    match alg {
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    }
}

/// The verification algorithm of ES256 / ES384: fixed-length `r || s` (RFC 7518 §3.4).
fn ecdsa_algorithm(alg: Algorithm) -> Option<&'static signature::EcdsaVerificationAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Some(&signature::ECDSA_P384_SHA384_FIXED),
        _ => None,
    }
}

/// The RSA parameters of an RS/PS algorithm.
fn rsa_parameters(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt;
    use crate::devkeys::{jwks, DevKey};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const ALL_PUBLIC: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    fn set(doc: &serde_json::Value, allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
        KeySet::from_jwks(doc.to_string().as_bytes(), allowed)
    }

    fn check(set: &KeySet, token: &str) -> Result<(), &'static str> {
        let t = jwt::parse(token, 8192).map_err(|_| "parse")?;
        match set.lookup(t.header.kid.as_deref(), t.alg) {
            Lookup::Candidates(keys) if keys.iter().any(|k| verify(&t, k)) => Ok(()),
            Lookup::Candidates(_) => Err("bad signature"),
            Lookup::UnknownKid => Err("unknown kid"),
            Lookup::Ambiguous => Err("ambiguous"),
            Lookup::AlgorithmMismatch => Err("alg mismatch"),
        }
    }

    #[test]
    fn every_public_key_algorithm_verifies_side_by_side_in_one_set() {
        let keys: Vec<DevKey> = ALL_PUBLIC
            .iter()
            .map(|&a| DevKey::generate(a, a.name()))
            .collect();
        let doc = jwks(&keys.iter().collect::<Vec<_>>());
        let s = set(&doc, ALL_PUBLIC).unwrap();
        assert_eq!(s.len(), 5);
        for k in &keys {
            let token = k.sign(&json!({"iss": "i"}));
            assert_eq!(check(&s, &token), Ok(()), "{}", k.alg.name());
            let parts: Vec<&str> = token.split('.').collect();
            let other_claims = URL_SAFE_NO_PAD.encode(json!({"iss": "j"}).to_string());
            let tampered = format!("{}.{other_claims}.{}", parts[0], parts[2]);
            assert_eq!(
                check(&s, &tampered),
                Err("bad signature"),
                "{}",
                k.alg.name()
            );
        }
    }

    #[test]
    fn keys_are_bound_to_one_algorithm() {
        let rsa = DevKey::generate(Algorithm::RS256, "r");
        let s = set(&jwks(&[&rsa]), &[Algorithm::RS256, Algorithm::PS256]).unwrap();
        // The same RSA key cannot be used with PS256 when its JWK says RS256.
        let ps = rsa.sign_raw(&json!({"alg": "PS256", "kid": "r"}), &json!({}));
        assert_eq!(check(&s, &ps), Err("alg mismatch"));
        // Algorithm confusion: HS256 with the RSA public key as the secret.
        let confusion = DevKey::hmac(Algorithm::HS256, "r", &rsa.public_key_bytes());
        let forged = confusion.sign_raw(&json!({"alg": "HS256", "kid": "r"}), &json!({}));
        assert_eq!(check(&s, &forged), Err("alg mismatch"));
        // A JWK without alg: RSA is bound to RS256 when allowed.
        let mut jwk = rsa.jwk();
        jwk.as_object_mut().unwrap().remove("alg");
        let s = set(
            &json!({"keys": [jwk]}),
            &[Algorithm::PS256, Algorithm::RS256],
        )
        .unwrap();
        assert_eq!(check(&s, &rsa.sign(&json!({}))), Ok(()));
    }

    #[test]
    fn the_policy_skips_unusable_keys_and_fails_empty_sets() {
        let good = DevKey::generate(Algorithm::ES256, "good");
        let other = DevKey::generate(Algorithm::ES256, "x");
        let variant = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut j = other.jwk();
            f(&mut j);
            j
        };
        let skipped = vec![
            variant(&|j| j["use"] = json!("enc")),
            variant(&|j| j["key_ops"] = json!(["sign"])),
            variant(&|j| j["d"] = json!("cHJpdmF0ZQ")),
            variant(&|j| j["crv"] = json!("P-384")),
            variant(&|j| j["alg"] = json!("ES384")),
            variant(&|j| j["alg"] = json!("none")),
            variant(&|j| j["kty"] = json!("oct")),
            json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "hmac"}),
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB", "kid": "rsa1024"}),
            json!({"kty": "EC", "crv": "P-256", "x": 5}),
            json!("not an object"),
        ];
        let mut keys = skipped.clone();
        keys.push(good.jwk());
        let s = set(&json!({ "keys": keys }), ALL_PUBLIC).unwrap();
        assert_eq!((s.len(), s.skipped), (1, skipped.len()));
        assert_eq!(check(&s, &good.sign(&json!({}))), Ok(()));

        assert_eq!(
            set(&json!({ "keys": skipped }), ALL_PUBLIC).err(),
            Some(JwksError::NoUsableKeys)
        );
        assert_eq!(
            set(&json!({ "keys": [] }), ALL_PUBLIC).err(),
            Some(JwksError::NoUsableKeys)
        );
        for not_jwks in [&b"<html>oops</html>"[..], b"{\"keys\":[],\"x\":\"\xff\"}"] {
            assert_eq!(
                KeySet::from_jwks(not_jwks, ALL_PUBLIC).err(),
                Some(JwksError::NotJwks)
            );
        }
        assert_eq!(
            set(&json!({"keys": vec![good.jwk(); 101]}), ALL_PUBLIC).err(),
            Some(JwksError::TooManyKeys)
        );
        let huge = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(MAX_JWKS_BYTES));
        assert_eq!(
            KeySet::from_jwks(huge.as_bytes(), ALL_PUBLIC).err(),
            Some(JwksError::TooLarge)
        );
    }

    #[test]
    fn a_kid_naming_two_keys_never_validates() {
        let (a, b) = (
            DevKey::generate(Algorithm::ES256, "dup"),
            DevKey::generate(Algorithm::ES256, "dup"),
        );
        let s = set(&jwks(&[&a, &b]), ALL_PUBLIC).unwrap();
        assert_eq!(check(&s, &a.sign(&json!({}))), Err("ambiguous"));
        assert_eq!(check(&s, &b.sign(&json!({}))), Err("ambiguous"));
        // The same key listed twice is not ambiguous.
        let s = set(&jwks(&[&a, &a]), ALL_PUBLIC).unwrap();
        assert_eq!(check(&s, &a.sign(&json!({}))), Ok(()));
    }

    #[test]
    fn a_token_without_kid_tries_keys_of_its_algorithm() {
        let (a, b) = (
            DevKey::generate(Algorithm::ES256, "a"),
            DevKey::generate(Algorithm::ES256, "b"),
        );
        let s = set(&jwks(&[&a, &b]), ALL_PUBLIC).unwrap();
        let token = b.sign_raw(&json!({"alg": "ES256"}), &json!({}));
        assert_eq!(check(&s, &token), Ok(()));
        assert!(matches!(
            s.lookup(Some("zzz"), Algorithm::ES256),
            Lookup::UnknownKid
        ));
    }

    #[test]
    fn every_other_algorithm_verifies_with_its_pre_parsed_key() {
        use Algorithm::*;
        for alg in [RS384, RS512, PS384, PS512] {
            let k = DevKey::generate(alg, "k");
            let s = set(&jwks(&[&k]), &[alg]).unwrap();
            let token = k.sign(&json!({"iss": "i"}));
            assert_eq!(check(&s, &token), Ok(()), "{}", alg.name());
            let forged = DevKey::generate(alg, "k").sign(&json!({"iss": "i"}));
            assert_eq!(check(&s, &forged), Err("bad signature"), "{}", alg.name());
        }
        let secret = b"0123456789abcdef0123456789abcdef0123456789abcdef";
        for alg in [HS384, HS512] {
            let s = KeySet::from_hmac_secret(secret, &[alg]);
            let token = DevKey::hmac(alg, "h", secret).sign(&json!({}));
            assert_eq!(check(&s, &token), Ok(()), "{}", alg.name());
            let other = DevKey::hmac(alg, "h", &secret[1..]).sign(&json!({}));
            assert_eq!(check(&s, &other), Err("bad signature"), "{}", alg.name());
        }
    }

    #[test]
    fn hmac_sets_and_psychic_signatures() {
        let key = DevKey::hmac(Algorithm::HS256, "h", b"0123456789abcdef0123456789abcdef");
        let s = KeySet::from_hmac_secret(b"0123456789abcdef0123456789abcdef", &[Algorithm::HS256]);
        assert_eq!(check(&s, &key.sign(&json!({}))), Ok(()));
        let wrong = DevKey::hmac(Algorithm::HS256, "h", b"another secret of thirty-two b..");
        assert_eq!(check(&s, &wrong.sign(&json!({}))), Err("bad signature"));

        // ES256 with r = s = 0 (CVE-2022-21449) must not verify.
        let ec = DevKey::generate(Algorithm::ES256, "e");
        let s = set(&jwks(&[&ec]), ALL_PUBLIC).unwrap();
        let token = ec.sign(&json!({}));
        let zeroed = format!(
            "{}.{}",
            &token[..token.rfind('.').unwrap()],
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        assert_eq!(check(&s, &zeroed), Err("bad signature"));
        let truncated = &token[..token.len() - 4];
        assert_eq!(check(&s, truncated), Err("bad signature"));
    }
}
