use std::collections::HashMap;
use std::time::Instant;

use swarm_state::models::{TaskSpec, TaskSpecContainerSpec, TaskStatus};
use tokio::sync::oneshot;

use super::*;
use crate::clock::FixedClock;
use crate::fake::{Call, FakeRuntime};
use crate::runtime::{labels, ContainerSpec, RunState};
use crate::spec::container_spec;
use crate::taskfiles::{FakeTaskFiles, FilesCall};

const NODE: &str = "node-a";
const IMAGE: &str = "busybox:latest";

fn task(id: &str, desired: TaskState) -> Task {
    Task {
        id: Some(id.into()),
        service_id: Some("svc".into()),
        node_id: Some(NODE.into()),
        slot: Some(1),
        labels: Some(HashMap::from([(
            labels::SERVICE_NAME.to_string(),
            "web".to_string(),
        )])),
        spec: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(IMAGE.into()),
                stop_grace_period: Some(3_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: Some(TaskState::ASSIGNED),
            ..Default::default()
        }),
        desired_state: Some(desired),
        ..Default::default()
    }
}

struct Harness {
    rt: Arc<FakeRuntime>,
    assignments: watch::Sender<AssignedTasks>,
    reports: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    seen: Vec<TaskStatusUpdate>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn start(rt: Arc<FakeRuntime>, tasks: AssignedTasks) -> Self {
        Self::start_with(rt, tasks, None)
    }

    fn start_with(
        rt: Arc<FakeRuntime>,
        tasks: AssignedTasks,
        ready: Option<watch::Receiver<Arc<crate::plan::ReadyNetworks>>>,
    ) -> Self {
        Self::start_full(rt, tasks, ready, None)
    }

    fn start_files(rt: Arc<FakeRuntime>, files: FakeTaskFiles, tasks: AssignedTasks) -> Self {
        Self::start_full(rt, tasks, None, Some(Arc::new(files)))
    }

    fn start_full(
        rt: Arc<FakeRuntime>,
        tasks: AssignedTasks,
        ready: Option<watch::Receiver<Arc<crate::plan::ReadyNetworks>>>,
        files: Option<Arc<dyn crate::taskfiles::TaskFiles>>,
    ) -> Self {
        let (assignments, rx) = watch::channel(tasks);
        let (report_tx, reports) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let mut exec = Executor::new(NODE, rt.clone())
            .with_clock(Arc::new(FixedClock::new("2026-01-01T00:00:00Z")))
            .with_resync(Duration::from_millis(50));
        if let Some(ready) = ready {
            exec = exec.with_networks(ready);
        }
        if let Some(files) = files {
            exec = exec.with_task_files(files);
        }
        let handle = tokio::spawn(exec.run(rx, report_tx, async {
            let _ = stop_rx.await;
        }));
        Harness {
            rt,
            assignments,
            reports,
            seen: Vec::new(),
            stop: Some(stop),
            handle,
        }
    }

    fn assign(&self, tasks: Vec<Task>) {
        self.assignments.send_replace(Some(Arc::new(tasks.into())));
    }

    /// Waits until a report of `state` for `task_id` arrives and returns it.
    async fn wait_for(&mut self, task_id: &str, state: TaskState) -> TaskStatus {
        if let Some(u) = self
            .seen
            .iter()
            .find(|u| u.task_id == task_id && u.status.state == Some(state))
        {
            return u.status.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let u = tokio::time::timeout(left, self.reports.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {state} report for {task_id}; saw {:?}",
                        self.states(task_id)
                    )
                })
                .expect("executor alive");
            self.seen.push(u.clone());
            if u.task_id == task_id && u.status.state == Some(state) {
                return u.status;
            }
        }
    }

    /// The states reported so far for a task, in order.
    fn states(&mut self, task_id: &str) -> Vec<TaskState> {
        while let Ok(u) = self.reports.try_recv() {
            self.seen.push(u);
        }
        self.seen
            .iter()
            .filter(|u| u.task_id == task_id)
            .filter_map(|u| u.status.state)
            .collect()
    }

    async fn stop(mut self) -> (Arc<FakeRuntime>, Vec<TaskStatusUpdate>) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap();
        while let Ok(u) = self.reports.try_recv() {
            self.seen.push(u);
        }
        (self.rt, self.seen)
    }
}

fn with_status(mut t: Task, state: TaskState) -> Task {
    t.status = Some(TaskStatus {
        state: Some(state),
        ..Default::default()
    });
    t
}

fn starts(rt: &FakeRuntime) -> usize {
    rt.calls()
        .iter()
        .filter(|c| matches!(c, Call::Start(_)))
        .count()
}

fn creates(rt: &FakeRuntime) -> usize {
    rt.calls()
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count()
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_task_walks_the_state_machine_to_running() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    let running = h.wait_for("t1", TaskState::RUNNING).await;
    assert_eq!(
        h.states("t1"),
        vec![
            TaskState::ACCEPTED,
            TaskState::PREPARING,
            TaskState::READY,
            TaskState::STARTING,
            TaskState::RUNNING
        ]
    );
    let c = &rt.containers_of("t1")[0];
    assert_eq!(c.spec.name, "web.1.t1");
    assert_eq!(c.state, RunState::Running);
    assert_eq!(
        running.container_status.unwrap().container_id.as_deref(),
        Some(c.id.as_str())
    );
    assert_eq!(running.timestamp.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert_eq!(running.message.as_deref(), Some("started"));
    h.stop().await;
}

#[tokio::test]
async fn a_death_is_reported_as_failed_and_never_restarted() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    assert!(rt.exit("t1", 137));
    let failed = h.wait_for("t1", TaskState::FAILED).await;
    assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (137)"));
    assert_eq!(failed.container_status.unwrap().exit_code, Some(137));
    settle().await;
    assert_eq!(starts(&rt), 1);
    assert_eq!(creates(&rt), 1);
    // The dead task's container is kept while the task is assigned (for logs).
    assert_eq!(rt.containers_of("t1").len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn exit_zero_completes() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    rt.exit("t1", 0);
    let done = h.wait_for("t1", TaskState::COMPLETE).await;
    assert_eq!(done.err, None);
    assert_eq!(done.message.as_deref(), Some("finished"));
    h.stop().await;
}

#[tokio::test]
async fn a_missing_image_rejects_the_task() {
    let rt = Arc::new(FakeRuntime::new());
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    let rejected = h.wait_for("t1", TaskState::REJECTED).await;
    assert_eq!(
        rejected.err.as_deref(),
        Some("No such image: busybox:latest")
    );
    settle().await;
    assert!(rt.containers().is_empty());
    assert_eq!(
        rt.calls()
            .iter()
            .filter(|c| matches!(c, Call::EnsureImage(_)))
            .count(),
        1,
        "a rejected task is not retried"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_start_failure_fails_the_task_once() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    rt.set_start_error(Some("exec: \"nope\": executable file not found in $PATH"));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    let failed = h.wait_for("t1", TaskState::FAILED).await;
    assert_eq!(
        failed.err.as_deref(),
        Some("starting container failed: exec: \"nope\": executable file not found in $PATH")
    );
    settle().await;
    assert_eq!(starts(&rt), 1);
    h.stop().await;
}

#[tokio::test]
async fn desired_shutdown_stops_with_the_grace_period_and_reports_shutdown() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    h.assign(vec![with_status(
        task("t1", TaskState::SHUTDOWN),
        TaskState::RUNNING,
    )]);
    let shut = h.wait_for("t1", TaskState::SHUTDOWN).await;
    assert_eq!(shut.err, None);
    let cid = rt.containers_of("t1")[0].id.clone();
    assert!(rt
        .calls()
        .contains(&Call::Stop(cid, Some(Duration::from_secs(3)))));
    assert!(!h.states("t1").contains(&TaskState::FAILED));
    h.stop().await;
}

#[tokio::test]
async fn desired_remove_stops_and_removes_the_container() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    h.assign(vec![with_status(
        task("t1", TaskState::REMOVE),
        TaskState::RUNNING,
    )]);
    h.wait_for("t1", TaskState::SHUTDOWN).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rt.containers_of("t1").is_empty() {
        assert!(Instant::now() < deadline, "container not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn containers_of_tasks_no_longer_assigned_are_stopped_and_removed() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![
        task("t1", TaskState::RUNNING),
        task("t2", TaskState::RUNNING),
    ]);
    h.wait_for("t1", TaskState::RUNNING).await;
    h.wait_for("t2", TaskState::RUNNING).await;
    h.assign(vec![with_status(
        task("t1", TaskState::RUNNING),
        TaskState::RUNNING,
    )]);
    h.wait_for("t2", TaskState::SHUTDOWN).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rt.containers_of("t2").is_empty() {
        assert!(Instant::now() < deadline, "container not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rt.containers_of("t1")[0].state, RunState::Running);
    h.stop().await;
}

#[tokio::test]
async fn nothing_is_touched_before_the_first_assignments() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let spec = container_spec(&task("old", TaskState::RUNNING)).unwrap();
    let id = rt.create(&spec).await.unwrap();
    rt.start(&id).await.unwrap();
    let calls_before = rt.calls().len();
    let h = Harness::start(rt.clone(), None);
    settle().await;
    assert_eq!(rt.calls().len(), calls_before);
    let (rt, _) = h.stop().await;
    assert_eq!(rt.containers_of("old")[0].state, RunState::Running);
}

#[tokio::test]
async fn a_restarted_executor_adopts_running_containers() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    let (rt, _) = h.stop().await;
    // Stopping the executor leaves the container running.
    assert_eq!(rt.containers_of("t1")[0].state, RunState::Running);

    // The managers' copy may lag behind (here: the RUNNING report was lost).
    let lagging = with_status(task("t1", TaskState::RUNNING), TaskState::STARTING);
    let mut h = Harness::start(rt.clone(), Some(Arc::new(vec![lagging].into())));
    h.wait_for("t1", TaskState::RUNNING).await;
    settle().await;
    assert_eq!(creates(&rt), 1, "adopted, not duplicated");
    assert_eq!(starts(&rt), 1);
    rt.exit("t1", 2);
    let failed = h.wait_for("t1", TaskState::FAILED).await;
    assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (2)"));
    h.stop().await;
}

#[tokio::test]
async fn an_engine_outage_is_retried_not_reported() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    rt.set_unavailable(true);
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    settle().await;
    assert!(h.states("t1").is_empty());
    rt.set_unavailable(false);
    h.wait_for("t1", TaskState::RUNNING).await;
    assert!(!h.states("t1").contains(&TaskState::REJECTED));
    h.stop().await;
}

#[tokio::test]
async fn tasks_of_other_nodes_are_ignored() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut other = task("t9", TaskState::RUNNING);
    other.node_id = Some("node-b".into());
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![other, task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    assert!(h.states("t9").is_empty());
    assert!(rt.containers_of("t9").is_empty());
    h.stop().await;
}

#[tokio::test]
async fn desired_ready_prepares_without_starting() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::READY)]);
    h.wait_for("t1", TaskState::READY).await;
    settle().await;
    assert_eq!(starts(&rt), 0);
    h.assign(vec![with_status(
        task("t1", TaskState::RUNNING),
        TaskState::READY,
    )]);
    h.wait_for("t1", TaskState::RUNNING).await;
    h.stop().await;
}

#[tokio::test]
async fn a_name_conflict_rejects_the_task() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    // A container with the task's name but not labelled for this node.
    let mut spec: ContainerSpec = container_spec(&task("t1", TaskState::RUNNING)).unwrap();
    spec.body
        .labels
        .as_mut()
        .unwrap()
        .insert(labels::NODE_ID.into(), "someone-else".into());
    rt.create(&spec).await.unwrap();
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    let rejected = h.wait_for("t1", TaskState::REJECTED).await;
    assert!(rejected.err.unwrap().contains("already in use"));
    h.stop().await;
}

#[tokio::test]
async fn the_periodic_resync_notices_a_death_without_events() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    rt.set_events_enabled(false);
    let mut h = Harness::start(rt.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    rt.exit("t1", 1);
    h.wait_for("t1", TaskState::FAILED).await;
    h.stop().await;
}

fn networked(id: &str) -> Task {
    let mut t = task(id, TaskState::RUNNING);
    t.spec.as_mut().unwrap().networks = Some(vec![swarm_state::models::NetworkAttachmentConfig {
        target: Some("net1".into()),
        ..Default::default()
    }]);
    t
}

#[tokio::test]
async fn a_networked_task_starts_only_once_its_networks_are_ready() {
    use crate::runtime::TaskNetwork;
    use swarm_net::BridgeSpec;

    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    rt.ensure_network(
        &BridgeSpec {
            network_id: "net1".into(),
            network_name: "front".into(),
            bridge: "swb4097".into(),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            mtu: 1450,
            internal: false,
        },
        NODE,
    )
    .await
    .unwrap();
    let (ready_tx, ready_rx) = watch::channel(Arc::new(crate::plan::ReadyNetworks::new()));
    let mut h = Harness::start_with(rt.clone(), None, Some(ready_rx));
    // A task without networks is not held up by the other one.
    h.assign(vec![networked("t1"), task("t2", TaskState::RUNNING)]);
    h.wait_for("t2", TaskState::RUNNING).await;
    h.wait_for("t1", TaskState::PREPARING).await;
    settle().await;
    assert!(rt.containers_of("t1").is_empty());
    assert_eq!(
        h.states("t1"),
        vec![TaskState::ACCEPTED, TaskState::PREPARING]
    );

    let attachment = TaskNetwork {
        docker_network: "front".into(),
        addr: "10.0.1.5".parse().unwrap(),
        prefix_len: 24,
        gateway: "10.0.1.1".parse().unwrap(),
    };
    ready_tx.send_replace(Arc::new(crate::plan::ReadyNetworks::from([(
        "t1".to_string(),
        vec![attachment.clone()],
    )])));
    h.wait_for("t1", TaskState::RUNNING).await;
    let c = &rt.containers_of("t1")[0];
    assert_eq!(c.spec.networks, vec![attachment]);
    assert!(rt.containers_of("t2")[0].spec.networks.is_empty());
    h.stop().await;
}

fn b64(text: &str) -> FileData {
    use base64::Engine as _;
    FileData(base64::engine::general_purpose::STANDARD.encode(text))
}

/// A task with secret `db_pw` (mode 0400, uid 1000, data "hunter2") and config `app`.
fn with_files(id: &str, desired: TaskState) -> Task {
    use swarm_state::models::{
        TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1,
        TaskSpecContainerSpecSecrets,
    };
    let mut t = task(id, desired);
    let cs = t.spec.as_mut().unwrap().container_spec.as_mut().unwrap();
    cs.secrets = Some(vec![TaskSpecContainerSpecSecrets {
        file: Some(TaskSpecContainerSpecFile {
            name: Some("db_pw".into()),
            uid: Some("1000".into()),
            gid: Some("0".into()),
            mode: Some(0o400),
        }),
        secret_id: Some("sec1".into()),
        secret_name: Some("db_pw".into()),
    }]);
    cs.configs = Some(vec![TaskSpecContainerSpecConfigs {
        file: Some(TaskSpecContainerSpecFile1 {
            name: Some("/etc/app.conf".into()),
            uid: Some("0".into()),
            gid: Some("0".into()),
            mode: Some(0o444),
        }),
        runtime: None,
        config_id: Some("cfg1".into()),
        config_name: Some("app".into()),
    }]);
    t
}

fn assigned_with_data(tasks: Vec<Task>) -> Arc<Assigned> {
    Arc::new(Assigned {
        tasks: tasks.into_iter().map(Arc::new).collect(),
        secrets: BTreeMap::from([("sec1".to_string(), b64("hunter2"))]),
        configs: BTreeMap::from([("cfg1".to_string(), b64("port=80"))]),
        ..Default::default()
    })
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn secrets_and_configs_are_bind_mounted_from_the_task_store() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_files(
            "t1",
            TaskState::RUNNING,
        )])));
    h.wait_for("t1", TaskState::RUNNING).await;

    let store = files.store("t1").expect("the task's store");
    assert_eq!(store.len(), 2);
    let (secret_path, secret) = &store[0];
    assert_eq!(secret_path, &std::path::PathBuf::from("/fake/t1/secrets/0"));
    assert_eq!(
        (secret.uid, secret.gid, secret.mode),
        (1000, 0, 0o400),
        "owner and mode as referenced"
    );
    assert_eq!(secret.data, b"hunter2");
    assert_eq!(store[1].1.data, b"port=80");

    let c = &rt.containers_of("t1")[0];
    let mounts = c
        .spec
        .body
        .host_config
        .as_ref()
        .unwrap()
        .mounts
        .clone()
        .unwrap();
    let binds: Vec<(Option<&str>, Option<&str>, Option<bool>)> = mounts
        .iter()
        .map(|m| (m.source.as_deref(), m.target.as_deref(), m.read_only))
        .collect();
    assert_eq!(
        binds,
        vec![
            (
                Some("/fake/t1/secrets/0"),
                Some("/run/secrets/db_pw"),
                Some(true)
            ),
            (
                Some("/fake/t1/configs/0"),
                Some("/etc/app.conf"),
                Some(true)
            ),
        ]
    );
    assert!(mounts
        .iter()
        .all(|m| m.typ == Some(swarm_state::models::MountType::BIND)));

    // Removed with its container.
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_status(
            with_files("t1", TaskState::REMOVE),
            TaskState::RUNNING,
        )])));
    h.wait_for("t1", TaskState::SHUTDOWN).await;
    wait_until("container and store gone", || {
        rt.containers_of("t1").is_empty() && files.store("t1").is_none()
    })
    .await;
    assert!(files.calls().contains(&FilesCall::Release("t1".into())));
    h.stop().await;
}

#[tokio::test]
async fn missing_secret_data_rejects_the_task_before_anything_is_made() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    let mut assigned = (*assigned_with_data(vec![with_files("t1", TaskState::RUNNING)])).clone();
    assigned.secrets.clear();
    h.assignments.send_replace(Some(Arc::new(assigned)));
    let rejected = h.wait_for("t1", TaskState::REJECTED).await;
    let err = rejected.err.unwrap();
    assert!(err.starts_with("secret db_pw not found"), "{err}");
    settle().await;
    assert!(rt.containers().is_empty());
    assert!(files.tasks().is_empty());
    assert!(!files
        .calls()
        .iter()
        .any(|c| matches!(c, FilesCall::Prepare(..))));
    h.stop().await;
}

#[tokio::test]
async fn a_runtime_config_is_refused() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    let mut t = with_files("t1", TaskState::RUNNING);
    let configs = t
        .spec
        .as_mut()
        .unwrap()
        .container_spec
        .as_mut()
        .unwrap()
        .configs
        .as_mut()
        .unwrap();
    configs[0].file = None;
    configs[0].runtime = Some(HashMap::new());
    h.assignments
        .send_replace(Some(assigned_with_data(vec![t])));
    let rejected = h.wait_for("t1", TaskState::REJECTED).await;
    assert!(
        rejected.err.unwrap().contains("credential specs"),
        "refused, not ignored"
    );
    assert!(rt.containers().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_be_made_rejects_the_task() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    files.set_prepare_error(Some("no space left on device"));
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_files(
            "t1",
            TaskState::RUNNING,
        )])));
    let rejected = h.wait_for("t1", TaskState::REJECTED).await;
    let err = rejected.err.unwrap();
    assert!(
        err.starts_with("cannot deliver secrets and configs: ") && err.contains("no space"),
        "{err}"
    );
    settle().await;
    assert_eq!(creates(&rt), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_failed_create_takes_the_store_with_it() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    // A container of another node holds the task's name: the create is refused.
    let mut spec: ContainerSpec = container_spec(&task("t1", TaskState::RUNNING)).unwrap();
    spec.body
        .labels
        .as_mut()
        .unwrap()
        .insert(labels::NODE_ID.into(), "someone-else".into());
    rt.create(&spec).await.unwrap();
    let files = FakeTaskFiles::new();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_files(
            "t1",
            TaskState::RUNNING,
        )])));
    h.wait_for("t1", TaskState::REJECTED).await;
    wait_until("store released", || files.store("t1").is_none()).await;
    assert!(files.calls().contains(&FilesCall::Prepare("t1".into(), 2)));
    h.stop().await;
}

#[tokio::test]
async fn stores_of_tasks_no_longer_assigned_are_swept() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    // Left over from an earlier run.
    files.prepare("old", &[]).await.unwrap();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    settle().await;
    assert_eq!(
        files.tasks(),
        vec!["old".to_string()],
        "nothing is swept before the managers have spoken"
    );
    h.assignments.send_replace(Some(assigned_with_data(vec![
        with_files("t1", TaskState::RUNNING),
        with_files("t2", TaskState::RUNNING),
    ])));
    h.wait_for("t1", TaskState::RUNNING).await;
    h.wait_for("t2", TaskState::RUNNING).await;
    assert_eq!(files.tasks(), vec!["t1".to_string(), "t2".to_string()]);

    // t2 is no longer assigned: its container goes, and its store with it.
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_status(
            with_files("t1", TaskState::RUNNING),
            TaskState::RUNNING,
        )])));
    h.wait_for("t2", TaskState::SHUTDOWN).await;
    wait_until("t2's store released", || {
        files.tasks() == vec!["t1".to_string()] && rt.containers_of("t2").is_empty()
    })
    .await;
    assert!(files.calls().iter().any(
        |c| matches!(c, FilesCall::Sweep(keep) if keep.contains("t1") && !keep.contains("old"))
    ));
    h.stop().await;
}

#[tokio::test]
async fn a_task_without_files_needs_no_store() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    h.assign(vec![task("t1", TaskState::RUNNING)]);
    h.wait_for("t1", TaskState::RUNNING).await;
    assert!(!files
        .calls()
        .iter()
        .any(|c| matches!(c, FilesCall::Prepare(..))));
    let c = &rt.containers_of("t1")[0];
    assert!(c.spec.body.host_config.as_ref().unwrap().mounts.is_none());
    h.stop().await;
}

#[tokio::test]
async fn without_a_store_a_task_with_secrets_is_rejected() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let mut h = Harness::start(rt.clone(), None);
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_files(
            "t1",
            TaskState::RUNNING,
        )])));
    let rejected = h.wait_for("t1", TaskState::REJECTED).await;
    assert!(
        rejected
            .err
            .unwrap()
            .contains("cannot deliver secrets and configs"),
        "refused, not ignored"
    );
    assert!(rt.containers().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_task_whose_container_ends_loses_its_files_at_once() {
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    let files = FakeTaskFiles::new();
    let mut h = Harness::start_files(rt.clone(), files.clone(), None);
    h.assignments
        .send_replace(Some(assigned_with_data(vec![with_files(
            "t1",
            TaskState::RUNNING,
        )])));
    h.wait_for("t1", TaskState::RUNNING).await;
    assert!(files.store("t1").is_some());
    // The container exits; the task stays assigned (the managers have not yet replaced
    // it) and its container stays for the history, but its secrets go, as with dockerd.
    assert!(rt.exit("t1", 1));
    h.wait_for("t1", TaskState::FAILED).await;
    wait_until("t1's store released", || files.store("t1").is_none()).await;
    assert_eq!(rt.containers_of("t1").len(), 1, "the container is kept");
    h.stop().await;
}

/// Only events the container list may show late make the executor list again for a
/// while; a start or a removal is listed once, as any wake-up is.
#[test]
fn only_events_the_list_may_lag_behind_settle() {
    let event = |action| RuntimeEvent {
        container_id: "c1".into(),
        task_id: Some("t1".into()),
        action,
    };
    assert!(!settles(&event(EventAction::Start)));
    assert!(!settles(&event(EventAction::Destroy)));
    assert!(settles(&event(EventAction::Die)));
    assert!(settles(&event(EventAction::Other)));
}
