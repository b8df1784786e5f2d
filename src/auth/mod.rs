//! The domain: sign-up, login, refresh, revocation and the admin's force-logout.
//! It decides from values it is given (`now` included) and talks to the store through
//! the [`Store`] trait; it knows nothing of HTTP.

mod clients;
pub mod dpop;
mod introspect;
pub mod janitor;
pub mod keys;
mod refresh;
pub mod rules;
mod sessions;
pub mod throttle;
mod validate;

use std::sync::{Arc, RwLock};

use secrecy::SecretString;
use uuid::Uuid;

use crate::metrics::{LoginOutcome, Metrics};
use crate::passwords::{PasswordError, Passwords};
use crate::store::{AuditEvent, Client, Session, Store, StoreError, User};
use crate::tokens::access::{AccessTokens, Claims, VerifyError};
use crate::tokens::keys::KeySet;
use crate::tokens::refresh::{RefreshMac, RefreshToken};

pub use clients::NewClient;
pub use dpop::DpopPolicy;
pub use introspect::Introspection;
pub use janitor::JanitorPolicy;
pub use keys::KeyPolicy;
pub use sessions::{LogoutScope, RevokeOutcome};
pub use throttle::ThrottlePolicy;
pub use validate::{normalize_email, normalize_scope};

/// The public client of first-party apps, used when a request names none.
pub const DEFAULT_CLIENT: &str = "app";
pub const ADMIN_ROLE: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("client authentication failed")]
    InvalidClient,
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error("{0}")]
    InvalidScope(&'static str),
    #[error("{0}")]
    InvalidEmail(&'static str),
    #[error("{0}")]
    InvalidPassword(String),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("sign-up is disabled")]
    SignupDisabled,
    #[error("{0}")]
    InvalidToken(VerifyError),
    /// A DPoP proof was missing or failed a check (`invalid_dpop_proof`, or for a
    /// missing nonce `use_dpop_nonce`).
    #[error("{0}")]
    InvalidDpopProof(dpop::ProofError),
    /// A DPoP proof is needed here and none was sent (`invalid_dpop_proof`).
    #[error("{0}")]
    DpopRequired(&'static str),
    /// The token's session has ended; `dpop`: the token was DPoP-bound (the 401's
    /// challenge then names the DPoP scheme).
    #[error("the session is no longer valid")]
    SessionEnded { dpop: bool },
    #[error("this requires the admin role")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("password hashing is at capacity")]
    Busy,
    /// Too many attempts: retry after this many seconds.
    #[error("too many attempts; retry later")]
    Throttled(i64),
    #[error("the store is unavailable")]
    Unavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => AuthError::EmailTaken,
            StoreError::Unavailable(_) => AuthError::Unavailable,
            StoreError::InvalidInput => AuthError::InvalidRequest(
                "a parameter holds characters that are not allowed".into(),
            ),
            other => AuthError::Internal(other.to_string()),
        }
    }
}

impl From<PasswordError> for AuthError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => AuthError::Busy,
            PasswordError::Internal => AuthError::Internal("password hashing failed".into()),
        }
    }
}

/// Lifetimes and windows, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub refresh_token_ttl: i64,
    pub session_max_age: i64,
    pub refresh_grace: i64,
    pub refresh_grace_max_replays: i64,
    pub signup_enabled: bool,
    /// Live sessions one user may hold; a login beyond it ends the oldest.
    pub max_sessions_per_user: i64,
}

/// The client a token request speaks for.
#[derive(Debug, Clone)]
pub enum RequestClient {
    /// None named: the default public client of first-party apps.
    Default,
    /// A public client named by `client_id`, unauthenticated.
    Named(String),
    /// A confidential client that proved its secret.
    Authenticated(String),
}

impl RequestClient {
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Named(id) | Self::Authenticated(id) => Some(id),
        }
    }
}

/// Who is asking, as far as the transport knows.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What a successful grant hands back.
#[derive(Debug)]
pub struct Grant {
    pub access_token: String,
    /// `Bearer`, or `DPoP` for an access token bound to the request's proof key.
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: RefreshToken,
    pub scope: String,
}

pub struct Auth {
    pub store: Arc<dyn Store>,
    pub passwords: Passwords,
    pub access: AccessTokens,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    pub key_policy: KeyPolicy,
    pub throttle: ThrottlePolicy,
    pub janitor: JanitorPolicy,
    pub dpop: DpopPolicy,
    keys: RwLock<Arc<KeySet>>,
    clients: clients::ClientCache,
    /// The default client's scope allow-list (config: `default_client_scopes`).
    default_client_scopes: String,
    signup_refusals: throttle::Refusals,
    /// Places refused for presenting unknown refresh tokens, and until when.
    refresh_refusals: throttle::Refusals,
    /// DPoP refusals audited this minute (see [`dpop::RecentEvents`]).
    dpop_events: dpop::RecentEvents,
    /// Grace replays (and their refusals) audited this minute: a client that replays
    /// in a loop does not set the audit log's growth.
    replay_events: dpop::RecentEvents,
    /// The key refresh-token tags are made with.
    refresh_mac: RefreshMac,
}

/// What an [`Auth`] is made of.
pub struct AuthParts {
    pub store: Arc<dyn Store>,
    pub passwords: Passwords,
    pub access: AccessTokens,
    pub keys: KeySet,
    pub key_policy: KeyPolicy,
    pub policy: Policy,
    pub throttle: ThrottlePolicy,
    pub janitor: JanitorPolicy,
    pub metrics: Arc<Metrics>,
    /// The default client's scope allow-list, space-separated.
    pub default_client_scopes: String,
    pub dpop: DpopPolicy,
    /// Derived from the secret key: every instance sharing it accepts the others'
    /// refresh tokens.
    pub refresh_mac: RefreshMac,
}

impl Auth {
    /// The refresh token a new session starts with: generation 1 (tools and tests that
    /// open sessions through the store make theirs here too).
    pub fn first_refresh_token(&self, session: Uuid) -> RefreshToken {
        RefreshToken::issue(&self.refresh_mac, session, 1)
    }

    /// Where the store finds `token`, if its tag is ours.
    pub fn presented(&self, token: &RefreshToken) -> Option<crate::tokens::refresh::Presented> {
        token.presented(&self.refresh_mac)
    }

    pub fn new(parts: AuthParts) -> Self {
        Self {
            store: parts.store,
            passwords: parts.passwords,
            access: parts.access,
            policy: parts.policy,
            key_policy: parts.key_policy,
            throttle: parts.throttle,
            janitor: parts.janitor,
            dpop: parts.dpop,
            metrics: parts.metrics,
            clients: clients::ClientCache::default(),
            default_client_scopes: parts.default_client_scopes,
            signup_refusals: throttle::Refusals::default(),
            refresh_refusals: throttle::Refusals::default(),
            dpop_events: dpop::RecentEvents::default(),
            replay_events: dpop::RecentEvents::default(),
            refresh_mac: parts.refresh_mac,
            keys: RwLock::new(Arc::new(parts.keys)),
        }
    }

    pub fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace_keys(&self, keys: KeySet) {
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
    }

    /// Verifies an access token's signature and claims (no store access).
    pub fn verify_access(&self, token: &str) -> Result<Claims, AuthError> {
        self.access
            .verify(&self.keys(), token)
            .map_err(AuthError::InvalidToken)
    }

    /// Sign-up by anyone: throttled per place like logins. Malformed requests are
    /// refused first and not counted (they cost nothing); the rest would reach the
    /// store and argon2.
    pub async fn signup(
        &self,
        email: &str,
        password: SecretString,
        caller: &Caller,
        now: i64,
    ) -> Result<User, AuthError> {
        if !self.policy.signup_enabled {
            return Err(AuthError::SignupDisabled);
        }
        normalize_email(email)?;
        validate::password(&password)?;
        self.check_signup_throttle(caller.ip.as_deref(), now)
            .await?;
        self.create_user(email, password, Vec::new(), None, now)
            .await
    }

    /// Creates a user (sign-up, the admin API and the CLI share this).
    pub async fn create_user(
        &self,
        email: &str,
        password: SecretString,
        roles: Vec<String>,
        actor: Option<Uuid>,
        now: i64,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email)?;
        validate::password(&password)?;
        let roles = validate::roles(roles)?;
        // A known email is refused before argon2, so repeating one costs a read, not a
        // hashing slot. The 409 says no more than it did; the unique constraint still
        // settles a race between two sign-ups of one new email.
        if self.store.user_credentials(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let hash = self.passwords.hash(&password).await?;
        let user = User {
            id: Uuid::now_v7(),
            email,
            roles,
            disabled_at: None,
            created_at: now,
        };
        let event = AuditEvent {
            at: now,
            action: if actor.is_some() {
                "admin_user_created"
            } else {
                "user_signed_up"
            }
            .into(),
            user_id: Some(user.id),
            actor_id: actor,
            detail: serde_json::json!({"roles": user.roles}),
            ..AuditEvent::default()
        };
        self.store.create_user(&user, &hash, &event).await?;
        Ok(user)
    }

    /// The password grant: checks the credentials (one argon2 run whether or not the
    /// user exists), then opens a session with its first refresh token. With a DPoP
    /// proof (already checked but for replay), the session is bound to its key.
    #[allow(clippy::too_many_arguments)]
    pub async fn login(
        &self,
        email: &str,
        password: SecretString,
        client: &RequestClient,
        scope: Option<&str>,
        dpop: Option<&dpop::Proof>,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        let client = match client {
            RequestClient::Authenticated(id) => self
                .cached_client(id)
                .await?
                .ok_or(AuthError::InvalidClient)?,
            other => self.public_client(other.id()).await?,
        };
        if client.require_dpop && dpop.is_none() {
            return Err(AuthError::DpopRequired("this client requires a DPoP proof"));
        }
        self.check_login_throttle(email, caller.ip.as_deref(), now)
            .await?;
        if let Some(proof) = dpop {
            self.claim_dpop_proof(proof).await?;
        }
        let scope = normalize_scope(scope)?;
        self.check_allowed_scope(&client, &scope)?;
        let client_id = client.id;
        // An address that cannot be an email cannot have an account; it still costs a hash.
        let email = normalize_email(email).unwrap_or_default();
        let found = if email.is_empty() {
            None
        } else {
            self.store.user_credentials(&email).await?
        };
        let (user, hash) = match found {
            Some((user, hash)) => (Some(user), Some(hash)),
            None => (None, None),
        };
        let password_ok = self.passwords.verify(&password, hash).await?;
        let user = match user {
            Some(user) if password_ok && user.disabled_at.is_none() => user,
            user => {
                let reason = match &user {
                    None => "unknown_user",
                    Some(_) if !password_ok => "wrong_password",
                    Some(_) => "user_disabled",
                };
                return self
                    .login_failed(user.map(|u| u.id), reason, &client_id, caller, now)
                    .await;
            }
        };

        let session = Session {
            id: Uuid::now_v7(),
            user_id: user.id,
            client_id: client_id.clone(),
            scope: scope.clone(),
            created_at: now,
            last_used_at: now,
            expires_at: now + self.policy.session_max_age,
            revoked_at: None,
            user_agent: caller.user_agent.clone(),
            ip: caller.ip.clone(),
            dpop_jkt: dpop.map(|p| p.jkt.clone()),
        };
        let refresh_token = self.first_refresh_token(session.id);
        let token_expires_at = (now + self.policy.refresh_token_ttl).min(session.expires_at);
        let event = AuditEvent {
            at: now,
            action: "login".into(),
            user_id: Some(user.id),
            session_id: Some(session.id),
            ip: caller.ip.clone(),
            detail: serde_json::json!({"client_id": client_id, "dpop_jkt": session.dpop_jkt}),
            ..AuditEvent::default()
        };
        let cap = crate::store::SessionCap {
            max_live: self.policy.max_sessions_per_user,
            token_tail_secs: self.token_tail_secs(),
        };
        let created = self
            .store
            .create_capped_session(
                &session,
                refresh_token.hash(),
                token_expires_at,
                &event,
                cap,
            )
            .await?;
        let Some(ended) = created else {
            // An admin disabled the user while the password was being checked.
            return self
                .login_failed(Some(user.id), "user_disabled", &client_id, caller, now)
                .await;
        };
        if !ended.is_empty() {
            self.metrics.revoked("session_limit", ended.len());
        }
        self.metrics.login(LoginOutcome::ok);
        self.login_succeeded(&user.email, caller.ip.as_deref())
            .await?;
        Ok(self.grant(
            user.id,
            session.id,
            &client_id,
            &scope,
            user.roles,
            refresh_token,
            session.dpop_jkt.as_deref(),
            now,
        ))
    }

    /// Counts and audits a refused password grant; always `invalid_grant`, whatever
    /// the reason, so the answer does not tell which part was wrong.
    async fn login_failed(
        &self,
        user_id: Option<Uuid>,
        reason: &str,
        client_id: &str,
        caller: &Caller,
        now: i64,
    ) -> Result<Grant, AuthError> {
        self.metrics.login(LoginOutcome::failed);
        self.store
            .record(&AuditEvent {
                at: now,
                action: "login_failed".into(),
                user_id,
                ip: caller.ip.clone(),
                detail: serde_json::json!({"reason": reason, "client_id": client_id}),
                ..AuditEvent::default()
            })
            .await?;
        Err(AuthError::InvalidGrant("invalid username or password"))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grant(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        client_id: &str,
        scope: &str,
        roles: Vec<String>,
        refresh_token: RefreshToken,
        dpop_jkt: Option<&str>,
        now: i64,
    ) -> Grant {
        let mut claims = self
            .access
            .claims(user_id, session_id, client_id, scope, roles, now);
        claims.cnf = dpop_jkt.map(|jkt| crate::verify::Confirmation {
            jkt: jkt.to_owned(),
        });
        Grant {
            token_type: if claims.cnf.is_some() {
                "DPoP"
            } else {
                "Bearer"
            },
            access_token: self.access.sign(&self.keys(), &claims),
            expires_in: self.access.ttl_secs,
            refresh_token,
            scope: scope.to_owned(),
        }
    }

    /// Resolves the client of a password or refresh grant: absent means the default
    /// public client; a named one must exist and be public (confidential clients
    /// authenticate separately).
    async fn public_client(&self, client_id: Option<&str>) -> Result<Client, AuthError> {
        let id = validate::client_id(client_id)?.unwrap_or(DEFAULT_CLIENT);
        match self.cached_client(id).await? {
            Some(client) if client.secret_hash.is_none() => Ok(client),
            _ => Err(AuthError::InvalidClient),
        }
    }
}
