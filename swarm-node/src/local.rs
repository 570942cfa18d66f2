//! A client for the node's own unix socket, used by the command-line verbs that talk to a
//! running daemon (`join-token`, `status`, `nodes`, `client-cert`).

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot reach swarm-node on {path}: {reason} (is `swarm-node run` running?)")]
    Unreachable { path: String, reason: String },
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the body of a successful answer.
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, LocalError> {
    let unreachable = |reason: String| LocalError::Unreachable {
        path: socket.display().to_string(),
        reason,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", "swarm-node")
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| unreachable(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    driver.abort();
    if status.is_success() {
        Ok(bytes)
    } else {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(LocalError::Refused(message))
    }
}

pub async fn get_json(socket: &Path, path: &str) -> Result<serde_json::Value, LocalError> {
    let bytes = call(socket, "GET", path, None).await?;
    serde_json::from_slice(&bytes).map_err(|e| LocalError::Refused(e.to_string()))
}
