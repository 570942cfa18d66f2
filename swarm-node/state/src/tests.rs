use super::*;
use models::{NodeSpecAvailabilityEnum, ServiceSpec};

fn service(id: &str, name: &str) -> Service {
    Service {
        id: Some(id.into()),
        spec: Some(ServiceSpec {
            name: Some(name.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(id: &str, host: &str) -> Node {
    Node {
        id: Some(id.into()),
        description: Some(models::NodeDescription {
            hostname: Some(host.into()),
            ..Default::default()
        }),
        spec: Some(NodeSpec {
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn service_names_are_unique_and_versions_follow_the_log() {
    let mut state = ClusterState::default();
    let create = Command::CreateService {
        service: Box::new(service("s1", "web")),
    };
    assert_eq!(state.apply(&create, 3).into_result(), Ok(3));
    let again = Command::CreateService {
        service: Box::new(service("s2", "web")),
    };
    assert!(matches!(
        state.apply(&again, 4).error,
        Some(ApplyError::Conflict(_))
    ));
    assert_eq!(version_of(&state.services["s1"].version), 3);
    let stale = Command::UpdateService {
        id: "s1".into(),
        version: 2,
        spec: Box::new(ServiceSpec::default()),
        at: "t".into(),
    };
    assert!(matches!(
        state.apply(&stale, 5).error,
        Some(ApplyError::VersionConflict { current: 3, .. })
    ));
    assert_eq!(
        state.find_service("web").and_then(|s| s.id.clone()),
        Some("s1".into())
    );
    assert_eq!(
        state.find_service("s").and_then(|s| s.id.clone()),
        Some("s1".into())
    );
}

#[test]
fn task_reports_only_move_forward_and_only_from_the_assigned_node() {
    let mut state = ClusterState::default();
    state.apply(
        &Command::AddNode {
            node: Box::new(node("n1", "a")),
        },
        1,
    );
    let task = Task {
        id: Some("t1".into()),
        node_id: Some("n1".into()),
        desired_state: Some(TaskState::RUNNING),
        status: Some(status(TaskState::ASSIGNED, "assigned", "t0")),
        ..Default::default()
    };
    state.apply(
        &Command::PutTasks {
            tasks: std::sync::Arc::new(vec![task.clone()]),
        },
        2,
    );
    let report = |node: &str, s: TaskState| Command::ReportTaskStatus {
        node_id: node.into(),
        updates: vec![proto::TaskStatusUpdate {
            task_id: "t1".into(),
            status: status(s, "", "t1"),
        }],
    };
    assert_eq!(state.assignment_versions.get("n1"), Some(&2));
    state.apply(&report("n1", TaskState::RUNNING), 3);
    assert_eq!(state_of(&state.tasks["t1"]), TaskState::RUNNING);
    // The node's own progress is not news to it: its assignments keep their version.
    assert_eq!(state.assignment_versions.get("n1"), Some(&2));
    state.apply(&report("n1", TaskState::STARTING), 4);
    assert_eq!(state_of(&state.tasks["t1"]), TaskState::RUNNING);
    state.apply(&report("n2", TaskState::FAILED), 5);
    assert_eq!(state_of(&state.tasks["t1"]), TaskState::RUNNING);
    // The manager re-putting the task (new desired state) keeps the observed status.
    let mut shutdown = task;
    shutdown.desired_state = Some(TaskState::SHUTDOWN);
    state.apply(
        &Command::PutTasks {
            tasks: std::sync::Arc::new(vec![shutdown]),
        },
        6,
    );
    assert_eq!(state_of(&state.tasks["t1"]), TaskState::RUNNING);
    assert_eq!(desired_of(&state.tasks["t1"]), TaskState::SHUTDOWN);
    assert_eq!(state.assignment_versions.get("n1"), Some(&6));
    // A task's end changes what the node is sent (its secrets and configs go).
    state.apply(&report("n1", TaskState::SHUTDOWN), 7);
    assert_eq!(state.assignment_versions.get("n1"), Some(&7));
}

/// The leader skips its look at every task for reports that only say tasks progress:
/// what moves the orchestrator's mark is every other command, a task ending, and any
/// report for a service being updated.
#[test]
fn only_reports_the_orchestrator_acts_on_move_its_mark() {
    let mut state = ClusterState::default();
    let node_cmd = Command::AddNode {
        node: Box::new(node("n1", "a")),
    };
    state.apply(&node_cmd, 1);
    assert_eq!(state.orchestration_index, 1);
    let create = Command::CreateService {
        service: Box::new(service("s1", "web")),
    };
    state.apply(&create, 2);
    let task = |id: &str| Task {
        id: Some(id.into()),
        service_id: Some("s1".into()),
        node_id: Some("n1".into()),
        desired_state: Some(TaskState::RUNNING),
        status: Some(status(TaskState::ASSIGNED, "assigned", "t0")),
        ..Default::default()
    };
    let put = Command::PutTasks {
        tasks: std::sync::Arc::new(vec![task("t1"), task("t2")]),
    };
    state.apply(&put, 3);
    assert_eq!(state.orchestration_index, 3);
    let report = |id: &str, node: &str, s: TaskState| Command::ReportTaskStatuses {
        reports: vec![proto::TaskStatusReport {
            node_id: node.into(),
            updates: vec![proto::TaskStatusUpdate {
                task_id: id.into(),
                status: status(s, "", "t1"),
            }],
        }],
    };
    state.apply(&report("t1", "n1", TaskState::RUNNING), 4);
    assert_eq!(state.last_index, 4);
    assert_eq!(state.orchestration_index, 3, "progress only");
    // From a node the task is not on: nothing changes.
    state.apply(&report("t2", "n9", TaskState::FAILED), 5);
    assert_eq!(state.orchestration_index, 3);
    state.apply(&report("t2", "n1", TaskState::FAILED), 6);
    assert_eq!(state.orchestration_index, 6, "a task ended");
    // While the service updates, any report may matter (start-first waits for Running).
    let updating = Command::SetUpdateStatus {
        id: "s1".into(),
        status: update_status(
            models::ServiceUpdateStatusStateEnum::UPDATING,
            "update in progress",
            "t2",
        ),
        roll_back: false,
        at: "t2".into(),
    };
    state.apply(&updating, 7);
    state.apply(&report("t1", "n1", TaskState::RUNNING), 8);
    assert_eq!(state.orchestration_index, 8, "the service is updating");
}

#[test]
fn nodes_are_found_by_hostname_or_prefix() {
    let mut state = ClusterState::default();
    state.apply(
        &Command::AddNode {
            node: Box::new(node("abc1", "node1")),
        },
        1,
    );
    state.apply(
        &Command::AddNode {
            node: Box::new(node("abd2", "node2")),
        },
        2,
    );
    assert_eq!(
        state.find_node("node2").and_then(|n| n.id.clone()),
        Some("abd2".into())
    );
    assert_eq!(
        state.find_node("abc").and_then(|n| n.id.clone()),
        Some("abc1".into())
    );
    assert!(state.find_node("ab").is_none());
}

#[test]
fn persistent_maps_serialise_as_maps_and_copies_stay_apart() {
    let mut state = ClusterState::default();
    state.apply(
        &Command::AddNode {
            node: Box::new(node("n1", "a")),
        },
        1,
    );
    let tasks: Vec<Task> = ["t2", "t1", "t3"]
        .iter()
        .map(|id| Task {
            id: Some((*id).into()),
            node_id: Some("n1".into()),
            desired_state: Some(TaskState::RUNNING),
            status: Some(status(TaskState::ASSIGNED, "assigned", id)),
            ..Default::default()
        })
        .collect();
    state.apply(
        &Command::PutTasks {
            tasks: std::sync::Arc::new(tasks.clone()),
        },
        2,
    );

    // Tasks in the compact form (see `task_batch`); a snapshot with the ordered std
    // map that snapshots were written with before still reads.
    let text = serde_json::to_string(&state).unwrap();
    assert!(text.contains(r#""tasks":{"Specs":"#), "{text}");
    let back: ClusterState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, state);
    let by_id: BTreeMap<String, Task> = state
        .tasks
        .iter()
        .map(|(k, v)| (k.clone(), (**v).clone()))
        .collect();
    let mut old = serde_json::to_value(&state).unwrap();
    old["tasks"] = serde_json::to_value(&by_id).unwrap();
    let back: ClusterState = serde_json::from_value(old).unwrap();
    assert_eq!(back, state);

    // A copy changed by apply leaves the original as it was.
    let before = state.clone();
    let mut copy = state.clone();
    let report = Command::ReportTaskStatus {
        node_id: "n1".into(),
        updates: vec![proto::TaskStatusUpdate {
            task_id: "t1".into(),
            status: status(TaskState::RUNNING, "", "t1"),
        }],
    };
    copy.apply(&report, 3);
    assert_eq!(state_of(&copy.tasks["t1"]), TaskState::RUNNING);
    assert_eq!(state_of(&state.tasks["t1"]), TaskState::ASSIGNED);
    assert_eq!(state, before);
}

#[test]
fn node_tunnels_are_checked_and_forgotten_with_their_node() {
    use crate::network::NodeTunnel;
    use base64::Engine;
    let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let mut s = ClusterState::default();
    for id in ["n1", "n2"] {
        s.nodes.insert(
            id.into(),
            models::Node {
                id: Some(id.into()),
                ..Default::default()
            },
        );
    }
    let set = |id: &str, k: String, addr: [u8; 4]| Command::SetNodeTunnel {
        id: id.into(),
        tunnel: NodeTunnel {
            public_key: k,
            addr: addr.into(),
        },
    };
    assert_eq!(
        crate::network::tunnel_addr_for(&s, "n1"),
        Some([10, 255, 0, 1].into())
    );
    assert!(s
        .apply(&set("n1", key(1), [10, 255, 0, 1]), 1)
        .error
        .is_none());
    // The same address for another node, a key that is not one, an address outside the
    // subnet and an unknown node are refused.
    assert!(s
        .apply(&set("n2", key(2), [10, 255, 0, 1]), 2)
        .error
        .is_some());
    assert!(s
        .apply(&set("n2", "short".into(), [10, 255, 0, 2]), 3)
        .error
        .is_some());
    assert!(s
        .apply(&set("n2", key(2), [10, 254, 0, 2]), 4)
        .error
        .is_some());
    assert!(s
        .apply(&set("n9", key(9), [10, 255, 0, 9]), 5)
        .error
        .is_some());
    assert_eq!(
        crate::network::tunnel_addr_for(&s, "n2"),
        Some([10, 255, 0, 2].into())
    );
    // A new key keeps the node's address.
    assert_eq!(
        crate::network::tunnel_addr_for(&s, "n1"),
        Some([10, 255, 0, 1].into())
    );
    assert!(s
        .apply(&set("n1", key(3), [10, 255, 0, 1]), 6)
        .error
        .is_none());
    assert_eq!(s.node_tunnels["n1"].public_key, key(3));
    s.apply(&Command::RemoveNode { id: "n1".into() }, 7);
    assert!(s.node_tunnels.is_empty());
}
