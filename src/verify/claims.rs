//! What an access token says, and the one decoding path that both the server and the
//! verifier use: size limit, `typ`, `kid`, the algorithm pinned to the key, `iss`,
//! `aud`, `exp`/`nbf`.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest access token accepted for verification; ours are well under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of an access token (RFC 9068 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: Uuid,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: Uuid,
    pub client_id: String,
    pub sid: Uuid,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// DPoP (RFC 9449 §6.1): the thumbprint of the key the token is bound to. A bound
    /// token is accepted only with `Authorization: DPoP` and a proof by that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim (RFC 7800) of a DPoP-bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 7638 SHA-256 thumbprint of the public key, base64url.
    pub jkt: String,
}

impl Claims {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Why a token was not accepted. Callers answer 401 for every variant alike.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("wrong token type")]
    WrongType,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("the session has been revoked")]
    Revoked,
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
    #[error("the access token is bound to a DPoP key: send it as Authorization: DPoP with a proof")]
    DpopBoundAsBearer,
    #[error("the access token is not DPoP-bound: send it as Authorization: Bearer")]
    NotDpopBound,
    #[error("{0}")]
    Dpop(super::dpop::ProofError),
    #[error("this service takes no DPoP-bound tokens: its resource_url is not configured")]
    ResourceUrlUnset,
    /// The DPoP replay cache is full of live proofs (503, retry shortly).
    #[error("too many DPoP proofs in flight; try again shortly")]
    Busy,
}

/// A public (or, for HS256, shared) key, parsed once, with the one algorithm it verifies.
#[derive(Clone)]
pub struct Key {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Issuer, audience and leeway, with a prepared `Validation` per algorithm.
#[derive(Clone)]
pub struct Rules {
    validations: HashMap<Algorithm, Validation>,
}

pub const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::EdDSA,
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::HS256,
];

impl Rules {
    pub fn new(issuer: &str, audience: &str, leeway_secs: u64) -> Self {
        let validations = ALGORITHMS
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway_secs;
                v.validate_nbf = true;
                v.set_issuer(&[issuer]);
                v.set_audience(&[audience]);
                v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
                (*alg, v)
            })
            .collect();
        Self { validations }
    }

    /// Decodes and checks `token`, with the key `lookup` finds for its `kid`.
    pub fn decode<'k>(
        &self,
        token: &str,
        lookup: impl FnOnce(&str) -> Option<&'k Key>,
    ) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let header = Header::parse(token).ok_or(VerifyError::Malformed)?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(VerifyError::WrongType);
        }
        let kid = header.kid.as_deref().ok_or(VerifyError::UnknownKey)?;
        let key = lookup(kid).ok_or(VerifyError::UnknownKey)?;
        // The key's algorithm, never the header's: `alg: none` and algorithm confusion
        // (HS256 keyed with a public key) fail here.
        if header.alg != key.alg {
            return Err(VerifyError::Invalid);
        }
        let validation = self.validations.get(&key.alg).ok_or(VerifyError::Invalid)?;
        jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => VerifyError::Expired,
                _ => VerifyError::Invalid,
            })
    }
}

/// The three header fields we read before choosing a key. `jsonwebtoken::decode_header`
/// would do, but its full `Header` (with a flattened map of extras) costs more to parse
/// than an Ed25519 signature takes to check.
#[derive(Deserialize)]
struct Header {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
}

impl Header {
    fn parse(token: &str) -> Option<Self> {
        use base64::Engine;
        let encoded = token.split('.').next()?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

#[cfg(test)]
mod properties;

/// The `kid` of an HS256 shared secret: derived from it (an HMAC, which reveals nothing
/// of the secret), so the server and a verifier holding the same secret agree on it.
pub fn hs256_kid(secret: &[u8]) -> String {
    let mac = jsonwebtoken::EncodingKey::from_secret(secret)
        .and_then(|k| jsonwebtoken::crypto::sign(b"tessera-hs256-kid", &k, Algorithm::HS256))
        .unwrap_or_default();
    format!("hs-{}", &mac[..mac.len().min(12)])
}
