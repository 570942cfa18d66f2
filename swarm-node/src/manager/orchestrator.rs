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
//! - old tasks beyond the history limit (5 per slot) are deleted.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use swarm_state::models::{
    NodeSpecAvailabilityEnum, NodeState, Service, Task, TaskSpec,
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
    let mut plan = Plan::default();
    let mut put: BTreeMap<String, Task> = BTreeMap::new();
    let mut remove: Vec<String> = Vec::new();
    let mut load = Load::from_state(state);
    let at = rfc3339(now);

    // Tasks of services that no longer exist: stop, then delete once stopped.
    for task in state.tasks.values() {
        let service_gone = task
            .service_id
            .as_ref()
            .is_none_or(|s| !state.services.contains_key(s));
        if service_gone {
            retire(state, task, &at, &mut put, &mut remove);
        }
    }

    for (service_id, service) in &state.services {
        reconcile_service(
            state,
            service_id,
            service,
            now,
            &at,
            new_id,
            &mut load,
            &mut put,
            &mut remove,
            &mut plan.wake_after,
        );
    }

    for tasks in task_batches(put.into_values().collect()) {
        plan.commands.push(Command::PutTasks { tasks });
    }
    for ids in remove.chunks(MAX_BATCH_TASKS) {
        plan.commands
            .push(Command::RemoveTasks { ids: ids.to_vec() });
    }
    plan
}

/// The most tasks one `PutTasks` or `RemoveTasks` entry carries.
pub const MAX_BATCH_TASKS: usize = 1_000;
/// The most bytes (serialized) of tasks one `PutTasks` entry carries, give or take one
/// task. Scaling a service to 100,000 replicas is then about a hundred entries of a
/// megabyte rather than one of 50 MB: each is replicated, applied and acknowledged on
/// its own, well under the Raft proposal cap (`swarm_raft::MAX_PROPOSAL_BYTES`).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Splits tasks into batches of at most [`MAX_BATCH_TASKS`] tasks and about
/// [`MAX_BATCH_BYTES`] bytes, in order. A single task larger than the byte budget gets a
/// batch of its own.
pub fn task_batches(tasks: Vec<Task>) -> Vec<Vec<Task>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for task in tasks {
        let size = serde_json::to_vec(&task).map(|b| b.len()).unwrap_or(0);
        if !current.is_empty()
            && (current.len() >= MAX_BATCH_TASKS || bytes + size > MAX_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(task);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
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

fn created(task: &Task) -> String {
    task.created_at.clone().unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn reconcile_service(
    state: &ClusterState,
    service_id: &str,
    service: &Service,
    now: OffsetDateTime,
    at: &str,
    new_id: &mut dyn FnMut() -> String,
    load: &mut Load,
    put: &mut BTreeMap<String, Task>,
    remove: &mut Vec<String>,
    wake_after: &mut Option<Duration>,
) {
    let spec = service.spec.clone().unwrap_or_default();
    // The template with the ingress network added when the service publishes ports.
    let template = state.task_spec_of(&spec);
    let name = spec.name.clone().unwrap_or_default();
    let mode = spec.mode.clone().unwrap_or_default();
    let global = mode.global.is_some();
    let replicas = if global {
        0
    } else {
        mode.replicated
            .as_ref()
            .and_then(|r| r.replicas)
            .unwrap_or(1)
            .max(0) as u64
    };

    // Group the service's tasks: by slot (replicated) or by node (global).
    let mut groups: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for task in state.tasks_of_service(service_id) {
        let key = if global {
            task.node_id.clone().unwrap_or_default()
        } else {
            task.slot.unwrap_or(0).to_string()
        };
        groups.entry(key).or_default().push(task);
    }
    for tasks in groups.values_mut() {
        tasks.sort_by_key(|t| created(t));
    }

    // Wanted groups.
    let wanted: Vec<String> = if global {
        state
            .nodes
            .iter()
            .filter(|(id, n)| {
                scheduler::is_eligible(n)
                    && template
                        .placement
                        .as_ref()
                        .and_then(|p| p.constraints.as_ref())
                        .is_none_or(|cs| cs.iter().all(|c| scheduler::constraint_holds(c, id, n)))
            })
            .map(|(id, _)| id.clone())
            .collect()
    } else {
        (1..=replicas).map(|s| s.to_string()).collect()
    };
    let wanted_set: HashSet<&String> = wanted.iter().collect();

    // Rolling updates: tasks whose spec is not the service's current template are
    // replaced, `parallelism` slots at a time (Docker's default: 1; 0 means all). A slot
    // counts as in flight while its up-to-date task has not reached RUNNING yet.
    let parallelism = spec
        .update_config
        .as_ref()
        .and_then(|u| u.parallelism)
        .unwrap_or(1);
    let update_limit = if parallelism <= 0 {
        usize::MAX
    } else {
        parallelism as usize
    };
    let mut updates_in_flight = state
        .tasks_of_service(service_id)
        .filter(|t| {
            scheduler::is_active(t)
                && t.spec.as_ref() == Some(&template)
                && state_of(t) < TaskState::RUNNING
        })
        .count();

    // Groups no longer wanted: retire every task in them.
    for (key, tasks) in &groups {
        if !wanted_set.contains(key) {
            for task in tasks {
                retire(state, task, at, put, remove);
            }
        }
    }

    for key in &wanted {
        let tasks = groups.get(key).cloned().unwrap_or_default();
        let mut ending = Ending::Missing;
        let mut outdated: Option<&Task> = None;
        for task in &tasks {
            let id = task.id.clone().unwrap_or_default();
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
                put.insert(id, t);
                if let Some(node) = &task.node_id {
                    load.remove(service_id, node);
                }
                ending = Ending::Exited(observed, task_time(task));
            } else if task.node_id.is_some() && !node_can_run(state, task) {
                let mut t = (*task).clone();
                t.desired_state = Some(TaskState::SHUTDOWN);
                put.insert(id, t);
                if let Some(node) = &task.node_id {
                    load.remove(service_id, node);
                }
                ending = Ending::Moved;
            } else if task.node_id.is_none() {
                // Pending: try to place it now.
                if let Ok(node) = scheduler::place(state, load, service_id, &template) {
                    load.add(service_id, &node);
                    let mut t = (*task).clone();
                    t.node_id = Some(node);
                    t.status = Some(status(
                        TaskState::ASSIGNED,
                        "scheduler assigned task to node",
                        at,
                    ));
                    put.insert(id, t);
                }
                ending = Ending::Active;
            } else {
                ending = Ending::Active;
                if task.spec.as_ref() != Some(&template) {
                    outdated = Some(task);
                }
            }
        }
        if let (Ending::Active, Some(old)) = (&ending, outdated) {
            if updates_in_flight < update_limit {
                let mut t = old.clone();
                t.desired_state = Some(TaskState::SHUTDOWN);
                put.insert(old.id.clone().unwrap_or_default(), t);
                if let Some(node) = &old.node_id {
                    load.remove(service_id, node);
                }
                ending = Ending::Moved;
                updates_in_flight += 1;
            }
        }

        let replace = match ending {
            Ending::Active => false,
            Ending::Missing | Ending::Moved => true,
            Ending::Exited(ended, when) => {
                let attempts = tasks.len() as u64;
                let limit = max_attempts(&template);
                if !restart_allowed(&template, ended) || (limit > 0 && attempts > limit) {
                    false
                } else {
                    let delay = restart_delay(&template);
                    let due = when.map(|w| w + delay).unwrap_or(now);
                    if due <= now {
                        true
                    } else {
                        let left: Duration = (due - now).try_into().unwrap_or(delay);
                        *wake_after = Some(wake_after.map_or(left, |w| w.min(left)));
                        false
                    }
                }
            }
        };
        if replace {
            let task = new_task(
                state, service_id, &name, &template, key, global, now, new_id, load,
            );
            put.insert(task.id.clone().unwrap_or_default(), task);
        }

        // History: keep the newest TASK_HISTORY_LIMIT tasks of the group.
        let retired: Vec<&&Task> = tasks
            .iter()
            .filter(|t| {
                let id = t.id.clone().unwrap_or_default();
                let desired = put.get(&id).map(desired_of).unwrap_or(desired_of(t));
                desired > TaskState::RUNNING
            })
            .collect();
        let total = tasks.len() + usize::from(replace);
        if total > TASK_HISTORY_LIMIT {
            let excess = total - TASK_HISTORY_LIMIT;
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
    key: &str,
    global: bool,
    now: OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
    load: &mut Load,
) -> Task {
    let at = rfc3339(now);
    let placed = if global {
        Ok(key.to_string())
    } else {
        scheduler::place(state, load, service_id, template)
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
        slot: if global { None } else { key.parse().ok() },
        node_id,
        status: Some(task_status),
        desired_state: Some(TaskState::RUNNING),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
