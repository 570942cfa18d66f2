//! Identifiers in Docker's formats.

/// Encodes bytes as a base-36 number (digits then lowercase letters), left-padded with
/// zeros to `width`. SwarmKit writes node, service and task ids (16 random bytes, width
/// 25) and the parts of join tokens this way.
pub fn base36(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    // Repeated division of a big-endian byte string by 36.
    let mut number: Vec<u8> = bytes.to_vec();
    let mut out = Vec::new();
    while number.iter().any(|&b| b != 0) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 36) as u8;
            remainder = value % 36;
        }
        out.push(DIGITS[remainder as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ascii")
}

/// A Docker-style object id from 16 random bytes: 25 base-36 characters.
pub fn object_id(random: [u8; 16]) -> String {
    base36(&random, 25)
}

/// The Raft node id of a swarm node, derived from its node id so that no table is
/// needed to map one to the other (FNV-1a, 64 bits).
pub fn raft_id(node_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_pads_and_encodes() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[1, 0], 0), "74"); // 256 = 7*36 + 4
        assert_eq!(object_id([0xff; 16]).len(), 25);
    }

    #[test]
    fn raft_ids_differ_per_node() {
        assert_ne!(raft_id("a"), raft_id("b"));
        assert_eq!(raft_id("node"), raft_id("node"));
    }
}
