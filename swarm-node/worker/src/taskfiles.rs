//! Secrets and configs as files in task containers, delivered the way dockerd does it.
//!
//! Each task that references secrets or configs gets its own small tmpfs on the host
//! (`ROOT/TASK_ID`, mounted `mode=0700,nodev,nosuid,noexec`). Every file is written there
//! with the uid, gid and mode of its reference, the tmpfs is remounted read-only, and each
//! file is bind-mounted read-only into the container at its target. So:
//!
//! - the data never touches a disk: not on the node's file systems, not in the
//!   container's writable layer (copying into a tmpfs inside the container through the
//!   engine's archive API would write under it, onto the layer);
//! - one tmpfs per task, bind-mounted file by file: a container sees only its own
//!   task's files, and cannot change them;
//! - secrets and configs live in separate directories of the tmpfs (`secrets/N`,
//!   `configs/N`, N the position of the reference), so no name of the user's ever
//!   becomes a host path and two references can never collide, even to the same data
//!   with different modes.
//!
//! The data arrives in the node's assignments and is held in memory only ([`TaskFile`]'s
//! `Debug` never shows it). A store is released when its task's container is removed or
//! the task is no longer assigned; [`TaskFiles::sweep`] releases whatever is left over
//! (after a crash, or from tasks unassigned while the node was down).
//!
//! [`task_files`] is the pure part: which files a task needs, with their targets, or why
//! it cannot have them. [`HostTaskFiles`] does the mounting; [`FakeTaskFiles`] stands in
//! for it in tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use swarm_state::models::{Mount, MountType, Task};
use swarm_state::proto::FileData;

/// Where a node keeps its tasks' stores by default: in the runtime directory beside the
/// node's socket, on a tmpfs-backed `/run` that a reboot empties.
pub const DEFAULT_ROOT: &str = "/run/swarm-node/secrets";

/// Docker's default mode of a secret or config file (`0444`).
pub const DEFAULT_MODE: u32 = 0o444;

/// Whether a file is a secret or a config: they differ in their default directory in
/// the container and in their directory in the store.
pub use swarm_state::secrets::FileKind;

/// The directory of a task's store holding files of this kind.
pub fn store_dir(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Secret => "secrets",
        FileKind::Config => "configs",
    }
}

/// One file a task's container gets: where it goes and what it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskFile {
    pub kind: FileKind,
    /// The reference's position among the task's references of this kind; it names the
    /// file in the store.
    pub index: usize,
    /// The secret's or config's name, for messages.
    pub name: String,
    /// The absolute path in the container.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (at most `0o777`).
    pub mode: u32,
    /// The decoded content. Never logged.
    pub data: Vec<u8>,
}

impl TaskFile {
    /// The file's path inside the task's store: `secrets/N` or `configs/N`.
    pub fn store_path(&self) -> PathBuf {
        Path::new(store_dir(self.kind)).join(self.index.to_string())
    }
}

impl std::fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("kind", &self.kind)
            .field("index", &self.index)
            .field("name", &self.name)
            .field("target", &self.target)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// Why a task's secret or config references cannot be honoured. The message becomes the
/// task's error when it is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefError {
    /// Docker's wording for data the node does not have.
    #[error("{kind} {name} not found (id {id}): the managers sent no data for it with this node's assignments")]
    NotFound {
        kind: FileKind,
        name: String,
        id: String,
    },
    #[error("{kind} {name}: a reference without File is not supported: only {kind}s mounted as files can be given to a container")]
    NoFile { kind: FileKind, name: String },
    #[error("{kind} {name}: File.Name is empty: give the file a name or an absolute path")]
    NoFileName { kind: FileKind, name: String },
    #[error("config {name}: Runtime configs (credential specs) are for Windows containers; this node runs Linux containers")]
    Runtime { name: String },
    #[error("{kind} {name}: invalid {what} {value:?}: use a number")]
    BadOwner {
        kind: FileKind,
        name: String,
        what: &'static str,
        value: String,
    },
    #[error(
        "{kind} {name}: invalid file mode {mode:#o}: only permission bits (0777) are supported"
    )]
    BadMode {
        kind: FileKind,
        name: String,
        mode: u32,
    },
    #[error("{kind} {name}: the data is not valid base64")]
    BadData { kind: FileKind, name: String },
}

/// Why a store could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum TaskFilesError {
    #[error("task id {0:?} cannot name a directory")]
    BadTaskId(String),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets and configs cannot be delivered on this node: {0}")]
    Unavailable(String),
}

/// The side effects of per-task file stores.
#[async_trait]
pub trait TaskFiles: Send + Sync + std::fmt::Debug {
    /// Makes the task's store afresh with these files (any earlier one is released
    /// first) and returns the host path of each file, in the order given.
    async fn prepare(
        &self,
        task_id: &str,
        files: &[TaskFile],
    ) -> Result<Vec<PathBuf>, TaskFilesError>;

    /// Removes the task's store. A store that does not exist is fine.
    async fn release(&self, task_id: &str) -> Result<(), TaskFilesError>;

    /// Releases every store whose task is not in `keep`, and returns their task ids.
    async fn sweep(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, TaskFilesError>;
}

/// The files a task's container needs, from its spec's secret and config references
/// and the data in the node's assignments.
///
/// A relative file name goes under `/run/secrets/` for a secret and under `/` for a
/// config, an absolute one is kept, as Docker does. Owners default to 0 and modes to
/// `0444`. What cannot be honoured is refused rather than ignored: a reference without
/// a file, a runtime config (a Windows credential spec), data the node does not have.
pub fn task_files(
    task: &Task,
    secrets: &BTreeMap<String, FileData>,
    configs: &BTreeMap<String, FileData>,
) -> Result<Vec<TaskFile>, FileRefError> {
    let Some(cs) = task.spec.as_ref().and_then(|s| s.container_spec.as_ref()) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for (index, r) in cs.secrets.iter().flatten().enumerate() {
        let id = r.secret_id.clone().unwrap_or_default();
        let name = display_name(&r.secret_name, &id);
        let Some(file) = &r.file else {
            return Err(FileRefError::NoFile {
                kind: FileKind::Secret,
                name,
            });
        };
        let reference = Reference {
            kind: FileKind::Secret,
            index,
            id,
            name,
            file_name: file.name.as_deref(),
            uid: file.uid.as_deref(),
            gid: file.gid.as_deref(),
            mode: file.mode,
        };
        files.push(reference.resolve(secrets)?);
    }
    for (index, r) in cs.configs.iter().flatten().enumerate() {
        let id = r.config_id.clone().unwrap_or_default();
        let name = display_name(&r.config_name, &id);
        if r.runtime.is_some() {
            return Err(FileRefError::Runtime { name });
        }
        let Some(file) = &r.file else {
            return Err(FileRefError::NoFile {
                kind: FileKind::Config,
                name,
            });
        };
        let reference = Reference {
            kind: FileKind::Config,
            index,
            id,
            name,
            file_name: file.name.as_deref(),
            uid: file.uid.as_deref(),
            gid: file.gid.as_deref(),
            mode: file.mode,
        };
        files.push(reference.resolve(configs)?);
    }
    Ok(files)
}

fn display_name(name: &Option<String>, id: &str) -> String {
    name.clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| id.to_string())
}

/// One secret or config reference, whatever its kind.
struct Reference<'a> {
    kind: FileKind,
    index: usize,
    id: String,
    name: String,
    file_name: Option<&'a str>,
    uid: Option<&'a str>,
    gid: Option<&'a str>,
    mode: Option<u32>,
}

impl Reference<'_> {
    fn resolve(self, data: &BTreeMap<String, FileData>) -> Result<TaskFile, FileRefError> {
        let kind = self.kind;
        let file_name = self.file_name.unwrap_or_default();
        if file_name.is_empty() {
            return Err(FileRefError::NoFileName {
                kind,
                name: self.name,
            });
        }
        // Docker's rules, shared with the managers' check of the spec.
        let target = match kind {
            FileKind::Secret => swarm_state::secrets::secret_path(file_name),
            FileKind::Config => swarm_state::secrets::config_path(file_name),
        };
        let owner = |what: &'static str, value: Option<&str>| {
            let value = value.unwrap_or_default();
            if value.is_empty() {
                return Ok(0);
            }
            value.parse::<u32>().map_err(|_| FileRefError::BadOwner {
                kind,
                name: self.name.clone(),
                what,
                value: value.to_string(),
            })
        };
        let uid = owner("uid", self.uid)?;
        let gid = owner("gid", self.gid)?;
        let mode = self.mode.unwrap_or(DEFAULT_MODE);
        if mode & !0o777 != 0 {
            return Err(FileRefError::BadMode {
                kind,
                name: self.name,
                mode,
            });
        }
        let Some(encoded) = data.get(&self.id).filter(|_| !self.id.is_empty()) else {
            return Err(FileRefError::NotFound {
                kind,
                name: self.name,
                id: self.id,
            });
        };
        let data = decode(&encoded.0).ok_or_else(|| FileRefError::BadData {
            kind,
            name: self.name.clone(),
        })?;
        Ok(TaskFile {
            kind,
            index: self.index,
            name: self.name,
            target,
            uid,
            gid,
            mode,
            data,
        })
    }
}

/// Docker's API documents URL-safe base64 but its Go clients send the standard
/// alphabet: both are taken, with or without padding.
fn decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// The read-only bind mounts that put each file at its target, for the container's
/// `HostConfig.Mounts`.
pub fn bind_mounts(files: &[TaskFile], host_paths: &[PathBuf]) -> Vec<Mount> {
    files
        .iter()
        .zip(host_paths)
        .map(|(f, path)| Mount {
            target: Some(f.target.clone()),
            source: Some(path.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        })
        .collect()
}

/// A task id becomes a directory name: refuse anything that could point elsewhere.
fn check_task_id(task_id: &str) -> Result<(), TaskFilesError> {
    let ok = !task_id.is_empty()
        && task_id != "."
        && task_id != ".."
        && !task_id.contains('/')
        && !task_id.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(TaskFilesError::BadTaskId(task_id.to_string()))
    }
}

/// The real stores: one tmpfs per task under a root directory.
#[derive(Debug, Clone)]
pub struct HostTaskFiles {
    root: PathBuf,
}

impl HostTaskFiles {
    /// Stores under `root` (created `0700` when needed). Everything in `root` that is
    /// not a kept task's store is removed by [`TaskFiles::sweep`], so each node needs a
    /// root of its own.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostTaskFiles { root: root.into() }
    }

    /// Stores in `secrets/` beside the node's API socket: [`DEFAULT_ROOT`] for the
    /// default socket, and one root per node where several nodes share a host (tests).
    pub fn beside_socket(socket: &Path) -> Self {
        let dir = socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/run/swarm-node"));
        Self::new(dir.join("secrets"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a task's store lives.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }
}

#[async_trait]
impl TaskFiles for HostTaskFiles {
    async fn prepare(
        &self,
        task_id: &str,
        files: &[TaskFile],
    ) -> Result<Vec<PathBuf>, TaskFilesError> {
        check_task_id(task_id)?;
        let (root, task_id, files) = (self.root.clone(), task_id.to_string(), files.to_vec());
        blocking(move || host::prepare(&root, &task_id, &files)).await
    }

    async fn release(&self, task_id: &str) -> Result<(), TaskFilesError> {
        check_task_id(task_id)?;
        let dir = self.task_dir(task_id);
        blocking(move || host::release(&dir)).await
    }

    async fn sweep(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, TaskFilesError> {
        let (root, keep) = (self.root.clone(), keep.clone());
        blocking(move || host::sweep(&root, &keep)).await
    }
}

/// Mounts and file writes block: they run off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TaskFilesError> + Send + 'static,
) -> Result<T, TaskFilesError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(TaskFilesError::Unavailable(format!(
            "store work failed: {e}"
        )))
    })
}

/// The blocking work of [`HostTaskFiles`].
mod host {
    use super::*;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::unistd::{fchown, Gid, Uid};

    /// The tmpfs limit: every file rounded up to 64 KiB (the largest page size in use)
    /// plus one more, so content always fits whatever the page size; a limit, not
    /// memory taken.
    fn tmpfs_size(files: &[TaskFile]) -> usize {
        const UNIT: usize = 64 << 10;
        files
            .iter()
            .map(|f| f.data.len().div_ceil(UNIT).max(1) * UNIT)
            .sum::<usize>()
            + UNIT
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TaskFilesError {
        let path = path.to_path_buf();
        move |source| TaskFilesError::Io { op, path, source }
    }

    fn nix_io(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> TaskFilesError {
        let path = path.to_path_buf();
        move |e| TaskFilesError::Io {
            op,
            path,
            source: std::io::Error::from(e),
        }
    }

    fn flags() -> MsFlags {
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC
    }

    pub(super) fn prepare(
        root: &Path,
        task_id: &str,
        files: &[TaskFile],
    ) -> Result<Vec<PathBuf>, TaskFilesError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io("create", root))?;
        let dir = root.join(task_id);
        // A store from an earlier attempt (or an earlier run) is made again, whole.
        release(&dir)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        let made = fill(&dir, files);
        if made.is_err() {
            let _ = release(&dir);
        }
        made
    }

    fn fill(dir: &Path, files: &[TaskFile]) -> Result<Vec<PathBuf>, TaskFilesError> {
        let data = format!("mode=0700,size={}", tmpfs_size(files));
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            flags(),
            Some(data.as_str()),
        )
        .map_err(nix_io("mount a tmpfs on", dir))?;
        for kind in [FileKind::Secret, FileKind::Config] {
            let sub = dir.join(store_dir(kind));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&sub)
                .map_err(io("create", &sub))?;
        }
        let mut paths = Vec::with_capacity(files.len());
        for f in files {
            let path = dir.join(f.store_path());
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("create", &path))?;
            file.write_all(&f.data).map_err(io("write", &path))?;
            // The owner first: changing it clears set-id bits a mode could have set.
            fchown(
                &file,
                Some(Uid::from_raw(f.uid)),
                Some(Gid::from_raw(f.gid)),
            )
            .map_err(nix_io("change the owner of", &path))?;
            file.set_permissions(std::fs::Permissions::from_mode(f.mode))
                .map_err(io("change the mode of", &path))?;
            paths.push(path);
        }
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            flags() | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(nix_io("remount read-only", dir))?;
        Ok(paths)
    }

    /// Whether `dir` is the root of a mount: its device differs from its parent's.
    fn is_mount_point(dir: &Path) -> Result<bool, TaskFilesError> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let own = std::fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
        let up = std::fs::metadata(parent).map_err(io("inspect", parent))?;
        Ok(own.dev() != up.dev())
    }

    /// More mounts than this on one store means something else mounts there: stop.
    const MAX_STACKED: usize = 8;

    pub(super) fn release(dir: &Path) -> Result<(), TaskFilesError> {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("inspect", dir)(e)),
            Ok(m) if !m.is_dir() => {
                return std::fs::remove_file(dir).map_err(io("remove", dir));
            }
            Ok(_) => {}
        }
        // Detached rather than refused while in use: a container still running keeps
        // its bind-mounted files until it goes, the host path goes now. Mounts stacked
        // by an earlier crash come off one by one.
        for _ in 0..MAX_STACKED {
            if !is_mount_point(dir)? {
                break;
            }
            match umount2(dir, MntFlags::MNT_DETACH) {
                Ok(()) => {}
                Err(nix::errno::Errno::EINVAL) => break,
                Err(e) => return Err(nix_io("unmount", dir)(e)),
            }
        }
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(io("remove", dir)),
        }
    }

    pub(super) fn sweep(
        root: &Path,
        keep: &BTreeSet<String>,
    ) -> Result<Vec<String>, TaskFilesError> {
        let entries = match std::fs::read_dir(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(io("list", root))?,
        };
        let mut released = Vec::new();
        let mut failed = None;
        for entry in entries {
            let entry = entry.map_err(io("list", root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            match release(&entry.path()) {
                Ok(()) => released.push(name),
                // The others are still worth releasing.
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }
}

/// Stands for a node that cannot deliver files: tasks that need some are rejected, with
/// the reason. An executor uses it until given real stores.
#[derive(Debug, Clone, Default)]
pub struct NoTaskFiles;

#[async_trait]
impl TaskFiles for NoTaskFiles {
    async fn prepare(
        &self,
        _task_id: &str,
        _files: &[TaskFile],
    ) -> Result<Vec<PathBuf>, TaskFilesError> {
        Err(TaskFilesError::Unavailable(
            "the executor has no store for task files".into(),
        ))
    }

    async fn release(&self, _task_id: &str) -> Result<(), TaskFilesError> {
        Ok(())
    }

    async fn sweep(&self, _keep: &BTreeSet<String>) -> Result<Vec<String>, TaskFilesError> {
        Ok(Vec::new())
    }
}

/// One call recorded by [`FakeTaskFiles`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesCall {
    /// Task id and number of files.
    Prepare(String, usize),
    Release(String),
    Sweep(BTreeSet<String>),
}

#[derive(Debug, Default)]
struct FakeState {
    stores: BTreeMap<String, Vec<(PathBuf, TaskFile)>>,
    calls: Vec<FilesCall>,
    fail: Option<String>,
}

/// In-memory stores for tests: paths are made up (`/fake/TASK/secrets/N`), nothing is
/// mounted or written.
#[derive(Debug, Default, Clone)]
pub struct FakeTaskFiles {
    state: Arc<Mutex<FakeState>>,
}

/// The made-up root of [`FakeTaskFiles`].
pub const FAKE_ROOT: &str = "/fake";

impl FakeTaskFiles {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `prepare` fail with this message (`None`: succeed).
    pub fn set_prepare_error(&self, message: Option<&str>) {
        self.lock().fail = message.map(str::to_string);
    }

    /// The files of a task's store, with their paths.
    pub fn store(&self, task_id: &str) -> Option<Vec<(PathBuf, TaskFile)>> {
        self.lock().stores.get(task_id).cloned()
    }

    /// The tasks that have a store.
    pub fn tasks(&self) -> Vec<String> {
        self.lock().stores.keys().cloned().collect()
    }

    pub fn calls(&self) -> Vec<FilesCall> {
        self.lock().calls.clone()
    }
}

#[async_trait]
impl TaskFiles for FakeTaskFiles {
    async fn prepare(
        &self,
        task_id: &str,
        files: &[TaskFile],
    ) -> Result<Vec<PathBuf>, TaskFilesError> {
        check_task_id(task_id)?;
        let mut st = self.lock();
        st.calls
            .push(FilesCall::Prepare(task_id.to_string(), files.len()));
        if let Some(message) = st.fail.clone() {
            return Err(TaskFilesError::Unavailable(message));
        }
        let dir = Path::new(FAKE_ROOT).join(task_id);
        let store: Vec<(PathBuf, TaskFile)> = files
            .iter()
            .map(|f| (dir.join(f.store_path()), f.clone()))
            .collect();
        let paths = store.iter().map(|(p, _)| p.clone()).collect();
        st.stores.insert(task_id.to_string(), store);
        Ok(paths)
    }

    async fn release(&self, task_id: &str) -> Result<(), TaskFilesError> {
        let mut st = self.lock();
        st.calls.push(FilesCall::Release(task_id.to_string()));
        st.stores.remove(task_id);
        Ok(())
    }

    async fn sweep(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, TaskFilesError> {
        let mut st = self.lock();
        st.calls.push(FilesCall::Sweep(keep.clone()));
        let gone: Vec<String> = st
            .stores
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in &gone {
            st.stores.remove(id);
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests;
