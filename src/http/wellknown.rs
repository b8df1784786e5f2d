//! Discovery for services and clients: the JWKS and RFC 8414 metadata.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "discovery", responses((status = 200, description = "The public signing keys (RFC 7517); Cache-Control: max-age")))]
pub(crate) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let keys = state.auth.keys();
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CACHE_CONTROL,
                format!("public, max-age={}", state.jwks_max_age_secs),
            ),
        ],
        keys.jwks_json().to_owned(),
    )
}

#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "discovery", responses((status = 200, description = "RFC 8414 metadata")))]
pub(crate) async fn metadata(State(state): State<AppState>) -> impl IntoResponse {
    let iss = state.issuer.trim_end_matches('/');
    Json(serde_json::json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/oauth/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "introspection_endpoint": format!("{iss}/oauth/introspect"),
        "grant_types_supported": ["password", "refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_feed_endpoint": format!("{iss}/v1/revocations"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": [],
        "access_token_signing_alg_values_supported": [state.auth.key_policy.alg],
        "dpop_signing_alg_values_supported": crate::verify::dpop::ALGORITHMS,
    }))
}
