//! Login throttling, kept in the store so it holds across instances: per client
//! address (attempts per minute) and per account (exponential backoff after repeated
//! failures, capped so an attacker cannot lock a victim out for long). A throttled
//! attempt is refused before any password hashing.

use super::{Auth, AuthError};
use crate::metrics::LoginOutcome;
use crate::store::AuditEvent;

/// The window of the per-address limit.
pub const ADDRESS_WINDOW_SECS: i64 = 60;
/// An account's failures are forgotten this long after the first of them.
pub const FAILURE_MEMORY_SECS: i64 = 900;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub enabled: bool,
    pub per_address: i64,
    pub failures_before_backoff: i64,
    pub backoff_max_secs: i64,
}

/// Seconds an account waits after its `failures`-th consecutive failed attempt:
/// 0 below the threshold, then 2, 4, 8, ... up to the cap (clocks tick in whole
/// seconds, so the shortest wait is 2 to be at least 1).
pub fn backoff_secs(failures: i64, policy: &ThrottlePolicy) -> i64 {
    let over = failures - policy.failures_before_backoff;
    if over < 0 {
        return 0;
    }
    let exp = (over + 1).min(30) as u32;
    2_i64.saturating_pow(exp).min(policy.backoff_max_secs)
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

impl Auth {
    /// Counts the attempt and refuses it, before any password hashing, when it is over
    /// a limit. Past the failure threshold an attempt must claim the account's next
    /// backoff window: of concurrent attempts (on any instance) exactly one wins it, so
    /// parallel guesses get no more tries than sequential ones.
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
        if let Some(ip) = ip {
            let (start, hits) = self
                .store
                .throttle_hit(&format!("addr:{ip}"), now, ADDRESS_WINDOW_SECS)
                .await?;
            if hits > policy.per_address {
                return self.throttled((start + ADDRESS_WINDOW_SECS - now).max(1));
            }
        }
        // An address that cannot be an email has no account to protect.
        let Ok(email) = super::normalize_email(email) else {
            return Ok(());
        };
        let key = account_key(&email);
        let (_, attempts) = self
            .store
            .throttle_hit(&key, now, FAILURE_MEMORY_SECS)
            .await?;
        let blocked_until = self.store.throttle_blocked_until(&key).await?;
        if blocked_until > now {
            return self.throttled(blocked_until - now);
        }
        if attempts > policy.failures_before_backoff {
            let wait = backoff_secs(attempts - 1, policy);
            if !self.store.throttle_claim(&key, now + wait, now).await? {
                let blocked_until = self.store.throttle_blocked_until(&key).await?;
                return self.throttled((blocked_until - now).max(1));
            }
            self.store
                .record(&AuditEvent {
                    at: now,
                    action: "login_backoff".into(),
                    ip: ip.map(str::to_owned),
                    detail: serde_json::json!({"attempts": attempts, "wait_secs": wait}),
                    ..AuditEvent::default()
                })
                .await?;
        }
        Ok(())
    }

    fn throttled(&self, retry_after: i64) -> Result<(), AuthError> {
        self.metrics.login(LoginOutcome::throttled);
        Err(AuthError::Throttled(retry_after))
    }

    pub(super) async fn login_succeeded(&self, email: &str) -> Result<(), AuthError> {
        if self.throttle.enabled {
            self.store.throttle_clear(&account_key(email)).await?;
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

    #[test]
    fn backoff_doubles_after_the_threshold_and_is_capped() {
        let policy = ThrottlePolicy {
            enabled: true,
            per_address: 30,
            failures_before_backoff: 5,
            backoff_max_secs: 60,
        };
        let waits: Vec<i64> = (1..=13).map(|f| backoff_secs(f, &policy)).collect();
        assert_eq!(waits, vec![0, 0, 0, 0, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(backoff_secs(i64::MAX / 2, &policy), 60);
    }
}
