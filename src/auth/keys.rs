//! Signing-key lifecycle: the first key, rotation (by hand or every N days), and the
//! reload that lets every instance pick up key changes without a restart.
//!
//! Rotation publishes the new key `publish_lead` seconds before it signs (one JWKS cache
//! lifetime plus two reload periods, so every instance and every verifier cache has it
//! first), and keeps the old public key until every token it signed has expired.

use jsonwebtoken::Algorithm;

use super::{Auth, AuthError};
use crate::store::{KeyRotation, Store};
use crate::tokens::access::LEEWAY_SECS;
use crate::tokens::keys::{self, KeyError, KeySet, SecretKey, SharedSecret, StoredKey};

/// How keys are made and rotated.
#[derive(Clone)]
pub struct KeyPolicy {
    pub secret: SecretKey,
    pub alg: Algorithm,
    pub hs256: Option<SharedSecret>,
    /// 0 disables automatic rotation.
    pub rotation_secs: i64,
    pub publish_lead_secs: i64,
    /// How often every instance re-reads the keys.
    pub reload_secs: i64,
}

/// Loads the key set, creating the first key if the store has none (instances that
/// start together agree on one).
pub async fn bootstrap(
    store: &dyn Store,
    policy: &KeyPolicy,
    now: i64,
) -> Result<KeySet, AuthError> {
    let stored = store.signing_keys().await?;
    match KeySet::load(&policy.secret, &stored, policy.hs256.as_ref(), now) {
        Err(KeyError::NoActiveKey) => {
            store
                .insert_first_signing_key(&new_key(policy, now)?)
                .await?;
            let stored = store.signing_keys().await?;
            KeySet::load(&policy.secret, &stored, policy.hs256.as_ref(), now).map_err(key_error)
        }
        other => other.map_err(key_error),
    }
}

fn key_error(e: KeyError) -> AuthError {
    AuthError::Internal(e.to_string())
}

/// HS256 deployments still keep an asymmetric key in the store (published, unused for
/// signing), so switching back needs no bootstrap.
fn new_key(policy: &KeyPolicy, now: i64) -> Result<StoredKey, AuthError> {
    let alg = if policy.alg == Algorithm::HS256 {
        Algorithm::EdDSA
    } else {
        policy.alg
    };
    keys::generate(alg, &policy.secret, now).map_err(key_error)
}

impl Auth {
    /// Re-reads the keys from the store: picks up keys rotated by other instances and
    /// switches to a pending key once it is active at `now`.
    pub async fn reload_keys(&self, now: i64) -> Result<(), AuthError> {
        let stored = self.store.signing_keys().await?;
        let set = KeySet::load(
            &self.key_policy.secret,
            &stored,
            self.key_policy.hs256.as_ref(),
            now,
        )
        .map_err(key_error)?;
        self.replace_keys(set);
        Ok(())
    }

    /// Rotates now (`force`), or only when due: the newest key is older than the
    /// rotation period, or was made for another algorithm than the configured one.
    /// Returns whether a key was added. Safe to call from every instance at once.
    pub async fn rotate_keys(&self, now: i64, force: bool) -> Result<bool, AuthError> {
        let policy = &self.key_policy;
        if policy.hs256.is_some() && !force {
            // Signing uses the shared secret; the stored key only waits in reserve.
            return Ok(false);
        }
        let stored = self.store.signing_keys().await?;
        let newest = stored.iter().max_by_key(|k| (k.created_at, k.kid.clone()));
        let wanted_alg = keys::alg_name(if policy.alg == Algorithm::HS256 {
            Algorithm::EdDSA
        } else {
            policy.alg
        });
        // Rotate unless a key newer than this exists (checked again inside the store).
        let unless_created_since = match newest {
            _ if force => None,
            None => None,
            // Another algorithm configured: rotate, but not again within one publication
            // lead (instances mid-rollout with different settings must not churn keys).
            Some(k) if k.alg != wanted_alg && now - k.created_at > policy.publish_lead_secs => {
                Some(k.created_at + 1)
            }
            Some(k) if k.alg != wanted_alg => return Ok(false),
            Some(_) if policy.rotation_secs > 0 => Some(now - policy.rotation_secs),
            Some(_) => return Ok(false),
        };
        if let (Some(threshold), Some(k)) = (unless_created_since, newest)
            && k.created_at >= threshold
        {
            return Ok(false);
        }
        let mut key = new_key(policy, now)?;
        key.activates_at = now + policy.publish_lead_secs;
        let rotation = KeyRotation {
            // Instances switch to the new key at their first reload after it activates.
            retire_old_at: key.activates_at
                + policy.reload_secs
                + self.access.ttl_secs
                + LEEWAY_SECS as i64,
            unless_created_since,
            prune_retired_before: now - 86_400,
            key,
        };
        let added = self.store.rotate_signing_keys(&rotation).await?;
        if added {
            tracing::info!(kid = %rotation.key.kid, alg = %rotation.key.alg, activates_at = rotation.key.activates_at, "signing key rotated");
            self.reload_keys(now).await?;
        }
        Ok(added)
    }
}
