use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use md5::{Digest, Md5};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::clock::{lock, Clock};
use super::error::{one_line, DoError};
use super::types::{
    Account, Action, ApiErrorBody, Droplet, DropletCreate, Firewall, FirewallCreate, Region, Size,
    SshKey, SshKeyCreate, Vpc,
};

/// Where the real API lives. `DIGITALOCEAN_API_URL` overrides it (read by the CLI).
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";

/// DigitalOcean pages hold at most 200 items; asking for the most keeps listings to one call.
const PER_PAGE: u32 = 200;

/// How the client waits when DigitalOcean pushes back. Every wait is bounded by `deadline`,
/// counted from the first attempt of one request.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff after a 5xx or a lost connection; doubles each time.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A `retry-after` (or wait for `ratelimit-reset`) longer than this is cut to it.
    pub max_retry_after: Duration,
    /// No request, waits included, runs longer than this.
    pub deadline: Duration,
    /// Below this many requests left in the hour, pause before each request.
    pub low_remaining: u64,
    pub low_remaining_pause: Duration,
    /// Timeout of one HTTP exchange.
    pub request_timeout: Duration,
    /// Requests the client sends in any minute, counted by itself before DigitalOcean
    /// answers 429 (DigitalOcean's limit is 250 per minute per token).
    pub per_minute: u32,
    /// Requests the client sends in any hour (DigitalOcean's limit is 5,000 per token).
    pub per_hour: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            deadline: Duration::from_secs(300),
            low_remaining: 25,
            low_remaining_pause: Duration::from_secs(2),
            request_timeout: Duration::from_secs(60),
            per_minute: 250,
            per_hour: 5000,
        }
    }
}

// Counted here, reported through `Provider::api_call_count` like any cloud provider's.
pub use crate::ApiCallCount;

#[derive(Debug, Default)]
struct RateState {
    remaining: Option<u64>,
    reset: Option<u64>,
}

/// The client's own count of what it sent: a sliding window per limit, holding the send
/// time of every request in it (sent or booked for later). DigitalOcean counts requests in
/// a sliding window too, so staying within both windows here means no 429 from a client
/// that is alone on its token; the `ratelimit-*` headers still cover other users of it.
#[derive(Debug)]
pub(crate) struct Windows {
    windows: Vec<(Duration, usize, std::collections::VecDeque<Instant>)>,
}

/// DigitalOcean stamps arrivals, the client stamps departures: a request's latency may
/// push it into a later window than the client thinks, so the client's window is longer.
const WINDOW_MARGIN: Duration = Duration::from_secs(1);

impl Windows {
    pub(crate) fn new(per_minute: u32, per_hour: u32) -> Self {
        let mut windows = Vec::new();
        for (span, limit) in [
            (Duration::from_secs(60), per_minute),
            (Duration::from_secs(3600), per_hour),
        ] {
            if limit > 0 {
                windows.push((
                    span + WINDOW_MARGIN,
                    limit as usize,
                    std::collections::VecDeque::new(),
                ));
            }
        }
        Self { windows }
    }

    /// Books the earliest send time at or after `now` that keeps every window within its
    /// limit, and returns it. Books are kept in order, so concurrent callers queue up.
    pub(crate) fn book(&mut self, now: Instant) -> Instant {
        let mut at = now;
        for (span, limit, sent) in &mut self.windows {
            while sent.front().is_some_and(|t| *t + *span <= now) {
                sent.pop_front();
            }
            if let Some(last) = sent.back() {
                at = at.max(*last);
            }
            if sent.len() >= *limit {
                // The request that must leave the window before this one may be sent.
                at = at.max(sent[sent.len() - *limit] + *span);
            }
        }
        for (_, _, sent) in &mut self.windows {
            sent.push_back(at);
        }
        at
    }
}

struct Req {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    poll: bool,
    /// Whether sending it twice is harmless, so that a 5xx or a lost connection may be retried.
    repeatable: bool,
}

impl Req {
    fn new(method: Method, path: impl Into<String>) -> Self {
        let repeatable = method == Method::GET || method == Method::DELETE || method == Method::PUT;
        Self {
            method,
            path: path.into(),
            body: None,
            poll: false,
            repeatable,
        }
    }

    fn json<T: Serialize>(mut self, body: &T) -> Self {
        // Serialising plain structs of strings and numbers cannot fail.
        self.body = serde_json::to_vec(body).ok();
        self
    }

    fn poll(mut self, poll: bool) -> Self {
        self.poll = poll;
        self
    }

    fn repeatable(mut self, repeatable: bool) -> Self {
        self.repeatable = repeatable;
        self
    }
}

struct Answer {
    status: StatusCode,
    body: bytes::Bytes,
}

/// A client for the parts of DigitalOcean's API v2 that swarmup uses.
pub struct DoClient {
    http: reqwest::Client,
    base: String,
    host: String,
    token: String,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    rate: Mutex<RateState>,
    windows: Mutex<Windows>,
    calls: AtomicU64,
    polls: AtomicU64,
    retries: AtomicU64,
}

impl fmt::Debug for DoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoClient")
            .field("base", &self.base)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl DoClient {
    /// `api_url` must be https, or http to this machine (a local fake API).
    pub fn new(
        api_url: &str,
        token: &str,
        policy: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DoError> {
        let trimmed = api_url.trim().trim_end_matches('/');
        let bad = |reason: &str| DoError::BadUrl {
            url: api_url.to_string(),
            reason: reason.to_string(),
        };
        let url = Url::parse(trimmed)
            .map_err(|e| bad(&format!("{e}: use a url like {DEFAULT_API_URL}")))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let loopback = is_loopback_host(&host);
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(bad(
                    "plain http would send the token in clear: use https, or http only to 127.0.0.1, ::1 or localhost",
                ))
            }
            _ => return Err(bad(&format!("use a url like {DEFAULT_API_URL}"))),
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("drop the query or fragment"));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("swarmup/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .timeout(policy.request_timeout);
        if loopback {
            // A proxy from the environment must never see requests meant for this machine.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| DoError::Client {
            url: api_url.to_string(),
            detail: chain(&e),
        })?;
        let windows = Windows::new(policy.per_minute, policy.per_hour);
        Ok(Self {
            http,
            base: trimmed.to_string(),
            host: url
                .port()
                .map_or_else(|| host.clone(), |p| format!("{host}:{p}")),
            token: token.to_string(),
            policy,
            clock,
            rate: Mutex::new(RateState::default()),
            windows: Mutex::new(windows),
            calls: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn api_calls(&self) -> ApiCallCount {
        ApiCallCount {
            calls: self.calls.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    // ---- account, regions, sizes -------------------------------------------------------

    pub async fn account(&self) -> Result<Account, DoError> {
        let v: Value = self.get_json("/v2/account", false).await?;
        self.field(&Method::GET, "/v2/account", v, "account")
    }

    pub async fn regions(&self) -> Result<Vec<Region>, DoError> {
        self.get_all("/v2/regions", "regions", false).await
    }

    pub async fn sizes(&self) -> Result<Vec<Size>, DoError> {
        self.get_all("/v2/sizes", "sizes", false).await
    }

    // ---- ssh keys ------------------------------------------------------------------------

    /// The key with this MD5 fingerprint (`aa:bb:...`), `None` if the account has none.
    pub async fn ssh_key_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<SshKey>, DoError> {
        let path = format!("/v2/account/keys/{fingerprint}");
        match self.get_json::<Value>(&path, false).await {
            Ok(v) => Ok(Some(self.field(&Method::GET, &path, v, "ssh_key")?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn ssh_keys(&self) -> Result<Vec<SshKey>, DoError> {
        self.get_all("/v2/account/keys", "ssh_keys", false).await
    }

    /// Uploads a public key. When the account already holds it (DigitalOcean answers 422
    /// "already in use"), returns the existing key instead.
    pub async fn create_ssh_key(&self, name: &str, public_key: &str) -> Result<SshKey, DoError> {
        let path = "/v2/account/keys";
        let req = Req::new(Method::POST, path)
            .json(&SshKeyCreate { name, public_key })
            // A second upload of the same key is answered with 422, never a duplicate.
            .repeatable(true);
        let answer = self.execute(&req).await?;
        if answer.status.is_success() {
            let v = self.decode::<Value>(&req.method, path, &answer.body)?;
            return self.field(&req.method, path, v, "ssh_key");
        }
        let err = self.status_error(&req.method, path, &answer);
        let in_use = answer.status == StatusCode::UNPROCESSABLE_ENTITY
            && err
                .to_string()
                .to_ascii_lowercase()
                .contains("already in use");
        if in_use {
            if let Some(fp) = md5_fingerprint(public_key) {
                if let Some(key) = self.ssh_key_by_fingerprint(&fp).await? {
                    return Ok(key);
                }
            }
        }
        Err(err)
    }

    /// `false` when the key was already gone.
    pub async fn delete_ssh_key(&self, id: u64) -> Result<bool, DoError> {
        self.delete(&format!("/v2/account/keys/{id}")).await
    }

    // ---- droplets ------------------------------------------------------------------------

    /// How many droplets the account has, from `meta.total` of a one-item page.
    pub async fn droplet_count(&self) -> Result<u64, DoError> {
        let path = "/v2/droplets?per_page=1";
        let v: Value = self.get_json(path, false).await?;
        match v.pointer("/meta/total").and_then(Value::as_u64) {
            Some(n) => Ok(n),
            None => Err(DoError::Decode {
                method: "GET".into(),
                path: path.into(),
                detail: "no meta.total in the answer".into(),
            }),
        }
    }

    /// Every droplet with `tag`, following `links.pages.next`. With `poll` the request
    /// counts as a status poll.
    pub async fn droplets_by_tag(&self, tag: &str, poll: bool) -> Result<Vec<Droplet>, DoError> {
        self.get_all(&format!("/v2/droplets?tag_name={tag}"), "droplets", poll)
            .await
    }

    pub async fn droplet(&self, id: u64, poll: bool) -> Result<Option<Droplet>, DoError> {
        let path = format!("/v2/droplets/{id}");
        match self.get_json::<Value>(&path, poll).await {
            Ok(v) => Ok(Some(self.field(&Method::GET, &path, v, "droplet")?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One `POST /v2/droplets` with `names`. Never retried on a 5xx or a lost connection:
    /// DigitalOcean may have made some droplets, and only a fresh listing can tell.
    pub async fn create_droplets(&self, body: &DropletCreate) -> Result<Vec<Droplet>, DoError> {
        let path = "/v2/droplets";
        let req = Req::new(Method::POST, path).json(body).repeatable(false);
        let answer = self.execute(&req).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&req.method, path, &answer));
        }
        let mut v = self.decode::<Value>(&req.method, path, &answer.body)?;
        if let Some(list) = v.get_mut("droplets") {
            return serde_json::from_value(list.take()).map_err(|e| DoError::Decode {
                method: "POST".into(),
                path: path.into(),
                detail: e.to_string(),
            });
        }
        let one: Droplet = self.field(&req.method, path, v, "droplet")?;
        Ok(vec![one])
    }

    /// Deletes every droplet with `tag` in one request.
    pub async fn delete_droplets_by_tag(&self, tag: &str) -> Result<(), DoError> {
        self.delete(&format!("/v2/droplets?tag_name={tag}")).await?;
        Ok(())
    }

    /// `false` when the droplet was already gone.
    pub async fn delete_droplet(&self, id: u64) -> Result<bool, DoError> {
        self.delete(&format!("/v2/droplets/{id}")).await
    }

    /// Starts a droplet action such as `power_off` or `power_on`.
    pub async fn droplet_action(&self, id: u64, kind: &str) -> Result<Action, DoError> {
        let path = format!("/v2/droplets/{id}/actions");
        let req = Req::new(Method::POST, path.clone())
            .json(&serde_json::json!({ "type": kind }))
            .repeatable(false);
        let answer = self.execute(&req).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&req.method, &path, &answer));
        }
        let v = self.decode::<Value>(&req.method, &path, &answer.body)?;
        self.field(&req.method, &path, v, "action")
    }

    pub async fn action(&self, id: u64, poll: bool) -> Result<Action, DoError> {
        let path = format!("/v2/actions/{id}");
        let v: Value = self.get_json(&path, poll).await?;
        self.field(&Method::GET, &path, v, "action")
    }

    // ---- vpcs ----------------------------------------------------------------------------

    pub async fn vpcs(&self) -> Result<Vec<Vpc>, DoError> {
        self.get_all("/v2/vpcs", "vpcs", false).await
    }

    /// The VPC that DigitalOcean puts droplets of `region` in when none is named.
    pub async fn default_vpc(&self, region: &str) -> Result<Option<Vpc>, DoError> {
        Ok(self
            .vpcs()
            .await?
            .into_iter()
            .find(|v| v.default && v.region == region))
    }

    // ---- firewalls -----------------------------------------------------------------------

    pub async fn firewalls(&self) -> Result<Vec<Firewall>, DoError> {
        self.get_all("/v2/firewalls", "firewalls", false).await
    }

    /// Not retried on a 5xx or a lost connection: a second firewall of the same name would
    /// be made. Callers look the firewall up by name before creating it.
    pub async fn create_firewall(&self, body: &FirewallCreate) -> Result<Firewall, DoError> {
        let path = "/v2/firewalls";
        let req = Req::new(Method::POST, path).json(body).repeatable(false);
        let answer = self.execute(&req).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&req.method, path, &answer));
        }
        let v = self.decode::<Value>(&req.method, path, &answer.body)?;
        self.field(&req.method, path, v, "firewall")
    }

    /// Replaces the name, rules and tags of a firewall.
    pub async fn update_firewall(
        &self,
        id: &str,
        body: &FirewallCreate,
    ) -> Result<Firewall, DoError> {
        let path = format!("/v2/firewalls/{id}");
        let req = Req::new(Method::PUT, path.clone()).json(body);
        let answer = self.execute(&req).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&req.method, &path, &answer));
        }
        let v = self.decode::<Value>(&req.method, &path, &answer.body)?;
        self.field(&req.method, &path, v, "firewall")
    }

    /// `false` when the firewall was already gone.
    pub async fn delete_firewall(&self, id: &str) -> Result<bool, DoError> {
        self.delete(&format!("/v2/firewalls/{id}")).await
    }

    // ---- plumbing ------------------------------------------------------------------------

    async fn delete(&self, path: &str) -> Result<bool, DoError> {
        let req = Req::new(Method::DELETE, path);
        let answer = self.execute(&req).await?;
        if answer.status.is_success() {
            return Ok(true);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Err(self.status_error(&req.method, path, &answer))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str, poll: bool) -> Result<T, DoError> {
        let req = Req::new(Method::GET, path).poll(poll);
        let answer = self.execute(&req).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&req.method, path, &answer));
        }
        self.decode(&req.method, path, &answer.body)
    }

    /// All items under `key` of a paginated listing.
    async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        poll: bool,
    ) -> Result<Vec<T>, DoError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{sep}per_page={PER_PAGE}"));
        let mut out = Vec::new();
        let mut seen = Vec::new();
        while let Some(page) = next.take() {
            if seen.contains(&page) || seen.len() >= 1000 {
                return Err(DoError::Decode {
                    method: "GET".into(),
                    path: path.into(),
                    detail: format!("pagination does not end (page {page} again)"),
                });
            }
            let mut v: Value = self.get_json(&page, poll).await?;
            let items = v.get_mut(key).map(Value::take).unwrap_or(Value::Null);
            let items: Vec<T> = match items {
                Value::Null => Vec::new(),
                items => serde_json::from_value(items).map_err(|e| DoError::Decode {
                    method: "GET".into(),
                    path: page.clone(),
                    detail: format!("{key}: {e}"),
                })?,
            };
            out.extend(items);
            next = match v.pointer("/links/pages/next").and_then(Value::as_str) {
                Some(link) => Some(self.relative(path, link)?),
                None => None,
            };
            seen.push(page);
        }
        Ok(out)
    }

    /// Turns a `links.pages.next` URL into a path on our base, so that the token only ever
    /// goes to the configured API host.
    fn relative(&self, path: &str, link: &str) -> Result<String, DoError> {
        if let Some(rest) = link.strip_prefix(&self.base) {
            if rest.starts_with("/v2/") {
                return Ok(rest.to_string());
            }
        }
        let url = Url::parse(link).map_err(|e| DoError::Decode {
            method: "GET".into(),
            path: path.into(),
            detail: format!("bad next page link {link}: {e}"),
        })?;
        if !url.path().starts_with("/v2/") {
            return Err(DoError::Decode {
                method: "GET".into(),
                path: path.into(),
                detail: format!("next page link {link} is not an api v2 path"),
            });
        }
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<T, DoError> {
        serde_json::from_slice(body).map_err(|e| DoError::Decode {
            method: method.to_string(),
            path: path.into(),
            detail: e.to_string(),
        })
    }

    fn field<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        mut v: Value,
        key: &str,
    ) -> Result<T, DoError> {
        let inner = v
            .get_mut(key)
            .map(Value::take)
            .ok_or_else(|| DoError::Decode {
                method: method.to_string(),
                path: path.into(),
                detail: format!("no {key} in the answer"),
            })?;
        serde_json::from_value(inner).map_err(|e| DoError::Decode {
            method: method.to_string(),
            path: path.into(),
            detail: format!("{key}: {e}"),
        })
    }

    fn status_error(&self, method: &Method, path: &str, answer: &Answer) -> DoError {
        let body: ApiErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
        let message = if body.message.trim().is_empty() {
            answer
                .status
                .canonical_reason()
                .unwrap_or("no message")
                .to_ascii_lowercase()
        } else {
            one_line(&body.message)
        };
        match answer.status {
            StatusCode::UNAUTHORIZED => DoError::Unauthorized { message },
            StatusCode::NOT_FOUND => DoError::NotFound {
                method: method.to_string(),
                path: path.into(),
                message,
            },
            status => DoError::Refused {
                method: method.to_string(),
                path: path.into(),
                status: status.as_u16(),
                id: if body.id.is_empty() {
                    "error".into()
                } else {
                    body.id
                },
                message,
            },
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.policy
            .base_backoff
            .saturating_mul(factor)
            .min(self.policy.max_backoff)
    }

    fn count(&self, poll: bool, attempt: u32) {
        let counter = if attempt > 1 {
            &self.retries
        } else if poll {
            &self.polls
        } else {
            &self.calls
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn note_rate(&self, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let mut rate = lock(&self.rate);
        if let Some(remaining) = num("ratelimit-remaining") {
            rate.remaining = Some(remaining);
        }
        if let Some(reset) = num("ratelimit-reset") {
            rate.reset = Some(reset);
        }
    }

    /// Waits for a free slot in the client's own per-minute and per-hour windows, then
    /// slows down when DigitalOcean says the hourly budget is nearly spent, and waits for
    /// the window to move when it is spent.
    async fn pace(
        &self,
        req: &Req,
        started: Instant,
        deadline: Instant,
        last: &str,
    ) -> Result<(), DoError> {
        let now = self.clock.now();
        let at = lock(&self.windows).book(now);
        if at > now {
            tracing::debug!(path = %req.path, wait_ms = (at - now).as_millis() as u64, "keeping within DigitalOcean's rate limit");
            self.wait(req, at - now, started, deadline, last).await?;
        }
        let (remaining, reset) = {
            let rate = lock(&self.rate);
            (rate.remaining, rate.reset)
        };
        match remaining {
            Some(0) => {
                let until_reset = reset
                    .map(|r| Duration::from_secs(r.saturating_sub(self.clock.unix_now())))
                    .unwrap_or(self.policy.low_remaining_pause);
                let wait = until_reset
                    .max(Duration::from_secs(1))
                    .min(self.policy.max_retry_after);
                tracing::warn!(path = %req.path, wait_secs = wait.as_secs(), "DigitalOcean rate limit spent, waiting");
                self.wait(req, wait, started, deadline, last).await?;
                // The wait was for this exhaustion; the next answer says where we stand.
                lock(&self.rate).remaining = None;
            }
            Some(n) if n < self.policy.low_remaining => {
                tracing::debug!(remaining = n, "DigitalOcean rate limit low, slowing down");
                self.wait(
                    req,
                    self.policy.low_remaining_pause,
                    started,
                    deadline,
                    last,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn wait(
        &self,
        req: &Req,
        wait: Duration,
        started: Instant,
        deadline: Instant,
        last: &str,
    ) -> Result<(), DoError> {
        let now = self.clock.now();
        if now + wait > deadline {
            return Err(DoError::Deadline {
                method: req.method.to_string(),
                path: req.path.clone(),
                elapsed_secs: now.saturating_duration_since(started).as_secs(),
                wait_secs: wait.as_secs().max(1),
                deadline_secs: self.policy.deadline.as_secs(),
                last: last.to_string(),
            });
        }
        self.clock.sleep(wait).await;
        Ok(())
    }

    async fn execute(&self, req: &Req) -> Result<Answer, DoError> {
        let started = self.clock.now();
        let deadline = started + self.policy.deadline;
        let url = format!("{}{}", self.base, req.path);
        let max = self.policy.max_attempts.max(1);
        let mut last = String::from("none yet");
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.pace(req, started, deadline, &last).await?;
            self.count(req.poll, attempt);
            let mut builder = self
                .http
                .request(req.method.clone(), &url)
                .bearer_auth(&self.token)
                .header(ACCEPT, "application/json");
            if let Some(body) = &req.body {
                builder = builder
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let lost = match builder.send().await {
                Ok(resp) => {
                    self.note_rate(resp.headers());
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.bytes().await {
                        Ok(body) => {
                            let answer = Answer { status, body };
                            if status == StatusCode::TOO_MANY_REQUESTS {
                                let message = self.message_of(&answer);
                                last = format!("429 {message}");
                                if attempt >= max {
                                    return Err(DoError::RateLimited {
                                        method: req.method.to_string(),
                                        path: req.path.clone(),
                                        attempts: attempt,
                                        message,
                                    });
                                }
                                // A 429 means the request was not carried out, so even a
                                // POST may go again.
                                let wait = retry_after
                                    .unwrap_or_else(|| self.backoff(attempt))
                                    .min(self.policy.max_retry_after);
                                tracing::info!(path = %req.path, wait_secs = wait.as_secs(), "DigitalOcean answered 429, waiting");
                                self.wait(req, wait, started, deadline, &last).await?;
                                continue;
                            }
                            if status.is_server_error() {
                                let message = self.message_of(&answer);
                                last = format!("{} {message}", status.as_u16());
                                if !req.repeatable || attempt >= max {
                                    return Err(DoError::Server {
                                        method: req.method.to_string(),
                                        path: req.path.clone(),
                                        status: status.as_u16(),
                                        attempts: attempt,
                                        message,
                                    });
                                }
                                let wait = self.backoff(attempt);
                                tracing::info!(path = %req.path, status = status.as_u16(), wait_secs = wait.as_secs(), "DigitalOcean server error, backing off");
                                self.wait(req, wait, started, deadline, &last).await?;
                                continue;
                            }
                            return Ok(answer);
                        }
                        Err(e) => chain(&e),
                    }
                }
                Err(e) => chain(&e),
            };
            last = format!("connection lost: {lost}");
            if !req.repeatable || attempt >= max {
                return Err(DoError::Connection {
                    host: self.host.clone(),
                    method: req.method.to_string(),
                    path: req.path.clone(),
                    detail: lost,
                    advice: if req.repeatable {
                        "check the network and run the command again"
                    } else {
                        "DigitalOcean may or may not have carried it out: run the command again, it picks up what exists"
                    },
                });
            }
            let wait = self.backoff(attempt);
            tracing::info!(path = %req.path, wait_secs = wait.as_secs(), "connection to DigitalOcean lost, retrying");
            self.wait(req, wait, started, deadline, &last).await?;
        }
    }

    fn message_of(&self, answer: &Answer) -> String {
        let body: ApiErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
        if body.message.trim().is_empty() {
            "no message".into()
        } else {
            one_line(&body.message)
        }
    }
}

/// The MD5 fingerprint (`aa:bb:...`) DigitalOcean shows for an OpenSSH public key line,
/// `None` if the line is not one.
pub fn md5_fingerprint(public_key: &str) -> Option<String> {
    let mut parts = public_key.split_whitespace();
    let kind = parts.next()?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    if blob.is_empty() {
        return None;
    }
    let digest = Md5::digest(&blob);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One line with the error and its causes; reqwest's own message hides the cause.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    one_line(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::super::clock::SystemClock;
    use super::*;

    fn client(url: &str) -> Result<DoClient, DoError> {
        DoClient::new(url, "t", RetryPolicy::default(), Arc::new(SystemClock))
    }

    #[test]
    fn fingerprint_matches_ssh_keygen_md5() {
        // `ssh-keygen -E md5 -lf` prints this fingerprint for this key.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9TrNgtf2VHeJloTqTQuEJUMkGMnCSK25Vx/l+zhH0c user@host";
        assert_eq!(
            md5_fingerprint(key).as_deref(),
            Some("f5:a4:be:64:6f:c9:df:3f:cb:41:f7:72:42:27:92:81")
        );
        assert_eq!(md5_fingerprint("not a key"), None);
        assert_eq!(md5_fingerprint("ssh-ed25519 !!!"), None);
    }

    #[test]
    fn api_url_must_be_https_unless_loopback() {
        assert!(client("https://api.digitalocean.com").is_ok());
        assert!(client("http://127.0.0.1:8080/").is_ok());
        assert!(client("http://[::1]:8080").is_ok());
        assert!(client("http://localhost:9").is_ok());
        let err = client("http://api.example.com").unwrap_err().to_string();
        assert!(err.contains("send the token in clear"), "{err}");
        assert!(client("ftp://x").is_err());
        assert!(client("not a url").is_err());
    }

    #[test]
    fn the_windows_book_no_more_than_the_limit_in_any_minute() {
        let mut w = Windows::new(3, 5);
        let t0 = Instant::now();
        let booked: Vec<Duration> = (0..6).map(|_| w.book(t0) - t0).collect();
        let minute = Duration::from_secs(60) + WINDOW_MARGIN;
        let hour = Duration::from_secs(3600) + WINDOW_MARGIN;
        // Three at once, the fourth when the first leaves the minute, the sixth when the
        // first leaves the hour.
        assert_eq!(
            &booked[..4],
            &[Duration::ZERO, Duration::ZERO, Duration::ZERO, minute]
        );
        assert_eq!(booked[4], minute);
        assert_eq!(booked[5], hour);
        // Later, with the windows empty again, a request goes at once.
        let later = t0 + Duration::from_secs(10_000);
        assert_eq!(w.book(later), later);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = client("https://api.digitalocean.com").unwrap();
        let secs: Vec<u64> = (1..=7).map(|a| c.backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn next_links_stay_on_the_configured_host() {
        let c = client("http://127.0.0.1:1234").unwrap();
        assert_eq!(
            c.relative("/v2/x", "http://127.0.0.1:1234/v2/droplets?page=2")
                .unwrap(),
            "/v2/droplets?page=2"
        );
        assert_eq!(
            c.relative(
                "/v2/x",
                "https://api.digitalocean.com/v2/droplets?page=3&per_page=200"
            )
            .unwrap(),
            "/v2/droplets?page=3&per_page=200"
        );
        assert!(c.relative("/v2/x", "https://evil.example/steal").is_err());
    }
}
