//! Bounds on one user's sessions: the statements behind the per-user cap on live
//! sessions, paginated session lists and revocation of many sessions in batches. A
//! user with thousands of sessions must cost neither one huge page nor one long
//! transaction holding the write lock while every other user's refresh waits.
//!
//! The SQL reads the same on both stores; each backend runs it inside its own
//! transactions (feed lock, notification) in `shared::queries!`.

/// Sessions ended per transaction when a revocation selects many: short enough that
/// no transaction holds the write lock for long (SQLite's one writer, PostgreSQL's
/// feed lock), large enough that a user with thousands of sessions ends in a few.
pub const REVOKE_BATCH: i64 = 100;

/// One batch of a user's live sessions (all, or all but `$4`), ended with reason `$2`
/// at `$1`: `$5` at most, so a revocation of many is many short transactions.
pub(crate) const REVOKE_USER_BATCH: &str = concat!(
    "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
     WHERE id IN (SELECT id FROM sessions \
                   WHERE user_id = $3 AND revoked_at IS NULL AND expires_at > $1 \
                     AND ($4 IS NULL OR id <> $4) \
                   ORDER BY id LIMIT $5) \
       AND revoked_at IS NULL RETURNING ",
    crate::store::shared::session_cols!()
);

/// One batch of a disabled user's remaining sessions (any expiry, as the disable
/// always ended them all).
pub(crate) const REVOKE_DISABLED_BATCH: &str = concat!(
    "UPDATE sessions SET revoked_at = $1, revoked_reason = 'user_disabled' \
     WHERE id IN (SELECT id FROM sessions WHERE user_id = $2 AND revoked_at IS NULL \
                   ORDER BY id LIMIT $3) \
       AND revoked_at IS NULL RETURNING ",
    crate::store::shared::session_cols!()
);

/// Inside a login's transaction, after its session was written: ends the user's
/// oldest live sessions beyond the newest `$3` (so the new one always stays), with
/// reason `session_limit`. The caller holds the user's row lock (PostgreSQL) or the
/// write lock (SQLite), so parallel logins of one user count one after another.
pub(crate) const REVOKE_BEYOND_CAP: &str = concat!(
    "UPDATE sessions SET revoked_at = $1, revoked_reason = 'session_limit' \
     WHERE user_id = $2 AND revoked_at IS NULL AND expires_at > $1 AND id <> $4 \
       AND id NOT IN (SELECT id FROM sessions \
                       WHERE user_id = $2 AND revoked_at IS NULL AND expires_at > $1 \
                       ORDER BY created_at DESC, id DESC LIMIT $3) \
     RETURNING ",
    crate::store::shared::session_cols!()
);

/// One page of a user's live sessions, newest first, after the cursor
/// (`$3` created_at, `$4` id) when there is one.
pub(crate) const LIVE_SESSIONS_PAGE: &str = concat!(
    "SELECT ",
    crate::store::shared::session_cols!(),
    " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
       AND ($3 IS NULL OR created_at < $3 OR (created_at = $3 AND id > $4)) \
     ORDER BY created_at DESC, id LIMIT $5"
);

/// The audit event of one revocation transaction: `event` with the reason and the
/// sessions it ended added to its detail.
pub(crate) fn revoke_event(
    event: &crate::store::AuditEvent,
    reason: &str,
    revoked: &[crate::store::Session],
) -> crate::store::AuditEvent {
    let mut event = event.clone();
    let mut detail = match event.detail.take() {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    detail.insert("reason".into(), reason.into());
    detail.insert(
        "sessions".into(),
        revoked
            .iter()
            .map(|s| s.id.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    event.detail = detail.into();
    event
}

/// The audit event of the sessions a login's cap ended: `session_revoked`, reason
/// `session_limit`, naming the login's new session as `new_session`.
pub(crate) fn cap_event(
    login: &crate::store::AuditEvent,
    ended: &[crate::store::Session],
) -> crate::store::AuditEvent {
    let event = crate::store::AuditEvent {
        at: login.at,
        action: "session_revoked".into(),
        user_id: login.user_id,
        session_id: None,
        actor_id: None,
        ip: login.ip.clone(),
        detail: serde_json::json!({"new_session": login.session_id}),
    };
    revoke_event(&event, "session_limit", ended)
}

/// Where a page of sessions ends: the last session's `created_at` and id. Its text
/// form, `<created_at>.<id>`, is the `next_cursor` of session lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    pub created_at: i64,
    pub id: uuid::Uuid,
}

impl SessionCursor {
    pub fn of(s: &crate::store::Session) -> Self {
        Self {
            created_at: s.created_at,
            id: s.id,
        }
    }

    /// Exactly the written form, as the OpenAPI document's pattern says: 1 to 18
    /// digits, a dot, a lower-case hyphenated UUID. Nothing else is accepted, so input
    /// off the documented schema is refused.
    pub fn parse(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('.')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let groups: Vec<&str> = id.split('-').collect();
        let shaped =
            groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g));
        if at.len() > 18 || !digits(at) || !shaped {
            return None;
        }
        Some(Self {
            created_at: at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at, self.id)
    }
}

/// The per-user cap a login enforces, and what the feed needs for the sessions it ends.
#[derive(Debug, Clone, Copy)]
pub struct SessionCap {
    /// Live sessions a user may hold, the new one included (at least 1).
    pub max_live: i64,
    pub token_tail_secs: i64,
}

#[cfg(test)]
mod tests {
    use super::SessionCursor;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_nothing_else() {
        let c = SessionCursor {
            created_at: 1_700_000_000,
            id: uuid::Uuid::now_v7(),
        };
        assert_eq!(SessionCursor::parse(&c.to_string()), Some(c));
        for bad in [
            "",
            ".",
            "1.",
            "x.y",
            "-1.00000000-0000-0000-0000-000000000000",
            "1",
        ] {
            assert_eq!(SessionCursor::parse(bad), None, "{bad}");
        }
    }
}
