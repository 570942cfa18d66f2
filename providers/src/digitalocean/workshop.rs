//! A workshop's clusters made together: one budget of API calls for all of them.
//!
//! Thirty clusters made one by one would each check the account, upload a key, make a
//! firewall and poll every second: about 1,800 requests a minute against DigitalOcean's
//! 250. Made together they share the checks (once), the login keys (once per distinct
//! key), one firewall selected by the workshop tag, and one listing by that tag every few
//! seconds; only the create calls stay per cluster (see [`create_jobs`] for why).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::client::md5_fingerprint;
use super::clock::lock;
use super::error::DoError;
use super::provider::{
    check_tag, cluster_tag, droplet_tags, invalid, is_ready, resource_name, DigitalOceanProvider,
    SshKeyChoice, MAX_USER_DATA, TAG_ALL,
};
use super::types::{Droplet, DropletCreate, SshKey};
use crate::workshop::{workshop_of, WORKSHOP_TAG_PREFIX};
use crate::{
    ClusterPlan, DestroyReport, DryRun, DryRunMachine, Machine, MachinePlan, Progress,
    ProviderError, Role,
};

/// Create calls in flight at once: enough to hide the round trip, few enough that the
/// calls of one workshop stay in order of clusters.
const CONCURRENT_CREATES: usize = 4;

/// How long a droplet typically takes to boot, for the estimate of polls in a dry run.
const TYPICAL_BOOT: Duration = Duration::from_secs(60);

/// `swarmup-workshop-NAME`: the workshop's firewall, and a login key its clusters share.
pub fn workshop_resource_name(workshop: &str) -> String {
    format!("swarmup-workshop-{workshop}")
}

/// What `create_many` will do for a workshop, and what it costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkshopPlan {
    pub workshop: String,
    pub region: String,
    pub size: String,
    pub image: String,
    pub clusters: usize,
    /// Machines in all plans.
    pub machines: usize,
    /// Machines that already exist as droplets of their cluster.
    pub existing: usize,
    pub to_create: usize,
    /// `POST /v2/droplets` calls: per cluster and role, ten names each.
    pub create_calls: usize,
    /// Login keys to upload (once per distinct key the account lacks).
    pub key_uploads: usize,
    /// Listings of the workshop's droplets while they boot, for a typical boot.
    pub polls: usize,
    pub poll_interval_secs: u64,
    /// Every request of the create, polls included, for a typical boot.
    pub api_calls: usize,
    pub droplet_limit: u32,
    pub droplets_in_account: u64,
    /// `droplet_limit` minus the droplets in the account.
    pub can_create: u64,
    /// Whether `to_create` fits into `can_create`.
    pub fits: bool,
    /// Price of one droplet.
    pub price_hourly: f64,
    /// Price of all the workshop's droplets.
    pub total_hourly: f64,
    pub warnings: Vec<String>,
}

impl WorkshopPlan {
    /// The one-line refusal when the workshop does not fit the account's droplet limit.
    pub fn quota_error(&self) -> Option<ProviderError> {
        (!self.fits).then(|| {
            ProviderError::Prerequisite(format!(
                "your DigitalOcean account can create {} more droplets but workshop {} needs {}: \
                 raise the limit days ahead (https://cloud.digitalocean.com/account/team/droplet_limit_increase) \
                 or plan fewer students or nodes",
                self.can_create, self.workshop, self.to_create
            ))
        })
    }
}

/// What the shared checks found.
struct Survey {
    plan: WorkshopPlan,
    /// The workshop's droplets.
    droplets: Vec<Droplet>,
    /// The account's keys (with a per-cluster key) or the chosen existing key.
    keys: Vec<SshKey>,
}

/// One `POST /v2/droplets`: machines of one cluster and role.
struct Job {
    plan: usize,
    role: Role,
    machines: Vec<MachinePlan>,
}

/// An error for several clusters: each gets its own copy.
fn copy(e: &ProviderError) -> ProviderError {
    match e {
        ProviderError::Prerequisite(m) => ProviderError::Prerequisite(m.clone()),
        ProviderError::InvalidRequest(m) => ProviderError::InvalidRequest(m.clone()),
        other => ProviderError::Api(other.to_string()),
    }
}

/// The workshop all `plans` belong to, if they all name the same one.
pub fn common_workshop(plans: &[ClusterPlan]) -> Option<String> {
    let first = workshop_of(&plans.first()?.tags)?.to_string();
    plans
        .iter()
        .all(|p| workshop_of(&p.tags) == Some(first.as_str()))
        .then_some(first)
}

/// Machines of `plan` that have no droplet of its cluster yet.
fn missing<'a>(plan: &'a ClusterPlan, droplets: &[Droplet]) -> Vec<&'a MachinePlan> {
    let tag = cluster_tag(&plan.cluster);
    plan.machines
        .iter()
        .filter(|m| !droplets.iter().any(|d| d.name == m.name && d.has_tag(&tag)))
        .collect()
}

/// The create calls for the missing machines of `plans`.
///
/// A multi-create takes one set of tags and one user data for all its names, and every
/// droplet must carry its cluster's tag from the start (listing, destroy and the firewall's
/// peer rules select by it; tagging afterwards costs a call per cluster anyway and leaves
/// untraceable droplets if swarmup stops in between). The user data holds the host keys of
/// every machine of the call, which a student with root on one node could read from the
/// metadata service. So names share a call only within one cluster and role: ten per call
/// there, which for 30 clusters of 3 is 30 to 60 calls, well within the budget.
fn create_jobs(
    plans: &[ClusterPlan],
    live: &[usize],
    droplets: &[Droplet],
    per_call: usize,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for &i in live {
        let want = missing(&plans[i], droplets);
        for role in [Role::Manager, Role::Worker] {
            let group: Vec<MachinePlan> = want
                .iter()
                .filter(|m| m.role == role)
                .map(|m| (*m).clone())
                .collect();
            for chunk in group.chunks(per_call) {
                jobs.push(Job {
                    plan: i,
                    role,
                    machines: chunk.to_vec(),
                });
            }
        }
    }
    jobs
}

impl DigitalOceanProvider {
    /// Every check `create_many` makes before creating anything, asked once for the whole
    /// workshop: the account and its droplet limit, the size in the region, the droplets
    /// the workshop already has and the login keys. Creates nothing. `Err` only when a
    /// check cannot be made; a workshop too big for the account is `fits: false`
    /// ([`WorkshopPlan::quota_error`]).
    pub async fn workshop_plan(
        &self,
        plans: &[ClusterPlan],
    ) -> Result<WorkshopPlan, ProviderError> {
        let workshop = self.check_workshop(plans)?;
        for p in plans {
            self.validate(p)?;
        }
        let live: Vec<usize> = (0..plans.len()).collect();
        Ok(self.survey(&workshop, plans, &live).await?.plan)
    }

    /// [`DigitalOceanProvider::workshop_plan`] that refuses, in one line, a workshop the
    /// account's droplet limit cannot hold: the preflight of a workshop.
    pub async fn workshop_preflight(
        &self,
        plans: &[ClusterPlan],
    ) -> Result<WorkshopPlan, ProviderError> {
        let plan = self.workshop_plan(plans).await?;
        match plan.quota_error() {
            Some(e) => Err(e),
            None => Ok(plan),
        }
    }

    /// The workshop's dry run: its machines, the API calls the create will make, the
    /// droplet quota check and the cost for `ttl`. Reads only.
    pub async fn workshop_dry_run(
        &self,
        plans: &[ClusterPlan],
        ttl: Duration,
    ) -> Result<DryRun, ProviderError> {
        let workshop = self.check_workshop(plans)?;
        for p in plans {
            self.validate(p)?;
        }
        let live: Vec<usize> = (0..plans.len()).collect();
        let survey = self.survey(&workshop, plans, &live).await?;
        let w = &survey.plan;
        let mut machines = Vec::new();
        for plan in plans {
            let absent = missing(plan, &survey.droplets);
            for m in &plan.machines {
                let exists = !absent.iter().any(|a| a.name == m.name);
                let json = serde_json::json!({
                    "cluster": plan.cluster, "region": w.region, "size": w.size,
                    "price_hourly": w.price_hourly, "exists": exists,
                });
                machines.push(DryRunMachine {
                    name: m.name.clone(),
                    role: m.role,
                    cells: vec![
                        plan.cluster.clone(),
                        w.region.clone(),
                        w.size.clone(),
                        format!("${:.5}", w.price_hourly),
                        if exists { "exists" } else { "to create" }.to_string(),
                    ],
                    json: match json {
                        serde_json::Value::Object(map) => map,
                        _ => serde_json::Map::new(),
                    },
                });
            }
        }
        let hours = ttl.as_secs_f64() / 3600.0;
        let mut warnings = w.warnings.clone();
        if let Some(e) = w.quota_error() {
            warnings.push(e.to_string());
        }
        let detail = |k: &str, v: String| (k.to_string(), v);
        let mut plan = serde_json::to_value(w)
            .map_err(|e| ProviderError::Api(format!("cannot show the plan: {e}")))?;
        if let serde_json::Value::Object(map) = &mut plan {
            map.insert("ttl_secs".into(), ttl.as_secs().into());
            map.insert("cost_for_ttl".into(), (w.total_hourly * hours).into());
        }
        Ok(DryRun {
            title: "DigitalOcean".to_string(),
            columns: ["CLUSTER", "REGION", "SIZE", "PER HOUR", "STATE"]
                .map(String::from)
                .to_vec(),
            machines,
            total: Some(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("${:.5}", w.total_hourly),
                format!("{} to create", w.to_create),
            ]),
            details: vec![
                detail(
                    "workshop",
                    format!("{} ({} clusters)", w.workshop, w.clusters),
                ),
                detail("image", w.image.clone()),
                detail(
                    "api calls",
                    format!(
                        "about {}: {} create call(s), {} key upload(s), one firewall, about {} \
                         poll(s) every {} s (limit 250 a minute, 5,000 an hour)",
                        w.api_calls, w.create_calls, w.key_uploads, w.polls, w.poll_interval_secs
                    ),
                ),
                detail(
                    "droplet quota",
                    format!(
                        "{} of {} droplets in use, {} more possible, the workshop needs {}: {}",
                        w.droplets_in_account,
                        w.droplet_limit,
                        w.can_create,
                        w.to_create,
                        if w.fits { "fits" } else { "does not fit" }
                    ),
                ),
                detail(
                    "cost",
                    format!(
                        "${:.4}/hour for {} droplets, ${:.2} for the {:.1} h ttl",
                        w.total_hourly,
                        w.machines,
                        w.total_hourly * hours,
                        hours
                    ),
                ),
            ],
            warnings,
            plan,
        })
    }

    fn check_workshop(&self, plans: &[ClusterPlan]) -> Result<String, ProviderError> {
        let workshop = common_workshop(plans).ok_or_else(|| {
            invalid(format!(
                "a workshop's clusters must all carry the same {WORKSHOP_TAG_PREFIX}NAME tag"
            ))
        })?;
        check_tag(&crate::workshop::workshop_tag(&workshop))?;
        Ok(workshop)
    }

    async fn survey(
        &self,
        workshop: &str,
        plans: &[ClusterPlan],
        live: &[usize],
    ) -> Result<Survey, ProviderError> {
        let wtag = crate::workshop::workshop_tag(workshop);
        let (account, in_account, droplets, size, keys) = futures_util::try_join!(
            async { Ok::<_, ProviderError>(self.client.account().await?) },
            async { Ok(self.client.droplet_count().await?) },
            async { Ok(self.client.droplets_by_tag(&wtag, false).await?) },
            self.check_size(),
            async {
                Ok(match &self.options.ssh_key {
                    SshKeyChoice::PerCluster => self.client.ssh_keys().await?,
                    SshKeyChoice::Existing { fingerprint } => {
                        match self.client.ssh_key_by_fingerprint(fingerprint).await? {
                            Some(k) => vec![k],
                            None => {
                                return Err(ProviderError::Prerequisite(format!(
                                    "the DigitalOcean account has no ssh key with fingerprint \
                                     {fingerprint}: upload it (doctl compute ssh-key import) or \
                                     let swarmup make a key per cluster"
                                )))
                            }
                        }
                    }
                })
            },
        )?;
        if account.status == "locked" {
            return Err(ProviderError::Prerequisite(format!(
                "the DigitalOcean account is locked ({}): resolve it in the control panel first",
                account.status_message.trim()
            )));
        }
        let live_plans: Vec<ClusterPlan> = live.iter().map(|&i| plans[i].clone()).collect();
        let all: Vec<usize> = (0..live_plans.len()).collect();
        let jobs = create_jobs(&live_plans, &all, &droplets, self.options.names_per_call);
        let machines: usize = live_plans.iter().map(|p| p.machines.len()).sum();
        let to_create: usize = live_plans.iter().map(|p| missing(p, &droplets).len()).sum();
        let key_uploads = match self.options.ssh_key {
            SshKeyChoice::PerCluster => live_plans
                .iter()
                .filter_map(|p| md5_fingerprint(&p.login_public_key))
                .collect::<BTreeSet<_>>()
                .iter()
                .filter(|fp| !keys.iter().any(|k| &k.fingerprint == *fp))
                .count(),
            SshKeyChoice::Existing { .. } => 0,
        };
        let interval = self
            .options
            .workshop_poll_interval
            .max(Duration::from_secs(1));
        let polls = if to_create == 0 {
            1
        } else {
            (TYPICAL_BOOT.as_secs() / interval.as_secs()) as usize + 1
        };
        let pages = machines.div_ceil(200).max(1);
        // account, count, the workshop's droplets, sizes, keys; firewall list and write.
        let api_calls = 5 + key_uploads + 2 + jobs.len() + polls * pages;
        let can_create = u64::from(account.droplet_limit).saturating_sub(in_account);
        Ok(Survey {
            plan: WorkshopPlan {
                workshop: workshop.to_string(),
                region: self.options.region.clone(),
                size: size.slug.clone(),
                image: self.options.image.clone(),
                clusters: live_plans.len(),
                machines,
                existing: machines - to_create,
                to_create,
                create_calls: jobs.len(),
                key_uploads,
                polls,
                poll_interval_secs: interval.as_secs(),
                api_calls,
                droplet_limit: account.droplet_limit,
                droplets_in_account: in_account,
                can_create,
                fits: to_create as u64 <= can_create,
                price_hourly: size.price_hourly,
                total_hourly: size.price_hourly * machines as f64,
                warnings: self.warnings(),
            },
            droplets,
            keys,
        })
    }

    /// `create_many` for plans that all carry one workshop's tag.
    pub(super) async fn create_workshop(
        &self,
        workshop: &str,
        plans: &[ClusterPlan],
        progress: &dyn Progress,
    ) -> Vec<Result<Vec<Machine>, ProviderError>> {
        let mut results: Vec<Option<Result<Vec<Machine>, ProviderError>>> =
            plans.iter().map(|_| None).collect();
        let mut seen = BTreeSet::new();
        for (i, plan) in plans.iter().enumerate() {
            if let Err(e) = self.validate(plan) {
                results[i] = Some(Err(e));
            } else if !seen.insert(plan.cluster.as_str()) {
                results[i] = Some(Err(invalid(format!(
                    "cluster {} appears twice in workshop {workshop}: give every cluster its own name",
                    plan.cluster
                ))));
            }
        }
        let live = |results: &[Option<Result<Vec<Machine>, ProviderError>>]| -> Vec<usize> {
            (0..plans.len()).filter(|&i| results[i].is_none()).collect()
        };
        let fail_all = |results: &mut Vec<Option<Result<Vec<Machine>, ProviderError>>>,
                        e: &ProviderError| {
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = Some(Err(copy(e)));
            }
        };
        let finish = |results: Vec<Option<Result<Vec<Machine>, ProviderError>>>| {
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(ProviderError::Api("no result".into()))))
                .collect::<Vec<_>>()
        };

        let wtag = crate::workshop::workshop_tag(workshop);
        if let Err(e) = check_tag(&wtag) {
            fail_all(&mut results, &e);
            return finish(results);
        }
        let survey = match self.survey(workshop, plans, &live(&results)).await {
            Ok(s) => s,
            Err(e) => {
                fail_all(&mut results, &e);
                return finish(results);
            }
        };
        if let Some(e) = survey.plan.quota_error() {
            fail_all(&mut results, &e);
            return finish(results);
        }
        for &i in &live(&results) {
            lock(&self.created).insert(plans[i].cluster.clone(), Vec::new());
        }

        // Login keys: once per distinct key, found in the account's listing or uploaded.
        let key_ids = self
            .workshop_keys(workshop, plans, &live(&results), &survey.keys, progress)
            .await;
        for &i in &live(&results) {
            if let Err(e) = &key_ids[i] {
                results[i] = Some(Err(copy(e)));
            }
        }

        // The create calls and the one firewall, at the same time.
        let live_now = live(&results);
        let mut jobs = Vec::new();
        for job in create_jobs(
            plans,
            &live_now,
            &survey.droplets,
            self.options.names_per_call,
        ) {
            match self.job_body(&plans[job.plan], &job, &key_ids[job.plan]) {
                Ok(body) => jobs.push((job, body)),
                Err(e) => {
                    if results[job.plan].is_none() {
                        results[job.plan] = Some(Err(e));
                    }
                }
            }
        }
        let jobs: Vec<(Job, DropletCreate)> = jobs
            .into_iter()
            .filter(|(job, _)| results[job.plan].is_none())
            .collect();
        for (job, _) in &jobs {
            for m in &job.machines {
                progress.machine(
                    &m.name,
                    &format!(
                        "creating {} droplet ({} in {})",
                        job.role, self.options.size, self.options.region
                    ),
                );
            }
        }
        let made_any = !jobs.is_empty();
        let creates = stream::iter(jobs.into_iter().map(|(job, body)| async move {
            let outcome = self.client.create_droplets(&body).await;
            (job, body.names, outcome)
        }))
        .buffer_unordered(CONCURRENT_CREATES)
        .collect::<Vec<_>>();
        let (firewall, created) = futures_util::future::join(
            self.ensure_workshop_firewall(workshop, &wtag, progress),
            creates,
        )
        .await;

        let mut failed: BTreeMap<usize, (String, DoError)> = BTreeMap::new();
        for (job, names, outcome) in created {
            let cluster = plans[job.plan].cluster.as_str();
            let what = format!(
                "creating droplets {} of cluster {cluster}",
                names.join(", ")
            );
            match outcome {
                Ok(made) => {
                    self.record_created(cluster, made.iter().map(|d| d.id));
                    for d in &made {
                        progress.machine(&d.name, &format!("droplet {} created", d.id));
                    }
                    let lacking: Vec<&str> = names
                        .iter()
                        .filter(|n| !made.iter().any(|d| &d.name == *n))
                        .map(String::as_str)
                        .collect();
                    if !lacking.is_empty() && results[job.plan].is_none() {
                        results[job.plan] = Some(Err(ProviderError::Api(format!(
                            "{what}: DigitalOcean made only {} of {} droplets, not {}: run \
                             create again to make the rest, or destroy cluster {cluster}",
                            made.len(),
                            names.len(),
                            lacking.join(", ")
                        ))));
                    }
                }
                Err(e) => {
                    failed.entry(job.plan).or_insert((what, e));
                }
            }
        }
        for (i, (what, e)) in failed {
            let cluster = plans[i].cluster.as_str();
            let before: BTreeSet<u64> = survey
                .droplets
                .iter()
                .filter(|d| d.has_tag(&cluster_tag(cluster)))
                .map(|d| d.id)
                .collect();
            self.record_after_failure(cluster, &before).await;
            if results[i].is_none() {
                results[i] = Some(Err(self.resumable(cluster, &what, e, !before.is_empty())));
            }
        }
        if let Err(e) = firewall {
            let e = ProviderError::Api(format!(
                "setting up the firewall of workshop {workshop}: {e} (the droplets made so far \
                 are kept: run the workshop's create again to resume)"
            ));
            fail_all(&mut results, &e);
            return finish(results);
        }

        let pending = live(&results);
        let all_ready = !made_any
            && pending.iter().all(|&i| {
                plans[i].machines.iter().all(|m| {
                    survey.droplets.iter().any(|d| {
                        d.name == m.name
                            && d.has_tag(&cluster_tag(&plans[i].cluster))
                            && is_ready(d)
                    })
                })
            });
        if all_ready {
            for &i in &pending {
                let tag = cluster_tag(&plans[i].cluster);
                let mine: Vec<Droplet> = survey
                    .droplets
                    .iter()
                    .filter(|d| d.has_tag(&tag))
                    .cloned()
                    .collect();
                results[i] = Some(Ok(self.machines(&mine)));
            }
            return finish(results);
        }
        self.wait_workshop(workshop, &wtag, plans, &mut results, progress)
            .await;
        finish(results)
    }

    /// The key id each plan's droplets get, uploading each distinct login key once: named
    /// after the cluster when one cluster uses it, after the workshop when several share it.
    async fn workshop_keys(
        &self,
        workshop: &str,
        plans: &[ClusterPlan],
        live: &[usize],
        account_keys: &[SshKey],
        progress: &dyn Progress,
    ) -> Vec<Result<u64, ProviderError>> {
        let mut out: Vec<Result<u64, ProviderError>> = plans
            .iter()
            .map(|_| Err(ProviderError::Api("no login key".into())))
            .collect();
        if let SshKeyChoice::Existing { .. } = &self.options.ssh_key {
            for &i in live {
                out[i] = account_keys
                    .first()
                    .map(|k| k.id)
                    .ok_or_else(|| ProviderError::Prerequisite("no ssh key".into()));
            }
            return out;
        }
        let mut users: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in live {
            if let Some(fp) = md5_fingerprint(&plans[i].login_public_key) {
                users.entry(fp).or_default().push(i);
            }
        }
        for (fp, who) in users {
            let found = account_keys
                .iter()
                .find(|k| k.fingerprint == fp)
                .map(|k| k.id);
            let id = match found {
                Some(id) => Ok(id),
                None => {
                    let name = if who.len() == 1 {
                        resource_name(&plans[who[0]].cluster)
                    } else {
                        workshop_resource_name(workshop)
                    };
                    match self
                        .client
                        .create_ssh_key(&name, &plans[who[0]].login_public_key)
                        .await
                    {
                        Ok(key) => {
                            progress.machine(&name, &format!("ssh key {} uploaded", key.id));
                            Ok(key.id)
                        }
                        Err(e) => Err(ProviderError::from(e)),
                    }
                }
            };
            for i in who {
                out[i] = match &id {
                    Ok(id) => Ok(*id),
                    Err(e) => Err(copy(e)),
                };
            }
        }
        out
    }

    fn job_body(
        &self,
        plan: &ClusterPlan,
        job: &Job,
        key: &Result<u64, ProviderError>,
    ) -> Result<DropletCreate, ProviderError> {
        let key = key.as_ref().map_err(copy)?;
        let names: Vec<String> = job.machines.iter().map(|m| m.name.clone()).collect();
        let user_data = self.user_data.render(plan, &job.machines)?;
        if user_data.len() > MAX_USER_DATA {
            return Err(invalid(format!(
                "user data for {} is {} bytes, DigitalOcean takes at most {MAX_USER_DATA}: \
                 shorten the cloud-init template",
                names.join(", "),
                user_data.len()
            )));
        }
        Ok(DropletCreate {
            names,
            region: self.options.region.clone(),
            size: self.options.size.clone(),
            image: self.options.image.clone(),
            ssh_keys: vec![*key],
            tags: droplet_tags(plan, job.role),
            user_data: (!user_data.is_empty()).then_some(user_data),
            vpc_uuid: self.options.vpc_uuid.clone(),
            monitoring: self.options.monitoring,
            ipv6: false,
            backups: false,
        })
    }

    /// One firewall for the whole workshop, applied to and open between the droplets
    /// with the workshop's tag. Students' clusters are kept apart on the nodes themselves
    /// (their nftables let in swarm traffic from their own cluster's addresses only).
    async fn ensure_workshop_firewall(
        &self,
        workshop: &str,
        wtag: &str,
        progress: &dyn Progress,
    ) -> Result<(), DoError> {
        let name = workshop_resource_name(workshop);
        self.put_firewall(&name, wtag, progress).await?;
        self.warn(workshop, &name, progress);
        Ok(())
    }

    /// Lists the workshop's droplets by its tag every `workshop_poll_interval` until every
    /// pending cluster is up, and fills in the results; clusters still booting at the boot
    /// timeout get an error each.
    async fn wait_workshop(
        &self,
        workshop: &str,
        wtag: &str,
        plans: &[ClusterPlan],
        results: &mut [Option<Result<Vec<Machine>, ProviderError>>],
        progress: &dyn Progress,
    ) {
        let interval = self.options.workshop_poll_interval;
        let deadline = self.clock.now() + self.options.boot_timeout;
        let mut reported = BTreeSet::new();
        loop {
            let pending: Vec<usize> = (0..plans.len()).filter(|&i| results[i].is_none()).collect();
            if pending.is_empty() {
                return;
            }
            self.clock.sleep(interval).await;
            let droplets = match self.client.droplets_by_tag(wtag, true).await {
                Ok(d) => d,
                Err(e) => {
                    let msg = e.to_string();
                    for i in pending {
                        let cluster = &plans[i].cluster;
                        results[i] = Some(Err(ProviderError::Api(format!(
                            "waiting for the droplets of workshop {workshop} to boot failed: \
                             {msg} (the droplets made so far are kept: run the workshop's \
                             create again to resume, or destroy cluster {cluster})"
                        ))));
                    }
                    return;
                }
            };
            let late = self.clock.now() + interval > deadline;
            for i in pending {
                let plan = &plans[i];
                let tag = cluster_tag(&plan.cluster);
                let mine: Vec<Droplet> = droplets
                    .iter()
                    .filter(|d| d.has_tag(&tag))
                    .cloned()
                    .collect();
                let waiting = super::provider::still_booting(plan, &mine, &mut reported, progress);
                if waiting.is_empty() {
                    results[i] = Some(Ok(self.machines(&mine)));
                } else if late {
                    results[i] = Some(Err(ProviderError::Api(format!(
                        "droplets of cluster {} not active within the {} s boot timeout: {}: \
                         check them at https://cloud.digitalocean.com/droplets, then run the \
                         workshop's create again to resume or destroy cluster {} to remove them",
                        plan.cluster,
                        self.options.boot_timeout.as_secs(),
                        waiting.join(", "),
                        plan.cluster
                    ))));
                }
            }
        }
    }

    /// Every cluster with the tags its droplets carry beyond swarmup's own, from one
    /// listing of the droplets tagged `swarmup` (paged) and one of the firewalls.
    pub(super) async fn tags_of_clusters(
        &self,
    ) -> Result<BTreeMap<String, Vec<String>>, ProviderError> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for d in self.client.droplets_by_tag(TAG_ALL, false).await? {
            let Some(cluster) = d.tags.iter().find_map(|t| t.strip_prefix("swarmup:")) else {
                continue;
            };
            let extra = d.tags.iter().filter(|t| {
                t.as_str() != TAG_ALL
                    && !t.starts_with("swarmup:")
                    && !t.starts_with("swarmup-role:")
            });
            out.entry(cluster.to_string())
                .or_default()
                .extend(extra.cloned());
        }
        // A cluster whose droplets are gone but whose firewall is left still needs a destroy.
        for f in self.client.firewalls().await? {
            if let Some(c) = f.name.strip_prefix("swarmup-") {
                if f.tags.contains(&cluster_tag(c)) {
                    out.entry(c.to_string()).or_default();
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(c, tags)| (c, tags.into_iter().collect()))
            .collect())
    }

    /// Deletes every droplet with `tag` in one call, then the firewalls selected by the
    /// tag or named after its clusters, and the keys swarmup uploaded for them.
    pub(super) async fn destroy_by_tag(&self, tag: &str) -> Result<DestroyReport, ProviderError> {
        check_tag(tag)?;
        if tag == TAG_ALL {
            return Err(invalid(format!(
                "every droplet of swarmup carries tag {TAG_ALL}: destroy clusters one by one, or a workshop by its tag"
            )));
        }
        let mut report = DestroyReport::default();
        let mut droplets = self.client.droplets_by_tag(tag, false).await?;
        let clusters: BTreeSet<String> = droplets
            .iter()
            .filter_map(|d| d.tags.iter().find_map(|t| t.strip_prefix("swarmup:")))
            .map(str::to_string)
            .collect();
        if !droplets.is_empty() {
            self.client.delete_droplets_by_tag(tag).await?;
            droplets.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            for d in &droplets {
                report
                    .removed
                    .push(format!("droplet {} ({})", d.id, d.name));
            }
        }
        let mut names: BTreeSet<String> = clusters.iter().map(|c| resource_name(c)).collect();
        if let Some(w) = tag.strip_prefix(WORKSHOP_TAG_PREFIX) {
            names.insert(workshop_resource_name(w));
        }
        for f in self.client.firewalls().await? {
            let ours = f.tags.iter().any(|t| t == tag)
                || (names.contains(&f.name)
                    && f.tags
                        .iter()
                        .any(|t| clusters.iter().any(|c| *t == cluster_tag(c))));
            if ours && self.client.delete_firewall(&f.id).await? {
                report
                    .removed
                    .push(format!("firewall {} ({})", f.id, f.name));
            }
        }
        if self.options.ssh_key == SshKeyChoice::PerCluster {
            for k in self.client.ssh_keys().await? {
                if names.contains(&k.name) && self.client.delete_ssh_key(k.id).await? {
                    report
                        .removed
                        .push(format!("ssh key {} ({})", k.id, k.name));
                }
            }
        }
        let mut created = lock(&self.created);
        for c in &clusters {
            created.remove(c);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostKey;

    fn plan(cluster: &str, tags: &[&str]) -> ClusterPlan {
        ClusterPlan {
            cluster: cluster.into(),
            machines: (1..=3)
                .map(|i| MachinePlan {
                    name: format!("{cluster}-node{i}"),
                    role: if i == 1 { Role::Manager } else { Role::Worker },
                    host_key: HostKey {
                        private_openssh: String::new(),
                        public_openssh: String::new(),
                    },
                })
                .collect(),
            login_public_key: String::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_workshop_needs_the_same_tag_on_every_plan() {
        let a = plan("w-s01", &["swarmup-workshop:w", "swarmup-expires:9"]);
        let b = plan("w-s02", &["swarmup-workshop:w"]);
        let c = plan("x-s01", &["swarmup-workshop:x"]);
        assert_eq!(
            common_workshop(&[a.clone(), b.clone()]).as_deref(),
            Some("w")
        );
        assert_eq!(common_workshop(&[a.clone(), c]), None);
        assert_eq!(common_workshop(&[plan("p", &[])]), None);
        assert_eq!(common_workshop(&[]), None);
    }

    #[test]
    fn create_calls_stay_within_a_cluster_and_role() {
        let plans: Vec<ClusterPlan> = (1..=30)
            .map(|i| plan(&format!("w-s{i:02}"), &["swarmup-workshop:w"]))
            .collect();
        let live: Vec<usize> = (0..30).collect();
        let jobs = create_jobs(&plans, &live, &[], 10);
        // One manager call and one worker call per cluster.
        assert_eq!(jobs.len(), 60);
        for j in &jobs {
            assert!(j.machines.iter().all(|m| m.role == j.role));
            assert!(j
                .machines
                .iter()
                .all(|m| m.name.starts_with(&plans[j.plan].cluster)));
        }
    }
}
