//! The axum extractor: `async fn handler(user: Authenticated)`. Accepts bearer tokens
//! and DPoP-bound tokens with their proofs (RFC 9449 §7).

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::dpop::{self, Scheme};
use super::{Claims, Verifier, VerifyError};

/// The verified claims of the request's access token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

/// 401 with a `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9449 §7.1): `DPoP` with
/// `error="invalid_dpop_proof"` or `"invalid_token"` when the DPoP rules refused the
/// request, `Bearer` otherwise, and both when no token was sent. 503 with
/// `Retry-After` when the replay cache is full of live proofs.
#[derive(Debug)]
pub struct Rejection {
    error: Option<VerifyError>,
    scheme: Option<Scheme>,
}

const DPOP_ALGS: &str = "DPoP algs=\"ES256 EdDSA\"";

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        if let Some(VerifyError::Busy) = self.error {
            let body = serde_json::json!({
                "error": "temporarily_unavailable",
                "error_description": VerifyError::Busy.to_string(),
            });
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::RETRY_AFTER, HeaderValue::from_static("1")),
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                ],
                body.to_string(),
            )
                .into_response();
        }
        let mut challenges = Vec::new();
        let (code, description) = match self.error {
            None => {
                challenges.push("Bearer".to_owned());
                challenges.push(DPOP_ALGS.to_owned());
                ("unauthorized", "an access token is required".to_owned())
            }
            Some(e) => {
                let code = match e {
                    VerifyError::Dpop(p) => p.code(),
                    _ => "invalid_token",
                };
                let dpop_rule = matches!(
                    e,
                    VerifyError::Dpop(_)
                        | VerifyError::DpopBoundAsBearer
                        | VerifyError::NotDpopBound
                        | VerifyError::ResourceUrlUnset
                );
                let scheme = if dpop_rule || self.scheme == Some(Scheme::DPoP) {
                    DPOP_ALGS
                } else {
                    "Bearer"
                };
                let sep = if scheme == "Bearer" { " " } else { ", " };
                challenges.push(format!(
                    "{scheme}{sep}error=\"{code}\", error_description=\"{e}\""
                ));
                (code, e.to_string())
            }
        };
        let body = serde_json::json!({"error": code, "error_description": description}).to_string();
        let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for c in challenges {
            if let Ok(v) = HeaderValue::from_str(&c) {
                headers.append(header::WWW_AUTHENTICATE, v);
            }
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
        let missing = || Rejection {
            error: None,
            scheme: None,
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let (scheme, _) = dpop::authorization(value).ok_or_else(missing)?;
        let refuse = |e| Rejection {
            error: Some(e),
            scheme: Some(scheme),
        };
        let proof = dpop::proof_header(&parts.headers).map_err(|e| refuse(VerifyError::Dpop(e)))?;
        // The path the client called, also when this router is nested in another.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.path(), |u| u.0.path());
        // Only the configured public URL: the Host header is the client's to choose, so
        // a proof made for another service that takes the same tokens could be replayed
        // here under that service's name.
        let url = verifier
            .config()
            .resource_url
            .as_ref()
            .map(|base| format!("{}{path}", base.trim_end_matches('/')));
        verifier
            .request(value, proof, parts.method.as_str(), url.as_deref(), None)
            .await
            .map(Authenticated)
            .map_err(refuse)
    }
}
