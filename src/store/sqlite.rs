//! SQLite: the zero-setup store, one file, one instance. WAL mode; writers queue on
//! SQLite's write lock (busy timeout) so concurrent rotations still have one winner.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{KeyRotation, Revocation, Rotated, Rotation, StoreError, StoreFuture};
use crate::tokens::keys::StoredKey;
use tokio::sync::broadcast;

type Db = sqlx::Sqlite;
type Row = SqliteRow;

super::shared::rows!();

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    feed: broadcast::Sender<Revocation>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its folder.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        if let Some(path) = sqlite_path(url) {
            create_private_file(&path).map_err(|e| StoreError::Other(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        let (feed, _) = broadcast::channel(1024);
        Ok(Self { pool, feed })
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

    fn announced(&self, revocations: Vec<Revocation>) {
        for r in revocations {
            let _ = self.feed.send(r);
        }
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

    /// SQLite has no data-modifying CTEs; the same rules run as one write transaction
    /// that begins with the conditional spend, so the write lock picks the winner.
    fn rotate<'a>(&'a self, r: &'a Rotation) -> StoreFuture<'a, Option<Rotated>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let spent = sqlx::query(
                "UPDATE refresh_tokens SET spent_at = $3, successor_hash = $2, sealed_successor = $4 \
                 WHERE hash = $1 AND spent_at IS NULL AND expires_at > $3 AND EXISTS ( \
                   SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id \
                    WHERE s.id = refresh_tokens.session_id AND s.revoked_at IS NULL \
                      AND s.expires_at > $3 AND u.disabled_at IS NULL \
                      AND ($5 IS NULL OR s.client_id = $5)) \
                 RETURNING session_id",
            )
            .bind(&r.parent.0[..])
            .bind(&r.successor.0[..])
            .bind(r.now)
            .bind(&r.sealed_successor)
            .bind(&r.client_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(spent) = spent else { return Ok(None) };
            let session_id: uuid::Uuid = spent.try_get("session_id")?;
            let session = sqlx::query(
                "UPDATE sessions SET last_used_at = $2 WHERE id = $1 RETURNING user_id, client_id, \
                 scope, expires_at, (SELECT roles FROM users WHERE id = sessions.user_id) AS roles",
            )
            .bind(session_id)
            .bind(r.now)
            .fetch_one(&mut *tx)
            .await?;
            let session_expires_at: i64 = session.try_get("expires_at")?;
            let expires_at = (r.now + r.ttl_secs).min(session_expires_at);
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&r.successor.0[..])
            .bind(session_id)
            .bind(r.now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(Rotated {
                session_id,
                user_id: session.try_get("user_id")?,
                client_id: session.try_get("client_id")?,
                scope: session.try_get("scope")?,
                roles: super::roles_from(session.try_get("roles")?),
                expires_at,
            }))
        })
    }

    super::shared::queries!();
    super::shared::create_session_in_transaction!();
}
