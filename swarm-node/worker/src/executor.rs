//! The executor: carries out [`plan`]'s steps on the container runtime and reports the
//! observed states.
//!
//! It wakes up on a new set of assignments, on a change of the tasks whose networks are
//! ready (see [`Executor::with_networks`]), on an engine event of one of this node's
//! containers (so a death is noticed at once), when a step it started finishes, and
//! every resync period in case events were lost. Each wake-up lists the containers and
//! plans again. Engine work runs concurrently, one step at a time per task, so a long
//! stop grace period never delays another task.
//!
//! Secrets and configs ([`crate::taskfiles`]): a task's files are written to its own
//! store just before its container is created and bind-mounted into it; the store goes
//! with the container, and every new set of assignments and every resync sweeps away the
//! stores of tasks no longer assigned, so neither a crash nor an unassignment while the
//! node was down leaves a secret behind. Their data stays in memory (in [`Assigned`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use futures_util::FutureExt;
use swarm_state::models::{ContainerStatus, EndpointPortConfig, Task, TaskState, TaskStatus};
use swarm_state::proto::{FileData, TaskStatusUpdate};
use swarm_state::state_of;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::{Clock, SystemClock};
use crate::plan::{plan, Action, ReadyNetworks, StatusChange};
use crate::runtime::{ContainerRuntime, EventAction, RuntimeError, RuntimeEvent, TaskContainer};
use crate::taskfiles::{bind_mounts, task_files, NoTaskFiles, TaskFile, TaskFiles};

/// How often the executor lists the containers even without events.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(2);

/// After a container event that may show late in the container list (the engine sends
/// `die` before its list shows the container stopped), how often the containers are
/// listed again for a while. `start` and `destroy` come once the list shows them: one
/// listing follows them, as it follows any wake-up. Settling after those too made a node
/// starting 100 tasks list its containers ten times a second for as long as it started
/// them.
const SETTLE_PERIOD: Duration = Duration::from_millis(100);
const SETTLE_FOR: Duration = Duration::from_secs(2);
/// The least time between two subscriptions to the engine's events.
const EVENTS_RETRY: Duration = Duration::from_secs(1);

/// The tasks assigned to this node: `None` until the managers' first answer. Until then
/// the executor does nothing, so that it never stops a container it merely has not
/// heard about yet.
pub type AssignedTasks = Option<Arc<Assigned>>;

/// What the managers assigned to this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assigned {
    /// Shared with the agent's copy: a node's list is rebuilt on every change of any of
    /// its tasks, and copying each task each time was most of an idle agent's work.
    pub tasks: Vec<Arc<Task>>,
    /// Per task id: the host-mode ports its container publishes.
    pub host_ports: BTreeMap<String, Vec<EndpointPortConfig>>,
    /// The data of the secrets the tasks reference, by secret id. Held in memory only:
    /// it reaches the host's disk never, a task's tmpfs only (`FileData`'s `Debug`
    /// hides it from logs).
    pub secrets: BTreeMap<String, FileData>,
    /// Likewise for configs, by config id.
    pub configs: BTreeMap<String, FileData>,
}

impl From<Vec<Task>> for Assigned {
    fn from(tasks: Vec<Task>) -> Self {
        Assigned {
            tasks: tasks.into_iter().map(Arc::new).collect(),
            ..Default::default()
        }
    }
}

/// Runs a node's assigned tasks on a container runtime.
#[derive(Debug, Clone)]
pub struct Executor {
    node_id: String,
    runtime: Arc<dyn ContainerRuntime>,
    clock: Arc<dyn Clock>,
    resync: Duration,
    /// The tasks whose overlay networks are in place; `None`: no network agent, so tasks
    /// with networks wait for ever and the others run on the default bridge.
    networks: Option<watch::Receiver<Arc<ReadyNetworks>>>,
    /// The node's name in the swarm, for `{{.Node.Hostname}}` in service templates.
    node_hostname: String,
    /// Where tasks' secret and config files are put.
    files: Arc<dyn TaskFiles>,
}

type EventStream = BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

/// What a finished step tells the loop.
struct Done {
    task_id: String,
    change: Option<StatusChange>,
    stopped_unassigned: bool,
}

impl Executor {
    pub fn new(node_id: impl Into<String>, runtime: Arc<dyn ContainerRuntime>) -> Self {
        Executor {
            node_id: node_id.into(),
            runtime,
            clock: Arc::new(SystemClock),
            resync: RESYNC_PERIOD,
            networks: None,
            node_hostname: String::new(),
            files: Arc::new(NoTaskFiles),
        }
    }

    /// The stores of tasks' secret and config files. Without them, a task that references
    /// any is rejected. The executor sweeps the stores of tasks not assigned to it, so
    /// they must be its own.
    pub fn with_task_files(mut self, files: Arc<dyn TaskFiles>) -> Self {
        self.files = files;
        self
    }

    /// The node's name in the swarm (what `docker node ls` shows), for templates.
    pub fn with_node_hostname(mut self, hostname: impl Into<String>) -> Self {
        self.node_hostname = hostname.into();
        self
    }

    /// Follows the network agent's ready map: a task with networks is prepared only once
    /// it is in there, with the attachments found there.
    pub fn with_networks(mut self, ready: watch::Receiver<Arc<ReadyNetworks>>) -> Self {
        self.networks = Some(ready);
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = period;
        self
    }

    /// Runs until `shutdown` completes or the assignments sender is dropped. Containers
    /// are left as they are when it returns: a restarted executor adopts them.
    pub async fn run(
        self,
        mut assignments: watch::Receiver<AssignedTasks>,
        reports: mpsc::UnboundedSender<TaskStatusUpdate>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut ready_rx = self.networks.clone();
        let mut st = LoopState {
            ready: ready_rx
                .as_mut()
                .map(|rx| rx.borrow_and_update().clone())
                .unwrap_or_default(),
            exec: self,
            desired: None,
            host_ports: BTreeMap::new(),
            file_data: Arc::default(),
            sweep_due: false,
            reported: HashMap::new(),
            inflight: HashSet::new(),
            reports,
            steps: JoinSet::new(),
            step_tasks: HashMap::new(),
        };
        let mut events: Option<EventStream> = None;
        // A broken stream is replaced at a later wake-up, not at once: with the engine
        // down every attempt fails immediately.
        let mut subscribe_after = tokio::time::Instant::now();
        let mut settle_until: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(st.exec.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        st.set_desired(assignments.borrow_and_update().clone());
        loop {
            if events.is_none() && tokio::time::Instant::now() >= subscribe_after {
                events = st.exec.subscribe().await;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                changed = assignments.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    st.set_desired(assignments.borrow_and_update().clone());
                }
                ready = next_ready(&mut ready_rx) => match ready {
                    Some(ready) => st.ready = ready,
                    // The network agent is gone: keep the last map.
                    None => ready_rx = None,
                },
                ev = next_event(&mut events) => match ev {
                    Some(Ok(ev)) => {
                        let mut settle = false;
                        let mut next = Some(ev);
                        // Events that came together get one listing.
                        while let Some(ev) = next {
                            tracing::debug!(container = %ev.container_id, action = ?ev.action, "container event");
                            settle |= settles(&ev);
                            next = match events.as_mut().and_then(|s| s.next().now_or_never()) {
                                Some(Some(Ok(more))) => Some(more),
                                _ => None,
                            };
                        }
                        if settle {
                            settle_until = Some(tokio::time::Instant::now() + SETTLE_FOR);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "container event stream broke; resubscribing");
                        events = None;
                        subscribe_after = tokio::time::Instant::now() + EVENTS_RETRY;
                    }
                    None => {
                        events = None;
                        subscribe_after = tokio::time::Instant::now() + EVENTS_RETRY;
                    }
                },
                _ = tick.tick() => st.sweep_due = true,
                _ = tokio::time::sleep(SETTLE_PERIOD), if settle_until.is_some_and(|t| tokio::time::Instant::now() < t) => {}
                Some(done) = st.steps.join_next_with_id(), if !st.steps.is_empty() => st.step_done(done),
            }
            // Steps that ended meanwhile are taken now, so that one look at the engine
            // follows them all: 100 tasks starting together would otherwise cost 100
            // container listings.
            while let Some(done) = st.steps.try_join_next_with_id() {
                st.step_done(done);
            }
            st.reconcile().await;
        }
        // Dropping the join set aborts unfinished steps; the containers stay.
    }

    async fn subscribe(&self) -> Option<EventStream> {
        match self.runtime.events(&self.node_id).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to container events; relying on resync");
                None
            }
        }
    }
}

/// Whether an event calls for listing the containers again for a while (see
/// [`SETTLE_PERIOD`]). Anything but a start or a removal may: a container dying, being
/// killed, its health changing.
fn settles(ev: &RuntimeEvent) -> bool {
    !matches!(ev.action, EventAction::Start | EventAction::Destroy)
}

/// The next ready map, `None` once its sender is gone; pends for ever without one.
async fn next_ready(
    rx: &mut Option<watch::Receiver<Arc<ReadyNetworks>>>,
) -> Option<Arc<ReadyNetworks>> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

async fn next_event(
    events: &mut Option<EventStream>,
) -> Option<Result<RuntimeEvent, RuntimeError>> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

struct LoopState {
    exec: Executor,
    /// Assigned tasks by id (only those of this node).
    desired: Option<BTreeMap<String, Arc<Task>>>,
    /// The host-mode ports of the assigned tasks, by task id.
    host_ports: BTreeMap<String, Vec<EndpointPortConfig>>,
    /// The latest assignments, for the data of their secrets and configs.
    file_data: Arc<Assigned>,
    /// Whether the task file stores are to be swept at the next reconciliation.
    sweep_due: bool,
    /// The tasks whose networks are ready.
    ready: Arc<ReadyNetworks>,
    /// The last status this executor reported per task: it may be ahead of the
    /// managers' copy in the assignments.
    reported: HashMap<String, TaskStatus>,
    /// Tasks with an engine step under way: nothing else is planned for them meanwhile.
    inflight: HashSet<String>,
    reports: mpsc::UnboundedSender<TaskStatusUpdate>,
    steps: JoinSet<Done>,
    /// The task of each running step, to clear `inflight` should a step panic.
    step_tasks: HashMap<tokio::task::Id, String>,
}

impl LoopState {
    fn step_done(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        match done {
            Ok((id, done)) => {
                self.step_tasks.remove(&id);
                self.finish(done);
            }
            Err(e) => {
                tracing::error!(error = %e, "executor step failed");
                if let Some(task_id) = self.step_tasks.remove(&e.id()) {
                    self.inflight.remove(&task_id);
                }
            }
        }
    }

    fn set_desired(&mut self, tasks: AssignedTasks) {
        let Some(assigned) = tasks else { return };
        let node = self.exec.node_id.as_str();
        self.host_ports = assigned.host_ports.clone();
        self.file_data = assigned.clone();
        self.sweep_due = true;
        let mut desired: BTreeMap<String, Arc<Task>> = assigned
            .tasks
            .iter()
            .filter(|t| t.node_id.as_deref() == Some(node))
            .filter_map(|t| Some((t.id.clone()?, t.clone())))
            .collect();
        self.reported.retain(|id, _| desired.contains_key(id));
        for (id, ours) in &self.reported {
            if let Some(task) = desired.get_mut(id) {
                merge_status(task, ours);
            }
        }
        self.desired = Some(desired);
    }

    /// The assigned tasks, each with the further on of the managers' status and ours
    /// (merged when the assignments arrive and when this node records a change, so
    /// planning, which runs after every change, copies nothing).
    fn tasks(&self) -> Vec<&Task> {
        self.desired
            .iter()
            .flat_map(|d| d.values())
            .map(|t| &**t)
            .collect()
    }

    async fn reconcile(&mut self) {
        if self.desired.is_none() {
            return;
        }
        if std::mem::take(&mut self.sweep_due) {
            self.sweep().await;
        }
        let actual: Vec<TaskContainer> = match self.exec.runtime.list(&self.exec.node_id).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list task containers");
                return;
            }
        };
        // Reports change no container, so several steps of one task can be taken in one
        // wake-up; the bound only guards against a planning loop.
        for _ in 0..16 {
            let mut reported_any = false;
            let actions = plan(&self.tasks(), &actual, &self.ready);
            for action in actions {
                let task_id = action.task_id().to_string();
                if self.inflight.contains(&task_id) {
                    continue;
                }
                match action {
                    Action::Report { task_id, change } => {
                        reported_any |= self.record(&task_id, change);
                    }
                    mut step => {
                        let mut files = Vec::new();
                        if let Action::Prepare { task_id, spec } = &mut step {
                            if let Some(ports) = self.host_ports.get(task_id) {
                                crate::spec::publish(spec, ports);
                            }
                            // Docker's templates ({{.Node.Hostname}}, ...) in the
                            // hostname, env and mounts; a bad one rejects the task.
                            let ctx = self.desired.as_ref().and_then(|d| d.get(task_id)).map(|t| {
                                crate::template::TemplateContext::of(t, &self.exec.node_hostname)
                            });
                            if let Some(ctx) = ctx {
                                if let Err(e) = crate::template::expand_container(spec, &ctx) {
                                    let change = StatusChange::new(TaskState::REJECTED, "rejected")
                                        .with_err(e.to_string());
                                    reported_any |= self.record(task_id, change);
                                    continue;
                                }
                            }
                            // Its secrets and configs, or why it cannot have them.
                            let task = self.desired.as_ref().and_then(|d| d.get(task_id));
                            if let Some(task) = task {
                                let data = &self.file_data;
                                match task_files(task, &data.secrets, &data.configs) {
                                    Ok(f) => files = f,
                                    Err(e) => {
                                        let change =
                                            StatusChange::new(TaskState::REJECTED, "rejected")
                                                .with_err(e.to_string());
                                        reported_any |= self.record(task_id, change);
                                        continue;
                                    }
                                }
                            }
                        }
                        let unassigned = self
                            .desired
                            .as_ref()
                            .is_some_and(|d| !d.contains_key(&task_id));
                        let engine = Engine {
                            runtime: self.exec.runtime.clone(),
                            files: self.exec.files.clone(),
                        };
                        let handle = self.steps.spawn(run_step(engine, step, files, unassigned));
                        self.step_tasks.insert(handle.id(), task_id.clone());
                        self.inflight.insert(task_id);
                    }
                }
            }
            if !reported_any {
                break;
            }
        }
    }

    /// Releases the file stores of tasks that are neither assigned and live nor being
    /// worked on. A task whose container has ended (complete, shut down, failed) loses its
    /// files at once, as dockerd unmounts a container's secrets when it stops: a task is
    /// never started again, and its container is kept only for the task history.
    async fn sweep(&mut self) {
        let Some(desired) = &self.desired else { return };
        let keep: BTreeSet<String> = desired
            .keys()
            .filter(|id| self.tasks_state(id).is_none_or(|s| s <= TaskState::RUNNING))
            .chain(self.inflight.iter())
            .cloned()
            .collect();
        match self.exec.files.sweep(&keep).await {
            Ok(released) if !released.is_empty() => {
                tracing::info!(tasks = ?released, "released the secret and config files of tasks no longer assigned")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot release task files; will retry"),
        }
    }

    fn finish(&mut self, done: Done) {
        self.inflight.remove(&done.task_id);
        if let Some(change) = done.change {
            self.record(&done.task_id, change);
        }
        if done.stopped_unassigned {
            // Not tracked any more; tell the managers anyway, in case they still care.
            let status = self.stamp(StatusChange::new(TaskState::SHUTDOWN, "shutdown"));
            let _ = self.reports.send(TaskStatusUpdate {
                task_id: done.task_id,
                status,
            });
        }
    }

    fn stamp(&self, change: StatusChange) -> TaskStatus {
        let container_status = change.container_id.as_ref().map(|id| ContainerStatus {
            container_id: Some(id.clone()),
            pid: None,
            exit_code: change.exit_code,
        });
        TaskStatus {
            timestamp: Some(self.exec.clock.now_rfc3339()),
            state: Some(change.state),
            message: Some(change.message),
            err: change.err,
            container_status,
            port_status: None,
        }
    }

    /// Records and reports a change if it moves the task forward. Returns whether it did.
    fn record(&mut self, task_id: &str, change: StatusChange) -> bool {
        let current = self.tasks_state(task_id).unwrap_or(TaskState::NEW);
        if change.state <= current {
            return false;
        }
        if change.state > TaskState::RUNNING {
            // Its container has ended: its secrets go at the next reconciliation.
            self.sweep_due = true;
        }
        let status = self.stamp(change);
        tracing::info!(
            task = task_id,
            state = %status.state.map(|s| s.to_string()).unwrap_or_default(),
            err = status.err.as_deref().unwrap_or(""),
            "task state"
        );
        if let Some(task) = self.desired.as_mut().and_then(|d| d.get_mut(task_id)) {
            merge_status(task, &status);
        }
        self.reported.insert(task_id.to_string(), status.clone());
        let _ = self.reports.send(TaskStatusUpdate {
            task_id: task_id.to_string(),
            status,
        });
        true
    }

    fn tasks_state(&self, task_id: &str) -> Option<TaskState> {
        let managers = self
            .desired
            .as_ref()
            .and_then(|d| d.get(task_id))
            .map(|t| state_of(t));
        let ours = self.reported.get(task_id).and_then(|s| s.state);
        managers.max(ours)
    }
}

/// Gives `task` this node's status `ours` when it is at least as far on as the managers'
/// (the managers' copy lags behind what this node reported). Copies the task only then.
fn merge_status(task: &mut Arc<Task>, ours: &TaskStatus) {
    if ours.state.unwrap_or(TaskState::NEW) >= state_of(task) && task.status.as_ref() != Some(ours)
    {
        Arc::make_mut(task).status = Some(ours.clone());
    }
}

fn engine_message(e: &RuntimeError) -> String {
    match e {
        RuntimeError::Refused { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// What a step works with.
struct Engine {
    runtime: Arc<dyn ContainerRuntime>,
    files: Arc<dyn TaskFiles>,
}

/// Why a task could not be prepared.
#[derive(Debug, thiserror::Error)]
enum PrepareError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot deliver secrets and configs: {0}")]
    Files(#[from] crate::taskfiles::TaskFilesError),
}

impl PrepareError {
    fn is_temporary(&self) -> bool {
        matches!(self, PrepareError::Runtime(e) if e.is_temporary())
    }
}

/// Makes sure the image is there, writes the task's files into its store and creates
/// the container with them bind-mounted. A container that was not created takes its
/// store with it.
async fn prepare(
    engine: &Engine,
    task_id: &str,
    mut spec: crate::runtime::ContainerSpec,
    files: &[TaskFile],
) -> Result<String, PrepareError> {
    engine.runtime.ensure_image(&spec.image).await?;
    if files.is_empty() {
        return Ok(engine.runtime.create(&spec).await?);
    }
    let paths = engine.files.prepare(task_id, files).await?;
    spec.body
        .host_config
        .get_or_insert_with(Default::default)
        .mounts
        .get_or_insert_with(Vec::new)
        .extend(bind_mounts(files, &paths));
    let created = engine.runtime.create(&spec).await;
    if created.is_err() {
        if let Err(e) = engine.files.release(task_id).await {
            tracing::warn!(task = %task_id, error = %e, "cannot release task files; the next sweep will");
        }
    }
    Ok(created?)
}

/// One engine step. Failures that say something about the task become its status;
/// failures of the engine itself are logged and the step is planned again later.
async fn run_step(engine: Engine, step: Action, files: Vec<TaskFile>, unassigned: bool) -> Done {
    let runtime = engine.runtime.clone();
    let task_id = step.task_id().to_string();
    let mut done = Done {
        task_id: task_id.clone(),
        change: None,
        stopped_unassigned: false,
    };
    match step {
        Action::Report { .. } => {}
        Action::Prepare { spec, .. } => {
            let prepared = prepare(&engine, &task_id, *spec, &files).await;
            done.change = match prepared {
                Ok(id) => {
                    Some(StatusChange::new(TaskState::READY, "prepared").with_container(Some(&id)))
                }
                Err(e) if e.is_temporary() => {
                    tracing::warn!(task = %task_id, error = %e, "cannot prepare task; will retry");
                    None
                }
                Err(e) => {
                    Some(StatusChange::new(TaskState::REJECTED, "rejected").with_err(e.to_string()))
                }
            };
        }
        Action::Start { container_id, .. } => {
            done.change = match runtime.start(&container_id).await {
                Ok(()) => Some(
                    StatusChange::new(TaskState::RUNNING, "started")
                        .with_container(Some(&container_id)),
                ),
                Err(e) if e.is_temporary() => {
                    tracing::warn!(task = %task_id, error = %e, "cannot start task; will retry");
                    None
                }
                Err(e) => Some(
                    StatusChange::new(TaskState::FAILED, "failed")
                        .with_err(format!("starting container failed: {}", engine_message(&e)))
                        .with_container(Some(&container_id)),
                ),
            };
        }
        Action::Stop {
            container_id,
            grace,
            ..
        } => match runtime.stop(&container_id, grace).await {
            Ok(()) | Err(RuntimeError::NoSuchContainer(_)) => done.stopped_unassigned = unassigned,
            Err(e) => {
                tracing::warn!(task = %task_id, container = %container_id, error = %e, "cannot stop container; will retry")
            }
        },
        Action::Remove { container_id, .. } => match runtime.remove(&container_id).await {
            // The task's files go with its container.
            Ok(()) => {
                if let Err(e) = engine.files.release(&task_id).await {
                    tracing::warn!(task = %task_id, error = %e, "cannot release task files; the next sweep will");
                }
            }
            Err(e) => {
                tracing::warn!(task = %task_id, container = %container_id, error = %e, "cannot remove container; will retry");
            }
        },
    }
    done
}

#[cfg(test)]
mod tests;
