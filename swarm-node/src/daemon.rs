//! `swarm-node run`: every part of a node under one shutdown tree.
//!
//! A node always runs the control-port server (mutual TLS), the local unix-socket server,
//! the worker agent, the network agent (overlays, see `swarm_worker::netagent`) and the
//! service DNS server (`swarm-dns`) that containers reach through their gateway. While its role is manager it also runs Raft and the manager part.
//! The role can change at run time (`docker node promote/demote`): the agent's heartbeat
//! answer carries the role the cluster wants, and [`Daemon::change_role`] renews the
//! certificate and starts or stops the manager part to match.
//!
//! A manager whose Raft data key is wrapped (autolock) starts locked: it serves only what
//! `docker swarm unlock` needs ([`crate::api::unlock`]) until it is given the unlock key,
//! then opens Raft with it and starts everything else. While the manager part runs it
//! keeps its key file wrapped as the committed state says (`follow_autolock`).
//!
//! Shutdown order: stop taking requests, stop the agents and the DNS server (containers and
//! overlays keep running, as with a dockerd restart in Swarm), stop the leader loop, then
//! shut Raft down. Leaving the swarm also removes the task containers and the overlays.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use swarm_pki::{ClientIdentityHandle, Identity, NodeKey, RenewalPlan, TlsAcceptorHandle};
use swarm_raft::{ClusterRaft, KeyFileState, UnlockKey};
use swarm_state::proto::{JoinResponse, RenewRequest, PREFIX};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::unlock::{self, Lock};
use crate::api::{self, NodeContext};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{DaemonConfig, NodeFile};
use crate::manager::{leader, Manager};
use crate::setup::raft_options;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("this node is not part of a swarm (no {0}): run `swarm-node init` or `swarm-node join` first")]
    NotInSwarm(PathBuf),
    #[error("cannot read the node's state in {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Pki(#[from] swarm_pki::PkiError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("docker engine: {0}")]
    Docker(String),
    #[error("{0}")]
    Net(#[from] swarm_net::NetError),
}

/// The node's WireGuard private key in its state directory (0600), made at its first
/// start; a node that leaves the swarm forgets it.
pub const TUNNEL_KEY_FILE: &str = "tunnel.key";

/// Where the node's service DNS server listens unless told otherwise. Containers never
/// use it directly: DNS they send to a gateway is redirected here by the data plane.
pub const DEFAULT_DNS_PORT: u16 = 7953;
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where names outside the swarm's networks are forwarded (`--dns-upstream`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DnsUpstream {
    /// The name servers of /etc/resolv.conf, read at start.
    #[default]
    ResolvConf,
    /// Nowhere: such names are refused at once (an isolated lab).
    None,
    Servers(Vec<SocketAddr>),
}

impl std::str::FromStr for DnsUpstream {
    type Err = String;

    /// `none`, `resolv.conf`, or a comma-separated list of `IP[:PORT]` (port 53 if unset).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" => return Ok(DnsUpstream::None),
            "resolv.conf" | "" => return Ok(DnsUpstream::ResolvConf),
            _ => {}
        }
        s.split(',')
            .map(|item| {
                let item = item.trim();
                item.parse::<SocketAddr>()
                    .or_else(|_| {
                        item.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        format!(
                            "invalid DNS upstream {item:?}: use none, resolv.conf or IP[:PORT],..."
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(DnsUpstream::Servers)
    }
}

impl DnsUpstream {
    fn upstreams(&self) -> swarm_dns::Upstreams {
        match self {
            DnsUpstream::None => swarm_dns::Upstreams::none(),
            DnsUpstream::Servers(servers) => swarm_dns::Upstreams {
                servers: servers.clone(),
                ..swarm_dns::Upstreams::none()
            },
            DnsUpstream::ResolvConf => match std::fs::read_to_string(RESOLV_CONF) {
                Ok(text) => swarm_dns::Upstreams::from_resolv_conf(&text),
                Err(e) => {
                    tracing::warn!(path = RESOLV_CONF, error = %e, "no upstream name servers: names outside the swarm will be refused");
                    swarm_dns::Upstreams::none()
                }
            },
        }
    }
}

/// The overlay network settings of `swarm-node run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// The DNS server's port on every address, UDP and TCP; 0 picks a free one.
    pub dns_port: u16,
    pub dns_upstream: DnsUpstream,
    /// The routing mesh masquerades forwarded connections (the client address is lost).
    pub mesh_snat: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            dns_port: DEFAULT_DNS_PORT,
            dns_upstream: DnsUpstream::ResolvConf,
            mesh_snat: false,
        }
    }
}

/// Binds the DNS server's UDP socket and TCP listener on the same port of every address.
async fn bind_dns(
    port: u16,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener, u16)> {
    let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    // With port 0 the UDP port is chosen first; TCP may find it taken: try a few.
    let attempts = if port == 0 { 5 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = tokio::net::UdpSocket::bind(any(port)).await?;
        let bound = udp.local_addr()?.port();
        match tokio::net::TcpListener::bind(any(bound)).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

/// The manager part while it runs.
struct ManagerPart {
    manager: Arc<Manager>,
    leader_loop: JoinHandle<()>,
    /// Keeps the key file's wrapping in line with the committed autolock setting.
    autolock: JoinHandle<()>,
}

struct Daemon {
    config: DaemonConfig,
    ctx: Arc<NodeContext>,
    tls: TlsAcceptorHandle,
    /// The certificate every client of this node presents (agent, peers, Raft).
    client_identity: ClientIdentityHandle,
    /// One renewal at a time: the schedule and role changes both renew.
    renewing: tokio::sync::Mutex<()>,
    /// Bumped after each renewal, so the schedule looks at the new certificate.
    renewed: watch::Sender<u64>,
    node: tokio::sync::Mutex<NodeFile>,
    clock: SharedClock,
    shutdown: watch::Receiver<bool>,
    manager_part: tokio::sync::Mutex<Option<ManagerPart>>,
}

/// Runs the node until `shutdown` completes, with the default network settings.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    run_with_network(config, NetworkOptions::default(), shutdown).await
}

/// Runs the node until `shutdown` completes.
pub async fn run_with_network(
    config: DaemonConfig,
    network: NetworkOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let shutdown = Box::pin(shutdown);
    // Like dockerd before `docker swarm init`: a node without a swarm waits for `init` or
    // `join` to write its state, so the service can be installed first.
    let mut shutdown = shutdown;
    let node = loop {
        let found = NodeFile::load(&config.state_dir).map_err(|source| DaemonError::State {
            path: config.state_dir.clone(),
            source,
        })?;
        if let Some(node) = found {
            // State written by older versions was world-readable: tighten it on every start.
            if let Err(e) = crate::config::secure_state_dir(&config.state_dir) {
                tracing::warn!(dir = %config.state_dir.display(), error = %e, "cannot make the state directory private");
            }
            break node;
        }
        tracing::info!(
            state = %NodeFile::path(&config.state_dir).display(),
            "not part of a swarm yet: waiting for `swarm-node init` or `swarm-node join`"
        );
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    let identity = Identity::load(&config.state_dir).await?;
    let tls = TlsAcceptorHandle::from_identity(&identity)?;
    let client_identity = ClientIdentityHandle::new(&identity)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (leave_tx, mut leave_rx) = watch::channel(false);
    let ctx = Arc::new(NodeContext {
        leave: leave_tx,
        node_id: node.node_id.clone(),
        cluster_id: node.cluster_id.clone(),
        advertise_addr: node.advertise_addr.clone(),
        hostname: crate::config::hostname(),
        ca_pem: identity.ca_pem.clone(),
        manager: RwLock::new(None),
        docker_socket: Some(config.docker_socket.clone()),
        known_managers: RwLock::default(),
    });
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        ctx: ctx.clone(),
        tls: tls.clone(),
        client_identity: client_identity.clone(),
        renewing: tokio::sync::Mutex::new(()),
        renewed: watch::channel(0).0,
        node: tokio::sync::Mutex::new(node.clone()),
        clock: Arc::new(SystemClock),
        shutdown: stop_rx.clone(),
        manager_part: tokio::sync::Mutex::new(None),
    });
    let raft_dir = raft_options(&config.state_dir, &node.node_id).dir;
    let locked = node.is_manager()
        && swarm_raft::key_file_state(&raft_dir).map_err(|source| DaemonError::State {
            path: raft_dir.clone(),
            source,
        })? == KeyFileState::Wrapped;
    let (lock, mut unlock_attempts) = Lock::new(raft_dir, locked);
    if node.is_manager() && !locked {
        daemon.start_manager(&identity, None).await?;
    }

    let router = unlock::gated(lock.clone(), ctx.clone(), api::router(ctx.clone()));
    let tcp = tokio::net::TcpListener::bind(&node.listen_addr)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: node.listen_addr.clone(),
            source,
        })?;
    let unix = bind_unix(&config.socket)?;
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tcp_server = tokio::spawn(swarm_pki::serve_tls(
        tcp,
        tls.clone(),
        router.clone(),
        stopped(stop_rx.clone()),
    ));
    let unix_server = tokio::spawn(swarm_pki::serve_unix(
        unix,
        router,
        stopped(stop_rx.clone()),
    ));
    if locked {
        tracing::warn!(
            node_id = %node.node_id,
            listen = %node.listen_addr,
            "this manager is locked (autolock): give it the unlock key with `docker swarm unlock`"
        );
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    let _ = tcp_server.await;
                    let _ = unix_server.await;
                    let _ = std::fs::remove_file(&config.socket);
                    return Ok(());
                }
                attempt = unlock_attempts.recv() => {
                    let Some((key, reply)) = attempt else { continue };
                    match daemon.start_manager(&identity, Some(key)).await {
                        Ok(()) => {
                            lock.lift();
                            let _ = reply.send(Ok(()));
                            tracing::info!("unlocked");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the manager after unlocking");
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        }
    }
    // Later unlock calls find the node unlocked.
    drop(unlock_attempts);
    tracing::info!(node_id = %node.node_id, listen = %node.listen_addr, role = %node.role, "swarm-node running");

    let runtime: Arc<dyn swarm_worker::runtime::ContainerRuntime> = Arc::new(
        swarm_worker::docker::DockerRuntime::connect(&config.docker_socket.to_string_lossy())
            .await
            .map_err(|e| DaemonError::Docker(e.to_string()))?,
    );
    // The node's WireGuard identity, made once and kept with its other keys: encrypted
    // overlay networks reach this node through it.
    let tunnel_key = Arc::new(
        swarm_net::tunnel::TunnelKey::load_or_create(&config.state_dir.join(TUNNEL_KEY_FILE))
            .await?,
    );
    let agent = swarm_worker::Agent::new(swarm_worker::AgentConfig {
        node_id: node.node_id.clone(),
        addr: node.advertise_addr.clone(),
        managers: node.managers.clone(),
        client: client_identity.http_client()?,
        scheme: config.scheme.clone(),
        runtime: runtime.clone(),
        tunnel_key: Some(tunnel_key.public_base64()),
    })
    .map_err(|e| DaemonError::Docker(e.to_string()))?;

    // Overlays: the data plane, the DNS server that follows the network map, and the
    // network agent that feeds both and tells the executor which tasks may start.
    let dataplane = Arc::new(swarm_net::Dataplane::new(Arc::new(
        swarm_net::SystemKernel::new().with_tunnel_key(tunnel_key),
    )));
    let dns_sockets = bind_dns(network.dns_port).await;
    let dns_port = match &dns_sockets {
        Ok((_, _, port)) => *port,
        Err(e) => {
            tracing::error!(port = network.dns_port, error = %e, "cannot listen for DNS: containers on overlay networks will not resolve service names");
            network.dns_port
        }
    };
    let netagent = swarm_worker::NetAgent::new(
        node.node_id.clone(),
        runtime.clone(),
        dataplane.clone(),
        dns_port,
    )
    .with_mesh_snat(network.mesh_snat);
    let dns_task = match dns_sockets {
        Ok((udp, tcp, port)) => {
            let server =
                swarm_dns::DnsServer::new(netagent.maps(), network.dns_upstream.upstreams());
            tracing::info!(port, "service DNS listening");
            let stop = stopped(stop_rx.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = server.serve(udp, tcp, stop).await {
                    tracing::error!(error = %e, "service DNS stopped");
                }
            }))
        }
        Err(_) => None,
    };
    let agent = agent
        .with_networks(netagent.ready())
        .with_node_hostname(ctx.hostname.clone())
        .with_task_files(Arc::new(swarm_worker::HostTaskFiles::beside_socket(
            &config.socket,
        )));
    let netagent_task = tokio::spawn(netagent.run(agent.netmap_source(), stopped(stop_rx.clone())));

    let mut heartbeats = agent.heartbeats();
    let mut removed = agent.removed();
    let agent_task = tokio::spawn(agent.run(stopped(stop_rx.clone())));

    let renewal_task = tokio::spawn(renewal_schedule(daemon.clone(), stop_rx.clone()));

    let role_daemon = daemon.clone();
    let mut role_stop = stop_rx.clone();
    let role_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = heartbeats.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = role_stop.wait_for(|s| *s) => return,
            }
            let answer = heartbeats.borrow_and_update().clone();
            if let Some(answer) = answer {
                *role_daemon
                    .ctx
                    .known_managers
                    .write()
                    .expect("managers lock") = answer.manager_ids.iter().cloned().collect();
                role_daemon.remember_managers(&answer.managers).await;
                if let Err(e) = role_daemon.change_role(answer.desired_role).await {
                    tracing::warn!(error = %e, "role change failed; retrying at the next heartbeat");
                }
            }
        }
    });

    let leaving = tokio::select! {
        _ = shutdown => false,
        _ = leave_rx.wait_for(|l| *l) => true,
        // `docker node rm`: the node stops its tasks and forgets the swarm, as if it had
        // left, so it can join again (`swarmup create` does).
        _ = removed.wait_for(|r| *r) => {
            tracing::warn!("this node was removed from the swarm: leaving");
            true
        }
    };
    tracing::info!(leaving, "shutting down");
    let _ = stop_tx.send(true);
    let _ = agent_task.await;
    let _ = netagent_task.await;
    if let Some(dns) = dns_task {
        let _ = dns.await;
    }
    let _ = role_task.await;
    let _ = renewal_task.await;
    let _ = tcp_server.await;
    let _ = unix_server.await;
    daemon.stop_manager().await;
    let _ = std::fs::remove_file(&config.socket);
    if leaving {
        forget_swarm(&config, &node.node_id, runtime.as_ref(), &dataplane).await;
    }
    Ok(())
}

/// After `leave`: this node's task containers go, then its overlays, then its swarm state.
async fn forget_swarm(
    config: &DaemonConfig,
    node_id: &str,
    runtime: &dyn swarm_worker::runtime::ContainerRuntime,
    dataplane: &swarm_net::Dataplane,
) {
    match runtime.list(node_id).await {
        Ok(containers) => {
            for c in containers {
                let _ = runtime.stop(&c.id, Some(Duration::from_secs(10))).await;
                let _ = runtime.remove(&c.id).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list task containers to remove"),
    }
    // The containers are gone: so go their secret and config stores.
    use swarm_worker::TaskFiles as _;
    let stores = swarm_worker::HostTaskFiles::beside_socket(&config.socket);
    if let Err(e) = stores.sweep(&Default::default()).await {
        tracing::warn!(error = %e, "cannot remove the tasks' secret stores");
    }
    swarm_worker::netagent::forget(runtime, dataplane, node_id).await;
    crate::config::forget_state(&config.state_dir).await;
    tracing::info!("left the swarm");
}

fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let listen_error = |source| DaemonError::Listen {
        addr: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(listen_error)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(listen_error)?;
    // Root only, like /var/run/docker.sock: the socket grants full control.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_error)?;
    Ok(listener)
}

impl Daemon {
    /// Starts Raft and the manager part; `unlock` opens a data key that autolock wrapped.
    async fn start_manager(
        &self,
        identity: &Identity,
        unlock: Option<UnlockKey>,
    ) -> Result<(), DaemonError> {
        let mut part = self.manager_part.lock().await;
        if part.is_some() {
            return Ok(());
        }
        let node = self.node.lock().await.clone();
        // Raft talks to the other managers with the manager certificate, renewed in place.
        self.client_identity.replace(identity)?;
        let peers = self.client_identity.http_client()?;
        let on_disk = unlock.as_ref().map(UnlockKey::to_human);
        let raft = ClusterRaft::open(
            swarm_raft::RaftOptions {
                unlock_key: unlock,
                ..raft_options(&self.config.state_dir, &node.node_id)
            },
            peers.clone(),
        )
        .await
        .map_err(|e| DaemonError::Raft(e.to_string()))?;
        let autolock = tokio::spawn(follow_autolock(raft.clone(), on_disk));
        let heartbeat_ms = raft
            .read()
            .cluster
            .as_ref()
            .map(|c| c.heartbeat_period_ms)
            .unwrap_or(self.config.heartbeat_ms);
        let manager = Manager::new(
            node.node_id.clone(),
            node.advertise_addr.clone(),
            raft,
            crate::manager::NodeClients {
                peers,
                nodes: self.client_identity.any_node_http_client()?,
            },
            self.config.scheme.clone(),
            self.clock.clone(),
            heartbeat_ms,
        );
        let leader_loop = tokio::spawn(leader::run(manager.clone(), self.shutdown.clone()));
        *self.ctx.manager.write().expect("manager lock") = Some(manager.clone());
        *part = Some(ManagerPart {
            manager,
            leader_loop,
            autolock,
        });
        Ok(())
    }

    async fn stop_manager(&self) {
        let Some(part) = self.manager_part.lock().await.take() else {
            return;
        };
        *self.ctx.manager.write().expect("manager lock") = None;
        part.leader_loop.abort();
        let _ = part.leader_loop.await;
        part.autolock.abort();
        let _ = part.autolock.await;
        if let Err(e) = part.manager.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    async fn remember_managers(&self, managers: &[String]) {
        let mut node = self.node.lock().await;
        if !managers.is_empty() && node.managers != managers {
            node.managers = managers.to_vec();
            if let Err(e) = node.save(&self.config.state_dir) {
                tracing::warn!(error = %e, "cannot record the managers");
            }
        }
    }

    /// Brings the node to the role the cluster wants: a new certificate first (so peers
    /// see the new role), then the manager part started or stopped.
    async fn change_role(&self, desired: swarm_contract::Role) -> Result<(), DaemonError> {
        let current = self.node.lock().await.role;
        if current == desired {
            return Ok(());
        }
        tracing::info!(from = %current, to = %desired, "role change");
        let identity = self.renew_certificate().await?;
        if desired == swarm_contract::Role::Manager {
            self.start_manager(&identity, None).await?;
        } else {
            self.stop_manager().await;
            // A demoted node must not come back with an old Raft log.
            let _ = tokio::fs::remove_dir_all(self.config.state_dir.join("raft")).await;
        }
        let mut node = self.node.lock().await;
        node.role = desired;
        node.save(&self.config.state_dir)
            .map_err(|source| DaemonError::State {
                path: self.config.state_dir.clone(),
                source,
            })?;
        Ok(())
    }

    /// Asks a manager for a fresh certificate with a new key, then serves and presents it
    /// at once (open connections keep the old one until they close).
    async fn renew_certificate(&self) -> Result<Identity, DaemonError> {
        let _one_at_a_time = self.renewing.lock().await;
        let client = self.client_identity.http_client()?;
        let key = NodeKey::generate()?;
        let managers = self.node.lock().await.managers.clone();
        // The CA repeats the extra addresses it granted at join time; asking again for
        // them is not needed.
        let request = RenewRequest {
            csr_pem: key.csr_pem()?,
            cert_sans: Vec::new(),
        };
        let mut last_error = String::from("no manager known");
        for manager in managers {
            let url = format!("{}://{manager}{PREFIX}/renew", self.config.scheme);
            let answer = client
                .post(url)
                .json(&request)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => {
                    let renewed: JoinResponse = r
                        .json()
                        .await
                        .map_err(|e| DaemonError::Raft(format!("renewal answer: {e}")))?;
                    let identity = Identity {
                        cert_pem: renewed.cert_pem,
                        key_pem: key.key_pem.clone(),
                        ca_pem: renewed.ca_pem,
                    };
                    identity.verify()?;
                    identity.save(&self.config.state_dir).await?;
                    self.tls.replace_identity(&identity)?;
                    self.client_identity.replace(&identity)?;
                    self.renewed.send_modify(|n| *n += 1);
                    if let Ok((_, not_after)) = identity.validity() {
                        tracing::info!(
                            not_after = %crate::clock::rfc3339(time::OffsetDateTime::from(not_after)),
                            "node certificate renewed"
                        );
                    }
                    return Ok(identity);
                }
                Ok(r) => last_error = format!("{manager} answered {}", r.status()),
                Err(e) => last_error = format!("{manager}: {e}"),
            }
        }
        Err(DaemonError::Raft(format!(
            "cannot renew the node certificate: {last_error}"
        )))
    }
}

/// Keeps this manager's Raft key file wrapped by the committed unlock key while autolock
/// is on, and in clear while it is off. `on_disk` is the unlock key the file is wrapped
/// with now (`None`: in clear). A failed rewrite is retried.
async fn follow_autolock(raft: ClusterRaft, mut on_disk: Option<String>) {
    const RETRY: Duration = Duration::from_secs(5);
    let mut states = raft.subscribe();
    loop {
        let wanted = unlock::wanted_wrapping(&states.borrow_and_update());
        let mut failed = false;
        if wanted != on_disk {
            let key = match wanted.as_deref().map(UnlockKey::parse).transpose() {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::error!(error = %e, "the committed unlock key is unreadable: the raft data key stays as it is");
                    None
                }
            };
            if let Some(key) = key {
                match raft.wrap_data_key(key).await {
                    Ok(()) => {
                        tracing::info!(
                            wrapped = wanted.is_some(),
                            "raft data key rewritten for autolock"
                        );
                        on_disk = wanted;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot rewrite the raft data key for autolock; retrying");
                        failed = true;
                    }
                }
            }
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY), if failed => {}
        }
    }
}

/// Renews the node certificate at a random point of its renewal window (see
/// [`swarm_pki::renewal_plan`]), at once if that point has passed, and again after each
/// renewal. Failures are retried with a growing delay, never past expiry.
async fn renewal_schedule(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut renewed = daemon.renewed.subscribe();
    let mut failures: u32 = 0;
    loop {
        renewed.borrow_and_update();
        let identity = match Identity::load(&daemon.config.state_dir).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the node certificate to schedule its renewal");
                return;
            }
        };
        let Ok((not_before, not_after)) = identity.validity() else {
            return;
        };
        let now = std::time::SystemTime::from(daemon.clock.now());
        let wait = match swarm_pki::renewal_plan(not_before, not_after, now, rand::random()) {
            RenewalPlan::Expired => {
                tracing::error!(
                    expired = %crate::clock::rfc3339(time::OffsetDateTime::from(not_after)),
                    "the node certificate has expired: managers refuse it, so it cannot be renewed; remove this node from the swarm (`swarm-node leave`, `docker node rm` on a manager) and join it again with a join token"
                );
                return;
            }
            RenewalPlan::Now if failures == 0 => None,
            RenewalPlan::Now => {
                // 1 s, 2 s, 4 s … up to a minute, but never beyond expiry.
                let backoff =
                    Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
                Some(backoff.min(not_after.duration_since(now).unwrap_or_default()))
            }
            RenewalPlan::At(at) => Some(at.duration_since(now).unwrap_or_default()),
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A role change renewed meanwhile: plan from the new certificate.
                _ = renewed.changed() => { failures = 0; continue; }
                _ = stop.wait_for(|s| *s) => return,
            }
            if let RenewalPlan::At(_) = swarm_pki::renewal_plan(
                not_before,
                not_after,
                std::time::SystemTime::from(daemon.clock.now()),
                0.0,
            ) {
                // Woken early (clock change): look again.
                continue;
            }
        }
        tokio::select! {
            result = daemon.renew_certificate() => match result {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "certificate renewal failed; retrying");
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_upstreams_parse() {
        assert_eq!("none".parse::<DnsUpstream>(), Ok(DnsUpstream::None));
        assert_eq!(
            "resolv.conf".parse::<DnsUpstream>(),
            Ok(DnsUpstream::ResolvConf)
        );
        assert_eq!(
            "127.0.0.1, 127.0.0.2:5353".parse::<DnsUpstream>(),
            Ok(DnsUpstream::Servers(vec![
                "127.0.0.1:53".parse().unwrap(),
                "127.0.0.2:5353".parse().unwrap()
            ]))
        );
        assert!("nowhere".parse::<DnsUpstream>().is_err());
        let explicit = DnsUpstream::Servers(vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(explicit.upstreams().servers.len(), 1);
        assert!(DnsUpstream::None.upstreams().servers.is_empty());
    }

    #[tokio::test]
    async fn dns_sockets_share_one_port() {
        let (udp, tcp, port) = bind_dns(0).await.unwrap();
        assert_ne!(port, 0);
        assert_eq!(udp.local_addr().unwrap().port(), port);
        assert_eq!(tcp.local_addr().unwrap().port(), port);
        // The port is taken now: a second bind of it fails (and the node runs without DNS).
        assert!(bind_dns(port).await.is_err());
    }
}
