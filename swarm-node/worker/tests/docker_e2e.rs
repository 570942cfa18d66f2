//! The executor on a real Docker Engine (DOCKER_HOST when it is a unix socket, else
//! /var/run/docker.sock). Runs only with SWARMUP_E2E=1. Uses the local image
//! `swarmup-test/busybox:latest`, built from Debian's busybox-static when missing; no
//! image is ever pulled from outside the machine. Every container is labelled with a
//! per-test node id and removed at the end; task file stores live under a temp dir and
//! are swept at the end.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use swarm_state::models::{Task, TaskSpec, TaskSpecContainerSpec, TaskState, TaskStatus};
use swarm_state::proto::TaskStatusUpdate;
use swarm_worker::runtime::labels;
use swarm_worker::{AssignedTasks, ContainerRuntime, DockerRuntime, Executor, RunState};
use tokio::sync::{mpsc, oneshot, watch};

const IMAGE: &str = "swarmup-test/busybox:latest";
const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
RUN ["/bin/busybox","mkdir","-p","/tmp","/var/www","/etc"]
CMD ["/bin/sh"]
"#;

fn enabled() -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: set SWARMUP_E2E=1 to run the tests against a real docker engine");
        false
    }
}

fn socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

async fn runtime() -> Arc<DockerRuntime> {
    let rt = DockerRuntime::connect(&socket())
        .await
        .unwrap_or_else(|e| panic!("e2e needs a docker engine: {e}"));
    ensure_test_image(&rt).await;
    Arc::new(rt)
}

/// Builds the test image with the docker CLI unless the engine has it already.
async fn ensure_test_image(rt: &DockerRuntime) {
    if rt.client().inspect_image(IMAGE).await.is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tokio::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .await
        .expect("/bin/busybox (package busybox-static) is needed to build the test image");
    tokio::fs::write(dir.path().join("Dockerfile"), DOCKERFILE)
        .await
        .unwrap();
    let cli = if std::path::Path::new("/usr/local/bin/docker").exists() {
        "/usr/local/bin/docker"
    } else {
        "docker"
    };
    let out = tokio::process::Command::new(cli)
        .arg("-H")
        .arg(socket())
        .args(["build", "-q", "-t", IMAGE])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .await
        .expect("running docker build");
    assert!(
        out.status.success(),
        "docker build of {IMAGE} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Force-removes every container labelled with this node id.
async fn cleanup(rt: &DockerRuntime, node: &str) {
    let filters = HashMap::from([("label", vec![format!("{}={node}", labels::NODE_ID)])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = rt.client().list_containers(Some(options)).await else {
        return;
    };
    for c in list {
        if let Some(id) = c.id {
            let _ = rt
                .client()
                .remove_container(
                    &id,
                    Some(
                        RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                )
                .await;
        }
    }
}

/// Runs `body`, then cleans up even if it panicked.
async fn with_cleanup<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Arc<DockerRuntime>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = runtime().await;
    let node = format!("e2e-{name}-{}", std::process::id());
    cleanup(&rt, &node).await;
    let result = tokio::spawn(body(rt.clone(), node.clone())).await;
    cleanup(&rt, &node).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn task(node: &str, id: &str, args: &[&str], grace_secs: i64) -> Task {
    Task {
        id: Some(id.into()),
        service_id: Some("svc-e2e".into()),
        node_id: Some(node.into()),
        slot: Some(1),
        labels: Some(HashMap::from([(
            labels::SERVICE_NAME.to_string(),
            "e2e".to_string(),
        )])),
        spec: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(IMAGE.into()),
                command: Some(args.iter().map(|s| s.to_string()).collect()),
                stop_grace_period: Some(grace_secs * 1_000_000_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(swarm_state::status(TaskState::ASSIGNED, "assigned", "t0")),
        desired_state: Some(TaskState::RUNNING),
        ..Default::default()
    }
}

fn with_desired(mut t: Task, desired: TaskState, observed: TaskState) -> Task {
    t.desired_state = Some(desired);
    t.status = Some(swarm_state::status(observed, "", "t1"));
    t
}

struct Running {
    assignments: watch::Sender<AssignedTasks>,
    reports: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    seen: Vec<TaskStatusUpdate>,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

/// Starts an executor. The resync period is long on purpose: deaths must be noticed
/// through the engine's events.
fn start(rt: Arc<DockerRuntime>, node: &str, tasks: Vec<Task>) -> Running {
    let (assignments, rx) = watch::channel::<AssignedTasks>(Some(Arc::new(tasks.into())));
    let (tx, reports) = mpsc::unbounded_channel();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let exec = Executor::new(node, rt).with_resync(Duration::from_secs(60));
    let handle = tokio::spawn(exec.run(rx, tx, async {
        let _ = stop_rx.await;
    }));
    Running {
        assignments,
        reports,
        seen: Vec::new(),
        stop,
        handle,
    }
}

impl Running {
    async fn wait_for(&mut self, task_id: &str, state: TaskState, within: Duration) -> TaskStatus {
        let found = |u: &TaskStatusUpdate| u.task_id == task_id && u.status.state == Some(state);
        if let Some(u) = self.seen.iter().find(|u| found(u)) {
            return u.status.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(u)) = tokio::time::timeout(left, self.reports.recv()).await else {
                let states: Vec<_> = self
                    .seen
                    .iter()
                    .filter(|u| u.task_id == task_id)
                    .map(|u| (u.status.state, u.status.err.clone()))
                    .collect();
                panic!("no {state} for {task_id} within {within:?}; saw {states:?}");
            };
            self.seen.push(u.clone());
            if found(&u) {
                return u.status;
            }
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap();
    }
}

async fn containers_of(
    rt: &DockerRuntime,
    node: &str,
    task_id: &str,
) -> Vec<swarm_worker::TaskContainer> {
    rt.list(node)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.task_id == task_id)
        .collect()
}

#[tokio::test]
async fn engine_is_described_with_a_negotiated_api_version() {
    if !enabled() {
        return;
    }
    with_cleanup("describe", |rt, _node| async move {
        let (major, minor) = rt
            .api_version()
            .split_once('.')
            .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
            .unwrap();
        assert_eq!(major, 1);
        assert!(minor >= 24, "api {}", rt.api_version());
        let d = rt.describe().await.unwrap();
        println!("engine: api {} {:?}", rt.api_version(), d.engine);
        assert!(!d.hostname.unwrap_or_default().is_empty());
        assert_eq!(d.platform.unwrap().os.as_deref(), Some("linux"));
        let res = d.resources.unwrap();
        assert!(res.nano_cpus.unwrap() >= 1_000_000_000);
        assert!(res.memory_bytes.unwrap() > 0);
        assert!(d.engine.unwrap().engine_version.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_task_runs_dies_and_is_reported_failed_promptly() {
    if !enabled() {
        return;
    }
    with_cleanup("kill", |rt, node| async move {
        let t = task(&node, "killme", &["sleep", "300"], 10);
        let mut ex = start(rt.clone(), &node, vec![t]);
        let running = ex
            .wait_for("killme", TaskState::RUNNING, Duration::from_secs(30))
            .await;
        let cid = running.container_status.unwrap().container_id.unwrap();
        let cs = containers_of(&rt, &node, "killme").await;
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].id, cid);
        assert_eq!(cs[0].name, "e2e.1.killme");
        assert_eq!(cs[0].state, RunState::Running);
        assert_eq!(cs[0].labels[labels::TASK_NAME], "e2e.1.killme");
        assert_eq!(cs[0].labels[labels::SERVICE_ID], "svc-e2e");
        assert_eq!(cs[0].labels[labels::TASK], "");

        let killed_at = Instant::now();
        rt.client()
            .kill_container(&cid, None::<KillContainerOptions>)
            .await
            .unwrap();
        let failed = ex
            .wait_for("killme", TaskState::FAILED, Duration::from_secs(5))
            .await;
        let took = killed_at.elapsed();
        println!("container death reported as FAILED after {took:?}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (137)"));
        // Not restarted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cs = containers_of(&rt, &node, "killme").await;
        assert_eq!(cs.len(), 1);
        assert!(matches!(cs[0].state, RunState::Exited { code: 137, .. }));
        ex.stop().await;
    })
    .await;
}

#[tokio::test]
async fn desired_shutdown_honours_the_grace_period() {
    if !enabled() {
        return;
    }
    with_cleanup("shutdown", |rt, node| async move {
        // `sleep` as PID 1 ignores SIGTERM, so the stop lasts the whole grace period.
        let t = task(&node, "stopme", &["sleep", "300"], 2);
        let mut ex = start(rt.clone(), &node, vec![t.clone()]);
        ex.wait_for("stopme", TaskState::RUNNING, Duration::from_secs(30))
            .await;
        let asked = Instant::now();
        ex.assignments.send_replace(Some(Arc::new(
            vec![with_desired(t, TaskState::SHUTDOWN, TaskState::RUNNING)].into(),
        )));
        let shut = ex
            .wait_for("stopme", TaskState::SHUTDOWN, Duration::from_secs(20))
            .await;
        let took = asked.elapsed();
        println!("stop with a 2 s grace period took {took:?}");
        assert!(took >= Duration::from_millis(1800), "took {took:?}");
        assert!(took < Duration::from_secs(8), "took {took:?}");
        assert_eq!(shut.err, None);
        assert_eq!(shut.container_status.unwrap().exit_code, Some(137));
        ex.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_restarted_executor_readopts_its_container() {
    if !enabled() {
        return;
    }
    with_cleanup("adopt", |rt, node| async move {
        let t = task(&node, "keepme", &["sleep", "300"], 1);
        let mut ex = start(rt.clone(), &node, vec![t.clone()]);
        let running = ex
            .wait_for("keepme", TaskState::RUNNING, Duration::from_secs(30))
            .await;
        let cid = running.container_status.unwrap().container_id.unwrap();
        ex.stop().await;
        assert_eq!(
            containers_of(&rt, &node, "keepme").await[0].state,
            RunState::Running
        );

        let mut ex = start(
            rt.clone(),
            &node,
            vec![with_desired(
                t.clone(),
                TaskState::RUNNING,
                TaskState::RUNNING,
            )],
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cs = containers_of(&rt, &node, "keepme").await;
        assert_eq!(cs.len(), 1, "adopted, not duplicated");
        assert_eq!(cs[0].id, cid);
        assert_eq!(cs[0].state, RunState::Running);

        // Removal by the new executor: stop (1 s grace), report, remove.
        ex.assignments.send_replace(Some(Arc::new(
            vec![with_desired(t, TaskState::REMOVE, TaskState::RUNNING)].into(),
        )));
        ex.wait_for("keepme", TaskState::SHUTDOWN, Duration::from_secs(15))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !containers_of(&rt, &node, "keepme").await.is_empty() {
            assert!(Instant::now() < deadline, "container not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ex.stop().await;
    })
    .await;
}

#[tokio::test]
async fn exit_zero_completes_and_a_missing_image_is_rejected() {
    if !enabled() {
        return;
    }
    with_cleanup("outcomes", |rt, node| async move {
        let ok = task(&node, "okay", &["true"], 1);
        let bad = task(&node, "bad", &["false"], 1);
        // The pull of an absent image only ever goes to loopback, where nothing listens.
        let mut missing = task(&node, "missing", &["true"], 1);
        let missing_image = "127.0.0.1:9/swarmup-missing:latest";
        missing
            .spec
            .as_mut()
            .unwrap()
            .container_spec
            .as_mut()
            .unwrap()
            .image = Some(missing_image.into());
        let mut ex = start(rt.clone(), &node, vec![ok, bad, missing]);
        let done = ex
            .wait_for("okay", TaskState::COMPLETE, Duration::from_secs(30))
            .await;
        assert_eq!(done.container_status.unwrap().exit_code, Some(0));
        let failed = ex
            .wait_for("bad", TaskState::FAILED, Duration::from_secs(30))
            .await;
        assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (1)"));
        let rejected = ex
            .wait_for("missing", TaskState::REJECTED, Duration::from_secs(60))
            .await;
        // Docker's wording, the engine's reason, then what to do in a swarmup cluster.
        let err = rejected.err.unwrap_or_default();
        assert!(
            err.starts_with(&format!("No such image: {missing_image}: pull failed: ")),
            "{err}"
        );
        assert!(err.contains("127.0.0.1:9"), "the engine's reason: {err}");
        assert!(err.ends_with(swarm_worker::runtime::IMAGE_HINT), "{err}");
        ex.stop().await;
    })
    .await;
}

/// Removes the test's networks, by name, whatever the test got to.
async fn remove_networks(rt: &DockerRuntime, names: &[String]) {
    for name in names {
        let _ = rt.client().remove_network(name).await;
    }
}

#[tokio::test]
async fn overlay_bridges_are_made_and_a_container_gets_both_fixed_addresses() {
    if !enabled() {
        return;
    }
    use swarm_net::BridgeSpec;
    use swarm_worker::spec::{attach, container_spec};
    use swarm_worker::TaskNetwork;

    // Names, bridges and subnets of this run only; nothing is routed anywhere.
    let pid = std::process::id();
    let octet = 10 + pid % 200;
    let front = BridgeSpec {
        network_id: format!("e2e-front-{pid}"),
        network_name: format!("e2e-front-{pid}"),
        bridge: format!("swb{}", 9_000_000 + pid % 1_000_000),
        subnet: format!("10.251.{octet}.0/24").parse().unwrap(),
        gateway: format!("10.251.{octet}.1").parse().unwrap(),
        mtu: 1450,
        internal: false,
    };
    let back = BridgeSpec {
        network_id: format!("e2e-back-{pid}"),
        network_name: format!("e2e-back-{pid}"),
        bridge: format!("swb{}", 8_000_000 + pid % 1_000_000),
        subnet: format!("10.252.{octet}.0/24").parse().unwrap(),
        gateway: format!("10.252.{octet}.1").parse().unwrap(),
        mtu: 1450,
        internal: true,
    };
    let foreign = format!("e2e-foreign-{pid}");
    let names = vec![
        front.network_name.clone(),
        back.network_name.clone(),
        foreign.clone(),
    ];
    let rt = runtime().await;
    remove_networks(&rt, &names).await;
    let (front2, back2, foreign2) = (front.clone(), back.clone(), foreign.clone());
    let node = format!("e2e-networks-{pid}");
    cleanup(&rt, &node).await;
    let (rt2, node2) = (rt.clone(), node.clone());
    let body = async move {
        let (rt, node) = (rt2, node2);
        let (front, back, foreign) = (front2, back2, foreign2);
        let id = rt.ensure_network(&front, &node).await.unwrap();
        assert_eq!(
            rt.ensure_network(&front, &node).await.unwrap(),
            id,
            "an unchanged network is kept"
        );
        let changed = BridgeSpec {
            mtu: 1400,
            ..front.clone()
        };
        let recreated = rt.ensure_network(&changed, &node).await.unwrap();
        assert_ne!(recreated, id, "other settings: made again");
        rt.ensure_network(&front, &node).await.unwrap();
        rt.ensure_network(&back, &node).await.unwrap();
        let ours: Vec<String> = rt
            .networks()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert!(ours.contains(&front.network_name) && ours.contains(&back.network_name));

        // A network of the user's with the name of an overlay is refused, not touched.
        rt.client()
            .create_network(bollard::models::NetworkCreateRequest {
                name: foreign.clone(),
                driver: Some("bridge".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let clash = BridgeSpec {
            network_name: foreign.clone(),
            ..front.clone()
        };
        let refused = rt.ensure_network(&clash, &node).await.unwrap_err();
        assert!(
            refused.to_string().contains("swarmup did not create"),
            "{refused}"
        );

        let inspect = rt
            .client()
            .inspect_network(
                &front.network_name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .unwrap();
        let options = inspect.options.unwrap_or_default();
        assert_eq!(options["com.docker.network.bridge.name"], front.bridge);
        assert_eq!(options["com.docker.network.driver.mtu"], "1450");

        let a1: std::net::Ipv4Addr = format!("10.251.{octet}.10").parse().unwrap();
        let a2: std::net::Ipv4Addr = format!("10.252.{octet}.20").parse().unwrap();
        let attachments = vec![
            TaskNetwork {
                docker_network: front.network_name.clone(),
                addr: a1,
                prefix_len: 24,
                gateway: front.gateway,
            },
            TaskNetwork {
                docker_network: back.network_name.clone(),
                addr: a2,
                prefix_len: 24,
                gateway: back.gateway,
            },
        ];
        let mut spec = container_spec(&task(&node, "net1", &["sleep", "300"], 1)).unwrap();
        attach(&mut spec, &attachments);
        let cid = rt.create(&spec).await.unwrap();
        rt.start(&cid).await.unwrap();

        let c = rt
            .client()
            .inspect_container(
                &cid,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap();
        let nets = c.network_settings.unwrap().networks.unwrap_or_default();
        let ep1 = &nets[&front.network_name];
        let ep2 = &nets[&back.network_name];
        assert_eq!(ep1.ip_address.as_deref(), Some(a1.to_string().as_str()));
        assert_eq!(ep2.ip_address.as_deref(), Some(a2.to_string().as_str()));
        assert_eq!(
            ep1.mac_address.as_deref(),
            Some(swarm_state::network::mac_text(a1).as_str()),
            "every node derives the same MAC from the address"
        );
        assert!(
            ep1.aliases.iter().flatten().all(|a| a != "e2e"),
            "no alias for the service name"
        );
        let dns = c.host_config.unwrap().dns.unwrap_or_default();
        assert_eq!(dns, vec![front.gateway.to_string()]);

        // In use: the engine refuses to remove it, and says so.
        assert!(rt.remove_network(&front.network_name).await.is_err());
    };
    // Containers, then networks, go even when the body failed.
    let result = tokio::spawn(body).await;
    cleanup(&rt, &node).await;
    remove_networks(&rt, &names).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    let left = rt.networks().await.unwrap();
    assert!(
        left.iter().all(|n| !names.contains(&n.name)),
        "cleaned up: {left:?}"
    );
}

/// Runs a command in a container as `user` and returns its exit code and output.
async fn exec(rt: &DockerRuntime, container: &str, user: &str, cmd: &[&str]) -> (i64, String) {
    use bollard::exec::StartExecResults;
    use futures_util::StreamExt;
    let created = rt
        .client()
        .create_exec(
            container,
            bollard::models::ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                user: Some(user.into()),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        rt.client().start_exec(&created.id, None).await.unwrap()
    {
        while let Some(chunk) = output.next().await {
            text.push_str(&chunk.unwrap().to_string());
        }
    }
    let code = rt
        .client()
        .inspect_exec(&created.id)
        .await
        .unwrap()
        .exit_code
        .unwrap_or(-1);
    (code, text)
}

/// The file system type and options (per mount and per super block) of the mount at
/// `path` in this host's mount table.
fn host_mount(path: &std::path::Path) -> Option<(String, Vec<String>)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy();
    info.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        if f.get(4).copied() != Some(wanted.as_ref()) {
            return None;
        }
        let dash = f.iter().position(|x| *x == "-")?;
        let mut options: Vec<String> = f[5].split(',').map(str::to_string).collect();
        options.extend(f.get(dash + 3)?.split(',').map(str::to_string));
        Some((f[dash + 1].to_string(), options))
    })
}

#[tokio::test]
async fn secrets_and_configs_reach_the_container_from_a_tmpfs_only() {
    if !enabled() {
        return;
    }
    use std::collections::{BTreeMap, BTreeSet};
    use swarm_state::models::{
        TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1,
        TaskSpecContainerSpecSecrets,
    };
    use swarm_state::proto::FileData;
    use swarm_worker::{Assigned, HostTaskFiles, TaskFiles};

    let tmp = tempfile::tempdir().unwrap();
    let store = HostTaskFiles::new(tmp.path().join("secrets"));
    let store2 = store.clone();
    let result = tokio::spawn(with_cleanup("secrets", |rt, node| async move {
        let store = store2;
        let mut t = task(&node, "sec1", &["sleep", "300"], 1);
        let cs = t.spec.as_mut().unwrap().container_spec.as_mut().unwrap();
        cs.secrets = Some(vec![TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some("db_pw".into()),
                uid: Some("1000".into()),
                gid: Some("0".into()),
                mode: Some(0o400),
            }),
            secret_id: Some("secretid1".into()),
            secret_name: Some("db_pw".into()),
        }]);
        cs.configs = Some(vec![TaskSpecContainerSpecConfigs {
            file: Some(TaskSpecContainerSpecFile1 {
                name: Some("app.conf".into()),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(0o444),
            }),
            runtime: None,
            config_id: Some("configid1".into()),
            config_name: Some("app".into()),
        }]);
        let assigned = |tasks: Vec<Task>| {
            Some(Arc::new(Assigned {
                tasks: tasks.into_iter().map(Arc::new).collect(),
                // "s3cr3t-value\n" and "port=8080\n", as the managers send them.
                secrets: BTreeMap::from([(
                    "secretid1".to_string(),
                    FileData("czNjcjN0LXZhbHVlCg==".into()),
                )]),
                configs: BTreeMap::from([(
                    "configid1".to_string(),
                    FileData("cG9ydD04MDgwCg==".into()),
                )]),
                ..Default::default()
            }))
        };
        let (assignments, rx) = watch::channel::<AssignedTasks>(assigned(vec![t.clone()]));
        let (tx, reports) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let exec_ = Executor::new(node.clone(), rt.clone())
            .with_resync(Duration::from_secs(60))
            .with_task_files(Arc::new(store.clone()));
        let handle = tokio::spawn(exec_.run(rx, tx, async {
            let _ = stop_rx.await;
        }));
        let mut ex = Running {
            assignments,
            reports,
            seen: Vec::new(),
            stop,
            handle,
        };
        let running = ex
            .wait_for("sec1", TaskState::RUNNING, Duration::from_secs(30))
            .await;
        let cid = running.container_status.unwrap().container_id.unwrap();

        // Inside: the data, the owner and mode of the reference, and read-only.
        let (code, out) = exec(&rt, &cid, "0", &["cat", "/run/secrets/db_pw"]).await;
        assert_eq!((code, out.as_str()), (0, "s3cr3t-value\n"));
        let (_, out) = exec(
            &rt,
            &cid,
            "0",
            &["stat", "-c", "%a %u %g", "/run/secrets/db_pw"],
        )
        .await;
        assert_eq!(out.trim(), "400 1000 0");
        let (code, out) = exec(&rt, &cid, "0", &["cat", "/app.conf"]).await;
        assert_eq!((code, out.as_str()), (0, "port=8080\n"));
        let (_, out) = exec(&rt, &cid, "0", &["stat", "-c", "%a %u %g", "/app.conf"]).await;
        assert_eq!(out.trim(), "444 0 0");
        let (code, _) = exec(&rt, &cid, "1000", &["cat", "/run/secrets/db_pw"]).await;
        assert_eq!(code, 0, "its owner reads it");
        let (code, _) = exec(&rt, &cid, "1001", &["cat", "/run/secrets/db_pw"]).await;
        assert_ne!(code, 0, "another user does not");
        let (code, _) = exec(
            &rt,
            &cid,
            "0",
            &["sh", "-c", "echo changed > /run/secrets/db_pw"],
        )
        .await;
        assert_ne!(code, 0, "not even root changes it");

        // Outside: read-only binds of files on a read-only tmpfs of this task's own.
        let c = rt
            .client()
            .inspect_container(
                &cid,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap();
        let mounts = c.mounts.unwrap_or_default();
        assert_eq!(mounts.len(), 2, "{mounts:?}");
        let task_dir = store.task_dir("sec1");
        for m in &mounts {
            assert_eq!(m.rw, Some(false), "{m:?}");
            let source = std::path::PathBuf::from(m.source.clone().unwrap());
            assert!(source.starts_with(&task_dir), "{source:?}");
        }
        let (fstype, options) = host_mount(&task_dir).expect("the task's store is a mount");
        assert_eq!(fstype, "tmpfs");
        for opt in ["ro", "nodev", "nosuid", "noexec", "mode=700"] {
            assert!(options.iter().any(|o| o == opt), "{opt} in {options:?}");
        }

        // Removed: the container, then the store, unmounted.
        ex.assignments.send_replace(assigned(vec![with_desired(
            t,
            TaskState::REMOVE,
            TaskState::RUNNING,
        )]));
        ex.wait_for("sec1", TaskState::SHUTDOWN, Duration::from_secs(15))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !containers_of(&rt, &node, "sec1").await.is_empty() || task_dir.exists() {
            assert!(
                Instant::now() < deadline,
                "container or store left: {:?}",
                task_dir
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(host_mount(&task_dir).is_none(), "unmounted");
        ex.stop().await;
    }))
    .await;
    // Whatever happened, no store is left mounted.
    store.sweep(&BTreeSet::new()).await.unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
