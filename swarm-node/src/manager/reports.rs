//! Task status reports gathered on the leader and written together.
//!
//! Each node reports its tasks' states in batches of its own; written one entry per
//! report, 1,000 nodes moving 100,000 tasks through four states make tens of thousands
//! of Raft entries, each encoded, encrypted, fsynced and replicated on its own. The
//! leader instead queues the reports that arrive within [`WINDOW`] and proposes them as
//! `Command::ReportTaskStatuses` entries of at most [`MAX_UPDATES`] updates, as
//! SwarmKit's dispatcher batches status writes. A report is answered once its entry is
//! committed, as before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarm_state::proto::TaskStatusReport;
use swarm_state::{ClusterState, Command};
use tokio::sync::{oneshot, Notify};

use super::Manager;
use crate::api::internal::status_changes;
use crate::error::ApiError;

/// How long the leader waits for more reports once one arrived.
pub const WINDOW: Duration = Duration::from_millis(10);
/// The most updates in one entry (as task writes: about a megabyte at most).
pub const MAX_UPDATES: usize = super::orchestrator::MAX_BATCH_TASKS;
/// How long a report waits for its entry before its node is told to try again.
const WAIT: Duration = Duration::from_secs(15);

type Done = oneshot::Sender<Result<(), String>>;

/// The reports waiting for the leader's next write.
#[derive(Debug, Default)]
pub struct ReportQueue {
    pending: Mutex<Vec<(TaskStatusReport, Done)>>,
    wake: Notify,
}

impl ReportQueue {
    /// Queues a report (already filtered against the leader's state) and waits until
    /// the entry holding it is committed.
    pub async fn submit(&self, report: TaskStatusReport) -> Result<(), ApiError> {
        let (done, answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((report, done));
        self.wake.notify_one();
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(ApiError::Unavailable(message)),
            // The leader stepped down with the report queued, or took too long.
            Ok(Err(_)) | Err(_) => Err(ApiError::Unavailable(
                "the task status report was not written: send it again".into(),
            )),
        }
    }

    fn take(&self) -> Vec<(TaskStatusReport, Done)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The entries that write `reports`: each report keeps only what changes the state
/// (`status_changes`), and entries hold at most [`MAX_UPDATES`] updates (a report is
/// split when it alone is larger).
pub fn plan_entries(state: &ClusterState, reports: Vec<TaskStatusReport>) -> Vec<Command> {
    let mut entries = Vec::new();
    let mut current: Vec<TaskStatusReport> = Vec::new();
    let mut count = 0;
    for report in reports {
        let updates = status_changes(state, &report.node_id, report.updates);
        for chunk in updates.chunks(MAX_UPDATES) {
            if count + chunk.len() > MAX_UPDATES && !current.is_empty() {
                entries.push(Command::ReportTaskStatuses {
                    reports: std::mem::take(&mut current),
                });
                count = 0;
            }
            count += chunk.len();
            current.push(TaskStatusReport {
                node_id: report.node_id.clone(),
                updates: chunk.to_vec(),
            });
        }
    }
    if !current.is_empty() {
        entries.push(Command::ReportTaskStatuses { reports: current });
    }
    entries
}

/// Writes the queued reports while this manager leads. Reports left from an earlier
/// term are answered "try again" first.
pub async fn run(manager: Arc<Manager>) {
    for (_, done) in manager.reports.take() {
        let _ = done.send(Err("the leader changed: send the report again".into()));
    }
    while manager.raft.is_leader() {
        manager.reports.wake.notified().await;
        tokio::time::sleep(WINDOW).await;
        let batch = manager.reports.take();
        if batch.is_empty() {
            continue;
        }
        let (reports, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let entries = plan_entries(&manager.read(), reports);
        let mut outcome = Ok(());
        for entry in entries {
            if let Err(e) = manager.propose(entry).await {
                tracing::warn!(error = %e, "task status reports not written");
                outcome = Err(e.to_string());
            }
        }
        for done in waiting {
            let _ = done.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{Task, TaskState};
    use swarm_state::proto::TaskStatusUpdate;

    fn state_with(tasks: usize) -> ClusterState {
        let mut state = ClusterState::default();
        let tasks = (0..tasks)
            .map(|i| Task {
                id: Some(format!("t{i}")),
                node_id: Some(format!("n{}", i % 2)),
                ..Default::default()
            })
            .collect();
        assert_eq!(
            state
                .apply(
                    &Command::PutTasks {
                        tasks: std::sync::Arc::new(tasks)
                    },
                    1
                )
                .error,
            None
        );
        state
    }

    fn report(node: &str, ids: impl IntoIterator<Item = usize>) -> TaskStatusReport {
        TaskStatusReport {
            node_id: node.into(),
            updates: ids
                .into_iter()
                .map(|i| TaskStatusUpdate {
                    task_id: format!("t{i}"),
                    status: swarm_state::status(TaskState::RUNNING, "started", "t1"),
                })
                .collect(),
        }
    }

    fn sizes(entries: &[Command]) -> Vec<Vec<usize>> {
        entries
            .iter()
            .map(|c| match c {
                Command::ReportTaskStatuses { reports } => {
                    reports.iter().map(|r| r.updates.len()).collect()
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn reports_share_entries_of_bounded_size() {
        let state = state_with(4_000);
        // Two small reports share one entry; news only (t1 is n1's, not n0's).
        let entries = plan_entries(&state, vec![report("n0", [0, 2, 1]), report("n1", [1, 3])]);
        assert_eq!(sizes(&entries), vec![vec![2, 2]]);
        // A report of 1,500 updates is split; the next fills the second entry.
        let big = report("n0", (0..3_000).step_by(2));
        let entries = plan_entries(&state, vec![big, report("n1", [1, 3])]);
        assert_eq!(sizes(&entries), vec![vec![1_000], vec![500, 2]]);
        // Nothing new, nothing written.
        assert!(plan_entries(&state, vec![report("n1", [0])]).is_empty());
    }

    #[test]
    fn a_batched_entry_applies_as_the_reports_would() {
        let mut one = state_with(4);
        let mut each = one.clone();
        let reports = vec![report("n0", [0, 2]), report("n1", [1])];
        let entries = plan_entries(&one, reports.clone());
        for entry in &entries {
            assert_eq!(one.apply(entry, 2).error, None);
        }
        for r in reports {
            let command = Command::ReportTaskStatus {
                node_id: r.node_id,
                updates: r.updates,
            };
            assert_eq!(each.apply(&command, 2).error, None);
        }
        assert_eq!(one, each);
    }
}
