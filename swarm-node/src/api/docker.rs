//! The Docker Engine API's swarm part: what `docker node …`, `docker service …` and
//! `docker info` call. Objects are bollard's models of the Docker API, so the stock
//! docker CLI reads them as it reads Docker's.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use swarm_pki::Peer;
use swarm_state::models::{
    self, JoinTokens, Node, NodeSpec, NodeSpecRoleEnum, NodeState, Reachability, Service,
    ServiceServiceStatus, ServiceSpec, Swarm, SwarmInfo, SystemInfo, SystemVersion, TaskState,
};
use swarm_state::{
    desired_of, ids::raft_id, node_hostname, node_role, node_state, ClusterState, Command,
};

use super::filters::Filters;
use super::networks::{
    check_port_use, resolve_service_networks, task_view, validate_endpoint_spec, virtual_ips,
};
use super::{require_admin, AdminManager, Ctx, API_VERSION, MIN_API_VERSION};
use crate::error::ApiError;
use crate::manager::scheduler;
use crate::manager::Manager;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/swarm", get(swarm))
        .route("/swarm/update", post(update_swarm))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(inspect_node).delete(remove_node))
        .route("/nodes/{id}/update", post(update_node))
        .route("/services", get(list_services))
        .route("/services/create", post(create_service))
        .route(
            "/services/{id}",
            get(inspect_service).delete(remove_service),
        )
        .route("/services/{id}/update", post(update_service))
        .route("/services/{id}/logs", get(super::logs::service_logs))
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(inspect_task))
        .route("/tasks/{id}/logs", get(super::logs::task_logs))
        .merge(super::networks::routes())
        .merge(super::secrets::routes())
        .merge(super::unlock::routes())
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    filters: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct VersionQuery {
    version: Option<String>,
    force: Option<String>,
    /// `previous` on a service update: `docker service rollback`.
    rollback: Option<String>,
    /// Where the client found its registry credentials (`spec` or `previous-spec`):
    /// accepted and not needed, swarm-node pulls without credentials.
    #[serde(rename = "registryAuthFrom")]
    #[allow(dead_code)]
    registry_auth_from: Option<String>,
}

/// The `version` an update must carry (the object's `Version.Index`, as `docker … update`
/// sends it), so that two writers cannot silently overwrite each other.
pub(super) fn required_version(kind: &str, raw: Option<&str>) -> ApiResult<u64> {
    let raw = raw.unwrap_or_default();
    let why = if raw.is_empty() {
        "the version parameter is required"
    } else {
        "not an unsigned number"
    };
    raw.parse::<u64>()
        .map_err(|_| ApiError::BadRequest(format!("invalid {kind} version '{raw}': {why}")))
}

/// A strict boolean query parameter (Go's `strconv.ParseBool`, which dockerd uses): absent
/// or empty is false, an unknown word is a 400 rather than a silent false.
fn bool_param(name: &str, raw: Option<&str>) -> ApiResult<bool> {
    match raw.unwrap_or_default() {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        other => Err(ApiError::BadRequest(format!(
            "invalid value for {name}: {other}: use true or false"
        ))),
    }
}

/// A lenient flag, as dockerd reads `force`: anything but empty, 0, no, false or none.
fn flag_param(raw: Option<&str>) -> bool {
    let v = raw.unwrap_or_default().trim().to_ascii_lowercase();
    !matches!(v.as_str(), "" | "0" | "no" | "false" | "none")
}

pub(super) async fn ping() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("API-Version", HeaderValue::from_static(API_VERSION));
    headers.insert("OSType", HeaderValue::from_static("linux"));
    headers.insert("Docker-Experimental", HeaderValue::from_static("false"));
    headers.insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    (StatusCode::OK, headers, "OK").into_response()
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(super) async fn version() -> Json<SystemVersion> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    Json(SystemVersion {
        platform: Some(models::SystemVersionPlatform {
            name: "swarm-node".into(),
        }),
        components: Some(vec![models::SystemVersionComponents {
            name: "swarm-node".into(),
            version: version.clone(),
            details: None,
        }]),
        version: Some(version),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        os: Some("linux".into()),
        arch: Some(go_arch().into()),
        ..Default::default()
    })
}

/// Fills what only the moment knows: who leads and which managers are reachable.
fn with_manager_status(manager: &Manager, mut node: Node) -> Node {
    let leader = manager.raft.leader().map(|(id, _)| id);
    let voters = manager.raft.voters();
    let id = node.id.clone().unwrap_or_default();
    let rid = raft_id(&id);
    let down = node_state(&node) == NodeState::DOWN;
    if let Some(ms) = node.manager_status.as_mut() {
        ms.leader = Some(leader == Some(rid));
        ms.reachability = Some(if down {
            Reachability::UNREACHABLE
        } else if voters.contains_key(&rid) {
            Reachability::REACHABLE
        } else {
            Reachability::UNKNOWN
        });
    }
    node
}

/// `docker info`: the engine's own answer (containers, images, memory, plugins) with
/// the Swarm section swarm-node keeps; swarm-node's own summary when there is no engine
/// to ask.
async fn info(State(ctx): State<Ctx>, peer: Peer) -> ApiResult<Json<serde_json::Value>> {
    let ours = own_info(&ctx, &peer)?;
    let Some(socket) = ctx.docker_socket.as_ref() else {
        return Ok(Json(serde_json::to_value(ours).unwrap_or_default()));
    };
    match super::proxy::engine_json(socket, "/v1.41/info").await {
        Ok(mut engine) => {
            engine["Swarm"] = serde_json::to_value(&ours.swarm).unwrap_or_default();
            Ok(Json(engine))
        }
        Err(e) => {
            tracing::debug!(error = %e, "engine info unavailable");
            Ok(Json(serde_json::to_value(ours).unwrap_or_default()))
        }
    }
}

fn own_info(ctx: &Ctx, peer: &Peer) -> ApiResult<SystemInfo> {
    require_admin(ctx, peer)?;
    let manager = ctx.manager();
    let mut swarm = SwarmInfo {
        node_id: Some(ctx.node_id.clone()),
        node_addr: Some(host_of(&ctx.advertise_addr)),
        local_node_state: Some(models::LocalNodeState::ACTIVE),
        control_available: Some(manager.is_some()),
        error: Some(String::new()),
        ..Default::default()
    };
    if let Some(manager) = &manager {
        let state = manager.read();
        swarm.nodes = Some(state.nodes.len() as i64);
        swarm.managers = Some(
            state
                .nodes
                .values()
                .filter(|n| node_role(n) == NodeSpecRoleEnum::MANAGER)
                .count() as i64,
        );
        swarm.remote_managers = Some(
            state
                .managers()
                .into_iter()
                .map(|(id, addr)| models::PeerNode {
                    node_id: Some(id),
                    addr: Some(addr),
                })
                .collect(),
        );
        if let Some(c) = &state.cluster {
            swarm.cluster = Some(models::ClusterInfo {
                id: Some(c.id.clone()),
                version: Some(models::ObjectVersion {
                    index: Some(c.version),
                }),
                created_at: Some(c.created_at.clone()),
                updated_at: Some(c.updated_at.clone()),
                spec: Some(c.spec.clone()),
                data_path_port: Some(u32::from(c.network.data_path_port)),
                default_addr_pool: Some(
                    c.network
                        .default_addr_pool
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
                subnet_size: Some(u32::from(c.network.subnet_size)),
                ..Default::default()
            });
        }
    }
    Ok(SystemInfo {
        id: Some(ctx.node_id.clone()),
        name: Some(ctx.hostname.clone()),
        server_version: Some(env!("CARGO_PKG_VERSION").into()),
        os_type: Some("linux".into()),
        operating_system: Some("swarm-node".into()),
        architecture: Some(std::env::consts::ARCH.into()),
        ncpu: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as i64),
        swarm: Some(swarm),
        ..Default::default()
    })
}

fn host_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map(|s| s.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

async fn swarm(AdminManager(manager): AdminManager) -> ApiResult<Json<Swarm>> {
    let state = manager.read();
    let c = state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this node is not part of a swarm".into()))?;
    Ok(Json(Swarm {
        id: Some(c.id.clone()),
        version: Some(models::ObjectVersion {
            index: Some(c.version),
        }),
        created_at: Some(c.created_at.clone()),
        updated_at: Some(c.updated_at.clone()),
        spec: Some(c.spec.clone()),
        join_tokens: Some(JoinTokens {
            worker: Some(c.worker_token.clone()),
            manager: Some(c.manager_token.clone()),
        }),
        // `docker swarm ca` prints the trust root.
        tls_info: Some(models::TlsInfo {
            trust_root: Some(c.root_ca_cert_pem.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SwarmUpdateQuery {
    version: Option<String>,
    rotate_worker_token: Option<String>,
    rotate_manager_token: Option<String>,
    rotate_manager_unlock_key: Option<String>,
}

/// Docker's shortest `CAConfig.NodeCertExpiry`: one hour.
const MIN_NODE_CERT_EXPIRY_NS: i64 = 3_600_000_000_000;
/// The shortest dispatcher heartbeat swarm-node runs with (its dispatcher clamps there).
const MIN_HEARTBEAT_PERIOD_NS: i64 = 100_000_000;

/// A JSON value without what Go leaves out or zeroes (null, false, 0, "", empty lists
/// and objects), so that a spec the docker CLI sends back compares equal to the one it
/// read.
fn normalized(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalized(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalized).collect()),
        other => other,
    }
}

fn is_zero(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

/// The first field (as `Raft.ElectionTick`) where two normalized specs differ.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &sub),
                    _ => Some(sub),
                }
            })
        }
        _ if a == b => None,
        _ => Some(if path.is_empty() {
            "Spec".into()
        } else {
            path.into()
        }),
    }
}

/// The spec `docker swarm update` asks for, applied to the current one: labels,
/// `CAConfig.NodeCertExpiry`, the dispatcher heartbeat, the task history limit and
/// `EncryptionConfig.AutoLockManagers` change; any other field must stay as it is, or the
/// update is refused naming it (never silently ignored). Raft's snapshot settings are
/// fixed when a manager opens its log.
fn updated_swarm_spec(
    current: &swarm_state::models::SwarmSpec,
    wanted: &swarm_state::models::SwarmSpec,
) -> ApiResult<swarm_state::models::SwarmSpec> {
    let mut next = current.clone();
    let autolock = super::unlock::autolock_of(wanted);
    if autolock != super::unlock::autolock_of(current) {
        next.encryption_config
            .get_or_insert_with(Default::default)
            .auto_lock_managers = Some(autolock);
    }
    next.labels = wanted.labels.clone().filter(|l| !l.is_empty());
    if let Some(expiry) = wanted
        .ca_config
        .as_ref()
        .and_then(|c| c.node_cert_expiry)
        .filter(|n| *n != 0)
    {
        if expiry < MIN_NODE_CERT_EXPIRY_NS {
            return Err(ApiError::BadRequest(
                "minimum certificate expiry time is: 1h0m0s".into(),
            ));
        }
        next.ca_config
            .get_or_insert_with(Default::default)
            .node_cert_expiry = Some(expiry);
    }
    if let Some(period) = wanted
        .dispatcher
        .as_ref()
        .and_then(|d| d.heartbeat_period)
        .filter(|n| *n != 0)
    {
        if period < MIN_HEARTBEAT_PERIOD_NS {
            return Err(ApiError::BadRequest(format!(
                "heartbeat period {}ms is too short: the dispatcher heartbeat must be at least 100ms",
                period / 1_000_000
            )));
        }
        next.dispatcher
            .get_or_insert_with(Default::default)
            .heartbeat_period = Some(period);
    }
    if let Some(limit) = wanted
        .orchestration
        .as_ref()
        .and_then(|o| o.task_history_retention_limit)
    {
        next.orchestration
            .get_or_insert_with(Default::default)
            .task_history_retention_limit = Some(limit);
    }
    let to_json = |spec: &swarm_state::models::SwarmSpec| {
        serde_json::to_value(spec)
            .map(normalized)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    let (have, want) = (to_json(&next)?, to_json(wanted)?);
    // An expiry of 0 means "unchanged" here, as the CLI sends what it read.
    let want = match (want, have.pointer("/CAConfig/NodeCertExpiry")) {
        (serde_json::Value::Object(mut w), Some(expiry))
            if w.get("CAConfig")
                .and_then(|c| c.get("NodeCertExpiry"))
                .is_none() =>
        {
            let ca = w.entry("CAConfig").or_insert_with(|| serde_json::json!({}));
            if let Some(ca) = ca.as_object_mut() {
                ca.insert("NodeCertExpiry".into(), expiry.clone());
            }
            serde_json::Value::Object(w)
        }
        (w, _) => w,
    };
    if let Some(field) = first_difference(&have, &want, "") {
        return Err(ApiError::BadRequest(format!(
            "changing {field} is not supported yet: only Labels, CAConfig.NodeCertExpiry, Dispatcher.HeartbeatPeriod, Orchestration.TaskHistoryRetentionLimit and EncryptionConfig.AutoLockManagers can be updated"
        )));
    }
    Ok(next)
}

/// `docker swarm update` and `docker swarm join-token --rotate`: the spec the CLI read,
/// with its changes, at the version it read (required, as in Docker). Token rotation
/// gives a role a new secret: nodes that already joined keep working. Autolock on (and
/// `docker swarm unlock-key --rotate`) commits a new unlock key chosen here; every manager
/// then rewraps its Raft data key (`daemon.rs`).
async fn update_swarm(
    AdminManager(manager): AdminManager,
    Query(q): Query<SwarmUpdateQuery>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "got EOF while reading request body".into(),
        ));
    }
    let wanted: swarm_state::models::SwarmSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let raw_version = q.version.unwrap_or_default();
    let version: u64 = raw_version.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid swarm version '{raw_version}': strconv.ParseUint: parsing \"{raw_version}\": invalid syntax"
        ))
    })?;
    let rotate_worker = bool_param("rotateWorkerToken", q.rotate_worker_token.as_deref())?;
    let rotate_manager = bool_param("rotateManagerToken", q.rotate_manager_token.as_deref())?;
    let rotate_unlock = bool_param(
        "rotateManagerUnlockKey",
        q.rotate_manager_unlock_key.as_deref(),
    )?;
    let state = manager.read();
    let info = state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this node is not part of a swarm".into()))?;
    if version != info.version {
        return Err(swarm_state::ApplyError::VersionConflict {
            kind: "swarm".into(),
            id: info.id.clone(),
            current: info.version,
            given: version,
        }
        .into());
    }
    let mut next = updated_swarm_spec(&info.spec, &wanted)?;
    let (was_locked, autolock) = (
        super::unlock::autolock_of(&info.spec),
        super::unlock::autolock_of(&next),
    );
    // As SwarmKit: a new key when autolock turns on or on request, none when it turns off.
    let unlock_key = match (was_locked, autolock, rotate_unlock) {
        (false, false, true) => {
            return Err(ApiError::BadRequest(
                "cannot rotate because autolock is not turned on".into(),
            ))
        }
        (false, true, _) | (true, true, true) => Some(
            swarm_raft::UnlockKey::generate()
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .to_human(),
        ),
        (true, false, _) => Some(String::new()),
        _ => None,
    };
    // Autolock travels in its own command, with its key.
    next.encryption_config = info.spec.encryption_config.clone();
    let ca = swarm_pki::RootCa::from_pem(&info.root_ca_cert_pem, &info.root_ca_key_pem)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut version = version;
    if next != info.spec {
        version = manager
            .propose(Command::UpdateSwarmSpec {
                version,
                spec: Box::new(next),
                at: manager.now(),
            })
            .await?;
    }
    if let Some(unlock_key) = unlock_key {
        manager
            .propose(Command::SetAutolock {
                version,
                unlock_key,
                at: manager.now(),
            })
            .await?;
    }
    let mut roles = Vec::new();
    if rotate_worker {
        roles.push(NodeSpecRoleEnum::WORKER);
    }
    if rotate_manager {
        roles.push(NodeSpecRoleEnum::MANAGER);
    }
    for role in roles {
        manager
            .propose(Command::RotateJoinToken {
                role,
                token: swarm_pki::JoinToken::generate(&ca),
            })
            .await?;
    }
    Ok(StatusCode::OK)
}

// === nodes ===

fn node_matches(f: &Filters, manager: &Manager, id: &str, node: &Node) -> bool {
    let role = node_role(node).to_string();
    let name = node_hostname(node);
    let is_leader = manager.raft.leader().map(|(r, _)| r) == Some(raft_id(id));
    f.matches("id", |v| id.starts_with(v))
        && f.matches("name", |v| {
            name.starts_with(v) || node.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(v)
        })
        && f.matches("role", |v| v == role)
        && f.matches("membership", |v| v == "accepted")
        && f.matches("node.label", |v| {
            label_holds(v, node.spec.as_ref().and_then(|s| s.labels.as_ref()))
        })
        && f.labels_match(
            "label",
            node.description
                .as_ref()
                .and_then(|d| d.engine.as_ref())
                .and_then(|e| e.labels.as_ref()),
        )
        && f.matches("is-leader", |v| (v == "true") == is_leader)
}

fn label_holds(want: &str, labels: Option<&HashMap<String, String>>) -> bool {
    let (k, v) = match want.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (want, None),
    };
    labels
        .and_then(|l| l.get(k))
        .is_some_and(|have| v.is_none_or(|v| v == have))
}

async fn list_nodes(
    AdminManager(manager): AdminManager,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Node>>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.accept(&[
        "id",
        "label",
        "membership",
        "name",
        "node.label",
        "role",
        "is-leader",
    ])?;
    let state = manager.read();
    Ok(Json(
        state
            .nodes
            .iter()
            .filter(|(id, n)| node_matches(&filters, &manager, id, n))
            .map(|(_, n)| with_manager_status(&manager, n.clone()))
            .collect(),
    ))
}

/// A node by full id, hostname or unique id prefix. Hostnames need not be unique (as in
/// Docker): a name several nodes carry is ambiguous, in Docker's words.
fn find_node<'a>(state: &'a ClusterState, key: &str) -> ApiResult<&'a Node> {
    if let Some(node) = state.nodes.get(key) {
        return Ok(node);
    }
    let named = state
        .nodes
        .values()
        .filter(|n| node_hostname(n) == key)
        .count();
    if named > 1 {
        return Err(ApiError::BadRequest(format!(
            "node {key} is ambiguous ({named} matches found)"
        )));
    }
    state
        .find_node(key)
        .ok_or_else(|| ApiError::NotFound(format!("node {key} not found")))
}

async fn inspect_node(
    AdminManager(manager): AdminManager,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    let state = manager.read();
    let node = find_node(&state, &id)?.clone();
    Ok(Json(with_manager_status(&manager, node)))
}

/// dockerd's words for a role or availability it does not know (`docker node update
/// --availability bogus`), checked before the spec is parsed so the answer is not
/// serde's.
fn check_node_enums(body: &[u8]) -> ApiResult<()> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(());
    };
    for (field, allowed) in [
        ("Role", &["worker", "manager"][..]),
        ("Availability", &["active", "pause", "drain"][..]),
    ] {
        if let Some(v) = value.get(field).and_then(|v| v.as_str()) {
            if !allowed.contains(&v) {
                return Err(ApiError::BadRequest(format!("invalid {field}: {v:?}")));
            }
        }
    }
    Ok(())
}

async fn update_node(
    AdminManager(manager): AdminManager,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    check_node_enums(&body)?;
    let spec: NodeSpec = parse_body(&body, "node spec")?;
    validate_node_labels(&spec)?;
    let version = required_version("node", q.version.as_deref())?;
    let state = manager.read();
    let node = find_node(&state, &id)?;
    let node_id = node.id.clone().unwrap_or_default();
    let new_role = spec.role.unwrap_or(NodeSpecRoleEnum::WORKER);
    if node_role(node) == NodeSpecRoleEnum::MANAGER && new_role == NodeSpecRoleEnum::WORKER {
        let managers = state
            .nodes
            .values()
            .filter(|n| node_role(n) == NodeSpecRoleEnum::MANAGER)
            .count();
        if managers <= 1 {
            return Err(ApiError::BadRequest(
                "attempting to demote the last manager of the swarm".into(),
            ));
        }
    }
    manager
        .propose(Command::UpdateNodeSpec {
            id: node_id,
            version,
            spec,
            at: manager.now(),
        })
        .await?;
    Ok(StatusCode::OK)
}

async fn remove_node(
    AdminManager(manager): AdminManager,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<StatusCode> {
    let state = manager.read();
    let node = find_node(&state, &id)?;
    let node_id = node.id.clone().unwrap_or_default();
    let force = flag_param(q.force.as_deref());
    if node_role(node) == NodeSpecRoleEnum::MANAGER {
        return Err(ApiError::BadRequest(format!(
            "rpc error: code = FailedPrecondition desc = node {node_id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
        )));
    }
    if !force && node_state(node) != NodeState::DOWN {
        return Err(ApiError::BadRequest(format!(
            "rpc error: code = FailedPrecondition desc = node {node_id} is not down and can't be removed"
        )));
    }
    manager.propose(Command::RemoveNode { id: node_id }).await?;
    Ok(StatusCode::OK)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid {what}: {e}")))
}

// === services ===

/// Docker's rule for service names: DNS-label-like, at most 63 characters.
fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// The most replicas a service may have (see `validate_service_spec`).
pub const MAX_REPLICAS: i64 = 100_000;
/// The most labels a node may carry (`docker node update --label-add`), and the longest
/// key and value: labels live in the replicated state and in every node listing.
pub const MAX_NODE_LABELS: usize = 256;
pub const MAX_NODE_LABEL_BYTES: usize = 4096;

/// Refuses node labels beyond [`MAX_NODE_LABELS`] or [`MAX_NODE_LABEL_BYTES`] (Docker has
/// no limit; each node update is a log entry replicated to every manager).
pub fn validate_node_labels(spec: &NodeSpec) -> ApiResult<()> {
    let Some(labels) = &spec.labels else {
        return Ok(());
    };
    if labels.len() > MAX_NODE_LABELS {
        return Err(ApiError::BadRequest(format!(
            "invalid node spec: a node may have at most {MAX_NODE_LABELS} labels, not {}",
            labels.len()
        )));
    }
    for (key, value) in labels {
        if key.len() > MAX_NODE_LABEL_BYTES || value.len() > MAX_NODE_LABEL_BYTES {
            let shown: String = key.chars().take(40).collect();
            return Err(ApiError::BadRequest(format!(
                "invalid node spec: label {shown:?} is too long: keys and values are limited to {MAX_NODE_LABEL_BYTES} bytes each"
            )));
        }
    }
    Ok(())
}

/// Checks a spec the way SwarmKit's control API does, with messages that say what to fix.
pub fn validate_service_spec(spec: &ServiceSpec) -> ApiResult<()> {
    let name = spec.name.as_deref().unwrap_or_default();
    if !valid_service_name(name) {
        return Err(ApiError::BadRequest(format!(
            "invalid service name {name:?}: use letters, digits, '-' and '_', starting and ending with a letter or digit, at most 63 characters"
        )));
    }
    let container = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref());
    if container
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
        .is_empty()
    {
        return Err(ApiError::BadRequest(
            "invalid service spec: ContainerSpec: image reference must be provided".into(),
        ));
    }
    // Nodes do not report generic resources (`--node-generic-resource` on the engine),
    // so a task asking for some could never be placed as Docker places it: refuse it.
    let generic = spec
        .task_template
        .as_ref()
        .and_then(|t| t.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .and_then(|r| r.generic_resources.as_ref())
        .is_some_and(|g| !g.is_empty());
    if generic {
        return Err(ApiError::BadRequest(
            "invalid service spec: generic resources (--generic-resource) are not supported by swarmup: reserve CPUs and memory instead (--reserve-cpu, --reserve-memory)".into(),
        ));
    }
    if let Some(mode) = &spec.mode {
        let kinds = [
            mode.replicated.is_some(),
            mode.global.is_some(),
            mode.replicated_job.is_some(),
            mode.global_job.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err(ApiError::BadRequest(
                "invalid service spec: choose one mode: replicated, global, replicated-job or global-job".into(),
            ));
        }
        if let Some(job) = &mode.replicated_job {
            if job.total_completions.is_some_and(|n| n < 0)
                || job.max_concurrent.is_some_and(|n| n < 0)
            {
                return Err(ApiError::BadRequest(
                    "invalid service spec: a replicated job's completions and concurrency must be 0 or more".into(),
                ));
            }
        }
        if let Some(r) = mode.replicated.as_ref().and_then(|r| r.replicas) {
            if r < 0 {
                return Err(ApiError::BadRequest(format!(
                    "invalid service spec: replicas must be 0 or more, not {r}"
                )));
            }
            // Docker sets no limit. Ours keeps one service's tasks within what the
            // leader holds in memory and writes to the log (100,000 tasks is the scale
            // the project is built and tested for; every task is an object in every
            // manager's state and an entry's worth of writes when it changes).
            if r > MAX_REPLICAS {
                return Err(ApiError::BadRequest(format!(
                    "invalid service spec: replicas must be at most {MAX_REPLICAS}, not {r}"
                )));
            }
        }
    }
    // SwarmKit parses the constraints when the spec is written, so a typo is refused
    // here instead of leaving every task pending; Docker relays its words as they are.
    if let Some(constraints) = spec
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.as_ref())
    {
        scheduler::parse_constraints(constraints)
            .map_err(|e| ApiError::BadRequest(format!("rpc error: code = Unknown desc = {e}")))?;
    }
    if let Some(template) = spec.task_template.as_ref() {
        scheduler::validate_preferences(template).map_err(ApiError::BadRequest)?;
    }
    if let Some(rp) = spec
        .task_template
        .as_ref()
        .and_then(|t| t.restart_policy.as_ref())
    {
        if rp.delay.is_some_and(|d| d < 0) {
            return Err(ApiError::BadRequest(
                "invalid service spec: restart delay cannot be negative".into(),
            ));
        }
    }
    Ok(())
}

/// `ServiceStatus` of `service`, from the counts the state keeps of its tasks: no scan of
/// every task, which `docker service ls` would otherwise pay per request.
fn service_status(state: &ClusterState, service: &Service) -> ServiceServiceStatus {
    let mode = service
        .spec
        .as_ref()
        .and_then(|s| s.mode.clone())
        .unwrap_or_default();
    let tally = state.tasks.tally(service.id.as_deref().unwrap_or_default());
    // Running tasks on a node that is down are not running any more, as Docker counts.
    let running: u64 = tally
        .running_by_node
        .iter()
        .filter(|(node, _)| {
            state
                .nodes
                .get(*node)
                .is_some_and(|n| node_state(n) != NodeState::DOWN)
        })
        .map(|(_, n)| n)
        .sum();
    let (active, completed) = (tally.active, tally.completed);
    let desired = if mode.global.is_some() || mode.global_job.is_some() {
        active
    } else if let Some(job) = &mode.replicated_job {
        // What should run now: the concurrency, or what is left to complete.
        let total = job.total_completions.unwrap_or(1).max(0) as u64;
        let concurrent = job.max_concurrent.unwrap_or(total as i64).max(0) as u64;
        concurrent.min(total.saturating_sub(completed))
    } else {
        mode.replicated.and_then(|r| r.replicas).unwrap_or(1).max(0) as u64
    };
    ServiceServiceStatus {
        running_tasks: Some(running),
        desired_tasks: Some(desired),
        completed_tasks: Some(completed),
    }
}

/// Fills `Endpoint` as Docker shows it: the spec, the ports as allocated (published ports
/// chosen, modes written out), and the VIPs the leader's allocator gave the service (one
/// per network, ingress included).
fn with_endpoint(state: &ClusterState, mut service: Service) -> Service {
    let endpoint_spec = service.spec.as_ref().and_then(|s| s.endpoint_spec.clone());
    let ports = service
        .id
        .as_deref()
        .map(|id| state.endpoint_ports(id).to_vec())
        .filter(|p| !p.is_empty());
    service.endpoint = Some(models::ServiceEndpoint {
        spec: Some(endpoint_spec.unwrap_or_default()),
        ports,
        virtual_ips: virtual_ips(state, &service),
    });
    service
}

async fn list_services(
    AdminManager(manager): AdminManager,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<ServiceView>>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.accept(&["id", "label", "mode", "name"])?;
    let with_status = bool_param("status", q.status.as_deref())?;
    let state = manager.read();
    let services = state
        .services
        .iter()
        .filter(|(id, s)| {
            let spec = s.spec.as_ref();
            let name = spec.and_then(|s| s.name.as_deref()).unwrap_or_default();
            let global = spec
                .and_then(|s| s.mode.as_ref())
                .is_some_and(|m| m.global.is_some());
            filters.matches("id", |v| id.starts_with(v))
                && filters.matches("name", |v| name.starts_with(v))
                && filters.matches("mode", |v| (v == "global") == global)
                && filters.labels_match("label", spec.and_then(|s| s.labels.as_ref()))
        })
        .map(|(_, s)| {
            let mut view = service_view(&state, s.clone());
            if with_status {
                view.service.service_status = Some(service_status(&state, &view.service));
            }
            view
        })
        .collect();
    Ok(Json(services))
}

fn find_service<'a>(state: &'a ClusterState, key: &str) -> ApiResult<&'a Service> {
    state
        .find_service(key)
        .ok_or_else(|| ApiError::NotFound(format!("service {key} not found")))
}

/// A service as Docker shows it: the model plus `PreviousSpec`, which the API's schema
/// (and so the models) leaves out although dockerd sends it.
#[derive(Debug, serde::Serialize)]
struct ServiceView {
    #[serde(flatten)]
    service: Service,
    #[serde(rename = "PreviousSpec", skip_serializing_if = "Option::is_none")]
    previous_spec: Option<ServiceSpec>,
}

fn service_view(state: &ClusterState, service: Service) -> ServiceView {
    let previous_spec = service
        .id
        .as_ref()
        .and_then(|id| state.previous_specs.get(id))
        .cloned();
    ServiceView {
        service: with_endpoint(state, service),
        previous_spec,
    }
}

async fn inspect_service(
    AdminManager(manager): AdminManager,
    Path(id): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    let state = manager.read();
    Ok(Json(service_view(
        &state,
        find_service(&state, &id)?.clone(),
    )))
}

async fn create_service(
    AdminManager(manager): AdminManager,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let mut spec: ServiceSpec = super::defaults::parse_service_spec(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid service spec: {e}")))?;
    if spec.name.as_deref().unwrap_or_default().is_empty() {
        let id = Manager::new_id();
        spec.name = Some(format!("service-{}", &id[..8]));
    }
    super::defaults::fill_service_defaults(&mut spec);
    validate_service_spec(&spec)?;
    validate_endpoint_spec(&spec)?;
    resolve_service_networks(&manager.read(), &mut spec)?;
    super::secrets::resolve_references(&manager.read(), &mut spec)?;
    check_port_use(&manager.read(), None, &spec)?;
    let name = spec.name.clone().unwrap_or_default();
    if manager.read().service_by_name(&name).is_some() {
        return Err(ApiError::Conflict(format!(
            "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service {name} already exists"
        )));
    }
    let id = Manager::new_id();
    let now = manager.now();
    let service = Service {
        id: Some(id.clone()),
        created_at: Some(now.clone()),
        updated_at: Some(now),
        spec: Some(spec),
        ..Default::default()
    };
    manager
        .propose(Command::CreateService {
            service: Box::new(service),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "ID": id, "Warnings": null })),
    )
        .into_response())
}

async fn update_service(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
    Query(q): Query<VersionQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let version = required_version("service", q.version.as_deref())?;
    match q.rollback.as_deref() {
        None | Some("") => {}
        // The CLI sends the current spec along; the previous one is what counts.
        Some("previous") => {
            let id = find_service(&manager.read(), &key)?
                .id
                .clone()
                .unwrap_or_default();
            if !manager.read().previous_specs.contains_key(&id) {
                return Err(ApiError::BadRequest(
                    "service does not have a previous spec".into(),
                ));
            }
            manager
                .propose(Command::RollbackService {
                    id,
                    version,
                    at: manager.now(),
                })
                .await?;
            return Ok(Json(serde_json::json!({ "Warnings": null })));
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unrecognized rollback option {other}: use previous"
            )))
        }
    }
    let mut spec: ServiceSpec = super::defaults::parse_service_spec(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid service spec: {e}")))?;
    super::defaults::fill_service_defaults(&mut spec);
    validate_service_spec(&spec)?;
    validate_endpoint_spec(&spec)?;
    let state = manager.read();
    // Networks may change on update; the allocator follows with VIPs and addresses.
    resolve_service_networks(&state, &mut spec)?;
    super::secrets::resolve_references(&state, &mut spec)?;
    let service = find_service(&state, &key)?;
    let id = service.id.clone().unwrap_or_default();
    check_port_use(&state, Some(&id), &spec)?;
    let current_name = service.spec.as_ref().and_then(|s| s.name.clone());
    if spec.name != current_name {
        return Err(ApiError::BadRequest(
            "rpc error: code = Unimplemented desc = renaming services is not supported".into(),
        ));
    }
    let is_job = |s: Option<&ServiceSpec>| {
        s.and_then(|s| s.mode.as_ref())
            .is_some_and(|m| m.replicated_job.is_some() || m.global_job.is_some())
    };
    if is_job(service.spec.as_ref()) || is_job(Some(&spec)) {
        // Docker runs a job again on update; swarm-node runs each job once.
        return Err(ApiError::BadRequest(
            "updating a job is not supported by swarm-node: remove it (docker service rm) and create it again".into(),
        ));
    }
    manager
        .propose(Command::UpdateService {
            id,
            version,
            spec: Box::new(spec),
            at: manager.now(),
        })
        .await?;
    Ok(Json(serde_json::json!({ "Warnings": null })))
}

async fn remove_service(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let id = find_service(&manager.read(), &key)?
        .id
        .clone()
        .unwrap_or_default();
    manager.propose(Command::RemoveService { id }).await?;
    Ok(StatusCode::OK)
}

// === tasks ===

async fn list_tasks(
    AdminManager(manager): AdminManager,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    filters.accept(&[
        "_up-to-date",
        "desired-state",
        "id",
        "label",
        "name",
        "node",
        "service",
    ])?;
    let state = manager.read();
    let service_ids: Option<Vec<String>> = filters.get("service").map(|keys| {
        keys.iter()
            .filter_map(|k| state.find_service(k).and_then(|s| s.id.clone()))
            .collect()
    });
    let node_ids: Option<Vec<String>> = filters.get("node").map(|keys| {
        keys.iter()
            .filter_map(|k| state.find_node(k).and_then(|n| n.id.clone()))
            .collect()
    });
    let tasks = state
        .tasks
        .iter()
        .filter(|(id, t)| {
            let service_name = t
                .service_id
                .as_ref()
                .and_then(|s| state.services.get(s))
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| s.name.clone())
                .unwrap_or_default();
            let name = format!("{service_name}.{}", t.slot.unwrap_or(0));
            filters.matches("id", |v| id.starts_with(v))
                && filters.matches("name", |v| name.starts_with(v))
                && service_ids
                    .as_ref()
                    .is_none_or(|ids| t.service_id.as_ref().is_some_and(|s| ids.contains(s)))
                && node_ids
                    .as_ref()
                    .is_none_or(|ids| t.node_id.as_ref().is_some_and(|n| ids.contains(n)))
                && filters.matches("desired-state", |v| {
                    desired_of(t).to_string() == v
                        || (v == "accepted" && desired_of(t) <= TaskState::RUNNING)
                })
                // As SwarmKit: a task's labels are its service's (how `docker stack ps`
                // finds a stack's tasks).
                && filters.labels_match(
                    "label",
                    t.service_id
                        .as_ref()
                        .and_then(|s| state.services.get(s))
                        .and_then(|s| s.spec.as_ref())
                        .and_then(|s| s.labels.as_ref()),
                )
                && filters.matches("_up-to-date", |_| {
                    // A task is up to date when it runs the service's current task spec.
                    t.service_id
                        .as_ref()
                        .and_then(|s| state.services.get(s))
                        .and_then(|s| s.spec.as_ref())
                        .is_some_and(|s| Some(state.task_spec_of(s)) == t.spec)
                })
        })
        .map(|(_, t)| task_view(&state, t))
        .collect();
    Ok(Json(tasks))
}

async fn inspect_task(
    AdminManager(manager): AdminManager,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let state = manager.read();
    let task = state
        .tasks
        .get(&id)
        .or_else(|| {
            let mut m = state.tasks.iter().filter(|(k, _)| k.starts_with(&id));
            match (m.next(), m.next()) {
                (Some((_, t)), None) => Some(t),
                _ => None,
            }
        })
        .ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    Ok(Json(task_view(&state, task)))
}

/// Used by the scheduler-facing tests: whether a node can take tasks now.
pub fn node_is_eligible(node: &Node) -> bool {
    scheduler::is_eligible(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            name: Some(name.into()),
            task_template: Some(models::TaskSpec {
                container_spec: Some(models::TaskSpecContainerSpec {
                    image: Some(image.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn generic_resources_are_refused_by_name() {
        let mut s = spec("web", "nginx");
        let template = s.task_template.get_or_insert_with(Default::default);
        template.resources = Some(models::TaskSpecResources {
            reservations: Some(models::ResourceObject {
                generic_resources: Some(vec![Default::default()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = validate_service_spec(&s).unwrap_err();
        assert!(err.to_string().contains("--generic-resource"), "{err}");
    }

    #[test]
    fn replicas_and_node_labels_are_bounded() {
        let mut s = spec("web", "nginx");
        let mode = |r| models::ServiceSpecMode {
            replicated: Some(models::ServiceSpecModeReplicated { replicas: Some(r) }),
            ..Default::default()
        };
        s.mode = Some(mode(MAX_REPLICAS));
        assert!(validate_service_spec(&s).is_ok());
        s.mode = Some(mode(MAX_REPLICAS + 1));
        let e = validate_service_spec(&s).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("at most 100000"), "{e}");

        let labels = |n: usize, len: usize| NodeSpec {
            labels: Some((0..n).map(|i| (format!("k{i}"), "v".repeat(len))).collect()),
            ..Default::default()
        };
        assert!(validate_node_labels(&NodeSpec::default()).is_ok());
        assert!(validate_node_labels(&labels(MAX_NODE_LABELS, MAX_NODE_LABEL_BYTES)).is_ok());
        assert!(validate_node_labels(&labels(MAX_NODE_LABELS + 1, 1)).is_err());
        assert!(validate_node_labels(&labels(1, MAX_NODE_LABEL_BYTES + 1)).is_err());
    }

    #[test]
    fn invalid_specs_say_what_to_fix() {
        assert!(validate_service_spec(&spec("web", "busybox")).is_ok());
        let e = validate_service_spec(&spec("web", "")).unwrap_err();
        assert!(e.to_string().contains("image reference must be provided"));
        let e = validate_service_spec(&spec("-web", "busybox")).unwrap_err();
        assert!(e.to_string().starts_with("invalid service name"));
        let mut s = spec("web", "busybox");
        s.mode = Some(models::ServiceSpecMode {
            replicated: Some(models::ServiceSpecModeReplicated { replicas: Some(-1) }),
            ..Default::default()
        });
        assert!(validate_service_spec(&s)
            .unwrap_err()
            .to_string()
            .contains("replicas"));
    }

    #[test]
    fn constraints_are_checked_when_the_spec_is_written() {
        let with = |c: &[&str]| {
            let mut s = spec("web", "busybox");
            s.task_template.as_mut().unwrap().placement = Some(models::TaskSpecPlacement {
                constraints: Some(c.iter().map(|c| c.to_string()).collect()),
                ..Default::default()
            });
            validate_service_spec(&s)
        };
        assert!(with(&["node.role==manager", "node.labels.zone != eu"]).is_ok());
        let e = with(&["node.role==manager", "node.garbage"]).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "rpc error: code = Unknown desc = constraint expected one operator from ==, !="
        );
        assert_eq!(
            with(&["node.role==ma<nager"]).unwrap_err().to_string(),
            "rpc error: code = Unknown desc = value 'ma<nager' is invalid"
        );
    }

    #[test]
    fn query_values_are_read_as_dockerd_reads_them() {
        assert_eq!(required_version("service", Some("12")).unwrap(), 12);
        let e = required_version("service", None).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().starts_with("invalid service version '':"));
        assert!(required_version("node", Some("-1"))
            .unwrap_err()
            .to_string()
            .starts_with("invalid node version '-1':"));
        assert!(!bool_param("status", None).unwrap());
        assert!(bool_param("status", Some("True")).unwrap());
        assert!(!bool_param("status", Some("0")).unwrap());
        let e = bool_param("status", Some("maybe")).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().starts_with("invalid value for status: maybe"));
        assert!(flag_param(Some("yes")) && flag_param(Some("1")));
        assert!(!flag_param(Some("no")) && !flag_param(None) && !flag_param(Some("False")));
    }
}

#[cfg(test)]
mod swarm_update_tests {
    use super::*;

    use swarm_state::models::SwarmSpec;

    fn current() -> SwarmSpec {
        serde_json::from_value(serde_json::json!({
            "Name": "default",
            "Orchestration": {"TaskHistoryRetentionLimit": 5},
            "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500, "ElectionTick": 4, "HeartbeatTick": 1},
            "Dispatcher": {"HeartbeatPeriod": 5000000000i64},
            "CAConfig": {"NodeCertExpiry": 7776000000000000i64}
        }))
        .unwrap()
    }

    /// What the docker CLI sends back: Go's zero values spelled out.
    fn as_cli_sends(expiry: i64) -> SwarmSpec {
        serde_json::from_value(serde_json::json!({
            "Name": "default", "Labels": null,
            "Orchestration": {"TaskHistoryRetentionLimit": 5},
            "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500, "ElectionTick": 4, "HeartbeatTick": 1},
            "Dispatcher": {"HeartbeatPeriod": 5000000000i64},
            "CAConfig": {"NodeCertExpiry": expiry},
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": false}
        }))
        .unwrap()
    }

    #[test]
    fn the_spec_read_back_unchanged_is_no_change() {
        assert_eq!(
            updated_swarm_spec(&current(), &as_cli_sends(7776000000000000)).unwrap(),
            current()
        );
    }

    #[test]
    fn cert_expiry_applies_with_dockers_minimum() {
        let next = updated_swarm_spec(&current(), &as_cli_sends(7_200_000_000_000)).unwrap();
        assert_eq!(
            next.ca_config.unwrap().node_cert_expiry,
            Some(7_200_000_000_000)
        );
        let err = updated_swarm_spec(&current(), &as_cli_sends(60_000_000_000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "minimum certificate expiry time is: 1h0m0s"
        );
    }

    #[test]
    fn autolock_applies() {
        let mut wanted = as_cli_sends(7776000000000000);
        wanted
            .encryption_config
            .as_mut()
            .unwrap()
            .auto_lock_managers = Some(true);
        let next = updated_swarm_spec(&current(), &wanted).unwrap();
        assert_eq!(
            next.encryption_config.unwrap().auto_lock_managers,
            Some(true)
        );
    }

    #[test]
    fn fields_that_cannot_apply_are_refused_by_name() {
        let mut wanted = as_cli_sends(7776000000000000);
        wanted.raft.as_mut().unwrap().election_tick = Some(10);
        let err = updated_swarm_spec(&current(), &wanted).unwrap_err();
        assert!(err.to_string().contains("Raft.ElectionTick"), "{err}");
    }

    #[test]
    fn heartbeat_and_history_limit_apply() {
        let mut wanted = as_cli_sends(7776000000000000);
        wanted
            .dispatcher
            .get_or_insert_with(Default::default)
            .heartbeat_period = Some(2_000_000_000);
        wanted
            .orchestration
            .get_or_insert_with(Default::default)
            .task_history_retention_limit = Some(0);
        let next = updated_swarm_spec(&current(), &wanted).unwrap();
        assert_eq!(
            next.dispatcher.unwrap().heartbeat_period,
            Some(2_000_000_000)
        );
        assert_eq!(
            next.orchestration.unwrap().task_history_retention_limit,
            Some(0)
        );
        let mut wanted = as_cli_sends(7776000000000000);
        wanted
            .dispatcher
            .get_or_insert_with(Default::default)
            .heartbeat_period = Some(1_000_000);
        let err = updated_swarm_spec(&current(), &wanted).unwrap_err();
        assert!(err.to_string().contains("at least 100ms"), "{err}");
    }
}
