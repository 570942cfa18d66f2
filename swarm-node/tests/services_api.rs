//! End-to-end: services as Docker's, through the stock docker CLI on a real swarm-node
//! manager (its tasks run on the host's Docker Engine). Runs with SWARMUP_E2E=1.

mod support;

use std::time::Duration;

use support::*;

/// Docker's own tutorial starts with `docker service create --name x IMAGE`: one replica,
/// and `inspect` shows every section SwarmKit fills in (restart policy, update and rollback
/// configs, the endpoint mode), which `--pretty` prints.
#[test]
fn a_service_without_flags_gets_docker_s_defaults() {
    if !e2e_enabled("a_service_without_flags_gets_docker_s_defaults") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "service", "create", "-d", "--name", "plain", IMAGE, "sleep", "3600",
    ]);
    let spec: serde_json::Value = serde_json::from_str(&m1.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec}}",
        "plain",
    ]))
    .unwrap();
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 1, "{spec}");
    assert_eq!(spec["TaskTemplate"]["RestartPolicy"]["Condition"], "any");
    assert_eq!(
        spec["TaskTemplate"]["RestartPolicy"]["Delay"],
        5_000_000_000i64
    );
    assert_eq!(
        spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"],
        10_000_000_000i64
    );
    for section in ["UpdateConfig", "RollbackConfig"] {
        assert_eq!(spec[section]["Parallelism"], 1, "{section}: {spec}");
        assert_eq!(spec[section]["FailureAction"], "pause", "{section}");
        assert_eq!(spec[section]["Order"], "stop-first", "{section}");
    }
    let pretty = m1.docker_ok(&["service", "inspect", "--pretty", "plain"]);
    for line in [
        "Replicas:",
        "UpdateConfig:",
        "RollbackConfig:",
        "Endpoint Mode:",
    ] {
        assert!(pretty.contains(line), "no {line:?} in:\n{pretty}");
    }
    wait_for("plain 1/1", Duration::from_secs(60), || {
        m1.docker_ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"])
            .lines()
            .any(|l| l.trim() == "plain 1/1")
    });
    // An update that re-sends what inspect showed keeps the defaults as they were.
    m1.docker_ok(&["service", "update", "-d", "--env-add", "A=1", "plain"]);
    let after: serde_json::Value = serde_json::from_str(&m1.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.UpdateConfig}}",
        "plain",
    ]))
    .unwrap();
    assert_eq!(after, spec["UpdateConfig"]);
}

/// `docker swarm ca` prints the cluster's root certificate (the one nodes trust).
#[test]
fn swarm_ca_prints_the_trust_root() {
    if !e2e_enabled("swarm_ca_prints_the_trust_root") {
        return;
    }
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    let printed = m1.docker_ok(&["swarm", "ca"]);
    let stored =
        std::fs::read_to_string(m1.dir.join("state/certificates/swarm-root-ca.crt")).unwrap();
    assert_eq!(printed.trim(), stored.trim());
    let err = m1.docker_err(&["swarm", "ca", "--cert-expiry", "48h"]);
    assert!(err.contains("requires the `--rotate` flag"), "{err}");
}

/// `docker swarm update` applies what it accepts and refuses what swarm-node cannot
/// change, naming it: it never prints "Swarm updated." for nothing.
#[test]
fn swarm_update_applies_or_refuses_each_flag() {
    if !e2e_enabled("swarm_update_applies_or_refuses_each_flag") {
        return;
    }
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "swarm",
        "update",
        "--task-history-limit",
        "2",
        "--dispatcher-heartbeat",
        "2s",
        "--cert-expiry",
        "48h",
    ]);
    let spec = m1.docker_ok(&[
        "info",
        "--format",
        "{{.Swarm.Cluster.Spec.Orchestration.TaskHistoryRetentionLimit}} {{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}} {{.Swarm.Cluster.Spec.CAConfig.NodeCertExpiry}}",
    ]);
    assert_eq!(spec.trim(), "2 2s 48h0m0s");
    let err = m1.docker_err(&["swarm", "update", "--snapshot-interval", "500"]);
    assert!(err.contains("Raft.SnapshotInterval"), "{err}");
    let out = m1.docker_ok(&["swarm", "update", "--autolock"]);
    assert!(out.contains("SWMKEY-1-"), "{out}");
    let err = m1.docker_err(&["swarm", "update", "--cert-expiry", "10m"]);
    assert!(
        err.contains("minimum certificate expiry time is: 1h0m0s"),
        "{err}"
    );
}

/// `--hostname "{{.Node.Hostname}}-{{.Task.Slot}}"`, `-e` and `--mount` with Docker's
/// templates are expanded on the node; a placeholder swarm-node does not know rejects the
/// task with a message naming it (`docker service ps --no-trunc`).
#[test]
fn templates_expand_in_hostname_env_and_mounts() {
    if !e2e_enabled("templates_expand_in_hostname_env_and_mounts") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "tmpl",
        "--hostname",
        "{{.Node.Hostname}}-{{.Task.Slot}}",
        "-e",
        "WHO={{.Service.Name}}.{{.Task.Slot}} on {{.Node.ID}}",
        "--mount",
        "type=tmpfs,target=/data/{{.Task.Slot}}",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("tmpl 1/1", Duration::from_secs(60), || {
        m1.docker_ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"])
            .lines()
            .any(|l| l.trim() == "tmpl 1/1")
    });
    let node_id = m1.docker_ok(&["node", "inspect", "self", "--format", "{{.ID}}"]);
    let container = std::process::Command::new(docker_cli())
        .args([
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=tmpl",
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&container.stdout)
        .trim()
        .to_string();
    assert!(!id.is_empty(), "no tmpl container on the host engine");
    let inspect = std::process::Command::new(docker_cli())
        .args(["inspect", "--format", "{{json .}}", &id])
        .output()
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(c["Config"]["Hostname"], "m1-1");
    let env: Vec<String> = serde_json::from_value(c["Config"]["Env"].clone()).unwrap();
    assert!(
        env.contains(&format!("WHO=tmpl.1 on {}", node_id.trim())),
        "{env:?}"
    );
    assert_eq!(c["HostConfig"]["Mounts"][0]["Target"], "/data/1", "{c}");

    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "badtmpl",
        "--hostname",
        "{{.Service.Labels}}",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("badtmpl rejected", Duration::from_secs(60), || {
        let ps = m1.docker_ok(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.CurrentState}} {{.Error}}",
            "badtmpl",
        ]);
        ps.contains("Rejected") && ps.contains(".Service.Labels")
    });
}

fn caps(v: &serde_json::Value) -> serde_json::Value {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    c.as_str()
                        .unwrap_or_default()
                        .trim_start_matches("CAP_")
                        .into()
                })
                .collect::<Vec<serde_json::Value>>()
                .into()
        })
        .unwrap_or_default()
}

/// The container options `docker service create` takes end up on the task's container,
/// checked on the real container with `docker inspect`: none is accepted and dropped.
#[test]
fn every_container_option_reaches_the_container() {
    if !e2e_enabled("every_container_option_reaches_the_container") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "opts",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "CHOWN",
        "--dns",
        "10.9.9.9",
        "--dns-search",
        "example.org",
        "--dns-option",
        "ndots:2",
        "--host",
        "db:10.1.2.3",
        "--sysctl",
        "net.core.somaxconn=1024",
        "--ulimit",
        "nofile=1024:2048",
        "--log-driver",
        "json-file",
        "--log-opt",
        "max-size=10m",
        "--health-cmd",
        "true",
        "--health-interval",
        "7s",
        "--init",
        "--read-only",
        "--stop-signal",
        "SIGUSR1",
        "--stop-grace-period",
        "3s",
        "--user",
        "1000",
        "--workdir",
        "/tmp",
        "--group",
        "123",
        "--hostname",
        "optshost",
        "--limit-memory",
        "64M",
        "--limit-cpu",
        "0.5",
        "-e",
        "A=1",
        "--label",
        "svc=label",
        "--container-label",
        "ctr=label",
        "--mount",
        "type=tmpfs,target=/scratch",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("opts 1/1", Duration::from_secs(60), || {
        m1.docker_ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"])
            .lines()
            .any(|l| l.trim() == "opts 1/1")
    });
    let ps = std::process::Command::new(docker_cli())
        .args([
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=opts",
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&ps.stdout).trim().to_string();
    assert!(!id.is_empty(), "no opts container on the host engine");
    let inspect = std::process::Command::new(docker_cli())
        .args(["inspect", "--format", "{{json .}}", &id])
        .output()
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let hc = &c["HostConfig"];
    let cfg = &c["Config"];
    let checks: Vec<(&str, serde_json::Value, serde_json::Value)> = vec![
        (
            "CapAdd",
            // Newer docker CLIs send capabilities with CAP_, older ones without.
            caps(&hc["CapAdd"]),
            serde_json::json!(["NET_ADMIN"]),
        ),
        (
            "CapDrop",
            caps(&hc["CapDrop"]),
            serde_json::json!(["CHOWN"]),
        ),
        ("Dns", hc["Dns"].clone(), serde_json::json!(["10.9.9.9"])),
        (
            "DnsSearch",
            hc["DnsSearch"].clone(),
            serde_json::json!(["example.org"]),
        ),
        (
            "DnsOptions",
            hc["DnsOptions"].clone(),
            serde_json::json!(["ndots:2"]),
        ),
        (
            "ExtraHosts",
            hc["ExtraHosts"].clone(),
            serde_json::json!(["db:10.1.2.3"]),
        ),
        (
            "Sysctls",
            hc["Sysctls"].clone(),
            serde_json::json!({"net.core.somaxconn": "1024"}),
        ),
        (
            "Ulimits",
            hc["Ulimits"].clone(),
            serde_json::json!([{"Name": "nofile", "Soft": 1024, "Hard": 2048}]),
        ),
        (
            "LogConfig.Type",
            hc["LogConfig"]["Type"].clone(),
            "json-file".into(),
        ),
        (
            "LogConfig.Config",
            hc["LogConfig"]["Config"].clone(),
            serde_json::json!({"max-size": "10m"}),
        ),
        (
            "Healthcheck.Test",
            cfg["Healthcheck"]["Test"].clone(),
            serde_json::json!(["CMD-SHELL", "true"]),
        ),
        (
            "Healthcheck.Interval",
            cfg["Healthcheck"]["Interval"].clone(),
            7_000_000_000i64.into(),
        ),
        ("Init", hc["Init"].clone(), true.into()),
        ("ReadonlyRootfs", hc["ReadonlyRootfs"].clone(), true.into()),
        ("StopSignal", cfg["StopSignal"].clone(), "SIGUSR1".into()),
        ("StopTimeout", cfg["StopTimeout"].clone(), 3.into()),
        ("User", cfg["User"].clone(), "1000".into()),
        ("WorkingDir", cfg["WorkingDir"].clone(), "/tmp".into()),
        (
            "GroupAdd",
            hc["GroupAdd"].clone(),
            serde_json::json!(["123"]),
        ),
        ("Hostname", cfg["Hostname"].clone(), "optshost".into()),
        ("Memory", hc["Memory"].clone(), (64i64 << 20).into()),
        ("NanoCpus", hc["NanoCpus"].clone(), 500_000_000i64.into()),
        ("Label ctr", cfg["Labels"]["ctr"].clone(), "label".into()),
        (
            "Mounts",
            hc["Mounts"][0]["Target"].clone(),
            "/scratch".into(),
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: got {got}, want {want}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let env: Vec<String> = serde_json::from_value(cfg["Env"].clone()).unwrap();
    assert!(env.contains(&"A=1".to_string()), "{env:?}");
}

/// A health check decides: the task shows Starting until the check passes, and a task
/// whose check fails is failed with Docker's words and replaced.
#[test]
fn health_checks_gate_running_and_replace_unhealthy_tasks() {
    if !e2e_enabled("health_checks_gate_running_and_replace_unhealthy_tasks") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "slowstart",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        IMAGE,
        "sh",
        "-c",
        "sleep 4; touch /tmp/ok; sleep 3600",
    ]);
    let states = |service: &str| {
        m1.docker_ok(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
            service,
        ])
    };
    wait_for("slowstart Starting", Duration::from_secs(30), || {
        states("slowstart").starts_with("Starting")
    });
    assert!(m1
        .docker_ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"])
        .contains("slowstart 0/1"));
    wait_for(
        "slowstart healthy and Running",
        Duration::from_secs(30),
        || states("slowstart").starts_with("Running"),
    );

    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "sick",
        "--restart-delay",
        "1s",
        "--health-cmd",
        "false",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for(
        "sick failed as unhealthy and replaced",
        Duration::from_secs(60),
        || {
            let s = states("sick");
            s.lines().count() >= 2
                && s.lines()
                    .any(|l| l.starts_with("Failed") && l.contains("unhealthy container"))
        },
    );
}

/// `--reserve-memory` beyond what any node has, and `--replicas-max-per-node`, leave the
/// extra tasks pending with Docker's reason instead of running them anyway.
#[test]
fn reservations_and_replicas_per_node_limit_placement() {
    if !e2e_enabled("reservations_and_replicas_per_node_limit_placement") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "huge",
        "--reserve-memory",
        "100g",
        IMAGE,
        "sleep",
        "3600",
    ]);
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "onepernode",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        IMAGE,
        "sleep",
        "3600",
    ]);
    let ps = |service: &str| {
        m1.docker_ok(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.CurrentState}}|{{.Error}}",
            service,
        ])
    };
    wait_for(
        "huge pending for resources",
        Duration::from_secs(30),
        || ps("huge").contains("insufficient resources on 1 node"),
    );
    wait_for(
        "onepernode: one running, one pending",
        Duration::from_secs(60),
        || {
            let s = ps("onepernode");
            s.lines().any(|l| l.starts_with("Running"))
                && s.contains("max replicas per node limit exceed on 1 node")
        },
    );
    assert!(ps("huge").starts_with("Pending"), "{}", ps("huge"));
}

/// A bad `service update` pauses after the first failed task and keeps the other
/// replicas up, `service rollback` restores the previous spec, and
/// `--update-failure-action rollback` rolls back by itself.
#[test]
fn failed_updates_pause_or_roll_back_and_rollback_restores() {
    if !e2e_enabled("failed_updates_pause_or_roll_back_and_rollback_restores") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    let field = |service: &str, template: &str| {
        m1.docker_ok(&["service", "inspect", "--format", template, service])
            .trim()
            .to_string()
    };
    let replicas = |service: &str| {
        m1.docker_ok(&[
            "service",
            "ls",
            "--filter",
            &format!("name={service}"),
            "--format",
            "{{.Replicas}}",
        ])
        .trim()
        .to_string()
    };
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "upd",
        "--replicas",
        "4",
        "--restart-delay",
        "1s",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("upd 4/4", Duration::from_secs(60), || {
        replicas("upd") == "4/4"
    });

    // An update whose tasks exit at once.
    m1.docker_ok(&["service", "update", "-d", "--args", "false", "upd"]);
    wait_for("the update paused", Duration::from_secs(60), || {
        field("upd", "{{.UpdateStatus.State}}") == "paused"
    });
    let message = field("upd", "{{.UpdateStatus.Message}}");
    assert!(
        message.starts_with("update paused due to failure or early termination of task"),
        "{message}"
    );
    let running_old = m1.docker_ok(&[
        "service",
        "ps",
        "upd",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
    ]);
    assert!(
        running_old
            .lines()
            .filter(|l| l.starts_with("Running"))
            .count()
            >= 3,
        "three replicas keep running: {running_old}"
    );
    assert_eq!(
        field(
            "upd",
            "{{json .PreviousSpec.TaskTemplate.ContainerSpec.Args}}"
        ),
        r#"["sleep","3600"]"#
    );

    // docker service rollback: the previous spec again, rolled out, completed.
    m1.docker_ok(&["service", "rollback", "-d", "upd"]);
    assert_eq!(
        field("upd", "{{json .Spec.TaskTemplate.ContainerSpec.Args}}"),
        r#"["sleep","3600"]"#
    );
    wait_for("the rollback completed", Duration::from_secs(90), || {
        field("upd", "{{.UpdateStatus.State}}") == "rollback_completed"
    });
    wait_for("upd 4/4 again", Duration::from_secs(30), || {
        replicas("upd") == "4/4"
    });

    // --update-failure-action rollback needs no one.
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "auto",
        "--replicas",
        "2",
        "--restart-delay",
        "1s",
        "--update-failure-action",
        "rollback",
        IMAGE,
        "sleep",
        "3600",
    ]);
    wait_for("auto 2/2", Duration::from_secs(60), || {
        replicas("auto") == "2/2"
    });
    m1.docker_ok(&["service", "update", "-d", "--args", "false", "auto"]);
    wait_for("auto rolled back", Duration::from_secs(90), || {
        field("auto", "{{.UpdateStatus.State}}") == "rollback_completed"
    });
    assert_eq!(
        field("auto", "{{json .Spec.TaskTemplate.ContainerSpec.Args}}"),
        r#"["sleep","3600"]"#
    );
    wait_for("auto 2/2 again", Duration::from_secs(30), || {
        replicas("auto") == "2/2"
    });
}

/// `--mode replicated-job` runs its completions once, `--max-concurrent` at a time, and
/// `--mode global-job` once per node; `service ls` shows the completions as Docker does.
#[test]
fn jobs_run_to_completion_once() {
    if !e2e_enabled("jobs_run_to_completion_once") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1"]);
    sandbox.init("1s");
    let m1 = &sandbox.nodes[0];
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "3",
        "--max-concurrent",
        "2",
        IMAGE,
        "true",
    ]);
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "everywhere",
        "--mode",
        "global-job",
        IMAGE,
        "true",
    ]);
    let complete = |service: &str| {
        m1.docker_ok(&["service", "ps", service, "--format", "{{.CurrentState}}"])
            .lines()
            .filter(|l| l.starts_with("Complete"))
            .count()
    };
    wait_for("batch 3 completions", Duration::from_secs(60), || {
        complete("batch") == 3
    });
    wait_for("everywhere 1 completion", Duration::from_secs(60), || {
        complete("everywhere") == 1
    });
    let ls = m1.docker_ok(&[
        "service",
        "ls",
        "--format",
        "{{.Name}} {{.Mode}} {{.Replicas}}",
    ]);
    assert!(
        ls.contains("batch replicated job 0/0 (3/3 completed)"),
        "{ls}"
    );
    assert!(ls.contains("everywhere global job"), "{ls}");
    // Nothing runs again.
    let tasks = m1.docker_ok(&["service", "ps", "batch", "-q"]);
    assert_eq!(tasks.lines().count(), 3, "{tasks}");
    let err = m1.docker_err(&["service", "update", "-d", "--env-add", "A=1", "batch"]);
    assert!(err.contains("updating a job is not supported"), "{err}");
}

/// `docker service logs` gathers every task's output from the nodes that run it, named as
/// Docker names them; `--follow` picks up tasks that start later; a task's own log
/// works too.
#[test]
fn service_logs_come_from_every_node_and_follow_new_tasks() {
    if !e2e_enabled("service_logs_come_from_every_node_and_follow_new_tasks") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1", "w1"]);
    sandbox.init("1s");
    sandbox.join(1, "worker");
    let m1 = &sandbox.nodes[0];
    wait_for("two nodes", Duration::from_secs(30), || {
        m1.docker_ok(&["node", "ls", "-q"]).lines().count() == 2
    });
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "talk",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "-e",
        "SLOT={{.Task.Slot}}",
        IMAGE,
        "sh",
        "-c",
        "echo line-$SLOT; sleep 3600",
    ]);
    // The CLI adds "(max 1 per node)".
    wait_for("talk 2/2", Duration::from_secs(60), || {
        m1.docker_ok(&["service", "ls", "--format", "{{.Replicas}}"])
            .starts_with("2/2")
    });
    let mut logs = String::new();
    wait_for("both lines", Duration::from_secs(30), || {
        logs = m1.docker_ok(&["service", "logs", "talk"]);
        logs.contains("line-1") && logs.contains("line-2")
    });
    assert!(
        logs.lines()
            .any(|l| l.starts_with("talk.1.") && l.contains("line-1")),
        "{logs}"
    );
    assert!(
        logs.contains("@m1") && logs.contains("@w1"),
        "both nodes named: {logs}"
    );
    let raw = m1.docker_ok(&["service", "logs", "--raw", "--timestamps", "talk"]);
    assert!(raw.lines().all(|l| l.contains(" line-")), "{raw}");

    // Follow, then scale: the new task's output arrives on the open stream.
    let mut follow = std::process::Command::new(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", m1.socket().display()))
        .args(["service", "logs", "--follow", "talk"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    m1.docker_ok(&[
        "service",
        "update",
        "-d",
        "--replicas-max-per-node",
        "0",
        "--replicas",
        "3",
        "talk",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("line-3")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter().any(|l| l.contains("line-3")),
        "followed: {seen:?}"
    );

    // One task's log.
    let task = m1.docker_ok(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        "talk",
    ]);
    let first = task.lines().next().unwrap();
    let one = m1.docker_ok(&["service", "logs", first]);
    assert_eq!(one.lines().count(), 1, "{one}");
}

/// Figure: how long a line takes from the engine (its log timestamp, taken as the
/// container writes) to the docker CLI following `docker service logs -f` on a manager,
/// for tasks on the manager itself and on a worker (pulled over the nodes' mutual TLS).
#[test]
fn service_logs_follow_latency_figure() {
    if !e2e_enabled("service_logs_follow_latency_figure") {
        return;
    }
    ensure_image();
    let mut sandbox = Sandbox::new(&["m1", "w1"]);
    sandbox.init("1s");
    sandbox.join(1, "worker");
    let m1 = &sandbox.nodes[0];
    wait_for("two nodes", Duration::from_secs(30), || {
        m1.docker_ok(&["node", "ls", "-q"]).lines().count() == 2
    });
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "tick",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        IMAGE,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done",
    ]);
    wait_for("tick 2/2", Duration::from_secs(60), || {
        m1.docker_ok(&["service", "ls", "--format", "{{.Replicas}}"])
            .starts_with("2/2")
    });
    let mut follow = std::process::Command::new(docker_cli())
        .arg("-H")
        .arg(format!("unix://{}", m1.socket().display()))
        .args([
            "service",
            "logs",
            "--follow",
            "--tail",
            "0",
            "--timestamps",
            "--raw",
            "tick",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, time::OffsetDateTime)>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((line, time::OffsetDateTime::now_utc())).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut latencies = Vec::new();
    while latencies.len() < 200 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((line, seen)) = rx.recv_timeout(left) else {
            break;
        };
        let stamp = line.split_whitespace().next().unwrap_or_default();
        if let Ok(at) =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        {
            latencies.push((seen - at).as_seconds_f64() * 1000.0);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(latencies.len() >= 50, "lines followed: {}", latencies.len());
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "figure: service logs -f latency over {} lines from 2 nodes: median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    );
}
