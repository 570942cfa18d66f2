use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{md5_fingerprint, ApiCallCount, DoClient, RetryPolicy, DEFAULT_API_URL};
use super::clock::{lock, Clock, SystemClock};
use super::error::DoError;
use super::firewall::{
    cluster_firewall, firewall_matches, keeping_published_rules, published_changes,
    published_rules, with_published_rules, MAX_RULES, SSH_FROM_ANYWHERE,
};
use super::types::{Droplet, DropletCreate, Size};
use crate::{
    ClusterPlan, DefaultAdminSources, DestroyReport, DryRun, DryRunMachine, FirewallSync, Machine,
    MachinePlan, PowerState, Progress, Provider, ProviderError, PublishedPort, Role, SshEndpoint,
    CONTROL_PORT,
};

/// Every droplet swarmup makes carries this tag.
pub const TAG_ALL: &str = "swarmup";
/// DigitalOcean sends at most this many names in one create call.
pub const MAX_NAMES_PER_CALL: usize = 10;
/// DigitalOcean's limit on `user_data`.
pub const MAX_USER_DATA: usize = 64 * 1024;

/// `swarmup:CLUSTER`: finds every droplet of a cluster and scopes its firewall rules.
pub fn cluster_tag(cluster: &str) -> String {
    format!("swarmup:{cluster}")
}

/// `swarmup-role:manager` or `swarmup-role:worker`.
pub fn role_tag(role: Role) -> String {
    format!("swarmup-role:{role}")
}

/// The tags of a droplet of `plan` with `role`: swarmup's own, then the plan's.
pub(super) fn droplet_tags(plan: &ClusterPlan, role: Role) -> Vec<String> {
    let mut tags = vec![
        TAG_ALL.to_string(),
        cluster_tag(&plan.cluster),
        role_tag(role),
    ];
    for t in &plan.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags
}

/// DigitalOcean takes letters, digits, `:`, `-` and `_` in a tag, at most 255.
pub(super) fn check_tag(tag: &str) -> Result<(), ProviderError> {
    let ok = !tag.is_empty()
        && tag.len() <= 255
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "tag {tag:?} can not be used on DigitalOcean: use letters, digits, ':', '-' and '_' (at most 255)"
        )))
    }
}

/// `swarmup-CLUSTER`: the name of the cluster's firewall and of its generated SSH key.
pub fn resource_name(cluster: &str) -> String {
    format!("swarmup-{cluster}")
}

/// Which SSH key DigitalOcean puts on the droplets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshKeyChoice {
    /// A key already on the account, found by its MD5 fingerprint (`aa:bb:...`, as the
    /// control panel shows it). swarmup never deletes it.
    Existing { fingerprint: String },
    /// The plan's `login_public_key`, uploaded as `swarmup-CLUSTER` and deleted on destroy.
    /// When the account already holds that key under another name, that key is used and
    /// left alone.
    PerCluster,
}

/// Renders the cloud-init user data for machines that DigitalOcean creates in one call.
/// All of them receive the same text, so anything that differs per machine (host keys)
/// has to be chosen on the machine, e.g. by its hostname, which is the droplet name.
/// Setting [`DigitalOceanOptions::names_per_call`] to 1 gives every machine its own text.
pub trait UserData: Send + Sync {
    fn render(
        &self,
        cluster: &ClusterPlan,
        machines: &[MachinePlan],
    ) -> Result<String, ProviderError>;
}

impl<F> UserData for F
where
    F: Fn(&ClusterPlan, &[MachinePlan]) -> Result<String, ProviderError> + Send + Sync,
{
    fn render(
        &self,
        cluster: &ClusterPlan,
        machines: &[MachinePlan],
    ) -> Result<String, ProviderError> {
        self(cluster, machines)
    }
}

/// Everything the DigitalOcean provider is configured with.
#[derive(Clone)]
pub struct DigitalOceanOptions {
    pub token: String,
    /// [`DEFAULT_API_URL`] unless `DIGITALOCEAN_API_URL` says otherwise.
    pub api_url: String,
    pub region: String,
    pub size: String,
    pub image: String,
    pub ssh_key: SshKeyChoice,
    /// CIDRs SSH is open from; empty means anywhere (with a warning).
    pub ssh_from: Vec<String>,
    pub ssh_user: String,
    pub monitoring: bool,
    /// A VPC of the region; `None` puts droplets in the region's default VPC.
    pub vpc_uuid: Option<String>,
    /// Names per create call, 1 to 10.
    pub names_per_call: usize,
    /// How long new droplets may take to become active.
    pub boot_timeout: Duration,
    /// Between list-by-tag calls while droplets boot. One call covers every droplet, so
    /// a 1 s poll stays far below DigitalOcean's rate limit and keeps the time swarmup
    /// adds after the slowest boot short.
    pub poll_interval: Duration,
    /// Between the listings of a whole workshop's droplets (`create_many`): one call
    /// covers up to 200 droplets, and a few seconds leave most of the per-minute budget
    /// to the create calls.
    pub workshop_poll_interval: Duration,
    /// How long a power action may take.
    pub action_timeout: Duration,
    pub retry: RetryPolicy,
}

impl DigitalOceanOptions {
    /// The defaults: nyc3, s-1vcpu-1gb, ubuntu-24-04-x64, a per-cluster key, SSH from anywhere.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            api_url: DEFAULT_API_URL.to_string(),
            region: "nyc3".into(),
            size: "s-1vcpu-1gb".into(),
            image: "ubuntu-24-04-x64".into(),
            ssh_key: SshKeyChoice::PerCluster,
            ssh_from: Vec::new(),
            ssh_user: "root".into(),
            monitoring: false,
            vpc_uuid: None,
            names_per_call: MAX_NAMES_PER_CALL,
            boot_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(1),
            workshop_poll_interval: Duration::from_secs(3),
            action_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for DigitalOceanOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOceanOptions")
            .field("token", &"<hidden>")
            .field("api_url", &self.api_url)
            .field("region", &self.region)
            .field("size", &self.size)
            .field("image", &self.image)
            .field("ssh_key", &self.ssh_key)
            .field("ssh_from", &self.ssh_from)
            .field("ssh_user", &self.ssh_user)
            .field("monitoring", &self.monitoring)
            .field("vpc_uuid", &self.vpc_uuid)
            .field("names_per_call", &self.names_per_call)
            .field("boot_timeout", &self.boot_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("workshop_poll_interval", &self.workshop_poll_interval)
            .field("action_timeout", &self.action_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// What `create` would do and what it costs: the answer to `--dry-run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoPlan {
    pub cluster: String,
    pub region: String,
    pub size: String,
    pub image: String,
    /// Machines in the plan.
    pub machines: usize,
    /// Plan machines that already exist as droplets of the cluster.
    pub existing: Vec<String>,
    pub to_create: Vec<String>,
    /// `POST /v2/droplets` calls that `create` would make.
    pub create_calls: usize,
    pub droplet_limit: u32,
    pub droplets_in_account: u64,
    /// Price of one droplet.
    pub price_hourly: f64,
    pub price_monthly: f64,
    /// Price of all machines of the plan.
    pub total_hourly: f64,
    pub total_monthly: f64,
    /// How SSH keys are handled, for the user.
    pub ssh_key: String,
    pub ssh_from: Vec<String>,
    pub warnings: Vec<String>,
}

impl fmt::Display for DoPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(
            f,
            "cluster {}: {} droplets of size {} ({}) in {}",
            self.cluster, self.machines, self.size, self.image, self.region
        )?;
        writeln!(f, "  to create: {}", list(&self.to_create))?;
        writeln!(f, "  already there: {}", list(&self.existing))?;
        writeln!(
            f,
            "  cost: ${:.4}/hour, ${:.2}/month for the cluster (${:.5}/hour, ${:.2}/month per droplet)",
            self.total_hourly, self.total_monthly, self.price_hourly, self.price_monthly
        )?;
        writeln!(
            f,
            "  account: {} of {} droplets in use",
            self.droplets_in_account, self.droplet_limit
        )?;
        writeln!(f, "  ssh key: {}", self.ssh_key)?;
        write!(f, "  ssh open from: {}", self.ssh_from.join(", "))?;
        for w in &self.warnings {
            write!(f, "\n  warning: {w}")?;
        }
        Ok(())
    }
}

struct Checked {
    cluster: String,
    names: Vec<String>,
    at: Instant,
    key_id: Option<u64>,
}

/// How long a `preflight` stays good enough for the `create` that follows it.
const CHECK_REUSE: Duration = Duration::from_secs(600);

/// Creates clusters as tagged droplets in one region, behind one cloud firewall.
pub struct DigitalOceanProvider {
    pub(super) options: DigitalOceanOptions,
    pub(super) client: DoClient,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) user_data: Arc<dyn UserData>,
    checked: Mutex<Option<Checked>>,
    pub(super) created: Mutex<BTreeMap<String, Vec<u64>>>,
}

impl fmt::Debug for DigitalOceanProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOceanProvider")
            .field("options", &self.options)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

pub(super) fn invalid(msg: impl Into<String>) -> ProviderError {
    ProviderError::InvalidRequest(msg.into())
}

/// Tags, firewall names and droplet names all take this safely.
fn check_cluster_name(cluster: &str) -> Result<(), ProviderError> {
    let ok = !cluster.is_empty()
        && cluster.len() <= 60
        && cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !cluster.starts_with('-')
        && !cluster.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "cluster name {cluster:?} can not be used on DigitalOcean: use letters, digits and '-' \
             (at most 60), starting and ending with a letter or digit"
        )))
    }
}

fn check_droplet_name(name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && !name.starts_with('-')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "machine name {name:?} can not be a droplet name: use letters, digits, '.' and '-', \
             starting and ending with a letter or digit"
        )))
    }
}

fn check_cidr(cidr: &str) -> Result<(), ProviderError> {
    check_source("ssh source", cidr)
}

fn check_source(what: &str, cidr: &str) -> Result<(), ProviderError> {
    let bad = || {
        invalid(format!(
            "{what} {cidr:?} is not an address or CIDR: use e.g. 203.0.113.7/32 or 2001:db8::/48"
        ))
    };
    let (addr, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    if let Some(p) = prefix {
        let p: u8 = p.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if p > max {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_fingerprint(fp: &str) -> Result<(), ProviderError> {
    let parts: Vec<&str> = fp.split(':').collect();
    let ok = parts.len() == 16
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "ssh key fingerprint {fp:?} is not an MD5 fingerprint: give it as aa:bb:...:ff \
             (ssh-keygen -E md5 -lf KEY.pub shows it)"
        )))
    }
}

fn role_of(d: &Droplet) -> Role {
    if d.has_tag(&role_tag(Role::Manager)) {
        Role::Manager
    } else {
        Role::Worker
    }
}

pub(super) fn is_ready(d: &Droplet) -> bool {
    d.status != "new" && d.public_ipv4().is_some() && d.private_ipv4().is_some()
}

fn short_list(v: &[String], max: usize) -> String {
    if v.len() <= max {
        v.join(", ")
    } else {
        format!("{}, ... ({} in all)", v[..max].join(", "), v.len())
    }
}

impl DigitalOceanProvider {
    pub fn new(
        options: DigitalOceanOptions,
        user_data: Arc<dyn UserData>,
    ) -> Result<Self, ProviderError> {
        Self::with_clock(options, user_data, Arc::new(SystemClock))
    }

    /// Like [`DigitalOceanProvider::new`] with every wait going through `clock`.
    pub fn with_clock(
        options: DigitalOceanOptions,
        user_data: Arc<dyn UserData>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ProviderError> {
        if options.token.trim().is_empty() {
            return Err(ProviderError::Prerequisite(
                "no DigitalOcean api token given: create one with read and write scope at \
                 https://cloud.digitalocean.com/account/api/tokens"
                    .into(),
            ));
        }
        for (what, value) in [
            ("region", &options.region),
            ("size", &options.size),
            ("image", &options.image),
            ("ssh user", &options.ssh_user),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!(
                    "the DigitalOcean {what} is empty: give one"
                )));
            }
        }
        if !(1..=MAX_NAMES_PER_CALL).contains(&options.names_per_call) {
            return Err(invalid(format!(
                "names per create call is {}: use 1 to {MAX_NAMES_PER_CALL}",
                options.names_per_call
            )));
        }
        for cidr in &options.ssh_from {
            check_cidr(cidr)?;
        }
        if let SshKeyChoice::Existing { fingerprint } = &options.ssh_key {
            check_fingerprint(fingerprint)?;
        }
        let client = DoClient::new(
            &options.api_url,
            options.token.trim(),
            options.retry.clone(),
            clock.clone(),
        )?;
        Ok(Self {
            options,
            client,
            clock,
            user_data,
            checked: Mutex::new(None),
            created: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn options(&self) -> &DigitalOceanOptions {
        &self.options
    }

    pub fn client(&self) -> &DoClient {
        &self.client
    }

    /// Requests sent so far, polls and retries apart.
    pub fn api_calls(&self) -> ApiCallCount {
        self.client.api_calls()
    }

    /// Ids of the droplets the last `create` of `cluster` made, also when it failed; what
    /// `--rollback-on-failure` passes to [`DigitalOceanProvider::rollback`].
    pub fn created_ids(&self, cluster: &str) -> Vec<String> {
        lock(&self.created)
            .get(cluster)
            .map(|ids| ids.iter().map(u64::to_string).collect())
            .unwrap_or_default()
    }

    pub(super) fn validate(&self, plan: &ClusterPlan) -> Result<(), ProviderError> {
        check_cluster_name(&plan.cluster)?;
        if plan.machines.is_empty() {
            return Err(invalid(format!(
                "cluster {} has no machines: ask for at least one node",
                plan.cluster
            )));
        }
        for t in &plan.tags {
            check_tag(t)?;
        }
        let mut seen = BTreeSet::new();
        for m in &plan.machines {
            check_droplet_name(&m.name)?;
            if !seen.insert(m.name.as_str()) {
                return Err(invalid(format!(
                    "machine name {} appears twice in cluster {}: give every machine its own name",
                    m.name, plan.cluster
                )));
            }
        }
        if self.options.ssh_key == SshKeyChoice::PerCluster
            && md5_fingerprint(&plan.login_public_key).is_none()
        {
            return Err(invalid(format!(
                "the login public key of cluster {} is not an OpenSSH public key line \
                 (ssh-ed25519 AAAA...): generate one with ssh-keygen -t ed25519",
                plan.cluster
            )));
        }
        Ok(())
    }

    fn ssh_from(&self) -> Vec<String> {
        if self.options.ssh_from.is_empty() {
            SSH_FROM_ANYWHERE.iter().map(|s| s.to_string()).collect()
        } else {
            self.options.ssh_from.clone()
        }
    }

    pub(super) fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.options.ssh_from.is_empty() {
            w.push(
                "ssh (22/tcp) is open to 0.0.0.0/0 and ::/0, and so is the Docker API \
                 (2377/tcp, client certificate required): give the addresses you connect from \
                 to restrict both"
                    .to_string(),
            );
        }
        w
    }

    /// Finds the size and checks it is offered in the region; looks at the region list only
    /// when it is not, to say exactly what is wrong.
    pub(super) async fn check_size(&self) -> Result<Size, ProviderError> {
        let (region, size) = (&self.options.region, &self.options.size);
        let sizes = self.client.sizes().await?;
        let available: Vec<String> = sizes
            .iter()
            .filter(|s| s.available)
            .map(|s| s.slug.clone())
            .collect();
        let Some(found) = sizes.iter().find(|s| &s.slug == size) else {
            return Err(invalid(format!(
                "unknown droplet size {size}: pick one of {} (doctl compute size list shows all)",
                short_list(&available, 8)
            )));
        };
        if !found.available {
            return Err(invalid(format!(
                "droplet size {size} is not available now: pick another, e.g. {}",
                short_list(&available, 5)
            )));
        }
        if found.regions.iter().any(|r| r == region) {
            return Ok(found.clone());
        }
        let regions = self.client.regions().await?;
        let open: Vec<String> = regions
            .iter()
            .filter(|r| r.available)
            .map(|r| r.slug.clone())
            .collect();
        match regions.iter().find(|r| &r.slug == region) {
            None => Err(invalid(format!(
                "unknown region {region}: pick one of {}",
                short_list(&open, 16)
            ))),
            Some(r) if !r.available => Err(invalid(format!(
                "region {region} does not take new droplets now: pick another of {}",
                short_list(&open, 16)
            ))),
            Some(r) => {
                let there: Vec<String> = r
                    .sizes
                    .iter()
                    .filter(|s| available.contains(s))
                    .cloned()
                    .collect();
                Err(invalid(format!(
                    "droplet size {size} is not offered in region {region}: pick a size offered \
                     there ({}) or a region that has it ({})",
                    short_list(&there, 6),
                    short_list(&found.regions, 8)
                )))
            }
        }
    }

    /// Looks at everything `create` needs and creates nothing.
    async fn check(
        &self,
        plan: &ClusterPlan,
    ) -> Result<(DoPlan, Option<u64>, Vec<Droplet>), ProviderError> {
        self.validate(plan)?;
        let tag = cluster_tag(&plan.cluster);
        // Independent questions, asked at once: each is a round trip before anything starts.
        let (account, in_account, droplets, size) = futures_util::try_join!(
            async { Ok::<_, ProviderError>(self.client.account().await?) },
            async { Ok(self.client.droplet_count().await?) },
            async { Ok(self.client.droplets_by_tag(&tag, false).await?) },
            self.check_size(),
        )?;
        if account.status == "locked" {
            return Err(ProviderError::Prerequisite(format!(
                "the DigitalOcean account is locked ({}): resolve it in the control panel first",
                account.status_message.trim()
            )));
        }
        let key_id = match &self.options.ssh_key {
            SshKeyChoice::Existing { fingerprint } => {
                match self.client.ssh_key_by_fingerprint(fingerprint).await? {
                    Some(k) => Some(k.id),
                    None => {
                        return Err(ProviderError::Prerequisite(format!(
                            "the DigitalOcean account has no ssh key with fingerprint {fingerprint}: \
                             upload it (doctl compute ssh-key import) or let swarmup make a key per cluster"
                        )))
                    }
                }
            }
            SshKeyChoice::PerCluster => None,
        };
        let doplan = self.summarise(plan, &droplets, &size, account.droplet_limit, in_account);
        let can_create = u64::from(account.droplet_limit).saturating_sub(in_account);
        let needs = doplan.to_create.len() as u64;
        if needs > can_create {
            return Err(ProviderError::Prerequisite(format!(
                "your DigitalOcean account can create {can_create} more droplets but the cluster \
                 needs {needs}: raise the limit (https://cloud.digitalocean.com/account/team/droplet_limit_increase) \
                 or use fewer nodes"
            )));
        }
        Ok((doplan, key_id, droplets))
    }

    fn summarise(
        &self,
        plan: &ClusterPlan,
        droplets: &[Droplet],
        size: &Size,
        droplet_limit: u32,
        in_account: u64,
    ) -> DoPlan {
        let (existing, to_create): (Vec<&MachinePlan>, Vec<&MachinePlan>) = plan
            .machines
            .iter()
            .partition(|m| droplets.iter().any(|d| d.name == m.name));
        let per_call = self.options.names_per_call;
        let create_calls = [Role::Manager, Role::Worker]
            .iter()
            .map(|role| {
                to_create
                    .iter()
                    .filter(|m| m.role == *role)
                    .count()
                    .div_ceil(per_call)
            })
            .sum();
        let n = plan.machines.len() as f64;
        let ssh_key = match &self.options.ssh_key {
            SshKeyChoice::Existing { fingerprint } => format!("existing key {fingerprint}"),
            SshKeyChoice::PerCluster => format!(
                "login key uploaded as {} and removed on destroy",
                resource_name(&plan.cluster)
            ),
        };
        DoPlan {
            cluster: plan.cluster.clone(),
            region: self.options.region.clone(),
            size: size.slug.clone(),
            image: self.options.image.clone(),
            machines: plan.machines.len(),
            existing: existing.iter().map(|m| m.name.clone()).collect(),
            to_create: to_create.iter().map(|m| m.name.clone()).collect(),
            create_calls,
            droplet_limit,
            droplets_in_account: in_account,
            price_hourly: size.price_hourly,
            price_monthly: size.price_monthly,
            total_hourly: size.price_hourly * n,
            total_monthly: size.price_monthly * n,
            ssh_key,
            ssh_from: self.ssh_from(),
            warnings: self.warnings(),
        }
    }

    /// Checks the account limit, the region and the size, and prices the cluster. Creates
    /// nothing; `--dry-run` prints the result.
    pub async fn plan(&self, plan: &ClusterPlan) -> Result<DoPlan, ProviderError> {
        let (doplan, key_id, _) = self.check(plan).await?;
        *lock(&self.checked) = Some(Checked {
            cluster: plan.cluster.clone(),
            names: plan.machines.iter().map(|m| m.name.clone()).collect(),
            at: self.clock.now(),
            key_id,
        });
        Ok(doplan)
    }

    /// A check made moments ago for the same plan, so that `preflight` then `create` does
    /// not ask the same questions twice.
    fn take_checked(&self, plan: &ClusterPlan) -> Option<Checked> {
        let checked = lock(&self.checked).take()?;
        let names: Vec<String> = plan.machines.iter().map(|m| m.name.clone()).collect();
        let fresh = self.clock.now().saturating_duration_since(checked.at) < CHECK_REUSE;
        (fresh && checked.cluster == plan.cluster && checked.names == names).then_some(checked)
    }

    async fn login_key_id(
        &self,
        plan: &ClusterPlan,
        cached: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<u64, ProviderError> {
        match &self.options.ssh_key {
            SshKeyChoice::Existing { fingerprint } => match cached {
                Some(id) => Ok(id),
                None => match self.client.ssh_key_by_fingerprint(fingerprint).await? {
                    Some(k) => Ok(k.id),
                    None => Err(ProviderError::Prerequisite(format!(
                        "the DigitalOcean account has no ssh key with fingerprint {fingerprint}: \
                         upload it (doctl compute ssh-key import) or let swarmup make a key per cluster"
                    ))),
                },
            },
            SshKeyChoice::PerCluster => {
                let fp = md5_fingerprint(&plan.login_public_key).ok_or_else(|| {
                    invalid(format!(
                        "the login public key of cluster {} is not an OpenSSH public key line",
                        plan.cluster
                    ))
                })?;
                if let Some(k) = self.client.ssh_key_by_fingerprint(&fp).await? {
                    return Ok(k.id);
                }
                let name = resource_name(&plan.cluster);
                let key = self.client.create_ssh_key(&name, &plan.login_public_key).await?;
                progress.machine(&name, &format!("ssh key {} uploaded", key.id));
                Ok(key.id)
            }
        }
    }

    pub(super) fn record_created(&self, cluster: &str, ids: impl IntoIterator<Item = u64>) {
        let mut created = lock(&self.created);
        let list = created.entry(cluster.to_string()).or_default();
        for id in ids {
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }

    /// After a failed create call, learns which droplets DigitalOcean made anyway so that
    /// a rollback can remove them.
    pub(super) async fn record_after_failure(&self, cluster: &str, before: &BTreeSet<u64>) {
        match self
            .client
            .droplets_by_tag(&cluster_tag(cluster), false)
            .await
        {
            Ok(now) => self.record_created(
                cluster,
                now.iter().map(|d| d.id).filter(|id| !before.contains(id)),
            ),
            Err(e) => {
                tracing::warn!(cluster, error = %e, "could not list droplets after a failed create")
            }
        }
    }

    /// `existed`: the cluster had droplets before this failure, so the advice to resume or
    /// destroy applies even if this run made none.
    pub(super) fn resumable(
        &self,
        cluster: &str,
        what: &str,
        e: DoError,
        existed: bool,
    ) -> ProviderError {
        let msg = e.to_string();
        if msg.contains("droplet limit") {
            return ProviderError::Prerequisite(format!(
                "{what}: {msg}: raise the droplet limit or use fewer nodes"
            ));
        }
        let made = existed
            || !lock(&self.created)
                .get(cluster)
                .is_none_or(|ids| ids.is_empty());
        let advice = if made {
            format!(
                " (the droplets made so far are kept: run create again to resume, or destroy \
                 cluster {cluster} to remove them)"
            )
        } else {
            String::new()
        };
        ProviderError::Api(format!("{what}: {msg}{advice}"))
    }

    async fn ensure_firewall(&self, cluster: &str, progress: &dyn Progress) -> Result<(), DoError> {
        let name = resource_name(cluster);
        self.put_firewall(&name, &cluster_tag(cluster), progress)
            .await?;
        self.warn(cluster, &name, progress);
        Ok(())
    }

    /// Creates firewall `name` for the droplets tagged `tag`, or repairs swarmup's own
    /// rules in it, keeping the services' published ports open.
    pub(super) async fn put_firewall(
        &self,
        name: &str,
        tag: &str,
        progress: &dyn Progress,
    ) -> Result<(), DoError> {
        let want = cluster_firewall(name, tag, &self.options.ssh_from);
        let existing = self.client.firewalls().await?;
        match existing.iter().find(|f| f.name == name) {
            Some(f) => {
                // Repairing swarmup's own rules must not close the services' ports.
                let want = keeping_published_rules(want, f);
                if !firewall_matches(f, &want) {
                    self.client.update_firewall(&f.id, &want).await?;
                    progress.machine(name, &format!("firewall {} updated", f.id));
                }
            }
            None => {
                let f = self.client.create_firewall(&want).await?;
                progress.machine(name, &format!("firewall {} created", f.id));
            }
        }
        Ok(())
    }

    pub(super) fn warn(&self, cluster: &str, name: &str, progress: &dyn Progress) {
        for w in self.warnings() {
            tracing::warn!(cluster, "{w}");
            progress.machine(name, &w);
        }
    }

    fn machine(&self, d: &Droplet) -> Machine {
        let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Machine {
            name: d.name.clone(),
            role: role_of(d),
            provider_id: d.id.to_string(),
            private_addr: d.private_ipv4().map_or(unknown, IpAddr::V4),
            ssh: SshEndpoint {
                host: d.public_ipv4().map_or(unknown, IpAddr::V4),
                port: 22,
                user: self.options.ssh_user.clone(),
            },
            power: match d.status.as_str() {
                "active" => PowerState::Running,
                "off" => PowerState::Off,
                _ => PowerState::Pending,
            },
        }
    }

    pub(super) fn machines(&self, droplets: &[Droplet]) -> Vec<Machine> {
        let mut sorted: Vec<&Droplet> = droplets.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        sorted.into_iter().map(|d| self.machine(d)).collect()
    }

    /// Polls the cluster's droplets with one list call per round until every planned
    /// machine is up with both addresses.
    async fn wait_ready(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Droplet>, ProviderError> {
        let tag = cluster_tag(&plan.cluster);
        let deadline = self.clock.now() + self.options.boot_timeout;
        let mut reported = BTreeSet::new();
        loop {
            self.clock.sleep(self.options.poll_interval).await;
            let droplets = self.client.droplets_by_tag(&tag, true).await.map_err(|e| {
                self.resumable(
                    &plan.cluster,
                    "waiting for the droplets to boot failed",
                    e,
                    true,
                )
            })?;
            let waiting = still_booting(plan, &droplets, &mut reported, progress);
            if waiting.is_empty() {
                return Ok(droplets);
            }
            if self.clock.now() + self.options.poll_interval > deadline {
                return Err(ProviderError::Api(format!(
                    "droplets of cluster {} not active within the {} s boot timeout: {}: check \
                     them at https://cloud.digitalocean.com/droplets, then run create again to \
                     resume or destroy cluster {} to remove them",
                    plan.cluster,
                    self.options.boot_timeout.as_secs(),
                    waiting.join(", "),
                    plan.cluster
                )));
            }
        }
    }

    async fn find(&self, cluster: &str, machine: &str) -> Result<Droplet, ProviderError> {
        check_cluster_name(cluster)?;
        self.client
            .droplets_by_tag(&cluster_tag(cluster), false)
            .await?
            .into_iter()
            .filter(|d| d.name == machine)
            .min_by_key(|d| d.id)
            .ok_or_else(|| ProviderError::UnknownMachine {
                cluster: cluster.to_string(),
                machine: machine.to_string(),
            })
    }

    async fn power(
        &self,
        cluster: &str,
        machine: &str,
        on: bool,
    ) -> Result<Droplet, ProviderError> {
        let d = self.find(cluster, machine).await?;
        let (kind, goal) = if on {
            ("power_on", "active")
        } else {
            ("power_off", "off")
        };
        if d.status == goal {
            return Ok(d);
        }
        let mut action = self.client.droplet_action(d.id, kind).await?;
        let started = self.clock.now();
        let deadline = started + self.options.action_timeout;
        loop {
            match action.status.as_str() {
                "completed" => break,
                "errored" => {
                    return Err(ProviderError::Api(format!(
                        "DigitalOcean could not {kind} droplet {} ({machine}): action {} errored: \
                         try again or look at the droplet in the control panel",
                        d.id, action.id
                    )))
                }
                _ => {}
            }
            if self.clock.now() + self.options.poll_interval > deadline {
                return Err(ProviderError::Api(format!(
                    "{kind} of droplet {} ({machine}) did not finish within {} s: look at the \
                     droplet in the control panel and try again",
                    d.id,
                    self.options.action_timeout.as_secs()
                )));
            }
            self.clock.sleep(self.options.poll_interval).await;
            action = self.client.action(action.id, true).await?;
        }
        let after = self.client.droplet(d.id, true).await?.ok_or_else(|| {
            ProviderError::UnknownMachine {
                cluster: cluster.to_string(),
                machine: machine.to_string(),
            }
        })?;
        Ok(after)
    }

    /// Removes the cluster's firewall and the key swarmup generated for it, found by name.
    async fn remove_firewall_and_key(
        &self,
        cluster: &str,
        report: &mut DestroyReport,
    ) -> Result<(), DoError> {
        let name = resource_name(cluster);
        for f in self.client.firewalls().await? {
            if f.name == name && self.client.delete_firewall(&f.id).await? {
                report
                    .removed
                    .push(format!("firewall {} ({})", f.id, f.name));
            }
        }
        for k in self.client.ssh_keys().await? {
            if k.name == name && self.client.delete_ssh_key(k.id).await? {
                report
                    .removed
                    .push(format!("ssh key {} ({})", k.id, k.name));
            }
        }
        Ok(())
    }

    /// Undoes a failed `create`: deletes the droplets with `created_ids` (see
    /// [`DigitalOceanProvider::created_ids`]) and, when the cluster has no droplet left,
    /// its firewall and generated key.
    pub async fn rollback(
        &self,
        cluster: &str,
        created_ids: &[String],
    ) -> Result<DestroyReport, ProviderError> {
        check_cluster_name(cluster)?;
        let mut ids = Vec::new();
        for id in created_ids {
            ids.push(id.trim().parse::<u64>().map_err(|_| {
                invalid(format!(
                    "droplet id {id:?} is not a number: pass the ids create reported"
                ))
            })?);
        }
        let tag = cluster_tag(cluster);
        let before = self.client.droplets_by_tag(&tag, false).await?;
        let mut report = DestroyReport::default();
        for id in &ids {
            if self.client.delete_droplet(*id).await? {
                let name = before
                    .iter()
                    .find(|d| d.id == *id)
                    .map_or_else(String::new, |d| format!(" ({})", d.name));
                report.removed.push(format!("droplet {id}{name}"));
            }
        }
        let left = before.iter().any(|d| !ids.contains(&d.id));
        if !left {
            self.remove_firewall_and_key(cluster, &mut report).await?;
        }
        lock(&self.created).remove(cluster);
        Ok(report)
    }
}

/// The planned machines of `plan` not yet up among `droplets` (`NAME (status)`), each
/// machine that came up told once through `progress` (`reported` remembers which).
pub(super) fn still_booting(
    plan: &ClusterPlan,
    droplets: &[Droplet],
    reported: &mut BTreeSet<String>,
    progress: &dyn Progress,
) -> Vec<String> {
    let mut waiting = Vec::new();
    for m in &plan.machines {
        match droplets.iter().find(|d| d.name == m.name) {
            Some(d) if is_ready(d) => {
                if reported.insert(m.name.clone()) {
                    progress.machine(
                        &m.name,
                        &format!(
                            "droplet {} {}: ssh {}, advertise {}",
                            d.id,
                            d.status,
                            d.public_ipv4().map(|a| a.to_string()).unwrap_or_default(),
                            d.private_ipv4().map(|a| a.to_string()).unwrap_or_default()
                        ),
                    );
                }
            }
            Some(d) => waiting.push(format!("{} ({})", m.name, d.status)),
            None => waiting.push(format!("{} (not listed)", m.name)),
        }
    }
    waiting
}

#[async_trait::async_trait]
impl Provider for DigitalOceanProvider {
    fn name(&self) -> &'static str {
        "digitalocean"
    }

    async fn preflight(&self, plan: &ClusterPlan) -> Result<(), ProviderError> {
        self.plan(plan).await.map(|_| ())
    }

    async fn create(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        self.validate(plan)?;
        let cluster = plan.cluster.as_str();
        let tag = cluster_tag(cluster);
        lock(&self.created).insert(cluster.to_string(), Vec::new());

        let (key_cache, existing) = match self.take_checked(plan) {
            Some(c) => (c.key_id, self.client.droplets_by_tag(&tag, false).await?),
            None => {
                let (_, key_id, droplets) = self.check(plan).await?;
                (key_id, droplets)
            }
        };
        let key_id = self.login_key_id(plan, key_cache, progress).await?;
        let before: BTreeSet<u64> = existing.iter().map(|d| d.id).collect();

        let mut missing = Vec::new();
        for m in &plan.machines {
            match existing
                .iter()
                .filter(|d| d.name == m.name)
                .min_by_key(|d| d.id)
            {
                Some(d) => progress.machine(
                    &m.name,
                    &format!("droplet {} exists ({}), kept", d.id, d.status),
                ),
                None => missing.push(m.clone()),
            }
        }

        for role in [Role::Manager, Role::Worker] {
            let group: Vec<MachinePlan> =
                missing.iter().filter(|m| m.role == role).cloned().collect();
            for chunk in group.chunks(self.options.names_per_call) {
                let names: Vec<String> = chunk.iter().map(|m| m.name.clone()).collect();
                let user_data = self.user_data.render(plan, chunk)?;
                if user_data.len() > MAX_USER_DATA {
                    return Err(invalid(format!(
                        "user data for {} is {} bytes, DigitalOcean takes at most {MAX_USER_DATA}: \
                         shorten the cloud-init template",
                        names.join(", "),
                        user_data.len()
                    )));
                }
                let body = DropletCreate {
                    names: names.clone(),
                    region: self.options.region.clone(),
                    size: self.options.size.clone(),
                    image: self.options.image.clone(),
                    ssh_keys: vec![key_id],
                    tags: droplet_tags(plan, role),
                    user_data: (!user_data.is_empty()).then_some(user_data),
                    vpc_uuid: self.options.vpc_uuid.clone(),
                    monitoring: self.options.monitoring,
                    ipv6: false,
                    backups: false,
                };
                for m in chunk {
                    progress.machine(
                        &m.name,
                        &format!(
                            "creating {role} droplet ({} in {})",
                            self.options.size, self.options.region
                        ),
                    );
                }
                let what = format!(
                    "creating droplets {} of cluster {cluster}",
                    names.join(", ")
                );
                match self.client.create_droplets(&body).await {
                    Ok(made) => {
                        self.record_created(cluster, made.iter().map(|d| d.id));
                        for d in &made {
                            progress.machine(&d.name, &format!("droplet {} created", d.id));
                        }
                        let lacking: Vec<&String> = names
                            .iter()
                            .filter(|n| !made.iter().any(|d| &d.name == *n))
                            .collect();
                        if !lacking.is_empty() {
                            let lacking: Vec<&str> = lacking.iter().map(|s| s.as_str()).collect();
                            return Err(ProviderError::Api(format!(
                                "{what}: DigitalOcean made only {} of {} droplets, not {}: run \
                                 create again to make the rest, or destroy cluster {cluster}",
                                made.len(),
                                names.len(),
                                lacking.join(", ")
                            )));
                        }
                    }
                    Err(e) => {
                        self.record_after_failure(cluster, &before).await;
                        return Err(self.resumable(cluster, &what, e, !before.is_empty()));
                    }
                }
            }
        }

        self.ensure_firewall(cluster, progress).await.map_err(|e| {
            self.resumable(
                cluster,
                &format!("setting up the firewall of cluster {cluster}"),
                e,
                true,
            )
        })?;

        let all_ready = missing.is_empty()
            && plan
                .machines
                .iter()
                .all(|m| existing.iter().any(|d| d.name == m.name && is_ready(d)));
        let droplets = if all_ready {
            existing
        } else {
            self.wait_ready(plan, progress).await?
        };
        Ok(self.machines(&droplets))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, ProviderError> {
        check_cluster_name(cluster)?;
        let droplets = self
            .client
            .droplets_by_tag(&cluster_tag(cluster), false)
            .await?;
        Ok(self.machines(&droplets))
    }

    async fn clusters(&self) -> Result<Vec<String>, ProviderError> {
        let mut names = BTreeSet::new();
        for d in self.client.droplets_by_tag(TAG_ALL, false).await? {
            for t in &d.tags {
                if let Some(c) = t.strip_prefix("swarmup:") {
                    names.insert(c.to_string());
                }
            }
        }
        // A cluster whose droplets are gone but whose firewall is left still needs a destroy.
        for f in self.client.firewalls().await? {
            if let Some(c) = f.name.strip_prefix("swarmup-") {
                if f.tags.contains(&cluster_tag(c)) {
                    names.insert(c.to_string());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    async fn destroy(&self, cluster: &str) -> Result<DestroyReport, ProviderError> {
        check_cluster_name(cluster)?;
        let tag = cluster_tag(cluster);
        let mut report = DestroyReport::default();
        let mut droplets = self.client.droplets_by_tag(&tag, false).await?;
        if !droplets.is_empty() {
            self.client.delete_droplets_by_tag(&tag).await?;
            droplets.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            for d in &droplets {
                report
                    .removed
                    .push(format!("droplet {} ({})", d.id, d.name));
            }
        }
        self.remove_firewall_and_key(cluster, &mut report).await?;
        lock(&self.created).remove(cluster);
        Ok(report)
    }

    async fn power_off(&self, cluster: &str, machine: &str) -> Result<(), ProviderError> {
        self.power(cluster, machine, false).await.map(|_| ())
    }

    async fn power_on(&self, cluster: &str, machine: &str) -> Result<Machine, ProviderError> {
        let d = self.power(cluster, machine, true).await?;
        Ok(self.machine(&d))
    }

    fn has_cloud_firewall(&self) -> bool {
        true
    }

    async fn dry_run(&self, plan: &ClusterPlan) -> Result<DryRun, ProviderError> {
        let p = self.plan(plan).await?;
        let machines = plan
            .machines
            .iter()
            .map(|m| {
                let exists = p.existing.contains(&m.name);
                let json = serde_json::json!({
                    "region": p.region, "size": p.size, "price_hourly": p.price_hourly,
                    "price_monthly": p.price_monthly, "exists": exists,
                });
                DryRunMachine {
                    name: m.name.clone(),
                    role: m.role,
                    cells: vec![
                        p.region.clone(),
                        p.size.clone(),
                        format!("${:.5}", p.price_hourly),
                        format!("${:.2}", p.price_monthly),
                        if exists { "exists" } else { "to create" }.to_string(),
                    ],
                    json: match json {
                        serde_json::Value::Object(map) => map,
                        _ => serde_json::Map::new(),
                    },
                }
            })
            .collect();
        let detail = |k: &str, v: String| (k.to_string(), v);
        Ok(DryRun {
            title: "DigitalOcean".to_string(),
            columns: ["REGION", "SIZE", "PER HOUR", "PER MONTH", "STATE"]
                .map(String::from)
                .to_vec(),
            machines,
            total: Some(vec![
                String::new(),
                String::new(),
                String::new(),
                format!("${:.5}", p.total_hourly),
                format!("${:.2}", p.total_monthly),
                format!("{} to create", p.to_create.len()),
            ]),
            details: vec![
                detail("image", p.image.clone()),
                detail("ssh key", p.ssh_key.clone()),
                detail(
                    "open from",
                    format!(
                        "{} (ssh 22/tcp and the Docker API {CONTROL_PORT}/tcp)",
                        p.ssh_from.join(", ")
                    ),
                ),
                detail(
                    "account",
                    format!(
                        "{} of {} droplets in use; {} create call(s)",
                        p.droplets_in_account, p.droplet_limit, p.create_calls
                    ),
                ),
            ],
            warnings: p.warnings.clone(),
            plan: serde_json::to_value(&p)
                .map_err(|e| ProviderError::Api(format!("cannot show the plan: {e}")))?,
        })
    }

    /// Only the droplets the failed run made go (whether or not the cluster is new): the
    /// firewall and key go with the cluster's last droplet.
    async fn rollback_run(
        &self,
        cluster: &str,
        _new_cluster: bool,
    ) -> Result<DestroyReport, ProviderError> {
        self.rollback(cluster, &self.created_ids(cluster)).await
    }

    // Droplets see this host through NAT at an address unknown here, so without
    // `--ssh-from` they take the Docker API from anywhere, as their cloud firewall does.
    fn default_admin_sources(&self) -> DefaultAdminSources {
        DefaultAdminSources::Anywhere
    }

    fn api_call_count(&self) -> Option<ApiCallCount> {
        Some(self.api_calls())
    }

    /// A workshop's plans (all with the same `swarmup-workshop:NAME` tag) share one budget
    /// of API calls; any other set is created cluster by cluster.
    async fn create_many(
        &self,
        plans: &[ClusterPlan],
        progress: &dyn Progress,
    ) -> Vec<Result<Vec<Machine>, ProviderError>> {
        match super::workshop::common_workshop(plans) {
            Some(workshop) => self.create_workshop(&workshop, plans, progress).await,
            None => crate::create_each(self, plans, progress).await,
        }
    }

    /// One quota check for the whole workshop (about five calls), not one per cluster.
    async fn preflight_many(&self, plans: &[ClusterPlan]) -> Result<(), ProviderError> {
        match super::workshop::common_workshop(plans) {
            Some(_) => self.workshop_preflight(plans).await.map(|_| ()),
            None => crate::preflight_each(self, plans).await,
        }
    }

    async fn dry_run_many(
        &self,
        plans: &[ClusterPlan],
        ttl: std::time::Duration,
    ) -> Result<DryRun, ProviderError> {
        self.workshop_dry_run(plans, ttl).await
    }

    async fn cluster_tags(&self) -> Result<BTreeMap<String, Vec<String>>, ProviderError> {
        self.tags_of_clusters().await
    }

    async fn destroy_tagged(&self, tag: &str) -> Result<DestroyReport, ProviderError> {
        self.destroy_by_tag(tag).await
    }

    async fn sync_published_ports(
        &self,
        cluster: &str,
        ports: &[PublishedPort],
        from: &[String],
    ) -> Result<FirewallSync, ProviderError> {
        check_cluster_name(cluster)?;
        for cidr in from {
            check_source("--publish-from", cidr)?;
        }
        let name = resource_name(cluster);
        let firewalls = self.client.firewalls().await?;
        let Some(have) = firewalls.iter().find(|f| f.name == name) else {
            // A workshop's clusters share one firewall; one student's ports are not
            // opened on every student's droplets.
            let droplets = self
                .client
                .droplets_by_tag(&cluster_tag(cluster), false)
                .await?;
            if let Some(w) = droplets
                .iter()
                .find_map(|d| crate::workshop::workshop_of(&d.tags))
            {
                return Err(invalid(format!(
                    "cluster {cluster} belongs to workshop {w}, whose droplets share firewall {}: \
                     published ports are not opened per student cluster; reach them over ssh \
                     (ssh -L) or add a rule to that firewall yourself",
                    super::workshop::workshop_resource_name(w)
                )));
            }
            return Err(invalid(format!(
                "cluster {cluster} has no firewall {name} on DigitalOcean: run \
                 `swarmup create --provider digitalocean --name {cluster}` again to restore it"
            )));
        };
        let (rules, skipped) = published_rules(ports, from);
        let want = with_published_rules(have, rules);
        let total = want.inbound_rules.len() + want.outbound_rules.len();
        if total > MAX_RULES {
            return Err(invalid(format!(
                "the published ports need {total} firewall rules and DigitalOcean takes at most \
                 {MAX_RULES} per firewall: publish fewer ports, or consecutive ones (a run of \
                 ports is one rule)"
            )));
        }
        let (opened, closed) = published_changes(have, &want);
        // Nothing is sent when the firewall already says the same: a sync after every
        // service change costs one GET.
        if !firewall_matches(have, &want) {
            self.client
                .update_firewall(&have.id, &want)
                .await
                .map_err(|e| {
                    ProviderError::Api(format!("updating firewall {} ({name}): {e}", have.id))
                })?;
        }
        Ok(FirewallSync::Synced {
            firewall: format!("{} ({name})", have.id),
            opened,
            closed,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cidrs_are_checked() {
        assert!(check_cluster_name("web-1").is_ok());
        assert!(check_cluster_name("-web").is_err());
        assert!(check_cluster_name("web_1").is_err());
        assert!(check_cluster_name("").is_err());
        assert!(check_droplet_name("web-node1").is_ok());
        assert!(check_droplet_name("web-node1-").is_err());
        assert!(check_cidr("203.0.113.7/32").is_ok());
        assert!(check_cidr("2001:db8::/48").is_ok());
        assert!(check_cidr("203.0.113.7").is_ok());
        assert!(check_cidr("203.0.113.7/33").is_err());
        assert!(check_cidr("example.com").is_err());
        assert!(check_fingerprint("f5:a4:be:64:6f:c9:df:3f:cb:41:f7:72:42:27:92:81").is_ok());
        assert!(check_fingerprint("SHA256:abc").is_err());
    }

    #[test]
    fn options_are_validated_up_front() {
        let ud: Arc<dyn UserData> =
            Arc::new(|_: &ClusterPlan, _: &[MachinePlan]| Ok(String::new()));
        let err = DigitalOceanProvider::new(DigitalOceanOptions::new(""), ud.clone()).unwrap_err();
        assert!(
            err.to_string().contains("no DigitalOcean api token"),
            "{err}"
        );
        let mut o = DigitalOceanOptions::new("t");
        o.names_per_call = 11;
        assert!(DigitalOceanProvider::new(o, ud.clone()).is_err());
        let mut o = DigitalOceanOptions::new("t");
        o.ssh_from = vec!["nope".into()];
        let err = DigitalOceanProvider::new(o, ud.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nope\""), "{err}");
        let p = DigitalOceanProvider::new(DigitalOceanOptions::new("secret-token"), ud).unwrap();
        assert!(!format!("{p:?}").contains("secret-token"));
    }
}
