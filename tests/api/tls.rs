//! TLS to PostgreSQL, against a cluster of the test's own: `initdb` + `pg_ctl` on its own
//! port and folder, `ssl=on`, with a CA and a server certificate (for `localhost` only)
//! made by the `openssl` command (which Debian's postgresql package brings along).
//! Each test starts the real server on a URL as an operator would write it, and asks
//! PostgreSQL itself whether the server's connections are encrypted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use sqlx::{Connection, Executor};
use tessera::config::Config;
use tessera::server::Server;
use uuid::Uuid;

use crate::helpers::{TestApp, settings, spawn_instance, temp_dir};

/// A PostgreSQL cluster with `ssl=on`, stopped and removed when the last test using it
/// drops it.
struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl TlsCluster {
    fn ca(&self) -> String {
        self.dir.join("ca.crt").display().to_string()
    }

    fn wrong_ca(&self) -> String {
        self.dir.join("wrong-ca.crt").display().to_string()
    }

    fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// A fresh database, and the URL of it by `host` with `query` appended.
    async fn database(&self, host: &str, query: &str) -> (String, String) {
        let name = format!("tessera_tls_{}", Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let url = format!("postgres://postgres@{host}:{}/{name}?{query}", self.port);
        (name, url)
    }

    /// How many of the connections to `database` there are, and how many use TLS.
    async fn connections(&self, database: &str) -> (i64, i64) {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.datname = $1",
        )
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    }

    fn pg(&self, program: &str, args: &[&str]) -> std::process::Output {
        as_postgres(&self.bin.join(program))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: as root, run its tools as `postgres`.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed for the TLS tests: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`name`.crt, `name`.key), self-signed, P-256.
fn make_ca(dir: &Path, name: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN=Tessera test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn start_cluster() -> TlsCluster {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .max()
        })
        .expect("the TLS tests start a PostgreSQL cluster of their own: install postgresql");
    let dir = temp_dir();
    make_ca(&dir, "ca");
    make_ca(&dir, "wrong-ca");
    // The server's certificate names localhost and nothing else: 127.0.0.1 is a
    // wrong host name for verify-full.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // PostgreSQL refuses a key others can read.
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let cluster = TlsCluster { dir, bin, port };
    let data = cluster.dir.join("data").display().to_string();
    let out = cluster.pg("initdb", &["-D", &data, "-U", "postgres", "-A", "trust"]);
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = cluster.dir.display();
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {d} -c ssl=on \
         -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key"
    );
    let log = cluster.dir.join("log").display().to_string();
    let out = cluster.pg(
        "pg_ctl",
        &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
    );
    assert!(
        out.status.success(),
        "pg_ctl start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    cluster
}

/// The cluster the running tests share (started by the first, stopped after the last).
async fn cluster() -> Arc<TlsCluster> {
    static SHARED: Mutex<Weak<TlsCluster>> = Mutex::new(Weak::new());
    tokio::task::spawn_blocking(|| {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(start_cluster());
        *shared = Arc::downgrade(&cluster);
        cluster
    })
    .await
    .unwrap()
}

fn secret() -> String {
    tessera::tokens::keys::SecretKey::generate().to_base64()
}

/// Starts the real server on `url` and checks that /readyz says 200; the server runs
/// until the returned app is dropped.
async fn serves(url: &str) -> TestApp {
    let app = spawn_instance(url, &secret(), &[]).await;
    // Polled: a readiness check has a second, which a TLS handshake on a loaded
    // machine can take.
    assert!(
        app.wait_until_ready(std::time::Duration::from_secs(30))
            .await,
        "/readyz on {url}"
    );
    app
}

/// The start-up error the real server gives on `url`.
async fn start_error(url: &str) -> String {
    let config = Config::load(settings(url, &secret(), &[])).unwrap();
    match Server::bind(&config).await {
        Ok(_) => panic!("the server started on {url}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_with_the_databases_ca_over_tls() {
    let pg = cluster().await;
    let (db, url) = pg
        .database(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
        )
        .await;
    let _app = serves(&url).await;
    let (all, tls) = pg.connections(&db).await;
    println!(
        "verify-full, host localhost, the database's CA: connects; {tls} of {all} connections use TLS"
    );
    assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_server_certificate_from_another_ca() {
    let pg = cluster().await;
    let (_, url) = pg
        .database(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", pg.wrong_ca()),
        )
        .await;
    let err = start_error(&url).await;
    println!("verify-full, a wrong CA: refused: {err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("not signed by a CA trusted here"), "{err}");
    assert!(
        err.contains("sslmode=verify-full") && err.contains("wrong-ca.crt"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_hold() {
    let pg = cluster().await;
    let (_, url) = pg
        .database(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
        )
        .await;
    let err = start_error(&url).await;
    println!("verify-full, host 127.0.0.1 (the certificate names localhost): refused: {err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("does not name this host"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let pg = cluster().await;
    let (db, url) = pg
        .database(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", pg.ca()),
        )
        .await;
    let _app = serves(&url).await;
    let (all, tls) = pg.connections(&db).await;
    println!("verify-ca, host 127.0.0.1, the database's CA: connects; {tls} of {all} over TLS");
    assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
    let (_, url) = pg
        .database(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", pg.wrong_ca()),
        )
        .await;
    let err = start_error(&url).await;
    println!("verify-ca, a wrong CA: refused: {err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_connects_over_tls_without_checking_the_certificate() {
    let pg = cluster().await;
    let (db, url) = pg.database("127.0.0.1", "sslmode=require").await;
    let _app = serves(&url).await;
    let (all, tls) = pg.connections(&db).await;
    println!("require, no CA: connects; {tls} of {all} connections use TLS");
    assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_with_a_root_certificate_checks_the_chain_as_libpq_does() {
    let pg = cluster().await;
    let (_, url) = pg
        .database(
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={}", pg.wrong_ca()),
        )
        .await;
    let err = start_error(&url).await;
    println!("require with sslrootcert of a wrong CA: refused: {err}");
    assert!(err.contains("sslmode=verify-ca"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_connects_in_the_clear_and_prefer_uses_tls_when_offered() {
    let pg = cluster().await;
    let (db, url) = pg.database("127.0.0.1", "sslmode=disable").await;
    let _app = serves(&url).await;
    let (all, tls) = pg.connections(&db).await;
    println!("disable: connects; {tls} of {all} connections use TLS");
    assert!(all >= 1 && tls == 0, "{tls} of {all} connections use TLS");
    let (db, url) = pg.database("127.0.0.1", "sslmode=prefer").await;
    let _app = serves(&url).await;
    let (all, tls) = pg.connections(&db).await;
    println!("prefer: connects; {tls} of {all} connections use TLS");
    assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
}

/// Without `sslrootcert`, the platform's store decides (rustls-native-certs: the
/// system bundle, or `SSL_CERT_FILE` when set, as in the image). Run through the real
/// binary, since the store is read from the process environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_without_sslrootcert_trusts_the_platform_store() {
    let pg = cluster().await;
    let (_, url) = pg.database("localhost", "sslmode=verify-full").await;
    let migrate = |store: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
            cmd.env_remove(key);
        }
        cmd.arg("migrate")
            .env_remove("SSL_CERT_DIR")
            .env_remove("PGSSLROOTCERT")
            .env("SSL_CERT_FILE", store)
            .env("TESSERA_DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let trusted = migrate(&pg.ca());
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    println!("verify-full, no sslrootcert, the CA in the platform store: connects");
    let untrusted = migrate(&pg.wrong_ca());
    let err = String::from_utf8_lossy(&untrusted.stderr);
    println!("verify-full, no sslrootcert, the CA not in the platform store: refused: {err}");
    assert!(!untrusted.status.success());
    assert!(err.contains("not signed by a CA trusted here"), "{err}");
}
