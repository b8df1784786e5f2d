//! Fixtures shared by the micro and load benchmarks: an access token signed per
//! algorithm with Tessera's verifier and the raw `jsonwebtoken` pieces beside it, and
//! argon2id at the server's parameters.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tessera::tokens::access::{AccessTokens, Claims};
use tessera::tokens::keys::{KeySet, SecretKey, generate};
use tessera::verify::{Verifier, VerifierConfig};
use uuid::Uuid;

pub const ISS: &str = "https://issuer.bench";
pub const ALGS: [&str; 3] = ["EdDSA", "ES256", "RS256"];

/// One signed access token and everything that signs or checks it.
pub struct Tokens {
    pub alg: Algorithm,
    pub keys: KeySet,
    pub minter: AccessTokens,
    pub claims: Claims,
    pub token: String,
    pub verifier: Verifier,
    raw_key: DecodingKey,
    validation: Validation,
}

impl Tokens {
    pub fn new(alg: &str) -> Self {
        let alg: Algorithm = alg.parse().unwrap();
        let secret = SecretKey::generate();
        let keys = KeySet::load(&secret, &[generate(alg, &secret, 0).unwrap()], None, 0).unwrap();
        let minter = AccessTokens::new(ISS, ISS, 900);
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = minter.claims(Uuid::new_v4(), Uuid::new_v4(), "app", "read", vec![], now);
        let token = minter.sign(&keys, &claims);
        let verifier =
            Verifier::from_jwks(VerifierConfig::new(ISS, ISS), keys.jwks_json()).unwrap();
        let set: JwkSet = serde_json::from_str(keys.jwks_json()).unwrap();
        let raw_key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[ISS]);
        let tokens = Self {
            alg,
            keys,
            minter,
            claims,
            token,
            verifier,
            raw_key,
            validation,
        };
        tokens.verify();
        tokens.raw_decode();
        tokens.raw_signature_check();
        tokens
    }

    pub fn sign(&self) -> String {
        self.minter.sign(&self.keys, &self.claims)
    }

    /// What a backend service runs: `tessera::verify` with its JWKS cached.
    pub fn verify(&self) {
        self.verifier.verify_cached(&self.token).unwrap();
    }

    /// Raw `jsonwebtoken::decode` with the same issuer, audience and algorithm checks.
    pub fn raw_decode(&self) {
        jsonwebtoken::decode::<tessera::verify::Claims>(
            &self.token,
            &self.raw_key,
            &self.validation,
        )
        .unwrap();
    }

    /// The signature check alone, as `jsonwebtoken` does it.
    pub fn raw_signature_check(&self) {
        let (message, signature) = self.token.rsplit_once('.').unwrap();
        assert!(
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &self.raw_key, self.alg)
                .unwrap()
        );
    }
}

/// argon2id at the server's parameters (m=19456, t=2, p=1) into `memory`.
pub struct Argon2Hasher {
    hasher: argon2::Argon2<'static>,
    memory: Vec<argon2::Block>,
}

impl Argon2Hasher {
    pub fn new() -> Self {
        let params = argon2::Params::new(19_456, 2, 1, Some(32)).unwrap();
        Self {
            hasher: argon2::Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                params,
            ),
            memory: vec![argon2::Block::default(); 19_456],
        }
    }

    pub fn hash(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.hasher
            .hash_password_into_with_memory(
                b"benchmark password",
                b"sixteen byte slt",
                &mut out,
                &mut self.memory,
            )
            .unwrap();
        out
    }
}

/// Calls `f` for about `secs` on this thread after a warm-up; calls per second.
pub fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..200 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A DPoP client key (ES256 or EdDSA) that signs proofs, as a client does.
pub struct DpopSigner {
    es: Option<p256::ecdsa::SigningKey>,
    ed: Option<ed25519_dalek::SigningKey>,
    header: String,
}

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    out
}

impl DpopSigner {
    pub fn new(alg: &str) -> Self {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (es, ed, jwk) = if alg == "ES256" {
            let key = loop {
                if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&random32()) {
                    break k;
                }
            };
            let p = key.verifying_key().to_sec1_point(false);
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())});
            (Some(key), None, jwk)
        } else {
            let key = ed25519_dalek::SigningKey::from_bytes(&random32());
            let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes())});
            (None, Some(key), jwk)
        };
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk}).to_string();
        Self {
            es,
            ed,
            header: b64(header.as_bytes()),
        }
    }

    /// A fresh proof for `htm` `htu` (with `ath` of `access_token`, if given).
    pub fn proof(&self, htm: &str, htu: &str, access_token: Option<&str>) -> String {
        use base64::Engine;
        use p256::ecdsa::signature::Signer as _;
        use sha2::Digest;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = serde_json::json!({"jti": Uuid::new_v4().to_string(), "htm": htm, "htu": htu, "iat": iat});
        if let Some(token) = access_token {
            claims["ath"] = b64(&sha2::Sha256::digest(token.as_bytes())).into();
        }
        let input = format!("{}.{}", self.header, b64(claims.to_string().as_bytes()));
        let signature = match (&self.es, &self.ed) {
            (Some(k), _) => {
                let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
            (_, Some(k)) => k.sign(input.as_bytes()).to_bytes().to_vec(),
            _ => unreachable!(),
        };
        format!("{input}.{}", b64(&signature))
    }
}
