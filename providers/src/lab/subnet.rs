//! Choosing a /24 for a lab cluster out of a /16 pool.
//!
//! The source of truth is the host itself (addresses and routes that `ip` reports) plus
//! the records of clusters under our state root, so labs of several state roots and
//! leftovers of crashed runs are avoided alike. Callers hold the lab lock between the scan
//! and the moment the bridge gets its address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Deserialize;

/// One IPv4 network the host uses, as `ip` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The interface it is on, when known.
    pub dev: Option<String>,
}

/// The /24s of the pool (by third octet) that `nets` overlap. Networks as wide as the
/// pool or wider are ignored: a more specific route on our bridge wins over them.
pub fn used_in_pool(pool: Ipv4Addr, nets: &[HostNet]) -> BTreeSet<u8> {
    let [p0, p1, ..] = pool.octets();
    let mut used = BTreeSet::new();
    for net in nets {
        let [a, b, c, _] = net.addr.octets();
        if a != p0 || b != p1 || net.prefix <= 16 {
            continue;
        }
        if net.prefix >= 24 {
            used.insert(c);
        } else {
            let span = 1u16 << (24 - net.prefix);
            let first = u16::from(c) & !(span - 1);
            for third in first..first + span {
                used.insert(third as u8);
            }
        }
    }
    used
}

/// Picks a free third octet, starting from `preferred` (derived from the cluster's tag so
/// a cluster tends to get the same subnet again) and probing upwards.
pub fn choose(preferred: u8, used: &BTreeSet<u8>) -> Option<u8> {
    (0..=255u8)
        .map(|i| preferred.wrapping_add(i))
        .find(|c| !used.contains(c))
}

/// Which interface other than `ours` already uses the /24 `third` of the pool, if any.
pub fn conflict(pool: Ipv4Addr, third: u8, ours: &str, nets: &[HostNet]) -> Option<String> {
    nets.iter()
        .filter(|n| n.dev.as_deref() != Some(ours))
        .find(|n| used_in_pool(pool, std::slice::from_ref(n)).contains(&third))
        .map(|n| {
            n.dev
                .clone()
                .unwrap_or_else(|| format!("{}/{}", n.addr, n.prefix))
        })
}

#[derive(Deserialize)]
struct AddrLink {
    ifname: Option<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: Option<String>,
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct Route {
    dst: Option<String>,
    dev: Option<String>,
}

/// Parses `ip -j -4 addr show`.
pub fn parse_ip_addr_json(json: &str) -> Result<Vec<HostNet>, serde_json::Error> {
    let links: Vec<AddrLink> = serde_json::from_str(json)?;
    let mut nets = Vec::new();
    for link in links {
        for info in link.addr_info {
            if info.family.as_deref().is_some_and(|f| f != "inet") {
                continue;
            }
            if let (Some(local), Some(prefix)) = (info.local, info.prefixlen) {
                if let Ok(addr) = local.parse() {
                    nets.push(HostNet {
                        addr,
                        prefix,
                        dev: link.ifname.clone(),
                    });
                }
            }
        }
    }
    Ok(nets)
}

/// Parses `ip -j -4 route show`.
pub fn parse_ip_route_json(json: &str) -> Result<Vec<HostNet>, serde_json::Error> {
    let routes: Vec<Route> = serde_json::from_str(json)?;
    Ok(routes
        .into_iter()
        .filter_map(|r| {
            let dst = r.dst?;
            let (addr, prefix) = match dst.split_once('/') {
                Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
                None => (dst.parse().ok()?, 32),
            };
            Some(HostNet {
                addr,
                prefix,
                dev: r.dev,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, dev: &str) -> HostNet {
        let (a, p) = s.split_once('/').unwrap();
        HostNet {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
            dev: Some(dev.to_string()),
        }
    }

    const POOL: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 0);

    #[test]
    fn pool_usage_counts_only_specific_networks_inside_the_pool() {
        let nets = [
            net("10.247.3.1/24", "br-a"),
            net("10.247.9.77/32", "tun0"),
            net("10.247.16.0/22", "vpn"),
            net("10.0.0.0/8", "corp"),
            net("10.247.0.0/16", "wide"),
            net("192.168.1.10/24", "eth0"),
            net("10.248.5.1/24", "other"),
        ];
        let used: Vec<u8> = used_in_pool(POOL, &nets).into_iter().collect();
        assert_eq!(used, vec![3, 9, 16, 17, 18, 19]);
    }

    #[test]
    fn choose_prefers_the_derived_octet_then_probes_and_wraps() {
        let used: BTreeSet<u8> = [200, 201, 255, 0].into_iter().collect();
        assert_eq!(choose(7, &used), Some(7));
        assert_eq!(choose(200, &used), Some(202));
        assert_eq!(choose(255, &used), Some(1));
        let full: BTreeSet<u8> = (0..=255).collect();
        assert_eq!(choose(4, &full), None);
    }

    #[test]
    fn two_clusters_never_get_the_same_subnet() {
        let mut nets = Vec::new();
        let first = choose(42, &used_in_pool(POOL, &nets)).unwrap();
        nets.push(net(&format!("10.247.{first}.1/24"), "br-one"));
        let second = choose(42, &used_in_pool(POOL, &nets)).unwrap();
        assert_eq!(first, 42);
        assert_eq!(second, 43);
    }

    #[test]
    fn conflicts_ignore_our_own_bridge() {
        let nets = [net("10.247.5.1/24", "mine"), net("10.247.6.1/24", "theirs")];
        assert_eq!(conflict(POOL, 5, "mine", &nets), None);
        assert_eq!(conflict(POOL, 6, "mine", &nets), Some("theirs".to_string()));
    }

    #[test]
    fn parses_ip_json() {
        let addr = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":7,"ifname":"web-abc123","addr_info":[{"family":"inet","local":"10.247.12.1","prefixlen":24}]},
            {"ifindex":8,"ifname":"x","addr_info":[]}]"#;
        let nets = parse_ip_addr_json(addr).unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[1], net("10.247.12.1/24", "web-abc123"));
        let route = r#"[{"dst":"default","gateway":"192.168.1.1","dev":"eth0"},
            {"dst":"10.247.12.0/24","dev":"web-abc123","protocol":"kernel"},
            {"dst":"10.247.99.4","dev":"tun0"}]"#;
        let routes = parse_ip_route_json(route).unwrap();
        assert_eq!(
            routes,
            vec![
                net("10.247.12.0/24", "web-abc123"),
                net("10.247.99.4/32", "tun0")
            ]
        );
    }
}
