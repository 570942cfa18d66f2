//! The decisions of the VirtualBox provider, as pure functions: which host-only adapter
//! to use, which addresses and MACs the VMs get, the VBoxManage commands that make a
//! base disk and a VM, and the host checks of preflight.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::Role;

/// The host-only network: VirtualBox's own default, allowed without networks.conf since
/// 6.1.28. The host's adapter has `.1`.
pub const HOST_ONLY_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 1);
pub const HOST_ONLY_PREFIX: u8 = 24;
pub const HOST_ONLY_NETMASK: &str = "255.255.255.0";
/// Static addresses come from `.10`–`.99`, below VirtualBox's DHCP pool (`.101`–`.254`).
pub const FIRST_HOST: u8 = 10;
pub const LAST_HOST: u8 = 99;
/// The VirtualBox group of a cluster's VMs is `/swarmup/CLUSTER`.
pub const GROUP_PREFIX: &str = "/swarmup/";
/// The storage controller swarmup adds.
pub const CONTROLLER: &str = "SATA";
/// The serial console log and the seed, inside the VM's folder.
pub const CONSOLE_LOG: &str = "console.log";
pub const SEED_ISO: &str = "seed.iso";
/// The base disk grows to this size before VMs are linked to it (the cloud image's root
/// file system grows with it on first boot).
pub const BASE_DISK_MB: u32 = 20 * 1024;
/// The oldest VirtualBox swarmup drives.
pub const MIN_VERSION: (u32, u32) = (6, 1);

pub fn group(cluster: &str) -> String {
    format!("{GROUP_PREFIX}{cluster}")
}

/// The cluster of a VM from its `groups` value (comma-separated group paths).
pub fn cluster_of_groups(groups: &str) -> Option<String> {
    groups.split(',').find_map(|g| {
        let c = g.trim().strip_prefix(GROUP_PREFIX)?;
        (!c.is_empty() && !c.contains('/')).then(|| c.to_string())
    })
}

fn in_host_only_net(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let [ha, hb, hc, _] = HOST_ONLY_HOST.octets();
    (a, b, c) == (ha, hb, hc)
}

/// The adapter to reuse: one whose address lies in 192.168.56.0/24 with a /24 mask.
pub fn choose_adapter(ifs: &[super::parse::HostOnlyIf]) -> Option<String> {
    let mask: Ipv4Addr = HOST_ONLY_NETMASK.parse().ok()?;
    ifs.iter()
        .filter(|i| i.ip.is_some_and(in_host_only_net) && i.mask == Some(mask))
        // The host's usual `.1` first, if several qualify.
        .min_by_key(|i| i.ip != Some(HOST_ONLY_HOST))
        .map(|i| i.name.clone())
}

/// `n` free static addresses, lowest first.
pub fn pick_addresses(used: &BTreeSet<Ipv4Addr>, n: usize) -> Option<Vec<Ipv4Addr>> {
    let [a, b, c, _] = HOST_ONLY_HOST.octets();
    let free: Vec<Ipv4Addr> = (FIRST_HOST..=LAST_HOST)
        .map(|d| Ipv4Addr::new(a, b, c, d))
        .filter(|ip| !used.contains(ip))
        .take(n)
        .collect();
    (free.len() == n).then_some(free)
}

/// A MAC in VirtualBox's range (08:00:27), derived from the VM's name and NIC, so that
/// the seed can name it before the VM exists. VBoxManage's form: 12 hex digits.
pub fn mac_for(cluster: &str, machine: &str, nic: u8) -> String {
    let seed = format!("{cluster}\0{machine}\0{nic}");
    let h = crate::lab::naming::fnv1a(seed.as_bytes());
    format!("080027{:06X}", h & 0xff_ffff)
}

/// `080027A1B2C3` → `08:00:27:a1:b2:c3`, as cloud-init matches it.
pub fn mac_colons(mac: &str) -> String {
    mac.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

/// What swarmup writes into a VM's description, last of all: a VM without it was never
/// finished, and what `list` reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub cluster: String,
    pub role: Role,
    pub address: Ipv4Addr,
}

impl Description {
    pub fn render(&self) -> String {
        format!(
            "swarmup cluster={} role={} address={}",
            self.cluster, self.role, self.address
        )
    }

    pub fn parse(text: &str) -> Option<Description> {
        let rest = text.trim().strip_prefix("swarmup ")?;
        let (mut cluster, mut role, mut address) = (None, None, None);
        for field in rest.split_whitespace() {
            match field.split_once('=')? {
                ("cluster", v) => cluster = Some(v.to_string()),
                ("role", "manager") => role = Some(Role::Manager),
                ("role", "worker") => role = Some(Role::Worker),
                ("address", v) => address = v.parse().ok(),
                _ => {}
            }
        }
        Some(Description {
            cluster: cluster?,
            role: role?,
            address: address?,
        })
    }
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The commands that turn the image's disk into the shared base disk: a VDI copy, grown,
/// then `multiattach`, so that every VM attached to it gets its own differencing disk
/// (a linked clone) and the base never changes.
pub fn base_disk_plan(source: &str, base: &str) -> Vec<Vec<String>> {
    vec![
        argv(&["clonemedium", "disk", source, base, "--format", "VDI"]),
        argv(&[
            "modifymedium",
            "disk",
            base,
            "--resize",
            &BASE_DISK_MB.to_string(),
        ]),
        argv(&["modifymedium", "disk", base, "--type", "multiattach"]),
    ]
}

/// `createvm`: registered, in the cluster's group, in VirtualBox's machine folder.
pub fn createvm(name: &str, cluster: &str) -> Vec<String> {
    argv(&[
        "createvm",
        "--name",
        name,
        "--groups",
        &group(cluster),
        "--ostype",
        "Ubuntu_64",
        "--register",
    ])
}

/// What one VM is made of, beyond its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u32,
    /// NIC1 (NAT) and NIC2 (host-only) MACs, VBoxManage form.
    pub mac_nat: String,
    pub mac_host_only: String,
    pub adapter: String,
    /// The VM's folder (from `createvm`'s settings file).
    pub vm_dir: String,
    pub base_disk: String,
    pub description: Description,
}

impl VmSpec {
    pub fn console_log(&self) -> String {
        format!("{}/{CONSOLE_LOG}", self.vm_dir)
    }
    pub fn seed_iso(&self) -> String {
        format!("{}/{SEED_ISO}", self.vm_dir)
    }
}

/// The commands after `createvm` (the seed must be written before the last but one).
/// The description comes last: it marks the VM as finished.
pub fn configure_plan(s: &VmSpec) -> Vec<Vec<String>> {
    vec![
        argv(&[
            "modifyvm",
            &s.name,
            "--cpus",
            &s.cpus.to_string(),
            "--memory",
            &s.memory_mb.to_string(),
            "--ioapic",
            "on",
            "--rtcuseutc",
            "on",
            "--boot1",
            "disk",
            "--boot2",
            "none",
            "--boot3",
            "none",
            "--boot4",
            "none",
            // Ubuntu's cloud images wait for a serial console that is not there; a port
            // writing to a file also keeps the boot log for when a boot fails.
            "--uart1",
            "0x3F8",
            "4",
            "--uartmode1",
            "file",
            &s.console_log(),
            "--nic1",
            "nat",
            "--nictype1",
            "virtio",
            "--macaddress1",
            &s.mac_nat,
            "--nic2",
            "hostonly",
            "--nictype2",
            "virtio",
            "--hostonlyadapter2",
            &s.adapter,
            "--macaddress2",
            &s.mac_host_only,
            "--cableconnected2",
            "on",
        ]),
        argv(&[
            "storagectl",
            &s.name,
            "--name",
            CONTROLLER,
            "--add",
            "sata",
            "--controller",
            "IntelAhci",
            "--portcount",
            "2",
        ]),
        argv(&[
            "storageattach",
            &s.name,
            "--storagectl",
            CONTROLLER,
            "--port",
            "0",
            "--device",
            "0",
            "--type",
            "hdd",
            "--medium",
            &s.base_disk,
            "--mtype",
            "multiattach",
        ]),
        argv(&[
            "storageattach",
            &s.name,
            "--storagectl",
            CONTROLLER,
            "--port",
            "1",
            "--device",
            "0",
            "--type",
            "dvddrive",
            "--medium",
            &s.seed_iso(),
        ]),
        argv(&[
            "modifyvm",
            &s.name,
            "--description",
            &s.description.render(),
        ]),
    ]
}

pub fn startvm(name: &str) -> Vec<String> {
    argv(&["startvm", name, "--type", "headless"])
}

/// Whether VirtualBox is new enough.
pub fn version_ok(v: (u32, u32, u32)) -> bool {
    (v.0, v.1) >= MIN_VERSION
}

/// Whether `/etc/vbox/networks.conf` (its text, `None` when absent) lets host-only
/// adapters use 192.168.56.0/24. Without the file VirtualBox allows 192.168.56.0/21; with
/// it, only the ranges on its `* A.B.C.D/N …` lines.
pub fn networks_conf_allows(text: Option<&str>) -> bool {
    let Some(text) = text else {
        return true;
    };
    let net = u32::from(HOST_ONLY_HOST) & !0xff;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('*'))
        .flat_map(|rest| rest.split_whitespace())
        .filter_map(|range| {
            let (ip, bits) = range.split_once('/')?;
            Some((ip.parse::<Ipv4Addr>().ok()?, bits.parse::<u8>().ok()?))
        })
        .any(|(ip, bits)| {
            if bits > 24 {
                return false;
            }
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(ip) & mask == net & mask
        })
}

/// Whether KVM holds VT-x/AMD-V from the moment it loads: Linux 6.12 and later enable
/// virtualization when `kvm_intel`/`kvm_amd` load, which VirtualBox cannot share.
pub fn kvm_holds_vtx(proc_modules: &str, kernel_version: &str) -> bool {
    let loaded = proc_modules.lines().any(|l| {
        matches!(
            l.split_whitespace().next(),
            Some("kvm_intel") | Some("kvm_amd")
        )
    });
    let mut parts = kernel_version.split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    loaded && (major, minor) >= (6, 12)
}

/// The last `n` non-empty lines of a serial log, joined to fit one line.
pub fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtualbox::parse::HostOnlyIf;

    #[test]
    fn an_adapter_on_the_default_network_is_reused() {
        let ifs = vec![
            HostOnlyIf {
                name: "vboxnet0".into(),
                ip: Some(Ipv4Addr::new(192, 168, 99, 1)),
                mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            },
            HostOnlyIf {
                name: "vboxnet1".into(),
                ip: Some(Ipv4Addr::new(192, 168, 56, 1)),
                mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            },
        ];
        assert_eq!(choose_adapter(&ifs).as_deref(), Some("vboxnet1"));
        assert_eq!(choose_adapter(&ifs[..1]), None);
    }

    #[test]
    fn addresses_skip_the_used_ones() {
        let used: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(192, 168, 56, 11)].into();
        assert_eq!(
            pick_addresses(&used, 2).unwrap(),
            [
                Ipv4Addr::new(192, 168, 56, 10),
                Ipv4Addr::new(192, 168, 56, 12)
            ]
        );
        assert!(pick_addresses(&BTreeSet::new(), 91).is_none());
    }

    #[test]
    fn macs_are_virtualbox_ones_and_stable() {
        let m = mac_for("c1", "c1-node1", 2);
        assert_eq!(m.len(), 12);
        assert!(m.starts_with("080027"));
        assert_eq!(m, mac_for("c1", "c1-node1", 2));
        assert_ne!(m, mac_for("c1", "c1-node1", 1));
        assert_eq!(mac_colons("080027A1B2C3"), "08:00:27:a1:b2:c3");
    }

    #[test]
    fn descriptions_round_trip() {
        let d = Description {
            cluster: "c1".into(),
            role: Role::Manager,
            address: Ipv4Addr::new(192, 168, 56, 10),
        };
        assert_eq!(
            d.render(),
            "swarmup cluster=c1 role=manager address=192.168.56.10"
        );
        assert_eq!(Description::parse(&d.render()), Some(d));
        assert_eq!(Description::parse("my own VM"), None);
        assert_eq!(
            cluster_of_groups("/other,/swarmup/c1").as_deref(),
            Some("c1")
        );
        assert_eq!(cluster_of_groups("/"), None);
    }

    #[test]
    fn the_command_plan_of_one_vm() {
        let spec = VmSpec {
            name: "c1-node1".into(),
            cpus: 2,
            memory_mb: 2048,
            mac_nat: "080027000001".into(),
            mac_host_only: "080027000002".into(),
            adapter: "vboxnet0".into(),
            vm_dir: "/vms/swarmup/c1/c1-node1".into(),
            base_disk: "/cache/base.vdi".into(),
            description: Description {
                cluster: "c1".into(),
                role: Role::Worker,
                address: Ipv4Addr::new(192, 168, 56, 12),
            },
        };
        assert_eq!(
            createvm("c1-node1", "c1").join(" "),
            "createvm --name c1-node1 --groups /swarmup/c1 --ostype Ubuntu_64 --register"
        );
        let plan: Vec<String> = configure_plan(&spec).iter().map(|c| c.join(" ")).collect();
        assert_eq!(plan.len(), 5);
        assert!(plan[0].starts_with("modifyvm c1-node1 --cpus 2 --memory 2048 "));
        assert!(plan[0]
            .contains("--uart1 0x3F8 4 --uartmode1 file /vms/swarmup/c1/c1-node1/console.log"));
        assert!(plan[0].contains("--nic1 nat"));
        assert!(plan[0].contains(
            "--nic2 hostonly --nictype2 virtio --hostonlyadapter2 vboxnet0 --macaddress2 080027000002"
        ));
        assert_eq!(
            plan[1],
            "storagectl c1-node1 --name SATA --add sata --controller IntelAhci --portcount 2"
        );
        assert_eq!(plan[2], "storageattach c1-node1 --storagectl SATA --port 0 --device 0 --type hdd --medium /cache/base.vdi --mtype multiattach");
        assert_eq!(plan[3], "storageattach c1-node1 --storagectl SATA --port 1 --device 0 --type dvddrive --medium /vms/swarmup/c1/c1-node1/seed.iso");
        assert_eq!(
            plan[4],
            "modifyvm c1-node1 --description swarmup cluster=c1 role=worker address=192.168.56.12"
        );
        assert_eq!(
            startvm("c1-node1").join(" "),
            "startvm c1-node1 --type headless"
        );
        let base: Vec<String> = base_disk_plan("/c/x.vmdk", "/c/base.vdi")
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            base,
            [
                "clonemedium disk /c/x.vmdk /c/base.vdi --format VDI",
                "modifymedium disk /c/base.vdi --resize 20480",
                "modifymedium disk /c/base.vdi --type multiattach"
            ]
        );
    }

    #[test]
    fn host_checks() {
        assert!(version_ok((6, 1, 0)));
        assert!(version_ok((7, 0, 20)));
        assert!(!version_ok((6, 0, 24)));
        assert!(networks_conf_allows(None));
        assert!(networks_conf_allows(Some("* 192.168.56.0/21\n")));
        assert!(networks_conf_allows(Some("* 10.0.0.0/8 192.168.0.0/16\n")));
        assert!(!networks_conf_allows(Some("* 10.0.0.0/8\n")));
        assert!(!networks_conf_allows(Some("# nothing\n")));
        let modules = "kvm_intel 409600 0 - Live 0x0\nkvm 1323008 1 kvm_intel, Live 0x0\n";
        assert!(kvm_holds_vtx(modules, "6.12.9-amd64"));
        assert!(!kvm_holds_vtx(modules, "6.8.0-45-generic"));
        assert!(!kvm_holds_vtx("vboxdrv 1 0 - Live 0x0\n", "6.12.9"));
        assert_eq!(log_tail("a\n\nb\r\nc\n", 2), "b | c");
    }
}
