//! DPoP proofs (RFC 9449): the checks every receiver of a proof makes, stateless, so
//! the authorization server's token endpoint and a resource server share them. The
//! caller adds what needs state: the `jti` replay check (a store shared by instances,
//! or [`ReplayCache`] in one process) and, where it asks for them, nonces.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The proof algorithms accepted (metadata: `dpop_signing_alg_values_supported`).
pub const ALGORITHMS: [&str; 2] = ["ES256", "EdDSA"];
/// A proof with its public key is well under 1 KiB; anything past this is refused
/// before it is parsed.
pub const MAX_PROOF_BYTES: usize = 4096;
/// How old a proof's `iat` may be, and how far ahead of our clock: clients sign with
/// their own clock, and a phone's or a laptop's may be some seconds off either way.
pub const MAX_AGE_SECS: i64 = 60;
pub const FUTURE_LEEWAY_SECS: i64 = 60;
/// How long after its `iat` a proof is remembered against replay: its acceptance
/// window, plus a margin for instances whose clocks disagree.
pub const REMEMBER_SECS: i64 = MAX_AGE_SECS + 30;
const MAX_JTI_BYTES: usize = 128;

/// Why a proof was refused: `invalid_dpop_proof` (or, for [`ProofError::UseNonce`],
/// `use_dpop_nonce`) with this as the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("a DPoP proof is required")]
    Missing,
    #[error("more than one DPoP header")]
    Multiple,
    #[error("the DPoP proof is not a well-formed JWT")]
    Malformed,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    WrongType,
    #[error("the DPoP proof's alg must be ES256 or EdDSA")]
    UnsupportedAlgorithm,
    #[error("the DPoP proof's jwk must hold a public key only")]
    PrivateKey,
    #[error("the DPoP proof's jwk is not a valid key for its alg")]
    BadKey,
    #[error("the DPoP proof's signature is invalid")]
    BadSignature,
    #[error("the DPoP proof's htm is not this request's method")]
    WrongMethod,
    #[error("the DPoP proof's htu is not this request's URL")]
    WrongUrl,
    #[error("the DPoP proof's iat is too old or in the future")]
    Stale,
    #[error("the DPoP proof was already used")]
    Replayed,
    #[error("the DPoP proof's ath does not match the access token")]
    WrongAccessToken,
    #[error("the DPoP proof is signed by another key than the token is bound to")]
    WrongKey,
    #[error("a DPoP proof with a fresh nonce is required")]
    UseNonce,
}

impl ProofError {
    /// The OAuth error code: the nonce challenge has its own.
    pub fn code(self) -> &'static str {
        match self {
            ProofError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }

    /// A short name for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ProofError::Missing => "missing",
            ProofError::Multiple => "multiple",
            ProofError::Malformed => "malformed",
            ProofError::WrongType => "wrong_type",
            ProofError::UnsupportedAlgorithm => "unsupported_alg",
            ProofError::PrivateKey => "private_key",
            ProofError::BadKey => "bad_key",
            ProofError::BadSignature => "bad_signature",
            ProofError::WrongMethod => "wrong_htm",
            ProofError::WrongUrl => "wrong_htu",
            ProofError::Stale => "stale_iat",
            ProofError::Replayed => "replayed",
            ProofError::WrongAccessToken => "wrong_ath",
            ProofError::WrongKey => "wrong_key",
            ProofError::UseNonce => "use_nonce",
        }
    }
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The request's URL as the client called it (query and fragment are ignored).
    pub url: &'a str,
    /// Another URL the request may have been made to: a resource server that does not
    /// know its public scheme accepts `http` and `https` for its host.
    pub also_url: Option<&'a str>,
    /// For a resource request: the access token, whose hash `ath` must be.
    pub access_token: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// A proof that passed the stateless checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key (base64url): the `cnf.jkt`
    /// of a token bound to it.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
    pub nonce: Option<String>,
}

impl Proof {
    /// The key under which the proof is remembered against replay: its `jti` within
    /// its key (two clients may pick the same `jti`), hashed to a fixed size.
    pub fn replay_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.jkt.as_bytes());
        h.update([0]);
        h.update(self.jti.as_bytes());
        h.finalize().into()
    }

    /// Until when the proof must be remembered: after that its `iat` is refused anyway
    /// (by any instance whose clock is within 30 s of this one's).
    pub fn remember_until(&self) -> i64 {
        self.iat.saturating_add(REMEMBER_SECS)
    }
}

#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: String,
    jwk: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct Payload {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<serde_json::Number>,
    nonce: Option<String>,
    ath: Option<String>,
}

/// Members that only a private or symmetric key has (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Checks a proof's form, signature, `htm`, `htu`, `iat` and (for a resource request)
/// `ath`. Not its `jti` (replay) or `nonce`: those need state the caller keeps.
pub fn check(proof: &str, expect: &Expect<'_>) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let header: Header = decode_json(h)?;
    if !header.typ.as_deref().is_some_and(|t| {
        // RFC 7515 §4.1.9: the media type, with or without its `application/`.
        t.eq_ignore_ascii_case("dpop+jwt") || t.eq_ignore_ascii_case("application/dpop+jwt")
    }) {
        return Err(ProofError::WrongType);
    }
    // Asymmetric algorithms only, named exactly: `none`, HS256 and friends end here.
    let alg = match header.alg.as_str() {
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(ProofError::UnsupportedAlgorithm),
    };
    let jwk = header.jwk.ok_or(ProofError::BadKey)?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let (key, jkt) = public_key(&jwk, alg)?;
    let signed = &proof[..h.len() + 1 + p.len()];
    if !jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &key, alg).unwrap_or(false) {
        return Err(ProofError::BadSignature);
    }

    let payload: Payload = decode_json(p)?;
    let jti = payload
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
        .ok_or(ProofError::Malformed)?;
    if payload.htm.as_deref() != Some(expect.method) {
        return Err(ProofError::WrongMethod);
    }
    let same_url = payload
        .htu
        .as_deref()
        .and_then(normalize_url)
        .is_some_and(|htu| {
            Some(&htu) == normalize_url(expect.url).as_ref()
                || expect.also_url.and_then(normalize_url).as_ref() == Some(&htu)
        });
    if !same_url {
        return Err(ProofError::WrongUrl);
    }
    let iat = payload
        .iat
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        .ok_or(ProofError::Malformed)?;
    if iat < expect.now - MAX_AGE_SECS || iat > expect.now + FUTURE_LEEWAY_SECS {
        return Err(ProofError::Stale);
    }
    if let Some(token) = expect.access_token
        && payload.ath.as_deref() != Some(access_token_hash(token).as_str())
    {
        return Err(ProofError::WrongAccessToken);
    }
    Ok(Proof {
        jkt,
        jti,
        iat,
        nonce: payload.nonce,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, ProofError> {
    let json = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ProofError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| ProofError::Malformed)
}

/// `ath`: base64url of the SHA-256 of the access token's ASCII.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A member of the JWK that must be base64url of exactly `len` bytes; returns it in
/// canonical form, so one key has one thumbprint however it was spelled.
fn coordinate(
    jwk: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    len: usize,
) -> Result<String, ProofError> {
    let text = jwk
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or(ProofError::BadKey)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ProofError::BadKey)?;
    if bytes.len() != len {
        return Err(ProofError::BadKey);
    }
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The proof's public key for `alg`, and its RFC 7638 thumbprint: SHA-256 of the
/// required members in lexicographic order, with no whitespace.
fn public_key(
    jwk: &serde_json::Map<String, serde_json::Value>,
    alg: Algorithm,
) -> Result<(DecodingKey, String), ProofError> {
    let member = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    let canonical = match alg {
        Algorithm::ES256 if member("kty") == Some("EC") && member("crv") == Some("P-256") => {
            let x = coordinate(jwk, "x", 32)?;
            let y = coordinate(jwk, "y", 32)?;
            let key = DecodingKey::from_ec_components(&x, &y).map_err(|_| ProofError::BadKey)?;
            (
                key,
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            )
        }
        Algorithm::EdDSA if member("kty") == Some("OKP") && member("crv") == Some("Ed25519") => {
            let x = coordinate(jwk, "x", 32)?;
            let key = DecodingKey::from_ed_components(&x).map_err(|_| ProofError::BadKey)?;
            (key, format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#))
        }
        _ => return Err(ProofError::BadKey),
    };
    let (key, members) = canonical;
    Ok((
        key,
        URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes())),
    ))
}

/// A URL for comparison (RFC 9449 §4.3 step 9, RFC 3986 §6.2.2 and §6.2.3): without
/// query and fragment; scheme and host in lower case; no default port; an empty path
/// is `/`; percent-encodings in upper case, and unreserved characters decoded.
/// `None` for anything that is not an absolute http(s) URL.
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    let mut out = format!("{scheme}://{authority}");
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    Some(out)
}

/// How an access token was presented (`Authorization: Bearer` or `Authorization: DPoP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    DPoP,
}

/// Splits an `Authorization` header into its scheme and token; `None` for any other
/// scheme or an empty token.
pub fn authorization(value: &str) -> Option<(Scheme, &str)> {
    let (scheme, token) = value.split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::DPoP
    } else {
        return None;
    };
    let token = token.trim();
    (!token.is_empty()).then_some((scheme, token))
}

/// Why a verified access token may not be used as it was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseError {
    /// A DPoP-bound token sent as a bearer token (RFC 9449 §7.2): `invalid_token`.
    BoundAsBearer,
    /// An unbound token sent with the DPoP scheme: `invalid_token`.
    NotBound,
    /// The proof is missing or fails a check: `invalid_dpop_proof`.
    Proof(ProofError),
}

/// RFC 9449 §7: a token bound to a key (`cnf_jkt`) is accepted only with the DPoP
/// scheme and a valid proof, with `ath`, by that very key; an unbound one only as a
/// bearer token. Returns the proof, whose `jti` the caller still has to claim.
pub fn check_use(
    cnf_jkt: Option<&str>,
    scheme: Scheme,
    token: &str,
    proof: Option<&str>,
    expect: &Expect<'_>,
) -> Result<Option<Proof>, UseError> {
    match (cnf_jkt, scheme) {
        (None, Scheme::Bearer) => Ok(None),
        (None, Scheme::DPoP) => Err(UseError::NotBound),
        (Some(_), Scheme::Bearer) => Err(UseError::BoundAsBearer),
        (Some(jkt), Scheme::DPoP) => {
            let proof = proof.ok_or(UseError::Proof(ProofError::Missing))?;
            let expect = Expect {
                access_token: Some(token),
                ..*expect
            };
            let proof = check(proof, &expect).map_err(UseError::Proof)?;
            if proof.jkt != jkt {
                return Err(UseError::Proof(ProofError::WrongKey));
            }
            Ok(Some(proof))
        }
    }
}

/// The `DPoP` header of a request: `Ok(None)` when absent; more than one, or one that
/// is not text, is refused.
pub fn proof_header(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ProofError> {
    let mut values = headers.get_all("dpop").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProofError::Multiple);
    }
    first.to_str().map(Some).map_err(|_| ProofError::Malformed)
}

/// Proofs seen recently, in one process: for a resource server that has no shared
/// store. Each is remembered until its `iat` would be refused anyway. Memory is bounded
/// two ways, neither of which ever forgets a live proof (a replay never gets through):
/// one key may have at most `per_key` proofs remembered at once (an attacker flooding
/// valid proofs of its own key fills its own quota, not the cache), and the whole cache
/// `max`; past that, new proofs are refused until old ones expire. Expired entries are
/// swept when the cache is full, at most once a second, so a full cache costs a
/// lookup per proof, not a scan.
pub struct ReplayCache {
    state: Mutex<Seen>,
    max: usize,
    per_key: u32,
}

#[derive(Default)]
struct Seen {
    /// Replay key -> (remember until, the key's thumbprint).
    proofs: HashMap<[u8; 32], (i64, String)>,
    /// Thumbprint -> proofs remembered.
    per_key: HashMap<String, u32>,
    last_sweep: i64,
}

impl Default for ReplayCache {
    /// 100,000 proofs, 1,000 per key (a client making 10 calls a second uses 900).
    fn default() -> Self {
        Self::new(100_000, 1_000)
    }
}

impl ReplayCache {
    pub fn new(max: usize, per_key: u32) -> Self {
        Self {
            state: Mutex::new(Seen::default()),
            max,
            per_key,
        }
    }

    /// Records `proof`: `Err(Replayed)` if it was seen before, or if its key's quota
    /// or the cache is full.
    pub fn claim(&self, proof: &Proof, now: i64) -> Result<(), ProofError> {
        let mut seen = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = proof.replay_key();
        if seen.proofs.contains_key(&key) {
            return Err(ProofError::Replayed);
        }
        let full = |s: &Seen| {
            s.proofs.len() >= self.max
                || s.per_key.get(&proof.jkt).copied().unwrap_or(0) >= self.per_key
        };
        if full(&seen) && now > seen.last_sweep {
            seen.last_sweep = now;
            let Seen {
                proofs, per_key, ..
            } = &mut *seen;
            proofs.retain(|_, (until, jkt)| {
                let live = *until >= now;
                if !live && let Some(n) = per_key.get_mut(jkt.as_str()) {
                    *n = n.saturating_sub(1);
                }
                live
            });
            per_key.retain(|_, n| *n > 0);
        }
        if full(&seen) {
            return Err(ProofError::Replayed);
        }
        seen.proofs
            .insert(key, (proof.remember_until(), proof.jkt.clone()));
        *seen.per_key.entry(proof.jkt.clone()).or_default() += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_after_normalisation() {
        let n = |u| normalize_url(u);
        assert_eq!(
            n("HTTPS://Auth.Example.com:443/oauth/token?x=1#f"),
            Some("https://auth.example.com/oauth/token".into())
        );
        assert_eq!(n("http://h:80"), Some("http://h/".into()));
        assert_eq!(
            n("http://h:8080/a%7e%2f"),
            Some("http://h:8080/a~%2F".into())
        );
        assert_eq!(n("ftp://h/"), None);
        assert_eq!(n("https://user@h/"), None);
        assert_eq!(n("/oauth/token"), None);
        assert_ne!(n("https://h/oauth/token"), n("http://h/oauth/token"));
        assert_ne!(n("https://h/oauth/token"), n("https://h/oauth/token/"));
    }

    /// RFC 9449 §4.1's example proof, checked at its own `iat`: it verifies, and its
    /// thumbprint is the `jkt` of §6.1's example.
    #[test]
    fn the_rfc_example_proof_verifies_with_the_rfc_thumbprint() {
        let proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
        let expect = Expect {
            method: "POST",
            url: "https://server.example.com/token",
            also_url: None,
            access_token: None,
            now: 1_562_262_616,
        };
        let checked = check(proof, &expect);
        assert_eq!(
            checked.as_ref().map(|p| p.jkt.as_str()),
            Ok("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        );
        assert_eq!(checked.map(|p| p.jti), Ok("-BwC3ESc6acc2lTc".to_owned()));
        // The same proof a minute and a half later, or for another URL or method.
        let late = Expect {
            now: 1_562_262_616 + 90,
            ..expect
        };
        assert_eq!(check(proof, &late), Err(ProofError::Stale));
        let elsewhere = Expect {
            url: "https://server.example.com/resource",
            ..expect
        };
        assert_eq!(check(proof, &elsewhere), Err(ProofError::WrongUrl));
        let get = Expect {
            method: "GET",
            ..expect
        };
        assert_eq!(check(proof, &get), Err(ProofError::WrongMethod));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::proptest_config(64))]

            /// Any edit of the RFC's example proof (a character replaced, inserted or
            /// removed) is refused: no part of it can change and still be accepted.
            #[test]
            fn every_edit_of_a_proof_is_refused(
                at in any::<prop::sample::Index>(),
                c in prop::sample::select(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.".chars().collect::<Vec<_>>()
                ),
                edit in 0..3_u8,
            ) {
                let good = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
                let expect = Expect {
                    method: "POST",
                    url: "https://server.example.com/token",
                    also_url: None,
                    access_token: None,
                    now: 1_562_262_616,
                };
                let mut chars: Vec<char> = good.chars().collect();
                let i = at.index(chars.len());
                match edit {
                    0 => chars[i] = c,
                    1 => chars.insert(i, c),
                    _ => {
                        chars.remove(i);
                    }
                }
                let edited: String = chars.into_iter().collect();
                prop_assume!(edited != good);
                prop_assert!(check(&edited, &expect).is_err(), "{}", edited);
            }
        }
    }

    fn proof(jkt: &str, jti: &str, iat: i64) -> Proof {
        Proof {
            jkt: jkt.into(),
            jti: jti.into(),
            iat,
            nonce: None,
        }
    }

    #[test]
    fn the_replay_cache_refuses_a_second_use_and_bounds_each_key() {
        let cache = ReplayCache::new(10, 3);
        let t = 1_000;
        assert_eq!(cache.claim(&proof("a", "1", t), t), Ok(()));
        assert_eq!(
            cache.claim(&proof("a", "1", t), t),
            Err(ProofError::Replayed)
        );
        // The same jti under another key is another proof.
        assert_eq!(cache.claim(&proof("b", "1", t), t), Ok(()));
        // Key `a` floods: its quota runs out, key `b` is not affected.
        assert_eq!(cache.claim(&proof("a", "2", t), t), Ok(()));
        assert_eq!(cache.claim(&proof("a", "3", t), t), Ok(()));
        assert_eq!(
            cache.claim(&proof("a", "4", t), t),
            Err(ProofError::Replayed)
        );
        assert_eq!(cache.claim(&proof("b", "2", t), t), Ok(()));
        // Once a's proofs are too old, its quota is back, and the old ones still
        // cannot be replayed (their iat is refused by `check`).
        let later = t + REMEMBER_SECS + 1;
        assert_eq!(cache.claim(&proof("a", "5", later), later), Ok(()));
    }

    #[test]
    fn a_full_replay_cache_refuses_new_proofs_and_forgets_no_live_one() {
        let cache = ReplayCache::new(4, 100);
        let t = 1_000;
        for i in 0..4 {
            assert_eq!(cache.claim(&proof(&format!("k{i}"), "j", t), t), Ok(()));
        }
        assert_eq!(
            cache.claim(&proof("new", "j", t), t),
            Err(ProofError::Replayed)
        );
        // Still live: every one of them is still refused.
        for i in 0..4 {
            assert_eq!(
                cache.claim(&proof(&format!("k{i}"), "j", t), t + 1),
                Err(ProofError::Replayed)
            );
        }
        let later = t + REMEMBER_SECS + 1;
        assert_eq!(cache.claim(&proof("new", "j", later), later), Ok(()));
    }

    #[test]
    fn ath_is_base64url_sha256() {
        // RFC 9449 §7.1's example token and its ath.
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }
}
