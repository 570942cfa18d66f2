//! The decisions of `swarmup workshop`, as pure functions: settings from flags and the
//! workshop file, names, the time to live, what a re-run resumes, and status rows.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::record::{ClusterState, StudentCluster, WorkshopRecord};
use super::WorkshopCreateArgs;
use crate::create::{resolve_managers, DEFAULT_PROVIDER, MAX_NODES};

/// A workshop's time to live when neither `--ttl` nor the file gives one: a teaching day.
pub const DEFAULT_TTL: &str = "8h";
/// The longest time to live: a workshop forgotten for longer is a bill, not a workshop.
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// The most clusters one workshop makes (three-digit labels).
pub const MAX_CLUSTERS: u32 = 999;
/// Cluster names are at most this long (`records::validate_name`).
const MAX_CLUSTER_NAME: usize = 24;

/// A workshop file (`swarmup workshop create -f workshop.yaml`): the flags' keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkshopFile {
    pub name: Option<String>,
    pub students: Option<u32>,
    pub nodes: Option<u32>,
    pub managers: Option<u32>,
    pub provider: Option<String>,
    pub spares: Option<u32>,
    pub ttl: Option<String>,
    pub student_keys: Option<bool>,
    pub offline: Option<bool>,
    pub region: Option<String>,
    pub size: Option<String>,
    pub image: Option<String>,
}

/// The flags with `-f FILE` merged in: a flag the user gave wins, the file fills the rest.
pub fn merge_file(args: WorkshopCreateArgs) -> Result<WorkshopCreateArgs> {
    let Some(path) = args.file.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read workshop file {}", path.display()))?;
    let file: WorkshopFile = serde_norway::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid workshop file {}: {e}", path.display()))?;
    Ok(merge(args, file))
}

/// [`merge_file`]'s decision, without the file system.
pub fn merge(mut args: WorkshopCreateArgs, file: WorkshopFile) -> WorkshopCreateArgs {
    args.name = args.name.or(file.name);
    args.students = args.students.or(file.students);
    args.nodes = args.nodes.or(file.nodes);
    args.managers = args.managers.or(file.managers);
    args.provider = args.provider.or(file.provider);
    args.spares = args.spares.or(file.spares);
    args.ttl = args.ttl.or(file.ttl);
    // A switch can only be turned on by a flag: the file turns it on when the flag is off.
    args.student_keys |= file.student_keys.unwrap_or(false);
    args.offline |= file.offline.unwrap_or(false);
    args.region = args.region.or(file.region);
    args.size = args.size.or(file.size);
    args.image = args.image.or(file.image);
    args
}

/// `8h`, `90m`, `2d`, `45s`, or several: `1h30m`. In seconds.
pub fn parse_ttl(text: &str) -> Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "invalid --ttl {text:?}: use a number with a unit, s, m, h or d (8h, 90m, 2d, 1h30m)"
        )
    };
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    if total > MAX_TTL_SECONDS {
        bail!("--ttl {text} is longer than 30 days: give a shorter one and run the workshop again later if need be");
    }
    Ok(total)
}

/// `s01`…: two digits, three when there are more than 99 clusters.
pub fn student_label(index: u32, total: u32) -> String {
    if total > 99 {
        format!("s{index:03}")
    } else {
        format!("s{index:02}")
    }
}

/// The cluster of student `label` in workshop `name`.
pub fn cluster_name(name: &str, label: &str) -> String {
    format!("{name}-{label}")
}

/// What a workshop create was asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub name: String,
    pub provider: String,
    pub students: u32,
    pub spares: u32,
    pub nodes: u32,
    pub managers: u32,
    /// `None` when no TTL was given (a re-run keeps the recorded one).
    pub ttl_seconds: Option<u64>,
    pub student_keys: bool,
    pub offline: bool,
    pub region: Option<String>,
    pub size: Option<String>,
    pub image: Option<String>,
    pub swarm_node_binary: Option<PathBuf>,
    pub dry_run: bool,
}

impl Settings {
    pub fn clusters(&self) -> u32 {
        self.students + self.spares
    }
}

/// Checks the merged flags: names that fit, counts that make sense.
pub fn check(args: &WorkshopCreateArgs) -> Result<Settings> {
    let Some(name) = args.name.clone() else {
        bail!("--name is required: the workshop's name, for example --name docker-dec");
    };
    let Some(students) = args.students else {
        bail!("--students is required: how many students, for example --students 20");
    };
    let Some(nodes) = args.nodes else {
        bail!("--nodes is required: nodes per student, for example --nodes 3");
    };
    if students == 0 {
        bail!("--students must be at least 1");
    }
    let spares = args.spares.unwrap_or(0);
    let clusters = students.saturating_add(spares);
    if clusters > MAX_CLUSTERS {
        bail!("--students {students} with --spares {spares} is more than {MAX_CLUSTERS} clusters: split the workshop in two");
    }
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if nodes > MAX_NODES {
        bail!("--nodes {nodes} is more than swarmup creates per cluster ({MAX_NODES})");
    }
    let managers = resolve_managers(nodes, args.managers)?;
    let longest = cluster_name(&name, &student_label(clusters, clusters));
    if name.len() + 1 > MAX_CLUSTER_NAME || crate::records::validate_name(&name).is_err() {
        bail!(
            "invalid workshop name {name:?}: use lowercase letters, digits and '-', starting with a letter, short enough for {longest:?} to have at most {MAX_CLUSTER_NAME} characters"
        );
    }
    crate::records::validate_name(&longest).map_err(|_| {
        anyhow::anyhow!(
            "workshop name {name:?} is too long: its clusters are named like {longest:?}, which must have at most {MAX_CLUSTER_NAME} characters"
        )
    })?;
    let provider = args
        .provider
        .clone()
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_string());
    if provider == "ssh" {
        bail!("--provider ssh is not for workshops: it prepares machines you already have, one cluster at a time; use lab, digitalocean or virtualbox");
    }
    let ttl_seconds = args.ttl.as_deref().map(parse_ttl).transpose()?;
    Ok(Settings {
        name,
        provider,
        students,
        spares,
        nodes,
        managers,
        ttl_seconds,
        student_keys: args.student_keys,
        offline: args.offline,
        region: args.region.clone(),
        size: args.size.clone(),
        image: args.image.clone(),
        swarm_node_binary: args.swarm_node_binary.clone(),
        dry_run: args.dry_run,
    })
}

/// The workshop record a create works towards: the earlier run's (whose settings must
/// not change, whose passwords and expiry stay), grown by new students or spares, or a
/// new one expiring `now + ttl`. `password` makes each new student's password.
pub fn plan_record(
    s: &Settings,
    earlier: Option<&WorkshopRecord>,
    now: u64,
    mut password: impl FnMut() -> String,
) -> Result<WorkshopRecord> {
    let mut record = match earlier {
        Some(r) => {
            let mut differ = Vec::new();
            if r.provider != s.provider {
                differ.push(format!("--provider {}", r.provider));
            }
            if r.nodes != s.nodes {
                differ.push(format!("--nodes {}", r.nodes));
            }
            if r.managers != s.managers {
                differ.push(format!("--managers {}", r.managers));
            }
            if r.student_keys != s.student_keys {
                differ.push(if r.student_keys {
                    "--student-keys".to_string()
                } else {
                    "no --student-keys".to_string()
                });
            }
            if r.offline != s.offline {
                differ.push(if r.offline {
                    "--offline".to_string()
                } else {
                    "no --offline".to_string()
                });
            }
            if !differ.is_empty() {
                bail!(
                    "workshop {} exists with {}: run it again with the same settings to resume, or `swarmup workshop destroy {}` first",
                    r.name,
                    differ.join(", "),
                    r.name
                );
            }
            if s.ttl_seconds.is_some() {
                bail!(
                    "workshop {} exists and expires at {}: --ttl applies when a workshop is made; leave it out to resume",
                    r.name,
                    rfc3339(r.expires)
                );
            }
            if s.clusters() < r.clusters.len() as u32 {
                bail!(
                    "workshop {} has {} clusters and create never removes any: ask for at least as many students and spares, or `swarmup workshop destroy {}`",
                    r.name,
                    r.clusters.len(),
                    r.name
                );
            }
            let mut r = r.clone();
            r.students = s.students;
            r.spares = s.spares;
            r
        }
        None => {
            let ttl = s.ttl_seconds.unwrap_or(parse_ttl(DEFAULT_TTL)?);
            WorkshopRecord {
                name: s.name.clone(),
                provider: s.provider.clone(),
                students: s.students,
                spares: s.spares,
                nodes: s.nodes,
                managers: s.managers,
                ttl_seconds: ttl,
                expires: now + ttl,
                created: now,
                student_keys: s.student_keys,
                offline: s.offline,
                region: s.region.clone(),
                size: s.size.clone(),
                image: s.image.clone(),
                clusters: Vec::new(),
            }
        }
    };
    let total = s.clusters();
    // Labels keep their width once chosen: a workshop that grows past 99 keeps s01….
    let three_digits = record
        .clusters
        .first()
        .map_or(total > 99, |c| c.student.len() > 3);
    for i in (record.clusters.len() as u32 + 1)..=total {
        let student = student_label(i, if three_digits { 100 } else { 1 });
        record.clusters.push(StudentCluster {
            cluster: cluster_name(&s.name, &student),
            student,
            spare: i > s.students,
            password: (!s.student_keys).then(&mut password),
            public_key: None,
            state: ClusterState::Pending,
            last_error: None,
        });
    }
    for (i, c) in record.clusters.iter_mut().enumerate() {
        c.spare = i as u32 >= s.students;
    }
    Ok(record)
}

/// Whether a re-run must work on a cluster: anything but a ready cluster whose record
/// and client certificate are still here.
pub fn needs_work(c: &StudentCluster, has_record: bool, has_client_cert: bool) -> bool {
    !(c.state == ClusterState::Ready && has_record && has_client_cert)
}

/// `7h59m`, `12m`, `40s`, or `expired`.
pub fn time_left(expires: u64, now: u64) -> String {
    if expires <= now {
        return "expired".to_string();
    }
    let left = expires - now;
    let (d, h, m) = (left / 86400, left % 86400 / 3600, left % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{left}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// A Unix time as RFC 3339, UTC.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// What the cluster said for one row of `workshop status`.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// (nodes, ready, services)
    Answered(usize, usize, usize),
    /// It did not answer: why.
    Silent(String),
}

/// One row of `workshop status`: STUDENT, CLUSTER, NODES READY, SERVICES, TIME LEFT, COST,
/// LAST ERROR. `hourly` is the cluster's price per hour when the provider has prices.
pub fn status_row(
    c: &StudentCluster,
    seen: &Seen,
    expires: u64,
    created: u64,
    now: u64,
    hourly: Option<f64>,
) -> Vec<String> {
    let (ready, services) = match seen {
        Seen::Answered(nodes, ready, services) => {
            (format!("{ready}/{nodes}"), services.to_string())
        }
        Seen::Silent(_) => ("-".to_string(), "-".to_string()),
    };
    let error = match (&c.last_error, seen) {
        (Some(e), _) => e.clone(),
        (None, Seen::Silent(why)) if c.state != ClusterState::Pending => why.clone(),
        (None, _) if c.state == ClusterState::Pending => "not created yet".to_string(),
        _ => String::new(),
    };
    let student = if c.spare {
        format!("{} (spare)", c.student)
    } else {
        c.student.clone()
    };
    vec![
        student,
        c.cluster.clone(),
        ready,
        services,
        time_left(expires, now),
        cost_so_far(hourly, created, now.min(expires.max(created))),
        one_line(&error, 80),
    ]
}

/// `$0.42`, from an hourly price and the hours since the cluster was made (a started hour
/// counts, as cloud providers bill); `-` without a price.
pub fn cost_so_far(hourly: Option<f64>, since: u64, now: u64) -> String {
    match hourly {
        Some(price) => {
            let hours = (now.saturating_sub(since)).div_ceil(3600).max(1);
            format!("${:.2}", price * hours as f64)
        }
        None => "-".to_string(),
    }
}

/// The first line of `text`, cut to `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> WorkshopCreateArgs {
        use clap::Parser;
        let cli = crate::Cli::parse_from(["swarmup", "workshop", "create"].iter().chain(argv));
        let crate::Command::Workshop { command } = cli.command else {
            panic!("not workshop");
        };
        let super::super::WorkshopCommand::Create(args) = command else {
            panic!("not create");
        };
        args
    }

    #[test]
    fn ttls_take_units_and_refuse_the_rest() {
        assert_eq!(parse_ttl("8h").unwrap(), 8 * 3600);
        assert_eq!(parse_ttl("90m").unwrap(), 90 * 60);
        assert_eq!(parse_ttl("2d").unwrap(), 2 * 86400);
        assert_eq!(parse_ttl("1s").unwrap(), 1);
        assert_eq!(parse_ttl("1h30m").unwrap(), 5400);
        for bad in [
            "",
            "8",
            "h",
            "0h",
            "8x",
            "-1h",
            "8 h",
            "99999999999999999999d",
        ] {
            let err = parse_ttl(bad).unwrap_err().to_string();
            assert!(err.contains("--ttl"), "{bad}: {err}");
        }
        assert!(parse_ttl("31d")
            .unwrap_err()
            .to_string()
            .contains("30 days"));
    }

    #[test]
    fn labels_are_zero_padded_to_two_digits_or_three_past_99() {
        assert_eq!(student_label(1, 4), "s01");
        assert_eq!(student_label(12, 99), "s12");
        assert_eq!(student_label(7, 100), "s007");
        assert_eq!(cluster_name("dec", "s01"), "dec-s01");
    }

    #[test]
    fn settings_are_checked_in_one_line_each() {
        let s = check(&args(&["--name", "dec", "--students", "4", "--nodes", "2"])).unwrap();
        assert_eq!((s.students, s.nodes, s.managers), (4, 2, 1));
        assert_eq!(s.provider, "lab");
        assert_eq!(s.ttl_seconds, None);
        for (argv, want) in [
            (
                vec!["--students", "4", "--nodes", "2"],
                "--name is required",
            ),
            (
                vec!["--name", "d", "--nodes", "2"],
                "--students is required",
            ),
            (
                vec!["--name", "d", "--students", "2"],
                "--nodes is required",
            ),
            (
                vec!["--name", "d", "--students", "0", "--nodes", "2"],
                "at least 1",
            ),
            (
                vec!["--name", "D", "--students", "1", "--nodes", "2"],
                "invalid workshop name",
            ),
            (
                vec![
                    "--name",
                    "a-very-long-workshop-x",
                    "--students",
                    "1",
                    "--nodes",
                    "1",
                ],
                "at most 24",
            ),
            (
                vec![
                    "--name",
                    "d",
                    "--students",
                    "1",
                    "--nodes",
                    "4",
                    "--managers",
                    "2",
                ],
                "even",
            ),
            (
                vec![
                    "--name",
                    "d",
                    "--students",
                    "1",
                    "--nodes",
                    "1",
                    "--provider",
                    "ssh",
                ],
                "not for workshops",
            ),
            (
                vec![
                    "--name",
                    "d",
                    "--students",
                    "1",
                    "--nodes",
                    "1",
                    "--ttl",
                    "soon",
                ],
                "invalid --ttl",
            ),
        ] {
            let err = check(&args(&argv)).unwrap_err().to_string();
            assert!(err.contains(want), "{argv:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // 20 characters fit with two-digit labels, not with three.
        let name = "abcdefghijklmnopqrst";
        assert!(check(&args(&["--name", name, "--students", "9", "--nodes", "1"])).is_ok());
        assert!(check(&args(&[
            "--name",
            name,
            "--students",
            "100",
            "--nodes",
            "1"
        ]))
        .is_err());
    }

    #[test]
    fn flags_win_over_the_workshop_file() {
        let file: WorkshopFile = serde_norway::from_str(
            "name: dec\nstudents: 30\nnodes: 3\nttl: 2d\nstudent_keys: true\nspares: 2\n",
        )
        .unwrap();
        let merged = merge(args(&["--students", "4"]), file);
        assert_eq!(merged.name.as_deref(), Some("dec"));
        assert_eq!(merged.students, Some(4));
        assert_eq!(merged.nodes, Some(3));
        assert_eq!(merged.ttl.as_deref(), Some("2d"));
        assert_eq!(merged.spares, Some(2));
        assert!(merged.student_keys);
        assert!(serde_norway::from_str::<WorkshopFile>("studnets: 3\n").is_err());
    }

    fn settings(students: u32, spares: u32) -> Settings {
        let mut s = check(&args(&["--name", "w", "--students", "1", "--nodes", "2"])).unwrap();
        s.students = students;
        s.spares = spares;
        s
    }

    #[test]
    fn a_new_workshop_plans_every_cluster_with_a_password_and_an_expiry() {
        let mut n = 0;
        let r = plan_record(&settings(3, 1), None, 1000, || {
            n += 1;
            format!("pw{n}")
        })
        .unwrap();
        let names: Vec<_> = r.clusters.iter().map(|c| c.cluster.as_str()).collect();
        assert_eq!(names, ["w-s01", "w-s02", "w-s03", "w-s04"]);
        assert!(r.clusters[3].spare);
        assert_eq!(r.clusters[0].password.as_deref(), Some("pw1"));
        assert_eq!(r.expires, 1000 + 8 * 3600);
        assert!(r.clusters.iter().all(|c| c.state == ClusterState::Pending));
    }

    #[test]
    fn a_rerun_keeps_passwords_and_expiry_grows_and_refuses_changes() {
        let first = plan_record(&settings(2, 0), None, 1000, || "pw".into()).unwrap();
        let grown = plan_record(&settings(3, 0), Some(&first), 5000, || "new".into()).unwrap();
        assert_eq!(grown.expires, first.expires);
        assert_eq!(grown.clusters[0].password.as_deref(), Some("pw"));
        assert_eq!(grown.clusters[2].password.as_deref(), Some("new"));
        assert_eq!(grown.clusters[2].cluster, "w-s03");
        let err = plan_record(&settings(1, 0), Some(&first), 5000, || "x".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("never removes"), "{err}");
        let mut other = settings(2, 0);
        other.nodes = 3;
        other.managers = 3;
        let err = plan_record(&other, Some(&first), 5000, || "x".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists with --nodes 2, --managers 1"), "{err}");
        let mut ttl = settings(2, 0);
        ttl.ttl_seconds = Some(60);
        assert!(plan_record(&ttl, Some(&first), 5000, || "x".into())
            .unwrap_err()
            .to_string()
            .contains("--ttl applies when"));
    }

    #[test]
    fn resume_skips_only_complete_clusters() {
        let mut c = plan_record(&settings(1, 0), None, 0, || "p".into())
            .unwrap()
            .clusters
            .remove(0);
        assert!(needs_work(&c, true, true), "pending");
        c.state = ClusterState::Ready;
        assert!(!needs_work(&c, true, true));
        assert!(needs_work(&c, false, true), "record lost");
        assert!(needs_work(&c, true, false), "no client certificate");
        c.state = ClusterState::Failed;
        assert!(needs_work(&c, true, true));
    }

    #[test]
    fn status_rows_say_readiness_time_cost_and_errors() {
        let mut c = plan_record(&settings(1, 0), None, 0, || "p".into())
            .unwrap()
            .clusters
            .remove(0);
        c.state = ClusterState::Ready;
        let row = status_row(&c, &Seen::Answered(2, 2, 1), 7200, 0, 60, None);
        assert_eq!(row, ["s01", "w-s01", "2/2", "1", "1h59m", "-", ""]);
        let row = status_row(
            &c,
            &Seen::Silent("no manager answered".into()),
            7200,
            0,
            3700,
            Some(0.0214),
        );
        assert_eq!(row[2], "-");
        assert_eq!(row[5], "$0.04");
        assert_eq!(row[6], "no manager answered");
        c.last_error = Some("w-s01-node2: ssh: timed out\nmore".into());
        let row = status_row(&c, &Seen::Answered(2, 1, 0), 10, 0, 20, None);
        assert_eq!(row[4], "expired");
        assert_eq!(row[6], "w-s01-node2: ssh: timed out");
    }

    #[test]
    fn time_left_reads_like_a_clock() {
        assert_eq!(time_left(100, 60), "40s");
        assert_eq!(time_left(3600 * 8, 0), "8h00m");
        assert_eq!(time_left(90 * 60, 0), "1h30m");
        assert_eq!(time_left(5 * 60, 0), "5m");
        assert_eq!(time_left(2 * 86400 + 3 * 3600, 0), "2d3h");
        assert_eq!(time_left(5, 5), "expired");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
