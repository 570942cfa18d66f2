//! The leader's reconciler: turns services into tasks and keeps them so.
//!
//! [`reconcile`] is a pure function of the replicated state and the time: it returns the
//! commands the leader proposes. Because every decision goes through Raft, a new leader
//! simply runs the same function on the same state and continues where the old one
//! stopped.
//!
//! What it does, per service, in SwarmKit's terms:
//! - replicated mode keeps one active task per slot 1..=replicas; global mode keeps one
//!   per eligible node;
//! - a task whose container ended is shut down and, if the restart policy allows, its slot
//!   gets a new task after the restart delay (default 5 s);
//! - tasks on nodes that are down, drained or gone are shut down and re-created elsewhere
//!   at once;
//! - extra tasks (scale down, removed service) get desired state REMOVE and are deleted
//!   once they have stopped;
//! - old tasks beyond the history limit (`--task-history-limit`, 5 per slot) are deleted;
//! - a rolling update (the task template changed) replaces `parallelism` slots at a
//!   time, stop-first or start-first, waits `delay` after each task runs, counts a new
//!   task that fails within its monitor window as a failure, and past
//!   `max_failure_ratio` pauses, rolls back (with the rollback config) or continues, as
//!   `UpdateStatus` then says; `completed` once every slot runs the template for a
//!   monitor window. The decisions are [`Command::SetUpdateStatus`], through Raft.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use swarm_state::models::{
    NodeSpecAvailabilityEnum, NodeState, Service, ServiceSpec,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum,
    ServiceUpdateStatusStateEnum as UpdateState, Task, TaskSpec,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use swarm_state::{desired_of, is_terminal, node_state, state_of, status, ClusterState, Command};
use time::OffsetDateTime;

use super::scheduler::{self, Load};
use crate::clock::{parse_rfc3339, rfc3339};

/// Docker keeps five tasks per slot.
pub const TASK_HISTORY_LIMIT: usize = 5;
/// Docker's default restart delay.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Label the manager puts on every task so workers can name containers without reading
/// the service.
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// The commands one pass decides, and when the next pass is due at the latest (a restart
/// delay that runs out).
#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub wake_after: Option<Duration>,
}

/// A new task that fails this long after it was created counts as a failure of the
/// update even when its monitor window is shorter: it may have spent that long pulling
/// its image and starting (the state keeps when a task was created and when it ended,
/// not when it started running).
const START_ALLOWANCE: Duration = Duration::from_secs(60);

/// What to do when an update fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

/// The rolling-update settings in force: the update config, or the rollback config
/// while rolling back. Docker's defaults where unset.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Policy {
    parallelism: usize,
    delay: Duration,
    monitor: Duration,
    failure_action: FailureAction,
    max_failure_ratio: f64,
    start_first: bool,
}

fn nanos(ns: Option<i64>, default: Duration) -> Duration {
    ns.map(|n| Duration::from_nanos(n.max(0) as u64))
        .unwrap_or(default)
}

/// The least time a new task must have run before the next slot is updated, when
/// `delay` is shorter: a task that exits at once is then seen failing before the update
/// moves on, so a broken image costs one replica, not all of them.
const MIN_SETTLE: Duration = Duration::from_secs(1);

impl Policy {
    /// How long a new task must have run before its slot stops counting as in flight.
    fn settle(&self) -> Duration {
        self.delay.max(MIN_SETTLE.min(self.monitor))
    }

    fn of(spec: &ServiceSpec, rolling_back: bool) -> Policy {
        let parallelism = |p: Option<i64>| match p.unwrap_or(1) {
            p if p <= 0 => usize::MAX,
            p => p as usize,
        };
        let monitor = Duration::from_secs(5);
        if rolling_back {
            let c = spec.rollback_config.clone().unwrap_or_default();
            Policy {
                parallelism: parallelism(c.parallelism),
                delay: nanos(c.delay, Duration::ZERO),
                monitor: nanos(c.monitor, monitor),
                failure_action: match c.failure_action {
                    Some(ServiceSpecRollbackConfigFailureActionEnum::CONTINUE) => {
                        FailureAction::Continue
                    }
                    _ => FailureAction::Pause,
                },
                max_failure_ratio: c.max_failure_ratio.unwrap_or(0.0),
                start_first: c.order == Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
            }
        } else {
            let c = spec.update_config.clone().unwrap_or_default();
            Policy {
                parallelism: parallelism(c.parallelism),
                delay: nanos(c.delay, Duration::ZERO),
                monitor: nanos(c.monitor, monitor),
                failure_action: match c.failure_action {
                    Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE) => {
                        FailureAction::Continue
                    }
                    Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK) => {
                        FailureAction::Rollback
                    }
                    _ => FailureAction::Pause,
                },
                max_failure_ratio: c.max_failure_ratio.unwrap_or(0.0),
                start_first: c.order == Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            }
        }
    }
}

/// When a task reached its current state (its status timestamp).
fn state_since(task: &Task) -> Option<OffsetDateTime> {
    task_time(task)
}

/// True for a task that runs the template but has not proven itself yet: not running,
/// or running for less than `wait`.
fn settling(task: &Task, now: OffsetDateTime, wait: Duration) -> bool {
    match state_of(task) {
        s if s < TaskState::RUNNING => true,
        TaskState::RUNNING => state_since(task).is_some_and(|t| now < t + wait),
        _ => false,
    }
}

/// The updater's view of one service in this pass, and what it decided.
struct Update {
    policy: Policy,
    /// The update or rollback is under way (not paused, not finished).
    active: bool,
    /// No more outdated tasks are to be replaced in this pass.
    held: bool,
    rolling_back: bool,
    in_flight: usize,
}

/// The service's update state, and the failure decision if new tasks failed: a pure
/// function of the service, its tasks and the time.
#[allow(clippy::too_many_arguments)]
fn update_decision(
    state: &ClusterState,
    service_id: &str,
    service_tasks: &[&Task],
    service: &Service,
    template: &TaskSpec,
    slots: usize,
    now: OffsetDateTime,
    at: &str,
) -> (Update, Option<Command>) {
    let spec = service.spec.clone().unwrap_or_default();
    let status = service.update_status.as_ref();
    let current = status.and_then(|s| s.state);
    let rolling_back = matches!(
        current,
        Some(UpdateState::ROLLBACK_STARTED)
            | Some(UpdateState::ROLLBACK_PAUSED)
            | Some(UpdateState::ROLLBACK_COMPLETED)
    );
    let policy = Policy::of(&spec, rolling_back);
    let active = matches!(
        current,
        Some(UpdateState::UPDATING) | Some(UpdateState::ROLLBACK_STARTED)
    );
    let paused = matches!(
        current,
        Some(UpdateState::PAUSED) | Some(UpdateState::ROLLBACK_PAUSED)
    );
    let started = status
        .and_then(|s| s.started_at.as_deref())
        .and_then(parse_rfc3339);
    // Read only for a slot whose task is outdated: with none (nearly always), the count
    // and its timestamp parsing are skipped.
    let outdated = service_tasks
        .iter()
        .any(|t| scheduler::is_active(t) && t.spec.as_ref() != Some(template));
    let in_flight = if outdated {
        service_tasks
            .iter()
            .filter(|t| {
                scheduler::is_active(t)
                    && t.spec.as_ref() == Some(template)
                    && settling(t, now, policy.settle())
            })
            .count()
    } else {
        0
    };
    let mut update = Update {
        policy,
        active,
        held: paused,
        rolling_back,
        in_flight,
    };
    if !active {
        return (update, None);
    }
    // New tasks that failed within their monitor window since the update started.
    let window = policy.monitor + START_ALLOWANCE;
    let failed: Vec<&Task> = service_tasks
        .iter()
        .copied()
        .filter(|t| t.spec.as_ref() == Some(template))
        .filter(|t| matches!(state_of(t), TaskState::FAILED | TaskState::REJECTED))
        .filter(|t| {
            let created = t.created_at.as_deref().and_then(parse_rfc3339);
            let ended = task_time(t);
            match (created, ended, started) {
                (Some(c), Some(e), Some(s)) => c >= s && e <= c + window,
                _ => false,
            }
        })
        .collect();
    let ratio = failed.len() as f64 / slots.max(1) as f64;
    if let Some(first) = failed.first().filter(|_| ratio > policy.max_failure_ratio) {
        let task_id = first.id.clone().unwrap_or_default();
        let status = |state, message: String| {
            let mut s = swarm_state::update_status(state, &message, at);
            s.started_at = status.and_then(|s| s.started_at.clone());
            s
        };
        let decided = match (policy.failure_action, rolling_back) {
            (FailureAction::Continue, _) => None,
            (FailureAction::Rollback, false) if state.previous_specs.contains_key(service_id) => {
                Some(Command::SetUpdateStatus {
                    id: service_id.to_string(),
                    status: status(
                        UpdateState::ROLLBACK_STARTED,
                        format!("update rolled back due to failure or early termination of task {task_id}"),
                    ),
                    roll_back: true,
                    at: at.to_string(),
                })
            }
            (_, true) => Some(Command::SetUpdateStatus {
                id: service_id.to_string(),
                status: status(
                    UpdateState::ROLLBACK_PAUSED,
                    format!("rollback paused due to failure or early termination of task {task_id}"),
                ),
                roll_back: false,
                at: at.to_string(),
            }),
            (_, false) => Some(Command::SetUpdateStatus {
                id: service_id.to_string(),
                status: status(
                    UpdateState::PAUSED,
                    format!("update paused due to failure or early termination of task {task_id}"),
                ),
                roll_back: false,
                at: at.to_string(),
            }),
        };
        if decided.is_some() {
            update.held = true;
            update.active = false;
        }
        return (update, decided);
    }
    (update, None)
}

/// How a slot's newest task ended, which decides whether and when it is replaced.
enum Ending {
    /// Still wanted: nothing to do.
    Active,
    /// Moved away from a node that is down, drained or gone: replace now.
    Moved,
    /// The container ended with this state at this time.
    Exited(TaskState, Option<OffsetDateTime>),
    /// Never existed.
    Missing,
}

pub fn reconcile(
    state: &ClusterState,
    now: OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let (by_service, orphans) = tasks_by_service(state);
    let mut pass = Pass {
        state,
        now,
        at: rfc3339(now),
        new_id,
        load: Load::from_state(state).with_failures_at(state, now),
        by_service,
        orphans,
        put: BTreeMap::new(),
        remove: Vec::new(),
        wake_after: None,
        status_out: Vec::new(),
    };

    // Tasks of services that no longer exist: stop, then delete once stopped. Looked up
    // once per service, not once per task.
    for (service, tasks) in &pass.by_service {
        if !state.services.contains_key(*service) {
            for task in tasks {
                retire(state, task, &pass.at, &mut pass.put, &mut pass.remove);
            }
        }
    }
    for task in pass.orphans.iter().copied() {
        retire(state, task, &pass.at, &mut pass.put, &mut pass.remove);
    }

    for (service_id, service) in &state.services {
        reconcile_service(&mut pass, service_id, service);
    }
    let Pass {
        put,
        remove,
        wake_after,
        status_out,
        ..
    } = pass;
    let mut plan = Plan {
        wake_after,
        ..Plan::default()
    };
    // Update decisions first: a rollback changes the template the tasks follow.
    plan.commands.extend(status_out);

    for tasks in task_batches(put.into_values().collect()) {
        plan.commands.push(Command::PutTasks {
            tasks: std::sync::Arc::new(tasks),
        });
    }
    for ids in remove.chunks(MAX_BATCH_TASKS) {
        plan.commands
            .push(Command::RemoveTasks { ids: ids.to_vec() });
    }
    plan
}

/// One reconcile pass: what every service reads (the state, the time, the id source) and
/// what the pass has decided so far, which later services see (the load placements add).
struct Pass<'a> {
    state: &'a ClusterState,
    now: OffsetDateTime,
    /// `now` as Docker writes it, for the tasks and statuses the pass writes.
    at: String,
    new_id: &'a mut dyn FnMut() -> String,
    load: Load,
    /// Each service's tasks, in id order: grouped once per pass rather than found by a
    /// scan of every task for each service.
    by_service: HashMap<&'a str, Vec<&'a Task>>,
    /// Tasks of no service.
    orphans: Vec<&'a Task>,
    /// Tasks to write, by id.
    put: BTreeMap<String, Task>,
    /// Tasks to delete.
    remove: Vec<String>,
    /// The earliest time a later pass has something to do (a restart delay ending).
    wake_after: Option<Duration>,
    /// Update-status decisions, proposed before the tasks.
    status_out: Vec<Command>,
}

/// Every task grouped by its service, each group in id order, and the tasks of no
/// service.
fn tasks_by_service(state: &ClusterState) -> (HashMap<&str, Vec<&Task>>, Vec<&Task>) {
    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    let mut orphans = Vec::new();
    for task in state.tasks.values() {
        match task.service_id.as_deref() {
            Some(service) => by_service.entry(service).or_default().push(task),
            None => orphans.push(&**task),
        }
    }
    (by_service, orphans)
}

/// The most tasks one `PutTasks` or `RemoveTasks` entry carries.
pub const MAX_BATCH_TASKS: usize = 1_000;
/// The most bytes (serialized) of tasks one `PutTasks` entry carries, give or take one
/// task. Scaling a service to 100,000 replicas is then about a hundred entries of a
/// megabyte rather than one of 50 MB: each is replicated, applied and acknowledged on
/// its own, well under the Raft proposal cap (`swarm_raft::MAX_PROPOSAL_BYTES`).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Splits tasks into batches of at most [`MAX_BATCH_TASKS`] tasks and about
/// [`MAX_BATCH_BYTES`] bytes as written (each distinct spec once per batch, see
/// `swarm_state::task_batch`), in order. A single task larger than the byte budget gets a
/// batch of its own.
pub fn task_batches(tasks: Vec<Task>) -> Vec<Vec<Task>> {
    let mut batches = Vec::new();
    let mut current: Vec<Task> = Vec::new();
    // Positions in `current` of the tasks that brought a new spec into the batch.
    let mut spec_holders: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for task in tasks {
        let base = len_without_spec(&task);
        let spec_len = || serde_json::to_vec(&task.spec).map(|b| b.len()).unwrap_or(0);
        let in_batch = |current: &[Task], holders: &[usize]| {
            holders.iter().rev().any(|&i| current[i].spec == task.spec)
        };
        let mut new_spec = task.spec.is_some() && !in_batch(&current, &spec_holders);
        let size = base + if new_spec { spec_len() } else { 0 };
        if !current.is_empty()
            && (current.len() >= MAX_BATCH_TASKS || bytes + size > MAX_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut current));
            spec_holders.clear();
            bytes = 0;
            // The first task of a batch brings its spec whatever the last batch had.
            if task.spec.is_some() && !new_spec {
                new_spec = true;
                bytes += spec_len();
            }
        }
        bytes += size;
        if new_spec {
            spec_holders.push(current.len());
        }
        current.push(task);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn len_without_spec(task: &Task) -> usize {
    serde_json::to_vec(&swarm_state::task_batch::without_spec(task))
        .map(|b| b.len())
        .unwrap_or(0)
}

/// Sets desired state REMOVE, and deletes the task once nothing runs it any more.
fn retire(
    state: &ClusterState,
    task: &Task,
    at: &str,
    put: &mut BTreeMap<String, Task>,
    remove: &mut Vec<String>,
) {
    let id = task.id.clone().unwrap_or_default();
    let stopped = is_terminal(state_of(task)) || state_of(task) < TaskState::ASSIGNED;
    let node_gone = !node_can_run(state, task);
    if desired_of(task) >= TaskState::REMOVE && (stopped || node_gone) {
        remove.push(id);
    } else if desired_of(task) < TaskState::REMOVE {
        let mut t = task.clone();
        t.desired_state = Some(TaskState::REMOVE);
        t.updated_at = Some(at.to_string());
        put.insert(id, t);
    }
}

/// How many tasks a slot (or a global service's node) keeps, its current one included:
/// the swarm's `--task-history-limit`, 5 unless changed. `None` keeps them all, as a
/// negative limit does in SwarmKit.
fn history_limit(state: &ClusterState) -> Option<usize> {
    let limit = state
        .cluster
        .as_ref()
        .and_then(|c| c.spec.orchestration.as_ref())
        .and_then(|o| o.task_history_retention_limit)
        .unwrap_or(TASK_HISTORY_LIMIT as i64);
    usize::try_from(limit).ok()
}

/// A node that is up but paused: its tasks keep running, and it gets no new ones.
fn paused_but_ready(node: &swarm_state::models::Node) -> bool {
    node_state(node) == NodeState::READY
        && node.spec.as_ref().and_then(|s| s.availability) == Some(NodeSpecAvailabilityEnum::PAUSE)
}

/// True when the task's node is known, up and not drained.
fn node_can_run(state: &ClusterState, task: &Task) -> bool {
    let Some(node) = task.node_id.as_ref().and_then(|n| state.nodes.get(n)) else {
        return false;
    };
    let drained = node
        .spec
        .as_ref()
        .and_then(|s| s.availability)
        .is_some_and(|a| a == NodeSpecAvailabilityEnum::DRAIN);
    node_state(node) != NodeState::DOWN && !drained
}

fn restart_delay(spec: &TaskSpec) -> Duration {
    spec.restart_policy
        .as_ref()
        .and_then(|r| r.delay)
        .map(|ns| Duration::from_nanos(ns.max(0) as u64))
        .unwrap_or(DEFAULT_RESTART_DELAY)
}

fn restart_allowed(spec: &TaskSpec, ended: TaskState) -> bool {
    let condition = spec
        .restart_policy
        .as_ref()
        .and_then(|r| r.condition)
        .unwrap_or(TaskSpecRestartPolicyConditionEnum::ANY);
    match condition {
        TaskSpecRestartPolicyConditionEnum::NONE => false,
        TaskSpecRestartPolicyConditionEnum::ON_FAILURE => ended != TaskState::COMPLETE,
        _ => true,
    }
}

fn max_attempts(spec: &TaskSpec) -> u64 {
    spec.restart_policy
        .as_ref()
        .and_then(|r| r.max_attempts)
        .unwrap_or(0)
        .max(0) as u64
}

fn created(task: &Task) -> &str {
    task.created_at.as_deref().unwrap_or_default()
}

/// What a service's tasks are grouped by: a slot (replicated services and jobs) or a
/// node (global ones). Not a string: a pass groups every task, and formatting and
/// comparing 100,000 slot numbers as strings was most of a pass with nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group<'a> {
    Slot(i64),
    Node(&'a str),
}

fn reconcile_service(pass: &mut Pass<'_>, service_id: &str, service: &Service) {
    let (state, now, at) = (pass.state, pass.now, pass.at.clone());
    let at = at.as_str();
    let Pass {
        new_id,
        load,
        by_service,
        put,
        remove,
        wake_after,
        status_out,
        ..
    } = pass;
    let service_tasks: &[&Task] = by_service
        .get(service_id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let new_id: &mut dyn FnMut() -> String = &mut **new_id;
    let spec = service.spec.clone().unwrap_or_default();
    // The template with the ingress network added when the service publishes ports.
    let template = state.task_spec_of(&spec);
    let name = spec.name.clone().unwrap_or_default();
    let mode = spec.mode.clone().unwrap_or_default();
    // Jobs run their tasks to completion once: a completed slot is never run again, and
    // a replicated job runs at most `MaxConcurrent` tasks at a time.
    let job = mode.replicated_job.is_some() || mode.global_job.is_some();
    let global = mode.global.is_some() || mode.global_job.is_some();
    let replicas = if global {
        0
    } else if let Some(j) = &mode.replicated_job {
        j.total_completions.unwrap_or(1).max(0) as u64
    } else {
        mode.replicated
            .as_ref()
            .and_then(|r| r.replicas)
            .unwrap_or(1)
            .max(0) as u64
    };
    let max_concurrent = mode
        .replicated_job
        .as_ref()
        .and_then(|j| j.max_concurrent)
        .filter(|m| *m > 0)
        .map(|m| m as usize)
        .unwrap_or(usize::MAX);
    let mut job_running = service_tasks
        .iter()
        .filter(|t| scheduler::is_active(t) && !is_terminal(state_of(t)))
        .count();

    // Group the service's tasks: by slot (replicated) or by node (global).
    let mut groups: BTreeMap<Group<'_>, Vec<&Task>> = BTreeMap::new();
    for &task in service_tasks {
        let key = if global {
            Group::Node(task.node_id.as_deref().unwrap_or_default())
        } else {
            Group::Slot(task.slot.unwrap_or(0))
        };
        groups.entry(key).or_default().push(task);
    }
    for tasks in groups.values_mut() {
        tasks.sort_by(|a, b| created(a).cmp(created(b)));
    }

    // Wanted groups. A paused node keeps the global task it runs (pause only stops new
    // tasks), but gets none.
    let wanted: Vec<Group<'_>> = if global {
        state
            .nodes
            .iter()
            .filter(|(id, n)| {
                let keeps_running = paused_but_ready(n)
                    && groups.get(&Group::Node(id)).is_some_and(|tasks| {
                        tasks.iter().any(|t| {
                            desired_of(t) <= TaskState::RUNNING && !is_terminal(state_of(t))
                        })
                    });
                (scheduler::is_eligible(n) || keeps_running)
                    && template
                        .placement
                        .as_ref()
                        .and_then(|p| p.constraints.as_ref())
                        .is_none_or(|cs| cs.iter().all(|c| scheduler::constraint_holds(c, id, n)))
            })
            .map(|(id, _)| Group::Node(id))
            .collect()
    } else {
        (1..=replicas).map(|s| Group::Slot(s as i64)).collect()
    };
    // Slots are wanted by number; only a global service needs a set to look nodes up.
    let wanted_nodes: HashSet<&str> = wanted
        .iter()
        .filter_map(|g| match g {
            Group::Node(n) => Some(*n),
            Group::Slot(_) => None,
        })
        .collect();
    let is_wanted = |g: &Group<'_>| match g {
        Group::Slot(s) => !global && *s >= 1 && (*s as u64) <= replicas,
        Group::Node(n) => global && wanted_nodes.contains(n),
    };

    // Rolling updates: tasks whose spec is not the service's current template are
    // replaced `parallelism` slots at a time (0 means all); a slot is in flight while its
    // new task has not run for `delay` yet. Failures decide pause or rollback.
    let (mut update, decision) = update_decision(
        state,
        service_id,
        service_tasks,
        service,
        &template,
        wanted.len(),
        now,
        at,
    );
    if job {
        // A job runs the spec it was created with to the end.
        update.held = true;
    }
    let mut outdated_left = 0usize;
    let mut settling_left = false;

    let history = history_limit(state);
    // Groups no longer wanted: retire every task in them. A global service's tasks on a
    // node that is still in the swarm (drained, down, paused, no longer matching the
    // constraints) are shut down instead and stay in `docker service ps` as Docker's do,
    // within the history limit.
    for (key, tasks) in &groups {
        if is_wanted(key) {
            continue;
        }
        let node_in_swarm = match key {
            Group::Node(n) if global && state.nodes.contains_key(*n) => Some(*n),
            _ => None,
        };
        if let Some(node) = node_in_swarm {
            for task in tasks {
                if desired_of(task) <= TaskState::RUNNING {
                    let mut t = (*task).clone();
                    t.desired_state = Some(TaskState::SHUTDOWN);
                    t.updated_at = Some(at.to_string());
                    put.insert(t.id.clone().unwrap_or_default(), t);
                    load.remove(service_id, node);
                }
            }
            if let Some(limit) = history {
                let stopped = tasks.iter().filter(|t| is_terminal(state_of(t)));
                for old in stopped.take(tasks.len().saturating_sub(limit)) {
                    let id = old.id.clone().unwrap_or_default();
                    put.remove(&id);
                    remove.push(id);
                }
            }
        } else {
            for task in tasks {
                retire(state, task, at, put, remove);
            }
        }
    }

    for key in &wanted {
        let tasks: &[&Task] = groups.get(key).map(Vec::as_slice).unwrap_or_default();
        if job && tasks.iter().any(|t| state_of(t) == TaskState::COMPLETE) {
            // This part of the job is done.
            continue;
        }
        let mut ending = Ending::Missing;
        let mut outdated: Option<&Task> = None;
        // The slot's active task that already runs the template (start-first keeps the
        // old one running next to it until it runs).
        let mut fresh: Option<&Task> = None;
        for task in tasks {
            // Only a task written back needs its id copied.
            let id = || task.id.clone().unwrap_or_default();
            if desired_of(task) > TaskState::RUNNING {
                // Already retired. Its end decides the restart, if it is the newest.
                ending = match state_of(task) {
                    s @ (TaskState::COMPLETE | TaskState::FAILED | TaskState::REJECTED) => {
                        Ending::Exited(s, task_time(task))
                    }
                    _ => Ending::Moved,
                };
                continue;
            }
            let observed = state_of(task);
            if is_terminal(observed) {
                let mut t = (*task).clone();
                t.desired_state = Some(TaskState::SHUTDOWN);
                put.insert(id(), t);
                if let Some(node) = &task.node_id {
                    load.remove(service_id, node);
                }
                ending = Ending::Exited(observed, task_time(task));
            } else if task.node_id.is_some() && !node_can_run(state, task) {
                let mut t = (*task).clone();
                t.desired_state = Some(TaskState::SHUTDOWN);
                put.insert(id(), t);
                if let Some(node) = &task.node_id {
                    load.remove(service_id, node);
                }
                ending = Ending::Moved;
            } else if task.node_id.is_none() {
                // Pending: try to place it now.
                match scheduler::place(state, load, service_id, &template) {
                    Ok(node) => {
                        load.add(service_id, &node);
                        let mut t = (*task).clone();
                        t.node_id = Some(node);
                        t.status = Some(status(
                            TaskState::ASSIGNED,
                            "scheduler assigned task to node",
                            at,
                        ));
                        put.insert(id(), t);
                    }
                    // The reason changes as nodes come and go (Docker shows the latest);
                    // written only when it changed, so a waiting task adds no entries.
                    Err(why) if task.status.as_ref().and_then(|s| s.err.as_ref()) != Some(&why) => {
                        let mut t = (*task).clone();
                        let mut s = status(TaskState::PENDING, "pending task scheduling", at);
                        s.err = Some(why);
                        t.status = Some(s);
                        put.insert(id(), t);
                    }
                    Err(_) => {}
                }
                ending = Ending::Active;
            } else {
                ending = Ending::Active;
                if task.spec.as_ref() != Some(&template) {
                    outdated = Some(task);
                } else {
                    fresh = Some(task);
                }
            }
        }
        // Only an update under way waits for its new tasks to settle.
        if let (true, Some(f)) = (update.active, fresh) {
            settling_left |= settling(f, now, update.policy.monitor);
        }
        let mut start_first_new = false;
        if let (Ending::Active, Some(old)) = (&ending, outdated) {
            outdated_left += 1;
            let shut_old = |put: &mut BTreeMap<String, Task>, load: &mut Load| {
                let mut t = old.clone();
                t.desired_state = Some(TaskState::SHUTDOWN);
                put.insert(old.id.clone().unwrap_or_default(), t);
                if let Some(node) = &old.node_id {
                    load.remove(service_id, node);
                }
            };
            match fresh {
                // Start-first: the new task runs, so the old one can go.
                Some(f) if state_of(f) == TaskState::RUNNING => {
                    shut_old(put, load);
                }
                Some(_) => {}
                None if update.held || update.in_flight >= update.policy.parallelism => {}
                None if update.policy.start_first => {
                    start_first_new = true;
                    update.in_flight += 1;
                }
                None => {
                    shut_old(put, load);
                    ending = Ending::Moved;
                    update.in_flight += 1;
                }
            }
        }

        // A replacement waiting out its restart delay exists already, desired READY
        // (prepared, not started), as Docker shows it: it starts once the delay is over.
        if let Some((i, held)) = tasks
            .iter()
            .enumerate()
            .find(|(_, t)| desired_of(t) == TaskState::READY && !is_terminal(state_of(t)))
        {
            let ended = i
                .checked_sub(1)
                .and_then(|p| tasks.get(p))
                .and_then(|p| task_time(p));
            let due = ended.map(|e| e + restart_delay(&template)).unwrap_or(now);
            if due <= now {
                let id = held.id.clone().unwrap_or_default();
                let mut t = put.get(&id).cloned().unwrap_or_else(|| (*held).clone());
                t.desired_state = Some(TaskState::RUNNING);
                put.insert(id, t);
            } else {
                let left: Duration = (due - now).try_into().unwrap_or_default();
                *wake_after = Some(wake_after.map_or(left, |w| w.min(left)));
            }
        }
        let mut held_back = false;
        let replace = match ending {
            Ending::Active => start_first_new,
            Ending::Missing | Ending::Moved => true,
            Ending::Exited(ended, when) => {
                let attempts = tasks.len() as u64;
                let limit = max_attempts(&template);
                if !restart_allowed(&template, ended) || (limit > 0 && attempts > limit) {
                    false
                } else {
                    let delay = restart_delay(&template);
                    let due = when.map(|w| w + delay).unwrap_or(now);
                    if due > now {
                        let left: Duration = (due - now).try_into().unwrap_or(delay);
                        *wake_after = Some(wake_after.map_or(left, |w| w.min(left)));
                        held_back = true;
                    }
                    true
                }
            }
        };
        // A job starts no more tasks than it may run at once.
        let replace = replace && (!job || job_running < max_concurrent);
        if replace && job {
            job_running += 1;
        }
        if replace {
            let mut task = new_task(state, service_id, &name, &template, *key, now, new_id, load);
            if held_back {
                task.desired_state = Some(TaskState::READY);
            }
            put.insert(task.id.clone().unwrap_or_default(), task);
        }

        // History: keep the newest tasks of the group, as many as the limit says.
        let Some(limit) = history else {
            continue;
        };
        let retired: Vec<&&Task> = tasks
            .iter()
            .filter(|t| {
                let id = t.id.as_deref().unwrap_or_default();
                let desired = put.get(id).map(desired_of).unwrap_or(desired_of(t));
                desired > TaskState::RUNNING
            })
            .collect();
        let total = tasks.len() + usize::from(replace);
        if total > limit {
            let excess = total - limit;
            for old in retired.iter().take(excess) {
                let old_state = state_of(old);
                if is_terminal(old_state) || !node_can_run(state, old) {
                    let id = old.id.clone().unwrap_or_default();
                    put.remove(&id);
                    remove.push(id);
                }
            }
        }
    }

    match decision {
        Some(command) => status_out.push(command),
        // Every slot runs the template and has for a monitor window: done.
        None if update.active && outdated_left == 0 && !settling_left => {
            let (state_done, message) = if update.rolling_back {
                (UpdateState::ROLLBACK_COMPLETED, "rollback completed")
            } else {
                (UpdateState::COMPLETED, "update completed")
            };
            let mut s = swarm_state::update_status(state_done, message, at);
            s.started_at = service
                .update_status
                .as_ref()
                .and_then(|u| u.started_at.clone());
            s.completed_at = Some(at.to_string());
            status_out.push(Command::SetUpdateStatus {
                id: service_id.to_string(),
                status: s,
                roll_back: false,
                at: at.to_string(),
            });
        }
        None if update.active => {
            // Check again when the slot in flight has settled (and, slot by slot, until
            // the monitor windows have run out).
            let wait = update.policy.settle().max(Duration::from_millis(100));
            *wake_after = Some(wake_after.map_or(wait, |w| w.min(wait)));
        }
        None => {}
    }
}

fn task_time(task: &Task) -> Option<OffsetDateTime> {
    task.status
        .as_ref()
        .and_then(|s| s.timestamp.as_deref())
        .and_then(parse_rfc3339)
}

#[allow(clippy::too_many_arguments)]
fn new_task(
    state: &ClusterState,
    service_id: &str,
    service_name: &str,
    template: &TaskSpec,
    key: Group<'_>,
    now: OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
    load: &mut Load,
) -> Task {
    let at = rfc3339(now);
    let (placed, slot) = match key {
        Group::Node(node) => (Ok(node.to_string()), None),
        Group::Slot(slot) => (
            scheduler::place(state, load, service_id, template),
            Some(slot),
        ),
    };
    let (node_id, task_status) = match placed {
        Ok(node) => {
            load.add(service_id, &node);
            (
                Some(node),
                status(TaskState::ASSIGNED, "scheduler assigned task to node", &at),
            )
        }
        Err(why) => {
            let mut s = status(TaskState::PENDING, "pending task scheduling", &at);
            s.err = Some(why);
            (None, s)
        }
    };
    let labels = [(SERVICE_NAME_LABEL.to_string(), service_name.to_string())]
        .into_iter()
        .collect();
    Task {
        id: Some(new_id()),
        created_at: Some(at.clone()),
        updated_at: Some(at),
        labels: Some(labels),
        spec: Some(template.clone()),
        service_id: Some(service_id.to_string()),
        slot,
        node_id,
        status: Some(task_status),
        desired_state: Some(TaskState::RUNNING),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
