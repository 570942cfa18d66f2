//! How a `PutTasks` entry's tasks travel in the Raft log and in replication: each
//! distinct task spec once, the tasks without it.
//!
//! The orchestrator writes a service's new tasks in entries of up to 1,000, every one
//! carrying the same template. Sent as plain `Task`s, the spec was most of each entry's
//! bytes: written by every manager, encrypted, fsynced and sent to each follower, then
//! parsed again on apply. Here an entry holds `{"Specs": [..], "Tasks": [[i, task], ..]}`
//! where `i` indexes `Specs`; the tasks read back are the same `Task`s. A plain array of
//! tasks (the form written before) still reads, so an existing journal replays.

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::Serialize;
use std::sync::Arc;

use crate::models::{Task, TaskSpec};

/// `task` as the compact form writes it, its spec left out: what a batch's size is
/// counted with.
pub fn without_spec(task: &Task) -> impl Serialize + '_ {
    TaskWithoutSpec(task)
}

/// The compact form as written.
#[derive(Serialize)]
struct CompactRef<'a> {
    #[serde(rename = "Specs")]
    specs: Vec<&'a TaskSpec>,
    #[serde(rename = "Tasks")]
    tasks: Vec<(Option<usize>, TaskWithoutSpec<'a>)>,
}

/// A task serialized with its spec left out (`spec` is skipped when `None`).
struct TaskWithoutSpec<'a>(&'a Task);

impl Serialize for TaskWithoutSpec<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A shallow copy with the spec taken out costs the task's other fields once;
        // the spec, the large part, is not copied. Every field is named (no `..`), so a
        // field added to `Task` fails to compile here rather than being dropped.
        let t = self.0;
        Task {
            spec: None,
            id: t.id.clone(),
            version: t.version.clone(),
            created_at: t.created_at.clone(),
            updated_at: t.updated_at.clone(),
            name: t.name.clone(),
            labels: t.labels.clone(),
            service_id: t.service_id.clone(),
            slot: t.slot,
            node_id: t.node_id.clone(),
            assigned_generic_resources: t.assigned_generic_resources.clone(),
            status: t.status.clone(),
            desired_state: t.desired_state,
            job_iteration: t.job_iteration.clone(),
        }
        .serialize(s)
    }
}

/// The distinct specs met so far. Specs are compared only with those of the same
/// service (a service's tasks follow its current or previous spec), so a state of many
/// services costs a few comparisons per task, not one per distinct spec.
#[derive(Default)]
struct SpecTable<'a> {
    specs: Vec<&'a TaskSpec>,
    by_service: std::collections::HashMap<Option<&'a str>, Vec<usize>>,
}

impl<'a> SpecTable<'a> {
    fn index(&mut self, task: &'a Task) -> Option<usize> {
        let spec = task.spec.as_ref()?;
        let known = self
            .by_service
            .entry(task.service_id.as_deref())
            .or_default();
        // Tasks of one service come together: the newest spec is the usual match.
        if let Some(&i) = known.iter().rev().find(|&&i| self.specs[i] == spec) {
            return Some(i);
        }
        self.specs.push(spec);
        known.push(self.specs.len() - 1);
        Some(self.specs.len() - 1)
    }
}

/// Writes `tasks` in the compact form.
pub fn serialize_all<'a, S: Serializer>(
    tasks: impl Iterator<Item = &'a Task>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut table = SpecTable::default();
    let mut out = Vec::new();
    for task in tasks {
        out.push((table.index(task), TaskWithoutSpec(task)));
    }
    CompactRef {
        specs: table.specs,
        tasks: out,
    }
    .serialize(s)
}

/// Reads tasks in any form they were written in: the compact map, a plain array (a
/// `PutTasks` entry from before) or a map of id to task (a snapshot from before). The
/// form is told from the JSON itself, without buffering: a snapshot holds every task.
pub fn deserialize_any<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Task>, D::Error> {
    d.deserialize_any(TasksVisitor)
}

struct TasksVisitor;

impl<'de> Visitor<'de> for TasksVisitor {
    type Value = Vec<Task>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tasks: {\"Specs\", \"Tasks\"}, an array or a map of id to task")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tasks = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(task) = seq.next_element::<Task>()? {
            tasks.push(task);
        }
        Ok(tasks)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut specs: Vec<TaskSpec> = Vec::new();
        let mut indexed: Vec<(Option<usize>, Task)> = Vec::new();
        let mut by_id: Vec<Task> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Specs" => specs = map.next_value()?,
                "Tasks" => indexed = map.next_value()?,
                // Task ids are random 25-character strings, never these two words.
                _ => {
                    let mut task: Task = map.next_value()?;
                    task.id.get_or_insert(key);
                    by_id.push(task);
                }
            }
        }
        if !by_id.is_empty() && !indexed.is_empty() {
            return Err(serde::de::Error::custom(
                "a task batch mixes the compact form and a map of tasks",
            ));
        }
        let mut tasks = by_id;
        tasks.reserve(indexed.len());
        for (index, mut task) in indexed {
            if let Some(i) = index {
                let spec = specs.get(i).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "task spec {i} of {} in a task batch",
                        specs.len()
                    ))
                })?;
                task.spec = Some(spec.clone());
            }
            tasks.push(task);
        }
        Ok(tasks)
    }
}

/// `#[serde(with)]` for an `Arc<Vec<Task>>` field.
pub fn serialize<S: Serializer>(tasks: &Arc<Vec<Task>>, s: S) -> Result<S::Ok, S::Error> {
    serialize_all(tasks.iter(), s)
}

/// `#[serde(with)]` for an `Arc<Vec<Task>>` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<Task>>, D::Error> {
    deserialize_any(d).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{TaskSpecContainerSpec, TaskState, TaskStatus};
    use crate::Command;

    fn task(id: &str, image: Option<&str>) -> Task {
        Task {
            id: Some(id.into()),
            service_id: Some("svc".into()),
            slot: Some(1),
            node_id: Some("n1".into()),
            spec: image.map(|i| TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(i.into()),
                    args: Some(vec!["a".repeat(200)]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: Some(TaskState::ASSIGNED),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn round_trip(tasks: Vec<Task>) -> (Vec<Task>, usize) {
        let json = serde_json::to_vec(&Command::PutTasks {
            tasks: Arc::new(tasks),
        })
        .unwrap();
        match serde_json::from_slice(&json).unwrap() {
            Command::PutTasks { tasks } => (tasks.to_vec(), json.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tasks_read_back_as_written_with_each_spec_once() {
        let tasks: Vec<Task> = (0..100)
            .map(|i| task(&format!("t{i}"), Some(if i % 10 == 3 { "b" } else { "a" })))
            .chain([task("nospec", None)])
            .collect();
        let (back, bytes) = round_trip(tasks.clone());
        assert_eq!(back, tasks);
        let plain = serde_json::to_vec(&tasks).unwrap().len();
        // Two distinct specs of ~230 bytes, written once each instead of 100 times.
        assert!(bytes * 3 < plain, "{bytes} vs {plain}");
    }

    #[test]
    fn a_plain_array_of_tasks_still_reads() {
        let tasks = vec![task("t1", Some("a")), task("t2", None)];
        let json = serde_json::json!({ "PutTasks": { "tasks": tasks } });
        let back: Command = serde_json::from_value(json).unwrap();
        assert_eq!(
            back,
            Command::PutTasks {
                tasks: Arc::new(tasks)
            }
        );
    }

    #[test]
    fn a_spec_index_out_of_range_is_an_error() {
        let json = r#"{"PutTasks":{"tasks":{"Specs":[],"Tasks":[[0,{"ID":"t1"}]]}}}"#;
        let err = serde_json::from_str::<Command>(json).unwrap_err();
        assert!(err.to_string().contains("in a task batch"), "{err}");
    }
}
