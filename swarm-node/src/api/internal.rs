//! The internal cluster API between nodes (paths in `swarm_state::proto`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use swarm_pki::{Peer, Role};
use swarm_state::models::{NodeState, NodeStatus};
use swarm_state::netmap::{netmap_for_node, NetMap};
use swarm_state::proto::{
    Assignments, Heartbeat, HeartbeatResponse, JoinRequest, JoinResponse, RenewRequest,
    TaskStatusReport, PREFIX,
};
use swarm_state::{node_role, node_state, ClusterState, Command};
use tower::ServiceExt;

use super::{require_admin, require_node, Ctx};
use crate::error::{ApiError, NO_LEADER};
use crate::manager::ca;

/// How long a worker's assignments request is held when nothing changes.
const LONG_POLL: Duration = Duration::from_secs(10);

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(&format!("{PREFIX}/ca"), get(root_ca))
        .route(&format!("{PREFIX}/join"), post(join))
        .route(&format!("{PREFIX}/renew"), post(renew))
        .route(&format!("{PREFIX}/heartbeat"), post(heartbeat))
        .route(&format!("{PREFIX}/assignments"), get(assignments))
        .route(&format!("{PREFIX}/netmap"), get(netmap))
        .route(&format!("{PREFIX}/task-status"), post(task_status))
        .route(&format!("{PREFIX}/propose"), post(propose))
        .route(&format!("{PREFIX}/client-cert"), post(client_cert))
        .route(&format!("{PREFIX}/leave"), post(leave))
        .route(&format!("{PREFIX}/raft/{{*rest}}"), any(raft))
}

type ApiResult<T> = Result<T, ApiError>;

async fn root_ca(State(ctx): State<Ctx>) -> String {
    ctx.ca_pem.clone()
}

async fn join(
    State(ctx): State<Ctx>,
    peer: Peer,
    Json(request): Json<JoinRequest>,
) -> ApiResult<Response> {
    let manager = ctx.require_manager()?;
    ca::join_response(&manager, request, peer.remote_ip()).await
}

async fn renew(
    State(ctx): State<Ctx>,
    peer: Peer,
    Json(request): Json<RenewRequest>,
) -> ApiResult<Json<JoinResponse>> {
    let me = require_node(&peer)?;
    let manager = ctx.require_manager()?;
    Ok(Json(ca::renew(
        &manager,
        &me.node_id,
        &request,
        peer.remote_ip(),
    )?))
}

async fn heartbeat(
    State(ctx): State<Ctx>,
    peer: Peer,
    Json(beat): Json<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let me = require_node(&peer)?;
    // Managers relay heartbeats to the leader on behalf of nodes.
    if me.node_id != beat.node_id && me.role != Role::Manager {
        return Err(ApiError::Forbidden(format!(
            "node {} cannot send heartbeats for node {}",
            me.node_id, beat.node_id
        )));
    }
    let manager = ctx.require_manager()?;
    if !manager.raft.is_leader() {
        return relay_heartbeat(&manager, &beat).await.map(Json);
    }
    manager
        .dispatcher
        .seen(&beat.node_id, &beat.addr, tokio::time::Instant::now());
    let state = manager.read();
    let node = state.nodes.get(&beat.node_id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "node {} not found: it was removed from the swarm",
            beat.node_id
        ))
    })?;
    let ip = beat
        .addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| beat.addr.clone());
    // The hostname is the one the node joined with: it names the node, whatever its
    // engine reports.
    let mut description = beat.description.clone();
    if let Some(joined_as) = node.description.as_ref().and_then(|d| d.hostname.clone()) {
        description.hostname = Some(joined_as);
    }
    let changed = node_state(node) != NodeState::READY
        || node.status.as_ref().and_then(|s| s.addr.as_deref()) != Some(ip.as_str())
        || node.description.as_ref() != Some(&description);
    if changed {
        manager
            .propose(Command::SetNodeStatus {
                id: beat.node_id.clone(),
                status: NodeStatus {
                    state: Some(NodeState::READY),
                    message: None,
                    addr: Some(ip),
                },
                description: Some(Box::new(description)),
                at: manager.now(),
            })
            .await?;
    }
    let state = manager.read();
    Ok(Json(HeartbeatResponse {
        period_ms: manager.dispatcher.period().as_millis() as u64,
        managers: ca::manager_addrs(&manager, &state),
        desired_role: state
            .nodes
            .get(&beat.node_id)
            .map(|n| ca::role_name(node_role(n)))
            .unwrap_or("worker")
            .into(),
    }))
}

async fn relay_heartbeat(
    manager: &crate::manager::Manager,
    beat: &Heartbeat,
) -> ApiResult<HeartbeatResponse> {
    let Some((_, leader)) = manager.raft.leader() else {
        return Err(ApiError::Unavailable(NO_LEADER.into()));
    };
    let url = format!("{}://{}{PREFIX}/heartbeat", manager.scheme, leader.addr);
    let response = manager
        .peers
        .post(url)
        .json(beat)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!("cannot reach the leader at {}: {e}", leader.addr))
        })?;
    if !response.status().is_success() {
        return Err(ApiError::Unavailable(format!(
            "the leader at {} answered {}",
            leader.addr,
            response.status()
        )));
    }
    response
        .json()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(Debug, Deserialize)]
pub struct AssignmentsQuery {
    node: String,
    #[serde(default)]
    since: u64,
}

/// A node's tasks with their version, which grows with every change to them (so a
/// lagging manager's answer is recognisably older).
fn assignments_of(state: &ClusterState, node_id: &str) -> Assignments {
    let tasks: Vec<_> = state.tasks_on_node(node_id).cloned().collect();
    // Zero means "nothing yet" to the worker: a node without tasks is at version 1.
    let index = state
        .assignment_versions
        .get(node_id)
        .copied()
        .unwrap_or(0)
        .max(1);
    let host_ports = tasks
        .iter()
        .filter_map(|t| {
            let ports = state.host_ports_of(t);
            (!ports.is_empty()).then(|| (t.id.clone().unwrap_or_default(), ports))
        })
        .collect();
    Assignments {
        index,
        tasks,
        host_ports,
    }
}

async fn assignments(
    State(ctx): State<Ctx>,
    peer: Peer,
    Query(q): Query<AssignmentsQuery>,
) -> ApiResult<Json<Assignments>> {
    let me = require_node(&peer)?;
    if me.node_id != q.node && me.role != Role::Manager {
        return Err(ApiError::Forbidden(format!(
            "node {} cannot read the assignments of node {}",
            me.node_id, q.node
        )));
    }
    let manager = ctx.require_manager()?;
    let mut rx = manager.raft.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        let state = rx.borrow_and_update().clone();
        let current = assignments_of(&state, &q.node);
        if current.index > q.since {
            return Ok(Json(current));
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(Json(current));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(current)),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NetmapQuery {
    node: String,
    #[serde(default)]
    since: u64,
}

/// Two maps say the same, whatever log index they were derived at.
fn same_netmap(a: &NetMap, b: &NetMap) -> bool {
    a.node_id == b.node_id
        && a.local_vtep == b.local_vtep
        && a.data_path_port == b.data_path_port
        && a.networks == b.networks
        && a.local_tasks == b.local_tasks
        && a.ingress_ports == b.ingress_ports
        && a.ingress_nodes == b.ingress_nodes
}

/// The node's network map, once it differs from the one the caller has (derived at log
/// index `since`), or the current one after [`LONG_POLL`].
///
/// The state at `since` is gone once the log moved on, so a caller that is behind gets
/// the current map at once (it skips an identical one); a caller that is up to date is
/// held until a commit changes its map: commits that do not (most task reports) do not
/// wake it, so the long poll never spins.
async fn netmap(
    State(ctx): State<Ctx>,
    peer: Peer,
    Query(q): Query<NetmapQuery>,
) -> ApiResult<Json<NetMap>> {
    let me = require_node(&peer)?;
    if me.node_id != q.node && me.role != Role::Manager {
        return Err(ApiError::Forbidden(format!(
            "node {} cannot read the network map of node {}",
            me.node_id, q.node
        )));
    }
    let manager = ctx.require_manager()?;
    let mut rx = manager.raft.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    // What the caller has, once this manager has reached the caller's version.
    let mut baseline: Option<NetMap> = None;
    loop {
        let state = rx.borrow_and_update().clone();
        let current = netmap_for_node(&state, &q.node);
        match netmap_step(q.since, state.last_index, baseline.as_ref(), &current) {
            NetmapStep::Answer => return Ok(Json(current)),
            NetmapStep::Baseline => baseline = Some(current.clone()),
            NetmapStep::Wait => {}
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(Json(current));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(current)),
        }
    }
}

/// What the netmap long poll does with one state it sees.
#[derive(Debug, PartialEq, Eq)]
enum NetmapStep {
    /// Answer the current map.
    Answer,
    /// This state is the caller's version: remember its map and wait for a change.
    Baseline,
    Wait,
}

fn netmap_step(
    since: u64,
    last_index: u64,
    baseline: Option<&NetMap>,
    current: &NetMap,
) -> NetmapStep {
    match baseline {
        Some(base) if same_netmap(base, current) => NetmapStep::Wait,
        Some(_) => NetmapStep::Answer,
        None if since == 0 || last_index > since => NetmapStep::Answer,
        None if last_index == since => NetmapStep::Baseline,
        // A lagging manager waits to catch up with the caller's version.
        None => NetmapStep::Wait,
    }
}

async fn task_status(
    State(ctx): State<Ctx>,
    peer: Peer,
    Json(report): Json<TaskStatusReport>,
) -> ApiResult<Json<serde_json::Value>> {
    let me = require_node(&peer)?;
    if me.node_id != report.node_id && me.role != Role::Manager {
        return Err(ApiError::Forbidden(format!(
            "node {} cannot report tasks of node {}",
            me.node_id, report.node_id
        )));
    }
    let manager = ctx.require_manager()?;
    manager
        .propose(Command::ReportTaskStatus {
            node_id: report.node_id,
            updates: report.updates,
        })
        .await?;
    Ok(Json(serde_json::json!({})))
}

async fn propose(
    State(ctx): State<Ctx>,
    peer: Peer,
    Json(command): Json<Command>,
) -> ApiResult<Response> {
    match &peer.identity {
        Some(p) if p.role == Role::Manager => {}
        _ => return Err(ApiError::Forbidden("only managers may propose".into())),
    }
    let manager = ctx.require_manager()?;
    // No further forwarding here: a stale caller retries against the leader it learns.
    match manager.raft.propose(command).await {
        Ok(result) => Ok(Json(result).into_response()),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct ClientCertQuery {
    name: Option<String>,
}

async fn client_cert(
    State(ctx): State<Ctx>,
    peer: Peer,
    Query(q): Query<ClientCertQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    // An admin certificate is not enough: whoever holds one must not be able to mint
    // more (or outlive its revocation) from elsewhere. Only root on a manager may.
    if !peer.is_local_socket() {
        require_admin(&peer)?;
        return Err(ApiError::Forbidden(
            "client certificates are issued only on a manager's local socket".into(),
        ));
    }
    let manager = ctx.require_manager()?;
    let (ca_pem, cert_pem, key_pem) =
        ca::client_cert(&manager, q.name.as_deref().unwrap_or("swarmup-admin"))?;
    Ok(Json(serde_json::json!({
        "ca_pem": ca_pem, "cert_pem": cert_pem, "key_pem": key_pem
    })))
}

#[derive(Debug, Deserialize)]
pub struct LeaveQuery {
    #[serde(default)]
    force: bool,
}

/// `swarm-node leave` on the local socket. A manager leaves only with `force`, as in
/// Docker: leaving without demotion first costs the swarm a voter.
async fn leave(
    State(ctx): State<Ctx>,
    peer: Peer,
    Query(q): Query<LeaveQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    if !peer.is_local_socket() {
        return Err(ApiError::Forbidden(
            "leave is allowed only on the node's local socket".into(),
        ));
    }
    if let Some(manager) = ctx.manager() {
        if !q.force {
            let managers = manager.raft.voters().len();
            return Err(ApiError::BadRequest(format!(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of a possible {managers}. Demote it first (docker node demote), or use --force to leave anyway",
                managers.saturating_sub(1)
            )));
        }
    }
    let _ = ctx.leave.send(true);
    Ok(Json(serde_json::json!({})))
}

/// Raft's own RPCs, only between managers.
async fn raft(State(ctx): State<Ctx>, peer: Peer, request: Request<Body>) -> ApiResult<Response> {
    match &peer.identity {
        Some(p) if p.role == Role::Manager => {}
        _ => {
            return Err(ApiError::Forbidden(
                "only managers take part in Raft".into(),
            ))
        }
    }
    let manager = ctx.require_manager()?;
    let router = swarm_raft::server::router(manager.raft.clone());
    Ok(router.oneshot(request).await.unwrap_or_else(|e| match e {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(index: u64, tasks: usize) -> NetMap {
        NetMap {
            index,
            node_id: "n1".into(),
            local_tasks: (0..tasks)
                .map(|i| swarm_state::netmap::LocalTask {
                    task_id: format!("t{i}"),
                    service_id: "s".into(),
                    addrs: vec![],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn netmap_long_poll_answers_only_news() {
        use NetmapStep::*;
        // A first request, or a caller behind this manager, is answered at once.
        assert_eq!(netmap_step(0, 7, None, &map(7, 0)), Answer);
        assert_eq!(netmap_step(5, 7, None, &map(7, 0)), Answer);
        // A caller up to date is held; its map is the baseline.
        assert_eq!(netmap_step(7, 7, None, &map(7, 0)), Baseline);
        // Commits that leave the map as it was do not wake it.
        assert_eq!(netmap_step(7, 9, Some(&map(7, 0)), &map(9, 0)), Wait);
        assert_eq!(netmap_step(7, 10, Some(&map(7, 0)), &map(10, 1)), Answer);
        // A manager behind the caller waits to catch up.
        assert_eq!(netmap_step(9, 4, None, &map(4, 0)), Wait);
    }
}
