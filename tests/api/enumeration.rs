//! Enumeration: a password grant for an email nobody has and one with a wrong password
//! for an account that exists get the same answer, byte for byte (status, body and
//! every header a client could compare). Their timing is measured in
//! `benches/enumeration.rs`, not asserted here.

use reqwest::StatusCode;

use tessera::auth::AuthError;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, login_at, spawn_app_with};

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

    // Past the failure threshold both back off alike. The rule, at one simulated instant
    // (over HTTP the 2 s first window could close between two attempts on a loaded
    // machine and make the two sequences differ for the clock's sake), from an address
    // of its own.
    let at = tessera::http::extract::now();
    let mut sequences = Vec::new();
    for who in [email.as_str(), "nobody-at-all@example.com"] {
        let mut sequence = Vec::new();
        for _ in 0..8 {
            let result = login_at(
                &app.state.auth,
                who,
                "not the password at all",
                "192.0.2.50",
                at,
            )
            .await;
            sequence.push(match result {
                Err(AuthError::InvalidGrant(_)) => "invalid_grant".to_owned(),
                Err(AuthError::Throttled(secs)) => format!("throttled {secs}"),
                other => panic!("{who}: {other:?}"),
            });
        }
        sequences.push(sequence);
    }
    assert_eq!(sequences[0], sequences[1], "the throttle treats both alike");
    assert_eq!(sequences[0][7], "throttled 2", "{:?}", sequences[0]);

    // And over HTTP the refusal is the same answer for both, but for the seconds to wait.
    let until_refused = |who: String| {
        let app = &app;
        async move {
            for _ in 0..12 {
                let (status, mut headers, body) = failed_login(app, &who).await;
                if status == StatusCode::TOO_MANY_REQUESTS {
                    let at = headers.iter().position(|(k, _)| k == "retry-after");
                    let (_, wait) = headers.remove(at.expect("a 429 carries Retry-After"));
                    assert!((1..=60).contains(&wait.parse::<u32>().unwrap()), "{wait}");
                    return (headers, body);
                }
            }
            panic!("{who} was never throttled over HTTP");
        }
    };
    assert_eq!(
        until_refused(email.clone()).await,
        until_refused("nobody-at-all@example.com".into()).await
    );
}
