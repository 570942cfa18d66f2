//! The replicated state machine: [`ClusterState`] folded over the committed log.
//!
//! The state lives in memory behind an `Arc` and is changed copy-on-write, so readers
//! hold a consistent version without locks while the next batch is applied. Only
//! snapshots touch the disk (`snapshot.json`, sealed whole with the data key); a restart
//! loads the snapshot and Raft replays the log that follows it.
//!
//! In memory, and on the wire to a follower (mutual TLS), a snapshot is plain JSON: each
//! manager seals it with its own key when it writes it. A plain-text `snapshot.json` from
//! an older version is read and rewritten sealed at open.

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

use crate::at_rest::{self, DataKey};
use crate::fsio;
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use crate::TypeConfig;

pub(crate) const SNAPSHOT: &str = "snapshot.json";

/// The associated data of the sealed snapshot.
const SNAPSHOT_CONTEXT: &[u8] = b"snapshot";

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
    key: Arc<DataKey>,
    applied: Mutex<Applied>,
    /// Held across the file write so that an older snapshot never replaces a newer one.
    snapshot: tokio::sync::Mutex<Option<StoredSnapshot>>,
    snapshot_seq: AtomicU64,
    /// The size of the current snapshot (see [`StateMachineStore::snapshot_size`]).
    snapshot_size: Arc<AtomicU64>,
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
    /// Loads `dir/snapshot.json` if there is one, sealed with `key`.
    pub(crate) async fn open(
        dir: &Path,
        key: Arc<DataKey>,
    ) -> Result<StateMachineStore, StorageError> {
        let d = dir.to_path_buf();
        let k = key.clone();
        let loaded = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let Some(stored) = fsio::read_optional(&d, SNAPSHOT)? else {
                return Ok(None);
            };
            let path = d.join(SNAPSHOT);
            let invalid = |e: &dyn std::fmt::Display| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            };
            let sealed = at_rest::is_sealed(&stored);
            let data = if sealed {
                k.open(&stored, SNAPSHOT_CONTEXT).map_err(|e| invalid(&e))?
            } else {
                stored
            };
            let file: SnapshotFile = serde_json::from_slice(&data).map_err(|e| invalid(&e))?;
            if !sealed {
                tracing::info!(path = %path.display(), "encrypting a plain-text raft snapshot written by an older version");
                fsio::write_atomic(&d, SNAPSHOT, &k.seal(&data, SNAPSHOT_CONTEXT)?)?;
            }
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
        let size = snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                key,
                applied: Mutex::new(applied),
                snapshot: tokio::sync::Mutex::new(snapshot),
                snapshot_seq: AtomicU64::new(0),
                snapshot_size: Arc::new(AtomicU64::new(size)),
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

    /// The bytes of the current snapshot (0 without one), kept up to date: what the next
    /// snapshot will cost about, to space snapshots by.
    pub(crate) fn snapshot_size(&self) -> Arc<AtomicU64> {
        self.shared.snapshot_size.clone()
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
        let key = self.shared.key.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let sealed = key.seal(&data, SNAPSHOT_CONTEXT)?;
            fsio::write_atomic(&dir, SNAPSHOT, &sealed).map(|_| (meta, data))
        })
        .await
        .map_err(|e| snapshot_error(None, ErrorVerb::Write, io::Error::other(e)))?
        .map_err(|e| snapshot_error(None, ErrorVerb::Write, e))?;
        self.shared
            .snapshot_size
            .store(data.len() as u64, Ordering::Relaxed);
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
    use crate::at_rest::tests::{assert_private, files_containing, key_in, secret_command};
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
        let mut sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
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
            let mut sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            sm.apply([Entry {
                log_id: log_id(1),
                payload: EntryPayload::Normal(create_service("a")),
            }])
            .await
            .unwrap();
            let snap = sm.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id, Some(log_id(1)));
        }
        let mut sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(sm.state().services.len(), 1);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1)));
    }

    const SECRET: &str = "-----BEGIN PRIVATE KEY-----snapshot-secret";

    #[tokio::test]
    async fn the_snapshot_is_encrypted_on_disk_and_plain_for_followers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            sm.apply([Entry {
                log_id: log_id(1),
                payload: EntryPayload::Normal(secret_command("a", SECRET)),
            }])
            .await
            .unwrap();
            let snap = sm.build_snapshot().await.unwrap();
            // What a leader sends: the follower seals it with its own key.
            let sent = snap.snapshot.into_inner();
            assert!(sent.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));

            let other = tempfile::tempdir().unwrap();
            let mut follower = StateMachineStore::open(other.path(), key_in(other.path()))
                .await
                .unwrap();
            follower
                .install_snapshot(&snap.meta, Box::new(Cursor::new(sent)))
                .await
                .unwrap();
            assert!(files_containing(other.path(), SECRET.as_bytes()).is_empty());
            assert_private(other.path());
            let again = StateMachineStore::open(other.path(), key_in(other.path()))
                .await
                .unwrap();
            assert_eq!(again.state().services.len(), 1);
        }
        assert!(files_containing(dir.path(), SECRET.as_bytes()).is_empty());
        assert_private(dir.path());
        let sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(sm.state().services.len(), 1);
    }

    #[tokio::test]
    async fn a_plain_text_snapshot_is_read_and_rewritten_encrypted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ClusterState::default();
        state.apply(&secret_command("a", SECRET), 1);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(1)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-1-0".into(),
        };
        let plain = serde_json::to_vec(&SnapshotFileRef {
            meta: &meta,
            state: &state,
        })
        .unwrap();
        std::fs::write(dir.path().join(SNAPSHOT), &plain).unwrap();

        let mut sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(sm.state().services.len(), 1);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
        assert!(files_containing(dir.path(), SECRET.as_bytes()).is_empty());
        assert_private(dir.path());

        let again = StateMachineStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(again.state().services.len(), 1);
    }

    #[tokio::test]
    async fn a_snapshot_under_another_key_is_an_error_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = StateMachineStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            sm.build_snapshot().await.unwrap();
        }
        let other = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join(SNAPSHOT), other.path().join(SNAPSHOT)).unwrap();
        // A key of its own would not be made next to sealed data, so give one explicitly.
        let third = tempfile::tempdir().unwrap();
        let msg = StateMachineStore::open(other.path(), key_in(third.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("snapshot.json") && msg.contains("data.key"),
            "{msg}"
        );
    }
}
