//! `fake-digitalocean --listen 127.0.0.1:PORT`: serves the fake API until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fake_digitalocean::{FakeDo, FakeOptions, DEFAULT_TOKEN};

/// A local stand-in for DigitalOcean's API v2 (the parts swarmup uses), with faults.
#[derive(Debug, Parser)]
#[command(name = "fake-digitalocean", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8089 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// How long a new droplet stays "new" before it turns "active".
    #[arg(long, default_value_t = 2000)]
    boot_delay_ms: u64,
    /// How long a power action takes.
    #[arg(long, default_value_t = 500)]
    action_delay_ms: u64,
    /// The bearer token to accept.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    token: String,
    /// The account's droplet limit.
    #[arg(long, default_value_t = 25)]
    droplet_limit: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
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
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
    }
    fake.shutdown().await;
    ExitCode::SUCCESS
}
