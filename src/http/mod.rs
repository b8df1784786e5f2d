//! The HTTP interface: one module per audience, merged here.

mod account;
mod admin;
pub mod browser;
pub mod client_addr;
pub mod error;
pub mod extract;
pub mod feed;
mod hygiene;
mod oauth;
pub mod openapi;
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
pub use ops::Readiness;

#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Auth>,
    pub issuer: Arc<str>,
    pub jwks_max_age_secs: u32,
    pub trusted_proxies: Arc<[client_addr::Cidr]>,
    /// If set, `/metrics` wants it as a bearer token.
    pub metrics_token: Option<Arc<str>>,
    /// Set on shutdown: readiness answers 503 while in-flight requests finish.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The store's readiness, checked once for all `/readyz` callers.
    pub readiness: Arc<Readiness>,
    /// The revocation feed's one reader and its streams.
    pub feed: Arc<feed::FeedHub>,
    /// The refresh cookie and its CSRF rule.
    pub browser: Arc<browser::Browser>,
}

/// Transport limits and browser access, from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub request_timeout: std::time::Duration,
    pub cors_origins: Vec<String>,
    /// Whether this listener answers `/metrics` (see `Config::metrics_on_main_listener`).
    pub serve_metrics: bool,
}

pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    use axum::http::header;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::sensitive_headers::{
        SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
    };
    use tower_http::trace::{DefaultOnResponse, TraceLayer};

    let request_id = header::HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &axum::http::Request<axum::body::Body>| {
            // Plain by now (`hygiene::plain_request_ids`). Values recorded as `&str` are
            // quoted and escaped in text logs, so no caller can add fields of their own.
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            // The path only (a query string is the client's to keep out of our logs),
            // and not 64 KiB of it.
            let path = hygiene::bounded(request.uri().path(), hygiene::MAX_LOGGED_PATH);
            tracing::info_span!(
                "request",
                request_id = id,
                method = request.method().as_str(),
                path = &*path
            )
        })
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    let request_timeout = settings.request_timeout;
    let mut app = Router::new()
        .merge(oauth::router())
        .merge(account::router())
        .merge(admin::router())
        .merge(services::router())
        .merge(wellknown::router())
        .merge(ops::router())
        .merge(if settings.serve_metrics {
            ops::metrics_router(true)
        } else {
            Router::new()
        })
        .merge(openapi::router())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::map_response(slow_refusals))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::record_metrics,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            ops::time_limit(request_timeout, req, next)
        }));
    if !settings.cors_origins.is_empty() {
        app = app.layer(cors(&settings.cors_origins));
    }
    let max_header_bytes = settings.max_header_bytes;
    let https = state.issuer.starts_with("https://");
    app.layer(axum::middleware::from_fn(move |req, next| {
        ops::limit_headers(max_header_bytes, req, next)
    }))
    .layer(PropagateRequestIdLayer::new(request_id.clone()))
    .layer(trace)
    .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
    .layer(axum::middleware::map_request(hygiene::plain_request_ids))
    // Outermost: every answer, refusals by the layers above included.
    .layer(axum::middleware::map_response(move |r| async move {
        hygiene::security_headers(https, r)
    }))
    .layer(SetSensitiveRequestHeadersLayer::new([
        header::AUTHORIZATION,
        header::COOKIE,
        header::PROXY_AUTHORIZATION,
        header::HeaderName::from_static("dpop"),
    ]))
    .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
    .with_state(state)
}

/// The metrics listener: `/metrics` alone, reachable only where the operator bound it.
pub fn metrics_router(state: AppState) -> Router {
    ops::metrics_router(false)
        .fallback(|| async { ApiError::not_found() })
        .layer(axum::middleware::map_response(|r| async move {
            hygiene::security_headers(false, r)
        }))
        .with_state(state)
}

/// A throttled request (429) is answered after this delay. A client honouring
/// `Retry-After` (at least a second) waits a second more; one that ignores it, a flood,
/// gets an answer a second per connection instead of thousands, so its refusals cannot
/// take the CPU that password hashing (at the lowest priority) needs for everyone else.
const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

async fn slow_refusals(response: axum::response::Response) -> axum::response::Response {
    if response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
        tokio::time::sleep(REFUSAL_DELAY).await;
    }
    response
}

/// Credentials (the refresh cookie) cross origins only to the listed ones, and only
/// with the CSRF header allowed, so that a cookie request from them passes the check.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static(browser::CSRF_HEADER),
            header::HeaderName::from_static("dpop"),
        ])
        .allow_credentials(true)
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            header::HeaderName::from_static(error::DPOP_NONCE),
            header::WWW_AUTHENTICATE,
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// RFC 3339 for the API's timestamps (the store keeps Unix seconds).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A session as users and admins see it.
#[derive(Serialize, utoipa::ToSchema)]
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
