//! `swarmup create --engine docker` end to end on the lab provider: Docker's own swarm
//! mode on three lab nodes, driven by the stock docker CLI through
//! `DOCKER_HOST=ssh://NODE` as `eval $(swarmup env NAME)` sets it, a service with two
//! replicas, a converging re-run, and a `destroy` that leaves nothing behind.
//!
//! Needs SWARMUP_E2E=1, root, a running dockerd (for the test image), sshd and iproute2;
//! without SWARMUP_E2E=1 it prints `skipped: …`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    assert_refused, docker_cli, e2e_enabled, ensure_test_image, run_bounded, serial, wait_for,
    Cluster, Run, IMAGE,
};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

fn figure(what: &str, took: Duration) {
    println!("figure: {what}: {:.1}s", took.as_secs_f64());
}

/// The ssh the docker CLI runs for `ssh://` hosts reads `~/.ssh/config`; the sandbox keeps
/// its managed block in a file of its own, so a wrapper earlier on PATH names that file.
/// Returns the PATH to use.
fn ssh_wrapper(cluster: &Cluster) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let real = std::env::split_paths(&path)
        .map(|d| d.join("ssh"))
        .find(|p| p.is_file())
        .expect("an ssh client on PATH");
    let dir = cluster.sb().dir.path().join("bin");
    std::fs::create_dir_all(&dir).expect("wrapper dir");
    let wrapper = dir.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -F {} \"$@\"\n",
            real.display(),
            cluster.sb().ssh_config.display()
        ),
    )
    .expect("write the ssh wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut dirs: Vec<PathBuf> = vec![dir];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs)
        .expect("PATH")
        .to_string_lossy()
        .into_owned()
}

/// `swarmup env NAME`, both forms, which must agree: DOCKER_HOST only, an SSH host.
fn docker_env(cluster: &Cluster) -> BTreeMap<String, String> {
    let json = cluster.sb().ok(&["env", &cluster.name, "--output", "json"]);
    let value: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("env --output json printed no JSON ({e}): {json}"));
    let env: BTreeMap<String, String> = value
        .as_object()
        .expect("env JSON is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let shell = cluster.sb().ok(&["env", &cluster.name]);
    let exports: BTreeMap<String, String> = shell
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env, exports, "swarmup env and --output json disagree");
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["DOCKER_HOST"],
        "only DOCKER_HOST, no TLS variables: {shell}"
    );
    assert_eq!(env["DOCKER_HOST"], format!("ssh://{}-node1", cluster.name));
    assert!(
        shell.contains("unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH"),
        "{shell}"
    );
    env
}

/// The stock docker CLI as after `eval $(swarmup env NAME)`.
fn docker(cluster: &Cluster, env: &BTreeMap<String, String>, path: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(docker_cli());
    cmd.args(args)
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env("DOCKER_CONFIG", &cluster.sb().docker_config)
        .env("PATH", path)
        .envs(env)
        .stdin(Stdio::null());
    run_bounded(cmd, Duration::from_secs(60))
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `docker node ls`: hostname → status.
fn node_status(
    cluster: &Cluster,
    env: &BTreeMap<String, String>,
    path: &str,
) -> Result<BTreeMap<String, String>, String> {
    let run = docker(
        cluster,
        env,
        path,
        &["node", "ls", "--format", "{{json .}}"],
    );
    if !run.ok() {
        return Err(run.stderr.trim().to_string());
    }
    Ok(json_lines(&run.stdout)
        .iter()
        .map(|v| {
            (
                v["Hostname"].as_str().unwrap_or_default().to_string(),
                v["Status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Running tasks of `service`, by node.
fn running_tasks(
    cluster: &Cluster,
    env: &BTreeMap<String, String>,
    path: &str,
    service: &str,
) -> Result<Vec<String>, String> {
    let run = docker(
        cluster,
        env,
        path,
        &[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{json .}}",
        ],
    );
    if !run.ok() {
        return Err(run.stderr.trim().to_string());
    }
    let tasks = json_lines(&run.stdout);
    let running: Vec<String> = tasks
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .map(|t| t["Node"].as_str().unwrap_or_default().to_string())
        .collect();
    if running.len() == 2 {
        Ok(running)
    } else {
        Err(run.stdout)
    }
}

fn node_ids(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["nodes"]
        .as_array()
        .expect("nodes in the report")
        .iter()
        .map(|n| {
            assert_eq!(n["status"], "ready", "node not ready: {n}");
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["node_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn docker_engine_cluster_runs_a_service_converges_and_goes() {
    if !e2e_enabled("docker_engine_cluster_runs_a_service_converges_and_goes") {
        return;
    }
    let _serial = serial();
    ensure_test_image();
    let mut cluster = Cluster::new("edk");
    let name = cluster.name.clone();

    // create → three Ready managers of Docker's own swarm.
    let started = Instant::now();
    let report = cluster.create(&["--engine", "docker", "--nodes", "3"]);
    figure("create --engine docker --nodes 3", started.elapsed());
    assert_eq!(report["engine"], "docker", "{report}");
    let ids = node_ids(&report);
    assert_eq!(ids.len(), 3, "{report}");
    assert!(ids.values().all(|id| !id.is_empty()), "{report}");
    let managers = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "manager")
        .count();
    assert_eq!(managers, 3, "{report}");
    let record = std::fs::read_to_string(cluster.sb().record_dir(&name).join("cluster.json"))
        .expect("the record");
    assert!(record.contains("\"engine\": \"docker\""), "{record}");
    assert!(
        !cluster.sb().record_dir(&name).join("client").exists(),
        "a docker engine cluster has no client certificate"
    );

    // The stock docker CLI over SSH, as `eval $(swarmup env NAME)` points it.
    let env = docker_env(&cluster);
    let path = ssh_wrapper(&cluster);
    let (nodes, took) = wait_for("3 Ready nodes in docker node ls", CONVERGE_TIMEOUT, || {
        let nodes = node_status(&cluster, &env, &path)?;
        if nodes.len() == 3 && nodes.values().all(|s| s == "Ready") {
            Ok(nodes)
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    figure("docker node ls over ssh, 3 Ready", took);
    let expected: Vec<String> = (1..=3).map(|i| format!("{name}-node{i}")).collect();
    assert_eq!(nodes.keys().cloned().collect::<Vec<_>>(), expected);
    let info = docker(
        &cluster,
        &env,
        &path,
        &["info", "--format", "{{json .Swarm}}"],
    )
    .expect_ok();
    let swarm: serde_json::Value = serde_json::from_str(info.trim()).expect("swarm JSON");
    assert_eq!(swarm["LocalNodeState"], "active", "{swarm}");
    assert_eq!(swarm["Managers"], 3, "{swarm}");

    // swarmup's own cluster verbs go the same way.
    let listed = cluster.nodes();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|n| n.state == "ready"), "{listed:?}");
    assert_eq!(listed.iter().filter(|n| n.leader).count(), 1, "{listed:?}");

    // A service with two replicas, from an image loaded without a registry.
    cluster.load_test_image();
    let t = Instant::now();
    docker(
        &cluster,
        &env,
        &path,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            IMAGE,
            "sleep",
            "3600",
        ],
    )
    .expect_ok();
    let (on, _) = wait_for("2 running tasks of web", CONVERGE_TIMEOUT, || {
        running_tasks(&cluster, &env, &path, "web")
    });
    figure("service create to 2 replicas running", t.elapsed());
    assert_eq!(on.len(), 2, "{on:?}");
    let services = cluster
        .sb()
        .ok(&["service", "ls", "--cluster", &name, "--output", "json"]);
    assert!(services.contains("\"web\""), "{services}");

    // Re-running create converges: the same nodes, the service untouched.
    let t = Instant::now();
    let again = cluster.create(&[]);
    figure("create again (converge)", t.elapsed());
    assert_eq!(again["engine"], "docker", "{again}");
    assert_eq!(node_ids(&again), ids, "a re-run must keep every node");
    running_tasks(&cluster, &env, &path, "web").expect("web still runs after the re-run");
    let switched = cluster.sb().run(&[
        "create",
        "--name",
        &name,
        "--offline",
        "--engine",
        "swarm-node",
    ]);
    assert_refused(&switched, "cannot switch to --engine swarm-node");

    let took = cluster.destroy_and_check();
    figure("destroy", took);
    assert!(
        !Path::new(&cluster.sb().record_dir(&name)).exists(),
        "the record is gone"
    );
}
