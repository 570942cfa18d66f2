//! Droplets that are real machines: every droplet becomes a lab node on this host (a set of
//! namespaces with its own sshd and dockerd, see `swarmup_providers::lab`).
//!
//! The droplets of one swarmup cluster (tag `swarmup:NAME`) share one lab cluster, so they
//! reach each other on one network as droplets in one VPC do. A droplet's public and
//! private IPv4 are both its lab node's address.
//!
//! The droplet's user data stands in for cloud-init: the root login keys come from
//! `ssh_authorized_keys` (and the account keys the create call named), the SSH host key
//! from `ssh_keys`, or, when several droplets share the text, from the key filed under the
//! droplet's hostname (see `swarmup_templates::cloud_init_for_machines`). Nothing else in
//! it runs: a lab node already has Docker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use swarmup_providers::lab::layout::{ClusterLayout, ClusterRecord};
use swarmup_providers::lab::system::{LabSystem, RealSystem};
use swarmup_providers::lab::{LabConfig, LabProvider, NodeInit};
use swarmup_providers::{ClusterPlan, HostKey, MachinePlan, NoProgress, Provider, Role};
use tokio::sync::RwLock;

use crate::backend::{BackendError, DropletAddrs, DropletBackend, DropletSpec};

/// The lab cluster of droplets that carry no `swarmup:NAME` tag.
pub const UNTAGGED_CLUSTER: &str = "droplets";

/// One lab cluster and the droplets that live in it.
#[derive(Debug, Default)]
struct Group {
    /// Creates and power changes share it; a delete takes it alone, so a droplet is never
    /// removed while a lab node is still being made.
    gate: Arc<RwLock<()>>,
    /// Droplet id to lab node name, for droplets whose node was made.
    live: BTreeMap<u64, String>,
}

/// Makes a lab node per droplet.
#[derive(Debug)]
pub struct LabBackend {
    lab: LabProvider,
    groups: Mutex<BTreeMap<String, Group>>,
}

fn err(droplet: &DropletSpec, what: impl std::fmt::Display) -> BackendError {
    BackendError(format!("droplet {} ({}): {what}", droplet.id, droplet.name))
}

/// What the fake reads from a droplet's user data.
#[derive(Debug, Default, Clone)]
pub struct FirstBoot {
    pub authorized_keys: Vec<String>,
    pub host_key: Option<HostKey>,
}

/// Reads `#cloud-config` user data as a machine named `hostname` would act on it: its root
/// login keys and its SSH host key. Other user data (scripts) gives nothing.
pub fn read_user_data(user_data: &str, hostname: &str) -> Result<FirstBoot, String> {
    let mut out = FirstBoot::default();
    if !user_data.trim_start().starts_with("#cloud-config") {
        return Ok(out);
    }
    let doc: serde_norway::Value =
        serde_norway::from_str(user_data).map_err(|e| format!("user data is not YAML: {e}"))?;
    let text = |v: &serde_norway::Value| v.as_str().map(str::to_string);
    if let Some(keys) = doc.get("ssh_authorized_keys").and_then(|v| v.as_sequence()) {
        out.authorized_keys = keys.iter().filter_map(text).collect();
    }
    let direct = doc.get("ssh_keys").and_then(|k| {
        Some(HostKey {
            private_openssh: text(k.get("ed25519_private")?)?,
            public_openssh: text(k.get("ed25519_public")?)?.trim().to_string(),
        })
    });
    let filed = || {
        let dir = format!(
            "{}/{hostname}/ssh_host_ed25519_key",
            swarmup_templates::CLOUD_INIT_HOST_KEYS_DIR
        );
        let files = doc.get("write_files")?.as_sequence()?;
        let content = |path: &str| {
            files
                .iter()
                .find(|f| f.get("path").and_then(|p| p.as_str()) == Some(path))
                .and_then(|f| f.get("content"))
                .and_then(text)
        };
        Some(HostKey {
            private_openssh: content(&dir)?,
            public_openssh: content(&format!("{dir}.pub"))?.trim().to_string(),
        })
    };
    out.host_key = direct.or_else(filed);
    Ok(out)
}

/// The lab cluster a droplet belongs to.
fn group_of(droplet: &DropletSpec) -> Result<String, BackendError> {
    let name = droplet
        .tags
        .iter()
        .find_map(|t| t.strip_prefix("swarmup:"))
        .unwrap_or(UNTAGGED_CLUSTER);
    swarmup_providers::lab::naming::validate_cluster(name)
        .map_err(|e| err(droplet, format!("cannot be a lab node: {e}")))?;
    Ok(name.to_string())
}

/// A host key the way an image makes one when the user data brings none.
async fn generate_host_key(droplet: &DropletSpec) -> Result<HostKey, BackendError> {
    let dir = tempfile::tempdir().map_err(|e| err(droplet, format!("no scratch dir: {e}")))?;
    let path = dir.path().join("key");
    let out = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &droplet.name, "-f"])
        .arg(&path)
        .output()
        .await
        .map_err(|e| {
            err(
                droplet,
                format!("cannot run ssh-keygen (install openssh-client): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(err(
            droplet,
            format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let read = |p: PathBuf| async move {
        tokio::fs::read_to_string(&p)
            .await
            .map_err(|e| err(droplet, format!("cannot read {}: {e}", p.display())))
    };
    Ok(HostKey {
        private_openssh: read(path.clone()).await?,
        public_openssh: read(path.with_extension("pub")).await?.trim().to_string(),
    })
}

impl LabBackend {
    pub fn new(config: LabConfig) -> Self {
        LabBackend {
            lab: LabProvider::new(config),
            groups: Mutex::new(BTreeMap::new()),
        }
    }

    /// A lab under `root` whose nodes run `init` (`swarmup-lab-node`, or `swarmup lab-node`).
    pub fn with_root(root: impl Into<PathBuf>, init: NodeInit) -> Self {
        Self::new(LabConfig {
            root: root.into(),
            init,
            ..LabConfig::default()
        })
    }

    pub fn lab(&self) -> &LabProvider {
        &self.lab
    }

    fn gate(&self, group: &str) -> Arc<RwLock<()>> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(group.to_string())
            .or_default()
            .gate
            .clone()
    }

    /// Destroys every lab cluster under the backend's root, droplets or not: what a fake
    /// that stops leaves nothing of.
    pub async fn destroy_all(&self) -> Result<Vec<String>, BackendError> {
        let mut removed = Vec::new();
        let clusters = self
            .lab
            .clusters()
            .await
            .map_err(|e| BackendError(format!("cannot list lab clusters: {e}")))?;
        for cluster in clusters {
            let gate = self.gate(&cluster);
            let _alone = gate.write().await;
            self.lab
                .destroy(&cluster)
                .await
                .map_err(|e| BackendError(format!("cannot destroy lab cluster {cluster}: {e}")))?;
            removed.push(cluster.clone());
            if let Some(g) = self
                .groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&cluster)
            {
                g.live.clear();
            }
        }
        Ok(removed)
    }

    /// Takes one node out of a lab cluster whose other nodes keep running: stops it, then
    /// removes it from the cluster's record, its network namespace (which takes its link
    /// along) and its state, so that a droplet of the same name later starts afresh and no
    /// later create of another node starts it again.
    pub async fn remove_node(&self, cluster: &str, name: &str) -> Result<(), String> {
        self.lab
            .power_off(cluster, name)
            .await
            .map_err(|e| e.to_string())?;
        let config = self.lab.config();
        let system = RealSystem;
        let _lock = system
            .lock(&config.lock_file)
            .await
            .map_err(|e| format!("cannot lock {}: {e}", config.lock_file.display()))?;
        let layout = ClusterLayout::new(&config.root, cluster);
        let path = layout.record();
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut record: ClusterRecord = serde_json::from_slice(&bytes)
            .map_err(|e| format!("lab record {} is damaged: {e}", path.display()))?;
        let Some(pos) = record.nodes.iter().position(|n| n.name == name) else {
            return Ok(());
        };
        let node = record.nodes.remove(pos);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        tokio::fs::write(&tmp, json)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // Bound into the running nodes: rewritten in place, never replaced.
        tokio::fs::write(layout.hosts(), record.hosts_file())
            .await
            .map_err(|e| format!("cannot write {}: {e}", layout.hosts().display()))?;
        // The veth first: deleting it is synchronous, while the kernel tears a deleted
        // namespace down in the background and the veth's name would stay taken for a
        // moment, which a droplet of the same name made next would trip over.
        let out = system
            .run("ip", &["link".into(), "del".into(), node.veth.clone()])
            .await
            .map_err(|e| format!("cannot run ip link del {}: {e}", node.veth))?;
        if !out.success && !out.stderr.contains("Cannot find device") {
            return Err(format!(
                "ip link del {} failed: {}",
                node.veth,
                out.stderr.trim()
            ));
        }
        let out = system
            .run("ip", &["netns".into(), "del".into(), node.netns.clone()])
            .await
            .map_err(|e| format!("cannot run ip netns del {}: {e}", node.netns))?;
        if !out.success && !out.stderr.contains("No such file") {
            return Err(format!(
                "ip netns del {} failed: {}",
                node.netns,
                out.stderr.trim()
            ));
        }
        remove_dir(&layout.node(name).dir).await
    }
}

async fn remove_dir(dir: &Path) -> Result<(), String> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
    }
}

#[async_trait::async_trait]
impl DropletBackend for LabBackend {
    async fn create(&self, droplet: &DropletSpec) -> Result<DropletAddrs, BackendError> {
        let cluster = group_of(droplet)?;
        let boot = read_user_data(droplet.user_data.as_deref().unwrap_or(""), &droplet.name)
            .map_err(|e| err(droplet, e))?;
        let host_key = match boot.host_key {
            Some(k) => k,
            None => generate_host_key(droplet).await?,
        };
        // DigitalOcean puts the account keys of the create call on root, cloud-init the
        // ones in the user data.
        let mut keys: Vec<String> = droplet.ssh_public_keys.clone();
        for k in boot.authorized_keys {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let Some(login) = keys.first().cloned() else {
            return Err(err(
                droplet,
                "no ssh key to log in with: name one in ssh_keys or in the user data",
            ));
        };
        let role = if droplet.tags.iter().any(|t| t == "swarmup-role:manager") {
            Role::Manager
        } else {
            Role::Worker
        };
        let gate = self.gate(&cluster);
        let _shared = gate.read().await;
        let twin = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cluster)
            .and_then(|g| {
                g.live
                    .iter()
                    .find(|(_, n)| **n == droplet.name)
                    .map(|(id, _)| *id)
            });
        if let Some(twin) = twin {
            // DigitalOcean allows it; one lab node cannot be two droplets.
            return Err(err(
                droplet,
                format!("droplet {twin} has the same name: the lab backend needs unique names"),
            ));
        }
        let config = self.lab.config();
        let node_dir = ClusterLayout::new(&config.root, &cluster).node(&droplet.name);
        // The lab writes the first key; the others go in first, and it adds to them.
        let authorized = node_dir.authorized_keys();
        if let Some(dir) = authorized.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| err(droplet, format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut text = keys[1..].join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        tokio::fs::write(&authorized, text).await.map_err(|e| {
            err(
                droplet,
                format!("cannot write {}: {e}", authorized.display()),
            )
        })?;
        let plan = ClusterPlan {
            cluster: cluster.clone(),
            machines: vec![MachinePlan {
                name: droplet.name.clone(),
                role,
                host_key,
            }],
            login_public_key: login,
            tags: Vec::new(),
        };
        self.lab
            .create(&plan, &NoProgress)
            .await
            .map_err(|e| err(droplet, format!("lab node not made: {e}")))?;
        let node = self
            .lab
            .node(&cluster, &droplet.name)
            .await
            .map_err(|e| err(droplet, e))?;
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cluster)
            .or_default()
            .live
            .insert(droplet.id, droplet.name.clone());
        tracing::info!(droplet = droplet.id, name = %droplet.name, address = %node.address, "lab node ready");
        Ok(DropletAddrs {
            public_ipv4: node.address,
            private_ipv4: node.address,
        })
    }

    async fn delete(&self, droplet: &DropletSpec) -> Result<(), BackendError> {
        let cluster = group_of(droplet)?;
        let gate = self.gate(&cluster);
        let _alone = gate.write().await;
        let last = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let group = groups.entry(cluster.clone()).or_default();
            if group.live.remove(&droplet.id).is_none() {
                // Deleted before its node was made: nothing to remove.
                return Ok(());
            }
            group.live.is_empty()
        };
        if last {
            self.lab
                .destroy(&cluster)
                .await
                .map_err(|e| err(droplet, format!("lab cluster {cluster} not destroyed: {e}")))?;
        } else {
            self.remove_node(&cluster, &droplet.name)
                .await
                .map_err(|e| err(droplet, format!("lab node not removed: {e}")))?;
        }
        Ok(())
    }

    async fn power(&self, droplet: &DropletSpec, on: bool) -> Result<(), BackendError> {
        let cluster = group_of(droplet)?;
        let gate = self.gate(&cluster);
        let _shared = gate.read().await;
        let result = if on {
            self.lab.power_on(&cluster, &droplet.name).await.map(drop)
        } else {
            self.lab.power_off(&cluster, &droplet.name).await
        };
        result.map_err(|e| err(droplet, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn the_host_key_is_the_one_filed_under_the_hostname() {
        let text = format!(
            "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA login\"\nwrite_files:\n\
             - path: /etc/swarmup/host-keys/c-node1/ssh_host_ed25519_key\n  content: |\n    {}\n\
             - path: /etc/swarmup/host-keys/c-node1/ssh_host_ed25519_key.pub\n  content: \"ssh-ed25519 AAAA one\\n\"\n\
             - path: /etc/swarmup/host-keys/c-node2/ssh_host_ed25519_key\n  content: |\n    {}\n\
             - path: /etc/swarmup/host-keys/c-node2/ssh_host_ed25519_key.pub\n  content: \"ssh-ed25519 AAAA two\\n\"\n",
            KEY.trim_end().replace('\n', "\n    "),
            KEY.trim_end().replace('\n', "\n    "),
        );
        let two = read_user_data(&text, "c-node2").unwrap();
        assert_eq!(two.authorized_keys, vec!["ssh-ed25519 AAAA login"]);
        let key = two.host_key.unwrap();
        assert_eq!(key.public_openssh, "ssh-ed25519 AAAA two");
        assert_eq!(key.private_openssh, KEY);
        assert!(read_user_data(&text, "c-node3").unwrap().host_key.is_none());
    }

    #[test]
    fn a_single_machine_text_gives_its_ssh_keys() {
        let text = format!(
            "#cloud-config\nssh_keys:\n  ed25519_private: |\n    {}\n  ed25519_public: \"ssh-ed25519 AAAA one\"\n",
            KEY.trim_end().replace('\n', "\n    ")
        );
        let key = read_user_data(&text, "anything").unwrap().host_key.unwrap();
        assert_eq!(key.public_openssh, "ssh-ed25519 AAAA one");
        assert!(read_user_data("#!/bin/sh\necho hi\n", "x")
            .unwrap()
            .host_key
            .is_none());
        assert!(read_user_data("#cloud-config\n: [", "x").is_err());
    }

    #[test]
    fn droplets_group_by_cluster_tag() {
        let mut d = DropletSpec {
            id: 1,
            name: "web-node1".into(),
            region: "nyc3".into(),
            size: "s-1vcpu-1gb".into(),
            image: "ubuntu-24-04-x64".into(),
            tags: vec!["swarmup".into(), "swarmup:web".into()],
            user_data: None,
            ssh_public_keys: vec![],
            vpc_ip_range: "10.108.0.0/20".into(),
        };
        assert_eq!(group_of(&d).unwrap(), "web");
        d.tags.clear();
        assert_eq!(group_of(&d).unwrap(), UNTAGGED_CLUSTER);
        d.tags = vec![format!("swarmup:{}", "x".repeat(50))];
        assert!(group_of(&d).is_err());
    }
}
