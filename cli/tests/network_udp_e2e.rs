//! UDP and TCP through a service VIP on an overlay, with the client's address kept: a
//! 3-node lab cluster made by `swarmup create`, driven by the stock docker CLI, with the
//! static `swarmup-probe` in a busybox image:
//!
//! - `echo`: `swarmup-probe udp-echo` on node1 and node2, answering `who=HOST from=PEER`;
//! - `who`: `swarmup-probe http-who` on node1 and node2, the same over HTTP;
//! - `client`: a task on node3 that asks both services through their VIPs.
//!
//! Needs SWARMUP_E2E=1 and root, like network_e2e.rs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::net::NetLab;
use support::{
    e2e_enabled, ensure_swarm_node, host_docker, run_bounded, serial, swarmup_bin, Cluster,
    COMMAND_TIMEOUT,
};

const PROBE_IMAGE: &str = "swarmup-test/probe:latest";
const UDP_PORT: u16 = 7007;
const HTTP_PORT: u16 = 8080;

/// The static probe, built with its own target directory so the static flags do not
/// rebuild the crates of the main build.
fn probe_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target_dir = Path::new(swarmup_bin())
                .parent()
                .and_then(Path::parent)
                .expect("swarmup sits in TARGET/PROFILE/")
                .join("probe-static");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "-p",
                    "swarmup-probe",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                    "--target-dir",
                ])
                .arg(&target_dir)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_ENCODED_RUSTFLAGS");
            run_bounded(cmd, Duration::from_secs(1800)).expect_ok();
            let built = target_dir.join("x86_64-unknown-linux-gnu/release/swarmup-probe");
            assert!(built.is_file(), "{} was not built", built.display());
            built
        })
        .clone()
}

/// busybox-static plus the probe, built into the host's engine (a second under Docker's
/// cache, so always rebuilt to carry the current probe).
fn ensure_probe_image() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let probe = probe_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("copy /bin/busybox: install busybox-static");
        std::fs::copy(&probe, dir.path().join("swarmup-probe")).expect("copy the probe");
        std::fs::write(
            dir.path().join("Dockerfile"),
            concat!(
                "FROM scratch\n",
                "COPY busybox /bin/busybox\n",
                "RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n",
                "RUN [\"/bin/busybox\",\"mkdir\",\"-p\",\"/tmp\",\"/etc\"]\n",
                "COPY swarmup-probe /bin/swarmup-probe\n",
                "CMD [\"/bin/sh\"]\n",
            ),
        )
        .expect("write Dockerfile");
        let mut build = host_docker();
        build
            .args(["build", "-q", "-t", PROBE_IMAGE])
            .arg(dir.path());
        run_bounded(build, Duration::from_secs(120)).expect_ok();
    });
}

/// `docker save PROBE_IMAGE | swarmup image load NAME`.
fn load_probe_image(cluster: &Cluster) {
    ensure_probe_image();
    let mut save = host_docker();
    save.args(["save", PROBE_IMAGE]).stdout(Stdio::piped());
    let mut save = save.spawn().expect("run docker save");
    let mut load = cluster.sb().swarmup(&["image", "load", &cluster.name]);
    load.stdin(Stdio::from(save.stdout.take().expect("docker save stdout")));
    let loaded = run_bounded(load, COMMAND_TIMEOUT);
    assert!(
        save.wait().expect("docker save").success(),
        "docker save failed"
    );
    loaded.expect_ok();
}

/// Asks through a VIP with `probe_cmd` from the client until every one of `backends`
/// tasks has answered, checking each answer names the client's own address.
fn reach_all(
    lab: &NetLab,
    what: &str,
    client_node: &str,
    client_ip: &str,
    probe_cmd: &str,
    backends: usize,
) -> BTreeSet<String> {
    lab.until_distinct(what, client_node, "client", probe_cmd, backends, |out| {
        let w = words(out);
        match (w.get("who"), w.get("from")) {
            (Some(who), Some(from)) => {
                assert_eq!(
                    from, client_ip,
                    "{what}: the backend must see the client's own address: {out}"
                );
                Ok(who.clone())
            }
            _ => Err(format!("unexpected answer {out:?}")),
        }
    })
}

fn words(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn udp_and_tcp_through_a_vip_keep_the_client_address() {
    if !e2e_enabled("udp_and_tcp_through_a_vip_keep_the_client_address") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    ensure_probe_image();
    let mut lab = NetLab::new("netudp");
    lab.cluster.create(&["--nodes", "3"]);
    load_probe_image(&lab.cluster);
    let (n1, n2, n3) = (lab.node(1), lab.node(2), lab.node(3));

    lab.docker(&["network", "create", "--driver", "overlay", "probes"]);
    let not_n3 = format!("node.hostname!={n3}");
    let on_n3 = format!("node.hostname=={n3}");
    let udp_port = UDP_PORT.to_string();
    let http_port = HTTP_PORT.to_string();
    for (name, cmd, port) in [
        ("echo", "udp-echo", &udp_port),
        ("who", "http-who", &http_port),
    ] {
        lab.service(&[
            "--name",
            name,
            "--network",
            "probes",
            "--replicas",
            "2",
            "--constraint",
            &not_n3,
            PROBE_IMAGE,
            "swarmup-probe",
            cmd,
            port,
        ]);
    }
    lab.service(&[
        "--name",
        "client",
        "--network",
        "probes",
        "--constraint",
        &on_n3,
        PROBE_IMAGE,
        "sleep",
        "3600",
    ]);
    let spread = BTreeSet::from([n1.clone(), n2.clone()]);
    let on = |nodes: Vec<String>| nodes.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        on(lab.running("echo", 2)),
        spread,
        "echo on node1 and node2"
    );
    assert_eq!(on(lab.running("who", 2)), spread, "who on node1 and node2");
    lab.running("client", 1);

    // Docker writes the container's overlay address into its /etc/hosts.
    let client_ip = lab.address_of(&n3, "client");
    assert!(client_ip.starts_with("10."), "client address {client_ip:?}");

    // UDP: every datagram is a new flow, so both tasks answer sooner or later, each
    // seeing the client's address.
    let echo_vip = lab.vip("echo");
    assert!(echo_vip.starts_with("10."), "echo has a VIP: {echo_vip:?}");
    let udp = reach_all(
        &lab,
        "udp through the VIP reaches both echo tasks",
        &n3,
        &client_ip,
        &format!("swarmup-probe udp-ask {echo_vip}:{UDP_PORT} --timeout-ms 1000"),
        2,
    );

    // TCP: the same through HTTP.
    let who_vip = lab.vip("who");
    assert!(who_vip.starts_with("10."), "who has a VIP: {who_vip:?}");
    assert_ne!(who_vip, echo_vip, "every service has its own VIP");
    let tcp = reach_all(
        &lab,
        "tcp through the VIP reaches both who tasks",
        &n3,
        &client_ip,
        &format!("swarmup-probe http-ask {who_vip}:{HTTP_PORT} --timeout-ms 2000"),
        2,
    );
    assert!(
        udp.is_disjoint(&tcp),
        "echo and who tasks are different containers: {udp:?} {tcp:?}"
    );

    lab.cluster.destroy_and_check();
}
