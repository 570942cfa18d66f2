//! Whole-cluster operations: bootstrap (prepare every machine, create or converge the
//! swarm), the client certificate, and image loading.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use swarm_contract::Status;
use swarmup_machine::{Machine, PowerState, Progress, Role};
use swarmup_templates::{Cidr, NftablesContext, PublishedPort, ServiceContext, CONTROL_PORT};

use crate::docker_swarm::{self, Engine};
use crate::error::{BootstrapError, Step};
use crate::shell::RemoteShell;
use crate::ssh::{Connector, SshConnector, SshOptions};
use crate::steps::{
    self, apply_firewall, ensure_docker, ensure_docker_context, firewall_path, install_service,
    join_tokens, probe_host, push_binary, swarm_init, swarm_join, swarm_nodes, swarm_status,
    wait_for_ssh, wait_ready, Attempt, BinaryOutcome, ClientCert, ExpectedNode, HostFacts,
    InitOutcome, JoinOutcome, SwarmNodeBinary,
};

/// `docker load` into the node's engine itself, whatever root's current docker context.
pub const LOAD_SCRIPT: &str = "docker -H unix:///var/run/docker.sock load";

/// Where the swarm-node executable comes from.
#[derive(Clone)]
pub enum BinarySource {
    Bytes(Arc<[u8]>),
    Path(PathBuf),
}

impl std::fmt::Debug for BinarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BinarySource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            BinarySource::Path(p) => write!(f, "Path({})", p.display()),
        }
    }
}

/// The node firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallOptions {
    pub enabled: bool,
    /// Who may reach SSH; empty means anywhere.
    pub ssh_allowed: Vec<Cidr>,
    /// Who besides the cluster's own nodes may reach the control port (2377/tcp), where
    /// the Docker API is served to clients with a certificate; empty means nobody.
    pub control_allowed: Vec<Cidr>,
    /// Ports open to everyone, e.g. published services.
    pub published_ports: Vec<PublishedPort>,
}

impl Default for FirewallOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            ssh_allowed: Vec::new(),
            control_allowed: Vec::new(),
            published_ports: Vec::new(),
        }
    }
}

/// How long each stage may take before bootstrap gives up on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Until SSH answers on a new machine.
    pub ssh: Duration,
    /// Until Docker answers, installation included.
    pub docker: Duration,
    /// For the binary upload.
    pub upload: Duration,
    /// Until a freshly started swarm-node answers `status`; nodes that stay silent are
    /// treated as not part of a swarm.
    pub daemon: Duration,
    pub init: Duration,
    pub join: Duration,
    /// Until every node reports ready.
    pub ready: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            ssh: Duration::from_secs(300),
            docker: Duration::from_secs(600),
            upload: Duration::from_secs(300),
            daemon: Duration::from_secs(30),
            init: Duration::from_secs(120),
            join: Duration::from_secs(180),
            ready: Duration::from_secs(180),
        }
    }
}

/// Everything [`bootstrap_cluster`] needs besides the machines.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub swarm_node_binary: BinarySource,
    pub ssh: SshOptions,
    pub firewall: FirewallOptions,
    pub deadlines: Deadlines,
    /// Extra environment for the swarm-node service, e.g. `RUST_LOG`.
    pub service_environment: BTreeMap<String, String>,
    /// What serves the swarm: swarm-node, or Docker's own swarm mode (which needs no
    /// swarm-node binary).
    pub engine: Engine,
}

impl BootstrapOptions {
    /// Default firewall and deadlines.
    pub fn new(swarm_node_binary: BinarySource, ssh: SshOptions) -> Self {
        Self {
            swarm_node_binary,
            ssh,
            firewall: FirewallOptions::default(),
            deadlines: Deadlines::default(),
            service_environment: BTreeMap::new(),
            engine: Engine::SwarmNode,
        }
    }
}

/// What bootstrap found and did, per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    pub cluster_id: String,
    /// The manager the swarm was created on or joined through.
    pub leader: String,
    /// Whether this run created the swarm.
    pub initialized: bool,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub machine: String,
    pub planned_role: Role,
    pub node_id: String,
    /// The role the swarm gives the node.
    pub swarm_role: swarm_contract::Role,
    pub status: swarm_contract::NodeState,
    /// `None` for workers.
    pub manager_status: Option<swarm_contract::ManagerStatus>,
    /// What this run changed on the machine, e.g. "uploaded swarm-node".
    pub changes: Vec<String>,
}

/// Turns `machines` into one swarm over SSH. Every machine is prepared in parallel
/// (SSH, Docker, swarm-node binary, firewall, service); the swarm is created on the
/// first manager, the other managers and the workers join, and bootstrap waits until
/// every node is ready. Running it again converges: nodes already in the swarm are kept,
/// nothing is created twice, and a stopped swarm-node is started again.
pub async fn bootstrap_cluster(
    machines: &[Machine],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<BootstrapReport, BootstrapError> {
    let connector = SshConnector::new(options.ssh.clone());
    bootstrap_cluster_with(&connector, machines, options, progress).await
}

/// [`bootstrap_cluster`] with any [`Connector`].
pub async fn bootstrap_cluster_with(
    connector: &dyn Connector,
    machines: &[Machine],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<BootstrapReport, BootstrapError> {
    check_machines(machines)?;
    if options.engine == Engine::Docker {
        return docker_swarm::bootstrap(connector, machines, options, progress).await;
    }
    let binary = load_binary(&options.swarm_node_binary).await?;
    let cluster_nodes: Vec<IpAddr> = machines.iter().map(|m| m.private_addr).collect();

    let results = join_all(
        machines
            .iter()
            .map(|m| prepare(connector, m, &binary, &cluster_nodes, options, progress)),
    )
    .await;
    let mut prepared = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(p) => prepared.push(p),
            Err(e) => errors.push(e),
        }
    }
    let result = match BootstrapError::collect(errors) {
        Some(e) => Err(e),
        None => converge(&prepared, options, progress).await,
    };
    join_all(prepared.iter().map(|p| p.shell.close())).await;
    result
}

fn check_machines(machines: &[Machine]) -> Result<(), BootstrapError> {
    if machines.is_empty() {
        return Err(BootstrapError::Invalid(
            "no machines to bootstrap: create the machines first".to_string(),
        ));
    }
    if !machines.iter().any(|m| m.role == Role::Manager) {
        return Err(BootstrapError::Invalid(
            "none of the machines is a manager: a swarm needs at least one".to_string(),
        ));
    }
    let mut names = HashSet::new();
    for m in machines {
        if !names.insert(m.name.as_str()) {
            return Err(BootstrapError::Invalid(format!(
                "machine {} is listed twice",
                m.name
            )));
        }
        if m.power == PowerState::Off {
            return Err(BootstrapError::Invalid(format!(
                "machine {} is powered off: power it on and run again",
                m.name
            )));
        }
    }
    Ok(())
}

async fn load_binary(source: &BinarySource) -> Result<SwarmNodeBinary, BootstrapError> {
    let bytes: Arc<[u8]> = match source {
        BinarySource::Bytes(bytes) => bytes.clone(),
        BinarySource::Path(path) => tokio::fs::read(path)
            .await
            .map_err(|e| {
                BootstrapError::io(
                    format!("reading the swarm-node binary {}", path.display()),
                    e,
                )
            })?
            .into(),
    };
    if bytes.is_empty() {
        return Err(BootstrapError::Invalid(
            "the swarm-node binary is empty: pass the built swarm-node executable".to_string(),
        ));
    }
    Ok(SwarmNodeBinary::from_bytes_async(bytes).await)
}

struct Prepared {
    machine: Machine,
    shell: Arc<dyn RemoteShell>,
    /// swarm-node was not on the machine before this run, so it cannot be in a swarm.
    new: bool,
    changes: Vec<String>,
}

/// The unit for a machine: only systemd hosts reload the firewall on start, since a lab
/// node's firewall lives as long as its namespace.
pub fn service_unit(
    facts: &HostFacts,
    options: &BootstrapOptions,
    binary: &SwarmNodeBinary,
) -> Result<String, BootstrapError> {
    let ctx = ServiceContext {
        firewall_file: (options.firewall.enabled && !facts.lab)
            .then(|| firewall_path(facts).to_string()),
        environment: options.service_environment.clone(),
        binary_sha256: Some(binary.sha256().to_string()),
        ..ServiceContext::default()
    };
    Ok(swarmup_templates::swarm_node_service(&ctx)?)
}

/// The firewall for a machine.
pub fn firewall_rules(
    machine: &Machine,
    facts: &HostFacts,
    cluster_nodes: &[IpAddr],
    firewall: &FirewallOptions,
) -> Result<String, BootstrapError> {
    firewall_rules_with_gossip(machine, facts, cluster_nodes, firewall, None)
}

/// [`firewall_rules`], with Docker's gossip port open between the nodes when the
/// cluster runs Docker's own swarm mode.
pub fn firewall_rules_with_gossip(
    machine: &Machine,
    facts: &HostFacts,
    cluster_nodes: &[IpAddr],
    firewall: &FirewallOptions,
    gossip_port: Option<u16>,
) -> Result<String, BootstrapError> {
    let ctx = NftablesContext {
        gossip_port,
        // Docker's swarm mode has no use for swarm-node's tunnel.
        tunnel_port: match gossip_port {
            Some(_) => None,
            None => Some(swarmup_templates::TUNNEL_PORT),
        },
        ssh_port: facts.ssh_port.unwrap_or(machine.ssh.port),
        ssh_allowed: firewall.ssh_allowed.clone(),
        control_allowed: firewall.control_allowed.clone(),
        cluster_nodes: cluster_nodes.to_vec(),
        published_ports: firewall.published_ports.clone(),
        ..NftablesContext::default()
    };
    Ok(swarmup_templates::nftables(&ctx)?)
}

async fn prepare(
    connector: &dyn Connector,
    machine: &Machine,
    binary: &SwarmNodeBinary,
    cluster_nodes: &[IpAddr],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<Prepared, BootstrapError> {
    let d = &options.deadlines;
    let shell = wait_for_ssh(connector, machine, d.ssh, progress).await?;
    let result = async {
        let mut changes = Vec::new();
        let facts = probe_host(&*shell, machine).await?;
        ensure_docker(&*shell, machine, &facts, d.docker, progress).await?;
        let pushed = push_binary(&*shell, machine, &facts, binary, d.upload, progress).await?;
        if pushed.changed() {
            changes.push("uploaded swarm-node".to_string());
        }
        if options.firewall.enabled {
            let rules = firewall_rules(machine, &facts, cluster_nodes, &options.firewall)?;
            apply_firewall(
                &*shell,
                machine,
                &facts,
                &rules,
                &options.firewall.ssh_allowed,
                progress,
            )
            .await?;
        }
        let unit = service_unit(&facts, options, binary)?;
        install_service(&*shell, machine, &facts, &unit, progress).await?;
        ensure_docker_context(&*shell, machine, progress).await?;
        Ok((pushed == BinaryOutcome::Installed, changes))
    }
    .await;
    match result {
        Ok((new, changes)) => Ok(Prepared {
            machine: machine.clone(),
            shell,
            new,
            changes,
        }),
        Err(e) => {
            shell.close().await;
            Err(e)
        }
    }
}

/// Status once the daemon answers; `None` when it stays silent for `limit`. swarm-node
/// only stays up once the node is in a swarm, so on a machine that is new to swarmup
/// there is nothing to wait for.
async fn status_when_up(p: &Prepared, limit: Duration) -> Option<Status> {
    if p.new {
        return None;
    }
    let waiting_for = format!("waiting for swarm-node to answer on {}", p.machine.name);
    steps::retry(
        &p.machine.name,
        Step::Status,
        &waiting_for,
        limit,
        |left| async move {
            Ok(
                match swarm_status(&*p.shell, left.min(Duration::from_secs(15))).await {
                    Ok(status) => Attempt::Done(status),
                    Err(why) => Attempt::Again(why),
                },
            )
        },
    )
    .await
    .ok()
}

/// A machine whose swarm-node still holds the state of a node the swarm has removed
/// (`docker node rm --force`) leaves by itself within a few heartbeats, when the managers
/// tell it. Waits for that, then counts it as outside the swarm, so that it is joined
/// again rather than waited for as a member.
async fn wait_out_removed(
    prepared: &[Prepared],
    statuses: &mut [Option<Status>],
    limit: Duration,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    let Some(manager) =
        (0..prepared.len()).find(|&i| statuses[i].as_ref().is_some_and(Status::is_manager))
    else {
        return Ok(());
    };
    let Ok(nodes) = swarm_nodes(&*prepared[manager].shell, Duration::from_secs(15)).await else {
        return Ok(());
    };
    let removed: Vec<(usize, String)> = statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let m = s.as_ref()?.swarm.as_ref()?;
            (!nodes.iter().any(|n| n.id == m.node_id)).then(|| (i, m.node_id.clone()))
        })
        .collect();
    let waits = removed.into_iter().map(|(i, old_id)| async move {
        let p = &prepared[i];
        progress.machine(
            &p.machine.name,
            "was removed from the swarm; waiting for it to leave before joining it again",
        );
        let waiting_for = format!("waiting for {} to leave the swarm", p.machine.name);
        steps::retry(&p.machine.name, Step::Status, &waiting_for, limit, |_| {
            let old_id = old_id.clone();
            async move {
                Ok(
                    match swarm_status(&*p.shell, Duration::from_secs(15)).await {
                        Ok(s) if s.swarm.as_ref().is_some_and(|m| m.node_id == old_id) => {
                            Attempt::Again(format!("still node {old_id}"))
                        }
                        _ => Attempt::Done(i),
                    },
                )
            }
        })
        .await
    });
    for i in futures_util::future::try_join_all(waits).await? {
        statuses[i] = None;
    }
    Ok(())
}

/// What converging has to do, decided from each machine's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmPlan {
    /// Index of the manager that creates the swarm or hands out the tokens.
    pub leader: usize,
    pub init: bool,
    pub cluster_id: Option<String>,
    /// Indexes of machines that are not in the swarm yet.
    pub join: Vec<usize>,
}

pub(crate) fn plan_swarm(
    machines: &[Machine],
    statuses: &[Option<Status>],
) -> Result<SwarmPlan, BootstrapError> {
    let mut clusters: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (m, s) in machines.iter().zip(statuses) {
        if let Some(c) = s.as_ref().and_then(Status::cluster_id) {
            clusters.entry(c).or_default().push(&m.name);
        }
    }
    let in_cluster = |i: usize| statuses[i].as_ref().and_then(Status::cluster_id);
    match clusters.len() {
        0 => {
            let leader = machines
                .iter()
                .position(|m| m.role == Role::Manager)
                .expect("checked: at least one manager");
            Ok(SwarmPlan {
                leader,
                init: true,
                cluster_id: None,
                join: (0..machines.len()).filter(|&i| i != leader).collect(),
            })
        }
        1 => {
            let (cluster, members) = clusters.into_iter().next().expect("one cluster");
            let leader = (0..machines.len())
                .find(|&i| {
                    machines[i].role == Role::Manager
                        && in_cluster(i) == Some(cluster)
                        && statuses[i].as_ref().is_some_and(Status::is_manager)
                })
                .ok_or_else(|| {
                    let verb = if members.len() == 1 { "is" } else { "are" };
                    BootstrapError::Invalid(format!(
                        "{} {verb} in swarm {cluster}, but no manager of this cluster answers as a manager of it: start the managers, or destroy and recreate the cluster",
                        members.join(", ")
                    ))
                })?;
            Ok(SwarmPlan {
                leader,
                init: false,
                cluster_id: Some(cluster.to_string()),
                join: (0..machines.len())
                    .filter(|&i| in_cluster(i).is_none())
                    .collect(),
            })
        }
        _ => {
            let list: Vec<String> = clusters
                .iter()
                .map(|(c, names)| format!("{} in {c}", names.join(", ")))
                .collect();
            Err(BootstrapError::Invalid(format!(
                "the machines belong to different swarms ({}): recreate the machines that are in the wrong one",
                list.join("; ")
            )))
        }
    }
}

async fn converge(
    prepared: &[Prepared],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<BootstrapReport, BootstrapError> {
    let d = &options.deadlines;
    let machines: Vec<Machine> = prepared.iter().map(|p| p.machine.clone()).collect();
    let mut statuses = join_all(prepared.iter().map(|p| status_when_up(p, d.daemon))).await;
    wait_out_removed(prepared, &mut statuses, d.join, progress).await?;
    let plan = plan_swarm(&machines, &statuses)?;
    let leader = &prepared[plan.leader];

    for (i, status) in statuses.iter().enumerate() {
        let Some(status) = status else { continue };
        if status.cluster_id().is_none() {
            continue;
        }
        let m = &machines[i];
        progress.machine(&m.name, "already part of the swarm");
        let swarm_role = status.role().map_or("", |r| r.as_str());
        if !swarm_role.is_empty() && swarm_role != m.role.to_string() {
            progress.machine(
                &m.name,
                &format!(
                    "is a {swarm_role} in the swarm but planned as a {}; swarmup leaves roles as they are",
                    m.role
                ),
            );
        }
    }

    let initialized = if plan.init {
        let outcome = swarm_init(
            &*leader.shell,
            &leader.machine,
            leader.machine.private_addr,
            d.init,
            progress,
        )
        .await?;
        outcome == InitOutcome::Created
    } else {
        false
    };

    let mut joined = HashSet::new();
    if !plan.join.is_empty() {
        let tokens = join_tokens(&*leader.shell, &leader.machine, d.join).await?;
        let through = SocketAddr::new(leader.machine.private_addr, CONTROL_PORT);
        let join_one = |i: usize| {
            let p = &prepared[i];
            let token = match p.machine.role {
                Role::Manager => tokens.manager.clone(),
                Role::Worker => tokens.worker.clone(),
            };
            async move {
                swarm_join(
                    &*p.shell,
                    &p.machine,
                    &token,
                    p.machine.private_addr,
                    through,
                    d.join,
                    progress,
                )
                .await
                .map(|outcome| (i, outcome))
            }
        };
        // Managers one at a time, so that each membership change settles before the
        // next; workers all at once alongside them.
        let managers: Vec<usize> = plan
            .join
            .iter()
            .copied()
            .filter(|&i| machines[i].role == Role::Manager)
            .collect();
        let workers: Vec<usize> = plan
            .join
            .iter()
            .copied()
            .filter(|&i| machines[i].role == Role::Worker)
            .collect();
        let manager_chain = async {
            let mut results = Vec::new();
            for &i in &managers {
                results.push(join_one(i).await);
            }
            results
        };
        let (manager_results, worker_results) = tokio::join!(
            manager_chain,
            join_all(workers.iter().map(|&i| join_one(i)))
        );
        let mut errors = Vec::new();
        for result in manager_results.into_iter().chain(worker_results) {
            match result {
                Ok((i, JoinOutcome::Joined)) => {
                    joined.insert(i);
                }
                Ok((_, JoinOutcome::AlreadyJoined)) => {}
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = BootstrapError::collect(errors) {
            return Err(e);
        }
    }

    // Node ids make the readiness check exact even when hostnames are not unique, or not
    // the machine's name (machines swarmup did not make): a node that has just joined may
    // still be restarting, so wait for it to name its id.
    let after = join_all(prepared.iter().map(|p| async move {
        let waiting_for = format!(
            "waiting for swarm-node on {} to name its node",
            p.machine.name
        );
        steps::retry(
            &p.machine.name,
            Step::Status,
            &waiting_for,
            d.daemon,
            |left| async move {
                Ok(
                    match swarm_status(&*p.shell, left.min(Duration::from_secs(15))).await {
                        Ok(s) if s.swarm.as_ref().is_some_and(|m| !m.node_id.is_empty()) => {
                            Attempt::Done(s)
                        }
                        Ok(_) => Attempt::Again("no node id yet".to_string()),
                        Err(why) => Attempt::Again(why),
                    },
                )
            },
        )
        .await
        .ok()
    }))
    .await;
    let expected: Vec<ExpectedNode> = machines
        .iter()
        .zip(&after)
        .map(|(m, s)| ExpectedNode {
            machine: m.name.clone(),
            node_id: s
                .as_ref()
                .and_then(|s| s.swarm.as_ref())
                .map(|m| m.node_id.clone())
                .filter(|id| !id.is_empty()),
        })
        .collect();
    let nodes = wait_ready(
        &*leader.shell,
        &leader.machine,
        &expected,
        d.ready,
        progress,
    )
    .await?;

    let cluster_id = after[plan.leader]
        .as_ref()
        .and_then(|s| s.cluster_id().map(str::to_string))
        .or(plan.cluster_id.clone())
        .unwrap_or_default();
    let changes = prepared.iter().map(|p| p.changes.clone()).collect();
    Ok(report(
        &machines,
        changes,
        nodes,
        &plan,
        &joined,
        initialized,
        cluster_id,
        progress,
    ))
}

/// What a bootstrap did, per node, whichever the engine: the steps each machine
/// reported, plus creating the swarm on the leader and each join.
#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    machines: &[Machine],
    changes: Vec<Vec<String>>,
    nodes: Vec<swarm_contract::NodeEntry>,
    plan: &SwarmPlan,
    joined: &HashSet<usize>,
    initialized: bool,
    cluster_id: String,
    progress: &dyn Progress,
) -> BootstrapReport {
    let mut reports = Vec::with_capacity(machines.len());
    for (i, ((machine, mut changes), node)) in machines.iter().zip(changes).zip(nodes).enumerate() {
        if plan.init && i == plan.leader && initialized {
            changes.push("created the swarm".to_string());
        }
        if joined.contains(&i) {
            changes.push(format!("joined as {}", machine.role));
        }
        progress.machine(&machine.name, "ready");
        reports.push(NodeReport {
            machine: machine.name.clone(),
            planned_role: machine.role,
            node_id: node.id,
            swarm_role: node.role,
            status: node.state,
            manager_status: node.manager_status,
            changes,
        });
    }
    BootstrapReport {
        cluster_id,
        leader: machines[plan.leader].name.clone(),
        initialized,
        nodes: reports,
    }
}

/// Reads the client certificate for the docker CLI from a manager.
pub async fn fetch_client_cert(
    machine: &Machine,
    ssh: &SshOptions,
) -> Result<ClientCert, BootstrapError> {
    fetch_client_cert_with(&SshConnector::new(ssh.clone()), machine).await
}

/// [`fetch_client_cert`] with any [`Connector`].
pub async fn fetch_client_cert_with(
    connector: &dyn Connector,
    machine: &Machine,
) -> Result<ClientCert, BootstrapError> {
    if machine.role != Role::Manager {
        return Err(BootstrapError::Invalid(format!(
            "{} is a worker: the client certificate comes from a manager",
            machine.name
        )));
    }
    let shell = connector
        .connect(machine, Duration::from_secs(20))
        .await
        .map_err(|e| BootstrapError::step(&machine.name, Step::ClientCert, e.to_string()))?;
    let result = steps::client_cert(&*shell, machine).await;
    shell.close().await;
    result
}

/// What `docker load` reported on one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLoad {
    pub machine: String,
    /// `busybox:latest`, from the "Loaded image: ..." lines.
    pub images: Vec<String>,
}

/// Loads an image archive (`docker save` output) into Docker on every machine, in
/// parallel, for clusters without registry access.
pub async fn load_image(
    machines: &[Machine],
    archive: &[u8],
    ssh: &SshOptions,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<Vec<ImageLoad>, BootstrapError> {
    load_image_with(
        &SshConnector::new(ssh.clone()),
        machines,
        archive,
        timeout,
        progress,
    )
    .await
}

/// [`load_image`] with any [`Connector`].
pub async fn load_image_with(
    connector: &dyn Connector,
    machines: &[Machine],
    archive: &[u8],
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<Vec<ImageLoad>, BootstrapError> {
    let results = join_all(machines.iter().map(|m| async move {
        let shell = connector
            .connect(m, Duration::from_secs(20))
            .await
            .map_err(|e| BootstrapError::step(&m.name, Step::ImageLoad, e.to_string()))?;
        progress.machine(
            &m.name,
            &format!(
                "loading image archive ({:.1} MiB)",
                archive.len() as f64 / (1024.0 * 1024.0)
            ),
        );
        // dockerd directly: root's docker CLI context points at swarm-node.
        let out = shell.run_with_stdin(LOAD_SCRIPT, archive, timeout).await;
        shell.close().await;
        let out = out.map_err(|e| BootstrapError::step(&m.name, Step::ImageLoad, e.to_string()))?;
        if !out.success() {
            return Err(BootstrapError::step(
                &m.name,
                Step::ImageLoad,
                format!("docker load failed: {}", out.failure_summary()),
            ));
        }
        let images: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("Loaded image: ")
                    .or_else(|| l.trim().strip_prefix("Loaded image ID: "))
            })
            .map(|s| s.trim().to_string())
            .collect();
        progress.machine(&m.name, &format!("loaded {}", images.join(", ")));
        Ok(ImageLoad {
            machine: m.name.clone(),
            images,
        })
    }))
    .await;
    let mut loads = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(l) => loads.push(l),
            Err(e) => errors.push(e),
        }
    }
    match BootstrapError::collect(errors) {
        Some(e) => Err(e),
        None => Ok(loads),
    }
}
