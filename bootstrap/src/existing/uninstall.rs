//! Removes from a machine what swarmup installed on it, and nothing else: the node leaves
//! the swarm, then its service, unit, state, binary, firewall table, the docker CLI
//! context and the cluster's login key go. Docker stays, whoever installed it.

use std::time::Duration;

use futures_util::future::join_all;
use swarmup_machine::{Machine, Progress};
use swarmup_templates::{SWARM_NODE_BINARY, SWARM_NODE_STATE_DIR};

use super::{unauthorize_script, DOCKER_MARKER};
use crate::error::{BootstrapError, Step};
use crate::shell::CommandOutput;
use crate::ssh::Connector;
use crate::steps::{
    probe_host, wait_for_ssh, DOCKER_CONTEXT, FIREWALL_PATH, LAB_FIREWALL_PATH, LAB_UNIT_PATH,
    SYSTEMD_UNIT_PATH,
};

/// How long the whole removal may take on one machine (leaving the swarm stops tasks).
const LIMIT: Duration = Duration::from_secs(180);

/// What was removed from one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uninstalled {
    pub machine: String,
    /// One entry per thing removed, e.g. `state /var/lib/swarm-node`.
    pub removed: Vec<String>,
    /// Docker was missing when swarmup first came, so the Docker that stays is the one
    /// bootstrap installed.
    pub docker_by_swarmup: bool,
}

/// The removal as one script, root's. `lab`: a lab node, whose /etc is its host's, so
/// only the node's own files are touched. `engine`: with Docker's own swarm mode, the
/// swarm swarmup made is Docker's, and the engine leaves it (swarmup made it, so it is
/// swarmup's to undo; a machine adopted from another swarm is refused at create).
/// Prints `removed=WHAT` per thing and `done`.
pub fn uninstall_script(
    lab: bool,
    engine: crate::docker_swarm::Engine,
    login_public_key: &str,
) -> Result<String, BootstrapError> {
    let docker_swarm = match engine {
        crate::docker_swarm::Engine::Docker => {
            "if docker -H unix:///var/run/docker.sock swarm leave --force >/dev/null 2>&1; then echo removed=docker-swarm; fi; "
        }
        crate::docker_swarm::Engine::SwarmNode => "",
    };
    let unit = if lab {
        format!("if [ -e {LAB_UNIT_PATH} ]; then rm -f {LAB_UNIT_PATH}; echo removed=unit; fi")
    } else {
        format!(
            "if [ -e {SYSTEMD_UNIT_PATH} ]; then systemctl disable --now swarm-node.service >/dev/null 2>&1; \
             rm -f {SYSTEMD_UNIT_PATH}; systemctl daemon-reload; systemctl reset-failed swarm-node.service >/dev/null 2>&1; \
             echo removed=unit; fi"
        )
    };
    let firewall_file = if lab {
        LAB_FIREWALL_PATH
    } else {
        FIREWALL_PATH
    };
    // A lab node's /etc is the host's: only a real machine's /etc/swarmup is its own.
    let etc = if lab {
        String::new()
    } else {
        "rmdir /etc/swarmup 2>/dev/null; ".to_string()
    };
    Ok(format!(
        "{docker_swarm}B={SWARM_NODE_BINARY}; \
         if [ -x $B ] && $B leave --force >/dev/null 2>&1; then echo removed=left; fi; \
         {unit}; \
         n=0; while pidof swarm-node >/dev/null 2>&1; do n=$((n+1)); \
         if [ $n -gt 300 ]; then echo 'swarm-node still runs 60 s after its unit was removed' >&2; exit 1; fi; \
         sleep 0.2; done; \
         if [ -e {state} ]; then rm -rf {state} && echo removed=state; fi; rm -rf /run/swarm-node; \
         if command -v nft >/dev/null 2>&1 && nft list table inet swarmup >/dev/null 2>&1; then \
         nft delete table inet swarmup && echo removed=firewall; fi; \
         rm -f {firewall_file}; {etc}\
         export DOCKER_CONFIG=~root/.docker; \
         if command -v docker >/dev/null 2>&1 && docker context inspect {ctx} >/dev/null 2>&1; then \
         docker context rm -f {ctx} >/dev/null && echo removed=context; fi; \
         if [ -e {marker} ]; then echo docker=by-swarmup; fi; \
         if [ -e $B ]; then rm -f $B && echo removed=binary; fi; \
         rm -f {marker} $B.swarmup-upload; rmdir /var/lib/swarmup 2>/dev/null; \
         {unauthorize}; echo done",
        state = SWARM_NODE_STATE_DIR,
        ctx = DOCKER_CONTEXT,
        marker = DOCKER_MARKER,
        unauthorize = unauthorize_script(login_public_key)?,
    ))
}

/// What the script's output says was removed, in words for the user.
pub fn parse_uninstall(machine: &Machine, lab: bool, out: &CommandOutput) -> Uninstalled {
    let user = &machine.ssh.user;
    let mut removed = Vec::new();
    for line in out.stdout.lines() {
        let what = match line.trim() {
            "removed=left" => "swarm-node left the swarm".to_string(),
            "removed=docker-swarm" => "Docker's engine left the swarm".to_string(),
            "removed=unit" => format!(
                "swarm-node service ({})",
                if lab {
                    LAB_UNIT_PATH
                } else {
                    SYSTEMD_UNIT_PATH
                }
            ),
            "removed=state" => format!("state {SWARM_NODE_STATE_DIR}"),
            "removed=firewall" => format!(
                "firewall table inet swarmup ({})",
                if lab {
                    LAB_FIREWALL_PATH
                } else {
                    FIREWALL_PATH
                }
            ),
            "removed=context" => format!("docker context {DOCKER_CONTEXT}"),
            "removed=binary" => format!("binary {SWARM_NODE_BINARY}"),
            "login=removed" => format!("the cluster's login key from {user}'s authorized_keys"),
            _ => continue,
        };
        removed.push(what);
    }
    Uninstalled {
        machine: machine.name.clone(),
        removed,
        docker_by_swarmup: out.stdout.lines().any(|l| l.trim() == "docker=by-swarmup"),
    }
}

/// Removes what swarmup installed from every machine, in parallel; the machines and
/// Docker stay. Fails, naming each machine, when one cannot be reached or cleaned.
pub async fn uninstall_machines(
    connector: &dyn Connector,
    machines: &[Machine],
    login_public_key: &str,
    engine: crate::docker_swarm::Engine,
    progress: &dyn Progress,
) -> Result<Vec<Uninstalled>, BootstrapError> {
    let results = join_all(machines.iter().map(|m| async move {
        let shell = wait_for_ssh(connector, m, Duration::from_secs(30), progress).await?;
        let result = async {
            let facts = probe_host(&*shell, m).await?;
            progress.machine(&m.name, "removing what swarmup installed");
            let script = uninstall_script(facts.lab, engine, login_public_key)?;
            let out = shell
                .run(&script, LIMIT)
                .await
                .map_err(|e| BootstrapError::step(&m.name, Step::Service, e.to_string()))?;
            if !out.success() || !out.stdout.lines().any(|l| l.trim() == "done") {
                return Err(BootstrapError::step(
                    &m.name,
                    Step::Service,
                    format!(
                        "removing what swarmup installed failed: {}",
                        out.failure_summary()
                    ),
                ));
            }
            Ok(parse_uninstall(m, facts.lab, &out))
        }
        .await;
        shell.close().await;
        result
    }))
    .await;
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(u) => done.push(u),
            Err(e) => errors.push(e),
        }
    }
    match BootstrapError::collect(errors) {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker_swarm::Engine;
    use crate::existing::tests::machine;
    use crate::fake::FakeConnector;
    use swarmup_machine::NoProgress;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c swarmup-c";

    #[test]
    fn a_lab_node_keeps_its_hosts_etc() {
        let real = uninstall_script(false, Engine::SwarmNode, KEY).unwrap();
        assert!(
            !real.contains("swarm leave"),
            "a Docker swarm is not swarmup's to leave"
        );
        let docker = uninstall_script(false, Engine::Docker, KEY).unwrap();
        assert!(docker.contains("swarm leave --force"), "{docker}");
        assert!(real.contains(SYSTEMD_UNIT_PATH) && real.contains(FIREWALL_PATH));
        assert!(real.contains("rmdir /etc/swarmup"));
        let lab = uninstall_script(true, Engine::SwarmNode, KEY).unwrap();
        assert!(lab.contains(LAB_UNIT_PATH) && lab.contains(LAB_FIREWALL_PATH));
        assert!(!lab.contains("/etc/"), "{lab}");
        // Leaving comes first, the login key last: the session uses it until then.
        assert!(lab.find("leave --force").unwrap() < lab.find(LAB_UNIT_PATH).unwrap());
        assert!(lab.rfind("authorized_keys").unwrap() > lab.find("context rm").unwrap());
        assert!(!lab.contains("apt-get") && !lab.contains("docker.io"));
    }

    #[tokio::test]
    async fn the_report_names_what_went_and_whose_docker_stays() {
        let connector = FakeConnector::new();
        let shell = connector.shell("c-a");
        shell.on(
            "uname -m",
            CommandOutput::ok("lab=no\nsystemd=yes\narch=x86_64\n"),
        );
        shell.on(
            "leave --force",
            CommandOutput::ok(
                "removed=left\nremoved=unit\nremoved=state\nremoved=firewall\nremoved=context\ndocker=by-swarmup\nremoved=binary\nlogin=removed\ndone\n",
            ),
        );
        let done = uninstall_machines(
            &connector,
            &[machine("c-a", "root")],
            KEY,
            Engine::SwarmNode,
            &NoProgress,
        )
        .await
        .unwrap();
        assert!(done[0].docker_by_swarmup);
        assert_eq!(
            done[0].removed,
            [
                "swarm-node left the swarm",
                "swarm-node service (/etc/systemd/system/swarm-node.service)",
                "state /var/lib/swarm-node",
                "firewall table inet swarmup (/etc/swarmup/nftables.conf)",
                "docker context swarmup",
                "binary /var/lib/swarmup/swarm-node",
                "the cluster's login key from root's authorized_keys",
            ]
        );
        assert!(shell.is_closed());
    }

    #[tokio::test]
    async fn an_unreachable_or_failing_machine_fails_the_removal() {
        let connector = FakeConnector::new();
        connector.shell("c-a").on(
            "leave --force",
            CommandOutput::failed(1, "swarm-node still runs 60 s after its unit was removed"),
        );
        let err = uninstall_machines(
            &connector,
            &[machine("c-a", "root")],
            KEY,
            Engine::SwarmNode,
            &NoProgress,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("c-a: swarm-node service: removing what swarmup installed failed: swarm-node still runs"), "{err}");
    }
}
