//! The data plane of swarmup's overlay networks on one node.
//!
//! This crate owns the kernel side of overlay networks, and it is the only crate of swarmup
//! that changes the kernel's network configuration: VXLAN devices, addresses and MACs of the
//! overlay bridges, forwarding (FDB) and neighbour entries, hairpin flags, the nftables
//! table `ip swarmnet` (VIP load balancing, the routing mesh and the DNS redirect), the
//! sysctls it needs, the routing mesh's return-path policy rules and routing tables, one
//! rule in Docker's iptables chain `DOCKER-USER`, and conntrack entries of backends that
//! left a VIP, and the WireGuard interface `swg0` that carries encrypted networks
//! ([`tunnel`]). Docker's bridge networks themselves are created by the worker through
//! Docker's API, from [`Desired::bridges`].
//!
//! The routing mesh ([`MeshSpec`]), on a node with its own address on the ingress network:
//! - every published port is accepted on every local address (127.0.0.1 included) and
//!   DNATed to a task's ingress address, on this node or another; a port without a task
//!   refuses at once;
//! - the client's address is kept: on the task's node, a new connection arriving from
//!   another node's ingress bridge MAC gets that node's connection mark ([`return_mark`]);
//!   its replies carry it as packet mark, and a policy rule per (node, overlay bridge)
//!   routes them by that node's table ([`return_table`]), whose default route goes back
//!   through it, where they are un-NATed. [`LocalFacts::mesh_snat`] masquerades instead;
//! - Docker's `FORWARD` chain drops by default, and an accept in our own table cannot
//!   overrule a drop in Docker's: one `DOCKER-USER` rule accepts connections with
//!   [`MESH_CT`], when that chain exists.
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
//!   `swb<VNI>` bridges, the `swarmnet` table, policy rules and routes of the tables
//!   [`RETURN_TABLE_BASE`]`..+0xffff`, the `DOCKER-USER` rule commented `swarmnet`,
//!   `route_localnet` on `swb<VNI>` bridges), so a sync removes what is no longer desired
//!   and [`Dataplane::teardown`] removes it all, without any record on disk.
//! - `route_localnet` is on only on the mesh's bridge and only while the table that drops
//!   127/8 arriving from outside exists: it is set after the table and cleared before.
//! - A node without its own ingress address opens no published port.
//! - With no network desired and nothing of ours present, a sync changes nothing at all:
//!   several swarm-node processes may share one network namespace in tests.

mod dataplane;
mod error;
mod fake;
mod kernel;
pub mod nft;
mod plan;
mod system;
pub mod tunnel;

pub use dataplane::{Dataplane, SyncReport};
pub use error::NetError;
pub use fake::{FakeKernel, FakeState};
pub use kernel::{
    BridgePort, FdbEntry, Kernel, LinkInfo, Mac, NeighEntry, RouteRule, TableRoute, VxlanInfo,
};
pub use plan::{
    bridge_name, effective_mtu, is_return_table, plan, return_mark, return_table, vxlan_name,
    BridgeSpec, Desired, IngressPeer, LocalFacts, MeshPort, MeshSpec, OverlaySpec, Peer, VipSpec,
    MESH_CT, MESH_DNAT, RETURN_MASK, RETURN_RULE_PRIORITY, RETURN_TABLE_BASE, VXLAN_OVERHEAD,
    WIREGUARD_OVERHEAD,
};
pub use system::SystemKernel;
