//! The sign-up flood (issue 10, item 4): password logins from one address, alone and
//! while another address floods `POST /v1/signup` with new emails, on a server of
//! their own with the sign-up throttle at its default. Before the throttle, every
//! flooding sign-up took an argon2 slot and the logins queued behind them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use uuid::Uuid;

use super::{Run, drive, fresh_database, row, start_server};

const FLOODER: &str = "198.51.100.1";
const LOGIN_FROM: &str = "203.0.113.1";
const PASSWORD: &str = "benchmark password";
const LOGIN_CLIENTS: usize = 4;
const FLOOD_CLIENTS: usize = 16;

/// Password grants from [`LOGIN_FROM`], each of which must succeed.
async fn logins(client: &reqwest::Client, base: &str, emails: &[String], secs: u64) -> Run {
    let states: Vec<_> = emails
        .iter()
        .map(|e| (client.clone(), format!("{base}/oauth/token"), e.clone()))
        .collect();
    drive(states, secs, |(client, url, email)| async move {
        let response = client
            .post(&url)
            .header("x-forwarded-for", LOGIN_FROM)
            .form(&[
                ("grant_type", "password"),
                ("username", email.as_str()),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "a login from another address");
        let _ = response.bytes().await;
        (client, url, email)
    })
    .await
}

/// Sign-ups of new emails from [`FLOODER`] as fast as they are answered; counts the
/// created and the refused (429) ones.
async fn flood(
    client: &reqwest::Client,
    base: &str,
    secs: u64,
    counts: &Arc<[AtomicUsize; 2]>,
) -> Run {
    let states: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|_| (client.clone(), format!("{base}/v1/signup"), counts.clone()))
        .collect();
    drive(states, secs, |(client, url, counts)| async move {
        let email = format!("{}@flood.test", Uuid::new_v4().simple());
        let response = client
            .post(&url)
            .header("x-forwarded-for", FLOODER)
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            201 => counts[0].fetch_add(1, Ordering::Relaxed),
            429 => counts[1].fetch_add(1, Ordering::Relaxed),
            other => panic!("a flooding sign-up got {other}"),
        };
        let _ = response.bytes().await;
        (client, url, counts)
    })
    .await
}

/// Runs the scenario; returns the loaded login p99 over the unloaded one, and a
/// description of the flood.
pub async fn run(admin_url: &str, pool: u32, secs: u64) -> (f64, String) {
    let url = fresh_database(admin_url).await;
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    // Behind a "proxy" on loopback, each request says which address it comes from.
    // The per-address login limit is lifted: the login clients all come from one
    // address at full speed, and that limit is not what is measured.
    let server = start_server(
        &url,
        &secret,
        pool,
        &[
            ("TESSERA_LOGIN_THROTTLE", "on"),
            ("TESSERA_LOGIN_ATTEMPTS_PER_ADDRESS", "1000000"),
            ("TESSERA_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let mut emails = Vec::new();
    for i in 0..LOGIN_CLIENTS {
        let email = format!("owner{i}@bench.test");
        let response = client
            .post(format!("{base}/v1/signup"))
            .header("x-forwarded-for", format!("192.0.2.{}", i + 1))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        emails.push(email);
    }

    // Logins alone, then during the flood, then alone again: the unloaded figure pools
    // both halves, so drift on a shared machine does not land on one side of the ratio.
    let mut quiet = logins(&client, &base, &emails, secs.div_ceil(2)).await;
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let flooding = {
        let (client, base, counts) = (client.clone(), base.clone(), counts.clone());
        tokio::spawn(async move { flood(&client, &base, secs + 2, &counts).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut loaded = logins(&client, &base, &emails, secs).await;
    let mut flooded = flooding.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet.absorb(logins(&client, &base, &emails, secs.div_ceil(2)).await);

    row(
        "login from one address, unloaded (before and after)",
        LOGIN_CLIENTS,
        &mut quiet,
        None,
    );
    row(
        "login from one address, during a sign-up flood from another",
        LOGIN_CLIENTS,
        &mut loaded,
        None,
    );
    row(
        "sign-up flood (new emails, one address)",
        FLOOD_CLIENTS,
        &mut flooded,
        None,
    );
    let (created, refused) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    let ratio = loaded.pct(0.99) / quiet.pct(0.99);
    let about = format!(
        "login p99 {:.1} ms loaded, {:.1} ms unloaded; the flood: {created} created, {refused} refused with 429",
        loaded.pct(0.99),
        quiet.pct(0.99)
    );
    (ratio, about)
}
