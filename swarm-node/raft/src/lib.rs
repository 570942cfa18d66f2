//! The swarm's consensus layer: the managers replicate [`ClusterState`] with Raft
//! (openraft 0.9).
//!
//! **Architecture Invariant:** this is the only crate that knows about openraft. No
//! openraft type appears in its public API; errors are wrapped in [`RaftError`] and
//! [`ProposeError`].
//!
//! # Layout
//! - [`ClusterRaft`] (this file): the handle the manager code uses: open, initialize,
//!   propose commands, read the applied state, change the voter set.
//! - `log_store`: the durable Raft log (a checksummed, encrypted journal plus
//!   vote/committed files).
//! - `state_machine`: [`ClusterState`] folded over the log, published through a watch
//!   channel; encrypted snapshots in `snapshot.json`.
//! - `at_rest`: the data key (`data.key`, wrapped by the unlock key under autolock) and
//!   the sealed format of journal records and snapshots: the state holds the root CA key and the join tokens. The directory is
//!   0700 and every file in it 0600, tightened at open for state older versions made.
//! - `network` / [`server::router`]: Raft RPC as JSON over HTTP(S) on the control address,
//!   under [`RAFT_PATH_PREFIX`].
//!
//! One directory holds everything a node needs to restart: the snapshot plus the log
//! after it.
//!
//! # Use
//! ```no_run
//! # async fn f(client: reqwest::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use swarm_raft::{ClusterRaft, MemberNode, RaftOptions};
//! let raft = ClusterRaft::open(RaftOptions::new(1, "/var/lib/swarm-node/raft".into()), client).await?;
//! // Serve `swarm_raft::server::router(raft.clone())` on the control address, then, on
//! // the first manager only:
//! if !raft.is_initialized() {
//!     raft.initialize(MemberNode { node_id: "abc".into(), addr: "10.0.0.1:2377".into() }).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use swarm_state::{ClusterState, Command, CommandResult};
use tokio::sync::watch;

mod at_rest;
mod fsio;
mod log_store;
mod network;
pub mod server;
mod state_machine;

#[cfg(test)]
mod tests;

pub use at_rest::{check_unlock_key, key_file_state, KeyFileState, UnlockError, UnlockKey};
use log_store::LogStore;
use state_machine::StateMachineStore;

/// The path under which [`server::router`] serves Raft RPC, for the caller's
/// authorization middleware.
pub const RAFT_PATH_PREFIX: &str = "/swarmup/v1/raft";

/// How long [`ClusterRaft::add_voter`] waits for a new node to catch up with the log
/// before giving up (it stays a learner; calling again resumes).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on waiting for our own metrics to reflect a change we just made.
const METRICS_WAIT: Duration = Duration::from_secs(5);

/// A member of the Raft group: a manager node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The swarm node id.
    pub node_id: String,
    /// The control address, `IP:PORT`, where [`server::router`] is served.
    pub addr: String,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.node_id, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of the swarm.
    pub(crate) TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MemberNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Short names for the openraft generics, in one place.
#[allow(dead_code)]
pub(crate) mod typ {
    use super::{MemberNode, TypeConfig};

    pub(crate) type Raft = openraft::Raft<TypeConfig>;
    pub(crate) type Entry = openraft::Entry<TypeConfig>;
    pub(crate) type LogId = openraft::LogId<u64>;
    pub(crate) type Vote = openraft::Vote<u64>;
    pub(crate) type Snapshot = openraft::Snapshot<TypeConfig>;
    pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, MemberNode>;
    pub(crate) type StoredMembership = openraft::StoredMembership<u64, MemberNode>;
    pub(crate) type Metrics = openraft::RaftMetrics<u64, MemberNode>;
    pub(crate) type StorageError = openraft::StorageError<u64>;
    pub(crate) type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<u64, E>;
    pub(crate) type RPCError<E = openraft::error::Infallible> =
        openraft::error::RPCError<u64, MemberNode, RaftError<E>>;
    pub(crate) type ClientWriteError = openraft::error::ClientWriteError<u64, MemberNode>;
    pub(crate) type CheckIsLeaderError = openraft::error::CheckIsLeaderError<u64, MemberNode>;
    pub(crate) type ForwardToLeader = openraft::error::ForwardToLeader<u64, MemberNode>;
}

/// How to run the local Raft node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftOptions {
    /// This node's Raft id, stable across restarts.
    pub node_id: u64,
    /// Where the log, vote and snapshot live. Created if missing.
    pub dir: PathBuf,
    /// Leader heartbeat period (default 500 ms). openraft also gives each AppendEntries
    /// request this long to be answered (follower's fsync included), so a short period
    /// makes a busy follower miss appends again and again.
    pub heartbeat_ms: u64,
    /// Followers start an election after a random silence from the leader in
    /// `election_min_ms..election_max_ms` (default 2000..4000 ms: failover in a few
    /// seconds, against Docker's 10 or more, without elections when a loaded manager
    /// answers late; add up to 1.5 heartbeats for the timer's granularity).
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot every this many applied entries (default 10000, Docker's
    /// default); 0 disables snapshots.
    pub snapshot_logs: u64,
    /// Also take a snapshot once the journal has been given this many bytes of entries
    /// since the last one (default 16 MiB), or as many as the last snapshot took if
    /// that is more: a few large entries cost as much memory and replay time as many
    /// small ones. Entries in memory take about four times their journal bytes (a task
    /// batch: ~2.3 KB per task against ~540 B), and the log is purged only behind a
    /// snapshot; a snapshot costs its whole state, so it is never taken for less log
    /// than it writes itself. 0 counts entries only.
    pub snapshot_bytes: u64,
    /// `https` in production (the caller's client does mutual TLS), `http` in tests.
    pub scheme: String,
    /// Opens a data key wrapped by autolock (see [`key_file_state`]).
    pub unlock_key: Option<UnlockKey>,
}

impl RaftOptions {
    /// The defaults for node `node_id` storing its state in `dir`.
    pub fn new(node_id: u64, dir: PathBuf) -> Self {
        RaftOptions {
            node_id,
            dir,
            heartbeat_ms: 500,
            election_min_ms: 2_000,
            election_max_ms: 4_000,
            snapshot_logs: 10_000,
            snapshot_bytes: 16 * 1024 * 1024,
            scheme: "https".into(),
            unlock_key: None,
        }
    }

    fn validate(&self) -> Result<(), RaftError> {
        let bad = |m: String| Err(RaftError::InvalidOptions(m));
        if self.scheme != "http" && self.scheme != "https" {
            return bad(format!(
                "scheme {:?} is not supported; use https (or http in tests)",
                self.scheme
            ));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_min_ms {
            return bad(format!(
                "heartbeat {} ms must be above 0 and below the election timeout minimum {} ms",
                self.heartbeat_ms, self.election_min_ms
            ));
        }
        if self.election_min_ms >= self.election_max_ms {
            return bad(format!(
                "election timeout range {}..{} ms is empty; the maximum must exceed the minimum",
                self.election_min_ms, self.election_max_ms
            ));
        }
        let (min, lease) = self.openraft_election();
        if min >= lease {
            return bad(format!(
                "election timeout maximum {} ms is too short for heartbeat {} ms; make it more than 2 heartbeats",
                self.election_max_ms, self.heartbeat_ms
            ));
        }
        Ok(())
    }

    /// openraft's `(election_timeout_min, election_timeout_max)` for these options.
    ///
    /// A follower of a known leader in openraft 0.9 waits out a leader lease equal to
    /// `election_timeout_max` *and then* its random timeout in `min..max` before it stands
    /// for election. Using `max = election_max_ms / 2` and `min = election_min_ms - max`
    /// puts the total silence in `election_min_ms..election_max_ms`, as documented; `min`
    /// is raised above the heartbeat where openraft requires it.
    fn openraft_election(&self) -> (u64, u64) {
        let lease = self.election_max_ms / 2;
        let min = self
            .election_min_ms
            .saturating_sub(lease)
            .max(self.heartbeat_ms + 1);
        (min, lease)
    }
}

/// Knobs tests turn that production leaves at their defaults.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// Entries kept in the log behind a snapshot, so that briefly lagging followers catch
    /// up from the log rather than with a whole snapshot.
    pub(crate) logs_to_keep: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { logs_to_keep: 1000 }
    }
}

/// Errors of opening the node and of membership operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("invalid raft options: {0}")]
    InvalidOptions(String),
    #[error("raft storage in {dir}: {message}", dir = .dir.display())]
    Storage { dir: PathBuf, message: String },
    /// Membership changes happen on the leader; forward the request there.
    #[error("this node is not the raft leader ({})", describe_leader(.leader))]
    NotLeader { leader: Option<(u64, MemberNode)> },
    #[error("raft is already initialized with other voters; join the existing cluster instead")]
    AlreadyInitialized,
    #[error("raft membership change refused: {0}")]
    Membership(String),
    #[error("raft node {id} ({node}) did not catch up with the log within {secs} s; check that it is reachable and retry")]
    CatchUpTimeout {
        id: u64,
        node: MemberNode,
        secs: u64,
    },
    #[error("refusing to remove raft voter {0}: it is the last voter")]
    LastVoter(u64),
    /// The node stopped (shut down, or a storage failure); it must be reopened.
    #[error("raft node stopped: {0}")]
    Fatal(String),
}

/// Why a proposal (or a linearizable read check) did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals; send it there (when the leader is known).
    #[error("this node is not the raft leader ({})", describe_leader(.leader))]
    ForwardToLeader { leader: Option<(u64, MemberNode)> },
    /// This node thinks it leads but a quorum did not confirm it.
    #[error("raft leadership not confirmed by a quorum: {0}")]
    NoQuorum(String),
    /// The node stopped (shut down, or a storage failure).
    #[error("raft node stopped: {0}")]
    Fatal(String),
    /// The command is larger than [`MAX_PROPOSAL_BYTES`]: it was not appended.
    #[error("refusing a raft log entry of {bytes} bytes: the limit is {max} bytes; split the change into smaller ones")]
    TooLarge { bytes: usize, max: usize },
}

/// The largest command a proposal may carry, serialized. Every entry travels to every
/// follower in one append request, whose body the transport caps at 64 MB, and is held
/// in memory several times on the way; an entry over the cap could never be replicated
/// and would stall the log behind it. Callers split large changes (the leader writes
/// tasks in batches), so nothing legitimate comes near this.
pub const MAX_PROPOSAL_BYTES: usize = 8 * 1024 * 1024;

/// Checks a command against [`MAX_PROPOSAL_BYTES`].
pub fn check_proposal_size(cmd: &Command) -> Result<(), ProposeError> {
    let bytes = serde_json::to_vec(cmd)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_PROPOSAL_BYTES {
        return Err(ProposeError::TooLarge {
            bytes,
            max: MAX_PROPOSAL_BYTES,
        });
    }
    Ok(())
}

/// True once `written - at_last_snapshot` bytes of entries reached `limit`.
fn snapshot_due(written: u64, at_last_snapshot: u64, limit: u64) -> bool {
    limit > 0 && written.saturating_sub(at_last_snapshot) >= limit
}

impl Limits {
    /// The journal bytes after which a snapshot is due (0: never by size).
    fn due_after(&self) -> u64 {
        if self.snapshot_bytes == 0 {
            return 0;
        }
        self.snapshot_bytes
            .max(self.last_snapshot_bytes.load(Ordering::Relaxed))
    }
}

/// Where to purge the log now (see [`LogStore::purge_point`]), if further than before.
fn purge_point(m: &typ::Metrics, log: &LogStore, keep_entries: u64) -> Option<u64> {
    let snapshot = m.snapshot?;
    // On the leader: the first index some follower lacks (the leader lists itself too).
    let needed_from = m.replication.as_ref().and_then(|r| {
        r.values()
            .map(|matched| matched.map_or(0, |l| l.index + 1))
            .min()
    });
    log.purge_point(snapshot.index, keep_entries, needed_from)
        .filter(|p| m.purged.is_none_or(|done| done.index < *p))
}

/// What [`snapshot_and_purge_by_size`] holds the log to.
struct Limits {
    /// Bytes of entries given to the journal between snapshots (0: no limit), or the
    /// last snapshot's size if more.
    snapshot_bytes: u64,
    last_snapshot_bytes: Arc<AtomicU64>,
    /// Entries kept behind a snapshot (openraft's `max_in_snapshot_log_to_keep`).
    keep_entries: u64,
}

/// Triggers a snapshot whenever the journal has been given `limits.snapshot_bytes` bytes
/// of entries since the last one (openraft's own policy counts entries only), and purges
/// the log behind the snapshot down to a bounded weight, keeping more while a follower
/// still needs it (see [`LogStore::purge_point`]). Ends when Raft shuts down.
async fn snapshot_and_purge_by_size(
    raft: typ::Raft,
    log: LogStore,
    written: Arc<AtomicU64>,
    limits: Limits,
) {
    let mut metrics = raft.metrics();
    let mut last_snapshot = metrics.borrow().snapshot;
    let mut baseline = written.load(Ordering::Relaxed);
    loop {
        let (due, purge) = {
            let m = metrics.borrow_and_update();
            let now = written.load(Ordering::Relaxed);
            if m.snapshot != last_snapshot {
                // A snapshot was taken (by count, by size, or installed from the leader).
                last_snapshot = m.snapshot;
                baseline = now;
                (false, purge_point(&m, &log, limits.keep_entries))
            } else if snapshot_due(now, baseline, limits.due_after()) {
                // Counted from now on, so a snapshot still being built is not asked for
                // again with every entry.
                baseline = now;
                (true, None)
            } else {
                // Followers caught up: what they no longer need may go.
                (false, purge_point(&m, &log, limits.keep_entries))
            }
        };
        if due {
            tracing::info!(
                bytes = limits.due_after(),
                "raft log grew past its size limit: taking a snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
        if let Some(upto) = purge {
            tracing::debug!(upto, "purging the raft log behind the snapshot by weight");
            if raft.trigger().purge_log(upto).await.is_err() {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn describe_leader(leader: &Option<(u64, MemberNode)>) -> String {
    match leader {
        Some((id, node)) => format!("leader is raft node {id}, {node}"),
        None => "no leader known".into(),
    }
}

/// The handle on the local Raft node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterRaft {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    raft: typ::Raft,
    sm: StateMachineStore,
    metrics: watch::Receiver<typ::Metrics>,
    leader: watch::Receiver<Option<u64>>,
    /// This manager's data key, rewrapped when autolock changes.
    key: Arc<at_rest::DataKey>,
}

impl fmt::Debug for ClusterRaft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.inner.metrics.borrow();
        f.debug_struct("ClusterRaft")
            .field("id", &self.inner.id)
            .field("state", &m.state)
            .field("term", &m.current_term)
            .field("leader", &m.current_leader)
            .finish_non_exhaustive()
    }
}

impl ClusterRaft {
    /// Opens the node's storage in `opts.dir` and starts Raft. A node with an empty
    /// directory waits to be initialized or added by a leader; one with state rejoins.
    pub async fn open(opts: RaftOptions, client: reqwest::Client) -> Result<Self, RaftError> {
        Self::open_with(opts, client, Tuning::default()).await
    }

    pub(crate) async fn open_with(
        opts: RaftOptions,
        client: reqwest::Client,
        tuning: Tuning,
    ) -> Result<Self, RaftError> {
        opts.validate()?;
        let storage_err = |e: &dyn fmt::Display| RaftError::Storage {
            dir: opts.dir.clone(),
            message: e.to_string(),
        };
        let dir = opts.dir.clone();
        let unlock = opts.unlock_key.clone();
        let key = tokio::task::spawn_blocking(move || {
            at_rest::prepare_dir(&dir)?;
            at_rest::DataKey::load_or_create(&dir, unlock.as_ref())
        })
        .await
        .map_err(|e| storage_err(&e))?
        .map_err(|e| storage_err(&e))?;
        let key = Arc::new(key);
        let log_store = LogStore::open(&opts.dir, key.clone())
            .await
            .map_err(|e| storage_err(&e))?;
        let written = log_store.bytes_written();
        let log_reader = log_store.clone();
        let sm = StateMachineStore::open(&opts.dir, key.clone())
            .await
            .map_err(|e| storage_err(&e))?;
        let snapshot_size = sm.snapshot_size();

        let (election_min, election_max) = opts.openraft_election();
        let config = Config {
            cluster_name: "swarmup".into(),
            heartbeat_interval: opts.heartbeat_ms,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            // One chunk carries a whole snapshot of a typical swarm; the timeout covers a
            // chunk on a slow link rather than a heartbeat's worth.
            install_snapshot_timeout: 5_000,
            snapshot_max_chunk_size: 1 << 20,
            snapshot_policy: if opts.snapshot_logs == 0 {
                SnapshotPolicy::Never
            } else {
                SnapshotPolicy::LogsSinceLast(opts.snapshot_logs)
            },
            max_in_snapshot_log_to_keep: tuning.logs_to_keep,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftError::InvalidOptions(e.to_string()))?;

        let network = network::Network::new(client, opts.scheme.clone(), opts.node_id);
        let raft = typ::Raft::new(
            opts.node_id,
            Arc::new(config),
            network,
            log_store,
            sm.clone(),
        )
        .await
        .map_err(|e| storage_err(&e))?;
        // Raft publishes its first metrics (membership, leader) just before it serves
        // requests, so one round trip guarantees `is_initialized` and `voters` reflect
        // the state loaded from disk.
        raft.is_initialized()
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))?;

        let metrics = raft.metrics();
        let (leader_tx, leader_rx) = watch::channel(metrics.borrow().current_leader);
        let mut m = raft.metrics();
        tokio::spawn(async move {
            loop {
                let leader = m.borrow_and_update().current_leader;
                leader_tx.send_if_modified(|cur| {
                    let changed = *cur != leader;
                    *cur = leader;
                    changed
                });
                // Ends when Raft shuts down and drops its metrics sender.
                if m.changed().await.is_err() {
                    break;
                }
            }
        });

        if opts.snapshot_logs > 0 {
            tokio::spawn(snapshot_and_purge_by_size(
                raft.clone(),
                log_reader,
                written,
                Limits {
                    snapshot_bytes: opts.snapshot_bytes,
                    last_snapshot_bytes: snapshot_size,
                    keep_entries: tuning.logs_to_keep,
                },
            ));
        }

        Ok(ClusterRaft {
            inner: Arc::new(Inner {
                id: opts.node_id,
                raft,
                sm,
                metrics,
                leader: leader_rx,
                key,
            }),
        })
    }

    pub(crate) fn raft(&self) -> &typ::Raft {
        &self.inner.raft
    }

    /// Rewrites this manager's key file wrapped by `unlock` (autolock on, or a rotated
    /// key) or in clear (autolock off). The data it encrypts does not change.
    pub async fn wrap_data_key(&self, unlock: Option<UnlockKey>) -> Result<(), RaftError> {
        let key = self.inner.key.clone();
        tokio::task::spawn_blocking(move || key.rewrap(unlock.as_ref()))
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))?
            .map_err(|e| RaftError::Storage {
                dir: self.inner.key.dir().to_path_buf(),
                message: e.to_string(),
            })
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Makes this node the single voter of a new cluster (`docker swarm init`). Succeeds
    /// again if that already happened; fails if the node belongs to another cluster.
    pub async fn initialize(&self, me: MemberNode) -> Result<(), RaftError> {
        let id = self.inner.id;
        match self.inner.raft.initialize(BTreeMap::from([(id, me)])).await {
            Ok(()) => {}
            Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {
                let voters = self.voters();
                if voters.len() == 1 && voters.contains_key(&id) {
                    return Ok(());
                }
                return Err(RaftError::AlreadyInitialized);
            }
            Err(e) => return Err(RaftError::Fatal(e.to_string())),
        }
        self.inner
            .raft
            .wait(Some(METRICS_WAIT))
            .metrics(
                |m| m.membership_config.voter_ids().any(|v| v == id),
                "initialized membership",
            )
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))?;
        Ok(())
    }

    /// True once the node has a membership with at least one voter (it initialized a
    /// cluster, was added to one, or restarted as part of one).
    pub fn is_initialized(&self) -> bool {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .voter_ids()
            .next()
            .is_some()
    }

    /// Replicates `cmd` and returns the outcome of applying it. Only the leader accepts
    /// proposals. Waits as long as it takes to commit: bound it with a timeout.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        check_proposal_size(&cmd)?;
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::ForwardToLeader {
                    leader: self.leader_of(f),
                })
            }
            Err(e) => Err(ProposeError::Fatal(e.to_string())),
        }
    }

    /// The latest state applied on this node (possibly behind the leader).
    pub fn read(&self) -> Arc<ClusterState> {
        self.inner.sm.state()
    }

    /// Notified after every applied batch that changed the state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.sm.subscribe()
    }

    /// Adds a manager as a voter: first as a learner, waiting until it has caught up
    /// with the log, then into the voter set. Done if it already is a voter at `node`.
    /// Leader only.
    pub async fn add_voter(&self, id: u64, node: MemberNode) -> Result<(), RaftError> {
        let (is_voter, known) = {
            let m = self.inner.metrics.borrow();
            let mem = m.membership_config.membership();
            (mem.voter_ids().any(|v| v == id), mem.get_node(&id).cloned())
        };
        if is_voter && known.as_ref() == Some(&node) {
            return Ok(());
        }
        if !self.is_leader() {
            return Err(RaftError::NotLeader {
                leader: self.leader(),
            });
        }
        if known.is_some() && known.as_ref() != Some(&node) {
            // A manager that rejoined from a new address.
            self.change(ChangeMembers::SetNodes(BTreeMap::from([(
                id,
                node.clone(),
            )])))
            .await?;
        }
        if is_voter {
            return Ok(());
        }
        let added = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            self.inner.raft.add_learner(id, node.clone(), true),
        )
        .await
        .map_err(|_| RaftError::CatchUpTimeout {
            id,
            node: node.clone(),
            secs: CATCH_UP_TIMEOUT.as_secs(),
        })?;
        added.map_err(|e| self.membership_error(e))?;
        self.change(ChangeMembers::AddVoterIds([id].into())).await
    }

    /// Removes a voter (and stops replicating to it). Done if it is not a member.
    /// Refuses to remove the last voter. Leader only.
    pub async fn remove_voter(&self, id: u64) -> Result<(), RaftError> {
        let (voters, is_node) = {
            let m = self.inner.metrics.borrow();
            let mem = m.membership_config.membership();
            (
                mem.voter_ids().collect::<Vec<_>>(),
                mem.get_node(&id).is_some(),
            )
        };
        if !is_node {
            return Ok(());
        }
        if voters == [id] {
            return Err(RaftError::LastVoter(id));
        }
        if !self.is_leader() {
            return Err(RaftError::NotLeader {
                leader: self.leader(),
            });
        }
        if voters.contains(&id) {
            self.change(ChangeMembers::RemoveVoters([id].into())).await
        } else {
            self.change(ChangeMembers::RemoveNodes([id].into())).await
        }
    }

    async fn change(&self, change: ChangeMembers<u64, MemberNode>) -> Result<(), RaftError> {
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| self.membership_error(e))
    }

    fn membership_error(&self, e: typ::RaftError<typ::ClientWriteError>) -> RaftError {
        match e {
            openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                RaftError::NotLeader {
                    leader: self.leader_of(f),
                }
            }
            openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                RaftError::Membership(c.to_string())
            }
            openraft::error::RaftError::Fatal(f) => RaftError::Fatal(f.to_string()),
        }
    }

    fn leader_of(&self, f: typ::ForwardToLeader) -> Option<(u64, MemberNode)> {
        let id = f.leader_id?;
        let node = f.leader_node.or_else(|| {
            self.inner
                .metrics
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        })?;
        Some((id, node))
    }

    /// The current leader as this node knows it.
    pub fn leader(&self) -> Option<(u64, MemberNode)> {
        let m = self.inner.metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// True while this node leads.
    pub fn is_leader(&self) -> bool {
        let m = self.inner.metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// True while this node is a voter of the current (effective) membership; false for
    /// a learner being caught up, and for a node not yet added.
    pub fn is_voter(&self) -> bool {
        let m = self.inner.metrics.borrow();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.inner.id);
        voter
    }

    /// The voters of the current (effective) membership.
    pub fn voters(&self) -> BTreeMap<u64, MemberNode> {
        let m = self.inner.metrics.borrow();
        let mem = m.membership_config.membership();
        mem.voter_ids()
            .filter_map(|id| mem.get_node(&id).map(|n| (id, n.clone())))
            .collect()
    }

    /// Changes whenever this node's idea of the leader changes (`None` during elections).
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.inner.leader.clone()
    }

    /// Succeeds if this node is the leader, a quorum confirms it, and the local state has
    /// applied everything committed before the call: a [`Self::read`] that follows is
    /// linearizable.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ProposeError::ForwardToLeader {
                    leader: self.leader_of(f),
                })
            }
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(ProposeError::NoQuorum(q.to_string()))
            }
            Err(openraft::error::RaftError::Fatal(f)) => Err(ProposeError::Fatal(f.to_string())),
        }
    }

    /// Stops Raft. The last applied state stays readable; the directory is released once
    /// in-flight replication has wound down.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_snapshot_is_never_taken_for_less_log_than_it_writes() {
        let limits = |bytes, last| Limits {
            snapshot_bytes: bytes,
            last_snapshot_bytes: Arc::new(AtomicU64::new(last)),
            keep_entries: 0,
        };
        assert_eq!(limits(16, 0).due_after(), 16);
        assert_eq!(limits(16, 40).due_after(), 40, "a 40-byte state");
        assert_eq!(limits(0, 40).due_after(), 0, "0 disables");
    }

    #[test]
    fn snapshots_are_due_by_size() {
        assert!(!snapshot_due(10, 0, 0), "0 disables");
        assert!(!snapshot_due(99, 0, 100));
        assert!(snapshot_due(100, 0, 100));
        assert!(!snapshot_due(150, 100, 100));
        assert!(snapshot_due(250, 100, 100));
        // A counter behind its baseline (never in practice) is not due.
        assert!(!snapshot_due(5, 10, 1));
    }

    #[test]
    fn oversized_proposals_are_refused_before_the_log() {
        let small = Command::RemoveTasks {
            ids: vec!["t1".into()],
        };
        assert_eq!(check_proposal_size(&small), Ok(()));
        let huge = Command::RemoveTasks {
            ids: vec!["x".repeat(1024); MAX_PROPOSAL_BYTES / 1024 + 1],
        };
        match check_proposal_size(&huge) {
            Err(ProposeError::TooLarge { bytes, max }) => {
                assert!(bytes > max);
                assert_eq!(max, MAX_PROPOSAL_BYTES);
            }
            other => panic!("{other:?}"),
        }
    }
}
