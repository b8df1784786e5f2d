//! Issue 18 regression tests: edge. What an outsider can do with the operator's own
//! endpoints and with the answers' headers: flood `/readyz` into database writes, read
//! `/metrics` through a same-host proxy, forge log fields, have personal data cached.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::both_stores;
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, temp_dir};

/// A client whose connections come from `ip` (another loopback address than the
/// honest client's 127.0.0.1).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// How long readiness results are shared (the default of `readiness_cache_ms`).
const READINESS_CACHE: Duration = Duration::from_millis(1000);

/// Probes `path` from 127.0.0.1 `n` times: every status and the median latency.
async fn honest_probes(app: &TestApp, path: &str, n: usize) -> (Vec<StatusCode>, Duration) {
    let mut statuses = Vec::new();
    let mut took = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let status = app.client.get(app.url(path)).send().await.unwrap().status();
        took.push(started.elapsed());
        statuses.push(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.sort();
    (statuses, took[took.len() / 2])
}

/// 200 connections from 127.0.0.2 loop on `/readyz`; the orchestrator's probes from
/// 127.0.0.1 still answer 200, and the store sees a bounded number of readiness writes
/// (at most one per cache period), not one per request.
async fn a_readyz_flood_becomes_a_bounded_number_of_store_checks(backend: Backend) {
    let app = spawn_app(backend).await;
    assert!(app.wait_until_ready(Duration::from_secs(10)).await);
    let (quiet, quiet_latency) = honest_probes(&app, "/readyz", 10).await;
    assert!(quiet.iter().all(|s| *s == StatusCode::OK), "{quiet:?}");

    let checks_before = app.state.auth.metrics.readiness_checks.get();
    let started = Instant::now();
    let (tasks, per_task) = (200usize, 25usize);
    let url = app.url("/readyz");
    let flood: Vec<_> = (0..tasks)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let attacker = client_from("127.0.0.2");
                let mut answered = [0usize; 2];
                for _ in 0..per_task {
                    match attacker.get(&url).send().await.map(|r| r.status()) {
                        Ok(StatusCode::OK) => answered[0] += 1,
                        _ => answered[1] += 1,
                    }
                }
                answered
            })
        })
        .collect();
    let (during, flood_latency) = honest_probes(&app, "/readyz", 10).await;
    // The same flood's cost to a probe that never touches the store: what is left of
    // the slowdown is this process's CPU (flood and server share it), not readiness.
    let (_, healthz_latency) = honest_probes(&app, "/healthz", 10).await;
    let mut answered = [0usize; 2];
    for task in flood {
        let a = task.await.unwrap();
        answered[0] += a[0];
        answered[1] += a[1];
    }
    let elapsed = started.elapsed();
    let checks = app.state.auth.metrics.readiness_checks.get() - checks_before;
    let requests = tasks * per_task + during.len() + 10;
    println!(
        "readyz flood ({backend:?}): {requests} requests in {elapsed:?}, {checks} store checks; \
         flood answers 200: {}, other: {}; honest probe median {quiet_latency:?} quiet, \
         {flood_latency:?} during the flood (/healthz during the flood: {healthz_latency:?})",
        answered[0], answered[1]
    );
    assert!(
        during.iter().all(|s| *s == StatusCode::OK),
        "the orchestrator's probes during the flood: {during:?}"
    );
    let bound = elapsed.as_millis() / READINESS_CACHE.as_millis() + 2;
    assert!(
        u128::from(checks) <= bound,
        "{checks} store checks for {requests} requests in {elapsed:?} (at most {bound})"
    );
}

both_stores!(a_readyz_flood_becomes_a_bounded_number_of_store_checks);

/// Behind a same-host proxy (trusted as 127.0.0.1), every outside client arrives from
/// loopback: a request that came through the proxy needs the token like a remote one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_through_a_trusted_proxy_need_the_token() {
    let app = spawn_app_with(Backend::Sqlite, &[("TESSERA_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let get = |headers: &[(&str, &str)]| {
        let mut request = app.client.get(app.url("/metrics"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send()
    };
    // The peer is the trusted proxy: it may be relaying anyone, headers or not.
    let (status, body) = crate::helpers::json(get(&[]).await.unwrap()).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the proxy's own address: {body}"
    );
    let direct = spawn_app(Backend::Sqlite).await;
    let local = direct
        .client
        .get(direct.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        local.status(),
        StatusCode::OK,
        "a scraper on this machine, no proxy"
    );
    for forwarded in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
    ] {
        let (status, body) = crate::helpers::json(get(&[forwarded]).await.unwrap()).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{forwarded:?} through the proxy: {body}"
        );
        assert_eq!(body["error"], "metrics_local_only", "{body}");
    }

    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_TRUSTED_PROXIES", "127.0.0.1"),
            ("TESSERA_METRICS_TOKEN", "scrape-me"),
        ],
    )
    .await;
    let through = |token: Option<&str>| {
        let request = app
            .client
            .get(app.url("/metrics"))
            .header("x-forwarded-for", "203.0.113.7");
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
        .send()
    };
    assert_eq!(
        through(None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        through(Some("scrape-me")).await.unwrap().status(),
        StatusCode::OK
    );
}

/// A caller's request id is echoed and logged only when short and plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_only_when_short_and_plain() {
    let app = spawn_app(Backend::Sqlite).await;
    let echoed = |id: String| {
        let request = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", id);
        async move {
            let response = request.send().await.unwrap();
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    for plain in ["abc-123", "trace:01.ab_CD", &"a".repeat(64)] {
        assert_eq!(echoed(plain.to_owned()).await, plain);
    }
    for forged in [
        "abc method=DELETE path=/v1/admin/users user=root".to_owned(),
        "a\"b".to_owned(),
        "a".repeat(65),
        "ünïcode".to_owned(),
    ] {
        let id = echoed(forged.clone()).await;
        assert_ne!(id, forged);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a new id: {id}");
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// The real binary with text logs: a forged request id and a long path with quotes
/// come out as one quoted, bounded field each, never as fields of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_quote_and_bound_what_the_caller_sent() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = temp_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        cmd.env_remove(key);
    }
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    cmd.current_dir(&dir)
        .env(
            "TESSERA_DATABASE_URL",
            format!("sqlite://{}", dir.join("t.db").display()),
        )
        .env("TESSERA_LISTEN", &listen)
        .env("TESSERA_LOG", "info")
        .env("TESSERA_LOG_FORMAT", "text")
        .env("TESSERA_SECRET_KEY", &secret)
        .env("TESSERA_SHUTDOWN_DRAIN_SECS", "0")
        .arg("serve")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut server = Child(cmd.spawn().unwrap());
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forged_id = "abc method=DELETE user=root";
    let long_path = format!("/v1/\"quoted\"{}", "x".repeat(8000));
    // Raw: a client library would percent-encode the quotes.
    let mut stream = tokio::net::TcpStream::connect(&listen).await.unwrap();
    let head = format!(
        "GET {long_path} HTTP/1.1\r\nHost: tessera\r\nx-request-id: {forged_id}\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // The server writes its request line when the answer is sent; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = server.0.kill();
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("/v1/")).collect();
    assert!(!lines.is_empty(), "the request was logged: {log}");
    for line in lines {
        assert!(
            !line.contains("user=root"),
            "a forged field in the log: {line}"
        );
        assert!(
            line.len() < 1024,
            "the path is logged whole: {} bytes",
            line.len()
        );
        assert!(
            line.contains(r#"path="/v1/\"quoted\"xxx"#),
            "the path quoted and escaped: {line}"
        );
    }
}

/// Answers that carry a user's data are never stored by a cache; every answer says
/// `nosniff`; HSTS when the issuer is https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_answers_are_not_cacheable_and_carry_security_headers() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, user) = app.user_with_session().await;
    let (_, admin) = app.admin_session().await;
    let user_token = user["access_token"].as_str().unwrap();
    let admin_token = admin["access_token"].as_str().unwrap();
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    for (path, token) in [
        ("/v1/me", user_token),
        ("/v1/sessions", user_token),
        ("/v1/admin/users", admin_token),
        ("/v1/admin/audit", admin_token),
        ("/v1/admin/clients", admin_token),
        ("/v1/nothing-here", user_token),
        ("/healthz", user_token),
    ] {
        let r = app
            .client
            .get(app.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&r, "cache-control").as_deref(),
            Some("no-store"),
            "{path} ({})",
            r.status()
        );
        assert_eq!(
            header(&r, "x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header(&r, "strict-transport-security"), None, "http issuer");
    }
    let jwks = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert!(
        header(&jwks, "cache-control").is_some_and(|v| v.starts_with("public")),
        "the JWKS keeps its own caching"
    );
    assert_eq!(
        header(&jwks, "x-content-type-options").as_deref(),
        Some("nosniff")
    );

    let https = spawn_app_with(
        Backend::Sqlite,
        &[("TESSERA_ISSUER", "https://tessera.test")],
    )
    .await;
    let r = https
        .client
        .get(https.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "strict-transport-security").as_deref(),
        Some("max-age=31536000")
    );
}
