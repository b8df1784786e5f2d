//! Breaking it on purpose under load: PostgreSQL stopped and started again (a cluster
//! the test owns, on its own port and folder), and the server killed with SIGKILL and
//! restarted. Refresh chains run throughout; afterwards every chain's newest token must
//! work and the token table's invariants must hold.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{
    ISSUER, PASSWORD, TestApp, fresh_pg_database, json, s, spawn_instance, temp_dir,
};
use crate::invariants;

/// A PostgreSQL cluster of the test's own: initdb into a fresh folder, pg_ctl to stop
/// and start it. As root, it runs as the `postgres` user (PostgreSQL refuses root).
struct OwnedCluster {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl OwnedCluster {
    fn run(&self, program: &str, args: &[&str]) -> bool {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn create() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(Result::ok)
            .map(|d| d.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("a PostgreSQL installation (initdb, pg_ctl)");
        let dir = temp_dir();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false);
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres", &dir.display().to_string()])
                .status()
                .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            bin,
            data: dir.join("data"),
            port,
            as_postgres,
        };
        let data = cluster.data.display().to_string();
        assert!(
            cluster.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust"]),
            "initdb in {data}"
        );
        cluster.start();
        cluster
    }

    fn start(&self) {
        let data = self.data.display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data.parent().unwrap().display()
        );
        let log = self.data.with_file_name("log").display().to_string();
        assert!(
            self.run(
                "pg_ctl",
                &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"]
            ),
            "pg_ctl start, see {log}"
        );
    }

    fn stop(&self) {
        let data = self.data.display().to_string();
        assert!(self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        if let Some(dir) = self.data.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A `tessera serve` process, killed when dropped (a failed assertion must not leave
/// it running).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a blocking `pg_ctl` step off the async workers, handing the cluster back.
async fn off_thread(cluster: OwnedCluster, step: fn(&OwnedCluster)) -> OwnedCluster {
    tokio::task::spawn_blocking(move || {
        step(&cluster);
        cluster
    })
    .await
    .unwrap()
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    ok: usize,
    unavailable: usize,
    unavailable_without_retry_after: usize,
    /// Connection refused or reset: the server process was gone.
    unreachable: usize,
    other: Vec<String>,
    slowest: Duration,
    last_ok: Option<Instant>,
    logins_ok: usize,
    logins_unavailable: usize,
}

/// A refresh chain: refreshes its token until `stop`, keeping the newest token a 200
/// handed it, and retrying the same token after a 503 or a dropped connection.
async fn chain(
    client: reqwest::Client,
    base: Arc<std::sync::Mutex<String>>,
    mut token: String,
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Seen>>,
) -> String {
    let note = |f: &dyn Fn(&mut Seen)| f(&mut seen.lock().unwrap());
    while !stop.load(Ordering::Relaxed) {
        let url = format!("{}/oauth/token", base.lock().unwrap());
        let started = Instant::now();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token.as_str()),
        ];
        let sent = client.post(url).form(&form).send().await;
        let took = started.elapsed();
        note(&|seen| seen.slowest = seen.slowest.max(took));
        let Ok(response) = sent else {
            note(&|seen| seen.unreachable += 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = response.status();
        let retry_after = response.headers().contains_key("retry-after");
        let (_, body) = json(response).await;
        match status {
            StatusCode::OK => {
                note(&|seen| {
                    seen.ok += 1;
                    seen.last_ok = Some(Instant::now());
                });
                token = s(&body, "refresh_token");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                note(&|seen| {
                    seen.unavailable += 1;
                    if !retry_after {
                        seen.unavailable_without_retry_after += 1;
                    }
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => note(&|seen| seen.other.push(format!("{other} {body}"))),
        }
    }
    token
}

/// Logs in again and again as `email` until `stop`; the refresh tokens it was handed.
async fn login_loop(
    base: String,
    email: String,
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Seen>>,
) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut handed = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let form = [
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ];
        let response = client
            .post(format!("{base}/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        let (status, retry_after) = (
            response.status(),
            response.headers().contains_key("retry-after"),
        );
        let (_, body) = json(response).await;
        let mut seen = seen.lock().unwrap();
        match status {
            StatusCode::OK => {
                seen.logins_ok += 1;
                handed.push(s(&body, "refresh_token"));
            }
            StatusCode::SERVICE_UNAVAILABLE if retry_after => seen.logins_unavailable += 1,
            other => seen.other.push(format!("login: {other} {body}")),
        }
    }
    handed
}

/// Runs `chains` on `tokens` until `stop` is set; returns their newest tokens.
fn start_chains(
    tokens: Vec<String>,
    base: &Arc<std::sync::Mutex<String>>,
    stop: &Arc<AtomicBool>,
    seen: &Arc<std::sync::Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<String>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    tokens
        .into_iter()
        .map(|t| {
            tokio::spawn(chain(
                client.clone(),
                base.clone(),
                t,
                stop.clone(),
                seen.clone(),
            ))
        })
        .collect()
}

/// Each chain's newest token refreshes once more: nothing a client was handed with a
/// 200 was lost, only superseded.
async fn assert_newest_tokens_work(base: &str, tokens: &[String]) {
    let client = reqwest::Client::new();
    for t in tokens {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", t.as_str()),
        ];
        let response = client
            .post(format!("{base}/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
    }
}

async fn logged_in_tokens(app_base: &str, n: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let body = serde_json::json!({"email": email, "password": PASSWORD});
        let r = client
            .post(format!("{app_base}/v1/signup"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let form = [
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ];
        let (status, tokens) = json(
            client
                .post(format!("{app_base}/oauth/token"))
                .form(&form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        out.push(s(&tokens, "refresh_token"));
    }
    out
}

const CHAINS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_postgres_under_load_answers_503_and_loses_nothing() {
    let cluster = tokio::task::spawn_blocking(OwnedCluster::create)
        .await
        .unwrap();
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let app: TestApp = spawn_instance(
        &cluster.url(),
        &secret,
        &[
            ("TESSERA_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", "2000"),
            // Logins hash with argon2 in a debug build on a busy machine: room for them.
            ("TESSERA_REQUEST_TIMEOUT_SECS", "20"),
            ("TESSERA_LOGIN_THROTTLE", "off"),
        ],
    )
    .await;
    let tokens = logged_in_tokens(&app.base, CHAINS).await;
    let (email, _) = app.user_with_session().await;
    let base = Arc::new(std::sync::Mutex::new(app.base.clone()));
    let (stop, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(std::sync::Mutex::new(Seen::default())),
    );
    let chains = start_chains(tokens, &base, &stop, &seen);
    let logins = tokio::spawn(login_loop(
        app.base.clone(),
        email,
        stop.clone(),
        seen.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let cluster = off_thread(cluster, OwnedCluster::stop).await;
    let down_at = Instant::now();
    let ok_before_outage = seen.lock().unwrap().ok;
    // Down for three seconds: the outage itself, not a wait for a result.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ok_during = seen.lock().unwrap().ok - ok_before_outage;
    let cluster = off_thread(cluster, OwnedCluster::start).await;
    let up_at = Instant::now();
    let mut recovered = None;
    while up_at.elapsed() < Duration::from_secs(10) {
        if seen.lock().unwrap().last_ok.is_some_and(|t| t > up_at) {
            recovered = Some(up_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut newest = Vec::new();
    for c in chains {
        newest.push(c.await.unwrap());
    }
    let handed = logins.await.unwrap();
    // The newest session a login opened works; so does every chain's newest token.
    newest.extend(handed.last().cloned());

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    println!(
        "PostgreSQL stopped for {:?} under {CHAINS} refresh chains and a login loop: {} refreshes ok ({ok_during} while down), {} x 503 (all with Retry-After: {}), logins {} ok / {} x 503, other {:?}, slowest refresh {:?}, first 200 {:?} after the restart",
        up_at - down_at,
        seen.ok,
        seen.unavailable,
        seen.unavailable_without_retry_after == 0,
        seen.logins_ok,
        seen.logins_unavailable,
        seen.other,
        seen.slowest,
        recovered
    );
    assert!(seen.other.is_empty(), "only 200 or 503: {:?}", seen.other);
    assert_eq!(seen.unreachable, 0, "the server itself stayed up");
    assert!(seen.unavailable > 0, "the outage was seen");
    assert_eq!(seen.unavailable_without_retry_after, 0);
    // The bounds are the timeouts (1 s to get a connection, 2 s a statement) with room
    // for a loaded machine, and well below the 20 s request timeout that would end a
    // request held by a dead connection.
    assert!(
        seen.slowest < Duration::from_secs(8),
        "no request held past the timeout: {:?}",
        seen.slowest
    );
    let recovered = recovered.expect("service resumed within 10 s of the restart");
    assert!(
        recovered < Duration::from_secs(5),
        "resumed in {recovered:?}"
    );
    assert_newest_tokens_work(&app.base, &newest).await;
    invariants::check(&app).await;
    drop(cluster);
}

fn serve(database_url: &str, secret: &str, port: u16) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        cmd.env_remove(key);
    }
    cmd.arg("serve")
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_DATABASE_URL", database_url)
        .env("TESSERA_SECRET_KEY", secret)
        .env("TESSERA_ISSUER", ISSUER)
        .env("TESSERA_LOGIN_THROTTLE", "off")
        // A response cut by the kill is recovered by a grace replay after the restart,
        // however long a busy machine takes to restart a debug build.
        .env("TESSERA_REFRESH_GRACE_SECS", "120")
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Served(cmd.spawn().unwrap())
}

async fn wait_healthy(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server at {base} did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_server_under_load_loses_no_token() {
    let url = fresh_pg_database().await;
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base_url = format!("http://127.0.0.1:{port}");
    let mut server = serve(&url, &secret, port);
    wait_healthy(&base_url).await;
    let tokens = logged_in_tokens(&base_url, CHAINS).await;
    let base = Arc::new(std::sync::Mutex::new(base_url.clone()));
    let (stop, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(std::sync::Mutex::new(Seen::default())),
    );
    let chains = start_chains(tokens, &base, &stop, &seen);

    tokio::time::sleep(Duration::from_secs(1)).await;
    server.0.kill().unwrap(); // SIGKILL: no drain, no cleanup, requests cut mid-flight
    server.0.wait().unwrap();
    let ok_before = seen.lock().unwrap().ok;
    let server = serve(&url, &secret, port);
    wait_healthy(&base_url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut newest = Vec::new();
    for c in chains {
        newest.push(c.await.unwrap());
    }
    {
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        println!(
            "server killed under {CHAINS} refresh chains: {} ok ({} after the restart), {} requests cut or refused while it was down, {} x 503, other {:?}",
            seen.ok,
            seen.ok - ok_before,
            seen.unreachable,
            seen.unavailable,
            seen.other
        );
        assert!(
            seen.other.is_empty(),
            "no 5xx, no lost session: {:?}",
            seen.other
        );
        assert!(seen.ok > ok_before, "chains went on after the restart");
    }
    assert_newest_tokens_work(&base_url, &newest).await;
    let app = spawn_instance(&url, &secret, &[]).await;
    invariants::check(&app).await;
    drop(server);
}
