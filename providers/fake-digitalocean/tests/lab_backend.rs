//! The lab backend on its own: droplets become lab nodes that answer SSH with the host key
//! their user data filed under their name, power off and on, and leave nothing once
//! deleted, one at a time or the last of them.
//!
//! Needs SWARMUP_E2E=1, root, dockerd, sshd, iproute2 and ssh-keyscan; without it the test
//! prints `skipped: …`.
#![cfg(target_os = "linux")]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fake_digitalocean::{DropletBackend, DropletSpec, LabBackend};
use swarmup_providers::lab::naming::ClusterNames;
use swarmup_providers::lab::NodeInit;
use swarmup_providers::Provider;

fn e2e_enabled(test: &str) -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: {test} needs SWARMUP_E2E=1, root, dockerd, sshd and iproute2");
        false
    }
}

/// `swarmup-lab-node` from this build: next to the test's target directory, built when
/// missing.
fn lab_node_program() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let program = profile.join("swarmup-lab-node");
    if !program.is_file() {
        let status = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "swarmup-providers",
                "--bin",
                "swarmup-lab-node",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    program
}

/// An ed25519 key pair made by ssh-keygen: (private, public).
fn keypair(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{out:?}");
    (
        std::fs::read_to_string(&path).unwrap(),
        std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string(),
    )
}

/// `ssh-ed25519 AAAA...` without the comment, as a server shows its key.
fn bare(public: &str) -> Option<String> {
    Some(public.split(' ').take(2).collect::<Vec<_>>().join(" "))
}

/// The host key the SSH server on `addr` shows, as `ssh-ed25519 AAAA...`.
fn host_key_of(addr: IpAddr) -> Option<String> {
    let out = Command::new("ssh-keyscan")
        .args(["-T", "5", "-t", "ed25519"])
        .arg(addr.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| !l.starts_with('#'))
        .and_then(|l| l.split_once(' '))
        .map(|(_, key)| key.trim().to_string())
}

fn answers_ssh(addr: IpAddr) -> bool {
    std::net::TcpStream::connect_timeout(&SocketAddr::new(addr, 22), Duration::from_secs(1)).is_ok()
}

fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn netns_of(names: &ClusterNames) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| names.owns_netns(n))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn droplets_are_lab_nodes_with_their_filed_host_keys() {
    if !e2e_enabled("droplets_are_lab_nodes_with_their_filed_host_keys") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lab");
    let backend = LabBackend::with_root(
        &root,
        NodeInit {
            program: lab_node_program(),
            args: vec![],
        },
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = "lbt";
    let names = ClusterNames::new(&root, cluster);
    let (_, login) = keypair(dir.path(), "login");
    let hosts: Vec<(String, (String, String))> = (1..=2)
        .map(|i| {
            let name = format!("{cluster}-node{i}");
            let key = keypair(dir.path(), &name);
            (name, key)
        })
        .collect();
    // One text for both droplets, as one create call sends it.
    let user_data = swarmup_templates::cloud_init_for_machines(
        &swarmup_templates::MachinesCloudInitContext::new(
            login.clone(),
            hosts
                .iter()
                .map(
                    |(name, (private, public))| swarmup_templates::MachineHostKey {
                        hostname: name.clone(),
                        host_key_private: private.clone(),
                        host_key_public: public.clone(),
                    },
                )
                .collect(),
        ),
    )
    .unwrap();
    let spec = |id: u64, name: &str| DropletSpec {
        id,
        name: name.to_string(),
        region: "nyc3".into(),
        size: "s-1vcpu-1gb".into(),
        image: "ubuntu-24-04-x64".into(),
        tags: vec!["swarmup".into(), format!("swarmup:{cluster}")],
        user_data: Some(user_data.clone()),
        ssh_public_keys: vec![],
        vpc_ip_range: "10.108.0.0/20".into(),
    };
    let one = spec(1, &hosts[0].0);
    let two = spec(2, &hosts[1].0);

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Both at once, as the fake boots the droplets of one call.
        let (a, b) = rt
            .block_on(async { tokio::try_join!(backend.create(&one), backend.create(&two)) })
            .expect("lab nodes made");
        assert_eq!(a.public_ipv4, a.private_ipv4);
        assert_ne!(a.public_ipv4, b.public_ipv4);
        let (a, b) = (IpAddr::V4(a.public_ipv4), IpAddr::V4(b.public_ipv4));
        assert_eq!(host_key_of(a), bare(&hosts[0].1 .1));
        assert_eq!(host_key_of(b), bare(&hosts[1].1 .1));
        let node = rt
            .block_on(backend.lab().node(cluster, &hosts[0].0))
            .unwrap();
        let keys = std::fs::read_to_string(node.dir.join("root/.ssh/authorized_keys")).unwrap();
        assert!(keys.contains(&login), "{keys}");

        rt.block_on(backend.power(&one, false)).unwrap();
        wait("node1 to stop answering", || !answers_ssh(a));
        rt.block_on(backend.power(&one, true)).unwrap();
        wait("node1 to answer again", || answers_ssh(a));

        // Not the last: only this node goes, the other keeps running.
        rt.block_on(backend.delete(&one)).unwrap();
        assert!(!answers_ssh(a));
        assert_eq!(netns_of(&names), vec![names.netns(&hosts[1].0)]);
        assert!(!node.dir.exists(), "{} left", node.dir.display());
        assert!(answers_ssh(b));
        // The same name again starts afresh.
        let again = rt.block_on(backend.create(&spec(3, &hosts[0].0))).unwrap();
        let again = IpAddr::V4(again.public_ipv4);
        assert_eq!(host_key_of(again), bare(&hosts[0].1 .1));

        // The last ones: the whole lab cluster goes.
        rt.block_on(backend.delete(&spec(3, &hosts[0].0))).unwrap();
        rt.block_on(backend.delete(&two)).unwrap();
        assert!(rt.block_on(backend.lab().clusters()).unwrap().is_empty());
        assert!(netns_of(&names).is_empty());
        assert!(!Path::new("/sys/class/net").join(&names.bridge).exists());
        // A droplet deleted before its node was made has nothing to remove.
        rt.block_on(backend.delete(&spec(4, "lbt-node9"))).unwrap();
    }));
    let cleaned = rt.block_on(backend.destroy_all());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert_eq!(cleaned.unwrap(), Vec::<String>::new());
}
