//! Signing keys for the development issuer (`portcullis dev`), the tests and the benchmarks.
//! DEVELOPMENT ONLY: keys live in memory and are generated fresh each run.
//!
//! Tokens are signed with aws-lc-rs directly, so a caller can sign any header it likes,
//! including the hostile ones the tests need.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::config::Algorithm;

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

/// A private key bound to one algorithm, with its public JWK.
pub struct DevKey {
    pub kid: String,
    pub alg: Algorithm,
    signer: Signer,
}

impl DevKey {
    /// A fresh key: RSA-2048 for RS*/PS*, P-256 / P-384 for ES256 / ES384, Ed25519 for EdDSA.
    /// For HS* use [`DevKey::hmac`].
    pub fn generate(alg: Algorithm, kid: &str) -> DevKey {
        use Algorithm::*;
        let signer = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Signer::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation"),
            ),
            ES256 => Signer::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256"),
            ),
            ES384 => Signer::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).expect("P-384"),
            ),
            EdDSA => Signer::Ed(Ed25519KeyPair::generate().expect("Ed25519")),
            HS256 | HS384 | HS512 => panic!("use DevKey::hmac for {}", alg.name()),
        };
        DevKey {
            kid: kid.to_owned(),
            alg,
            signer,
        }
    }

    /// An HMAC key with a known secret.
    pub fn hmac(alg: Algorithm, kid: &str, secret: &[u8]) -> DevKey {
        let algorithm = match alg {
            Algorithm::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
            Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
            Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
            other => panic!("{} is not an HMAC algorithm", other.name()),
        };
        DevKey {
            kid: kid.to_owned(),
            alg,
            signer: Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(algorithm, secret))),
        }
    }

    /// The public key as a JWK with `kid`, `alg` and `use: sig`.
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.signer {
            Signer::Rsa(k) => {
                let public = k.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Signer::Ec(k) => {
                let point = k.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                json!({ "kty": "EC", "crv": crv, "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..]) })
            }
            Signer::Ed(k) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref()) })
            }
            Signer::Hmac(_) => panic!("an HMAC secret has no public JWK"),
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg.name());
        jwk["use"] = json!("sig");
        jwk
    }

    /// The public key bytes as aws-lc-rs gives them (PKCS#1 `RSAPublicKey` DER for RSA, the
    /// uncompressed point for EC, the raw key for Ed25519): what an algorithm-confusion attacker
    /// would use as an HMAC secret.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(k) => k.public_key().as_ref().to_vec(),
            Signer::Ec(k) => k.public_key().as_ref().to_vec(),
            Signer::Ed(k) => k.public_key().as_ref().to_vec(),
            Signer::Hmac(_) => Vec::new(),
        }
    }

    /// The public key's JWK SHA-256 thumbprint (RFC 7638 §3), computed from the JWK's
    /// required members sorted by name: what a token's `cnf.jkt` names.
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let required: &[&str] = match jwk["kty"].as_str() {
            Some("RSA") => &["e", "kty", "n"],
            Some("EC") => &["crv", "kty", "x", "y"],
            _ => &["crv", "kty", "x"],
        };
        let members: std::collections::BTreeMap<&str, &Value> =
            required.iter().map(|&m| (m, &jwk[m])).collect();
        let canonical = serde_json::to_string(&members).expect("JSON");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        URL_SAFE_NO_PAD.encode(digest)
    }

    /// A DPoP proof (RFC 9449 §4.2) by this key for `method` and `htu`, naming `token` (`ath`),
    /// issued now with a fresh random `jti`; `extra` claims are set over these (`null` removes).
    pub fn dpop_proof(&self, method: &str, htu: &str, token: &str, extra: &Value) -> String {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).expect("random");
        let ath = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            token.as_bytes(),
        ));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = json!({ "jti": URL_SAFE_NO_PAD.encode(jti), "htm": method, "htu": htu,
                                 "iat": now, "ath": ath });
        let members = claims.as_object_mut().expect("an object");
        for (k, v) in extra.as_object().into_iter().flatten() {
            match v {
                Value::Null => drop(members.remove(k)),
                v => drop(members.insert(k.clone(), v.clone())),
            }
        }
        let mut jwk = self.jwk();
        for private in ["kid", "use"] {
            jwk.as_object_mut().map(|j| j.remove(private));
        }
        self.sign_raw(
            &json!({ "typ": "dpop+jwt", "alg": self.alg.name(), "jwk": jwk }),
            &claims,
        )
    }

    /// A compact JWS with header `{"alg", "kid", "typ": "at+jwt"}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({ "alg": self.alg.name(), "kid": self.kid, "typ": "at+jwt" }),
            claims,
        )
    }

    /// A compact JWS over exactly this header and these claims, signed with this key whatever
    /// the header's `alg` says.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        self.sign_text(&header.to_string(), &claims.to_string())
    }

    /// A compact JWS over JSON text as given, e.g. with a member name repeated.
    pub fn sign_text(&self, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = self.sign_bytes(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(k) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(padding, &rng, message, &mut sig)
                    .expect("RSA signing");
                sig
            }
            Signer::Ec(k) => k
                .sign(&rng, message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Signer::Ed(k) => k.sign(message).as_ref().to_vec(),
            Signer::Hmac(k) => aws_lc_rs::hmac::sign(k, message).as_ref().to_vec(),
        }
    }
}

/// A JWKS document holding these keys.
pub fn jwks(keys: &[&DevKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}
