//! Throttling of logins and sign-ups, kept in the store so it holds across instances.
//!
//! The threat is password guessing, and the rule is that guessing must never lock the
//! owner out. So a place (an IPv4 address, or an IPv6 /64) is limited in attempts per
//! minute over all accounts; an account's backoff after repeated failures is kept per
//! account *and* place, so guesses from one place slow that place only; and a much
//! higher per-account ceiling over all places slows a distributed attack: past it, each
//! place gets one attempt on the account per failure window, which a place with no
//! recent failure (the owner's, as a rule) always has. README.md has the numbers.
//! A throttled attempt is refused before any password hashing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use super::{Auth, AuthError};
use crate::metrics::LoginOutcome;
use crate::store::AuditEvent;

/// The window of the per-place limits (logins and sign-ups).
pub const ADDRESS_WINDOW_SECS: i64 = 60;
/// A place's failures on an account, and the account's attempts, are forgotten this
/// long after the first of them; past the ceiling, the longest an owner who failed
/// from their own place waits.
pub const FAILURE_MEMORY_SECS: i64 = 900;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub enabled: bool,
    pub per_address: i64,
    pub failures_before_backoff: i64,
    pub backoff_max_secs: i64,
    /// Attempts on one account from all places in [`FAILURE_MEMORY_SECS`].
    pub account_ceiling: i64,
    pub signups_per_address: i64,
}

/// Seconds a place waits after its `failures`-th consecutive failed attempt on an
/// account: 0 below the threshold, then 2, 4, 8, ... up to the cap (clocks tick in
/// whole seconds, so the shortest wait is 2 to be at least 1).
pub fn backoff_secs(failures: i64, policy: &ThrottlePolicy) -> i64 {
    let over = failures - policy.failures_before_backoff;
    if over < 0 {
        return 0;
    }
    let exp = (over + 1).min(30) as u32;
    2_i64.saturating_pow(exp).min(policy.backoff_max_secs)
}

/// Where an attempt comes from, for counting: an IPv4 address as it is, an IPv6 one
/// as its /64 (one host or one customer is given a whole /64, so its addresses are one
/// place); IPv4-mapped IPv6 is the IPv4 address.
pub fn place_of(ip: &str) -> String {
    match ip.parse::<IpAddr>().map(|a| a.to_canonical()) {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => ip.to_owned(),
    }
}

/// Places whose sign-ups are refused, and until when. A fixed window's count only
/// grows until the window ends, so a place refused once is refused until then on every
/// instance: its further attempts are refused here, without a store write each (a
/// flood's requests then cost as little as they can).
#[derive(Default)]
pub(super) struct Refusals(Mutex<HashMap<String, i64>>);

/// Past this many places remembered, the expired ones are forgotten (all of them, if
/// none has expired: the store still has the counts).
const MAX_REMEMBERED: usize = 10_000;

impl Refusals {
    fn until(&self, place: &str, now: i64) -> Option<i64> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(place).copied().filter(|until| *until > now)
    }

    fn remember(&self, place: String, until: i64, now: i64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, u| *u > now);
            if map.len() >= MAX_REMEMBERED {
                map.clear();
            }
        }
        map.insert(place, until);
    }
}

/// Keyed by a digest: any input (even a NUL byte) makes a valid key, and the table
/// does not list who was attacked.
fn account_key(email: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    format!(
        "acct:{}",
        digest
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The counts of one login attempt, this attempt included: on its account from its
/// place (and when that count began), and on its account from every place.
#[derive(Debug, Clone, Copy)]
struct Counts {
    attempts: i64,
    pair_start: i64,
    on_account: i64,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// Allowed if this attempt wins the place's next backoff window, `wait` long.
    Claim {
        wait: i64,
    },
    /// Refused; retry after this many seconds.
    Refuse(i64),
}

/// The rule, for an attempt whose place is not in a backoff window now.
fn verdict(policy: &ThrottlePolicy, counts: Counts, now: i64) -> Verdict {
    // Past the ceiling, a place that has failed on this account since its last success
    // waits for its failures to be forgotten; a place without one goes on.
    if counts.on_account > policy.account_ceiling && counts.attempts > 1 {
        return Verdict::Refuse((counts.pair_start + FAILURE_MEMORY_SECS - now).max(1));
    }
    if counts.attempts > policy.failures_before_backoff {
        return Verdict::Claim {
            wait: backoff_secs(counts.attempts - 1, policy),
        };
    }
    Verdict::Allow
}

/// One account's failures from one place (`-`: no address known).
fn pair_key(account: &str, place: Option<&str>) -> String {
    format!("{account}@{}", place.unwrap_or("-"))
}

impl Auth {
    /// Counts the attempt and refuses it, before any password hashing, when it is over
    /// a limit. Past the failure threshold an attempt must claim the place's next
    /// backoff window on the account: of concurrent attempts (on any instance) exactly
    /// one wins it, so parallel guesses get no more tries than sequential ones.
    pub(super) async fn check_login_throttle(
        &self,
        email: &str,
        ip: Option<&str>,
        now: i64,
    ) -> Result<(), AuthError> {
        let policy = &self.throttle;
        if !policy.enabled {
            return Ok(());
        }
        let place = ip.map(place_of);
        if let Some(place) = &place {
            let (start, hits) = self
                .store
                .throttle_hit(&format!("addr:{place}"), now, ADDRESS_WINDOW_SECS)
                .await?;
            if hits > policy.per_address {
                return self.throttled((start + ADDRESS_WINDOW_SECS - now).max(1));
            }
        }
        // An address that cannot be an email has no account to protect.
        let Ok(email) = super::normalize_email(email) else {
            return Ok(());
        };
        let account = account_key(&email);
        let pair = pair_key(&account, place.as_deref());
        let (pair_start, attempts) = self
            .store
            .throttle_hit(&pair, now, FAILURE_MEMORY_SECS)
            .await?;
        let blocked_until = self.store.throttle_blocked_until(&pair).await?;
        if blocked_until > now {
            return self.throttled(blocked_until - now);
        }
        let (_, on_account) = self
            .store
            .throttle_hit(&account, now, FAILURE_MEMORY_SECS)
            .await?;
        if on_account == policy.account_ceiling + 1 {
            self.audit_throttle(now, ip, "login_account_ceiling", on_account, 0)
                .await?;
        }
        let counts = Counts {
            attempts,
            pair_start,
            on_account,
        };
        match verdict(policy, counts, now) {
            Verdict::Allow => Ok(()),
            Verdict::Refuse(retry_after) => self.throttled(retry_after),
            Verdict::Claim { wait } => {
                if !self.store.throttle_claim(&pair, now + wait, now).await? {
                    let blocked_until = self.store.throttle_blocked_until(&pair).await?;
                    return self.throttled((blocked_until - now).max(1));
                }
                self.audit_throttle(now, ip, "login_backoff", attempts, wait)
                    .await
            }
        }
    }

    /// Counts a sign-up (one that passed validation, so would reach the store and
    /// argon2) against its place; refused past the per-minute limit.
    pub(super) async fn check_signup_throttle(
        &self,
        ip: Option<&str>,
        now: i64,
    ) -> Result<(), AuthError> {
        let policy = &self.throttle;
        let (true, Some(ip)) = (policy.enabled, ip) else {
            return Ok(());
        };
        let place = place_of(ip);
        if let Some(until) = self.signup_refusals.until(&place, now) {
            return Err(AuthError::Throttled(until - now));
        }
        let (start, hits) = self
            .store
            .throttle_hit(&format!("signup:{place}"), now, ADDRESS_WINDOW_SECS)
            .await?;
        if hits > policy.signups_per_address {
            let until = start + ADDRESS_WINDOW_SECS;
            self.signup_refusals.remember(place, until, now);
            return Err(AuthError::Throttled((until - now).max(1)));
        }
        Ok(())
    }

    /// Whether the place of `ip` is refused for presenting unknown refresh tokens
    /// (remembered here, no store access): `Some(retry_after)` while it is.
    pub(super) fn unknown_refresh_refused(&self, ip: Option<&str>, now: i64) -> Option<i64> {
        let (true, Some(ip)) = (self.throttle.enabled, ip) else {
            return None;
        };
        self.refresh_refusals
            .until(&place_of(ip), now)
            .map(|until| (until - now).max(1))
    }

    /// Counts a refresh token presented from `ip` that the store does not know (a
    /// guess, or a forged `tsr_` token): past the place's per-minute limit (the login
    /// limit per place), `Err(Throttled)`, and the place is remembered as refused until
    /// its minute is over. Honest refreshes of existing tokens are never counted.
    pub(super) async fn count_unknown_refresh(
        &self,
        ip: Option<&str>,
        now: i64,
    ) -> Result<(), AuthError> {
        let policy = &self.throttle;
        let (true, Some(ip)) = (policy.enabled, ip) else {
            return Ok(());
        };
        let place = place_of(ip);
        let (start, hits) = self
            .store
            .throttle_hit(&format!("refresh:{place}"), now, ADDRESS_WINDOW_SECS)
            .await?;
        if hits > policy.per_address {
            let until = start + ADDRESS_WINDOW_SECS;
            self.refresh_refusals.remember(place, until, now);
            return Err(AuthError::Throttled((until - now).max(1)));
        }
        Ok(())
    }

    async fn audit_throttle(
        &self,
        now: i64,
        ip: Option<&str>,
        action: &str,
        attempts: i64,
        wait: i64,
    ) -> Result<(), AuthError> {
        self.store
            .record(&AuditEvent {
                at: now,
                action: action.into(),
                ip: ip.map(str::to_owned),
                detail: serde_json::json!({"attempts": attempts, "wait_secs": wait}),
                ..AuditEvent::default()
            })
            .await?;
        Ok(())
    }

    fn throttled(&self, retry_after: i64) -> Result<(), AuthError> {
        self.metrics.login(LoginOutcome::throttled);
        Err(AuthError::Throttled(retry_after))
    }

    /// A success from a place clears that place's failures on the account; the
    /// account's count over all places runs on (the owner's success must not hand an
    /// attacker a fresh ceiling).
    pub(super) async fn login_succeeded(
        &self,
        email: &str,
        ip: Option<&str>,
    ) -> Result<(), AuthError> {
        if self.throttle.enabled {
            let place = ip.map(place_of);
            let pair = pair_key(&account_key(email), place.as_deref());
            self.store.throttle_clear(&pair).await?;
        }
        Ok(())
    }

    /// Forgets counters that have expired (called periodically).
    pub async fn prune_throttle(&self, now: i64) -> Result<(), AuthError> {
        Ok(self.store.throttle_prune(now, FAILURE_MEMORY_SECS).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ThrottlePolicy = ThrottlePolicy {
        enabled: true,
        per_address: 30,
        failures_before_backoff: 5,
        backoff_max_secs: 60,
        account_ceiling: 100,
        signups_per_address: 20,
    };

    fn counts(attempts: i64, on_account: i64) -> Counts {
        Counts {
            attempts,
            pair_start: 1_000,
            on_account,
        }
    }

    #[test]
    fn below_every_limit_an_attempt_goes_ahead() {
        assert_eq!(verdict(&POLICY, counts(5, 100), 1_010), Verdict::Allow);
    }

    #[test]
    fn past_the_threshold_a_place_claims_its_next_backoff_window() {
        assert_eq!(
            verdict(&POLICY, counts(6, 6), 1_010),
            Verdict::Claim { wait: 2 }
        );
        assert_eq!(
            verdict(&POLICY, counts(9, 9), 1_010),
            Verdict::Claim { wait: 16 }
        );
    }

    #[test]
    fn past_the_ceiling_a_place_that_failed_waits_out_its_window() {
        assert_eq!(
            verdict(&POLICY, counts(2, 101), 1_010),
            Verdict::Refuse(FAILURE_MEMORY_SECS - 10)
        );
        // Never less than a second, never more than the window.
        assert_eq!(
            verdict(&POLICY, counts(2, 101), 1_000 + FAILURE_MEMORY_SECS),
            Verdict::Refuse(1)
        );
    }

    #[test]
    fn past_the_ceiling_a_place_without_failures_goes_ahead() {
        assert_eq!(verdict(&POLICY, counts(1, 5_000), 1_010), Verdict::Allow);
    }

    #[test]
    fn backoff_doubles_after_the_threshold_and_is_capped() {
        let policy = POLICY;
        let waits: Vec<i64> = (1..=13).map(|f| backoff_secs(f, &policy)).collect();
        assert_eq!(waits, vec![0, 0, 0, 0, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(backoff_secs(i64::MAX / 2, &policy), 60);
    }

    #[test]
    fn a_place_is_an_ipv4_address_or_an_ipv6_64() {
        assert_eq!(place_of("198.51.100.7"), "198.51.100.7");
        assert_eq!(place_of("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(place_of("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            place_of("2001:0db8:0001:0002:ffff:ffff:ffff:fff0"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(place_of("2001:db8:1:3::1"), place_of("2001:db8:1:2::1"));
        assert_eq!(place_of("::1"), "0:0:0:0::/64");
        assert_eq!(place_of("not an address"), "not an address");
    }

    #[test]
    fn refusals_are_remembered_until_their_window_ends_and_stay_bounded() {
        let refusals = Refusals::default();
        refusals.remember("198.51.100.7".into(), 160, 100);
        assert_eq!(refusals.until("198.51.100.7", 159), Some(160));
        assert_eq!(refusals.until("198.51.100.7", 160), None);
        assert_eq!(refusals.until("203.0.113.9", 100), None);
        for i in 0..MAX_REMEMBERED + 5 {
            refusals.remember(format!("place {i}"), 1_000, 200);
        }
        let remembered = refusals.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(remembered <= MAX_REMEMBERED, "{remembered}");
    }

    #[test]
    fn the_backoff_is_kept_per_account_and_place() {
        let account = account_key("Owner@Example.com ");
        assert_eq!(account, account_key("owner@example.com"));
        assert_ne!(
            pair_key(&account, Some("198.51.100.7")),
            pair_key(&account, Some("203.0.113.9"))
        );
        assert_ne!(pair_key(&account, None), account);
    }
}
