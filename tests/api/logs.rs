//! The real binary with debug logs on: a full login / refresh / replay / introspect /
//! revoke / admin cycle, then every secret it handled is searched for in the output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, temp_dir};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn tessera(dir: &std::path::Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        cmd.env_remove(key);
    }
    cmd.current_dir(dir).env(
        "TESSERA_DATABASE_URL",
        format!("sqlite://{}", dir.join("t.db").display()),
    );
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the cycle against a server started with `log_format`; returns its log and the
/// secrets it saw.
async fn cycle(log_format: &str) -> (String, Vec<String>) {
    let dir = temp_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let secret_key = tessera::tokens::keys::SecretKey::generate().to_base64();
    let envs = [
        ("TESSERA_LISTEN", listen.as_str()),
        ("TESSERA_LOG", "debug"),
        ("TESSERA_LOG_FORMAT", log_format),
        ("TESSERA_SECRET_KEY", secret_key.as_str()),
        ("TESSERA_SHUTDOWN_DRAIN_SECS", "0"),
    ];
    // An admin and a service client, made the way an operator makes them.
    let mut create = tessera(&dir, &envs)
        .args([
            "user",
            "create",
            "--email",
            "root@example.com",
            "--admin",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut create.stdin.take().unwrap(),
        format!("{PASSWORD}\n").as_bytes(),
    )
    .unwrap();
    let mut log = String::new();
    create
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(create.wait().unwrap().success(), "{log}");
    let out = tessera(&dir, &envs)
        .args(["client", "create", "--name", "svc", "--confidential"])
        .output()
        .unwrap();
    log.push_str(&String::from_utf8_lossy(&out.stderr));
    let client: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (client_id, client_secret) = (
        client["client_id"].as_str().unwrap().to_owned(),
        client["client_secret"].as_str().unwrap().to_owned(),
    );

    let mut server = Child(
        tessera(&dir, &envs)
            .arg("serve")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut secrets = vec![
        PASSWORD.to_owned(),
        "wrong password 123".to_owned(),
        client_secret.clone(),
        secret_key.clone(),
    ];
    let post = |path: &str, form: Vec<(&str, String)>| {
        http.post(format!("{base}{path}")).form(&form).send()
    };
    http.post(format!("{base}/v1/signup"))
        .json(&json!({"email": "alice@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    post(
        "/oauth/token",
        vec![
            ("grant_type", "password".into()),
            ("username", "alice@example.com".into()),
            ("password", "wrong password 123".into()),
        ],
    )
    .await
    .unwrap();
    let login: Value = post(
        "/oauth/token",
        vec![
            ("grant_type", "password".into()),
            ("username", "alice@example.com".into()),
            ("password", PASSWORD.into()),
        ],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let next: Value = post(
        "/oauth/token",
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh.clone()),
        ],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let replay: Value = post(
        "/oauth/token",
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh.clone()),
        ],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(replay["refresh_token"], next["refresh_token"]);
    let access = next["access_token"].as_str().unwrap().to_owned();
    let introspected = http
        .post(format!("{base}/oauth/introspect"))
        .basic_auth(&client_id, Some(&client_secret))
        .form(&[("token", &access)])
        .send()
        .await
        .unwrap();
    assert_eq!(introspected.status(), StatusCode::OK);
    http.get(format!("{base}/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    let admin: Value = post(
        "/oauth/token",
        vec![
            ("grant_type", "password".into()),
            ("username", "root@example.com".into()),
            ("password", PASSWORD.into()),
        ],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let admin_access = admin["access_token"].as_str().unwrap().to_owned();
    http.get(format!("{base}/v1/admin/audit"))
        .bearer_auth(&admin_access)
        .send()
        .await
        .unwrap();
    post(
        "/oauth/revoke",
        vec![("token", next["refresh_token"].as_str().unwrap().to_owned())],
    )
    .await
    .unwrap();
    // Reuse after the revocation, and a bad bearer token: error paths log too.
    post(
        "/oauth/token",
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh.clone()),
        ],
    )
    .await
    .unwrap();
    http.get(format!("{base}/v1/me"))
        .bearer_auth(format!("{access}x"))
        .send()
        .await
        .unwrap();

    for v in [&login, &next, &admin] {
        secrets.push(v["access_token"].as_str().unwrap().to_owned());
        secrets.push(v["refresh_token"].as_str().unwrap().to_owned());
    }
    let _ = server.0.kill();
    let mut server_log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut server_log)
        .unwrap();
    log.push_str(&server_log);
    (log, secrets)
}

fn scan(log: &str, secrets: &[String]) {
    assert!(
        log.lines().count() > 20,
        "debug logging was on: {} lines",
        log.lines().count()
    );
    for secret in secrets {
        // Whole secrets, and any 16-character piece of one (e.g. a JWT's signature).
        let pieces: Vec<&str> = (0..secret.len().saturating_sub(16))
            .step_by(8)
            .map(|i| &secret[i..i + 16])
            .collect();
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
        for piece in pieces {
            assert!(
                !log.contains(piece),
                "part of a secret reached the log: {piece}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_in_text_format() {
    let (log, secrets) = cycle("text").await;
    scan(&log, &secrets);
    assert!(
        log.contains("request_id="),
        "every request's lines carry its id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_in_json_format() {
    let (log, secrets) = cycle("json").await;
    scan(&log, &secrets);
    let request_lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["name"] == "request")
        .collect();
    assert!(
        !request_lines.is_empty(),
        "JSON lines with the request span"
    );
    assert!(request_lines.iter().all(|v| {
        v["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    }));
}
