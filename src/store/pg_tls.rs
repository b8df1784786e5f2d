//! TLS to PostgreSQL, read from the URL the way libpq reads it, so that the URL an
//! operator already uses with `psql` means the same here.
//!
//! sqlx does the handshake (rustls, the platform's CA store) and reads `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`; three libpq rules it leaves out are kept here:
//! - `sslmode=require` with a root certificate named verifies the chain, as `verify-ca`
//!   (libpq: "if a root CA file exists, require behaves like verify-ca");
//! - `sslrootcert=system` means the platform's store, and only with `verify-full`
//!   (libpq 16), rather than a file named `system`;
//! - a root certificate file that cannot be read stops start-up, naming the file.
//!
//! A failed connection is explained with the host, port, database and TLS settings
//! (never the password), and a hint for the usual certificate mistakes.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::StoreError;

const ROOT_CERT_KEYS: [&str; 3] = ["sslrootcert", "ssl-root-cert", "ssl-ca"];

/// What start-up needs to know about a URL's TLS settings.
#[derive(Debug, Clone)]
pub(super) struct PgTarget {
    pub options: PgConnectOptions,
    /// For messages: where we connect and how, without credentials.
    pub describe: String,
}

/// Whether a PostgreSQL host is this machine: a loopback address or a Unix socket
/// directory (not the name `localhost`, which a resolver decides).
fn is_local(host: &str) -> bool {
    host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses a PostgreSQL URL into connect options with libpq's TLS rules applied.
pub(super) fn connect_options(url: &str) -> Result<PgTarget, StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut root_cert = std::env::var("PGSSLROOTCERT").ok();
    let mut system = false;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if ROOT_CERT_KEYS.contains(&key) {
            let value = percent_decode(value);
            if value == "system" {
                system = true;
                root_cert = None;
                continue;
            }
            root_cert = Some(value);
        }
        kept.push(pair);
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut options = PgConnectOptions::from_str(&url)
        .map_err(|e| StoreError::Connect(format!("TESSERA_DATABASE_URL: {e}")))?;
    // A database on this machine (a loopback address or a Unix socket) named with no
    // TLS setting at all is reached in the clear: the traffic never leaves the host,
    // and TLS would cost both ends CPU on every statement. libpq's `prefer` would
    // negotiate TLS; any `ssl*` parameter (or `PGSSL*` variable) keeps libpq's rules.
    let mode_given = query
        .split('&')
        .any(|p| p.split_once('=').map_or(p, |(k, _)| k).starts_with("ssl"))
        || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("PGSSL"));
    if !mode_given && is_local(options.get_host()) {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    if system && !matches!(options.get_ssl_mode(), PgSslMode::VerifyFull) {
        return Err(StoreError::Connect(
            "TESSERA_DATABASE_URL: sslrootcert=system needs sslmode=verify-full (as in libpq): \
             a public CA vouches for a name, so the name must be checked"
                .into(),
        ));
    }
    if let Some(path) = &root_cert {
        if let Err(e) = std::fs::File::open(path) {
            return Err(StoreError::Connect(format!(
                "TESSERA_DATABASE_URL: sslrootcert {path}: {e}"
            )));
        }
        if matches!(options.get_ssl_mode(), PgSslMode::Require) {
            options = options.ssl_mode(PgSslMode::VerifyCa);
        }
    }
    let describe = format!(
        "{}:{}/{} (sslmode={}{})",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default(),
        mode_name(options.get_ssl_mode()),
        match (&root_cert, system) {
            (_, true) => ", sslrootcert=system".to_owned(),
            (Some(path), _) => format!(", sslrootcert={path}"),
            (None, _) => String::new(),
        }
    );
    Ok(PgTarget { options, describe })
}

/// The start-up error for a connection that failed: where, how, why, and what to check.
pub(super) fn connect_failed(target: &PgTarget, error: &sqlx::Error) -> StoreError {
    let text = error.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "; the server's certificate is not signed by a CA trusted here: name your database's CA \
         in sslrootcert (or add it to the platform's store)"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "; the server's certificate does not name this host: connect by a name the certificate \
         holds (verify-full checks it)"
    } else if text.contains("Expired") || text.contains("NotValidYet") {
        "; the server's certificate is outside its validity period (or this clock is wrong)"
    } else if text.contains("server does not support TLS") {
        "; enable ssl on the server, or lower sslmode (never in production)"
    } else if text.contains("without TLS support") {
        "; this build has no TLS"
    } else {
        ""
    };
    StoreError::Connect(format!(
        "cannot connect to PostgreSQL at {}: {text}{hint}",
        target.describe
    ))
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `%XX` escapes, as URLs carry paths with spaces or `&`.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file() -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("tessera-pg-tls-{}.pem", std::process::id()));
        std::fs::write(&path, "not checked here").unwrap();
        path
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        let ca = ca_file();
        let url = format!(
            "postgres://u@db/x?sslmode=require&sslrootcert={}",
            ca.display()
        );
        let target = connect_options(&url).unwrap();
        assert!(matches!(target.options.get_ssl_mode(), PgSslMode::VerifyCa));
        assert!(
            target.describe.contains("sslmode=verify-ca"),
            "{}",
            target.describe
        );
        let plain = connect_options("postgres://u@db/x?sslmode=require").unwrap();
        assert!(matches!(plain.options.get_ssl_mode(), PgSslMode::Require));
    }

    /// Loopback and Unix sockets with no sslmode: in the clear; anywhere else, or with
    /// an sslmode given, as libpq (`prefer` by default).
    #[test]
    fn a_local_database_named_without_sslmode_is_reached_in_the_clear() {
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("PGSSL")) {
            return;
        }
        let mode = |url: &str| connect_options(url).unwrap().options.get_ssl_mode();
        for local in [
            "postgres://u@127.0.0.1/x",
            "postgres://u@127.1.2.3:5433/x",
            "postgres://u@[::1]/x",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/x",
        ] {
            assert!(matches!(mode(local), PgSslMode::Disable), "{local}");
        }
        assert!(matches!(mode("postgres://u@db/x"), PgSslMode::Prefer));
        assert!(matches!(
            mode("postgres://u@localhost/x"),
            PgSslMode::Prefer
        ));
        let ca = ca_file();
        let with_ca = format!("postgres://u@127.0.0.1/x?sslrootcert={}", ca.display());
        assert!(
            !matches!(mode(&with_ca), PgSslMode::Disable),
            "a CA given means TLS"
        );
        assert!(matches!(mode("postgres://u@10.0.0.5/x"), PgSslMode::Prefer));
        assert!(matches!(
            mode("postgres://u@127.0.0.1/x?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@localhost/x?sslmode=prefer"),
            PgSslMode::Prefer
        ));
    }

    #[test]
    fn a_missing_root_certificate_names_the_file() {
        let err = connect_options(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn system_roots_need_verify_full() {
        let target =
            connect_options("postgres://u:pw@db:6432/x?sslmode=verify-full&sslrootcert=system")
                .unwrap();
        assert!(matches!(
            target.options.get_ssl_mode(),
            PgSslMode::VerifyFull
        ));
        assert_eq!(
            target.describe,
            "db:6432/x (sslmode=verify-full, sslrootcert=system)"
        );
        let err = connect_options("postgres://u@db/x?sslmode=require&sslrootcert=system")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs sslmode=verify-full"), "{err}");
    }

    #[test]
    fn the_description_never_holds_the_password() {
        let target = connect_options("postgres://user:hunter2@db/x?sslmode=disable").unwrap();
        assert!(!target.describe.contains("hunter2"), "{}", target.describe);
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("/etc/my%20ca%26.pem"), "/etc/my ca&.pem");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
