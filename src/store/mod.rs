//! Persistence: one [`Store`] trait, two implementations (PostgreSQL for production
//! and scale-out, SQLite for zero setup). Queries that read the same on both live once,
//! in [`shared`]; only what must differ (rotation, connection, migrations) is written
//! per backend.

mod batch;
mod clients;
mod lifecycle;
mod pg_tls;
mod postgres;
mod session_limits;
mod sessions;
mod shared;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use crate::tokens::keys::StoredKey;
use crate::tokens::refresh::{Presented, TokenHash};

pub use postgres::PgStore;
pub use session_limits::{REVOKE_BATCH, SessionCap, SessionCursor};
pub use sqlite::{SqliteStore, create_data_dir, sqlite_path};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (e.g. the email is taken).
    #[error("conflict")]
    Conflict,
    /// The database cannot be reached or the pool is exhausted: worth a retry later.
    #[error("store unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("store error: {0}")]
    Other(sqlx::Error),
    /// The database refused a value (e.g. text with a NUL byte).
    #[error("the database refused a value")]
    InvalidInput,
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database could not be reached at start-up, or its URL is wrong: the message
    /// says where, how (TLS settings) and why, never with the password.
    #[error("{0}")]
    Connect(String),
}

impl StoreError {
    /// The same error for another waiter on one failed statement (a batch's rotations;
    /// `sqlx::Error` is not `Clone`): the same meaning, the cause as text.
    pub(crate) fn duplicate(&self) -> StoreError {
        let text = |e: &dyn std::fmt::Display| sqlx::Error::Protocol(e.to_string());
        match self {
            StoreError::Conflict => StoreError::Conflict,
            StoreError::InvalidInput => StoreError::InvalidInput,
            StoreError::Unavailable(e) => StoreError::Unavailable(text(e)),
            StoreError::Other(e) => StoreError::Other(text(e)),
            StoreError::Migrate(e) => StoreError::Other(text(e)),
            StoreError::Connect(s) => StoreError::Connect(s.clone()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    /// The one place database errors get their meaning.
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            sqlx::Error::Database(db) => match db.code().as_deref().map(classify) {
                Some(Class::Transient) => StoreError::Unavailable(e),
                Some(Class::BadInput) => StoreError::InvalidInput,
                _ => StoreError::Other(e),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            _ => StoreError::Other(e),
        }
    }
}

enum Class {
    Transient,
    BadInput,
    Other,
}

/// PostgreSQL SQLSTATEs are five characters; SQLite's extended result codes are numbers
/// below 10000.
fn classify(code: &str) -> Class {
    if code.len() == 5 {
        match code {
            // Serialization failure, deadlock; a read-only transaction (a failover left
            // us on a standby); lock not available; a statement cancelled by
            // statement_timeout; the server shutting down.
            "40001" | "40P01" | "25006" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => {
                Class::Transient
            }
            // Connection exceptions; insufficient resources (disk full, out of memory,
            // too many connections).
            _ if code.starts_with("08") || code.starts_with("53") => Class::Transient,
            // Data exceptions: a value the database refuses, e.g. a NUL byte in text.
            _ if code.starts_with("22") => Class::BadInput,
            _ => Class::Other,
        }
    } else {
        match code.parse::<i32>().map(|c| c & 0xff) {
            // SQLITE_BUSY, SQLITE_LOCKED (after the busy timeout), SQLITE_READONLY,
            // SQLITE_IOERR, SQLITE_FULL (a full disk)
            Ok(5 | 6 | 8 | 10 | 13) => Class::Transient,
            _ => Class::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// `None`: a public client.
    pub secret_hash: Option<String>,
    /// The scopes the client may be granted, space-separated (ignored for the default
    /// client, whose list comes from config).
    pub scopes: String,
    /// Whether token requests must carry a DPoP proof (RFC 9449).
    pub require_dpop: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
    pub scope: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The thumbprint of the DPoP key the session's refresh tokens are bound to.
    pub dpop_jkt: Option<String>,
}

/// A security event, written in the same transaction as the change it records.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub at: i64,
    pub action: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub ip: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub event: AuditEvent,
}

/// The spend-and-issue step of a refresh, done as one statement: the session row moves
/// from the parent's generation to the successor's (a legacy parent is spent in the old
/// table and its session moves to generation 1).
#[derive(Debug)]
pub struct Rotation {
    pub parent: Presented,
    pub successor: TokenHash,
    pub sealed_successor: Vec<u8>,
    pub now: i64,
    pub ttl_secs: i64,
    /// The client asking (the default one when the request named none): the token must
    /// have been issued to it. `None` matches no session-row token.
    pub client_id: Option<String>,
    /// Whether the caller authenticated as `client_id`: a confidential client's token
    /// is spent only then.
    pub authenticated: bool,
    /// A narrower scope asked for: the token is spent only if the session's scope
    /// holds every one of these.
    pub scope: Option<Vec<String>>,
    /// Who rotated: kept on the parent, so a grace replay from elsewhere is told apart.
    pub caller_ip: Option<String>,
    pub caller_agent: Option<i64>,
    /// The thumbprint of the key of the request's DPoP proof, if it had one: a session
    /// bound to a key rotates only with it, and a client that requires DPoP only with
    /// some proof.
    pub dpop_jkt: Option<String>,
    /// The proof to remember against replay, claimed by the same statement: nothing
    /// is spent when it was seen before.
    pub proof: Option<ProofClaim>,
}

/// Remembers a DPoP proof: one row, or none if it was seen before (both stores).
pub(crate) const CLAIM_PROOF: &str =
    "INSERT INTO dpop_proofs (key, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// A DPoP proof to remember against replay until `expires_at`.
#[derive(Debug, Clone, Copy)]
pub struct ProofClaim {
    pub key: [u8; 32],
    pub expires_at: i64,
}

/// What the rotation statement did.
#[derive(Debug, Clone)]
pub enum Rotate {
    Rotated(Rotated),
    /// Nothing spent; the rules must judge why.
    Refused,
    /// The request's DPoP proof was seen before: nothing spent.
    ProofReplayed,
}

/// What a successful rotation returns: enough to mint the access token.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
    pub scope: String,
    pub roles: Vec<String>,
    pub expires_at: i64,
}

/// Everything the rules need to judge a refresh token that could not be rotated.
#[derive(Debug, Clone)]
pub struct TokenState {
    pub session: Session,
    pub roles: Vec<String>,
    pub user_disabled: bool,
    pub issued_at: i64,
    pub expires_at: i64,
    pub spent_at: Option<i64>,
    pub sealed_successor: Option<Vec<u8>>,
    pub successor_spent: bool,
    pub successor_expires_at: Option<i64>,
    /// Grace replays the spent token has had.
    pub replays: i64,
    /// The address and user-agent fingerprint of the rotation that spent it.
    pub spent_ip: Option<String>,
    pub spent_agent: Option<i64>,
    /// How many generations the session has moved on since this token: 0 for the
    /// current token, 1 for the previous one (the grace window's), more for a token
    /// whose successor was spent too (reuse, however long ago).
    pub generations_behind: i64,
}

/// A key rotation, applied atomically: add `key` (unless a key created at or after
/// `unless_created_since` exists), retire every other unretired key at `retire_old_at`,
/// and forget keys retired before `prune_retired_before`.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub key: StoredKey,
    pub retire_old_at: i64,
    pub unless_created_since: Option<i64>,
    pub prune_retired_before: i64,
}

/// An ended session in the revocation feed: its access tokens may be valid until
/// `expires_at` (Unix seconds, like a JWT's `exp`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Revocation {
    pub seq: i64,
    pub session_id: Uuid,
    pub revoked_at: i64,
    pub expires_at: i64,
}

/// Rows the janitor deletes once they can no longer matter (see `auth::janitor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prunable {
    /// Every legacy refresh token (issued before sessions were one row) of a session
    /// that ended (revoked or expired) before the cutoff, in batches, before the
    /// session itself.
    EndedSessionTokens,
    /// Sessions that ended before the cutoff and have no token left.
    Sessions,
    /// Unspent legacy refresh tokens that expired before the cutoff: nobody rotated
    /// them, so no copy of them can signal theft.
    ExpiredTokens,
    /// Revocation-feed rows whose access tokens expired before the cutoff.
    Revocations,
    /// Audit events older than the cutoff.
    AuditEvents,
    /// DPoP proofs remembered against replay whose `iat` is now too old anyway.
    DpopProofs,
}

impl Prunable {
    /// In this order: a session's tokens go before the session, so no delete cascades
    /// over more than a batch.
    pub const ALL: [Prunable; 6] = [
        Prunable::EndedSessionTokens,
        Prunable::Sessions,
        Prunable::ExpiredTokens,
        Prunable::Revocations,
        Prunable::AuditEvents,
        Prunable::DpopProofs,
    ];

    pub fn table(self) -> &'static str {
        match self {
            Prunable::EndedSessionTokens | Prunable::ExpiredTokens => "refresh_tokens",
            Prunable::Sessions => "sessions",
            Prunable::Revocations => "revocations",
            Prunable::AuditEvents => "audit_events",
            Prunable::DpopProofs => "dpop_proofs",
        }
    }

    /// One batch: at most `$2` rows older than `$1`, oldest first where it matters.
    /// The same SQL on both stores.
    pub(crate) fn delete_batch_sql(self) -> &'static str {
        match self {
            Prunable::EndedSessionTokens => {
                "DELETE FROM refresh_tokens WHERE hash IN \
                 (SELECT t.hash FROM sessions AS s JOIN refresh_tokens AS t ON t.session_id = s.id \
                   WHERE s.expires_at < $1 OR s.revoked_at < $1 LIMIT $2)"
            }
            Prunable::Sessions => {
                "DELETE FROM sessions WHERE id IN \
                 (SELECT s.id FROM sessions AS s WHERE (s.expires_at < $1 OR s.revoked_at < $1) \
                   AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS t WHERE t.session_id = s.id) \
                   LIMIT $2)"
            }
            Prunable::ExpiredTokens => {
                "DELETE FROM refresh_tokens WHERE hash IN \
                 (SELECT hash FROM refresh_tokens WHERE spent_at IS NULL AND expires_at < $1 \
                   ORDER BY expires_at LIMIT $2)"
            }
            Prunable::Revocations => {
                "DELETE FROM revocations WHERE seq IN \
                 (SELECT seq FROM revocations WHERE expires_at < $1 ORDER BY seq LIMIT $2)"
            }
            Prunable::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN \
                 (SELECT id FROM audit_events WHERE at < $1 ORDER BY at LIMIT $2)"
            }
            Prunable::DpopProofs => {
                "DELETE FROM dpop_proofs WHERE key IN \
                 (SELECT key FROM dpop_proofs WHERE expires_at < $1 ORDER BY expires_at LIMIT $2)"
            }
        }
    }
}

/// Which sessions a revocation ends.
#[derive(Debug, Clone, Copy)]
pub enum Revoke {
    Session(Uuid),
    /// Every live session of the user.
    User(Uuid),
    /// Every live session of the user but the one given.
    UserExcept(Uuid, Uuid),
}

pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> &'static str;
    fn migrate(&self) -> StoreFuture<'_, ()>;
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Readiness: a write that commits (read-only or full databases fail it), over a
    /// connection of its own on PostgreSQL so a busy pool does not make it wait.
    fn ready(&self, now: i64) -> StoreFuture<'_, ()>;

    fn create_user<'a>(
        &'a self,
        user: &'a User,
        password_hash: &'a str,
        event: &'a AuditEvent,
    ) -> StoreFuture<'a, ()>;
    /// The user and password hash for an email.
    fn user_credentials<'a>(&'a self, email: &'a str) -> StoreFuture<'a, Option<(User, String)>>;
    fn user(&self, id: Uuid) -> StoreFuture<'_, Option<User>>;
    fn list_users<'a>(
        &'a self,
        email_contains: Option<&'a str>,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreFuture<'a, Vec<User>>;
    /// Disables (`Some(now)`) or re-enables (`None`) a user; disabling ends every session.
    fn set_user_disabled<'a>(
        &'a self,
        id: Uuid,
        disabled_at: Option<i64>,
        event: &'a AuditEvent,
        token_tail_secs: i64,
    ) -> StoreFuture<'a, bool>;

    fn client<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Client>>;
    fn create_client<'a>(&'a self, client: &'a Client) -> StoreFuture<'a, ()>;
    fn clients(&self) -> StoreFuture<'_, Vec<Client>>;

    fn signing_keys(&self) -> StoreFuture<'_, Vec<StoredKey>>;
    /// Stores the first signing key, unless another instance got there first
    /// (`false`): instances that start together agree on one key.
    fn insert_first_signing_key<'a>(&'a self, key: &'a StoredKey) -> StoreFuture<'a, bool>;

    /// Applies a rotation; `false` when another instance rotated first.
    fn rotate_signing_keys<'a>(&'a self, rotation: &'a KeyRotation) -> StoreFuture<'a, bool>;

    /// A new session with its first refresh token (generation 1, kept in the session
    /// row) and its audit event, written only if
    /// the user is (still) enabled, in the same statement or transaction: `false`, and
    /// nothing written, when the user was disabled or deleted meanwhile.
    fn create_session<'a>(
        &'a self,
        session: &'a Session,
        first_token: TokenHash,
        token_expires_at: i64,
        event: &'a AuditEvent,
    ) -> StoreFuture<'a, bool>;
    /// A login's session, as `create_session`, and in the same transaction the end of
    /// the user's oldest live sessions beyond `cap.max_live` (the new one stays),
    /// through the feed, with a `session_revoked` event (reason `session_limit`). Logins
    /// of one user are serialized (the user's row lock; SQLite's one writer), so
    /// parallel logins never leave more than the cap. `None`, and nothing written, when
    /// the user was disabled or deleted meanwhile; else the sessions the cap ended.
    fn create_capped_session<'a>(
        &'a self,
        session: &'a Session,
        first_token: TokenHash,
        token_expires_at: i64,
        event: &'a AuditEvent,
        cap: SessionCap,
    ) -> StoreFuture<'a, Option<Vec<Session>>>;
    /// Spends `parent` and issues the successor in one statement: `Refused` when the
    /// parent is not spendable (unknown, spent, expired, revoked session, disabled user,
    /// another client's, a confidential client's without its authentication, a scope
    /// outside the session's, a session bound to another DPoP key, a client requiring
    /// DPoP and no proof); `ProofReplayed` when the request's proof was seen before.
    fn rotate<'a>(&'a self, rotation: &'a Rotation) -> StoreFuture<'a, Rotate>;
    /// Remembers a DPoP proof until `claim.expires_at`: `false` if it was seen before
    /// (of concurrent claims of one proof, exactly one wins).
    fn claim_proof(&self, claim: ProofClaim) -> StoreFuture<'_, bool>;
    /// What the rules need to judge `token`: `None` for a token the store never held
    /// (or whose session is gone).
    fn token_state(&self, token: Presented) -> StoreFuture<'_, Option<TokenState>>;
    /// Counts one grace replay of the spent token and records `event` (if given), both
    /// only if it has had fewer than `max_replays` and its successor is still unspent:
    /// of concurrent replays at the cap, exactly the allowed number win.
    fn claim_replay<'a>(
        &'a self,
        token: Presented,
        max_replays: i64,
        event: Option<&'a AuditEvent>,
    ) -> StoreFuture<'a, bool>;
    fn session(&self, id: Uuid) -> StoreFuture<'_, Option<Session>>;
    fn live_sessions(&self, user_id: Uuid, now: i64) -> StoreFuture<'_, Vec<Session>>;
    /// At most `limit` live sessions of the user, newest first, after `after`.
    fn live_sessions_page(
        &self,
        user_id: Uuid,
        now: i64,
        after: Option<SessionCursor>,
        limit: i64,
    ) -> StoreFuture<'_, Vec<Session>>;
    /// The session's user if the session is live and the user enabled: the live check
    /// behind account and admin routes.
    fn live_user(&self, session_id: Uuid, now: i64) -> StoreFuture<'_, Option<User>>;
    /// Ends the selected live sessions and adds them to the revocation feed, their
    /// access tokens valid until `last_used_at + token_tail_secs`; returns them. A
    /// user's sessions end in batches of [`REVOKE_BATCH`], one transaction (and one
    /// audit event, naming its sessions) each.
    fn revoke<'a>(
        &'a self,
        target: Revoke,
        reason: &'a str,
        event: &'a AuditEvent,
        token_tail_secs: i64,
    ) -> StoreFuture<'a, Vec<Session>>;
    /// Feed entries after `after` whose tokens may still be unexpired at `now`.
    fn revocations_after(
        &self,
        after: i64,
        now: i64,
        limit: i64,
    ) -> StoreFuture<'_, Vec<Revocation>>;
    /// The highest feed `seq` so far (0 when empty).
    fn revocations_max_seq(&self) -> StoreFuture<'_, i64>;
    /// Revocations as they are committed, on this instance or (PostgreSQL) any other.
    fn subscribe_revocations(&self) -> tokio::sync::broadcast::Receiver<Revocation>;

    /// Counts one hit on `key` in a fixed window of `window_secs`; returns the window's
    /// start and its hits so far.
    fn throttle_hit<'a>(
        &'a self,
        key: &'a str,
        now: i64,
        window_secs: i64,
    ) -> StoreFuture<'a, (i64, i64)>;
    /// Until when `key` is blocked (0: not blocked).
    fn throttle_blocked_until<'a>(&'a self, key: &'a str) -> StoreFuture<'a, i64>;
    /// Blocks `key` until `until` if it is not blocked at `now`; `false` if it was (so
    /// of concurrent attempts past the limit, exactly one goes ahead).
    fn throttle_claim<'a>(&'a self, key: &'a str, until: i64, now: i64) -> StoreFuture<'a, bool>;
    /// Forgets throttle rows with nothing left to say at `now`.
    fn throttle_prune(&self, now: i64, memory_secs: i64) -> StoreFuture<'_, ()>;
    fn throttle_clear<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
    /// Deletes one batch of `what` older than `before` in a short transaction of its
    /// own; `None` when another instance is pruning right now (PostgreSQL).
    fn prune_batch(&self, what: Prunable, before: i64, batch: i64) -> StoreFuture<'_, Option<u64>>;
    /// Pool connections in use and idle.
    fn pool_stats(&self) -> (u32, u32);

    fn record<'a>(&'a self, event: &'a AuditEvent) -> StoreFuture<'a, ()>;
    fn audit_events<'a>(
        &'a self,
        user_id: Option<Uuid>,
        action: Option<&'a str>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreFuture<'a, Vec<AuditRecord>>;
}

/// Which backend a database URL names: `"postgres"`, `"sqlite"`, or none we support.
pub fn backend_of(url: &str) -> Option<&'static str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some("postgres")
    } else if url.starts_with("sqlite:") {
        Some("sqlite")
    } else {
        None
    }
}

/// How the store's connection pool behaves.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a request may wait for a connection.
    pub acquire_timeout: std::time::Duration,
    /// The longest one statement may run or wait for a lock (PostgreSQL
    /// `statement_timeout`, SQLite's busy timeout). Below the request timeout, so a
    /// request that gives up has had its statement cancelled by the database, never left
    /// queued to commit after the client was told it failed.
    pub statement_timeout: std::time::Duration,
    /// PostgreSQL: at most this many plain refreshes share one statement (0: each its
    /// own). See `store::batch`.
    pub rotation_batch: usize,
}

impl PoolSettings {
    /// Defaults for tools and benchmarks.
    pub fn new(max_connections: u32) -> Self {
        Self {
            max_connections,
            acquire_timeout: std::time::Duration::from_secs(5),
            statement_timeout: std::time::Duration::from_secs(5),
            rotation_batch: 0,
        }
    }
}

/// Opens the store named by a database URL.
pub async fn connect(url: &str, pool: PoolSettings) -> Result<Arc<dyn Store>, StoreError> {
    match backend_of(url) {
        Some("postgres") => Ok(Arc::new(PgStore::connect(url, pool).await?)),
        _ => Ok(Arc::new(SqliteStore::connect(url, pool).await?)),
    }
}

/// Every migration, embedded; each backend has its own folder with the same files.
macro_rules! migrations {
    ($backend:literal) => {
        [
            (
                1,
                "init",
                include_str!(concat!("../../migrations/", $backend, "/0001_init.sql")),
            ),
            (
                2,
                "revocations",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0002_revocations.sql"
                )),
            ),
            (
                3,
                "login_throttle",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0003_login_throttle.sql"
                )),
            ),
            (
                4,
                "client_policy",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0004_client_policy.sql"
                )),
            ),
            (
                5,
                "grace_replays",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0005_grace_replays.sql"
                )),
            ),
            (
                7,
                "lifecycle",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0007_lifecycle.sql"
                )),
            ),
            (
                10,
                "unspent_tokens_expiry_idx",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0010_unspent_tokens_expiry_idx.sql"
                )),
            ),
            (
                11,
                "sessions_expiry_idx",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0011_sessions_expiry_idx.sql"
                )),
            ),
            (
                12,
                "audit_events_at_idx",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0012_audit_events_at_idx.sql"
                )),
            ),
            (
                13,
                "dpop",
                include_str!(concat!("../../migrations/", $backend, "/0013_dpop.sql")),
            ),
            (
                16,
                "locks",
                include_str!(concat!("../../migrations/", $backend, "/0016_locks.sql")),
            ),
            (
                17,
                "session_tokens",
                include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0017_session_tokens.sql"
                )),
            ),
        ]
    };
}
pub(crate) use migrations;

/// The embedded migrations of one backend.
fn migrator(files: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType};
    let migrations = files
        .iter()
        .map(|(version, name, sql)| {
            // A migration that must run outside a transaction (e.g. CREATE INDEX
            // CONCURRENTLY, which lets writes go on while it builds) says so first.
            let no_tx = sql.starts_with("-- no-transaction");
            Migration::new(
                *version,
                (*name).into(),
                MigrationType::Simple,
                (*sql).into_sql_str(),
                no_tx,
            )
        })
        .collect();
    sqlx::migrate::Migrator::with_migrations(migrations)
}

/// Whether every scope asked for (none asked: yes) is in the space-separated `granted`:
/// SQLite's half of the rotation's scope check (PostgreSQL's is `<@` in the statement).
fn scope_within(asked: Option<&[String]>, granted: &str) -> bool {
    asked.is_none_or(|asked| {
        asked
            .iter()
            .all(|a| granted.split(' ').any(|g| !g.is_empty() && g == a))
    })
}

fn roles_from(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn roles_to(roles: &[String]) -> String {
    roles.join(" ")
}

#[cfg(test)]
mod tests {
    use super::scope_within;

    #[test]
    fn a_scope_asked_for_must_lie_within_the_grant() {
        let asked = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(scope_within(None, ""));
        assert!(scope_within(Some(&asked(&["read"])), "read write"));
        assert!(scope_within(Some(&asked(&["write", "read"])), "read write"));
        assert!(!scope_within(
            Some(&asked(&["read", "admin"])),
            "read write"
        ));
        assert!(!scope_within(Some(&asked(&["read"])), ""));
        assert!(!scope_within(Some(&asked(&["rea"])), "read"));
    }
}
