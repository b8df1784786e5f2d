//! What slow or greedy clients cannot do to everyone else: hold connections forever
//! (header-read and idle timeouts), or use up the connection slots (the cap).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, PASSWORD, TestApp, s, spawn_app_with, temp_dir};

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// A connection that has sent the start of a request head and then nothing more.
async fn half_header(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(addr(app)).await.unwrap();
    stream
        .write_all(b"POST /oauth/token HTTP/1.1\r\nHost: tessera\r\n")
        .await
        .unwrap();
    stream
}

/// Reads until the server closes the connection, or `within` passes: what was read,
/// and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&seen).into(), false),
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&seen).into(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_sent_header_is_closed_after_the_header_read_timeout() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("TESSERA_HEADER_READ_TIMEOUT_SECS", "1")],
    )
    .await;
    let mut slow = half_header(&app).await;
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a connection with a half-sent header is still open 5 s after a 1 s header timeout"
    );
    // A client that never sends a byte is no better off.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection is still open after 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_HEADER_READ_TIMEOUT_SECS", "30"),
            ("TESSERA_IDLE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let mut conn = TcpStream::connect(addr(&app)).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: tessera\r\n\r\n";
    for _ in 0..2 {
        conn.write_all(request).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "kept alive between requests"
        );
    }
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(
        closed,
        "an idle connection outlived a 1 s idle timeout by 10 s (the 30 s header timeout does not apply between requests)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_stream_outlives_the_idle_timeout() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_HEADER_READ_TIMEOUT_SECS", "1"),
            ("TESSERA_IDLE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let (id, secret) = crate::services::service_client(&app).await;
    let (_, tokens) = app.user_with_session().await;
    let mut stream = app
        .client
        .get(app.url("/v1/revocations"))
        .basic_auth(&id, Some(&secret))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // Past both timeouts with nothing sent: a response in flight is not idle.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.logout(&s(&tokens, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: revocation") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "the stream was cut: {seen:?}");
}

/// Sign-up, login, then `refreshes` refreshes: how long the login and each refresh took.
async fn normal_client(app: &TestApp, refreshes: usize) -> (Duration, Vec<Duration>) {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = app.signup(&email, PASSWORD).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let started = Instant::now();
    let (status, mut tokens) = app.login(&email, PASSWORD).await;
    let login = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let mut times = Vec::new();
    for _ in 0..refreshes {
        let started = Instant::now();
        let (status, next) = app.refresh(&s(&tokens, "refresh_token")).await;
        times.push(started.elapsed());
        assert_eq!(status, StatusCode::OK, "{next}");
        tokens = next;
    }
    times.sort();
    (login, times)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_slow_connections_do_not_keep_a_client_out() {
    let _turn = crate::helpers::MANY_CONNECTIONS.lock().await;
    // A long header timeout: the slow connections stay for the whole measurement.
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("TESSERA_HEADER_READ_TIMEOUT_SECS", "120")],
    )
    .await;
    let (login_alone, refresh_alone) = normal_client(&app, 50).await;

    let mut slow = Vec::with_capacity(1000);
    for _ in 0..1000 {
        slow.push(half_header(&app).await);
    }
    let (login_loaded, refresh_loaded) = normal_client(&app, 50).await;
    // They were all still held while the client was served.
    for conn in slow.iter_mut().step_by(97) {
        let (_, closed) = read_until_closed(conn, Duration::from_millis(20)).await;
        assert!(!closed, "a slow connection was dropped early");
    }
    let p = |t: &[Duration], q: f64| ms(t[((t.len() - 1) as f64 * q) as usize]);
    println!(
        "normal client, unloaded: login {:.1} ms, refresh p50 {:.2} ms p99 {:.2} ms; \
         with 1000 slow connections open: login {:.1} ms, refresh p50 {:.2} ms p99 {:.2} ms",
        ms(login_alone),
        p(&refresh_alone, 0.5),
        p(&refresh_alone, 0.99),
        ms(login_loaded),
        p(&refresh_loaded, 0.5),
        p(&refresh_loaded, 0.99),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_connection_cap_silent_connections_make_room_for_a_client() {
    // A long header timeout: only the cap's eviction can let the client in.
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_MAX_CONNECTIONS", "50"),
            // The whole cap for one address: the global eviction is what is tested.
            ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "50"),
            ("TESSERA_HEADER_READ_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    let (login, refreshes) = normal_client(&app, 3).await;
    assert_eq!((login > Duration::ZERO, refreshes.len()), (true, 3));

    let mut closed = Vec::new();
    for conn in &mut silent {
        closed.push(read_until_closed(conn, Duration::from_millis(50)).await.1);
    }
    let evicted = closed.iter().take_while(|c| **c).count();
    assert!(
        evicted >= 11 && closed[evicted..].iter().all(|c| !c),
        "the oldest silent connections make room (10 past the cap, 1 for the client), \
         and only they: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_every_connection_is_busy_a_new_one_gets_503_with_retry_after() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_MAX_CONNECTIONS", "2"),
            ("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "2"),
        ],
    )
    .await;
    let (id, secret) = crate::services::service_client(&app).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let stream = reqwest::Client::new()
            .get(app.url("/v1/revocations"))
            .basic_auth(&id, Some(&secret))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        streams.push(stream);
    }
    let mut raw = TcpStream::connect(addr(&app)).await.unwrap();
    let (seen, closed) = read_until_closed(&mut raw, Duration::from_secs(5)).await;
    assert!(
        seen.starts_with("HTTP/1.1 503") && seen.contains("retry-after: 1") && closed,
        "a connection past a full cap got {seen:?} (closed: {closed})"
    );
    let refused = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(s(&body, "error"), "temporarily_unavailable");

    // A stream ends: its slot is free again.
    streams.pop();
    let mut served = false;
    for _ in 0..50 {
        if app
            .client
            .get(app.url("/healthz"))
            .send()
            .await
            .map(|r| r.status())
            .ok()
            == Some(StatusCode::OK)
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the freed slot serves the next client");
}

/// A free loopback port for another listener.
pub async fn free_port() -> u16 {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    probe.local_addr().unwrap().port()
}

/// The `tessera` binary: cargo's, or `TESSERA_TEST_BINARY` where several work trees
/// share one target folder (cargo's path is the same for all of them).
fn server_binary() -> String {
    std::env::var("TESSERA_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").into())
}

/// The numbers: a process limited to 1,024 open files (soft and hard, so it
/// cannot raise it) and 1,100 half-sent headers. Before, the server ran out of
/// descriptors and stopped accepting anyone.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
// Alone, not amid the suite: with the whole suite loading both cores, the client's
// connection was reset in 3 of 3 full runs (it passes alone every time). `.ci/run` runs
// it right after the suite: `cargo test --test api -- --ignored at_a_1024`.
#[ignore = "run alone, after the suite (.ci/run does)"]
async fn at_a_1024_file_limit_1100_slow_connections_do_not_stop_the_server() {
    let _turn = crate::helpers::MANY_CONNECTIONS.lock().await;
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("prlimit (util-linux) is needed for this test");
    }
    let dir = temp_dir();
    let port = free_port().await;
    let mut server = std::process::Command::new("prlimit");
    server
        .args(["--nofile=1024:1024", "--"])
        .arg(server_binary())
        .arg("serve")
        .current_dir(&dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        server.env_remove(key);
    }
    let mut server = server
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        // The slow connections and the client share an address: the descriptor limit,
        // not the per-address share, is what is tested (with the share, the client can
        // arrive while its address's evictions are all in use, and be refused).
        .env("TESSERA_MAX_CONNECTIONS_PER_ADDRESS", "100000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // A client of its own for the start-up probe: the normal client below must not
    // reuse a connection opened before the slow ones.
    let probe = reqwest::Client::new();
    let mut up = false;
    for _ in 0..600 {
        if probe.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut slow = Vec::new();
    for _ in 0..1100 {
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)).await {
            let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: tessera\r\n").await;
            slow.push(conn);
        }
    }
    drop(probe);
    // Generous: on a loaded machine the kernel's backlog may drop the first SYN while
    // the server evicts slow connections; the client's retries must get through.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    // While the server is still evicting the burst of slow connections, a connection
    // that finds no eviction to make room is closed without an answer or
    // answered 503 + Retry-After (the cap's rule):
    // a client retries that, and what must hold is that its retries get through.
    let mut signup = Err(String::new());
    for _ in 0..20 {
        match client
            .post(format!("{base}/v1/signup"))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                signup = Ok(r.status());
            }
            Ok(r) => {
                signup = Ok(r.status());
                break;
            }
            Err(e) => signup = Err(format!("{e:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let login = client
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await;
    let login = match login {
        Ok(r) => Ok((
            r.status(),
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )),
        Err(e) => Err(e),
    };
    let refresh = match &login {
        Ok((_, tokens)) => client
            .post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", s(tokens, "refresh_token").as_str()),
            ])
            .send()
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string()),
        Err(_) => Err("no login, no refresh".to_owned()),
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(up, "the server did not start");
    assert_eq!(
        (
            signup,
            login.map(|l| l.0).map_err(|e| format!("{e:?}")),
            refresh
        ),
        (
            Ok(StatusCode::CREATED),
            Ok(StatusCode::OK),
            Ok(StatusCode::OK)
        ),
        "a normal client with {} slow connections open at a 1,024 file limit",
        slow.len()
    );
}
