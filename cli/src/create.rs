//! `swarmup create` as a pipeline of stages over one [`CreatePlan`]: validate, plan, keys,
//! machines, ssh config, bootstrap, credentials, report. Each stage is a function of its
//! own, so a command that makes many clusters can call them in its own order, and the
//! decisions inside them (counts, merging, firewall sources) are pure functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use swarmup_bootstrap::docker_swarm::Engine;
use swarmup_bootstrap::{
    keys, ssh_config, BinarySource, BootstrapOptions, BootstrapReport, SshOptions,
};
use swarmup_providers::{
    ClusterPlan, DefaultAdminSources, DryRun, Machine, MachinePlan, Progress, Provider, Role,
};

use crate::commands::{ssh_config_path, ssh_options};
use crate::output::{table, Output};
use crate::providers::{self, ProviderChoice};
use crate::records::{self, ClusterDir, ClusterRecord, PlannedMachine};
use crate::CreateArgs;

/// Docker advises at most seven managers.
pub const MAX_MANAGERS: u32 = 7;
/// The most nodes one create makes.
pub const MAX_NODES: u32 = 100;
/// `--name` when neither the flag nor the cluster file gives one.
pub const DEFAULT_NAME: &str = "swarm";
/// `--provider` when neither the flag nor the cluster file gives one.
pub const DEFAULT_PROVIDER: &str = "lab";

/// The manager count: Docker's advice unless the user chose one that is valid.
pub fn resolve_managers(nodes: u32, managers: Option<u32>) -> Result<u32> {
    let m = managers.unwrap_or(if nodes < 3 { 1 } else { 3 });
    if m == 0 {
        bail!("--managers must be at least 1: a swarm needs a manager");
    }
    if m.is_multiple_of(2) {
        bail!("--managers {m} is even: use an odd number (1, 3, 5 or 7) so a majority survives failures");
    }
    if m > MAX_MANAGERS {
        bail!("--managers {m} is too many: Docker advises at most {MAX_MANAGERS}");
    }
    if m > nodes {
        bail!("--managers {m} is more than --nodes {nodes}: every manager is a node");
    }
    Ok(m)
}

/// A cluster file (`swarmup create -f cluster.yaml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub nodes: Option<u32>,
    pub managers: Option<u32>,
    pub region: Option<String>,
    pub size: Option<String>,
    pub image: Option<String>,
    #[serde(default)]
    pub ssh_from: Vec<String>,
    /// A public key file already on the DigitalOcean account (`~/` is the home directory).
    pub ssh_key: Option<PathBuf>,
    /// `swarm-node` or `docker`.
    pub engine: Option<Engine>,
    /// `--provider ssh`: the machines, as `--host` takes them.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The flags with `-f FILE` merged in: a setting the user gave as a flag wins, the file
/// fills what the flags left unset, and defaults apply only after both (an unset flag is
/// `None`, never "equal to the default").
pub fn merge_file(args: CreateArgs) -> Result<CreateArgs> {
    let Some(path) = args.file.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read cluster file {}", path.display()))?;
    let file: ClusterFile = serde_norway::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid cluster file {}: {e}", path.display()))?;
    Ok(merge(args, file, crate::env::path(crate::env::HOME)))
}

/// [`merge_file`]'s decision, without the file system; `home` expands `~/` in `ssh_key`.
pub fn merge(mut args: CreateArgs, file: ClusterFile, home: Option<PathBuf>) -> CreateArgs {
    args.name = args.name.or(file.name);
    args.provider = args.provider.or(file.provider);
    args.nodes = args.nodes.or(file.nodes);
    args.managers = args.managers.or(file.managers);
    args.region = args.region.or(file.region);
    args.size = args.size.or(file.size);
    args.image = args.image.or(file.image);
    args.engine = args.engine.or(file.engine);
    // `--ssh-from` cannot be given empty: no flag is the only way to have none.
    if args.ssh_from.is_empty() {
        args.ssh_from = file.ssh_from;
    }
    if args.host.is_empty() {
        args.host = file.hosts;
    }
    args.ssh_key = args
        .ssh_key
        .or(file.ssh_key.map(|p| match (p.strip_prefix("~"), &home) {
            (Ok(rest), Some(home)) => home.join(rest),
            _ => p,
        }));
    args
}

impl CreateArgs {
    /// The cluster's name: the flag, the cluster file, or the default.
    pub fn cluster_name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_NAME)
    }

    /// The provider's name: the flag, the cluster file, or the default.
    pub fn provider_name(&self) -> &str {
        self.provider.as_deref().unwrap_or(DEFAULT_PROVIDER)
    }
}

/// The node and manager counts of a create, checked against the cluster's earlier run.
pub fn check_counts(
    nodes: Option<u32>,
    managers: Option<u32>,
    provider: &str,
    existing: Option<&ClusterRecord>,
) -> Result<(u32, u32)> {
    let nodes = match (nodes, existing) {
        (Some(n), _) => n,
        (None, Some(r)) => r.machines.len() as u32,
        (None, None) => bail!("--nodes is required: how many machines, for example --nodes 3"),
    };
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if nodes > MAX_NODES {
        bail!("--nodes {nodes} is more than swarmup creates at once ({MAX_NODES}): create fewer nodes");
    }
    let managers = match (existing, managers) {
        (Some(r), None) => r.managers() as u32,
        _ => resolve_managers(nodes, managers)?,
    };
    if let Some(r) = existing {
        if r.provider != provider {
            bail!(
                "the name {} is taken by a {} cluster: pick another --name, or `swarmup destroy {}` first",
                r.name, r.provider, r.name
            );
        }
        if (nodes as usize) < r.machines.len() {
            bail!(
                "cluster {} has {} nodes and create never removes nodes: use --nodes {} or more",
                r.name,
                r.machines.len(),
                r.machines.len()
            );
        }
        if managers as usize != r.managers() {
            bail!(
                "cluster {} has {} managers: change roles with `docker node promote/demote`, not create",
                r.name,
                r.managers()
            );
        }
    }
    Ok((nodes, managers))
}

/// The engine of a create: the one asked for, else the cluster's own from its earlier
/// run, else swarm-node. An existing cluster keeps its engine: switching would leave the
/// other engine's swarm on every machine.
pub fn check_engine(asked: Option<Engine>, existing: Option<&ClusterRecord>) -> Result<Engine> {
    match (asked, existing) {
        (Some(a), Some(r)) if a != r.engine => bail!(
            "cluster {} runs engine {}: it cannot switch to --engine {a}; `swarmup destroy {}` and create it again",
            r.name,
            r.engine,
            r.name
        ),
        (Some(a), _) => Ok(a),
        (None, Some(r)) => Ok(r.engine),
        (None, None) => Ok(Engine::default()),
    }
}

/// The machines of a cluster: NAME-node1… with the managers first.
pub fn plan_machines(cluster: &str, nodes: u32, managers: u32) -> Vec<PlannedMachine> {
    (1..=nodes)
        .map(|i| PlannedMachine {
            name: format!("{cluster}-node{i}"),
            role: if i <= managers {
                Role::Manager
            } else {
                Role::Worker
            },
        })
        .collect()
}

/// What one create works on, filled in by [`validate`] and [`plan`] and read by every
/// later stage.
#[derive(Debug)]
pub struct CreatePlan {
    /// The merged settings.
    pub args: CreateArgs,
    pub name: String,
    pub dir: ClusterDir,
    /// The cluster's record from an earlier run, when this run resumes or grows it.
    pub existing: Option<ClusterRecord>,
    pub nodes: u32,
    pub managers: u32,
    pub machines: Vec<PlannedMachine>,
    pub choice: ProviderChoice,
    /// What serves the swarm.
    pub engine: Engine,
}

impl CreatePlan {
    /// The cluster did not exist before this run.
    pub fn new_cluster(&self) -> bool {
        self.existing.is_none()
    }
}

/// Stage "validate": names, counts and what an earlier run of the cluster allows.
pub fn validate(args: CreateArgs) -> Result<CreatePlan> {
    let args = providers::check_create_args(args)?;
    let name = args.cluster_name().to_string();
    records::validate_name(&name)?;
    providers::check_name(args.provider_name())?;
    let dir = ClusterDir::of(&name)?;
    let existing = if dir.exists() {
        Some(dir.load()?)
    } else {
        None
    };
    let (nodes, managers) = check_counts(
        args.nodes,
        args.managers,
        args.provider_name(),
        existing.as_ref(),
    )?;
    let engine = check_engine(args.engine, existing.as_ref())?;
    Ok(CreatePlan {
        engine,
        choice: ProviderChoice::default(),
        machines: Vec::new(),
        args,
        name,
        dir,
        existing,
        nodes,
        managers,
    })
}

/// Stage "plan": the machines and the provider's options (flags first, then what the
/// first run of the same cluster chose).
pub fn plan(mut p: CreatePlan) -> CreatePlan {
    p.choice = ProviderChoice::for_create(&p.args, p.existing.as_ref());
    p.machines = providers::planned_machines(&p.choice, &p.name, p.managers)
        .unwrap_or_else(|| plan_machines(&p.name, p.nodes, p.managers));
    p
}

/// Stage "keys": the login key and one SSH host key per machine, generated once and
/// reloaded by later runs; they are pinned into the machines as they are created.
pub async fn keys(p: &CreatePlan) -> Result<ClusterPlan> {
    let login = keys::ensure_login_key(&p.dir.login_key(), &format!("swarmup-{}", p.name)).await?;
    let mut host_keys = p.dir.load_host_keys()?;
    // Machines that exist already (`--provider ssh`) keep their own host keys, pinned.
    providers::adopt_existing(p, &login, &mut host_keys).await?;
    for m in &p.machines {
        if !host_keys.contains_key(&m.name) {
            host_keys.insert(m.name.clone(), keys::generate_host_key(&m.name)?);
        }
    }
    p.dir.save_host_keys(&host_keys)?;
    Ok(ClusterPlan {
        cluster: p.name.clone(),
        machines: p
            .machines
            .iter()
            .map(|m| MachinePlan {
                name: m.name.clone(),
                role: m.role,
                host_key: host_keys[&m.name].clone(),
            })
            .collect(),
        login_public_key: login.public_openssh.clone(),
        tags: Vec::new(),
    })
}

/// The record a create writes before any machine exists, so `destroy` can always find
/// them: the earlier run's, with this run's machines and provider options.
pub fn record_of(p: &CreatePlan) -> ClusterRecord {
    let mut record = p.existing.clone().unwrap_or(ClusterRecord {
        name: p.name.clone(),
        provider: p.args.provider_name().to_string(),
        created_at: now(),
        machines: vec![],
        last_seen: vec![],
        provider_options: BTreeMap::new(),
        engine: p.engine,
    });
    record.machines = p.machines.clone();
    record.engine = p.engine;
    // `swarmup firewall sync --publish-from` keeps its sources in the same map.
    let publish_from = record
        .provider_options
        .remove(crate::firewall::OPT_PUBLISH_FROM);
    record.provider_options = p.choice.recorded();
    if let Some(v) = publish_from {
        record
            .provider_options
            .insert(crate::firewall::OPT_PUBLISH_FROM.to_string(), v);
    }
    record
}

/// Stage "machines": the provider's preflight, the record, then the machines. A refused
/// preflight leaves no trace of a new cluster; a failed create is rolled back with
/// `--rollback-on-failure`, else left for the next run to resume.
pub async fn machines(
    p: &CreatePlan,
    provider: &dyn Provider,
    plan: &ClusterPlan,
    progress: &dyn Progress,
    stages: &mut Stages,
) -> Result<Vec<Machine>> {
    let t = Instant::now();
    let mut record = prepare_machines(p, provider, plan).await?;
    stages.time("preflight", t);

    let t = Instant::now();
    let machines = match provider.create(plan, progress).await {
        Ok(m) => m,
        Err(e) => {
            let e = anyhow::anyhow!("creating machines failed: {e}");
            if p.args.rollback_on_failure {
                return Err(roll_back(provider, p, e).await);
            }
            bail!(
                "{e}; run the same create again to resume, or `swarmup destroy {}`",
                p.name
            );
        }
    };
    stages.time("machines", t);
    keep_machines(p, &mut record, &machines)?;
    Ok(machines)
}

/// The part of stage "machines" before the provider makes anything: its preflight (a
/// refusal leaves no trace of a new cluster), then the record, so `destroy` can find
/// whatever comes next. For commands that have the provider make several clusters at once.
pub async fn prepare_machines(
    p: &CreatePlan,
    provider: &dyn Provider,
    plan: &ClusterPlan,
) -> Result<ClusterRecord> {
    if let Err(e) = provider.preflight(plan).await {
        if p.new_cluster() {
            p.dir.remove()?;
        }
        return Err(e.into());
    }
    write_record(p)
}

/// The record, written before any machine exists, once the preflight has passed
/// (a workshop's preflight covers all its clusters at once: `Provider::preflight_many`).
pub fn write_record(p: &CreatePlan) -> Result<ClusterRecord> {
    let record = record_of(p);
    p.dir.save(&record)?;
    Ok(record)
}

/// The part after: the record keeps the machines as the provider reported them.
pub fn keep_machines(
    p: &CreatePlan,
    record: &mut ClusterRecord,
    machines: &[Machine],
) -> Result<()> {
    record.last_seen = machines.to_vec();
    p.dir.save(record)
}

/// Stage "ssh config": the cluster's `known_hosts` and the managed `~/.ssh/config` block.
pub async fn ssh_config(
    p: &CreatePlan,
    plan: &ClusterPlan,
    machines: &[Machine],
) -> Result<SshOptions> {
    let entries = keys::known_hosts_entries(plan, machines)?;
    keys::write_known_hosts(&p.dir.known_hosts(), &entries).await?;
    let ssh = ssh_options(&p.dir);
    let block = ssh_config::render_ssh_config_block(&p.name, machines, &ssh)?;
    ssh_config::write_ssh_config_block(&ssh_config_path()?, &p.name, &block).await?;
    Ok(ssh)
}

/// Who besides the nodes may reach the Docker API on 2377 (every call needs a client
/// certificate from the cluster's CA): the `--ssh-from` networks, or by default what the
/// provider says: this host's own address towards the machines, or anywhere when they
/// see this host through NAT.
pub fn control_sources(
    ssh_from: &[String],
    default: DefaultAdminSources,
    this_host: Option<std::net::IpAddr>,
) -> Vec<String> {
    if !ssh_from.is_empty() {
        return ssh_from.to_vec();
    }
    match default {
        DefaultAdminSources::Anywhere => vec!["0.0.0.0/0".into(), "::/0".into()],
        DefaultAdminSources::ThisHost => {
            this_host.map(|ip| format!("{ip}/32")).into_iter().collect()
        }
    }
}

/// Stage "bootstrap": Docker, the firewall, swarm-node and the swarm on every machine
/// (with `--engine docker`, Docker's own swarm instead of swarm-node: `binary` is `None`).
pub async fn bootstrap(
    p: &CreatePlan,
    provider: &dyn Provider,
    machines: &[Machine],
    ssh: &SshOptions,
    binary: Option<PathBuf>,
    progress: &dyn Progress,
) -> Result<BootstrapReport> {
    // Docker's own swarm mode installs no swarm-node binary.
    let source = binary.map_or_else(
        || BinarySource::Bytes(Vec::new().into()),
        BinarySource::Path,
    );
    let mut options = BootstrapOptions::new(source, ssh.clone());
    options.engine = p.engine;
    options.firewall.ssh_allowed = p
        .args
        .ssh_from
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("invalid --ssh-from: {e}"))?;
    let control = control_sources(
        &p.args.ssh_from,
        provider.default_admin_sources(),
        admin_source(machines),
    );
    options.firewall.control_allowed = control
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("invalid admin address: {e}"))?;
    if p.engine == Engine::Docker {
        // Docker's 2377 serves only its nodes (the administrator's docker CLI comes over
        // SSH), so it stays shut to everyone else.
        options.firewall.control_allowed.clear();
    }
    match swarmup_bootstrap::bootstrap_cluster(machines, &options, progress).await {
        Ok(r) => Ok(r),
        Err(e) if p.args.rollback_on_failure => {
            let e = anyhow::Error::new(e).context("the swarm did not come up");
            Err(roll_back(provider, p, e).await)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the machines exist but the swarm is not ready: run `swarmup create --name {}` again to resume, or `swarmup destroy {}`",
            p.name, p.name
        ))),
    }
}

/// Stage "credentials": the administrator's client certificate, from a manager.
pub async fn credentials(p: &CreatePlan, machines: &[Machine], ssh: &SshOptions) -> Result<()> {
    let first_manager = machines
        .iter()
        .find(|m| m.role == Role::Manager)
        .context("the cluster has no manager")?;
    let cert = swarmup_bootstrap::fetch_client_cert(first_manager, ssh).await?;
    crate::client_cert::write_bundle(
        &p.dir.client_dir(),
        &cert.ca_pem,
        &cert.cert_pem,
        &cert.key_pem,
    )
}

/// What a finished create tells the user.
#[derive(Debug)]
pub struct Created {
    pub machines: Vec<Machine>,
    pub report: BootstrapReport,
    pub registry: Option<String>,
    pub api_calls: Option<swarmup_providers::ApiCallCount>,
    pub stages: Stages,
    pub elapsed: Duration,
}

/// The whole pipeline; `None` for a dry run, which only prints the plan.
pub async fn run(out: &Output, args: CreateArgs) -> Result<Option<(CreatePlan, Created)>> {
    let started = Instant::now();
    let mut stages = Stages::default();
    let p = plan(validate(merge_file(args)?)?);
    let provider = providers::build_for_create(&p.choice)?;
    if p.args.dry_run {
        dry_run(out, provider.as_ref(), &p.name, &p.machines).await?;
        return Ok(None);
    }
    let binary = match p.engine {
        Engine::SwarmNode => Some(swarm_node_binary(p.args.swarm_node_binary.as_deref())?),
        Engine::Docker => None,
    };

    let t = Instant::now();
    let cluster_plan = keys(&p).await?;
    stages.time("keys", t);

    let progress = out.progress();
    let machines = machines(
        &p,
        provider.as_ref(),
        &cluster_plan,
        progress.as_ref(),
        &mut stages,
    )
    .await?;

    let t = Instant::now();
    let ssh = ssh_config(&p, &cluster_plan, &machines).await?;
    stages.time("ssh_config", t);

    let t = Instant::now();
    let report = bootstrap(
        &p,
        provider.as_ref(),
        &machines,
        &ssh,
        binary,
        progress.as_ref(),
    )
    .await;
    drop(progress);
    let report = report?;
    stages.time("bootstrap", t);

    // Docker's swarm is reached over SSH: there is no client certificate to fetch.
    if p.engine == Engine::SwarmNode {
        let t = Instant::now();
        credentials(&p, &machines, &ssh).await?;
        stages.time("client_cert", t);
    }
    stages.0.push(("total", started.elapsed()));
    let registry = provider.registry(&p.name).await?;
    let created = Created {
        machines,
        report,
        registry,
        api_calls: provider.api_call_count(),
        stages,
        elapsed: started.elapsed(),
    };
    Ok(Some((p, created)))
}

/// `swarmup create`.
pub async fn create(out: &Output, args: CreateArgs) -> Result<()> {
    if let Some((p, created)) = run(out, args).await? {
        report(out, &p, &created);
    }
    Ok(())
}

/// Stage "report": the nodes and what to do next, or JSON for scripts.
pub fn report(out: &Output, p: &CreatePlan, c: &Created) {
    let address = |machine: &str| {
        c.machines
            .iter()
            .find(|m| m.name == machine)
            .map(|m| m.private_addr.to_string())
    };
    if out.json() {
        let nodes: Vec<_> = c
            .report
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.machine, "node_id": n.node_id, "role": n.swarm_role,
                    "status": n.status, "manager_status": n.manager_status.map_or("", |m| m.as_str()),
                    "address": address(&n.machine),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "cluster": p.name, "provider": p.args.provider_name(), "engine": p.engine, "cluster_id": c.report.cluster_id,
                "nodes": nodes, "timings": c.stages.json(), "registry": c.registry,
                "api_calls": c.api_calls,
            })
        );
        return;
    }
    let rows: Vec<Vec<String>> = c
        .report
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.machine.clone(),
                address(&n.machine).unwrap_or_default(),
                n.swarm_role.to_string(),
                n.status.as_str().to_string(),
                n.manager_status.map_or("", |m| m.as_str()).to_string(),
            ]
        })
        .collect();
    let name = &p.name;
    if out.quiet {
        // `create -q` prints the cluster's name, for `eval $(swarmup env $(swarmup create -q))`.
        println!("{name}");
        return;
    }
    let engine = match p.engine {
        Engine::SwarmNode => String::new(),
        Engine::Docker => ", Docker's own swarm mode".to_string(),
    };
    println!(
        "Cluster {name} is ready ({} nodes, {} managers{engine}) in {:.1}s:\n",
        p.nodes,
        p.managers,
        c.elapsed.as_secs_f64()
    );
    println!(
        "{}\n",
        table(
            &["NODE", "ADDRESS", "ROLE", "STATUS", "MANAGER STATUS"],
            &rows
        )
    );
    if let Some(registry) = &c.registry {
        println!("Lab registry: {registry} (every node trusts it)\n");
    }
    println!("Next:");
    println!("  eval $(swarmup env {name})     # point the docker CLI at the cluster");
    println!("  docker node ls");
    match &c.registry {
        Some(r) => {
            println!("  docker build -t {r}/app:1 . && docker push {r}/app:1");
            println!("  docker service create --name web --replicas 3 {r}/app:1");
        }
        None => println!("  docker service create --name web --replicas 3 nginx"),
    }
    println!("  ssh {name}-node1               # plain ssh works: ~/.ssh/config has the cluster");
    println!("  swarmup destroy {name}");
}

pub fn swarm_node_binary(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!(
            "swarm-node binary {} not found: check --swarm-node-binary",
            p.display()
        );
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("swarm-node")))
        .filter(|p| p.is_file());
    beside.context(
        "cannot find the swarm-node binary next to swarmup: install both together, or pass --swarm-node-binary PATH",
    )
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Timings of one run, by stage, for `--output json` and the benchmark.
#[derive(Debug, Default)]
pub struct Stages(Vec<(&'static str, Duration)>);

impl Stages {
    pub fn time(&mut self, name: &'static str, since: Instant) {
        self.0.push((name, since.elapsed()));
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, d)| (k.to_string(), serde_json::json!(d.as_secs_f64())))
                .collect(),
        )
    }
}

/// `--rollback-on-failure`: removes what the failed run made (a new cluster's local record
/// and SSH config included) and returns the error that caused it, saying what went.
async fn roll_back(provider: &dyn Provider, p: &CreatePlan, cause: anyhow::Error) -> anyhow::Error {
    let (dir, cluster, new_cluster) = (&p.dir, p.name.as_str(), p.new_cluster());
    match provider.rollback_run(cluster, new_cluster).await {
        Ok(report) => {
            if new_cluster {
                if let Ok(path) = ssh_config_path() {
                    let _ = ssh_config::remove_ssh_config_block(&path, cluster).await;
                }
                let _ = dir.remove();
            }
            let removed = if report.removed.is_empty() {
                "nothing had been made".to_string()
            } else {
                format!("removed {}", report.removed.join(", "))
            };
            anyhow::anyhow!("{cause:#}; --rollback-on-failure {removed}")
        }
        Err(e) => anyhow::anyhow!(
            "{cause:#}; the rollback failed too ({e:#}): run `swarmup destroy {cluster}` to remove what is left"
        ),
    }
}

/// `create --dry-run`: what would be made and what it costs. Writes nothing, not even
/// keys: the plan carries a throwaway host key, and the login key unless the cluster
/// already has one.
async fn dry_run(
    out: &Output,
    provider: &dyn Provider,
    cluster: &str,
    planned: &[PlannedMachine],
) -> Result<()> {
    let shown = dry_run_plan(provider, cluster, planned).await?;
    if out.json() {
        println!("{}", dry_run_json(&shown));
    } else {
        println!("{}", dry_run_text(&format!("cluster {cluster}"), &shown));
        for w in &shown.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

/// What the provider says of a plan for `cluster`, reading only (see [`dry_run`]).
pub async fn dry_run_plan(
    provider: &dyn Provider,
    cluster: &str,
    planned: &[PlannedMachine],
) -> Result<DryRun> {
    let plan = throwaway_plan(cluster, planned)?;
    Ok(provider.dry_run(&plan).await?)
}

/// A plan for `cluster` to show, not to create: the cluster's login key when it has one,
/// a throwaway key otherwise, and throwaway host keys.
pub fn throwaway_plan(cluster: &str, planned: &[PlannedMachine]) -> Result<ClusterPlan> {
    let dir = ClusterDir::of(cluster)?;
    let throwaway = keys::generate_host_key(&format!("swarmup-{cluster}"))?;
    let mut pub_path = dir.login_key().into_os_string();
    pub_path.push(".pub");
    let login = std::fs::read_to_string(PathBuf::from(pub_path))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| throwaway.public_openssh.clone());
    let plan = ClusterPlan {
        cluster: cluster.to_string(),
        machines: planned
            .iter()
            .map(|m| MachinePlan {
                name: m.name.clone(),
                role: m.role,
                host_key: throwaway.clone(),
            })
            .collect(),
        login_public_key: login,
        tags: Vec::new(),
    };
    Ok(plan)
}

pub fn dry_run_json(shown: &DryRun) -> serde_json::Value {
    let machines: Vec<_> = shown
        .machines
        .iter()
        .map(|m| {
            let mut json = m.json.clone();
            json.insert("name".into(), serde_json::json!(m.name));
            json.insert("role".into(), serde_json::json!(m.role));
            serde_json::Value::Object(json)
        })
        .collect();
    serde_json::json!({"dry_run": true, "plan": shown.plan, "machines": machines})
}

pub fn dry_run_text(what: &str, shown: &DryRun) -> String {
    let mut headers = vec!["MACHINE", "ROLE"];
    headers.extend(shown.columns.iter().map(String::as_str));
    let mut rows: Vec<Vec<String>> = shown
        .machines
        .iter()
        .map(|m| {
            let mut row = vec![m.name.clone(), m.role.to_string()];
            row.extend(m.cells.iter().cloned());
            row
        })
        .collect();
    if let Some(total) = &shown.total {
        rows.push(
            std::iter::once("TOTAL".to_string())
                .chain(total.iter().cloned())
                .collect(),
        );
    }
    let mut text = format!(
        "Plan for {what} on {} (dry run: nothing created):\n\n{}\n",
        shown.title,
        table(&headers, &rows)
    );
    for (label, value) in &shown.details {
        text.push_str(&format!("\n{:<15} {value}", format!("{label}:")));
    }
    text
}

/// The address this host uses to reach the machines (no packet is sent).
fn admin_source(machines: &[Machine]) -> Option<std::net::IpAddr> {
    let target =
        std::net::SocketAddr::new(machines.first()?.ssh.host, swarmup_providers::CONTROL_PORT);
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> CreateArgs {
        use clap::Parser;
        let cli = crate::Cli::parse_from(["swarmup", "create"].iter().chain(argv));
        let crate::Command::Create(args) = cli.command else {
            panic!("not create");
        };
        args
    }

    fn file(yaml: &str) -> ClusterFile {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn a_flag_the_user_gave_wins_over_the_file_even_when_it_equals_the_default() {
        let yaml = "name: web\nprovider: digitalocean\nnodes: 3\nregion: fra1\n";
        let merged = merge(
            args(&["--provider", "lab", "--name", "swarm"]),
            file(yaml),
            None,
        );
        assert_eq!(merged.provider_name(), "lab");
        assert_eq!(merged.cluster_name(), "swarm");
        assert_eq!(merged.nodes, Some(3));
        assert_eq!(merged.region.as_deref(), Some("fra1"));
    }

    #[test]
    fn the_file_fills_what_no_flag_set_and_defaults_come_last() {
        let merged = merge(
            args(&["--nodes", "5"]),
            file("name: web\nprovider: digitalocean\nnodes: 3\nssh_key: ~/k.pub\n"),
            Some(PathBuf::from("/home/u")),
        );
        assert_eq!(merged.cluster_name(), "web");
        assert_eq!(merged.provider_name(), "digitalocean");
        assert_eq!(merged.nodes, Some(5));
        assert_eq!(merged.ssh_key, Some(PathBuf::from("/home/u/k.pub")));
        let bare = merge(args(&[]), ClusterFile::default(), None);
        assert_eq!(bare.cluster_name(), DEFAULT_NAME);
        assert_eq!(bare.provider_name(), DEFAULT_PROVIDER);
    }

    #[test]
    fn counts_are_checked_against_the_earlier_run() {
        assert!(check_counts(None, None, "lab", None)
            .unwrap_err()
            .to_string()
            .contains("--nodes is required"));
        assert!(check_counts(Some(0), None, "lab", None).is_err());
        assert!(check_counts(Some(101), None, "lab", None).is_err());
        assert_eq!(check_counts(Some(4), None, "lab", None).unwrap(), (4, 3));
        let earlier = ClusterRecord {
            name: "c".into(),
            provider: "lab".into(),
            created_at: String::new(),
            machines: plan_machines("c", 3, 1),
            last_seen: vec![],
            provider_options: BTreeMap::new(),
            engine: Engine::SwarmNode,
        };
        assert_eq!(
            check_counts(None, None, "lab", Some(&earlier)).unwrap(),
            (3, 1)
        );
        assert_eq!(
            check_counts(Some(5), None, "lab", Some(&earlier)).unwrap(),
            (5, 1)
        );
        for (nodes, managers, provider, want) in [
            (Some(2), None, "lab", "never removes nodes"),
            (Some(3), Some(3), "lab", "change roles"),
            (Some(3), None, "digitalocean", "is taken by a lab cluster"),
        ] {
            let err = check_counts(nodes, managers, provider, Some(&earlier))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn the_engine_is_asked_for_or_kept_and_never_switched() {
        assert_eq!(check_engine(None, None).unwrap(), Engine::SwarmNode);
        assert_eq!(
            check_engine(Some(Engine::Docker), None).unwrap(),
            Engine::Docker
        );
        let mut earlier = ClusterRecord {
            name: "c".into(),
            provider: "lab".into(),
            created_at: String::new(),
            machines: plan_machines("c", 3, 3),
            last_seen: vec![],
            provider_options: BTreeMap::new(),
            engine: Engine::Docker,
        };
        assert_eq!(check_engine(None, Some(&earlier)).unwrap(), Engine::Docker);
        assert_eq!(
            check_engine(Some(Engine::Docker), Some(&earlier)).unwrap(),
            Engine::Docker
        );
        let err = check_engine(Some(Engine::SwarmNode), Some(&earlier))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot switch"), "{err}");
        earlier.engine = Engine::SwarmNode;
        assert!(check_engine(Some(Engine::Docker), Some(&earlier)).is_err());
        let merged = merge(args(&[]), file("engine: docker\n"), None);
        assert_eq!(merged.engine, Some(Engine::Docker));
        let flag_wins = merge(
            args(&["--engine", "swarm-node"]),
            file("engine: docker\n"),
            None,
        );
        assert_eq!(flag_wins.engine, Some(Engine::SwarmNode));
    }

    #[test]
    fn managers_come_first_in_the_plan() {
        let planned = plan_machines("c", 3, 1);
        let names: Vec<_> = planned.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["c-node1", "c-node2", "c-node3"]);
        assert_eq!(planned[0].role, Role::Manager);
        assert_eq!(planned[2].role, Role::Worker);
    }

    #[test]
    fn the_docker_api_opens_to_ssh_from_else_to_what_the_provider_says() {
        let ip = Some("192.0.2.9".parse().unwrap());
        assert_eq!(
            control_sources(&["10.0.0.0/8".into()], DefaultAdminSources::Anywhere, ip),
            ["10.0.0.0/8"]
        );
        assert_eq!(
            control_sources(&[], DefaultAdminSources::ThisHost, ip),
            ["192.0.2.9/32"]
        );
        assert!(control_sources(&[], DefaultAdminSources::ThisHost, None).is_empty());
        assert_eq!(
            control_sources(&[], DefaultAdminSources::Anywhere, ip),
            ["0.0.0.0/0", "::/0"]
        );
    }

    fn plan(n: usize) -> ClusterPlan {
        let key = keys::generate_host_key("t").unwrap();
        ClusterPlan {
            cluster: "c".into(),
            machines: (1..=n)
                .map(|i| MachinePlan {
                    name: format!("c-node{i}"),
                    role: if i == 1 { Role::Manager } else { Role::Worker },
                    host_key: key.clone(),
                })
                .collect(),
            login_public_key: key.public_openssh.clone(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn a_plain_dry_run_shows_names_and_roles() {
        let shown = DryRun::plain("lab", &plan(2));
        let text = dry_run_text("cluster c", &shown);
        assert!(
            text.starts_with("Plan for cluster c on lab (dry run: nothing created):\n\nMACHINE"),
            "{text}"
        );
        assert!(text.contains("c-node2   worker"), "{text}");
        let json = dry_run_json(&shown);
        assert_eq!(json["dry_run"], true);
        assert!(json["plan"].is_null());
        assert_eq!(json["machines"][0]["name"], "c-node1");
        assert_eq!(json["machines"][0]["role"], "manager");
    }

    #[test]
    fn a_provider_dry_run_adds_columns_a_total_and_details() {
        let mut shown = DryRun::plain("Cloud", &plan(1));
        shown.columns = vec!["PER MONTH".into()];
        shown.machines[0].cells = vec!["$6.00".into()];
        shown.machines[0]
            .json
            .insert("price_monthly".into(), serde_json::json!(6.0));
        shown.total = Some(vec![String::new(), "$6.00".into()]);
        shown.details = vec![("image".into(), "debian-12-x64".into())];
        let text = dry_run_text("cluster c", &shown);
        assert!(text.contains("MACHINE   ROLE      PER MONTH"), "{text}");
        assert!(text.contains("TOTAL"), "{text}");
        assert!(
            text.ends_with("\n\nimage:          debian-12-x64"),
            "{text}"
        );
        assert_eq!(dry_run_json(&shown)["machines"][0]["price_monthly"], 6.0);
    }

    #[test]
    fn manager_counts_follow_docker_advice() {
        assert_eq!(resolve_managers(1, None).unwrap(), 1);
        assert_eq!(resolve_managers(2, None).unwrap(), 1);
        assert_eq!(resolve_managers(3, None).unwrap(), 3);
        assert_eq!(resolve_managers(10, None).unwrap(), 3);
        assert!(resolve_managers(5, Some(2))
            .unwrap_err()
            .to_string()
            .contains("even"));
        assert!(resolve_managers(20, Some(9))
            .unwrap_err()
            .to_string()
            .contains("too many"));
        assert!(resolve_managers(2, Some(3))
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(resolve_managers(2, Some(0)).is_err());
    }
}
