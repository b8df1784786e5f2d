//! OAuth clients as an attacker meets them: a confidential client's refresh tokens
//! need that client, scopes come from each client's allow-list, and RFC 7009
//! revocation checks who is asking.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use uuid::Uuid;

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, json, s, spawn_app, spawn_app_with};
use crate::services::service_client;

both_stores!(
    confidential_refresh_tokens_rotate_only_with_their_client,
    scopes_come_from_the_clients_allow_list_and_refresh_only_narrows,
    revocation_checks_the_client,
    spent_refresh_token_revokes_nothing,
    racing_the_client_without_its_secret_spends_and_revokes_nothing,
);

/// A form POST, with HTTP Basic client credentials if given: status, body, headers.
async fn post_form(
    app: &TestApp,
    path: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (StatusCode, Value, HeaderMap) {
    let mut request = app.client.post(app.url(path)).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let (status, body) = json(response).await;
    (status, body, headers)
}

/// The error answer of a request: status and `error`.
fn error_of(answer: &(StatusCode, Value, HeaderMap)) -> (StatusCode, String) {
    (answer.0, s(&answer.1, "error"))
}

fn assert_invalid_client(answer: &(StatusCode, Value, HeaderMap), what: &str) {
    assert_eq!(
        error_of(answer),
        (StatusCode::UNAUTHORIZED, "invalid_client".into()),
        "{what}: {}",
        answer.1
    );
    let challenge = answer.2["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic"), "{what}: {challenge}");
}

/// A user who logged in through `basic` (a confidential client) or the default client.
async fn login_via(app: &TestApp, basic: Option<(&str, &str)>, scope: Option<&str>) -> Value {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let mut form = vec![
        ("grant_type", "password"),
        ("username", email.as_str()),
        ("password", PASSWORD),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let (status, tokens, _) = post_form(app, "/oauth/token", basic, &form).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

fn claims(access_token: &str) -> Value {
    let raw = URL_SAFE_NO_PAD
        .decode(access_token.split('.').nth(1).unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

async fn confidential_refresh_tokens_rotate_only_with_their_client(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret) = service_client(&app).await;
    let (other_id, other_secret) = service_client(&app).await;
    let tokens = login_via(&app, Some((&id, &secret)), None).await;
    let token = s(&tokens, "refresh_token");
    let grant = [
        ("grant_type", "refresh_token"),
        ("refresh_token", token.as_str()),
    ];

    // Without the client's authentication: invalid_client, however the client is named.
    let answer = post_form(&app, "/oauth/token", None, &grant).await;
    assert_invalid_client(&answer, "no client at all");
    let named = [grant[0], grant[1], ("client_id", id.as_str())];
    let answer = post_form(&app, "/oauth/token", None, &named).await;
    assert_invalid_client(&answer, "client_id without its secret");
    let answer = post_form(&app, "/oauth/token", Some((&id, "tsc_wrong")), &grant).await;
    assert_invalid_client(&answer, "a wrong secret");
    // Another confidential client, properly authenticated: not its token.
    let answer = post_form(
        &app,
        "/oauth/token",
        Some((&other_id, &other_secret)),
        &grant,
    )
    .await;
    assert_eq!(
        error_of(&answer),
        (StatusCode::BAD_REQUEST, "invalid_grant".into()),
        "another client's token: {}",
        answer.1
    );

    // None of that spent the token: its own client rotates it (HTTP Basic) ...
    let (status, second, _) = post_form(&app, "/oauth/token", Some((&id, &secret)), &grant).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        claims(&s(&second, "access_token"))["client_id"],
        id.as_str()
    );
    // ... and a grace replay of the spent parent needs the client too.
    let answer = post_form(&app, "/oauth/token", None, &grant).await;
    assert_invalid_client(&answer, "a grace replay without the client");
    // client_secret_post works as well as Basic.
    let (status, third, _) = post_form(
        &app,
        "/oauth/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&second, "refresh_token")),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{third}");

    // Public clients keep working without credentials: the default one and a named one.
    let (_, public) = app.user_with_session().await;
    assert_eq!(
        app.refresh(&s(&public, "refresh_token")).await.0,
        StatusCode::OK
    );
    let spa = app
        .state
        .auth
        .create_client("spa", false, tessera::http::extract::now())
        .await
        .unwrap()
        .client_id;
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    app.signup(&email, PASSWORD).await;
    let (status, spa_tokens) = app
        .token(&[
            ("grant_type", "password"),
            ("username", &email),
            ("password", PASSWORD),
            ("client_id", &spa),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{spa_tokens}");
    // Naming no client speaks for the default one: not this token's client.
    let (status, body) = app.refresh(&s(&spa_tokens, "refresh_token")).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into()),
        "{body}"
    );
    let (status, body) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&spa_tokens, "refresh_token")),
            ("client_id", &spa),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn scopes_come_from_the_clients_allow_list_and_refresh_only_narrows(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_DEFAULT_CLIENT_SCOPES", "read write")]).await;
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    app.signup(&email, PASSWORD).await;
    let login = |scope: &'static str| {
        let email = email.clone();
        let app = &app;
        async move {
            app.token(&[
                ("grant_type", "password"),
                ("username", &email),
                ("password", PASSWORD),
                ("scope", scope),
            ])
            .await
        }
    };

    // Outside the default client's list: invalid_scope, no token.
    let (status, body) = login("admin billing:write").await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_scope".into()),
        "a scope outside the allow-list was granted: {body}"
    );
    let (status, body) = login("read admin").await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_scope".into()),
        "{body}"
    );
    // Inside it: granted as asked; asking nothing grants nothing.
    let (status, none) = login("").await;
    assert_eq!((status, s(&none, "scope")), (StatusCode::OK, String::new()));
    let (status, tokens) = login("write read").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(s(&tokens, "scope"), "write read");

    // A refresh may narrow the access token's scope ...
    let (status, narrowed) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&tokens, "refresh_token")),
            ("scope", "read"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{narrowed}");
    assert_eq!(s(&narrowed, "scope"), "read", "{narrowed}");
    assert_eq!(claims(&s(&narrowed, "access_token"))["scope"], "read");
    // ... but never widen it; a refused refresh spends nothing.
    for wider in ["read write admin", "admin", "read\"x"] {
        let (status, body) = app
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &s(&narrowed, "refresh_token")),
                ("scope", wider),
            ])
            .await;
        assert_eq!(
            (status, s(&body, "error")),
            (StatusCode::BAD_REQUEST, "invalid_scope".into()),
            "{wider}: {body}"
        );
    }
    // Narrowing is per access token (RFC 6749 §6): the session keeps its grant.
    let (status, again) = app.refresh(&s(&narrowed, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(s(&again, "scope"), "write read");
    assert_eq!(claims(&s(&again, "access_token"))["scope"], "write read");

    // A confidential client gets its own list (as `tessera client create --scopes`).
    let billing = app
        .state
        .auth
        .create_client_with_scopes(
            "billing",
            true,
            "billing:read  introspect",
            false,
            tessera::http::extract::now(),
        )
        .await
        .unwrap();
    let basic = (
        billing.client_id.as_str(),
        billing.client_secret.as_deref().unwrap(),
    );
    let tokens = login_via(&app, Some(basic), Some("billing:read")).await;
    assert_eq!(s(&tokens, "scope"), "billing:read");
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    app.signup(&email, PASSWORD).await;
    for outside in ["read", "billing:write", "billing:read admin"] {
        let answer = post_form(
            &app,
            "/oauth/token",
            Some(basic),
            &[
                ("grant_type", "password"),
                ("username", &email),
                ("password", PASSWORD),
                ("scope", outside),
            ],
        )
        .await;
        assert_eq!(
            error_of(&answer),
            (StatusCode::BAD_REQUEST, "invalid_scope".into()),
            "{outside}: {}",
            answer.1
        );
    }

    // The admin API shows every client's list; only to admins.
    let (_, admin) = app.admin_session().await;
    let (status, listed) = app
        .get("/v1/admin/clients", &s(&admin, "access_token"))
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let find = |id: &str| {
        listed["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"))
    };
    let app_client = find("app");
    assert_eq!(app_client["scopes"], serde_json::json!(["read", "write"]));
    assert_eq!(app_client["confidential"], false);
    let listed_billing = find(&billing.client_id);
    assert_eq!(
        listed_billing["scopes"],
        serde_json::json!(["billing:read", "introspect"])
    );
    assert_eq!(listed_billing["confidential"], true);
    assert!(
        !listed.to_string().contains("tsc_"),
        "no secret in the listing"
    );
    let (status, _) = app
        .get("/v1/admin/clients", &s(&tokens, "access_token"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn revoke(
    app: &TestApp,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (StatusCode, Value, HeaderMap) {
    post_form(app, "/oauth/revoke", basic, form).await
}

/// Rotates a confidential client's refresh token (so its session is live): the successor.
async fn still_live(app: &TestApp, client: (&str, &str), token: String) -> String {
    let (status, body, _) = post_form(
        app,
        "/oauth/token",
        Some(client),
        &[("grant_type", "refresh_token"), ("refresh_token", &token)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the session was revoked: {body}");
    s(&body, "refresh_token")
}

async fn revocation_checks_the_client(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret) = service_client(&app).await;
    let (other_id, other_secret) = service_client(&app).await;
    let tokens = login_via(&app, Some((&id, &secret)), None).await;
    let (refresh, access) = (s(&tokens, "refresh_token"), s(&tokens, "access_token"));
    // Naming no client (the default public one): not its token, nothing revoked.
    let answer = revoke(&app, None, &[("token", &refresh)]).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let answer = revoke(&app, None, &[("token", &access)]).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let refresh = still_live(&app, (&id, &secret), refresh).await;
    // Naming the confidential client without valid credentials: 401.
    let answer = revoke(&app, None, &[("token", &refresh), ("client_id", &id)]).await;
    assert_invalid_client(&answer, "client_id without its secret");
    let answer = revoke(&app, Some((&id, "tsc_wrong")), &[("token", &refresh)]).await;
    assert_invalid_client(&answer, "a wrong secret");
    // Another confidential client: 200 (RFC 7009 §2.2), nothing revoked.
    let answer = revoke(
        &app,
        Some((&other_id, &other_secret)),
        &[("token", &refresh)],
    )
    .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let refresh = still_live(&app, (&id, &secret), refresh).await;

    // Its own client revokes it (client_secret_post), and the session ends.
    let answer = revoke(
        &app,
        None,
        &[
            ("token", &refresh),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let (status, body, _) = post_form(
        &app,
        "/oauth/token",
        Some((&id, &secret)),
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );

    // An access token, revoked by its own client, ends its session too.
    let tokens = login_via(&app, Some((&id, &secret)), None).await;
    let answer = revoke(
        &app,
        Some((&id, &secret)),
        &[("token", &s(&tokens, "access_token"))],
    )
    .await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let (status, body, _) = post_form(
        &app,
        "/oauth/token",
        Some((&id, &secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&tokens, "refresh_token")),
        ],
    )
    .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
}

async fn spent_refresh_token_revokes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    // A spent refresh token revokes nothing: an old copy cannot log the user out.
    let (_, first) = app.user_with_session().await;
    let (status, second) = app.refresh(&s(&first, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);
    let answer = revoke(&app, None, &[("token", &s(&first, "refresh_token"))]).await;
    assert_eq!(answer.0, StatusCode::OK);
    let (status, body) = app.refresh(&s(&second, "refresh_token")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a spent refresh token ended the session: {body}"
    );
    // The default client's live tokens are still revoked with just `token=`.
    let answer = revoke(&app, None, &[("token", &s(&body, "refresh_token"))]).await;
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(
        app.refresh(&s(&body, "refresh_token")).await.0,
        StatusCode::BAD_REQUEST
    );
}

/// An attacker holding a copy of a service's refresh token races the service itself:
/// the copy, without the secret, neither wins the rotation nor revokes the session.
async fn racing_the_client_without_its_secret_spends_and_revokes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, secret) = service_client(&app).await;
    let tokens = login_via(&app, Some((&id, &secret)), None).await;
    let token = s(&tokens, "refresh_token");
    let n = 16;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url, token, barrier) = (
                app.client.clone(),
                app.url("/oauth/token"),
                token.clone(),
                barrier.clone(),
            );
            let credentials = (i % 2 == 0).then(|| (id.clone(), secret.clone()));
            tokio::spawn(async move {
                let mut request = client.post(url).form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                ]);
                if let Some((id, secret)) = &credentials {
                    request = request.basic_auth(id, Some(secret));
                }
                barrier.wait().await;
                let (status, body) = json(request.send().await.unwrap()).await;
                (credentials.is_some(), status, body)
            })
        })
        .collect();
    let mut successors = std::collections::HashSet::new();
    for task in tasks {
        let (authenticated, status, body) = task.await.unwrap();
        if authenticated {
            // The winner and grace replays get the one successor; a replay past any
            // limit is refused without harm.
            match status {
                StatusCode::OK => {
                    successors.insert(s(&body, "refresh_token"));
                }
                _ => assert_eq!(
                    (status, s(&body, "error")),
                    (StatusCode::BAD_REQUEST, "invalid_grant".into()),
                    "{body}"
                ),
            }
        } else {
            assert_eq!(
                (status, s(&body, "error")),
                (StatusCode::UNAUTHORIZED, "invalid_client".into()),
                "{body}"
            );
        }
    }
    assert_eq!(successors.len(), 1, "exactly one successor: {successors:?}");
    crate::invariants::check(&app).await;
    let successor = successors.into_iter().next().unwrap();
    still_live(&app, (&id, &secret), successor).await;
}
