//! Overlay networks in the replicated state: the networks themselves, and every address
//! handed out on them (service VIPs, task addresses, node addresses).
//!
//! The leader chooses every subnet, VNI and address (see `swarm-node`'s
//! `manager/allocator.rs`) and the choices travel in [`crate::Command::CreateNetwork`] and
//! [`crate::Command::Allocate`]. `apply` only checks and records them: it refuses an
//! address outside the network, the gateway, or one already in use, so two managers that
//! raced on a stale view can never hand the same address out twice.
//!
//! Which addresses are in use is derived from the state, never stored twice: the gateway,
//! the VIPs, the task and the node addresses of the network. Only a cursor per network is
//! kept, so a freed address is not reused at once (a stale ARP or conntrack entry elsewhere
//! would still point at its previous owner).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::models::{self, EndpointSpecModeEnum, NetworkAttachmentConfig, ServiceSpec};

/// Docker's name for the routing mesh's network, created with the swarm.
pub const INGRESS_NAME: &str = "ingress";
/// The ingress network's subnet, as Docker's.
pub const INGRESS_SUBNET: &str = "10.0.0.0/24";
/// VXLAN network identifiers are handed out from here up, as libnetwork's overlay driver.
pub const FIRST_VNI: u32 = 4096;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Docker's default address pool for swarm networks, cut into /24s.
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_SUBNET_SIZE: u8 = 24;
/// The IANA VXLAN port, Docker's default `--data-path-port`.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;

/// The network option Docker shows the VNI in (`docker network inspect`).
pub const VXLAN_ID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The network option for the MTU (`-o com.docker.network.driver.mtu=1400`).
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// `--opt encrypted`.
pub const ENCRYPTED_OPTION: &str = "encrypted";

/// The addresses of the nodes' WireGuard interfaces: encrypted overlays run their VXLAN
/// between them. Outside Tailscale's 100.64/10 and at the top of Docker's default pool,
/// which the subnet allocator skips it in; a network given this range is refused.
pub const TUNNEL_SUBNET: &str = "10.255.0.0/16";
/// The UDP port of the WireGuard tunnel between nodes (WireGuard's own default).
pub const TUNNEL_PORT: u16 = 51820;

/// [`TUNNEL_SUBNET`] as a network.
pub fn tunnel_subnet() -> Ipv4Net {
    TUNNEL_SUBNET.parse().expect("valid tunnel subnet")
}

/// A node's WireGuard interface as the swarm knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTunnel {
    /// The node's public key, base64 as WireGuard writes it.
    pub public_key: String,
    /// The node's address on its `swg0` interface, in [`TUNNEL_SUBNET`].
    pub addr: Ipv4Addr,
}

/// Whether `key` is a WireGuard public key as WireGuard writes it: 32 bytes in base64.
pub fn valid_tunnel_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 32)
        && key.len() == 44
}

/// The tunnel address for `node_id`: the one it has, else the lowest one free.
pub fn tunnel_addr_for(state: &crate::ClusterState, node_id: &str) -> Option<Ipv4Addr> {
    if let Some(t) = state.node_tunnels.get(node_id) {
        return Some(t.addr);
    }
    let taken: BTreeSet<Ipv4Addr> = state.node_tunnels.values().map(|t| t.addr).collect();
    tunnel_subnet().hosts().find(|a| !taken.contains(a))
}

/// `apply`'s check of a node's tunnel: a valid key, an address in the subnet that no
/// other node has.
pub(crate) fn check_tunnel(
    state: &crate::ClusterState,
    node_id: &str,
    tunnel: &NodeTunnel,
) -> Result<(), String> {
    if !valid_tunnel_key(&tunnel.public_key) {
        return Err("a tunnel key must be 32 bytes in base64".into());
    }
    let subnet = tunnel_subnet();
    if !subnet.contains(&tunnel.addr)
        || tunnel.addr == subnet.network()
        || tunnel.addr == subnet.broadcast()
    {
        return Err(format!(
            "tunnel address {} is not a host of {subnet}",
            tunnel.addr
        ));
    }
    if let Some((other, _)) = state
        .node_tunnels
        .iter()
        .find(|(id, t)| id.as_str() != node_id && t.addr == tunnel.addr)
    {
        return Err(format!(
            "tunnel address {} is already node {other}'s",
            tunnel.addr
        ));
    }
    Ok(())
}

/// Cluster-wide network settings, chosen at `init` (`--default-addr-pool`,
/// `--default-addr-pool-mask-length`, `--data-path-port`) and shown by `docker info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDefaults {
    pub default_addr_pool: Vec<Ipv4Net>,
    pub subnet_size: u8,
    pub data_path_port: u16,
}

impl Default for NetworkDefaults {
    fn default() -> Self {
        NetworkDefaults {
            default_addr_pool: vec![DEFAULT_ADDR_POOL.parse().expect("valid pool")],
            subnet_size: DEFAULT_SUBNET_SIZE,
            data_path_port: DEFAULT_DATA_PATH_PORT,
        }
    }
}

/// One swarm-scoped overlay network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The network as the Docker API serves it (`Id`, `Name`, `Created`, `Scope: swarm`,
    /// `Driver: overlay`, `IPAM`, `Options` with the VNI, `Labels`, the flags).
    pub network: models::Network,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where task, VIP and node addresses come from (`--ip-range`; the subnet if unset).
    pub ip_range: Ipv4Net,
    pub encrypted: bool,
    /// The MTU the user asked for (`-o com.docker.network.driver.mtu`); when unset each
    /// node derives it from the underlay.
    pub mtu: Option<u32>,
}

impl NetworkRecord {
    pub fn id(&self) -> &str {
        self.network.id.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.network.name.as_deref().unwrap_or_default()
    }

    pub fn is_ingress(&self) -> bool {
        self.network.ingress.unwrap_or(false)
    }

    pub fn internal(&self) -> bool {
        self.network.internal.unwrap_or(false)
    }

    /// True when `addr` may be handed out on this network: inside the range, not the
    /// subnet's network or broadcast address, not the gateway.
    pub fn assignable(&self, addr: Ipv4Addr) -> bool {
        self.ip_range.contains(&addr)
            && self.subnet.contains(&addr)
            && addr != self.subnet.network()
            && addr != self.subnet.broadcast()
            && addr != self.gateway
    }
}

/// One address of a task on one network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub network_id: String,
    pub addr: Ipv4Addr,
}

/// A decision of the leader's allocator, applied as one unit: if any part is refused,
/// nothing of it is recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// New service VIPs: (service id, network id, address).
    pub vips: Vec<(String, String, Ipv4Addr)>,
    /// VIPs given back (the service left the network or turned dnsrr): (service, network).
    pub release_vips: Vec<(String, String)>,
    /// Addresses of tasks, all networks of a task at once.
    pub tasks: Vec<(String, Vec<Attachment>)>,
    /// A node's own address on a network it has tasks on: (node id, network id, address).
    pub nodes: Vec<(String, String, Ipv4Addr)>,
    /// Tasks that could not get an address: (task id, why). The task stays where it is
    /// and shows the reason in `docker service ps`.
    pub failures: Vec<(String, String)>,
    /// Services' new `Endpoint.Ports` (published ports chosen); an empty list frees them.
    #[serde(default)]
    pub ports: Vec<(String, Vec<models::EndpointPortConfig>)>,
}

impl Allocation {
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty()
            && self.release_vips.is_empty()
            && self.tasks.is_empty()
            && self.nodes.is_empty()
            && self.failures.is_empty()
            && self.ports.is_empty()
    }
}

/// How a service is reached on its networks (`--endpoint-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

pub fn endpoint_mode(spec: &ServiceSpec) -> EndpointMode {
    match spec.endpoint_spec.as_ref().and_then(|e| e.mode) {
        Some(EndpointSpecModeEnum::DNSRR) => EndpointMode::Dnsrr,
        _ => EndpointMode::Vip,
    }
}

/// The networks a service's tasks join, in the order given: `TaskTemplate.Networks`, or
/// the deprecated top-level `Networks` that older clients send. Targets are network ids
/// once the API has accepted the spec.
pub fn service_networks(spec: &ServiceSpec) -> &[NetworkAttachmentConfig] {
    let template = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_deref())
        .filter(|n| !n.is_empty());
    template.or(spec.networks.as_deref()).unwrap_or_default()
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The MAC address of an overlay address: `02:42` and the four octets, as Docker derives
/// it. Never stored: every node computes the same one.
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `mac_of` in the usual `02:42:0a:00:01:02` text.
pub fn mac_text(addr: Ipv4Addr) -> String {
    mac_of(addr)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl crate::ClusterState {
    /// The ports a task's service publishes in host mode: bound on the task's node only.
    pub fn host_ports_of(
        &self,
        task: &crate::models::Task,
    ) -> Vec<crate::models::EndpointPortConfig> {
        use crate::models::EndpointPortConfigPublishModeEnum as Mode;
        task.service_id
            .as_deref()
            .and_then(|id| self.services.get(id))
            .and_then(|s| s.spec.as_ref())
            .and_then(|spec| spec.endpoint_spec.as_ref())
            .and_then(|e| e.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .filter(|p| p.publish_mode == Some(Mode::HOST))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Finds a network by full id, name, or unique id prefix, as the docker CLI allows.
    pub fn find_network(&self, key: &str) -> Option<&NetworkRecord> {
        if let Some(n) = self.networks.get(key) {
            return Some(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name() == key) {
            return Some(n);
        }
        crate::unique_prefix(self.networks.iter(), key)
    }

    /// Every address in use on a network.
    pub fn used_addresses(&self, network_id: &str) -> BTreeSet<Ipv4Addr> {
        let mut used = BTreeSet::new();
        if let Some(n) = self.networks.get(network_id) {
            used.insert(n.gateway);
        }
        for vips in self.service_vips.values() {
            used.extend(vips.get(network_id));
        }
        for attachments in self.task_networks.values() {
            used.extend(
                attachments
                    .iter()
                    .filter(|a| a.network_id == network_id)
                    .map(|a| a.addr),
            );
        }
        for addrs in self.node_networks.values() {
            used.extend(addrs.get(network_id));
        }
        used
    }

    /// The services whose spec names this network.
    pub fn services_on_network<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = &'a models::Service> {
        self.services.values().filter(move |s| {
            s.spec.as_ref().is_some_and(|spec| {
                service_networks(spec)
                    .iter()
                    .any(|n| n.target.as_deref() == Some(network_id))
            })
        })
    }

    pub(crate) fn apply_allocation(
        &mut self,
        a: &Allocation,
        index: u64,
    ) -> Result<(), crate::ApplyError> {
        use crate::ApplyError;
        // Check everything first, so a refused allocation records nothing.
        self.check_ports(&a.ports)?;
        let mut taken: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        let released: BTreeSet<(&str, &str)> = a
            .release_vips
            .iter()
            .map(|(s, n)| (s.as_str(), n.as_str()))
            .collect();
        let mut claim = |network_id: &str, addr: Ipv4Addr| -> Result<(), ApplyError> {
            let net = self
                .networks
                .get(network_id)
                .ok_or_else(|| ApplyError::NotFound {
                    kind: "network".into(),
                    id: network_id.into(),
                })?;
            if !net.assignable(addr) {
                return Err(ApplyError::Invalid(format!(
                    "address {addr} cannot be assigned on network {}",
                    net.name()
                )));
            }
            let mut used = self.used_addresses(network_id);
            // A VIP released by this same allocation is free again.
            for (service, vips) in &self.service_vips {
                if let Some(vip) = vips.get(network_id) {
                    if released.contains(&(service.as_str(), network_id)) {
                        used.remove(vip);
                    }
                }
            }
            let mine = taken.entry(net.id()).or_default();
            if used.contains(&addr) || !mine.insert(addr) {
                return Err(ApplyError::Conflict(format!(
                    "address {addr} is already in use on network {}",
                    net.name()
                )));
            }
            Ok(())
        };
        for (_, network_id, addr) in &a.vips {
            claim(network_id, *addr)?;
        }
        for (task_id, attachments) in &a.tasks {
            if self.task_networks.contains_key(task_id) {
                return Err(ApplyError::Conflict(format!(
                    "task {task_id} already has addresses"
                )));
            }
            for at in attachments {
                claim(&at.network_id, at.addr)?;
            }
        }
        for (node_id, network_id, addr) in &a.nodes {
            if self
                .node_networks
                .get(node_id)
                .is_some_and(|m| m.contains_key(network_id))
            {
                return Err(ApplyError::Conflict(format!(
                    "node {node_id} already has an address on network {network_id}"
                )));
            }
            claim(network_id, *addr)?;
        }
        for (service_id, network_id, _) in &a.vips {
            if !self.services.contains_key(service_id) {
                return Err(crate::not_found("service", service_id));
            }
            let has = self
                .service_vips
                .get(service_id)
                .is_some_and(|m| m.contains_key(network_id));
            if has && !released.contains(&(service_id.as_str(), network_id.as_str())) {
                return Err(ApplyError::Conflict(format!(
                    "service {service_id} already has a VIP on network {network_id}"
                )));
            }
        }

        for (service_id, network_id) in &a.release_vips {
            if let Some(m) = self.service_vips.get_mut(service_id) {
                m.remove(network_id);
                if m.is_empty() {
                    self.service_vips.remove(service_id);
                }
            }
        }
        for (service_id, network_id, addr) in &a.vips {
            self.service_vips
                .entry(service_id.clone())
                .or_default()
                .insert(network_id.clone(), *addr);
            self.ipam_cursors.insert(network_id.clone(), *addr);
        }
        for (task_id, attachments) in &a.tasks {
            // A task deleted meanwhile gets nothing.
            let Some(task) = self.tasks.get(task_id) else {
                continue;
            };
            if let Some(node) = task.node_id.clone() {
                self.assignment_versions.insert(node, index);
            }
            for at in attachments {
                self.ipam_cursors.insert(at.network_id.clone(), at.addr);
            }
            self.task_networks
                .insert(task_id.clone(), attachments.clone());
        }
        for (node_id, network_id, addr) in &a.nodes {
            if !self.nodes.contains_key(node_id) {
                continue;
            }
            self.node_networks
                .entry(node_id.clone())
                .or_default()
                .insert(network_id.clone(), *addr);
            self.ipam_cursors.insert(network_id.clone(), *addr);
        }
        for (service_id, ports) in &a.ports {
            if ports.is_empty() {
                self.service_ports.remove(service_id);
            } else {
                self.service_ports.insert(service_id.clone(), ports.clone());
            }
        }
        for (task_id, why) in &a.failures {
            // A changed task gets a new version, which is how a node's delta of its
            // assignments finds it.
            let node = self.tasks.modify(task_id, |task| {
                let status = task.status.get_or_insert_with(Default::default);
                status.err = Some(why.clone());
                status.message = Some("pending task scheduling".into());
                task.version = crate::version(index);
                task.node_id.clone()
            });
            if let Some(Some(node)) = node {
                self.assignment_versions.insert(node, index);
            }
        }
        Ok(())
    }

    /// Forgets every address of a task (it was deleted).
    pub(crate) fn release_task(&mut self, task_id: &str) {
        self.task_networks.remove(task_id);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain overlay network for tests.
    pub(crate) fn record(id: &str, subnet: &str) -> NetworkRecord {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        NetworkRecord {
            network: models::Network {
                id: Some(id.into()),
                name: Some(format!("net-{id}")),
                ..Default::default()
            },
            vni: 4096,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            ip_range: subnet,
            encrypted: false,
            mtu: None,
        }
    }

    #[test]
    fn macs_are_derived_from_addresses_as_docker_does() {
        assert_eq!(mac_text("10.0.1.10".parse().unwrap()), "02:42:0a:00:01:0a");
    }
}
