//! Operators: liveness, readiness and metrics.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::{ApiError, AppState};
use crate::metrics::{HttpLabels, RouteLabels};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Not merged into the main router when that listener is open to the network without a
/// token: metrics then have their own loopback listener.
/// `public`: the main listener, where without a token only requests from this machine
/// (not through a proxy) are answered; the metrics listener is where the operator put it.
pub fn metrics_router(public: bool) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(axum::Extension(MetricsListener { public }))
}

/// Which listener a `/metrics` request came in on (see `metrics_router`).
#[derive(Clone, Copy)]
struct MetricsListener {
    public: bool,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is up")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness answers within this long, whatever the store does.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Ready when a write to the store commits (a read-only failover target or a full disk
/// is not ready), within a second, and not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "ops", description = "Checks are shared: one at a time, each answer reused for TESSERA_READINESS_CACHE_MS.", responses((status = 200, description = "A write to the store commits"), (status = 503, description = "Store unavailable, read-only or full; or shutting down (Retry-After)", body = crate::http::error::Body)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable(5));
    }
    if state.readiness.check().await {
        Ok(Json(
            json!({"status": "ok", "store": state.auth.store.backend()}),
        ))
    } else {
        Err(ApiError::unavailable(2))
    }
}

/// The store's readiness, checked once for every caller: anyone can reach `/readyz`,
/// and each check is a database write over one dedicated connection, so callers must
/// not be able to turn their request rate into writes (a flood would queue the
/// orchestrator's own probe past its deadline, and the instance would look down).
/// One check runs at a time, on a task of its own (a caller hanging up does not cancel
/// it); callers meanwhile wait for its result, which is then reused for `cache_for`.
pub struct Readiness {
    store: Arc<dyn crate::store::Store>,
    metrics: Arc<crate::metrics::Metrics>,
    cache_for: Duration,
    inner: std::sync::Mutex<ReadinessInner>,
}

#[derive(Default)]
struct ReadinessInner {
    /// When the last check ended, and whether the store was ready.
    last: Option<(Instant, bool)>,
    /// The check under way: its result, once there is one.
    running: Option<watch::Receiver<Option<bool>>>,
}

impl Readiness {
    pub fn new(
        store: Arc<dyn crate::store::Store>,
        metrics: Arc<crate::metrics::Metrics>,
        cache_for: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            cache_for,
            inner: std::sync::Mutex::default(),
        })
    }

    /// Whether the store is ready: the recent result, or that of the check under way
    /// (started here if there is none).
    pub async fn check(self: &Arc<Self>) -> bool {
        let mut result = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, ready)) = inner.last
                && at.elapsed() < self.cache_for
            {
                return ready;
            }
            match &inner.running {
                // A check whose task is gone (it cannot be, short of a panic) is not
                // waited for: a new one starts.
                Some(running) if running.has_changed().is_ok() => running.clone(),
                _ => {
                    let (done, running) = watch::channel(None);
                    inner.running = Some(running.clone());
                    tokio::spawn(Arc::clone(self).run(done));
                    running
                }
            }
        };
        result
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| *r)
            .unwrap_or(false)
    }

    async fn run(self: Arc<Self>, done: watch::Sender<Option<bool>>) {
        self.metrics.readiness_checks.inc();
        let ready =
            match tokio::time::timeout(READY_WITHIN, self.store.ready(super::extract::now())).await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness check failed");
                    false
                }
                Err(_) => {
                    tracing::warn!("readiness check timed out");
                    false
                }
            };
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.last = Some((Instant::now(), ready));
            inner.running = None;
        }
        let _ = done.send(Some(ready));
    }
}

/// Whether a request reached this listener from this machine directly: a loopback peer,
/// and no forwarding header. Behind a same-host proxy every outside client arrives from
/// loopback, and such a proxy adds `X-Forwarded-For` (or `Forwarded`, `X-Real-IP`); a
/// proxy not listed in `TESSERA_TRUSTED_PROXIES` counts too, as forwarding all the same.
fn from_this_machine(
    request: &Request,
    trusted_proxies: &[crate::http::client_addr::Cidr],
) -> bool {
    // A peer that is a trusted proxy may be relaying anyone (some proxies add no
    // forwarding header), so it is never "this machine".
    let loopback_peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| {
            let ip = peer.ip().to_canonical();
            ip.is_loopback() && !trusted_proxies.iter().any(|c| c.contains(ip))
        });
    let forwarded = request.headers().keys().any(|name| {
        let name = name.as_str();
        name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
    });
    loopback_peer && !forwarded
}

/// Prometheus text format; behind a bearer token when one is configured.
#[utoipa::path(get, path = "/metrics", tag = "ops", description = "Prometheus text format; a bearer token if TESSERA_METRICS_TOKEN is set. Without a token, only requests from this machine that came through no proxy (no X-Forwarded-For, Forwarded or X-Real-IP) are answered. On a listener that is not loopback and with no token, 404 here: metrics are then served on TESSERA_METRICS_LISTEN (loopback by default) only.", responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text"), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "metrics_local_only: no token is configured and the request came through a proxy (a forwarding header) or from another machine", body = crate::http::error::Body), (status = 404, description = "Not served on this listener (see TESSERA_METRICS_LISTEN)", body = crate::http::error::Body)))]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let public = request
        .extensions()
        .get::<MetricsListener>()
        .is_none_or(|l| l.public);
    if state.metrics_token.is_none()
        && public
        && !from_this_machine(&request, &state.trusted_proxies)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "metrics_local_only",
            "without TESSERA_METRICS_TOKEN, metrics are for this machine only, not through a proxy",
        ));
    }
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
