//! A local stand-in for the parts of DigitalOcean's API v2 that swarmup uses: account,
//! regions, sizes, VPCs, SSH keys, droplets (multi-create, list by tag with pagination,
//! delete by tag, power actions), actions and firewalls.
//!
//! It answers in DigitalOcean's shapes: `{"id","message"}` error bodies, `links.pages` and
//! `meta.total` on listings, `ratelimit-*` headers on every answer, 401 without the right
//! bearer token, 429 beyond 250 requests in any minute or 5,000 in any hour (both
//! configurable), with every request's arrival time logged for [`FakeDo::max_calls_in`]. Droplets go from `new` to `active` after a boot delay and get a public
//! and a VPC address from a [`DropletBackend`].
//!
//! Faults are injected through [`FakeDo::set_faults`] or `POST /_fake/faults` with a JSON
//! [`Faults`]: 429 with `retry-after`, 5xx, dropped connections, a partial multi-create,
//! the account's droplet limit, slow boots and actions. `GET /_fake/calls` returns the
//! request log and `GET /_fake/state` everything the fake holds.
//!
//! On Linux, [`LabBackend`] makes every droplet a real machine: a lab node on this host
//! with its own sshd and dockerd, reachable at the droplet's address.

mod api;
mod backend;
mod catalog;
mod faults;
#[cfg(target_os = "linux")]
mod lab;
mod schema;
mod state;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

pub use backend::{BackendError, DropletAddrs, DropletBackend, DropletSpec, MemoryBackend};
pub use faults::{
    DropFault, Faults, Matcher, PartialCreateFault, RateLimitFault, ServerErrorFault,
};
#[cfg(target_os = "linux")]
pub use lab::{read_user_data, FirstBoot, LabBackend, UNTAGGED_CLUSTER};
pub use state::ApiCall;

use api::ConnKill;
use state::{Inner, Settings, Shared};

/// The token the fake accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "fake-token";

/// How the fake starts.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// The only bearer token accepted.
    pub token: String,
    pub droplet_limit: u32,
    pub boot_delay: Duration,
    pub action_delay: Duration,
    /// Caps `per_page` below DigitalOcean's 200, to exercise pagination.
    pub max_per_page: u32,
    /// Requests in any hour (`ratelimit-limit`, DigitalOcean's 5,000); one more is
    /// answered 429. `ratelimit-remaining` is what is left of it.
    pub ratelimit_limit: u64,
    /// Requests in any minute (DigitalOcean's 250); one more is answered 429.
    pub rate_per_minute: u64,
    /// How long every API request takes.
    pub api_latency: Duration,
    /// Faults armed from the first request on.
    pub faults: Faults,
    pub backend: Arc<dyn DropletBackend>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            token: DEFAULT_TOKEN.to_string(),
            droplet_limit: 25,
            boot_delay: Duration::from_millis(1000),
            action_delay: Duration::from_millis(300),
            max_per_page: 200,
            ratelimit_limit: 5000,
            rate_per_minute: 250,
            api_latency: Duration::ZERO,
            faults: Faults::default(),
            backend: Arc::new(MemoryBackend::default()),
        }
    }
}

/// A droplet as the fake holds it, for tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeDroplet {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub tags: Vec<String>,
    pub addrs: Option<DropletAddrs>,
    pub user_data: Option<String>,
    pub ssh_public_keys: Vec<String>,
    /// How long after its create call it turned active; `None` while it boots.
    pub active_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeSshKey {
    pub id: u64,
    pub name: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeFirewall {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub inbound_rules: Vec<serde_json::Value>,
}

/// A running fake; dropping it leaves it running until the runtime ends, so call
/// [`FakeDo::shutdown`].
pub struct FakeDo {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeDo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDo")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeDo {
    /// Serves on `listener` from now on. Must be called inside a tokio runtime.
    pub fn start(listener: TcpListener, options: FakeOptions) -> io::Result<FakeDo> {
        let addr = listener.local_addr()?;
        let settings = Settings {
            droplet_limit: options.droplet_limit,
            boot_delay: options.boot_delay,
            action_delay: options.action_delay,
            max_per_page: options.max_per_page,
            ratelimit_limit: options.ratelimit_limit,
            rate_per_minute: options.rate_per_minute,
            api_latency: options.api_latency,
        };
        let shared = Arc::new(Shared {
            addr,
            token: options.token,
            backend: options.backend,
            inner: Mutex::new(Inner::new(settings, options.faults)),
            tasks: Mutex::new(JoinSet::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, shared.clone(), stop_rx));
        Ok(FakeDo {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, what `DIGITALOCEAN_API_URL` should say.
    pub fn url(&self) -> String {
        self.shared.base_url()
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Every `/v2` request so far, in order.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        self.shared.lock().calls.clone()
    }

    /// The most `/v2` requests that arrived in any `window` (answered 429 or not): what
    /// DigitalOcean's per-minute limit counts, for `Duration::from_secs(60)`.
    pub fn max_calls_in(&self, window: Duration) -> usize {
        let at: Vec<u64> = self.shared.lock().calls.iter().map(|c| c.at_ms).collect();
        max_in_window(&at, window)
    }

    /// Requests answered 429 because of the rate limit or a fault.
    pub fn rate_limited_calls(&self) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.status == Some(429))
            .count()
    }

    pub fn clear_api_calls(&self) {
        self.shared.lock().calls.clear();
    }

    /// Arms faults and changes settings; fields left `None` stay as they are.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().apply_faults(&faults);
    }

    /// Pending counted faults and the current settings.
    pub fn faults(&self) -> Faults {
        self.shared.lock().faults_view()
    }

    pub fn droplets(&self) -> Vec<FakeDroplet> {
        self.shared
            .lock()
            .droplets
            .values()
            .map(|d| FakeDroplet {
                id: d.spec.id,
                name: d.spec.name.clone(),
                status: d.status.as_str().to_string(),
                tags: d.spec.tags.clone(),
                addrs: d.addrs,
                user_data: d.spec.user_data.clone(),
                ssh_public_keys: d.spec.ssh_public_keys.clone(),
                active_after: d.active_after,
            })
            .collect()
    }

    pub fn ssh_keys(&self) -> Vec<FakeSshKey> {
        self.shared
            .lock()
            .keys
            .values()
            .map(|k| FakeSshKey {
                id: k.id,
                name: k.name.clone(),
                fingerprint: k.fingerprint.clone(),
            })
            .collect()
    }

    pub fn firewalls(&self) -> Vec<FakeFirewall> {
        self.shared
            .lock()
            .firewalls
            .iter()
            .map(|f| FakeFirewall {
                id: f.id.clone(),
                name: f.name.clone(),
                tags: f.tags.clone(),
                inbound_rules: f.inbound.clone(),
            })
            .collect()
    }

    /// Stops accepting, closes every connection and stops booting droplets.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.shared.abort_tasks();
    }
}

/// The most of `at_ms` (arrival times, any order) within any span of `window`.
pub fn max_in_window(at_ms: &[u64], window: Duration) -> usize {
    let mut at = at_ms.to_vec();
    at.sort_unstable();
    let span = window.as_millis() as u64;
    let mut best = 0;
    let mut start = 0;
    for end in 0..at.len() {
        while at[end] - at[start] >= span {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let router = api::router(shared.clone());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let router = router.clone();
                conns.spawn(async move {
                    let kill = Arc::new(Notify::new());
                    let conn_kill = ConnKill(kill.clone());
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(conn_kill.clone());
                        let router = router.clone();
                        async move {
                            let resp = router.oneshot(req.map(axum::body::Body::new)).await;
                            Ok::<_, Infallible>(match resp {
                                Ok(r) => r,
                                Err(never) => match never {},
                            })
                        }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    // Dropping the connection future closes the socket without an answer.
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.notified() => {}
                    }
                });
            }
        }
    }
    conns.abort_all();
    shared.abort_tasks();
}
