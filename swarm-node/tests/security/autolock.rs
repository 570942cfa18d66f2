//! Autolock: a manager's disk, copied or read by someone without the unlock key, must not
//! open the Raft data (which holds the CA key and the join tokens). With autolock on, a
//! restarted manager stays locked until `docker swarm unlock` gets the right key.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::*;

const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";
/// Length of a data key file in clear, and wrapped by an unlock key.
const CLEAR_LEN: usize = 42;
const WRAPPED_LEN: usize = 70;

fn key_file(node: &TestNode) -> PathBuf {
    node.dir.join("state/raft/data.key")
}

fn key_bytes(node: &TestNode) -> Vec<u8> {
    std::fs::read(key_file(node)).unwrap_or_default()
}

fn is_wrapped(bytes: &[u8]) -> bool {
    bytes.len() == WRAPPED_LEN && bytes.starts_with(b"SWDK") && bytes[5] == 1
}

fn is_clear(bytes: &[u8]) -> bool {
    bytes.len() == CLEAR_LEN && bytes.starts_with(b"SWDK") && bytes[5] == 0
}

fn assert_private(node: &TestNode) {
    let mode = std::fs::metadata(key_file(node))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", key_file(node).display());
}

/// `docker swarm unlock` on `node` with `key` on its standard input, as a script does.
fn unlock(node: &TestNode, key: &str) -> Output {
    let mut child = Command::new(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", node.socket().display()))
        .args(["swarm", "unlock"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn local_state(node: &TestNode) -> String {
    node.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .trim()
        .to_string()
}

/// The unlock key in what `docker swarm update --autolock=true` or `swarm-node init
/// --autolock` printed.
fn key_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in {text:?}"))
        .to_string()
}

/// Restarts `node` and checks that it comes back locked, serving only what unlocking needs.
fn restart_locked(node: &mut TestNode) {
    node.stop();
    node.start();
    wait_for("the locked API", Duration::from_secs(20), || {
        node.docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .status
            .success()
    });
    assert_eq!(local_state(node), "locked");
    let err = node.docker_err(&["node", "ls"]);
    assert!(err.contains(LOCKED), "{err}");
    let err = node.docker_err(&["service", "ls"]);
    assert!(err.contains(LOCKED), "{err}");
    // The engine part is not locked, as with Docker.
    let version = node.docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(
        version.status.success(),
        "docker version on a locked node: {version:?}"
    );
}

/// Waits until `node` runs as a manager again and sees `managers` ready managers.
fn wait_manager(node: &TestNode, managers: usize) {
    wait_for(
        &format!("{} listing {managers} ready managers", node.name),
        Duration::from_secs(60),
        || {
            let out = node.docker(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            out.status.success()
                && text
                    .lines()
                    .filter(|l| {
                        l.starts_with("Ready")
                            && (l.ends_with("Leader") || l.ends_with("Reachable"))
                    })
                    .count()
                    == managers
        },
    );
}

/// The attack: someone with a manager's disk (a stolen backup, a decommissioned machine)
/// restarts it to read the swarm's secrets. With autolock, the data key on disk is
/// wrapped by a key only the operator holds; the restarted manager serves nothing until
/// it gets that key, wrong keys change nothing, a rotated key retires the old one, and
/// turning autolock off lets managers restart alone again.
#[test]
fn a_restarted_manager_stays_locked_without_the_unlock_key() {
    if !e2e_enabled("a_restarted_manager_stays_locked_without_the_unlock_key") {
        return;
    }
    let mut sandbox = Sandbox::new(&["m1", "m2", "m3"]);
    sandbox.init("1s");
    sandbox.join(1, "manager");
    sandbox.join(2, "manager");
    wait_manager(&sandbox.nodes[0], 3);

    // Autolock off: no key to show or rotate, in the docker CLI's words.
    let m1 = &sandbox.nodes[0];
    let err = m1.docker_err(&["swarm", "unlock-key"]);
    assert!(err.contains("no unlock key is set"), "{err}");
    let err = m1.docker_err(&["swarm", "unlock-key", "--rotate"]);
    assert!(err.contains("autolock is not turned on"), "{err}");
    let err = String::from_utf8_lossy(&unlock(m1, "SWMKEY-1-x").stderr).to_string();
    assert!(err.contains("swarm is not locked"), "{err}");

    // Autolock on: the CLI prints the key, the spec shows it, and every manager wraps
    // its data key.
    let printed = m1.docker_ok(&["swarm", "update", "--autolock=true"]);
    let key = key_in(&printed);
    assert!(printed.contains("docker swarm unlock"), "{printed}");
    assert_eq!(
        m1.docker_ok(&["swarm", "unlock-key", "-q"]).trim(),
        key,
        "unlock-key shows the key update printed"
    );
    assert_eq!(
        m1.docker_ok(&[
            "info",
            "--format",
            "{{.Swarm.Cluster.Spec.EncryptionConfig.AutoLockManagers}}"
        ])
        .trim(),
        "true"
    );
    for n in &sandbox.nodes {
        wait_for(
            &format!("{}'s data key wrapped", n.name),
            Duration::from_secs(30),
            || is_wrapped(&key_bytes(n)),
        );
        assert_private(n);
    }

    // Restarted, m2 is locked; a malformed and a wrong key are refused and change nothing.
    let m2 = &mut sandbox.nodes[1];
    restart_locked(m2);
    let wrapped = key_bytes(m2);
    let out = unlock(m2, "not-a-key");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("invalid key string"), "{err}");
    let wrong = format!("SWMKEY-1-{}", "A".repeat(43));
    let out = unlock(m2, &wrong);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("invalid key provided"), "{err}");
    assert_eq!(key_bytes(m2), wrapped, "a wrong key changed the key file");
    assert_private(m2);
    assert_eq!(local_state(m2), "locked");

    // The right key: m2 runs again without a restart and rejoins.
    let out = unlock(m2, &key);
    assert!(
        out.status.success(),
        "unlock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_manager(m2, 3);
    assert_eq!(local_state(m2), "active");
    let err = String::from_utf8_lossy(&unlock(m2, &key).stderr).to_string();
    assert!(err.contains("swarm is not locked"), "{err}");

    // Rotation: a new key, which every manager rewraps with; the old one stops working.
    let before = key_bytes(&sandbox.nodes[1]);
    let rotated = sandbox.nodes[0].docker_ok(&["swarm", "unlock-key", "--rotate", "-q"]);
    let rotated = rotated.trim().to_string();
    assert!(
        rotated.starts_with("SWMKEY-1-") && rotated != key,
        "{rotated}"
    );
    let m2 = &mut sandbox.nodes[1];
    wait_for("m2's data key rewrapped", Duration::from_secs(30), || {
        let now = key_bytes(m2);
        is_wrapped(&now) && now != before
    });
    restart_locked(m2);
    let out = unlock(m2, &key);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("invalid key provided"),
        "the old key still unlocks: {err}"
    );
    let out = unlock(m2, &rotated);
    assert!(
        out.status.success(),
        "unlock with the rotated key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_manager(m2, 3);
    // And it follows the log again: a change made elsewhere reaches it.
    sandbox.nodes[0].docker_ok(&["swarm", "join-token", "--rotate", "worker"]);
    let token = sandbox.nodes[0].docker_ok(&["swarm", "join-token", "-q", "worker"]);
    wait_for(
        "m2 to see the new join token",
        Duration::from_secs(30),
        || {
            sandbox.nodes[1]
                .docker(&["swarm", "join-token", "-q", "worker"])
                .stdout
                == token.as_bytes()
        },
    );

    // Autolock off: the key files are in clear again and a restart needs no key.
    sandbox.nodes[0].docker_ok(&["swarm", "update", "--autolock=false"]);
    let err = sandbox.nodes[0].docker_err(&["swarm", "unlock-key"]);
    assert!(err.contains("no unlock key is set"), "{err}");
    for n in &sandbox.nodes {
        wait_for(
            &format!("{}'s data key in clear", n.name),
            Duration::from_secs(30),
            || is_clear(&key_bytes(n)),
        );
        assert_private(n);
    }
    let m2 = &mut sandbox.nodes[1];
    m2.stop();
    m2.start();
    wait_manager(m2, 3);
    assert_eq!(local_state(m2), "active");
}

/// `swarm-node init --autolock` prints the key as `docker swarm init --autolock` does, and
/// the first manager's data key is wrapped from its first run on.
#[test]
fn init_with_autolock_prints_the_key_and_locks_the_first_manager() {
    if !e2e_enabled("init_with_autolock_prints_the_key_and_locks_the_first_manager") {
        return;
    }
    let mut sandbox = Sandbox::new(&["m1"]);
    let m1 = &mut sandbox.nodes[0];
    let addr = m1.addr();
    let out = m1.verb(&[
        "init",
        "--autolock",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
        "--dispatcher-heartbeat",
        "1s",
    ]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("To unlock a swarm manager after it restarts"),
        "{printed}"
    );
    let key = key_in(&printed);
    m1.start();
    wait_manager(m1, 1);
    assert_eq!(m1.docker_ok(&["swarm", "unlock-key", "-q"]).trim(), key);
    // `GET /swarm`, as Docker's SDKs read it.
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(m1.socket())
        .arg("http://localhost/v1.41/swarm")
        .output()
        .unwrap();
    let swarm: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        swarm["Spec"]["EncryptionConfig"]["AutoLockManagers"], true,
        "{swarm}"
    );
    wait_for("the data key wrapped", Duration::from_secs(30), || {
        is_wrapped(&key_bytes(m1))
    });
    restart_locked(m1);
    let out = unlock(m1, &key);
    assert!(
        out.status.success(),
        "unlock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_manager(m1, 1);
}
