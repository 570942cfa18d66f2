//! An offline lab: nothing a node sends leaves the cluster's own /24.
//!
//! One nftables table per cluster, made with the cluster and removed with it, drops what
//! arrives from the cluster bridge for any address outside the subnet: on the forward
//! path (the internet, other networks, other lab clusters) and on the input path (the
//! host's other addresses). Traffic between nodes, to the bridge's own address (the lab
//! registry) and the replies to the host's connections (SSH, the Docker API) stay inside
//! the subnet and pass. A drop in any base chain is final, so Docker's own FORWARD accept
//! rules on the host cannot let anything through.

use std::net::Ipv4Addr;

/// The nftables table of one cluster, named by its tag.
pub fn table_name(tag: &str) -> String {
    format!("swarmup_lab_{tag}")
}

/// The `nft -f` script that (re)creates the cluster's table in one transaction.
pub fn ruleset(tag: &str, bridge: &str, subnet: Ipv4Addr) -> String {
    let table = table_name(tag);
    format!(
        "# Written by swarmup: lab cluster {bridge} is offline.\n\
         table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tiifname \"{bridge}\" ip daddr != {subnet}/24 counter drop comment \"offline lab\"\n\
         \t\tiifname \"{bridge}\" meta nfproto ipv6 counter drop comment \"offline lab\"\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tiifname \"{bridge}\" ip daddr != {subnet}/24 counter drop comment \"offline lab\"\n\
         \t\tiifname \"{bridge}\" ip6 daddr != {{ fe80::/10, ff00::/8 }} counter drop comment \"offline lab\"\n\
         \t}}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_everything_leaving_the_subnet() {
        let rules = ruleset("a1b2c3", "web-a1b2c3", Ipv4Addr::new(10, 247, 9, 0));
        assert!(rules
            .contains("table inet swarmup_lab_a1b2c3 {}\ndelete table inet swarmup_lab_a1b2c3\n"));
        assert_eq!(
            rules
                .matches("iifname \"web-a1b2c3\" ip daddr != 10.247.9.0/24 counter drop")
                .count(),
            2,
            "{rules}"
        );
        assert!(rules.contains("hook forward priority filter - 10; policy accept;"));
        assert!(rules.contains("hook input priority filter - 10; policy accept;"));
        assert!(rules.contains("meta nfproto ipv6 counter drop"));
    }
}
