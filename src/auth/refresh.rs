//! The refresh grant and RFC 7009 revocation.
//!
//! Common case: one statement spends the parent and issues the successor, checking the
//! client and the scope asked for on the way. Only when that statement refuses does a
//! second read find out why, and the rules decide.

use super::dpop::{Proof, ProofError, claim_of};
use super::rules::{self, Decision, Grace, Presenter, Rejection};
use super::{Auth, AuthError, Caller, DEFAULT_CLIENT, Grant, RequestClient, validate};
use crate::metrics::RefreshOutcome;
use crate::store::{AuditEvent, ProofClaim, Revoke, Rotate, Rotation, TokenState};
use crate::tokens::refresh::{Presented, RefreshToken};

const UNUSABLE: &str = "the refresh token is invalid, expired or revoked";

impl Auth {
    /// The refresh grant asking for the session's whole scope.
    pub async fn refresh(
        &self,
        raw: &str,
        client: &RequestClient,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        self.refresh_with_scope(raw, client, None, None, caller, now)
            .await
    }

    /// The refresh grant; `scope` (RFC 6749 §6) may narrow the new access token's scope
    /// within the session's grant. The session and its successor token keep the whole
    /// grant, so a later refresh can ask for it again. `dpop`: the request's DPoP
    /// proof, already checked (signature, `htm`, `htu`, `iat`, nonce); its replay
    /// claim and the session's key binding are checked in the rotation statement.
    pub async fn refresh_with_scope(
        &self,
        raw: &str,
        client: &RequestClient,
        scope: Option<&str>,
        dpop: Option<&Proof>,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        // The client and the scope are checked inside the rotation statement (the token
        // must be the caller's, the scope within the session's; the client's own policy
        // just below), so the common case stays one round trip. A caller naming no
        // client speaks for the default one: the session's client is always compared.
        let named = validate::client_id(client.id())?.unwrap_or(DEFAULT_CLIENT);
        let client_id = Some(named);
        let asked = asked_scope(scope)?;
        let presenter = Presenter {
            client_id,
            authenticated: matches!(client, RequestClient::Authenticated(_)),
            scope: asked.as_deref(),
            dpop_jkt: dpop.map(|p| p.jkt.as_str()),
        };
        let parent = RefreshToken::parse(raw).ok_or(AuthError::InvalidGrant(UNUSABLE))?;
        // A token whose tag does not verify was made by someone without the server's
        // key (say, for a session id read off an access token): refused with no read and
        // no write, so it can revoke nothing.
        let presented = parent
            .presented(&self.refresh_mac)
            .ok_or(AuthError::InvalidGrant(UNUSABLE))?;
        // A place refused for presenting unknown tokens gets one read, no write: its
        // own existing tokens still refresh, its guesses are answered 429.
        if let Some(retry_after) = self.unknown_refresh_refused(caller.ip.as_deref(), now)
            && self.store.token_state(presented).await?.is_none()
        {
            return Err(AuthError::Throttled(retry_after));
        }

        // A registered client never changes, so its own policy (a confidential client
        // authenticates, a client may require DPoP) is known from the cache, not
        // re-read by the rotation statement: a request it refuses skips the rotation
        // and is judged below, which names the reason. (A client that can be edited
        // would bring this check back into the statement: the cache lags 30 s.)
        let policy_refuses = self.cached_client(named).await?.is_some_and(|c| {
            (c.secret_hash.is_some() && !presenter.authenticated)
                || (c.require_dpop && presenter.dpop_jkt.is_none())
        });
        if !policy_refuses {
            match self
                .rotate(
                    &parent,
                    presented,
                    &presenter,
                    dpop.map(claim_of),
                    caller,
                    now,
                )
                .await?
            {
                Some(Ok(grant)) => return Ok(grant),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        let Some(state) = self.store.token_state(presented).await? else {
            self.count_unknown_refresh(caller.ip.as_deref(), now)
                .await?;
            return Err(AuthError::InvalidGrant(UNUSABLE));
        };
        let client = self.cached_client(&state.session.client_id).await?;
        let confidential = client.as_ref().is_some_and(|c| c.secret_hash.is_some());
        let requires_dpop = client.as_ref().is_some_and(|c| c.require_dpop);
        if let Err(why) = rules::check_presenter(&state, confidential, requires_dpop, &presenter) {
            if matches!(
                why,
                Rejection::DpopProofRequired | Rejection::DpopKeyMismatch
            ) {
                self.dpop_refused(&state, why, dpop, caller, now).await?;
            }
            return Err(self.refused(why, &presenter).await);
        }
        let grace = Grace {
            secs: self.policy.refresh_grace,
            max_replays: self.policy.refresh_grace_max_replays,
        };
        match rules::judge(&state, client_id, now, grace) {
            Decision::Replay => {
                if let Some(grant) = self
                    .replay(&parent, presented, &state, &presenter, caller, now)
                    .await?
                {
                    return Ok(grant);
                }
                // The claim lost: the cap was reached by a parallel replay, or the
                // successor was used meanwhile. Judge what the store says now, once.
                let state = self
                    .store
                    .token_state(presented)
                    .await?
                    .ok_or(AuthError::InvalidGrant(UNUSABLE))?;
                match rules::judge(&state, client_id, now, grace) {
                    Decision::Reuse(kind) => self.reuse(&state, kind, caller, now).await,
                    _ => self.replay_refused(presented, &state, caller, now).await,
                }
            }
            Decision::Reuse(kind) => self.reuse(&state, kind, caller, now).await,
            Decision::Reject(Rejection::ReplaysExhausted) => {
                self.replay_refused(presented, &state, caller, now).await
            }
            Decision::Reject(why) => Err(self.refused(why, &presenter).await),
            // The winner of a race rolled back: one more attempt, never a loop. The
            // proof was claimed by the first attempt.
            Decision::Rotate => self
                .rotate(&parent, presented, &presenter, None, caller, now)
                .await?
                .unwrap_or(Err(AuthError::InvalidGrant(UNUSABLE))),
        }
    }

    /// A bound refresh token presented without its key: refused, nothing spent, and
    /// audited as a security event (a copy of the token is out there).
    async fn dpop_refused(
        &self,
        state: &TokenState,
        why: Rejection,
        dpop: Option<&Proof>,
        caller: &Caller,
        now: i64,
    ) -> Result<(), AuthError> {
        self.metrics.refresh(RefreshOutcome::dpop_refused);
        tracing::warn!(session_id = %state.session.id, "refresh token presented without its DPoP key");
        let presented = match why {
            Rejection::DpopKeyMismatch => "other_key",
            _ => "no_proof",
        };
        let Some(admitted) = self.dpop_events.admit(
            state.session.id,
            presented,
            dpop.map(|p| p.jkt.as_str()),
            caller.ip.as_deref(),
            now,
        ) else {
            self.metrics.audit_left_out.inc();
            return Ok(());
        };
        let written = self
            .store
            .record(&AuditEvent {
                at: now,
                action: "refresh_dpop_refused".into(),
                user_id: Some(state.session.user_id),
                session_id: Some(state.session.id),
                ip: caller.ip.clone(),
                detail: serde_json::json!({
                    "presented": presented,
                    "bound_jkt": state.session.dpop_jkt,
                    "proof_jkt": dpop.map(|p| p.jkt.as_str()),
                    "spent": state.spent_at.is_some(),
                    "user_agent": caller.user_agent,
                    "repeats_left_out": admitted.suppressed,
                }),
                ..AuditEvent::default()
            })
            .await;
        if written.is_err() {
            self.dpop_events.forget(state.session.id, admitted);
        }
        written?;
        Ok(())
    }

    /// The error for a refused refresh.
    async fn refused(&self, why: Rejection, presenter: &Presenter<'_>) -> AuthError {
        match why {
            Rejection::ClientAuthRequired => AuthError::InvalidClient,
            Rejection::ScopeWidened => AuthError::InvalidScope(why.describe()),
            Rejection::DpopProofRequired | Rejection::ClientRequiresDpop => {
                AuthError::DpopRequired(why.describe())
            }
            // An unknown client is a client error; a known one holding another
            // client's token is a grant error.
            Rejection::WrongClient if !presenter.authenticated => {
                match self.public_client(presenter.client_id).await {
                    Ok(_) => AuthError::InvalidGrant(why.describe()),
                    Err(e) => e,
                }
            }
            other => AuthError::InvalidGrant(other.describe()),
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
                "generations_behind": state.generations_behind,
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

    /// The rotation statement: `None` when it spent nothing and the rules must judge
    /// why; `Some(Err)` when the request's proof was a replay.
    async fn rotate(
        &self,
        parent: &RefreshToken,
        presented: Presented,
        presenter: &Presenter<'_>,
        proof: Option<ProofClaim>,
        caller: &Caller,
        now: i64,
    ) -> Result<Option<Result<Grant, AuthError>>, AuthError> {
        let (session_id, generation) = match presented {
            Presented::Session {
                session_id,
                generation,
                ..
            } => (session_id, generation.saturating_add(1)),
            // A token issued before sessions were one row names no session: one read
            // finds it, once per such session, and its successor is generation 1.
            Presented::Legacy(_) => match self.store.token_state(presented).await? {
                Some(state) if state.spent_at.is_none() => (state.session.id, 1),
                _ => return Ok(None),
            },
        };
        let successor = RefreshToken::issue(&self.refresh_mac, session_id, generation);
        let rotation = Rotation {
            parent: presented,
            successor: successor.hash(),
            sealed_successor: parent.seal(&successor),
            now,
            ttl_secs: self.policy.refresh_token_ttl,
            client_id: presenter.client_id.map(str::to_owned),
            authenticated: presenter.authenticated,
            scope: presenter.scope.map(<[String]>::to_vec),
            caller_ip: caller.ip.clone(),
            caller_agent: agent_fingerprint(caller.user_agent.as_deref()),
            dpop_jkt: presenter.dpop_jkt.map(str::to_owned),
            proof,
        };
        let r = match self.store.rotate(&rotation).await? {
            Rotate::Rotated(r) => r,
            Rotate::Refused => return Ok(None),
            Rotate::ProofReplayed => {
                self.metrics.dpop_refused(ProofError::Replayed.reason());
                return Ok(Some(Err(AuthError::InvalidDpopProof(ProofError::Replayed))));
            }
        };
        self.metrics.refresh(RefreshOutcome::ok);
        let scope = presenter.scope.map_or(r.scope, |s| s.join(" "));
        Ok(Some(Ok(self.grant(
            r.user_id,
            r.session_id,
            &r.client_id,
            &scope,
            r.roles,
            successor,
            presenter.dpop_jkt,
            now,
        ))))
    }

    /// A retry inside the grace window: the same successor, unsealed with the parent,
    /// and a fresh access token, if the parent has a replay left (claimed atomically
    /// with its audit event, so concurrent replays cannot pass the cap). `None` when
    /// the claim lost.
    async fn replay(
        &self,
        parent: &RefreshToken,
        presented: Presented,
        state: &TokenState,
        presenter: &Presenter<'_>,
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
            .claim_replay(presented, self.policy.refresh_grace_max_replays, event)
            .await?;
        if !claimed {
            return Ok(None);
        }
        self.metrics.refresh(RefreshOutcome::replayed_in_grace);
        let s = &state.session;
        let scope = presenter
            .scope
            .map_or_else(|| s.scope.clone(), |a| a.join(" "));
        Ok(Some(self.grant(
            s.user_id,
            s.id,
            &s.client_id,
            &scope,
            state.roles.clone(),
            successor,
            presenter.dpop_jkt,
            now,
        )))
    }

    /// A grace replay past the cap: refused, the session left alone (its holder may be
    /// the one with the successor). The first refusal per token is audited (claimed
    /// like a replay, one past the cap), later ones only counted, so a holder of a
    /// spent token cannot flood the audit log for the length of the window.
    async fn replay_refused(
        &self,
        presented: Presented,
        state: &TokenState,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        self.metrics.refresh(RefreshOutcome::replay_refused);
        let max = self.policy.refresh_grace_max_replays;
        let mut event = replay_event("refresh_grace_replay_refused", state, caller, now);
        event.detail["max_replays"] = max.into();
        self.claim_replay(presented, max + 1, event).await?;
        Err(AuthError::InvalidGrant(
            Rejection::ReplaysExhausted.describe(),
        ))
    }

    /// Claims one grace replay (or the one audited refusal past the cap) below
    /// `max_replays`; its event is written only if this minute's budget for the session
    /// admits it (see [`super::dpop::RecentEvents`]), else only counted in the metrics,
    /// so a client that replays in a loop does not set how fast the audit log grows.
    async fn claim_replay(
        &self,
        presented: Presented,
        max_replays: i64,
        mut event: AuditEvent,
    ) -> Result<bool, AuthError> {
        let Some(session) = event.session_id else {
            return Ok(false);
        };
        let admitted =
            self.replay_events
                .admit(session, &event.action, None, event.ip.as_deref(), event.at);
        if let Some(admitted) = admitted {
            event.detail["repeats_left_out"] = admitted.suppressed.into();
        }
        let claimed = self
            .store
            .claim_replay(presented, max_replays, admitted.map(|_| &event))
            .await;
        match (&claimed, admitted) {
            (Ok(true), None) => {
                self.metrics.audit_left_out.inc();
            }
            (Ok(false) | Err(_), Some(admitted)) => self.replay_events.forget(session, admitted),
            _ => {}
        }
        Ok(claimed?)
    }

    /// RFC 7009: ends the session a live refresh token (or an access token) belongs
    /// to, if that token was issued to the client asking. Unknown, malformed, spent and
    /// other clients' tokens succeed silently (§2.2): the answer says nothing about a
    /// token the caller does not own. A DPoP-bound token is revoked only with a proof
    /// by its key (`dpop`, already checked but for replay, which is claimed once the
    /// token is found): a copy without the key cannot log its holder out, and its
    /// client is told (`invalid_dpop_proof`).
    pub async fn revoke_token(
        &self,
        raw: &str,
        client: &RequestClient,
        dpop: Option<&Proof>,
        caller: &Caller,
        now: i64,
    ) -> Result<(), AuthError> {
        // A public client names itself; a confidential one has proven its secret.
        let asking = match client {
            RequestClient::Authenticated(id) => id.clone(),
            other => self.public_client(other.id()).await?.id,
        };
        let target = if let Some(token) = RefreshToken::parse(raw) {
            // Only a live token: a spent one is an old copy, and its holder must not be
            // able to log the user out. One whose tag fails names nothing.
            let Some(presented) = token.presented(&self.refresh_mac) else {
                return Ok(());
            };
            self.store
                .token_state(presented)
                .await?
                .filter(|s| s.spent_at.is_none() && s.expires_at > now)
                .map(|s| {
                    let s = s.session;
                    (s.id, s.user_id, s.client_id, s.dpop_jkt)
                })
        } else {
            self.verify_access(raw)
                .ok()
                .map(|c| (c.sid, c.sub, c.client_id, c.cnf.map(|c| c.jkt)))
        };
        let Some((session_id, user_id, owner, bound)) = target else {
            return Ok(());
        };
        if owner != asking {
            tracing::info!(%session_id, "revocation of another client's token ignored");
            return Ok(());
        }
        if let Some(bound) = bound
            && dpop.map(|p| p.jkt.as_str()) != Some(bound.as_str())
        {
            // The caller is the token's client: tell it why (it still holds a live
            // session, and its app may believe it logged out), but revoke nothing.
            let (kind, why) = match dpop {
                None => ("revoke_no_proof", ProofError::Missing),
                Some(_) => ("revoke_other_key", ProofError::WrongKey),
            };
            tracing::warn!(%session_id, "revocation of a DPoP-bound token without its key refused");
            self.metrics.dpop_refused(why.reason());
            let proof_jkt = dpop.map(|p| p.jkt.as_str());
            let Some(admitted) =
                self.dpop_events
                    .admit(session_id, kind, proof_jkt, caller.ip.as_deref(), now)
            else {
                self.metrics.audit_left_out.inc();
                return Err(AuthError::InvalidDpopProof(why));
            };
            let written = self
                .store
                .record(&AuditEvent {
                    at: now,
                    action: "revoke_dpop_refused".into(),
                    user_id: Some(user_id),
                    session_id: Some(session_id),
                    ip: caller.ip.clone(),
                    detail: serde_json::json!({
                        "bound_jkt": bound,
                        "proof_jkt": proof_jkt,
                        "repeats_left_out": admitted.suppressed,
                    }),
                    ..AuditEvent::default()
                })
                .await;
            if written.is_err() {
                self.dpop_events.forget(session_id, admitted);
            }
            written?;
            return Err(AuthError::InvalidDpopProof(why));
        }
        // The proof is remembered only now, for a token that exists and is the
        // caller's: invented tokens leave nothing behind.
        if let Some(proof) = dpop {
            self.claim_dpop_proof(proof).await?;
        }
        let event = AuditEvent {
            at: now,
            action: "logout".into(),
            user_id: Some(user_id),
            session_id: Some(session_id),
            actor_id: Some(user_id),
            ip: caller.ip.clone(),
            detail: serde_json::json!({"via": "oauth_revoke", "client_id": owner}),
        };
        self.revoke_sessions(Revoke::Session(session_id), "logout", event)
            .await?;
        Ok(())
    }
}

/// The scope a refresh asks for: `None` when absent or empty (the whole grant).
fn asked_scope(raw: Option<&str>) -> Result<Option<Vec<String>>, AuthError> {
    let scope = validate::normalize_scope(raw)?;
    Ok((!scope.is_empty()).then(|| scope.split(' ').map(str::to_owned).collect()))
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
