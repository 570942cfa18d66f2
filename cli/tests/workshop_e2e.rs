//! `swarmup workshop` end to end on lab clusters: a workshop of 4 students x 2 nodes
//! comes up; every student's swarm answers the stock docker CLI through `swarmup env`,
//! and the student's own login over SSH (a password, through sshpass) runs `docker node
//! ls` on the manager; status and exec cover every cluster; cards render in every
//! format; resetting one student leaves the others' nodes as they were; destroy (without
//! the workshop's record) and reap (of a workshop whose time to live has passed) leave
//! nothing behind.
//!
//! Needs SWARMUP_E2E=1, root, dockerd, sshd, iproute2, nftables and sshpass.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{
    docker_cli, e2e_enabled, ensure_swarm_node, run_bounded, serial, wait_for, Footprint, Run,
    Sandbox,
};

const STUDENTS: usize = 4;

fn figure(what: &str, took: Duration) {
    println!("figure: {what}: {:.3}s", took.as_secs_f64());
}

/// A workshop of one sandbox, destroyed when dropped whatever happened in between.
struct Workshop<'a> {
    sb: &'a Sandbox,
    name: String,
}

impl Drop for Workshop<'_> {
    fn drop(&mut self) {
        let mut cmd = self
            .sb
            .swarmup(&["workshop", "destroy", &self.name, "--yes"]);
        cmd.stdout(Stdio::null());
        match cmd.status() {
            Ok(s) if s.success() => eprintln!("cleanup: workshop {} destroyed", self.name),
            Ok(s) => eprintln!("cleanup: workshop destroy {} exited with {s}", self.name),
            Err(e) => eprintln!("cleanup: cannot run swarmup workshop destroy: {e}"),
        }
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The stock docker CLI as after `eval $(swarmup env CLUSTER)`.
fn docker(sb: &Sandbox, cluster: &str, args: &[&str]) -> Run {
    let env = json(&sb.ok(&["env", cluster, "--output", "json"]));
    let mut cmd = Command::new(docker_cli());
    cmd.args(args)
        .env_remove("DOCKER_CONTEXT")
        .env("DOCKER_CONFIG", &sb.docker_config)
        .stdin(Stdio::null());
    for (k, v) in env.as_object().expect("env JSON is an object") {
        cmd.env(k, v.as_str().unwrap_or_default());
    }
    run_bounded(cmd, Duration::from_secs(60))
}

/// Node id → creation time, as the cluster's own `docker node ls` sees them.
fn node_ids(sb: &Sandbox, cluster: &str) -> BTreeMap<String, String> {
    let ls = docker(sb, cluster, &["node", "ls", "-q"]).expect_ok();
    let ids: Vec<&str> = ls.split_whitespace().collect();
    assert!(!ids.is_empty(), "{cluster} lists no nodes");
    let mut args = vec!["node", "inspect", "--format", "{{.ID}} {{.CreatedAt}}"];
    args.extend(&ids);
    docker(sb, cluster, &args)
        .expect_ok()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, created)| (id.to_string(), created.to_string()))
        .collect()
}

/// The first machine of a cluster's record: (address, port).
fn manager_endpoint(sb: &Sandbox, cluster: &str) -> (String, u16) {
    let record = std::fs::read_to_string(sb.record_dir(cluster).join("cluster.json"))
        .expect("cluster record");
    let v = json(&record);
    let m = &v["last_seen"][0];
    assert_eq!(m["role"], "manager", "{record}");
    (
        m["ssh"]["host"].as_str().expect("address").to_string(),
        m["ssh"]["port"].as_u64().expect("port") as u16,
    )
}

/// `docker node ls` as the student, logged in over SSH with the password, host key
/// pinned from the cluster's known_hosts. Retried: sshd reloads its config when the
/// student's login is added.
fn docker_as_student(sb: &Sandbox, cluster: &str, password: &str) -> String {
    let (host, port) = manager_endpoint(sb, cluster);
    let known_hosts = sb.record_dir(cluster).join("known_hosts");
    let (out, _) = wait_for(
        &format!("the student's docker node ls on {cluster}"),
        Duration::from_secs(30),
        || {
            let mut cmd = Command::new("sshpass");
            cmd.arg("-e")
                .env("SSHPASS", password)
                .args(["ssh", "-F", "/dev/null", "-p", &port.to_string()])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args([
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "PubkeyAuthentication=no",
                    "-o",
                    "PreferredAuthentications=password",
                    "-o",
                    "ConnectTimeout=10",
                ])
                .arg(format!("student@{host}"))
                .arg("id -un; docker node ls --format '{{.Hostname}} {{.Status}}'")
                .stdin(Stdio::null());
            let run = run_bounded(cmd, Duration::from_secs(30));
            if run.ok() {
                Ok(run.stdout)
            } else {
                Err(run.to_string())
            }
        },
    );
    out
}

/// Root may not log in with a password: the student's Match block is the student's alone.
fn root_password_refused(sb: &Sandbox, cluster: &str) {
    let (host, port) = manager_endpoint(sb, cluster);
    let known_hosts = sb.record_dir(cluster).join("known_hosts");
    let mut cmd = Command::new("sshpass");
    cmd.arg("-e")
        .env("SSHPASS", "whatever")
        .args(["ssh", "-F", "/dev/null", "-p", &port.to_string()])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "ConnectTimeout=10",
        ])
        .arg(format!("root@{host}"))
        .arg("true")
        .stdin(Stdio::null());
    let run = run_bounded(cmd, Duration::from_secs(30));
    assert!(!run.ok(), "root logged in with a password: {run}");
    assert!(
        run.stderr.contains("Permission denied (publickey)"),
        "root must be offered keys only: {run}"
    );
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Renders the cards in every format and says what is wrong with each, if anything.
fn card_problems(sb: &Sandbox, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for format in ["html", "pdf", "csv", "json"] {
        let file = sb.dir.path().join(format!("cards.{format}"));
        let run = sb.run(&[
            "workshop",
            "cards",
            name,
            "--format",
            format,
            "-o",
            file.to_str().expect("utf-8 path"),
        ]);
        if !run.ok() {
            problems.push(format!("{format}: {}", run.stderr.trim()));
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let ok = match format {
            "pdf" => bytes.starts_with(b"%PDF"),
            "json" => serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == STUDENTS)),
            "csv" => text.lines().count() > STUDENTS,
            _ => text.contains("<html") || text.contains("<!DOCTYPE") || text.contains("<!doctype"),
        };
        if !ok {
            problems.push(format!(
                "{format}: unexpected content ({} bytes)",
                bytes.len()
            ));
        }
    }
    problems
}

#[test]
fn a_lab_workshop_comes_up_serves_students_resets_one_and_leaves_nothing() {
    if !e2e_enabled("a_lab_workshop_comes_up_serves_students_resets_one_and_leaves_nothing") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let sb = Sandbox::new();
    let name = format!("ws-{:x}", std::process::id() & 0xffff);
    let workshop = Workshop {
        sb: &sb,
        name: name.clone(),
    };
    let clusters: Vec<String> = (1..=STUDENTS).map(|i| format!("{name}-s{i:02}")).collect();

    // A bad input is refused in one line, before anything is made.
    let err = sb
        .run(&[
            "workshop",
            "create",
            "--name",
            &name,
            "--students",
            "2",
            "--nodes",
            "2",
            "--ttl",
            "soon",
        ])
        .expect_err();
    assert!(err.contains("invalid --ttl"), "{err}");
    assert!(!sb.home.join("workshops").join(&name).exists());

    let started_all = Instant::now();
    let started = Instant::now();
    let created = json(&sb.ok(&[
        "workshop",
        "create",
        "--name",
        &name,
        "--students",
        &STUDENTS.to_string(),
        "--nodes",
        "2",
        "--ttl",
        "2h",
        "--offline",
        "--output",
        "json",
    ]));
    figure("workshop create 4 x 2 (lab)", started.elapsed());
    assert_eq!(created["ready"], STUDENTS, "{created}");

    // Re-running resumes: nothing is left to do.
    let again = sb.ok(&[
        "workshop",
        "create",
        "--name",
        &name,
        "--students",
        "4",
        "--nodes",
        "2",
        "--offline",
    ]);
    assert!(again.contains("is complete"), "{again}");

    let record = json(
        &std::fs::read_to_string(sb.home.join("workshops").join(&name).join("workshop.json"))
            .expect("workshop record"),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sb.home.join("workshops").join(&name).join("workshop.json"))
        .expect("record")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the workshop record holds passwords");
    let passwords: BTreeMap<String, String> = record["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().expect("cluster").to_string(),
                c["password"].as_str().expect("password").to_string(),
            )
        })
        .collect();

    let sshpass = have("sshpass");
    if !sshpass {
        println!("skipped: the student's password login needs sshpass (apt-get install sshpass)");
    }
    for cluster in &clusters {
        let ls = docker(
            &sb,
            cluster,
            &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"],
        )
        .expect_ok();
        assert_eq!(ls.matches(" Ready").count(), 2, "{cluster}: {ls}");
        if sshpass {
            let out = docker_as_student(&sb, cluster, &passwords[cluster]);
            assert!(out.starts_with("student\n"), "{cluster}: {out}");
            assert_eq!(out.matches(" Ready").count(), 2, "{cluster}: {out}");
        }
    }
    if sshpass {
        root_password_refused(&sb, &clusters[0]);
    }
    figure("until every student checked", started_all.elapsed());

    let status = json(&sb.ok(&["workshop", "status", &name, "--output", "json"]));
    let rows = status.as_array().expect("status rows");
    assert_eq!(rows.len(), STUDENTS, "{status}");
    for row in rows {
        assert_eq!(row["ready"], 2, "{row}");
        assert_eq!(row["nodes"], 2, "{row}");
        assert!(row["seconds_left"].as_u64().unwrap() > 3600, "{row}");
    }
    let table = sb.ok(&["workshop", "status", &name]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "STUDENT",
            "CLUSTER",
            "NODES READY",
            "SERVICES",
            "TIME LEFT",
            "COST",
            "LAST ERROR"
        ],
        "{table}"
    );
    figure("until status", started_all.elapsed());

    let exec = sb.ok(&["workshop", "exec", &name, "--", "hostname"]);
    assert!(exec.contains("8 of 8 nodes succeeded."), "{exec}");
    for cluster in &clusters {
        assert!(
            exec.contains(&format!("{cluster}-node2: {cluster}-node2")),
            "{exec}"
        );
    }

    let cards = card_problems(&sb, &name);
    figure("until cards", started_all.elapsed());

    // Resetting one student: new nodes there, the others' nodes untouched.
    let before: Vec<BTreeMap<String, String>> = clusters.iter().map(|c| node_ids(&sb, c)).collect();
    let started = Instant::now();
    sb.ok(&["workshop", "reset", &name, "s02"]);
    figure("workshop reset of one 2-node cluster", started.elapsed());
    let after: Vec<BTreeMap<String, String>> = clusters.iter().map(|c| node_ids(&sb, c)).collect();
    for (i, cluster) in clusters.iter().enumerate() {
        if i == 1 {
            assert!(
                before[i].keys().all(|id| !after[i].contains_key(id)),
                "{cluster} kept node ids through its reset: {:?} {:?}",
                before[i],
                after[i]
            );
            assert_eq!(after[i].len(), 2, "{cluster}: {:?}", after[i]);
        } else {
            assert_eq!(before[i], after[i], "{cluster} changed when s02 was reset");
        }
    }
    if sshpass {
        let out = docker_as_student(&sb, &clusters[1], &passwords[&clusters[1]]);
        assert_eq!(out.matches(" Ready").count(), 2, "after reset: {out}");
    }

    // Destroy from a machine without the workshop's record: by its tag.
    let footprints: Vec<Footprint> = clusters.iter().map(|c| Footprint::of(&sb, c)).collect();
    std::fs::remove_dir_all(sb.home.join("workshops").join(&name)).expect("drop the record");
    let started = Instant::now();
    let out = sb.ok(&["workshop", "destroy", &name, "--yes"]);
    figure("workshop destroy 4 x 2 by tag", started.elapsed());
    assert!(
        out.contains(&format!("Workshop {name} destroyed.")),
        "{out}"
    );
    for fp in &footprints {
        fp.assert_gone(&sb);
    }
    let ls = sb.ok(&["workshop", "ls", "--output", "json"]);
    assert!(!ls.contains(&name), "{ls}");
    drop(workshop);

    assert!(
        cards.is_empty(),
        "cards did not render (if swarmup-cards is still a stub, that is why): {cards:?}"
    );
}

#[test]
fn reap_destroys_a_workshop_past_its_time_to_live() {
    if !e2e_enabled("reap_destroys_a_workshop_past_its_time_to_live") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    let sb = Sandbox::new();
    let name = format!("wr-{:x}", std::process::id() & 0xffff);
    let workshop = Workshop {
        sb: &sb,
        name: name.clone(),
    };
    let cluster = format!("{name}-s01");
    sb.ok(&[
        "workshop",
        "create",
        "--name",
        &name,
        "--students",
        "1",
        "--nodes",
        "1",
        "--ttl",
        "1s",
        "--student-keys",
        "--offline",
    ]);
    let key = sb
        .home
        .join("workshops")
        .join(&name)
        .join("keys")
        .join(&cluster);
    assert!(key.is_file(), "no student key at {}", key.display());
    // With --student-keys the student logs in with that key, and the docker CLI works.
    let (host, port) = manager_endpoint(&sb, &cluster);
    let known_hosts = sb.record_dir(&cluster).join("known_hosts");
    let (out, _) = wait_for("the student's key login", Duration::from_secs(30), || {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
            .arg(&key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
            ])
            .arg(format!("student@{host}"))
            .arg("docker node ls --format '{{.Hostname}} {{.Status}}'")
            .stdin(Stdio::null());
        let run = run_bounded(cmd, Duration::from_secs(30));
        if run.ok() {
            Ok(run.stdout)
        } else {
            Err(run.to_string())
        }
    });
    assert_eq!(out.trim(), format!("{cluster}-node1 Ready"), "{out}");

    wait_for("the workshop to expire", Duration::from_secs(10), || {
        let ls = json(&sb.ok(&["workshop", "ls", "--output", "json"]));
        match ls
            .as_array()
            .and_then(|a| a.iter().find(|w| w["name"] == name.as_str()))
        {
            Some(w) if w["expired"] == true => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let dry = sb.ok(&["workshop", "reap", "--dry-run"]);
    assert!(
        dry.contains(&format!("would destroy workshop {name}")),
        "{dry}"
    );
    assert!(
        sb.record_dir(&cluster).exists(),
        "a dry run removed the record"
    );

    let footprint = Footprint::of(&sb, &cluster);
    let out = sb.ok(&["workshop", "reap"]);
    assert!(out.contains(&format!("Workshop {name} destroyed")), "{out}");
    footprint.assert_gone(&sb);
    assert!(!sb.home.join("workshops").join(&name).exists());
    let again = sb.ok(&["workshop", "reap"]);
    assert!(again.contains("No workshop has expired."), "{again}");
    drop(workshop);
}
