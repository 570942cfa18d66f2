//! End-to-end: published ports on a real swarm-node manager, driven by the stock docker
//! CLI (`docker service create/update -p/--publish/--publish-rm`, `service inspect`,
//! `service ls`). No container runs: services have no replicas, or one that no node may
//! take, so only the control plane is exercised. Runs with SWARMUP_E2E=1.

mod support;

use std::ops::Deref;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Every publishing swarm on this host builds the same ingress network: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sandbox, left with `leave --force` so the node takes its overlays (the ingress
/// network, which any published port brings to every node) down before it is killed.
struct Swarm(Sandbox);

impl Deref for Swarm {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.0
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for n in &self.0.nodes {
            if n.child.is_some() {
                let _ = n.verb(&["leave", "--force"]);
            }
        }
    }
}

fn endpoint(n: &TestNode, service: &str) -> Value {
    let text = n.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Endpoint}}",
        service,
    ]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `Endpoint.Ports` once the leader's allocator has filled them.
fn ports_of(n: &TestNode, service: &str) -> Vec<Value> {
    let mut ports = Vec::new();
    wait_for(
        &format!("the published ports of {service}"),
        Duration::from_secs(20),
        || {
            ports = endpoint(n, service)["Ports"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            !ports.is_empty()
        },
    );
    ports
}

/// The PORTS column of `docker service ls`, as the CLI computes it.
fn ls_ports(n: &TestNode, service: &str) -> String {
    n.docker_ok(&[
        "service",
        "ls",
        "--filter",
        &format!("name={service}"),
        "--format",
        "{{.Ports}}",
    ])
    .trim()
    .to_string()
}

fn create(n: &TestNode, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["service", "create", "-d", "--name", name, "--replicas", "0"];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    n.docker_ok(&args).trim().to_string()
}

#[test]
fn p10_published_ports_with_the_docker_cli() {
    if !e2e_enabled("p10_published_ports_with_the_docker_cli") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["node1"]);
    sb.init("1s");
    let sb = Swarm(sb);
    let n = &sb.nodes[0];
    let ingress_id = n
        .docker_ok(&["network", "inspect", "--format", "{{.Id}}", "ingress"])
        .trim()
        .to_string();

    // -p 9200:9200: the port, its mode, an ingress VIP, and the CLI's PORTS column.
    let search = create(n, "search", &["-p", "9200:9200"]);
    let ports = ports_of(n, "search");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["Protocol"], "tcp");
    assert_eq!(ports[0]["TargetPort"], 9200);
    assert_eq!(ports[0]["PublishedPort"], 9200);
    assert_eq!(ports[0]["PublishMode"], "ingress");
    let ep = endpoint(n, "search");
    assert_eq!(ep["Spec"]["Ports"][0]["PublishedPort"], 9200);
    wait_for("the ingress VIP", Duration::from_secs(20), || {
        let vips = endpoint(n, "search")["VirtualIPs"].clone();
        vips[0]["NetworkID"] == ingress_id.as_str()
            && vips[0]["Addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.0.0.") && a.ends_with("/24"))
    });
    assert_eq!(ls_ports(n, "search"), "*:9200->9200/tcp");
    let networks = n.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.Networks}}",
        "search",
    ]);
    assert_eq!(networks.trim(), "null", "ingress is not in the user's spec");

    // Another service cannot take it, in SwarmKit's words; udp is another port.
    let err = n.docker_err(&[
        "service", "create", "-d", "--name", "other", "-p", "9200:80", IMAGE,
    ]);
    assert!(
        err.contains(&format!(
            "port '9200' is already in use by service 'search' ({search}) as an ingress port"
        )),
        "{err}"
    );
    create(n, "dns", &["-p", "9200:53/udp"]);
    ports_of(n, "dns");
    assert_eq!(ls_ports(n, "dns"), "*:9200->53/udp");

    // No published port: one from 30000-32767, kept across updates, freed by publish-rm.
    create(n, "dyn", &["--publish", "target=80"]);
    let port = ports_of(n, "dyn")[0]["PublishedPort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&port), "{port}");
    n.docker_ok(&["service", "update", "-d", "--label-add", "a=b", "dyn"]);
    n.docker_ok(&["service", "update", "-d", "--publish-add", "9300:90", "dyn"]);
    // The leader's allocator writes the new port after the update commits: until then
    // the endpoint still shows the one port.
    let mut after = Vec::new();
    wait_for("the added port allocated", Duration::from_secs(20), || {
        after = ports_of(n, "dyn");
        after.len() == 2
    });
    assert!(
        after
            .iter()
            .any(|p| p["TargetPort"] == 80 && p["PublishedPort"] == port),
        "the dynamic port is kept: {after:?}"
    );
    n.docker_ok(&["service", "update", "-d", "--publish-rm", "80", "dyn"]);
    wait_for("the port freed", Duration::from_secs(20), || {
        let ports = endpoint(n, "dyn")["Ports"].clone();
        ports.as_array().is_some_and(|p| p.len() == 1) && ports[0]["PublishedPort"] == 9300
    });
    let freed = port.to_string();
    create(
        n,
        "taker",
        &["--publish", &format!("published={freed},target=80")],
    );
    assert_eq!(ports_of(n, "taker")[0]["PublishedPort"], port);

    // Removing the service frees its port.
    n.docker_ok(&["service", "rm", "search"]);
    create(n, "search2", &["-p", "9200:9200"]);
    assert_eq!(ports_of(n, "search2")[0]["PublishedPort"], 9200);

    // Refusals: dnsrr with an ingress port (Docker's words), sctp, duplicates.
    let err = n.docker_err(&[
        "service",
        "create",
        "-d",
        "--name",
        "x",
        "--endpoint-mode",
        "dnsrr",
        "-p",
        "8080:80",
        IMAGE,
    ]);
    assert!(
        err.contains("port published with ingress mode can't be used with dnsrr mode"),
        "{err}"
    );
    let err = n.docker_err(&[
        "service",
        "create",
        "-d",
        "--name",
        "x",
        "-p",
        "7000:7000/sctp",
        IMAGE,
    ]);
    assert!(err.contains("tcp and udp ports only"), "{err}");
    let err = n.docker_err(&[
        "service", "create", "-d", "--name", "x", "-p", "7001:80", "-p", "7001:81", IMAGE,
    ]);
    assert!(err.contains("duplicate published ports"), "{err}");

    // Host mode: shown with its mode, not in the mesh's PORTS column, next to dnsrr.
    create(
        n,
        "edge",
        &[
            "--endpoint-mode",
            "dnsrr",
            "--publish",
            "published=8080,target=80,mode=host",
        ],
    );
    let ports = ports_of(n, "edge");
    assert_eq!(ports[0]["PublishMode"], "host");
    assert_eq!(ports[0]["PublishedPort"], 8080);
    assert!(endpoint(n, "edge").get("VirtualIPs").is_none());
    assert!(
        !ls_ports(n, "edge").contains("8080"),
        "{}",
        ls_ports(n, "edge")
    );
    let err = n.docker_err(&[
        "service", "create", "-d", "--name", "x", "-p", "8080:80", IMAGE,
    ]);
    assert!(
        err.contains("port '8080' is already in use by service 'edge'")
            && err.contains("as a host-published port"),
        "{err}"
    );
}

#[test]
fn p20_tasks_of_a_publishing_service_get_an_ingress_address() {
    if !e2e_enabled("p20_tasks_of_a_publishing_service_get_an_ingress_address") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["node1"]);
    sb.init("1s");
    let sb = Swarm(sb);
    let n = &sb.nodes[0];
    n.docker_ok(&["network", "create", "-d", "overlay", "own"]);
    let ingress_id = n
        .docker_ok(&["network", "inspect", "--format", "{{.Id}}", "ingress"])
        .trim()
        .to_string();
    // A constraint no node meets keeps the task pending: addressed, never run.
    let flags = ["--constraint", "node.labels.never==true"];
    for (name, extra) in [
        ("solo", vec!["-p", "9400:80"]),
        ("both", vec!["-p", "9401:80", "--network", "own"]),
    ] {
        let mut args = vec!["service", "create", "-d", "--name", name, "--replicas", "1"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&extra);
        args.push(IMAGE);
        n.docker_ok(&args);
    }
    let attached = |service: &str| -> Vec<String> {
        let ids = n.docker_ok(&["service", "ps", "-q", "--no-trunc", service]);
        let Some(id) = ids.split_whitespace().next() else {
            return Vec::new();
        };
        let text = n.docker_ok(&["inspect", "--type", "task", "--format", "{{json .}}", id]);
        let task: Value = serde_json::from_str(text.trim()).unwrap();
        assert!(
            task["Spec"].get("Networks").is_none()
                || task["Spec"]["Networks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| a["Target"] != ingress_id.as_str()),
            "{task}"
        );
        task["NetworksAttachments"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|a| a["Network"]["Spec"]["Name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut got = Vec::new();
    wait_for("solo's ingress address", Duration::from_secs(20), || {
        got = attached("solo");
        !got.is_empty()
    });
    assert_eq!(got, ["ingress"], "ingress is its only network");
    wait_for("both's addresses", Duration::from_secs(20), || {
        got = attached("both");
        !got.is_empty()
    });
    assert_eq!(got, ["own", "ingress"], "its own network first");
}

#[test]
fn p30_a_service_with_only_published_ports_runs_on_ingress() {
    if !e2e_enabled("p30_a_service_with_only_published_ports_runs_on_ingress") {
        return;
    }
    let _serial = serial();
    ensure_image();
    let mut sb = Sandbox::new(&["node1"]);
    sb.init("1s");
    let sb = Swarm(sb);
    let n = &sb.nodes[0];
    n.docker_ok(&[
        "service", "create", "-d", "--name", "web", "-p", "9500:80", IMAGE, "httpd", "-f", "-p",
        "80",
    ]);
    wait_for("web running", Duration::from_secs(60), || {
        n.docker_ok(&["service", "ps", "--format", "{{.CurrentState}}", "web"])
            .starts_with("Running")
    });
    let ids = n.docker_ok(&["service", "ps", "-q", "--no-trunc", "web"]);
    let id = ids.split_whitespace().next().unwrap();
    let container = std::process::Command::new(docker_cli())
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.task.id={id}"),
        ])
        .output()
        .unwrap();
    let cid = String::from_utf8_lossy(&container.stdout)
        .trim()
        .to_string();
    assert!(!cid.is_empty(), "the task's container");
    let nets = std::process::Command::new(docker_cli())
        .args([
            "inspect",
            "--format",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$v.IPAddress}} {{end}}",
            &cid,
        ])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&nets.stdout).trim().to_string();
    assert!(addrs.starts_with("10.0.0."), "on ingress only: {addrs}");
}
