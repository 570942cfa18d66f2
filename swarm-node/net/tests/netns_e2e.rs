//! The data plane on a real kernel, between network namespaces. Runs only as root with
//! SWARMUP_E2E=1.
//!
//! Two "hosts" (namespaces joined by a veth underlay) each get a bridge `swb4097` with the
//! overlay's gateway, standing in for Docker's bridge network, and one "container"
//! namespace on it. `Dataplane::sync` runs in each host through `SystemKernel::in_netns`;
//! then container A reaches container B across the VXLAN by address, and through the
//! service VIP with B seeing A's real address. Traffic stays inside the test's namespaces.

mod common;

use std::process::Stdio;
use std::sync::Arc;

use common::*;

use swarm_net::{plan, Dataplane, Desired, LocalFacts, SystemKernel};
use swarm_state::netmap::{NetMap, NetView, RemoteEndpoint, ServiceView};
use swarm_state::network::EndpointMode;

const VNI: u32 = 4097;
const BRIDGE: Bridge<'static> = Bridge {
    vni: VNI,
    gateway_cidr: "10.0.1.1/24",
    mtu: "1450",
};

fn netmap(vtep: &str, own: &str, remote: &[(&str, &str)]) -> NetMap {
    NetMap {
        tunnel: None,
        index: 1,
        node_id: vtep.into(),
        local_vtep: Some(ip(vtep)),
        data_path_port: 4789,
        networks: vec![NetView {
            id: "net1".into(),
            name: "ov1".into(),
            vni: VNI,
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: ip("10.0.1.1"),
            mtu: None,
            encrypted: false,
            internal: false,
            ingress: false,
            local_addr: Some(ip(own)),
            remote: remote
                .iter()
                .map(|(a, v)| RemoteEndpoint {
                    addr: ip(a),
                    vtep: ip(v),
                })
                .collect(),
            services: vec![ServiceView {
                id: "svc1".into(),
                name: "web".into(),
                aliases: vec![],
                mode: EndpointMode::Vip,
                vip: Some(ip("10.0.1.254")),
                backends: vec![ip("10.0.1.20")],
            }],
        }],
        local_tasks: vec![],
        ingress_ports: vec![],
        ingress_nodes: vec![],
    }
}

#[tokio::test]
async fn containers_reach_each_other_across_vxlan_and_through_a_vip() {
    if !enabled("the data plane") {
        return;
    }
    let pid = std::process::id();
    let (ha, hb) = (format!("sxha{pid}"), format!("sxhb{pid}"));
    let (ca, cb) = (format!("sxca{pid}"), format!("sxcb{pid}"));
    let www = tempfile::tempdir().unwrap();
    let mut lab = Lab {
        namespaces: vec![ca.clone(), cb.clone(), ha.clone(), hb.clone()],
        children: vec![],
    };

    sh(&["ip", "netns", "add", &ha]).await;
    sh(&["ip", "netns", "add", &hb]).await;
    let (ua, ub) = (format!("sxua{pid}"), format!("sxub{pid}"));
    sh(&[
        "ip", "link", "add", &ua, "netns", &ha, "type", "veth", "peer", "name", &ub, "netns", &hb,
    ])
    .await;
    make_host(&ha, &ua, "192.168.211.1/24", BRIDGE).await;
    make_host(&hb, &ub, "192.168.211.2/24", BRIDGE).await;
    make_container(&ha, &ca, &format!("sxva{pid}"), "10.0.1.10", BRIDGE).await;
    make_container(&hb, &cb, &format!("sxvb{pid}"), "10.0.1.20", BRIDGE).await;

    let facts = LocalFacts {
        underlay_mtu: 1500,
        dns_port: 5353,
        mesh_snat: false,
    };
    let dp_a = Dataplane::new(Arc::new(SystemKernel::in_netns(&ha)));
    let dp_b = Dataplane::new(Arc::new(SystemKernel::in_netns(&hb)));
    assert_eq!(dp_a.underlay_mtu(ip("192.168.211.1")).await, 1500);
    let want_a: Desired = plan(
        &netmap(
            "192.168.211.1",
            "10.0.1.241",
            &[
                ("10.0.1.20", "192.168.211.2"),
                ("10.0.1.242", "192.168.211.2"),
            ],
        ),
        &facts,
    );
    let want_b: Desired = plan(
        &netmap(
            "192.168.211.2",
            "10.0.1.242",
            &[
                ("10.0.1.10", "192.168.211.1"),
                ("10.0.1.241", "192.168.211.1"),
            ],
        ),
        &facts,
    );
    let ra = dp_a.sync(&want_a).await.expect("sync host a");
    assert_eq!(ra.applied, ["net1"], "{ra:?}");
    assert!(ra.nft_applied);
    let rb = dp_b.sync(&want_b).await.expect("sync host b");
    assert_eq!(rb.applied, ["net1"], "{rb:?}");

    // The real kernel agrees with what was made: a second sync changes nothing.
    let again = dp_a.sync(&want_a).await.unwrap();
    assert!(!again.changed(), "{:?}", again.changes);

    // Across the VXLAN by address.
    until_ok(&ca, &["busybox", "ping", "-c1", "-W1", "10.0.1.20"]).await;
    until_ok(&cb, &["busybox", "ping", "-c1", "-W1", "10.0.1.10"]).await;

    // Through the VIP, to an HTTP server that answers with the client's address.
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
    lab.httpd(&cb, www.path());
    let url = "http://10.0.1.254/cgi-bin/ip";
    let seen = until_ok(&ca, &["busybox", "wget", "-q", "-O", "-", url]).await;
    assert_eq!(
        client_addr(&seen),
        "10.0.1.10",
        "the backend sees the client's own address"
    );

    // The backend calling its own VIP (hairpin, masqueraded) is answered too.
    let seen = until_ok(&cb, &["busybox", "wget", "-q", "-O", "-", url]).await;
    assert!(!seen.trim().is_empty());

    // DNS aimed at the gateway reaches the port swarm-dns would listen on in the host.
    let listener = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ha}"))
        .args([
            "busybox",
            "nc",
            "-ll",
            "-p",
            "5353",
            "-e",
            "/bin/echo",
            "redirected",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox nc");
    lab.children.push(listener);
    let seen = until_ok(&ca, &["busybox", "nc", "-w", "1", "10.0.1.1", "53"]).await;
    assert_eq!(seen.trim(), "redirected");

    // The backend leaves: the VIP refuses at once instead of hanging.
    let mut no_backend = netmap(
        "192.168.211.1",
        "10.0.1.241",
        &[
            ("10.0.1.20", "192.168.211.2"),
            ("10.0.1.242", "192.168.211.2"),
        ],
    );
    no_backend.networks[0].services[0].backends.clear();
    let r = dp_a.sync(&plan(&no_backend, &facts)).await.unwrap();
    assert_eq!(r.flushed, [(ip("10.0.1.254"), ip("10.0.1.20"))]);
    let refused = run_in(&ca, &["busybox", "wget", "-q", "-O", "-", url]).await;
    assert_eq!(refused, Outcome::Failed, "refused, not silently dropped");

    // Teardown leaves no VXLAN device, /32 or table behind.
    dp_a.teardown().await.unwrap();
    let links = try_in(&ha, &["ip", "-br", "link"]).await.unwrap();
    assert!(!links.contains("swv"), "{links}");
    let addrs = try_in(&ha, &["ip", "-br", "addr"]).await.unwrap();
    assert!(!addrs.contains("/32"), "{addrs}");
    let tables = try_in(&ha, &["nft", "list", "tables"]).await.unwrap();
    assert!(!tables.contains("swarmnet"), "{tables}");
    drop(lab);
}
