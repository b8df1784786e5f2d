//! What an operator relies on: throttling, outages answered with 503, limits,
//! metrics, request ids, CORS, graceful shutdown.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::both_stores;
use crate::helpers::{
    Backend, PASSWORD, TestApp, fresh_database, json, login_at, s, spawn_app, spawn_app_with,
    spawn_instance,
};

both_stores!(
    failed_logins_back_off_per_account_without_hashing,
    parallel_guesses_past_the_limit_get_one_try_per_window,
    attempts_are_limited_per_client_address,
    metrics_count_the_events_they_name,
    requests_carry_ids_and_limits_hold,
    cors_allows_only_configured_origins,
);

async fn metrics_text(app: &TestApp) -> String {
    app.text("/metrics").await
}

/// The value of a sample line `name{labels} value` (or `name value`).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const HASHES: &str = "tessera_argon2_queue_wait_seconds_count";
/// Where the tests' HTTP requests come from (no trusted proxy: the peer address).
const HOME: &str = "127.0.0.1";

async fn failed_logins_back_off_per_account_without_hashing(backend: Backend) {
    use tessera::auth::AuthError;
    let app = spawn_app(backend).await;
    app.signup("victim@example.com", PASSWORD).await;
    // At one simulated instant: the first backoff window is 2 s of the clock, shorter
    // than an argon2 run on a loaded machine, so over HTTP the attempt after it could
    // find the window over. (throttle.rs checks the HTTP 429 itself.)
    let at = tessera::http::extract::now();
    for _ in 0..5 {
        let result = login_at(
            &app.state.auth,
            "victim@example.com",
            "wrong password",
            HOME,
            at,
        )
        .await;
        assert!(
            matches!(result, Err(AuthError::InvalidGrant(_))),
            "{result:?}"
        );
    }
    // Past five failures, an attempt must claim a backoff window (2 s for the sixth):
    // the sixth goes ahead, and the attempt after it is refused unhashed, even with the
    // right password.
    let sixth = login_at(
        &app.state.auth,
        "victim@example.com",
        "wrong password",
        HOME,
        at,
    )
    .await;
    assert!(
        matches!(sixth, Err(AuthError::InvalidGrant(_))),
        "{sixth:?}"
    );
    let hashed = sample(&metrics_text(&app).await, HASHES);
    let seventh = login_at(&app.state.auth, "victim@example.com", PASSWORD, HOME, at).await;
    assert!(
        matches!(seventh, Err(AuthError::Throttled(2))),
        "{seventh:?}"
    );
    assert_eq!(
        sample(&metrics_text(&app).await, HASHES),
        hashed,
        "a throttled attempt costs no argon2 run"
    );
    assert_eq!(
        sample(
            &metrics_text(&app).await,
            "tessera_logins_total{outcome=\"throttled\"}"
        ),
        1.0
    );

    // Other accounts are untouched; the backoff is short, and success resets it.
    app.signup("bystander@example.com", PASSWORD).await;
    assert_eq!(
        app.login("bystander@example.com", PASSWORD).await.0,
        StatusCode::OK
    );
    // Past the backoff, the right password works.
    let later = login_at(
        &app.state.auth,
        "victim@example.com",
        PASSWORD,
        HOME,
        at + 3,
    )
    .await;
    assert!(later.is_ok(), "{later:?}");
    assert_eq!(
        app.login("victim@example.com", "wrong password").await.0,
        StatusCode::BAD_REQUEST,
        "counting starts over"
    );
    let backoffs = app
        .state
        .auth
        .store
        .audit_events(None, Some("login_backoff"), None, 10)
        .await
        .unwrap();
    // The sixth attempt and the one after its window each claimed a backoff window.
    assert_eq!(backoffs.len(), 2);

    // Off means off.
    let open = spawn_app_with(backend, &[("TESSERA_LOGIN_THROTTLE", "off")]).await;
    for _ in 0..8 {
        assert_eq!(
            open.login("nobody@example.com", "wrong password").await.0,
            StatusCode::BAD_REQUEST
        );
    }
}

async fn parallel_guesses_past_the_limit_get_one_try_per_window(backend: Backend) {
    use tessera::auth::AuthError;
    let app = spawn_app(backend).await;
    app.signup("target@example.com", PASSWORD).await;
    // One simulated instant for all of them: the race is for the window's claim in the
    // store, not against the clock (the window is 2 s, which a loaded machine can spend
    // before the last racer reaches the store).
    let at = tessera::http::extract::now();
    for _ in 0..5 {
        login_at(
            &app.state.auth,
            "target@example.com",
            "wrong password",
            HOME,
            at,
        )
        .await
        .unwrap_err();
    }
    let guesses = (0..8)
        .map(|_| {
            let auth = app.state.auth.clone();
            tokio::spawn(async move {
                login_at(&auth, "target@example.com", "wrong password", HOME, at).await
            })
        })
        .collect::<Vec<_>>();
    let mut results = Vec::new();
    for g in guesses {
        results.push(g.await.unwrap());
    }
    let hashed = results
        .iter()
        .filter(|r| matches!(r, Err(AuthError::InvalidGrant(_))))
        .count();
    assert_eq!(hashed, 1, "one guess hashed: {results:?}");
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(AuthError::Throttled(_))))
        .count();
    assert_eq!(refused, 7, "{results:?}");
}

async fn attempts_are_limited_per_client_address(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("TESSERA_LOGIN_ATTEMPTS_PER_ADDRESS", "3"),
            ("TESSERA_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let attempt = |xff: &'static str| {
        app.client
            .post(app.url("/oauth/token"))
            .header("x-forwarded-for", xff)
            .form(&[
                ("grant_type", "password"),
                ("username", "someone@example.com"),
                ("password", "whatever pw"),
            ])
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("198.51.100.7").await.unwrap().status(),
            StatusCode::BAD_REQUEST
        );
    }
    let refused = attempt("198.51.100.7").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    // Behind the trusted proxy, another client address has its own budget.
    assert_eq!(
        attempt("203.0.113.50").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // Without trusting the proxy, X-Forwarded-For is ignored: the socket address counts.
    let direct = spawn_app_with(backend, &[("TESSERA_LOGIN_ATTEMPTS_PER_ADDRESS", "2")]).await;
    for (i, xff) in ["1.1.1.1", "2.2.2.2", "3.3.3.3"].into_iter().enumerate() {
        let status = direct
            .client
            .post(direct.url("/oauth/token"))
            .header("x-forwarded-for", xff)
            .form(&[
                ("grant_type", "password"),
                ("username", "someone@example.com"),
                ("password", "whatever pw"),
            ])
            .send()
            .await
            .unwrap()
            .status();
        let want = if i < 2 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, want, "spoofed header {xff}");
    }
}

async fn metrics_count_the_events_they_name(backend: Backend) {
    let app = spawn_app_with(backend, &[("TESSERA_REFRESH_GRACE_SECS", "10")]).await;
    let (email, tokens) = app.user_with_session().await;
    app.login(&email, "wrong password").await;
    let (_, next) = app.refresh(&s(&tokens, "refresh_token")).await;
    app.refresh(&s(&tokens, "refresh_token")).await; // grace replay
    app.refresh(&s(&next, "refresh_token")).await; // spends the successor
    app.refresh(&s(&tokens, "refresh_token")).await; // now reuse: session revoked

    let text = metrics_text(&app).await;
    assert_eq!(sample(&text, "tessera_logins_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        sample(&text, "tessera_logins_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "tessera_refreshes_total{outcome=\"ok\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "tessera_refreshes_total{outcome=\"replayed_in_grace\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "tessera_refreshes_total{outcome=\"reuse_detected\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "tessera_revocations_total{reason=\"refresh_token_reuse\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "tessera_http_requests_total{route=\"/oauth/token\",method=\"POST\",status=\"200\"}"
        ),
        4.0
    );
    assert!(
        sample(
            &text,
            "tessera_http_request_duration_seconds_count{route=\"/oauth/token\"}"
        ) >= 6.0
    );
    assert!(text.contains("tessera_db_pool_connections{state=\"idle\"}"));
    assert!(sample(&text, HASHES) >= 3.0, "signup + two logins hashed");

    let guarded = spawn_app_with(backend, &[("TESSERA_METRICS_TOKEN", "scrape-me")]).await;
    assert_eq!(
        guarded
            .client
            .get(guarded.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = guarded
        .client
        .get(guarded.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

async fn requests_carry_ids_and_limits_hold(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "caller-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "caller-chose-this");

    let huge = "x".repeat(20_000);
    let (status, body) = json(
        app.client
            .get(app.url("/healthz"))
            .header("x-padding", huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, s(&body, "error")),
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large".into()
        )
    );
    let big_body = json!({"email": "big@example.com", "password": "x".repeat(70_000)});
    let (status, _) = json(
        app.client
            .post(app.url("/v1/signup"))
            .json(&big_body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = app.get("/v1/me", &"a".repeat(4097)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn cors_allows_only_configured_origins(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[("TESSERA_CORS_ALLOWED_ORIGINS", "https://app.example.com")],
    )
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/oauth/token"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        allowed.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let default = spawn_app(backend).await;
    let response = default
        .client
        .get(default.url("/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "nothing by default"
    );
}

/// A TCP relay to PostgreSQL that can be cut and restored: the store going away under
/// a running server. While cut, new connections are accepted and never answered (a
/// black hole, as a partitioned network looks), so a connect attempt hangs until the
/// caller's own timeout.
struct Relay {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    held: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, conns, target) = (up.clone(), connections.clone(), target.to_owned());
        let holding = held.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    holding.lock().unwrap().push(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        Self {
            port,
            up,
            connections,
            held,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_is_503_with_retry_after_and_recovers() {
    let direct = fresh_database(Backend::Postgres).await;
    let host_port = direct
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let relay = Relay::start(&host_port).await;
    let via_relay = direct.replacen(&host_port, &format!("127.0.0.1:{}", relay.port), 1);
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    // The pool's default 5 s acquire timeout: readiness must not wait for it.
    let app = spawn_instance(&via_relay, &secret, &[]).await;
    let (_, tokens) = app.user_with_session().await;

    relay.cut();
    let started = std::time::Instant::now();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().get("retry-after").is_some());
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4000),
        "readiness answers on its own 1 s timeout (with room for a loaded machine), not the pool's 5 s: {took:?}"
    );
    let refresh = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &s(&tokens, "refresh_token")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refresh.headers().get("retry-after").is_some());
    let (_, body) = json(refresh).await;
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered promptly, no hang"
    );
    // Verification needs no store: /v1/me needs it, the JWKS does not.
    assert_eq!(
        app.client
            .get(app.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    relay.restore();
    assert!(
        app.wait_until_ready(Duration::from_secs(5)).await,
        "ready again once the store is back"
    );
    let (status, _) = app.refresh(&s(&tokens, "refresh_token")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refresh token survived the outage unspent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_turns_readiness_off_first_and_finishes_in_flight_requests() {
    use sqlx::Connection;
    let mut app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_SHUTDOWN_DRAIN_SECS", "1"),
            // The login below waits on a write lock the test holds past the drain.
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "20000"),
            ("TESSERA_LOGIN_THROTTLE", "off"),
        ],
    )
    .await;
    app.signup("late@example.com", PASSWORD).await;
    let hashed = sample(&metrics_text(&app).await, HASHES);
    // The test holds SQLite's write lock: a login hashes its password, then waits to
    // write its session, in flight until the test lets go.
    let mut holder = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let in_flight = {
        let (client, url) = (app.client.clone(), app.url("/oauth/token"));
        tokio::spawn(async move {
            client
                .post(url)
                .form(&[
                    ("grant_type", "password"),
                    ("username", "late@example.com"),
                    ("password", PASSWORD),
                ])
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let mut arrived = false;
    for _ in 0..600 {
        if sample(&metrics_text(&app).await, HASHES) > hashed {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(arrived, "the login reached the server and hashed");

    app.shut_down();
    let mut draining = false;
    for _ in 0..100 {
        if app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::SERVICE_UNAVAILABLE
        {
            draining = true;
            break;
        }
    }
    assert!(
        draining,
        "readiness turned 503 while the listener still answers"
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "alive while draining"
    );
    // Past the drain the listener closes, with the login still waiting.
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut closed = false;
    for _ in 0..600 {
        if TcpStream::connect(&address).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the listener closed after the drain");
    assert!(!in_flight.is_finished(), "the login is still in flight");
    assert!(
        !app.running.is_finished(),
        "the server waits for the request in flight"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        StatusCode::OK,
        "the request in flight when the listener closed was finished"
    );
    tokio::time::timeout(Duration::from_secs(30), &mut app.running)
        .await
        .expect("the server stops once its last request is answered")
        .unwrap();
}
