//! DigitalOcean in the CLI: the token from the user's config file, the droplets' user data,
//! the dry run's plan and price, and clusters found by their tags when this machine has no
//! record of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;
use swarmup_providers::digitalocean::DigitalOceanProvider;
use swarmup_providers::{ClusterPlan, MachinePlan, Provider, ProviderError};

use crate::output::{table, Output};
use crate::providers::{self, ProviderChoice};
use crate::records::{self, ClusterDir, ClusterRecord, PlannedMachine};

pub const PROVIDER: &str = "digitalocean";

/// `$XDG_CONFIG_HOME/swarmup/config.yaml`, else `~/.config/swarmup/config.yaml`.
pub fn config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|dir| dir.join("swarmup").join("config.yaml"))
}

/// The parts of the config file swarmup reads; anything else in it is left alone.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    digitalocean: Option<DoSection>,
}

#[derive(Debug, Default, Deserialize)]
struct DoSection {
    #[serde(default)]
    token: Option<String>,
}

/// `digitalocean: {token: ...}` from the config file, if there is one.
pub fn config_token() -> Result<Option<String>> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let file: ConfigFile = serde_norway::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "invalid config file {}: {e}: it takes digitalocean: {{token: ...}}",
            path.display()
        )
    })?;
    Ok(file
        .digitalocean
        .and_then(|d| d.token)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Cloud-init for the droplets of one create call: they all get the same text, which holds
/// every one's host key and installs the key of the droplet's own name.
pub fn user_data(plan: &ClusterPlan, machines: &[MachinePlan]) -> Result<String, ProviderError> {
    use swarmup_templates::{MachineHostKey, MachinesCloudInitContext};
    let ctx = MachinesCloudInitContext::new(
        plan.login_public_key.clone(),
        machines
            .iter()
            .map(|m| MachineHostKey {
                hostname: m.name.clone(),
                host_key_private: m.host_key.private_openssh.clone(),
                host_key_public: m.host_key.public_openssh.clone(),
            })
            .collect(),
    );
    swarmup_templates::cloud_init_for_machines(&ctx)
        .map_err(|e| ProviderError::InvalidRequest(format!("cloud-init: {e}")))
}

/// `create --dry-run`: what would be made and what it costs. Writes nothing, not even
/// keys: the plan is checked with a throwaway key unless the cluster already has one.
pub async fn dry_run(
    out: &Output,
    provider: &DigitalOceanProvider,
    cluster: &str,
    planned: &[PlannedMachine],
) -> Result<()> {
    let dir = ClusterDir::of(cluster)?;
    let throwaway = swarmup_bootstrap::keys::generate_host_key(&format!("swarmup-{cluster}"))?;
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
    };
    let p = provider.plan(&plan).await?;
    if out.json() {
        let machines: Vec<_> = planned
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "role": m.role, "region": p.region, "size": p.size,
                    "price_hourly": p.price_hourly, "price_monthly": p.price_monthly,
                    "exists": p.existing.contains(&m.name),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"dry_run": true, "plan": p, "machines": machines})
        );
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = planned
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.role.to_string(),
                p.region.clone(),
                p.size.clone(),
                format!("${:.5}", p.price_hourly),
                format!("${:.2}", p.price_monthly),
                if p.existing.contains(&m.name) {
                    "exists".into()
                } else {
                    "to create".into()
                },
            ]
        })
        .collect();
    rows.push(vec![
        "TOTAL".into(),
        String::new(),
        String::new(),
        String::new(),
        format!("${:.5}", p.total_hourly),
        format!("${:.2}", p.total_monthly),
        format!("{} to create", p.to_create.len()),
    ]);
    println!(
        "Plan for cluster {cluster} on DigitalOcean (dry run: nothing created):\n\n{}\n",
        table(
            &[
                "MACHINE",
                "ROLE",
                "REGION",
                "SIZE",
                "PER HOUR",
                "PER MONTH",
                "STATE"
            ],
            &rows
        )
    );
    println!("image:          {}", p.image);
    println!("ssh key:        {}", p.ssh_key);
    println!(
        "open from:      {} (ssh 22/tcp and the Docker API 2377/tcp)",
        p.ssh_from.join(", ")
    );
    println!(
        "account:        {} of {} droplets in use; {} create call(s)",
        p.droplets_in_account, p.droplet_limit, p.create_calls
    );
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// A record for a cluster found on DigitalOcean by its tags, from its droplets.
async fn rebuild(provider: &DigitalOceanProvider, name: &str) -> Result<ClusterRecord> {
    let mut machines = provider.list(name).await?;
    machines.sort_by(|a, b| a.name.cmp(&b.name));
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut provider_options = BTreeMap::new();
    provider_options.insert("found_by".to_string(), "tags".to_string());
    Ok(ClusterRecord {
        name: name.to_string(),
        provider: PROVIDER.to_string(),
        created_at,
        machines: machines
            .iter()
            .map(|m| PlannedMachine {
                name: m.name.clone(),
                role: m.role,
            })
            .collect(),
        last_seen: machines,
        provider_options,
    })
}

/// A provider for looking around, when a token is at hand (flag-less: environment or
/// config file); `None` without one.
fn lookout() -> Result<Option<std::sync::Arc<DigitalOceanProvider>>> {
    if providers::digitalocean_token(None)?.is_none() {
        return Ok(None);
    }
    providers::digitalocean_provider(&ProviderChoice {
        name: PROVIDER.to_string(),
        ..Default::default()
    })
    .map(Some)
}

/// Clusters on DigitalOcean that have no record here (made on another machine, or the
/// record was lost): their records are rebuilt from the droplets' tags and saved, so that
/// every other command finds them. Quiet without a token; a failing API only warns.
pub async fn adopt_tagged(known: &[ClusterRecord]) -> Vec<ClusterRecord> {
    let found = async {
        let Some(provider) = lookout()? else {
            return Ok(Vec::new());
        };
        let mut adopted = Vec::new();
        for name in provider.clusters().await? {
            if known.iter().any(|r| r.name == name) || records::validate_name(&name).is_err() {
                continue;
            }
            let record = rebuild(&provider, &name).await?;
            ClusterDir::of(&name)?.save(&record)?;
            adopted.push(record);
        }
        anyhow::Ok(adopted)
    };
    match found.await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warning: cannot look for DigitalOcean clusters: {e:#}");
            Vec::new()
        }
    }
}

/// For `destroy NAME` without a record: rebuilds it when DigitalOcean has the cluster.
/// Whether it did.
pub async fn adopt(name: &str) -> Result<bool> {
    let Some(provider) = lookout()? else {
        return Ok(false);
    };
    if !provider.clusters().await?.iter().any(|c| c == name) {
        return Ok(false);
    }
    let record = rebuild(&provider, name).await?;
    ClusterDir::of(name)?.save(&record)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmup_providers::Role;

    #[test]
    fn the_config_file_gives_the_token() {
        let file: ConfigFile =
            serde_norway::from_str("digitalocean:\n  token: dop_v1_abc\nother: 1\n").unwrap();
        assert_eq!(
            file.digitalocean.and_then(|d| d.token).as_deref(),
            Some("dop_v1_abc")
        );
        let file: ConfigFile = serde_norway::from_str("other: 1\n").unwrap();
        assert!(file.digitalocean.is_none());
    }

    #[test]
    fn the_example_cluster_files_parse() {
        let file: crate::commands::ClusterFile = serde_norway::from_str(include_str!(
            "../../infra-examples/digitalocean-cluster.yaml"
        ))
        .unwrap();
        assert_eq!(file.provider.as_deref(), Some(PROVIDER));
        assert_eq!(file.nodes, Some(3));
        assert_eq!(file.ssh_from, vec!["203.0.113.7/32"]);
        let file: crate::commands::ClusterFile =
            serde_norway::from_str(include_str!("../../infra-examples/lab-cluster.yaml")).unwrap();
        assert_eq!(file.provider.as_deref(), Some("lab"));
        assert_eq!(file.managers, Some(1));
    }

    #[test]
    fn user_data_files_every_host_key_of_the_call() {
        let key = swarmup_bootstrap::keys::generate_host_key("t").unwrap();
        let plan = ClusterPlan {
            cluster: "c".into(),
            machines: vec![],
            login_public_key: key.public_openssh.clone(),
        };
        let machines: Vec<MachinePlan> = (1..=3)
            .map(|i| MachinePlan {
                name: format!("c-node{i}"),
                role: Role::Manager,
                host_key: swarmup_bootstrap::keys::generate_host_key(&format!("c-node{i}"))
                    .unwrap(),
            })
            .collect();
        let text = user_data(&plan, &machines).unwrap();
        for m in &machines {
            assert!(text.contains(&format!("/{}/ssh_host_ed25519_key", m.name)));
            assert!(text.contains(m.host_key.public_openssh.as_str()));
        }
        assert!(text.contains(&plan.login_public_key));
    }
}
