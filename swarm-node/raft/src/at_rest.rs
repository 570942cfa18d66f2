//! Encryption of the Raft data at rest.
//!
//! The replicated state holds the root CA key and the join tokens, so the journal and the
//! snapshot never reach the disk in plain text. Each manager has its own data key, 32
//! random bytes in `data.key` (0600, made on first start); the leader sends snapshots to
//! followers in plain text over mutual TLS and each follower seals them with its own key.
//!
//! Every sealed blob (one journal record, or a whole snapshot) starts with a header:
//!
//! ```text
//! "SWRE" | version u8 (1) | algorithm u8 (1 = AES-256-GCM) | key id u32 LE | nonce (12 bytes)
//! ```
//!
//! followed by the ciphertext and its tag. The header and a context (the record's
//! position in the journal, or "snapshot") are the associated data, so a record moved to
//! another position, or a header edited, fails to open. The key id lets a later key
//! rotation keep several keys without a format change.
//!
//! The key file has a header of its own:
//!
//! ```text
//! "SWDK" | version u8 (1) | wrapping u8 (0 = none) | key id u32 LE | key (32 bytes)
//! ```
//!
//! An unlock key (autolock) will wrap the key under another `wrapping` value; this version
//! refuses such a file with a clear message rather than misreading it.
//!
//! Nonces are random (96 bits): safe for far more records than a swarm writes under one
//! key.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::fsio;

/// The data key's file inside the Raft directory.
pub(crate) const KEY_FILE: &str = "data.key";

const KEY_MAGIC: &[u8; 4] = b"SWDK";
const BLOB_MAGIC: &[u8; 4] = b"SWRE";
const VERSION: u8 = 1;
const WRAP_NONE: u8 = 0;
const ALG_AES_256_GCM: u8 = 1;
const KEY_LEN: usize = 32;
const KEY_FILE_LEN: usize = 4 + 1 + 1 + 4 + KEY_LEN;
/// Length of a sealed blob's header.
pub(crate) const HEADER_LEN: usize = 4 + 1 + 1 + 4 + NONCE_LEN;

/// Modes of everything under the Raft directory: only the daemon's user reads it.
pub(crate) const DIR_MODE: u32 = 0o700;
pub(crate) const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AtRestError {
    #[error("{}: not a swarm-node data key file (bad header or length {len})", path.display())]
    BadKeyFile { path: PathBuf, len: usize },
    #[error("{}: data key format version {version} is not supported by this swarm-node", path.display())]
    KeyVersion { path: PathBuf, version: u8 },
    #[error("{}: the data key is wrapped with an unlock key (kind {kind}), which this swarm-node cannot unlock", path.display())]
    Wrapped { path: PathBuf, kind: u8 },
    #[error("{}: the raft data here is encrypted but its key file {} is missing; restore that file from a backup of this manager, or remove this manager's state and join it again", dir.display(), dir.join(KEY_FILE).display())]
    KeyMissing { dir: PathBuf },
    #[error("encrypted data too short or with a bad header")]
    BadBlob,
    #[error(
        "encrypted data format version {0} or algorithm {1} is not supported by this swarm-node"
    )]
    BlobVersion(u8, u8),
    #[error("encrypted with data key {blob:08x}, but {} holds key {key:08x}", path.display())]
    OtherKey { blob: u32, key: u32, path: PathBuf },
    #[error("cannot decrypt with the key in {}: wrong key, or the data was altered or moved", path.display())]
    Decrypt { path: PathBuf },
    #[error("encryption failed")]
    Seal,
    #[error("no randomness from the system")]
    Random,
}

impl From<AtRestError> for io::Error {
    fn from(e: AtRestError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A manager's Raft data key.
pub(crate) struct DataKey {
    id: u32,
    key: LessSafeKey,
    /// Named in errors, so an operator knows which file to look at.
    path: PathBuf,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &format_args!("{:08x}", self.id))
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N], AtRestError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AtRestError::Random)?;
    Ok(b)
}

/// The key file's bytes for a fresh key.
fn new_key_file() -> Result<Vec<u8>, AtRestError> {
    let mut out = Vec::with_capacity(KEY_FILE_LEN);
    out.extend_from_slice(KEY_MAGIC);
    out.push(VERSION);
    out.push(WRAP_NONE);
    out.extend_from_slice(&random::<4>()?);
    out.extend_from_slice(&random::<KEY_LEN>()?);
    Ok(out)
}

/// True if `bytes` start like a sealed blob (plain JSON starts with `{`, `[` or `"`).
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(BLOB_MAGIC)
}

impl DataKey {
    fn parse(bytes: &[u8], path: &Path) -> Result<DataKey, AtRestError> {
        let bad = || AtRestError::BadKeyFile {
            path: path.to_path_buf(),
            len: bytes.len(),
        };
        if bytes.len() < 6 || !bytes.starts_with(KEY_MAGIC) {
            return Err(bad());
        }
        if bytes[4] != VERSION {
            return Err(AtRestError::KeyVersion {
                path: path.to_path_buf(),
                version: bytes[4],
            });
        }
        if bytes[5] != WRAP_NONE {
            return Err(AtRestError::Wrapped {
                path: path.to_path_buf(),
                kind: bytes[5],
            });
        }
        if bytes.len() != KEY_FILE_LEN {
            return Err(bad());
        }
        let id = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        let key = UnboundKey::new(&AES_256_GCM, &bytes[10..]).map_err(|_| bad())?;
        Ok(DataKey {
            id,
            key: LessSafeKey::new(key),
            path: path.to_path_buf(),
        })
    }

    /// Loads `dir/data.key`, creating it if it is missing and nothing in `dir` is sealed
    /// yet (a new manager, or state written by a version without encryption). Creation
    /// never replaces a key another process made at the same moment.
    pub(crate) fn load_or_create(dir: &Path) -> io::Result<DataKey> {
        let path = dir.join(KEY_FILE);
        if let Some(bytes) = fsio::read_optional(dir, KEY_FILE)? {
            return Ok(DataKey::parse(&bytes, &path)?);
        }
        if holds_sealed_data(dir)? {
            return Err(AtRestError::KeyMissing {
                dir: dir.to_path_buf(),
            }
            .into());
        }
        let bytes = new_key_file()?;
        let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .open(&tmp)
                .map_err(|e| fsio::with_path(e, &tmp))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| fsio::with_path(e, &tmp))?;
        }
        // A hard link, unlike a rename, fails if the target exists.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsio::sync_dir(dir)?;
                tracing::info!(path = %path.display(), "created the raft data key");
                Ok(DataKey::parse(&bytes, &path)?)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let bytes = fs::read(&path).map_err(|e| fsio::with_path(e, &path))?;
                Ok(DataKey::parse(&bytes, &path)?)
            }
            Err(e) => Err(fsio::with_path(e, &path)),
        }
    }

    /// Encrypts `plain`, bound to `context`.
    pub(crate) fn seal(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let nonce = random::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(BLOB_MAGIC);
        out.push(VERSION);
        out.push(ALG_AES_256_GCM);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&nonce);
        let aad = [&out[..], context].concat();
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| AtRestError::Seal)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a blob made by [`DataKey::seal`] with the same `context`.
    pub(crate) fn open(&self, blob: &[u8], context: &[u8]) -> Result<Vec<u8>, AtRestError> {
        if blob.len() < HEADER_LEN + AES_256_GCM.tag_len() || !is_sealed(blob) {
            return Err(AtRestError::BadBlob);
        }
        if blob[4] != VERSION || blob[5] != ALG_AES_256_GCM {
            return Err(AtRestError::BlobVersion(blob[4], blob[5]));
        }
        let id = u32::from_le_bytes([blob[6], blob[7], blob[8], blob[9]]);
        if id != self.id {
            return Err(AtRestError::OtherKey {
                blob: id,
                key: self.id,
                path: self.path.clone(),
            });
        }
        let (header, body) = blob.split_at(HEADER_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(&header[10..]).map_err(|_| AtRestError::BadBlob)?;
        let aad = [header, context].concat();
        let mut body = body.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| AtRestError::Decrypt {
                path: self.path.clone(),
            })?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

/// True if the journal's first record or the snapshot is sealed.
fn holds_sealed_data(dir: &Path) -> io::Result<bool> {
    // The journal's first record payload follows its 8-byte length and checksum.
    Ok(starts_sealed(&dir.join(crate::log_store::JOURNAL), 8)?
        || starts_sealed(&dir.join(crate::state_machine::SNAPSHOT), 0)?)
}

fn starts_sealed(path: &Path, offset: usize) -> io::Result<bool> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(fsio::with_path(e, path)),
    };
    let mut head = Vec::with_capacity(offset + BLOB_MAGIC.len());
    f.take((offset + BLOB_MAGIC.len()) as u64)
        .read_to_end(&mut head)
        .map_err(|e| fsio::with_path(e, path))?;
    Ok(head.len() > offset && is_sealed(&head[offset..]))
}

/// Creates `dir` (and missing parents) as 0700, and tightens `dir` and the files in it to
/// 0700 / 0600 where an older version left them readable by others.
pub(crate) fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| fsio::with_path(e, dir))?;
    tighten(dir, DIR_MODE)?;
    for entry in fs::read_dir(dir).map_err(|e| fsio::with_path(e, dir))? {
        let entry = entry.map_err(|e| fsio::with_path(e, dir))?;
        let ty = entry
            .file_type()
            .map_err(|e| fsio::with_path(e, &entry.path()))?;
        if ty.is_file() {
            tighten(&entry.path(), FILE_MODE)?;
        } else if ty.is_dir() {
            tighten(&entry.path(), DIR_MODE)?;
        }
    }
    Ok(())
}

/// Removes every permission bit `mode` does not have; never widens.
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::metadata(path).map_err(|e| fsio::with_path(e, path))?;
    let current = meta.permissions().mode() & 0o7777;
    let wanted = current & mode;
    if current != wanted {
        fs::set_permissions(path, fs::Permissions::from_mode(wanted))
            .map_err(|e| fsio::with_path(e, path))?;
        tracing::info!(path = %path.display(), from = format!("{current:o}"), to = format!("{wanted:o}"), "tightened permissions");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key_in(dir: &Path) -> std::sync::Arc<DataKey> {
        prepare_dir(dir).unwrap();
        std::sync::Arc::new(DataKey::load_or_create(dir).unwrap())
    }

    /// A command that carries `secret` in the replicated state.
    pub(crate) fn secret_command(id: &str, secret: &str) -> swarm_state::Command {
        use swarm_state::models::{Service, ServiceSpec};
        swarm_state::Command::CreateService {
            service: Box::new(Service {
                id: Some(id.into()),
                spec: Some(ServiceSpec {
                    name: Some(format!("{secret}-{id}")),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// Files under `dir` whose bytes contain `needle`.
    pub(crate) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .filter(|p| {
                fs::read(p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            })
            .collect()
    }

    /// Asserts `dir` is 0700 and every file in it 0600.
    pub(crate) fn assert_private(dir: &Path) {
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_missing_key_with_encrypted_data_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        fs::write(
            dir.path().join(crate::state_machine::SNAPSHOT),
            key.seal(b"{}", b"snapshot").unwrap(),
        )
        .unwrap();
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let err = DataKey::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("data.key") && err.contains("missing"), "{err}");
        // And no new key was made in its place.
        assert!(!dir.path().join(KEY_FILE).exists());
    }

    #[test]
    fn seal_and_open_round_trip_and_bind_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let blob = key.seal(b"root CA key", b"ctx-1").unwrap();
        assert!(is_sealed(&blob));
        assert!(!blob.windows(6).any(|w| w == b"root C"));
        assert_eq!(key.open(&blob, b"ctx-1").unwrap(), b"root CA key");
        assert!(matches!(
            key.open(&blob, b"ctx-2"),
            Err(AtRestError::Decrypt { .. })
        ));
        // Two seals of the same text differ (random nonces).
        assert_ne!(blob, key.seal(b"root CA key", b"ctx-1").unwrap());
    }

    #[test]
    fn any_altered_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let blob = key.seal(b"secret", b"c").unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(key.open(&bad, b"c").is_err(), "byte {i} altered unnoticed");
        }
    }

    #[test]
    fn another_key_is_refused_with_the_key_file_named() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let blob = key_in(a.path()).seal(b"secret", b"c").unwrap();
        let err = key_in(b.path()).open(&blob, b"c").unwrap_err().to_string();
        assert!(
            err.contains(&b.path().join(KEY_FILE).display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state").join("raft");
        let k1 = key_in(&sub);
        let k2 = DataKey::load_or_create(&sub).unwrap();
        assert_eq!(k1.id, k2.id);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(fs::read(sub.join(KEY_FILE)).unwrap().len(), KEY_FILE_LEN);
    }

    #[test]
    fn a_wrapped_or_foreign_key_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = new_key_file().unwrap();
        bytes[5] = 1;
        fs::write(dir.path().join(KEY_FILE), &bytes).unwrap();
        let err = DataKey::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unlock key"), "{err}");
        fs::write(dir.path().join(KEY_FILE), b"hello").unwrap();
        let err = DataKey::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("data.key") && err.contains("not a swarm-node data key"),
            "{err}"
        );
    }

    #[test]
    fn prepare_dir_tightens_what_an_older_version_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join("raft");
        fs::create_dir(&raft).unwrap();
        fs::set_permissions(&raft, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(raft.join("raft.journal"), b"x").unwrap();
        fs::set_permissions(raft.join("raft.journal"), fs::Permissions::from_mode(0o644)).unwrap();
        prepare_dir(&raft).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&raft), 0o700);
        assert_eq!(mode(&raft.join("raft.journal")), 0o600);
    }
}
