//! What only the Raft leader does: orchestrate, allocate overlay addresses, watch node
//! liveness (in a loop of its own), and keep the Raft membership equal to the set of nodes whose role is manager.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarm_raft::MemberNode;
use swarm_state::models::{NodeSpecRoleEnum, NodeState, NodeStatus};
use swarm_state::network::Allocation;
use swarm_state::{ids::raft_id, node_role, node_state, ClusterState, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{allocator, orchestrator, Manager};

/// The longest a pass waits when nothing happens, so timers (liveness, restart delays)
/// are looked at regularly.
const TICK: Duration = Duration::from_millis(250);
/// The longest the orchestrator goes without a look at every task when nothing it acts
/// on changed and no timer of its own is due: a safety net, not a schedule. Each look
/// costs about 0.15 s at 100,000 tasks.
const IDLE_PASS: Duration = Duration::from_secs(5);
/// The least and the most a pass waits for more changes after one arrives (see `run`).
const MIN_SETTLE: Duration = Duration::from_millis(5);
const MAX_SETTLE: Duration = Duration::from_millis(500);
/// The least silence from a leader before the others elect a new one (swarm-raft's
/// default `election_min_ms`): how long before an election the old leader was lost.
const ELECTION_SILENCE: Duration = Duration::from_millis(2_000);

/// Runs until `shutdown` fires; acts only while this manager is the leader.
pub async fn run(manager: Arc<Manager>, mut shutdown: watch::Receiver<bool>) {
    let mut leader_rx = manager.raft.leader_watch();
    let promotions: Arc<Mutex<HashSet<u64>>> = Arc::default();
    // The leader this manager followed last: if this manager takes over, that one's
    // silence is what the election was about.
    let mut followed: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !manager.raft.is_leader() {
            if let Some((_, leader)) = manager.raft.leader() {
                followed = Some(leader.node_id);
            }
            tokio::select! {
                _ = leader_rx.changed() => continue,
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => continue,
            }
        }
        let lost = followed.take().filter(|id| *id != manager.node_id);
        manager
            .dispatcher
            .became_leader(Instant::now(), lost.as_deref(), ELECTION_SILENCE);
        tracing::info!(node_id = %manager.node_id, "became the leader");
        // Its own loop: marking a node Down must not wait behind the orchestrator's
        // proposals, which at 100,000 tasks take many seconds.
        let _liveness = AbortOnDrop(tokio::spawn(watch_liveness(manager.clone())));
        // Task status reports are written together, in entries of their own.
        let _reports = AbortOnDrop(tokio::spawn(super::reports::run(manager.clone())));
        let mut state_rx = manager.raft.subscribe();
        let mut seen = Seen::default();
        while manager.raft.is_leader() && !*shutdown.borrow() {
            let started = Instant::now();
            let wake = pass(&manager, &promotions, &mut seen).await;
            // A pass looks at every task: at 100,000 tasks it takes a good part of a
            // second, and commits arrive faster than that while a service converges. Waiting
            // as long as the last pass took before the next keeps the leader's pass under
            // half of its time, leaving the rest to heartbeats, the API and Raft.
            let settle = started.elapsed().clamp(MIN_SETTLE, MAX_SETTLE);
            tokio::select! {
                _ = state_rx.changed() => {
                    // Let a burst of changes land before the next pass.
                    tokio::time::sleep(settle).await;
                }
                _ = tokio::time::sleep(wake) => {}
                _ = leader_rx.changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Aborts a task when dropped: the leader's helpers stop when leadership or the manager
/// ends, whichever way the loop is left.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Marks Down the Ready nodes whose heartbeats stopped, every [`TICK`], while this
/// manager leads.
async fn watch_liveness(manager: Arc<Manager>) {
    while manager.raft.is_leader() {
        for (id, command) in nodes_down(&manager) {
            tracing::warn!(node_id = %id, "node missed its heartbeats: marking it down");
            if let Err(e) = manager.propose(command).await {
                tracing::warn!(error = %e, "could not mark node down");
            }
        }
        tokio::time::sleep(TICK).await;
    }
}

/// The commands that mark Down the nodes whose heartbeats stopped.
fn nodes_down(manager: &Manager) -> Vec<(String, Command)> {
    let state = manager.read();
    manager
        .dispatcher
        .expired(&state, Instant::now())
        .into_iter()
        .map(|id| {
            let addr = state.nodes[&id]
                .status
                .as_ref()
                .and_then(|s| s.addr.clone());
            let command = Command::SetNodeStatus {
                id: id.clone(),
                status: NodeStatus {
                    state: Some(NodeState::DOWN),
                    message: Some("heartbeat failure".into()),
                    addr,
                },
                description: None,
                at: manager.now(),
            };
            (id, command)
        })
        .collect()
}

/// What the orchestrator's last look at every task saw.
#[derive(Debug, Default)]
struct Seen {
    /// The state's `orchestration_index` then (`None`: no look yet as this leader).
    mark: Option<u64>,
    /// When the orchestrator looks again even if that mark stays (its own timers).
    due: Option<Instant>,
}

impl Seen {
    /// A look is needed when something it acts on changed, or its time came.
    fn needs_pass(&self, mark: u64, now: Instant) -> bool {
        self.mark != Some(mark) || self.due.is_none_or(|due| now >= due)
    }
}

/// One reconcile pass. Returns how long to sleep at most.
///
/// The state is read into a local and dropped before anything is proposed: a state still
/// held when a commit applies makes Raft copy it (cheap for the persistent task map, not
/// for the small maps).
async fn pass(
    manager: &Arc<Manager>,
    promotions: &Arc<Mutex<HashSet<u64>>>,
    seen: &mut Seen,
) -> Duration {
    let mark = manager.read().orchestration_index;
    if seen.needs_pass(mark, Instant::now()) {
        let wake = orchestrate(manager).await;
        *seen = Seen {
            mark: Some(mark),
            due: Some(Instant::now() + wake),
        };
    }
    reconcile_membership(manager, &manager.read(), promotions).await;
    let until_due = seen
        .due
        .map(|due| due.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    TICK.min(until_due)
}

/// The orchestrator's and the allocator's passes, and their commands proposed. Returns
/// when the orchestrator wants to look again with nothing changed.
async fn orchestrate(manager: &Arc<Manager>) -> Duration {
    let mut wake = IDLE_PASS;

    // Both pure passes look at every task: at 100,000 tasks they take a good part of a
    // second, which on a runtime thread would hold up heartbeats and long polls.
    let (state, now) = (manager.read(), manager.clock.now());
    let plan = match tokio::task::spawn_blocking(move || {
        orchestrator::reconcile(&state, now, &mut Manager::new_id)
    })
    .await
    {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(error = %e, "the orchestrator's pass failed");
            return TICK;
        }
    };
    if let Some(after) = plan.wake_after {
        wake = wake.min(after + Duration::from_millis(1));
    }
    for command in plan.commands {
        if let Err(e) = manager.propose(command).await {
            tracing::warn!(error = %e, "orchestrator command refused");
            // One that never reached the log changed nothing: look again soon.
            wake = wake.min(TICK);
        }
    }

    // Addresses for what the orchestrator just created, before workers may start it.
    let state = manager.read();
    let allocation = tokio::task::spawn_blocking(move || allocator::allocate(&state))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "the allocator's pass failed");
            None
        });
    if let Some(allocation) = allocation {
        for allocation in split_allocation(allocation) {
            let command = Command::Allocate {
                allocation: Box::new(allocation),
            };
            if let Err(e) = manager.propose(command).await {
                tracing::warn!(error = %e, "address allocation refused");
                wake = wake.min(TICK);
            }
        }
    }
    wake
}

/// Splits an allocation into entries of at most [`orchestrator::MAX_BATCH_TASKS`] task
/// addresses and as many failures, as task writes are: the addresses of a service scaled
/// to 100,000 tasks would otherwise make one entry of megabytes. The first entry carries
/// the VIPs, node addresses and ports; each task keeps all its networks in one entry.
/// Addresses were chosen together, so each entry's are still free when it applies; an
/// entry refused anyway leaves its tasks to the next pass.
pub fn split_allocation(mut all: Allocation) -> Vec<Allocation> {
    let max = orchestrator::MAX_BATCH_TASKS;
    let mut tasks = std::mem::take(&mut all.tasks).into_iter();
    let mut failures = std::mem::take(&mut all.failures).into_iter();
    let mut out = Vec::new();
    let mut first = Some(all);
    loop {
        let mut next = first.take().unwrap_or_default();
        next.tasks = tasks.by_ref().take(max).collect();
        next.failures = failures.by_ref().take(max).collect();
        if next.is_empty() {
            break;
        }
        out.push(next);
    }
    out
}

/// Makes Raft voters of Ready nodes whose role is manager, and removes voters whose role
/// became worker. Adding a voter waits for it to catch up, so it runs in the background.
async fn reconcile_membership(
    manager: &Arc<Manager>,
    state: &ClusterState,
    promotions: &Arc<Mutex<HashSet<u64>>>,
) {
    let voters = manager.raft.voters();
    for (id, node) in &state.nodes {
        let rid = raft_id(id);
        let wants_manager = node_role(node) == NodeSpecRoleEnum::MANAGER;
        let is_voter = voters.contains_key(&rid);
        let addr_recorded = node.manager_status.as_ref().and_then(|m| m.addr.clone());
        if wants_manager && !is_voter && node_state(node) == NodeState::READY {
            let Some(addr) = control_addr(manager, node) else {
                continue;
            };
            if !promotions.lock().expect("promotions lock").insert(rid) {
                continue;
            }
            let manager = manager.clone();
            let promotions = promotions.clone();
            let node_id = id.clone();
            tokio::spawn(async move {
                let member = MemberNode {
                    node_id: node_id.clone(),
                    addr: addr.clone(),
                };
                let added = tokio::time::timeout(
                    Duration::from_secs(30),
                    manager.raft.add_voter(rid, member),
                )
                .await;
                match added {
                    Ok(Ok(())) => {
                        tracing::info!(node_id = %node_id, addr = %addr, "node is now a manager");
                        let _ = manager
                            .propose(Command::SetManagerAddr {
                                id: node_id,
                                addr: Some(addr),
                                at: manager.now(),
                            })
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(node_id = %node_id, error = %e, "could not add manager")
                    }
                    Err(_) => tracing::warn!(node_id = %node_id, "adding manager timed out"),
                }
                promotions.lock().expect("promotions lock").remove(&rid);
            });
        } else if wants_manager && is_voter && addr_recorded.is_none() {
            let addr = voters[&rid].addr.clone();
            let _ = manager
                .propose(Command::SetManagerAddr {
                    id: id.clone(),
                    addr: Some(addr),
                    at: manager.now(),
                })
                .await;
        } else if !wants_manager && is_voter {
            if voters.len() <= 1 {
                continue;
            }
            match manager.raft.remove_voter(rid).await {
                Ok(()) => {
                    tracing::info!(node_id = %id, "node is no longer a manager");
                    let _ = manager
                        .propose(Command::SetManagerAddr {
                            id: id.clone(),
                            addr: None,
                            at: manager.now(),
                        })
                        .await;
                }
                Err(e) => tracing::warn!(node_id = %id, error = %e, "could not remove manager"),
            }
        } else if !wants_manager && !is_voter && addr_recorded.is_some() {
            let _ = manager
                .propose(Command::SetManagerAddr {
                    id: id.clone(),
                    addr: None,
                    at: manager.now(),
                })
                .await;
        }
    }
}

/// The control address of a node: the address its heartbeats come from, with the port
/// it reported.
fn control_addr(manager: &Manager, node: &swarm_state::models::Node) -> Option<String> {
    let id = node.id.as_deref()?;
    manager.dispatcher.control_addr(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use swarm_state::network::Attachment;

    #[test]
    fn the_orchestrator_looks_again_when_its_mark_moves_or_its_time_comes() {
        let now = Instant::now();
        assert!(
            Seen::default().needs_pass(0, now),
            "a new leader looks at once"
        );
        let seen = Seen {
            mark: Some(7),
            due: Some(now + Duration::from_secs(5)),
        };
        assert!(!seen.needs_pass(7, now), "nothing it acts on changed");
        assert!(seen.needs_pass(8, now), "something did");
        assert!(
            seen.needs_pass(7, now + Duration::from_secs(5)),
            "its timer"
        );
    }

    fn attachment(i: u32) -> Vec<Attachment> {
        vec![Attachment {
            network_id: "net".into(),
            addr: Ipv4Addr::from(0x0a00_0000 + i),
        }]
    }

    #[test]
    fn allocations_are_split_like_task_writes() {
        assert!(split_allocation(Allocation::default()).is_empty());
        let all = Allocation {
            vips: vec![("s".into(), "net".into(), Ipv4Addr::new(10, 0, 0, 2))],
            nodes: vec![("n1".into(), "net".into(), Ipv4Addr::new(10, 0, 0, 3))],
            tasks: (0..2_500)
                .map(|i| (format!("t{i}"), attachment(i)))
                .collect(),
            failures: vec![("tx".into(), "no address left".into())],
            ..Default::default()
        };
        let parts = split_allocation(all.clone());
        let sizes: Vec<usize> = parts.iter().map(|p| p.tasks.len()).collect();
        assert_eq!(sizes, vec![1_000, 1_000, 500]);
        assert_eq!(parts[0].vips, all.vips);
        assert_eq!(parts[0].nodes, all.nodes);
        assert_eq!(parts[0].failures, all.failures);
        assert!(parts[1].vips.is_empty() && parts[1].nodes.is_empty());
        let tasks: Vec<_> = parts.into_iter().flat_map(|p| p.tasks).collect();
        assert_eq!(tasks, all.tasks);
        // A small allocation stays one entry.
        let one = Allocation {
            vips: all.vips.clone(),
            ..Default::default()
        };
        assert_eq!(split_allocation(one.clone()), vec![one]);
    }
}
