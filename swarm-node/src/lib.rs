//! `swarm-node`: the node daemon that is the swarm.
//!
//! # Layout
//! - [`config`]: the node's settings and the files under its state directory.
//! - [`manager`]: the manager part: Raft-backed state (via `swarm-raft`), the CA and join
//!   handling, the dispatcher (heartbeats, assignments, task reports), the orchestrator
//!   and scheduler that run on the leader.
//! - [`api`]: the Docker Engine API's swarm part, and the internal cluster API.
//! - [`daemon`]: wires the parts together under one shutdown tree.
//! - [`setup`]: the one-shot `init` and `join` commands.
//!
//! The worker part lives in `swarm-worker`, the replicated state in `swarm-state`, the
//! consensus in `swarm-raft` and the certificates in `swarm-pki`.

pub mod api;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod error;
pub mod local;
pub mod manager;
pub mod setup;
