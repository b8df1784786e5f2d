//! Abuse resistance (issue 10): the grace window's replay cap, bounded revocation
//! streams fed by one reader per instance, and a login that races an admin's disable.
//! Each test reproduced its hole on the code before the fix.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

use crate::both_stores;
use crate::helpers::{Backend, PASSWORD, TestApp, json, s, spawn_app, spawn_app_with};
use crate::refresh::audit_actions;
use crate::services::service_client;

both_stores!(
    grace_replays_are_capped_and_a_refused_one_keeps_the_session,
    revocation_streams_are_capped_per_client_and_in_total,
    many_streams_cost_one_store_read_per_revocation,
    a_disabled_user_gets_no_new_session,
);

/// A refresh grant sent from `ip` (through the trusted loopback proxy) as `agent`.
async fn refresh_from(app: &TestApp, token: &str, ip: &str, agent: &str) -> (StatusCode, Value) {
    json(
        app.client
            .post(app.url("/oauth/token"))
            .header("x-forwarded-for", ip)
            .header("user-agent", agent)
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn grace_replays_are_capped_and_a_refused_one_keeps_the_session(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let (_, first) = app.user_with_session().await;
    let parent = s(&first, "refresh_token");
    let (status, rotated) = refresh_from(&app, &parent, "203.0.113.1", "tab-a").await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let successor = s(&rotated, "refresh_token");

    // A stolen parent replayed from elsewhere: the default cap allows three replays...
    for n in 1..=3 {
        let (status, body) = refresh_from(&app, &parent, "198.51.100.7", "thief").await;
        assert_eq!(status, StatusCode::OK, "replay {n}: {body}");
        assert_eq!(s(&body, "refresh_token"), successor, "replay {n}");
    }
    // ...and no more, without revoking the session.
    let (status, body) = refresh_from(&app, &parent, "198.51.100.7", "thief").await;
    assert_eq!(
        (status, s(&body, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant".into()),
        "a fourth replay is refused: {body}"
    );
    assert!(
        audit_actions(&app, "refresh_token_reuse").await.is_empty(),
        "a refused replay is not judged reuse"
    );
    let (status, body) = refresh_from(&app, &successor, "203.0.113.1", "tab-a").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the holder keeps its successor: {body}"
    );

    // The audit trail says the replays came from another address and agent: one row a
    // minute for one address (so a client replaying in a loop does not set how fast
    // the log grows), every replay counted in the metrics.
    let replays = audit_actions(&app, "refresh_grace_replay").await;
    assert_eq!(replays.len(), 1);
    let metrics = &app.state.auth.metrics;
    assert_eq!(
        metrics.refreshes(tessera::metrics::RefreshOutcome::replayed_in_grace),
        3
    );
    assert_eq!(
        metrics.audit_left_out.get(),
        2,
        "two replays left out of the log"
    );
    for r in &replays {
        assert_eq!(r.event.ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(r.event.detail["ip_differs"], true, "{}", r.event.detail);
        assert_eq!(r.event.detail["user_agent_differs"], true);
        assert_eq!(r.event.detail["rotated_from_ip"], "203.0.113.1");
    }
    let refused = audit_actions(&app, "refresh_grace_replay_refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].event.detail["ip_differs"], true);

    // A retry from the rotating tab itself is recorded as such.
    let (_, second) = app.user_with_session().await;
    let parent = s(&second, "refresh_token");
    refresh_from(&app, &parent, "203.0.113.1", "tab-a").await;
    let (status, _) = refresh_from(&app, &parent, "203.0.113.1", "tab-a").await;
    assert_eq!(status, StatusCode::OK);
    let latest = &audit_actions(&app, "refresh_grace_replay").await[0];
    assert_eq!(latest.event.detail["ip_differs"], false);
    assert_eq!(latest.event.detail["user_agent_differs"], false);

    // The cap is configurable; 0 allows no replay at all.
    let app = spawn_app_with(backend, &[("TESSERA_REFRESH_GRACE_MAX_REPLAYS", "0")]).await;
    let (_, first) = app.user_with_session().await;
    let parent = s(&first, "refresh_token");
    let (_, rotated) = app.refresh(&parent).await;
    assert_eq!(app.refresh(&parent).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.refresh(&s(&rotated, "refresh_token")).await.0,
        StatusCode::OK
    );
}

/// Opens a revocation stream; the response (headers read) or its status.
async fn open_stream(app: &TestApp, id: &str, secret: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/revocations"))
        .basic_auth(id, Some(secret))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
}

async fn revocation_streams_are_capped_per_client_and_in_total(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_REVOCATION_STREAMS_PER_CLIENT", "2"),
            ("TESSERA_REVOCATION_STREAMS_MAX", "3"),
        ],
    )
    .await;
    let (a, a_secret) = service_client(&app).await;
    let (b, b_secret) = service_client(&app).await;
    let a1 = open_stream(&app, &a, &a_secret).await;
    let a2 = open_stream(&app, &a, &a_secret).await;
    assert_eq!((a1.status(), a2.status()), (StatusCode::OK, StatusCode::OK));

    let refused = open_stream(&app, &a, &a_secret).await;
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a third stream of one client is over its cap"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let (_, body) = json(refused).await;
    assert_eq!(s(&body, "error"), "too_many_streams", "{body}");

    let b1 = open_stream(&app, &b, &b_secret).await;
    assert_eq!(b1.status(), StatusCode::OK);
    let b2 = open_stream(&app, &b, &b_secret).await;
    assert_eq!(
        b2.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a fourth stream in all is over the total cap"
    );

    // A closed stream gives its place back (once the server sees the disconnect).
    drop(a1);
    let mut reopened = None;
    for _ in 0..100 {
        let r = open_stream(&app, &b, &b_secret).await;
        if r.status() == StatusCode::OK {
            reopened = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "the place of a closed stream is reused");
}

/// Reads a stream until it has delivered an event naming `session_id`.
async fn next_event_names(response: &mut reqwest::Response, session_id: &str) -> bool {
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                seen.push_str(&String::from_utf8_lossy(&bytes));
                if seen.contains(session_id) {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// Store reads of the revocation feed so far, from `/metrics`.
async fn feed_reads(app: &TestApp) -> u64 {
    app.text("/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("tessera_revocation_feed_reads_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn many_streams_cost_one_store_read_per_revocation(backend: Backend) {
    const STREAMS: usize = 5_000;
    // Each stream is two descriptors in this process (client and server).
    let _turn = crate::helpers::MANY_CONNECTIONS.lock().await;
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_REVOCATION_STREAMS_PER_CLIENT", "5000"),
            ("TESSERA_REVOCATION_STREAMS_MAX", "5000"),
            // All from one address: past a quarter of the connection cap otherwise.
            ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "10000"),
            // No periodic resync during the test: every read is one a revocation caused.
            ("TESSERA_REVOCATION_RESYNC_SECS", "3600"),
        ],
    )
    .await;
    let (id, secret) = service_client(&app).await;
    let mut streams = Vec::with_capacity(STREAMS);
    for batch in 0..STREAMS / 250 {
        let opened =
            futures_util::future::join_all((0..250).map(|_| open_stream(&app, &id, &secret))).await;
        for r in opened {
            assert_eq!(r.status(), StatusCode::OK, "stream in batch {batch}");
            streams.push(r);
        }
    }
    // Each stream read its backlog once when it opened; wait for the last of those.
    for _ in 0..600 {
        if feed_reads(&app).await >= STREAMS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = feed_reads(&app).await;

    let (_, tokens) = app.user_with_session().await;
    let session_id = s(
        &app.get("/v1/me", &s(&tokens, "access_token")).await.1,
        "session_id",
    );
    assert_eq!(
        app.logout(&s(&tokens, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    let delivered = futures_util::future::join_all(
        streams.iter_mut().map(|r| next_event_names(r, &session_id)),
    )
    .await;
    assert_eq!(
        delivered.iter().filter(|d| **d).count(),
        STREAMS,
        "every stream delivered the revocation"
    );
    assert_eq!(
        feed_reads(&app).await - before,
        1,
        "{STREAMS} streams, one revocation: one store read"
    );
}

async fn a_disabled_user_gets_no_new_session(backend: Backend) {
    // Through the store: a session for a disabled user is refused.
    let app = spawn_app(backend).await;
    let (_, tokens) = app.user_with_session().await;
    let (_, me) = app.get("/v1/me", &s(&tokens, "access_token")).await;
    let user_id: uuid::Uuid = s(&me, "id").parse().unwrap();
    let (_, admin) = app.admin_session().await;
    let (status, _) = app
        .post_json(
            &format!("/v1/admin/users/{user_id}/disable"),
            &s(&admin, "access_token"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let now = tessera::http::extract::now();
    let session = TestApp::new_session(user_id, now);
    let token = app.state.auth.first_refresh_token(session.id);
    let created = app
        .state
        .auth
        .store
        .create_session(&session, token.hash(), now + 3600, &Default::default())
        .await
        .unwrap();
    assert!(!created, "the store says it wrote nothing");
    assert!(
        app.state
            .auth
            .store
            .session(session.id)
            .await
            .unwrap()
            .is_none(),
        "no session for a disabled user"
    );
}

/// Whether a backend of the test database runs a statement like `query` while
/// waiting on a lock.
async fn blocked(monitor: &mut sqlx::PgConnection, query: &str) -> bool {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE $1",
    )
    .bind(query)
    .fetch_one(&mut *monitor)
    .await
    .unwrap();
    n > 0
}

/// A login whose password check passed, and whose session statement has begun, while
/// an admin disables the user through the API: the interleaving is made exact by a
/// trigger that holds the login's statement (after its snapshot, before its commit) on
/// an advisory lock the test owns. The disable must then either wait for the login and
/// end its new session, or the login must see the disable; either way no live session
/// of a disabled user remains, or its access tokens would be missing from the
/// revocation feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_racing_a_disable_opens_no_session() {
    let app = spawn_app_with(
        Backend::Postgres,
        &[
            ("TESSERA_LOGIN_THROTTLE", "off"),
            // The login's statement is held while the test polls and the disable runs;
            // on a loaded machine that can outlast the default 5 s statement timeout.
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "20000"),
        ],
    )
    .await;
    let (_, admin) = app.admin_session().await;
    let admin = s(&admin, "access_token");
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let (_, user) = app.signup(&email, PASSWORD).await;
    let user_id: uuid::Uuid = s(&user, "id").parse().unwrap();

    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    for statement in [
        "CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$",
        "CREATE TRIGGER test_hold AFTER INSERT ON sessions \
         FOR EACH ROW EXECUTE FUNCTION test_hold()",
        "SELECT pg_advisory_lock(4242)",
    ] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }
    let login = {
        let (client, url, email) = (app.client.clone(), app.url("/oauth/token"), email.clone());
        tokio::spawn(async move {
            let form = [
                ("grant_type", "password"),
                ("username", email.as_str()),
                ("password", PASSWORD),
            ];
            json(client.post(url).form(&form).send().await.unwrap()).await
        })
    };
    let mut monitor = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut held = false;
    for _ in 0..1200 {
        held = blocked(&mut monitor, "%INSERT INTO sessions%").await;
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(held, "the login's session statement is held mid-way");
    let disable = {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/v1/admin/users/{user_id}/disable")),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(admin)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // The disable either finishes now (it did not see the login) or waits for it.
    for _ in 0..1200 {
        if disable.is_finished() || blocked(&mut monitor, "%UPDATE users%").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(disable.await.unwrap(), StatusCode::OK);
    let (status, body) = login.await.unwrap();
    assert!(
        status == StatusCode::OK || s(&body, "error") == "invalid_grant",
        "{status} {body}"
    );
    let (live,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .fetch_one(&mut monitor)
            .await
            .unwrap();
    assert_eq!(
        live, 0,
        "no live session of a disabled user ({status} {body})"
    );
}
