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
