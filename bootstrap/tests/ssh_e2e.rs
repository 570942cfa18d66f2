//! SshShell against a real sshd on 127.0.0.1 with a generated host key and login key.
//! Runs only with SWARMUP_E2E=1 (it needs /usr/sbin/sshd and root for /run/sshd).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use swarmup_bootstrap::keys::{ensure_login_key, generate_host_key, write_known_hosts, KnownHost};
use swarmup_bootstrap::steps::wait_for_ssh;
use swarmup_bootstrap::{ShellError, SshConnector, SshOptions};
use swarmup_machine::{Machine, NoProgress, PowerState, Role, SshEndpoint};

fn enabled() -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() != Ok("1") {
        println!("skipped: SWARMUP_E2E=1 not set (needs sshd on 127.0.0.1)");
        return false;
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        println!("skipped: /usr/sbin/sshd is not installed (package openssh-server)");
        return false;
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn machine(name: &str, port: u16, user: &str) -> Machine {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Machine {
        name: name.to_string(),
        role: Role::Manager,
        provider_id: name.to_string(),
        private_addr: lo,
        ssh: SshEndpoint {
            host: lo,
            port,
            user: user.to_string(),
        },
        power: PowerState::Running,
    }
}

fn current_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An sshd that is killed by its PID when dropped.
struct Sshd {
    child: tokio::process::Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
}

async fn start_sshd(dir: &Path, port: u16, host_key: &Path, authorized_keys: &Path) -> Sshd {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = tokio::process::Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f", "/dev/null", "-p", &port.to_string(), "-h"])
        .arg(host_key)
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", authorized_keys.display()))
        .arg("-o")
        .arg(format!("PidFile={}", dir.join("sshd.pid").display()))
        .args([
            "-o",
            "ListenAddress=127.0.0.1",
            // The temporary directory sits under world-writable /tmp.
            "-o",
            "StrictModes=no",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "PermitRootLogin=prohibit-password",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("sshd.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("start sshd");
    Sshd { child }
}

#[tokio::test]
async fn ssh_shell_against_a_real_sshd() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user = current_user();

    let host_key = generate_host_key("e2e-node1").unwrap();
    let host_key_path = dir.path().join("ssh_host_ed25519_key");
    std::fs::write(&host_key_path, &host_key.private_openssh).unwrap();
    std::fs::set_permissions(&host_key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let login = ensure_login_key(&dir.path().join("id_ed25519"), "swarmup@e2e")
        .await
        .unwrap();
    let authorized = dir.path().join("authorized_keys");
    std::fs::write(&authorized, format!("{}\n", login.public_openssh)).unwrap();

    let port = free_port();
    let known_hosts = dir.path().join("known_hosts");
    write_known_hosts(
        &known_hosts,
        &[KnownHost {
            name: "e2e-node1".into(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            public_key: host_key.public_openssh.clone(),
        }],
    )
    .await
    .unwrap();

    let sshd = start_sshd(dir.path(), port, &host_key_path, &authorized).await;
    let mut options = SshOptions::new(&login.private_key_path, &known_hosts);
    options.config_file = Some("/dev/null".into());
    let connector = SshConnector::new(options.clone());

    let node = machine("e2e-node1", port, &user);
    let shell = wait_for_ssh(&connector, &node, Duration::from_secs(30), &NoProgress)
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default();
            panic!("{e}\nsshd log:\n{log}")
        });

    // A command: output, error output and exit status come back apart.
    let out = shell
        .run("echo hello; echo oops >&2; exit 3", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.stderr, "oops\n");

    // An upload: the bytes arrive intact with the mode asked for.
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let target = dir.path().join("sub dir/swarm-node");
    let target_text = target.to_str().unwrap();
    let up = shell
        .upload(target_text, &payload, 0o750, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(up.success(), "{up:?}");
    let sum = shell
        .run(
            &format!("sha256sum {}", swarmup_bootstrap::quote(target_text)),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(
        sum.stdout.split_whitespace().next().unwrap(),
        hex::encode(Sha256::digest(&payload))
    );
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);

    // Standard input reaches the command.
    let out = shell
        .run_with_stdin("wc -c", b"12345", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "5");

    // A command past its deadline.
    let err = shell
        .run("sleep 10", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ShellError::Timeout { .. }), "{err}");

    shell.close().await;
    let err = shell.run("true", Duration::from_secs(5)).await.unwrap_err();
    assert!(
        err.to_string().contains("the connection is closed"),
        "{err}"
    );

    // A host key that does not match the pinned one is refused.
    let other = generate_host_key("impostor").unwrap();
    let wrong_known_hosts = dir.path().join("known_hosts.wrong");
    write_known_hosts(
        &wrong_known_hosts,
        &[KnownHost {
            name: "e2e-node1".into(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            public_key: other.public_openssh,
        }],
    )
    .await
    .unwrap();
    let mut wrong = options.clone();
    wrong.known_hosts_file = wrong_known_hosts;
    let err = SshConnector::new(wrong)
        .connect_once(&node)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("host key verification failed"),
        "{err}"
    );

    drop(sshd);

    // Nothing listens: the deadline message says what was waited for.
    let closed_port = free_port();
    let closed = machine("e2e-closed", closed_port, &user);
    let err = wait_for_ssh(&connector, &closed, Duration::from_secs(3), &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "timed out after 3s waiting for SSH on e2e-closed (127.0.0.1:{closed_port})"
        )),
        "{err}"
    );
}

trait ConnectOnce {
    async fn connect_once(&self, machine: &Machine) -> Result<(), ShellError>;
}

impl ConnectOnce for SshConnector {
    async fn connect_once(&self, machine: &Machine) -> Result<(), ShellError> {
        use swarmup_bootstrap::Connector;
        let shell = self.connect(machine, Duration::from_secs(10)).await?;
        shell.close().await;
        Ok(())
    }
}
