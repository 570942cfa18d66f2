//! The `swarmup-probe` command: one line of `key=value` words per result. Exit status 0 on
//! success, 1 when a measurement failed (timeout, refused, no clean streak), 2 on usage
//! errors.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::process::ExitCode;

use swarmup_probe::args::{self, Command};
use swarmup_probe::report;
use swarmup_probe::run::{self, ProbeError};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let command = match args::parse(&argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmup-probe: {e}");
            return ExitCode::from(2);
        }
    };
    match execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmup-probe: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints and flushes at once: output often goes to a pipe read while the server runs.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn listen_tcp(port: u16) -> Result<TcpListener, ProbeError> {
    let listener = TcpListener::bind(run::any_v4(port)).map_err(|source| ProbeError::Io {
        what: format!("listen on TCP port {port}"),
        source,
    })?;
    if let Ok(addr) = listener.local_addr() {
        say(&format!("listening={addr}"));
    }
    Ok(listener)
}

fn execute(command: Command) -> Result<(), ProbeError> {
    match command {
        Command::Help => say(args::USAGE),
        Command::TcpSink { port } => run::tcp_sink(listen_tcp(port)?)?,
        Command::TcpBlast { target, duration } => {
            let (bytes, took) = run::tcp_blast(target, duration)?;
            say(&report::blast_line(bytes, took));
        }
        Command::UdpEcho { port } => {
            let socket = UdpSocket::bind(run::any_v4(port)).map_err(|source| ProbeError::Io {
                what: format!("listen on UDP port {port}"),
                source,
            })?;
            if let Ok(addr) = socket.local_addr() {
                say(&format!("listening={addr}"));
            }
            run::udp_echo(socket, &run::hostname())?;
        }
        Command::UdpAsk { target, timeout } => say(&run::udp_ask(target, timeout)?),
        Command::UdpWatch { target, watch } => say(&run::udp_watch(target, &watch)?.line()),
        Command::HttpWho { port } => run::http_who(listen_tcp(port)?, &run::hostname())?,
        Command::HttpAsk { target, timeout } => say(&run::http_ask(target, timeout)?),
        Command::HttpTime {
            target,
            count,
            timeout,
        } => {
            let (samples, failures, elapsed) = run::http_time(target, count, timeout);
            say(&report::http_time_line(&samples, failures, elapsed));
            if samples.is_empty() {
                return Err(ProbeError::Timeout {
                    what: format!("http-time {target}"),
                    timeout,
                });
            }
        }
        Command::DnsTime {
            server,
            name,
            count,
            timeout,
        } => {
            let stats = run::dns_time(server, &name, count, timeout)?;
            say(&report::dns_line(&stats));
            if stats.samples.is_empty() {
                return Err(ProbeError::Timeout {
                    what: format!("dns-time {server} {name}"),
                    timeout,
                });
            }
        }
    }
    Ok(())
}
