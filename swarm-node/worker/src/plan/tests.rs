use std::collections::HashMap;

use swarm_state::models::{TaskSpec, TaskSpecContainerSpec, TaskStatus};

use super::*;
use crate::runtime::labels;

fn task(id: &str, observed: TaskState, desired: TaskState) -> Task {
    Task {
        id: Some(id.into()),
        service_id: Some("svc".into()),
        node_id: Some("node".into()),
        slot: Some(1),
        labels: Some(HashMap::from([(
            labels::SERVICE_NAME.to_string(),
            "web".to_string(),
        )])),
        spec: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("busybox:latest".into()),
                stop_grace_period: Some(2_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: Some(observed),
            ..Default::default()
        }),
        desired_state: Some(desired),
        ..Default::default()
    }
}

/// No task has its networks ready.
fn none() -> ReadyNetworks {
    ReadyNetworks::new()
}

fn container(task_id: &str, state: RunState) -> TaskContainer {
    TaskContainer {
        id: format!("c-{task_id}"),
        name: format!("web.1.{task_id}"),
        task_id: task_id.into(),
        state,
        health: Health::None,
        labels: Default::default(),
    }
}

fn exited(code: i64) -> RunState {
    RunState::Exited { code, error: None }
}

/// The single action planned for one task with at most one container.
fn one(t: Task, c: Option<RunState>) -> Option<Action> {
    let id = t.id.clone().unwrap();
    let actual: Vec<TaskContainer> = c.into_iter().map(|s| container(&id, s)).collect();
    let mut actions = plan(&[t], &actual, &none());
    assert!(actions.len() <= 1, "{actions:?}");
    actions.pop()
}

fn reported(a: Option<Action>) -> StatusChange {
    match a {
        Some(Action::Report { change, .. }) => change,
        other => panic!("expected a report, got {other:?}"),
    }
}

use TaskState::*;

#[test]
fn new_assignment_is_accepted_then_preparing() {
    let c = reported(one(task("t", ASSIGNED, RUNNING), None));
    assert_eq!((c.state, c.message.as_str()), (ACCEPTED, "accepted"));
    let c = reported(one(task("t", ACCEPTED, RUNNING), None));
    assert_eq!((c.state, c.message.as_str()), (PREPARING, "preparing"));
}

#[test]
fn preparing_creates_the_container_with_swarm_naming() {
    match one(task("t", PREPARING, RUNNING), None) {
        Some(Action::Prepare { task_id, spec }) => {
            assert_eq!(task_id, "t");
            assert_eq!(spec.name, "web.1.t");
            assert_eq!(spec.image, "busybox:latest");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn prepared_but_vanished_container_is_created_again() {
    assert!(matches!(
        one(task("t", READY, RUNNING), None),
        Some(Action::Prepare { .. })
    ));
    assert!(matches!(
        one(task("t", STARTING, RUNNING), None),
        Some(Action::Prepare { .. })
    ));
}

#[test]
fn a_spec_that_cannot_run_is_rejected() {
    let mut t = task("t", PREPARING, RUNNING);
    t.spec = Some(TaskSpec::default());
    let c = reported(one(t, None));
    assert_eq!(c.state, REJECTED);
    assert!(c.err.unwrap().contains("no container spec"));
}

#[test]
fn created_container_goes_ready_starting_then_start() {
    let c = reported(one(task("t", PREPARING, RUNNING), Some(RunState::Created)));
    assert_eq!((c.state, c.container_id.as_deref()), (READY, Some("c-t")));
    let c = reported(one(task("t", READY, RUNNING), Some(RunState::Created)));
    assert_eq!(c.state, STARTING);
    assert_eq!(
        one(task("t", STARTING, RUNNING), Some(RunState::Created)),
        Some(Action::Start {
            task_id: "t".into(),
            container_id: "c-t".into()
        })
    );
}

#[test]
fn desired_ready_holds_the_task_prepared() {
    let c = reported(one(task("t", ASSIGNED, READY), None));
    assert_eq!(c.state, ACCEPTED);
    assert!(matches!(
        one(task("t", PREPARING, READY), None),
        Some(Action::Prepare { .. })
    ));
    let c = reported(one(task("t", PREPARING, READY), Some(RunState::Created)));
    assert_eq!(c.state, READY);
    assert_eq!(one(task("t", READY, READY), Some(RunState::Created)), None);
}

#[test]
fn desired_below_ready_waits() {
    assert_eq!(one(task("t", ASSIGNED, ASSIGNED), None), None);
    assert_eq!(one(task("t", NEW, NEW), None), None);
}

#[test]
fn running_container_is_reported_and_then_left_alone() {
    let c = reported(one(task("t", STARTING, RUNNING), Some(RunState::Running)));
    assert_eq!((c.state, c.message.as_str()), (RUNNING, "started"));
    assert_eq!(
        one(task("t", RUNNING, RUNNING), Some(RunState::Running)),
        None
    );
}

#[test]
fn adoption_after_restart_reports_forward_and_never_creates() {
    // The managers still think the task is being accepted; its container runs already.
    let c = reported(one(task("t", ASSIGNED, RUNNING), Some(RunState::Running)));
    assert_eq!(c.state, RUNNING);
    // A created container of an accepted task is adopted too.
    let c = reported(one(task("t", ACCEPTED, RUNNING), Some(RunState::Created)));
    assert_eq!(c.state, READY);
}

#[test]
fn exit_zero_completes() {
    let c = reported(one(task("t", RUNNING, RUNNING), Some(exited(0))));
    assert_eq!((c.state, c.exit_code, c.err), (COMPLETE, Some(0), None));
}

#[test]
fn non_zero_exit_fails_with_docker_wording() {
    let c = reported(one(task("t", RUNNING, RUNNING), Some(exited(137))));
    assert_eq!(c.state, FAILED);
    assert_eq!(c.err.as_deref(), Some("task: non-zero exit (137)"));
    assert_eq!(c.exit_code, Some(137));
    assert_eq!(c.container_id.as_deref(), Some("c-t"));
}

#[test]
fn engine_error_on_exit_is_the_failure_reason() {
    let state = RunState::Exited {
        code: 127,
        error: Some("exec: \"nope\": executable file not found".into()),
    };
    let c = reported(one(task("t", STARTING, RUNNING), Some(state)));
    assert_eq!(c.state, FAILED);
    assert!(c.err.unwrap().contains("executable file not found"));
}

#[test]
fn an_exited_container_is_never_restarted() {
    for observed in [COMPLETE, FAILED] {
        assert_eq!(one(task("t", observed, RUNNING), Some(exited(1))), None);
    }
}

#[test]
fn running_task_whose_container_disappeared_fails() {
    let c = reported(one(task("t", RUNNING, RUNNING), None));
    assert_eq!(c.state, FAILED);
    assert_eq!(c.err.as_deref(), Some("task: container was removed"));
}

#[test]
fn running_task_whose_container_is_only_created_fails() {
    let c = reported(one(task("t", RUNNING, RUNNING), Some(RunState::Created)));
    assert_eq!(c.state, FAILED);
}

#[test]
fn desired_shutdown_stops_with_the_spec_grace_period() {
    assert_eq!(
        one(task("t", RUNNING, SHUTDOWN), Some(RunState::Running)),
        Some(Action::Stop {
            task_id: "t".into(),
            container_id: "c-t".into(),
            grace: Some(Duration::from_secs(2)),
        })
    );
}

#[test]
fn stopped_by_request_is_shutdown_whatever_the_exit_code() {
    let c = reported(one(task("t", RUNNING, SHUTDOWN), Some(exited(143))));
    assert_eq!((c.state, c.err, c.exit_code), (SHUTDOWN, None, Some(143)));
}

#[test]
fn shutdown_before_start_needs_no_container() {
    for observed in [ASSIGNED, ACCEPTED, PREPARING] {
        let c = reported(one(task("t", observed, SHUTDOWN), None));
        assert_eq!(c.state, SHUTDOWN);
    }
    let c = reported(one(task("t", READY, SHUTDOWN), Some(RunState::Created)));
    assert_eq!(c.state, SHUTDOWN);
}

#[test]
fn desired_remove_stops_reports_then_removes() {
    assert!(matches!(
        one(task("t", RUNNING, REMOVE), Some(RunState::Running)),
        Some(Action::Stop { .. })
    ));
    let c = reported(one(task("t", RUNNING, REMOVE), Some(exited(137))));
    assert_eq!(c.state, SHUTDOWN);
    assert_eq!(
        one(task("t", SHUTDOWN, REMOVE), Some(exited(137))),
        Some(Action::Remove {
            task_id: "t".into(),
            container_id: "c-t".into()
        })
    );
    assert_eq!(one(task("t", SHUTDOWN, REMOVE), None), None);
    assert_eq!(
        one(task("t", SHUTDOWN, REMOVE), Some(RunState::Removing)),
        None
    );
}

#[test]
fn terminal_tasks_keep_their_container_until_removed() {
    assert_eq!(one(task("t", SHUTDOWN, SHUTDOWN), Some(exited(143))), None);
    assert_eq!(one(task("t", FAILED, SHUTDOWN), Some(exited(1))), None);
    assert_eq!(one(task("t", SHUTDOWN, SHUTDOWN), None), None);
}

#[test]
fn a_terminal_task_with_a_running_container_is_stopped() {
    for observed in [ORPHANED, SHUTDOWN, FAILED] {
        assert!(matches!(
            one(task("t", observed, RUNNING), Some(RunState::Running)),
            Some(Action::Stop { .. })
        ));
    }
}

#[test]
fn containers_of_unassigned_tasks_are_stopped_then_removed() {
    let actual = vec![
        container("gone1", RunState::Running),
        container("gone2", exited(0)),
        container("gone3", RunState::Created),
        container("gone4", RunState::Removing),
    ];
    let actions = plan::<Task>(&[], &actual, &none());
    assert_eq!(
        actions,
        vec![
            Action::Stop {
                task_id: "gone1".into(),
                container_id: "c-gone1".into(),
                grace: None
            },
            Action::Remove {
                task_id: "gone2".into(),
                container_id: "c-gone2".into()
            },
            Action::Remove {
                task_id: "gone3".into(),
                container_id: "c-gone3".into()
            },
        ]
    );
}

#[test]
fn many_tasks_are_planned_independently() {
    let desired = vec![
        task("a", ASSIGNED, RUNNING),
        task("b", RUNNING, RUNNING),
        task("c", RUNNING, SHUTDOWN),
    ];
    let actual = vec![
        container("b", RunState::Running),
        container("c", RunState::Running),
        container("x", RunState::Running),
    ];
    let actions = plan(&desired, &actual, &none());
    let ids: Vec<&str> = actions.iter().map(Action::task_id).collect();
    assert_eq!(ids, vec!["a", "c", "x"]);
    assert!(matches!(actions[0], Action::Report { .. }));
    assert!(matches!(actions[1], Action::Stop { .. }));
    assert!(matches!(actions[2], Action::Stop { grace: None, .. }));
}

#[test]
fn a_second_container_of_the_same_task_is_never_created() {
    let mut actual = vec![container("t", exited(1)), container("t", RunState::Running)];
    actual[0].id = "old".into();
    // The running one stands for the task; nothing is created or started.
    assert_eq!(
        plan(&[task("t", RUNNING, RUNNING)], &actual, &none()),
        vec![]
    );
}

#[test]
fn tasks_without_id_are_ignored() {
    let mut t = task("t", ASSIGNED, RUNNING);
    t.id = None;
    assert_eq!(plan(&[t], &[], &none()), vec![]);
}

#[test]
fn walking_the_whole_machine_reaches_running() {
    // Simulates the executor: apply each report and each engine step, re-plan.
    let mut t = task("t", ASSIGNED, RUNNING);
    let mut c: Option<RunState> = None;
    let mut seen = vec![];
    for _ in 0..10 {
        let actual: Vec<TaskContainer> = c.iter().map(|s| container("t", s.clone())).collect();
        match plan(std::slice::from_ref(&t), &actual, &none()).pop() {
            Some(Action::Report { change, .. }) => {
                seen.push(change.state);
                t.status.as_mut().unwrap().state = Some(change.state);
            }
            Some(Action::Prepare { .. }) => c = Some(RunState::Created),
            Some(Action::Start { .. }) => c = Some(RunState::Running),
            None => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec![ACCEPTED, PREPARING, READY, STARTING, RUNNING]);
}

fn networked(id: &str, observed: TaskState) -> Task {
    let mut t = task(id, observed, RUNNING);
    t.spec.as_mut().unwrap().networks = Some(vec![swarm_state::models::NetworkAttachmentConfig {
        target: Some("net1".into()),
        ..Default::default()
    }]);
    t
}

fn ready(id: &str) -> ReadyNetworks {
    ReadyNetworks::from([(
        id.to_string(),
        vec![crate::runtime::TaskNetwork {
            docker_network: "front".into(),
            addr: "10.0.1.5".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.0.1.1".parse().unwrap(),
        }],
    )])
}

#[test]
fn a_networked_task_waits_in_preparing_until_its_networks_are_ready() {
    // Accepting and preparing do not wait: only the container's creation does.
    let c = reported(one(networked("t", ASSIGNED), None));
    assert_eq!(c.state, ACCEPTED);
    let c = reported(one(networked("t", ACCEPTED), None));
    assert_eq!(c.state, PREPARING);
    assert_eq!(plan(&[networked("t", PREPARING)], &[], &none()), vec![]);
    // Another task's readiness does not count.
    assert_eq!(plan(&[networked("t", PREPARING)], &[], &ready("u")), vec![]);
    // Nor does an empty attachment list.
    let empty = ReadyNetworks::from([("t".to_string(), vec![])]);
    assert_eq!(plan(&[networked("t", PREPARING)], &[], &empty), vec![]);

    match plan(&[networked("t", PREPARING)], &[], &ready("t")).pop() {
        Some(Action::Prepare { spec, .. }) => {
            assert_eq!(spec.networks, ready("t")["t"]);
            let h = spec.body.host_config.unwrap();
            assert_eq!(h.network_mode.as_deref(), Some("front"));
            assert_eq!(h.dns, Some(vec!["10.0.1.1".to_string()]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_without_networks_does_not_wait_and_keeps_the_default_bridge() {
    match plan(&[task("t", PREPARING, RUNNING)], &[], &none()).pop() {
        Some(Action::Prepare { spec, .. }) => {
            assert!(spec.networks.is_empty());
            assert!(spec.body.networking_config.is_none());
            assert_eq!(spec.body.host_config.unwrap().network_mode, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_created_networked_container_starts_without_waiting_again() {
    let t = networked("t", STARTING);
    let actual = vec![container("t", RunState::Created)];
    assert!(matches!(
        plan(&[t], &actual, &none()).pop(),
        Some(Action::Start { .. })
    ));
}

#[test]
fn a_networked_task_that_cannot_run_is_rejected_without_waiting() {
    let mut t = networked("t", PREPARING);
    t.spec.as_mut().unwrap().container_spec = None;
    let c = match plan(&[t], &[], &none()).pop() {
        Some(Action::Report { change, .. }) => change,
        other => panic!("{other:?}"),
    };
    assert_eq!(c.state, REJECTED);
}

fn with_health(task_id: &str, health: Health) -> TaskContainer {
    TaskContainer {
        health,
        ..container(task_id, RunState::Running)
    }
}

#[test]
fn a_health_checked_task_is_starting_until_healthy_and_fails_when_unhealthy() {
    let plan_one = |observed, c: TaskContainer| {
        let t = task("t1", observed, RUNNING);
        plan_task("t1", &t, Some(&c), None)
    };
    // Started, health not yet known: Starting, and nothing more while it stays so.
    assert!(plan_one(STARTING, with_health("t1", Health::Starting)).is_none());
    let change = reported(plan_one(READY, with_health("t1", Health::Starting)));
    assert_eq!(change.state, STARTING);
    // Healthy: Running.
    let change = reported(plan_one(STARTING, with_health("t1", Health::Healthy)));
    assert_eq!(change.state, RUNNING);
    // Unhealthy, before or after it ran: failed with Docker's words.
    for observed in [STARTING, RUNNING] {
        let change = reported(plan_one(observed, with_health("t1", Health::Unhealthy)));
        assert_eq!(change.state, FAILED);
        assert_eq!(change.err.as_deref(), Some(UNHEALTHY));
    }
    // A failed task's container that still runs is stopped.
    assert!(matches!(
        plan_one(FAILED, with_health("t1", Health::Unhealthy)),
        Some(Action::Stop { .. })
    ));
}
