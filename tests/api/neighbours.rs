//! Issue 18 regression tests: neighbours. What a role that can merely connect to the
//! database (PostgreSQL) may do to revocation: forge feed announcements, hold the locks
//! Tessera needs; and what invented refresh tokens cost: stored DPoP proofs, unthrottled
//! guesses. Also: the server runs as a least-privilege runtime role.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, Executor};
use tessera::tokens::refresh::RefreshToken;
use tessera::verify::{Verifier, VerifierConfig, VerifyError};
use uuid::Uuid;

use crate::both_stores;
use crate::dpop::{DpopKey, bound_session, token_with};
use crate::helpers::*;
use crate::services::service_client;

both_stores!(
    invented_refresh_tokens_leave_no_dpop_proofs,
    unknown_refresh_tokens_are_throttled_per_address,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_notification_does_not_silence_the_stream() {
    forged_notification(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neighbour_holding_the_old_advisory_keys_blocks_no_revocation() {
    neighbour_holding_advisory_keys(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_runs_as_a_least_privilege_runtime_role() {
    least_privilege_roles().await
}

fn now() -> i64 {
    tessera::http::extract::now()
}

/// Rows in `table`, read by a connection of the test's own.
async fn rows(app: &TestApp, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    if app.database_url.starts_with("sqlite") {
        let mut db = sqlx::SqliteConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap()
    } else {
        let mut db = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap()
    }
}

/// An invented refresh token: of the old shape (random bits), or of the session-row
/// shape for a real-looking session id under a tag key that is not the server's.
fn invented_token(i: usize) -> RefreshToken {
    if i.is_multiple_of(2) {
        RefreshToken::generate_legacy()
    } else {
        let mac = tessera::tokens::refresh::RefreshMac::new(&[i as u8; 32]);
        RefreshToken::issue(&mac, uuid::Uuid::now_v7(), 1)
    }
}

fn revoke_proof(key: &DpopKey) -> String {
    key.sign(
        &key.header(),
        &key.claims("POST", &format!("{ISSUER}/oauth/revoke")),
    )
}

/// Item 4: a well-formed but invented `tsr_` token with a valid, fresh, self-signed
/// proof, on the refresh grant and on revocation, must leave no row in `dpop_proofs`.
async fn invented_refresh_tokens_leave_no_dpop_proofs(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_LOGIN_THROTTLE", "off")]).await;
    let key = DpopKey::es256();
    for i in 0..300 {
        let invented = invented_token(i);
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", invented.expose()),
        ];
        let a = token_with(&app, &form, &[&key.token_proof()]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.body["error"], "invalid_grant", "{}", a.body);
    }
    for i in 0..300 {
        let invented = invented_token(i);
        let status = app
            .client
            .post(app.url("/oauth/revoke"))
            .header("DPoP", revoke_proof(&key))
            .form(&[("token", invented.expose())])
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "RFC 7009: unknown tokens succeed");
    }
    assert_eq!(
        rows(&app, "dpop_proofs").await,
        0,
        "600 requests with invented tokens stored proofs"
    );

    // Real tokens still have their proofs remembered, and a replay is still refused.
    let tokens = bound_session(&app, &key).await;
    let before = rows(&app, "dpop_proofs").await;
    let proof = key.token_proof();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
    ];
    let a = token_with(&app, &form, &[&proof]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(rows(&app, "dpop_proofs").await, before + 1);
    let next = a.body["refresh_token"].as_str().unwrap().to_owned();
    let form = [("grant_type", "refresh_token"), ("refresh_token", &next)];
    let replay = token_with(&app, &form, &[&proof]).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    assert_eq!(
        replay.body["error"], "invalid_dpop_proof",
        "{}",
        replay.body
    );
    // Revoking the live token with its key: the proof is remembered, the session ends.
    let status = app
        .client
        .post(app.url("/oauth/revoke"))
        .header("DPoP", revoke_proof(&key))
        .form(&[("token", next.as_str())])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&app, "dpop_proofs").await, before + 2);
    let form = [("grant_type", "refresh_token"), ("refresh_token", &next)];
    let after = token_with(&app, &form, &[&key.token_proof()]).await;
    assert_eq!(after.body["error"], "invalid_grant", "{}", after.body);
}

async fn refresh_from(app: &TestApp, addr: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/token"))
        .header("x-forwarded-for", addr)
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap()
}

/// Item 4: unknown refresh tokens are counted per place like login guesses; past the
/// limit that place is answered 429 with `Retry-After`, while another place's honest
/// refreshes (and the same place's refreshes of its real tokens) go on.
async fn unknown_refresh_tokens_are_throttled_per_address(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_TRUSTED_PROXIES", "127.0.0.1"),
            ("TESSERA_LOGIN_ATTEMPTS_PER_ADDRESS", "10"),
        ],
    )
    .await;
    let (_, mut honest) = app.user_with_session().await;
    let (_, mut attackers_own) = app.user_with_session().await;
    let attacker = "198.51.100.7";
    let mut first_429 = None;
    for i in 1..=40_u32 {
        let r = refresh_from(&app, attacker, RefreshToken::generate_legacy().expose()).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: i64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
            first_429.get_or_insert(i);
        } else {
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            assert!(
                first_429.is_none(),
                "refused, then let through again at {i}"
            );
        }
        if i.is_multiple_of(10) {
            // Another address refreshes its real token meanwhile, every time.
            let r = refresh_from(&app, "198.51.100.8", &s(&honest, "refresh_token")).await;
            assert_eq!(r.status(), StatusCode::OK, "honest refresh at {i}");
            honest = r.json().await.unwrap();
        }
    }
    assert_eq!(
        first_429,
        Some(11),
        "the 11th unknown token in the minute is refused"
    );
    // The throttled place's own real token still refreshes.
    let r = refresh_from(&app, attacker, &s(&attackers_own, "refresh_token")).await;
    assert_eq!(r.status(), StatusCode::OK);
    attackers_own = r.json().await.unwrap();
    assert!(!s(&attackers_own, "access_token").is_empty());
    let r = refresh_from(&app, "198.51.100.8", &s(&honest, "refresh_token")).await;
    assert_eq!(r.status(), StatusCode::OK);
}

fn verifier_config(app: &TestApp) -> VerifierConfig {
    VerifierConfig {
        base_url: app.base.clone(),
        ..VerifierConfig::new(ISSUER, ISSUER)
    }
}

async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A role with LOGIN (and the CONNECT every role has through PUBLIC) and nothing else.
async fn neighbour_role(app: &TestApp) -> (String, sqlx::PgConnection) {
    let role = format!("neighbour_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .await
        .unwrap();
    let url = app
        .database_url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(
        url, app.database_url,
        "the test database's URL names postgres"
    );
    let conn = sqlx::PgConnection::connect(&url).await.unwrap();
    (role, conn)
}

async fn drop_role(app: &TestApp, role: &str, conn: sqlx::PgConnection) {
    let _ = conn.close().await;
    let mut admin = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let _ = admin
        .execute(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .await;
}

/// Item 5a: a `NOTIFY` with a huge `seq` from a role with no grants, sent while no
/// stream is open, must not move the feed's reader past later revocations.
async fn forged_notification(backend: Backend) {
    let app = spawn_app(backend).await;
    let (role, mut neighbour) = neighbour_role(&app).await;
    let forged = r#"[{"seq": 999999999999, "session_id": "00000000-0000-0000-0000-000000000000", "revoked_at": 0, "expires_at": 4102444800}]"#;
    // The test listens too: once it has heard the forgery, so has the server's reader
    // (one listener connection, one relay); a real revocation after it, heard as well,
    // leaves the reader past both before the stream opens.
    let mut heard = app.state.auth.store.subscribe_revocations();
    sqlx::query("SELECT pg_notify('tessera_revocations', $1)")
        .bind(forged)
        .execute(&mut neighbour)
        .await
        .unwrap();
    let (_, first) = app.user_with_session().await;
    assert_eq!(
        app.logout(&s(&first, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "both announcements were relayed: {r:?}"
        );
    }
    // The reader handles what it heard right after the relay: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (id, secret) = service_client(&app).await;
    let verifier = Verifier::new(verifier_config(&app)).await.unwrap();
    let _feed = verifier.subscribe_revocations(&id, &secret);
    let (_, second) = app.user_with_session().await;
    let token = s(&second, "access_token");
    assert!(verifier.verify(&token).await.is_ok());
    // The stream is open once it delivered the backlog (the first logout).
    assert!(
        eventually(Duration::from_secs(5), || {
            verifier.verify_cached(&s(&first, "access_token")) == Err(VerifyError::Revoked)
        })
        .await,
        "the stream opened and delivered its backlog"
    );
    assert_eq!(app.logout(&token).await, StatusCode::NO_CONTENT);
    assert!(
        eventually(Duration::from_secs(5), || {
            verifier.verify_cached(&token) == Err(VerifyError::Revoked)
        })
        .await,
        "a revocation after a forged NOTIFY reached the live stream"
    );
    drop_role(&app, &role, neighbour).await;
}

fn sid(access_token: &str) -> String {
    let part = access_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}

/// Item 5b: a role with no grants holds every advisory key Tessera used (7365820-23),
/// and cannot take the row locks that replaced them; logouts and admin revocations
/// still answer at once and take effect.
async fn neighbour_holding_advisory_keys(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "2000")],
    )
    .await;
    let (role, mut neighbour) = neighbour_role(&app).await;
    for key in 7_365_820_i64..=7_365_823 {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut neighbour)
            .await
            .unwrap();
    }
    let (_, user) = app.user_with_session().await;
    let status = app.logout(&s(&user, "access_token")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "logout");
    let r = app.refresh(&s(&user, "refresh_token")).await;
    assert_eq!(
        r.0,
        StatusCode::BAD_REQUEST,
        "the logout took effect: {}",
        r.1
    );

    let (_, admin) = app.admin_session().await;
    let (_, victim) = app.user_with_session().await;
    let (status, body) = app
        .delete(
            &format!("/v1/admin/sessions/{}", sid(&s(&victim, "access_token"))),
            &s(&admin, "access_token"),
        )
        .await;
    assert!(status.is_success(), "admin revocation: {status} {body}");
    let r = app.refresh(&s(&victim, "refresh_token")).await;
    assert_eq!(
        r.0,
        StatusCode::BAD_REQUEST,
        "the revocation took effect: {}",
        r.1
    );

    // The janitor and key rotation take their locks too.
    assert!(app.state.auth.rotate_keys(now(), true).await.is_ok());
    let report = app.state.auth.prune(now()).await;
    assert!(
        report.failed.is_empty() && !report.busy,
        "{:?}",
        report.failed
    );

    // The rows Tessera locks instead are out of the neighbour's reach.
    let mut tx = neighbour.begin().await.unwrap();
    let denied = sqlx::query("SELECT name FROM locks FOR UPDATE")
        .fetch_all(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        denied.to_string().contains("permission denied"),
        "the lock rows are out of reach: {denied}"
    );
    drop(tx);
    drop_role(&app, &role, neighbour).await;
}

/// The README's least-privilege setup: an owner role migrates (`tessera migrate`), a
/// runtime role with only SELECT/INSERT/UPDATE/DELETE on the tables and USAGE on the
/// sequences serves; login, refresh and revocation work.
async fn least_privilege_roles() {
    let admin_url = fresh_pg_database().await;
    let db = admin_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let tag = Uuid::new_v4().simple().to_string();
    let (owner, runtime) = (format!("owner_{tag}"), format!("runtime_{tag}"));
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {owner} LOGIN"),
        format!("CREATE ROLE {runtime} LOGIN"),
        format!("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"),
        format!("GRANT CONNECT ON DATABASE {db} TO {owner}, {runtime}"),
        format!("ALTER DATABASE {db} OWNER TO {owner}"),
        "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
        format!("ALTER SCHEMA public OWNER TO {owner}"),
        format!("GRANT USAGE ON SCHEMA public TO {runtime}"),
    ] {
        admin.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
    let as_role =
        |role: &str| admin_url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let mut as_owner = sqlx::PgConnection::connect(&as_role(&owner)).await.unwrap();
    for sql in [
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {runtime}"
        ),
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO {runtime}"),
    ] {
        as_owner.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
    // `tessera migrate` as the owner.
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("migrate")
        .env("TESSERA_DATABASE_URL", as_role(&owner))
        .env("TESSERA_SECRET_KEY", &secret)
        .env("TESSERA_ISSUER", ISSUER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate as owner: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The runtime role may not change the schema.
    let mut as_runtime = sqlx::PgConnection::connect(&as_role(&runtime))
        .await
        .unwrap();
    let denied = as_runtime
        .execute("CREATE TABLE intruder (x int)")
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    let denied = as_runtime.execute("DROP TABLE sessions").await.unwrap_err();
    assert!(denied.to_string().contains("must be owner"), "{denied}");

    let app = spawn_instance(&as_role(&runtime), &secret, &[]).await;
    let (_, tokens) = app.user_with_session().await;
    let (status, next) = app.refresh(&s(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(
        app.logout(&s(&next, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = app.refresh(&s(&next, "refresh_token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(app.state.auth.rotate_keys(now(), true).await.is_ok());
    let report = app.state.auth.prune(now()).await;
    assert!(
        report.failed.is_empty() && !report.busy,
        "{:?}",
        report.failed
    );
    let mut app = app;
    app.shut_down();
    let _ = as_runtime.close().await;
    let _ = as_owner.close().await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS {runtime}"),
        format!("DROP ROLE IF EXISTS {owner}"),
    ] {
        let _ = admin.execute(sqlx::AssertSqlSafe(sql)).await;
    }
}
