//! Which provider a cluster uses, built from the user's choices.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use swarmup_providers::Provider;

/// The providers `--provider` accepts.
pub const KNOWN: &[&str] = &["lab", "digitalocean"];

/// Settings a provider is built from: flags, the record of an existing cluster, the
/// environment.
#[derive(Debug, Default, Clone)]
pub struct ProviderChoice {
    pub name: String,
    pub token: Option<String>,
    pub region: Option<String>,
    pub size: Option<String>,
    pub image: Option<String>,
    pub ssh_from: Vec<String>,
}

pub fn check_name(name: &str) -> Result<()> {
    if !KNOWN.contains(&name) {
        bail!("unknown provider {name:?}: use one of {}", KNOWN.join(", "));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn lab() -> Result<Arc<dyn Provider>> {
    use swarmup_providers::lab::{LabConfig, LabProvider, NodeInit};
    let mut config = LabConfig {
        init: NodeInit::current_exe(&["lab-node"])?,
        ..LabConfig::default()
    };
    if let Ok(root) = std::env::var("SWARMUP_LAB_ROOT") {
        config.root = root.into();
    }
    Ok(Arc::new(LabProvider::new(config)))
}

#[cfg(not(target_os = "linux"))]
fn lab() -> Result<Arc<dyn Provider>> {
    bail!("the lab provider runs on Linux only: use --provider digitalocean, or run swarmup on a Linux host")
}

/// The DigitalOcean token from the flag or the environment.
pub fn digitalocean_token(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("DIGITALOCEAN_TOKEN").ok())
        .or_else(|| std::env::var("DIGITALOCEAN_ACCESS_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

fn digitalocean(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    use swarmup_providers::digitalocean::{DigitalOceanOptions, DigitalOceanProvider};
    let Some(token) = digitalocean_token(choice.token.as_deref()) else {
        bail!("no DigitalOcean token: pass --token or set DIGITALOCEAN_TOKEN");
    };
    let mut options = DigitalOceanOptions::new(token);
    if let Ok(url) = std::env::var("DIGITALOCEAN_API_URL") {
        options.api_url = url;
    }
    if let Some(r) = &choice.region {
        options.region = r.clone();
    }
    if let Some(s) = &choice.size {
        options.size = s.clone();
    }
    if let Some(i) = &choice.image {
        options.image = i.clone();
    }
    options.ssh_from = choice.ssh_from.clone();
    let user_data = Arc::new(crate::commands::cloud_init_for);
    Ok(Arc::new(DigitalOceanProvider::new(options, user_data)?))
}

pub fn build(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    check_name(&choice.name)?;
    match choice.name.as_str() {
        "lab" => lab(),
        _ => digitalocean(choice),
    }
}

/// `swarmup lab-node …`: a lab node's init, run by the lab provider inside the node's
/// namespaces.
#[cfg(target_os = "linux")]
pub fn run_lab_node(args: Vec<String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarmup lab-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(swarmup_providers::lab::node::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmup lab-node: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn run_lab_node(_args: Vec<String>) -> ExitCode {
    eprintln!("swarmup lab-node: lab nodes run on Linux only");
    ExitCode::FAILURE
}
