use std::collections::BTreeSet;

use swarm_state::models::{
    EndpointSpec, EndpointSpecModeEnum, NetworkAttachmentConfig, Node, NodeStatus, Service,
    ServiceSpec, Task, TaskSpec, TaskState,
};
use swarm_state::network::{Ipv4Net, NetworkRecord};
use swarm_state::{status, ClusterState, Command};

use super::*;

fn network(id: &str, subnet: &str, range: Option<&str>) -> NetworkRecord {
    let subnet: Ipv4Net = subnet.parse().unwrap();
    NetworkRecord {
        network: swarm_state::models::Network {
            id: Some(id.into()),
            name: Some(format!("net-{id}")),
            ..Default::default()
        },
        vni: 4097,
        subnet,
        gateway: subnet.hosts().next().unwrap(),
        ip_range: range.map(|r| r.parse().unwrap()).unwrap_or(subnet),
        encrypted: false,
        mtu: None,
    }
}

fn attach(ids: &[&str]) -> Option<Vec<NetworkAttachmentConfig>> {
    Some(
        ids.iter()
            .map(|id| NetworkAttachmentConfig {
                target: Some(id.to_string()),
                ..Default::default()
            })
            .collect(),
    )
}

fn service(id: &str, networks: &[&str], mode: EndpointSpecModeEnum) -> Service {
    Service {
        id: Some(id.into()),
        spec: Some(ServiceSpec {
            name: Some(id.into()),
            task_template: Some(TaskSpec {
                networks: attach(networks),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(mode),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, service: &str, node: &str, networks: &[&str]) -> Task {
    Task {
        id: Some(id.into()),
        service_id: Some(service.into()),
        node_id: Some(node.into()),
        spec: Some(TaskSpec {
            networks: attach(networks),
            ..Default::default()
        }),
        desired_state: Some(TaskState::RUNNING),
        status: Some(status(TaskState::ASSIGNED, "assigned", "t")),
        ..Default::default()
    }
}

fn node(id: &str, addr: &str) -> Node {
    Node {
        id: Some(id.into()),
        status: Some(NodeStatus {
            addr: Some(addr.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn state_with(networks: Vec<NetworkRecord>) -> ClusterState {
    let mut s = ClusterState::default();
    for n in networks {
        s.networks.insert(n.id().to_string(), n);
    }
    s.nodes.insert("n1".into(), node("n1", "192.0.2.1"));
    s.nodes.insert("n2".into(), node("n2", "192.0.2.2"));
    s
}

/// Proposes what the allocator decides, as the leader would, and checks apply takes it.
fn settle(state: &mut ClusterState) -> usize {
    let mut rounds = 0;
    while let Some(a) = allocate(state) {
        let index = state.last_index + 1;
        let r = state.apply(
            &Command::Allocate {
                allocation: Box::new(a),
            },
            index,
        );
        assert_eq!(r.error, None, "apply refused the allocator's choice");
        rounds += 1;
        assert!(rounds < 10, "the allocator does not settle");
    }
    rounds
}

#[test]
fn services_tasks_and_nodes_get_distinct_addresses_and_apply_accepts_them() {
    let mut s = state_with(vec![network("a", "10.0.1.0/24", None)]);
    s.services.insert(
        "web".into(),
        service("web", &["a"], EndpointSpecModeEnum::VIP),
    );
    for (i, n) in ["n1", "n2", "n1"].iter().enumerate() {
        let id = format!("t{i}");
        s.tasks.insert(id.clone(), task(&id, "web", n, &["a"]));
    }
    assert_eq!(settle(&mut s), 1);

    let vip = s.service_vips["web"]["a"];
    let mut all: Vec<Ipv4Addr> = vec![vip];
    all.extend(s.task_networks.values().flatten().map(|a| a.addr));
    all.extend(s.node_networks.values().flat_map(|m| m.values().copied()));
    assert_eq!(all.len(), 1 + 3 + 2, "one VIP, three tasks, two nodes");
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "no address twice: {all:?}");
    assert!(
        !all.contains(&"10.0.1.1".parse().unwrap()),
        "the gateway is never handed out"
    );
    assert_eq!(vip, "10.0.1.2".parse::<Ipv4Addr>().unwrap());
}

#[test]
fn a_freed_address_is_not_reused_at_once() {
    let mut s = state_with(vec![network("a", "10.0.1.0/24", None)]);
    s.services.insert(
        "web".into(),
        service("web", &["a"], EndpointSpecModeEnum::DNSRR),
    );
    s.tasks.insert("t1".into(), task("t1", "web", "n1", &["a"]));
    settle(&mut s);
    let first = s.task_networks["t1"][0].addr;
    s.apply(
        &Command::RemoveTasks {
            ids: vec!["t1".into()],
        },
        100,
    );
    s.tasks.insert("t2".into(), task("t2", "web", "n1", &["a"]));
    settle(&mut s);
    assert_ne!(s.task_networks["t2"][0].addr, first);
}

#[test]
fn a_full_network_leaves_the_task_waiting_with_a_clear_error_once() {
    // A /30 range inside the /24 holds .4-.7: .4 is the range's network address but a
    // valid host of the subnet, so four addresses fit.
    let mut s = state_with(vec![network("a", "10.0.1.0/24", Some("10.0.1.4/30"))]);
    s.services.insert(
        "web".into(),
        service("web", &["a"], EndpointSpecModeEnum::DNSRR),
    );
    for i in 0..6 {
        let id = format!("t{i}");
        s.tasks.insert(id.clone(), task(&id, "web", "n1", &["a"]));
    }
    settle(&mut s);
    let waiting: Vec<&Task> = s
        .tasks
        .values()
        .map(|t| &**t)
        .filter(|t| !s.task_networks.contains_key(t.id.as_deref().unwrap()))
        .collect();
    assert_eq!(
        waiting.len(),
        2,
        "tasks come first: four of them fill the range"
    );
    for t in waiting {
        let err = t.status.as_ref().and_then(|s| s.err.clone()).unwrap();
        assert_eq!(err, exhausted_message("net-a"));
        assert_eq!(t.status.as_ref().unwrap().state, Some(TaskState::ASSIGNED));
    }
    assert!(
        allocate(&s).is_none(),
        "the same failure is not proposed again"
    );
}

#[test]
fn vips_follow_the_endpoint_mode_and_the_networks_of_the_service() {
    let mut s = state_with(vec![
        network("a", "10.0.1.0/24", None),
        network("b", "10.0.2.0/24", None),
    ]);
    s.services.insert(
        "web".into(),
        service("web", &["a", "b"], EndpointSpecModeEnum::VIP),
    );
    settle(&mut s);
    assert_eq!(s.service_vips["web"].len(), 2);

    s.services.insert(
        "web".into(),
        service("web", &["b"], EndpointSpecModeEnum::VIP),
    );
    settle(&mut s);
    assert_eq!(
        s.service_vips["web"].keys().collect::<Vec<_>>(),
        vec!["b"],
        "leaving a network gives its VIP back"
    );

    s.services.insert(
        "web".into(),
        service("web", &["b"], EndpointSpecModeEnum::DNSRR),
    );
    settle(&mut s);
    assert!(!s.service_vips.contains_key("web"), "dnsrr has no VIP");
}

#[test]
fn ended_tasks_get_nothing_and_apply_refuses_a_double_allocation() {
    let mut s = state_with(vec![network("a", "10.0.1.0/24", None)]);
    s.services.insert(
        "web".into(),
        service("web", &["a"], EndpointSpecModeEnum::DNSRR),
    );
    let mut dead = task("t1", "web", "n1", &["a"]);
    dead.status = Some(status(TaskState::FAILED, "failed", "t"));
    s.tasks.insert("t1".into(), dead);
    assert!(allocate(&s).is_none());

    s.tasks.insert("t2".into(), task("t2", "web", "n1", &["a"]));
    s.tasks.insert("t3".into(), task("t3", "web", "n1", &["a"]));
    settle(&mut s);
    let taken = s.task_networks["t2"][0].clone();
    let mut clash = Allocation::default();
    s.tasks.insert("t4".into(), task("t4", "web", "n1", &["a"]));
    clash.tasks.push(("t4".into(), vec![taken]));
    let r = s.apply(
        &Command::Allocate {
            allocation: Box::new(clash),
        },
        500,
    );
    assert!(
        matches!(r.error, Some(swarm_state::ApplyError::Conflict(_))),
        "{r:?}"
    );
    assert!(
        !s.task_networks.contains_key("t4"),
        "nothing of a refused allocation is kept"
    );
}

// === published ports ===

use swarm_state::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum as Proto,
    EndpointPortConfigPublishModeEnum as Mode, NodeState,
};
use swarm_state::ports::DYNAMIC_PORTS;

fn port(published: i64, target: i64) -> EndpointPortConfig {
    EndpointPortConfig {
        target_port: Some(target),
        published_port: Some(published),
        ..Default::default()
    }
}

/// A swarm with an ingress network, a user network and two Ready nodes.
fn mesh() -> ClusterState {
    let mut ingress = network("ing", "10.0.0.0/24", None);
    ingress.network.ingress = Some(true);
    let mut s = state_with(vec![ingress, network("a", "10.0.1.0/24", None)]);
    let ids: Vec<String> = s.nodes.keys().cloned().collect();
    for id in ids {
        let n = s.nodes.get_mut(&id).unwrap();
        n.status.as_mut().unwrap().state = Some(NodeState::READY);
    }
    s
}

fn publishing(id: &str, networks: &[&str], ports: Vec<EndpointPortConfig>) -> Service {
    let mut s = service(id, networks, EndpointSpecModeEnum::VIP);
    s.spec
        .as_mut()
        .unwrap()
        .endpoint_spec
        .as_mut()
        .unwrap()
        .ports = Some(ports);
    s
}

fn set_ports(s: &mut ClusterState, id: &str, ports: Vec<EndpointPortConfig>) {
    let spec = s.services.get_mut(id).unwrap().spec.as_mut().unwrap();
    spec.endpoint_spec.as_mut().unwrap().ports = Some(ports);
}

fn published(s: &ClusterState, id: &str) -> Vec<(i64, i64)> {
    s.endpoint_ports(id)
        .iter()
        .map(|p| (p.published_port.unwrap(), p.target_port.unwrap()))
        .collect()
}

/// A task of a service as the orchestrator makes it: its spec is the service's.
fn task_of(s: &ClusterState, id: &str, service: &str, node: &str) -> Task {
    let mut t = task(id, service, node, &[]);
    t.spec = Some(s.task_spec_of(s.services[service].spec.as_ref().unwrap()));
    t
}

#[test]
fn a_port_without_a_number_gets_a_dynamic_one_that_stays() {
    let mut s = mesh();
    s.services.insert(
        "web".into(),
        publishing("web", &[], vec![port(0, 80), port(8080, 81)]),
    );
    settle(&mut s);
    let ports = s.endpoint_ports("web").to_vec();
    assert_eq!(ports.len(), 2);
    let dynamic = ports[0].published_port.unwrap() as u16;
    assert!(DYNAMIC_PORTS.contains(&dynamic), "{dynamic}");
    assert_eq!(ports[0].protocol, Some(Proto::TCP), "defaults written out");
    assert_eq!(ports[0].publish_mode, Some(Mode::INGRESS));
    assert_eq!(ports[1].published_port, Some(8080));

    // An update that still asks for it keeps it; nothing to do when nothing changed.
    assert!(allocate(&s).is_none());
    set_ports(
        &mut s,
        "web",
        vec![port(8080, 81), port(0, 80), port(0, 90)],
    );
    settle(&mut s);
    let after = published(&s, "web");
    assert_eq!(after[1], (i64::from(dynamic), 80), "kept across the update");
    assert_ne!(after[2].0, i64::from(dynamic));

    // Another service's dynamic port is another number.
    s.services
        .insert("api".into(), publishing("api", &[], vec![port(0, 80)]));
    settle(&mut s);
    let theirs = published(&s, "api")[0].0;
    assert!(!after.iter().any(|(p, _)| *p == theirs));
}

#[test]
fn removing_a_port_or_the_service_frees_it() {
    let mut s = mesh();
    s.services
        .insert("web".into(), publishing("web", &[], vec![port(0, 80)]));
    settle(&mut s);
    let first = published(&s, "web")[0].0;
    // --publish-rm: the CLI sends a spec without the port.
    set_ports(&mut s, "web", vec![]);
    settle(&mut s);
    assert!(s.endpoint_ports("web").is_empty());
    assert!(!s.service_ports.contains_key("web"));

    s.services
        .insert("api".into(), publishing("api", &[], vec![port(0, 80)]));
    settle(&mut s);
    assert_eq!(
        published(&s, "api")[0].0,
        first,
        "the freed port is free again"
    );
    s.apply(&Command::RemoveService { id: "api".into() }, 900);
    assert!(s.service_ports.is_empty());
    let again = publishing("again", &[], vec![port(first, 80)]);
    assert_eq!(s.port_conflict(None, again.spec.as_ref().unwrap()), None);
}

#[test]
fn apply_refuses_an_ingress_port_twice() {
    let mut s = mesh();
    s.services
        .insert("web".into(), publishing("web", &[], vec![port(9200, 9200)]));
    s.services
        .insert("api".into(), publishing("api", &[], vec![]));
    settle(&mut s);
    let clash = Allocation {
        ports: vec![("api".into(), s.endpoint_ports("web").to_vec())],
        ..Default::default()
    };
    let r = s.apply(
        &Command::Allocate {
            allocation: Box::new(clash),
        },
        800,
    );
    assert!(
        matches!(r.error, Some(swarm_state::ApplyError::Conflict(_))),
        "{r:?}"
    );
    assert!(s.endpoint_ports("api").is_empty());
    // A port with no number is not an allocation.
    let unnumbered = Allocation {
        ports: vec![("api".into(), vec![port(0, 80)])],
        ..Default::default()
    };
    let r = s.apply(
        &Command::Allocate {
            allocation: Box::new(unnumbered),
        },
        801,
    );
    assert!(r.error.is_some());
    // Nor does the API's check let a second service ask for it.
    let mut other = s.services["api"].spec.clone().unwrap();
    other.endpoint_spec.as_mut().unwrap().ports = Some(vec![port(9200, 80)]);
    let r = s.apply(
        &Command::UpdateService {
            id: "api".into(),
            version: 0,
            spec: Box::new(other),
            at: "t".into(),
        },
        802,
    );
    assert!(
        matches!(&r.error, Some(swarm_state::ApplyError::Invalid(m)) if m.contains("already in use by service 'web'")),
        "{r:?}"
    );
}

#[test]
fn a_port_two_specs_ask_for_goes_to_one_service_only() {
    // Two updates raced past the API's check: the allocator must not propose both.
    let mut s = mesh();
    s.services
        .insert("a1".into(), publishing("a1", &[], vec![port(9200, 80)]));
    s.services
        .insert("a2".into(), publishing("a2", &[], vec![port(9200, 80)]));
    settle(&mut s);
    assert_eq!(published(&s, "a1"), [(9200, 80)]);
    assert!(s.endpoint_ports("a2").is_empty());
}

#[test]
fn ingress_comes_last_gets_a_vip_and_every_ready_node_an_address() {
    let mut s = mesh();
    s.services
        .insert("web".into(), publishing("web", &["a"], vec![port(80, 80)]));
    let t = task_of(&s, "t1", "web", "n1");
    s.tasks.insert("t1".into(), t);
    settle(&mut s);
    let nets: Vec<&str> = s.task_networks["t1"]
        .iter()
        .map(|a| a.network_id.as_str())
        .collect();
    assert_eq!(nets, ["a", "ing"], "the service's own network stays first");
    assert!(s.service_vips["web"].contains_key("ing"));
    assert!(s.service_vips["web"].contains_key("a"));
    for n in ["n1", "n2"] {
        assert!(
            s.node_networks[n].contains_key("ing"),
            "{n} serves the mesh without tasks"
        );
    }
    assert!(!s.node_networks["n2"].contains_key("a"));

    // Only published ports: ingress is the task's only network.
    s.services
        .insert("solo".into(), publishing("solo", &[], vec![port(81, 80)]));
    let t = task_of(&s, "t2", "solo", "n2");
    s.tasks.insert("t2".into(), t);
    settle(&mut s);
    assert_eq!(s.task_networks["t2"].len(), 1);
    assert_eq!(s.task_networks["t2"][0].network_id, "ing");

    // Host-mode ports need neither ingress nor a port choice.
    let mut host = port(0, 80);
    host.publish_mode = Some(Mode::HOST);
    s.services
        .insert("edge".into(), publishing("edge", &[], vec![host]));
    settle(&mut s);
    assert_eq!(s.endpoint_ports("edge")[0].publish_mode, Some(Mode::HOST));
    assert_eq!(s.endpoint_ports("edge")[0].published_port, Some(0));
    assert!(!s.service_vips.contains_key("edge"));
}
