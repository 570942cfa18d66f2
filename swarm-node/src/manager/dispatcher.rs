//! Node liveness as the leader sees it.
//!
//! Heartbeats are kept in memory on the leader only: they are facts about the leader's
//! own clock, which must never enter the replicated state. What the leader concludes from
//! them (a node is Ready, a node is Down) is written through Raft.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use swarm_state::models::NodeState;
use swarm_state::{node_state, ClusterState};
use tokio::time::Instant;

/// A node that misses this many periods is Down, as in Docker.
pub const GRACE_MULTIPLIER: u32 = 3;

/// The least time between two description or address changes proposed for one node from
/// its heartbeats. Each is a log entry replicated to every manager, and a node decides
/// what its description says: without a floor, one node could write an entry per
/// heartbeat it sends. A Ready transition is never held back.
pub const MIN_CHANGE_INTERVAL: Duration = Duration::from_secs(5);

/// Whether a heartbeat's news is proposed now. `ready`: the node is Ready in the state;
/// `changed`: its address or description differ from the state's; `last`: when a change
/// was last proposed for it. A change held back is not lost: the state still differs at
/// the next heartbeat after the interval, which proposes it.
pub fn propose_now(ready: bool, changed: bool, last: Option<Instant>, now: Instant) -> bool {
    if !ready {
        return true;
    }
    changed && last.is_none_or(|at| now.duration_since(at) >= MIN_CHANGE_INTERVAL)
}

#[derive(Debug)]
pub struct Dispatcher {
    period: Duration,
    last_seen: Mutex<HashMap<String, Instant>>,
    /// The control address (`IP:PORT`) each node last reported.
    addrs: Mutex<HashMap<String, String>>,
    /// When a change from each node's heartbeats was last proposed (see [`propose_now`]).
    proposed: Mutex<HashMap<String, Instant>>,
    /// When this manager last became leader: nodes it has not heard from yet get twice
    /// the grace, so a leader change does not mark healthy nodes Down (swarmkit#921).
    leader_since: Mutex<Instant>,
}

impl Dispatcher {
    pub fn new(period_ms: u64) -> Self {
        Dispatcher {
            period: Duration::from_millis(period_ms.max(100)),
            last_seen: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
            proposed: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(Instant::now()),
        }
    }

    /// The heartbeat period: the cluster's setting once this manager has it (a manager
    /// that joined started before its state held it), else the one it started with.
    pub fn period_in(&self, state: &ClusterState) -> Duration {
        state
            .cluster
            .as_ref()
            .map(|c| Duration::from_millis(c.heartbeat_period_ms.max(100)))
            .unwrap_or(self.period)
    }

    /// This manager has just become the leader. `lost_leader`: the node that led before,
    /// whose silence caused the election: it is counted as last seen when that silence
    /// began (`silence` before now), so it goes Down three periods after it was lost
    /// rather than after the double grace other nodes get (Docker's failover is about
    /// 20 s; this brings it near 15 s at the default period). If it was only slow, its
    /// heartbeats reach this leader within a period and nothing happens.
    pub fn became_leader(&self, now: Instant, lost_leader: Option<&str>, silence: Duration) {
        *self.leader_since.lock().expect("dispatcher lock") = now;
        let mut seen = self.last_seen.lock().expect("dispatcher lock");
        seen.clear();
        if let Some(lost) = lost_leader {
            seen.insert(lost.to_string(), now.checked_sub(silence).unwrap_or(now));
        }
        // Also forgets removed nodes, so the map does not grow with every node ever seen.
        self.proposed.lock().expect("dispatcher lock").clear();
    }

    pub fn seen(&self, node_id: &str, addr: &str, now: Instant) {
        self.last_seen
            .lock()
            .expect("dispatcher lock")
            .insert(node_id.to_string(), now);
        self.addrs
            .lock()
            .expect("dispatcher lock")
            .insert(node_id.to_string(), addr.to_string());
    }

    /// Decides with [`propose_now`] whether a heartbeat's news is proposed now, and if so
    /// remembers when.
    pub fn may_propose_change(
        &self,
        node_id: &str,
        ready: bool,
        changed: bool,
        now: Instant,
    ) -> bool {
        let mut proposed = self.proposed.lock().expect("dispatcher lock");
        let yes = propose_now(ready, changed, proposed.get(node_id).copied(), now);
        if yes {
            proposed.insert(node_id.to_string(), now);
        }
        yes
    }

    /// How many nodes this manager has heard from since it became the leader.
    pub fn seen_count(&self) -> usize {
        self.last_seen.lock().expect("dispatcher lock").len()
    }

    pub fn control_addr(&self, node_id: &str) -> Option<String> {
        self.addrs
            .lock()
            .expect("dispatcher lock")
            .get(node_id)
            .cloned()
    }

    /// Ready nodes whose heartbeats stopped.
    pub fn expired(&self, state: &ClusterState, now: Instant) -> Vec<String> {
        let grace = self.period_in(state) * GRACE_MULTIPLIER;
        let leader_since = *self.leader_since.lock().expect("dispatcher lock");
        let seen = self.last_seen.lock().expect("dispatcher lock");
        state
            .nodes
            .iter()
            .filter(|(_, n)| node_state(n) == NodeState::READY)
            .filter(|(id, _)| match seen.get(*id) {
                Some(at) => now.duration_since(*at) > grace,
                None => now.duration_since(leader_since) > grace * 2,
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{Node, NodeStatus};
    use swarm_state::Command;

    fn ready(id: &str) -> Node {
        Node {
            id: Some(id.into()),
            status: Some(NodeStatus {
                state: Some(NodeState::READY),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn heartbeat_changes_are_rate_limited_but_ready_is_not() {
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        // A node that is not Ready becomes Ready at once, however recent the last change.
        assert!(propose_now(false, false, Some(t0), t0));
        assert!(propose_now(false, true, Some(t0), later(1)));
        // Nothing new: nothing proposed.
        assert!(!propose_now(true, false, None, t0));
        // The first change goes at once; the next waits out the interval.
        assert!(propose_now(true, true, None, t0));
        assert!(!propose_now(true, true, Some(t0), later(4_999)));
        assert!(propose_now(true, true, Some(t0), later(5_000)));
    }

    #[test]
    fn nodes_go_down_after_three_missed_periods() {
        let mut state = ClusterState::default();
        state.apply(
            &Command::AddNode {
                node: Box::new(ready("a")),
            },
            1,
        );
        state.apply(
            &Command::AddNode {
                node: Box::new(ready("b")),
            },
            2,
        );
        let d = Dispatcher::new(1_000);
        let start = Instant::now();
        d.became_leader(start, None, Duration::ZERO);
        d.seen("a", "127.0.0.1:1", start);
        assert!(d
            .expired(&state, start + Duration::from_millis(2_900))
            .is_empty());
        assert_eq!(
            d.expired(&state, start + Duration::from_millis(3_100)),
            vec!["a"]
        );
        // A node never heard from since the leader change gets double grace.
        let later = d.expired(&state, start + Duration::from_millis(6_100));
        assert_eq!(later, vec!["a", "b"]);
    }

    #[test]
    fn the_lost_leader_goes_down_three_periods_after_it_was_lost() {
        let mut state = ClusterState::default();
        for (i, id) in ["old", "w"].iter().enumerate() {
            state.apply(
                &Command::AddNode {
                    node: Box::new(ready(id)),
                },
                i as u64 + 1,
            );
        }
        let d = Dispatcher::new(1_000);
        let start = Instant::now() + Duration::from_secs(10);
        d.became_leader(start, Some("old"), Duration::from_millis(800));
        assert!(d
            .expired(&state, start + Duration::from_millis(2_100))
            .is_empty());
        assert_eq!(
            d.expired(&state, start + Duration::from_millis(2_300)),
            vec!["old"],
            "3 periods after the loss, not 6 after the election"
        );
        // If it was merely slow, its heartbeat keeps it up.
        d.seen("old", "127.0.0.1:1", start + Duration::from_millis(1_000));
        assert!(d
            .expired(&state, start + Duration::from_millis(2_300))
            .is_empty());
    }
}
