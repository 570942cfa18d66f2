//! Cluster records: what swarmup remembers of each cluster, one directory per cluster in
//! the user's data directory (`$XDG_DATA_HOME/swarmup/clusters/NAME`, or `SWARMUP_HOME`).
//!
//! ```text
//! cluster.json   the record (no absolute paths: the directory can move between machines)
//! id_ed25519     the cluster's login key (and .pub)
//! known_hosts    every machine's pinned host key
//! host_keys.json the host keys swarmup generated, so a re-run keeps them
//! client/        ca.pem, cert.pem, key.pem for the docker CLI (`swarmup env`)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use swarmup_bootstrap::docker_swarm::Engine;
use swarmup_providers::{HostKey, Machine, Role};

/// The root of every record.
pub fn home() -> Result<PathBuf> {
    if let Some(dir) = crate::env::path(crate::env::SWARMUP_HOME) {
        return Ok(dir);
    }
    let data = crate::env::xdg_dir(crate::env::XDG_DATA_HOME, ".local/share")
        .context("cannot find a data directory: set HOME or SWARMUP_HOME")?;
    Ok(data.join("swarmup"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMachine {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    pub provider: String,
    pub created_at: String,
    pub machines: Vec<PlannedMachine>,
    /// The machines as the provider last reported them (addresses), for offline use.
    #[serde(default)]
    pub last_seen: Vec<Machine>,
    /// Provider choices to reuse on a re-run (region, size, …).
    #[serde(default)]
    pub provider_options: BTreeMap<String, String>,
    /// What serves the swarm (`create --engine`); records from before the choice existed
    /// have no such field and mean swarm-node.
    #[serde(default)]
    pub engine: Engine,
}

impl ClusterRecord {
    pub fn managers(&self) -> usize {
        self.machines
            .iter()
            .filter(|m| m.role == Role::Manager)
            .count()
    }
}

/// The directory of one cluster.
#[derive(Debug, Clone)]
pub struct ClusterDir(pub PathBuf);

impl ClusterDir {
    pub fn of(name: &str) -> Result<ClusterDir> {
        Ok(ClusterDir(home()?.join("clusters").join(name)))
    }

    pub fn record_path(&self) -> PathBuf {
        self.0.join("cluster.json")
    }
    pub fn login_key(&self) -> PathBuf {
        self.0.join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.0.join("known_hosts")
    }
    pub fn host_keys(&self) -> PathBuf {
        self.0.join("host_keys.json")
    }
    pub fn client_dir(&self) -> PathBuf {
        self.0.join("client")
    }

    pub fn exists(&self) -> bool {
        self.record_path().exists()
    }

    pub fn load(&self) -> Result<ClusterRecord> {
        let text = std::fs::read_to_string(self.record_path())
            .with_context(|| format!("cannot read {}", self.record_path().display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster record", self.record_path().display()))
    }

    pub fn save(&self, record: &ClusterRecord) -> Result<()> {
        write_private(&self.record_path(), &serde_json::to_vec_pretty(record)?)
    }

    pub fn load_host_keys(&self) -> Result<BTreeMap<String, HostKey>> {
        match std::fs::read_to_string(self.host_keys()) {
            Ok(text) => Ok(serde_json::from_str(&text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save_host_keys(&self, keys: &BTreeMap<String, HostKey>) -> Result<()> {
        write_private(&self.host_keys(), &serde_json::to_vec_pretty(keys)?)
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.0.display())),
        }
    }
}

/// Every recorded cluster, by name.
pub fn all() -> Result<Vec<ClusterRecord>> {
    let dir = home()?.join("clusters");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let cd = ClusterDir(entry.path());
        if let Ok(r) = cd.load() {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Checks a cluster name: it becomes part of machine names, hostnames and SSH aliases.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && !name.ends_with('-');
    if !ok {
        bail!("invalid cluster name {name:?}: use 1 to 24 lowercase letters, digits and '-', starting with a letter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_an_engine_means_swarm_node() {
        let old = r#"{"name":"c","provider":"lab","created_at":"2026-01-01T00:00:00Z",
            "machines":[{"name":"c-node1","role":"manager"}]}"#;
        let r: ClusterRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.engine, Engine::SwarmNode);
        let mut docker = r.clone();
        docker.engine = Engine::Docker;
        let text = serde_json::to_string(&docker).unwrap();
        assert!(text.contains(r#""engine":"docker""#), "{text}");
        let back: ClusterRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, docker);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("swarm").is_ok());
        assert!(validate_name("lab-2").is_ok());
        for bad in ["", "Swarm", "2lab", "a_b", "x-", &"a".repeat(25)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
