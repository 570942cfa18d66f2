//! Overlay networks, service VIPs and service DNS end to end: a 3-node lab cluster made by
//! `swarmup create`, driven by the stock docker CLI, with the course's drupal + postgres
//! exercise played by stand-ins from the busybox test image:
//!
//! - `psql`: busybox httpd on port 5432 whose CGI answers with the task's hostname and the
//!   client address it sees;
//! - `drupal`: a client on another node that reaches `psql` by name (through the VIP), by
//!   `tasks.psql`, and keeps its own address on the way.
//!
//! Also: isolation between two networks, dnsrr, a killed task leaving the VIP, and
//! `docker network rm` in use and not. Needs SWARMUP_E2E=1 and root, like lab_e2e.rs.

mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use support::net::{figure, NetLab, CONVERGE_TIMEOUT};
use support::{e2e_enabled, ensure_swarm_node, serial, wait_for, IMAGE};

/// A service that answers HTTP on 5432 with `psql <hostname> from <client address>`.
const SERVER_SCRIPT: &str = concat!(
    "mkdir -p /www/cgi-bin && ",
    "printf '#!/bin/sh\\necho Content-type: text/plain\\necho\\necho \"$SERVICE $(hostname) from $REMOTE_ADDR\"\\n' ",
    "> /www/cgi-bin/who && chmod +x /www/cgi-bin/who && exec httpd -f -p 5432 -h /www"
);

const ASK_PSQL: &str = "timeout 3 wget -q -O - http://psql:5432/cgi-bin/who";

/// The answering task's hostname in a `psql HOST from CLIENT` answer.
fn psql_host(out: &str) -> Result<String, String> {
    match out.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["psql", host, "from", _] => Ok(host.to_string()),
        _ => Err(format!("unexpected answer {out:?}")),
    }
}

/// The client address in a `psql HOST from CLIENT` answer; busybox httpd writes IPv4
/// clients as `[::ffff:A.B.C.D]`.
fn client_of(out: &str) -> Option<String> {
    match out.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["psql", _, "from", client] => Some(
            client
                .trim_start_matches("[::ffff:")
                .trim_end_matches(']')
                .to_string(),
        ),
        _ => None,
    }
}

/// The addresses an `nslookup NAME` inside a task container answers.
fn lookup(lab: &NetLab, node: &str, service: &str, name: &str) -> Result<BTreeSet<String>, String> {
    let out = lab.exec(node, service, &format!("nslookup {name}"))?;
    // busybox prints the server first ("Server:", "Address: 127.0.0.11:53"), then the
    // answers after "Name:".
    let answers: BTreeSet<String> = out
        .split("Name:")
        .skip(1)
        .flat_map(|block| block.lines())
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if answers.is_empty() {
        Err(format!("no answer for {name}: {out}"))
    } else {
        Ok(answers)
    }
}

#[test]
fn overlay_networks_vips_and_service_dns_on_a_lab_cluster() {
    if !e2e_enabled("overlay_networks_vips_and_service_dns_on_a_lab_cluster") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let mut lab = NetLab::new("net");
    lab.cluster.create(&["--nodes", "3"]);
    lab.cluster.load_test_image();
    let (n1, n2, n3) = (lab.node(1), lab.node(2), lab.node(3));

    // The course's network, and Docker's view of it.
    lab.docker(&["network", "create", "--driver", "overlay", "mydrupal"]);
    let ls = lab.docker(&[
        "network",
        "ls",
        "--filter",
        "driver=overlay",
        "--format",
        "{{.Name}} {{.Driver}} {{.Scope}}",
    ]);
    assert!(ls.contains("mydrupal overlay swarm"), "{ls}");
    assert!(ls.contains("ingress overlay swarm"), "{ls}");

    // psql: two tasks, on node1 and node2; drupal: one client on node3.
    let not_n3 = format!("node.hostname!={n3}");
    let on_n3 = format!("node.hostname=={n3}");
    lab.service(&[
        "--name",
        "psql",
        "--network",
        "mydrupal",
        "--replicas",
        "2",
        "--constraint",
        &not_n3,
        "-e",
        "SERVICE=psql",
        IMAGE,
        "sh",
        "-c",
        SERVER_SCRIPT,
    ]);
    lab.service(&[
        "--name",
        "drupal",
        "--network",
        "mydrupal",
        "--constraint",
        &on_n3,
        IMAGE,
        "sleep",
        "3600",
    ]);
    let psql_nodes: BTreeSet<String> = lab.running("psql", 2).into_iter().collect();
    assert_eq!(
        psql_nodes,
        BTreeSet::from([n1.clone(), n2.clone()]),
        "psql spread over node1 and node2"
    );
    lab.running("drupal", 1);

    // By name, through the VIP, across nodes: both psql tasks answer, and each sees the
    // client's own overlay address.
    let vip = lab.vip("psql");
    assert!(vip.starts_with("10."), "psql has a VIP: {vip:?}");
    // Docker writes the container's address into its /etc/hosts.
    let drupal_ip = lab.address_of(&n3, "drupal");
    lab.until_distinct(
        "drupal reaches both psql tasks by name",
        &n3,
        "drupal",
        ASK_PSQL,
        2,
        |out| match client_of(out) {
            Some(c) if c == drupal_ip => psql_host(out),
            _ => Err(format!("unexpected answer {out:?} (client {drupal_ip})")),
        },
    );

    // DNS: the name is the VIP, tasks.psql the two task addresses.
    let psql = lookup(&lab, &n3, "drupal", "psql").expect("nslookup psql");
    assert_eq!(
        psql,
        BTreeSet::from([vip.clone()]),
        "psql resolves to its VIP"
    );
    let tasks = lookup(&lab, &n3, "drupal", "tasks.psql").expect("nslookup tasks.psql");
    assert_eq!(tasks.len(), 2, "tasks.psql: {tasks:?}");
    assert!(!tasks.contains(&vip), "{tasks:?}");
    for addr in &tasks {
        let out = lab
            .exec(
                &n3,
                "drupal",
                &format!("wget -q -O - http://{addr}:5432/cgi-bin/who"),
            )
            .unwrap_or_else(|e| panic!("task address {addr} unreachable: {e}"));
        assert_eq!(
            client_of(&out).as_deref(),
            Some(drupal_ip.as_str()),
            "the task sees the client's own address: {out}"
        );
    }

    // dnsrr: no VIP, the name gives the task addresses.
    lab.service(&[
        "--name",
        "rr",
        "--network",
        "mydrupal",
        "--endpoint-mode",
        "dnsrr",
        "--replicas",
        "2",
        IMAGE,
        "sleep",
        "3600",
    ]);
    lab.running("rr", 2);
    assert_eq!(lab.vip("rr"), "", "a dnsrr service has no VIP");
    let (rr, _) = wait_for("rr resolves to 2 tasks", CONVERGE_TIMEOUT, || {
        let rr = lookup(&lab, &n3, "drupal", "rr")?;
        if rr.len() == 2 {
            Ok(rr)
        } else {
            Err(format!("{rr:?}"))
        }
    });
    assert!(rr.iter().all(|a| a.starts_with("10.")), "{rr:?}");

    // Isolation: a service on another network sees neither psql's name nor its VIP.
    lab.docker(&["network", "create", "-d", "overlay", "other"]);
    lab.service(&[
        "--name",
        "lonely",
        "--network",
        "other",
        "--constraint",
        &on_n3,
        IMAGE,
        "sleep",
        "3600",
    ]);
    lab.running("lonely", 1);
    assert!(
        lookup(&lab, &n3, "lonely", "psql").is_err(),
        "psql must not resolve from another network"
    );
    assert!(
        lab.exec(
            &n3,
            "lonely",
            &format!("timeout 3 wget -q -O - http://{vip}:5432/cgi-bin/who")
        )
        .is_err(),
        "psql's VIP must not answer another network"
    );

    // A killed task leaves the VIP: every request goes to the survivor from then on.
    let victim = lab
        .exec(&n1, "psql", "hostname")
        .expect("psql task on node1")
        .trim()
        .to_string();
    lab.ssh(
        &n1,
        "docker kill $(docker ps -q --filter label=com.docker.swarm.service.name=psql)",
    )
    .expect("docker kill");
    let took = lab.until_streak(
        "the VIP stops sending to the killed task",
        &n3,
        "drupal",
        ASK_PSQL,
        10,
        |out| psql_host(out).is_ok_and(|h| h != victim),
    );
    figure("docker kill to VIP clean (10 good answers in a row)", took);

    // dockerd restarted on node2 (the lab's init starts it again): its containers die with
    // it, and the data plane must repair whatever the engine's restart undid, so both psql
    // tasks answer by name again, one of them new.
    lab.running("psql", 2);
    let before = lab
        .exec(&n2, "psql", "hostname")
        .expect("psql task on node2")
        .trim()
        .to_string();
    lab.ssh(&n2, "kill $(cat /run/docker.pid)")
        .expect("stop node2's dockerd");
    let restarted = Instant::now();
    wait_for("node2's dockerd back", CONVERGE_TIMEOUT, || {
        lab.ssh(&n2, "docker version --format '{{.Server.Version}}'")
    });
    let answered = lab.until_distinct(
        "both psql tasks answer by name after node2's dockerd restart",
        &n3,
        "drupal",
        ASK_PSQL,
        2,
        |out| {
            psql_host(out).and_then(|h| {
                if h == before {
                    Err(format!(
                        "the task {before} killed with dockerd still answers"
                    ))
                } else {
                    Ok(h)
                }
            })
        },
    );
    assert!(!answered.contains(&before), "{answered:?}");
    figure(
        "dockerd restart to both psql tasks answering",
        restarted.elapsed(),
    );

    // A stopped node's tasks leave the VIP once the node is Down.
    let on_n2 = lab
        .exec(&n2, "psql", "hostname")
        .expect("psql task on node2")
        .trim()
        .to_string();
    lab.cluster.sb().ok(&["stop", &lab.cluster.name, &n2]);
    let stopped = Instant::now();
    lab.until_streak(
        "the VIP stops sending to the stopped node's task",
        &n3,
        "drupal",
        ASK_PSQL,
        10,
        |out| psql_host(out).is_ok_and(|h| h != on_n2),
    );
    figure(
        "node stopped to VIP clean (10 good answers in a row)",
        stopped.elapsed(),
    );

    // network rm: refused while in use, then done.
    let refused = lab.cluster.docker_run(&["network", "rm", "other"]);
    assert!(!refused.ok(), "rm of a network in use must fail");
    assert!(
        refused.stderr.contains("is in use by service"),
        "{}",
        refused.stderr
    );
    lab.docker(&["service", "rm", "lonely"]);
    lab.docker(&["network", "rm", "other"]);
    let ls = lab.docker(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == "other"), "{ls}");

    lab.cluster.destroy_and_check();
}
