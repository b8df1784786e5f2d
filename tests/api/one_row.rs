//! Issue 19: a session is one row. Refreshing in a loop grows no table, a token of any
//! generation ever issued in a live session is caught as reuse however long ago it was
//! spent, an invented token for a real session id revokes nothing, and sessions opened
//! before the upgrade rotate once more in the old way into the new shape.

use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest;
use tessera::auth::{Caller, RequestClient};
use tessera::http::extract::now;
use tessera::tokens::refresh::{LENGTH, RefreshMac, RefreshToken};
use uuid::Uuid;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, s, spawn_app_with};
use crate::invariants::{count, count_all};

both_stores!(
    a_session_refreshed_in_a_loop_keeps_its_rows_and_its_first_token_ends_it,
    a_first_generation_token_after_ten_thousand_rotations_ends_the_session,
    an_invented_token_for_a_real_session_id_revokes_nothing,
    a_session_opened_before_the_upgrade_rotates_once_into_the_new_shape,
);

/// Every row a client or an attacker could make the server write.
const ALL_ROWS: &str = "SELECT (SELECT COUNT(*) FROM sessions) + (SELECT COUNT(*) FROM refresh_tokens) \
     + (SELECT COUNT(*) FROM audit_events) + (SELECT COUNT(*) FROM revocations) \
     + (SELECT COUNT(*) FROM dpop_proofs) + (SELECT COUNT(*) FROM login_throttle)";
const GENERATION: &str = "SELECT generation FROM sessions WHERE id = $1";
const REUSE_EVENTS: &str = "SELECT COUNT(*) FROM audit_events \
     WHERE session_id = $1 AND action = 'refresh_token_reuse'";

/// How many refreshes the loop makes: 1,500 in CI (`TESSERA_TEST_REFRESHES=100000` for
/// the figure in the README).
fn refreshes() -> usize {
    std::env::var("TESSERA_TEST_REFRESHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500)
}

async fn session_of(app: &TestApp, access: &str) -> Uuid {
    let (status, me) = app.get("/v1/me", access).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    s(&me, "session_id").parse().unwrap()
}

async fn refreshed(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.refresh(token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn refused_as(body: &Value, status: StatusCode, expected: (StatusCode, &str)) {
    assert_eq!((status, s(body, "error").as_str()), expected, "{body}");
}

/// One session refreshed as fast as one client can, each parent also replayed inside
/// the grace window every tenth step (the same successor back), then the janitor:
/// the database holds a bounded number of rows more than after the login (the session
/// row, plus at most one grace-replay event a minute), and the session's first token
/// presented again ends the session.
async fn a_session_refreshed_in_a_loop_keeps_its_rows_and_its_first_token_ends_it(
    backend: Backend,
) {
    let app = spawn_app_with(backend, &[("TESSERA_JANITOR_INTERVAL_SECS", "0")]).await;
    let (_, tokens) = app.user_with_session().await;
    let session = session_of(&app, &s(&tokens, "access_token")).await;
    let first = s(&tokens, "refresh_token");
    let before = count_all(&app, ALL_ROWS).await;
    let started = std::time::Instant::now();
    let n = refreshes();
    let mut token = first.clone();
    for step in 0..n {
        let next = s(&refreshed(&app, &token).await, "refresh_token");
        if step.is_multiple_of(10) {
            let again = refreshed(&app, &token).await;
            assert_eq!(
                s(&again, "refresh_token"),
                next,
                "a grace replay gets the same successor"
            );
        }
        token = next;
    }
    let elapsed = started.elapsed();
    app.state.auth.prune(now()).await;
    let after = count_all(&app, ALL_ROWS).await;
    let minutes = elapsed.as_secs() as i64 / 60 + 1;
    println!(
        "{backend:?}: {n} refreshes and {} grace replays of one session in {elapsed:?}: rows {before} -> {after} after prune",
        n.div_ceil(10)
    );
    assert!(
        after - before <= minutes + 1,
        "{n} refreshes grew the database by {} rows",
        after - before
    );
    assert_eq!(count(&app, GENERATION, session).await, n as i64 + 1);

    let (status, body) = app.refresh(&first).await;
    refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert!(
        s(&body, "error_description").contains("already used"),
        "{body}"
    );
    let (status, body) = app.refresh(&token).await;
    refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert_eq!(
        s(&body, "error_description"),
        "the session has been revoked"
    );
    let ended = count_all(&app, ALL_ROWS).await;
    println!("{backend:?}: the first token ended the session: rows {after} -> {ended}");
    // The reuse event, the revocation's event and its feed row.
    assert!(ended - after <= 3, "{} rows for the reuse", ended - after);
}

/// Generation 1 of a session rotated 10,000 times (through the library, to keep the
/// test short) is reuse when it comes back over HTTP: nothing stores it, the
/// generation says it was spent.
async fn a_first_generation_token_after_ten_thousand_rotations_ends_the_session(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (_, tokens) = app.user_with_session().await;
    let session = session_of(&app, &s(&tokens, "access_token")).await;
    let first = s(&tokens, "refresh_token");
    let caller = Caller::default();
    let mut token = first.clone();
    for _ in 0..10_000 {
        let grant = app
            .state
            .auth
            .refresh(&token, &RequestClient::Default, &caller, now())
            .await
            .unwrap();
        token = grant.refresh_token.expose().to_owned();
    }
    assert_eq!(count(&app, GENERATION, session).await, 10_001);
    assert_eq!(count(&app, REUSE_EVENTS, session).await, 0);

    let (status, body) = app.refresh(&first).await;
    refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert!(
        s(&body, "error_description").contains("already used"),
        "{body}"
    );
    let events = app
        .state
        .auth
        .store
        .audit_events(None, Some("refresh_token_reuse"), None, 10)
        .await
        .unwrap();
    let event = &events.first().expect("a reuse event").event;
    assert_eq!(event.session_id, Some(session));
    assert_eq!(
        event.detail["case"], "successor_already_used",
        "{:?}",
        event.detail
    );
    assert_eq!(event.detail["generations_behind"], 10_000);
    let (status, body) = app.refresh(&token).await;
    refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert_eq!(
        s(&body, "error_description"),
        "the session has been revoked"
    );
}

/// Tokens made for the session id an access token shows, under a tag key that is not
/// the server's, for the current generation, older ones and newer ones: refused on the
/// refresh grant, ignored by revocation, and none of them touches the session or writes
/// a row.
async fn an_invented_token_for_a_real_session_id_revokes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (_, tokens) = app.user_with_session().await;
    let session = session_of(&app, &s(&tokens, "access_token")).await;
    let mut token = s(
        &refreshed(&app, &s(&tokens, "refresh_token")).await,
        "refresh_token",
    );
    token = s(&refreshed(&app, &token).await, "refresh_token");
    let before = count_all(&app, ALL_ROWS).await;
    for key in [[0u8; 32], [1; 32]] {
        let mac = RefreshMac::new(&key);
        for generation in [0, 1, 2, 3, 4, 1_000, i64::MAX] {
            let forged = RefreshToken::issue(&mac, session, generation);
            assert_eq!(forged.expose().len(), LENGTH);
            let (status, body) = app.refresh(forged.expose()).await;
            refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
            let revoke = app
                .client
                .post(app.url("/oauth/revoke"))
                .form(&[("token", forged.expose())])
                .send()
                .await
                .unwrap();
            assert_eq!(
                revoke.status(),
                StatusCode::OK,
                "RFC 7009: unknown tokens succeed"
            );
        }
    }
    assert_eq!(
        count_all(&app, ALL_ROWS).await,
        before,
        "an invented token wrote a row"
    );
    assert_eq!(count(&app, GENERATION, session).await, 3);
    let body = refreshed(&app, &token).await;
    assert_eq!(s(&body, "token_type"), "Bearer");
}

/// A session as the release before this one left it: no token columns (generation
/// 0), its unspent token in `refresh_tokens` by hash, of the old shape. Its token
/// rotates once more in the old way and comes back in the new shape; a grace replay of
/// it gets the same successor; once the successor is spent, the old token is reuse.
async fn a_session_opened_before_the_upgrade_rotates_once_into_the_new_shape(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let (_, tokens) = app.user_with_session().await;
    let (_, me) = app.get("/v1/me", &s(&tokens, "access_token")).await;
    let user: Uuid = s(&me, "id").parse().unwrap();
    let t = now();
    let session = Uuid::now_v7();
    let legacy = RefreshToken::generate_legacy();
    let hash = sha2::Sha256::digest(legacy.expose().as_bytes()).to_vec();
    legacy_session(&app, session, user, &hash, t).await;

    let body = refreshed(&app, legacy.expose()).await;
    let successor = s(&body, "refresh_token");
    assert_eq!(successor.len(), LENGTH, "the successor has the new shape");
    assert_eq!(count(&app, GENERATION, session).await, 1);
    let replayed = refreshed(&app, legacy.expose()).await;
    assert_eq!(
        s(&replayed, "refresh_token"),
        successor,
        "grace replay of the old token"
    );

    let next = s(&refreshed(&app, &successor).await, "refresh_token");
    assert_eq!(count(&app, GENERATION, session).await, 2);
    let (status, body) = app.refresh(legacy.expose()).await;
    refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert!(
        s(&body, "error_description").contains("already used"),
        "{body}"
    );
    let (status, body) = app.refresh(&next).await;
    refused_as(&body, status, (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert_eq!(
        s(&body, "error_description"),
        "the session has been revoked"
    );
}

/// Writes a session and its token the way the release before sessions were one row
/// did (the migration gave the session generation 0 and no token columns).
async fn legacy_session(app: &TestApp, session: Uuid, user: Uuid, hash: &[u8], t: i64) {
    const SESSION: &str = "INSERT INTO sessions \
         (id, user_id, client_id, scope, created_at, last_used_at, expires_at) \
         VALUES ($1, $2, 'app', '', $3, $3, $4)";
    const TOKEN: &str = "INSERT INTO refresh_tokens (hash, session_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4)";
    // The same two inserts on either store's pool.
    macro_rules! write_on {
        ($pool:expr) => {{
            let pool = $pool;
            sqlx::query(SESSION)
                .bind(session)
                .bind(user)
                .bind(t)
                .bind(t + 86_400)
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(TOKEN)
                .bind(hash)
                .bind(session)
                .bind(t)
                .bind(t + 3_600)
                .execute(&pool)
                .await
                .unwrap();
        }};
    }
    if app.database_url.starts_with("sqlite") {
        write_on!(sqlx::SqlitePool::connect(&app.database_url).await.unwrap());
    } else {
        write_on!(sqlx::PgPool::connect(&app.database_url).await.unwrap());
    }
}

/// PostgreSQL's batched rotations: 64 sessions refreshed at once (every fourth twice
/// with the same token, every fifth revoked first, every eighth also sent an invented
/// token for its id), so batches form with winners, losers and refusals mixed: each
/// request gets its own session's answer, a race on one token has one winner whose
/// successor the loser gets back, and a refused one changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_rotations_keep_each_sessions_answer() {
    let app = spawn_app_with(
        Backend::Postgres,
        &[("TESSERA_DATABASE_ROTATION_BATCH", "32")],
    )
    .await;
    let (_, tokens) = app.user_with_session().await;
    let (_, me) = app.get("/v1/me", &s(&tokens, "access_token")).await;
    let user: Uuid = s(&me, "id").parse().unwrap();
    let t = now();
    let auth = &app.state.auth;
    let mut sessions = Vec::new();
    for i in 0..64_usize {
        let session = TestApp::new_session(user, t);
        let token = auth.first_refresh_token(session.id);
        assert!(
            auth.store
                .create_session(&session, token.hash(), t + 3600, &Default::default())
                .await
                .unwrap()
        );
        if i.is_multiple_of(5) {
            auth.store
                .revoke(
                    tessera::store::Revoke::Session(session.id),
                    "test",
                    &tessera::store::AuditEvent {
                        at: t,
                        action: "session_revoked".into(),
                        ..Default::default()
                    },
                    900,
                )
                .await
                .unwrap();
        }
        sessions.push((session.id, token.expose().to_owned()));
    }
    let forged = RefreshMac::new(&[3; 32]);
    let mut requests = Vec::new();
    for (i, (id, token)) in sessions.iter().enumerate() {
        let copies = if i.is_multiple_of(4) { 2 } else { 1 };
        for _ in 0..copies {
            requests.push((i, token.clone()));
        }
        if i.is_multiple_of(8) {
            requests.push((i, RefreshToken::issue(&forged, *id, 1).expose().to_owned()));
        }
    }
    let answers = futures_util::future::join_all(requests.iter().map(|(i, token)| {
        let (client, url) = (app.client.clone(), app.url("/oauth/token"));
        let (i, token) = (*i, token.clone());
        async move {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
            ];
            let response = client.post(url).form(&form).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (i, token, status, body)
        }
    }))
    .await;
    let mut successors: std::collections::HashMap<usize, String> = Default::default();
    for (i, token, status, body) in &answers {
        let (id, real) = &sessions[*i];
        if token != real {
            refused_as(body, *status, (StatusCode::BAD_REQUEST, "invalid_grant"));
            continue;
        }
        if i.is_multiple_of(5) {
            refused_as(body, *status, (StatusCode::BAD_REQUEST, "invalid_grant"));
            assert_eq!(
                count(&app, GENERATION, *id).await,
                1,
                "a revoked session moved"
            );
            continue;
        }
        assert_eq!(*status, StatusCode::OK, "session {i}: {body}");
        let successor = s(body, "refresh_token");
        let first = successors.entry(*i).or_insert_with(|| successor.clone());
        assert_eq!(
            *first, successor,
            "session {i}: two answers, two successors"
        );
    }
    for (i, successor) in &successors {
        let (id, _) = &sessions[*i];
        assert_eq!(count(&app, GENERATION, *id).await, 2, "session {i}");
        let presented = auth
            .presented(&RefreshToken::parse(successor).unwrap())
            .unwrap();
        assert!(
            matches!(presented, tessera::tokens::refresh::Presented::Session { session_id, generation: 2, .. } if session_id == *id),
            "session {i} got another session's token"
        );
    }
    assert_eq!(successors.len(), 64 - 13, "every live session rotated once");
    let reuse = auth
        .store
        .audit_events(None, Some("refresh_token_reuse"), None, 10)
        .await
        .unwrap();
    assert!(reuse.is_empty(), "a race was judged reuse: {reuse:?}");
}

/// PostgreSQL's batched rotations beside a session whose row another transaction holds
/// (a slow revocation, an operator's `SELECT ... FOR UPDATE`): a batch skips that row
/// instead of waiting for it, so a refresh of another session is answered while the row
/// is held; the held session's refreshes give up with 503 within the request timeout and
/// none of them commits afterwards: with no grace window, its token still rotates once
/// the row is free (a late commit would have spent it, and this refresh would be reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_session_neither_stalls_a_batch_nor_commits_after_its_request_gave_up() {
    use sqlx::Connection as _;
    let app = spawn_app_with(
        Backend::Postgres,
        &[
            ("TESSERA_DATABASE_ROTATION_BATCH", "32"),
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "1000"),
            ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("TESSERA_REQUEST_TIMEOUT_SECS", "4"),
            ("TESSERA_REFRESH_GRACE_SECS", "0"),
        ],
    )
    .await;
    let (_, held) = app.user_with_session().await;
    let (_, other) = app.user_with_session().await;
    let held_session = session_of(&app, &s(&held, "access_token")).await;
    let held_token = s(&held, "refresh_token");
    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
        .bind(held_session)
        .execute(&mut db)
        .await
        .unwrap();
    let copies: Vec<_> = (0..6)
        .map(|_| {
            let (client, url, token) = (
                app.client.clone(),
                app.url("/oauth/token"),
                held_token.clone(),
            );
            tokio::spawn(async move {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                ];
                client.post(url).form(&form).send().await.unwrap().status()
            })
        })
        .collect();
    // Answered while the other row is still held.
    let body = refreshed(&app, &s(&other, "refresh_token")).await;
    assert_eq!(s(&body, "token_type"), "Bearer");
    for copy in copies {
        let status = copy.await.unwrap();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "a held row's refresh"
        );
    }
    sqlx::query("ROLLBACK").execute(&mut db).await.unwrap();
    let body = refreshed(&app, &held_token).await;
    assert_eq!(s(&body, "token_type"), "Bearer");
    assert_eq!(count(&app, GENERATION, held_session).await, 2);
    assert_eq!(count(&app, REUSE_EVENTS, held_session).await, 0);
}
