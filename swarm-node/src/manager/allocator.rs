//! The leader's address allocator: service VIPs, task addresses and node addresses on
//! overlay networks.
//!
//! [`allocate`] is a pure function of the replicated state: it returns one
//! [`Allocation`] that the leader proposes as [`Command::Allocate`](swarm_state::Command),
//! and `apply` checks it again (no double use), so a new leader simply continues.
//!
//! - A service in VIP mode gets one VIP per network it is on; a VIP is given back when the
//!   service leaves the network or turns dnsrr.
//! - A live task (wanted, not ended) gets one address per network of its own spec, all at
//!   once; a task whose network is full keeps waiting and shows why in `service ps`.
//! - A node gets its own address on every network it runs tasks of: the address the host
//!   itself uses inside the overlay, and from which the node's bridge MAC is derived.
//!
//! - A service that publishes ports gets its `Endpoint.Ports`: an ingress port given
//!   without a published port gets the lowest free one of 30000-32767 and keeps it while
//!   the spec still asks for it (same protocol and target); a port the spec no longer has
//!   is freed. It also gets a VIP on the ingress network, and while any ingress port
//!   exists every Ready node gets its own address on ingress (the mesh runs everywhere).
//!
//! Addresses are searched from the network's cursor (the last one handed out) onwards,
//! wrapping around, so a just-freed address is the last to be reused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use swarm_state::models::{EndpointPortConfig, NodeState, ServiceSpec, Task, TaskState};
use swarm_state::network::{
    endpoint_mode, service_networks, Allocation, Attachment, EndpointMode, NetworkRecord,
};
use swarm_state::ports::{
    is_ingress, key_of, normalized, protocol_of, publishes_ingress, spec_ports, PortKey,
    DYNAMIC_PORTS,
};
use swarm_state::{desired_of, is_terminal, node_state, state_of, ClusterState};

/// Docker's wording when a network has no address left.
pub fn exhausted_message(network: &str) -> String {
    format!("could not allocate IP address on network {network}: no available IP addresses")
}

/// Addresses in use, per network, including those this pass has already chosen.
struct Pools<'a> {
    state: &'a ClusterState,
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    cursors: BTreeMap<String, Ipv4Addr>,
}

impl<'a> Pools<'a> {
    fn new(state: &'a ClusterState) -> Self {
        Pools {
            state,
            used: BTreeMap::new(),
            cursors: state.ipam_cursors.clone(),
        }
    }

    /// The next free address of a network after its cursor, or `None` when it is full.
    fn take(&mut self, network: &NetworkRecord) -> Option<Ipv4Addr> {
        let id = network.id().to_string();
        let used = self
            .used
            .entry(id.clone())
            .or_insert_with(|| self.state.used_addresses(&id));
        let range = network.ip_range;
        let first = u32::from(range.network());
        let last = u32::from(range.broadcast());
        let size = u64::from(last - first) + 1;
        let start = self
            .cursors
            .get(&id)
            .map(|c| u32::from(*c))
            .filter(|c| (first..=last).contains(c))
            .map(|c| if c == last { first } else { c + 1 })
            .unwrap_or(first);
        let mut candidate = start;
        for _ in 0..size {
            let addr = Ipv4Addr::from(candidate);
            if network.assignable(addr) && !used.contains(&addr) {
                used.insert(addr);
                self.cursors.insert(id, addr);
                return Some(addr);
            }
            candidate = if candidate == last {
                first
            } else {
                candidate + 1
            };
        }
        None
    }
}

/// True while a task may hold addresses: wanted and not ended.
fn is_live(task: &Task) -> bool {
    desired_of(task) <= TaskState::RUNNING && !is_terminal(state_of(task))
}

/// The network ids a task's own spec attaches it to, in order.
fn task_network_ids(task: &Task) -> Vec<String> {
    let Some(spec) = task.spec.as_ref() else {
        return Vec::new();
    };
    spec.networks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.target.clone())
        .collect()
}

/// Decides every address the state is missing. `None` when nothing is to be done.
pub fn allocate(state: &ClusterState) -> Option<Allocation> {
    let mut out = Allocation::default();
    let mut pools = Pools::new(state);
    let ingress_id = state.ingress_network().map(|n| n.id());

    allocate_ports(state, &mut out);

    // Service VIPs.
    for (service_id, service) in &state.services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let wanted: BTreeSet<&str> = match endpoint_mode(spec) {
            EndpointMode::Vip => service_networks(spec)
                .iter()
                .filter_map(|n| n.target.as_deref())
                .chain(ingress_id.filter(|_| publishes_ingress(spec)))
                .filter(|id| state.networks.contains_key(*id))
                .collect(),
            EndpointMode::Dnsrr => BTreeSet::new(),
        };
        let have = state.service_vips.get(service_id);
        for network_id in have.into_iter().flat_map(|h| h.keys()) {
            if !wanted.contains(network_id.as_str()) {
                out.release_vips
                    .push((service_id.clone(), network_id.clone()));
            }
        }
        for network_id in wanted {
            if have.is_some_and(|h| h.contains_key(network_id)) {
                continue;
            }
            // A full network leaves the service without a VIP for now; its tasks report
            // the exhaustion.
            if let Some(addr) = pools.take(&state.networks[network_id]) {
                out.vips
                    .push((service_id.clone(), network_id.to_string(), addr));
            }
        }
    }

    // Task addresses, then the nodes' own addresses on the networks of their tasks.
    let mut node_needs: BTreeSet<(String, String)> = BTreeSet::new();
    for (task_id, task) in &state.tasks {
        if !is_live(task) {
            continue;
        }
        let networks = task_network_ids(task);
        if networks.is_empty() {
            continue;
        }
        let attached: Vec<String> = match state.task_networks.get(task_id) {
            Some(have) => have.iter().map(|a| a.network_id.clone()).collect(),
            None => match allocate_task(state, &mut pools, &networks) {
                Ok(attachments) => {
                    let ids = attachments.iter().map(|a| a.network_id.clone()).collect();
                    out.tasks.push((task_id.clone(), attachments));
                    ids
                }
                Err(why) => {
                    let already =
                        task.status.as_ref().and_then(|s| s.err.as_deref()) == Some(why.as_str());
                    if !already {
                        out.failures.push((task_id.clone(), why));
                    }
                    Vec::new()
                }
            },
        };
        if let Some(node) = &task.node_id {
            for network_id in attached {
                node_needs.insert((node.clone(), network_id));
            }
        }
    }
    // The mesh accepts its ports on every node: each Ready node needs its own address on
    // ingress, tasks or not.
    if let Some(ingress_id) = ingress_id.filter(|_| state.has_ingress_ports()) {
        for (node_id, node) in &state.nodes {
            if node_state(node) == NodeState::READY {
                node_needs.insert((node_id.clone(), ingress_id.to_string()));
            }
        }
    }
    for (node_id, network_id) in node_needs {
        let has = state
            .node_networks
            .get(&node_id)
            .is_some_and(|m| m.contains_key(&network_id));
        if has || !state.nodes.contains_key(&node_id) {
            continue;
        }
        if let Some(addr) = pools.take(&state.networks[&network_id]) {
            out.nodes.push((node_id, network_id, addr));
        }
    }

    (!out.is_empty()).then_some(out)
}

/// Why an ingress port without a number got none: the dynamic range is used up.
pub fn ports_exhausted_message() -> String {
    format!(
        "could not allocate a published port: every port from {} to {} is in use",
        DYNAMIC_PORTS.start(),
        DYNAMIC_PORTS.end()
    )
}

/// Decides every service's `Endpoint.Ports` that differs from its spec. Services are
/// taken in id order; a service whose wanted port is held by another (two updates that
/// raced) is left as it is, so `apply` never sees a double allocation from here.
fn allocate_ports(state: &ClusterState, out: &mut Allocation) {
    // Who holds which ingress port now, updated as services are decided.
    let mut holders: BTreeMap<PortKey, String> = BTreeMap::new();
    for (service_id, ports) in &state.service_ports {
        for key in ports.iter().filter(|p| is_ingress(p)).filter_map(key_of) {
            holders.insert(key, service_id.clone());
        }
    }
    // Ports some spec asks for by number: never handed out dynamically.
    let asked: BTreeSet<PortKey> = state
        .services
        .values()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|spec| spec_ports(spec).iter().filter(|p| is_ingress(p)))
        .filter_map(key_of)
        .collect();
    for (service_id, service) in &state.services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let current = state.endpoint_ports(service_id);
        let wanted = match endpoint_ports(spec, current, service_id, &holders, &asked) {
            Ok(w) => w,
            Err(why) => {
                tracing::warn!(service = %service_id, "{why}");
                continue;
            }
        };
        if wanted.as_slice() == current {
            continue;
        }
        holders.retain(|_, holder| holder != service_id);
        for key in wanted.iter().filter(|p| is_ingress(p)).filter_map(key_of) {
            holders.insert(key, service_id.clone());
        }
        out.ports.push((service_id.clone(), wanted));
    }
}

/// One service's `Endpoint.Ports`: the spec's ports with defaults written out, its
/// dynamic ingress ports kept from `current` when the spec still asks for them, new ones
/// chosen from [`DYNAMIC_PORTS`].
fn endpoint_ports(
    spec: &ServiceSpec,
    current: &[EndpointPortConfig],
    service_id: &str,
    holders: &BTreeMap<PortKey, String>,
    asked: &BTreeSet<PortKey>,
) -> Result<Vec<EndpointPortConfig>, String> {
    let ports = spec_ports(spec);
    let explicit: BTreeSet<PortKey> = ports
        .iter()
        .filter(|p| is_ingress(p))
        .filter_map(key_of)
        .collect();
    let held_by_other = |key: &PortKey| holders.get(key).is_some_and(|holder| holder != service_id);
    if let Some(key) = explicit.iter().find(|k| held_by_other(k)) {
        return Err(format!("port {} is held by another service", key.1));
    }
    let mut taken: BTreeSet<PortKey> = explicit.clone();
    let mut reused: BTreeSet<PortKey> = BTreeSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let mut p = normalized(p);
        if is_ingress(&p) && key_of(&p).is_none() {
            let Some(protocol) = protocol_of(&p) else {
                return Err("sctp ports are not served".into());
            };
            // The same request as before keeps its port.
            let kept = current
                .iter()
                .filter(|c| is_ingress(c) && c.target_port == p.target_port)
                .filter_map(key_of)
                .find(|k| {
                    k.0 == protocol
                        && DYNAMIC_PORTS.contains(&k.1)
                        && !explicit.contains(k)
                        && !reused.contains(k)
                        && !held_by_other(k)
                });
            let key = match kept {
                Some(k) => k,
                None => DYNAMIC_PORTS
                    .map(|n| (protocol, n))
                    .find(|k| {
                        !taken.contains(k)
                            && !reused.contains(k)
                            && !asked.contains(k)
                            && !holders.contains_key(k)
                    })
                    .ok_or_else(ports_exhausted_message)?,
            };
            reused.insert(key);
            taken.insert(key);
            p.published_port = Some(i64::from(key.1));
        }
        out.push(p);
    }
    Ok(out)
}

/// One address per network, or why not. Addresses taken for a task that then fails on a
/// later network are simply not proposed (the pools are per pass).
fn allocate_task(
    state: &ClusterState,
    pools: &mut Pools<'_>,
    networks: &[String],
) -> Result<Vec<Attachment>, String> {
    let mut attachments = Vec::new();
    for network_id in networks {
        let Some(network) = state.networks.get(network_id) else {
            return Err(format!("network {network_id} not found"));
        };
        let addr = pools
            .take(network)
            .ok_or_else(|| exhausted_message(network.name()))?;
        attachments.push(Attachment {
            network_id: network_id.clone(),
            addr,
        });
    }
    Ok(attachments)
}

#[cfg(test)]
mod tests;
