//! Revocation propagation across two instances on one PostgreSQL database: an admin
//! revokes a session on instance B; a verifier following instance A's stream rejects
//! the session's access token. Measures the time from B's answer to A's verifier
//! rejecting, over N revocations.
//!
//! `cargo bench --bench propagation` (env: TESSERA_BENCH_DATABASE_URL, admin URL of a
//! PostgreSQL server; TESSERA_BENCH_REVOCATIONS, default 200).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use tessera::config::Config;
use tessera::server::Server;
use tessera::verify::{Verifier, VerifierConfig, VerifyError};
use uuid::Uuid;

async fn instance(url: &str, secret: &str) -> String {
    let vars = [
        ("TESSERA_LISTEN", "127.0.0.1:0"),
        ("TESSERA_DATABASE_URL", url),
        ("TESSERA_SECRET_KEY", secret),
        ("TESSERA_ISSUER", "http://tessera.bench"),
        ("TESSERA_LOG", "warn"),
        ("TESSERA_LOGIN_THROTTLE", "off"),
    ];
    let config =
        Config::load(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).unwrap();
    let server = Server::bind(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(server.run(std::future::pending()));
    base
}

async fn post_json(
    client: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> serde_json::Value {
    client
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let admin_url = std::env::var("TESSERA_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let n: usize = std::env::var("TESSERA_BENCH_REVOCATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let name = format!("tessera_bench_{}", Uuid::new_v4().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let a = instance(&url, &secret).await;
    let b = instance(&url, &secret).await;
    let http = reqwest::Client::new();

    // A service client (on A) and an admin (on B).
    let state = tessera::server::build_state(
        &Config::load([
            ("TESSERA_DATABASE_URL".to_owned(), url.clone()),
            ("TESSERA_SECRET_KEY".to_owned(), secret.clone()),
            ("TESSERA_LOG".to_owned(), "warn".to_owned()),
        ])
        .unwrap(),
    )
    .await
    .unwrap();
    let now = tessera::http::extract::now();
    let service = state.auth.create_client("bench", true, now).await.unwrap();
    state
        .auth
        .create_user(
            "admin@bench.test",
            "benchmark password".into(),
            vec!["admin".into()],
            None,
            now,
        )
        .await
        .unwrap();
    let admin_token = post_json(&http, format!("{b}/oauth/token"), serde_json::json!({"grant_type": "password", "username": "admin@bench.test", "password": "benchmark password"})).await["access_token"].as_str().unwrap().to_owned();
    post_json(
        &http,
        format!("{a}/v1/signup"),
        serde_json::json!({"email": "user@bench.test", "password": "benchmark password"}),
    )
    .await;

    let config = VerifierConfig {
        base_url: a.clone(),
        ..VerifierConfig::new("http://tessera.bench", "http://tessera.bench")
    };
    let verifier = Verifier::new(config).await.unwrap();
    let _feed = verifier.subscribe_revocations(
        &service.client_id,
        service.client_secret.as_deref().unwrap(),
    );
    let mut applied = verifier.revocations_applied();
    tokio::time::sleep(Duration::from_millis(300)).await; // let the stream connect

    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let token = post_json(&http, format!("{a}/oauth/token"), serde_json::json!({"grant_type": "password", "username": "user@bench.test", "password": "benchmark password"})).await["access_token"].as_str().unwrap().to_owned();
        let sid = verifier.verify(&token).await.unwrap().sid;
        applied.borrow_and_update();
        let response = http
            .delete(format!("{b}/v1/admin/sessions/{sid}"))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let returned = Instant::now();
        loop {
            if verifier.verify_cached(&token) == Err(VerifyError::Revoked) {
                break;
            }
            tokio::time::timeout(Duration::from_secs(5), applied.changed())
                .await
                .expect("revocation never arrived")
                .unwrap();
        }
        latencies.push(returned.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
    };
    println!(
        "revocation propagation, B's admin revoke answered -> verifier following A rejects, n = {n}"
    );
    println!(
        "p50 {:.2} ms | p90 {:.2} ms | p99 {:.2} ms | max {:.2} ms",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}
