//! Forwarding of the names no shared network knows to the host's name servers.
//!
//! Queries go out from the host's network namespace, so a resolver only the host can reach
//! (systemd-resolved on 127.0.0.53, a VPC resolver) works for containers too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::tcp::TcpStream as DnsTcpStream;
use hickory_server::net::DnsStreamHandle;
use hickory_server::proto::op::{Header, Message, MessageType, SerialMessage};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::net::{TcpStream, UdpSocket};

use crate::DnsError;

/// glibc reads at most this many `nameserver` lines (MAXNS); so do we.
const MAX_NAMESERVERS: usize = 3;
/// How long one upstream gets to answer one query.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message; a UDP reply cannot be bigger.
const MAX_MESSAGE: usize = 65_535;

/// The transport a query arrived on, which is also the one it is forwarded on: a client
/// that got a truncated UDP reply retries over TCP, and so do we.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Sends a query somewhere that can answer names we do not own.
#[async_trait]
pub trait Forward: Send + Sync + 'static {
    /// False when there is nowhere to forward to: unknown names are then refused at once
    /// rather than left to time out.
    fn enabled(&self) -> bool;

    /// Forwards the raw query (as the client sent it, same id) and returns the reply.
    async fn forward(&self, query: &[u8], transport: Transport) -> Result<Message, DnsError>;
}

/// The host's name servers.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    /// How long each server gets before the next one is tried.
    pub timeout: Duration,
}

impl Upstreams {
    /// No upstream: names outside the shared networks get REFUSED immediately.
    pub fn none() -> Self {
        Upstreams {
            servers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `nameserver` lines of a resolv.conf text, port 53; timeout 2 s.
    ///
    /// Reads at most three servers like glibc; skips comments, other keywords and
    /// addresses that do not parse (such as IPv6 with a zone index).
    pub fn from_resolv_conf(text: &str) -> Self {
        let servers = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                if words.next()? != "nameserver" {
                    return None;
                }
                let ip: IpAddr = words.next()?.parse().ok()?;
                Some(SocketAddr::new(ip, 53))
            })
            .take(MAX_NAMESERVERS)
            .collect();
        Upstreams {
            servers,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[async_trait]
impl Forward for Upstreams {
    fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// Tries each server in order until one answers; the last error otherwise.
    async fn forward(&self, query: &[u8], transport: Transport) -> Result<Message, DnsError> {
        let id = Header::read(&mut BinDecoder::new(query))
            .map_err(|e| DnsError::BadQuery(e.to_string()))?
            .metadata
            .id;
        let mut last = DnsError::NoUpstream;
        for &server in &self.servers {
            let attempt: Attempt<'_> = match transport {
                Transport::Udp => Box::pin(ask_udp(server, query, id)),
                Transport::Tcp => Box::pin(ask_tcp(server, query, id)),
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = DnsError::UpstreamTimeout {
                        server,
                        timeout: self.timeout,
                    }
                }
            }
        }
        Err(last)
    }
}

type Attempt<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Message, DnsError>> + Send + 'a>>;

async fn ask_udp(server: SocketAddr, query: &[u8], id: u16) -> Result<Message, DnsError> {
    let io = |source| DnsError::UpstreamIo { server, source };
    // A fresh socket per query gets a random source port from the kernel, which is
    // what protects the forwarded query against spoofed replies.
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        // Stray datagrams (a late reply to an earlier query) are skipped, not errors.
        if let Ok(reply) = Message::from_vec(&buf[..n]) {
            if is_reply_to(&reply, id) {
                return Ok(reply);
            }
        }
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<Message, DnsError> {
    let io = |source| DnsError::UpstreamIo { server, source };
    let tcp = TcpStream::connect(server).await.map_err(io)?;
    let (mut stream, mut handle) = DnsTcpStream::from_stream(AsyncIoTokioAsStd(tcp), server);
    handle
        .send(SerialMessage::new(query.to_vec(), server))
        .map_err(|e| DnsError::UpstreamReply {
            server,
            reason: e.to_string(),
        })?;
    // Polling the stream also writes the queued query.
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|e| DnsError::UpstreamReply {
            server,
            reason: e.to_string(),
        })?;
        let reply = Message::from_vec(msg.bytes()).map_err(|e| DnsError::UpstreamReply {
            server,
            reason: e.to_string(),
        })?;
        if is_reply_to(&reply, id) {
            return Ok(reply);
        }
    }
    Err(DnsError::UpstreamReply {
        server,
        reason: "connection closed before the reply".to_string(),
    })
}

fn is_reply_to(reply: &Message, id: u16) -> bool {
    reply.metadata.id == id && reply.metadata.message_type == MessageType::Response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_nameservers_on_port_53() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\n\
                    nameserver  ::1 \n;nameserver 10.9.9.9\nnameserver fe80::1%eth0\n\
                    options ndots:2\nnameserver 127.0.0.53\nnameserver 10.0.0.9\n";
        let up = Upstreams::from_resolv_conf(text);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.2:53".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "127.0.0.53:53".parse().unwrap(),
        ];
        assert_eq!(up.servers, want);
        assert_eq!(up.timeout, Duration::from_secs(2));
    }

    #[test]
    fn no_upstream_is_disabled() {
        assert!(!Upstreams::none().enabled());
        assert!(!Upstreams::from_resolv_conf("").enabled());
        assert!(Upstreams::from_resolv_conf("nameserver 1.1.1.1").enabled());
    }
}
