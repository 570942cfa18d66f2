//! The lifecycle verbs: create, ls, destroy, ssh, env, stop/start, image load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use swarmup_bootstrap::{keys, ssh_config, BinarySource, BootstrapOptions, SshOptions};
use swarmup_providers::{ClusterPlan, Machine, MachinePlan, PowerState, Provider, Role};

use crate::output::{table, Output};
use crate::providers::{self, ProviderChoice};
use crate::records::{self, ClusterDir, ClusterRecord, PlannedMachine};
use crate::CreateArgs;

/// Docker advises at most seven managers.
pub const MAX_MANAGERS: u32 = 7;

/// The managed SSH config file: `~/.ssh/config` unless `SWARMUP_SSH_CONFIG` says otherwise.
pub fn ssh_config_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SWARMUP_SSH_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    ssh_config::default_ssh_config_path().context("cannot find ~/.ssh/config: set HOME")
}

pub fn ssh_options(dir: &ClusterDir) -> SshOptions {
    let mut options = SshOptions::new(dir.login_key(), dir.known_hosts());
    options.config_file = std::env::var_os("SWARMUP_SSH_CONFIG").map(PathBuf::from);
    options
}

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
}

fn merge_file(mut args: CreateArgs) -> Result<CreateArgs> {
    let Some(path) = args.file.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read cluster file {}", path.display()))?;
    let file: ClusterFile = serde_norway::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid cluster file {}: {e}", path.display()))?;
    // Flags win over the file; the file wins over defaults.
    if let Some(n) = file.name {
        if args.name == "swarm" {
            args.name = n;
        }
    }
    if let Some(p) = file.provider {
        if args.provider == "lab" {
            args.provider = p;
        }
    }
    args.nodes = args.nodes.or(file.nodes);
    args.managers = args.managers.or(file.managers);
    args.region = args.region.or(file.region);
    args.size = args.size.or(file.size);
    args.image = args.image.or(file.image);
    if args.ssh_from.is_empty() {
        args.ssh_from = file.ssh_from;
    }
    args.ssh_key = args.ssh_key.or(file.ssh_key.map(|p| {
        match (p.strip_prefix("~"), std::env::var_os("HOME")) {
            (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => p,
        }
    }));
    Ok(args)
}

fn swarm_node_binary(flag: Option<&Path>) -> Result<PathBuf> {
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
struct Stages(Vec<(&'static str, Duration)>);

impl Stages {
    fn time(&mut self, name: &'static str, since: Instant) {
        self.0.push((name, since.elapsed()));
    }
    fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, d)| (k.to_string(), serde_json::json!(d.as_secs_f64())))
                .collect(),
        )
    }
}

pub async fn create(out: &Output, args: CreateArgs) -> Result<()> {
    let started = Instant::now();
    let mut stages = Stages::default();
    let args = merge_file(args)?;
    records::validate_name(&args.name)?;
    providers::check_name(&args.provider)?;
    let dir = ClusterDir::of(&args.name)?;
    let existing = if dir.exists() {
        Some(dir.load()?)
    } else {
        None
    };
    let nodes = match (args.nodes, &existing) {
        (Some(n), _) => n,
        (None, Some(r)) => r.machines.len() as u32,
        (None, None) => bail!("--nodes is required: how many machines, for example --nodes 3"),
    };
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if nodes > 100 {
        bail!("--nodes {nodes} is more than swarmup creates at once (100): create fewer nodes");
    }
    let managers = match (&existing, args.managers) {
        (Some(r), None) => r.managers() as u32,
        _ => resolve_managers(nodes, args.managers)?,
    };
    if let Some(r) = &existing {
        if r.provider != args.provider {
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
    let new_cluster = existing.is_none();
    let choice = ProviderChoice::for_create(&args, existing.as_ref());
    let built = providers::build_for_create(&choice)?;
    let provider = built.provider.clone();

    let planned: Vec<PlannedMachine> = (1..=nodes)
        .map(|i| PlannedMachine {
            name: format!("{}-node{i}", args.name),
            role: if i <= managers {
                Role::Manager
            } else {
                Role::Worker
            },
        })
        .collect();
    if args.dry_run {
        if let Some(d) = &built.digitalocean {
            return crate::digitalocean::dry_run(out, d, &args.name, &planned).await;
        }
        let rows: Vec<Vec<String>> = planned
            .iter()
            .map(|m| vec![m.name.clone(), m.role.to_string()])
            .collect();
        out.say(&format!(
            "Plan for cluster {} on {} (dry run: nothing created):",
            args.name, args.provider
        ));
        out.say(&table(&["MACHINE", "ROLE"], &rows));
        return Ok(());
    }
    let binary = swarm_node_binary(args.swarm_node_binary.as_deref())?;

    // Keys first: they are pinned into the machines as they are created.
    let t = Instant::now();
    let login = keys::ensure_login_key(&dir.login_key(), &format!("swarmup-{}", args.name)).await?;
    let mut host_keys = dir.load_host_keys()?;
    for m in &planned {
        if !host_keys.contains_key(&m.name) {
            host_keys.insert(m.name.clone(), keys::generate_host_key(&m.name)?);
        }
    }
    dir.save_host_keys(&host_keys)?;
    let plan = ClusterPlan {
        cluster: args.name.clone(),
        machines: planned
            .iter()
            .map(|m| MachinePlan {
                name: m.name.clone(),
                role: m.role,
                host_key: host_keys[&m.name].clone(),
            })
            .collect(),
        login_public_key: login.public_openssh.clone(),
    };
    stages.time("keys", t);

    let t = Instant::now();
    if let Err(e) = provider.preflight(&plan).await {
        // Refused before anything was made: a new cluster leaves no local trace either.
        if new_cluster {
            dir.remove()?;
        }
        return Err(e.into());
    }
    stages.time("preflight", t);

    // The record exists before any machine does, so `destroy` can always find them.
    let mut record = existing.unwrap_or(ClusterRecord {
        name: args.name.clone(),
        provider: args.provider.clone(),
        created_at: now(),
        machines: vec![],
        last_seen: vec![],
        provider_options: BTreeMap::new(),
    });
    record.machines = planned.clone();
    // `swarmup firewall sync --publish-from` keeps its sources in the same map.
    let publish_from = record
        .provider_options
        .remove(crate::firewall::OPT_PUBLISH_FROM);
    record.provider_options = choice.recorded();
    if let Some(v) = publish_from {
        record
            .provider_options
            .insert(crate::firewall::OPT_PUBLISH_FROM.to_string(), v);
    }
    dir.save(&record)?;

    let progress = out.progress();
    let t = Instant::now();
    let machines = match provider.create(&plan, progress.as_ref()).await {
        Ok(m) => m,
        Err(e) => {
            let e = anyhow::anyhow!("creating machines failed: {e}");
            if args.rollback_on_failure {
                return Err(roll_back(&built, &dir, &args.name, new_cluster, e).await);
            }
            bail!(
                "{e}; run the same create again to resume, or `swarmup destroy {}`",
                args.name
            );
        }
    };
    stages.time("machines", t);
    record.last_seen = machines.clone();
    dir.save(&record)?;

    let t = Instant::now();
    let entries = keys::known_hosts_entries(&plan, &machines)?;
    keys::write_known_hosts(&dir.known_hosts(), &entries).await?;
    let ssh = ssh_options(&dir);
    let block = ssh_config::render_ssh_config_block(&args.name, &machines, &ssh)?;
    ssh_config::write_ssh_config_block(&ssh_config_path()?, &args.name, &block).await?;
    stages.time("ssh_config", t);

    let t = Instant::now();
    let mut options = BootstrapOptions::new(BinarySource::Path(binary), ssh.clone());
    options.firewall.ssh_allowed = args
        .ssh_from
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("invalid --ssh-from: {e}"))?;
    // The Docker API on 2377 is open to the cluster's nodes and to whoever administers it
    // (every call needs a client certificate from the cluster's CA): the --ssh-from
    // networks, or this host's own address towards the machines. Cloud machines see this
    // host through NAT at an address unknown here, so without --ssh-from they take the
    // API from anywhere, as their cloud firewall does.
    options.firewall.control_allowed =
        if options.firewall.ssh_allowed.is_empty() && built.digitalocean.is_some() {
            ["0.0.0.0/0", "::/0"]
                .iter()
                .map(|c| c.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("invalid admin address: {e}"))?
        } else if options.firewall.ssh_allowed.is_empty() {
            admin_source(&machines)
                .into_iter()
                .map(|ip| format!("{ip}/32").parse())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("invalid admin address: {e}"))?
        } else {
            options.firewall.ssh_allowed.clone()
        };
    let report = swarmup_bootstrap::bootstrap_cluster(&machines, &options, progress.as_ref()).await;
    drop(progress);
    let report = match report {
        Ok(r) => r,
        Err(e) if args.rollback_on_failure => {
            let e = anyhow::Error::new(e).context("the swarm did not come up");
            return Err(roll_back(&built, &dir, &args.name, new_cluster, e).await);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "the machines exist but the swarm is not ready: run `swarmup create --name {}` again to resume, or `swarmup destroy {}`",
                args.name, args.name
            )))
        }
    };
    stages.time("bootstrap", t);

    let t = Instant::now();
    let first_manager = machines
        .iter()
        .find(|m| m.role == Role::Manager)
        .context("the cluster has no manager")?;
    let cert = swarmup_bootstrap::fetch_client_cert(first_manager, &ssh).await?;
    crate::client_cert::write_bundle(
        &dir.client_dir(),
        &cert.ca_pem,
        &cert.cert_pem,
        &cert.key_pem,
    )?;
    stages.time("client_cert", t);
    stages.0.push(("total", started.elapsed()));
    let registry = provider.registry(&args.name).await?;

    if out.json() {
        let nodes: Vec<_> = report
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.machine, "node_id": n.node_id, "role": n.swarm_role,
                    "status": n.status, "manager_status": n.manager_status.map_or("", |m| m.as_str()),
                    "address": machines.iter().find(|m| m.name == n.machine).map(|m| m.private_addr.to_string()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "cluster": args.name, "provider": args.provider, "cluster_id": report.cluster_id,
                "nodes": nodes, "timings": stages.json(), "registry": registry,
                "api_calls": built.digitalocean.as_ref().map(|d| d.api_calls()),
            })
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|n| {
            let addr = machines
                .iter()
                .find(|m| m.name == n.machine)
                .map(|m| m.private_addr.to_string())
                .unwrap_or_default();
            vec![
                n.machine.clone(),
                addr,
                n.swarm_role.to_string(),
                n.status.as_str().to_string(),
                n.manager_status.map_or("", |m| m.as_str()).to_string(),
            ]
        })
        .collect();
    if out.quiet {
        // `create -q` prints the cluster's name, for `eval $(swarmup env $(swarmup create -q))`.
        println!("{}", args.name);
    } else {
        println!(
            "Cluster {} is ready ({} nodes, {} managers) in {:.1}s:\n",
            args.name,
            nodes,
            managers,
            started.elapsed().as_secs_f64()
        );
        println!(
            "{}\n",
            table(
                &["NODE", "ADDRESS", "ROLE", "STATUS", "MANAGER STATUS"],
                &rows
            )
        );
        if let Some(registry) = &registry {
            println!("Lab registry: {registry} (every node trusts it)\n");
        }
        println!("Next:");
        println!(
            "  eval $(swarmup env {})     # point the docker CLI at the cluster",
            args.name
        );
        println!("  docker node ls");
        match &registry {
            Some(r) => {
                println!("  docker build -t {r}/app:1 . && docker push {r}/app:1");
                println!("  docker service create --name web --replicas 3 {r}/app:1");
            }
            None => println!("  docker service create --name web --replicas 3 nginx"),
        }
        println!(
            "  ssh {}-node1               # plain ssh works: ~/.ssh/config has the cluster",
            args.name
        );
        println!("  swarmup destroy {}", args.name);
    }
    Ok(())
}

/// `--rollback-on-failure`: removes what the failed run made (a new cluster's local record
/// and SSH config included) and returns the error that caused it, saying what went.
async fn roll_back(
    built: &providers::Built,
    dir: &ClusterDir,
    cluster: &str,
    new_cluster: bool,
    cause: anyhow::Error,
) -> anyhow::Error {
    match built.rollback(cluster, new_cluster).await {
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

/// The address this host uses to reach the machines (no packet is sent).
fn admin_source(machines: &[Machine]) -> Option<std::net::IpAddr> {
    let target =
        std::net::SocketAddr::new(machines.first()?.ssh.host, swarmup_providers::CONTROL_PORT);
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect(target).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The cluster a cluster command means: the named one, or the only one there is.
pub fn pick_cluster(name: Option<&str>) -> Result<(ClusterDir, ClusterRecord)> {
    if let Some(n) = name {
        let dir = ClusterDir::of(n)?;
        if !dir.exists() {
            bail!("no cluster named {n}: see `swarmup ls`");
        }
        let r = dir.load()?;
        return Ok((dir, r));
    }
    let all = records::all()?;
    match all.len() {
        0 => bail!("there is no cluster yet: create one with `swarmup create --nodes 3`"),
        1 => {
            let r = all.into_iter().next().expect("one record");
            Ok((ClusterDir::of(&r.name)?, r))
        }
        _ => bail!(
            "there are {} clusters ({}): pick one with --cluster NAME or SWARMUP_CLUSTER",
            all.len(),
            all.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub async fn provider_of(record: &ClusterRecord) -> Result<Arc<dyn Provider>> {
    providers::build(&ProviderChoice {
        name: record.provider.clone(),
        ..Default::default()
    })
}

/// The machines a cluster verb (`env`, `node`, `service`, `firewall` reads) talks to:
/// the addresses recorded at create, so these verbs need no provider credentials (a
/// DigitalOcean token) and no cloud call; only lifecycle verbs ask the provider. A record
/// from before addresses were kept falls back to the provider.
pub async fn cluster_machines(record: &ClusterRecord) -> Result<Vec<Machine>> {
    if record.last_seen.is_empty() {
        return machines_of(record).await;
    }
    Ok(record.last_seen.clone())
}

/// The cluster's machines as the provider sees them now, falling back to the last known
/// ones when the provider cannot say.
pub async fn machines_of(record: &ClusterRecord) -> Result<Vec<Machine>> {
    let provider = provider_of(record).await?;
    match provider.list(&record.name).await {
        Ok(m) if !m.is_empty() => Ok(m),
        Ok(_) => Ok(record.last_seen.clone()),
        Err(e) if !record.last_seen.is_empty() => {
            tracing::warn!(error = %e, "provider cannot list machines; using the last known ones");
            Ok(record.last_seen.clone())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn ls(out: &Output) -> Result<()> {
    let mut all = records::all()?;
    // DigitalOcean clusters this machine has no record of, found by their tags.
    all.extend(crate::digitalocean::adopt_tagged(&all).await);
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for r in &all {
        let machines = machines_of(r).await.unwrap_or_default();
        let running = machines
            .iter()
            .filter(|m| m.power == PowerState::Running)
            .count();
        // The swarm's own count when it answers (a node removed with `docker node rm`
        // is not one any more); the record's when it does not.
        let (nodes, managers, ready) = match crate::api::node_counts(&r.name).await {
            Ok((n, m, ready)) => (n, m, Some(ready)),
            Err(e) => {
                tracing::debug!(cluster = %r.name, error = %e, "cluster not answering; counting from the record");
                (r.machines.len(), r.managers(), None)
            }
        };
        rows.push(vec![
            r.name.clone(),
            r.provider.clone(),
            nodes.to_string(),
            managers.to_string(),
            format!("{running}/{}", r.machines.len()),
            ready.map_or_else(|| "-".to_string(), |n| format!("{n}/{nodes}")),
        ]);
        json.push(serde_json::json!({
            "name": r.name, "provider": r.provider, "nodes": nodes,
            "managers": managers, "running": running, "ready": ready,
        }));
    }
    if out.json() {
        println!("{}", serde_json::Value::Array(json));
    } else if out.quiet {
        for r in &all {
            println!("{}", r.name);
        }
    } else {
        println!(
            "{}",
            table(
                &["NAME", "PROVIDER", "NODES", "MANAGERS", "RUNNING", "READY"],
                &rows
            )
        );
    }
    Ok(())
}

pub async fn destroy(out: &Output, name: &str, yes: bool) -> Result<()> {
    records::validate_name(name)?;
    let dir = ClusterDir::of(name)?;
    // A DigitalOcean cluster made elsewhere is found by its tags.
    if !dir.exists() && !crate::digitalocean::adopt(name).await? {
        bail!("no cluster named {name}: see `swarmup ls`");
    }
    let record = dir.load()?;
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            bail!("refusing to destroy {name} without --yes: no terminal to ask for confirmation");
        }
        print!(
            "Destroy cluster {name} and its {} machines? [y/N] ",
            record.machines.len()
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not destroyed");
        }
    }
    let started = Instant::now();
    let provider = provider_of(&record).await?;
    let report = provider.destroy(name).await?;
    ssh_config::remove_ssh_config_block(&ssh_config_path()?, name).await?;
    dir.remove()?;
    if out.json() {
        println!(
            "{}",
            serde_json::json!({"destroyed": name, "removed": report.removed, "seconds": started.elapsed().as_secs_f64()})
        );
    } else {
        for line in &report.removed {
            out.say(&format!("removed {line}"));
        }
        out.say(&format!(
            "Cluster {name} destroyed in {:.1}s.",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

fn find_machine<'a>(machines: &'a [Machine], cluster: &str, node: &str) -> Result<&'a Machine> {
    let full = if node.starts_with(&format!("{cluster}-")) {
        node.to_string()
    } else {
        format!("{cluster}-{node}")
    };
    machines
        .iter()
        .find(|m| m.name == full || m.name == node)
        .with_context(|| {
            format!(
                "no node {node} in cluster {cluster}: it has {}",
                machines
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

pub async fn ssh(name: &str, node: &str, command: &[String]) -> Result<()> {
    let (dir, record) = pick_cluster(Some(name))?;
    let machines = machines_of(&record).await?;
    let machine = find_machine(&machines, name, node)?;
    let argv =
        swarmup_bootstrap::ssh_argv(machine, &ssh_options(&dir), command.is_empty(), command);
    let status = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .await
        .context("cannot run ssh: install the OpenSSH client")?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(255));
    }
    Ok(())
}

pub async fn env(out: &Output, name: Option<&str>) -> Result<()> {
    let (dir, record) = pick_cluster(name)?;
    let machines = cluster_machines(&record).await?;
    let manager = machines
        .iter()
        .find(|m| m.role == Role::Manager && m.power == PowerState::Running)
        .or_else(|| machines.iter().find(|m| m.role == Role::Manager))
        .context("the cluster has no manager")?;
    let client = dir.client_dir();
    if !client.join("cert.pem").exists() {
        bail!(
            "cluster {} has no client certificate yet: run `swarmup create --name {}` to finish it",
            record.name,
            record.name
        );
    }
    // Renew the certificate the docker CLI is about to use if it is close to expiry.
    crate::client_cert::refresh_and_tell(&dir, &machines).await?;
    let host = format!(
        "tcp://{}",
        // The address swarmup reaches the machine on, public where there is one; the
        // manager's certificate names it (bootstrap passes --cert-san).
        std::net::SocketAddr::new(manager.ssh.host, swarmup_providers::CONTROL_PORT)
    );
    if out.json() {
        println!(
            "{}",
            serde_json::json!({"DOCKER_HOST": host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": client})
        );
    } else {
        println!("export DOCKER_HOST={host}");
        println!("export DOCKER_TLS_VERIFY=1");
        println!("export DOCKER_CERT_PATH={}", client.display());
        println!("# Run this command to configure your shell:");
        println!("# eval $(swarmup env {})", record.name);
    }
    Ok(())
}

pub async fn power(out: &Output, name: &str, nodes: &[String], on: bool) -> Result<()> {
    if nodes.is_empty() {
        bail!(
            "name the nodes to {}: swarmup {} {name} NODE...",
            if on { "start" } else { "stop" },
            if on { "start" } else { "stop" }
        );
    }
    let (dir, mut record) = pick_cluster(Some(name))?;
    let machines = machines_of(&record).await?;
    let provider = provider_of(&record).await?;
    let mut done = Vec::new();
    for node in nodes {
        let machine = find_machine(&machines, name, node)?;
        if on {
            provider.power_on(name, &machine.name).await?;
            out.say(&format!("{} started", machine.name));
        } else {
            provider.power_off(name, &machine.name).await?;
            out.say(&format!("{} stopped", machine.name));
        }
        done.push(serde_json::json!({
            "machine": machine.name, "power": if on { "on" } else { "off" },
        }));
        // Cluster verbs read the record: keep its power states true.
        let power = if on {
            PowerState::Running
        } else {
            PowerState::Off
        };
        for m in record
            .last_seen
            .iter_mut()
            .filter(|m| m.name == machine.name)
        {
            m.power = power;
        }
    }
    dir.save(&record)?;
    if out.json() {
        println!("{}", serde_json::Value::Array(done));
    }
    Ok(())
}

pub async fn image_load(out: &Output, name: &str, input: Option<PathBuf>) -> Result<()> {
    let (dir, record) = pick_cluster(Some(name))?;
    let archive = match &input {
        Some(p) => tokio::fs::read(p)
            .await
            .with_context(|| format!("cannot read image archive {}", p.display()))?,
        None => {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            tokio::io::stdin().read_to_end(&mut buf).await?;
            buf
        }
    };
    if archive.is_empty() {
        bail!("the image archive is empty: pass -i FILE or pipe `docker save IMAGE` into swarmup image load");
    }
    let machines: Vec<Machine> = machines_of(&record)
        .await?
        .into_iter()
        .filter(|m| m.power == PowerState::Running)
        .collect();
    let progress = out.progress();
    let loaded = swarmup_bootstrap::load_image(
        &machines,
        &archive,
        &ssh_options(&dir),
        Duration::from_secs(600),
        progress.as_ref(),
    )
    .await?;
    drop(progress);
    if out.json() {
        let json: Vec<_> = loaded
            .iter()
            .map(|l| serde_json::json!({"machine": l.machine, "images": l.images}))
            .collect();
        println!("{}", serde_json::Value::Array(json));
    }
    for l in loaded {
        out.say(&format!("{}: loaded {}", l.machine, l.images.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
