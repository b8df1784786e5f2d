//! Load benchmark: a real server on loopback against a fresh PostgreSQL database,
//! refresh chains at several concurrencies, side by side with the limit they stand on,
//! the one-statement rotation through sqlx at the same concurrency with no HTTP.
//!
//! Also: login against argon2 on every core, refresh latency during a login flood,
//! login latency during a sign-up flood from another address (`signup_flood/`),
//! introspection, JWKS, `/v1/me`, and the server's memory.
//!
//! Also the verifier beside raw `jsonwebtoken::decode`. It ends with every target of
//! the benchmark issue, checked against the limit measured beside it in the same run.
//!
//! `cargo bench --bench load` (env: TESSERA_BENCH_DATABASE_URL = an admin URL of a
//! PostgreSQL server, default postgres://postgres@127.0.0.1:5432/postgres;
//! TESSERA_BENCH_SECS, default 8; TESSERA_BENCH_CONCURRENCY, default "16,32";
//! TESSERA_BENCH_POOL, the database pool of the server and of the sqlx limit, default
//! the highest concurrency; TESSERA_BENCH_SCENARIOS, default
//! "refresh,dpop,login,flood,signup_flood,services,verify"). Other TESSERA_* variables
//! reach the server.
//!
//! `dpop`: refresh chains bound to DPoP keys beside bearer ones in the same run, the
//! ratio checked against the DPoP issue's target (>= 0.8x).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

mod common;
mod signup_flood;
use tessera::store::{AuditEvent, Rotation, Session, Store};
use tessera::tokens::refresh::{Presented, RefreshMac, RefreshToken};
use uuid::Uuid;

#[derive(Default)]
struct Run {
    ops: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    /// Adds another run of the same scenario (its time and its requests).
    fn absorb(&mut self, other: Run) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
    }

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
        let t = new_user_session(client, base, None).await;
        out.push(t["refresh_token"].as_str().unwrap().to_owned());
    }
    out
}

/// Signs up a new user and logs in (with a DPoP proof by `signer`, if any): the token
/// response.
async fn new_user_session(
    client: &reqwest::Client,
    base: &str,
    signer: Option<&common::DpopSigner>,
) -> serde_json::Value {
    let email = format!("{}@bench.test", Uuid::new_v4().simple());
    let password = "benchmark password";
    let url = format!("{base}/oauth/token");
    client
        .post(format!("{base}/v1/signup"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let mut login = client.post(&url).form(&[
        ("grant_type", "password"),
        ("username", &email),
        ("password", password),
    ]);
    if let Some(signer) = signer {
        login = login.header("DPoP", signer.proof("POST", &url, None));
    }
    login.send().await.unwrap().json().await.unwrap()
}

/// One call of the token endpoint, which must answer 200.
async fn token_grant(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let response = client.post(url).form(form).send().await.unwrap();
    assert_eq!(response.status(), 200, "{} failed", form[0].1);
    response
}

async fn http_refresh_chains(client: &reqwest::Client, base: &str, c: usize, secs: u64) -> Run {
    let tokens = sessions(client, base, c).await;
    let states: Vec<_> = tokens
        .into_iter()
        .map(|t| (client.clone(), format!("{base}/oauth/token"), t))
        .collect();
    drive(states, secs, |(client, url, token)| async move {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token.as_str()),
        ];
        let body: serde_json::Value = token_grant(&client, &url, &form)
            .await
            .json()
            .await
            .unwrap();
        (
            client,
            url,
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    })
    .await
}

/// Refresh chains bound to DPoP keys (ES256, one per chain, as the browser client's):
/// every refresh carries a fresh proof. `presigned`: each chain's proofs are signed
/// before the clock starts (this many per chain), so the run measures the server, whose
/// CPU a real client's signing does not share; else each proof is signed in the loop,
/// on this machine's same two cores.
async fn dpop_refresh_chains(
    client: &reqwest::Client,
    base: &str,
    c: usize,
    secs: u64,
    presigned: usize,
) -> Run {
    let url = format!("{base}/oauth/token");
    let mut states = Vec::new();
    for _ in 0..c {
        let signer = Arc::new(common::DpopSigner::new("ES256"));
        let t = new_user_session(client, base, Some(&signer)).await;
        assert_eq!(t["token_type"], "DPoP", "{t}");
        let token = t["refresh_token"].as_str().unwrap().to_owned();
        states.push((client.clone(), url.clone(), token, signer, Vec::new()));
    }
    for (_, url, _, signer, proofs) in &mut states {
        *proofs = (0..presigned)
            .map(|_| signer.proof("POST", url, None))
            .collect::<Vec<String>>();
    }
    drive(
        states,
        secs,
        |(client, url, token, signer, mut proofs)| async move {
            let proof = proofs
                .pop()
                .unwrap_or_else(|| signer.proof("POST", &url, None));
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", token.as_str()),
            ];
            let response = client
                .post(&url)
                .header("DPoP", proof)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "DPoP refresh failed");
            let body: serde_json::Value = response.json().await.unwrap();
            let next = body["refresh_token"].as_str().unwrap().to_owned();
            (client, url, next, signer, proofs)
        },
    )
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
            dpop_jkt: None,
        };
        let mac = RefreshMac::new(&[7; 32]);
        let token = RefreshToken::issue(&mac, session.id, 1);
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
        states.push((store.clone(), mac, session.id, 1, token.hash()));
    }
    drive(
        states,
        secs,
        move |(store, mac, session_id, generation, hash)| async move {
            let successor = RefreshToken::issue(&mac, session_id, generation + 1).hash();
            let rotation = Rotation {
                parent: Presented::Session {
                    session_id,
                    generation,
                    hash,
                },
                successor,
                sealed_successor: vec![0; 75],
                now,
                ttl_secs: 86_400,
                client_id: Some("app".into()),
                authenticated: false,
                scope: None,
                caller_ip: Some("127.0.0.1".into()),
                caller_agent: Some(0x7e55_e7a0),
                dpop_jkt: None,
                proof: None,
            };
            assert!(
                matches!(
                    store.rotate(&rotation).await.unwrap(),
                    tessera::store::Rotate::Rotated(_)
                ),
                "rotation failed"
            );
            (store, mac, session_id, generation + 1, successor)
        },
    )
    .await
}

/// The real binary, as production runs it, on a free loopback port.
struct ServerProcess {
    child: std::process::Child,
    base: String,
}

impl ServerProcess {
    fn rss_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// `extra` environment variables override the defaults set here.
async fn start_server(url: &str, secret: &str, pool: u32, extra: &[(&str, &str)]) -> ServerProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_DATABASE_URL", url)
        .env("TESSERA_SECRET_KEY", secret)
        .env("TESSERA_LOG", "warn")
        .env("TESSERA_LOGIN_THROTTLE", "off")
        .env("TESSERA_PASSWORD_HASH_QUEUE_TIMEOUT_MS", "30000")
        .env("TESSERA_DATABASE_MAX_CONNECTIONS", pool.to_string())
        .envs(extra.iter().copied())
        .spawn()
        .unwrap();
    let server = ServerProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not start");
}

/// argon2id at the server's parameters on every core, each thread reusing its memory
/// (the fastest way to run it): the login limit.
fn argon2_limit(secs: u64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let mut hasher = common::Argon2Hasher::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    std::hint::black_box(hasher.hash());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

async fn login_loop(client: &reqwest::Client, base: &str, emails: Vec<String>, secs: u64) -> Run {
    let states: Vec<_> = emails
        .into_iter()
        .map(|e| (client.clone(), format!("{base}/oauth/token"), e))
        .collect();
    drive(states, secs, |(client, url, email)| async move {
        let form = [
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", "benchmark password"),
        ];
        let _ = token_grant(&client, &url, &form).await.bytes().await;
        (client, url, email)
    })
    .await
}

/// `c` clients calling one request builder in a loop.
async fn request_loop(
    c: usize,
    secs: u64,
    make: fn(&reqwest::Client, &str, &str) -> reqwest::RequestBuilder,
    client: &reqwest::Client,
    base: &str,
    arg: &str,
) -> Run {
    let states: Vec<_> = (0..c)
        .map(|_| (client.clone(), base.to_owned(), arg.to_owned()))
        .collect();
    drive(states, secs, move |(client, base, arg)| async move {
        let response = make(&client, &base, &arg).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        let _ = response.bytes().await;
        (client, base, arg)
    })
    .await
}

fn row(name: &str, c: usize, run: &mut Run, limit: Option<(&str, f64)>) {
    let (limit_name, ratio) = match limit {
        Some((n, l)) => (format!("{n} {l:.0}/s"), format!("{:.2}", run.rate() / l)),
        None => ("-".to_owned(), "-".to_owned()),
    };
    println!(
        "| {name} | {c} | {:.0} | {:.2} | {:.2} | {:.2} | {limit_name} | {ratio} |",
        run.rate(),
        run.pct(0.50),
        run.pct(0.90),
        run.pct(0.99)
    );
}

#[tokio::main]
async fn main() {
    let admin_url = env(
        "TESSERA_BENCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let secs: u64 = env("TESSERA_BENCH_SECS", "8").parse().unwrap();
    let levels: Vec<usize> = env("TESSERA_BENCH_CONCURRENCY", "16,32")
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    let max_c = levels.iter().copied().max().unwrap_or(32) as u32;
    let pool: u32 = env("TESSERA_BENCH_POOL", &max_c.to_string())
        .parse()
        .unwrap();
    let scenarios = env(
        "TESSERA_BENCH_SCENARIOS",
        "refresh,dpop,login,flood,signup_flood,services,verify",
    );
    let on = |name: &str| scenarios.split(',').any(|s| s.trim() == name);

    let url = fresh_database(&admin_url).await;
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let server = start_server(&url, &secret, pool, &[]).await;
    let base = server.base.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = server.rss_kib("VmRSS:");
    let store = tessera::store::connect(&url, tessera::store::PoolSettings::new(pool))
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // Users: one per login client, and one to own the sqlx-only sessions.
    let mut emails = Vec::new();
    for i in 0..16 {
        let email = format!("login{i}@bench.test");
        client
            .post(format!("{base}/v1/signup"))
            .json(&serde_json::json!({"email": email, "password": "benchmark password"}))
            .send()
            .await
            .unwrap();
        emails.push(email);
    }
    let login: serde_json::Value = client
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", emails[0].as_str()),
            ("password", "benchmark password"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let me: serde_json::Value = client
        .get(format!("{base}/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id: Uuid = me["id"].as_str().unwrap().parse().unwrap();
    let service = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["client", "create", "--name", "bench", "--confidential"])
            .env("TESSERA_DATABASE_URL", &url)
            .env("TESSERA_SECRET_KEY", &secret)
            .env("TESSERA_LOG", "warn")
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let basic = format!(
        "{}:{}",
        service["client_id"].as_str().unwrap(),
        service["client_secret"].as_str().unwrap()
    );

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "Tessera load benchmark: {secs} s per run, {cores} cores, PostgreSQL on the same host, server = release binary"
    );
    println!();
    println!("| scenario | c | req/s | p50 ms | p90 ms | p99 ms | limit | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    // Each target, checked against the limit measured beside it in this run.
    let mut targets: Vec<String> = Vec::new();
    let mut verdict = |name: String, met: bool| {
        targets.push(format!("{name}: {}", if met { "met" } else { "MISSED" }));
    };
    for &c in levels.iter().filter(|_| on("refresh")) {
        let mut limit = sqlx_rotate_chains(store.clone(), user_id, c, secs).await;
        let mut http = http_refresh_chains(&client, &base, c, secs).await;
        row("sqlx one-statement rotate (limit)", c, &mut limit, None);
        row(
            "refresh chains (HTTP, all rules)",
            c,
            &mut http,
            Some(("sqlx rotate", limit.rate())),
        );
        let ratio = http.rate() / limit.rate();
        verdict(
            format!("refresh >= 0.5x the sqlx rotate at c={c}: {ratio:.2}x"),
            ratio >= 0.5,
        );
        if c == 32 {
            verdict(
                format!(
                    "refresh p99 <= 15 ms at c=32: {:.2} ms (the sqlx rotate alone, no HTTP: {:.2} ms)",
                    http.pct(0.99),
                    limit.pct(0.99)
                ),
                http.pct(0.99) <= 15.0,
            );
        }
    }

    for &c in levels.iter().filter(|_| on("dpop")) {
        // Bearer refresh chains half before and half after the DPoP ones, so drift on a
        // shared machine lands on both sides of the ratio.
        let half = secs.div_ceil(2);
        let mut bearer = http_refresh_chains(&client, &base, c, half).await;
        // Enough proofs for each chain to outrun the bearer rate by half again.
        let per_chain = (bearer.rate() * secs as f64 / c as f64 * 1.5) as usize + 64;
        let mut dpop = dpop_refresh_chains(&client, &base, c, secs, per_chain).await;
        bearer.absorb(http_refresh_chains(&client, &base, c, half).await);
        let mut inline = dpop_refresh_chains(&client, &base, c, secs, 0).await;
        row("bearer refresh chains", c, &mut bearer, None);
        row(
            "DPoP refresh chains (ES256 proofs signed beforehand)",
            c,
            &mut dpop,
            Some(("bearer refresh", bearer.rate())),
        );
        row(
            "DPoP refresh chains (each proof signed in the loop, same cores)",
            c,
            &mut inline,
            Some(("bearer refresh", bearer.rate())),
        );
        let ratio = dpop.rate() / bearer.rate();
        verdict(
            format!(
                "DPoP refresh >= 0.8x bearer refresh at c={c}: {ratio:.2}x (with the client's signing on the same cores: {:.2}x)",
                inline.rate() / bearer.rate()
            ),
            ratio >= 0.8,
        );
    }

    // The argon2 limit just before and just after the logins (half the time each), so
    // drift in a shared machine's speed lands on both sides of the ratio alike.
    let half = secs.div_ceil(2);
    let mut argon2 = 0.0;
    let mut logins = Run::default();
    if on("login") || on("flood") {
        argon2 = argon2_limit(half);
    }
    if on("login") {
        logins = login_loop(&client, &base, emails.clone(), secs).await;
        argon2 = (argon2 + argon2_limit(half)) / 2.0;
    }
    if on("login") {
        row(
            "login (password grant)",
            16,
            &mut logins,
            Some(("argon2 on all cores", argon2)),
        );
        let ratio = logins.rate() / argon2;
        verdict(
            format!("login >= 0.9x argon2 on all cores: {ratio:.2}x"),
            ratio >= 0.9,
        );
    }
    if on("flood") {
        // Refresh latency alone, then while 16 clients flood the password grant, then
        // alone again: the unloaded figure pools both halves, so drift on a shared
        // machine does not land on one side of the ratio.
        let mut quiet = http_refresh_chains(&client, &base, 4, secs.div_ceil(2)).await;
        let flood = {
            let (client, base, emails) = (client.clone(), base.clone(), emails.clone());
            tokio::spawn(async move { login_loop(&client, &base, emails, secs + 2).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut loaded = http_refresh_chains(&client, &base, 4, secs).await;
        let rss_flood_peak = server.rss_kib("VmHWM:");
        let mut flood = flood.await.unwrap();
        // Past the window in which the logins' slots are held back for other traffic.
        tokio::time::sleep(Duration::from_secs(2)).await;
        quiet.absorb(http_refresh_chains(&client, &base, 4, secs.div_ceil(2)).await);
        row(
            "refresh chains, unloaded (before and after)",
            4,
            &mut quiet,
            None,
        );
        row("refresh chains, during login flood", 4, &mut loaded, None);
        row(
            "login flood (beside the refreshes)",
            16,
            &mut flood,
            Some(("argon2 on all cores", argon2)),
        );
        let ratio = loaded.pct(0.99) / quiet.pct(0.99);
        verdict(
            format!("refresh p99 during a login flood <= 2x unloaded: {ratio:.2}x"),
            ratio <= 2.0,
        );
        verdict(
            format!(
                "RSS <= 100 MB during a login flood: {} MiB",
                rss_flood_peak / 1024
            ),
            rss_flood_peak <= 100 * 1000,
        );
    }
    if on("signup_flood") {
        let (ratio, about) = signup_flood::run(&admin_url, pool, secs).await;
        verdict(
            format!(
                "login p99 during a sign-up flood from another address <= 2x unloaded: {ratio:.2}x ({about})"
            ),
            ratio <= 2.0,
        );
    }
    if on("services") {
        let mut introspect = request_loop(
            16,
            secs,
            |c, base, arg| {
                let (id, secret) = arg.split_once(':').unwrap();
                let (secret, token) = secret.split_once('|').unwrap();
                c.post(format!("{base}/oauth/introspect"))
                    .basic_auth(id, Some(secret))
                    .form(&[("token", token)])
            },
            &client,
            &base,
            &format!("{basic}|{access}"),
        )
        .await;
        row("introspection (access token)", 16, &mut introspect, None);
        let mut jwks = request_loop(
            16,
            secs,
            |c, base, _| c.get(format!("{base}/.well-known/jwks.json")),
            &client,
            &base,
            "",
        )
        .await;
        row("JWKS", 16, &mut jwks, None);
        let mut me = request_loop(
            16,
            secs,
            |c, base, token| c.get(format!("{base}/v1/me")).bearer_auth(token),
            &client,
            &base,
            &access,
        )
        .await;
        row("/v1/me (verify + live session read)", 16, &mut me, None);
    }

    println!();
    if on("verify") {
        // What a backend service runs per request, beside raw `jsonwebtoken::decode` with
        // the same checks: one core each, in this process.
        println!();
        println!(
            "| verify (one core) | tessera::verify /s | raw jsonwebtoken::decode /s | ratio |"
        );
        println!("|---|---|---|---|");
        for alg in common::ALGS {
            let tokens = common::Tokens::new(alg);
            let ours = common::rate(2.0, || tokens.verify());
            let raw = common::rate(2.0, || tokens.raw_decode());
            println!("| {alg} | {ours:.0} | {raw:.0} | {:.2} |", ours / raw);
            verdict(
                format!(
                    "{alg} verify >= 0.9x raw jsonwebtoken decode: {:.2}x",
                    ours / raw
                ),
                ours / raw >= 0.9,
            );
        }
    }
    verdict(
        format!("RSS <= 30 MB idle: {} MiB", rss_idle / 1024),
        rss_idle <= 30 * 1000,
    );
    // The query behind access-token introspection and /v1/me: one indexed read.
    if let Ok(pg) =
        tessera::store::PgStore::connect(&url, tessera::store::PoolSettings::new(2)).await
    {
        let plan = sqlx::query_scalar::<_, String>(
            "EXPLAIN SELECT u.* FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = '00000000-0000-0000-0000-000000000000'::uuid AND s.revoked_at IS NULL \
             AND s.expires_at > 0 AND u.disabled_at IS NULL",
        )
        .fetch_all(pg.pool())
        .await;
        println!("introspection / live-session query plan:");
        match plan {
            Ok(lines) => {
                lines.iter().for_each(|l| println!("    {l}"));
                let indexed = lines.iter().filter(|l| l.contains("Index Scan")).count();
                verdict(
                    format!("introspection: one indexed read ({indexed} index scans, one query)"),
                    !lines.iter().any(|l| l.contains("Seq Scan")),
                );
            }
            Err(e) => println!("    (EXPLAIN failed: {e})"),
        }
    }
    println!();
    println!("Targets:");
    for line in &targets {
        println!("- {line}");
    }
}
