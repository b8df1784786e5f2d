//! Spawns the real server (real router, real HTTP on a loopback port) against a fresh
//! database per test: a new SQLite file, or a new PostgreSQL database.

use std::sync::OnceLock;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Executor};
use tessera::config::Config;
use tessera::http::AppState;
use tessera::server::Server;
use tokio::sync::{Mutex, oneshot};
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";
pub const ISSUER: &str = "http://tessera.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per store for each named `async fn(Backend)`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

const LOCAL_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server tests use: `TESSERA_TEST_DATABASE_URL`; else the local server
/// at 127.0.0.1:5432 if it answers; else a throwaway cluster started from the local
/// PostgreSQL installation (kept under `target/` and reused by later runs).
pub async fn pg_admin_url() -> String {
    if let Ok(url) = std::env::var("TESSERA_TEST_DATABASE_URL") {
        return url;
    }
    static URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    URL.get_or_init(|| async {
        if sqlx::PgConnection::connect(LOCAL_PG).await.is_ok() {
            return LOCAL_PG.to_owned();
        }
        tokio::task::spawn_blocking(throwaway_cluster)
            .await
            .unwrap()
    })
    .await
    .clone()
}

/// initdb + pg_ctl, as the `pgtemp` crate does. As root, the cluster runs as the
/// `postgres` user (PostgreSQL refuses to run as root).
fn throwaway_cluster() -> String {
    use std::process::Command;
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| dirs.filter_map(Result::ok).map(|d| d.path().join("bin")).filter(|b| b.join("initdb").exists()).max())
        .unwrap_or_else(|| panic!(
            "PostgreSQL is needed for the tests: none answers at {LOCAL_PG} and no installation was found \
             to start one from. Install it (Debian: apt-get install postgresql) or set TESSERA_TEST_DATABASE_URL."
        ));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tessera-pg");
    let port = 54329;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let run = |program: &str, args: &[&str]| {
        let path = bin.join(program);
        let mut cmd = if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let data = dir.join("data");
    let data_s = data.display().to_string();
    if !data.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        if is_root {
            let _ = Command::new("chown")
                .args(["-R", "postgres", &dir.display().to_string()])
                .status();
        }
        assert!(
            run("initdb", &["-D", &data_s, "-U", "postgres", "-A", "trust"]),
            "initdb failed in {data_s}"
        );
    }
    if !run("pg_ctl", &["-D", &data_s, "status"]) {
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {}",
            dir.display()
        );
        let log = dir.join("log").display().to_string();
        assert!(
            run(
                "pg_ctl",
                &["-D", &data_s, "-o", &opts, "-l", &log, "-w", "start"]
            ),
            "pg_ctl start failed, see {log}"
        );
    }
    url
}

fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{name}{query}")
}

static PG_CLEANED: Mutex<bool> = Mutex::const_new(false);

/// A new, empty PostgreSQL database for one test. Databases left by earlier runs are
/// dropped the first time (they cannot be dropped while their test's pool lives).
pub async fn fresh_pg_database() -> String {
    let admin_url = pg_admin_url().await;
    let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is needed for the tests and did not answer at {admin_url}: {e}\n\
             Start it (Debian: pg_ctlcluster 15 main start; or apt-get install postgresql), \
             or point TESSERA_TEST_DATABASE_URL at one."
        ),
    };
    {
        let mut cleaned = PG_CLEANED.lock().await;
        if !*cleaned {
            let stale: Vec<(String,)> =
                sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'tessera_t_%'")
                    .fetch_all(&mut admin)
                    .await
                    .unwrap_or_default();
            // A database belongs to the test process whose id is in its name: drop it
            // only once that process is gone, so parallel runs leave each other alone.
            for (name,) in stale {
                let owner = name.split('_').nth(2).unwrap_or_default();
                if !std::path::Path::new("/proc").join(owner).exists() {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            }
            *cleaned = true;
        }
    }
    let name = format!(
        "tessera_t_{}_{}",
        RUN_ID.get_or_init(run_id),
        Uuid::new_v4().simple()
    );
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
    with_database(&admin_url, &name)
}

static RUN_ID: OnceLock<String> = OnceLock::new();

/// Tests that open thousands of connections take turns, so that together they stay
/// well inside the open-file limit and the machine's loopback backlog.
pub static MANY_CONNECTIONS: Mutex<()> = Mutex::const_new(());

fn run_id() -> String {
    format!("{}", std::process::id())
}

/// A folder of its own for one test.
pub fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir()
        .join("tessera-tests")
        .join(Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
    dir
}

/// A database URL of a fresh store for `backend`.
pub async fn fresh_database(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", temp_dir().join("tessera.db").display()),
        Backend::Postgres => fresh_pg_database().await,
    }
}

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub state: AppState,
    pub database_url: String,
    pub secret_key: String,
    shutdown: Option<oneshot::Sender<()>>,
    /// The server's `run`: it ends once a shutdown has drained and finished every request.
    pub running: tokio::task::JoinHandle<()>,
}

/// Settings every test shares; `extra` overrides them.
pub fn settings(
    database_url: &str,
    secret_key: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("TESSERA_LISTEN".into(), "127.0.0.1:0".into()),
        ("TESSERA_DATABASE_URL".into(), database_url.into()),
        ("TESSERA_SECRET_KEY".into(), secret_key.into()),
        ("TESSERA_ISSUER".into(), ISSUER.into()),
        ("TESSERA_DATABASE_MAX_CONNECTIONS".into(), "8".into()),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    vars
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let url = fresh_database(backend).await;
    let secret = tessera::tokens::keys::SecretKey::generate().to_base64();
    spawn_instance(&url, &secret, extra).await
}

/// Another server on an existing database (scale-out tests).
pub async fn spawn_instance(
    database_url: &str,
    secret_key: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    let config = Config::load(settings(database_url, secret_key, extra))
        .unwrap_or_else(|e| panic!("config: {e}"));
    let server = Server::bind(&config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let addr = server.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    let state = server.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        let ran = server
            .run(async move {
                let _ = rx.await;
            })
            .await;
        ran.unwrap_or_else(|e| panic!("run: {e}"));
    });
    TestApp {
        base: format!("http://{addr}"),

        client: Client::new(),
        state,
        database_url: database_url.to_owned(),
        secret_key: secret_key.to_owned(),
        shutdown: Some(tx),
        running,
    }
}

/// A password grant through the library, from address `ip`, at the simulated instant
/// `at`: for rules over time (throttle windows) that must not race the wall clock.
pub async fn login_at(
    auth: &tessera::auth::Auth,
    email: &str,
    password: &str,
    ip: &str,
    at: i64,
) -> Result<(), tessera::auth::AuthError> {
    let caller = tessera::auth::Caller {
        ip: Some(ip.to_owned()),
        user_agent: None,
    };
    auth.login(
        email,
        password.into(),
        &tessera::auth::RequestClient::Default,
        None,
        None,
        &caller,
        at,
    )
    .await
    .map(|_| ())
}

/// A response's status and JSON body (Null when there is none).
pub async fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

impl TestApp {
    /// Starts a graceful shutdown (as SIGTERM does).
    pub fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `/readyz` until it answers 200, for at most `limit`; whether it did.
    pub async fn wait_until_ready(&self, limit: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            let response = self.client.get(self.url("/readyz")).send().await;
            if response.is_ok_and(|r| r.status() == StatusCode::OK) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// A live session row for `user_id`, as a login would open it (tests that need
    /// many sessions write them through the store, without a password hash each).
    pub fn new_session(user_id: Uuid, now: i64) -> tessera::store::Session {
        tessera::store::Session {
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
        }
    }

    /// An unauthenticated GET, its body as text.
    pub async fn text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// An unauthenticated GET, its body as JSON of type `T`.
    pub async fn fetch<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST /v1/logout` (scope local) with an access token.
    pub async fn logout(&self, access_token: &str) -> StatusCode {
        self.client
            .post(self.url("/v1/logout"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn signup(&self, email: &str, password: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({"email": email, "password": password});
        json(
            self.client
                .post(self.url("/v1/signup"))
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        json(
            self.client
                .post(self.url("/oauth/token"))
                .form(form)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", password),
        ])
        .await
    }

    /// Signs up a new user and logs in: the token response.
    pub async fn user_with_session(&self) -> (String, Value) {
        let email = format!("{}@example.com", Uuid::new_v4().simple());
        let (status, _) = self.signup(&email, PASSWORD).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, tokens) = self.login(&email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        (email, tokens)
    }

    pub async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    pub async fn get(&self, path: &str, bearer: &str) -> (StatusCode, Value) {
        json(
            self.client
                .get(self.url(path))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
    }

    pub async fn delete(&self, path: &str, bearer: &str) -> (StatusCode, Value) {
        json(
            self.client
                .delete(self.url(path))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
    }

    pub async fn post_json(&self, path: &str, bearer: &str, body: &Value) -> (StatusCode, Value) {
        json(
            self.client
                .post(self.url(path))
                .bearer_auth(bearer)
                .json(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
    }

    /// An admin user (created as the CLI does) and a logged-in session of theirs.
    pub async fn admin_session(&self) -> (Uuid, Value) {
        let email = format!("admin-{}@example.com", Uuid::new_v4().simple());
        let user = self
            .state
            .auth
            .create_user(
                &email,
                PASSWORD.into(),
                vec!["admin".into()],
                None,
                tessera::http::extract::now(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (status, tokens) = self.login(&email, PASSWORD).await;
        assert_eq!(status, StatusCode::OK);
        (user.id, tokens)
    }
}
