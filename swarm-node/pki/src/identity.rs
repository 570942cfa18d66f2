//! Who a certificate says its holder is, and a node's own identity on disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use swarm_state::proto::{OU_MANAGER, OU_WORKER};
use tokio::io::AsyncWriteExt;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

use crate::{pem, PkiError};

/// The organisational unit of administrator client certificates.
pub const OU_ADMIN: &str = "swarmup-admin";
/// The name [`PeerIdentity::local_admin`] gives callers on the local unix socket.
pub const LOCAL_ADMIN_NAME: &str = "local";

/// Under the node's state directory, as in Docker (`/var/lib/docker/swarm/certificates`).
pub const CERTIFICATES_DIR: &str = "certificates";
pub const NODE_CERT_FILE: &str = "swarm-node.crt";
pub const NODE_KEY_FILE: &str = "swarm-node.key";
pub const CA_CERT_FILE: &str = "swarm-root-ca.crt";

/// The role a certificate grants, from its OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
    /// An operator's client (the docker CLI, swarmup); never a node.
    Admin,
}

impl Role {
    /// The OU written into certificates for this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => OU_MANAGER,
            Role::Worker => OU_WORKER,
            Role::Admin => OU_ADMIN,
        }
    }

    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            OU_MANAGER => Some(Role::Manager),
            OU_WORKER => Some(Role::Worker),
            OU_ADMIN => Some(Role::Admin),
            _ => None,
        }
    }

    /// "manager", "worker" or "admin", as in Docker's API and [`swarm_state::proto`].
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Role, PkiError> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(PkiError::InvalidRequest(format!(
                "unknown role {other:?}: expected manager, worker or admin"
            ))),
        }
    }
}

/// What a certificate's subject says: CN = node id (or client name), OU = role,
/// O = cluster id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

impl PeerIdentity {
    /// Reads the subject of a DER certificate. It does not verify the certificate: the
    /// TLS handshake or [`Identity::verify`] does that.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::InvalidCertificate(format!("does not parse: {e}")))?;
        let subject = cert.subject();
        let node_id = name_attribute(subject.iter_common_name(), "common name (node id)")?;
        let ou = name_attribute(
            subject.iter_organizational_unit(),
            "organisational unit (role)",
        )?;
        let cluster_id = name_attribute(subject.iter_organization(), "organisation (cluster id)")?;
        let role = Role::from_ou(&ou).ok_or_else(|| {
            PkiError::InvalidCertificate(format!(
                "certificate of {node_id} has unknown role OU {ou:?} (expected {OU_MANAGER}, {OU_WORKER} or {OU_ADMIN})"
            ))
        })?;
        Ok(PeerIdentity {
            node_id,
            role,
            cluster_id,
        })
    }

    /// As [`PeerIdentity::from_der`], for the first certificate of a PEM text.
    pub fn from_pem(pem_text: &str) -> Result<PeerIdentity, PkiError> {
        let certs = pem::certificates(pem_text, "the certificate")?;
        PeerIdentity::from_der(&certs[0])
    }

    /// The identity of a caller on the local unix socket, which only root can open. Its
    /// cluster id is empty: the socket is not tied to a cluster.
    pub fn local_admin() -> PeerIdentity {
        PeerIdentity {
            node_id: LOCAL_ADMIN_NAME.into(),
            role: Role::Admin,
            cluster_id: String::new(),
        }
    }
}

fn name_attribute<'a, 'b: 'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
    what: &str,
) -> Result<String, PkiError> {
    let value = values
        .next()
        .ok_or_else(|| PkiError::InvalidCertificate(format!("the subject has no {what}")))?;
    value
        .as_str()
        .map(str::to_owned)
        .map_err(|e| PkiError::InvalidCertificate(format!("the subject's {what} is not text: {e}")))
}

/// The validity window (not before, not after) of the first certificate in a PEM text,
/// for scheduling renewal.
pub fn certificate_validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let certs = pem::certificates(cert_pem, "the certificate")?;
    let (_, cert) = X509Certificate::from_der(&certs[0])
        .map_err(|e| PkiError::InvalidCertificate(format!("does not parse: {e}")))?;
    let validity = cert.validity();
    Ok((
        to_system_time(validity.not_before.timestamp()),
        to_system_time(validity.not_after.timestamp()),
    ))
}

/// What a node should do about its certificate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalPlan {
    /// Nothing until then: the chosen point of the renewal window.
    At(SystemTime),
    /// The chosen point has passed (for instance while the node was down): renew now.
    Now,
    /// Past notAfter: no manager accepts the certificate any more, so it cannot renew
    /// over mutual TLS; the node must join again.
    Expired,
}

/// When to renew a certificate valid from `not_before` to `not_after`: at a point between
/// 50 % and 80 % of its lifetime, as SwarmKit does, chosen by `fraction` (0.0 to 1.0,
/// random per certificate so that nodes do not all renew together).
pub fn renewal_plan(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    fraction: f64,
) -> RenewalPlan {
    if now >= not_after {
        return RenewalPlan::Expired;
    }
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let share = 0.5 + 0.3 * fraction.clamp(0.0, 1.0);
    let at = not_before + lifetime.mul_f64(share);
    if now >= at {
        RenewalPlan::Now
    } else {
        RenewalPlan::At(at)
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// A node's own TLS identity: its certificate, its key and the cluster's root CA, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Identity");
        if let Ok(peer) = self.peer() {
            s.field("node_id", &peer.node_id).field("role", &peer.role);
        }
        s.finish_non_exhaustive()
    }
}

impl Identity {
    /// `dir/certificates`, where [`Identity::save`] writes.
    pub fn certificates_dir(dir: &Path) -> PathBuf {
        dir.join(CERTIFICATES_DIR)
    }

    /// Whether a node certificate has been saved under `dir`.
    pub async fn exists(dir: &Path) -> bool {
        tokio::fs::try_exists(Self::certificates_dir(dir).join(NODE_CERT_FILE))
            .await
            .unwrap_or(false)
    }

    /// Reads the identity saved under `dir/certificates/` and checks it with
    /// [`Identity::verify`].
    pub async fn load(dir: &Path) -> Result<Identity, PkiError> {
        let certs = Self::certificates_dir(dir);
        let read = |name: &'static str| {
            let path = certs.join(name);
            async move {
                tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| PkiError::io("read", path, e))
            }
        };
        let identity = Identity {
            cert_pem: read(NODE_CERT_FILE).await?,
            key_pem: read(NODE_KEY_FILE).await?,
            ca_pem: read(CA_CERT_FILE).await?,
        };
        identity.verify().map_err(|e| PkiError::UnusableIdentity {
            dir: certs.clone(),
            source: Box::new(e),
        })?;
        Ok(identity)
    }

    /// Writes the identity under `dir/certificates/` (created 0700 if missing). Each file
    /// is replaced atomically; the key file is mode 0600. The key is written before the
    /// certificate, so a renewal that keeps its key never leaves a mismatched pair.
    pub async fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let certs = Self::certificates_dir(dir);
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&certs)
            .await
            .map_err(|e| PkiError::io("create", &certs, e))?;
        write_atomic(&certs, CA_CERT_FILE, &self.ca_pem, 0o600).await?;
        write_atomic(&certs, NODE_KEY_FILE, &self.key_pem, 0o600).await?;
        write_atomic(&certs, NODE_CERT_FILE, &self.cert_pem, 0o600).await?;
        // Renames are durable only once the directory itself is synced.
        let dir_handle = tokio::fs::File::open(&certs)
            .await
            .map_err(|e| PkiError::io("open", &certs, e))?;
        dir_handle
            .sync_all()
            .await
            .map_err(|e| PkiError::io("sync", &certs, e))?;
        Ok(())
    }

    /// Who this identity's certificate says we are.
    pub fn peer(&self) -> Result<PeerIdentity, PkiError> {
        PeerIdentity::from_pem(&self.cert_pem)
    }

    /// The validity window of the node certificate.
    pub fn validity(&self) -> Result<(SystemTime, SystemTime), PkiError> {
        certificate_validity(&self.cert_pem)
    }

    /// Checks that the key belongs to the certificate, that the root CA signed the
    /// certificate and that the subject names a role. It does not look at the clock.
    pub fn verify(&self) -> Result<(), PkiError> {
        let cert_der = pem::certificates(&self.cert_pem, "the node certificate")?.remove(0);
        let ca_der = pem::single_certificate(&self.ca_pem, "the root CA certificate")?;
        let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| {
            PkiError::InvalidCertificate(format!("the node certificate does not parse: {e}"))
        })?;
        let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| {
            PkiError::InvalidCertificate(format!("the root CA certificate does not parse: {e}"))
        })?;
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| PkiError::InvalidKey(format!("the node key: {e}")))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::InvalidKey(
                "the node key does not belong to the node certificate".into(),
            ));
        }
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            PkiError::InvalidCertificate(format!(
                "the node certificate was not signed by the root CA ({})",
                display_name(ca.subject())
            ))
        })?;
        PeerIdentity::from_der(&cert_der)?;
        Ok(())
    }
}

fn display_name(name: &X509Name<'_>) -> String {
    name.to_string()
}

/// Writes `dir/name` through a temporary file in the same directory and a rename, so a
/// crash leaves either the old or the new content.
async fn write_atomic(dir: &Path, name: &str, content: &str, mode: u32) -> Result<(), PkiError> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp-{}", rand::random::<u32>()));
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .await
            .map_err(|e| PkiError::io("create", &temp, e))?;
        file.write_all(content.as_bytes())
            .await
            .map_err(|e| PkiError::io("write", &temp, e))?;
        file.sync_all()
            .await
            .map_err(|e| PkiError::io("sync", &temp, e))?;
        tokio::fs::rename(&temp, &target)
            .await
            .map_err(|e| PkiError::io("replace", &target, e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renews_between_half_and_four_fifths_of_the_lifetime() {
        assert_eq!(
            renewal_plan(t(0), t(100), t(10), 0.0),
            RenewalPlan::At(t(50))
        );
        assert_eq!(
            renewal_plan(t(0), t(100), t(10), 1.0),
            RenewalPlan::At(t(80))
        );
        assert_eq!(
            renewal_plan(t(0), t(100), t(10), 0.5),
            RenewalPlan::At(t(65))
        );
        // Out-of-range fractions stay in the window.
        assert_eq!(
            renewal_plan(t(0), t(100), t(10), 7.0),
            RenewalPlan::At(t(80))
        );
        assert_eq!(
            renewal_plan(t(0), t(100), t(10), -1.0),
            RenewalPlan::At(t(50))
        );
    }

    #[test]
    fn past_the_chosen_point_renews_at_once() {
        assert_eq!(renewal_plan(t(0), t(100), t(50), 0.0), RenewalPlan::Now);
        assert_eq!(renewal_plan(t(0), t(100), t(99), 1.0), RenewalPlan::Now);
        assert_eq!(
            renewal_plan(t(0), t(100), t(79), 1.0),
            RenewalPlan::At(t(80))
        );
    }

    #[test]
    fn an_expired_certificate_cannot_renew() {
        assert_eq!(
            renewal_plan(t(0), t(100), t(100), 0.3),
            RenewalPlan::Expired
        );
        assert_eq!(
            renewal_plan(t(0), t(100), t(5000), 0.3),
            RenewalPlan::Expired
        );
    }

    #[test]
    fn ninety_day_certificates_renew_after_45_days() {
        let day = 24 * 60 * 60;
        assert_eq!(
            renewal_plan(t(0), t(90 * day), t(day), 0.0),
            RenewalPlan::At(t(45 * day))
        );
        assert_eq!(
            renewal_plan(t(0), t(90 * day), t(day), 1.0),
            RenewalPlan::At(t(72 * day))
        );
    }
}
