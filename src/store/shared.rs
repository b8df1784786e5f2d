//! Queries that read the same on PostgreSQL and SQLite (both take `$N` parameters),
//! written once and expanded into each backend, where `Db` and `Row` name its types.
//!
//! Every transaction here starts with a write, so SQLite takes its write lock up front
//! and never has to upgrade a read lock under contention.

/// An audit event's detail as stored: a JSON object, `{}` when there is none.
pub(crate) fn audit_detail(e: &crate::store::AuditEvent) -> String {
    if e.detail.is_null() {
        "{}".to_owned()
    } else {
        e.detail.to_string()
    }
}

/// Binds a session's columns, in `session_cols!` order, to the next ten parameters.
macro_rules! bind_session {
    ($query:expr, $s:expr) => {
        $query
            .bind($s.id)
            .bind($s.user_id)
            .bind(&$s.client_id)
            .bind(&$s.scope)
            .bind($s.created_at)
            .bind($s.last_used_at)
            .bind($s.expires_at)
            .bind($s.revoked_at)
            .bind(&$s.user_agent)
            .bind(&$s.ip)
            .bind(&$s.dpop_jkt)
    };
}

/// Binds an audit event (at, action, user_id, session_id, actor_id, ip, detail) to the
/// next seven parameters.
macro_rules! bind_audit {
    ($query:expr, $e:expr) => {
        $query
            .bind($e.at)
            .bind(&$e.action)
            .bind($e.user_id)
            .bind($e.session_id)
            .bind($e.actor_id)
            .bind(&$e.ip)
            .bind(crate::store::shared::audit_detail($e))
    };
}

macro_rules! session_cols {
    () => {
        "id, user_id, client_id, scope, created_at, last_used_at, expires_at, revoked_at, user_agent, ip, dpop_jkt"
    };
}

/// Row decoders and the audit insert, for a module that defines `Db` and `Row`.
macro_rules! rows {
    () => {
        use sqlx::Row as _;

        fn user_row(row: &Row) -> Result<crate::store::User, sqlx::Error> {
            Ok(crate::store::User {
                id: row.try_get("id")?,
                email: row.try_get("email")?,
                roles: crate::store::roles_from(row.try_get("roles")?),
                disabled_at: row.try_get("disabled_at")?,
                created_at: row.try_get("created_at")?,
            })
        }

        fn session_row(row: &Row) -> Result<crate::store::Session, sqlx::Error> {
            Ok(crate::store::Session {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                client_id: row.try_get("client_id")?,
                scope: row.try_get("scope")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                user_agent: row.try_get("user_agent")?,
                ip: row.try_get("ip")?,
                dpop_jkt: row.try_get("dpop_jkt")?,
            })
        }

        fn session_tokens_row(row: &Row) -> Result<crate::store::sessions::SessionTokens, sqlx::Error> {
            Ok(crate::store::sessions::SessionTokens {
                session: session_row(row)?,
                roles: crate::store::roles_from(row.try_get("roles")?),
                user_disabled: row.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
                generation: row.try_get("generation")?,
                token_hash: row.try_get("token_hash")?,
                token_issued_at: row.try_get("token_issued_at")?,
                token_expires_at: row.try_get("token_expires_at")?,
                prev_hash: row.try_get("prev_hash")?,
                prev_sealed: row.try_get("prev_sealed")?,
                prev_replays: row.try_get("prev_replays")?,
                prev_ip: row.try_get("prev_ip")?,
                prev_agent: row.try_get("prev_agent")?,
            })
        }

        fn legacy_state_row(row: &Row) -> Result<crate::store::TokenState, sqlx::Error> {
            let spent_at: Option<i64> = row.try_get("spent_at")?;
            Ok(crate::store::TokenState {
                session: session_row(row)?,
                roles: crate::store::roles_from(row.try_get("roles")?),
                user_disabled: row.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
                issued_at: row.try_get("issued_at")?,
                expires_at: row.try_get("token_expires_at")?,
                spent_at,
                sealed_successor: row.try_get("sealed_successor")?,
                successor_spent: row.try_get("successor_spent")?,
                successor_expires_at: row.try_get("successor_expires_at")?,
                replays: row.try_get("replays")?,
                spent_ip: row.try_get("spent_ip")?,
                spent_agent: row.try_get("spent_agent")?,
                generations_behind: i64::from(spent_at.is_some()),
            })
        }

        /// What the rules need to judge a presented token (see `sessions::state_of`).
        async fn token_state_in(
            pool: &sqlx::Pool<Db>,
            token: crate::tokens::refresh::Presented,
        ) -> Result<Option<crate::store::TokenState>, sqlx::Error> {
            use crate::store::sessions;
            use crate::tokens::refresh::Presented;
            Ok(match token {
                Presented::Session { session_id, generation, hash } => {
                    let row = sqlx::query(sessions::SESSION_TOKENS)
                        .bind(session_id)
                        .fetch_optional(pool)
                        .await?;
                    match row {
                        Some(row) => sessions::state_of(session_tokens_row(&row)?, generation, hash),
                        None => None,
                    }
                }
                Presented::Legacy(hash) => {
                    let row = sqlx::query(sessions::LEGACY_TOKEN_STATE)
                        .bind(&hash.0[..])
                        .fetch_optional(pool)
                        .await?;
                    row.as_ref().map(legacy_state_row).transpose()?
                }
            })
        }

        /// One grace replay, counted with its audit event (if any) in one transaction.
        async fn claim_replay_in(
            pool: &sqlx::Pool<Db>,
            token: crate::tokens::refresh::Presented,
            max_replays: i64,
            event: Option<&crate::store::AuditEvent>,
        ) -> Result<bool, sqlx::Error> {
            use crate::store::sessions;
            use crate::tokens::refresh::Presented;
            let mut tx = pool.begin().await?;
            let claimed = match token {
                Presented::Session { session_id, generation, hash } => {
                    sqlx::query(sessions::CLAIM_REPLAY)
                        .bind(session_id)
                        .bind(generation.saturating_add(1))
                        .bind(&hash.0[..])
                        .bind(max_replays)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                Presented::Legacy(hash) => {
                    sqlx::query(sessions::LEGACY_CLAIM_REPLAY)
                        .bind(&hash.0[..])
                        .bind(max_replays)
                        .fetch_optional(&mut *tx)
                        .await?
                }
            };
            if claimed.is_none() {
                return Ok(false);
            }
            if let Some(event) = event {
                insert_audit(&mut *tx, event).await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        fn key_row(row: &Row) -> Result<crate::tokens::keys::StoredKey, sqlx::Error> {
            Ok(crate::tokens::keys::StoredKey {
                kid: row.try_get("kid")?,
                alg: row.try_get("alg")?,
                public_jwk: row.try_get("public_jwk")?,
                private_sealed: row.try_get("private_sealed")?,
                created_at: row.try_get("created_at")?,
                activates_at: row.try_get("activates_at")?,
                retires_at: row.try_get("retires_at")?,
            })
        }

        fn audit_row(row: &Row) -> Result<crate::store::AuditRecord, sqlx::Error> {
            let detail: String = row.try_get("detail")?;
            Ok(crate::store::AuditRecord {
                id: row.try_get("id")?,
                event: crate::store::AuditEvent {
                    at: row.try_get("at")?,
                    action: row.try_get("action")?,
                    user_id: row.try_get("user_id")?,
                    session_id: row.try_get("session_id")?,
                    actor_id: row.try_get("actor_id")?,
                    ip: row.try_get("ip")?,
                    detail: serde_json::from_str(&detail).unwrap_or_default(),
                },
            })
        }

        /// Inserts `key` unless the store already holds a signing key.
        async fn insert_key_if_none<'e>(
            ex: impl sqlx::Executor<'e, Database = Db>,
            key: &crate::tokens::keys::StoredKey,
        ) -> Result<bool, sqlx::Error> {
            let done = sqlx::query(
                "INSERT INTO signing_keys \
                 (kid, alg, public_jwk, private_sealed, created_at, activates_at, retires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM signing_keys)",
            )
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(&key.public_jwk)
            .bind(&key.private_sealed)
            .bind(key.created_at)
            .bind(key.activates_at)
            .bind(key.retires_at)
            .execute(ex)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn rotate_keys_in(
            conn: &mut <Db as sqlx::Database>::Connection,
            r: &crate::store::KeyRotation,
        ) -> Result<bool, sqlx::Error> {
            let k = &r.key;
            let inserted = sqlx::query(
                "INSERT INTO signing_keys \
                 (kid, alg, public_jwk, private_sealed, created_at, activates_at, retires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 \
                 WHERE $8 IS NULL OR NOT EXISTS (SELECT 1 FROM signing_keys WHERE created_at >= $8)",
            )
            .bind(&k.kid)
            .bind(&k.alg)
            .bind(&k.public_jwk)
            .bind(&k.private_sealed)
            .bind(k.created_at)
            .bind(k.activates_at)
            .bind(k.retires_at)
            .bind(r.unless_created_since)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if !inserted {
                return Ok(false);
            }
            sqlx::query("UPDATE signing_keys SET retires_at = $1 WHERE retires_at IS NULL AND kid <> $2")
                .bind(r.retire_old_at)
                .bind(&k.kid)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM signing_keys WHERE retires_at IS NOT NULL AND retires_at < $1")
                .bind(r.prune_retired_before)
                .execute(&mut *conn)
                .await?;
            Ok(true)
        }

        /// Adds ended sessions to the revocation feed (the janitor forgets entries whose
        /// tokens expired).
        async fn record_revocations(
            conn: &mut <Db as sqlx::Database>::Connection,
            sessions: &[crate::store::Session],
            now: i64,
            tail: i64,
        ) -> Result<Vec<crate::store::Revocation>, sqlx::Error> {
            let mut out = Vec::with_capacity(sessions.len());
            for s in sessions {
                let expires_at = s.last_used_at + tail;
                let row = sqlx::query(
                    "INSERT INTO revocations (session_id, revoked_at, expires_at) VALUES ($1, $2, $3) RETURNING seq",
                )
                .bind(s.id)
                .bind(now)
                .bind(expires_at)
                .fetch_one(&mut *conn)
                .await?;
                out.push(crate::store::Revocation { seq: row.try_get("seq")?, session_id: s.id, revoked_at: now, expires_at });
            }
            Ok(out)
        }

        async fn insert_audit<'e>(
            ex: impl sqlx::Executor<'e, Database = Db>,
            e: &crate::store::AuditEvent,
        ) -> Result<(), sqlx::Error> {
            crate::store::shared::bind_audit!(
                sqlx::query(
                    "INSERT INTO audit_events (at, action, user_id, session_id, actor_id, ip, detail) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                ),
                e
            )
            .execute(ex)
            .await?;
            Ok(())
        }
    };
}

/// The `Store` methods whose SQL is the same on both backends.
macro_rules! queries {
    () => {
        fn ping(&self) -> crate::store::StoreFuture<'_, ()> {
            Box::pin(async move {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            })
        }

        fn create_user<'a>(
            &'a self,
            user: &'a crate::store::User,
            password_hash: &'a str,
            event: &'a crate::store::AuditEvent,
        ) -> crate::store::StoreFuture<'a, ()> {
            Box::pin(async move {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO users (id, email, password_hash, roles, disabled_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(user.id)
                .bind(&user.email)
                .bind(password_hash)
                .bind(crate::store::roles_to(&user.roles))
                .bind(user.disabled_at)
                .bind(user.created_at)
                .execute(&mut *tx)
                .await?;
                insert_audit(&mut *tx, event).await?;
                tx.commit().await?;
                Ok(())
            })
        }

        fn user_credentials<'a>(
            &'a self,
            email: &'a str,
        ) -> crate::store::StoreFuture<'a, Option<(crate::store::User, String)>> {
            Box::pin(async move {
                let row = sqlx::query("SELECT * FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(row) => Some((user_row(&row)?, row.try_get("password_hash")?)),
                    None => None,
                })
            })
        }

        fn user(&self, id: uuid::Uuid) -> crate::store::StoreFuture<'_, Option<crate::store::User>> {
            Box::pin(async move {
                let row = sqlx::query("SELECT * FROM users WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.as_ref().map(user_row).transpose()?)
            })
        }

        fn list_users<'a>(
            &'a self,
            email_contains: Option<&'a str>,
            after: Option<uuid::Uuid>,
            limit: i64,
        ) -> crate::store::StoreFuture<'a, Vec<crate::store::User>> {
            Box::pin(async move {
                let pattern = email_contains.map(|e| {
                    let escaped = e.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                    format!("%{escaped}%")
                });
                let rows = sqlx::query(
                    "SELECT * FROM users \
                     WHERE ($1 IS NULL OR email LIKE $1 ESCAPE '\\') AND ($2 IS NULL OR id > $2) \
                     ORDER BY id LIMIT $3",
                )
                .bind(pattern)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(user_row).collect::<Result<_, _>>()?)
            })
        }

        fn set_user_disabled<'a>(
            &'a self,
            id: uuid::Uuid,
            disabled_at: Option<i64>,
            event: &'a crate::store::AuditEvent,
            token_tail_secs: i64,
        ) -> crate::store::StoreFuture<'a, bool> {
            Box::pin(async move {
                let mut turn = self.write_turn().await;
                let mut tx = self.pool.begin().await?;
                let found = sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2 RETURNING id")
                    .bind(disabled_at)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !found {
                    return Ok(false);
                }
                // The disable, its audit event and the first batch of sessions commit
                // together; the rest end in batches of their own. A disabled user's
                // sessions are refused from the first commit on (the live checks read
                // `disabled_at`), and no new one can open.
                let batch = crate::store::session_limits::REVOKE_BATCH;
                let mut ended = match disabled_at {
                    Some(now) => sqlx::query(crate::store::session_limits::REVOKE_DISABLED_BATCH)
                        .bind(now)
                        .bind(id)
                        .bind(batch)
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(session_row)
                        .collect::<Result<Vec<_>, _>>()?,
                    None => Vec::new(),
                };
                insert_audit(&mut *tx, event).await?;
                let Some(now) = disabled_at else {
                    tx.commit().await?;
                    return Ok(true);
                };
                loop {
                    // Until a batch comes back empty: a revocation racing this one can
                    // shorten a batch without the user's sessions being all ended.
                    let full = !ended.is_empty();
                    if !ended.is_empty() {
                        self.lock_feed(&mut tx).await?;
                    }
                    let revocations = record_revocations(&mut tx, &ended, now, token_tail_secs).await?;
                    self.announce(&mut tx, &revocations).await?;
                    tx.commit().await?;
                    drop(turn);
                    self.announced(revocations);
                    if !full {
                        return Ok(true);
                    }
                    turn = self.write_turn().await;
                    tx = self.pool.begin().await?;
                    ended = sqlx::query(crate::store::session_limits::REVOKE_DISABLED_BATCH)
                        .bind(now)
                        .bind(id)
                        .bind(batch)
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(session_row)
                        .collect::<Result<Vec<_>, _>>()?;
                }
            })
        }

        fn signing_keys(&self) -> crate::store::StoreFuture<'_, Vec<crate::tokens::keys::StoredKey>> {
            Box::pin(async move {
                let rows = sqlx::query("SELECT * FROM signing_keys ORDER BY created_at, kid")
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.iter().map(key_row).collect::<Result<_, _>>()?)
            })
        }

        fn session(&self, id: uuid::Uuid) -> crate::store::StoreFuture<'_, Option<crate::store::Session>> {
            Box::pin(async move {
                let row = sqlx::query(crate::store::sessions::SESSION)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(session_row).transpose()?)
            })
        }

        fn live_sessions(
            &self,
            user_id: uuid::Uuid,
            now: i64,
        ) -> crate::store::StoreFuture<'_, Vec<crate::store::Session>> {
            Box::pin(async move {
                let rows = sqlx::query(crate::store::sessions::LIVE_SESSIONS)
                .bind(user_id)
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(session_row).collect::<Result<_, _>>()?)
            })
        }

        fn live_sessions_page(
            &self,
            user_id: uuid::Uuid,
            now: i64,
            after: Option<crate::store::SessionCursor>,
            limit: i64,
        ) -> crate::store::StoreFuture<'_, Vec<crate::store::Session>> {
            Box::pin(async move {
                let rows = sqlx::query(crate::store::session_limits::LIVE_SESSIONS_PAGE)
                    .bind(user_id)
                    .bind(now)
                    .bind(after.map(|c| c.created_at))
                    .bind(after.map(|c| c.id))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.iter().map(session_row).collect::<Result<_, _>>()?)
            })
        }

        fn live_user(
            &self,
            session_id: uuid::Uuid,
            now: i64,
        ) -> crate::store::StoreFuture<'_, Option<crate::store::User>> {
            Box::pin(async move {
                let row = sqlx::query(crate::store::sessions::LIVE_USER)
                .bind(session_id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.as_ref().map(user_row).transpose()?)
            })
        }

        /// One session: one transaction. A user's sessions: batches of
        /// `REVOKE_BATCH`, each its own transaction with its audit event (listing the
        /// sessions it ended) and its feed entries, so no transaction holds the write
        /// lock for long however many sessions the user has.
        fn revoke<'a>(
            &'a self,
            target: crate::store::Revoke,
            reason: &'a str,
            event: &'a crate::store::AuditEvent,
            token_tail_secs: i64,
        ) -> crate::store::StoreFuture<'a, Vec<crate::store::Session>> {
            Box::pin(async move {
                use crate::store::Revoke;
                let batch = crate::store::session_limits::REVOKE_BATCH;
                let mut all = Vec::new();
                loop {
                    let query = match target {
                        Revoke::Session(id) => sqlx::query(crate::store::sessions::REVOKE_SESSION).bind(event.at).bind(reason).bind(id),
                        Revoke::User(user) => sqlx::query(crate::store::session_limits::REVOKE_USER_BATCH)
                            .bind(event.at)
                            .bind(reason)
                            .bind(user)
                            .bind(None::<uuid::Uuid>)
                            .bind(batch),
                        Revoke::UserExcept(user, keep) => sqlx::query(crate::store::session_limits::REVOKE_USER_BATCH)
                            .bind(event.at)
                            .bind(reason)
                            .bind(user)
                            .bind(Some(keep))
                            .bind(batch),
                    };
                    let turn = self.write_turn().await;
                    let mut tx = self.pool.begin().await?;
                    let rows = query.fetch_all(&mut *tx).await?;
                    let revoked: Vec<crate::store::Session> =
                        rows.iter().map(session_row).collect::<Result<_, _>>()?;
                    if revoked.is_empty() {
                        tx.commit().await?;
                        return Ok(all);
                    }
                    insert_audit(&mut *tx, &crate::store::session_limits::revoke_event(event, reason, &revoked)).await?;
                    self.lock_feed(&mut tx).await?;
                    let revocations = record_revocations(&mut tx, &revoked, event.at, token_tail_secs).await?;
                    self.announce(&mut tx, &revocations).await?;
                    tx.commit().await?;
                    drop(turn);
                    self.announced(revocations);
                    let more = matches!(target, Revoke::User(_) | Revoke::UserExcept(..))
                        && !revoked.is_empty();
                    all.extend(revoked);
                    if !more {
                        return Ok(all);
                    }
                }
            })
        }

        fn revocations_after(
            &self,
            after: i64,
            now: i64,
            limit: i64,
        ) -> crate::store::StoreFuture<'_, Vec<crate::store::Revocation>> {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT seq, session_id, revoked_at, expires_at FROM revocations \
                     WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
                )
                .bind(after)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                let feed = rows
                    .iter()
                    .map(|row| {
                        Ok(crate::store::Revocation {
                            seq: row.try_get("seq")?,
                            session_id: row.try_get("session_id")?,
                            revoked_at: row.try_get("revoked_at")?,
                            expires_at: row.try_get("expires_at")?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?;
                Ok(feed)
            })
        }

        fn subscribe_revocations(&self) -> tokio::sync::broadcast::Receiver<crate::store::Revocation> {
            self.feed.subscribe()
        }

        fn throttle_hit<'a>(&'a self, key: &'a str, now: i64, window_secs: i64) -> crate::store::StoreFuture<'a, (i64, i64)> {
            Box::pin(async move {
                let row = sqlx::query(
                    "INSERT INTO login_throttle (key, window_start, hits) VALUES ($1, $2, 1) \
                     ON CONFLICT (key) DO UPDATE SET \
                       hits = CASE WHEN login_throttle.window_start <= $2 - $3 THEN 1 ELSE login_throttle.hits + 1 END, \
                       window_start = CASE WHEN login_throttle.window_start <= $2 - $3 THEN $2 ELSE login_throttle.window_start END \
                     RETURNING window_start, hits",
                )
                .bind(key)
                .bind(now)
                .bind(window_secs)
                .fetch_one(&self.pool)
                .await?;
                Ok((row.try_get("window_start")?, row.try_get("hits")?))
            })
        }

        fn throttle_blocked_until<'a>(&'a self, key: &'a str) -> crate::store::StoreFuture<'a, i64> {
            Box::pin(async move {
                let row = sqlx::query("SELECT blocked_until FROM login_throttle WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(row) => row.try_get("blocked_until")?,
                    None => 0,
                })
            })
        }

        fn throttle_claim<'a>(&'a self, key: &'a str, until: i64, now: i64) -> crate::store::StoreFuture<'a, bool> {
            Box::pin(async move {
                let row = sqlx::query(
                    "UPDATE login_throttle SET blocked_until = $2 WHERE key = $1 AND blocked_until <= $3 RETURNING key",
                )
                .bind(key)
                .bind(until)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.is_some())
            })
        }

        fn throttle_prune(&self, now: i64, memory_secs: i64) -> crate::store::StoreFuture<'_, ()> {
            Box::pin(async move {
                sqlx::query("DELETE FROM login_throttle WHERE window_start < $1 AND blocked_until < $2")
                    .bind(now - memory_secs)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            })
        }

        fn throttle_clear<'a>(&'a self, key: &'a str) -> crate::store::StoreFuture<'a, ()> {
            Box::pin(async move {
                sqlx::query("DELETE FROM login_throttle WHERE key = $1").bind(key).execute(&self.pool).await?;
                Ok(())
            })
        }

        fn pool_stats(&self) -> (u32, u32) {
            let idle = self.pool.num_idle() as u32;
            (self.pool.size().saturating_sub(idle), idle)
        }

        fn record<'a>(&'a self, event: &'a crate::store::AuditEvent) -> crate::store::StoreFuture<'a, ()> {
            Box::pin(async move { Ok(insert_audit(&self.pool, event).await?) })
        }

        fn audit_events<'a>(
            &'a self,
            user_id: Option<uuid::Uuid>,
            action: Option<&'a str>,
            before: Option<i64>,
            limit: i64,
        ) -> crate::store::StoreFuture<'a, Vec<crate::store::AuditRecord>> {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT * FROM audit_events \
                     WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR action = $2) \
                       AND ($3 IS NULL OR id < $3) \
                     ORDER BY id DESC LIMIT $4",
                )
                .bind(user_id)
                .bind(action)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(audit_row).collect::<Result<_, _>>()?)
            })
        }
    };
}

pub(crate) use {bind_audit, bind_session, queries, rows, session_cols};
