//! OAuth clients: the default public client of first-party apps, and confidential
//! clients (backend services) whose secret is shown once and stored as SHA-256. Each
//! client has a scope allow-list; nothing outside it is granted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{Auth, AuthError, DEFAULT_CLIENT, validate};
use crate::store::Client;
use crate::tokens::random_bytes;

/// How long a client looked up for authentication is remembered: introspection and
/// the revocation feed stay at most one database read per call.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;

/// Recently read clients (and ids known not to exist).
#[derive(Default)]
pub struct ClientCache(Mutex<HashMap<String, (Option<Client>, Instant)>>);

/// A new client's id and, for a confidential one, its secret (shown once).
#[derive(Debug)]
pub struct NewClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Its scope allow-list, normalised.
    pub scopes: String,
    pub require_dpop: bool,
}

/// A client secret is 256 random bits, so a plain SHA-256 is as strong as a slow hash.
fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Auth {
    /// Registers a client with no scopes (see [`Auth::create_client_with_scopes`]).
    pub async fn create_client(
        &self,
        name: &str,
        confidential: bool,
        now: i64,
    ) -> Result<NewClient, AuthError> {
        self.create_client_with_scopes(name, confidential, "", false, now)
            .await
    }

    /// Registers a client allowed the scopes in `scopes` (space-separated) and no others;
    /// with `require_dpop`, its token requests must carry a DPoP proof.
    pub async fn create_client_with_scopes(
        &self,
        name: &str,
        confidential: bool,
        scopes: &str,
        require_dpop: bool,
        now: i64,
    ) -> Result<NewClient, AuthError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(AuthError::InvalidRequest(
                "the client name must be 1 to 200 printable characters".into(),
            ));
        }
        let scopes = validate::normalize_scope(Some(scopes))?;
        let client_id = format!("svc_{}", URL_SAFE_NO_PAD.encode(random_bytes::<12>()));
        let client_secret =
            confidential.then(|| format!("tsc_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>())));
        let client = Client {
            id: client_id.clone(),
            name: name.to_owned(),
            secret_hash: client_secret.as_deref().map(secret_hash),
            scopes: scopes.clone(),
            require_dpop,
            created_at: now,
        };
        self.store.create_client(&client).await?;
        Ok(NewClient {
            client_id,
            client_secret,
            scopes,
            require_dpop,
        })
    }

    /// The scopes `client` may be granted: its own list, or for the default client
    /// the configured one.
    pub fn allowed_scopes<'a>(&'a self, client: &'a Client) -> &'a str {
        if client.id == DEFAULT_CLIENT {
            &self.default_client_scopes
        } else {
            &client.scopes
        }
    }

    /// Every scope asked for (normalised) must be on the client's allow-list.
    pub(crate) fn check_allowed_scope(
        &self,
        client: &Client,
        scope: &str,
    ) -> Result<(), AuthError> {
        let allowed: Vec<&str> = self.allowed_scopes(client).split(' ').collect();
        if scope
            .split(' ')
            .any(|s| !s.is_empty() && !allowed.contains(&s))
        {
            return Err(AuthError::InvalidScope(
                "the requested scope is not allowed for this client",
            ));
        }
        Ok(())
    }

    /// Every registered client, with its allow-list as it applies (the default
    /// client's from config).
    pub async fn list_clients(&self) -> Result<Vec<Client>, AuthError> {
        let mut clients = self.store.clients().await?;
        for c in &mut clients {
            if c.id == DEFAULT_CLIENT {
                c.scopes.clone_from(&self.default_client_scopes);
            }
        }
        Ok(clients)
    }

    pub(crate) async fn cached_client(&self, id: &str) -> Result<Option<Client>, AuthError> {
        {
            let cache = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((client, at)) = cache.get(id)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(client.clone());
            }
        }
        let client = self.store.client(id).await?;
        let mut cache = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.to_owned(), (client.clone(), Instant::now()));
        Ok(client)
    }

    /// Authenticates a confidential client by id and secret.
    pub async fn authenticate_client(&self, id: &str, secret: &str) -> Result<Client, AuthError> {
        let id = validate::client_id(Some(id))?.unwrap_or_default();
        match self.cached_client(id).await? {
            Some(client)
                if client
                    .secret_hash
                    .as_deref()
                    .is_some_and(|h| same(h, &secret_hash(secret))) =>
            {
                Ok(client)
            }
            _ => Err(AuthError::InvalidClient),
        }
    }
}
