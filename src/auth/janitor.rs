//! The janitor: deletes what can no longer matter, so tables stay bounded by what is
//! live. Every refresh inserts a row; without this, an active user refreshing every 15
//! minutes leaves ~670 rows a week, forever.
//!
//! The rules (cutoffs are pure functions of `now` and the policy):
//! - A session is kept until `keep_after_secs` past its end (revocation or absolute
//!   expiry); then its refresh tokens are deleted in batches, and the session after
//!   them. Its access tokens expired long before: the margin must exceed the
//!   access-token lifetime (checked at start-up).
//! - A spent refresh token of a live session is kept for the session's life, even past
//!   its own expiry: the holder it was stolen from may come back with its copy at any
//!   time while the thief's chain is live, and that copy is the signal that revokes the
//!   thief's session (RFC 9700 §4.14.2). So a live session holds at most one token per
//!   refresh over its absolute lifetime.
//! - An unspent refresh token is deleted `keep_after_secs` past its expiry: nobody
//!   rotated it, so no copy of it can signal theft, and it can no longer rotate.
//! - A revocation-feed row is kept until an hour past the expiry of the last access
//!   token it covers.
//! - Audit events are kept `audit_retention_days`.
//! - Login-throttle rows are forgotten once their window and block have passed.
//! - A DPoP proof is remembered (against replay) until its `iat` is too old to be
//!   accepted anyway (a minute); these go every minute, not only at the janitor's runs,
//!   since every DPoP request adds one.
//!
//! Deletes run in batches of `batch` rows, each its own short transaction (bounded
//! lock time, no long transaction), with a pause between batches so other writers
//! (SQLite has one write lock) get their turn; on PostgreSQL one instance at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Auth;
use crate::store::Prunable;

/// How long feed rows outlive the access tokens they cover.
const FEED_MARGIN_SECS: i64 = 3600;

#[derive(Debug, Clone, Copy)]
pub struct JanitorPolicy {
    pub keep_after_secs: i64,
    pub audit_retention_secs: i64,
    pub batch: i64,
    /// Between two batches.
    pub pause: Duration,
}

/// What one run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Rows deleted, by table.
    pub deleted: BTreeMap<&'static str, u64>,
    /// Another instance was pruning: this run stopped there.
    pub busy: bool,
    /// Tables whose pruning failed this run (logged; the others went on).
    pub failed: Vec<&'static str>,
}

/// Rows of `what` older than this may go.
pub fn cutoff(what: Prunable, now: i64, policy: &JanitorPolicy) -> i64 {
    match what {
        Prunable::EndedSessionTokens | Prunable::Sessions | Prunable::ExpiredTokens => {
            now - policy.keep_after_secs
        }
        Prunable::Revocations => now - FEED_MARGIN_SECS,
        Prunable::AuditEvents => now - policy.audit_retention_secs,
        // Remembered until their `iat` is too old to be accepted: then they may go.
        Prunable::DpopProofs => now,
    }
}

impl Auth {
    /// One janitor run at `now`: every kind of row, batch after batch, until nothing
    /// is left to delete or another instance turns out to be pruning. A kind that
    /// fails (a timeout, say) is logged and the run goes on with the next.
    pub async fn prune(&self, now: i64) -> PruneReport {
        let mut report = self.prune_kinds(&Prunable::ALL, now).await;
        if let Err(e) = self.prune_throttle(now).await {
            tracing::warn!(error = %e, "pruning login-throttle rows failed");
            report.failed.push("login_throttle");
        }
        report
    }

    /// Prunes the given kinds only (the remembered DPoP proofs go every minute).
    pub async fn prune_kinds(&self, kinds: &[Prunable], now: i64) -> PruneReport {
        let policy = self.janitor;
        let mut report = PruneReport::default();
        'kinds: for &what in kinds {
            let before = cutoff(what, now, &policy);
            loop {
                match self.store.prune_batch(what, before, policy.batch).await {
                    Ok(None) => {
                        report.busy = true;
                        break 'kinds;
                    }
                    Ok(Some(deleted)) => {
                        self.metrics.pruned(what.table(), deleted);
                        *report.deleted.entry(what.table()).or_default() += deleted;
                        if deleted < policy.batch as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kind = ?what, "pruning failed; going on with the next kind");
                        report.failed.push(what.table());
                        break;
                    }
                }
                tokio::time::sleep(policy.pause).await;
            }
        }
        report
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
            pause: Duration::ZERO,
        };
        let now = 10_000_000;
        for kind in [
            Prunable::EndedSessionTokens,
            Prunable::Sessions,
            Prunable::ExpiredTokens,
        ] {
            assert_eq!(cutoff(kind, now, &policy), now - 86_400);
        }
        assert_eq!(cutoff(Prunable::Revocations, now, &policy), now - 3600);
        assert_eq!(
            cutoff(Prunable::AuditEvents, now, &policy),
            now - 90 * 86_400
        );
    }
}
