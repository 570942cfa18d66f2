//! How many lab nodes this host holds: a lab node is a set of processes on the host
//! (its init, sshd, dockerd with containerd, swarm-node), so memory is what runs out
//! first on one big host serving a whole workshop.

/// What one idle lab node of a swarm takes from this host, in MiB. Measured on a
/// 10 x 3 lab workshop on this project's build host (debug swarm-node) by summing, over
/// every process of every node (its init `swarmup lab-node`, sshd, dockerd, containerd,
/// swarm-node), `Pss` from `/proc/PID/smaps_rollup`: 70 MiB per node; `MemAvailable`
/// fell by 54 MiB per node over the whole create. (`VmRSS` from `/proc/PID/status`
/// sums to 167 MiB per node, but counts the binaries' pages, shared by every node, once
/// per process.) Rounded up for a manager's state growing with services: about 10
/// nodes per GiB.
pub const NODE_MIB: u64 = 96;

/// Memory left to the host itself and to what the students run on their nodes.
pub const HOST_RESERVE_MIB: u64 = 1024;

/// `MemAvailable` from `/proc/meminfo`, in KiB.
pub fn mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// How many more lab nodes fit in `available_kib` of free memory.
pub fn nodes_that_fit(available_kib: u64) -> u64 {
    (available_kib / 1024).saturating_sub(HOST_RESERVE_MIB) / NODE_MIB
}

/// Refuses `new_nodes` more nodes when they do not fit, in one line that says what to do.
pub fn check_fit(new_nodes: u64, available_kib: u64) -> Result<(), String> {
    let fit = nodes_that_fit(available_kib);
    if new_nodes <= fit {
        return Ok(());
    }
    Err(format!(
        "this host cannot hold {new_nodes} more lab nodes: {:.1} GiB of memory is available and a lab node needs about {NODE_MIB} MiB with {HOST_RESERVE_MIB} MiB kept for the host, so {fit} fit; ask for fewer nodes or students, or free memory",
        available_kib as f64 / (1024.0 * 1024.0)
    ))
}

/// What `/proc/meminfo` says now; `None` where there is none to read.
pub async fn read_mem_available_kib() -> Option<u64> {
    let text = tokio::fs::read_to_string("/proc/meminfo").await.ok()?;
    mem_available_kib(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24683520 kB\nMemFree:        18722496 kB\nMemAvailable:   23759360 kB\n";
        assert_eq!(mem_available_kib(text), Some(23_759_360));
        assert_eq!(mem_available_kib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn nodes_fit_after_the_host_reserve() {
        let gib = 1024 * 1024;
        assert_eq!(nodes_that_fit(0), 0);
        assert_eq!(nodes_that_fit(gib), 0, "one GiB is the host's own");
        assert_eq!(nodes_that_fit(2 * gib), 1024 / NODE_MIB);
        assert_eq!(nodes_that_fit(23 * gib), (22 * 1024) / NODE_MIB);
        assert!(check_fit(nodes_that_fit(8 * gib), 8 * gib).is_ok());
        let err = check_fit(nodes_that_fit(8 * gib) + 1, 8 * gib).unwrap_err();
        assert!(err.starts_with("this host cannot hold"), "{err}");
        assert!(err.contains("8.0 GiB"), "{err}");
        assert!(!err.contains('\n'));
    }
}
