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
/// revocation without the key): every one is counted in the metrics, and written to
/// the audit log unless it repeats one already written this minute. An event is "the
/// same" when session, kind, proof key and address all match. Per session and minute:
/// an attempt from an address not seen yet always gets its row (up to
/// [`MAX_ADDRESSES_PER_SESSION`]), so a second thief, or the real address behind
/// decoys, is not hidden; other distinct attempts get up to
/// [`MAX_DISTINCT_PER_SESSION`] rows (a thief minting a key per attempt fills that,
/// not the table). A session's next row says how many attempts were left out before
/// it. Bounded: past [`MAX_SESSIONS`] sessions with live windows, rows come from a
/// shared budget of [`OVERFLOW_ROWS_PER_MINUTE`], still without exact repeats.
pub(super) struct RecentEvents {
    state: Mutex<Recent>,
    hasher: std::hash::RandomState,
}

#[derive(Default)]
struct Recent {
    sessions: HashMap<Uuid, Window>,
    last_sweep: i64,
    /// The shared budget's minute, and what it let through then (at most
    /// `OVERFLOW_ROWS_PER_MINUTE` entries).
    overflow: (i64, Vec<(Uuid, u64)>),
}

struct Window {
    until: i64,
    /// Fingerprints of the events written.
    seen: Vec<u64>,
    /// Addresses of the events written.
    addresses: Vec<u64>,
    /// Rows written for an address already seen.
    others: usize,
    suppressed: u32,
}

/// How long a written event suppresses its repeats.
pub const EVENT_REPEAT_SECS: i64 = 60;
pub const MAX_DISTINCT_PER_SESSION: usize = 10;
pub const MAX_ADDRESSES_PER_SESSION: usize = 50;
pub const MAX_SESSIONS: usize = 10_000;
pub const OVERFLOW_ROWS_PER_MINUTE: usize = 600;

/// An event let through to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Admitted {
    /// Attempts of this session left out of the log since its last row.
    pub suppressed: u32,
    fingerprint: u64,
    address: u64,
    /// Let through as the first from its address (else as one of the others).
    new_address: bool,
}

impl Default for RecentEvents {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl RecentEvents {
    /// Whether to write this event: `Some` with the count of left-out attempts, or
    /// `None` when it is left out (the caller counts it in the metrics).
    pub(super) fn admit(
        &self,
        session: Uuid,
        kind: &str,
        proof_jkt: Option<&str>,
        ip: Option<&str>,
        now: i64,
    ) -> Option<Admitted> {
        use std::hash::BuildHasher;
        let fingerprint = self.hasher.hash_one((kind, proof_jkt, ip));
        let address = self.hasher.hash_one(ip);
        let admitted = |suppressed, new_address| Admitted {
            suppressed,
            fingerprint,
            address,
            new_address,
        };
        let mut recent = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A window is live from its first row for a minute; one whose end is further
        // away than that was set by a clock since stepped back, and is over.
        let live = |w: &Window| w.until > now && w.until <= now + EVENT_REPEAT_SECS;
        if recent.sessions.len() >= MAX_SESSIONS && now != recent.last_sweep {
            recent.last_sweep = now;
            recent.sessions.retain(|_, w| live(w));
        }
        let carried = match recent.sessions.get_mut(&session) {
            Some(w) if live(w) => {
                let new_address = !w.addresses.contains(&address);
                let room = if new_address {
                    w.addresses.len() < MAX_ADDRESSES_PER_SESSION
                } else {
                    w.others < MAX_DISTINCT_PER_SESSION
                };
                if w.seen.contains(&fingerprint) || !room {
                    w.suppressed = w.suppressed.saturating_add(1);
                    return None;
                }
                w.seen.push(fingerprint);
                if new_address {
                    w.addresses.push(address);
                } else {
                    w.others += 1;
                }
                return Some(admitted(std::mem::take(&mut w.suppressed), new_address));
            }
            Some(w) => w.suppressed,
            None => 0,
        };
        if recent.sessions.len() >= MAX_SESSIONS && !recent.sessions.contains_key(&session) {
            let minute = now.div_euclid(60);
            if recent.overflow.0 != minute {
                recent.overflow = (minute, Vec::new());
            }
            let through = &mut recent.overflow.1;
            if through.contains(&(session, fingerprint))
                || through.len() >= OVERFLOW_ROWS_PER_MINUTE
            {
                return None;
            }
            through.push((session, fingerprint));
            return Some(admitted(0, false));
        }
        recent.sessions.insert(
            session,
            Window {
                until: now + EVENT_REPEAT_SECS,
                seen: vec![fingerprint],
                addresses: vec![address],
                others: 0,
                suppressed: 0,
            },
        );
        Some(admitted(carried, true))
    }

    /// The row for `admitted` could not be written: its repeats must not be left out.
    pub(super) fn forget(&self, session: Uuid, admitted: Admitted) {
        let mut recent = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = recent.sessions.get_mut(&session)
            && let Some(i) = w.seen.iter().position(|f| *f == admitted.fingerprint)
        {
            w.seen.swap_remove(i);
            if admitted.new_address {
                w.addresses.retain(|a| *a != admitted.address);
            } else {
                w.others = w.others.saturating_sub(1);
            }
            w.suppressed = w.suppressed.saturating_add(admitted.suppressed);
        }
        recent
            .overflow
            .1
            .retain(|e| *e != (session, admitted.fingerprint));
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
    fn repeated_events_are_written_once_a_minute_and_new_ones_at_once() {
        let recent = RecentEvents::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let ip = Some("198.51.100.7");
        let left_out = |x: Option<Admitted>| x.map(|x| x.suppressed);
        assert_eq!(
            left_out(recent.admit(a, "no_proof", None, ip, 100)),
            Some(0)
        );
        assert_eq!(recent.admit(a, "no_proof", None, ip, 159), None);
        assert_eq!(recent.admit(a, "no_proof", None, ip, 159), None);
        // Anything that differs is a row of its own: another kind, key, address,
        // session. The session's next row says how many attempts were left out.
        assert_eq!(
            left_out(recent.admit(a, "other_key", Some("k1"), ip, 159)),
            Some(2)
        );
        assert_eq!(
            left_out(recent.admit(a, "other_key", Some("k2"), ip, 159)),
            Some(0),
            "a second thief"
        );
        assert!(
            recent
                .admit(a, "no_proof", None, Some("203.0.113.9"), 159)
                .is_some()
        );
        assert!(recent.admit(b, "no_proof", None, ip, 159).is_some());
        // A minute later the first is written again, with what was left out since.
        assert_eq!(recent.admit(a, "no_proof", None, ip, 159), None);
        assert_eq!(
            left_out(recent.admit(a, "no_proof", None, ip, 160)),
            Some(1)
        );
    }

    #[test]
    fn a_thief_with_a_key_per_attempt_gets_eleven_rows_a_minute_and_hides_no_address() {
        let recent = RecentEvents::default();
        let a = Uuid::from_u128(1);
        let decoy = Some("198.51.100.7");
        let written = (0..100)
            .filter(|i| {
                recent
                    .admit(a, "other_key", Some(&format!("key {i}")), decoy, 100)
                    .is_some()
            })
            .count();
        // The first from the address, then ten more.
        assert_eq!(written, 1 + MAX_DISTINCT_PER_SESSION);
        // The decoys used up their rows; the real thief's address still gets one.
        let real = recent.admit(a, "other_key", Some("key 0"), Some("203.0.113.9"), 100);
        assert_eq!(real.map(|x| x.suppressed), Some(89));
        // Addresses too are bounded.
        let addresses = (0..200)
            .filter(|i| {
                let ip = format!("192.0.2.{i}");
                recent.admit(a, "no_proof", None, Some(&ip), 100).is_some()
            })
            .count();
        assert_eq!(addresses, MAX_ADDRESSES_PER_SESSION - 2);
    }

    #[test]
    fn an_event_whose_row_failed_is_not_left_out() {
        let recent = RecentEvents::default();
        let a = Uuid::from_u128(1);
        let admitted = recent.admit(a, "no_proof", None, None, 100);
        assert!(admitted.is_some());
        if let Some(admitted) = admitted {
            recent.forget(a, admitted);
        }
        assert!(recent.admit(a, "no_proof", None, None, 101).is_some());
    }

    #[test]
    fn the_table_is_bounded_and_full_it_shares_a_budget() {
        let recent = RecentEvents::default();
        for i in 0..MAX_SESSIONS as u128 {
            recent.admit(Uuid::from_u128(1_000 + i), "no_proof", None, None, 200);
        }
        let over = (0..2 * OVERFLOW_ROWS_PER_MINUTE as u128)
            .filter(|i| {
                recent
                    .admit(Uuid::from_u128(1 << 64 | i), "no_proof", None, None, 230)
                    .is_some()
            })
            .count();
        assert_eq!(over, OVERFLOW_ROWS_PER_MINUTE);
        let size = recent.state.lock().map(|r| r.sessions.len()).unwrap_or(0);
        assert!(size <= MAX_SESSIONS, "{size}");
        // The windows end: new sessions get their own again.
        assert!(
            recent
                .admit(Uuid::from_u128(7), "no_proof", None, None, 261)
                .is_some()
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_stretch_a_window() {
        let recent = RecentEvents::default();
        let a = Uuid::from_u128(1);
        assert!(recent.admit(a, "no_proof", None, None, 10_000).is_some());
        // The clock steps back an hour: the window set an hour "ahead" is over.
        assert!(recent.admit(a, "no_proof", None, None, 6_400).is_some());
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
