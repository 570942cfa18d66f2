//! The managed block in the user's `~/.ssh/config`, so that `ssh CLUSTER-nodeN` works.
//!
//! The block lives in the file itself (no `Include`), between `# BEGIN swarmup CLUSTER`
//! and `# END swarmup CLUSTER`. It goes at the top of the file, because ssh keeps the
//! first value it reads for most options and a user's `Host *` defaults must not
//! override the cluster's key or known_hosts file. It ends with `Host *`, so that the
//! user's own lines after it still apply to every host. Lines outside the block are
//! never changed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use swarmup_machine::Machine;
use swarmup_templates::{ssh_block_begin, ssh_block_end, SshConfigContext, SshHost};

use crate::error::BootstrapError;
use crate::fsutil::write_atomic;
use crate::ssh::SshOptions;

/// `$HOME/.ssh/config`.
pub fn default_ssh_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".ssh").join("config"))
}

/// The managed block for `machines`: one `Host` per machine, named by the machine.
pub fn render_ssh_config_block(
    cluster: &str,
    machines: &[Machine],
    ssh: &SshOptions,
) -> Result<String, BootstrapError> {
    let path_text = |p: &Path, what: &str| {
        p.to_str().map(str::to_string).ok_or_else(|| {
            BootstrapError::Invalid(format!(
                "{what} path {} is not valid UTF-8: use a plainer path",
                p.display()
            ))
        })
    };
    let identity_file = path_text(&ssh.identity_file, "identity file")?;
    let known_hosts_file = path_text(&ssh.known_hosts_file, "known_hosts file")?;
    let ctx = SshConfigContext {
        cluster: cluster.to_string(),
        hosts: machines
            .iter()
            .map(|m| SshHost {
                alias: m.name.clone(),
                host_name: m.ssh.host.to_string(),
                port: m.ssh.port,
                user: m.ssh.user.clone(),
                identity_file: identity_file.clone(),
                known_hosts_file: known_hosts_file.clone(),
            })
            .collect(),
    };
    Ok(swarmup_templates::ssh_config_block(&ctx)?)
}

/// Returns `existing` with the block of `cluster` replaced by `block`, inserted at the
/// top when there was none, or removed when `block` is `None`.
pub fn splice_block(
    existing: &str,
    cluster: &str,
    block: Option<&str>,
) -> Result<String, BootstrapError> {
    let begin = ssh_block_begin(cluster);
    let end = ssh_block_end(cluster);
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let is = |line: &str, marker: &str| line.trim_end() == marker;

    // Every [begin, end] range of this cluster: a file edited by hand may hold two.
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if is(lines[i], &begin) {
            let close = (i + 1..lines.len())
                .find(|&j| is(lines[j], &end))
                .ok_or_else(|| {
                    BootstrapError::Invalid(format!(
                        "line {} has '{begin}' but no '{end}' follows: fix the SSH config by hand",
                        i + 1
                    ))
                })?;
            ranges.push((i, close));
            i = close + 1;
        } else {
            if is(lines[i], &end) {
                return Err(BootstrapError::Invalid(format!(
                    "line {} has '{end}' without '{begin}' before it: fix the SSH config by hand",
                    i + 1
                )));
            }
            i += 1;
        }
    }

    let block = block.map(|b| {
        if b.ends_with('\n') {
            b.to_string()
        } else {
            format!("{b}\n")
        }
    });

    if ranges.is_empty() {
        return Ok(match block {
            None => existing.to_string(),
            Some(block) if existing.is_empty() => block,
            Some(block) => format!("{block}\n{existing}"),
        });
    }

    let mut out = String::with_capacity(existing.len() + block.as_ref().map_or(0, String::len));
    let mut next = 0;
    for (n, &(start, stop)) in ranges.iter().enumerate() {
        out.extend(lines[next..start].iter().copied());
        next = stop + 1;
        match (&block, n) {
            (Some(block), 0) => out.push_str(block),
            // The blank line after a removed block is the separator swarmup added.
            _ => {
                if lines.get(next).is_some_and(|l| l.trim().is_empty()) {
                    next += 1;
                }
            }
        }
    }
    out.extend(lines[next..].iter().copied());
    Ok(out)
}

/// Writes or replaces the block of `cluster` in the SSH config at `path`. A missing file
/// is created 0600 (and its directory 0700). Returns whether the file changed.
pub async fn write_ssh_config_block(
    path: &Path,
    cluster: &str,
    block: &str,
) -> Result<bool, BootstrapError> {
    edit(path, cluster, Some(block)).await
}

/// Removes the block of `cluster` from the SSH config at `path`, if it is there.
/// Returns whether the file changed.
pub async fn remove_ssh_config_block(path: &Path, cluster: &str) -> Result<bool, BootstrapError> {
    edit(path, cluster, None).await
}

async fn edit(path: &Path, cluster: &str, block: Option<&str>) -> Result<bool, BootstrapError> {
    // A symlinked config (dotfile managers) is edited where it points, so the link stays.
    let target = match tokio::fs::canonicalize(path).await {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(BootstrapError::io(format!("reading {}", path.display()), e)),
    };
    let (existing, mode) = match tokio::fs::read(&target).await {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| {
                BootstrapError::Invalid(format!(
                    "{} is not UTF-8 text: swarmup cannot edit it",
                    target.display()
                ))
            })?;
            let mode = tokio::fs::metadata(&target)
                .await
                .map_err(|e| BootstrapError::io(format!("reading {}", target.display()), e))?
                .permissions()
                .mode()
                & 0o7777;
            (Some(text), mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0o600),
        Err(e) => {
            return Err(BootstrapError::io(
                format!("reading {}", target.display()),
                e,
            ))
        }
    };
    if existing.is_none() && block.is_none() {
        return Ok(false);
    }
    let old = existing.unwrap_or_default();
    let new = splice_block(&old, cluster, block)
        .map_err(|e| BootstrapError::Invalid(format!("{}: {e}", target.display())))?;
    if new == old && tokio::fs::try_exists(&target).await.unwrap_or(false) {
        return Ok(false);
    }
    write_atomic(&target, new.as_bytes(), mode)
        .await
        .map_err(|e| BootstrapError::io(format!("writing {}", target.display()), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_V1: &str =
        "# BEGIN swarmup c1\nHost c1-node1\n    HostName 10.0.0.2\nHost *\n# END swarmup c1\n";
    const BLOCK_V2: &str = "# BEGIN swarmup c1\nHost c1-node1\n    HostName 10.0.0.9\nHost c1-node2\n    HostName 10.0.0.3\nHost *\n# END swarmup c1\n";
    const USER: &str = "# my settings\nServerAliveInterval 30\n\nHost work\n    HostName work.example.com\n    User ann\n";

    #[test]
    fn insert_goes_on_top_and_keeps_user_lines() {
        let out = splice_block(USER, "c1", Some(BLOCK_V1)).unwrap();
        assert_eq!(out, format!("{BLOCK_V1}\n{USER}"));
    }

    #[test]
    fn insert_into_empty_file() {
        assert_eq!(splice_block("", "c1", Some(BLOCK_V1)).unwrap(), BLOCK_V1);
    }

    #[test]
    fn replace_in_place() {
        let first = splice_block(USER, "c1", Some(BLOCK_V1)).unwrap();
        let second = splice_block(&first, "c1", Some(BLOCK_V2)).unwrap();
        assert_eq!(second, format!("{BLOCK_V2}\n{USER}"));
        // Same block again: nothing moves.
        assert_eq!(splice_block(&second, "c1", Some(BLOCK_V2)).unwrap(), second);
    }

    #[test]
    fn replace_keeps_user_lines_around_a_block_in_the_middle() {
        let text = format!("Host a\n    User x\n{BLOCK_V1}Host b\n    User y\n");
        let out = splice_block(&text, "c1", Some(BLOCK_V2)).unwrap();
        assert_eq!(
            out,
            format!("Host a\n    User x\n{BLOCK_V2}Host b\n    User y\n")
        );
    }

    #[test]
    fn remove_restores_the_original() {
        let with = splice_block(USER, "c1", Some(BLOCK_V1)).unwrap();
        assert_eq!(splice_block(&with, "c1", None).unwrap(), USER);
        // Removing again, or removing a block that was never there, changes nothing.
        assert_eq!(splice_block(USER, "c1", None).unwrap(), USER);
    }

    #[test]
    fn other_clusters_are_left_alone() {
        let c2 = BLOCK_V1.replace("c1", "c2");
        let text = splice_block(USER, "c2", Some(&c2)).unwrap();
        let text = splice_block(&text, "c1", Some(BLOCK_V1)).unwrap();
        assert_eq!(text, format!("{BLOCK_V1}\n{c2}\n{USER}"));
        let text = splice_block(&text, "c1", None).unwrap();
        assert_eq!(text, format!("{c2}\n{USER}"));
        // "c1" must not match "c10".
        let c10 = BLOCK_V1.replace("c1", "c10");
        let text = splice_block(&c10, "c1", None).unwrap();
        assert_eq!(text, c10);
    }

    #[test]
    fn duplicate_blocks_collapse_into_one() {
        let text = format!("{BLOCK_V1}\nHost a\n{BLOCK_V1}\nHost b\n");
        let out = splice_block(&text, "c1", Some(BLOCK_V2)).unwrap();
        assert_eq!(out, format!("{BLOCK_V2}\nHost a\nHost b\n"));
    }

    #[test]
    fn unterminated_block_is_an_error() {
        let text = "# BEGIN swarmup c1\nHost c1-node1\n";
        let err = splice_block(text, "c1", Some(BLOCK_V1))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "line 1 has '# BEGIN swarmup c1' but no '# END swarmup c1' follows: fix the SSH config by hand"
        );
    }

    #[tokio::test]
    async fn file_is_created_private_and_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dot-ssh/config");
        assert!(write_ssh_config_block(&path, "c1", BLOCK_V1).await.unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert!(!write_ssh_config_block(&path, "c1", BLOCK_V1).await.unwrap());

        std::fs::write(&path, format!("{BLOCK_V1}\n{USER}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(write_ssh_config_block(&path, "c1", BLOCK_V2).await.unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{BLOCK_V2}\n{USER}")
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the user's own mode is kept");

        assert!(remove_ssh_config_block(&path, "c1").await.unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), USER);
        assert!(!remove_ssh_config_block(&path, "c1").await.unwrap());
    }

    #[tokio::test]
    async fn symlinked_config_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles-ssh-config");
        std::fs::write(&real, USER).unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_ssh_config_block(&link, "c1", BLOCK_V1).await.unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            format!("{BLOCK_V1}\n{USER}")
        );
    }

    #[tokio::test]
    async fn removing_from_a_missing_file_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        assert!(!remove_ssh_config_block(&path, "c1").await.unwrap());
        assert!(!path.exists());
    }
}
