//! The tasks of the state: a persistent map by task id, with an index of each node's
//! tasks kept beside it.
//!
//! Persistent (imbl): Raft applies an entry to a state that readers (API requests, long
//! polls, the leader's pass) may still hold, which makes it copy the state first. With a
//! persistent map that copy shares every unchanged task, so it costs O(1), and changing a
//! task costs O(log n), however many tasks there are.
//!
//! Indexed by node: a node's long poll gathers its tasks after every change to them, and
//! with 1,000 nodes a scan of every task for each would cost 1,000 × all tasks per wave
//! of changes. Only this type changes the map, so the index cannot drift: tasks move
//! between nodes only through [`Tasks::insert`], [`Tasks::remove`] and [`Tasks::modify`].
//!
//! Tallied by service: `docker service ls` shows every service's running and desired
//! tasks, and counting them by a scan of every task cost tens of milliseconds per request
//! at 100,000 tasks. The counts are kept as tasks change, the same way as the index.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bollard_stubs::models::{Task, TaskState};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Default, PartialEq)]
pub struct Tasks {
    /// Each task behind its own pointer: the map's nodes hold 64 entries, which a change
    /// copies while an older state shares them, and a task is almost 2 KB inline.
    all: OrdMap<String, Arc<Task>>,
    /// Node id → ids of the tasks assigned to it. Derived from `all`, never serialised.
    by_node: OrdMap<String, OrdSet<String>>,
    /// Service id → counts of its tasks. Derived from `all`, never serialised.
    by_service: OrdMap<String, ServiceTally>,
}

/// Counts of one service's tasks, as `docker service ls` needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTally {
    /// Tasks whose desired state is at most Running: those meant to run.
    pub active: u64,
    /// Of the active tasks, those placed on a node.
    pub placed: u64,
    /// Tasks that completed (jobs count them).
    pub completed: u64,
    /// Of the active tasks, those Running, by node: a task on a node that is down is not
    /// counted as running, and nodes go down without any task changing.
    pub running_by_node: OrdMap<String, u64>,
}

/// What one task adds to its service's tally: the service, whether it is active, placed
/// and completed, and the node it runs on if it is active and Running.
type Share = (String, bool, bool, bool, Option<String>);

fn share(task: &Task) -> Option<Share> {
    let service = task.service_id.clone()?;
    let state = crate::state_of(task);
    let active = crate::desired_of(task) <= TaskState::RUNNING;
    let running_on = task
        .node_id
        .clone()
        .filter(|_| active && state == TaskState::RUNNING);
    let placed = active && task.node_id.is_some();
    Some((
        service,
        active,
        placed,
        state == TaskState::COMPLETE,
        running_on,
    ))
}

impl Deref for Tasks {
    type Target = OrdMap<String, Arc<Task>>;

    fn deref(&self) -> &Self::Target {
        &self.all
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.all.iter()).finish()
    }
}

impl Tasks {
    /// Adds or replaces a task; returns the one it replaced.
    pub fn insert(&mut self, id: String, task: Task) -> Option<Arc<Task>> {
        self.index(&id, task.node_id.as_deref());
        tally(&mut self.by_service, share(&task), 1);
        let old = self.all.insert(id.clone(), Arc::new(task));
        if let Some(old) = &old {
            tally(&mut self.by_service, share(old), -1);
        }
        if let Some(old_node) = old.as_ref().and_then(|t| t.node_id.as_deref()) {
            if self.all.get(&id).and_then(|t| t.node_id.as_deref()) != Some(old_node) {
                self.unindex(&id, old_node);
            }
        }
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<Task>> {
        let old = self.all.remove(id)?;
        if let Some(node) = old.node_id.as_deref() {
            self.unindex(id, node);
        }
        tally(&mut self.by_service, share(&old), -1);
        Some(old)
    }

    /// Changes one task in place; `None` when there is no such task. A change of its node
    /// is followed by the index.
    pub fn modify<R>(&mut self, id: &str, change: impl FnOnce(&mut Task) -> R) -> Option<R> {
        // Copies the task alone if an older state still shares it.
        let task = Arc::make_mut(self.all.get_mut(id)?);
        let before = task.node_id.clone();
        let share_before = share(task);
        let out = change(task);
        let after = task.node_id.clone();
        let share_after = share(task);
        if share_before != share_after {
            tally(&mut self.by_service, share_before, -1);
            tally(&mut self.by_service, share_after, 1);
        }
        if before != after {
            if let Some(node) = before.as_deref() {
                self.unindex(id, node);
            }
            self.index(id, after.as_deref());
        }
        Some(out)
    }

    pub fn clear(&mut self) {
        self.all.clear();
        self.by_node.clear();
        self.by_service.clear();
    }

    /// The counts of a service's tasks (all zero for a service without tasks).
    pub fn tally(&self, service_id: &str) -> ServiceTally {
        self.by_service.get(service_id).cloned().unwrap_or_default()
    }

    /// The tasks assigned to `node_id`, by task id.
    pub fn on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.by_node
            .get(node_id)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.all.get(id).map(|t| &**t))
    }

    /// How many tasks are assigned to `node_id`.
    pub fn count_on_node(&self, node_id: &str) -> usize {
        self.by_node.get(node_id).map_or(0, OrdSet::len)
    }

    fn index(&mut self, id: &str, node: Option<&str>) {
        if let Some(node) = node {
            self.by_node
                .entry(node.to_string())
                .or_default()
                .insert(id.to_string());
        }
    }

    fn unindex(&mut self, id: &str, node: &str) {
        if let Some(ids) = self.by_node.get_mut(node) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_node.remove(node);
            }
        }
    }
}

/// Adds (`sign` 1) or takes back (-1) a task's share of its service's tally.
fn tally(by_service: &mut OrdMap<String, ServiceTally>, share: Option<Share>, sign: i64) {
    let Some((service, active, placed, completed, running_on)) = share else {
        return;
    };
    let add = |n: &mut u64, yes: bool| {
        if yes {
            *n = n.saturating_add_signed(sign);
        }
    };
    let t = by_service.entry(service.clone()).or_default();
    add(&mut t.active, active);
    add(&mut t.placed, placed);
    add(&mut t.completed, completed);
    if let Some(node) = running_on {
        let n = t.running_by_node.entry(node.clone()).or_default();
        add(n, true);
        if *n == 0 {
            t.running_by_node.remove(&node);
        }
    }
    if *t == ServiceTally::default() {
        by_service.remove(&service);
    }
}

impl FromIterator<(String, Task)> for Tasks {
    fn from_iter<I: IntoIterator<Item = (String, Task)>>(iter: I) -> Self {
        let mut tasks = Tasks::default();
        for (id, task) in iter {
            tasks.insert(id, task);
        }
        tasks
    }
}

impl<'a> IntoIterator for &'a Tasks {
    type Item = (&'a String, &'a Arc<Task>);
    type IntoIter = imbl::ordmap::Iter<'a, String, Arc<Task>, imbl::shared_ptr::DefaultSharedPtr>;

    fn into_iter(self) -> Self::IntoIter {
        self.all.iter()
    }
}

/// Serialised as the tasks alone, in the compact form of `task_batch` (the index and the
/// tallies are rebuilt when read).
impl Serialize for Tasks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Each distinct spec once (see `task_batch`): in a snapshot of 100,000 tasks
        // of one service the spec was most of the bytes.
        crate::task_batch::serialize_all(self.all.values().map(|t| &**t), serializer)
    }
}

impl<'de> Deserialize<'de> for Tasks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Snapshots written before the compact form hold a map of id to task.
        Ok(crate::task_batch::deserialize_any(deserializer)?
            .into_iter()
            .map(|t| (t.id.clone().unwrap_or_default(), t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, node: Option<&str>) -> Task {
        Task {
            id: Some(id.into()),
            node_id: node.map(str::to_string),
            ..Default::default()
        }
    }

    fn ids<'a>(tasks: &'a Tasks, node: &str) -> Vec<&'a str> {
        tasks
            .on_node(node)
            .map(|t| t.id.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn the_node_index_follows_every_change() {
        let mut t = Tasks::default();
        t.insert("a".into(), task("a", Some("n1")));
        t.insert("b".into(), task("b", Some("n1")));
        t.insert("c".into(), task("c", None));
        assert_eq!(ids(&t, "n1"), ["a", "b"]);
        // Moved by a replacement.
        t.insert("b".into(), task("b", Some("n2")));
        assert_eq!(ids(&t, "n1"), ["a"]);
        assert_eq!(ids(&t, "n2"), ["b"]);
        // Moved in place, then unassigned.
        t.modify("c", |c| c.node_id = Some("n2".into()));
        assert_eq!(ids(&t, "n2"), ["b", "c"]);
        t.modify("b", |b| b.node_id = None);
        assert_eq!(ids(&t, "n2"), ["c"]);
        assert_eq!(t.modify("zz", |_| ()), None);
        t.remove("a");
        assert!(ids(&t, "n1").is_empty());
        assert_eq!(t.count_on_node("n1"), 0);
        assert!(!t.by_node.contains_key("n1"), "empty sets are dropped");
        assert_eq!(t.count_on_node("n2"), 1);
    }

    #[test]
    fn a_read_back_map_has_the_same_index() {
        let t: Tasks = [
            ("a".to_string(), task("a", Some("n1"))),
            ("b".to_string(), task("b", Some("n2"))),
            ("c".to_string(), task("c", None)),
        ]
        .into_iter()
        .collect();
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.starts_with("{\"Specs\":"), "the compact form: {text}");
        let back: Tasks = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
        assert_eq!(ids(&back, "n2"), ["b"]);
        // A snapshot written before holds a map of id to task.
        let old = serde_json::to_string(&t.all).unwrap();
        assert!(old.starts_with("{\"a\":"), "{old}");
        let back: Tasks = serde_json::from_str(&old).unwrap();
        assert_eq!(back, t);
        assert_eq!(ids(&back, "n1"), ["a"]);
    }

    /// The tallies recounted from every task, as the kept ones must be.
    fn recount(t: &Tasks) -> OrdMap<String, ServiceTally> {
        let mut by_service = OrdMap::new();
        for task in t.values() {
            tally(&mut by_service, share(task), 1);
        }
        by_service
    }

    #[test]
    fn service_tallies_follow_every_change() {
        use bollard_stubs::models::TaskStatus;
        let with = |id: &str, service: &str, node: Option<&str>, state, desired| Task {
            service_id: Some(service.into()),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            desired_state: Some(desired),
            ..task(id, node)
        };
        let (run, done, shut) = (TaskState::RUNNING, TaskState::COMPLETE, TaskState::SHUTDOWN);
        let mut t = Tasks::default();
        t.insert("a".into(), with("a", "s1", Some("n1"), run, run));
        t.insert(
            "b".into(),
            with("b", "s1", Some("n2"), TaskState::ASSIGNED, run),
        );
        t.insert("c".into(), with("c", "s2", Some("n1"), done, shut));
        t.insert("d".into(), task("d", Some("n1"))); // no service
        assert_eq!(t.by_service, recount(&t));
        let s1 = t.tally("s1");
        assert_eq!((s1.active, s1.placed, s1.completed), (2, 2, 0));
        assert_eq!(s1.running_by_node.get("n1"), Some(&1));
        assert_eq!(t.tally("s2").completed, 1);
        assert_eq!(t.tally("s2").active, 0);

        // b starts running, a moves to n2, a is then told to stop.
        t.modify("b", |b| b.status.as_mut().unwrap().state = Some(run));
        assert_eq!(t.tally("s1").running_by_node.get("n2"), Some(&1));
        t.modify("a", |a| a.node_id = Some("n2".into()));
        assert_eq!(t.tally("s1").running_by_node.get("n2"), Some(&2));
        assert_eq!(
            t.tally("s1").running_by_node.get("n1"),
            None,
            "zeros dropped"
        );
        t.modify("a", |a| a.desired_state = Some(shut));
        assert_eq!(t.by_service, recount(&t));
        assert_eq!(t.tally("s1").active, 1);
        // Replaced, then removed: the service without tasks has no tally left.
        t.insert("b".into(), with("b", "s2", None, run, run));
        assert_eq!(t.by_service, recount(&t));
        for id in ["a", "b", "c", "d"] {
            t.remove(id);
        }
        assert!(t.by_service.is_empty());
        assert_eq!(t.tally("s1"), ServiceTally::default());
    }
}
