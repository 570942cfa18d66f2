//! The seam between the data plane's decisions and the kernel.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::NetError;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| format!("bad mac {s:?}"))?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("bad mac {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("bad mac {s:?}"));
        }
        Ok(Mac(out))
    }
}

/// What the data plane looks at in a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    /// `bridge`, `vxlan`, `veth`…; `None` for plain devices.
    pub kind: Option<String>,
    pub mtu: u32,
    /// The bridge this link is a port of.
    pub master: Option<String>,
    /// Administratively up.
    pub up: bool,
    pub mac: Option<Mac>,
    pub vxlan: Option<VxlanInfo>,
}

/// A VXLAN device's parameters, as created by [`Kernel::add_vxlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub dstport: u16,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
    pub proxy: bool,
}

/// A static forwarding entry of a VXLAN device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// A permanent neighbour entry, which the VXLAN device's ARP proxy answers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NeighEntry {
    pub addr: Ipv4Addr,
    pub mac: Mac,
}

/// A port of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePort {
    pub name: String,
    pub master: String,
    pub hairpin: bool,
}

/// An IPv4 policy rule: packets that came in on `iif` and whose mark matches `fwmark`
/// under `mask` are routed by table `table`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteRule {
    pub priority: u32,
    pub fwmark: u32,
    pub mask: u32,
    pub iif: String,
    pub table: u32,
}

/// The default route of a numbered routing table: everything goes via `via` on `dev`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableRoute {
    pub table: u32,
    pub via: Ipv4Addr,
    pub dev: String,
}

/// Every kernel operation the data plane needs. Reads return the kernel's current state;
/// changes are idempotent where the kernel allows it (`replace`).
///
/// Sysctl keys are paths below `/proc/sys`, such as `net/ipv4/ip_forward`.
#[async_trait]
pub trait Kernel: Send + Sync + fmt::Debug {
    async fn links(&self) -> Result<Vec<LinkInfo>, NetError>;
    /// Every IPv4 address: (device, address with prefix).
    async fn addresses(&self) -> Result<Vec<(String, Ipv4Net)>, NetError>;
    async fn add_address(&self, dev: &str, addr: Ipv4Net) -> Result<(), NetError>;
    async fn del_address(&self, dev: &str, addr: Ipv4Net) -> Result<(), NetError>;
    async fn set_mac(&self, dev: &str, mac: Mac) -> Result<(), NetError>;
    /// Creates a VXLAN device without learning, with the ARP proxy on.
    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        dstport: u16,
        local: Option<Ipv4Addr>,
    ) -> Result<(), NetError>;
    /// Sets the MTU, enslaves the device to `master` and brings it up.
    async fn attach(&self, dev: &str, mtu: u32, master: &str) -> Result<(), NetError>;
    async fn del_link(&self, dev: &str) -> Result<(), NetError>;
    /// The static (`self`) entries with a destination.
    async fn fdb(&self, dev: &str) -> Result<Vec<FdbEntry>, NetError>;
    async fn fdb_replace(&self, dev: &str, entry: FdbEntry) -> Result<(), NetError>;
    async fn fdb_del(&self, dev: &str, entry: FdbEntry) -> Result<(), NetError>;
    async fn neighbours(&self, dev: &str) -> Result<Vec<NeighEntry>, NetError>;
    async fn neigh_replace(&self, dev: &str, entry: NeighEntry) -> Result<(), NetError>;
    async fn neigh_del(&self, dev: &str, entry: NeighEntry) -> Result<(), NetError>;
    /// Deletes then replaces forwarding entries. One call per entry unless the kernel can
    /// take them in one batch: a first sync with a thousand remote tasks is otherwise
    /// thousands of commands.
    async fn fdb_apply(
        &self,
        dev: &str,
        del: &[FdbEntry],
        replace: &[FdbEntry],
    ) -> Result<(), NetError> {
        for e in del {
            self.fdb_del(dev, *e).await?;
        }
        for e in replace {
            self.fdb_replace(dev, *e).await?;
        }
        Ok(())
    }
    /// Deletes then replaces neighbour entries; like [`Kernel::fdb_apply`].
    async fn neigh_apply(
        &self,
        dev: &str,
        del: &[NeighEntry],
        replace: &[NeighEntry],
    ) -> Result<(), NetError> {
        for e in del {
            self.neigh_del(dev, *e).await?;
        }
        for e in replace {
            self.neigh_replace(dev, *e).await?;
        }
        Ok(())
    }
    /// The ports of every bridge.
    async fn bridge_ports(&self) -> Result<Vec<BridgePort>, NetError>;
    async fn set_hairpin(&self, dev: &str) -> Result<(), NetError>;
    /// `None` when the key does not exist (such as a module not loaded).
    async fn read_sysctl(&self, key: &str) -> Result<Option<String>, NetError>;
    async fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError>;
    async fn load_module(&self, module: &str) -> Result<(), NetError>;
    /// The nftables tables, as `family name` (`ip swarmnet`).
    async fn nft_tables(&self) -> Result<Vec<String>, NetError>;
    /// Runs one nftables script as a single transaction (`nft -f -`).
    async fn nft_apply(&self, script: &str) -> Result<(), NetError>;
    /// Deletes the conntrack entries of connections to `vip` answered by `backend`; returns
    /// how many there were.
    async fn conntrack_flush(&self, vip: Ipv4Addr, backend: Ipv4Addr) -> Result<u32, NetError>;
    /// The IPv4 policy rules that have a mark, an input interface and a numbered table.
    async fn rules(&self) -> Result<Vec<RouteRule>, NetError>;
    async fn add_rule(&self, rule: &RouteRule) -> Result<(), NetError>;
    async fn del_rule(&self, rule: &RouteRule) -> Result<(), NetError>;
    /// The default routes of every numbered table other than `main`, `local` and `default`.
    async fn table_routes(&self) -> Result<Vec<TableRoute>, NetError>;
    /// Adds or replaces the default route of `route.table`.
    async fn replace_table_route(&self, route: &TableRoute) -> Result<(), NetError>;
    async fn del_table_route(&self, route: &TableRoute) -> Result<(), NetError>;
    /// The rules of the iptables chain `DOCKER-USER`, as `iptables -S` prints them
    /// (`-A DOCKER-USER …`); `None` when there is no such chain (no Docker, no iptables).
    async fn docker_user_rules(&self) -> Result<Option<Vec<String>>, NetError>;
    /// Inserts a rule at the top of `DOCKER-USER`; `spec` is what follows the chain name.
    async fn docker_user_insert(&self, spec: &[&str]) -> Result<(), NetError>;
    async fn docker_user_delete(&self, spec: &[&str]) -> Result<(), NetError>;

    /// Makes the WireGuard interface ([`crate::tunnel::TUNNEL_DEV`]) match `spec`: the
    /// device, its key, port and peers, its address, MTU and link up. Returns whether
    /// anything changed.
    async fn tunnel_apply(&self, spec: &crate::tunnel::TunnelSpec) -> Result<bool, NetError>;
    /// Removes the WireGuard interface if this process made one; returns whether it did.
    async fn tunnel_remove(&self) -> Result<bool, NetError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text_round_trips() {
        let mac: Mac = "02:42:0a:00:01:f1".parse().unwrap();
        assert_eq!(mac, Mac([2, 0x42, 10, 0, 1, 0xf1]));
        assert_eq!(mac.to_string(), "02:42:0a:00:01:f1");
        assert!("02:42:0a:00:01".parse::<Mac>().is_err());
        assert!("02:42:0a:00:01:f1:00".parse::<Mac>().is_err());
        assert!("zz:42:0a:00:01:f1".parse::<Mac>().is_err());
    }
}
