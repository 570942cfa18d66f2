//! The text files swarmup writes onto machines and into the user's SSH config.
//!
//! Templates are compiled into the binary, so a released `swarmup` never depends on
//! files next to it. Each template has one typed render function and one context
//! struct; the functions check their input first, so that nothing a user typed can
//! break out of a line in a config file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

/// Where bootstrap puts the swarm-node binary on every machine.
pub const SWARM_NODE_BINARY: &str = "/var/lib/swarmup/swarm-node";
/// Where swarm-node keeps its state on every machine.
pub const SWARM_NODE_STATE_DIR: &str = "/var/lib/swarm-node";
/// Swarm control plane (Raft, dispatcher, CA) and the VXLAN data path (swarm-node's
/// `--data-path-port`). There is no gossip port: swarm-node derives every forwarding
/// entry from the replicated state, so Docker's 7946 stays shut.
pub use swarmup_machine::{CONTROL_PORT, DATA_PORT, DOCKER_GOSSIP_PORT, TUNNEL_PORT};
/// The prefix of the bridges swarm-node makes for overlay networks (`swb<VNI>`).
pub const OVERLAY_BRIDGES: &str = "swb*";

const CLOUD_INIT: &str = "cloud-init.yaml.j2";
const CLOUD_INIT_MACHINES: &str = "cloud-init-machines.yaml.j2";
const SERVICE: &str = "swarm-node.service.j2";
const NFTABLES: &str = "nftables.conf.j2";
const SSH_CONFIG_BLOCK: &str = "ssh-config-block.j2";

/// Errors from rendering. Messages are one line and name the template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{template}: {message}")]
    InvalidInput {
        template: &'static str,
        message: String,
    },
    #[error("{template}: rendering failed: {message}")]
    Render {
        template: &'static str,
        message: String,
    },
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // None of these files is HTML or JSON; values are quoted explicitly where needed.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("ssh_path", ssh_path_filter);
        let sources = [
            (CLOUD_INIT, include_str!("../templates/cloud-init.yaml.j2")),
            (
                CLOUD_INIT_MACHINES,
                include_str!("../templates/cloud-init-machines.yaml.j2"),
            ),
            (SERVICE, include_str!("../templates/swarm-node.service.j2")),
            (NFTABLES, include_str!("../templates/nftables.conf.j2")),
            (
                SSH_CONFIG_BLOCK,
                include_str!("../templates/ssh-config-block.j2"),
            ),
        ];
        for (name, source) in sources {
            // The sources are compiled in and covered by the snapshot tests, so a syntax
            // error here is a build defect, not a runtime condition.
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("embedded template {name} does not parse: {e}"));
        }
        env
    })
}

fn render<S: Serialize>(template: &'static str, context: &S) -> Result<String, TemplateError> {
    let env = environment();
    let tmpl = env
        .get_template(template)
        .map_err(|e| TemplateError::Render {
            template,
            message: e.to_string(),
        })?;
    tmpl.render(context).map_err(|e| TemplateError::Render {
        template,
        message: e.to_string(),
    })
}

/// ssh_config treats `%` as the start of a token and splits on whitespace unless quoted.
fn ssh_path_filter(value: String) -> String {
    format!("\"{}\"", value.replace('%', "%%"))
}

fn invalid(template: &'static str, message: impl Into<String>) -> TemplateError {
    TemplateError::InvalidInput {
        template,
        message: message.into(),
    }
}

/// A machine or cluster name as it may appear in a hostname, an SSH alias or a comment.
fn check_name(template: &'static str, what: &str, value: &str) -> Result<(), TemplateError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            template,
            format!("{what} {value:?} is not a valid name: use letters, digits, '-', '_' and '.'"),
        ))
    }
}

fn check_single_line(template: &'static str, what: &str, value: &str) -> Result<(), TemplateError> {
    if value.trim().is_empty() {
        return Err(invalid(template, format!("{what} is empty")));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            template,
            format!("{what} must be a single line, got {value:?}"),
        ));
    }
    Ok(())
}

fn check_path(template: &'static str, what: &str, value: &str) -> Result<(), TemplateError> {
    check_single_line(template, what, value)?;
    if value.contains('"') {
        return Err(invalid(
            template,
            format!("{what} {value:?} contains a double quote: move the file to a plainer path"),
        ));
    }
    Ok(())
}

fn check_absolute_unit_path(
    template: &'static str,
    what: &str,
    value: &str,
) -> Result<(), TemplateError> {
    check_path(template, what, value)?;
    if !value.starts_with('/') || value.contains(char::is_whitespace) {
        return Err(invalid(
            template,
            format!("{what} {value:?} must be an absolute path without spaces"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// cloud-init

/// What a machine's first boot needs, for providers that take cloud-init user data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInitContext {
    /// The machine name, also its hostname.
    pub hostname: String,
    /// `ssh-ed25519 AAAA...`: the key swarmup logs in with, authorized for root.
    pub login_public_key: String,
    /// The machine's SSH host key, OpenSSH private key text.
    pub host_key_private: String,
    /// The machine's SSH host key, `ssh-ed25519 AAAA...`.
    pub host_key_public: String,
    /// Distribution packages to install; [`CloudInitContext::DEFAULT_PACKAGES`] unless
    /// the provider knows better.
    pub packages: Vec<String>,
}

impl CloudInitContext {
    /// Docker from the distribution, and nft for the node firewall.
    pub const DEFAULT_PACKAGES: [&'static str; 2] = ["docker.io", "nftables"];

    /// A context with the default packages.
    pub fn new(
        hostname: impl Into<String>,
        login_public_key: impl Into<String>,
        host_key_private: impl Into<String>,
        host_key_public: impl Into<String>,
    ) -> Self {
        Self {
            hostname: hostname.into(),
            login_public_key: login_public_key.into(),
            host_key_private: host_key_private.into(),
            host_key_public: host_key_public.into(),
            packages: Self::DEFAULT_PACKAGES
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

/// Renders `#cloud-config` user data: Docker from distribution packages, the host key
/// swarmup generated, root login with the cluster key only, no password logins.
pub fn cloud_init(ctx: &CloudInitContext) -> Result<String, TemplateError> {
    check_name(CLOUD_INIT, "hostname", &ctx.hostname)?;
    check_single_line(CLOUD_INIT, "login public key", &ctx.login_public_key)?;
    check_single_line(CLOUD_INIT, "host public key", &ctx.host_key_public)?;
    if !ctx.host_key_public.starts_with("ssh-ed25519 ") {
        return Err(invalid(
            CLOUD_INIT,
            format!(
                "host key for {} must be ssh-ed25519, got {:?}",
                ctx.hostname,
                ctx.host_key_public.split(' ').next().unwrap_or("")
            ),
        ));
    }
    if !ctx
        .host_key_private
        .trim_start()
        .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
    {
        return Err(invalid(
            CLOUD_INIT,
            format!(
                "host private key for {} is not in OpenSSH format",
                ctx.hostname
            ),
        ));
    }
    for package in &ctx.packages {
        check_name(CLOUD_INIT, "package", package)?;
    }
    render(CLOUD_INIT, ctx)
}

/// Where [`cloud_init_for_machines`] writes every machine's host key, one directory per
/// hostname: `DIR/HOSTNAME/ssh_host_ed25519_key` (and `.pub`). Removed at first boot.
pub const CLOUD_INIT_HOST_KEYS_DIR: &str = "/etc/swarmup/host-keys";
/// The first-boot script that installs the key of the machine's own hostname.
pub const CLOUD_INIT_HOST_KEY_SCRIPT: &str = "/etc/swarmup/install-host-key.sh";

/// One machine of a [`MachinesCloudInitContext`]: its hostname and its SSH host key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineHostKey {
    pub hostname: String,
    /// OpenSSH private key text.
    pub host_key_private: String,
    /// `ssh-ed25519 AAAA...`.
    pub host_key_public: String,
}

/// First-boot user data shared by several machines that a provider creates in one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinesCloudInitContext {
    /// `ssh-ed25519 AAAA...`: the key swarmup logs in with, authorized for root.
    pub login_public_key: String,
    pub machines: Vec<MachineHostKey>,
    /// Distribution packages to install; [`CloudInitContext::DEFAULT_PACKAGES`] by default.
    pub packages: Vec<String>,
}

impl MachinesCloudInitContext {
    /// A context with the default packages.
    pub fn new(login_public_key: impl Into<String>, machines: Vec<MachineHostKey>) -> Self {
        Self {
            login_public_key: login_public_key.into(),
            machines,
            packages: CloudInitContext::DEFAULT_PACKAGES
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct MachinesView<'a> {
    login_public_key: &'a str,
    hostnames: Vec<&'a str>,
    machines: &'a [MachineHostKey],
    packages: &'a [String],
    host_keys_dir: &'static str,
    install_script: &'static str,
}

/// Renders `#cloud-config` user data that several machines share (a provider that creates
/// them in one call gives each the same text): every machine's host key is written, and
/// each machine installs the one filed under its own hostname at first boot and removes
/// the rest. Otherwise like [`cloud_init`]: Docker from distribution packages, root login
/// with the cluster key only, no password logins.
pub fn cloud_init_for_machines(ctx: &MachinesCloudInitContext) -> Result<String, TemplateError> {
    const T: &str = CLOUD_INIT_MACHINES;
    check_single_line(T, "login public key", &ctx.login_public_key)?;
    if ctx.machines.is_empty() {
        return Err(invalid(T, "no machines given: render for at least one"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &ctx.machines {
        check_name(T, "hostname", &m.hostname)?;
        // The hostname is also a directory name on the machine.
        if m.hostname.starts_with('.') || m.hostname.starts_with('-') {
            return Err(invalid(
                T,
                format!(
                    "hostname {:?} must start with a letter or digit",
                    m.hostname
                ),
            ));
        }
        if !seen.insert(m.hostname.as_str()) {
            return Err(invalid(
                T,
                format!(
                    "hostname {} appears twice: give every machine its own",
                    m.hostname
                ),
            ));
        }
        check_single_line(T, "host public key", &m.host_key_public)?;
        if !m.host_key_public.starts_with("ssh-ed25519 ") {
            return Err(invalid(
                T,
                format!(
                    "host key for {} must be ssh-ed25519, got {:?}",
                    m.hostname,
                    m.host_key_public.split(' ').next().unwrap_or("")
                ),
            ));
        }
        if !m
            .host_key_private
            .trim_start()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        {
            return Err(invalid(
                T,
                format!(
                    "host private key for {} is not in OpenSSH format",
                    m.hostname
                ),
            ));
        }
    }
    for package in &ctx.packages {
        check_name(T, "package", package)?;
    }
    render(
        T,
        &MachinesView {
            login_public_key: &ctx.login_public_key,
            hostnames: ctx.machines.iter().map(|m| m.hostname.as_str()).collect(),
            machines: &ctx.machines,
            packages: &ctx.packages,
            host_keys_dir: CLOUD_INIT_HOST_KEYS_DIR,
            install_script: CLOUD_INIT_HOST_KEY_SCRIPT,
        },
    )
}

// ---------------------------------------------------------------------------------------
// systemd unit

/// The swarm-node unit. The same text serves systemd hosts and the lab's supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceContext {
    pub binary_path: String,
    pub state_dir: String,
    pub limit_nofile: u64,
    /// An nftables file to load before every start, so that the firewall survives reboots.
    pub firewall_file: Option<String>,
    pub nft_binary: String,
    /// Extra `Environment=` lines, e.g. `SWARM_NODE_LOG`.
    pub environment: BTreeMap<String, String>,
    /// The sha256 of the binary the unit runs, recorded in a comment so that a new
    /// binary changes the unit and service managers that watch the file restart it.
    pub binary_sha256: Option<String>,
}

impl Default for ServiceContext {
    fn default() -> Self {
        Self {
            binary_path: SWARM_NODE_BINARY.to_string(),
            state_dir: SWARM_NODE_STATE_DIR.to_string(),
            limit_nofile: 1_048_576,
            firewall_file: None,
            nft_binary: "/usr/sbin/nft".to_string(),
            environment: BTreeMap::new(),
            binary_sha256: None,
        }
    }
}

/// Renders `swarm-node.service`.
pub fn swarm_node_service(ctx: &ServiceContext) -> Result<String, TemplateError> {
    check_absolute_unit_path(SERVICE, "binary path", &ctx.binary_path)?;
    check_absolute_unit_path(SERVICE, "state directory", &ctx.state_dir)?;
    check_absolute_unit_path(SERVICE, "nft binary", &ctx.nft_binary)?;
    if let Some(file) = &ctx.firewall_file {
        check_absolute_unit_path(SERVICE, "firewall file", file)?;
    }
    if let Some(sum) = &ctx.binary_sha256 {
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                SERVICE,
                format!("binary checksum {sum:?} is not a sha256 in hex"),
            ));
        }
    }
    if ctx.limit_nofile == 0 {
        return Err(invalid(SERVICE, "open file limit must be above 0"));
    }
    for (name, value) in &ctx.environment {
        let name_ok = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !name_ok {
            return Err(invalid(
                SERVICE,
                format!("environment variable name {name:?} is not valid"),
            ));
        }
        if value.contains(['\n', '\r', '\0', '"', '\\', '%', '$']) {
            return Err(invalid(
                SERVICE,
                format!("environment value for {name} must not contain newlines, quotes, '\\', '%' or '$'"),
            ));
        }
    }
    render(SERVICE, ctx)
}

// ---------------------------------------------------------------------------------------
// nftables

/// An address prefix such as `203.0.113.0/24` or `2001:db8::/32`; a bare address is a
/// single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError(format!(
                "{addr}/{prefix}: the prefix length must be at most {max}"
            )));
        }
        Ok(Self { addr, prefix })
    }

    /// Everything, IPv4 and IPv6.
    pub fn anywhere() -> [Cidr; 2] {
        [
            Cidr {
                addr: IpAddr::from([0, 0, 0, 0]),
                prefix: 0,
            },
            Cidr {
                addr: IpAddr::from([0u16; 8]),
                prefix: 0,
            },
        ]
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn is_anywhere(&self) -> bool {
        self.prefix == 0
    }

    /// Whether `ip` falls inside this prefix; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A string that is not an address prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            CidrError(format!(
                "{s:?} is not an address or prefix: write it like 203.0.113.0/24 or 2001:db8::/32"
            ))
        })?;
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| {
                CidrError(format!(
                    "{s:?}: the prefix length after '/' must be a number"
                ))
            })?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Cidr> for String {
    fn from(value: Cidr) -> Self {
        value.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port open to everyone, e.g. a service published with `--publish 80:80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub port: u16,
    pub protocol: Protocol,
}

impl PublishedPort {
    pub fn tcp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Tcp,
        }
    }

    pub fn udp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Udp,
        }
    }
}

impl FromStr for PublishedPort {
    type Err = String;

    /// `80`, `80/tcp` or `53/udp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, protocol) = match s.trim().split_once('/') {
            Some((p, proto)) => (p, proto),
            None => (s.trim(), "tcp"),
        };
        let port: u16 =
            port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!("{s:?} is not a port: write it like 80, 80/tcp or 53/udp")
            })?;
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("{s:?}: protocol {other:?} is not tcp or udp")),
        };
        Ok(Self { port, protocol })
    }
}

/// One node's firewall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftablesContext {
    /// The port sshd listens on inside the machine.
    pub ssh_port: u16,
    /// Who may reach SSH; empty means anywhere.
    pub ssh_allowed: Vec<Cidr>,
    /// Who besides the cluster's nodes may reach the control port, where the Docker API
    /// is served with client certificates; empty means nobody.
    pub control_allowed: Vec<Cidr>,
    /// The addresses of every node of the cluster, this one included.
    pub cluster_nodes: Vec<IpAddr>,
    pub control_port: u16,
    pub data_port: u16,
    /// Ports open to everyone.
    pub published_ports: Vec<PublishedPort>,
    /// Docker's gossip port (TCP and UDP), opened to the cluster's nodes only when the
    /// cluster runs Docker's own swarm mode; `None` for swarm-node, which has no gossip.
    #[serde(default)]
    pub gossip_port: Option<u16>,
    /// swarm-node's WireGuard tunnel port (UDP), opened to the cluster's nodes only;
    /// `None` for Docker's own swarm mode, which encrypts with IPsec instead.
    #[serde(default)]
    pub tunnel_port: Option<u16>,
    /// Interfaces whose traffic to the host is always accepted: containers talking to
    /// their own host must not be cut off (on overlay bridges, that includes the queries
    /// to the node's service DNS).
    pub trusted_interfaces: Vec<String>,
}

impl Default for NftablesContext {
    fn default() -> Self {
        Self {
            ssh_port: 22,
            ssh_allowed: Vec::new(),
            control_allowed: Vec::new(),
            cluster_nodes: Vec::new(),
            control_port: CONTROL_PORT,
            data_port: DATA_PORT,
            published_ports: Vec::new(),
            gossip_port: None,
            tunnel_port: Some(TUNNEL_PORT),
            trusted_interfaces: vec![
                "docker0".to_string(),
                "docker_gwbridge".to_string(),
                OVERLAY_BRIDGES.to_string(),
            ],
        }
    }
}

/// What the nftables template sees: the typed context split by address family.
#[derive(Serialize)]
struct NftablesView {
    ssh_port: u16,
    ssh_anywhere: bool,
    ssh_v4: Vec<String>,
    ssh_v6: Vec<String>,
    control_anywhere: bool,
    control_v4: Vec<String>,
    control_v6: Vec<String>,
    cluster_v4: Vec<String>,
    cluster_v6: Vec<String>,
    control_port: u16,
    data_port: u16,
    gossip_port: Option<u16>,
    tunnel_port: Option<u16>,
    published_tcp: Vec<u16>,
    published_udp: Vec<u16>,
    trusted_interfaces: Vec<String>,
}

/// Renders the node firewall, loaded with `nft -f`. Reloading it replaces table
/// `inet swarmup` and nothing else.
pub fn nftables(ctx: &NftablesContext) -> Result<String, TemplateError> {
    for (what, port) in [
        ("ssh port", ctx.ssh_port),
        ("control port", ctx.control_port),
        ("data port", ctx.data_port),
        ("gossip port", ctx.gossip_port.unwrap_or(DOCKER_GOSSIP_PORT)),
        ("tunnel port", ctx.tunnel_port.unwrap_or(TUNNEL_PORT)),
    ] {
        if port == 0 {
            return Err(invalid(NFTABLES, format!("{what} must be above 0")));
        }
    }
    for interface in &ctx.trusted_interfaces {
        let ok = !interface.is_empty()
            && interface.len() < 16
            && interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'));
        if !ok {
            return Err(invalid(
                NFTABLES,
                format!("{interface:?} is not an interface name"),
            ));
        }
    }
    if let Some(p) = ctx.published_ports.iter().find(|p| p.port == 0) {
        return Err(invalid(
            NFTABLES,
            format!("published port {}/{} is not a port", p.port, p.protocol),
        ));
    }

    let ssh_anywhere = ctx.ssh_allowed.is_empty() || ctx.ssh_allowed.iter().any(Cidr::is_anywhere);
    let (ssh_v4, ssh_v6) = if ssh_anywhere {
        (Vec::new(), Vec::new())
    } else {
        split_family(ctx.ssh_allowed.iter().map(|c| (c.addr, c.to_string())))
    };
    let control_anywhere = ctx.control_allowed.iter().any(Cidr::is_anywhere);
    let (control_v4, control_v6) = if control_anywhere {
        (Vec::new(), Vec::new())
    } else {
        split_family(ctx.control_allowed.iter().map(|c| (c.addr, c.to_string())))
    };
    let (cluster_v4, cluster_v6) =
        split_family(ctx.cluster_nodes.iter().map(|a| (*a, a.to_string())));
    let ports = |protocol| {
        let mut ports: Vec<u16> = ctx
            .published_ports
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| p.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    };
    let view = NftablesView {
        ssh_port: ctx.ssh_port,
        ssh_anywhere,
        ssh_v4,
        ssh_v6,
        control_anywhere,
        control_v4,
        control_v6,
        cluster_v4,
        cluster_v6,
        control_port: ctx.control_port,
        data_port: ctx.data_port,
        gossip_port: ctx.gossip_port,
        tunnel_port: ctx.tunnel_port,
        published_tcp: ports(Protocol::Tcp),
        published_udp: ports(Protocol::Udp),
        trusted_interfaces: ctx.trusted_interfaces.clone(),
    };
    render(NFTABLES, &view)
}

/// Sorted and without duplicates, because nft rejects a set that names an element twice.
fn split_family(items: impl Iterator<Item = (IpAddr, String)>) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut items: Vec<(IpAddr, String)> = items.collect();
    items.sort();
    items.dedup();
    for (addr, text) in items {
        if addr.is_ipv4() {
            v4.push(text);
        } else {
            v6.push(text);
        }
    }
    (v4, v6)
}

// ---------------------------------------------------------------------------------------
// ssh config block

/// One `Host` entry of the managed block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshHost {
    /// `CLUSTER-nodeN`.
    pub alias: String,
    /// The address to connect to.
    pub host_name: String,
    pub port: u16,
    pub user: String,
    pub identity_file: String,
    pub known_hosts_file: String,
}

/// The managed block of one cluster in `~/.ssh/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshConfigContext {
    pub cluster: String,
    pub hosts: Vec<SshHost>,
}

/// The first line of a cluster's managed block.
pub fn ssh_block_begin(cluster: &str) -> String {
    format!("# BEGIN swarmup {cluster}")
}

/// The last line of a cluster's managed block.
pub fn ssh_block_end(cluster: &str) -> String {
    format!("# END swarmup {cluster}")
}

/// Renders the block, from `# BEGIN swarmup CLUSTER` to `# END swarmup CLUSTER`
/// inclusive, with a trailing newline.
pub fn ssh_config_block(ctx: &SshConfigContext) -> Result<String, TemplateError> {
    check_name(SSH_CONFIG_BLOCK, "cluster name", &ctx.cluster)?;
    for host in &ctx.hosts {
        check_name(SSH_CONFIG_BLOCK, "host alias", &host.alias)?;
        check_name(SSH_CONFIG_BLOCK, "host name", &host.host_name)
            .or_else(|_| host.host_name.parse::<IpAddr>().map(|_| ()).map_err(|_| ()))
            .map_err(|_| {
                invalid(
                    SSH_CONFIG_BLOCK,
                    format!(
                        "address {:?} of {} is neither an IP address nor a host name",
                        host.host_name, host.alias
                    ),
                )
            })?;
        check_name(SSH_CONFIG_BLOCK, "user", &host.user)?;
        if host.port == 0 {
            return Err(invalid(
                SSH_CONFIG_BLOCK,
                format!("SSH port of {} must be above 0", host.alias),
            ));
        }
        check_path(SSH_CONFIG_BLOCK, "identity file", &host.identity_file)?;
        check_path(SSH_CONFIG_BLOCK, "known_hosts file", &host.known_hosts_file)?;
    }
    render(SSH_CONFIG_BLOCK, ctx)
}

#[cfg(test)]
mod tests;
