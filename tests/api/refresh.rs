//! The refresh grant: rotation, grace replays, reuse detection, races, lifetimes,
//! and RFC 7009 revocation.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;
use tessera::auth::{Caller, RequestClient};
use tessera::metrics::RefreshOutcome;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, json, s, spawn_app, spawn_app_with, spawn_instance};

both_stores!(
    refresh_rotates_and_spends_the_old_token,
    grace_replay_returns_the_identical_successor,
    replay_after_successor_use_kills_the_session,
    replay_outside_the_window_kills_the_session,
    parallel_refreshes_of_one_token_yield_one_successor,
    lifetimes_end_tokens_and_sessions,
    unknown_and_malformed_refresh_tokens_are_invalid_grant,
    revocation_endpoint_ends_the_session,
);

/// Audit events with this action, read through the store.
pub async fn audit_actions(app: &TestApp, action: &str) -> Vec<tessera::store::AuditRecord> {
    app.state
        .auth
        .store
        .audit_events(None, Some(action), None, 100)
        .await
        .unwrap()
}

async fn refresh_rotates_and_spends_the_old_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, first) = app.user_with_session().await;
    let response = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&first, "refresh_token")),
            ("client_id", "app"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, second) = json(response).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(
        app.get("/v1/me", &s(&second, "access_token")).await.0,
        StatusCode::OK
    );

    // JSON body works too; the chain continues.
    let (status, third) = json(
        app.client
            .post(app.url("/oauth/token"))
            .json(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": s(&second, "refresh_token")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (_, me1) = app.get("/v1/me", &s(&first, "access_token")).await;
    let (_, me3) = app.get("/v1/me", &s(&third, "access_token")).await;
    assert_eq!(
        me1["session_id"], me3["session_id"],
        "same session throughout"
    );
}

async fn grace_replay_returns_the_identical_successor(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, first) = app.user_with_session().await;
    let parent = s(&first, "refresh_token");
    let (_, a) = app.refresh(&parent).await;
    let (status, b) = app.refresh(&parent).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(
        a["refresh_token"], b["refresh_token"],
        "byte-identical successor"
    );
    assert_ne!(a["access_token"], b["access_token"], "a fresh access token");
    // The successor still works: the replay did not spend it.
    assert_eq!(app.refresh(&s(&b, "refresh_token")).await.0, StatusCode::OK);
    assert_eq!(audit_actions(&app, "refresh_grace_replay").await.len(), 1);
    assert_eq!(
        app.state
            .auth
            .metrics
            .refreshes(RefreshOutcome::replayed_in_grace),
        1
    );
}

async fn replay_after_successor_use_kills_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, first) = app.user_with_session().await;
    let parent = s(&first, "refresh_token");
    let (_, second) = app.refresh(&parent).await;
    let (_, third) = app.refresh(&s(&second, "refresh_token")).await;
    assert!(third["refresh_token"].is_string());

    let (status, body) = app.refresh(&parent).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    // The whole family is dead, the legitimate holder's newest token too.
    let (status, body) = app.refresh(&s(&third, "refresh_token")).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    let events = audit_actions(&app, "refresh_token_reuse").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.detail["case"], "successor_already_used");
    assert!(
        events[0].event.ip.is_some()
            && events[0].event.session_id.is_some()
            && events[0].event.user_id.is_some()
    );
}

async fn replay_outside_the_window_kills_the_session(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_REFRESH_GRACE_SECS", "0")]).await;
    let (_, first) = app.user_with_session().await;
    let parent = s(&first, "refresh_token");
    let (_, second) = app.refresh(&parent).await;
    let (status, _) = app.refresh(&parent).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.refresh(&s(&second, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST,
        "successor revoked too"
    );
    let events = audit_actions(&app, "refresh_token_reuse").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.detail["case"], "outside_grace_window");
    assert_eq!(
        app.state
            .auth
            .metrics
            .refreshes(RefreshOutcome::reuse_detected),
        1
    );

    // The window also closes with time: the same rules through the library, 11 s later.
    // Simulated times well ahead of the clock: a rotation records the later of its `now`
    // and the database's clock, so a real `now` could be overtaken by a second boundary.
    let app = spawn_app(backend).await;
    let (_, first) = app.user_with_session().await;
    let parent = s(&first, "refresh_token");
    let now = tessera::http::extract::now() + 1000;
    let caller = Caller::default();
    app.state
        .auth
        .refresh(&parent, &RequestClient::Default, &caller, now)
        .await
        .unwrap();
    assert!(
        app.state
            .auth
            .refresh(&parent, &RequestClient::Default, &caller, now + 10)
            .await
            .is_ok(),
        "inside the window"
    );
    assert!(
        app.state
            .auth
            .refresh(&parent, &RequestClient::Default, &caller, now + 11)
            .await
            .is_err(),
        "after the window"
    );
    assert_eq!(audit_actions(&app, "refresh_token_reuse").await.len(), 1);
}

/// Fires `n` refreshes of one token at once, split across `apps`.
pub async fn race(apps: &[&TestApp], token: &str, n: usize) -> Vec<(StatusCode, Value)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = apps[i % apps.len()];
            let (client, url, token, barrier) = (
                app.client.clone(),
                app.url("/oauth/token"),
                token.to_owned(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let response = client
                    .post(url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", token.as_str()),
                    ])
                    .send()
                    .await
                    .unwrap();
                json(response).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The grace replays one rotated token gets by default.
const MAX_REPLAYS: usize = 3;

/// One racer rotates and exactly the default number of replays get the same successor
/// back; every other racer gets `invalid_grant` (not reuse: the session lives); and the
/// successor works afterwards.
pub async fn assert_one_successor(app: &TestApp, results: &[(StatusCode, Value)]) {
    let (ok, refused): (Vec<_>, Vec<_>) = results.iter().partition(|(st, _)| *st == StatusCode::OK);
    assert_eq!(
        ok.len(),
        (1 + MAX_REPLAYS).min(results.len()),
        "one rotation and the capped replays succeed"
    );
    for (status, body) in &refused {
        assert_eq!(
            (*status, s(body, "error")),
            (StatusCode::BAD_REQUEST, "invalid_grant".to_owned()),
            "{body}"
        );
    }
    let successors: HashSet<String> = ok.iter().map(|(_, b)| s(b, "refresh_token")).collect();
    assert_eq!(successors.len(), 1, "exactly one distinct successor");
    let successor = successors.into_iter().next().unwrap();
    assert_eq!(
        app.refresh(&successor).await.0,
        StatusCode::OK,
        "the one successor works"
    );
}

async fn parallel_refreshes_of_one_token_yield_one_successor(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, first) = app.user_with_session().await;
    let results = race(&[&app], &s(&first, "refresh_token"), 32).await;
    assert_one_successor(&app, &results).await;
    crate::invariants::check(&app).await;
    if backend == Backend::Postgres {
        // Two instances on one database: the same race split across both.
        let other = spawn_instance(&app.database_url, &app.secret_key, &[]).await;
        let (_, first) = app.user_with_session().await;
        let results = race(&[&app, &other], &s(&first, "refresh_token"), 32).await;
        assert_one_successor(&other, &results).await;
        crate::invariants::check(&app).await;
    }
}

async fn lifetimes_end_tokens_and_sessions(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_REFRESH_TOKEN_TTL_SECS", "100"),
            ("TESSERA_SESSION_MAX_AGE_SECS", "250"),
        ],
    )
    .await;
    let auth = &app.state.auth;
    let caller = Caller::default();
    let (_, first) = app.user_with_session().await;
    // Times count from the login itself (a busy machine may take a while to answer it).
    let (_, me) = app.get("/v1/me", &s(&first, "access_token")).await;
    let now = auth
        .store
        .session(s(&me, "session_id").parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .created_at;
    // Idle timeout: a token unused for its TTL is dead.
    assert!(matches!(
        auth.refresh(
            &s(&first, "refresh_token"),
            &RequestClient::Default,
            &caller,
            now + 100
        )
        .await,
        Err(tessera::auth::AuthError::InvalidGrant(_))
    ));
    // Used in time, each successor gets a fresh TTL, but never past the session's end.
    let g1 = auth
        .refresh(
            &s(&first, "refresh_token"),
            &RequestClient::Default,
            &caller,
            now + 90,
        )
        .await
        .unwrap();
    let g2 = auth
        .refresh(
            g1.refresh_token.expose(),
            &RequestClient::Default,
            &caller,
            now + 180,
        )
        .await
        .unwrap();
    assert!(
        auth.refresh(
            g2.refresh_token.expose(),
            &RequestClient::Default,
            &caller,
            now + 250
        )
        .await
        .is_err(),
        "session max age"
    );
    let g3 = auth
        .refresh(
            g2.refresh_token.expose(),
            &RequestClient::Default,
            &caller,
            now + 248,
        )
        .await
        .unwrap();
    let state = auth
        .store
        .token_state(auth.presented(&g3.refresh_token).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.expires_at, state.session.expires_at,
        "successor capped at the session's end"
    );
    assert_eq!(
        audit_actions(&app, "refresh_token_reuse").await.len(),
        0,
        "expiry is not reuse"
    );
}

async fn unknown_and_malformed_refresh_tokens_are_invalid_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    let unknown = tessera::tokens::refresh::RefreshToken::generate_legacy();
    for token in [unknown.expose(), "tsr_short", "garbage", &"x".repeat(3000)] {
        let (status, body) = app.refresh(token).await;
        assert_eq!(
            (status, s(&body, "error")),
            (StatusCode::BAD_REQUEST, "invalid_grant".into()),
            "{}",
            &token[..token.len().min(20)]
        );
    }
    // A token presented by a client it was not issued to is not spent.
    let (_, tokens) = app.user_with_session().await;
    let (status, body) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&tokens, "refresh_token")),
            ("client_id", "other"),
        ])
        .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    assert_eq!(
        app.refresh(&s(&tokens, "refresh_token")).await.0,
        StatusCode::OK,
        "still unspent"
    );

    let (status, body) = app.token(&[("grant_type", "refresh_token")]).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
}

async fn revocation_endpoint_ends_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, tokens) = app.user_with_session().await;
    let revoke = |form: Vec<(&'static str, String)>| {
        app.client.post(app.url("/oauth/revoke")).form(&form).send()
    };
    let response = revoke(vec![
        ("token", s(&tokens, "refresh_token")),
        ("token_type_hint", "refresh_token".into()),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = app.refresh(&s(&tokens, "refresh_token")).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(
        app.get("/v1/sessions", &s(&tokens, "access_token")).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Unknown tokens: 200 all the same (RFC 7009 §2.2); a missing one is a bad request.
    assert_eq!(
        revoke(vec![("token", "tsr_unknown".into())])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (status, body) = json(revoke(vec![]).await.unwrap()).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );

    // An access token can be revoked too: its session ends.
    let (_, other) = app.user_with_session().await;
    assert_eq!(
        revoke(vec![("token", s(&other, "access_token"))])
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.refresh(&s(&other, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(audit_actions(&app, "logout").await.len(), 2);
}
