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
    Registered {
        name: "ssh",
        build: ssh,
        lookout: None,
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
    /// ssh only: the machines, `[NAME=][USER@]HOST[:PORT]` each.
    pub hosts: Vec<String>,
    /// ssh only: where their host keys are pinned (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// ssh only: `HOST=SHA256:…` pins.
    pub host_key_fingerprints: Vec<String>,
}

/// `provider_options` keys of a cluster record.
const OPT_REGION: &str = "region";
const OPT_SIZE: &str = "size";
const OPT_IMAGE: &str = "image";
const OPT_SSH_FROM: &str = "ssh_from";
const OPT_SSH_KEY: &str = "ssh_key";
const OPT_CPUS: &str = "cpus";
const OPT_MEMORY: &str = "memory";
const OPT_HOSTS: &str = "hosts";
const OPT_KNOWN_HOSTS: &str = "known_hosts";
const OPT_FINGERPRINTS: &str = "host_key_fingerprints";

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
            hosts: if args.host.is_empty() {
                recorded_words(recorded(OPT_HOSTS))
            } else {
                args.host.clone()
            },
            known_hosts: args
                .known_hosts
                .clone()
                .or_else(|| recorded(OPT_KNOWN_HOSTS).map(PathBuf::from)),
            host_key_fingerprints: if args.host_key_fingerprint.is_empty() {
                recorded_words(recorded(OPT_FINGERPRINTS))
            } else {
                args.host_key_fingerprint.clone()
            },
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
        // Host specs and fingerprints hold no spaces.
        put(OPT_HOSTS, Some(self.hosts.join(" ")));
        put(
            OPT_KNOWN_HOSTS,
            self.known_hosts.as_ref().map(|p| p.display().to_string()),
        );
        put(OPT_FINGERPRINTS, Some(self.host_key_fingerprints.join(" ")));
        out
    }
}

fn recorded_words(value: Option<String>) -> Vec<String> {
    value
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
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

/// Machines the user already has: no cloud, nothing made; the hosts of a `create`, or
/// none for the other verbs, which read the cluster's record.
fn ssh(choice: &ProviderChoice) -> Result<Arc<dyn Provider>> {
    use swarmup_providers::ssh::{self, HostSpec, SshProvider};
    let specs = choice
        .hosts
        .iter()
        .map(|h| HostSpec::parse(h))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(SshProvider::new(ssh::resolve_all(
        &specs,
        ssh::resolve,
    )?)))
}

/// `create`'s flags as the ssh provider needs them, refused in one line before anything
/// is written: the hosts (or, resuming, the first run's), no cloud flags, `--nodes`
/// from the hosts; and ssh flags for other providers.
pub fn check_create_args(mut args: CreateArgs) -> Result<CreateArgs> {
    use swarmup_providers::ssh::parse_hosts;
    let provider = args.provider_name().to_string();
    if provider != "ssh" {
        for (set, flag) in [
            (!args.host.is_empty(), "--host"),
            (args.known_hosts.is_some(), "--known-hosts"),
            (
                !args.host_key_fingerprint.is_empty(),
                "--host-key-fingerprint",
            ),
        ] {
            if set {
                bail!("{flag} is for --provider ssh (machines you already have): the {provider} provider makes its own machines");
            }
        }
        return Ok(args);
    }
    for (set, flag) in [
        (args.region.is_some(), "--region"),
        (args.size.is_some(), "--size"),
        (args.image.is_some(), "--image"),
        (args.token.is_some(), "--token"),
    ] {
        if set {
            bail!("{flag} is not for --provider ssh: the machines exist already, swarmup only prepares them");
        }
    }
    if args.rollback_on_failure {
        bail!("--rollback-on-failure is not for --provider ssh: swarmup makes no machines to roll back; `swarmup destroy NAME` removes what it installed on them");
    }
    if args.host.is_empty() {
        // A resumed create: the hosts of the first run.
        let dir = ClusterDir::of(args.cluster_name())?;
        if dir.exists() {
            let record = dir.load()?;
            if record.provider == "ssh" {
                args.host = recorded_words(record.provider_options.get(OPT_HOSTS).cloned());
            }
        }
    }
    let specs = parse_hosts(&args.host, args.cluster_name())?;
    match args.nodes {
        Some(n) if n as usize != specs.len() => bail!(
            "--nodes {n} does not match the {} hosts given: with --provider ssh every --host is a node, leave --nodes out",
            specs.len()
        ),
        _ => args.nodes = Some(specs.len() as u32),
    }
    fingerprints(&args.host_key_fingerprint, &specs)?;
    if let Some(key) = &args.ssh_key {
        if key.extension().is_some_and(|e| e == "pub") {
            bail!(
                "--ssh-key {} is a public key: with --provider ssh give the private key you log in with (as ssh -i)",
                key.display()
            );
        }
        if !key.is_file() {
            bail!("--ssh-key {}: no such file", key.display());
        }
    }
    if let Some(file) = &args.known_hosts {
        if !file.is_file() {
            bail!("--known-hosts {}: no such file", file.display());
        }
    }
    Ok(args)
}

/// `--host-key-fingerprint HOST=SHA256:…` by the host's `--host` text; HOST may be the
/// host, its `--host` text or its NAME.
fn fingerprints(
    given: &[String],
    specs: &[swarmup_providers::ssh::HostSpec],
) -> Result<BTreeMap<String, String>> {
    use swarmup_bootstrap::existing::pin::normalize_fingerprint;
    let mut out = BTreeMap::new();
    for g in given {
        let Some((host, fp)) = g.split_once('=') else {
            bail!("invalid --host-key-fingerprint {g:?}: use HOST=SHA256:…, as `ssh-keygen -lf KEY.pub` prints it");
        };
        let spec = specs
            .iter()
            .find(|s| {
                s.host == host.to_ascii_lowercase()
                    || s.written == host
                    || s.name.as_deref() == Some(host)
                    || s.known_hosts_name() == host
            })
            .with_context(|| {
                format!("--host-key-fingerprint {host}=…: {host} is none of the --host given")
            })?;
        let fp = normalize_fingerprint(fp)
            .map_err(|e| anyhow::anyhow!("invalid --host-key-fingerprint for {host}: {e}"))?;
        if out.insert(spec.written.clone(), fp).is_some() {
            bail!("--host-key-fingerprint for {host} is given twice: give one");
        }
    }
    Ok(out)
}

/// The machines of an ssh create: `CLUSTER-LABEL` per host, the first `managers` of
/// them managers; `None` for providers that name machines `CLUSTER-nodeN`.
pub fn planned_machines(
    choice: &ProviderChoice,
    cluster: &str,
    managers: u32,
) -> Option<Vec<PlannedMachine>> {
    if choice.name != "ssh" {
        return None;
    }
    let specs = swarmup_providers::ssh::parse_hosts(&choice.hosts, cluster).ok()?;
    Some(
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| PlannedMachine {
                name: format!("{cluster}-{}", s.label()),
                role: if (i as u32) < managers {
                    swarmup_providers::Role::Manager
                } else {
                    swarmup_providers::Role::Worker
                },
            })
            .collect(),
    )
}

/// The known_hosts file an ssh create pins from: the flag, else `~/.ssh/known_hosts`.
fn known_hosts_file(choice: &ProviderChoice) -> Option<PathBuf> {
    choice
        .known_hosts
        .clone()
        .or_else(|| crate::env::path(crate::env::HOME).map(|h| h.join(".ssh/known_hosts")))
}

/// The host key to pin for `host`: the one matching its fingerprint among those it
/// offers, else what `known_hosts` holds for it. Never one it merely offers.
async fn pin_host_key(
    host: &swarmup_providers::ssh::SshHost,
    fingerprint: Option<&String>,
    known_hosts: Option<&Path>,
) -> Result<String> {
    use swarmup_bootstrap::existing::pin;
    use swarmup_providers::ssh::known_hosts_name;
    let spec = &host.spec;
    let written = &spec.written;
    if let Some(want) = fingerprint {
        let offered =
            pin::scan_host_keys(host.addr, spec.port, std::time::Duration::from_secs(10)).await?;
        return pin::match_fingerprint(&offered, want).map_err(|seen| {
            anyhow::anyhow!(
                "the host key of {written} does not match --host-key-fingerprint {want}: it offers {}; check the machine before pinning another key",
                seen.join(", ")
            )
        });
    }
    let file_name = known_hosts.map_or_else(
        || "~/.ssh/known_hosts".to_string(),
        |p| p.display().to_string(),
    );
    let mut names = vec![spec.known_hosts_name()];
    let by_addr = known_hosts_name(&host.addr.to_string(), spec.port);
    if !names.contains(&by_addr) {
        names.push(by_addr);
    }
    let found = match known_hosts {
        Some(f) if f.is_file() => pin::known_host_keys(f, &names).await?,
        _ => pin::KnownKeys::default(),
    };
    if let Some(key) = pin::preferred(&found.keys) {
        return Ok(key);
    }
    let port = if spec.port == 22 {
        String::new()
    } else {
        format!(" -p {}", spec.port)
    };
    let why = if found.revoked.is_empty() {
        format!("it is not in {file_name}")
    } else {
        format!("{file_name} marks its key @revoked")
    };
    bail!(
        "unknown host key for {written}: {why}; pin it first: `ssh{port} {}@{}` once and check the fingerprint it shows, or `ssh-keyscan{port} {} >> {file_name}` after checking, or pass --host-key-fingerprint {}=SHA256:…",
        spec.user,
        spec.host,
        spec.host,
        spec.host
    )
}

/// Stage "keys" for machines that exist already (`--provider ssh`): their own host keys
/// are pinned (never generated), every machine is reached with the user's own login,
/// then the cluster's login key is authorized on it. Nothing happens for other
/// providers. A refusal leaves no trace of a new cluster.
pub async fn adopt_existing(
    p: &crate::create::CreatePlan,
    login: &swarmup_bootstrap::keys::LoginKey,
    host_keys: &mut BTreeMap<String, swarmup_providers::HostKey>,
) -> Result<()> {
    if p.choice.name != "ssh" {
        return Ok(());
    }
    let result = pin_and_adopt(p, login, host_keys).await;
    if result.is_err() && p.new_cluster() {
        let _ = p.dir.remove();
    }
    result
}

async fn pin_and_adopt(
    p: &crate::create::CreatePlan,
    login: &swarmup_bootstrap::keys::LoginKey,
    host_keys: &mut BTreeMap<String, swarmup_providers::HostKey>,
) -> Result<()> {
    use swarmup_bootstrap::keys::{write_known_hosts, KnownHost};
    use swarmup_bootstrap::{SshConnector, SshOptions};
    use swarmup_providers::ssh::{self, parse_hosts, plan_hosts};
    let specs = parse_hosts(&p.choice.hosts, &p.name)?;
    let hosts = plan_hosts(&specs, &p.name, p.managers as usize, ssh::resolve)?;
    let pins = fingerprints(&p.choice.host_key_fingerprints, &specs)?;
    let known_hosts = known_hosts_file(&p.choice);
    // Machines pinned and adopted by an earlier run keep their pin.
    let new: Vec<&ssh::SshHost> = hosts
        .iter()
        .filter(|h| !host_keys.contains_key(&h.machine))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let mut pinned = host_keys.clone();
    for h in &new {
        let key = pin_host_key(h, pins.get(&h.spec.written), known_hosts.as_deref()).await?;
        pinned.insert(
            h.machine.clone(),
            swarmup_providers::HostKey {
                // The machine's own key: swarmup never has its private half.
                private_openssh: String::new(),
                public_openssh: key,
            },
        );
    }
    let entries: Vec<KnownHost> = hosts
        .iter()
        .filter_map(|h| {
            Some(KnownHost {
                name: h.machine.clone(),
                addr: h.addr,
                port: h.spec.port,
                public_key: pinned.get(&h.machine)?.public_openssh.clone(),
            })
        })
        .collect();
    write_known_hosts(&p.dir.known_hosts(), &entries).await?;
    let mut options = SshOptions::new(
        p.choice.ssh_key.clone().unwrap_or_default(),
        p.dir.known_hosts(),
    );
    options.config_file = crate::env::path(crate::env::SWARMUP_SSH_CONFIG).filter(|c| c.is_file());
    let machines: Vec<_> = new.iter().map(|h| h.to_machine()).collect();
    swarmup_bootstrap::existing::adopt_machines(
        &SshConnector::new(options),
        &machines,
        &login.public_openssh,
        &swarmup_providers::NoProgress,
    )
    .await?;
    *host_keys = pinned;
    Ok(())
}

/// `destroy` of a cluster on machines swarmup does not own: over SSH, what swarmup
/// installed goes (the node leaves first) and the machines stay; for other providers,
/// the provider's own destroy.
pub async fn destroy(
    out: &crate::output::Output,
    provider: &dyn Provider,
    dir: &ClusterDir,
    record: &ClusterRecord,
) -> Result<swarmup_providers::DestroyReport> {
    let name = &record.name;
    if record.provider != "ssh" {
        return Ok(provider.destroy(name).await?);
    }
    let mut report = provider.destroy(name).await?;
    let machines = &record.last_seen;
    if machines.is_empty() {
        return Ok(report);
    }
    let mut pub_path = dir.login_key().into_os_string();
    pub_path.push(".pub");
    let login = std::fs::read_to_string(PathBuf::from(&pub_path)).with_context(|| {
        format!(
            "cannot read the cluster's login key {}: swarmup cannot log in to remove what it installed",
            PathBuf::from(&pub_path).display()
        )
    })?;
    let progress = out.progress();
    let done = swarmup_bootstrap::existing::uninstall::uninstall_machines(
        &swarmup_bootstrap::SshConnector::new(crate::commands::ssh_options(dir)),
        machines,
        login.trim(),
        record.engine,
        progress.as_ref(),
    )
    .await;
    drop(progress);
    let done = done.map_err(|e| {
        anyhow::anyhow!("{e}; the cluster's record is kept: make the machines reachable and run `swarmup destroy {name}` again")
    })?;
    for u in &done {
        for r in &u.removed {
            report.removed.push(format!("{}: {r}", u.machine));
        }
    }
    out.say(&format!(
        "The machines stay ({}): swarmup removed only what it had installed.",
        machines
            .iter()
            .map(|m| format!("{} {}", m.name, m.ssh.host))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for u in done.iter().filter(|u| u.docker_by_swarmup) {
        out.say(&format!(
            "{}: Docker stays; swarmup installed it (docker.io): `apt-get purge docker.io` removes it once nothing else needs it.",
            u.machine
        ));
    }
    if done.iter().all(|u| !u.docker_by_swarmup) {
        out.say("Docker was there before swarmup and stays.");
    } else if done.iter().any(|u| !u.docker_by_swarmup) {
        out.say("On the other machines Docker was there before swarmup and stays.");
    }
    Ok(report)
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

/// The providers that can list clusters and their tags from this host alone: the lab
/// (its state is on this host) and every lookout whose credentials are at hand; for
/// workshops found by their tags (`workshop ls`, `destroy`, `reap`).
pub fn tag_listers() -> Vec<(&'static str, Result<Arc<dyn Provider>>)> {
    let mut out = Vec::new();
    if cfg!(target_os = "linux") {
        out.push((
            "lab",
            build(&ProviderChoice {
                name: "lab".to_string(),
                ..Default::default()
            }),
        ));
    }
    for entry in REGISTRY {
        if let Some(lookout) = entry.lookout {
            match lookout() {
                Ok(Some(p)) => out.push((entry.name, Ok(p))),
                Ok(None) => {}
                Err(e) => out.push((entry.name, Err(e))),
            }
        }
    }
    out
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
        assert_eq!(names, ["lab", "digitalocean", "virtualbox", "ssh"]);
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names);
        let err = check_name("nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown provider \"nope\": use one of lab, digitalocean, virtualbox, ssh"
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

    fn create_args(argv: &[&str]) -> CreateArgs {
        use clap::Parser;
        let cli = crate::Cli::parse_from(["swarmup", "create"].iter().chain(argv));
        let crate::Command::Create(args) = cli.command else {
            panic!("not create");
        };
        args
    }

    #[test]
    fn bad_ssh_input_is_refused_in_one_line() {
        const FP: &str = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";
        for (argv, want) in [
            (vec!["--provider", "ssh"], "needs the machines: --host"),
            (
                vec![
                    "--provider",
                    "ssh",
                    "--host",
                    "10.0.0.5",
                    "--region",
                    "fra1",
                ],
                "--region is not for --provider ssh",
            ),
            (
                vec!["--provider", "ssh", "--host", "10.0.0.5", "--size", "s"],
                "--size is not for --provider ssh",
            ),
            (
                vec![
                    "--provider",
                    "ssh",
                    "--host",
                    "10.0.0.5",
                    "--host",
                    "root@10.0.0.5",
                ],
                "is given twice",
            ),
            (
                vec!["--provider", "ssh", "--host", "root@"],
                "invalid --host \"root@\"",
            ),
            (
                vec!["--provider", "ssh", "--host", "10.0.0.5", "--nodes", "2"],
                "--nodes 2 does not match the 1 hosts",
            ),
            (
                vec!["--provider", "lab", "--host", "10.0.0.5"],
                "--host is for --provider ssh",
            ),
            (
                vec![
                    "--provider",
                    "ssh",
                    "--host",
                    "10.0.0.5",
                    "--host-key-fingerprint",
                    "10.0.0.6=SHA256:x",
                ],
                "10.0.0.6 is none of the --host given",
            ),
            (
                vec![
                    "--provider",
                    "ssh",
                    "--host",
                    "10.0.0.5",
                    "--host-key-fingerprint",
                    "10.0.0.5=MD5:aa",
                ],
                "not a SHA256 fingerprint",
            ),
            (
                vec![
                    "--provider",
                    "ssh",
                    "--host",
                    "10.0.0.5",
                    "--ssh-key",
                    "/nonexistent/id.pub",
                ],
                "is a public key",
            ),
            (
                vec![
                    "--provider",
                    "ssh",
                    "--host",
                    "10.0.0.5",
                    "--known-hosts",
                    "/nonexistent/kh",
                ],
                "--known-hosts /nonexistent/kh: no such file",
            ),
        ] {
            let mut argv = argv.clone();
            argv.extend(["--name", "ssh-unit-test"]);
            let err = check_create_args(create_args(&argv))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{argv:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let ok = check_create_args(create_args(&[
            "--provider",
            "ssh",
            "--host",
            "10.0.0.5",
            "--host",
            "w=deploy@10.0.0.6:2222",
            "--host-key-fingerprint",
            &format!("w={FP}"),
        ]))
        .unwrap();
        assert_eq!(ok.nodes, Some(2));
    }

    #[test]
    fn ssh_machines_are_named_after_their_hosts_managers_first() {
        let args = create_args(&[
            "--provider",
            "ssh",
            "--host",
            "root@10.0.0.5",
            "--host",
            "node2.example.org",
            "--host",
            "db=10.0.0.7:2222",
        ]);
        let choice = ProviderChoice::for_create(&args, None);
        let planned = planned_machines(&choice, "prod", 1).unwrap();
        let names: Vec<_> = planned.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["prod-10-0-0-5", "prod-node2", "prod-db"]);
        assert_eq!(planned[0].role, swarmup_providers::Role::Manager);
        assert_eq!(planned[1].role, swarmup_providers::Role::Worker);
        assert!(planned_machines(&ProviderChoice::default(), "prod", 1).is_none());
        // A resumed create finds the hosts in the record.
        let record = ClusterRecord {
            name: "prod".into(),
            provider: "ssh".into(),
            created_at: String::new(),
            machines: vec![],
            last_seen: vec![],
            provider_options: choice.recorded(),
            engine: Default::default(),
        };
        let again = ProviderChoice::for_create(&create_args(&["--provider", "ssh"]), Some(&record));
        assert_eq!(again.hosts, choice.hosts);
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
