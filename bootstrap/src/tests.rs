//! Step and converge behaviour against scripted shells. Time is tokio's paused clock, so
//! deadlines of minutes pass instantly.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarm_contract::{Exit, Membership, NodeState, Role as ContractRole, Status};
use swarmup_machine::{Machine, NoProgress, PowerState, Progress, Role, SshEndpoint};

use crate::cluster::plan_swarm;
use crate::steps::*;
use crate::*;

fn machine(name: &str, role: Role, ip: &str) -> Machine {
    let ip: IpAddr = ip.parse().unwrap();
    Machine {
        name: name.to_string(),
        role,
        provider_id: name.to_string(),
        private_addr: ip,
        ssh: SshEndpoint {
            host: ip,
            port: 22,
            user: "root".to_string(),
        },
        power: PowerState::Running,
    }
}

/// An x86_64 ELF header followed by some bytes.
fn elf_bytes(payload: &str) -> Arc<[u8]> {
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = 2;
    bytes[5] = 1;
    bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
    bytes.extend_from_slice(payload.as_bytes());
    bytes.into()
}

fn binary(payload: &str) -> SwarmNodeBinary {
    SwarmNodeBinary::from_bytes(elf_bytes(payload))
}

fn host_facts(lab: bool) -> HostFacts {
    HostFacts {
        lab,
        systemd: !lab,
        arch: "x86_64".into(),
        ssh_client: Some("203.0.113.1".parse().unwrap()),
        ssh_port: Some(22),
    }
}

/// Collects progress lines.
#[derive(Debug, Default)]
struct Lines(Mutex<Vec<String>>);

impl Progress for Lines {
    fn machine(&self, machine: &str, message: &str) {
        self.0.lock().unwrap().push(format!("{machine}: {message}"));
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

const DOCKER: &str = "version --format";

// ---------------------------------------------------------------------------------------
// SSH

#[tokio::test(start_paused = true)]
async fn wait_for_ssh_retries_until_sshd_answers() {
    let connector = FakeConnector::new();
    connector.refuse("c1-node1", 3);
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let lines = Lines::default();
    let shell = wait_for_ssh(&connector, &m, Duration::from_secs(60), &lines)
        .await
        .unwrap();
    assert_eq!(shell.target(), "c1-node1");
    assert_eq!(connector.attempts("c1-node1"), 4);
    assert_eq!(
        lines.all(),
        vec!["c1-node1: waiting for SSH on c1-node1 (10.0.0.2:22)"]
    );
}

#[tokio::test(start_paused = true)]
async fn wait_for_ssh_says_what_it_waited_for() {
    let connector = FakeConnector::new();
    connector.refuse("c1-node1", usize::MAX);
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let err = wait_for_ssh(&connector, &m, Duration::from_secs(10), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "timed out after 10s waiting for SSH on c1-node1 (10.0.0.2:22); last error: \
         cannot connect to c1-node1 (10.0.0.2:22): ssh: connect to host: Connection refused"
    );
    assert!(connector.attempts("c1-node1") >= 5);
}

// ---------------------------------------------------------------------------------------
// host facts and Docker

#[tokio::test(start_paused = true)]
async fn probe_reads_lab_marker_arch_and_ssh_connection() {
    let shell = FakeShell::new("n1");
    shell.on(
        "uname -m",
        CommandOutput::ok("lab=yes\nsystemd=no\narch=aarch64\nssh=10.0.0.1 51000 10.0.0.2 2222\n"),
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let facts = probe_host(&shell, &m).await.unwrap();
    assert_eq!(
        facts,
        HostFacts {
            lab: true,
            systemd: false,
            arch: "aarch64".into(),
            ssh_client: Some("10.0.0.1".parse().unwrap()),
            ssh_port: Some(2222),
        }
    );
    assert!(shell.scripts()[0].contains("/run/swarmup-lab/node"));
}

#[tokio::test(start_paused = true)]
async fn lab_docker_is_only_waited_for() {
    let shell = FakeShell::new("n1");
    shell.on_sequence(
        DOCKER,
        vec![
            Ok(CommandOutput::failed(
                1,
                "Cannot connect to the Docker daemon",
            )),
            Ok(CommandOutput::failed(
                1,
                "Cannot connect to the Docker daemon",
            )),
            Ok(CommandOutput::ok("20.10.24\n")),
        ],
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let version = ensure_docker(
        &shell,
        &m,
        &host_facts(true),
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(version, "20.10.24");
    assert_eq!(shell.count(DOCKER), 3);
    assert_eq!(shell.count("apt-get"), 0);
    assert_eq!(shell.count("systemctl"), 0);
    assert_eq!(shell.count("cloud-init"), 0);
}

#[tokio::test(start_paused = true)]
async fn lab_docker_timeout_names_the_socket() {
    let shell = FakeShell::new("n1");
    shell.on(
        DOCKER,
        CommandOutput::failed(
            1,
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock",
        ),
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let err = ensure_docker(
        &shell,
        &m,
        &host_facts(true),
        Duration::from_secs(20),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "timed out after 20s waiting for Docker on c1-node1 (/var/run/docker.sock)"
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_docker_is_installed_from_the_distribution() {
    let shell = FakeShell::new("n1");
    shell.on(
        DOCKER,
        CommandOutput::failed(127, "docker: command not found"),
    );
    shell.on("command -v dockerd", CommandOutput::failed(1, ""));
    let installed = shell.clone();
    shell.on_fn("install -y docker.io", move |_| {
        installed.on(DOCKER, CommandOutput::ok("20.10.24\n"));
        Ok(CommandOutput::ok(""))
    });
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let lines = Lines::default();
    ensure_docker(
        &shell,
        &m,
        &host_facts(false),
        Duration::from_secs(600),
        &lines,
    )
    .await
    .unwrap();
    let scripts = shell.scripts();
    let pos = |needle: &str| scripts.iter().position(|s| s.contains(needle)).unwrap();
    assert!(pos("cloud-init status --wait") < pos("install -y docker.io"));
    assert!(pos("install -y docker.io") < pos("systemctl enable --now docker.service"));
    assert!(scripts[pos("install -y docker.io")].contains("DEBIAN_FRONTEND=noninteractive"));
    assert!(lines
        .all()
        .contains(&"c1-node1: installing docker.io from the distribution".to_string()));
}

#[tokio::test(start_paused = true)]
async fn missing_docker_without_apt_is_a_clear_error() {
    let shell = FakeShell::new("n1");
    shell.on(
        DOCKER,
        CommandOutput::failed(127, "docker: command not found"),
    );
    shell.on("command -v dockerd", CommandOutput::failed(1, ""));
    shell.on("command -v apt-get", CommandOutput::failed(1, ""));
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let err = ensure_docker(
        &shell,
        &m,
        &host_facts(false),
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "c1-node1: docker: Docker is not installed and this host has no apt-get: install Docker Engine on it and run swarmup again"
    );
}

// ---------------------------------------------------------------------------------------
// binary

#[tokio::test(start_paused = true)]
async fn binary_is_uploaded_once_and_verified() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let bin = binary("v1");
    let facts = host_facts(false);
    let changed = push_binary(
        &shell,
        &m,
        &facts,
        &bin,
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(changed, BinaryOutcome::Installed);
    let (bytes, mode) = shell.file("/var/lib/swarmup/swarm-node").unwrap();
    assert_eq!(&bytes[..], bin.bytes());
    assert_eq!(mode, 0o755);
    assert_eq!(shell.count("sha256sum /var/lib/swarmup/swarm-node"), 2);

    let changed = push_binary(
        &shell,
        &m,
        &facts,
        &bin,
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(
        changed,
        BinaryOutcome::Unchanged,
        "same checksum: no second upload"
    );
    assert_eq!(shell.count("upload "), 1);

    let outcome = push_binary(
        &shell,
        &m,
        &facts,
        &binary("v2"),
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(outcome, BinaryOutcome::Replaced);
    assert_eq!(shell.count("upload "), 2);
}

#[tokio::test(start_paused = true)]
async fn damaged_upload_is_reported() {
    let shell = FakeShell::new("n1");
    let bad = format!("{}  /var/lib/swarmup/swarm-node\n", "0".repeat(64));
    shell.on("sha256sum", CommandOutput::ok(bad));
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let err = push_binary(
        &shell,
        &m,
        &host_facts(false),
        &binary("v1"),
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("c1-node1: swarm-node binary: /var/lib/swarmup/swarm-node has sha256 0000"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn binary_for_the_wrong_machine_is_refused() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let mut facts = host_facts(false);
    facts.arch = "aarch64".into();
    let err = push_binary(
        &shell,
        &m,
        &facts,
        &binary("v1"),
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "c1-node1: swarm-node binary: the swarm-node binary is built for x86_64 but the machine is aarch64: pass a swarm-node binary built for aarch64"
    );
    let macho = SwarmNodeBinary::from_bytes(Arc::from(&b"\xcf\xfa\xed\xfe not linux"[..]));
    let err = push_binary(
        &shell,
        &m,
        &host_facts(false),
        &macho,
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("is not a Linux executable (ELF)"), "{err}");
    assert_eq!(shell.count("upload "), 0);
}

// ---------------------------------------------------------------------------------------
// service and firewall

fn unit() -> String {
    swarmup_templates::swarm_node_service(&swarmup_templates::ServiceContext::default()).unwrap()
}

fn unit_for(binary: &SwarmNodeBinary) -> String {
    swarmup_templates::swarm_node_service(&swarmup_templates::ServiceContext {
        binary_sha256: Some(binary.sha256().to_string()),
        ..swarmup_templates::ServiceContext::default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn systemd_service_is_installed_then_only_kept_running() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let facts = host_facts(false);
    install_service(&shell, &m, &facts, &unit(), &NoProgress)
        .await
        .unwrap();
    let (bytes, mode) = shell.file(steps::SYSTEMD_UNIT_PATH).unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), unit());
    assert_eq!(mode, 0o644);
    assert_eq!(
        shell.count("systemctl daemon-reload && systemctl enable swarm-node.service && systemctl restart swarm-node.service"),
        1
    );

    install_service(&shell, &m, &facts, &unit(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(shell.count("upload "), 1, "unchanged unit is not rewritten");
    assert_eq!(
        shell.count("systemctl daemon-reload && systemctl enable --now swarm-node.service"),
        1,
        "a stopped service is started again"
    );

    install_service(&shell, &m, &facts, &unit_for(&binary("v2")), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        shell.count("systemctl restart swarm-node.service"),
        2,
        "a new binary restarts"
    );
}

#[tokio::test(start_paused = true)]
async fn lab_service_goes_to_the_supervisor() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    install_service(&shell, &m, &host_facts(true), &unit(), &NoProgress)
        .await
        .unwrap();
    assert!(shell
        .file("/var/lib/swarmup-lab/units/swarm-node.service")
        .is_some());
    assert!(shell.file(steps::SYSTEMD_UNIT_PATH).is_none());
    assert_eq!(shell.count("systemctl"), 0);

    // The supervisor restarts a service whose unit file changed; a new binary is one.
    install_service(&shell, &m, &host_facts(true), &unit(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(shell.count("upload "), 1, "same unit, same file");
    let v2 = unit_for(&binary("v2"));
    install_service(&shell, &m, &host_facts(true), &v2, &NoProgress)
        .await
        .unwrap();
    let (bytes, _) = shell.file(steps::LAB_UNIT_PATH).unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), v2);
}

#[tokio::test(start_paused = true)]
async fn no_systemd_and_no_lab_is_an_error() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let mut facts = host_facts(false);
    facts.systemd = false;
    let err = install_service(&shell, &m, &facts, &unit(), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("c1-node1: swarm-node service: the host runs no systemd"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn firewall_goes_to_etc_or_to_the_lab_node_directory() {
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let rules = "table inet swarmup\n";
    let shell = FakeShell::new("n1");
    apply_firewall(&shell, &m, &host_facts(false), rules, &[], &NoProgress)
        .await
        .unwrap();
    assert_eq!(shell.file("/etc/swarmup/nftables.conf").unwrap().1, 0o600);
    assert_eq!(shell.count("nft -f /etc/swarmup/nftables.conf"), 1);

    let lab = FakeShell::new("n1");
    apply_firewall(&lab, &m, &host_facts(true), rules, &[], &NoProgress)
        .await
        .unwrap();
    assert!(lab.file("/etc/swarmup/nftables.conf").is_none());
    assert!(lab.file("/var/lib/swarmup/nftables.conf").is_some());
    assert_eq!(lab.count("nft -f /var/lib/swarmup/nftables.conf"), 1);
}

#[tokio::test(start_paused = true)]
async fn firewall_that_would_lock_swarmup_out_is_refused() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let allowed: Vec<Cidr> = vec!["198.51.100.0/24".parse().unwrap()];
    let err = apply_firewall(&shell, &m, &host_facts(false), "x", &allowed, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("SSH from 203.0.113.1"), "{err}");
    assert_eq!(shell.count("nft"), 0);

    let allowed: Vec<Cidr> = vec!["203.0.113.0/24".parse().unwrap()];
    apply_firewall(&shell, &m, &host_facts(false), "x", &allowed, &NoProgress)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn failing_nft_reports_its_error() {
    let shell = FakeShell::new("n1");
    shell.on(
        "nft -f",
        CommandOutput::failed(1, "/etc/swarmup/nftables.conf:3:1-2: Error: syntax error"),
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let err = apply_firewall(&shell, &m, &host_facts(false), "x", &[], &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "c1-node1: firewall: nft -f /etc/swarmup/nftables.conf failed: /etc/swarmup/nftables.conf:3:1-2: Error: syntax error (exit status 1)"
    );
}

#[test]
fn rendered_unit_and_rules_follow_the_host() {
    let ssh = SshOptions::new("/k/id", "/k/known_hosts");
    let options = BootstrapOptions::new(BinarySource::Bytes(elf_bytes("x")), ssh);
    let bin = binary("x");
    let real = service_unit(&host_facts(false), &options, &bin).unwrap();
    assert!(real.contains(&format!("# swarm-node binary sha256: {}", bin.sha256())));
    assert!(real.contains("ExecStartPre=-/usr/sbin/nft -f /etc/swarmup/nftables.conf"));
    let lab = service_unit(&host_facts(true), &options, &bin).unwrap();
    assert!(!lab.contains("ExecStartPre"));
    assert!(
        lab.contains("ExecStart=/var/lib/swarmup/swarm-node run --state-dir /var/lib/swarm-node")
    );

    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let mut facts = host_facts(false);
    facts.ssh_port = Some(2200);
    let rules = firewall_rules(
        &m,
        &facts,
        &["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()],
        &FirewallOptions::default(),
    )
    .unwrap();
    assert!(rules.contains("tcp dport 2200 accept"), "{rules}");
    assert!(
        rules.contains("elements = { 10.0.0.2, 10.0.0.3 }"),
        "{rules}"
    );
}

// ---------------------------------------------------------------------------------------
// swarm steps

#[tokio::test(start_paused = true)]
async fn init_retries_while_the_daemon_starts_and_accepts_an_existing_swarm() {
    let shell = FakeShell::new("n1");
    shell.on_sequence(
        "swarm-node init",
        vec![
            Ok(CommandOutput::failed(
                1,
                "Error: cannot reach the swarm-node daemon",
            )),
            Ok(CommandOutput::ok("")),
        ],
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let outcome = swarm_init(
        &shell,
        &m,
        m.private_addr,
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(outcome, InitOutcome::Created);
    assert_eq!(
        shell.scripts()[0],
        "/var/lib/swarmup/swarm-node init --advertise-addr 10.0.0.2"
    );

    shell.on(
        "swarm-node init",
        CommandOutput::failed(3, "Error: this node is already part of a swarm"),
    );
    let outcome = swarm_init(
        &shell,
        &m,
        m.private_addr,
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(outcome, InitOutcome::AlreadyInitialized);
}

#[tokio::test(start_paused = true)]
async fn join_uses_the_manager_address_and_hides_the_token() {
    let shell = FakeShell::new("n2");
    shell.on(
        "swarm-node join",
        CommandOutput::failed(1, "Error: invalid join token SWMTKN-1-secret"),
    );
    let m = machine("c1-node2", Role::Worker, "fd00::3");
    let manager = "[fd00::2]:2377".parse().unwrap();
    let err = swarm_join(
        &shell,
        &m,
        "SWMTKN-1-secret",
        m.private_addr,
        manager,
        Duration::from_secs(10),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "timed out after 10s waiting for c1-node2 to join the swarm through [fd00::2]:2377; \
         last error: Error: invalid join token <token> (exit status 1)"
    );
    assert_eq!(
        shell.scripts()[0],
        "/var/lib/swarmup/swarm-node join --token SWMTKN-1-secret --advertise-addr fd00::3 [fd00::2]:2377"
    );

    shell.on(
        "swarm-node join",
        CommandOutput::failed(3, "Error: this node is already part of a swarm"),
    );
    let outcome = swarm_join(
        &shell,
        &m,
        "SWMTKN-1-secret",
        m.private_addr,
        manager,
        Duration::from_secs(10),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(outcome, JoinOutcome::AlreadyJoined);
}

#[tokio::test(start_paused = true)]
async fn wait_ready_names_the_nodes_it_waits_for() {
    let shell = FakeShell::new("n1");
    shell.on(
        "nodes --json",
        CommandOutput::ok(
            r#"{"version":1,"nodes":[{"id":"a","hostname":"c1-node1","role":"manager","state":"ready","availability":"active","manager_status":"leader"},
                {"id":"b","hostname":"c1-node2","role":"worker","state":"down","availability":"active","manager_status":null}]}"#,
        ),
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let expected: Vec<ExpectedNode> = ["c1-node1", "c1-node2", "c1-node3"]
        .iter()
        .map(|n| ExpectedNode {
            machine: n.to_string(),
            node_id: None,
        })
        .collect();
    let err = wait_ready(&shell, &m, &expected, Duration::from_secs(30), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "timed out after 30s waiting on c1-node1 for 3 node(s) to be ready; \
         last error: not ready: c1-node2 (down), c1-node3 (not in the node list)"
    );
}

#[tokio::test(start_paused = true)]
async fn client_cert_is_read_from_a_manager_only() {
    let connector = FakeConnector::new();
    connector.shell("c1-node1").on(
        "swarm-node client-cert",
        CommandOutput::ok(r#"{"ca_pem":"CA","cert_pem":"CERT","key_pem":"KEY"}"#),
    );
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    let cert = fetch_client_cert_with(&connector, &m).await.unwrap();
    assert_eq!(cert.key_pem, "KEY");
    assert!(
        !format!("{cert:?}").contains("KEY"),
        "the key stays out of logs"
    );
    assert!(connector.shell("c1-node1").is_closed());

    let w = machine("c1-node2", Role::Worker, "10.0.0.3");
    let err = fetch_client_cert_with(&connector, &w)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "c1-node2 is a worker: the client certificate comes from a manager"
    );
}

#[tokio::test(start_paused = true)]
async fn images_are_loaded_everywhere() {
    let connector = FakeConnector::new();
    let machines = vec![
        machine("c1-node1", Role::Manager, "10.0.0.2"),
        machine("c1-node2", Role::Worker, "10.0.0.3"),
    ];
    for m in &machines {
        connector.shell(&m.name).on(
            "docker.sock load",
            CommandOutput::ok("Loaded image: busybox:latest\n"),
        );
    }
    let loads = load_image_with(
        &connector,
        &machines,
        b"TARBYTES",
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(loads.len(), 2);
    assert_eq!(loads[1].images, vec!["busybox:latest"]);
    let call = &connector.shell("c1-node2").calls()[0];
    // The engine itself, not swarm-node through root's docker context.
    assert_eq!(call.script, "docker -H unix:///var/run/docker.sock load");
    assert_eq!(call.stdin.as_deref(), Some(&b"TARBYTES"[..]));

    connector.shell("c1-node2").on(
        "docker.sock load",
        CommandOutput::failed(1, "no space left on device"),
    );
    let err = load_image_with(
        &connector,
        &machines,
        b"T",
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "c1-node2: image load: docker load failed: no space left on device (exit status 1)"
    );
}

#[test]
fn ssh_argv_pins_keys_without_the_user_config() {
    let m = Machine {
        ssh: SshEndpoint {
            host: "203.0.113.9".parse().unwrap(),
            port: 2222,
            user: "ubuntu".into(),
        },
        ..machine("c1-node2", Role::Worker, "10.0.0.3")
    };
    let ssh = SshOptions::new("/s/c1/id_ed25519", "/s/c1/known_hosts");
    let argv: Vec<String> = ssh_argv(&m, &ssh, true, &["docker".into(), "ps".into()])
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
    assert_eq!(
        argv.join(" "),
        "ssh -i /s/c1/id_ed25519 -o UserKnownHostsFile=/s/c1/known_hosts -o StrictHostKeyChecking=yes \
         -o IdentitiesOnly=yes -p 2222 -l ubuntu -t 203.0.113.9 -- docker ps"
    );
}

// ---------------------------------------------------------------------------------------
// converge decisions

fn status(cluster: Option<&str>, role: &str) -> Option<Status> {
    Some(Status {
        version: swarm_contract::VERSION,
        swarm: cluster.map(|c| Membership {
            node_id: "id".to_string(),
            cluster_id: c.to_string(),
            role: if role == "manager" {
                ContractRole::Manager
            } else {
                ContractRole::Worker
            },
            state: Some(NodeState::Ready),
            managers: Vec::new(),
        }),
    })
}

fn four() -> Vec<Machine> {
    vec![
        machine("c1-node1", Role::Manager, "10.0.0.2"),
        machine("c1-node2", Role::Manager, "10.0.0.3"),
        machine("c1-node3", Role::Worker, "10.0.0.4"),
        machine("c1-node4", Role::Worker, "10.0.0.5"),
    ]
}

#[test]
fn plan_fresh_cluster_inits_on_the_first_manager() {
    let mut machines = four();
    machines.swap(0, 2);
    let plan = plan_swarm(&machines, &[None, status(None, ""), None, None]).unwrap();
    assert_eq!(
        plan.leader, 1,
        "the first manager in the list, not the first machine"
    );
    assert!(plan.init);
    assert_eq!(plan.join, vec![0, 2, 3]);
}

#[test]
fn plan_existing_cluster_joins_only_the_missing() {
    let machines = four();
    let plan = plan_swarm(
        &machines,
        &[
            None,
            status(Some("X"), "manager"),
            status(Some("X"), "worker"),
            status(None, ""),
        ],
    )
    .unwrap();
    assert_eq!(
        plan.leader, 1,
        "the manager that is in the swarm, never a second init"
    );
    assert!(!plan.init);
    assert_eq!(plan.cluster_id.as_deref(), Some("X"));
    assert_eq!(plan.join, vec![0, 3]);
}

#[test]
fn plan_refuses_two_swarms_and_a_swarm_without_its_managers() {
    let machines = four();
    let err = plan_swarm(
        &machines,
        &[
            status(Some("X"), "manager"),
            status(Some("Y"), "manager"),
            None,
            None,
        ],
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "the machines belong to different swarms (c1-node1 in X; c1-node2 in Y): recreate the machines that are in the wrong one"
    );
    let err = plan_swarm(&machines, &[None, None, status(Some("X"), "worker"), None])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("c1-node3 is in swarm X, but no manager"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// whole-cluster bootstrap against a simulated swarm

#[derive(Debug, Default)]
struct Swarm {
    cluster: Option<String>,
    /// machine name -> role in the swarm
    members: BTreeMap<String, String>,
    /// machines whose node is down
    down: Vec<String>,
}

const WORKER_TOKEN: &str = "SWMTKN-1-worker";
const MANAGER_TOKEN: &str = "SWMTKN-1-manager";

fn ok_or(cond: bool, err: &str) -> Result<CommandOutput, ShellError> {
    Ok(if cond {
        CommandOutput::ok("")
    } else {
        CommandOutput::failed(1, err)
    })
}

/// Wires each machine's fake shell to one simulated swarm, the way swarm-node's command
/// line behaves.
fn simulate(connector: &FakeConnector, machines: &[Machine], swarm: &Arc<Mutex<Swarm>>) {
    for m in machines {
        let shell = connector.shell(&m.name);
        let name = m.name.clone();
        shell.on(
            "uname -m",
            CommandOutput::ok(format!(
                "lab=no\nsystemd=yes\narch=x86_64\nssh=203.0.113.1 50000 {} 22\n",
                m.private_addr
            )),
        );
        shell.on(DOCKER, CommandOutput::ok("20.10.24\n"));
        let s = swarm.clone();
        let n = name.clone();
        shell.on_fn("swarm-node status --json", move |_| {
            let s = s.lock().unwrap();
            let body = match s.members.get(&n) {
                Some(role) => serde_json::json!({
                    "version": 1,
                    "swarm": {
                        "node_id": format!("id-{n}"), "role": role,
                        "cluster_id": s.cluster, "state": "ready", "managers": []
                    }
                }),
                // swarm-node only stays up in a swarm; without one its socket is gone.
                None => {
                    return Ok(CommandOutput::failed(
                        i32::from(Exit::DaemonDown.code()),
                        "Error: cannot reach swarm-node on /run/swarm-node/swarm-node.sock: \
                         No such file or directory (is `swarm-node run` running?)",
                    ))
                }
            };
            Ok(CommandOutput::ok(body.to_string()))
        });
        let s = swarm.clone();
        let n = name.clone();
        shell.on_fn("swarm-node init", move |script| {
            let mut s = s.lock().unwrap();
            assert!(script.contains("--advertise-addr 10.0.0."), "{script}");
            if s.members.contains_key(&n) {
                return Ok(CommandOutput::failed(
                    i32::from(Exit::AlreadyInSwarm.code()),
                    "Error: this node is already part of a swarm",
                ));
            }
            assert!(s.cluster.is_none(), "a second swarm was created");
            s.cluster = Some("clu-1".into());
            s.members.insert(n.clone(), "manager".into());
            ok_or(true, "")
        });
        let s = swarm.clone();
        let n = name.clone();
        shell.on_fn("join-token -q", move |script| {
            let s = s.lock().unwrap();
            let is_manager = s.members.get(&n).map(String::as_str) == Some("manager");
            if !is_manager {
                return ok_or(false, "Error: this node is not a swarm manager");
            }
            let token = if script.ends_with("manager") {
                MANAGER_TOKEN
            } else {
                WORKER_TOKEN
            };
            Ok(CommandOutput::ok(format!("{token}\n")))
        });
        let s = swarm.clone();
        let n = name.clone();
        shell.on_fn("swarm-node join --token", move |script| {
            let mut s = s.lock().unwrap();
            if s.members.contains_key(&n) {
                return Ok(CommandOutput::failed(
                    i32::from(Exit::AlreadyInSwarm.code()),
                    "Error: this node is already part of a swarm",
                ));
            }
            assert!(script.ends_with(" 10.0.0.2:2377"), "{script}");
            let role = if script.contains(MANAGER_TOKEN) {
                "manager"
            } else if script.contains(WORKER_TOKEN) {
                "worker"
            } else {
                return ok_or(false, "Error: invalid join token");
            };
            s.members.insert(n.clone(), role.into());
            ok_or(true, "")
        });
        let s = swarm.clone();
        shell.on_fn("swarm-node nodes --json", move |_| {
            let s = s.lock().unwrap();
            let nodes: Vec<serde_json::Value> = s
                .members
                .iter()
                .map(|(n, role)| {
                    serde_json::json!({
                        "id": format!("id-{n}"), "hostname": n, "role": role,
                        "state": if s.down.contains(n) { "down" } else { "ready" },
                        "availability": "active",
                        "manager_status": if role == "manager" { Some("reachable") } else { None },
                    })
                })
                .collect();
            let list = serde_json::json!({"version": 1, "nodes": nodes});
            Ok(CommandOutput::ok(list.to_string()))
        });
    }
}

fn options() -> BootstrapOptions {
    BootstrapOptions::new(
        BinarySource::Bytes(elf_bytes("swarm-node v1")),
        SshOptions::new("/k/id", "/k/known_hosts"),
    )
}

fn total(connector: &FakeConnector, machines: &[Machine], needle: &str) -> usize {
    machines
        .iter()
        .map(|m| connector.shell(&m.name).count(needle))
        .sum()
}

#[tokio::test(start_paused = true)]
async fn bootstrap_creates_the_swarm_and_a_rerun_changes_nothing() {
    let machines = four();
    let connector = FakeConnector::new();
    let swarm = Arc::new(Mutex::new(Swarm::default()));
    simulate(&connector, &machines, &swarm);
    connector.refuse("c1-node4", 2);

    let report = bootstrap_cluster_with(&connector, &machines, &options(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.cluster_id, "clu-1");
    assert_eq!(report.leader, "c1-node1");
    assert!(report.initialized);
    let roles: Vec<(&str, &str)> = report
        .nodes
        .iter()
        .map(|n| (n.machine.as_str(), n.swarm_role.as_str()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("c1-node1", "manager"),
            ("c1-node2", "manager"),
            ("c1-node3", "worker"),
            ("c1-node4", "worker"),
        ]
    );
    assert_eq!(
        report.nodes[0].changes,
        vec!["uploaded swarm-node", "created the swarm"]
    );
    assert_eq!(
        report.nodes[3].changes,
        vec!["uploaded swarm-node", "joined as worker"]
    );
    assert_eq!(total(&connector, &machines, "swarm-node init"), 1);
    assert_eq!(total(&connector, &machines, "swarm-node join --token"), 3);
    // New machines cannot be in a swarm yet: status is asked once, after the joins.
    assert_eq!(
        total(&connector, &machines, "status --json"),
        machines.len()
    );
    for m in &machines {
        let shell = connector.shell(&m.name);
        assert!(shell.is_closed(), "{} left open", m.name);
        assert!(shell.file("/etc/swarmup/nftables.conf").is_some());
        assert!(shell
            .file("/etc/systemd/system/swarm-node.service")
            .is_some());
        let rules = String::from_utf8(shell.file("/etc/swarmup/nftables.conf").unwrap().0).unwrap();
        assert!(rules.contains("elements = { 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5 }"));
    }

    // The same command again: nothing is uploaded, created or joined twice.
    let uploads_before = total(&connector, &machines, "upload ");
    let report = bootstrap_cluster_with(&connector, &machines, &options(), &NoProgress)
        .await
        .unwrap();
    assert!(!report.initialized);
    assert!(
        report.nodes.iter().all(|n| n.changes.is_empty()),
        "{report:?}"
    );
    assert_eq!(total(&connector, &machines, "swarm-node init"), 1);
    assert_eq!(total(&connector, &machines, "swarm-node join --token"), 3);
    // The firewall file is rewritten every time (it is cheap and atomic); nothing else.
    assert_eq!(
        total(&connector, &machines, "upload ") - uploads_before,
        machines.len()
    );
    assert_eq!(
        total(
            &connector,
            &machines,
            "systemctl daemon-reload && systemctl enable --now swarm-node.service"
        ),
        machines.len()
    );
}

#[tokio::test(start_paused = true)]
async fn rerun_joins_only_the_machines_that_are_missing() {
    let machines = four();
    let connector = FakeConnector::new();
    let swarm = Arc::new(Mutex::new(Swarm {
        cluster: Some("clu-9".into()),
        members: [
            ("c1-node2".to_string(), "manager".to_string()),
            ("c1-node3".to_string(), "worker".to_string()),
        ]
        .into_iter()
        .collect(),
        down: Vec::new(),
    }));
    simulate(&connector, &machines, &swarm);
    // The machines in the swarm ran swarm-node before, an older one.
    for name in ["c1-node2", "c1-node3"] {
        connector
            .shell(name)
            .put_file("/var/lib/swarmup/swarm-node", &elf_bytes("v0"), 0o755);
    }
    // Joins go through the manager that is in the swarm.
    for m in &machines {
        connector.shell(&m.name).on_fn("swarm-node join --token", {
            let s = swarm.clone();
            let n = m.name.clone();
            move |script| {
                assert!(script.ends_with(" 10.0.0.3:2377"), "{script}");
                let role = if script.contains(MANAGER_TOKEN) {
                    "manager"
                } else {
                    "worker"
                };
                s.lock().unwrap().members.insert(n.clone(), role.into());
                Ok(CommandOutput::ok(""))
            }
        });
    }
    let lines = Lines::default();
    let report = bootstrap_cluster_with(&connector, &machines, &options(), &lines)
        .await
        .unwrap();
    assert_eq!(report.leader, "c1-node2");
    assert_eq!(report.cluster_id, "clu-9");
    assert!(!report.initialized);
    assert_eq!(total(&connector, &machines, "swarm-node init"), 0);
    assert_eq!(
        connector
            .shell("c1-node1")
            .count("join --token SWMTKN-1-manager"),
        1
    );
    assert_eq!(
        connector
            .shell("c1-node4")
            .count("join --token SWMTKN-1-worker"),
        1
    );
    assert_eq!(connector.shell("c1-node2").count("join --token"), 0);
    assert_eq!(connector.shell("c1-node3").count("join --token"), 0);
    assert!(lines
        .all()
        .contains(&"c1-node3: already part of the swarm".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_stays_down_fails_the_readiness_wait() {
    let machines = four();
    let connector = FakeConnector::new();
    let swarm = Arc::new(Mutex::new(Swarm {
        down: vec!["c1-node3".into()],
        ..Swarm::default()
    }));
    simulate(&connector, &machines, &swarm);
    let mut opts = options();
    opts.deadlines.ready = Duration::from_secs(20);
    let err = bootstrap_cluster_with(&connector, &machines, &opts, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "timed out after 20s waiting on c1-node1 for 4 node(s) to be ready; last error: not ready: c1-node3 (down)"
    );
    assert!(machines
        .iter()
        .all(|m| connector.shell(&m.name).is_closed()));
}

#[tokio::test(start_paused = true)]
async fn unreachable_machines_are_all_named_and_nothing_is_joined() {
    let machines = four();
    let connector = FakeConnector::new();
    let swarm = Arc::new(Mutex::new(Swarm::default()));
    simulate(&connector, &machines, &swarm);
    connector.refuse("c1-node2", usize::MAX);
    connector.refuse("c1-node4", usize::MAX);
    let mut opts = options();
    opts.deadlines.ssh = Duration::from_secs(10);
    let err = bootstrap_cluster_with(&connector, &machines, &opts, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "2 machines failed: timed out after 10s waiting for SSH on c1-node2 (10.0.0.3:22)"
        ),
        "{err}"
    );
    assert!(
        err.contains("waiting for SSH on c1-node4 (10.0.0.5:22)"),
        "{err}"
    );
    assert_eq!(total(&connector, &machines, "swarm-node init"), 0);
    assert!(connector.shell("c1-node1").is_closed());
    assert!(connector.shell("c1-node3").is_closed());
}

#[tokio::test(start_paused = true)]
async fn bad_machine_lists_are_refused_before_any_connection() {
    let connector = FakeConnector::new();
    let workers = vec![machine("c1-node1", Role::Worker, "10.0.0.2")];
    let err = bootstrap_cluster_with(&connector, &workers, &options(), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "none of the machines is a manager: a swarm needs at least one"
    );
    let mut off = four();
    off[2].power = PowerState::Off;
    let err = bootstrap_cluster_with(&connector, &off, &options(), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "machine c1-node3 is powered off: power it on and run again"
    );
    assert_eq!(connector.attempts("c1-node1"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_machine_left_half_done_is_waited_for_then_joined() {
    let machines = four();
    let connector = FakeConnector::new();
    let swarm = Arc::new(Mutex::new(Swarm::default()));
    simulate(&connector, &machines, &swarm);
    // An earlier run stopped after uploading swarm-node everywhere, before the swarm.
    for m in &machines {
        connector
            .shell(&m.name)
            .put_file("/var/lib/swarmup/swarm-node", &elf_bytes("v0"), 0o755);
    }
    let started = tokio::time::Instant::now();
    let report = bootstrap_cluster_with(&connector, &machines, &options(), &NoProgress)
        .await
        .unwrap();
    assert!(report.initialized);
    assert_eq!(total(&connector, &machines, "swarm-node init"), 1);
    assert_eq!(total(&connector, &machines, "swarm-node join --token"), 3);
    // The wait for daemons that never come up is bounded by the daemon deadline.
    let waited = started.elapsed();
    assert!(waited >= Deadlines::default().daemon, "{waited:?}");
    assert!(waited < Deadlines::default().daemon * 2, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn roots_docker_cli_is_pointed_at_swarm_node_once() {
    let shell = FakeShell::new("n1");
    let m = machine("c1-node1", Role::Manager, "10.0.0.2");
    shell.on("docker context", CommandOutput::ok("context=created\n"));
    steps::ensure_docker_context(&shell, &m, &NoProgress)
        .await
        .unwrap();
    let script = &shell.scripts()[0];
    assert!(
        script.starts_with("export DOCKER_CONFIG=~root/.docker; "),
        "{script}"
    );
    assert!(
        script.contains("--docker host=unix:///run/swarm-node/swarm-node.sock swarmup"),
        "{script}"
    );
    // Made current only when it is created: a later `docker context use default` stays.
    let (update, create) = script.split_once("; else ").unwrap();
    assert!(update.contains("docker context update") && !update.contains("context use"));
    assert!(
        create.contains("docker context create") && create.contains("docker context use swarmup")
    );

    shell.on(
        "docker context",
        CommandOutput::failed(1, "docker: command not found"),
    );
    let err = steps::ensure_docker_context(&shell, &m, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("c1-node1: docker CLI context: pointing root's docker CLI at swarm-node failed: docker: command not found"),
        "{err}"
    );
}
