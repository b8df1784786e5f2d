//! OAuth 2.0 endpoints for apps: the token endpoint (password and refresh grants,
//! RFC 6749) and revocation (RFC 7009).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{BasicAuth, ClientInfo, OAuthParams, now};
use super::{ApiError, AppState};
use crate::auth::{AuthError, Grant, RequestClient};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
}

#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    /// Space-separated. Password grant: within the client's allow-list. Refresh grant:
    /// within the session's grant (narrows this access token only); absent: all of it.
    scope: Option<String>,
    /// `cookie`: the refresh token comes back as an HttpOnly cookie, not in the body
    /// (browser apps; needs the `X-Tessera-CSRF: 1` header). `body` or absent: in the body.
    token_delivery: Option<String>,
}

/// The token request as documented: one shape per grant, each with the parameters it
/// requires (RFC 6749 §4.3.2 and §6), so a schema-valid request is one the endpoint
/// can act on. The handler reads [`TokenRequest`] to name a missing parameter itself.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "grant_type", rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum TokenGrant {
    Password {
        /// The user's email.
        #[schema(min_length = 1)]
        username: String,
        #[schema(min_length = 1)]
        password: String,
        /// A public client's id (none: the default client `app`); with `client_secret`,
        /// a confidential client's.
        #[schema(nullable = false)]
        client_id: Option<String>,
        #[schema(nullable = false)]
        client_secret: Option<String>,
        /// Space-separated, within the client's allow-list.
        #[schema(nullable = false, pattern = r"^[ !#-\[\]-~]*$", max_length = 1024)]
        scope: Option<String>,
        /// `cookie`: the refresh token comes back as an HttpOnly cookie, not in the body
        /// (browser apps; needs X-Tessera-CSRF: 1). Default `body`.
        #[schema(nullable = false, pattern = "^(body|cookie)$")]
        token_delivery: Option<String>,
    },
    RefreshToken {
        /// Required by the document; a browser app using cookie delivery may leave it
        /// out and send its refresh cookie instead (with X-Tessera-CSRF: 1).
        #[schema(min_length = 1)]
        refresh_token: String,
        #[schema(nullable = false)]
        client_id: Option<String>,
        #[schema(nullable = false)]
        client_secret: Option<String>,
        /// Narrows this access token within the session's grant; absent: all of it.
        #[schema(nullable = false, pattern = r"^[ !#-\[\]-~]*$", max_length = 1024)]
        scope: Option<String>,
        /// As on the password grant.
        #[schema(nullable = false, pattern = "^(body|cookie)$")]
        token_delivery: Option<String>,
    },
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenResponse<'a> {
    access_token: &'a str,
    /// `Bearer`, or `DPoP` when the request carried a DPoP proof (the access token is
    /// then bound to its key).
    #[schema(pattern = "^(Bearer|DPoP)$")]
    token_type: &'static str,
    expires_in: i64,
    /// Absent when the refresh token was delivered as a cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    scope: &'a str,
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| {
        ApiError::bad_request("invalid_request", format!("missing parameter: {name}"))
    })
}

/// Which client a request speaks for: HTTP Basic or `client_secret_post` credentials
/// make it an authenticated confidential client; a bare `client_id` names a public one.
pub async fn request_client(
    state: &AppState,
    basic: Option<(String, String)>,
    client_id: Option<&str>,
    client_secret: Option<&str>,
) -> Result<RequestClient, ApiError> {
    let credentials = match (basic, client_secret.filter(|s| !s.is_empty())) {
        (Some(pair), _) => Some(pair),
        // A secret that names no client is failed client authentication (RFC 6749
        // §5.2 invalid_client), not a malformed request.
        (None, Some(secret)) => Some((
            client_id
                .filter(|id| !id.is_empty())
                .ok_or(AuthError::InvalidClient)?
                .to_owned(),
            secret.to_owned(),
        )),
        (None, None) => None,
    };
    Ok(match credentials {
        Some((id, secret)) => {
            RequestClient::Authenticated(state.auth.authenticate_client(&id, &secret).await?.id)
        }
        None => match client_id.filter(|c| !c.is_empty()) {
            Some(id) => RequestClient::Named(id.to_owned()),
            None => RequestClient::Default,
        },
    })
}

#[utoipa::path(post, path = "/oauth/token", tag = "oauth",
    description = "RFC 6749 token endpoint: the password and refresh_token grants. Form-encoded or JSON. Confidential clients authenticate with HTTP Basic or client_secret_post; a confidential client's refresh token rotates only with that client's authentication (else 401 invalid_client; another client's token: 400 invalid_grant). `scope` must lie within the client's allow-list (else 400 invalid_scope); on a refresh it may narrow the new access token's scope within the session's grant, never widen it (400 invalid_scope). The `scope` response field is the access token's scope. Browser apps: `token_delivery=cookie` sends the refresh token as an HttpOnly cookie (`__Host-tessera_refresh`, or `tessera_refresh` with Path=/oauth when cookie_secure is off) and leaves it out of the body; a refresh grant without `refresh_token` spends that cookie and answers with the rotated one. Either needs the header `X-Tessera-CSRF: 1` and, with an Origin, an allowed one (else 403 csrf_check_failed, nothing spent). DPoP (RFC 9449): with a `DPoP` proof header (ES256 or EdDSA, htm POST, htu `<issuer>/oauth/token`) the access token is bound to the proof's key (`token_type: DPoP`, `cnf.jkt`), and a password grant binds the session: its refresh tokens then rotate only with a proof by that key (no proof: 400 invalid_dpop_proof; another key: 400 invalid_grant; nothing spent). An invalid or replayed proof is 400 invalid_dpop_proof; with nonces on, a proof without a current nonce is 400 use_dpop_nonce with a `DPoP-Nonce` header, and every answer carries one.",
    params(("DPoP" = Option<String>, Header, description = "A DPoP proof JWT (RFC 9449 §4): binds the tokens to its key")),
    request_body(content = TokenGrant, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Tokens (Cache-Control: no-store)", body = TokenResponse), (status = 400, description = "Malformed request, invalid_dpop_proof or use_dpop_nonce", body = crate::http::error::Body), (status = 401, description = "Missing or invalid credentials", body = crate::http::error::Body), (status = 403, description = "csrf_check_failed: a cookie request without X-Tessera-CSRF: 1 or from an origin not allowed", body = crate::http::error::Body), (status = 429, description = "Throttled (Retry-After)", body = crate::http::error::Body), (status = 503, description = "Store unavailable or at capacity (Retry-After)", body = crate::http::error::Body)))]
pub(crate) async fn token(
    State(state): State<AppState>,
    ClientInfo(caller): ClientInfo,
    BasicAuth(basic): BasicAuth,
    headers: HeaderMap,
    OAuthParams(req): OAuthParams<TokenRequest>,
) -> Result<Response, ApiError> {
    // With nonces on, every answer carries a fresh one (RFC 9449 §8.2).
    let at = now();
    let nonce = state.auth.dpop_nonce(at);
    match grant(&state, caller, basic, &headers, req, at).await {
        Ok(mut response) => {
            if let Some(v) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                response.headers_mut().insert(super::error::DPOP_NONCE, v);
            }
            Ok(response)
        }
        Err(e) => Err(e.with_dpop_nonce(nonce)),
    }
}

/// The request's DPoP proof for an OAuth endpoint (`/oauth/token`, `/oauth/revoke`),
/// checked but for replay (claimed with the grant): `htm` POST, `htu` the issuer's URL
/// of the endpoint.
fn endpoint_proof(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    at: i64,
) -> Result<Option<crate::auth::dpop::Proof>, AuthError> {
    use crate::verify::dpop;
    let header = dpop::proof_header(headers).map_err(|e| {
        state.auth.metrics.dpop_refused(e.reason());
        AuthError::InvalidDpopProof(e)
    });
    let Some(raw) = header? else {
        return Ok(None);
    };
    let url = format!("{}{path}", state.issuer.trim_end_matches('/'));
    let expect = dpop::Expect {
        method: "POST",
        url: &url,
        also_url: None,
        access_token: None,
        now: at,
    };
    let checked = dpop::check(raw, &expect)
        .map_err(AuthError::InvalidDpopProof)
        .and_then(|proof| state.auth.check_dpop_nonce(&proof, at).map(|()| proof));
    if let Err(AuthError::InvalidDpopProof(e)) = &checked {
        state.auth.metrics.dpop_refused(e.reason());
    }
    checked.map(Some)
}

async fn grant(
    state: &AppState,
    caller: crate::auth::Caller,
    basic: Option<(String, String)>,
    headers: &HeaderMap,
    req: TokenRequest,
    at: i64,
) -> Result<Response, ApiError> {
    let mut cookie = match req.token_delivery.as_deref() {
        None | Some("" | "body") => false,
        Some("cookie") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "token_delivery must be body or cookie",
            ));
        }
    };
    // A refresh grant without the parameter spends the cookie; the answer is a cookie.
    let from_cookie = match (req.grant_type.as_deref(), &req.refresh_token) {
        (Some("refresh_token"), None) => state.browser.read(headers),
        _ => None,
    };
    cookie |= from_cookie.is_some();
    // Checked before anything is spent or issued. Cookie delivery on a login needs it
    // too: else a cross-site form could plant the attacker's session in the browser.
    if cookie {
        state.browser.check_csrf(headers)?;
    }
    let proof = endpoint_proof(state, headers, "/oauth/token", at)?;
    let client = request_client(
        state,
        basic,
        req.client_id.as_deref(),
        req.client_secret.as_deref(),
    )
    .await?;
    let grant = match required(&req.grant_type, "grant_type")? {
        "password" => {
            let username = required(&req.username, "username")?;
            let password = required(&req.password, "password")?;
            state
                .auth
                .login(
                    username,
                    password.into(),
                    &client,
                    req.scope.as_deref(),
                    proof.as_ref(),
                    &caller,
                    at,
                )
                .await?
        }
        "refresh_token" => {
            let token = match &from_cookie {
                Some(t) => t.as_str(),
                None => required(&req.refresh_token, "refresh_token")?,
            };
            state
                .auth
                .refresh_with_scope(
                    token,
                    &client,
                    req.scope.as_deref(),
                    proof.as_ref(),
                    &caller,
                    at,
                )
                .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            ));
        }
    };
    let set_cookie = if cookie {
        // The cookie lives as long as the refresh token may be used.
        let max_age = state.auth.policy.refresh_token_ttl;
        Some(
            state
                .browser
                .set(grant.refresh_token.expose(), max_age)
                .ok_or_else(|| {
                    ApiError::from(crate::auth::AuthError::Internal("cookie value".into()))
                })?,
        )
    } else {
        None
    };
    Ok(token_response(&grant, set_cookie))
}

fn token_response(grant: &Grant, set_cookie: Option<HeaderValue>) -> Response {
    let body = TokenResponse {
        access_token: &grant.access_token,
        token_type: grant.token_type,
        expires_in: grant.expires_in,
        refresh_token: match set_cookie {
            Some(_) => None,
            None => Some(grant.refresh_token.expose()),
        },
        scope: &grant.scope,
    };
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(v) = set_cookie {
        headers.insert(header::SET_COOKIE, v);
    }
    response
}

/// `token_type_hint` is accepted and not needed: the token's shape tells its kind.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RevokeRequest {
    /// Required by the document (RFC 7009 §2.1). A browser app using cookie delivery
    /// may leave it out and send its refresh cookie instead (with X-Tessera-CSRF: 1);
    /// absent with no cookie, or empty: 400 invalid_request.
    #[schema(required = true, nullable = false, min_length = 1)]
    token: Option<String>,
    /// A public client names itself; a confidential one authenticates (HTTP Basic or
    /// this and `client_secret`). None: the default public client.
    #[schema(nullable = false)]
    client_id: Option<String>,
    #[schema(nullable = false)]
    client_secret: Option<String>,
}

/// RFC 7009 §2.2: 200 whether or not the token was known, or was the caller's.
#[utoipa::path(post, path = "/oauth/revoke", tag = "oauth", security((), ("basic" = [])),
    description = "RFC 7009: ends the session of a live refresh token or of an access token, if it was issued to the calling client. Without `token`, the refresh cookie is the token (needs X-Tessera-CSRF: 1 and an allowed Origin, else 403 csrf_check_failed); revoking the cookie's own token (either way) clears it (Max-Age=0). A confidential client authenticates (HTTP Basic or client_secret_post); a public one names itself with client_id (none: the default client `app`). 200 also for unknown, spent, and other clients' tokens, and nothing is revoked then. A DPoP-bound token (RFC 9449) is revoked only with a `DPoP` proof by its key (htm POST, htu `<issuer>/oauth/revoke`): its own client asking without one, or with another key's, gets 400 invalid_dpop_proof and nothing is revoked (the cookie is kept). A malformed or replayed proof is 400 invalid_dpop_proof.",
    params(("DPoP" = Option<String>, Header, description = "A DPoP proof JWT by the key a bound token is bound to")),
    request_body(content = RevokeRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Revoked, or nothing to revoke for this client"), (status = 400, description = "Malformed request, or invalid_dpop_proof", body = crate::http::error::Body), (status = 401, description = "invalid_client: a confidential client without valid credentials, or an unknown client (WWW-Authenticate: Basic)", body = crate::http::error::Body), (status = 403, description = "csrf_check_failed", body = crate::http::error::Body), (status = 503, description = "Store unavailable or at capacity (Retry-After)", body = crate::http::error::Body)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    ClientInfo(caller): ClientInfo,
    BasicAuth(basic): BasicAuth,
    headers: HeaderMap,
    OAuthParams(req): OAuthParams<RevokeRequest>,
) -> Result<Response, ApiError> {
    let from_cookie = match &req.token {
        None => state.browser.read(&headers),
        Some(_) => None,
    };
    if from_cookie.is_some() {
        state.browser.check_csrf(&headers)?;
    }
    let at = now();
    let proof = endpoint_proof(&state, &headers, "/oauth/revoke", at)
        .map_err(|e| ApiError::from(e).with_dpop_nonce(state.auth.dpop_nonce(at)))?;
    let client = request_client(
        &state,
        basic,
        req.client_id.as_deref(),
        req.client_secret.as_deref(),
    )
    .await?;
    let token = match &from_cookie {
        Some(t) => t.as_str(),
        None => required(&req.token, "token")?,
    };
    state
        .auth
        .revoke_token(token, &client, proof.as_ref(), &caller, at)
        .await?;
    let mut response = ([(header::CACHE_CONTROL, "no-store")], "").into_response();
    // The browser's cookie is dead once its own token is revoked; revoking another
    // token leaves it alone.
    if from_cookie.is_some() || state.browser.read(&headers).as_deref() == req.token.as_deref() {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, state.browser.clear());
    }
    Ok(response)
}
