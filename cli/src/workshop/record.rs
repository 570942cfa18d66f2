//! What swarmup remembers of a workshop, next to the cluster records:
//!
//! ```text
//! $SWARMUP_HOME/workshops/NAME/
//!   workshop.json   the record: settings, expiry, every student's cluster, login and last error (0600)
//!   keys/NAME-s01   a student's private key with --student-keys (0600), and .pub
//! ```
//!
//! Each student's cluster is an ordinary cluster with its own record
//! (`clusters/NAME-s01/`), so `swarmup env`, `ssh`, `node ls` work on it as on any other.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::records::{home, write_private};

/// How far a student's cluster got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Not made yet, or a run was interrupted.
    Pending,
    /// Swarm up, credentials fetched, the student can log in.
    Ready,
    /// The last run failed; `last_error` says why.
    Failed,
}

/// One student's cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentCluster {
    /// `s01`.
    pub student: String,
    /// `NAME-s01`.
    pub cluster: String,
    /// A spare for a late student.
    #[serde(default)]
    pub spare: bool,
    /// The student's generated password (password mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The student's public key (key mode); the private half is `keys/CLUSTER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub state: ClusterState,
    #[serde(default)]
    pub last_error: Option<String>,
}

impl std::fmt::Debug for StudentCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StudentCluster")
            .field("student", &self.student)
            .field("cluster", &self.cluster)
            .field("spare", &self.spare)
            .field("state", &self.state)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkshopRecord {
    pub name: String,
    pub provider: String,
    pub students: u32,
    #[serde(default)]
    pub spares: u32,
    pub nodes: u32,
    pub managers: u32,
    /// The time to live it was created with, in seconds.
    pub ttl_seconds: u64,
    /// When it expires, in seconds since the Unix epoch (the `swarmup-expires:` tag).
    pub expires: u64,
    /// When it was first created, in seconds since the Unix epoch.
    pub created: u64,
    /// Students log in with keys instead of passwords.
    #[serde(default)]
    pub student_keys: bool,
    /// Lab: nothing leaves each cluster's subnet.
    #[serde(default)]
    pub offline: bool,
    /// Provider choices every cluster shares (region, size, image).
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    pub clusters: Vec<StudentCluster>,
}

impl WorkshopRecord {
    /// The student's cluster named `who`: `s03`, `3` or `NAME-s03`.
    pub fn find(&self, who: &str) -> Option<&StudentCluster> {
        let n: Option<u32> = who.trim_start_matches('s').parse().ok();
        self.clusters.iter().find(|c| {
            c.cluster == who
                || c.student == who
                || n.is_some_and(|n| c.student.trim_start_matches('s').parse() == Ok(n))
        })
    }
}

/// The directory of one workshop.
#[derive(Debug, Clone)]
pub struct WorkshopDir(pub PathBuf);

impl WorkshopDir {
    pub fn of(name: &str) -> Result<WorkshopDir> {
        Ok(WorkshopDir(home()?.join("workshops").join(name)))
    }

    pub fn record_path(&self) -> PathBuf {
        self.0.join("workshop.json")
    }

    /// A student's private key (key mode).
    pub fn key_file(&self, cluster: &str) -> PathBuf {
        self.0.join("keys").join(cluster)
    }

    pub fn exists(&self) -> bool {
        self.record_path().exists()
    }

    pub fn load(&self) -> Result<WorkshopRecord> {
        let path = self.record_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a workshop record", path.display()))
    }

    /// Written 0600: it holds the students' passwords.
    pub fn save(&self, record: &WorkshopRecord) -> Result<()> {
        write_private(&self.record_path(), &serde_json::to_vec_pretty(record)?)
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.0.display())),
        }
    }
}

/// Every workshop recorded here, by name.
pub fn all() -> Result<Vec<WorkshopRecord>> {
    let dir = home()?.join("workshops");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        if let Ok(r) = WorkshopDir(entry.path()).load() {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
