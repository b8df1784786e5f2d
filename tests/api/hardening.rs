//! Issue 18 regression tests: hardening. DPoP keys that prove nothing (small-order
//! Ed25519 points), who may introspect what, and the configuration traps an operator
//! falls into (an issuer taken from a public listener, unchecked TLS to PostgreSQL, a
//! trusted-proxy range that trusts the internet).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both_stores;
use crate::dpop::token_with;
use crate::helpers::*;

both_stores!(a_small_order_ed25519_key_is_refused,);

/// A "proof" under the identity point's key: `x = 01 00..00`, signature `R = identity`,
/// `s = 0`. `s·B = R + h·A` holds for any message, so it verifies with no private key.
fn forged_identity_proof() -> String {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let header = json!({
        "typ": "dpop+jwt", "alg": "EdDSA",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(identity)},
    });
    let claims = json!({
        "jti": Uuid::new_v4().to_string(), "htm": "POST",
        "htu": "http://tessera.test/oauth/token", "iat": tessera::http::extract::now(),
    });
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&identity);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn a_small_order_ed25519_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let form = [
        ("grant_type", "password"),
        ("username", email.as_str()),
        ("password", PASSWORD),
    ];
    let answer = token_with(&app, &form, &[&forged_identity_proof()]).await;
    assert_eq!(
        (answer.status, answer.body["error"].clone()),
        (StatusCode::BAD_REQUEST, Value::from("invalid_dpop_proof")),
        "a session bound to the identity key: {}",
        answer.body
    );
}
