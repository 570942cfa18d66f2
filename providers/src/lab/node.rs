//! The init of a lab node.
//!
//! The lab provider starts this program as PID 1 of a fresh PID, UTS, IPC and mount
//! namespace inside the node's network namespace. It makes the node look like a machine of
//! its own (private /var/lib, /root, /tmp, /etc/docker, a fresh /run and /proc, its own
//! hostname), then runs sshd, dockerd and the services dropped into its units directory,
//! restarting them the way systemd would, and reaps every orphan as PID 1 must.
//!
//! The swarmup binary runs the same code through a hidden subcommand; the standalone
//! `swarmup-lab-node` binary exists for tests and for hosts without swarmup installed.

// Elsewhere than Linux only the argument parsing is reachable.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::layout::inside;
use super::supervisor::{self, Action, Supervisor};
use super::unit::{self, ExitKind, KillMode, RestartPolicy, Unit};

/// What the provider passes to a node init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeArgs {
    /// The node's name and hostname.
    pub name: String,
    /// The node's host-side state directory (see [`super::layout::NodeLayout`]).
    pub node_dir: PathBuf,
    /// The cluster's hosts file, bound onto /etc/hosts.
    pub hosts_file: PathBuf,
}

/// Why a node init stopped or refused to start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A lab node's /etc/resolv.conf: no name server, as the lab has none.
pub(crate) const LAB_RESOLV_CONF: &str =
    "# Written by swarmup's lab: lab nodes have no upstream name server.\n";

const USAGE: &str = "usage: swarmup-lab-node --name NODE --node-dir DIR --hosts FILE (started by the lab provider, not by hand)";

impl NodeArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--name".into(),
            self.name.clone(),
            "--node-dir".into(),
            self.node_dir.to_string_lossy().into_owned(),
            "--hosts".into(),
            self.hosts_file.to_string_lossy().into_owned(),
        ]
    }

    pub fn parse(args: &[String]) -> Result<NodeArgs, NodeError> {
        let (mut name, mut node_dir, mut hosts) = (None, None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let slot = match flag.as_str() {
                "--name" => &mut name,
                "--node-dir" => &mut node_dir,
                "--hosts" => &mut hosts,
                other => {
                    return Err(NodeError::Usage(format!(
                        "unknown argument {other:?}; {USAGE}"
                    )))
                }
            };
            let Some(value) = it.next() else {
                return Err(NodeError::Usage(format!("{flag} needs a value; {USAGE}")));
            };
            *slot = Some(value.clone());
        }
        match (name, node_dir, hosts) {
            (Some(name), Some(dir), Some(hosts)) => Ok(NodeArgs {
                name,
                node_dir: PathBuf::from(dir),
                hosts_file: PathBuf::from(hosts),
            }),
            _ => Err(NodeError::Usage(USAGE.to_string())),
        }
    }
}

/// Runs the node init until SIGTERM (a clean shutdown) or SIGKILL (power off).
pub async fn run(args: Vec<String>) -> Result<(), NodeError> {
    let args = NodeArgs::parse(&args)?;
    #[cfg(target_os = "linux")]
    {
        let prepared = args.clone();
        tokio::task::spawn_blocking(move || sys::prepare(&prepared))
            .await
            .map_err(|e| NodeError::Refused(format!("node setup panicked: {e}")))??;
        say(&format!("node {} is up", args.name));
        supervise().await
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(NodeError::Refused(format!(
            "lab node {} cannot start: lab nodes need Linux namespaces",
            args.name
        )))
    }
}

/// The environment every service starts with, like systemd's manager environment.
fn base_env() -> BTreeMap<String, String> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("LANG", "C.UTF-8"),
        ("HOME", "/root"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn builtin(argv: &[&str], stop_timeout: Duration) -> Unit {
    Unit {
        exec_start: argv.iter().map(|s| s.to_string()).collect(),
        argv0: None,
        ignore_failure: false,
        no_expand: true,
        environment: Vec::new(),
        environment_files: Vec::new(),
        working_directory: None,
        restart: RestartPolicy::Always,
        restart_sec: Duration::from_secs(1),
        timeout_stop: Some(stop_timeout),
        // Like Debian's ssh.service and docker.service: sessions and containers are not
        // the daemon's process group to kill.
        kill_mode: KillMode::Process,
        umask: unit::DEFAULT_UMASK,
        warnings: Vec::new(),
    }
}

pub(crate) fn sshd_config() -> String {
    format!(
        "# written by the swarmup lab node init at every boot\n\
         Port 22\n\
         HostKey {key}\n\
         PidFile /run/sshd.pid\n\
         AuthorizedKeysFile .ssh/authorized_keys\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM yes\n\
         PrintMotd no\n\
         AcceptEnv LANG LC_*\n\
         Subsystem sftp internal-sftp\n\
         # Last, so that Match blocks there (a workshop student's login) end the file.\n\
         Include {dropins}/*.conf\n",
        key = inside::SSH_HOST_KEY,
        dropins = inside::SSHD_DROPIN_DIR,
    )
}

fn sshd_unit() -> Unit {
    builtin(
        &["/usr/sbin/sshd", "-D", "-e", "-f", inside::SSHD_CONFIG],
        Duration::from_secs(10),
    )
}

fn dockerd_unit() -> Unit {
    builtin(
        &[
            "dockerd",
            "--data-root",
            inside::DOCKER_DATA,
            "--exec-root",
            "/run/docker",
            "-H",
            "unix:///var/run/docker.sock",
            "--pidfile",
            "/run/docker.pid",
        ],
        // dockerd itself gives containers 10 s to stop before it exits.
        Duration::from_secs(20),
    )
}

async fn supervise() -> Result<(), NodeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|source| NodeError::Io {
            what: format!("cannot handle {name}"),
            source,
        })
    };
    let mut sigchld = sig(SignalKind::child(), "SIGCHLD")?;
    let mut sigterm = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = sig(SignalKind::interrupt(), "SIGINT")?;

    let mut node = Executor {
        sup: Supervisor::new(),
        env: base_env(),
        last_status: String::new(),
    };
    let actions = node.sup.add_builtin("sshd", sshd_unit());
    node.apply(actions).await;
    let actions = node.sup.add_builtin("dockerd", dockerd_unit());
    node.apply(actions).await;

    let scan_every = Duration::from_millis(250);
    let mut next_scan = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_scan {
            let files = read_units(Path::new(inside::UNITS_DIR)).await;
            let actions = node.sup.sync_units(&files, now);
            node.apply(actions).await;
            next_scan = now + scan_every;
        }
        node.reap().await;
        let actions = node.sup.tick(Instant::now());
        node.apply(actions).await;
        node.write_status().await;
        let wake = node
            .sup
            .next_deadline()
            .map_or(next_scan, |d| d.min(next_scan));
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    say("stopping services");
    let actions = node.sup.shutdown(Instant::now());
    node.apply(actions).await;
    let give_up = Instant::now() + Duration::from_secs(30);
    while !node.sup.all_stopped() && Instant::now() < give_up {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        node.reap().await;
        let actions = node.sup.tick(Instant::now());
        node.apply(actions).await;
    }
    node.write_status().await;
    // As PID 1 this reaches every process left in the node (ssh sessions, strays).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
    let reap_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < reap_until && node.reap().await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say("stopped");
    Ok(())
}

struct Executor {
    sup: Supervisor,
    env: BTreeMap<String, String>,
    last_status: String,
}

impl Executor {
    async fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Log { name, line } => service_log(&name, &line).await,
                Action::Signal { pid, group, kill } => signal(pid, group, kill),
                Action::Start { name, unit } => {
                    let outcome = start(&name, &unit, &self.env).await;
                    queue.extend(self.sup.started(&name, outcome, Instant::now()));
                }
            }
        }
    }

    /// Collects every exited child; returns whether any child is left.
    async fn reap(&mut self) -> bool {
        use nix::errno::Errno;
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            let exit = match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitKind::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitKind::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) => return true,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return false,
            };
            let pid = u32::try_from(exit.0.as_raw()).unwrap_or(0);
            let actions = self.sup.exited(pid, exit.1, Instant::now());
            self.apply(actions).await;
        }
    }

    async fn write_status(&mut self) {
        let status = serde_json::to_string_pretty(&self.sup.status()).unwrap_or_default();
        if status == self.last_status {
            return;
        }
        let tmp = format!("{}.tmp", inside::STATUS_FILE);
        if tokio::fs::write(&tmp, format!("{status}\n")).await.is_ok()
            && tokio::fs::rename(&tmp, inside::STATUS_FILE).await.is_ok()
        {
            self.last_status = status;
        }
    }
}

/// The unit files now in the units directory. Only `NAME.service` counts, so a writer can
/// prepare `NAME.service.tmp` and rename it into place.
async fn read_units(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return files;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(supervisor::UNIT_SUFFIX).unwrap_or("");
        if stem.is_empty() || name.starts_with('.') {
            continue;
        }
        // A file that vanished between listing and reading is simply gone.
        if let Ok(content) = tokio::fs::read(entry.path()).await {
            files.insert(name, content);
        }
    }
    files
}

async fn start(name: &str, unit: &Unit, base: &BTreeMap<String, String>) -> Result<u32, String> {
    let mut env = base.clone();
    env.extend(unit.environment.iter().cloned());
    for (path, optional) in &unit.environment_files {
        match tokio::fs::read_to_string(path).await {
            Ok(text) => env.extend(unit::parse_environment_file(&text)),
            Err(_) if *optional => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    let argv = if unit.no_expand {
        unit.exec_start.clone()
    } else {
        unit::expand(&unit.exec_start, &env)
    };
    if argv.is_empty() {
        return Err("ExecStart= expands to nothing".into());
    }
    let argv = unit::with_umask(argv, unit.umask);
    let cwd = match &unit.working_directory {
        None => PathBuf::from("/"),
        Some((dir, optional)) => match tokio::fs::metadata(dir).await {
            Ok(m) if m.is_dir() => dir.clone(),
            _ if *optional => PathBuf::from("/"),
            _ => {
                return Err(format!(
                    "working directory {} does not exist",
                    dir.display()
                ))
            }
        },
    };
    let log_path = log_path(name);
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?
        .into_std()
        .await;
    let argv0 = unit
        .argv0
        .clone()
        .filter(|_| unit.umask == unit::DEFAULT_UMASK);
    let spawned = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group stands in for the cgroup systemd would kill.
            .process_group(0);
        if let Some(argv0) = argv0 {
            cmd.arg0(argv0);
        }
        // std rather than tokio::process: as PID 1 the init reaps every child with
        // waitpid(-1), which would steal exit statuses from tokio's per-child reaper.
        cmd.spawn().map(|child| child.id())
    })
    .await
    .map_err(|e| format!("spawn task failed: {e}"))?;
    spawned.map_err(|e| format!("{}: {e}", unit.exec_start[0]))
}

fn signal(pid: u32, group: bool, kill: bool) {
    use nix::sys::signal::{kill as send, Signal};
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    let target = nix::unistd::Pid::from_raw(if group { -pid } else { pid });
    let sig = if kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    // ESRCH only means it is already gone.
    let _ = send(target, sig);
}

fn log_path(service: &str) -> PathBuf {
    Path::new(inside::LOGS_DIR).join(format!("{}.log", supervisor::log_name(service)))
}

async fn service_log(service: &str, line: &str) {
    use tokio::io::AsyncWriteExt;
    let text = format!("{} swarmup-lab: {line}\n", timestamp());
    if let Ok(mut f) = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(service))
        .await
    {
        let _ = f.write_all(text.as_bytes()).await;
    }
    say(&format!("{service}: {line}"));
}

/// The init's own log line, on its stderr (the host's init.log).
fn say(line: &str) {
    eprintln!("{} {line}", timestamp());
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now)
}

fn format_utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(target_os = "linux")]
mod sys {
    //! Turning a fresh set of namespaces into a node. Runs once, before any service.

    use std::fs;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use nix::fcntl::{open, OFlag};
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sys::stat::Mode;

    use super::super::layout::{inside, mount_point, NodeLayout, LAYERED_TREES};
    use super::{NodeArgs, NodeError};

    /// Host paths bound over these are hidden behind node-private content.
    const PRIVATE_TREES: [&str; 6] = ["/run", "/var/lib", "/var/log", "/var/tmp", "/tmp", "/root"];

    pub(super) fn prepare(args: &NodeArgs) -> Result<(), NodeError> {
        refuse_outside_a_fresh_namespace(&args.name)?;
        // Nothing below may reach the host's mount table.
        mount_(
            None::<&str>,
            "/",
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
            "make / private",
        )?;

        let layout = NodeLayout::new(args.node_dir.clone());
        // Opened before anything is covered: the state root may itself live under a tree
        // that is about to be replaced (a test's root under /tmp, the default under /var/lib).
        let var_lib = open_path(&layout.var_lib())?;
        let root_home = open_path(&layout.root_home())?;
        let tmp = open_path(&layout.tmp())?;
        let var_log = open_path(&layout.var_log())?;
        let var_tmp = open_path(&layout.var_tmp())?;
        let mut layers = Vec::new();
        for tree in LAYERED_TREES {
            let (upper, work) = layout.layer(tree);
            if Path::new(tree).is_dir() {
                layers.push((tree, open_path(&upper)?, open_path(&work)?));
            }
        }
        let etc_docker = open_path(&layout.etc_docker())?;
        let hostname = open_path(&layout.hostname())?;
        let machine_id = open_path(&layout.machine_id())?;
        let hosts = open_path(&args.hosts_file)?;
        let dpkg = open_path(Path::new(inside::DPKG_DIR)).ok();

        mount_(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
            "mount /proc",
        )?;
        detach_below(&PRIVATE_TREES)?;

        mount_(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
            "mount a tmpfs on /run",
        )?;
        bind(&var_lib, "/var/lib")?;
        bind(&root_home, "/root")?;
        bind(&tmp, "/tmp")?;
        bind(&var_log, "/var/log")?;
        bind(&var_tmp, "/var/tmp")?;
        for (tree, upper, work) in &layers {
            let options = format!(
                "lowerdir={tree},upperdir=/proc/self/fd/{},workdir=/proc/self/fd/{}",
                upper.as_raw_fd(),
                work.as_raw_fd()
            );
            let layered = mount(
                Some("overlay"),
                *tree,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            );
            if let Err(e) = layered {
                // Still a working node, only less private; say so rather than fail.
                super::say(&format!(
                    "warning: {tree} stays shared with the host: cannot mount an overlay ({e})"
                ));
            } else if *tree == "/etc" {
                // A lab node reaches nothing beyond the lab, so it has no upstream name
                // server: service DNS then answers unknown names at once instead of
                // forwarding them to a server the node cannot (and must not) reach.
                let _ = fs::remove_file("/etc/resolv.conf");
                write("/etc/resolv.conf", super::LAB_RESOLV_CONF)?;
            }
        }
        if let Some(dpkg) = dpkg {
            mkdir(inside::DPKG_DIR, 0o755)?;
            bind(&dpkg, inside::DPKG_DIR)?;
            mount_(
                None::<&str>,
                inside::DPKG_DIR,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
                "make /var/lib/dpkg read-only",
            )?;
        }
        if !Path::new("/etc/docker").is_dir() {
            // The package normally ships it; created on the shared /etc only as a mount point.
            mkdir("/etc/docker", 0o755)?;
        }
        bind(&etc_docker, "/etc/docker")?;
        for (fd, target) in [
            (&hostname, "/etc/hostname"),
            (&machine_id, "/etc/machine-id"),
            (&hosts, "/etc/hosts"),
        ] {
            if Path::new(target).is_file() {
                bind(fd, target)?;
            }
        }
        nix::unistd::sethostname(&args.name).map_err(|source| NodeError::Sys {
            what: format!("cannot set hostname {}", args.name),
            source,
        })?;

        mkdir("/run/sshd", 0o755)?;
        mkdir("/run/lock", 0o1777)?;
        mkdir("/run/swarmup-lab", 0o755)?;
        write("/run/utmp", "")?;
        write(inside::SSHD_CONFIG, &super::sshd_config())?;
        write(inside::MARKER, &format!("{}\n", args.name))?;
        for dir in [inside::UNITS_DIR, inside::LOGS_DIR] {
            fs::create_dir_all(dir).map_err(|source| NodeError::Io {
                what: format!("cannot create {dir}"),
                source,
            })?;
        }
        for dir in ["/tmp", "/var/tmp"] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).map_err(|source| {
                NodeError::Io {
                    what: format!("cannot open up {dir}"),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Mount changes made on the host itself would be a disaster; only PID 1 of a PID
    /// namespace whose mount namespace differs from its launcher's may go on.
    fn refuse_outside_a_fresh_namespace(name: &str) -> Result<(), NodeError> {
        let refuse = |why: &str| {
            Err(NodeError::Refused(format!(
                "lab node {name} refuses to start: {why}; only the lab provider starts lab nodes"
            )))
        };
        if nix::unistd::getpid().as_raw() != 1 {
            return refuse("not PID 1 of its own PID namespace");
        }
        // /proc is still the host's here, so parent PIDs are the host's. `unshare` itself
        // shares the new mount namespace; whoever launched it must not.
        let Ok(own) = fs::read_link("/proc/self/ns/mnt") else {
            return refuse("its mount namespace cannot be read");
        };
        let mut pid = parent_of("self");
        for _ in 0..64 {
            let Some(ancestor) = pid.filter(|p| *p > 0) else {
                break;
            };
            if let Ok(theirs) = fs::read_link(format!("/proc/{ancestor}/ns/mnt")) {
                if theirs != own {
                    return Ok(());
                }
            }
            pid = parent_of(&ancestor.to_string());
        }
        refuse("it shares its launcher's mount namespace")
    }

    fn parent_of(pid: &str) -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 1..];
        after.split_whitespace().nth(1)?.parse().ok()
    }

    fn open_path(path: &Path) -> Result<OwnedFd, NodeError> {
        open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(|source| {
            NodeError::Sys {
                what: format!("cannot open {}", path.display()),
                source,
            }
        })
    }

    fn bind(source: &OwnedFd, target: &str) -> Result<(), NodeError> {
        let from = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
        mount_(
            Some(from.as_path()),
            target,
            None,
            MsFlags::MS_BIND,
            None,
            &format!("bind onto {target}"),
        )
    }

    fn mount_(
        source: Option<&(impl AsRef<Path> + ?Sized)>,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
        what: &str,
    ) -> Result<(), NodeError> {
        mount(source.map(|s| s.as_ref()), target, fstype, flags, data).map_err(|source| {
            NodeError::Sys {
                what: format!("cannot {what}"),
                source,
            }
        })
    }

    /// Detaches every mount at or below the given trees, deepest first. Besides making
    /// room, this drops this namespace's copies of host mounts, which would otherwise pin
    /// resources the host wants back (another cluster's network namespaces in /run/netns).
    fn detach_below(trees: &[&str]) -> Result<(), NodeError> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(|source| NodeError::Io {
            what: "cannot read /proc/self/mountinfo".into(),
            source,
        })?;
        let mut points: Vec<String> = info
            .lines()
            .filter_map(mount_point)
            .filter(|p| {
                trees
                    .iter()
                    .any(|t| p == t || p.starts_with(&format!("{t}/")))
            })
            .collect();
        points.reverse();
        points.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
        for point in points {
            // EINVAL: already gone with a parent.
            let _ = umount2(point.as_str(), MntFlags::MNT_DETACH);
        }
        Ok(())
    }

    fn mkdir(path: &str, mode: u32) -> Result<(), NodeError> {
        let io = |source| NodeError::Io {
            what: format!("cannot create {path}"),
            source,
        };
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)
    }

    fn write(path: &str, content: &str) -> Result<(), NodeError> {
        fs::write(path, content).map_err(|source| NodeError::Io {
            what: format!("cannot write {path}"),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let args = NodeArgs {
            name: "web-node1".into(),
            node_dir: PathBuf::from("/var/lib/swarmup/lab/web/web-node1"),
            hosts_file: PathBuf::from("/var/lib/swarmup/lab/web/hosts"),
        };
        assert_eq!(NodeArgs::parse(&args.to_args()).unwrap(), args);
        let err = NodeArgs::parse(&["--name".into()]).unwrap_err().to_string();
        assert!(err.starts_with("--name needs a value"), "{err}");
        assert!(NodeArgs::parse(&["--bogus".into(), "x".into()]).is_err());
        assert!(NodeArgs::parse(&[]).is_err());
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc(Duration::from_millis(1_709_251_199_250)),
            "2024-02-29T23:59:59.250Z"
        );
    }

    #[test]
    fn builtin_services() {
        let sshd = sshd_unit();
        assert_eq!(sshd.exec_start[0], "/usr/sbin/sshd");
        assert_eq!(sshd.kill_mode, KillMode::Process);
        assert!(sshd_config().contains("HostKey /var/lib/swarmup-lab/ssh_host_ed25519_key\n"));
        let dockerd = dockerd_unit();
        assert!(dockerd
            .exec_start
            .contains(&"unix:///var/run/docker.sock".to_string()));
        assert_eq!(dockerd.restart, RestartPolicy::Always);
    }
}
