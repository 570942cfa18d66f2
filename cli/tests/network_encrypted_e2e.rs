//! `docker network create --opt encrypted` on a 2-node lab cluster made by `swarmup
//! create`, driven by the stock docker CLI: a client on node1 reaches a service on node2
//! through its VIP, over the WireGuard tunnel between the nodes (`swg0`), and neither
//! node accepts that network's VXLAN from outside the tunnel. That nothing of the overlay
//! travels in clear is checked frame by frame in swarm-net's `encrypted_e2e`.
//!
//! Needs SWARMUP_E2E=1 and root, like network_e2e.rs.

mod support;

use support::net::{ensure_probe_image, load_probe_image, NetLab, PROBE_IMAGE};
use support::{e2e_enabled, ensure_swarm_node, serial};

const HTTP_PORT: u16 = 8080;
const SINK_PORT: u16 = 5001;

#[test]
fn an_encrypted_network_carries_services_through_the_tunnel() {
    if !e2e_enabled("an_encrypted_network_carries_services_through_the_tunnel") {
        return;
    }
    let _serial = serial();
    ensure_swarm_node();
    ensure_probe_image();
    let mut lab = NetLab::new("netenc");
    lab.cluster.create(&["--nodes", "2"]);
    load_probe_image(&lab.cluster);
    let (n1, n2) = (lab.node(1), lab.node(2));

    lab.docker(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--opt",
        "encrypted",
        "secure",
    ]);
    let inspect = lab.docker(&[
        "network",
        "inspect",
        "--format",
        "{{json .Options}}",
        "secure",
    ]);
    assert!(inspect.contains("\"encrypted\""), "{inspect}");

    let port = HTTP_PORT.to_string();
    lab.service(&[
        "--name",
        "who",
        "--network",
        "secure",
        "--constraint",
        &format!("node.hostname=={n2}"),
        PROBE_IMAGE,
        "swarmup-probe",
        "http-who",
        &port,
    ]);
    lab.service(&[
        "--name",
        "client",
        "--network",
        "secure",
        "--constraint",
        &format!("node.hostname=={n1}"),
        PROBE_IMAGE,
        "sleep",
        "3600",
    ]);
    lab.service(&[
        "--name",
        "sink",
        "--network",
        "secure",
        "--constraint",
        &format!("node.hostname=={n2}"),
        PROBE_IMAGE,
        "swarmup-probe",
        "tcp-sink",
        &SINK_PORT.to_string(),
    ]);
    lab.running("who", 1);
    lab.running("sink", 1);
    lab.running("client", 1);
    let client_ip = lab.address_of(&n1, "client");
    let vip = lab.vip("who");
    let sink_vip = lab.vip("sink");
    let ask = format!("swarmup-probe http-ask {vip}:{HTTP_PORT} --timeout-ms 2000");
    lab.until_distinct(
        "the client on node1 reaches who on node2 through the VIP",
        &n1,
        "client",
        &ask,
        1,
        |out| match out.split_whitespace().find_map(|w| w.strip_prefix("from=")) {
            Some(from) => {
                assert_eq!(from, client_ip, "who sees the client's address: {out}");
                Ok(from.to_string())
            }
            None => Err(format!("unexpected answer {out:?}")),
        },
    );

    // Full-size frames too: a TCP stream from node1 to node2 through the tunnel.
    let blast = lab
        .exec(
            &n1,
            "client",
            &format!("swarmup-probe tcp-blast {sink_vip}:{SINK_PORT} 2"),
        )
        .unwrap_or_else(|e| panic!("tcp-blast through the tunnel failed: {e}"));
    let gbits = blast
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gbits="))
        .unwrap_or_else(|| panic!("no throughput in {blast:?}"));
    println!("figure: encrypted overlay TCP node1 -> node2 through the VIP: {gbits} Gbit/s");

    // Both nodes have their tunnel, with an address of the tunnel subnet, and drop the
    // network's VXLAN unless it came out of it.
    for node in [&n1, &n2] {
        let swg = lab
            .ssh(node, "ip -br addr show dev swg0")
            .unwrap_or_else(|e| panic!("{node} has no swg0: {e}"));
        assert!(swg.contains("10.255."), "{node}: {swg}");
        let rules = lab
            .ssh(node, "nft list chain ip swarmnet filter_in")
            .unwrap();
        assert!(
            rules.contains("@th,96,24") && rules.contains("iifname != \"swg0\""),
            "{node}: {rules}"
        );
    }

    // A user's network may not take the tunnel's addresses.
    let clash = lab.cluster.docker_run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.255.7.0/24",
        "clash",
    ]);
    assert!(!clash.ok(), "a network in the tunnel subnet is refused");
    assert!(clash.stderr.contains("10.255.0.0/16"), "{}", clash.stderr);

    lab.cluster.destroy_and_check();
}
