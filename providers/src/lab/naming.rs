//! Names of the host-side resources of a lab cluster.
//!
//! Every name is derived from the state root and the cluster name alone, so `destroy` can
//! find what a crashed `create` left behind even when no record was written.

use std::path::Path;

use crate::ProviderError;

/// Interface names are limited to 15 bytes by the kernel (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Longest cluster name the lab accepts: it becomes part of node names, which are hostnames.
pub const MAX_CLUSTER_NAME: usize = 40;

/// Longest machine name: a hostname label.
pub const MAX_MACHINE_NAME: usize = 63;

/// The names of one cluster's host-side resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    /// Six hex digits that tell this cluster's resources apart from any other's.
    pub tag: String,
    pub bridge: String,
    netns_prefix: String,
    veth_prefix: String,
}

impl ClusterNames {
    /// Derives the names for `cluster` under the state root `root`. The root takes part so
    /// that two state roots (a test's and the user's) never share a bridge or a namespace.
    pub fn new(root: &Path, cluster: &str) -> Self {
        let mut input = root.as_os_str().as_encoded_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(cluster.as_bytes());
        let tag = format!("{:06x}", fnv1a(&input) & 0xff_ffff);
        let room = MAX_IFNAME - tag.len() - 1;
        let mut short: String = cluster
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(room)
            .collect();
        if short.is_empty() {
            short.push_str("lab");
        }
        ClusterNames {
            bridge: format!("{short}-{tag}"),
            netns_prefix: format!("swlab-{tag}-"),
            veth_prefix: format!("v{tag}-"),
            tag,
        }
    }

    /// The network namespace of a node (a file in /run/netns).
    pub fn netns(&self, machine: &str) -> String {
        format!("{}{machine}", self.netns_prefix)
    }

    /// The host end of a node's veth pair, named after the node's last address octet.
    pub fn veth(&self, octet: u8) -> String {
        format!("{}{octet}", self.veth_prefix)
    }

    /// Whether a network namespace name belongs to this cluster.
    pub fn owns_netns(&self, name: &str) -> bool {
        name.starts_with(&self.netns_prefix)
    }

    /// Whether an interface name is one of this cluster's veths.
    pub fn owns_veth(&self, name: &str) -> bool {
        name.strip_prefix(&self.veth_prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// 64-bit FNV-1a. Chosen over std's hasher because derived names are persisted and must
/// never change between compiler releases.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Checks a cluster name: it names a directory and prefixes hostnames.
pub fn validate_cluster(name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(ProviderError::InvalidRequest(format!(
            "invalid cluster name {name:?}: use 1 to {MAX_CLUSTER_NAME} letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

/// Checks a machine name: it becomes the node's hostname and a directory name.
pub fn validate_machine(name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_MACHINE_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::InvalidRequest(format!(
            "invalid machine name {name:?}: a lab node name is its hostname, use 1 to {MAX_MACHINE_NAME} letters, digits and inner '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let long = "a-very-long-cluster-name-that-goes-on-and-on";
        let names = ClusterNames::new(Path::new("/var/lib/swarmup/lab"), long);
        assert_eq!(names.bridge.len(), MAX_IFNAME);
        assert!(names.bridge.starts_with("a-very-l-"));
        assert!(names.veth(254).len() <= MAX_IFNAME);
        assert_eq!(names.tag.len(), 6);
    }

    #[test]
    fn names_are_stable_and_readable() {
        let names = ClusterNames::new(Path::new("/var/lib/swarmup/lab"), "web");
        let again = ClusterNames::new(Path::new("/var/lib/swarmup/lab"), "web");
        assert_eq!(names, again);
        assert_eq!(names.bridge, format!("web-{}", names.tag));
        assert_eq!(
            names.netns("web-node1"),
            format!("swlab-{}-web-node1", names.tag)
        );
        assert_eq!(names.veth(11), format!("v{}-11", names.tag));
        // Published FNV-1a test vectors: a change of derivation would orphan existing labs.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn roots_and_clusters_get_distinct_tags() {
        let a = ClusterNames::new(Path::new("/var/lib/swarmup/lab"), "web");
        let b = ClusterNames::new(Path::new("/tmp/test-root"), "web");
        let c = ClusterNames::new(Path::new("/var/lib/swarmup/lab"), "db");
        assert_ne!(a.tag, b.tag);
        assert_ne!(a.tag, c.tag);
        assert_ne!(a.bridge, b.bridge);
    }

    #[test]
    fn ownership_checks_match_only_our_names() {
        let names = ClusterNames::new(Path::new("/r"), "web");
        assert!(names.owns_netns(&names.netns("web-node2")));
        assert!(!names.owns_netns("swlab-000000-web-node2"));
        assert!(names.owns_veth(&names.veth(12)));
        assert!(!names.owns_veth(&format!("v{}-", names.tag)));
        assert!(!names.owns_veth(&format!("v{}-1x", names.tag)));
        assert!(!names.owns_veth("eth0"));
    }

    #[test]
    fn odd_cluster_names_still_give_a_bridge_name() {
        let names = ClusterNames::new(Path::new("/r"), "...");
        assert!(names.bridge.starts_with("lab-"));
    }

    #[test]
    fn validation_rejects_bad_names() {
        assert!(validate_cluster("web").is_ok());
        assert!(validate_cluster("web_2-prod").is_ok());
        assert!(validate_cluster("").is_err());
        assert!(validate_cluster("../etc").is_err());
        assert!(validate_cluster("-x").is_err());
        assert!(validate_cluster(&"x".repeat(41)).is_err());
        assert!(validate_machine("web-node1").is_ok());
        assert!(validate_machine("web_node1").is_err());
        assert!(validate_machine("node-").is_err());
        assert!(validate_machine("a/b").is_err());
        let err = validate_machine("a b").unwrap_err().to_string();
        assert!(err.starts_with("invalid machine name \"a b\""), "{err}");
    }
}
