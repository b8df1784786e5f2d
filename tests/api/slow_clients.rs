//! Issue 18 regression tests: slow_clients. Bodies that trickle must not fill the
//! connection cap (a body-read deadline, evictable while their body is awaited, a
//! bounded share of the cap per address), and a head that never ends must cost no
//! more memory than the header limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{Backend, PASSWORD, TestApp, spawn_app_with, temp_dir};

/// A connection from `ip` (another loopback address than the honest client's).
async fn connect_from(ip: &str, to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().map_err(std::io::Error::other)?)?;
    socket.connect(to).await
}

fn socket_addr(app: &TestApp) -> std::net::SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// One attacker connection after another: a login head announcing a 100-byte body,
/// then one byte a second; when the server answers or closes, the next one.
async fn trickle(to: std::net::SocketAddr, connects: Arc<AtomicUsize>) {
    let head = "POST /oauth/token HTTP/1.1\r\nHost: tessera\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ng";
    loop {
        let Ok(mut stream) = connect_from("127.0.0.2", to).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        connects.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                _ = stream.read(&mut buf) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if stream.write_all(b"x").await.is_err() {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` password grants in a row, each on a new connection from 127.0.0.1: statuses
/// and latencies.
async fn logins(app: &TestApp, email: &str, n: usize) -> (Vec<StatusCode>, Vec<Duration>) {
    let (mut statuses, mut times) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap();
        let started = Instant::now();
        let status = client
            .post(app.url("/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", email),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .map_or(StatusCode::IM_A_TEAPOT, |r| r.status());
        times.push(started.elapsed());
        statuses.push(status);
    }
    (statuses, times)
}

fn ms(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    format!(
        "median {} ms, max {} ms",
        sorted[sorted.len() / 2].as_millis(),
        sorted.last().map_or(0, Duration::as_millis)
    )
}

/// The numbers: 150 connections from 127.0.0.2 trickling login bodies against a
/// cap of 100. Before, every connection with a head was "in flight", never evicted,
/// and the honest client got 503.
async fn slow_bodies_from_one_address_do_not_lock_out_another(backend: Backend) {
    slow_body_attack(backend, 150, "0").await;
}

crate::both_stores!(slow_bodies_from_one_address_do_not_lock_out_another);

/// With the whole cap open to one address, 100 slow bodies fill it: connections waiting
/// for their body are evicted at the cap like idle ones. (More than the cap from one
/// address, churning through evictions, is what the per-address share is for: then an
/// honest connection can arrive while every eviction slot is in use, and get 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_are_evicted_at_the_cap_like_idle_connections() {
    slow_body_attack(Backend::Sqlite, 100, "100").await;
}

async fn slow_body_attack(backend: Backend, attackers: usize, per_address: &str) {
    let _turn = crate::helpers::MANY_CONNECTIONS.lock().await;
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_MAX_CONNECTIONS", "100"),
            ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", per_address),
            ("TESSERA_LOGIN_ATTEMPTS_PER_ADDRESS", "1000"),
        ],
    )
    .await;
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let (quiet, quiet_times) = logins(&app, &email, 10).await;
    assert!(quiet.iter().all(|s| *s == StatusCode::OK), "{quiet:?}");

    let connects = Arc::new(AtomicUsize::new(0));
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..attackers {
        attack.spawn(trickle(socket_addr(&app), connects.clone()));
    }
    let started = Instant::now();
    while connects.load(Ordering::Relaxed) < attackers
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (loaded, loaded_times) = logins(&app, &email, 10).await;
    let attacker_connects = connects.load(Ordering::Relaxed);
    attack.shutdown().await;
    println!(
        "honest logins ({backend:?}, per-address share {per_address}): without the attack {}; during {attackers} slow bodies {} \
         (attacker connections made: {attacker_connects})",
        ms(&quiet_times),
        ms(&loaded_times)
    );
    assert!(
        loaded.iter().all(|s| *s == StatusCode::OK),
        "honest logins during the slow-body attack: {loaded:?}"
    );
}

/// A body that stops coming gets a 4xx in our error shape within the body-read deadline,
/// and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_stops_coming_is_answered_400_within_the_body_deadline() {
    let app = spawn_app_with(Backend::Sqlite, &[("TESSERA_BODY_READ_TIMEOUT_SECS", "1")]).await;
    let mut stream = connect_from("127.0.0.2", socket_addr(&app)).await.unwrap();
    stream
        .write_all(
            b"POST /oauth/token HTTP/1.1\r\nHost: tessera\r\n\
            Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen)).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(read.is_ok(), "the connection closed: {seen:?}");
    assert!(
        seen.starts_with("HTTP/1.1 400") && seen.contains("\"error\":\"invalid_request\""),
        "{seen:?}"
    );
}

/// The `tessera` binary (see `transport::server_binary`).
fn server_binary() -> String {
    std::env::var("TESSERA_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").into())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The numbers, scaled: 1,000 connections each sending 99 header lines of
/// 4 KiB without the blank line. Before, hyper buffered ~400 KiB of each (its default
/// buffer) before our 16 KiB header limit was looked at.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfinished_heads_cost_no_more_than_the_header_limit() {
    let _turn = crate::helpers::MANY_CONNECTIONS.lock().await;
    let dir = temp_dir();
    let port = crate::transport::free_port().await;
    let mut server = std::process::Command::new(server_binary());
    server.arg("serve").current_dir(&dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        server.env_remove(key);
    }
    let mut server = server
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_HEADER_READ_TIMEOUT_SECS", "120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = server.id();
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let probe = reqwest::Client::new();
    let mut up = false;
    for _ in 0..600 {
        if probe
            .get(format!("http://{to}/healthz"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(probe);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);

    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: tessera\r\n");
    let filler = "a".repeat(4096);
    for i in 0..99 {
        head.push_str(&format!("x-fill-{i}: {filler}\r\n"));
    }
    let head = Arc::new(head);
    let mut open = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let head = head.clone();
        open.spawn(async move {
            let mut stream = connect_from("127.0.0.2", to).await.ok()?;
            let sent =
                tokio::time::timeout(Duration::from_secs(30), stream.write_all(head.as_bytes()))
                    .await;
            Some((stream, matches!(sent, Ok(Ok(())))))
        });
    }
    let mut streams = Vec::new();
    while let Some(done) = open.join_next().await {
        if let Ok(Some(stream)) = done {
            streams.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let sent_whole = streams.iter().filter(|(_, whole)| *whole).count();
    drop(streams);
    let _ = server.kill();
    let _ = server.wait();
    assert!(up, "the server did not start");
    let growth_mib = after.saturating_sub(before) / 1024;
    println!(
        "RSS with 1,000 unfinished 396 KiB heads: {} MiB before, {} MiB after \
         (+{growth_mib} MiB); heads the server took whole: {sent_whole}",
        before / 1024,
        after / 1024
    );
    assert!(growth_mib < 100, "RSS grew by {growth_mib} MiB");
}
