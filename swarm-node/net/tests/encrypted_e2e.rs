//! An encrypted overlay on a real kernel, between network namespaces. Runs only as root
//! with SWARMUP_E2E=1.
//!
//! Two "hosts" joined by a veth underlay, each with the bridge Docker would make and one
//! "container". Their data planes carry the overlay through the WireGuard tunnel (`swg0`,
//! boringtun over TUN). A container fetches a page from the other across it, while the
//! test captures every frame on host A's underlay: the page's text never appears there,
//! nor does any VXLAN packet; only WireGuard's UDP does.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

use swarm_net::tunnel::TunnelKey;
use swarm_net::{plan, Dataplane, LocalFacts, SystemKernel};
use swarm_state::netmap::{NetMap, NetView, RemoteEndpoint, TunnelMap, TunnelPeer};

const VNI: u32 = 4098;
const BRIDGE: Bridge<'static> = Bridge {
    vni: VNI,
    gateway_cidr: "10.0.2.1/24",
    mtu: "1390",
};
const MARKER: &str = "only-inside-the-tunnel-7f3a";

/// Host `own`'s map: one encrypted network whose other endpoints are reached at the
/// peer's tunnel address, and the tunnel to that peer.
fn netmap(
    underlay: &str,
    tunnel: &str,
    own: &str,
    peer: (&str, &str, &str),
    peer_key: &str,
) -> NetMap {
    let (peer_task, peer_own, peer_tunnel) = peer;
    NetMap {
        index: 1,
        node_id: underlay.into(),
        local_vtep: Some(ip(underlay)),
        data_path_port: 4789,
        networks: vec![NetView {
            id: "secure".into(),
            name: "secure".into(),
            vni: VNI,
            subnet: "10.0.2.0/24".parse().unwrap(),
            gateway: ip("10.0.2.1"),
            mtu: None,
            encrypted: true,
            internal: false,
            ingress: false,
            local_addr: Some(ip(own)),
            remote: [peer_task, peer_own]
                .iter()
                .map(|a| RemoteEndpoint {
                    addr: ip(a),
                    vtep: ip(peer_tunnel),
                })
                .collect(),
            services: vec![],
        }],
        tunnel: Some(TunnelMap {
            local_addr: ip(tunnel),
            subnet: "10.255.0.0/16".parse().unwrap(),
            port: 51820,
            peers: vec![TunnelPeer {
                addr: ip(peer_tunnel),
                public_key: peer_key.into(),
                endpoint: ip(if underlay.ends_with(".1") {
                    "192.168.212.2"
                } else {
                    "192.168.212.1"
                }),
            }],
        }),
        ..Default::default()
    }
}

/// Every frame seen in namespace `ns` while `during` runs.
async fn capture<F: std::future::Future<Output = String>>(
    ns: &str,
    during: F,
) -> (Vec<Vec<u8>>, String) {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let ns = ns.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sniffer = std::thread::spawn(move || sniff(&ns, stop_rx, ready_tx));
    ready_rx.await.expect("sniffer started");
    let out = during.await;
    // Frames still in flight when the command ended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    (sniffer.join().unwrap(), out)
}

fn sniff(
    ns: &str,
    stop: std::sync::mpsc::Receiver<()>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Vec<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    // ETH_P_ALL, in network order: every frame of every interface of the namespace, which
    // holds nothing but the underlay.
    let all = i32::from(0x0003u16.to_be());
    let mut sock = socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(all)),
    )
    .expect("AF_PACKET socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let _ = ready.send(());
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    while stop.try_recv().is_err() {
        if let Ok(n) = sock.read(&mut buf) {
            frames.push(buf[..n].to_vec());
        }
    }
    frames
}

/// The UDP destination port of an Ethernet frame carrying IPv4 UDP.
fn udp_dport(frame: &[u8]) -> Option<u16> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    Some(u16::from_be_bytes([
        *frame.get(udp + 2)?,
        *frame.get(udp + 3)?,
    ]))
}

#[tokio::test]
async fn an_encrypted_overlay_leaves_nothing_in_clear_on_the_underlay() {
    if !enabled("the encrypted data plane") {
        return;
    }
    let pid = std::process::id();
    let (ha, hb) = (format!("sxea{pid}"), format!("sxeb{pid}"));
    let (ca, cb) = (format!("sxec{pid}"), format!("sxed{pid}"));
    let www = tempfile::tempdir().unwrap();
    let mut lab = Lab {
        namespaces: vec![ca.clone(), cb.clone(), ha.clone(), hb.clone()],
        children: vec![],
    };
    // The underlay is a bridge in a namespace of its own, the "wire", where the test
    // captures: nothing else travels there.
    let wire = format!("sxew{pid}");
    lab.namespaces.push(wire.clone());
    sh(&["ip", "netns", "add", &ha]).await;
    sh(&["ip", "netns", "add", &hb]).await;
    sh(&["ip", "netns", "add", &wire]).await;
    sh(&["ip", "-n", &wire, "link", "add", "br0", "type", "bridge"]).await;
    sh(&["ip", "-n", &wire, "link", "set", "br0", "up"]).await;
    let (ua, ub) = (format!("sxeu{pid}"), format!("sxev{pid}"));
    for (host, dev, end) in [(&ha, &ua, "wa"), (&hb, &ub, "wb")] {
        sh(&[
            "ip", "link", "add", dev, "netns", host, "type", "veth", "peer", "name", end, "netns",
            &wire,
        ])
        .await;
        sh(&["ip", "-n", &wire, "link", "set", end, "master", "br0", "up"]).await;
    }
    make_host(&ha, &ua, "192.168.212.1/24", BRIDGE).await;
    make_host(&hb, &ub, "192.168.212.2/24", BRIDGE).await;
    make_container(&ha, &ca, &format!("sxey{pid}"), "10.0.2.10", BRIDGE).await;
    make_container(&hb, &cb, &format!("sxex{pid}"), "10.0.2.20", BRIDGE).await;

    std::fs::write(www.path().join("page"), MARKER.repeat(4000)).unwrap();
    lab.httpd(&cb, www.path());

    let (ka, kb) = (
        Arc::new(TunnelKey::generate()),
        Arc::new(TunnelKey::generate()),
    );
    let facts = LocalFacts {
        underlay_mtu: 1500,
        dns_port: 5353,
        mesh_snat: false,
    };
    let map_a = netmap(
        "192.168.212.1",
        "10.255.0.1",
        "10.0.2.241",
        ("10.0.2.20", "10.0.2.242", "10.255.0.2"),
        &kb.public_base64(),
    );
    let map_b = netmap(
        "192.168.212.2",
        "10.255.0.2",
        "10.0.2.242",
        ("10.0.2.10", "10.0.2.241", "10.255.0.1"),
        &ka.public_base64(),
    );
    let (want_a, want_b) = (plan(&map_a, &facts), plan(&map_b, &facts));
    assert_eq!(want_a.bridges[0].mtu, 1390, "VXLAN and WireGuard both fit");
    let dp_a = Dataplane::new(Arc::new(SystemKernel::in_netns(&ha).with_tunnel_key(ka)));
    let dp_b = Dataplane::new(Arc::new(SystemKernel::in_netns(&hb).with_tunnel_key(kb)));
    let ra = dp_a.sync(&want_a).await.expect("sync host a");
    assert_eq!(ra.applied, ["secure"], "{ra:?}");
    let rb = dp_b.sync(&want_b).await.expect("sync host b");
    assert_eq!(rb.applied, ["secure"], "{rb:?}");
    let again = dp_a.sync(&want_a).await.unwrap();
    assert!(!again.changed(), "{:?}", again.changes);
    let swg = try_in(&ha, &["ip", "-br", "addr", "show", "dev", "swg0"])
        .await
        .expect("swg0 exists in host a");
    assert!(swg.contains("10.255.0.1/16"), "{swg}");

    until_ok(&ca, &["busybox", "ping", "-c1", "-W1", "10.0.2.20"]).await;
    // Frames of the overlay's full MTU (1390) fit in the tunnel's (1440).
    until_ok(
        &ca,
        &["busybox", "ping", "-c1", "-W1", "-s", "1362", "10.0.2.20"],
    )
    .await;

    let url = "http://10.0.2.20/page";
    until_ok(&ca, &["busybox", "wget", "-q", "-O", "-", url]).await;
    let (frames, page) = capture(&wire, async {
        until_ok(&ca, &["busybox", "wget", "-q", "-O", "-", url]).await
    })
    .await;
    assert_eq!(
        page.len(),
        MARKER.len() * 4000,
        "the whole page came through"
    );
    assert!(!frames.is_empty(), "frames were captured on the underlay");
    let marker = MARKER.as_bytes();
    let clear = frames
        .iter()
        .filter(|f| f.windows(marker.len()).any(|w| w == marker))
        .count();
    assert_eq!(clear, 0, "the page's text is never on the underlay");
    let vxlan = frames.iter().filter(|f| udp_dport(f) == Some(4789)).count();
    assert_eq!(vxlan, 0, "no VXLAN travels outside the tunnel");
    let wireguard = frames
        .iter()
        .filter(|f| udp_dport(f) == Some(51820))
        .count();
    assert!(wireguard > 0, "the overlay went through WireGuard");
    println!(
        "figure: encrypted overlay, {} frames on the underlay during one fetch, {wireguard} WireGuard, 0 in clear",
        frames.len()
    );

    // VXLAN of this VNI sent in clear on the underlay (a forger on the wire) is dropped
    // on arrival: host B's rule counts it.
    sh(&[
        "ip",
        "-n",
        &wire,
        "addr",
        "add",
        "192.168.212.3/24",
        "dev",
        "br0",
    ])
    .await;
    sh(&[
        "ip",
        "-n",
        &wire,
        "link",
        "add",
        "forged",
        "type",
        "vxlan",
        "id",
        "4098",
        "remote",
        "192.168.212.2",
        "local",
        "192.168.212.3",
        "dstport",
        "4789",
        "dev",
        "br0",
    ])
    .await;
    sh(&[
        "ip",
        "-n",
        &wire,
        "addr",
        "add",
        "10.0.2.99/24",
        "dev",
        "forged",
    ])
    .await;
    sh(&["ip", "-n", &wire, "link", "set", "forged", "up"]).await;
    let _ = run_in(&wire, &["busybox", "ping", "-c2", "-W1", "10.0.2.20"]).await;
    let table = try_in(&hb, &["nft", "list", "table", "ip", "swarmnet"])
        .await
        .unwrap();
    let rule = table
        .lines()
        .find(|l| l.contains(&format!("@th,96,24 {VNI:#x}")))
        .unwrap_or_else(|| panic!("no rule for the encrypted VNI: {table}"));
    assert!(rule.contains("iifname != \"swg0\""), "{rule}");
    assert!(
        !rule.contains("counter packets 0 "),
        "the forged VXLAN was dropped: {rule}"
    );

    // Teardown removes the tunnel with everything else.
    dp_a.teardown().await.unwrap();
    dp_b.teardown().await.unwrap();
    let gone = run_in(&ha, &["ip", "link", "show", "dev", "swg0"]).await;
    assert_eq!(gone, Outcome::Failed, "swg0 is gone after teardown");
    drop(lab);
}
