//! `fake-digitalocean --listen 127.0.0.1:PORT`: serves the fake API until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use fake_digitalocean::{DropletBackend, FakeDo, FakeOptions, MemoryBackend, DEFAULT_TOKEN};

/// What stands behind a droplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// Addresses only; nothing answers on them.
    Memory,
    /// A lab node on this host per droplet (root, Linux): SSH and Docker answer.
    Lab,
}

/// A local stand-in for DigitalOcean's API v2 (the parts swarmup uses), with faults.
#[derive(Debug, Parser)]
#[command(name = "fake-digitalocean", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8089 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// How long a new droplet stays "new" before it turns "active" (DigitalOcean: about
    /// 45 s).
    #[arg(long, env = "FAKE_DO_BOOT_DELAY_MS", default_value_t = 2000)]
    boot_delay_ms: u64,
    /// How long a power action takes.
    #[arg(long, default_value_t = 500)]
    action_delay_ms: u64,
    /// How long every API request takes before it is answered (DigitalOcean: about 150 ms).
    #[arg(long, env = "FAKE_DO_API_LATENCY_MS", default_value_t = 0)]
    api_latency_ms: u64,
    /// Requests taken in any minute; more are answered 429, as DigitalOcean does (0: no
    /// limit).
    #[arg(long, env = "FAKE_DO_RATE_PER_MINUTE", default_value_t = 250)]
    rate_per_minute: u64,
    /// Requests taken in any hour (`ratelimit-limit`); more are answered 429.
    #[arg(long, env = "FAKE_DO_RATE_PER_HOUR", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    rate_per_hour: u64,
    /// The bearer token to accept.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    token: String,
    /// The account's droplet limit.
    #[arg(long, default_value_t = 25)]
    droplet_limit: u32,
    /// What stands behind a droplet.
    #[arg(long, value_enum, default_value = "memory")]
    backend: Backend,
    /// Lab state of `--backend lab`; every lab cluster under it is destroyed on exit.
    #[arg(long, default_value = "/var/lib/swarmup/fake-digitalocean-lab")]
    lab_root: PathBuf,
    /// The lab node init: `swarmup-lab-node`, or `swarmup` (run as `swarmup lab-node`).
    /// Default: either of them next to this program, else swarmup-lab-node on PATH.
    #[arg(long)]
    lab_node_program: Option<PathBuf>,
}

#[cfg(target_os = "linux")]
fn lab_backend(args: &Args) -> Result<Arc<fake_digitalocean::LabBackend>, String> {
    use swarmup_providers::lab::{NodeInit, NODE_PROGRAM};
    let init = |program: PathBuf| {
        let is_swarmup = program.file_name().is_some_and(|n| n == "swarmup");
        NodeInit {
            program,
            args: if is_swarmup {
                vec!["lab-node".into()]
            } else {
                Vec::new()
            },
        }
    };
    let init = match &args.lab_node_program {
        Some(p) if p.is_file() => init(p.clone()),
        Some(p) => {
            return Err(format!(
                "lab node program {} not found: build it (cargo build -p swarmup-providers) or pass another",
                p.display()
            ))
        }
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.to_path_buf()));
            let found = beside.and_then(|d| {
                [d.join(NODE_PROGRAM), d.join("swarmup")]
                    .into_iter()
                    .find(|p| p.is_file())
            });
            found.map_or_else(NodeInit::standalone, init)
        }
    };
    Ok(Arc::new(fake_digitalocean::LabBackend::with_root(
        args.lab_root.clone(),
        init,
    )))
}

#[cfg(target_os = "linux")]
async fn lab_preflight(backend: &fake_digitalocean::LabBackend) -> Result<(), String> {
    use swarmup_providers::{ClusterPlan, HostKey, MachinePlan, Provider, Role};
    // The lab checks root and its programs against a plan; any well-formed one will do.
    let plan = ClusterPlan {
        cluster: "preflight".into(),
        machines: vec![MachinePlan {
            name: "preflight-node1".into(),
            role: Role::Manager,
            host_key: HostKey {
                private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\n".into(),
                public_openssh: "ssh-ed25519 AAAA preflight".into(),
            },
        }],
        login_public_key: "ssh-ed25519 AAAA preflight".into(),
        tags: Vec::new(),
    };
    backend
        .lab()
        .preflight(&plan)
        .await
        .map_err(|e| e.to_string())
}

/// Ctrl-C, or a polite kill.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FAKE_DIGITALOCEAN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(target_os = "linux")]
    let mut lab = None;
    let backend: Arc<dyn DropletBackend> = match args.backend {
        Backend::Memory => Arc::new(MemoryBackend::default()),
        #[cfg(target_os = "linux")]
        Backend::Lab => {
            let made = match lab_backend(&args) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = lab_preflight(&made).await {
                eprintln!("--backend lab cannot run here: {e}");
                return ExitCode::FAILURE;
            }
            lab = Some(made.clone());
            made
        }
        #[cfg(not(target_os = "linux"))]
        Backend::Lab => {
            eprintln!("--backend lab needs Linux (network namespaces): use --backend memory");
            return ExitCode::FAILURE;
        }
    };
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {} makes the fake reachable from other machines",
            args.listen
        );
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cannot listen on {}: {e}: pick a free port or 127.0.0.1:0",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let options = FakeOptions {
        token: args.token.clone(),
        droplet_limit: args.droplet_limit,
        boot_delay: Duration::from_millis(args.boot_delay_ms),
        action_delay: Duration::from_millis(args.action_delay_ms),
        api_latency: Duration::from_millis(args.api_latency_ms),
        rate_per_minute: args.rate_per_minute,
        ratelimit_limit: args.rate_per_hour,
        backend,
        ..FakeOptions::default()
    };
    let fake = match FakeDo::start(listener, options) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot start the fake on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let url = fake.url();
    println!("fake DigitalOcean api listening on {url}");
    println!("export DIGITALOCEAN_API_URL={url}");
    println!("export DIGITALOCEAN_TOKEN={}", args.token);
    println!(
        "inject faults with: curl -X POST {url}/_fake/faults -d '{{\"rate_limit\":{{\"count\":2,\"retry_after_secs\":1}}}}'"
    );
    stopped().await;
    fake.shutdown().await;
    // The droplets live only in this process: their machines go with it.
    #[cfg(target_os = "linux")]
    if let Some(lab) = lab {
        match lab.destroy_all().await {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("destroyed lab clusters {}", removed.join(", "))
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
