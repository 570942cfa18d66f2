//! Secrets at rest: the cluster's root CA key and join tokens live in the replicated state,
//! so they are in the Raft journal and snapshots on every manager. A local user who can
//! read them can sign an admin certificate and own every node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        }
        out.push(path);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Runs `cat PATH` as the unprivileged user `nobody`.
fn cat_as_nobody(path: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .unwrap()
}

/// The attack: a local user without privileges reads `raft/` on a manager, looking for the
/// join tokens and the CA key. Every file must be closed to them, and even root reading the
/// files must not find the secrets in clear. State left world-readable (as older versions
/// made it) is closed again when the node starts.
#[test]
fn local_user_cannot_read_the_journal_and_it_holds_no_secret_in_clear() {
    if !e2e_enabled("local_user_cannot_read_the_journal") {
        return;
    }
    let mut sandbox = Sandbox::new(&["m1"]);
    // Open every directory above the state directory, so only swarm-node's own modes
    // stand between a local user and the files.
    for dir in [sandbox.root.path(), sandbox.nodes[0].dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    sandbox.init("1s");
    let m1 = &mut sandbox.nodes[0];
    m1.docker_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "0",
        IMAGE,
    ]);
    let token = {
        let out = m1.verb(&["join-token", "-q", "worker"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let secret = token.rsplit('-').next().unwrap().to_string();
    let state = m1.dir.join("state");

    let check = |state: &Path| {
        let mut files = vec![];
        walk(state, &mut files);
        assert_eq!(mode(state), 0o700, "{}", state.display());
        let mut journal_files = 0;
        for path in &files {
            let m = mode(path);
            if path.is_dir() {
                assert_eq!(m, 0o700, "directory {} is {m:o}", path.display());
                continue;
            }
            assert_eq!(m & 0o077, 0, "file {} is {m:o}", path.display());
            let out = cat_as_nobody(path);
            assert!(
                !out.status.success(),
                "nobody could read {}",
                path.display()
            );
            if path.starts_with(state.join("raft")) {
                journal_files += 1;
                let bytes = std::fs::read(path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains(&secret),
                    "the join token's secret is in clear in {}",
                    path.display()
                );
                assert!(
                    !text.contains("PRIVATE KEY"),
                    "a private key is in clear in {}",
                    path.display()
                );
            }
        }
        assert!(journal_files > 0, "no Raft files under {}", state.display());
    };
    check(&state);

    // State as an older version left it: world-readable. A restart closes it again and
    // the encrypted journal replays.
    m1.stop();
    let mut files = vec![];
    walk(&state, &mut files);
    for path in files.iter().chain(std::iter::once(&state)) {
        let m = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
    }
    m1.start();
    wait_for(
        "the service after a restart",
        Duration::from_secs(30),
        || {
            m1.docker(&["service", "ls", "-q", "--filter", "name=web"])
                .stdout
                .len()
                > 1
        },
    );
    check(&state);
}
