//! The janitor: deletes what can no longer matter, so tables stay bounded by what is
//! live. Every refresh inserts a row; without this, an active user refreshing every 15
//! minutes leaves ~670 rows a week, forever.
//!
//! The rules (cutoffs are pure functions of `now` and the policy):
//! - A refresh token is kept until `keep_after_secs` past its own expiry. Until it
//!   expires, a legitimate client may still hold it as its newest token, so a copy
//!   presented after it was spent must be caught as reuse (and the session revoked);
//!   after it expires, any copy is refused as expired, spent or not, so the row has
//!   nothing left to decide. A live session therefore holds at most the tokens issued
//!   in one refresh-token lifetime plus the margin.
//! - A session is kept until `keep_after_secs` past its end (revocation or absolute
//!   expiry), then deleted with its tokens. Its access tokens expired long before: the
//!   margin must exceed the access-token lifetime (checked at start-up).
//! - A revocation-feed row is kept until an hour past the expiry of the last access
//!   token it covers.
//! - Audit events are kept `audit_retention_days`.
//! - Login-throttle rows are forgotten once their window and block have passed.
//!
//! Deletes run in batches of `batch` rows, each its own short transaction (bounded
//! lock time, no long transaction), and on PostgreSQL one instance at a time.

use std::collections::BTreeMap;

use super::{Auth, AuthError};
use crate::store::Prunable;

/// How long feed rows outlive the access tokens they cover.
const FEED_MARGIN_SECS: i64 = 3600;

#[derive(Debug, Clone, Copy)]
pub struct JanitorPolicy {
    pub keep_after_secs: i64,
    pub audit_retention_secs: i64,
    pub batch: i64,
}

/// What one run deleted, by table.
pub type Pruned = BTreeMap<&'static str, u64>;

/// Rows of `what` older than this may go.
pub fn cutoff(what: Prunable, now: i64, policy: &JanitorPolicy) -> i64 {
    match what {
        Prunable::RefreshTokens | Prunable::Sessions => now - policy.keep_after_secs,
        Prunable::Revocations => now - FEED_MARGIN_SECS,
        Prunable::AuditEvents => now - policy.audit_retention_secs,
    }
}

impl Auth {
    /// One janitor run at `now`: every table, batch after batch, until nothing is left
    /// to delete or another instance turns out to be pruning.
    pub async fn prune(&self, now: i64) -> Result<Pruned, AuthError> {
        let policy = self.janitor;
        let mut pruned = Pruned::new();
        for what in Prunable::ALL {
            let before = cutoff(what, now, &policy);
            let mut total = 0;
            loop {
                let Some(deleted) = self.store.prune_batch(what, before, policy.batch).await?
                else {
                    return Ok(pruned);
                };
                total += deleted;
                if deleted < policy.batch as u64 {
                    break;
                }
            }
            self.metrics.pruned(what.table(), total);
            pruned.insert(what.table(), total);
        }
        self.prune_throttle(now).await?;
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_follow_the_rules() {
        let policy = JanitorPolicy {
            keep_after_secs: 86_400,
            audit_retention_secs: 90 * 86_400,
            batch: 1000,
        };
        let now = 10_000_000;
        assert_eq!(cutoff(Prunable::RefreshTokens, now, &policy), now - 86_400);
        assert_eq!(cutoff(Prunable::Sessions, now, &policy), now - 86_400);
        assert_eq!(cutoff(Prunable::Revocations, now, &policy), now - 3600);
        assert_eq!(
            cutoff(Prunable::AuditEvents, now, &policy),
            now - 90 * 86_400
        );
    }
}
