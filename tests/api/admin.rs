//! The admin API: authority checked live, force logout, disable, audit.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, s, spawn_app};

both_stores!(
    admin_routes_need_a_live_admin_session,
    admin_manages_users_and_forces_logout,
    disabling_blocks_login_and_refresh_until_enabled,
    malformed_admin_queries_are_400,
);

async fn admin_routes_need_a_live_admin_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, user) = app.user_with_session().await;
    let (_, admin) = app.admin_session().await;
    let admin_token = s(&admin, "access_token");

    // No token: 401; a user's token: 403 on every route.
    assert_eq!(
        app.client
            .get(app.url("/v1/admin/users"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let some_id = uuid::Uuid::new_v4();
    let user_token = s(&user, "access_token");
    let routes = [
        ("GET", "/v1/admin/users".to_owned()),
        ("POST", "/v1/admin/users".to_owned()),
        ("GET", format!("/v1/admin/users/{some_id}/sessions")),
        ("DELETE", format!("/v1/admin/users/{some_id}/sessions")),
        ("DELETE", format!("/v1/admin/sessions/{some_id}")),
        ("POST", format!("/v1/admin/users/{some_id}/disable")),
        ("POST", format!("/v1/admin/users/{some_id}/enable")),
        ("GET", "/v1/admin/audit".to_owned()),
    ];
    for (method, path) in &routes {
        let request = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&user_token);
        let request = if *method == "POST" {
            request.json(&json!({"email": "x@example.com", "password": PASSWORD}))
        } else {
            request
        };
        let status = request.send().await.unwrap().status();
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    assert_eq!(
        app.get("/v1/admin/users", &admin_token).await.0,
        StatusCode::OK
    );

    // Revoking the admin's session takes effect at once, not after 15 minutes.
    let (_, me) = app.get("/v1/me", &admin_token).await;
    let (_, second_admin_session) = app.login(&s(&me, "email"), PASSWORD).await;
    let (status, body) = app
        .delete(
            &format!("/v1/admin/sessions/{}", s(&me, "session_id")),
            &s(&second_admin_session, "access_token"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.get("/v1/admin/users", &admin_token).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    assert_eq!(
        app.get("/v1/admin/users", &s(&second_admin_session, "access_token"))
            .await
            .0,
        StatusCode::OK
    );
}

async fn admin_manages_users_and_forces_logout(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_id, admin) = app.admin_session().await;
    let token = s(&admin, "access_token");

    let (status, created) = app
        .post_json(
            "/v1/admin/users",
            &token,
            &json!({"email": "Grace@Example.com", "password": PASSWORD, "roles": ["support"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["email"], "grace@example.com");
    assert_eq!(created["roles"], json!(["support"]));
    let (status, body) = app
        .post_json(
            "/v1/admin/users",
            &token,
            &json!({"email": "grace@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::CONFLICT, "email_taken".into())
    );
    let user_id = s(&created, "id");

    // Listing, filtering and paging.
    let (_, page) = app.get("/v1/admin/users?email=grace", &token).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    let (_, page1) = app.get("/v1/admin/users?limit=1", &token).await;
    assert_eq!(page1["users"].as_array().unwrap().len(), 1);
    let cursor = s(&page1, "next_cursor");
    let (_, page2) = app
        .get(&format!("/v1/admin/users?limit=1&cursor={cursor}"), &token)
        .await;
    assert_ne!(page1["users"][0]["id"], page2["users"][0]["id"]);
    assert_eq!(
        app.get("/v1/admin/users?limit=0", &token).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/admin/users?cursor=nope", &token).await.0,
        StatusCode::BAD_REQUEST
    );

    // Two devices; the admin sees them and logs one out, then all.
    let (_, one) = app.login("grace@example.com", PASSWORD).await;
    let before_two = tessera::http::extract::now();
    let (_, two) = app.login("grace@example.com", PASSWORD).await;
    let (status, sessions) = app
        .get(&format!("/v1/admin/users/{user_id}/sessions"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 2);
    let (_, me_one) = app.get("/v1/me", &s(&one, "access_token")).await;
    let (status, revoked) = app
        .delete(
            &format!("/v1/admin/sessions/{}", s(&me_one, "session_id")),
            &token,
        )
        .await;
    assert_eq!(
        (status, revoked["revoked"].clone()),
        (StatusCode::OK, json!(1))
    );
    assert_eq!(
        app.refresh(&s(&one, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.delete(
            &format!("/v1/admin/sessions/{}", s(&me_one, "session_id")),
            &token
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    let (status, revoked) = app
        .delete(&format!("/v1/admin/users/{user_id}/sessions"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["revoked"], 1);
    // RFC 3339 in UTC compares as text. The last session began (its last rotation)
    // between `before_two` and now; its tokens live the tail past that.
    let tail = app.state.auth.token_tail_secs();
    assert_eq!(tail, 900 + 10 + 5, "access ttl, grace, verifier leeway");
    let now = tessera::http::extract::now();
    let effective = s(&revoked, "effective_at");
    assert!(
        tessera::http::rfc3339(before_two + tail) <= effective
            && effective <= tessera::http::rfc3339(now + tail),
        "effective_at is when the last access token expires: {effective}"
    );
    assert_eq!(
        app.refresh(&s(&two, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );

    // Unknown and malformed ids.
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        app.get(&format!("/v1/admin/users/{unknown}/sessions"), &token)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/v1/admin/users/{unknown}/sessions"), &token)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/v1/admin/sessions/123", &token).await.0,
        StatusCode::BAD_REQUEST
    );

    // The audit trail names the actor.
    let (status, audit) = app
        .get(&format!("/v1/admin/audit?user_id={user_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = audit["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["admin_user_created", "login", "session_revoked"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let revocations: Vec<_> = events
        .iter()
        .filter(|e| e["action"] == "session_revoked")
        .collect();
    assert_eq!(revocations.len(), 2);
    assert!(
        revocations
            .iter()
            .all(|e| e["actor_id"] == admin_id.to_string())
    );
    let (_, only_logins) = app
        .get("/v1/admin/audit?action=login&limit=1", &token)
        .await;
    assert_eq!(only_logins["events"].as_array().unwrap().len(), 1);
    assert!(only_logins["next_cursor"].is_string());
}

async fn disabling_blocks_login_and_refresh_until_enabled(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.admin_session().await;
    let token = s(&admin, "access_token");
    let (email, user) = app.user_with_session().await;
    let (_, me) = app.get("/v1/me", &s(&user, "access_token")).await;
    let user_id = s(&me, "id");

    let (status, body) = app
        .post_json(
            &format!("/v1/admin/users/{user_id}/disable"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["disabled"].clone()),
        (StatusCode::OK, json!(true)),
        "{body}"
    );
    assert_eq!(
        app.refresh(&s(&user, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = app.login(&email, PASSWORD).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(
        app.get("/v1/me", &s(&user, "access_token")).await.0,
        StatusCode::UNAUTHORIZED
    );

    let (status, body) = app
        .post_json(
            &format!("/v1/admin/users/{user_id}/enable"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["disabled"].clone()),
        (StatusCode::OK, json!(false))
    );
    assert_eq!(app.login(&email, PASSWORD).await.0, StatusCode::OK);
    // Sessions ended by the disable stay ended.
    assert_eq!(
        app.refresh(&s(&user, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );

    let (_, audit) = app
        .get(&format!("/v1/admin/audit?user_id={user_id}"), &token)
        .await;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["user_disabled", "user_enabled", "login_failed"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
}

async fn malformed_admin_queries_are_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.admin_session().await;
    let token = s(&admin, "access_token");
    for path in [
        "/v1/admin/users?limit=0",
        "/v1/admin/users?limit=1&limit=2",
        "/v1/admin/users?cursor=nope",
        "/v1/admin/audit?user_id=nope",
        "/v1/admin/audit?cursor=x",
        "/v1/admin/users/%FF/sessions",
    ] {
        let (status, body) = app.get(path, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: JSON error");
    }
    for path in ["/v1/admin/users?email=%00", "/v1/admin/audit?action=%00"] {
        let (status, body) = app.get(path, &token).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "never a 500: {path} {status} {body}"
        );
    }
}
