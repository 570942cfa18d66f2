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
//! With autolock the key is wrapped by the swarm's unlock key (`SWMKEY-1-…`, 32 random
//! bytes held by the operator and replicated in the Raft state), `wrapping` 1:
//!
//! ```text
//! "SWDK" | version u8 (1) | wrapping u8 (1) | key id u32 LE | nonce (12 bytes) | sealed key (32 + 16 bytes)
//! ```
//!
//! The wrapping key is HKDF-SHA256 of the unlock key (the unlock key is already uniformly
//! random, so no password stretching is needed) and the sealing is AES-256-GCM with the
//! first ten bytes as associated data. A manager whose key file is wrapped cannot open its
//! Raft data until someone hands it the unlock key (`docker swarm unlock`); a wrong key
//! fails the GCM tag and changes nothing on disk. Unknown `wrapping` values are refused
//! with a clear message rather than misread.
//!
//! Nonces are random (96 bits): safe for far more records than a swarm writes under one
//! key.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::fsio;

/// The data key's file inside the Raft directory.
pub(crate) const KEY_FILE: &str = "data.key";

const KEY_MAGIC: &[u8; 4] = b"SWDK";
const BLOB_MAGIC: &[u8; 4] = b"SWRE";
const VERSION: u8 = 1;
const WRAP_NONE: u8 = 0;
/// Wrapped by the unlock key: HKDF-SHA256, then AES-256-GCM.
const WRAP_UNLOCK_KEY: u8 = 1;
const ALG_AES_256_GCM: u8 = 1;
const KEY_LEN: usize = 32;
const KEY_HEADER_LEN: usize = 4 + 1 + 1 + 4;
const KEY_FILE_LEN: usize = KEY_HEADER_LEN + KEY_LEN;
const WRAPPED_KEY_FILE_LEN: usize = KEY_HEADER_LEN + NONCE_LEN + KEY_LEN + 16;
/// What Docker puts in front of an unlock key.
const UNLOCK_KEY_PREFIX: &str = "SWMKEY-1-";
/// Binds wrapping keys to this use, so an unlock key never doubles as another AES key.
const WRAP_SALT: &[u8] = b"swarmup raft data key wrapping";
const WRAP_INFO: &[u8] = b"data.key v1";
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
    #[error("{}: the data key is wrapped with the swarm's unlock key (autolock): unlock this manager with `docker swarm unlock`", path.display())]
    Locked { path: PathBuf },
    #[error("{}: the unlock key does not open the data key", path.display())]
    WrongUnlockKey { path: PathBuf },
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

/// The swarm's unlock key (autolock): 32 random bytes, shown to people as Docker shows
/// them, `SWMKEY-1-` and unpadded standard base64. Never printed by `Debug`.
#[derive(Clone)]
pub struct UnlockKey([u8; KEY_LEN]);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl PartialEq for UnlockKey {
    /// Compares every byte, whatever the first difference.
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for UnlockKey {}

/// Why an unlock key was not taken. The words are Docker's, which the docker CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// Not `SWMKEY-1-` followed by the base64 of 32 bytes.
    #[error("invalid key string")]
    Malformed,
    /// A well-formed key that does not open this manager's data key.
    #[error("swarm could not be unlocked: invalid key provided")]
    WrongKey,
    /// The data key is not wrapped: there is nothing to unlock.
    #[error("swarm is not locked")]
    NotLocked,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl UnlockKey {
    /// A new random key.
    pub fn generate() -> io::Result<UnlockKey> {
        Ok(UnlockKey(random::<KEY_LEN>()?))
    }

    /// Reads Docker's form, `SWMKEY-1-<base64>` (surrounding blanks ignored; padding
    /// accepted, since some tools add it).
    pub fn parse(text: &str) -> Result<UnlockKey, UnlockError> {
        let encoded = text
            .trim()
            .strip_prefix(UNLOCK_KEY_PREFIX)
            .ok_or(UnlockError::Malformed)?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| UnlockError::Malformed)?;
        Ok(UnlockKey(
            bytes.try_into().map_err(|_| UnlockError::Malformed)?,
        ))
    }

    /// Docker's form, `SWMKEY-1-<base64 without padding>`.
    pub fn to_human(&self) -> String {
        format!(
            "{UNLOCK_KEY_PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
        )
    }

    /// The AES-256-GCM key that wraps data keys.
    fn wrapping_key(&self) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, WRAP_SALT).extract(&self.0);
        let okm = prk
            .expand(&[WRAP_INFO], &AES_256_GCM)
            .expect("an AES-256 key is a valid HKDF output length");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// What a manager's key file says about autolock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileState {
    /// No key file yet (a new manager, or a worker).
    Missing,
    /// The data key is in clear: the manager starts without help.
    Clear,
    /// The data key is wrapped by an unlock key: the manager starts locked.
    Wrapped,
}

/// Reads what `dir/data.key` says about autolock, without needing any key.
pub fn key_file_state(dir: &Path) -> io::Result<KeyFileState> {
    let Some(bytes) = fsio::read_optional(dir, KEY_FILE)? else {
        return Ok(KeyFileState::Missing);
    };
    if bytes.len() < KEY_HEADER_LEN || !bytes.starts_with(KEY_MAGIC) {
        return Err(AtRestError::BadKeyFile {
            path: dir.join(KEY_FILE),
            len: bytes.len(),
        }
        .into());
    }
    Ok(if bytes[5] == WRAP_NONE {
        KeyFileState::Clear
    } else {
        KeyFileState::Wrapped
    })
}

/// Checks that `key` opens the wrapped data key in `dir`; reads only.
pub fn check_unlock_key(dir: &Path, key: &UnlockKey) -> Result<(), UnlockError> {
    let path = dir.join(KEY_FILE);
    let bytes = fsio::read_optional(dir, KEY_FILE)?.ok_or_else(|| {
        UnlockError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: no data key", path.display()),
        ))
    })?;
    match DataKey::parse(&bytes, &path, Some(key)) {
        Ok(k) if k.wrapped => Ok(()),
        Ok(_) => Err(UnlockError::NotLocked),
        Err(AtRestError::WrongUnlockKey { .. }) => Err(UnlockError::WrongKey),
        Err(e) => Err(UnlockError::Io(e.into())),
    }
}

/// A manager's Raft data key.
pub(crate) struct DataKey {
    id: u32,
    key: LessSafeKey,
    /// Kept to rewrite the key file when autolock changes.
    raw: [u8; KEY_LEN],
    /// Whether the file it came from was wrapped.
    wrapped: bool,
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

/// The key file's bytes for key `raw` with id `id`, wrapped by `unlock` if given.
fn key_file_bytes(
    id: u32,
    raw: &[u8; KEY_LEN],
    unlock: Option<&UnlockKey>,
) -> Result<Vec<u8>, AtRestError> {
    let mut out = Vec::with_capacity(WRAPPED_KEY_FILE_LEN);
    out.extend_from_slice(KEY_MAGIC);
    out.push(VERSION);
    out.push(if unlock.is_some() {
        WRAP_UNLOCK_KEY
    } else {
        WRAP_NONE
    });
    out.extend_from_slice(&id.to_le_bytes());
    match unlock {
        None => out.extend_from_slice(raw),
        Some(unlock) => {
            let nonce = random::<NONCE_LEN>()?;
            let mut sealed = raw.to_vec();
            unlock
                .wrapping_key()
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(out.clone()),
                    &mut sealed,
                )
                .map_err(|_| AtRestError::Seal)?;
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    Ok(out)
}

/// The key file's bytes for a fresh key.
fn new_key_file() -> Result<Vec<u8>, AtRestError> {
    key_file_bytes(
        u32::from_le_bytes(random::<4>()?),
        &random::<KEY_LEN>()?,
        None,
    )
}

/// True if `bytes` start like a sealed blob (plain JSON starts with `{`, `[` or `"`).
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(BLOB_MAGIC)
}

impl DataKey {
    /// Reads a key file; a wrapped one needs `unlock`.
    fn parse(
        bytes: &[u8],
        path: &Path,
        unlock: Option<&UnlockKey>,
    ) -> Result<DataKey, AtRestError> {
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
        let (raw, wrapped) = match bytes[5] {
            WRAP_NONE if bytes.len() == KEY_FILE_LEN => {
                let raw: [u8; KEY_LEN] = bytes[KEY_HEADER_LEN..].try_into().map_err(|_| bad())?;
                (raw, false)
            }
            WRAP_UNLOCK_KEY if bytes.len() == WRAPPED_KEY_FILE_LEN => {
                let unlock = unlock.ok_or_else(|| AtRestError::Locked {
                    path: path.to_path_buf(),
                })?;
                let (header, rest) = bytes.split_at(KEY_HEADER_LEN);
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
                let mut body = sealed.to_vec();
                let plain = unlock
                    .wrapping_key()
                    .open_in_place(nonce, Aad::from(header), &mut body)
                    .map_err(|_| AtRestError::WrongUnlockKey {
                        path: path.to_path_buf(),
                    })?;
                let raw: [u8; KEY_LEN] = (&*plain).try_into().map_err(|_| bad())?;
                (raw, true)
            }
            WRAP_NONE | WRAP_UNLOCK_KEY => return Err(bad()),
            kind => {
                return Err(AtRestError::Wrapped {
                    path: path.to_path_buf(),
                    kind,
                })
            }
        };
        let id = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| bad())?;
        Ok(DataKey {
            id,
            key: LessSafeKey::new(key),
            raw,
            wrapped,
            path: path.to_path_buf(),
        })
    }

    /// Loads `dir/data.key` (unwrapping it with `unlock` if it is wrapped), creating it
    /// if it is missing and nothing in `dir` is sealed yet (a new manager, or state
    /// written by a version without encryption). Creation never replaces a key another
    /// process made at the same moment. A new key file is in clear: the manager wraps it
    /// once its state says autolock is on.
    pub(crate) fn load_or_create(dir: &Path, unlock: Option<&UnlockKey>) -> io::Result<DataKey> {
        let path = dir.join(KEY_FILE);
        if let Some(bytes) = fsio::read_optional(dir, KEY_FILE)? {
            return Ok(DataKey::parse(&bytes, &path, unlock)?);
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
                Ok(DataKey::parse(&bytes, &path, None)?)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let bytes = fs::read(&path).map_err(|e| fsio::with_path(e, &path))?;
                Ok(DataKey::parse(&bytes, &path, unlock)?)
            }
            Err(e) => Err(fsio::with_path(e, &path)),
        }
    }

    /// The directory of the key file.
    pub(crate) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Rewrites the key file with the same key, wrapped by `unlock` or in clear, so that
    /// a crash leaves the old file or the new one (both open the same data).
    pub(crate) fn rewrap(&self, unlock: Option<&UnlockKey>) -> io::Result<()> {
        let bytes = key_file_bytes(self.id, &self.raw, unlock)?;
        fsio::write_atomic(self.dir(), KEY_FILE, &bytes)
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
        std::sync::Arc::new(DataKey::load_or_create(dir, None).unwrap())
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
        let err = DataKey::load_or_create(dir.path(), None)
            .unwrap_err()
            .to_string();
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
        let k2 = DataKey::load_or_create(&sub, None).unwrap();
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
        bytes[5] = 7;
        fs::write(dir.path().join(KEY_FILE), &bytes).unwrap();
        let err = DataKey::load_or_create(dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unlock key"), "{err}");
        fs::write(dir.path().join(KEY_FILE), b"hello").unwrap();
        let err = DataKey::load_or_create(dir.path(), None)
            .unwrap_err()
            .to_string();
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
    #[test]
    fn unlock_keys_read_and_print_as_dockers() {
        let key = UnlockKey::generate().unwrap();
        let text = key.to_human();
        assert!(text.starts_with("SWMKEY-1-"), "{text}");
        // 32 bytes in unpadded base64.
        assert_eq!(text.len(), "SWMKEY-1-".len() + 43);
        assert!(!text.ends_with('='));
        assert_eq!(UnlockKey::parse(&format!("  {text}\n")).unwrap(), key);
        assert_eq!(UnlockKey::parse(&format!("{text}=")).unwrap(), key);
        assert_ne!(UnlockKey::generate().unwrap(), key);
        for bad in [
            "",
            "SWMKEY-1-",
            "SWMKEY-2-AAAA",
            "hello",
            &text[..text.len() - 1],
            &format!("{text}AAAA"),
            &text.replace("SWMKEY-1-", "SWMKEY-1-!"),
        ] {
            assert!(
                matches!(UnlockKey::parse(bad), Err(UnlockError::Malformed)),
                "{bad:?}"
            );
        }
        assert_eq!(format!("{key:?}"), "UnlockKey(..)");
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let blob = key.seal(b"root CA key", b"c").unwrap();
        let clear = fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(key_file_state(dir.path()).unwrap(), KeyFileState::Clear);

        let unlock = UnlockKey::generate().unwrap();
        key.rewrap(Some(&unlock)).unwrap();
        let wrapped = fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_FILE_LEN);
        assert_eq!(wrapped[5], WRAP_UNLOCK_KEY);
        assert!(
            !wrapped
                .windows(KEY_LEN)
                .any(|w| w == &clear[KEY_HEADER_LEN..]),
            "the clear key is in the wrapped file"
        );
        assert_eq!(key_file_state(dir.path()).unwrap(), KeyFileState::Wrapped);
        assert_private(dir.path());

        // Without the unlock key: locked, and nothing is created in its place.
        let err = DataKey::load_or_create(dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("docker swarm unlock"), "{err}");
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), wrapped);

        // A wrong key is refused and changes nothing on disk.
        let other = UnlockKey::generate().unwrap();
        assert!(matches!(
            check_unlock_key(dir.path(), &other),
            Err(UnlockError::WrongKey)
        ));
        assert!(DataKey::load_or_create(dir.path(), Some(&other)).is_err());
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), wrapped);

        // The right key opens the same data key.
        check_unlock_key(dir.path(), &unlock).unwrap();
        let reopened = DataKey::load_or_create(dir.path(), Some(&unlock)).unwrap();
        assert_eq!(reopened.open(&blob, b"c").unwrap(), b"root CA key");

        // Rotation: the old unlock key stops working, the new one works.
        let rotated = UnlockKey::generate().unwrap();
        reopened.rewrap(Some(&rotated)).unwrap();
        assert!(matches!(
            check_unlock_key(dir.path(), &unlock),
            Err(UnlockError::WrongKey)
        ));
        let again = DataKey::load_or_create(dir.path(), Some(&rotated)).unwrap();
        assert_eq!(again.open(&blob, b"c").unwrap(), b"root CA key");

        // Autolock off: the file is in clear again, with the same key.
        again.rewrap(None).unwrap();
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), clear);
        assert!(matches!(
            check_unlock_key(dir.path(), &rotated),
            Err(UnlockError::NotLocked)
        ));
        assert_private(dir.path());
    }

    #[test]
    fn any_altered_byte_of_a_wrapped_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let unlock = UnlockKey::generate().unwrap();
        key.rewrap(Some(&unlock)).unwrap();
        let wrapped = fs::read(dir.path().join(KEY_FILE)).unwrap();
        let path = dir.path().join(KEY_FILE);
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(
                DataKey::parse(&bad, &path, Some(&unlock)).is_err(),
                "byte {i} altered unnoticed"
            );
        }
    }
}
