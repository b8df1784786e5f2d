//! DPoP at the authorization server (RFC 9449): the nonce it may ask proofs to carry,
//! and the replay claim of a proof. The stateless checks of a proof are shared with
//! resource servers in `crate::verify::dpop`.
//!
//! Nonces are stateless, so every instance accepts every other's: a nonce is a time
//! window's number with a MAC under a key derived from the secret key (which all
//! instances share). A nonce is accepted in its own window and the next one, so it
//! lives between one and two windows (and in the window before its own, for an
//! instance whose clock is behind the issuer's).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use sha2::Sha256;
use uuid::Uuid;

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

    /// Whether `nonce` is one of ours from this window, the one before, or the next.
    pub fn nonce_ok(&self, nonce: &str, now: i64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Some((window, mac)) = raw.split_first_chunk::<8>() else {
            return false;
        };
        let window = i64::from_be_bytes(*window);
        let current = now.div_euclid(NONCE_WINDOW_SECS);
        // The next window too: another instance whose clock is a little ahead may
        // have issued it.
        (current - 1..=current + 1).contains(&window)
            && mac.len() == 16
            && mac
                .iter()
                .zip(self.mac(window))
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Security events a holder of a stolen token can repeat at will (a refresh or a
/// revocation without the key): each is written to the audit log once per session,
/// kind and minute on an instance, and counted in the metrics every time. A flood of
/// attempts then costs the audit log a row a minute, not a row a request.
#[derive(Default)]
pub(super) struct RecentEvents(Mutex<HashMap<(Uuid, &'static str), i64>>);

/// How long an event suppresses its repeats.
pub const EVENT_REPEAT_SECS: i64 = 60;
/// Past this many remembered, expired ones are forgotten; if none has expired, events
/// are recorded without being remembered (an attacker with that many stolen tokens
/// gets a row per attempt, not silence).
const MAX_RECENT_EVENTS: usize = 10_000;

impl RecentEvents {
    /// Whether an event of `kind` about `session` is the first in its minute.
    pub(super) fn first(&self, session: Uuid, kind: &'static str, now: i64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&(session, kind)).is_some_and(|until| *until > now) {
            return false;
        }
        if map.len() >= MAX_RECENT_EVENTS {
            map.retain(|_, until| *until > now);
        }
        if map.len() < MAX_RECENT_EVENTS {
            map.insert((session, kind), now + EVENT_REPEAT_SECS);
        }
        true
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
            self.metrics.dpop_refused(ProofError::Replayed.reason());
            Err(AuthError::InvalidDpopProof(ProofError::Replayed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_events_are_recorded_once_a_minute() {
        let recent = RecentEvents::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(recent.first(a, "no_proof", 100));
        assert!(!recent.first(a, "no_proof", 159));
        assert!(recent.first(a, "other_key", 159), "another kind");
        assert!(recent.first(b, "no_proof", 159), "another session");
        assert!(recent.first(a, "no_proof", 160), "a minute later");
        for i in 0..MAX_RECENT_EVENTS as u128 + 5 {
            recent.first(Uuid::from_u128(1_000 + i), "no_proof", 200);
        }
        let remembered = recent.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(remembered <= MAX_RECENT_EVENTS, "{remembered}");
        assert!(
            recent.first(Uuid::from_u128(1), "new", 200),
            "full: recorded, not silenced"
        );
    }

    #[test]
    fn nonces_live_one_to_two_windows_and_are_not_forgeable() {
        let policy = DpopPolicy::new(true, &[7; 32]);
        let t = 1_000_000 * NONCE_WINDOW_SECS + 10;
        let nonce = policy.nonce(t);
        assert!(policy.nonce_ok(&nonce, t));
        assert!(policy.nonce_ok(&nonce, t + NONCE_WINDOW_SECS));
        assert!(!policy.nonce_ok(&nonce, t + 2 * NONCE_WINDOW_SECS));
        assert!(
            policy.nonce_ok(&nonce, t - NONCE_WINDOW_SECS),
            "an instance whose clock is behind"
        );
        assert!(!policy.nonce_ok(&nonce, t - 2 * NONCE_WINDOW_SECS));
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
