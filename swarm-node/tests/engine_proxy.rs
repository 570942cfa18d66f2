//! End-to-end: one Docker endpoint per node. Through swarm-node's socket the stock docker
//! CLI reaches the swarm (`node ls`) and the node's own engine (`ps`, `images`, `run`,
//! `exec`, `logs`, `events`), with `docker info` showing both. Runs with SWARMUP_E2E=1.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn the_node_socket_serves_the_swarm_and_the_engine() {
    if !e2e_enabled("the_node_socket_serves_the_swarm_and_the_engine") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];

    // The swarm and the engine on one endpoint.
    assert!(m1.docker_ok(&["node", "ls"]).contains("m1"));
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        IMAGE,
        "sh",
        "-c",
        "echo started; sleep 3600",
    ]);
    wait_for("web 1/1", Duration::from_secs(60), || {
        m1.docker_ok(&["service", "ls", "--format", "{{.Replicas}}"])
            .trim()
            == "1/1"
    });
    let ps = m1.docker_ok(&[
        "ps",
        "--filter",
        "label=com.docker.swarm.service.name=web",
        "--format",
        "{{.ID}} {{.Names}}",
    ]);
    let (cid, name) = ps
        .trim()
        .split_once(' ')
        .expect("the task container in docker ps");
    assert!(name.starts_with("web.1."), "{ps}");
    assert!(m1
        .docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .contains(IMAGE));

    // docker info: the engine's figures and the swarm's section.
    let info: serde_json::Value =
        serde_json::from_str(&m1.docker_ok(&["info", "--format", "{{json .}}"])).unwrap();
    assert!(info["Containers"].as_i64().unwrap_or(0) >= 1, "{info}");
    assert!(info["MemTotal"].as_i64().unwrap_or(0) > 0, "{info}");
    assert_eq!(info["Swarm"]["LocalNodeState"], "active", "{info}");
    assert_eq!(info["Swarm"]["ControlAvailable"], true, "{info}");

    // Streams and upgraded connections.
    assert_eq!(m1.docker_ok(&["logs", cid]).trim(), "started");
    assert_eq!(
        m1.docker_ok(&["exec", cid, "echo", "from exec"]).trim(),
        "from exec"
    );
    assert_eq!(
        m1.docker_ok(&["run", "--rm", IMAGE, "echo", "from run"])
            .trim(),
        "from run"
    );
    let events = m1.docker_ok(&[
        "events",
        "--since",
        "10m",
        "--until",
        "0s",
        "--filter",
        "type=container",
        "--format",
        "{{.Action}}",
    ]);
    assert!(events.lines().any(|l| l == "start"), "{events}");

    // What the extra hop costs, printed (not asserted): the stock CLI's wall time for
    // `docker ps` and `docker exec`, through swarm-node and straight to the engine.
    let time = |direct: bool, args: &[&str]| {
        let mut times = Vec::new();
        for _ in 0..10 {
            let started = std::time::Instant::now();
            let out = if direct {
                std::process::Command::new(docker_cli())
                    .args(args)
                    .output()
                    .unwrap()
            } else {
                m1.docker(args)
            };
            assert!(out.status.success());
            times.push(started.elapsed());
        }
        times.sort();
        times[times.len() / 2]
    };
    for args in [&["ps"][..], &["exec", cid, "true"][..]] {
        println!(
            "figure: docker {} median: through swarm-node {:?}, straight to the engine {:?}",
            args[0],
            time(false, args),
            time(true, args)
        );
    }

    // Swarm-mode calls of a plain engine say what to do instead.
    let err = m1.docker_err(&["swarm", "init"]);
    assert!(err.contains("swarmup create"), "{err}");
    let err = m1.docker_err(&["swarm", "leave"]);
    assert!(err.contains("swarm-node leave"), "{err}");
}
