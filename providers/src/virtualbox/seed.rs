//! The NoCloud seed of one VM: `user-data` (the same cloud-init every provider's
//! machines get: root login with the cluster key, the host key swarmup generated),
//! `meta-data` (instance id, hostname) and `network-config` (NIC1 by DHCP behind NAT,
//! NIC2 with its static host-only address, each matched by MAC).

use std::net::Ipv4Addr;

use super::iso;
use super::plan::{mac_colons, HOST_ONLY_PREFIX};

/// The volume label NoCloud looks for.
pub const LABEL: &str = "cidata";

pub fn meta_data(hostname: &str, instance_id: &str) -> String {
    format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
}

/// Netplan v2. A supplied network-config turns cloud-init's DHCP fallback off, so NIC1
/// asks for DHCP itself.
pub fn network_config(mac_nat: &str, mac_host_only: &str, address: Ipv4Addr) -> String {
    format!(
        "version: 2\n\
         ethernets:\n\
         \x20 nat:\n\
         \x20   match:\n\
         \x20     macaddress: \"{}\"\n\
         \x20   dhcp4: true\n\
         \x20 hostonly:\n\
         \x20   match:\n\
         \x20     macaddress: \"{}\"\n\
         \x20   dhcp4: false\n\
         \x20   addresses:\n\
         \x20     - {address}/{HOST_ONLY_PREFIX}\n",
        mac_colons(mac_nat),
        mac_colons(mac_host_only),
    )
}

/// The seed ISO's bytes.
pub fn seed_iso(user_data: &str, meta_data: &str, network_config: &str) -> Vec<u8> {
    iso::write_iso(
        LABEL,
        &[
            ("user-data", user_data.as_bytes()),
            ("meta-data", meta_data.as_bytes()),
            ("network-config", network_config.as_bytes()),
        ],
    )
}

/// The static address a `network-config` gives the interface with `mac` (VBoxManage or
/// colon form). Read by the fake VirtualBox the way netplan would apply it.
pub fn address_for_mac(network_config: &str, mac: &str) -> Option<Ipv4Addr> {
    let want = if mac.contains(':') {
        mac.to_lowercase()
    } else {
        mac_colons(mac)
    };
    let mut in_block = false;
    let mut in_addresses = false;
    for line in network_config.lines() {
        let t = line.trim();
        let indent = line.len() - line.trim_start().len();
        if indent == 2 && t.ends_with(':') {
            in_block = false;
            in_addresses = false;
        }
        if let Some(m) = t.strip_prefix("macaddress:") {
            in_block = m.trim().trim_matches('"').to_lowercase() == want;
        } else if t == "addresses:" {
            in_addresses = true;
        } else if in_block && in_addresses {
            if let Some(a) = t.strip_prefix("- ") {
                let ip = a.split('/').next()?.trim().trim_matches('"');
                return ip.parse().ok();
            }
        }
    }
    None
}

/// `local-hostname` of a `meta-data`.
pub fn hostname_of(meta_data: &str) -> Option<String> {
    meta_data.lines().find_map(|l| {
        l.trim()
            .strip_prefix("local-hostname:")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_reads_back_as_cloud_init_sees_it() {
        let meta = meta_data("c1-node2", "swarmup-c1-node2-1");
        let net = network_config(
            "080027000001",
            "080027A1B2C3",
            Ipv4Addr::new(192, 168, 56, 11),
        );
        let image = seed_iso("#cloud-config\nssh_pwauth: false\n", &meta, &net);
        let back = iso::read_iso(&image).unwrap();
        assert_eq!(back.label, "cidata");
        assert_eq!(
            back.files.keys().collect::<Vec<_>>(),
            ["meta-data", "network-config", "user-data"]
        );
        assert_eq!(
            back.files["user-data"],
            b"#cloud-config\nssh_pwauth: false\n"
        );
        let meta_back = String::from_utf8(back.files["meta-data"].clone()).unwrap();
        assert_eq!(
            meta_back,
            "instance-id: swarmup-c1-node2-1\nlocal-hostname: c1-node2\n"
        );
        assert_eq!(hostname_of(&meta_back).as_deref(), Some("c1-node2"));
        let net_back = String::from_utf8(back.files["network-config"].clone()).unwrap();
        assert!(
            net_back.contains("macaddress: \"08:00:27:a1:b2:c3\""),
            "{net_back}"
        );
        assert!(net_back.contains("- 192.168.56.11/24"), "{net_back}");
        assert_eq!(
            address_for_mac(&net_back, "080027A1B2C3"),
            Some(Ipv4Addr::new(192, 168, 56, 11))
        );
        assert_eq!(address_for_mac(&net_back, "080027000001"), None);
        assert_eq!(net_back.matches("dhcp4:").count(), 2);
    }
}
