//! The lifecycle verbs: ls, destroy, ssh, env, stop/start, image load (`create` has its
//! own module, `create.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use swarmup_bootstrap::docker_swarm::Engine;
use swarmup_bootstrap::{ssh_config, SshOptions};
use swarmup_providers::{Machine, PowerState, Provider, Role};

use crate::env;
use crate::output::{table, Output};
use crate::providers::{self, ProviderChoice};
use crate::records::{self, ClusterDir, ClusterRecord};

/// The managed SSH config file: `~/.ssh/config` unless `SWARMUP_SSH_CONFIG` says otherwise.
pub fn ssh_config_path() -> Result<PathBuf> {
    if let Some(p) = env::path(env::SWARMUP_SSH_CONFIG) {
        return Ok(p);
    }
    ssh_config::default_ssh_config_path().context("cannot find ~/.ssh/config: set HOME")
}

pub fn ssh_options(dir: &ClusterDir) -> SshOptions {
    let mut options = SshOptions::new(dir.login_key(), dir.known_hosts());
    options.config_file = env::path(env::SWARMUP_SSH_CONFIG);
    options
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
    // Clusters this machine has no record of that a provider can see (DigitalOcean's
    // tags, for one).
    all.extend(providers::adopt_unrecorded(&all).await);
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
    // A cluster made elsewhere may be found by its provider (DigitalOcean's tags).
    if !dir.exists() && !providers::adopt(name).await? {
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
    let report = providers::destroy(out, provider.as_ref(), &dir, &record).await?;
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
    if record.engine == Engine::Docker {
        let lines = docker_ssh_env(&manager.name);
        if out.json() {
            let map: serde_json::Map<String, serde_json::Value> = lines
                .set
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone().into()))
                .collect();
            println!("{}", serde_json::Value::Object(map));
        } else {
            print!("{}", lines.shell(&record.name));
        }
        return Ok(());
    }
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

/// What `swarmup env` prints for a cluster on Docker's own swarm mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEnv {
    pub set: Vec<(&'static str, String)>,
    /// Left over from a swarm-node cluster's `eval $(swarmup env)`, they would send the
    /// docker CLI's TLS settings to an SSH host.
    pub unset: Vec<&'static str>,
}

impl SshEnv {
    /// The lines for `eval $(swarmup env NAME)`.
    pub fn shell(&self, cluster: &str) -> String {
        let mut text = String::new();
        for (k, v) in &self.set {
            text.push_str(&format!("export {k}={v}\n"));
        }
        if !self.unset.is_empty() {
            text.push_str(&format!("unset {}\n", self.unset.join(" ")));
        }
        text.push_str("# Run this command to configure your shell:\n");
        text.push_str(&format!("# eval $(swarmup env {cluster})\n"));
        text
    }
}

/// The docker CLI reaches Docker's own swarm through SSH to a manager, by its name in the
/// managed block of `~/.ssh/config` (which carries the cluster's key and pinned host
/// key): no TLS variables, the SSH login is the credential.
pub fn docker_ssh_env(manager: &str) -> SshEnv {
    SshEnv {
        set: vec![("DOCKER_HOST", format!("ssh://{manager}"))],
        unset: vec!["DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"],
    }
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
    fn docker_engine_env_is_an_ssh_host_without_tls() {
        let env = docker_ssh_env("c-node1");
        assert_eq!(
            env.shell("c"),
            "export DOCKER_HOST=ssh://c-node1\n\
             unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH\n\
             # Run this command to configure your shell:\n\
             # eval $(swarmup env c)\n"
        );
        assert_eq!(env.set, vec![("DOCKER_HOST", "ssh://c-node1".to_string())]);
    }
}
