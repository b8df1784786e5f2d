//! Enumeration by timing: a password grant for an email nobody has, against one with a
//! wrong password for an account that exists. Both must answer the same status and
//! body and take the same time (the unknown one is checked against a dummy argon2
//! hash), so an attacker cannot list accounts. The two kinds alternate on one
//! connection, one at a time, so load on the machine falls on both alike.
//!
//! `cargo bench --bench enumeration` (env: TESSERA_BENCH_ROUNDS, pairs of attempts,
//! default 60; TESSERA_BENCH_DATABASE_URL, default a fresh SQLite file; e.g. a fresh
//! PostgreSQL database URL). Exits non-zero if the answers differ or the medians are
//! more than 10% apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use tessera::config::Config;
use tessera::server::Server;

const PASSWORD: &str = "correct horse battery staple";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Status, body, and the headers a client could tell apart (not the date or the
/// request id, which differ between any two responses).
async fn attempt(
    client: &reqwest::Client,
    base: &str,
    email: &str,
) -> (f64, (u16, String, Vec<(String, String)>)) {
    let start = Instant::now();
    let response = client
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", "not the password at all"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    headers.sort();
    let body = response.text().await.unwrap();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    (ms, (status, body, headers))
}

#[tokio::main]
async fn main() {
    let rounds: usize = env("TESSERA_BENCH_ROUNDS", "60").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("tessera-enum-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = env(
        "TESSERA_BENCH_DATABASE_URL",
        &format!("sqlite://{}", dir.join("tessera.db").display()),
    );
    let vars = vec![
        ("TESSERA_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("TESSERA_DATABASE_URL".to_owned(), url.clone()),
        (
            "TESSERA_SECRET_KEY".to_owned(),
            tessera::tokens::keys::SecretKey::generate().to_base64(),
        ),
        // Every attempt here fails; the throttle would answer 429 to both alike and
        // measure nothing.
        ("TESSERA_LOGIN_THROTTLE".to_owned(), "off".to_owned()),
    ];
    let config = Config::load(vars).unwrap();
    let server = Server::bind(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let known = "someone@example.com";
    let signup = client
        .post(format!("{base}/v1/signup"))
        .json(&serde_json::json!({"email": known, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status().as_u16(), 201);

    // Warm-up: connection, caches, the blocking pool.
    for _ in 0..3 {
        attempt(&client, &base, known).await;
        attempt(&client, &base, "nobody@example.com").await;
    }
    let (mut unknown_ms, mut wrong_ms) = (Vec::new(), Vec::new());
    let mut answers = std::collections::BTreeSet::new();
    for i in 0..rounds {
        // A fresh unknown address each time (no cache of "known missing"); the order
        // alternates so neither kind always follows the other.
        let unknown = format!("nobody-{i}@example.com");
        let pair = if i % 2 == 0 {
            let u = attempt(&client, &base, &unknown).await;
            (u, attempt(&client, &base, known).await)
        } else {
            let w = attempt(&client, &base, known).await;
            (attempt(&client, &base, &unknown).await, w)
        };
        let ((u_ms, u_answer), (w_ms, w_answer)) = pair;
        unknown_ms.push(u_ms);
        wrong_ms.push(w_ms);
        answers.insert(u_answer);
        answers.insert(w_answer);
    }
    let _ = tx.send(());
    let _ = running.await;
    let _ = std::fs::remove_dir_all(&dir);

    let store = url.split(':').next().unwrap_or("?");
    let (mu, mw) = (median(&mut unknown_ms), median(&mut wrong_ms));
    let diff = (mu - mw).abs() / mu.min(mw) * 100.0;
    println!("enumeration by timing ({store}, {rounds} pairs, one at a time)");
    println!("| attempt | p10 ms | median ms | p90 ms |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("unknown email", &mut unknown_ms),
        ("known email, wrong password", &mut wrong_ms),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            pct(v, 0.1),
            median(v),
            pct(v, 0.9)
        );
    }
    println!("medians differ by {diff:.1}% (target: within 10%)");
    println!(
        "distinct answers (status, body, headers): {}",
        answers.len()
    );
    for (status, body, _) in &answers {
        println!("  {status} {body}");
    }
    let same_answer = answers.len() == 1;
    if !same_answer || diff > 10.0 {
        println!("FAIL: the two kinds of failed login can be told apart");
        std::process::exit(1);
    }
}
