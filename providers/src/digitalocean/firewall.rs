use std::collections::{BTreeMap, BTreeSet};

use crate::{PortProtocol, PublishedPort};

use super::types::{Firewall, FirewallCreate, InboundRule, OutboundRule, Targets};

/// How many rules, inbound and outbound together, DigitalOcean takes in one firewall.
pub const MAX_RULES: usize = 50;

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
            // data path.
            InboundRule {
                protocol: "tcp".into(),
                ports: Some(crate::CONTROL_PORT.to_string()),
                sources: Targets {
                    addresses: ssh_from,
                    ..peers()
                },
            },
            peer_rule("udp", Some(&crate::DATA_PORT.to_string())),
            // swarm-node's WireGuard tunnel, which carries encrypted overlay networks.
            peer_rule("udp", Some(&crate::TUNNEL_PORT.to_string())),
            // Lets nodes ping each other when something is wrong.
            peer_rule("icmp", Some("0")),
            // Docker's gossip, between the cluster's droplets only: used by `--engine
            // docker` alone. The cloud firewall is made before the engine is known to it,
            // and the nodes' own firewall opens this port only for that engine, so a
            // swarm-node cluster still answers nothing there.
            peer_rule("tcp", Some(&crate::DOCKER_GOSSIP_PORT.to_string())),
            peer_rule("udp", Some(&crate::DOCKER_GOSSIP_PORT.to_string())),
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
                ports: Some("0".into()),
                destinations: anywhere(),
            },
        ],
        tags: vec![cluster_tag.to_string()],
        droplet_ids: Vec::new(),
    }
}

/// Whether an inbound rule is one that [`published_rules`] owns: tcp or udp from addresses
/// only. swarmup's own rules name the cluster's tag (2377, 4789, 7946, icmp) or are SSH; a rule
/// naming droplets, load balancers or Kubernetes clusters was made by someone else and is
/// kept too.
pub fn is_published_port_rule(r: &InboundRule) -> bool {
    let protocol = r.protocol.to_ascii_lowercase();
    let t = &r.sources;
    matches!(protocol.as_str(), "tcp" | "udp")
        && !(protocol == "tcp" && r.ports.as_deref() == Some("22"))
        && !t.addresses.is_empty()
        && t.tags.is_empty()
        && t.droplet_ids.is_empty()
        && t.load_balancer_uids.is_empty()
        && t.kubernetes_ids.is_empty()
}

/// The inbound rules that let in `ports` from `from` (anywhere when empty): one rule per
/// protocol and run of consecutive ports, so that many ports stay within DigitalOcean's
/// rule limit. Returns the rules and the ports a DigitalOcean firewall cannot express.
pub fn published_rules(
    ports: &[PublishedPort],
    from: &[String],
) -> (Vec<InboundRule>, Vec<String>) {
    let from: Vec<String> = if from.is_empty() {
        SSH_FROM_ANYWHERE.iter().map(|s| s.to_string()).collect()
    } else {
        from.to_vec()
    };
    let mut by_protocol: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    let mut skipped = BTreeSet::new();
    for p in ports {
        match p.protocol {
            PortProtocol::Tcp => by_protocol.entry("tcp").or_default().insert(p.port),
            PortProtocol::Udp => by_protocol.entry("udp").or_default().insert(p.port),
            PortProtocol::Sctp => skipped.insert(format!(
                "{p}: DigitalOcean's cloud firewall opens tcp and udp ports only"
            )),
        };
    }
    let mut rules = Vec::new();
    for (protocol, ports) in by_protocol {
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for port in ports {
            match runs.last_mut() {
                Some((_, last)) if u32::from(*last) + 1 == u32::from(port) => *last = port,
                _ => runs.push((port, port)),
            }
        }
        for (first, last) in runs {
            rules.push(InboundRule {
                protocol: protocol.to_string(),
                ports: Some(if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }),
                sources: Targets {
                    addresses: from.clone(),
                    ..Targets::default()
                },
            });
        }
    }
    (rules, skipped.into_iter().collect())
}

/// The whole firewall `have` with its published-port rules replaced by `published`:
/// every other rule, the outbound rules, tags and droplets stay as they are, because a
/// `PUT` replaces all of them.
pub fn with_published_rules(have: &Firewall, published: Vec<InboundRule>) -> FirewallCreate {
    let mut inbound_rules: Vec<InboundRule> = have
        .inbound_rules
        .iter()
        .filter(|r| !is_published_port_rule(r))
        .cloned()
        .collect();
    inbound_rules.extend(published);
    FirewallCreate {
        name: have.name.clone(),
        inbound_rules,
        outbound_rules: have.outbound_rules.clone(),
        tags: have.tags.clone(),
        droplet_ids: have.droplet_ids.clone(),
    }
}

/// `want` with the published-port rules of `have` added: what a re-run `create` sends so
/// that restoring swarmup's own rules does not close the services' ports.
pub fn keeping_published_rules(mut want: FirewallCreate, have: &Firewall) -> FirewallCreate {
    want.inbound_rules.extend(
        have.inbound_rules
            .iter()
            .filter(|r| is_published_port_rule(r))
            .cloned(),
    );
    want.droplet_ids = have.droplet_ids.clone();
    want
}

fn describe(r: &InboundRule) -> String {
    format!(
        "{}/{} from {}",
        r.ports.as_deref().unwrap_or("all"),
        r.protocol.to_ascii_lowercase(),
        r.sources.addresses.join(", ")
    )
}

/// The published-port rules `want` adds to `have` and those it drops, for the report.
pub fn published_changes(have: &Firewall, want: &FirewallCreate) -> (Vec<String>, Vec<String>) {
    let keyed = |rules: &[InboundRule]| -> BTreeMap<RuleKey, String> {
        rules
            .iter()
            .filter(|r| is_published_port_rule(r))
            .map(|r| (key(&r.protocol, &r.ports, &r.sources), describe(r)))
            .collect()
    };
    let before = keyed(&have.inbound_rules);
    let after = keyed(&want.inbound_rules);
    let opened = after
        .iter()
        .filter(|(k, _)| !before.contains_key(k))
        .map(|(_, d)| d.clone())
        .collect();
    let closed = before
        .iter()
        .filter(|(k, _)| !after.contains_key(k))
        .map(|(_, d)| d.clone())
        .collect();
    (opened, closed)
}

type RuleKey = (
    String,
    String,
    Vec<String>,
    Vec<String>,
    Vec<u64>,
    Vec<String>,
    Vec<String>,
);

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
        sorted(&t.load_balancer_uids),
        sorted(&t.kubernetes_ids),
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
    let have_ids: BTreeSet<&u64> = have.droplet_ids.iter().collect();
    let want_ids: BTreeSet<&u64> = want.droplet_ids.iter().collect();
    have_in == want_in && have_out == want_out && have_tags == want_tags && have_ids == want_ids
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
        assert_eq!(
            ports,
            [
                "22/tcp",
                "2377/tcp",
                "4789/udp",
                "51820/udp",
                "0/icmp",
                "7946/tcp",
                "7946/udp"
            ]
        );
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
        have.inbound_rules[4].ports = Some("0".into()); // icmp: DigitalOcean answers "0"
        have.inbound_rules.reverse();
        assert!(firewall_matches(&have, &want));
        let other = cluster_firewall("swarmup-c1", "swarmup:c1", &["10.0.0.0/8".into()]);
        assert!(!firewall_matches(&have, &other));
    }

    /// The firewall as DigitalOcean would answer after creating or updating it with `want`.
    fn answered(want: &FirewallCreate) -> Firewall {
        let mut v = serde_json::to_value(want).unwrap();
        v["id"] = "f1".into();
        serde_json::from_value(v).unwrap()
    }

    fn port(port: u16, protocol: PortProtocol) -> PublishedPort {
        PublishedPort { port, protocol }
    }

    fn shown(rules: &[InboundRule]) -> Vec<String> {
        rules.iter().map(describe).collect()
    }

    #[test]
    fn published_ports_become_one_rule_per_protocol_and_run_of_ports() {
        let ports = [
            port(9201, PortProtocol::Tcp),
            port(9200, PortProtocol::Tcp),
            port(9200, PortProtocol::Tcp),
            port(80, PortProtocol::Tcp),
            port(53, PortProtocol::Udp),
            port(5000, PortProtocol::Sctp),
        ];
        let (rules, skipped) = published_rules(&ports, &[]);
        assert_eq!(
            shown(&rules),
            [
                "80/tcp from 0.0.0.0/0, ::/0",
                "9200-9201/tcp from 0.0.0.0/0, ::/0",
                "53/udp from 0.0.0.0/0, ::/0"
            ]
        );
        assert!(rules.iter().all(is_published_port_rule));
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].starts_with("5000/sctp: "), "{skipped:?}");
        let (rules, _) = published_rules(&ports[..1], &["192.0.2.0/24".into()]);
        assert_eq!(shown(&rules), ["9201/tcp from 192.0.2.0/24"]);
        assert!(published_rules(&[], &[]).0.is_empty());
    }

    #[test]
    fn swarmup_rules_are_never_taken_for_published_ones() {
        let fw = cluster_firewall("swarmup-c1", "swarmup:c1", &["198.51.100.7/32".into()]);
        assert!(!fw.inbound_rules.iter().any(is_published_port_rule));
        let by_droplet = InboundRule {
            protocol: "tcp".into(),
            ports: Some("8080".into()),
            sources: Targets {
                droplet_ids: vec![7],
                ..Targets::default()
            },
        };
        assert!(!is_published_port_rule(&by_droplet));
    }

    #[test]
    fn syncing_keeps_swarmup_rules_as_they_are_and_replaces_published_ones() {
        let base = cluster_firewall("swarmup-c1", "swarmup:c1", &["198.51.100.7/32".into()]);
        let mut have = answered(&base);
        have.droplet_ids = vec![42];
        let (rules, _) = published_rules(&[port(9200, PortProtocol::Tcp)], &[]);
        let want = with_published_rules(&have, rules);
        assert_eq!(
            want.inbound_rules[..base.inbound_rules.len()],
            base.inbound_rules[..]
        );
        assert_eq!(
            shown(&want.inbound_rules[base.inbound_rules.len()..]),
            ["9200/tcp from 0.0.0.0/0, ::/0"]
        );
        assert_eq!(want.outbound_rules, base.outbound_rules);
        assert_eq!(want.tags, base.tags);
        assert_eq!(want.droplet_ids, vec![42]);
        assert!(!firewall_matches(&have, &want));
        let (opened, closed) = published_changes(&have, &want);
        assert_eq!(opened, ["9200/tcp from 0.0.0.0/0, ::/0"]);
        assert!(closed.is_empty());

        // Applied, the same ports again change nothing: no update is sent.
        let have = answered(&want);
        let (rules, _) = published_rules(&[port(9200, PortProtocol::Tcp)], &[]);
        let again = with_published_rules(&have, rules);
        assert!(firewall_matches(&have, &again));
        assert_eq!(published_changes(&have, &again), (vec![], vec![]));

        // Narrowed to one network: the rule from anywhere goes, the narrow one comes.
        let (rules, _) =
            published_rules(&[port(9200, PortProtocol::Tcp)], &["192.0.2.0/24".into()]);
        let narrow = with_published_rules(&have, rules);
        assert!(!firewall_matches(&have, &narrow));
        let (opened, closed) = published_changes(&have, &narrow);
        assert_eq!(opened, ["9200/tcp from 192.0.2.0/24"]);
        assert_eq!(closed, ["9200/tcp from 0.0.0.0/0, ::/0"]);

        // The service gone: back to swarmup's own rules exactly.
        let have = answered(&narrow);
        let none = with_published_rules(&have, Vec::new());
        assert_eq!(none.inbound_rules, base.inbound_rules);
        let (opened, closed) = published_changes(&have, &none);
        assert!(opened.is_empty());
        assert_eq!(closed, ["9200/tcp from 192.0.2.0/24"]);
    }

    #[test]
    fn create_run_again_restores_its_rules_but_keeps_published_ports() {
        let base = cluster_firewall("swarmup-c1", "swarmup:c1", &[]);
        let (rules, _) = published_rules(&[port(53, PortProtocol::Udp)], &[]);
        let mut have = answered(&with_published_rules(&answered(&base), rules));
        // Someone opened SSH to everyone by hand; the published port must survive the repair.
        have.inbound_rules[0].sources.addresses = vec!["0.0.0.0/0".into()];
        let want = keeping_published_rules(
            cluster_firewall("swarmup-c1", "swarmup:c1", &["198.51.100.7/32".into()]),
            &have,
        );
        assert_eq!(want.inbound_rules[0].sources.addresses, ["198.51.100.7/32"]);
        assert_eq!(
            shown(&want.inbound_rules[base.inbound_rules.len()..]),
            ["53/udp from 0.0.0.0/0, ::/0"]
        );
    }
}
