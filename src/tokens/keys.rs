//! Signing keys: generated here, kept in the store with the private part encrypted
//! under the configured secret key, parsed once into a [`KeySet`] that signs access
//! tokens and serves the JWKS.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

use super::random_bytes;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the secret key must be 32 bytes, base64-encoded (make one with: head -c 32 /dev/urandom | base64)"
    )]
    BadSecretKey,
    #[error(
        "signing key {0} cannot be decrypted with this secret key (was TESSERA_SECRET_KEY changed?)"
    )]
    Undecryptable(String),
    #[error("signing key {0} is malformed")]
    Malformed(String),
    #[error("no signing key is active")]
    NoActiveKey,
}

/// The key that encrypts private signing keys at rest.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    pub fn generate() -> Self {
        Self(random_bytes())
    }

    /// Accepts standard or URL-safe base64 of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| KeyError::BadSecretKey)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Self)
            .map_err(|_| KeyError::BadSecretKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// A signing key as the store keeps it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub public_jwk: String,
    pub private_sealed: Vec<u8>,
    pub created_at: i64,
    pub activates_at: i64,
    pub retires_at: Option<i64>,
}

/// Makes a new Ed25519 signing key, sealed for the store.
pub fn generate_ed25519(secret: &SecretKey, now: i64) -> StoredKey {
    let seed: [u8; 32] = random_bytes();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public.as_bytes())[..12]);
    let jwk = serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(public.as_bytes()),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    });
    StoredKey {
        private_sealed: seal(secret, &kid, &seed),
        kid,
        alg: "EdDSA".to_owned(),
        public_jwk: jwk.to_string(),
        created_at: now,
        activates_at: now,
        retires_at: None,
    }
}

fn seal(secret: &SecretKey, kid: &str, plain: &[u8]) -> Vec<u8> {
    let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
    let mut out = nonce_bytes.to_vec();
    let payload = Payload {
        msg: plain,
        aad: kid.as_bytes(),
    };
    if let Ok(ct) = secret.cipher().encrypt(&Nonce::from(nonce_bytes), payload) {
        out.extend_from_slice(&ct);
    }
    out
}

fn open(secret: &SecretKey, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    let undecryptable = || KeyError::Undecryptable(kid.to_owned());
    let (nonce, ct) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or_else(undecryptable)?;
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| undecryptable())?;
    let payload = Payload {
        msg: ct,
        aad: kid.as_bytes(),
    };
    secret
        .cipher()
        .decrypt(&Nonce::from(nonce), payload)
        .map_err(|_| undecryptable())
}

/// The private half, parsed once.
pub(crate) enum Signer {
    Ed25519(ed25519_dalek::SigningKey),
}

/// The key that signs new tokens: its parsed private part and its pre-encoded header.
pub(crate) struct ActiveKey {
    pub signer: Signer,
    /// base64url of `{"alg":..,"typ":"at+jwt","kid":..}`, fixed per key.
    pub encoded_header: String,
}

/// A public key that verifies tokens, parsed once.
pub(crate) struct VerifyKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Every published key, and the one that signs.
pub struct KeySet {
    pub(crate) active: ActiveKey,
    pub(crate) verify: HashMap<String, VerifyKey>,
    /// The JWKS document, serialised once.
    jwks: String,
}

impl KeySet {
    /// Builds the set from the store's keys: publishes every unretired key and signs
    /// with the newest one already active at `now` (the same choice on every instance).
    pub fn load(secret: &SecretKey, keys: &[StoredKey], now: i64) -> Result<Self, KeyError> {
        let published: Vec<&StoredKey> = keys
            .iter()
            .filter(|k| k.retires_at.is_none_or(|r| r > now))
            .collect();
        let signing = published
            .iter()
            .filter(|k| k.activates_at <= now)
            .max_by_key(|k| (k.activates_at, k.created_at, k.kid.clone()))
            .ok_or(KeyError::NoActiveKey)?;

        let mut verify = HashMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        for key in &published {
            let malformed = || KeyError::Malformed(key.kid.clone());
            let jwk: Jwk = serde_json::from_str(&key.public_jwk).map_err(|_| malformed())?;
            let alg = key.alg.parse::<Algorithm>().map_err(|_| malformed())?;
            let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| malformed())?;
            verify.insert(key.kid.clone(), VerifyKey { alg, key: decoding });
            jwks.keys.push(jwk);
        }

        let seed = open(secret, &signing.kid, &signing.private_sealed)?;
        let seed = <[u8; 32]>::try_from(seed.as_slice())
            .map_err(|_| KeyError::Malformed(signing.kid.clone()))?;
        let header = serde_json::json!({"alg": signing.alg, "typ": "at+jwt", "kid": signing.kid});
        Ok(Self {
            active: ActiveKey {
                signer: Signer::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)),
                encoded_header: URL_SAFE_NO_PAD.encode(header.to_string()),
            },
            verify,
            jwks: serde_json::to_string(&jwks).unwrap_or_default(),
        })
    }

    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_round_trips_and_rejects_bad_lengths() {
        let key = SecretKey::generate();
        assert!(SecretKey::parse(&key.to_base64()).is_ok());
        assert!(SecretKey::parse("c2hvcnQ=").is_err());
        assert!(SecretKey::parse("not base64 at all!").is_err());
    }

    #[test]
    fn private_key_opens_only_with_the_same_secret() -> Result<(), KeyError> {
        let secret = SecretKey::generate();
        let stored = generate_ed25519(&secret, 100);
        let set = KeySet::load(&secret, std::slice::from_ref(&stored), 100)?;
        assert!(set.jwks_json().contains(&stored.kid));
        assert!(
            !set.jwks_json().contains("\"d\""),
            "no private part in the JWKS"
        );
        assert!(matches!(
            KeySet::load(&SecretKey::generate(), &[stored], 100),
            Err(KeyError::Undecryptable(_))
        ));
        Ok(())
    }

    #[test]
    fn signs_with_newest_active_key_and_publishes_all_unretired() -> Result<(), KeyError> {
        let secret = SecretKey::generate();
        let old = generate_ed25519(&secret, 100);
        let mut new = generate_ed25519(&secret, 200);
        let mut future = generate_ed25519(&secret, 200);
        future.activates_at = 10_000;
        let mut retired = generate_ed25519(&secret, 50);
        retired.retires_at = Some(150);
        new.activates_at = 200;
        let set = KeySet::load(
            &secret,
            &[old.clone(), new.clone(), future.clone(), retired.clone()],
            300,
        )?;
        assert!(set.active.encoded_header.len() > 10);
        let header = URL_SAFE_NO_PAD
            .decode(&set.active.encoded_header)
            .unwrap_or_default();
        assert!(String::from_utf8_lossy(&header).contains(&new.kid));
        assert!(set.verify.contains_key(&old.kid));
        assert!(
            set.verify.contains_key(&future.kid),
            "published before it signs"
        );
        assert!(!set.verify.contains_key(&retired.kid));
        Ok(())
    }
}
