//! DPoP proofs (RFC 9449): the checks every receiver of a proof makes, stateless, so
//! the authorization server's token endpoint and a resource server share them. The
//! caller adds what needs state: the `jti` replay check (a store shared by instances,
//! or [`ReplayCache`] in one process) and, where it asks for them, nonces.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
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
        "ES256" => Alg::Es256,
        "EdDSA" => Alg::EdDsa,
        _ => return Err(ProofError::UnsupportedAlgorithm),
    };
    let jwk = header.jwk.ok_or(ProofError::BadKey)?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let (key, jkt) = public_key(&jwk, alg)?;
    let signed = &proof[..h.len() + 1 + p.len()];
    // Strict base64url (no padding, no stray trailing bits): one signature, one text.
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| ProofError::BadSignature)?;
    // ring: ECDSA over P-256 with the fixed 64-byte r||s of JWS (RFC 7518 §3.4), and
    // Ed25519 (RFC 8037), each checking the public key is a valid point. It is already
    // in the build (rustls), and its P-256 is several times faster than the generic
    // one jsonwebtoken uses: a proof is checked on every DPoP refresh and API call.
    let verified = match (&key, alg) {
        (PublicKey::P256(point), Alg::Es256) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_slice())
                .verify(signed.as_bytes(), &signature)
        }
        (PublicKey::Ed25519(x), Alg::EdDsa) => {
            UnparsedPublicKey::new(&ED25519, x.as_slice()).verify(signed.as_bytes(), &signature)
        }
        _ => return Err(ProofError::BadKey),
    };
    if verified.is_err() {
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

#[derive(Clone, Copy)]
enum Alg {
    Es256,
    EdDsa,
}

/// A proof's public key, as ring takes it.
enum PublicKey {
    /// SEC1 uncompressed: `04 || x || y`.
    P256([u8; 65]),
    Ed25519([u8; 32]),
}

/// A member of the JWK that must be base64url of exactly 32 bytes; returns the bytes
/// and their canonical spelling, so one key has one thumbprint however it was spelled.
fn coordinate(
    jwk: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<([u8; 32], String), ProofError> {
    let text = jwk
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or(ProofError::BadKey)?;
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(ProofError::BadKey)?;
    Ok((bytes, URL_SAFE_NO_PAD.encode(bytes)))
}

/// The proof's public key for `alg`, and its RFC 7638 thumbprint: SHA-256 of the
/// required members in lexicographic order, with no whitespace.
fn public_key(
    jwk: &serde_json::Map<String, serde_json::Value>,
    alg: Alg,
) -> Result<(PublicKey, String), ProofError> {
    let member = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    let canonical = match alg {
        Alg::Es256 if member("kty") == Some("EC") && member("crv") == Some("P-256") => {
            let (x, x_text) = coordinate(jwk, "x")?;
            let (y, y_text) = coordinate(jwk, "y")?;
            let mut point = [0u8; 65];
            point[0] = 0x04;
            point[1..33].copy_from_slice(&x);
            point[33..].copy_from_slice(&y);
            (
                PublicKey::P256(point),
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x_text}","y":"{y_text}"}}"#),
            )
        }
        Alg::EdDsa if member("kty") == Some("OKP") && member("crv") == Some("Ed25519") => {
            let (x, x_text) = coordinate(jwk, "x")?;
            if weak_ed25519_key(&x) {
                return Err(ProofError::BadKey);
            }
            (
                PublicKey::Ed25519(x),
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_text}"}}"#),
            )
        }
        _ => return Err(ProofError::BadKey),
    };
    let (key, members) = canonical;
    Ok((
        key,
        URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes())),
    ))
}

/// The y coordinates (little-endian, sign bit clear) of the Ed25519 points of small
/// order: 1 (the identity), p-1 (order 2), 0 (order 4, either x) and the two of order 8
/// (either x). Under such a key, `R = identity, s = 0` (and other cheap choices) is a
/// signature of every message: a proof by it proves nothing (RFC 8032 leaves keys
/// unchecked; libsodium's blocklist, the same list).
const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    },
    P_MINUS_ONE,
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// p - 1 = 2^255 - 20, little-endian.
const P_MINUS_ONE: [u8; 32] = {
    let mut v = [0xff; 32];
    v[0] = 0xec;
    v[31] = 0x7f;
    v
};

/// Whether an Ed25519 public key (its 32-byte encoding, RFC 8032 §5.1.2) must be
/// refused: a point of small order (any spelling of its sign bit), or a non-canonical
/// encoding (y >= p, which names a point another, canonical, spelling also names: one
/// key would have two thumbprints). Used for every DPoP proof, by the server and by
/// resource servers ([`check`]); exact comparisons, no curve arithmetic.
pub fn weak_ed25519_key(x: &[u8; 32]) -> bool {
    let mut y = *x;
    y[31] &= 0x7f;
    // y >= p: y's top byte is 0x7f, the middle bytes 0xff, and its low byte >= 0xed
    // (p = 2^255 - 19 ends in 0xed).
    let non_canonical = y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed;
    non_canonical || SMALL_ORDER_Y.contains(&y)
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
/// without ever forgetting a live proof (a replay never gets through):
/// - one user (the token's `sub`, whatever keys it logs in with) may have at most
///   `per_user` proofs remembered at once;
/// - past `max` proofs in all, only users holding less than a fair share (`max`
///   divided by the users with live proofs) get new ones in, so accounts that flood
///   (however many) cannot lock out a user making a few calls;
/// - `2 * max` is the hard ceiling.
///
/// A refused proof is [`Claim::Full`] (a 503, not a verdict on the proof) until old
/// ones expire. Expired entries are swept when a limit is reached, at most once a
/// second.
pub struct ReplayCache {
    state: Mutex<Seen>,
    max: usize,
    per_user: u32,
}

/// The outcome of [`ReplayCache::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Fresh,
    Replayed,
    /// The user's quota, or the cache, is full of live proofs: try again shortly.
    Full,
}

#[derive(Default)]
struct Seen {
    /// Replay key -> (remember until, its user).
    proofs: HashMap<[u8; 32], (i64, String)>,
    /// User -> proofs remembered.
    per_user: HashMap<String, u32>,
    last_sweep: i64,
}

/// The longest a proof is remembered: a proof may be dated up to
/// [`FUTURE_LEEWAY_SECS`] ahead, and is kept [`REMEMBER_SECS`] past its `iat`.
pub const LONGEST_MEMORY_SECS: i64 = FUTURE_LEEWAY_SECS + REMEMBER_SECS;

impl Default for ReplayCache {
    /// 100,000 proofs, 2,000 per user: a user's clients together may make 13 calls a
    /// second for as long as they like (2,000 over the 150 s a proof can be remembered).
    fn default() -> Self {
        Self::new(100_000, 2_000)
    }
}

impl ReplayCache {
    /// Limits of 0 are taken as 1.
    pub fn new(max: usize, per_user: u32) -> Self {
        Self {
            state: Mutex::new(Seen::default()),
            max: max.max(1),
            per_user: per_user.max(1),
        }
    }

    /// Records `proof`, presented with a token of `user`.
    pub fn claim(&self, proof: &Proof, user: &str, now: i64) -> Claim {
        let mut seen = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = proof.replay_key();
        if seen.proofs.contains_key(&key) {
            return Claim::Replayed;
        }
        let full = |s: &Seen| {
            let mine = s.per_user.get(user).copied().unwrap_or(0);
            let total = s.proofs.len();
            let fair_share = self.max / s.per_user.len().max(1);
            mine >= self.per_user
                || total >= self.max.saturating_mul(2)
                || (total >= self.max && mine as usize >= fair_share)
        };
        // `!=`, not `>`: a clock stepped back must not stop the sweeps.
        if full(&seen) && now != seen.last_sweep {
            seen.last_sweep = now;
            let Seen {
                proofs, per_user, ..
            } = &mut *seen;
            proofs.retain(|_, (until, owner)| {
                let live = *until >= now;
                if !live && let Some(n) = per_user.get_mut(owner.as_str()) {
                    *n = n.saturating_sub(1);
                }
                live
            });
            per_user.retain(|_, n| *n > 0);
        }
        if full(&seen) {
            return Claim::Full;
        }
        seen.proofs
            .insert(key, (proof.remember_until(), user.to_owned()));
        *seen.per_user.entry(user.to_owned()).or_default() += 1;
        Claim::Fresh
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
                let edited = crate::edit_one(good, at, c, edit);
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
    fn the_replay_cache_refuses_a_second_use_and_bounds_each_user() {
        let cache = ReplayCache::new(10, 3);
        let t = 1_000;
        assert_eq!(cache.claim(&proof("a", "1", t), "alice", t), Claim::Fresh);
        assert_eq!(
            cache.claim(&proof("a", "1", t), "alice", t),
            Claim::Replayed
        );
        // The same jti under another key is another proof.
        assert_eq!(cache.claim(&proof("b", "1", t), "bob", t), Claim::Fresh);
        // Alice floods, with a new key each time: her quota runs out, Bob's does not.
        assert_eq!(cache.claim(&proof("a2", "2", t), "alice", t), Claim::Fresh);
        assert_eq!(cache.claim(&proof("a3", "3", t), "alice", t), Claim::Fresh);
        assert_eq!(cache.claim(&proof("a4", "4", t), "alice", t), Claim::Full);
        assert_eq!(cache.claim(&proof("b", "2", t), "bob", t), Claim::Fresh);
        // A replay is still a replay when the quota is full.
        assert_eq!(
            cache.claim(&proof("a", "1", t), "alice", t),
            Claim::Replayed
        );
        // Once her proofs are too old, her quota is back (the old ones cannot be
        // replayed: `check` refuses their iat).
        let later = t + REMEMBER_SECS + 1;
        assert_eq!(
            cache.claim(&proof("a", "5", later), "alice", later),
            Claim::Fresh
        );
    }

    #[test]
    fn accounts_flooding_together_do_not_lock_out_a_quiet_user() {
        // 10 accounts at their quota of 10 fill the cache's 100.
        let cache = ReplayCache::new(100, 10);
        let t = 1_000;
        for a in 0..10 {
            for j in 0..10 {
                let user = format!("flood{a}");
                let jti = j.to_string();
                assert_eq!(cache.claim(&proof(&user, &jti, t), &user, t), Claim::Fresh);
            }
        }
        // A quiet user still gets in, several times: it holds less than its share.
        for j in 0..5 {
            let jti = j.to_string();
            assert_eq!(
                cache.claim(&proof("quiet", &jti, t), "quiet", t),
                Claim::Fresh
            );
        }
        // New flooding accounts only get in up to their share, and the cache never
        // passes twice its size.
        let mut admitted = 0;
        for a in 0..1_000 {
            let user = format!("more{a}");
            for j in 0..10 {
                if cache.claim(&proof(&user, &j.to_string(), t), &user, t) == Claim::Fresh {
                    admitted += 1;
                }
            }
        }
        let size = cache.state.lock().map(|s| s.proofs.len()).unwrap_or(0);
        assert!(size <= 200, "{size}");
        assert!(admitted < 100, "{admitted}");
        assert_eq!(
            cache.claim(&proof("quiet", "again", t), "quiet", t),
            Claim::Full
        );
    }

    #[test]
    fn a_full_replay_cache_refuses_new_proofs_and_forgets_no_live_one() {
        let cache = ReplayCache::new(4, 100);
        let t = 1_000;
        for i in 0..4 {
            let user = format!("u{i}");
            assert_eq!(cache.claim(&proof(&user, "j", t), &user, t), Claim::Fresh);
        }
        // Past its size, a user with less than its share (4 / 4 users) still gets in;
        // then the share is 0.
        assert_eq!(cache.claim(&proof("u4", "j", t), "u4", t), Claim::Fresh);
        assert_eq!(cache.claim(&proof("new", "j", t), "new", t), Claim::Full);
        // Still live: every one of them is still refused.
        for i in 0..5 {
            let user = format!("u{i}");
            assert_eq!(
                cache.claim(&proof(&user, "j", t), &user, t + 1),
                Claim::Replayed
            );
        }
        // A clock stepped back still sweeps (and forgets nothing live).
        assert_eq!(
            cache.claim(&proof("new", "j", t - 50), "new", t - 50),
            Claim::Full
        );
        let later = t + REMEMBER_SECS + 1;
        assert_eq!(
            cache.claim(&proof("new", "j", later), "new", later),
            Claim::Fresh
        );
    }

    /// Every small-order point, in every spelling of its sign bit, and every
    /// non-canonical y is weak; real keys are not. Cross-checked with ed25519-dalek's
    /// own small-order test where the server's build has it.
    #[test]
    fn small_order_and_non_canonical_ed25519_keys_are_weak() {
        let mut weak = Vec::new();
        for y in SMALL_ORDER_Y {
            let mut negative = y;
            negative[31] |= 0x80;
            weak.extend([y, negative]);
        }
        for low in 0xed..=0xff_u8 {
            let mut y = [0xff; 32];
            y[0] = low;
            y[31] = 0x7f;
            weak.push(y);
            y[31] = 0xff;
            weak.push(y);
        }
        assert_eq!(weak.len(), 10 + 2 * 19);
        for x in &weak {
            assert!(weak_ed25519_key(x), "{x:02x?}");
        }
        #[cfg(feature = "server")]
        for y in SMALL_ORDER_Y {
            // dalek decompresses each one (so they are points) and finds it weak.
            let key = ed25519_dalek::VerifyingKey::from_bytes(&y);
            assert!(key.is_ok_and(|k| k.is_weak()), "{y:02x?}");
        }
        // The largest canonical y, and real keys (RFC 8032 §7.1's first, and dalek's).
        assert!(!weak_ed25519_key(&{
            let mut y = P_MINUS_ONE;
            y[0] = 0xeb;
            y
        }));
        let rfc = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        assert_eq!(rfc.map(|k| weak_ed25519_key(&k)), Some(false));
        #[cfg(feature = "server")]
        for seed in 0..64_u8 {
            let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
            assert!(!weak_ed25519_key(key.as_bytes()));
        }
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
