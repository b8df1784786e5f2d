//! Database trouble other than an outage: a lock stall, a read-only database (a
//! failover to a standby), and a request that outlives its timeout. Each answers 503
//! (or 408) with `Retry-After` in the API's error shape, and loses no session.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_stores;
use crate::helpers::{Backend, TestApp, json, pg_admin_url, s, spawn_app_with};

both_stores!(a_request_past_its_timeout_gets_408_in_the_error_shape);

fn database_name(app: &TestApp) -> String {
    let path = app.database_url.rsplit('/').next().unwrap();
    path.split('?').next().unwrap().to_owned()
}

/// A refresh whose statement waits on a lock longer than the statement timeout: the
/// database cancels it (503, Retry-After), so it cannot commit after the client gave
/// up, and the client's retry once the lock is gone is an ordinary refresh, not reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_stall_cancels_the_statement_and_the_retry_is_not_reuse() {
    let app = spawn_app_with(
        Backend::Postgres,
        &[
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "1000"),
            ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("TESSERA_REQUEST_TIMEOUT_SECS", "4"),
            ("TESSERA_REFRESH_GRACE_SECS", "2"),
        ],
    )
    .await;
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "refresh_token");

    // What an ALTER TABLE or VACUUM FULL does to the table.
    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = Instant::now();
    let response = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let (_, body) = json(response).await;
    // The lock goes away only now, after the client was answered.
    tx.commit().await.unwrap();
    assert_eq!(
        (status, s(&body, "error")),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable".into()
        ),
        "after {took:?}: {body}"
    );
    assert!(retry_after.is_some());

    let (status, body) = app.refresh(&token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry after the stall rotates: {body}"
    );
    assert!(
        crate::refresh::audit_actions(&app, "refresh_token_reuse")
            .await
            .is_empty()
    );
}

/// A stall shorter than the statement timeout: the rotation commits late, and the
/// client's retry right after the answer (a lost response) is measured from the commit,
/// so it is a grace replay, not reuse that would end the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_stalled_commit_is_a_grace_replay() {
    let app = spawn_app_with(
        Backend::Postgres,
        &[
            // Room on a loaded machine: the stall below ends well inside the statement
            // timeout, and the retry after it has the whole grace window.
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "12000"),
            ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("TESSERA_REQUEST_TIMEOUT_SECS", "20"),
            ("TESSERA_REFRESH_GRACE_SECS", "3"),
        ],
    )
    .await;
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "refresh_token");
    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refresh = {
        let (client, url, token) = (app.client.clone(), app.url("/oauth/token"), token.clone());
        tokio::spawn(async move {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
            ];
            json(client.post(url).form(&form).send().await.unwrap()).await
        })
    };
    // Longer than the grace window, shorter than the statement timeout: the stall.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    tx.commit().await.unwrap();
    let (status, first) = refresh.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{first}");

    let (status, again) = app.refresh(&token).await;
    assert_eq!(
        (status, s(&again, "refresh_token")),
        (StatusCode::OK, s(&first, "refresh_token")),
        "the retry gets the same successor back: {again}"
    );
}

/// A failover that leaves the instances on a read-only database: writes answer 503
/// with Retry-After (not 500), readiness says 503 while writes fail, and both recover
/// when the database is writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_database_is_503_and_unready_until_writable() {
    let app = spawn_app_with(Backend::Postgres, &[]).await;
    let (_, tokens) = app.user_with_session().await;
    let token = s(&tokens, "refresh_token");
    let name = database_name(&app);
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url().await)
        .await
        .unwrap();
    let set = |on: bool| {
        sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = {}",
            if on { "on" } else { "off" }
        ))
    };
    sqlx::query(set(true)).execute(&mut admin).await.unwrap();
    reconnect_all(&mut admin, &name).await;

    // Writes fail from here on: a broken pooled connection or the read-only refusal,
    // both 503. Try a few times, so every pooled connection is a read-only one.
    let mut last = (StatusCode::OK, serde_json::Value::Null);
    for _ in 0..10 {
        last = app.refresh(&token).await;
    }
    assert_eq!(
        (last.0, s(&last.1, "error")),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable".into()
        ),
        "{}",
        last.1
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));

    sqlx::query(set(false)).execute(&mut admin).await.unwrap();
    reconnect_all(&mut admin, &name).await;
    assert!(
        app.wait_until_ready(Duration::from_secs(5)).await,
        "ready again once writes commit"
    );
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..10 {
        status = app.refresh(&token).await.0;
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(status, StatusCode::OK, "the token survived unspent");
}

/// Ends every connection to the database, so the pool reconnects with its new settings.
async fn reconnect_all(admin: &mut sqlx::PgConnection, name: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(admin)
    .await
    .unwrap();
}

/// A client that sends its headers and never its body: the request times out with a
/// 408 that has the API's error body and Retry-After.
async fn a_request_past_its_timeout_gets_408_in_the_error_shape(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_REQUEST_TIMEOUT_SECS", "1"),
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "400"),
            ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "400"),
        ],
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"POST /oauth/token HTTP/1.1\r\nHost: tessera\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
              grant_type=",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                response.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&response).contains("}") {
                    break;
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(text.contains("retry-after:"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
}
