//! Control-plane figures of swarm-node, side by side with Docker's own swarm mode on the
//! same machine. Not a test: it prints numbers. Needs root, a running dockerd and the
//! stock docker CLI; it puts that engine into swarm mode for the comparison and leaves
//! swarm mode again at the end (it refuses to run if the engine is already in a swarm).
//!
//!     cargo bench -p swarm-node --bench cluster
//!
//! Figures:
//! 1. `service create --replicas 30` to 30 tasks Running (3 nodes for swarm-node, the one
//!    engine for Docker);
//! 2. a task's container killed to its replacement Running, restart delay 0;
//! 3. leader failover with 3 managers (swarm-node only: Docker needs three engines; its
//!    election timeout is 10 s by design).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const REPLICAS: usize = 30;
const ROUNDS: usize = 3;

fn docker(args: &[&str]) -> String {
    let out = Command::new(docker_cli())
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn poll(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn replicas_running(run: &dyn Fn(&[&str]) -> String, service: &str, want: usize) -> bool {
    let out = run(&[
        "service",
        "ls",
        "--filter",
        &format!("name={service}"),
        "--format",
        "{{.Replicas}}",
    ]);
    out.trim() == format!("{want}/{want}")
}

fn running_containers(service: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

struct Figures {
    create_30: Vec<Duration>,
    replace: Vec<Duration>,
    failover: Vec<Duration>,
}

fn measure(run: &dyn Fn(&[&str]) -> String, prefix: &str) -> Figures {
    let mut create_30 = Vec::new();
    let mut replace = Vec::new();
    for round in 0..ROUNDS {
        let name = format!("{prefix}bench{round}");
        let started = Instant::now();
        run(&[
            "service",
            "create",
            "-d",
            "--name",
            &name,
            "--replicas",
            &REPLICAS.to_string(),
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            "1s",
            IMAGE,
            "sleep",
            "3600",
        ]);
        poll(Duration::from_secs(120), || {
            replicas_running(run, &name, REPLICAS)
        })
        .expect("30 replicas running");
        create_30.push(started.elapsed());

        let victim = running_containers(&name)
            .into_iter()
            .next()
            .expect("a container");
        let killed = Instant::now();
        docker(&["kill", &victim]);
        // The replacement is a new container; wait until 30 run again without the victim.
        poll(Duration::from_secs(60), || {
            let now = running_containers(&name);
            now.len() == REPLICAS
                && !now.contains(&victim)
                && replicas_running(run, &name, REPLICAS)
        })
        .expect("replacement running");
        replace.push(killed.elapsed());
        run(&["service", "rm", &name]);
        poll(Duration::from_secs(60), || {
            running_containers(&name).is_empty()
        });
    }
    Figures {
        create_30,
        replace,
        failover: Vec::new(),
    }
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn show(label: &str, ours: &[Duration], docker: &[Duration]) {
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{:.2}s", d.as_secs_f64()))
            .unwrap_or_else(|| "n/a".into())
    };
    let (o, d) = (median(ours), median(docker));
    let ratio = match (o, d) {
        (Some(o), Some(d)) if o.as_secs_f64() > 0.0 => {
            format!("{:.1}x faster", d.as_secs_f64() / o.as_secs_f64())
        }
        _ => "n/a".into(),
    };
    println!(
        "{label:<52} swarm-node {:>7}   docker swarm {:>7}   {ratio}   (runs: {:?})",
        fmt(o),
        fmt(d),
        ours.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
}

fn main() {
    if docker(&["version", "--format", "{{.Server.Version}}"])
        .trim()
        .is_empty()
    {
        eprintln!("bench: no Docker Engine answers: start dockerd first");
        std::process::exit(1);
    }
    let swarm_state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    if swarm_state.trim() == "active" {
        eprintln!(
            "bench: this engine is already in a swarm; run the bench on an engine that is not"
        );
        std::process::exit(1);
    }
    ensure_image();

    // swarm-node: three managers on loopback sharing this engine.
    let mut sb = Sandbox::new(&["node1", "node2", "node3"]);
    sb.init("1s");
    sb.join(1, "manager");
    sb.join(2, "manager");
    let socket = sb.nodes[0].socket();
    let ours_cli = move |args: &[&str]| -> String {
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .output()
            .expect("docker CLI");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    poll(Duration::from_secs(60), || {
        ours_cli(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"])
            .lines()
            .filter(|l| {
                l.starts_with("Ready") && (l.ends_with("Leader") || l.ends_with("Reachable"))
            })
            .count()
            == 3
    })
    .expect("three managers ready");
    let mut ours = measure(&ours_cli, "sn");

    for _ in 0..ROUNDS {
        let leader = ours_cli(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"])
            .lines()
            .find(|l| l.ends_with("Leader"))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .expect("a leader");
        let index = sb
            .nodes
            .iter()
            .position(|n| n.name == leader)
            .expect("leader node");
        let other = (index + 1) % 3;
        let killed = Instant::now();
        sb.nodes[index].kill();
        let took = poll(Duration::from_secs(30), || {
            let out = sb.nodes[other].docker(&[
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.ManagerStatus}}",
            ]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.ends_with("Leader") && !l.starts_with(&leader))
        })
        .expect("new leader");
        let _ = killed;
        ours.failover.push(took);
        sb.nodes[index].start();
        std::thread::sleep(Duration::from_secs(3));
    }
    drop(sb);

    // Docker's own swarm mode on this engine.
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let docker_cli_fn = |args: &[&str]| docker(args);
    let theirs = measure(&docker_cli_fn, "ds");
    docker(&["swarm", "leave", "--force"]);

    println!();
    println!("swarm-node control plane vs Docker swarm mode (same machine, same engine, median of {ROUNDS})");
    show(
        "service create --replicas 30 -> 30 Running",
        &ours.create_30,
        &theirs.create_30,
    );
    show(
        "task killed -> replacement Running (restart delay 0)",
        &ours.replace,
        &theirs.replace,
    );
    show(
        "leader failover, 3 managers (docker: 10 s election)",
        &ours.failover,
        &[],
    );
}
