//! swarm-node at scale: three real managers (Raft, mutual TLS on loopback) and N real
//! worker agents on fake container engines, in this one process (see
//! `tests/support/scale.rs`). Not a test: it prints one figure per line and asserts
//! nothing. Needs neither root nor Docker.
//!
//!     cargo bench -p swarm-node --bench scale
//!
//! Settings (environment):
//! - `SCALE_NODES` (`10,100,1000`): worker counts, one swarm each;
//! - `SCALE_SHAPES` (`1x1000,100x1000,1x100000`): services × replicas, created in turn
//!   on each swarm (each removed before the next);
//! - `SCALE_MAX_TASKS` (`100000`): shapes with more tasks than this are skipped;
//! - `SCALE_START_MS` (`100`): how long each fake container start takes;
//! - `SCALE_HEARTBEAT_MS` (`5000`): the swarm's heartbeat period;
//! - `SCALE_IDLE_SECS` (`10`): how long steady state is measured;
//! - `SCALE_TIMEOUT_SECS` (`300`): the longest wait for one shape to run;
//! - `SCALE_PARTS` (`sched,cluster`): `sched` is the scheduler micro-benchmark alone,
//!   `cluster` the swarms, `manager` one manager on its own in this process (its memory
//!   and commit path at the largest shape, nodes recorded without agents);
//! - `SCALE_LOG` (unset): a tracing filter (`warn`) for what managers and agents log;
//! - `SCALE_NODES_NICE` (`10`): the simulated nodes' CPU priority (nice, 0 to 19; 0
//!   runs them at the managers' own).
//!
//! Figures (name=value per line, prefixed with the swarm's size):
//! placement and Running times per shape, the leader's CPU time and the process's RSS,
//! the leader's bytes written per task (its journal), API p50/p99 while the shape
//! converges, a lost node's tasks running elsewhere, and leader failover with every
//! node reconnecting. The leader's CPU time is that of its own runtime's threads, its
//! writes the growth of its Raft directory; RSS is the whole process (three managers and every agent): one
//! manager's share of it is estimated by the scheduler part, which applies a plan to a
//! fresh state and reads the growth of RSS (`state_rss_mib`).

#[path = "../tests/support/scale.rs"]
mod scale;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scale::*;
use swarm_state::models::{
    Node, NodeDescription, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState,
    NodeStatus, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec,
    TaskSpecContainerSpec,
};
use swarm_state::ClusterState;

/// The allocator swarm-node's binary uses, so that memory figures are its own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Shapes as (services, replicas each).
fn shapes() -> Vec<(usize, u64)> {
    env_list("SCALE_SHAPES", "1x1000,100x1000,1x100000")
        .iter()
        .filter_map(|s| {
            let (a, b) = s.split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

fn main() {
    // `SCALE_LOG=warn` (a tracing filter) shows what the managers and agents log.
    if let Ok(filter) = std::env::var("SCALE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let parts = env_list("SCALE_PARTS", "sched,cluster");
    println!(
        "machine cores={} fd_limit={}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        raise_fd_limit()
    );
    let nodes: Vec<usize> = env_list("SCALE_NODES", "10,100,1000")
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    if parts.iter().any(|p| p == "sched") {
        for &n in &nodes {
            scheduler_alone(n);
        }
    }
    if parts.iter().any(|p| p == "manager") {
        for &n in &nodes {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("scale-bench")
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(manager_alone(n));
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
    if parts.iter().any(|p| p == "cluster") {
        for &n in &nodes {
            // The simulated nodes stand for other machines: at a lower priority they get
            // the CPU the managers leave, instead of a third of it, which made the
            // managers' figures those of the simulation's load.
            let nice = env_u64("SCALE_NODES_NICE", 10).min(19) as i32;
            println!("nodes={n} simulated_nodes_nice={nice}");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("scale-nodes")
                .on_thread_start(move || lower_priority(nice))
                .enable_all()
                .build()
                .unwrap();
            let admin = admin_runtime();
            rt.block_on(cluster_figures(n, admin.handle().clone()));
            admin.shutdown_timeout(Duration::from_secs(5));
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// One manager (a one-voter Raft with its journal, snapshots and encryption at rest, the
/// orchestrator, the API) in this process with `n` nodes recorded in its state and no
/// agents: the process's memory is that manager's. The largest shape is created through
/// the API, placed by the manager, then reported Running in entries of 1,000 updates,
/// as the dispatcher batches the agents' reports. The heartbeat period is an hour so
/// that nodes without agents stay Ready.
async fn manager_alone(n: usize) {
    let rss_empty = rss_bytes();
    let mut options = ScaleOptions::new(0);
    options.managers = 1;
    options.heartbeat_ms = 3_600_000;
    let cluster = ScaleCluster::start(options).await;
    let leader = cluster.leader().expect("one manager leads");
    let manager = leader.manager.clone();
    let p = format!("manager nodes={n}");
    let now = manager.now();
    // Recorded one at a time, as joins are.
    for mut node in synthetic_state(n, 0, 0).nodes.values().cloned() {
        node.created_at = Some(now.clone());
        manager
            .propose(swarm_state::Command::AddNode {
                node: Box::new(node),
            })
            .await
            .expect("node recorded");
    }
    let rss_nodes = rss_bytes();
    println!(
        "{p} rss_with_nodes_mib={} rss_per_node_kib={:.1}",
        mib(rss_nodes),
        rss_nodes.saturating_sub(rss_empty) as f64 / 1024.0 / n.max(1) as f64
    );
    let Some(&(services, replicas)) = shapes().last() else {
        return;
    };
    let total = services as u64 * replicas;
    let shape = format!("{p} shape={services}x{replicas}");
    let addr = cluster.api_addr();
    let cpu0 = thread_cpu(&leader.thread_prefix());
    let start = Instant::now();
    let mut service_ids = HashSet::new();
    for s in 0..services {
        match create_service_at(&cluster.admin, &addr, &format!("m-{s}"), replicas).await {
            Ok(id) => {
                service_ids.insert(id);
            }
            Err(e) => println!("{shape} create_error={e}"),
        }
    }
    let timeout = Duration::from_secs(env_u64("SCALE_TIMEOUT_SECS", 300));
    let mut peak = 0;
    let mut heap_peak = 0;
    let placed = wait_until(timeout, Duration::from_millis(100), || {
        peak = peak.max(rss_bytes());
        heap_peak = heap_peak.max(heap_bytes());
        progress(&manager.read(), &service_ids).placed as u64 == total
    })
    .await;
    let placed_at = start.elapsed();
    // Every task Running, reported in entries of 1,000 updates.
    let state = manager.read();
    let mut updates: Vec<(String, swarm_state::proto::TaskStatusUpdate)> = state
        .tasks
        .values()
        .filter(|t| {
            t.service_id
                .as_ref()
                .is_some_and(|s| service_ids.contains(s))
        })
        .filter_map(|t| {
            Some((
                t.node_id.clone()?,
                swarm_state::proto::TaskStatusUpdate {
                    task_id: t.id.clone()?,
                    status: swarm_state::models::TaskStatus {
                        timestamp: Some(now.clone()),
                        state: Some(swarm_state::models::TaskState::RUNNING),
                        message: Some("started".into()),
                        ..Default::default()
                    },
                },
            ))
        })
        .collect();
    drop(state);
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    for chunk in updates.chunks(1_000) {
        let mut reports: Vec<swarm_state::proto::TaskStatusReport> = Vec::new();
        for (node, update) in chunk {
            match reports.last_mut() {
                Some(r) if &r.node_id == node => r.updates.push(update.clone()),
                _ => reports.push(swarm_state::proto::TaskStatusReport {
                    node_id: node.clone(),
                    updates: vec![update.clone()],
                }),
            }
        }
        manager
            .propose(swarm_state::Command::ReportTaskStatuses { reports })
            .await
            .expect("reports recorded");
        peak = peak.max(rss_bytes());
        heap_peak = heap_peak.max(heap_bytes());
    }
    let running = progress(&manager.read(), &service_ids).running;
    let cpu = thread_cpu(&leader.thread_prefix()).saturating_sub(cpu0);
    println!(
        "{shape} placed_s={} running_s={} running={running}/{total} manager_cpu_s={}",
        placed
            .map(|_| secs(placed_at))
            .unwrap_or_else(|| "timeout".into()),
        secs(start.elapsed()),
        secs(cpu),
    );
    // Steady state: what stays once the work is done (snapshots written, buffers freed),
    // and what the leader spends with every task Running and nothing changing.
    let idle = Duration::from_secs(env_u64("SCALE_IDLE_SECS", 10));
    let cpu_before_idle = thread_cpu(&leader.thread_prefix());
    tokio::time::sleep(idle).await;
    let idle_cpu = thread_cpu(&leader.thread_prefix()).saturating_sub(cpu_before_idle);
    let rss = rss_bytes();
    let heap = heap_bytes();
    println!(
        "{shape} idle_cpu_pct={:.1} manager_rss_mib={} manager_rss_peak_mib={} manager_heap_mib={} manager_heap_peak_mib={} rss_per_task_b={:.0} journal_mib={} journal_b_per_task={:.0}",
        idle_cpu.as_secs_f64() * 100.0 / idle.as_secs_f64(),
        mib(rss),
        mib(peak.max(rss)),
        mib(heap),
        mib(heap_peak.max(heap)),
        rss.saturating_sub(rss_nodes) as f64 / total as f64,
        mib(dir_bytes(&leader.dir)),
        dir_bytes(&leader.dir) as f64 / total as f64,
    );
}

/// How late a 100 ms timer fires, again and again until `stop`, on the runtime this runs
/// on: when the simulated nodes' runtime lags, each node's heartbeat waits as long.
async fn runtime_lag(stop: Arc<AtomicBool>) -> Vec<Duration> {
    let period = Duration::from_millis(100);
    let mut lags = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let before = Instant::now();
        tokio::time::sleep(period).await;
        lags.push(before.elapsed().saturating_sub(period));
    }
    lags
}

/// Where the process's CPU time went: the leader's runtime, the other managers', the
/// simulated nodes' (their runtime at a lower priority), and everything.
#[derive(Clone, Copy)]
struct CpuSplit {
    leader: Duration,
    followers: Duration,
    nodes: Duration,
    process: Duration,
}

impl CpuSplit {
    fn since(self, before: CpuSplit) -> CpuSplit {
        CpuSplit {
            leader: self.leader.saturating_sub(before.leader),
            followers: self.followers.saturating_sub(before.followers),
            nodes: self.nodes.saturating_sub(before.nodes),
            process: self.process.saturating_sub(before.process),
        }
    }
}

fn cpu_split(cluster: &ScaleCluster, leader: &str) -> CpuSplit {
    CpuSplit {
        leader: thread_cpu(leader),
        followers: cluster
            .managers
            .iter()
            .map(|m| m.thread_prefix())
            .filter(|p| p != leader)
            .map(|p| thread_cpu(&p))
            .sum(),
        nodes: thread_cpu("scale-nodes"),
        process: thread_cpu(""),
    }
}

/// The bytes the allocator holds for live allocations: the heap without what it keeps
/// freed but not yet returned (RSS counts both).
fn heap_bytes() -> u64 {
    // Statistics are refreshed when the epoch advances.
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as u64
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
        eprintln!("cannot lower a simulated node thread's priority: {e}");
    }
}

/// A synthetic state: `nodes` Ready workers and `services` services of `replicas`.
fn synthetic_state(nodes: usize, services: usize, replicas: u64) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 0..nodes {
        let id = format!("node{i:05}");
        state.nodes.insert(
            id.clone(),
            Node {
                id: Some(id),
                spec: Some(NodeSpec {
                    role: Some(NodeSpecRoleEnum::WORKER),
                    availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
                    ..Default::default()
                }),
                status: Some(NodeStatus {
                    state: Some(NodeState::READY),
                    message: None,
                    addr: Some("127.0.0.1".into()),
                }),
                description: Some(NodeDescription {
                    hostname: Some(format!("node-{i:05}")),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    for s in 0..services {
        let id = format!("svc{s:04}");
        state.services.insert(
            id.clone(),
            Service {
                id: Some(id),
                spec: Some(ServiceSpec {
                    name: Some(format!("s{s}")),
                    task_template: Some(TaskSpec {
                        container_spec: Some(TaskSpecContainerSpec {
                            image: Some(IMAGE.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    mode: Some(ServiceSpecMode {
                        replicated: Some(ServiceSpecModeReplicated {
                            replicas: Some(replicas as i64),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    state
}

/// The orchestrator's pure reconcile (slots, new tasks, the scheduler's placement) over
/// a synthetic state: placements per second with task creation included, as SwarmKit's
/// PR #193 figures are.
fn scheduler_alone(nodes: usize) {
    let max = env_u64("SCALE_MAX_TASKS", 100_000);
    for (services, replicas) in [(1usize, 1_000u64), (1, 10_000), (1, 100_000), (100, 1_000)] {
        let total = services as u64 * replicas;
        if total > max {
            continue;
        }
        let state = synthetic_state(nodes, services, replicas);
        let mut n = 0u64;
        let mut new_id = || {
            n += 1;
            format!("task{n:08}")
        };
        let mut pass = |s: &ClusterState| {
            swarm_node::manager::orchestrator::reconcile(
                s,
                time::OffsetDateTime::now_utc(),
                &mut new_id,
            )
        };
        let start = Instant::now();
        let plan = pass(&state);
        let took = start.elapsed();
        let placed: usize = plan
            .commands
            .iter()
            .map(|c| match c {
                swarm_state::Command::PutTasks { tasks } => {
                    tasks.iter().filter(|t| t.node_id.is_some()).count()
                }
                _ => 0,
            })
            .sum();
        // The state once the plan is applied, as each manager holds it: the allocator's
        // live bytes it adds (the plan itself is still held, and not counted).
        let before = heap_bytes();
        let mut applied = state.clone();
        for (i, command) in plan.commands.iter().enumerate() {
            applied.apply(command, i as u64 + 1);
        }
        let grown = heap_bytes().saturating_sub(before);
        // A pass with nothing to do, over the placed state: what the leader pays for
        // each pass while the shape converges (every commit may start one).
        let start = Instant::now();
        let idle = pass(&applied);
        let idle_pass = start.elapsed();
        // More of them, for a profiler to see (`SCALE_IDLE_REPEAT`).
        for _ in 1..env_u64("SCALE_IDLE_REPEAT", 1) {
            pass(&applied);
        }
        let start = Instant::now();
        let idle_allocation = swarm_node::manager::allocator::allocate(&applied);
        let idle_allocate = start.elapsed();
        println!(
            "sched nodes={nodes} shape={services}x{replicas} placed={placed} seconds={} placements_per_s={:.0} idle_pass_s={} idle_pass_commands={} idle_allocate_s={} idle_allocations={} state_heap_mib={} state_bytes_per_task={:.0} state_json_bytes_per_task={:.0}",
            secs(took),
            placed as f64 / took.as_secs_f64(),
            secs(idle_pass),
            idle.commands.len(),
            secs(idle_allocate),
            idle_allocation.is_some(),
            mib(grown),
            grown as f64 / total as f64,
            serde_json::to_vec(&applied).map(|v| v.len()).unwrap_or(0) as f64 / total as f64,
        );
    }
}

/// Samples of the API while a shape converges.
#[derive(Default)]
struct ApiSamples {
    services: Vec<Duration>,
    nodes: Vec<Duration>,
    create: Vec<Duration>,
    errors: usize,
}

/// Samples the leader's API until `stop`: `service ls`, `node ls`, `service create`.
async fn probe_api(
    admin: reqwest::Client,
    addr: String,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<ApiSamples>>,
) {
    // Probe services are named across shapes: the ones of an earlier shape stay.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    while !stop.load(Ordering::Relaxed) {
        let i = PROBES.fetch_add(1, Ordering::Relaxed);
        // As `docker service ls` asks: with each service's running and desired tasks.
        let s = timed_get_at(&admin, &addr, "/services?status=true").await;
        let n = timed_get_at(&admin, &addr, "/nodes").await;
        let start = Instant::now();
        let name = format!("probe-{}-{i}", std::process::id());
        let c = create_service_at(&admin, &addr, &name, 0)
            .await
            .map(|_| start.elapsed());
        {
            let mut guard = samples.lock().unwrap();
            let g = &mut *guard;
            let mut errors = 0;
            for (r, list) in [(s, &mut g.services), (n, &mut g.nodes), (c, &mut g.create)] {
                match r {
                    Ok(d) => list.push(d),
                    Err(e) => {
                        if g.errors + errors == 0 {
                            eprintln!("first API error while probing: {e}");
                        }
                        errors += 1
                    }
                }
            }
            g.errors += errors;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runtime of the harness's own API client (the user's `docker`): at full priority,
/// apart from the simulated nodes, so its figures are not those of their scheduling.
fn admin_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("scale-admin")
        .enable_all()
        .build()
        .unwrap()
}

async fn cluster_figures(n: usize, admin: tokio::runtime::Handle) {
    let mut options = ScaleOptions::new(n);
    options.start_delay = Duration::from_millis(env_u64("SCALE_START_MS", 100));
    options.heartbeat_ms = env_u64("SCALE_HEARTBEAT_MS", 5_000);
    let timeout = Duration::from_secs(env_u64("SCALE_TIMEOUT_SECS", 300));
    let max_tasks = env_u64("SCALE_MAX_TASKS", 100_000);
    let rss_empty = rss_bytes();
    let start = Instant::now();
    let mut cluster = ScaleCluster::start(options).await;
    let p = format!("nodes={n}");
    println!("{p} join_all_ready_s={}", secs(start.elapsed()));
    println!(
        "{p} rss_with_nodes_mib={} rss_per_node_kib={:.0}",
        mib(rss_bytes()),
        (rss_bytes().saturating_sub(rss_empty)) as f64 / 1024.0 / (n + 3) as f64
    );

    // Steady state: heartbeats only.
    let idle = Duration::from_secs(env_u64("SCALE_IDLE_SECS", 10));
    let leader = cluster.leader().unwrap().thread_prefix();
    let cpu0 = thread_cpu(&leader);
    let log0 = journal_bytes(&cluster);
    tokio::time::sleep(idle).await;
    let cpu1 = thread_cpu(&leader);
    let log1 = journal_bytes(&cluster);
    println!(
        "{p} steady leader_cpu_pct={:.1} journal_growth_b={} rss_mib={}",
        cpu1.saturating_sub(cpu0).as_secs_f64() * 100.0 / idle.as_secs_f64(),
        log1 as i64 - log0 as i64,
        mib(rss_bytes())
    );

    let shapes = shapes();
    let last = shapes.len().saturating_sub(1);
    for (k, &(services, replicas)) in shapes.iter().enumerate() {
        let total = services as u64 * replicas;
        if total > max_tasks {
            continue;
        }
        let shape = format!("{p} shape={services}x{replicas}");
        let leader = cluster.leader().unwrap().thread_prefix();
        let split0 = cpu_split(&cluster, &leader);
        let log0 = journal_bytes(&cluster);
        let rss0 = rss_bytes();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(ApiSamples::default()));
        let start = Instant::now();
        let mut ids = HashSet::new();
        let addr = cluster.api_addr();
        let probe = admin.spawn(probe_api(
            cluster.admin.clone(),
            addr.clone(),
            stop.clone(),
            samples.clone(),
        ));
        // On the simulated nodes' runtime, where every node's heartbeat waits its turn.
        let lag = tokio::spawn(runtime_lag(stop.clone()));
        let work = async {
            for s in 0..services {
                let (client, at) = (cluster.admin.clone(), addr.clone());
                let name = format!("s{k}-{s}");
                let create = async move { create_service_at(&client, &at, &name, replicas).await };
                match admin
                    .spawn(create)
                    .await
                    .expect("service create on the admin runtime")
                {
                    Ok(id) => {
                        ids.insert(id);
                    }
                    Err(e) => println!("{shape} create_error={e:?}"),
                }
            }
            let created = start.elapsed();
            let mut placed_at = None;
            let mut peak_rss = 0;
            let mut down_max = 0;
            let done = wait_until(timeout, Duration::from_millis(100), || {
                let state = cluster.leader_state();
                let pr = progress(&state, &ids);
                // Nodes taken for lost while they run: each moves its tasks.
                down_max = down_max.max(
                    state
                        .nodes
                        .values()
                        .filter(|n| swarm_state::node_state(n) == NodeState::DOWN)
                        .count(),
                );
                peak_rss = peak_rss.max(rss_bytes());
                if placed_at.is_none() && pr.placed as u64 == total {
                    placed_at = Some(start.elapsed());
                }
                pr.running as u64 == total
            })
            .await;
            stop.store(true, Ordering::Relaxed);
            (
                created,
                placed_at,
                done.map(|_| start.elapsed()),
                peak_rss,
                down_max,
            )
        };
        let ((created, placed, running, peak_rss, down_max), probed) = tokio::join!(work, probe);
        probed.expect("the API probe");
        // One reading for every CPU figure of the shape, over the same wall time.
        let split = cpu_split(&cluster, &leader).since(split0);
        let log1 = journal_bytes(&cluster);
        let wall = start.elapsed();
        let pr = progress(&cluster.leader_state(), &ids);
        println!(
            "{shape} created_s={} placed_s={} running_s={} running={}/{total} placements_per_s={:.0}",
            secs(created),
            placed.map(secs).unwrap_or_else(|| "timeout".into()),
            running.map(secs).unwrap_or_else(|| "timeout".into()),
            pr.running,
            placed.map(|d| total as f64 / d.as_secs_f64()).unwrap_or(0.0),
        );
        println!(
            "{shape} leader_cpu_s={} leader_cpu_pct={:.0} journal_growth_b_per_task={:.0} rss_delta_mib={} rss_peak_mib={}",
            secs(split.leader),
            split.leader.as_secs_f64() * 100.0 / wall.as_secs_f64(),
            (log1 as f64 - log0 as f64) / total as f64,
            mib(rss_bytes().saturating_sub(rss0)),
            mib(peak_rss),
        );
        let lags = lag.await.expect("the lag probe");
        let lag_max = lags.iter().max().copied().unwrap_or_default();
        let (lag50, lag99) = percentiles(lags);
        println!(
            "{shape} nodes_runtime_lag p50_ms={} p99_ms={} max_ms={}",
            ms(lag50),
            ms(lag99),
            ms(lag_max)
        );
        println!(
            "{shape} cpu_s leader={} followers={} nodes={} process={}",
            secs(split.leader),
            secs(split.followers),
            secs(split.nodes),
            secs(split.process),
        );
        let s = std::mem::take(&mut *samples.lock().unwrap());
        for (name, v) in [
            ("service_ls", s.services),
            ("node_ls", s.nodes),
            ("service_create", s.create),
        ] {
            let count = v.len();
            let (p50, p99) = percentiles(v);
            println!(
                "{shape} api={name} n={count} p50_ms={} p99_ms={}",
                ms(p50),
                ms(p99)
            );
        }
        if s.errors > 0 {
            println!("{shape} api_errors={}", s.errors);
        }
        let state = cluster.leader_state();
        println!(
            "{shape} tasks_in_state={} nodes_down_max={down_max} state_json_mib={} journal_mib={}",
            state.tasks.len(),
            mib(serde_json::to_vec(&*state)
                .map(|v| v.len() as u64)
                .unwrap_or(0)),
            mib(journal_bytes(&cluster)),
        );
        drop(state);

        if k == last {
            lost_node(&cluster, &shape, &ids).await;
            failover(&mut cluster, &shape, &ids).await;
        } else {
            let start = Instant::now();
            for id in &ids {
                let _ = cluster
                    .admin
                    .delete(format!(
                        "https://{}/v1.41/services/{id}",
                        cluster.api_addr()
                    ))
                    .send()
                    .await;
            }
            let gone = wait_until(timeout, Duration::from_millis(200), || {
                let state = cluster.leader_state();
                !state
                    .tasks
                    .values()
                    .any(|t| t.service_id.as_ref().is_some_and(|s| ids.contains(s)))
            })
            .await;
            println!(
                "{shape} removed_s={}",
                gone.map(|_| secs(start.elapsed()))
                    .unwrap_or_else(|| "timeout".into())
            );
        }
    }
    for m in &mut cluster.managers {
        m.kill();
    }
}

/// The size of the leader's Raft directory: its journal and snapshot. Snapshots
/// compact the journal, so growth between two readings is a lower bound of what was
/// written.
fn journal_bytes(cluster: &ScaleCluster) -> u64 {
    cluster
        .leader()
        .map(|m| dir_bytes(&m.dir.join("raft")))
        .unwrap_or(0)
}

/// A node with tasks stops: the time until they run elsewhere.
async fn lost_node(cluster: &ScaleCluster, shape: &str, ids: &HashSet<String>) {
    let state = cluster.leader_state();
    let Some(node) = cluster
        .nodes
        .iter()
        .max_by_key(|n| running_on(&state, &n.node_id).len())
    else {
        return;
    };
    let tasks = running_on(&state, &node.node_id).len();
    let total = progress(&state, ids).desired;
    drop(state);
    let start = Instant::now();
    node.kill();
    let id = node.node_id.clone();
    let mut down_at = None;
    let done = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        let state = cluster.leader_state();
        if down_at.is_none()
            && state
                .nodes
                .get(&id)
                .is_some_and(|n| swarm_state::node_state(n) == NodeState::DOWN)
        {
            down_at = Some(start.elapsed());
        }
        running_on(&state, &id).is_empty() && progress(&state, ids).running == total
    })
    .await;
    println!(
        "{shape} lost_node_tasks={tasks} marked_down_s={} rescheduled_running_s={}",
        down_at.map(secs).unwrap_or_else(|| "timeout".into()),
        done.map(|_| secs(start.elapsed()))
            .unwrap_or_else(|| "timeout".into())
    );
}

/// The leader dies: the time to a new leader, and until every live node's heartbeats
/// reach it.
async fn failover(cluster: &mut ScaleCluster, shape: &str, ids: &HashSet<String>) {
    let Some(i) = cluster.managers.iter().position(|m| m.is_leader()) else {
        return;
    };
    let live = cluster.nodes.len() - 1 + 2;
    cluster.managers[i].kill();
    let elected = wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
        cluster.leader().is_some()
    })
    .await;
    let all = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        cluster
            .leader()
            .is_some_and(|m| m.manager.dispatcher.seen_count() >= live)
    })
    .await;
    let state = cluster.leader_state();
    let pr = progress(&state, ids);
    println!(
        "{shape} failover_new_leader_s={} failover_all_nodes_heard_s={} running_after={}/{}",
        elected.map(secs).unwrap_or_else(|| "timeout".into()),
        all.map(|heard| secs(heard + elected.unwrap_or_default()))
            .unwrap_or_else(|| "timeout".into()),
        pr.running,
        pr.desired
    );
}
