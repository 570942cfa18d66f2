//! The executor's decisions, as a pure function of what the managers want and what the
//! engine has.
//!
//! **Architecture Invariant:** [`plan`] does no I/O and reads no clock. It moves every
//! task at most one step along SwarmKit's state machine per call; the executor calls it
//! again after each step, so every intermediate state is visible in the reports.
//!
//! Rules that keep the worker safe:
//! - A container is found by its task id label, so a task is adopted after a restart and
//!   never gets a second container.
//! - A container that has run is never started again: the managers replace a task that
//!   stopped with a new task.
//! - Only the managers' desired state stops a container (or the task disappearing from
//!   the assignments, or the task being over).
//! - A task with overlay networks is prepared only once this node's data plane has applied
//!   a network map containing it (it is in the ready map): its DNS names, VIPs and
//!   forwarding entries exist before the application runs. Until then it waits in
//!   PREPARING.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use swarm_state::models::{Task, TaskState};
use swarm_state::{desired_of, is_terminal, state_of};

use crate::runtime::{ContainerSpec, Health, RunState, TaskContainer, TaskNetwork};
use crate::spec::{attach, container_spec, stop_grace, task_networks};

/// The tasks whose overlay attachments are in place on this node, by task id, with the
/// attachments in the service's order. Published by the network agent.
pub type ReadyNetworks = BTreeMap<String, Vec<TaskNetwork>>;

/// A new observed state for a task, without its timestamp (the executor adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub state: TaskState,
    pub message: String,
    pub err: Option<String>,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
}

impl StatusChange {
    pub fn new(state: TaskState, message: &str) -> Self {
        StatusChange {
            state,
            message: message.to_string(),
            err: None,
            container_id: None,
            exit_code: None,
        }
    }

    pub fn with_err(mut self, err: impl Into<String>) -> Self {
        self.err = Some(err.into());
        self
    }

    pub fn with_container(mut self, container_id: Option<&str>) -> Self {
        self.container_id = container_id.map(str::to_string);
        self
    }

    pub fn with_exit_code(mut self, code: Option<i64>) -> Self {
        self.exit_code = code;
        self
    }
}

/// One step for the executor to take.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record and report a new observed state. No engine work.
    Report {
        task_id: String,
        change: StatusChange,
    },
    /// Make sure the image is present and create the (stopped) container.
    Prepare {
        task_id: String,
        spec: Box<ContainerSpec>,
    },
    Start {
        task_id: String,
        container_id: String,
    },
    /// Stop with the stop signal, kill after `grace` (`None`: the container's own).
    Stop {
        task_id: String,
        container_id: String,
        grace: Option<Duration>,
    },
    Remove {
        task_id: String,
        container_id: String,
    },
}

impl Action {
    pub fn task_id(&self) -> &str {
        match self {
            Action::Report { task_id, .. }
            | Action::Prepare { task_id, .. }
            | Action::Start { task_id, .. }
            | Action::Stop { task_id, .. }
            | Action::Remove { task_id, .. } => task_id,
        }
    }
}

/// Decides the next step for every task assigned to this node and for every container
/// of this node. `desired` holds the tasks with the latest observed status known (the
/// managers' or this worker's own, whichever is further on); `actual` the containers;
/// `networks` the tasks whose networks are ready.
pub fn plan<T: std::borrow::Borrow<Task>>(
    desired: &[T],
    actual: &[TaskContainer],
    networks: &ReadyNetworks,
) -> Vec<Action> {
    let mut by_task: HashMap<&str, Vec<&TaskContainer>> = HashMap::new();
    for c in actual {
        by_task.entry(c.task_id.as_str()).or_default().push(c);
    }
    let mut actions = Vec::new();
    for task in desired {
        let task = task.borrow();
        let Some(id) = task.id.as_deref().filter(|id| !id.is_empty()) else {
            continue;
        };
        let container = by_task.remove(id).and_then(|cs| primary(&cs));
        let ready = networks.get(id).map(Vec::as_slice);
        if let Some(action) = plan_task(id, task, container, ready) {
            actions.push(action);
        }
    }
    // Containers whose task is no longer assigned: stop, then remove.
    let mut orphans: Vec<&TaskContainer> = by_task.into_values().flatten().collect();
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    for c in orphans {
        let (task_id, container_id) = (c.task_id.clone(), c.id.clone());
        match c.state {
            RunState::Running => actions.push(Action::Stop {
                task_id,
                container_id,
                grace: None,
            }),
            RunState::Created | RunState::Exited { .. } => actions.push(Action::Remove {
                task_id,
                container_id,
            }),
            RunState::Removing => {}
        }
    }
    actions
}

/// The container that stands for the task. Names contain the task id, so the engine
/// allows only one; should there be more, the one that is furthest along is used.
fn primary<'a>(cs: &[&'a TaskContainer]) -> Option<&'a TaskContainer> {
    let rank = |c: &TaskContainer| match c.state {
        RunState::Running => 0,
        RunState::Exited { .. } => 1,
        RunState::Created => 2,
        RunState::Removing => 3,
    };
    cs.iter().copied().min_by_key(|c| rank(c))
}

fn exit_change(c: &TaskContainer, code: i64, error: &Option<String>) -> StatusChange {
    let cid = Some(c.id.as_str());
    match error.as_deref().filter(|e| !e.is_empty()) {
        Some(e) => StatusChange::new(TaskState::FAILED, "failed")
            .with_err(e)
            .with_container(cid)
            .with_exit_code(Some(code)),
        None if code == 0 => StatusChange::new(TaskState::COMPLETE, "finished")
            .with_container(cid)
            .with_exit_code(Some(0)),
        None => StatusChange::new(TaskState::FAILED, "failed")
            .with_err(format!("task: non-zero exit ({code})"))
            .with_container(cid)
            .with_exit_code(Some(code)),
    }
}

fn plan_task(
    id: &str,
    task: &Task,
    container: Option<&TaskContainer>,
    networks: Option<&[TaskNetwork]>,
) -> Option<Action> {
    let observed = state_of(task);
    let desired = desired_of(task);
    let report = |change: StatusChange| {
        Some(Action::Report {
            task_id: id.to_string(),
            change,
        })
    };
    let stop = |c: &TaskContainer| {
        Some(Action::Stop {
            task_id: id.to_string(),
            container_id: c.id.clone(),
            grace: Some(stop_grace(task)),
        })
    };
    let cid = container.map(|c| c.id.as_str());

    // Over: nothing runs again. A container still running (e.g. the task was orphaned
    // while its node was away) is stopped; its remains go when the task is removed.
    if is_terminal(observed) {
        return match container {
            Some(c) if c.state == RunState::Running => stop(c),
            Some(c) if desired >= TaskState::REMOVE && c.state != RunState::Removing => {
                Some(Action::Remove {
                    task_id: id.to_string(),
                    container_id: c.id.clone(),
                })
            }
            _ => None,
        };
    }

    // The managers want it stopped.
    if desired >= TaskState::SHUTDOWN {
        return match container.map(|c| &c.state) {
            Some(RunState::Running) => stop(container?),
            Some(RunState::Removing) => None,
            Some(RunState::Exited { code, .. }) => report(
                StatusChange::new(TaskState::SHUTDOWN, "shutdown")
                    .with_container(cid)
                    .with_exit_code(Some(*code)),
            ),
            Some(RunState::Created) | None => {
                report(StatusChange::new(TaskState::SHUTDOWN, "shutdown").with_container(cid))
            }
        };
    }

    // Not to be prepared yet.
    if desired < TaskState::READY {
        return None;
    }
    let run = desired > TaskState::READY;

    match container {
        Some(c) => match &c.state {
            // A health check decides when a task counts as running, and ends it when it
            // fails, as Docker's executor does; the terminal state then stops the container.
            RunState::Running if c.health == Health::Unhealthy => report(
                StatusChange::new(TaskState::FAILED, "failed")
                    .with_err(UNHEALTHY)
                    .with_container(cid),
            ),
            RunState::Running if c.health == Health::Starting => {
                if observed < TaskState::STARTING {
                    report(StatusChange::new(TaskState::STARTING, "starting").with_container(cid))
                } else {
                    None
                }
            }
            RunState::Running if observed < TaskState::RUNNING => {
                report(StatusChange::new(TaskState::RUNNING, "started").with_container(cid))
            }
            RunState::Running | RunState::Removing => None,
            RunState::Exited { code, error } => report(exit_change(c, *code, error)),
            RunState::Created if observed >= TaskState::RUNNING => report(
                StatusChange::new(TaskState::FAILED, "failed")
                    .with_err("task: container is not running")
                    .with_container(cid),
            ),
            RunState::Created if observed < TaskState::READY => {
                report(StatusChange::new(TaskState::READY, "prepared").with_container(cid))
            }
            RunState::Created if run && observed == TaskState::READY => {
                report(StatusChange::new(TaskState::STARTING, "starting").with_container(cid))
            }
            RunState::Created if run => Some(Action::Start {
                task_id: id.to_string(),
                container_id: c.id.clone(),
            }),
            RunState::Created => None,
        },
        None if observed < TaskState::ACCEPTED => {
            report(StatusChange::new(TaskState::ACCEPTED, "accepted"))
        }
        None if observed == TaskState::ACCEPTED => {
            report(StatusChange::new(TaskState::PREPARING, "preparing"))
        }
        // Preparing, or prepared but the container has gone before it ever ran: create it.
        None if observed < TaskState::RUNNING => match container_spec(task) {
            Ok(mut spec) => {
                let networks = networks.filter(|n| !n.is_empty());
                if networks.is_none() && !task_networks(task).is_empty() {
                    // Its networks are not in place on this node yet.
                    return None;
                }
                attach(&mut spec, networks.unwrap_or_default());
                Some(Action::Prepare {
                    task_id: id.to_string(),
                    spec: Box::new(spec),
                })
            }
            Err(e) => {
                report(StatusChange::new(TaskState::REJECTED, "rejected").with_err(e.to_string()))
            }
        },
        None => report(
            StatusChange::new(TaskState::FAILED, "failed").with_err("task: container was removed"),
        ),
    }
}

/// The task error of a container whose health check failed, in Docker's words.
pub const UNHEALTHY: &str = "dockerexec: unhealthy container";

#[cfg(test)]
mod tests;
