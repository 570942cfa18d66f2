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
