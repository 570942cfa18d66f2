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
    /// The node's WireGuard key file cannot be read or written.
    #[error("cannot use the tunnel key {path}: {source}")]
    TunnelKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The WireGuard device could not be reached.
    #[error("tunnel device swg0: {0}")]
    Tunnel(#[source] std::io::Error),
    /// The WireGuard device could not be made or refused its configuration.
    #[error("tunnel device swg0: {0}")]
    TunnelDevice(String),
    /// A peer's public key in the network map is not a WireGuard key.
    #[error("peer tunnel key {0:?} is not 32 bytes in base64")]
    TunnelPeerKey(String),
    /// An encrypted network is wanted but this node was given no tunnel key.
    #[error("this node has no tunnel key: encrypted networks cannot be set up")]
    NoTunnelKey,
}
