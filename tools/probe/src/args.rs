//! The command line, parsed without touching the network: addresses only, because a
//! static binary cannot load glibc's name service modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

pub const USAGE: &str = "\
usage: swarmup-probe COMMAND ARGS…  (addresses only: names are never resolved)
  tcp-sink PORT                          accept TCP connections, discard what arrives
  tcp-blast ADDR:PORT SECONDS            send to a sink for SECONDS → gbits=…
  udp-echo PORT                          answer each datagram with `who=HOST from=PEER`
  udp-ask ADDR:PORT [--timeout-ms N]     one datagram, print the answer; exit 1 on timeout
  udp-watch ADDR:PORT --avoid HOST [--streak N] [--interval-ms N] [--timeout-ms N]
            [--max-seconds N]            ask every interval until, after a failure or an
                                         answer from HOST, N answers in a row come from others
  http-who PORT                          HTTP/1.0 server answering `who=HOST from=PEER`
  http-ask ADDR:PORT [--timeout-ms N]    GET / and print the body; exit 1 on failure
  http-time ADDR:PORT COUNT [--timeout-ms N]
                                         COUNT sequential GETs, a connection each →
                                         rps=… p50_ms=… p99_ms=… ok=… failures=…
  dns-time SERVER:PORT NAME COUNT [--timeout-ms N]
                                         COUNT sequential A queries → p50_ms=… p99_ms=… answers=…
Servers print `listening=ADDR` once they listen (PORT 0 picks a free port).";

/// What to do, with every value checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    TcpSink {
        port: u16,
    },
    TcpBlast {
        target: SocketAddr,
        duration: Duration,
    },
    UdpEcho {
        port: u16,
    },
    UdpAsk {
        target: SocketAddr,
        timeout: Duration,
    },
    UdpWatch {
        target: SocketAddr,
        watch: WatchArgs,
    },
    HttpWho {
        port: u16,
    },
    HttpAsk {
        target: SocketAddr,
        timeout: Duration,
    },
    HttpTime {
        target: SocketAddr,
        count: u32,
        timeout: Duration,
    },
    DnsTime {
        server: SocketAddr,
        name: String,
        count: u32,
        timeout: Duration,
    },
}

/// How `udp-watch` paces itself and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchArgs {
    pub avoid: String,
    pub streak: u32,
    pub interval: Duration,
    pub timeout: Duration,
    pub max: Duration,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("no command given\n{USAGE}")]
    NoCommand,
    #[error("unknown command {0:?}\n{USAGE}")]
    UnknownCommand(String),
    #[error("{command} needs {what}")]
    Missing {
        command: &'static str,
        what: &'static str,
    },
    #[error("{command}: unexpected argument {arg:?}")]
    Unexpected { command: &'static str, arg: String },
    #[error("{command}: unknown option {option:?}")]
    UnknownOption {
        command: &'static str,
        option: String,
    },
    #[error("{command}: option {option} needs a value")]
    NoValue {
        command: &'static str,
        option: String,
    },
    #[error("{command}: {what} must be {expected}, not {value:?}")]
    Invalid {
        command: &'static str,
        what: &'static str,
        expected: &'static str,
        value: String,
    },
}

pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_millis(1000);

/// Positional words and `--name value` options of one command.
struct Words {
    command: &'static str,
    positional: Vec<String>,
    options: BTreeMap<String, String>,
}

impl Words {
    fn split(command: &'static str, args: &[String], known: &[&str]) -> Result<Words, ArgsError> {
        let mut positional = Vec::new();
        let mut options = BTreeMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                if !known.contains(&name) {
                    return Err(ArgsError::UnknownOption {
                        command,
                        option: arg.clone(),
                    });
                }
                let value = it.next().ok_or_else(|| ArgsError::NoValue {
                    command,
                    option: arg.clone(),
                })?;
                options.insert(name.to_string(), value.clone());
            } else {
                positional.push(arg.clone());
            }
        }
        Ok(Words {
            command,
            positional,
            options,
        })
    }

    /// Exactly the named positional words, in order.
    fn exactly(&self, names: &[&'static str]) -> Result<Vec<&str>, ArgsError> {
        if let Some(extra) = self.positional.get(names.len()) {
            return Err(ArgsError::Unexpected {
                command: self.command,
                arg: extra.clone(),
            });
        }
        names
            .iter()
            .enumerate()
            .map(|(i, what)| {
                self.positional
                    .get(i)
                    .map(String::as_str)
                    .ok_or(ArgsError::Missing {
                        command: self.command,
                        what,
                    })
            })
            .collect()
    }

    fn invalid(&self, what: &'static str, expected: &'static str, value: &str) -> ArgsError {
        ArgsError::Invalid {
            command: self.command,
            what,
            expected,
            value: value.to_string(),
        }
    }

    fn port(&self, value: &str) -> Result<u16, ArgsError> {
        value
            .parse()
            .map_err(|_| self.invalid("PORT", "a number from 0 to 65535", value))
    }

    fn addr(&self, what: &'static str, value: &str) -> Result<SocketAddr, ArgsError> {
        value
            .parse()
            .map_err(|_| self.invalid(what, "an IP address and port (no names)", value))
    }

    fn seconds(&self, what: &'static str, value: &str) -> Result<Duration, ArgsError> {
        match value.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s < 1e6 => Ok(Duration::from_secs_f64(s)),
            _ => Err(self.invalid(what, "a positive number of seconds", value)),
        }
    }

    fn count(&self, what: &'static str, value: &str) -> Result<u32, ArgsError> {
        match value.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.invalid(what, "a positive whole number", value)),
        }
    }

    fn millis(&self, option: &'static str, default: Duration) -> Result<Duration, ArgsError> {
        match self.options.get(option) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(self.invalid(option, "a positive number of milliseconds", v)),
            },
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, ArgsError> {
    let Some((first, rest)) = args.split_first() else {
        return Err(ArgsError::NoCommand);
    };
    match first.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "tcp-sink" => {
            let w = Words::split("tcp-sink", rest, &[])?;
            let [port] = w.exactly(&["PORT"])?[..] else {
                unreachable!()
            };
            Ok(Command::TcpSink {
                port: w.port(port)?,
            })
        }
        "tcp-blast" => {
            let w = Words::split("tcp-blast", rest, &[])?;
            let [target, seconds] = w.exactly(&["ADDR:PORT", "SECONDS"])?[..] else {
                unreachable!()
            };
            Ok(Command::TcpBlast {
                target: w.addr("ADDR:PORT", target)?,
                duration: w.seconds("SECONDS", seconds)?,
            })
        }
        "udp-echo" => {
            let w = Words::split("udp-echo", rest, &[])?;
            let [port] = w.exactly(&["PORT"])?[..] else {
                unreachable!()
            };
            Ok(Command::UdpEcho {
                port: w.port(port)?,
            })
        }
        "udp-ask" => {
            let w = Words::split("udp-ask", rest, &["timeout-ms"])?;
            let [target] = w.exactly(&["ADDR:PORT"])?[..] else {
                unreachable!()
            };
            Ok(Command::UdpAsk {
                target: w.addr("ADDR:PORT", target)?,
                timeout: w.millis("timeout-ms", DEFAULT_ASK_TIMEOUT)?,
            })
        }
        "udp-watch" => {
            let w = Words::split(
                "udp-watch",
                rest,
                &[
                    "avoid",
                    "streak",
                    "interval-ms",
                    "timeout-ms",
                    "max-seconds",
                ],
            )?;
            let [target] = w.exactly(&["ADDR:PORT"])?[..] else {
                unreachable!()
            };
            let avoid = w.options.get("avoid").cloned().ok_or(ArgsError::Missing {
                command: "udp-watch",
                what: "--avoid HOST",
            })?;
            let streak = match w.options.get("streak") {
                Some(v) => w.count("--streak", v)?,
                None => 20,
            };
            let max = match w.options.get("max-seconds") {
                Some(v) => w.seconds("--max-seconds", v)?,
                None => Duration::from_secs(30),
            };
            Ok(Command::UdpWatch {
                target: w.addr("ADDR:PORT", target)?,
                watch: WatchArgs {
                    avoid,
                    streak,
                    interval: w.millis("interval-ms", Duration::from_millis(10))?,
                    timeout: w.millis("timeout-ms", Duration::from_millis(100))?,
                    max,
                },
            })
        }
        "http-who" => {
            let w = Words::split("http-who", rest, &[])?;
            let [port] = w.exactly(&["PORT"])?[..] else {
                unreachable!()
            };
            Ok(Command::HttpWho {
                port: w.port(port)?,
            })
        }
        "http-ask" => {
            let w = Words::split("http-ask", rest, &["timeout-ms"])?;
            let [target] = w.exactly(&["ADDR:PORT"])?[..] else {
                unreachable!()
            };
            Ok(Command::HttpAsk {
                target: w.addr("ADDR:PORT", target)?,
                timeout: w.millis("timeout-ms", DEFAULT_ASK_TIMEOUT)?,
            })
        }
        "http-time" => {
            let w = Words::split("http-time", rest, &["timeout-ms"])?;
            let [target, count] = w.exactly(&["ADDR:PORT", "COUNT"])?[..] else {
                unreachable!()
            };
            Ok(Command::HttpTime {
                target: w.addr("ADDR:PORT", target)?,
                count: w.count("COUNT", count)?,
                timeout: w.millis("timeout-ms", DEFAULT_ASK_TIMEOUT)?,
            })
        }
        "dns-time" => {
            let w = Words::split("dns-time", rest, &["timeout-ms"])?;
            let [server, name, count] = w.exactly(&["SERVER:PORT", "NAME", "COUNT"])?[..] else {
                unreachable!()
            };
            Ok(Command::DnsTime {
                server: w.addr("SERVER:PORT", server)?,
                name: name.to_string(),
                count: w.count("COUNT", count)?,
                timeout: w.millis("timeout-ms", DEFAULT_DNS_TIMEOUT)?,
            })
        }
        other => Err(ArgsError::UnknownCommand(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Command, ArgsError> {
        let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        parse(&args)
    }

    #[test]
    fn servers_take_a_port() {
        assert_eq!(p("tcp-sink 5001"), Ok(Command::TcpSink { port: 5001 }));
        assert_eq!(p("udp-echo 0"), Ok(Command::UdpEcho { port: 0 }));
        assert_eq!(p("http-who 80"), Ok(Command::HttpWho { port: 80 }));
        assert!(matches!(
            p("tcp-sink 70000"),
            Err(ArgsError::Invalid { what: "PORT", .. })
        ));
        assert!(matches!(
            p("http-who"),
            Err(ArgsError::Missing { what: "PORT", .. })
        ));
        assert!(matches!(
            p("udp-echo 1 2"),
            Err(ArgsError::Unexpected { .. })
        ));
    }

    #[test]
    fn clients_take_addresses_never_names() {
        assert_eq!(
            p("tcp-blast 10.0.1.5:5001 2.5"),
            Ok(Command::TcpBlast {
                target: "10.0.1.5:5001".parse().unwrap(),
                duration: Duration::from_millis(2500),
            })
        );
        assert_eq!(
            p("udp-ask 127.0.0.1:9 --timeout-ms 50"),
            Ok(Command::UdpAsk {
                target: "127.0.0.1:9".parse().unwrap(),
                timeout: Duration::from_millis(50),
            })
        );
        assert_eq!(
            p("http-ask [::1]:80"),
            Ok(Command::HttpAsk {
                target: "[::1]:80".parse().unwrap(),
                timeout: DEFAULT_ASK_TIMEOUT,
            })
        );
        let err = p("udp-ask psql:5432").unwrap_err();
        assert!(err.to_string().contains("no names"), "{err}");
        assert!(matches!(
            p("tcp-blast 127.0.0.1:1 0"),
            Err(ArgsError::Invalid {
                what: "SECONDS",
                ..
            })
        ));
        assert!(matches!(
            p("tcp-blast 127.0.0.1:1 nan"),
            Err(ArgsError::Invalid { .. })
        ));
    }

    #[test]
    fn http_time_takes_target_and_count() {
        assert_eq!(
            p("http-time 10.0.0.5:9200 500"),
            Ok(Command::HttpTime {
                target: "10.0.0.5:9200".parse().unwrap(),
                count: 500,
                timeout: DEFAULT_ASK_TIMEOUT,
            })
        );
        assert!(matches!(
            p("http-time 10.0.0.5:9200 0"),
            Err(ArgsError::Invalid { what: "COUNT", .. })
        ));
    }

    #[test]
    fn dns_time_takes_server_name_and_count() {
        assert_eq!(
            p("dns-time 127.0.0.11:53 tasks.psql 200"),
            Ok(Command::DnsTime {
                server: "127.0.0.11:53".parse().unwrap(),
                name: "tasks.psql".into(),
                count: 200,
                timeout: DEFAULT_DNS_TIMEOUT,
            })
        );
        assert!(matches!(
            p("dns-time 127.0.0.11:53 psql 0"),
            Err(ArgsError::Invalid { what: "COUNT", .. })
        ));
        assert!(matches!(
            p("dns-time 127.0.0.11:53 psql"),
            Err(ArgsError::Missing { what: "COUNT", .. })
        ));
    }

    #[test]
    fn udp_watch_needs_a_host_to_avoid_and_has_defaults() {
        assert_eq!(
            p("udp-watch 10.0.1.2:7 --avoid abc123 --streak 5"),
            Ok(Command::UdpWatch {
                target: "10.0.1.2:7".parse().unwrap(),
                watch: WatchArgs {
                    avoid: "abc123".into(),
                    streak: 5,
                    interval: Duration::from_millis(10),
                    timeout: Duration::from_millis(100),
                    max: Duration::from_secs(30),
                },
            })
        );
        assert!(matches!(
            p("udp-watch 10.0.1.2:7"),
            Err(ArgsError::Missing {
                what: "--avoid HOST",
                ..
            })
        ));
    }

    #[test]
    fn options_are_checked() {
        assert!(matches!(
            p("udp-ask 127.0.0.1:9 --timeout-ms"),
            Err(ArgsError::NoValue { .. })
        ));
        assert!(matches!(
            p("udp-ask 127.0.0.1:9 --timeout-ms -5"),
            Err(ArgsError::Invalid { .. })
        ));
        assert!(matches!(
            p("tcp-sink 1 --timeout-ms 5"),
            Err(ArgsError::UnknownOption { .. })
        ));
        assert_eq!(p(""), Err(ArgsError::NoCommand));
        assert!(matches!(p("ping 1"), Err(ArgsError::UnknownCommand(_))));
        assert_eq!(p("--help"), Ok(Command::Help));
    }
}
