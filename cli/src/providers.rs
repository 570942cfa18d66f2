//! Which provider a cluster uses, built from the user's choices: the registry of providers
//! by name, and the one place that turns flags, records and the environment into each
//! provider's options. Everything else in the CLI sees only `dyn Provider`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use swarmup_providers::Provider;

use crate::records::{self, ClusterDir, ClusterRecord, PlannedMachine};
use crate::CreateArgs;

/// Builds a provider from the environment alone; `None` when its credentials are not at hand.
type Lookout = fn() -> Result<Option<Arc<dyn Provider>>>;

/// A provider `--provider` accepts.
struct Registered {
    name: &'static str,
    /// Builds the provider from the user's choices.
    build: fn(&ProviderChoice) -> Result<Arc<dyn Provider>>,
    /// For providers that can see clusters this machine has no record of (made elsewhere,
    /// or the record was lost): builds one from the environment alone, `None` when its
    /// credentials are not at hand. `swarmup ls` and `destroy NAME` adopt what it finds.
    lookout: Option<Lookout>,
}

/// Every provider, by name. A new provider is its module in `swarmup-providers`, a builder
/// below and one line here.
const REGISTRY: &[Registered] = &[
    Registered {
        name: "lab",
        build: lab,
        lookout: None,
    },
    Registered {
        name: "digitalocean",
        build: digitalocean,
        lookout: Some(digitalocean_lookout),
    },
    Registered {
        name: "virtualbox",
        build: virtualbox,
        lookout: Some(virtualbox_lookout),
    },
];

/// The names `--provider` accepts, in the registry's order.
pub fn known() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.name).collect()
}

fn registered(name: &str) -> Result<&'static Registered> {
    match REGISTRY.iter().find(|r| r.name == name) {
        Some(r) => Ok(r),
        None => bail!(
            "unknown provider {name:?}: use one of {}",
            known().join(", ")
        ),
    }
}

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
    /// A public key file already on the DigitalOcean account, used instead of a
    /// per-cluster key.
    pub ssh_key: Option<PathBuf>,
    /// Lab only: a registry on the cluster's bridge (`create --registry`).
    pub lab_registry: bool,
    /// Lab only: nothing leaves the cluster's subnet (`create --offline`).
    pub lab_offline: bool,
    /// VirtualBox only: CPUs and memory (MB) per VM.
    pub cpus: Option<u32>,
    pub memory: Option<u32>,
}

/// `provider_options` keys of a cluster record.
const OPT_REGION: &str = "region";
const OPT_SIZE: &str = "size";
const OPT_IMAGE: &str = "image";
const OPT_SSH_FROM: &str = "ssh_from";
const OPT_SSH_KEY: &str = "ssh_key";
const OPT_CPUS: &str = "cpus";
const OPT_MEMORY: &str = "memory";

impl ProviderChoice {
    /// The choices of a create: its flags, and for what they leave out, what the first run
    /// of the same cluster chose, so that a resumed create puts the rest of the machines
    /// where the first ones are.
    pub fn for_create(args: &CreateArgs, existing: Option<&ClusterRecord>) -> Self {
        let recorded = |key: &str| {
            existing
                .filter(|r| r.provider == args.provider_name())
                .and_then(|r| r.provider_options.get(key))
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let ssh_from = if args.ssh_from.is_empty() {
            recorded(OPT_SSH_FROM)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            args.ssh_from.clone()
        };
        ProviderChoice {
            name: args.provider_name().to_string(),
            token: args.token.clone(),
            region: args.region.clone().or_else(|| recorded(OPT_REGION)),
            size: args.size.clone().or_else(|| recorded(OPT_SIZE)),
            image: args.image.clone().or_else(|| recorded(OPT_IMAGE)),
            ssh_from,
            ssh_key: args
                .ssh_key
                .clone()
                .or_else(|| recorded(OPT_SSH_KEY).map(PathBuf::from)),
            lab_registry: args.registry,
            lab_offline: args.offline,
            cpus: args.cpus.or_else(|| recorded(OPT_CPUS)?.parse().ok()),
            memory: args.memory.or_else(|| recorded(OPT_MEMORY)?.parse().ok()),
        }
    }

    /// What a cluster record keeps for the next run (never the token).
    pub fn recorded(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                out.insert(k.to_string(), v);
            }
        };
        put(OPT_REGION, self.region.clone());
        put(OPT_SIZE, self.size.clone());
        put(OPT_IMAGE, self.image.clone());
        put(OPT_SSH_FROM, Some(self.ssh_from.join(",")));
        put(
            OPT_SSH_KEY,
            self.ssh_key.as_ref().map(|p| p.display().to_string()),
        );
        put(OPT_CPUS, self.cpus.map(|c| c.to_string()));
        put(OPT_MEMORY, self.memory.map(|m| m.to_string()));
        out
    }
}

pub fn check_name(name: &str) -> Result<()> {
    registered(name).map(|_| ())
}

#[cfg(target_os = "linux")]
fn lab(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    use swarmup_providers::lab::{LabConfig, LabProvider, NodeInit};
    // Both are kept in the lab's own record: later commands need not repeat them.
    let mut config = LabConfig {
        init: NodeInit::current_exe(&["lab-node"])?,
        registry: choice.lab_registry,
        offline: choice.lab_offline,
        ..LabConfig::default()
    };
    if let Some(root) = crate::env::path(crate::env::SWARMUP_LAB_ROOT) {
        config.root = root;
    }
    Ok(Arc::new(LabProvider::new(config)))
}

#[cfg(not(target_os = "linux"))]
fn lab(_choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    bail!("the lab provider runs on Linux only: use --provider digitalocean, or run swarmup on a Linux host")
}

/// The DigitalOcean token: the flag, DIGITALOCEAN_TOKEN, DIGITALOCEAN_ACCESS_TOKEN, then
/// `digitalocean: {token: ...}` in the user's config file.
pub fn digitalocean_token(flag: Option<&str>) -> Result<Option<String>> {
    let given = flag
        .map(str::to_string)
        .or_else(|| crate::env::text(crate::env::DIGITALOCEAN_TOKEN))
        .or_else(|| crate::env::text(crate::env::DIGITALOCEAN_ACCESS_TOKEN))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if given.is_some() {
        return Ok(given);
    }
    crate::digitalocean::config_token()
}

/// The MD5 fingerprint DigitalOcean files a public key under, from a `.pub` file.
pub fn key_fingerprint(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ssh key {}: give the .pub file", path.display()))?;
    if text.contains("PRIVATE KEY") {
        bail!(
            "{} is a private key: give its public half ({}.pub)",
            path.display(),
            path.display()
        );
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    swarmup_providers::digitalocean::md5_fingerprint(line).with_context(|| {
        format!(
            "{} is not an OpenSSH public key (ssh-ed25519 AAAA... or ssh-rsa AAAA...): give the .pub file of a key on your DigitalOcean account",
            path.display()
        )
    })
}

fn digitalocean(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    use swarmup_providers::digitalocean::{
        DigitalOceanOptions, DigitalOceanProvider, SshKeyChoice,
    };
    let Some(token) = digitalocean_token(choice.token.as_deref())? else {
        bail!(
            "no DigitalOcean token: pass --token, set DIGITALOCEAN_TOKEN, or put digitalocean: {{token: ...}} in {}",
            crate::digitalocean::config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.config/swarmup/config.yaml".into())
        );
    };
    let mut options = DigitalOceanOptions::new(token);
    if let Some(url) = crate::env::text(crate::env::DIGITALOCEAN_API_URL) {
        options.api_url = url;
    }
    if let Some(path) = &choice.ssh_key {
        options.ssh_key = SshKeyChoice::Existing {
            fingerprint: key_fingerprint(path)?,
        };
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
    let user_data = Arc::new(crate::digitalocean::user_data);
    Ok(Arc::new(DigitalOceanProvider::new(options, user_data)?))
}

/// VirtualBox VMs on this host, through VBoxManage (`SWARMUP_VBOXMANAGE` or PATH); images
/// and base disks in the user's cache directory.
fn virtualbox(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    use swarmup_providers::virtualbox::{VirtualBoxOptions, VirtualBoxProvider};
    let cache = crate::env::xdg_dir(crate::env::XDG_CACHE_HOME, ".cache")
        .context("no cache directory: set HOME or XDG_CACHE_HOME")?
        .join("swarmup")
        .join("virtualbox");
    let mut options = VirtualBoxOptions::new(cache);
    options.vboxmanage = crate::env::path(crate::env::SWARMUP_VBOXMANAGE);
    if let Some(i) = &choice.image {
        options.image = i.clone();
    }
    if let Some(c) = choice.cpus {
        options.cpus = c;
    }
    if let Some(m) = choice.memory {
        options.memory_mb = m;
    }
    for (set, flag) in [
        (choice.region.is_some(), "--region"),
        (choice.size.is_some(), "--size"),
        (choice.ssh_key.is_some(), "--ssh-key"),
    ] {
        if set {
            bail!("{flag} is for DigitalOcean: VirtualBox VMs take --cpus, --memory and --image");
        }
    }
    let user_data = Arc::new(crate::digitalocean::user_data);
    Ok(Arc::new(VirtualBoxProvider::new(options, user_data)))
}

/// VirtualBox when VBoxManage is at hand: its groups `/swarmup/CLUSTER` name the clusters.
fn virtualbox_lookout() -> Result<Option<Arc<dyn Provider>>> {
    let configured = crate::env::path(crate::env::SWARMUP_VBOXMANAGE);
    if swarmup_providers::virtualbox::locate(configured.as_deref()).is_err() {
        return Ok(None);
    }
    virtualbox(&ProviderChoice {
        name: "virtualbox".to_string(),
        ..Default::default()
    })
    .map(Some)
}

/// A DigitalOcean provider when a token is at hand without flags (environment or config
/// file): the droplets' tags name every cluster on the account, whichever machine made it.
fn digitalocean_lookout() -> Result<Option<Arc<dyn Provider>>> {
    if digitalocean_token(None)?.is_none() {
        return Ok(None);
    }
    digitalocean(&ProviderChoice {
        name: "digitalocean".to_string(),
        ..Default::default()
    })
    .map(Some)
}

/// The provider of an existing cluster (its record names it).
pub fn build(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    (registered(&choice.name)?.build)(choice)
}

/// The provider for `create`: also refuses the flags it would have to ignore.
pub fn build_for_create(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    let entry = registered(&choice.name)?;
    if entry.name != "lab" {
        for (set, flag) in [
            (choice.lab_registry, "--registry"),
            (choice.lab_offline, "--offline"),
        ] {
            if set {
                bail!(
                    "{flag} is for lab clusters only: the {} provider's machines reach registries over their own network",
                    choice.name
                );
            }
        }
    }
    if entry.name != "virtualbox" {
        for (set, flag) in [
            (choice.cpus.is_some(), "--cpus"),
            (choice.memory.is_some(), "--memory"),
        ] {
            if set {
                bail!(
                    "{flag} is for VirtualBox VMs: the {} provider's machine size comes from {}",
                    choice.name,
                    if entry.name == "digitalocean" {
                        "--size"
                    } else {
                        "the host"
                    }
                );
            }
        }
    }
    (entry.build)(choice)
}

/// A record for a cluster a provider found without one, from its machines.
async fn rebuild(provider: &dyn Provider, name: &str) -> Result<ClusterRecord> {
    let mut machines = provider.list(name).await?;
    machines.sort_by(|a, b| a.name.cmp(&b.name));
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut provider_options = BTreeMap::new();
    provider_options.insert("found_by".to_string(), "tags".to_string());
    Ok(ClusterRecord {
        name: name.to_string(),
        provider: provider.name().to_string(),
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
        // Found by tags alone: the engine is not among them, so the default is assumed.
        engine: Default::default(),
    })
}

/// Clusters that have no record here but a provider's lookout sees: their records are
/// rebuilt and saved, so that every other command finds them. Quiet without credentials;
/// a failing provider only warns.
pub async fn adopt_unrecorded(known: &[ClusterRecord]) -> Vec<ClusterRecord> {
    let mut adopted: Vec<ClusterRecord> = Vec::new();
    for entry in REGISTRY {
        let Some(lookout) = entry.lookout else {
            continue;
        };
        let found = async {
            let Some(provider) = lookout()? else {
                return Ok(Vec::new());
            };
            let mut found = Vec::new();
            for name in provider.clusters().await? {
                let recorded = known.iter().chain(&adopted).any(|r| r.name == name);
                if recorded || records::validate_name(&name).is_err() {
                    continue;
                }
                let record = rebuild(provider.as_ref(), &name).await?;
                ClusterDir::of(&name)?.save(&record)?;
                found.push(record);
            }
            anyhow::Ok(found)
        };
        match found.await {
            Ok(found) => adopted.extend(found),
            Err(e) => eprintln!("warning: cannot look for {} clusters: {e:#}", entry.name),
        }
    }
    adopted
}

/// For `destroy NAME` without a record: rebuilds it when a provider's lookout sees the
/// cluster. Whether one did.
pub async fn adopt(name: &str) -> Result<bool> {
    for lookout in REGISTRY.iter().filter_map(|r| r.lookout) {
        let Some(provider) = lookout()? else {
            continue;
        };
        if !provider.clusters().await?.iter().any(|c| c == name) {
            continue;
        }
        let record = rebuild(provider.as_ref(), name).await?;
        ClusterDir::of(name)?.save(&record)?;
        return Ok(true);
    }
    Ok(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_is_registered_once_and_unknown_names_list_them() {
        let names = known();
        assert_eq!(names, ["lab", "digitalocean", "virtualbox"]);
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names);
        let err = check_name("nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown provider \"nope\": use one of lab, digitalocean, virtualbox"
        );
        assert!(build(&ProviderChoice {
            name: "vmware".into(),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn lab_only_flags_are_refused_for_other_providers() {
        let err = build_for_create(&ProviderChoice {
            name: "digitalocean".into(),
            lab_offline: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--offline is for lab clusters only"), "{err}");
    }

    #[test]
    fn a_public_key_file_gives_its_md5_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id.pub");
        std::fs::write(
            &key,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c user@host\n",
        )
        .unwrap();
        assert_eq!(
            key_fingerprint(&key).unwrap(),
            "f5:a4:be:64:6f:c9:df:3f:cb:41:f7:72:42:27:92:81"
        );
        std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let err = key_fingerprint(&key).unwrap_err().to_string();
        assert!(err.contains("is a private key"), "{err}");
        std::fs::write(&key, "hello\n").unwrap();
        assert!(key_fingerprint(&key).is_err());
        assert!(key_fingerprint(&dir.path().join("missing.pub")).is_err());
    }

    #[test]
    fn a_resumed_create_keeps_the_first_runs_choices() {
        use clap::Parser;
        let cli = crate::Cli::parse_from([
            "swarmup",
            "create",
            "--provider",
            "digitalocean",
            "--region",
            "fra1",
            "--ssh-from",
            "10.0.0.0/8",
            "--ssh-from",
            "192.0.2.1/32",
        ]);
        let crate::Command::Create(args) = cli.command else {
            panic!("not create");
        };
        let first = ProviderChoice::for_create(&args, None);
        let record = ClusterRecord {
            name: "swarm".into(),
            provider: "digitalocean".into(),
            created_at: String::new(),
            machines: vec![],
            last_seen: vec![],
            provider_options: first.recorded(),
            engine: Default::default(),
        };
        assert!(!record.provider_options.contains_key("token"));
        let cli = crate::Cli::parse_from([
            "swarmup",
            "create",
            "--provider",
            "digitalocean",
            "--size",
            "s-2vcpu-2gb",
        ]);
        let crate::Command::Create(again) = cli.command else {
            panic!("not create");
        };
        let second = ProviderChoice::for_create(&again, Some(&record));
        assert_eq!(second.region.as_deref(), Some("fra1"));
        assert_eq!(second.size.as_deref(), Some("s-2vcpu-2gb"));
        assert_eq!(second.ssh_from, vec!["10.0.0.0/8", "192.0.2.1/32"]);
    }
}
