//! SQLite: the zero-setup store, one file, one instance. WAL mode; writers queue on
//! SQLite's write lock (busy timeout) so concurrent rotations still have one winner.

use std::path::Path;
use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{KeyRotation, Revocation, Rotate, Rotated, Rotation, StoreError, StoreFuture};
use crate::tokens::keys::StoredKey;
use tokio::sync::broadcast;

type Db = sqlx::Sqlite;
type Row = SqliteRow;

super::shared::rows!();

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for readiness checks, apart from the request pool.
    probe: SqlitePool,
    feed: broadcast::Sender<Revocation>,
    /// Turns at the write lock for refreshes and revocation batches. SQLite's busy
    /// handler retries on a growing sleep (up to 100 ms), so a writer that starts its
    /// next batch at once would win against every sleeping refresh; queued here, in
    /// order, a refresh waits for one batch at most.
    writers: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A readiness write waits at most this long for SQLite's write lock.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl SqliteStore {
    /// Opens (creating if needed) the database file and its folder.
    pub async fn connect(url: &str, settings: super::PoolSettings) -> Result<Self, StoreError> {
        if let Some(path) = sqlite_path(url) {
            create_private_file(&path).map_err(|e| StoreError::Other(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(settings.statement_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let probe = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.busy_timeout(PROBE_WAIT));
        let (feed, _) = broadcast::channel(1024);
        Ok(Self {
            pool,
            probe,
            feed,
            writers: Default::default(),
        })
    }

    /// One instance per file: announcements go out in-process, after commit.
    async fn announce(
        &self,
        _: &mut sqlx::SqliteConnection,
        _: &[Revocation],
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// SQLite has one writer: commit order is already the feed's order.
    async fn lock_feed(&self, _: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// A turn at the write lock, in order with refreshes (see `writers`).
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writers.lock().await)
    }

    fn announced(&self, revocations: Vec<Revocation>) {
        for r in revocations {
            let _ = self.feed.send(r);
        }
    }

    /// A login's session, first token and audit event, and with a cap the end of the
    /// user's oldest sessions beyond it: `None` when the user is disabled or gone.
    async fn open_session(
        &self,
        s: &super::Session,
        first_token: crate::tokens::refresh::TokenHash,
        token_expires_at: i64,
        event: &super::AuditEvent,
        cap: Option<super::SessionCap>,
    ) -> Result<Option<Vec<super::Session>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let created = super::shared::bind_session!(
            sqlx::query(concat!(
                "INSERT INTO sessions (",
                super::shared::session_cols!(),
                ", generation, token_hash, token_issued_at, token_expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $5, $13 WHERE EXISTS \
                 (SELECT 1 FROM users WHERE id = $2 AND disabled_at IS NULL)"
            )),
            s
        )
        .bind(&first_token.0[..])
        .bind(token_expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !created {
            return Ok(None);
        }
        insert_audit(&mut *tx, event).await?;
        let Some(cap) = cap else {
            tx.commit().await?;
            return Ok(Some(Vec::new()));
        };
        let ended = sqlx::query(super::session_limits::REVOKE_BEYOND_CAP)
            .bind(s.created_at)
            .bind(s.user_id)
            .bind(cap.max_live.max(1))
            .bind(s.id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(session_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut revocations = Vec::new();
        if !ended.is_empty() {
            insert_audit(&mut *tx, &super::session_limits::cap_event(event, &ended)).await?;
            self.lock_feed(&mut tx).await?;
            revocations =
                record_revocations(&mut tx, &ended, s.created_at, cap.token_tail_secs).await?;
            self.announce(&mut tx, &revocations).await?;
        }
        tx.commit().await?;
        self.announced(revocations);
        Ok(Some(ended))
    }
}

/// Creates the data folder, readable by this user alone (0700), if it is missing. A
/// folder that exists is the operator's (it may be /tmp or shared on purpose): left as is.
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The database holds password hashes and sessions: a new one is created 0600 before
/// SQLite opens it (SQLite gives its -wal and -shm files the database file's mode). An
/// existing database keeps its mode, with a warning if others can read it: the
/// operator may share it on purpose, and we do not change what we did not create.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        create_data_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        if let Ok(meta) = std::fs::metadata(file)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %file.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the database is readable by other users; chmod 600 it unless that is meant"
            );
        }
    }
}

/// The file behind a `sqlite:` URL, if it names one.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

fn migrator() -> Migrator {
    super::migrator(&super::migrations!("sqlite"))
}

impl super::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// A write that commits; a write lock held by busy writers (SQLITE_BUSY, LOCKED)
    /// means the database is alive and writable, so it counts as ready: under load the
    /// one instance must not be taken out of service. A read-only or full database, or
    /// an I/O error, does not.
    fn ready(&self, now: i64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            match super::lifecycle::readiness_write(&self.probe, now).await {
                Err(sqlx::Error::Database(e))
                    if e.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6)) =>
                {
                    Ok(())
                }
                other => Ok(other?),
            }
        })
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            migrator().run(&self.pool).await?;
            Ok(())
        })
    }

    /// One statement: SQLite's write lock serialises it against any other writer.
    fn insert_first_signing_key<'a>(&'a self, key: &'a StoredKey) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(insert_key_if_none(&self.pool, key).await?) })
    }

    fn rotate_signing_keys<'a>(&'a self, rotation: &'a KeyRotation) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let added = rotate_keys_in(&mut tx, rotation).await?;
            tx.commit().await?;
            Ok(added)
        })
    }

    /// The rules of PostgreSQL's statement, as one write transaction that begins with
    /// the conditional update, so the write lock picks the winner; the scope check
    /// (SQLite has no arrays) runs before commit. The DPoP proof is remembered first, in
    /// a statement of its own and only if the session (the legacy token) exists; it
    /// stays remembered whatever the rotation then does, as on PostgreSQL.
    fn rotate<'a>(&'a self, r: &'a Rotation) -> StoreFuture<'a, Rotate> {
        Box::pin(async move {
            use crate::tokens::refresh::Presented;
            let _turn = self.write_turn().await;
            if let Some(claim) = r.proof
                && !claim_proof_of_token(&self.pool, claim, r.parent).await?
            {
                return Ok(Rotate::ProofReplayed);
            }
            let mut tx = self.pool.begin().await?;
            let rotated = match r.parent {
                Presented::Session {
                    session_id,
                    generation,
                    hash,
                } => {
                    sqlx::query(super::sessions::sqlite::ROTATE)
                        .bind(session_id)
                        .bind(generation)
                        .bind(&hash.0[..])
                        .bind(&r.successor.0[..])
                        .bind(&r.sealed_successor)
                        .bind(r.now)
                        .bind(r.ttl_secs)
                        .bind(&r.client_id)
                        .bind(&r.caller_ip)
                        .bind(r.caller_agent)
                        .bind(&r.dpop_jkt)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                Presented::Legacy(hash) => {
                    let spent = sqlx::query(super::sessions::sqlite::SPEND_LEGACY)
                        .bind(&hash.0[..])
                        .bind(&r.successor.0[..])
                        .bind(r.now)
                        .bind(&r.sealed_successor)
                        .bind(&r.client_id)
                        .bind(r.authenticated)
                        .bind(&r.caller_ip)
                        .bind(r.caller_agent)
                        .bind(&r.dpop_jkt)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match spent {
                        Some(spent) => {
                            let session_id: uuid::Uuid = spent.try_get("session_id")?;
                            sqlx::query(super::sessions::sqlite::UPGRADE_SESSION)
                                .bind(session_id)
                                .bind(r.now)
                                .bind(&r.successor.0[..])
                                .bind(r.ttl_secs)
                                .fetch_optional(&mut *tx)
                                .await?
                        }
                        None => None,
                    }
                }
            };
            // Dropping the transaction rolls back whatever was done.
            let Some(row) = rotated else {
                return Ok(Rotate::Refused);
            };
            let scope: String = row.try_get("scope")?;
            if !super::scope_within(r.scope.as_deref(), &scope) {
                return Ok(Rotate::Refused);
            }
            tx.commit().await?;
            Ok(Rotate::Rotated(Rotated {
                session_id: row.try_get("session_id")?,
                user_id: row.try_get("user_id")?,
                client_id: row.try_get("client_id")?,
                scope,
                roles: super::roles_from(row.try_get("roles")?),
                expires_at: row.try_get("expires_at")?,
            }))
        })
    }

    fn token_state(
        &self,
        token: crate::tokens::refresh::Presented,
    ) -> StoreFuture<'_, Option<super::TokenState>> {
        Box::pin(async move { Ok(token_state_in(&self.pool, token).await?) })
    }

    fn claim_proof(&self, claim: super::ProofClaim) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let claimed = sqlx::query(super::CLAIM_PROOF)
                .bind(&claim.key[..])
                .bind(claim.expires_at)
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok(claimed == 1)
        })
    }

    /// One write transaction whose first statement inserts the session only if the
    /// user is enabled: SQLite's single writer orders it against a disable.
    fn create_session<'a>(
        &'a self,
        s: &'a super::Session,
        first_token: crate::tokens::refresh::TokenHash,
        token_expires_at: i64,
        event: &'a super::AuditEvent,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let created = self
                .open_session(s, first_token, token_expires_at, event, None)
                .await?;
            Ok(created.is_some())
        })
    }

    /// The same transaction, counting the user's live sessions after the insert: the
    /// write lock taken by the insert orders it against every other login.
    fn create_capped_session<'a>(
        &'a self,
        s: &'a super::Session,
        first_token: crate::tokens::refresh::TokenHash,
        token_expires_at: i64,
        event: &'a super::AuditEvent,
        cap: super::SessionCap,
    ) -> StoreFuture<'a, Option<Vec<super::Session>>> {
        Box::pin(async move {
            Ok(self
                .open_session(s, first_token, token_expires_at, event, Some(cap))
                .await?)
        })
    }

    fn prune_batch(
        &self,
        what: super::Prunable,
        before: i64,
        batch: i64,
    ) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let deleted = sqlx::query(what.delete_batch_sql())
                .bind(before)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok(Some(deleted))
        })
    }

    fn revocations_max_seq(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move { Ok(super::lifecycle::revocations_max_seq(&self.pool).await?) })
    }

    fn claim_replay<'a>(
        &'a self,
        token: crate::tokens::refresh::Presented,
        max_replays: i64,
        event: Option<&'a super::AuditEvent>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(claim_replay_in(&self.pool, token, max_replays, event).await?) })
    }

    fn client<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<super::Client>> {
        Box::pin(async move { Ok(super::clients::find(&self.pool, id).await?) })
    }

    fn create_client<'a>(&'a self, client: &'a super::Client) -> StoreFuture<'a, ()> {
        Box::pin(async move { Ok(super::clients::insert(&self.pool, client).await?) })
    }

    fn clients(&self) -> StoreFuture<'_, Vec<super::Client>> {
        Box::pin(async move { Ok(super::clients::list(&self.pool).await?) })
    }

    super::shared::queries!();
}

/// Remembers a rotation's DPoP proof only if the token it comes with exists (its
/// session, for a token of the session-row shape), so an invented token leaves no row:
/// `false` only when the token exists and the proof was seen before. Only a replay or an
/// unknown token costs the second read.
async fn claim_proof_of_token(
    pool: &sqlx::SqlitePool,
    claim: super::ProofClaim,
    token: crate::tokens::refresh::Presented,
) -> Result<bool, sqlx::Error> {
    use super::sessions;
    use crate::tokens::refresh::Presented;
    let (claim_sql, exists_sql) = match token {
        Presented::Session { .. } => (
            sessions::sqlite::CLAIM_PROOF_OF_SESSION,
            sessions::SESSION_EXISTS,
        ),
        Presented::Legacy(_) => (
            sessions::sqlite::CLAIM_PROOF_OF_LEGACY,
            sessions::LEGACY_TOKEN_EXISTS,
        ),
    };
    let bind =
        |q: sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>| match token {
            Presented::Session { session_id, .. } => q.bind(session_id),
            Presented::Legacy(hash) => q.bind(hash.0.to_vec()),
        };
    let claimed = bind(
        sqlx::query(claim_sql)
            .bind(claim.key.to_vec())
            .bind(claim.expires_at),
    )
    .execute(pool)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(true);
    }
    let known: bool = bind(sqlx::query(exists_sql))
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    Ok(!known)
}
