//! The cluster's SSH keys: the login key swarmup uses, one host key per machine, and the
//! known_hosts file that pins those host keys.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, LineEnding, PrivateKey};
use swarmup_machine::{ClusterPlan, HostKey, Machine};

use crate::error::BootstrapError;
use crate::fsutil::write_atomic;

/// The key swarmup logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginKey {
    /// OpenSSH private key file, mode 0600.
    pub private_key_path: PathBuf,
    /// `ssh-ed25519 AAAA... comment`, also written to `PATH.pub`.
    pub public_openssh: String,
}

fn generate(comment: &str) -> Result<PrivateKey, BootstrapError> {
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .map_err(|e| BootstrapError::Invalid(format!("cannot generate an ed25519 key: {e}")))?;
    key.set_comment(comment);
    Ok(key)
}

fn public_line(key: &PrivateKey) -> Result<String, BootstrapError> {
    key.public_key()
        .to_openssh()
        .map_err(|e| BootstrapError::Invalid(format!("cannot encode an ed25519 public key: {e}")))
}

/// Loads the login key at `path`, or generates an ed25519 key there (0600, with
/// `PATH.pub` next to it) when there is none. Re-runs keep the key the machines
/// already trust.
pub async fn ensure_login_key(path: &Path, comment: &str) -> Result<LoginKey, BootstrapError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            let key = PrivateKey::from_openssh(&text).map_err(|e| {
                BootstrapError::Invalid(format!(
                    "{} is not an OpenSSH private key ({e}): remove it to have swarmup create a new one",
                    path.display()
                ))
            })?;
            if key.is_encrypted() {
                return Err(BootstrapError::Invalid(format!(
                    "{} is protected by a passphrase: swarmup needs an unencrypted cluster key",
                    path.display()
                )));
            }
            Ok(LoginKey {
                private_key_path: path.to_path_buf(),
                public_openssh: public_line(&key)?,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate(comment)?;
            let private = key.to_openssh(LineEnding::LF).map_err(|e| {
                BootstrapError::Invalid(format!("cannot encode an ed25519 private key: {e}"))
            })?;
            let public = public_line(&key)?;
            write_atomic(path, private.as_bytes(), 0o600)
                .await
                .map_err(|e| BootstrapError::io(format!("writing {}", path.display()), e))?;
            let pub_path = pub_path(path);
            write_atomic(&pub_path, format!("{public}\n").as_bytes(), 0o644)
                .await
                .map_err(|e| BootstrapError::io(format!("writing {}", pub_path.display()), e))?;
            Ok(LoginKey {
                private_key_path: path.to_path_buf(),
                public_openssh: public,
            })
        }
        Err(e) => Err(BootstrapError::io(format!("reading {}", path.display()), e)),
    }
}

fn pub_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// A fresh ed25519 host key for one machine; `comment` is usually the machine name.
pub fn generate_host_key(comment: &str) -> Result<HostKey, BootstrapError> {
    let key = generate(comment)?;
    let private = key.to_openssh(LineEnding::LF).map_err(|e| {
        BootstrapError::Invalid(format!("cannot encode an ed25519 private key: {e}"))
    })?;
    Ok(HostKey {
        private_openssh: private.to_string(),
        public_openssh: public_line(&key)?,
    })
}

/// One machine's line in the cluster's known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHost {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// `ssh-ed25519 AAAA...`, a trailing comment is dropped.
    pub public_key: String,
}

impl KnownHost {
    /// `NAME,IP ssh-ed25519 AAAA...`, or `[NAME]:PORT,[IP]:PORT ...` off port 22, the
    /// way ssh looks hosts up.
    pub fn line(&self) -> String {
        let mut words = self.public_key.split_whitespace();
        let key = match (words.next(), words.next()) {
            (Some(kind), Some(blob)) => format!("{kind} {blob}"),
            _ => self.public_key.trim().to_string(),
        };
        if self.port == 22 {
            format!("{},{} {key}", self.name, self.addr)
        } else {
            format!(
                "[{}]:{p},[{}]:{p} {key}",
                self.name,
                self.addr,
                p = self.port
            )
        }
    }
}

/// The known_hosts entries of `machines`, with host keys from `plan`.
pub fn known_hosts_entries(
    plan: &ClusterPlan,
    machines: &[Machine],
) -> Result<Vec<KnownHost>, BootstrapError> {
    machines
        .iter()
        .map(|m| {
            let planned = plan
                .machines
                .iter()
                .find(|p| p.name == m.name)
                .ok_or_else(|| {
                    BootstrapError::Invalid(format!(
                        "machine {} is not in the plan of cluster {}, so its host key is unknown",
                        m.name, plan.cluster
                    ))
                })?;
            Ok(KnownHost {
                name: m.name.clone(),
                addr: m.ssh.host,
                port: m.ssh.port,
                public_key: planned.host_key.public_openssh.clone(),
            })
        })
        .collect()
}

/// Replaces the cluster's known_hosts file with `entries`. The file belongs to swarmup
/// alone, so it is rewritten whole.
pub async fn write_known_hosts(path: &Path, entries: &[KnownHost]) -> Result<(), BootstrapError> {
    let mut text = String::new();
    for entry in entries {
        if entry.public_key.contains(['\n', '\r'])
            || entry.public_key.split_whitespace().count() < 2
        {
            return Err(BootstrapError::Invalid(format!(
                "host key of {} is not a one-line OpenSSH public key",
                entry.name
            )));
        }
        text.push_str(&entry.line());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes(), 0o644)
        .await
        .map_err(|e| BootstrapError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines() {
        let entry = KnownHost {
            name: "c1-node1".into(),
            addr: "10.0.0.2".parse().unwrap(),
            port: 22,
            public_key: "ssh-ed25519 AAAAC3Nz c1-node1".into(),
        };
        assert_eq!(entry.line(), "c1-node1,10.0.0.2 ssh-ed25519 AAAAC3Nz");
        let entry = KnownHost {
            port: 2222,
            addr: "2001:db8::1".parse().unwrap(),
            ..entry
        };
        assert_eq!(
            entry.line(),
            "[c1-node1]:2222,[2001:db8::1]:2222 ssh-ed25519 AAAAC3Nz"
        );
    }

    #[test]
    fn host_keys_are_ed25519_openssh() {
        let key = generate_host_key("c1-node1").unwrap();
        assert!(key.public_openssh.starts_with("ssh-ed25519 "));
        assert!(key.public_openssh.ends_with(" c1-node1"));
        let parsed = PrivateKey::from_openssh(&key.private_openssh).unwrap();
        assert_eq!(
            parsed.public_key().to_openssh().unwrap(),
            key.public_openssh
        );
        assert_ne!(
            generate_host_key("x").unwrap().public_openssh,
            generate_host_key("x").unwrap().public_openssh
        );
    }

    #[tokio::test]
    async fn login_key_is_created_once_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/id_ed25519");
        let first = ensure_login_key(&path, "swarmup@c1").await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let public = std::fs::read_to_string(dir.path().join("keys/id_ed25519.pub")).unwrap();
        assert_eq!(public.trim(), first.public_openssh);
        let second = ensure_login_key(&path, "swarmup@c1").await.unwrap();
        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn login_key_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        std::fs::write(&path, "hello").unwrap();
        let err = ensure_login_key(&path, "x").await.unwrap_err().to_string();
        assert!(err.contains("is not an OpenSSH private key"), "{err}");
    }
}
