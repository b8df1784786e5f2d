//! Abuse of the credential endpoints (issue 10, items 3, 4 and 12): an attacker's
//! guesses must not lock the owner out, sign-up floods are throttled and refused before
//! any hashing, and the client address is read from every `X-Forwarded-For` line.
//!
//! The long runs drive simulated time through the library (`Auth::login(.., now)`)
//! against the real store, so two minutes of attack cost no waiting.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;
use tessera::auth::{AuthError, Caller};

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, json, login_at, s, spawn_app_with};

both_stores!(
    guesses_from_one_address_do_not_lock_the_owner_out_elsewhere,
    two_minutes_of_guessing_at_the_limit_never_keep_the_owner_out,
    a_distributed_attack_meets_the_account_ceiling_and_the_owner_waits_a_bounded_time,
    a_signup_flood_from_one_address_is_throttled_and_logins_elsewhere_go_on,
    signing_up_a_known_email_runs_no_argon2,
    every_forwarded_for_line_is_read_in_order,
);

const OWNER: &str = "owner@example.com";
const HASHES: &str = "tessera_argon2_queue_wait_seconds_count";
/// Behind a proxy on loopback, the tests choose each request's address.
const BEHIND_PROXY: (&str, &str) = ("TESSERA_TRUSTED_PROXIES", "127.0.0.1");

/// The value of a sample line `name{labels} value` (or `name value`).
async fn sample(app: &TestApp, series: &str) -> f64 {
    app.text("/metrics")
        .await
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn login_from(app: &TestApp, addr: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/token"))
        .header("x-forwarded-for", addr)
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

async fn signup_from(app: &TestApp, addr: &str, email: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/signup"))
        .header("x-forwarded-for", addr)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

fn retry_after(response: &reqwest::Response) -> i64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 429 carries Retry-After: {:?}", response.headers()))
}

/// Wrong passwords from `addr` until it is refused; the refusal.
async fn guess_until_throttled(app: &TestApp, addr: &str) -> reqwest::Response {
    for _ in 0..20 {
        let response = login_from(app, addr, OWNER, "wrong password").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return response;
        }
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    panic!("20 wrong passwords from {addr} were never throttled");
}

async fn guesses_from_one_address_do_not_lock_the_owner_out_elsewhere(backend: Backend) {
    let app = spawn_app_with(backend, &[BEHIND_PROXY]).await;
    assert_eq!(
        signup_from(&app, "192.0.2.1", OWNER).await.status(),
        StatusCode::CREATED
    );
    let refused = guess_until_throttled(&app, "198.51.100.7").await;
    assert!((1..=60).contains(&retry_after(&refused)));
    let (_, body) = json(refused).await;
    assert_eq!(s(&body, "error"), "too_many_requests");
    let (status, body) = json(login_from(&app, "203.0.113.9", OWNER, PASSWORD).await).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the owner, from another address, logs in at once: {body}"
    );

    // What one place is, at one simulated instant: the first backoff window is two
    // seconds of the wall clock, shorter than an argon2 run on a loaded machine, so
    // over HTTP a check that the window is still open would depend on the timing.
    let at = tessera::http::extract::now();
    let throttled = |result: Result<(), AuthError>| matches!(result, Err(AuthError::Throttled(_)));
    // The same address written as IPv4-mapped IPv6 is the same place.
    throttle_place(&app, "198.51.100.8", at).await;
    assert!(
        throttled(owner_login(&app, &caller("::ffff:198.51.100.8"), at).await),
        "IPv4-mapped IPv6 shares the IPv4 address's backoff"
    );
    // IPv6: one /64 is one place (a host there has 2^64 addresses to rotate through).
    throttle_place(&app, "2001:db8:1:2::1", at).await;
    assert!(
        throttled(owner_login(&app, &caller("2001:db8:1:2:ffff:ffff:ffff:fff0"), at).await),
        "another address in the same /64 shares the backoff"
    );
    let next = owner_login(&app, &caller("2001:db8:1:3::1"), at).await;
    assert!(next.is_ok(), "the next /64 is another place: {next:?}");
}

/// Wrong passwords from `ip`, all at the instant `at`, until one is refused.
async fn throttle_place(app: &TestApp, ip: &str, at: i64) {
    let mut actor = Actor {
        caller: caller(ip),
        at,
    };
    for _ in 0..20 {
        if !guess(app, &mut actor).await {
            return;
        }
    }
    panic!("20 wrong passwords from {ip} were never throttled");
}

fn caller(ip: &str) -> Caller {
    Caller {
        ip: Some(ip.to_owned()),
        user_agent: None,
    }
}

/// One simulated participant: where it logs in from and when it acts next.
struct Actor {
    caller: Caller,
    at: i64,
}

/// An attacker honouring Retry-After: one wrong password now; returns whether it was
/// checked (hashed) or refused, and moves the actor to when it may try again.
async fn guess(app: &TestApp, actor: &mut Actor) -> bool {
    let ip = actor.caller.ip.as_deref().unwrap_or_default();
    let result = login_at(&app.state.auth, OWNER, "wrong password", ip, actor.at).await;
    match result {
        Err(AuthError::InvalidGrant(_)) => true,
        Err(AuthError::Throttled(secs)) => {
            assert!(secs >= 1, "Retry-After is at least a second");
            actor.at += secs;
            false
        }
        other => panic!("a wrong password got {other:?}"),
    }
}

async fn owner_login(app: &TestApp, owner: &Caller, at: i64) -> Result<(), AuthError> {
    let ip = owner.ip.as_deref().unwrap_or_default();
    login_at(&app.state.auth, OWNER, PASSWORD, ip, at).await
}

async fn two_minutes_of_guessing_at_the_limit_never_keep_the_owner_out(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    app.signup(OWNER, PASSWORD).await;
    let start = tessera::http::extract::now();
    let mut attacker = Actor {
        caller: caller("198.51.100.7"),
        at: start,
    };
    let owner = caller("203.0.113.9");
    let (mut checked, mut refused, mut owner_logins) = (0, 0, 0);
    let mut owner_at = start;
    // The attacker retries the moment it may; the owner logs in every 10 s, interleaved
    // in time order, for 2 minutes and 10 seconds.
    while owner_at <= start + 130 {
        if attacker.at <= owner_at {
            if guess(&app, &mut attacker).await {
                checked += 1;
            } else {
                refused += 1;
            }
        } else {
            let result = owner_login(&app, &owner, owner_at).await;
            assert!(
                result.is_ok(),
                "at +{} s (attacker: {checked} guesses checked, {refused} refused) the owner got {:?}",
                owner_at - start,
                result.err()
            );
            owner_logins += 1;
            owner_at += 10;
        }
    }
    assert_eq!(owner_logins, 14);
    // The attacker was at the limit: refused, and slowed to the backoff.
    assert!(refused >= 5, "{refused} refusals");
    assert!((6..=15).contains(&checked), "{checked} guesses checked");
}

async fn a_distributed_attack_meets_the_account_ceiling_and_the_owner_waits_a_bounded_time(
    backend: Backend,
) {
    // A low ceiling keeps the number of argon2 runs small; the rule is the same.
    let ceiling = 20;
    let app = spawn_app_with(
        backend,
        &[("TESSERA_LOGIN_ACCOUNT_CEILING", &ceiling.to_string())],
    )
    .await;
    app.signup(OWNER, PASSWORD).await;
    let start = tessera::http::extract::now();
    let mut attackers: Vec<Actor> = (1..=8)
        .map(|i| Actor {
            caller: caller(&format!("198.51.100.{i}")),
            at: start,
        })
        .collect();
    let home = caller("203.0.113.9");
    let mut checked = 0;
    let mut owner_at = start + 5;
    // Eight addresses guess as fast as they are let, for 2 minutes and 10 seconds; the
    // owner logs in from home every 10 s.
    while owner_at <= start + 130 {
        let next = attackers.iter_mut().min_by_key(|a| a.at).unwrap();
        if next.at <= owner_at {
            checked += usize::from(guess(&app, next).await);
        } else {
            let result = owner_login(&app, &home, owner_at).await;
            assert!(
                result.is_ok(),
                "at +{} s ({checked} guesses checked) the owner got {:?}",
                owner_at - start,
                result.err()
            );
            owner_at += 10;
        }
    }
    // Past the ceiling each attacking address gets at most one guess per window.
    assert!(
        checked <= ceiling + attackers.len(),
        "{checked} guesses checked with a ceiling of {ceiling}"
    );
    let crossings = app
        .state
        .auth
        .store
        .audit_events(None, Some("login_account_ceiling"), None, 10)
        .await
        .unwrap();
    assert_eq!(crossings.len(), 1, "crossing the ceiling is audited once");
    // A fresh address is always let in once (here, the owner's first from a café).
    assert!(
        owner_login(&app, &caller("192.0.2.77"), owner_at)
            .await
            .is_ok()
    );

    // The worst case for the owner: a typo from home while the account is over the
    // ceiling. The right password is refused then, for a bounded time, and gets in at
    // once when that time is up, while the attack goes on.
    let typo = owner_at + 1;
    let mut me = Actor {
        caller: home.clone(),
        at: typo,
    };
    assert!(guess(&app, &mut me).await, "the typo itself is checked");
    let wait = match owner_login(&app, &home, typo).await {
        Err(AuthError::Throttled(secs)) => secs,
        other => panic!("over the ceiling, after a typo: {other:?}"),
    };
    assert!(
        (1..=tessera::auth::throttle::FAILURE_MEMORY_SECS).contains(&wait),
        "the owner's worst-case wait is bounded: {wait} s"
    );
    let back = typo + wait;
    loop {
        let next = attackers.iter_mut().min_by_key(|a| a.at).unwrap();
        if next.at > back {
            break;
        }
        guess(&app, next).await;
    }
    let result = owner_login(&app, &home, back).await;
    assert!(
        result.is_ok(),
        "after {wait} s the owner gets in: {:?}",
        result.err()
    );
}

async fn a_signup_flood_from_one_address_is_throttled_and_logins_elsewhere_go_on(backend: Backend) {
    let limit = 3;
    let app = spawn_app_with(
        backend,
        &[
            BEHIND_PROXY,
            ("TESSERA_SIGNUP_ATTEMPTS_PER_ADDRESS", &limit.to_string()),
        ],
    )
    .await;
    assert_eq!(
        signup_from(&app, "192.0.2.1", OWNER).await.status(),
        StatusCode::CREATED
    );
    let flood = (0..12)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/v1/signup"));
            tokio::spawn(async move {
                let body = json!({"email": format!("bot{i}@example.com"), "password": PASSWORD});
                let response = client
                    .post(url)
                    .header("x-forwarded-for", "198.51.100.7")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let retry = response.headers().get("retry-after").cloned();
                (json(response).await, retry)
            })
        })
        .collect::<Vec<_>>();
    let mut created = 0;
    for request in flood {
        let ((status, body), retry) = request.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(s(&body, "error"), "too_many_requests", "{body}");
                assert!(!s(&body, "error_description").is_empty(), "{body}");
                let secs: i64 = retry
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
            }
            other => panic!("a sign-up in the flood got {other}: {body}"),
        }
    }
    assert_eq!(created, limit, "the flood gets {limit} sign-ups, then 429");
    // Probing which emails exist is throttled with it.
    assert_eq!(
        signup_from(&app, "198.51.100.7", OWNER).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let (status, body) = json(login_from(&app, "203.0.113.9", OWNER, PASSWORD).await).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a login from elsewhere goes on: {body}"
    );
    assert_eq!(
        signup_from(&app, "203.0.113.9", "newcomer@example.com")
            .await
            .status(),
        StatusCode::CREATED,
        "another address signs up"
    );
}

async fn signing_up_a_known_email_runs_no_argon2(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    assert_eq!(app.signup(OWNER, PASSWORD).await.0, StatusCode::CREATED);
    let hashed = sample(&app, HASHES).await;
    let (status, body) = app.signup(" Owner@Example.com ", PASSWORD).await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::CONFLICT, "email_taken".into())
    );
    assert_eq!(
        sample(&app, HASHES).await,
        hashed,
        "a known email is refused before any argon2 run"
    );
    // A new email still hashes (the observable counts what it names).
    assert_eq!(
        app.signup("second@example.com", PASSWORD).await.0,
        StatusCode::CREATED
    );
    assert_eq!(sample(&app, HASHES).await, hashed + 1.0);
}

async fn every_forwarded_for_line_is_read_in_order(backend: Backend) {
    let app = spawn_app_with(backend, &[BEHIND_PROXY]).await;
    app.signup(OWNER, PASSWORD).await;
    // The client forged a first line; the trusted proxy appended its own line with the
    // address it saw.
    let mut headers = HeaderMap::new();
    headers.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
    headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.23"));
    let (status, tokens) = json(
        app.client
            .post(app.url("/oauth/token"))
            .headers(headers)
            .form(&[
                ("grant_type", "password"),
                ("username", OWNER),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, list) = app.get("/v1/sessions", &s(&tokens, "access_token")).await;
    assert_eq!(
        list["sessions"][0]["ip"], "198.51.100.23",
        "the address the trusted proxy appended, not the forged first line: {list}"
    );

    // IPv6 as it is; IPv4-mapped IPv6 as the IPv4 address it is.
    for (forwarded, recorded) in [
        ("::ffff:198.51.100.24", "198.51.100.24"),
        ("2001:db8:1:2::1", "2001:db8:1:2::1"),
    ] {
        let (status, tokens) = json(login_from(&app, forwarded, OWNER, PASSWORD).await).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        let (_, list) = app.get("/v1/sessions", &s(&tokens, "access_token")).await;
        let current = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|session| session["current"] == true)
            .unwrap_or_else(|| panic!("the current session is listed: {list}"));
        assert_eq!(current["ip"], recorded, "forwarded for {forwarded}");
    }
}
