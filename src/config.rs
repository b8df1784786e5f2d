//! Configuration in layers: `config/default.toml` (built in, documents every key),
//! then the file named by `TESSERA_CONFIG`, then `TESSERA_*` environment variables.
//!
//! Every layer is checked against the keys and types of the defaults, so a typo
//! or a bad value stops start-up with a message naming the key.

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "TESSERA_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("config: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The server's settings, after every layer has been applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: SecretString,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl_secs: u32,
    pub refresh_token_ttl_secs: u32,
    pub session_max_age_secs: u32,
    pub refresh_grace_secs: u32,
    pub refresh_grace_max_replays: u32,
    pub signup_enabled: bool,
    pub max_sessions_per_user: u32,
    pub secret_key: SecretString,
    pub secret_key_path: String,
    pub signing_alg: String,
    pub allow_hs256: bool,
    pub hs256_secret: SecretString,
    pub key_rotation_days: u32,
    pub jwks_max_age_secs: u32,
    pub key_reload_secs: u32,
    pub password_hash_concurrency: u16,
    pub password_hash_spare_slots: u16,
    pub password_hash_queue_timeout_ms: u32,
    pub max_body_bytes: u32,
    pub max_header_bytes: u32,
    pub request_timeout_secs: u32,
    pub login_throttle: String,
    pub login_attempts_per_address: u32,
    pub login_failures_before_backoff: u32,
    pub login_backoff_max_secs: u32,
    pub login_account_ceiling: u32,
    pub signup_attempts_per_address: u32,
    pub trusted_proxies: String,
    pub cors_allowed_origins: String,
    pub metrics_token: SecretString,
    pub log_format: String,
    pub shutdown_drain_secs: u32,
    pub readiness_cache_ms: u32,
    pub revocation_streams_per_client: u32,
    pub revocation_streams_max: u32,
    pub revocation_resync_secs: u32,
    pub janitor_interval_secs: u32,
    pub janitor_batch: u32,
    pub prune_after_secs: u32,
    pub audit_retention_days: u32,
    pub database_acquire_timeout_ms: u32,
    pub database_statement_timeout_ms: u32,
    pub database_max_connections: u32,
    pub database_rotation_batch: u32,
    pub log: String,
    pub default_client_scopes: String,
    pub header_read_timeout_secs: u32,
    pub idle_timeout_secs: u32,
    pub body_read_timeout_secs: u32,
    pub max_connections_per_address: u32,
    pub max_connections: u32,
    pub metrics_listen: String,
    pub cookie_secure: bool,
    pub cookie_samesite: crate::http::browser::SameSite,
    pub dpop_require_nonce: bool,
    /// Whether `issuer` was left empty and made from `listen` (see [`Config::check_serve`]).
    #[serde(skip)]
    pub issuer_from_listen: bool,
}

impl Config {
    /// Reads the layers from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(std::env::vars())
    }

    /// Builds the config from the built-in defaults, an optional `TESSERA_CONFIG` file and
    /// the given `TESSERA_*` variables. Taking the variables as a parameter keeps tests
    /// and embedders free of process-global state.
    pub fn load(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(DEFAULTS).map_err(|e| invalid("default.toml", e.to_string()))?;
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let vars = read_secret_files(vars, &table)?;

        if let Some((_, path)) = vars.iter().find(|(k, _)| k == "TESSERA_CONFIG") {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: toml::Table =
                toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
            for (key, value) in file {
                overlay(&mut table, &key, value)?;
            }
        }
        for (name, raw) in &vars {
            if name == "TESSERA_CONFIG" {
                continue;
            }
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let Some(default) = table.get(&key) else {
                // Other TESSERA_* variables (e.g. the test suite's) are not ours to judge.
                continue;
            };
            let value = parse_like(default, raw).map_err(|m| invalid(name, m))?;
            table.insert(key, value);
        }

        let mut config: Config = match table.clone().try_into() {
            Ok(config) => config,
            Err(e) => return Err(blame(&table, &e)),
        };
        config.finish()?;
        Ok(config)
    }

    fn finish(&mut self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() {
            self.issuer = format!("http://{}", self.listen);
            self.issuer_from_listen = true;
        }
        if self.audience.is_empty() {
            self.audience = self.issuer.clone();
        }
        let positive = [
            ("access_token_ttl_secs", self.access_token_ttl_secs),
            ("refresh_token_ttl_secs", self.refresh_token_ttl_secs),
            ("session_max_age_secs", self.session_max_age_secs),
            ("max_body_bytes", self.max_body_bytes),
            ("database_max_connections", self.database_max_connections),
            ("key_reload_secs", self.key_reload_secs),
            ("max_header_bytes", self.max_header_bytes),
            ("request_timeout_secs", self.request_timeout_secs),
            (
                "login_attempts_per_address",
                self.login_attempts_per_address,
            ),
            ("login_account_ceiling", self.login_account_ceiling),
            (
                "signup_attempts_per_address",
                self.signup_attempts_per_address,
            ),
            (
                "database_acquire_timeout_ms",
                self.database_acquire_timeout_ms,
            ),
            ("revocation_resync_secs", self.revocation_resync_secs),
            (
                "database_statement_timeout_ms",
                self.database_statement_timeout_ms,
            ),
            ("janitor_batch", self.janitor_batch),
            ("audit_retention_days", self.audit_retention_days),
            ("max_sessions_per_user", self.max_sessions_per_user),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if u64::from(self.database_acquire_timeout_ms)
            + u64::from(self.database_statement_timeout_ms)
            >= u64::from(self.request_timeout_secs) * 1000
        {
            return Err(invalid(
                "database_statement_timeout_ms (TESSERA_DATABASE_STATEMENT_TIMEOUT_MS)",
                "with database_acquire_timeout_ms it must stay below request_timeout_secs: a request that gives up must find its statement cancelled, not queued to commit later",
            ));
        }
        // A session is deleted this long after it ended: its access tokens must have
        // expired by then, or introspection could not tell them apart from unknown ones.
        let token_tail = u64::from(self.access_token_ttl_secs) + u64::from(self.refresh_grace_secs);
        if u64::from(self.prune_after_secs) <= token_tail {
            return Err(invalid(
                "prune_after_secs (TESSERA_PRUNE_AFTER_SECS)",
                format!(
                    "must exceed the access-token lifetime plus the grace window ({token_tail} s)"
                ),
            ));
        }
        self.check_transport()?;
        if !matches!(self.login_throttle.as_str(), "on" | "off") {
            return Err(invalid(
                "login_throttle (TESSERA_LOGIN_THROTTLE)",
                "must be on or off",
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "log_format (TESSERA_LOG_FORMAT)",
                "must be text or json",
            ));
        }
        self.default_client_scopes =
            crate::auth::normalize_scope(Some(&self.default_client_scopes)).map_err(|e| {
                invalid(
                    "default_client_scopes (TESSERA_DEFAULT_CLIENT_SCOPES)",
                    e.to_string(),
                )
            })?;
        crate::http::client_addr::parse_proxies(&self.trusted_proxies).map_err(|bad| {
            invalid(
                "trusted_proxies (TESSERA_TRUSTED_PROXIES)",
                format!("{bad:?} is not an IP or CIDR"),
            )
        })?;
        if self.cookie_samesite == crate::http::browser::SameSite::None && !self.cookie_secure {
            return Err(invalid(
                "cookie_samesite (TESSERA_COOKIE_SAMESITE)",
                "None needs cookie_secure (browsers drop SameSite=None cookies without Secure)",
            ));
        }
        for origin in self.cors_origins() {
            if origin.parse::<axum::http::HeaderValue>().is_err() || !origin.starts_with("http") {
                return Err(invalid(
                    "cors_allowed_origins (TESSERA_CORS_ALLOWED_ORIGINS)",
                    format!("{origin:?} is not an origin"),
                ));
            }
        }
        match self.signing_alg.as_str() {
            "EdDSA" | "ES256" | "RS256" => {}
            "HS256" if !self.allow_hs256 => {
                return Err(invalid(
                    "signing_alg (TESSERA_SIGNING_ALG)",
                    "HS256 lets every verifier mint tokens; set TESSERA_ALLOW_HS256=true to opt in",
                ));
            }
            "HS256" if self.hs256_secret.expose_secret().len() < 32 => {
                return Err(invalid(
                    "hs256_secret (TESSERA_HS256_SECRET)",
                    "must be at least 32 bytes",
                ));
            }
            "HS256" => {}
            other => {
                return Err(invalid(
                    "signing_alg (TESSERA_SIGNING_ALG)",
                    format!("{other:?} is not one of EdDSA, ES256, RS256, HS256"),
                ));
            }
        }
        Ok(())
    }

    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The connection limits are all needed: a zero would lock everyone out.
    fn check_transport(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "header_read_timeout_secs (TESSERA_HEADER_READ_TIMEOUT_SECS)",
                self.header_read_timeout_secs,
            ),
            (
                "idle_timeout_secs (TESSERA_IDLE_TIMEOUT_SECS)",
                self.idle_timeout_secs,
            ),
            (
                "body_read_timeout_secs (TESSERA_BODY_READ_TIMEOUT_SECS)",
                self.body_read_timeout_secs,
            ),
            (
                "max_connections (TESSERA_MAX_CONNECTIONS)",
                self.max_connections,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        self.metrics_listen().map(drop)
    }

    /// The separate metrics address, if one is configured ("" turns it off).
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let raw = self.metrics_listen.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        raw.parse().map(Some).map_err(|_| {
            invalid(
                "metrics_listen (TESSERA_METRICS_LISTEN)",
                format!("{raw:?} is not an address such as 127.0.0.1:9090"),
            )
        })
    }

    /// What only `serve` needs (other commands read the same config): a listener that
    /// is not loopback needs an explicit issuer, or every token's `iss` and every
    /// metadata URL would name the bind address (`http://0.0.0.0:8080` in the image),
    /// which no client or verifier can use.
    pub fn check_serve(&self) -> Result<(), ConfigError> {
        if self.issuer_from_listen && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "issuer (TESSERA_ISSUER)",
                format!(
                    "must be set when listening on {} (not loopback): it is every token's iss and the base of every URL in the metadata, so give the public URL clients use, e.g. TESSERA_ISSUER=https://auth.example.com",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Whether the main listener answers `/metrics`: with a token, or when only this
    /// machine can reach it. Otherwise metrics are on `metrics_listen` alone.
    pub fn metrics_on_main_listener(&self) -> bool {
        !self.metrics_token.expose_secret().is_empty() || self.listen.ip().is_loopback()
    }

    /// Password hashes allowed at once: the configured number, or one per core.
    pub fn password_hash_slots(&self) -> usize {
        match self.password_hash_concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => usize::from(n),
        }
    }
}

/// Keys that may also be given as `TESSERA_<KEY>_FILE`, the Docker and Kubernetes
/// secrets convention: a mounted file keeps the secret out of the environment, which
/// `docker inspect`, `/proc/<pid>/environ` and crash reports show.
const SECRET_KEYS: [&str; 4] = [
    "secret_key",
    "database_url",
    "hs256_secret",
    "metrics_token",
];

/// Replaces each `TESSERA_<KEY>_FILE` by `TESSERA_<KEY>` holding the file's text, its
/// trailing newline trimmed (`echo` and most editors add one). Giving both is an error:
/// which one wins would be a guess.
fn read_secret_files(
    mut vars: Vec<(String, String)>,
    defaults: &toml::Table,
) -> Result<Vec<(String, String)>, ConfigError> {
    for key in SECRET_KEYS {
        let name = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
        let file_var = format!("{name}_FILE");
        let Some(path) = vars
            .iter()
            .find(|(k, _)| *k == file_var)
            .map(|(_, v)| v.clone())
        else {
            continue;
        };
        if vars.iter().any(|(k, _)| *k == name) {
            return Err(invalid(
                &name,
                format!("both {name} and {file_var} are set; give one"),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(&file_var, format!("cannot read {path}: {e}")))?;
        vars.retain(|(k, _)| *k != file_var);
        vars.push((name, text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    for (name, _) in &vars {
        let Some(stem) = name.strip_suffix("_FILE") else {
            continue;
        };
        let key = stem[ENV_PREFIX.len()..].to_ascii_lowercase();
        if defaults.contains_key(&key) {
            return Err(invalid(
                name,
                format!(
                    "only secrets can be read from a file ({}); set {stem}",
                    SECRET_KEYS
                        .map(|k| format!("{ENV_PREFIX}{}_FILE", k.to_ascii_uppercase()))
                        .join(", ")
                ),
            ));
        }
    }
    Ok(vars)
}

/// Finds which key a deserialisation error is about (toml does not say for values
/// such as socket addresses), by trying each key alone over the defaults.
fn blame(table: &toml::Table, error: &toml::de::Error) -> ConfigError {
    let message = error.message().to_owned();
    let Ok(defaults) = toml::from_str::<toml::Table>(DEFAULTS) else {
        return invalid("config", message);
    };
    for (key, value) in table {
        let mut alone = defaults.clone();
        alone.insert(key.clone(), value.clone());
        if let Err(e) = alone.try_into::<Config>() {
            let name = format!("{key} ({ENV_PREFIX}{})", key.to_ascii_uppercase());
            return invalid(&name, e.message().to_owned());
        }
    }
    invalid("config", message)
}

fn overlay(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    match table.get(key) {
        None => Err(invalid(key, "unknown key")),
        Some(default) if default.type_str() != value.type_str() => Err(invalid(
            key,
            format!(
                "expected a {}, found a {}",
                default.type_str(),
                value.type_str()
            ),
        )),
        Some(_) => {
            table.insert(key.to_owned(), value);
            Ok(())
        }
    }
}

/// Parses an environment value as the same TOML type as the key's default.
fn parse_like(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match default {
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected a whole number, found {raw:?}")),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, found {raw:?}")),
        },
        _ => Ok(toml::Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_no_configuration() -> Result<(), ConfigError> {
        let config = Config::load(vars(&[]))?;
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.issuer, "http://127.0.0.1:8080");
        assert_eq!(config.audience, config.issuer);
        assert_eq!(config.access_token_ttl_secs, 900);
        assert_eq!(config.refresh_grace_secs, 10);
        Ok(())
    }

    #[test]
    fn environment_overrides_and_bad_values_name_the_key() -> Result<(), ConfigError> {
        let config = Config::load(vars(&[
            ("TESSERA_LISTEN", "0.0.0.0:9000"),
            ("TESSERA_SIGNUP_ENABLED", "false"),
            ("TESSERA_REFRESH_GRACE_SECS", "0"),
        ]))?;
        assert_eq!(config.listen.port(), 9000);
        assert!(!config.signup_enabled);
        assert_eq!(config.refresh_grace_secs, 0);

        let err = Config::load(vars(&[("TESSERA_ACCESS_TOKEN_TTL_SECS", "soon")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("TESSERA_ACCESS_TOKEN_TTL_SECS"), "{err}");
        let err = Config::load(vars(&[("TESSERA_LISTEN", "nowhere")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listen"), "{err}");
        Ok(())
    }

    fn secret_file(text: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "tessera-config-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn secrets_come_from_files_with_the_trailing_newline_trimmed() -> Result<(), ConfigError> {
        let key = "k3y/with+base64==";
        let config = Config::load(vars(&[
            ("TESSERA_SECRET_KEY_FILE", &secret_file(&format!("{key}\n"))),
            (
                "TESSERA_DATABASE_URL_FILE",
                &secret_file("postgres://u:p@db/x\r\n"),
            ),
            (
                "TESSERA_HS256_SECRET_FILE",
                &secret_file("an hs256 secret  "),
            ),
            ("TESSERA_METRICS_TOKEN_FILE", &secret_file("scrape-me")),
        ]))?;
        assert_eq!(config.secret_key.expose_secret(), key);
        assert_eq!(config.database_url.expose_secret(), "postgres://u:p@db/x");
        // Only newlines are trimmed: other whitespace may be part of a secret.
        assert_eq!(config.hs256_secret.expose_secret(), "an hs256 secret  ");
        assert_eq!(config.metrics_token.expose_secret(), "scrape-me");
        Ok(())
    }

    #[test]
    fn a_secret_given_twice_or_unreadable_stops_start_up_naming_the_key() {
        let err = Config::load(vars(&[
            ("TESSERA_SECRET_KEY", "inline"),
            ("TESSERA_SECRET_KEY_FILE", &secret_file("from a file")),
        ]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("TESSERA_SECRET_KEY: both TESSERA_SECRET_KEY and TESSERA_SECRET_KEY_FILE"),
            "{err}"
        );
        assert!(
            !err.contains("inline") && !err.contains("from a file"),
            "no secret in: {err}"
        );

        let err = Config::load(vars(&[(
            "TESSERA_METRICS_TOKEN_FILE",
            "/nonexistent/token",
        )]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("TESSERA_METRICS_TOKEN_FILE: cannot read /nonexistent/token"),
            "{err}"
        );

        let err = Config::load(vars(&[("TESSERA_LISTEN_FILE", &secret_file("0.0.0.0:80"))]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("TESSERA_LISTEN_FILE: only secrets"), "{err}");
    }

    #[test]
    fn default_client_scopes_are_normalised_and_checked() -> Result<(), ConfigError> {
        assert_eq!(Config::load(vars(&[]))?.default_client_scopes, "");
        let config = Config::load(vars(&[(
            "TESSERA_DEFAULT_CLIENT_SCOPES",
            " read  write read",
        )]))?;
        assert_eq!(config.default_client_scopes, "read write");
        let err = Config::load(vars(&[("TESSERA_DEFAULT_CLIENT_SCOPES", "read \"all\"")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("TESSERA_DEFAULT_CLIENT_SCOPES"), "{err}");
        Ok(())
    }

    #[test]
    fn connection_limits_and_the_metrics_address_are_checked_at_start() {
        for (name, bad) in [
            ("TESSERA_HEADER_READ_TIMEOUT_SECS", "0"),
            ("TESSERA_IDLE_TIMEOUT_SECS", "0"),
            ("TESSERA_MAX_CONNECTIONS", "0"),
            ("TESSERA_METRICS_LISTEN", "localhost"),
        ] {
            let err = Config::load(vars(&[(name, bad)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(name), "{name}={bad}: {err}");
        }
        let open = Config::load(vars(&[("TESSERA_LISTEN", "0.0.0.0:8080")])).unwrap();
        assert!(!open.metrics_on_main_listener());
        assert_eq!(
            open.metrics_listen().unwrap(),
            "127.0.0.1:9090".parse().ok()
        );
        let off = Config::load(vars(&[("TESSERA_METRICS_LISTEN", "")])).unwrap();
        assert_eq!(off.metrics_listen().unwrap(), None);
        assert!(off.metrics_on_main_listener(), "loopback: as before");
    }

    #[test]
    fn throttle_limits_must_be_positive() {
        for key in [
            "TESSERA_LOGIN_ACCOUNT_CEILING",
            "TESSERA_SIGNUP_ATTEMPTS_PER_ADDRESS",
        ] {
            let err = Config::load(vars(&[(key, "0")]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let name = key.trim_start_matches("TESSERA_").to_ascii_lowercase();
            assert!(err.contains(&name), "{key}: {err}");
        }
    }
}
