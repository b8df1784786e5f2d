//! Sign-up, login, `/v1/me`, limits and the ops endpoints.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, json, s, spawn_app, spawn_app_with};

both_stores!(
    signup_normalises_and_rejects_bad_input,
    duplicate_email_is_409_even_when_racing,
    signup_can_be_turned_off,
    login_succeeds_and_each_failure_has_its_code,
    malformed_requests_are_400_never_500,
    hostile_input_is_a_4xx_on_both_stores,
    me_answers_for_a_valid_token,
    ops_endpoints_answer,
);

async fn signup_normalises_and_rejects_bad_input(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app.signup("  Alice@Example.COM ", PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["email"], "alice@example.com");
    assert!(body["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(s(&body, "created_at").ends_with('Z'));

    for bad in [
        "",
        "no-at-sign",
        "a@b",
        "two@@example.com",
        "sp ace@example.com",
    ] {
        let (status, body) = app.signup(bad, PASSWORD).await;
        assert_eq!(
            (status, s(&body, "error")),
            (StatusCode::BAD_REQUEST, "invalid_email".into()),
            "{bad}"
        );
    }
    let (status, body) = app.signup("bob@example.com", "short").await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_password".into())
    );
    let (status, _) = app.signup("bob@example.com", &"x".repeat(1025)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.signup("bob@example.com", &"x".repeat(1024)).await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn duplicate_email_is_409_even_when_racing(backend: Backend) {
    // Racers that arrive before the first commit all hash, one slot at a time on a busy
    // machine: the queue may take longer than its 2 s default, which would be a 503
    // about the machine, not about the race. (Below the 30 s request timeout.)
    let app = spawn_app_with(
        backend,
        &[("TESSERA_PASSWORD_HASH_QUEUE_TIMEOUT_MS", "25000")],
    )
    .await;
    assert_eq!(
        app.signup("carol@example.com", PASSWORD).await.0,
        StatusCode::CREATED
    );
    let (status, body) = app.signup("CAROL@example.com", PASSWORD).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::CONFLICT, "email_taken".into())
    );

    let racers = (0..8)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/v1/signup");
            tokio::spawn(async move {
                let body = json!({"email": "dave@example.com", "password": PASSWORD});
                client.post(url).json(&body).send().await.unwrap().status()
            })
        })
        .collect::<Vec<_>>();
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
}

async fn signup_can_be_turned_off(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_SIGNUP_ENABLED", "false")]).await;
    let (status, body) = app.signup("erin@example.com", PASSWORD).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::FORBIDDEN, "signup_disabled".into())
    );
}

async fn login_succeeds_and_each_failure_has_its_code(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_DEFAULT_CLIENT_SCOPES", "read write")]).await;
    app.signup("frank@example.com", PASSWORD).await;

    let response = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "Frank@Example.com"),
            ("password", PASSWORD),
            ("scope", "read write"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], "read write");
    assert!(
        s(&body, "refresh_token").starts_with("tsr_")
            && s(&body, "refresh_token").len() == tessera::tokens::refresh::LENGTH
    );

    // JSON works as well as the form encoding.
    let (status, _) = json(
        app.client
            .post(app.url("/oauth/token"))
            .json(&json!({"grant_type": "password", "username": "frank@example.com", "password": PASSWORD, "client_id": "app"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    type Case<'a> = (&'a [(&'a str, &'a str)], StatusCode, &'a str);
    let cases: &[Case] = &[
        (
            &[
                ("grant_type", "password"),
                ("username", "frank@example.com"),
                ("password", "wrong password"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "nobody@example.com"),
                ("password", PASSWORD),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "frank@example.com"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            &[("username", "frank@example.com"), ("password", PASSWORD)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            &[("grant_type", "client_credentials")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "frank@example.com"),
                ("password", PASSWORD),
                ("client_id", "nope"),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            &[
                ("grant_type", "password"),
                ("username", "frank@example.com"),
                ("password", PASSWORD),
                ("scope", "bad\"scope"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
    ];
    for (form, want_status, want_error) in cases {
        let (status, body) = app.token(form).await;
        assert_eq!(
            (status, s(&body, "error").as_str()),
            (*want_status, *want_error),
            "{form:?}"
        );
        assert!(body["error_description"].is_string());
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "exactly RFC 6749 §5.2: {body}"
        );
    }
}

async fn malformed_requests_are_400_never_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let post = |path: &str, ct: &str, body: String| {
        app.client
            .post(app.url(path))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases = [
        (
            "/v1/signup",
            "application/json",
            "{not json".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/signup",
            "application/json",
            r#"{"email": "x@example.com"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/signup",
            "application/json",
            r#"{"email": 5, "password": 7}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/signup",
            "text/plain",
            "hello".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/oauth/token",
            "text/plain",
            "grant_type=password".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/oauth/token",
            "application/json",
            "[1,2]".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/oauth/token",
            "application/x-www-form-urlencoded",
            "grant_type=refresh_token&refresh_token=%FF%FE".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/signup",
            "application/json",
            format!(
                r#"{{"email":"big@example.com","password":"{}"}}"#,
                "x".repeat(70_000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (path, ct, body, want) in cases {
        let (status, json_body) = json(post(path, ct, body.clone()).await.unwrap()).await;
        assert_eq!(status, want, "{path} {ct} {}", &body[..body.len().min(60)]);
        assert!(
            json_body["error"].is_string(),
            "machine-readable code: {json_body}"
        );
    }
    let (status, body) = json(
        app.client
            .get(app.url("/no/such/route"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
}

async fn me_answers_for_a_valid_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, tokens) = app.user_with_session().await;
    let (status, me) = app.get("/v1/me", &s(&tokens, "access_token")).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], email.as_str());
    assert_eq!(me["roles"], json!([]));
    assert!(me["session_id"].is_string() && me["id"].is_string());

    let response = app.client.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}

async fn ops_endpoints_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = json(app.client.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, s(&body, "status")), (StatusCode::OK, "ok".into()));
    // Polled: a readiness check has a second, which a loaded machine can take.
    let mut ready = None;
    for _ in 0..300 {
        let (status, body) = json(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
        if status == StatusCode::OK {
            ready = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let body = ready.expect("/readyz answers 200 within 30 s");
    let want = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(body["store"], want);
    let (status, meta) = json(
        app.client
            .get(app.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["issuer"], crate::helpers::ISSUER);
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/oauth/token", crate::helpers::ISSUER)
    );
    assert_eq!(
        meta["jwks_uri"],
        format!("{}/.well-known/jwks.json", crate::helpers::ISSUER)
    );
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("refresh_token"))
    );
}

async fn hostile_input_is_a_4xx_on_both_stores(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = json(
        app.client
            .get(app.url("/oauth/token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );

    // Characters a database refuses (a NUL byte) are a client error, the same on both stores.
    let long = "x".repeat(65);
    for client_id in ["a\0b", long.as_str()] {
        let (status, body) = app
            .token(&[
                ("grant_type", "password"),
                ("username", "x@example.com"),
                ("password", "whatever pw"),
                ("client_id", client_id),
            ])
            .await;
        assert_eq!(
            (status, s(&body, "error")),
            (StatusCode::UNAUTHORIZED, "invalid_client".into())
        );
        let (status, _) = app
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "tsr_x"),
                ("client_id", client_id),
            ])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = app.login("nul\0@example.com", "whatever password").await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    let (status, body) = app.signup("nul\0@example.com", PASSWORD).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_email".into())
    );
}
