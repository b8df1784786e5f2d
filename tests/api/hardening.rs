//! Issue 18 regression tests: hardening. DPoP keys that prove nothing (small-order
//! Ed25519 points), who may introspect what, and the configuration traps an operator
//! falls into (an issuer taken from a public listener, unchecked TLS to PostgreSQL, a
//! trusted-proxy range that trusts the internet).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both_stores;
use crate::dpop::token_with;
use crate::helpers::*;

both_stores!(
    a_small_order_ed25519_key_is_refused,
    refresh_tokens_are_introspected_only_by_their_client,
    access_tokens_are_introspected_by_the_audiences_services,
);

/// A "proof" under the identity point's key: `x = 01 00..00`, signature `R = identity`,
/// `s = 0`. `s·B = R + h·A` holds for any message, so it verifies with no private key.
fn forged_identity_proof() -> String {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let header = json!({
        "typ": "dpop+jwt", "alg": "EdDSA",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(identity)},
    });
    let claims = json!({
        "jti": Uuid::new_v4().to_string(), "htm": "POST",
        "htu": "http://tessera.test/oauth/token", "iat": tessera::http::extract::now(),
    });
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&identity);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn a_small_order_ed25519_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let form = [
        ("grant_type", "password"),
        ("username", email.as_str()),
        ("password", PASSWORD),
    ];
    let answer = token_with(&app, &form, &[&forged_identity_proof()]).await;
    assert_eq!(
        (answer.status, answer.body["error"].clone()),
        (StatusCode::BAD_REQUEST, Value::from("invalid_dpop_proof")),
        "a session bound to the identity key: {}",
        answer.body
    );
}

/// POST /oauth/introspect as `client`.
async fn introspect(app: &TestApp, client: &(String, String), token: &str) -> Value {
    let (status, body) = json(
        app.client
            .post(app.url("/oauth/introspect"))
            .basic_auth(&client.0, Some(&client.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A confidential client, and a user's session logged in through it (password grant
/// with the client's secret): its token response.
async fn confidential_session(app: &TestApp) -> ((String, String), Value) {
    let client = crate::services::service_client(app).await;
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    assert_eq!(app.signup(&email, PASSWORD).await.0, StatusCode::CREATED);
    let (status, tokens) = json(
        app.client
            .post(app.url("/oauth/token"))
            .basic_auth(&client.0, Some(&client.1))
            .form(&[
                ("grant_type", "password"),
                ("username", email.as_str()),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    (client, tokens)
}

async fn refresh_tokens_are_introspected_only_by_their_client(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner, tokens) = confidential_session(&app).await;
    let other = crate::services::service_client(&app).await;
    let refresh = s(&tokens, "refresh_token");

    // Its own client learns it is live, and whose it is.
    let mine = introspect(&app, &owner, &refresh).await;
    assert_eq!(
        (&mine["active"], &mine["token_type"], &mine["client_id"]),
        (&json!(true), &json!("refresh_token"), &json!(owner.0)),
        "{mine}"
    );
    // Its life, as its own client sees it: rotated, the old one is inactive and the
    // new one active; after a logout, inactive.
    let (status, next) = json(
        app.client
            .post(app.url("/oauth/token"))
            .basic_auth(&owner.0, Some(&owner.1))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let successor = s(&next, "refresh_token");
    assert_eq!(
        introspect(&app, &owner, &refresh).await,
        json!({"active": false})
    );
    let live = introspect(&app, &owner, &successor).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["sid"], mine["sid"], "{live}");

    // Any other client, a service of the same audience included, learns nothing:
    // not that it is live, nor the user. A refresh token is never shown to a resource
    // server (RFC 6749 §10.4); one that has it holds a stolen credential.
    assert_eq!(
        introspect(&app, &other, &refresh).await,
        json!({"active": false}),
        "another client's refresh token"
    );
    // The same for the first-party app's refresh tokens: no confidential client is
    // the public client `app`.
    let (_, app_tokens) = app.user_with_session().await;
    assert_eq!(
        introspect(&app, &other, &s(&app_tokens, "refresh_token")).await,
        json!({"active": false}),
        "the app's refresh token, asked by a service"
    );
    assert_eq!(
        introspect(&app, &other, &successor).await,
        json!({"active": false})
    );
    assert_eq!(
        app.logout(&s(&next, "access_token")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        introspect(&app, &owner, &successor).await,
        json!({"active": false}),
        "after the logout"
    );
}

async fn access_tokens_are_introspected_by_the_audiences_services(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner, tokens) = confidential_session(&app).await;
    let service = crate::services::service_client(&app).await;
    let access = s(&tokens, "access_token");
    let (email, app_tokens) = app.user_with_session().await;
    let app_access = s(&app_tokens, "access_token");

    // An access token's `aud` is this server's audience, which every confidential
    // client (a backend the token is presented to) serves: its own client and the
    // services both get the answer, as backends do today.
    for (asker, token, client_id) in [
        (&owner, &access, owner.0.as_str()),
        (&service, &access, owner.0.as_str()),
        (&service, &app_access, "app"),
    ] {
        let answer = introspect(&app, asker, token).await;
        assert_eq!(
            (&answer["active"], &answer["client_id"]),
            (&json!(true), &json!(client_id)),
            "{answer}"
        );
        assert_eq!(answer["aud"], ISSUER, "{answer}");
    }
    assert_eq!(
        introspect(&app, &service, &app_access).await["username"],
        email.as_str()
    );
    // (A token for another `aud` is inactive to everyone: tests/api/hostile.rs.)
}

/// `tessera serve` with only `env` (no TESSERA_* from the test's own environment), in
/// a fresh folder: its exit status (`None`: still running after `wait`, then killed)
/// and its log (stderr).
fn serve(env: &[(&str, &str)], wait: Duration) -> (Option<std::process::ExitStatus>, String) {
    serve_in(&temp_dir(), env, wait)
}

fn serve_in(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    wait: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        cmd.env_remove(key);
    }
    let mut child = cmd
        .arg("serve")
        .current_dir(dir)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut status = None;
    while Instant::now() < deadline {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// With no `issuer`, `iss` would be the listener's address: on 0.0.0.0 (the image's
/// listener) every token would say `http://0.0.0.0:8080`.
#[test]
fn a_public_listener_without_an_issuer_refuses_to_start() {
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let metrics = ("TESSERA_METRICS_LISTEN", "127.0.0.1:0");
    let (status, log) = serve(
        &[("TESSERA_LISTEN", &listen), metrics],
        Duration::from_secs(20),
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "it must exit with an error, not serve (status {status:?}): {log}"
    );
    assert!(
        log.contains("TESSERA_ISSUER"),
        "the message names the key: {log}"
    );
    // With the issuer set, the same listener serves.
    let (status, log) = serve(
        &[
            ("TESSERA_LISTEN", &listen),
            ("TESSERA_ISSUER", "https://auth.example.com"),
            metrics,
        ],
        Duration::from_secs(3),
    );
    assert!(status.is_none(), "it serves with an issuer: {log}");
    // A loopback listener (`cargo run`, zero setup) still takes its issuer from it.
    let loopback = format!("127.0.0.1:{}", free_port());
    let (status, log) = serve(&[("TESSERA_LISTEN", &loopback)], Duration::from_secs(3));
    assert!(status.is_none(), "loopback serves with no issuer: {log}");
}

/// A warning that must appear once, naming `key` and `value`.
fn warned_once(log: &str, key: &str, value: &str) -> bool {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(key) && l.contains("WARN"))
        .collect();
    lines.len() == 1 && lines[0].contains(value)
}

#[test]
fn a_trusted_proxy_range_that_covers_the_internet_is_warned_about() {
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, log) = serve(
        &[
            ("TESSERA_LISTEN", &listen),
            (
                "TESSERA_TRUSTED_PROXIES",
                "10.0.0.0/8, 0.0.0.0/0, fd00::/8, ::/0",
            ),
        ],
        Duration::from_secs(3),
    );
    assert!(status.is_none(), "it still serves: {log}");
    assert!(
        warned_once(&log, "TESSERA_TRUSTED_PROXIES", "0.0.0.0/0") && log.contains("::/0"),
        "warned once, naming the key and the ranges: {log}"
    );
    let warning = log
        .lines()
        .find(|l| l.contains("TESSERA_TRUSTED_PROXIES"))
        .unwrap_or("");
    assert!(
        !warning.contains("10.0.0.0/8") && !warning.contains("fd00::/8"),
        "private ranges are not named: {warning}"
    );
    // Private, loopback and link-local ranges, and one public address (a load
    // balancer's), are no warning.
    let (_, quiet) = serve(
        &[
            ("TESSERA_LISTEN", &format!("127.0.0.1:{}", free_port())),
            (
                "TESSERA_TRUSTED_PROXIES",
                "127.0.0.1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, ::1, fc00::/7, fe80::/10, 203.0.113.7",
            ),
        ],
        Duration::from_secs(3),
    );
    assert!(
        !quiet.contains("TESSERA_TRUSTED_PROXIES"),
        "no warning for internal ranges: {quiet}"
    );
}

/// `sslmode` left out is `prefer`: encrypted, with nobody's certificate checked.
#[test]
fn unverified_tls_to_a_remote_database_is_warned_about() {
    let key = tessera::tokens::keys::SecretKey::generate().to_base64();
    let run = |url: &str| {
        serve(
            &[
                ("TESSERA_LISTEN", "127.0.0.1:0"),
                ("TESSERA_DATABASE_URL", url),
                ("TESSERA_SECRET_KEY", &key),
                ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ],
            Duration::from_secs(20),
        )
        .1
    };
    // db.invalid never resolves: the server stops at the connection, after the check.
    for (url, mode) in [
        ("postgres://tessera@db.invalid/tessera", "prefer"),
        (
            "postgres://tessera@db.invalid/tessera?sslmode=require",
            "require",
        ),
        (
            "postgres://tessera@db.invalid/tessera?sslmode=disable",
            "disable",
        ),
    ] {
        let log = run(url);
        assert!(
            warned_once(&log, "TESSERA_DATABASE_URL", mode) && log.contains("verify-full"),
            "{url}: {log}"
        );
    }
    for url in [
        "postgres://tessera@db.invalid/tessera?sslmode=verify-full",
        "postgres://postgres@127.0.0.1:5432/postgres",
        "postgres://postgres@localhost/postgres?sslmode=disable",
    ] {
        let log = run(url);
        assert!(
            !log.lines()
                .any(|l| l.contains("WARN") && l.contains("sslmode")),
            "{url}: no warning: {log}"
        );
    }
}

/// The generated key can live apart from the database (the image keeps it in the
/// /keys volume); a key already beside the database is still used, with a warning.
#[test]
fn the_generated_secret_key_can_be_kept_apart_from_the_database() {
    let dir = temp_dir();
    let apart = dir.join("keys/secret.key");
    let apart_text = apart.display().to_string();
    let env = [
        ("TESSERA_LISTEN", "127.0.0.1:0"),
        ("TESSERA_SECRET_KEY_PATH", apart_text.as_str()),
    ];
    let (status, log) = serve_in(&dir, &env, Duration::from_secs(3));
    assert!(status.is_none(), "{log}");
    assert!(
        apart.exists(),
        "generated at TESSERA_SECRET_KEY_PATH: {log}"
    );
    assert!(dir.join("data/tessera.db").exists());
    assert!(
        !dir.join("data/secret.key").exists(),
        "not beside the database"
    );
    // Restarted, it reads the same key (the signing keys decrypt: it serves).
    let (status, log) = serve_in(&dir, &env, Duration::from_secs(3));
    assert!(status.is_none(), "{log}");

    // An older layout: the key beside the database, the new path empty.
    let old = temp_dir();
    let (status, log) = serve_in(&old, &env[..1], Duration::from_secs(3));
    assert!(
        status.is_none() && old.join("data/secret.key").exists(),
        "{log}"
    );
    let elsewhere = old.join("keys/secret.key").display().to_string();
    let (status, log) = serve_in(
        &old,
        &[env[0], ("TESSERA_SECRET_KEY_PATH", elsewhere.as_str())],
        Duration::from_secs(3),
    );
    assert!(status.is_none(), "still serves with the old key: {log}");
    assert!(
        warned_once(&log, "TESSERA_SECRET_KEY_PATH", "beside the database"),
        "{log}"
    );
    assert!(!old.join("keys/secret.key").exists(), "no second key made");
}
