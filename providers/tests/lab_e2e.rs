//! The lab provider on this host, for real: namespaces, bridge, sshd, dockerd, power
//! cycles, unit supervision and a destroy that leaves nothing behind.
//!
//! Needs root, dockerd, sshd, iproute2 and nsenter/unshare; runs only with SWARMUP_E2E=1.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use swarmup_providers::lab::{LabConfig, LabNode, LabProvider, NodeInit};
use swarmup_providers::{ClusterPlan, HostKey, MachinePlan, PowerState, Progress, Provider, Role};

#[derive(Debug)]
struct Print;

impl Progress for Print {
    fn machine(&self, machine: &str, message: &str) {
        println!("  {machine}: {message}");
    }
}

/// Destroys the cluster if the test fails half-way, so a failure leaves no namespaces.
struct DestroyOnDrop {
    lab: LabProvider,
    cluster: String,
    armed: bool,
}

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (lab, cluster) = (self.lab.clone(), self.cluster.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            match rt.block_on(lab.destroy(&cluster)) {
                Ok(report) => eprintln!("cleanup after failure: {:?}", report.removed),
                Err(e) => eprintln!("cleanup after failure failed: {e}"),
            }
        })
        .join();
    }
}

fn keypair() -> (String, String) {
    let key = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519)
        .expect("generate ed25519 key");
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .expect("encode private key")
        .to_string();
    let public = key.public_key().to_openssh().expect("encode public key");
    (private, public)
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn sh(program: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ssh_hostname(key: &Path, known_hosts: &Path, ip: &str) -> Out {
    sh(
        "ssh",
        &[
            "-F",
            "/dev/null",
            "-i",
            &key.to_string_lossy(),
            "-o",
            &format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            &format!("root@{ip}"),
            "hostname",
        ],
    )
    .await
}

/// A TCP connection from inside one node to another node's sshd.
async fn reaches(from: &LabNode, ip: &str) -> bool {
    let pid = from.init_pid.expect("node is on").to_string();
    let script = format!("exec 3<>/dev/tcp/{ip}/22");
    sh(
        "nsenter",
        &["-t", &pid, "-n", "timeout", "3", "bash", "-c", &script],
    )
    .await
    .ok
}

async fn pings(from: &LabNode, ip: &str) -> bool {
    let pid = from.init_pid.expect("node is on").to_string();
    sh(
        "nsenter",
        &[
            "-t", &pid, "-n", "busybox", "ping", "-c", "1", "-W", "2", ip,
        ],
    )
    .await
    .ok
}

fn proc_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_end_to_end() {
    if std::env::var("SWARMUP_E2E").as_deref() != Ok("1") {
        println!("skipped: the lab end-to-end test needs SWARMUP_E2E=1, root, dockerd, sshd and iproute2");
        return;
    }
    let test_start = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("swarmup-lab-e2e-")
        .tempdir_in("/var/tmp")
        .expect("temp root");
    let keys = tempfile::tempdir().expect("key dir");
    let (login_private, login_public) = keypair();
    let login_key = keys.path().join("login");
    std::fs::write(&login_key, login_private).unwrap();
    std::fs::set_permissions(&login_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let cluster = "e2e".to_string();
    let machines: Vec<MachinePlan> = (1..=3)
        .map(|i| {
            let (private_openssh, public_openssh) = keypair();
            MachinePlan {
                name: format!("{cluster}-node{i}"),
                role: if i == 1 { Role::Manager } else { Role::Worker },
                host_key: HostKey {
                    private_openssh,
                    public_openssh,
                },
            }
        })
        .collect();
    let plan = ClusterPlan {
        cluster: cluster.clone(),
        machines: machines.clone(),
        login_public_key: login_public,
        tags: Vec::new(),
    };
    let config = LabConfig {
        root: root.path().to_path_buf(),
        init: NodeInit {
            program: PathBuf::from(env!("CARGO_BIN_EXE_swarmup-lab-node")),
            args: Vec::new(),
        },
        boot_timeout: Duration::from_secs(60),
        // Nothing the nodes send can leave the lab.
        offline: true,
        ..LabConfig::default()
    };
    let lab = LabProvider::new(config);
    lab.preflight(&plan).await.expect("preflight");
    let host_name_before = sh("hostname", &[]).await.stdout;
    let mut guard = DestroyOnDrop {
        lab: lab.clone(),
        cluster: cluster.clone(),
        armed: true,
    };

    let t = Instant::now();
    let created = lab.create(&plan, &Print).await.expect("create");
    let create_time = t.elapsed();
    println!("lab create of 3 nodes: {:.2} s", create_time.as_secs_f64());
    assert_eq!(created.len(), 3);
    assert!(created.iter().all(|m| m.power == PowerState::Running));

    let known_hosts = keys.path().join("known_hosts");
    let pinned: String = created
        .iter()
        .zip(&machines)
        .map(|(m, p)| format!("{} {}\n", m.ssh.host, p.host_key.public_openssh))
        .collect();
    std::fs::write(&known_hosts, pinned).unwrap();

    let mut nodes = Vec::new();
    for m in &created {
        nodes.push(lab.node(&cluster, &m.name).await.expect("node details"));
    }
    let mut engine_ids = Vec::new();
    for (m, node) in created.iter().zip(&nodes) {
        let pid = node.init_pid.expect("running node has an init").to_string();
        let hostname = sh("nsenter", &["-t", &pid, "-u", "hostname"]).await;
        assert_eq!(hostname.stdout, m.name, "hostname of {}", m.name);
        let marker = sh(
            "nsenter",
            &["-t", &pid, "-m", "cat", "/run/swarmup-lab/node"],
        )
        .await;
        assert_eq!(marker.stdout, m.name, "marker of {}", m.name);
        let docker = sh(
            "nsenter",
            &[
                "-t",
                &pid,
                "-m",
                "-n",
                "docker",
                "-H",
                "unix:///var/run/docker.sock",
                "info",
                "--format",
                "{{.ID}} {{.Name}}",
            ],
        )
        .await;
        assert!(docker.ok, "docker on {}: {}", m.name, docker.stderr);
        assert!(
            docker.stdout.ends_with(&m.name),
            "docker info on {}: {}",
            m.name,
            docker.stdout
        );
        engine_ids.push(docker.stdout.clone());
        let ssh = ssh_hostname(&login_key, &known_hosts, &m.ssh.host.to_string()).await;
        assert!(ssh.ok, "ssh to {}: {}", m.name, ssh.stderr);
        assert_eq!(ssh.stdout, m.name);
    }
    engine_ids.sort();
    engine_ids.dedup();
    assert_eq!(engine_ids.len(), 3, "each node has its own engine");
    assert_eq!(sh("hostname", &[]).await.stdout, host_name_before);

    let ip2 = created[1].ssh.host.to_string();
    assert!(
        reaches(&nodes[0], &ip2).await,
        "node1 reaches node2 over TCP"
    );
    assert!(pings(&nodes[0], &ip2).await, "node1 pings node2");

    // Create again: nothing restarts.
    let again = lab.create(&plan, &Print).await.expect("second create");
    assert_eq!(again, created);
    for (m, node) in created.iter().zip(&nodes) {
        assert_eq!(
            lab.node(&cluster, &m.name).await.unwrap().init_pid,
            node.init_pid
        );
    }

    // Power off node2: it drops off the network and everything in it is gone.
    let init2 = nodes[1].init_pid.unwrap();
    let t = Instant::now();
    lab.power_off(&cluster, &created[1].name)
        .await
        .expect("power off");
    println!("lab power off: {:.2} s", t.elapsed().as_secs_f64());
    assert!(!proc_alive(init2));
    let pids = sh("ip", &["netns", "pids", &nodes[1].netns]).await;
    assert!(
        pids.ok && pids.stdout.is_empty(),
        "left in node2: {}",
        pids.stdout
    );
    assert!(!reaches(&nodes[0], &ip2).await, "node2 is off the network");
    let powers: Vec<PowerState> = lab
        .list(&cluster)
        .await
        .unwrap()
        .iter()
        .map(|m| m.power)
        .collect();
    assert_eq!(
        powers,
        vec![PowerState::Running, PowerState::Off, PowerState::Running]
    );
    assert!(proc_alive(nodes[0].init_pid.unwrap()), "node1 untouched");
    assert!(proc_alive(nodes[2].init_pid.unwrap()), "node3 untouched");

    let t = Instant::now();
    let on = lab
        .power_on(&cluster, &created[1].name)
        .await
        .expect("power on");
    println!("lab power on: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(on.power, PowerState::Running);
    assert!(pings(&nodes[0], &ip2).await, "node2 is back");
    let ssh = ssh_hostname(&login_key, &known_hosts, &ip2).await;
    assert_eq!(
        ssh.stdout, created[1].name,
        "ssh after power on: {}",
        ssh.stderr
    );
    let node2 = lab.node(&cluster, &created[1].name).await.unwrap();
    assert_ne!(node2.init_pid, Some(init2));
    nodes[1] = node2;

    // A unit dropped into node1 starts, restarts after a kill and stops when removed.
    let node1 = &nodes[0];
    let init1 = node1.init_pid.unwrap().to_string();
    let unit = "[Unit]\nDescription=probe\n\n[Service]\nExecStart=/bin/sh -c 'echo probe-start; exec sleep 1000'\nRestart=always\nRestartSec=300ms\n";
    let tmp = node1.units_dir().join("probe.service.tmp");
    std::fs::write(&tmp, unit).unwrap();
    std::fs::rename(&tmp, node1.units_dir().join("probe.service")).unwrap();
    let log = node1.logs_dir().join("probe.log");
    let starts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("probe-start\n")
            .count()
    };
    wait_for("the unit to start", Duration::from_secs(10), || async {
        starts() >= 1
    })
    .await;
    let status_path = format!("/proc/{init1}/root/run/swarmup-lab/services.json");
    let service_pid = || -> Option<u64> {
        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&status_path).ok()?).ok()?;
        status.get("probe.service")?.get("pid")?.as_u64()
    };
    wait_for("the unit's pid", Duration::from_secs(5), || async {
        service_pid().is_some()
    })
    .await;
    let first_pid = service_pid().unwrap().to_string();
    let kill = sh(
        "nsenter",
        &["-t", &init1, "-p", "-m", "kill", "-9", &first_pid],
    )
    .await;
    assert!(kill.ok, "kill in node1: {}", kill.stderr);
    wait_for("the unit to restart", Duration::from_secs(10), || async {
        starts() >= 2
    })
    .await;
    std::fs::remove_file(node1.units_dir().join("probe.service")).unwrap();
    wait_for("the unit to stop", Duration::from_secs(15), || async {
        service_pid().is_none()
            && !sh(
                "nsenter",
                &["-t", &init1, "-p", "-m", "pgrep", "-x", "sleep"],
            )
            .await
            .ok
    })
    .await;

    // SIGTERM shuts node3 down cleanly; create brings a dead node back.
    let init3 = nodes[2].init_pid.unwrap();
    let t = Instant::now();
    assert!(sh("kill", &["-TERM", &init3.to_string()]).await.ok);
    wait_for("node3 to shut down", Duration::from_secs(40), || async {
        !proc_alive(init3)
    })
    .await;
    println!(
        "lab node shutdown on SIGTERM: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let init_log = std::fs::read_to_string(nodes[2].init_log()).unwrap();
    assert!(init_log.contains("dockerd: exited"), "{init_log}");
    assert!(init_log.trim_end().ends_with("stopped"), "{init_log}");
    assert_eq!(lab.list(&cluster).await.unwrap()[2].power, PowerState::Off);
    let back = lab
        .create(&plan, &Print)
        .await
        .expect("create restarts node3");
    assert_eq!(back[2].power, PowerState::Running);
    let node3 = lab.node(&cluster, &created[2].name).await.unwrap();
    assert_ne!(node3.init_pid, Some(init3));
    let ssh = ssh_hostname(&login_key, &known_hosts, &created[2].ssh.host.to_string()).await;
    assert_eq!(
        ssh.stdout, created[2].name,
        "ssh after restart: {}",
        ssh.stderr
    );
    nodes[2] = node3;

    // Destroy: nothing may be left.
    let netns: Vec<String> = nodes.iter().map(|n| n.netns.clone()).collect();
    let veths: Vec<String> = nodes.iter().map(|n| n.veth.clone()).collect();
    let inits: Vec<u32> = nodes.iter().filter_map(|n| n.init_pid).collect();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.path().join(&cluster).join("cluster.json")).unwrap(),
    )
    .unwrap();
    let bridge = record["bridge"].as_str().unwrap().to_string();
    let t = Instant::now();
    let report = lab.destroy(&cluster).await.expect("destroy");
    let destroy_time = t.elapsed();
    guard.armed = false;
    println!(
        "lab destroy of 3 nodes: {:.2} s",
        destroy_time.as_secs_f64()
    );
    for line in &report.removed {
        println!("  removed {line}");
    }
    for pid in inits {
        assert!(!proc_alive(pid), "init {pid} survived destroy");
    }
    let left_netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| netns.contains(n))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(left_netns.is_empty(), "netns left: {left_netns:?}");
    for dev in veths.iter().chain(std::iter::once(&bridge)) {
        assert!(
            !sh("ip", &["link", "show", "dev", dev]).await.ok,
            "{dev} left"
        );
    }
    let rule = sh(
        "iptables",
        &[
            "-w", "-C", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ],
    )
    .await;
    assert!(!rule.ok, "iptables rule left");
    let offline = report
        .removed
        .iter()
        .find(|r| r.starts_with("nftables table inet swarmup_lab_"))
        .expect("the offline table is removed");
    let table = offline.rsplit(' ').next().unwrap_or_default();
    assert!(
        !sh("nft", &["list", "table", "inet", table]).await.ok,
        "{table} left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_text = root.path().to_string_lossy().to_string();
    assert!(
        !mounts.contains(&root_text),
        "mounts left under {root_text}"
    );
    for ns in &netns {
        assert!(!mounts.contains(ns.as_str()), "netns mount {ns} left");
    }
    assert!(!root.path().join(&cluster).exists(), "state directory left");
    assert!(lab.list(&cluster).await.unwrap().is_empty());
    println!(
        "lab end-to-end test took {:.1} s",
        test_start.elapsed().as_secs_f64()
    );
}
