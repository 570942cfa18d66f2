//! The real [`RemoteShell`]: the system `ssh` binary through the `openssh` crate, with
//! the cluster's own identity and known_hosts file and strict host key checking.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use swarmup_machine::Machine;
use tokio::io::AsyncWriteExt;

use crate::shell::{quote, CommandOutput, RemoteShell, ShellError};

/// How swarmup reaches machines over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// The cluster's private login key.
    pub identity_file: PathBuf,
    /// The cluster's known_hosts file, with every machine's pinned host key.
    pub known_hosts_file: PathBuf,
    /// Where the control sockets live. Socket paths are limited to about 100 bytes, so
    /// this defaults to the system's temporary directory rather than the cluster
    /// directory.
    pub control_dir: Option<PathBuf>,
    /// An ssh_config file to use instead of the user's (`-F`); `None` keeps the user's
    /// own settings such as `ProxyJump`.
    pub config_file: Option<PathBuf>,
}

impl SshOptions {
    pub fn new(identity_file: impl Into<PathBuf>, known_hosts_file: impl Into<PathBuf>) -> Self {
        Self {
            identity_file: identity_file.into(),
            known_hosts_file: known_hosts_file.into(),
            control_dir: None,
            config_file: None,
        }
    }
}

/// Opens a [`RemoteShell`] on a machine.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// One attempt to connect, bounded by `timeout`.
    async fn connect(
        &self,
        machine: &Machine,
        timeout: Duration,
    ) -> Result<Arc<dyn RemoteShell>, ShellError>;
}

/// Connects with [`SshShell`].
#[derive(Debug, Clone)]
pub struct SshConnector {
    pub options: SshOptions,
}

impl SshConnector {
    pub fn new(options: SshOptions) -> Self {
        Self { options }
    }
}

#[async_trait::async_trait]
impl Connector for SshConnector {
    async fn connect(
        &self,
        machine: &Machine,
        timeout: Duration,
    ) -> Result<Arc<dyn RemoteShell>, ShellError> {
        Ok(Arc::new(
            SshShell::connect(machine, &self.options, timeout).await?,
        ))
    }
}

/// `NAME (IP:PORT)`, the way messages name a machine's SSH endpoint.
pub fn ssh_target(machine: &Machine) -> String {
    format!(
        "{} ({})",
        machine.name,
        SocketAddr::new(machine.ssh.host, machine.ssh.port)
    )
}

/// An SSH connection to one machine, multiplexed over one master connection.
pub struct SshShell {
    target: String,
    sudo: bool,
    session: Mutex<Option<Arc<Session>>>,
}

impl fmt::Debug for SshShell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshShell")
            .field("target", &self.target)
            .field("sudo", &self.sudo)
            .finish_non_exhaustive()
    }
}

impl SshShell {
    /// Connects to `machine` as its SSH user. Fails at once on a refused connection, a
    /// wrong host key or a rejected login key; [`crate::wait_for_ssh`] retries.
    pub async fn connect(
        machine: &Machine,
        options: &SshOptions,
        timeout: Duration,
    ) -> Result<Self, ShellError> {
        let target = ssh_target(machine);
        let control_dir = options
            .control_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let mut builder = SessionBuilder::default();
        builder
            .user(machine.ssh.user.clone())
            .port(machine.ssh.port)
            .user_known_hosts_file(&options.known_hosts_file)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(timeout.max(Duration::from_secs(1)))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(&control_dir)
            // A master that outlives swarmup (a crash, Ctrl-C) goes away on its own.
            .control_persist(ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(600).expect("600 is not zero"),
            ));
        if let Some(config) = &options.config_file {
            builder.config_file(config);
        }
        // No identity file: ssh's own keys and agent, as the user's first login to a
        // machine swarmup did not make (`--provider ssh`).
        if !options.identity_file.as_os_str().is_empty() {
            builder.keyfile(&options.identity_file);
        }
        let host = machine.ssh.host.to_string();
        let session = tokio::time::timeout(timeout + Duration::from_secs(5), builder.connect(host))
            .await
            .map_err(|_| ShellError::Connect {
                target: target.clone(),
                message: format!("no answer within {}s", timeout.as_secs()),
            })?
            .map_err(|e| ShellError::Connect {
                target: target.clone(),
                message: error_chain(&e),
            })?;
        Ok(Self {
            target,
            sudo: machine.ssh.user != "root",
            session: Mutex::new(Some(Arc::new(session))),
        })
    }

    fn session(&self) -> Result<Arc<Session>, ShellError> {
        self.session
            .lock()
            .expect("session lock poisoned")
            .clone()
            .ok_or_else(|| ShellError::Transport {
                target: self.target.clone(),
                message: "the connection is closed".to_string(),
            })
    }

    async fn exec(
        &self,
        script: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        let session = self.session()?;
        let line = remote_command_line(self.sudo, script);
        let transport = |e: openssh::Error| ShellError::Transport {
            target: self.target.clone(),
            message: error_chain(&e),
        };
        let work = async {
            let mut command = session.raw_command(&line);
            command
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = command.spawn().await.map_err(transport)?;
            let writer = child.stdin().take();
            let feed = async move {
                if let (Some(mut writer), Some(bytes)) = (writer, stdin) {
                    // A remote command that exits early closes the pipe; its exit status
                    // says more than the broken pipe does.
                    let _ = writer.write_all(bytes).await;
                    let _ = writer.shutdown().await;
                }
            };
            let (_, output) = tokio::join!(feed, child.wait_with_output());
            output.map_err(transport)
        };
        let output =
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| ShellError::Timeout {
                    target: self.target.clone(),
                    after: timeout,
                })??;
        Ok(CommandOutput {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

#[async_trait::async_trait]
impl RemoteShell for SshShell {
    fn target(&self) -> &str {
        &self.target
    }

    async fn run(&self, script: &str, timeout: Duration) -> Result<CommandOutput, ShellError> {
        self.exec(script, None, timeout).await
    }

    async fn run_with_stdin(
        &self,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.exec(script, Some(stdin), timeout).await
    }

    async fn close(&self) {
        let session = self.session.lock().expect("session lock poisoned").take();
        if let Some(session) = session.and_then(|s| Arc::try_unwrap(s).ok()) {
            if let Err(e) = session.close().await {
                tracing::debug!(target = %self.target, "closing ssh session: {}", error_chain(&e));
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(more.trim());
        }
        source = s.source();
    }
    text.replace('\n', " ").trim().to_string()
}

/// The `ssh` command line that opens a shell on `machine`, or runs `command` there,
/// with the cluster's key and pinned host keys. It does not rely on the managed block
/// in `~/.ssh/config`, so it works whether or not that block was written. The words of
/// `command` are joined by ssh and run by the remote login shell, as with plain `ssh`.
pub fn ssh_argv(
    machine: &Machine,
    options: &SshOptions,
    tty: bool,
    command: &[String],
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["ssh".into()];
    if let Some(config) = &options.config_file {
        argv.push("-F".into());
        argv.push(config.into());
    }
    argv.push("-i".into());
    argv.push(options.identity_file.clone().into());
    let mut known_hosts = OsString::from("UserKnownHostsFile=");
    known_hosts.push(&options.known_hosts_file);
    for option in [
        known_hosts,
        "StrictHostKeyChecking=yes".into(),
        "IdentitiesOnly=yes".into(),
    ] {
        argv.push("-o".into());
        argv.push(option);
    }
    argv.push("-p".into());
    argv.push(machine.ssh.port.to_string().into());
    argv.push("-l".into());
    argv.push(machine.ssh.user.clone().into());
    if tty {
        argv.push("-t".into());
    }
    argv.push(machine.ssh.host.to_string().into());
    if !command.is_empty() {
        argv.push("--".into());
        argv.extend(command.iter().map(OsString::from));
    }
    argv
}

/// The command line handed to the remote login shell. `sh -c` makes scripts POSIX
/// whatever the login shell is; `sudo` keeps the SSH variable that tells swarmup which
/// address and port it came in on.
fn remote_command_line(sudo: bool, script: &str) -> String {
    if sudo {
        format!(
            "sudo -n env SSH_CONNECTION=\"$SSH_CONNECTION\" sh -c {}",
            quote(script)
        )
    } else {
        format!("sh -c {}", quote(script))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_under_sh_and_sudo_for_other_users() {
        assert_eq!(
            remote_command_line(false, "echo \"$HOME\" 'x'"),
            r#"sh -c 'echo "$HOME" '\''x'\'''"#
        );
        assert_eq!(
            remote_command_line(true, "id -u"),
            r#"sudo -n env SSH_CONNECTION="$SSH_CONNECTION" sh -c 'id -u'"#
        );
    }
}
