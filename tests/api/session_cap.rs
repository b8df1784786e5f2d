//! Issue 18 item 9: one user's sessions are bounded. A login beyond
//! `max_sessions_per_user` ends the user's oldest live session (through the feed, with
//! an audit event), also under parallel logins; session lists are pages; a revocation
//! of thousands of sessions ends them in short batches, with the same count, feed
//! entries and effective time as one transaction gave.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::both_stores;
use crate::helpers::{PASSWORD, TestApp, s, spawn_app_with};

both_stores!(
    a_login_beyond_the_cap_ends_the_oldest_session,
    parallel_logins_leave_at_most_the_cap,
    session_pages_walk_every_session_once,
    bad_page_parameters_are_a_400,
    a_global_logout_of_many_sessions_ends_them_all_in_batches,
    a_disable_and_an_admin_revocation_end_many_sessions_in_batches,
);

const CAP: usize = 3;

async fn app_with_cap(backend: crate::helpers::Backend, cap: usize) -> TestApp {
    let cap = cap.to_string();
    spawn_app_with(
        backend,
        &[
            ("TESSERA_LOGIN_THROTTLE", "off"),
            ("TESSERA_MAX_SESSIONS_PER_USER", &cap),
        ],
    )
    .await
}

/// A new user: its email and id.
async fn new_user(app: &TestApp) -> (String, Uuid) {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    let (status, user) = app.signup(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    (email.clone(), s(&user, "id").parse().unwrap())
}

async fn live_ids(app: &TestApp, user: Uuid) -> HashSet<Uuid> {
    let now = tessera::http::extract::now();
    let live = app.state.auth.store.live_sessions(user, now).await.unwrap();
    live.iter().map(|s| s.id).collect()
}

/// `count` more live sessions of `user`, written through the store (a login each
/// would cost an argon2 hash), eight at a time.
async fn add_sessions(app: &TestApp, user: Uuid, count: usize) -> Vec<Uuid> {
    let now = tessera::http::extract::now();
    let mut ids = Vec::with_capacity(count);
    let mut pending = Vec::new();
    for _ in 0..count {
        let store = app.state.auth.store.clone();
        let session = TestApp::new_session(user, now);
        ids.push(session.id);
        let token = app.state.auth.first_refresh_token(session.id);
        pending.push(tokio::spawn(async move {
            let created = store
                .create_session(&session, token.hash(), now + 3600, &Default::default())
                .await
                .unwrap();
            assert!(created);
        }));
        if pending.len() == 8 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    ids
}

/// The sessions the audit trail says ended for `reason`, over every such event.
async fn audited(app: &TestApp, user: Uuid, action: &str, reason: &str) -> (usize, Vec<Uuid>) {
    let events = app
        .state
        .auth
        .store
        .audit_events(Some(user), Some(action), None, 10_000)
        .await
        .unwrap();
    let mut ended = Vec::new();
    let mut n = 0;
    for e in events {
        if e.event.detail["reason"] != reason {
            continue;
        }
        n += 1;
        for id in e.event.detail["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            ended.push(id.as_str().unwrap_or_default().parse().unwrap());
        }
    }
    (n, ended)
}

/// Feed entries for `ids` (all of the feed, read in pages).
async fn in_feed(app: &TestApp, ids: &HashSet<Uuid>) -> usize {
    let now = tessera::http::extract::now();
    let mut after = 0;
    let mut found = 0;
    loop {
        let page = app
            .state
            .auth
            .store
            .revocations_after(after, now, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else {
            return found;
        };
        after = last.seq;
        found += page.iter().filter(|r| ids.contains(&r.session_id)).count();
    }
}

async fn a_login_beyond_the_cap_ends_the_oldest_session(backend: crate::helpers::Backend) {
    let app = app_with_cap(backend, CAP).await;
    let (email, user) = new_user(&app).await;
    let mut logins: Vec<Value> = Vec::new();
    for _ in 0..CAP + 5 {
        let (status, tokens) = app.login(&email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        logins.push(tokens);
    }
    let newest = logins.last().unwrap();
    let (status, page) = app.get("/v1/sessions", &s(newest, "access_token")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = page["sessions"].as_array().unwrap().len();
    let live = live_ids(&app, user).await;
    assert_eq!(
        (listed, live.len()),
        (CAP, CAP),
        "{} logins with a cap of {CAP}: {} live sessions",
        CAP + 5,
        live.len()
    );

    // The oldest ended: their refresh tokens are dead; the newest still refresh.
    for old in &logins[..5] {
        let (status, body) = app.refresh(&s(old, "refresh_token")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");
    }
    let (status, body) = app.refresh(&s(newest, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Each ending is audited (reason session_limit) and in the revocation feed.
    let (events, ended) = audited(&app, user, "session_revoked", "session_limit").await;
    assert_eq!(
        (events, ended.len()),
        (5, 5),
        "one event per login past the cap"
    );
    let ended: HashSet<Uuid> = ended.into_iter().collect();
    assert!(ended.is_disjoint(&live));
    assert_eq!(
        in_feed(&app, &ended).await,
        5,
        "every ended session in the feed"
    );
}

async fn parallel_logins_leave_at_most_the_cap(backend: crate::helpers::Backend) {
    let app = app_with_cap(backend, CAP).await;
    let (email, user) = new_user(&app).await;
    let mut logins = Vec::new();
    for _ in 0..12 {
        let client = app.client.clone();
        let url = app.url("/oauth/token");
        let email = email.clone();
        logins.push(tokio::spawn(async move {
            client
                .post(url)
                .form(&[
                    ("grant_type", "password"),
                    ("username", email.as_str()),
                    ("password", PASSWORD),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for l in logins {
        let status = l.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        ok += usize::from(status == StatusCode::OK);
    }
    assert!(ok > CAP, "only {ok} logins went through");
    let live = live_ids(&app, user).await;
    assert_eq!(
        live.len(),
        CAP,
        "{ok} parallel logins with a cap of {CAP}: {} live sessions",
        live.len()
    );
    let (_, ended) = audited(&app, user, "session_revoked", "session_limit").await;
    assert_eq!(
        ended.len(),
        ok - CAP,
        "every session past the cap ended, audited"
    );
}

async fn session_pages_walk_every_session_once(backend: crate::helpers::Backend) {
    let app = app_with_cap(backend, 1000).await;
    let (email, user) = new_user(&app).await;
    let (_, tokens) = app.login(&email, PASSWORD).await;
    let access = s(&tokens, "access_token");
    // All written at the same second: the cursor must break ties.
    add_sessions(&app, user, 119).await;
    let all = live_ids(&app, user).await;
    assert_eq!(all.len(), 120);

    let (_, admin) = app.admin_session().await;
    let admin = s(&admin, "access_token");
    for (path, bearer) in [
        ("/v1/sessions".to_owned(), &access),
        (format!("/v1/admin/users/{user}/sessions"), &admin),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let url = match &cursor {
                None => format!("{path}?limit=7"),
                Some(c) => format!("{path}?limit=7&cursor={c}"),
            };
            let (status, page) = app.get(&url, bearer).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let sessions = page["sessions"].as_array().unwrap();
            assert!(sessions.len() <= 7);
            seen.extend(
                sessions
                    .iter()
                    .map(|s| s["id"].as_str().unwrap().to_owned()),
            );
            pages += 1;
            assert!(pages < 100, "the walk does not end");
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let unique: HashSet<Uuid> = seen.iter().map(|id| id.parse().unwrap()).collect();
        assert_eq!(seen.len(), 120, "{path}: each session once");
        assert_eq!(unique, all, "{path}: every live session");
    }
    // Without a limit: the default page, and a cursor to go on.
    let (_, page) = app.get("/v1/sessions", &access).await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 50);
    assert!(page["next_cursor"].is_string());
}

async fn bad_page_parameters_are_a_400(backend: crate::helpers::Backend) {
    let app = app_with_cap(backend, CAP).await;
    let (email, user) = new_user(&app).await;
    let (_, tokens) = app.login(&email, PASSWORD).await;
    let access = s(&tokens, "access_token");
    let (_, admin) = app.admin_session().await;
    let admin = s(&admin, "access_token");
    for (query, code) in [
        ("limit=0", "invalid_request"),
        ("limit=201", "invalid_request"),
        ("limit=x", "invalid_request"),
        ("cursor=nonsense", "invalid_cursor"),
        ("after=1.not-a-uuid", "invalid_cursor"),
        (
            "cursor=-5.00000000-0000-0000-0000-000000000000",
            "invalid_cursor",
        ),
    ] {
        for (path, bearer) in [
            ("/v1/sessions".to_owned(), &access),
            (format!("/v1/admin/users/{user}/sessions"), &admin),
        ] {
            let (status, body) = app.get(&format!("{path}?{query}"), bearer).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}: {body}");
            assert_eq!(body["error"], code, "{path}?{query}: {body}");
        }
    }
}

const MANY: usize = 1500;

async fn a_global_logout_of_many_sessions_ends_them_all_in_batches(
    backend: crate::helpers::Backend,
) {
    let app = app_with_cap(backend, 10_000).await;
    let (email, user) = new_user(&app).await;
    let (_, tokens) = app.login(&email, PASSWORD).await;
    add_sessions(&app, user, MANY - 1).await;
    let all = live_ids(&app, user).await;
    assert_eq!(all.len(), MANY);

    // Another user refreshes over and over while the logout runs.
    let (_, other) = app.user_with_session().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refresher = {
        let stop = stop.clone();
        let client = app.client.clone();
        let url = app.url("/oauth/token");
        let mut token = s(&other, "refresh_token");
        tokio::spawn(async move {
            let mut timings = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = response.json().await.unwrap();
                token = s(&body, "refresh_token");
                timings.push((started, Instant::now()));
            }
            timings
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let response = app
        .client
        .post(app.url("/v1/logout?scope=global"))
        .bearer_auth(s(&tokens, "access_token"))
        .send()
        .await
        .unwrap();
    let ended_at = Instant::now();
    let took = ended_at - started;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let timings = refresher.await.unwrap();
    // The other user's refreshes that overlapped the logout, and those before it.
    let worst = |during: bool| {
        let picked: Vec<Duration> = timings
            .iter()
            .filter(|(a, b)| during == (*a < ended_at && *b > started))
            .filter(|(a, _)| during || *a < started)
            .map(|(a, b)| *b - *a)
            .collect();
        (
            picked.iter().max().copied().unwrap_or_default(),
            picked.len(),
        )
    };
    let ((worst_during, n_during), (worst_before, n_before)) = (worst(true), worst(false));
    println!(
        "[{}] global logout of {MANY} sessions: {took:?} (batch of {}); another user's \
         refresh worst {worst_during:?} over {n_during} during it, {worst_before:?} over \
         {n_before} before it",
        app.state.auth.store.backend(),
        tessera::store::REVOKE_BATCH,
    );

    assert!(live_ids(&app, user).await.is_empty(), "every session ended");
    assert_eq!(
        in_feed(&app, &all).await,
        MANY,
        "each one in the feed, once"
    );
    let (events, ended) = audited(&app, user, "logout", "logout").await;
    let ended_set: HashSet<Uuid> = ended.iter().copied().collect();
    assert_eq!((ended.len(), ended_set), (MANY, all), "each audited once");
    let batches = MANY.div_ceil(tessera::store::REVOKE_BATCH as usize);
    assert_eq!(events, batches, "one transaction (and event) per batch");
}

async fn a_disable_and_an_admin_revocation_end_many_sessions_in_batches(
    backend: crate::helpers::Backend,
) {
    let app = app_with_cap(backend, 10_000).await;
    let (_, admin) = app.admin_session().await;
    let admin = s(&admin, "access_token");
    let now = tessera::http::extract::now();
    let tail = app.state.auth.token_tail_secs();
    for disable in [false, true] {
        let (_, user) = new_user(&app).await;
        let ids: HashSet<Uuid> = add_sessions(&app, user, 250).await.into_iter().collect();
        let (status, body) = if disable {
            app.post_json(
                &format!("/v1/admin/users/{user}/disable"),
                &admin,
                &serde_json::json!({}),
            )
            .await
        } else {
            let (status, body) = app
                .delete(&format!("/v1/admin/users/{user}/sessions"), &admin)
                .await;
            assert_eq!(body["revoked"], 250, "{body}");
            // As one transaction gave: the latest last use of the sessions plus the tail.
            let effective = s(&body, "effective_at");
            assert!(
                (0..=2).any(|d| tessera::http::rfc3339(now + tail + d) == effective),
                "{body}"
            );
            (status, body)
        };
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(live_ids(&app, user).await.is_empty(), "disable {disable}");
        assert_eq!(in_feed(&app, &ids).await, 250, "disable {disable}");
    }
}
