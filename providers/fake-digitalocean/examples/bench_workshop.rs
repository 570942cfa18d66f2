//! Benchmark (prints, asserts nothing): a workshop of STUDENTS x NODES clusters through
//! `create_many` against the fake with DigitalOcean-like latencies and its real rate
//! limits, the droplets in memory. `scripts/bench-workshop` runs it.
//!
//! Environment: STUDENTS (30), NODES (3), MANAGERS (1), BOOT_DELAY_MS (45000),
//! API_LATENCY_MS (150), POLL_MS (3000), RATE_PER_MINUTE (250), RATE_PER_HOUR (5000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_digitalocean::{FakeDo, FakeOptions};
use swarmup_providers::digitalocean::{DigitalOceanOptions, DigitalOceanProvider};
use swarmup_providers::workshop::{expires_tag, workshop_tag};
use swarmup_providers::{
    ClusterPlan, HostKey, MachinePlan, NoProgress, Provider, ProviderError, Role,
};

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v} is not a number: using {default}");
            default
        }),
        Err(_) => default,
    }
}

fn user_data(plan: &ClusterPlan, machines: &[MachinePlan]) -> Result<String, ProviderError> {
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    Ok(format!(
        "#cloud-config\n# {} {}\n",
        plan.cluster,
        names.join(" ")
    ))
}

#[tokio::main]
async fn main() {
    let students = env("STUDENTS", 30) as usize;
    let nodes = env("NODES", 3) as usize;
    let managers = env("MANAGERS", 1) as usize;
    let boot = Duration::from_millis(env("BOOT_DELAY_MS", 45_000));
    let latency = Duration::from_millis(env("API_LATENCY_MS", 150));
    let poll = Duration::from_millis(env("POLL_MS", 3000));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let fake = FakeDo::start(
        listener,
        FakeOptions {
            boot_delay: boot,
            api_latency: latency,
            droplet_limit: (students * nodes + 10) as u32,
            rate_per_minute: env("RATE_PER_MINUTE", 250),
            ratelimit_limit: env("RATE_PER_HOUR", 5000),
            ..FakeOptions::default()
        },
    )
    .expect("start the fake");

    let mut options = DigitalOceanOptions::new(fake.token());
    options.api_url = fake.url();
    options.workshop_poll_interval = poll;
    // The client keeps to the same limits on its own, as it does to DigitalOcean's.
    options.retry.per_minute = env("RATE_PER_MINUTE", 250) as u32;
    options.retry.per_hour = env("RATE_PER_HOUR", 5000) as u32;
    let provider =
        DigitalOceanProvider::new(options, Arc::new(user_data)).expect("make the provider");
    let key = format!(
        "ssh-ed25519 {} teacher@bench",
        base64::engine::general_purpose::STANDARD.encode([7u8; 51])
    );
    let plans: Vec<ClusterPlan> = (1..=students)
        .map(|s| {
            let cluster = format!("bench-s{s:02}");
            ClusterPlan {
                machines: (1..=nodes)
                    .map(|i| MachinePlan {
                        name: format!("{cluster}-node{i}"),
                        role: if i <= managers {
                            Role::Manager
                        } else {
                            Role::Worker
                        },
                        host_key: HostKey {
                            private_openssh: String::new(),
                            public_openssh: String::new(),
                        },
                    })
                    .collect(),
                cluster,
                login_public_key: key.clone(),
                tags: vec![workshop_tag("bench"), expires_tag(4_000_000_000)],
            }
        })
        .collect();

    println!(
        "workshop {students} x {nodes} ({managers} manager(s) each): boot {} ms, {} ms per \
         call, poll every {} ms, limits {}/min {}/h",
        boot.as_millis(),
        latency.as_millis(),
        poll.as_millis(),
        env("RATE_PER_MINUTE", 250),
        env("RATE_PER_HOUR", 5000)
    );
    let dry = provider
        .workshop_plan(&plans)
        .await
        .expect("plan the workshop");
    println!("planned: about {} api calls", dry.api_calls);
    fake.clear_api_calls();
    let before = provider.api_calls();

    let started = Instant::now();
    let results = provider.create_many(&plans, &NoProgress).await;
    let wall = started.elapsed();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        println!("failed: {r}");
    }
    let calls = fake.api_calls();
    let slowest = fake
        .droplets()
        .iter()
        .filter_map(|d| d.active_after)
        .max()
        .unwrap_or_default();
    println!("clusters up:             {ok} of {students}");
    println!("wall time:               {:.1} s", wall.as_secs_f64());
    println!("slowest droplet boot:    {:.1} s", slowest.as_secs_f64());
    println!(
        "after the slowest boot:  {:.1} s",
        wall.saturating_sub(slowest).as_secs_f64()
    );
    let after = provider.api_calls();
    println!(
        "api calls:               {} ({} calls, {} polls, {} retries)",
        calls.len(),
        after.calls - before.calls,
        after.polls - before.polls,
        after.retries - before.retries
    );
    println!(
        "create calls:            {}",
        calls
            .iter()
            .filter(|c| c.method == "POST" && c.path == "/v2/droplets")
            .count()
    );
    println!(
        "max calls in any minute: {}",
        fake.max_calls_in(Duration::from_secs(60))
    );
    println!("answered 429:            {}", fake.rate_limited_calls());
    fake.shutdown().await;
}
