//! `swarmup`: one command from "I want a 3-node swarm" to a working cluster.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod api;
mod client_cert;
mod commands;
mod create;
mod digitalocean;
mod env;
mod firewall;
mod output;
mod providers;
mod publish;
mod records;
mod workshop;

#[derive(Debug, Parser)]
#[command(
    name = "swarmup",
    version,
    about = "Create Docker-Swarm-compatible clusters: a lab on this host, DigitalOcean droplets, or your own machines",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Only IDs from listings (as docker's -q), only the name from create, nothing but
    /// errors from the rest.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a cluster, or converge an existing one (add missing nodes, repair).
    Create(CreateArgs),
    /// List clusters.
    Ls,
    /// Destroy a cluster and everything it made.
    Destroy {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Open a shell (or run a command) on a node: `swarmup ssh NAME NODE -- CMD`.
    Ssh {
        name: String,
        node: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the environment that points the docker CLI at a cluster: `eval $(swarmup env NAME)`.
    Env { name: Option<String> },
    /// Power nodes off (failure drills).
    Stop { name: String, nodes: Vec<String> },
    /// Power nodes back on.
    Start { name: String, nodes: Vec<String> },
    /// Nodes of a cluster.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Services of a cluster.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// The provider's cloud firewall and the services' published ports.
    Firewall {
        #[command(subcommand)]
        command: FirewallCommand,
    },
    /// Images for clusters without a registry.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Workshops: a swarm per student, handout cards, teardown by tag and expiry.
    Workshop {
        #[command(subcommand)]
        command: workshop::WorkshopCommand,
    },
    /// Print a shell completion script: `swarmup completion bash > /etc/bash_completion.d/swarmup`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `swarmup man | man -l -`.
    Man,
    /// The init of a lab node (started by the lab provider, not by people).
    #[command(hide = true, name = "lab-node")]
    LabNode {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What `swarmup --help` says about exit codes; `main` keeps to it.
const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the command failed (the message says what was wrong and what to do)
  2  the command line is wrong (unknown flag, missing argument)
  N  `swarmup ssh NAME NODE -- CMD` exits with CMD's own code (255: ssh could not connect)";

#[derive(Debug, Args)]
pub struct ClusterSel {
    /// The cluster (default: SWARMUP_CLUSTER, or the only one).
    #[arg(long, env = "SWARMUP_CLUSTER")]
    cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The cluster's name; machines are NAME-node1, NAME-node2, … [default: swarm]
    // No clap default: a cluster file's name must not lose to a default (create::merge).
    #[arg(long)]
    name: Option<String>,
    /// Where the machines come from: lab (this host), digitalocean, virtualbox, or ssh
    /// (machines you already have, given with --host). [default: lab]
    #[arg(long)]
    provider: Option<String>,
    /// How many nodes.
    #[arg(long)]
    nodes: Option<u32>,
    /// How many of them are managers (odd, at most 7; default 1 below 3 nodes, else 3).
    #[arg(long)]
    managers: Option<u32>,
    /// A cluster file (YAML) with the same settings.
    #[arg(long, short = 'f')]
    file: Option<std::path::PathBuf>,
    /// DigitalOcean region.
    #[arg(long)]
    region: Option<String>,
    /// DigitalOcean droplet size.
    #[arg(long)]
    size: Option<String>,
    /// DigitalOcean image; VirtualBox: ubuntu-24.04 (default) or a local file
    /// (/path/to/ubuntu-24.04-server-cloudimg-amd64.ova), which works offline.
    #[arg(long)]
    image: Option<String>,
    /// VirtualBox: CPUs per VM. [default: 2]
    #[arg(long)]
    cpus: Option<u32>,
    /// VirtualBox: memory per VM in MB. [default: 2048]
    #[arg(long)]
    memory: Option<u32>,
    /// Reuse this SSH public key (DigitalOcean) instead of a per-cluster key; with
    /// --provider ssh, the private key to log in with (as ssh -i; default: ssh's own keys
    /// and agent).
    #[arg(long)]
    ssh_key: Option<std::path::PathBuf>,
    /// ssh provider: a machine you already have, [NAME=][USER@]HOST[:PORT] (repeatable;
    /// the first --managers are managers; USER defaults to root, NAME to the host's
    /// first label or its address with dashes).
    #[arg(long = "host", value_name = "[NAME=][USER@]HOST[:PORT]")]
    host: Vec<String>,
    /// ssh provider: where the hosts' keys are pinned. [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<std::path::PathBuf>,
    /// ssh provider: pin a host's key by fingerprint instead, HOST=SHA256:… (repeatable;
    /// HOST as in --host, or its NAME).
    #[arg(long, value_name = "HOST=SHA256:…")]
    host_key_fingerprint: Vec<String>,
    /// Who may reach SSH and the Docker API (CIDR, repeatable; default anywhere).
    #[arg(long)]
    ssh_from: Vec<String>,
    /// DigitalOcean API token (or DIGITALOCEAN_TOKEN / DIGITALOCEAN_ACCESS_TOKEN, or
    /// `digitalocean: {token: ...}` in ~/.config/swarmup/config.yaml).
    #[arg(long)]
    token: Option<String>,
    /// Show the plan and its cost, create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete what this run created if it fails.
    #[arg(long)]
    rollback_on_failure: bool,
    /// The swarm-node binary to install (default: the one next to swarmup).
    #[arg(long, env = "SWARMUP_SWARM_NODE_BINARY")]
    swarm_node_binary: Option<std::path::PathBuf>,
    /// Lab: run a registry for the cluster on its bridge (ADDRESS:5000), trusted by
    /// every node, for `docker push ADDRESS:5000/app:1` (needs Debian's docker-registry).
    #[arg(long)]
    registry: bool,
    /// Lab: drop everything the nodes send outside the cluster's own subnet.
    #[arg(long)]
    offline: bool,
    /// What serves the swarm: swarm-node, or docker (Docker Engine's own swarm mode, the
    /// docker CLI reaching it over SSH). [default: swarm-node, or the cluster's own]
    #[arg(long)]
    engine: Option<swarmup_bootstrap::docker_swarm::Engine>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes (like `docker node ls`).
    Ls {
        #[command(flatten)]
        sel: ClusterSel,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service (like `docker service create`).
    Create {
        #[command(flatten)]
        sel: ClusterSel,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 1)]
        replicas: i64,
        /// replicated or global.
        #[arg(long, default_value = "replicated")]
        mode: String,
        /// Environment variables (KEY=VALUE).
        #[arg(long, short)]
        env: Vec<String>,
        /// Placement constraints (node.role==worker, …).
        #[arg(long)]
        constraint: Vec<String>,
        /// Delay between restarts (e.g. 5s).
        #[arg(long)]
        restart_delay: Option<String>,
        /// Publish a port: [published:]target[/udp], or published=P,target=T,protocol=udp,mode=host.
        #[arg(long, short)]
        publish: Vec<String>,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List services (like `docker service ls`).
    Ls {
        #[command(flatten)]
        sel: ClusterSel,
    },
    /// Tasks of services (like `docker service ps`).
    Ps {
        #[command(flatten)]
        sel: ClusterSel,
        services: Vec<String>,
    },
    /// Remove services.
    Rm {
        #[command(flatten)]
        sel: ClusterSel,
        services: Vec<String>,
    },
    /// Scale services: `swarmup service scale web=5`.
    Scale {
        #[command(flatten)]
        sel: ClusterSel,
        scales: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Let exactly the services' published ports through the cloud firewall.
    Sync {
        name: String,
        /// Who may reach the published ports (CIDR, repeatable; default anywhere).
        /// Remembered for later syncs; `--publish-from 0.0.0.0/0 --publish-from ::/0`
        /// opens them to anywhere again.
        #[arg(long)]
        publish_from: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load a `docker save` archive into every node's engine.
    Load {
        name: String,
        /// The archive (default: standard input).
        #[arg(long, short)]
        input: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::LabNode { args } = cli.command {
        return providers::run_lab_node(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWARMUP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what was wrong and what to do.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = output::Output::new(cli.output, cli.quiet);
    match cli.command {
        Command::Create(args) => create::create(&out, args).await,
        Command::Ls => commands::ls(&out).await,
        Command::Destroy { name, yes } => commands::destroy(&out, &name, yes).await,
        Command::Ssh {
            name,
            node,
            command,
        } => commands::ssh(&name, &node, &command).await,
        Command::Env { name } => commands::env(&out, name.as_deref()).await,
        Command::Stop { name, nodes } => commands::power(&out, &name, &nodes, false).await,
        Command::Start { name, nodes } => commands::power(&out, &name, &nodes, true).await,
        Command::Node { command } => api::node(&out, command).await,
        Command::Service { command } => {
            // Creating or removing a service can change the published ports.
            let changes_ports = match &command {
                ServiceCommand::Create { sel, .. } | ServiceCommand::Rm { sel, .. } => {
                    Some(sel.cluster.clone())
                }
                _ => None,
            };
            api::service(&out, command).await?;
            match changes_ports {
                Some(cluster) => firewall::after_service_change(&out, cluster.as_deref()).await,
                None => Ok(()),
            }
        }
        Command::Firewall { command } => match command {
            FirewallCommand::Sync { name, publish_from } => {
                firewall::sync(&out, &name, publish_from).await
            }
        },
        Command::Image { command } => match command {
            ImageCommand::Load { name, input } => commands::image_load(&out, &name, input).await,
        },
        Command::Workshop { command } => workshop::run(&out, command).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "swarmup", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::LabNode { .. } => unreachable!("handled before the runtime starts"),
    }
}
