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
use std::time::{Duration, Instant};

use support::{e2e_enabled, ensure_swarm_node, serial, wait_for, Cluster, IMAGE};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

fn figure(what: &str, took: Duration) {
    println!("figure: {what}: {:.3}s", took.as_secs_f64());
}

/// A service that answers HTTP on 5432 with `psql <hostname> from <client address>`.
const SERVER_SCRIPT: &str = concat!(
    "mkdir -p /www/cgi-bin && ",
    "printf '#!/bin/sh\\necho Content-type: text/plain\\necho\\necho \"$SERVICE $(hostname) from $REMOTE_ADDR\"\\n' ",
    "> /www/cgi-bin/who && chmod +x /www/cgi-bin/who && exec httpd -f -p 5432 -h /www"
);

struct Lab {
    cluster: Cluster,
}

impl Lab {
    fn docker(&mut self, args: &[&str]) -> String {
        self.cluster.docker_run(args).expect_ok()
    }

    fn node(&self, i: u32) -> String {
        format!("{}-node{i}", self.cluster.name)
    }

    /// Runs `docker exec` in the (only) running container of `service` on `node`, through
    /// `swarmup ssh`: the node's own engine.
    fn exec(&self, node: &str, service: &str, cmd: &str) -> Result<String, String> {
        let script = format!(
            "c=$(docker ps -q --filter label=com.docker.swarm.service.name={service} | head -n1); \
             [ -n \"$c\" ] || {{ echo no container of {service} >&2; exit 3; }}; \
             docker exec \"$c\" sh -c '{cmd}'"
        );
        let run = self
            .cluster
            .sb()
            .run(&["ssh", &self.cluster.name, node, "--", &script]);
        if run.ok() {
            Ok(run.stdout)
        } else {
            Err(format!("{}{}", run.stdout, run.stderr))
        }
    }

    /// `docker service create -d ARGS…`.
    fn service(&mut self, args: &[&str]) {
        let mut all = vec!["service", "create", "-d"];
        all.extend_from_slice(args);
        self.docker(&all);
    }

    /// Waits until `service` has `n` running tasks; returns their nodes.
    fn running(&mut self, service: &str, n: usize) -> Vec<String> {
        let (nodes, took) = wait_for(
            &format!("{n} running tasks of {service}"),
            CONVERGE_TIMEOUT,
            || {
                let tasks = self.cluster.docker_running_tasks(service)?;
                let on: Vec<String> = tasks
                    .iter()
                    .filter(|t| t.current.starts_with("Running"))
                    .map(|t| t.node.clone())
                    .collect();
                if on.len() == n {
                    Ok(on)
                } else {
                    Err(format!("{tasks:?}"))
                }
            },
        );
        figure(&format!("{service} running {n}/{n}"), took);
        nodes
    }

    /// The addresses an `nslookup NAME` inside a task container answers.
    fn lookup(&self, node: &str, service: &str, name: &str) -> Result<BTreeSet<String>, String> {
        let out = self.exec(node, service, &format!("nslookup {name}"))?;
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

    /// `service inspect`'s VIP of a service on a network, without the prefix length.
    fn vip(&mut self, service: &str) -> String {
        let out = self.docker(&[
            "service",
            "inspect",
            service,
            "--format",
            "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}",
        ]);
        let vip = out.split_whitespace().next().unwrap_or_default();
        vip.split('/').next().unwrap_or_default().to_string()
    }
}

#[test]
fn overlay_networks_vips_and_service_dns_on_a_lab_cluster() {
    if !e2e_enabled("overlay_networks_vips_and_service_dns_on_a_lab_cluster") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let mut lab = Lab {
        cluster: Cluster::new("net"),
    };
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
    let drupal_ip = lab
        .exec(&n3, "drupal", "hostname -i")
        .expect("drupal's address")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let (_, took) = wait_for(
        "drupal reaches both psql tasks by name",
        CONVERGE_TIMEOUT,
        || {
            let out = lab.exec(&n3, "drupal", "wget -q -O - http://psql:5432/cgi-bin/who")?;
            let words: Vec<&str> = out.split_whitespace().collect();
            match words.as_slice() {
                // busybox httpd writes IPv4 clients as [::ffff:A.B.C.D].
                ["psql", host, "from", client]
                    if client.trim_start_matches("[::ffff:").trim_end_matches(']') == drupal_ip =>
                {
                    seen.insert(host.to_string());
                }
                _ => return Err(format!("unexpected answer {out:?} (client {drupal_ip})")),
            }
            if seen.len() == 2 {
                Ok(())
            } else {
                Err(format!("answered by {seen:?} so far"))
            }
        },
    );
    figure(
        "first request by name across nodes",
        started.elapsed().min(took),
    );

    // DNS: the name is the VIP, tasks.psql the two task addresses.
    let psql = lab.lookup(&n3, "drupal", "psql").expect("nslookup psql");
    assert_eq!(
        psql,
        BTreeSet::from([vip.clone()]),
        "psql resolves to its VIP"
    );
    let tasks = lab
        .lookup(&n3, "drupal", "tasks.psql")
        .expect("nslookup tasks.psql");
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
        assert!(out.contains(&format!("from {drupal_ip}")), "{out}");
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
        let rr = lab.lookup(&n3, "drupal", "rr")?;
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
        lab.lookup(&n3, "lonely", "psql").is_err(),
        "psql must not resolve from another network"
    );
    assert!(
        lab.exec(
            &n3,
            "lonely",
            &format!("wget -q -T 2 -O - http://{vip}:5432/cgi-bin/who")
        )
        .is_err(),
        "psql's VIP must not answer another network"
    );

    // A killed task leaves the VIP: every request goes to the survivor from then on.
    let victim_host = lab
        .exec(&n1, "psql", "hostname")
        .expect("psql task on node1")
        .trim()
        .to_string();
    lab.cluster.sb().ok(&[
        "ssh",
        &lab.cluster.name,
        &n1,
        "--",
        "docker kill $(docker ps -q --filter label=com.docker.swarm.service.name=psql)",
    ]);
    let killed = Instant::now();
    let mut streak = 0;
    wait_for(
        "the VIP stops sending to the killed task",
        CONVERGE_TIMEOUT,
        || {
            let out = lab.exec(
                &n3,
                "drupal",
                "wget -q -T 2 -O - http://psql:5432/cgi-bin/who",
            );
            match out {
                Ok(o) if !o.contains(&victim_host) => streak += 1,
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
        },
    );
    figure(
        "docker kill to VIP clean (10 good answers in a row)",
        killed.elapsed(),
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
