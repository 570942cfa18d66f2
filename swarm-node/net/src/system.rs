//! The real kernel: iproute2 with JSON output, `nft`, `conntrack` and `/proc/sys`, all run
//! through `tokio::process` so no async task ever blocks on them.

use std::net::Ipv4Addr;
use std::process::Stdio;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::kernel::{
    BridgePort, FdbEntry, Kernel, LinkInfo, Mac, NeighEntry, RouteRule, TableRoute, VxlanInfo,
};
use crate::tunnel::{uapi_set, TunnelKey, TunnelSpec, UserTunnel, TUNNEL_DEV};
use crate::NetError;
use std::sync::Arc;

/// The host's kernel, or the one of a named network namespace (`/run/netns/NAME`).
#[derive(Debug, Clone, Default)]
pub struct SystemKernel {
    netns: Option<String>,
    /// The node's WireGuard key, for encrypted networks ([`SystemKernel::with_tunnel_key`]).
    tunnel_key: Option<Arc<TunnelKey>>,
    /// The WireGuard device this process made; it goes when dropped.
    tunnel: Arc<std::sync::Mutex<Option<UserTunnel>>>,
    /// Set once the interface is known to be gone, so syncs of a node without encrypted
    /// networks do not look for it every time.
    tunnel_absent: Arc<std::sync::atomic::AtomicBool>,
}

impl SystemKernel {
    /// The kernel of the namespace swarm-node runs in.
    pub fn new() -> Self {
        SystemKernel::default()
    }

    /// Runs every command inside the named network namespace (tests build several hosts
    /// on one machine this way).
    pub fn in_netns(name: impl Into<String>) -> Self {
        SystemKernel {
            netns: Some(name.into()),
            ..Default::default()
        }
    }

    async fn tunnel_link_exists(&self) -> Result<bool, NetError> {
        let (status, _, _) = self
            .output("ip", &["link", "show", "dev", TUNNEL_DEV], None)
            .await?;
        Ok(status == Some(0))
    }

    /// Stops this process's WireGuard device, if any; returns whether there was one.
    async fn tunnel_drop(&self) -> Result<bool, NetError> {
        let tunnel = self.tunnel.clone();
        // Dropping the device takes its lock, which its threads may hold for a moment.
        tokio::task::spawn_blocking(move || {
            tunnel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .is_some()
        })
        .await
        .map_err(|e| NetError::TunnelDevice(e.to_string()))
    }

    /// The key of this node's WireGuard interface: without one, encrypted networks
    /// cannot be set up.
    pub fn with_tunnel_key(mut self, key: Arc<TunnelKey>) -> Self {
        self.tunnel_key = Some(key);
        self
    }

    fn package_of(tool: &str) -> &'static str {
        match tool {
            "ip" | "bridge" => "iproute2",
            "nft" => "nftables",
            "conntrack" => "conntrack",
            "iptables" => "iptables",
            "modprobe" => "kmod",
            "nsenter" => "util-linux",
            _ => "coreutils",
        }
    }

    /// Runs a tool; `Ok` carries stdout, a non-zero exit is [`NetError::Command`].
    async fn run(
        &self,
        tool: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, NetError> {
        let output = self.output(tool, args, stdin).await?;
        let (status, stdout, stderr) = output;
        if status == Some(0) {
            Ok(stdout)
        } else {
            Err(NetError::Command {
                command: format!("{tool} {}", args.join(" ")),
                status,
                stderr: stderr.trim().to_string(),
            })
        }
    }

    async fn output(
        &self,
        tool: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(Option<i32>, String, String), NetError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(tool);
                c
            }
            None => Command::new(tool),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let command = format!("{tool} {}", args.join(" "));
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let missing = if self.netns.is_some() {
                    "nsenter"
                } else {
                    tool
                };
                NetError::MissingTool {
                    tool: missing.into(),
                    package: Self::package_of(missing).into(),
                }
            } else {
                NetError::Spawn {
                    command: command.clone(),
                    source: e,
                }
            }
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|e| NetError::Spawn {
                    command: command.clone(),
                    source: e,
                })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| NetError::Spawn { command, source: e })?;
        // nsenter reports a missing tool as exit 127.
        if out.status.code() == Some(127) && self.netns.is_some() {
            return Err(NetError::MissingTool {
                tool: tool.into(),
                package: Self::package_of(tool).into(),
            });
        }
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        tool: &str,
        args: &[&str],
    ) -> Result<T, NetError> {
        let out = self.run(tool, args, None).await?;
        // Some iproute2 versions print nothing at all for an empty list.
        let text = if out.trim().is_empty() {
            "[]"
        } else {
            out.as_str()
        };
        serde_json::from_str(text).map_err(|e| NetError::Output {
            command: format!("{tool} {}", args.join(" ")),
            reason: e.to_string(),
        })
    }
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.trim_start_matches('/'))
}

// === iproute2's JSON shapes (only the fields used) ===

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    mtu: u32,
    master: Option<String>,
    address: Option<String>,
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    info_kind: Option<String>,
    info_data: Option<IpVxlanData>,
}

#[derive(Deserialize)]
struct IpVxlanData {
    id: Option<u32>,
    port: Option<u16>,
    local: Option<Ipv4Addr>,
    learning: Option<bool>,
    proxy: Option<bool>,
}

#[derive(Deserialize)]
struct IpAddrLink {
    #[serde(default)]
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: Option<String>,
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct BridgeFdb {
    mac: String,
    dst: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize)]
struct IpNeigh {
    dst: String,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct BridgeLink {
    ifname: String,
    master: Option<String>,
    #[serde(default)]
    hairpin: bool,
}

#[derive(Deserialize)]
struct IpRule {
    priority: Option<u32>,
    fwmark: Option<String>,
    fwmask: Option<String>,
    iif: Option<String>,
    table: Option<String>,
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    gateway: Option<Ipv4Addr>,
    dev: Option<String>,
    table: Option<String>,
}

fn hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

fn rule_args(r: &RouteRule) -> [String; 8] {
    [
        "priority".into(),
        r.priority.to_string(),
        "fwmark".into(),
        format!("{:#x}/{:#x}", r.fwmark, r.mask),
        "iif".into(),
        r.iif.clone(),
        "lookup".into(),
        r.table.to_string(),
    ]
}

fn route_args(r: &TableRoute) -> [String; 7] {
    [
        "default".into(),
        "via".into(),
        r.via.to_string(),
        "dev".into(),
        r.dev.clone(),
        "table".into(),
        r.table.to_string(),
    ]
}

#[async_trait]
impl Kernel for SystemKernel {
    async fn tunnel_apply(&self, spec: &TunnelSpec) -> Result<bool, NetError> {
        let key = self.tunnel_key.clone().ok_or(NetError::NoTunnelKey)?;
        let request = uapi_set(&key, spec)?;
        self.tunnel_absent
            .store(false, std::sync::atomic::Ordering::Release);
        let exists = self.tunnel_link_exists().await?;
        let applied = {
            let slot = self.tunnel.lock().unwrap_or_else(|p| p.into_inner());
            slot.as_ref().map(|t| t.applied.clone())
        };
        if exists && applied.as_ref() == Some(&Some(spec.clone())) {
            return Ok(false);
        }
        // boringtun reads the interface's MTU once, when it attaches: a new MTU needs a new
        // device. The interface is made first, persistent and with its MTU, and the device
        // attaches to it; this also lets `ip link del` remove it whatever holds it open.
        let fresh = !exists
            || applied.is_none()
            || applied
                .as_ref()
                .and_then(|a| a.as_ref())
                .is_some_and(|a| a.mtu != spec.mtu);
        if fresh {
            self.tunnel_drop().await?;
            if self.tunnel_link_exists().await? {
                self.run("ip", &["link", "del", "dev", TUNNEL_DEV], None)
                    .await?;
            }
            let mtu = spec.mtu.to_string();
            self.run(
                "ip",
                &[
                    "tuntap",
                    "add",
                    "dev",
                    TUNNEL_DEV,
                    "mode",
                    "tun",
                    "multi_queue",
                ],
                None,
            )
            .await?;
            self.run("ip", &["link", "set", "dev", TUNNEL_DEV, "mtu", &mtu], None)
                .await?;
        }
        let tunnel = self.tunnel.clone();
        let netns = self.netns.clone();
        let spec_owned = spec.clone();
        // boringtun's device is made and configured with blocking calls.
        tokio::task::spawn_blocking(move || {
            let mut slot = tunnel.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(UserTunnel::create(netns.as_deref())?);
            }
            let t = slot.as_mut().expect("made above");
            t.applied = None;
            t.configure(&request)?;
            t.applied = Some(spec_owned);
            Ok::<_, NetError>(())
        })
        .await
        .map_err(|e| NetError::TunnelDevice(e.to_string()))??;
        let addr = spec.addr.to_string();
        // A new peer only reconfigures the device; the address goes only when it changed,
        // so traffic to the other peers never stops for it.
        let moved = applied
            .as_ref()
            .and_then(|a| a.as_ref())
            .is_some_and(|a| a.addr != spec.addr);
        if !fresh && moved {
            self.run("ip", &["addr", "flush", "dev", TUNNEL_DEV], None)
                .await?;
        }
        self.run("ip", &["addr", "replace", &addr, "dev", TUNNEL_DEV], None)
            .await?;
        self.run("ip", &["link", "set", "dev", TUNNEL_DEV, "up"], None)
            .await?;
        Ok(true)
    }

    async fn tunnel_remove(&self) -> Result<bool, NetError> {
        use std::sync::atomic::Ordering;
        if self.tunnel_absent.load(Ordering::Acquire) {
            return Ok(false);
        }
        let held = self.tunnel_drop().await?;
        // Persistent: it outlives the process that made it, so one left by an earlier
        // run of swarm-node is removed too.
        let exists = self.tunnel_link_exists().await?;
        if exists {
            self.run("ip", &["link", "del", "dev", TUNNEL_DEV], None)
                .await?;
        }
        self.tunnel_absent.store(true, Ordering::Release);
        Ok(held || exists)
    }

    async fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        Ok(to_links(
            self.json("ip", &["-j", "-d", "link", "show"]).await?,
        ))
    }

    async fn addresses(&self) -> Result<Vec<(String, Ipv4Net)>, NetError> {
        Ok(to_addresses(
            self.json("ip", &["-j", "-4", "addr", "show"]).await?,
        ))
    }

    async fn add_address(&self, dev: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let a = addr.to_string();
        self.run("ip", &["addr", "replace", &a, "dev", dev], None)
            .await
            .map(drop)
    }

    async fn del_address(&self, dev: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let a = addr.to_string();
        self.run("ip", &["addr", "del", &a, "dev", dev], None)
            .await
            .map(drop)
    }

    async fn set_mac(&self, dev: &str, mac: Mac) -> Result<(), NetError> {
        let m = mac.to_string();
        self.run("ip", &["link", "set", "dev", dev, "address", &m], None)
            .await
            .map(drop)
    }

    async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        dstport: u16,
        local: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let (id, port) = (vni.to_string(), dstport.to_string());
        let local = local.map(|l| l.to_string());
        let mut args = vec![
            "link", "add", name, "type", "vxlan", "id", &id, "dstport", &port,
        ];
        if let Some(l) = &local {
            args.extend(["local", l.as_str()]);
        }
        args.extend(["nolearning", "proxy"]);
        self.run("ip", &args, None).await.map(drop)
    }

    async fn attach(&self, dev: &str, mtu: u32, master: &str) -> Result<(), NetError> {
        let m = mtu.to_string();
        self.run(
            "ip",
            &["link", "set", "dev", dev, "mtu", &m, "master", master, "up"],
            None,
        )
        .await
        .map(drop)
    }

    async fn del_link(&self, dev: &str) -> Result<(), NetError> {
        self.run("ip", &["link", "del", "dev", dev], None)
            .await
            .map(drop)
    }

    async fn fdb(&self, dev: &str) -> Result<Vec<FdbEntry>, NetError> {
        Ok(to_fdb(
            self.json("bridge", &["-j", "fdb", "show", "dev", dev])
                .await?,
        ))
    }

    async fn fdb_replace(&self, dev: &str, e: FdbEntry) -> Result<(), NetError> {
        let (mac, dst) = (e.mac.to_string(), e.dst.to_string());
        self.run(
            "bridge",
            &[
                "fdb",
                "replace",
                &mac,
                "dev",
                dev,
                "dst",
                &dst,
                "self",
                "permanent",
            ],
            None,
        )
        .await
        .map(drop)
    }

    async fn fdb_del(&self, dev: &str, e: FdbEntry) -> Result<(), NetError> {
        let (mac, dst) = (e.mac.to_string(), e.dst.to_string());
        self.run(
            "bridge",
            &["fdb", "del", &mac, "dev", dev, "dst", &dst, "self"],
            None,
        )
        .await
        .map(drop)
    }

    async fn neighbours(&self, dev: &str) -> Result<Vec<NeighEntry>, NetError> {
        Ok(to_neighbours(
            self.json("ip", &["-j", "-4", "neigh", "show", "dev", dev])
                .await?,
        ))
    }

    async fn neigh_replace(&self, dev: &str, e: NeighEntry) -> Result<(), NetError> {
        let (addr, mac) = (e.addr.to_string(), e.mac.to_string());
        self.run(
            "ip",
            &[
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
            None,
        )
        .await
        .map(drop)
    }

    async fn fdb_apply(
        &self,
        dev: &str,
        del: &[FdbEntry],
        replace: &[FdbEntry],
    ) -> Result<(), NetError> {
        let mut batch = String::new();
        for e in del {
            batch += &format!("fdb del {} dev {dev} dst {} self\n", e.mac, e.dst);
        }
        for e in replace {
            batch += &format!(
                "fdb replace {} dev {dev} dst {} self permanent\n",
                e.mac, e.dst
            );
        }
        self.run("bridge", &["-batch", "-"], Some(&batch))
            .await
            .map(drop)
    }

    async fn neigh_apply(
        &self,
        dev: &str,
        del: &[NeighEntry],
        replace: &[NeighEntry],
    ) -> Result<(), NetError> {
        let mut batch = String::new();
        for e in del {
            batch += &format!("neigh del {} dev {dev}\n", e.addr);
        }
        for e in replace {
            batch += &format!(
                "neigh replace {} lladdr {} dev {dev} nud permanent\n",
                e.addr, e.mac
            );
        }
        self.run("ip", &["-batch", "-"], Some(&batch))
            .await
            .map(drop)
    }

    async fn neigh_del(&self, dev: &str, e: NeighEntry) -> Result<(), NetError> {
        let addr = e.addr.to_string();
        self.run("ip", &["neigh", "del", &addr, "dev", dev], None)
            .await
            .map(drop)
    }

    async fn bridge_ports(&self) -> Result<Vec<BridgePort>, NetError> {
        Ok(to_ports(
            self.json("bridge", &["-j", "-d", "link", "show"]).await?,
        ))
    }

    async fn set_hairpin(&self, dev: &str) -> Result<(), NetError> {
        self.run(
            "bridge",
            &["link", "set", "dev", dev, "hairpin", "on"],
            None,
        )
        .await
        .map(drop)
    }

    async fn read_sysctl(&self, key: &str) -> Result<Option<String>, NetError> {
        let path = sysctl_path(key);
        if self.netns.is_some() {
            // /proc/sys/net shows the namespace of the process that opens it.
            return match self.output("cat", &[&path], None).await? {
                (Some(0), out, _) => Ok(Some(out.trim().to_string())),
                _ => Ok(None),
            };
        }
        match tokio::fs::read_to_string(&path).await {
            Ok(v) => Ok(Some(v.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NetError::Sysctl {
                key: key.into(),
                source: e,
            }),
        }
    }

    async fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let path = sysctl_path(key);
        if self.netns.is_some() {
            return self.run("tee", &[&path], Some(value)).await.map(drop);
        }
        tokio::fs::write(&path, value)
            .await
            .map_err(|e| NetError::Sysctl {
                key: key.into(),
                source: e,
            })
    }

    async fn load_module(&self, module: &str) -> Result<(), NetError> {
        self.run("modprobe", &[module], None).await.map(drop)
    }

    async fn nft_tables(&self) -> Result<Vec<String>, NetError> {
        let out = self.run("nft", &["list", "tables"], None).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table "))
            .map(str::to_string)
            .collect())
    }

    async fn nft_apply(&self, script: &str) -> Result<(), NetError> {
        self.run("nft", &["-f", "-"], Some(script)).await.map(drop)
    }

    async fn conntrack_flush(&self, vip: Ipv4Addr, backend: Ipv4Addr) -> Result<u32, NetError> {
        let (v, b) = (vip.to_string(), backend.to_string());
        let args = ["-D", "-d", v.as_str(), "--reply-src", b.as_str()];
        let (status, _, stderr) = self.output("conntrack", &args, None).await?;
        let deleted = parse_deleted(&stderr);
        match (status, deleted) {
            (Some(0), n) => Ok(n.unwrap_or(0)),
            // Exit 1 with "0 flow entries have been deleted" means there was nothing to do.
            (Some(1), Some(0)) => Ok(0),
            _ => Err(NetError::Command {
                command: format!("conntrack {}", args.join(" ")),
                status,
                stderr: stderr.trim().to_string(),
            }),
        }
    }

    async fn rules(&self) -> Result<Vec<RouteRule>, NetError> {
        Ok(to_rules(
            self.json("ip", &["-j", "-4", "rule", "show"]).await?,
        ))
    }

    async fn add_rule(&self, rule: &RouteRule) -> Result<(), NetError> {
        let args = rule_args(rule);
        let mut all = vec!["-4", "rule", "add"];
        all.extend(args.iter().map(String::as_str));
        self.run("ip", &all, None).await.map(drop)
    }

    async fn del_rule(&self, rule: &RouteRule) -> Result<(), NetError> {
        let args = rule_args(rule);
        let mut all = vec!["-4", "rule", "del"];
        all.extend(args.iter().map(String::as_str));
        self.run("ip", &all, None).await.map(drop)
    }

    async fn table_routes(&self) -> Result<Vec<TableRoute>, NetError> {
        Ok(to_table_routes(
            self.json("ip", &["-j", "-4", "route", "show", "table", "all"])
                .await?,
        ))
    }

    async fn replace_table_route(&self, route: &TableRoute) -> Result<(), NetError> {
        let args = route_args(route);
        let mut all = vec!["-4", "route", "replace"];
        all.extend(args.iter().map(String::as_str));
        self.run("ip", &all, None).await.map(drop)
    }

    async fn del_table_route(&self, route: &TableRoute) -> Result<(), NetError> {
        let args = route_args(route);
        let mut all = vec!["-4", "route", "del"];
        all.extend(args.iter().map(String::as_str));
        self.run("ip", &all, None).await.map(drop)
    }

    async fn docker_user_rules(&self) -> Result<Option<Vec<String>>, NetError> {
        // -w: wait for the xtables lock Docker may hold rather than fail.
        match self
            .output("iptables", &["-w", "-S", "DOCKER-USER"], None)
            .await
        {
            Ok((Some(0), out, _)) => Ok(Some(
                out.lines()
                    .filter(|l| l.starts_with("-A DOCKER-USER "))
                    .map(str::to_string)
                    .collect(),
            )),
            // No such chain: Docker is not managing this host's firewall.
            Ok(_) | Err(NetError::MissingTool { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn docker_user_insert(&self, spec: &[&str]) -> Result<(), NetError> {
        let mut args = vec!["-w", "-I", "DOCKER-USER"];
        args.extend_from_slice(spec);
        self.run("iptables", &args, None).await.map(drop)
    }

    async fn docker_user_delete(&self, spec: &[&str]) -> Result<(), NetError> {
        let mut args = vec!["-w", "-D", "DOCKER-USER"];
        args.extend_from_slice(spec);
        self.run("iptables", &args, None).await.map(drop)
    }
}

/// Rules with a mark, an input interface and a numbered table; the others are not ours.
fn to_rules(rules: Vec<IpRule>) -> Vec<RouteRule> {
    rules
        .into_iter()
        .filter_map(|r| {
            Some(RouteRule {
                priority: r.priority?,
                fwmark: hex(r.fwmark.as_deref()?)?,
                mask: match r.fwmask.as_deref() {
                    Some(m) => hex(m)?,
                    None => u32::MAX,
                },
                iif: r.iif?,
                table: r.table?.parse().ok()?,
            })
        })
        .collect()
}

/// Default routes of numbered tables; `main` has no `table` field, `local` a name.
fn to_table_routes(routes: Vec<IpRoute>) -> Vec<TableRoute> {
    routes
        .into_iter()
        .filter(|r| r.dst == "default")
        .filter_map(|r| {
            let table: u32 = r.table?.parse().ok()?;
            if matches!(table, 0 | 253..=255) {
                return None;
            }
            Some(TableRoute {
                table,
                via: r.gateway?,
                dev: r.dev?,
            })
        })
        .collect()
}

fn to_links(links: Vec<IpLink>) -> Vec<LinkInfo> {
    links
        .into_iter()
        .map(|l| {
            let kind = l.linkinfo.as_ref().and_then(|i| i.info_kind.clone());
            let vxlan = match (
                &kind,
                l.linkinfo.as_ref().and_then(|i| i.info_data.as_ref()),
            ) {
                (Some(k), Some(d)) if k == "vxlan" => Some(VxlanInfo {
                    vni: d.id.unwrap_or_default(),
                    dstport: d.port.unwrap_or_default(),
                    local: d.local,
                    learning: d.learning.unwrap_or(true),
                    proxy: d.proxy.unwrap_or(false),
                }),
                _ => None,
            };
            LinkInfo {
                up: l.flags.iter().any(|f| f == "UP"),
                mac: l.address.as_deref().and_then(|a| a.parse().ok()),
                name: l.ifname,
                kind,
                mtu: l.mtu,
                master: l.master,
                vxlan,
            }
        })
        .collect()
}

fn to_addresses(links: Vec<IpAddrLink>) -> Vec<(String, Ipv4Net)> {
    let mut out = Vec::new();
    for l in links {
        for a in l.addr_info {
            if a.family.as_deref().is_some_and(|f| f != "inet") {
                continue;
            }
            let (Some(local), Some(len)) = (a.local, a.prefixlen) else {
                continue;
            };
            if let Some(net) = local
                .parse::<Ipv4Addr>()
                .ok()
                .and_then(|addr| Ipv4Net::new(addr, len).ok())
            {
                out.push((l.ifname.clone(), net));
            }
        }
    }
    out
}

fn to_fdb(entries: Vec<BridgeFdb>) -> Vec<FdbEntry> {
    entries
        .into_iter()
        .filter(|e| e.flags.iter().any(|f| f == "self"))
        .filter_map(|e| {
            Some(FdbEntry {
                mac: e.mac.parse().ok()?,
                dst: e.dst?.parse().ok()?,
            })
        })
        .collect()
}

/// Only permanent entries count as ours: others are the kernel's and may expire.
fn to_neighbours(entries: Vec<IpNeigh>) -> Vec<NeighEntry> {
    entries
        .into_iter()
        .filter(|e| e.state.iter().any(|s| s == "PERMANENT"))
        .filter_map(|e| {
            Some(NeighEntry {
                addr: e.dst.parse().ok()?,
                mac: e.lladdr?.parse().ok()?,
            })
        })
        .collect()
}

fn to_ports(links: Vec<BridgeLink>) -> Vec<BridgePort> {
    links
        .into_iter()
        .filter_map(|l| {
            Some(BridgePort {
                master: l.master?,
                name: l.ifname,
                hairpin: l.hairpin,
            })
        })
        .collect()
}

/// The count in conntrack's "N flow entries have been deleted." message.
fn parse_deleted(stderr: &str) -> Option<u32> {
    stderr
        .lines()
        .find(|l| {
            l.contains("flow entries have been deleted")
                || l.contains("flow entry has been deleted")
        })
        .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn without_a_key_an_encrypted_network_is_refused_before_anything_is_made() {
        let spec = crate::tunnel::TunnelSpec {
            addr: "10.255.0.1/16".parse().unwrap(),
            mtu: 1440,
            port: 51820,
            peers: vec![],
        };
        // No command runs: the key is checked first.
        let k = SystemKernel::in_netns("no-such-namespace");
        let e = k.tunnel_apply(&spec).await.unwrap_err();
        assert!(matches!(e, NetError::NoTunnelKey));
        assert_eq!(
            e.to_string(),
            "this node has no tunnel key: encrypted networks cannot be set up"
        );
    }
    use super::*;

    // Outputs of iproute2 6.1 (Debian 12), trimmed to a few fields.
    const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"mtu":65536,"address":"00:00:00:00:00:00"},
        {"ifindex":2,"ifname":"swb4097","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"address":"ae:2f:63:27:ab:52","linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500,"stp_state":0}}},
        {"ifindex":3,"ifname":"swv4097","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"master":"swb4097","address":"ae:2f:63:27:ab:52","linkinfo":{"info_kind":"vxlan","info_data":{"id":4097,"local":"10.9.9.9","port_range":{"low":0,"high":0},"port":4789,"learning":false,"proxy":true,"ttl":0},"info_slave_kind":"bridge"}}]"#;

    fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> T {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn links_are_read_from_ip_json() {
        let links = to_links(parse(LINKS));
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].kind, None);
        assert!(!links[0].up);
        assert_eq!(links[1].kind.as_deref(), Some("bridge"));
        assert!(links[1].up && links[1].vxlan.is_none());
        assert_eq!(
            links[2],
            LinkInfo {
                name: "swv4097".into(),
                kind: Some("vxlan".into()),
                mtu: 1450,
                master: Some("swb4097".into()),
                up: true,
                mac: Some("ae:2f:63:27:ab:52".parse().unwrap()),
                vxlan: Some(VxlanInfo {
                    vni: 4097,
                    dstport: 4789,
                    local: Some("10.9.9.9".parse().unwrap()),
                    learning: false,
                    proxy: true,
                }),
            }
        );
    }

    #[test]
    fn addresses_fdb_neighbours_and_ports_are_read_from_json() {
        let addrs = to_addresses(parse(
            r#"[{"ifindex":2,"ifname":"swb4097","mtu":1500,"addr_info":[{"family":"inet","local":"10.0.1.1","prefixlen":24},{"family":"inet","local":"10.0.1.254","prefixlen":32}]},{"ifindex":4,"ifname":"eth9","addr_info":[{}]}]"#,
        ));
        let addrs: Vec<_> = addrs.iter().map(|(d, n)| format!("{d} {n}")).collect();
        assert_eq!(addrs, ["swb4097 10.0.1.1/24", "swb4097 10.0.1.254/32"]);

        let fdb = to_fdb(parse(
            r#"[{"mac":"ae:2f:63:27:ab:52","flags":[],"master":"swb4097","state":"permanent"},{"mac":"02:42:0a:00:01:14","dst":"10.9.9.8","flags":["self"],"state":"permanent"}]"#,
        ));
        assert_eq!(
            fdb,
            [FdbEntry {
                mac: "02:42:0a:00:01:14".parse().unwrap(),
                dst: "10.9.9.8".parse().unwrap()
            }]
        );

        let neigh = to_neighbours(parse(
            r#"[{"dst":"10.0.1.20","lladdr":"02:42:0a:00:01:14","state":["PERMANENT"]},{"dst":"10.0.1.21","lladdr":"02:42:0a:00:01:15","state":["STALE"]},{"dst":"10.0.1.22","state":["FAILED"]}]"#,
        ));
        assert_eq!(
            neigh,
            [NeighEntry {
                addr: "10.0.1.20".parse().unwrap(),
                mac: "02:42:0a:00:01:14".parse().unwrap()
            }]
        );

        let ports = to_ports(parse(
            r#"[{"ifindex":3,"ifname":"swv4097","mtu":1500,"master":"swb4097","state":"forwarding","hairpin":false},{"ifindex":5,"ifname":"veth1","master":"swb4097","hairpin":true}]"#,
        ));
        assert_eq!(
            ports,
            [
                BridgePort {
                    name: "swv4097".into(),
                    master: "swb4097".into(),
                    hairpin: false
                },
                BridgePort {
                    name: "veth1".into(),
                    master: "swb4097".into(),
                    hairpin: true
                }
            ]
        );
    }

    #[test]
    fn rules_and_table_routes_are_read_from_ip_json() {
        // iproute2 6.1 on Linux 6.18.
        let rules = to_rules(parse(
            r#"[{"priority":0,"src":"all","table":"local"},{"priority":100,"src":"all","fwmark":"0x141000","fwmask":"0xffff3000","iif":"swb4096","table":"65556"},{"priority":101,"src":"all","fwmark":"0x7","iif":"eth0","table":"main"},{"priority":32766,"src":"all","table":"main"}]"#,
        ));
        assert_eq!(
            rules,
            [RouteRule {
                priority: 100,
                fwmark: 0x14_1000,
                mask: 0xffff_3000,
                iif: "swb4096".into(),
                table: 65556
            }]
        );
        assert_eq!(
            rule_args(&rules[0]).join(" "),
            "priority 100 fwmark 0x141000/0xffff3000 iif swb4096 lookup 65556"
        );
        let routes = to_table_routes(parse(
            r#"[{"dst":"default","gateway":"10.0.0.20","dev":"swb4096","table":"65556","flags":[]},{"dst":"default","gateway":"192.168.1.1","dev":"eth0","flags":[]},{"dst":"10.0.0.0/24","dev":"swb4096","protocol":"kernel","scope":"link","prefsrc":"10.0.0.1","flags":[]},{"type":"local","dst":"10.0.0.1","dev":"swb4096","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.0.0.1","flags":[]}]"#,
        ));
        assert_eq!(
            routes,
            [TableRoute {
                table: 65556,
                via: "10.0.0.20".parse().unwrap(),
                dev: "swb4096".into()
            }]
        );
    }

    #[test]
    fn conntrack_counts_are_read_from_its_message() {
        let msg = "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n";
        assert_eq!(parse_deleted(msg), Some(0));
        let msg = "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n";
        assert_eq!(parse_deleted(msg), Some(3));
        assert_eq!(parse_deleted("conntrack v1.4.7: Operation failed"), None);
    }

    #[test]
    fn sysctl_keys_are_paths_below_proc_sys() {
        assert_eq!(
            sysctl_path("net/ipv4/ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }
}
