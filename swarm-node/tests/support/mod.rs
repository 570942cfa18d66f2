//! A sandbox of real swarm-node processes on loopback, sharing this machine's Docker
//! Engine, driven with the stock docker CLI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "swarmup-test/busybox:latest";

/// True when end-to-end tests should run; otherwise prints why they are skipped.
pub fn e2e_enabled(test: &str) -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: {test} needs SWARMUP_E2E=1, root and a running dockerd");
        false
    }
}

pub fn docker_cli() -> String {
    std::env::var("SWARMUP_DOCKER_CLI").unwrap_or_else(|_| {
        if Path::new("/usr/local/bin/docker").exists() {
            "/usr/local/bin/docker".into()
        } else {
            "docker".into()
        }
    })
}

/// Builds the test image from Debian's busybox-static if the engine lacks it.
pub fn ensure_image() {
    let have = Command::new(docker_cli())
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).expect("busybox-static installed");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\nRUN [\"/bin/busybox\",\"mkdir\",\"-p\",\"/tmp\",\"/var/www\",\"/etc\"]\nCMD [\"/bin/sh\"]\n",
    )
    .unwrap();
    let out = Command::new(docker_cli())
        .args(["build", "-q", "-t", IMAGE])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn swarm_node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_swarm-node")
}

/// One node: a state directory, a control port, and the daemon process while it runs.
#[derive(Debug)]
pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
}

impl TestNode {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(swarm_node_bin());
        c.arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .env("SWARM_NODE_HOSTNAME", &self.name)
            .env("SWARM_NODE_LOG", "info,openraft=warn");
        c
    }

    /// Runs a one-shot verb (init, join, join-token …).
    pub fn verb(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("swarm-node.log"))
            .unwrap();
        let child = self
            .command()
            .arg("run")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(
            &format!("{} socket", self.name),
            // A restart replays its Raft log before it serves: slow on a loaded machine.
            Duration::from_secs(60),
            || self.socket().exists(),
        );
    }

    /// Kills the daemon at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM, as systemd would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The docker CLI pointed at this node's local socket.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// Like [`docker`](Self::docker), asserting success and returning stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} on {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a docker command expected to fail and returns what it printed on stderr.
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("swarm-node.log")).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of nodes under one temp directory. Dropping it kills the daemons and removes
/// every container its nodes created.
#[derive(Debug)]
pub struct Sandbox {
    pub root: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
}

impl Sandbox {
    pub fn new(names: &[&str]) -> Sandbox {
        let root = tempfile::tempdir().unwrap();
        let nodes = names
            .iter()
            .map(|n| {
                let dir = root.path().join(n);
                std::fs::create_dir_all(&dir).unwrap();
                TestNode {
                    name: n.to_string(),
                    dir,
                    port: free_port(),
                    child: None,
                }
            })
            .collect();
        Sandbox { root, nodes }
    }

    pub fn node(&mut self, i: usize) -> &mut TestNode {
        &mut self.nodes[i]
    }

    /// `init` on node 0 with a short heartbeat, then starts it.
    pub fn init(&mut self, heartbeat: &str) {
        let n = &mut self.nodes[0];
        let addr = n.addr();
        let out = n.verb(&[
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            "--dispatcher-heartbeat",
            heartbeat,
        ]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        n.start();
    }

    pub fn token(&self, role: &str) -> String {
        let out = self.nodes[0].verb(&["join-token", "-q", role]);
        assert!(
            out.status.success(),
            "join-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `join` node i through node 0 with the token of `role`, then starts it.
    pub fn join(&mut self, i: usize, role: &str) {
        let token = self.token(role);
        let manager = self.nodes[0].addr();
        let n = &mut self.nodes[i];
        let addr = n.addr();
        let out = n.verb(&[
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            &manager,
        ]);
        assert!(
            out.status.success(),
            "join {}: {}",
            n.name,
            String::from_utf8_lossy(&out.stderr)
        );
        n.start();
    }

    /// The node ids of this sandbox, to clean their containers.
    fn node_ids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let text = std::fs::read_to_string(n.dir.join("state/node.json")).ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                v["node_id"].as_str().map(str::to_string)
            })
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let ids = self.node_ids();
        for n in &mut self.nodes {
            n.kill();
        }
        for id in ids {
            let out = Command::new(docker_cli())
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.swarm.node.id={id}"),
                ])
                .output();
            if let Ok(out) = out {
                let list = String::from_utf8_lossy(&out.stdout).to_string();
                let ids: Vec<&str> = list.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = Command::new(docker_cli())
                        .args(["rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
        }
    }
}

/// Polls `check` until it holds, failing the test with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rows of a docker table, without its header.
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}
