//! For backend services (confidential clients): RFC 7662 introspection and the
//! revocation feed, as JSON pages or a live Server-Sent Events stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::extract::{BasicAuth, OAuthParams, QueryParams, now};
use super::oauth::request_client;
use super::{ApiError, AppState};
use crate::auth::RequestClient;
use crate::store::{Revocation, Store};

const PAGE: i64 = 1000;
/// The stream re-reads the feed table this often, so a notification lost between
/// instances (a listener reconnecting) costs at most this much delay.
const RESYNC: Duration = Duration::from_secs(5);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/introspect", post(introspect))
        .route("/v1/revocations", get(revocations))
}

async fn confidential(
    state: &AppState,
    basic: Option<(String, String)>,
    id: Option<&str>,
    secret: Option<&str>,
) -> Result<(), ApiError> {
    match request_client(state, basic, id, secret).await? {
        RequestClient::Authenticated(_) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication is required",
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct IntrospectRequest {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[utoipa::path(post, path = "/oauth/introspect", tag = "services", security(("basic" = [])),
    description = "RFC 7662. HTTP Basic or client_secret_post (confidential clients).",
    request_body(content = IntrospectRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = crate::auth::Introspection), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body)))]
pub(crate) async fn introspect(
    State(state): State<AppState>,
    BasicAuth(basic): BasicAuth,
    OAuthParams(req): OAuthParams<IntrospectRequest>,
) -> Result<Response, ApiError> {
    confidential(
        &state,
        basic,
        req.client_id.as_deref(),
        req.client_secret.as_deref(),
    )
    .await?;
    let token = req
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_request", "missing parameter: token"))?;
    let answer = state.auth.introspect(token, now()).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(answer)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct FeedQuery {
    after: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FeedPage {
    revocations: Vec<Revocation>,
    cursor: String,
}

/// Revoked sessions whose access tokens may still be unexpired, oldest first. JSON
/// pages (`?after=<cursor>`), or with `Accept: text/event-stream` a live stream that
/// starts after `Last-Event-ID` (or `after`).
#[utoipa::path(get, path = "/v1/revocations", tag = "services", security(("basic" = [])),
    description = "Ended sessions whose access tokens may still be unexpired. JSON pages, or with Accept: text/event-stream a live Server-Sent Events stream (event: revocation, id: seq; resumable with Last-Event-ID).",
    params(("after" = Option<String>, Query, description = "cursor of the previous page")),
    responses((status = 200, body = FeedPage), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body)))]
pub(crate) async fn revocations(
    State(state): State<AppState>,
    BasicAuth(basic): BasicAuth,
    headers: HeaderMap,
    QueryParams(q): QueryParams<FeedQuery>,
) -> Result<Response, ApiError> {
    confidential(&state, basic, None, None).await?;
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let after = match from_header.or(q.after).filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request("invalid_request", "after is not a valid cursor"))?,
    };
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let store = state.auth.store.clone();
    if wants_stream {
        // Subscribe before reading the backlog, so nothing falls between the two.
        let live = store.subscribe_revocations();
        let stream = feed_stream(store, live, after, state.draining.clone());
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let page = store
        .revocations_after(after, now(), PAGE)
        .await
        .map_err(crate::auth::AuthError::from)?;
    let cursor = page.last().map_or(after, |r| r.seq).to_string();
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(FeedPage {
            revocations: page,
            cursor,
        }),
    )
        .into_response())
}

/// One subscriber's position in the feed. Live notifications only wake it up: what
/// it sends is always read from the table in `seq` order (commit order, see the
/// stores), so an out-of-order or missed notification can delay an entry but never
/// skip it.
struct Feed {
    store: std::sync::Arc<dyn Store>,
    live: broadcast::Receiver<Revocation>,
    pending: VecDeque<Revocation>,
    last_seq: i64,
    next_resync: tokio::time::Instant,
    draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Feed {
    /// Reads the table past `last_seq`, every page of it.
    async fn catch_up(&mut self) {
        let mut after = self.pending.back().map_or(self.last_seq, |r| r.seq);
        loop {
            let Ok(rows) = self.store.revocations_after(after, now(), PAGE).await else {
                break;
            };
            let full = rows.len() as i64 == PAGE;
            after = rows.last().map_or(after, |r| r.seq);
            self.pending.extend(rows);
            if !full {
                break;
            }
        }
        self.next_resync = tokio::time::Instant::now() + RESYNC;
    }

    /// The next entry, or `None` when the server is shutting down.
    async fn next(&mut self) -> Option<Revocation> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                self.last_seq = r.seq;
                return Some(r);
            }
            if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(self.next_resync) => {}
                received = self.live.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = received {
                        tokio::time::sleep_until(self.next_resync).await;
                    }
                }
            }
            self.catch_up().await;
        }
    }
}

fn feed_stream(
    store: std::sync::Arc<dyn Store>,
    live: broadcast::Receiver<Revocation>,
    after: i64,
    draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let feed = Feed {
        store,
        live,
        pending: VecDeque::new(),
        last_seq: after,
        // The backlog is read at once.
        next_resync: tokio::time::Instant::now(),
        draining,
    };
    futures_util::stream::unfold(feed, |mut feed| async move {
        let r = feed.next().await?;
        let event = Event::default()
            .event("revocation")
            .id(r.seq.to_string())
            .data(serde_json::to_string(&r).unwrap_or_default());
        Some((Ok(event), feed))
    })
}
