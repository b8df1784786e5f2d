//! Several instances on one PostgreSQL database: they agree on keys from a cold start,
//! and share sessions and revocations.

use reqwest::StatusCode;

use crate::helpers::{Backend, fresh_database, s, spawn_instance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_started_together_share_keys_sessions_and_revocations() {
    let url = fresh_database(Backend::Postgres).await;
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let (a, b) = tokio::join!(
        spawn_instance(&url, &secret, &[]),
        spawn_instance(&url, &secret, &[])
    );

    let jwks_a = a.text("/.well-known/jwks.json").await;
    let jwks_b = b.text("/.well-known/jwks.json").await;
    assert_eq!(
        jwks_a, jwks_b,
        "one signing key, whichever instance started first"
    );

    // Log in on A, refresh on B, use B's access token on A.
    let (_, on_a) = a.user_with_session().await;
    let (status, on_b) = b.refresh(&s(&on_a, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        a.get("/v1/me", &s(&on_b, "access_token")).await.0,
        StatusCode::OK
    );

    // A grace replay on A of the token B just rotated returns B's successor.
    let (status, replay) = a.refresh(&s(&on_a, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replay["refresh_token"], on_b["refresh_token"]);

    // Log out on B: A refuses the session's refresh token and its access token on
    // live-checked routes at once.
    assert_eq!(
        b.logout(&s(&on_b, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        a.refresh(&s(&on_b, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        a.get("/v1/sessions", &s(&on_b, "access_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
}
