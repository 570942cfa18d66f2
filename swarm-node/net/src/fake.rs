//! An in-memory kernel for tests: it keeps links, addresses, entries, sysctls, the nftables
//! table and conntrack flows, and records every change as the command that would make it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::kernel::{
    BridgePort, FdbEntry, Kernel, LinkInfo, Mac, NeighEntry, RouteRule, TableRoute, VxlanInfo,
};
use crate::NetError;

/// What the fake kernel holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeState {
    pub links: BTreeMap<String, LinkInfo>,
    pub addrs: BTreeSet<(String, Ipv4Net)>,
    pub fdb: BTreeMap<String, BTreeSet<FdbEntry>>,
    pub neigh: BTreeMap<String, BTreeSet<NeighEntry>>,
    /// Ports with hairpin on.
    pub hairpin: BTreeSet<String>,
    pub sysctls: BTreeMap<String, String>,
    /// nftables tables (`ip swarmnet`) and the script that made each.
    pub nft: BTreeMap<String, String>,
    /// Conntrack flows as (VIP, backend).
    pub flows: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Policy rules (only the kind [`Kernel::rules`] lists).
    pub rules: BTreeSet<RouteRule>,
    /// Default routes of numbered tables, one per table.
    pub routes: BTreeMap<u32, TableRoute>,
    /// iptables' `DOCKER-USER` chain as `iptables -S` prints it; `None`: no Docker.
    pub docker_user: Option<Vec<String>>,
    /// The WireGuard interface's configuration, while it exists.
    pub tunnel: Option<crate::tunnel::TunnelSpec>,
}

/// An in-memory [`Kernel`] that records what was done, for tests.
#[derive(Debug)]
pub struct FakeKernel {
    state: Mutex<FakeState>,
    /// Every change, as the command that would have made it.
    changes: Mutex<Vec<String>>,
    /// How many reads were made.
    reads: Mutex<usize>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKernel {
    /// A host with br_netfilter loaded, forwarding off and no overlay.
    pub fn new() -> Self {
        let mut state = FakeState::default();
        state
            .sysctls
            .insert("net/ipv4/ip_forward".into(), "0".into());
        state
            .sysctls
            .insert("net/bridge/bridge-nf-call-iptables".into(), "0".into());
        state.links.insert(
            "eth0".into(),
            LinkInfo {
                name: "eth0".into(),
                kind: None,
                mtu: 1500,
                master: None,
                up: true,
                mac: Some(Mac([0x52, 0x54, 0, 0, 0, 1])),
                vxlan: None,
            },
        );
        FakeKernel {
            state: Mutex::new(state),
            changes: Mutex::new(Vec::new()),
            reads: Mutex::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, what: String) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    fn read(&self) {
        *self.reads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// A copy of what the kernel holds.
    pub fn state(&self) -> FakeState {
        self.lock().clone()
    }

    /// Changes the kernel's state directly (a test's setup, or someone else's doing).
    pub fn edit(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.lock());
    }

    /// The changes made so far, as commands.
    pub fn changes(&self) -> Vec<String> {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Returns the changes made so far and forgets them.
    pub fn take_changes(&self) -> Vec<String> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn reads(&self) -> usize {
        *self.reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a bridge, as Docker would for a bridge network.
    pub fn add_bridge(&self, name: &str, gateway: Ipv4Net) {
        let mut s = self.lock();
        let n = s.links.len() as u8;
        s.links.insert(
            name.into(),
            LinkInfo {
                name: name.into(),
                kind: Some("bridge".into()),
                mtu: 1500,
                master: None,
                up: true,
                mac: Some(Mac([0x66, 0, 0, 0, 0, n])),
                vxlan: None,
            },
        );
        s.addrs.insert((name.into(), gateway));
        s.sysctls
            .insert(format!("net/ipv4/conf/{name}/route_localnet"), "0".into());
    }

    /// Makes Docker's `DOCKER-USER` chain exist, with its `-j RETURN` of Docker 20.10.
    pub fn with_docker_user(&self) {
        self.lock().docker_user = Some(vec!["-A DOCKER-USER -j RETURN".into()]);
    }

    /// Adds a container's veth to a bridge, as Docker would at container start.
    pub fn add_port(&self, bridge: &str, port: &str) {
        self.lock().links.insert(
            port.into(),
            LinkInfo {
                name: port.into(),
                kind: Some("veth".into()),
                mtu: 1500,
                master: Some(bridge.into()),
                up: true,
                mac: None,
                vxlan: None,
            },
        );
    }

    /// Removes a link as someone else would (Docker removing a network).
    pub fn remove_link(&self, name: &str) {
        let mut s = self.lock();
        remove_link(&mut s, name);
    }

    /// Makes br_netfilter unavailable.
    pub fn without_br_netfilter(&self) {
        self.lock()
            .sysctls
            .remove("net/bridge/bridge-nf-call-iptables");
    }

    /// Adds a conntrack flow to `vip` answered by `backend`.
    pub fn add_flow(&self, vip: Ipv4Addr, backend: Ipv4Addr) {
        self.lock().flows.push((vip, backend));
    }

    /// The script of the `ip swarmnet` table, if it exists.
    pub fn nft_table(&self) -> Option<String> {
        self.lock().nft.get(crate::nft::TABLE).cloned()
    }
}

fn remove_link(s: &mut FakeState, name: &str) {
    s.links.remove(name);
    s.addrs.retain(|(d, _)| d != name);
    s.fdb.remove(name);
    s.neigh.remove(name);
    s.hairpin.remove(name);
    s.routes.retain(|_, r| r.dev != name);
    s.sysctls
        .remove(&format!("net/ipv4/conf/{name}/route_localnet"));
    for l in s.links.values_mut() {
        if l.master.as_deref() == Some(name) {
            l.master = None;
        }
    }
}

fn no_device(command: String, dev: &str) -> NetError {
    NetError::Command {
        command,
        status: Some(1),
        stderr: format!("Cannot find device \"{dev}\""),
    }
}

#[async_trait]
impl Kernel for FakeKernel {
    async fn tunnel_apply(&self, spec: &crate::tunnel::TunnelSpec) -> Result<bool, NetError> {
        let dev = crate::tunnel::TUNNEL_DEV;
        let mut s = self.lock();
        if s.tunnel.as_ref() == Some(spec) && s.links.contains_key(dev) {
            return Ok(false);
        }
        s.tunnel = Some(spec.clone());
        s.links.insert(
            dev.into(),
            LinkInfo {
                name: dev.into(),
                kind: Some("tun".into()),
                mtu: spec.mtu,
                master: None,
                up: true,
                mac: None,
                vxlan: None,
            },
        );
        s.addrs.retain(|(d, _)| d != dev);
        s.addrs.insert((dev.into(), spec.addr));
        drop(s);
        self.change(format!(
            "wireguard {dev} {} mtu {} port {} peers {}",
            spec.addr,
            spec.mtu,
            spec.port,
            spec.peers
                .iter()
                .map(|p| format!("{}@{}", p.addr, p.endpoint))
                .collect::<Vec<_>>()
                .join(",")
        ));
        Ok(true)
    }

    async fn tunnel_remove(&self) -> Result<bool, NetError> {
        let dev = crate::tunnel::TUNNEL_DEV;
        let mut s = self.lock();
        if s.tunnel.take().is_none() {
            return Ok(false);
        }
        s.links.remove(dev);
        s.addrs.retain(|(d, _)| d != dev);
        drop(s);
        self.change(format!("removed wireguard {dev}"));
        Ok(true)
    }

    async fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        self.read();
        Ok(self.lock().links.values().cloned().collect())
    }

    async fn addresses(&self) -> Result<Vec<(String, Ipv4Net)>, NetError> {
        self.read();
        Ok(self.lock().addrs.iter().cloned().collect())
    }

    async fn add_address(&self, dev: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let cmd = format!("ip addr replace {addr} dev {dev}");
        let mut s = self.lock();
        if !s.links.contains_key(dev) {
            return Err(no_device(cmd, dev));
        }
        s.addrs.insert((dev.into(), addr));
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn del_address(&self, dev: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let cmd = format!("ip addr del {addr} dev {dev}");
        self.lock().addrs.remove(&(dev.to_string(), addr));
        self.change(cmd);
        Ok(())
    }

    async fn set_mac(&self, dev: &str, mac: Mac) -> Result<(), NetError> {
        let cmd = format!("ip link set dev {dev} address {mac}");
        let mut s = self.lock();
        let Some(l) = s.links.get_mut(dev) else {
            return Err(no_device(cmd, dev));
        };
        l.mac = Some(mac);
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        dstport: u16,
        local: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let local_text = local.map(|l| format!(" local {l}")).unwrap_or_default();
        let cmd = format!(
            "ip link add {name} type vxlan id {vni} dstport {dstport}{local_text} nolearning proxy"
        );
        let mut s = self.lock();
        if s.links.contains_key(name) {
            return Err(NetError::Command {
                command: cmd,
                status: Some(2),
                stderr: "RTNETLINK answers: File exists".into(),
            });
        }
        s.links.insert(
            name.into(),
            LinkInfo {
                name: name.into(),
                kind: Some("vxlan".into()),
                mtu: 1500,
                master: None,
                up: false,
                mac: Some(Mac([0x66, 1, 0, 0, 0, 0])),
                vxlan: Some(VxlanInfo {
                    vni,
                    dstport,
                    local,
                    learning: false,
                    proxy: true,
                }),
            },
        );
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn attach(&self, dev: &str, mtu: u32, master: &str) -> Result<(), NetError> {
        let cmd = format!("ip link set dev {dev} mtu {mtu} master {master} up");
        let mut s = self.lock();
        if !s.links.contains_key(master) {
            return Err(no_device(cmd, master));
        }
        let Some(l) = s.links.get_mut(dev) else {
            return Err(no_device(cmd, dev));
        };
        l.mtu = mtu;
        l.master = Some(master.into());
        l.up = true;
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn del_link(&self, dev: &str) -> Result<(), NetError> {
        let cmd = format!("ip link del dev {dev}");
        let mut s = self.lock();
        if !s.links.contains_key(dev) {
            return Err(no_device(cmd, dev));
        }
        remove_link(&mut s, dev);
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn fdb(&self, dev: &str) -> Result<Vec<FdbEntry>, NetError> {
        self.read();
        Ok(self
            .lock()
            .fdb
            .get(dev)
            .map(|e| e.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn fdb_replace(&self, dev: &str, e: FdbEntry) -> Result<(), NetError> {
        let cmd = format!(
            "bridge fdb replace {} dev {dev} dst {} self permanent",
            e.mac, e.dst
        );
        let mut s = self.lock();
        if !s.links.contains_key(dev) {
            return Err(no_device(cmd, dev));
        }
        let entries = s.fdb.entry(dev.into()).or_default();
        entries.retain(|x| x.mac != e.mac);
        entries.insert(e);
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn fdb_del(&self, dev: &str, e: FdbEntry) -> Result<(), NetError> {
        let cmd = format!("bridge fdb del {} dev {dev} dst {} self", e.mac, e.dst);
        if let Some(entries) = self.lock().fdb.get_mut(dev) {
            entries.remove(&e);
        }
        self.change(cmd);
        Ok(())
    }

    async fn neighbours(&self, dev: &str) -> Result<Vec<NeighEntry>, NetError> {
        self.read();
        Ok(self
            .lock()
            .neigh
            .get(dev)
            .map(|e| e.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn neigh_replace(&self, dev: &str, e: NeighEntry) -> Result<(), NetError> {
        let cmd = format!(
            "ip neigh replace {} lladdr {} dev {dev} nud permanent",
            e.addr, e.mac
        );
        let mut s = self.lock();
        if !s.links.contains_key(dev) {
            return Err(no_device(cmd, dev));
        }
        let entries = s.neigh.entry(dev.into()).or_default();
        entries.retain(|x| x.addr != e.addr);
        entries.insert(e);
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn neigh_del(&self, dev: &str, e: NeighEntry) -> Result<(), NetError> {
        let cmd = format!("ip neigh del {} dev {dev}", e.addr);
        if let Some(entries) = self.lock().neigh.get_mut(dev) {
            entries.remove(&e);
        }
        self.change(cmd);
        Ok(())
    }

    async fn bridge_ports(&self) -> Result<Vec<BridgePort>, NetError> {
        self.read();
        let s = self.lock();
        Ok(s.links
            .values()
            .filter_map(|l| {
                Some(BridgePort {
                    master: l.master.clone()?,
                    name: l.name.clone(),
                    hairpin: s.hairpin.contains(&l.name),
                })
            })
            .collect())
    }

    async fn set_hairpin(&self, dev: &str) -> Result<(), NetError> {
        self.lock().hairpin.insert(dev.into());
        self.change(format!("bridge link set dev {dev} hairpin on"));
        Ok(())
    }

    async fn read_sysctl(&self, key: &str) -> Result<Option<String>, NetError> {
        self.read();
        Ok(self.lock().sysctls.get(key).cloned())
    }

    async fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let mut s = self.lock();
        if !s.sysctls.contains_key(key) {
            return Err(NetError::Sysctl {
                key: key.into(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        s.sysctls.insert(key.into(), value.into());
        drop(s);
        self.change(format!("sysctl {key}={value}"));
        Ok(())
    }

    async fn load_module(&self, module: &str) -> Result<(), NetError> {
        self.change(format!("modprobe {module}"));
        Err(NetError::MissingTool {
            tool: "modprobe".into(),
            package: "kmod".into(),
        })
    }

    async fn nft_tables(&self) -> Result<Vec<String>, NetError> {
        self.read();
        Ok(self.lock().nft.keys().cloned().collect())
    }

    async fn nft_apply(&self, script: &str) -> Result<(), NetError> {
        let table = crate::nft::TABLE;
        let mut s = self.lock();
        // Scripts declare, delete and maybe redeclare the table with content.
        let what = if script.contains(&format!("table {table} {{\n")) {
            s.nft.insert(table.into(), script.into());
            "replace"
        } else {
            s.nft.remove(table);
            "delete"
        };
        drop(s);
        self.change(format!("nft -f - ({what} table {table})"));
        Ok(())
    }

    async fn conntrack_flush(&self, vip: Ipv4Addr, backend: Ipv4Addr) -> Result<u32, NetError> {
        let mut s = self.lock();
        let before = s.flows.len();
        s.flows.retain(|f| *f != (vip, backend));
        let n = (before - s.flows.len()) as u32;
        drop(s);
        self.change(format!("conntrack -D -d {vip} --reply-src {backend}"));
        Ok(n)
    }

    async fn rules(&self) -> Result<Vec<RouteRule>, NetError> {
        self.read();
        Ok(self.lock().rules.iter().cloned().collect())
    }

    async fn add_rule(&self, r: &RouteRule) -> Result<(), NetError> {
        self.lock().rules.insert(r.clone());
        self.change(format!(
            "ip -4 rule add priority {} fwmark {:#x}/{:#x} iif {} lookup {}",
            r.priority, r.fwmark, r.mask, r.iif, r.table
        ));
        Ok(())
    }

    async fn del_rule(&self, r: &RouteRule) -> Result<(), NetError> {
        let cmd = format!(
            "ip -4 rule del priority {} fwmark {:#x}/{:#x} iif {} lookup {}",
            r.priority, r.fwmark, r.mask, r.iif, r.table
        );
        if !self.lock().rules.remove(r) {
            return Err(NetError::Command {
                command: cmd,
                status: Some(2),
                stderr: "RTNETLINK answers: No such file or directory".into(),
            });
        }
        self.change(cmd);
        Ok(())
    }

    async fn table_routes(&self) -> Result<Vec<TableRoute>, NetError> {
        self.read();
        Ok(self.lock().routes.values().cloned().collect())
    }

    async fn replace_table_route(&self, r: &TableRoute) -> Result<(), NetError> {
        let cmd = format!(
            "ip -4 route replace default via {} dev {} table {}",
            r.via, r.dev, r.table
        );
        let mut s = self.lock();
        if !s.links.contains_key(&r.dev) {
            return Err(no_device(cmd, &r.dev));
        }
        s.routes.insert(r.table, r.clone());
        drop(s);
        self.change(cmd);
        Ok(())
    }

    async fn del_table_route(&self, r: &TableRoute) -> Result<(), NetError> {
        let cmd = format!(
            "ip -4 route del default via {} dev {} table {}",
            r.via, r.dev, r.table
        );
        self.lock().routes.remove(&r.table);
        self.change(cmd);
        Ok(())
    }

    async fn docker_user_rules(&self) -> Result<Option<Vec<String>>, NetError> {
        self.read();
        Ok(self.lock().docker_user.clone())
    }

    async fn docker_user_insert(&self, spec: &[&str]) -> Result<(), NetError> {
        let line = format!("-A DOCKER-USER {}", spec.join(" "));
        let mut s = self.lock();
        let Some(chain) = s.docker_user.as_mut() else {
            return Err(NetError::Command {
                command: format!("iptables -w -I DOCKER-USER {}", spec.join(" ")),
                status: Some(1),
                stderr: "iptables: No chain/target/match by that name.".into(),
            });
        };
        chain.insert(0, line);
        drop(s);
        self.change(format!("iptables -w -I DOCKER-USER {}", spec.join(" ")));
        Ok(())
    }

    async fn docker_user_delete(&self, spec: &[&str]) -> Result<(), NetError> {
        let line = format!("-A DOCKER-USER {}", spec.join(" "));
        if let Some(chain) = self.lock().docker_user.as_mut() {
            if let Some(i) = chain.iter().position(|l| *l == line) {
                chain.remove(i);
            }
        }
        self.change(format!("iptables -w -D DOCKER-USER {}", spec.join(" ")));
        Ok(())
    }
}
