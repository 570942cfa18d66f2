//! Placement: which node a new task goes to.
//!
//! As SwarmKit does: filter the nodes (ready, active, constraints, free host-mode ports),
//! then rank by the fewest active tasks of the same service, then the fewest active tasks
//! overall. Pure: the orchestrator calls it with the state and the tasks it is about to
//! create.

use std::collections::{HashMap, HashSet};

use swarm_state::models::{Node, NodeSpecAvailabilityEnum, NodeState, Task, TaskSpec};
use swarm_state::ports::{is_ingress, key_of, spec_ports, PortKey};
use swarm_state::{
    desired_of, is_terminal, node_hostname, node_role, node_state, state_of, ClusterState,
};

/// Counts of active tasks, and the host-mode ports they hold, kept up to date while one
/// reconcile pass places many tasks.
#[derive(Debug, Default)]
pub struct Load {
    per_node: HashMap<String, usize>,
    per_service_node: HashMap<(String, String), usize>,
    /// The host-mode published ports (not 0) of each service.
    service_host_ports: HashMap<String, Vec<PortKey>>,
    /// The host-mode ports bound (or about to be) on each node.
    node_host_ports: HashMap<String, HashSet<PortKey>>,
}

/// A service's host-mode ports with a number: two of them cannot share a node.
fn host_port_keys(state: &ClusterState, service: &str) -> Vec<PortKey> {
    state
        .services
        .get(service)
        .and_then(|s| s.spec.as_ref())
        .map(|spec| {
            spec_ports(spec)
                .iter()
                .filter(|p| !is_ingress(p))
                .filter_map(key_of)
                .collect()
        })
        .unwrap_or_default()
}

impl Load {
    pub fn from_state(state: &ClusterState) -> Self {
        let mut load = Load {
            service_host_ports: state
                .services
                .keys()
                .map(|id| (id.clone(), host_port_keys(state, id)))
                .filter(|(_, ports)| !ports.is_empty())
                .collect(),
            ..Default::default()
        };
        for task in state.tasks.values() {
            if is_active(task) {
                if let (Some(node), Some(service)) = (&task.node_id, &task.service_id) {
                    load.add(service, node);
                    // A task that has ended no longer holds its host ports.
                    if is_terminal(state_of(task)) {
                        load.release_host_ports(service, node);
                    }
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
        if let Some(ports) = self.service_host_ports.get(service) {
            self.node_host_ports
                .entry(node.to_string())
                .or_default()
                .extend(ports.iter().copied());
        }
    }

    /// True when none of the service's host-mode ports is taken on the node.
    fn host_ports_free(&self, service: &str, node: &str) -> bool {
        let (Some(want), Some(used)) = (
            self.service_host_ports.get(service),
            self.node_host_ports.get(node),
        ) else {
            return true;
        };
        want.iter().all(|p| !used.contains(p))
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
        self.release_host_ports(service, node);
    }

    fn release_host_ports(&mut self, service: &str, node: &str) {
        if let (Some(ports), Some(used)) = (
            self.service_host_ports.get(service),
            self.node_host_ports.get_mut(node),
        ) {
            for p in ports {
                used.remove(p);
            }
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
    // Nodes ruled out by each filter, in SwarmKit's order, for the explanation.
    let (mut by_constraints, mut by_host_ports) = (0, 0);
    for (id, node) in &state.nodes {
        if !is_eligible(node) {
            continue;
        }
        if !constraints.iter().all(|c| constraint_holds(c, id, node)) {
            by_constraints += 1;
            continue;
        }
        if !load.host_ports_free(service_id, id) {
            by_host_ports += 1;
            continue;
        }
        let rank = load.of(service_id, id);
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, id));
        }
    }
    if let Some((_, id)) = best {
        return Ok(id.clone());
    }
    let nodes = |n: usize| {
        if n == 1 {
            "1 node".to_string()
        } else {
            format!("{n} nodes")
        }
    };
    let mut why = Vec::new();
    if by_constraints > 0 {
        why.push(format!(
            "scheduling constraints not satisfied on {}",
            nodes(by_constraints)
        ));
    }
    if by_host_ports > 0 {
        why.push(format!(
            "host-mode port already in use on {}",
            nodes(by_host_ports)
        ));
    }
    if why.is_empty() {
        Err("no suitable node".into())
    } else {
        Err(format!("no suitable node ({})", why.join("; ")))
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
    use swarm_state::models::{
        EndpointPortConfigProtocolEnum as Proto, EndpointPortConfigPublishModeEnum as Mode,
        NodeDescription, NodeSpec, NodeSpecRoleEnum, NodeStatus, TaskState,
    };
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

    fn host_service(id: &str, published: i64, proto: Proto) -> swarm_state::models::Service {
        swarm_state::models::Service {
            id: Some(id.into()),
            spec: Some(swarm_state::models::ServiceSpec {
                name: Some(id.into()),
                endpoint_spec: Some(swarm_state::models::EndpointSpec {
                    ports: Some(vec![swarm_state::models::EndpointPortConfig {
                        target_port: Some(80),
                        published_port: Some(published),
                        protocol: Some(proto),
                        publish_mode: Some(Mode::HOST),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running_on(id: &str, service: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: Some(id.into()),
            service_id: Some(service.into()),
            node_id: Some(node.into()),
            desired_state: Some(TaskState::RUNNING),
            status: Some(swarm_state::status(state, "", "t")),
            ..Default::default()
        }
    }

    #[test]
    fn host_mode_ports_never_share_a_node() {
        let mut s = state(vec![
            node("a", NodeSpecRoleEnum::MANAGER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
        ]);
        s.services
            .insert("web".into(), host_service("web", 8080, Proto::TCP));
        s.services
            .insert("api".into(), host_service("api", 8080, Proto::TCP));
        s.services
            .insert("dns".into(), host_service("dns", 8080, Proto::UDP));
        s.services
            .insert("any".into(), host_service("any", 0, Proto::TCP));
        s.tasks.insert(
            "t1".into(),
            running_on("t1", "api", "a", TaskState::RUNNING),
        );
        let mut load = Load::from_state(&s);
        // Within one pass too: the second task of web cannot follow the first.
        let first = place(&s, &load, "web", &TaskSpec::default()).unwrap();
        assert_eq!(first, "b", "api holds 8080/tcp on a");
        load.add("web", &first);
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Err("no suitable node (host-mode port already in use on 2 nodes)".into())
        );
        // Another protocol, or no published port, is no conflict.
        assert!(place(&s, &load, "dns", &TaskSpec::default()).is_ok());
        load.add("any", "a");
        assert!(place(&s, &load, "any", &TaskSpec::default()).is_ok());
        // Retiring the task gives the port back.
        load.remove("web", "b");
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Ok("b".into())
        );

        // A task that has ended holds nothing.
        s.tasks
            .insert("t1".into(), running_on("t1", "api", "a", TaskState::FAILED));
        let mut load = Load::from_state(&s);
        load.add("web", "b");
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Ok("a".into())
        );
    }

    #[test]
    fn the_reason_names_each_filter_as_docker_does() {
        let mut s = state(vec![
            node("a", NodeSpecRoleEnum::MANAGER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
        ]);
        s.services
            .insert("web".into(), host_service("web", 8080, Proto::TCP));
        s.tasks.insert(
            "t1".into(),
            running_on("t1", "web", "b", TaskState::RUNNING),
        );
        let spec = TaskSpec {
            placement: Some(swarm_state::models::TaskSpecPlacement {
                constraints: Some(vec!["node.role==worker".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            place(&s, &Load::from_state(&s), "web", &spec),
            Err("no suitable node (scheduling constraints not satisfied on 1 node; host-mode port already in use on 1 node)".into())
        );
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
