//! The contract between `swarm-node` and the programs that drive it over SSH (swarmup's
//! bootstrap): what `swarm-node status --json` and `swarm-node nodes --json` print, and
//! what each exit code means. Both sides depend on these types, so neither parses the
//! other's prose: a decision such as "this node is already in a swarm" is an exit code,
//! never a message matched in stderr.
//!
//! Every document carries [`VERSION`]. A reader refuses another version with a message
//! naming both, instead of guessing at fields: bootstrap always pushes the binary it was
//! built with, so a mismatch means a stale binary on the machine.

use serde::{Deserialize, Serialize};

/// The version of every document in this crate. Raise it when a field changes meaning
/// or a required field appears.
pub const VERSION: u32 = 1;

/// What `swarm-node`'s exit code says. Messages go to stderr for people; programs decide
/// from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: any other failure; stderr says why.
    Failure,
    /// 2: bad command line (clap's own code).
    Usage,
    /// 3: `init` or `join` on a node that is already part of a swarm.
    AlreadyInSwarm,
    /// 4: a command that needs a swarm on a node that is not part of one.
    NotInSwarm,
    /// 5: a command that asks the running daemon, and it does not answer.
    DaemonDown,
}

impl Exit {
    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::AlreadyInSwarm => 3,
            Exit::NotInSwarm => 4,
            Exit::DaemonDown => 5,
        }
    }

    /// The meaning of an exit code; `None` (killed by a signal) is a failure.
    pub fn from_code(code: Option<i32>) -> Exit {
        match code {
            Some(0) => Exit::Ok,
            Some(2) => Exit::Usage,
            Some(3) => Exit::AlreadyInSwarm,
            Some(4) => Exit::NotInSwarm,
            Some(5) => Exit::DaemonDown,
            _ => Exit::Failure,
        }
    }
}

/// A node's role in the swarm, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's state as Docker names it (`docker node ls` STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Unknown,
    Down,
    Ready,
    Disconnected,
}

/// A node's availability (`docker node update --availability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

/// A manager's standing in Raft (`docker node ls` MANAGER STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerStatus {
    Leader,
    Reachable,
    Unreachable,
}

/// `swarm-node status --json`: what this node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: u32,
    /// `None` when the node is not part of a swarm (yet, or since it left).
    pub swarm: Option<Membership>,
}

/// A node's place in its swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub node_id: String,
    pub cluster_id: String,
    pub role: Role,
    /// The node's state as the managers see it; `None` on a worker, which cannot ask.
    pub state: Option<NodeState>,
    /// Control addresses (`IP:PORT`) of the managers the node knew at its last contact.
    pub managers: Vec<String>,
}

/// `swarm-node nodes --json` (on a manager).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    pub version: u32,
    pub nodes: Vec<NodeEntry>,
}

/// One node of the swarm, as `docker node ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub state: NodeState,
    pub availability: Availability,
    /// `None` for workers.
    pub manager_status: Option<ManagerStatus>,
}

impl NodeEntry {
    pub fn is_ready(&self) -> bool {
        self.state == NodeState::Ready
    }
}

impl NodeState {
    /// Docker's word for it, as in `docker node ls`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Down => "down",
            NodeState::Ready => "ready",
            NodeState::Disconnected => "disconnected",
        }
    }
}

impl Availability {
    pub const fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

impl ManagerStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            ManagerStatus::Leader => "leader",
            ManagerStatus::Reachable => "reachable",
            ManagerStatus::Unreachable => "unreachable",
        }
    }
}

impl Status {
    /// The swarm this node belongs to, if any.
    pub fn cluster_id(&self) -> Option<&str> {
        self.swarm.as_ref().map(|m| m.cluster_id.as_str())
    }

    /// The node's role, if it is in a swarm.
    pub fn role(&self) -> Option<Role> {
        self.swarm.as_ref().map(|m| m.role)
    }

    pub fn is_manager(&self) -> bool {
        self.role() == Some(Role::Manager)
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Not JSON of the expected shape.
    Malformed(String),
    /// Written by a swarm-node of another contract version.
    Version { found: u32 },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Malformed(e) => write!(f, "not a swarm-node document: {e}"),
            ReadError::Version { found } => write!(
                f,
                "swarm-node speaks contract version {found}, this program version {VERSION}: install the matching swarm-node"
            ),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a document, checking its version before its shape, so a binary of another
/// version gets the version message rather than a field error.
fn read<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ReadError> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned =
        serde_json::from_str(text).map_err(|e| ReadError::Malformed(e.to_string()))?;
    if v.version != VERSION {
        return Err(ReadError::Version { found: v.version });
    }
    serde_json::from_str(text).map_err(|e| ReadError::Malformed(e.to_string()))
}

impl Status {
    pub fn parse(text: &str) -> Result<Status, ReadError> {
        read(text.trim())
    }
}

impl NodeList {
    pub fn parse(text: &str) -> Result<NodeList, ReadError> {
        read(text.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_with_lowercase_words() {
        let status = Status {
            version: VERSION,
            swarm: Some(Membership {
                node_id: "n1".into(),
                cluster_id: "c1".into(),
                role: Role::Manager,
                state: Some(NodeState::Ready),
                managers: vec!["10.0.0.2:2377".into()],
            }),
        };
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""role":"manager""#), "{text}");
        assert!(text.contains(r#""state":"ready""#), "{text}");
        assert_eq!(Status::parse(&text), Ok(status));
    }

    #[test]
    fn another_version_is_refused_before_its_fields_are_read() {
        let err = Status::parse(r#"{"version": 2, "whatever": true}"#).unwrap_err();
        assert_eq!(err, ReadError::Version { found: 2 });
        assert!(err.to_string().contains("install the matching swarm-node"));
        assert!(matches!(
            Status::parse("Error: not JSON"),
            Err(ReadError::Malformed(_))
        ));
        // A missing field is an error, never a silent default.
        assert!(matches!(
            NodeList::parse(r#"{"version": 1}"#),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn exit_codes_map_both_ways() {
        for exit in [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::AlreadyInSwarm,
            Exit::NotInSwarm,
            Exit::DaemonDown,
        ] {
            assert_eq!(Exit::from_code(Some(i32::from(exit.code()))), exit);
        }
        assert_eq!(Exit::from_code(None), Exit::Failure);
        assert_eq!(Exit::from_code(Some(42)), Exit::Failure);
    }
}
