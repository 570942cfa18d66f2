//! The lab registry: Debian's `docker-registry` (the Distribution registry) run on the
//! host for one cluster, listening on the cluster bridge's own address.
//!
//! It lives on the host rather than in a node so that it belongs to the cluster, not to
//! a node that can be powered off, and so that no node's port 5000 is taken away from the
//! routing mesh. Every node's dockerd trusts it as an insecure (plain HTTP) registry: it
//! is reachable only from the host and the cluster's own bridge, and TLS would need a CA
//! installed into every node and every client for no gain on a private bridge.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

/// The program, from Debian's `docker-registry` package.
pub const PROGRAM: &str = "docker-registry";
/// The registry's usual port, so `GATEWAY:5000/app:1` reads like every registry tutorial.
pub const PORT: u16 = 5000;
/// What to install when [`PROGRAM`] is missing.
pub const PACKAGE_HINT: &str = "apt-get install -y docker-registry";

/// Where the registry of a cluster whose bridge has `gateway` listens.
pub fn address(gateway: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(gateway, PORT))
}

/// The registry's configuration: storage in `data`, plain HTTP on `addr`, no auth, no
/// proxying to any upstream registry (the lab reaches nothing outside itself).
pub fn config_yaml(data: &Path, addr: SocketAddr) -> String {
    format!(
        "# Written by swarmup for the lab registry of one cluster; rewritten at every start.\n\
         version: 0.1\n\
         log:\n  level: info\n  fields:\n    service: registry\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        data = yaml_quote(&data.to_string_lossy()),
    )
}

/// A double-quoted YAML scalar.
fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `daemon.json` with `registry` among its `insecure-registries`, everything else kept.
/// An empty file counts as `{}`.
pub fn trust_in_daemon_json(current: &str, registry: &str) -> Result<String, String> {
    let mut doc: serde_json::Value = if current.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(current).map_err(|e| format!("not JSON: {e}"))?
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let list = obj
        .entry("insecure-registries")
        .or_insert_with(|| serde_json::json!([]));
    let items = list
        .as_array_mut()
        .ok_or_else(|| "insecure-registries is not a list".to_string())?;
    if !items.iter().any(|v| v.as_str() == Some(registry)) {
        items.push(serde_json::Value::String(registry.to_string()));
    }
    let mut out = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

/// Whether an HTTP reply is the registry's `GET /v2/` answer: 200, or 401 from one that
/// wants credentials (still a registry that is up).
pub fn is_v2_answer(reply: &str) -> bool {
    let status = reply.lines().next().unwrap_or_default();
    status.starts_with("HTTP/1.") && (status.contains(" 200 ") || status.contains(" 401 "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_on_the_gateway() {
        let addr = address(Ipv4Addr::new(10, 247, 3, 1));
        assert_eq!(addr.to_string(), "10.247.3.1:5000");
        let yaml = config_yaml(Path::new("/var/lib/swarmup/lab/web/_registry/data"), addr);
        assert!(yaml.contains("  addr: 10.247.3.1:5000\n"), "{yaml}");
        assert!(
            yaml.contains("rootdirectory: \"/var/lib/swarmup/lab/web/_registry/data\"\n"),
            "{yaml}"
        );
        assert!(!yaml.contains("auth"), "{yaml}");
        assert!(!yaml.contains("proxy"), "{yaml}");
    }

    #[test]
    fn daemon_json_gains_the_registry_once_and_keeps_the_rest() {
        let out = trust_in_daemon_json("{}\n", "10.247.3.1:5000").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["10.247.3.1:5000"])
        );
        assert_eq!(trust_in_daemon_json(&out, "10.247.3.1:5000").unwrap(), out);
        let mine = r#"{"debug": true, "insecure-registries": ["mirror:5000"]}"#;
        let v: serde_json::Value =
            serde_json::from_str(&trust_in_daemon_json(mine, "10.247.3.1:5000").unwrap()).unwrap();
        assert_eq!(v["debug"], true);
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["mirror:5000", "10.247.3.1:5000"])
        );
        assert!(trust_in_daemon_json("", "r:5000").is_ok());
        assert!(trust_in_daemon_json("[1]", "r:5000").is_err());
        assert!(trust_in_daemon_json("{", "r:5000").is_err());
        assert!(trust_in_daemon_json(r#"{"insecure-registries": "x"}"#, "r:5000").is_err());
    }

    #[test]
    fn v2_answers() {
        assert!(is_v2_answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(is_v2_answer("HTTP/1.1 401 Unauthorized\r\n\r\n"));
        assert!(!is_v2_answer("HTTP/1.1 404 Not Found\r\n\r\n"));
        assert!(!is_v2_answer(""));
    }
}
