//! What the namespace tests share: a root/SWARMUP_E2E gate, commands in namespaces with
//! time limits, and a lab that deletes its namespaces and kills its processes on drop,
//! even when the test fails.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::{timeout, Instant};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// True when the test may run: SWARMUP_E2E=1 and root; otherwise prints why not.
pub fn enabled(what: &str) -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() != Ok("1") {
        println!("skipped: set SWARMUP_E2E=1 (as root) to run {what} between namespaces");
        return false;
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        println!("skipped: the namespace test needs root");
        return false;
    }
    true
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Everything the test made, removed on drop even when the test fails.
#[derive(Default)]
pub struct Lab {
    pub namespaces: Vec<String>,
    pub children: Vec<std::process::Child>,
}

impl Lab {
    /// Starts busybox's HTTP server on port 80 in namespace `ns`, serving `root` (CGI
    /// scripts under `cgi-bin/`); it is killed with the lab.
    pub fn httpd(&mut self, ns: &str, root: &std::path::Path) {
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        self.children.push(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its interfaces, and their veth peers with them.
        for ns in &self.namespaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs a command that must succeed.
pub async fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command that must succeed in a namespace.
pub async fn sh_in(ns: &str, args: &[&str]) {
    let mut all = vec!["nsenter".to_string(), format!("--net=/run/netns/{ns}")];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    sh(&all).await;
}

/// How a command in a namespace ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Ok(String),
    Failed,
    TimedOut,
}

/// Runs a command in a namespace with a time limit.
pub async fn run_in(ns: &str, args: &[&str]) -> Outcome {
    let Ok(child) = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    else {
        return Outcome::Failed;
    };
    match timeout(Duration::from_secs(3), child.wait_with_output()).await {
        Err(_) => Outcome::TimedOut,
        Ok(Ok(out)) if out.status.success() => {
            Outcome::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(_) => Outcome::Failed,
    }
}

/// Some(stdout) when the command succeeded in time.
pub async fn try_in(ns: &str, args: &[&str]) -> Option<String> {
    match run_in(ns, args).await {
        Outcome::Ok(out) => Some(out),
        _ => None,
    }
}

/// Retries until the command succeeds or the deadline passes.
pub async fn until_ok(ns: &str, args: &[&str]) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(out) = try_in(ns, args).await {
            return out;
        }
        assert!(Instant::now() < end, "{args:?} in {ns} kept failing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The client address busybox httpd saw (`[::ffff:a.b.c.d]` for IPv4).
pub fn client_addr(seen: &str) -> &str {
    let s = seen.trim();
    s.strip_prefix("[::ffff:")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

/// The overlay bridge Docker would make on a host: `swb<VNI>` with the gateway address
/// (`gateway_cidr`, the subnet's prefix) and the overlay's MTU.
#[derive(Clone, Copy)]
pub struct Bridge<'a> {
    pub vni: u32,
    pub gateway_cidr: &'a str,
    pub mtu: &'a str,
}

impl Bridge<'_> {
    fn gateway(&self) -> &str {
        self.gateway_cidr.split('/').next().unwrap_or_default()
    }
}

/// A host namespace: lo up, its underlay address on `underlay_dev`, and `bridge`.
pub async fn make_host(ns: &str, underlay_dev: &str, underlay: &str, bridge: Bridge<'_>) {
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"]).await;
    sh(&["ip", "-n", ns, "addr", "add", underlay, "dev", underlay_dev]).await;
    sh(&["ip", "-n", ns, "link", "set", underlay_dev, "up"]).await;
    let br = swarm_net::bridge_name(bridge.vni);
    sh(&["ip", "-n", ns, "link", "add", &br, "type", "bridge"]).await;
    sh(&["ip", "-n", ns, "link", "set", &br, "mtu", bridge.mtu]).await;
    sh(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        bridge.gateway_cidr,
        "dev",
        &br,
    ])
    .await;
    sh(&["ip", "-n", ns, "link", "set", &br, "up"]).await;
}

/// A container namespace on a host's `bridge`, with its overlay address (in the bridge's
/// subnet) and the MAC derived from it, routed through the gateway.
pub async fn make_container(host: &str, ns: &str, veth: &str, addr: &str, bridge: Bridge<'_>) {
    sh(&["ip", "netns", "add", ns]).await;
    sh(&[
        "ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])
    .await;
    let br = swarm_net::bridge_name(bridge.vni);
    sh(&[
        "ip", "-n", host, "link", "set", veth, "mtu", bridge.mtu, "master", &br, "up",
    ])
    .await;
    let mac = swarm_state::network::mac_text(ip(addr));
    sh(&[
        "ip", "-n", ns, "link", "set", "eth0", "address", &mac, "mtu", bridge.mtu, "up",
    ])
    .await;
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"]).await;
    let prefix = bridge.gateway_cidr.split('/').nth(1).unwrap_or("24");
    let cidr = format!("{addr}/{prefix}");
    sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]).await;
    sh(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        bridge.gateway(),
    ])
    .await;
}
