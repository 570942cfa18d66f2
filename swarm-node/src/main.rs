//! `swarm-node`: the node daemon of a swarmup cluster, with Docker's verbs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use swarm_contract::{Exit, Membership, NodeList, Status};
use swarm_node::config::{
    DaemonConfig, NodeFile, DEFAULT_DOCKER_SOCKET, DEFAULT_HEARTBEAT_MS, DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
};
use swarm_node::local;
use swarm_node::setup::{self, InitOptions, JoinOptions};

/// jemalloc rather than glibc's malloc: with a thread per core and more on blocking
/// pools, glibc kept up to a third of a large manager's RSS in free but unreturned
/// arena memory (see docs/performance.md, fourth round).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "swarm-node",
    version,
    about = "The node daemon of a swarmup cluster",
    after_help = "Exit codes: 0 done; 1 failure; 2 bad usage; 3 already part of a swarm (init, join); 4 not part of a swarm; 5 the running daemon does not answer."
)]
struct Cli {
    /// Where the node keeps its state.
    #[arg(long, global = true, env = "SWARM_NODE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The local API socket (the Docker API for this node's swarm).
    #[arg(long, global = true, env = "SWARM_NODE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new swarm with this node as its first manager.
    Init {
        /// The address other nodes reach this node on (IP or IP:PORT).
        #[arg(long)]
        advertise_addr: String,
        /// The address the control port listens on.
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// Another IP address this node's certificate names (a public address); repeatable.
        #[arg(long = "cert-san")]
        cert_sans: Vec<std::net::IpAddr>,
        /// How often nodes report (Docker's default: 5s).
        #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
        dispatcher_heartbeat: u64,
        /// Where overlay network subnets come from (CIDR; repeatable; default 10.0.0.0/8).
        #[arg(long = "default-addr-pool")]
        default_addr_pool: Vec<String>,
        /// The prefix length of each overlay network's subnet taken from the pool.
        #[arg(long, default_value_t = 24)]
        default_addr_pool_mask_length: u8,
        /// The UDP port of overlay (VXLAN) traffic between nodes (1024-49151).
        #[arg(long, default_value_t = 4789)]
        data_path_port: u32,
        /// Validity period for node certificates (ns|us|ms|s|m|h).
        #[arg(long, default_value = "2160h0m0s", value_parser = swarm_node::config::parse_go_duration)]
        cert_expiry: std::time::Duration,
        /// Enable manager autolocking (requiring an unlock key to start a stopped manager).
        #[arg(long)]
        autolock: bool,
    },
    /// Join a swarm as a worker or a manager, depending on the token.
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long, default_value = "0.0.0.0:2377")]
        listen_addr: String,
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Another IP address this node's certificate names (a public address); repeatable.
        #[arg(long = "cert-san")]
        cert_sans: Vec<std::net::IpAddr>,
        /// A manager's address (IP or IP:PORT).
        manager: String,
    },
    /// Run the node with the state already on disk.
    Run {
        /// The Docker Engine socket that runs this node's tasks.
        #[arg(long, env = "SWARM_NODE_DOCKER_SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
        docker_socket: PathBuf,
        /// The port of the node's service DNS server (UDP and TCP, every address); 0
        /// picks a free one. If it cannot be bound the node runs without service DNS.
        #[arg(long, env = "SWARM_NODE_DNS_PORT", default_value_t = swarm_node::daemon::DEFAULT_DNS_PORT)]
        dns_port: u16,
        /// Where names outside the swarm's networks go: `resolv.conf` (the host's name
        /// servers, the default), `none`, or a comma-separated list of IP[:PORT].
        #[arg(long, env = "SWARM_NODE_DNS_UPSTREAM", default_value = "resolv.conf")]
        dns_upstream: swarm_node::daemon::DnsUpstream,
        /// Masquerade connections the routing mesh forwards to another node behind this
        /// node's ingress address, as Docker does. Only for hosts whose routing cannot
        /// carry replies back through the node that received the connection: the tasks
        /// then see this node's address instead of the client's.
        #[arg(long, env = "SWARM_NODE_MESH_SNAT")]
        mesh_snat: bool,
    },
    /// Leave the swarm: the daemon stops its tasks and forgets the swarm.
    Leave {
        /// Leave even as a manager, without keeping quorum.
        #[arg(long, short)]
        force: bool,
    },
    /// Print (or rotate) the join token of a role.
    JoinToken {
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(long, short)]
        quiet: bool,
        /// worker or manager.
        role: String,
    },
    /// Print what this node is.
    Status {
        /// Print it as the versioned JSON programs read (`swarm_contract::Status`).
        #[arg(long)]
        json: bool,
    },
    /// List the swarm's nodes (on a manager).
    Nodes {
        /// Print them as the versioned JSON programs read (`swarm_contract::NodeList`).
        #[arg(long)]
        json: bool,
    },
    /// Issue a client certificate for the docker CLI (on a manager), as JSON.
    ClientCert {
        #[arg(long, default_value = "swarmup-admin")]
        name: String,
    },
}

/// Set (to anything) in tests only: `init --cert-expiry` then accepts lifetimes down to 1s.
const SHORT_CERTS_ENV: &str = "SWARM_NODE_TEST_SHORT_CERT_EXPIRY";

fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let err =
        || format!("invalid duration {s:?}: use a number with a unit, for example 5s or 500ms");
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .ok_or_else(err)?;
    let value: f64 = number.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return Err(err()),
    };
    if ms < 100.0 {
        return Err(format!(
            "invalid duration {s:?}: the heartbeat must be at least 100ms"
        ));
    }
    Ok(ms as u64)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWARM_NODE_LOG").unwrap_or_else(|_| {
                "info,openraft=warn,hickory_server=warn,hickory_proto=warn".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // Every connection to the control port is a descriptor: allow as many as the hard
    // limit does, so a flood of connections meets the server's budgets, not EMFILE.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open files limit");
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(exit_of(&e).code())
        }
    }
}

/// The documented exit code of a failure (`swarm_contract::Exit`), from the error's kind,
/// never from its words.
fn exit_of(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if let Some(setup::SetupError::AlreadyInSwarm) = cause.downcast_ref() {
            return Exit::AlreadyInSwarm;
        }
        if cause.downcast_ref::<NotInSwarm>().is_some() {
            return Exit::NotInSwarm;
        }
        if let Some(local::LocalError::Unreachable { .. }) = cause.downcast_ref() {
            return Exit::DaemonDown;
        }
    }
    Exit::Failure
}

/// A command that needs a swarm, on a node that is not part of one.
#[derive(Debug, thiserror::Error)]
#[error("this node is not part of a swarm")]
struct NotInSwarm;

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            advertise_addr,
            listen_addr,
            cert_sans,
            dispatcher_heartbeat,
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            cert_expiry,
            autolock,
        } => {
            // Tests of renewal need certificates that last seconds; this variable, never
            // shown in --help, lifts Docker's one-hour minimum.
            let minimum = if std::env::var_os(SHORT_CERTS_ENV).is_some() {
                std::time::Duration::from_secs(1)
            } else {
                setup::MIN_CERT_EXPIRY
            };
            setup::check_cert_expiry(cert_expiry, minimum)?;
            let outcome = setup::init(&InitOptions {
                state_dir: cli.state_dir,
                cert_sans,
                advertise_addr,
                listen_addr,
                heartbeat_ms: dispatcher_heartbeat,
                hostname: swarm_node::config::hostname(),
                default_addr_pool,
                subnet_size: default_addr_pool_mask_length,
                data_path_port,
                cert_expiry,
                autolock,
            })
            .await?;
            println!(
                "Swarm initialized: current node ({}) is now a manager.\n\nTo add a worker to this swarm, run the following command:\n\n    swarm-node join --token {} {}\n\nTo add a manager to this swarm, run 'swarm-node join-token manager' and follow the instructions.\n",
                outcome.node_id, outcome.worker_token, outcome.advertise_addr
            );
            if let Some(key) = &outcome.unlock_key {
                // Docker's words, as `docker swarm init --autolock` prints them.
                println!("To unlock a swarm manager after it restarts, run the `docker swarm unlock`\ncommand and provide the following key:\n\n    {key}\n\nPlease remember to store this key in a password manager, since without it you\nwill not be able to restart the manager.\n");
            }
            println!("Start the node with 'swarm-node run'.");
            Ok(())
        }
        Command::Join {
            token,
            advertise_addr,
            listen_addr,
            availability,
            cert_sans,
            manager,
        } => {
            let joined = setup::join(&JoinOptions {
                state_dir: cli.state_dir,
                cert_sans,
                token,
                manager_addr: manager,
                advertise_addr,
                listen_addr,
                availability,
                hostname: swarm_node::config::hostname(),
            })
            .await?;
            println!("This node joined a swarm as a {}.", joined.role);
            Ok(())
        }
        Command::Run {
            docker_socket,
            dns_port,
            dns_upstream,
            mesh_snat,
        } => {
            let config = DaemonConfig {
                state_dir: cli.state_dir,
                socket: cli.socket,
                docker_socket,
                scheme: "https".into(),
                heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            };
            let network = swarm_node::daemon::NetworkOptions {
                dns_port,
                dns_upstream,
                mesh_snat,
            };
            swarm_node::daemon::run_with_network(config, network, shutdown_signal()).await?;
            Ok(())
        }
        Command::Leave { force } => {
            let node = NodeFile::load(&cli.state_dir)
                .with_context(|| format!("cannot read {}", cli.state_dir.display()))?;
            let Some(node) = node else {
                return Err(NotInSwarm.into());
            };
            if local::call(&cli.socket, "GET", "/_ping", None)
                .await
                .is_ok()
            {
                // The daemon stops, removes its task containers and forgets the swarm.
                local::call(
                    &cli.socket,
                    "POST",
                    &format!("/swarmup/v1/leave?force={force}"),
                    None,
                )
                .await?;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while NodeFile::path(&cli.state_dir).exists() {
                    if std::time::Instant::now() > deadline {
                        bail!("swarm-node did not finish leaving within 60 s: see its log");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            } else {
                if node.is_manager() && !force {
                    bail!("you are attempting to leave the swarm on a node that is participating as a manager: demote it first (docker node demote), or use --force to leave without keeping quorum");
                }
                swarm_node::config::forget_state(&cli.state_dir).await;
            }
            println!("Node left the swarm.");
            Ok(())
        }
        Command::JoinToken {
            rotate,
            quiet,
            role,
        } => {
            let key = match role.as_str() {
                "worker" => "Worker",
                "manager" => "Manager",
                other => bail!("unknown role {other}: use worker or manager"),
            };
            if rotate {
                let query = if key == "Worker" {
                    "rotateWorkerToken=true"
                } else {
                    "rotateManagerToken=true"
                };
                // As the docker CLI does: the spec it read, with the version it read.
                let current = local::get_json(&cli.socket, "/swarm").await?;
                let version = current["Version"]["Index"].as_u64().unwrap_or_default();
                local::call(
                    &cli.socket,
                    "POST",
                    &format!("/swarm/update?version={version}&{query}"),
                    Some(current["Spec"].clone()),
                )
                .await?;
            }
            let swarm = local::get_json(&cli.socket, "/swarm").await?;
            let token = swarm["JoinTokens"][key].as_str().unwrap_or_default();
            if quiet {
                println!("{token}");
            } else {
                let node = NodeFile::load(&cli.state_dir)?
                    .map(|n| n.advertise_addr)
                    .unwrap_or_default();
                println!("To add a {role} to this swarm, run the following command:\n\n    swarm-node join --token {token} {node}\n");
            }
            Ok(())
        }
        Command::Status { json } => {
            let status = node_status(&cli.socket, &cli.state_dir).await?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else if let Some(m) = &status.swarm {
                println!(
                    "Node ID: {}\nRole: {}\nCluster ID: {}\nState: {}\nManagers: {}",
                    m.node_id,
                    m.role,
                    m.cluster_id,
                    m.state.map_or("unknown (ask a manager)", |s| s.as_str()),
                    m.managers.join(", ")
                );
            } else {
                println!("This node is not part of a swarm.");
            }
            Ok(())
        }
        Command::Nodes { json } => {
            let raw = local::get_json(&cli.socket, "/nodes").await?;
            let list = NodeList {
                version: swarm_contract::VERSION,
                nodes: nodes::entries(&raw)?,
            };
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for n in &list.nodes {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        n.id,
                        n.hostname,
                        n.state.as_str(),
                        n.availability.as_str(),
                        n.manager_status.map_or("", |m| m.as_str())
                    );
                }
            }
            Ok(())
        }
        Command::ClientCert { name } => {
            let bytes = local::call(
                &cli.socket,
                "POST",
                &format!("/swarmup/v1/client-cert?name={name}"),
                None,
            )
            .await?;
            println!("{}", String::from_utf8_lossy(&bytes));
            Ok(())
        }
    }
}

/// What this node is: its identity from the state directory, its current role and state
/// from the running daemon. Not in a swarm is an answer (`swarm: None`), not an error.
async fn node_status(
    socket: &std::path::Path,
    state_dir: &std::path::Path,
) -> anyhow::Result<Status> {
    let info = local::get_json(socket, "/info").await?;
    let node = NodeFile::load(state_dir)?;
    let swarm = &info["Swarm"];
    let node_id = swarm["NodeID"].as_str().unwrap_or_default().to_string();
    let (Some(node), false) = (node, node_id.is_empty()) else {
        return Ok(Status {
            version: swarm_contract::VERSION,
            swarm: None,
        });
    };
    let manager = swarm["ControlAvailable"].as_bool().unwrap_or(false);
    let state = if manager {
        local::get_json(socket, &format!("/nodes/{node_id}"))
            .await
            .ok()
            .and_then(|n| nodes::state_of(n["Status"]["State"].as_str()?))
    } else {
        None
    };
    Ok(Status {
        version: swarm_contract::VERSION,
        swarm: Some(Membership {
            node_id,
            cluster_id: node.cluster_id,
            role: if manager {
                swarm_contract::Role::Manager
            } else {
                swarm_contract::Role::Worker
            },
            state,
            managers: node.managers,
        }),
    })
}

/// Docker's node objects as the contract's entries, and the words back for the table.
mod nodes {
    use swarm_contract::{Availability, ManagerStatus, NodeEntry, NodeState, Role};

    pub fn state_of(word: &str) -> Option<NodeState> {
        Some(match word {
            "ready" => NodeState::Ready,
            "down" => NodeState::Down,
            "unknown" => NodeState::Unknown,
            "disconnected" => NodeState::Disconnected,
            _ => return None,
        })
    }

    /// Every node of a `/nodes` answer; a word outside Docker's is an error naming it.
    pub fn entries(raw: &serde_json::Value) -> anyhow::Result<Vec<NodeEntry>> {
        let bad = |what: &str, n: &serde_json::Value| {
            anyhow::anyhow!("node {} has an unknown {what}", n["ID"])
        };
        let mut out = Vec::new();
        for n in raw.as_array().into_iter().flatten() {
            let role = match n["Spec"]["Role"].as_str() {
                Some("manager") => Role::Manager,
                Some("worker") => Role::Worker,
                _ => return Err(bad("role", n)),
            };
            let state = n["Status"]["State"]
                .as_str()
                .and_then(state_of)
                .ok_or_else(|| bad("state", n))?;
            let availability = match n["Spec"]["Availability"].as_str() {
                Some("active") => Availability::Active,
                Some("pause") => Availability::Pause,
                Some("drain") => Availability::Drain,
                _ => return Err(bad("availability", n)),
            };
            let manager_status = if n["ManagerStatus"]["Leader"].as_bool() == Some(true) {
                Some(ManagerStatus::Leader)
            } else {
                match n["ManagerStatus"]["Reachability"].as_str() {
                    Some("reachable") => Some(ManagerStatus::Reachable),
                    Some("unreachable") => Some(ManagerStatus::Unreachable),
                    _ => None,
                }
            };
            out.push(NodeEntry {
                id: n["ID"].as_str().unwrap_or_default().to_string(),
                hostname: n["Description"]["Hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                role,
                state,
                availability,
                manager_status,
            });
        }
        Ok(out)
    }
}
