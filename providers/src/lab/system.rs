//! The host-side side effects of the lab provider: commands, processes, probes, locks.
//!
//! [`RealSystem`] acts on this host; tests use a fake that simulates `ip` and `iptables`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::layout::{mount_point, parse_proc_stat, ProcessRef};

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A process as `/proc` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcState {
    pub start_time: u64,
    pub zombie: bool,
}

/// Held while the lab changes host state; released on drop.
pub struct LabLock(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl LabLock {
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Self {
        LabLock(Box::new(guard))
    }
}

impl fmt::Debug for LabLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LabLock")
    }
}

/// Everything the lab provider does to the host.
#[async_trait::async_trait]
pub trait LabSystem: Send + Sync + fmt::Debug {
    fn is_root(&self) -> bool;
    /// Where `program` would be run from, if anywhere.
    async fn find_program(&self, program: &Path) -> Option<PathBuf>;
    /// Runs a command to completion.
    async fn run(&self, program: &str, args: &[String]) -> io::Result<CommandOutput>;
    /// Starts `argv` detached (stdout and stderr appended to `log`), which forks the node
    /// init, and returns the init as the host sees it.
    async fn spawn_init(&self, argv: &[String], log: &Path) -> io::Result<ProcessRef>;
    /// Starts a host daemon (the lab registry) detached from the caller, in a process
    /// group of its own, stdout and stderr appended to `log`.
    async fn spawn_daemon(&self, argv: &[String], log: &Path) -> io::Result<ProcessRef>;
    async fn process(&self, pid: u32) -> Option<ProcState>;
    /// SIGKILL.
    fn kill(&self, pid: u32) -> io::Result<()>;
    /// Whether an SSH server greets on `addr`.
    async fn ssh_answers(&self, addr: SocketAddr) -> bool;
    /// Whether a Docker Engine answers `/_ping` on the Unix socket.
    async fn docker_answers(&self, socket: &Path) -> bool;
    /// Whether a registry answers `GET /v2/` on `addr`.
    async fn registry_answers(&self, addr: SocketAddr) -> bool;
    /// Names in /run/netns.
    async fn netns_names(&self) -> io::Result<Vec<String>>;
    /// Mount points in the host's mount namespace.
    async fn mount_points(&self) -> io::Result<Vec<PathBuf>>;
    /// Lazy unmount.
    fn unmount(&self, path: &Path) -> io::Result<()>;
    /// An exclusive lock on `path`, waiting for it.
    async fn lock(&self, path: &Path) -> io::Result<LabLock>;
    /// Removes the (empty) cgroups Docker left for these container IDs; returns for how
    /// many containers something was removed.
    async fn remove_container_cgroups(&self, ids: &[String]) -> usize;
}

/// Directories searched after the caller's PATH: root's tools live in sbin.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH the lab runs its tools with.
pub fn lab_path() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{SYSTEM_PATH}"),
        _ => SYSTEM_PATH.to_string(),
    }
}

/// Acts on this host.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSystem;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const INIT_FORK_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl LabSystem for RealSystem {
    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    async fn find_program(&self, program: &Path) -> Option<PathBuf> {
        let is_exec = |m: std::fs::Metadata| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        };
        if program.components().count() > 1 {
            let meta = tokio::fs::metadata(program).await.ok()?;
            return is_exec(meta).then(|| program.to_path_buf());
        }
        for dir in lab_path().split(':').filter(|d| !d.is_empty()) {
            let candidate = Path::new(dir).join(program);
            if let Ok(meta) = tokio::fs::metadata(&candidate).await {
                if is_exec(meta) {
                    return Some(candidate);
                }
            }
        }
        None
    }

    async fn run(&self, program: &str, args: &[String]) -> io::Result<CommandOutput> {
        let child = tokio::process::Command::new(program)
            .args(args)
            .env("PATH", lab_path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{program} did not finish within {} s",
                        COMMAND_TIMEOUT.as_secs()
                    ),
                )
            })??;
        Ok(CommandOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn spawn_init(&self, argv: &[String], log: &Path) -> io::Result<ProcessRef> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await?
            .into_std()
            .await;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", lab_path())
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Out of the caller's process group, so a Ctrl-C on `swarmup` does not reach nodes.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let launcher = child
            .id()
            .ok_or_else(|| io::Error::other("the node launcher exited at once"))?;
        let deadline = tokio::time::Instant::now() + INIT_FORK_TIMEOUT;
        loop {
            // nsenter execs unshare in place; unshare forks the init and waits for it.
            if let Some(init) = first_child(launcher).await {
                if let Some(state) = self.process(init).await {
                    // Dropping the handle leaves the launcher to tokio's background reaper.
                    return Ok(ProcessRef {
                        pid: init,
                        start_time: state.start_time,
                    });
                }
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the node launcher exited ({status}) before the node init started"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the node init did not start within {} s",
                        INIT_FORK_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn spawn_daemon(&self, argv: &[String], log: &Path) -> io::Result<ProcessRef> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await?
            .into_std()
            .await;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", lab_path())
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Outlives `swarmup`, and a Ctrl-C on it does not reach the daemon.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other(format!("{program} exited at once")))?;
        let state = self
            .process(pid)
            .await
            .ok_or_else(|| io::Error::other(format!("{program} exited at once")))?;
        // Dropping the handle leaves the daemon to tokio's background reaper.
        Ok(ProcessRef {
            pid,
            start_time: state.start_time,
        })
    }

    async fn process(&self, pid: u32) -> Option<ProcState> {
        let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
            .await
            .ok()?;
        let (start_time, zombie) = parse_proc_stat(&stat)?;
        Some(ProcState { start_time, zombie })
    }

    fn kill(&self, pid: u32) -> io::Result<()> {
        let pid = i32::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    async fn ssh_answers(&self, addr: SocketAddr) -> bool {
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut buf = [0u8; 8];
            stream.read_exact(&mut buf).await.ok()?;
            Some(buf.starts_with(b"SSH-"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Some(true))
        )
    }

    async fn docker_answers(&self, socket: &Path) -> bool {
        let probe = async {
            let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
            stream
                .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                .await
                .ok()?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.ok()?;
            let reply = String::from_utf8_lossy(&reply);
            Some(reply.starts_with("HTTP/1.") && reply.contains(" 200 ") && reply.ends_with("OK"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Some(true))
        )
    }

    async fn registry_answers(&self, addr: SocketAddr) -> bool {
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.ok()?;
            Some(super::registry::is_v2_answer(&String::from_utf8_lossy(
                &reply,
            )))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Some(true))
        )
    }

    async fn netns_names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let mut dir = match tokio::fs::read_dir("/run/netns").await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        while let Some(entry) = dir.next_entry().await? {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    async fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
        let info = tokio::fs::read_to_string("/proc/self/mountinfo").await?;
        Ok(info
            .lines()
            .filter_map(mount_point)
            .map(PathBuf::from)
            .collect())
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("cannot unmount {} on this system", path.display()),
            ))
        }
    }

    async fn lock(&self, path: &Path) -> io::Result<LabLock> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)?;
            let guard = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| io::Error::from(e))?;
            Ok(LabLock::new(guard))
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn remove_container_cgroups(&self, ids: &[String]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let base = Path::new("/sys/fs/cgroup");
        // cgroup v2 is one tree; v1 has one tree per controller.
        let mut roots = vec![base.to_path_buf()];
        if let Ok(mut dir) = tokio::fs::read_dir(base).await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                roots.push(entry.path());
            }
        }
        let mut removed = 0;
        for id in ids {
            let mut any = false;
            for root in &roots {
                for candidate in [
                    root.join("docker").join(id),
                    root.join("system.slice").join(format!("docker-{id}.scope")),
                ] {
                    // rmdir only succeeds on an empty cgroup, so a live one is never touched.
                    any |= tokio::fs::remove_dir(&candidate).await.is_ok();
                }
            }
            removed += usize::from(any);
        }
        removed
    }
}

/// The first child of `pid`, from /proc/PID/task/PID/children or, on kernels without
/// it, by scanning every process's parent.
async fn first_child(pid: u32) -> Option<u32> {
    match tokio::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).await {
        Ok(list) => return list.split_whitespace().next()?.parse().ok(),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return None,
        Err(_) => {}
    }
    let mut dir = tokio::fs::read_dir("/proc").await.ok()?;
    while let Ok(Some(entry)) = dir.next_entry().await {
        let Some(candidate) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = tokio::fs::read_to_string(format!("/proc/{candidate}/stat")).await else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod fake {
    //! A host in memory: enough of `ip`, `iptables` and processes to run the provider's
    //! create, power and destroy logic without root.

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    pub struct State {
        pub calls: Vec<String>,
        pub links: BTreeMap<String, Option<String>>,
        pub addrs: BTreeMap<String, String>,
        pub netns: BTreeSet<String>,
        pub rules: BTreeSet<String>,
        pub procs: BTreeMap<u32, u64>,
        pub next_pid: u32,
        pub missing: BTreeSet<String>,
        pub not_root: bool,
        pub spawned: Vec<Vec<String>>,
        pub daemons: Vec<Vec<String>>,
        /// nftables tables (`inet NAME`) loaded with `nft -f`.
        pub nft_tables: BTreeSet<String>,
    }

    #[derive(Debug, Default)]
    pub struct FakeSystem {
        pub state: Mutex<State>,
    }

    impl FakeSystem {
        pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap()
        }
    }

    fn ok(stdout: impl Into<String>) -> io::Result<CommandOutput> {
        Ok(CommandOutput {
            success: true,
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    fn fail(stderr: &str) -> io::Result<CommandOutput> {
        Ok(CommandOutput {
            success: false,
            stdout: String::new(),
            stderr: stderr.into(),
        })
    }

    fn ip(st: &mut State, args: &[&str]) -> io::Result<CommandOutput> {
        match args {
            ["-j", "-4", "addr", "show"] => {
                let links: Vec<serde_json::Value> = st
                    .addrs
                    .iter()
                    .map(|(dev, cidr)| {
                        let (a, p) = cidr.split_once('/').unwrap();
                        serde_json::json!({"ifname": dev, "addr_info": [{"family": "inet", "local": a, "prefixlen": p.parse::<u8>().unwrap()}]})
                    })
                    .collect();
                ok(serde_json::to_string(&links).unwrap())
            }
            ["-j", "-4", "route", "show"] => ok("[]"),
            ["-j", "link", "show"] => {
                let links: Vec<serde_json::Value> = st
                    .links
                    .keys()
                    .map(|l| serde_json::json!({"ifname": l}))
                    .collect();
                ok(serde_json::to_string(&links).unwrap())
            }
            ["link", "show", "dev", dev] => {
                if st.links.contains_key(*dev) {
                    ok("")
                } else {
                    fail("Device does not exist.")
                }
            }
            ["link", "add", dev, "mtu", _, "type", "bridge"] => {
                st.links.insert(dev.to_string(), None);
                ok("")
            }
            ["link", "add", dev, "mtu", _, "type", "veth", "peer", "name", "eth0", "mtu", _, "netns", ns] =>
            {
                if !st.netns.contains(*ns) {
                    return fail("Invalid netns value");
                }
                st.links.insert(dev.to_string(), Some(ns.to_string()));
                ok("")
            }
            ["link", "del", dev] => {
                st.addrs.remove(*dev);
                if st.links.remove(*dev).is_some() {
                    ok("")
                } else {
                    fail("Cannot find device")
                }
            }
            ["link", "set", dev, ..] => {
                if st.links.contains_key(*dev) {
                    ok("")
                } else {
                    fail("Cannot find device")
                }
            }
            ["addr", "replace", cidr, "dev", dev] => {
                st.addrs.insert(dev.to_string(), cidr.to_string());
                ok("")
            }
            ["netns", "add", ns] => {
                if st.netns.insert(ns.to_string()) {
                    ok("")
                } else {
                    fail("File exists")
                }
            }
            ["netns", "del", ns] => {
                st.netns.remove(*ns);
                st.links.retain(|_, peer| peer.as_deref() != Some(*ns));
                ok("")
            }
            ["netns", "pids", _] => ok(""),
            ["netns", "exec", ns, "sysctl", ..] => {
                if st.netns.contains(*ns) {
                    ok("")
                } else {
                    fail("Cannot open network namespace")
                }
            }
            ["-n", ns, "link", "show", "dev", "eth0"] => {
                if st.links.values().any(|peer| peer.as_deref() == Some(*ns)) {
                    ok("")
                } else {
                    fail("Device \"eth0\" does not exist.")
                }
            }
            ["-n", ns, ..] => {
                if st.netns.contains(*ns) {
                    ok("")
                } else {
                    fail("Cannot open network namespace")
                }
            }
            other => fail(&format!("fake ip does not know {other:?}")),
        }
    }

    #[async_trait::async_trait]
    impl LabSystem for FakeSystem {
        fn is_root(&self) -> bool {
            !self.state().not_root
        }

        async fn find_program(&self, program: &Path) -> Option<PathBuf> {
            let name = program.file_name()?.to_string_lossy().into_owned();
            (!self.state().missing.contains(&name)).then(|| PathBuf::from("/usr/bin").join(name))
        }

        async fn run(&self, program: &str, args: &[String]) -> io::Result<CommandOutput> {
            let mut st = self.state();
            st.calls.push(format!("{program} {}", args.join(" ")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match program {
                "ip" => ip(&mut st, &args),
                "iptables" => {
                    let (op, rule) = match args.as_slice() {
                        ["-w", op, "FORWARD", "1", rest @ ..] if *op == "-I" => {
                            (*op, rest.join(" "))
                        }
                        ["-w", op, "FORWARD", rest @ ..] => (*op, rest.join(" ")),
                        _ => return fail("bad iptables call"),
                    };
                    match op {
                        "-C" if st.rules.contains(&rule) => ok(""),
                        "-C" => fail("Bad rule"),
                        "-I" => {
                            st.rules.insert(rule);
                            ok("")
                        }
                        "-D" if st.rules.remove(&rule) => ok(""),
                        _ => fail("Bad rule"),
                    }
                }
                "nft" => match args.as_slice() {
                    ["-f", path] => {
                        let text = std::fs::read_to_string(path)?;
                        for line in text.lines() {
                            if let Some(name) = line.trim().strip_prefix("delete table inet ") {
                                st.nft_tables.insert(name.trim().to_string());
                            }
                        }
                        ok("")
                    }
                    ["delete", "table", "inet", name] => {
                        if st.nft_tables.remove(*name) {
                            ok("")
                        } else {
                            fail("No such file or directory")
                        }
                    }
                    _ => fail("fake nft does not know this"),
                },
                _ => ok(""),
            }
        }

        async fn spawn_init(&self, argv: &[String], _log: &Path) -> io::Result<ProcessRef> {
            let mut st = self.state();
            st.next_pid += 1;
            let pid = 1000 + st.next_pid;
            st.procs.insert(pid, u64::from(pid) * 7);
            st.spawned.push(argv.to_vec());
            Ok(ProcessRef {
                pid,
                start_time: u64::from(pid) * 7,
            })
        }

        async fn spawn_daemon(&self, argv: &[String], _log: &Path) -> io::Result<ProcessRef> {
            let mut st = self.state();
            st.next_pid += 1;
            let pid = 1000 + st.next_pid;
            st.procs.insert(pid, u64::from(pid) * 7);
            st.daemons.push(argv.to_vec());
            Ok(ProcessRef {
                pid,
                start_time: u64::from(pid) * 7,
            })
        }

        async fn process(&self, pid: u32) -> Option<ProcState> {
            self.state().procs.get(&pid).map(|s| ProcState {
                start_time: *s,
                zombie: false,
            })
        }

        fn kill(&self, pid: u32) -> io::Result<()> {
            self.state().procs.remove(&pid);
            Ok(())
        }

        async fn ssh_answers(&self, _addr: SocketAddr) -> bool {
            true
        }

        async fn docker_answers(&self, _socket: &Path) -> bool {
            true
        }

        async fn registry_answers(&self, _addr: SocketAddr) -> bool {
            true
        }

        async fn netns_names(&self) -> io::Result<Vec<String>> {
            Ok(self.state().netns.iter().cloned().collect())
        }

        async fn mount_points(&self) -> io::Result<Vec<PathBuf>> {
            Ok(Vec::new())
        }

        fn unmount(&self, _path: &Path) -> io::Result<()> {
            Ok(())
        }

        async fn lock(&self, _path: &Path) -> io::Result<LabLock> {
            Ok(LabLock::new(()))
        }

        async fn remove_container_cgroups(&self, _ids: &[String]) -> usize {
            0
        }
    }
}
