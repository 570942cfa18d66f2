//! The internal cluster API between nodes (paths in `swarm_state::proto`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use swarm_pki::PeerIdentity;
use swarm_pki::{Peer, Role};
use swarm_state::models::{NodeState, NodeStatus};
use swarm_state::netmap::{netmap_for_node, NetMap};
use swarm_state::proto::{
    Assignments, Heartbeat, HeartbeatResponse, JoinRequest, JoinResponse, RenewRequest,
    TaskStatusReport, TaskStatusUpdate, PREFIX,
};
use swarm_state::{node_role, node_state, state_of, ClusterState, Command, CommandResult};
use tower::ServiceExt;

use super::limits::{self, LongPollSlot, OfAssignments, OfNetmap};
use super::{authority, require_admin, require_node, Ctx, Need, Refusal};
use crate::error::{ApiError, NO_LEADER};
use crate::manager::{ca, Manager};

/// How long a worker's assignments request is held when nothing changes.
const LONG_POLL: Duration = Duration::from_secs(10);

/// Changes to a node's assignments are answered once they have been quiet this long
/// (SwarmKit's dispatcher batches them the same way, for 100 ms): placing a large
/// service writes an entry every few dozen milliseconds, each with a task for almost
/// every node, and answering each on its own made every node fetch, decode and act on
/// its assignments once per entry.
const BATCH_QUIET: Duration = Duration::from_millis(100);
/// ... but never later than this after the first change seen, so that a node still
/// hears of its tasks while a long placement goes on.
const BATCH_MAX: Duration = Duration::from_secs(1);

/// When a long poll that has seen its node's assignments change (first at `first`, last
/// at `last`) answers.
fn batch_ends(first: tokio::time::Instant, last: tokio::time::Instant) -> tokio::time::Instant {
    (last + BATCH_QUIET).min(first + BATCH_MAX)
}

/// How long a follower waits to apply a node it does not know yet before refusing it.
/// A node that just joined is committed on the leader before it is told it joined, but a
/// follower may apply its `AddNode` a heartbeat later; the leader, whose state is the
/// reference, refuses at once.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The largest node description a heartbeat may carry, serialized. Real ones (engine
/// version, plugins, labels, resources) are a few kilobytes; every change to one is a
/// log entry replicated to every manager.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;

/// Checks node `node_id` against this manager's committed state (see
/// [`super::authority`]). A follower that does not know the node yet waits up to
/// [`CATCH_UP`] for its state to show it, so a node that just joined is not refused by
/// a manager that is a moment behind.
async fn check_node(manager: &Manager, node_id: &str, need: Need) -> ApiResult<()> {
    match authority(&manager.read(), node_id, need) {
        Err(Refusal::UnknownNode(_)) if !manager.raft.is_leader() => {
            let mut rx = manager.raft.subscribe();
            let _ = tokio::time::timeout(CATCH_UP, async {
                loop {
                    if rx.borrow_and_update().nodes.contains_key(node_id) {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            Ok(authority(&manager.read(), node_id, need)?)
        }
        verdict => Ok(verdict?),
    }
}

/// Checks a caller that speaks for node `subject`: a node speaks for itself (it must
/// still belong to the swarm), and only a current manager speaks for others (relays).
async fn check_speaker(
    manager: &Manager,
    me: &PeerIdentity,
    subject: &str,
    what: &str,
) -> ApiResult<()> {
    if me.node_id == subject {
        return check_node(manager, subject, Need::Node).await;
    }
    if me.role != Role::Manager {
        return Err(ApiError::Forbidden(format!(
            "node {} cannot {what} of node {subject}",
            me.node_id
        )));
    }
    check_node(manager, &me.node_id, Need::Manager).await
}

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route(&format!("{PREFIX}/ca"), get(root_ca))
        .route(&format!("{PREFIX}/join"), limits::small_body(post(join)))
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
    check_node(&manager, &me.node_id, Need::Node).await?;
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
    check_description(&beat)?;
    check_tunnel_key(&beat)?;
    let manager = ctx.require_manager()?;
    // Managers relay heartbeats to the leader on behalf of nodes.
    if me.node_id != beat.node_id {
        check_speaker(&manager, me, &beat.node_id, "send heartbeats").await?;
    }
    if !manager.raft.is_leader() {
        // The leader checks the node against its state, the reference: a follower that
        // has not applied a fresh join yet does not refuse it.
        return relay_heartbeat(&manager, &beat).await.map(Json);
    }
    let now = tokio::time::Instant::now();
    // Read and dropped before proposing: a state held across a commit is copied by it.
    let change = {
        let state = manager.read();
        // The leader's word that the node was removed: it leaves when it hears this.
        authority(&state, &beat.node_id, Need::Node).map_err(|r| match r {
            Refusal::UnknownNode(_) => ApiError::Removed(r.to_string()),
            other => other.into(),
        })?;
        manager.dispatcher.seen(&beat.node_id, &beat.addr, now);
        let node = state
            .nodes
            .get(&beat.node_id)
            .ok_or_else(|| ApiError::from(Refusal::UnknownNode(beat.node_id.clone())))?;
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
        let ready = node_state(node) == NodeState::READY;
        let changed = node.status.as_ref().and_then(|s| s.addr.as_deref()) != Some(ip.as_str())
            || node.description.as_ref() != Some(&description);
        manager
            .dispatcher
            .may_propose_change(&beat.node_id, ready, changed, now)
            .then_some((ip, description))
    };
    if let Some(command) = tunnel_change(&manager, &beat)? {
        // Not fatal to the heartbeat: the next one tries again (two nodes may have been
        // given the same free address at once; apply takes the first).
        if let Err(e) = manager.propose(command).await {
            tracing::warn!(node = %beat.node_id, error = %e, "cannot record the node's tunnel key");
        }
    }
    if let Some((ip, description)) = change {
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
        period_ms: manager.dispatcher.period_in(&state).as_millis() as u64,
        managers: ca::manager_addrs(&manager, &state),
        desired_role: state
            .nodes
            .get(&beat.node_id)
            .map(|n| ca::node_role_kind(node_role(n)))
            .unwrap_or(swarm_contract::Role::Worker),
        manager_ids: state.managers().into_iter().map(|(id, _)| id).collect(),
    }))
}

/// Refuses a description over [`MAX_DESCRIPTION_BYTES`].
fn check_description(beat: &Heartbeat) -> ApiResult<()> {
    let size = serde_json::to_vec(&beat.description)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DESCRIPTION_BYTES {
        return Err(ApiError::BadRequest(format!(
            "node description of node {} is too large: {size} bytes, the limit is {MAX_DESCRIPTION_BYTES} bytes (engine labels and plugins included)",
            beat.node_id
        )));
    }
    Ok(())
}

async fn relay_heartbeat(
    manager: &crate::manager::Manager,
    beat: &Heartbeat,
) -> ApiResult<HeartbeatResponse> {
    let Some((_, leader)) = manager.raft.leader() else {
        return Err(ApiError::Unavailable(NO_LEADER.into()));
    };
    let url = format!("{}://{}{PREFIX}/heartbeat", manager.scheme, leader.addr);
    let _slot = manager
        .relays
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
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
    let status = response.status();
    if !status.is_success() {
        // The leader's verdict on the node (removed, description too large) reaches the
        // node as it was given; anything else means "try again".
        let message = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the leader at {} answered {status}", leader.addr));
        return Err(match status.as_u16() {
            400 => ApiError::BadRequest(message),
            403 => ApiError::Forbidden(message),
            410 => ApiError::Removed(message),
            _ => ApiError::Unavailable(format!(
                "the leader at {} answered {status}: {message}",
                leader.addr
            )),
        });
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
    /// Answer with the changes since `since` only (see [`Assignments::task_ids`]).
    #[serde(default)]
    delta: bool,
}

/// The version of a node's assignments. Zero means "nothing yet" to the worker: a node
/// without tasks is at version 1.
fn assignments_version(state: &ClusterState, node_id: &str) -> u64 {
    state
        .assignment_versions
        .get(node_id)
        .copied()
        .unwrap_or(0)
        .max(1)
}

/// A node's tasks with their version, which grows with every change to them (so a
/// lagging manager's answer is recognisably older). With `changed_after`, only the tasks
/// changed after that version travel whole, and every task's id is listed.
fn assignments_of(state: &ClusterState, node_id: &str, changed_after: Option<u64>) -> Assignments {
    let all: Vec<&swarm_state::models::Task> = state.tasks_on_node(node_id).collect();
    let index = assignments_version(state, node_id);
    let host_ports = all
        .iter()
        .filter_map(|t| {
            let ports = state.host_ports_of(t);
            (!ports.is_empty()).then(|| (t.id.clone().unwrap_or_default(), ports))
        })
        .collect();
    // Only the secrets and configs of this node's own tasks, and only in its own answer.
    let (secrets, configs) = state.files_for_node(all.iter().copied());
    let (tasks, task_ids) = match changed_after {
        Some(since) => (
            all.iter()
                .filter(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0) > since)
                .map(|t| (*t).clone())
                .collect(),
            Some(
                all.iter()
                    .map(|t| t.id.clone().unwrap_or_default())
                    .collect(),
            ),
        ),
        None => (all.into_iter().cloned().collect(), None),
    };
    Assignments {
        index,
        tasks,
        task_ids,
        host_ports,
        secrets,
        configs,
    }
}

async fn assignments(
    State(ctx): State<Ctx>,
    peer: Peer,
    _poll: LongPollSlot<OfAssignments>,
    Query(q): Query<AssignmentsQuery>,
) -> ApiResult<Json<Assignments>> {
    let me = require_node(&peer)?;
    let manager = ctx.require_manager()?;
    check_speaker(&manager, me, &q.node, "read the assignments").await?;
    let changed_after = (q.delta && q.since > 0).then_some(q.since);
    let mut rx = manager.raft.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    // The version last seen, when a change was first and last seen.
    let mut batch: Option<(u64, tokio::time::Instant, tokio::time::Instant)> = None;
    loop {
        // Every commit wakes every node's long poll: the version alone says whether this
        // node's tasks changed, and the tasks are gathered only then. No state is held
        // while waiting, since a state still held makes the next commit copy it whole.
        let state = rx.borrow_and_update().clone();
        let version = assignments_version(&state, &q.node);
        let now = tokio::time::Instant::now();
        if version > q.since {
            // A node that has nothing yet (starting, or asking for everything again)
            // is answered at once.
            if q.since == 0 {
                return Ok(Json(assignments_of(&state, &q.node, changed_after)));
            }
            batch = Some(match batch {
                Some((seen, first, last)) if seen == version => (seen, first, last),
                Some((_, first, _)) => (version, first, now),
                None => (version, now, now),
            });
        }
        let wake = batch
            .map(|(_, first, last)| batch_ends(first, last))
            .unwrap_or(deadline)
            .min(deadline);
        if now >= wake {
            return Ok(Json(assignments_of(&state, &q.node, changed_after)));
        }
        drop(state);
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(Json(assignments_of(&manager.read(), &q.node, changed_after)));
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
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
        && a.tunnel == b.tunnel
}

/// A heartbeat's WireGuard key must be one: checked before the heartbeat counts.
fn check_tunnel_key(beat: &Heartbeat) -> ApiResult<()> {
    match beat.tunnel_key.as_deref() {
        Some(key) if !swarm_state::network::valid_tunnel_key(key) => Err(ApiError::BadRequest(
            "tunnel_key must be a WireGuard public key: 32 bytes in base64".into(),
        )),
        _ => Ok(()),
    }
}

/// The command recording a node's WireGuard key, when its heartbeat brings a new one: the
/// node keeps its tunnel address, or gets the lowest free one.
fn tunnel_change(manager: &Manager, beat: &Heartbeat) -> ApiResult<Option<Command>> {
    let Some(key) = beat.tunnel_key.as_deref() else {
        return Ok(None);
    };
    let state = manager.read();
    if state
        .node_tunnels
        .get(&beat.node_id)
        .is_some_and(|t| t.public_key == key)
    {
        return Ok(None);
    }
    let addr = swarm_state::network::tunnel_addr_for(&state, &beat.node_id)
        .ok_or_else(|| ApiError::Unavailable("no tunnel address is left for this node".into()))?;
    Ok(Some(Command::SetNodeTunnel {
        id: beat.node_id.clone(),
        tunnel: swarm_state::network::NodeTunnel {
            public_key: key.to_string(),
            addr,
        },
    }))
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
    _poll: LongPollSlot<OfNetmap>,
    Query(q): Query<NetmapQuery>,
) -> ApiResult<Json<NetMap>> {
    let me = require_node(&peer)?;
    let manager = ctx.require_manager()?;
    check_speaker(&manager, me, &q.node, "read the network map").await?;
    let mut rx = manager.raft.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    // What the caller has, once this manager has reached the caller's version.
    let mut baseline: Option<NetMap> = None;
    loop {
        // Not held while waiting: a state still held makes the next commit copy it whole.
        let (current, last_index) = {
            let state = rx.borrow_and_update().clone();
            (netmap_for_node(&state, &q.node), state.last_index)
        };
        match netmap_step(q.since, last_index, baseline.as_ref(), &current) {
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
    let manager = ctx.require_manager()?;
    check_speaker(&manager, me, &report.node_id, "report tasks").await?;
    if me.node_id != report.node_id {
        check_node(&manager, &report.node_id, Need::Node).await?;
    }
    // The leader keeps only real changes (see `status_changes`); a follower forwards the
    // report and the leader filters it against its own state in `propose`, since a
    // follower's older state cannot tell a duplicate from news.
    if manager.raft.is_leader() {
        let updates = status_changes(&manager.read(), &report.node_id, report.updates);
        if !updates.is_empty() {
            // Written with the other reports that arrive meanwhile (`manager/reports.rs`).
            manager
                .reports
                .submit(TaskStatusReport {
                    node_id: report.node_id,
                    updates,
                })
                .await?;
        }
        return Ok(Json(serde_json::json!({})));
    }
    if report.updates.is_empty() {
        return Ok(Json(serde_json::json!({})));
    }
    manager
        .propose(Command::ReportTaskStatus {
            node_id: report.node_id,
            updates: report.updates,
        })
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// The updates of a status report that would change the state: for tasks that exist and
/// are assigned to the reporting node, whose state moves forward in SwarmKit's order, or
/// stays and says something new (message, error, container status). The timestamp alone
/// is not news. A task reported twice keeps its last update. Whatever is left out would
/// be a no-op in `apply` or a repeat, so a node that repeats itself writes nothing.
pub fn status_changes(
    state: &ClusterState,
    node_id: &str,
    updates: Vec<TaskStatusUpdate>,
) -> Vec<TaskStatusUpdate> {
    let mut last: std::collections::BTreeMap<String, TaskStatusUpdate> = Default::default();
    for update in updates {
        last.insert(update.task_id.clone(), update);
    }
    last.into_values()
        .filter(|update| {
            let Some(task) = state.tasks.get(&update.task_id) else {
                return false;
            };
            if task.node_id.as_deref() != Some(node_id) {
                return false;
            }
            let current = state_of(task);
            let new = update
                .status
                .state
                .unwrap_or(swarm_state::models::TaskState::NEW);
            if new != current {
                return new > current;
            }
            let Some(old) = task.status.as_ref() else {
                return true;
            };
            old.message != update.status.message
                || old.err != update.status.err
                || old.container_status != update.status.container_status
        })
        .collect()
}

async fn propose(
    State(ctx): State<Ctx>,
    peer: Peer,
    Json(command): Json<Command>,
) -> ApiResult<Response> {
    let manager = ctx.require_manager()?;
    let state = manager.read();
    may_propose(&state, peer.identity())?;
    let command = match command {
        // Reports forwarded by followers are filtered here, against the leader's state.
        Command::ReportTaskStatus { node_id, updates } if manager.raft.is_leader() => {
            let updates = status_changes(&state, &node_id, updates);
            drop(state);
            if !updates.is_empty() {
                // Written with the other reports that arrive meanwhile; the answer's
                // index is at or after their entry, so the follower reads its write.
                manager
                    .reports
                    .submit(TaskStatusReport { node_id, updates })
                    .await?;
            }
            return Ok(Json(CommandResult {
                index: manager.read().last_index,
                error: None,
            })
            .into_response());
        }
        command => command,
    };
    // No further forwarding here: a stale caller retries against the leader it learns.
    match manager.raft.propose(command).await {
        Ok(result) => Ok(Json(result).into_response()),
        Err(e @ swarm_raft::ProposeError::TooLarge { .. }) => {
            Err(ApiError::PayloadTooLarge(e.to_string()))
        }
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Who may commit commands through `propose`: a node whose certificate says manager and
/// whom the committed state still knows as a manager. Administrators go through the
/// Docker API, which checks what they ask for.
pub fn may_propose(state: &ClusterState, caller: Option<&PeerIdentity>) -> Result<(), ApiError> {
    match caller {
        Some(p) if p.role == Role::Manager => Ok(authority(state, &p.node_id, Need::Manager)?),
        _ => Err(ApiError::Forbidden("only managers may propose".into())),
    }
}

/// Who may send Raft RPCs (votes, appends, snapshots) to this manager: a node whose
/// certificate says manager and whom the committed state knows as a manager.
///
/// Exception: while this manager is not a voter itself (`voter == false`: it joined or
/// was promoted and the leader is still feeding it the log as a learner), its state is
/// behind by construction, possibly empty or older than the promotion of the very leader
/// that feeds it, so it trusts any manager certificate. It has nothing to give away yet
/// (it grants no vote that counts and holds no committed state of its own), and the
/// leader makes it a voter only once it has caught up with the log.
pub fn may_take_part_in_raft(
    state: &ClusterState,
    voter: bool,
    caller: Option<&PeerIdentity>,
) -> Result<(), ApiError> {
    match caller {
        Some(p) if p.role == Role::Manager && !voter => Ok(()),
        Some(p) if p.role == Role::Manager => Ok(authority(state, &p.node_id, Need::Manager)?),
        _ => Err(ApiError::Forbidden(
            "only managers take part in Raft".into(),
        )),
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
        require_admin(&ctx, &peer)?;
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
    let manager = ctx.require_manager()?;
    may_take_part_in_raft(&manager.read(), manager.raft.is_voter(), peer.identity())?;
    let router = swarm_raft::server::router(manager.raft.clone());
    Ok(router.oneshot(request).await.unwrap_or_else(|e| match e {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_changes_are_answered_once_quiet_or_after_the_longest_batch() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        // One change: answered once quiet.
        assert_eq!(batch_ends(t0, t0), t0 + BATCH_QUIET);
        // Changes keep coming: each one waits for quiet again...
        assert_eq!(batch_ends(t0, t0 + ms(70)), t0 + ms(70) + BATCH_QUIET);
        // ... up to the longest batch.
        assert_eq!(batch_ends(t0, t0 + ms(5_000)), t0 + BATCH_MAX);
    }

    fn map(index: u64, tasks: usize) -> NetMap {
        NetMap {
            tunnel: None,
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

    use swarm_state::models::{Node, NodeSpec, NodeSpecRoleEnum, Task, TaskState};

    fn node(id: &str, role: NodeSpecRoleEnum) -> Node {
        Node {
            id: Some(id.into()),
            spec: Some(NodeSpec {
                role: Some(role),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A swarm with manager m1, worker w1 (which was m2 before its demotion: same
    /// thing), and a task t1 on w1 that is running.
    fn swarm() -> ClusterState {
        let mut state = ClusterState::default();
        let mut index = 0;
        let mut apply = |state: &mut ClusterState, c: Command| {
            index += 1;
            assert_eq!(state.apply(&c, index).error, None, "{c:?}");
        };
        for n in [
            node("m1", NodeSpecRoleEnum::MANAGER),
            node("w1", NodeSpecRoleEnum::WORKER),
        ] {
            apply(&mut state, Command::AddNode { node: Box::new(n) });
        }
        let task = Task {
            id: Some("t1".into()),
            node_id: Some("w1".into()),
            status: Some(swarm_state::status(TaskState::RUNNING, "started", "t0")),
            ..Default::default()
        };
        apply(
            &mut state,
            Command::PutTasks {
                tasks: std::sync::Arc::new(vec![task]),
            },
        );
        state
    }

    fn identity(id: &str, role: Role) -> PeerIdentity {
        PeerIdentity {
            node_id: id.into(),
            role,
            cluster_id: "c".into(),
        }
    }

    #[test]
    fn a_delta_carries_the_changed_tasks_and_every_id() {
        let mut state = swarm();
        let put = |id: &str| Command::PutTasks {
            tasks: std::sync::Arc::new(vec![Task {
                id: Some(id.into()),
                node_id: Some("w1".into()),
                ..Default::default()
            }]),
        };
        // t1 was written at index 3; t2 at 4, then t1 removed at 5.
        assert_eq!(state.apply(&put("t2"), 4).error, None);
        let whole = assignments_of(&state, "w1", None);
        assert_eq!(
            (whole.index, whole.tasks.len(), whole.task_ids),
            (4, 2, None)
        );
        let delta = assignments_of(&state, "w1", Some(3));
        let ids = |a: &Assignments| {
            a.tasks
                .iter()
                .map(|t| t.id.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&delta), ["t2"]);
        assert_eq!(delta.task_ids, Some(vec!["t1".into(), "t2".into()]));
        let remove = Command::RemoveTasks {
            ids: vec!["t1".into()],
        };
        assert_eq!(state.apply(&remove, 5).error, None);
        let delta = assignments_of(&state, "w1", Some(4));
        assert_eq!((delta.index, delta.tasks.len()), (5, 0));
        assert_eq!(delta.task_ids, Some(vec!["t2".into()]));
    }

    #[test]
    fn only_current_managers_may_propose() {
        let state = swarm();
        assert!(may_propose(&state, Some(&identity("m1", Role::Manager))).is_ok());
        // A demoted manager's old certificate, a removed node's, a worker's, none.
        for caller in [
            Some(identity("w1", Role::Manager)),
            Some(identity("gone", Role::Manager)),
            Some(identity("w1", Role::Worker)),
            Some(identity("admin", Role::Admin)),
            None,
        ] {
            let e = may_propose(&state, caller.as_ref()).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN, "{caller:?}");
        }
        let e = may_propose(&state, Some(&identity("w1", Role::Manager))).unwrap_err();
        assert!(e.to_string().contains("demoted"), "{e}");
        let e = may_propose(&state, Some(&identity("gone", Role::Manager))).unwrap_err();
        assert!(e.to_string().contains("removed"), "{e}");
    }

    #[test]
    fn raft_trusts_manager_certificates_only_while_catching_up() {
        let state = swarm();
        let demoted = identity("w1", Role::Manager);
        // A voter checks its state.
        assert!(may_take_part_in_raft(&state, true, Some(&identity("m1", Role::Manager))).is_ok());
        assert!(may_take_part_in_raft(&state, true, Some(&demoted)).is_err());
        assert!(
            may_take_part_in_raft(&state, true, Some(&identity("gone", Role::Manager))).is_err()
        );
        // A learner (or a manager with an empty state) trusts manager certificates...
        assert!(may_take_part_in_raft(&ClusterState::default(), false, Some(&demoted)).is_ok());
        // ...and nothing else.
        assert!(may_take_part_in_raft(&state, false, Some(&identity("w1", Role::Worker))).is_err());
        assert!(may_take_part_in_raft(&state, false, None).is_err());
    }

    #[test]
    fn authority_comes_from_the_state() {
        let state = swarm();
        assert_eq!(authority(&state, "m1", Need::Manager), Ok(()));
        assert_eq!(authority(&state, "w1", Need::Node), Ok(()));
        assert_eq!(authority(&state, "m1", Need::Node), Ok(()));
        assert_eq!(
            authority(&state, "w1", Need::Manager),
            Err(Refusal::NotAManager("w1".into()))
        );
        assert_eq!(
            authority(&state, "gone", Need::Node),
            Err(Refusal::UnknownNode("gone".into()))
        );
    }

    fn update(task: &str, state: TaskState, message: &str, at: &str) -> TaskStatusUpdate {
        TaskStatusUpdate {
            task_id: task.into(),
            status: swarm_state::status(state, message, at),
        }
    }

    #[test]
    fn only_task_status_news_is_written() {
        let state = swarm();
        let changes = |updates| status_changes(&state, "w1", updates);
        // The same status again, with a new timestamp: nothing.
        assert!(changes(vec![update("t1", TaskState::RUNNING, "started", "t9")]).is_empty());
        // Backwards, an unknown task, another node's task: nothing.
        assert!(changes(vec![update("t1", TaskState::STARTING, "x", "t9")]).is_empty());
        assert!(changes(vec![update("nope", TaskState::FAILED, "x", "t9")]).is_empty());
        assert!(status_changes(
            &state,
            "m1",
            vec![update("t1", TaskState::FAILED, "x", "t9")]
        )
        .is_empty());
        // Forward, or the same state saying something new: kept.
        let forward = update("t1", TaskState::COMPLETE, "finished", "t9");
        assert_eq!(changes(vec![forward.clone()]), vec![forward]);
        let news = update("t1", TaskState::RUNNING, "healthy", "t9");
        assert_eq!(changes(vec![news.clone()]), vec![news]);
        let mut err = update("t1", TaskState::RUNNING, "started", "t9");
        err.status.err = Some("oom".into());
        assert_eq!(changes(vec![err.clone()]), vec![err]);
        // A task reported twice keeps its last update.
        let last = update("t1", TaskState::FAILED, "exit 1", "t9");
        assert_eq!(
            changes(vec![
                update("t1", TaskState::COMPLETE, "", "t8"),
                last.clone()
            ]),
            vec![last]
        );
    }

    #[test]
    fn oversized_descriptions_are_refused() {
        let mut beat = Heartbeat {
            node_id: "w1".into(),
            addr: "127.0.0.1:2377".into(),
            description: Default::default(),
            tunnel_key: None,
        };
        assert!(check_description(&beat).is_ok());
        beat.description.hostname = Some("h".repeat(MAX_DESCRIPTION_BYTES));
        let e = check_description(&beat).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("too large"), "{e}");
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
