//! Local files, written so that a crash never leaves half a file behind.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::AsyncWriteExt;

/// Writes `bytes` to `path` with permission bits `mode` through a temporary file in the
/// same directory and one rename. Missing parent directories are created 0700, since
/// they usually hold keys.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::env::current_dir()?,
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .await?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".swarmup-tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = tokio::fs::remove_file(&tmp).await;
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .await?;
        file.write_all(bytes).await?;
        // The umask may have narrowed the mode; the caller asked for exactly this one.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
