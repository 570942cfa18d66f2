//! Readers for what VBoxManage prints: `--version`, `list vms`, `list hostonlyifs`,
//! `list hostinfo`, `showvminfo --machinereadable`, and the lines `createvm` and
//! `hostonlyif create` answer with. Pure functions over text.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// `7.0.20r163906`, `6.1.50_Ubuntur161033` → (7, 0, 20).
pub fn version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut parts = line.splitn(3, '.');
    let num = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    let major = num(parts.next()?)?;
    let minor = num(parts.next()?)?;
    let patch = parts.next().and_then(num).unwrap_or(0);
    Some((major, minor, patch))
}

/// A registered VM as `list vms` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    pub name: String,
    pub uuid: String,
}

/// `"NAME" {UUID}` lines.
pub fn list_vms(text: &str) -> Vec<VmRef> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let open = l.rfind(" {")?;
            let name = l[..open].strip_prefix('"')?.strip_suffix('"')?;
            let uuid = l[open + 2..].strip_suffix('}')?;
            Some(VmRef {
                name: name.to_string(),
                uuid: uuid.to_string(),
            })
        })
        .collect()
}

/// `Key:   value` blocks separated by blank lines (`list hostonlyifs`, `list hostinfo`).
pub fn blocks(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A host-only adapter of `list hostonlyifs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOnlyIf {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
}

pub fn hostonlyifs(text: &str) -> Vec<HostOnlyIf> {
    blocks(text)
        .into_iter()
        .filter_map(|b| {
            Some(HostOnlyIf {
                name: b.get("Name")?.clone(),
                ip: b.get("IPAddress").and_then(|v| v.parse().ok()),
                mask: b.get("NetworkMask").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// What `list hostinfo` says that preflight needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// `Processor supports HW virtualization`; `None` when the line is missing.
    pub hw_virtualization: Option<bool>,
    pub os: String,
    pub os_version: String,
    pub memory_mb: Option<u64>,
    pub cpus: Option<u32>,
}

pub fn hostinfo(text: &str) -> HostInfo {
    let mut info = HostInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Processor supports HW virtualization" => info.hw_virtualization = Some(v == "yes"),
            "Operating system" => info.os = v.to_string(),
            "Operating system version" => info.os_version = v.to_string(),
            "Memory size" => {
                info.memory_mb = v.split_whitespace().next().and_then(|n| n.parse().ok())
            }
            "Processor online count" | "Processor count" if info.cpus.is_none() => {
                info.cpus = v.parse().ok()
            }
            _ => {}
        }
    }
    info
}

/// `showvminfo --machinereadable`: `key="value"`, `"key"="value"` or `key=number` lines,
/// with `\"` and `\\` escaped inside quoted values.
pub fn machinereadable(text: &str) -> BTreeMap<String, String> {
    fn unquote(s: &str) -> String {
        let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
            return s.to_string();
        };
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(match next {
                        'n' => '\n',
                        other => other,
                    });
                }
            } else {
                out.push(c);
            }
        }
        out
    }
    let mut out = BTreeMap::new();
    for line in text.lines() {
        // A quoted key may hold `=` (storage keys such as "SATA-0-0" do not, but be safe).
        let split = if let Some(rest) = line.strip_prefix('"') {
            rest.find("\"=").map(|i| i + 2)
        } else {
            line.find('=')
        };
        let Some(eq) = split else { continue };
        let key = unquote(&line[..eq]);
        out.insert(key, unquote(&line[eq + 1..]));
    }
    out
}

/// `Settings file: '/path/NAME.vbox'` in `createvm`'s answer.
pub fn settings_file(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Settings file: '")?
            .strip_suffix('\'')
            .map(str::to_string)
    })
}

/// `Interface 'vboxnet0' was successfully created`.
pub fn created_interface(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Interface '")?;
        let end = rest.find("' was successfully created")?;
        Some(rest[..end].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_build_and_distribution_suffixes() {
        assert_eq!(version("7.0.20r163906\n"), Some((7, 0, 20)));
        assert_eq!(version("6.1.50_Ubuntur161033\n"), Some((6, 1, 50)));
        assert_eq!(version("6.0.24r139119"), Some((6, 0, 24)));
        assert_eq!(version("WARNING\n"), None);
    }

    #[test]
    fn vm_lists() {
        let vms = list_vms(
            "\"c1-node1\" {e3f0b5a2-1111-2222-3333-444455556666}\n\"odd \"name\"\" {aaaa}\n",
        );
        assert_eq!(vms[0].name, "c1-node1");
        assert_eq!(vms[0].uuid, "e3f0b5a2-1111-2222-3333-444455556666");
        assert_eq!(vms[1].name, "odd \"name\"");
        assert!(list_vms("").is_empty());
    }

    #[test]
    fn host_only_adapters_and_host_info() {
        let text = "Name:            vboxnet0\nGUID:            786f6276-656e-4074-8000-0a0027000000\nDHCP:            Disabled\nIPAddress:       192.168.56.1\nNetworkMask:     255.255.255.0\nIPV6Address:     fe80::800:27ff:fe00:0\nStatus:          Up\nVBoxNetworkName: HostInterfaceNetworking-vboxnet0\n\nName:            vboxnet1\nIPAddress:       192.168.57.1\nNetworkMask:     255.255.255.0\n\n";
        let ifs = hostonlyifs(text);
        assert_eq!(ifs.len(), 2);
        assert_eq!(ifs[0].name, "vboxnet0");
        assert_eq!(ifs[0].ip, Some(Ipv4Addr::new(192, 168, 56, 1)));
        assert_eq!(ifs[1].mask, Some(Ipv4Addr::new(255, 255, 255, 0)));

        let info = hostinfo("Host Information:\n\nHost time: 2025-01-01T00:00:00.000000000Z\nProcessor online count: 8\nProcessor count: 8\nProcessor supports HW virtualization: no\nMemory size: 15869 MByte\nOperating system: Linux\nOperating system version: 6.12.9-amd64\n");
        assert_eq!(info.hw_virtualization, Some(false));
        assert_eq!(info.os_version, "6.12.9-amd64");
        assert_eq!(info.memory_mb, Some(15869));
        assert_eq!(info.cpus, Some(8));
    }

    #[test]
    fn machinereadable_keys_and_escapes() {
        let text = "name=\"c1-node1\"\ngroups=\"/swarmup/c1\"\nmemory=2048\nVMState=\"running\"\ndescription=\"say \\\"hi\\\" \\\\ bye\"\n\"SATA-1-0\"=\"/v/seed.iso\"\nmacaddress2=\"080027A1B2C3\"\n";
        let m = machinereadable(text);
        assert_eq!(m["name"], "c1-node1");
        assert_eq!(m["memory"], "2048");
        assert_eq!(m["VMState"], "running");
        assert_eq!(m["description"], "say \"hi\" \\ bye");
        assert_eq!(m["SATA-1-0"], "/v/seed.iso");
    }

    #[test]
    fn answers_of_createvm_and_hostonlyif_create() {
        let created = "Virtual machine 'c1-node1' is created and registered.\nUUID: 1f3b\nSettings file: '/root/VirtualBox VMs/swarmup/c1/c1-node1/c1-node1.vbox'\n";
        assert_eq!(
            settings_file(created).as_deref(),
            Some("/root/VirtualBox VMs/swarmup/c1/c1-node1/c1-node1.vbox")
        );
        let made = "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\nInterface 'vboxnet3' was successfully created\n";
        assert_eq!(created_interface(made).as_deref(), Some("vboxnet3"));
        assert_eq!(created_interface("nothing"), None);
    }
}
