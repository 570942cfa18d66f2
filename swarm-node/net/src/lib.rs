//! The data plane of swarmup's overlay networks on one node.
//!
//! This crate owns the kernel side of overlay networks, and it is the only crate of swarmup
//! that changes the kernel's network configuration: VXLAN devices, addresses and MACs of the
//! overlay bridges, forwarding (FDB) and neighbour entries, hairpin flags, the nftables
//! table `ip swarmnet` (VIP load balancing and the DNS redirect), the two sysctls it needs,
//! and conntrack entries of backends that left a VIP. Docker's bridge networks themselves
//! are created by the worker through Docker's API, from [`Desired::bridges`].
//!
//! How it is built:
//! - [`plan`] is a pure function from the node's network map to the [`Desired`] data plane;
//!   [`nft::ruleset`] renders that as one nftables script, also pure. Both are unit-tested
//!   without a kernel.
//! - [`Dataplane::sync`] compares the kernel with the desired state and changes only what
//!   differs, through the [`Kernel`] trait: [`SystemKernel`] runs iproute2, `nft`,
//!   `conntrack` and writes `/proc/sys`; [`FakeKernel`] keeps everything in memory.
//!
//! Invariants:
//! - The nftables table is replaced as a whole in one `nft -f` transaction, so the packet
//!   path never sees half a ruleset.
//! - Everything swarmup makes is recognisable by name (`swv<VNI>` devices, `/32` addresses on
//!   `swb<VNI>` bridges, the `swarmnet` table), so a sync removes what is no longer desired
//!   and [`Dataplane::teardown`] removes it all, without any record on disk.
//! - With no network desired and nothing of ours present, a sync changes nothing at all:
//!   several swarm-node processes may share one network namespace in tests.

mod dataplane;
mod error;
mod fake;
mod kernel;
pub mod nft;
mod plan;
mod system;

pub use dataplane::{Dataplane, SyncReport};
pub use error::NetError;
pub use fake::{FakeKernel, FakeState};
pub use kernel::{BridgePort, FdbEntry, Kernel, LinkInfo, Mac, NeighEntry, VxlanInfo};
pub use plan::{
    bridge_name, effective_mtu, plan, vxlan_name, BridgeSpec, Desired, LocalFacts, OverlaySpec,
    Peer, VipSpec, VXLAN_OVERHEAD, WIREGUARD_OVERHEAD,
};
pub use system::SystemKernel;
