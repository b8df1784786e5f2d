//! Browser apps: the refresh token as an HttpOnly cookie (`token_delivery=cookie`), its
//! CSRF rule, its clearing on logout, and CORS with credentials. The cookie jar is
//! played by hand (a `Cookie` header), so each test says exactly what the browser sends.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::Value;
use tessera::metrics::RefreshOutcome;
use uuid::Uuid;

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, spawn_app_with};

const ORIGIN: &str = "http://localhost:5173";
const DEV: &[(&str, &str)] = &[
    ("TESSERA_COOKIE_SECURE", "false"),
    ("TESSERA_CORS_ALLOWED_ORIGINS", ORIGIN),
];

struct Reply {
    status: StatusCode,
    body: Value,
    set_cookie: Option<String>,
}

/// The token value a `Set-Cookie` line carries, and the line itself.
fn cookie_value(line: &str) -> String {
    let first = line.split(';').next().unwrap_or_default();
    first.split_once('=').map(|(_, v)| v.to_owned()).unwrap()
}

async fn post(app: &TestApp, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let response = app
        .client
        .post(app.url(path))
        .headers(h)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap_or_default();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        set_cookie,
    }
}

/// Signs up and logs in with cookie delivery: the `Set-Cookie` line and the body.
async fn cookie_login(app: &TestApp) -> Reply {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let form = [
        ("grant_type", "password"),
        ("username", email.as_str()),
        ("password", PASSWORD),
        ("token_delivery", "cookie"),
    ];
    post(app, "/oauth/token", &form, &[("x-tessera-csrf", "1")]).await
}

async fn cookie_refresh(app: &TestApp, token: &str, extra: &[(&str, &str)]) -> Reply {
    let cookie = format!("tessera_refresh={token}");
    let mut headers = vec![("cookie", cookie.as_str())];
    headers.extend_from_slice(extra);
    post(
        app,
        "/oauth/token",
        &[("grant_type", "refresh_token")],
        &headers,
    )
    .await
}

async fn login_delivers_an_httponly_cookie_not_in_the_body(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let reply = cookie_login(&app).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.get("refresh_token").is_none(), "{}", reply.body);
    assert!(reply.body["access_token"].as_str().is_some());
    let line = reply.set_cookie.expect("a Set-Cookie header");
    let ttl = app.state.auth.policy.refresh_token_ttl;
    assert!(line.starts_with("__Host-tessera_refresh=tsr_"), "{line}");
    assert!(
        line.ends_with(&format!(
            "; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Strict; Secure"
        )),
        "{line}"
    );

    let dev = spawn_app_with(
        backend,
        &[
            ("TESSERA_COOKIE_SECURE", "false"),
            ("TESSERA_COOKIE_SAMESITE", "Lax"),
        ],
    )
    .await;
    let line = cookie_login(&dev).await.set_cookie.unwrap();
    assert!(line.starts_with("tessera_refresh=tsr_"), "{line}");
    assert!(
        line.ends_with("; Path=/oauth; Max-Age=604800; HttpOnly; SameSite=Lax"),
        "{line}"
    );
}

async fn a_refresh_without_the_parameter_spends_the_cookie_and_rotates_it(backend: Backend) {
    let app = spawn_app_with(backend, DEV).await;
    let first = cookie_value(&cookie_login(&app).await.set_cookie.unwrap());
    let csrf = [("x-tessera-csrf", "1"), ("origin", ORIGIN)];
    let reply = cookie_refresh(&app, &first, &csrf).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.get("refresh_token").is_none(), "{}", reply.body);
    let second = cookie_value(&reply.set_cookie.unwrap());
    assert_ne!(first, second);
    // A lost response: the same cookie again within the grace window, same successor.
    let replay = cookie_refresh(&app, &first, &csrf).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(cookie_value(&replay.set_cookie.unwrap()), second);
    let third = cookie_refresh(&app, &second, &csrf).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.body);
    let bogus = post(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("token_delivery", "header"),
        ],
        &csrf,
    )
    .await;
    assert_eq!(bogus.status, StatusCode::BAD_REQUEST);
    assert_eq!(bogus.body["error"], "invalid_request");
    // Neither parameter nor cookie: a plain missing-parameter error.
    let none = post(
        &app,
        "/oauth/token",
        &[("grant_type", "refresh_token")],
        &csrf,
    )
    .await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    assert_eq!(none.body["error"], "invalid_request");
}

async fn reuse_of_a_spent_cookie_ends_the_session(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_COOKIE_SECURE", "false"),
            ("TESSERA_REFRESH_GRACE_SECS", "0"),
        ],
    )
    .await;
    let csrf = [("x-tessera-csrf", "1")];
    let first = cookie_value(&cookie_login(&app).await.set_cookie.unwrap());
    let second = cookie_value(
        &cookie_refresh(&app, &first, &csrf)
            .await
            .set_cookie
            .unwrap(),
    );
    let reuse = cookie_refresh(&app, &first, &csrf).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse.body["error"], "invalid_grant");
    let after = cookie_refresh(&app, &second, &csrf).await;
    assert_eq!(
        after.body["error"], "invalid_grant",
        "the session survived reuse"
    );
    assert_eq!(
        app.state
            .auth
            .metrics
            .refreshes(RefreshOutcome::reuse_detected),
        1
    );
}

async fn a_cookie_request_without_the_csrf_proof_is_refused_and_rotates_nothing(backend: Backend) {
    let app = spawn_app_with(backend, DEV).await;
    let token = cookie_value(&cookie_login(&app).await.set_cookie.unwrap());
    for headers in [
        vec![],
        vec![("origin", ORIGIN)],
        vec![("x-tessera-csrf", "0")],
        vec![("x-tessera-csrf", "1"), ("origin", "https://evil.example")],
        vec![("x-tessera-csrf", "1"), ("origin", "null")],
    ] {
        let reply = cookie_refresh(&app, &token, &headers).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(reply.body["error"], "csrf_check_failed", "{headers:?}");
        assert!(reply.set_cookie.is_none());
        let cookie = format!("tessera_refresh={token}");
        let mut with_cookie = vec![("cookie", cookie.as_str())];
        with_cookie.extend_from_slice(&headers);
        let revoke = post(&app, "/oauth/revoke", &[], &with_cookie).await;
        assert_eq!(revoke.status, StatusCode::FORBIDDEN, "revoke {headers:?}");
    }
    // Cookie delivery of a login needs the proof too (else login CSRF).
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    app.signup(&email, PASSWORD).await;
    let form = [
        ("grant_type", "password"),
        ("username", email.as_str()),
        ("password", PASSWORD),
        ("token_delivery", "cookie"),
    ];
    let login = post(&app, "/oauth/token", &form, &[]).await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.state.auth.metrics.refreshes(RefreshOutcome::ok),
        0,
        "a refused request rotated"
    );
    // The token is untouched: it rotates normally, not as a grace replay.
    let ok = cookie_refresh(&app, &token, &[("x-tessera-csrf", "1")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(app.state.auth.metrics.refreshes(RefreshOutcome::ok), 1);
    assert_eq!(
        app.state
            .auth
            .metrics
            .refreshes(RefreshOutcome::replayed_in_grace),
        0
    );
}

async fn revoke_and_logout_clear_the_cookie(backend: Backend) {
    let app = spawn_app_with(backend, DEV).await;
    let cleared = "tessera_refresh=; Path=/oauth; Max-Age=0; HttpOnly; SameSite=Strict";
    let csrf = [("x-tessera-csrf", "1"), ("origin", ORIGIN)];

    let token = cookie_value(&cookie_login(&app).await.set_cookie.unwrap());
    let cookie = format!("tessera_refresh={token}");
    let revoke = post(
        &app,
        "/oauth/revoke",
        &[],
        &[("cookie", &cookie), csrf[0], csrf[1]],
    )
    .await;
    assert_eq!(revoke.status, StatusCode::OK);
    assert_eq!(revoke.set_cookie.as_deref(), Some(cleared));
    let after = cookie_refresh(&app, &token, &csrf).await;
    assert_eq!(
        after.body["error"], "invalid_grant",
        "revoke left the session"
    );
    // The cookie's token named as `token`: cleared too. Another token: left alone.
    let token = cookie_value(&cookie_login(&app).await.set_cookie.unwrap());
    let cookie = format!("tessera_refresh={token}");
    let other = cookie_value(&cookie_login(&app).await.set_cookie.unwrap());
    let revoke = post(
        &app,
        "/oauth/revoke",
        &[("token", &other)],
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(revoke.status, StatusCode::OK);
    assert_eq!(
        revoke.set_cookie, None,
        "revoking another token cleared the cookie"
    );
    let revoke = post(
        &app,
        "/oauth/revoke",
        &[("token", &token)],
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(revoke.set_cookie.as_deref(), Some(cleared));

    for (scope, clears) in [("local", true), ("global", true), ("others", false)] {
        let login = cookie_login(&app).await;
        let access = login.body["access_token"].as_str().unwrap().to_owned();
        let response = app
            .client
            .post(app.url(&format!("/v1/logout?scope={scope}")))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let line = response
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(line.as_deref(), clears.then_some(cleared), "scope {scope}");
    }
}

async fn cors_allows_credentials_and_the_csrf_header_for_listed_origins_only(backend: Backend) {
    let app = spawn_app_with(backend, DEV).await;
    for (origin, allowed) in [(ORIGIN, true), ("https://evil.example", false)] {
        let response = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/oauth/token"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-tessera-csrf")
            .send()
            .await
            .unwrap();
        let h = response.headers();
        let get = |name: &str| {
            h.get(name)
                .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        };
        if allowed {
            assert_eq!(get("access-control-allow-origin").as_deref(), Some(ORIGIN));
            assert_eq!(
                get("access-control-allow-credentials").as_deref(),
                Some("true")
            );
            assert!(
                get("access-control-allow-headers")
                    .unwrap_or_default()
                    .contains("x-tessera-csrf")
            );
        } else {
            assert_eq!(get("access-control-allow-origin"), None, "{origin}");
        }
    }
}

both_stores!(
    login_delivers_an_httponly_cookie_not_in_the_body,
    a_refresh_without_the_parameter_spends_the_cookie_and_rotates_it,
    reuse_of_a_spent_cookie_ends_the_session,
    a_cookie_request_without_the_csrf_proof_is_refused_and_rotates_nothing,
    revoke_and_logout_clear_the_cookie,
    cors_allows_credentials_and_the_csrf_header_for_listed_origins_only,
);
