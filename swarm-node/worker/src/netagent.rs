//! The network agent: follows this node's network map and makes the node match it.
//!
//! - It long-polls the map from the managers (through a [`NetmapSource`]; the agent's one
//!   shares its managers, fail-over and client) and publishes every new map on a watch,
//!   the DNS server's input ([`NetAgent::maps`]).
//! - For each map it plans the data plane ([`swarm_net::plan`]), makes the Docker bridge
//!   networks of [`swarm_net::Desired::bridges`] through the container runtime, then lets
//!   [`Dataplane::sync`] add VXLAN devices, forwarding entries, VIPs and rules.
//! - Then it publishes the ready map ([`NetAgent::ready`]): the local tasks whose networks
//!   are all in place. The executor creates a networked task's container only once the
//!   task is in there, so its names, VIPs and forwarding entries exist before it runs.
//!
//! It applies again every [`RESYNC_PERIOD`], sooner after a failure, and when the engine's
//! event stream comes back (dockerd restarted), so whatever went missing is repaired.
//! Docker networks carrying our label that the map no longer wants are removed once no
//! container uses them. Stopping the agent leaves everything in place, like the
//! containers; [`forget`] removes it all when the node leaves the swarm.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use swarm_net::{Dataplane, Desired, LocalFacts};
use swarm_state::netmap::NetMap;
use tokio::sync::watch;

use crate::plan::ReadyNetworks;
use crate::runtime::{ContainerRuntime, EventAction, RuntimeError, RuntimeEvent, TaskNetwork};

/// How often the node's networks are checked and repaired without any change.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(10);
/// How soon an apply that failed in part is tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// The least time between two subscriptions to the engine's events.
const EVENTS_RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A fetch that brought nothing new is not repeated sooner than this, whatever the
/// manager does: the long poll must never turn into a busy loop.
const MIN_IDLE_POLL: Duration = Duration::from_millis(500);
/// The MTU assumed while this node's underlay address is unknown.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetmapError {
    #[error("cannot fetch the network map from manager {manager}: {message}")]
    Manager { manager: String, message: String },
}

/// Where the node's network map comes from.
#[async_trait]
pub trait NetmapSource: Send + Sync + std::fmt::Debug {
    /// The node's map, answered once it differs from the one at log index `since` (at
    /// once for 0), or at the manager's long-poll timeout.
    async fn fetch(&self, since: u64) -> Result<NetMap, NetmapError>;
}

/// The node's network agent. See the module documentation.
#[derive(Debug)]
pub struct NetAgent {
    node_id: String,
    runtime: Arc<dyn ContainerRuntime>,
    dataplane: Arc<Dataplane>,
    dns_port: u16,
    /// The routing mesh's SNAT fallback (`swarm-node run --mesh-snat`).
    mesh_snat: bool,
    resync: Duration,
    maps: watch::Sender<Arc<NetMap>>,
    ready: watch::Sender<Arc<ReadyNetworks>>,
}

impl NetAgent {
    /// `dns_port` is where this node's DNS server listens: DNS aimed at a gateway is
    /// redirected there.
    pub fn new(
        node_id: impl Into<String>,
        runtime: Arc<dyn ContainerRuntime>,
        dataplane: Arc<Dataplane>,
        dns_port: u16,
    ) -> Self {
        let node_id = node_id.into();
        NetAgent {
            maps: watch::channel(Arc::new(NetMap {
                tunnel: None,
                node_id: node_id.clone(),
                ..Default::default()
            }))
            .0,
            ready: watch::channel(Arc::new(ReadyNetworks::new())).0,
            node_id,
            runtime,
            dataplane,
            dns_port,
            mesh_snat: false,
            resync: RESYNC_PERIOD,
        }
    }

    /// Masquerades connections the routing mesh forwards to another node behind this
    /// node's ingress address, as Docker does: for hosts whose routing cannot carry the
    /// replies back. Tasks then see this node's address instead of the client's.
    pub fn with_mesh_snat(mut self, on: bool) -> Self {
        self.mesh_snat = on;
        self
    }

    /// Changes how often the node's networks are checked without a change.
    pub fn with_resync(mut self, period: Duration) -> Self {
        self.resync = period;
        self
    }

    /// The latest network map (an empty one until the first answer): the DNS server's view.
    pub fn maps(&self) -> watch::Receiver<Arc<NetMap>> {
        self.maps.subscribe()
    }

    /// The local tasks whose networks are in place, for the executor.
    pub fn ready(&self) -> watch::Receiver<Arc<ReadyNetworks>> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` completes. Networks and the data plane stay as they are.
    pub async fn run(self, source: Arc<dyn NetmapSource>, shutdown: impl Future<Output = ()>) {
        // The apply loop waits for the first real map: an empty placeholder would remove
        // every network of a node that merely restarted.
        let (latest_tx, latest_rx) = watch::channel::<Option<Arc<NetMap>>>(None);
        tokio::select! {
            _ = shutdown => {}
            _ = fetch_loop(source.as_ref(), &self.maps, latest_tx) => {}
            _ = self.apply_loop(latest_rx) => {}
        }
        tracing::debug!(node = %self.node_id, "network agent stopped");
    }

    async fn apply_loop(&self, mut latest: watch::Receiver<Option<Arc<NetMap>>>) {
        let mut st = ApplyState::default();
        let mut events: Option<EventStream> = None;
        let mut subscribe_after = tokio::time::Instant::now();
        let mut lost_events = false;
        let mut dirty = true;
        let mut complete = true;
        let mut tick = tokio::time::interval(self.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if events.is_none() && tokio::time::Instant::now() >= subscribe_after {
                match self.runtime.events(&self.node_id).await {
                    Ok(s) => {
                        events = Some(s);
                        if lost_events {
                            // The engine is back (perhaps restarted): repair what it lost.
                            tracing::info!("docker engine events are back; resyncing networks");
                            dirty = true;
                            lost_events = false;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to engine events");
                        lost_events = true;
                        subscribe_after = tokio::time::Instant::now() + EVENTS_RETRY;
                    }
                }
            }
            if dirty {
                let map = latest.borrow_and_update().clone();
                if let Some(map) = map {
                    complete = self.apply(&map, &mut st).await;
                }
                dirty = false;
            }
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    dirty = true;
                }
                _ = tick.tick() => dirty = true,
                _ = tokio::time::sleep(RETRY_PERIOD), if !complete => dirty = true,
                _ = tokio::time::sleep_until(subscribe_after), if events.is_none() => {}
                ev = next_event(&mut events) => match ev {
                    Some(Ok(ev)) if ev.action == EventAction::Start => {
                        // Docker makes a container's bridge port when it starts: a task
                        // calling its own service's VIP needs hairpin on it.
                        if let Err(e) = self.dataplane.set_hairpins().await {
                            tracing::warn!(error = %e, "cannot set hairpin on container ports");
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        events = None;
                        lost_events = true;
                        subscribe_after = tokio::time::Instant::now() + EVENTS_RETRY;
                    }
                },
            }
        }
    }

    /// Makes the node match `map` once. Returns whether everything is in place.
    async fn apply(&self, map: &NetMap, st: &mut ApplyState) -> bool {
        let underlay_mtu = match map.local_vtep {
            Some(vtep) => match st.mtu {
                Some((v, mtu)) if v == vtep => mtu,
                _ => {
                    let mtu = self.dataplane.underlay_mtu(vtep).await;
                    tracing::info!(%vtep, mtu, "underlay MTU measured");
                    st.mtu = Some((vtep, mtu));
                    mtu
                }
            },
            None => DEFAULT_UNDERLAY_MTU,
        };
        let facts = LocalFacts {
            underlay_mtu,
            dns_port: self.dns_port,
            mesh_snat: self.mesh_snat,
        };
        let desired = swarm_net::plan(map, &facts);
        let mut complete = true;

        let mut ensured = BTreeSet::new();
        for b in &desired.bridges {
            match self.runtime.ensure_network(b, &self.node_id).await {
                Ok(_) => {
                    ensured.insert(b.network_id.clone());
                    st.errors.remove(&b.network_id);
                }
                Err(e) => {
                    complete = false;
                    let message = e.to_string();
                    if st.errors.get(&b.network_id) != Some(&message) {
                        tracing::warn!(network = %b.network_name, error = %message, "cannot set up the docker network of an overlay; retrying");
                        st.errors.insert(b.network_id.clone(), message);
                    }
                }
            }
        }

        let applied = match self.dataplane.sync(&desired).await {
            Ok(report) => {
                for (network, why) in &report.failed {
                    tracing::warn!(%network, error = %why, "overlay data plane not set up; retrying");
                }
                complete &= report.failed.is_empty() && report.missing_bridges.is_empty();
                report.applied
            }
            Err(e) => {
                // The ready map stays as it was: nothing new may start on a data plane
                // that could not be checked.
                tracing::error!(error = %e, "cannot sync the overlay data plane; retrying");
                return false;
            }
        };
        let applied: BTreeSet<String> = applied.into_iter().collect();

        let ready = Arc::new(ready_tasks(map, &desired, &ensured, &applied));
        self.ready.send_if_modified(|current| {
            if **current == *ready {
                return false;
            }
            tracing::debug!(tasks = ready.len(), index = map.index, "networks ready");
            *current = ready.clone();
            true
        });

        if let Err(e) = self.remove_unwanted(&desired).await {
            tracing::debug!(error = %e, "cannot list docker networks to clean up");
        }
        complete
    }

    /// Removes the Docker networks this node made that the map no longer wants, unless a
    /// container still uses one (then at a later apply).
    async fn remove_unwanted(&self, desired: &Desired) -> Result<(), RuntimeError> {
        let wanted: BTreeSet<(&str, &str)> = desired
            .bridges
            .iter()
            .map(|b| (b.network_id.as_str(), b.network_name.as_str()))
            .collect();
        for n in self.runtime.networks().await? {
            if n.node_id.as_deref() != Some(self.node_id.as_str())
                || wanted.contains(&(n.network_id.as_str(), n.name.as_str()))
            {
                continue;
            }
            match self.runtime.remove_network(&n.id).await {
                Ok(()) => tracing::info!(network = %n.name, "docker network removed"),
                Err(e) => {
                    tracing::debug!(network = %n.name, error = %e, "docker network not removed yet")
                }
            }
        }
        Ok(())
    }
}

/// What one apply remembers for the next.
#[derive(Debug, Default)]
struct ApplyState {
    /// The underlay MTU, measured once per local tunnel endpoint.
    mtu: Option<(Ipv4Addr, u32)>,
    /// The last error per network, so a retry every second does not repeat it in the log.
    errors: BTreeMap<String, String>,
}

/// The local tasks whose every network has its Docker network (`ensured`) and its data
/// plane (`applied`) in place, with their attachments in the service's order.
pub fn ready_tasks(
    map: &NetMap,
    desired: &Desired,
    ensured: &BTreeSet<String>,
    applied: &BTreeSet<String>,
) -> ReadyNetworks {
    let mut ready = ReadyNetworks::new();
    for task in &map.local_tasks {
        if task.addrs.is_empty() {
            continue;
        }
        let networks: Option<Vec<TaskNetwork>> = task
            .addrs
            .iter()
            .map(|(network_id, addr)| {
                if !ensured.contains(network_id) || !applied.contains(network_id) {
                    return None;
                }
                let b = desired
                    .bridges
                    .iter()
                    .find(|b| &b.network_id == network_id)?;
                Some(TaskNetwork {
                    docker_network: b.network_name.clone(),
                    addr: *addr,
                    prefix_len: b.subnet.prefix_len(),
                    gateway: b.gateway,
                })
            })
            .collect();
        if let Some(networks) = networks {
            ready.insert(task.task_id.clone(), networks);
        }
    }
    ready
}

/// Removes every overlay of this node: the data plane, then the Docker networks it made.
/// For a node leaving the swarm, after its task containers are gone.
pub async fn forget(runtime: &dyn ContainerRuntime, dataplane: &Dataplane, node_id: &str) {
    if let Err(e) = dataplane.teardown().await {
        tracing::warn!(error = %e, "cannot tear the overlay data plane down");
    }
    match runtime.networks().await {
        Ok(list) => {
            for n in list
                .into_iter()
                .filter(|n| n.node_id.as_deref() == Some(node_id))
            {
                if let Err(e) = runtime.remove_network(&n.id).await {
                    tracing::warn!(network = %n.name, error = %e, "cannot remove docker network");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list docker networks to remove"),
    }
}

type EventStream = BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

async fn next_event(
    events: &mut Option<EventStream>,
) -> Option<Result<RuntimeEvent, RuntimeError>> {
    match events {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Two maps say the same, whatever log index they were derived at. Every other field
/// counts, so a field added to the map is never ignored here.
fn same_content(a: &NetMap, b: &NetMap) -> bool {
    let at_zero = |m: &NetMap| NetMap {
        index: 0,
        ..m.clone()
    };
    at_zero(a) == at_zero(b)
}

fn backoff(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(failures.min(6))).min(MAX_BACKOFF)
}

async fn fetch_loop(
    source: &dyn NetmapSource,
    maps: &watch::Sender<Arc<NetMap>>,
    latest: watch::Sender<Option<Arc<NetMap>>>,
) {
    let mut since = 0u64;
    let mut failures = 0u32;
    loop {
        let asked = tokio::time::Instant::now();
        match source.fetch(since).await {
            Ok(map) => {
                failures = 0;
                if since > 0 && map.index < since {
                    // A manager lagging behind the last answer (e.g. a follower after a
                    // fail-over): wait for it to catch up.
                    tracing::debug!(index = map.index, since, "stale network map ignored");
                    tokio::time::sleep_until(asked + MIN_IDLE_POLL).await;
                    continue;
                }
                let new = latest
                    .borrow()
                    .as_ref()
                    .is_none_or(|current| !same_content(current, &map));
                let progressed = map.index > since;
                since = map.index;
                if new {
                    tracing::debug!(
                        index = map.index,
                        networks = map.networks.len(),
                        tasks = map.local_tasks.len(),
                        "new network map"
                    );
                    let map = Arc::new(map);
                    maps.send_replace(map.clone());
                    latest.send_replace(Some(map));
                } else if !progressed {
                    tokio::time::sleep_until(asked + MIN_IDLE_POLL).await;
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "fetching the network map failed");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
