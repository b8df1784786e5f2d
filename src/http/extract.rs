//! Request extractors that turn malformed input into clear 4xx errors: OAuth
//! parameters (form or JSON), JSON bodies, bearer tokens, and the caller's address.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::extract::{Path, Query};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::auth::Caller;
use crate::tokens::access::MAX_TOKEN_BYTES;

const MAX_USER_AGENT: usize = 256;

/// Seconds since the Unix epoch: the one place the HTTP layer reads the clock.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is too large",
    )
}

/// serde messages can quote the offending value (a password, say); only the
/// "missing field" kind is safe and useful to repeat.
fn shape_error(text: String) -> ApiError {
    let description = match text.find("missing field") {
        Some(i) => text[i..].to_owned(),
        None => "the body does not have the expected fields and types".to_owned(),
    };
    ApiError::bad_request("invalid_request", description)
}

fn from_json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => shape_error(e.body_text()),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("invalid_request", "the body is not valid JSON")
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("invalid_request", "expected Content-Type: application/json")
        }
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => ApiError::bad_request("invalid_request", "the body could not be read"),
    }
}

fn from_form_rejection(r: FormRejection) -> ApiError {
    match r {
        FormRejection::FailedToDeserializeForm(e) => shape_error(e.body_text()),
        FormRejection::FailedToDeserializeFormBody(e) => shape_error(e.body_text()),
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => ApiError::bad_request("invalid_request", "the form body could not be read"),
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| Self(v))
            .map_err(from_json_rejection)
    }
}

/// OAuth endpoint parameters: `application/x-www-form-urlencoded` (RFC 6749) or JSON.
pub struct OAuthParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OAuthParams<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            JsonBody::<T>::from_request(req, state)
                .await
                .map(|JsonBody(v)| Self(v))
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            axum::Form::<T>::from_request(req, state)
                .await
                .map(|axum::Form(v)| Self(v))
                .map_err(from_form_rejection)
        } else {
            Err(ApiError::bad_request(
                "invalid_request",
                "expected Content-Type: application/x-www-form-urlencoded or application/json",
            ))
        }
    }
}

/// The verified claims of the request's access token: a bearer token, or a
/// DPoP-bound one with `Authorization: DPoP` and a proof by its key for this method and
/// URL (`<issuer><path>`), with `ath`, not seen before on any instance, and with a
/// nonce when the server asks for them (RFC 9449 §7). Whether the session is still
/// live is the handler's to ask.
pub struct Access(pub crate::verify::Claims);

impl FromRequestParts<super::AppState> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        use crate::verify::dpop::{self, Scheme, UseError};
        let missing = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an access token is required",
            )
            .dpop_challenge(None)
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(missing)?;
        let (scheme, token) = dpop::authorization(value).ok_or_else(missing)?;
        let as_dpop = |e: ApiError| {
            if scheme == Scheme::DPoP {
                e.dpop_challenge(None)
            } else {
                e
            }
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(as_dpop(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "malformed access token",
            )));
        }
        let claims = state
            .auth
            .verify_access(token)
            .map_err(|e| as_dpop(e.into()))?;
        let at = now();
        let refuse = |e: dpop::ProofError| {
            // A replay was counted where it was found.
            if e != dpop::ProofError::Replayed {
                state.auth.metrics.dpop_refused(e.reason());
            }
            let nonce = match e {
                dpop::ProofError::UseNonce => state.auth.dpop_nonce(at),
                _ => None,
            };
            ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()).dpop_challenge(nonce)
        };
        let proof = dpop::proof_header(&parts.headers).map_err(refuse)?;
        let url = format!("{}{}", state.issuer.trim_end_matches('/'), parts.uri.path());
        let expect = dpop::Expect {
            method: parts.method.as_str(),
            url: &url,
            also_url: None,
            access_token: Some(token),
            now: at,
        };
        let cnf = claims.cnf.as_ref().map(|c| c.jkt.as_str());
        let proof = match dpop::check_use(cnf, scheme, token, proof, &expect) {
            Ok(proof) => proof,
            Err(UseError::Proof(e)) => return Err(refuse(e)),
            Err(e @ (UseError::BoundAsBearer | UseError::NotBound)) => {
                let error = match e {
                    UseError::BoundAsBearer => crate::verify::VerifyError::DpopBoundAsBearer,
                    _ => crate::verify::VerifyError::NotDpopBound,
                };
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    error.to_string(),
                )
                .dpop_challenge(None));
            }
        };
        if let Some(proof) = proof {
            let checked = match state.auth.check_dpop_nonce(&proof, at) {
                Ok(()) => state.auth.claim_dpop_proof(&proof).await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => {}
                Err(crate::auth::AuthError::InvalidDpopProof(e)) => return Err(refuse(e)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self(claims))
    }
}

/// The caller's address (from the socket) and user agent.
pub struct ClientInfo(pub Caller);

impl FromRequestParts<super::AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        // A proxy may append a line of its own rather than extend the first: every
        // line, in order, is one list (RFC 9110 §5.3). A line that is not text is a
        // hop nobody can vouch for, so the walk from the right stops there.
        let lines: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("unreadable"))
            .collect();
        let forwarded = (!lines.is_empty()).then(|| lines.join(","));
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| {
                super::client_addr::resolve(addr.ip(), forwarded.as_deref(), &state.trusted_proxies)
                    .to_string()
            });
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
        Ok(Self(Caller { ip, user_agent }))
    }
}

/// A UUID path segment; anything else is a 400 `invalid_id`, not a 404 or a 500.
pub struct PathId(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::bad_request("invalid_id", "the id in the path is not a UUID");
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid())?;
        raw.parse().map(Self).map_err(|_| invalid())
    }
}

/// Query parameters whose rejections are JSON errors.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|_| ApiError::bad_request("invalid_request", "the query string is malformed"))
    }
}

/// Client credentials from an `Authorization: Basic` header (RFC 6749 §2.3.1), if sent.
pub struct BasicAuth(pub Option<(String, String)>);

/// `application/x-www-form-urlencoded` decoding of one credential part.
fn form_decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = part.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl<S: Send + Sync> FromRequestParts<S> for BasicAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        use base64::Engine;
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(Self(None));
        };
        let value = value.to_str().unwrap_or_default();
        let Some((scheme, encoded)) = value.split_once(' ') else {
            return Ok(Self(None));
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Ok(Self(None));
        }
        let bad = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "malformed Basic credentials",
            )
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
        Ok(Self(Some((
            form_decode(id).ok_or_else(bad)?,
            form_decode(secret).ok_or_else(bad)?,
        ))))
    }
}
