//! The `lab` provider: every machine is a small Linux machine on this host.
//!
//! A cluster is a Linux bridge with its own /24. A node is a network namespace wired to
//! the bridge by a veth pair, plus a PID, UTS, IPC and mount namespace in which the node
//! init ([`node::run`]) gives it a hostname, private /var/lib, /var/log, /root, /tmp and
//! /run, a copy-on-write layer over the host's /etc, /usr/local and /opt, and runs sshd,
//! dockerd and the services dropped into its units directory. Whatever crosses the
//! network between nodes crosses a real one.
//!
//! Host-side state lives under [`LabConfig::root`] (`/var/lib/swarmup/lab` by default):
//!
//! ```text
//! ROOT/CLUSTER/cluster.json        the index: bridge, subnet, nodes and their addresses
//! ROOT/CLUSTER/hosts               bound onto /etc/hosts in every node
//! ROOT/CLUSTER/NODE/init.pid       the running init as the host sees it (PID, start time)
//! ROOT/CLUSTER/NODE/init.log       the init's own output
//! ROOT/CLUSTER/NODE/var-lib/       the node's /var/lib (docker data, units, logs, host key)
//! ROOT/CLUSTER/NODE/root/          the node's /root (.ssh/authorized_keys)
//! ROOT/CLUSTER/NODE/tmp/           the node's /tmp (likewise var-log/, var-tmp/)
//! ROOT/CLUSTER/NODE/etc-docker/    the node's /etc/docker
//! ROOT/CLUSTER/NODE/layers/etc/    what the node wrote over the host's /etc (likewise
//!                                  usr-local/, opt/)
//! ```

pub mod capacity;
pub mod layout;
pub mod naming;
pub mod node;
pub mod offline;
pub mod registry;
pub mod subnet;
pub mod supervisor;
pub mod system;
pub mod unit;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all};

use crate::{
    ClusterPlan, DestroyReport, Machine, MachinePlan, PowerState, Progress, Provider,
    ProviderError, SshEndpoint,
};

pub use layout::inside;
use layout::{with_last_octet, ClusterLayout, ClusterRecord, NodeLayout, NodeRecord, ProcessRef};
use naming::ClusterNames;
pub use node::NodeArgs;
use system::{LabLock, LabSystem, RealSystem};

/// Where lab state lives unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/swarmup/lab";
/// Serialises lab changes across every state root, so subnets are never handed out twice.
pub const DEFAULT_LOCK_FILE: &str = "/run/lock/swarmup-lab.lock";
/// The /16 lab subnets are taken from.
pub const DEFAULT_POOL: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 0);
/// The MTU of the lab's network (bridge and node links). The lab's wires are all inside
/// one kernel, so jumbo frames cost nothing, and overlays, whose MTU follows the
/// underlay's (minus 50 for VXLAN), then carry six times fewer packets per byte: most of
/// an overlay's cost on one host is per packet (encapsulation, the second bridge pass).
pub const LAB_MTU: &str = "9000";
/// The name of the standalone node init program.
pub const NODE_PROGRAM: &str = "swarmup-lab-node";

const PREREQUISITES: &str = "the lab provider needs root and Docker's binaries: run as root and install docker.io openssh-server iproute2 (apt-get install -y docker.io openssh-server iproute2)";

/// The program a node runs as its init, before the node arguments ([`NodeArgs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInit {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl NodeInit {
    /// The standalone `swarmup-lab-node`: next to the running executable if it is there,
    /// else looked up on PATH.
    pub fn standalone() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(NODE_PROGRAM)))
            .filter(|p| p.is_file());
        NodeInit {
            program: beside.unwrap_or_else(|| PathBuf::from(NODE_PROGRAM)),
            args: Vec::new(),
        }
    }

    /// The running executable with leading arguments, e.g. a hidden subcommand that calls
    /// [`node::run`] with the rest of its arguments.
    pub fn current_exe(args: &[&str]) -> io::Result<Self> {
        Ok(NodeInit {
            program: std::env::current_exe()?,
            args: args.iter().map(|s| s.to_string()).collect(),
        })
    }
}

/// How the lab provider is set up.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Host-side state, one directory per cluster.
    pub root: PathBuf,
    /// Taken while the lab changes host state.
    pub lock_file: PathBuf,
    /// The /16 (given by its network address) cluster subnets come from.
    pub pool: Ipv4Addr,
    pub init: NodeInit,
    /// How long `create` and `power_on` wait for sshd and dockerd to answer.
    pub boot_timeout: Duration,
    /// `create` gives the cluster a lab registry ([`registry`]); kept in the cluster's
    /// record, so later runs need not repeat it.
    pub registry: bool,
    /// `create` makes the cluster offline ([`offline`]); kept like `registry`.
    pub offline: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            root: PathBuf::from(DEFAULT_ROOT),
            lock_file: PathBuf::from(DEFAULT_LOCK_FILE),
            pool: DEFAULT_POOL,
            init: NodeInit::standalone(),
            boot_timeout: Duration::from_secs(90),
            registry: false,
            offline: false,
        }
    }
}

/// Lab specifics of one node, beyond what [`Machine`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    pub name: String,
    pub address: Ipv4Addr,
    /// In /run/netns.
    pub netns: String,
    /// The host end of the node's link.
    pub veth: String,
    /// The node's host-side state directory.
    pub dir: PathBuf,
    /// The node init's PID on the host while the node is on. `nsenter -t PID -a` enters it.
    pub init_pid: Option<u32>,
}

impl LabNode {
    fn layout(&self) -> NodeLayout {
        NodeLayout::new(self.dir.clone())
    }
    /// The node's Docker socket reached from the host, while the node is on.
    pub fn docker_socket(&self) -> Option<PathBuf> {
        self.init_pid
            .map(|pid| PathBuf::from(format!("/proc/{pid}/root/run/docker.sock")))
    }
    /// The node's units directory as the host sees it.
    pub fn units_dir(&self) -> PathBuf {
        self.layout().units()
    }
    /// The node's service logs as the host sees them.
    pub fn logs_dir(&self) -> PathBuf {
        self.layout().logs()
    }
    pub fn init_log(&self) -> PathBuf {
        self.layout().init_log()
    }
}

/// The lab provider.
#[derive(Debug, Clone)]
pub struct LabProvider {
    config: LabConfig,
    system: Arc<dyn LabSystem>,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProviderError {
    let what = what.into();
    move |source| ProviderError::Io { what, source }
}

impl LabProvider {
    pub fn new(config: LabConfig) -> Self {
        Self::with_system(config, Arc::new(RealSystem))
    }

    pub fn with_system(config: LabConfig, system: Arc<dyn LabSystem>) -> Self {
        LabProvider { config, system }
    }

    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// Lab details of one node: namespace, init PID, host paths.
    pub async fn node(&self, cluster: &str, machine: &str) -> Result<LabNode, ProviderError> {
        naming::validate_cluster(cluster)?;
        let layout = ClusterLayout::new(&self.config.root, cluster);
        let record = self.read_record(&layout).await?;
        let node = record
            .as_ref()
            .and_then(|r| r.node(machine))
            .ok_or_else(|| unknown(cluster, machine))?;
        let init = self.alive(&layout.node(machine)).await;
        Ok(LabNode {
            name: node.name.clone(),
            address: node.address,
            netns: node.netns.clone(),
            veth: node.veth.clone(),
            dir: layout.node(machine).dir,
            init_pid: init.map(|p| p.pid),
        })
    }

    fn names(&self, cluster: &str) -> ClusterNames {
        ClusterNames::new(&self.config.root, cluster)
    }

    async fn lock(&self) -> Result<LabLock, ProviderError> {
        self.system
            .lock(&self.config.lock_file)
            .await
            .map_err(io_err(format!(
                "cannot lock {}",
                self.config.lock_file.display()
            )))
    }

    async fn read_record(
        &self,
        layout: &ClusterLayout,
    ) -> Result<Option<ClusterRecord>, ProviderError> {
        let path = layout.record();
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ProviderError::Api(format!(
                    "lab record {} is damaged ({e}); destroy the cluster and create it again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("cannot read {}", path.display()))(e)),
        }
    }

    async fn write_record(
        &self,
        layout: &ClusterLayout,
        record: &ClusterRecord,
    ) -> Result<(), ProviderError> {
        let path = layout.record();
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| ProviderError::Api(format!("cannot encode {}: {e}", path.display())))?;
        tokio::fs::write(&tmp, json)
            .await
            .map_err(io_err(format!("cannot write {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io_err(format!("cannot write {}", path.display())))
    }

    async fn cmd(
        &self,
        program: &str,
        args: &[&str],
    ) -> Result<system::CommandOutput, ProviderError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.system
            .run(program, &args)
            .await
            .map_err(io_err(format!("cannot run {program} {}", args.join(" "))))
    }

    /// Runs a command that must succeed.
    async fn must(&self, program: &str, args: &[&str]) -> Result<String, ProviderError> {
        let out = self.cmd(program, args).await?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(ProviderError::Api(format!(
                "{program} {} failed: {}",
                args.join(" "),
                out.stderr.trim()
            )))
        }
    }

    async fn link_exists(&self, dev: &str) -> Result<bool, ProviderError> {
        Ok(self.cmd("ip", &["link", "show", "dev", dev]).await?.success)
    }

    async fn host_nets(&self) -> Result<Vec<subnet::HostNet>, ProviderError> {
        let bad = |e: serde_json::Error| {
            ProviderError::Api(format!("cannot read the output of ip -j: {e}"))
        };
        let mut nets =
            subnet::parse_ip_addr_json(&self.must("ip", &["-j", "-4", "addr", "show"]).await?)
                .map_err(bad)?;
        nets.extend(
            subnet::parse_ip_route_json(&self.must("ip", &["-j", "-4", "route", "show"]).await?)
                .map_err(bad)?,
        );
        Ok(nets)
    }

    /// Picks a free /24 for a new cluster; the caller holds the lab lock.
    async fn allocate_subnet(&self, names: &ClusterNames) -> Result<Ipv4Addr, ProviderError> {
        let pool = self.config.pool;
        let mut used = subnet::used_in_pool(pool, &self.host_nets().await?);
        // Clusters that are down (after a host reboot) keep their subnet too.
        for other in self.clusters().await? {
            let layout = ClusterLayout::new(&self.config.root, &other);
            if let Ok(Some(rec)) = self.read_record(&layout).await {
                used.insert(rec.subnet.octets()[2]);
            }
        }
        let preferred = u8::from_str_radix(&names.tag[..2], 16).unwrap_or(0);
        let third = subnet::choose(preferred, &used).ok_or_else(|| {
            ProviderError::Api(format!(
                "no free /24 left in the lab pool {pool}/16; destroy a lab cluster first"
            ))
        })?;
        let [a, b, ..] = pool.octets();
        Ok(Ipv4Addr::new(a, b, third, 0))
    }

    async fn ensure_bridge(&self, record: &ClusterRecord) -> Result<(), ProviderError> {
        let nets = self.host_nets().await?;
        if let Some(dev) = subnet::conflict(
            self.config.pool,
            record.subnet.octets()[2],
            &record.bridge,
            &nets,
        ) {
            return Err(ProviderError::Api(format!(
                "the subnet {}/24 of lab cluster {} is now used by {dev}; destroy the cluster and create it again",
                record.subnet, record.cluster
            )));
        }
        if !self.link_exists(&record.bridge).await? {
            self.must(
                "ip",
                &[
                    "link",
                    "add",
                    &record.bridge,
                    "mtu",
                    LAB_MTU,
                    "type",
                    "bridge",
                ],
            )
            .await?;
        }
        let gateway = format!("{}/24", record.gateway());
        self.must("ip", &["addr", "replace", &gateway, "dev", &record.bridge])
            .await?;
        self.must("ip", &["link", "set", &record.bridge, "up"])
            .await?;
        self.ensure_forward_rule(&record.bridge).await?;
        if record.offline {
            // Before any node starts, so not one packet gets out.
            let layout = ClusterLayout::new(&self.config.root, &record.cluster);
            let rules = offline::ruleset(&record.tag, &record.bridge, record.subnet);
            write_file(&layout.offline_rules(), rules.as_bytes(), 0o644).await?;
            let path = layout.offline_rules().to_string_lossy().into_owned();
            self.must("nft", &["-f", &path]).await?;
        }
        Ok(())
    }

    /// Starts the cluster's registry unless it runs; returns it when it was started.
    async fn ensure_registry(
        &self,
        layout: &ClusterLayout,
        record: &ClusterRecord,
    ) -> Result<Option<ProcessRef>, ProviderError> {
        if self.alive_at(&layout.registry_pid()).await.is_some() {
            return Ok(None);
        }
        let program = self
            .system
            .find_program(Path::new(registry::PROGRAM))
            .await
            .ok_or_else(|| {
                ProviderError::Prerequisite(format!(
                    "the lab registry of {} needs {}: {}",
                    record.cluster,
                    registry::PROGRAM,
                    registry::PACKAGE_HINT
                ))
            })?;
        let data = layout.registry_data();
        tokio::fs::create_dir_all(&data)
            .await
            .map_err(io_err(format!("cannot create {}", data.display())))?;
        let addr = registry::address(record.gateway());
        write_file(
            &layout.registry_config(),
            registry::config_yaml(&data, addr).as_bytes(),
            0o644,
        )
        .await?;
        let argv = vec![
            program.to_string_lossy().into_owned(),
            "serve".to_string(),
            layout.registry_config().to_string_lossy().into_owned(),
        ];
        let started = self
            .system
            .spawn_daemon(&argv, &layout.registry_log())
            .await
            .map_err(|e| {
                ProviderError::Api(format!(
                    "cannot start the lab registry of {}: {e}; see {}",
                    record.cluster,
                    layout.registry_log().display()
                ))
            })?;
        write_file(&layout.registry_pid(), started.to_file().as_bytes(), 0o644).await?;
        Ok(Some(started))
    }

    /// Waits until a just started registry answers on the bridge.
    async fn wait_registry(
        &self,
        layout: &ClusterLayout,
        record: &ClusterRecord,
        started: ProcessRef,
    ) -> Result<(), ProviderError> {
        let addr = registry::address(record.gateway());
        let deadline = Instant::now() + self.config.boot_timeout;
        loop {
            if self.system.registry_answers(addr).await {
                return Ok(());
            }
            let running = self
                .system
                .process(started.pid)
                .await
                .is_some_and(|s| s.start_time == started.start_time && !s.zombie);
            if !running || Instant::now() >= deadline {
                return Err(ProviderError::Api(format!(
                    "the lab registry of {} {} on {addr}; see {}",
                    record.cluster,
                    if running {
                        format!(
                            "did not answer within {} s",
                            self.config.boot_timeout.as_secs()
                        )
                    } else {
                        "stopped before it answered".to_string()
                    },
                    layout.registry_log().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lab registry of a cluster: where it listens, if the cluster has one.
    pub async fn registry_address(
        &self,
        cluster: &str,
    ) -> Result<Option<SocketAddr>, ProviderError> {
        naming::validate_cluster(cluster)?;
        let layout = ClusterLayout::new(&self.config.root, cluster);
        Ok(self
            .read_record(&layout)
            .await?
            .filter(|r| r.registry)
            .map(|r| registry::address(r.gateway())))
    }

    /// Lets traffic between the bridge's ports through the host's FORWARD chain. Added
    /// whether or not the chain drops today: a dockerd started later on the host turns
    /// the policy to DROP, and the rule is inert until then.
    async fn ensure_forward_rule(&self, bridge: &str) -> Result<(), ProviderError> {
        if self
            .system
            .find_program(Path::new("iptables"))
            .await
            .is_none()
        {
            return Ok(());
        }
        let rule = ["-i", bridge, "-o", bridge, "-j", "ACCEPT"];
        let mut check = vec!["-w", "-C", "FORWARD"];
        check.extend(rule);
        if self.cmd("iptables", &check).await?.success {
            return Ok(());
        }
        let mut insert = vec!["-w", "-I", "FORWARD", "1"];
        insert.extend(rule);
        self.must("iptables", &insert).await.map(drop)
    }

    async fn ensure_node_net(
        &self,
        record: &ClusterRecord,
        node: &NodeRecord,
    ) -> Result<(), ProviderError> {
        let ns = node.netns.as_str();
        let netns = self
            .system
            .netns_names()
            .await
            .map_err(io_err("cannot list /run/netns"))?;
        if !netns.iter().any(|n| n == ns) {
            self.must("ip", &["netns", "add", ns]).await?;
        }
        if self.link_exists(&node.veth).await?
            && !self
                .cmd("ip", &["-n", ns, "link", "show", "dev", "eth0"])
                .await?
                .success
        {
            // A veth of this name whose peer is not in this namespace: the kernel tears a
            // deleted namespace down in the background, so the veth of a node removed a
            // moment ago can outlive it. Reusing it would leave the new node without eth0.
            self.cmd("ip", &["link", "del", &node.veth]).await?;
        }
        if !self.link_exists(&node.veth).await? {
            self.must(
                "ip",
                &[
                    "link", "add", &node.veth, "mtu", LAB_MTU, "type", "veth", "peer", "name",
                    "eth0", "mtu", LAB_MTU, "netns", ns,
                ],
            )
            .await?;
        }
        self.must(
            "ip",
            &["link", "set", &node.veth, "master", &record.bridge, "up"],
        )
        .await?;
        let addr = format!("{}/24", node.address);
        let gateway = record.gateway().to_string();
        self.must("ip", &["-n", ns, "link", "set", "lo", "up"])
            .await?;
        self.must("ip", &["-n", ns, "addr", "replace", &addr, "dev", "eth0"])
            .await?;
        // A node made again (a droplet or student cluster of the same name) gets its old
        // address with a new MAC. Announcing it when eth0 comes up updates the neighbours'
        // caches at once; without it they keep sending to the old MAC for up to a minute.
        self.must(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.eth0.arp_notify=1",
            ],
        )
        .await?;
        self.must("ip", &["-n", ns, "link", "set", "eth0", "up"])
            .await?;
        self.must(
            "ip",
            &["-n", ns, "route", "replace", "default", "via", &gateway],
        )
        .await?;
        Ok(())
    }

    /// Writes what a new node needs and repairs what a crashed create left half done.
    async fn prepare_node_dir(
        &self,
        layout: &NodeLayout,
        plan: &MachinePlan,
        login_key: &str,
        registry: Option<SocketAddr>,
    ) -> Result<(), ProviderError> {
        use std::os::unix::fs::PermissionsExt;
        let mkdir = |path: PathBuf, mode: u32| async move {
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(io_err(format!("cannot create {}", path.display())))?;
            tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(io_err(format!("cannot set the mode of {}", path.display())))
        };
        mkdir(layout.dir.clone(), 0o755).await?;
        mkdir(layout.var_lib(), 0o755).await?;
        mkdir(layout.units(), 0o755).await?;
        mkdir(layout.logs(), 0o755).await?;
        mkdir(layout.var_lib().join("dbus"), 0o755).await?;
        mkdir(layout.root_home(), 0o700).await?;
        mkdir(layout.root_home().join(".ssh"), 0o700).await?;
        mkdir(layout.tmp(), 0o1777).await?;
        mkdir(layout.var_tmp(), 0o1777).await?;
        mkdir(layout.var_log(), 0o755).await?;
        for tree in layout::LAYERED_TREES {
            let (upper, work) = layout.layer(tree);
            mkdir(upper, 0o755).await?;
            mkdir(work, 0o700).await?;
        }
        mkdir(layout.etc_docker(), 0o755).await?;

        let write_new = |path: PathBuf, content: String, mode: u32| async move {
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Ok(());
            }
            write_file(&path, content.as_bytes(), mode).await
        };
        write_new(
            layout.host_key(),
            plan.host_key.private_openssh.clone(),
            0o600,
        )
        .await?;
        let public = format!("{}\n", plan.host_key.public_openssh.trim());
        write_new(layout.host_key().with_extension("pub"), public, 0o644).await?;
        write_new(layout.hostname(), format!("{}\n", plan.name), 0o644).await?;
        let machine_id = machine_id(&plan.name).await;
        write_new(layout.machine_id(), machine_id.clone(), 0o444).await?;
        write_new(layout.var_lib().join("dbus/machine-id"), machine_id, 0o444).await?;
        write_new(
            layout.etc_docker().join("daemon.json"),
            "{}\n".into(),
            0o644,
        )
        .await?;
        if let Some(registry) = registry {
            let path = layout.etc_docker().join("daemon.json");
            let current = tokio::fs::read_to_string(&path)
                .await
                .map_err(io_err(format!("cannot read {}", path.display())))?;
            let trusted =
                registry::trust_in_daemon_json(&current, &registry.to_string()).map_err(|e| {
                    ProviderError::Api(format!(
                        "cannot add the lab registry to {}: {e}",
                        path.display()
                    ))
                })?;
            if trusted != current {
                write_file(&path, trusted.as_bytes(), 0o644).await?;
            }
        }

        let keys_path = layout.authorized_keys();
        let current = tokio::fs::read_to_string(&keys_path)
            .await
            .unwrap_or_default();
        let key = login_key.trim();
        if !current.lines().any(|l| l.trim() == key) {
            let mut keys = current;
            if !keys.is_empty() && !keys.ends_with('\n') {
                keys.push('\n');
            }
            keys.push_str(key);
            keys.push('\n');
            write_file(&keys_path, keys.as_bytes(), 0o600).await?;
        }
        Ok(())
    }

    /// The node's init if it runs: the recorded PID with the recorded start time.
    async fn alive(&self, layout: &NodeLayout) -> Option<ProcessRef> {
        self.alive_at(&layout.init_pid()).await
    }

    /// The process a PID file names if it runs: the recorded PID with the recorded start
    /// time.
    async fn alive_at(&self, pid_file: &Path) -> Option<ProcessRef> {
        let text = tokio::fs::read_to_string(pid_file).await.ok()?;
        let recorded = ProcessRef::parse(&text)?;
        let state = self.system.process(recorded.pid).await?;
        (state.start_time == recorded.start_time && !state.zombie).then_some(recorded)
    }

    async fn start_node(
        &self,
        cluster: &ClusterLayout,
        node: &NodeRecord,
    ) -> Result<ProcessRef, ProviderError> {
        let layout = cluster.node(&node.name);
        let node_args = NodeArgs {
            name: node.name.clone(),
            node_dir: layout.dir.clone(),
            hosts_file: cluster.hosts(),
        };
        let mut argv: Vec<String> = vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", node.netns),
            "--".into(),
            "unshare".into(),
            "--uts".into(),
            "--ipc".into(),
            "--mount".into(),
            "--pid".into(),
            "--fork".into(),
            "--propagation".into(),
            "private".into(),
            "--".into(),
            self.config.init.program.to_string_lossy().into_owned(),
        ];
        argv.extend(self.config.init.args.iter().cloned());
        argv.extend(node_args.to_args());
        let init = self
            .system
            .spawn_init(&argv, &layout.init_log())
            .await
            .map_err(|e| {
                ProviderError::Api(format!(
                    "cannot start lab node {}: {e}; see {}",
                    node.name,
                    layout.init_log().display()
                ))
            })?;
        write_file(&layout.init_pid(), init.to_file().as_bytes(), 0o644).await?;
        Ok(init)
    }

    /// Waits until the node answers SSH on its address and Docker on its socket.
    async fn wait_ready(
        &self,
        cluster: &ClusterLayout,
        node: &NodeRecord,
        init: ProcessRef,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let layout = cluster.node(&node.name);
        let ssh = SocketAddr::new(IpAddr::V4(node.address), 22);
        let docker = PathBuf::from(format!("/proc/{}/root/run/docker.sock", init.pid));
        let started = Instant::now();
        let deadline = started + self.config.boot_timeout;
        let (mut ssh_up, mut docker_up) = (false, false);
        loop {
            if !ssh_up && self.system.ssh_answers(ssh).await {
                ssh_up = true;
                progress.machine(&node.name, "ssh answering");
            }
            if !docker_up && self.system.docker_answers(&docker).await {
                docker_up = true;
                progress.machine(&node.name, "docker answering");
            }
            if ssh_up && docker_up {
                progress.machine(
                    &node.name,
                    &format!("ready in {:.1} s", started.elapsed().as_secs_f64()),
                );
                return Ok(());
            }
            let running = self
                .system
                .process(init.pid)
                .await
                .is_some_and(|s| s.start_time == init.start_time && !s.zombie);
            let waiting_for = match (ssh_up, docker_up) {
                (false, false) => "sshd and dockerd",
                (false, true) => "sshd",
                _ => "dockerd",
            };
            if !running {
                return Err(ProviderError::Api(format!(
                    "lab node {} stopped while booting ({waiting_for} never answered); see {} and {}",
                    node.name,
                    layout.init_log().display(),
                    layout.logs().display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Api(format!(
                    "lab node {} did not come up within {} s ({waiting_for} not answering); see {}",
                    node.name,
                    self.config.boot_timeout.as_secs(),
                    layout.logs().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn machine(&self, node: &NodeRecord, power: PowerState) -> Machine {
        Machine {
            name: node.name.clone(),
            role: node.role,
            provider_id: node.name.clone(),
            private_addr: IpAddr::V4(node.address),
            ssh: SshEndpoint {
                host: IpAddr::V4(node.address),
                port: 22,
                user: "root".into(),
            },
            power,
        }
    }

    /// Kills processes and waits until they are gone (or zombies), up to five seconds.
    async fn kill_and_wait(&self, procs: &[ProcessRef]) {
        for p in procs {
            let _ = self.system.kill(p.pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut left = false;
            for p in procs {
                if self
                    .system
                    .process(p.pid)
                    .await
                    .is_some_and(|s| s.start_time == p.start_time && !s.zombie)
                {
                    left = true;
                }
            }
            if !left {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Processes still inside one of our network namespaces: a node init that was never
    /// recorded, or strays. They are ours because the namespace is.
    async fn netns_processes(&self, netns: &str) -> Vec<ProcessRef> {
        let Ok(out) = self.cmd("ip", &["netns", "pids", netns]).await else {
            return Vec::new();
        };
        let mut procs = Vec::new();
        for pid in out
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if let Some(state) = self.system.process(pid).await.filter(|s| !s.zombie) {
                procs.push(ProcessRef {
                    pid,
                    start_time: state.start_time,
                });
            }
        }
        procs
    }

    /// Stops a node for good: its init (and with it the whole PID namespace), anything
    /// left in its network namespace, and the cgroups its containers leave behind.
    async fn stop_node(&self, layout: &NodeLayout, netns: &str) -> Vec<String> {
        let mut removed = Vec::new();
        if let Some(init) = self.alive(layout).await {
            self.kill_and_wait(&[init]).await;
            removed.push(format!("init process {}", init.pid));
        }
        // The launcher (unshare) and the dying namespace need a moment to go by themselves;
        // only what is left after that is a stray.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut strays = self.netns_processes(netns).await;
        while !strays.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            strays = self.netns_processes(netns).await;
        }
        if !strays.is_empty() {
            self.kill_and_wait(&strays).await;
            for p in &strays {
                removed.push(format!("process {} in {netns}", p.pid));
            }
        }
        let ids = container_ids(layout).await;
        let cleaned = self.system.remove_container_cgroups(&ids).await;
        if cleaned > 0 {
            removed.push(format!("cgroups of {cleaned} containers"));
        }
        let _ = tokio::fs::remove_file(layout.init_pid()).await;
        removed
    }

    /// The nodes of `plans` that do not run yet must fit in this host's memory
    /// ([`capacity`]); a host that cannot say how much it has is not refused.
    async fn check_capacity(&self, plans: &[ClusterPlan]) -> Result<(), ProviderError> {
        let Some(available) = capacity::read_mem_available_kib().await else {
            return Ok(());
        };
        let mut new_nodes = 0u64;
        for plan in plans {
            let layout = ClusterLayout::new(&self.config.root, &plan.cluster);
            for m in &plan.machines {
                if self.alive(&layout.node(&m.name)).await.is_none() {
                    new_nodes += 1;
                }
            }
        }
        capacity::check_fit(new_nodes, available).map_err(ProviderError::Prerequisite)
    }

    fn validate_plan(&self, plan: &ClusterPlan) -> Result<(), ProviderError> {
        naming::validate_cluster(&plan.cluster)?;
        let mut seen = BTreeSet::new();
        for m in &plan.machines {
            naming::validate_machine(&m.name)?;
            if !seen.insert(m.name.as_str()) {
                return Err(ProviderError::InvalidRequest(format!(
                    "machine {} appears twice in the plan for cluster {}",
                    m.name, plan.cluster
                )));
            }
            if !m
                .host_key
                .private_openssh
                .contains("BEGIN OPENSSH PRIVATE KEY")
            {
                return Err(ProviderError::InvalidRequest(format!(
                    "the host key for {} is not an OpenSSH private key",
                    m.name
                )));
            }
        }
        let max = usize::from(254 - layout::FIRST_NODE_OCTET) + 1;
        if plan.machines.len() > max {
            return Err(ProviderError::InvalidRequest(format!(
                "a lab cluster holds at most {max} nodes, the plan for {} has {}",
                plan.cluster,
                plan.machines.len()
            )));
        }
        let key = plan.login_public_key.trim();
        if key.is_empty() || key.contains('\n') || key.split_whitespace().count() < 2 {
            return Err(ProviderError::InvalidRequest(format!(
                "the login key for cluster {} must be one OpenSSH public key line (ssh-ed25519 AAAA...)",
                plan.cluster
            )));
        }
        Ok(())
    }
}

fn unknown(cluster: &str, machine: &str) -> ProviderError {
    ProviderError::UnknownMachine {
        cluster: cluster.to_string(),
        machine: machine.to_string(),
    }
}

async fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    // Written in place rather than renamed: some of these files are bind-mounted.
    tokio::fs::write(path, content)
        .await
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(io_err(format!("cannot set the mode of {}", path.display())))
}

/// A fresh machine id: the kernel's random UUID without dashes.
async fn machine_id(name: &str) -> String {
    let uuid = tokio::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .await
        .unwrap_or_default()
        .replace('-', "");
    let id = if uuid.trim().len() == 32 {
        uuid.trim().to_string()
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = format!("{name}{nanos}{}", std::process::id());
        format!(
            "{:016x}{:016x}",
            naming::fnv1a(seed.as_bytes()),
            naming::fnv1a(name.as_bytes())
        )
    };
    format!("{id}\n")
}

/// Containers the node's Docker knows, from its data directory.
async fn container_ids(layout: &NodeLayout) -> Vec<String> {
    let dir = layout.var_lib().join("docker/containers");
    let mut ids = Vec::new();
    if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                ids.push(name);
            }
        }
    }
    ids
}

#[async_trait::async_trait]
impl Provider for LabProvider {
    fn name(&self) -> &'static str {
        "lab"
    }

    async fn preflight(&self, plan: &ClusterPlan) -> Result<(), ProviderError> {
        if !cfg!(target_os = "linux") {
            return Err(ProviderError::Prerequisite(
                "the lab provider needs a Linux host (network namespaces): use --provider digitalocean or ssh here".into(),
            ));
        }
        self.validate_plan(plan)?;
        let mut missing = Vec::new();
        if !self.system.is_root() {
            missing.push("not running as root".to_string());
        }
        for program in ["ip", "dockerd", "/usr/sbin/sshd", "unshare", "nsenter"] {
            if self.system.find_program(Path::new(program)).await.is_none() {
                missing.push(format!("{program} not found"));
            }
        }
        if !missing.is_empty() {
            return Err(ProviderError::Prerequisite(format!(
                "{PREREQUISITES}; {}",
                missing.join(", ")
            )));
        }
        if self.config.registry
            && self
                .system
                .find_program(Path::new(registry::PROGRAM))
                .await
                .is_none()
        {
            return Err(ProviderError::Prerequisite(format!(
                "--registry runs Debian's registry server, {} was not found: {}",
                registry::PROGRAM,
                registry::PACKAGE_HINT
            )));
        }
        if self.config.offline && self.system.find_program(Path::new("nft")).await.is_none() {
            return Err(ProviderError::Prerequisite(
                "--offline needs nftables on this host: apt-get install -y nftables".into(),
            ));
        }
        if self
            .system
            .find_program(&self.config.init.program)
            .await
            .is_none()
        {
            return Err(ProviderError::Prerequisite(format!(
                "the lab node program {} was not found: install {NODE_PROGRAM} next to swarmup or on PATH",
                self.config.init.program.display()
            )));
        }
        self.check_capacity(std::slice::from_ref(plan)).await
    }

    async fn create(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        self.validate_plan(plan)?;
        let names = self.names(&plan.cluster);
        let cluster = ClusterLayout::new(&self.config.root, &plan.cluster);
        let lock = self.lock().await?;
        tokio::fs::create_dir_all(&cluster.dir)
            .await
            .map_err(io_err(format!("cannot create {}", cluster.dir.display())))?;

        let mut record = match self.read_record(&cluster).await? {
            Some(record) => record,
            None => {
                let subnet = self.allocate_subnet(&names).await?;
                let record = ClusterRecord {
                    cluster: plan.cluster.clone(),
                    tag: names.tag.clone(),
                    bridge: names.bridge.clone(),
                    subnet,
                    nodes: Vec::new(),
                    registry: false,
                    offline: false,
                    tags: Vec::new(),
                };
                // Written before anything else exists, so the subnet stays reserved.
                self.write_record(&cluster, &record).await?;
                record
            }
        };
        if self.config.registry && !record.registry {
            // A running engine reads daemon.json only when it starts.
            for n in &record.nodes {
                if self.alive(&cluster.node(&n.name)).await.is_some() {
                    return Err(ProviderError::InvalidRequest(format!(
                        "lab cluster {} runs without a registry and its nodes would not trust one added now: destroy it and create it again with --registry",
                        plan.cluster
                    )));
                }
            }
        }
        record.registry |= self.config.registry;
        record.offline |= self.config.offline;
        if !plan.tags.is_empty() {
            record.tags = plan.tags.clone();
        }
        let registry = record.registry.then(|| registry::address(record.gateway()));
        for m in &plan.machines {
            match record.nodes.iter_mut().find(|n| n.name == m.name) {
                Some(existing) => existing.role = m.role,
                None => {
                    let octet = record.next_octet().ok_or_else(|| {
                        ProviderError::InvalidRequest(format!(
                            "lab cluster {} has no address left for {}",
                            plan.cluster, m.name
                        ))
                    })?;
                    record.nodes.push(NodeRecord {
                        name: m.name.clone(),
                        role: m.role,
                        octet,
                        address: with_last_octet(record.subnet, octet),
                        netns: names.netns(&m.name),
                        veth: names.veth(octet),
                    });
                }
            }
            self.prepare_node_dir(&cluster.node(&m.name), m, &plan.login_public_key, registry)
                .await?;
        }
        self.write_record(&cluster, &record).await?;
        write_file(&cluster.hosts(), record.hosts_file().as_bytes(), 0o644).await?;

        self.ensure_bridge(&record).await?;
        let registry_started = if record.registry {
            self.ensure_registry(&cluster, &record).await?
        } else {
            None
        };
        try_join_all(record.nodes.iter().map(|n| async {
            self.ensure_node_net(&record, n).await?;
            progress.machine(&n.name, "network ready");
            Ok::<_, ProviderError>(())
        }))
        .await?;

        let cluster_ref = &cluster;
        let started = try_join_all(record.nodes.iter().map(|n| async move {
            if self.alive(&cluster_ref.node(&n.name)).await.is_some() {
                progress.machine(&n.name, "already running");
                return Ok::<_, ProviderError>(None);
            }
            let init = self.start_node(cluster_ref, n).await?;
            progress.machine(&n.name, "booting");
            Ok(Some((n, init)))
        }))
        .await?;
        drop(lock);

        try_join_all(
            started
                .into_iter()
                .flatten()
                .map(|(n, init)| self.wait_ready(&cluster, n, init, progress)),
        )
        .await?;
        if let Some(started) = registry_started {
            self.wait_registry(&cluster, &record, started).await?;
        }
        self.list(&plan.cluster).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, ProviderError> {
        naming::validate_cluster(cluster)?;
        let layout = ClusterLayout::new(&self.config.root, cluster);
        let Some(record) = self.read_record(&layout).await? else {
            return Ok(Vec::new());
        };
        let powers = join_all(
            record
                .nodes
                .iter()
                .map(|n| async { self.alive(&layout.node(&n.name)).await.is_some() }),
        )
        .await;
        Ok(record
            .nodes
            .iter()
            .zip(powers)
            .map(|(n, on)| {
                self.machine(
                    n,
                    if on {
                        PowerState::Running
                    } else {
                        PowerState::Off
                    },
                )
            })
            .collect())
    }

    async fn clusters(&self) -> Result<Vec<String>, ProviderError> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.config.root).await {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(io_err(format!(
                    "cannot list {}",
                    self.config.root.display()
                ))(e))
            }
        };
        while let Some(entry) = dir.next_entry().await.map_err(io_err(format!(
            "cannot list {}",
            self.config.root.display()
        )))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && naming::validate_cluster(&name).is_ok() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn destroy(&self, cluster: &str) -> Result<DestroyReport, ProviderError> {
        naming::validate_cluster(cluster)?;
        let names = self.names(cluster);
        let layout = ClusterLayout::new(&self.config.root, cluster);
        let _lock = self.lock().await?;
        let record = self.read_record(&layout).await.ok().flatten();
        let mut report = DestroyReport::default();

        let netns: Vec<String> = self
            .system
            .netns_names()
            .await
            .map_err(io_err("cannot list /run/netns"))?
            .into_iter()
            .filter(|n| names.owns_netns(n))
            .collect();

        // Nodes first: every directory, recorded or not, may hold a running init.
        let mut node_dirs = Vec::new();
        if let Ok(mut entries) = tokio::fs::read_dir(&layout.dir).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                if e.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                    node_dirs.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        node_dirs.retain(|d| d != layout::REGISTRY_DIR);
        node_dirs.sort();
        if let Some(registry) = self.alive_at(&layout.registry_pid()).await {
            self.kill_and_wait(&[registry]).await;
            report
                .removed
                .push(format!("lab registry process {}", registry.pid));
        }
        let (names_ref, layout_ref) = (&names, &layout);
        let stopped = join_all(node_dirs.iter().map(|name| async move {
            let ns = names_ref.netns(name);
            (name, self.stop_node(&layout_ref.node(name), &ns).await)
        }))
        .await;
        for (name, removed) in stopped {
            for what in removed {
                report.removed.push(format!("{what} (lab node {name})"));
            }
        }
        for ns in &netns {
            let strays = self.netns_processes(ns).await;
            if !strays.is_empty() {
                self.kill_and_wait(&strays).await;
                for p in strays {
                    report.removed.push(format!("process {} in {ns}", p.pid));
                }
            }
        }

        // Veths before their namespaces: deleting a link is synchronous, while the kernel
        // tears a deleted namespace (and the veths it holds) down in the background, which
        // would leave the names taken for a create that follows at once.
        let links: Vec<serde_json::Value> =
            serde_json::from_str(&self.must("ip", &["-j", "link", "show"]).await?)
                .unwrap_or_default();
        let mut bridges = vec![names.bridge.clone()];
        if let Some(r) = &record {
            if r.bridge != names.bridge {
                bridges.push(r.bridge.clone());
            }
        }
        for link in links.iter().filter_map(|l| l.get("ifname")?.as_str()) {
            if names.owns_veth(link) {
                // Gone already if its namespace took the peer with it.
                if self.cmd("ip", &["link", "del", link]).await?.success {
                    report.removed.push(format!("veth {link}"));
                }
            }
        }
        for ns in &netns {
            self.must("ip", &["netns", "del", ns]).await?;
            report.removed.push(format!("network namespace {ns}"));
        }
        if self
            .system
            .find_program(Path::new("iptables"))
            .await
            .is_some()
        {
            for bridge in &bridges {
                let rule = ["-i", bridge.as_str(), "-o", bridge.as_str(), "-j", "ACCEPT"];
                let mut delete = vec!["-w", "-D", "FORWARD"];
                delete.extend(rule);
                // One per create that raced another; normally exactly one.
                for _ in 0..16 {
                    if !self.cmd("iptables", &delete).await?.success {
                        break;
                    }
                    report.removed.push(format!(
                        "iptables rule FORWARD -i {bridge} -o {bridge} -j ACCEPT"
                    ));
                }
            }
        }
        if self.system.find_program(Path::new("nft")).await.is_some() {
            // Named by the tag alone, so found without a record too.
            let table = offline::table_name(&names.tag);
            if self
                .cmd("nft", &["delete", "table", "inet", &table])
                .await?
                .success
            {
                report.removed.push(format!("nftables table inet {table}"));
            }
        }
        for bridge in &bridges {
            if self.link_exists(bridge).await? {
                self.must("ip", &["link", "del", bridge]).await?;
                let subnet = record
                    .as_ref()
                    .map(|r| format!(" ({}/24)", r.subnet))
                    .unwrap_or_default();
                report.removed.push(format!("bridge {bridge}{subnet}"));
            }
        }

        let mounts = self
            .system
            .mount_points()
            .await
            .map_err(io_err("cannot read /proc/self/mountinfo"))?;
        let mut ours: Vec<&PathBuf> = mounts
            .iter()
            .filter(|m| m.starts_with(&layout.dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in ours {
            self.system
                .unmount(mount)
                .map_err(io_err(format!("cannot unmount {}", mount.display())))?;
            report.removed.push(format!("mount {}", mount.display()));
        }

        match tokio::fs::remove_dir_all(&layout.dir).await {
            Ok(()) => report
                .removed
                .push(format!("state directory {}", layout.dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("cannot remove {}", layout.dir.display()))(e)),
        }
        Ok(report)
    }

    /// The plan, and how many lab nodes this host's memory holds.
    async fn dry_run(&self, plan: &ClusterPlan) -> Result<crate::DryRun, ProviderError> {
        let mut shown = crate::DryRun::plain(self.name(), plan);
        if let Some(available) = capacity::read_mem_available_kib().await {
            shown.details.push((
                "memory".into(),
                format!(
                    "{} more lab nodes fit in {:.1} GiB available (about {} MiB each, {} MiB kept for the host)",
                    capacity::nodes_that_fit(available),
                    available as f64 / (1024.0 * 1024.0),
                    capacity::NODE_MIB,
                    capacity::HOST_RESERVE_MIB
                ),
            ));
        }
        Ok(shown)
    }

    /// Refuses every plan at once when their new nodes together do not fit in this
    /// host's memory, so that a workshop never ends half made for want of memory.
    async fn create_many(
        &self,
        plans: &[ClusterPlan],
        progress: &dyn Progress,
    ) -> Vec<Result<Vec<Machine>, ProviderError>> {
        if let Err(e) = self.check_capacity(plans).await {
            let message = e.to_string();
            return plans
                .iter()
                .map(|_| Err(ProviderError::Prerequisite(message.clone())))
                .collect();
        }
        let mut results = Vec::with_capacity(plans.len());
        for plan in plans {
            results.push(self.create(plan, progress).await);
        }
        results
    }

    /// The tags kept in each cluster's lab record.
    async fn cluster_tags(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<String>>, ProviderError> {
        let mut out = std::collections::BTreeMap::new();
        for cluster in self.clusters().await? {
            let layout = ClusterLayout::new(&self.config.root, &cluster);
            let tags = match self.read_record(&layout).await {
                Ok(Some(record)) => record.tags,
                // A cluster whose record is missing or damaged is still a cluster.
                _ => Vec::new(),
            };
            out.insert(cluster, tags);
        }
        Ok(out)
    }

    async fn registry(&self, cluster: &str) -> Result<Option<String>, ProviderError> {
        Ok(self.registry_address(cluster).await?.map(|a| a.to_string()))
    }

    async fn power_off(&self, cluster: &str, machine: &str) -> Result<(), ProviderError> {
        naming::validate_cluster(cluster)?;
        let layout = ClusterLayout::new(&self.config.root, cluster);
        let _lock = self.lock().await?;
        let record = self.read_record(&layout).await?;
        let node = record
            .as_ref()
            .and_then(|r| r.node(machine))
            .ok_or_else(|| unknown(cluster, machine))?;
        self.stop_node(&layout.node(machine), &node.netns).await;
        if self.link_exists(&node.veth).await? {
            self.must("ip", &["link", "set", &node.veth, "down"])
                .await?;
        }
        Ok(())
    }

    async fn power_on(&self, cluster: &str, machine: &str) -> Result<Machine, ProviderError> {
        naming::validate_cluster(cluster)?;
        let layout = ClusterLayout::new(&self.config.root, cluster);
        let lock = self.lock().await?;
        let record = self
            .read_record(&layout)
            .await?
            .ok_or_else(|| unknown(cluster, machine))?;
        let node = record
            .node(machine)
            .ok_or_else(|| unknown(cluster, machine))?;
        self.ensure_bridge(&record).await?;
        self.ensure_node_net(&record, node).await?;
        let registry_started = if record.registry {
            self.ensure_registry(&layout, &record).await?
        } else {
            None
        };
        let init = match self.alive(&layout.node(machine)).await {
            Some(_) => None,
            None => Some(self.start_node(&layout, node).await?),
        };
        drop(lock);
        if let Some(init) = init {
            self.wait_ready(&layout, node, init, &crate::NoProgress)
                .await?;
        }
        if let Some(started) = registry_started {
            self.wait_registry(&layout, &record, started).await?;
        }
        Ok(self.machine(node, PowerState::Running))
    }
}

#[cfg(test)]
mod tests;
