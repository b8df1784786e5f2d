//! Access tokens as a backend service sees them: verified with nothing but the JWKS,
//! and refused by the server when forged, expired or meant for someone else.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tessera::tokens::access::AccessTokens;

use crate::both_stores;
use crate::helpers::{Backend, ISSUER, TestApp, json, s, spawn_app};

both_stores!(
    access_token_verifies_with_the_jwks_alone,
    forged_expired_and_foreign_tokens_get_401
);

async fn jwks(app: &TestApp) -> JwkSet {
    let response = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    response.json().await.unwrap()
}

fn part(token: &str, i: usize) -> Value {
    let raw = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(i).unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

async fn access_token_verifies_with_the_jwks_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "access_token");

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::EdDSA);
    let set = jwks(&app).await;
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    assert!(
        serde_json::to_value(jwk).unwrap().get("d").is_none(),
        "no private part published"
    );

    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[ISSUER]);
    let data =
        jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap();
    let c = data.claims;
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "sid",
        "scope",
    ] {
        assert!(c.get(claim).is_some(), "claim {claim} missing: {c}");
    }
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);
    assert_eq!(c["client_id"], "app");
    assert!(c.get("roles").is_none(), "roles only when the user has any");
    let (_, me) = app.get("/v1/me", &token).await;
    assert_eq!(c["sub"], me["id"]);
    assert_eq!(c["sid"], me["session_id"]);
}

async fn assert_rejected(app: &TestApp, token: &str, what: &str) {
    let response = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
        "{what}: {challenge}"
    );
    let (_, body) = json(response).await;
    assert_eq!(body["error"], "invalid_token", "{what}");
}

fn encode(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn forged_expired_and_foreign_tokens_get_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "access_token");
    let header = part(&token, 0);
    let mut claims = part(&token, 1);
    let signature = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(2).unwrap())
        .unwrap();

    claims["roles"] = json!(["admin"]);
    assert_rejected(
        &app,
        &encode(&header, &claims, &signature),
        "tampered payload",
    )
    .await;

    let none = json!({"alg": "none", "typ": "at+jwt", "kid": header["kid"]});
    assert_rejected(
        &app,
        &format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(none.to_string()),
            URL_SAFE_NO_PAD.encode(part(&token, 1).to_string())
        ),
        "alg none",
    )
    .await;

    // Algorithm confusion: HS256 keyed with the published public key.
    let set = jwks(&app).await;
    let x = serde_json::to_value(&set.keys[0]).unwrap()["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let hs_header = jsonwebtoken::Header {
        alg: Algorithm::HS256,
        typ: Some("at+jwt".into()),
        kid: header["kid"].as_str().map(str::to_owned),
        ..jsonwebtoken::Header::default()
    };
    let confused = jsonwebtoken::encode(
        &hs_header,
        &part(&token, 1),
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_rejected(&app, &confused, "HS256 with the public key").await;

    let mut unknown_kid = header.clone();
    unknown_kid["kid"] = json!("not-a-key");
    assert_rejected(
        &app,
        &encode(&unknown_kid, &part(&token, 1), &signature),
        "unknown kid",
    )
    .await;
    let mut wrong_typ = header.clone();
    wrong_typ["typ"] = json!("JWT");
    assert_rejected(
        &app,
        &encode(&wrong_typ, &part(&token, 1), &signature),
        "typ JWT",
    )
    .await;

    // Properly signed by the server's own key, but expired / for another audience / issuer.
    let keys = app.state.auth.keys();
    let sid = uuid::Uuid::parse_str(part(&token, 1)["sid"].as_str().unwrap()).unwrap();
    let sub = uuid::Uuid::parse_str(part(&token, 1)["sub"].as_str().unwrap()).unwrap();
    let now = tessera::http::extract::now();
    let minter = |issuer: &str, audience: &str| AccessTokens::new(issuer, audience, 900);
    let expired = minter(ISSUER, ISSUER);
    assert_rejected(
        &app,
        &expired.sign(
            &keys,
            &expired.claims(sub, sid, "app", "", vec![], now - 3600),
        ),
        "expired",
    )
    .await;
    let other_aud = minter(ISSUER, "https://other.example");
    assert_rejected(
        &app,
        &other_aud.sign(&keys, &other_aud.claims(sub, sid, "app", "", vec![], now)),
        "wrong audience",
    )
    .await;
    let other_iss = minter("https://evil.example", ISSUER);
    assert_rejected(
        &app,
        &other_iss.sign(&keys, &other_iss.claims(sub, sid, "app", "", vec![], now)),
        "wrong issuer",
    )
    .await;
    let fine = minter(ISSUER, ISSUER);
    assert_eq!(
        app.get(
            "/v1/me",
            &fine.sign(&keys, &fine.claims(sub, sid, "app", "", vec![], now))
        )
        .await
        .0,
        StatusCode::OK,
        "control: the same minting path with right claims passes"
    );

    assert_rejected(&app, &"a".repeat(5000), "oversized").await;
    assert_rejected(&app, "garbage", "garbage").await;
}
