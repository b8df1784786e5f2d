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

both_stores!(
    a_small_order_ed25519_key_is_refused,
    refresh_tokens_are_introspected_only_by_their_client,
    access_tokens_are_introspected_by_the_audiences_services,
);

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

/// POST /oauth/introspect as `client`.
async fn introspect(app: &TestApp, client: &(String, String), token: &str) -> Value {
    let (status, body) = json(
        app.client
            .post(app.url("/oauth/introspect"))
            .basic_auth(&client.0, Some(&client.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A confidential client, and a user's session logged in through it (password grant
/// with the client's secret): its token response.
async fn confidential_session(app: &TestApp) -> ((String, String), Value) {
    let client = crate::services::service_client(app).await;
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let (status, tokens) = json(
        app.client
            .post(app.url("/oauth/token"))
            .basic_auth(&client.0, Some(&client.1))
            .form(&[
                ("grant_type", "password"),
                ("username", email.as_str()),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    (client, tokens)
}

async fn refresh_tokens_are_introspected_only_by_their_client(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner, tokens) = confidential_session(&app).await;
    let other = crate::services::service_client(&app).await;
    let refresh = s(&tokens, "refresh_token");

    // Its own client learns it is live, and whose it is.
    let mine = introspect(&app, &owner, &refresh).await;
    assert_eq!(
        (&mine["active"], &mine["token_type"], &mine["client_id"]),
        (&json!(true), &json!("refresh_token"), &json!(owner.0)),
        "{mine}"
    );
    // Its life, as its own client sees it: rotated, the old one is inactive and the
    // new one active; after a logout, inactive.
    let (status, next) = json(
        app.client
            .post(app.url("/oauth/token"))
            .basic_auth(&owner.0, Some(&owner.1))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let successor = s(&next, "refresh_token");
    assert_eq!(
        introspect(&app, &owner, &refresh).await,
        json!({"active": false})
    );
    let live = introspect(&app, &owner, &successor).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["sid"], mine["sid"], "{live}");

    // Any other client, a service of the same audience included, learns nothing:
    // not that it is live, nor the user. A refresh token is never shown to a resource
    // server (RFC 6749 §10.4); one that has it holds a stolen credential.
    assert_eq!(
        introspect(&app, &other, &refresh).await,
        json!({"active": false}),
        "another client's refresh token"
    );
    // The same for the first-party app's refresh tokens: no confidential client is
    // the public client `app`.
    let (_, app_tokens) = app.user_with_session().await;
    assert_eq!(
        introspect(&app, &other, &s(&app_tokens, "refresh_token")).await,
        json!({"active": false}),
        "the app's refresh token, asked by a service"
    );
    assert_eq!(
        introspect(&app, &other, &successor).await,
        json!({"active": false})
    );
    assert_eq!(
        app.logout(&s(&next, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        introspect(&app, &owner, &successor).await,
        json!({"active": false}),
        "after the logout"
    );
}

async fn access_tokens_are_introspected_by_the_audiences_services(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner, tokens) = confidential_session(&app).await;
    let service = crate::services::service_client(&app).await;
    let access = s(&tokens, "access_token");
    let (email, app_tokens) = app.user_with_session().await;
    let app_access = s(&app_tokens, "access_token");

    // An access token's `aud` is this server's audience, which every confidential
    // client (a backend the token is presented to) serves: its own client and the
    // services both get the answer, as backends do today.
    for (asker, token, client_id) in [
        (&owner, &access, owner.0.as_str()),
        (&service, &access, owner.0.as_str()),
        (&service, &app_access, "app"),
    ] {
        let answer = introspect(&app, asker, token).await;
        assert_eq!(
            (&answer["active"], &answer["client_id"]),
            (&json!(true), &json!(client_id)),
            "{answer}"
        );
        assert_eq!(answer["aud"], ISSUER, "{answer}");
    }
    assert_eq!(
        introspect(&app, &service, &app_access).await["username"],
        email.as_str()
    );
    // (A token for another `aud` is inactive to everyone: tests/api/hostile.rs.)
}
