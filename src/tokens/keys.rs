//! Signing keys: generated here (EdDSA, ES256, RS256), kept in the store with the
//! private part encrypted under the configured secret key, parsed once into a
//! [`KeySet`] that signs access tokens and serves the JWKS. HS256 is a shared secret
//! from the configuration, never stored and never published.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

use super::random_bytes;
use crate::verify::{Key, hs256_kid};

const NONCE_LEN: usize = 12;
const RSA_BITS: usize = 2048;

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
    #[error("cannot generate a {0} key")]
    Generate(&'static str),
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

    /// 32 bytes for one purpose, derived from the secret key (HKDF-SHA-256 with the
    /// purpose as info), so other uses never see the key itself.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0).expand(purpose.as_bytes(), &mut out);
        out
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }

    fn seal(&self, kid: &str, plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let mut out = nonce_bytes.to_vec();
        let payload = Payload {
            msg: plain,
            aad: kid.as_bytes(),
        };
        if let Ok(ct) = self.cipher().encrypt(&Nonce::from(nonce_bytes), payload) {
            out.extend_from_slice(&ct);
        }
        out
    }

    fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let undecryptable = || KeyError::Undecryptable(kid.to_owned());
        let (nonce, ct) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or_else(undecryptable)?;
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| undecryptable())?;
        let payload = Payload {
            msg: ct,
            aad: kid.as_bytes(),
        };
        self.cipher()
            .decrypt(&Nonce::from(nonce), payload)
            .map_err(|_| undecryptable())
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
    /// When it starts signing. Until then it is only published.
    pub activates_at: i64,
    /// When it leaves the JWKS: after every token it signed has expired.
    pub retires_at: Option<i64>,
}

fn kid_of(public: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12])
}

/// Makes a new signing key for `alg` (EdDSA, ES256 or RS256), sealed for the store.
pub fn generate(alg: Algorithm, secret: &SecretKey, now: i64) -> Result<StoredKey, KeyError> {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let (private, public_id, mut jwk) = match alg {
        Algorithm::EdDSA => {
            let seed: [u8; 32] = random_bytes();
            let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            let jwk =
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public.as_bytes())});
            (seed.to_vec(), public.as_bytes().to_vec(), jwk)
        }
        Algorithm::ES256 => {
            // A random 32-byte string is a valid scalar but with negligible probability.
            let key = (0..8)
                .find_map(|_| p256::ecdsa::SigningKey::from_slice(&random_bytes::<32>()).ok())
                .ok_or(KeyError::Generate("ES256"))?;
            let point = key.verifying_key().to_sec1_point(false);
            let (x, y) = (
                point.x().ok_or(KeyError::Generate("ES256"))?,
                point.y().ok_or(KeyError::Generate("ES256"))?,
            );
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
            (key.to_bytes().to_vec(), point.as_bytes().to_vec(), jwk)
        }
        Algorithm::RS256 => {
            let key = rsa::PrivateKey::new(&mut rand::rngs::SysRng, RSA_BITS)
                .map_err(|_| KeyError::Generate("RS256"))?;
            let der = key
                .to_pkcs1_der()
                .map_err(|_| KeyError::Generate("RS256"))?;
            let public = key.to_public_key();
            let (n, e) = (public.n_bytes(), public.e_bytes());
            let jwk = serde_json::json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)});
            (der.as_bytes().to_vec(), n.to_vec(), jwk)
        }
        _ => return Err(KeyError::Generate("this algorithm's")),
    };
    let kid = kid_of(&public_id);
    let alg_name = alg_name(alg);
    jwk["kid"] = kid.clone().into();
    jwk["alg"] = alg_name.into();
    jwk["use"] = "sig".into();
    Ok(StoredKey {
        private_sealed: secret.seal(&kid, &private),
        kid,
        alg: alg_name.to_owned(),
        public_jwk: jwk.to_string(),
        created_at: now,
        activates_at: now,
        retires_at: None,
    })
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::HS256 => "HS256",
        _ => "unsupported",
    }
}

/// The private half, parsed once.
pub(crate) enum Signer {
    Ed25519(ed25519_dalek::SigningKey),
    Es256(p256::ecdsa::SigningKey),
    Rs256(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    Hs256(EncodingKey),
}

impl Signer {
    fn parse(key: &StoredKey, private: &[u8]) -> Result<Self, KeyError> {
        let malformed = || KeyError::Malformed(key.kid.clone());
        match key.alg.as_str() {
            "EdDSA" => {
                let seed = <[u8; 32]>::try_from(private).map_err(|_| malformed())?;
                Ok(Self::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            "ES256" => p256::ecdsa::SigningKey::from_slice(private)
                .map(Self::Es256)
                .map_err(|_| malformed()),
            "RS256" => rsa::PrivateKey::from_pkcs1_der(private)
                .map(|k| Self::Rs256(Box::new(rsa::pkcs1v15::SigningKey::new(k))))
                .map_err(|_| malformed()),
            _ => Err(malformed()),
        }
    }

    /// The base64url signature of `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> String {
        use rsa::signature::{SignatureEncoding, Signer as _};
        let raw: Vec<u8> = match self {
            Self::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            Self::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                sig.to_bytes().to_vec()
            }
            Self::Rs256(k) => k.sign(message).to_vec(),
            Self::Hs256(k) => {
                return jsonwebtoken::crypto::sign(message, k, Algorithm::HS256)
                    .unwrap_or_default();
            }
        };
        URL_SAFE_NO_PAD.encode(raw)
    }
}

/// The key that signs new tokens: its parsed private part and its pre-encoded header.
pub(crate) struct ActiveKey {
    pub signer: Signer,
    /// base64url of `{"alg":..,"typ":"at+jwt","kid":..}`, fixed per key.
    pub encoded_header: String,
    pub kid: String,
}

/// Every published key, and the one that signs.
pub struct KeySet {
    pub(crate) active: ActiveKey,
    pub(crate) verify: HashMap<String, Key>,
    /// The JWKS document, serialised once.
    jwks: String,
}

/// An HS256 shared secret, when the operator opted in.
#[derive(Clone)]
pub struct SharedSecret(pub Vec<u8>);

impl KeySet {
    /// Builds the set from the store's keys: publishes every unretired key and signs
    /// with the newest one already active at `now` (the same choice on every instance),
    /// or with the HS256 shared secret when one is given.
    pub fn load(
        secret: &SecretKey,
        keys: &[StoredKey],
        hs256: Option<&SharedSecret>,
        now: i64,
    ) -> Result<Self, KeyError> {
        let published: Vec<&StoredKey> = keys
            .iter()
            .filter(|k| k.retires_at.is_none_or(|r| r > now))
            .collect();
        let mut verify = HashMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        for key in &published {
            let malformed = || KeyError::Malformed(key.kid.clone());
            let jwk: Jwk = serde_json::from_str(&key.public_jwk).map_err(|_| malformed())?;
            let alg = key.alg.parse::<Algorithm>().map_err(|_| malformed())?;
            let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| malformed())?;
            verify.insert(key.kid.clone(), Key { alg, key: decoding });
            jwks.keys.push(jwk);
        }

        let (signer, kid, alg) = match hs256 {
            Some(shared) => {
                let kid = hs256_kid(&shared.0);
                let encoding = EncodingKey::from_secret(&shared.0)
                    .map_err(|_| KeyError::Malformed(kid.clone()))?;
                let decoding = DecodingKey::from_secret(&shared.0)
                    .map_err(|_| KeyError::Malformed(kid.clone()))?;
                verify.insert(
                    kid.clone(),
                    Key {
                        alg: Algorithm::HS256,
                        key: decoding,
                    },
                );
                (Signer::Hs256(encoding), kid, "HS256".to_owned())
            }
            None => {
                let signing = published
                    .iter()
                    .filter(|k| k.activates_at <= now)
                    .max_by_key(|k| (k.activates_at, k.created_at, k.kid.clone()))
                    .ok_or(KeyError::NoActiveKey)?;
                let private = secret.open(&signing.kid, &signing.private_sealed)?;
                (
                    Signer::parse(signing, &private)?,
                    signing.kid.clone(),
                    signing.alg.clone(),
                )
            }
        };
        let header = serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        Ok(Self {
            active: ActiveKey {
                signer,
                encoded_header: URL_SAFE_NO_PAD.encode(header.to_string()),
                kid,
            },
            verify,
            jwks: serde_json::to_string(&jwks).unwrap_or_default(),
        })
    }

    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// The `kid` new tokens are signed with.
    pub fn active_kid(&self) -> &str {
        &self.active.kid
    }

    /// The base64url signature of a JWS signing input (`header.payload`) by the active
    /// key. The server mints only through `AccessTokens::sign`; this is for tests that
    /// need tokens it would never mint (extra or duplicate members, `nbf`), signed by a
    /// real key so that only the oddity can be why they fail.
    #[doc(hidden)]
    pub fn sign_input(&self, signing_input: &str) -> String {
        self.active.signer.sign(signing_input.as_bytes())
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
        let stored = generate(Algorithm::EdDSA, &secret, 100)?;
        let set = KeySet::load(&secret, std::slice::from_ref(&stored), None, 100)?;
        assert!(set.jwks_json().contains(&stored.kid));
        assert!(
            !set.jwks_json().contains("\"d\""),
            "no private part in the JWKS"
        );
        assert!(matches!(
            KeySet::load(&SecretKey::generate(), &[stored], None, 100),
            Err(KeyError::Undecryptable(_))
        ));
        Ok(())
    }

    #[test]
    fn every_algorithm_generates_loads_and_publishes() -> Result<(), KeyError> {
        let secret = SecretKey::generate();
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let stored = generate(alg, &secret, 0)?;
            let set = KeySet::load(&secret, std::slice::from_ref(&stored), None, 0)?;
            assert_eq!(set.active_kid(), stored.kid);
            assert_eq!(set.verify[&stored.kid].alg, alg);
            let jwks: serde_json::Value = serde_json::from_str(set.jwks_json()).unwrap_or_default();
            assert_eq!(jwks["keys"][0]["alg"], alg_name(alg));
            assert!(jwks["keys"][0].get("d").is_none() && jwks["keys"][0].get("p").is_none());
        }
        Ok(())
    }

    #[test]
    fn hs256_signs_with_the_shared_secret_and_publishes_nothing() -> Result<(), KeyError> {
        let secret = SecretKey::generate();
        let stored = generate(Algorithm::EdDSA, &secret, 0)?;
        let shared = SharedSecret(vec![7; 32]);
        let set = KeySet::load(&secret, std::slice::from_ref(&stored), Some(&shared), 0)?;
        assert_eq!(set.active_kid(), hs256_kid(&shared.0));
        assert!(!set.jwks_json().contains(set.active_kid()));
        Ok(())
    }

    #[test]
    fn signs_with_newest_active_key_and_publishes_all_unretired() -> Result<(), KeyError> {
        let secret = SecretKey::generate();
        let old = generate(Algorithm::EdDSA, &secret, 100)?;
        let mut new = generate(Algorithm::EdDSA, &secret, 200)?;
        let mut future = generate(Algorithm::EdDSA, &secret, 200)?;
        future.activates_at = 10_000;
        let mut retired = generate(Algorithm::EdDSA, &secret, 50)?;
        retired.retires_at = Some(150);
        new.activates_at = 200;
        let set = KeySet::load(
            &secret,
            &[old.clone(), new.clone(), future.clone(), retired.clone()],
            None,
            300,
        )?;
        assert_eq!(set.active_kid(), new.kid);
        assert!(set.verify.contains_key(&old.kid));
        assert!(
            set.verify.contains_key(&future.kid),
            "published before it signs"
        );
        assert!(!set.verify.contains_key(&retired.kid));
        let later = KeySet::load(&secret, &[old, new, future.clone(), retired], None, 10_000)?;
        assert_eq!(later.active_kid(), future.kid, "signs once active");
        Ok(())
    }
}
