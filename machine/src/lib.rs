//! The records every side of swarmup shares about machines: what `create` asks a
//! provider for ([`ClusterPlan`]), what a provider hands back ([`Machine`]: how to reach
//! it over SSH, its role, its power) and the [`Progress`] sink both report to.
//!
//! A crate of its own so that `swarmup-bootstrap`, which works on machines over SSH,
//! depends on these types alone and never on a provider or a cloud client.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The swarm's control port on every machine: Raft, the dispatcher, the CA and the Docker
/// API for the admin (Docker's 2377).
pub const CONTROL_PORT: u16 = 2377;
/// The VXLAN data path between machines (swarm-node's `--data-path-port`, 4789).
pub const DATA_PORT: u16 = 4789;
/// Docker's own swarm mode (`swarmup create --engine docker`) gossips node membership
/// and overlay endpoints on this port, TCP and UDP; swarm-node never opens it.
pub const DOCKER_GOSSIP_PORT: u16 = 7946;
/// The WireGuard tunnel between swarm-node's nodes, which carries encrypted overlay
/// networks (`docker network create --opt encrypted`), UDP.
pub const TUNNEL_PORT: u16 = 51820;

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
    /// Extra tags the provider puts on everything it makes for this cluster, so that
    /// they can be found without local state: a workshop's `swarmup-workshop:NAME` and
    /// its expiry `swarmup-expires:UNIXSECONDS` ([`workshop`]). Empty for a plain create.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The tags that mark a workshop's clusters, shared by the CLI and every provider.
/// DigitalOcean allows letters, digits, `:`, `-` and `_` in tags, so both fit as they are.
pub mod workshop {
    /// Every resource of workshop NAME carries `swarmup-workshop:NAME`.
    pub const WORKSHOP_TAG_PREFIX: &str = "swarmup-workshop:";
    /// And its expiry, in seconds since the Unix epoch: `swarmup-expires:1796540400`.
    pub const EXPIRES_TAG_PREFIX: &str = "swarmup-expires:";

    pub fn workshop_tag(workshop: &str) -> String {
        format!("{WORKSHOP_TAG_PREFIX}{workshop}")
    }

    pub fn expires_tag(unix_seconds: u64) -> String {
        format!("{EXPIRES_TAG_PREFIX}{unix_seconds}")
    }

    /// The workshop a set of tags names, if any.
    pub fn workshop_of(tags: &[String]) -> Option<&str> {
        tags.iter()
            .find_map(|t| t.strip_prefix(WORKSHOP_TAG_PREFIX))
    }

    /// The expiry a set of tags names, if any (the earliest, should there be several).
    pub fn expires_of(tags: &[String]) -> Option<u64> {
        tags.iter()
            .filter_map(|t| t.strip_prefix(EXPIRES_TAG_PREFIX)?.parse().ok())
            .min()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tags_round_trip() {
            let tags = vec![workshop_tag("k8s-dec"), expires_tag(1_796_540_400)];
            assert_eq!(workshop_of(&tags), Some("k8s-dec"));
            assert_eq!(expires_of(&tags), Some(1_796_540_400));
            assert_eq!(workshop_of(&[]), None);
            assert_eq!(expires_of(&["swarmup-expires:soon".into()]), None);
        }
    }
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
