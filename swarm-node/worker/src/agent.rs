//! The agent: this node's side of the conversation with the managers (see
//! [`swarm_state::proto`] for the paths). Three loops share one view of the managers:
//!
//! - heartbeat: tells the managers the node is alive and what it is, learns the period,
//!   the current managers and the role the cluster wants this node to have;
//! - assignments: long-polls the tasks assigned to this node and hands them to the
//!   [`Executor`];
//! - status reporter: sends the executor's task status changes, batched, coalesced to
//!   the latest per task, retried until a manager acknowledges them.
//!
//! The network agent ([`crate::netagent`]) long-polls the node's network map through
//! [`Agent::netmap_source`], with the same managers and fail-over.
//!
//! On an error a loop moves to the next manager, so all loops fail over together.
//! Stopping the agent leaves the containers running, as a restart of Docker's agent does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::de::DeserializeOwned;
use swarm_state::models::{NodeDescription, Task, TaskStatus};
use swarm_state::netmap::NetMap;
use swarm_state::proto::{
    Assignments, Heartbeat, HeartbeatResponse, TaskStatusReport, TaskStatusUpdate, PREFIX,
    REMOVED_STATUS,
};
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::executor::{Assigned, AssignedTasks, Executor};
use crate::netagent::{NetmapError, NetmapSource};
use crate::plan::ReadyNetworks;
use crate::runtime::ContainerRuntime;

/// The heartbeat period until a manager says otherwise (Docker's default).
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
/// How long a manager may hold an assignments request before it must answer.
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of heartbeats (SwarmKit's dispatcher RPC timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of status reports: a report is answered once committed, which takes longer
/// than a heartbeat while the managers are busy (a leader's proposal may wait 15 s).
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);
/// Status changes arriving this close together go in one request.
const REPORT_BATCH_WINDOW: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the agent reaches the managers.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    /// This node's control address (`IP:PORT`), sent in heartbeats.
    pub addr: String,
    /// Control addresses (`IP:PORT`) of the managers known at start.
    pub managers: Vec<String>,
    /// The HTTP client; the caller sets up mutual TLS on it.
    pub client: reqwest::Client,
    /// `https` in production, `http` in tests.
    pub scheme: String,
    pub runtime: Arc<dyn ContainerRuntime>,
    /// This node's WireGuard public key (base64), sent in heartbeats so the swarm can
    /// reach the node through encrypted overlay networks.
    pub tunnel_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("no manager address given: pass at least one manager control address (IP:PORT)")]
    NoManagers,
    #[error("unsupported scheme {0:?}: use \"https\" (or \"http\" in tests)")]
    BadScheme(String),
    #[error("node id is empty: join the cluster first to get one")]
    NoNodeId,
}

/// A running agent's handle on its configuration and heartbeat state.
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
    executor: Executor,
}

#[derive(Debug)]
struct Shared {
    cfg: AgentConfig,
    managers: Managers,
    heartbeat: watch::Sender<Option<HeartbeatResponse>>,
    /// Set once the managers said, several heartbeats in a row, that this node was
    /// removed from the swarm.
    removed: watch::Sender<bool>,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Self, AgentError> {
        if cfg.node_id.is_empty() {
            return Err(AgentError::NoNodeId);
        }
        if cfg.scheme != "https" && cfg.scheme != "http" {
            return Err(AgentError::BadScheme(cfg.scheme.clone()));
        }
        let managers: Vec<String> = cfg
            .managers
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect();
        if managers.is_empty() {
            return Err(AgentError::NoManagers);
        }
        let executor = Executor::new(cfg.node_id.clone(), cfg.runtime.clone());
        Ok(Agent {
            shared: Arc::new(Shared {
                managers: Managers::new(managers),
                heartbeat: watch::channel(None).0,
                removed: watch::channel(false).0,
                cfg,
            }),
            executor,
        })
    }

    /// Uses another clock for report timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.executor = self.executor.with_clock(clock);
        self
    }

    /// Changes how often the executor resynchronises without events.
    pub fn with_resync(mut self, period: Duration) -> Self {
        self.executor = self.executor.with_resync(period);
        self
    }

    /// Lets the executor follow the network agent's ready map (see
    /// [`Executor::with_networks`]).
    pub fn with_networks(mut self, ready: watch::Receiver<Arc<ReadyNetworks>>) -> Self {
        self.executor = self.executor.with_networks(ready);
        self
    }

    /// Where the executor puts tasks' secret and config files (see
    /// [`Executor::with_task_files`]).
    pub fn with_task_files(mut self, files: Arc<dyn crate::taskfiles::TaskFiles>) -> Self {
        self.executor = self.executor.with_task_files(files);
        self
    }

    /// The node's name in the swarm, for `{{.Node.Hostname}}` in service templates.
    pub fn with_node_hostname(mut self, hostname: impl Into<String>) -> Self {
        self.executor = self.executor.with_node_hostname(hostname);
        self
    }

    /// The node's network map from the managers, for the network agent: the same
    /// managers, fail-over and client as the other loops.
    pub fn netmap_source(&self) -> Arc<dyn NetmapSource> {
        Arc::new(ManagerNetmaps(self.shared.clone()))
    }

    /// The latest heartbeat answer (`None` until the first one). The daemon watches its
    /// `desired_role`.
    pub fn heartbeats(&self) -> watch::Receiver<Option<HeartbeatResponse>> {
        self.shared.heartbeat.subscribe()
    }

    /// Becomes true when the managers have said, [`REMOVED_AFTER`] heartbeats in a row,
    /// that this node is no longer part of the swarm (`docker node rm`).
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.shared.removed.subscribe()
    }

    /// Runs all loops until `shutdown` completes. Containers keep running afterwards.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (assign_tx, assign_rx) = watch::channel::<AssignedTasks>(None);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let shared = self.shared;
        tokio::select! {
            _ = shutdown => {}
            _ = heartbeat_loop(&shared) => {}
            _ = assignments_loop(&shared, assign_tx) => {}
            _ = report_loop(&shared, report_rx) => {}
            _ = self.executor.run(assign_rx, report_tx, std::future::pending()) => {}
        }
        tracing::debug!(node = %shared.cfg.node_id, "agent stopped");
    }
}

/// Runs an agent until `shutdown`. Use [`Agent`] to also watch the heartbeat answers.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    Agent::new(cfg)?.run(shutdown).await;
    Ok(())
}

/// The known managers and the one in use.
#[derive(Debug)]
struct Managers(Mutex<(Vec<String>, usize)>);

impl Managers {
    fn new(list: Vec<String>) -> Self {
        Managers(Mutex::new((list, 0)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<String>, usize)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> String {
        let g = self.lock();
        g.0[g.1 % g.0.len()].clone()
    }

    fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Moves on from `addr`, unless another loop already did.
    fn failed(&self, addr: &str) {
        let mut g = self.lock();
        let n = g.0.len();
        if g.0[g.1 % n] == addr {
            g.1 = (g.1 + 1) % n;
        }
    }

    /// Takes the managers' own list, staying with the current one if it is still there.
    fn update(&self, list: &[String]) {
        let list: Vec<String> = list.iter().filter(|m| !m.is_empty()).cloned().collect();
        if list.is_empty() {
            return;
        }
        let mut g = self.lock();
        if g.0 == list {
            return;
        }
        let current = g.0[g.1 % g.0.len()].clone();
        g.1 = list.iter().position(|m| *m == current).unwrap_or(0);
        g.0 = list;
    }

    #[cfg(test)]
    fn snapshot(&self) -> Vec<String> {
        let g = self.lock();
        let n = g.0.len();
        (0..n).map(|i| g.0[(g.1 + i) % n].clone()).collect()
    }
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("manager answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl Shared {
    fn url(&self, manager: &str, path: &str) -> String {
        format!("{}://{manager}{PREFIX}{path}", self.cfg.scheme)
    }

    async fn answer<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, CallError> {
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(CallError::Status {
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        Ok(resp.json().await?)
    }

    /// The pause after the `failures`-th failure in a row: the next manager is tried
    /// soon, a full round of failures backs off. Jittered (see [`retry_jitter`]).
    fn retry_delay(&self, failures: u32) -> Duration {
        retry_jitter(retry_base(self.managers.len(), failures))
    }
}

/// The pause before retrying after the `failures`-th failure in a row with `managers`
/// managers known, before jitter.
fn retry_base(managers: usize, failures: u32) -> Duration {
    let n = managers.max(1) as u32;
    if failures.rem_euclid(n) != 0 {
        return Duration::from_millis(50);
    }
    let rounds = (failures / n).min(6);
    (Duration::from_millis(100) * 2u32.pow(rounds)).min(MAX_BACKOFF)
}

/// Half to all of `base`, at random: when a manager fails, every node loses it at the
/// same moment, and retries without jitter would reach the next manager in waves of
/// thousands (a thundering herd).
fn retry_jitter(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

fn jittered(period: Duration) -> Duration {
    // ±10 %, so that nodes started together do not beat in step.
    period.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// Heartbeats answered "removed" in a row before the node believes it: one answer could
/// come from a manager restored from an old backup, three from the leader cannot.
pub const REMOVED_AFTER: u32 = 3;

async fn heartbeat_loop(shared: &Shared) {
    let mut period = DEFAULT_HEARTBEAT_PERIOD;
    let mut description = NodeDescription::default();
    let mut failures = 0u32;
    let mut removed = 0u32;
    loop {
        match shared.cfg.runtime.describe().await {
            Ok(d) => description = d,
            Err(e) => {
                tracing::debug!(error = %e, "cannot describe the engine; sending the last description")
            }
        }
        let manager = shared.managers.current();
        let beat = Heartbeat {
            node_id: shared.cfg.node_id.clone(),
            addr: shared.cfg.addr.clone(),
            description: description.clone(),
            tunnel_key: shared.cfg.tunnel_key.clone(),
        };
        let sent = async {
            let resp = shared
                .cfg
                .client
                .post(shared.url(&manager, "/heartbeat"))
                .timeout(REQUEST_TIMEOUT)
                .json(&beat)
                .send()
                .await?;
            Shared::answer::<HeartbeatResponse>(resp).await
        }
        .await;
        match sent {
            Ok(resp) => {
                failures = 0;
                removed = 0;
                if resp.period_ms > 0 {
                    period = Duration::from_millis(resp.period_ms);
                }
                shared.managers.update(&resp.managers);
                shared.heartbeat.send_replace(Some(resp));
                tokio::time::sleep(jittered(period)).await;
            }
            Err(CallError::Status { status, body }) if status == REMOVED_STATUS => {
                removed += 1;
                tracing::warn!(manager = %manager, times = removed, "the managers say this node was removed from the swarm: {body}");
                if removed >= REMOVED_AFTER {
                    shared.removed.send_replace(true);
                }
                tokio::time::sleep(jittered(period)).await;
            }
            Err(e) => {
                tracing::warn!(manager = %manager, error = %e, cause = %root_cause(&e), "heartbeat failed");
                shared.managers.failed(&manager);
                failures += 1;
                tokio::time::sleep(shared.retry_delay(failures).min(period)).await;
            }
        }
    }
}

/// The node's tasks as last heard, kept to apply answers that carry changes only.
#[derive(Debug, Default)]
struct KnownTasks(BTreeMap<String, Arc<Task>>);

impl KnownTasks {
    /// Applies an answer and returns every task, in the manager's order; `None` when a
    /// delta names a task this node never had (it then asks for the whole list again).
    fn apply(&mut self, tasks: Vec<Task>, ids: Option<Vec<String>>) -> Option<Vec<Arc<Task>>> {
        let id_of = |t: &Task| t.id.clone().unwrap_or_default();
        let tasks: Vec<Arc<Task>> = tasks.into_iter().map(Arc::new).collect();
        let Some(ids) = ids else {
            self.0 = tasks.iter().map(|t| (id_of(t), t.clone())).collect();
            return Some(tasks);
        };
        for t in tasks {
            self.0.insert(id_of(&t), t);
        }
        let listed: std::collections::BTreeSet<&String> = ids.iter().collect();
        self.0.retain(|id, _| listed.contains(id));
        ids.iter().map(|id| self.0.get(id).cloned()).collect()
    }
}

async fn assignments_loop(shared: &Shared, tx: watch::Sender<AssignedTasks>) {
    let mut since: Option<u64> = None;
    let mut known = KnownTasks::default();
    let mut failures = 0u32;
    loop {
        let manager = shared.managers.current();
        let index = since.unwrap_or(0).to_string();
        let got = async {
            let resp = shared
                .cfg
                .client
                .get(shared.url(&manager, "/assignments"))
                .query(&[
                    ("node", shared.cfg.node_id.as_str()),
                    ("since", &index),
                    ("delta", "true"),
                ])
                .timeout(LONG_POLL_TIMEOUT)
                .send()
                .await?;
            Shared::answer::<Assignments>(resp).await
        }
        .await;
        match got {
            Ok(a) => {
                failures = 0;
                match since {
                    // A manager that lags behind the last answer (e.g. a follower after a
                    // fail-over) would make tasks seem unassigned: wait for it to catch up.
                    Some(s) if a.index < s => {
                        tracing::debug!(manager = %manager, index = a.index, since = s, "stale assignments ignored");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some(s) if a.index == s => {}
                    _ => {
                        let Some(tasks) = known.apply(a.tasks, a.task_ids) else {
                            tracing::warn!(manager = %manager, "assignments named a task this node never heard of: asking for all of them");
                            since = None;
                            continue;
                        };
                        since = Some(a.index);
                        // Secrets and configs stay in memory: never written, never logged.
                        tx.send_replace(Some(Arc::new(Assigned {
                            tasks,
                            host_ports: a.host_ports,
                            secrets: a.secrets,
                            configs: a.configs,
                        })));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(manager = %manager, error = %e, "fetching assignments failed");
                shared.managers.failed(&manager);
                failures += 1;
                tokio::time::sleep(shared.retry_delay(failures)).await;
            }
        }
    }
}

/// The `/netmap` long poll on the current manager.
#[derive(Debug)]
struct ManagerNetmaps(Arc<Shared>);

#[async_trait]
impl NetmapSource for ManagerNetmaps {
    async fn fetch(&self, since: u64) -> Result<NetMap, NetmapError> {
        let shared = &self.0;
        let manager = shared.managers.current();
        let index = since.to_string();
        let got = async {
            let resp = shared
                .cfg
                .client
                .get(shared.url(&manager, "/netmap"))
                .query(&[("node", shared.cfg.node_id.as_str()), ("since", &index)])
                .timeout(LONG_POLL_TIMEOUT)
                .send()
                .await?;
            Shared::answer::<NetMap>(resp).await
        }
        .await;
        got.map_err(|e| {
            shared.managers.failed(&manager);
            NetmapError::Manager {
                manager,
                message: e.to_string(),
            }
        })
    }
}

/// The innermost error of a chain: reqwest's own message names only the URL, the cause
/// (a timeout, a reset, a refused handshake) is at the bottom.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Adds an update, keeping only the latest status per task.
fn coalesce(pending: &mut BTreeMap<String, TaskStatus>, update: TaskStatusUpdate) {
    pending.insert(update.task_id, update.status);
}

async fn report_loop(shared: &Shared, mut rx: mpsc::UnboundedReceiver<TaskStatusUpdate>) {
    let mut pending: BTreeMap<String, TaskStatus> = BTreeMap::new();
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(u) => coalesce(&mut pending, u),
                None => return std::future::pending().await,
            }
            tokio::time::sleep(REPORT_BATCH_WINDOW).await;
        }
        while let Ok(u) = rx.try_recv() {
            coalesce(&mut pending, u);
        }
        let report = TaskStatusReport {
            node_id: shared.cfg.node_id.clone(),
            updates: pending
                .iter()
                .map(|(id, s)| TaskStatusUpdate {
                    task_id: id.clone(),
                    status: s.clone(),
                })
                .collect(),
        };
        let manager = shared.managers.current();
        let sent = async {
            let resp = shared
                .cfg
                .client
                .post(shared.url(&manager, "/task-status"))
                .timeout(REPORT_TIMEOUT)
                .json(&report)
                .send()
                .await?;
            Shared::answer::<serde_json::Value>(resp).await
        }
        .await;
        match sent {
            Ok(_) => {
                failures = 0;
                // Drop what was acknowledged, unless a newer status arrived meanwhile.
                for u in report.updates {
                    if pending.get(&u.task_id) == Some(&u.status) {
                        pending.remove(&u.task_id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(manager = %manager, error = %e, updates = report.updates.len(), "reporting task status failed");
                // A slow commit says the swarm is busy, not that this manager is gone:
                // the heartbeats decide that. Moving every loop to another manager here
                // would add relays and handshakes to the busy leader's load.
                if !matches!(&e, CallError::Http(h) if h.is_timeout()) {
                    shared.managers.failed(&manager);
                }
                failures += 1;
                tokio::time::sleep(shared.retry_delay(failures)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, version: u64) -> Task {
        Task {
            id: Some(id.into()),
            version: Some(swarm_state::models::ObjectVersion {
                index: Some(version),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_of_assignments_rebuild_the_whole_list() {
        let mut known = KnownTasks::default();
        let arcs = |tasks: Vec<Task>| tasks.into_iter().map(Arc::new).collect::<Vec<_>>();
        let all = known.apply(vec![task("a", 1), task("b", 1)], None).unwrap();
        assert_eq!(all, arcs(vec![task("a", 1), task("b", 1)]));
        // b changed, c is new, a was removed.
        let ids = Some(vec!["b".into(), "c".into()]);
        let all = known.apply(vec![task("b", 5), task("c", 5)], ids).unwrap();
        assert_eq!(all, arcs(vec![task("b", 5), task("c", 5)]));
        // Nothing changed but the order is the manager's.
        let all = known
            .apply(vec![], Some(vec!["c".into(), "b".into()]))
            .unwrap();
        assert_eq!(all, arcs(vec![task("c", 5), task("b", 5)]));
        assert!(!known.0.contains_key("a"));
        // A delta that names a task never seen cannot be applied.
        assert_eq!(known.apply(vec![], Some(vec!["zz".into()])), None);
    }

    #[test]
    fn managers_fail_over_in_turn_and_follow_updates() {
        let m = Managers::new(vec!["a:1".into(), "b:1".into()]);
        assert_eq!(m.current(), "a:1");
        m.failed("a:1");
        assert_eq!(m.current(), "b:1");
        // A second loop reporting the same failure does not skip a manager.
        m.failed("a:1");
        assert_eq!(m.current(), "b:1");
        m.update(&["c:1".into(), "b:1".into()]);
        assert_eq!(m.current(), "b:1");
        assert_eq!(m.snapshot(), vec!["b:1".to_string(), "c:1".to_string()]);
        m.update(&["d:1".into()]);
        assert_eq!(m.current(), "d:1");
        m.update(&[]);
        assert_eq!(m.current(), "d:1");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(5));
            assert!(d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500));
        }
    }

    #[test]
    fn retries_back_off_with_jitter() {
        assert_eq!(retry_base(3, 1), Duration::from_millis(50));
        assert_eq!(retry_base(3, 3), Duration::from_millis(200));
        assert_eq!(retry_base(3, 300), MAX_BACKOFF);
        let delays: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| retry_jitter(MAX_BACKOFF)).collect();
        assert!(delays.len() > 1, "retries are spread: {delays:?}");
        for d in delays {
            assert!(d >= MAX_BACKOFF / 2 && d <= MAX_BACKOFF, "{d:?}");
        }
    }

    #[test]
    fn coalescing_keeps_the_latest_status() {
        let mut p = BTreeMap::new();
        for state in [
            swarm_state::models::TaskState::ACCEPTED,
            swarm_state::models::TaskState::RUNNING,
        ] {
            coalesce(
                &mut p,
                TaskStatusUpdate {
                    task_id: "t".into(),
                    status: swarm_state::status(state, "", "now"),
                },
            );
        }
        assert_eq!(p.len(), 1);
        assert_eq!(p["t"].state, Some(swarm_state::models::TaskState::RUNNING));
    }

    #[test]
    fn bad_configs_are_refused() {
        let cfg = AgentConfig {
            node_id: "n".into(),
            addr: "127.0.0.1:2377".into(),
            managers: vec![],
            client: reqwest::Client::new(),
            scheme: "https".into(),
            runtime: Arc::new(crate::fake::FakeRuntime::new()),
            tunnel_key: None,
        };
        assert_eq!(Agent::new(cfg.clone()).unwrap_err(), AgentError::NoManagers);
        let cfg = AgentConfig {
            managers: vec!["127.0.0.1:1".into()],
            scheme: "ftp".into(),
            ..cfg
        };
        assert_eq!(
            Agent::new(cfg).unwrap_err(),
            AgentError::BadScheme("ftp".into())
        );
    }
}
