//! The DNS server over real sockets on loopback: the local task's address is 127.0.0.1, so
//! queries from loopback count as that task. Upstreams are fakes on loopback too.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::tcp::TcpStream as DnsTcpStream;
use hickory_server::net::DnsStreamHandle;
use hickory_server::proto::op::{
    Edns, Message, MessageType, OpCode, Query, ResponseCode, SerialMessage,
};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use swarm_dns::{DnsError, DnsServer, Forward, Transport, Upstreams, MAX_FORWARDS_IN_FLIGHT};
use swarm_state::netmap::{LocalTask, NetMap, NetView, ServiceView};
use swarm_state::network::EndpointMode;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);
/// What the fake upstream answers for every name.
const UPSTREAM_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn service(name: &str, mode: EndpointMode, vip: Option<&str>, backends: &[&str]) -> ServiceView {
    ServiceView {
        id: format!("id-{name}"),
        name: name.to_string(),
        aliases: vec![format!("{name}-alias")],
        mode,
        vip: vip.map(ip),
        backends: backends.iter().map(|b| ip(b)).collect(),
    }
}

fn netmap(services: Vec<ServiceView>) -> NetMap {
    NetMap {
        tunnel: None,
        index: 1,
        node_id: "node-1".to_string(),
        networks: vec![NetView {
            id: "net-1".to_string(),
            name: "front".to_string(),
            vni: 4097,
            subnet: "127.0.0.0/8".parse().unwrap(),
            gateway: ip("127.0.0.254"),
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
            addrs: vec![("net-1".to_string(), ip("127.0.0.1"))],
        }],
        ..NetMap::default()
    }
}

fn default_services() -> Vec<ServiceView> {
    vec![
        service(
            "cache",
            EndpointMode::Dnsrr,
            None,
            &["10.0.1.7", "10.0.1.8"],
        ),
        service(
            "web",
            EndpointMode::Vip,
            Some("10.0.1.2"),
            &["127.0.0.1", "10.0.1.6"],
        ),
    ]
}

/// A running server; stops it when dropped, even if the test failed.
struct Running {
    addr: SocketAddr,
    map: watch::Sender<Arc<NetMap>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DnsError>>>,
}

impl Running {
    async fn start(forwarder: impl Forward) -> Running {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        // The TCP listener must share the UDP port; retry the rare case where it is taken.
        let (udp, tcp, addr) = match TcpListener::bind(addr).await {
            Ok(tcp) => (udp, tcp, addr),
            Err(_) => {
                let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = tcp.local_addr().unwrap();
                (UdpSocket::bind(addr).await.unwrap(), tcp, addr)
            }
        };
        let (map, view) = watch::channel(Arc::new(netmap(default_services())));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = DnsServer::with_forwarder(view, forwarder);
        let task = tokio::spawn(server.serve(udp, tcp, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            map,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) -> Result<(), DnsError> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    msg
}

fn rand_id() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(7919, Ordering::Relaxed) as u16
}

async fn ask_udp_from(from: &str, server: SocketAddr, q: &Message) -> Message {
    let sock = UdpSocket::bind((ip(from), 0)).await.unwrap();
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("no udp reply in time")
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, q.metadata.id);
    reply
}

async fn ask_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    ask_udp_from("127.0.0.1", server, &query(name, qtype)).await
}

async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let q = query(name, qtype);
    let tcp = TcpStream::connect(server).await.unwrap();
    let (mut stream, mut handle) = DnsTcpStream::from_stream(AsyncIoTokioAsStd(tcp), server);
    handle
        .send(SerialMessage::new(q.to_vec().unwrap(), server))
        .unwrap();
    let msg = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no tcp reply in time")
        .expect("connection closed")
        .unwrap();
    let reply = Message::from_vec(msg.bytes()).unwrap();
    assert_eq!(reply.metadata.id, q.metadata.id);
    reply
}

/// The A addresses of a reply, sorted (dnsrr answers are shuffled).
fn addrs(reply: &Message) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ttls(reply: &Message) -> Vec<u32> {
    reply.answers.iter().map(|r| r.ttl).collect()
}

#[tokio::test]
async fn answers_services_over_udp() {
    let server = Running::start(Upstreams::none()).await;

    let reply = ask_udp(server.addr, "web", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(addrs(&reply), [ip("10.0.1.2")]);
    assert_eq!(ttls(&reply), [30]);

    let reply = ask_udp(server.addr, "WEB-Alias.", RecordType::A).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.2")]);

    let reply = ask_udp(server.addr, "tasks.web", RecordType::A).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.6"), ip("127.0.0.1")]);
    assert_eq!(ttls(&reply), [5, 5]);

    let reply = ask_udp(server.addr, "cache", RecordType::A).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.7"), ip("10.0.1.8")]);

    let reply = ask_udp(server.addr, "web", RecordType::AAAA).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert!(reply.answers.is_empty());

    // With EDNS the reply carries EDNS too.
    let mut q = query("web", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    q.set_edns(edns);
    let reply = ask_udp_from("127.0.0.1", server.addr, &q).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.2")]);
    assert!(reply.edns.is_some());

    let reply = ask_udp(server.addr, "2.1.0.10.in-addr.arpa.", RecordType::PTR).await;
    match &reply.answers[..] {
        [r] => assert_eq!(r.data.to_string(), "web."),
        other => panic!("want one PTR, got {other:?}"),
    }

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn answers_services_over_tcp() {
    let server = Running::start(Upstreams::none()).await;
    let reply = ask_tcp(server.addr, "web", RecordType::A).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(addrs(&reply), [ip("10.0.1.2")]);
    let reply = ask_tcp(server.addr, "tasks.cache", RecordType::A).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.7"), ip("10.0.1.8")]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn refuses_sources_that_are_not_local_tasks() {
    let server = Running::start(Upstreams::none()).await;
    let reply = ask_udp_from("127.0.0.2", server.addr, &query("web", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_upstream_unknown_names_are_refused_at_once() {
    let server = Running::start(Upstreams::none()).await;
    let started = Instant::now();
    let reply = ask_udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    let reply = ask_tcp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    server.shutdown().await.unwrap();
}

/// A fake upstream on loopback answering every A query with [`UPSTREAM_ADDR`], over UDP and
/// TCP on the same port. Aborted when dropped.
struct FakeUpstream {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_reply(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.clone());
    if let Some(q) = query.queries.first() {
        reply.add_answer(Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A(UPSTREAM_ADDR)),
        ));
    }
    reply
}

impl FakeUpstream {
    async fn start() -> FakeUpstream {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let q = Message::from_vec(&buf[..n]).unwrap();
                let _ = udp
                    .send_to(&upstream_reply(&q).to_vec().unwrap(), from)
                    .await;
            }
        });
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((conn, from)) = tcp.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut stream, mut handle) =
                        DnsTcpStream::from_stream(AsyncIoTokioAsStd(conn), from);
                    while let Some(Ok(msg)) = stream.next().await {
                        let q = Message::from_vec(msg.bytes()).unwrap();
                        let bytes = upstream_reply(&q).to_vec().unwrap();
                        if handle.send(SerialMessage::new(bytes, from)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            tasks: vec![udp_task, tcp_task],
        }
    }
}

#[tokio::test]
async fn forwards_unknown_names_to_the_upstream() {
    let upstream = FakeUpstream::start().await;
    let server = Running::start(Upstreams {
        servers: vec![upstream.addr],
        timeout: WAIT,
    })
    .await;

    let reply = ask_udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&reply), [UPSTREAM_ADDR]);
    assert!(reply.metadata.recursion_available);
    assert!(!reply.metadata.authoritative);

    let reply = ask_tcp(server.addr, "example.org.", RecordType::A).await;
    assert_eq!(addrs(&reply), [UPSTREAM_ADDR]);

    // Ours still come from us.
    let reply = ask_udp(server.addr, "web", RecordType::A).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.2")]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_upstream_gives_servfail() {
    // Bound but never read: queries to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = Running::start(Upstreams {
        servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(200),
    })
    .await;
    let reply = ask_udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn follows_network_map_changes() {
    let server = Running::start(Upstreams::none()).await;
    let reply = ask_udp(server.addr, "late", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

    let mut services = default_services();
    services.push(service("late", EndpointMode::Vip, Some("10.0.1.40"), &[]));
    server.map.send(Arc::new(netmap(services))).unwrap();

    let deadline = Instant::now() + WAIT;
    loop {
        let reply = ask_udp(server.addr, "late", RecordType::A).await;
        if addrs(&reply) == [ip("10.0.1.40")] {
            break;
        }
        assert!(Instant::now() < deadline, "new service never answered");
        tokio::task::yield_now().await;
    }
    server.shutdown().await.unwrap();
}

/// A forwarder that never answers and records how many queries wait on it at once.
#[derive(Clone, Default)]
struct Blackhole {
    waiting: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

#[async_trait]
impl Forward for Blackhole {
    fn enabled(&self) -> bool {
        true
    }

    async fn forward(&self, _query: &[u8], _transport: Transport) -> Result<Message, DnsError> {
        let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::future::pending::<()>().await;
        unreachable!()
    }
}

#[tokio::test]
async fn forwards_in_flight_are_capped() {
    let hole = Blackhole::default();
    let server = Running::start(hole.clone()).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut sent = 0;
    let mut flood = |count: usize| {
        let batch: Vec<Vec<u8>> = (sent..sent + count)
            .map(|i| {
                query(&format!("n{i}.example.com."), RecordType::A)
                    .to_vec()
                    .unwrap()
            })
            .collect();
        sent += count;
        batch
    };
    // Flood in batches until the cap is reached: the kernel may drop datagrams when the
    // socket buffer is full, so the count sent is not the count received.
    let deadline = Instant::now() + WAIT;
    while hole.waiting.load(Ordering::SeqCst) < MAX_FORWARDS_IN_FLIGHT {
        assert!(Instant::now() < deadline, "the cap was never reached");
        for q in flood(64) {
            sock.send_to(&q, server.addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // More beyond the cap are dropped.
    for q in flood(100) {
        sock.send_to(&q, server.addr).await.unwrap();
    }
    // Our own names are still answered while the forwards hang.
    let reply = ask_udp(server.addr, "web", RecordType::A).await;
    assert_eq!(addrs(&reply), [ip("10.0.1.2")]);
    assert_eq!(hole.most.load(Ordering::SeqCst), MAX_FORWARDS_IN_FLIGHT);
    server.shutdown().await.unwrap();
}
