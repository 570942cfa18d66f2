//! The guest of a started VM: a lab node on this host, configured from the VM's seed ISO
//! as cloud-init would configure an Ubuntu cloud image (hostname from `meta-data`, login
//! and host keys from `user-data`, the static address from `network-config`).
//!
//! The VMs of one VirtualBox group `/swarmup/CLUSTER` share the lab cluster CLUSTER (one
//! bridge). The bridge also stands for the host-only adapter: the host gets the adapter's
//! address on it (as a /32, so two clusters' bridges can both hold it) and a host route to
//! each guest's static address, and the guest gets its static address on its link.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use fake_digitalocean::LabBackend;
use swarmup_providers::lab::layout::{ClusterLayout, ClusterRecord};
use swarmup_providers::lab::{LabConfig, LabProvider, NodeInit};
use swarmup_providers::virtualbox::{iso, seed};
use swarmup_providers::{ClusterPlan, MachinePlan, NoProgress, Provider, Role};

/// Where and how the lab runs, from the fake's environment.
pub fn lab_config(home: &std::path::Path) -> LabConfig {
    let root = std::env::var_os("SWARMUP_FAKE_VBOX_LAB_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("lab"));
    let init = match std::env::var("SWARMUP_FAKE_VBOX_NODE_INIT") {
        Ok(cmd) if !cmd.trim().is_empty() => {
            let mut words = cmd.split_whitespace().map(str::to_string);
            NodeInit {
                program: PathBuf::from(words.next().unwrap_or_default()),
                args: words.collect(),
            }
        }
        _ => NodeInit::standalone(),
    };
    LabConfig {
        root,
        init,
        // Nothing a guest sends leaves the lab, unless a test says otherwise.
        offline: std::env::var("SWARMUP_FAKE_VBOX_LAB_OFFLINE").as_deref() != Ok("0"),
        ..LabConfig::default()
    }
}

/// What a guest needs from its VM.
#[derive(Debug, Clone)]
pub struct Boot {
    pub lab_cluster: String,
    pub seed_iso: PathBuf,
    pub mac_host_only: String,
    pub host_ip: Ipv4Addr,
    pub prefix: u8,
}

/// What the seed said.
#[derive(Debug, Clone)]
pub struct Guest {
    pub hostname: String,
    pub address: Ipv4Addr,
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).count_ones() as u8
}

pub fn mask_prefix(mask: &str) -> u8 {
    mask.parse().map(prefix_of).unwrap_or(24)
}

async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn read_record(config: &LabConfig, cluster: &str) -> Result<Option<ClusterRecord>, String> {
    let path = ClusterLayout::new(&config.root, cluster).record();
    match tokio::fs::read(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("lab record {} is damaged: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Boots (or powers back on) the guest of a VM; returns what the seed said.
pub async fn boot(config: &LabConfig, boot: &Boot) -> Result<Guest, String> {
    let bytes = tokio::fs::read(&boot.seed_iso)
        .await
        .map_err(|e| format!("cannot read the seed {}: {e}", boot.seed_iso.display()))?;
    let seed_files = iso::read_iso(&bytes).map_err(|e| e.to_string())?;
    if !seed_files.label.eq_ignore_ascii_case(seed::LABEL) {
        return Err(format!(
            "no NoCloud seed: the disc is labelled {:?}, not cidata",
            seed_files.label
        ));
    }
    let text = |name: &str| {
        seed_files
            .files
            .get(name)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| format!("the seed has no {name}"))
    };
    let (user_data, meta, net) = (
        text("user-data")?,
        text("meta-data")?,
        text("network-config")?,
    );
    let hostname = seed::hostname_of(&meta).ok_or("meta-data has no local-hostname")?;
    let address = seed::address_for_mac(&net, &boot.mac_host_only).ok_or_else(|| {
        format!(
            "network-config gives the host-only NIC ({}) no static address",
            boot.mac_host_only
        )
    })?;
    let first = fake_digitalocean::read_user_data(&user_data, &hostname)?;
    let login = first
        .authorized_keys
        .first()
        .cloned()
        .ok_or("user-data authorizes no ssh key")?;
    let host_key = first
        .host_key
        .ok_or_else(|| format!("user-data has no ssh host key for {hostname}"))?;

    let lab = LabProvider::new(config.clone());
    let known = read_record(config, &boot.lab_cluster)
        .await?
        .is_some_and(|r| r.node(&hostname).is_some());
    if known {
        lab.power_on(&boot.lab_cluster, &hostname)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        let plan = ClusterPlan {
            cluster: boot.lab_cluster.clone(),
            machines: vec![MachinePlan {
                name: hostname.clone(),
                // The swarm role is bootstrap's business; the lab only records it.
                role: Role::Worker,
                host_key,
            }],
            login_public_key: login,
            tags: Vec::new(),
        };
        lab.create(&plan, &NoProgress)
            .await
            .map_err(|e| e.to_string())?;
    }
    wire(config, &lab, &boot.lab_cluster, &hostname, address, boot).await?;
    Ok(Guest { hostname, address })
}

/// Gives the guest its static address and the host the adapter's.
async fn wire(
    config: &LabConfig,
    lab: &LabProvider,
    cluster: &str,
    node: &str,
    address: Ipv4Addr,
    boot: &Boot,
) -> Result<(), String> {
    let n = lab.node(cluster, node).await.map_err(|e| e.to_string())?;
    let record = read_record(config, cluster)
        .await?
        .ok_or("the lab cluster has no record")?;
    let guest = format!("{address}/{}", boot.prefix);
    run(
        "ip",
        &["-n", &n.netns, "addr", "replace", &guest, "dev", "eth0"],
    )
    .await?;
    let host = format!("{}/32", boot.host_ip);
    run("ip", &["addr", "replace", &host, "dev", &record.bridge]).await?;
    let route = format!("{address}/32");
    let src = boot.host_ip.to_string();
    run(
        "ip",
        &[
            "route",
            "replace",
            &route,
            "dev",
            &record.bridge,
            "src",
            &src,
        ],
    )
    .await?;
    if record.offline {
        // The offline lab drops what leaves its own /24; the host-only network is
        // inside too.
        let table = swarmup_providers::lab::offline::table_name(&record.tag);
        let net = u32::from(boot.host_ip) & (u32::MAX << (32 - u32::from(boot.prefix)));
        let net = format!("{}/{}", Ipv4Addr::from(net), boot.prefix);
        for chain in ["forward", "input"] {
            let listed = run("nft", &["list", "chain", "inet", &table, chain]).await?;
            if !listed.contains(&format!("ip daddr {net} accept")) {
                run(
                    "nft",
                    &[
                        "insert",
                        "rule",
                        "inet",
                        &table,
                        chain,
                        "iifname",
                        &record.bridge,
                        "ip",
                        "daddr",
                        &net,
                        "accept",
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Powers the guest off (the VM's power button or plug).
pub async fn power_off(config: &LabConfig, cluster: &str, node: &str) -> Result<(), String> {
    if read_record(config, cluster)
        .await?
        .is_none_or(|r| r.node(node).is_none())
    {
        return Ok(());
    }
    LabProvider::new(config.clone())
        .power_off(cluster, node)
        .await
        .map_err(|e| e.to_string())
}

/// Removes the guest for good: the whole lab cluster with its last node.
pub async fn remove(config: &LabConfig, cluster: &str, node: &str) -> Result<(), String> {
    let Some(record) = read_record(config, cluster).await? else {
        return Ok(());
    };
    if record.node(node).is_none() {
        return Ok(());
    }
    if record.nodes.len() <= 1 {
        LabProvider::new(config.clone())
            .destroy(cluster)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        LabBackend::new(config.clone())
            .remove_node(cluster, node)
            .await
    }
}
