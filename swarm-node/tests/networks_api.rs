//! End-to-end: Docker's network API on a real swarm-node manager, driven by the stock
//! docker CLI (`docker network create/ls/inspect/rm/prune`, `docker service create
//! --network`, `docker info`). Services here have no replicas, so no container runs; the
//! daemon still needs a Docker Engine for its worker part. Runs with SWARMUP_E2E=1.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_of(n: &TestNode, args: &[&str]) -> Value {
    let text = n.docker_ok(args);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn inspect(n: &TestNode, network: &str) -> Value {
    json_of(
        n,
        &["network", "inspect", "--format", "{{json .}}", network],
    )
}

fn names(n: &TestNode, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["network", "ls", "--format", "{{.Name}}"];
    for f in filters {
        args.push("--filter");
        args.push(f);
    }
    let mut v: Vec<String> = n.docker_ok(&args).lines().map(str::to_string).collect();
    v.sort();
    v
}

fn init_with(sb: &mut Sandbox, extra: &[&str]) {
    let n = &mut sb.nodes[0];
    let addr = n.addr();
    let mut args = vec![
        "init",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
        "--dispatcher-heartbeat",
        "1s",
    ];
    args.extend_from_slice(extra);
    let out = n.verb(&args);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    n.start();
}

#[test]
fn n10_network_verbs_with_the_docker_cli() {
    if !e2e_enabled("n10_network_verbs_with_the_docker_cli") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["node1", "node2"]);
    sb.init("1s");
    let n = &sb.nodes[0];

    // The ingress network exists from init, as Docker's.
    let ingress = inspect(n, "ingress");
    assert_eq!(ingress["Name"], "ingress");
    assert_eq!(ingress["Ingress"], true);
    assert_eq!(ingress["Scope"], "swarm");
    assert_eq!(ingress["Driver"], "overlay");
    assert_eq!(ingress["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(ingress["IPAM"]["Config"][0]["Gateway"], "10.0.0.1");
    assert_eq!(
        ingress["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4096"
    );
    let cluster = json_of(n, &["info", "--format", "{{json .Swarm.Cluster}}"]);
    assert_eq!(cluster["DefaultAddrPool"][0], "10.0.0.0/8");
    assert_eq!(cluster["SubnetSize"], 24);
    assert_eq!(cluster["DataPathPort"], 4789);

    // Create, list, inspect.
    let id = n.docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.10.0.0/24",
        "--label",
        "a=b",
        "mynet",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 25, "{id}");
    let auto = n.docker_ok(&["network", "create", "--driver", "overlay", "auto1"]);
    assert!(!auto.trim().is_empty());
    assert_eq!(names(n, &["driver=overlay"]), ["auto1", "ingress", "mynet"]);
    assert_eq!(names(n, &["name=mynet"]), ["mynet"]);
    assert_eq!(names(n, &["label=a=b"]), ["mynet"]);
    assert!(names(n, &["driver=bridge"]).is_empty());
    let table = n.docker_ok(&["network", "ls"]);
    assert!(
        table.contains("mynet") && table.contains("swarm"),
        "{table}"
    );

    let mynet = inspect(n, "mynet");
    assert_eq!(mynet["Id"], id);
    assert_eq!(mynet["Scope"], "swarm");
    assert_eq!(mynet["Driver"], "overlay");
    assert_eq!(mynet["IPAM"]["Config"][0]["Subnet"], "10.10.0.0/24");
    assert_eq!(mynet["IPAM"]["Config"][0]["Gateway"], "10.10.0.1");
    assert_eq!(
        mynet["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4097"
    );
    assert_eq!(mynet["Labels"]["a"], "b");
    assert_eq!(inspect(n, &id[..8])["Name"], "mynet", "by id prefix");
    let auto1 = inspect(n, "auto1");
    assert_eq!(auto1["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");

    // Refusals, with Docker's words where Docker has them.
    let err = n.docker_err(&["network", "create", "-d", "overlay", "mynet"]);
    assert!(
        err.contains("network with name mynet already exists"),
        "{err}"
    );
    let err = n.docker_err(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.10.0.128/25",
        "other",
    ]);
    assert!(err.contains("Pool overlaps"), "{err}");
    let err = n.docker_err(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.300.0.0/16",
        "bad",
    ]);
    assert!(err.to_lowercase().contains("invalid"), "{err}");
    let err = n.docker_err(&["network", "create", "plain"]);
    assert!(err.contains("only swarm-scoped overlay networks"), "{err}");
    let err = n.docker_err(&["network", "inspect", "nope"]);
    assert!(err.contains("nope"), "{err}");

    // Services on networks.
    n.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "0",
        "--network",
        "mynet",
        IMAGE,
    ]);
    let spec = json_of(
        n,
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.Networks}}",
            "web",
        ],
    );
    assert_eq!(spec[0]["Target"], id, "stored as the network id");
    wait_for(
        "the service's VIP on mynet",
        Duration::from_secs(20),
        || {
            let endpoint = json_of(
                n,
                &[
                    "service",
                    "inspect",
                    "--format",
                    "{{json .Endpoint}}",
                    "web",
                ],
            );
            endpoint["VirtualIPs"][0]["NetworkID"] == id
                && endpoint["VirtualIPs"][0]["Addr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("10.10.0.") && a.ends_with("/24"))
        },
    );
    n.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "rr",
        "--replicas",
        "0",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "mynet",
        IMAGE,
    ]);
    let endpoint = json_of(
        n,
        &["service", "inspect", "--format", "{{json .Endpoint}}", "rr"],
    );
    assert!(endpoint.get("VirtualIPs").is_none(), "{endpoint}");
    let err = n.docker_err(&[
        "service",
        "create",
        "-d",
        "--name",
        "x",
        "--network",
        "ingress",
        IMAGE,
    ]);
    assert!(
        err.contains("explicitly attached to the ingress network"),
        "{err}"
    );
    let err = n.docker_err(&[
        "service",
        "create",
        "-d",
        "--name",
        "x",
        "--network",
        "nope",
        IMAGE,
    ]);
    assert!(err.contains("network nope not found"), "{err}");
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
    assert!(err.contains("can't be used with dnsrr mode"), "{err}");

    // A network in use cannot be removed; once its services are gone it can.
    let err = n.docker_err(&["network", "rm", "mynet"]);
    assert!(err.contains("is in use by service"), "{err}");
    n.docker_ok(&["service", "rm", "web", "rr"]);
    n.docker_ok(&["network", "rm", "mynet"]);
    assert_eq!(names(n, &[]), ["auto1", "ingress"]);

    // Prune removes unused networks, never ingress.
    let pruned = n.docker_ok(&["network", "prune", "-f"]);
    assert!(pruned.contains("auto1"), "{pruned}");
    assert_eq!(names(n, &[]), ["ingress"]);

    // A worker's certificate cannot use the network API.
    sb.join(1, "worker");
    let worker_state = sb.nodes[1].dir.join("state/certificates");
    let write = |name: &str, from: &str| {
        let p = sb.root.path().join(name);
        std::fs::copy(worker_state.join(from), &p).unwrap();
        p
    };
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(write("ca.pem", "swarm-root-ca.crt"))
        .arg("--cert")
        .arg(write("cert.pem", "swarm-node.crt"))
        .arg("--key")
        .arg(write("key.pem", "swarm-node.key"))
        .arg(format!("https://{}/v1.41/networks", sb.nodes[0].addr()))
        .output();
    match curl {
        Ok(out) if out.status.success() => {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "403")
        }
        _ => println!("skipped: the worker certificate check needs curl"),
    }
}

#[test]
fn n20_init_network_flags() {
    if !e2e_enabled("n20_init_network_flags") {
        return;
    }
    let _serial = serial();
    let mut sb = Sandbox::new(&["node1"]);
    let addr = sb.nodes[0].addr();
    for (flags, expect) in [
        (
            &["--default-addr-pool", "10.0.0.0/33"][..],
            "invalid --default-addr-pool",
        ),
        (
            &["--data-path-port", "80"][..],
            "invalid --data-path-port 80",
        ),
        (
            &[
                "--default-addr-pool",
                "172.20.0.0/16",
                "--default-addr-pool-mask-length",
                "8",
            ][..],
            "invalid --default-addr-pool-mask-length 8",
        ),
    ] {
        let mut args = vec!["init", "--advertise-addr", &addr, "--listen-addr", &addr];
        args.extend_from_slice(flags);
        let out = sb.nodes[0].verb(&args);
        assert!(!out.status.success(), "{flags:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{flags:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!sb.nodes[0].dir.join("state/node.json").exists());
    }

    init_with(
        &mut sb,
        &[
            "--default-addr-pool",
            "172.20.0.0/16",
            "--default-addr-pool",
            "172.21.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
            "--data-path-port",
            "7789",
        ],
    );
    let n = &sb.nodes[0];
    let cluster = json_of(n, &["info", "--format", "{{json .Swarm.Cluster}}"]);
    assert_eq!(
        cluster["DefaultAddrPool"],
        serde_json::json!(["172.20.0.0/16", "172.21.0.0/16"])
    );
    assert_eq!(cluster["SubnetSize"], 26);
    assert_eq!(cluster["DataPathPort"], 7789);
    let info = n.docker_ok(&["info"]);
    assert!(info.contains("172.20.0.0/16"), "{info}");
    let ingress = inspect(n, "ingress");
    assert_eq!(ingress["IPAM"]["Config"][0]["Subnet"], "172.20.0.0/26");
    n.docker_ok(&["network", "create", "-d", "overlay", "next"]);
    assert_eq!(
        inspect(n, "next")["IPAM"]["Config"][0]["Subnet"],
        "172.20.0.64/26"
    );
}
