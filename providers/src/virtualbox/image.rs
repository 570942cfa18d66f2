//! The disk image VMs boot from: Ubuntu's cloud image for VirtualBox (an OVA, a tar
//! holding the OVF and a VMDK), pinned by release serial and SHA-256, downloaded once
//! into the user's cache directory; or a local file given as `--image PATH` (an OVA, or
//! a VMDK/VDI disk), which works offline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ProviderError;

/// One pinned image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogImage {
    /// What users type after `--image`.
    pub name: &'static str,
    /// The release serial: the same name always means the same bytes.
    pub serial: &'static str,
    pub url: &'static str,
    pub sha256: &'static str,
}

/// The images `--image NAME` knows; the first is the default.
pub const CATALOG: &[CatalogImage] = &[CatalogImage {
    name: "ubuntu-24.04",
    serial: "20260926",
    url: "https://cloud-images.ubuntu.com/releases/noble/release-20260926/ubuntu-24.04-server-cloudimg-amd64.ova",
    sha256: "513a22ebe3982b9387b038f8a2a6dad1af980d4623dca03511312e55ba620b1a",
}];

pub const DEFAULT_IMAGE: &str = "ubuntu-24.04";

/// What `--image` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageChoice {
    Catalog(CatalogImage),
    Local(PathBuf),
}

impl ImageChoice {
    /// A name from the catalog, or a path (anything with a `/`, or ending in a disk
    /// image's extension).
    pub fn parse(text: &str) -> Result<ImageChoice, ProviderError> {
        let lower = text.to_ascii_lowercase();
        if text.contains('/') || [".ova", ".vmdk", ".vdi"].iter().any(|e| lower.ends_with(e)) {
            return Ok(ImageChoice::Local(PathBuf::from(text)));
        }
        CATALOG
            .iter()
            .find(|c| c.name == text)
            .map(|c| ImageChoice::Catalog(*c))
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!(
                    "unknown VirtualBox image {text:?}: use {} or a local file (--image /path/to/ubuntu-24.04-server-cloudimg-amd64.ova)",
                    CATALOG.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
                ))
            })
    }

    /// How the user names it, for messages and the dry run.
    pub fn describe(&self) -> String {
        match self {
            ImageChoice::Catalog(c) => format!("{} (release {})", c.name, c.serial),
            ImageChoice::Local(p) => p.display().to_string(),
        }
    }
}

/// A disk VirtualBox can clone, and the key its base disk is named by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDisk {
    pub disk: PathBuf,
    /// `ubuntu-24.04-20260926`, or `local-HASH` for a local file.
    pub key: String,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ProviderError {
    move |source| ProviderError::Io { what, source }
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies the first `.vmdk` member of an OVA (a ustar archive) to `dest`.
pub fn extract_vmdk(ova: &Path, dest: &Path) -> Result<(), String> {
    let mut file =
        std::fs::File::open(ova).map_err(|e| format!("cannot open {}: {e}", ova.display()))?;
    let mut header = [0u8; 512];
    loop {
        if file.read_exact(&mut header).is_err() || header.iter().all(|b| *b == 0) {
            return Err(format!(
                "{} holds no .vmdk disk: is it an OVA?",
                ova.display()
            ));
        }
        let field = |r: std::ops::Range<usize>| {
            let raw = &header[r];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let mut name = field(0..100);
        if &header[257..262] == b"ustar" {
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let size = u64::from_str_radix(field(124..136).trim(), 8)
            .map_err(|_| format!("{} is not a tar archive (an OVA)", ova.display()))?;
        let padded = size.div_ceil(512) * 512;
        if name.to_ascii_lowercase().ends_with(".vmdk") && matches!(header[156], 0 | b'0') {
            let tmp = dest.with_extension("vmdk.part");
            let mut out = std::fs::File::create(&tmp)
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            let copied = std::io::copy(&mut (&mut file).take(size), &mut out)
                .map_err(|e| format!("cannot extract {name} from {}: {e}", ova.display()))?;
            if copied != size {
                return Err(format!("{} is truncated", ova.display()));
            }
            out.flush()
                .and_then(|_| std::fs::rename(&tmp, dest))
                .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
            return Ok(());
        }
        std::io::copy(&mut (&mut file).take(padded), &mut std::io::sink())
            .map_err(|e| format!("cannot read {}: {e}", ova.display()))?;
    }
}

/// A local file's key: its name, size and modification time, so a changed file gets a
/// new base disk without hashing gigabytes on every create.
fn local_key(path: &Path, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{}\0{}\0{mtime}", path.display(), meta.len());
    format!(
        "local-{:012x}",
        crate::lab::naming::fnv1a(seed.as_bytes()) & 0xffff_ffff_ffff
    )
}

/// Makes the image's disk available: checks a local file, or downloads (once) and
/// verifies a catalog image; extracts the VMDK of an OVA into `cache`.
pub async fn ensure(choice: &ImageChoice, cache: &Path) -> Result<SourceDisk, ProviderError> {
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(io_err(format!("cannot create {}", cache.display())))?;
    match choice {
        ImageChoice::Local(path) => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let meta = tokio::fs::metadata(&path).await.map_err(|e| {
                ProviderError::InvalidRequest(format!(
                    "image file {} cannot be read ({e}): give an Ubuntu cloud image OVA (ubuntu-24.04-server-cloudimg-amd64.ova) or a VMDK/VDI disk",
                    path.display()
                ))
            })?;
            let key = local_key(&path, &meta);
            if !path
                .to_string_lossy()
                .to_ascii_lowercase()
                .ends_with(".ova")
            {
                return Ok(SourceDisk { disk: path, key });
            }
            let disk = cache.join(format!("{key}.vmdk"));
            extract_once(&path, &disk).await?;
            Ok(SourceDisk { disk, key })
        }
        ImageChoice::Catalog(image) => {
            let key = format!("{}-{}", image.name, image.serial);
            let ova = cache.join(format!("{key}.ova"));
            let disk = cache.join(format!("{key}.vmdk"));
            if tokio::fs::try_exists(&disk).await.unwrap_or(false) {
                return Ok(SourceDisk { disk, key });
            }
            if !tokio::fs::try_exists(&ova).await.unwrap_or(false) {
                download(image, &ova).await?;
            }
            extract_once(&ova, &disk).await?;
            Ok(SourceDisk { disk, key })
        }
    }
}

async fn extract_once(ova: &Path, disk: &Path) -> Result<(), ProviderError> {
    if tokio::fs::try_exists(disk).await.unwrap_or(false) {
        return Ok(());
    }
    let (ova, disk) = (ova.to_path_buf(), disk.to_path_buf());
    tokio::task::spawn_blocking(move || extract_vmdk(&ova, &disk))
        .await
        .map_err(|e| ProviderError::Api(format!("image extraction stopped: {e}")))?
        .map_err(ProviderError::InvalidRequest)
}

/// Downloads a catalog image to `dest`, keeping it only if its SHA-256 matches.
async fn download(image: &CatalogImage, dest: &Path) -> Result<(), ProviderError> {
    let offline_hint = format!(
        "download it on a machine with internet access and pass --image /path/to/{}",
        image.url.rsplit('/').next().unwrap_or("image.ova")
    );
    let fail = |why: String| {
        ProviderError::Prerequisite(format!(
            "cannot download the {} image from {}: {why}; {offline_hint}",
            image.name, image.url
        ))
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut response = client
        .get(image.url)
        .send()
        .await
        .map_err(|e| fail(one_line(&e)))?;
    if !response.status().is_success() {
        return Err(fail(format!("the server answered {}", response.status())));
    }
    let part = dest.with_extension("ova.part");
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(io_err(format!("cannot write {}", part.display())))?;
    let mut hasher = Sha256::new();
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(one_line(&e)))? {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io_err(format!("cannot write {}", part.display())))?;
    }
    file.flush()
        .await
        .map_err(io_err(format!("cannot write {}", part.display())))?;
    let got = hex(&hasher.finalize());
    if got != image.sha256 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(ProviderError::Api(format!(
            "the {} image from {} has SHA-256 {got}, not the pinned {}: the download was damaged or the file changed; try again, or {offline_hint}",
            image.name, image.url, image.sha256
        )));
    }
    tokio::fs::rename(&part, dest)
        .await
        .map_err(io_err(format!("cannot write {}", dest.display())))
}

/// An error with its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", data.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn names_and_paths() {
        assert!(matches!(
            ImageChoice::parse("ubuntu-24.04").unwrap(),
            ImageChoice::Catalog(c) if c.serial == "20260926"
        ));
        assert_eq!(
            ImageChoice::parse("/tmp/x.ova").unwrap(),
            ImageChoice::Local("/tmp/x.ova".into())
        );
        assert_eq!(
            ImageChoice::parse("disk.vdi").unwrap(),
            ImageChoice::Local("disk.vdi".into())
        );
        let err = ImageChoice::parse("debian-12").unwrap_err().to_string();
        assert!(err.contains("use ubuntu-24.04 or a local file"), "{err}");
        assert_eq!(CATALOG[0].sha256.len(), 64);
    }

    #[tokio::test]
    async fn an_ova_gives_its_vmdk_once() {
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("img.ova");
        let mut bytes = tar_member("ubuntu.ovf", b"<Envelope/>");
        bytes.extend(tar_member("ubuntu-disk001.vmdk", b"disk bytes"));
        bytes.extend([0u8; 1024]);
        std::fs::write(&ova, bytes).unwrap();
        let cache = dir.path().join("cache");
        let first = ensure(&ImageChoice::Local(ova.clone()), &cache)
            .await
            .unwrap();
        assert!(first.key.starts_with("local-"));
        assert_eq!(std::fs::read(&first.disk).unwrap(), b"disk bytes");
        let again = ensure(&ImageChoice::Local(ova), &cache).await.unwrap();
        assert_eq!(again, first);

        let not_ova = dir.path().join("bad.ova");
        std::fs::write(&not_ova, tar_member("readme", b"x")).unwrap();
        let err = ensure(&ImageChoice::Local(not_ova), &cache)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no .vmdk disk"), "{err}");
        let err = ensure(&ImageChoice::Local(dir.path().join("missing.ova")), &cache)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be read"), "{err}");
        assert_eq!(sha256_file(&dir.path().join("img.ova")).unwrap().len(), 64);
    }
}
