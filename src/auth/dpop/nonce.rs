//! Server-provided DPoP nonces (RFC 9449 §8, §9), stateless: a nonce is a time step and an
//! HMAC-SHA-256 over it with a secret every replica shares, so any replica accepts a nonce any
//! other issued, and none keeps a list.
//!
//! A nonce is current for its step and the next one: a client that fetched one just before a
//! step ends is not sent round again at once.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// A step's nonce: 8 bytes of the step number, then the 32-byte tag, base64url (54 chars).
const NONCE_BYTES: usize = 40;

/// Issues and checks nonces.
pub struct Nonces {
    key: hmac::Key,
    step_secs: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("step_secs", &self.step_secs)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// Nonces keyed by `secret` that change every `lifetime` (at least a second).
    pub fn new(secret: &[u8], lifetime: Duration) -> Nonces {
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            step_secs: lifetime.as_secs().max(1),
        }
    }

    fn step(&self, now: i64) -> u64 {
        u64::try_from(now).unwrap_or(0) / self.step_secs
    }

    /// The nonce of the step `now` (seconds since the epoch) falls in.
    pub fn current(&self, now: i64) -> String {
        let step = self.step(now).to_be_bytes();
        let tag = hmac::sign(&self.key, &step);
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&step);
        raw[8..].copy_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was issued for the current step or the one before.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let mut raw = [0u8; NONCE_BYTES + 2];
        let Ok(NONCE_BYTES) = URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) else {
            return false;
        };
        let step_bytes: [u8; 8] = raw[..8].try_into().expect("eight bytes");
        let step = u64::from_be_bytes(step_bytes);
        let current = self.step(now);
        (step == current || step.checked_add(1) == Some(current))
            && hmac::verify(&self.key, &step_bytes, &raw[8..NONCE_BYTES]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_lasts_its_step_and_the_next_and_needs_the_secret() {
        let n = Nonces::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        let t = 1_800_000_000;
        let nonce = n.current(t);
        assert_eq!(nonce.len(), 54);
        assert!(n.accepts(&nonce, t));
        assert!(n.accepts(&nonce, t + 60));
        assert!(!n.accepts(&nonce, t + 120), "two steps later");
        assert!(!n.accepts(&nonce, t - 60), "from the future");
        // Another replica with the same secret agrees; one with another secret does not.
        let same = Nonces::new(b"0123456789abcdef0123456789abcdef", Duration::from_secs(60));
        assert!(same.accepts(&nonce, t));
        let other = Nonces::new(b"another secret of thirty-two b..", Duration::from_secs(60));
        assert!(!other.accepts(&nonce, t));
        // A step number with a tag from another step, a cut nonce, garbage.
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        raw[7] ^= 1;
        assert!(!n.accepts(&URL_SAFE_NO_PAD.encode(&raw), t));
        for bad in ["", "abc", &nonce[..50], &format!("{nonce}AA"), "!!!!"] {
            assert!(!n.accepts(bad, t), "{bad:?}");
        }
    }
}
