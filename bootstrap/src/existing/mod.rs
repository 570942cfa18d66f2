//! Machines swarmup did not make (`--provider ssh`): pinning their host keys ([`pin`]),
//! adopting them (reachable with the user's own login, systemd or a lab node, sudo
//! without a password; then the cluster's login key is authorized, so that every later
//! command logs in as on any other cluster), and removing again what swarmup installed
//! ([`uninstall`]), leaving the machines and Docker in place.

pub mod pin;
pub mod uninstall;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use swarmup_machine::{Machine, Progress};

use crate::error::{BootstrapError, Step};
use crate::shell::{quote, RemoteShell};
use crate::ssh::{ssh_target, Connector};
use crate::steps::{probe_host, HostFacts};

/// Left on a machine where Docker was missing when swarmup first came, so that destroy
/// can say that the Docker it leaves was swarmup's doing.
pub const DOCKER_MARKER: &str = "/var/lib/swarmup/docker-installed-by-swarmup";

/// How long one attempt to reach a machine may take: it exists already, so there is
/// nothing to wait for.
const REACH: Duration = Duration::from_secs(20);
const QUICK: Duration = Duration::from_secs(30);

/// The shell snippet that sets `h` to the login user's home, also under sudo.
const LOGIN_HOME: &str =
    "h=$HOME; if [ -n \"${SUDO_USER:-}\" ]; then h=$(getent passwd \"$SUDO_USER\" | cut -d: -f6); fi; \
     f=\"$h/.ssh/authorized_keys\"";

/// The `TYPE BASE64` part of a public key line.
pub fn key_blob(public_key: &str) -> Result<String, BootstrapError> {
    let mut words = public_key.split_whitespace();
    match (words.next(), words.next()) {
        (Some(kind), Some(blob)) => Ok(format!("{kind} {blob}")),
        _ => Err(BootstrapError::Invalid(format!(
            "{public_key:?} is not an OpenSSH public key line"
        ))),
    }
}

/// Adds the cluster's login key to the login user's authorized_keys (once), and leaves
/// [`DOCKER_MARKER`] when Docker is missing. Prints `login=added|kept` and
/// `docker=present|by-swarmup`.
pub fn adopt_script(login_public_key: &str) -> Result<String, BootstrapError> {
    let blob = key_blob(login_public_key)?;
    let line = login_public_key.trim();
    Ok(format!(
        "{LOGIN_HOME}; \
         if [ -f \"$f\" ] && grep -qF {blob} \"$f\"; then echo login=kept; else \
         umask 077; mkdir -p \"$h/.ssh\" || exit 1; \
         if [ -s \"$f\" ] && [ -n \"$(tail -c1 \"$f\")\" ]; then echo >> \"$f\"; fi; \
         printf '%s\\n' {line} >> \"$f\" || exit 1; \
         if [ -n \"${{SUDO_USER:-}}\" ]; then chown \"$SUDO_USER\" \"$h/.ssh\" \"$f\"; fi; \
         echo login=added; fi; \
         if [ ! -e {marker} ] && ! command -v dockerd >/dev/null 2>&1 && [ ! -S /var/run/docker.sock ]; then \
         mkdir -p /var/lib/swarmup && : > {marker}; fi; \
         if [ -e {marker} ]; then echo docker=by-swarmup; else echo docker=present; fi",
        blob = quote(&blob),
        line = quote(line),
        marker = DOCKER_MARKER,
    ))
}

/// Takes the cluster's login key out of the login user's authorized_keys again.
/// Prints `login=removed` when it was there.
pub fn unauthorize_script(login_public_key: &str) -> Result<String, BootstrapError> {
    let blob = quote(&key_blob(login_public_key)?);
    // `cat >` keeps the file's owner and mode.
    Ok(format!(
        "{LOGIN_HOME}; \
         if [ -f \"$f\" ] && grep -qF {blob} \"$f\"; then \
         grep -vF {blob} \"$f\" > \"$f.swarmup-tmp\"; cat \"$f.swarmup-tmp\" > \"$f\" && rm -f \"$f.swarmup-tmp\" && echo login=removed; fi"
    ))
}

/// One machine after [`adopt_machines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub machine: String,
    pub facts: HostFacts,
    /// Docker was not there when swarmup first came: bootstrap installs it.
    pub docker_by_swarmup: bool,
    /// This run added the cluster's login key.
    pub login_added: bool,
}

/// Checks that `shell` runs commands as root (directly, or with sudo without a
/// password) on a host bootstrap can serve (systemd or a lab node).
async fn check(shell: &dyn RemoteShell, machine: &Machine) -> Result<HostFacts, BootstrapError> {
    let out = shell
        .run("id -u", QUICK)
        .await
        .map_err(|e| BootstrapError::step(&machine.name, Step::Ssh, e.to_string()))?;
    if !out.success() || out.stdout.trim() != "0" {
        let why = if out.mentions("password") || out.mentions("sudo") {
            format!(
                "{} cannot become root without a password: allow it passwordless sudo, or use --host root@{}",
                machine.ssh.user, machine.ssh.host
            )
        } else {
            format!("cannot run commands as root: {}", out.failure_summary())
        };
        return Err(BootstrapError::step(&machine.name, Step::Ssh, why));
    }
    let facts = probe_host(shell, machine).await?;
    if !facts.lab && !facts.systemd {
        return Err(BootstrapError::step(
            &machine.name,
            Step::HostCheck,
            "the host runs no systemd: swarm-node needs systemd to keep it running",
        ));
    }
    Ok(facts)
}

/// Adopts machines that exist already, logging in as the user does (`connector`): every
/// machine is reached and checked first, and only when all are fine is the cluster's
/// login key authorized on each. A machine that fails then gets the key taken back
/// from the others, so a refused create leaves nothing on any of them.
pub async fn adopt_machines(
    connector: &dyn Connector,
    machines: &[Machine],
    login_public_key: &str,
    progress: &dyn Progress,
) -> Result<Vec<Adopted>, BootstrapError> {
    let script = adopt_script(login_public_key)?;
    let undo = unauthorize_script(login_public_key)?;
    let reached = join_all(machines.iter().map(|m| async move {
        progress.machine(&m.name, &format!("reaching {}", ssh_target(m)));
        let shell = connector
            .connect(m, REACH)
            .await
            .map_err(|e| BootstrapError::step(&m.name, Step::Ssh, e.to_string()))?;
        match check(&*shell, m).await {
            Ok(facts) => Ok((shell, facts)),
            Err(e) => {
                shell.close().await;
                Err(e)
            }
        }
    }))
    .await;
    let mut shells: Vec<(Arc<dyn RemoteShell>, HostFacts)> = Vec::new();
    let mut errors = Vec::new();
    for r in reached {
        match r {
            Ok(s) => shells.push(s),
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = BootstrapError::collect(errors) {
        join_all(shells.iter().map(|(s, _)| s.close())).await;
        return Err(e);
    }

    let results = join_all(machines.iter().zip(&shells).map(|(m, (shell, facts))| {
        let script = &script;
        async move {
            let out = shell
                .run(script, QUICK)
                .await
                .map_err(|e| BootstrapError::step(&m.name, Step::Ssh, e.to_string()))?;
            if !out.success() {
                return Err(BootstrapError::step(
                    &m.name,
                    Step::Ssh,
                    format!(
                        "authorizing the cluster's login key failed: {}",
                        out.failure_summary()
                    ),
                ));
            }
            let adopted = Adopted {
                machine: m.name.clone(),
                facts: facts.clone(),
                docker_by_swarmup: out.stdout.contains("docker=by-swarmup"),
                login_added: out.stdout.contains("login=added"),
            };
            if adopted.docker_by_swarmup {
                progress.machine(&m.name, "Docker is missing: bootstrap installs it");
            }
            Ok(adopted)
        }
    }))
    .await;
    let mut adopted = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(a) => adopted.push(a),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        for ((_, (shell, _)), a) in machines.iter().zip(&shells).zip(&adopted) {
            if a.login_added {
                let _ = shell.run(&undo, QUICK).await;
            }
        }
    }
    join_all(shells.iter().map(|(s, _)| s.close())).await;
    match BootstrapError::collect(errors) {
        Some(e) => Err(e),
        None => Ok(adopted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeConnector;
    use crate::shell::CommandOutput;
    use swarmup_machine::{NoProgress, PowerState, Role, SshEndpoint};

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c swarmup-c";

    pub(crate) fn machine(name: &str, user: &str) -> Machine {
        Machine {
            name: name.into(),
            role: Role::Manager,
            provider_id: name.into(),
            private_addr: "10.0.0.5".parse().unwrap(),
            ssh: SshEndpoint {
                host: "10.0.0.5".parse().unwrap(),
                port: 22,
                user: user.into(),
            },
            power: PowerState::Running,
        }
    }

    fn ready(connector: &FakeConnector, name: &str) {
        let shell = connector.shell(name);
        shell.on("id -u", CommandOutput::ok("0\n"));
        shell.on(
            "uname -m",
            CommandOutput::ok("lab=no\nsystemd=yes\narch=x86_64\nssh=10.0.0.1 5000 10.0.0.5 22\n"),
        );
    }

    #[tokio::test]
    async fn every_machine_is_checked_before_any_is_touched() {
        let connector = FakeConnector::new();
        ready(&connector, "c-a");
        ready(&connector, "c-b");
        connector.shell("c-b").on(
            "id -u",
            CommandOutput::failed(1, "sudo: a password is required"),
        );
        let machines = [machine("c-a", "root"), machine("c-b", "deploy")];
        let err = adopt_machines(&connector, &machines, KEY, &NoProgress)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c-b: ssh: deploy cannot become root without a password"),
            "{err}"
        );
        assert_eq!(connector.shell("c-a").count("authorized_keys"), 0);
        assert!(connector.shell("c-a").is_closed());
    }

    #[tokio::test]
    async fn the_login_key_is_authorized_and_docker_noted() {
        let connector = FakeConnector::new();
        ready(&connector, "c-a");
        connector.shell("c-a").on(
            "authorized_keys",
            CommandOutput::ok("login=added\ndocker=by-swarmup\n"),
        );
        let adopted = adopt_machines(&connector, &[machine("c-a", "root")], KEY, &NoProgress)
            .await
            .unwrap();
        assert!(adopted[0].docker_by_swarmup && adopted[0].login_added);
        assert!(adopted[0].facts.systemd);
        let script = adopt_script(KEY).unwrap();
        assert!(script.contains("grep -qF 'ssh-ed25519 AAAAC3"), "{script}");
        assert!(script.contains(DOCKER_MARKER), "{script}");
    }

    #[tokio::test]
    async fn hosts_without_systemd_are_refused_up_front() {
        let connector = FakeConnector::new();
        ready(&connector, "c-a");
        connector.shell("c-a").on(
            "uname -m",
            CommandOutput::ok("lab=no\nsystemd=no\narch=x86_64\n"),
        );
        let err = adopt_machines(&connector, &[machine("c-a", "root")], KEY, &NoProgress)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs no systemd"), "{err}");
    }

    #[test]
    fn adopting_and_unauthorizing_round_trip_in_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let keys = home.join(".ssh/authorized_keys");
        // A last line without its newline must not be glued to the new key.
        std::fs::write(&keys, "ssh-ed25519 AAAAmine me@laptop").unwrap();
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .env("HOME", home)
                .env_remove("SUDO_USER")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        // The marker part needs root; only the authorized_keys part is checked here.
        let adopt = adopt_script(KEY).unwrap();
        let adopt = adopt.split("; if [ ! -e").next().unwrap();
        assert!(sh(adopt).contains("login=added"));
        assert!(sh(adopt).contains("login=kept"));
        assert_eq!(
            std::fs::read_to_string(&keys).unwrap(),
            format!("ssh-ed25519 AAAAmine me@laptop\n{KEY}\n")
        );
        assert!(sh(&unauthorize_script(KEY).unwrap()).contains("login=removed"));
        assert_eq!(
            std::fs::read_to_string(&keys).unwrap(),
            "ssh-ed25519 AAAAmine me@laptop\n"
        );
        assert_eq!(sh(&unauthorize_script(KEY).unwrap()), "");
    }
}
