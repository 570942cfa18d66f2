//! The security suite: what an attacker with network access, a worker's certificate, a
//! stale certificate or a local unprivileged account would try against a real swarm-node
//! cluster, each test named after the attack it stands for. Every test here must fail on
//! a node without the defence it checks. End-to-end tests run with SWARMUP_E2E=1.
//!
//! - `at_rest`: the state directory read by an unprivileged user.
//! - `authority`: demoted managers' and removed nodes' old certificates, remote admin
//!   certificates on local-only calls.
//! - `renewal`: certificates that expire and renew under load, forged names.
//! - `starvation`: half-finished requests and long polls that try to hold the port.
//! - `writes`: floods of task reports and heartbeats against the Raft log.
//! - `joins`: bad hostnames, duplicate names and token guessing.
//! - `autolock`: a manager's disk restarted without the unlock key.

mod support;

#[path = "security/at_rest.rs"]
mod at_rest;
#[path = "security/authority.rs"]
mod authority;
#[path = "security/autolock.rs"]
mod autolock;
#[path = "security/joins.rs"]
mod joins;
#[path = "security/renewal.rs"]
mod renewal;
#[path = "security/starvation.rs"]
mod starvation;
#[path = "security/writes.rs"]
mod writes;
