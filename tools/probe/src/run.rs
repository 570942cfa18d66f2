//! The socket work of each command. Servers take a socket already bound, so tests can bind
//! port 0 on loopback; clients return what they measured and leave printing to `main`.

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::args::WatchArgs;
use crate::dns::{self, DnsError};
use crate::report::{self, DnsStats};
use crate::watch::{self, Watch};

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: no answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {detail}")]
    BadAnswer { what: String, detail: String },
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("udp-watch: no clean streak within {max:?}: {line}")]
    NotClean { max: Duration, line: String },
}

impl ProbeError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProbeError {
        let what = what.into();
        move |source| {
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                ProbeError::Timeout {
                    what,
                    timeout: Duration::ZERO,
                }
            } else {
                ProbeError::Io { what, source }
            }
        }
    }
}

/// This container's hostname, as `who=` reports it.
pub fn hostname() -> String {
    let proc_text = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let env = std::env::var("HOSTNAME").ok();
    report::hostname(proc_text.as_deref(), env.as_deref())
}

/// Milliseconds since the Unix epoch: `udp-watch` reports times the caller can compare
/// with its own clock (containers share the host's).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where servers listen: every IPv4 address (overlays are IPv4).
pub fn any_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

fn unspecified_like(target: &SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Accepts connections forever and reads each to its end, one thread per connection.
pub fn tcp_sink(listener: TcpListener) -> Result<(), ProbeError> {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
    Ok(())
}

/// Sends to a sink for `duration`, then waits until the sink has read everything (it
/// closes on end of stream), so the figure is what arrived, not what was buffered.
pub fn tcp_blast(target: SocketAddr, duration: Duration) -> Result<(u64, Duration), ProbeError> {
    let what = format!("tcp-blast {target}");
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .map_err(ProbeError::io(what.clone()))?;
    let buf = vec![0x5au8; 128 * 1024];
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < duration {
        conn.write_all(&buf).map_err(ProbeError::io(what.clone()))?;
        bytes += buf.len() as u64;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(ProbeError::io(what.clone()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(ProbeError::io(what.clone()))?;
    let mut rest = [0u8; 64];
    while conn.read(&mut rest).map_err(ProbeError::io(what.clone()))? > 0 {}
    Ok((bytes, started.elapsed()))
}

/// Answers every datagram with `who=HOST from=PEER`, forever.
pub fn udp_echo(socket: UdpSocket, host: &str) -> Result<(), ProbeError> {
    let mut buf = [0u8; 2048];
    loop {
        let (_, peer) = socket
            .recv_from(&mut buf)
            .map_err(ProbeError::io("udp-echo receive"))?;
        let answer = report::who_line(host, peer.ip());
        // A peer that went away must not stop the server.
        let _ = socket.send_to(answer.as_bytes(), peer);
    }
}

/// Sends one datagram from a fresh port (so a VIP sees a new flow) and returns the answer.
pub fn udp_ask(target: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    let what = format!("udp-ask {target}");
    let socket =
        UdpSocket::bind(unspecified_like(&target)).map_err(ProbeError::io(what.clone()))?;
    socket
        .connect(target)
        .map_err(ProbeError::io(what.clone()))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(ProbeError::io(what.clone()))?;
    socket.send(b"ask").map_err(ProbeError::io(what.clone()))?;
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ProbeError::Timeout { what, timeout })
        }
        Err(source) => Err(ProbeError::Io { what, source }),
    }
}

/// Asks `target` every `interval` until the watch is over or `max` has passed.
pub fn udp_watch(target: SocketAddr, args: &WatchArgs) -> Result<Watch, ProbeError> {
    let mut watch = Watch::new(args.streak);
    let started = Instant::now();
    while started.elapsed() < args.max {
        let tick = Instant::now();
        let at = epoch_ms();
        let answer = udp_ask(target, args.timeout).ok();
        if watch.observe(at, watch::classify(answer.as_deref(), &args.avoid)) {
            return Ok(watch);
        }
        if let Some(rest) = args.interval.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    Err(ProbeError::NotClean {
        max: args.max,
        line: watch.line(),
    })
}

/// A minimal HTTP/1.0 server answering every request with `who=HOST from=PEER`.
pub fn http_who(listener: TcpListener, host: &str) -> Result<(), ProbeError> {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let host = host.to_string();
        std::thread::spawn(move || {
            let _ = answer_http(conn, &host);
        });
    }
    Ok(())
}

fn answer_http(mut conn: TcpStream, host: &str) -> io::Result<()> {
    let peer = conn.peer_addr()?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !report::request_complete(&request) && request.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!("{}\n", report::who_line(host, peer.ip()));
    conn.write_all(report::http_response(&body).as_bytes())?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

/// `GET /` and the body of a 200 answer.
pub fn http_ask(target: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    let what = format!("http-ask {target}");
    let mut conn = TcpStream::connect_timeout(&target, timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            ProbeError::Timeout {
                what: what.clone(),
                timeout,
            }
        } else {
            ProbeError::Io {
                what: what.clone(),
                source: e,
            }
        }
    })?;
    conn.set_read_timeout(Some(timeout))
        .map_err(ProbeError::io(what.clone()))?;
    conn.set_write_timeout(Some(timeout))
        .map_err(ProbeError::io(what.clone()))?;
    let request = format!("GET / HTTP/1.0\r\nHost: {target}\r\nUser-Agent: swarmup-probe\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(ProbeError::io(what.clone()))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ProbeError::Timeout {
                what: what.clone(),
                timeout,
            }
        } else {
            ProbeError::Io {
                what: what.clone(),
                source: e,
            }
        }
    })?;
    report::http_body(&raw).map_err(|detail| ProbeError::BadAnswer { what, detail })
}

/// `count` A queries for `name`, one after the other, each timed from send to answer.
/// `count` sequential `http_ask`s, each on a new connection (as a browser's first request
/// or a health check makes them): returns the round trips that succeeded, the failures
/// and the whole run's time.
pub fn http_time(
    target: SocketAddr,
    count: u32,
    timeout: Duration,
) -> (Vec<Duration>, u32, Duration) {
    let start = Instant::now();
    let mut samples = Vec::with_capacity(count as usize);
    let mut failures = 0;
    for _ in 0..count {
        let sent = Instant::now();
        match http_ask(target, timeout) {
            Ok(_) => samples.push(sent.elapsed()),
            Err(_) => failures += 1,
        }
    }
    (samples, failures, start.elapsed())
}

pub fn dns_time(
    server: SocketAddr,
    name: &str,
    count: u32,
    timeout: Duration,
) -> Result<DnsStats, ProbeError> {
    let what = format!("dns-time {server}");
    let socket =
        UdpSocket::bind(unspecified_like(&server)).map_err(ProbeError::io(what.clone()))?;
    socket
        .connect(server)
        .map_err(ProbeError::io(what.clone()))?;
    // Ids differ from run to run so a late answer of an earlier run is not mistaken.
    let base = (epoch_ms() as u16).wrapping_mul(31);
    let mut stats = DnsStats::default();
    let mut buf = [0u8; 4096];
    for i in 0..count {
        let id = base.wrapping_add(i as u16);
        let query = dns::a_query(id, name)?;
        let sent = Instant::now();
        socket.send(&query).map_err(ProbeError::io(what.clone()))?;
        let answered = loop {
            let Some(left) = timeout.checked_sub(sent.elapsed()).filter(|d| !d.is_zero()) else {
                break None;
            };
            socket
                .set_read_timeout(Some(left))
                .map_err(ProbeError::io(what.clone()))?;
            match socket.recv(&mut buf) {
                Ok(n) => match dns::read_reply(&buf[..n]) {
                    Ok(reply) if reply.id == id && reply.is_response => {
                        break Some((sent.elapsed(), reply))
                    }
                    // Someone else's answer, or a late one: keep waiting for ours.
                    _ => continue,
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                // An ICMP error (nothing listens) fails this query only.
                Err(_) => break None,
            }
        };
        match answered {
            Some((took, reply)) => {
                stats.samples.push(took);
                stats.answers = reply.a_records;
                stats.rcode = reply.rcode;
            }
            None => stats.failures += 1,
        }
    }
    Ok(stats)
}
