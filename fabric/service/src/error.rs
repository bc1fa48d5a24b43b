//! Every API error is `{ "error": KIND, "detail": TEXT }` with an HTTP status: a 4xx for the
//! caller's mistakes (which change nothing), a 5xx for ours or the kernel's.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A kind a program can match: `invalid`, `not_found`, `conflict`, `in_use`,
    /// `unsupported`, `no_capacity`, `unauthorized`, `kernel`, `store`, `internal`, ...
    pub error: String,
    /// What went wrong, naming the input, object or step.
    pub detail: String,
}

/// An API error: status, kind, detail.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            detail: detail.into(),
        }
    }

    /// 400 `invalid`.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", detail)
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 500 `internal`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.kind.to_string(),
                detail: self.detail,
            }),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

/// The answer to a path no route has: 404 `not_found` in the same body.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such resource")
}
