use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::backend::{DropletAddrs, DropletBackend, DropletSpec};
use crate::catalog;
use crate::faults::Faults;

/// One request the fake received on `/v2`, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCall {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// `None` when the connection was dropped before an answer was made.
    pub status: Option<u16>,
    /// The connection was closed instead of answering.
    pub dropped: bool,
    /// When it arrived, in milliseconds since the fake started.
    #[serde(default)]
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    New,
    Active,
    Off,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Active => "active",
            Status::Off => "off",
        }
    }
}

pub(crate) struct DropletRec {
    pub spec: DropletSpec,
    pub status: Status,
    pub addrs: Option<DropletAddrs>,
    pub created_at: String,
    pub locked: bool,
    pub vpc_uuid: String,
    pub monitoring: bool,
    /// When the create call that made it was answered.
    pub requested: std::time::Instant,
    /// How long after `requested` it turned active.
    pub active_after: Option<Duration>,
}

pub(crate) struct KeyRec {
    pub id: u64,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
}

pub(crate) struct FirewallRec {
    pub id: String,
    pub name: String,
    pub inbound: Vec<Value>,
    pub outbound: Vec<Value>,
    pub tags: Vec<String>,
    pub droplet_ids: Vec<u64>,
    pub created_at: String,
}

pub(crate) struct ActionRec {
    pub id: u64,
    pub kind: String,
    pub droplet_id: u64,
    pub status: &'static str,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub region: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub droplet_limit: u32,
    pub boot_delay: Duration,
    pub action_delay: Duration,
    pub max_per_page: u32,
    pub ratelimit_limit: u64,
    pub rate_per_minute: u64,
    pub api_latency: Duration,
}

/// DigitalOcean's rate limits as it applies them: a request counts in a sliding window
/// of an hour (`ratelimit-limit`) and one of a minute; one over either is answered 429
/// and is not counted. A limit of 0 is no limit.
#[derive(Debug, Default)]
pub(crate) struct RateWindows {
    pub minute: VecDeque<Instant>,
    pub hour: VecDeque<Instant>,
}

/// What the rate limit decided for one request.
pub(crate) struct RateDecision {
    /// `None`: let it through; `Some(secs)`: 429, a slot frees in `secs`.
    pub refused: Option<u64>,
    pub remaining: u64,
    /// Unix time the oldest counted request leaves the hourly window.
    pub reset: u64,
}

impl RateWindows {
    pub(crate) fn admit(&mut self, now: Instant, per_minute: u64, per_hour: u64) -> RateDecision {
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        while self.minute.front().is_some_and(|t| *t + MINUTE <= now) {
            self.minute.pop_front();
        }
        while self.hour.front().is_some_and(|t| *t + HOUR <= now) {
            self.hour.pop_front();
        }
        let free_in = |window: &VecDeque<Instant>, span: Duration, limit: u64| {
            // 0 turns the limit off.
            if limit == 0 || (window.len() as u64) < limit {
                return None;
            }
            let first = window.len() - limit as usize;
            let at = window.get(first).map_or(now, |t| *t + span);
            Some(at.saturating_duration_since(now).as_millis().div_ceil(1000) as u64)
        };
        let refused = match (
            free_in(&self.minute, MINUTE, per_minute),
            free_in(&self.hour, HOUR, per_hour),
        ) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0)).max(1)),
        };
        if refused.is_none() {
            self.minute.push_back(now);
            self.hour.push_back(now);
        }
        let oldest = self.hour.front().map_or(Duration::ZERO, |t| {
            (*t + HOUR).saturating_duration_since(now)
        });
        RateDecision {
            refused,
            remaining: per_hour.saturating_sub(self.hour.len() as u64),
            reset: unix_now() + oldest.as_secs(),
        }
    }
}

pub(crate) struct Inner {
    pub settings: Settings,
    /// Set by the `ratelimit_remaining` fault: shown instead of the hourly window's count,
    /// counting down by one per request.
    pub ratelimit_remaining: Option<u64>,
    pub rate: RateWindows,
    pub started: Instant,
    pub next_droplet_id: u64,
    pub next_key_id: u64,
    pub next_action_id: u64,
    pub next_firewall: u64,
    pub droplets: BTreeMap<u64, DropletRec>,
    pub keys: BTreeMap<u64, KeyRec>,
    pub firewalls: Vec<FirewallRec>,
    pub actions: BTreeMap<u64, ActionRec>,
    pub faults: Faults,
    pub calls: Vec<ApiCall>,
}

impl Inner {
    pub(crate) fn new(settings: Settings, faults: Faults) -> Self {
        let mut inner = Self {
            settings,
            ratelimit_remaining: None,
            rate: RateWindows::default(),
            started: Instant::now(),
            next_droplet_id: 3_164_444,
            next_key_id: 512_189,
            next_action_id: 36_804_636,
            next_firewall: 1,
            droplets: BTreeMap::new(),
            keys: BTreeMap::new(),
            firewalls: Vec::new(),
            actions: BTreeMap::new(),
            faults: Faults::default(),
            calls: Vec::new(),
        };
        inner.apply_faults(&faults);
        inner
    }

    pub(crate) fn apply_faults(&mut self, f: &Faults) {
        self.faults.merge_counted(f);
        if let Some(limit) = f.droplet_limit {
            self.settings.droplet_limit = limit;
        }
        if let Some(ms) = f.boot_delay_ms {
            self.settings.boot_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = f.action_delay_ms {
            self.settings.action_delay = Duration::from_millis(ms);
        }
        if let Some(n) = f.ratelimit_remaining {
            self.ratelimit_remaining = Some(n);
        }
        if let Some(ms) = f.api_latency_ms {
            self.settings.api_latency = Duration::from_millis(ms);
        }
    }

    /// The counted faults still pending plus the current settings.
    pub(crate) fn faults_view(&self) -> Faults {
        Faults {
            droplet_limit: Some(self.settings.droplet_limit),
            boot_delay_ms: Some(self.settings.boot_delay.as_millis() as u64),
            action_delay_ms: Some(self.settings.action_delay.as_millis() as u64),
            ratelimit_remaining: Some(self.ratelimit_remaining.unwrap_or_else(|| {
                self.settings
                    .ratelimit_limit
                    .saturating_sub(self.rate.hour.len() as u64)
            })),
            api_latency_ms: Some(self.settings.api_latency.as_millis() as u64),
            ..self.faults.clone()
        }
    }

    pub(crate) fn new_action(&mut self, kind: &str, droplet_id: u64, region: &str) -> u64 {
        let id = self.next_action_id;
        self.next_action_id += 1;
        self.actions.insert(
            id,
            ActionRec {
                id,
                kind: kind.to_string(),
                droplet_id,
                status: "in-progress",
                started_at: now_rfc3339(),
                completed_at: None,
                region: region.to_string(),
            },
        );
        id
    }

    pub(crate) fn finish_action(&mut self, id: u64, ok: bool) {
        if let Some(a) = self.actions.get_mut(&id) {
            a.status = if ok { "completed" } else { "errored" };
            a.completed_at = Some(now_rfc3339());
        }
    }
}

pub(crate) struct Shared {
    pub addr: SocketAddr,
    pub token: String,
    pub backend: Arc<dyn DropletBackend>,
    pub inner: Mutex<Inner>,
    pub tasks: Mutex<JoinSet<()>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is plain data; a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(fut);
    }

    pub(crate) fn abort_tasks(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn droplet_json(d: &DropletRec) -> Value {
    let size = catalog::size(&d.spec.size);
    let region = catalog::region(&d.spec.region);
    let mut v4 = Vec::new();
    if let Some(a) = d.addrs {
        v4.push(json!({"ip_address": a.private_ipv4.to_string(), "netmask": "255.255.240.0", "gateway": "nil", "type": "private"}));
        let o = a.public_ipv4.octets();
        v4.push(json!({
            "ip_address": a.public_ipv4.to_string(),
            "netmask": "255.255.255.0",
            "gateway": format!("{}.{}.{}.1", o[0], o[1], o[2]),
            "type": "public"
        }));
    }
    let mut features = vec!["private_networking"];
    if d.monitoring {
        features.push("monitoring");
    }
    json!({
        "id": d.spec.id,
        "name": d.spec.name,
        "memory": size.map_or(0, |s| s.memory),
        "vcpus": size.map_or(0, |s| s.vcpus),
        "disk": size.map_or(0, |s| s.disk),
        "disk_info": [{"type": "local", "size": {"amount": size.map_or(0, |s| s.disk), "unit": "gib"}}],
        "locked": d.locked,
        "status": d.status.as_str(),
        "kernel": null,
        "created_at": d.created_at,
        "features": features,
        "backup_ids": [],
        "next_backup_window": null,
        "snapshot_ids": [],
        "image": catalog::image_json(&d.spec.image),
        "volume_ids": [],
        "size": size.map_or(Value::Null, catalog::size_json),
        "size_slug": d.spec.size,
        "networks": {"v4": v4, "v6": []},
        "region": region.map_or(Value::Null, catalog::region_json),
        "tags": d.spec.tags,
        "vpc_uuid": d.vpc_uuid,
    })
}

pub(crate) fn key_json(k: &KeyRec) -> Value {
    json!({"id": k.id, "fingerprint": k.fingerprint, "public_key": k.public_key, "name": k.name})
}

pub(crate) fn firewall_json(f: &FirewallRec) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "status": "succeeded",
        "inbound_rules": f.inbound,
        "outbound_rules": f.outbound,
        "created_at": f.created_at,
        "droplet_ids": f.droplet_ids,
        "tags": f.tags,
        "pending_changes": [],
    })
}

pub(crate) fn action_json(a: &ActionRec) -> Value {
    let region = catalog::region(&a.region);
    json!({
        "id": a.id,
        "status": a.status,
        "type": a.kind,
        "started_at": a.started_at,
        "completed_at": a.completed_at,
        "resource_id": a.droplet_id,
        "resource_type": "droplet",
        "region": region.map_or(Value::Null, catalog::region_json),
        "region_slug": a.region,
    })
}
