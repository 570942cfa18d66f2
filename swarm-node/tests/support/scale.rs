//! A swarm of many nodes in one process, for the scale harness (`benches/scale.rs`) and
//! its smoke test (`tests/scale_smoke.rs`).
//!
//! Three real managers (Raft, the CA, the dispatcher, the orchestrator and scheduler, the
//! Docker API) each serve their control port with mutual TLS on a loopback listener
//! bound to port 0, and each runs on a tokio runtime of its own whose threads are named
//! after it (`scale-m1`…), so a manager's CPU time is read per thread from
//! `/proc/self/task` and a manager can be killed by dropping its runtime. The nodes
//! are the real worker agent (`swarm_worker::Agent`: heartbeats, the assignments long
//! poll, batched status reports) with the fake container runtime, joined with the worker
//! token through the real `join`; they share one runtime (`scale-nodes`). Nothing needs
//! root or Docker.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use swarm_node::api::{self, NodeContext};
use swarm_node::clock::SystemClock;
use swarm_node::config::NodeFile;
use swarm_node::manager::{leader, Manager, NodeClients};
use swarm_pki::{ClientIdentityHandle, Identity, ServeOptions, TlsAcceptorHandle};
use swarm_raft::ClusterRaft;
use swarm_state::models::{Task, TaskState};
use swarm_state::{desired_of, ClusterState, Command};
use tokio::sync::watch;

/// The image every service of the harness runs; each fake engine has it.
pub const IMAGE: &str = "swarmup-scale/app:1";

/// What a harness swarm looks like.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Worker nodes besides the managers (which are drained).
    pub nodes: usize,
    /// Managers: 3, or 1 to measure one manager's memory on its own.
    pub managers: usize,
    /// How long each fake container start takes.
    pub start_delay: Duration,
    /// The swarm's heartbeat period.
    pub heartbeat_ms: u64,
    /// Joins in flight at once (the control port admits 16 anonymous connections per
    /// address, and every node joins from 127.0.0.1).
    pub join_concurrency: usize,
    /// The control port's connection budgets.
    pub serve: ServeOptions,
}

impl ScaleOptions {
    pub fn new(nodes: usize) -> Self {
        ScaleOptions {
            nodes,
            managers: 3,
            start_delay: Duration::from_millis(100),
            heartbeat_ms: 5_000,
            join_concurrency: 8,
            serve: harness_serve_options(nodes),
        }
    }
}

/// The production budgets, with room for `nodes` workers' connections when they all
/// talk to one manager (each agent keeps up to four: heartbeat, two long polls,
/// reports), and for one handshake per node at once (`SCALE_HANDSHAKES` overrides it):
/// with the default 256, the burst of new connections when 1,000 nodes start reporting
/// together evicted handshakes still under way on a busy manager, those nodes missed
/// heartbeats and were taken for lost.
pub fn harness_serve_options(nodes: usize) -> ServeOptions {
    let defaults = ServeOptions::default();
    let handshakes = std::env::var("SCALE_HANDSHAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(defaults.max_handshakes.max(nodes));
    ServeOptions {
        max_connections: defaults.max_connections.max(4 * nodes + 64),
        max_handshakes: handshakes,
        ..defaults
    }
}

/// One manager: its runtime, its state directory and what runs on it.
pub struct ScaleManager {
    pub name: String,
    pub dir: PathBuf,
    pub addr: String,
    pub node_id: String,
    pub manager: Arc<Manager>,
    runtime: Option<tokio::runtime::Runtime>,
    runtime_id: usize,
    stop: watch::Sender<bool>,
}

impl ScaleManager {
    pub fn is_leader(&self) -> bool {
        self.runtime.is_some() && self.manager.raft.is_leader()
    }

    pub fn alive(&self) -> bool {
        self.runtime.is_some()
    }

    /// The thread-name prefix of this manager's runtime.
    pub fn thread_prefix(&self) -> String {
        thread_prefix(self.runtime_id, &self.name)
    }

    /// Kills the manager at once, as a crash would: its runtime goes with every task,
    /// listener and connection on it.
    pub fn kill(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ScaleManager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One simulated node: the real agent on a fake engine.
pub struct ScaleNode {
    pub node_id: String,
    pub runtime: Arc<swarm_worker::FakeRuntime>,
    task: tokio::task::JoinHandle<()>,
}

impl ScaleNode {
    /// Stops the agent as a lost machine would: no more heartbeats or reports.
    pub fn kill(&self) {
        self.task.abort();
    }
}

/// The whole harness swarm.
pub struct ScaleCluster {
    pub root: tempfile::TempDir,
    pub managers: Vec<ScaleManager>,
    pub nodes: Vec<ScaleNode>,
    pub admin: reqwest::Client,
    pub options: ScaleOptions,
    worker_token: String,
}

/// Managers' runtimes are numbered across the process: a later swarm's m1 must not count
/// the CPU time of an earlier one's threads (the kernel keeps 15 bytes of a name).
static RUNTIMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn thread_prefix(runtime_id: usize, name: &str) -> String {
    format!("s{runtime_id}-{name}")
}

fn runtime(runtime_id: usize, name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(thread_prefix(runtime_id, name))
        // Idle blocking threads would take their CPU time with them when they exit.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.spawn(f).await.expect("task on a manager runtime")
}

/// Starts the manager whose state directory `dir` holds, serving on `listener`, with the
/// daemon's wiring minus the Docker engine, overlays and DNS.
async fn start_manager(
    name: &str,
    dir: PathBuf,
    listener: std::net::TcpListener,
    serve: ServeOptions,
    start_delay: Duration,
) -> ScaleManager {
    let runtime_id = RUNTIMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rt = runtime(runtime_id, name, 2);
    let (stop, stop_rx) = watch::channel(false);
    let d = dir.clone();
    let (manager, node) = on(&rt, async move {
        let node = NodeFile::load(&d).unwrap().expect("node state");
        let identity = Identity::load(&d).await.unwrap();
        let tls = TlsAcceptorHandle::from_identity(&identity).unwrap();
        let client_identity = ClientIdentityHandle::new(&identity).unwrap();
        let peers = client_identity.http_client().unwrap();
        let raft = ClusterRaft::open(
            swarm_node::setup::raft_options(&d, &node.node_id),
            peers.clone(),
        )
        .await
        .unwrap();
        let heartbeat_ms = raft
            .read()
            .cluster
            .as_ref()
            .map(|c| c.heartbeat_period_ms)
            .unwrap_or(5_000);
        let manager = Manager::new(
            node.node_id.clone(),
            node.advertise_addr.clone(),
            raft,
            NodeClients {
                peers,
                nodes: client_identity.any_node_http_client().unwrap(),
            },
            "https".into(),
            Arc::new(SystemClock),
            heartbeat_ms,
        );
        let ctx = Arc::new(NodeContext {
            leave: watch::channel(false).0,
            node_id: node.node_id.clone(),
            cluster_id: node.cluster_id.clone(),
            advertise_addr: node.advertise_addr.clone(),
            hostname: node.node_id.clone(),
            ca_pem: identity.ca_pem.clone(),
            manager: RwLock::new(Some(manager.clone())),
            docker_socket: None,
            known_managers: RwLock::default(),
        });
        tokio::spawn(leader::run(manager.clone(), stop_rx.clone()));
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut stopped = stop_rx.clone();
        tokio::spawn(swarm_pki::serve_tls_with(
            listener,
            tls,
            api::router(ctx),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            serve,
        ));
        // The manager's own agent: its heartbeats make it Ready, and Ready managers
        // become Raft voters.
        let fake = Arc::new(swarm_worker::FakeRuntime::with_images(&[IMAGE]));
        fake.set_start_delay(start_delay);
        let agent = swarm_worker::Agent::new(swarm_worker::AgentConfig {
            node_id: node.node_id.clone(),
            addr: node.advertise_addr.clone(),
            managers: node.managers.clone(),
            client: client_identity.http_client().unwrap(),
            scheme: "https".into(),
            runtime: fake,
            tunnel_key: None,
        })
        .unwrap();
        let mut stopped = stop_rx.clone();
        tokio::spawn(agent.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        (manager, node)
    })
    .await;
    ScaleManager {
        name: name.to_string(),
        dir,
        addr: node.advertise_addr.clone(),
        node_id: node.node_id.clone(),
        manager,
        runtime: Some(rt),
        runtime_id,
        stop,
    }
}

fn loopback_listener() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Raises the soft limit of open files to the hard limit: 1,000 agents and the managers
/// that serve them hold several thousand sockets in this one process.
pub fn raise_fd_limit() -> u64 {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    if soft < hard {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    rlimit::Resource::NOFILE
        .get()
        .map(|(s, _)| s)
        .unwrap_or(soft)
}

/// Polls `check` every `every` until it holds or `limit` passes.
pub async fn wait_until(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

impl ScaleCluster {
    /// Starts three managers and `options.nodes` agents; returns once every node is Ready
    /// in the leader's state.
    pub async fn start(options: ScaleOptions) -> ScaleCluster {
        raise_fd_limit();
        let root = tempfile::tempdir().unwrap();
        let mut managers = Vec::new();
        // m1: init, then serve.
        let (listener, addr) = loopback_listener();
        let dir = root.path().join("m1");
        let outcome = swarm_node::setup::init(&swarm_node::setup::InitOptions {
            state_dir: dir.clone(),
            cert_sans: vec![],
            advertise_addr: addr.clone(),
            listen_addr: addr.clone(),
            heartbeat_ms: options.heartbeat_ms,
            hostname: "m1".into(),
            default_addr_pool: vec![],
            subnet_size: 24,
            data_path_port: 4789,
            cert_expiry: Duration::from_secs(90 * 24 * 3600),
            autolock: false,
        })
        .await
        .unwrap();
        managers.push(
            start_manager(
                "m1",
                dir,
                listener,
                options.serve.clone(),
                options.start_delay,
            )
            .await,
        );
        let m1 = managers[0].manager.clone();
        wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
            m1.raft.is_leader()
        })
        .await
        .expect("m1 leads");
        let first = addr;
        for name in ["m2", "m3"]
            .into_iter()
            .take(options.managers.saturating_sub(1))
        {
            let (listener, addr) = loopback_listener();
            let dir = root.path().join(name);
            swarm_node::setup::join(&swarm_node::setup::JoinOptions {
                state_dir: dir.clone(),
                cert_sans: vec![],
                token: outcome.manager_token.clone(),
                manager_addr: first.clone(),
                advertise_addr: Some(addr.clone()),
                listen_addr: addr.clone(),
                availability: Some("drain".into()),
                hostname: name.into(),
            })
            .await
            .unwrap();
            managers.push(
                start_manager(
                    name,
                    dir,
                    listener,
                    options.serve.clone(),
                    options.start_delay,
                )
                .await,
            );
        }
        wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            m1.raft.voters().len() == options.managers.max(1)
        })
        .await
        .expect("every manager a voter");
        // m1 takes no tasks either: the figures are about the workers. Its own agent's
        // first heartbeats may change its node between the read and the commit, as they
        // would for `docker node update`: read again and retry.
        let mut tries = 0;
        loop {
            let (version, mut spec) = {
                let state = m1.read();
                let n1 = &state.nodes[&outcome.node_id];
                (
                    swarm_state::version_of(&n1.version),
                    n1.spec.clone().unwrap_or_default(),
                )
            };
            spec.availability = Some(swarm_state::models::NodeSpecAvailabilityEnum::DRAIN);
            let drained = m1
                .propose(Command::UpdateNodeSpec {
                    id: outcome.node_id.clone(),
                    version,
                    spec,
                    at: m1.now(),
                })
                .await;
            match drained {
                Ok(_) => break,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("draining m1: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("draining m1: {e}"),
            }
        }
        let (ca, cert, key) = swarm_node::manager::ca::client_cert(&m1, "scale-admin").unwrap();
        let admin = swarm_pki::http_client(&Identity {
            cert_pem: cert,
            key_pem: key,
            ca_pem: ca,
        })
        .unwrap();
        let mut cluster = ScaleCluster {
            root,
            managers,
            nodes: Vec::new(),
            admin,
            options: options.clone(),
            worker_token: outcome.worker_token,
        };
        cluster.add_nodes(options.nodes).await;
        cluster
    }

    pub fn leader(&self) -> Option<&ScaleManager> {
        self.managers.iter().find(|m| m.is_leader())
    }

    pub fn leader_state(&self) -> Arc<ClusterState> {
        self.leader()
            .map(|m| m.manager.read())
            .unwrap_or_else(|| self.managers[0].manager.read())
    }

    /// Joins `count` more nodes and starts their agents; waits until all are Ready.
    pub async fn add_nodes(&mut self, count: usize) {
        let start = self.nodes.len();
        let managers: Vec<String> = self.managers.iter().map(|m| m.addr.clone()).collect();
        let join_to = self
            .leader()
            .map(|m| m.addr.clone())
            .unwrap_or_else(|| managers[0].clone());
        let sem = Arc::new(tokio::sync::Semaphore::new(self.options.join_concurrency));
        let mut joins = Vec::new();
        for i in start..start + count {
            let dir = self.root.path().join("nodes").join(format!("n{i:05}"));
            let token = self.worker_token.clone();
            let join_to = join_to.clone();
            let sem = sem.clone();
            let delay = self.options.start_delay;
            joins.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let hostname = format!("node-{i:05}");
                // Nobody listens there: managers only call a worker for task logs.
                let addr = format!("127.0.0.1:{}", 10_000 + i);
                let mut tries = 0;
                let joined = loop {
                    match swarm_node::setup::join(&swarm_node::setup::JoinOptions {
                        state_dir: dir.clone(),
                        cert_sans: vec![],
                        token: token.clone(),
                        manager_addr: join_to.clone(),
                        advertise_addr: Some(addr.clone()),
                        listen_addr: addr.clone(),
                        availability: None,
                        hostname: hostname.clone(),
                    })
                    .await
                    {
                        Ok(j) => break j,
                        Err(e) if tries < 20 => {
                            tries += 1;
                            eprintln!("join {hostname}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("join {hostname}: {e}"),
                    }
                };
                let identity = Identity::load(&dir).await.unwrap();
                let client = ClientIdentityHandle::new(&identity)
                    .unwrap()
                    .http_client()
                    .unwrap();
                let fake = Arc::new(swarm_worker::FakeRuntime::with_images(&[IMAGE]));
                fake.set_start_delay(delay);
                let agent = swarm_worker::Agent::new(swarm_worker::AgentConfig {
                    node_id: joined.node_id.clone(),
                    addr,
                    managers: joined.managers.clone(),
                    client,
                    scheme: "https".into(),
                    runtime: fake.clone(),
                    tunnel_key: None,
                })
                .unwrap()
                .with_node_hostname(hostname);
                let task = tokio::spawn(agent.run(std::future::pending()));
                ScaleNode {
                    node_id: joined.node_id,
                    runtime: fake,
                    task,
                }
            }));
        }
        for j in joins {
            self.nodes.push(j.await.unwrap());
        }
        let want = self.nodes.len() + self.managers.len();
        let ok = wait_until(Duration::from_secs(120), Duration::from_millis(100), || {
            let state = self.leader_state();
            state
                .nodes
                .values()
                .filter(|n| swarm_state::node_state(n) == swarm_state::models::NodeState::READY)
                .count()
                >= want
        })
        .await;
        assert!(ok.is_some(), "{want} nodes Ready");
    }

    /// The leader's address.
    pub fn api_addr(&self) -> String {
        self.leader()
            .map(|m| m.addr.clone())
            .unwrap_or_else(|| self.managers[0].addr.clone())
    }

    /// `docker service create`: `replicas` of the harness image; returns the service id.
    pub async fn create_service(&self, name: &str, replicas: u64) -> Result<String, String> {
        create_service_at(&self.admin, &self.api_addr(), name, replicas).await
    }

    /// `GET path` on the leader's Docker API; returns the time it took.
    pub async fn timed_get(&self, path: &str) -> Result<Duration, String> {
        timed_get_at(&self.admin, &self.api_addr(), path).await
    }
}

/// `docker service create` on the manager at `addr`: `replicas` of the harness image;
/// returns the service id.
pub async fn create_service_at(
    admin: &reqwest::Client,
    addr: &str,
    name: &str,
    replicas: u64,
) -> Result<String, String> {
    let body = serde_json::json!({
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
        "Mode": {"Replicated": {"Replicas": replicas}},
    });
    let resp = admin
        .post(format!("https://{addr}/v1.41/services/create"))
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {v}"));
    }
    Ok(v["ID"].as_str().unwrap_or_default().to_string())
}

/// `GET path` on the Docker API of the manager at `addr`; returns the time it took.
pub async fn timed_get_at(
    admin: &reqwest::Client,
    addr: &str,
    path: &str,
) -> Result<Duration, String> {
    let start = Instant::now();
    let resp = admin
        .get(format!("https://{addr}/v1.41{path}"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(status.to_string());
    }
    Ok(start.elapsed())
}

/// Counts of a set of services' tasks in the leader's state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Tasks that should run.
    pub desired: usize,
    /// Of those, placed on a node.
    pub placed: usize,
    /// Of those, running.
    pub running: usize,
}

pub fn progress(state: &ClusterState, services: &std::collections::HashSet<String>) -> Progress {
    // From the counts the state keeps (what `service ls` shows): a scan of every task
    // ten times a second took a tenth of the machine at 100,000 tasks.
    let mut p = Progress::default();
    for service in services {
        let t = state.tasks.tally(service);
        p.desired += t.active as usize;
        p.placed += t.placed as usize;
        p.running += t.running_by_node.values().sum::<u64>() as usize;
    }
    p
}

/// Tasks of a node that should run there.
pub fn running_on<'a>(state: &'a ClusterState, node_id: &'a str) -> Vec<&'a Task> {
    state
        .tasks_on_node(node_id)
        .filter(|t| desired_of(t) == TaskState::RUNNING)
        .collect()
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`.
pub fn thread_cpu(prefix: &str) -> Duration {
    let ticks = 100u64; // USER_HZ on Linux
    let mut cpu = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    // The kernel keeps 15 bytes of a thread's name.
    let short: String = prefix.chars().take(15).collect();
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(&short) {
            continue;
        }
        // utime and stime are the 14th and 15th fields; the slice starts at the 3rd.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        cpu += utime + stime;
    }
    Duration::from_millis(cpu * 1000 / ticks)
}

/// This process's resident memory, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// The size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// p50 and p99 of some durations.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

pub fn count_by_node(state: &ClusterState) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in state.tasks.values() {
        if let Some(n) = &t.node_id {
            if desired_of(t) == TaskState::RUNNING {
                *m.entry(n.clone()).or_default() += 1;
            }
        }
    }
    m
}
