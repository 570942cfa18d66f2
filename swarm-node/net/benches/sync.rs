//! Data plane sync at scale: 100 VIP services × 10 tasks on one overlay, 1000 task
//! addresses on 10 other nodes. Prints figures, asserts nothing.
//!
//! - pure: `plan` and `nft::ruleset` for the whole map;
//! - fake kernel: a first sync, an unchanged one, and one after a single task moved;
//! - real kernel (root only): the same three syncs in a network namespace made for the
//!   run (a bridge stands in for Docker's), removed at the end.
//!
//! `cargo bench -p swarm-net --bench sync`

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarm_net::{nft, plan, Dataplane, FakeKernel, Kernel, LocalFacts, SystemKernel};
use swarm_state::netmap::{NetMap, NetView, RemoteEndpoint, ServiceView};
use swarm_state::network::EndpointMode;

const SERVICES: u32 = 100;
const TASKS: u32 = 10;
const NODES: u32 = 10;
const VNI: u32 = 4097;

/// The i-th address of 10.1.0.0/20 (10.1.0.1 is the gateway).
fn addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)
}

/// The map as this node sees it; `moved` shifts one task to a new address, as a restart
/// elsewhere would.
fn netmap(moved: bool) -> NetMap {
    let mut remote = Vec::new();
    let mut services = Vec::new();
    for s in 0..SERVICES {
        let mut backends = Vec::new();
        for t in 0..TASKS {
            let mut a = addr(10 + s * TASKS + t);
            if moved && s == 0 && t == 0 {
                a = addr(3000);
            }
            backends.push(a);
            remote.push(RemoteEndpoint {
                addr: a,
                vtep: Ipv4Addr::new(192, 168, 250, 10 + (t % NODES) as u8),
            });
        }
        backends.sort();
        services.push(ServiceView {
            id: format!("svc{s}"),
            name: format!("svc{s}"),
            aliases: vec![],
            mode: EndpointMode::Vip,
            vip: Some(addr(2000 + s)),
            backends,
        });
    }
    remote.sort();
    NetMap {
        tunnel: None,
        index: 1,
        node_id: "bench".into(),
        local_vtep: Some(Ipv4Addr::new(192, 168, 250, 1)),
        data_path_port: 4789,
        networks: vec![NetView {
            id: "net1".into(),
            name: "bench".into(),
            vni: VNI,
            subnet: "10.1.0.0/20".parse().unwrap(),
            gateway: addr(1),
            mtu: Some(1450),
            encrypted: false,
            internal: false,
            ingress: false,
            local_addr: Some(addr(4000)),
            remote,
            services,
        }],
        local_tasks: vec![],
        ingress_ports: vec![],
        ingress_nodes: vec![],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn three_syncs(what: &str, kernel: Arc<dyn Kernel>) {
    let facts = LocalFacts {
        underlay_mtu: 1500,
        dns_port: 7953,
        mesh_snat: false,
    };
    let dp = Dataplane::new(kernel);
    let first = plan(&netmap(false), &facts);
    let moved = plan(&netmap(true), &facts);
    for (label, desired) in [
        ("first sync", &first),
        ("unchanged sync", &first),
        ("one task moved", &moved),
    ] {
        let start = Instant::now();
        match dp.sync(desired).await {
            Ok(report) => println!(
                "figure: {what}: {label}: {} ({} changes, nft replaced: {})",
                ms(start.elapsed()),
                report.changes.len(),
                report.nft_applied
            ),
            Err(e) => println!("figure: {what}: {label}: failed: {e}"),
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A namespace with the bridge Docker would have made; deleted on drop.
struct Netns(String);

impl Netns {
    fn make(name: &str) -> Option<Netns> {
        let ns = Netns(name.to_string());
        let br = swarm_net::bridge_name(VNI);
        let steps: [&[&str]; 5] = [
            &["netns", "add", name],
            &["-n", name, "link", "set", "lo", "up"],
            &["-n", name, "link", "add", &br, "type", "bridge"],
            &["-n", name, "addr", "add", "10.1.0.1/20", "dev", &br],
            &["-n", name, "link", "set", &br, "up"],
        ];
        for args in steps {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!("skipped: real kernel: `ip {}` failed", args.join(" "));
                return None;
            }
        }
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let facts = LocalFacts {
        underlay_mtu: 1500,
        dns_port: 7953,
        mesh_snat: false,
    };
    let map = netmap(false);
    let rounds = 20;
    let start = Instant::now();
    let mut desired = plan(&map, &facts);
    for _ in 1..rounds {
        desired = plan(&map, &facts);
    }
    println!(
        "figure: plan, {SERVICES} services x {TASKS} tasks: {} per run",
        ms(start.elapsed() / rounds)
    );
    let start = Instant::now();
    let mut script = nft::ruleset(&desired);
    for _ in 1..rounds {
        script = nft::ruleset(&desired);
    }
    println!(
        "figure: nft ruleset render: {} per run ({} lines)",
        ms(start.elapsed() / rounds),
        script.lines().count()
    );

    let fake = FakeKernel::new();
    fake.add_bridge(&swarm_net::bridge_name(VNI), "10.1.0.1/20".parse().unwrap());
    three_syncs("fake kernel", Arc::new(fake)).await;

    if !is_root() {
        println!("skipped: real kernel: needs root");
        return;
    }
    let name = format!("swbench{}", std::process::id());
    let Some(_ns) = Netns::make(&name) else {
        return;
    };
    three_syncs(
        "real kernel (netns)",
        Arc::new(SystemKernel::in_netns(&name)),
    )
    .await;
}
