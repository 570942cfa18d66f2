//! The routing mesh on a real kernel, between network namespaces. Runs only as root with
//! SWARMUP_E2E=1.
//!
//! Two "nodes" and a "client" share an underlay (a bridge in a fourth namespace). Each node
//! has an ingress bridge `swb4096` with the gateway 10.0.0.1/24, standing in for Docker's,
//! and a firewall like Docker 20.10's (`FORWARD` policy `DROP`, a `DOCKER-USER` chain).
//! Only node B runs a task: busybox httpd answering with the client address it sees.
//! Both nodes sync a `Dataplane` through `SystemKernel::in_netns`; then:
//! - the client reaches the port on node A, which has no task, and the task sees the
//!   client's own address (no SNAT: the reply goes back through A by the return path);
//! - node A's host reaches it on 127.0.0.1;
//! - node B's address works too, for the client and for B's own localhost;
//! - with no backend left, the port refuses at once.
//!
//! Traffic stays inside the test's namespaces.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use swarm_net::{plan, Dataplane, LocalFacts, SystemKernel};
use swarm_state::netmap::{IngressPort, NetMap, NetView, RemoteEndpoint};
use swarm_state::network::{mac_text, Protocol};

use common::*;

const VNI: u32 = 4096;
const PORT: u16 = 8080;
const NODE_A: &str = "192.168.212.1";
const NODE_B: &str = "192.168.212.2";
const CLIENT: &str = "192.168.212.9";
const INGRESS_A: &str = "10.0.0.2";
const INGRESS_B: &str = "10.0.0.3";
const TASK: &str = "10.0.0.20";

fn url(addr: &str) -> String {
    format!("http://{addr}:{PORT}/cgi-bin/ip")
}

/// A node: lo up, its underlay address, the ingress bridge Docker would make, and Docker
/// 20.10's filter chains (`FORWARD` drops what no rule accepts).
async fn make_node(ns: &str, underlay_dev: &str, underlay: &str) {
    let bridge = Bridge {
        vni: VNI,
        gateway_cidr: "10.0.0.1/24",
        mtu: "1450",
    };
    make_host(ns, underlay_dev, underlay, bridge).await;
    let br = swarm_net::bridge_name(VNI);
    for rule in [
        vec!["-N", "DOCKER-USER"],
        vec!["-A", "DOCKER-USER", "-j", "RETURN"],
        vec!["-P", "FORWARD", "DROP"],
        vec!["-A", "FORWARD", "-j", "DOCKER-USER"],
        vec![
            "-A",
            "FORWARD",
            "-o",
            &br,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        vec!["-A", "FORWARD", "-i", &br, "!", "-o", &br, "-j", "ACCEPT"],
        vec!["-A", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"],
    ] {
        let mut args = vec!["iptables", "-w"];
        args.extend(rule);
        sh_in(ns, &args).await;
    }
}

fn netmap(vtep: &str, own: &str, other: (&str, &str), backends: &[&str]) -> NetMap {
    let mut remote = vec![RemoteEndpoint {
        addr: ip(other.0),
        vtep: ip(other.1),
    }];
    if vtep == NODE_A {
        remote.push(RemoteEndpoint {
            addr: ip(TASK),
            vtep: ip(NODE_B),
        });
    }
    remote.sort();
    NetMap {
        tunnel: None,
        index: 1,
        node_id: vtep.into(),
        local_vtep: Some(ip(vtep)),
        data_path_port: 4789,
        networks: vec![NetView {
            id: "ingress".into(),
            name: "ingress".into(),
            vni: VNI,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: ip("10.0.0.1"),
            mtu: None,
            encrypted: false,
            internal: false,
            ingress: true,
            local_addr: Some(ip(own)),
            remote,
            services: vec![],
        }],
        local_tasks: vec![],
        ingress_ports: vec![IngressPort {
            service_id: "svc1".into(),
            service: "web".into(),
            protocol: Protocol::Tcp,
            published: PORT,
            target: 80,
            backends: backends.iter().map(|b| ip(b)).collect(),
        }],
        ingress_nodes: vec![RemoteEndpoint {
            addr: ip(other.0),
            vtep: ip(other.1),
        }],
    }
}

#[tokio::test]
async fn the_mesh_serves_every_node_and_keeps_the_client_address() {
    if !enabled("the routing mesh") {
        return;
    }
    let pid = std::process::id();
    let (na, nb) = (format!("sxma{pid}"), format!("sxmb{pid}"));
    let (client, switch, task) = (
        format!("sxmc{pid}"),
        format!("sxms{pid}"),
        format!("sxmt{pid}"),
    );
    let mut lab = Lab {
        namespaces: vec![
            task.clone(),
            client.clone(),
            na.clone(),
            nb.clone(),
            switch.clone(),
        ],
        children: vec![],
    };
    let www = tempfile::tempdir().unwrap();
    for ns in &lab.namespaces {
        sh(&["ip", "netns", "add", ns]).await;
    }

    // The underlay: a bridge in its own namespace, with a port for each node and the client.
    sh(&["ip", "-n", &switch, "link", "add", "sw", "type", "bridge"]).await;
    sh(&["ip", "-n", &switch, "link", "set", "sw", "up"]).await;
    for (i, ns) in [&na, &nb, &client].into_iter().enumerate() {
        let port = format!("p{i}");
        sh(&[
            "ip", "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", ns,
        ])
        .await;
        sh(&[
            "ip", "-n", &switch, "link", "set", &port, "master", "sw", "up",
        ])
        .await;
    }
    make_node(&na, "eth0", &format!("{NODE_A}/24")).await;
    make_node(&nb, "eth0", &format!("{NODE_B}/24")).await;
    sh(&["ip", "-n", &client, "link", "set", "lo", "up"]).await;
    sh(&[
        "ip",
        "-n",
        &client,
        "addr",
        "add",
        &format!("{CLIENT}/24"),
        "dev",
        "eth0",
    ])
    .await;
    sh(&["ip", "-n", &client, "link", "set", "eth0", "up"]).await;

    // The task on node B, on the ingress network only.
    sh(&[
        "ip", "-n", &nb, "link", "add", "vtask", "type", "veth", "peer", "name", "eth0", "netns",
        &task,
    ])
    .await;
    sh(&[
        "ip", "-n", &nb, "link", "set", "vtask", "mtu", "1450", "master", "swb4096", "up",
    ])
    .await;
    let mac = mac_text(ip(TASK));
    sh(&[
        "ip", "-n", &task, "link", "set", "eth0", "address", &mac, "mtu", "1450", "up",
    ])
    .await;
    sh(&["ip", "-n", &task, "link", "set", "lo", "up"]).await;
    sh(&[
        "ip",
        "-n",
        &task,
        "addr",
        "add",
        &format!("{TASK}/24"),
        "dev",
        "eth0",
    ])
    .await;
    sh(&[
        "ip", "-n", &task, "route", "add", "default", "via", "10.0.0.1",
    ])
    .await;
    let cgi = www.path().join("cgi-bin");
    std::fs::create_dir(&cgi).unwrap();
    let script = cgi.join("ip");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    lab.httpd(&task, www.path());

    let facts = LocalFacts {
        underlay_mtu: 1500,
        dns_port: 5353,
        mesh_snat: false,
    };
    let dp_a = Dataplane::new(Arc::new(SystemKernel::in_netns(&na)));
    let dp_b = Dataplane::new(Arc::new(SystemKernel::in_netns(&nb)));
    let map_a = |backends: &[&str]| netmap(NODE_A, INGRESS_A, (INGRESS_B, NODE_B), backends);
    let map_b = |backends: &[&str]| netmap(NODE_B, INGRESS_B, (INGRESS_A, NODE_A), backends);
    let started = StdInstant::now();
    let ra = dp_a.sync(&plan(&map_a(&[TASK]), &facts)).await.unwrap();
    assert_eq!(ra.applied, ["ingress"], "{ra:?}");
    let rb = dp_b.sync(&plan(&map_b(&[TASK]), &facts)).await.unwrap();
    assert_eq!(rb.applied, ["ingress"], "{rb:?}");
    println!("first sync of both nodes: {:?}", started.elapsed());
    let again = dp_a.sync(&plan(&map_a(&[TASK]), &facts)).await.unwrap();
    assert!(!again.changed(), "{:?}", again.changes);
    let rules = until_ok(&nb, &["ip", "rule"]).await;
    assert!(rules.contains("iif swb4096 lookup 65538"), "{rules}");
    let user = until_ok(&na, &["iptables", "-w", "-S", "DOCKER-USER"]).await;
    assert!(user.contains("--comment swarmnet"), "{user}");

    // (a) The client, through node A which has no task: the task sees the client itself.
    let wget = |u: String| ["busybox", "wget", "-q", "-O", "-", &u].map(str::to_string);
    let a_url = wget(url(NODE_A));
    let a_args: Vec<&str> = a_url.iter().map(String::as_str).collect();
    let t = StdInstant::now();
    let seen = until_ok(&client, &a_args).await;
    println!("first answer through node A: {:?}", t.elapsed());
    assert_eq!(client_addr(&seen), CLIENT, "the client's address is kept");

    // Both pieces are needed: without B's return rule the reply leaves B un-NATed, and
    // without the DOCKER-USER rule A's FORWARD chain drops the new connection. A sync
    // puts each back.
    sh_in(
        &nb,
        &[
            "ip",
            "rule",
            "del",
            "fwmark",
            "0x21000/0xffff3000",
            "iif",
            "swb4096",
        ],
    )
    .await;
    assert_ne!(run_in(&client, &a_args).await, Outcome::Ok(seen.clone()));
    dp_b.sync(&plan(&map_b(&[TASK]), &facts)).await.unwrap();
    until_ok(&client, &a_args).await;
    sh_in(
        &na,
        &[
            "iptables",
            "-w",
            "-D",
            "DOCKER-USER",
            "-m",
            "connmark",
            "--mark",
            "0x1000/0x1000",
            "-m",
            "comment",
            "--comment",
            "swarmnet",
            "-j",
            "ACCEPT",
        ],
    )
    .await;
    assert_ne!(run_in(&client, &a_args).await, Outcome::Ok(seen.clone()));
    dp_a.sync(&plan(&map_a(&[TASK]), &facts)).await.unwrap();
    until_ok(&client, &a_args).await;

    // (b) Node A's host on localhost: SNATed to A's own ingress address.
    let lo_url = wget(url("127.0.0.1"));
    let lo_args: Vec<&str> = lo_url.iter().map(String::as_str).collect();
    let seen = until_ok(&na, &lo_args).await;
    assert_eq!(client_addr(&seen), INGRESS_A);

    // (c) Node B's address, where the task runs, from the client and from B's localhost.
    let b_url = wget(url(NODE_B));
    let b_args: Vec<&str> = b_url.iter().map(String::as_str).collect();
    let seen = until_ok(&client, &b_args).await;
    assert_eq!(client_addr(&seen), CLIENT);
    let seen = until_ok(&nb, &lo_args).await;
    assert!(!seen.trim().is_empty());
    // And node A's host calling node B's address.
    let seen = until_ok(&na, &b_args).await;
    assert!(!seen.trim().is_empty());

    // 127/8 never comes in from outside, even with route_localnet on the bridge.
    let localnet = until_ok(
        &na,
        &["cat", "/proc/sys/net/ipv4/conf/swb4096/route_localnet"],
    )
    .await;
    assert_eq!(localnet.trim(), "1");

    // (d) No backend left: the port refuses at once, on both nodes and on localhost.
    dp_a.sync(&plan(&map_a(&[]), &facts)).await.unwrap();
    dp_b.sync(&plan(&map_b(&[]), &facts)).await.unwrap();
    for (ns, args) in [(&client, &a_args), (&client, &b_args), (&na, &lo_args)] {
        let t = StdInstant::now();
        let out = run_in(ns, args).await;
        assert_eq!(out, Outcome::Failed, "{ns} {args:?}: refused, not dropped");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    // Teardown leaves no rule, route, DOCKER-USER rule or table of ours behind.
    dp_a.teardown().await.unwrap();
    dp_b.teardown().await.unwrap();
    for ns in [&na, &nb] {
        let rules = until_ok(ns, &["ip", "rule"]).await;
        assert!(!rules.contains("lookup 655"), "{rules}");
        let user = until_ok(ns, &["iptables", "-w", "-S", "DOCKER-USER"]).await;
        assert!(!user.contains("swarmnet"), "{user}");
        let tables = until_ok(ns, &["nft", "list", "tables"]).await;
        assert!(!tables.contains("swarmnet"), "{tables}");
        let localnet = until_ok(
            ns,
            &["cat", "/proc/sys/net/ipv4/conf/swb4096/route_localnet"],
        )
        .await;
        assert_eq!(localnet.trim(), "0");
    }
    drop(lab);
}
