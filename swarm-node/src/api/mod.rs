//! The HTTP surface of a node, served on the control port (mutual TLS) and on the local
//! unix socket: the Docker Engine API's swarm part ([`docker`]) and the internal cluster
//! API between nodes ([`internal`], under `/swarmup/v1`).
//!
//! Who may call what is decided here from the caller's certificate (`swarm_pki::Peer`)
//! and the committed state: the Docker API needs an administrator certificate or the
//! certificate of a node that the state knows as a manager (workers get 403); the
//! internal API checks that a node still belongs to the swarm (and is a manager for
//! manager-only calls) and speaks only for itself. See [`authority`].

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{Request, Uri};
use axum::Router;
use swarm_pki::{Peer, PeerIdentity, Role};
use swarm_state::models::NodeSpecRoleEnum;
use swarm_state::{node_role, ClusterState};
use tower::ServiceExt;

use crate::error::{docker_shaped, ApiError, MAX_BODY_BYTES, NOT_A_MANAGER, PAGE_NOT_FOUND};
use crate::manager::Manager;

pub mod defaults;
pub mod docker;
pub mod filters;
pub mod internal;
pub mod limits;
pub mod logs;
pub mod networks;
pub mod proxy;
pub mod secrets;
pub mod unlock;

/// The Docker API version this node speaks (that of Docker Engine 20.10).
pub const API_VERSION: &str = "1.41";
pub const MIN_API_VERSION: &str = "1.24";

/// What every handler can see of the node.
#[derive(Debug)]
pub struct NodeContext {
    pub node_id: String,
    pub cluster_id: String,
    pub advertise_addr: String,
    pub hostname: String,
    pub ca_pem: String,
    /// Present while this node is a manager.
    pub manager: RwLock<Option<Arc<Manager>>>,
    /// Set by `swarm-node leave`: the daemon stops, removes its task containers and
    /// forgets the swarm.
    pub leave: tokio::sync::watch::Sender<bool>,
    /// The node's own Docker Engine, where every other Docker API call goes
    /// ([`proxy`]); `None` answers them 404, as before there was one.
    pub docker_socket: Option<std::path::PathBuf>,
    /// The managers this node last heard of (its heartbeat answers): on a node without
    /// the manager part, the only way to tell a current manager's certificate from a
    /// demoted one's.
    pub known_managers: RwLock<std::collections::HashSet<String>>,
}

impl NodeContext {
    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager.read().expect("manager lock").clone()
    }

    /// The manager part, or Docker's answer for a node that is not a manager.
    pub fn require_manager(&self) -> Result<Arc<Manager>, ApiError> {
        self.manager()
            .ok_or_else(|| ApiError::Unavailable(NOT_A_MANAGER.into()))
    }
}

pub type Ctx = Arc<NodeContext>;

/// Checks that the caller may use the Docker API: an administrator certificate, or the
/// certificate of a node that the committed state still knows as a manager.
///
/// The certificate's role alone is not enough: a demoted manager keeps its old
/// certificate (it stays valid until it expires), and so does a removed node.
pub fn require_admin<'a>(ctx: &NodeContext, peer: &'a Peer) -> Result<&'a PeerIdentity, ApiError> {
    match &peer.identity {
        Some(p) if p.role == Role::Admin => Ok(p),
        Some(p) if p.role == Role::Manager => {
            // A node that is not a manager has no replica to check against; its own
            // certificate says manager, which the state would have to confirm.
            let Some(manager) = ctx.manager() else {
                return Err(ApiError::Forbidden(NOT_A_MANAGER.into()));
            };
            authority(&manager.read(), &p.node_id, Need::Manager).map_err(ApiError::from)?;
            Ok(p)
        }
        Some(_) => Err(ApiError::Forbidden(NOT_A_MANAGER.into())),
        None => Err(ApiError::Forbidden(
            "a client certificate from this swarm's CA is required: use `swarmup env` or the node's unix socket".into(),
        )),
    }
}

/// The manager part, for a caller allowed to use the Docker API: what nearly every
/// Docker API handler needs first.
#[derive(Debug)]
pub struct AdminManager(pub Arc<Manager>);

impl axum::extract::FromRequestParts<Ctx> for AdminManager {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Ctx,
    ) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .cloned()
            .unwrap_or_else(Peer::anonymous);
        require_admin(ctx, &peer)?;
        let manager = ctx.require_manager()?;
        // As SwarmKit, which serves every control call through the leader: without one,
        // the state here may be stale (dead managers still shown Ready), so say so.
        manager.require_leader().await?;
        Ok(AdminManager(manager))
    }
}

/// Checks that the caller holds a node certificate of this swarm and returns its
/// identity. Whether the node still belongs to the swarm is checked against the state
/// by [`authority`] (see `internal.rs`).
pub fn require_node(peer: &Peer) -> Result<&PeerIdentity, ApiError> {
    match &peer.identity {
        Some(p) if matches!(p.role, Role::Manager | Role::Worker) => Ok(p),
        _ => Err(ApiError::Forbidden(
            "only nodes of this swarm may call this".into(),
        )),
    }
}

/// What a call needs of the calling node in the committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The node exists (it joined and was not removed): worker calls.
    Node,
    /// The node exists and its role is manager: manager-only calls.
    Manager,
}

/// Why the committed state refuses a node certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("node {0} is not part of this swarm: it was removed (docker node rm) or never joined, so its certificate is no longer accepted")]
    UnknownNode(String),
    #[error("node {0} is not a swarm manager: it was demoted (docker node demote), so its manager certificate no longer grants manager rights")]
    NotAManager(String),
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::Forbidden(r.to_string())
    }
}

/// Decides whether node `node_id` may make a call that needs `need`, from the committed
/// state of this manager. Authority comes from the state, never from the certificate's
/// role alone: a demotion or a removal takes effect as soon as it is applied here. A map
/// lookup, cheap enough for every request.
pub fn authority(state: &ClusterState, node_id: &str, need: Need) -> Result<(), Refusal> {
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| Refusal::UnknownNode(node_id.to_string()))?;
    if need == Need::Manager && node_role(node) != NodeSpecRoleEnum::MANAGER {
        return Err(Refusal::NotAManager(node_id.to_string()));
    }
    Ok(())
}

/// Docker's answer to an unknown path, and (as dockerd does) to a known path asked with
/// a method it does not take.
async fn page_not_found() -> ApiError {
    ApiError::NotFound(PAGE_NOT_FOUND.into())
}

/// The whole router. Docker clients put the API version in front of every path
/// (`/v1.41/nodes`); it is stripped before routing, so one set of routes serves all.
/// Every error leaves as Docker's `{"message": ...}`, including those axum makes itself
/// (unknown routes, methods, oversized bodies, unreadable query strings and paths).
pub fn router(ctx: Ctx) -> Router {
    let inner = docker::routes()
        .merge(internal::routes())
        .fallback(proxy::to_engine)
        .method_not_allowed_fallback(page_not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(docker_shaped))
        .with_state(ctx);
    Router::new().fallback_service(tower::service_fn(move |request: Request<Body>| {
        let inner = inner.clone();
        async move { inner.oneshot(strip_version(request)).await }
    }))
}

fn strip_version(mut request: Request<Body>) -> Request<Body> {
    let original = proxy::OriginalUri(request.uri().clone());
    request.extensions_mut().insert(original);
    let path = request.uri().path();
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some((version, tail)) = rest.split_once('/') {
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                let mut new = format!("/{tail}");
                if let Some(q) = request.uri().query() {
                    new.push('?');
                    new.push_str(q);
                }
                if let Ok(uri) = new.parse::<Uri>() {
                    *request.uri_mut() = uri;
                }
            }
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Arc::new(NodeContext {
            node_id: "n1".into(),
            cluster_id: "c1".into(),
            advertise_addr: "127.0.0.1:2377".into(),
            hostname: "node1".into(),
            ca_pem: String::new(),
            manager: RwLock::new(None),
            leave: tokio::sync::watch::channel(false).0,
            docker_socket: None,
            known_managers: RwLock::default(),
        })
    }

    async fn call(method: &str, uri: &str) -> (u16, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = router(ctx()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let ct = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_answer_as_dockerd() {
        let not_found = (
            404,
            "application/json".to_string(),
            r#"{"message":"page not found"}"#.to_string(),
        );
        assert_eq!(call("GET", "/v1.41/volumes").await, not_found);
        assert_eq!(call("GET", "/nope").await, not_found);
        assert_eq!(call("DELETE", "/v1.41/_ping").await, not_found);
        assert_eq!(call("PUT", "/v1.41/services/create").await, not_found);
        assert_eq!(call("GET", "/swarmup/v1/nope").await, not_found);
        let (status, _, body) = call("GET", "/v1.41/_ping").await;
        assert_eq!((status, body.as_str()), (200, "OK"));
    }

    #[test]
    fn version_prefix_is_stripped() {
        let r = Request::builder()
            .uri("/v1.41/nodes?filters=x")
            .body(Body::empty())
            .unwrap();
        assert_eq!(strip_version(r).uri(), "/nodes?filters=x");
        let r = Request::builder()
            .uri("/_ping")
            .body(Body::empty())
            .unwrap();
        assert_eq!(strip_version(r).uri(), "/_ping");
        let r = Request::builder()
            .uri("/volumes")
            .body(Body::empty())
            .unwrap();
        assert_eq!(strip_version(r).uri(), "/volumes");
    }
}
