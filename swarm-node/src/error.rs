//! The errors of the node daemon, and how they map to Docker-shaped HTTP answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use swarm_state::ApplyError;

/// An error returned by an API handler: Docker's `{"message": ...}` with a status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Docker's words for a call that needs a manager, sent to a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// Docker's words when no leader can be reached.
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            ApplyError::VersionConflict { .. } => {
                ApiError::BadRequest(format!("rpc error: code = Unknown desc = {e}"))
            }
            ApplyError::Conflict(m) => ApiError::Conflict(m),
            ApplyError::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}
