//! The network map: what one node's data plane and DNS server need to know, derived from
//! the replicated state by a pure function ([`netmap_for_node`]).
//!
//! Managers serve it to every node on a long poll (`GET /swarmup/v1/netmap`), so the data
//! plane follows the Raft state without any gossip: VXLAN forwarding entries, VIP backends
//! and DNS records all come from here. A node sees only the networks it has tasks (or an
//! address) on, and on them every service, so a container can resolve any service that
//! shares a network with it and none other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::models::{NodeState, TaskState};
use crate::network::{endpoint_mode, service_networks, EndpointMode, Ipv4Net};
use crate::{desired_of, is_terminal, node_state, state_of, ClusterState};

/// Everything one node's data plane needs, as of log index `index`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetMap {
    /// The log index of the state this map was derived from.
    pub index: u64,
    pub node_id: String,
    /// This node's underlay (advertise) address: the local VXLAN tunnel endpoint.
    pub local_vtep: Option<Ipv4Addr>,
    /// The UDP port VXLAN uses (`--data-path-port`).
    pub data_path_port: u16,
    pub networks: Vec<NetView>,
    /// The tasks assigned to this node that have addresses.
    pub local_tasks: Vec<LocalTask>,
    /// Ports published in ingress mode (the routing mesh), by every service of the
    /// cluster, in (protocol, published port) order. While this is not empty every Ready
    /// node has the ingress network and its own address on it.
    #[serde(default)]
    pub ingress_ports: Vec<IngressPort>,
    /// The other nodes' own addresses on the ingress network, with their VTEP: a reply to
    /// a connection that another node received through the mesh goes back through it.
    #[serde(default)]
    pub ingress_nodes: Vec<RemoteEndpoint>,
}

/// A port published in ingress mode: every node accepts it on all its addresses and
/// forwards new connections to one of the serving tasks, anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressPort {
    pub service_id: String,
    pub service: String,
    pub protocol: crate::network::Protocol,
    /// The port every node accepts.
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
    /// The serving tasks' addresses on the ingress network, sorted; empty means: refuse.
    pub backends: Vec<Ipv4Addr>,
}

/// One overlay network as a node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetView {
    pub id: String,
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The user's MTU; `None` means: derive it from the underlay.
    pub mtu: Option<u32>,
    pub encrypted: bool,
    pub internal: bool,
    pub ingress: bool,
    /// This node's own address on the network (for traffic the host itself sends).
    pub local_addr: Option<Ipv4Addr>,
    /// Addresses that live on other nodes, with the node's tunnel endpoint, in address
    /// order: tasks and other nodes' own addresses.
    pub remote: Vec<RemoteEndpoint>,
    /// Every service attached to the network, in name order.
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    pub addr: Ipv4Addr,
    /// The underlay address of the node the endpoint is on.
    pub vtep: Ipv4Addr,
}

/// A service on one network: its names, how it is reached, and its live tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    /// `--network name=N,alias=A` aliases on this network.
    pub aliases: Vec<String>,
    pub mode: EndpointMode,
    /// The service's virtual IP on this network (VIP mode, once allocated).
    pub vip: Option<Ipv4Addr>,
    /// The addresses on this network of the tasks that serve: observed and desired
    /// Running, on a Ready node. In address order.
    pub backends: Vec<Ipv4Addr>,
}

/// A task of this node with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalTask {
    pub task_id: String,
    pub service_id: String,
    /// (network id, address), in the order of the service's networks: the first one is
    /// where the container's default route and DNS server are.
    pub addrs: Vec<(String, Ipv4Addr)>,
}

/// True while a task may still hold its addresses on the wire: it is wanted (desired
/// state at most Running) and has not ended.
fn task_is_live(task: &crate::models::Task) -> bool {
    desired_of(task) <= TaskState::RUNNING && !is_terminal(state_of(task))
}

/// A backend serves: observed and desired Running, on a Ready node.
fn task_serves(state: &ClusterState, task: &crate::models::Task) -> bool {
    state_of(task) == TaskState::RUNNING
        && desired_of(task) == TaskState::RUNNING
        && task
            .node_id
            .as_ref()
            .and_then(|n| state.nodes.get(n))
            .is_some_and(|n| node_state(n) == NodeState::READY)
}

fn node_vtep(state: &ClusterState, node_id: &str) -> Option<Ipv4Addr> {
    state
        .nodes
        .get(node_id)?
        .status
        .as_ref()?
        .addr
        .as_deref()?
        .parse()
        .ok()
}

/// Derives the network map of one node. Pure: the same state gives the same map.
pub fn netmap_for_node(state: &ClusterState, node_id: &str) -> NetMap {
    let mut local_tasks = Vec::new();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for (task_id, attachments) in &state.task_networks {
        let Some(task) = state.tasks.get(task_id) else {
            continue;
        };
        if task.node_id.as_deref() != Some(node_id) || !task_is_live(task) {
            continue;
        }
        wanted.extend(attachments.iter().map(|a| a.network_id.as_str()));
        local_tasks.push(LocalTask {
            task_id: task_id.clone(),
            service_id: task.service_id.clone().unwrap_or_default(),
            addrs: attachments
                .iter()
                .map(|a| (a.network_id.clone(), a.addr))
                .collect(),
        });
    }
    let own = state.node_networks.get(node_id);
    if let Some(own) = own {
        wanted.extend(own.keys().map(String::as_str));
    }

    let mut networks = Vec::new();
    for net_id in wanted {
        let Some(net) = state.networks.get(net_id) else {
            continue;
        };
        networks.push(net_view(state, node_id, net_id, net, own));
    }

    NetMap {
        index: state.last_index,
        node_id: node_id.to_string(),
        local_vtep: node_vtep(state, node_id),
        data_path_port: state
            .cluster
            .as_ref()
            .map(|c| c.network.data_path_port)
            .unwrap_or(crate::network::DEFAULT_DATA_PATH_PORT),
        networks,
        local_tasks,
        // Filled in by the routing mesh's derivation.
        ingress_ports: Vec::new(),
        ingress_nodes: Vec::new(),
    }
}

fn net_view(
    state: &ClusterState,
    node_id: &str,
    net_id: &str,
    net: &crate::network::NetworkRecord,
    own: Option<&BTreeMap<String, Ipv4Addr>>,
) -> NetView {
    let mut remote = BTreeSet::new();
    for (task_id, attachments) in &state.task_networks {
        let Some(task) = state.tasks.get(task_id) else {
            continue;
        };
        let Some(task_node) = task.node_id.as_deref() else {
            continue;
        };
        if task_node == node_id || !task_is_live(task) {
            continue;
        }
        let Some(vtep) = node_vtep(state, task_node) else {
            continue;
        };
        for a in attachments.iter().filter(|a| a.network_id == net_id) {
            remote.insert(RemoteEndpoint { addr: a.addr, vtep });
        }
    }
    for (other, addrs) in &state.node_networks {
        if other == node_id {
            continue;
        }
        let (Some(addr), Some(vtep)) = (addrs.get(net_id), node_vtep(state, other)) else {
            continue;
        };
        remote.insert(RemoteEndpoint { addr: *addr, vtep });
    }

    let mut services = Vec::new();
    for service in state.services_on_network(net_id) {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let id = service.id.clone().unwrap_or_default();
        let aliases = service_networks(spec)
            .iter()
            .filter(|n| n.target.as_deref() == Some(net_id))
            .flat_map(|n| n.aliases.clone().unwrap_or_default())
            .collect();
        let mut backends: Vec<Ipv4Addr> = state
            .tasks_of_service(&id)
            .filter(|t| task_serves(state, t))
            .filter_map(|t| state.task_networks.get(t.id.as_deref()?))
            .flat_map(|a| a.iter().filter(|a| a.network_id == net_id).map(|a| a.addr))
            .collect();
        backends.sort();
        let mode = endpoint_mode(spec);
        services.push(ServiceView {
            vip: match mode {
                EndpointMode::Vip => state
                    .service_vips
                    .get(&id)
                    .and_then(|v| v.get(net_id))
                    .copied(),
                EndpointMode::Dnsrr => None,
            },
            id,
            name: spec.name.clone().unwrap_or_default(),
            aliases,
            mode,
            backends,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));

    NetView {
        id: net_id.to_string(),
        name: net.name().to_string(),
        vni: net.vni,
        subnet: net.subnet,
        gateway: net.gateway,
        mtu: net.mtu,
        encrypted: net.encrypted,
        internal: net.internal(),
        ingress: net.is_ingress(),
        local_addr: own.and_then(|o| o.get(net_id)).copied(),
        remote: remote.into_iter().collect(),
        services,
    }
}
