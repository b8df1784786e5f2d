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
    pub secret_key: SecretString,
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
    pub trusted_proxies: String,
    pub cors_allowed_origins: String,
    pub metrics_token: SecretString,
    pub log_format: String,
    pub shutdown_drain_secs: u32,
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
    pub log: String,
    pub default_client_scopes: String,
    pub cookie_secure: bool,
    pub cookie_samesite: crate::http::browser::SameSite,
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
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if u64::from(self.database_statement_timeout_ms)
            >= u64::from(self.request_timeout_secs) * 1000
        {
            return Err(invalid(
                "database_statement_timeout_ms (TESSERA_DATABASE_STATEMENT_TIMEOUT_MS)",
                "must be below request_timeout_secs: a request that gives up must find its statement cancelled, not queued to commit later",
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

    /// Password hashes allowed at once: the configured number, or one per core.
    pub fn password_hash_slots(&self) -> usize {
        match self.password_hash_concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => usize::from(n),
        }
    }
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
}
