//! The one-shot commands that make a node part of a swarm: `init` creates one, `join`
//! enters one. Both leave either a complete state directory or none: on failure, what
//! they wrote is removed again.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use swarm_pki::{Identity, JoinToken, NodeKey, RootCa, SignRequest};
use swarm_raft::{ClusterRaft, MemberNode, RaftOptions};
use swarm_state::models::{
    ManagerStatus, Node, NodeDescription, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum,
    NodeState, NodeStatus, Platform, Reachability, SwarmSpec, SwarmSpecCaConfig,
    SwarmSpecDispatcher, SwarmSpecEncryptionConfig, SwarmSpecOrchestration, SwarmSpecRaft,
};
use swarm_state::proto::{JoinRequest, JoinResponse, PREFIX};
use swarm_state::{ids, ClusterInfo, Command};

use crate::clock::{Clock, SystemClock};
use crate::config::{create_private_dir, secure_state_dir, with_default_port, NodeFile};

/// Docker's words, which scripts look for.
pub const ALREADY_IN_SWARM: &str = "this node is already part of a swarm";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{ALREADY_IN_SWARM}: use `swarm-node leave` first, or `swarm-node run` to start it")]
    AlreadyInSwarm,
    #[error("invalid address {0}: give IP or IP:PORT, for example 10.0.0.5 or 10.0.0.5:2377")]
    BadAddress(String),
    #[error("{0}")]
    Pki(#[from] swarm_pki::PkiError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot reach the manager at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the manager at {addr} refused to let this node join: {message}")]
    Refused { addr: String, message: String },
    #[error("{0}")]
    CertExpiry(String),
    #[error("{0}: set this machine's hostname to a valid one")]
    Hostname(String),
    #[error("{0}")]
    Network(#[from] crate::manager::networks::NetworkError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub state_dir: PathBuf,
    /// Extra IP addresses for the node's certificate.
    pub cert_sans: Vec<IpAddr>,
    pub advertise_addr: String,
    pub listen_addr: String,
    pub heartbeat_ms: u64,
    pub hostname: String,
    /// `--default-addr-pool`: where overlay subnets come from (empty: 10.0.0.0/8).
    pub default_addr_pool: Vec<String>,
    /// `--default-addr-pool-mask-length`: the size of each network's subnet.
    pub subnet_size: u8,
    /// `--data-path-port`: the VXLAN UDP port.
    pub data_path_port: u32,
    /// `--cert-expiry`: how long node certificates last (`CAConfig.NodeCertExpiry`),
    /// checked with [`check_cert_expiry`].
    pub cert_expiry: Duration,
    /// `--autolock`: managers need the unlock key after a restart.
    pub autolock: bool,
}

/// Docker's shortest node certificate lifetime.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(60 * 60);

/// Refuses a `--cert-expiry` below `minimum` ([`MIN_CERT_EXPIRY`] but in tests), in
/// Docker's words.
pub fn check_cert_expiry(expiry: Duration, minimum: Duration) -> Result<(), SetupError> {
    if expiry < minimum {
        return Err(SetupError::CertExpiry(format!(
            "minimum certificate expiry time is: {}",
            crate::config::format_go_duration(minimum)
        )));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct InitOutcome {
    pub node_id: String,
    pub worker_token: String,
    pub manager_token: String,
    pub advertise_addr: String,
    /// With `--autolock`: the key `docker swarm unlock` asks for.
    pub unlock_key: Option<String>,
}

fn ip_of(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>().map(|s| s.ip()).ok()
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SetupError + 'a {
    move |source| SetupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn ensure_not_joined(state_dir: &Path) -> Result<(), SetupError> {
    match NodeFile::load(state_dir) {
        Ok(Some(_)) => Err(SetupError::AlreadyInSwarm),
        Ok(None) => Ok(()),
        Err(e) => Err(SetupError::Io {
            what: "cannot read",
            path: NodeFile::path(state_dir),
            source: e,
        }),
    }
}

/// Removes what a failed `init` or `join` wrote, so the next try starts clean.
async fn clean_partial(state_dir: &Path) {
    let _ = tokio::fs::remove_dir_all(state_dir.join("raft")).await;
    let _ = tokio::fs::remove_dir_all(Identity::certificates_dir(state_dir)).await;
}

pub fn this_platform() -> Platform {
    Platform {
        architecture: Some(std::env::consts::ARCH.into()),
        os: Some(std::env::consts::OS.into()),
    }
}

pub async fn init(options: &InitOptions) -> Result<InitOutcome, SetupError> {
    // Bad flags are refused before anything is written.
    network_defaults_of(options)?;
    if options.cert_expiry.is_zero() {
        return Err(SetupError::CertExpiry(
            "the certificate expiry must be more than 0s".into(),
        ));
    }
    ensure_not_joined(&options.state_dir)?;
    clean_partial(&options.state_dir).await;
    match init_inner(options).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            clean_partial(&options.state_dir).await;
            Err(e)
        }
    }
}

fn network_defaults_of(
    options: &InitOptions,
) -> Result<swarm_state::network::NetworkDefaults, SetupError> {
    Ok(crate::manager::networks::network_defaults(
        &options.default_addr_pool,
        options.subnet_size,
        options.data_path_port,
    )?)
}

async fn init_inner(options: &InitOptions) -> Result<InitOutcome, SetupError> {
    let network_defaults = network_defaults_of(options)?;
    let advertise = with_default_port(&options.advertise_addr);
    let advertise_ip =
        ip_of(&advertise).ok_or_else(|| SetupError::BadAddress(options.advertise_addr.clone()))?;
    let clock = SystemClock;
    let now = clock.now_rfc3339();
    let cluster_id = ids::object_id(rand::random());
    let node_id = ids::object_id(rand::random());
    let ca = RootCa::generate(&cluster_id)?;
    let key = NodeKey::generate()?;
    // The first node's name goes into its certificate: it must be a valid host name.
    swarm_pki::check_hostname(&options.hostname).map_err(SetupError::Hostname)?;
    let cert_pem = ca.sign_node_for(
        &key.csr_pem()?,
        &SignRequest {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: swarm_pki::Role::Manager,
            ip_sans: std::iter::once(advertise_ip)
                .chain(options.cert_sans.iter().copied())
                .collect(),
            dns_sans: vec![options.hostname.clone()],
        },
        std::time::SystemTime::now(),
        options.cert_expiry,
    )?;
    let identity = Identity {
        cert_pem,
        key_pem: key.key_pem.clone(),
        ca_pem: ca.cert_pem().to_string(),
    };
    create_private_dir(&options.state_dir).map_err(io("cannot create", &options.state_dir))?;
    identity.save(&options.state_dir).await?;

    let worker_token = JoinToken::generate(&ca);
    let manager_token = JoinToken::generate(&ca);
    // The data key is wrapped by the daemon as soon as it runs (`daemon.rs`).
    let unlock_key = if options.autolock {
        Some(
            swarm_raft::UnlockKey::generate()
                .map_err(io("cannot generate an unlock key", &options.state_dir))?
                .to_human(),
        )
    } else {
        None
    };
    let info = ClusterInfo {
        id: cluster_id.clone(),
        created_at: now.clone(),
        updated_at: now.clone(),
        version: 0,
        spec: SwarmSpec {
            name: Some("default".into()),
            orchestration: Some(SwarmSpecOrchestration {
                task_history_retention_limit: Some(
                    crate::manager::orchestrator::TASK_HISTORY_LIMIT as i64,
                ),
            }),
            // In ticks of the 200 ms Raft heartbeat: elections after 4 to 8 silent ticks.
            raft: Some(SwarmSpecRaft {
                snapshot_interval: Some(10_000),
                keep_old_snapshots: Some(0),
                log_entries_for_slow_followers: Some(500),
                election_tick: Some(4),
                heartbeat_tick: Some(1),
            }),
            dispatcher: Some(SwarmSpecDispatcher {
                heartbeat_period: Some((options.heartbeat_ms * 1_000_000) as i64),
            }),
            ca_config: Some(SwarmSpecCaConfig {
                node_cert_expiry: Some(
                    i64::try_from(options.cert_expiry.as_nanos()).unwrap_or(i64::MAX),
                ),
                ..Default::default()
            }),
            encryption_config: Some(SwarmSpecEncryptionConfig {
                auto_lock_managers: Some(options.autolock),
            }),
            ..Default::default()
        },
        root_ca_cert_pem: ca.cert_pem().to_string(),
        root_ca_key_pem: ca.key_pem().to_string(),
        worker_token: worker_token.clone(),
        manager_token: manager_token.clone(),
        heartbeat_period_ms: options.heartbeat_ms,
        network: network_defaults.clone(),
        cert_sans: options.cert_sans.iter().map(|ip| ip.to_string()).collect(),
        unlock_key: unlock_key.clone().unwrap_or_default(),
    };
    // The swarm has its ingress network from the start, as Docker's.
    let ingress = crate::manager::networks::ingress_network(
        &Default::default(),
        &network_defaults,
        &ids::object_id(rand::random()),
        &now,
    )?;
    let first_node = Node {
        id: Some(node_id.clone()),
        created_at: Some(now.clone()),
        updated_at: Some(now),
        spec: Some(NodeSpec {
            role: Some(NodeSpecRoleEnum::MANAGER),
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: Some(options.hostname.clone()),
            platform: Some(this_platform()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::UNKNOWN),
            message: None,
            addr: Some(advertise_ip.to_string()),
        }),
        manager_status: Some(ManagerStatus {
            leader: Some(true),
            reachability: Some(Reachability::REACHABLE),
            addr: Some(advertise.clone()),
        }),
        ..Default::default()
    };

    let raft = ClusterRaft::open(
        raft_options(&options.state_dir, &node_id),
        swarm_pki::http_client(&identity)?,
    )
    .await
    .map_err(|e| SetupError::Raft(e.to_string()))?;
    let result = async {
        raft.initialize(MemberNode {
            node_id: node_id.clone(),
            addr: advertise.clone(),
        })
        .await
        .map_err(|e| SetupError::Raft(e.to_string()))?;
        // A single voter elects itself at once; wait for that before writing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !raft.is_leader() {
            if tokio::time::Instant::now() > deadline {
                return Err(SetupError::Raft("no leader elected within 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for command in [
            Command::InitCluster {
                info: Box::new(info),
                first_node: Box::new(first_node),
            },
            Command::CreateNetwork {
                network: Box::new(ingress),
            },
        ] {
            raft.propose(command)
                .await
                .map_err(|e| SetupError::Raft(e.to_string()))?
                .into_result()
                .map_err(|e| SetupError::Raft(e.to_string()))?;
        }
        Ok(())
    }
    .await;
    let _ = raft.shutdown().await;
    result?;

    NodeFile {
        node_id: node_id.clone(),
        cluster_id,
        role: swarm_contract::Role::Manager,
        advertise_addr: advertise.clone(),
        listen_addr: with_default_port(&options.listen_addr),
        managers: vec![advertise.clone()],
        cert_sans: options.cert_sans.iter().map(|ip| ip.to_string()).collect(),
    }
    .save(&options.state_dir)
    .map_err(io("cannot write", &options.state_dir))?;
    // The state directory may have existed before, made by an installer with 0755.
    secure_state_dir(&options.state_dir).map_err(io("cannot secure", &options.state_dir))?;
    Ok(InitOutcome {
        node_id,
        worker_token,
        manager_token,
        advertise_addr: advertise,
        unlock_key,
    })
}

/// Raft settings for a node's state directory.
pub fn raft_options(state_dir: &Path, node_id: &str) -> RaftOptions {
    RaftOptions::new(ids::raft_id(node_id), state_dir.join("raft"))
}

#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub state_dir: PathBuf,
    /// Extra IP addresses for the node's certificate.
    pub cert_sans: Vec<IpAddr>,
    pub token: String,
    pub manager_addr: String,
    /// When absent, the local address that routes to the manager.
    pub advertise_addr: Option<String>,
    pub listen_addr: String,
    pub availability: Option<String>,
    pub hostname: String,
}

/// The local address this host uses to reach `remote` (no packet is sent).
fn local_addr_towards(remote: &str) -> Option<IpAddr> {
    let remote: SocketAddr = remote.parse().ok()?;
    let bind = if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(remote).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

pub async fn join(options: &JoinOptions) -> Result<JoinResponse, SetupError> {
    ensure_not_joined(&options.state_dir)?;
    clean_partial(&options.state_dir).await;
    match join_inner(options).await {
        Ok(r) => Ok(r),
        Err(e) => {
            clean_partial(&options.state_dir).await;
            Err(e)
        }
    }
}

async fn join_inner(options: &JoinOptions) -> Result<JoinResponse, SetupError> {
    let manager = with_default_port(&options.manager_addr);
    let parsed = JoinToken::parse(&options.token)?;
    let listen = with_default_port(&options.listen_addr);
    let advertise = match &options.advertise_addr {
        Some(a) => with_default_port(a),
        None => {
            let ip = local_addr_towards(&manager)
                .ok_or_else(|| SetupError::BadAddress(options.manager_addr.clone()))?;
            let port = listen
                .parse::<SocketAddr>()
                .map(|a| a.port())
                .unwrap_or(crate::config::DEFAULT_PORT);
            SocketAddr::new(ip, port).to_string()
        }
    };
    ip_of(&advertise).ok_or_else(|| SetupError::BadAddress(advertise.clone()))?;
    let ca_pem = swarm_pki::fetch_ca_pinned(&manager, &parsed).await?;
    let key = NodeKey::generate()?;
    let client = swarm_pki::bootstrap_client(&ca_pem)?;
    let request = JoinRequest {
        token: options.token.clone(),
        csr_pem: key.csr_pem()?,
        hostname: options.hostname.clone(),
        advertise_addr: advertise.clone(),
        description: NodeDescription {
            hostname: Some(options.hostname.clone()),
            platform: Some(this_platform()),
            ..Default::default()
        },
        availability: options.availability.clone(),
        cert_sans: options.cert_sans.iter().map(|ip| ip.to_string()).collect(),
    };
    let response = client
        .post(format!("https://{manager}{PREFIX}/join"))
        .json(&request)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| SetupError::Unreachable {
            addr: manager.clone(),
            reason: e.to_string(),
        })?;
    if !response.status().is_success() {
        let message = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| "no reason given".into());
        return Err(SetupError::Refused {
            addr: manager,
            message,
        });
    }
    let joined: JoinResponse = response.json().await.map_err(|e| SetupError::Unreachable {
        addr: manager.clone(),
        reason: e.to_string(),
    })?;
    let identity = Identity {
        cert_pem: joined.cert_pem.clone(),
        key_pem: key.key_pem.clone(),
        ca_pem: joined.ca_pem.clone(),
    };
    create_private_dir(&options.state_dir).map_err(io("cannot create", &options.state_dir))?;
    identity.save(&options.state_dir).await?;
    NodeFile {
        node_id: joined.node_id.clone(),
        cluster_id: joined.cluster_id.clone(),
        role: joined.role,
        advertise_addr: advertise,
        listen_addr: listen,
        managers: if joined.managers.is_empty() {
            vec![manager]
        } else {
            joined.managers.clone()
        },
        cert_sans: options.cert_sans.iter().map(|ip| ip.to_string()).collect(),
    }
    .save(&options.state_dir)
    .map_err(io("cannot write", &options.state_dir))?;
    secure_state_dir(&options.state_dir).map_err(io("cannot secure", &options.state_dir))?;
    Ok(joined)
}
