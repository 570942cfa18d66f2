//! swarm-dns: the service DNS server every swarm node runs in its host network namespace.
//!
//! **Who asks.** Containers on overlay networks use Docker's embedded resolver
//! (127.0.0.11). It forwards the names it does not know, from inside the container's network
//! namespace, to the network's gateway on port 53, and the node's nftables redirect that to
//! this server. So a query's source address is the asking task's overlay address, and that
//! address identifies the task and every network it is on (subnets of different networks
//! never overlap). A query from any other address is REFUSED: the port may be reachable
//! from elsewhere.
//!
//! **What it answers**, only about services sharing a network with the asker (that is the
//! isolation between networks; the first of the asker's networks wins when a name is on
//! several):
//! - `NAME` (a service name or a network alias, any case, with or without the final dot):
//!   the service's VIP on the shared network (TTL 30 s), or for `--endpoint-mode dnsrr` the
//!   addresses of its running tasks (TTL 5 s, shuffled).
//! - `tasks.NAME`: the addresses of the running tasks on the shared network (TTL 5 s).
//! - Other types for those names (AAAA above all): NOERROR with no record, so clients do
//!   not wait for an upstream that cannot know better. A dnsrr service or `tasks.NAME` with
//!   no running task is answered the same way: the name exists, it has no address now.
//! - PTR of a VIP or of a task address on a shared network: the service name.
//!
//! Our answers carry the AA flag. Every other name (including services on networks the
//! asker does not share) is forwarded to the host's name servers ([`Upstreams`]) over the
//! transport it came on; an upstream that does not answer in time gives SERVFAIL, and with
//! no upstream at all the answer is REFUSED at once.
//!
//! **Where the data comes from.** A `watch` of the node's [`NetMap`], which the network agent
//! receives from the managers' netmap long poll: it lists the node's tasks with their
//! addresses and, per network, every service with its aliases, mode, VIP and running
//! backends. Each new map is indexed once ([`Zone::from_netmap`]); answering is a pure
//! function of that index, the source address and the question ([`Zone::answer`]).
//!
//! **Bounds.** At most [`MAX_FORWARDS_IN_FLIGHT`] forwarded queries wait on upstreams at a
//! time; queries beyond that are dropped (the client retries), so a flood of unknown names
//! cannot grow memory without bound. Local answers need no I/O beyond the reply.
//!
//! [`NetMap`]: swarm_state::netmap::NetMap

mod server;
mod upstream;
mod zone;

use std::net::SocketAddr;
use std::time::Duration;

pub use server::{DnsServer, MAX_FORWARDS_IN_FLIGHT};
pub use upstream::{Forward, Transport, Upstreams};
pub use zone::{Answer, Zone, TASK_TTL, VIP_TTL};

/// Errors of the DNS server and of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listener ended on its own (its socket failed), not because of the shutdown signal.
    #[error("dns server stopped unexpectedly")]
    Server(#[source] hickory_server::net::NetError),
    /// No upstream is configured; unknown names are refused.
    #[error("no upstream name server")]
    NoUpstream,
    /// The query to forward has no readable header.
    #[error("unreadable query: {0}")]
    BadQuery(String),
    #[error("upstream {server} did not answer within {timeout:?}")]
    UpstreamTimeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {server}")]
    UpstreamIo {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {server} sent an unusable reply: {reason}")]
    UpstreamReply { server: SocketAddr, reason: String },
}
