//! The replicated state machine: [`ClusterState`] folded over the committed log.
//!
//! The state lives in memory behind an `Arc` and is changed copy-on-write, so readers
//! hold a consistent version without locks while the next batch is applied. Only
//! snapshots touch the disk (`snapshot.json`); a restart loads the snapshot and Raft
//! replays the log that follows it.

use std::fmt::Debug;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use swarm_state::{ClusterState, CommandResult};
use tokio::sync::watch;

use crate::fsio;
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use crate::TypeConfig;

const SNAPSHOT: &str = "snapshot.json";

/// The snapshot file, and the bytes a leader sends to a follower that lags too far.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    state: ClusterState,
}

#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    meta: &'a SnapshotMeta,
    state: &'a ClusterState,
}

struct Applied {
    state: Arc<ClusterState>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Cheap to clone; Raft gets one clone to apply with and one per snapshot build.
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    applied: Mutex<Applied>,
    /// Held across the file write so that an older snapshot never replaces a newer one.
    snapshot: tokio::sync::Mutex<Option<StoredSnapshot>>,
    snapshot_seq: AtomicU64,
    published: watch::Sender<Arc<ClusterState>>,
}

impl Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn sm_error(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, e)
}

fn snapshot_error(meta: Option<&SnapshotMeta>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e)
}

impl StateMachineStore {
    /// Loads `dir/snapshot.json` if there is one.
    pub(crate) async fn open(dir: &Path) -> Result<StateMachineStore, StorageError> {
        let d = dir.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let Some(data) = fsio::read_optional(&d, SNAPSHOT)? else {
                return Ok(None);
            };
            let file: SnapshotFile = serde_json::from_slice(&data).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", d.join(SNAPSHOT).display()),
                )
            })?;
            Ok(Some((file, data)))
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Read, io::Error::other(e)))?
        .map_err(|e| snapshot_error(None, ErrorVerb::Read, e))?;

        let (applied, snapshot) = match loaded {
            Some((file, data)) => (
                Applied {
                    state: Arc::new(file.state),
                    last_applied: file.meta.last_log_id,
                    membership: file.meta.last_membership.clone(),
                },
                Some(StoredSnapshot {
                    meta: file.meta,
                    data,
                }),
            ),
            None => (
                Applied {
                    state: Arc::default(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                },
                None,
            ),
        };
        let (published, _) = watch::channel(applied.state.clone());
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                applied: Mutex::new(applied),
                snapshot: tokio::sync::Mutex::new(snapshot),
                snapshot_seq: AtomicU64::new(0),
                published,
            }),
        })
    }

    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.shared
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The latest applied state.
    pub(crate) fn state(&self) -> Arc<ClusterState> {
        self.shared.published.borrow().clone()
    }

    /// A receiver that is notified after every batch that changed the state.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.published.subscribe()
    }

    /// Persists a snapshot and makes it the current one, unless a newer one is already
    /// current (a snapshot installed from the leader while this one was being built).
    async fn store_snapshot(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let mut current = self.shared.snapshot.lock().await;
        if let Some(cur) = current.as_ref() {
            if cur.meta.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        let dir = self.shared.dir.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            fsio::write_atomic(&dir, SNAPSHOT, &data).map(|_| (meta, data))
        })
        .await
        .map_err(|e| snapshot_error(None, ErrorVerb::Write, io::Error::other(e)))?
        .map_err(|e| snapshot_error(None, ErrorVerb::Write, e))?;
        *current = Some(StoredSnapshot { meta, data });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (state, meta) = {
            let a = self.applied();
            let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match a.last_applied {
                Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
                None => format!("--{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id,
            };
            (a.state.clone(), meta)
        };
        let (meta, data) = tokio::task::spawn_blocking(move || {
            serde_json::to_vec(&SnapshotFileRef {
                meta: &meta,
                state: &state,
            })
            .map(|data| (meta, data))
        })
        .await
        .map_err(|e| snapshot_error(None, ErrorVerb::Write, io::Error::other(e)))?
        .map_err(|e| snapshot_error(None, ErrorVerb::Write, io::Error::other(e)))?;

        self.store_snapshot(meta.clone(), data.clone()).await?;
        tracing::info!(snapshot = %meta, "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.applied();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut changed = false;
        let state = {
            let mut a = self.applied();
            for entry in entries {
                let index = entry.log_id.index;
                a.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Normal(cmd) => {
                        changed = true;
                        // Clones the state at most once per batch: only while a reader
                        // still holds the previous version.
                        Arc::make_mut(&mut a.state).apply(&cmd, index)
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult { index, error: None }
                    }
                    EntryPayload::Blank => CommandResult { index, error: None },
                };
                results.push(result);
            }
            a.state.clone()
        };
        if changed {
            self.shared.published.send_replace(state);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let (file, data) = tokio::task::spawn_blocking(move || {
            serde_json::from_slice::<SnapshotFile>(&data).map(|f| (f, data))
        })
        .await
        .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Read, io::Error::other(e)))?
        .map_err(|e| {
            snapshot_error(
                Some(meta),
                ErrorVerb::Read,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;

        // On disk first: once the state machine moves past the log, Raft purges the log
        // up to the snapshot, and a restart must then find the snapshot.
        self.store_snapshot(meta.clone(), data).await?;
        let state = Arc::new(file.state);
        {
            let mut a = self.applied();
            a.state = state.clone();
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        self.shared.published.send_replace(state);
        tracing::info!(snapshot = %meta, "installed raft snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.shared.snapshot.lock().await;
        Ok(current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};
    use swarm_state::models::{Service, ServiceSpec};
    use swarm_state::Command;

    use super::*;
    use crate::MemberNode;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    pub(crate) fn create_service(id: &str) -> Command {
        Command::CreateService {
            service: Box::new(Service {
                id: Some(id.into()),
                spec: Some(ServiceSpec {
                    name: Some(format!("svc-{id}")),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn apply_answers_every_entry_and_publishes_once_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::open(dir.path()).await.unwrap();
        let mut rx = sm.subscribe();
        let membership = Membership::new(
            vec![[1u64].into()],
            [(1u64, MemberNode::default())]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        let res = sm
            .apply([
                Entry {
                    log_id: log_id(1),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(2),
                    payload: EntryPayload::Membership(membership),
                },
                Entry {
                    log_id: log_id(3),
                    payload: EntryPayload::Normal(create_service("a")),
                },
                Entry {
                    log_id: log_id(4),
                    payload: EntryPayload::Normal(create_service("a")),
                },
            ])
            .await
            .unwrap();
        assert_eq!(res.len(), 4);
        assert_eq!(
            res.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(res[2].error.is_none());
        assert!(res[3].error.is_some(), "duplicate service must be refused");
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().services.len(), 1);
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(4)));
        assert_eq!(*membership.log_id(), Some(log_id(2)));
    }

    #[tokio::test]
    async fn a_snapshot_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = StateMachineStore::open(dir.path()).await.unwrap();
            sm.apply([Entry {
                log_id: log_id(1),
                payload: EntryPayload::Normal(create_service("a")),
            }])
            .await
            .unwrap();
            let snap = sm.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id, Some(log_id(1)));
        }
        let mut sm = StateMachineStore::open(dir.path()).await.unwrap();
        assert_eq!(sm.state().services.len(), 1);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1)));
    }
}
