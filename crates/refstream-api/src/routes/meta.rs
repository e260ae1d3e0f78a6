//! The public routes: health, the OpenAPI document and the dashboard page. None of them holds
//! data: the dashboard is a static page that calls the API with the token its user signs in with.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when Postgres answers.
    pub status: String,
}

/// Liveness and readiness: Postgres answers.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => Json(Health { status: "ok".into() }).into_response(),
        Err(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "database unavailable".into() })).into_response(),
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], state.openapi.as_str().to_owned()).into_response()
}

/// The dashboard: funnel, leaderboard and review queue, for an operator who signs in with a token.
#[utoipa::path(get, path = "/dashboard", tag = "meta", responses((status = 200, description = "the dashboard page", content_type = "text/html")))]
pub async fn dashboard() -> Response {
    let mut response = Html(include_str!("../../dashboard.html")).into_response();
    let headers = response.headers_mut();
    // The page loads nothing from elsewhere and may not be framed.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The root sends a browser to the dashboard.
#[utoipa::path(get, path = "/", tag = "meta", responses((status = 303, description = "to /dashboard")))]
pub async fn root() -> Redirect {
    Redirect::to("/dashboard")
}
