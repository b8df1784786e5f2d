//! Enumeration: a password grant for an email nobody has and one with a wrong password
//! for an account that exists get the same answer, byte for byte (status, body and
//! every header a client could compare). Their timing is measured in
//! `benches/enumeration.rs`, not asserted here.

use reqwest::StatusCode;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, spawn_app_with};

both_stores!(unknown_email_and_wrong_password_get_the_same_answer);

async fn failed_login(app: &TestApp, email: &str) -> (StatusCode, Vec<(String, String)>, String) {
    let response = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", "not the password at all"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (status, headers, response.text().await.unwrap())
}

async fn unknown_email_and_wrong_password_get_the_same_answer(backend: Backend) {
    // With the throttle on, as deployed: it counts attempts per email whether or not an
    // account exists, so it cannot tell them apart either.
    let app = spawn_app_with(backend, &[]).await;
    let (email, _) = app.user_with_session().await;
    let wrong = failed_login(&app, &email).await;
    let unknown = failed_login(&app, "nobody-at-all@example.com").await;
    assert_eq!(wrong.0, StatusCode::BAD_REQUEST, "{}", wrong.2);
    assert_eq!(unknown, wrong);
    // An address that cannot be an email answers the same too.
    assert_eq!(failed_login(&app, "not an email").await, wrong);

    // Past the failure threshold both back off alike (429 with the same shape).
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..8 {
        last = (
            vec![failed_login(&app, &email).await.0],
            vec![failed_login(&app, "nobody-at-all@example.com").await.0],
        );
    }
    assert_eq!(last.0, last.1, "the throttle treats both alike");
}
