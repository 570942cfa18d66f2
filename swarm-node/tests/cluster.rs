//! End-to-end: clusters of real swarm-node processes on loopback, real Raft over mutual
//! TLS, tasks as real containers on this machine's Docker Engine, driven by the stock
//! docker CLI. Runs with SWARMUP_E2E=1 (see the README's test command).

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::*;

/// The scenarios share one Docker Engine and two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn node_table(n: &TestNode) -> Vec<Vec<String>> {
    let out = n.docker_ok(&[
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
    ]);
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn running_tasks(n: &TestNode, service: &str) -> Vec<(String, String)> {
    let out = n.docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Running"))
        .map(|l| {
            let mut parts = l.split_whitespace();
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The seed workflow: init, join a worker, promote it, join a manager directly; then the
/// docker CLI's node and service verbs against the three-node cluster.
#[test]
fn t10_three_node_cluster_with_the_docker_cli() {
    if !e2e_enabled("t10_three_node_cluster_with_the_docker_cli") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["node1", "node2", "node3"]);
    sb.init("1s");
    sb.join(1, "worker");
    let n1 = &sb.nodes[0];
    wait_for("node2 ready", Duration::from_secs(20), || {
        node_table(n1).iter().filter(|r| r[1] == "Ready").count() == 2
    });
    n1.docker_ok(&["node", "promote", "node2"]);
    sb.join(2, "manager");
    let n1 = &sb.nodes[0];
    wait_for("three managers", Duration::from_secs(30), || {
        let t = node_table(n1);
        t.len() == 3
            && t.iter().all(|r| r[1] == "Ready")
            && t.iter()
                .filter(|r| r.len() == 4 && (r[3] == "Leader" || r[3] == "Reachable"))
                .count()
                == 3
    });
    let table = node_table(n1);
    assert_eq!(
        table
            .iter()
            .filter(|r| r.get(3).map(String::as_str) == Some("Leader"))
            .count(),
        1
    );

    // A demoted node becomes a worker; the last manager can never be demoted.
    n1.docker_ok(&["node", "demote", "node3"]);
    wait_for("node3 demoted", Duration::from_secs(20), || {
        node_table(n1)
            .iter()
            .any(|r| r[0] == "node3" && r.len() == 3)
    });

    // Services through the CLI.
    let out = n1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        IMAGE,
        "sleep",
        "3600",
    ]);
    assert!(!out.trim().is_empty());
    let took = wait_for("3 running", Duration::from_secs(30), || {
        running_tasks(n1, "web").len() == 3
    });
    println!("figure: service create --replicas 3 to 3 Running: {took:?}");
    let mut nodes: Vec<String> = running_tasks(n1, "web")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        vec!["node1", "node2", "node3"],
        "spread on all three nodes"
    );
    let ls = n1.docker_ok(&[
        "service",
        "ls",
        "--format",
        "{{.Name}} {{.Mode}} {{.Replicas}}",
    ]);
    assert_eq!(ls.trim(), "web replicated 3/3");
    n1.docker_ok(&["service", "scale", "web=5"]);
    wait_for("5 running", Duration::from_secs(30), || {
        running_tasks(n1, "web").len() == 5
    });
    let inspect = n1.docker_ok(&[
        "service",
        "inspect",
        "web",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
    ]);
    assert_eq!(inspect.trim(), "5");
    // Reads and writes through a follower manager reach the leader.
    let n2 = &sb.nodes[1];
    n2.docker_ok(&["service", "scale", "web=2"]);
    wait_for("2 running", Duration::from_secs(30), || {
        running_tasks(n2, "web").len() == 2
    });

    // A rolling update replaces every task with one of the new template.
    n1.docker_ok(&["service", "update", "-d", "--env-add", "ROLLED=1", "web"]);
    wait_for("rolled out", Duration::from_secs(60), || {
        let out = n1.docker(&[
            "service",
            "ps",
            "web",
            "--format",
            "{{.DesiredState}} {{.CurrentState}}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let running = text
            .lines()
            .filter(|l| l.starts_with("Running Running"))
            .count();
        let shut = text.lines().filter(|l| l.starts_with("Shutdown")).count();
        running == 2 && shut >= 2
    });

    // Bad input: Docker-shaped errors with a clear message.
    let bad = n1.docker(&["service", "create", "-d", "--name", "web", IMAGE]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("already exists"));

    // Demote node2 too: node1 is then the last manager and cannot be demoted.
    n1.docker_ok(&["node", "demote", "node2"]);
    wait_for("node2 demoted", Duration::from_secs(20), || {
        node_table(n1)
            .iter()
            .any(|r| r[0] == "node2" && r.len() == 3)
    });
    let last = n1.docker(&["node", "demote", "node1"]);
    assert!(!last.status.success());
    assert!(String::from_utf8_lossy(&last.stderr).contains("last manager"));

    n1.docker_ok(&["service", "rm", "web"]);
    wait_for("containers removed", Duration::from_secs(30), || {
        let out = std::process::Command::new(docker_cli())
            .args([
                "ps",
                "-q",
                "--filter",
                "label=com.docker.swarm.service.name=web",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
}

/// Kill the leader of three managers: a new one is elected and the API keeps working;
/// the old one comes back and catches up. Then every manager restarts from disk.
#[test]
fn t20_leader_failover_and_restart_from_disk() {
    if !e2e_enabled("t20_leader_failover_and_restart_from_disk") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["node1", "node2", "node3"]);
    sb.init("1s");
    sb.join(1, "manager");
    sb.join(2, "manager");
    wait_for("three managers", Duration::from_secs(30), || {
        node_table(&sb.nodes[0])
            .iter()
            .filter(|r| r.len() == 4)
            .count()
            == 3
    });
    sb.nodes[0].docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--replicas",
        "2",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("2 running", Duration::from_secs(30), || {
        running_tasks(&sb.nodes[0], "app").len() == 2
    });

    let killed_at = Instant::now();
    sb.nodes[0].kill();
    let took = wait_for("a new leader", Duration::from_secs(20), || {
        let out =
            sb.nodes[1].docker(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .any(|l| l.ends_with("Leader") && !l.starts_with("node1"))
    });
    println!(
        "figure: leader failover with 3 managers (kill to new leader seen by the API): {took:?}"
    );
    // The new leader knows the old one was lost: it is Down about three heartbeat
    // periods after the kill, not six after the election.
    wait_for("node1 Down", Duration::from_secs(20), || {
        node_table(&sb.nodes[1]).iter().any(|r| {
            r.first().is_some_and(|h| h == "node1") && r.get(1).is_some_and(|s| s == "Down")
        })
    });
    println!(
        "figure: lost leader seen Down (heartbeat 1 s, so 3 s is three periods): {:?} after the kill",
        killed_at.elapsed()
    );
    // Its tasks run elsewhere: both replicas Running on the two managers left.
    wait_for("app's tasks off node1", Duration::from_secs(30), || {
        let tasks = running_tasks(&sb.nodes[1], "app");
        tasks.len() == 2 && tasks.iter().all(|(n, _)| n != "node1")
    });
    println!(
        "figure: lost leader's tasks Running elsewhere (heartbeat 1 s): {:?} after the kill",
        killed_at.elapsed()
    );
    sb.nodes[1].docker_ok(&["service", "scale", "app=3"]);
    wait_for("3 running after failover", Duration::from_secs(40), || {
        running_tasks(&sb.nodes[1], "app").len() == 3
    });

    // Quorum lost: with node1 down, stop the new leader too. The last manager cannot know
    // the state is current, so it answers as Docker does instead of showing stale data.
    let leader = node_table(&sb.nodes[1])
        .into_iter()
        .find(|r| r.last().is_some_and(|s| s == "Leader"))
        .map(|r| r[0].clone())
        .expect("a leader");
    let (gone, last) = if leader == "node2" { (1, 2) } else { (2, 1) };
    sb.nodes[gone].kill();
    wait_for(
        "no leader on the last manager",
        Duration::from_secs(30),
        || {
            let out = sb.nodes[last].docker(&["node", "ls"]);
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("The swarm does not have a leader")
        },
    );
    sb.nodes[gone].start();
    wait_for("a leader again", Duration::from_secs(30), || {
        sb.nodes[last].docker(&["node", "ls"]).status.success()
    });
    sb.nodes[0].start();
    wait_for("node1 catches up", Duration::from_secs(30), || {
        let out = sb.nodes[0].docker(&[
            "service",
            "inspect",
            "app",
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "3"
    });

    for n in &mut sb.nodes {
        n.stop();
    }
    for n in &mut sb.nodes {
        n.start();
    }
    wait_for(
        "state intact after restarting every manager",
        Duration::from_secs(40),
        || {
            let out = sb.nodes[2].docker(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]);
            String::from_utf8_lossy(&out.stdout).trim() == "app 3/3"
        },
    );
}

/// Security: wrong tokens and wrong CA digests are refused with clear messages; a
/// worker's certificate cannot call the manager API; rotation invalidates old tokens.
#[test]
fn t30_tokens_and_certificates() {
    if !e2e_enabled("t30_tokens_and_certificates") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["node1", "node2", "node3"]);
    sb.init("1s");
    let worker_token = sb.token("worker");
    let manager_token = sb.token("manager");
    assert_ne!(worker_token, manager_token);
    assert!(worker_token.starts_with("SWMTKN-1-"));
    let manager = sb.nodes[0].addr();

    // A token whose secret is wrong.
    let mut forged = worker_token.clone();
    forged.replace_range(forged.len() - 3.., "zzz");
    let out = sb.nodes[1].verb(&[
        "join",
        "--token",
        &forged,
        "--advertise-addr",
        &sb.nodes[1].addr(),
        "--listen-addr",
        &sb.nodes[1].addr(),
        &manager,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("valid join token"), "{err}");

    // A token whose CA digest belongs to another swarm.
    let digest_len = 50;
    let mut other_ca = worker_token.clone();
    other_ca.replace_range(9..9 + digest_len, &"0".repeat(digest_len));
    let out = sb.nodes[1].verb(&[
        "join",
        "--token",
        &other_ca,
        "--advertise-addr",
        &sb.nodes[1].addr(),
        "--listen-addr",
        &sb.nodes[1].addr(),
        &manager,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest"), "{err}");
    assert!(
        !sb.nodes[1].dir.join("state/node.json").exists(),
        "nothing half-written"
    );

    // Rotation: the old worker token no longer admits new nodes.
    let out = sb.nodes[0].verb(&["join-token", "--rotate", "-q", "worker"]);
    assert!(out.status.success());
    let rotated = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(rotated, worker_token);
    let out = sb.nodes[1].verb(&[
        "join",
        "--token",
        &worker_token,
        "--advertise-addr",
        &sb.nodes[1].addr(),
        "--listen-addr",
        &sb.nodes[1].addr(),
        &manager,
    ]);
    assert!(!out.status.success());

    // A worker joins with the new token; its certificate cannot use the manager API.
    sb.join(1, "worker");
    let worker_state = sb.nodes[1].dir.join("state/certificates");
    let cert = std::fs::read(worker_state.join("swarm-node.crt")).unwrap();
    let key = std::fs::read(worker_state.join("swarm-node.key")).unwrap();
    let ca = std::fs::read(worker_state.join("swarm-root-ca.crt")).unwrap();
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(write_tmp(&sb, "ca.pem", &ca))
        .arg("--cert")
        .arg(write_tmp(&sb, "cert.pem", &cert))
        .arg("--key")
        .arg(write_tmp(&sb, "key.pem", &key))
        .arg(format!("https://{manager}/v1.41/nodes"))
        .output();
    if let Ok(out) = curl {
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
        }
    }

    // Leaving: a manager refuses without --force; a worker leaves and forgets the swarm.
    let out = sb.nodes[0].verb(&["leave"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = sb.nodes[1].verb(&["leave"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sb.nodes[1].dir.join("state/node.json").exists());
    wait_for("the worker reported Down", Duration::from_secs(20), || {
        node_table(&sb.nodes[0])
            .iter()
            .any(|r| r[0] == "node2" && r[1] == "Down")
    });
}

fn write_tmp(sb: &Sandbox, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = sb.root.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A dead task is replaced within the restart delay plus a second; a dead worker's tasks
/// move to the other nodes.
#[test]
fn t40_task_and_node_failures() {
    if !e2e_enabled("t40_task_and_node_failures") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["node1", "node2"]);
    sb.init("1s");
    sb.join(1, "worker");
    let n1 = &sb.nodes[0];
    wait_for("two ready", Duration::from_secs(20), || {
        node_table(n1).iter().filter(|r| r[1] == "Ready").count() == 2
    });
    n1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "crashy",
        "--replicas",
        "2",
        "--restart-delay",
        "0s",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("2 running", Duration::from_secs(30), || {
        running_tasks(n1, "crashy").len() == 2
    });
    let out = std::process::Command::new(docker_cli())
        .args([
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=crashy",
        ])
        .output()
        .unwrap();
    let victim = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let killed = Instant::now();
    std::process::Command::new(docker_cli())
        .args(["kill", &victim])
        .output()
        .unwrap();
    wait_for("replacement running", Duration::from_secs(20), || {
        let out = n1.docker(&[
            "service",
            "ps",
            "crashy",
            "--format",
            "{{.DesiredState}} {{.CurrentState}}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| l.starts_with("Running Running"))
            .count()
            == 2
            && text.lines().count() >= 3
    });
    println!(
        "figure: dead task to replacement Running (restart delay 0): {:?}",
        killed.elapsed()
    );

    wait_for("a task on node2", Duration::from_secs(20), || {
        running_tasks(&sb.nodes[0], "crashy")
            .iter()
            .any(|(n, _)| n == "node2")
    });
    let killed = Instant::now();
    sb.nodes[1].kill();
    let n1 = &sb.nodes[0];
    wait_for("node2 down", Duration::from_secs(30), || {
        node_table(n1)
            .iter()
            .any(|r| r[0] == "node2" && r[1] == "Down")
    });
    wait_for(
        "tasks moved off the dead worker",
        Duration::from_secs(30),
        || {
            let tasks = running_tasks(n1, "crashy");
            tasks.len() == 2 && tasks.iter().all(|(n, _)| n == "node1")
        },
    );
    println!(
        "figure: worker killed to its tasks Running elsewhere (heartbeat 1s, down after 3 missed): {:?}",
        killed.elapsed()
    );
    assert!(node_table(n1)
        .iter()
        .any(|r| r[0] == "node2" && r[1] == "Down"));
}

/// Availability and removal: a drained node's tasks move at once; a node that is not
/// down cannot be removed without --force; concurrent updates of one version conflict.
#[test]
fn t50_drain_remove_and_concurrent_updates() {
    if !e2e_enabled("t50_drain_remove_and_concurrent_updates") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["node1", "node2"]);
    sb.init("1s");
    sb.join(1, "worker");
    let n1 = &sb.nodes[0];
    wait_for("two ready", Duration::from_secs(20), || {
        node_table(n1).iter().filter(|r| r[1] == "Ready").count() == 2
    });
    n1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "spread",
        "--replicas",
        "4",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("4 running", Duration::from_secs(30), || {
        running_tasks(n1, "spread").len() == 4
    });
    assert!(running_tasks(n1, "spread")
        .iter()
        .any(|(n, _)| n == "node2"));

    let drained = Instant::now();
    n1.docker_ok(&["node", "update", "--availability", "drain", "node2"]);
    wait_for(
        "tasks moved off the drained node",
        Duration::from_secs(30),
        || {
            let t = running_tasks(n1, "spread");
            t.len() == 4 && t.iter().all(|(n, _)| n == "node1")
        },
    );
    println!(
        "figure: drain to tasks Running elsewhere: {:?}",
        drained.elapsed()
    );
    assert!(node_table(n1)
        .iter()
        .any(|r| r[0] == "node2" && r[2] == "Drain"));

    // Labels, and the spec version Docker's optimistic concurrency checks.
    n1.docker_ok(&["node", "update", "--label-add", "zone=a", "node2"]);
    let labels = n1.docker_ok(&[
        "node",
        "inspect",
        "node2",
        "--format",
        "{{index .Spec.Labels \"zone\"}}",
    ]);
    assert_eq!(labels.trim(), "a");

    let out = n1.docker(&["node", "rm", "node2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not down"));

    // Two writers with the same version: one wins, the other is told it is out of sequence.
    let service: serde_json::Value = serde_json::from_str(&n1.docker_ok(&[
        "service",
        "inspect",
        "spread",
        "--format",
        "{{json .}}",
    ]))
    .unwrap();
    let version = service["Version"]["Index"].as_u64().unwrap();
    let mut spec = service["Spec"].clone();
    spec["Mode"]["Replicated"]["Replicas"] = serde_json::json!(2);
    let post = |spec: &serde_json::Value| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(n1.socket())
            .args(["-H", "Content-Type: application/json", "-d"])
            .arg(spec.to_string())
            .arg(format!(
                "http://swarm/v1.41/services/spread/update?version={version}"
            ))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    let first = post(&spec);
    let second = post(&spec);
    if !first.is_empty() {
        assert_eq!(first, "200");
        assert_eq!(second, "400", "a stale version is refused");
    }

    // An invalid spec: 400 with a message that says what to fix.
    let bad = n1.docker(&["service", "create", "-d", "--name", "bad name", IMAGE]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid service name"));

    sb.nodes[1].kill();
    wait_for("node2 down", Duration::from_secs(20), || {
        node_table(&sb.nodes[0])
            .iter()
            .any(|r| r[0] == "node2" && r[1] == "Down")
    });
    sb.nodes[0].docker_ok(&["node", "rm", "node2"]);
    assert_eq!(node_table(&sb.nodes[0]).len(), 1);
}

/// `docker node rm --force` on a live node: the node hears it was removed, stops its
/// tasks and forgets the swarm (as `swarm-node leave` does), so it can join again.
#[test]
fn t60_a_removed_node_leaves_and_can_join_again() {
    if !e2e_enabled("t60_a_removed_node_leaves_and_can_join_again") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["node1", "node2"]);
    sb.init("1s");
    sb.join(1, "worker");
    wait_for("two nodes ready", Duration::from_secs(30), || {
        node_table(&sb.nodes[0])
            .iter()
            .filter(|r| r.get(1).is_some_and(|s| s == "Ready"))
            .count()
            == 2
    });
    sb.nodes[0].docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "both",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("a task on node2", Duration::from_secs(60), || {
        running_tasks(&sb.nodes[0], "both")
            .iter()
            .any(|(n, _)| n == "node2")
    });
    let node2_id = {
        let text = std::fs::read_to_string(sb.nodes[1].dir.join("state/node.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["node_id"].as_str().unwrap().to_string()
    };
    sb.nodes[0].docker_ok(&["node", "rm", "--force", "node2"]);
    wait_for("node2 forgot the swarm", Duration::from_secs(30), || {
        !sb.nodes[1].dir.join("state/node.json").exists()
    });
    let containers = std::process::Command::new(docker_cli())
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.swarm.node.id={node2_id}"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&containers.stdout)
            .trim()
            .is_empty(),
        "node2's task containers are gone"
    );
    assert!(sb.nodes[1].log().contains("removed from the swarm"));
    // It joins again as a new node.
    sb.nodes[1].kill();
    sb.join(1, "worker");
    wait_for("node2 back", Duration::from_secs(30), || {
        node_table(&sb.nodes[0])
            .iter()
            .any(|r| r[0] == "node2" && r[1] == "Ready")
    });
}
