//! The one error type at the HTTP edge. Every error body is
//! `{"error": code, "error_description": text}` (exactly RFC 6749 §5.2 on OAuth
//! routes); internal causes are logged here and never returned.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;

/// RFC 9449 §8: the header that carries a server's nonce.
pub const DPOP_NONCE: &str = "dpop-nonce";
const DPOP_ALGS: &str = "DPoP algs=\"ES256 EdDSA\"";

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    description: String,
    retry_after: Option<u32>,
    /// A 401 of a resource route that takes DPoP: challenge with the DPoP scheme.
    dpop_challenge: bool,
    /// `DPoP-Nonce`: the nonce a client should put in its next proof.
    dpop_nonce: Option<String>,
}

/// Every error: `{"error": code, "error_description": text}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(crate) struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            dpop_challenge: false,
            dpop_nonce: None,
        }
    }

    /// A 401 from a route that takes DPoP-bound tokens: the challenge names the DPoP
    /// scheme (with the Bearer one too when no token was sent), and `nonce` goes out as
    /// `DPoP-Nonce`.
    pub fn dpop_challenge(self, nonce: Option<String>) -> Self {
        Self {
            dpop_challenge: true,
            dpop_nonce: nonce.or(self.dpop_nonce),
            ..self
        }
    }

    /// Sends `DPoP-Nonce` with the error (the token endpoint does when nonces are on).
    pub fn with_dpop_nonce(self, nonce: Option<String>) -> Self {
        Self {
            dpop_nonce: nonce.or(self.dpop_nonce),
            ..self
        }
    }

    pub fn bad_request(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, description)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn unavailable(retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            )
        }
    }

    /// Adds `Retry-After` (seconds) to the response.
    pub fn retry_after(self, secs: u32) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use StatusCode as S;
        let text = e.to_string();
        match e {
            AuthError::InvalidRequest(_) => Self::new(S::BAD_REQUEST, "invalid_request", text),
            AuthError::InvalidClient => Self::new(S::UNAUTHORIZED, "invalid_client", text),
            AuthError::InvalidGrant(_) => Self::new(S::BAD_REQUEST, "invalid_grant", text),
            AuthError::InvalidScope(_) => Self::new(S::BAD_REQUEST, "invalid_scope", text),
            AuthError::InvalidEmail(_) => Self::new(S::BAD_REQUEST, "invalid_email", text),
            AuthError::InvalidPassword(_) => Self::new(S::BAD_REQUEST, "invalid_password", text),
            AuthError::EmailTaken => Self::new(S::CONFLICT, "email_taken", text),
            AuthError::SignupDisabled => Self::new(S::FORBIDDEN, "signup_disabled", text),
            AuthError::InvalidDpopProof(p) => Self::new(S::BAD_REQUEST, p.code(), text),
            AuthError::DpopRequired(_) => Self::new(S::BAD_REQUEST, "invalid_dpop_proof", text),
            AuthError::InvalidToken(_) | AuthError::SessionEnded { dpop: false } => {
                Self::new(S::UNAUTHORIZED, "invalid_token", text)
            }
            AuthError::SessionEnded { dpop: true } => {
                Self::new(S::UNAUTHORIZED, "invalid_token", text).dpop_challenge(None)
            }
            AuthError::Forbidden => Self::new(S::FORBIDDEN, "insufficient_scope", text),
            AuthError::NotFound => Self::not_found(),
            AuthError::Busy => Self::unavailable(1),
            AuthError::Throttled(secs) => Self {
                retry_after: Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX)),
                ..Self::new(S::TOO_MANY_REQUESTS, "too_many_requests", text)
            },
            AuthError::Unavailable => {
                tracing::warn!("store unavailable");
                Self::unavailable(2)
            }
            AuthError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Self::new(S::INTERNAL_SERVER_ERROR, "server_error", "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            error_description: &self.description,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(nonce) = self
            .dpop_nonce
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            headers.insert(DPOP_NONCE, nonce);
        }
        if self.status == StatusCode::UNAUTHORIZED && self.dpop_challenge {
            // RFC 9449 §7.1: the DPoP scheme, with the algorithms we take; when no token
            // was sent, the Bearer scheme too.
            let challenge = if self.code == "unauthorized" {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tessera\""),
                );
                DPOP_ALGS.to_owned()
            } else {
                format!(
                    "{DPOP_ALGS}, error=\"{}\", error_description=\"{}\"",
                    self.code,
                    self.description.replace('"', "'")
                )
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                headers.append(header::WWW_AUTHENTICATE, v);
            }
        } else if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: an error code only when a token was presented.
            let challenge = match self.code {
                "invalid_client" => "Basic realm=\"tessera\"".to_owned(),
                "invalid_token" => format!(
                    "Bearer realm=\"tessera\", error=\"invalid_token\", error_description=\"{}\"",
                    self.description.replace('"', "'")
                ),
                _ => "Bearer realm=\"tessera\"".to_owned(),
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
