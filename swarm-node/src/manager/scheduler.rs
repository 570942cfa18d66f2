//! Placement: which node a new task goes to.
//!
//! As SwarmKit does: filter the nodes (ready, active, constraints, resources reserved,
//! the service's replicas per node, free host-mode ports), then spread over the values of
//! the placement preferences (`--placement-pref spread=node.labels.zone`: the branch with
//! the fewest tasks of the service first, level by level, as SwarmKit's tree does), then
//! rank by the fewest active tasks of the same service, then the fewest active tasks
//! overall. A node where the service's tasks failed five times in the last five minutes
//! goes after all others, as in SwarmKit. Pure: the orchestrator calls it with the state,
//! the time (through [`Load::with_failures_at`]) and the tasks it is about to create.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

use swarm_state::models::{Node, NodeSpecAvailabilityEnum, NodeState, Task, TaskSpec, TaskState};
use swarm_state::ports::{is_ingress, key_of, spec_ports, PortKey};
use swarm_state::{
    desired_of, is_terminal, node_hostname, node_role, node_state, state_of, ClusterState,
};

/// Counts of active tasks, and the host-mode ports they hold, kept up to date while one
/// reconcile pass places many tasks.
#[derive(Debug, Default)]
pub struct Load {
    per_node: HashMap<String, usize>,
    /// Active tasks per service, then per node: looked up by `&str` without building keys.
    per_service_node: HashMap<String, HashMap<String, usize>>,
    /// The host-mode published ports (not 0) of each service.
    service_host_ports: HashMap<String, Vec<PortKey>>,
    /// The host-mode ports bound (or about to be) on each node.
    node_host_ports: HashMap<String, HashSet<PortKey>>,
    /// What each service's new tasks reserve (`--reserve-cpu`, `--reserve-memory`).
    service_reservation: HashMap<String, Reservation>,
    /// What the active tasks on each node reserve.
    node_reserved: HashMap<String, Reservation>,
    /// How many of each service's tasks failed on each node lately (service, node).
    recent_failures: HashMap<(String, String), usize>,
    /// Per service, its candidate nodes in placement order (see [`Queue`]).
    queues: RefCell<HashMap<String, Queue>>,
}

/// The nodes that pass a service's fixed filters (ready, active, constraints), as a heap
/// ordered like [`place`]'s ranking: not faulty, fewest tasks of the service, fewest
/// tasks, node id. Every member node keeps at least one entry whose key is at most its
/// current one: placing a task raises counts (its entries become too low), and retiring
/// one pushes a fresh entry with the lowered counts (the old one, now too high, stays).
/// The smallest entry is re-ranked when popped and is the best node once its key is
/// current. The filters that depend on load (resources, replicas per node, host ports)
/// only turn a node away while counts rise, so a node they refuse is dropped until a
/// retirement on it pushes it again. Picking a node is then a few heap operations
/// instead of a look at every node, even while a pass retires and replaces tasks in
/// turn (a node going down).
#[derive(Debug, Default)]
struct Queue {
    constraints: Vec<String>,
    heap: BinaryHeap<Reverse<(bool, usize, usize, String)>>,
    /// The nodes that passed the fixed filters.
    members: HashSet<String>,
}

/// A node where this many of a service's tasks failed within [`FAILURE_WINDOW`] is
/// ranked after every other node for that service, as in SwarmKit: a node whose disk is
/// full or whose image is broken stops attracting the same task over and over.
pub const MAX_RECENT_FAILURES: usize = 5;
/// How long a task failure counts against its node.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// CPUs (nano) and memory (bytes) a task reserves, or a node offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

impl Reservation {
    fn of_spec(spec: &TaskSpec) -> Reservation {
        let r = spec
            .resources
            .as_ref()
            .and_then(|r| r.reservations.as_ref());
        Reservation {
            nano_cpus: r.and_then(|r| r.nano_cpus).unwrap_or(0).max(0),
            memory_bytes: r.and_then(|r| r.memory_bytes).unwrap_or(0).max(0),
        }
    }

    /// What the node's engine said it has (heartbeats carry it); nothing if unknown.
    fn of_node(node: &Node) -> Reservation {
        let r = node.description.as_ref().and_then(|d| d.resources.as_ref());
        Reservation {
            nano_cpus: r.and_then(|r| r.nano_cpus).unwrap_or(0),
            memory_bytes: r.and_then(|r| r.memory_bytes).unwrap_or(0),
        }
    }

    fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }

    fn plus(self, other: Reservation) -> Reservation {
        Reservation {
            nano_cpus: self.nano_cpus.saturating_add(other.nano_cpus),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    fn minus(self, other: Reservation) -> Reservation {
        Reservation {
            nano_cpus: (self.nano_cpus - other.nano_cpus).max(0),
            memory_bytes: (self.memory_bytes - other.memory_bytes).max(0),
        }
    }

    /// True when `want` more fits next to what is reserved within `capacity`.
    fn fits(capacity: Reservation, reserved: Reservation, want: Reservation) -> bool {
        let used = reserved.plus(want);
        (want.nano_cpus == 0 || used.nano_cpus <= capacity.nano_cpus)
            && (want.memory_bytes == 0 || used.memory_bytes <= capacity.memory_bytes)
    }
}

/// `map[key]`, inserted as the default if missing. `entry(key.to_string())` would copy
/// the key each time: a pass counts every task this way, three keys each.
fn entry_of<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
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
            service_reservation: state
                .services
                .iter()
                .filter_map(|(id, s)| {
                    let template = s.spec.as_ref()?.task_template.as_ref()?;
                    Some((id.clone(), Reservation::of_spec(template)))
                })
                .filter(|(_, r)| !r.is_zero())
                .collect(),
            ..Default::default()
        };
        for task in state.tasks.values() {
            if is_active(task) {
                if let (Some(node), Some(service)) = (&task.node_id, &task.service_id) {
                    load.count(service, node);
                    // A task reserves what its own spec asked for, whatever the service
                    // asks now; one that has ended reserves nothing.
                    if !is_terminal(state_of(task)) {
                        let r = task
                            .spec
                            .as_ref()
                            .map(Reservation::of_spec)
                            .unwrap_or_default();
                        load.reserve(node, r);
                    }
                    // A task that has ended no longer holds its host ports.
                    if is_terminal(state_of(task)) {
                        load.release_host_ports(service, node);
                    }
                }
            }
        }
        load
    }

    /// Counts the tasks that failed (or were rejected) within [`FAILURE_WINDOW`] before
    /// `now`, per service and node, for [`place`] to rank those nodes down.
    pub fn with_failures_at(mut self, state: &ClusterState, now: OffsetDateTime) -> Self {
        for task in state.tasks.values() {
            let (Some(node), Some(service), Some(status)) =
                (&task.node_id, &task.service_id, &task.status)
            else {
                continue;
            };
            if !matches!(state_of(task), TaskState::FAILED | TaskState::REJECTED) {
                continue;
            }
            let recent = status
                .timestamp
                .as_deref()
                .and_then(crate::clock::parse_rfc3339)
                .is_some_and(|at| now - at <= FAILURE_WINDOW);
            if recent {
                *self
                    .recent_failures
                    .entry((service.clone(), node.clone()))
                    .or_default() += 1;
            }
        }
        self
    }

    /// Whether `service`'s tasks failed on `node` too often lately.
    fn faulty(&self, service: &str, node: &str) -> bool {
        self.recent_failures
            .get(&(service.to_string(), node.to_string()))
            .is_some_and(|n| *n >= MAX_RECENT_FAILURES)
    }

    /// Counts a task the orchestrator has just placed on `node`: its slot, its host ports
    /// and what the service's tasks reserve.
    pub fn add(&mut self, service: &str, node: &str) {
        self.count(service, node);
        let r = self
            .service_reservation
            .get(service)
            .copied()
            .unwrap_or_default();
        self.reserve(node, r);
    }

    fn reserve(&mut self, node: &str, r: Reservation) {
        if !r.is_zero() {
            let entry = entry_of(&mut self.node_reserved, node);
            *entry = entry.plus(r);
        }
    }

    fn reserved(&self, node: &str) -> Reservation {
        self.node_reserved.get(node).copied().unwrap_or_default()
    }

    fn count(&mut self, service: &str, node: &str) {
        *entry_of(&mut self.per_node, node) += 1;
        *entry_of(entry_of(&mut self.per_service_node, service), node) += 1;
        if let Some(ports) = self.service_host_ports.get(service) {
            entry_of(&mut self.node_host_ports, node).extend(ports.iter().copied());
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
            .get_mut(service)
            .and_then(|nodes| nodes.get_mut(node))
        {
            *n = n.saturating_sub(1);
        }
        self.release_host_ports(service, node);
        if let Some(r) = self.service_reservation.get(service).copied() {
            if let Some(entry) = self.node_reserved.get_mut(node) {
                *entry = entry.minus(r);
            }
        }
        // Counts went down: the node's entries may now be too high (see [`Queue`]).
        let mut queues = self.queues.borrow_mut();
        for (queued_for, queue) in queues.iter_mut() {
            if queue.members.contains(node) {
                let (mine, all) = self.of(queued_for, node);
                let faulty = self.faulty(queued_for, node);
                queue
                    .heap
                    .push(Reverse((faulty, mine, all, node.to_string())));
            }
        }
    }

    /// The best node for a task of `service` by the load alone (no spread preferences),
    /// through the service's [`Queue`]; `None` when no node fits.
    fn best_by_load(
        &self,
        state: &ClusterState,
        service: &str,
        constraints: &[String],
        fits: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let mut queues = self.queues.borrow_mut();
        let stale = queues
            .get(service)
            .is_none_or(|q| q.constraints != constraints);
        if stale {
            let members: HashSet<String> = state
                .nodes
                .iter()
                .filter(|(id, node)| {
                    is_eligible(node) && constraints.iter().all(|c| constraint_holds(c, id, node))
                })
                .map(|(id, _)| id.clone())
                .collect();
            let heap = members
                .iter()
                .map(|id| {
                    let (mine, all) = self.of(service, id);
                    Reverse((self.faulty(service, id), mine, all, id.clone()))
                })
                .collect();
            queues.insert(
                service.to_string(),
                Queue {
                    constraints: constraints.to_vec(),
                    heap,
                    members,
                },
            );
        }
        let queue = queues.get_mut(service)?;
        while let Some(Reverse((faulty, mine, all, id))) = queue.heap.pop() {
            let (now_mine, now_all) = self.of(service, &id);
            if (now_mine, now_all) != (mine, all) {
                queue.heap.push(Reverse((faulty, now_mine, now_all, id)));
                continue;
            }
            if !fits(&id) {
                continue;
            }
            queue.heap.push(Reverse((faulty, mine, all, id.clone())));
            return Some(id);
        }
        None
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
                .get(service)
                .and_then(|nodes| nodes.get(node))
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
    let placement = spec.placement.as_ref();
    let constraints = placement
        .and_then(|p| p.constraints.clone())
        .unwrap_or_default();
    let max_replicas = placement
        .and_then(|p| p.max_replicas)
        .filter(|m| *m > 0)
        .map(|m| m as usize);
    let spread = spread_descriptors(spec);
    let want = Reservation::of_spec(spec);
    // The filters that depend on the load, in the order below.
    let fits = |id: &str, node: &Node| {
        (want.is_zero() || Reservation::fits(Reservation::of_node(node), load.reserved(id), want))
            && max_replicas.is_none_or(|max| load.of(service_id, id).0 < max)
            && load.host_ports_free(service_id, id)
    };
    if spread.is_empty() {
        let best = load.best_by_load(state, service_id, &constraints, |id| {
            state.nodes.get(id).is_some_and(|node| fits(id, node))
        });
        if let Some(id) = best {
            return Ok(id);
        }
        // No node fits: the scan below says why.
    }
    // Nodes ruled out by each filter, in SwarmKit's order, for the explanation.
    let (mut by_constraints, mut by_resources, mut by_max_replicas, mut by_host_ports) =
        (0, 0, 0, 0);
    let mut candidates: Vec<(&String, &Node)> = Vec::new();
    for (id, node) in &state.nodes {
        if !is_eligible(node) {
            continue;
        }
        if !constraints.iter().all(|c| constraint_holds(c, id, node)) {
            by_constraints += 1;
            continue;
        }
        if !want.is_zero()
            && !Reservation::fits(Reservation::of_node(node), load.reserved(id), want)
        {
            by_resources += 1;
            continue;
        }
        if max_replicas.is_some_and(|max| load.of(service_id, id).0 >= max) {
            by_max_replicas += 1;
            continue;
        }
        if !load.host_ports_free(service_id, id) {
            by_host_ports += 1;
            continue;
        }
        candidates.push((id, node));
    }
    // Spread: the fewest tasks of the service in the candidate's branch, level by level.
    let branch = |node: &Node, level: usize| -> Vec<String> {
        spread[..=level]
            .iter()
            .map(|d| descriptor_value(d, node))
            .collect()
    };
    let mut per_branch: HashMap<Vec<String>, usize> = HashMap::new();
    for level in 0..spread.len() {
        for (id, node) in &candidates {
            *per_branch.entry(branch(node, level)).or_default() += load.of(service_id, id).0;
        }
    }
    let best = candidates.iter().min_by_key(|(id, node)| {
        let branches: Vec<usize> = (0..spread.len())
            .map(|level| per_branch.get(&branch(node, level)).copied().unwrap_or(0))
            .collect();
        (
            load.faulty(service_id, id),
            branches,
            load.of(service_id, id),
            *id,
        )
    });
    if let Some((id, _)) = best {
        return Ok((*id).clone());
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
    if by_resources > 0 {
        why.push(format!("insufficient resources on {}", nodes(by_resources)));
    }
    if by_max_replicas > 0 {
        why.push(format!(
            "max replicas per node limit exceed on {}",
            nodes(by_max_replicas)
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

/// The spread descriptors of a spec's placement preferences, outermost first.
fn spread_descriptors(spec: &TaskSpec) -> Vec<String> {
    spec.placement
        .as_ref()
        .and_then(|p| p.preferences.as_ref())
        .map(|prefs| {
            prefs
                .iter()
                .filter_map(|p| p.spread.as_ref()?.spread_descriptor.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The value a node has for a spread descriptor (`node.labels.KEY` or
/// `engine.labels.KEY`); nodes without the label form a branch of their own, as in
/// SwarmKit.
fn descriptor_value(descriptor: &str, node: &Node) -> String {
    let label = |labels: Option<&HashMap<String, String>>, key: &str| {
        labels.and_then(|l| l.get(key)).cloned().unwrap_or_default()
    };
    let lower = descriptor.to_ascii_lowercase();
    if lower.starts_with("node.labels.") {
        let key = &descriptor["node.labels.".len()..];
        label(node.spec.as_ref().and_then(|s| s.labels.as_ref()), key)
    } else if lower.starts_with("engine.labels.") {
        let key = &descriptor["engine.labels.".len()..];
        label(
            node.description
                .as_ref()
                .and_then(|d| d.engine.as_ref())
                .and_then(|e| e.labels.as_ref()),
            key,
        )
    } else {
        String::new()
    }
}

/// Checks the placement preferences of a spec when it is written, with SwarmKit's words.
pub fn validate_preferences(spec: &TaskSpec) -> Result<(), String> {
    for d in spread_descriptors(spec) {
        let lower = d.to_ascii_lowercase();
        let key = lower
            .strip_prefix("node.labels.")
            .or_else(|| lower.strip_prefix("engine.labels."));
        if key.is_none_or(str::is_empty) {
            return Err(format!(
                "invalid placement preference: spread descriptor {d:?} is not supported: use node.labels.KEY or engine.labels.KEY"
            ));
        }
    }
    Ok(())
}

/// One parsed placement constraint: `KEY==VALUE` or `KEY!=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: String,
    equal: bool,
    value: String,
}

/// Why a constraint was refused, in SwarmKit's words (Docker shows them as they are).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint expected one operator from ==, !=")]
    NoOperator,
    #[error("key '{0}' is invalid")]
    Key(String),
    #[error("value '{0}' is invalid")]
    Value(String),
}

/// A key starts with a letter or '_' and has at least two characters of letters, digits,
/// '-', '_' and '.'.
fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A value may not be empty nor hold characters that are (or may become) operators, such
/// as '<', '>', '~', '!' or '='.
fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    ':' | '-'
                        | '_'
                        | '.'
                        | '*'
                        | '('
                        | ')'
                        | '?'
                        | '+'
                        | '['
                        | ']'
                        | '\\'
                        | '^'
                        | '$'
                        | '|'
                        | '/'
                        | ' '
                        | '\t'
                        | '\n'
                        | '\r'
                        | '\x0c'
                )
        })
}

impl Constraint {
    /// Parses one expression as SwarmKit does: `==` is looked for first, then `!=`; key and
    /// value are trimmed.
    pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
        let (key, value, equal) = if let Some((k, v)) = expr.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = expr.split_once("!=") {
            (k, v, false)
        } else {
            return Err(ConstraintError::NoOperator);
        };
        let (key, value) = (key.trim(), value.trim());
        if !valid_key(key) {
            return Err(ConstraintError::Key(key.into()));
        }
        if !valid_value(value) {
            return Err(ConstraintError::Value(value.into()));
        }
        Ok(Constraint {
            key: key.into(),
            equal,
            value: value.into(),
        })
    }

    /// Whether the node satisfies the constraint. A key the scheduler does not know never
    /// holds, as in SwarmKit, so such tasks stay pending with the reason shown.
    pub fn holds(&self, node_id: &str, node: &Node) -> bool {
        let key = self.key.to_ascii_lowercase();
        let description = node.description.as_ref();
        let platform = description.and_then(|d| d.platform.as_ref());
        let have: String = match key.as_str() {
            "node.id" => node_id.to_string(),
            "node.hostname" => node_hostname(node).to_string(),
            "node.role" => node_role(node).to_string(),
            "node.platform.os" => platform.and_then(|p| p.os.clone()).unwrap_or_default(),
            "node.platform.arch" => platform
                .and_then(|p| p.architecture.clone())
                .unwrap_or_default(),
            "node.ip" => {
                let addr = node.status.as_ref().and_then(|s| s.addr.as_deref());
                return match ip_matches(&self.value, addr) {
                    Some(within) => within == self.equal,
                    None => false,
                };
            }
            _ => {
                // Label names keep their case; only the prefix is case-insensitive.
                const NODE: &str = "node.labels.";
                const ENGINE: &str = "engine.labels.";
                let (labels, name) = if key.starts_with(NODE) && key.len() > NODE.len() {
                    (
                        node.spec.as_ref().and_then(|s| s.labels.as_ref()),
                        &self.key[NODE.len()..],
                    )
                } else if key.starts_with(ENGINE) && key.len() > ENGINE.len() {
                    (
                        description
                            .and_then(|d| d.engine.as_ref())
                            .and_then(|e| e.labels.as_ref()),
                        &self.key[ENGINE.len()..],
                    )
                } else {
                    return false;
                };
                labels
                    .and_then(|l| l.get(name).cloned())
                    .unwrap_or_default()
            }
        };
        have.eq_ignore_ascii_case(&self.value) == self.equal
    }
}

/// For `node.ip`: whether the node's address equals an address or lies in a CIDR
/// subnet; `None` when the value is neither (the constraint then never holds).
fn ip_matches(value: &str, addr: Option<&str>) -> Option<bool> {
    let node: Option<IpAddr> = addr.and_then(|a| a.parse().ok());
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(node == Some(ip));
    }
    let (net, bits) = value.split_once('/')?;
    let net: IpAddr = net.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    let within = match (net, node) {
        (IpAddr::V4(n), Some(IpAddr::V4(a))) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), Some(IpAddr::V6(a))) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        (IpAddr::V4(_), _) if bits > 32 => return None,
        (IpAddr::V6(_), _) if bits > 128 => return None,
        _ => false,
    };
    Some(within)
}

/// Parses every constraint of a spec: what the API checks at create and update.
pub fn parse_constraints(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    exprs.iter().map(|e| Constraint::parse(e)).collect()
}

/// Evaluates one `--constraint` expression (`node.role==manager`, `node.labels.zone!=a`).
/// An expression that cannot be parsed never holds: the API refuses them, and one stored
/// before it did keeps its tasks pending with a visible message.
pub fn constraint_holds(expr: &str, node_id: &str, node: &Node) -> bool {
    Constraint::parse(expr).is_ok_and(|c| c.holds(node_id, node))
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

    /// The queue that makes placements fast picks what a look at every node would: the
    /// fewest tasks of the service, then the fewest overall, then the node id, also when
    /// other services add tasks meanwhile and after a task is removed.
    #[test]
    fn placement_order_survives_adds_by_others_and_removals() {
        let s = state(vec![
            node("a", NodeSpecRoleEnum::WORKER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
            node("c", NodeSpecRoleEnum::WORKER, true),
        ]);
        let mut load = Load::from_state(&s);
        let spec = TaskSpec::default();
        assert_eq!(place(&s, &load, "web", &spec), Ok("a".into()));
        load.add("web", "a");
        // Another service fills b: web's next task goes to c, the least loaded.
        load.add("api", "b");
        assert_eq!(place(&s, &load, "web", &spec), Ok("c".into()));
        load.add("web", "c");
        assert_eq!(place(&s, &load, "web", &spec), Ok("b".into()));
        load.add("web", "b");
        // a's task is retired: a is first again.
        load.remove("web", "a");
        assert_eq!(place(&s, &load, "web", &spec), Ok("a".into()));
    }

    /// Many retirements and placements in turn, as when a node goes down, over two
    /// services (one capped at two tasks per node): the queue's choice is always what a
    /// look at every node would pick.
    #[test]
    fn placement_after_many_retirements_matches_a_full_scan() {
        let ids: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        let s = state(
            ids.iter()
                .map(|id| node(id, NodeSpecRoleEnum::WORKER, true))
                .collect(),
        );
        let capped = TaskSpec {
            placement: Some(swarm_state::models::TaskSpecPlacement {
                max_replicas: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let specs = [("web", TaskSpec::default()), ("api", capped)];
        let mut load = Load::from_state(&s);
        let mut running: Vec<(&str, String)> = Vec::new();
        // A fixed pseudo-random sequence (64-bit LCG): reproducible, no seed to report.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize % n
        };
        for _ in 0..2_000 {
            let (service, spec) = &specs[next(2)];
            if next(3) == 0 && !running.is_empty() {
                let (svc, node) = running.swap_remove(next(running.len()));
                load.remove(svc, &node);
                continue;
            }
            let scan = ids
                .iter()
                .filter(|id| spec.placement.is_none() || load.of(service, id).0 < 2)
                .min_by_key(|id| (load.of(service, id), *id))
                .cloned();
            let placed = place(&s, &load, service, spec).ok();
            assert_eq!(placed, scan, "after {} tasks", running.len());
            if let Some(node) = placed {
                load.add(service, &node);
                running.push((service, node));
            }
        }
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
    fn constraints_parse_as_swarmkit_does() {
        let c = Constraint::parse(" node.labels.zone == eu-1 ").unwrap();
        assert_eq!(
            (c.key.as_str(), c.equal, c.value.as_str()),
            ("node.labels.zone", true, "eu-1")
        );
        assert!(!Constraint::parse("node.role!=manager").unwrap().equal);
        let err = |e: &str| Constraint::parse(e).unwrap_err().to_string();
        assert_eq!(
            err("node.garbage"),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(
            err("node.role=manager"),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(err("==manager"), "key '' is invalid");
        assert_eq!(err("1node==x"), "key '1node' is invalid");
        assert_eq!(err("node role==x"), "key 'node role' is invalid");
        assert_eq!(err("node.role=="), "value '' is invalid");
        assert_eq!(err("node.role==a<b"), "value 'a<b' is invalid");
        // `==` is looked for first: what is left of it is the key.
        assert_eq!(err("a!=b==c"), "key 'a!=b' is invalid");
        assert_eq!(
            err("a==b!=c"),
            "key 'a' is invalid",
            "two characters at least"
        );
        assert_eq!(err("ab==b!=c"), "value 'b!=c' is invalid");
        // Unknown keys parse (and never hold), as in SwarmKit.
        assert!(Constraint::parse("node.garbage==x").is_ok());
        assert!(parse_constraints(&["node.role==worker".into(), "x".into()]).is_err());
        assert_eq!(parse_constraints(&[]), Ok(vec![]));
    }

    #[test]
    fn constraint_keys_labels_and_addresses() {
        let mut n = node("a", NodeSpecRoleEnum::WORKER, true);
        n.spec.as_mut().unwrap().labels = Some(
            [("Zone".to_string(), "EU".to_string())]
                .into_iter()
                .collect(),
        );
        n.description.as_mut().unwrap().engine = Some(swarm_state::models::EngineDescription {
            labels: Some(
                [("disk".to_string(), "ssd".to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        });
        n.status.as_mut().unwrap().addr = Some("10.1.2.3".into());
        let holds = |e: &str| Constraint::parse(e).unwrap().holds("a", &n);
        assert!(holds("NODE.ROLE==Worker"));
        assert!(holds("node.labels.Zone==eu"));
        assert!(holds("NODE.LABELS.Zone==eu"));
        assert!(
            !holds("node.labels.zone==eu"),
            "label names keep their case"
        );
        assert!(holds("node.labels.missing!=x"));
        assert!(holds("engine.labels.disk==ssd"));
        assert!(holds("node.ip==10.1.2.3"));
        assert!(holds("node.ip==10.1.0.0/16"));
        assert!(holds("node.ip!=10.2.0.0/16"));
        assert!(!holds("node.ip==nonsense"));
        assert!(!holds("node.ip!=nonsense"));
        assert!(!holds("node.garbage==x"));
        assert!(!holds("node.garbage!=x"));
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
    fn a_node_where_the_service_failed_five_times_lately_goes_last() {
        let s0 = state(vec![
            node("a", NodeSpecRoleEnum::WORKER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
        ]);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let failed_at = |s: &mut ClusterState, n: usize, node: &str, ago: u64| {
            for i in 0..n {
                let mut t = running_on(&format!("{node}{ago}-{i}"), "web", node, TaskState::FAILED);
                t.desired_state = Some(TaskState::SHUTDOWN);
                t.status = Some(swarm_state::status(
                    TaskState::FAILED,
                    "",
                    &crate::clock::rfc3339(now - Duration::from_secs(ago)),
                ));
                s.tasks.insert(t.id.clone().unwrap(), t);
            }
        };
        // Four failures: "a" is still first (by name, both empty of web tasks).
        let mut s = s0.clone();
        failed_at(&mut s, 4, "a", 10);
        let load = Load::from_state(&s).with_failures_at(&s, now);
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Ok("a".into())
        );
        // The fifth within five minutes ranks it down, for this service only.
        failed_at(&mut s, 1, "a", 20);
        let mut load = Load::from_state(&s).with_failures_at(&s, now);
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Ok("b".into())
        );
        assert_eq!(
            place(&s, &load, "api", &TaskSpec::default()),
            Ok("a".into())
        );
        // Still used when nothing else fits.
        load.add("web", "b");
        load.add("web", "b");
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Ok("b".into())
        );
        // Old failures do not count.
        let mut s = s0;
        failed_at(&mut s, 5, "a", 301);
        let load = Load::from_state(&s).with_failures_at(&s, now);
        assert_eq!(
            place(&s, &load, "web", &TaskSpec::default()),
            Ok("a".into())
        );
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

    fn with_resources(mut n: Node, cpus: i64, memory: i64) -> Node {
        n.description.get_or_insert_with(Default::default).resources =
            Some(swarm_state::models::ResourceObject {
                nano_cpus: Some(cpus * 1_000_000_000),
                memory_bytes: Some(memory),
                generic_resources: None,
            });
        n
    }

    fn with_label(mut n: Node, key: &str, value: &str) -> Node {
        n.spec
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        n
    }

    fn service_with(id: &str, template: TaskSpec) -> swarm_state::models::Service {
        swarm_state::models::Service {
            id: Some(id.into()),
            spec: Some(swarm_state::models::ServiceSpec {
                name: Some(id.into()),
                task_template: Some(template),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reservations_filter_nodes_and_add_up() {
        const GB: i64 = 1 << 30;
        let mut s = state(vec![
            with_resources(node("a", NodeSpecRoleEnum::MANAGER, true), 2, 2 * GB),
            with_resources(node("b", NodeSpecRoleEnum::WORKER, true), 2, GB),
        ]);
        let spec = TaskSpec {
            resources: Some(swarm_state::models::TaskSpecResources {
                reservations: Some(swarm_state::models::ResourceObject {
                    memory_bytes: Some(GB),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.services
            .insert("db".into(), service_with("db", spec.clone()));
        let mut load = Load::from_state(&s);
        let mut placed = Vec::new();
        for _ in 0..3 {
            let n = place(&s, &load, "db", &spec).unwrap();
            load.add("db", &n);
            placed.push(n);
        }
        placed.sort();
        assert_eq!(placed, vec!["a", "a", "b"]);
        assert_eq!(
            place(&s, &load, "db", &spec),
            Err("no suitable node (insufficient resources on 2 nodes)".into())
        );
        // A 100 GB reservation fits nowhere.
        let mut huge = spec.clone();
        huge.resources
            .as_mut()
            .unwrap()
            .reservations
            .as_mut()
            .unwrap()
            .memory_bytes = Some(100 * GB);
        assert!(place(&s, &Load::from_state(&s), "db", &huge).is_err());
    }

    #[test]
    fn max_replicas_per_node_holds() {
        let s = state(vec![
            node("a", NodeSpecRoleEnum::MANAGER, true),
            node("b", NodeSpecRoleEnum::WORKER, true),
        ]);
        let spec = TaskSpec {
            placement: Some(swarm_state::models::TaskSpecPlacement {
                max_replicas: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut load = Load::from_state(&s);
        for _ in 0..2 {
            let n = place(&s, &load, "web", &spec).unwrap();
            load.add("web", &n);
        }
        assert_eq!(
            place(&s, &load, "web", &spec),
            Err("no suitable node (max replicas per node limit exceed on 2 nodes)".into())
        );
    }

    #[test]
    fn spread_preferences_balance_label_values_first() {
        // Zone east has three nodes, west one: spreading over zones puts half the tasks
        // on the single west node, as SwarmKit's tree does.
        let s = state(vec![
            with_label(node("a", NodeSpecRoleEnum::MANAGER, true), "zone", "east"),
            with_label(node("b", NodeSpecRoleEnum::WORKER, true), "zone", "east"),
            with_label(node("c", NodeSpecRoleEnum::WORKER, true), "zone", "east"),
            with_label(node("d", NodeSpecRoleEnum::WORKER, true), "zone", "west"),
        ]);
        let spec = TaskSpec {
            placement: Some(swarm_state::models::TaskSpecPlacement {
                preferences: Some(vec![swarm_state::models::TaskSpecPlacementPreferences {
                    spread: Some(swarm_state::models::TaskSpecPlacementSpread {
                        spread_descriptor: Some("node.labels.zone".into()),
                    }),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut load = Load::from_state(&s);
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for _ in 0..6 {
            let n = place(&s, &load, "web", &spec).unwrap();
            load.add("web", &n);
            *per_node.entry(n).or_default() += 1;
        }
        assert_eq!(per_node.get("d"), Some(&3), "{per_node:?}");
        assert_eq!(per_node.values().sum::<usize>(), 6);
        assert!(validate_preferences(&spec).is_ok());
        let mut bad = spec.clone();
        bad.placement
            .as_mut()
            .unwrap()
            .preferences
            .as_mut()
            .unwrap()[0]
            .spread
            .as_mut()
            .unwrap()
            .spread_descriptor = Some("node.hostname".into());
        assert!(validate_preferences(&bad)
            .unwrap_err()
            .contains("node.hostname"));
    }
}
