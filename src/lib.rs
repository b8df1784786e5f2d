//! Tessera: an authorization server for the hybrid token pattern. Short-lived JWT
//! access tokens verified offline; long-lived, rotating, revocable refresh tokens.
//!
//! Features: `server` (default) is the authorization server; `verify` alone is the
//! verifier for backend services, with no server, database or password-hashing code.

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod passwords;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tokens;
#[cfg(feature = "server")]
pub mod transport;
pub mod verify;

/// Property tests run few cases by default (CI time); `PROPTEST_CASES=N` runs more.
#[cfg(test)]
pub(crate) fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default_cases),
        // Shrunk failures are printed; no regression files written into src/.
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
