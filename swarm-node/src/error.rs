//! The errors of the node daemon, and how they map to Docker-shaped HTTP answers.

use axum::http::{header, HeaderValue, StatusCode};
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
    PayloadTooLarge(String),
    /// 410: the caller's node is no longer part of the swarm (`docker node rm`). A
    /// heartbeat answered so tells the node to leave.
    #[error("{0}")]
    Removed(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Docker's words for a call that needs a manager, sent to a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// Docker's answer to a path it does not serve, and to a method a path does not take.
pub const PAGE_NOT_FOUND: &str = "page not found";

/// The largest request body the Docker API reads (specs are a few kilobytes).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Docker's words when no leader can be reached.
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Removed(_) => StatusCode::GONE,
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
        error_response(self.status(), self.to_string())
    }
}

/// Docker's error body, `{"message": ...}`, with any status.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "message": message.into() });
    (status, axum::Json(body)).into_response()
}

/// What an error answer that came without Docker's body says: the plain text axum's
/// extractors give (a bad query string, path or JSON body), or, when there is none,
/// words for the status itself.
pub fn message_for(status: StatusCode, text: &str) -> String {
    let text = text.trim();
    match status {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED if text.is_empty() => {
            PAGE_NOT_FOUND.into()
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body too large: the limit is {} bytes",
            MAX_BODY_BYTES
        ),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
        _ => text.to_string(),
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A response layer: every 4xx/5xx answer leaves with Docker's JSON body, whoever made it
/// (our handlers already do; axum's extractor rejections and default answers do not).
pub async fn docker_shaped(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are short; a longer body is cut rather than buffered whole.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    // Other headers (Allow, API-Version…) are kept; only the body and its type change.
    let body = error_response(status, message_for(status, &text)).into_body();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    async fn body_of(response: Response) -> (StatusCode, String, serde_json::Value) {
        let status = response.status();
        let ct = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            ct,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn plain_errors_become_docker_shaped() {
        let plain = |status: StatusCode, text: &'static str| {
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from(text))
                .unwrap()
        };
        let cases = [
            (StatusCode::NOT_FOUND, "", "page not found"),
            (StatusCode::METHOD_NOT_ALLOWED, "", "page not found"),
            (
                StatusCode::BAD_REQUEST,
                "Failed to deserialize query string: bad",
                "Failed to deserialize query string: bad",
            ),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Failed to buffer the request body: length limit exceeded",
                "request body too large: the limit is 2097152 bytes",
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
                "internal server error",
            ),
        ];
        for (status, text, want) in cases {
            let (got, ct, body) = body_of(docker_shaped(plain(status, text)).await).await;
            assert_eq!(got, status);
            assert_eq!(ct, "application/json");
            assert_eq!(body, serde_json::json!({ "message": want }), "{status}");
        }
    }

    #[tokio::test]
    async fn json_and_success_answers_pass_untouched() {
        let ok = Response::new(Body::from("OK"));
        let (status, _, _) = body_of(docker_shaped(ok).await).await;
        assert_eq!(status, StatusCode::OK);
        let e = ApiError::Conflict("name conflicts".into()).into_response();
        let (status, ct, body) = body_of(docker_shaped(e).await).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(ct, "application/json");
        assert_eq!(body["message"], "name conflicts");
    }

    #[test]
    fn apply_errors_keep_docker_words() {
        let e = ApiError::from(ApplyError::VersionConflict {
            kind: "service".into(),
            id: "abc".into(),
            current: 3,
            given: 2,
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e
            .to_string()
            .starts_with("rpc error: code = Unknown desc = update out of sequence"));
        let e = ApiError::from(ApplyError::Invalid("bad".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
