//! Operators: liveness and readiness.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.auth.store.ping().await {
        Ok(()) => Ok(Json(
            json!({"status": "ok", "store": state.auth.store.backend()}),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::unavailable(2))
        }
    }
}
