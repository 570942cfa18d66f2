use super::*;
use swarm_state::models::{
    Node, NodeSpec, NodeStatus, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    TaskSpecRestartPolicy,
};
use swarm_state::proto::TaskStatusUpdate;
use swarm_state::ClusterInfo;

fn ready_node(id: &str) -> Node {
    Node {
        id: Some(id.into()),
        spec: Some(NodeSpec {
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::READY),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(replicas: i64, delay_ns: i64) -> Service {
    Service {
        id: Some("svc".into()),
        spec: Some(ServiceSpec {
            name: Some("web".into()),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            task_template: Some(TaskSpec {
                restart_policy: Some(TaskSpecRestartPolicy {
                    delay: Some(delay_ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct World {
    state: ClusterState,
    index: u64,
    next: u64,
    now: OffsetDateTime,
}

impl World {
    fn new(nodes: &[&str], svc: Service) -> Self {
        let mut w = World {
            state: ClusterState::default(),
            index: 0,
            next: 0,
            now: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        for n in nodes {
            w.apply(Command::AddNode {
                node: Box::new(ready_node(n)),
            });
        }
        w.apply(Command::CreateService {
            service: Box::new(svc),
        });
        w
    }

    fn apply(&mut self, c: Command) {
        self.index += 1;
        let r = self.state.apply(&c, self.index);
        assert_eq!(r.error, None, "{c:?}");
    }

    /// Runs passes until nothing changes; returns the last plan's wake-up.
    fn settle(&mut self) -> Option<Duration> {
        for _ in 0..10 {
            let mut next = self.next;
            let plan = reconcile(&self.state, self.now, &mut || {
                next += 1;
                format!("t{next}")
            });
            self.next = next;
            if plan.commands.is_empty() {
                return plan.wake_after;
            }
            for c in plan.commands {
                self.apply(c);
            }
        }
        panic!("reconcile did not settle");
    }

    fn report(&mut self, task: &str, state: TaskState) {
        let node = self.state.tasks[task].node_id.clone().unwrap();
        self.apply(Command::ReportTaskStatus {
            node_id: node,
            updates: vec![TaskStatusUpdate {
                task_id: task.into(),
                status: status(state, "", &rfc3339(self.now)),
            }],
        });
    }

    fn active(&self) -> Vec<&Task> {
        self.state
            .tasks
            .values()
            .map(|t| &**t)
            .filter(|t| desired_of(t) <= TaskState::RUNNING)
            .collect()
    }
}

#[test]
fn replicas_are_created_and_spread() {
    let mut w = World::new(&["a", "b", "c"], service(3, 0));
    w.settle();
    let active = w.active();
    assert_eq!(active.len(), 3);
    let mut nodes: Vec<_> = active.iter().map(|t| t.node_id.clone().unwrap()).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["a", "b", "c"]);
    let mut slots: Vec<_> = active.iter().map(|t| t.slot.unwrap()).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3]);
}

#[test]
fn a_failed_task_is_replaced_after_the_restart_delay() {
    let mut w = World::new(&["a"], service(1, 2_000_000_000));
    w.settle();
    w.report("t1", TaskState::RUNNING);
    w.report("t1", TaskState::FAILED);
    let wake = w.settle();
    assert_eq!(desired_of(&w.state.tasks["t1"]), TaskState::SHUTDOWN);
    // The replacement exists at once, held prepared (Docker's "Ready" row) until the
    // delay is over.
    let active = w.active();
    assert_eq!(active.len(), 1);
    assert_eq!(
        desired_of(active[0]),
        TaskState::READY,
        "not started before the delay"
    );
    assert!(wake.is_some_and(|d| d <= Duration::from_secs(2)));
    w.now += Duration::from_secs(2);
    w.settle();
    let active = w.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].slot, Some(1));
    assert_eq!(desired_of(active[0]), TaskState::RUNNING);
    assert_ne!(active[0].id.as_deref(), Some("t1"));
}

#[test]
fn scaling_down_removes_the_highest_slots() {
    let mut w = World::new(&["a", "b"], service(3, 0));
    w.settle();
    let mut spec = w.state.services["svc"].spec.clone().unwrap();
    spec.mode = Some(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
        ..Default::default()
    });
    let version = swarm_state::version_of(&w.state.services["svc"].version);
    w.apply(Command::UpdateService {
        id: "svc".into(),
        version,
        spec: Box::new(spec),
        at: "t".into(),
    });
    w.settle();
    let active = w.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].slot, Some(1));
    // Retired tasks are deleted once their worker reports them stopped.
    let retired: Vec<String> = w
        .state
        .tasks
        .values()
        .filter(|t| desired_of(t) == TaskState::REMOVE)
        .map(|t| t.id.clone().unwrap())
        .collect();
    assert_eq!(retired.len(), 2);
    for id in retired {
        w.report(&id, TaskState::SHUTDOWN);
    }
    w.settle();
    assert_eq!(w.state.tasks.len(), 1);
}

#[test]
fn tasks_move_off_a_down_node_at_once() {
    let mut w = World::new(&["a", "b"], service(2, 5_000_000_000));
    w.settle();
    for id in ["t1", "t2"] {
        w.report(id, TaskState::RUNNING);
    }
    w.apply(Command::SetNodeStatus {
        id: "b".into(),
        status: NodeStatus {
            state: Some(NodeState::DOWN),
            ..Default::default()
        },
        description: None,
        at: "t".into(),
    });
    w.settle();
    let active = w.active();
    assert_eq!(active.len(), 2);
    assert!(active.iter().all(|t| t.node_id.as_deref() == Some("a")));
}

#[test]
fn removing_a_service_retires_its_tasks() {
    let mut w = World::new(&["a"], service(2, 0));
    w.settle();
    w.report("t1", TaskState::RUNNING);
    w.apply(Command::RemoveService { id: "svc".into() });
    w.settle();
    // Both are asked to go away, and deleted once stopped.
    assert_eq!(desired_of(&w.state.tasks["t1"]), TaskState::REMOVE);
    assert_eq!(desired_of(&w.state.tasks["t2"]), TaskState::REMOVE);
    w.report("t1", TaskState::SHUTDOWN);
    w.report("t2", TaskState::SHUTDOWN);
    w.settle();
    assert!(w.state.tasks.is_empty());
}

#[test]
fn history_keeps_five_tasks_per_slot() {
    let mut w = World::new(&["a"], service(1, 0));
    w.settle();
    for _ in 0..8 {
        let id = w.active()[0].id.clone().unwrap();
        w.report(&id, TaskState::RUNNING);
        w.report(&id, TaskState::FAILED);
        w.now += Duration::from_millis(10);
        w.settle();
    }
    assert_eq!(w.state.tasks.len(), TASK_HISTORY_LIMIT);
    assert_eq!(w.active().len(), 1);
}

#[test]
fn pending_tasks_wait_for_a_node() {
    let mut w = World::new(&[], service(2, 0));
    w.settle();
    assert!(w.active().iter().all(|t| t.node_id.is_none()));
    assert_eq!(w.active().len(), 2);
    w.apply(Command::AddNode {
        node: Box::new(ready_node("a")),
    });
    w.settle();
    assert!(w.active().iter().all(|t| t.node_id.as_deref() == Some("a")));
}

#[test]
fn a_new_template_rolls_out_one_slot_at_a_time() {
    let mut w = World::new(&["a", "b"], service(2, 0));
    w.settle();
    for id in ["t1", "t2"] {
        w.report(id, TaskState::RUNNING);
    }
    let mut spec = w.state.services["svc"].spec.clone().unwrap();
    let mut template = spec.task_template.clone().unwrap();
    template.container_spec = Some(swarm_state::models::TaskSpecContainerSpec {
        image: Some("new:2".into()),
        ..Default::default()
    });
    spec.task_template = Some(template.clone());
    let version = swarm_state::version_of(&w.state.services["svc"].version);
    w.apply(Command::UpdateService {
        id: "svc".into(),
        version,
        spec: Box::new(spec),
        at: "t".into(),
    });
    w.settle();
    let fresh: Vec<String> = w
        .active()
        .iter()
        .filter(|t| t.spec.as_ref() == Some(&template))
        .map(|t| t.id.clone().unwrap())
        .collect();
    assert_eq!(fresh.len(), 1, "parallelism 1: one slot at a time");
    assert_eq!(w.active().len(), 2);
    w.report(&fresh[0], TaskState::RUNNING);
    w.settle();
    assert_eq!(
        running_with(&w, &template).len(),
        1,
        "not before the new task has run for a second"
    );
    w.now += Duration::from_secs(1);
    w.settle();
    let fresh = w
        .active()
        .iter()
        .filter(|t| t.spec.as_ref() == Some(&template))
        .count();
    assert_eq!(fresh, 2, "the second slot follows once the first runs");
}

#[test]
fn a_replacement_goes_back_to_the_node_that_lost_its_task() {
    let mut w = World::new(&["a", "b"], service(2, 0));
    w.settle();
    let on_b = w
        .active()
        .iter()
        .find(|t| t.node_id.as_deref() == Some("b"))
        .and_then(|t| t.id.clone())
        .unwrap();
    w.report(&on_b, TaskState::RUNNING);
    w.report(&on_b, TaskState::FAILED);
    w.settle();
    let mut nodes: Vec<_> = w
        .active()
        .iter()
        .map(|t| t.node_id.clone().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["a", "b"], "still spread");
}

#[test]
fn task_writes_are_split_into_bounded_batches() {
    let task = |i: usize, pad: usize| Task {
        id: Some(format!("t{i}")),
        labels: Some([("pad".to_string(), "x".repeat(pad))].into_iter().collect()),
        ..Default::default()
    };
    assert!(task_batches(vec![]).is_empty());
    // By count: 2,500 small tasks make batches of 1,000, 1,000 and 500, in order.
    let batches = task_batches((0..2_500).map(|i| task(i, 0)).collect());
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![1_000, 1_000, 500]);
    assert_eq!(batches[1][0].id.as_deref(), Some("t1000"));
    // By bytes: 100 KB tasks, about ten per megabyte; a task over the budget goes alone.
    let batches = task_batches((0..25).map(|i| task(i, 100_000)).collect());
    assert!(batches.len() >= 3, "{}", batches.len());
    for b in &batches {
        let bytes = serde_json::to_vec(b).unwrap().len();
        assert!(bytes <= MAX_BATCH_BYTES + 1024, "{bytes}");
    }
    let batches = task_batches(vec![task(0, 10), task(1, 2 * MAX_BATCH_BYTES), task(2, 10)]);
    assert_eq!(batches.len(), 3);
    // A spec shared by the batch counts once: 1,000 tasks with the same 10 KB spec fit
    // one entry, whose bytes as written are about one spec and 1,000 small tasks.
    let spec = TaskSpec {
        container_spec: Some(swarm_state::models::TaskSpecContainerSpec {
            args: Some(vec!["x".repeat(10_000)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let with_spec = |i: usize| Task {
        spec: Some(spec.clone()),
        ..task(i, 0)
    };
    let batches = task_batches((0..1_000).map(with_spec).collect());
    assert_eq!(batches.len(), 1);
    let written = serde_json::to_vec(&Command::PutTasks {
        tasks: std::sync::Arc::new(batches[0].clone()),
    })
    .unwrap()
    .len();
    assert!(written < 100_000, "{written}");
    // Distinct large specs still split by bytes.
    let distinct = |i: usize| Task {
        spec: Some(TaskSpec {
            container_spec: Some(swarm_state::models::TaskSpecContainerSpec {
                args: Some(vec![format!("{i}{}", "x".repeat(100_000))]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..task(i, 0)
    };
    assert!(task_batches((0..25).map(distinct).collect()).len() >= 3);
}

#[test]
fn scaling_to_many_replicas_writes_many_entries() {
    let mut t = World::new(&["n1"], service(2_500, 0));
    let mut next = 0;
    let plan = reconcile(&t.state, t.now, &mut || {
        next += 1;
        format!("t{next}")
    });
    assert_eq!(plan.commands.len(), 3, "2,500 tasks in 3 entries");
    for c in plan.commands {
        t.apply(c);
    }
    assert_eq!(t.state.tasks.len(), 2_500);
}

/// Updates the service's image (with the given update config), as `docker service
/// update --image` would, at the world's time.
fn update_image(
    w: &mut World,
    image: &str,
    config: Option<swarm_state::models::ServiceSpecUpdateConfig>,
) -> TaskSpec {
    let mut spec = w.state.services["svc"].spec.clone().unwrap();
    let mut template = spec.task_template.clone().unwrap();
    template.container_spec = Some(swarm_state::models::TaskSpecContainerSpec {
        image: Some(image.into()),
        ..Default::default()
    });
    spec.task_template = Some(template.clone());
    if config.is_some() {
        spec.update_config = config;
    }
    let version = swarm_state::version_of(&w.state.services["svc"].version);
    w.apply(Command::UpdateService {
        id: "svc".into(),
        version,
        spec: Box::new(spec),
        at: rfc3339(w.now),
    });
    template
}

fn running_with(w: &World, template: &TaskSpec) -> Vec<String> {
    w.active()
        .iter()
        .filter(|t| t.spec.as_ref() == Some(template))
        .map(|t| t.id.clone().unwrap())
        .collect()
}

fn update_state(w: &World) -> (Option<UpdateState>, String) {
    let s = w.state.services["svc"]
        .update_status
        .clone()
        .unwrap_or_default();
    (s.state, s.message.unwrap_or_default())
}

fn all_running(w: &mut World) {
    let ids: Vec<String> = w
        .active()
        .iter()
        .filter(|t| state_of(t) < TaskState::RUNNING)
        .map(|t| t.id.clone().unwrap())
        .collect();
    for id in ids {
        w.report(&id, TaskState::RUNNING);
    }
}

#[test]
fn a_failing_update_pauses_after_the_first_failure_and_keeps_the_rest_up() {
    let mut w = World::new(&["a", "b"], service(4, 0));
    w.settle();
    all_running(&mut w);
    let old = w.state.services["svc"]
        .spec
        .clone()
        .unwrap()
        .task_template
        .unwrap();
    let new = update_image(&mut w, "broken:2", None);
    assert_eq!(update_state(&w).0, Some(UpdateState::UPDATING));
    w.settle();
    let fresh = running_with(&w, &new);
    assert_eq!(fresh.len(), 1);
    w.now += Duration::from_secs(1);
    w.report(&fresh[0], TaskState::FAILED);
    for _ in 0..3 {
        w.settle();
        w.now += Duration::from_secs(1);
    }
    let (state, message) = update_state(&w);
    assert_eq!(state, Some(UpdateState::PAUSED));
    assert_eq!(
        message,
        format!(
            "update paused due to failure or early termination of task {}",
            fresh[0]
        )
    );
    assert_eq!(
        running_with(&w, &old).len(),
        3,
        "three replicas stay on the old spec"
    );
}

#[test]
fn failure_action_rollback_restores_the_previous_spec_and_completes() {
    let mut w = World::new(&["a", "b"], service(2, 0));
    w.settle();
    all_running(&mut w);
    let old_spec = w.state.services["svc"].spec.clone().unwrap();
    let old = old_spec.task_template.clone().unwrap();
    let new = update_image(
        &mut w,
        "broken:2",
        Some(swarm_state::models::ServiceSpecUpdateConfig {
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            ..Default::default()
        }),
    );
    w.settle();
    let fresh = running_with(&w, &new);
    w.now += Duration::from_secs(1);
    w.report(&fresh[0], TaskState::FAILED);
    w.settle();
    let (state, message) = update_state(&w);
    assert_eq!(state, Some(UpdateState::ROLLBACK_STARTED), "{message}");
    assert!(
        message.starts_with("update rolled back due to failure"),
        "{message}"
    );
    assert_eq!(
        w.state.services["svc"].spec.as_ref().unwrap().task_template,
        old_spec.task_template
    );
    // The rollback rolls out the old template and completes after a monitor window.
    for _ in 0..4 {
        all_running(&mut w);
        w.settle();
        w.now += Duration::from_secs(1);
    }
    assert_eq!(running_with(&w, &old).len(), 2);
    w.now += Duration::from_secs(6);
    w.settle();
    assert_eq!(
        update_state(&w),
        (
            Some(UpdateState::ROLLBACK_COMPLETED),
            "rollback completed".into()
        )
    );
    // And the spec it replaced is the previous one now.
    assert_eq!(
        w.state.previous_specs["svc"].task_template.as_ref(),
        Some(&new)
    );
}

#[test]
fn an_update_completes_once_every_slot_has_run_for_the_monitor_window() {
    let mut w = World::new(&["a", "b"], service(2, 0));
    w.settle();
    all_running(&mut w);
    let new = update_image(&mut w, "good:2", None);
    for _ in 0..4 {
        w.settle();
        all_running(&mut w);
        w.now += Duration::from_secs(1);
    }
    assert_eq!(running_with(&w, &new).len(), 2);
    assert_eq!(
        update_state(&w).0,
        Some(UpdateState::UPDATING),
        "not before the monitor window"
    );
    w.now += Duration::from_secs(5);
    w.settle();
    assert_eq!(
        update_state(&w),
        (Some(UpdateState::COMPLETED), "update completed".into())
    );
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_runs() {
    let mut w = World::new(&["a", "b"], service(1, 0));
    w.settle();
    all_running(&mut w);
    let old_task = w.active()[0].id.clone().unwrap();
    let new = update_image(
        &mut w,
        "good:2",
        Some(swarm_state::models::ServiceSpecUpdateConfig {
            order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            ..Default::default()
        }),
    );
    w.settle();
    let fresh = running_with(&w, &new);
    assert_eq!(fresh.len(), 1);
    assert_eq!(
        desired_of(&w.state.tasks[&old_task]),
        TaskState::RUNNING,
        "old one still wanted"
    );
    assert_eq!(w.active().len(), 2);
    w.report(&fresh[0], TaskState::RUNNING);
    w.settle();
    assert_eq!(desired_of(&w.state.tasks[&old_task]), TaskState::SHUTDOWN);
    assert_eq!(w.active().len(), 1);
}

#[test]
fn a_replicated_job_runs_each_completion_once_and_at_most_max_concurrent_at_a_time() {
    let mut svc = service(0, 0);
    svc.spec.as_mut().unwrap().mode = Some(ServiceSpecMode {
        replicated_job: Some(swarm_state::models::ServiceSpecModeReplicatedJob {
            max_concurrent: Some(2),
            total_completions: Some(3),
        }),
        ..Default::default()
    });
    let mut w = World::new(&["a", "b"], svc);
    w.settle();
    assert_eq!(w.active().len(), 2, "two at a time");
    let first: Vec<String> = w.active().iter().map(|t| t.id.clone().unwrap()).collect();
    for id in &first {
        w.report(id, TaskState::RUNNING);
        w.report(id, TaskState::COMPLETE);
    }
    w.settle();
    let running: Vec<_> = w
        .state
        .tasks
        .values()
        .filter(|t| !is_terminal(state_of(t)))
        .collect();
    assert_eq!(running.len(), 1, "the third completion, once");
    let last = running[0].id.clone().unwrap();
    w.report(&last, TaskState::RUNNING);
    w.report(&last, TaskState::COMPLETE);
    w.now += Duration::from_secs(60);
    w.settle();
    let complete = w
        .state
        .tasks
        .values()
        .filter(|t| state_of(t) == TaskState::COMPLETE)
        .count();
    assert_eq!(complete, 3);
    assert_eq!(
        w.state.tasks.len(),
        3,
        "completed tasks are never restarted"
    );
}

fn global_service() -> Service {
    let mut svc = service(0, 0);
    svc.spec.as_mut().unwrap().mode = Some(ServiceSpecMode {
        global: Some(Default::default()),
        ..Default::default()
    });
    svc
}

fn set_availability(w: &mut World, node: &str, availability: NodeSpecAvailabilityEnum) {
    let version = swarm_state::version_of(&w.state.nodes[node].version);
    w.apply(Command::UpdateNodeSpec {
        id: node.into(),
        version,
        spec: NodeSpec {
            availability: Some(availability),
            ..Default::default()
        },
        at: "t".into(),
    });
}

#[test]
fn a_drained_nodes_global_task_is_shut_down_and_stays_in_the_history() {
    let mut w = World::new(&["a", "b"], global_service());
    w.settle();
    let on_b = |w: &World| -> Vec<Task> {
        w.state
            .tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some("b"))
            .map(|t| (**t).clone())
            .collect()
    };
    let id = on_b(&w)[0].id.clone().unwrap();
    w.report(&id, TaskState::RUNNING);
    set_availability(&mut w, "b", NodeSpecAvailabilityEnum::DRAIN);
    w.settle();
    w.report(&id, TaskState::SHUTDOWN);
    w.settle();
    let tasks = on_b(&w);
    assert_eq!(tasks.len(), 1, "the task stays, as in docker service ps");
    assert_eq!(desired_of(&tasks[0]), TaskState::SHUTDOWN);
    // Back to active: a new task next to the old one.
    set_availability(&mut w, "b", NodeSpecAvailabilityEnum::ACTIVE);
    w.settle();
    assert_eq!(on_b(&w).len(), 2);
    assert_eq!(w.active().len(), 2);
}

#[test]
fn a_paused_node_keeps_its_global_task_and_gets_no_new_one() {
    let mut w = World::new(&["a", "b"], global_service());
    w.settle();
    set_availability(&mut w, "b", NodeSpecAvailabilityEnum::PAUSE);
    w.settle();
    assert_eq!(w.active().len(), 2, "pause stops nothing");
    w.apply(Command::AddNode {
        node: Box::new(ready_node("c")),
    });
    set_availability(&mut w, "c", NodeSpecAvailabilityEnum::PAUSE);
    w.settle();
    assert!(
        w.active().iter().all(|t| t.node_id.as_deref() != Some("c")),
        "a paused node gets no new task"
    );
}

#[test]
fn the_history_limit_follows_the_swarm_spec() {
    let mut w = World::new(&["a"], service(1, 0));
    let mut info = ClusterInfo::default();
    info.spec.orchestration = Some(swarm_state::models::SwarmSpecOrchestration {
        task_history_retention_limit: Some(2),
    });
    w.state.cluster = Some(info);
    w.settle();
    for _ in 0..6 {
        let id = w.active()[0].id.clone().unwrap();
        w.report(&id, TaskState::RUNNING);
        w.report(&id, TaskState::FAILED);
        w.now += Duration::from_millis(10);
        w.settle();
    }
    assert_eq!(w.state.tasks.len(), 2);
    // A negative limit keeps every task.
    w.state.cluster.as_mut().unwrap().spec.orchestration =
        Some(swarm_state::models::SwarmSpecOrchestration {
            task_history_retention_limit: Some(-1),
        });
    for _ in 0..4 {
        let id = w.active()[0].id.clone().unwrap();
        w.report(&id, TaskState::RUNNING);
        w.report(&id, TaskState::FAILED);
        w.now += Duration::from_millis(10);
        w.settle();
    }
    assert_eq!(w.state.tasks.len(), 6);
}

#[test]
fn a_pending_tasks_reason_follows_the_nodes() {
    let mut w = World::new(&[], service(1, 0));
    w.settle();
    let reason = |w: &World| {
        w.state.tasks["t1"]
            .status
            .as_ref()
            .and_then(|s| s.err.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason(&w), "no suitable node");
    let mut down = ready_node("a");
    down.status.as_mut().unwrap().state = Some(NodeState::DOWN);
    w.apply(Command::AddNode {
        node: Box::new(down),
    });
    let mut spec = w.state.services["svc"].spec.clone().unwrap();
    spec.task_template.as_mut().unwrap().placement = Some(swarm_state::models::TaskSpecPlacement {
        constraints: Some(vec!["node.role==manager".into()]),
        ..Default::default()
    });
    let version = swarm_state::version_of(&w.state.services["svc"].version);
    w.apply(Command::UpdateService {
        id: "svc".into(),
        version,
        spec: Box::new(spec),
        at: "t".into(),
    });
    w.apply(Command::AddNode {
        node: Box::new(ready_node("b")),
    });
    w.settle();
    let pending: Vec<String> = w
        .state
        .tasks
        .values()
        .filter(|t| t.node_id.is_none())
        .filter_map(|t| t.status.as_ref()?.err.clone())
        .collect();
    assert!(
        pending
            .iter()
            .all(|r| r.contains("scheduling constraints not satisfied on 1 node")),
        "{pending:?}"
    );
    // Settled: asking again writes nothing.
    let plan = reconcile(&w.state, w.now, &mut || "x".into());
    assert!(plan.commands.is_empty(), "{:?}", plan.commands);
}
