//! Docker's own swarm mode (`swarmup create --engine docker`): the machines are prepared
//! as for swarm-node (SSH, Docker, firewall), but no swarm-node is installed; the swarm
//! is made with `docker swarm init` and `docker swarm join` on each machine's own
//! dockerd, and the administrator reaches it with the docker CLI over SSH
//! (`DOCKER_HOST=ssh://NODE`).
//!
//! Decisions come from JSON (`docker info --format '{{json .Swarm}}'`,
//! `docker node ls --format '{{json .}}'`), never from the text Docker prints for people.
//! Every command names dockerd's socket with `-H`: root's current docker context may
//! point elsewhere.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use swarm_contract::{Availability, ManagerStatus, NodeEntry, NodeState};
use swarmup_machine::{Machine, Progress, Role};
use swarmup_templates::{CONTROL_PORT, DOCKER_GOSSIP_PORT};

use crate::cluster::{firewall_rules_with_gossip, BootstrapOptions, BootstrapReport, SwarmPlan};
use crate::error::{BootstrapError, Step};
use crate::shell::{quote, RemoteShell};
use crate::ssh::Connector;
use crate::steps::{
    apply_firewall, ensure_docker, probe_host, retry, wait_for_ssh, Attempt, ExpectedNode,
    JoinTokens,
};

/// The docker CLI against the machine's own dockerd.
pub const DOCKER: &str = "docker -H unix:///var/run/docker.sock";

/// The longest a single quick command may take.
const QUICK: Duration = Duration::from_secs(30);

/// What serves the swarm on a cluster's machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Engine {
    /// swarm-node, swarmup's own daemon (the default).
    #[default]
    #[serde(rename = "swarm-node")]
    SwarmNode,
    /// Docker Engine's own swarm mode.
    #[serde(rename = "docker")]
    Docker,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::SwarmNode, Engine::Docker];

    pub const fn as_str(self) -> &'static str {
        match self {
            Engine::SwarmNode => "swarm-node",
            Engine::Docker => "docker",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown engine {s:?}: use swarm-node or docker"))
    }
}

// ---------------------------------------------------------------------------------------
// the commands, as pure functions

/// This node's swarm state as JSON.
pub fn info_command() -> String {
    format!("{DOCKER} info --format '{{{{json .Swarm}}}}'")
}

pub fn init_command(advertise: IpAddr) -> String {
    format!("{DOCKER} swarm init --advertise-addr {advertise}")
}

pub fn join_token_command(role: Role) -> String {
    format!("{DOCKER} swarm join-token -q {role}")
}

pub fn join_command(token: &str, advertise: IpAddr, manager: SocketAddr) -> String {
    format!(
        "{DOCKER} swarm join --token {} --advertise-addr {advertise} {manager}",
        quote(token)
    )
}

pub fn node_ls_command() -> String {
    format!("{DOCKER} node ls --format '{{{{json .}}}}'")
}

/// The docker CLI the administrator's `DOCKER_HOST=ssh://NODE` runs on the machine
/// (`docker system dial-stdio`), for swarmup's own API calls over SSH.
pub fn dial_stdio_command() -> String {
    format!("{DOCKER} system dial-stdio")
}

/// What [`plan_commands`] would run, in order, for a plan: the first manager's init (when
/// the swarm is new), the token reads, then one join per machine that is not in yet,
/// managers before workers. The tokens appear as `<manager-token>` / `<worker-token>`.
pub fn plan_commands(machines: &[Machine], plan: &SwarmPlan) -> Vec<(String, String)> {
    let leader = &machines[plan.leader];
    let mut out = Vec::new();
    if plan.init {
        out.push((leader.name.clone(), init_command(leader.private_addr)));
    }
    if plan.join.is_empty() {
        return out;
    }
    for role in [Role::Worker, Role::Manager] {
        out.push((leader.name.clone(), join_token_command(role)));
    }
    let through = SocketAddr::new(leader.private_addr, CONTROL_PORT);
    let mut order: Vec<usize> = plan.join.clone();
    order.sort_by_key(|&i| (machines[i].role != Role::Manager, i));
    for i in order {
        let m = &machines[i];
        let token = format!("<{}-token>", m.role);
        out.push((
            m.name.clone(),
            join_command(&token, m.private_addr, through),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// what Docker says, read as JSON

/// `docker info --format '{{json .Swarm}}'`, the parts bootstrap reads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmInfo {
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(default)]
    pub node_addr: String,
    /// `inactive`, `pending`, `active`, `error` or `locked`.
    #[serde(default)]
    pub local_node_state: String,
    /// True on managers.
    #[serde(default)]
    pub control_available: bool,
    #[serde(default)]
    pub error: String,
    /// Only managers know the cluster.
    #[serde(default)]
    pub cluster: Option<SwarmCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct SwarmCluster {
    #[serde(rename = "ID", default)]
    pub id: String,
}

impl SwarmInfo {
    pub fn parse(text: &str) -> Result<SwarmInfo, String> {
        serde_json::from_str(text.trim())
            .map_err(|e| format!("docker info printed no swarm JSON ({e}): {}", text.trim()))
    }

    /// In a swarm, or on the way in.
    pub fn in_swarm(&self) -> bool {
        matches!(
            self.local_node_state.as_str(),
            "active" | "pending" | "locked"
        )
    }

    pub fn is_manager(&self) -> bool {
        self.in_swarm() && self.control_available
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster
            .as_ref()
            .map(|c| c.id.as_str())
            .filter(|id| !id.is_empty())
    }
}

/// One line of `docker node ls --format '{{json .}}'`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeLine {
    #[serde(rename = "ID")]
    id: String,
    hostname: String,
    status: String,
    #[serde(default)]
    availability: String,
    #[serde(default)]
    manager_status: String,
}

/// `docker node ls --format '{{json .}}'` as the same entries swarm-node's `nodes --json`
/// gives, so both engines report alike.
pub fn parse_node_ls(text: &str) -> Result<Vec<NodeEntry>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let n: NodeLine = serde_json::from_str(l).map_err(|e| {
                format!("docker node ls printed a line that is not JSON ({e}): {l}")
            })?;
            let manager_status = match n.manager_status.as_str() {
                "" => None,
                "Leader" => Some(ManagerStatus::Leader),
                "Reachable" => Some(ManagerStatus::Reachable),
                _ => Some(ManagerStatus::Unreachable),
            };
            Ok(NodeEntry {
                id: n.id,
                hostname: n.hostname,
                role: if manager_status.is_some() {
                    swarm_contract::Role::Manager
                } else {
                    swarm_contract::Role::Worker
                },
                state: match n.status.as_str() {
                    "Ready" => NodeState::Ready,
                    "Down" => NodeState::Down,
                    "Disconnected" => NodeState::Disconnected,
                    _ => NodeState::Unknown,
                },
                availability: match n.availability.as_str() {
                    "Pause" => Availability::Pause,
                    "Drain" => Availability::Drain,
                    _ => Availability::Active,
                },
                manager_status,
            })
        })
        .collect()
}

/// What converging has to do, from each machine's swarm state. A node that is in a swarm
/// is left alone; managers of different swarms, or members without a manager that
/// answers, are refused with what to do.
pub fn plan_docker_swarm(
    machines: &[Machine],
    infos: &[SwarmInfo],
) -> Result<SwarmPlan, BootstrapError> {
    for (m, info) in machines.iter().zip(infos) {
        if matches!(info.local_node_state.as_str(), "error" | "locked") {
            return Err(BootstrapError::step(
                &m.name,
                Step::Join,
                format!(
                    "Docker's swarm state is {}{}: fix it on the machine (`docker swarm unlock`, or `docker swarm leave --force`) and run again",
                    info.local_node_state,
                    if info.error.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", info.error)
                    }
                ),
            ));
        }
    }
    let mut clusters: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (m, info) in machines.iter().zip(infos) {
        if let Some(c) = info.cluster_id().filter(|_| info.in_swarm()) {
            clusters.entry(c).or_default().push(&m.name);
        }
    }
    let members: Vec<usize> = (0..machines.len())
        .filter(|&i| infos[i].in_swarm())
        .collect();
    if members.is_empty() {
        let leader = machines
            .iter()
            .position(|m| m.role == Role::Manager)
            .expect("checked: at least one manager");
        return Ok(SwarmPlan {
            leader,
            init: true,
            cluster_id: None,
            join: (0..machines.len()).filter(|&i| i != leader).collect(),
        });
    }
    if clusters.len() > 1 {
        let list: Vec<String> = clusters
            .iter()
            .map(|(c, names)| format!("{} in {c}", names.join(", ")))
            .collect();
        return Err(BootstrapError::Invalid(format!(
            "the machines belong to different swarms ({}): run `docker swarm leave --force` on the ones in the wrong one",
            list.join("; ")
        )));
    }
    let leader = (0..machines.len())
        .find(|&i| machines[i].role == Role::Manager && infos[i].is_manager())
        .ok_or_else(|| {
            let names: Vec<&str> = members.iter().map(|&i| machines[i].name.as_str()).collect();
            BootstrapError::Invalid(format!(
                "{} {} in a swarm, but no manager of this cluster answers as a manager of it: start the managers, or destroy and recreate the cluster",
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" }
            ))
        })?;
    Ok(SwarmPlan {
        leader,
        init: false,
        cluster_id: infos[leader].cluster_id().map(str::to_string),
        join: (0..machines.len())
            .filter(|&i| !infos[i].in_swarm())
            .collect(),
    })
}

/// Workers do not know their swarm's id: a worker that is in a swarm must be in the
/// leader's node list, or it belongs to another swarm.
pub fn strangers(machines: &[Machine], infos: &[SwarmInfo], listed: &[NodeEntry]) -> Vec<String> {
    machines
        .iter()
        .zip(infos)
        .filter(|(_, info)| info.in_swarm() && info.local_node_state == "active")
        .filter(|(_, info)| !listed.iter().any(|n| n.id == info.node_id))
        .map(|(m, _)| m.name.clone())
        .collect()
}

fn find_node<'a>(nodes: &'a [NodeEntry], expected: &ExpectedNode) -> Option<&'a NodeEntry> {
    let by_id = expected
        .node_id
        .as_deref()
        .and_then(|id| nodes.iter().find(|n| n.id == id));
    by_id.or_else(|| {
        let same: Vec<&NodeEntry> = nodes
            .iter()
            .filter(|n| n.hostname == expected.machine)
            .collect();
        same.iter().find(|n| n.is_ready()).or(same.first()).copied()
    })
}

// ---------------------------------------------------------------------------------------
// the Docker API over SSH

/// An HTTP/1.0 request for dockerd, written into `docker system dial-stdio`: HTTP/1.0
/// so that dockerd answers without chunking and closes the connection when done.
pub fn http_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: swarmup\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// The status and body of an HTTP response (a chunked body is decoded).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok((status, dechunk(body)?));
    }
    let body = match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n <= body.len() => body[..n].to_vec(),
        Some(n) => {
            return Err(format!(
                "the answer ended after {} of {n} bytes",
                body.len()
            ))
        }
        None => body.to_vec(),
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line is cut short")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("a chunk is cut short".to_string());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// One Docker API call on `shell`'s machine through `docker system dial-stdio`, the
/// same path the docker CLI takes for `DOCKER_HOST=ssh://NODE`. Returns the HTTP status
/// and the body.
pub async fn docker_api(
    shell: &dyn RemoteShell,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let out = shell
        .run_with_stdin(
            &dial_stdio_command(),
            &http_request(method, path, body),
            timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.stdout.is_empty() && !out.success() {
        return Err(format!(
            "docker system dial-stdio on {}: {}",
            shell.target(),
            out.failure_summary()
        ));
    }
    let (status, body) = parse_http_response(out.stdout.as_bytes())
        .map_err(|e| format!("dockerd on {} answered oddly: {e}", shell.target()))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

// ---------------------------------------------------------------------------------------
// bootstrap

struct Prepared {
    machine: Machine,
    shell: Arc<dyn RemoteShell>,
}

async fn run(
    shell: &dyn RemoteShell,
    machine: &Machine,
    step: Step,
    script: &str,
    timeout: Duration,
) -> Result<crate::shell::CommandOutput, BootstrapError> {
    shell
        .run(script, timeout)
        .await
        .map_err(|e| BootstrapError::step(&machine.name, step, e.to_string()))
}

/// The docker CLI must be on the machine: `DOCKER_HOST=ssh://NODE` runs
/// `docker system dial-stdio` there. Debian's docker.io carries it; newer Debian splits
/// it into docker-cli.
async fn ensure_docker_cli(
    shell: &dyn RemoteShell,
    machine: &Machine,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    let has = run(shell, machine, Step::Docker, "command -v docker", QUICK).await?;
    if has.success() {
        return Ok(());
    }
    progress.machine(&machine.name, "installing docker-cli from the distribution");
    let out = run(
        shell,
        machine,
        Step::Docker,
        "export DEBIAN_FRONTEND=noninteractive; command -v apt-get >/dev/null && \
         apt-get -o DPkg::Lock::Timeout=300 -q install -y docker-cli",
        limit,
    )
    .await?;
    if !out.success() {
        return Err(BootstrapError::step(
            &machine.name,
            Step::Docker,
            format!(
                "the docker CLI is missing and could not be installed ({}): install it, since `DOCKER_HOST=ssh://` runs it on the machine",
                out.failure_summary()
            ),
        ));
    }
    Ok(())
}

async fn prepare(
    connector: &dyn Connector,
    machine: &Machine,
    cluster_nodes: &[IpAddr],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<Prepared, BootstrapError> {
    let d = &options.deadlines;
    let shell = wait_for_ssh(connector, machine, d.ssh, progress).await?;
    let result = async {
        let facts = probe_host(&*shell, machine).await?;
        ensure_docker(&*shell, machine, &facts, d.docker, progress).await?;
        ensure_docker_cli(&*shell, machine, d.docker, progress).await?;
        if options.firewall.enabled {
            let rules = firewall_rules_with_gossip(
                machine,
                &facts,
                cluster_nodes,
                &options.firewall,
                Some(DOCKER_GOSSIP_PORT),
            )?;
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
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(Prepared {
            machine: machine.clone(),
            shell,
        }),
        Err(e) => {
            shell.close().await;
            Err(e)
        }
    }
}

async fn swarm_info(p: &Prepared, limit: Duration) -> Result<SwarmInfo, BootstrapError> {
    let waiting_for = format!("waiting for Docker's swarm state on {}", p.machine.name);
    retry(
        &p.machine.name,
        Step::Docker,
        &waiting_for,
        limit,
        |left| async move {
            let out = run(
                &*p.shell,
                &p.machine,
                Step::Docker,
                &info_command(),
                left.min(QUICK),
            )
            .await?;
            if !out.success() {
                return Ok(Attempt::Again(out.failure_summary()));
            }
            Ok(match SwarmInfo::parse(&out.stdout) {
                Ok(info) => Attempt::Done(info),
                Err(e) => Attempt::Again(e),
            })
        },
    )
    .await
}

async fn node_ls(p: &Prepared, timeout: Duration) -> Result<Vec<NodeEntry>, String> {
    let out = p
        .shell
        .run(&node_ls_command(), timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("docker node ls: {}", out.failure_summary()));
    }
    parse_node_ls(&out.stdout)
}

async fn init(
    p: &Prepared,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<bool, BootstrapError> {
    let advertise = p.machine.private_addr;
    progress.machine(
        &p.machine.name,
        &format!("creating the swarm with docker swarm init (advertising {advertise})"),
    );
    let waiting_for = format!("waiting for docker swarm init on {}", p.machine.name);
    retry(
        &p.machine.name,
        Step::Init,
        &waiting_for,
        limit,
        |left| async move {
            let out = run(
                &*p.shell,
                &p.machine,
                Step::Init,
                &init_command(advertise),
                left.min(Duration::from_secs(60)),
            )
            .await?;
            if out.success() {
                return Ok(Attempt::Done(true));
            }
            // Whether it failed because the node is in a swarm already: asked, not read
            // from the message.
            let info = swarm_info(p, left.min(QUICK)).await?;
            Ok(if info.is_manager() {
                Attempt::Done(false)
            } else {
                Attempt::Again(out.failure_summary())
            })
        },
    )
    .await
}

async fn join_tokens(p: &Prepared, limit: Duration) -> Result<JoinTokens, BootstrapError> {
    crate::steps::join_tokens_with(&*p.shell, &p.machine, limit, join_token_command).await
}

async fn join(
    p: &Prepared,
    token: &str,
    through: SocketAddr,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<bool, BootstrapError> {
    if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c == '\'') {
        return Err(BootstrapError::step(
            &p.machine.name,
            Step::Join,
            "the join token from the manager is malformed",
        ));
    }
    progress.machine(
        &p.machine.name,
        &format!(
            "joining the swarm as {} through {through} (docker swarm join)",
            p.machine.role
        ),
    );
    let script = join_command(token, p.machine.private_addr, through);
    let waiting_for = format!(
        "waiting for {} to join the swarm through {through}",
        p.machine.name
    );
    retry(&p.machine.name, Step::Join, &waiting_for, limit, |left| {
        let script = &script;
        async move {
            let out = run(
                &*p.shell,
                &p.machine,
                Step::Join,
                script,
                left.min(Duration::from_secs(120)),
            )
            .await?;
            if out.success() {
                return Ok(Attempt::Done(true));
            }
            let info = swarm_info(p, left.min(QUICK)).await?;
            // The token is in the command line, never in a message.
            Ok(if info.in_swarm() {
                Attempt::Done(false)
            } else {
                Attempt::Again(out.failure_summary().replace(token, "<token>"))
            })
        }
    })
    .await
}

/// Docker's swarm mode on `machines`: prepared in parallel (SSH, Docker and its CLI, the
/// firewall with Docker's ports between the nodes), then `docker swarm init` on the first
/// manager, `docker swarm join` on the others, and a wait until every node is Ready.
/// Running it again converges: nodes already in the swarm are left alone.
pub async fn bootstrap(
    connector: &dyn Connector,
    machines: &[Machine],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<BootstrapReport, BootstrapError> {
    let cluster_nodes: Vec<IpAddr> = machines.iter().map(|m| m.private_addr).collect();
    let results = join_all(
        machines
            .iter()
            .map(|m| prepare(connector, m, &cluster_nodes, options, progress)),
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

async fn converge(
    prepared: &[Prepared],
    options: &BootstrapOptions,
    progress: &dyn Progress,
) -> Result<BootstrapReport, BootstrapError> {
    let d = &options.deadlines;
    let machines: Vec<Machine> = prepared.iter().map(|p| p.machine.clone()).collect();
    let infos =
        futures_util::future::try_join_all(prepared.iter().map(|p| swarm_info(p, d.docker)))
            .await?;
    let plan = plan_docker_swarm(&machines, &infos)?;
    let leader = &prepared[plan.leader];
    if !plan.init {
        let listed = node_ls(leader, QUICK)
            .await
            .map_err(|e| BootstrapError::step(&leader.machine.name, Step::Join, e))?;
        let strangers = strangers(&machines, &infos, &listed);
        if !strangers.is_empty() {
            return Err(BootstrapError::Invalid(format!(
                "{} {} in a swarm that {} does not list: run `docker swarm leave --force` there and run again",
                strangers.join(", "),
                if strangers.len() == 1 { "is" } else { "are" },
                leader.machine.name
            )));
        }
        for (m, info) in machines.iter().zip(&infos) {
            if info.in_swarm() {
                progress.machine(&m.name, "already part of the swarm");
            }
        }
    }

    let initialized = if plan.init {
        init(leader, d.init, progress).await?
    } else {
        false
    };

    let mut joined = HashSet::new();
    if !plan.join.is_empty() {
        let tokens = join_tokens(leader, d.join).await?;
        let through = SocketAddr::new(leader.machine.private_addr, CONTROL_PORT);
        let join_one = |i: usize| {
            let p = &prepared[i];
            let token = match p.machine.role {
                Role::Manager => tokens.manager.clone(),
                Role::Worker => tokens.worker.clone(),
            };
            async move {
                join(p, &token, through, d.join, progress)
                    .await
                    .map(|done| (i, done))
            }
        };
        // Managers one at a time, so that each Raft membership change settles before the
        // next; workers all at once alongside them.
        let (managers, workers): (Vec<usize>, Vec<usize>) = plan
            .join
            .iter()
            .copied()
            .partition(|&i| machines[i].role == Role::Manager);
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
                Ok((i, true)) => {
                    joined.insert(i);
                }
                Ok((_, false)) => {}
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = BootstrapError::collect(errors) {
            return Err(e);
        }
    }

    let after =
        futures_util::future::try_join_all(prepared.iter().map(|p| swarm_info(p, QUICK))).await?;
    let expected: Vec<ExpectedNode> = machines
        .iter()
        .zip(&after)
        .map(|(m, info)| ExpectedNode {
            machine: m.name.clone(),
            node_id: Some(info.node_id.clone()).filter(|id| !id.is_empty()),
        })
        .collect();
    let waiting_for = format!(
        "waiting on {} for {} node(s) to be ready",
        leader.machine.name,
        expected.len()
    );
    progress.machine(&leader.machine.name, &waiting_for);
    let nodes = retry(
        &leader.machine.name,
        Step::Ready,
        &waiting_for,
        d.ready,
        |left| {
            let expected = &expected;
            async move {
                let nodes = match node_ls(leader, left.min(QUICK)).await {
                    Ok(n) => n,
                    Err(why) => return Ok(Attempt::Again(why)),
                };
                let mut found = Vec::with_capacity(expected.len());
                let mut pending = Vec::new();
                for e in expected {
                    match find_node(&nodes, e) {
                        Some(n) if n.is_ready() => found.push(n.clone()),
                        Some(n) => pending.push(format!("{} ({})", e.machine, n.state.as_str())),
                        None => pending.push(format!("{} (not in the node list)", e.machine)),
                    }
                }
                Ok(if pending.is_empty() {
                    Attempt::Done(found)
                } else {
                    Attempt::Again(format!("not ready: {}", pending.join(", ")))
                })
            }
        },
    )
    .await?;

    let cluster_id = after[plan.leader]
        .cluster_id()
        .map(str::to_string)
        .or(plan.cluster_id.clone())
        .unwrap_or_default();
    Ok(crate::cluster::report(
        &machines,
        vec![Vec::new(); prepared.len()],
        nodes,
        &plan,
        &joined,
        initialized,
        cluster_id,
        progress,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmup_machine::{PowerState, SshEndpoint};

    fn machine(i: u8, role: Role) -> Machine {
        Machine {
            name: format!("c-node{i}"),
            role,
            provider_id: format!("c-node{i}"),
            private_addr: format!("10.0.0.{i}").parse().unwrap(),
            ssh: SshEndpoint {
                host: format!("10.0.0.{i}").parse().unwrap(),
                port: 22,
                user: "root".into(),
            },
            power: PowerState::Running,
        }
    }

    fn three() -> Vec<Machine> {
        vec![
            machine(1, Role::Manager),
            machine(2, Role::Manager),
            machine(3, Role::Worker),
        ]
    }

    fn info(state: &str, manager: bool, cluster: &str, node: &str) -> SwarmInfo {
        SwarmInfo {
            node_id: node.into(),
            local_node_state: state.into(),
            control_available: manager,
            cluster: (!cluster.is_empty()).then(|| SwarmCluster { id: cluster.into() }),
            ..SwarmInfo::default()
        }
    }

    /// Docker's swarm state shared by fake machines: (hostname, node id, manager).
    type World = Arc<std::sync::Mutex<Vec<(String, String, bool)>>>;

    /// Lab machines whose dockerd keeps a swarm in `world`.
    fn fake_cluster(machines: &[Machine]) -> (crate::fake::FakeConnector, World) {
        use crate::shell::CommandOutput;
        let connector = crate::fake::FakeConnector::new();
        let world: World = Arc::default();
        for m in machines {
            let shell = connector.shell(&m.name);
            shell.on(
                "lab=yes",
                CommandOutput::ok("lab=yes\nsystemd=no\narch=x86_64\nssh=10.0.0.9 5 10.0.0.1 22\n"),
            );
            shell.on("version --format", CommandOutput::ok("20.10.24+dfsg1\n"));
            let (w, name) = (world.clone(), m.name.clone());
            shell.on_fn("info --format", move |_| {
                let w = w.lock().unwrap();
                let me = w.iter().find(|(h, _, _)| *h == name);
                let json = match me {
                    None => serde_json::json!({"NodeID": "", "LocalNodeState": "inactive"}),
                    Some((_, id, manager)) => serde_json::json!({
                        "NodeID": id, "LocalNodeState": "active", "ControlAvailable": manager,
                        "Cluster": if *manager { serde_json::json!({"ID": "clu"}) } else { serde_json::Value::Null },
                    }),
                };
                Ok(CommandOutput::ok(json.to_string()))
            });
            let (w, name) = (world.clone(), m.name.clone());
            shell.on_fn("swarm init", move |_| {
                let mut w = w.lock().unwrap();
                if w.iter().any(|(h, _, _)| *h == name) {
                    return Ok(CommandOutput::failed(
                        1,
                        "Error response from daemon: This node is already part of a swarm.",
                    ));
                }
                w.push((name.clone(), format!("id-{name}"), true));
                Ok(CommandOutput::ok("Swarm initialized"))
            });
            shell.on_fn("join-token -q", |script| {
                Ok(CommandOutput::ok(if script.ends_with("manager") {
                    "SWMTKN-m\n"
                } else {
                    "SWMTKN-w\n"
                }))
            });
            let (w, name) = (world.clone(), m.name.clone());
            shell.on_fn("swarm join --token", move |script| {
                w.lock().unwrap().push((
                    name.clone(),
                    format!("id-{name}"),
                    script.contains("SWMTKN-m"),
                ));
                Ok(CommandOutput::ok("This node joined a swarm"))
            });
            let w = world.clone();
            shell.on_fn("node ls --format", move |_| {
                let lines: Vec<String> = w
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(h, id, manager)| {
                        serde_json::json!({"ID": id, "Hostname": h, "Status": "Ready", "Availability": "Active",
                            "ManagerStatus": if *manager { "Reachable" } else { "" }})
                        .to_string()
                    })
                    .collect();
                Ok(CommandOutput::ok(lines.join("\n")))
            });
        }
        (connector, world)
    }

    #[tokio::test(start_paused = true)]
    async fn bootstrap_makes_docker_swarm_and_a_rerun_changes_nothing() {
        let machines = three();
        let (connector, world) = fake_cluster(&machines);
        let mut options = BootstrapOptions::new(
            crate::BinarySource::Bytes(Vec::new().into()),
            crate::SshOptions::new("/k/id", "/k/known_hosts"),
        );
        options.engine = Engine::Docker;
        let progress = swarmup_machine::NoProgress;
        let report = crate::bootstrap_cluster_with(&connector, &machines, &options, &progress)
            .await
            .unwrap();
        assert!(report.initialized);
        assert_eq!(report.cluster_id, "clu");
        assert_eq!(report.nodes.len(), 3);
        assert_eq!(world.lock().unwrap().len(), 3);
        let roles: Vec<bool> = world.lock().unwrap().iter().map(|n| n.2).collect();
        assert_eq!(roles, [true, true, false]);
        let shell1 = connector.shell("c-node1");
        assert_eq!(shell1.count("swarm init --advertise-addr 10.0.0.1"), 1);
        assert_eq!(
            connector
                .shell("c-node3")
                .count("swarm join --token SWMTKN-w --advertise-addr 10.0.0.3 10.0.0.1:2377"),
            1
        );
        // Docker's ports between the nodes; no swarm-node anywhere.
        let firewall = shell1.file(crate::steps::LAB_FIREWALL_PATH).unwrap().0;
        let firewall = String::from_utf8(firewall).unwrap();
        assert!(firewall.contains("th dport 7946 accept"), "{firewall}");
        for m in &machines {
            let shell = connector.shell(&m.name);
            assert_eq!(shell.count("swarm-node"), 0, "{:?}", shell.scripts());
            assert_eq!(shell.count("docker context"), 0);
        }

        let again = crate::bootstrap_cluster_with(&connector, &machines, &options, &progress)
            .await
            .unwrap();
        assert!(!again.initialized);
        assert!(again.nodes.iter().all(|n| n.changes.is_empty()));
        assert_eq!(
            shell1.count("swarm init"),
            1,
            "a re-run initializes nothing"
        );
        let joins: usize = machines
            .iter()
            .map(|m| connector.shell(&m.name).count("swarm join --token"))
            .sum();
        assert_eq!(joins, 2, "a re-run joins nothing");
    }

    #[test]
    fn engines_read_and_print_as_the_flag_says() {
        assert_eq!("docker".parse::<Engine>(), Ok(Engine::Docker));
        assert_eq!("swarm-node".parse::<Engine>(), Ok(Engine::SwarmNode));
        assert!("swarmkit"
            .parse::<Engine>()
            .unwrap_err()
            .contains("swarm-node or docker"));
        assert_eq!(Engine::default(), Engine::SwarmNode);
        assert_eq!(
            serde_json::to_string(&Engine::Docker).unwrap(),
            "\"docker\""
        );
        assert_eq!(
            serde_json::from_str::<Engine>("\"swarm-node\"").unwrap(),
            Engine::SwarmNode
        );
    }

    #[test]
    fn a_new_swarm_is_init_then_joins_managers_first() {
        let machines = three();
        let infos = vec![info("inactive", false, "", ""); 3];
        let plan = plan_docker_swarm(&machines, &infos).unwrap();
        assert!(plan.init);
        let commands = plan_commands(&machines, &plan);
        let d = DOCKER;
        let want: Vec<(String, String)> = [
            ("c-node1", format!("{d} swarm init --advertise-addr 10.0.0.1")),
            ("c-node1", format!("{d} swarm join-token -q worker")),
            ("c-node1", format!("{d} swarm join-token -q manager")),
            (
                "c-node2",
                format!("{d} swarm join --token '<manager-token>' --advertise-addr 10.0.0.2 10.0.0.1:2377"),
            ),
            (
                "c-node3",
                format!("{d} swarm join --token '<worker-token>' --advertise-addr 10.0.0.3 10.0.0.1:2377"),
            ),
        ]
        .into_iter()
        .map(|(m, c)| (m.to_string(), c))
        .collect();
        assert_eq!(commands, want);
    }

    #[test]
    fn a_rerun_leaves_members_alone_and_joins_the_rest() {
        let machines = three();
        let infos = vec![
            info("active", true, "clu", "n1"),
            info("active", true, "clu", "n2"),
            info("inactive", false, "", ""),
        ];
        let plan = plan_docker_swarm(&machines, &infos).unwrap();
        assert_eq!(
            plan,
            SwarmPlan {
                leader: 0,
                init: false,
                cluster_id: Some("clu".into()),
                join: vec![2]
            }
        );
        let all_in = vec![
            info("active", true, "clu", "n1"),
            info("active", true, "clu", "n2"),
            info("active", false, "", "n3"),
        ];
        let plan = plan_docker_swarm(&machines, &all_in).unwrap();
        assert!(!plan.init && plan.join.is_empty());
        assert_eq!(plan_commands(&machines, &plan), vec![]);
        // The first manager down: the second hands out the tokens.
        let first_gone = vec![
            info("inactive", false, "", ""),
            info("active", true, "clu", "n2"),
            info("active", false, "", "n3"),
        ];
        let plan = plan_docker_swarm(&machines, &first_gone).unwrap();
        assert_eq!((plan.leader, plan.join.clone()), (1, vec![0]));
    }

    #[test]
    fn mixed_or_headless_swarms_are_refused() {
        let machines = three();
        let two = vec![
            info("active", true, "a", "n1"),
            info("active", true, "b", "n2"),
            info("inactive", false, "", ""),
        ];
        let err = plan_docker_swarm(&machines, &two).unwrap_err().to_string();
        assert!(err.contains("different swarms"), "{err}");
        let headless = vec![
            info("inactive", false, "", ""),
            info("inactive", false, "", ""),
            info("active", false, "", "n3"),
        ];
        let err = plan_docker_swarm(&machines, &headless)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no manager of this cluster answers"), "{err}");
        let locked = vec![
            info("locked", true, "a", "n1"),
            info("inactive", false, "", ""),
            info("inactive", false, "", ""),
        ];
        let err = plan_docker_swarm(&machines, &locked)
            .unwrap_err()
            .to_string();
        assert!(err.contains("docker swarm unlock"), "{err}");
    }

    #[test]
    fn a_worker_of_another_swarm_is_a_stranger() {
        let machines = three();
        let infos = vec![
            info("active", true, "clu", "n1"),
            info("active", true, "clu", "n2"),
            info("active", false, "", "elsewhere"),
        ];
        let listed = parse_node_ls(concat!(
            r#"{"Availability":"Active","Hostname":"c-node1","ID":"n1","ManagerStatus":"Leader","Status":"Ready"}"#,
            "\n",
            r#"{"Availability":"Active","Hostname":"c-node2","ID":"n2","ManagerStatus":"Reachable","Status":"Ready"}"#,
        ))
        .unwrap();
        assert_eq!(strangers(&machines, &infos, &listed), ["c-node3"]);
    }

    #[test]
    fn swarm_state_and_nodes_are_read_as_json() {
        let text = r#"{"NodeID":"g6s9","NodeAddr":"10.247.165.11","LocalNodeState":"active","ControlAvailable":true,"Error":"","RemoteManagers":[{"NodeID":"g6s9","Addr":"10.247.165.11:2377"}],"Nodes":3,"Managers":3,"Cluster":{"ID":"tkal","Version":{"Index":10}}}"#;
        let i = SwarmInfo::parse(text).unwrap();
        assert!(i.is_manager());
        assert_eq!(i.cluster_id(), Some("tkal"));
        let worker = SwarmInfo::parse(
            r#"{"NodeID":"w","LocalNodeState":"active","ControlAvailable":false,"Cluster":null}"#,
        )
        .unwrap();
        assert!(worker.in_swarm() && !worker.is_manager() && worker.cluster_id().is_none());
        let none = SwarmInfo::parse(r#"{"NodeID":"","LocalNodeState":"inactive"}"#).unwrap();
        assert!(!none.in_swarm());
        assert!(SwarmInfo::parse("Swarm: inactive").is_err());

        let nodes = parse_node_ls(concat!(
            r#"{"Availability":"Active","EngineVersion":"20.10.24+dfsg1","Hostname":"x-node1","ID":"a","ManagerStatus":"Leader","Self":true,"Status":"Ready","TLSStatus":"Ready"}"#,
            "\n\n",
            r#"{"Availability":"Drain","EngineVersion":"20.10.24+dfsg1","Hostname":"x-node3","ID":"c","ManagerStatus":"","Self":false,"Status":"Down","TLSStatus":"Ready"}"#,
            "\n"
        ))
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].manager_status, Some(ManagerStatus::Leader));
        assert_eq!(nodes[0].role, swarm_contract::Role::Manager);
        assert!(nodes[0].is_ready());
        assert_eq!(nodes[1].role, swarm_contract::Role::Worker);
        assert_eq!(nodes[1].state, NodeState::Down);
        assert_eq!(nodes[1].availability, Availability::Drain);
        assert!(parse_node_ls("ID HOSTNAME STATUS").is_err());
    }

    #[test]
    fn api_calls_are_http_1_0_and_answers_are_decoded() {
        let req = http_request("POST", "/v1.41/services/create", Some(b"{}"));
        let text = String::from_utf8(req).unwrap();
        assert!(
            text.starts_with("POST /v1.41/services/create HTTP/1.0\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 2\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        assert!(!String::from_utf8(http_request("GET", "/nodes", None))
            .unwrap()
            .contains("Content-Length"));

        let plain =
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(parse_http_response(plain).unwrap(), (200, b"[]".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked).unwrap(),
            (404, b"{\"a\":1}".to_vec())
        );
        let until_close = b"HTTP/1.0 200 OK\r\n\r\n{}";
        assert_eq!(parse_http_response(until_close).unwrap().1, b"{}".to_vec());
        assert!(parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_http_response(b"garbage").is_err());
    }
}
