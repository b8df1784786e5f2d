//! PostgreSQL: the production store. Any number of instances share one database;
//! rotation is a single statement whose row lock picks exactly one winner.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::broadcast;

use super::{KeyRotation, Revocation, Rotate, Rotated, Rotation, StoreError, StoreFuture};
use crate::tokens::keys::StoredKey;

type Db = sqlx::Postgres;
type Row = PgRow;

super::shared::rows!();

/// The channel revocations are announced on, to every instance.
const CHANNEL: &str = "tessera_revocations";
/// NOTIFY payloads must stay under 8000 bytes: ~100 bytes a revocation.
const PER_NOTIFY: usize = 50;

#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// One connection for readiness checks, apart from the request pool.
    probe: PgPool,
    feed: broadcast::Sender<Revocation>,
    /// Where plain refreshes queue to share a statement, if batching is on.
    batcher: Option<std::sync::Arc<super::batch::Batcher>>,
    /// How long a request may wait for a connection (a batch's wait counts).
    acquire_timeout: Duration,
}

/// Batches in flight at once (each on a connection of the pool).
const BATCH_WORKERS: usize = 4;

/// The advisory lock instances take turns on to migrate (closing the connection frees it).
const MIGRATION_LOCK: i64 = 7_365_820;

/// A readiness check gives up after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

type AfterConnect = Box<
    dyn Fn(
            &mut sqlx::PgConnection,
            sqlx::pool::PoolConnectionMetadata,
        ) -> futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>>
        + Send
        + Sync,
>;

/// Sets `statement_timeout` on each new connection with a `SET` (not the `options`
/// startup parameter, which connection poolers such as PgBouncer refuse).
fn statement_timeout(limit: Duration) -> AfterConnect {
    let sql = format!("SET statement_timeout = {}", limit.as_millis());
    Box::new(move |conn, _| {
        let sql = sqlx::AssertSqlSafe(sql.clone());
        Box::pin(async move {
            sqlx::query(sql).execute(conn).await?;
            Ok(())
        })
    })
}

impl PgStore {
    pub async fn connect(url: &str, settings: super::PoolSettings) -> Result<Self, StoreError> {
        let target = super::pg_tls::connect_options(url)?;
        let options: PgConnectOptions = target.options.clone();
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .after_connect(statement_timeout(settings.statement_timeout))
            .connect_with(options.clone())
            .await
            .map_err(|e| super::pg_tls::connect_failed(&target, &e))?;
        let probe = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(PROBE_TIMEOUT)
            .after_connect(statement_timeout(PROBE_TIMEOUT))
            .connect_lazy_with(options);
        let (feed, _) = broadcast::channel(1024);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        tokio::spawn(relay(listener, feed.clone()));
        let batcher = (settings.rotation_batch > 1).then(|| {
            super::batch::Batcher::start(
                pool.clone(),
                BATCH_WORKERS,
                settings.rotation_batch,
                settings.acquire_timeout,
            )
        });
        Ok(Self {
            pool,
            probe,
            feed,
            batcher,
            acquire_timeout: settings.acquire_timeout,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inside the revoking transaction: PostgreSQL delivers the notification to every
    /// listening instance when (and only if) the transaction commits.
    async fn announce(
        &self,
        conn: &mut sqlx::PgConnection,
        revocations: &[Revocation],
    ) -> Result<(), sqlx::Error> {
        for chunk in revocations.chunks(PER_NOTIFY) {
            let payload = serde_json::to_string(chunk).unwrap_or_default();
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// `BIGSERIAL` numbers rows at insert, not at commit; holding this row lock from the
    /// insert to the commit makes the feed's order its commit order, so a reader that
    /// has seen `seq` N has seen every committed row below it.
    async fn lock_feed(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        lock_row(conn, "revocation_feed").await
    }

    /// Row locks queue fairly on PostgreSQL: revocation batches need no turns.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    /// Nothing to do after commit: our own listener hears the notification too.
    fn announced(&self, _: Vec<Revocation>) {}
}

/// Relays notifications to this instance's subscribers. `PgListener` reconnects by
/// itself; notifications sent while it was away are lost here, which is why stream
/// consumers also re-read the feed table (see `http::services`).
async fn relay(mut listener: PgListener, feed: broadcast::Sender<Revocation>) {
    loop {
        match listener.recv().await {
            Ok(notification) => {
                if let Ok(batch) = serde_json::from_str::<Vec<Revocation>>(notification.payload()) {
                    for r in batch {
                        let _ = feed.send(r);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "revocation listener error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// What a rotation statement returned for the session it moved on.
pub(super) fn rotated_row(row: &Row) -> Result<Rotated, sqlx::Error> {
    Ok(Rotated {
        session_id: row.try_get("session_id")?,
        user_id: row.try_get("user_id")?,
        client_id: row.try_get("client_id")?,
        scope: row.try_get("scope")?,
        roles: super::roles_from(row.try_get("roles")?),
        expires_at: row.try_get("expires_at")?,
    })
}

/// Takes the row lock `name` in `locks` until the transaction ends, waiting for it.
/// Row locks, not advisory ones: a role without UPDATE on Tessera's tables cannot take
/// them (advisory keys are shared by every role that can connect).
async fn lock_row(conn: &mut sqlx::PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT name FROM locks WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| sqlx::Error::Protocol(format!("lock row {name:?} is missing")))?;
    Ok(())
}

/// Takes the row lock `name` if it is free: `false` when another transaction holds it.
async fn try_lock_row(conn: &mut sqlx::PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT name FROM locks WHERE name = $1 FOR UPDATE SKIP LOCKED")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Whether every embedded migration is applied, as recorded by sqlx, with the same
/// checksum (reads only: any role with SELECT on `_sqlx_migrations` can tell).
async fn up_to_date(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(false);
    }
    let applied: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?;
    let applied: std::collections::HashMap<i64, Vec<u8>> = applied.into_iter().collect();
    Ok(migrator().iter().all(|m| {
        applied
            .get(&m.version)
            .is_some_and(|c| c[..] == m.checksum[..])
    }))
}

fn migrator() -> Migrator {
    super::migrator(&super::migrations!("postgres"))
}

/// A login's session, its first refresh token (generation 1, in the session row) and
/// the audit event: one statement, so one round trip. Nothing is
/// written unless the user is enabled; `FOR SHARE` makes a disable that is committing
/// now wait for this statement, or this statement see the disable, so a login racing
/// an admin's disable never leaves a session the disable missed.
const CREATE_SESSION: &str = concat!(
    "WITH enabled AS (SELECT id FROM users WHERE id = $2 AND disabled_at IS NULL FOR SHARE), \
     session AS (INSERT INTO sessions (",
    super::shared::session_cols!(),
    ", generation, token_hash, token_issued_at, token_expires_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $5, $13 FROM enabled RETURNING id), \
     audit AS (INSERT INTO audit_events (at, action, user_id, session_id, actor_id, ip, detail) \
               SELECT $14, $15, $16, $17, $18, $19, $20 FROM session) \
     SELECT id FROM session"
);

impl super::Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn ready(&self, now: i64) -> StoreFuture<'_, ()> {
        Box::pin(async move { Ok(super::lifecycle::readiness_write(&self.probe, now).await?) })
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Nothing to do (the usual start-up): no lock, no DDL, so a runtime role
            // without CREATE on the schema starts once the owner has migrated.
            if up_to_date(&self.pool).await? {
                return Ok(());
            }
            // On a connection of its own with no statement timeout: a migration that
            // builds an index on a large table must not be cancelled. The connection is
            // closed afterwards (freeing the lock below), not returned to the pool.
            let mut conn = self.pool.acquire().await?.detach();
            sqlx::query("SET statement_timeout = 0")
                .execute(&mut conn)
                .await?;
            // Instances starting together take turns. Not sqlx's own lock: it waits
            // inside a statement, and `CREATE INDEX CONCURRENTLY` in one instance waits
            // for every statement in flight, so the two would deadlock. A waiting
            // instance here polls between statements instead.
            while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .fetch_one(&mut conn)
                .await?
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut migrator = migrator();
            migrator.set_locking(false);
            // `run_direct`: `run` with a connection trips sqlx's "Acquire is not general
            // enough" inside a boxed future.
            let migrated = migrator.run_direct(None, &mut conn, false).await;
            let _ = sqlx::Connection::close(conn).await;
            migrated?;
            Ok(())
        })
    }

    fn insert_first_signing_key<'a>(&'a self, key: &'a StoredKey) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // READ COMMITTED lets two `INSERT .. WHERE NOT EXISTS` both succeed; the
            // row lock makes instances starting together take turns.
            let mut tx = self.pool.begin().await?;
            lock_row(&mut tx, "signing_keys").await?;
            let inserted = insert_key_if_none(&mut *tx, key).await?;
            tx.commit().await?;
            Ok(inserted)
        })
    }

    fn rotate_signing_keys<'a>(&'a self, rotation: &'a KeyRotation) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            lock_row(&mut tx, "signing_keys").await?;
            let added = rotate_keys_in(&mut tx, rotation).await?;
            tx.commit().await?;
            Ok(added)
        })
    }

    fn rotate<'a>(&'a self, r: &'a Rotation) -> StoreFuture<'a, Rotate> {
        Box::pin(async move {
            use crate::tokens::refresh::Presented;
            let proof_key = r.proof.as_ref().map(|p| p.key.to_vec());
            let proof_expires = r.proof.map(|p| p.expires_at);
            let mut conn = if let (
                Some(batcher),
                Presented::Session {
                    session_id,
                    generation,
                    hash,
                },
                None,
                Some(client_id),
            ) = (&self.batcher, r.parent, &r.scope, &r.client_id)
            {
                let plain = super::batch::Plain {
                    session_id,
                    generation,
                    hash: hash.0.to_vec(),
                    successor: r.successor.0.to_vec(),
                    sealed: r.sealed_successor.clone(),
                    now: r.now,
                    ttl_secs: r.ttl_secs,
                    client_id: client_id.clone(),
                    ip: r.caller_ip.clone(),
                    agent: r.caller_agent,
                    dpop_jkt: r.dpop_jkt.clone(),
                    proof: r.proof,
                    queued: std::time::Instant::now(),
                };
                // A session whose row another transaction holds was skipped by the
                // batch: the single statement below waits for it.
                let queued = plain.queued;
                if let super::batch::Batched::Done(outcome) = batcher.rotate(plain).await? {
                    return Ok(outcome);
                }
                // Within what a request may wait for a connection, counted from when it
                // was queued (the batch's own statement included): the statement's own
                // timeout then bounds the rest, as for any request.
                let left = self.acquire_timeout.saturating_sub(queued.elapsed());
                if left.is_zero() {
                    return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
                }
                tokio::time::timeout(left, self.pool.acquire())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??
            } else {
                self.pool.acquire().await?
            };
            let row = match r.parent {
                Presented::Session {
                    session_id,
                    generation,
                    hash,
                } => {
                    let sql = match r.proof {
                        Some(_) => super::sessions::pg::ROTATE_WITH_PROOF,
                        None => super::sessions::pg::ROTATE,
                    };
                    let query = sqlx::query(sql)
                        .bind(session_id)
                        .bind(generation)
                        .bind(&hash.0[..])
                        .bind(&r.successor.0[..])
                        .bind(&r.sealed_successor)
                        .bind(r.now)
                        .bind(r.ttl_secs)
                        .bind(&r.client_id)
                        .bind(&r.scope)
                        .bind(&r.caller_ip)
                        .bind(r.caller_agent)
                        .bind(&r.dpop_jkt);
                    let Some(proof) = r.proof else {
                        // The bearer statement: a row when it rotated, none when not.
                        return match query.fetch_optional(&mut *conn).await? {
                            Some(row) => Ok(Rotate::Rotated(rotated_row(&row)?)),
                            None => Ok(Rotate::Refused),
                        };
                    };
                    query
                        .bind(proof.key.to_vec())
                        .bind(proof.expires_at)
                        .fetch_one(&mut *conn)
                        .await?
                }
                Presented::Legacy(hash) => {
                    sqlx::query(super::sessions::pg::ROTATE_LEGACY)
                        .bind(&hash.0[..])
                        .bind(&r.successor.0[..])
                        .bind(r.now)
                        .bind(&r.sealed_successor)
                        .bind(r.ttl_secs)
                        .bind(&r.client_id)
                        .bind(r.authenticated)
                        .bind(&r.scope)
                        .bind(&r.caller_ip)
                        .bind(r.caller_agent)
                        .bind(&r.dpop_jkt)
                        .bind(proof_key)
                        .bind(proof_expires)
                        .fetch_one(&mut *conn)
                        .await?
                }
            };
            if !row.try_get::<bool, _>("proof_fresh")? {
                return Ok(Rotate::ProofReplayed);
            }
            if row
                .try_get::<Option<uuid::Uuid>, _>("session_id")?
                .is_none()
            {
                return Ok(Rotate::Refused);
            }
            Ok(Rotate::Rotated(rotated_row(&row)?))
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

    fn create_session<'a>(
        &'a self,
        s: &'a super::Session,
        first_token: crate::tokens::refresh::TokenHash,
        token_expires_at: i64,
        event: &'a super::AuditEvent,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let query = super::shared::bind_session!(sqlx::query(CREATE_SESSION), s)
                .bind(&first_token.0[..])
                .bind(token_expires_at);
            let created = super::shared::bind_audit!(query, event)
                .fetch_optional(&self.pool)
                .await?;
            Ok(created.is_some())
        })
    }

    /// The user's row lock (`FOR NO KEY UPDATE`) queues logins of one user, so each
    /// counts the sessions the ones before it left; then the usual statement, then the
    /// cap, in one transaction.
    fn create_capped_session<'a>(
        &'a self,
        s: &'a super::Session,
        first_token: crate::tokens::refresh::TokenHash,
        token_expires_at: i64,
        event: &'a super::AuditEvent,
        cap: super::SessionCap,
    ) -> StoreFuture<'a, Option<Vec<super::Session>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let enabled = sqlx::query(
                "SELECT id FROM users WHERE id = $1 AND disabled_at IS NULL FOR NO KEY UPDATE",
            )
            .bind(s.user_id)
            .fetch_optional(&mut *tx)
            .await?;
            if enabled.is_none() {
                return Ok(None);
            }
            let query = super::shared::bind_session!(sqlx::query(CREATE_SESSION), s)
                .bind(&first_token.0[..])
                .bind(token_expires_at);
            if super::shared::bind_audit!(query, event)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                return Ok(None);
            }
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
        })
    }

    fn prune_batch(
        &self,
        what: super::Prunable,
        before: i64,
        batch: i64,
    ) -> StoreFuture<'_, Option<u64>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // One instance prunes at a time; the others skip this round.
            if !try_lock_row(&mut tx, "janitor").await? {
                return Ok(None);
            }
            let deleted = sqlx::query(what.delete_batch_sql())
                .bind(before)
                .bind(batch)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
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
