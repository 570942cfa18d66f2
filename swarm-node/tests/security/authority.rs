//! Authority comes from the committed state, not from a certificate's role: a demoted
//! manager's old certificate and a removed node's certificate are worthless the moment
//! the demotion or the removal commits.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::support::*;

/// The scenarios share one Docker Engine and two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node's certificate, key and root CA, copied out of its state directory as an
/// attacker who once held the node would have kept them.
pub struct Stolen {
    pub node_id: String,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Stolen {
    pub fn copy_from(sb: &Sandbox, node: &TestNode) -> Stolen {
        let state = node.dir.join("state");
        let node_file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state.join("node.json")).unwrap())
                .unwrap();
        let into = sb.root.path().join(format!("stolen-{}", node.name));
        std::fs::create_dir_all(&into).unwrap();
        let copy = |name: &str| {
            let to = into.join(name);
            std::fs::copy(state.join("certificates").join(name), &to).unwrap();
            to
        };
        Stolen {
            node_id: node_file["node_id"].as_str().unwrap().to_string(),
            cert: copy("swarm-node.crt"),
            key: copy("swarm-node.key"),
            ca: copy("swarm-root-ca.crt"),
        }
    }

    /// curl with this certificate, key and CA.
    pub fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "20"])
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg("--cacert")
            .arg(&self.ca);
        c
    }

    /// One HTTPS call with this certificate: (status, body). A body starting with `@`
    /// names a file.
    pub fn call(&self, method: &str, addr: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut c = self.curl();
        c.args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = c.arg(format!("https://{addr}{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {path}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, body.to_string())
    }
}

fn node_id(node: &TestNode) -> String {
    let text = std::fs::read_to_string(node.dir.join("state/node.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["node_id"].as_str().unwrap().to_string()
}

fn role_of(manager: &TestNode, node: &str) -> String {
    manager
        .docker(&["node", "inspect", node, "--format", "{{.Spec.Role}}"])
        .stdout
        .iter()
        .map(|b| *b as char)
        .collect::<String>()
        .trim()
        .to_string()
}

fn ready_count(manager: &TestNode) -> usize {
    let out = manager.docker(&["node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Ready"))
        .count()
}

fn assert_refused(what: &str, (code, body): (u16, String), why: &str) {
    println!("{what}: {code} {body}");
    // A heartbeat is told the node was removed (410, it then leaves); the rest get 403.
    let expected = if what.contains("/heartbeat") {
        410
    } else {
        403
    };
    assert_eq!(code, expected, "{what} must be refused: {body}");
    let message = serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(why),
        "{what}: {message:?} should say {why:?}"
    );
}

/// Attack: a manager is demoted (`docker node demote`) and whoever holds its old manager
/// certificate, copied before the demotion, keeps using it to read the join tokens
/// (`GET /swarm`), commit commands (`POST /swarmup/v1/propose`) and take part in Raft
/// (`POST /swarmup/v1/raft/vote`). All three are refused once the demotion commits.
#[test]
fn demoted_manager_certificate_is_refused_for_tokens_proposals_and_raft() {
    if !e2e_enabled("demoted_manager_certificate_is_refused_for_tokens_proposals_and_raft") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["m1", "m2"]);
    sb.init("1s");
    sb.join(1, "manager");
    wait_for("two managers", Duration::from_secs(30), || {
        let out = sb.nodes[0].docker(&["node", "ls", "--format", "{{.ManagerStatus}}"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("Leader") && text.contains("Reachable")
    });
    let stolen = Stolen::copy_from(&sb, &sb.nodes[1]);
    let leader = sb.nodes[0].addr();
    // Before the demotion the certificate reads the swarm: the test means something.
    let (code, body) = stolen.call("GET", &leader, "/v1.41/swarm", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("SWMTKN-1-"));

    sb.nodes[0].docker_ok(&["node", "demote", "m2"]);
    assert_eq!(role_of(&sb.nodes[0], "m2"), "worker");

    // At once, with no wait: the demotion is committed when the CLI returns.
    assert_refused(
        "GET /swarm with the demoted manager's certificate",
        stolen.call("GET", &leader, "/v1.41/swarm", None),
        "demoted",
    );
    let forged = r#"{"RotateJoinToken":{"role":"worker","token":"SWMTKN-1-forged"}}"#;
    assert_refused(
        "POST /swarmup/v1/propose with the demoted manager's certificate",
        stolen.call("POST", &leader, "/swarmup/v1/propose", Some(forged)),
        "demoted",
    );
    let vote =
        r#"{"vote":{"leader_id":{"term":1,"node_id":1},"committed":false},"last_log_id":null}"#;
    assert_refused(
        "POST /swarmup/v1/raft/vote with the demoted manager's certificate",
        stolen.call("POST", &leader, "/swarmup/v1/raft/vote", Some(vote)),
        "demoted",
    );
    let token = sb.nodes[0].docker_ok(&["swarm", "join-token", "-q", "worker"]);
    assert_ne!(token.trim(), "SWMTKN-1-forged");
    // The demoted node itself carries on as a worker.
    wait_for("m2 Ready as a worker", Duration::from_secs(30), || {
        ready_count(&sb.nodes[0]) == 2
    });
}

/// Attack: a node removed with `docker node rm` (its certificate copied beforehand)
/// keeps calling the worker API, on the leader and on a follower: reporting task status
/// (which used to append to the Raft log), heartbeating, and reading its assignments and
/// network map. All are refused.
#[test]
fn removed_node_certificate_is_refused_for_status_heartbeat_and_assignments() {
    if !e2e_enabled("removed_node_certificate_is_refused_for_status_heartbeat_and_assignments") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["m1", "w1", "m2"]);
    sb.init("1s");
    sb.join(1, "worker");
    sb.join(2, "manager");
    wait_for("w1 and m2 ready", Duration::from_secs(30), || {
        ready_count(&sb.nodes[0]) == 3
    });
    let stolen = Stolen::copy_from(&sb, &sb.nodes[1]);
    let id = node_id(&sb.nodes[1]);
    let manager = sb.nodes[0].addr();
    let assignments = format!("/swarmup/v1/assignments?node={id}&since=0");
    let (code, body) = stolen.call("GET", &manager, &assignments, None);
    assert_eq!(code, 200, "before removal: {body}");

    sb.nodes[1].kill();
    sb.nodes[0].docker_ok(&["node", "rm", "--force", "w1"]);

    for manager in [sb.nodes[0].addr(), sb.nodes[2].addr()] {
        let report = format!(
            r#"{{"node_id":"{id}","updates":[{{"task_id":"t-none","status":{{"State":"failed","Message":"x"}}}}]}}"#
        );
        assert_refused(
            "POST /swarmup/v1/task-status from a removed node",
            stolen.call("POST", &manager, "/swarmup/v1/task-status", Some(&report)),
            "removed",
        );
        let beat = format!(r#"{{"node_id":"{id}","addr":"127.0.0.1:1","description":{{}}}}"#);
        assert_refused(
            "POST /swarmup/v1/heartbeat from a removed node",
            stolen.call("POST", &manager, "/swarmup/v1/heartbeat", Some(&beat)),
            "removed",
        );
        assert_refused(
            "GET /swarmup/v1/assignments from a removed node",
            stolen.call("GET", &manager, &assignments, None),
            "removed",
        );
        assert_refused(
            "GET /swarmup/v1/netmap from a removed node",
            stolen.call(
                "GET",
                &manager,
                &format!("/swarmup/v1/netmap?node={id}"),
                None,
            ),
            "removed",
        );
    }
}

/// A node's WireGuard key, sent in its heartbeats, decides who may send it traffic of
/// encrypted networks: a node sets only its own, and only a real key.
#[test]
fn a_node_sets_only_its_own_tunnel_key_and_only_a_real_one() {
    if !e2e_enabled("a_node_sets_only_its_own_tunnel_key_and_only_a_real_one") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["m1", "w1"]);
    sb.init("1s");
    sb.join(1, "worker");
    wait_for("w1 ready", Duration::from_secs(30), || {
        ready_count(&sb.nodes[0]) == 2
    });
    let stolen = Stolen::copy_from(&sb, &sb.nodes[1]);
    let (w1, m1) = (node_id(&sb.nodes[1]), node_id(&sb.nodes[0]));
    let manager = sb.nodes[0].addr();
    let beat = |id: &str, key: &str| {
        format!(
            r#"{{"node_id":"{id}","addr":"127.0.0.1:1","description":{{}},"tunnel_key":"{key}"}}"#
        )
    };
    let (code, body) = stolen.call(
        "POST",
        &manager,
        "/swarmup/v1/heartbeat",
        Some(&beat(&w1, "not-a-key")),
    );
    assert_eq!(code, 400, "a key that is not 32 bytes of base64: {body}");
    assert!(body.contains("tunnel_key"), "{body}");
    // 32 bytes of base64, but for the manager's node: a worker speaks only for itself.
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    assert_refused(
        "a worker sending the manager's tunnel key",
        stolen.call(
            "POST",
            &manager,
            "/swarmup/v1/heartbeat",
            Some(&beat(&m1, key)),
        ),
        "cannot send heartbeats",
    );
    let (code, body) = stolen.call(
        "POST",
        &manager,
        "/swarmup/v1/heartbeat",
        Some(&beat(&w1, key)),
    );
    assert_eq!(code, 200, "its own key: {body}");
}
