//! The durable Raft log: an append-only journal replayed into memory at open.
//!
//! Layout of the directory:
//! - `raft.journal`: length-prefixed, checksummed JSON records (`Append`, `Truncate`,
//!   `Purge`). Replaying them in order rebuilds the log. A torn record at the end (a crash
//!   in the middle of a write) is cut off at open.
//! - `vote.json`, `committed.json`: replaced atomically (temp file, fsync, rename, fsync dir).
//! - `lock`: held with an exclusive file lock while the store is open, so two daemons
//!   never write the same log.
//!
//! All file I/O runs on one dedicated writer thread, in submission order, so a vote and
//! the entries around it reach the disk in the order Raft issued them. The writer groups
//! whatever is queued into one fsync; callers hear back only after that fsync.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogId, RaftLogReader,
    StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::fsio;
use crate::typ::{Entry, LogId, StorageError, Vote};
use crate::TypeConfig;

const JOURNAL: &str = "raft.journal";
const VOTE: &str = "vote.json";
const COMMITTED: &str = "committed.json";
const LOCK: &str = "lock";

/// Record header: payload length and CRC-32 of the payload, both little-endian u32.
const HEADER: usize = 8;

/// The journal is rewritten once it holds this many more entries than the live log
/// (beyond twice the live log): purged entries then dominate the file.
const COMPACT_SLACK: u64 = 1000;

/// How long `open` waits for the directory lock. A restart inside one process may still
/// be dropping the previous instance's writer; another live process holds it for good.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// One journal record. The journal is the sequence of these, replayed in order.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Append(Vec<Entry>),
    /// Delete entries from this index on.
    Truncate(u64),
    /// Delete entries up to and including this log id.
    Purge(LogId),
}

/// The in-memory view of the log, always ahead of or equal to the disk.
#[derive(Debug, Default)]
struct Mem {
    log: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Entries written to the journal since it was last rewritten, to decide compaction.
    journal_entries: u64,
}

impl Mem {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Append(entries) => {
                self.journal_entries += entries.len() as u64;
                for e in entries {
                    self.log.insert(e.log_id.index, e);
                }
            }
            Record::Truncate(index) => {
                self.log.split_off(&index);
            }
            Record::Purge(log_id) => {
                self.log = self.log.split_off(&(log_id.index + 1));
                self.last_purged = Some(log_id);
            }
        }
    }

    fn needs_compaction(&self) -> bool {
        self.journal_entries > 2 * self.log.len() as u64 + COMPACT_SLACK
    }
}

/// The Raft log store. Cheap to clone: clones share one log and one writer thread, and
/// the writer stops (releasing the directory lock) when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    mem: Mutex<Mem>,
    ops: Mutex<mpsc::Sender<Op>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir` and starts its writer thread.
    pub(crate) async fn open(dir: &Path) -> Result<LogStore, StorageError> {
        let dir = dir.to_path_buf();
        let d = dir.clone();
        let (mem, writer) = tokio::task::spawn_blocking(move || open_blocking(&d))
            .await
            .map_err(|e| store_error(ErrorVerb::Read, io::Error::other(e)))?
            .map_err(|e| store_error(ErrorVerb::Read, e))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| store_error(ErrorVerb::Write, e))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir,
                mem: Mutex::new(mem),
                ops: Mutex::new(tx),
            }),
        })
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        // A panic while holding the lock cannot leave `Mem` half-updated in a way that
        // matters more than the panic itself, so keep serving.
        self.shared.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` for the writer thread. (A plain `io::Error`: openraft's error type is
    /// too big to pass around in helpers.)
    fn submit(&self, op: Op) -> io::Result<()> {
        let tx = self.shared.ops.lock().unwrap_or_else(|e| e.into_inner());
        tx.send(op).map_err(|_| {
            io::Error::other(format!(
                "raft log writer for {} has stopped",
                self.shared.dir.display()
            ))
        })
    }

    /// Queues `kind` and waits until the writer has made it durable.
    async fn submit_and_wait(
        &self,
        kind: OpKind,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op {
            kind,
            reply: Reply::Done(tx),
        })
        .map_err(|e| store_error(ErrorVerb::Write, e))?;
        let res = rx.await.unwrap_or_else(|_| {
            Err(format!(
                "raft log writer for {} has stopped",
                self.shared.dir.display()
            ))
        });
        res.map_err(|msg| {
            StorageError::from(StorageIOError::new(
                subject,
                ErrorVerb::Write,
                AnyError::error(msg),
            ))
        })
    }
}

fn store_error(verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Logs, verb, e)
}

fn json_error(path: &Path, e: serde_json::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

fn open_blocking(dir: &Path) -> io::Result<(Mem, Writer)> {
    std::fs::create_dir_all(dir).map_err(|e| fsio::with_path(e, dir))?;
    let lock = lock_dir(dir)?;

    let mut mem = Mem::default();
    if let Some(b) = fsio::read_optional(dir, VOTE)? {
        mem.vote = Some(serde_json::from_slice(&b).map_err(|e| json_error(&dir.join(VOTE), e))?);
    }
    if let Some(b) = fsio::read_optional(dir, COMMITTED)? {
        mem.committed =
            serde_json::from_slice(&b).map_err(|e| json_error(&dir.join(COMMITTED), e))?;
    }

    let path = dir.join(JOURNAL);
    let bytes = fsio::read_optional(dir, JOURNAL)?.unwrap_or_default();
    let valid = replay(&bytes, &path, &mut mem);
    if valid < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            offset = valid,
            dropped = bytes.len() - valid,
            "cutting off a torn record at the end of the raft journal"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| fsio::with_path(e, &path))?;
        f.set_len(valid as u64)
            .and_then(|_| f.sync_all())
            .map_err(|e| fsio::with_path(e, &path))?;
    }
    let journal = open_journal(&path)?;
    fsio::sync_dir(dir)?;

    let mut writer = Writer {
        dir: dir.to_path_buf(),
        journal,
        pending: Vec::new(),
        failed: None,
        _lock: lock,
    };
    if mem.needs_compaction() {
        let entries: Vec<Entry> = mem.log.values().cloned().collect();
        writer.compact(mem.last_purged, entries)?;
        mem.journal_entries = mem.log.len() as u64;
    }
    Ok((mem, writer))
}

fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| fsio::with_path(e, &path))?;
    let started = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "raft directory {} is in use by another process; stop it or use another directory",
                        dir.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fsio::with_path(e, &path)),
        }
    }
}

fn open_journal(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| fsio::with_path(e, path))
}

/// Applies every intact record of `bytes` to `mem` and returns the length of the intact
/// prefix. Reading stops at the first record that is short, empty or fails its checksum.
fn replay(bytes: &[u8], path: &Path, mem: &mut Mem) -> usize {
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let sum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let start = at + HEADER;
        // A zero length is what a crash leaves in a preallocated, zero-filled tail.
        if len == 0 || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32(payload) != sum {
            break;
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(r) => mem.apply(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), offset = at, error = %e, "unreadable raft journal record");
                break;
            }
        }
        at = start + len;
    }
    at
}

fn encode(record: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = serde_json::to_vec(record).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::other("raft journal record larger than 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE), enough to tell a torn or corrupted record from a whole one.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Work for the writer thread.
struct Op {
    kind: OpKind,
    reply: Reply,
}

enum OpKind {
    Journal(Record),
    /// Replace the journal with the live log (`last_purged` and `entries`).
    Compact {
        last_purged: Option<LogId>,
        entries: Vec<Entry>,
    },
    /// Atomically replace a small file such as the vote.
    File {
        name: &'static str,
        bytes: Vec<u8>,
    },
}

enum Reply {
    Flushed(LogFlushed<TypeConfig>),
    Done(oneshot::Sender<Result<(), String>>),
    None,
}

impl Reply {
    fn send(self, result: &Result<(), String>) {
        match self {
            Reply::Flushed(cb) => cb.log_io_completed(result.clone().map_err(io::Error::other)),
            Reply::Done(tx) => {
                // The waiter may have given up; nothing to tell then.
                let _ = tx.send(result.clone());
            }
            Reply::None => {}
        }
    }
}

struct Writer {
    dir: PathBuf,
    journal: File,
    /// Encoded records not yet written to the journal.
    pending: Vec<u8>,
    /// Once a write failed, the journal may hold a partial record: refuse everything after.
    failed: Option<String>,
    _lock: File,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        tracing::debug!(dir = %self.dir.display(), "raft log writer stopped");
    }

    /// Carries out a batch in order and answers every op only after all of it is durable.
    fn process(&mut self, batch: Vec<Op>) {
        // Only the last committed-index write of a batch is worth doing: nobody has been
        // told the earlier ones succeeded, and the committed index is only a hint for
        // replay at start-up. Votes are never skipped: each must reach the disk before
        // the entries queued after it.
        let last_committed_write = batch.iter().rposition(|op| {
            matches!(
                op.kind,
                OpKind::File {
                    name: COMMITTED,
                    ..
                }
            )
        });

        let mut result = match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        };
        let mut replies = Vec::with_capacity(batch.len());
        for (i, op) in batch.into_iter().enumerate() {
            replies.push(op.reply);
            if result.is_err() {
                continue;
            }
            let step = match op.kind {
                OpKind::Journal(record) => encode(&record, &mut self.pending),
                OpKind::Compact {
                    last_purged,
                    entries,
                } => self.compact(last_purged, entries),
                OpKind::File { name, bytes } => {
                    if name != COMMITTED || last_committed_write == Some(i) {
                        self.sync_journal()
                            .and_then(|_| fsio::write_atomic(&self.dir, name, &bytes))
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(e) = step {
                result = Err(e.to_string());
            }
        }
        if result.is_ok() {
            if let Err(e) = self.sync_journal() {
                result = Err(e.to_string());
            }
        }
        if let Err(e) = &result {
            if self.failed.is_none() {
                tracing::error!(dir = %self.dir.display(), error = %e, "raft log write failed");
            }
            self.failed = Some(e.clone());
        }
        for r in replies {
            r.send(&result);
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    /// Writes pending records and fsyncs the journal.
    fn sync_journal(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.journal_path();
        self.journal
            .write_all(&self.pending)
            .and_then(|_| self.journal.sync_data())
            .map_err(|e| fsio::with_path(e, &path))?;
        self.pending.clear();
        Ok(())
    }

    fn compact(&mut self, last_purged: Option<LogId>, entries: Vec<Entry>) -> io::Result<()> {
        self.sync_journal()?;
        let mut buf = Vec::new();
        if let Some(p) = last_purged {
            encode(&Record::Purge(p), &mut buf)?;
        }
        let n = entries.len();
        if !entries.is_empty() {
            encode(&Record::Append(entries), &mut buf)?;
        }
        fsio::write_atomic(&self.dir, JOURNAL, &buf)?;
        self.journal = open_journal(&self.journal_path())?;
        tracing::debug!(dir = %self.dir.display(), entries = n, bytes = buf.len(), "compacted raft journal");
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .mem()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem();
        let last_purged_log_id = mem.last_purged;
        let last_log_id = mem
            .log
            .last_key_value()
            .map(|(_, e)| *e.get_log_id())
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.submit_and_wait(OpKind::File { name: VOTE, bytes }, ErrorSubject::Vote)
            .await?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&committed)
            .map_err(|e| StorageError::from(StorageIOError::write(&e)))?;
        self.submit_and_wait(
            OpKind::File {
                name: COMMITTED,
                bytes,
            },
            ErrorSubject::Store,
        )
        .await?;
        self.mem().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            // Readable at once (replication reads it before the fsync completes).
            let mut mem = self.mem();
            mem.journal_entries += entries.len() as u64;
            for e in &entries {
                mem.log.insert(e.log_id.index, e.clone());
            }
        }
        self.submit(Op {
            kind: OpKind::Journal(Record::Append(entries)),
            reply: Reply::Flushed(callback),
        })
        .map_err(|e| store_error(ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.mem().log.split_off(&log_id.index);
        self.submit_and_wait(
            OpKind::Journal(Record::Truncate(log_id.index)),
            ErrorSubject::Logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let compact = {
            let mut mem = self.mem();
            mem.apply(Record::Purge(log_id));
            if mem.needs_compaction() {
                mem.journal_entries = mem.log.len() as u64;
                Some(mem.log.values().cloned().collect::<Vec<_>>())
            } else {
                None
            }
        };
        self.submit_and_wait(OpKind::Journal(Record::Purge(log_id)), ErrorSubject::Logs)
            .await?;
        if let Some(entries) = compact {
            // Queued behind the purge, so the rewrite equals the log as of this call.
            self.submit(Op {
                kind: OpKind::Compact {
                    last_purged: Some(log_id),
                    entries,
                },
                reply: Reply::None,
            })
            .map_err(|e| store_error(ErrorVerb::Write, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn indexes(store: &mut LogStore) -> Vec<u64> {
        store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[tokio::test]
    async fn reopen_replays_appends_truncates_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path()).await.unwrap();
            s.blocking_append((1..=10).map(entry)).await.unwrap();
            s.truncate(*entry(8).get_log_id()).await.unwrap();
            s.purge(*entry(3).get_log_id()).await.unwrap();
            s.save_vote(&Vote::new(4, 2)).await.unwrap();
            s.save_committed(Some(*entry(5).get_log_id()))
                .await
                .unwrap();
        }
        let mut s = LogStore::open(dir.path()).await.unwrap();
        assert_eq!(indexes(&mut s).await, vec![4, 5, 6, 7]);
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        assert_eq!(s.read_committed().await.unwrap().map(|l| l.index), Some(5));
    }

    #[tokio::test]
    async fn a_torn_last_record_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path()).await.unwrap();
            s.blocking_append((1..=3).map(entry)).await.unwrap();
            s.blocking_append((4..=5).map(entry)).await.unwrap();
        }
        let path = dir.path().join(JOURNAL);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);

        let mut s = LogStore::open(dir.path()).await.unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
        // New records land after the cut, so they survive the next replay.
        s.blocking_append([entry(4)]).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path()).await.unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn purging_most_of_the_log_compacts_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        let n = 3 * COMPACT_SLACK;
        {
            let mut s = LogStore::open(dir.path()).await.unwrap();
            s.blocking_append((1..=n).map(entry)).await.unwrap();
            let before = std::fs::metadata(&path).unwrap().len();
            s.purge(*entry(n - 2).get_log_id()).await.unwrap();
            // The compaction is queued behind the purge; a vote write waits for both.
            s.save_vote(&Vote::new(1, 1)).await.unwrap();
            let after = std::fs::metadata(&path).unwrap().len();
            assert!(after < before / 100, "journal {before} -> {after} bytes");
        }
        let mut s = LogStore::open(dir.path()).await.unwrap();
        assert_eq!(indexes(&mut s).await, vec![n - 1, n]);
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(n - 2));
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _s = LogStore::open(dir.path()).await.unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(LOCK))
            .unwrap();
        // The lock is per open file description, so a second handle sees it held.
        assert!(f.try_lock().is_err());
    }
}
