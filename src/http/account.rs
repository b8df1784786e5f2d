//! A user's own account: sign-up, who am I, my sessions (devices), log out.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::extract::{Access, ClientInfo, JsonBody, PathId, QueryParams, now};
use super::{ApiError, AppState, SessionView, rfc3339};
use crate::auth::{AuthError, LogoutScope};
use crate::store::SessionCursor;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/signup", post(signup))
        .route("/v1/me", get(me))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{id}", delete(end_session))
        .route("/v1/logout", post(logout))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SignupRequest {
    #[schema(format = Email, min_length = 3, max_length = 254)]
    email: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: uuid::Uuid,
    pub email: String,
    pub created_at: String,
}

#[utoipa::path(post, path = "/v1/signup", tag = "account", request_body = SignupRequest,
    responses((status = 201, body = UserView), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 403, description = "Sign-up disabled", body = crate::http::error::Body), (status = 409, description = "email_taken", body = crate::http::error::Body), (status = 413, description = "Body too large", body = crate::http::error::Body), (status = 429, description = "Too many sign-ups from this address (Retry-After)", body = crate::http::error::Body), (status = 503, description = "Store unavailable or at capacity (Retry-After)", body = crate::http::error::Body)))]
pub(crate) async fn signup(
    State(state): State<AppState>,
    ClientInfo(caller): ClientInfo,
    JsonBody(req): JsonBody<SignupRequest>,
) -> Result<Response, ApiError> {
    let user = state
        .auth
        .signup(&req.email, req.password.into(), &caller, now())
        .await?;
    let view = UserView {
        id: user.id,
        email: user.email,
        created_at: rfc3339(user.created_at),
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MeView {
    id: uuid::Uuid,
    email: String,
    roles: Vec<String>,
    session_id: uuid::Uuid,
}

#[utoipa::path(get, path = "/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body)))]
pub(crate) async fn me(
    State(state): State<AppState>,
    Access(access): Access,
) -> Result<Json<MeView>, ApiError> {
    let (claims, user) = state.auth.live_claims(access, now()).await?;
    Ok(Json(MeView {
        id: user.id,
        email: user.email,
        roles: user.roles,
        session_id: claims.sid,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionList {
    sessions: Vec<SessionView>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// `limit` and `cursor` (or its alias `after`) of a session list.
#[derive(Deserialize)]
pub(crate) struct SessionPageQuery {
    limit: Option<String>,
    cursor: Option<String>,
    after: Option<String>,
}

const SESSIONS_DEFAULT_LIMIT: i64 = 50;
const SESSIONS_MAX_LIMIT: i64 = 200;

impl SessionPageQuery {
    /// The page asked for: a limit of 1 to 200 (default 50) and the cursor, if any.
    fn page(&self) -> Result<(i64, Option<SessionCursor>), ApiError> {
        let limit = match self.limit.as_deref() {
            None => SESSIONS_DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=SESSIONS_MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("limit must be 1 to {SESSIONS_MAX_LIMIT}"),
                    )
                })?,
        };
        let cursor = self
            .cursor
            .as_deref()
            .or(self.after.as_deref())
            .map(|raw| {
                SessionCursor::parse(raw).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "cursor must be the next_cursor of a previous page",
                    )
                })
            })
            .transpose()?;
        Ok((limit, cursor))
    }
}

/// One page of a user's live sessions, newest first; `current` marks `current`.
pub(crate) async fn session_page(
    state: &AppState,
    user_id: uuid::Uuid,
    query: &SessionPageQuery,
    current: Option<uuid::Uuid>,
    at: i64,
) -> Result<(Vec<SessionView>, Option<String>), ApiError> {
    let (limit, after) = query.page()?;
    let list = state
        .auth
        .store
        .live_sessions_page(user_id, at, after, limit)
        .await
        .map_err(AuthError::from)?;
    let next = (list.len() as i64 == limit)
        .then(|| list.last().map(|s| SessionCursor::of(s).to_string()))
        .flatten();
    let views = list
        .into_iter()
        .map(|s| SessionView::new(s, current))
        .collect();
    Ok((views, next))
}

#[utoipa::path(get, path = "/v1/sessions", tag = "account", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"), ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,18}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "next_cursor of the previous page (invalid_cursor if it is not one)"), ("after" = Option<String>, Query, pattern = r"^[0-9]{1,18}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "Another name for cursor (cursor wins when both are given)")),
    responses((status = 200, body = SessionList), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body)))]
pub(crate) async fn sessions(
    State(state): State<AppState>,
    Access(access): Access,
    QueryParams(query): QueryParams<SessionPageQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let t = now();
    let (claims, _) = state.auth.live_claims(access, t).await?;
    let (sessions, next_cursor) =
        session_page(&state, claims.sub, &query, Some(claims.sid), t).await?;
    Ok(Json(SessionList {
        sessions,
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Session id")),
    responses((status = 204, description = "Ended"), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 404, description = "No such resource", body = crate::http::error::Body)))]
pub(crate) async fn end_session(
    State(state): State<AppState>,
    Access(access): Access,
    ClientInfo(caller): ClientInfo,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let t = now();
    let (claims, _) = state.auth.live_claims(access, t).await?;
    state
        .auth
        .end_own_session(&claims, id, caller.ip, t)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct LogoutRequest {
    /// Default `local`.
    #[schema(nullable = false, value_type = Option<LogoutScopeName>)]
    scope: Option<String>,
}

/// Which sessions `POST /v1/logout` ends.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum LogoutScopeName {
    /// This session.
    Local,
    /// Every other session of the user.
    Others,
    /// Every session of the user.
    Global,
}

/// `scope` from a JSON body or the query string (as Supabase clients send it);
/// neither means `local`.
#[utoipa::path(post, path = "/v1/logout", tag = "account", security(("bearer" = [])),
    params(("scope" = Option<LogoutScopeName>, Query, description = "local (default), others or global; also accepted as a JSON body")),
    request_body(content = Option<LogoutRequest>),
    responses((status = 204, description = "Logged out; scope local or global also clears the refresh cookie (Set-Cookie with Max-Age=0)"), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body)))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Access(access): Access,
    ClientInfo(caller): ClientInfo,
    QueryParams(query): QueryParams<LogoutRequest>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: none, or JSON `null` (as the document allows), is no body.
    let from_body: Option<LogoutRequest> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::bad_request("invalid_request", "the body must be {\"scope\": ...}")
        })?
    };
    let from_body = from_body.unwrap_or_default();
    // Each place that names a scope must name a valid one; the body's wins.
    let from_query = query
        .scope
        .as_deref()
        .map(|s| LogoutScope::parse(Some(s)))
        .transpose()?;
    let scope = match from_body.scope.as_deref() {
        Some(s) => LogoutScope::parse(Some(s))?,
        None => from_query.unwrap_or(LogoutScope::Local),
    };
    let t = now();
    let (claims, _) = state.auth.live_claims(access, t).await?;
    state.auth.logout(&claims, scope, caller.ip, t).await?;
    // This browser's session ended too: its refresh cookie is dead, let it go. The
    // bearer token authenticates this call, so no CSRF proof is needed to clear it.
    let mut response = StatusCode::NO_CONTENT.into_response();
    if !matches!(scope, LogoutScope::Others) {
        response
            .headers_mut()
            .insert(axum::http::header::SET_COOKIE, state.browser.clear());
    }
    Ok(response)
}
