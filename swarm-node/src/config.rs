//! The node's settings and the files it keeps under its state directory.
//!
//! ```text
//! STATE_DIR/node.json            who this node is (NodeFile)
//! STATE_DIR/certificates/        its certificate, key and the root CA (swarm-pki)
//! STATE_DIR/raft/                the Raft log and snapshots, on managers only (swarm-raft)
//! ```

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
    /// `manager` or `worker`, as in the node's certificate.
    pub role: String,
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
        std::fs::create_dir_all(state_dir)?;
        let tmp = state_dir.join("node.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, Self::path(state_dir))?;
        Ok(())
    }

    pub fn is_manager(&self) -> bool {
        self.role == "manager"
    }
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
    for entry in ["raft", "certificates", "node.json"] {
        let path = state_dir.join(entry);
        let _ = tokio::fs::remove_dir_all(&path).await;
        let _ = tokio::fs::remove_file(&path).await;
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
            role: "manager".into(),
            advertise_addr: "127.0.0.1:1".into(),
            listen_addr: "127.0.0.1:1".into(),
            managers: vec![],
            cert_sans: vec![],
        };
        f.save(dir.path()).unwrap();
        assert_eq!(NodeFile::load(dir.path()).unwrap(), Some(f));
    }
}
