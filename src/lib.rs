//! Tessera: an authorization server for the hybrid token pattern. Short-lived JWT
//! access tokens verified offline; long-lived, rotating, revocable refresh tokens.

pub mod auth;
pub mod config;
pub mod http;
pub mod passwords;
pub mod server;
pub mod store;
pub mod tokens;
