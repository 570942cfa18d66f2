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
    /// This node's WireGuard interface and its peers, while one of its networks is
    /// encrypted. Those networks' remote endpoints then carry the peers' tunnel
    /// addresses as VTEPs, so their VXLAN only ever travels inside the tunnel.
    #[serde(default)]
    pub tunnel: Option<TunnelMap>,
}

/// This node's WireGuard interface (`swg0`) as its encrypted networks need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelMap {
    /// This node's address on `swg0`: the local VTEP of its encrypted networks.
    pub local_addr: Ipv4Addr,
    /// The tunnel subnet ([`crate::network::TUNNEL_SUBNET`]).
    pub subnet: Ipv4Net,
    /// The UDP port every node's tunnel listens on.
    pub port: u16,
    /// The nodes that share an encrypted network with this one, in address order.
    pub peers: Vec<TunnelPeer>,
}

/// Another node at the far end of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TunnelPeer {
    /// Its tunnel address: the only address its tunnel accepts from it, and the VTEP of
    /// its endpoints on encrypted networks.
    pub addr: Ipv4Addr,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// Its underlay address, where its tunnel listens.
    pub endpoint: Ipv4Addr,
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

/// Where another node's endpoints on a network are reached: its underlay address, or for
/// an encrypted network its tunnel address (a node without a tunnel yet is left out).
fn endpoint_vtep(state: &ClusterState, node_id: &str, encrypted: bool) -> Option<Ipv4Addr> {
    if encrypted {
        node_vtep(state, node_id)?;
        return state.node_tunnels.get(node_id).map(|t| t.addr);
    }
    node_vtep(state, node_id)
}

/// The tunnel of a node with encrypted networks: the nodes whose endpoints its views
/// reach through the tunnel are its peers.
fn tunnel_map(state: &ClusterState, node_id: &str, networks: &[NetView]) -> Option<TunnelMap> {
    if !networks.iter().any(|n| n.encrypted) {
        return None;
    }
    let own = state.node_tunnels.get(node_id)?;
    let wanted: BTreeSet<Ipv4Addr> = networks
        .iter()
        .filter(|n| n.encrypted)
        .flat_map(|n| n.remote.iter().map(|r| r.vtep))
        .collect();
    let mut peers: Vec<TunnelPeer> = state
        .node_tunnels
        .iter()
        .filter(|(id, t)| id.as_str() != node_id && wanted.contains(&t.addr))
        .filter_map(|(id, t)| {
            Some(TunnelPeer {
                addr: t.addr,
                public_key: t.public_key.clone(),
                endpoint: node_vtep(state, id)?,
            })
        })
        .collect();
    peers.sort();
    Some(TunnelMap {
        local_addr: own.addr,
        subnet: crate::network::tunnel_subnet(),
        port: crate::network::TUNNEL_PORT,
        peers,
    })
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
    let ingress_ports = ingress_ports(state);
    let ingress = state.ingress_network();
    let ingress_id = ingress.map(|n| n.id());
    let own = state.node_networks.get(node_id);
    if let Some(own) = own {
        // A node keeps its ingress address once it has one; the network is in its map
        // only while the mesh has ports (or a local task is on it).
        wanted.extend(
            own.keys()
                .map(String::as_str)
                .filter(|id| Some(*id) != ingress_id),
        );
    }
    let mut ingress_nodes = Vec::new();
    if let (Some(ingress_id), false) = (ingress_id, ingress_ports.is_empty()) {
        // Every node serves the mesh's ports, tasks of the services or not.
        wanted.insert(ingress_id);
        for (other, addrs) in &state.node_networks {
            if other == node_id {
                continue;
            }
            if let (Some(addr), Some(vtep)) = (addrs.get(ingress_id), node_vtep(state, other)) {
                ingress_nodes.push(RemoteEndpoint { addr: *addr, vtep });
            }
        }
        ingress_nodes.sort();
    }

    let mut networks = Vec::new();
    for net_id in wanted {
        let Some(net) = state.networks.get(net_id) else {
            continue;
        };
        networks.push(net_view(state, node_id, net_id, net, own));
    }

    let tunnel = tunnel_map(state, node_id, &networks);
    NetMap {
        tunnel,
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
        ingress_ports,
        ingress_nodes,
    }
}

/// Every ingress-mode port of every service, with the serving tasks' ingress addresses,
/// in (protocol, published port) order. Empty when the swarm has no ingress network.
fn ingress_ports(state: &ClusterState) -> Vec<IngressPort> {
    let Some(ingress) = state.ingress_network() else {
        return Vec::new();
    };
    let ingress_id = ingress.id();
    let mut out = Vec::new();
    for (service_id, ports) in &state.service_ports {
        let Some(service) = state.services.get(service_id) else {
            continue;
        };
        let name = service
            .spec
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_default();
        let mut backends: Vec<Ipv4Addr> = state
            .tasks_of_service(service_id)
            .filter(|t| task_serves(state, t))
            .filter_map(|t| state.task_networks.get(t.id.as_deref()?))
            .flat_map(|a| {
                a.iter()
                    .filter(|a| a.network_id == ingress_id)
                    .map(|a| a.addr)
            })
            .collect();
        backends.sort();
        for p in ports.iter().filter(|p| crate::ports::is_ingress(p)) {
            let (Some((protocol, published)), Some(target)) = (
                crate::ports::key_of(p),
                p.target_port.and_then(|t| u16::try_from(t).ok()),
            ) else {
                continue;
            };
            out.push(IngressPort {
                service_id: service_id.clone(),
                service: name.clone(),
                protocol,
                published,
                target,
                backends: backends.clone(),
            });
        }
    }
    out.sort_by_key(|p| (p.protocol, p.published));
    out
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
        let Some(vtep) = endpoint_vtep(state, task_node, net.encrypted) else {
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
        let (Some(addr), Some(vtep)) = (
            addrs.get(net_id),
            endpoint_vtep(state, other, net.encrypted),
        ) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{
        EndpointPortConfig, EndpointPortConfigProtocolEnum as Proto,
        EndpointPortConfigPublishModeEnum as Mode, Node, NodeStatus, Service, ServiceSpec, Task,
    };
    use crate::network::{Attachment, Protocol};

    fn ready(id: &str, vtep: &str) -> Node {
        Node {
            id: Some(id.into()),
            status: Some(NodeStatus {
                state: Some(NodeState::READY),
                addr: Some(vtep.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(published: i64, target: i64, proto: Proto) -> EndpointPortConfig {
        EndpointPortConfig {
            protocol: Some(proto),
            target_port: Some(target),
            published_port: Some(published),
            publish_mode: Some(Mode::INGRESS),
            ..Default::default()
        }
    }

    fn task(id: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: Some(id.into()),
            service_id: Some("web".into()),
            node_id: Some(node.into()),
            desired_state: Some(TaskState::RUNNING),
            status: Some(crate::status(state, "", "t")),
            ..Default::default()
        }
    }

    /// Three Ready nodes; web publishes 9200/tcp, 53/udp and 80/tcp, its tasks run on n1.
    fn mesh() -> ClusterState {
        let mut s = ClusterState::default();
        let mut ingress = crate::network::tests::record("ing", "10.0.0.0/24");
        ingress.network.ingress = Some(true);
        s.networks.insert("ing".into(), ingress);
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            s.nodes
                .insert(n.to_string(), ready(n, &format!("192.0.2.{}", i + 1)));
            s.node_networks.insert(
                n.to_string(),
                [("ing".to_string(), Ipv4Addr::new(10, 0, 0, 100 + i as u8))].into(),
            );
        }
        s.services.insert(
            "web".into(),
            Service {
                id: Some("web".into()),
                spec: Some(ServiceSpec {
                    name: Some("web".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        s.service_ports.insert(
            "web".into(),
            vec![
                port(9200, 9200, Proto::TCP),
                port(53, 5353, Proto::UDP),
                port(80, 8080, Proto::TCP),
            ],
        );
        for (id, st, addr) in [
            ("t1", TaskState::RUNNING, 11),
            ("t2", TaskState::RUNNING, 10),
            ("t3", TaskState::STARTING, 12),
        ] {
            s.tasks.insert(id.into(), task(id, "n1", st));
            s.task_networks.insert(
                id.into(),
                vec![Attachment {
                    network_id: "ing".into(),
                    addr: Ipv4Addr::new(10, 0, 0, addr),
                }],
            );
        }
        s
    }

    #[test]
    fn every_node_gets_the_ports_with_the_serving_backends() {
        let s = mesh();
        let map = netmap_for_node(&s, "n3");
        let ports: Vec<(Protocol, u16, u16)> = map
            .ingress_ports
            .iter()
            .map(|p| (p.protocol, p.published, p.target))
            .collect();
        assert_eq!(
            ports,
            [
                (Protocol::Tcp, 80, 8080),
                (Protocol::Tcp, 9200, 9200),
                (Protocol::Udp, 53, 5353)
            ]
        );
        let backends: Vec<Ipv4Addr> =
            vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)];
        assert!(map.ingress_ports.iter().all(|p| p.backends == backends));
        assert_eq!(map.ingress_ports[0].service, "web");

        // n3 has no task, yet has the ingress network with its own address.
        assert!(map.local_tasks.is_empty());
        assert_eq!(map.networks.len(), 1);
        assert!(map.networks[0].ingress);
        assert_eq!(
            map.networks[0].local_addr,
            Some(Ipv4Addr::new(10, 0, 0, 102))
        );
        // The other nodes' ingress addresses, with their VTEPs, never its own.
        assert_eq!(
            map.ingress_nodes,
            [
                RemoteEndpoint {
                    addr: Ipv4Addr::new(10, 0, 0, 100),
                    vtep: Ipv4Addr::new(192, 0, 2, 1)
                },
                RemoteEndpoint {
                    addr: Ipv4Addr::new(10, 0, 0, 101),
                    vtep: Ipv4Addr::new(192, 0, 2, 2)
                },
            ]
        );
        assert_eq!(netmap_for_node(&s, "n1").local_tasks.len(), 3);
    }

    #[test]
    fn without_ports_ingress_leaves_the_map() {
        let mut s = mesh();
        s.service_ports.clear();
        s.tasks.clear();
        s.task_networks.clear();
        let map = netmap_for_node(&s, "n3");
        assert!(map.ingress_ports.is_empty());
        assert!(map.ingress_nodes.is_empty());
        assert!(
            map.networks.is_empty(),
            "the kept node address alone does not bring it"
        );
    }

    fn key(byte: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    /// n1 and n2 run tasks of an encrypted network; n3 runs one too but has no tunnel yet.
    fn encrypted() -> ClusterState {
        let mut s = ClusterState::default();
        let mut net = crate::network::tests::record("sec", "10.0.5.0/24");
        net.encrypted = true;
        s.networks.insert("sec".into(), net);
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            s.nodes
                .insert(n.to_string(), ready(n, &format!("192.0.2.{}", i + 1)));
            let id = format!("t{}", i + 1);
            s.tasks.insert(id.clone(), task(&id, n, TaskState::RUNNING));
            s.task_networks.insert(
                id,
                vec![Attachment {
                    network_id: "sec".into(),
                    addr: Ipv4Addr::new(10, 0, 5, 10 + i as u8),
                }],
            );
        }
        for (i, n) in ["n1", "n2"].iter().enumerate() {
            s.node_tunnels.insert(
                n.to_string(),
                crate::network::NodeTunnel {
                    public_key: key(i as u8 + 1),
                    addr: Ipv4Addr::new(10, 255, 0, i as u8 + 1),
                },
            );
        }
        s
    }

    #[test]
    fn an_encrypted_network_is_reached_through_the_peers_tunnels() {
        let s = encrypted();
        let map = netmap_for_node(&s, "n1");
        let view = &map.networks[0];
        assert!(view.encrypted);
        // n2's task at n2's tunnel address; n3, without a tunnel, is left out: never in
        // clear.
        assert_eq!(
            view.remote,
            [RemoteEndpoint {
                addr: Ipv4Addr::new(10, 0, 5, 11),
                vtep: Ipv4Addr::new(10, 255, 0, 2)
            }]
        );
        let tunnel = map.tunnel.expect("n1 has its tunnel");
        assert_eq!(tunnel.local_addr, Ipv4Addr::new(10, 255, 0, 1));
        assert_eq!(tunnel.port, crate::network::TUNNEL_PORT);
        assert_eq!(
            tunnel.peers,
            [TunnelPeer {
                addr: Ipv4Addr::new(10, 255, 0, 2),
                public_key: key(2),
                endpoint: Ipv4Addr::new(192, 0, 2, 2),
            }]
        );
        // A node without its tunnel has no tunnel in its map: its data plane waits.
        assert!(netmap_for_node(&s, "n3").tunnel.is_none());
    }

    #[test]
    fn a_node_without_encrypted_networks_has_no_tunnel() {
        let mut s = encrypted();
        s.networks.get_mut("sec").unwrap().encrypted = false;
        let map = netmap_for_node(&s, "n1");
        assert!(map.tunnel.is_none());
        assert_eq!(
            map.networks[0].remote.len(),
            2,
            "clear VXLAN to both others"
        );
        assert_eq!(map.networks[0].remote[0].vtep, Ipv4Addr::new(192, 0, 2, 2));
    }
}
