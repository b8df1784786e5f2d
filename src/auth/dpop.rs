//! DPoP at the authorization server (RFC 9449): the nonce it may ask proofs to carry,
//! and the replay claim of a proof. The stateless checks of a proof are shared with
//! resource servers in `crate::verify::dpop`.
//!
//! Nonces are stateless, so every instance accepts every other's: a nonce is a time
//! window's number with a MAC under a key derived from the secret key (which all
//! instances share). A nonce is accepted in its own window and the next one, so it
//! lives between one and two windows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use sha2::Sha256;

use super::{Auth, AuthError};
use crate::store::ProofClaim;
pub use crate::verify::dpop::{Proof, ProofError};

/// One nonce window.
pub const NONCE_WINDOW_SECS: i64 = 300;

/// Whether proofs must carry a server nonce, and the key that makes them.
pub struct DpopPolicy {
    pub require_nonce: bool,
    nonce_key: Hkdf<Sha256>,
}

impl DpopPolicy {
    /// `key_material`: 32 secret bytes derived from the secret key.
    pub fn new(require_nonce: bool, key_material: &[u8; 32]) -> Self {
        Self {
            require_nonce,
            nonce_key: Hkdf::<Sha256>::new(Some(b"tessera dpop nonce"), key_material),
        }
    }

    fn mac(&self, window: i64) -> [u8; 16] {
        let mut out = [0u8; 16];
        // HKDF-Expand is HMAC-SHA-256 keyed by the derived key: a PRF of the window.
        let _ = self.nonce_key.expand(&window.to_be_bytes(), &mut out);
        out
    }

    /// A nonce for the window `now` falls in.
    pub fn nonce(&self, now: i64) -> String {
        let window = now.div_euclid(NONCE_WINDOW_SECS);
        let mut raw = window.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.mac(window));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` is one of ours from this window or the one before.
    pub fn nonce_ok(&self, nonce: &str, now: i64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Some((window, mac)) = raw.split_first_chunk::<8>() else {
            return false;
        };
        let window = i64::from_be_bytes(*window);
        let current = now.div_euclid(NONCE_WINDOW_SECS);
        (window == current || window == current - 1)
            && mac.len() == 16
            && mac
                .iter()
                .zip(self.mac(window))
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A proof's replay claim.
pub fn claim_of(proof: &Proof) -> ProofClaim {
    ProofClaim {
        key: proof.replay_key(),
        expires_at: proof.remember_until(),
    }
}

impl Auth {
    /// A fresh nonce for a response, when nonces are asked for.
    pub fn dpop_nonce(&self, now: i64) -> Option<String> {
        self.dpop.require_nonce.then(|| self.dpop.nonce(now))
    }

    /// The nonce rule: a proof must carry a current nonce of ours, when asked for.
    pub fn check_dpop_nonce(&self, proof: &Proof, now: i64) -> Result<(), AuthError> {
        if !self.dpop.require_nonce
            || proof
                .nonce
                .as_deref()
                .is_some_and(|n| self.dpop.nonce_ok(n, now))
        {
            Ok(())
        } else {
            Err(AuthError::InvalidDpopProof(ProofError::UseNonce))
        }
    }

    /// Remembers a proof against replay on every instance (the shared store).
    pub async fn claim_dpop_proof(&self, proof: &Proof) -> Result<(), AuthError> {
        if self.store.claim_proof(claim_of(proof)).await? {
            Ok(())
        } else {
            Err(AuthError::InvalidDpopProof(ProofError::Replayed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_live_one_to_two_windows_and_are_not_forgeable() {
        let policy = DpopPolicy::new(true, &[7; 32]);
        let t = 1_000_000 * NONCE_WINDOW_SECS + 10;
        let nonce = policy.nonce(t);
        assert!(policy.nonce_ok(&nonce, t));
        assert!(policy.nonce_ok(&nonce, t + NONCE_WINDOW_SECS));
        assert!(!policy.nonce_ok(&nonce, t + 2 * NONCE_WINDOW_SECS));
        assert!(!policy.nonce_ok(&nonce, t - NONCE_WINDOW_SECS));
        let other = DpopPolicy::new(true, &[8; 32]);
        assert!(!other.nonce_ok(&nonce, t), "another secret's nonce");
        // A later window's number with this window's MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap_or_default();
        raw[7] ^= 1;
        assert!(!policy.nonce_ok(&URL_SAFE_NO_PAD.encode(raw), t));
        assert!(!policy.nonce_ok("", t));
        assert!(!policy.nonce_ok("not base64!", t));
    }
}
