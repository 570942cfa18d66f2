//! Autolock (`docker swarm update --autolock`, `docker swarm unlock-key`, `docker swarm
//! unlock`): while the swarm's state says autolock is on, every manager keeps its Raft
//! data key wrapped by the unlock key (`swarm_raft::UnlockKey`). A manager that starts
//! with a wrapped key is *locked*: it serves only `/_ping`, `GET /info` and
//! `POST /swarm/unlock` until someone gives it the key, and answers every other call with
//! Docker's 503. The daemon then opens Raft with the key and lifts the [`Lock`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use swarm_pki::Peer;
use swarm_raft::{UnlockError, UnlockKey};
use swarm_state::ClusterState;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;

use super::{require_admin, AdminManager, Ctx};
use crate::error::{error_response, ApiError};

/// Docker's answer to any call a locked manager cannot serve.
pub const SWARM_LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";

/// `POST /swarm/unlock`'s body.
#[derive(Debug, Deserialize)]
pub struct UnlockRequest {
    #[serde(rename = "UnlockKey", default)]
    unlock_key: String,
}

/// `GET /swarm/unlockkey`'s answer.
#[derive(Debug, Serialize)]
pub struct UnlockKeyResponse {
    #[serde(rename = "UnlockKey")]
    unlock_key: String,
}

/// A checked unlock key handed to the daemon, and where it says whether Raft opened.
pub type UnlockAttempt = (UnlockKey, oneshot::Sender<Result<(), String>>);

/// Whether this node is locked, and the way from `POST /swarm/unlock` to the daemon.
#[derive(Debug)]
pub struct Lock {
    locked: AtomicBool,
    /// The Raft directory, whose key file an unlock key must open.
    raft_dir: PathBuf,
    attempts: mpsc::Sender<UnlockAttempt>,
    /// One unlock at a time: a second caller waits, then finds the node unlocked.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Lock {
    /// A lock in state `locked`, and the receiver of the keys callers give.
    pub fn new(raft_dir: PathBuf, locked: bool) -> (Arc<Lock>, mpsc::Receiver<UnlockAttempt>) {
        let (tx, rx) = mpsc::channel(1);
        let lock = Lock {
            locked: AtomicBool::new(locked),
            raft_dir,
            attempts: tx,
            one_at_a_time: tokio::sync::Mutex::new(()),
        };
        (Arc::new(lock), rx)
    }

    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    /// Called by the daemon once Raft runs: the whole API is served from now on.
    pub fn lift(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }
}

/// The key file wrapping a manager wants for `state`: the unlock key's text while autolock
/// is on, `None` (in clear) otherwise.
pub fn wanted_wrapping(state: &ClusterState) -> Option<String> {
    let info = state.cluster.as_ref()?;
    let on = info
        .spec
        .encryption_config
        .as_ref()
        .and_then(|e| e.auto_lock_managers)
        .unwrap_or(false);
    (on && !info.unlock_key.is_empty()).then(|| info.unlock_key.clone())
}

/// True when the spec asks for autolock.
pub fn autolock_of(spec: &swarm_state::models::SwarmSpec) -> bool {
    spec.encryption_config
        .as_ref()
        .and_then(|e| e.auto_lock_managers)
        .unwrap_or(false)
}

/// The routes of a node that runs normally (merged into the Docker API's).
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/swarm/unlockkey", get(unlock_key))
        .route("/swarm/unlock", post(not_locked))
}

/// `docker swarm unlock-key`: the key while autolock is on, empty otherwise (the docker
/// CLI then says "no unlock key is set").
async fn unlock_key(AdminManager(manager): AdminManager) -> Json<UnlockKeyResponse> {
    let state = manager.read();
    Json(UnlockKeyResponse {
        unlock_key: wanted_wrapping(&state).unwrap_or_default(),
    })
}

/// `docker swarm unlock` on a node that is not locked.
async fn not_locked(State(ctx): State<Ctx>, peer: Peer) -> Result<Response, ApiError> {
    require_admin(&ctx, &peer)?;
    Ok(error_response(StatusCode::CONFLICT, "swarm is not locked"))
}

/// Serves `unlocked` (the whole API) unless `lock` holds, and the locked node's few
/// calls while it does.
pub fn gated(lock: Arc<Lock>, ctx: Ctx, unlocked: Router) -> Router {
    let locked = Router::new()
        .route("/_ping", get(super::docker::ping).head(super::docker::ping))
        .route("/version", get(super::docker::version))
        .route("/info", get(locked_info))
        .route("/swarm/unlock", post(unlock))
        .fallback(locked_fallback)
        .with_state((ctx, lock.clone()));
    Router::new().fallback_service(tower::service_fn(move |request: Request<Body>| {
        let (lock, locked, unlocked) = (lock.clone(), locked.clone(), unlocked.clone());
        async move {
            if lock.is_locked() {
                locked.oneshot(without_version(request)).await
            } else {
                unlocked.oneshot(request).await
            }
        }
    }))
}

/// The swarm's own paths: what a locked manager cannot serve without its state.
fn is_swarm_path(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    path.starts_with(swarm_state::proto::PREFIX)
        || matches!(
            first,
            "swarm" | "nodes" | "services" | "tasks" | "networks" | "secrets" | "configs"
        )
}

/// A locked manager's engine is not locked: as with Docker, `docker ps`, `images`,
/// `logs`… still reach it (for callers the engine part admits without the swarm's
/// state: the unix socket and administrator certificates). Swarm calls get Docker's 503.
async fn locked_fallback(
    State((ctx, _)): State<(Ctx, Arc<Lock>)>,
    peer: Peer,
    request: Request<Body>,
) -> Response {
    if is_swarm_path(request.uri().path()) {
        return ApiError::Unavailable(SWARM_LOCKED.into()).into_response();
    }
    super::proxy::to_engine(State(ctx), peer, request).await
}

/// `/v1.41/info` → `/info`, as the full router does before routing.
fn without_version(mut request: Request<Body>) -> Request<Body> {
    let path = request.uri().path();
    let Some((version, tail)) = path
        .strip_prefix("/v")
        .and_then(|rest| rest.split_once('/'))
    else {
        return request;
    };
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return request;
    }
    let mut new = format!("/{tail}");
    if let Some(q) = request.uri().query() {
        new.push('?');
        new.push_str(q);
    }
    if let Ok(uri) = new.parse() {
        *request.uri_mut() = uri;
    }
    request
}

type LockedState = (Ctx, Arc<Lock>);

/// `docker info` on a locked manager: the engine's answer with Docker's Swarm section
/// for a locked node.
async fn locked_info(
    State((ctx, _)): State<LockedState>,
    peer: Peer,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&ctx, &peer)?;
    let swarm = serde_json::json!({
        "NodeID": ctx.node_id,
        "NodeAddr": ctx
            .advertise_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| ctx.advertise_addr.clone()),
        "LocalNodeState": "locked",
        "ControlAvailable": false,
        "Error": SWARM_LOCKED,
        "RemoteManagers": null,
    });
    let engine = match ctx.docker_socket.as_ref() {
        Some(socket) => super::proxy::engine_json(socket, "/v1.41/info").await.ok(),
        None => None,
    };
    let mut info = engine.unwrap_or_else(|| {
        serde_json::json!({
            "ID": ctx.node_id,
            "Name": ctx.hostname,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "OSType": "linux",
            "OperatingSystem": "swarm-node",
        })
    });
    info["Swarm"] = swarm;
    Ok(Json(info))
}

/// `docker swarm unlock` on a locked manager: a malformed key is a 400, a key that does
/// not open the data key Docker's 401; neither touches the disk. A good key goes to the
/// daemon, and the answer waits until Raft runs.
async fn unlock(
    State((ctx, lock)): State<LockedState>,
    peer: Peer,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_admin(&ctx, &peer)?;
    let request: UnlockRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let _one = lock.one_at_a_time.lock().await;
    if !lock.is_locked() {
        return Ok(error_response(StatusCode::CONFLICT, "swarm is not locked"));
    }
    let key =
        UnlockKey::parse(&request.unlock_key).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let dir = lock.raft_dir.clone();
    let checked = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || swarm_raft::check_unlock_key(&dir, &key))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    match checked {
        Ok(()) => {}
        Err(e @ UnlockError::WrongKey) => {
            tracing::warn!("refused an unlock key that does not open the raft data key");
            return Ok(error_response(StatusCode::UNAUTHORIZED, e.to_string()));
        }
        Err(e @ UnlockError::Malformed) => return Err(ApiError::BadRequest(e.to_string())),
        Err(e @ UnlockError::NotLocked) => {
            return Ok(error_response(StatusCode::CONFLICT, e.to_string()))
        }
        Err(UnlockError::Io(e)) => return Err(ApiError::Internal(e.to_string())),
    }
    let (reply, answer) = oneshot::channel();
    if lock.attempts.send((key, reply)).await.is_err() {
        return Ok(error_response(StatusCode::CONFLICT, "swarm is not locked"));
    }
    match answer.await {
        Ok(Ok(())) => Ok(StatusCode::OK.into_response()),
        Ok(Err(e)) => Err(ApiError::Internal(format!(
            "swarm component could not be started: {e}"
        ))),
        Err(_) => Err(ApiError::Unavailable(
            "the node is shutting down".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{SwarmSpec, SwarmSpecEncryptionConfig};
    use swarm_state::ClusterInfo;

    fn state(autolock: Option<bool>, key: &str) -> ClusterState {
        ClusterState {
            cluster: Some(ClusterInfo {
                spec: SwarmSpec {
                    encryption_config: autolock.map(|on| SwarmSpecEncryptionConfig {
                        auto_lock_managers: Some(on),
                    }),
                    ..Default::default()
                },
                unlock_key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_key_file_is_wrapped_only_while_autolock_is_on_with_a_key() {
        assert_eq!(wanted_wrapping(&ClusterState::default()), None);
        assert_eq!(wanted_wrapping(&state(None, "")), None);
        assert_eq!(wanted_wrapping(&state(Some(false), "")), None);
        assert_eq!(wanted_wrapping(&state(Some(false), "SWMKEY-1-x")), None);
        assert_eq!(wanted_wrapping(&state(Some(true), "")), None);
        assert_eq!(
            wanted_wrapping(&state(Some(true), "SWMKEY-1-x")).as_deref(),
            Some("SWMKEY-1-x")
        );
    }

    #[test]
    fn versions_are_stripped_for_the_locked_routes() {
        let uri = |u: &str| {
            without_version(Request::builder().uri(u).body(Body::empty()).unwrap())
                .uri()
                .to_string()
        };
        assert_eq!(uri("/v1.41/info"), "/info");
        assert_eq!(uri("/v1.47/swarm/unlock?x=1"), "/swarm/unlock?x=1");
        assert_eq!(uri("/_ping"), "/_ping");
        assert_eq!(uri("/volumes"), "/volumes");
    }
}
