use super::*;

use expect_test::expect;

const LOGIN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoginKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxx swarmup@c1";
const HOST_PUBLIC: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxxx c1-node1";
const HOST_PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBmYWtlLWtleS1mb3ItdGVzdHMtb25seS0tLS0tLS0tLQAAAIg=
-----END OPENSSH PRIVATE KEY-----
";

fn cloud_init_ctx() -> CloudInitContext {
    CloudInitContext::new("c1-node1", LOGIN_KEY, HOST_PRIVATE, HOST_PUBLIC)
}

#[test]
fn cloud_init_snapshot() {
    let out = cloud_init(&cloud_init_ctx()).unwrap();
    expect![[r#"
        #cloud-config
        # Written by swarmup for c1-node1. Everything after first boot happens over SSH.
        hostname: "c1-node1"
        preserve_hostname: false
        manage_etc_hosts: true

        # swarmup logs in as root with the cluster's own key; passwords never work.
        disable_root: false
        ssh_pwauth: false
        ssh_authorized_keys:
          - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoginKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxx swarmup@c1"

        # The host key comes from swarmup, so its known_hosts entry is pinned before the
        # first connection; no other host key types are generated.
        ssh_deletekeys: true
        ssh_genkeytypes: []
        ssh_keys:
          ed25519_private: |
            -----BEGIN OPENSSH PRIVATE KEY-----
            b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
            QyNTUxOQAAACBmYWtlLWtleS1mb3ItdGVzdHMtb25seS0tLS0tLS0tLQAAAIg=
            -----END OPENSSH PRIVATE KEY-----
          ed25519_public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxxx c1-node1"

        write_files:
          # Sorts before the image's own drop-ins, and sshd keeps the first value it reads.
          - path: /etc/ssh/sshd_config.d/10-swarmup.conf
            owner: root:root
            permissions: "0644"
            content: |
              PasswordAuthentication no
              KbdInteractiveAuthentication no
              PermitRootLogin prohibit-password

        package_update: true
        packages:
          - "docker.io"
          - "nftables"

        runcmd:
          - [systemctl, enable, --now, docker.service]
          - [mkdir, -p, /var/lib/swarmup]
    "#]]
    .assert_eq(&out);
}

#[test]
fn cloud_init_is_yaml_with_the_keys_intact() {
    let out = cloud_init(&cloud_init_ctx()).unwrap();
    assert!(out.starts_with("#cloud-config\n"));
    let doc: serde_norway::Value = serde_norway::from_str(&out).unwrap();
    assert_eq!(doc["hostname"].as_str(), Some("c1-node1"));
    assert_eq!(doc["ssh_pwauth"].as_bool(), Some(false));
    assert_eq!(doc["ssh_authorized_keys"][0].as_str(), Some(LOGIN_KEY));
    // cloud-init writes the block scalar verbatim, so the key must survive byte for byte.
    assert_eq!(
        doc["ssh_keys"]["ed25519_private"].as_str(),
        Some(HOST_PRIVATE)
    );
    assert_eq!(
        doc["ssh_keys"]["ed25519_public"].as_str(),
        Some(HOST_PUBLIC)
    );
    assert_eq!(doc["packages"][0].as_str(), Some("docker.io"));
}

fn machines_ctx() -> MachinesCloudInitContext {
    let key = |host: &str| MachineHostKey {
        hostname: host.to_string(),
        host_key_private: HOST_PRIVATE.to_string(),
        host_key_public: HOST_PUBLIC.replace("c1-node1", host),
    };
    MachinesCloudInitContext::new(LOGIN_KEY, vec![key("c1-node1"), key("c1-node2")])
}

#[test]
fn cloud_init_for_machines_snapshot() {
    let out = cloud_init_for_machines(&machines_ctx()).unwrap();
    expect![[r##"
        #cloud-config
        # Written by swarmup for c1-node1, c1-node2. Every one of these machines gets this
        # same text; each installs the SSH host key written under its own hostname (the droplet
        # name). Everything after first boot happens over SSH.
        preserve_hostname: false
        manage_etc_hosts: true

        # swarmup logs in as root with the cluster's own key; passwords never work.
        disable_root: false
        ssh_pwauth: false
        ssh_authorized_keys:
          - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoginKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxx swarmup@c1"

        # The host key comes from swarmup, so its known_hosts entry is pinned before the first
        # connection. Until the machine has installed its own key, sshd has none and refuses
        # connections rather than show a key swarmup would not accept.
        ssh_deletekeys: true
        ssh_genkeytypes: []

        write_files:
          # Sorts before the image's own drop-ins, and sshd keeps the first value it reads.
          - path: /etc/ssh/sshd_config.d/10-swarmup.conf
            owner: root:root
            permissions: "0644"
            content: |
              PasswordAuthentication no
              KbdInteractiveAuthentication no
              PermitRootLogin prohibit-password
          - path: /etc/swarmup/host-keys/c1-node1/ssh_host_ed25519_key
            owner: root:root
            permissions: "0600"
            content: |
              -----BEGIN OPENSSH PRIVATE KEY-----
              b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
              QyNTUxOQAAACBmYWtlLWtleS1mb3ItdGVzdHMtb25seS0tLS0tLS0tLQAAAIg=
              -----END OPENSSH PRIVATE KEY-----
          - path: /etc/swarmup/host-keys/c1-node1/ssh_host_ed25519_key.pub
            owner: root:root
            permissions: "0644"
            content: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxxx c1-node1\n"
          - path: /etc/swarmup/host-keys/c1-node2/ssh_host_ed25519_key
            owner: root:root
            permissions: "0600"
            content: |
              -----BEGIN OPENSSH PRIVATE KEY-----
              b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
              QyNTUxOQAAACBmYWtlLWtleS1mb3ItdGVzdHMtb25seS0tLS0tLS0tLQAAAIg=
              -----END OPENSSH PRIVATE KEY-----
          - path: /etc/swarmup/host-keys/c1-node2/ssh_host_ed25519_key.pub
            owner: root:root
            permissions: "0644"
            content: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTestsOnlyxxxxxxxxxxxxxxxxxxxxxxx c1-node2\n"
          # Picks this machine's key by hostname, then removes every machine's keys from disk.
          - path: /etc/swarmup/install-host-key.sh
            owner: root:root
            permissions: "0755"
            content: |
              #!/bin/sh
              set -eu
              dir=/etc/swarmup/host-keys
              trap 'rm -rf "$dir"' EXIT
              host=$(hostname)
              [ -f "$dir/$host/ssh_host_ed25519_key" ] || host=$(hostname -s)
              if [ ! -f "$dir/$host/ssh_host_ed25519_key" ]; then
                echo "swarmup: no ssh host key for $(hostname) in $dir" >&2
                exit 1
              fi
              install -o root -g root -m 0600 "$dir/$host/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
              install -o root -g root -m 0644 "$dir/$host/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
              systemctl reset-failed ssh.socket ssh.service 2>/dev/null || true
              systemctl restart ssh.service 2>/dev/null || systemctl restart sshd.service

        package_update: true
        packages:
          - "docker.io"
          - "nftables"

        runcmd:
          - [sh, /etc/swarmup/install-host-key.sh]
          - [systemctl, enable, --now, docker.service]
          - [mkdir, -p, /var/lib/swarmup]
    "##]].assert_eq(&out);
}

#[test]
fn cloud_init_for_machines_files_every_key_under_its_hostname() {
    let out = cloud_init_for_machines(&machines_ctx()).unwrap();
    assert!(out.starts_with("#cloud-config\n"));
    let doc: serde_norway::Value = serde_norway::from_str(&out).unwrap();
    // Shared text: no hostname of its own, the machine keeps the provider's.
    assert!(doc.get("hostname").is_none());
    assert_eq!(doc["ssh_authorized_keys"][0].as_str(), Some(LOGIN_KEY));
    assert!(doc.get("ssh_keys").is_none());
    let files = doc["write_files"].as_sequence().unwrap();
    let content = |path: String| {
        files
            .iter()
            .find(|f| f["path"].as_str() == Some(path.as_str()))
            .and_then(|f| f["content"].as_str())
            .map(str::to_string)
    };
    for host in ["c1-node1", "c1-node2"] {
        let dir = format!("{CLOUD_INIT_HOST_KEYS_DIR}/{host}");
        assert_eq!(
            content(format!("{dir}/ssh_host_ed25519_key")).as_deref(),
            Some(HOST_PRIVATE)
        );
        assert_eq!(
            content(format!("{dir}/ssh_host_ed25519_key.pub")),
            Some(format!("{}\n", HOST_PUBLIC.replace("c1-node1", host)))
        );
    }
    let script = content(CLOUD_INIT_HOST_KEY_SCRIPT.to_string()).unwrap();
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    assert_eq!(
        doc["runcmd"][0][1].as_str(),
        Some(CLOUD_INIT_HOST_KEY_SCRIPT)
    );
}

#[test]
fn cloud_init_for_machines_script_installs_the_key_of_its_hostname() {
    if std::process::Command::new("sh")
        .arg("-c")
        .arg("true")
        .status()
        .is_err()
    {
        println!("skipped: no sh");
        return;
    }
    let out = cloud_init_for_machines(&machines_ctx()).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&out).unwrap();
    let files = doc["write_files"].as_sequence().unwrap();
    let script = files
        .iter()
        .find(|f| f["path"].as_str() == Some(CLOUD_INIT_HOST_KEY_SCRIPT))
        .and_then(|f| f["content"].as_str())
        .unwrap();
    // The script as written, with its fixed paths moved under a scratch directory and the
    // commands that need root replaced by harmless stand-ins.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for f in files {
        let path = f["path"].as_str().unwrap();
        if let Some(rest) = path.strip_prefix(CLOUD_INIT_HOST_KEYS_DIR) {
            let to = root.join(format!("keys{rest}"));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, f["content"].as_str().unwrap()).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("ssh")).unwrap();
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in [
        ("hostname", "echo c1-node2"),
        (
            "systemctl",
            "echo \"$@\" >> \"$(dirname \"$0\")/../systemctl.log\"",
        ),
        ("install", "shift 6; cp \"$1\" \"$2\""),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = script
        .replace(
            CLOUD_INIT_HOST_KEYS_DIR,
            &root.join("keys").display().to_string(),
        )
        .replace("/etc/ssh/", &format!("{}/", root.join("ssh").display()));
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .status()
        .unwrap();
    assert!(status.success());
    let installed = std::fs::read_to_string(root.join("ssh/ssh_host_ed25519_key.pub")).unwrap();
    assert_eq!(
        installed.trim(),
        HOST_PUBLIC.replace("c1-node1", "c1-node2")
    );
    assert!(
        !root.join("keys").exists(),
        "the other machines' keys stay behind"
    );
    let log = std::fs::read_to_string(root.join("systemctl.log")).unwrap();
    assert!(log.contains("restart ssh.service"), "{log}");
}

#[test]
fn cloud_init_for_machines_rejects_bad_input() {
    let mut ctx = machines_ctx();
    ctx.machines[1].hostname = "../etc".into();
    let err = cloud_init_for_machines(&ctx).unwrap_err().to_string();
    assert!(
        err.starts_with("cloud-init-machines.yaml.j2: hostname"),
        "{err}"
    );

    let mut ctx = machines_ctx();
    ctx.machines[1].hostname = "c1-node1".into();
    let err = cloud_init_for_machines(&ctx).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");

    let mut ctx = machines_ctx();
    ctx.machines.clear();
    assert!(cloud_init_for_machines(&ctx).is_err());

    let mut ctx = machines_ctx();
    ctx.machines[0].host_key_private = "nope".into();
    let err = cloud_init_for_machines(&ctx).unwrap_err().to_string();
    assert!(err.contains("not in OpenSSH format"), "{err}");

    let mut ctx = machines_ctx();
    ctx.login_public_key = "ssh-ed25519 AAAA\nruncmd: [rm]".into();
    let err = cloud_init_for_machines(&ctx).unwrap_err().to_string();
    assert!(err.contains("single line"), "{err}");
}

#[test]
fn cloud_init_rejects_bad_input() {
    let mut ctx = cloud_init_ctx();
    ctx.hostname = "node1\nruncmd: [rm]".into();
    let err = cloud_init(&ctx).unwrap_err().to_string();
    assert!(err.starts_with("cloud-init.yaml.j2: hostname"), "{err}");

    let mut ctx = cloud_init_ctx();
    ctx.host_key_public = "ssh-rsa AAAA c1-node1".into();
    let err = cloud_init(&ctx).unwrap_err().to_string();
    assert!(err.contains("must be ssh-ed25519"), "{err}");

    let mut ctx = cloud_init_ctx();
    ctx.login_public_key = "ssh-ed25519 AAAA\nother".into();
    let err = cloud_init(&ctx).unwrap_err().to_string();
    assert!(err.contains("single line"), "{err}");

    let mut ctx = cloud_init_ctx();
    ctx.host_key_private = "not a key".into();
    let err = cloud_init(&ctx).unwrap_err().to_string();
    assert!(err.contains("not in OpenSSH format"), "{err}");
}

#[test]
fn service_snapshot_default() {
    let out = swarm_node_service(&ServiceContext::default()).unwrap();
    expect![[r#"
        # Written by swarmup. swarm-node is the cluster daemon: a manager keeps the cluster
        # state, a worker runs tasks through the local Docker Engine.
        [Unit]
        Description=swarm-node, the swarmup cluster daemon
        After=network-online.target docker.service
        Wants=network-online.target
        Requires=docker.service
        # Never give up restarting: a node that stays down is worse than one that retries.
        StartLimitIntervalSec=0

        [Service]
        Type=simple
        # The state directory holds private keys (the root CA's on managers): whatever the daemon
        # creates is for root only.
        UMask=0077
        ExecStart=/var/lib/swarmup/swarm-node run --state-dir /var/lib/swarm-node
        Restart=always
        RestartSec=2s
        TimeoutStopSec=30s
        LimitNOFILE=1048576
        LimitNPROC=infinity
        LimitCORE=infinity
        TasksMax=infinity

        [Install]
        WantedBy=multi-user.target
    "#]]
    .assert_eq(&out);
}

#[test]
fn service_snapshot_with_firewall_and_environment() {
    let ctx = ServiceContext {
        firewall_file: Some("/etc/swarmup/nftables.conf".into()),
        binary_sha256: Some("ab".repeat(32)),
        environment: [(
            "SWARM_NODE_LOG".to_string(),
            "info,swarm_node=debug".to_string(),
        )]
        .into_iter()
        .collect(),
        ..ServiceContext::default()
    };
    let out = swarm_node_service(&ctx).unwrap();
    expect![[r##"
        # Written by swarmup. swarm-node is the cluster daemon: a manager keeps the cluster
        # state, a worker runs tasks through the local Docker Engine.
        # A new swarm-node binary changes the next line, and a changed unit restarts the service.
        # swarm-node binary sha256: abababababababababababababababababababababababababababababababab
        [Unit]
        Description=swarm-node, the swarmup cluster daemon
        After=network-online.target docker.service
        Wants=network-online.target
        Requires=docker.service
        # Never give up restarting: a node that stays down is worse than one that retries.
        StartLimitIntervalSec=0

        [Service]
        Type=simple
        # The state directory holds private keys (the root CA's on managers): whatever the daemon
        # creates is for root only.
        UMask=0077
        # Re-applies the node's firewall on every start, boot included; the leading "-" keeps
        # a firewall failure from keeping the node out of the cluster.
        ExecStartPre=-/usr/sbin/nft -f /etc/swarmup/nftables.conf
        ExecStart=/var/lib/swarmup/swarm-node run --state-dir /var/lib/swarm-node
        Environment="SWARM_NODE_LOG=info,swarm_node=debug"
        Restart=always
        RestartSec=2s
        TimeoutStopSec=30s
        LimitNOFILE=1048576
        LimitNPROC=infinity
        LimitCORE=infinity
        TasksMax=infinity

        [Install]
        WantedBy=multi-user.target
    "##]]
    .assert_eq(&out);
}

#[test]
fn service_rejects_bad_input() {
    let ctx = ServiceContext {
        binary_path: "relative/swarm-node".into(),
        ..ServiceContext::default()
    };
    let err = swarm_node_service(&ctx).unwrap_err().to_string();
    assert!(err.contains("must be an absolute path"), "{err}");

    let ctx = ServiceContext {
        environment: [("X".to_string(), "a\nExecStart=/bin/evil".to_string())]
            .into_iter()
            .collect(),
        ..ServiceContext::default()
    };
    let err = swarm_node_service(&ctx).unwrap_err().to_string();
    assert!(err.contains("environment value for X"), "{err}");

    let ctx = ServiceContext {
        binary_sha256: Some("not-a-checksum".into()),
        ..ServiceContext::default()
    };
    let err = swarm_node_service(&ctx).unwrap_err().to_string();
    assert!(err.contains("is not a sha256"), "{err}");
}

fn nft_ctx() -> NftablesContext {
    NftablesContext {
        ssh_allowed: vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        ],
        control_allowed: vec!["192.0.2.10".parse().unwrap()],
        cluster_nodes: vec![
            "10.0.0.3".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
        ],
        published_ports: vec![
            PublishedPort::tcp(443),
            PublishedPort::tcp(80),
            PublishedPort::udp(53),
            PublishedPort::tcp(80),
        ],
        ..NftablesContext::default()
    }
}

#[test]
fn nftables_snapshot() {
    let out = nftables(&nft_ctx()).unwrap();
    expect![[r##"
        #!/usr/sbin/nft -f
        # Written by swarmup. Only table inet swarmup is managed here: Docker's own tables are
        # never flushed, and forwarding is left to Docker.

        # Declaring the table first lets the delete succeed on the very first load; nft -f
        # applies the whole file as one transaction.
        table inet swarmup
        delete table inet swarmup

        table inet swarmup {
        	# The cluster's own nodes.
        	set cluster_v4 {
        		type ipv4_addr
        		elements = { 10.0.0.2, 10.0.0.3 }
        	}

        	set cluster_v6 {
        		type ipv6_addr
        		elements = { fd00::2 }
        	}

        	chain input {
        		type filter hook input priority filter; policy drop;

        		ct state established,related accept
        		ct state invalid drop
        		iif "lo" accept
        		meta l4proto { icmp, ipv6-icmp } accept
        		iifname "docker0" accept
        		iifname "docker_gwbridge" accept
        		iifname "swb*" accept

        		# SSH
        		ip saddr { 198.51.100.7/32, 203.0.113.0/24 } tcp dport 22 accept
        		ip6 saddr { 2001:db8::/32 } tcp dport 22 accept

        		# Swarm control plane (Raft, dispatcher, CA): cluster nodes only.
        		ip saddr @cluster_v4 tcp dport 2377 accept
        		ip6 saddr @cluster_v6 tcp dport 2377 accept
        		# The Docker API shares the control port; it needs a client certificate.
        		ip saddr { 192.0.2.10/32 } tcp dport 2377 accept

        		# VXLAN data path: it has no authentication of its own, so cluster nodes only.
        		ip saddr @cluster_v4 udp dport 4789 accept
        		ip6 saddr @cluster_v6 udp dport 4789 accept

        		# swarm-node's WireGuard tunnel (encrypted overlay networks): cluster nodes only.
        		# What comes out of it is the VXLAN of encrypted networks, from the peers' tunnel
        		# addresses, which only the peers' keys can send.
        		ip saddr @cluster_v4 udp dport 51820 accept
        		ip6 saddr @cluster_v6 udp dport 51820 accept
        		iifname "swg0" udp dport 4789 accept

        		# Published service ports, open to everyone.
        		tcp dport { 80, 443 } accept
        		udp dport { 53 } accept
        	}
        }
    "##]]
    .assert_eq(&out);
}

#[test]
fn nftables_snapshot_defaults_open_ssh_to_anyone() {
    let ctx = NftablesContext {
        cluster_nodes: vec!["10.0.0.2".parse().unwrap()],
        ..NftablesContext::default()
    };
    let out = nftables(&ctx).unwrap();
    expect![[r##"
        #!/usr/sbin/nft -f
        # Written by swarmup. Only table inet swarmup is managed here: Docker's own tables are
        # never flushed, and forwarding is left to Docker.

        # Declaring the table first lets the delete succeed on the very first load; nft -f
        # applies the whole file as one transaction.
        table inet swarmup
        delete table inet swarmup

        table inet swarmup {
        	# The cluster's own nodes.
        	set cluster_v4 {
        		type ipv4_addr
        		elements = { 10.0.0.2 }
        	}

        	set cluster_v6 {
        		type ipv6_addr
        	}

        	chain input {
        		type filter hook input priority filter; policy drop;

        		ct state established,related accept
        		ct state invalid drop
        		iif "lo" accept
        		meta l4proto { icmp, ipv6-icmp } accept
        		iifname "docker0" accept
        		iifname "docker_gwbridge" accept
        		iifname "swb*" accept

        		# SSH
        		tcp dport 22 accept

        		# Swarm control plane (Raft, dispatcher, CA): cluster nodes only.
        		ip saddr @cluster_v4 tcp dport 2377 accept
        		ip6 saddr @cluster_v6 tcp dport 2377 accept

        		# VXLAN data path: it has no authentication of its own, so cluster nodes only.
        		ip saddr @cluster_v4 udp dport 4789 accept
        		ip6 saddr @cluster_v6 udp dport 4789 accept

        		# swarm-node's WireGuard tunnel (encrypted overlay networks): cluster nodes only.
        		# What comes out of it is the VXLAN of encrypted networks, from the peers' tunnel
        		# addresses, which only the peers' keys can send.
        		ip saddr @cluster_v4 udp dport 51820 accept
        		ip6 saddr @cluster_v6 udp dport 51820 accept
        		iifname "swg0" udp dport 4789 accept
        	}
        }
    "##]]
    .assert_eq(&out);
}

#[test]
fn nftables_never_flushes_other_tables() {
    let out = nftables(&nft_ctx()).unwrap();
    for line in out.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        assert!(!line.contains("flush ruleset"), "{line}");
        if line.starts_with("delete") || line.starts_with("flush") {
            assert_eq!(line, "delete table inet swarmup");
        }
    }
}

#[test]
fn nftables_rejects_bad_input() {
    let ctx = NftablesContext {
        trusted_interfaces: vec!["eth0\" accept; tcp dport 1".into()],
        ..NftablesContext::default()
    };
    let err = nftables(&ctx).unwrap_err().to_string();
    assert!(err.contains("is not an interface name"), "{err}");

    let ctx = NftablesContext {
        published_ports: vec![PublishedPort::tcp(0)],
        ..NftablesContext::default()
    };
    assert!(nftables(&ctx).is_err());
}

#[test]
fn cidr_and_port_parsing() {
    assert_eq!(
        "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
        "10.1.2.3/32"
    );
    assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string();
    assert_eq!(err, "10.0.0.0/33: the prefix length must be at most 32");
    let err = "example.com".parse::<Cidr>().unwrap_err().to_string();
    assert!(err.contains("is not an address or prefix"), "{err}");
    let json = serde_json_like(&"192.0.2.0/24".parse::<Cidr>().unwrap());
    assert_eq!(json, "192.0.2.0/24");

    let net: Cidr = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains("10.1.200.3".parse().unwrap()));
    assert!(!net.contains("10.2.0.1".parse().unwrap()));
    assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
    assert!(!net.contains("2001:db8::1".parse().unwrap()));
    let [any4, any6] = Cidr::anywhere();
    assert!(any4.contains("198.51.100.1".parse().unwrap()));
    assert!(any6.contains("2001:db8::1".parse().unwrap()));
    let v6: Cidr = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));

    assert_eq!("80".parse::<PublishedPort>(), Ok(PublishedPort::tcp(80)));
    assert_eq!(
        "53/udp".parse::<PublishedPort>(),
        Ok(PublishedPort::udp(53))
    );
    assert!("0".parse::<PublishedPort>().is_err());
    assert!("80/sctp".parse::<PublishedPort>().is_err());
}

fn serde_json_like(c: &Cidr) -> String {
    let v = serde_norway::to_string(c).unwrap();
    v.trim().to_string()
}

#[test]
fn nftables_opens_docker_gossip_to_cluster_nodes_only() {
    let plain = nftables(&nft_ctx()).unwrap();
    assert!(!plain.contains("7946"), "{plain}");
    let ctx = NftablesContext {
        gossip_port: Some(DOCKER_GOSSIP_PORT),
        ..nft_ctx()
    };
    let out = nftables(&ctx).unwrap();
    let gossip: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("7946"))
        .collect();
    assert_eq!(
        gossip,
        [
            "ip saddr @cluster_v4 meta l4proto { tcp, udp } th dport 7946 accept",
            "ip6 saddr @cluster_v6 meta l4proto { tcp, udp } th dport 7946 accept",
        ]
    );
    let zero = NftablesContext {
        gossip_port: Some(0),
        ..nft_ctx()
    };
    assert!(nftables(&zero).is_err());
}

/// Loads the rendered file into a throwaway network namespace, twice, next to a table
/// that stands in for Docker's, and checks that ours replaced itself and left the other.
#[test]
fn nftables_loads_into_nft_e2e() {
    if std::env::var("SWARMUP_E2E").as_deref() != Ok("1") {
        println!("skipped: SWARMUP_E2E=1 not set (needs root, unshare and nft)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("swarmup.nft");
    let with_gossip = NftablesContext {
        gossip_port: Some(DOCKER_GOSSIP_PORT),
        ..nft_ctx()
    };
    std::fs::write(&ours, nftables(&with_gossip).unwrap()).unwrap();
    let docker = dir.path().join("docker.nft");
    std::fs::write(
        &docker,
        "table ip filter {\n\tchain DOCKER-USER {\n\t\treturn\n\t}\n}\n",
    )
    .unwrap();
    let script = format!(
        "nft -f {docker} && nft -f {ours} && nft -f {ours} && nft list ruleset",
        docker = docker.display(),
        ours = ours.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nft failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chain DOCKER-USER"), "{stdout}");
    assert_eq!(stdout.matches("table inet swarmup").count(), 1, "{stdout}");
    assert!(stdout.contains("policy drop"), "{stdout}");
    assert!(stdout.contains("10.0.0.2"), "{stdout}");
    assert!(stdout.contains("th dport 7946 accept"), "{stdout}");
}

fn ssh_ctx() -> SshConfigContext {
    SshConfigContext {
        cluster: "c1".into(),
        hosts: vec![
            SshHost {
                alias: "c1-node1".into(),
                host_name: "203.0.113.10".into(),
                port: 22,
                user: "root".into(),
                identity_file: "/home/ann/.local/share/swarmup/c1/id_ed25519".into(),
                known_hosts_file: "/home/ann/.local/share/swarmup/c1/known_hosts".into(),
            },
            SshHost {
                alias: "c1-node2".into(),
                host_name: "2001:db8::2".into(),
                port: 2222,
                user: "ubuntu".into(),
                identity_file: "/Users/Ann Lee/Library/swarmup/c1/id_ed25519".into(),
                known_hosts_file: "/Users/Ann Lee/Library/100%/known_hosts".into(),
            },
        ],
    }
}

#[test]
fn ssh_config_block_snapshot() {
    let out = ssh_config_block(&ssh_ctx()).unwrap();
    expect![[r#"
        # BEGIN swarmup c1
        # Managed by swarmup; edits between BEGIN and END are replaced on the next run.
        Host c1-node1
            HostName 203.0.113.10
            Port 22
            User root
            IdentityFile "/home/ann/.local/share/swarmup/c1/id_ed25519"
            UserKnownHostsFile "/home/ann/.local/share/swarmup/c1/known_hosts"
            StrictHostKeyChecking yes
            IdentitiesOnly yes
        Host c1-node2
            HostName 2001:db8::2
            Port 2222
            User ubuntu
            IdentityFile "/Users/Ann Lee/Library/swarmup/c1/id_ed25519"
            UserKnownHostsFile "/Users/Ann Lee/Library/100%%/known_hosts"
            StrictHostKeyChecking yes
            IdentitiesOnly yes
        # Lines after this block apply to every host again, as they would at the top of the file.
        Host *
        # END swarmup c1
    "#]]
    .assert_eq(&out);
    assert!(out.starts_with(&ssh_block_begin("c1")));
    assert!(out.ends_with(&format!("{}\n", ssh_block_end("c1"))));
}

#[test]
fn ssh_config_block_rejects_bad_input() {
    let mut ctx = ssh_ctx();
    ctx.hosts[0].alias = "c1-node1 *".into();
    let err = ssh_config_block(&ctx).unwrap_err().to_string();
    assert!(err.contains("host alias"), "{err}");

    let mut ctx = ssh_ctx();
    ctx.hosts[0].identity_file = "/tmp/a\"b".into();
    let err = ssh_config_block(&ctx).unwrap_err().to_string();
    assert!(err.contains("double quote"), "{err}");

    let mut ctx = ssh_ctx();
    ctx.hosts[1].host_name = "bad host".into();
    let err = ssh_config_block(&ctx).unwrap_err().to_string();
    assert!(
        err.contains("neither an IP address nor a host name"),
        "{err}"
    );
}
