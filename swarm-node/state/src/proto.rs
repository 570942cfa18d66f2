//! The wire types of the internal cluster API, spoken between nodes over mutual TLS on
//! the control port (2377), under the path prefix [`PREFIX`]. The Docker Engine API is
//! served on the same port under its own paths.
//!
//! | method and path            | who may call            | body → answer                          |
//! |----------------------------|-------------------------|----------------------------------------|
//! | `GET  /swarmup/v1/ca`      | anyone (no client cert) | → root CA certificate, PEM text        |
//! | `POST /swarmup/v1/join`    | anyone with a token     | [`JoinRequest`] → [`JoinResponse`]     |
//! | `POST /swarmup/v1/renew`   | any node                | [`RenewRequest`] → [`JoinResponse`]    |
//! | `POST /swarmup/v1/heartbeat` | any node              | [`Heartbeat`] → [`HeartbeatResponse`]  |
//! | `GET  /swarmup/v1/assignments?node=ID&since=N` | that node | → [`Assignments`] (long poll)   |
//! | `GET  /swarmup/v1/netmap?node=ID&since=N` | that node | → [`crate::netmap::NetMap`] (long poll: answered once the map differs from the one at index N, at once for N = 0) |
//! | `POST /swarmup/v1/task-status` | any node            | [`TaskStatusReport`] → `{}`            |
//! | `POST /swarmup/v1/raft/{vote,append,snapshot}` | managers | openraft requests → results       |
//! | `POST /swarmup/v1/propose` | managers                | [`crate::Command`] → [`crate::CommandResult`] |
//! | `POST /swarmup/v1/client-cert`, `/leave` | the node's unix socket only | → admin bundle / `{}` |
//!
//! "Node" and "manager" are checked against the committed state, not only the
//! certificate: a removed node is refused everywhere, a demoted manager's certificate
//! is worth a worker's (swarm-node's `api::authority`).

use serde::{Deserialize, Serialize};

use crate::models::{NodeDescription, Task, TaskStatus};

pub const PREFIX: &str = "/swarmup/v1";

/// The organisation (O) of every certificate is the cluster id; the organisational unit
/// (OU) is one of these roles; the common name (CN) is the node id. As in SwarmKit.
pub const OU_MANAGER: &str = "swarm-manager";
pub const OU_WORKER: &str = "swarm-worker";

/// A node asks to join with a token and a certificate signing request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// PKCS#10 CSR in PEM. The CA ignores its subject and writes its own.
    pub csr_pem: String,
    pub hostname: String,
    /// `IP:PORT` the node's own control port listens on for others.
    pub advertise_addr: String,
    pub description: NodeDescription,
    /// `active`, `pause` or `drain`.
    pub availability: Option<String>,
    /// More addresses the node's certificate must name, such as a public address
    /// clients use from outside a private network.
    #[serde(default)]
    pub cert_sans: Vec<String>,
}

/// The CA's answer: who the node is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    pub cluster_id: String,
    pub role: swarm_contract::Role,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Control addresses (`IP:PORT`) of the managers, to heartbeat and fail over to.
    pub managers: Vec<String>,
}

/// A joined node asks for a fresh certificate (after a role change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
    #[serde(default)]
    pub cert_sans: Vec<String>,
}

/// The status of a heartbeat answer that tells a node it was removed from the swarm
/// (`docker node rm`): the node stops its tasks and forgets the swarm.
pub const REMOVED_STATUS: u16 = 410;

/// Sent by every node every heartbeat period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    /// `IP:PORT` of the node's control port.
    pub addr: String,
    pub description: NodeDescription,
    /// The node's WireGuard public key (base64), for encrypted overlay networks.
    #[serde(default)]
    pub tunnel_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub period_ms: u64,
    pub managers: Vec<String>,
    /// The role the cluster wants this node to have (`manager` / `worker`). When it
    /// differs from the role in the node's certificate, the node renews its certificate
    /// and starts or stops its manager part.
    pub desired_role: swarm_contract::Role,
    /// The node ids of the current managers: a worker lets only these read its task
    /// containers' logs (for `docker service logs`), since it has no state to check a
    /// manager certificate against.
    #[serde(default)]
    pub manager_ids: Vec<String>,
}

/// The tasks a node must run or stop, as of log index `index`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    pub index: u64,
    /// Every task of the node, or, when `task_ids` is set, only those changed since the
    /// caller's version.
    pub tasks: Vec<Task>,
    /// Set in an answer to a caller that asked for changes only (`delta=true` with a
    /// version): the ids of every task assigned to the node, in order. `tasks` then holds
    /// only the tasks whose `Version.Index` is above the caller's version; the caller keeps
    /// its copies of the others and drops those not listed. A node of 100 tasks hears of
    /// one task's change in one task's bytes, instead of 100 tasks' on every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ids: Option<Vec<String>>,
    /// Per task id: the ports its service publishes in host mode (`mode=host`), bound by
    /// the worker on this node's addresses as Docker's `PortBindings`. A published port
    /// of 0 lets the engine pick one.
    #[serde(default)]
    pub host_ports: std::collections::BTreeMap<String, Vec<crate::models::EndpointPortConfig>>,
    /// The data of every secret this node's tasks reference, by secret id, and of no other.
    /// Sent only in the answer to this node's own assignments and held in memory there:
    /// a worker never writes it to disk (the files a task sees live on a tmpfs).
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, FileData>,
    /// Likewise for configs, by config id.
    #[serde(default)]
    pub configs: std::collections::BTreeMap<String, FileData>,
}

/// The content of a secret or config as Docker's API carries it: base64 (standard
/// alphabet). Its `Debug` never shows the content, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileData(pub String);

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileData(<{} base64 characters>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: String,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusReport {
    pub node_id: String,
    pub updates: Vec<TaskStatusUpdate>,
}
