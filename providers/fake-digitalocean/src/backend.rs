use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;

/// Everything known about a droplet when its machine is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropletSpec {
    pub id: u64,
    pub name: String,
    pub region: String,
    pub size: String,
    pub image: String,
    pub tags: Vec<String>,
    pub user_data: Option<String>,
    /// The public halves of the keys named in `ssh_keys`, for `authorized_keys`.
    pub ssh_public_keys: Vec<String>,
    /// The CIDR of the VPC the droplet is in, e.g. `10.108.0.0/20`.
    pub vpc_ip_range: String,
}

/// The addresses a droplet shows in `networks.v4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DropletAddrs {
    pub public_ipv4: Ipv4Addr,
    pub private_ipv4: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What stands behind a droplet. The default keeps nothing but addresses; another backend
/// can make a real machine per droplet (a lab node on this host, say).
#[async_trait::async_trait]
pub trait DropletBackend: Send + Sync + fmt::Debug {
    /// Makes the machine. The droplet turns `active` once this returns and the boot delay
    /// has passed; an error leaves it `new` and its create action `errored`.
    async fn create(&self, droplet: &DropletSpec) -> Result<DropletAddrs, BackendError>;
    async fn delete(&self, droplet: &DropletSpec) -> Result<(), BackendError>;
    async fn power(&self, droplet: &DropletSpec, on: bool) -> Result<(), BackendError>;
}

/// Hands out documentation-range public addresses (TEST-NET-3, then TEST-NET-2) and
/// addresses of the droplet's VPC range; nothing answers on them.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    next: AtomicU32,
}

fn vpc_base(range: &str) -> Ipv4Addr {
    range
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(Ipv4Addr::new(10, 108, 0, 0))
}

#[async_trait::async_trait]
impl DropletBackend for MemoryBackend {
    async fn create(&self, droplet: &DropletSpec) -> Result<DropletAddrs, BackendError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= 254 * 2 {
            return Err(BackendError(
                "the in-memory backend ran out of public addresses (508 droplets)".into(),
            ));
        }
        let public = if n < 254 {
            Ipv4Addr::new(203, 0, 113, (n + 1) as u8)
        } else {
            Ipv4Addr::new(198, 51, 100, (n - 254 + 1) as u8)
        };
        let private = Ipv4Addr::from(u32::from(vpc_base(&droplet.vpc_ip_range)) + 2 + n);
        Ok(DropletAddrs {
            public_ipv4: public,
            private_ipv4: private,
        })
    }

    async fn delete(&self, _droplet: &DropletSpec) -> Result<(), BackendError> {
        Ok(())
    }

    async fn power(&self, _droplet: &DropletSpec, _on: bool) -> Result<(), BackendError> {
        Ok(())
    }
}
