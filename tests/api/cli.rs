//! The `tessera` binary itself: zero-config start, start-up errors, the CLI.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{PASSWORD, fresh_pg_database, temp_dir};

fn tessera() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TESSERA_")) {
        cmd.env_remove(key);
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_with_no_configuration_creates_its_sqlite_file() {
    let dir = temp_dir();
    let port = free_port();
    // Only the port differs from the defaults: 8080 may be taken on a test machine.
    let mut child = tessera()
        .arg("serve")
        .current_dir(&dir)
        .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut healthy = false;
    while Instant::now() < deadline && !healthy {
        healthy = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if !healthy {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(healthy, "server did not come up: {log}");
    assert!(
        dir.join("data/tessera.db").exists(),
        "SQLite file created under ./data"
    );
    let key = dir.join("data/secret.key");
    assert!(key.exists(), "secret key generated into the data folder");
    assert!(
        log.contains("generated one into the data folder"),
        "with a warning: {log}"
    );
    let secret = std::fs::read_to_string(key).unwrap();
    assert!(
        !log.contains(secret.trim()),
        "the key itself is never logged"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("data/secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secret key readable by the owner only");
    }
}

#[tokio::test]
async fn postgres_without_a_secret_key_refuses_to_start_and_says_how_to_fix_it() {
    let url = fresh_pg_database().await;
    let output = tessera()
        .arg("serve")
        .env("TESSERA_DATABASE_URL", &url)
        .env("TESSERA_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("TESSERA_SECRET_KEY") && err.contains("head -c 32 /dev/urandom | base64"),
        "{err}"
    );
}

#[test]
fn invalid_configuration_exits_naming_the_key() {
    let output = tessera()
        .arg("migrate")
        .env("TESSERA_ACCESS_TOKEN_TTL_SECS", "fifteen")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("TESSERA_ACCESS_TOKEN_TTL_SECS"));
}

#[test]
fn user_create_reads_the_password_from_stdin() {
    let dir = temp_dir();
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let migrate = tessera()
        .arg("migrate")
        .env("TESSERA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let mut child = tessera()
        .args([
            "user",
            "create",
            "--email",
            "Root@Example.com",
            "--admin",
            "--password-stdin",
        ])
        .env("TESSERA_DATABASE_URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(created["email"], "root@example.com");
    assert_eq!(created["roles"], serde_json::json!(["admin"]));
    assert!(!String::from_utf8_lossy(&output.stderr).contains(PASSWORD));

    // Without --password-stdin the command refuses (never a password in argv).
    let refused = tessera()
        .args(["user", "create", "--email", "x@example.com"])
        .env("TESSERA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn client_create_prints_the_secret_once_and_keys_rotate_adds_a_key() {
    let dir = temp_dir();
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let output = tessera()
        .args(["client", "create", "--name", "billing", "--confidential"])
        .env("TESSERA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (id, secret) = (
        created["client_id"].as_str().unwrap(),
        created["client_secret"].as_str().unwrap(),
    );
    assert!(id.starts_with("svc_") && secret.starts_with("tsc_") && secret.len() > 40);
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains(secret),
        "the secret goes to stdout only"
    );
    let db = std::fs::read(dir.join("t.db")).unwrap();
    let wal = std::fs::read(dir.join("t.db-wal")).unwrap_or_default();
    let needle = secret.as_bytes();
    assert!(
        !db.windows(needle.len())
            .chain(wal.windows(needle.len()))
            .any(|w| w == needle),
        "stored hashed"
    );

    assert_eq!(created["scopes"], "", "no scopes unless given");

    let public = tessera()
        .args([
            "client",
            "create",
            "--name",
            "spa",
            "--scopes",
            "read  write read",
        ])
        .env("TESSERA_DATABASE_URL", &url)
        .output()
        .unwrap();
    let public: serde_json::Value = serde_json::from_slice(&public.stdout).unwrap();
    assert!(public.get("client_secret").is_none());
    assert_eq!(public["scopes"], "read write", "stored normalised");
    let refused = tessera()
        .args(["client", "create", "--name", "bad", "--scopes", "caf\u{e9}"])
        .env("TESSERA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a malformed scope is refused");

    let rotate = |_: ()| {
        let out = tessera()
            .args(["keys", "rotate"])
            .env("TESSERA_DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let keys = rotate(());
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    // Listed by creation second, then kid: both may fall in one second, so tell them
    // apart by which one was retired.
    let (old, new) = match keys[0]["retires_at"].is_null() {
        true => (&keys[1], &keys[0]),
        false => (&keys[0], &keys[1]),
    };
    assert!(
        old["retires_at"].as_i64().unwrap() > new["activates_at"].as_i64().unwrap(),
        "old key outlives the switch"
    );
    assert!(new["retires_at"].is_null());
}

#[test]
fn prune_runs_the_janitor_once_for_cron() {
    let dir = temp_dir();
    let output = tessera().arg("prune").current_dir(&dir).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for table in ["refresh_tokens", "sessions", "revocations", "audit_events"] {
        assert_eq!(printed["deleted"][table], 0, "{printed}");
    }
    assert_eq!(printed["busy"], false);
    assert_eq!(printed["failed"], serde_json::json!([]));
}

#[test]
fn secrets_are_read_from_files_and_refused_when_given_twice() {
    let dir = temp_dir();
    let db = dir.join("from-file.db");
    let url_file = dir.join("database_url");
    let key_file = dir.join("secret_key");
    // As `echo ... > file` writes them: with a trailing newline.
    std::fs::write(&url_file, format!("sqlite://{}\n", db.display())).unwrap();
    let key = tessera::tokens::keys::SecretKey::generate().to_base64();
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let output = tessera()
        .args(["keys", "rotate"])
        .current_dir(&dir)
        .env("TESSERA_DATABASE_URL_FILE", &url_file)
        .env("TESSERA_SECRET_KEY_FILE", &key_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(db.exists(), "the database URL came from its file");
    assert!(
        !dir.join("secret.key").exists() && !dir.join("data/secret.key").exists(),
        "the secret key came from its file, none was generated: {stderr}"
    );
    assert!(!stderr.contains(&key), "the key is never logged");

    let output = tessera()
        .args(["keys", "rotate"])
        .current_dir(&dir)
        .env("TESSERA_DATABASE_URL_FILE", &url_file)
        .env("TESSERA_DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("both TESSERA_DATABASE_URL and its _FILE: {stderr}");
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "TESSERA_DATABASE_URL: both TESSERA_DATABASE_URL and TESSERA_DATABASE_URL_FILE are set"
        ),
        "{stderr}"
    );
}
