//! Refresh tokens: `tsr_` + base64url of `session id (16) | generation (8) | secret
//! (32) | tag (16)`, the tag a MAC under a key derived from the server's secret key, so
//! nobody can make one for a session id they saw. The session row keeps only the
//! SHA-256 of its current and previous token; a token whose tag verifies names its
//! generation, so one older than the previous is known spent without being stored.
//! Tokens issued before sessions were one row (`tsr_` + 256 random bits, 43
//! characters) still parse, as [`Presented::Legacy`], and rotate once into this shape.
//!
//! A rotated token's successor is kept sealed (ChaCha20-Poly1305) under a key derived
//! with HKDF from the parent's plaintext, so a grace-window retry can get the same
//! successor back while the database alone never yields a usable token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use uuid::Uuid;

use super::random_bytes;

pub const PREFIX: &str = "tsr_";
/// `tsr_` + 43 base64url characters (32 bytes): the shape issued before sessions were
/// one row.
pub const LEGACY_LENGTH: usize = 4 + 43;
/// `tsr_` + 96 base64url characters (72 bytes: session id, generation, secret, tag).
pub const LENGTH: usize = 4 + 96;
const BODY_BYTES: usize = 72;
const TAG_LEN: usize = 16;
const SEAL_INFO: &[u8] = b"tessera/refresh-successor/v1";
const NONCE_LEN: usize = 12;

/// A refresh token's plaintext. Only its holder and the response ever see it.
pub struct RefreshToken(SecretString);

/// The key refresh-token tags are made with (derived from the secret key, so every
/// instance sharing the secret key accepts the others' tokens).
#[derive(Clone)]
pub struct RefreshMac(Hkdf<Sha256>);

impl RefreshMac {
    pub fn new(key_material: &[u8; 32]) -> Self {
        Self(Hkdf::<Sha256>::new(
            Some(b"tessera refresh-token tag"),
            key_material,
        ))
    }

    /// HKDF-Expand with the token's fields as info is HMAC-SHA-256 under the derived
    /// key: a PRF of (session, generation, secret).
    fn tag(&self, fields: &[u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        let _ = self.0.expand(fields, &mut out);
        out
    }
}

impl std::fmt::Debug for RefreshMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshMac([redacted])")
    }
}

/// What a refresh token names, once its tag is checked: where the store finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// A token of the session-row shape: its session, its generation, and its hash.
    Session {
        session_id: Uuid,
        generation: i64,
        hash: TokenHash,
    },
    /// A token issued before sessions were one row: found by its hash in the old table.
    Legacy(TokenHash),
}

impl RefreshToken {
    /// The token of `generation` of `session`: 256 fresh random bits, tagged.
    pub fn issue(mac: &RefreshMac, session: Uuid, generation: i64) -> Self {
        let mut body = Vec::with_capacity(BODY_BYTES);
        body.extend_from_slice(session.as_bytes());
        body.extend_from_slice(&generation.to_be_bytes());
        body.extend_from_slice(&random_bytes::<32>());
        let tag = mac.tag(&body);
        body.extend_from_slice(&tag);
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body)).into())
    }

    /// A token of the shape issued before sessions were one row (tests and the upgrade
    /// path's fixtures make them; the server no longer does).
    pub fn generate_legacy() -> Self {
        let bytes: [u8; 32] = random_bytes();
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)).into())
    }

    /// Accepts only strings of a shape we issue (either); anything else cannot be ours.
    /// The length is checked before anything is decoded.
    pub fn parse(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix(PREFIX)?;
        let bytes = match raw.len() {
            LEGACY_LENGTH => 32,
            LENGTH => BODY_BYTES,
            _ => return None,
        };
        if URL_SAFE_NO_PAD.decode(body).map(|b| b.len()) != Ok(bytes) {
            return None;
        }
        Some(Self(raw.to_owned().into()))
    }

    /// Where the store finds this token: `None` when its tag does not verify (a token
    /// nobody issued, which must touch nothing). Legacy tokens carry no tag.
    pub fn presented(&self, mac: &RefreshMac) -> Option<Presented> {
        let body = self.expose().strip_prefix(PREFIX)?;
        if self.expose().len() == LEGACY_LENGTH {
            return Some(Presented::Legacy(self.hash()));
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        let (fields, tag) = bytes.split_at_checked(BODY_BYTES - TAG_LEN)?;
        let expected = mac.tag(fields);
        let differs = tag
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 || tag.len() != TAG_LEN {
            return None;
        }
        let session_id = Uuid::from_slice(&fields[..16]).ok()?;
        let generation = i64::from_be_bytes(fields[16..24].try_into().ok()?);
        Some(Presented::Session {
            session_id,
            generation,
            hash: self.hash(),
        })
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// What the store keeps: SHA-256 of the plaintext. 256 random bits need no salt
    /// or slow hash; a pepper would add nothing an attacker with the database lacks.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.expose().as_bytes()).into())
    }

    /// Seals `successor` so that only a holder of `self` (the parent) can open it.
    pub fn seal(&self, successor: &RefreshToken) -> Vec<u8> {
        let cipher = self.sealing_cipher();
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let nonce = Nonce::from(nonce_bytes);
        let mut out = nonce_bytes.to_vec();
        // Encryption with a fresh key and nonce over a short message cannot fail.
        if let Ok(ct) = cipher.encrypt(&nonce, successor.expose().as_bytes()) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens a successor sealed by [`RefreshToken::seal`] with this token as parent.
    pub fn open(&self, sealed: &[u8]) -> Option<RefreshToken> {
        let (nonce, ct) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).ok()?);
        let plain = self.sealing_cipher().decrypt(&nonce, ct).ok()?;
        RefreshToken::parse(std::str::from_utf8(&plain).ok()?)
    }

    fn sealing_cipher(&self) -> ChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(None, self.expose().as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit.
        let _ = hk.expand(SEAL_INFO, &mut key);
        ChaCha20Poly1305::new(&key.into())
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// SHA-256 of a refresh token: the only form the store holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> RefreshMac {
        RefreshMac::new(&[7; 32])
    }

    fn generate() -> RefreshToken {
        RefreshToken::issue(&mac(), Uuid::now_v7(), 1)
    }

    #[test]
    fn format_is_prefix_session_generation_secret_and_tag() {
        let session = Uuid::now_v7();
        let t = RefreshToken::issue(&mac(), session, 42);
        assert!(t.expose().starts_with("tsr_"));
        assert_eq!(t.expose().len(), LENGTH);
        assert!(RefreshToken::parse(t.expose()).is_some());
        assert_eq!(
            t.presented(&mac()),
            Some(Presented::Session {
                session_id: session,
                generation: 42,
                hash: t.hash()
            })
        );
        // Fresh secret bits every time, even for the same session and generation.
        assert_ne!(
            t.expose(),
            RefreshToken::issue(&mac(), session, 42).expose()
        );
    }

    #[test]
    fn a_token_with_a_wrong_tag_names_nothing() {
        let t = generate();
        assert!(t.presented(&RefreshMac::new(&[8; 32])).is_none());
        // Any edit of session, generation, secret or tag breaks the tag.
        let raw = URL_SAFE_NO_PAD
            .decode(t.expose().strip_prefix(PREFIX).unwrap_or_default())
            .unwrap_or_default();
        for at in [0, 16, 23, 24, 55, 56, 71] {
            let mut edited = raw.clone();
            edited[at] ^= 1;
            let forged =
                RefreshToken::parse(&format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&edited)));
            let forged = forged.and_then(|f| f.presented(&mac()));
            assert!(forged.is_none(), "byte {at}");
        }
    }

    #[test]
    fn legacy_tokens_parse_and_are_found_by_hash() {
        let t = RefreshToken::generate_legacy();
        assert_eq!(t.expose().len(), LEGACY_LENGTH);
        let parsed = RefreshToken::parse(t.expose());
        assert_eq!(
            parsed.and_then(|p| p.presented(&mac())),
            Some(Presented::Legacy(t.hash()))
        );
    }

    #[test]
    fn parse_rejects_foreign_shapes() {
        for bad in [
            "",
            "tsr_",
            "tsr_short",
            "xyz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(RefreshToken::parse(bad).is_none(), "{bad}");
        }
        let t = generate();
        assert!(RefreshToken::parse(&format!("{}=", t.expose())).is_none());
    }

    #[test]
    fn hash_is_stable_and_distinct() {
        let t = generate();
        assert_eq!(t.hash(), t.hash());
        assert_ne!(t.hash(), generate().hash());
    }

    #[test]
    fn only_the_parent_opens_the_sealed_successor() {
        let parent = generate();
        let child = generate();
        let sealed = parent.seal(&child);
        assert!(
            !sealed
                .windows(10)
                .any(|w| child.expose().as_bytes().windows(10).any(|c| c == w))
        );
        let opened = parent.open(&sealed).map(|t| t.expose().to_owned());
        assert_eq!(opened.as_deref(), Some(child.expose()));
        assert!(generate().open(&sealed).is_none());
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(parent.open(&tampered).is_none());
        assert!(parent.open(&sealed[..5]).is_none());
    }
}
