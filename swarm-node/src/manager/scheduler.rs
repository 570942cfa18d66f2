//! Placement: which node a new task goes to.
//!
//! As SwarmKit does: filter the nodes (ready, active, constraints), then rank by the fewest
//! active tasks of the same service, then the fewest active tasks overall. Pure: the
//! orchestrator calls it with the state and the tasks it is about to create.

use std::collections::HashMap;

use swarm_state::models::{Node, NodeSpecAvailabilityEnum, NodeState, Task, TaskSpec};
use swarm_state::{desired_of, node_hostname, node_role, node_state, ClusterState};

/// Counts of active tasks, kept up to date while one reconcile pass places many tasks.
#[derive(Debug, Default)]
pub struct Load {
    per_node: HashMap<String, usize>,
    per_service_node: HashMap<(String, String), usize>,
}

impl Load {
    pub fn from_state(state: &ClusterState) -> Self {
        let mut load = Load::default();
        for task in state.tasks.values() {
            if is_active(task) {
                if let (Some(node), Some(service)) = (&task.node_id, &task.service_id) {
                    load.add(service, node);
                }
            }
        }
        load
    }

    pub fn add(&mut self, service: &str, node: &str) {
        *self.per_node.entry(node.to_string()).or_default() += 1;
        *self
            .per_service_node
            .entry((service.to_string(), node.to_string()))
            .or_default() += 1;
    }

    /// Forgets a task this pass has just retired, so its replacement may go back to the
    /// same node.
    pub fn remove(&mut self, service: &str, node: &str) {
        if let Some(n) = self.per_node.get_mut(node) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self
            .per_service_node
            .get_mut(&(service.to_string(), node.to_string()))
        {
            *n = n.saturating_sub(1);
        }
    }

    fn of(&self, service: &str, node: &str) -> (usize, usize) {
        (
            self.per_service_node
                .get(&(service.to_string(), node.to_string()))
                .copied()
                .unwrap_or(0),
            self.per_node.get(node).copied().unwrap_or(0),
        )
    }
}

/// A task is active while the manager wants it running.
pub fn is_active(task: &Task) -> bool {
    desired_of(task) <= swarm_state::models::TaskState::RUNNING
}

/// True when a node may receive new tasks.
pub fn is_eligible(node: &Node) -> bool {
    let availability = node
        .spec
        .as_ref()
        .and_then(|s| s.availability)
        .unwrap_or(NodeSpecAvailabilityEnum::ACTIVE);
    node_state(node) == NodeState::READY && availability == NodeSpecAvailabilityEnum::ACTIVE
}

/// Picks the node for a new task of `service_id`, or `None` with the reason when no node
/// fits (the task then stays pending with that message, as in Docker).
pub fn place(
    state: &ClusterState,
    load: &Load,
    service_id: &str,
    spec: &TaskSpec,
) -> Result<String, String> {
    let constraints = spec
        .placement
        .as_ref()
        .and_then(|p| p.constraints.clone())
        .unwrap_or_default();
    let mut best: Option<((usize, usize), &String)> = None;
    let mut any_ready = false;
    for (id, node) in &state.nodes {
        if !is_eligible(node) {
            continue;
        }
        any_ready = true;
        if !constraints.iter().all(|c| constraint_holds(c, id, node)) {
            continue;
        }
        let rank = load.of(service_id, id);
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, id));
        }
    }
    match best {
        Some((_, id)) => Ok(id.clone()),
        None if any_ready => {
            Err("no suitable node (scheduling constraints not satisfied on any node)".into())
        }
        None => Err("no suitable node".into()),
    }
}

/// Evaluates one `--constraint` expression (`node.role==manager`, `node.labels.zone!=a`).
/// An expression that cannot be parsed never holds, so a typo keeps tasks pending with a
/// visible message instead of placing them anywhere.
pub fn constraint_holds(expr: &str, node_id: &str, node: &Node) -> bool {
    let (key, want, equal) = if let Some((k, v)) = expr.split_once("!=") {
        (k.trim(), v.trim(), false)
    } else if let Some((k, v)) = expr.split_once("==") {
        (k.trim(), v.trim(), true)
    } else {
        return false;
    };
    let labels = node.spec.as_ref().and_then(|s| s.labels.as_ref());
    let have: Option<String> = match key {
        "node.id" => Some(node_id.to_string()),
        "node.hostname" => Some(node_hostname(node).to_string()),
        "node.role" => Some(node_role(node).to_string()),
        "node.platform.os" => node
            .description
            .as_ref()
            .and_then(|d| d.platform.as_ref())
            .and_then(|p| p.os.clone()),
        "node.platform.arch" => node
            .description
            .as_ref()
            .and_then(|d| d.platform.as_ref())
            .and_then(|p| p.architecture.clone()),
        k => match k.strip_prefix("node.labels.") {
            Some(label) => labels.and_then(|l| l.get(label).cloned()),
            None => return false,
        },
    };
    let matches = have.is_some_and(|h| h.eq_ignore_ascii_case(want));
    matches == equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{NodeDescription, NodeSpec, NodeSpecRoleEnum, NodeStatus};
    use swarm_state::Command;

    fn node(id: &str, role: NodeSpecRoleEnum, ready: bool) -> Node {
        Node {
            id: Some(id.into()),
            spec: Some(NodeSpec {
                role: Some(role),
                availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some(format!("host-{id}")),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(if ready {
                    NodeState::READY
                } else {
                    NodeState::DOWN
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn state(nodes: Vec<Node>) -> ClusterState {
        let mut s = ClusterState::default();
        for (i, n) in nodes.into_iter().enumerate() {
            s.apply(&Command::AddNode { node: Box::new(n) }, i as u64 + 1);
        }
        s
    }

    #[test]
    fn spreads_a_service_over_ready_nodes() {
        let s = state(vec![
            node("a", NodeSpecRoleEnum::MANAGER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
            node("c", NodeSpecRoleEnum::WORKER, false),
        ]);
        let mut load = Load::from_state(&s);
        let mut placed = Vec::new();
        for _ in 0..4 {
            let n = place(&s, &load, "svc", &TaskSpec::default()).unwrap();
            load.add("svc", &n);
            placed.push(n);
        }
        placed.sort();
        assert_eq!(placed, vec!["a", "a", "b", "b"]);
    }

    #[test]
    fn constraints_filter_nodes() {
        let s = state(vec![
            node("a", NodeSpecRoleEnum::MANAGER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
        ]);
        let spec = TaskSpec {
            placement: Some(swarm_state::models::TaskSpecPlacement {
                constraints: Some(vec!["node.role==worker".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let load = Load::from_state(&s);
        assert_eq!(place(&s, &load, "svc", &spec), Ok("b".into()));
        assert!(constraint_holds(
            "node.hostname!=host-a",
            "b",
            &s.nodes["b"]
        ));
        assert!(!constraint_holds("node.labels.zone==x", "b", &s.nodes["b"]));
        assert!(!constraint_holds("garbage", "b", &s.nodes["b"]));
    }

    #[test]
    fn no_ready_node_leaves_the_task_pending() {
        let s = state(vec![node("c", NodeSpecRoleEnum::WORKER, false)]);
        let load = Load::from_state(&s);
        assert_eq!(
            place(&s, &load, "svc", &TaskSpec::default()),
            Err("no suitable node".into())
        );
    }
}
