//! End-to-end: Docker-shaped errors from a real swarm-node manager. Raw HTTP on the
//! node's unix socket (curl) checks statuses and `{"message": ...}` bodies for unknown
//! routes, wrong methods, oversized and malformed bodies, bad query values and filters,
//! bad constraints and versioned updates; the stock docker CLI checks that a bad
//! `--constraint` is refused with SwarmKit's words and that `service update` still works.
//! No container runs (services have no replicas). Runs with SWARMUP_E2E=1.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

/// One raw call: the status and the body parsed as JSON (`Null` when it is not JSON).
fn http(n: &TestNode, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("curl");
    c.args(["-sS", "-o"])
        .arg(dir.path().join("out"))
        .args(["-w", "%{http_code}", "--unix-socket"])
        .arg(n.socket())
        .args(["-X", method]);
    if let Some(body) = body {
        let file = dir.path().join("body");
        std::fs::write(&file, body).unwrap();
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.display()));
    }
    let out = c.arg(format!("http://swarm{path}")).output().unwrap();
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let text = std::fs::read(dir.path().join("out")).unwrap_or_default();
    (status, serde_json::from_slice(&text).unwrap_or(Value::Null))
}

/// Asserts a Docker-shaped error and returns its message.
fn error(n: &TestNode, method: &str, path: &str, body: Option<&[u8]>, status: u16) -> String {
    let (got, body) = http(n, method, path, body);
    assert_eq!(got, status, "{method} {path}: {body}");
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path}: the body is not a JSON object: {body}"));
    assert_eq!(object.len(), 1, "{method} {path}: {body}");
    object["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path}: no message: {body}"))
        .to_string()
}

fn spec(name: &str, constraints: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "Name": name,
        "TaskTemplate": {
            "ContainerSpec": { "Image": IMAGE },
            "Placement": { "Constraints": constraints },
        },
        "Mode": { "Replicated": { "Replicas": 0 } },
    })
    .to_string()
    .into_bytes()
}

#[test]
fn e1_every_error_is_docker_shaped() {
    if !e2e_enabled("e1_every_error_is_docker_shaped") {
        return;
    }
    let mut sb = Sandbox::new(&["node1"]);
    sb.init("1s");
    let n = &sb.nodes[0];

    // Unknown routes and methods: dockerd's 404 for both (paths swarm-node does not
    // serve go to the engine, which answers so too).
    for (method, path) in [
        ("GET", "/v1.41/no-such-thing"),
        ("GET", "/nope"),
        ("DELETE", "/v1.41/_ping"),
        ("PUT", "/v1.41/services/create"),
    ] {
        assert_eq!(error(n, method, path, None, 404), "page not found");
    }

    // Bad query values.
    let m = error(n, "GET", "/v1.41/services?status=maybe", None, 400);
    assert!(m.starts_with("invalid value for status: maybe"), "{m}");
    let m = error(n, "GET", "/v1.41/services?filters=nope", None, 400);
    assert!(m.starts_with("invalid filters"), "{m}");
    let m = error(
        n,
        "GET",
        "/v1.41/tasks?filters=%7B%22colour%22%3A%7B%22red%22%3Atrue%7D%7D",
        None,
        400,
    );
    assert_eq!(m, "invalid filter 'colour'");
    error(n, "GET", "/v1.41/nodes/%FF", None, 400);
    let m = error(
        n,
        "POST",
        "/v1.41/swarm/update?version=1&rotateWorkerToken=perhaps",
        Some(b"{}"),
        400,
    );
    assert!(m.starts_with("invalid value for rotateWorkerToken"), "{m}");

    // Bodies: malformed JSON, and one over the limit.
    let m = error(n, "POST", "/v1.41/services/create", Some(b"{bad"), 400);
    assert!(m.starts_with("invalid service spec:"), "{m}");
    let big = vec![b' '; 3 * 1024 * 1024];
    let m = error(n, "POST", "/v1.41/services/create", Some(&big), 413);
    assert!(m.starts_with("request body too large"), "{m}");

    // Constraints are parsed when the spec is written.
    let m = error(
        n,
        "POST",
        "/v1.41/services/create",
        Some(&spec("bad", &["node.garbage"])),
        400,
    );
    assert_eq!(
        m,
        "rpc error: code = Unknown desc = constraint expected one operator from ==, !="
    );
    let m = error(
        n,
        "POST",
        "/v1.41/services/create",
        Some(&spec("bad", &["node.role==a<b"])),
        400,
    );
    assert_eq!(m, "rpc error: code = Unknown desc = value 'a<b' is invalid");
    assert_eq!(
        error(n, "GET", "/v1.41/services/bad", None, 404),
        "service bad not found"
    );

    // Updates need the version, and a stale one is refused without writing.
    let (status, created) = http(
        n,
        "POST",
        "/v1.41/services/create",
        Some(&spec("web", &["node.role==manager"])),
    );
    assert_eq!(status, 201, "{created}");
    let (_, service) = http(n, "GET", "/v1.41/services/web", None);
    let version = service["Version"]["Index"].as_u64().unwrap();
    let changed = spec("web", &["node.role==worker"]);
    let m = error(n, "POST", "/v1.41/services/web/update", Some(&changed), 400);
    assert!(m.starts_with("invalid service version '':"), "{m}");
    let m = error(
        n,
        "POST",
        "/v1.41/services/web/update?version=abc",
        Some(&changed),
        400,
    );
    assert!(m.starts_with("invalid service version 'abc':"), "{m}");
    let path = format!("/v1.41/services/web/update?version={}", version + 7);
    let m = error(n, "POST", &path, Some(&changed), 400);
    assert!(
        m.starts_with("rpc error: code = Unknown desc = update out of sequence"),
        "{m}"
    );
    let path = format!("/v1.41/services/web/update?version={version}");
    let bad = spec("web", &["node.role"]);
    error(n, "POST", &path, Some(&bad), 400);
    let (_, after) = http(n, "GET", "/v1.41/services/web", None);
    assert_eq!(after["Version"]["Index"].as_u64(), Some(version));
    assert_eq!(
        after["Spec"]["TaskTemplate"]["Placement"]["Constraints"],
        serde_json::json!(["node.role==manager"])
    );
    let (status, body) = http(n, "POST", &path, Some(&changed));
    assert_eq!(status, 200, "{body}");
    let (_, after) = http(n, "GET", "/v1.41/services/web", None);
    assert_eq!(
        after["Spec"]["TaskTemplate"]["Placement"]["Constraints"],
        serde_json::json!(["node.role==worker"])
    );

    // Success answers are left as they are.
    let (status, _) = http(n, "GET", "/v1.41/_ping", None);
    assert_eq!(status, 200);
}

#[test]
fn e2_the_docker_cli_sees_docker_words() {
    if !e2e_enabled("e2_the_docker_cli_sees_docker_words") {
        return;
    }
    ensure_image();
    let mut sb = Sandbox::new(&["node1"]);
    sb.init("1s");
    let n = &sb.nodes[0];

    let err = n.docker_err(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "0",
        "--constraint",
        "node.garbage",
        IMAGE,
    ]);
    assert!(
        err.contains("constraint expected one operator from ==, !="),
        "{err}"
    );
    assert!(n.docker_err(&["service", "inspect", "web"]).contains("web"));
    let err = n.docker_err(&["node", "update", "--availability", "bogus", "node1"]);
    assert!(err.contains(r#"invalid Availability: "bogus""#), "{err}");

    n.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "0",
        "--constraint",
        "node.role==manager",
        IMAGE,
    ]);
    // The CLI sends the version it read: updates go through, one after another.
    n.docker_ok(&[
        "service",
        "update",
        "-d",
        "--constraint-add",
        "node.labels.zone!=x",
        "web",
    ]);
    n.docker_ok(&[
        "service",
        "update",
        "-d",
        "--label-add",
        "tier=front",
        "web",
    ]);
    let err = n.docker_err(&[
        "service",
        "update",
        "-d",
        "--constraint-add",
        "node.role=worker",
        "web",
    ]);
    assert!(
        err.contains("constraint expected one operator from ==, !="),
        "{err}"
    );
    let constraints = n.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.Placement.Constraints}}",
        "web",
    ]);
    let mut constraints: Vec<String> = serde_json::from_str(constraints.trim()).unwrap();
    constraints.sort();
    assert_eq!(constraints, ["node.labels.zone!=x", "node.role==manager"]);
    let labels = n.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.Labels}}",
        "web",
    ]);
    assert!(labels.contains("\"tier\":\"front\""), "{labels}");

    // A filter the CLI passes through unchecked is refused, not ignored.
    let err = n.docker_err(&["service", "ls", "--filter", "colour=red"]);
    assert!(err.contains("invalid filter 'colour'"), "{err}");
}
