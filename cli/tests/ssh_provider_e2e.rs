//! `swarmup create --provider ssh` on machines swarmup did not make: three lab nodes made
//! directly through the lab provider, outside any swarmup record, stand in for the user's
//! own machines. Their host keys are pinned from a hashed known_hosts file and from a
//! fingerprint; an unknown key is refused; the swarm comes up Ready; `destroy` removes
//! what swarmup installed and leaves the machines reachable over SSH.
//!
//! Needs SWARMUP_E2E=1, root, dockerd, sshd and iproute2; without it prints `skipped: …`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    assert_nothing_created, assert_refused, e2e_enabled, ensure_swarm_node, run_bounded, serial,
    swarmup_bin, Sandbox,
};
use swarmup_providers::lab::{LabConfig, LabProvider, NodeInit};
use swarmup_providers::{ClusterPlan, Machine, MachinePlan, NoProgress, Provider, Role};

/// Destroys the lab nodes whatever happens to the test.
struct LabNodes {
    lab: LabProvider,
    cluster: String,
    runtime: tokio::runtime::Runtime,
}

impl Drop for LabNodes {
    fn drop(&mut self) {
        match self.runtime.block_on(self.lab.destroy(&self.cluster)) {
            Ok(report) => println!("lab nodes removed: {}", report.removed.len()),
            Err(e) => eprintln!("removing the lab nodes failed: {e}"),
        }
    }
}

/// `ssh root@IP SCRIPT` with the machines' own login key, as their owner would.
fn ssh(key: &Path, known_hosts: &Path, ip: &str, script: &str) -> support::Run {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("root@{ip}"))
        .arg(script);
    run_bounded(cmd, Duration::from_secs(60))
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn existing_machines_become_a_swarm_and_are_left_as_they_were() {
    if !e2e_enabled("ssh_provider_e2e") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let tag = format!("{:x}", std::process::id() & 0xffff);

    // Three machines with an owner's login key, made outside swarmup's records.
    let keys = tempfile::tempdir().unwrap();
    let login = swarmup_bootstrap::keys::generate_host_key("owner@laptop").unwrap();
    let login_key = keys.path().join("id_ed25519");
    write_private(&login_key, &login.private_openssh);
    let lab_cluster = format!("own-{tag}");
    let host_keys: Vec<_> = (1..=3)
        .map(|i| swarmup_bootstrap::keys::generate_host_key(&format!("m{i}")).unwrap())
        .collect();
    let plan = ClusterPlan {
        cluster: lab_cluster.clone(),
        machines: host_keys
            .iter()
            .enumerate()
            .map(|(i, k)| MachinePlan {
                name: format!("{lab_cluster}-m{}", i + 1),
                role: Role::Worker,
                host_key: k.clone(),
            })
            .collect(),
        login_public_key: login.public_openssh.clone(),
        tags: Vec::new(),
    };
    let root = tempfile::Builder::new()
        .prefix("swarmup-ssh-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let lab = LabProvider::new(LabConfig {
        root: root.path().to_path_buf(),
        init: NodeInit {
            program: PathBuf::from(swarmup_bin()),
            args: vec!["lab-node".into()],
        },
        boot_timeout: Duration::from_secs(90),
        offline: true,
        ..LabConfig::default()
    });
    let nodes = LabNodes {
        lab: lab.clone(),
        cluster: lab_cluster.clone(),
        runtime: tokio::runtime::Runtime::new().unwrap(),
    };
    nodes
        .runtime
        .block_on(lab.preflight(&plan))
        .expect("lab preflight");
    let made: Vec<Machine> = nodes
        .runtime
        .block_on(lab.create(&plan, &NoProgress))
        .expect("lab nodes");
    let ips: Vec<String> = made.iter().map(|m| m.ssh.host.to_string()).collect();

    // The owner's known_hosts, hashed as Debian's ssh does, knows the first two; the
    // third is pinned by its fingerprint.
    let plain_known = keys.path().join("plain_known_hosts");
    let lines: String = ips
        .iter()
        .zip(&host_keys)
        .map(|(ip, k)| format!("{ip} {}\n", k.public_openssh))
        .collect();
    std::fs::write(&plain_known, &lines).unwrap();
    let known = keys.path().join("known_hosts");
    std::fs::write(
        &known,
        lines.lines().take(2).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let mut hash = Command::new("ssh-keygen");
    hash.arg("-H").arg("-f").arg(&known);
    run_bounded(hash, Duration::from_secs(10)).expect_ok();
    let fingerprint =
        swarmup_bootstrap::existing::pin::fingerprint(&host_keys[2].public_openssh).unwrap();
    let authorized_before: Vec<String> = ips
        .iter()
        .map(|ip| {
            ssh(
                &login_key,
                &plain_known,
                ip,
                "cat /root/.ssh/authorized_keys",
            )
            .expect_ok()
        })
        .collect();

    let sb = Sandbox::new();
    let name = format!("sshp-{tag}");
    let hosts: Vec<String> = vec![
        format!("root@{}", ips[0]),
        ips[1].clone(),
        format!("third=root@{}", ips[2]),
    ];
    let mut args: Vec<String> = ["create", "--name", &name, "--provider", "ssh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for h in &hosts {
        args.extend(["--host".into(), h.clone()]);
    }
    args.extend(["--ssh-key".into(), login_key.display().to_string()]);
    let args_ref = |extra: &[&str]| -> Vec<String> {
        let mut a = args.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: &[String]| sb.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    // A create uploads swarm-node to every machine: give it the time a loaded host needs.
    let run_long = |a: &[String]| {
        run_bounded(
            sb.swarmup(&a.iter().map(String::as_str).collect::<Vec<_>>()),
            Duration::from_secs(600),
        )
    };

    // An unknown host key is refused in one line, and nothing is recorded or installed.
    let empty = keys.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let refused = run(&args_ref(&["--known-hosts", &empty.display().to_string()]));
    assert_refused(&refused, &format!("unknown host key for root@{}", ips[0]));
    assert!(
        refused.stderr.contains("--host-key-fingerprint"),
        "{refused}"
    );
    assert_nothing_created(&sb, &name);
    // A fingerprint that does not match is refused as well.
    let wrong =
        swarmup_bootstrap::existing::pin::fingerprint(&host_keys[0].public_openssh).unwrap();
    let refused = run(&args_ref(&[
        "--known-hosts",
        &known.display().to_string(),
        "--host-key-fingerprint",
        &format!("third={wrong}"),
    ]));
    assert_refused(&refused, "does not match --host-key-fingerprint");
    assert_nothing_created(&sb, &name);
    for (ip, before) in ips.iter().zip(&authorized_before) {
        let now = ssh(
            &login_key,
            &plain_known,
            ip,
            "cat /root/.ssh/authorized_keys",
        )
        .expect_ok();
        assert_eq!(&now, before, "a refused create changed {ip}");
    }

    // The swarm.
    let started = Instant::now();
    let out = run_long(&args_ref(&[
        "--known-hosts",
        &known.display().to_string(),
        "--host-key-fingerprint",
        &format!("third={fingerprint}"),
        "--managers",
        "1",
        "--output",
        "json",
    ]))
    .expect_ok();
    let took = started.elapsed();
    println!(
        "figure: create --provider ssh of 3 existing machines: {:.1}s",
        took.as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    println!("create stages: {}", report["timings"]);
    assert_eq!(report["provider"], "ssh", "{report}");
    let listed = report["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{report}");
    assert!(listed.iter().all(|n| n["status"] == "ready"), "{report}");
    let names: Vec<&str> = listed.iter().map(|n| n["name"].as_str().unwrap()).collect();
    let first = format!("{name}-{}", ips[0].replace('.', "-"));
    assert!(names.contains(&first.as_str()), "{names:?}");
    assert!(
        names.contains(&format!("{name}-third").as_str()),
        "{names:?}"
    );
    let managers: Vec<_> = listed.iter().filter(|n| n["role"] == "manager").collect();
    assert_eq!(managers.len(), 1, "{report}");
    assert_eq!(managers[0]["name"], first.as_str(), "{report}");

    let nodes_json = sb.ok(&["node", "ls", "--cluster", &name, "--output", "json"]);
    assert_eq!(
        nodes_json.matches("\"ready\"").count() + nodes_json.matches("\"Ready\"").count(),
        3,
        "{nodes_json}"
    );
    let ls = sb.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&name) && l.contains("ssh")),
        "{ls}"
    );
    // Machines swarmup does not own are not powered off.
    assert_refused(&sb.run(&["stop", &name, "third"]), "does not own");
    // The owner's docker CLI on a machine now speaks to the swarm.
    let docker_nodes = ssh(
        &login_key,
        &plain_known,
        &ips[0],
        "docker node ls --format '{{.Status}}'",
    )
    .expect_ok();
    assert_eq!(docker_nodes.matches("Ready").count(), 3, "{docker_nodes}");

    // Destroy: what swarmup installed goes, the machines stay.
    let started = Instant::now();
    let out = run_bounded(
        sb.swarmup(&["destroy", &name, "--yes"]),
        Duration::from_secs(600),
    )
    .expect_ok();
    println!(
        "figure: destroy of the 3 machines' swarm: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("{out}");
    assert!(out.contains("left the swarm"), "{out}");
    assert!(out.contains("The machines stay"), "{out}");
    assert!(out.contains("Docker was there before swarmup"), "{out}");
    assert!(out.contains(&format!("Cluster {name} destroyed")), "{out}");
    assert!(!sb.record_dir(&name).exists());
    for (ip, before) in ips.iter().zip(&authorized_before) {
        let left = ssh(
            &login_key,
            &plain_known,
            ip,
            "for p in /var/lib/swarm-node /var/lib/swarmup/swarm-node \
             /var/lib/swarmup-lab/units/swarm-node.service /run/swarm-node; do \
             test -e $p && echo left=$p; done; \
             nft list table inet swarmup >/dev/null 2>&1 && echo left=firewall; \
             DOCKER_CONFIG=/root/.docker docker context inspect swarmup >/dev/null 2>&1 && echo left=context; \
             pidof swarm-node >/dev/null && echo left=process; \
             docker -H unix:///var/run/docker.sock version --format '{{.Server.Version}}' >/dev/null && echo docker=up; \
             cat /root/.ssh/authorized_keys",
        );
        let text = left.expect_ok();
        assert!(!text.contains("left="), "{ip} keeps: {text}");
        assert!(
            text.contains("docker=up"),
            "Docker should stay on {ip}: {text}"
        );
        assert!(
            text.ends_with(before.as_str()),
            "{ip}'s authorized_keys: {text}"
        );
    }
    drop(nodes);
}
