//! `workshop create` and `workshop reset`: every student's cluster through `create`'s
//! own stages, with the machines of all of them from one `Provider::create_many` call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use swarmup_bootstrap::student::{StudentAccess, StudentLogin};
use swarmup_bootstrap::{keys, ssh_config, ClientCert};
use swarmup_providers::workshop::{expires_tag, workshop_tag};
use swarmup_providers::{ClusterPlan, Machine, Progress, Provider, ProviderError, Role};

use super::plan::{self, needs_work, rfc3339, time_left};
use super::record::{ClusterState, StudentCluster, WorkshopDir, WorkshopRecord};
use super::{unix_now, WorkshopCreateArgs};
use crate::create::{self as cluster_create, CreatePlan};
use crate::output::{table, Output};
use crate::records::ClusterDir;
use crate::{providers, CreateArgs};

/// How many clusters are bootstrapped at once. Each cluster's bootstrap already works on
/// all its machines in parallel (an SSH master per machine, the swarm-node binary
/// uploaded to each); four clusters at a time keep a 30 x 3 workshop to about a dozen
/// concurrent uploads and SSH sessions, which a laptop's uplink and a lab host's two
/// cores absorb, while the clusters that finish early free a slot for the next.
const CONCURRENT_CLUSTERS: usize = 4;

pub async fn create(out: &Output, args: WorkshopCreateArgs) -> Result<()> {
    let s = plan::check(&plan::merge_file(args)?)?;
    let dir = WorkshopDir::of(&s.name)?;
    let earlier = if dir.exists() {
        Some(dir.load()?)
    } else {
        None
    };
    let mut record = plan::plan_record(
        &s,
        earlier.as_ref(),
        unix_now(),
        swarmup_bootstrap::student::generate_password,
    )?;
    if earlier.is_none() {
        // A workshop's names must not take over clusters made by plain creates.
        for c in &record.clusters {
            if ClusterDir::of(&c.cluster)?.exists() {
                bail!(
                    "cluster {} exists and belongs to no workshop {}: pick another --name, or `swarmup destroy {}` first",
                    c.cluster,
                    s.name,
                    c.cluster
                );
            }
        }
    }
    if s.dry_run {
        return dry_run(out, &record).await;
    }
    let mut todo = Vec::new();
    for c in &record.clusters {
        let cdir = ClusterDir::of(&c.cluster)?;
        if needs_work(
            c,
            cdir.exists(),
            cdir.client_dir().join("cert.pem").exists(),
        ) {
            todo.push(c.cluster.clone());
        }
    }
    if todo.is_empty() {
        out.say(&format!(
            "Workshop {} is complete: all {} clusters are ready (expires {}).",
            record.name,
            record.clusters.len(),
            rfc3339(record.expires)
        ));
        return Ok(());
    }
    let new_workshop = earlier.is_none();
    run_clusters(
        out,
        &dir,
        &mut record,
        &todo,
        s.swarm_node_binary,
        new_workshop,
    )
    .await
}

/// `workshop reset NAME STUDENT`: that student's cluster is destroyed and made again with
/// the same name, tags and login; the other clusters are not touched.
pub async fn reset(out: &Output, name: &str, who: &str, binary: Option<PathBuf>) -> Result<()> {
    let (dir, mut record) = super::load(name)?;
    let Some(c) = record.find(who).cloned() else {
        bail!(
            "workshop {name} has no student {who}: use one of {}",
            record
                .clusters
                .iter()
                .map(|c| c.student.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let cdir = ClusterDir::of(&c.cluster)?;
    let provider = workshop_provider(&record)?;
    let report = provider.destroy(&c.cluster).await?;
    for line in &report.removed {
        out.say(&format!("removed {line}"));
    }
    ssh_config::remove_ssh_config_block(&crate::commands::ssh_config_path()?, &c.cluster).await?;
    cdir.remove()?;
    if let Some(entry) = record.clusters.iter_mut().find(|e| e.cluster == c.cluster) {
        entry.state = ClusterState::Pending;
        entry.last_error = None;
    }
    dir.save(&record)?;
    run_clusters(out, &dir, &mut record, &[c.cluster], binary, false).await
}

/// The provider of a workshop's clusters, as `create` would build it for them.
pub fn workshop_provider(record: &WorkshopRecord) -> Result<Arc<dyn Provider>> {
    let args = cluster_args(record, &format!("{}-s01", record.name), None);
    providers::build_for_create(&providers::ProviderChoice::for_create(&args, None))
}

/// A plain `create`'s arguments for one cluster of the workshop.
fn cluster_args(r: &WorkshopRecord, cluster: &str, binary: Option<PathBuf>) -> CreateArgs {
    CreateArgs {
        name: Some(cluster.to_string()),
        provider: Some(r.provider.clone()),
        nodes: Some(r.nodes),
        managers: Some(r.managers),
        file: None,
        region: r.region.clone(),
        size: r.size.clone(),
        image: r.image.clone(),
        cpus: None,
        memory: None,
        ssh_key: None,
        host: Vec::new(),
        known_hosts: None,
        host_key_fingerprint: Vec::new(),
        ssh_from: Vec::new(),
        token: None,
        dry_run: false,
        rollback_on_failure: false,
        swarm_node_binary: binary,
        registry: false,
        offline: r.offline,
        engine: None,
    }
}

/// One cluster on its way: `create`'s plan, the provider's plan, and where it stands.
struct Job {
    plan: CreatePlan,
    cluster_plan: ClusterPlan,
    /// Written once the whole workshop's preflight has passed.
    record: Option<crate::records::ClusterRecord>,
}

/// Makes the clusters `todo` of the workshop: plans, keys and records for all, machines
/// from one `create_many`, SSH config, then each cluster's bootstrap, credentials and
/// student access, a few clusters at a time. A cluster that fails is recorded with its
/// error and the others go on; the command fails at the end if any did.
async fn run_clusters(
    out: &Output,
    dir: &WorkshopDir,
    record: &mut WorkshopRecord,
    todo: &[String],
    binary: Option<PathBuf>,
    new_workshop: bool,
) -> Result<()> {
    let started = Instant::now();
    let binary = cluster_create::swarm_node_binary(binary.as_deref())?;
    let tags = vec![workshop_tag(&record.name), expires_tag(record.expires)];

    // Students' keys first: a card must never name a key that is not there.
    if record.student_keys {
        for c in record
            .clusters
            .iter_mut()
            .filter(|c| todo.contains(&c.cluster))
        {
            c.public_key = Some(student_key(dir, &c.cluster).await?);
        }
    }
    // Saved before any machine exists, so `workshop destroy` finds the workshop.
    dir.save(record)?;

    let mut jobs: Vec<Job> = Vec::new();
    let mut provider: Option<Arc<dyn Provider>> = None;
    let prepared = async {
        for cluster in todo {
            let args = cluster_args(record, cluster, Some(binary.clone()));
            let p = cluster_create::plan(cluster_create::validate(args)?);
            // One provider for the whole workshop: on DigitalOcean one client, one budget.
            if provider.is_none() {
                provider = Some(providers::build_for_create(&p.choice)?);
            }
            let mut cluster_plan = cluster_create::keys(&p).await?;
            cluster_plan.tags = tags.clone();
            jobs.push(Job {
                plan: p,
                cluster_plan,
                record: None,
            });
        }
        // One preflight for the whole workshop: its quota is the sum of its clusters',
        // and on DigitalOcean each per-cluster check would spend calls of the budget.
        if let Some(provider) = &provider {
            let plans: Vec<ClusterPlan> = jobs.iter().map(|j| j.cluster_plan.clone()).collect();
            provider.preflight_many(&plans).await?;
        }
        for job in &mut jobs {
            job.record = Some(cluster_create::write_record(&job.plan)?);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = prepared {
        // Refused before any machine was made: what this run wrote goes.
        forget_new(&jobs, dir, new_workshop);
        return Err(e);
    }
    let provider = provider.context("no cluster to create")?;

    let progress = out.progress();
    let plans: Vec<ClusterPlan> = jobs.iter().map(|j| j.cluster_plan.clone()).collect();
    let results = provider.create_many(&plans, progress.as_ref()).await;
    if let Some(refusal) = refused_whole(&results) {
        drop(progress);
        forget_new(&jobs, dir, new_workshop);
        bail!("{refusal}");
    }

    let mut ready_to_bootstrap: Vec<(Job, Vec<Machine>)> = Vec::new();
    for (mut job, result) in jobs.into_iter().zip(results) {
        let cluster = job.plan.name.clone();
        let outcome = match result {
            Ok(machines) => match job.record.as_mut() {
                Some(r) => {
                    cluster_create::keep_machines(&job.plan, r, &machines).map(|()| machines)
                }
                None => Err(anyhow::anyhow!("the cluster's record was not written")),
            },
            Err(e) => Err(anyhow::anyhow!("creating machines failed: {e}")),
        };
        match outcome {
            Ok(machines) => ready_to_bootstrap.push((job, machines)),
            Err(e) => set_state(record, &cluster, Err(&e)),
        }
    }
    dir.save(record)?;

    // One cluster after another: they all edit the one managed ~/.ssh/config.
    let mut bootstrapping = Vec::new();
    for (job, machines) in ready_to_bootstrap {
        match cluster_create::ssh_config(&job.plan, &job.cluster_plan, &machines).await {
            Ok(ssh) => bootstrapping.push((job, machines, ssh)),
            Err(e) => set_state(record, &job.plan.name, Err(&e)),
        }
    }

    let shared = Mutex::new(record.clone());
    let provider_ref = provider.as_ref();
    let progress_ref = progress.as_ref();
    let shared_ref = &shared;
    futures_util::stream::iter(bootstrapping)
        .map(|(job, machines, ssh)| {
            let binary = binary.clone();
            async move {
                let result = finish_cluster(
                    &job,
                    provider_ref,
                    &machines,
                    &ssh,
                    binary,
                    shared_ref,
                    progress_ref,
                )
                .await;
                let mut r = shared_ref.lock().expect("workshop record lock");
                set_state(&mut r, &job.plan.name, result.as_ref().map(|_| ()));
                // Saved as each cluster ends, so an interrupted run loses nothing.
                if let Err(e) = dir.save(&r) {
                    tracing::warn!(error = %e, "cannot save the workshop record");
                }
            }
        })
        .buffer_unordered(CONCURRENT_CLUSTERS)
        .collect::<Vec<()>>()
        .await;
    drop(progress);
    *record = shared.into_inner().expect("workshop record lock");
    dir.save(record)?;
    report(out, record, todo, started.elapsed().as_secs_f64())
}

/// Bootstrap, the admin's client certificate, then the student's access.
async fn finish_cluster(
    job: &Job,
    provider: &dyn Provider,
    machines: &[Machine],
    ssh: &swarmup_bootstrap::SshOptions,
    binary: PathBuf,
    record: &Mutex<WorkshopRecord>,
    progress: &dyn Progress,
) -> Result<()> {
    let p = &job.plan;
    cluster_create::bootstrap(p, provider, machines, ssh, Some(binary), progress).await?;
    cluster_create::credentials(p, machines, ssh).await?;
    let login = {
        let r = record.lock().expect("workshop record lock");
        let c = r
            .clusters
            .iter()
            .find(|c| c.cluster == p.name)
            .context("the cluster is not in the workshop record")?;
        match (&c.password, &c.public_key) {
            (_, Some(key)) => StudentLogin::Key(key.clone()),
            (Some(pw), None) => StudentLogin::Password(pw.clone()),
            (None, None) => bail!("the workshop record has no login for {}", c.student),
        }
    };
    let manager = machines
        .iter()
        .find(|m| m.role == Role::Manager)
        .context("the cluster has no manager")?;
    let access = StudentAccess {
        login,
        client: read_client_cert(&p.dir)?,
        manager: manager.private_addr,
    };
    swarmup_bootstrap::student::ensure_students(machines, ssh, &access, progress).await?;
    Ok(())
}

fn read_client_cert(dir: &ClusterDir) -> Result<ClientCert> {
    let read = |name: &str| {
        let path = dir.client_dir().join(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(ClientCert {
        ca_pem: read("ca.pem")?,
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
    })
}

/// The student's key pair for `cluster`: made once in the workshop directory (0600),
/// then reused. Its public line.
async fn student_key(dir: &WorkshopDir, cluster: &str) -> Result<String> {
    let path = dir.key_file(cluster);
    let key = keys::ensure_login_key(&path, &format!("student@{cluster}")).await?;
    Ok(key.public_openssh)
}

fn set_state(record: &mut WorkshopRecord, cluster: &str, result: Result<(), &anyhow::Error>) {
    if let Some(c) = record.clusters.iter_mut().find(|c| c.cluster == cluster) {
        match result {
            Ok(()) => {
                c.state = ClusterState::Ready;
                c.last_error = None;
            }
            Err(e) => {
                c.state = ClusterState::Failed;
                c.last_error = Some(format!("{e:#}").replace('\n', " "));
            }
        }
    }
}

/// The provider refused every cluster before making anything (a preflight over the whole
/// workshop: memory on the lab, quotas on a cloud): its one message.
fn refused_whole(results: &[Result<Vec<Machine>, ProviderError>]) -> Option<String> {
    let mut messages = results.iter().map(|r| match r {
        Err(ProviderError::Prerequisite(m)) => Some(m.clone()),
        _ => None,
    });
    let first = messages.next()??;
    messages
        .all(|m| m.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// Removes the records this run wrote for clusters that did not exist before it, and a
/// workshop record this run made.
fn forget_new(jobs: &[Job], dir: &WorkshopDir, new_workshop: bool) {
    for job in jobs.iter().filter(|j| j.plan.new_cluster()) {
        let _ = job.plan.dir.remove();
    }
    if new_workshop {
        let _ = dir.remove();
    }
}

/// What a workshop create or reset tells the user.
fn report(out: &Output, record: &WorkshopRecord, todo: &[String], seconds: f64) -> Result<()> {
    let worked: Vec<&StudentCluster> = record
        .clusters
        .iter()
        .filter(|c| todo.contains(&c.cluster))
        .collect();
    let failed: Vec<&&StudentCluster> = worked
        .iter()
        .filter(|c| c.state != ClusterState::Ready)
        .collect();
    let ready = record
        .clusters
        .iter()
        .filter(|c| c.state == ClusterState::Ready)
        .count();
    if out.json() {
        let clusters: Vec<_> = worked
            .iter()
            .map(|c| {
                serde_json::json!({
                    "student": c.student, "cluster": c.cluster, "spare": c.spare,
                    "state": c.state, "last_error": c.last_error,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "workshop": record.name, "provider": record.provider, "clusters": clusters,
                "ready": ready, "total": record.clusters.len(),
                "expires": rfc3339(record.expires), "seconds": seconds,
            })
        );
    } else if out.quiet {
        println!("{}", record.name);
    } else {
        let rows: Vec<Vec<String>> = worked
            .iter()
            .map(|c| {
                vec![
                    c.student.clone(),
                    c.cluster.clone(),
                    match c.state {
                        ClusterState::Ready => "ready",
                        ClusterState::Failed => "failed",
                        ClusterState::Pending => "pending",
                    }
                    .to_string(),
                    plan::one_line(c.last_error.as_deref().unwrap_or_default(), 100),
                ]
            })
            .collect();
        println!(
            "Workshop {}: {ready} of {} clusters ready ({} made or resumed in {seconds:.1}s); expires {} (in {}).\n",
            record.name,
            record.clusters.len(),
            worked.len(),
            rfc3339(record.expires),
            time_left(record.expires, unix_now())
        );
        println!(
            "{}\n",
            table(&["STUDENT", "CLUSTER", "STATUS", "ERROR"], &rows)
        );
        let name = &record.name;
        println!("Next:");
        println!("  swarmup workshop cards {name} -o cards.html   # one card per student");
        println!("  swarmup workshop status {name}");
        println!("  swarmup workshop destroy {name}");
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} clusters failed ({}): run the same workshop create again to retry them",
            failed.len(),
            worked.len(),
            failed
                .iter()
                .map(|c| c.cluster.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `workshop create --dry-run`: the clusters, the expiry, and what the provider says of
/// one cluster, scaled by their number where it has prices.
async fn dry_run(out: &Output, record: &WorkshopRecord) -> Result<()> {
    let provider = workshop_provider(record)?;
    let tags = vec![workshop_tag(&record.name), expires_tag(record.expires)];
    let mut plans = Vec::with_capacity(record.clusters.len());
    for c in &record.clusters {
        let planned = cluster_create::plan_machines(&c.cluster, record.nodes, record.managers);
        let mut plan = cluster_create::throwaway_plan(&c.cluster, &planned)?;
        plan.tags = tags.clone();
        plans.push(plan);
    }
    // The provider's plan of the whole workshop: on DigitalOcean the API calls it will
    // make, the droplet quota and the cost, which no single cluster's plan can tell.
    let shown = provider
        .dry_run_many(&plans, std::time::Duration::from_secs(record.ttl_seconds))
        .await?;
    let count = record.clusters.len();
    let hourly: Option<f64> = hourly_of(&shown);
    let hours = record.ttl_seconds as f64 / 3600.0;
    if out.json() {
        let clusters: Vec<_> = record
            .clusters
            .iter()
            .map(|c| {
                let machines: Vec<_> =
                    cluster_create::plan_machines(&c.cluster, record.nodes, record.managers)
                        .into_iter()
                        .map(|m| serde_json::json!({"name": m.name, "role": m.role}))
                        .collect();
                serde_json::json!({"student": c.student, "cluster": c.cluster, "spare": c.spare, "machines": machines})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "dry_run": true, "workshop": record.name, "provider": provider.name(),
                "clusters": clusters, "ttl_seconds": record.ttl_seconds,
                "expires": rfc3339(record.expires),
                "per_cluster": cluster_create::dry_run_json(&shown),
                "price_hourly": hourly, "price_ttl": hourly.map(|h| h * hours),
            })
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = record
        .clusters
        .iter()
        .map(|c| {
            let machines = cluster_create::plan_machines(&c.cluster, record.nodes, record.managers);
            vec![
                if c.spare {
                    format!("{} (spare)", c.student)
                } else {
                    c.student.clone()
                },
                c.cluster.clone(),
                machines
                    .iter()
                    .map(|m| format!("{} ({})", m.name, m.role))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    println!(
        "Plan for workshop {} on {} (dry run: nothing created):\n\n{}\n",
        record.name,
        shown.title,
        table(&["STUDENT", "CLUSTER", "MACHINES"], &rows)
    );
    println!(
        "{:<15} {count} clusters x {} nodes = {} machines",
        "Workshop:",
        record.nodes,
        count as u32 * record.nodes
    );
    println!(
        "{:<15} {} (time to live {}, then `swarmup workshop reap` destroys it)",
        "Expires:",
        rfc3339(record.expires),
        time_left(record.expires, record.created)
    );
    println!(
        "{:<15} {}",
        "Logins:",
        if record.student_keys {
            "with a generated key pair each"
        } else {
            "with a generated password each"
        }
    );
    if let Some(h) = hourly {
        println!(
            "{:<15} ${h:.2} per hour for all clusters, ${:.2} for the time to live",
            "Cost:",
            h * hours
        );
    }
    println!(
        "\nAs the provider plans it:\n\n{}",
        cluster_create::dry_run_text(&format!("workshop {}", record.name), &shown)
    );
    for w in &shown.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// The hourly price of a provider's dry run, summed over its machines; `None` when the
/// provider gives no prices.
pub fn hourly_of(shown: &swarmup_providers::DryRun) -> Option<f64> {
    let prices: Vec<f64> = shown
        .machines
        .iter()
        .filter_map(|m| m.json.get("price_hourly")?.as_f64())
        .collect();
    (!prices.is_empty()).then(|| prices.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_whole_workshop_is_told_apart_from_failures() {
        let refused = || Err(ProviderError::Prerequisite("does not fit".into()));
        assert_eq!(
            refused_whole(&[refused(), refused()]).as_deref(),
            Some("does not fit")
        );
        assert_eq!(refused_whole(&[refused(), Ok(vec![])]), None);
        assert_eq!(
            refused_whole(&[refused(), Err(ProviderError::Api("boom".into()))]),
            None
        );
        assert_eq!(refused_whole(&[]), None);
    }

    #[test]
    fn prices_are_summed_over_machines() {
        let mut shown = swarmup_providers::DryRun::default();
        assert_eq!(hourly_of(&shown), None);
        for price in [0.01, 0.02] {
            let mut json = serde_json::Map::new();
            json.insert("price_hourly".into(), serde_json::json!(price));
            shown.machines.push(swarmup_providers::DryRunMachine {
                name: "m".into(),
                role: Role::Worker,
                cells: vec![],
                json,
            });
        }
        assert!((hourly_of(&shown).unwrap() - 0.03).abs() < 1e-9);
    }
}
