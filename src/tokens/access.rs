//! Access tokens: JWTs per RFC 9068 (`typ: at+jwt`), signed with the active key of a
//! [`KeySet`] and verified through the same path as the `verify` module.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::keys::KeySet;
use crate::verify::Rules;
pub use crate::verify::{Claims, MAX_TOKEN_BYTES, VerifyError};

/// Clock skew tolerated on `exp` between instances.
pub const LEEWAY_SECS: u64 = 5;

/// Mints and checks access tokens for one issuer and audience.
pub struct AccessTokens {
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: i64,
    rules: Rules,
}

impl AccessTokens {
    pub fn new(issuer: &str, audience: &str, ttl_secs: i64) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs,
            rules: Rules::new(issuer, audience, LEEWAY_SECS),
        }
    }

    /// Fills in the standard claims for a session's user.
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
            cnf: None,
        }
    }

    /// JWS compact serialisation with the key parsed at load time: no per-token key
    /// parsing, unlike `jsonwebtoken::encode`.
    pub fn sign(&self, keys: &KeySet, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(768);
        token.push_str(&keys.active.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = keys.active.signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&signature);
        token
    }

    /// Verifies signature (algorithm pinned to the key named by `kid`), `typ`, `iss`,
    /// `aud` and `exp`.
    pub fn verify(&self, keys: &KeySet, token: &str) -> Result<Claims, VerifyError> {
        self.rules.decode(token, |kid| keys.verify.get(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::keys::{KeyError, SecretKey, generate};
    use jsonwebtoken::Algorithm;

    fn setup(alg: Algorithm) -> Result<(AccessTokens, KeySet), KeyError> {
        let secret = SecretKey::generate();
        let keys = KeySet::load(&secret, &[generate(alg, &secret, 0)?], None, 0)?;
        Ok((AccessTokens::new("https://issuer.test", "api", 900), keys))
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn signed_token_verifies_with_every_claim_for_every_algorithm() -> Result<(), KeyError> {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let (tokens, keys) = setup(alg)?;
            let claims = tokens.claims(
                Uuid::new_v4(),
                Uuid::new_v4(),
                "app",
                "openid",
                vec!["admin".into()],
                now(),
            );
            let jwt = tokens.sign(&keys, &claims);
            assert_eq!(tokens.verify(&keys, &jwt), Ok(claims), "{alg:?}");
        }
        Ok(())
    }

    #[test]
    fn rejects_expired_tampered_foreign_and_oversized() -> Result<(), KeyError> {
        let (tokens, keys) = setup(Algorithm::EdDSA)?;
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

        let (_, other_keys) = setup(Algorithm::EdDSA)?;
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

        let wrong_aud = AccessTokens::new(&tokens.issuer, "other", 900);
        assert_eq!(wrong_aud.verify(&keys, &good), Err(VerifyError::Invalid));
        Ok(())
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(crate::proptest_config(128))]

            /// Any edit to a signed token (a character replaced, inserted or removed,
            /// including a signature's unused trailing bits) that changes it is refused.
            #[test]
            fn every_edit_of_a_signed_token_is_refused(
                at in any::<prop::sample::Index>(),
                c in prop_oneof![any::<char>(), prop::sample::select(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.".chars().collect::<Vec<_>>()
                )],
                edit in 0..3_u8,
                alg in prop::sample::select(vec![Algorithm::EdDSA, Algorithm::ES256]),
            ) {
                let (tokens, keys) = setup(alg).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let claims = tokens.claims(Uuid::new_v4(), Uuid::new_v4(), "app", "", vec![], now());
                let good = tokens.sign(&keys, &claims);
                let edited = crate::edit_one(&good, at, c, edit);
                prop_assume!(edited != good);
                prop_assert!(tokens.verify(&keys, &edited).is_err(), "{}", edited);
            }
        }
    }
}
