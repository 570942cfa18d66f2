//! The desired data plane of one node: a pure function of its network map.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use swarm_state::netmap::{NetMap, NetView};
use swarm_state::network::{mac_of, Protocol};

use crate::kernel::{Mac, RouteRule, TableRoute};
use crate::tunnel::{TunnelPeerSpec, TunnelSpec};

/// Bytes VXLAN adds to a frame (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// What WireGuard adds on top for an encrypted network (IPv4 20 + UDP 8 + WireGuard 32).
pub const WIREGUARD_OVERHEAD: u32 = 60;

/// What the data plane needs to know about this host besides the network map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFacts {
    /// The MTU of the interface holding the local VTEP (see [`crate::Dataplane::underlay_mtu`]).
    pub underlay_mtu: u32,
    /// The port swarm-dns listens on; DNS aimed at a gateway is redirected there.
    pub dns_port: u16,
    /// The routing mesh's fallback: masquerade every connection this node forwards through
    /// the mesh behind its own ingress address, as Docker does. The task then sees this
    /// node's address instead of the client's, but the reply no longer depends on the
    /// return-path routing of the task's node. Off by default.
    pub mesh_snat: bool,
}

/// Connection mark bit (`ct mark`) of every connection the routing mesh carries on this
/// node, whichever side it is on: the one rule in Docker's `DOCKER-USER` chain accepts it.
pub const MESH_CT: u32 = 0x1000;
/// Connection mark bit: this node DNATed the connection to a mesh backend.
pub const MESH_DNAT: u32 = 0x2000;
/// The bits of a return-path mark that [`return_mark`] sets; a reply whose connection mark
/// matches under this mask is routed back through the node that DNATed it.
pub const RETURN_MASK: u32 = 0xffff_0000 | MESH_CT | MESH_DNAT;
/// Routing tables of the return path: `RETURN_TABLE_BASE` plus the low 16 bits of the
/// other node's ingress address, so a table (and a rule) is ours when it is in
/// `RETURN_TABLE_BASE..=RETURN_TABLE_BASE + 0xffff`, and the same on every restart.
pub const RETURN_TABLE_BASE: u32 = 0x1_0000;
/// The priority of the return-path rules: after `lookup local` (0), before `main`.
pub const RETURN_RULE_PRIORITY: u32 = 100;

/// The connection (and packet) mark of a connection that reached this node through the mesh
/// of the node whose ingress address is `addr`: its low 16 bits in the mark's high half,
/// plus [`MESH_CT`]. The low 16 bits are unique among the addresses of any ingress subnet
/// of /16 or smaller (Docker's is a /24); [`plan`] drops a node that would collide.
pub fn return_mark(addr: Ipv4Addr) -> u32 {
    (u32::from(addr) & 0xffff) << 16 | MESH_CT
}

/// The routing table holding the return route through the node with ingress address `addr`.
pub fn return_table(addr: Ipv4Addr) -> u32 {
    RETURN_TABLE_BASE + (u32::from(addr) & 0xffff)
}

/// Whether a routing table number is one of the return path's.
pub fn is_return_table(table: u32) -> bool {
    (RETURN_TABLE_BASE..=RETURN_TABLE_BASE + 0xffff).contains(&table)
}

/// The kernel bridge of the overlay with this VNI (Docker creates it, named by us).
pub fn bridge_name(vni: u32) -> String {
    format!("swb{vni}")
}

/// The VXLAN device of the overlay with this VNI.
pub fn vxlan_name(vni: u32) -> String {
    format!("swv{vni}")
}

/// The MTU of an overlay: the user's, else the underlay's minus the VXLAN header (and minus
/// WireGuard's too when the network is encrypted), so no frame is ever fragmented or
/// silently dropped on the way.
pub fn effective_mtu(view: &NetView, underlay_mtu: u32) -> u32 {
    if let Some(mtu) = view.mtu {
        return mtu;
    }
    let overhead = VXLAN_OVERHEAD
        + if view.encrypted {
            WIREGUARD_OVERHEAD
        } else {
            0
        };
    underlay_mtu.saturating_sub(overhead)
}

/// The per-node desired data plane, a pure function of the netmap ([`plan`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// The Docker bridge networks the worker must create before [`crate::Dataplane::sync`].
    pub bridges: Vec<BridgeSpec>,
    /// What sync adds to each of those bridges, in the same order.
    pub overlays: Vec<OverlaySpec>,
    /// Every VIP of every service on this node's networks, in address order.
    pub vips: Vec<VipSpec>,
    /// Where DNS aimed at a gateway goes.
    pub dns_port: u16,
    /// The routing mesh: only when this node is on the ingress network with its own
    /// address there. A node that is not (yet) must not open the published ports.
    pub mesh: Option<MeshSpec>,
    /// The WireGuard interface, while an encrypted network is on this node.
    pub tunnel: Option<TunnelSpec>,
}

/// The routing mesh on this node: the published ports, and how replies of connections
/// other nodes forwarded here go back through them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSpec {
    /// The ingress network's bridge (`swb4096` usually).
    pub bridge: String,
    /// This node's own address on the ingress network.
    pub local_addr: Ipv4Addr,
    /// The published ports, in (protocol, published port) order.
    pub ports: Vec<MeshPort>,
    /// The other nodes on the ingress network, in address order.
    pub peers: Vec<IngressPeer>,
    /// Other nodes' underlay and ingress addresses. Their hosts' own connections through
    /// this node's mesh are SNATed, or a reply from a task on the calling node itself would
    /// be delivered locally (`lookup local` comes before any rule) without being un-NATed.
    pub node_addrs: BTreeSet<Ipv4Addr>,
    /// Masquerade every mesh connection behind `local_addr` ([`LocalFacts::mesh_snat`]).
    pub snat: bool,
    /// Every overlay bridge of this node: a reply may come back on any of them, since a
    /// task's default route is on its first network, which need not be ingress.
    pub reply_bridges: Vec<String>,
}

/// A port published in ingress mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPort {
    pub service: String,
    pub protocol: Protocol,
    /// The port accepted on every local address of the node.
    pub published: u16,
    /// The port the tasks listen on.
    pub target: u16,
    /// The tasks' ingress addresses, sorted; empty means: refuse at once.
    pub backends: Vec<Ipv4Addr>,
}

/// Another node on the ingress network, for the return path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IngressPeer {
    /// Its own address on the ingress network.
    pub addr: Ipv4Addr,
    /// Its ingress bridge's MAC, the source of the frames it forwards here.
    pub mac: Mac,
    /// [`return_mark`] of `addr`.
    pub mark: u32,
    /// [`return_table`] of `addr`.
    pub table: u32,
}

/// One Docker bridge network standing for an overlay on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub network_id: String,
    pub network_name: String,
    /// The kernel bridge name, `swb<VNI>` (`com.docker.network.bridge.name`).
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub internal: bool,
}

/// What sync makes on one overlay bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    pub network_id: String,
    pub vni: u32,
    pub bridge: String,
    pub vxlan: String,
    pub mtu: u32,
    /// The VXLAN UDP port (`--data-path-port`).
    pub dstport: u16,
    /// This node's tunnel endpoint; the kernel picks a source when unknown. For an
    /// encrypted network, the node's WireGuard address.
    pub local_vtep: Option<Ipv4Addr>,
    /// The network's VXLAN travels only inside the WireGuard tunnel: `nft` drops frames of
    /// its VNI that arrive any other way.
    pub encrypted: bool,
    /// The bridge's MAC, derived from the node's own address on the network: stable across
    /// bridge re-creations, and never the same on two nodes.
    pub bridge_mac: Option<Mac>,
    /// The node's own address, for the packets the host itself sends into the overlay
    /// (the gateway address is the same on every node, so replies to it would be lost).
    pub local_addr: Option<Ipv4Addr>,
    /// Every `/32` the bridge carries: the node's own address and the VIPs.
    pub addrs: BTreeSet<Ipv4Addr>,
    /// Addresses on other nodes, reached through the VXLAN device.
    pub peers: Vec<Peer>,
}

/// An address that lives on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub addr: Ipv4Addr,
    pub mac: Mac,
    /// The underlay address of the node it is on.
    pub vtep: Ipv4Addr,
}

/// A service VIP on one network and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub vip: Ipv4Addr,
    pub network_id: String,
    pub service: String,
    /// The serving tasks' addresses, sorted; empty means: refuse new connections.
    pub backends: Vec<Ipv4Addr>,
}

impl Desired {
    /// True when this node has no overlay network at all.
    pub fn is_empty(&self) -> bool {
        self.overlays.is_empty()
    }

    /// The backends of each VIP, to compare two desired states.
    pub(crate) fn backends_by_vip(&self) -> BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>> {
        self.vips
            .iter()
            .map(|v| (v.vip, v.backends.iter().copied().collect()))
            .collect()
    }

    /// The policy rules of the return path: for every other node and every overlay
    /// bridge, replies marked with that node's mark go to its table. `iif` matters: VXLAN's
    /// outer packet is routed with the inner packet's mark, and must not be caught.
    pub fn return_rules(&self) -> Vec<RouteRule> {
        let Some(mesh) = &self.mesh else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in &mesh.peers {
            for b in &mesh.reply_bridges {
                out.push(RouteRule {
                    priority: RETURN_RULE_PRIORITY,
                    fwmark: p.mark,
                    mask: RETURN_MASK,
                    iif: b.clone(),
                    table: p.table,
                });
            }
        }
        out.sort();
        out
    }

    /// The routes of the return path: one table per other node, whose default route goes
    /// through that node's ingress address.
    pub fn return_routes(&self) -> Vec<TableRoute> {
        let Some(mesh) = &self.mesh else {
            return Vec::new();
        };
        mesh.peers
            .iter()
            .map(|p| TableRoute {
                table: p.table,
                via: p.addr,
                dev: mesh.bridge.clone(),
            })
            .collect()
    }
}

/// The mesh of a node on the ingress network `view` with its own address there.
fn mesh(map: &NetMap, view: &NetView, local_addr: Ipv4Addr, facts: &LocalFacts) -> MeshSpec {
    let mut ports: BTreeMap<(Protocol, u16), MeshPort> = BTreeMap::new();
    for p in &map.ingress_ports {
        let mut backends = p.backends.clone();
        backends.sort();
        backends.dedup();
        // Two services never publish the same port (the allocator refuses it); should a
        // stale map say so, the first one wins on every node alike.
        ports
            .entry((p.protocol, p.published))
            .or_insert_with(|| MeshPort {
                service: p.service.clone(),
                protocol: p.protocol,
                published: p.published,
                target: p.target,
                backends,
            });
    }
    let mut peers: BTreeMap<u32, IngressPeer> = BTreeMap::new();
    let mut node_addrs = BTreeSet::new();
    let mut nodes = map.ingress_nodes.clone();
    nodes.sort();
    for n in &nodes {
        if n.addr == local_addr || Some(n.vtep) == map.local_vtep {
            continue;
        }
        node_addrs.insert(n.addr);
        node_addrs.insert(n.vtep);
        // Same low 16 bits as this node or an earlier one: only in an ingress subnet larger
        // than a /16; that node's replies then leave by the main table.
        if return_table(n.addr) == return_table(local_addr) {
            continue;
        }
        peers.entry(return_table(n.addr)).or_insert(IngressPeer {
            addr: n.addr,
            mac: Mac(mac_of(n.addr)),
            mark: return_mark(n.addr),
            table: return_table(n.addr),
        });
    }
    let mut peers: Vec<IngressPeer> = peers.into_values().collect();
    peers.sort();
    MeshSpec {
        bridge: bridge_name(view.vni),
        local_addr,
        ports: ports.into_values().collect(),
        peers,
        node_addrs,
        snat: facts.mesh_snat,
        reply_bridges: Vec::new(),
    }
}

/// The per-node desired data plane, a pure function of the netmap.
pub fn plan(map: &NetMap, facts: &LocalFacts) -> Desired {
    let mut views: Vec<&NetView> = map.networks.iter().collect();
    // Order by VNI so the same map always gives the same plan and ruleset.
    views.sort_by_key(|v| v.vni);
    views.dedup_by_key(|v| v.vni);

    let mut bridges = Vec::new();
    let mut overlays = Vec::new();
    let mut vips: BTreeMap<Ipv4Addr, VipSpec> = BTreeMap::new();
    let mut mesh_spec = None;
    for view in views {
        if let (true, Some(own), None) = (view.ingress, view.local_addr, &mesh_spec) {
            mesh_spec = Some(mesh(map, view, own, facts));
        }
        let mtu = effective_mtu(view, facts.underlay_mtu);
        bridges.push(BridgeSpec {
            network_id: view.id.clone(),
            network_name: view.name.clone(),
            bridge: bridge_name(view.vni),
            subnet: view.subnet,
            gateway: view.gateway,
            mtu,
            internal: view.internal,
        });

        let mut addrs: BTreeSet<Ipv4Addr> = view.local_addr.into_iter().collect();
        for service in &view.services {
            let Some(vip) = service.vip else { continue };
            addrs.insert(vip);
            let mut backends = service.backends.clone();
            backends.sort();
            backends.dedup();
            // Two services never share a VIP (the allocator refuses it); should a stale map
            // ever say so, the first one by name wins on every node alike.
            vips.entry(vip).or_insert_with(|| VipSpec {
                vip,
                network_id: view.id.clone(),
                service: service.name.clone(),
                backends,
            });
        }

        // An encrypted network's VXLAN runs between tunnel addresses. Without this node's
        // tunnel (its key not recorded yet) the network waits: never in clear.
        let local_vtep = if view.encrypted {
            match &map.tunnel {
                Some(t) => Some(t.local_addr),
                None => continue,
            }
        } else {
            map.local_vtep
        };
        // One tunnel endpoint per address; an address of this node is never a peer.
        let mut peers: BTreeMap<Ipv4Addr, Peer> = BTreeMap::new();
        for remote in &view.remote {
            if Some(remote.addr) == view.local_addr || Some(remote.vtep) == local_vtep {
                continue;
            }
            peers.entry(remote.addr).or_insert(Peer {
                addr: remote.addr,
                mac: Mac(mac_of(remote.addr)),
                vtep: remote.vtep,
            });
        }

        overlays.push(OverlaySpec {
            network_id: view.id.clone(),
            vni: view.vni,
            bridge: bridge_name(view.vni),
            vxlan: vxlan_name(view.vni),
            mtu,
            dstport: map.data_path_port,
            local_vtep,
            encrypted: view.encrypted,
            bridge_mac: view.local_addr.map(|a| Mac(mac_of(a))),
            local_addr: view.local_addr,
            addrs,
            peers: peers.into_values().collect(),
        });
    }

    if let Some(m) = &mut mesh_spec {
        m.reply_bridges = bridges.iter().map(|b| b.bridge.clone()).collect();
    }
    let tunnel = map
        .tunnel
        .as_ref()
        .filter(|_| overlays.iter().any(|o| o.encrypted))
        .map(|t| TunnelSpec {
            addr: Ipv4Net::new(t.local_addr, t.subnet.prefix_len())
                .expect("a subnet's prefix is valid"),
            mtu: facts.underlay_mtu.saturating_sub(WIREGUARD_OVERHEAD),
            port: t.port,
            peers: t
                .peers
                .iter()
                .map(|p| TunnelPeerSpec {
                    addr: p.addr,
                    public_key: p.public_key.clone(),
                    endpoint: std::net::SocketAddrV4::new(p.endpoint, t.port),
                })
                .collect(),
        });
    Desired {
        bridges,
        overlays,
        vips: vips.into_values().collect(),
        dns_port: facts.dns_port,
        mesh: mesh_spec,
        tunnel,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use swarm_state::netmap::{IngressPort, RemoteEndpoint, ServiceView};
    use swarm_state::network::EndpointMode;

    pub(crate) fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    pub(crate) fn service(name: &str, vip: Option<&str>, backends: &[&str]) -> ServiceView {
        ServiceView {
            id: format!("id-{name}"),
            name: name.into(),
            aliases: vec![],
            mode: if vip.is_some() {
                EndpointMode::Vip
            } else {
                EndpointMode::Dnsrr
            },
            vip: vip.map(ip),
            backends: backends.iter().map(|b| ip(b)).collect(),
        }
    }

    pub(crate) fn view(id: &str, vni: u32, third: u8) -> NetView {
        NetView {
            id: id.into(),
            name: format!("net-{id}"),
            vni,
            subnet: format!("10.0.{third}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, third, 1),
            mtu: None,
            encrypted: false,
            internal: false,
            ingress: false,
            local_addr: None,
            remote: vec![],
            services: vec![],
        }
    }

    /// Node 1 (VTEP 192.168.50.1) with a web service spread over itself and node 2.
    pub(crate) fn sample_map() -> NetMap {
        let mut front = view("front", 4097, 1);
        front.local_addr = Some(ip("10.0.1.241"));
        front.remote = vec![
            RemoteEndpoint {
                addr: ip("10.0.1.20"),
                vtep: ip("192.168.50.2"),
            },
            RemoteEndpoint {
                addr: ip("10.0.1.242"),
                vtep: ip("192.168.50.2"),
            },
        ];
        front.services = vec![
            service("idle", Some("10.0.1.253"), &[]),
            service("web", Some("10.0.1.254"), &["10.0.1.20", "10.0.1.10"]),
            service("worker", None, &["10.0.1.30"]),
        ];
        let mut back = view("back", 4098, 2);
        back.mtu = Some(1400);
        back.internal = true;
        back.services = vec![service("db", Some("10.0.2.254"), &["10.0.2.10"])];
        NetMap {
            tunnel: None,
            index: 7,
            node_id: "node1".into(),
            local_vtep: Some(ip("192.168.50.1")),
            data_path_port: 4789,
            networks: vec![back, front],
            local_tasks: vec![],
            ingress_ports: vec![],
            ingress_nodes: vec![],
        }
    }

    /// `sample_map` plus the ingress network, on which node 1 is 10.0.0.2, with three
    /// published ports (one without a task) and two other nodes.
    pub(crate) fn mesh_map() -> NetMap {
        let mut map = sample_map();
        let mut ingress = view("ingress", 4096, 0);
        ingress.name = "ingress".into();
        ingress.ingress = true;
        ingress.local_addr = Some(ip("10.0.0.2"));
        ingress.remote = vec![
            RemoteEndpoint {
                addr: ip("10.0.0.3"),
                vtep: ip("192.168.50.2"),
            },
            RemoteEndpoint {
                addr: ip("10.0.0.20"),
                vtep: ip("192.168.50.2"),
            },
        ];
        map.networks.push(ingress);
        let port = |proto, published, target, backends: &[&str]| IngressPort {
            service_id: "id-web".into(),
            service: "web".into(),
            protocol: proto,
            published,
            target,
            backends: backends.iter().map(|b| ip(b)).collect(),
        };
        map.ingress_ports = vec![
            port(Protocol::Tcp, 80, 8080, &["10.0.0.20", "10.0.0.10"]),
            port(Protocol::Tcp, 81, 81, &[]),
            port(Protocol::Udp, 53, 5353, &["10.0.0.20"]),
        ];
        map.ingress_nodes = vec![
            RemoteEndpoint {
                addr: ip("10.0.0.2"),
                vtep: ip("192.168.50.1"),
            },
            RemoteEndpoint {
                addr: ip("10.0.0.4"),
                vtep: ip("192.168.50.3"),
            },
            RemoteEndpoint {
                addr: ip("10.0.0.3"),
                vtep: ip("192.168.50.2"),
            },
        ];
        map
    }

    pub(crate) fn facts() -> LocalFacts {
        LocalFacts {
            underlay_mtu: 1500,
            dns_port: 5353,
            mesh_snat: false,
        }
    }

    #[test]
    fn mtu_is_the_users_or_derived_from_the_underlay() {
        let mut v = view("n", 4096, 1);
        assert_eq!(effective_mtu(&v, 1500), 1450);
        v.encrypted = true;
        assert_eq!(effective_mtu(&v, 1500), 1390);
        v.mtu = Some(1300);
        assert_eq!(effective_mtu(&v, 1500), 1300);
        v.mtu = None;
        assert_eq!(effective_mtu(&v, 20), 0);
    }

    /// `sample_map` with its back network encrypted, and, unless `no_tunnel`, the tunnel.
    fn encrypted_map(no_tunnel: bool) -> NetMap {
        let mut map = sample_map();
        let back = map.networks.iter_mut().find(|v| v.vni == 4098).unwrap();
        back.encrypted = true;
        back.mtu = None;
        back.remote = vec![RemoteEndpoint {
            addr: ip("10.0.2.20"),
            vtep: ip("10.255.0.2"),
        }];
        if !no_tunnel {
            map.tunnel = Some(swarm_state::netmap::TunnelMap {
                local_addr: ip("10.255.0.1"),
                subnet: "10.255.0.0/16".parse().unwrap(),
                port: 51820,
                peers: vec![swarm_state::netmap::TunnelPeer {
                    addr: ip("10.255.0.2"),
                    public_key: "k2".into(),
                    endpoint: ip("192.168.50.2"),
                }],
            });
        }
        map
    }

    #[test]
    fn an_encrypted_overlay_runs_between_tunnel_addresses() {
        let d = plan(&encrypted_map(false), &facts());
        let back = d.overlays.iter().find(|o| o.vni == 4098).unwrap();
        assert!(back.encrypted);
        assert_eq!(back.local_vtep, Some(ip("10.255.0.1")));
        assert_eq!(back.peers[0].vtep, ip("10.255.0.2"));
        assert_eq!(back.mtu, 1390, "VXLAN and WireGuard both fit in 1500");
        let front = d.overlays.iter().find(|o| o.vni == 4097).unwrap();
        assert!(!front.encrypted);
        assert_eq!(
            front.local_vtep,
            Some(ip("192.168.50.1")),
            "in clear as before"
        );
        let t = d.tunnel.expect("a tunnel");
        assert_eq!(t.addr.to_string(), "10.255.0.1/16");
        assert_eq!(t.mtu, 1440);
        assert_eq!(t.peers[0].endpoint.to_string(), "192.168.50.2:51820");
        let rules = crate::nft::ruleset(&plan(&encrypted_map(false), &facts()));
        assert!(
            rules.contains("udp dport 4789 @th,96,24 4098 iifname != \"swg0\" counter drop"),
            "{rules}"
        );
        assert!(!rules.contains("@th,96,24 4097"), "only the encrypted VNI");

        // Without this node's tunnel the encrypted network waits; the other goes on.
        let d = plan(&encrypted_map(true), &facts());
        assert!(d.tunnel.is_none());
        assert_eq!(d.overlays.len(), 1);
        assert_eq!(d.overlays[0].vni, 4097);
        assert_eq!(d.bridges.len(), 2, "the bridge is still made");
        // No encrypted network, no tunnel, even with a tunnel in the map.
        let mut clear = encrypted_map(false);
        clear.networks.iter_mut().for_each(|v| v.encrypted = false);
        assert!(plan(&clear, &facts()).tunnel.is_none());
    }

    #[test]
    fn names_carry_the_vni() {
        assert_eq!(bridge_name(4097), "swb4097");
        assert_eq!(vxlan_name(4097), "swv4097");
    }

    #[test]
    fn plan_orders_networks_by_vni_and_fills_bridges() {
        let d = plan(&sample_map(), &facts());
        assert_eq!(
            d.bridges,
            vec![
                BridgeSpec {
                    network_id: "front".into(),
                    network_name: "net-front".into(),
                    bridge: "swb4097".into(),
                    subnet: "10.0.1.0/24".parse().unwrap(),
                    gateway: ip("10.0.1.1"),
                    mtu: 1450,
                    internal: false,
                },
                BridgeSpec {
                    network_id: "back".into(),
                    network_name: "net-back".into(),
                    bridge: "swb4098".into(),
                    subnet: "10.0.2.0/24".parse().unwrap(),
                    gateway: ip("10.0.2.1"),
                    mtu: 1400,
                    internal: true,
                },
            ]
        );
        assert_eq!(d.dns_port, 5353);
    }

    #[test]
    fn plan_puts_node_address_and_vips_on_the_bridge() {
        let d = plan(&sample_map(), &facts());
        let front = &d.overlays[0];
        assert_eq!(front.vxlan, "swv4097");
        assert_eq!(front.dstport, 4789);
        assert_eq!(front.local_vtep, Some(ip("192.168.50.1")));
        assert_eq!(front.bridge_mac.unwrap().to_string(), "02:42:0a:00:01:f1");
        let addrs: Vec<_> = front.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.1.241", "10.0.1.253", "10.0.1.254"]);
        let peers: Vec<_> = front
            .peers
            .iter()
            .map(|p| format!("{} {} {}", p.addr, p.mac, p.vtep))
            .collect();
        assert_eq!(
            peers,
            [
                "10.0.1.20 02:42:0a:00:01:14 192.168.50.2",
                "10.0.1.242 02:42:0a:00:01:f2 192.168.50.2"
            ]
        );
        // Without an own address the bridge keeps Docker's MAC.
        let back = &d.overlays[1];
        assert_eq!(back.bridge_mac, None);
        assert_eq!(back.mtu, 1400);
        assert_eq!(
            back.addrs.iter().copied().collect::<Vec<_>>(),
            [ip("10.0.2.254")]
        );
    }

    #[test]
    fn plan_lists_vips_in_address_order_with_sorted_backends() {
        let d = plan(&sample_map(), &facts());
        let vips: Vec<_> = d
            .vips
            .iter()
            .map(|v| format!("{} {} {} {:?}", v.vip, v.network_id, v.service, v.backends))
            .collect();
        assert_eq!(
            vips,
            [
                "10.0.1.253 front idle []",
                "10.0.1.254 front web [10.0.1.10, 10.0.1.20]",
                "10.0.2.254 back db [10.0.2.10]",
            ]
        );
    }

    #[test]
    fn plan_skips_own_addresses_among_peers() {
        let mut map = sample_map();
        map.networks[1].remote.push(RemoteEndpoint {
            addr: ip("10.0.1.241"),
            vtep: ip("192.168.50.3"),
        });
        map.networks[1].remote.push(RemoteEndpoint {
            addr: ip("10.0.1.50"),
            vtep: ip("192.168.50.1"),
        });
        let d = plan(&map, &facts());
        assert_eq!(d.overlays[0].peers.len(), 2);
    }

    #[test]
    fn plan_carries_the_published_ports_and_the_return_path() {
        let d = plan(&mesh_map(), &facts());
        let m = d.mesh.as_ref().expect("on ingress with an own address");
        assert_eq!(m.bridge, "swb4096");
        assert_eq!(m.local_addr, ip("10.0.0.2"));
        assert!(!m.snat);
        let ports: Vec<_> = m
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{} {}->{} {:?}",
                    p.protocol.as_str(),
                    p.published,
                    p.target,
                    p.backends
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                "tcp 80->8080 [10.0.0.10, 10.0.0.20]",
                "tcp 81->81 []",
                "udp 53->5353 [10.0.0.20]"
            ]
        );
        // The other nodes, never this one, with derived MACs, marks and tables.
        let peers: Vec<_> = m
            .peers
            .iter()
            .map(|p| format!("{} {} {:#x} {}", p.addr, p.mac, p.mark, p.table))
            .collect();
        assert_eq!(
            peers,
            [
                "10.0.0.3 02:42:0a:00:00:03 0x31000 65539",
                "10.0.0.4 02:42:0a:00:00:04 0x41000 65540"
            ]
        );
        let addrs: Vec<_> = m.node_addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.3", "10.0.0.4", "192.168.50.2", "192.168.50.3"]
        );
        // Replies may come back on any overlay bridge of the node.
        assert_eq!(m.reply_bridges, ["swb4096", "swb4097", "swb4098"]);
        let rules: Vec<_> = d
            .return_rules()
            .iter()
            .map(|r| {
                format!(
                    "{} {:#x}/{:#x} {} {}",
                    r.priority, r.fwmark, r.mask, r.iif, r.table
                )
            })
            .collect();
        assert_eq!(rules.len(), 6);
        assert_eq!(rules[0], "100 0x31000/0xffff3000 swb4096 65539");
        let routes: Vec<_> = d
            .return_routes()
            .iter()
            .map(|r| format!("{} {} {}", r.table, r.via, r.dev))
            .collect();
        assert_eq!(routes, ["65539 10.0.0.3 swb4096", "65540 10.0.0.4 swb4096"]);
        // The ingress network is an overlay like the others.
        assert_eq!(d.overlays[0].bridge, "swb4096");
        assert_eq!(
            d.overlays[0].bridge_mac.unwrap().to_string(),
            "02:42:0a:00:00:02"
        );

        let snat = plan(
            &mesh_map(),
            &LocalFacts {
                mesh_snat: true,
                ..facts()
            },
        );
        assert!(snat.mesh.unwrap().snat);
    }

    #[test]
    fn no_mesh_without_an_own_ingress_address() {
        let mut map = mesh_map();
        map.networks
            .iter_mut()
            .find(|n| n.ingress)
            .unwrap()
            .local_addr = None;
        let d = plan(&map, &facts());
        assert_eq!(d.mesh, None);
        assert!(d.return_rules().is_empty() && d.return_routes().is_empty());
        // Nor without the ingress network at all, whatever the ports say.
        let mut map = mesh_map();
        map.networks.retain(|n| !n.ingress);
        assert_eq!(plan(&map, &facts()).mesh, None);
        // Ports are not needed for the return path.
        let mut map = mesh_map();
        map.ingress_ports.clear();
        let m = plan(&map, &facts()).mesh.unwrap();
        assert!(m.ports.is_empty());
        assert_eq!(m.peers.len(), 2);
    }

    #[test]
    fn return_marks_and_tables_come_from_the_low_16_bits() {
        assert_eq!(return_mark(ip("10.0.0.3")), 0x0003_1000);
        assert_eq!(return_mark(ip("10.255.1.2")), 0x0102_1000);
        assert_eq!(return_table(ip("10.255.1.2")), 0x1_0102);
        assert_eq!(
            return_mark(ip("10.255.1.2")) & RETURN_MASK,
            return_mark(ip("10.255.1.2"))
        );
        assert!(is_return_table(return_table(ip("10.255.255.255"))));
        assert!(!is_return_table(254) && !is_return_table(0x2_0000));
        // Never the hairpin bit of the packet mark.
        assert_eq!(return_mark(ip("10.0.255.255")) & 0x4000, 0);
    }

    #[test]
    fn empty_map_plans_nothing() {
        let d = plan(&NetMap::default(), &facts());
        assert!(d.is_empty());
        assert!(d.bridges.is_empty() && d.vips.is_empty());
    }
}
