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

/// `good` with one character replaced (`edit` 0), inserted (1) or removed (2) at `at`:
/// the property tests that every edit of a signed token or proof is refused.
#[cfg(test)]
pub(crate) fn edit_one(good: &str, at: proptest::sample::Index, c: char, edit: u8) -> String {
    let mut chars: Vec<char> = good.chars().collect();
    let i = at.index(chars.len());
    match edit {
        0 => chars[i] = c,
        1 => chars.insert(i, c),
        _ => {
            chars.remove(i);
        }
    }
    chars.into_iter().collect()
}

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
