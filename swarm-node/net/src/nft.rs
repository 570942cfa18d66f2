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

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::plan::Desired;

/// The table's family and name.
pub const TABLE: &str = "ip swarmnet";
/// Marks a backend's connection to its own VIP, for masquerading.
pub const HAIRPIN_MARK: u32 = 0x4000;

fn chain_of(vip: Ipv4Addr) -> String {
    let o = vip.octets();
    format!("vip_{}_{}_{}_{}", o[0], o[1], o[2], o[3])
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

    let _ = writeln!(
        s,
        "\tchain nat_pre {{\n\t\ttype nat hook prerouting priority dstnat - 10; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tiifname \"swb*\" ip daddr @dns_gateways meta l4proto {{ tcp, udp }} th dport 53 redirect to :{port}"
    );
    let _ = writeln!(s, "\t\tip daddr vmap @vips\n\t}}");

    // Same priority as dstnat - 10, for the output hook.
    let _ = writeln!(
        s,
        "\tchain nat_out {{\n\t\ttype nat hook output priority -110; policy accept;\n\t\tip daddr vmap @vips\n\t}}"
    );

    let _ = writeln!(
        s,
        "\tchain nat_post {{\n\t\ttype nat hook postrouting priority srcnat - 10; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tmeta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} masquerade"
    );
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
    let _ = writeln!(s, "\t\tip daddr @vips_down ct state new reject\n\t}}");

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
    use crate::plan::tests::{facts, sample_map};
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
    fn the_same_plan_renders_the_same_text() {
        let a = ruleset(&plan(&sample_map(), &facts()));
        let mut map = sample_map();
        map.networks.reverse();
        assert_eq!(a, ruleset(&plan(&map, &facts())));
    }
}
