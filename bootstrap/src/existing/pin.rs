//! Host keys of machines swarmup did not make: taken from the user's known_hosts, or
//! from what the machine offers when it matches a fingerprint the user gave. Never
//! accepted unseen.
//!
//! `ssh-keygen -F` reads known_hosts, so hashed entries (`HashKnownHosts yes`, Debian's
//! default), patterns and `@revoked` lines mean what they mean to ssh itself.

use std::path::Path;
use std::time::Duration;

use ssh_key::{HashAlg, PublicKey};

use crate::error::BootstrapError;

/// What one known_hosts file says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownKeys {
    /// `TYPE BASE64`, in file order, revoked ones left out.
    pub keys: Vec<String>,
    /// Keys the file marks `@revoked` for the host.
    pub revoked: Vec<String>,
}

/// Reads `ssh-keygen -F NAME` output: the matching lines of a known_hosts file.
/// `@cert-authority` lines name a CA, not the host's key, and are left out.
pub fn parse_keygen_find(output: &str) -> KnownKeys {
    let mut found = KnownKeys::default();
    for line in output.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let marker = first.strip_prefix('@');
        if marker.is_some() {
            words.next(); // the host patterns
        }
        let (Some(kind), Some(blob)) = (words.next(), words.next()) else {
            continue;
        };
        let key = format!("{kind} {blob}");
        match marker {
            None => found.keys.push(key),
            Some("revoked") => found.revoked.push(key),
            Some(_) => {}
        }
    }
    found.keys.retain(|k| !found.revoked.contains(k));
    found.keys.dedup();
    found
}

/// The keys `file` holds for any of `names` (`HOST` or `[HOST]:PORT`).
pub async fn known_host_keys(file: &Path, names: &[String]) -> Result<KnownKeys, BootstrapError> {
    let mut all = KnownKeys::default();
    for name in names {
        let out = tokio::process::Command::new("ssh-keygen")
            .arg("-F")
            .arg(name)
            .arg("-f")
            .arg(file)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| BootstrapError::io("running ssh-keygen: install the OpenSSH client", e))?;
        // 1: nothing found for this name.
        match out.status.code() {
            Some(0) => {}
            Some(1) => continue,
            _ => {
                return Err(BootstrapError::Invalid(format!(
                    "cannot read known hosts file {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        let found = parse_keygen_find(&String::from_utf8_lossy(&out.stdout));
        for k in found.keys {
            if !all.keys.contains(&k) {
                all.keys.push(k);
            }
        }
        all.revoked.extend(found.revoked);
    }
    let revoked = all.revoked.clone();
    all.keys.retain(|k| !revoked.contains(k));
    Ok(all)
}

/// `SHA256:…` as `ssh-keygen -l` and ssh's own prompt show it; `None` for what is not
/// an OpenSSH public key.
pub fn fingerprint(key: &str) -> Option<String> {
    PublicKey::from_openssh(key.trim())
        .ok()
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

/// A fingerprint as the user may write it: `SHA256:abc…`, with or without the base64
/// padding. MD5 fingerprints are refused: they no longer pin anything.
pub fn normalize_fingerprint(given: &str) -> Result<String, String> {
    let given = given.trim();
    let Some(b64) = given.strip_prefix("SHA256:") else {
        return Err(format!(
            "{given:?} is not a SHA256 fingerprint: give SHA256:… as `ssh-keygen -lf KEY.pub` or ssh's first-connection prompt prints it"
        ));
    };
    let b64 = b64.trim_end_matches('=');
    let ok = b64.len() == 43
        && b64
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if !ok {
        return Err(format!(
            "{given:?} is not a SHA256 fingerprint (SHA256: and 43 base64 characters)"
        ));
    }
    Ok(format!("SHA256:{b64}"))
}

/// The offered key whose fingerprint is `want` (normalized); else the fingerprints
/// that were offered, for the message.
pub fn match_fingerprint(offered: &[String], want: &str) -> Result<String, Vec<String>> {
    offered
        .iter()
        .find(|k| fingerprint(k).as_deref() == Some(want))
        .cloned()
        .ok_or_else(|| offered.iter().filter_map(|k| fingerprint(k)).collect())
}

/// The key to pin when a host has several: the one ssh would prefer.
pub fn preferred(keys: &[String]) -> Option<String> {
    let rank = |k: &String| match k.split_whitespace().next().unwrap_or_default() {
        "ssh-ed25519" => 0,
        t if t.starts_with("ecdsa-sha2-") => 1,
        "rsa-sha2-512" | "rsa-sha2-256" | "ssh-rsa" => 2,
        _ => 3,
    };
    keys.iter().min_by_key(|k| rank(k)).cloned()
}

/// The host keys `addr:port` offers (`ssh-keyscan`). Not trusted by themselves: a key
/// is pinned only when it matches a fingerprint the user gave.
pub async fn scan_host_keys(
    addr: std::net::IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<Vec<String>, BootstrapError> {
    let secs = timeout.as_secs().max(1).to_string();
    let run = tokio::process::Command::new("ssh-keyscan")
        .args(["-T", &secs, "-p", &port.to_string(), &addr.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout + Duration::from_secs(5), run)
        .await
        .map_err(|_| {
            BootstrapError::Invalid(format!(
                "ssh-keyscan of {addr}:{port} did not finish within {secs}s"
            ))
        })?
        .map_err(|e| BootstrapError::io("running ssh-keyscan: install the OpenSSH client", e))?;
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some(format!("{} {}", w.next()?, w.next()?))
        })
        .collect();
    if keys.is_empty() {
        return Err(BootstrapError::Invalid(format!(
            "{addr}:{port} offered no SSH host key: is sshd running there? ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(comment: &str) -> String {
        crate::keys::generate_host_key(comment)
            .unwrap()
            .public_openssh
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn keygen_output_gives_keys_without_ca_or_revoked_ones() {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let out = format!(
            "# Host 10.0.0.5 found: line 1 \n|1|salt=|hash= {a} root@vm\n\
             # Host 10.0.0.5 found: line 2 CA\n@cert-authority *.example.org {b}\n\
             # Host 10.0.0.5 found: line 3 REVOKED\n@revoked 10.0.0.5 {c}\n\
             10.0.0.5 {c}\n"
        );
        let found = parse_keygen_find(&out);
        assert_eq!(found.keys, vec![a]);
        assert_eq!(found.revoked, vec![c]);
    }

    #[tokio::test]
    async fn hashed_known_hosts_entries_are_found_by_name_and_port() {
        if tokio::process::Command::new("ssh-keygen")
            .arg("-?")
            .output()
            .await
            .is_err()
        {
            println!("skipped: no ssh-keygen");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let (a, b) = (key("a"), key("b"));
        std::fs::write(
            &file,
            format!("node2.example.org,10.0.0.5 {a}\n[10.0.0.7]:2222 {b}\n"),
        )
        .unwrap();
        // ssh-keygen -H hashes the names in place, as HashKnownHosts does.
        let hashed = tokio::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&file)
            .output()
            .await
            .unwrap();
        assert!(hashed.status.success());
        assert!(!std::fs::read_to_string(&file).unwrap().contains("10.0.0.5"));
        let by_name = known_host_keys(&file, &["node2.example.org".into()])
            .await
            .unwrap();
        assert_eq!(by_name.keys, vec![a.clone()]);
        let by_addr = known_host_keys(&file, &["10.0.0.9".into(), "10.0.0.5".into()])
            .await
            .unwrap();
        assert_eq!(by_addr.keys, vec![a]);
        let port = known_host_keys(&file, &["[10.0.0.7]:2222".into()])
            .await
            .unwrap();
        assert_eq!(port.keys, vec![b]);
        // The same address on port 22 is another endpoint.
        let none = known_host_keys(&file, &["10.0.0.7".into()]).await.unwrap();
        assert!(none.keys.is_empty());
        assert!(known_host_keys(&dir.path().join("missing"), &["x".into()])
            .await
            .is_err());
    }

    #[test]
    fn fingerprints_pin_exactly_one_offered_key() {
        let (a, b) = (key("a"), key("b"));
        let fa = fingerprint(&a).unwrap();
        assert!(fa.starts_with("SHA256:") && fa.len() == 50, "{fa}");
        assert_eq!(normalize_fingerprint(&format!("{fa}=")).unwrap(), fa);
        assert_eq!(
            match_fingerprint(&[b.clone(), a.clone()], &fa).unwrap(),
            a.clone()
        );
        let offered = match_fingerprint(std::slice::from_ref(&b), &fa).unwrap_err();
        assert_eq!(offered, vec![fingerprint(&b).unwrap()]);
        for bad in ["MD5:aa:bb", "SHA256:short", "abc"] {
            assert!(normalize_fingerprint(bad).is_err(), "{bad}");
        }
        assert_eq!(fingerprint("ssh-ed25519 garbage"), None);
    }

    #[test]
    fn the_preferred_key_is_the_one_ssh_prefers() {
        let keys = vec![
            "ssh-rsa AAAA".to_string(),
            "ecdsa-sha2-nistp256 BBBB".to_string(),
            "ssh-ed25519 CCCC".to_string(),
        ];
        assert_eq!(preferred(&keys).unwrap(), "ssh-ed25519 CCCC");
        assert_eq!(preferred(&keys[..2]).unwrap(), "ecdsa-sha2-nistp256 BBBB");
        assert_eq!(preferred(&[]), None);
    }
}
