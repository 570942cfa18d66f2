use std::fmt;
use std::time::Duration;

use swarmup_templates::TemplateError;

/// The stage of bootstrapping that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Ssh,
    HostCheck,
    Docker,
    Binary,
    Firewall,
    Service,
    DockerCli,
    Status,
    Init,
    Join,
    Ready,
    ClientCert,
    ImageLoad,
    Student,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Ssh => "ssh",
            Step::HostCheck => "host check",
            Step::Docker => "docker",
            Step::Binary => "swarm-node binary",
            Step::Firewall => "firewall",
            Step::Service => "swarm-node service",
            Step::DockerCli => "docker CLI context",
            Step::Status => "swarm-node status",
            Step::Init => "swarm init",
            Step::Join => "swarm join",
            Step::Ready => "readiness",
            Step::ClientCert => "client certificate",
            Step::ImageLoad => "image load",
            Step::Student => "student access",
        })
    }
}

/// Errors from bootstrapping. Messages are one line and name the machine and the step.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{machine}: {step}: {message}")]
    Step {
        machine: String,
        step: Step,
        message: String,
    },
    /// `waiting_for` names the machine, e.g. "waiting for SSH on c1-node1 (10.0.0.2:22)".
    #[error("timed out after {}s {waiting_for}{}", after.as_secs(), last_error(last))]
    Timeout {
        machine: String,
        step: Step,
        waiting_for: String,
        after: Duration,
        last: Option<String>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{}", several(.0))]
    Several(Vec<BootstrapError>),
}

impl BootstrapError {
    pub(crate) fn step(machine: &str, step: Step, message: impl Into<String>) -> Self {
        BootstrapError::Step {
            machine: machine.to_string(),
            step,
            message: message.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BootstrapError::Io {
            what: what.into(),
            source,
        }
    }

    /// One error stays itself; several become [`BootstrapError::Several`].
    pub(crate) fn collect(mut errors: Vec<BootstrapError>) -> Option<BootstrapError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(BootstrapError::Several(errors)),
        }
    }
}

fn last_error(last: &Option<String>) -> String {
    match last {
        Some(l) => format!("; last error: {l}"),
        None => String::new(),
    }
}

fn several(errors: &[BootstrapError]) -> String {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("{} machines failed: {}", errors.len(), list.join("; "))
}
