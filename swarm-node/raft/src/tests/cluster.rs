//! A real three-manager cluster in one process, over HTTP on loopback sockets.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarm_state::models::{Service, ServiceSpec};
use swarm_state::{ClusterState, Command};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{server, ClusterRaft, MemberNode, ProposeError, RaftOptions, Tuning};

/// Bound on every wait for the cluster to reach a state.
const WAIT: Duration = Duration::from_secs(10);

/// Snapshots every few entries and keeps no log behind them, so that restarts load
/// snapshots and a node that was down catches up through a snapshot transfer.
const SNAPSHOT_LOGS: u64 = 5;

struct TestNode {
    id: u64,
    addr: SocketAddr,
    dir: PathBuf,
    raft: ClusterRaft,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl TestNode {
    async fn start(id: u64, dir: &Path, listener: TcpListener) -> TestNode {
        let addr = listener.local_addr().unwrap();
        let mut opts = RaftOptions::new(id, dir.to_path_buf());
        opts.scheme = "http".into();
        opts.snapshot_logs = SNAPSHOT_LOGS;
        let raft = ClusterRaft::open_with(opts, reqwest::Client::new(), Tuning { logs_to_keep: 0 })
            .await
            .unwrap_or_else(|e| panic!("open raft node {id}: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = server::router(raft.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestNode {
            id,
            addr,
            dir: dir.to_path_buf(),
            raft,
            stop,
            server,
        }
    }

    /// Restarts from the same directory on the same address, as a rebooted manager would.
    async fn restart(id: u64, dir: &Path, addr: SocketAddr) -> TestNode {
        let listener = TcpListener::bind(addr).await.unwrap();
        TestNode::start(id, dir, listener).await
    }

    fn member(&self) -> MemberNode {
        member(self.id, self.addr)
    }

    /// Stops Raft, then the listener and every open connection, like a dead process.
    async fn kill(self) -> (u64, PathBuf, SocketAddr) {
        self.raft.shutdown().await.unwrap();
        let _ = self.stop.send(());
        within("server stop", self.server).await.unwrap();
        (self.id, self.dir, self.addr)
    }
}

fn member(id: u64, addr: SocketAddr) -> MemberNode {
    MemberNode {
        node_id: format!("node-{id}"),
        addr: addr.to_string(),
    }
}

fn create_service(n: u32) -> Command {
    Command::CreateService {
        service: Box::new(Service {
            id: Some(format!("svc{n}")),
            spec: Some(ServiceSpec {
                name: Some(format!("web{n}")),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Waits until the node's applied state satisfies `pred`.
async fn wait_state(node: &ClusterRaft, what: &str, pred: impl Fn(&ClusterState) -> bool) {
    let mut rx = node.subscribe();
    within(what, async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.expect("state channel closed");
        }
    })
    .await
}

/// Polls `cond` until it holds. For conditions spread over several nodes' metrics,
/// where no single channel announces the moment they all agree.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Waits until one of `nodes` leads and every one of them knows it.
async fn wait_leader(nodes: &[&TestNode]) -> u64 {
    let agreed = || {
        let first = nodes[0].raft.leader_watch().borrow().to_owned()?;
        let all_agree = nodes
            .iter()
            .all(|n| *n.raft.leader_watch().borrow() == Some(first));
        let leads = nodes.iter().any(|n| n.id == first && n.raft.is_leader());
        (all_agree && leads).then_some(first)
    };
    eventually("a leader all nodes agree on", || agreed().is_some()).await;
    agreed().expect("leader")
}

fn by_id<'a>(nodes: &'a [&'a TestNode], id: u64) -> &'a TestNode {
    nodes.iter().find(|n| n.id == id).expect("node in list")
}

async fn propose_all(node: &ClusterRaft, range: std::ops::RangeInclusive<u32>) {
    for n in range {
        let res = within("a proposal", node.propose(create_service(n)))
            .await
            .unwrap_or_else(|e| panic!("propose service {n}: {e}"));
        assert!(res.error.is_none(), "service {n}: {:?}", res.error);
    }
}

fn services(s: &ClusterState) -> usize {
    s.services.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_fail_over_and_restart_from_disk() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        nodes.push(TestNode::start(id, &tmp.path().join(format!("n{id}")), l).await);
    }

    // Form the cluster: node 1 alone, then 2 and 3 as voters.
    assert!(!nodes[0].raft.is_initialized());
    nodes[0].raft.initialize(nodes[0].member()).await.unwrap();
    assert!(nodes[0].raft.is_initialized());
    // Initializing again is harmless.
    nodes[0].raft.initialize(nodes[0].member()).await.unwrap();
    let refs: Vec<&TestNode> = nodes.iter().take(1).collect();
    assert_eq!(wait_leader(&refs).await, 1);
    for n in &nodes[1..] {
        within("add voter", nodes[0].raft.add_voter(n.id, n.member()))
            .await
            .unwrap();
    }
    // Adding an existing voter again changes nothing.
    nodes[0].raft.add_voter(2, nodes[1].member()).await.unwrap();
    let expected: BTreeMap<u64, MemberNode> = nodes.iter().map(|n| (n.id, n.member())).collect();
    assert_eq!(nodes[0].raft.voters(), expected);

    // Proposals on a follower are sent back to the leader.
    match nodes[1].raft.propose(create_service(0)).await {
        Err(ProposeError::ForwardToLeader {
            leader: Some((1, m)),
        }) => {
            assert_eq!(m, nodes[0].member())
        }
        other => panic!("expected a forward to node 1, got {other:?}"),
    }
    assert!(nodes[1].raft.remove_voter(3).await.is_err());

    // Replicate and converge.
    propose_all(&nodes[0].raft, 1..=8).await;
    for n in &nodes {
        wait_state(&n.raft, "8 services everywhere", |s| services(s) == 8).await;
        assert_eq!(n.raft.voters(), expected);
    }
    nodes[0].raft.ensure_linearizable().await.unwrap();
    assert!(matches!(
        nodes[2].raft.ensure_linearizable().await,
        Err(ProposeError::ForwardToLeader { .. })
    ));

    // Kill the leader: the other two elect a new one.
    let mut nodes = nodes.into_iter();
    let old_leader = nodes.next().unwrap();
    let mut rest: Vec<TestNode> = nodes.collect();
    let old_last_log = old_leader.raft.raft().metrics().borrow().last_log_index;
    let killed_at = Instant::now();
    let (old_id, old_dir, old_addr) = old_leader.kill().await;
    let refs: Vec<&TestNode> = rest.iter().collect();
    let new_leader = wait_leader(&refs).await;
    let failover = killed_at.elapsed();
    println!("leader failover took {} ms", failover.as_millis());
    assert_ne!(new_leader, old_id);

    // The new leader takes proposals; enough of them to snapshot and purge the log the
    // old leader would need.
    propose_all(&by_id(&refs, new_leader).raft, 9..=20).await;
    for n in &rest {
        wait_state(&n.raft, "20 services on the survivors", |s| {
            services(s) == 20
        })
        .await;
    }

    // The leader no longer has the log the old leader lacks: it must send a snapshot.
    let leader_raft = by_id(&refs, new_leader).raft.raft().clone();
    eventually("the new leader to purge its log", || {
        leader_raft.metrics().borrow().purged.map(|p| p.index) > old_last_log
    })
    .await;

    // The old leader comes back from its directory and catches up.
    let back = TestNode::restart(old_id, &old_dir, old_addr).await;
    assert!(back.raft.is_initialized(), "membership survives a restart");
    assert!(
        back.raft.read().services.len() >= 8,
        "state survives a restart"
    );
    wait_state(&back.raft, "the restarted node to catch up", |s| {
        services(s) == 20
    })
    .await;
    rest.push(back);

    // Restart everyone from disk.
    let mut down = Vec::new();
    for n in rest {
        down.push(n.kill().await);
    }
    let mut nodes = Vec::new();
    for (id, dir, addr) in down {
        let n = TestNode::restart(id, &dir, addr).await;
        // Snapshot plus the committed log after it are applied before any election.
        wait_state(&n.raft, "state reloaded from disk", |s| services(s) == 20).await;
        nodes.push(n);
    }
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let leader = wait_leader(&refs).await;
    propose_all(&by_id(&refs, leader).raft, 21..=21).await;
    for n in &nodes {
        wait_state(&n.raft, "21 services after a full restart", |s| {
            services(s) == 21
        })
        .await;
        assert_eq!(n.raft.voters(), expected);
    }

    // The last voter cannot be removed; others can, and it is idempotent.
    let leader_raft = by_id(&refs, leader).raft.clone();
    let follower = refs.iter().find(|n| n.id != leader).unwrap().id;
    within("remove voter", leader_raft.remove_voter(follower))
        .await
        .unwrap();
    leader_raft.remove_voter(follower).await.unwrap();
    eventually("two voters left", || leader_raft.voters().len() == 2).await;

    let state: Arc<ClusterState> = leader_raft.read();
    assert_eq!(services(&state), 21);
    for n in nodes {
        n.kill().await;
    }
    println!("cluster test took {} ms", started.elapsed().as_millis());
}
