//! The probe's servers and clients against each other on loopback: the built binary as
//! the server (as it runs in a container), clients both as the binary and as library
//! calls. Loopback only, so these run in every `cargo test`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use swarmup_probe::args::WatchArgs;
use swarmup_probe::report::words;
use swarmup_probe::run;

const PROBE: &str = env!("CARGO_BIN_EXE_swarmup-probe");

/// A probe server, killed (by its own handle) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(PROBE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start swarmup-probe");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read listening line");
        let listening = words(&first)
            .get("listening")
            .unwrap_or_else(|| panic!("no listening= in {first:?}"))
            .to_string();
        let port = listening
            .parse::<SocketAddr>()
            .expect("listening address")
            .port();
        Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe(args: &[&str]) -> Output {
    Command::new(PROBE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run swarmup-probe")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn blast_into_a_sink_reports_gigabits() {
    let sink = Server::start(&["tcp-sink", "0"]);
    let line = stdout(&probe(&["tcp-blast", &sink.addr.to_string(), "0.3"]));
    let w = words(&line);
    let gbits: f64 = w["gbits"].parse().expect("gbits is a number");
    assert!(gbits > 0.0, "{line}");
    assert!(w["bytes"].parse::<u64>().unwrap() > 0, "{line}");
    // The sink keeps serving.
    let (bytes, took) = run::tcp_blast(sink.addr, Duration::from_millis(100)).unwrap();
    assert!(bytes > 0 && took >= Duration::from_millis(100));
}

#[test]
fn udp_echo_answers_with_host_and_client_address() {
    let echo = Server::start(&["udp-echo", "0"]);
    let line = stdout(&probe(&["udp-ask", &echo.addr.to_string()]));
    let w = words(&line);
    assert_eq!(w["from"], "127.0.0.1", "{line}");
    assert_eq!(w["who"], run::hostname(), "{line}");
    let answer = run::udp_ask(echo.addr, Duration::from_secs(1)).unwrap();
    assert!(answer.contains("from=127.0.0.1"), "{answer}");
}

#[test]
fn udp_ask_fails_when_nothing_answers() {
    // A bound socket that never answers: a timeout, not a refusal.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = probe(&["udp-ask", &addr, "--timeout-ms", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
    // Nothing bound: refused or timed out, a failure either way.
    drop(silent);
    assert_eq!(
        probe(&["udp-ask", &addr, "--timeout-ms", "100"])
            .status
            .code(),
        Some(1)
    );
}

/// A UDP server that plays a VIP losing a task: answers as `victim` for a while, then not
/// at all for a while, then as `survivor`.
fn dying_vip() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0u32;
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            n += 1;
            let who = match n {
                0..=3 => "victim",
                4..=5 => continue,
                _ => "survivor",
            };
            let _ = socket.send_to(format!("who={who} from={}", peer.ip()).as_bytes(), peer);
        }
    });
    addr
}

#[test]
fn udp_watch_ends_after_a_clean_streak() {
    let vip = dying_vip();
    let line = stdout(&probe(&[
        "udp-watch",
        &vip.to_string(),
        "--avoid",
        "victim",
        "--streak",
        "5",
        "--interval-ms",
        "2",
        "--timeout-ms",
        "50",
    ]));
    let w = words(&line);
    assert_eq!(w["requests"], "10", "{line}");
    assert_eq!(w["avoided"], "3", "{line}");
    assert_eq!(w["failures"], "2", "{line}");
    let clean: u64 = w["clean_at_ms"].parse().unwrap();
    let last_bad: u64 = w["last_bad_ms"].parse().unwrap();
    assert!(clean >= last_bad && last_bad > 0, "{line}");
}

#[test]
fn udp_watch_waits_for_something_bad_then_a_streak() {
    let echo = Server::start(&["udp-echo", "0"]);
    // Every answer comes from this host: avoiding it never gets clean.
    let avoid_me = WatchArgs {
        avoid: run::hostname(),
        streak: 3,
        interval: Duration::from_millis(5),
        timeout: Duration::from_millis(100),
        max: Duration::from_millis(200),
    };
    assert!(run::udp_watch(echo.addr, &avoid_me).is_err());
    // Nothing bad ever happens: never over either (the watch waits for the kill).
    let other = WatchArgs {
        avoid: "somebody-else".into(),
        ..avoid_me
    };
    assert!(run::udp_watch(echo.addr, &other).is_err());
    let out = probe(&[
        "udp-watch",
        &echo.addr.to_string(),
        "--avoid",
        "x",
        "--max-seconds",
        "0.1",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn http_who_answers_http_clients() {
    let who = Server::start(&["http-who", "0"]);
    let line = stdout(&probe(&["http-ask", &who.addr.to_string()]));
    assert_eq!(line, format!("who={} from=127.0.0.1", run::hostname()));
    // And busybox-style clients that send only a request line.
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(who.addr).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.0 200 OK"), "{raw}");
    assert!(raw.ends_with("from=127.0.0.1\n"), "{raw}");
}

/// A loopback DNS server that answers every A query with two records.
fn fake_dns() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            answer.metadata.response_code = ResponseCode::NoError;
            answer.add_queries(query.queries.iter().cloned());
            if let Some(q) = query.queries.first() {
                for last in [2u8, 3] {
                    answer.answers.push(Record::from_rdata(
                        q.name().clone(),
                        5,
                        RData::A(A::new(10, 0, 1, last)),
                    ));
                }
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer);
        }
    });
    addr
}

#[test]
fn dns_time_reports_percentiles_and_answers() {
    let server = fake_dns();
    let line = stdout(&probe(&[
        "dns-time",
        &server.to_string(),
        "tasks.psql",
        "50",
    ]));
    let w = words(&line);
    assert_eq!(w["answers"], "2", "{line}");
    assert_eq!(w["ok"], "50", "{line}");
    assert_eq!(w["failures"], "0", "{line}");
    let p50: f64 = w["p50_ms"].parse().unwrap();
    let p99: f64 = w["p99_ms"].parse().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{line}");
}

#[test]
fn dns_time_fails_when_nobody_answers() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = probe(&[
        "dns-time",
        &silent.local_addr().unwrap().to_string(),
        "psql",
        "2",
        "--timeout-ms",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("p50_ms=nan") && line.contains("failures=2"),
        "{line}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = probe(&["udp-ask", "psql:5432"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no names"));
    assert!(probe(&["--help"]).status.success());
}
