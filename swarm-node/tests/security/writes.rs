//! Bounded writes: one node certificate cannot flood the Raft log, and no single request
//! makes an entry too big for the log to carry.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::authority::{serial, Stolen};
use crate::support::*;

/// How long each flood lasts.
const FLOOD: Duration = Duration::from_secs(5);
/// Requests per curl run (one keep-alive connection).
const BATCH: usize = 50;

/// The log index now, as the manager's Docker API shows it: a node update is committed
/// at the next index, which its `Version.Index` then names. Each probe is itself one
/// entry.
fn log_index(manager: &TestNode, probe: &mut u32) -> u64 {
    *probe += 1;
    manager.docker_ok(&[
        "node",
        "update",
        "--label-add",
        &format!("probe={probe}"),
        &manager.name,
    ]);
    manager
        .docker_ok(&[
            "node",
            "inspect",
            &manager.name,
            "--format",
            "{{.Version.Index}}",
        ])
        .trim()
        .parse()
        .unwrap()
}

fn journal_bytes(manager: &TestNode) -> u64 {
    std::fs::metadata(manager.dir.join("state/raft/raft.journal"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Sends `body(i)` to `path` for [`FLOOD`], [`BATCH`] requests per connection. Returns
/// (requests, answers by status).
fn flood(
    stolen: &Stolen,
    addr: &str,
    path: &str,
    dir: &std::path::Path,
    body: impl Fn(usize) -> String,
) -> (usize, std::collections::BTreeMap<String, usize>) {
    let start = Instant::now();
    let mut sent = 0;
    let mut codes = std::collections::BTreeMap::new();
    let mut round = 0;
    while start.elapsed() < FLOOD {
        let file = dir.join(format!("body-{round}.json"));
        std::fs::write(&file, body(round)).unwrap();
        round += 1;
        let url = format!("https://{addr}{path}");
        let out = stolen
            .curl()
            .args(["-w", "\ncode=%{http_code}\n"])
            .args(["-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .args(std::iter::repeat_n(url.as_str(), BATCH))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for code in text.lines().filter_map(|l| l.strip_prefix("code=")) {
            *codes.entry(code.to_string()).or_insert(0) += 1;
            sent += 1;
        }
    }
    (sent, codes)
}

fn ready_count(manager: &TestNode) -> usize {
    let out = manager.docker(&["node", "ls", "--format", "{{.Status}}"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Ready"))
        .count()
}

fn unix_get(node: &TestNode, path: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(node.socket())
        .arg(format!("http://localhost/v1.41{path}"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Attack: one worker certificate floods the managers (the leader, then a follower that
/// forwards to it) for a few seconds each with identical task status reports (each used
/// to append a Raft entry, even for tasks that did not change or do not exist), then
/// with heartbeats whose node description changes every time (each used to append an
/// entry). The log grows by a bounded number of entries.
#[test]
fn task_status_and_heartbeat_floods_leave_the_raft_log_bounded() {
    if !e2e_enabled("task_status_and_heartbeat_floods_leave_the_raft_log_bounded") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["m1", "w1", "m2"]);
    sb.init("1s");
    sb.join(1, "worker");
    sb.join(2, "manager");
    let m1 = &sb.nodes[0];
    wait_for("w1 and m2 ready", Duration::from_secs(30), || {
        ready_count(m1) == 3
    });
    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "steady",
        "--constraint",
        "node.hostname==w1",
        IMAGE,
        "sleep",
        "3600",
    ]);
    let mut task = serde_json::Value::Null;
    wait_for("the task running on w1", Duration::from_secs(40), || {
        task = unix_get(m1, "/tasks")
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default();
        task["Status"]["State"] == "running"
    });
    let stolen = Stolen::copy_from(&sb, &sb.nodes[1]);
    let m1 = &sb.nodes[0];
    let dir = sb.root.path().join("flood");
    std::fs::create_dir_all(&dir).unwrap();
    let mut probe = 0;

    // Identical reports: the running task's own status (a fresh timestamp aside) and a
    // task that does not exist.
    let mut status = task["Status"].clone();
    status["Timestamp"] = serde_json::json!("2030-01-01T00:00:00Z");
    let report = serde_json::json!({
        "node_id": stolen.node_id,
        "updates": [
            {"task_id": task["ID"], "status": status},
            {"task_id": "no-such-task", "status": {"State": "failed", "Message": "x"}},
        ],
    })
    .to_string();
    for target in [&sb.nodes[0], &sb.nodes[2]] {
        let (before, bytes_before) = (log_index(m1, &mut probe), journal_bytes(m1));
        let (sent, codes) = flood(
            &stolen,
            &target.addr(),
            "/swarmup/v1/task-status",
            &dir,
            |_| report.clone(),
        );
        let after = log_index(m1, &mut probe);
        let growth = after - before - 1;
        println!(
            "figure: {sent} identical task-status reports to {} in {FLOOD:?} ({codes:?}): log +{growth} entries, journal +{} bytes",
            target.name,
            journal_bytes(m1) - bytes_before
        );
        assert!(sent >= 100, "the flood must reach the manager: {codes:?}");
        assert_eq!(codes.get("200"), Some(&sent), "{codes:?}");
        assert!(
            growth <= 5,
            "log grew by {growth} entries under {sent} reports to {}",
            target.name
        );
    }

    // Heartbeats whose description changes with every request.
    let beat = |round: usize| {
        serde_json::json!({
            "node_id": stolen.node_id,
            "addr": sb.nodes[1].addr(),
            "description": {"Engine": {"Labels": {"flood": round.to_string()}}},
        })
        .to_string()
    };
    for target in [&sb.nodes[0], &sb.nodes[2]] {
        let (before, bytes_before) = (log_index(m1, &mut probe), journal_bytes(m1));
        let (sent, codes) = flood(&stolen, &target.addr(), "/swarmup/v1/heartbeat", &dir, beat);
        let after = log_index(m1, &mut probe);
        let growth = after - before - 1;
        println!(
            "figure: {sent} heartbeats with changing descriptions to {} in {FLOOD:?} ({codes:?}): log +{growth} entries, journal +{} bytes",
            target.name,
            journal_bytes(m1) - bytes_before
        );
        assert!(sent >= 100, "the flood must reach the manager: {codes:?}");
        // One description change per node per 5 s, plus the real agent's own heartbeats
        // putting its description back.
        assert!(
            growth <= 6,
            "log grew by {growth} entries under {sent} heartbeats to {}",
            target.name
        );
    }

    // A description over the limit is refused outright.
    let huge = serde_json::json!({
        "node_id": stolen.node_id,
        "addr": sb.nodes[1].addr(),
        "description": {"Engine": {"Labels": {"big": "x".repeat(100 * 1024)}}},
    })
    .to_string();
    let file = dir.join("huge.json");
    std::fs::write(&file, huge).unwrap();
    let (code, body) = stolen.call(
        "POST",
        &m1.addr(),
        "/swarmup/v1/heartbeat",
        Some(&format!("@{}", file.display())),
    );
    println!("oversized description: {code} {body}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("too large"), "{body}");
}

/// Attack: `docker service create --replicas 100001` (and scaling a service to it),
/// which used to make one Raft entry of tens of megabytes and gigabytes of manager
/// memory. Refused with Docker's 400; the cap itself is accepted by the API.
#[test]
fn replicas_beyond_the_cap_are_refused() {
    if !e2e_enabled("replicas_beyond_the_cap_are_refused") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["m1"]);
    sb.init("1s");
    let m1 = &sb.nodes[0];
    let err = m1.docker_err(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "huge",
        "--replicas",
        "100001",
        IMAGE,
    ]);
    println!("service create --replicas 100001: {err}");
    assert!(err.contains("replicas must be at most 100000"), "{err}");
    assert!(m1.docker_ok(&["service", "ls", "-q"]).trim().is_empty());

    m1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "small",
        "--replicas",
        "0",
        IMAGE,
    ]);
    let err = m1.docker_err(&["service", "scale", "-d", "small=100001"]);
    println!("service scale small=100001: {err}");
    assert!(err.contains("replicas must be at most 100000"), "{err}");

    // The answer itself is Docker's 400 with {"message"}.
    let spec = r#"{"Name":"raw","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}},"Mode":{"Replicated":{"Replicas":100001}}}"#;
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(m1.socket())
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            spec,
        ])
        .arg("http://localhost/v1.41/services/create")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code.trim(), "400", "{text}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("replicas must be at most 100000"));
}
