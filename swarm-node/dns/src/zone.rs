//! The records of one network map and the pure decision of what to answer whom.
//!
//! [`Zone::from_netmap`] indexes a [`NetMap`] once per change so that a query costs a few
//! hash lookups; [`Zone::answer`] decides, from the asker's address and the question alone,
//! whether we answer, forward or refuse. Nothing here does I/O, so every rule is tested
//! without sockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use hickory_server::proto::op::Query;
use hickory_server::proto::rr::rdata::{A, PTR};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use swarm_state::netmap::NetMap;
use swarm_state::network::EndpointMode;

/// TTL of records naming tasks (`tasks.NAME`, dnsrr services, task PTRs): tasks come and go,
/// so resolvers must ask again soon.
pub const TASK_TTL: u32 = 5;
/// TTL of records naming a VIP: a VIP lives as long as the service.
pub const VIP_TTL: u32 = 30;

/// The prefix Docker uses for the names that list a service's tasks.
const TASKS_PREFIX: &str = "tasks.";

/// What to do with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name belongs to a service on a network the asker shares: answer authoritatively
    /// (AA, NOERROR) with these records. No records means NODATA: the name exists but has
    /// nothing of the asked type (AAAA, or a dnsrr service with no running task).
    Local(Vec<Record>),
    /// The asker's networks know nothing of the name: ask the upstream servers.
    Forward,
    /// The source address is not a task of this node: the port may be reachable from
    /// elsewhere, and nobody else may read the service map or use us as a resolver.
    Refused,
}

/// The DNS view of one node's network map.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// The address of each local task on each of its networks → the networks that task is
    /// on (indexes into `networks`), its first (primary) network first. Subnets of
    /// different networks never overlap, so an address names exactly one task.
    askers: HashMap<Ipv4Addr, Vec<usize>>,
    networks: Vec<NetZone>,
}

#[derive(Debug, Clone, Default)]
struct NetZone {
    /// Lowercase service names and aliases → index into `services`.
    names: HashMap<String, usize>,
    services: Vec<ServiceEntry>,
    /// VIPs and task addresses → the service they belong to, for PTR.
    reverse: HashMap<Ipv4Addr, (usize, u32)>,
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    /// The service name as an absolute DNS name, for PTR answers; `None` when the name is
    /// not a valid DNS name (then no PTR is answered for it).
    fqdn: Option<Name>,
    mode: EndpointMode,
    vip: Option<Ipv4Addr>,
    backends: Vec<Ipv4Addr>,
}

/// Which set of addresses a name stands for.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `NAME`: the VIP, or the tasks for dnsrr.
    Service,
    /// `tasks.NAME`: the tasks.
    Tasks,
}

impl Zone {
    /// Indexes a network map. Pure.
    pub fn from_netmap(map: &NetMap) -> Self {
        let mut networks = Vec::with_capacity(map.networks.len());
        let mut by_id = HashMap::new();
        for (i, net) in map.networks.iter().enumerate() {
            by_id.insert(net.id.as_str(), i);
            let mut zone = NetZone::default();
            for svc in &net.services {
                let idx = zone.services.len();
                // A service and an alias may collide; the first one (name order) wins, so
                // the answer does not depend on hash order.
                for name in std::iter::once(&svc.name).chain(&svc.aliases) {
                    zone.names.entry(normalize(name)).or_insert(idx);
                }
                if let Some(vip) = svc.vip {
                    zone.reverse.entry(vip).or_insert((idx, VIP_TTL));
                }
                for b in &svc.backends {
                    zone.reverse.entry(*b).or_insert((idx, TASK_TTL));
                }
                zone.services.push(ServiceEntry {
                    fqdn: Name::from_ascii(format!("{}.", svc.name)).ok(),
                    mode: svc.mode,
                    vip: svc.vip,
                    backends: svc.backends.clone(),
                });
            }
            networks.push(zone);
        }

        let mut askers: HashMap<Ipv4Addr, Vec<usize>> = HashMap::new();
        for task in &map.local_tasks {
            let nets: Vec<usize> = task
                .addrs
                .iter()
                .filter_map(|(id, _)| by_id.get(id.as_str()).copied())
                .collect();
            for (_, addr) in &task.addrs {
                let entry = askers.entry(*addr).or_default();
                for n in &nets {
                    if !entry.contains(n) {
                        entry.push(*n);
                    }
                }
            }
        }
        Zone { askers, networks }
    }

    /// True when `addr` is the address of a local task (on any of its networks).
    pub fn knows_asker(&self, addr: IpAddr) -> bool {
        matches!(addr, IpAddr::V4(a) if self.askers.contains_key(&a))
    }

    /// Decides the answer to `query` asked from `src`. Pure.
    ///
    /// Records come in address order; the server shuffles multi-address answers.
    pub fn answer(&self, src: IpAddr, query: &Query) -> Answer {
        let IpAddr::V4(src) = src else {
            return Answer::Refused;
        };
        let Some(nets) = self.askers.get(&src) else {
            return Answer::Refused;
        };
        if query.query_class() != DNSClass::IN {
            return Answer::Forward;
        }
        let owner = query.name().clone();
        if query.query_type() == RecordType::PTR {
            return self.answer_ptr(nets, owner);
        }

        let key = normalize(&query.name().to_ascii());
        let found = self
            .find(nets, &key)
            .map(|hit| (hit, Kind::Service))
            .or_else(|| {
                let rest = key.strip_prefix(TASKS_PREFIX)?;
                self.find(nets, rest).map(|hit| (hit, Kind::Tasks))
            });
        let Some(((net, svc), kind)) = found else {
            return Answer::Forward;
        };
        if !matches!(query.query_type(), RecordType::A | RecordType::ANY) {
            // The name is ours, so say authoritatively that it has no such record: a
            // forwarded AAAA would make clients wait for an upstream that knows nothing.
            return Answer::Local(Vec::new());
        }
        let svc = &self.networks[net].services[svc];
        let (addrs, ttl) = match (kind, svc.mode, svc.vip) {
            (Kind::Service, EndpointMode::Vip, Some(vip)) => (vec![vip], VIP_TTL),
            // A VIP service whose VIP is not allocated yet is reached like dnsrr.
            _ => (svc.backends.clone(), TASK_TTL),
        };
        Answer::Local(
            addrs
                .into_iter()
                .map(|a| Record::from_rdata(owner.clone(), ttl, RData::A(A(a))))
                .collect(),
        )
    }

    /// The first of the asker's networks (primary first) that has a service or alias named
    /// `key`: (network index, service index).
    fn find(&self, nets: &[usize], key: &str) -> Option<(usize, usize)> {
        nets.iter()
            .find_map(|&n| self.networks[n].names.get(key).map(|&s| (n, s)))
    }

    fn answer_ptr(&self, nets: &[usize], owner: Name) -> Answer {
        // Only a full address names one endpoint; shorter reverse names are zones.
        let addr = match owner.parse_arpa_name() {
            Ok(net) if net.prefix_len() == 32 => match net.addr() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => return Answer::Forward,
            },
            _ => return Answer::Forward,
        };
        for &n in nets {
            let zone = &self.networks[n];
            if let Some(&(svc, ttl)) = zone.reverse.get(&addr) {
                if let Some(fqdn) = &zone.services[svc].fqdn {
                    return Answer::Local(vec![Record::from_rdata(
                        owner,
                        ttl,
                        RData::PTR(PTR(fqdn.clone())),
                    )]);
                }
            }
        }
        Answer::Forward
    }
}

/// Lowercases a name and drops the root dot: `Web.` and `web` are the same name.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::netmap::{LocalTask, NetView, ServiceView};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn service(
        name: &str,
        mode: EndpointMode,
        vip: Option<&str>,
        backends: &[&str],
    ) -> ServiceView {
        ServiceView {
            id: format!("id-{name}"),
            name: name.to_string(),
            aliases: Vec::new(),
            mode,
            vip: vip.map(ip),
            backends: backends.iter().map(|b| ip(b)).collect(),
        }
    }

    fn network(id: &str, third: u8, services: Vec<ServiceView>) -> NetView {
        NetView {
            id: id.to_string(),
            name: format!("net-{id}"),
            vni: 4096 + u32::from(third),
            subnet: format!("10.0.{third}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, third, 1),
            mtu: None,
            encrypted: false,
            internal: false,
            ingress: false,
            local_addr: None,
            remote: Vec::new(),
            services,
        }
    }

    fn task(id: &str, addrs: &[(&str, &str)]) -> LocalTask {
        LocalTask {
            task_id: id.to_string(),
            service_id: "svc".to_string(),
            addrs: addrs.iter().map(|(n, a)| (n.to_string(), ip(a))).collect(),
        }
    }

    /// Two networks: `front` (10.0.1.0/24) and `back` (10.0.2.0/24). `api` is on both.
    /// Tasks: 10.0.1.5 on front only, 10.0.2.5 on back only, and one on both with back as
    /// its primary network (10.0.2.6, 10.0.1.9).
    fn zone() -> Zone {
        let mut web = service(
            "web",
            EndpointMode::Vip,
            Some("10.0.1.2"),
            &["10.0.1.5", "10.0.1.6"],
        );
        web.aliases = vec!["www".to_string()];
        let front = network(
            "front",
            1,
            vec![
                service("api", EndpointMode::Vip, Some("10.0.1.20"), &["10.0.1.21"]),
                service(
                    "cache",
                    EndpointMode::Dnsrr,
                    None,
                    &["10.0.1.7", "10.0.1.8"],
                ),
                service("empty-rr", EndpointMode::Dnsrr, None, &[]),
                service("idle", EndpointMode::Vip, Some("10.0.1.3"), &[]),
                web,
            ],
        );
        let back = network(
            "back",
            2,
            vec![
                service("api", EndpointMode::Vip, Some("10.0.2.20"), &["10.0.2.21"]),
                service("secret", EndpointMode::Vip, Some("10.0.2.2"), &["10.0.2.5"]),
            ],
        );
        Zone::from_netmap(&NetMap {
            tunnel: None,
            networks: vec![front, back],
            local_tasks: vec![
                task("t-front", &[("front", "10.0.1.5")]),
                task("t-back", &[("back", "10.0.2.5")]),
                task("t-both", &[("back", "10.0.2.6"), ("front", "10.0.1.9")]),
                // A task on a network this map does not carry.
                task("t-gone", &[("unknown", "10.0.9.5")]),
            ],
            ..NetMap::default()
        })
    }

    /// Asks `name` for `qtype` from `src` and renders the answer on one line.
    fn ask(zone: &Zone, src: &str, name: &str, qtype: RecordType) -> String {
        let query = Query::query(Name::from_ascii(name).unwrap(), qtype);
        match zone.answer(src.parse().unwrap(), &query) {
            Answer::Refused => "REFUSED".to_string(),
            Answer::Forward => "FORWARD".to_string(),
            Answer::Local(records) if records.is_empty() => "NODATA".to_string(),
            Answer::Local(records) => records
                .iter()
                .map(|r| format!("{} {} {}", r.name, r.ttl, r.data))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    const FRONT: &str = "10.0.1.5";
    const BACK: &str = "10.0.2.5";
    const BOTH_FRONT_ADDR: &str = "10.0.1.9";

    #[test]
    fn service_name_gives_its_vip() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "web", RecordType::A), "web 30 10.0.1.2");
        assert_eq!(ask(&z, FRONT, "web.", RecordType::A), "web. 30 10.0.1.2");
        assert_eq!(ask(&z, FRONT, "web", RecordType::ANY), "web 30 10.0.1.2");
    }

    #[test]
    fn alias_gives_the_vip() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "www", RecordType::A), "www 30 10.0.1.2");
    }

    #[test]
    fn names_are_case_insensitive_and_the_owner_keeps_the_asked_case() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "WeB.", RecordType::A), "WeB. 30 10.0.1.2");
        assert_eq!(ask(&z, FRONT, "WWW", RecordType::A), "WWW 30 10.0.1.2");
        assert_eq!(
            ask(&z, FRONT, "Tasks.Web", RecordType::A),
            "Tasks.Web 5 10.0.1.5, Tasks.Web 5 10.0.1.6"
        );
    }

    #[test]
    fn tasks_name_gives_the_running_tasks() {
        let z = zone();
        assert_eq!(
            ask(&z, FRONT, "tasks.web", RecordType::A),
            "tasks.web 5 10.0.1.5, tasks.web 5 10.0.1.6"
        );
        assert_eq!(
            ask(&z, FRONT, "tasks.www.", RecordType::A),
            "tasks.www. 5 10.0.1.5, tasks.www. 5 10.0.1.6"
        );
        assert_eq!(ask(&z, FRONT, "tasks.idle", RecordType::A), "NODATA");
    }

    #[test]
    fn dnsrr_gives_the_tasks_and_nodata_without_tasks() {
        let z = zone();
        assert_eq!(
            ask(&z, FRONT, "cache", RecordType::A),
            "cache 5 10.0.1.7, cache 5 10.0.1.8"
        );
        assert_eq!(ask(&z, FRONT, "empty-rr", RecordType::A), "NODATA");
    }

    #[test]
    fn vip_without_backends_still_answers() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "idle", RecordType::A), "idle 30 10.0.1.3");
    }

    #[test]
    fn networks_are_isolated() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "secret", RecordType::A), "FORWARD");
        assert_eq!(ask(&z, FRONT, "tasks.secret", RecordType::A), "FORWARD");
        assert_eq!(ask(&z, BACK, "web", RecordType::A), "FORWARD");
        assert_eq!(ask(&z, BACK, "secret", RecordType::A), "secret 30 10.0.2.2");
        assert_eq!(ask(&z, BACK, "api", RecordType::A), "api 30 10.0.2.20");
        assert_eq!(ask(&z, FRONT, "api", RecordType::A), "api 30 10.0.1.20");
    }

    #[test]
    fn a_task_on_two_networks_sees_both_and_prefers_its_primary() {
        let z = zone();
        for src in ["10.0.2.6", BOTH_FRONT_ADDR] {
            assert_eq!(ask(&z, src, "web", RecordType::A), "web 30 10.0.1.2");
            assert_eq!(ask(&z, src, "secret", RecordType::A), "secret 30 10.0.2.2");
            assert_eq!(ask(&z, src, "api", RecordType::A), "api 30 10.0.2.20");
        }
    }

    #[test]
    fn other_types_of_our_names_are_nodata() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "web", RecordType::AAAA), "NODATA");
        assert_eq!(ask(&z, FRONT, "tasks.web", RecordType::AAAA), "NODATA");
        assert_eq!(ask(&z, FRONT, "web", RecordType::MX), "NODATA");
        assert_eq!(ask(&z, FRONT, "secret", RecordType::AAAA), "FORWARD");
    }

    #[test]
    fn ptr_of_vips_and_tasks_on_shared_networks() {
        let z = zone();
        assert_eq!(
            ask(&z, FRONT, "2.1.0.10.in-addr.arpa.", RecordType::PTR),
            "2.1.0.10.in-addr.arpa. 30 web."
        );
        assert_eq!(
            ask(&z, FRONT, "6.1.0.10.in-addr.arpa.", RecordType::PTR),
            "6.1.0.10.in-addr.arpa. 5 web."
        );
        assert_eq!(
            ask(&z, FRONT, "8.1.0.10.IN-ADDR.ARPA.", RecordType::PTR),
            "8.1.0.10.IN-ADDR.ARPA. 5 cache."
        );
        // Not shared, unknown, a zone rather than an address, IPv6: not ours.
        assert_eq!(
            ask(&z, FRONT, "2.2.0.10.in-addr.arpa.", RecordType::PTR),
            "FORWARD"
        );
        assert_eq!(
            ask(&z, FRONT, "99.1.0.10.in-addr.arpa.", RecordType::PTR),
            "FORWARD"
        );
        assert_eq!(
            ask(&z, FRONT, "1.0.10.in-addr.arpa.", RecordType::PTR),
            "FORWARD"
        );
        assert_eq!(
            ask(
                &z,
                FRONT,
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
                RecordType::PTR
            ),
            "FORWARD"
        );
    }

    #[test]
    fn unknown_names_are_forwarded() {
        let z = zone();
        assert_eq!(ask(&z, FRONT, "example.com.", RecordType::A), "FORWARD");
        assert_eq!(ask(&z, FRONT, "tasks.", RecordType::A), "FORWARD");
        assert_eq!(ask(&z, FRONT, "web.example.com", RecordType::A), "FORWARD");
    }

    #[test]
    fn strangers_are_refused() {
        let z = zone();
        assert_eq!(ask(&z, "10.0.1.6", "web", RecordType::A), "REFUSED"); // a remote task
        assert_eq!(
            ask(&z, "192.0.2.1", "example.com", RecordType::A),
            "REFUSED"
        );
        // A local task whose network the map lacks sees no service, but may resolve names.
        assert_eq!(ask(&z, "10.0.9.5", "web", RecordType::A), "FORWARD");
        assert_eq!(ask(&z, "::1", "web", RecordType::A), "REFUSED");
        assert!(z.knows_asker(FRONT.parse().unwrap()));
        assert!(!z.knows_asker("10.0.1.6".parse().unwrap()));
    }

    #[test]
    fn other_classes_are_forwarded() {
        let z = zone();
        let mut query = Query::query(Name::from_ascii("web").unwrap(), RecordType::A);
        query.set_query_class(DNSClass::CH);
        assert_eq!(z.answer(FRONT.parse().unwrap(), &query), Answer::Forward);
    }
}
