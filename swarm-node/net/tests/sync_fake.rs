//! `Dataplane::sync` against the in-memory kernel.

use std::net::Ipv4Addr;
use std::sync::Arc;

use expect_test::expect;
use swarm_net::{
    plan, Dataplane, Desired, FakeKernel, LocalFacts, NetError, RouteRule, TableRoute,
};
use swarm_state::netmap::{IngressPort, NetMap, NetView, RemoteEndpoint, ServiceView};
use swarm_state::network::{EndpointMode, Protocol};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn service(name: &str, vip: &str, backends: &[&str]) -> ServiceView {
    ServiceView {
        id: format!("id-{name}"),
        name: name.into(),
        aliases: vec![],
        mode: EndpointMode::Vip,
        vip: Some(ip(vip)),
        backends: backends.iter().map(|b| ip(b)).collect(),
    }
}

fn view(id: &str, vni: u32, third: u8) -> NetView {
    NetView {
        id: id.into(),
        name: id.into(),
        vni,
        subnet: format!("10.0.{third}.0/24").parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, third, 1),
        mtu: None,
        encrypted: false,
        internal: false,
        ingress: false,
        local_addr: Some(Ipv4Addr::new(10, 0, third, 241)),
        remote: vec![],
        services: vec![],
    }
}

fn remote(addr: &str, vtep: &str) -> RemoteEndpoint {
    RemoteEndpoint {
        addr: ip(addr),
        vtep: ip(vtep),
    }
}

/// Node 1 with two networks: `front` with a remote task and a web VIP, `back` with a db VIP.
fn map() -> NetMap {
    let mut front = view("front", 4097, 1);
    front.remote = vec![
        remote("10.0.1.20", "192.168.50.2"),
        remote("10.0.1.242", "192.168.50.2"),
    ];
    front.services = vec![service("web", "10.0.1.254", &["10.0.1.10", "10.0.1.20"])];
    let mut back = view("back", 4098, 2);
    back.services = vec![service("db", "10.0.2.254", &["10.0.2.10"])];
    NetMap {
        tunnel: None,
        index: 1,
        node_id: "n1".into(),
        local_vtep: Some(ip("192.168.50.1")),
        data_path_port: 4789,
        networks: vec![front, back],
        local_tasks: vec![],
        ingress_ports: vec![],
        ingress_nodes: vec![],
    }
}

fn desired(map: &NetMap) -> Desired {
    plan(
        map,
        &LocalFacts {
            underlay_mtu: 1500,
            dns_port: 5353,
            mesh_snat: false,
        },
    )
}

/// A fake host on which Docker made the bridges of `d` and one container per bridge.
fn host(d: &Desired) -> Arc<FakeKernel> {
    let k = Arc::new(FakeKernel::new());
    for b in &d.bridges {
        let gw = ipnet::Ipv4Net::new(b.gateway, b.subnet.prefix_len()).unwrap();
        k.add_bridge(&b.bridge, gw);
        k.add_port(&b.bridge, &format!("veth{}", b.bridge));
    }
    k
}

#[tokio::test]
async fn nothing_desired_and_nothing_there_changes_nothing() {
    let k = Arc::new(FakeKernel::new());
    let dp = Dataplane::new(k.clone());
    let empty = desired(&NetMap::default());
    let r = dp.sync(&empty).await.unwrap();
    assert!(!r.changed());
    assert_eq!(k.changes(), Vec::<String>::new());
    let reads = k.reads();
    // Once known clean, an empty sync does not even look.
    dp.sync(&empty).await.unwrap();
    assert_eq!(k.reads(), reads);
    assert_eq!(k.changes(), Vec::<String>::new());
}

#[tokio::test]
async fn first_sync_builds_everything_and_the_second_does_nothing() {
    let d = desired(&map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    let r = dp.sync(&d).await.unwrap();
    assert_eq!(r.applied, ["front", "back"]);
    assert!(r.nft_applied);
    expect![[r#"
        sysctl net/ipv4/ip_forward=1
        sysctl net/bridge/bridge-nf-call-iptables=1
        ip link set dev swb4097 address 02:42:0a:00:01:f1
        ip addr replace 10.0.1.241/32 dev swb4097
        ip addr replace 10.0.1.254/32 dev swb4097
        ip link add swv4097 type vxlan id 4097 dstport 4789 local 192.168.50.1 nolearning proxy
        ip link set dev swv4097 mtu 1450 master swb4097 up
        bridge fdb replace 02:42:0a:00:01:14 dev swv4097 dst 192.168.50.2 self permanent
        bridge fdb replace 02:42:0a:00:01:f2 dev swv4097 dst 192.168.50.2 self permanent
        ip neigh replace 10.0.1.20 lladdr 02:42:0a:00:01:14 dev swv4097 nud permanent
        ip neigh replace 10.0.1.242 lladdr 02:42:0a:00:01:f2 dev swv4097 nud permanent
        ip link set dev swb4098 address 02:42:0a:00:02:f1
        ip addr replace 10.0.2.241/32 dev swb4098
        ip addr replace 10.0.2.254/32 dev swb4098
        ip link add swv4098 type vxlan id 4098 dstport 4789 local 192.168.50.1 nolearning proxy
        ip link set dev swv4098 mtu 1450 master swb4098 up
        bridge link set dev vethswb4097 hairpin on
        bridge link set dev vethswb4098 hairpin on
        nft -f - (replace table ip swarmnet)
    "#]]
    .assert_eq(&(k.take_changes().join("\n") + "\n"));
    assert_eq!(k.nft_table().unwrap(), swarm_net::nft::ruleset(&d));

    let r = dp.sync(&d).await.unwrap();
    assert!(!r.changed(), "{:?}", r.changes);
    assert_eq!(r.applied, ["front", "back"]);
    assert_eq!(k.changes(), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_bridge_skips_only_its_network() {
    let d = desired(&map());
    let k = host(&d);
    k.remove_link("swb4098");
    let dp = Dataplane::new(k.clone());
    let r = dp.sync(&d).await.unwrap();
    assert_eq!(r.applied, ["front"]);
    assert_eq!(r.missing_bridges, ["back"]);
    assert!(!r.is_ready("back") && r.is_ready("front"));
    assert!(k.state().links.contains_key("swv4097"));
    assert!(!k.state().links.contains_key("swv4098"));

    // Docker makes it later: the next sync completes the network.
    k.add_bridge("swb4098", "10.0.2.1/24".parse().unwrap());
    let r = dp.sync(&d).await.unwrap();
    assert_eq!(r.applied, ["front", "back"]);
    assert!(k.state().links.contains_key("swv4098"));
}

#[tokio::test]
async fn stale_entries_addresses_and_networks_are_removed() {
    let full = map();
    let d = desired(&full);
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.take_changes();

    // The remote task moved to another node, the other node's address left, the web service
    // went away, and the back network left this node.
    let mut smaller = full.clone();
    smaller.networks.truncate(1);
    smaller.networks[0].remote = vec![remote("10.0.1.20", "192.168.50.3")];
    smaller.networks[0].services.clear();
    let r = dp.sync(&desired(&smaller)).await.unwrap();
    assert_eq!(r.applied, ["front"]);
    expect![[r#"
        ip addr del 10.0.1.254/32 dev swb4097
        bridge fdb del 02:42:0a:00:01:f2 dev swv4097 dst 192.168.50.2 self
        bridge fdb replace 02:42:0a:00:01:14 dev swv4097 dst 192.168.50.3 self permanent
        ip neigh del 10.0.1.242 dev swv4097
        ip link del dev swv4098
        ip addr del 10.0.2.241/32 dev swb4098
        ip addr del 10.0.2.254/32 dev swb4098
        nft -f - (replace table ip swarmnet)
        conntrack -D -d 10.0.1.254 --reply-src 10.0.1.10
        conntrack -D -d 10.0.1.254 --reply-src 10.0.1.20
        conntrack -D -d 10.0.2.254 --reply-src 10.0.2.10
    "#]]
    .assert_eq(&(k.take_changes().join("\n") + "\n"));
    let s = k.state();
    let fdb: Vec<_> = s.fdb["swv4097"]
        .iter()
        .map(|e| format!("{} {}", e.mac, e.dst))
        .collect();
    assert_eq!(fdb, ["02:42:0a:00:01:14 192.168.50.3"]);
    // Docker's gateway address is never touched.
    assert!(s
        .addrs
        .contains(&("swb4098".into(), "10.0.2.1/24".parse().unwrap())));
}

#[tokio::test]
async fn entries_changed_behind_our_back_are_repaired() {
    let d = desired(&map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.take_changes();

    k.edit(|s| {
        // Someone removed a neighbour entry, added a stray forwarding entry, and detached
        // the VXLAN device; the nft table was flushed away.
        let n = s.neigh.get_mut("swv4097").unwrap();
        let first = *n.iter().next().unwrap();
        n.remove(&first);
        s.fdb
            .entry("swv4098".into())
            .or_default()
            .insert(swarm_net::FdbEntry {
                mac: "02:42:0a:00:02:63".parse().unwrap(),
                dst: ip("192.168.50.9"),
            });
        s.links.get_mut("swv4098").unwrap().master = None;
        s.nft.clear();
    });
    dp.sync(&d).await.unwrap();
    expect![[r#"
        ip neigh replace 10.0.1.20 lladdr 02:42:0a:00:01:14 dev swv4097 nud permanent
        ip link set dev swv4098 mtu 1450 master swb4098 up
        bridge fdb del 02:42:0a:00:02:63 dev swv4098 dst 192.168.50.9 self
        nft -f - (replace table ip swarmnet)
    "#]]
    .assert_eq(&(k.take_changes().join("\n") + "\n"));
}

#[tokio::test]
async fn a_vxlan_device_with_other_parameters_is_recreated() {
    let d = desired(&map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.take_changes();
    let mut moved = map();
    moved.local_vtep = Some(ip("192.168.50.11"));
    dp.sync(&desired(&moved)).await.unwrap();
    let changes = k.take_changes();
    assert!(
        changes.contains(&"ip link del dev swv4097".to_string()),
        "{changes:?}"
    );
    assert!(changes.contains(
        &"ip link add swv4097 type vxlan id 4097 dstport 4789 local 192.168.50.11 nolearning proxy"
            .to_string()
    ));
    let vx = k.state().links["swv4097"].vxlan.unwrap();
    assert_eq!(vx.local, Some(ip("192.168.50.11")));
    // The entries come back on the new device.
    assert_eq!(k.state().fdb["swv4097"].len(), 2);
}

#[tokio::test]
async fn a_backend_leaving_a_vip_has_its_conntrack_entries_flushed() {
    let full = map();
    let d = desired(&full);
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.take_changes();
    k.add_flow(ip("10.0.1.254"), ip("10.0.1.20"));
    k.add_flow(ip("10.0.1.254"), ip("10.0.1.10"));

    let mut less = full.clone();
    less.networks[0].services[0].backends = vec![ip("10.0.1.10")];
    let r = dp.sync(&desired(&less)).await.unwrap();
    assert_eq!(r.flushed, [(ip("10.0.1.254"), ip("10.0.1.20"))]);
    assert!(r.nft_applied);
    assert_eq!(k.state().flows, [(ip("10.0.1.254"), ip("10.0.1.10"))]);
    let changes = k.take_changes();
    assert_eq!(
        changes,
        [
            "nft -f - (replace table ip swarmnet)",
            "conntrack -D -d 10.0.1.254 --reply-src 10.0.1.20"
        ]
    );
    // A VIP with no backend left is refused by the rules.
    let mut none = less.clone();
    none.networks[0].services[0].backends.clear();
    let r = dp.sync(&desired(&none)).await.unwrap();
    assert_eq!(r.flushed, [(ip("10.0.1.254"), ip("10.0.1.10"))]);
    assert!(k.nft_table().unwrap().contains("elements = { 10.0.1.254 }"));
}

#[tokio::test]
async fn no_network_left_removes_everything_of_ours_then_stays_quiet() {
    let d = desired(&map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.take_changes();
    let empty = desired(&NetMap::default());
    dp.sync(&empty).await.unwrap();
    let s = k.state();
    assert!(!s.links.keys().any(|l| l.starts_with("swv")));
    assert!(!s.addrs.iter().any(|(_, n)| n.prefix_len() == 32));
    assert!(s.nft.is_empty());
    k.take_changes();
    dp.sync(&empty).await.unwrap();
    assert_eq!(k.changes(), Vec::<String>::new());
}

#[tokio::test]
async fn leftovers_of_a_previous_run_are_removed_when_nothing_is_desired() {
    let d = desired(&map());
    let k = host(&d);
    Dataplane::new(k.clone()).sync(&d).await.unwrap();
    k.take_changes();
    // A new process that has no network any more.
    let dp = Dataplane::new(k.clone());
    dp.sync(&desired(&NetMap::default())).await.unwrap();
    expect![[r#"
        ip link del dev swv4097
        ip link del dev swv4098
        ip addr del 10.0.1.241/32 dev swb4097
        ip addr del 10.0.1.254/32 dev swb4097
        ip addr del 10.0.2.241/32 dev swb4098
        ip addr del 10.0.2.254/32 dev swb4098
        nft -f - (delete table ip swarmnet)
    "#]]
    .assert_eq(&(k.take_changes().join("\n") + "\n"));
}

#[tokio::test]
async fn teardown_removes_everything_of_ours() {
    let d = desired(&map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    dp.teardown().await.unwrap();
    let s = k.state();
    assert!(!s.links.keys().any(|l| l.starts_with("swv")));
    assert!(s.nft.is_empty());
    // Docker's bridges and containers stay: they are the worker's.
    assert!(s.links.contains_key("swb4097") && s.links.contains_key("vethswb4097"));
    // Syncing again rebuilds from scratch.
    let r = dp.sync(&d).await.unwrap();
    assert!(r.nft_applied);
    assert!(k.state().links.contains_key("swv4097"));
}

#[tokio::test]
async fn without_br_netfilter_sync_says_so() {
    let d = desired(&map());
    let k = host(&d);
    k.without_br_netfilter();
    let err = Dataplane::new(k.clone()).sync(&d).await.unwrap_err();
    assert!(matches!(err, NetError::BridgeNetfilterMissing), "{err}");
    assert!(k.changes().contains(&"modprobe br_netfilter".to_string()));
}

#[tokio::test]
async fn new_container_ports_get_hairpin() {
    let d = desired(&map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.add_port("swb4097", "vethnew");
    k.add_port("docker0", "vethother");
    let changed = dp.set_hairpins().await.unwrap();
    assert_eq!(changed, ["hairpin on vethnew"]);
}

#[tokio::test]
async fn underlay_mtu_is_the_vtep_interfaces() {
    let k = Arc::new(FakeKernel::new());
    k.edit(|s| {
        s.addrs
            .insert(("eth0".into(), "192.168.50.1/24".parse().unwrap()));
        s.links.get_mut("eth0").unwrap().mtu = 9000;
    });
    let dp = Dataplane::new(k);
    assert_eq!(dp.underlay_mtu(ip("192.168.50.1")).await, 9000);
    assert_eq!(dp.underlay_mtu(ip("192.168.50.7")).await, 1500);
}

/// `map()` plus the ingress network (node 1 is 10.0.0.2 there), a published port served
/// by a task on node 2, and the other two nodes of the mesh.
fn mesh_map() -> NetMap {
    let mut m = map();
    let mut ingress = view("ingress", 4096, 0);
    ingress.ingress = true;
    ingress.local_addr = Some(ip("10.0.0.2"));
    ingress.remote = vec![
        remote("10.0.0.3", "192.168.50.2"),
        remote("10.0.0.4", "192.168.50.3"),
        remote("10.0.0.20", "192.168.50.2"),
    ];
    m.networks.push(ingress);
    m.ingress_ports = vec![IngressPort {
        service_id: "id-web".into(),
        service: "web".into(),
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        backends: vec![ip("10.0.0.20")],
    }];
    m.ingress_nodes = vec![
        remote("10.0.0.3", "192.168.50.2"),
        remote("10.0.0.4", "192.168.50.3"),
    ];
    m
}

fn without_overlay_changes(changes: Vec<String>) -> String {
    changes
        .into_iter()
        .filter(|c| c.starts_with("ip -4") || c.starts_with("iptables") || c.contains("localnet"))
        .map(|c| c + "\n")
        .collect()
}

#[tokio::test]
async fn the_mesh_adds_return_rules_routes_localnet_and_a_docker_user_rule() {
    let d = desired(&mesh_map());
    let k = host(&d);
    k.with_docker_user();
    // Someone else's rule and route, in tables that are not ours.
    let foreign = RouteRule {
        priority: 100,
        fwmark: 7,
        mask: u32::MAX,
        iif: "eth0".into(),
        table: 100,
    };
    k.edit(|s| {
        s.rules.insert(foreign.clone());
        s.routes.insert(
            100,
            TableRoute {
                table: 100,
                via: ip("192.168.50.254"),
                dev: "eth0".into(),
            },
        );
    });
    let dp = Dataplane::new(k.clone());
    let r = dp.sync(&d).await.unwrap();
    assert_eq!(r.applied, ["ingress", "front", "back"]);
    expect![[r#"
        ip -4 route replace default via 10.0.0.3 dev swb4096 table 65539
        ip -4 route replace default via 10.0.0.4 dev swb4096 table 65540
        ip -4 rule add priority 100 fwmark 0x31000/0xffff3000 iif swb4096 lookup 65539
        ip -4 rule add priority 100 fwmark 0x31000/0xffff3000 iif swb4097 lookup 65539
        ip -4 rule add priority 100 fwmark 0x31000/0xffff3000 iif swb4098 lookup 65539
        ip -4 rule add priority 100 fwmark 0x41000/0xffff3000 iif swb4096 lookup 65540
        ip -4 rule add priority 100 fwmark 0x41000/0xffff3000 iif swb4097 lookup 65540
        ip -4 rule add priority 100 fwmark 0x41000/0xffff3000 iif swb4098 lookup 65540
        sysctl net/ipv4/conf/swb4096/route_localnet=1
        iptables -w -I DOCKER-USER -m connmark --mark 0x1000/0x1000 -m comment --comment swarmnet -j ACCEPT
    "#]]
    .assert_eq(&without_overlay_changes(k.take_changes()));
    let s = k.state();
    assert_eq!(
        s.sysctls["net/ipv4/conf/swb4096/route_localnet"], "1",
        "only on the ingress bridge"
    );
    assert_eq!(s.sysctls["net/ipv4/conf/swb4097/route_localnet"], "0");
    assert!(k.nft_table().unwrap().contains("map mesh {"));

    // Nothing changed: nothing done.
    let r = dp.sync(&d).await.unwrap();
    assert!(!r.changed(), "{:?}", r.changes);

    // A node leaves the mesh: its rules and table go, the rest stays.
    let mut smaller = mesh_map();
    smaller.ingress_nodes.pop();
    dp.sync(&desired(&smaller)).await.unwrap();
    expect![[r#"
        ip -4 rule del priority 100 fwmark 0x41000/0xffff3000 iif swb4096 lookup 65540
        ip -4 rule del priority 100 fwmark 0x41000/0xffff3000 iif swb4097 lookup 65540
        ip -4 rule del priority 100 fwmark 0x41000/0xffff3000 iif swb4098 lookup 65540
        ip -4 route del default via 10.0.0.4 dev swb4096 table 65540
    "#]]
    .assert_eq(&without_overlay_changes(k.take_changes()));

    // The node leaves the ingress network: everything of the mesh goes, not the others'.
    dp.sync(&desired(&map())).await.unwrap();
    expect![[r#"
        sysctl net/ipv4/conf/swb4096/route_localnet=0
        ip -4 rule del priority 100 fwmark 0x31000/0xffff3000 iif swb4096 lookup 65539
        ip -4 rule del priority 100 fwmark 0x31000/0xffff3000 iif swb4097 lookup 65539
        ip -4 rule del priority 100 fwmark 0x31000/0xffff3000 iif swb4098 lookup 65539
        ip -4 route del default via 10.0.0.3 dev swb4096 table 65539
        iptables -w -D DOCKER-USER -m connmark --mark 0x1000/0x1000 -m comment --comment swarmnet -j ACCEPT
    "#]]
    .assert_eq(&without_overlay_changes(k.take_changes()));
    let s = k.state();
    assert_eq!(s.rules.iter().collect::<Vec<_>>(), [&foreign]);
    assert_eq!(s.routes.keys().collect::<Vec<_>>(), [&100]);
    assert_eq!(s.docker_user.unwrap(), ["-A DOCKER-USER -j RETURN"]);
    assert!(!k.nft_table().unwrap().contains("map mesh {"));
}

#[tokio::test]
async fn mesh_state_is_repaired_and_torn_down() {
    let d = desired(&mesh_map());
    let k = host(&d);
    k.with_docker_user();
    let dp = Dataplane::new(k.clone());
    dp.sync(&d).await.unwrap();
    k.take_changes();
    // Docker re-created the ingress bridge (its routes went with it) and someone flushed
    // DOCKER-USER and left a stale rule of ours with an old mark.
    k.remove_link("swb4096");
    k.add_bridge("swb4096", "10.0.0.1/24".parse().unwrap());
    k.edit(|s| {
        s.docker_user = Some(vec![
            "-A DOCKER-USER -m connmark --mark 0x800/0x800 -m comment --comment swarmnet -j ACCEPT"
                .into(),
            "-A DOCKER-USER -j RETURN".into(),
        ]);
    });
    dp.sync(&d).await.unwrap();
    expect![[r#"
        ip -4 route replace default via 10.0.0.3 dev swb4096 table 65539
        ip -4 route replace default via 10.0.0.4 dev swb4096 table 65540
        sysctl net/ipv4/conf/swb4096/route_localnet=1
        iptables -w -D DOCKER-USER -m connmark --mark 0x800/0x800 -m comment --comment swarmnet -j ACCEPT
        iptables -w -I DOCKER-USER -m connmark --mark 0x1000/0x1000 -m comment --comment swarmnet -j ACCEPT
    "#]]
    .assert_eq(&without_overlay_changes(k.take_changes()));

    dp.teardown().await.unwrap();
    let s = k.state();
    assert!(s.rules.is_empty() && s.routes.is_empty());
    assert_eq!(s.docker_user.unwrap(), ["-A DOCKER-USER -j RETURN"]);
    assert_eq!(s.sysctls["net/ipv4/conf/swb4096/route_localnet"], "0");
}

#[tokio::test]
async fn without_docker_iptables_is_left_alone_and_a_missing_bridge_waits() {
    let d = desired(&mesh_map());
    let k = host(&d);
    k.remove_link("swb4096");
    let dp = Dataplane::new(k.clone());
    let r = dp.sync(&d).await.unwrap();
    assert_eq!(r.missing_bridges, ["ingress"]);
    // No routes through a bridge that does not exist, so no rules either.
    let changes = k.take_changes();
    assert!(
        !changes
            .iter()
            .any(|c| c.starts_with("ip -4") || c.starts_with("iptables")),
        "{changes:?}"
    );
    k.add_bridge("swb4096", "10.0.0.1/24".parse().unwrap());
    dp.sync(&d).await.unwrap();
    let s = k.state();
    assert_eq!(s.routes.len(), 2);
    assert_eq!(s.rules.len(), 6);
    assert_eq!(s.docker_user, None);
}

/// `map()` with the back network encrypted and this node's tunnel to one peer.
fn encrypted_map() -> NetMap {
    let mut m = map();
    let back = m.networks.iter_mut().find(|v| v.id == "back").unwrap();
    back.encrypted = true;
    back.remote = vec![swarm_state::netmap::RemoteEndpoint {
        addr: ip("10.0.2.20"),
        vtep: ip("10.255.0.2"),
    }];
    m.tunnel = Some(swarm_state::netmap::TunnelMap {
        local_addr: ip("10.255.0.1"),
        subnet: "10.255.0.0/16".parse().unwrap(),
        port: 51820,
        peers: vec![swarm_state::netmap::TunnelPeer {
            addr: ip("10.255.0.2"),
            public_key: "k".into(),
            endpoint: ip("192.168.50.2"),
        }],
    });
    m
}

#[tokio::test]
async fn the_tunnel_comes_with_an_encrypted_network_and_goes_with_it() {
    let d = desired(&encrypted_map());
    let k = host(&d);
    let dp = Dataplane::new(k.clone());
    let r = dp.sync(&d).await.unwrap();
    assert_eq!(r.applied, ["front", "back"], "{r:?}");
    let made = k.take_changes();
    let tunnel = made.iter().position(|c| c.starts_with("wireguard swg0"));
    let vxlan = made
        .iter()
        .position(|c| c.contains("swv4098 type vxlan") && c.contains("local 10.255.0.1"));
    assert!(
        matches!((tunnel, vxlan), (Some(t), Some(v)) if t < v),
        "the tunnel first, then the VXLAN from its address: {made:#?}"
    );
    assert!(
        made.iter()
            .any(|c| c.contains("dev swv4098 dst 10.255.0.2")),
        "{made:#?}"
    );
    assert!(!dp.sync(&d).await.unwrap().changed());

    // The network no longer encrypted: the tunnel goes, its VXLAN is made again in clear.
    let clear = desired(&map());
    let r = dp.sync(&clear).await.unwrap();
    assert!(
        r.changes.contains(&"removed tunnel swg0".to_string()),
        "{r:?}"
    );
    assert!(k.state().tunnel.is_none());
    assert!(!k.state().links.contains_key("swg0"));
}
