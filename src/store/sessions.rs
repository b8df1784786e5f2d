//! The session aggregate: one row per login, holding its current refresh token (hash,
//! generation, lifetime) and what the grace window needs of the previous one. A refresh
//! is one update of that row; a spent token is known by its generation, never stored.
//!
//! The SQL lives here as named constants (per backend where the dialects differ), and
//! the one decision the store makes itself, which generation a presented token is, as a
//! plain function over a row.

use super::{Session, TokenState};
use crate::tokens::refresh::TokenHash;

/// A session row with its token columns, as read to judge a refused refresh.
#[derive(Debug, Clone)]
pub(crate) struct SessionTokens {
    pub session: Session,
    pub roles: Vec<String>,
    pub user_disabled: bool,
    pub generation: i64,
    pub token_hash: Option<Vec<u8>>,
    pub token_issued_at: Option<i64>,
    pub token_expires_at: Option<i64>,
    pub prev_hash: Option<Vec<u8>>,
    pub prev_sealed: Option<Vec<u8>>,
    pub prev_replays: i64,
    pub prev_ip: Option<String>,
    pub prev_agent: Option<i64>,
}

/// What a token of `generation` with `hash` is in this session: the current token, the
/// previous one (spent when the current one was issued; its successor is the current
/// one, sealed under it), or an older one, whose successor was spent too. `None` for a
/// token the session never handed out: a newer generation, or one whose hash is not the
/// one kept (a successor minted by a rotation that lost its race).
pub(crate) fn state_of(row: SessionTokens, generation: i64, hash: TokenHash) -> Option<TokenState> {
    let matches = |kept: &Option<Vec<u8>>| kept.as_deref() == Some(&hash.0[..]);
    let mut state = TokenState {
        session: row.session,
        roles: row.roles,
        user_disabled: row.user_disabled,
        issued_at: row.token_issued_at.unwrap_or_default(),
        expires_at: row.token_expires_at.unwrap_or_default(),
        spent_at: None,
        sealed_successor: None,
        successor_spent: false,
        successor_expires_at: None,
        replays: 0,
        spent_ip: None,
        spent_agent: None,
        generations_behind: row.generation.checked_sub(generation)?,
    };
    match state.generations_behind {
        0 if matches(&row.token_hash) => Some(state),
        1 if matches(&row.prev_hash) => {
            // When it was issued, its expiry is not kept: the successor's issue is
            // when it was spent, and only that matters to the rules now.
            state.issued_at = 0;
            state.expires_at = 0;
            state.spent_at = row.token_issued_at;
            state.sealed_successor = row.prev_sealed;
            state.successor_expires_at = row.token_expires_at;
            state.replays = row.prev_replays;
            state.spent_ip = row.prev_ip;
            state.spent_agent = row.prev_agent;
            Some(state)
        }
        // The previous generation's hash was kept; a token of it with another hash was
        // never handed out.
        1 => None,
        behind if behind > 1 && generation >= 1 => {
            state.issued_at = 0;
            state.expires_at = 0;
            state.successor_spent = true;
            Some(state)
        }
        _ => None,
    }
}

/// One session, by id.
pub(crate) const SESSION: &str = concat!(
    "SELECT ",
    super::shared::session_cols!(),
    " FROM sessions WHERE id = $1"
);

/// A user's live sessions at `$2`, newest first.
pub(crate) const LIVE_SESSIONS: &str = concat!(
    "SELECT ",
    super::shared::session_cols!(),
    " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
     ORDER BY created_at DESC, id"
);

/// The user of a live session, if the user is enabled: the live check behind account and
/// admin routes.
pub(crate) const LIVE_USER: &str = "SELECT u.* FROM sessions s JOIN users u ON u.id = s.user_id \
     WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL";

/// Ends one live session (`$3`) at `$1` for reason `$2`.
pub(crate) const REVOKE_SESSION: &str = concat!(
    "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
     WHERE id = $3 AND revoked_at IS NULL RETURNING ",
    super::shared::session_cols!()
);

/// A session row with its token columns and its user's roles and state.
pub(crate) const SESSION_TOKENS: &str = "
SELECT s.id, s.user_id, s.client_id, s.scope, s.created_at, s.last_used_at, s.expires_at,
       s.revoked_at, s.user_agent, s.ip, s.dpop_jkt, s.generation, s.token_hash,
       s.token_issued_at, s.token_expires_at, s.prev_hash, s.prev_sealed, s.prev_replays,
       s.prev_ip, s.prev_agent, u.roles, u.disabled_at
  FROM sessions AS s JOIN users AS u ON u.id = s.user_id
 WHERE s.id = $1";

/// A legacy token (issued before sessions were one row) and its session. Its successor
/// is a legacy token too (spent or not, in the same table) or, for the token the
/// upgrade rotated, the session's generation-1 token, unspent while it is the current
/// one.
pub(crate) const LEGACY_TOKEN_STATE: &str = "
SELECT s.id, s.user_id, s.client_id, s.scope, s.created_at, s.last_used_at, s.expires_at,
       s.revoked_at, s.user_agent, s.ip, s.dpop_jkt, u.roles, u.disabled_at,
       t.issued_at, t.expires_at AS token_expires_at, t.spent_at, t.sealed_successor,
       t.replays, t.spent_ip, t.spent_agent,
       COALESCE(CASE WHEN c.hash IS NOT NULL THEN c.spent_at IS NOT NULL
                     ELSE NOT (s.token_hash IS NOT NULL AND s.token_hash = t.successor_hash) END,
                true) AS successor_spent,
       COALESCE(c.expires_at, s.token_expires_at) AS successor_expires_at
  FROM refresh_tokens AS t
  JOIN sessions AS s ON s.id = t.session_id
  JOIN users AS u ON u.id = s.user_id
  LEFT JOIN refresh_tokens AS c ON c.hash = t.successor_hash
 WHERE t.hash = $1";

/// One grace replay of the previous generation (`$2` is the current one, so a replay
/// counts only while its successor is unspent), below the cap `$4`.
pub(crate) const CLAIM_REPLAY: &str = "
UPDATE sessions SET prev_replays = prev_replays + 1
 WHERE id = $1 AND generation = $2 AND prev_hash = $3 AND prev_replays < $4
RETURNING prev_replays";

/// One grace replay of a legacy token, while its successor is unspent (a legacy one in
/// the same table, or the session's current token).
pub(crate) const LEGACY_CLAIM_REPLAY: &str = "
UPDATE refresh_tokens SET replays = replays + 1
 WHERE hash = $1 AND replays < $2
   AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS c
                    WHERE c.hash = refresh_tokens.successor_hash AND c.spent_at IS NOT NULL)
   AND (EXISTS (SELECT 1 FROM refresh_tokens AS c WHERE c.hash = refresh_tokens.successor_hash)
        OR EXISTS (SELECT 1 FROM sessions AS s
                    WHERE s.id = refresh_tokens.session_id AND s.token_hash = refresh_tokens.successor_hash))
RETURNING replays";

/// PostgreSQL's rotations: one statement each.
pub(crate) mod pg {
    /// The update both rotation statements make (a literal, so it can be embedded).
    macro_rules! rotate_update {
        () => {
            "UPDATE sessions AS s
       SET generation = s.generation + 1, token_hash = $4,
           token_issued_at = GREATEST($6, floor(extract(epoch FROM clock_timestamp()))::bigint),
           token_expires_at = LEAST($6 + $7, s.expires_at),
           last_used_at = GREATEST($6, floor(extract(epoch FROM clock_timestamp()))::bigint),
           prev_hash = s.token_hash, prev_sealed = $5, prev_replays = 0,
           prev_ip = $10, prev_agent = $11
      FROM users AS u
     WHERE s.id = $1 AND s.generation = $2 AND s.token_hash = $3 AND s.token_expires_at > $6
       AND s.revoked_at IS NULL AND s.expires_at > $6
       AND u.id = s.user_id AND u.disabled_at IS NULL
       AND s.client_id = $8
       AND ($9::text[] IS NULL OR $9::text[] <@ string_to_array(s.scope, ' '))
       AND (s.dpop_jkt IS NULL OR s.dpop_jkt = $12::text)"
        };
    }

    /// Moves the session from generation `$2` (whose token hashes to `$3`) to the next:
    /// the new token's hash `$4`, the new one sealed under the old `$5`, `$6` now, `$7`
    /// the token lifetime, `$10` and `$11` who rotates (address, user-agent
    /// fingerprint), the rules held: token and session live, user enabled, the
    /// session's client asking (`$8`), a narrower scope `$9` within the session's, the
    /// DPoP key `$12` the session is bound to. The client's own policy (a confidential
    /// client must have authenticated, a client may require DPoP) is checked before,
    /// from the client cache: a registered client never changes.
    ///
    /// One row updated, no row inserted, no indexed column written: a HOT update.
    /// Concurrent callers queue on the row lock; the losers re-check `generation = $2`
    /// on the new version, fail it, and change nothing. The row lock also orders the
    /// update against a revocation: one that commits first makes it match nothing.
    pub const ROTATE: &str = concat!(
        rotate_update!(),
        "
    RETURNING s.id AS session_id, s.user_id, s.client_id, s.scope,
              s.token_expires_at AS expires_at, u.roles"
    );

    /// [`ROTATE`] with the request's DPoP proof (`$13`, until `$14`), remembered in the
    /// same statement only if the session exists: nothing moves if it was seen before.
    /// Always one row: whether the proof was fresh, and the rotation if there was one.
    /// The session's row is locked before the proof is claimed, as a batch does, so a
    /// statement and a batch claiming one proof never wait on each other in a circle.
    pub const ROTATE_WITH_PROOF: &str = concat!(
        "
WITH locked AS MATERIALIZED (
    SELECT id FROM sessions WHERE id = $1 FOR NO KEY UPDATE
), proof AS (
    INSERT INTO dpop_proofs (key, expires_at)
    SELECT $13, $14 WHERE EXISTS (SELECT 1 FROM locked)
    ON CONFLICT DO NOTHING
    RETURNING key
), rotated AS (
    ",
        rotate_update!(),
        "
       AND EXISTS (SELECT 1 FROM proof)
    RETURNING s.id AS session_id, s.user_id, s.client_id, s.scope,
              s.token_expires_at AS expires_at, u.roles
)
SELECT (EXISTS (SELECT 1 FROM proof)
        OR NOT EXISTS (SELECT 1 FROM sessions WHERE id = $1)) AS proof_fresh, r.*
  FROM (SELECT 1) AS one LEFT JOIN rotated AS r ON true"
    );

    /// The last rotation of a legacy token: spent in `refresh_tokens` as before (so a
    /// copy of it presented again is still caught), its session moved from generation
    /// 0 to 1 with the successor `$2`, which is of the session-row shape. The same rules
    /// as [`ROTATE`]; parameters as that statement had them before the upgrade.
    pub const ROTATE_LEGACY: &str = "
WITH proof AS (
    INSERT INTO dpop_proofs (key, expires_at)
    SELECT $12, $13 WHERE $12::bytea IS NOT NULL
       AND EXISTS (SELECT 1 FROM refresh_tokens WHERE hash = $1)
    ON CONFLICT DO NOTHING
    RETURNING key
), spent AS (
    UPDATE refresh_tokens AS t
       SET spent_at = GREATEST($3, floor(extract(epoch FROM clock_timestamp()))::bigint),
           successor_hash = $2, sealed_successor = $4, spent_ip = $9, spent_agent = $10
      FROM sessions AS s JOIN users AS u ON u.id = s.user_id
     WHERE t.hash = $1 AND t.spent_at IS NULL AND t.expires_at > $3
       AND s.id = t.session_id AND s.generation = 0
       AND s.revoked_at IS NULL AND s.expires_at > $3
       AND u.disabled_at IS NULL AND ($6::text IS NULL OR s.client_id = $6)
       AND ($8::text[] IS NULL OR $8::text[] <@ string_to_array(s.scope, ' '))
       AND (s.dpop_jkt IS NULL OR s.dpop_jkt = $11::text)
       AND NOT EXISTS (SELECT 1 FROM clients AS c WHERE c.id = s.client_id
             AND ((c.secret_hash IS NOT NULL AND NOT $7::boolean)
                  OR (c.require_dpop AND $11::text IS NULL)))
       AND ($12::bytea IS NULL OR EXISTS (SELECT 1 FROM proof))
    RETURNING t.session_id, s.user_id, s.client_id, s.scope, u.roles
), upgraded AS (
    UPDATE sessions
       SET generation = 1, token_hash = $2,
           token_issued_at = GREATEST($3, floor(extract(epoch FROM clock_timestamp()))::bigint),
           token_expires_at = LEAST($3 + $5, sessions.expires_at),
           last_used_at = GREATEST($3, floor(extract(epoch FROM clock_timestamp()))::bigint)
      FROM spent
     WHERE sessions.id = spent.session_id AND sessions.revoked_at IS NULL
       AND sessions.generation = 0
    RETURNING sessions.id, sessions.token_expires_at
)
SELECT ($12::bytea IS NULL OR EXISTS (SELECT 1 FROM proof)
        OR NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE hash = $1)) AS proof_fresh, r.*
  FROM (SELECT 1) AS one LEFT JOIN (
       SELECT spent.session_id, spent.user_id, spent.client_id, spent.scope, spent.roles,
              upgraded.token_expires_at AS expires_at
         FROM spent JOIN upgraded ON upgraded.id = spent.session_id
  ) AS r ON true";
}

/// SQLite's rotations: SQLite has no data-modifying CTEs or arrays, so each runs in a
/// write transaction that begins with the conditional update (the write lock picks the
/// winner); the scope asked for is checked before commit.
pub(crate) mod sqlite {
    /// [`super::pg::ROTATE`]'s update and parameters but the scope (checked before
    /// commit): `$9` and `$10` who rotates, `$11` the proof's key thumbprint.
    pub const ROTATE: &str = "
UPDATE sessions
   SET generation = generation + 1, token_hash = $4,
       token_issued_at = max($6, CAST(strftime('%s', 'now') AS INTEGER)),
       token_expires_at = min($6 + $7, expires_at),
       last_used_at = max($6, CAST(strftime('%s', 'now') AS INTEGER)),
       prev_hash = token_hash, prev_sealed = $5, prev_replays = 0,
       prev_ip = $9, prev_agent = $10
 WHERE id = $1 AND generation = $2 AND token_hash = $3 AND token_expires_at > $6
   AND revoked_at IS NULL AND expires_at > $6 AND client_id = $8
   AND (dpop_jkt IS NULL OR dpop_jkt = $11)
   AND EXISTS (SELECT 1 FROM users AS u WHERE u.id = sessions.user_id AND u.disabled_at IS NULL)
RETURNING id AS session_id, user_id, client_id, scope, token_expires_at AS expires_at,
          (SELECT roles FROM users WHERE id = sessions.user_id) AS roles";

    /// A legacy token's spend (the rules as [`ROTATE`]).
    pub const SPEND_LEGACY: &str = "
UPDATE refresh_tokens
   SET spent_at = max($3, CAST(strftime('%s', 'now') AS INTEGER)),
       successor_hash = $2, sealed_successor = $4, spent_ip = $7, spent_agent = $8
 WHERE hash = $1 AND spent_at IS NULL AND expires_at > $3 AND EXISTS (
       SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
        WHERE s.id = refresh_tokens.session_id AND s.generation = 0 AND s.revoked_at IS NULL
          AND s.expires_at > $3 AND u.disabled_at IS NULL
          AND ($5 IS NULL OR s.client_id = $5)
          AND (s.dpop_jkt IS NULL OR s.dpop_jkt = $9)
          AND NOT EXISTS (SELECT 1 FROM clients c WHERE c.id = s.client_id
                AND ((c.secret_hash IS NOT NULL AND NOT $6) OR (c.require_dpop AND $9 IS NULL))))
RETURNING session_id";

    /// The legacy token's session, moved to generation 1 with the successor `$3`.
    pub const UPGRADE_SESSION: &str = "
UPDATE sessions
   SET generation = 1, token_hash = $3,
       token_issued_at = max($2, CAST(strftime('%s', 'now') AS INTEGER)),
       token_expires_at = min($2 + $4, expires_at),
       last_used_at = max($2, CAST(strftime('%s', 'now') AS INTEGER))
 WHERE id = $1 AND generation = 0 AND revoked_at IS NULL
RETURNING id AS session_id, user_id, client_id, scope, token_expires_at AS expires_at,
          (SELECT roles FROM users WHERE id = sessions.user_id) AS roles";

    /// Remembers a rotation's DPoP proof if the session (`$3`) exists.
    pub const CLAIM_PROOF_OF_SESSION: &str = "
INSERT INTO dpop_proofs (key, expires_at) SELECT $1, $2
 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $3) ON CONFLICT DO NOTHING";

    /// Remembers a rotation's DPoP proof if the legacy token (`$3`) exists.
    pub const CLAIM_PROOF_OF_LEGACY: &str = "
INSERT INTO dpop_proofs (key, expires_at) SELECT $1, $2
 WHERE EXISTS (SELECT 1 FROM refresh_tokens WHERE hash = $3) ON CONFLICT DO NOTHING";
}

/// Whether a session with this id exists (SQLite's second read after a refused proof).
pub(crate) const SESSION_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)";
/// Whether a legacy token with this hash exists.
pub(crate) const LEGACY_TOKEN_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE hash = $1)";

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row() -> SessionTokens {
        SessionTokens {
            session: Session {
                id: Uuid::nil(),
                user_id: Uuid::nil(),
                client_id: "app".into(),
                scope: String::new(),
                created_at: 1000,
                last_used_at: 1100,
                expires_at: 100_000,
                revoked_at: None,
                user_agent: None,
                ip: None,
                dpop_jkt: None,
            },
            roles: vec![],
            user_disabled: false,
            generation: 5,
            token_hash: Some(vec![5; 32]),
            token_issued_at: Some(1100),
            token_expires_at: Some(2000),
            prev_hash: Some(vec![4; 32]),
            prev_sealed: Some(vec![1, 2, 3]),
            prev_replays: 2,
            prev_ip: Some("192.0.2.1".into()),
            prev_agent: Some(7),
        }
    }

    #[test]
    fn the_current_generation_is_unspent() {
        let s = state_of(row(), 5, TokenHash([5; 32])).expect("known");
        assert_eq!((s.spent_at, s.generations_behind), (None, 0));
        assert_eq!((s.issued_at, s.expires_at), (1100, 2000));
    }

    #[test]
    fn the_previous_generation_was_spent_when_the_current_one_was_issued() {
        let s = state_of(row(), 4, TokenHash([4; 32])).expect("known");
        assert_eq!(s.spent_at, Some(1100));
        assert_eq!(s.sealed_successor.as_deref(), Some(&[1, 2, 3][..]));
        assert!(!s.successor_spent);
        assert_eq!((s.successor_expires_at, s.replays), (Some(2000), 2));
        assert_eq!(s.spent_ip.as_deref(), Some("192.0.2.1"));
    }

    #[test]
    fn an_older_generation_is_spent_with_its_successor() {
        for generation in [1, 3] {
            let s = state_of(row(), generation, TokenHash([9; 32])).expect("known");
            assert!(s.successor_spent, "{generation}");
            assert_eq!(s.generations_behind, 5 - generation);
            assert!(s.sealed_successor.is_none());
        }
    }

    #[test]
    fn tokens_never_handed_out_are_unknown() {
        // A newer generation, a current or previous one with another hash, generation 0.
        assert!(state_of(row(), 6, TokenHash([5; 32])).is_none());
        assert!(state_of(row(), 5, TokenHash([4; 32])).is_none());
        assert!(state_of(row(), 4, TokenHash([5; 32])).is_none());
        assert!(state_of(row(), 0, TokenHash([0; 32])).is_none());
        assert!(state_of(row(), i64::MIN, TokenHash([0; 32])).is_none());
    }
}
