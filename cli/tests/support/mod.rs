//! A sandbox for driving the built `swarmup` binary end to end: private records, SSH
//! config and lab state per test, the stock docker CLI pointed at a cluster, bounded
//! waits, and a check that a destroyed lab cluster left nothing on the host.

#![allow(dead_code)]

pub mod net;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "swarmup-test/busybox:latest";

/// Every command is bounded, so a hang fails the test instead of stalling the suite.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The lab clusters share two cores with everything else: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one must still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when end-to-end tests should run; otherwise prints why they are skipped.
pub fn e2e_enabled(test: &str) -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: {test} needs SWARMUP_E2E=1, root, dockerd, sshd and iproute2");
        false
    }
}

pub fn swarmup_bin() -> &'static str {
    env!("CARGO_BIN_EXE_swarmup")
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

/// What a finished command said.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// The standard output of a command that must have succeeded.
    pub fn expect_err(self) -> String {
        assert!(!self.ok(), "expected a failure: {self}");
        self.stderr
    }

    pub fn expect_ok(self) -> String {
        assert!(self.ok(), "{} failed: {self}", self.what);
        self.stdout
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})\n--- stdout\n{}\n--- stderr\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a command to completion within `timeout`, killing it (by its own handle) if it
/// overruns.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Run {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child: Child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?}; stderr so far: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        what,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `check` until it answers `Ok`, at most `timeout`; returns its answer and how long
/// it took. `Err` carries what was last seen, for the failure message.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        match check() {
            Ok(v) => return (v, started.elapsed()),
            Err(last) if started.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The swarm-node binary `create` installs: the one next to swarmup (its default), built
/// for the same profile if this run of the tests did not build it, or the one
/// SWARMUP_SWARM_NODE_BINARY names.
pub fn ensure_swarm_node() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if let Some(p) = std::env::var_os("SWARMUP_SWARM_NODE_BINARY") {
            assert!(
                Path::new(&p).is_file(),
                "SWARMUP_SWARM_NODE_BINARY={} is not a file",
                Path::new(&p).display()
            );
            return;
        }
        let exe = Path::new(swarmup_bin());
        let profile_dir = exe
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "-p",
            "swarm-node",
            "--bin",
            "swarm-node",
        ]);
        match profile_dir {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        // A no-op when `cargo test --workspace` already built it.
        run_bounded(cmd, Duration::from_secs(1800)).expect_ok();
        let built = exe.with_file_name("swarm-node");
        assert!(
            built.is_file(),
            "cargo built swarm-node but {} is missing",
            built.display()
        );
    });
}

/// A command for the host's own Docker Engine, whatever the test's environment says.
pub fn host_docker() -> Command {
    let mut cmd = Command::new(docker_cli());
    for var in [
        "DOCKER_HOST",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
        "DOCKER_CONTEXT",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Builds `tag` into the host's engine: Debian's busybox-static with every applet linked,
/// plus `extra` files copied to `/bin/NAME`.
pub fn build_busybox_image(tag: &str, extra: &[(&Path, &str)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("copy /bin/busybox: install busybox-static");
    let mut dockerfile = String::from(concat!(
        "FROM scratch\n",
        "COPY busybox /bin/busybox\n",
        "RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n",
        "RUN [\"/bin/busybox\",\"mkdir\",\"-p\",\"/tmp\",\"/etc\"]\n",
    ));
    for (file, name) in extra {
        std::fs::copy(file, dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        dockerfile += &format!("COPY {name} /bin/{name}\n");
    }
    dockerfile += "CMD [\"/bin/sh\"]\n";
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    let mut build = host_docker();
    build.args(["build", "-q", "-t", tag]).arg(dir.path());
    run_bounded(build, Duration::from_secs(120)).expect_ok();
}

/// Builds the test image into the host's engine from Debian's busybox-static, unless it
/// is there already.
pub fn ensure_test_image() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let mut inspect = host_docker();
        inspect.args(["image", "inspect", IMAGE]);
        if run_bounded(inspect, Duration::from_secs(30)).ok() {
            return;
        }
        build_busybox_image(IMAGE, &[]);
    });
}

/// Private records, SSH config, lab state and docker CLI config for one test.
#[derive(Debug)]
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub ssh_config: PathBuf,
    pub lab_root: PathBuf,
    pub docker_config: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("swarmup-e2e-")
            .tempdir()
            .expect("temp dir");
        let home = dir.path().join("home");
        let lab_root = dir.path().join("lab");
        let docker_config = dir.path().join("docker");
        for d in [&home, &lab_root, &docker_config] {
            std::fs::create_dir_all(d).expect("sandbox dir");
        }
        Sandbox {
            ssh_config: dir.path().join("ssh_config"),
            home,
            lab_root,
            docker_config,
            dir,
        }
    }

    /// `swarmup` with this sandbox's environment and nothing of the user's.
    pub fn swarmup(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(swarmup_bin());
        cmd.args(args)
            .env("SWARMUP_HOME", &self.home)
            .env("SWARMUP_SSH_CONFIG", &self.ssh_config)
            .env("SWARMUP_LAB_ROOT", &self.lab_root)
            // A DigitalOcean request, were one made by mistake, stays on this host.
            .env("DIGITALOCEAN_API_URL", "http://127.0.0.1:9")
            .stdin(Stdio::null());
        for var in [
            "SWARMUP_CLUSTER",
            "SWARMUP_LOG",
            "DIGITALOCEAN_TOKEN",
            "DIGITALOCEAN_ACCESS_TOKEN",
            "DOCKER_HOST",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run_bounded(self.swarmup(args), COMMAND_TIMEOUT)
    }

    /// The standard output of a swarmup command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args).expect_ok()
    }

    pub fn record_dir(&self, name: &str) -> PathBuf {
        self.home.join("clusters").join(name)
    }

    pub fn lab_dir(&self, name: &str) -> PathBuf {
        self.lab_root.join(name)
    }

    pub fn ssh_config_text(&self) -> String {
        std::fs::read_to_string(&self.ssh_config).unwrap_or_default()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// A node as `swarmup node ls --output json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeView {
    pub hostname: String,
    pub id: String,
    pub role: String,
    pub state: String,
    pub leader: bool,
}

/// A task as `docker service ps --format '{{json .}}'` reports it.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub id: String,
    pub node: String,
    pub desired: String,
    pub current: String,
}

/// A lab cluster of one sandbox, destroyed when dropped whatever happened in between.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub sandbox: Sandbox,
    destroyed: bool,
    docker_env: Option<BTreeMap<String, String>>,
}

impl Cluster {
    /// A name no other test or run uses: per-test prefix plus this process's id.
    pub fn new(prefix: &str) -> Cluster {
        let name = format!("{prefix}-{:x}", std::process::id() & 0xffff);
        assert!(name.len() <= 24, "cluster name {name} is too long");
        Cluster {
            name,
            sandbox: Sandbox::new(),
            destroyed: false,
            docker_env: None,
        }
    }

    pub fn sb(&self) -> &Sandbox {
        &self.sandbox
    }

    /// `swarmup create --name NAME --output json --offline EXTRA…`, which must succeed;
    /// returns its JSON report. Offline: nothing the nodes send can leave the lab.
    pub fn create(&mut self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "create",
            "--name",
            &self.name,
            "--output",
            "json",
            "--offline",
        ];
        args.extend_from_slice(extra);
        let out = self.sandbox.ok(&args);
        self.docker_env = None;
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("create --output json printed no JSON ({e}): {out}"))
    }

    /// The nodes as the cluster's managers see them, sorted by hostname.
    pub fn nodes(&self) -> Vec<NodeView> {
        let out = self
            .sandbox
            .ok(&["node", "ls", "--cluster", &self.name, "--output", "json"]);
        parse_nodes(&out).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_nodes(&self) -> Result<Vec<NodeView>, String> {
        let run = self
            .sandbox
            .run(&["node", "ls", "--cluster", &self.name, "--output", "json"]);
        if !run.ok() {
            return Err(run.stderr);
        }
        parse_nodes(&run.stdout)
    }

    /// The docker CLI environment of `swarmup env NAME --output json`, checked against the
    /// `export` lines `eval $(swarmup env NAME)` would run.
    pub fn docker_env(&mut self) -> BTreeMap<String, String> {
        if let Some(env) = &self.docker_env {
            return env.clone();
        }
        let json = self.sandbox.ok(&["env", &self.name, "--output", "json"]);
        let value: serde_json::Value = serde_json::from_str(json.trim())
            .unwrap_or_else(|e| panic!("env --output json printed no JSON ({e}): {json}"));
        let env: BTreeMap<String, String> = value
            .as_object()
            .expect("env JSON is an object")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let shell = self.sandbox.ok(&["env", &self.name]);
        let exports: BTreeMap<String, String> = shell
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            env, exports,
            "swarmup env and swarmup env --output json disagree"
        );
        for key in ["DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"] {
            assert!(env.contains_key(key), "swarmup env sets no {key}: {json}");
        }
        self.docker_env = Some(env.clone());
        env
    }

    /// The stock docker CLI pointed at the cluster, as after `eval $(swarmup env NAME)`.
    pub fn docker(&mut self, args: &[&str]) -> Command {
        let env = self.docker_env();
        let mut cmd = Command::new(docker_cli());
        cmd.args(args)
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", &self.sandbox.docker_config)
            .envs(env)
            .stdin(Stdio::null());
        cmd
    }

    pub fn docker_run(&mut self, args: &[&str]) -> Run {
        run_bounded(self.docker(args), Duration::from_secs(60))
    }

    /// `docker node ls`: hostname → status.
    pub fn docker_node_status(&mut self) -> Result<BTreeMap<String, String>, String> {
        let run = self.docker_run(&["node", "ls", "--format", "{{json .}}"]);
        if !run.ok() {
            return Err(run.stderr.trim().to_string());
        }
        json_lines(&run.stdout)?
            .iter()
            .map(|v| Ok((str_of(v, "Hostname")?, str_of(v, "Status")?)))
            .collect()
    }

    /// `docker service ps SERVICE` for the tasks meant to run.
    pub fn docker_running_tasks(&mut self, service: &str) -> Result<Vec<TaskView>, String> {
        let run = self.docker_run(&[
            "service",
            "ps",
            service,
            "--no-trunc",
            "--filter",
            "desired-state=running",
            "--format",
            "{{json .}}",
        ]);
        if !run.ok() {
            return Err(run.stderr.trim().to_string());
        }
        json_lines(&run.stdout)?
            .iter()
            .map(|v| {
                Ok(TaskView {
                    id: str_of(v, "ID")?,
                    node: str_of(v, "Node")?,
                    desired: str_of(v, "DesiredState")?,
                    current: str_of(v, "CurrentState")?,
                })
            })
            .collect()
    }

    /// `docker save IMAGE | swarmup image load NAME`: the nodes have no registry. Returns
    /// what `image load` printed.
    pub fn load_test_image(&self) -> String {
        ensure_test_image();
        let mut save = host_docker();
        save.args(["save", IMAGE]).stdout(Stdio::piped());
        let mut save = save.spawn().expect("run docker save");
        let mut load = self.sandbox.swarmup(&["image", "load", &self.name]);
        load.stdin(Stdio::from(save.stdout.take().expect("docker save stdout")));
        let loaded = run_bounded(load, COMMAND_TIMEOUT);
        assert!(
            save.wait().expect("docker save").success(),
            "docker save failed"
        );
        loaded.expect_ok()
    }

    /// What the lab made for this cluster, read before destroying it.
    pub fn footprint(&self) -> Footprint {
        Footprint::of(&self.sandbox, &self.name)
    }

    /// `swarmup destroy NAME --yes`, which must succeed and leave nothing behind.
    pub fn destroy_and_check(&mut self) -> Duration {
        let footprint = self.footprint();
        let started = Instant::now();
        let out = self.sandbox.ok(&["destroy", &self.name, "--yes"]);
        let took = started.elapsed();
        self.destroyed = true;
        assert!(
            out.contains(&format!("Cluster {} destroyed", self.name)),
            "destroy said: {out}"
        );
        footprint.assert_gone(&self.sandbox);
        took
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.destroyed || !self.sandbox.record_dir(&self.name).exists() {
            return;
        }
        let mut cmd = self.sandbox.swarmup(&["destroy", &self.name, "--yes"]);
        cmd.stdout(Stdio::null());
        match cmd.status() {
            Ok(s) if s.success() => eprintln!("cleanup: destroyed lab cluster {}", self.name),
            Ok(s) => eprintln!("cleanup: destroy {} exited with {s}", self.name),
            Err(e) => eprintln!("cleanup: cannot run swarmup destroy {}: {e}", self.name),
        }
    }
}

fn json_lines(text: &str) -> Result<Vec<serde_json::Value>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}")))
        .collect()
}

fn str_of(v: &serde_json::Value, key: &str) -> Result<String, String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no {key} in {v}"))
}

fn parse_nodes(text: &str) -> Result<Vec<NodeView>, String> {
    let value: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("node ls --output json printed no JSON ({e}): {text}"))?;
    let mut nodes: Vec<NodeView> = value
        .as_array()
        .ok_or_else(|| format!("node ls --output json is not a list: {text}"))?
        .iter()
        .map(|n| NodeView {
            hostname: n["Description"]["Hostname"]
                .as_str()
                .unwrap_or_default()
                .into(),
            id: n["ID"].as_str().unwrap_or_default().into(),
            role: n["Spec"]["Role"].as_str().unwrap_or_default().into(),
            state: n["Status"]["State"].as_str().unwrap_or_default().into(),
            leader: n["ManagerStatus"]["Leader"].as_bool().unwrap_or(false),
        })
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// `ip netns list`, names only.
pub fn netns_names() -> Vec<String> {
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        // No iproute2 (as on macOS): the files `ip netns` lists, if any.
        _ => std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// `ip -o link`, interface names only (without the `@peer` suffix).
pub fn link_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("run ip -o link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// A process as the host sees it; the start time tells a reused PID apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

/// `(ppid, start time)` of a live process; `None` once it exited, zombies included (an
/// exited child its new parent has not reaped yet holds nothing but its PID).
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    // Fields after the command name start at field 3 (state): ppid is 4, starttime 22.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line mentions `needle`, with their start times.
pub fn procs_mentioning(needle: &str) -> BTreeMap<Proc, String> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let line = cmdline(pid);
            let (_, start) = proc_stat(pid)?;
            line.contains(needle).then_some((Proc { pid, start }, line))
        })
        .collect()
}

/// `roots` and every process below them.
pub fn with_descendants(roots: &BTreeSet<Proc>) -> BTreeSet<Proc> {
    let table: Vec<(Proc, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| {
            let (ppid, start) = proc_stat(pid)?;
            Some((Proc { pid, start }, ppid))
        })
        .collect();
    let mut found = roots.clone();
    loop {
        let before = found.len();
        let pids: BTreeSet<u32> = found.iter().map(|p| p.pid).collect();
        for (p, ppid) in &table {
            if pids.contains(ppid) {
                found.insert(*p);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Still running (not a zombie) and not a new process that reuses the PID.
fn alive(p: &Proc) -> bool {
    proc_stat(p.pid).is_some_and(|(_, start)| start == p.start)
}

/// Host mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// What a lab cluster put on the host, to prove `destroy` took all of it away.
#[derive(Debug, Default)]
pub struct Footprint {
    pub cluster: String,
    /// Six hex digits in every host-side name of the cluster.
    pub tag: String,
    pub bridge: String,
    pub netns: Vec<String>,
    pub veths: Vec<String>,
    pub processes: BTreeSet<Proc>,
}

impl Footprint {
    pub fn of(sb: &Sandbox, cluster: &str) -> Footprint {
        let index = sb.lab_dir(cluster).join("cluster.json");
        let text = std::fs::read_to_string(&index)
            .unwrap_or_else(|e| panic!("cannot read lab index {}: {e}", index.display()));
        let v: serde_json::Value = serde_json::from_str(&text).expect("lab index is JSON");
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let field = |n: &serde_json::Value, k: &str| n[k].as_str().unwrap_or_default().to_string();
        let lab_dir = sb.lab_dir(cluster).to_string_lossy().into_owned();
        let inits: BTreeSet<Proc> = procs_mentioning(&lab_dir).into_keys().collect();
        let fp = Footprint {
            cluster: cluster.to_string(),
            tag: v["tag"].as_str().unwrap_or_default().to_string(),
            bridge: v["bridge"].as_str().unwrap_or_default().to_string(),
            netns: nodes.iter().map(|n| field(n, "netns")).collect(),
            veths: nodes.iter().map(|n| field(n, "veth")).collect(),
            processes: with_descendants(&inits),
        };
        assert!(
            !fp.tag.is_empty() && !fp.bridge.is_empty(),
            "lab index {} has no tag or bridge: {text}",
            index.display()
        );
        let live = netns_names();
        for ns in &fp.netns {
            assert!(
                live.contains(ns),
                "namespace {ns} is missing before destroy"
            );
        }
        assert!(
            link_names().contains(&fp.bridge),
            "bridge {} is missing before destroy",
            fp.bridge
        );
        assert!(
            !fp.processes.is_empty(),
            "no process of cluster {cluster} runs before destroy"
        );
        fp
    }

    /// Everything of the cluster is gone: namespaces, links, processes, mounts, lab state,
    /// the record and the SSH config block.
    pub fn assert_gone(&self, sb: &Sandbox) {
        let name = &self.cluster;
        let ns_prefix = format!("swlab-{}-", self.tag);
        let left: Vec<String> = netns_names()
            .into_iter()
            .filter(|n| {
                n.contains(name.as_str()) || n.starts_with(&ns_prefix) || self.netns.contains(n)
            })
            .collect();
        assert!(left.is_empty(), "network namespaces left: {left:?}");

        let veth_prefix = format!("v{}-", self.tag);
        let left: Vec<String> = link_names()
            .into_iter()
            .filter(|l| *l == self.bridge || l.starts_with(&veth_prefix) || self.veths.contains(l))
            .collect();
        assert!(left.is_empty(), "links left: {left:?}");

        // Processes are the one thing given a moment: a killed process may still be
        // tearing down when destroy returns.
        let sandbox = sb.dir.path().to_string_lossy().into_owned();
        let (_, took) = wait_for(
            "the cluster's processes to exit",
            Duration::from_secs(5),
            || {
                let mentioning = procs_mentioning(&sandbox);
                let survivors: Vec<String> = self
                    .processes
                    .iter()
                    .filter(|p| alive(p))
                    .map(|p| format!("{} {}", p.pid, cmdline(p.pid)))
                    .collect();
                if mentioning.is_empty() && survivors.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                    "processes mentioning {sandbox}: {mentioning:?}; processes of the cluster: {survivors:?}"
                ))
                }
            },
        );
        if took > Duration::from_millis(100) {
            println!(
                "note: processes of {name} exited {:.1}s after destroy returned",
                took.as_secs_f64()
            );
        }

        let left = mounts_under(&sb.lab_root);
        assert!(left.is_empty(), "mounts left under the lab root: {left:?}");
        let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&ns_prefix))
            .map(str::to_string)
            .collect();
        assert!(left.is_empty(), "namespace mounts left: {left:?}");

        let table = format!("swarmup_lab_{}", self.tag);
        if let Ok(out) = Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
        {
            assert!(!out.status.success(), "nftables table inet {table} left");
        }

        if let Ok(out) = Command::new("iptables").args(["-S"]).output() {
            let rules = String::from_utf8_lossy(&out.stdout);
            let left: Vec<&str> = rules.lines().filter(|l| l.contains(&self.bridge)).collect();
            assert!(left.is_empty(), "iptables rules left: {left:?}");
        }

        let lab_dir = sb.lab_dir(name);
        assert!(!lab_dir.exists(), "lab state {} left", lab_dir.display());
        let record = sb.record_dir(name);
        assert!(!record.exists(), "record {} left", record.display());
        let block = format!("# BEGIN swarmup {name}");
        assert!(
            !sb.ssh_config_text().contains(&block),
            "ssh config {} still has {block}",
            sb.ssh_config.display()
        );
        let ls = sb.ok(&["ls", "--output", "json"]);
        assert!(
            !ls.contains(&format!("\"{name}\"")),
            "swarmup ls still lists {name}: {ls}"
        );
    }
}

/// Nothing of a refused `create` exists: no record, no lab state, no namespace, no SSH
/// config block.
pub fn assert_nothing_created(sb: &Sandbox, name: &str) {
    assert!(
        !sb.record_dir(name).exists(),
        "a record was written for {name}"
    );
    assert!(!sb.lab_dir(name).exists(), "lab state was made for {name}");
    let ns: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.contains(name))
        .collect();
    assert!(ns.is_empty(), "namespaces were made for {name}: {ns:?}");
    assert!(
        !sb.ssh_config_text()
            .contains(&format!("# BEGIN swarmup {name}")),
        "an ssh config block was written for {name}"
    );
}

/// A refusal: non-zero exit, nothing on stdout, exactly one line on stderr that starts
/// with `Error:` and says `expect` (case-insensitively).
pub fn assert_refused(run: &Run, expect: &str) {
    assert!(!run.ok(), "{} should have failed: {run}", run.what);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "want one line on stderr: {run}");
    assert!(
        lines[0].starts_with("Error: "),
        "the line should start with `Error: `: {run}"
    );
    assert!(
        lines[0].to_lowercase().contains(&expect.to_lowercase()),
        "the error should say {expect:?}: {run}"
    );
    assert!(
        run.stdout.trim().is_empty(),
        "a refusal prints nothing on stdout: {run}"
    );
}
