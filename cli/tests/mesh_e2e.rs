//! The routing mesh end to end: a 3-node lab cluster made by `swarmup create`, driven by
//! the stock docker CLI, with the course's search exercise played by `swarmup-probe
//! http-who` (it answers `who=HOST from=PEER`):
//!
//! - `search`: 2 replicas on node1 and node2, `-p 9200:8080`, asked from the lab host at
//!   every node's address (node3 runs no task) and at `localhost` inside each node; more
//!   than one task answers, and each sees the lab host's own address;
//! - `echo`: the same over UDP;
//! - a killed task leaves the mesh; a second service asking for 9200 is refused; host mode
//!   binds on the task's node only; removing the service closes the port everywhere.
//!
//! Needs SWARMUP_E2E=1 and root, like network_e2e.rs.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use support::net::{
    ensure_probe_image, figure, load_probe_image, probe_binary, NetLab, CONVERGE_TIMEOUT,
    PROBE_IMAGE,
};
use support::{e2e_enabled, ensure_swarm_node, run_bounded, serial, wait_for};

fn words(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs the probe on the lab host (the client outside the cluster); `Ok((who, from))`.
fn ask(mode: &str, target: &str) -> Result<(String, String), String> {
    let mut cmd = Command::new(probe_binary());
    cmd.args([mode, target, "--timeout-ms", "2000"]);
    let run = run_bounded(cmd, Duration::from_secs(10));
    if !run.ok() {
        return Err(format!("{mode} {target}: {run}"));
    }
    let w = words(&run.stdout);
    match (w.get("who"), w.get("from")) {
        (Some(who), Some(from)) => Ok((who.clone(), from.clone())),
        _ => Err(format!(
            "{mode} {target}: unexpected answer {:?}",
            run.stdout
        )),
    }
}

/// Asks `target` from the lab host until 10 answers in a row come from tasks other than
/// `avoid` (a refusal or a timeout resets the count); returns how long that took.
fn until_avoided(what: &str, target: &str, avoid: &str) -> Duration {
    let start = Instant::now();
    let mut streak = 0;
    wait_for(what, CONVERGE_TIMEOUT, || {
        match ask("http-ask", target) {
            Ok((who, _)) if who != avoid => streak += 1,
            other => {
                streak = 0;
                return Err(format!("{other:?}"));
            }
        }
        if streak >= 10 {
            Ok(())
        } else {
            Err(format!("{streak} good answers in a row"))
        }
    });
    start.elapsed()
}

/// The lab host's source address towards `addr`: what a task must see as the client.
fn source_towards(addr: &str) -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "get", addr])
        .output()
        .expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == "src" {
            return it.next().unwrap_or_default().to_string();
        }
    }
    panic!("no source address towards {addr}: {text}");
}

impl NetLab {
    fn node_addr(&mut self, node: &str) -> String {
        self.docker(&["node", "inspect", node, "--format", "{{.Status.Addr}}"])
            .trim()
            .to_string()
    }
}

#[test]
fn published_ports_answer_on_every_node_with_the_client_address() {
    if !e2e_enabled("published_ports_answer_on_every_node_with_the_client_address") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    ensure_probe_image();
    let mut lab = NetLab::new("mesh");
    lab.cluster.create(&["--nodes", "3"]);
    load_probe_image(&lab.cluster);
    let nodes = [lab.node(1), lab.node(2), lab.node(3)];
    let addrs: Vec<String> = nodes.iter().map(|n| lab.node_addr(n)).collect();
    let client = source_towards(&addrs[0]);
    let not_n3 = format!("node.hostname!={}", nodes[2]);

    lab.service(&[
        "--name",
        "search",
        "--replicas",
        "2",
        "-p",
        "9200:8080",
        "--constraint",
        &not_n3,
        PROBE_IMAGE,
        "swarmup-probe",
        "http-who",
        "8080",
    ]);
    lab.service(&[
        "--name",
        "echo",
        "--replicas",
        "2",
        "-p",
        "7007:7007/udp",
        "--constraint",
        &not_n3,
        PROBE_IMAGE,
        "swarmup-probe",
        "udp-echo",
        "7007",
    ]);
    lab.running("search", 2);
    lab.running("echo", 2);

    // Docker's view: PORTS in `service ls`, Endpoint.Ports in `service inspect`.
    let ls = lab.docker(&["service", "ls", "--format", "{{.Name}} {{.Ports}}"]);
    assert!(ls.contains("search *:9200->8080/tcp"), "{ls}");
    assert!(ls.contains("echo *:7007->7007/udp"), "{ls}");

    // Every node answers, node3 with no task included, and the task sees the lab host.
    for (node, addr) in nodes.iter().zip(&addrs) {
        let target = format!("{addr}:9200");
        let ((who, from), took) =
            wait_for(&format!("{node} answers on 9200"), CONVERGE_TIMEOUT, || {
                ask("http-ask", &target)
            });
        assert_eq!(from, client, "the task must see the client's address");
        figure(&format!("{node} answers on 9200 (by {who})"), took);
        let udp = format!("{addr}:7007");
        let ((_, from), _) = wait_for(
            &format!("{node} answers on 7007/udp"),
            CONVERGE_TIMEOUT,
            || ask("udp-ask", &udp),
        );
        assert_eq!(from, client, "udp: the task must see the client's address");
    }

    // Spread: over 30 requests at node3, both tasks answer.
    let target = format!("{}:9200", addrs[2]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (who, _) = ask("http-ask", &target).expect("node3 answers");
        seen.insert(who);
    }
    assert_eq!(seen.len(), 2, "both tasks answer through node3: {seen:?}");

    // localhost on each node.
    for node in &nodes {
        let (out, _) = wait_for(
            &format!("localhost:9200 on {node}"),
            CONVERGE_TIMEOUT,
            || lab.ssh(node, "curl -s -m 3 http://127.0.0.1:9200/"),
        );
        assert!(out.contains("who="), "{node}: {out}");
    }

    // A killed task leaves the mesh: 10 answers in a row from the survivor, no refusal.
    let victim = lab
        .exec(&nodes[0], "search", "hostname")
        .expect("search task on node1")
        .trim()
        .to_string();
    lab.ssh(
        &nodes[0],
        "docker kill $(docker ps -q --filter label=com.docker.swarm.service.name=search)",
    )
    .expect("docker kill");
    let took = until_avoided("the mesh stops choosing the killed task", &target, &victim);
    figure("docker kill to mesh clean (10 good answers)", took);

    // A stopped node's task leaves the mesh once the node is Down; node3 keeps answering.
    lab.running("search", 2);
    let on_n2 = lab
        .exec(&nodes[1], "search", "hostname")
        .expect("search task on node2")
        .trim()
        .to_string();
    lab.cluster.sb().ok(&["stop", &lab.cluster.name, &nodes[1]]);
    let took = until_avoided(
        "the mesh stops choosing the stopped node's task",
        &target,
        &on_n2,
    );
    figure("node stopped to mesh clean (10 good answers)", took);

    // The same port for another service: refused as Docker refuses it.
    let refused = lab.cluster.docker_run(&[
        "service",
        "create",
        "-d",
        "--name",
        "other",
        "-p",
        "9200:80",
        PROBE_IMAGE,
        "sleep",
        "60",
    ]);
    assert!(!refused.ok(), "a second service on 9200 must be refused");
    assert!(
        refused.stderr.contains("already in use"),
        "{}",
        refused.stderr
    );

    // Host mode: bound on the task's node only.
    let on_n3 = format!("node.hostname=={}", nodes[2]);
    lab.service(&[
        "--name",
        "local",
        "--publish",
        "mode=host,published=9300,target=8080",
        "--constraint",
        &on_n3,
        PROBE_IMAGE,
        "swarmup-probe",
        "http-who",
        "8080",
    ]);
    lab.running("local", 1);
    let on3 = format!("{}:9300", addrs[2]);
    wait_for("host mode answers on node3", CONVERGE_TIMEOUT, || {
        ask("http-ask", &on3)
    });
    assert!(
        ask("http-ask", &format!("{}:9300", addrs[0])).is_err(),
        "host mode must not answer on a node without the task"
    );

    // Removing the service closes the port on every node (node2 is stopped).
    lab.docker(&["service", "rm", "search"]);
    for addr in [&addrs[0], &addrs[2]] {
        let t = format!("{addr}:9200");
        wait_for(&format!("{t} closed"), CONVERGE_TIMEOUT, || {
            match ask("http-ask", &t) {
                Err(_) => Ok(()),
                Ok(a) => Err(format!("still answered by {a:?}")),
            }
        });
    }

    lab.cluster.destroy_and_check();
}
