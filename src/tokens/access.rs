//! Access tokens: JWTs per RFC 9068 (`typ: at+jwt`), signed with the active key of a
//! [`KeySet`] and verified with a pinned algorithm, issuer, audience and expiry.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::{KeySet, Signer};

/// Longest access token accepted for verification; ours are well under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated on `exp` between instances.
pub const LEEWAY_SECS: u64 = 5;

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
}

/// Why a token was not accepted. Callers answer 401 for every variant alike.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
}

/// Mints and checks access tokens for one issuer and audience.
pub struct AccessTokens {
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: i64,
}

impl AccessTokens {
    /// Fills in the standard claims for a session's user.
    #[allow(clippy::too_many_arguments)]
    pub fn claims(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        client_id: &str,
        scope: &str,
        roles: Vec<String>,
        now: i64,
    ) -> Claims {
        Claims {
            iss: self.issuer.clone(),
            sub: user_id,
            aud: self.audience.clone(),
            exp: now + self.ttl_secs,
            iat: now,
            jti: Uuid::now_v7(),
            client_id: client_id.to_owned(),
            sid: session_id,
            scope: scope.to_owned(),
            roles,
        }
    }

    /// JWS compact serialisation with the key parsed at load time: no per-token key
    /// parsing, unlike `jsonwebtoken::encode`.
    pub fn sign(&self, keys: &KeySet, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(512);
        token.push_str(&keys.active.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = match &keys.active.signer {
            Signer::Ed25519(key) => key.sign(token.as_bytes()).to_bytes(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Verifies signature (algorithm pinned to the key named by `kid`), `typ`, `iss`,
    /// `aud` and `exp`.
    pub fn verify(&self, keys: &KeySet, token: &str) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(VerifyError::WrongType);
        }
        let kid = header.kid.as_deref().ok_or(VerifyError::UnknownKey)?;
        let key = keys.verify.get(kid).ok_or(VerifyError::UnknownKey)?;
        let validation = self.validation(key.alg);
        jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => VerifyError::Expired,
                _ => VerifyError::Invalid,
            })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::keys::{KeyError, SecretKey, generate_ed25519};

    fn setup() -> Result<(AccessTokens, KeySet), KeyError> {
        let secret = SecretKey::generate();
        let keys = KeySet::load(&secret, &[generate_ed25519(&secret, 0)], 0)?;
        let tokens = AccessTokens {
            issuer: "https://issuer.test".into(),
            audience: "api".into(),
            ttl_secs: 900,
        };
        Ok((tokens, keys))
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn signed_token_verifies_with_every_claim() -> Result<(), KeyError> {
        let (tokens, keys) = setup()?;
        let claims = tokens.claims(
            Uuid::new_v4(),
            Uuid::new_v4(),
            "app",
            "openid",
            vec!["admin".into()],
            now(),
        );
        let jwt = tokens.sign(&keys, &claims);
        assert_eq!(tokens.verify(&keys, &jwt), Ok(claims));
        Ok(())
    }

    #[test]
    fn rejects_expired_tampered_foreign_and_oversized() -> Result<(), KeyError> {
        let (tokens, keys) = setup()?;
        let claims = tokens.claims(
            Uuid::new_v4(),
            Uuid::new_v4(),
            "app",
            "",
            vec![],
            now() - 3600,
        );
        assert_eq!(
            tokens.verify(&keys, &tokens.sign(&keys, &claims)),
            Err(VerifyError::Expired)
        );

        let good = tokens.sign(
            &keys,
            &tokens.claims(Uuid::new_v4(), Uuid::new_v4(), "app", "", vec![], now()),
        );
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = tokens.claims(
            Uuid::new_v4(),
            Uuid::new_v4(),
            "app",
            "",
            vec!["admin".into()],
            now(),
        );
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap_or_default());
        parts[1] = &forged_payload;
        assert_eq!(
            tokens.verify(&keys, &parts.join(".")),
            Err(VerifyError::Invalid)
        );

        let (_, other_keys) = setup()?;
        assert_eq!(
            tokens.verify(&other_keys, &good),
            Err(VerifyError::UnknownKey)
        );
        assert_eq!(
            tokens.verify(&keys, &"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(VerifyError::TooLarge)
        );
        assert_eq!(
            tokens.verify(&keys, "not.a.jwt"),
            Err(VerifyError::Malformed)
        );

        let wrong_aud = AccessTokens {
            audience: "other".into(),
            issuer: tokens.issuer.clone(),
            ttl_secs: 900,
        };
        assert_eq!(wrong_aud.verify(&keys, &good), Err(VerifyError::Invalid));
        Ok(())
    }
}
