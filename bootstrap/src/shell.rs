//! Commands on a machine: the [`RemoteShell`] trait and what it returns.

use std::fmt;
use std::time::Duration;

/// What a remote command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// The exit code; `None` when the command was killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Exit 0 with `stdout`.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Self {
            status: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// Exit `code` with `stderr`.
    pub fn failed(code: i32, stderr: impl Into<String>) -> Self {
        Self {
            status: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// One line that says why the command failed: its last line of stderr (or stdout)
    /// and the exit status.
    pub fn failure_summary(&self) -> String {
        let text = last_line(&self.stderr).or_else(|| last_line(&self.stdout));
        let status = match self.status {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        match text {
            Some(text) => format!("{text} ({status})"),
            None => status,
        }
    }

    /// Whether stdout or stderr contains `needle`, ignoring ASCII case.
    pub fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        self.stdout.to_ascii_lowercase().contains(&needle)
            || self.stderr.to_ascii_lowercase().contains(&needle)
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rev().find(|l| !l.is_empty())
}

/// Why a remote command could not run at all. A command that ran and failed is a
/// [`CommandOutput`] with a non-zero status, not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("command on {target} did not finish within {}s", after.as_secs())]
    Timeout { target: String, after: Duration },
    #[error("lost the connection to {target}: {message}")]
    Transport { target: String, message: String },
}

/// A shell on one machine. Scripts are POSIX `sh`, run as root (implementations add
/// `sudo` when they log in as someone else).
#[async_trait::async_trait]
pub trait RemoteShell: Send + Sync + fmt::Debug {
    /// What the shell is connected to, for messages: `NAME (IP:PORT)`.
    fn target(&self) -> &str;

    /// Runs `script` and waits at most `timeout` for it to finish.
    async fn run(&self, script: &str, timeout: Duration) -> Result<CommandOutput, ShellError>;

    /// Runs `script` with `stdin` as its standard input.
    async fn run_with_stdin(
        &self,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError>;

    /// Writes `bytes` to `path` with permission bits `mode`, creating the directory.
    /// The file is replaced in one rename, so a running binary or a reader never sees
    /// half a file.
    async fn upload(
        &self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.run_with_stdin(&upload_script(path, mode), bytes, timeout)
            .await
    }

    /// Ends the connection. Commands after this fail.
    async fn close(&self) {}
}

/// The script [`RemoteShell::upload`] runs by default.
pub fn upload_script(path: &str, mode: u32) -> String {
    let dir = match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    };
    let tmp = format!("{path}.swarmup-upload");
    format!(
        "set -e; umask 077; mkdir -p {dir}; cat > {tmp}; chmod {mode:o} {tmp}; mv -f {tmp} {path}",
        dir = quote(dir),
        tmp = quote(&tmp),
        path = quote(path),
    )
}

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '/' | '.' | '-' | '_' | ':' | '=' | ',' | '@' | '+')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("/var/lib/swarmup"), "/var/lib/swarmup");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
    }

    #[test]
    fn upload_script_replaces_in_one_rename() {
        assert_eq!(
            upload_script("/var/lib/swarmup/swarm-node", 0o755),
            "set -e; umask 077; mkdir -p /var/lib/swarmup; cat > /var/lib/swarmup/swarm-node.swarmup-upload; \
             chmod 755 /var/lib/swarmup/swarm-node.swarmup-upload; \
             mv -f /var/lib/swarmup/swarm-node.swarmup-upload /var/lib/swarmup/swarm-node"
        );
    }

    #[test]
    fn failure_summary_uses_last_line() {
        let out = CommandOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: "warning: x\nError: this node is already part of a swarm\n\n".into(),
        };
        assert_eq!(
            out.failure_summary(),
            "Error: this node is already part of a swarm (exit status 1)"
        );
        assert!(out.mentions("Already part of a swarm"));
        assert_eq!(
            CommandOutput::failed(2, "").failure_summary(),
            "exit status 2"
        );
    }
}
