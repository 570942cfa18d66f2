//! Blocking file helpers shared by the log store and the state machine.
//!
//! Every function here blocks: call them from the log writer thread or `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new
/// content, never a mix: write a temporary file, fsync it, rename it over the target and
/// fsync the directory so the rename itself is durable.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::at_rest::FILE_MODE)
            .open(&tmp)
            .map_err(|e| with_path(e, &tmp))?;
        f.write_all(bytes).map_err(|e| with_path(e, &tmp))?;
        f.sync_all().map_err(|e| with_path(e, &tmp))?;
    }
    fs::rename(&tmp, &target).map_err(|e| with_path(e, &target))?;
    sync_dir(dir)
}

/// Makes renames and file creations inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, dir))
}

/// Reads `dir/name`, `None` when it does not exist.
pub(crate) fn read_optional(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(e, &path)),
    }
}

/// Adds the path to an I/O error, which std leaves out.
pub(crate) fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
