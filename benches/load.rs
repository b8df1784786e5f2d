//! Load benchmark: a real server on loopback against a fresh PostgreSQL database,
//! refresh chains at several concurrencies, side by side with the limit they stand on,
//! the one-statement rotation through sqlx at the same concurrency with no HTTP.
//!
//! `cargo bench --bench load` (env: TESSERA_BENCH_DATABASE_URL = an admin URL of a
//! PostgreSQL server, default postgres://postgres@127.0.0.1:5432/postgres;
//! TESSERA_BENCH_SECS, default 10; TESSERA_BENCH_CONCURRENCY, default "16,32").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use tessera::config::Config;
use tessera::server::Server;
use tessera::store::{AuditEvent, Rotation, Session, Store};
use tessera::tokens::refresh::RefreshToken;
use uuid::Uuid;

struct Run {
    ops: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn fresh_database(admin_url: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("PostgreSQL for the benchmark");
    let name = format!("tessera_bench_{}", Uuid::new_v4().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    format!("{base}/{name}")
}

/// Runs `clients` loops of `step` for `secs`, timing each step.
async fn drive<S, F>(
    clients: Vec<S>,
    secs: u64,
    step: impl Fn(S) -> F + Send + Sync + Copy + 'static,
) -> Run
where
    S: Send + 'static,
    F: std::future::Future<Output = S> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut state| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(16_384);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    state = step(state).await;
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap());
    }
    Run {
        ops: latencies_us.len(),
        elapsed: start.elapsed(),
        latencies_us,
    }
}

/// Logs in `n` users over HTTP; returns their refresh tokens.
async fn sessions(client: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let email = format!("{}@bench.test", Uuid::new_v4().simple());
        let password = "benchmark password";
        client
            .post(format!("{base}/v1/signup"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let t: serde_json::Value = client
            .post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", &email),
                ("password", password),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(t["refresh_token"].as_str().unwrap().to_owned());
    }
    out
}

async fn http_refresh_chains(client: &reqwest::Client, base: &str, c: usize, secs: u64) -> Run {
    let tokens = sessions(client, base, c).await;
    let states: Vec<_> = tokens
        .into_iter()
        .map(|t| (client.clone(), format!("{base}/oauth/token"), t))
        .collect();
    drive(states, secs, |(client, url, token)| async move {
        let response = client
            .post(&url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "refresh failed");
        let body: serde_json::Value = response.json().await.unwrap();
        (
            client,
            url,
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    })
    .await
}

/// The limit: the same rotation statement through sqlx, no HTTP, no token work.
async fn sqlx_rotate_chains(store: Arc<dyn Store>, user_id: Uuid, c: usize, secs: u64) -> Run {
    let now = tessera::http::extract::now();
    let mut states = Vec::new();
    for _ in 0..c {
        let session = Session {
            id: Uuid::now_v7(),
            user_id,
            client_id: "app".into(),
            scope: String::new(),
            created_at: now,
            last_used_at: now,
            expires_at: now + 86_400,
            revoked_at: None,
            user_agent: None,
            ip: None,
        };
        let token = RefreshToken::generate();
        store
            .create_session(
                &session,
                token.hash(),
                now + 86_400,
                &AuditEvent {
                    at: now,
                    action: "bench".into(),
                    ..AuditEvent::default()
                },
            )
            .await
            .unwrap();
        states.push((store.clone(), token.hash()));
    }
    drive(states, secs, move |(store, parent)| async move {
        let successor = RefreshToken::generate().hash();
        let rotation = Rotation {
            parent,
            successor,
            sealed_successor: vec![0; 75],
            now,
            ttl_secs: 86_400,
            client_id: None,
        };
        assert!(
            store.rotate(&rotation).await.unwrap().is_some(),
            "rotation failed"
        );
        (store, successor)
    })
    .await
}

#[tokio::main]
async fn main() {
    let admin_url = env(
        "TESSERA_BENCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let secs: u64 = env("TESSERA_BENCH_SECS", "10").parse().unwrap();
    let levels: Vec<usize> = env("TESSERA_BENCH_CONCURRENCY", "16,32")
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    let max_c = levels.iter().copied().max().unwrap_or(32) as u32;

    let url = fresh_database(&admin_url).await;
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let vars = [
        ("TESSERA_LISTEN", "127.0.0.1:0"),
        ("TESSERA_DATABASE_URL", url.as_str()),
        ("TESSERA_SECRET_KEY", secret.as_str()),
        ("TESSERA_LOG", "warn"),
        ("TESSERA_LOGIN_THROTTLE", "off"),
        ("TESSERA_DATABASE_MAX_CONNECTIONS", &max_c.to_string()),
    ];
    let config =
        Config::load(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).unwrap();
    let server = Server::bind(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let store = server.state().auth.store.clone();
    let bench_user = server
        .state()
        .auth
        .create_user(
            "limit@bench.test",
            "benchmark password".into(),
            vec![],
            None,
            tessera::http::extract::now(),
        )
        .await
        .unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    println!(
        "refresh chains against PostgreSQL, {secs} s per run, cores: {}",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "| c | HTTP refresh req/s | p50 ms | p90 ms | p99 ms | sqlx rotate/s (limit) | limit p99 ms | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in levels {
        let mut limit = sqlx_rotate_chains(store.clone(), bench_user.id, c, secs).await;
        let mut http = http_refresh_chains(&client, &base, c, secs).await;
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
            http.rate(),
            http.pct(0.50),
            http.pct(0.90),
            http.pct(0.99),
            limit.rate(),
            limit.pct(0.99),
            http.rate() / limit.rate()
        );
    }
}
