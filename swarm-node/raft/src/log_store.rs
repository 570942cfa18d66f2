//! The durable Raft log: an append-only journal replayed into memory at open.
//!
//! Layout of the directory:
//! - `raft.journal`: length-prefixed, checksummed records (`Append`, `Truncate`,
//!   `Purge`), each JSON sealed with the data key (`at_rest`), bound to its position in
//!   the journal. Replaying them in order rebuilds the log. A torn record at the end (a
//!   crash in the middle of a write) is cut off at open; a whole record that does not
//!   decrypt is an error, never skipped. Plain-text records (versions before
//!   encryption) are read and the journal is rewritten sealed at once, at open.
//! - `vote.json`, `committed.json`: replaced atomically (temp file, fsync, rename, fsync
//!   dir). Plain JSON: a term, node ids and log positions, nothing secret.
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
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogId,
    RaftLogReader, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::at_rest::{self, DataKey};
use crate::fsio;
use crate::typ::{Entry, LogId, StorageError, Vote};
use crate::TypeConfig;

pub(crate) const JOURNAL: &str = "raft.journal";
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
    /// Bytes of entries written to the journal since the store opened (see
    /// [`LogStore::bytes_written`]).
    written: Arc<AtomicU64>,
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
    /// Opens (creating if needed) the log in `dir`, sealed with `key`, and starts its
    /// writer thread.
    pub(crate) async fn open(dir: &Path, key: Arc<DataKey>) -> Result<LogStore, StorageError> {
        let dir = dir.to_path_buf();
        let d = dir.clone();
        let (mem, writer) = tokio::task::spawn_blocking(move || open_blocking(&d, key))
            .await
            .map_err(|e| store_error(ErrorVerb::Read, io::Error::other(e)))?
            .map_err(|e| store_error(ErrorVerb::Read, e))?;
        let (tx, rx) = mpsc::channel();
        let written = writer.written.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| store_error(ErrorVerb::Write, e))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir,
                written,
                mem: Mutex::new(mem),
                ops: Mutex::new(tx),
            }),
        })
    }

    /// A counter of the bytes of entries the journal has been given since the store
    /// opened (sealed records, headers included), shared with the writer thread: what
    /// the log costs on disk, to trigger snapshots by size as well as by count.
    pub(crate) fn bytes_written(&self) -> Arc<AtomicU64> {
        self.shared.written.clone()
    }

    /// The index up to which to purge once a snapshot covers `snapshot`, so that what
    /// stays behind it is at most `keep_entries` entries and [`KEEP_ITEMS`] objects, or
    /// up to [`KEEP_ITEMS_LAGGING`] objects while a follower still needs them (it lacks
    /// entries from `needed_from` on); `None` when nothing is to go. openraft's own purge
    /// counts entries only, and a thousand entries of a thousand tasks each kept a whole
    /// large service in memory twice (once in the state, once here).
    pub(crate) fn purge_point(
        &self,
        snapshot: u64,
        keep_entries: u64,
        needed_from: Option<u64>,
    ) -> Option<u64> {
        let mem = self.mem();
        let weights = || {
            mem.log
                .range(..=snapshot)
                .map(|(i, e)| (*i, entry_items(e)))
        };
        let near = purge_upto(weights(), keep_entries, KEEP_ITEMS);
        let far = purge_upto(weights(), keep_entries, KEEP_ITEMS_LAGGING);
        keep_for_followers(near, far, needed_from)
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

fn open_blocking(dir: &Path, key: Arc<DataKey>) -> io::Result<(Mem, Writer)> {
    at_rest::prepare_dir(dir)?;
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
    let Replayed {
        valid,
        records,
        plain,
    } = replay(&bytes, &path, &key, &mut mem)?;
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
        key,
        records,
        pending: Vec::new(),
        failed: None,
        written: Arc::default(),
        _lock: lock,
    };
    if plain > 0 {
        tracing::info!(path = %path.display(), records = plain, "encrypting a plain-text raft journal written by an older version");
    }
    // A rewrite seals every record, so plain text never outlives the first start.
    if mem.needs_compaction() || plain > 0 {
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
        .mode(at_rest::FILE_MODE)
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
        .mode(at_rest::FILE_MODE)
        .open(path)
        .map_err(|e| fsio::with_path(e, path))
}

/// What [`replay`] found.
struct Replayed {
    /// Length of the intact prefix.
    valid: usize,
    /// Records in it (the position the next record gets).
    records: u64,
    /// Plain-text records among them.
    plain: u64,
}

/// The associated data of the journal record at `position`: a record moved elsewhere
/// does not decrypt.
fn record_context(position: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(b"journal\0");
    c[8..].copy_from_slice(&position.to_le_bytes());
    c
}

/// Applies every intact record of `bytes` to `mem`. Reading stops at the first record
/// that is short, empty or fails its checksum: the torn end of a crashed write. A whole
/// record that does not decrypt, or a plain-text one after sealed ones, is an error.
fn replay(bytes: &[u8], path: &Path, key: &DataKey, mem: &mut Mem) -> io::Result<Replayed> {
    let mut at = 0;
    let mut records = 0u64;
    let mut plain = 0u64;
    let bad = |at: usize, n: u64, what: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: record {n} at byte {at}: {what}", path.display()),
        )
    };
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
        let record = if at_rest::is_sealed(payload) {
            let json = key
                .open(payload, &record_context(records))
                .map_err(|e| bad(at, records, &e))?;
            serde_json::from_slice::<Record>(&json).map_err(|e| bad(at, records, &e))?
        } else {
            if plain < records {
                return Err(bad(
                    at,
                    records,
                    &"a plain-text record after encrypted ones; the journal was altered",
                ));
            }
            match serde_json::from_slice::<Record>(payload) {
                Ok(r) => {
                    plain += 1;
                    r
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), offset = at, error = %e, "unreadable raft journal record");
                    break;
                }
            }
        };
        mem.apply(record);
        records += 1;
        at = start + len;
    }
    Ok(Replayed {
        valid: at,
        records,
        plain,
    })
}

/// Appends `record`, sealed for `position`, to `out`.
fn encode(record: &Record, key: &DataKey, position: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    let payload = key.seal(&json, &record_context(position))?;
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
    key: Arc<DataKey>,
    /// Records in the journal, pending ones included: the next record's position.
    records: u64,
    /// Encoded records not yet written to the journal.
    pending: Vec<u8>,
    /// Once a write failed, the journal may hold a partial record: refuse everything after.
    failed: Option<String>,
    /// Bytes of `Append` records encoded so far (see [`LogStore::bytes_written`]).
    written: Arc<AtomicU64>,
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
                OpKind::Journal(record) => self.encode(&record),
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

    fn encode(&mut self, record: &Record) -> io::Result<()> {
        let before = self.pending.len();
        encode(record, &self.key, self.records, &mut self.pending)?;
        if matches!(record, Record::Append(_)) {
            let bytes = (self.pending.len() - before) as u64;
            self.written.fetch_add(bytes, Ordering::Relaxed);
        }
        self.records += 1;
        Ok(())
    }

    fn compact(&mut self, last_purged: Option<LogId>, entries: Vec<Entry>) -> io::Result<()> {
        self.sync_journal()?;
        let mut buf = Vec::new();
        let mut records = 0;
        if let Some(p) = last_purged {
            encode(&Record::Purge(p), &self.key, records, &mut buf)?;
            records += 1;
        }
        let n = entries.len();
        if !entries.is_empty() {
            encode(&Record::Append(entries), &self.key, records, &mut buf)?;
            records += 1;
        }
        fsio::write_atomic(&self.dir, JOURNAL, &buf)?;
        self.journal = open_journal(&self.journal_path())?;
        self.records = records;
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

    /// What replication sends in one request: entries up to [`MAX_REPLICATION_ITEMS`]
    /// objects (always at least one entry). openraft's own cap counts entries only (300),
    /// and 300 entries of 1,000 tasks each are hundreds of megabytes: such a request
    /// outlives its timeout, is sent again from the start, and a follower that fell
    /// behind never catches up (while the leader clones and encodes it over and over).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let mem = self.mem();
        let mut items = 0;
        let mut out = Vec::new();
        for (_, e) in mem.log.range(start..end) {
            let weight = entry_items(e);
            if !out.is_empty() && items + weight > MAX_REPLICATION_ITEMS {
                break;
            }
            items += weight;
            out.push(e.clone());
        }
        Ok(out)
    }
}

/// The most objects (tasks, status updates, addresses) one replication request carries:
/// about a megabyte (one full task batch), which a follower receives, writes and answers
/// well within the request's timeout (one Raft heartbeat period).
pub(crate) const MAX_REPLICATION_ITEMS: usize = 1_000;

/// The most objects (tasks, status updates) kept in the log behind a snapshot: ten full
/// replication requests, for a follower a little behind; one further behind is sent the
/// snapshot.
pub(crate) const KEEP_ITEMS: usize = 10 * MAX_REPLICATION_ITEMS;

/// The most objects kept behind a snapshot while a follower still needs them: it catches
/// up from the log, a few seconds of replication, rather than by a whole snapshot, which
/// at 100,000 tasks is tens of megabytes to send and a second of parsing. A follower
/// further behind is sent the snapshot.
pub(crate) const KEEP_ITEMS_LAGGING: usize = 100 * MAX_REPLICATION_ITEMS;

/// Chooses between purging up to `near` (the usual bound) and only up to `far` (the most
/// kept for a lagging follower): the purge stops short of `needed_from`, the first index
/// a follower lacks, but never keeps more than `far` leaves. `None`: nothing to purge.
fn keep_for_followers(
    near: Option<u64>,
    far: Option<u64>,
    needed_from: Option<u64>,
) -> Option<u64> {
    let for_followers = match (near, needed_from) {
        (Some(p), Some(needed)) => needed.checked_sub(1).map(|last| p.min(last)),
        (p, _) => p,
    };
    match (for_followers, far) {
        (Some(p), Some(f)) => Some(p.max(f)),
        (p, f) => p.or(f),
    }
}

/// Of the entries `(index, objects)` a snapshot covers, in index order: the last index
/// to purge so that the rest holds at most `keep_entries` entries and `keep_items`
/// objects (`None`: keep them all).
fn purge_upto(
    weights: impl DoubleEndedIterator<Item = (u64, usize)>,
    keep_entries: u64,
    keep_items: usize,
) -> Option<u64> {
    let (mut entries, mut items) = (0u64, 0usize);
    for (index, weight) in weights.rev() {
        entries += 1;
        items += weight;
        if entries > keep_entries || items > keep_items {
            return Some(index);
        }
    }
    None
}

/// How many objects an entry carries: its weight against [`MAX_REPLICATION_ITEMS`].
pub(crate) fn entry_items(entry: &Entry) -> usize {
    use swarm_state::Command;
    let EntryPayload::Normal(command) = &entry.payload else {
        return 1;
    };
    match command {
        Command::PutTasks { tasks } => tasks.len(),
        Command::ReportTaskStatus { updates, .. } => updates.len(),
        Command::ReportTaskStatuses { reports } => reports.iter().map(|r| r.updates.len()).sum(),
        Command::RemoveTasks { ids } => ids.len(),
        Command::Allocate { allocation } => allocation.tasks.len() + allocation.failures.len(),
        _ => 1,
    }
    .max(1)
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
    use crate::at_rest::tests::{assert_private, files_containing, key_in, secret_command};

    const SECRET: &str = "SWMTKN-1-journal-secret";

    fn secret_entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(secret_command(&index.to_string(), SECRET)),
        }
    }

    /// The journal's records as (offset, length) of their payloads.
    fn records_of(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + HEADER <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            out.push((at + HEADER, len));
            at += HEADER + len;
        }
        out
    }

    /// Writes a record as versions before encryption did: plain JSON.
    fn plain_record(record: &Record, out: &mut Vec<u8>) {
        let payload = serde_json::to_vec(record).unwrap();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }

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

    #[tokio::test]
    async fn replication_batches_are_bounded_by_what_they_carry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        let tasks = |index: u64, n: usize| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(swarm_state::Command::PutTasks {
                tasks: std::sync::Arc::new(vec![Default::default(); n]),
            }),
        };
        // Three entries of 400 tasks, then small ones.
        let mut all: Vec<Entry> = (1..=3).map(|i| tasks(i, 400)).collect();
        all.extend((4..=10).map(entry));
        s.blocking_append(all).await.unwrap();
        let got = |v: Vec<Entry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(got(s.limited_get_log_entries(1, 11).await.unwrap()), [1, 2]);
        assert_eq!(
            got(s.limited_get_log_entries(3, 11).await.unwrap()),
            [3, 4, 5, 6, 7, 8, 9, 10]
        );
        // One entry heavier than the cap still goes, alone.
        s.blocking_append([tasks(11, 5_000), entry(12)])
            .await
            .unwrap();
        assert_eq!(got(s.limited_get_log_entries(11, 13).await.unwrap()), [11]);
    }

    #[test]
    fn purges_keep_a_bounded_count_and_weight_behind_a_snapshot() {
        let small = [(1, 1), (2, 1), (3, 1), (4, 1)];
        assert_eq!(purge_upto(small.into_iter(), 10, 100), None, "all fit");
        assert_eq!(purge_upto(small.into_iter(), 2, 100), Some(2), "by count");
        assert_eq!(purge_upto(small.into_iter(), 0, 100), Some(4), "keep none");
        // Three batches of a thousand tasks: two fit in 2,500 objects.
        let batches = [(7, 1000), (8, 1000), (9, 1000)];
        assert_eq!(
            purge_upto(batches.into_iter(), 1000, 2500),
            Some(7),
            "by weight"
        );
        assert_eq!(
            purge_upto(batches.into_iter(), 1000, 999),
            Some(9),
            "one too big"
        );
        assert_eq!(purge_upto(std::iter::empty(), 0, 0), None);
    }

    #[test]
    fn a_lagging_follower_keeps_the_log_within_a_bound() {
        // Usually up to 90; a follower lacking 50 on keeps 50 on; never beyond 20.
        assert_eq!(keep_for_followers(Some(90), Some(20), None), Some(90));
        assert_eq!(keep_for_followers(Some(90), Some(20), Some(200)), Some(90));
        assert_eq!(keep_for_followers(Some(90), Some(20), Some(50)), Some(49));
        assert_eq!(keep_for_followers(Some(90), Some(20), Some(5)), Some(20));
        assert_eq!(keep_for_followers(Some(90), Some(20), Some(0)), Some(20));
        assert_eq!(keep_for_followers(Some(90), None, Some(50)), Some(49));
        assert_eq!(keep_for_followers(Some(90), None, Some(0)), None);
        assert_eq!(keep_for_followers(None, None, Some(50)), None);
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[tokio::test]
    async fn reopen_replays_appends_truncates_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append((1..=10).map(entry)).await.unwrap();
            s.truncate(*entry(8).get_log_id()).await.unwrap();
            s.purge(*entry(3).get_log_id()).await.unwrap();
            s.save_vote(&Vote::new(4, 2)).await.unwrap();
            s.save_committed(Some(*entry(5).get_log_id()))
                .await
                .unwrap();
        }
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
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
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append((1..=3).map(entry)).await.unwrap();
            s.blocking_append((4..=5).map(entry)).await.unwrap();
        }
        let path = dir.path().join(JOURNAL);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);

        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
        // New records land after the cut, so they survive the next replay.
        s.blocking_append([entry(4)]).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn purging_most_of_the_log_compacts_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL);
        let n = 3 * COMPACT_SLACK;
        {
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append((1..=n).map(entry)).await.unwrap();
            let before = std::fs::metadata(&path).unwrap().len();
            s.purge(*entry(n - 2).get_log_id()).await.unwrap();
            // The compaction is queued behind the purge; a vote write waits for both.
            s.save_vote(&Vote::new(1, 1)).await.unwrap();
            let after = std::fs::metadata(&path).unwrap().len();
            assert!(after < before / 100, "journal {before} -> {after} bytes");
        }
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![n - 1, n]);
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(n - 2));
    }

    #[tokio::test]
    async fn the_journal_holds_no_plain_text_and_only_private_files() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append((1..=3).map(secret_entry)).await.unwrap();
            s.save_vote(&Vote::new(1, 1)).await.unwrap();
            s.save_committed(Some(*entry(3).get_log_id()))
                .await
                .unwrap();
        }
        assert!(files_containing(dir.path(), SECRET.as_bytes()).is_empty());
        assert!(files_containing(dir.path(), b"CreateService").is_empty());
        assert_private(dir.path());
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn an_altered_record_is_an_error_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append([entry(1)]).await.unwrap();
            s.blocking_append([entry(2)]).await.unwrap();
        }
        let path = dir.path().join(JOURNAL);
        let good = std::fs::read(&path).unwrap();
        let recs = records_of(&good);
        assert_eq!(recs.len(), 2);

        // One flipped bit in the ciphertext, with the checksum fixed up to match.
        let mut bad = good.clone();
        let (at, len) = recs[0];
        bad[at + len - 20] ^= 1;
        let sum = crc32(&bad[at..at + len]);
        bad[at - 4..at].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("raft.journal") && msg.contains("data.key"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bad, "nothing may be cut off");

        // Two whole records swapped: each is intact, but not at its own position.
        let ((a, alen), (b, blen)) = (recs[0], recs[1]);
        assert_eq!(alen, blen);
        let mut swapped = good.clone();
        swapped[a - HEADER..a + alen].copy_from_slice(&good[b - HEADER..b + blen]);
        swapped[b - HEADER..b + blen].copy_from_slice(&good[a - HEADER..a + alen]);
        std::fs::write(&path, &swapped).unwrap();
        assert!(LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .is_err());

        std::fs::write(&path, &good).unwrap();
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2]);
    }

    #[tokio::test]
    async fn another_managers_key_is_refused_with_the_key_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append([entry(1)]).await.unwrap();
        }
        let wrong = key_in(other.path());
        let msg = LogStore::open(dir.path(), wrong)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&other.path().join("data.key").display().to_string()),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_plain_text_journal_is_read_and_rewritten_encrypted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        plain_record(
            &Record::Append((1..=3).map(secret_entry).collect()),
            &mut old,
        );
        plain_record(&Record::Truncate(3), &mut old);
        plain_record(&Record::Append(vec![secret_entry(3)]), &mut old);
        std::fs::write(dir.path().join(JOURNAL), &old).unwrap();
        {
            // No key yet: the first start of a version with encryption makes one.
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
            s.blocking_append([secret_entry(4)]).await.unwrap();
        }
        assert!(files_containing(dir.path(), SECRET.as_bytes()).is_empty());
        let mut s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_plain_text_record_after_encrypted_ones_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), key_in(dir.path()))
                .await
                .unwrap();
            s.blocking_append([entry(1)]).await.unwrap();
        }
        let mut bytes = std::fs::read(dir.path().join(JOURNAL)).unwrap();
        plain_record(&Record::Append(vec![entry(2)]), &mut bytes);
        std::fs::write(dir.path().join(JOURNAL), &bytes).unwrap();
        let msg = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(msg.contains("plain-text record after encrypted"), "{msg}");
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _s = LogStore::open(dir.path(), key_in(dir.path()))
            .await
            .unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(LOCK))
            .unwrap();
        // The lock is per open file description, so a second handle sees it held.
        assert!(f.try_lock().is_err());
    }
}
