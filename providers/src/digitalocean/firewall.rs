use std::collections::BTreeSet;

use super::types::{Firewall, FirewallCreate, InboundRule, OutboundRule, Targets};

/// Where SSH is open from when the user names nothing.
pub const SSH_FROM_ANYWHERE: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// The cluster's cloud firewall, applied by tag: SSH from `ssh_from`, the swarm ports
/// between machines of the cluster, everything outbound.
///
/// 2377/tcp is also open from `ssh_from`: swarm-node serves the Docker API there, and the
/// admin's `docker` CLI (`swarmup env`) must reach it from outside the cluster. That is safe
/// to open as widely as SSH because the port speaks mutual TLS only: every call, Raft and
/// Docker API alike, needs a client certificate signed by the cluster's own CA. Gossip and
/// VXLAN have no such protection and stay open to the cluster alone.
pub fn cluster_firewall(name: &str, cluster_tag: &str, ssh_from: &[String]) -> FirewallCreate {
    let ssh_from: Vec<String> = if ssh_from.is_empty() {
        SSH_FROM_ANYWHERE.iter().map(|s| s.to_string()).collect()
    } else {
        ssh_from.to_vec()
    };
    let peers = || Targets {
        tags: vec![cluster_tag.to_string()],
        ..Targets::default()
    };
    let peer_rule = |protocol: &str, ports: Option<&str>| InboundRule {
        protocol: protocol.into(),
        ports: ports.map(str::to_string),
        sources: peers(),
    };
    let anywhere = || Targets {
        addresses: SSH_FROM_ANYWHERE.iter().map(|s| s.to_string()).collect(),
        ..Targets::default()
    };
    FirewallCreate {
        name: name.to_string(),
        inbound_rules: vec![
            InboundRule {
                protocol: "tcp".into(),
                ports: Some("22".into()),
                sources: Targets {
                    addresses: ssh_from.clone(),
                    ..Targets::default()
                },
            },
            // Swarm: cluster management and the Docker API (peers and the admin), the VXLAN
            // data path. No gossip port: swarm-node needs none.
            InboundRule {
                protocol: "tcp".into(),
                ports: Some("2377".into()),
                sources: Targets {
                    addresses: ssh_from,
                    ..peers()
                },
            },
            peer_rule("udp", Some("4789")),
            // Lets nodes ping each other when something is wrong.
            peer_rule("icmp", None),
        ],
        outbound_rules: vec![
            OutboundRule {
                protocol: "tcp".into(),
                ports: Some("0".into()),
                destinations: anywhere(),
            },
            OutboundRule {
                protocol: "udp".into(),
                ports: Some("0".into()),
                destinations: anywhere(),
            },
            OutboundRule {
                protocol: "icmp".into(),
                ports: None,
                destinations: anywhere(),
            },
        ],
        tags: vec![cluster_tag.to_string()],
    }
}

type RuleKey = (String, String, Vec<String>, Vec<String>, Vec<u64>);

fn key(protocol: &str, ports: &Option<String>, t: &Targets) -> RuleKey {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let mut ids = t.droplet_ids.clone();
    ids.sort_unstable();
    // DigitalOcean answers "0" for icmp ports and may spell "all ports" as "0" or "all".
    let ports = match (protocol, ports.as_deref()) {
        ("icmp", _) | (_, None) | (_, Some("all")) => "0".to_string(),
        (_, Some(p)) => p.to_string(),
    };
    (
        protocol.to_ascii_lowercase(),
        ports,
        sorted(&t.addresses),
        sorted(&t.tags),
        ids,
    )
}

/// Whether an existing firewall already says what `want` says.
pub fn firewall_matches(have: &Firewall, want: &FirewallCreate) -> bool {
    let have_in: BTreeSet<RuleKey> = have
        .inbound_rules
        .iter()
        .map(|r| key(&r.protocol, &r.ports, &r.sources))
        .collect();
    let want_in: BTreeSet<RuleKey> = want
        .inbound_rules
        .iter()
        .map(|r| key(&r.protocol, &r.ports, &r.sources))
        .collect();
    let have_out: BTreeSet<RuleKey> = have
        .outbound_rules
        .iter()
        .map(|r| key(&r.protocol, &r.ports, &r.destinations))
        .collect();
    let want_out: BTreeSet<RuleKey> = want
        .outbound_rules
        .iter()
        .map(|r| key(&r.protocol, &r.ports, &r.destinations))
        .collect();
    let have_tags: BTreeSet<&String> = have.tags.iter().collect();
    let want_tags: BTreeSet<&String> = want.tags.iter().collect();
    have_in == want_in && have_out == want_out && have_tags == want_tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_ports_are_open_between_cluster_machines_and_the_api_to_the_admin() {
        let fw = cluster_firewall("swarmup-c1", "swarmup:c1", &["198.51.100.7/32".into()]);
        let ssh = &fw.inbound_rules[0];
        assert_eq!(ssh.ports.as_deref(), Some("22"));
        assert_eq!(ssh.sources.addresses, vec!["198.51.100.7/32"]);
        let control = &fw.inbound_rules[1];
        assert_eq!(control.ports.as_deref(), Some("2377"));
        assert_eq!(control.sources.tags, vec!["swarmup:c1"]);
        assert_eq!(control.sources.addresses, vec!["198.51.100.7/32"]);
        for rule in &fw.inbound_rules[2..] {
            assert_eq!(rule.sources.tags, vec!["swarmup:c1"]);
            assert!(rule.sources.addresses.is_empty());
        }
        let ports: Vec<_> = fw
            .inbound_rules
            .iter()
            .map(|r| format!("{}/{}", r.ports.as_deref().unwrap_or("-"), r.protocol))
            .collect();
        assert_eq!(ports, ["22/tcp", "2377/tcp", "4789/udp", "-/icmp"]);
        assert_eq!(fw.tags, vec!["swarmup:c1"]);
        assert_eq!(fw.outbound_rules.len(), 3);
    }

    #[test]
    fn ssh_and_the_api_default_to_anywhere() {
        let fw = cluster_firewall("swarmup-c1", "swarmup:c1", &[]);
        assert_eq!(fw.inbound_rules[0].sources.addresses, SSH_FROM_ANYWHERE);
        assert_eq!(fw.inbound_rules[1].sources.addresses, SSH_FROM_ANYWHERE);
        assert_eq!(fw.inbound_rules[1].sources.tags, vec!["swarmup:c1"]);
    }

    #[test]
    fn an_answered_firewall_matches_its_request_despite_spelling() {
        let want = cluster_firewall("swarmup-c1", "swarmup:c1", &[]);
        let json = serde_json::json!({
            "id": "f1", "name": "swarmup-c1", "tags": ["swarmup:c1"],
            "inbound_rules": serde_json::to_value(&want.inbound_rules).unwrap(),
            "outbound_rules": serde_json::to_value(&want.outbound_rules).unwrap(),
        });
        let mut have: Firewall = serde_json::from_value(json).unwrap();
        have.inbound_rules[3].ports = Some("0".into()); // icmp: DigitalOcean answers "0"
        have.inbound_rules.reverse();
        assert!(firewall_matches(&have, &want));
        let other = cluster_firewall("swarmup-c1", "swarmup:c1", &["10.0.0.0/8".into()]);
        assert!(!firewall_matches(&have, &other));
    }
}
