//! A user's own sessions (devices) and the logout scopes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, s, spawn_app};

both_stores!(
    users_list_and_end_their_own_sessions,
    logout_scopes_end_the_right_sessions
);

async fn sessions_of(app: &TestApp, access: &str) -> Vec<Value> {
    let (status, body) = app.get("/v1/sessions", access).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sessions"].as_array().unwrap().clone()
}

async fn users_list_and_end_their_own_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, phone) = app.user_with_session().await;
    let laptop = app
        .client
        .post(app.url("/oauth/token"))
        .header("user-agent", "laptop-browser/1.0")
        .form(&[
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let list = sessions_of(&app, &s(&phone, "access_token")).await;
    assert_eq!(list.len(), 2);
    for key in [
        "id",
        "created_at",
        "last_used_at",
        "expires_at",
        "user_agent",
        "ip",
        "current",
    ] {
        assert!(list[0].get(key).is_some(), "{key}");
    }
    assert_eq!(
        list.iter().filter(|s| s["current"] == json!(true)).count(),
        1
    );
    let laptop_entry = list
        .iter()
        .find(|s| s["user_agent"] == "laptop-browser/1.0")
        .unwrap();
    assert_eq!(laptop_entry["current"], false);
    assert_eq!(laptop_entry["ip"], "127.0.0.1");

    // Another user's session is not found; a bad id is a bad request.
    let (_, stranger) = app.user_with_session().await;
    let stranger_sid = sessions_of(&app, &s(&stranger, "access_token")).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.delete(
            &format!("/v1/sessions/{stranger_sid}"),
            &s(&phone, "access_token")
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = app
        .delete("/v1/sessions/not-a-uuid", &s(&phone, "access_token"))
        .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_id".into())
    );

    let laptop_sid = laptop_entry["id"].as_str().unwrap();
    assert_eq!(
        app.delete(
            &format!("/v1/sessions/{laptop_sid}"),
            &s(&phone, "access_token")
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.refresh(&s(&laptop, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(sessions_of(&app, &s(&phone, "access_token")).await.len(), 1);
    assert_eq!(
        app.refresh(&s(&stranger, "refresh_token")).await.0,
        StatusCode::OK,
        "the stranger is untouched"
    );
}

async fn logout_scopes_end_the_right_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, a) = app.user_with_session().await;
    let (_, b) = app.login(&email, PASSWORD).await;
    let (_, c) = app.login(&email, PASSWORD).await;

    let (status, body) = app
        .post_json(
            "/v1/logout",
            &s(&a, "access_token"),
            &json!({"scope": "everything"}),
        )
        .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );

    // others: b and c end, a lives.
    assert_eq!(
        app.post_json(
            "/v1/logout",
            &s(&a, "access_token"),
            &json!({"scope": "others"})
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.refresh(&s(&b, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.refresh(&s(&c, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, a2) = app.refresh(&s(&a, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    // local (no body at all): only this session.
    let (_, d) = app.login(&email, PASSWORD).await;
    assert_eq!(
        app.logout(&s(&a2, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.refresh(&s(&a2, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, d2) = app.refresh(&s(&d, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    // global, as a query parameter: everything.
    let (_, e) = app.login(&email, PASSWORD).await;
    let response = app
        .client
        .post(app.url("/v1/logout?scope=global"))
        .bearer_auth(s(&d2, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.refresh(&s(&d2, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.refresh(&s(&e, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    // Account routes check the session live: a logged-out token is refused at once.
    assert_eq!(
        app.get("/v1/me", &s(&e, "access_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(crate::refresh::audit_actions(&app, "logout").await.len(), 3);
}
