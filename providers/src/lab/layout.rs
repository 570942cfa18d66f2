//! Where a lab cluster's state lives on the host and where things are inside a node.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Role;

/// Paths as a process inside a lab node sees them.
pub mod inside {
    /// Holds the node's name; its presence tells a program it runs on a lab node.
    pub const MARKER: &str = "/run/swarmup-lab/node";
    /// Drop `NAME.service` here (write a temporary name, then rename) to run a service.
    pub const UNITS_DIR: &str = "/var/lib/swarmup-lab/units";
    /// `NAME.log`: stdout and stderr of each service, sshd and dockerd included.
    pub const LOGS_DIR: &str = "/var/lib/swarmup-lab/logs";
    /// JSON map of service name to state, rewritten by the node init on every change.
    pub const STATUS_FILE: &str = "/run/swarmup-lab/services.json";
    /// The node's own Docker Engine.
    pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
    pub const DOCKER_DATA: &str = "/var/lib/docker";
    pub const SSH_HOST_KEY: &str = "/var/lib/swarmup-lab/ssh_host_ed25519_key";
    pub const SSHD_CONFIG: &str = "/run/swarmup-lab/sshd_config";
    /// sshd drop-ins of the node's own (in its private /var/lib), included at the end of
    /// [`SSHD_CONFIG`]: bootstrap's workshop student `Match` block goes here.
    pub const SSHD_DROPIN_DIR: &str = "/var/lib/swarmup-lab/sshd_config.d";
    /// The host's package database, bound read-only so `dpkg -s` answers truthfully.
    pub const DPKG_DIR: &str = "/var/lib/dpkg";
}

/// Host trees a node sees through a copy-on-write layer of its own: it reads the host's
/// files and keeps what it writes (configuration, installed binaries) to itself.
pub const LAYERED_TREES: [&str; 3] = ["/etc", "/usr/local", "/opt"];

/// Host-side paths of one cluster under the state root.
#[derive(Debug, Clone)]
pub struct ClusterLayout {
    pub dir: PathBuf,
}

impl ClusterLayout {
    pub fn new(root: &Path, cluster: &str) -> Self {
        ClusterLayout {
            dir: root.join(cluster),
        }
    }

    pub fn record(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    /// Bound onto every node's /etc/hosts: rewritten in place, never replaced, because a
    /// bind mount holds on to the inode.
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    pub fn node(&self, machine: &str) -> NodeLayout {
        NodeLayout {
            dir: self.dir.join(machine),
        }
    }

    /// The lab registry's files; not a valid machine name, so never a node's directory.
    pub fn registry_dir(&self) -> PathBuf {
        self.dir.join(REGISTRY_DIR)
    }
    pub fn registry_data(&self) -> PathBuf {
        self.registry_dir().join("data")
    }
    pub fn registry_config(&self) -> PathBuf {
        self.registry_dir().join("config.yml")
    }
    /// `PID STARTTIME` of the running registry.
    pub fn registry_pid(&self) -> PathBuf {
        self.registry_dir().join("registry.pid")
    }
    pub fn registry_log(&self) -> PathBuf {
        self.registry_dir().join("registry.log")
    }
    /// The `nft -f` script of an offline cluster.
    pub fn offline_rules(&self) -> PathBuf {
        self.dir.join("offline.nft")
    }
}

/// The directory of the lab registry under a cluster's directory.
pub const REGISTRY_DIR: &str = "_registry";

/// Host-side paths of one node. The node's private directories are bound over the
/// matching paths inside the node.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    pub dir: PathBuf,
}

impl NodeLayout {
    pub fn new(dir: PathBuf) -> Self {
        NodeLayout { dir }
    }
    /// Bound onto /var/lib.
    pub fn var_lib(&self) -> PathBuf {
        self.dir.join("var-lib")
    }
    /// Bound onto /root.
    pub fn root_home(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// Bound onto /tmp.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    /// Bound onto /var/log.
    pub fn var_log(&self) -> PathBuf {
        self.dir.join("var-log")
    }
    /// Bound onto /var/tmp.
    pub fn var_tmp(&self) -> PathBuf {
        self.dir.join("var-tmp")
    }
    /// The node's own layer over a host tree (see [`LAYERED_TREES`]): `upper` holds what
    /// the node wrote, `work` is overlayfs's scratch space.
    pub fn layer(&self, tree: &str) -> (PathBuf, PathBuf) {
        let name = tree.trim_start_matches('/').replace('/', "-");
        let base = self.dir.join("layers").join(name);
        (base.join("upper"), base.join("work"))
    }
    /// Bound onto /etc/docker, so each engine has its own identity and daemon.json.
    pub fn etc_docker(&self) -> PathBuf {
        self.dir.join("etc-docker")
    }
    /// Bound onto /etc/hostname.
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    /// Bound onto /etc/machine-id.
    pub fn machine_id(&self) -> PathBuf {
        self.dir.join("machine-id")
    }
    /// `PID STARTTIME` of the running init, as the host sees it.
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join("init.pid")
    }
    /// The init's own output.
    pub fn init_log(&self) -> PathBuf {
        self.dir.join("init.log")
    }
    pub fn units(&self) -> PathBuf {
        self.in_var_lib(inside::UNITS_DIR)
    }
    pub fn logs(&self) -> PathBuf {
        self.in_var_lib(inside::LOGS_DIR)
    }
    pub fn host_key(&self) -> PathBuf {
        self.in_var_lib(inside::SSH_HOST_KEY)
    }
    pub fn authorized_keys(&self) -> PathBuf {
        self.root_home().join(".ssh/authorized_keys")
    }

    fn in_var_lib(&self, inside_path: &str) -> PathBuf {
        let rel = inside_path
            .strip_prefix("/var/lib/")
            .unwrap_or(inside_path.trim_start_matches('/'));
        self.var_lib().join(rel)
    }
}

/// The index of one cluster, `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster: String,
    pub tag: String,
    pub bridge: String,
    /// The cluster's /24; the bridge is `.1`, nodes are `.11` upwards.
    pub subnet: Ipv4Addr,
    pub nodes: Vec<NodeRecord>,
    /// The cluster runs a lab registry (see [`super::registry`]).
    #[serde(default)]
    pub registry: bool,
    /// Nothing leaves the cluster's subnet (see [`super::offline`]).
    #[serde(default)]
    pub offline: bool,
    /// The tags the cluster was created with ([`crate::ClusterPlan::tags`]: a workshop's
    /// name and expiry), so that they are found from this host alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl ClusterRecord {
    pub fn gateway(&self) -> Ipv4Addr {
        with_last_octet(self.subnet, 1)
    }

    pub fn node(&self, machine: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == machine)
    }

    /// The lowest host octet from 11 up that no node has.
    pub fn next_octet(&self) -> Option<u8> {
        (FIRST_NODE_OCTET..=254).find(|o| self.nodes.iter().all(|n| n.octet != *o))
    }

    /// The /etc/hosts every node of the cluster sees.
    pub fn hosts_file(&self) -> String {
        let mut out =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for node in &self.nodes {
            out.push_str(&format!("{}\t{}\n", node.address, node.name));
        }
        out
    }
}

/// The first node's last address octet; .2 to .10 stay free for the host side.
pub const FIRST_NODE_OCTET: u8 = 11;

/// One node in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub octet: u8,
    pub address: Ipv4Addr,
    pub netns: String,
    pub veth: String,
}

pub fn with_last_octet(net: Ipv4Addr, last: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, last)
}

/// A process as the host sees it: the PID alone could be reused after the process died,
/// the start time (clock ticks since boot) makes the identity exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessRef {
    pub fn to_file(self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    pub fn parse(text: &str) -> Option<ProcessRef> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        let start_time = it.next()?.parse().ok()?;
        Some(ProcessRef { pid, start_time })
    }
}

/// Parses `/proc/PID/stat`: the start time (field 22) and whether the process is a zombie.
/// The command name may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, bool)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, *state == "Z" || *state == "X"))
}

/// The mount point of one `/proc/PID/mountinfo` line.
pub fn mount_point(line: &str) -> Option<String> {
    line.split(' ').nth(4).map(unescape_mountinfo)
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            let value = d.iter().fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_map_inside_paths_into_var_lib() {
        let node = ClusterLayout::new(Path::new("/s"), "web").node("web-node1");
        assert_eq!(
            node.units(),
            PathBuf::from("/s/web/web-node1/var-lib/swarmup-lab/units")
        );
        assert_eq!(
            node.host_key(),
            PathBuf::from("/s/web/web-node1/var-lib/swarmup-lab/ssh_host_ed25519_key")
        );
        assert_eq!(
            node.authorized_keys(),
            PathBuf::from("/s/web/web-node1/root/.ssh/authorized_keys")
        );
    }

    #[test]
    fn octets_fill_gaps() {
        let mut rec = ClusterRecord {
            cluster: "c".into(),
            tag: "abcdef".into(),
            bridge: "c-abcdef".into(),
            subnet: Ipv4Addr::new(10, 247, 3, 0),
            nodes: vec![],
            registry: false,
            offline: false,
            tags: Vec::new(),
        };
        assert_eq!(rec.next_octet(), Some(11));
        for (i, octet) in [11u8, 13].into_iter().enumerate() {
            rec.nodes.push(NodeRecord {
                name: format!("c-node{i}"),
                role: Role::Worker,
                octet,
                address: with_last_octet(rec.subnet, octet),
                netns: String::new(),
                veth: String::new(),
            });
        }
        assert_eq!(rec.next_octet(), Some(12));
        assert_eq!(rec.gateway(), Ipv4Addr::new(10, 247, 3, 1));
        assert!(rec.hosts_file().contains("10.247.3.13\tc-node1\n"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/tail\04"), r"/tail\04");
        let line = r"36 35 98:0 /mnt1 /var/lib/a\040b rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(mount_point(line).as_deref(), Some("/var/lib/a b"));
    }

    #[test]
    fn proc_stat_parsing() {
        let stat = "4242 (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_proc_stat(stat), Some((987654, false)));
        let zombie = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_proc_stat(zombie), Some((55, true)));
        assert_eq!(parse_proc_stat("garbage"), None);
        let r = ProcessRef {
            pid: 12,
            start_time: 34,
        };
        assert_eq!(ProcessRef::parse(&r.to_file()), Some(r));
    }
}
