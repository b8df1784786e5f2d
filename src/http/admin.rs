//! Admin API: manage users, force logout, see the OAuth clients and their scope
//! allow-lists. Every call re-checks the caller's session and admin role in the store.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{Access, ClientInfo, JsonBody, PathId, QueryParams, now};
use super::{ApiError, AppState, SessionView, rfc3339};
use crate::auth::{AuthError, RevokeOutcome};
use crate::store::{AuditRecord, User};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", post(create_user).get(list_users))
        .route(
            "/v1/admin/users/{id}/sessions",
            get(user_sessions).delete(revoke_user_sessions),
        )
        .route("/v1/admin/users/{id}/disable", post(disable))
        .route("/v1/admin/users/{id}/enable", post(enable))
        .route("/v1/admin/sessions/{id}", delete(revoke_session))
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/clients", get(list_clients))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AdminUserView {
    id: Uuid,
    email: String,
    roles: Vec<String>,
    disabled: bool,
    disabled_at: Option<String>,
    created_at: String,
}

impl From<User> for AdminUserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            roles: u.roles,
            disabled: u.disabled_at.is_some(),
            disabled_at: u.disabled_at.map(rfc3339),
            created_at: rfc3339(u.created_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RevokedView {
    revoked: usize,
    effective_at: String,
}

impl From<RevokeOutcome> for RevokedView {
    fn from(o: RevokeOutcome) -> Self {
        Self {
            revoked: o.revoked.len(),
            effective_at: rfc3339(o.effective_at),
        }
    }
}

/// Query strings are parsed leniently and checked here, so a bad value is a JSON 400.
/// A present query parameter must hold a value of its documented type; an empty one
/// does not (the OpenAPI document types it, so it says so too).
fn query_uuid(raw: Option<&str>, name: &str) -> Result<Option<Uuid>, ApiError> {
    raw.map(|s| {
        s.parse()
            .map_err(|_| ApiError::bad_request("invalid_request", format!("{name} is not a UUID")))
    })
    .transpose()
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateUser {
    #[schema(format = Email, min_length = 3, max_length = 254)]
    email: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// Lower-case words (letters, digits, `_`, `-`, `:`).
    #[serde(default)]
    #[schema(max_items = 32, inline, value_type = Vec<Role>)]
    roles: Vec<String>,
}

/// A role name, as the schema documents it.
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[a-z0-9_:-]{1,64}$")]
#[allow(dead_code)]
pub(crate) struct Role(String);

#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", security(("bearer" = [])), request_body = CreateUser,
    responses((status = 201, body = AdminUserView), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body), (status = 409, description = "email_taken", body = crate::http::error::Body)))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Access(access): Access,
    JsonBody(req): JsonBody<CreateUser>,
) -> Result<Response, ApiError> {
    let t = now();
    let admin = state.auth.admin_claims(access, t).await?;
    let user = state
        .auth
        .create_user(
            &req.email,
            req.password.into(),
            req.roles,
            Some(admin.sub),
            t,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(AdminUserView::from(user))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListUsers {
    email: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserPage {
    users: Vec<AdminUserView>,
    next_cursor: Option<String>,
}

/// `limit` from the query string: absent means the default; otherwise 1 to the maximum.
fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    let bad =
        || ApiError::bad_request("invalid_request", format!("limit must be 1 to {MAX_LIMIT}"));
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(bad),
    }
}

#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(("email" = Option<String>, Query, description = "Part of the email"), ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"), ("cursor" = Option<uuid::Uuid>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = UserPage), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body)))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    Access(access): Access,
    QueryParams(q): QueryParams<ListUsers>,
) -> Result<Json<UserPage>, ApiError> {
    state.auth.admin_claims(access, now()).await?;
    let limit = parse_limit(q.limit.as_deref())?;
    let after = query_uuid(q.cursor.as_deref(), "cursor")?;
    let email = q
        .email
        .as_deref()
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty());
    let users = state
        .auth
        .store
        .list_users(email.as_deref(), after, limit)
        .await
        .map_err(AuthError::from)?;
    let next_cursor = (users.len() as i64 == limit)
        .then(|| users.last().map(|u| u.id.to_string()))
        .flatten();
    Ok(Json(UserPage {
        users: users.into_iter().map(AdminUserView::from).collect(),
        next_cursor,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AdminSessionList)]
pub(crate) struct SessionList {
    sessions: Vec<SessionView>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/admin/users/{id}/sessions", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id"), ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"), ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,18}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "next_cursor of the previous page (invalid_cursor if it is not one)"), ("after" = Option<String>, Query, pattern = r"^[0-9]{1,18}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "Another name for cursor (cursor wins when both are given)")),
    responses((status = 200, body = SessionList), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body), (status = 404, description = "No such resource", body = crate::http::error::Body)))]
pub(crate) async fn user_sessions(
    State(state): State<AppState>,
    Access(access): Access,
    PathId(id): PathId,
    QueryParams(query): QueryParams<super::account::SessionPageQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let t = now();
    state.auth.admin_claims(access, t).await?;
    state.auth.existing_user(id).await?;
    let (sessions, next_cursor) = super::account::session_page(&state, id, &query, None, t).await?;
    Ok(Json(SessionList {
        sessions,
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/admin/users/{id}/sessions", tag = "admin", security(("bearer" = [])),
    description = "Force logout everywhere. effective_at: when the last access token of those sessions expires.",
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses((status = 200, body = RevokedView), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body), (status = 404, description = "No such resource", body = crate::http::error::Body)))]
pub(crate) async fn revoke_user_sessions(
    State(state): State<AppState>,
    Access(access): Access,
    ClientInfo(caller): ClientInfo,
    PathId(id): PathId,
) -> Result<Json<RevokedView>, ApiError> {
    let t = now();
    let admin = state.auth.admin_claims(access, t).await?;
    let outcome = state
        .auth
        .admin_revoke_user_sessions(&admin, id, caller.ip, t)
        .await?;
    Ok(Json(outcome.into()))
}

#[utoipa::path(delete, path = "/v1/admin/sessions/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Session id")),
    responses((status = 200, body = RevokedView), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body), (status = 404, description = "No such resource", body = crate::http::error::Body)))]
pub(crate) async fn revoke_session(
    State(state): State<AppState>,
    Access(access): Access,
    ClientInfo(caller): ClientInfo,
    PathId(id): PathId,
) -> Result<Json<RevokedView>, ApiError> {
    let t = now();
    let admin = state.auth.admin_claims(access, t).await?;
    let outcome = state
        .auth
        .admin_revoke_session(&admin, id, caller.ip, t)
        .await?;
    Ok(Json(outcome.into()))
}

async fn set_disabled(
    state: AppState,
    access: crate::verify::Claims,
    ip: Option<String>,
    id: Uuid,
    disable: bool,
) -> Result<Json<AdminUserView>, ApiError> {
    let t = now();
    let admin = state.auth.admin_claims(access, t).await?;
    let user = state
        .auth
        .admin_set_disabled(&admin, id, disable, ip, t)
        .await?;
    Ok(Json(user.into()))
}

#[utoipa::path(post, path = "/v1/admin/users/{id}/disable", tag = "admin", security(("bearer" = [])),
    description = "Disables the user: ends every session, blocks login and refresh.",
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses((status = 200, body = AdminUserView), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body), (status = 404, description = "No such resource", body = crate::http::error::Body)))]
pub(crate) async fn disable(
    State(state): State<AppState>,
    Access(access): Access,
    ClientInfo(caller): ClientInfo,
    PathId(id): PathId,
) -> Result<Json<AdminUserView>, ApiError> {
    set_disabled(state, access, caller.ip, id, true).await
}

#[utoipa::path(post, path = "/v1/admin/users/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses((status = 200, body = AdminUserView), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body), (status = 404, description = "No such resource", body = crate::http::error::Body)))]
pub(crate) async fn enable(
    State(state): State<AppState>,
    Access(access): Access,
    ClientInfo(caller): ClientInfo,
    PathId(id): PathId,
) -> Result<Json<AdminUserView>, ApiError> {
    set_disabled(state, access, caller.ip, id, false).await
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    user_id: Option<String>,
    action: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuditView {
    id: i64,
    at: String,
    action: String,
    user_id: Option<Uuid>,
    session_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    ip: Option<String>,
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        let e = r.event;
        Self {
            id: r.id,
            at: rfc3339(e.at),
            action: e.action,
            user_id: e.user_id,
            session_id: e.session_id,
            actor_id: e.actor_id,
            ip: e.ip,
            detail: e.detail,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    events: Vec<AuditView>,
    next_cursor: Option<String>,
}

/// Newest first; `cursor` is the `next_cursor` of the previous page.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])),
    params(("user_id" = Option<uuid::Uuid>, Query, description = "Only this user"), ("action" = Option<String>, Query, description = "Only this action"), ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"), ("cursor" = Option<i64>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = AuditPage), (status = 400, description = "Malformed request", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body)))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    Access(access): Access,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    state.auth.admin_claims(access, now()).await?;
    let limit = parse_limit(q.limit.as_deref())?;
    let user_id = query_uuid(q.user_id.as_deref(), "user_id")?;
    let before = q
        .cursor
        .as_deref()
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid_request", "cursor is not valid"))
        })
        .transpose()?;
    let action = q.action.as_deref().filter(|a| !a.is_empty());
    let events = state
        .auth
        .store
        .audit_events(user_id, action, before, limit)
        .await
        .map_err(AuthError::from)?;
    let next_cursor = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        events: events.into_iter().map(AuditView::from).collect(),
        next_cursor,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AdminClientView {
    client_id: String,
    name: String,
    /// Confidential clients (backend services) authenticate with a secret.
    confidential: bool,
    /// The scopes the client may be granted (the default client's come from config).
    scopes: Vec<String>,
    /// Its token requests must carry a DPoP proof.
    require_dpop: bool,
    created_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ClientList {
    clients: Vec<AdminClientView>,
}

/// Every OAuth client with its scope allow-list (secrets are never shown).
#[utoipa::path(get, path = "/v1/admin/clients", tag = "admin", security(("bearer" = [])),
    description = "Every OAuth client and its scope allow-list; the default public client `app` shows the configured default_client_scopes.",
    responses((status = 200, body = ClientList), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "Not an admin", body = crate::http::error::Body)))]
pub(crate) async fn list_clients(
    State(state): State<AppState>,
    Access(access): Access,
) -> Result<Json<ClientList>, ApiError> {
    state.auth.admin_claims(access, now()).await?;
    let clients = state.auth.list_clients().await?;
    Ok(Json(ClientList {
        clients: clients
            .into_iter()
            .map(|c| AdminClientView {
                confidential: c.secret_hash.is_some(),
                require_dpop: c.require_dpop,
                scopes: c.scopes.split_whitespace().map(str::to_owned).collect(),
                created_at: rfc3339(c.created_at),
                client_id: c.id,
                name: c.name,
            })
            .collect(),
    }))
}
