//! The agent against a small fake manager (plain HTTP on 127.0.0.1, port 0) and the
//! in-memory runtime: assignments flow in, reports flow out and only move forward, a
//! dead manager is failed over, and a restarted agent adopts its containers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use swarm_state::models::{Task, TaskSpec, TaskSpecContainerSpec, TaskState, TaskStatus};
use swarm_state::proto::{Assignments, Heartbeat, HeartbeatResponse, TaskStatusReport};
use swarm_state::state_of;
use swarm_worker::fake::Call;
use swarm_worker::runtime::labels;
use swarm_worker::{Agent, AgentConfig, FakeRuntime};
use tokio::sync::{oneshot, Notify};

const NODE: &str = "node-w1";
const IMAGE: &str = "busybox:latest";

#[derive(Default)]
struct Inner {
    index: u64,
    tasks: BTreeMap<String, Task>,
    /// Every state reported, per task, in arrival order.
    history: HashMap<String, Vec<TaskState>>,
    heartbeats: Vec<Heartbeat>,
    /// Status reports to refuse before accepting again.
    refuse_reports: u32,
    refused: u32,
    managers: Vec<String>,
}

#[derive(Default)]
struct FakeManager {
    inner: Mutex<Inner>,
    changed: Notify,
}

type Shared = Arc<FakeManager>;

impl FakeManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Creates or updates a task (manager-owned fields only), as a Raft entry would.
    fn put(&self, mut task: Task) {
        let mut g = self.lock();
        g.index += 1;
        let id = task.id.clone().unwrap();
        if let Some(old) = g.tasks.get(&id) {
            if state_of(old) > state_of(&task) {
                task.status = old.status.clone();
            }
        }
        g.tasks.insert(id, task);
        drop(g);
        self.changed.notify_waiters();
    }

    fn set_desired(&self, id: &str, desired: TaskState) {
        let mut t = self.lock().tasks[id].clone();
        t.desired_state = Some(desired);
        self.put(t);
    }

    fn state(&self, id: &str) -> TaskState {
        self.lock()
            .tasks
            .get(id)
            .map(state_of)
            .unwrap_or(TaskState::NEW)
    }

    fn status(&self, id: &str) -> TaskStatus {
        self.lock().tasks[id].status.clone().unwrap_or_default()
    }

    fn history(&self, id: &str) -> Vec<TaskState> {
        self.lock().history.get(id).cloned().unwrap_or_default()
    }
}

#[derive(serde::Deserialize)]
struct AssignQuery {
    node: String,
    since: u64,
}

async fn heartbeat(State(m): State<Shared>, Json(hb): Json<Heartbeat>) -> Json<HeartbeatResponse> {
    let mut g = m.lock();
    g.heartbeats.push(hb);
    Json(HeartbeatResponse {
        period_ms: 100,
        managers: g.managers.clone(),
        desired_role: swarm_contract::Role::Worker,
        manager_ids: vec![],
    })
}

async fn assignments(State(m): State<Shared>, Query(q): Query<AssignQuery>) -> Json<Assignments> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let notified = m.changed.notified();
        {
            let g = m.lock();
            if g.index > q.since || tokio::time::Instant::now() >= deadline {
                return Json(Assignments {
                    index: g.index,
                    tasks: g
                        .tasks
                        .values()
                        .filter(|t| t.node_id.as_deref() == Some(q.node.as_str()))
                        .cloned()
                        .collect(),
                    host_ports: Default::default(),
                    ..Default::default()
                });
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn task_status(
    State(m): State<Shared>,
    Json(report): Json<TaskStatusReport>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let mut g = m.lock();
    if g.refused < g.refuse_reports {
        g.refused += 1;
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut changed = false;
    for u in report.updates {
        let state = u.status.state.unwrap();
        g.history.entry(u.task_id.clone()).or_default().push(state);
        let Some(t) = g.tasks.get_mut(&u.task_id) else {
            continue;
        };
        if t.node_id.as_deref() != Some(report.node_id.as_str()) || state < state_of(t) {
            continue;
        }
        t.status = Some(u.status);
        changed = true;
    }
    if changed {
        g.index += 1;
    }
    drop(g);
    m.changed.notify_waiters();
    Ok(Json(serde_json::json!({})))
}

async fn start_manager() -> (Shared, String) {
    let m: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    m.lock().managers = vec![addr.clone()];
    let app = Router::new()
        .route("/swarmup/v1/heartbeat", post(heartbeat))
        .route("/swarmup/v1/assignments", get(assignments))
        .route("/swarmup/v1/task-status", post(task_status))
        .with_state(m.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (m, addr)
}

/// An address nothing listens on.
async fn dead_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

fn task(id: &str, slot: i64) -> Task {
    Task {
        id: Some(id.into()),
        service_id: Some("svc1".into()),
        node_id: Some(NODE.into()),
        slot: Some(slot),
        labels: Some(HashMap::from([(
            labels::SERVICE_NAME.to_string(),
            "web".to_string(),
        )])),
        spec: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(IMAGE.into()),
                command: Some(vec!["sleep".into(), "300".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(swarm_state::status(TaskState::ASSIGNED, "assigned", "t0")),
        desired_state: Some(TaskState::RUNNING),
        ..Default::default()
    }
}

struct RunningAgent {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
    heartbeats: tokio::sync::watch::Receiver<Option<HeartbeatResponse>>,
}

fn start_agent(managers: Vec<String>, rt: Arc<FakeRuntime>) -> RunningAgent {
    let agent = Agent::new(AgentConfig {
        node_id: NODE.into(),
        addr: "127.0.0.1:2377".into(),
        managers,
        client: reqwest::Client::new(),
        scheme: "http".into(),
        runtime: rt,
        tunnel_key: None,
    })
    .unwrap()
    .with_resync(Duration::from_millis(100));
    let heartbeats = agent.heartbeats();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(agent.run(async {
        let _ = stop_rx.await;
    }));
    RunningAgent {
        stop,
        handle,
        heartbeats,
    }
}

impl RunningAgent {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.handle)
            .await
            .expect("agent stops promptly")
            .unwrap();
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_sorted(states: &[TaskState]) -> bool {
    states.windows(2).all(|w| w[0] <= w[1])
}

#[tokio::test]
async fn agent_runs_reports_fails_over_and_readopts() {
    let (m, live) = start_manager().await;
    let dead = dead_addr().await;
    let rt = Arc::new(FakeRuntime::with_images(&[IMAGE]));
    // Status reports are refused at first: they must be retried.
    m.lock().refuse_reports = 2;

    let agent = start_agent(vec![dead.clone(), live.clone()], rt.clone());
    m.put(task("t1", 1));

    eventually("t1 running on the manager", || {
        m.state("t1") == TaskState::RUNNING
    })
    .await;
    assert!(is_sorted(&m.history("t1")), "{:?}", m.history("t1"));
    assert!(m.lock().refused >= 2);
    let status = m.status("t1");
    let cid = status.container_status.unwrap().container_id.unwrap();
    assert_eq!(rt.containers_of("t1")[0].id, cid);
    assert_eq!(rt.containers_of("t1")[0].spec.name, "web.1.t1");

    // Heartbeats reached the live manager with the engine's description, and the
    // answer is visible to the caller.
    let mut hb = agent.heartbeats.clone();
    tokio::time::timeout(Duration::from_secs(5), hb.wait_for(|r| r.is_some()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hb.borrow().as_ref().unwrap().desired_role,
        swarm_contract::Role::Worker
    );
    {
        let g = m.lock();
        let beat = g.heartbeats.last().unwrap();
        assert_eq!(beat.node_id, NODE);
        assert_eq!(beat.description.hostname.as_deref(), Some("fake-host"));
    }
    // The period from the answer (100 ms) is used.
    let before = m.lock().heartbeats.len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(m.lock().heartbeats.len() >= before + 3);

    // Stopping the agent leaves the container running.
    agent.stop().await;
    assert_eq!(
        rt.containers_of("t1")[0].state,
        swarm_worker::RunState::Running
    );

    // A new agent adopts it and does not create another one.
    let agent = start_agent(vec![live.clone()], rt.clone());
    m.put(task("t2", 2));
    eventually("t2 running", || m.state("t2") == TaskState::RUNNING).await;
    let creates = rt
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count();
    assert_eq!(creates, 2, "one container per task: {:?}", rt.calls());
    assert_eq!(rt.containers_of("t1").len(), 1);

    // The adopted task's death is noticed by the new agent.
    rt.exit("t1", 1);
    eventually("t1 failed", || m.state("t1") == TaskState::FAILED).await;
    assert_eq!(
        m.status("t1").err.as_deref(),
        Some("task: non-zero exit (1)")
    );

    // Removal: stopped, reported, removed.
    m.set_desired("t2", TaskState::REMOVE);
    eventually("t2 shut down", || m.state("t2") == TaskState::SHUTDOWN).await;
    eventually("t2 container removed", || rt.containers_of("t2").is_empty()).await;
    assert!(is_sorted(&m.history("t2")), "{:?}", m.history("t2"));

    // A task the managers forgot: its container goes too.
    m.lock().tasks.remove("t1");
    m.put(task("t3", 3));
    eventually("t1 container removed", || rt.containers_of("t1").is_empty()).await;
    eventually("t3 running", || m.state("t3") == TaskState::RUNNING).await;
    agent.stop().await;
}
