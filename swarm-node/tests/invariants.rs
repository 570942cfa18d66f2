//! The architecture invariants of ARCHITECTURE.md that a machine can check: which crate may
//! depend on what, and which crate may drive the kernel's network configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each workspace package with the names of its declared (direct) dependencies.
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null()) // normal dependencies, not dev or build
                .map(|d| d["name"].as_str().unwrap_or_default().to_string())
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

/// Each workspace package with every package it links, directly or not (normal
/// dependencies only: what ends up in its binary).
fn linked_closures() -> BTreeMap<String, std::collections::BTreeSet<String>> {
    use std::collections::BTreeSet;
    // Resolved for this host only: other platforms' crates may not be downloaded.
    let mut args = vec!["metadata", "--format-version", "1", "--offline"];
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    if cfg!(target_os = "linux") {
        args.extend(["--filter-platform", triple.as_str()]);
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let name_of: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let edges: BTreeMap<String, Vec<String>> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap_or_default().to_string())
                .collect();
            (n["id"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect();
    let members: Vec<String> = meta["workspace_members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|m| m.as_str().unwrap_or_default().to_string())
        .collect();
    members
        .iter()
        .map(|root| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![root.clone()];
            while let Some(id) = todo.pop() {
                for d in edges.get(&id).into_iter().flatten() {
                    if seen.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
            let names = seen
                .iter()
                .filter_map(|id| name_of.get(id).cloned())
                .collect();
            (name_of[root].clone(), names)
        })
        .collect()
}

#[test]
fn what_each_binary_links_keeps_the_layers_apart() {
    let linked = linked_closures();
    let forbid = |krate: &str, others: &[&str], why: &str| {
        for other in others {
            assert!(
                !linked[krate].contains(*other),
                "{krate} links {other}: {why}"
            );
        }
    };
    forbid(
        "swarmup-bootstrap",
        &["reqwest", "swarmup-providers", "openraft", "bollard"],
        "bootstrap works on Machine records over SSH and calls no cloud API",
    );
    forbid(
        "swarmup-providers",
        &["openssh", "swarmup-bootstrap", "openraft", "bollard"],
        "providers never open SSH",
    );
    forbid(
        "swarmup",
        &[
            "openraft",
            "bollard",
            "swarm-raft",
            "swarm-worker",
            "swarm-net",
        ],
        "the CLI talks to clusters through the Docker API, never through node internals",
    );
    forbid(
        "swarm-contract",
        &["tokio", "reqwest", "swarm-state"],
        "the contract between swarm-node and bootstrap is plain data",
    );
    forbid(
        "swarmup-machine",
        &["tokio", "reqwest", "openssh"],
        "the machine records are plain data",
    );
}

fn users_of(deps: &BTreeMap<String, Vec<String>>, krate: &str) -> Vec<String> {
    deps.iter()
        .filter(|(_, d)| d.iter().any(|n| n == krate))
        .map(|(p, _)| p.clone())
        .collect()
}

#[test]
fn only_the_worker_links_bollard_and_the_cli_links_no_node_internals() {
    let deps = workspace_dependencies();
    assert_eq!(users_of(&deps, "bollard"), vec!["swarm-worker"]);
    assert_eq!(users_of(&deps, "openraft"), vec!["swarm-raft"]);
    // The userspace WireGuard (its TUN device and threads) belongs to the data plane.
    assert_eq!(users_of(&deps, "boringtun"), vec!["swarm-net"]);
    let cli = &deps["swarmup"];
    for forbidden in [
        "openraft",
        "bollard",
        "swarm-raft",
        "swarm-worker",
        "swarm-net",
    ] {
        assert!(
            !cli.iter().any(|d| d == forbidden),
            "the CLI must not depend on {forbidden}"
        );
    }
    assert!(
        !deps["swarm-net"].iter().any(|d| d == "bollard"),
        "the data plane makes Docker networks through the worker, not itself"
    );
}

#[test]
fn providers_never_open_ssh_and_bootstrap_never_calls_a_cloud_api() {
    let deps = workspace_dependencies();
    let providers = &deps["swarmup-providers"];
    for forbidden in ["openssh", "swarmup-bootstrap"] {
        assert!(
            !providers.iter().any(|d| d == forbidden),
            "providers must not depend on {forbidden}: machines are reached over SSH only by bootstrap"
        );
    }
    assert!(
        !deps["swarmup-bootstrap"].iter().any(|d| d == "reqwest"),
        "bootstrap must not make HTTP calls: it sees machines only as Machine records"
    );
    // Bootstrap links the providers crate for its records, never for a provider.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bootstrap/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for provider in ["Provider", "digitalocean", "lab::", "DigitalOcean"] {
            assert!(
                !text
                    .lines()
                    .filter(|l| l.contains("swarmup_providers"))
                    .any(|l| l.contains(provider)),
                "{} uses swarmup_providers' {provider}: bootstrap must not call a provider",
                file.display()
            );
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_data_plane_crate_runs_the_kernel_network_tools() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "state", "worker", "dns", "raft", "pki"] {
        let d = root.join(dir);
        if d.is_dir() {
            rust_files(&d, &mut files);
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for tool in ["\"nft\"", "\"conntrack\"", "\"bridge\""] {
            assert!(
                !text.contains(&format!("Command::new({tool})")),
                "{} runs {tool}: only swarm-node/net may change the kernel's network configuration",
                file.display()
            );
        }
    }
}
