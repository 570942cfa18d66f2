//! One Docker endpoint per node, end to end on a real lab cluster: `ssh NODE` then the
//! stock docker CLI reaches swarm-node (the swarm on managers, Docker's worker message on
//! workers, and the node's engine through it: `ps`, `run -it`, `exec`, `logs -f`,
//! `events`); `docker ps` and `docker images` through `swarmup env`; the lab registry
//! serves pushes and services; an offline lab node reaches nothing outside the lab.
//!
//! Needs SWARMUP_E2E=1, root, a running dockerd (for the test image), sshd, iproute2,
//! nftables, busybox-static, `script` and Debian's docker-registry.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    e2e_enabled, ensure_swarm_node, ensure_test_image, host_docker, run_bounded, serial, wait_for,
    Cluster, Run, IMAGE,
};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
const SSH_TIMEOUT: Duration = Duration::from_secs(60);

fn figure(what: &str, took: Duration) {
    println!("figure: {what}: {:.3}s", took.as_secs_f64());
}

/// `ssh -F SANDBOX_CONFIG [-tt] HOST SCRIPT` with its own stdin (a pipe held open until it
/// exits, so a pseudo-terminal session is not cut short by an early end of input).
fn ssh(cluster: &Cluster, host: &str, tty: bool, script: &str) -> Run {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F").arg(&cluster.sb().ssh_config).args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
    ]);
    if tty {
        cmd.arg("-tt");
    }
    cmd.args([host, script]);
    bounded_with_open_stdin(cmd, SSH_TIMEOUT)
}

fn bounded_with_open_stdin(mut cmd: Command, timeout: Duration) -> Run {
    cmd.stdin(Stdio::piped());
    let what = format!("{cmd:?}");
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let err = tempfile::NamedTempFile::new().expect("temp file");
    cmd.stdout(out.reopen().expect("reopen"))
        .stderr(err.reopen().expect("reopen"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let _stdin = child.stdin.take();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?}; output so far: {}{}",
                std::fs::read_to_string(out.path()).unwrap_or_default(),
                std::fs::read_to_string(err.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        what,
        status,
        stdout: std::fs::read_to_string(out.path()).unwrap_or_default(),
        stderr: std::fs::read_to_string(err.path()).unwrap_or_default(),
    }
}

fn ssh_ok(cluster: &Cluster, host: &str, script: &str) -> String {
    ssh(cluster, host, false, script).expect_ok()
}

/// A network namespace of the test's own with one address, wired to the host by a veth
/// pair: an "outside" address that is not the internet. Removed when dropped.
struct Outside {
    netns: String,
    address: &'static str,
}

impl Outside {
    fn new() -> Outside {
        let id = std::process::id() & 0xffff;
        let netns = format!("swtout-{id:x}");
        let host_end = format!("swto{id:x}");
        // TEST-NET-1: documentation addresses, routed here only to the veth below.
        let outside = Outside {
            netns: netns.clone(),
            address: "192.0.2.66",
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", "192.0.2.65/30", "dev", &host_end]);
        ip(&["link", "set", &host_end, "up"]);
        ip(&["-n", &netns, "addr", "add", "192.0.2.66/30", "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["-n", &netns, "route", "add", "default", "via", "192.0.2.65"]);
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Packets the offline table's forward chain dropped so far.
fn offline_drops(tag: &str) -> u64 {
    let out = Command::new("nft")
        .args([
            "list",
            "chain",
            "inet",
            &format!("swarmup_lab_{tag}"),
            "forward",
        ])
        .output()
        .expect("run nft");
    assert!(out.status.success(), "the offline table exists");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn docker_on_the_nodes_the_lab_registry_and_an_offline_lab() {
    if !e2e_enabled("docker_on_the_nodes_the_lab_registry_and_an_offline_lab") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    ensure_test_image();
    let mut cluster = Cluster::new("e2e-dock");
    let name = cluster.name.clone();
    let (manager, worker) = (format!("{name}-node1"), format!("{name}-node2"));
    let t = Instant::now();
    let report = cluster.create(&["--nodes", "2", "--registry"]);
    figure("create --nodes 2 --registry --offline", t.elapsed());
    let registry = report["registry"]
        .as_str()
        .unwrap_or_else(|| panic!("create reports the lab registry: {report}"))
        .to_string();
    assert!(registry.ends_with(".1:5000"), "{registry}");

    // The manager's docker CLI is swarm-node's: the swarm is there.
    let nodes = ssh_ok(
        &cluster,
        &manager,
        "docker node ls --format '{{.Hostname}} {{.Status}}'",
    );
    for n in [&manager, &worker] {
        assert!(
            nodes.contains(&format!("{n} Ready")),
            "docker node ls: {nodes}"
        );
    }
    let context = ssh_ok(&cluster, &manager, "docker context show");
    assert_eq!(context.trim(), "swarmup");
    // The worker's answers with Docker's own words.
    let refused = ssh(&cluster, &worker, false, "docker node ls");
    assert!(!refused.ok(), "{refused}");
    assert!(
        refused.stderr.contains("This node is not a swarm manager."),
        "{refused}"
    );
    // dockerd's own socket is where it was, for tools that use it directly.
    let direct = ssh_ok(
        &cluster,
        &worker,
        "docker -H unix:///var/run/docker.sock info --format '{{.Swarm.LocalNodeState}}'",
    );
    assert_eq!(
        direct.trim(),
        "inactive",
        "dockerd itself is not in swarm mode"
    );

    // An image reaches the manager's engine through `swarmup env`, and from there the
    // lab registry; the worker never gets it any other way.
    let mut save = host_docker();
    save.args(["save", IMAGE]).stdout(Stdio::piped());
    let mut save = save.spawn().expect("docker save");
    let mut load = cluster.docker(&["load"]);
    load.stdin(Stdio::from(save.stdout.take().expect("stdout")));
    let loaded = run_bounded(load, Duration::from_secs(120)).expect_ok();
    assert!(save.wait().expect("docker save").success());
    assert!(loaded.contains(IMAGE), "docker load: {loaded}");
    let images = cluster
        .docker_run(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .expect_ok();
    assert!(
        images.contains(IMAGE),
        "docker images through swarmup env: {images}"
    );

    let app = format!("{registry}/app:1");
    let t = Instant::now();
    ssh_ok(
        &cluster,
        &manager,
        &format!("docker tag {IMAGE} {app} && docker push {app}"),
    );
    figure("docker push to the lab registry", t.elapsed());
    let absent = ssh(
        &cluster,
        &worker,
        false,
        &format!("docker image inspect {app}"),
    );
    assert!(!absent.ok(), "the worker has no copy yet: {absent}");
    cluster
        .docker_run(&[
            "service", "create", "-d", "--name", "web", "--mode", "global", &app, "sleep", "3600",
        ])
        .expect_ok();
    let (_, took) = wait_for("web running on both nodes", CONVERGE_TIMEOUT, || {
        let tasks = cluster.docker_running_tasks("web")?;
        let running = tasks
            .iter()
            .filter(|t| t.current.starts_with("Running"))
            .count();
        if running == 2 {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    figure(
        "a global service from the lab registry running on 2 nodes",
        took,
    );

    // An image no node has and the registry lacks: Docker's words, then what to do.
    let missing = format!("{registry}/missing:1");
    cluster
        .docker_run(&["service", "create", "-d", "--name", "nope", &missing])
        .expect_ok();
    let (error, _) = wait_for("the task of nope rejected", CONVERGE_TIMEOUT, || {
        let out = cluster
            .docker_run(&[
                "service",
                "ps",
                "nope",
                "--no-trunc",
                "--format",
                "{{.CurrentState}}|{{.Error}}",
            ])
            .expect_ok();
        out.lines()
            .find(|l| l.starts_with("Rejected"))
            .map(str::to_string)
            .ok_or(out)
    });
    assert!(
        error.contains(&format!("No such image: {missing}"))
            && error.contains("swarmup image load"),
        "{error}"
    );
    cluster.docker_run(&["service", "rm", "nope"]).expect_ok();

    // `docker ps` through swarmup env is the manager's engine.
    let ps = cluster
        .docker_run(&["ps", "--format", "{{.Names}} {{.Image}}"])
        .expect_ok();
    assert!(
        ps.lines()
            .any(|l| l.starts_with("web.") && l.ends_with(&app)),
        "docker ps: {ps}"
    );

    // On the manager: the swarm and the engine from one CLI.
    let tasks = ssh_ok(
        &cluster,
        &manager,
        "docker service ps web --format '{{.Node}}'",
    );
    for n in [&manager, &worker] {
        assert!(tasks.contains(n.as_str()), "docker service ps web: {tasks}");
    }
    let ps = ssh_ok(&cluster, &manager, "docker ps --format '{{.Names}}'");
    assert!(ps.lines().any(|l| l.starts_with("web.")), "docker ps: {ps}");

    // `docker run --rm -it` through a pseudo-terminal.
    let t = Instant::now();
    let it = ssh(
        &cluster,
        &manager,
        true,
        &format!(
            "docker run --rm -it {app} sh -c 'test -t 0 && test -t 1 && echo tty-ok-$((6*7))'"
        ),
    );
    assert!(it.ok(), "{it}");
    assert!(it.stdout.contains("tty-ok-42"), "{it}");
    figure("ssh -tt + docker run --rm -it", t.elapsed());
    // The same under `script`, a terminal on this side too.
    let mut script = Command::new("script");
    script.args([
        "-qec",
        &format!(
            "ssh -F {} -o BatchMode=yes -tt {manager} docker run --rm -it {app} sh -c \"'test -t 0 && echo script-ok'\"",
            cluster.sb().ssh_config.display()
        ),
        "/dev/null",
    ]);
    let scripted = bounded_with_open_stdin(script, SSH_TIMEOUT);
    assert!(scripted.stdout.contains("script-ok"), "{scripted}");

    // `docker exec`, `docker logs -f` (ends with the container) and `docker events`
    // (bounded by --until).
    let since = ssh_ok(&cluster, &manager, "date +%s");
    let since = since.trim();
    ssh_ok(
        &cluster,
        &manager,
        &format!(
            "docker run -d --name counted {app} sh -c 'sleep 1; for i in 1 2 3; do echo line$i; sleep 0.3; done'"
        ),
    );
    let t = Instant::now();
    let exec = ssh_ok(
        &cluster,
        &manager,
        "docker exec $(docker ps -q --filter name=web. | head -n1) echo exec-ok",
    );
    assert_eq!(exec.trim(), "exec-ok");
    figure("docker exec over ssh", t.elapsed());
    let logs = ssh_ok(&cluster, &manager, "docker logs -f counted");
    assert_eq!(logs.trim(), "line1\nline2\nline3", "docker logs -f: {logs}");
    let events = ssh_ok(
        &cluster,
        &manager,
        &format!(
            "docker events --since {since} --until $(( $(date +%s) + 2 )) --filter container=counted --format '{{{{.Action}}}}'"
        ),
    );
    for action in ["create", "start", "die"] {
        assert!(
            events.lines().any(|l| l.trim() == action),
            "docker events has {action}: {events}"
        );
    }
    ssh_ok(&cluster, &manager, "docker rm counted");

    // Offline: a node cannot reach an address outside the lab, and it is the lab's own
    // drop rule that stops it.
    let tag: String = {
        let text = std::fs::read_to_string(cluster.sb().lab_dir(&name).join("cluster.json"))
            .expect("lab index");
        let v: serde_json::Value = serde_json::from_str(&text).expect("lab index JSON");
        v["tag"].as_str().expect("tag").to_string()
    };
    let outside = Outside::new();
    let host_ping = Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "2", outside.address])
        .output()
        .expect("busybox ping");
    assert!(
        host_ping.status.success(),
        "the outside address answers the host"
    );
    let before = offline_drops(&tag);
    let probe = ssh(
        &cluster,
        &manager,
        false,
        &format!("busybox ping -c 2 -W 2 {}", outside.address),
    );
    assert!(
        !probe.ok(),
        "an offline node reached {}: {probe}",
        outside.address
    );
    let after = offline_drops(&tag);
    assert!(
        after >= before + 2,
        "the offline rule dropped the probe ({before} -> {after})"
    );
    drop(outside);

    cluster.destroy_and_check();
}
