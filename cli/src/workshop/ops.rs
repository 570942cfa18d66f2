//! The workshop verbs besides create and reset: cards, status, exec, destroy, ls, reap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use swarmup_bootstrap::{ssh_config, Connector, SshConnector};
use swarmup_providers::workshop::{expires_of, workshop_of, workshop_tag};
use swarmup_providers::{Machine, Provider};

use super::plan::{self, rfc3339, status_row, time_left, Seen};
use super::record::{self, ClusterState, WorkshopDir, WorkshopRecord};
use super::{unix_now, CardFormat};
use crate::commands::{ssh_config_path, ssh_options};
use crate::output::{table, Output};
use crate::providers;
use crate::records::ClusterDir;

/// How many clusters `workshop status` asks at once (two HTTPS calls each).
const CONCURRENT_STATUS: usize = 8;
/// How many SSH sessions `workshop exec` keeps open at once: enough that 90 nodes take a
/// few rounds, few enough that this host's ssh processes and descriptors stay modest.
const CONCURRENT_SESSIONS: usize = 16;
/// How long `workshop exec`'s command may run on a node.
const EXEC_TIMEOUT: Duration = Duration::from_secs(600);

/// The first commands of the course, on every card.
const FIRST_COMMANDS: &[&str] = &[
    "docker node ls",
    "docker service create --name web --replicas 3 -p 8080:80 nginx",
    "docker service ps web",
    "curl http://localhost:8080",
];

pub async fn cards(
    out: &Output,
    name: &str,
    format: CardFormat,
    output_file: Option<PathBuf>,
) -> Result<()> {
    let (dir, record) = super::load(name)?;
    let mut cards = Vec::new();
    for c in &record.clusters {
        let cdir = ClusterDir::of(&c.cluster)?;
        if c.state != ClusterState::Ready || !cdir.exists() {
            continue;
        }
        let cluster = cdir.load()?;
        let nodes = cluster
            .last_seen
            .iter()
            .map(|m| swarmup_cards::CardNode {
                name: m.name.clone(),
                address: m.ssh.host.to_string(),
                port: m.ssh.port,
                role: m.role.to_string(),
            })
            .collect();
        cards.push(swarmup_cards::Card {
            workshop: record.name.clone(),
            student: c.student.clone(),
            cluster: c.cluster.clone(),
            nodes,
            login: swarmup_bootstrap::student::STUDENT_USER.to_string(),
            password: if record.student_keys {
                None
            } else {
                c.password.clone()
            },
            key_file: record
                .student_keys
                .then(|| dir.key_file(&c.cluster).display().to_string()),
            expires: Some(rfc3339(record.expires)),
            commands: FIRST_COMMANDS.iter().map(|s| s.to_string()).collect(),
        });
    }
    if cards.is_empty() {
        bail!(
            "workshop {name} has no ready cluster yet: run `swarmup workshop create --name {name}` to finish it"
        );
    }
    let bytes = swarmup_cards::render(&cards, format.into())?;
    match output_file {
        // The cards carry passwords: readable by their owner only.
        Some(path) => {
            crate::records::write_private(&path, &bytes)?;
            out.say(&format!(
                "Wrote {} cards to {}.",
                cards.len(),
                path.display()
            ));
        }
        None => {
            use std::io::{IsTerminal, Write};
            if format == CardFormat::Pdf && std::io::stdout().is_terminal() {
                bail!("refusing to write a PDF to the terminal: give -o cards.pdf");
            }
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(())
}

pub async fn status(out: &Output, name: &str) -> Result<()> {
    let (_, record) = super::load(name)?;
    let now = unix_now();
    let hourly = hourly_price(&record).await;
    let seen: BTreeMap<String, Seen> = futures_util::stream::iter(record.clusters.iter())
        .map(|c| async move {
            let exists = ClusterDir::of(&c.cluster).is_ok_and(|d| d.exists());
            let seen = if !exists {
                Seen::Silent("no cluster record here".to_string())
            } else {
                match crate::api::cluster_summary(&c.cluster).await {
                    Ok((nodes, ready, services)) => Seen::Answered(nodes, ready, services),
                    Err(e) => Seen::Silent(format!("{e:#}")),
                }
            };
            (c.cluster.clone(), seen)
        })
        .buffer_unordered(CONCURRENT_STATUS)
        .collect()
        .await;
    let rows: Vec<Vec<String>> = record
        .clusters
        .iter()
        .map(|c| {
            status_row(
                c,
                &seen[&c.cluster],
                record.expires,
                record.created,
                now,
                hourly,
            )
        })
        .collect();
    if out.json() {
        let json: Vec<_> = record
            .clusters
            .iter()
            .map(|c| {
                let (nodes, ready, services, error) = match &seen[&c.cluster] {
                    Seen::Answered(n, r, s) => (Some(*n), Some(*r), Some(*s), None),
                    Seen::Silent(why) => (None, None, None, Some(why.clone())),
                };
                serde_json::json!({
                    "student": c.student, "cluster": c.cluster, "spare": c.spare, "state": c.state,
                    "nodes": nodes, "ready": ready, "services": services,
                    "expires": rfc3339(record.expires),
                    "seconds_left": record.expires.saturating_sub(now),
                    "cost_so_far": hourly.map(|h| h * (now.saturating_sub(record.created)).div_ceil(3600).max(1) as f64),
                    "last_error": c.last_error, "unreachable": error,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(json));
        return Ok(());
    }
    println!(
        "{}",
        table(
            &[
                "STUDENT",
                "CLUSTER",
                "NODES READY",
                "SERVICES",
                "TIME LEFT",
                "COST",
                "LAST ERROR"
            ],
            &rows
        )
    );
    Ok(())
}

/// What one cluster of the workshop costs per hour, from the provider's dry run; `None`
/// when it has no prices (the lab) or cannot say.
async fn hourly_price(record: &WorkshopRecord) -> Option<f64> {
    let provider = super::create::workshop_provider(record).ok()?;
    let first = &record.clusters.first()?.cluster;
    let planned = crate::create::plan_machines(first, record.nodes, record.managers);
    let shown = crate::create::dry_run_plan(provider.as_ref(), first, &planned)
        .await
        .ok()?;
    super::create::hourly_of(&shown)
}

/// What `exec` got from one node.
#[derive(Debug)]
struct Ran {
    machine: String,
    cluster: String,
    /// `None`: killed by a signal, or it could not run at all (`error`).
    status: Option<i32>,
    stdout: String,
    stderr: String,
    error: Option<String>,
}

pub async fn exec(out: &Output, name: &str, command: &[String]) -> Result<()> {
    let (_, record) = super::load(name)?;
    if command.is_empty() {
        bail!("give the command after --: swarmup workshop exec {name} -- docker node ls");
    }
    // As plain ssh does: the words joined, run by the login shell.
    let script = command.join(" ");
    let mut targets: Vec<(ClusterDir, Machine)> = Vec::new();
    for c in &record.clusters {
        let cdir = ClusterDir::of(&c.cluster)?;
        if !cdir.exists() {
            continue;
        }
        for m in cdir.load()?.last_seen {
            targets.push((cdir.clone(), m));
        }
    }
    if targets.is_empty() {
        bail!("workshop {name} has no machines recorded here yet: run `swarmup workshop create --name {name}`");
    }
    let script = &script;
    let mut ran: Vec<Ran> = futures_util::stream::iter(targets)
        .map(|(cdir, m)| async move {
            let cluster = cdir
                .0
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let connector = SshConnector::new(ssh_options(&cdir));
            let result = async {
                let shell = connector
                    .connect(&m, Duration::from_secs(20))
                    .await
                    .map_err(|e| e.to_string())?;
                let out = shell.run(script, EXEC_TIMEOUT).await;
                shell.close().await;
                out.map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(o) => Ran {
                    machine: m.name.clone(),
                    cluster,
                    status: o.status,
                    stdout: o.stdout,
                    stderr: o.stderr,
                    error: None,
                },
                Err(e) => Ran {
                    machine: m.name.clone(),
                    cluster,
                    status: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    error: Some(e),
                },
            }
        })
        .buffer_unordered(CONCURRENT_SESSIONS)
        .collect()
        .await;
    ran.sort_by(|a, b| a.machine.cmp(&b.machine));
    let failed: Vec<&Ran> = ran
        .iter()
        .filter(|r| r.error.is_some() || r.status != Some(0))
        .collect();
    if out.json() {
        let json: Vec<_> = ran
            .iter()
            .map(|r| {
                serde_json::json!({
                    "cluster": r.cluster, "node": r.machine, "exit_code": r.status,
                    "stdout": r.stdout, "stderr": r.stderr, "error": r.error,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(json));
    } else {
        // Every node's output, each line prefixed with its node, as pdsh does.
        for r in &ran {
            for line in r.stdout.lines() {
                println!("{}: {line}", r.machine);
            }
            for line in r.stderr.lines() {
                eprintln!("{}: {line}", r.machine);
            }
        }
        if !out.quiet {
            println!(
                "\n{} of {} nodes succeeded.",
                ran.len() - failed.len(),
                ran.len()
            );
            for r in &failed {
                println!("failed: {}: {}", r.machine, exec_failure(r));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the command failed on {} of {} nodes ({})",
            failed.len(),
            ran.len(),
            failed
                .iter()
                .map(|r| r.machine.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `exit 3: first line of output`, or why it could not run.
fn exec_failure(r: &Ran) -> String {
    if let Some(e) = &r.error {
        return format!("could not run: {}", plan::one_line(e, 120));
    }
    let status = match r.status {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    let first = r
        .stderr
        .lines()
        .chain(r.stdout.lines())
        .find(|l| !l.trim().is_empty());
    match first {
        Some(line) => format!("{status}: {}", plan::one_line(line, 120)),
        None => status,
    }
}

/// Whether `cluster` is named like one of workshop `name`'s: `NAME-s01`, `NAME-s123`.
pub fn is_workshop_cluster(name: &str, cluster: &str) -> bool {
    cluster
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix("-s"))
        .is_some_and(|n| (2..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

pub async fn destroy(out: &Output, name: &str, yes: bool, provider: Option<String>) -> Result<()> {
    crate::records::validate_name(name).map_err(|_| {
        anyhow::anyhow!("invalid workshop name {name:?}: see `swarmup workshop ls`")
    })?;
    let dir = WorkshopDir::of(name)?;
    let record = if dir.exists() {
        Some(dir.load()?)
    } else {
        None
    };
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            bail!("refusing to destroy workshop {name} without --yes: no terminal to ask for confirmation");
        }
        print!("Destroy workshop {name} and every student's cluster? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not destroyed");
        }
    }
    let listers: Vec<(String, Arc<dyn Provider>)> = match (&provider, &record) {
        (Some(p), _) => {
            providers::check_name(p)?;
            vec![(
                p.clone(),
                providers::build(&providers::ProviderChoice {
                    name: p.clone(),
                    ..Default::default()
                })?,
            )]
        }
        (None, Some(r)) => vec![(r.provider.clone(), super::create::workshop_provider(r)?)],
        (None, None) => usable_listers(),
    };
    let removed = destroy_workshop(name, record.as_ref(), &listers).await?;
    dir.remove()?;
    if out.json() {
        println!(
            "{}",
            serde_json::json!({"destroyed": name, "removed": removed})
        );
    } else {
        for line in &removed {
            out.say(&format!("removed {line}"));
        }
        out.say(&format!("Workshop {name} destroyed."));
    }
    Ok(())
}

/// The providers that list from here, with a warning for each that cannot.
fn usable_listers() -> Vec<(String, Arc<dyn Provider>)> {
    providers::tag_listers()
        .into_iter()
        .filter_map(|(name, p)| match p {
            Ok(p) => Some((name.to_string(), p)),
            Err(e) => {
                eprintln!("warning: cannot look for {name} workshops: {e:#}");
                None
            }
        })
        .collect()
}

/// Everything of workshop `name` at `listers`: by tag first, then any cluster of it the
/// local records name that a provider still lists (a provider that keeps no tags), then
/// the local records and SSH config blocks.
async fn destroy_workshop(
    name: &str,
    record: Option<&WorkshopRecord>,
    listers: &[(String, Arc<dyn Provider>)],
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    // The clusters found by tag lose their SSH config blocks too, even when this machine
    // has no record of them (the managed block may be shared with the machine that made them).
    let mut tagged: BTreeSet<String> = BTreeSet::new();
    for (pname, provider) in listers {
        if let Ok(map) = provider.cluster_tags().await {
            tagged.extend(
                map.into_iter()
                    .filter(|(_, tags)| workshop_of(tags) == Some(name))
                    .map(|(cluster, _)| cluster),
            );
        }
        let report = provider
            .destroy_tagged(&workshop_tag(name))
            .await
            .with_context(|| format!("destroying workshop {name} at {pname} failed"))?;
        removed.extend(report.removed);
    }
    let mut local: BTreeSet<String> = record
        .map(|r| r.clusters.iter().map(|c| c.cluster.clone()).collect())
        .unwrap_or_default();
    local.extend(tagged);
    for r in crate::records::all()? {
        if is_workshop_cluster(name, &r.name) {
            local.insert(r.name);
        }
    }
    let config = ssh_config_path()?;
    for cluster in &local {
        let cdir = ClusterDir::of(cluster)?;
        if cdir.exists() {
            let r = cdir.load()?;
            if let Some((_, provider)) = listers.iter().find(|(p, _)| *p == r.provider) {
                if !provider.list(cluster).await.unwrap_or_default().is_empty() {
                    removed.extend(provider.destroy(cluster).await?.removed);
                }
            }
        }
        ssh_config::remove_ssh_config_block(&config, cluster).await?;
        cdir.remove()?;
    }
    Ok(removed)
}

/// A workshop as `ls` and `reap` see it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    pub providers: BTreeSet<String>,
    pub clusters: BTreeSet<String>,
    pub expires: Option<u64>,
    pub recorded: bool,
}

/// Workshops by name from every provider's tags and every local record.
async fn found_workshops(listers: &[(String, Arc<dyn Provider>)]) -> BTreeMap<String, Found> {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for (pname, provider) in listers {
        match provider.cluster_tags().await {
            Ok(map) => {
                for (cluster, tags) in map {
                    let Some(w) = workshop_of(&tags) else {
                        continue;
                    };
                    let f = found.entry(w.to_string()).or_default();
                    f.providers.insert(pname.clone());
                    f.clusters.insert(cluster);
                    if let Some(e) = expires_of(&tags) {
                        f.expires = Some(f.expires.map_or(e, |x| x.min(e)));
                    }
                }
            }
            Err(e) => eprintln!("warning: cannot list {pname} clusters: {e}"),
        }
    }
    if let Ok(records) = record::all() {
        for r in records {
            let f = found.entry(r.name.clone()).or_default();
            f.providers.insert(r.provider.clone());
            f.recorded = true;
            f.clusters.extend(
                r.clusters
                    .iter()
                    .filter(|c| c.state != ClusterState::Pending)
                    .map(|c| c.cluster.clone()),
            );
            f.expires = Some(f.expires.map_or(r.expires, |x| x.min(r.expires)));
        }
    }
    found
}

pub async fn ls(out: &Output) -> Result<()> {
    let found = found_workshops(&usable_listers()).await;
    let now = unix_now();
    if out.json() {
        let json: Vec<_> = found
            .iter()
            .map(|(name, f)| {
                serde_json::json!({
                    "name": name, "providers": f.providers, "clusters": f.clusters.len(),
                    "expires": f.expires.map(rfc3339), "recorded": f.recorded,
                    "expired": f.expires.is_some_and(|e| e <= now),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(json));
        return Ok(());
    }
    if out.quiet {
        for name in found.keys() {
            println!("{name}");
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|(name, f)| {
            vec![
                name.clone(),
                f.providers.iter().cloned().collect::<Vec<_>>().join(","),
                f.clusters.len().to_string(),
                f.expires.map_or_else(|| "-".to_string(), rfc3339),
                f.expires
                    .map_or_else(|| "-".to_string(), |e| time_left(e, now)),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["NAME", "PROVIDER", "CLUSTERS", "EXPIRES", "TIME LEFT"],
            &rows
        )
    );
    Ok(())
}

/// The workshops `reap` takes: expired at `now`.
pub fn expired(found: &BTreeMap<String, Found>, now: u64) -> Vec<&str> {
    found
        .iter()
        .filter(|(_, f)| f.expires.is_some_and(|e| e <= now))
        .map(|(name, _)| name.as_str())
        .collect()
}

pub async fn reap(out: &Output, dry_run: bool) -> Result<()> {
    let listers = usable_listers();
    let found = found_workshops(&listers).await;
    let now = unix_now();
    let gone = expired(&found, now);
    let mut json = Vec::new();
    let mut errors = Vec::new();
    for name in &gone {
        let f = &found[*name];
        let expired_at = f.expires.map(rfc3339).unwrap_or_default();
        if dry_run {
            out.say(&format!(
                "would destroy workshop {name} ({} clusters at {}, expired {expired_at})",
                f.clusters.len(),
                f.providers.iter().cloned().collect::<Vec<_>>().join(",")
            ));
            json.push(serde_json::json!({"workshop": name, "expired": expired_at, "clusters": f.clusters, "destroyed": false}));
            continue;
        }
        let dir = WorkshopDir::of(name)?;
        let record = if dir.exists() { dir.load().ok() } else { None };
        // The recorded provider as the workshop's create built it, plus every lister.
        let mut at = listers.clone();
        if let Some(r) = &record {
            if !at.iter().any(|(p, _)| *p == r.provider) {
                if let Ok(p) = super::create::workshop_provider(r) {
                    at.push((r.provider.clone(), p));
                }
            }
        }
        match destroy_workshop(name, record.as_ref(), &at).await {
            Ok(removed) => {
                dir.remove()?;
                for line in &removed {
                    out.say(&format!("removed {line}"));
                }
                out.say(&format!(
                    "Workshop {name} destroyed (expired {expired_at})."
                ));
                json.push(serde_json::json!({"workshop": name, "expired": expired_at, "removed": removed, "destroyed": true}));
            }
            Err(e) => {
                eprintln!("error: workshop {name}: {e:#}");
                errors.push(name.to_string());
            }
        }
    }
    if out.json() {
        println!("{}", serde_json::Value::Array(json));
    } else if gone.is_empty() {
        out.say("No workshop has expired.");
    }
    if !errors.is_empty() {
        bail!(
            "could not destroy {}: run `swarmup workshop reap` again, or `swarmup workshop destroy NAME`",
            errors.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workshop_clusters_are_told_by_name() {
        assert!(is_workshop_cluster("dec", "dec-s01"));
        assert!(is_workshop_cluster("dec", "dec-s123"));
        assert!(!is_workshop_cluster("dec", "dec-s1"));
        assert!(!is_workshop_cluster("dec", "dec-2-s01"));
        assert!(!is_workshop_cluster("dec", "decs01"));
        assert!(!is_workshop_cluster("de", "dec-s01"));
    }

    #[test]
    fn reap_takes_only_what_has_expired() {
        let mut found = BTreeMap::new();
        found.insert(
            "old".to_string(),
            Found {
                expires: Some(100),
                ..Default::default()
            },
        );
        found.insert(
            "new".to_string(),
            Found {
                expires: Some(1000),
                ..Default::default()
            },
        );
        found.insert("untagged".to_string(), Found::default());
        assert_eq!(expired(&found, 500), ["old"]);
        assert_eq!(expired(&found, 1000), ["new", "old"]);
    }

    #[test]
    fn exec_failures_name_the_exit_code_and_first_line() {
        let r = Ran {
            machine: "w-s01-node1".into(),
            cluster: "w-s01".into(),
            status: Some(3),
            stdout: "out\n".into(),
            stderr: "\nno such thing\nmore\n".into(),
            error: None,
        };
        assert_eq!(exec_failure(&r), "exit 3: no such thing");
        let r = Ran {
            error: Some("cannot connect".into()),
            status: None,
            ..r
        };
        assert_eq!(exec_failure(&r), "could not run: cannot connect");
    }
}
