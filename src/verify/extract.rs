//! The axum extractor: `async fn handler(user: Authenticated)`.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Claims, Verifier, VerifyError};

/// The verified claims of the request's bearer token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

/// 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3).
#[derive(Debug)]
pub struct Rejection(Option<VerifyError>);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (challenge, description) = match self.0 {
            None => ("Bearer".to_owned(), "a bearer token is required".to_owned()),
            Some(e) => (
                format!("Bearer error=\"invalid_token\", error_description=\"{e}\""),
                e.to_string(),
            ),
        };
        let code = if self.0.is_some() {
            "invalid_token"
        } else {
            "unauthorized"
        };
        let body = serde_json::json!({"error": code, "error_description": description}).to_string();
        let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(Rejection(None))?;
        let (scheme, token) = value.split_once(' ').ok_or(Rejection(None))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Rejection(None));
        }
        verifier
            .verify(token.trim())
            .await
            .map(Authenticated)
            .map_err(|e| Rejection(Some(e)))
    }
}
