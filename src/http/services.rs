//! For backend services (confidential clients): RFC 7662 introspection and the
//! revocation feed, as JSON pages or a live Server-Sent Events stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::extract::{BasicAuth, OAuthParams, QueryParams, now};
use super::feed::Refused;
use super::oauth::request_client;
use super::{ApiError, AppState};
use crate::auth::RequestClient;
use crate::store::Revocation;

/// A client refused a stream may try again after this long.
const STREAM_RETRY_AFTER_SECS: u32 = 5;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/introspect", post(introspect))
        .route("/v1/revocations", get(revocations))
}

/// The authenticated confidential client's id.
async fn confidential(
    state: &AppState,
    basic: Option<(String, String)>,
    id: Option<&str>,
    secret: Option<&str>,
) -> Result<String, ApiError> {
    match request_client(state, basic, id, secret).await? {
        RequestClient::Authenticated(id) => Ok(id),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication is required",
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct IntrospectRequest {
    /// Required (RFC 7662 §2.1); absent or empty: 400 invalid_request.
    #[schema(required = true, nullable = false, min_length = 1)]
    token: Option<String>,
    #[schema(nullable = false)]
    client_id: Option<String>,
    #[schema(nullable = false)]
    client_secret: Option<String>,
}

#[utoipa::path(post, path = "/oauth/introspect", tag = "services", security(("basic" = [])),
    description = "RFC 7662. HTTP Basic or client_secret_post (confidential clients). An access token is answered to any confidential client (all serve the one audience); a refresh token only to the client it was issued to, `{\"active\": false}` to any other.",
    request_body(content = IntrospectRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = crate::auth::Introspection), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body)))]
pub(crate) async fn introspect(
    State(state): State<AppState>,
    BasicAuth(basic): BasicAuth,
    OAuthParams(req): OAuthParams<IntrospectRequest>,
) -> Result<Response, ApiError> {
    let caller = confidential(
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
    let answer = state.auth.introspect(token, &caller, now()).await?;
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
    description = "Ended sessions whose access tokens may still be unexpired. JSON pages, or with Accept: text/event-stream a live Server-Sent Events stream (event: revocation, id: seq; resumable with Last-Event-ID). Streams are capped per client and per instance: past a cap, 503 too_many_streams with Retry-After.",
    params(("after" = Option<String>, Query, pattern = "^[0-9]{0,18}$", description = "cursor of the previous page; empty or absent: from the start")),
    responses((status = 200, body = FeedPage), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 503, description = "Too many open streams, or the store is unavailable (Retry-After)", body = crate::http::error::Body)))]
pub(crate) async fn revocations(
    State(state): State<AppState>,
    BasicAuth(basic): BasicAuth,
    headers: HeaderMap,
    QueryParams(q): QueryParams<FeedQuery>,
) -> Result<Response, ApiError> {
    let client_id = confidential(&state, basic, None, None).await?;
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Empty means from the start. Otherwise a cursor is what pages hand out: digits
    // (sequence numbers count up from 1), exactly as the document's pattern says.
    let after = match from_header.or(q.after).filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => Some(s.as_str())
            .filter(|s| s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_request", "after is not a valid cursor")
            })?,
    };
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        let slot = state.feed.admit(&client_id).map_err(|why| {
            let (code, description) = match why {
                Refused::Client => (
                    "too_many_streams",
                    "this client has as many revocation streams open as it may",
                ),
                Refused::Total => (
                    "too_many_streams",
                    "this instance has as many revocation streams open as it may",
                ),
                Refused::ShuttingDown => (
                    "temporarily_unavailable",
                    "this instance is shutting down; connect to another",
                ),
            };
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                .retry_after(STREAM_RETRY_AFTER_SECS)
        })?;
        let subscriber = state.feed.subscribe(slot, after);
        let stream = futures_util::stream::unfold(subscriber, |mut feed| async move {
            let r = feed.next().await?;
            let event = Event::default()
                .event("revocation")
                .id(r.seq.to_string())
                .data(serde_json::to_string(&r).unwrap_or_default());
            Some((Ok::<_, Infallible>(event), feed))
        });
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let page = state
        .feed
        .read_page(after, now())
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
