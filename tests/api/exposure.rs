//! What the server must not expose: metrics to the network without a token, and the
//! SQLite database to other users of the machine.

use reqwest::StatusCode;
use tokio::net::TcpStream;

use crate::helpers::{Backend, spawn_app_with, spawn_instance, temp_dir};
use crate::transport::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_on_a_network_listener_need_a_token_or_the_metrics_address() {
    let port = free_port().await;
    let metrics_listen = format!("127.0.0.1:{port}");
    let open = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_LISTEN", "0.0.0.0:0"),
            ("TESSERA_METRICS_LISTEN", &metrics_listen),
        ],
    )
    .await;
    let main = open.client.get(open.url("/metrics")).send().await.unwrap();
    assert_eq!(
        main.status(),
        StatusCode::NOT_FOUND,
        "/metrics is served to the network on 0.0.0.0 with no token"
    );
    assert_eq!(
        open.client
            .get(open.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let local = open
        .client
        .get(format!("http://{metrics_listen}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), StatusCode::OK);
    assert!(
        local
            .text()
            .await
            .unwrap()
            .contains("tessera_http_requests_total")
    );

    // With a token the main listener serves metrics behind it, and no second port opens.
    let port = free_port().await;
    let guarded = spawn_app_with(
        Backend::Sqlite,
        &[
            ("TESSERA_LISTEN", "0.0.0.0:0"),
            ("TESSERA_METRICS_TOKEN", "scrape-me"),
            ("TESSERA_METRICS_LISTEN", &format!("127.0.0.1:{port}")),
        ],
    )
    .await;
    let metrics = |token: Option<&str>| {
        let request = guarded.client.get(guarded.url("/metrics"));
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(metrics(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(metrics(Some("scrape-me")).await, StatusCode::OK);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "no metrics listener when the main one serves metrics"
    );
}

/// The permission bits, in octal as `ls -l` and `chmod` speak them.
#[cfg(unix)]
fn octal(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:o}", meta.permissions().mode() & 0o777)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_sqlite_database_is_readable_by_its_owner_alone() {
    let data = temp_dir().join("fresh").join("data");
    let url = format!("sqlite://{}", data.join("tessera.db").display());
    // No secret key: one is generated into the data folder too.
    let app = spawn_instance(&url, "", &[]).await;
    app.user_with_session().await;
    assert_eq!(octal(&data), "700", "the data folder Tessera created");
    for file in [
        "tessera.db",
        "tessera.db-wal",
        "tessera.db-shm",
        "secret.key",
    ] {
        assert_eq!(octal(&data.join(file)), "600", "{file}");
    }

    // A folder the operator made is theirs: left as it is, the database still private.
    let theirs = temp_dir().join("shared");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let url = format!("sqlite://{}", theirs.join("tessera.db").display());
    let app = spawn_instance(&url, &app.secret_key, &[]).await;
    app.user_with_session().await;
    assert_eq!(octal(&theirs), "755", "the operator's folder is left alone");
    assert_eq!(octal(&theirs.join("tessera.db")), "600");
}
