//! `swarmup` end to end on the lab provider: the built binary creates real clusters of
//! network-namespace nodes on this host, the stock docker CLI drives them over mutual
//! TLS, nodes are powered off and on, and `destroy` must leave nothing behind.
//!
//! The lab tests need SWARMUP_E2E=1, root, a running dockerd (for the test image), sshd,
//! iproute2 and iptables; without SWARMUP_E2E=1 they print `skipped: …`. The bad-input
//! tests that create nothing always run. Each test has its own records, SSH config and lab
//! root, and one test runs at a time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{
    assert_nothing_created, assert_refused, e2e_enabled, ensure_swarm_node, ensure_test_image,
    run_bounded, serial, wait_for, Cluster, Sandbox, IMAGE,
};

/// A node is declared down after three missed 5 s heartbeats; a loaded host adds to that.
const NODE_DOWN_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn figure(what: &str, took: Duration) {
    println!("figure: {what}: {:.1}s", took.as_secs_f64());
}

/// Checks the JSON report of `create`: every node ready, the roles asked for, timings.
fn check_create_report(
    report: &serde_json::Value,
    name: &str,
    nodes: usize,
    managers: usize,
) -> BTreeMap<String, String> {
    assert_eq!(report["cluster"], name, "{report}");
    assert_eq!(report["provider"], "lab", "{report}");
    let list = report["nodes"].as_array().expect("nodes in the report");
    assert_eq!(list.len(), nodes, "{report}");
    let mut ids = BTreeMap::new();
    for n in list {
        assert_eq!(n["status"], "ready", "node not ready: {n}");
        ids.insert(
            n["name"].as_str().expect("node name").to_string(),
            n["node_id"].as_str().expect("node id").to_string(),
        );
    }
    let expected: BTreeSet<String> = (1..=nodes).map(|i| format!("{name}-node{i}")).collect();
    assert_eq!(
        ids.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{report}"
    );
    let m = list.iter().filter(|n| n["role"] == "manager").count();
    assert_eq!(m, managers, "managers in {report}");
    assert!(
        report["timings"]["total"].as_f64().is_some(),
        "no timings in {report}"
    );
    ids
}

/// The main scenario on a 3-node cluster with `managers` managers.
/// A self-signed certificate that expires in `days` days.
fn expiring_cert(days: i64) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["stale".to_string()]).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    params.self_signed(&key).unwrap().pem()
}

fn main_scenario(prefix: &str, managers: Option<u32>) {
    let _serial = serial();
    ensure_swarm_node();
    ensure_test_image();
    let mut cluster = Cluster::new(prefix);
    let name = cluster.name.clone();
    let expected_managers = managers.unwrap_or(3) as usize;

    // create → every node Ready, with the roles asked for.
    let mut args = vec!["--nodes", "3"];
    let m = managers.map(|m| m.to_string());
    if let Some(m) = &m {
        args.extend(["--managers", m.as_str()]);
    }
    let started = Instant::now();
    let report = cluster.create(&args);
    figure(&format!("{name}: create --nodes 3"), started.elapsed());
    check_create_report(&report, &name, 3, expected_managers);
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.state == "ready"), "{nodes:?}");
    assert_eq!(
        nodes.iter().filter(|n| n.role == "manager").count(),
        expected_managers,
        "{nodes:?}"
    );
    assert_eq!(nodes.iter().filter(|n| n.leader).count(), 1, "{nodes:?}");
    let status = cluster.docker_node_status().expect("docker node ls");
    assert_eq!(status.len(), 3, "{status:?}");
    // swarmup ls counts from the swarm itself.
    let ls: serde_json::Value =
        serde_json::from_str(&cluster.sb().ok(&["ls", "--output", "json"])).expect("ls json");
    let entry = ls
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("{name} in ls: {ls}"));
    assert_eq!(entry["ready"], 3, "{entry}");
    assert_eq!(entry["managers"], expected_managers, "{entry}");
    assert!(status.values().all(|s| s == "Ready"), "{status:?}");

    // docker save | swarmup image load: the nodes have no registry.
    let loaded = cluster.load_test_image();
    for i in 1..=3 {
        assert!(
            loaded.contains(&format!("{name}-node{i}: loaded {IMAGE}")),
            "image load: {loaded}"
        );
    }

    // The stock docker CLI creates a 3-replica service; its tasks spread over the nodes.
    cluster
        .docker_run(&[
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
        ])
        .expect_ok();
    let (tasks, took) = wait_for("3 web tasks running on 3 nodes", CONVERGE_TIMEOUT, || {
        let tasks = cluster.docker_running_tasks("web")?;
        let running: Vec<_> = tasks
            .iter()
            .filter(|t| t.current.starts_with("Running"))
            .collect();
        let on: BTreeSet<&str> = running.iter().map(|t| t.node.as_str()).collect();
        if running.len() == 3 && on.len() == 3 {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    figure(&format!("{name}: service web running 3/3"), took);

    // Power off a node that is not the leader nor the manager DOCKER_HOST points at.
    let host = cluster.docker_env()["DOCKER_HOST"].clone();
    let nodes = cluster.nodes();
    let victim = if managers == Some(1) {
        format!("{name}-node3")
    } else {
        let manager_addr = |n: &str| {
            report["nodes"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["name"] == n))
                .and_then(|x| x["address"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        nodes
            .iter()
            .rev()
            .find(|n| !n.leader && host != format!("tcp://{}:2377", manager_addr(&n.hostname)))
            .map(|n| n.hostname.clone())
            .unwrap_or_else(|| panic!("no node to stop besides {host}: {nodes:?}"))
    };
    if managers == Some(1) {
        let v = nodes.iter().find(|n| n.hostname == victim).expect("node3");
        assert_eq!(v.role, "worker", "{nodes:?}");
    }
    let old_task = tasks
        .iter()
        .find(|t| t.node == victim)
        .unwrap_or_else(|| panic!("no task on {victim}: {tasks:?}"))
        .id
        .clone();
    let survivors: BTreeSet<String> = tasks
        .iter()
        .filter(|t| t.node != victim)
        .map(|t| t.id.clone())
        .collect();

    let out = cluster.sb().ok(&["stop", &name, &victim]);
    assert!(
        out.contains(&format!("{victim} stopped")),
        "stop said: {out}"
    );
    let stopped = Instant::now();
    let ((), took) = wait_for(&format!("{victim} Down"), NODE_DOWN_TIMEOUT, || {
        let status = cluster.docker_node_status()?;
        match status.get(&victim).map(String::as_str) {
            Some("Down") => Ok(()),
            other => Err(format!("{victim} is {other:?}: {status:?}")),
        }
    });
    figure(&format!("{name}: {victim} seen Down after stop"), took);
    let (tasks, _) = wait_for(
        &format!("the task of {victim} running elsewhere"),
        CONVERGE_TIMEOUT,
        || {
            let tasks = cluster.docker_running_tasks("web")?;
            let ok = tasks.len() == 3
                && tasks
                    .iter()
                    .all(|t| t.current.starts_with("Running") && t.node != victim)
                && tasks.iter().all(|t| t.id != old_task);
            if ok {
                Ok(tasks)
            } else {
                Err(format!("{tasks:?}"))
            }
        },
    );
    figure(
        &format!("{name}: task of {victim} re-created after stop"),
        stopped.elapsed(),
    );
    let ids: BTreeSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
    assert!(
        survivors.is_subset(&ids),
        "the tasks on live nodes should have stayed: before {survivors:?}, now {tasks:?}"
    );
    assert_eq!(
        ids.difference(&survivors).count(),
        1,
        "one replacement task: {tasks:?}"
    );

    // Power it back on: it rejoins as Ready.
    let out = cluster.sb().ok(&["start", &name, &victim]);
    assert!(
        out.contains(&format!("{victim} started")),
        "start said: {out}"
    );
    let ((), took) = wait_for(&format!("{victim} Ready again"), CONVERGE_TIMEOUT, || {
        let status = cluster.docker_node_status()?;
        if status.len() == 3 && status.values().all(|s| s == "Ready") {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    });
    figure(&format!("{name}: {victim} Ready after start"), took);
    let nodes_after = cluster.nodes();
    assert_eq!(
        nodes.iter().map(|n| &n.id).collect::<Vec<_>>(),
        nodes_after.iter().map(|n| &n.id).collect::<Vec<_>>(),
        "a restarted node keeps its id"
    );

    // An admin certificate within 30 days of expiry is renewed by the next cluster command
    // (here one whose certificate is not even the cluster's: it is replaced whole), and the
    // docker CLI keeps working with the new one.
    let client = cluster.sb().record_dir(&name).join("client");
    let stale = expiring_cert(10);
    std::fs::write(client.join("cert.pem"), &stale).unwrap();
    let run = cluster.sb().run(&["node", "ls", "--cluster", &name]);
    assert!(run.ok(), "node ls with a stale certificate: {}", run.stderr);
    assert!(
        run.stderr
            .contains("renewed the cluster's client certificate"),
        "node ls said: {}",
        run.stderr
    );
    assert_ne!(
        std::fs::read_to_string(client.join("cert.pem")).unwrap(),
        stale
    );
    cluster
        .docker_node_status()
        .expect("docker node ls after the renewal");

    let took = cluster.destroy_and_check();
    figure(&format!("{name}: destroy"), took);
}

/// `create --nodes 3` (three managers by default), image load, a 3-replica service spread
/// over the nodes, a manager that is not the leader powered off (Down, its task re-created
/// elsewhere) and on again (Ready), then a destroy that leaves nothing on the host.
#[test]
fn lab_cluster_lifecycle_three_managers() {
    if !e2e_enabled("lab_cluster_lifecycle_three_managers") {
        return;
    }
    main_scenario("e2e-m3", None);
}

/// The same with `--managers 1`: one manager and two workers, a worker powered off and on.
#[test]
fn lab_cluster_lifecycle_one_manager() {
    if !e2e_enabled("lab_cluster_lifecycle_one_manager") {
        return;
    }
    main_scenario("e2e-m1", Some(1));
}

/// Creating an existing cluster again changes nothing (same node ids, no duplicates);
/// more `--nodes` adds the missing ones.
#[test]
fn create_again_is_idempotent_and_grows() {
    if !e2e_enabled("create_again_is_idempotent_and_grows") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let mut cluster = Cluster::new("e2e-idem");
    let name = cluster.name.clone();

    let first = cluster.create(&["--nodes", "3"]);
    let first_ids = check_create_report(&first, &name, 3, 3);
    let before = cluster.nodes();

    let started = Instant::now();
    let again = cluster.create(&["--nodes", "3"]);
    figure(
        &format!("{name}: create again (nothing to do)"),
        started.elapsed(),
    );
    assert_eq!(check_create_report(&again, &name, 3, 3), first_ids);
    assert_eq!(again["cluster_id"], first["cluster_id"], "{again}");
    let after = cluster.nodes();
    assert_eq!(before, after, "create again changed the nodes");
    let hostnames: BTreeSet<&str> = after.iter().map(|n| n.hostname.as_str()).collect();
    assert_eq!(hostnames.len(), 3, "duplicate nodes: {after:?}");
    let lab_index = std::fs::read_to_string(cluster.sb().lab_dir(&name).join("cluster.json"))
        .expect("lab index");
    let index: serde_json::Value = serde_json::from_str(&lab_index).expect("lab index JSON");
    assert_eq!(
        index["nodes"].as_array().map(Vec::len),
        Some(3),
        "{lab_index}"
    );
    assert_eq!(
        cluster
            .sb()
            .ssh_config_text()
            .matches(&format!("# BEGIN swarmup {name}\n"))
            .count(),
        1,
        "one ssh config block"
    );

    let started = Instant::now();
    let grown = cluster.create(&["--nodes", "4"]);
    figure(
        &format!("{name}: create --nodes 4 (adds one)"),
        started.elapsed(),
    );
    let grown_ids = check_create_report(&grown, &name, 4, 3);
    for (machine, id) in &first_ids {
        assert_eq!(grown_ids.get(machine), Some(id), "{machine} changed id");
    }
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.state == "ready"), "{nodes:?}");
    let new = nodes
        .iter()
        .find(|n| n.hostname == format!("{name}-node4"))
        .unwrap_or_else(|| panic!("no node4: {nodes:?}"));
    assert_eq!(new.role, "worker", "{nodes:?}");

    // `docker node rm --force`: the node leaves the swarm, `swarmup ls` stops counting
    // it, and create adds it back as a new node.
    let node4 = format!("{name}-node4");
    let removed_id = new.id.clone();
    cluster
        .docker_run(&["node", "rm", "--force", &node4])
        .expect_ok();
    wait_for(
        "node4 gone from the cluster",
        Duration::from_secs(30),
        || {
            let nodes = cluster.try_nodes()?;
            if nodes.iter().any(|n| n.hostname == node4) {
                Err(format!("{nodes:?}"))
            } else {
                Ok(())
            }
        },
    );
    let ls: serde_json::Value =
        serde_json::from_str(&cluster.sb().ok(&["ls", "--output", "json"])).expect("ls JSON");
    let row = ls
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("{name} not listed: {ls}"));
    assert_eq!(row["nodes"], 3, "swarmup ls counts from the cluster: {row}");
    let readded = cluster.create(&["--nodes", "4"]);
    check_create_report(&readded, &name, 4, 3);
    let nodes = cluster.nodes();
    let back = nodes
        .iter()
        .find(|n| n.hostname == node4)
        .unwrap_or_else(|| panic!("node4 not re-added: {nodes:?}"));
    assert_eq!(back.state, "ready", "{nodes:?}");
    assert_ne!(back.id, removed_id, "re-added as a new node");

    let took = cluster.destroy_and_check();
    figure(&format!("{name}: destroy (4 nodes)"), took);
}

/// `swarmup ssh` reaches a node by name, and so does plain ssh through the managed block.
#[test]
fn ssh_reaches_nodes() {
    if !e2e_enabled("ssh_reaches_nodes") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let mut cluster = Cluster::new("e2e-ssh");
    let name = cluster.name.clone();
    cluster.create(&["--nodes", "2"]);

    let node2 = format!("{name}-node2");
    let out = cluster.sb().ok(&["ssh", &name, &node2, "--", "hostname"]);
    assert_eq!(out.trim(), node2);
    let out = cluster.sb().ok(&["ssh", &name, "node1", "--", "hostname"]);
    assert_eq!(out.trim(), format!("{name}-node1"), "short node names work");
    let failed = cluster
        .sb()
        .run(&["ssh", &name, "node1", "--", "exit", "3"]);
    assert_eq!(
        failed.status.code(),
        Some(3),
        "the remote exit code: {failed}"
    );

    let config = cluster.sb().ssh_config_text();
    assert!(
        config.contains(&format!("# BEGIN swarmup {name}\n")),
        "{config}"
    );
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-F")
        .arg(&cluster.sb().ssh_config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            &format!("{name}-node1"),
            "hostname",
        ])
        .stdin(Stdio::null());
    let out = run_bounded(ssh, Duration::from_secs(30)).expect_ok();
    assert_eq!(out.trim(), format!("{name}-node1"));

    cluster.destroy_and_check();
}

/// A lab cluster's name cannot be reused for another provider, and the record stays as
/// it was.
#[test]
fn taken_name_is_refused() {
    if !e2e_enabled("taken_name_is_refused") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let mut cluster = Cluster::new("e2e-taken");
    let name = cluster.name.clone();
    cluster.create(&["--nodes", "1"]);
    let record = cluster.sb().record_dir(&name).join("cluster.json");
    let before = std::fs::read(&record).expect("record");

    let run = cluster.sb().run(&[
        "create",
        "--name",
        &name,
        "--provider",
        "digitalocean",
        "--nodes",
        "1",
        "--token",
        "x",
    ]);
    assert_refused(&run, "taken");
    assert!(run.stderr.contains(&name), "the error names {name}: {run}");
    assert_eq!(
        std::fs::read(&record).expect("record"),
        before,
        "the record changed"
    );
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");

    cluster.destroy_and_check();
}

/// Runs a bad command in a fresh sandbox: refused with one `Error:` line, nothing made.
fn refused(args: &[&str], name: &str, expect: &str) {
    let _serial = serial();
    let sb = Sandbox::new();
    let run = sb.run(args);
    assert_refused(&run, expect);
    assert_nothing_created(&sb, name);
}

#[test]
fn unknown_provider_is_refused() {
    refused(
        &[
            "create",
            "--name",
            "bad-prov",
            "--provider",
            "nope",
            "--nodes",
            "1",
        ],
        "bad-prov",
        "unknown provider \"nope\"",
    );
}

#[test]
fn zero_nodes_is_refused() {
    refused(
        &["create", "--name", "bad-zero", "--nodes", "0"],
        "bad-zero",
        "--nodes must be at least 1",
    );
}

#[test]
fn even_managers_is_refused() {
    refused(
        &[
            "create",
            "--name",
            "bad-even",
            "--nodes",
            "3",
            "--managers",
            "2",
        ],
        "bad-even",
        "--managers 2 is even",
    );
}

#[test]
fn too_many_managers_is_refused() {
    refused(
        &[
            "create",
            "--name",
            "bad-many",
            "--nodes",
            "10",
            "--managers",
            "9",
        ],
        "bad-many",
        "--managers 9 is too many",
    );
}

#[test]
fn more_managers_than_nodes_is_refused() {
    refused(
        &[
            "create",
            "--name",
            "bad-more",
            "--nodes",
            "2",
            "--managers",
            "3",
        ],
        "bad-more",
        "more than --nodes 2",
    );
}

#[test]
fn invalid_name_is_refused() {
    refused(
        &["create", "--name", "Bad_Name", "--nodes", "1"],
        "Bad_Name",
        "invalid cluster name \"Bad_Name\"",
    );
}

#[test]
fn destroy_of_unknown_cluster_is_refused() {
    refused(
        &["destroy", "no-such", "--yes"],
        "no-such",
        "no cluster named no-such",
    );
}

#[test]
fn env_of_unknown_cluster_is_refused() {
    refused(&["env", "no-such"], "no-such", "no cluster named no-such");
}
