//! Bootstrap turns machines into a swarm, the same way for every provider: over SSH
//! only, with the cluster's own key and pinned host keys.
//!
//! The pieces:
//! - [`RemoteShell`]: commands and uploads on one machine; [`SshShell`] is the real one,
//!   [`FakeShell`] a scripted one for tests. A [`Connector`] opens shells.
//! - [`keys`]: the cluster's login key, per-machine host keys and known_hosts file.
//! - [`ssh_config`]: the managed block in `~/.ssh/config`.
//! - [`steps`]: one function per stage (SSH, Docker, binary, firewall, service, init,
//!   join, readiness), each bounded by a deadline.
//! - [`bootstrap_cluster`]: all of it for a whole cluster, safe to run again.
//! - [`student`]: a workshop student's login and docker CLI on every node.

mod cluster;
pub mod docker_swarm;
mod error;
pub mod existing;
pub mod fake;
mod fsutil;
pub mod keys;
mod shell;
mod ssh;
pub mod ssh_config;
pub mod steps;
pub mod student;

pub use cluster::{
    bootstrap_cluster, bootstrap_cluster_with, fetch_client_cert, fetch_client_cert_with,
    firewall_rules, load_image, load_image_with, service_unit, BinarySource, BootstrapOptions,
    BootstrapReport, Deadlines, FirewallOptions, ImageLoad, NodeReport,
};
pub use error::{BootstrapError, Step};
pub use fake::{FakeConnector, FakeShell};
pub use shell::{quote, upload_script, CommandOutput, RemoteShell, ShellError};
pub use ssh::{ssh_argv, ssh_target, Connector, SshConnector, SshOptions, SshShell};
pub use steps::{BinaryOutcome, ClientCert, HostFacts, SwarmNodeBinary};
pub use swarm_contract;
pub use swarmup_templates::{Cidr, Protocol, PublishedPort};

#[cfg(test)]
mod tests;
