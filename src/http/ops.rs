//! Operators: liveness, readiness and metrics.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::metrics::{HttpLabels, RouteLabels};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Not merged into the main router when that listener is open to the network without a
/// token: metrics then have their own loopback listener.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is up")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness answers within this long, whatever the store does.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Ready when a write to the store commits (a read-only failover target or a full disk
/// is not ready), within a second, and not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "A write to the store commits"), (status = 503, description = "Store unavailable, read-only or full; or shutting down (Retry-After)", body = crate::http::error::Body)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable(5));
    }
    let store = &state.auth.store;
    state.auth.metrics.readiness_checks.inc();
    match tokio::time::timeout(READY_WITHIN, store.ready(super::extract::now())).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ok", "store": store.backend()}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::unavailable(2))
        }
        Err(_) => {
            tracing::warn!("readiness check timed out");
            Err(ApiError::unavailable(2))
        }
    }
}

/// Prometheus text format; behind a bearer token when one is configured.
#[utoipa::path(get, path = "/metrics", tag = "ops", description = "Prometheus text format; a bearer token if TESSERA_METRICS_TOKEN is set. On a listener that is not loopback and with no token, 404 here: metrics are then served on TESSERA_METRICS_LISTEN (loopback by default) only.", responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text"), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 404, description = "Not served on this listener (see TESSERA_METRICS_LISTEN)", body = crate::http::error::Body)))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let same = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
            ));
        }
    }
    let (in_use, idle) = state.auth.store.pool_stats();
    let body = state.auth.metrics.render(in_use, idle);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Counts every request by its route template (never the raw path: ids would explode
/// the label space) and times it.
pub async fn record_metrics(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Label values come from a fixed set: a client inventing methods must not be able to
    // grow the metrics without bound (routes are templates, already bounded).
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let started = std::time::Instant::now();
    // Probes and scrapes are not traffic that password hashing should make room for,
    // nor are throttled refusals (a flood of them would halve the logins of everyone else).
    let response = if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        next.run(request).await
    } else {
        state
            .auth
            .passwords
            .track_when(next.run(request), |r: &Response| {
                r.status() != axum::http::StatusCode::TOO_MANY_REQUESTS
            })
            .await
    };
    let m = &state.auth.metrics;
    m.http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method,
            status: response.status().as_u16(),
        })
        .inc();
    m.http_latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// 431 when the request's headers are larger than allowed in total.
pub async fn limit_headers(max: usize, request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > max {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request headers are too large",
        )
        .into_response();
    }
    next.run(request).await
}

/// 408 in the API's error shape (with `Retry-After`) when the handler has not answered
/// within `limit`. The store's statement timeout is shorter, so by then no statement of
/// this request is left running.
pub async fn time_limit(limit: std::time::Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long; try again",
        )
        .retry_after(1)
        .into_response(),
    }
}
