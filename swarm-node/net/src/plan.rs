//! The desired data plane of one node: a pure function of its network map.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use swarm_state::netmap::{NetMap, NetView};
use swarm_state::network::mac_of;

use crate::kernel::Mac;

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
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The Docker bridge networks the worker must create before [`crate::Dataplane::sync`].
    pub bridges: Vec<BridgeSpec>,
    /// What sync adds to each of those bridges, in the same order.
    pub overlays: Vec<OverlaySpec>,
    /// Every VIP of every service on this node's networks, in address order.
    pub vips: Vec<VipSpec>,
    /// Where DNS aimed at a gateway goes.
    pub dns_port: u16,
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
    /// This node's tunnel endpoint; the kernel picks a source when unknown.
    pub local_vtep: Option<Ipv4Addr>,
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
    for view in views {
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

        // One tunnel endpoint per address; an address of this node is never a peer.
        let mut peers: BTreeMap<Ipv4Addr, Peer> = BTreeMap::new();
        for remote in &view.remote {
            if Some(remote.addr) == view.local_addr || Some(remote.vtep) == map.local_vtep {
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
            local_vtep: map.local_vtep,
            bridge_mac: view.local_addr.map(|a| Mac(mac_of(a))),
            local_addr: view.local_addr,
            addrs,
            peers: peers.into_values().collect(),
        });
    }

    Desired {
        bridges,
        overlays,
        vips: vips.into_values().collect(),
        dns_port: facts.dns_port,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use swarm_state::netmap::{RemoteEndpoint, ServiceView};
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

    pub(crate) fn facts() -> LocalFacts {
        LocalFacts {
            underlay_mtu: 1500,
            dns_port: 5353,
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
    fn empty_map_plans_nothing() {
        let d = plan(&NetMap::default(), &facts());
        assert!(d.is_empty());
        assert!(d.bridges.is_empty() && d.vips.is_empty());
    }
}
