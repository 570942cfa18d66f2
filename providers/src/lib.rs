//! Providers create, list, power and destroy the machines of a cluster.
//!
//! Every provider sits behind [`Provider`]. A provider never opens SSH: it hands back
//! [`Machine`] records that say how to reach each machine, and `swarmup-bootstrap` does
//! the rest over SSH.

pub mod lab;

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod digitalocean;

/// The role a machine will take in the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// An SSH host key that swarmup generated for one machine, so that its known_hosts
/// entry is pinned before the first connection.
#[derive(Clone, Serialize, Deserialize)]
pub struct HostKey {
    /// OpenSSH private key (PEM-like "OPENSSH PRIVATE KEY" text).
    pub private_openssh: String,
    /// One line, `ssh-ed25519 AAAA... comment`.
    pub public_openssh: String,
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKey")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

/// One machine that a provider is asked to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachinePlan {
    /// `CLUSTER-nodeN`: the provider's machine name, the hostname and the SSH alias.
    pub name: String,
    pub role: Role,
    pub host_key: HostKey,
}

/// What `create` asks of a provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub cluster: String,
    pub machines: Vec<MachinePlan>,
    /// The public half of the key swarmup logs in with (`ssh-ed25519 AAAA...`).
    pub login_public_key: String,
}

/// Whether a machine is powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Off,
    /// The provider knows the machine but it is still being created or is in a state
    /// that is neither on nor off.
    Pending,
}

/// How to reach one machine over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: IpAddr,
    pub port: u16,
    pub user: String,
}

/// A machine as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub name: String,
    pub role: Role,
    /// The provider's own id for the machine (a droplet id, a lab node directory name).
    pub provider_id: String,
    /// The address the swarm advertises (private network).
    pub private_addr: IpAddr,
    /// The address swarmup reaches the machine on.
    pub ssh: SshEndpoint,
    pub power: PowerState,
}

/// What a destroy removed, for the report printed to the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyReport {
    /// One line per removed thing, e.g. `droplet 1234 (web-node1)`.
    pub removed: Vec<String>,
}

/// Errors a provider returns. Messages are one line, name what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Prerequisite(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no machine {machine} in cluster {cluster}")]
    UnknownMachine { cluster: String, machine: String },
    #[error("{0}")]
    Api(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Receives progress lines while a provider works, one per machine and stage.
pub trait Progress: Send + Sync {
    fn machine(&self, machine: &str, message: &str);
}

/// A progress sink that drops everything, for tests and `--quiet`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn machine(&self, _machine: &str, _message: &str) {}
}

/// The one interface every provider implements.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The name users type after `--provider`.
    fn name(&self) -> &'static str;

    /// Checks what the provider needs before anything is created (root, binaries,
    /// credentials, limits). Creates nothing.
    async fn preflight(&self, plan: &ClusterPlan) -> Result<(), ProviderError>;

    /// Creates the machines of `plan` that do not exist yet and returns all machines of
    /// the cluster. Safe to call again: existing machines are kept, never duplicated.
    async fn create(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError>;

    /// The machines of a cluster, empty if the provider knows none.
    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, ProviderError>;

    /// The names of the clusters this provider can see.
    async fn clusters(&self) -> Result<Vec<String>, ProviderError>;

    /// Removes every machine and every other resource of the cluster.
    async fn destroy(&self, cluster: &str) -> Result<DestroyReport, ProviderError>;

    /// Powers a machine off: everything on it stops and it drops off the network.
    async fn power_off(&self, cluster: &str, machine: &str) -> Result<(), ProviderError>;

    /// Powers a machine back on.
    async fn power_on(&self, cluster: &str, machine: &str) -> Result<Machine, ProviderError>;
}
