//! The steps that turn a reachable machine into a swarm node. Each takes a time limit
//! and, when it has to wait, says what it waits for.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use swarm_contract::{Exit, NodeEntry, NodeList, Status};
use swarmup_machine::{Machine, Progress, Role};
use swarmup_templates::{Cidr, SWARM_NODE_BINARY};
use tokio::time::Instant;

use crate::error::{BootstrapError, Step};
use crate::shell::{quote, CommandOutput, RemoteShell, ShellError};
use crate::ssh::{ssh_target, Connector};

/// Present on lab nodes: the machine is a network namespace on the swarmup host.
pub const LAB_MARKER: &str = "/run/swarmup-lab/node";
/// Where the lab's supervisor picks up the unit it starts and restarts.
pub const LAB_UNIT_PATH: &str = "/var/lib/swarmup-lab/units/swarm-node.service";
pub const SYSTEMD_UNIT_PATH: &str = "/etc/systemd/system/swarm-node.service";
pub const FIREWALL_PATH: &str = "/etc/swarmup/nftables.conf";
/// A lab node shares `/etc` with its host, so its firewall file lives next to the binary.
pub const LAB_FIREWALL_PATH: &str = "/var/lib/swarmup/nftables.conf";
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// swarm-node's own API socket (swarm-node's `DEFAULT_SOCKET`), root only.
pub const SWARM_NODE_SOCKET: &str = "/run/swarm-node/swarm-node.sock";
/// The docker CLI context that points at [`SWARM_NODE_SOCKET`].
pub const DOCKER_CONTEXT: &str = "swarmup";

/// How long to wait between attempts of a step that waits: short at first, since most
/// waits (a daemon starting, a node reporting Ready) end within a second, then backing
/// off to this.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
const FIRST_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// The longest a single quick command (status, probe, checksum) may take.
const QUICK: Duration = Duration::from_secs(30);

/// The result of one attempt of a waiting step.
pub(crate) enum Attempt<T> {
    Done(T),
    Again(String),
}

/// Runs `attempt` until it is done, fails, or `limit` has passed. `attempt` gets the
/// time that is left.
pub(crate) async fn retry<T, F, Fut>(
    machine: &str,
    step: Step,
    waiting_for: &str,
    limit: Duration,
    mut attempt: F,
) -> Result<T, BootstrapError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, BootstrapError>>,
{
    let deadline = Instant::now() + limit;
    let mut interval = FIRST_RETRY_INTERVAL;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let last = match attempt(left).await? {
            Attempt::Done(value) => return Ok(value),
            Attempt::Again(why) => Some(why),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(BootstrapError::Timeout {
                machine: machine.to_string(),
                step,
                waiting_for: waiting_for.to_string(),
                after: limit,
                last,
            });
        }
        tokio::time::sleep(interval.min(remaining)).await;
        interval = (interval * 2).min(RETRY_INTERVAL);
    }
}

fn shell_error(machine: &Machine, step: Step, e: ShellError) -> BootstrapError {
    BootstrapError::step(&machine.name, step, e.to_string())
}

async fn run(
    shell: &dyn RemoteShell,
    machine: &Machine,
    step: Step,
    script: &str,
    timeout: Duration,
) -> Result<CommandOutput, BootstrapError> {
    shell
        .run(script, timeout)
        .await
        .map_err(|e| shell_error(machine, step, e))
}

/// Runs `script` and fails the step with `what` when it exits non-zero.
async fn run_ok(
    shell: &dyn RemoteShell,
    machine: &Machine,
    step: Step,
    what: &str,
    script: &str,
    timeout: Duration,
) -> Result<CommandOutput, BootstrapError> {
    let out = run(shell, machine, step, script, timeout).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(BootstrapError::step(
            &machine.name,
            step,
            format!("{what} failed: {}", out.failure_summary()),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// SSH

/// Connects to `machine`, retrying until `limit` has passed: a new machine refuses
/// connections until sshd is up.
pub async fn wait_for_ssh(
    connector: &dyn Connector,
    machine: &Machine,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<Arc<dyn RemoteShell>, BootstrapError> {
    let waiting_for = format!("waiting for SSH on {}", ssh_target(machine));
    progress.machine(&machine.name, &waiting_for);
    retry(
        &machine.name,
        Step::Ssh,
        &waiting_for,
        limit,
        |left| async move {
            match connector
                .connect(machine, left.min(Duration::from_secs(20)))
                .await
            {
                Ok(shell) => Ok(Attempt::Done(shell)),
                Err(e) => Ok(Attempt::Again(e.to_string())),
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// host facts

/// What bootstrap needs to know about a machine before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// A lab node: Docker already runs, the lab's supervisor stands in for systemd.
    pub lab: bool,
    pub systemd: bool,
    /// `uname -m`.
    pub arch: String,
    /// The address swarmup's SSH connection comes from, as the machine sees it.
    pub ssh_client: Option<IpAddr>,
    /// The port sshd listens on inside the machine.
    pub ssh_port: Option<u16>,
}

const PROBE: &str = "if test -e /run/swarmup-lab/node; then echo lab=yes; else echo lab=no; fi; \
if test -d /run/systemd/system && command -v systemctl >/dev/null 2>&1; then echo systemd=yes; else echo systemd=no; fi; \
echo \"arch=$(uname -m)\"; echo \"ssh=$SSH_CONNECTION\"";

/// Finds out whether `machine` is a lab node, runs systemd, and which architecture it has.
pub async fn probe_host(
    shell: &dyn RemoteShell,
    machine: &Machine,
) -> Result<HostFacts, BootstrapError> {
    let out = run_ok(
        shell,
        machine,
        Step::HostCheck,
        "probing the host",
        PROBE,
        QUICK,
    )
    .await?;
    let mut facts = HostFacts::default();
    for line in out.stdout.lines() {
        match line.split_once('=') {
            Some(("lab", v)) => facts.lab = v.trim() == "yes",
            Some(("systemd", v)) => facts.systemd = v.trim() == "yes",
            Some(("arch", v)) => facts.arch = v.trim().to_string(),
            Some(("ssh", v)) => {
                // SSH_CONNECTION is "client_ip client_port server_ip server_port".
                let words: Vec<&str> = v.split_whitespace().collect();
                if words.len() == 4 {
                    facts.ssh_client = words[0].parse().ok();
                    facts.ssh_port = words[3].parse().ok();
                }
            }
            _ => {}
        }
    }
    Ok(facts)
}

// ---------------------------------------------------------------------------------------
// Docker

const DOCKER_VERSION: &str =
    "docker -H unix:///var/run/docker.sock version --format '{{.Server.Version}}'";
const WAIT_CLOUD_INIT: &str =
    "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1; fi; true";
const APT_INSTALL_DOCKER: &str = "export DEBIAN_FRONTEND=noninteractive; \
apt-get -o DPkg::Lock::Timeout=300 -q update && \
apt-get -o DPkg::Lock::Timeout=300 -q install -y docker.io";

/// Makes sure Docker Engine answers on `/var/run/docker.sock`, and returns its
/// version. On a lab node Docker is started by the lab, so this only waits. On other
/// hosts it waits for cloud-init, installs `docker.io` from the distribution when
/// Docker is missing, and starts it.
pub async fn ensure_docker(
    shell: &dyn RemoteShell,
    machine: &Machine,
    facts: &HostFacts,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<String, BootstrapError> {
    let started = Instant::now();
    let left = || {
        limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1))
    };
    if !facts.lab {
        // cloud-init may still be installing packages, and apt allows one user at a time.
        run(shell, machine, Step::Docker, WAIT_CLOUD_INIT, left()).await?;
        let version = run(
            shell,
            machine,
            Step::Docker,
            DOCKER_VERSION,
            QUICK.min(left()),
        )
        .await?;
        if !version.success() {
            let has_dockerd = run(
                shell,
                machine,
                Step::Docker,
                "command -v dockerd",
                QUICK.min(left()),
            )
            .await?;
            if !has_dockerd.success() {
                let has_apt =
                    run(shell, machine, Step::Docker, "command -v apt-get", QUICK).await?;
                if !has_apt.success() {
                    return Err(BootstrapError::step(
                        &machine.name,
                        Step::Docker,
                        "Docker is not installed and this host has no apt-get: install Docker Engine on it and run swarmup again",
                    ));
                }
                progress.machine(&machine.name, "installing docker.io from the distribution");
                run_ok(
                    shell,
                    machine,
                    Step::Docker,
                    "apt-get install docker.io",
                    APT_INSTALL_DOCKER,
                    left(),
                )
                .await?;
            }
            if facts.systemd {
                run_ok(
                    shell,
                    machine,
                    Step::Docker,
                    "starting docker.service",
                    "systemctl enable --now docker.service",
                    QUICK.min(left()),
                )
                .await?;
            }
        }
    }
    let waiting_for = format!("waiting for Docker on {} ({DOCKER_SOCKET})", machine.name);
    let version = retry(
        &machine.name,
        Step::Docker,
        &waiting_for,
        left(),
        |left| async move {
            let out = run(
                shell,
                machine,
                Step::Docker,
                DOCKER_VERSION,
                left.min(QUICK),
            )
            .await?;
            Ok(if out.success() && !out.stdout.trim().is_empty() {
                Attempt::Done(out.stdout.trim().to_string())
            } else {
                Attempt::Again(out.failure_summary())
            })
        },
    )
    .await?;
    progress.machine(&machine.name, &format!("Docker {version} is running"));
    Ok(version)
}

// ---------------------------------------------------------------------------------------
// swarm-node binary

/// The swarm-node executable, read once and shared by every machine.
#[derive(Clone)]
pub struct SwarmNodeBinary {
    bytes: Arc<[u8]>,
    sha256: String,
    elf_machine: Option<u16>,
}

impl std::fmt::Debug for SwarmNodeBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmNodeBinary")
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .field("elf_machine", &self.elf_machine)
            .finish()
    }
}

impl SwarmNodeBinary {
    /// Hashes `bytes`; this reads the whole binary, so call it from a blocking context
    /// or through [`SwarmNodeBinary::from_bytes_async`].
    pub fn from_bytes(bytes: Arc<[u8]>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let elf_machine = elf_machine(&bytes);
        Self {
            bytes,
            sha256,
            elf_machine,
        }
    }

    pub async fn from_bytes_async(bytes: Arc<[u8]>) -> Self {
        let fallback = bytes.clone();
        tokio::task::spawn_blocking(move || Self::from_bytes(bytes))
            .await
            .unwrap_or_else(|_| Self::from_bytes(fallback))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// `e_machine` of an ELF header, `None` when `bytes` is not ELF.
fn elf_machine(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let raw = [bytes[18], bytes[19]];
    Some(if bytes[5] == 2 {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    })
}

/// `e_machine` for a `uname -m`, and the name to show.
fn arch_elf_machine(uname: &str) -> Option<u16> {
    Some(match uname {
        "x86_64" | "amd64" => 62,
        "aarch64" | "arm64" => 183,
        "i386" | "i686" => 3,
        "armv6l" | "armv7l" | "armv8l" => 40,
        "riscv64" => 243,
        "ppc64le" | "ppc64" => 21,
        "s390x" => 22,
        _ => return None,
    })
}

fn elf_machine_name(machine: u16) -> String {
    match machine {
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        3 => "i386".into(),
        40 => "arm".into(),
        243 => "riscv64".into(),
        21 => "ppc64".into(),
        22 => "s390x".into(),
        other => format!("ELF machine {other}"),
    }
}

fn parse_sha256(out: &CommandOutput) -> Option<String> {
    if !out.success() {
        return None;
    }
    let word = out.stdout.split_whitespace().next()?;
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| word.to_ascii_lowercase())
}

/// What [`push_binary`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOutcome {
    /// The same bytes were already there.
    Unchanged,
    /// Another swarm-node binary was there and is replaced.
    Replaced,
    /// There was no swarm-node binary: the machine is new to swarmup.
    Installed,
}

impl BinaryOutcome {
    pub fn changed(self) -> bool {
        self != BinaryOutcome::Unchanged
    }
}

/// Puts the swarm-node binary at [`SWARM_NODE_BINARY`] (0755) unless the same bytes are
/// already there, and checks the result with `sha256sum` on the machine.
pub async fn push_binary(
    shell: &dyn RemoteShell,
    machine: &Machine,
    facts: &HostFacts,
    binary: &SwarmNodeBinary,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<BinaryOutcome, BootstrapError> {
    let Some(have) = binary.elf_machine else {
        return Err(BootstrapError::step(
            &machine.name,
            Step::Binary,
            "the swarm-node binary is not a Linux executable (ELF): pass the Linux build of swarm-node",
        ));
    };
    if let Some(want) = arch_elf_machine(&facts.arch) {
        if want != have {
            return Err(BootstrapError::step(
                &machine.name,
                Step::Binary,
                format!(
                    "the swarm-node binary is built for {} but the machine is {}: pass a swarm-node binary built for {}",
                    elf_machine_name(have),
                    facts.arch,
                    facts.arch
                ),
            ));
        }
    }
    let checksum = format!("sha256sum {SWARM_NODE_BINARY}");
    let current = parse_sha256(&run(shell, machine, Step::Binary, &checksum, QUICK).await?);
    if current.as_deref() == Some(binary.sha256()) {
        progress.machine(&machine.name, "swarm-node binary is up to date");
        return Ok(BinaryOutcome::Unchanged);
    }
    progress.machine(
        &machine.name,
        &format!(
            "uploading swarm-node ({:.1} MiB)",
            binary.bytes().len() as f64 / (1024.0 * 1024.0)
        ),
    );
    let out = shell
        .upload(SWARM_NODE_BINARY, binary.bytes(), 0o755, limit)
        .await
        .map_err(|e| shell_error(machine, Step::Binary, e))?;
    if !out.success() {
        return Err(BootstrapError::step(
            &machine.name,
            Step::Binary,
            format!(
                "writing {SWARM_NODE_BINARY} failed: {}",
                out.failure_summary()
            ),
        ));
    }
    let after = run(shell, machine, Step::Binary, &checksum, QUICK).await?;
    match parse_sha256(&after) {
        Some(sum) if sum == binary.sha256() => Ok(if current.is_some() {
            BinaryOutcome::Replaced
        } else {
            BinaryOutcome::Installed
        }),
        Some(sum) => Err(BootstrapError::step(
            &machine.name,
            Step::Binary,
            format!(
                "{SWARM_NODE_BINARY} has sha256 {sum} after the upload, expected {}: the transfer was damaged, run swarmup again",
                binary.sha256()
            ),
        )),
        None => Err(BootstrapError::step(
            &machine.name,
            Step::Binary,
            format!(
                "cannot check {SWARM_NODE_BINARY} after the upload: {}",
                after.failure_summary()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// service

/// Installs the swarm-node unit and makes sure the service runs. On systemd hosts the
/// unit goes to [`SYSTEMD_UNIT_PATH`] and the service is enabled and started, or
/// restarted when the unit changed. On lab nodes the unit goes to [`LAB_UNIT_PATH`],
/// where the lab's supervisor starts it, and restarts it when the file changes. The unit
/// names the binary's checksum, so a new binary is a changed unit on both.
pub async fn install_service(
    shell: &dyn RemoteShell,
    machine: &Machine,
    facts: &HostFacts,
    unit: &str,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    let path = if facts.lab {
        LAB_UNIT_PATH
    } else if facts.systemd {
        SYSTEMD_UNIT_PATH
    } else {
        return Err(BootstrapError::step(
            &machine.name,
            Step::Service,
            "the host runs no systemd and is not a swarmup lab node: swarm-node needs systemd to keep it running",
        ));
    };
    let current = run(shell, machine, Step::Service, &format!("cat {path}"), QUICK).await?;
    let unit_changed = !(current.success() && current.stdout == unit);
    if unit_changed {
        let out = shell
            .upload(path, unit.as_bytes(), 0o644, QUICK)
            .await
            .map_err(|e| shell_error(machine, Step::Service, e))?;
        if !out.success() {
            return Err(BootstrapError::step(
                &machine.name,
                Step::Service,
                format!("writing {path} failed: {}", out.failure_summary()),
            ));
        }
    }
    if facts.lab {
        progress.machine(
            &machine.name,
            "swarm-node unit handed to the lab supervisor",
        );
        return Ok(());
    }
    let script = if unit_changed {
        "systemctl daemon-reload && systemctl enable swarm-node.service && systemctl restart swarm-node.service"
    } else {
        // Starts a stopped service and leaves a running one alone.
        "systemctl daemon-reload && systemctl enable --now swarm-node.service"
    };
    run_ok(
        shell,
        machine,
        Step::Service,
        "starting swarm-node.service",
        script,
        Duration::from_secs(90),
    )
    .await?;
    progress.machine(
        &machine.name,
        if unit_changed {
            "swarm-node service (re)started"
        } else {
            "swarm-node service running"
        },
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the docker CLI on the machine

/// The script behind [`ensure_docker_context`]. Root's docker CLI config whoever logs in,
/// since only root may use the socket. An existing context is pointed at the socket again
/// but not made current again: a root who chose `docker context use default` keeps it.
pub fn docker_context_script() -> String {
    let description = "swarm-node: the swarm, and the local engine through it";
    let host = format!("host=unix://{SWARM_NODE_SOCKET}");
    format!(
        "export DOCKER_CONFIG=~root/.docker; \
         if docker context inspect {ctx} >/dev/null 2>&1; then \
         docker context update --description {d} --docker {h} {ctx} >/dev/null && echo context=kept; \
         else docker context create --description {d} --docker {h} {ctx} >/dev/null && \
         docker context use {ctx} >/dev/null && echo context=created; fi",
        ctx = DOCKER_CONTEXT,
        d = quote(description),
        h = quote(&host),
    )
}

/// Makes root's docker CLI on the machine talk to swarm-node instead of dockerd, so that
/// `ssh NODE` then `docker node ls`, `docker service ps` and `docker ps` behave as on a
/// Docker Swarm node: swarm-node serves the swarm and passes everything else to the
/// node's dockerd.
///
/// A docker context, made current for root, rather than `DOCKER_HOST` in /etc/profile.d:
/// a context reaches every way root runs the CLI (login shells, `ssh NODE docker ps`
/// without a login shell, `sudo -i`, cron), while a profile only reaches login shells; it
/// changes only the docker CLI, while `DOCKER_HOST` would also move every other program
/// that reads it; and it is Docker's own switch, visible in `docker context ls` and undone
/// with `docker context use default`. dockerd's own socket stays where it is, so tools
/// that use /var/run/docker.sock directly, swarm-node included, are unaffected.
pub async fn ensure_docker_context(
    shell: &dyn RemoteShell,
    machine: &Machine,
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    let out = run_ok(
        shell,
        machine,
        Step::DockerCli,
        "pointing root's docker CLI at swarm-node",
        &docker_context_script(),
        QUICK,
    )
    .await?;
    if out.stdout.contains("context=created") {
        progress.machine(
            &machine.name,
            &format!("docker CLI uses context {DOCKER_CONTEXT} (swarm-node)"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// firewall

/// Where the firewall file goes on this machine.
pub fn firewall_path(facts: &HostFacts) -> &'static str {
    if facts.lab {
        LAB_FIREWALL_PATH
    } else {
        FIREWALL_PATH
    }
}

/// Uploads the rendered nftables file and loads it with `nft -f`. On a lab node nft acts
/// inside the node's own network namespace. Refuses rules that would lock swarmup's own
/// SSH connection out.
pub async fn apply_firewall(
    shell: &dyn RemoteShell,
    machine: &Machine,
    facts: &HostFacts,
    rules: &str,
    ssh_allowed: &[Cidr],
    progress: &dyn Progress,
) -> Result<(), BootstrapError> {
    if let Some(client) = facts.ssh_client {
        if !ssh_allowed.is_empty() && !ssh_allowed.iter().any(|c| c.contains(client)) {
            return Err(BootstrapError::step(
                &machine.name,
                Step::Firewall,
                format!(
                    "the firewall would lock swarmup out: SSH from {client} (this computer, as the machine sees it) is not in the allowed SSH networks; add {client} to them"
                ),
            ));
        }
    }
    let has_nft = run(shell, machine, Step::Firewall, "command -v nft", QUICK).await?;
    if !has_nft.success() {
        let has_apt = run(shell, machine, Step::Firewall, "command -v apt-get", QUICK).await?;
        if facts.lab || !has_apt.success() {
            return Err(BootstrapError::step(
                &machine.name,
                Step::Firewall,
                "nft is not installed: install nftables on the host, or turn the node firewall off",
            ));
        }
        progress.machine(&machine.name, "installing nftables from the distribution");
        run_ok(
            shell,
            machine,
            Step::Firewall,
            "apt-get install nftables",
            "export DEBIAN_FRONTEND=noninteractive; apt-get -o DPkg::Lock::Timeout=300 -q install -y nftables",
            Duration::from_secs(300),
        )
        .await?;
    }
    let path = firewall_path(facts);
    let out = shell
        .upload(path, rules.as_bytes(), 0o600, QUICK)
        .await
        .map_err(|e| shell_error(machine, Step::Firewall, e))?;
    if !out.success() {
        return Err(BootstrapError::step(
            &machine.name,
            Step::Firewall,
            format!("writing {path} failed: {}", out.failure_summary()),
        ));
    }
    run_ok(
        shell,
        machine,
        Step::Firewall,
        &format!("nft -f {path}"),
        &format!("nft -f {}", quote(path)),
        QUICK,
    )
    .await?;
    progress.machine(&machine.name, "firewall applied");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// swarm

/// The client certificate `swarm-node client-cert` prints, for the docker CLI.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn swarm_node(args: &str) -> String {
    format!("{SWARM_NODE_BINARY} {args}")
}

/// Asks the local daemon for its status. `Err` says why there is none: the daemon is
/// not up, the connection failed, or it speaks another contract version.
pub async fn swarm_status(shell: &dyn RemoteShell, timeout: Duration) -> Result<Status, String> {
    let out = shell
        .run(&swarm_node("status --json"), timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("swarm-node status: {}", out.failure_summary()));
    }
    Status::parse(&out.stdout).map_err(|e| format!("swarm-node status: {e}"))
}

/// Whether a failed `init` or `join` failed because the node is in a swarm already: the
/// exit code says so (`swarm_contract::Exit`).
fn already_in_swarm(out: &crate::shell::CommandOutput) -> bool {
    Exit::from_code(out.status) == Exit::AlreadyInSwarm
}

/// Whether `swarm_init` created the swarm or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialized,
}

/// When swarmup reaches a manager on another address than the one the swarm advertises
/// (a droplet's public address), the manager's certificate must name it too, so the
/// docker CLI can verify the manager it talks to from outside the private network. Only
/// managers may ask for it: the CA refuses extra addresses to workers, which serve no one.
fn cert_san_flag(machine: &Machine, advertise: IpAddr) -> String {
    if machine.role != swarmup_machine::Role::Manager || machine.ssh.host == advertise {
        String::new()
    } else {
        format!(" --cert-san {}", machine.ssh.host)
    }
}

/// Creates the swarm on `machine` advertising `advertise`. A node that is already part
/// of a swarm counts as done. Retries while the daemon is still starting.
pub async fn swarm_init(
    shell: &dyn RemoteShell,
    machine: &Machine,
    advertise: IpAddr,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<InitOutcome, BootstrapError> {
    let waiting_for = format!("waiting for swarm-node init on {}", machine.name);
    progress.machine(
        &machine.name,
        &format!("creating the swarm (advertising {advertise})"),
    );
    let script = swarm_node(&format!(
        "init --advertise-addr {advertise}{}",
        cert_san_flag(machine, advertise)
    ));
    retry(&machine.name, Step::Init, &waiting_for, limit, |left| {
        let script = &script;
        async move {
            let out = run(
                shell,
                machine,
                Step::Init,
                script,
                left.min(Duration::from_secs(60)),
            )
            .await?;
            Ok(if out.success() {
                Attempt::Done(InitOutcome::Created)
            } else if already_in_swarm(&out) {
                Attempt::Done(InitOutcome::AlreadyInitialized)
            } else {
                Attempt::Again(out.failure_summary())
            })
        }
    })
    .await
}

/// The join tokens of a swarm.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens { .. }")
    }
}

/// Reads both join tokens from a manager, waiting until it can hand them out.
pub async fn join_tokens(
    shell: &dyn RemoteShell,
    machine: &Machine,
    limit: Duration,
) -> Result<JoinTokens, BootstrapError> {
    join_tokens_with(shell, machine, limit, |role| {
        swarm_node(&format!("join-token -q {role}"))
    })
    .await
}

/// Reads both join tokens with `command` (the script printing one role's token alone),
/// waiting until the manager can hand them out: swarm-node's and Docker's alike.
pub async fn join_tokens_with(
    shell: &dyn RemoteShell,
    machine: &Machine,
    limit: Duration,
    command: impl Fn(Role) -> String,
) -> Result<JoinTokens, BootstrapError> {
    let waiting_for = format!("waiting for the join tokens on {}", machine.name);
    let command = &command;
    retry(
        &machine.name,
        Step::Join,
        &waiting_for,
        limit,
        |left| async move {
            let mut tokens = Vec::with_capacity(2);
            for role in [Role::Worker, Role::Manager] {
                let script = command(role);
                let out = run(shell, machine, Step::Join, &script, left.min(QUICK)).await?;
                let token = out.stdout.trim();
                if !out.success() || token.is_empty() || token.contains(char::is_whitespace) {
                    return Ok(Attempt::Again(format!(
                        "{role} join token: {}",
                        out.failure_summary()
                    )));
                }
                tokens.push(token.to_string());
            }
            let manager = tokens.pop().expect("two tokens");
            let worker = tokens.pop().expect("two tokens");
            Ok(Attempt::Done(JoinTokens { worker, manager }))
        },
    )
    .await
}

/// Whether `swarm_join` joined the node or found it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    AlreadyJoined,
}

/// Joins `machine` to the swarm through `manager` (`IP:2377`). A node that is already
/// part of a swarm counts as done.
pub async fn swarm_join(
    shell: &dyn RemoteShell,
    machine: &Machine,
    token: &str,
    advertise: IpAddr,
    manager: SocketAddr,
    limit: Duration,
    progress: &dyn Progress,
) -> Result<JoinOutcome, BootstrapError> {
    if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c == '\'') {
        return Err(BootstrapError::step(
            &machine.name,
            Step::Join,
            "the join token from the manager is malformed",
        ));
    }
    let waiting_for = format!(
        "waiting for {} to join the swarm through {manager}",
        machine.name
    );
    progress.machine(
        &machine.name,
        &format!("joining the swarm as {} through {manager}", machine.role),
    );
    let script = swarm_node(&format!(
        "join --token {} --advertise-addr {advertise}{} {manager}",
        quote(token),
        cert_san_flag(machine, advertise)
    ));
    retry(&machine.name, Step::Join, &waiting_for, limit, |left| {
        let script = &script;
        async move {
            let out = run(
                shell,
                machine,
                Step::Join,
                script,
                left.min(Duration::from_secs(120)),
            )
            .await?;
            // The token is in the command line, never in a message.
            Ok(if out.success() {
                Attempt::Done(JoinOutcome::Joined)
            } else if already_in_swarm(&out) {
                Attempt::Done(JoinOutcome::AlreadyJoined)
            } else {
                Attempt::Again(out.failure_summary().replace(token, "<token>"))
            })
        }
    })
    .await
}

/// Lists the swarm's nodes on a manager.
pub async fn swarm_nodes(
    shell: &dyn RemoteShell,
    timeout: Duration,
) -> Result<Vec<NodeEntry>, String> {
    let out = shell
        .run(&swarm_node("nodes --json"), timeout)
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("swarm-node nodes: {}", out.failure_summary()));
    }
    NodeList::parse(&out.stdout)
        .map(|list| list.nodes)
        .map_err(|e| format!("swarm-node nodes: {e}"))
}

/// A machine whose swarm node [`wait_ready`] looks for: by node id when known, else by
/// hostname (the machine name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedNode {
    pub machine: String,
    pub node_id: Option<String>,
}

fn find_node<'a>(nodes: &'a [NodeEntry], expected: &ExpectedNode) -> Option<&'a NodeEntry> {
    let by_id = expected
        .node_id
        .as_deref()
        .and_then(|id| nodes.iter().find(|n| n.id == id));
    // A machine that was replaced leaves its old, down entry under the same hostname.
    by_id.or_else(|| {
        let same_name: Vec<&NodeEntry> = nodes
            .iter()
            .filter(|n| n.hostname == expected.machine)
            .collect();
        same_name
            .iter()
            .find(|n| n.is_ready())
            .or(same_name.first())
            .copied()
    })
}

/// Waits on `manager` until every expected node is in the node list and ready.
/// Returns their entries in the order of `expected`.
pub async fn wait_ready(
    shell: &dyn RemoteShell,
    manager: &Machine,
    expected: &[ExpectedNode],
    limit: Duration,
    progress: &dyn Progress,
) -> Result<Vec<NodeEntry>, BootstrapError> {
    let waiting_for = format!(
        "waiting on {} for {} node(s) to be ready",
        manager.name,
        expected.len()
    );
    progress.machine(&manager.name, &waiting_for);
    retry(
        &manager.name,
        Step::Ready,
        &waiting_for,
        limit,
        |left| async move {
            let nodes = match swarm_nodes(shell, left.min(QUICK)).await {
                Ok(nodes) => nodes,
                Err(why) => return Ok(Attempt::Again(why)),
            };
            let mut found = Vec::with_capacity(expected.len());
            let mut pending = Vec::new();
            for e in expected {
                match find_node(&nodes, e) {
                    Some(n) if n.is_ready() => found.push(n.clone()),
                    Some(n) => pending.push(format!("{} ({})", e.machine, n.state.as_str())),
                    None => pending.push(format!("{} (not in the node list)", e.machine)),
                }
            }
            Ok(if pending.is_empty() {
                Attempt::Done(found)
            } else {
                Attempt::Again(format!("not ready: {}", pending.join(", ")))
            })
        },
    )
    .await
}

/// Reads the client certificate from a manager.
pub async fn client_cert(
    shell: &dyn RemoteShell,
    machine: &Machine,
) -> Result<ClientCert, BootstrapError> {
    let out = run_ok(
        shell,
        machine,
        Step::ClientCert,
        "swarm-node client-cert",
        &swarm_node("client-cert"),
        QUICK,
    )
    .await?;
    serde_json::from_str(out.stdout.trim()).map_err(|e| {
        BootstrapError::step(
            &machine.name,
            Step::ClientCert,
            format!(
                "swarm-node client-cert printed something that is not a certificate bundle: {e}"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_managers_ask_for_their_public_address_in_the_certificate() {
        let machine = |role, host: &str| Machine {
            name: "n".into(),
            role,
            provider_id: "n".into(),
            private_addr: "10.0.0.2".parse().unwrap(),
            ssh: swarmup_machine::SshEndpoint {
                host: host.parse().unwrap(),
                port: 22,
                user: "root".into(),
            },
            power: swarmup_machine::PowerState::Running,
        };
        let private: IpAddr = "10.0.0.2".parse().unwrap();
        use swarmup_machine::Role;
        assert_eq!(
            cert_san_flag(&machine(Role::Manager, "203.0.113.5"), private),
            " --cert-san 203.0.113.5"
        );
        assert_eq!(
            cert_san_flag(&machine(Role::Manager, "10.0.0.2"), private),
            ""
        );
        assert_eq!(
            cert_san_flag(&machine(Role::Worker, "203.0.113.5"), private),
            ""
        );
    }

    #[test]
    fn elf_header_machine() {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[5] = 1;
        header[18..20].copy_from_slice(&62u16.to_le_bytes());
        assert_eq!(elf_machine(&header), Some(62));
        header[5] = 2;
        header[18..20].copy_from_slice(&183u16.to_be_bytes());
        assert_eq!(elf_machine(&header), Some(183));
        assert_eq!(elf_machine(b"\xcf\xfa\xed\xfe macho"), None);
        assert_eq!(arch_elf_machine("x86_64"), Some(62));
        assert_eq!(arch_elf_machine("aarch64"), Some(183));
    }

    #[test]
    fn sha256_parsing() {
        let sum = "a".repeat(64);
        assert_eq!(
            parse_sha256(&CommandOutput::ok(format!(
                "{sum}  /var/lib/swarmup/swarm-node\n"
            ))),
            Some(sum)
        );
        assert_eq!(parse_sha256(&CommandOutput::ok("nope")), None);
        assert_eq!(
            parse_sha256(&CommandOutput::failed(1, "No such file")),
            None
        );
    }

    #[test]
    fn finds_nodes_by_id_then_ready_hostname() {
        let entry = |id: &str, state| NodeEntry {
            id: id.into(),
            hostname: "c1-node2".into(),
            role: swarm_contract::Role::Worker,
            state,
            availability: swarm_contract::Availability::Active,
            manager_status: None,
        };
        let nodes = vec![
            entry("old", swarm_contract::NodeState::Down),
            entry("new", swarm_contract::NodeState::Ready),
        ];
        let by_name = ExpectedNode {
            machine: "c1-node2".into(),
            node_id: None,
        };
        assert_eq!(find_node(&nodes, &by_name).unwrap().id, "new");
        let by_id = ExpectedNode {
            machine: "whatever".into(),
            node_id: Some("old".into()),
        };
        assert_eq!(find_node(&nodes, &by_id).unwrap().id, "old");
    }
}
