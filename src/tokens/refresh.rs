//! Refresh tokens: `tsr_` + 256 random bits (base64url), stored only as SHA-256.
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

use super::random_bytes;

pub const PREFIX: &str = "tsr_";
/// `tsr_` + 43 base64url characters (32 bytes).
pub const LENGTH: usize = 4 + 43;
const SEAL_INFO: &[u8] = b"tessera/refresh-successor/v1";
const NONCE_LEN: usize = 12;

/// A refresh token's plaintext. Only its holder and the response ever see it.
pub struct RefreshToken(SecretString);

impl RefreshToken {
    pub fn generate() -> Self {
        let bytes: [u8; 32] = random_bytes();
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)).into())
    }

    /// Accepts only strings of the exact shape we issue; anything else cannot be ours.
    pub fn parse(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix(PREFIX)?;
        if raw.len() != LENGTH || URL_SAFE_NO_PAD.decode(body).map(|b| b.len()) != Ok(32) {
            return None;
        }
        Some(Self(raw.to_owned().into()))
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

    #[test]
    fn format_is_prefix_and_256_bits() {
        let t = RefreshToken::generate();
        assert!(t.expose().starts_with("tsr_"));
        assert_eq!(t.expose().len(), LENGTH);
        assert!(RefreshToken::parse(t.expose()).is_some());
        assert_ne!(t.expose(), RefreshToken::generate().expose());
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
        let t = RefreshToken::generate();
        assert!(RefreshToken::parse(&format!("{}=", t.expose())).is_none());
    }

    #[test]
    fn hash_is_stable_and_distinct() {
        let t = RefreshToken::generate();
        assert_eq!(t.hash(), t.hash());
        assert_ne!(t.hash(), RefreshToken::generate().hash());
    }

    #[test]
    fn only_the_parent_opens_the_sealed_successor() {
        let parent = RefreshToken::generate();
        let child = RefreshToken::generate();
        let sealed = parent.seal(&child);
        assert!(
            !sealed
                .windows(10)
                .any(|w| child.expose().as_bytes().windows(10).any(|c| c == w))
        );
        let opened = parent.open(&sealed).map(|t| t.expose().to_owned());
        assert_eq!(opened.as_deref(), Some(child.expose()));
        assert!(RefreshToken::generate().open(&sealed).is_none());
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(parent.open(&tampered).is_none());
        assert!(parent.open(&sealed[..5]).is_none());
    }
}
