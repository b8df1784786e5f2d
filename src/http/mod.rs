//! The HTTP interface: one module per audience, merged here.

mod account;
mod admin;
pub mod error;
pub mod extract;
mod oauth;
mod ops;
mod services;
mod wellknown;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Auth;
use crate::store::Session;

pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Auth>,
    pub issuer: Arc<str>,
    pub jwks_max_age_secs: u32,
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(oauth::router())
        .merge(account::router())
        .merge(admin::router())
        .merge(services::router())
        .merge(wellknown::router())
        .merge(ops::router())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// RFC 3339 for the API's timestamps (the store keeps Unix seconds).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A session as users and admins see it.
#[derive(Serialize)]
pub struct SessionView {
    pub id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub client_id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub current: bool,
}

impl SessionView {
    pub fn new(s: Session, current: Option<uuid::Uuid>) -> Self {
        Self {
            current: current == Some(s.id),
            id: s.id,
            user_id: s.user_id,
            client_id: s.client_id,
            created_at: rfc3339(s.created_at),
            last_used_at: rfc3339(s.last_used_at),
            expires_at: rfc3339(s.expires_at),
            user_agent: s.user_agent,
            ip: s.ip,
        }
    }
}
