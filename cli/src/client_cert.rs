//! The administrator's client certificate (`client/` in the cluster record): the TLS client
//! every cluster command uses, and its renewal.
//!
//! The certificate `swarm-node client-cert` issues lasts a year. Any cluster command renews
//! it once it is within [`RENEW_BEFORE`] of expiry, by asking a manager for a new one over
//! SSH (the same way `create` got the first), so a cluster used now and then never locks
//! its owner out. The three files are replaced together (a new directory renamed into
//! place), because a certificate next to another certificate's key is useless.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use swarmup_providers::{Machine, PowerState, Role};

use crate::records::{self, ClusterDir};

/// Renew when the certificate has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What [`refresh`] found and did.
#[derive(Debug)]
pub enum Refresh {
    /// Far enough from expiry: nothing to do.
    Fresh,
    /// A new certificate is in place.
    Renewed { not_after: SystemTime },
    /// Renewal was due but failed; the old certificate still works until `not_after`.
    Failed {
        not_after: SystemTime,
        error: anyhow::Error,
    },
}

/// True when a certificate valid until `not_after` must be renewed at `now`.
pub fn renewal_due(not_after: SystemTime, now: SystemTime) -> bool {
    match not_after.duration_since(now) {
        Ok(left) => left < RENEW_BEFORE,
        Err(_) => true,
    }
}

/// The end of a PEM certificate's validity.
pub fn not_after(cert_pem: &[u8]) -> Result<SystemTime> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem).context("cert.pem holds no certificate")?;
    let cert = pem.parse_x509().context("cert.pem holds no certificate")?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// Days left until `not_after` (negative once past), for messages.
pub fn days_left(not_after: SystemTime, now: SystemTime) -> i64 {
    match not_after.duration_since(now) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read {}: finish the cluster with `swarmup create` first",
            path.display()
        )
    })
}

/// Puts back a client directory a crash left half-replaced.
fn recover(client: &Path) {
    let new = sibling(client, "new");
    if !client.exists() && new.exists() {
        let _ = std::fs::rename(&new, client);
    }
}

fn sibling(client: &Path, suffix: &str) -> PathBuf {
    let mut name = client.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    client.with_file_name(name)
}

/// Writes the three files of a client bundle into `client`, replacing what is there.
pub fn write_bundle(client: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    recover(client);
    let new = sibling(client, "new");
    let old = sibling(client, "old");
    let _ = std::fs::remove_dir_all(&new);
    records::write_private(&new.join("ca.pem"), ca_pem.as_bytes())?;
    records::write_private(&new.join("cert.pem"), cert_pem.as_bytes())?;
    records::write_private(&new.join("key.pem"), key_pem.as_bytes())?;
    let _ = std::fs::remove_dir_all(&old);
    if client.exists() {
        std::fs::rename(client, &old)
            .with_context(|| format!("cannot replace {}", client.display()))?;
    }
    std::fs::rename(&new, client)
        .with_context(|| format!("cannot replace {}", client.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Renews the cluster's client certificate if it is due, through the first running
/// manager. A renewal that fails while the certificate still works is reported, not fatal.
pub async fn refresh(dir: &ClusterDir, machines: &[Machine]) -> Result<Refresh> {
    let client = dir.client_dir();
    recover(&client);
    let current = not_after(&read(&client.join("cert.pem"))?)?;
    if !renewal_due(current, SystemTime::now()) {
        return Ok(Refresh::Fresh);
    }
    match renew(dir, machines).await {
        Ok(not_after) => Ok(Refresh::Renewed { not_after }),
        Err(error) if current > SystemTime::now() => Ok(Refresh::Failed {
            not_after: current,
            error,
        }),
        Err(error) => Err(error.context(format!(
            "the client certificate in {} has expired and cannot be renewed",
            client.display()
        ))),
    }
}

async fn renew(dir: &ClusterDir, machines: &[Machine]) -> Result<SystemTime> {
    let mut managers: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.role == Role::Manager)
        .collect();
    managers.sort_by_key(|m| m.power != PowerState::Running);
    let ssh = crate::commands::ssh_options(dir);
    let mut last = None;
    for manager in managers {
        match swarmup_bootstrap::fetch_client_cert(manager, &ssh).await {
            Ok(cert) => {
                let expires = not_after(cert.cert_pem.as_bytes())?;
                write_bundle(
                    &dir.client_dir(),
                    &cert.ca_pem,
                    &cert.cert_pem,
                    &cert.key_pem,
                )?;
                return Ok(expires);
            }
            Err(e) => last = Some(anyhow::Error::new(e).context(manager.name.clone())),
        }
    }
    match last {
        Some(e) => Err(e),
        None => bail!("the cluster has no manager to issue a client certificate"),
    }
}

/// Refreshes the certificate and says so on stderr: a renewal, or a renewal that failed
/// while expiry is near.
pub async fn refresh_and_tell(dir: &ClusterDir, machines: &[Machine]) -> Result<()> {
    let now = SystemTime::now();
    match refresh(dir, machines).await? {
        Refresh::Fresh => {}
        Refresh::Renewed { not_after } => eprintln!(
            "renewed the cluster's client certificate (now valid for {} days)",
            days_left(not_after, now)
        ),
        Refresh::Failed { not_after, error } => eprintln!(
            "warning: the cluster's client certificate expires in {} days and could not be renewed: {error:#}",
            days_left(not_after, now)
        ),
    }
    Ok(())
}

/// The TLS client for the cluster's Docker API, with the stored client certificate.
pub fn tls_client(dir: &ClusterDir, timeout: Option<Duration>) -> Result<reqwest::Client> {
    let client_dir = dir.client_dir();
    recover(&client_dir);
    let ca = read(&client_dir.join("ca.pem"))?;
    let mut identity = read(&client_dir.join("cert.pem"))?;
    identity.extend_from_slice(&read(&client_dir.join("key.pem"))?);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.context("invalid ca.pem")?)?;
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut identity.as_slice())
        .collect::<Result<_, _>>()
        .context("invalid cert.pem")?;
    let key = rustls_pemfile::private_key(&mut identity.as_slice())
        .context("invalid key.pem")?
        .context("key.pem holds no key")?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(5));
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_is_due_within_thirty_days_and_after_expiry() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert!(!renewal_due(now + 365 * DAY, now));
        assert!(!renewal_due(now + 31 * DAY, now));
        assert!(renewal_due(now + 29 * DAY, now));
        assert!(renewal_due(now - DAY, now));
        assert_eq!(days_left(now + 29 * DAY, now), 29);
        assert_eq!(days_left(now - Duration::from_secs(10), now), -1);
    }

    #[test]
    fn a_bundle_is_replaced_whole_and_a_half_replaced_one_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let client = tmp.path().join("client");
        write_bundle(&client, "ca1", "cert1", "key1").unwrap();
        write_bundle(&client, "ca2", "cert2", "key2").unwrap();
        assert_eq!(
            std::fs::read_to_string(client.join("cert.pem")).unwrap(),
            "cert2"
        );
        assert_eq!(
            std::fs::read_to_string(client.join("key.pem")).unwrap(),
            "key2"
        );
        assert!(!sibling(&client, "old").exists());
        // A crash after the old directory moved aside and before the new one moved in.
        std::fs::rename(&client, sibling(&client, "old")).unwrap();
        write_bundle(&sibling(&client, "scratch"), "ca3", "cert3", "key3").unwrap();
        std::fs::rename(sibling(&client, "scratch"), sibling(&client, "new")).unwrap();
        recover(&client);
        assert_eq!(
            std::fs::read_to_string(client.join("cert.pem")).unwrap(),
            "cert3"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(client.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
