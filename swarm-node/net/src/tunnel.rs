//! The WireGuard tunnel that carries encrypted overlay networks between nodes.
//!
//! Every node with an encrypted network has one WireGuard interface, [`TUNNEL_DEV`], with
//! its address in the swarm's tunnel subnet (`swarm_state::network::TUNNEL_SUBNET`). The
//! VXLAN devices of encrypted networks use that address as their local endpoint and the
//! peers' tunnel addresses as remote ones, so their frames leave the node only inside
//! WireGuard (ChaCha20-Poly1305, keys exchanged by the Noise handshake and renewed every two
//! minutes). Each peer's allowed address is its own tunnel address and nothing else, and
//! `nft` drops VXLAN of an encrypted network that did not come in through the tunnel.
//!
//! The interface is boringtun's userspace WireGuard over a TUN device, which works on any
//! kernel with TUN (this one has no WireGuard module). It lives as long as the swarm-node
//! process: a restarted node makes it again at its first sync. Its configuration travels
//! over WireGuard's cross-implementation configuration protocol on a socket pair, not on a
//! path in `/var/run`, so nodes sharing a filesystem (lab nodes) never see each other's.
//!
//! The interface is made persistent first (`ip tuntap`), with its MTU, and boringtun
//! attaches to it: boringtun reads the MTU once, when it attaches, and truncates anything
//! larger. Being persistent, the interface goes only with `ip link del`, whatever process
//! still holds it open (boringtun opens it without close-on-exec, so short-lived children
//! such as `ip` and `nft` briefly do).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;

use crate::NetError;

/// The node's WireGuard interface.
pub const TUNNEL_DEV: &str = "swg0";
/// Keeps each peer's NAT and firewall state alive, as `wg`'s usual 25 s.
const KEEPALIVE_SECS: u16 = 25;

/// This node's WireGuard private key. Its `Debug` shows only the public key.
pub struct TunnelKey(StaticSecret);

impl fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TunnelKey(public {})", self.public_base64())
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl TunnelKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        TunnelKey(StaticSecret::from(bytes))
    }

    /// The key kept at `path` (base64, as `wg genkey` writes it), made there first if there
    /// is none. The file is 0600: it is the node's identity in the tunnel.
    pub async fn load_or_create(path: &Path) -> Result<Self, NetError> {
        let io = |source| NetError::TunnelKey {
            path: path.display().to_string(),
            source,
        };
        match tokio::fs::read_to_string(path).await {
            Ok(text) => Self::from_base64(text.trim()).ok_or_else(|| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a base64 WireGuard key: remove the file to make a new one",
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let text = format!("{}\n", b64().encode(key.0.to_bytes()));
                let tmp = path.with_extension("tmp");
                let mut options = tokio::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true).mode(0o600);
                let mut file = options.open(&tmp).await.map_err(io)?;
                tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes())
                    .await
                    .map_err(io)?;
                file.sync_all().await.map_err(io)?;
                tokio::fs::rename(&tmp, path).await.map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_base64(text: &str) -> Option<Self> {
        let bytes: [u8; 32] = b64().decode(text).ok()?.try_into().ok()?;
        Some(TunnelKey(StaticSecret::from(bytes)))
    }

    /// The public key, base64 as WireGuard writes it: what the node tells the swarm.
    pub fn public_base64(&self) -> String {
        b64().encode(PublicKey::from(&self.0).as_bytes())
    }

    fn private_hex(&self) -> String {
        hex(&self.0.to_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tunnel this node needs: a pure function of its network map ([`crate::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// The node's tunnel address with the tunnel subnet's prefix.
    pub addr: Ipv4Net,
    /// The underlay's MTU minus WireGuard's overhead.
    pub mtu: u32,
    /// The UDP port the tunnel listens on, the same on every node.
    pub port: u16,
    /// The other nodes of this node's encrypted networks, in address order.
    pub peers: Vec<TunnelPeerSpec>,
}

/// One peer of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelPeerSpec {
    /// Its tunnel address: the one address it may send from, inside the tunnel.
    pub addr: Ipv4Addr,
    /// Its public key (base64).
    pub public_key: String,
    /// Where its tunnel listens on the underlay.
    pub endpoint: SocketAddrV4,
}

/// The configuration protocol's `set` request for `spec`: the whole configuration, peers
/// replaced, so applying it twice changes nothing. Pure.
pub fn uapi_set(key: &TunnelKey, spec: &TunnelSpec) -> Result<String, NetError> {
    let mut out = format!(
        "set=1\nprivate_key={}\nlisten_port={}\nreplace_peers=true\n",
        key.private_hex(),
        spec.port
    );
    for p in &spec.peers {
        let public: [u8; 32] = b64()
            .decode(&p.public_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| NetError::TunnelPeerKey(p.public_key.clone()))?;
        out.push_str(&format!(
            "public_key={}\nendpoint={}\npersistent_keepalive_interval={KEEPALIVE_SECS}\nreplace_allowed_ips=true\nallowed_ip={}/32\n",
            hex(&public),
            p.endpoint,
            p.addr
        ));
    }
    out.push('\n');
    Ok(out)
}

/// boringtun's device: its threads, and our end of its configuration socket.
pub(crate) struct UserTunnel {
    _device: boringtun::device::DeviceHandle,
    api: std::os::unix::net::UnixStream,
    /// The configuration last applied.
    pub(crate) applied: Option<TunnelSpec>,
}

impl fmt::Debug for UserTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTunnel")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl UserTunnel {
    /// Makes the device in the network namespace `netns` (`/run/netns/NAME`), or in this
    /// process's. Blocking: the device is made on a thread of its own, which enters the
    /// namespace first, so the TUN device, boringtun's UDP sockets and its threads are all
    /// in that namespace while the caller's threads stay where they are.
    pub(crate) fn create(netns: Option<&str>) -> Result<UserTunnel, NetError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(NetError::Tunnel)?;
        let netns = netns.map(|n| format!("/run/netns/{n}"));
        let made = std::thread::Builder::new()
            .name("swg0-setup".into())
            .spawn(
                move || -> Result<boringtun::device::DeviceHandle, NetError> {
                    if let Some(path) = netns {
                        let ns = std::fs::File::open(&path).map_err(NetError::Tunnel)?;
                        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| NetError::Tunnel(e.into()))?;
                    }
                    let config = boringtun::device::DeviceConfig {
                        n_threads: 2,
                        use_connected_socket: true,
                        use_multi_queue: false,
                        uapi_fd: std::os::fd::IntoRawFd::into_raw_fd(theirs),
                    };
                    boringtun::device::DeviceHandle::new(TUNNEL_DEV, config)
                        .map_err(|e| NetError::TunnelDevice(e.to_string()))
                },
            )
            .map_err(NetError::Tunnel)?
            .join()
            .map_err(|_| NetError::TunnelDevice("the setup thread panicked".into()))??;
        ours.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(NetError::Tunnel)?;
        Ok(UserTunnel {
            _device: made,
            api: ours,
            applied: None,
        })
    }

    /// Sends one `set` request and reads its `errno`. Blocking.
    pub(crate) fn configure(&mut self, request: &str) -> Result<(), NetError> {
        use std::io::{BufRead, Write};
        (&self.api)
            .write_all(request.as_bytes())
            .map_err(NetError::Tunnel)?;
        let mut reader = std::io::BufReader::new(&self.api);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(NetError::Tunnel)? == 0 {
                return Err(NetError::TunnelDevice(
                    "the device closed its socket".into(),
                ));
            }
            let l = line.trim();
            if let Some(errno) = l.strip_prefix("errno=") {
                // The answer ends with an empty line.
                let mut end = String::new();
                let _ = reader.read_line(&mut end);
                return match errno {
                    "0" => Ok(()),
                    other => Err(NetError::TunnelDevice(format!(
                        "the device refused its configuration (errno {other})"
                    ))),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TunnelSpec {
        TunnelSpec {
            addr: "10.255.0.1/16".parse().unwrap(),
            mtu: 1440,
            port: 51820,
            peers: vec![TunnelPeerSpec {
                addr: "10.255.0.2".parse().unwrap(),
                public_key: b64().encode([7u8; 32]),
                endpoint: "192.168.50.12:51820".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn the_set_request_replaces_everything() {
        let key = TunnelKey(StaticSecret::from([1u8; 32]));
        let text = uapi_set(&key, &spec()).unwrap();
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nreplace_peers=true\n\
             public_key={}\nendpoint=192.168.50.12:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.255.0.2/32\n\n",
            "01".repeat(32),
            "07".repeat(32)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn a_bad_peer_key_is_refused() {
        let key = TunnelKey::generate();
        let mut s = spec();
        s.peers[0].public_key = "not a key".into();
        assert!(matches!(
            uapi_set(&key, &s),
            Err(NetError::TunnelPeerKey(k)) if k == "not a key"
        ));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = TunnelKey(StaticSecret::from([9u8; 32]));
        let shown = format!("{key:?}");
        assert!(!shown.contains(&"09".repeat(32)));
        assert!(!shown.contains(&b64().encode([9u8; 32])));
        assert!(shown.contains(&key.public_base64()));
    }

    #[tokio::test]
    async fn the_key_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.key");
        let a = TunnelKey::load_or_create(&path).await.unwrap();
        let b = TunnelKey::load_or_create(&path).await.unwrap();
        assert_eq!(a.public_base64(), b.public_base64());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "garbage").unwrap();
        let e = TunnelKey::load_or_create(&path).await.unwrap_err();
        assert!(e.to_string().contains("remove the file"), "{e}");
    }
}
