//! The refresh grant and RFC 7009 revocation.
//!
//! Common case: one statement spends the parent and issues the successor. Only when
//! that statement refuses does a second read find out why, and the rules decide.

use uuid::Uuid;

use super::rules::{self, Decision, Grace, Rejection};
use super::{Auth, AuthError, Caller, Grant, RequestClient, validate};
use crate::metrics::RefreshOutcome;
use crate::store::{AuditEvent, Revoke, Rotation, TokenState};
use crate::tokens::refresh::RefreshToken;

const UNUSABLE: &str = "the refresh token is invalid, expired or revoked";

impl Auth {
    pub async fn refresh(
        &self,
        raw: &str,
        client: &RequestClient,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        // A named client is checked inside the rotation statement (the token must be
        // its own), so the common case stays one round trip.
        let client_id = validate::client_id(client.id())?;
        let parent = RefreshToken::parse(raw).ok_or(AuthError::InvalidGrant(UNUSABLE))?;

        if let Some(grant) = self.rotate(&parent, client_id, caller, now).await? {
            return Ok(grant);
        }
        let Some(state) = self.store.token_state(parent.hash()).await? else {
            return Err(AuthError::InvalidGrant(UNUSABLE));
        };
        let grace = Grace {
            secs: self.policy.refresh_grace,
            max_replays: self.policy.refresh_grace_max_replays,
        };
        match rules::judge(&state, client_id, now, grace) {
            Decision::Replay => {
                if let Some(grant) = self.replay(&parent, &state, caller, now).await? {
                    return Ok(grant);
                }
                // The claim lost: the cap was reached by a parallel replay, or the
                // successor was used meanwhile. Judge what the store says now, once.
                let state = self
                    .store
                    .token_state(parent.hash())
                    .await?
                    .ok_or(AuthError::InvalidGrant(UNUSABLE))?;
                match rules::judge(&state, client_id, now, grace) {
                    Decision::Reuse(kind) => self.reuse(&state, kind, caller, now).await,
                    _ => self.replay_refused(&parent, &state, caller, now).await,
                }
            }
            Decision::Reuse(kind) => self.reuse(&state, kind, caller, now).await,
            Decision::Reject(Rejection::WrongClient) => {
                // An unknown client is a client error; a known one holding another
                // client's token is a grant error.
                if !matches!(client, RequestClient::Authenticated(_)) {
                    self.public_client(client_id).await?;
                }
                Err(AuthError::InvalidGrant(Rejection::WrongClient.describe()))
            }
            Decision::Reject(Rejection::ReplaysExhausted) => {
                self.replay_refused(&parent, &state, caller, now).await
            }
            Decision::Reject(why) => Err(AuthError::InvalidGrant(why.describe())),
            // The winner of a race rolled back: one more attempt, never a loop.
            Decision::Rotate => self
                .rotate(&parent, client_id, caller, now)
                .await?
                .ok_or(AuthError::InvalidGrant(UNUSABLE)),
        }
    }

    /// A spent token presented again: the session is compromised, revoke it whole.
    async fn reuse(
        &self,
        state: &TokenState,
        kind: rules::Reuse,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        self.metrics.refresh(RefreshOutcome::reuse_detected);
        tracing::warn!(session_id = %state.session.id, case = kind.as_str(), "refresh token reuse: session revoked");
        let event = AuditEvent {
            at: now,
            action: "refresh_token_reuse".into(),
            user_id: Some(state.session.user_id),
            session_id: Some(state.session.id),
            ip: caller.ip.clone(),
            detail: serde_json::json!({
                "case": kind.as_str(),
                "spent_at": state.spent_at,
                "user_agent": caller.user_agent,
            }),
            ..AuditEvent::default()
        };
        self.revoke_sessions(
            Revoke::Session(state.session.id),
            "refresh_token_reuse",
            event,
        )
        .await?;
        Err(AuthError::InvalidGrant(
            "the refresh token was already used; the session has been revoked",
        ))
    }

    async fn rotate(
        &self,
        parent: &RefreshToken,
        client_id: Option<&str>,
        caller: &Caller,
        now: i64,
    ) -> Result<Option<Grant>, AuthError> {
        let successor = RefreshToken::generate();
        let rotation = Rotation {
            parent: parent.hash(),
            successor: successor.hash(),
            sealed_successor: parent.seal(&successor),
            now,
            ttl_secs: self.policy.refresh_token_ttl,
            client_id: client_id.map(str::to_owned),
            caller_ip: caller.ip.clone(),
            caller_agent: agent_fingerprint(caller.user_agent.as_deref()),
        };
        let Some(r) = self.store.rotate(&rotation).await? else {
            return Ok(None);
        };
        self.metrics.refresh(RefreshOutcome::ok);
        Ok(Some(self.grant(
            r.user_id,
            r.session_id,
            &r.client_id,
            &r.scope,
            r.roles,
            successor,
            now,
        )))
    }

    /// A retry inside the grace window: the same successor, unsealed with the parent,
    /// and a fresh access token, if the parent has a replay left (claimed atomically
    /// with its audit event, so concurrent replays cannot pass the cap). `None` when
    /// the claim lost.
    async fn replay(
        &self,
        parent: &RefreshToken,
        state: &TokenState,
        caller: &Caller,
        now: i64,
    ) -> Result<Option<Grant>, AuthError> {
        let successor = state
            .sealed_successor
            .as_deref()
            .and_then(|sealed| parent.open(sealed))
            .ok_or(AuthError::InvalidGrant(UNUSABLE))?;
        let event = replay_event("refresh_grace_replay", state, caller, now);
        let claimed = self
            .store
            .claim_replay(parent.hash(), self.policy.refresh_grace_max_replays, &event)
            .await?;
        if !claimed {
            return Ok(None);
        }
        self.metrics.refresh(RefreshOutcome::replayed_in_grace);
        let s = &state.session;
        Ok(Some(self.grant(
            s.user_id,
            s.id,
            &s.client_id,
            &s.scope,
            state.roles.clone(),
            successor,
            now,
        )))
    }

    /// A grace replay past the cap: refused, the session left alone (its holder may be
    /// the one with the successor). The first refusal per token is audited (claimed
    /// like a replay, one past the cap), later ones only counted, so a holder of a
    /// spent token cannot flood the audit log for the length of the window.
    async fn replay_refused(
        &self,
        parent: &RefreshToken,
        state: &TokenState,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        self.metrics.refresh(RefreshOutcome::replay_refused);
        let max = self.policy.refresh_grace_max_replays;
        let mut event = replay_event("refresh_grace_replay_refused", state, caller, now);
        event.detail["max_replays"] = max.into();
        self.store
            .claim_replay(parent.hash(), max + 1, &event)
            .await?;
        Err(AuthError::InvalidGrant(
            Rejection::ReplaysExhausted.describe(),
        ))
    }

    /// RFC 7009: ends the session a refresh token (or an access token) belongs to.
    /// Unknown and malformed tokens succeed silently, as the RFC asks.
    pub async fn revoke_token(
        &self,
        raw: &str,
        caller: &Caller,
        now: i64,
    ) -> Result<(), AuthError> {
        let session: Option<(Uuid, Uuid)> = if let Some(token) = RefreshToken::parse(raw) {
            self.store
                .token_state(token.hash())
                .await?
                .map(|s| (s.session.id, s.session.user_id))
        } else {
            self.verify_access(raw).ok().map(|c| (c.sid, c.sub))
        };
        if let Some((session_id, user_id)) = session {
            let event = AuditEvent {
                at: now,
                action: "logout".into(),
                user_id: Some(user_id),
                session_id: Some(session_id),
                actor_id: Some(user_id),
                ip: caller.ip.clone(),
                detail: serde_json::json!({"via": "oauth_revoke"}),
            };
            self.revoke_sessions(Revoke::Session(session_id), "logout", event)
                .await?;
        }
        Ok(())
    }
}

/// A grace replay's audit event: whether the replaying address and user agent differ
/// from those of the rotation that spent the token (`null` only where neither is
/// known: a replay that drops its user agent differs).
fn replay_event(action: &str, state: &TokenState, caller: &Caller, now: i64) -> AuditEvent {
    fn differs<T: PartialEq>(then: Option<T>, now: Option<T>) -> serde_json::Value {
        match (then, now) {
            (None, None) => serde_json::Value::Null,
            (a, b) => (a != b).into(),
        }
    }
    AuditEvent {
        at: now,
        action: action.into(),
        user_id: Some(state.session.user_id),
        session_id: Some(state.session.id),
        ip: caller.ip.clone(),
        detail: serde_json::json!({
            "spent_at": state.spent_at,
            "rotated_from_ip": state.spent_ip,
            "ip_differs": differs(state.spent_ip.as_deref(), caller.ip.as_deref()),
            "user_agent_differs": differs(
                state.spent_agent,
                agent_fingerprint(caller.user_agent.as_deref()),
            ),
        }),
        ..AuditEvent::default()
    }
}

/// A user agent as a 64-bit fingerprint: enough to tell two apart, and the token rows
/// do not carry the text.
fn agent_fingerprint(agent: Option<&str>) -> Option<i64> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(agent?.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Some(i64::from_be_bytes(first))
}
