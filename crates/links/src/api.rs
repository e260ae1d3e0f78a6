//! The JSON side of the API: request bodies, whose rejections become JSON errors naming the
//! problem (400 for malformed or mistyped JSON, 413 over `links.max_body_bytes`, 415 without a
//! JSON content type), and every error answer as `{"error": <code>, "detail": <text>}`.
//! Fields a body does not declare are ignored.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CACHE_CONTROL, RETRY_AFTER};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::metrics::{self, Rejection};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
    retry_after_secs: Option<u64>,
    counted_as: Option<Rejection>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>, counted_as: Option<Rejection>) -> Self {
        Self { status, error, detail: detail.into(), retry_after_secs: None, counted_as }
    }

    /// A field with a value we cannot use (400).
    pub fn invalid(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail, Some(Rejection::InvalidRequest))
    }

    /// A code that is malformed or not issued (404).
    pub fn unknown_code(typed: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_code", format!("`{typed}` is not a referral code"), Some(Rejection::UnknownCode))
    }

    /// A code whose validity ended; the click was recorded (404).
    pub fn expired_code(code: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "expired_code", format!("referral code {code} has expired"), None)
    }

    /// Over a rate limit (429 with `Retry-After`).
    pub fn rate_limited(retry_after_secs: u64, why: Rejection) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {retry_after_secs} seconds"),
            Some(why),
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// Postgres cannot be reached right now (503); the cause is logged, not answered.
    pub fn unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service cannot record this right now",
            Some(Rejection::Unavailable),
        );
        e.retry_after_secs = Some(1);
        e
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let detail = r.body_text();
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", detail, Some(Rejection::BodyTooLarge))
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", detail, Some(Rejection::InvalidRequest))
            }
            _ => Self::new(StatusCode::BAD_REQUEST, "invalid_json", detail, Some(Rejection::InvalidRequest)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(why) = self.counted_as {
            metrics::rejected(why);
        }
        let body = Json(serde_json::json!({ "error": self.error, "detail": self.detail }));
        let mut response = (self.status, [(CACHE_CONTROL, "no-store")], body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(RETRY_AFTER, secs.into());
        }
        response
    }
}

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}
