//! Latency of the DNS server on loopback: 10,000 sequential UDP lookups of a service name
//! and of `tasks.NAME`, from a client that counts as a local task (127.0.0.1).
//!
//! Run with `cargo bench -p swarm-dns --bench dns`. Prints figures, asserts nothing.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};
use swarm_dns::{DnsServer, Upstreams};
use swarm_state::netmap::{LocalTask, NetMap, NetView, ServiceView};
use swarm_state::network::EndpointMode;
use tokio::net::{TcpListener, UdpSocket};

const LOOKUPS: usize = 10_000;

fn netmap() -> NetMap {
    let backends: Vec<Ipv4Addr> = (10..20).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
    // Enough services that the lookup is not trivially the only entry.
    let mut services: Vec<ServiceView> = (0..200)
        .map(|i| ServiceView {
            id: format!("id-{i}"),
            name: format!("svc-{i}"),
            aliases: Vec::new(),
            mode: EndpointMode::Vip,
            vip: Some(Ipv4Addr::new(10, 0, 2, (i % 250) as u8)),
            backends: backends.clone(),
        })
        .collect();
    services.push(ServiceView {
        id: "id-web".to_string(),
        name: "web".to_string(),
        aliases: Vec::new(),
        mode: EndpointMode::Vip,
        vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
        backends,
    });
    NetMap {
        tunnel: None,
        networks: vec![NetView {
            id: "net-1".to_string(),
            name: "front".to_string(),
            vni: 4097,
            subnet: "127.0.0.0/8".parse().unwrap(),
            gateway: Ipv4Addr::new(127, 0, 0, 254),
            mtu: None,
            encrypted: false,
            internal: false,
            ingress: false,
            local_addr: None,
            remote: Vec::new(),
            services,
        }],
        local_tasks: vec![LocalTask {
            task_id: "task-1".to_string(),
            service_id: "id-web".to_string(),
            addrs: vec![("net-1".to_string(), Ipv4Addr::LOCALHOST)],
        }],
        ..NetMap::default()
    }
}

/// Sends `LOOKUPS` queries for `name` one after the other; returns each round trip.
async fn lookups(client: &UdpSocket, name: &str) -> Vec<Duration> {
    let mut buf = vec![0u8; 65_535];
    let mut times = Vec::with_capacity(LOOKUPS);
    for i in 0..LOOKUPS {
        let mut q = Message::query();
        q.metadata.id = i as u16;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let bytes = q.to_vec().unwrap();
        let start = Instant::now();
        client.send(&bytes).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        times.push(start.elapsed());
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert!(!reply.answers.is_empty(), "no answer for {name}");
    }
    times.sort();
    times
}

fn pct(sorted: &[Duration], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_micros()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let (_map, view) = tokio::sync::watch::channel(Arc::new(netmap()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            DnsServer::new(view, Upstreams::none()).serve(udp, tcp, async {
                let _ = stopped.await;
            }),
        );

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        // Warm up (page faults, first allocations) before measuring.
        let _ = lookups(&client, "web").await;
        let web = lookups(&client, "web").await;
        let tasks = lookups(&client, "tasks.web").await;
        println!(
            "figure: swarm-dns udp loopback, {LOOKUPS} sequential lookups each: \
             web p50={}us p99={}us; tasks.web (10 tasks) p50={}us p99={}us",
            pct(&web, 0.50),
            pct(&web, 0.99),
            pct(&tasks, 0.50),
            pct(&tasks, 0.99),
        );

        let _ = stop.send(());
        let _ = server.await;
    });
}
