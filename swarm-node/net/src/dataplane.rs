//! Makes the kernel match the desired data plane, changing only what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::kernel::{FdbEntry, Kernel, LinkInfo, NeighEntry, RouteRule, TableRoute, VxlanInfo};
use crate::plan::{is_return_table, Desired, OverlaySpec, MESH_CT};
use crate::{nft, NetError};

const IP_FORWARD: &str = "net/ipv4/ip_forward";
const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";
const BRIDGE_PREFIX: &str = "swb";
const VXLAN_PREFIX: &str = "swv";
/// The comment that marks our rule in Docker's `DOCKER-USER` chain.
const DOCKER_USER_COMMENT: &str = "swarmnet";

/// The rule in Docker's `DOCKER-USER` chain that lets mesh connections through Docker's
/// `FORWARD` chain (policy `DROP`, and isolation between bridge networks). An accept in our
/// own nftables table would not do: every base chain on a hook sees the packet, and a drop
/// in Docker's (`ip filter`, iptables-nft or legacy alike) is final whatever ours said.
fn docker_user_spec() -> Vec<String> {
    let mark = format!("{MESH_CT:#x}/{MESH_CT:#x}");
    [
        "-m",
        "connmark",
        "--mark",
        &mark,
        "-m",
        "comment",
        "--comment",
        DOCKER_USER_COMMENT,
        "-j",
        "ACCEPT",
    ]
    .map(str::to_string)
    .to_vec()
}

fn route_localnet(bridge: &str) -> String {
    format!("net/ipv4/conf/{bridge}/route_localnet")
}

/// Used when the underlay interface cannot be found: Ethernet's.
const DEFAULT_MTU: u32 = 1500;

/// What one [`Dataplane::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Every change made, in words, in order.
    pub changes: Vec<String>,
    /// Networks (ids) whose bridge, VXLAN device and entries are in place.
    pub applied: Vec<String>,
    /// Networks (ids) skipped because their Docker bridge does not exist (yet).
    pub missing_bridges: Vec<String>,
    /// Networks (ids) that could not be set up, with why.
    pub failed: Vec<(String, String)>,
    /// True when the nftables table was replaced.
    pub nft_applied: bool,
    /// (VIP, backend) pairs whose conntrack entries were flushed: the backend left the VIP.
    pub flushed: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl SyncReport {
    /// True when something in the kernel changed.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }

    /// True when the network's data plane is in place, so tasks on it may start.
    pub fn is_ready(&self, network_id: &str) -> bool {
        self.applied.iter().any(|n| n == network_id)
    }
}

/// What the previous syncs left, to compare with.
#[derive(Debug, Default)]
struct Last {
    /// The last desired state synced, for the backends that left a VIP.
    desired: Option<Desired>,
    /// The nftables script last applied.
    nft: Option<String>,
    /// Nothing is desired and nothing of ours exists: the next empty sync is free.
    clean: bool,
}

/// The data plane of this node's overlay networks.
#[derive(Debug)]
pub struct Dataplane {
    kernel: Arc<dyn Kernel>,
    /// Held for the whole of a sync, so two syncs never interleave their changes.
    last: Mutex<Last>,
}

impl Dataplane {
    pub fn new(kernel: Arc<dyn Kernel>) -> Self {
        Dataplane {
            kernel,
            last: Mutex::new(Last::default()),
        }
    }

    /// MTU of the underlay interface that holds `vtep` (1500 if not found).
    pub async fn underlay_mtu(&self, vtep: Ipv4Addr) -> u32 {
        let (Ok(addrs), Ok(links)) = (self.kernel.addresses().await, self.kernel.links().await)
        else {
            return DEFAULT_MTU;
        };
        addrs
            .iter()
            .find(|(_, net)| net.addr() == vtep)
            .and_then(|(dev, _)| links.iter().find(|l| &l.name == dev))
            .map(|l| l.mtu)
            .unwrap_or(DEFAULT_MTU)
    }

    /// Makes the kernel match `desired`: idempotent, removes what swarmup made and is no
    /// longer desired. Cheap when nothing changed (reads only), and with no network desired
    /// and nothing of ours present it changes nothing at all. A network whose Docker bridge
    /// does not exist yet is skipped and reported, as is one that failed; the others are
    /// set up all the same.
    ///
    /// With the routing mesh it also reconciles the return path's rules and routes (those
    /// of our table range only), `route_localnet` on the ingress bridge, and one rule in
    /// Docker's `DOCKER-USER` chain when that chain exists: Docker's `FORWARD` policy is
    /// `DROP` and it isolates bridge networks from each other, which would drop connections
    /// DNATed from the underlay to the ingress bridge, and replies coming back on another
    /// overlay bridge (tests/mesh_e2e.rs fails without that rule, under iptables-nft). An
    /// accept in our own table would not do: a drop in any base chain of a hook is final.
    pub async fn sync(&self, desired: &Desired) -> Result<SyncReport, NetError> {
        let mut last = self.last.lock().await;
        let mut report = SyncReport::default();

        if desired.is_empty() {
            if last.clean {
                return Ok(report);
            }
            self.remove_all(&mut report).await?;
            self.flush_departed(last.desired.as_ref(), desired, &mut report)
                .await;
            *last = Last {
                desired: None,
                nft: None,
                clean: true,
            };
            return Ok(report);
        }
        last.clean = false;

        self.prepare_host(&mut report).await?;
        // Before the overlays: an encrypted one's VXLAN starts from the tunnel's address.
        let tunnel_error = self.sync_tunnel(desired, &mut report).await;

        let links = self.kernel.links().await?;
        let addrs = self.kernel.addresses().await?;
        let by_name: BTreeMap<&str, &LinkInfo> =
            links.iter().map(|l| (l.name.as_str(), l)).collect();

        for o in &desired.overlays {
            if !by_name.contains_key(o.bridge.as_str()) {
                debug!(network = %o.network_id, bridge = %o.bridge, "bridge missing, network skipped");
                report.missing_bridges.push(o.network_id.clone());
                continue;
            }
            if let (true, Some(why)) = (o.encrypted, &tunnel_error) {
                report.failed.push((o.network_id.clone(), why.clone()));
                continue;
            }
            match self.sync_overlay(o, &by_name, &addrs, &mut report).await {
                Ok(()) => report.applied.push(o.network_id.clone()),
                Err(e) => {
                    warn!(network = %o.network_id, error = %e, "overlay not set up");
                    report.failed.push((o.network_id.clone(), e.to_string()));
                }
            }
        }

        // What belongs to networks no longer desired.
        let vxlans: BTreeSet<&str> = desired.overlays.iter().map(|o| o.vxlan.as_str()).collect();
        let bridges: BTreeSet<&str> = desired.overlays.iter().map(|o| o.bridge.as_str()).collect();
        for l in &links {
            if is_our_vxlan(l) && !vxlans.contains(l.name.as_str()) {
                self.kernel.del_link(&l.name).await?;
                report.changes.push(format!("removed {}", l.name));
            }
        }
        for (dev, net) in &addrs {
            if dev.starts_with(BRIDGE_PREFIX)
                && net.prefix_len() == 32
                && !bridges.contains(dev.as_str())
            {
                self.kernel.del_address(dev, *net).await?;
                report.changes.push(format!("removed {net} from {dev}"));
            }
        }

        self.hairpin_ports(&mut report).await?;

        let mesh_bridge = desired
            .mesh
            .as_ref()
            .map(|m| m.bridge.as_str())
            .filter(|b| by_name.contains_key(b));
        // Off before the table (and its drop of 127/8 from outside) may go away.
        self.localnet_off(&links, mesh_bridge, &mut report).await?;
        self.sync_return_path(desired, mesh_bridge.is_some(), &mut report)
            .await?;

        let script = nft::ruleset(desired);
        let tables = self.kernel.nft_tables().await?;
        let exists = tables.iter().any(|t| t == nft::TABLE);
        if !exists || last.nft.as_deref() != Some(script.as_str()) {
            self.kernel.nft_apply(&script).await?;
            report.nft_applied = true;
            report
                .changes
                .push(format!("replaced nftables table {}", nft::TABLE));
        }
        last.nft = Some(script);

        // On only once the table drops 127/8 arriving from outside. Host-originated
        // connections to 127.0.0.1:PORT are DNATed to a task and leave by the bridge with
        // a 127/8 source until SNAT rewrites it: the kernel routes that only with it.
        if let Some(bridge) = mesh_bridge {
            let key = route_localnet(bridge);
            if self.kernel.read_sysctl(&key).await?.as_deref() != Some("1") {
                self.kernel.write_sysctl(&key, "1").await?;
                report.changes.push(format!("sysctl {key}=1"));
            }
        }
        self.sync_docker_user(desired.mesh.is_some(), &mut report)
            .await?;

        // After the new rules, so no new connection can reach a departed backend.
        self.flush_departed(last.desired.as_ref(), desired, &mut report)
            .await;
        last.desired = Some(desired.clone());

        if report.changed() {
            info!(
                changes = report.changes.len(),
                nft = report.nft_applied,
                "data plane synced"
            );
        }
        Ok(report)
    }

    /// Removes everything swarmup created on this host (node leaves the swarm).
    pub async fn teardown(&self) -> Result<(), NetError> {
        let mut last = self.last.lock().await;
        let mut report = SyncReport::default();
        self.remove_all(&mut report).await?;
        *last = Last {
            desired: None,
            nft: None,
            clean: true,
        };
        info!(changes = report.changes.len(), "data plane torn down");
        Ok(())
    }

    /// Turns hairpin on for every container port of the overlay bridges, so a task calling
    /// its own service's VIP can be answered by itself. Docker makes the port when the
    /// container starts, so the worker calls this after a start too; returns the ports
    /// changed.
    pub async fn set_hairpins(&self) -> Result<Vec<String>, NetError> {
        let mut report = SyncReport::default();
        self.hairpin_ports(&mut report).await?;
        Ok(report.changes)
    }

    async fn hairpin_ports(&self, report: &mut SyncReport) -> Result<(), NetError> {
        for p in self.kernel.bridge_ports().await? {
            if !p.master.starts_with(BRIDGE_PREFIX) || p.name.starts_with(VXLAN_PREFIX) || p.hairpin
            {
                continue;
            }
            // The container may be gone between the read and now: not a failure of sync.
            match self.kernel.set_hairpin(&p.name).await {
                Ok(()) => report.changes.push(format!("hairpin on {}", p.name)),
                Err(e) => debug!(port = %p.name, error = %e, "hairpin not set"),
            }
        }
        Ok(())
    }

    /// Turns `route_localnet` off on every overlay bridge but the mesh's.
    async fn localnet_off(
        &self,
        links: &[LinkInfo],
        keep: Option<&str>,
        report: &mut SyncReport,
    ) -> Result<(), NetError> {
        for l in links {
            if !l.name.starts_with(BRIDGE_PREFIX)
                || l.kind.as_deref() != Some("bridge")
                || Some(l.name.as_str()) == keep
            {
                continue;
            }
            let key = route_localnet(&l.name);
            if self.kernel.read_sysctl(&key).await?.as_deref() == Some("1") {
                self.kernel.write_sysctl(&key, "0").await?;
                report.changes.push(format!("sysctl {key}=0"));
            }
        }
        Ok(())
    }

    /// Makes the return path's rules and routes (ours: a table in the return range) match
    /// `desired`. The routes need the ingress bridge: without it they wait, and the rules
    /// alone would only fall through to the main table.
    async fn sync_return_path(
        &self,
        desired: &Desired,
        bridge_exists: bool,
        report: &mut SyncReport,
    ) -> Result<(), NetError> {
        let k = &self.kernel;
        let (want_rules, want_routes) = if bridge_exists {
            (desired.return_rules(), desired.return_routes())
        } else {
            (Vec::new(), Vec::new())
        };
        let want_rules: BTreeSet<RouteRule> = want_rules.into_iter().collect();
        let want_routes: BTreeSet<TableRoute> = want_routes.into_iter().collect();
        let have_rules: BTreeSet<RouteRule> = k
            .rules()
            .await?
            .into_iter()
            .filter(|r| is_return_table(r.table))
            .collect();
        let have_routes: BTreeSet<TableRoute> = k
            .table_routes()
            .await?
            .into_iter()
            .filter(|r| is_return_table(r.table))
            .collect();
        for r in want_routes.difference(&have_routes) {
            k.replace_table_route(r).await?;
            report.changes.push(format!(
                "route default via {} dev {} table {}",
                r.via, r.dev, r.table
            ));
        }
        for r in want_rules.difference(&have_rules) {
            k.add_rule(r).await?;
            report.changes.push(format!(
                "rule fwmark {:#x}/{:#x} iif {} lookup {}",
                r.fwmark, r.mask, r.iif, r.table
            ));
        }
        for r in have_rules.difference(&want_rules) {
            k.del_rule(r).await?;
            report.changes.push(format!(
                "removed rule fwmark {:#x}/{:#x} iif {} lookup {}",
                r.fwmark, r.mask, r.iif, r.table
            ));
        }
        // A replaced route (same table) is not deleted: the replace already moved it.
        let want_tables: BTreeSet<u32> = want_routes.iter().map(|r| r.table).collect();
        for r in have_routes.difference(&want_routes) {
            if want_tables.contains(&r.table) {
                continue;
            }
            k.del_table_route(r).await?;
            report
                .changes
                .push(format!("removed route of table {}", r.table));
        }
        Ok(())
    }

    /// Our accept rule in Docker's `DOCKER-USER` chain: present while the mesh is, when the
    /// chain exists at all (a host without Docker has no `FORWARD` drop to pass).
    async fn sync_docker_user(
        &self,
        wanted: bool,
        report: &mut SyncReport,
    ) -> Result<(), NetError> {
        let k = &self.kernel;
        let Some(rules) = k.docker_user_rules().await? else {
            return Ok(());
        };
        let spec = docker_user_spec();
        let line = format!("-A DOCKER-USER {}", spec.join(" "));
        let mut present = false;
        for r in rules.iter().filter(|r| is_ours_in_docker_user(r)) {
            if wanted && *r == line && !present {
                present = true;
                continue;
            }
            let args: Vec<&str> = r.split_whitespace().skip(2).collect();
            k.docker_user_delete(&args).await?;
            report.changes.push(format!("removed DOCKER-USER rule {r}"));
        }
        if wanted && !present {
            let args: Vec<&str> = spec.iter().map(String::as_str).collect();
            k.docker_user_insert(&args).await?;
            report.changes.push(format!("DOCKER-USER rule {line}"));
        }
        Ok(())
    }

    /// Makes the WireGuard interface match `desired.tunnel`, or removes it. Returns why it
    /// could not be set up: the encrypted networks then wait, the others go on.
    async fn sync_tunnel(&self, desired: &Desired, report: &mut SyncReport) -> Option<String> {
        let result = match &desired.tunnel {
            Some(spec) => self.kernel.tunnel_apply(spec).await.map(|changed| {
                if changed {
                    report.changes.push(format!(
                        "tunnel {} {} mtu {} with {} peers",
                        crate::tunnel::TUNNEL_DEV,
                        spec.addr,
                        spec.mtu,
                        spec.peers.len()
                    ));
                }
            }),
            None => self.kernel.tunnel_remove().await.map(|removed| {
                if removed {
                    report
                        .changes
                        .push(format!("removed tunnel {}", crate::tunnel::TUNNEL_DEV));
                }
            }),
        };
        result.err().map(|e| {
            warn!(error = %e, "tunnel not set up: encrypted networks wait");
            e.to_string()
        })
    }

    async fn prepare_host(&self, report: &mut SyncReport) -> Result<(), NetError> {
        if self.kernel.read_sysctl(IP_FORWARD).await?.as_deref() != Some("1") {
            self.kernel.write_sysctl(IP_FORWARD, "1").await?;
            report.changes.push(format!("sysctl {IP_FORWARD}=1"));
        }
        let mut brnf = self.kernel.read_sysctl(BRIDGE_NF_CALL_IPTABLES).await?;
        if brnf.is_none() {
            if let Err(e) = self.kernel.load_module("br_netfilter").await {
                warn!(error = %e, "cannot load br_netfilter");
            }
            brnf = self.kernel.read_sysctl(BRIDGE_NF_CALL_IPTABLES).await?;
        }
        match brnf.as_deref() {
            None => return Err(NetError::BridgeNetfilterMissing),
            Some("1") => {}
            Some(_) => {
                self.kernel
                    .write_sysctl(BRIDGE_NF_CALL_IPTABLES, "1")
                    .await?;
                report
                    .changes
                    .push(format!("sysctl {BRIDGE_NF_CALL_IPTABLES}=1"));
            }
        }
        Ok(())
    }

    async fn sync_overlay(
        &self,
        o: &OverlaySpec,
        links: &BTreeMap<&str, &LinkInfo>,
        addrs: &[(String, Ipv4Net)],
        report: &mut SyncReport,
    ) -> Result<(), NetError> {
        let k = &self.kernel;
        let bridge = links[o.bridge.as_str()];
        if let Some(mac) = o.bridge_mac {
            if bridge.mac != Some(mac) {
                k.set_mac(&o.bridge, mac).await?;
                report.changes.push(format!("{} address {mac}", o.bridge));
            }
        }

        // Only /32s are ours: Docker's gateway carries the subnet's prefix.
        let have: BTreeSet<Ipv4Addr> = addrs
            .iter()
            .filter(|(dev, net)| dev == &o.bridge && net.prefix_len() == 32)
            .map(|(_, net)| net.addr())
            .collect();
        for a in o.addrs.difference(&have) {
            k.add_address(&o.bridge, host_net(*a)).await?;
            report.changes.push(format!("added {a}/32 to {}", o.bridge));
        }
        for a in have.difference(&o.addrs) {
            k.del_address(&o.bridge, host_net(*a)).await?;
            report
                .changes
                .push(format!("removed {a}/32 from {}", o.bridge));
        }

        let want = VxlanInfo {
            vni: o.vni,
            dstport: o.dstport,
            local: o.local_vtep,
            learning: false,
            proxy: true,
        };
        let existing = links.get(o.vxlan.as_str());
        let fresh = match existing {
            Some(l) if l.vxlan == Some(want) => false,
            Some(_) => {
                k.del_link(&o.vxlan).await?;
                k.add_vxlan(&o.vxlan, o.vni, o.dstport, o.local_vtep)
                    .await?;
                report.changes.push(format!("recreated {}", o.vxlan));
                true
            }
            None => {
                k.add_vxlan(&o.vxlan, o.vni, o.dstport, o.local_vtep)
                    .await?;
                report.changes.push(format!("created {}", o.vxlan));
                true
            }
        };
        let attached = !fresh
            && existing.is_some_and(|l| {
                l.mtu == o.mtu && l.up && l.master.as_deref() == Some(o.bridge.as_str())
            });
        if !attached {
            k.attach(&o.vxlan, o.mtu, &o.bridge).await?;
            report
                .changes
                .push(format!("{} mtu {} master {} up", o.vxlan, o.mtu, o.bridge));
        }

        // Forwarding entries: stale MACs go, missing or moved ones are replaced.
        let want_fdb: BTreeSet<FdbEntry> = o
            .peers
            .iter()
            .map(|p| FdbEntry {
                mac: p.mac,
                dst: p.vtep,
            })
            .collect();
        let have_fdb: BTreeSet<FdbEntry> = if fresh {
            BTreeSet::new()
        } else {
            k.fdb(&o.vxlan).await?.into_iter().collect()
        };
        let want_macs: BTreeSet<_> = want_fdb.iter().map(|e| e.mac).collect();
        let del: Vec<FdbEntry> = have_fdb
            .iter()
            .filter(|e| !want_macs.contains(&e.mac))
            .copied()
            .collect();
        let add: Vec<FdbEntry> = want_fdb.difference(&have_fdb).copied().collect();
        if !del.is_empty() || !add.is_empty() {
            k.fdb_apply(&o.vxlan, &del, &add).await?;
        }
        for e in &del {
            report
                .changes
                .push(format!("fdb del {} on {}", e.mac, o.vxlan));
        }
        for e in &add {
            report
                .changes
                .push(format!("fdb {} dst {} on {}", e.mac, e.dst, o.vxlan));
        }

        let want_neigh: BTreeSet<NeighEntry> = o
            .peers
            .iter()
            .map(|p| NeighEntry {
                addr: p.addr,
                mac: p.mac,
            })
            .collect();
        let have_neigh: BTreeSet<NeighEntry> = if fresh {
            BTreeSet::new()
        } else {
            k.neighbours(&o.vxlan).await?.into_iter().collect()
        };
        let want_addrs: BTreeSet<_> = want_neigh.iter().map(|e| e.addr).collect();
        let del: Vec<NeighEntry> = have_neigh
            .iter()
            .filter(|e| !want_addrs.contains(&e.addr))
            .copied()
            .collect();
        let add: Vec<NeighEntry> = want_neigh.difference(&have_neigh).copied().collect();
        if !del.is_empty() || !add.is_empty() {
            k.neigh_apply(&o.vxlan, &del, &add).await?;
        }
        for e in &del {
            report
                .changes
                .push(format!("neigh del {} on {}", e.addr, o.vxlan));
        }
        for e in &add {
            report
                .changes
                .push(format!("neigh {} lladdr {} on {}", e.addr, e.mac, o.vxlan));
        }
        Ok(())
    }

    /// Removes our VXLAN devices (their entries go with them), our addresses on the
    /// overlay bridges and our nftables table; reads only when there is none of it.
    async fn remove_all(&self, report: &mut SyncReport) -> Result<(), NetError> {
        let k = &self.kernel;
        let links = k.links().await?;
        self.localnet_off(&links, None, report).await?;
        self.sync_return_path(&Desired::default(), false, report)
            .await?;
        self.sync_docker_user(false, report).await?;
        if k.tunnel_remove().await? {
            report
                .changes
                .push(format!("removed tunnel {}", crate::tunnel::TUNNEL_DEV));
        }
        for l in links {
            if is_our_vxlan(&l) {
                k.del_link(&l.name).await?;
                report.changes.push(format!("removed {}", l.name));
            }
        }
        for (dev, net) in k.addresses().await? {
            if dev.starts_with(BRIDGE_PREFIX) && net.prefix_len() == 32 {
                k.del_address(&dev, net).await?;
                report.changes.push(format!("removed {net} from {dev}"));
            }
        }
        if k.nft_tables().await?.iter().any(|t| t == nft::TABLE) {
            k.nft_apply(&nft::delete_script()).await?;
            report
                .changes
                .push(format!("removed nftables table {}", nft::TABLE));
        }
        Ok(())
    }

    /// Flushes the conntrack entries of every backend that left a VIP since `before`, so
    /// established flows (UDP above all) stop going to it at once. Failures are logged:
    /// the entries would expire on their own.
    async fn flush_departed(
        &self,
        before: Option<&Desired>,
        now: &Desired,
        report: &mut SyncReport,
    ) {
        let Some(before) = before else { return };
        let now = now.backends_by_vip();
        for (vip, old) in before.backends_by_vip() {
            let current = now.get(&vip);
            for backend in old {
                if current.is_some_and(|c| c.contains(&backend)) {
                    continue;
                }
                match self.kernel.conntrack_flush(vip, backend).await {
                    Ok(n) => {
                        debug!(%vip, %backend, flows = n, "conntrack flushed");
                        report.flushed.push((vip, backend));
                    }
                    Err(e) => warn!(%vip, %backend, error = %e, "conntrack flush failed"),
                }
            }
        }
    }
}

fn is_ours_in_docker_user(rule: &str) -> bool {
    rule.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w == ["--comment", DOCKER_USER_COMMENT])
}

fn is_our_vxlan(l: &LinkInfo) -> bool {
    l.name.starts_with(VXLAN_PREFIX) && l.kind.as_deref() == Some("vxlan")
}

fn host_net(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("32 is a valid prefix")
}
