//! The one-line, `key=value` outputs and the small pure decisions behind them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Gigabits per second of `bytes` moved in `elapsed`.
pub fn gbits(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / secs / 1e9
}

/// `tcp-blast`'s answer.
pub fn blast_line(bytes: u64, elapsed: Duration) -> String {
    format!(
        "gbits={:.3} bytes={bytes} seconds={:.3}",
        gbits(bytes, elapsed),
        elapsed.as_secs_f64()
    )
}

/// What `udp-echo` and `http-who` answer: who served, and whom it saw.
pub fn who_line(host: &str, peer: IpAddr) -> String {
    format!("who={host} from={peer}")
}

/// The hostname to report: the kernel's (this UTS namespace's, so the container's), else
/// `$HOSTNAME`, else `unknown`. Read from /proc because the probe calls no libc.
pub fn hostname(proc_text: Option<&str>, env: Option<&str>) -> String {
    [proc_text, env]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or("unknown")
        .to_string()
}

/// The `p`-th percentile (0 < p ≤ 100) by nearest rank, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index].as_secs_f64() * 1000.0)
}

/// What `dns-time` measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsStats {
    /// Round trips of the queries that were answered.
    pub samples: Vec<Duration>,
    /// A records in the last answer.
    pub answers: usize,
    /// The last answer's response code, as hickory names it.
    pub rcode: String,
    /// Queries that got no answer in time.
    pub failures: u32,
}

pub fn dns_line(stats: &DnsStats) -> String {
    let ms = |p| match percentile_ms(&stats.samples, p) {
        Some(v) => format!("{v:.3}"),
        None => "nan".to_string(),
    };
    format!(
        "p50_ms={} p99_ms={} answers={} rcode={} ok={} failures={}",
        ms(50.0),
        ms(99.0),
        stats.answers,
        if stats.rcode.is_empty() {
            "none"
        } else {
            &stats.rcode
        },
        stats.samples.len(),
        stats.failures
    )
}

/// `http-time`'s line: requests per second over the whole run, latency percentiles of
/// the requests that succeeded, and the failures.
pub fn http_time_line(samples: &[Duration], failures: u32, elapsed: Duration) -> String {
    let ms = |p| match percentile_ms(samples, p) {
        Some(v) => format!("{v:.3}"),
        None => "nan".to_string(),
    };
    let secs = elapsed.as_secs_f64();
    let rps = if secs > 0.0 {
        samples.len() as f64 / secs
    } else {
        0.0
    };
    format!(
        "rps={rps:.0} p50_ms={} p99_ms={} ok={} failures={failures}",
        ms(50.0),
        ms(99.0),
        samples.len()
    )
}

/// The `key=value` words of a line; other words are ignored.
pub fn words(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// An HTTP/1.0 answer with a plain-text body.
pub fn http_response(body: &str) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The body of a complete HTTP answer, if its status is 200.
pub fn http_body(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", truncate(&text)))?;
    let status = head.lines().next().unwrap_or_default();
    let mut parts = status.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(body.trim_end().to_string()),
        _ => Err(format!("answer was {status:?}")),
    }
}

/// True once the request head (up to the blank line) has arrived.
pub fn request_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_bits_over_seconds() {
        assert_eq!(gbits(1_250_000_000, Duration::from_secs(1)), 10.0);
        assert_eq!(gbits(5, Duration::ZERO), 0.0);
        assert_eq!(
            blast_line(2_500_000_000, Duration::from_secs(2)),
            "gbits=10.000 bytes=2500000000 seconds=2.000"
        );
        let line = blast_line(1000, Duration::from_millis(10));
        assert_eq!(words(&line)["gbits"], "0.001");
    }

    #[test]
    fn who_names_host_and_peer() {
        assert_eq!(
            who_line("a1b2c3", "10.0.1.7".parse().unwrap()),
            "who=a1b2c3 from=10.0.1.7"
        );
        assert_eq!(hostname(Some("a1b2c3\n"), Some("x")), "a1b2c3");
        assert_eq!(hostname(Some(""), Some("x")), "x");
        assert_eq!(hostname(None, None), "unknown");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&ms, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&ms, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&ms, 100.0), Some(100.0));
        assert_eq!(percentile_ms(&[Duration::from_millis(3)], 99.0), Some(3.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }

    #[test]
    fn dns_line_is_key_value() {
        let stats = DnsStats {
            samples: vec![Duration::from_micros(500), Duration::from_micros(1500)],
            answers: 2,
            rcode: "NoError".into(),
            failures: 1,
        };
        assert_eq!(
            dns_line(&stats),
            "p50_ms=0.500 p99_ms=1.500 answers=2 rcode=NoError ok=2 failures=1"
        );
        assert_eq!(
            dns_line(&DnsStats::default()),
            "p50_ms=nan p99_ms=nan answers=0 rcode=none ok=0 failures=0"
        );
    }

    #[test]
    fn http_round_trip() {
        let raw = http_response("who=h from=1.2.3.4\n");
        assert!(raw.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(raw.contains("Content-Length: 19\r\n"));
        assert_eq!(http_body(raw.as_bytes()), Ok("who=h from=1.2.3.4".into()));
        assert!(http_body(b"HTTP/1.1 404 Not Found\r\n\r\nno").is_err());
        assert!(http_body(b"garbage").is_err());
        assert!(request_complete(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!request_complete(b"GET / HTTP/1.0\r\nHost: x\r\n"));
    }
}
