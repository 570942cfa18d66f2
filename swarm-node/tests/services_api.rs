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
