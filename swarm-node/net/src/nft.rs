//! The nftables table `ip swarmnet`, rendered from the desired state by a pure function.
//!
//! What it does:
//! - A connection to a VIP is DNATed to one of the VIP's backends, chosen at random
//!   (`numgen`), on every port and protocol (Docker's VIPs forward every port). The client
//!   address is kept: replies bridged straight back are un-NATed because
//!   `bridge-nf-call-iptables` is on.
//! - A backend calling its own VIP would get the reply from itself, straight and un-NATed;
//!   such packets are marked ([`HAIRPIN_MARK`]) and masqueraded behind the host.
//! - Packets the host itself sends into an overlay leave from the node's own address there,
//!   not from the gateway address that every node shares.
//! - A VIP without backends refuses new connections at once instead of timing out.
//! - DNS aimed at a gateway from a container is redirected to swarm-dns, and accepted in
//!   input.
//!
//! The routing mesh, when the node has its own ingress address ([`crate::MeshSpec`]):
//! - `fib daddr type local . l4proto . dport` (prerouting and output, so 127.0.0.1 too) goes
//!   to a random task (`numgen`) at its target port; the connection gets the mark bits
//!   [`MESH_CT`] | [`MESH_DNAT`]. A port with no task is refused in input (TCP reset, ICMP
//!   port unreachable). A VIP that refuses is not a mesh address.
//! - The client's address is kept. On the task's node, a new connection coming in on the
//!   ingress bridge from another node's bridge MAC (map `ingress_macs`; a container's MAC
//!   is never there) takes that node's return mark; in the reply direction, on any overlay
//!   bridge, the connection mark becomes the packet mark, which the policy rules route
//!   back through that node (see [`crate::Desired::return_rules`]).
//! - Host-originated packets leave with the node's ingress address (the rule above for
//!   every overlay); so do connections from other nodes' hosts (set `node_addrs`), whose
//!   replies from a task on the caller would otherwise be delivered locally un-NATed. With
//!   the SNAT fallback every mesh connection is masqueraded behind the ingress address.
//! - `route_localnet` is on for the ingress bridge (so 127.0.0.1 can be DNATed out of it);
//!   `mangle_pre` therefore drops 127/8, source or destination, arriving on anything but lo.
//! - Docker's `FORWARD` chain is not ours: see the `DOCKER-USER` rule in
//!   [`crate::Dataplane::sync`]. An accept here would not help against a drop there.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::plan::{Desired, MeshPort, MESH_CT, MESH_DNAT};

/// The table's family and name.
pub const TABLE: &str = "ip swarmnet";
/// Marks a backend's connection to its own VIP, for masquerading.
pub const HAIRPIN_MARK: u32 = 0x4000;

fn chain_of(vip: Ipv4Addr) -> String {
    let o = vip.octets();
    format!("vip_{}_{}_{}_{}", o[0], o[1], o[2], o[3])
}

fn mesh_chain(p: &MeshPort) -> String {
    format!("mesh_{}_{}", p.protocol.as_str(), p.published)
}

fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole table as one `nft -f` script. The table is declared, deleted and declared again
/// with its content in the same transaction, so the swap is atomic and nothing stale
/// survives it.
pub fn ruleset(desired: &Desired) -> String {
    let mut s = String::new();
    let served: Vec<_> = desired
        .vips
        .iter()
        .filter(|v| !v.backends.is_empty())
        .collect();
    let down: Vec<_> = desired
        .vips
        .iter()
        .filter(|v| v.backends.is_empty())
        .collect();
    let gateways: Vec<Ipv4Addr> = {
        let mut g: Vec<_> = desired.bridges.iter().map(|b| b.gateway).collect();
        g.sort();
        g.dedup();
        g
    };
    let port = desired.dns_port;

    // Writing to a String cannot fail.
    let _ = writeln!(s, "table {TABLE} {{}}");
    let _ = writeln!(s, "delete table {TABLE}");
    let _ = writeln!(s, "table {TABLE} {{");

    let _ = writeln!(s, "\tset dns_gateways {{\n\t\ttype ipv4_addr");
    if !gateways.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", list(&gateways));
    }
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(s, "\tset vips_down {{\n\t\ttype ipv4_addr");
    if !down.is_empty() {
        let _ = writeln!(
            s,
            "\t\telements = {{ {} }}",
            list(down.iter().map(|v| v.vip))
        );
    }
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(s, "\tmap vips {{\n\t\ttype ipv4_addr : verdict");
    if !served.is_empty() {
        let elements = served
            .iter()
            .map(|v| format!("{} : goto {}", v.vip, chain_of(v.vip)));
        let _ = writeln!(s, "\t\telements = {{ {} }}", list(elements));
    }
    let _ = writeln!(s, "\t}}");

    if let Some(m) = &desired.mesh {
        let served = m.ports.iter().filter(|p| !p.backends.is_empty());
        let down: Vec<_> = m.ports.iter().filter(|p| p.backends.is_empty()).collect();
        let _ = writeln!(s, "\tset mesh_down {{\n\t\ttype inet_proto . inet_service");
        if !down.is_empty() {
            let elements = down
                .iter()
                .map(|p| format!("{} . {}", p.protocol.as_str(), p.published));
            let _ = writeln!(s, "\t\telements = {{ {} }}", list(elements));
        }
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(
            s,
            "\tmap mesh {{\n\t\ttype inet_proto . inet_service : verdict"
        );
        let elements: Vec<String> = served
            .map(|p| {
                format!(
                    "{} . {} : goto {}",
                    p.protocol.as_str(),
                    p.published,
                    mesh_chain(p)
                )
            })
            .collect();
        if !elements.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", list(elements));
        }
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "\tset node_addrs {{\n\t\ttype ipv4_addr");
        if !m.node_addrs.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", list(&m.node_addrs));
        }
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "\tmap ingress_macs {{\n\t\ttype ether_addr : mark");
        if !m.peers.is_empty() {
            let elements = m.peers.iter().map(|p| format!("{} : {:#x}", p.mac, p.mark));
            let _ = writeln!(s, "\t\telements = {{ {} }}", list(elements));
        }
        let _ = writeln!(s, "\t}}");

        let _ = writeln!(
            s,
            "\tchain mangle_pre {{\n\t\ttype filter hook prerouting priority mangle; policy accept;"
        );
        // route_localnet is on for the ingress bridge: 127/8 must never come from outside.
        let _ = writeln!(s, "\t\tiifname != \"lo\" ip saddr 127.0.0.0/8 drop");
        let _ = writeln!(s, "\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 drop");
        let _ = writeln!(
            s,
            "\t\tiifname \"{}\" ct state new ct mark set ether saddr map @ingress_macs",
            m.bridge
        );
        let _ = writeln!(
            s,
            "\t\tiifname \"swb*\" ct direction reply ct mark & {:#x} == {MESH_CT:#x} meta mark set ct mark",
            MESH_CT | MESH_DNAT
        );
        let _ = writeln!(s, "\t}}");
    }
    // Published ports are served on every local address but a VIP that refuses.
    let mesh_rule = if desired.mesh.is_some() {
        "\n\t\tfib daddr type local ip daddr != @vips_down meta l4proto . th dport vmap @mesh"
    } else {
        ""
    };

    let _ = writeln!(
        s,
        "\tchain nat_pre {{\n\t\ttype nat hook prerouting priority dstnat - 10; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tiifname \"swb*\" ip daddr @dns_gateways meta l4proto {{ tcp, udp }} th dport 53 redirect to :{port}"
    );
    let _ = writeln!(s, "\t\tip daddr vmap @vips{mesh_rule}\n\t}}");

    // Same priority as dstnat - 10, for the output hook.
    let _ = writeln!(
        s,
        "\tchain nat_out {{\n\t\ttype nat hook output priority -110; policy accept;\n\t\tip daddr vmap @vips{mesh_rule}\n\t}}"
    );

    let _ = writeln!(
        s,
        "\tchain nat_post {{\n\t\ttype nat hook postrouting priority srcnat - 10; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tmeta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} masquerade"
    );
    if let Some(m) = &desired.mesh {
        // The fallback hides every client; otherwise only other nodes' hosts are hidden.
        let only_nodes = if m.snat { "" } else { "ip saddr @node_addrs " };
        let _ = writeln!(
            s,
            "\t\toifname \"{}\" ct mark & {MESH_DNAT:#x} == {MESH_DNAT:#x} {only_nodes}snat to {}",
            m.bridge, m.local_addr
        );
    }
    for o in &desired.overlays {
        if let Some(own) = o.local_addr {
            let _ = writeln!(
                s,
                "\t\toifname \"{}\" fib saddr type local ip saddr != {own} snat to {own}",
                o.bridge
            );
        }
    }
    let _ = writeln!(s, "\t}}");

    let _ = writeln!(
        s,
        "\tchain filter_in {{\n\t\ttype filter hook input priority filter - 10; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tiifname \"swb*\" meta l4proto {{ tcp, udp }} th dport {port} accept"
    );
    let _ = writeln!(
        s,
        "\t\tip daddr @vips_down ct state new meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(s, "\t\tip daddr @vips_down ct state new reject");
    // An encrypted network's frames come only out of the tunnel: the same VNI arriving in
    // clear on the underlay is forged or misrouted, and must not reach its bridge
    // (the class of CVE-2023-28840). The VNI is the 24 bits after the UDP header's 8 bytes
    // and the VXLAN flags' 4.
    for o in desired.overlays.iter().filter(|o| o.encrypted) {
        let _ = writeln!(
            s,
            "\t\tudp dport {} @th,96,24 {} iifname != \"{}\" counter drop",
            o.dstport,
            o.vni,
            crate::tunnel::TUNNEL_DEV
        );
    }
    if desired.mesh.is_some() {
        let _ = writeln!(
            s,
            "\t\tmeta l4proto . th dport @mesh_down ct state new meta l4proto tcp reject with tcp reset"
        );
        let _ = writeln!(
            s,
            "\t\tmeta l4proto . th dport @mesh_down ct state new reject"
        );
    }
    let _ = writeln!(s, "\t}}");

    for v in &served {
        let chain = chain_of(v.vip);
        let _ = writeln!(s, "\tchain {chain} {{");
        if v.backends.len() == 1 {
            let _ = writeln!(s, "\t\tgoto {chain}_b0");
        } else {
            let arms = (0..v.backends.len()).map(|i| format!("{i} : goto {chain}_b{i}"));
            let _ = writeln!(
                s,
                "\t\tnumgen random mod {} vmap {{ {} }}",
                v.backends.len(),
                list(arms)
            );
        }
        let _ = writeln!(s, "\t}}");
        for (i, b) in v.backends.iter().enumerate() {
            let _ = writeln!(
                s,
                "\tchain {chain}_b{i} {{\n\t\tip saddr {b} meta mark set meta mark | {HAIRPIN_MARK:#x}\n\t\tdnat to {b}\n\t}}"
            );
        }
    }
    for p in desired
        .mesh
        .iter()
        .flat_map(|m| &m.ports)
        .filter(|p| !p.backends.is_empty())
    {
        let chain = mesh_chain(p);
        let _ = writeln!(s, "\tchain {chain} {{");
        let _ = writeln!(s, "\t\tct mark set ct mark | {:#x}", MESH_CT | MESH_DNAT);
        if p.backends.len() == 1 {
            let _ = writeln!(s, "\t\tgoto {chain}_b0");
        } else {
            let arms = (0..p.backends.len()).map(|i| format!("{i} : goto {chain}_b{i}"));
            let _ = writeln!(
                s,
                "\t\tnumgen random mod {} vmap {{ {} }}",
                p.backends.len(),
                list(arms)
            );
        }
        let _ = writeln!(s, "\t}}");
        let proto = p.protocol.as_str();
        for (i, b) in p.backends.iter().enumerate() {
            let _ = writeln!(
                s,
                "\tchain {chain}_b{i} {{\n\t\tip saddr {b} meta mark set meta mark | {HAIRPIN_MARK:#x}\n\t\tmeta l4proto {proto} dnat to {b}:{}\n\t}}",
                p.target
            );
        }
    }
    let _ = writeln!(s, "}}");
    s
}

/// Deletes the table if it exists, in one transaction.
pub fn delete_script() -> String {
    format!("table {TABLE} {{}}\ndelete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::plan::tests::{facts, mesh_map, sample_map};
    use crate::plan::LocalFacts;
    use expect_test::expect;

    #[test]
    fn sample_ruleset() {
        let d = plan(&sample_map(), &facts());
        expect![[r#"
            table ip swarmnet {}
            delete table ip swarmnet
            table ip swarmnet {
            	set dns_gateways {
            		type ipv4_addr
            		elements = { 10.0.1.1, 10.0.2.1 }
            	}
            	set vips_down {
            		type ipv4_addr
            		elements = { 10.0.1.253 }
            	}
            	map vips {
            		type ipv4_addr : verdict
            		elements = { 10.0.1.254 : goto vip_10_0_1_254, 10.0.2.254 : goto vip_10_0_2_254 }
            	}
            	chain nat_pre {
            		type nat hook prerouting priority dstnat - 10; policy accept;
            		iifname "swb*" ip daddr @dns_gateways meta l4proto { tcp, udp } th dport 53 redirect to :5353
            		ip daddr vmap @vips
            	}
            	chain nat_out {
            		type nat hook output priority -110; policy accept;
            		ip daddr vmap @vips
            	}
            	chain nat_post {
            		type nat hook postrouting priority srcnat - 10; policy accept;
            		meta mark & 0x4000 == 0x4000 masquerade
            		oifname "swb4097" fib saddr type local ip saddr != 10.0.1.241 snat to 10.0.1.241
            	}
            	chain filter_in {
            		type filter hook input priority filter - 10; policy accept;
            		iifname "swb*" meta l4proto { tcp, udp } th dport 5353 accept
            		ip daddr @vips_down ct state new meta l4proto tcp reject with tcp reset
            		ip daddr @vips_down ct state new reject
            	}
            	chain vip_10_0_1_254 {
            		numgen random mod 2 vmap { 0 : goto vip_10_0_1_254_b0, 1 : goto vip_10_0_1_254_b1 }
            	}
            	chain vip_10_0_1_254_b0 {
            		ip saddr 10.0.1.10 meta mark set meta mark | 0x4000
            		dnat to 10.0.1.10
            	}
            	chain vip_10_0_1_254_b1 {
            		ip saddr 10.0.1.20 meta mark set meta mark | 0x4000
            		dnat to 10.0.1.20
            	}
            	chain vip_10_0_2_254 {
            		goto vip_10_0_2_254_b0
            	}
            	chain vip_10_0_2_254_b0 {
            		ip saddr 10.0.2.10 meta mark set meta mark | 0x4000
            		dnat to 10.0.2.10
            	}
            }
        "#]]
        .assert_eq(&ruleset(&d));
    }

    #[test]
    fn network_without_services() {
        let mut map = sample_map();
        map.networks.retain(|n| n.id == "front");
        map.networks[0].services.clear();
        map.networks[0].local_addr = None;
        let d = plan(&map, &facts());
        expect![[r#"
            table ip swarmnet {}
            delete table ip swarmnet
            table ip swarmnet {
            	set dns_gateways {
            		type ipv4_addr
            		elements = { 10.0.1.1 }
            	}
            	set vips_down {
            		type ipv4_addr
            	}
            	map vips {
            		type ipv4_addr : verdict
            	}
            	chain nat_pre {
            		type nat hook prerouting priority dstnat - 10; policy accept;
            		iifname "swb*" ip daddr @dns_gateways meta l4proto { tcp, udp } th dport 53 redirect to :5353
            		ip daddr vmap @vips
            	}
            	chain nat_out {
            		type nat hook output priority -110; policy accept;
            		ip daddr vmap @vips
            	}
            	chain nat_post {
            		type nat hook postrouting priority srcnat - 10; policy accept;
            		meta mark & 0x4000 == 0x4000 masquerade
            	}
            	chain filter_in {
            		type filter hook input priority filter - 10; policy accept;
            		iifname "swb*" meta l4proto { tcp, udp } th dport 5353 accept
            		ip daddr @vips_down ct state new meta l4proto tcp reject with tcp reset
            		ip daddr @vips_down ct state new reject
            	}
            }
        "#]]
        .assert_eq(&ruleset(&d));
    }

    #[test]
    fn mesh_ruleset() {
        let d = plan(&mesh_map(), &facts());
        let text = ruleset(&d);
        expect![[r#"
            table ip swarmnet {}
            delete table ip swarmnet
            table ip swarmnet {
            	set dns_gateways {
            		type ipv4_addr
            		elements = { 10.0.0.1, 10.0.1.1, 10.0.2.1 }
            	}
            	set vips_down {
            		type ipv4_addr
            		elements = { 10.0.1.253 }
            	}
            	map vips {
            		type ipv4_addr : verdict
            		elements = { 10.0.1.254 : goto vip_10_0_1_254, 10.0.2.254 : goto vip_10_0_2_254 }
            	}
            	set mesh_down {
            		type inet_proto . inet_service
            		elements = { tcp . 81 }
            	}
            	map mesh {
            		type inet_proto . inet_service : verdict
            		elements = { tcp . 80 : goto mesh_tcp_80, udp . 53 : goto mesh_udp_53 }
            	}
            	set node_addrs {
            		type ipv4_addr
            		elements = { 10.0.0.3, 10.0.0.4, 192.168.50.2, 192.168.50.3 }
            	}
            	map ingress_macs {
            		type ether_addr : mark
            		elements = { 02:42:0a:00:00:03 : 0x31000, 02:42:0a:00:00:04 : 0x41000 }
            	}
            	chain mangle_pre {
            		type filter hook prerouting priority mangle; policy accept;
            		iifname != "lo" ip saddr 127.0.0.0/8 drop
            		iifname != "lo" ip daddr 127.0.0.0/8 drop
            		iifname "swb4096" ct state new ct mark set ether saddr map @ingress_macs
            		iifname "swb*" ct direction reply ct mark & 0x3000 == 0x1000 meta mark set ct mark
            	}
            	chain nat_pre {
            		type nat hook prerouting priority dstnat - 10; policy accept;
            		iifname "swb*" ip daddr @dns_gateways meta l4proto { tcp, udp } th dport 53 redirect to :5353
            		ip daddr vmap @vips
            		fib daddr type local ip daddr != @vips_down meta l4proto . th dport vmap @mesh
            	}
            	chain nat_out {
            		type nat hook output priority -110; policy accept;
            		ip daddr vmap @vips
            		fib daddr type local ip daddr != @vips_down meta l4proto . th dport vmap @mesh
            	}
            	chain nat_post {
            		type nat hook postrouting priority srcnat - 10; policy accept;
            		meta mark & 0x4000 == 0x4000 masquerade
            		oifname "swb4096" ct mark & 0x2000 == 0x2000 ip saddr @node_addrs snat to 10.0.0.2
            		oifname "swb4096" fib saddr type local ip saddr != 10.0.0.2 snat to 10.0.0.2
            		oifname "swb4097" fib saddr type local ip saddr != 10.0.1.241 snat to 10.0.1.241
            	}
            	chain filter_in {
            		type filter hook input priority filter - 10; policy accept;
            		iifname "swb*" meta l4proto { tcp, udp } th dport 5353 accept
            		ip daddr @vips_down ct state new meta l4proto tcp reject with tcp reset
            		ip daddr @vips_down ct state new reject
            		meta l4proto . th dport @mesh_down ct state new meta l4proto tcp reject with tcp reset
            		meta l4proto . th dport @mesh_down ct state new reject
            	}
            	chain vip_10_0_1_254 {
            		numgen random mod 2 vmap { 0 : goto vip_10_0_1_254_b0, 1 : goto vip_10_0_1_254_b1 }
            	}
            	chain vip_10_0_1_254_b0 {
            		ip saddr 10.0.1.10 meta mark set meta mark | 0x4000
            		dnat to 10.0.1.10
            	}
            	chain vip_10_0_1_254_b1 {
            		ip saddr 10.0.1.20 meta mark set meta mark | 0x4000
            		dnat to 10.0.1.20
            	}
            	chain vip_10_0_2_254 {
            		goto vip_10_0_2_254_b0
            	}
            	chain vip_10_0_2_254_b0 {
            		ip saddr 10.0.2.10 meta mark set meta mark | 0x4000
            		dnat to 10.0.2.10
            	}
            	chain mesh_tcp_80 {
            		ct mark set ct mark | 0x3000
            		numgen random mod 2 vmap { 0 : goto mesh_tcp_80_b0, 1 : goto mesh_tcp_80_b1 }
            	}
            	chain mesh_tcp_80_b0 {
            		ip saddr 10.0.0.10 meta mark set meta mark | 0x4000
            		meta l4proto tcp dnat to 10.0.0.10:8080
            	}
            	chain mesh_tcp_80_b1 {
            		ip saddr 10.0.0.20 meta mark set meta mark | 0x4000
            		meta l4proto tcp dnat to 10.0.0.20:8080
            	}
            	chain mesh_udp_53 {
            		ct mark set ct mark | 0x3000
            		goto mesh_udp_53_b0
            	}
            	chain mesh_udp_53_b0 {
            		ip saddr 10.0.0.20 meta mark set meta mark | 0x4000
            		meta l4proto udp dnat to 10.0.0.20:5353
            	}
            }
        "#]]
        .assert_eq(&text);
    }

    #[test]
    fn mesh_snat_fallback_masquerades_every_mesh_connection() {
        let nat_post = |facts: &LocalFacts| -> String {
            ruleset(&plan(&mesh_map(), facts))
                .lines()
                .map(str::trim)
                .skip_while(|l| !l.starts_with("chain nat_post"))
                .take_while(|l| *l != "}")
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let on = LocalFacts {
            mesh_snat: true,
            ..facts()
        };
        expect![[r#"
            chain nat_post {
            type nat hook postrouting priority srcnat - 10; policy accept;
            meta mark & 0x4000 == 0x4000 masquerade
            oifname "swb4096" ct mark & 0x2000 == 0x2000 snat to 10.0.0.2
            oifname "swb4096" fib saddr type local ip saddr != 10.0.0.2 snat to 10.0.0.2
            oifname "swb4097" fib saddr type local ip saddr != 10.0.1.241 snat to 10.0.1.241
        "#]]
        .assert_eq(&nat_post(&on));
        // Off (the default), only other nodes' hosts are hidden.
        assert!(nat_post(&facts()).contains(
            "oifname \"swb4096\" ct mark & 0x2000 == 0x2000 ip saddr @node_addrs snat to 10.0.0.2"
        ));
    }

    #[test]
    fn the_same_plan_renders_the_same_text() {
        let a = ruleset(&plan(&sample_map(), &facts()));
        let mut map = sample_map();
        map.networks.reverse();
        assert_eq!(a, ruleset(&plan(&map, &facts())));
    }
}
