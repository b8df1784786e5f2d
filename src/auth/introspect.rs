//! RFC 7662 introspection, for services that ask online: an access token is active
//! only while its session is live (one indexed read); a refresh token while it is
//! unspent, unexpired and its session live.
//!
//! Who may ask about what (RFC 7662 §4), for an authenticated confidential client:
//! - an access token: its own client, and any other confidential client. Every access
//!   token's `aud` is this server's one audience (tokens for another are inactive),
//!   and the confidential clients are the backends that serve it: the token is meant
//!   to be shown to them, and they verify it offline anyway.
//! - a refresh token: only the client it was issued to. A refresh token is never
//!   shown to a resource server (RFC 6749 §10.4), so any other asker holds a stolen
//!   one; it learns nothing, not even that the token is live.
//!
//! Anything else is `{"active": false}`, the same answer as for an unknown token.

use serde::Serialize;
use uuid::Uuid;

use super::{Auth, AuthError};
use crate::tokens::refresh::RefreshToken;

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<Uuid>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// A DPoP-bound token's key (RFC 9449 §6.2): an access token bound to it, or a
    /// refresh token whose session is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
}

/// The confirmation claim: the RFC 7638 thumbprint of the key a token is bound to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cnf {
    pub jkt: String,
}

impl Auth {
    /// `caller`: the id of the authenticated confidential client asking.
    pub async fn introspect(
        &self,
        token: &str,
        caller: &str,
        now: i64,
    ) -> Result<Introspection, AuthError> {
        if let Some(refresh) = RefreshToken::parse(token) {
            // A token whose tag fails names nothing: inactive, with no read.
            let Some(presented) = refresh.presented(&self.refresh_mac) else {
                return Ok(Introspection::default());
            };
            let Some(state) = self.store.token_state(presented).await? else {
                return Ok(Introspection::default());
            };
            let s = &state.session;
            let active = s.client_id == caller
                && state.spent_at.is_none()
                && state.expires_at > now
                && s.revoked_at.is_none()
                && s.expires_at > now
                && !state.user_disabled;
            if !active {
                return Ok(Introspection::default());
            }
            return Ok(Introspection {
                active: true,
                token_type: Some("refresh_token"),
                sub: Some(s.user_id),
                sid: Some(s.id),
                client_id: Some(s.client_id.clone()),
                scope: Some(s.scope.clone()),
                exp: Some(state.expires_at),
                iat: Some(state.issued_at),
                iss: Some(self.access.issuer.clone()),
                cnf: s.dpop_jkt.clone().map(|jkt| Cnf { jkt }),
                ..Introspection::default()
            });
        }
        let Ok(claims) = self.verify_access(token) else {
            return Ok(Introspection::default());
        };
        let Some(user) = self.store.live_user(claims.sid, now).await? else {
            return Ok(Introspection::default());
        };
        Ok(Introspection {
            active: true,
            token_type: Some(if claims.cnf.is_some() {
                "DPoP"
            } else {
                "Bearer"
            }),
            cnf: claims.cnf.map(|c| Cnf { jkt: c.jkt }),
            sub: Some(claims.sub),
            sid: Some(claims.sid),
            username: Some(user.email),
            client_id: Some(claims.client_id),
            scope: Some(claims.scope),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
            jti: Some(claims.jti),
            roles: claims.roles,
        })
    }
}
