//! Fetching the JWKS and honouring its `Cache-Control: max-age`.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::Key;

pub(super) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
const MAX_MAX_AGE: Duration = Duration::from_secs(86_400);

pub(super) struct Fetched {
    pub keys: HashMap<String, Key>,
    pub max_age: Duration,
}

fn max_age(cache_control: Option<&str>) -> Duration {
    cache_control
        .and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
        })
        .map_or(DEFAULT_MAX_AGE, |secs| {
            Duration::from_secs(secs).min(MAX_MAX_AGE)
        })
}

/// The algorithm a key is for: its `alg`, or what its type implies. Keys whose
/// algorithm cannot be pinned are skipped.
fn algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg.to_string().parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        _ => None,
    }
}

pub(super) async fn fetch(http: &reqwest::Client, base_url: &str) -> Result<Fetched, String> {
    let response = http
        .get(format!("{base_url}/.well-known/jwks.json"))
        // Per request, not per client: the same client also holds the long-lived feed.
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let max_age = max_age(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
    );
    let text = response.text().await.map_err(|e| e.to_string())?;
    parse(&text, max_age)
}

/// The usable keys of a JWKS document.
pub(super) fn parse(text: &str, max_age: Duration) -> Result<Fetched, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), algorithm(jwk)) else {
            continue;
        };
        // Never a symmetric key from a public document.
        if alg == Algorithm::HS256 {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, Key { alg, key });
        }
    }
    Ok(Fetched { keys, max_age })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(max_age(Some("public, max-age=60")), Duration::from_secs(60));
        assert_eq!(max_age(Some("no-cache")), DEFAULT_MAX_AGE);
        assert_eq!(max_age(None), DEFAULT_MAX_AGE);
        assert_eq!(max_age(Some("max-age=99999999")), MAX_MAX_AGE);
    }
}
