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

use support::net::{ensure_probe_image, load_probe_image, NetLab, PROBE_IMAGE};
use support::{e2e_enabled, ensure_swarm_node, serial};

const UDP_PORT: u16 = 7007;
const HTTP_PORT: u16 = 8080;

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
