//! The manager part of a node: present while the node's role is manager.
//!
//! Every manager serves reads from its own replica of the state and sends writes to the
//! Raft leader (forwarding over the control port when it is not the leader itself). Only
//! the leader runs [`leader::run`]: the orchestrator, node liveness and Raft membership.

use std::sync::Arc;
use std::time::Duration;

use swarm_raft::{ClusterRaft, MemberNode, ProposeError};
use swarm_state::proto::PREFIX;
use swarm_state::{ClusterState, Command, CommandResult};

use crate::clock::SharedClock;
use crate::error::{ApiError, NO_LEADER};

pub mod allocator;
pub mod ca;
pub mod dispatcher;
pub mod leader;
pub mod networks;
pub mod orchestrator;
pub mod reports;
pub mod scheduler;

/// How long a write waits for a leader to appear before the caller is told there is none.
/// How long a read waits for a leader before answering that there is none.
const READ_LEADER_WAIT: Duration = Duration::from_secs(3);
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long one commit may take before the caller is told the swarm has no quorum.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The two mutual-TLS clients a manager calls other nodes with.
#[derive(Debug)]
pub struct NodeClients {
    /// Requires a manager's certificate from the server.
    pub peers: reqwest::Client,
    /// Accepts a node certificate of either role.
    pub nodes: reqwest::Client,
}

#[derive(Debug)]
pub struct Manager {
    pub node_id: String,
    pub advertise_addr: String,
    pub raft: ClusterRaft,
    /// Mutual-TLS client for manager-to-manager calls: the server must be a manager.
    pub peers: reqwest::Client,
    /// Mutual-TLS client for calls to a node of either role (task logs on workers).
    pub nodes: reqwest::Client,
    pub scheme: String,
    pub clock: SharedClock,
    pub dispatcher: dispatcher::Dispatcher,
    /// Bounds the calls this manager makes to the leader on others' behalf (relayed
    /// heartbeats, forwarded proposals). Each is a connection of this manager's
    /// certificate, and the leader serves at most `max_per_manager` (512) of those: a
    /// follower relaying for a thousand nodes at once would be refused by the leader, and
    /// its nodes would miss their heartbeats.
    pub relays: tokio::sync::Semaphore,
    /// Task status reports waiting for the leader's next write (see [`reports`]).
    pub reports: reports::ReportQueue,
}

/// Calls to the leader on others' behalf at once (see [`Manager::relays`]): half the
/// leader's budget for one manager, leaving the rest to Raft and its own calls.
pub const MAX_RELAYS: usize = 256;

impl Manager {
    pub fn new(
        node_id: String,
        advertise_addr: String,
        raft: ClusterRaft,
        clients: NodeClients,
        scheme: String,
        clock: SharedClock,
        heartbeat_ms: u64,
    ) -> Arc<Self> {
        Arc::new(Manager {
            node_id,
            advertise_addr,
            raft,
            peers: clients.peers,
            nodes: clients.nodes,
            scheme,
            clock,
            dispatcher: dispatcher::Dispatcher::new(heartbeat_ms),
            relays: tokio::sync::Semaphore::new(MAX_RELAYS),
            reports: reports::ReportQueue::default(),
        })
    }

    /// The local replica of the state.
    pub fn read(&self) -> Arc<ClusterState> {
        self.raft.read()
    }

    /// Waits briefly for a known leader (an election in progress settles in well under
    /// [`READ_LEADER_WAIT`]), then gives Docker's answer for a swarm without one.
    pub async fn require_leader(&self) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + READ_LEADER_WAIT;
        while self.raft.leader().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(NO_LEADER.into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Commits a command through Raft, forwarding to the leader when needed, and waits
    /// until this replica has applied it, so a caller reads its own write.
    pub async fn propose(&self, command: Command) -> Result<u64, ApiError> {
        let result = self.propose_raw(command).await?;
        self.wait_applied(result.index).await;
        result.into_result().map_err(ApiError::from)
    }

    async fn propose_raw(&self, command: Command) -> Result<CommandResult, ApiError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            // A leader cut off from its quorum never answers: bound the wait.
            let attempt = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.propose(command.clone()));
            let Ok(outcome) = attempt.await else {
                return Err(ApiError::Unavailable(NO_LEADER.into()));
            };
            match outcome {
                Ok(result) => return Ok(result),
                Err(ProposeError::ForwardToLeader {
                    leader: Some((_, leader)),
                }) if leader.node_id != self.node_id => {
                    match self.forward(&leader, &command).await {
                        Ok(result) => return Ok(result),
                        Err(e) => {
                            tracing::debug!(error = %e, leader = %leader.addr, "forward failed")
                        }
                    }
                }
                Err(ProposeError::ForwardToLeader { .. }) => {}
                Err(e @ ProposeError::TooLarge { .. }) => {
                    return Err(ApiError::PayloadTooLarge(e.to_string()))
                }
                Err(e) => return Err(ApiError::Internal(e.to_string())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(NO_LEADER.into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward(
        &self,
        leader: &MemberNode,
        command: &Command,
    ) -> Result<CommandResult, String> {
        let url = format!("{}://{}{PREFIX}/propose", self.scheme, leader.addr);
        let _slot = self.relays.acquire().await.map_err(|e| e.to_string())?;
        let response = self
            .peers
            .post(url)
            .json(command)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("leader answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    async fn wait_applied(&self, index: u64) {
        let mut rx = self.raft.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if rx.borrow_and_update().last_index >= index {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// A fresh Docker-style id.
    pub fn new_id() -> String {
        swarm_state::ids::object_id(rand::random())
    }

    pub fn now(&self) -> String {
        self.clock.now_rfc3339()
    }
}
