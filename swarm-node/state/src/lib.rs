//! The replicated cluster state of a swarm and the commands that change it.
//!
//! **Architecture Invariant:** [`ClusterState::apply`] is a pure, deterministic fold. It
//! reads no clock, draws no random number and does no I/O: every timestamp and every id
//! is chosen by the manager that proposes a [`Command`] and travels inside it, so every
//! replica that applies the same log reaches the same state.
//!
//! Objects are stored as the Docker Engine API's own types (`bollard-stubs`), so the API
//! layer serves them without conversion. Each object's `Version.Index` is the Raft log
//! index of the entry that last changed it, which is what Docker's optimistic
//! concurrency (`?version=N` on updates) compares against.

use std::collections::BTreeMap;

pub use bollard_stubs::models;
use models::{
    Node, NodeSpec, NodeSpecRoleEnum, NodeState, NodeStatus, ObjectVersion, Service, ServiceSpec,
    SwarmSpec, Task, TaskState, TaskStatus,
};
use serde::{Deserialize, Serialize};

pub mod ids;
pub mod netmap;
pub mod network;
pub mod ports;
pub mod proto;
pub mod secrets;
pub mod task_batch;
pub mod tasks;

use network::{Allocation, Attachment, NetworkDefaults, NetworkRecord};
use std::net::Ipv4Addr;
pub use tasks::Tasks;

/// Cluster-wide facts created by `init`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub version: u64,
    pub spec: SwarmSpec,
    /// The root CA certificate (PEM). Its SHA-256 digest is part of every join token.
    pub root_ca_cert_pem: String,
    /// The root CA key (PEM). Replicated so that any manager can sign, as SwarmKit does.
    pub root_ca_key_pem: String,
    pub worker_token: String,
    pub manager_token: String,
    /// How often nodes send heartbeats, in milliseconds (Docker's default is 5 s).
    pub heartbeat_period_ms: u64,
    /// Address pool, subnet size and VXLAN port, chosen at init.
    #[serde(default)]
    pub network: NetworkDefaults,
    /// Extra addresses every manager certificate names (`--cert-san` at init), such as
    /// a public address clients reach the managers on.
    #[serde(default)]
    pub cert_sans: Vec<String>,
    /// The managers' unlock key (`SWMKEY-1-…`) while autolock is on, empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unlock_key: String,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: Option<ClusterInfo>,
    pub nodes: imbl::OrdMap<String, Node>,
    pub services: imbl::OrdMap<String, Service>,
    /// A persistent map indexed by node (see [`tasks`]): cloning the state, which Raft's
    /// apply does whenever a reader still holds the previous version, shares every
    /// unchanged task instead of copying them all.
    pub tasks: Tasks,
    /// For each node, the log index of the last change to its assignments (a task placed
    /// on it, changed or removed by the managers, or ended; not the node's own reports
    /// of progress): their version, which only grows, so a worker can long-poll for it.
    #[serde(default)]
    pub assignment_versions: imbl::OrdMap<String, u64>,
    /// Overlay networks by id.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Each service's spec before its last update (Docker's `PreviousSpec`, what
    /// `docker service rollback` goes back to).
    #[serde(default)]
    pub previous_specs: BTreeMap<String, ServiceSpec>,
    /// Extra certificate addresses a manager asked for when it joined with the manager
    /// token (`--cert-san`), by node id, repeated in its renewals.
    #[serde(default)]
    pub node_cert_sans: BTreeMap<String, Vec<String>>,
    /// Each service's virtual IP per network: service id → network id → VIP.
    #[serde(default)]
    pub service_vips: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    /// Each task's addresses, one per network of its service.
    #[serde(default)]
    pub task_networks: imbl::OrdMap<String, Vec<Attachment>>,
    /// Each node's own address on the networks it has tasks on: node → network → address.
    #[serde(default)]
    pub node_networks: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    /// Each service's allocated `Endpoint.Ports`: its spec's ports with the defaults
    /// written out and a published port chosen for ingress ports given without one.
    #[serde(default)]
    pub service_ports: BTreeMap<String, Vec<models::EndpointPortConfig>>,
    /// The address each network handed out last; the next search starts after it.
    #[serde(default)]
    pub ipam_cursors: BTreeMap<String, Ipv4Addr>,
    /// Secrets by id (`docker secret create`), without their data.
    #[serde(default)]
    pub secrets: BTreeMap<String, models::Secret>,
    /// Configs by id (`docker config create`), without their data.
    #[serde(default)]
    pub configs: BTreeMap<String, models::Config>,
    /// The data of every secret and config, by id: kept apart in a type whose `Debug`
    /// hides it, so no printing of the state or of a command can show a secret.
    #[serde(default)]
    pub file_data: BTreeMap<String, proto::FileData>,
    /// Each node's WireGuard interface (`swg0`): its public key and its address in
    /// [`network::TUNNEL_SUBNET`]. Encrypted overlay networks run their VXLAN between
    /// these addresses, through the tunnel (see `swarm-net`).
    #[serde(default)]
    pub node_tunnels: BTreeMap<String, network::NodeTunnel>,
    /// The log index of the last applied command.
    pub last_index: u64,
    /// The log index of the last change the orchestrator may have to act on: every
    /// command but task status reports that neither end a task nor concern a service
    /// being updated or rolled back. While a large service converges, most entries are
    /// such reports, and the leader skips its pass over every task for them.
    #[serde(default)]
    pub orchestration_index: u64,
}

/// One change to the state. Commands carry decisions, never requests that still need a
/// choice: the leader picks nodes, ids and times, and `apply` only records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    InitCluster {
        info: Box<ClusterInfo>,
        first_node: Box<Node>,
    },
    /// A node joined with a valid token.
    AddNode {
        node: Box<Node>,
    },
    /// `docker node update`: the user's spec, checked against the version they read.
    UpdateNodeSpec {
        id: String,
        version: u64,
        spec: NodeSpec,
        at: String,
    },
    /// Liveness and description as seen by the dispatcher.
    SetNodeStatus {
        id: String,
        status: NodeStatus,
        description: Option<Box<models::NodeDescription>>,
        at: String,
    },
    /// Records the manager address of a node that became a Raft voter, or clears it.
    SetManagerAddr {
        id: String,
        addr: Option<String>,
        at: String,
    },
    RemoveNode {
        id: String,
    },
    /// A node's WireGuard public key, sent with its heartbeats, and the tunnel address
    /// the leader chose for it (kept when only the key changes).
    SetNodeTunnel {
        id: String,
        tunnel: network::NodeTunnel,
    },
    /// Records the extra certificate addresses of a manager that joined with them.
    SetNodeCertSans {
        id: String,
        sans: Vec<String>,
    },
    /// `docker swarm update`: the spec, checked against the version the user read.
    UpdateSwarmSpec {
        version: u64,
        spec: Box<SwarmSpec>,
        at: String,
    },
    CreateService {
        service: Box<Service>,
    },
    UpdateService {
        id: String,
        version: u64,
        spec: Box<ServiceSpec>,
        at: String,
    },
    RemoveService {
        id: String,
    },
    /// `docker service rollback`: the previous spec becomes the spec again (and the
    /// current one the previous), rolled out with the rollback config.
    RollbackService {
        id: String,
        version: u64,
        at: String,
    },
    /// The updater's decision about a service's rolling update (paused, completed, rolled
    /// back on failure). With `roll_back`, the previous spec is restored as for
    /// [`Command::RollbackService`].
    SetUpdateStatus {
        id: String,
        status: models::ServiceUpdateStatus,
        roll_back: bool,
        at: String,
    },
    /// Creates tasks or replaces the manager-owned fields (node, desired state) of
    /// existing ones. Observed status reported by workers is kept when it is further on.
    PutTasks {
        /// Shared: Raft copies an entry for the journal, for applying it and for each
        /// follower, and 1,000 tasks copied each time were megabytes.
        #[serde(with = "task_batch")]
        tasks: std::sync::Arc<Vec<Task>>,
    },
    /// Observed task states reported by a worker. A report only ever moves a task
    /// forward in the state machine, so late or duplicated reports are harmless.
    ReportTaskStatus {
        node_id: String,
        updates: Vec<proto::TaskStatusUpdate>,
    },
    /// Several nodes' reports in one entry: the leader gathers the reports that arrive
    /// together (SwarmKit's dispatcher batches status writes the same way), so 1,000
    /// nodes moving their tasks make a few entries instead of one each. Each report is
    /// applied as a `ReportTaskStatus` would be.
    ReportTaskStatuses {
        reports: Vec<proto::TaskStatusReport>,
    },
    RemoveTasks {
        ids: Vec<String>,
    },
    RotateJoinToken {
        role: NodeSpecRoleEnum,
        token: String,
    },
    /// `docker network create`: subnet, gateway and VNI already chosen.
    CreateNetwork {
        network: Box<NetworkRecord>,
    },
    /// `docker network rm`; refused while a service uses the network.
    RemoveNetwork {
        id: String,
    },
    /// Addresses chosen by the leader's allocator.
    Allocate {
        allocation: Box<Allocation>,
    },
    /// `docker secret create`: id and times chosen, data checked; the data travels
    /// apart from the object (see [`ClusterState::file_data`]).
    CreateSecret {
        secret: Box<models::Secret>,
        data: proto::FileData,
    },
    /// `docker config create`.
    CreateConfig {
        config: Box<models::Config>,
        data: proto::FileData,
    },
    /// `POST /secrets/{id}/update` or `/configs/{id}/update`: labels are all that may
    /// change, checked against the version the caller read.
    UpdateFileLabels {
        kind: secrets::FileKind,
        id: String,
        version: u64,
        labels: Option<std::collections::HashMap<String, String>>,
        at: String,
    },
    /// `docker secret rm` / `docker config rm`; refused while a service uses it.
    RemoveFile {
        kind: secrets::FileKind,
        id: String,
    },
    /// Autolock on with this unlock key (a new key rotates it), or off when empty.
    SetAutolock {
        version: u64,
        unlock_key: String,
        at: String,
    },
}

/// Why a command was refused. Refusals are part of the log's outcome, identical on every
/// replica, and are returned to the API caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    #[error("update out of sequence: {kind} {id} is at version {current}, not {given}")]
    VersionConflict {
        kind: String,
        id: String,
        current: u64,
        given: u64,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// The outcome of applying one log entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The log index of the entry.
    pub index: u64,
    pub error: Option<ApplyError>,
}

impl CommandResult {
    pub fn into_result(self) -> Result<u64, ApplyError> {
        match self.error {
            None => Ok(self.index),
            Some(e) => Err(e),
        }
    }
}

/// A service's update status as Docker shows it.
pub fn update_status(
    state: models::ServiceUpdateStatusStateEnum,
    message: &str,
    at: &str,
) -> models::ServiceUpdateStatus {
    models::ServiceUpdateStatus {
        state: Some(state),
        started_at: Some(at.to_string()),
        completed_at: None,
        message: Some(message.to_string()),
    }
}

pub(crate) fn version(index: u64) -> Option<ObjectVersion> {
    Some(ObjectVersion { index: Some(index) })
}

/// The `Version.Index` of an object, 0 when it has none.
pub fn version_of(v: &Option<ObjectVersion>) -> u64 {
    v.as_ref().and_then(|v| v.index).unwrap_or(0)
}

pub(crate) fn not_found(kind: &str, id: &str) -> ApplyError {
    ApplyError::NotFound {
        kind: kind.into(),
        id: id.into(),
    }
}

fn check_version(kind: &str, id: &str, current: u64, given: u64) -> Result<(), ApplyError> {
    if current == given {
        Ok(())
    } else {
        Err(ApplyError::VersionConflict {
            kind: kind.into(),
            id: id.into(),
            current,
            given,
        })
    }
}

impl ClusterState {
    /// Swaps a service's spec with its previous one and marks the rollback started.
    fn roll_back(
        &mut self,
        id: &str,
        index: u64,
        at: &str,
        message: &str,
    ) -> Result<(), ApplyError> {
        let previous =
            self.previous_specs.get(id).cloned().ok_or_else(|| {
                ApplyError::Invalid("service does not have a previous spec".into())
            })?;
        if let Some(why) = self.port_conflict(Some(id), &previous) {
            return Err(ApplyError::Invalid(why));
        }
        let service = self
            .services
            .get_mut(id)
            .ok_or_else(|| not_found("service", id))?;
        let current = service.spec.replace(previous).unwrap_or_default();
        service.version = version(index);
        service.updated_at = Some(at.to_string());
        service.update_status = Some(update_status(
            models::ServiceUpdateStatusStateEnum::ROLLBACK_STARTED,
            message,
            at,
        ));
        self.previous_specs.insert(id.to_string(), current);
        Ok(())
    }

    /// Applies one command at log `index`. Deterministic: see the crate docs.
    pub fn apply(&mut self, command: &Command, index: u64) -> CommandResult {
        self.last_index = index;
        let reports = match command {
            Command::ReportTaskStatus { node_id, updates } => {
                Some(self.reports_matter(node_id, updates))
            }
            Command::ReportTaskStatuses { reports } => Some(
                reports
                    .iter()
                    .any(|r| self.reports_matter(&r.node_id, &r.updates)),
            ),
            _ => None,
        };
        let error = self.apply_inner(command, index).err();
        if reports.unwrap_or(true) {
            self.orchestration_index = index;
        }
        CommandResult { index, error }
    }

    /// Whether status reports from `node_id` may call for the orchestrator: a task of
    /// the node ends (restart, replacement, job progress), or belongs to a service being
    /// updated (a start-first update shuts the old task down once the new one runs).
    /// Read before the reports apply; an update that does not apply only costs a pass.
    fn reports_matter(&self, node_id: &str, updates: &[proto::TaskStatusUpdate]) -> bool {
        updates.iter().any(|u| {
            let Some(task) = self.tasks.get(&u.task_id) else {
                return false;
            };
            if task.node_id.as_deref() != Some(node_id) {
                return false;
            }
            let ends = is_terminal(u.status.state.unwrap_or(TaskState::NEW));
            let updating = task
                .service_id
                .as_ref()
                .and_then(|s| self.services.get(s))
                .and_then(|s| s.update_status.as_ref())
                .and_then(|u| u.state)
                .is_some_and(|state| {
                    matches!(
                        state,
                        models::ServiceUpdateStatusStateEnum::UPDATING
                            | models::ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                    )
                });
            ends || updating
        })
    }

    fn apply_inner(&mut self, command: &Command, index: u64) -> Result<(), ApplyError> {
        match command {
            Command::InitCluster { info, first_node } => {
                if self.cluster.is_some() {
                    return Err(ApplyError::Conflict(
                        "this node is already part of a swarm".into(),
                    ));
                }
                let mut info = (**info).clone();
                info.version = index;
                self.cluster = Some(info);
                self.insert_node((**first_node).clone(), index)
            }
            Command::AddNode { node } => self.insert_node((**node).clone(), index),
            Command::UpdateNodeSpec {
                id,
                version: given,
                spec,
                at,
            } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| not_found("node", id))?;
                check_version("node", id, version_of(&node.version), *given)?;
                node.spec = Some(spec.clone());
                node.version = version(index);
                node.updated_at = Some(at.clone());
                Ok(())
            }
            Command::SetNodeStatus {
                id,
                status,
                description,
                at,
            } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| not_found("node", id))?;
                node.status = Some(status.clone());
                if let Some(d) = description {
                    node.description = Some((**d).clone());
                }
                node.version = version(index);
                node.updated_at = Some(at.clone());
                Ok(())
            }
            Command::SetManagerAddr { id, addr, at } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| not_found("node", id))?;
                node.manager_status = addr.as_ref().map(|a| models::ManagerStatus {
                    leader: None,
                    reachability: Some(models::Reachability::REACHABLE),
                    addr: Some(a.clone()),
                });
                node.version = version(index);
                node.updated_at = Some(at.clone());
                Ok(())
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(id).ok_or_else(|| not_found("node", id))?;
                self.assignment_versions.remove(id);
                self.node_cert_sans.remove(id);
                self.node_networks.remove(id);
                self.node_tunnels.remove(id);
                Ok(())
            }
            Command::SetNodeTunnel { id, tunnel } => {
                if !self.nodes.contains_key(id) {
                    return Err(not_found("node", id));
                }
                network::check_tunnel(self, id, tunnel).map_err(ApplyError::Invalid)?;
                self.node_tunnels.insert(id.clone(), tunnel.clone());
                Ok(())
            }
            Command::CreateService { service } => {
                let mut service = (**service).clone();
                let id = service.id.clone().unwrap_or_default();
                let name = service
                    .spec
                    .as_ref()
                    .and_then(|s| s.name.clone())
                    .unwrap_or_default();
                if id.is_empty() || name.is_empty() {
                    return Err(ApplyError::Invalid("service needs an id and a name".into()));
                }
                if self.services.contains_key(&id) || self.service_by_name(&name).is_some() {
                    return Err(ApplyError::Conflict(format!(
                        "service {name} already exists"
                    )));
                }
                // Checked again here: two creates may have raced past the API's check
                // (or a secret's removal).
                if let Some(why) = service.spec.as_ref().and_then(|spec| {
                    self.port_conflict(None, spec)
                        .or_else(|| self.missing_files(spec))
                }) {
                    return Err(ApplyError::Invalid(why));
                }
                service.version = version(index);
                self.services.insert(id, service);
                Ok(())
            }
            Command::UpdateService {
                id,
                version: given,
                spec,
                at,
            } => {
                let service = self
                    .services
                    .get(id)
                    .ok_or_else(|| not_found("service", id))?;
                check_version("service", id, version_of(&service.version), *given)?;
                if let Some(why) = self
                    .port_conflict(Some(id), spec)
                    .or_else(|| self.missing_files(spec))
                {
                    return Err(ApplyError::Invalid(why));
                }
                let old = service.spec.clone().unwrap_or_default();
                // Tasks are rolled out again only when what they run changes.
                let rolls = self.task_spec_of(&old) != self.task_spec_of(spec);
                let service = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| not_found("service", id))?;
                service.spec = Some((**spec).clone());
                service.version = version(index);
                service.updated_at = Some(at.clone());
                if rolls {
                    service.update_status = Some(update_status(
                        models::ServiceUpdateStatusStateEnum::UPDATING,
                        "update in progress",
                        at,
                    ));
                }
                self.previous_specs.insert(id.clone(), old);
                Ok(())
            }
            Command::RollbackService {
                id,
                version: given,
                at,
            } => {
                let service = self
                    .services
                    .get(id)
                    .ok_or_else(|| not_found("service", id))?;
                check_version("service", id, version_of(&service.version), *given)?;
                self.roll_back(id, index, at, "manually requested rollback")
            }
            Command::SetUpdateStatus {
                id,
                status,
                roll_back,
                at,
            } => {
                if *roll_back {
                    let message = status.message.clone().unwrap_or_default();
                    self.roll_back(id, index, at, &message)?;
                }
                let service = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| not_found("service", id))?;
                service.update_status = Some(status.clone());
                Ok(())
            }
            Command::RemoveService { id } => {
                self.previous_specs.remove(id);
                self.services
                    .remove(id)
                    .ok_or_else(|| not_found("service", id))?;
                self.service_vips.remove(id);
                // Its published ports are free for others at once.
                self.service_ports.remove(id);
                Ok(())
            }
            Command::PutTasks { tasks } => {
                for task in tasks.iter() {
                    let id = task.id.clone().unwrap_or_default();
                    let mut task = task.clone();
                    if let Some(existing) = self.tasks.get(&id) {
                        // The worker owns the observed status; keep whichever is further on.
                        if state_of(existing) > state_of(&task) {
                            task.status = existing.status.clone();
                        }
                    }
                    task.version = version(index);
                    if let Some(old_node) = self.tasks.get(&id).and_then(|t| t.node_id.clone()) {
                        self.assignment_versions.insert(old_node, index);
                    }
                    if let Some(node) = &task.node_id {
                        self.assignment_versions.insert(node.clone(), index);
                    }
                    self.tasks.insert(id, task);
                }
                Ok(())
            }
            Command::ReportTaskStatus { node_id, updates } => {
                self.apply_report(node_id, updates, index);
                Ok(())
            }
            Command::ReportTaskStatuses { reports } => {
                for report in reports {
                    self.apply_report(&report.node_id, &report.updates, index);
                }
                Ok(())
            }
            Command::RemoveTasks { ids } => {
                for id in ids {
                    self.release_task(id);
                    if let Some(node) = self.tasks.remove(id).and_then(|t| t.node_id.clone()) {
                        self.assignment_versions.insert(node, index);
                    }
                }
                Ok(())
            }
            Command::SetNodeCertSans { id, sans } => {
                if !self.nodes.contains_key(id) {
                    return Err(not_found("node", id));
                }
                if sans.is_empty() {
                    self.node_cert_sans.remove(id);
                } else {
                    self.node_cert_sans.insert(id.clone(), sans.clone());
                }
                Ok(())
            }
            Command::UpdateSwarmSpec { version, spec, at } => {
                let info = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| ApplyError::Invalid("no swarm".into()))?;
                check_version("swarm", &info.id, info.version, *version)?;
                // The dispatcher and every node follow the period from the next heartbeat.
                if let Some(ns) = spec
                    .dispatcher
                    .as_ref()
                    .and_then(|d| d.heartbeat_period)
                    .filter(|ns| *ns > 0)
                {
                    info.heartbeat_period_ms = (ns / 1_000_000) as u64;
                }
                info.spec = (**spec).clone();
                info.updated_at = at.clone();
                info.version = index;
                Ok(())
            }
            Command::RotateJoinToken { role, token } => {
                let info = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| ApplyError::Invalid("no swarm".into()))?;
                match role {
                    NodeSpecRoleEnum::MANAGER => info.manager_token = token.clone(),
                    _ => info.worker_token = token.clone(),
                }
                info.version = index;
                Ok(())
            }
            Command::CreateNetwork { network } => self.create_network(network, index),
            Command::RemoveNetwork { id } => self.remove_network(id),
            Command::CreateSecret { secret, data } => self.create_secret(secret, data, index),
            Command::CreateConfig { config, data } => self.create_config(config, data, index),
            Command::UpdateFileLabels {
                kind,
                id,
                version: given,
                labels,
                at,
            } => self.update_file_labels(*kind, id, *given, labels, at, index),
            Command::RemoveFile { kind, id } => self.remove_file(*kind, id),
            Command::Allocate { allocation } => self.apply_allocation(allocation, index),
            Command::SetAutolock {
                version,
                unlock_key,
                at,
            } => {
                let info = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| ApplyError::Invalid("no swarm".into()))?;
                check_version("swarm", &info.id, info.version, *version)?;
                info.spec
                    .encryption_config
                    .get_or_insert_with(Default::default)
                    .auto_lock_managers = Some(!unlock_key.is_empty());
                info.unlock_key = unlock_key.clone();
                info.updated_at = at.clone();
                info.version = index;
                Ok(())
            }
        }
    }

    fn create_network(&mut self, record: &NetworkRecord, index: u64) -> Result<(), ApplyError> {
        let (id, name) = (record.id(), record.name());
        if id.is_empty() || name.is_empty() {
            return Err(ApplyError::Invalid("network needs an id and a name".into()));
        }
        if self.networks.contains_key(id) || self.networks.values().any(|n| n.name() == name) {
            return Err(ApplyError::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        if let Some(other) = self.networks.values().find(|n| n.vni == record.vni) {
            return Err(ApplyError::Conflict(format!(
                "VXLAN id {} is already used by network {}",
                record.vni,
                other.name()
            )));
        }
        if let Some(other) = self.networks.values().find(|n| {
            n.subnet.contains(&record.subnet.network())
                || record.subnet.contains(&n.subnet.network())
        }) {
            return Err(ApplyError::Conflict(format!(
                "subnet {} overlaps with network {} ({})",
                record.subnet,
                other.name(),
                other.subnet
            )));
        }
        let mut record = record.clone();
        record.network.created.get_or_insert_with(String::new);
        let _ = index;
        self.networks.insert(id.to_string(), record);
        Ok(())
    }

    fn remove_network(&mut self, key: &str) -> Result<(), ApplyError> {
        let net = self
            .networks
            .get(key)
            .ok_or_else(|| not_found("network", key))?;
        let id = net.id().to_string();
        if let Some(service) = self.services_on_network(&id).next() {
            let service_name = service
                .spec
                .as_ref()
                .and_then(|s| s.name.clone())
                .unwrap_or_default();
            return Err(ApplyError::Conflict(format!(
                "network {} is in use by service {}",
                net.name(),
                service_name
            )));
        }
        self.networks.remove(&id);
        for vips in self.service_vips.values_mut() {
            vips.remove(&id);
        }
        self.service_vips.retain(|_, v| !v.is_empty());
        // A persistent map has no mutable iteration: change only the tasks attached.
        let attached: Vec<String> = self
            .task_networks
            .iter()
            .filter(|(_, attachments)| attachments.iter().any(|a| a.network_id == id))
            .map(|(task_id, _)| task_id.clone())
            .collect();
        for task_id in attached {
            if let Some(attachments) = self.task_networks.get_mut(&task_id) {
                attachments.retain(|a| a.network_id != id);
            }
        }
        for addrs in self.node_networks.values_mut() {
            addrs.remove(&id);
        }
        self.node_networks.retain(|_, v| !v.is_empty());
        self.ipam_cursors.remove(&id);
        Ok(())
    }

    fn insert_node(&mut self, mut node: Node, index: u64) -> Result<(), ApplyError> {
        let id = node.id.clone().unwrap_or_default();
        if id.is_empty() {
            return Err(ApplyError::Invalid("node needs an id".into()));
        }
        if self.nodes.contains_key(&id) {
            return Err(ApplyError::Conflict(format!("node {id} already exists")));
        }
        node.version = version(index);
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Finds a service by full id, name, or unique id prefix, as the docker CLI allows.
    pub fn find_service(&self, key: &str) -> Option<&Service> {
        if let Some(s) = self.services.get(key) {
            return Some(s);
        }
        if let Some(s) = self.service_by_name(key) {
            return Some(s);
        }
        unique_prefix(self.services.iter(), key)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services
            .values()
            .find(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name))
    }

    /// Finds a node by full id, hostname, or unique id prefix.
    pub fn find_node(&self, key: &str) -> Option<&Node> {
        if let Some(n) = self.nodes.get(key) {
            return Some(n);
        }
        let by_name: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| node_hostname(n) == key)
            .collect();
        if by_name.len() == 1 {
            return Some(by_name[0]);
        }
        unique_prefix(self.nodes.iter(), key)
    }

    /// Tasks of one service, in id order.
    pub fn tasks_of_service<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks
            .values()
            .map(|t| &**t)
            .filter(move |t| t.service_id.as_deref() == Some(service_id))
    }

    /// Tasks assigned to one node, in id order.
    /// Applies one node's status report: each update moves a task of that node forward
    /// in SwarmKit's order, or is ignored.
    ///
    /// The node's assignments change only when one of its tasks ends: the node already
    /// knows what it reported, and waking its long poll with its own news would send
    /// every task back to it once per step on its way to Running (SwarmKit's dispatcher
    /// does not send status-only changes either). An end changes which secrets and
    /// configs the node is sent, so that one does.
    fn apply_report(&mut self, node_id: &str, updates: &[proto::TaskStatusUpdate], index: u64) {
        for update in updates {
            let new_state = update.status.state.unwrap_or(TaskState::NEW);
            let changed = self.tasks.modify(&update.task_id, |task| {
                if task.node_id.as_deref() != Some(node_id) {
                    return false;
                }
                if new_state < state_of(task) {
                    return false;
                }
                task.status = Some(update.status.clone());
                task.updated_at = update.status.timestamp.clone();
                task.version = version(index);
                true
            });
            if changed == Some(true) && is_terminal(new_state) {
                self.assignment_versions.insert(node_id.to_string(), index);
            }
        }
    }

    pub fn tasks_on_node<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks.on_node(node_id)
    }

    /// The managers, as (node id, manager address).
    pub fn managers(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| {
                let addr = n.manager_status.as_ref()?.addr.clone()?;
                Some((id.clone(), addr))
            })
            .collect()
    }
}

pub(crate) fn unique_prefix<'a, T>(
    items: impl Iterator<Item = (&'a String, &'a T)>,
    prefix: &str,
) -> Option<&'a T> {
    if prefix.is_empty() {
        return None;
    }
    let mut found = None;
    for (id, item) in items {
        if id.starts_with(prefix) {
            if found.is_some() {
                return None;
            }
            found = Some(item);
        }
    }
    found
}

/// The observed state of a task (`NEW` when none was reported).
pub fn state_of(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .and_then(|s| s.state)
        .unwrap_or(TaskState::NEW)
}

/// The desired state of a task (`NEW` when unset).
pub fn desired_of(task: &Task) -> TaskState {
    task.desired_state.unwrap_or(TaskState::NEW)
}

/// True once a task has stopped for good: it will never run again.
pub fn is_terminal(state: TaskState) -> bool {
    state > TaskState::RUNNING
}

pub fn node_hostname(node: &Node) -> &str {
    node.description
        .as_ref()
        .and_then(|d| d.hostname.as_deref())
        .unwrap_or("")
}

pub fn node_role(node: &Node) -> NodeSpecRoleEnum {
    node.spec
        .as_ref()
        .and_then(|s| s.role)
        .unwrap_or(NodeSpecRoleEnum::WORKER)
}

pub fn node_state(node: &Node) -> NodeState {
    node.status
        .as_ref()
        .and_then(|s| s.state)
        .unwrap_or(NodeState::UNKNOWN)
}

/// A convenience to build a status for tests and reports.
pub fn status(state: TaskState, message: &str, at: &str) -> TaskStatus {
    TaskStatus {
        timestamp: Some(at.to_string()),
        state: Some(state),
        message: Some(message.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
