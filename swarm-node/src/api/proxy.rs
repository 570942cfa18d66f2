//! The rest of the Docker Engine API: every path swarm-node does not serve itself
//! (containers, images, volumes, exec, system, build, plugins...) goes to the node's own
//! dockerd, so one endpoint per node answers `docker ps` as well as `docker node ls`, as a
//! Docker Swarm manager's engine does.
//!
//! Each request is sent as it came (the original path, with its API version) on a new
//! connection to the engine's unix socket, and the answer streams back (logs, events,
//! stats). Upgraded connections (`docker attach`, `docker exec`, `docker run -it`) are
//! joined byte for byte once both sides have switched protocols. Who may call is decided
//! before anything is sent: the same callers as the Docker API's swarm part (managers and
//! administrators over TLS, root on the unix socket).

use std::path::Path;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Uri};
use hyper_util::rt::TokioIo;
use swarm_pki::Peer;

use super::{require_admin, Ctx};
use crate::error::{ApiError, PAGE_NOT_FOUND};

/// The request's path and query as the client sent them, before the version prefix was
/// stripped for routing: the engine gets the version the client asked for.
#[derive(Debug, Clone)]
pub struct OriginalUri(pub Uri);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for OriginalUri {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<OriginalUri>()
            .cloned()
            .unwrap_or_else(|| OriginalUri(parts.uri.clone())))
    }
}

/// Swarm-mode calls of a Docker Engine that make no sense here, with what to do instead.
fn swarm_mode_call(path: &str) -> Option<&'static str> {
    let tail = path.trim_start_matches('/');
    let tail = match tail.split_once('/') {
        Some((v, rest))
            if v.starts_with('v') && v[1..].chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            rest
        }
        _ => tail,
    };
    match tail {
        "swarm/init" => Some("this node is already part of a swarm managed by swarm-node: create clusters with `swarmup create`"),
        "swarm/join" => Some("this node is already part of a swarm managed by swarm-node: add nodes with `swarmup create --nodes N` (or `swarm-node join` on the new machine)"),
        "swarm/leave" => Some("leave the swarm with `swarm-node leave` on this node (or remove it with `docker node rm` from a manager)"),
        _ => None,
    }
}

/// A current manager reading a task container's log on a node without the manager part
/// (`docker service logs` gathers them): the one engine call such a node allows a
/// manager certificate, checked against the managers its heartbeats named.
fn manager_reads_logs(ctx: &Ctx, peer: &Peer, method: &http::Method, path: &str) -> bool {
    let Some(identity) = peer.identity() else {
        return false;
    };
    let tail = path.trim_start_matches('/');
    let tail = tail
        .split_once('/')
        .filter(|(v, _)| v.starts_with('v'))
        .map_or(tail, |(_, rest)| rest);
    let is_logs = tail
        .strip_prefix("containers/")
        .and_then(|rest| rest.strip_suffix("/logs"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    *method == http::Method::GET
        && is_logs
        && identity.role == swarm_pki::Role::Manager
        && ctx
            .known_managers
            .read()
            .expect("managers lock")
            .contains(&identity.node_id)
}

/// The fallback of the router: unknown swarm-node paths go to the engine.
pub async fn to_engine(State(ctx): State<Ctx>, peer: Peer, request: Request) -> Response {
    let original = request
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| request.uri().clone());
    let path = original.path().to_string();
    let Some(socket) = ctx
        .docker_socket
        .clone()
        .filter(|_| !path.starts_with(swarm_state::proto::PREFIX))
    else {
        return ApiError::NotFound(PAGE_NOT_FOUND.into()).into_response();
    };
    if let Err(e) = require_admin(&ctx, &peer) {
        if !manager_reads_logs(&ctx, &peer, request.method(), &path) {
            return e.into_response();
        }
    }
    if let Some(message) = swarm_mode_call(&path) {
        // Read the (small) body first: answering before it and closing would make the
        // client's write fail with a broken pipe instead of showing the message.
        let _ = axum::body::to_bytes(request.into_body(), 64 * 1024).await;
        return ApiError::Unavailable(message.into()).into_response();
    }
    match forward(&socket, original, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Sends `request` to the engine at `socket` with `uri`, and joins upgraded connections.
pub async fn forward(socket: &Path, uri: Uri, mut request: Request) -> Result<Response, ApiError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "cannot reach this node's Docker Engine at {}: {e}",
            socket.display()
        ))
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::Internal(format!("engine connection: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "engine connection ended");
        }
    });
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    // The engine listens on a unix socket; any host name will do, as for the docker CLI.
    parts
        .headers
        .insert(http::header::HOST, HeaderValue::from_static("docker"));
    parts.extensions = http::Extensions::new();
    let outgoing = http::Request::from_parts(parts, body);
    let mut answer = sender
        .send_request(outgoing)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the Docker Engine did not answer: {e}")))?;
    if answer.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let engine_side = hyper::upgrade::on(&mut answer);
            tokio::spawn(async move {
                let (Ok(client), Ok(engine)) = (client_side.await, engine_side.await) else {
                    tracing::debug!("an upgraded connection did not complete");
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut engine = TokioIo::new(engine);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut engine).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            });
        }
    }
    Ok(answer.map(Body::new))
}

/// GETs a path from the engine and parses its JSON (for `/info`, which swarm-node
/// completes with its Swarm section).
pub async fn engine_json(socket: &Path, path: &str) -> Result<serde_json::Value, ApiError> {
    let request = http::Request::builder()
        .uri(path)
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let uri = request.uri().clone();
    let response = forward(socket, uri, request).await?;
    if !response.status().is_success() {
        return Err(ApiError::Unavailable(format!(
            "the Docker Engine answered {} to {path}",
            response.status()
        )));
    }
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .map_err(|e| ApiError::Internal(format!("engine answer: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(format!("engine answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_mode_calls_name_the_swarmup_way() {
        assert!(swarm_mode_call("/v1.41/swarm/init")
            .unwrap()
            .contains("swarmup create"));
        assert!(swarm_mode_call("/swarm/join").unwrap().contains("--nodes"));
        assert!(swarm_mode_call("/swarm/leave")
            .unwrap()
            .contains("swarm-node leave"));
        assert_eq!(swarm_mode_call("/v1.41/containers/json"), None);
        assert_eq!(swarm_mode_call("/swarm"), None);
    }
}
