/// Why the data plane could not be changed or read.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool ran and reported failure.
    #[error("{command} failed (exit {status:?}): {stderr}")]
    Command {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    /// The tool is not installed.
    #[error("{tool} is not installed (package: {package})")]
    MissingTool { tool: String, package: String },
    /// The tool could not be started for another reason.
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool's output was not what its version is documented to print.
    #[error("cannot read the output of {command}: {reason}")]
    Output { command: String, reason: String },
    #[error("cannot access sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// VIPs need bridged replies to go through conntrack (`bridge-nf-call-iptables`).
    #[error("br_netfilter is not available: /proc/sys/net/bridge/bridge-nf-call-iptables is missing even after modprobe br_netfilter")]
    BridgeNetfilterMissing,
}
