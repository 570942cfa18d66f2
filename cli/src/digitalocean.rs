//! What the DigitalOcean provider's options need from the user's side: the token from the
//! user's config file and the droplets' user data (`providers.rs` builds the options).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;
use swarmup_providers::{ClusterPlan, MachinePlan, ProviderError};

/// `$XDG_CONFIG_HOME/swarmup/config.yaml`, else `~/.config/swarmup/config.yaml`.
pub fn config_path() -> Option<PathBuf> {
    crate::env::xdg_dir(crate::env::XDG_CONFIG_HOME, ".config")
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
        let file: crate::create::ClusterFile = serde_norway::from_str(include_str!(
            "../../infra-examples/digitalocean-cluster.yaml"
        ))
        .unwrap();
        assert_eq!(file.provider.as_deref(), Some("digitalocean"));
        assert_eq!(file.nodes, Some(3));
        assert_eq!(file.ssh_from, vec!["203.0.113.7/32"]);
        let file: crate::create::ClusterFile =
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
            tags: Vec::new(),
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
