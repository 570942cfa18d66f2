//! The node's settings and the files it keeps under its state directory.
//!
//! ```text
//! STATE_DIR/node.json            who this node is (NodeFile)
//! STATE_DIR/certificates/        its certificate, key and the root CA (swarm-pki)
//! STATE_DIR/raft/                the Raft log and snapshots, on managers only (swarm-raft)
//! ```
//!
//! The state holds the node's private key and, on managers, the cluster's root CA key and
//! join tokens: directories are 0700 and files 0600, made so and tightened again by
//! [`secure_state_dir`] for state older versions left readable.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/swarm-node";
pub const DEFAULT_SOCKET: &str = "/run/swarm-node/swarm-node.sock";
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const DEFAULT_PORT: u16 = 2377;
/// Docker's default dispatcher heartbeat period.
pub const DEFAULT_HEARTBEAT_MS: u64 = 5_000;

/// Who this node is in its swarm, written by `init` and `join`, read by `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    pub node_id: String,
    pub cluster_id: String,
    /// As in the node's certificate.
    pub role: swarm_contract::Role,
    /// `IP:PORT` other nodes reach this node's control port on.
    pub advertise_addr: String,
    /// `IP:PORT` the control port binds.
    pub listen_addr: String,
    /// Control addresses of the managers known at the last contact.
    pub managers: Vec<String>,
    /// Extra IP addresses the node's certificate names (`--cert-san`).
    #[serde(default)]
    pub cert_sans: Vec<String>,
}

impl NodeFile {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("node.json")
    }

    pub fn load(state_dir: &Path) -> std::io::Result<Option<NodeFile>> {
        match std::fs::read(Self::path(state_dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically (temp file, fsync, rename) so a crash never leaves half a file.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        create_private_dir(state_dir)?;
        let tmp = state_dir.join("node.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, Self::path(state_dir))?;
        Ok(())
    }

    pub fn is_manager(&self) -> bool {
        self.role == swarm_contract::Role::Manager
    }
}

/// Modes of the state directory's directories and files: the daemon's user only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents as 0700 (an existing directory is left as it
/// is; [`secure_state_dir`] tightens it).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Takes group and other permissions away from the state directory, its subdirectories
/// (`certificates/`, `raft/`) and every file in them. Only removes bits, never adds
/// any, and leaves symbolic links alone. Nothing to do when the directory does not exist.
pub fn secure_state_dir(state_dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(state_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(_) => tighten_tree(state_dir, 2),
    }
}

fn tighten_tree(dir: &Path, depth: u32) -> std::io::Result<()> {
    tighten(dir, PRIVATE_DIR_MODE)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_file() {
            tighten(&entry.path(), PRIVATE_FILE_MODE)?;
        } else if ty.is_dir() && depth > 1 {
            tighten_tree(&entry.path(), depth - 1)?;
        }
    }
    Ok(())
}

fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Settings of a running daemon, parsed once from flags before anything starts.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub docker_socket: PathBuf,
    /// "https" in production; tests of the internal API may use plain "http".
    pub scheme: String,
    pub heartbeat_ms: u64,
}

/// The node's hostname, as `docker node ls` shows it. `SWARM_NODE_HOSTNAME` overrides it
/// where several nodes share one host (tests).
pub fn hostname() -> String {
    if let Ok(name) = std::env::var("SWARM_NODE_HOSTNAME") {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Removes what makes a node part of a swarm (after `leave`).
pub async fn forget_state(state_dir: &Path) {
    for entry in [
        "raft",
        "certificates",
        "node.json",
        crate::daemon::TUNNEL_KEY_FILE,
    ] {
        let path = state_dir.join(entry);
        let _ = tokio::fs::remove_dir_all(&path).await;
        let _ = tokio::fs::remove_file(&path).await;
    }
}

/// Parses a duration as Go writes it (`2160h`, `1h30m`, `90s`, `500ms`, `2160h0m0s`),
/// the form Docker's `--cert-expiry` takes.
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    let err = || {
        format!("invalid duration {text:?}: use a number with a unit (h, m, s, ms), for example 2160h or 1h30m")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(err)?;
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().map_err(|_| err())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return Err(err()),
        };
        total += value * seconds;
        rest = tail;
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// A duration as Go prints it (`2160h0m0s`, `1h0m0s`, `30s`), for Docker's messages.
pub fn format_go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Splits `IP[:PORT]` and fills the default port.
pub fn with_default_port(addr: &str) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        addr.to_string()
    } else if addr.parse::<std::net::IpAddr>().is_ok() {
        if addr.contains(':') {
            format!("[{addr}]:{DEFAULT_PORT}")
        } else {
            format!("{addr}:{DEFAULT_PORT}")
        }
    } else if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn go_durations_parse_and_print_as_docker_does() {
        use std::time::Duration;
        assert_eq!(
            parse_go_duration("2160h"),
            Ok(Duration::from_secs(2160 * 3600))
        );
        assert_eq!(
            parse_go_duration("2160h0m0s"),
            Ok(Duration::from_secs(2160 * 3600))
        );
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("3d").is_err());
        assert_eq!(
            format_go_duration(Duration::from_secs(2160 * 3600)),
            "2160h0m0s"
        );
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
    }

    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:2377");
        assert_eq!(with_default_port("10.0.0.1:4000"), "10.0.0.1:4000");
        assert_eq!(with_default_port("node1"), "node1:2377");
    }

    #[test]
    fn node_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeFile::load(dir.path()).unwrap(), None);
        let f = NodeFile {
            node_id: "n".into(),
            cluster_id: "c".into(),
            role: swarm_contract::Role::Manager,
            advertise_addr: "127.0.0.1:1".into(),
            listen_addr: "127.0.0.1:1".into(),
            managers: vec![],
            cert_sans: vec![],
        };
        let state = dir.path().join("state");
        f.save(&state).unwrap();
        assert_eq!(NodeFile::load(&state).unwrap(), Some(f));
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&NodeFile::path(&state)), 0o600);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn secure_state_dir_tightens_what_older_versions_left_open() {
        use std::fs::{create_dir, set_permissions, write, Permissions};
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let certs = state.join("certificates");
        let raft = state.join("raft");
        for d in [&state, &certs, &raft] {
            create_dir(d).unwrap();
            set_permissions(d, Permissions::from_mode(0o755)).unwrap();
        }
        let files = [
            state.join("node.json"),
            certs.join("swarm-root-ca.crt"),
            raft.join("raft.journal"),
            raft.join("snapshot.json"),
        ];
        for f in &files {
            write(f, b"x").unwrap();
            set_permissions(f, Permissions::from_mode(0o644)).unwrap();
        }
        // Never widened: a file already stricter stays so.
        let key = certs.join("swarm-node.key");
        write(&key, b"k").unwrap();
        set_permissions(&key, Permissions::from_mode(0o400)).unwrap();

        secure_state_dir(&state).unwrap();
        for d in [&state, &certs, &raft] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        assert_eq!(mode(&key), 0o400);
        secure_state_dir(&dir.path().join("missing")).unwrap();
    }
}
