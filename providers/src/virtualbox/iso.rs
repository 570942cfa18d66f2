//! The NoCloud seed: a small ISO 9660 image with a Joliet tree, written and read here.
//!
//! cloud-init finds the seed by its volume label (`cidata`) and reads `user-data`,
//! `meta-data` and `network-config` from its root. Those names hold `-`, which plain
//! ISO 9660 does not allow, so the image also carries a Joliet tree (UCS-2 names) that
//! Linux prefers when it mounts the disc; the primary tree keeps ISO-safe names for
//! readers without Joliet. One directory, a handful of small files: no crate needed.

use std::collections::BTreeMap;

const SECTOR: usize = 2048;
/// The Joliet escape sequence for UCS-2 level 3.
const JOLIET_ESCAPE: [u8; 3] = [0x25, 0x2f, 0x45];

/// An ISO image could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a usable ISO 9660 image: {0}")]
pub struct IsoError(String);

fn both_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn both_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
    buf[at + 2..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(|c| c.to_be_bytes()).collect()
}

/// A name fit for the primary tree: upper case, `-` as `_`, version `;1`.
fn primary_name(name: &str) -> Vec<u8> {
    let base: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .take(30)
        .collect();
    format!("{base}.;1").into_bytes()
}

/// One directory record; `name` is the identifier as stored.
fn dir_record(extent: u32, size: u32, is_dir: bool, name: &[u8]) -> Vec<u8> {
    let mut len = 33 + name.len();
    if len % 2 == 1 {
        len += 1;
    }
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    both_u32(&mut r, 2, extent);
    both_u32(&mut r, 10, size);
    // 2000-01-01 00:00:00 UTC: a fixed date keeps the image reproducible.
    r[18..25].copy_from_slice(&[100, 1, 1, 0, 0, 0, 0]);
    r[25] = if is_dir { 2 } else { 0 };
    both_u16(&mut r, 28, 1);
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    r
}

fn fill(buf: &mut [u8], at: usize, len: usize, text: &[u8], pad: &[u8]) {
    for i in 0..len {
        buf[at + i] = pad[i % pad.len()];
    }
    let n = text.len().min(len);
    buf[at..at + n].copy_from_slice(&text[..n]);
}

/// A volume descriptor (primary or Joliet supplementary).
#[allow(clippy::too_many_arguments)]
fn volume_descriptor(
    joliet: bool,
    label: &str,
    total_sectors: u32,
    path_table_size: u32,
    l_table: u32,
    m_table: u32,
    root_extent: u32,
) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let pad: &[u8] = if joliet { &[0, b' '] } else { b" " };
    let enc = |s: &str| {
        if joliet {
            ucs2(s)
        } else {
            s.as_bytes().to_vec()
        }
    };
    fill(&mut d, 8, 32, &enc("LINUX"), pad);
    fill(&mut d, 40, 32, &enc(label), pad);
    both_u32(&mut d, 80, total_sectors);
    if joliet {
        d[88..91].copy_from_slice(&JOLIET_ESCAPE);
    }
    both_u16(&mut d, 120, 1);
    both_u16(&mut d, 124, 1);
    both_u16(&mut d, 128, SECTOR as u16);
    both_u32(&mut d, 132, path_table_size);
    d[140..144].copy_from_slice(&l_table.to_le_bytes());
    d[148..152].copy_from_slice(&m_table.to_be_bytes());
    let root = dir_record(root_extent, SECTOR as u32, true, &[0]);
    d[156..156 + 34].copy_from_slice(&root);
    for (at, len) in [(190, 128), (318, 128), (446, 128), (574, 128)] {
        fill(&mut d, at, len, b"", pad);
    }
    for (at, len) in [(702, 37), (739, 37), (776, 37)] {
        fill(&mut d, at, len, b"", pad);
    }
    for at in [813, 830] {
        d[at..at + 16].copy_from_slice(b"2000010100000000");
    }
    for at in [847, 864] {
        d[at..at + 16].copy_from_slice(b"0000000000000000");
    }
    d[881] = 1;
    d
}

fn path_table(root_extent: u32, big_endian: bool) -> Vec<u8> {
    let mut t = vec![0u8; 10];
    t[0] = 1;
    let extent = if big_endian {
        root_extent.to_be_bytes()
    } else {
        root_extent.to_le_bytes()
    };
    t[2..6].copy_from_slice(&extent);
    let parent = if big_endian {
        1u16.to_be_bytes()
    } else {
        1u16.to_le_bytes()
    };
    t[6..8].copy_from_slice(&parent);
    t
}

/// An ISO 9660 image labelled `label` holding `files` (name, content) in its root.
/// Names are what Joliet readers see; the root directory must fit one sector, which a
/// seed's three files do with room to spare.
pub fn write_iso(label: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut files: Vec<(&str, &[u8])> = files.to_vec();
    files.sort_by(|a, b| a.0.cmp(b.0));
    // Layout: 16 system sectors, PVD, SVD, terminator, four path tables, two root
    // directories, then the files.
    let (l_primary, m_primary, l_joliet, m_joliet) = (19u32, 20u32, 21u32, 22u32);
    let (root_primary, root_joliet) = (23u32, 24u32);
    let mut next = 25u32;
    let mut extents = Vec::new();
    for (_, data) in &files {
        extents.push(next);
        next += data.len().div_ceil(SECTOR).max(1) as u32;
    }
    let total = next;
    let mut image = vec![0u8; total as usize * SECTOR];
    let mut put = |sector: u32, bytes: &[u8]| {
        let at = sector as usize * SECTOR;
        image[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(
        16,
        &volume_descriptor(false, label, total, 10, l_primary, m_primary, root_primary),
    );
    put(
        17,
        &volume_descriptor(true, label, total, 10, l_joliet, m_joliet, root_joliet),
    );
    let mut terminator = vec![0u8; 7];
    terminator[0] = 255;
    terminator[1..6].copy_from_slice(b"CD001");
    terminator[6] = 1;
    put(18, &terminator);
    put(l_primary, &path_table(root_primary, false));
    put(m_primary, &path_table(root_primary, true));
    put(l_joliet, &path_table(root_joliet, false));
    put(m_joliet, &path_table(root_joliet, true));
    for (root, joliet) in [(root_primary, false), (root_joliet, true)] {
        let mut dir = Vec::new();
        dir.extend(dir_record(root, SECTOR as u32, true, &[0]));
        dir.extend(dir_record(root, SECTOR as u32, true, &[1]));
        for ((name, data), extent) in files.iter().zip(&extents) {
            let id = if joliet {
                ucs2(name)
            } else {
                primary_name(name)
            };
            dir.extend(dir_record(*extent, data.len() as u32, false, &id));
        }
        assert!(
            dir.len() <= SECTOR,
            "a seed's root directory fits one sector"
        );
        put(root, &dir);
    }
    for ((_, data), extent) in files.iter().zip(&extents) {
        put(*extent, data);
    }
    image
}

/// What [`read_iso`] found: the volume label and the root directory's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoContents {
    pub label: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

fn le_u32(b: &[u8], at: usize) -> Result<u32, IsoError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| IsoError("truncated record".into()))
}

fn decode_ucs2(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// Reads the label and root files of an ISO image, preferring the Joliet tree.
pub fn read_iso(image: &[u8]) -> Result<IsoContents, IsoError> {
    let mut primary = None;
    let mut joliet = None;
    for sector in 16.. {
        let at = sector * SECTOR;
        let d = image
            .get(at..at + SECTOR)
            .ok_or_else(|| IsoError("no volume descriptor terminator".into()))?;
        if &d[1..6] != b"CD001" {
            return Err(IsoError(format!(
                "sector {sector} is not a volume descriptor"
            )));
        }
        match d[0] {
            1 => primary = Some(d),
            2 if d[88..91] == JOLIET_ESCAPE
                || d[88..91] == [0x25, 0x2f, 0x40]
                || d[88..91] == [0x25, 0x2f, 0x43] =>
            {
                joliet = Some(d)
            }
            255 => break,
            _ => {}
        }
    }
    let (d, is_joliet) = match (joliet, primary) {
        (Some(d), _) => (d, true),
        (None, Some(d)) => (d, false),
        (None, None) => return Err(IsoError("no primary volume descriptor".into())),
    };
    let label = if is_joliet {
        decode_ucs2(&d[40..72])
    } else {
        String::from_utf8_lossy(&d[40..72]).into_owned()
    }
    .trim_end_matches([' ', '\0'])
    .to_string();
    let root = &d[156..190];
    let (extent, size) = (le_u32(root, 2)? as usize, le_u32(root, 10)? as usize);
    let dir = image
        .get(extent * SECTOR..extent * SECTOR + size)
        .ok_or_else(|| IsoError("root directory outside the image".into()))?;
    let mut files = BTreeMap::new();
    let mut at = 0;
    while at < dir.len() {
        let len = dir[at] as usize;
        if len == 0 {
            // Records never cross a sector: the rest of this one is padding.
            at = (at / SECTOR + 1) * SECTOR;
            continue;
        }
        let rec = dir
            .get(at..at + len)
            .ok_or_else(|| IsoError("truncated directory record".into()))?;
        at += len;
        let name_len = rec[32] as usize;
        let raw = rec
            .get(33..33 + name_len)
            .ok_or_else(|| IsoError("truncated file name".into()))?;
        if rec[25] & 2 != 0 {
            continue;
        }
        let mut name = if is_joliet {
            decode_ucs2(raw)
        } else {
            String::from_utf8_lossy(raw).to_lowercase()
        };
        if let Some(i) = name.find(';') {
            name.truncate(i);
        }
        let name = name.trim_end_matches('.').to_string();
        let (start, size) = (le_u32(rec, 2)? as usize, le_u32(rec, 10)? as usize);
        let data = image
            .get(start * SECTOR..start * SECTOR + size)
            .ok_or_else(|| IsoError(format!("{name} lies outside the image")))?;
        files.insert(name, data.to_vec());
    }
    Ok(IsoContents { label, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_image_reads_back_with_its_label_and_files() {
        let big = vec![b'x'; 5000];
        let image = write_iso(
            "cidata",
            &[
                ("user-data", b"#cloud-config\n"),
                ("meta-data", b"instance-id: a\n"),
                ("network-config", &big),
            ],
        );
        assert_eq!(image.len() % SECTOR, 0);
        let back = read_iso(&image).unwrap();
        assert_eq!(back.label, "cidata");
        assert_eq!(
            back.files.keys().collect::<Vec<_>>(),
            ["meta-data", "network-config", "user-data"]
        );
        assert_eq!(back.files["user-data"], b"#cloud-config\n");
        assert_eq!(back.files["network-config"], big);
    }

    #[test]
    fn the_primary_tree_alone_reads_too() {
        let mut image = write_iso("cidata", &[("meta-data", b"m")]);
        // Without the Joliet descriptor, readers fall back to the primary tree.
        image[17 * SECTOR] = 0;
        let back = read_iso(&image).unwrap();
        assert_eq!(back.label, "cidata");
        assert_eq!(back.files["meta_data"], b"m");
        assert!(read_iso(&[0u8; 100]).is_err());
    }
}
