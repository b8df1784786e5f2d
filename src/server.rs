//! Start-up: open and migrate the store, resolve the secret key, make sure a signing
//! key exists, build the state, and serve until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::auth::KeyPolicy;
use crate::auth::{Auth, AuthParts, Policy};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::passwords::Passwords;
use crate::store::{self, Store, StoreError};
use crate::tokens::access::AccessTokens;
use crate::tokens::keys::{KeyError, SecretKey, SharedSecret};
use crate::transport::{self, Limits, Timeouts};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "TESSERA_SECRET_KEY is required with PostgreSQL, so that every instance can read the shared signing keys. Make one with: head -c 32 /dev/urandom | base64"
    )]
    SecretKeyRequired,
    #[error("TESSERA_SECRET_KEY: {0}")]
    SecretKey(KeyError),
    #[error("secret key file {path}: {source}")]
    SecretKeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("signing keys: {0}")]
    Keys(KeyError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn unix_now() -> i64 {
    crate::http::extract::now()
}

/// Opens the configured store and applies pending migrations.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let url = config.database_url.expose_secret();
    let store = store::connect(
        url,
        store::PoolSettings {
            max_connections: config.database_max_connections,
            acquire_timeout: Duration::from_millis(u64::from(config.database_acquire_timeout_ms)),
            statement_timeout: Duration::from_millis(u64::from(
                config.database_statement_timeout_ms,
            )),
            rotation_batch: config.database_rotation_batch as usize,
        },
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// The configured secret key; with SQLite and none configured, the one kept beside
/// the database file (generated on first start).
fn secret_key(config: &Config, backend: &str) -> Result<SecretKey, StartError> {
    let configured = config.secret_key.expose_secret();
    if !configured.trim().is_empty() {
        return SecretKey::parse(configured).map_err(StartError::SecretKey);
    }
    if backend != "sqlite" {
        return Err(StartError::SecretKeyRequired);
    }
    let Some(db) = store::sqlite_path(config.database_url.expose_secret()) else {
        tracing::warn!(
            "no TESSERA_SECRET_KEY and an in-memory database: using a throwaway secret key"
        );
        return Ok(SecretKey::generate());
    };
    let beside = db.with_file_name("secret.key");
    let path = match config.secret_key_path.trim() {
        "" => beside,
        // A key kept beside the database before secret_key_path named another place is
        // still the key (its signing keys need it): used, with a warning, not replaced.
        configured if !std::path::Path::new(configured).exists() && beside.exists() => {
            tracing::warn!(
                found = %beside.display(),
                wanted = ?configured,
                "TESSERA_SECRET_KEY_PATH: the secret key is beside the database; move it there, so that one backup does not hold both"
            );
            beside
        }
        configured => std::path::PathBuf::from(configured),
    };
    let file_err = |source| StartError::SecretKeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretKey::parse(&text).map_err(StartError::SecretKey),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                store::create_data_dir(dir).map_err(file_err)?;
            }
            let key = SecretKey::generate();
            write_private(&path, &key.to_base64()).map_err(file_err)?;
            tracing::warn!(path = %path.display(), "no TESSERA_SECRET_KEY set: generated one into the data folder; back it up, or set TESSERA_SECRET_KEY");
            Ok(key)
        }
        Err(e) => Err(file_err(e)),
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// The key policy the configuration asks for.
fn key_policy(config: &Config, secret: SecretKey) -> Result<KeyPolicy, StartError> {
    let alg = config
        .signing_alg
        .parse::<jsonwebtoken::Algorithm>()
        .map_err(|_| {
            StartError::Other(format!(
                "TESSERA_SIGNING_ALG: unsupported {:?}",
                config.signing_alg
            ))
        })?;
    let hs256 = (alg == jsonwebtoken::Algorithm::HS256)
        .then(|| SharedSecret(config.hs256_secret.expose_secret().as_bytes().to_vec()));
    Ok(KeyPolicy {
        secret,
        alg,
        hs256,
        rotation_secs: i64::from(config.key_rotation_days) * 86_400,
        publish_lead_secs: i64::from(config.jwks_max_age_secs)
            + 2 * i64::from(config.key_reload_secs),
        reload_secs: i64::from(config.key_reload_secs),
    })
}

/// Everything a running server holds.
pub async fn build_state(config: &Config) -> Result<AppState, StartError> {
    // The secret key is checked before the database is touched.
    let backend = store::backend_of(config.database_url.expose_secret()).ok_or_else(|| {
        StartError::Other("TESSERA_DATABASE_URL must start with sqlite: or postgres://".into())
    })?;
    let secret = secret_key(config, backend)?;
    let dpop = crate::auth::DpopPolicy::new(
        config.dpop_require_nonce,
        &secret.derive("tessera dpop nonces"),
    );
    let refresh_mac =
        crate::tokens::refresh::RefreshMac::new(&secret.derive("tessera refresh-token tags"));
    let store = open_store(config).await?;
    let key_policy = key_policy(config, secret)?;
    let keys = crate::auth::keys::bootstrap(store.as_ref(), &key_policy, unix_now())
        .await
        .map_err(|e| StartError::Other(format!("signing keys: {e}")))?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let throttle = crate::auth::ThrottlePolicy {
        enabled: config.login_throttle == "on",
        per_address: i64::from(config.login_attempts_per_address),
        failures_before_backoff: i64::from(config.login_failures_before_backoff),
        backoff_max_secs: i64::from(config.login_backoff_max_secs),
        account_ceiling: i64::from(config.login_account_ceiling),
        signups_per_address: i64::from(config.signup_attempts_per_address),
    };
    let passwords = Passwords::new(
        config.password_hash_slots(),
        usize::from(config.password_hash_spare_slots),
        Duration::from_millis(u64::from(config.password_hash_queue_timeout_ms)),
        Some(metrics.argon2_wait.clone()),
    )
    .await
    .map_err(|e| StartError::Other(e.to_string()))?;
    let access = AccessTokens::new(
        &config.issuer,
        &config.audience,
        i64::from(config.access_token_ttl_secs),
    );
    let policy = Policy {
        refresh_token_ttl: i64::from(config.refresh_token_ttl_secs),
        session_max_age: i64::from(config.session_max_age_secs),
        refresh_grace: i64::from(config.refresh_grace_secs),
        refresh_grace_max_replays: i64::from(config.refresh_grace_max_replays),
        signup_enabled: config.signup_enabled,
        max_sessions_per_user: i64::from(config.max_sessions_per_user),
    };
    let feed = crate::http::feed::FeedHub::new(
        store.clone(),
        metrics.clone(),
        crate::http::feed::StreamLimits {
            per_client: config.revocation_streams_per_client as usize,
            total: config.revocation_streams_max as usize,
        },
        Duration::from_secs(u64::from(config.revocation_resync_secs)),
    );
    let janitor = crate::auth::JanitorPolicy {
        keep_after_secs: i64::from(config.prune_after_secs),
        audit_retention_secs: i64::from(config.audit_retention_days) * 86_400,
        batch: i64::from(config.janitor_batch),
        pause: Duration::from_millis(20),
    };
    let readiness = http::Readiness::new(
        store.clone(),
        metrics.clone(),
        Duration::from_millis(u64::from(config.readiness_cache_ms)),
    );
    Ok(AppState {
        feed,
        readiness,
        auth: Arc::new(Auth::new(AuthParts {
            janitor,
            store,
            passwords,
            access,
            keys,
            key_policy,
            policy,
            throttle,
            metrics,
            default_client_scopes: config.default_client_scopes.clone(),
            dpop,
            refresh_mac,
        })),
        issuer: config.issuer.as_str().into(),
        jwks_max_age_secs: config.jwks_max_age_secs,
        trusted_proxies: crate::http::client_addr::parse_proxies(&config.trusted_proxies)
            .map_err(|bad| StartError::Other(format!("TESSERA_TRUSTED_PROXIES: {bad:?}")))?
            .into(),
        metrics_token: Some(config.metrics_token.expose_secret().to_owned())
            .filter(|t| !t.is_empty())
            .map(Into::into),
        draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        browser: Arc::new(http::browser::Browser {
            secure: config.cookie_secure,
            same_site: config.cookie_samesite,
            allowed_origins: config.cors_origins(),
        }),
    })
}

/// Connections the metrics listener holds at most: a scraper or two.
const METRICS_CONNECTIONS: usize = 16;

/// A server bound to its address, ready to serve.
pub struct Server {
    listener: TcpListener,
    /// Only when the main listener does not answer `/metrics` (see `metrics_listen`).
    metrics_listener: Option<TcpListener>,
    state: AppState,
    http: http::HttpSettings,
    limits: Limits,
    key_reload: Duration,
    janitor_interval: Duration,
    drain: Duration,
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// Settings that work but leave a door open: one warning each at start-up, naming the
/// key. TLS to a database on another host that checks no certificate (`sslmode`
/// other than `verify-full`; left out, it is `prefer`), and trusted-proxy ranges that
/// reach past the site (`0.0.0.0/0`: every caller picks its own address for the
/// login throttle and the audit log).
fn warn_about_traps(config: &Config) {
    if let Some((host, mode)) = unverified_database_tls(config.database_url.expose_secret()) {
        tracing::warn!(
            host = ?host,
            sslmode = mode,
            "TESSERA_DATABASE_URL: TLS to a database on another host without sslmode=verify-full: anyone on the path can read or change the traffic (sslmode=prefer, the default, even turns TLS off); use sslmode=verify-full (README: Production checklist)"
        );
    }
    let wide: Vec<String> = crate::http::client_addr::parse_proxies(&config.trusted_proxies)
        .unwrap_or_default()
        .iter()
        .filter(|c| c.covers_public_networks())
        .map(ToString::to_string)
        .collect();
    if !wide.is_empty() {
        tracing::warn!(
            ranges = %wide.join(","),
            "TESSERA_TRUSTED_PROXIES trusts public networks: any caller there can set X-Forwarded-For to any address, escaping the login throttle per address and writing what it likes into the audit log; list your load balancers' addresses only"
        );
    }
}

/// For a PostgreSQL URL to a host that is not this machine and whose `sslmode` does
/// not check the server's name: the host and the mode.
fn unverified_database_tls(url: &str) -> Option<(String, &'static str)> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    if !url.starts_with("postgres") {
        return None;
    }
    let options = url.parse::<PgConnectOptions>().ok()?;
    let host = options.get_host().to_owned();
    let local = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mode = match options.get_ssl_mode() {
        PgSslMode::VerifyFull => return None,
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
    };
    (!local).then_some((host, mode))
}

/// The configured connection cap, lowered to fit the open-file limit (raised to its
/// hard maximum first): descriptors must never run out, or nobody gets in.
fn connection_cap(config: &Config) -> usize {
    let wanted = u64::from(config.max_connections);
    // Two listeners' extras, the database pool, and 64 for files, logs and the runtime.
    let extras = METRICS_CONNECTIONS + 2 * transport::BEYOND_CAP + 64;
    let reserve = u64::from(config.database_max_connections) + extras as u64;
    let cap = match transport::connection_room(reserve) {
        Some(room) if room < wanted => {
            tracing::warn!(
                max_connections = wanted,
                lowered_to = room,
                "max_connections (TESSERA_MAX_CONNECTIONS) does not fit the open-file limit; raise the limit (ulimit -n) or lower the cap"
            );
            room.max(1)
        }
        _ => wanted,
    };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

impl Server {
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        config.check_serve()?;
        warn_about_traps(config);
        let state = build_state(config).await?;
        let trusted_proxies = state.trusted_proxies.clone();
        let listener = listen(config.listen).await?;
        let serve_metrics = config.metrics_on_main_listener();
        let metrics_listener = match config.metrics_listen()? {
            Some(addr) if !serve_metrics => Some(listen(addr).await?),
            _ => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            http: http::HttpSettings {
                max_body_bytes: config.max_body_bytes as usize,
                max_header_bytes: config.max_header_bytes as usize,
                request_timeout: Duration::from_secs(u64::from(config.request_timeout_secs)),
                cors_origins: config.cors_origins(),
                serve_metrics,
            },
            limits: Limits {
                timeouts: Timeouts {
                    header_read: Duration::from_secs(u64::from(config.header_read_timeout_secs)),
                    idle: Duration::from_secs(u64::from(config.idle_timeout_secs)),
                    body_read: Duration::from_secs(u64::from(config.body_read_timeout_secs)),
                },
                max_connections: connection_cap(config),
                per_address: config.max_connections_per_address as usize,
                exempt: trusted_proxies,
                max_header_bytes: config.max_header_bytes as usize,
            },
            drain: Duration::from_secs(u64::from(config.shutdown_drain_secs)),
            key_reload: Duration::from_secs(u64::from(config.key_reload_secs)),
            janitor_interval: Duration::from_secs(u64::from(config.janitor_interval_secs)),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))
    }

    /// The separate metrics listener's address, when it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let keeper = tokio::spawn(keep_keys(self.state.auth.clone(), self.key_reload));
        let _stop_keeper = AbortOnDrop(keeper);
        let _stop_feed = AbortOnDrop(tokio::spawn(self.state.feed.clone().run()));
        let _stop_janitor = (!self.janitor_interval.is_zero()).then(|| {
            AbortOnDrop(tokio::spawn(janitor(
                self.state.auth.clone(),
                self.janitor_interval,
            )))
        });
        let app = http::router(self.state.clone(), &self.http);
        // Readiness turns 503 first, so load balancers stop sending; then the listener
        // closes and in-flight requests finish.
        let (draining, drain) = (self.state.draining.clone(), self.drain);
        let feed = self.state.feed.clone();
        let shutdown = async move {
            shutdown.await;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            // Revocation streams never end by themselves: end them, so verifiers
            // reconnect to another instance and in-flight requests can finish.
            feed.close();
            tracing::info!(drain_secs = drain.as_secs(), "draining: readiness is 503");
            tokio::time::sleep(drain).await;
        };
        // The metrics listener stops with the main one.
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = self.metrics_listener.map(|listener| {
            let limits = Limits {
                max_connections: METRICS_CONNECTIONS,
                ..self.limits.clone()
            };
            let app = http::metrics_router(self.state.clone());
            tokio::spawn(transport::serve(listener, app, limits, async move {
                let _ = metrics_stopped.await;
            }))
        });
        transport::serve(self.listener, app, self.limits, shutdown).await;
        let _ = stop_metrics.send(());
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        Ok(())
    }
}

/// Every `period`, the janitor's run (see `auth::janitor`); every minute, the DPoP
/// proofs remembered against replay that are now too old to matter.
async fn janitor(auth: Arc<Auth>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut proofs = tokio::time::interval(Duration::from_secs(60));
    proofs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    proofs.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let report = auth.prune(unix_now()).await;
                tracing::debug!(?report, "janitor run");
            }
            _ = proofs.tick() => {
                let what = [crate::store::Prunable::DpopProofs];
                let report = auth.prune_kinds(&what, unix_now()).await;
                tracing::debug!(?report, "DPoP proofs pruned");
            }
        }
    }
}

/// Every instance, every `period`: rotate the signing key if it is due (only one
/// instance succeeds) and re-read the keys so rotations made anywhere take effect.
async fn keep_keys(auth: Arc<Auth>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = unix_now();
        if let Err(e) = auth.rotate_keys(now, false).await {
            tracing::warn!(error = %e, "signing key rotation check failed");
        }
        if let Err(e) = auth.reload_keys(now).await {
            tracing::warn!(error = %e, "signing key reload failed; keeping the current keys");
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
