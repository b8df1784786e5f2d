//! For backend services: verify Tessera access tokens offline, learn revocations
//! within milliseconds, and protect axum routes with an extractor.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tessera::verify::SetupError> {
//! use tessera::verify::{Authenticated, Verifier, VerifierConfig};
//! let verifier = Verifier::new(VerifierConfig::new("https://auth.example.com", "https://api.example.com")).await?;
//! // Optional: reject tokens of revoked sessions within ~100 ms instead of at `exp`.
//! verifier.subscribe_revocations("my-service-client-id", "its-secret");
//! let app: axum::Router = axum::Router::new()
//!     .route("/hello", axum::routing::get(|user: Authenticated| async move { format!("hi {}", user.0.sub) }))
//!     .with_state(verifier);
//! # Ok(()) }
//! ```

mod claims;
pub mod dpop;
mod extract;
mod jwks;
mod revocations;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use claims::{
    ALGORITHMS, Claims, Confirmation, Key, MAX_TOKEN_BYTES, Rules, VerifyError, hs256_kid,
};
pub use extract::Authenticated;
use jsonwebtoken::{Algorithm, DecodingKey};
use uuid::Uuid;

/// How a verifier finds its issuer.
#[derive(Clone)]
pub struct VerifierConfig {
    /// The server's base URL; JWKS and revocations are fetched from it.
    pub base_url: String,
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway: Duration,
    /// At most one JWKS refetch for an unknown `kid` per this interval.
    pub min_refetch_interval: Duration,
    /// For an HS256 deployment: the shared secret (no JWKS entry exists for it).
    pub hs256_secret: Option<Vec<u8>>,
    /// The HTTP client; bring one with TLS enabled to reach an `https` issuer.
    pub http: reqwest::Client,
    /// This service's public base URL (`https://api.example.com`): DPoP proofs must
    /// name it plus the request's path in `htu`. `None`: the [`Authenticated`]
    /// extractor refuses DPoP-bound tokens (`VerifyError::ResourceUrlUnset`), since the
    /// request's `Host` header is the client's to choose and would let a proof made for
    /// another service be replayed here. Bearer tokens work either way.
    pub resource_url: Option<String>,
    /// The DPoP replay cache: how many proofs it remembers at most, and at most per
    /// user (see [`dpop::ReplayCache`]). Defaults 100,000 and 2,000.
    pub dpop_replay_capacity: usize,
    pub dpop_replay_per_user: u32,
}

impl VerifierConfig {
    /// `issuer` is also the base URL; the audience is what the server was configured with.
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            base_url: issuer.trim_end_matches('/').to_owned(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: Duration::from_secs(5),
            min_refetch_interval: Duration::from_secs(10),
            hs256_secret: None,
            http: reqwest::Client::new(),
            resource_url: None,
            dpop_replay_capacity: 100_000,
            dpop_replay_per_user: 2_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot fetch the JWKS: {0}")]
    Jwks(String),
}

struct KeyCache {
    keys: HashMap<String, Key>,
    /// When the JWKS's `Cache-Control: max-age` runs out.
    fresh_until: Instant,
    last_fetch: Instant,
}

pub(crate) struct Inner {
    config: VerifierConfig,
    rules: Rules,
    keys: RwLock<KeyCache>,
    fetching: tokio::sync::Mutex<()>,
    /// Revoked session ids and when their last access token expires.
    revoked: RwLock<HashMap<Uuid, i64>>,
    /// Counts revocations applied, for callers that want to wait on them.
    applied: tokio::sync::watch::Sender<u64>,
    /// DPoP proofs seen, against replay (this process only).
    proofs: dpop::ReplayCache,
}

/// Verifies access tokens against the issuer's published keys. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    pub(crate) inner: Arc<Inner>,
}

/// A bound token presented on its own, as a bearer token, is not accepted.
fn bearer_only(claims: Result<Claims, VerifyError>) -> Result<Claims, VerifyError> {
    match claims {
        Ok(c) if c.cnf.is_some() => Err(VerifyError::DpopBoundAsBearer),
        other => other,
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Verifier {
    /// Fetches the JWKS once; fails if the issuer cannot be reached.
    pub async fn new(config: VerifierConfig) -> Result<Self, SetupError> {
        let fetched = jwks::fetch(&config.http, &config.base_url)
            .await
            .map_err(SetupError::Jwks)?;
        Ok(Self::with_keys(config, fetched))
    }

    /// Starts from a JWKS document already in hand (no I/O); later refetches still go
    /// to `config.base_url`.
    pub fn from_jwks(config: VerifierConfig, jwks_json: &str) -> Result<Self, SetupError> {
        let fetched = jwks::parse(jwks_json, jwks::DEFAULT_MAX_AGE).map_err(SetupError::Jwks)?;
        Ok(Self::with_keys(config, fetched))
    }

    fn with_keys(config: VerifierConfig, fetched: jwks::Fetched) -> Self {
        match config.resource_url.as_deref() {
            None => tracing::info!(
                "verifier: no resource_url configured; DPoP-bound access tokens will be refused"
            ),
            Some(url) if dpop::normalize_url(url).is_none() => tracing::warn!(
                resource_url = url,
                "verifier: resource_url is not an absolute http(s) URL; every DPoP proof will fail its htu check"
            ),
            Some(_) => {}
        }
        let rules = Rules::new(&config.issuer, &config.audience, config.leeway.as_secs());
        let now = Instant::now();
        let mut keys = fetched.keys;
        if let Some(secret) = &config.hs256_secret
            && let Ok(key) = DecodingKey::from_secret(secret)
        {
            keys.insert(
                hs256_kid(secret),
                Key {
                    alg: Algorithm::HS256,
                    key,
                },
            );
        }
        Self {
            inner: Arc::new(Inner {
                rules,
                keys: RwLock::new(KeyCache {
                    keys,
                    fresh_until: now + fetched.max_age,
                    last_fetch: now,
                }),
                fetching: tokio::sync::Mutex::new(()),
                revoked: RwLock::new(HashMap::new()),
                applied: tokio::sync::watch::Sender::new(0),
                proofs: dpop::ReplayCache::new(
                    config.dpop_replay_capacity,
                    config.dpop_replay_per_user,
                ),
                config,
            }),
        }
    }

    /// Verifies a bearer token with the cached keys only: no I/O. `UnknownKey` means a
    /// refetch may help. A DPoP-bound token is refused (`DpopBoundAsBearer`): it is good
    /// only with its proof, which [`Verifier::verify_request`] checks.
    pub fn verify_cached(&self, token: &str) -> Result<Claims, VerifyError> {
        bearer_only(self.token_cached(token))
    }

    fn token_cached(&self, token: &str) -> Result<Claims, VerifyError> {
        let claims = {
            let cache = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
            self.inner.rules.decode(token, |kid| cache.keys.get(kid))?
        };
        if self.is_revoked(claims.sid) {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }

    /// Verifies a bearer token, refetching the JWKS when its cache lifetime is over or
    /// the token names an unknown `kid` (at most once per `min_refetch_interval`). A
    /// DPoP-bound token is refused (`DpopBoundAsBearer`): use
    /// [`Verifier::verify_request`] (or the [`Authenticated`] extractor), which checks
    /// its proof.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        bearer_only(self.token(token).await)
    }

    /// Signature and claims, bound or not.
    async fn token(&self, token: &str) -> Result<Claims, VerifyError> {
        let stale = {
            let cache = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
            Instant::now() >= cache.fresh_until
        };
        if stale {
            self.refetch(Duration::ZERO).await;
        }
        match self.token_cached(token) {
            Err(VerifyError::UnknownKey)
                if self.refetch(self.inner.config.min_refetch_interval).await =>
            {
                self.token_cached(token)
            }
            other => other,
        }
    }

    /// Verifies an access token as a request presents it: `authorization` is the
    /// `Authorization` header (`Bearer` or `DPoP` scheme), `proof` the `DPoP` header.
    /// A DPoP-bound token needs the DPoP scheme and a proof by its key for this
    /// `method` and `url` (with `ath`), not seen before by this verifier; an unbound
    /// token the Bearer scheme.
    pub async fn verify_request(
        &self,
        authorization: &str,
        proof: Option<&str>,
        method: &str,
        url: &str,
        also_url: Option<&str>,
    ) -> Result<Claims, VerifyError> {
        self.request(authorization, proof, method, Some(url), also_url)
            .await
    }

    /// [`Verifier::verify_request`] for a service that may not know its public URL
    /// (`url: None`): bound tokens are then refused.
    pub(crate) async fn request(
        &self,
        authorization: &str,
        proof: Option<&str>,
        method: &str,
        url: Option<&str>,
        also_url: Option<&str>,
    ) -> Result<Claims, VerifyError> {
        let (scheme, token) = dpop::authorization(authorization).ok_or(VerifyError::Malformed)?;
        let claims = self.token(token).await?;
        let cnf = claims.cnf.as_ref().map(|c| c.jkt.as_str());
        let url = match (url, cnf, scheme) {
            (Some(url), _, _) => url,
            (None, Some(_), dpop::Scheme::DPoP) => return Err(VerifyError::ResourceUrlUnset),
            // Not checked: the scheme alone decides (a bound token as Bearer, an
            // unbound one as DPoP, are refused; an unbound Bearer token passes).
            (None, _, _) => "",
        };
        let now = now_unix();
        let expect = dpop::Expect {
            method,
            url,
            also_url,
            access_token: Some(token),
            now,
        };
        match dpop::check_use(cnf, scheme, token, proof, &expect) {
            Ok(None) => Ok(claims),
            Ok(Some(proof)) => match self
                .inner
                .proofs
                .claim(&proof, &claims.sub.to_string(), now)
            {
                dpop::Claim::Fresh => Ok(claims),
                dpop::Claim::Replayed => Err(VerifyError::Dpop(dpop::ProofError::Replayed)),
                dpop::Claim::Full => Err(VerifyError::Busy),
            },
            Err(dpop::UseError::BoundAsBearer) => Err(VerifyError::DpopBoundAsBearer),
            Err(dpop::UseError::NotBound) => Err(VerifyError::NotDpopBound),
            Err(dpop::UseError::Proof(e)) => Err(VerifyError::Dpop(e)),
        }
    }

    /// Refetches the JWKS unless the last fetch is younger than `min_age`. Concurrent
    /// callers share one fetch. Returns whether a fetch happened and succeeded. On
    /// failure the old keys stay in use.
    async fn refetch(&self, min_age: Duration) -> bool {
        let _guard = self.inner.fetching.lock().await;
        let recent = {
            let cache = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
            cache.last_fetch.elapsed() < min_age
                || (min_age.is_zero() && Instant::now() < cache.fresh_until)
        };
        if recent {
            return false;
        }
        let result = jwks::fetch(&self.inner.config.http, &self.inner.config.base_url).await;
        let mut cache = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        cache.last_fetch = Instant::now();
        match result {
            Ok(fetched) => {
                let hs = cache
                    .keys
                    .iter()
                    .filter(|(_, k)| k.alg == Algorithm::HS256)
                    .map(|(kid, k)| (kid.clone(), k.clone()))
                    .collect::<Vec<_>>();
                cache.keys = fetched.keys;
                cache.keys.extend(hs);
                cache.fresh_until = Instant::now() + fetched.max_age;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch failed; keeping the cached keys");
                cache.fresh_until = Instant::now() + self.inner.config.min_refetch_interval;
                false
            }
        }
    }

    pub fn is_revoked(&self, session_id: Uuid) -> bool {
        self.inner
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&session_id)
    }

    /// Records a revocation (the feed calls this); entries go once their tokens expire.
    pub fn mark_revoked(&self, session_id: Uuid, tokens_expire_at: i64) {
        let now = now_unix();
        let mut revoked = self
            .inner
            .revoked
            .write()
            .unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, until| *until > now);
        if tokens_expire_at > now {
            revoked.insert(session_id, tokens_expire_at);
        }
        drop(revoked);
        self.inner.applied.send_modify(|n| *n += 1);
    }

    /// Changes each time a revocation is applied: lets a caller wait for the feed
    /// instead of polling (tests, benchmarks, metrics).
    pub fn revocations_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Follows the server's revocation stream (Server-Sent Events) in the background,
    /// reconnecting as needed, so tokens of revoked sessions are rejected at once.
    /// Authenticates as a confidential client.
    pub fn subscribe_revocations(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> tokio::task::JoinHandle<()> {
        revocations::spawn(self.clone(), client_id.to_owned(), client_secret.to_owned())
    }

    pub(crate) fn config(&self) -> &VerifierConfig {
        &self.inner.config
    }
}
