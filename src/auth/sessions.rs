//! Sessions as users and admins see them: list, end one, log out everywhere, force
//! logout, disable. Admin authority is read from the store on every call.

use uuid::Uuid;

use super::{ADMIN_ROLE, Auth, AuthError};
use crate::store::{AuditEvent, Revoke, Session, StoreError, User};
use crate::tokens::access::{Claims, LEEWAY_SECS};

/// The result of a revocation: which sessions ended, and when the last access token
/// any of them could still hold expires.
#[derive(Debug)]
pub struct RevokeOutcome {
    pub revoked: Vec<Session>,
    pub effective_at: i64,
}

/// `POST /v1/logout` scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    Local,
    Others,
    Global,
}

impl LogoutScope {
    pub fn parse(s: Option<&str>) -> Result<Self, AuthError> {
        match s.unwrap_or("local") {
            "local" => Ok(Self::Local),
            "others" => Ok(Self::Others),
            "global" => Ok(Self::Global),
            _ => Err(AuthError::InvalidRequest(
                "scope must be local, others or global".into(),
            )),
        }
    }
}

impl Auth {
    /// Claims already verified (signature, expiry, and the DPoP rules: the HTTP layer's
    /// `Access` extractor): is their session still live in the store? Returns them and
    /// the user as the store has them now.
    pub async fn live_claims(&self, claims: Claims, now: i64) -> Result<(Claims, User), AuthError> {
        let user = self
            .store
            .live_user(claims.sid, now)
            .await?
            .ok_or(AuthError::SessionEnded {
                dpop: claims.cnf.is_some(),
            })?;
        Ok((claims, user))
    }

    /// Admin routes: a valid token, a live session, and the admin role as the store
    /// has it now (not as the token had it when it was minted).
    pub async fn admin_claims(&self, claims: Claims, now: i64) -> Result<Claims, AuthError> {
        let (claims, user) = self.live_claims(claims, now).await?;
        if !user.roles.iter().any(|r| r == ADMIN_ROLE) {
            return Err(AuthError::Forbidden);
        }
        Ok(claims)
    }

    /// How long after a session's last rotation its access tokens can still be valid:
    /// tokens are minted at login, at rotation (`last_used_at`) and at grace replays
    /// just after it, and verifiers allow some leeway.
    pub fn token_tail_secs(&self) -> i64 {
        self.policy.refresh_grace + self.access.ttl_secs + LEEWAY_SECS as i64
    }

    /// When every access token of `sessions` will have expired.
    fn effective_at(&self, sessions: &[Session], now: i64) -> i64 {
        sessions
            .iter()
            .map(|s| s.last_used_at + self.token_tail_secs())
            .max()
            .unwrap_or(now)
            .max(now)
    }

    pub async fn revoke_sessions(
        &self,
        target: Revoke,
        reason: &str,
        event: AuditEvent,
    ) -> Result<RevokeOutcome, AuthError> {
        let now = event.at;
        // Many sessions end in several transactions: the work runs on a task of its
        // own, so a caller that hangs up (or the request timeout) cannot stop it after
        // some batches and leave the rest live.
        let (store, reason_owned, tail) = (
            self.store.clone(),
            reason.to_owned(),
            self.token_tail_secs(),
        );
        let revoked =
            tokio::spawn(async move { store.revoke(target, &reason_owned, &event, tail).await })
                .await
                .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))??;
        self.metrics.revoked(reason, revoked.len());
        let effective_at = self.effective_at(&revoked, now);
        Ok(RevokeOutcome {
            revoked,
            effective_at,
        })
    }

    pub async fn logout(
        &self,
        claims: &Claims,
        scope: LogoutScope,
        ip: Option<String>,
        now: i64,
    ) -> Result<RevokeOutcome, AuthError> {
        let target = match scope {
            LogoutScope::Local => Revoke::Session(claims.sid),
            LogoutScope::Others => Revoke::UserExcept(claims.sub, claims.sid),
            LogoutScope::Global => Revoke::User(claims.sub),
        };
        let scope_name = match scope {
            LogoutScope::Local => "local",
            LogoutScope::Others => "others",
            LogoutScope::Global => "global",
        };
        let event = self.event(
            "logout",
            Some(claims.sub),
            Some(claims.sid),
            Some(claims.sub),
            ip,
            now,
        );
        let event = AuditEvent {
            detail: serde_json::json!({"scope": scope_name}),
            ..event
        };
        self.revoke_sessions(target, "logout", event).await
    }

    /// Ends one of the caller's own sessions; another user's session is "not found".
    pub async fn end_own_session(
        &self,
        claims: &Claims,
        session_id: Uuid,
        ip: Option<String>,
        now: i64,
    ) -> Result<RevokeOutcome, AuthError> {
        match self.store.session(session_id).await? {
            Some(s) if s.user_id == claims.sub && s.revoked_at.is_none() => {}
            _ => return Err(AuthError::NotFound),
        }
        let event = self.event(
            "session_revoked",
            Some(claims.sub),
            Some(session_id),
            Some(claims.sub),
            ip,
            now,
        );
        self.revoke_sessions(Revoke::Session(session_id), "user_revoked", event)
            .await
    }

    pub async fn admin_revoke_user_sessions(
        &self,
        admin: &Claims,
        user_id: Uuid,
        ip: Option<String>,
        now: i64,
    ) -> Result<RevokeOutcome, AuthError> {
        self.existing_user(user_id).await?;
        let event = self.event(
            "session_revoked",
            Some(user_id),
            None,
            Some(admin.sub),
            ip,
            now,
        );
        self.revoke_sessions(Revoke::User(user_id), "admin_revoked", event)
            .await
    }

    pub async fn admin_revoke_session(
        &self,
        admin: &Claims,
        session_id: Uuid,
        ip: Option<String>,
        now: i64,
    ) -> Result<RevokeOutcome, AuthError> {
        let session = self
            .store
            .session(session_id)
            .await?
            .ok_or(AuthError::NotFound)?;
        let event = self.event(
            "session_revoked",
            Some(session.user_id),
            Some(session_id),
            Some(admin.sub),
            ip,
            now,
        );
        let outcome = self
            .revoke_sessions(Revoke::Session(session_id), "admin_revoked", event)
            .await?;
        if outcome.revoked.is_empty() {
            return Err(AuthError::NotFound);
        }
        Ok(outcome)
    }

    /// Disables (and logs out everywhere) or re-enables a user.
    pub async fn admin_set_disabled(
        &self,
        admin: &Claims,
        user_id: Uuid,
        disable: bool,
        ip: Option<String>,
        now: i64,
    ) -> Result<User, AuthError> {
        let action = if disable {
            "user_disabled"
        } else {
            "user_enabled"
        };
        let event = self.event(action, Some(user_id), None, Some(admin.sub), ip, now);
        // On a task of its own, as in `revoke_sessions`: disabling ends the sessions in
        // batches, which a dropped request must not cut short.
        let (store, tail) = (self.store.clone(), self.token_tail_secs());
        let found = tokio::spawn(async move {
            store
                .set_user_disabled(user_id, disable.then_some(now), &event, tail)
                .await
        })
        .await
        .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))??;
        if !found {
            return Err(AuthError::NotFound);
        }
        if disable {
            self.metrics.revoked("user_disabled", 1);
        }
        self.existing_user(user_id).await
    }

    pub async fn existing_user(&self, user_id: Uuid) -> Result<User, AuthError> {
        self.store.user(user_id).await?.ok_or(AuthError::NotFound)
    }

    fn event(
        &self,
        action: &str,
        user_id: Option<Uuid>,
        session_id: Option<Uuid>,
        actor_id: Option<Uuid>,
        ip: Option<String>,
        now: i64,
    ) -> AuditEvent {
        AuditEvent {
            at: now,
            action: action.into(),
            user_id,
            session_id,
            actor_id,
            ip,
            detail: serde_json::Value::Null,
        }
    }
}
