//! The certificate authority side of joining: checks join tokens, creates the node and
//! signs its certificate with the role the token grants.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use swarm_pki::{JoinToken, RootCa, SignRequest};
use swarm_state::models::{
    Node, NodeDescription, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState,
    NodeStatus,
};
use swarm_state::proto::{JoinRequest, JoinResponse, RenewRequest};
use swarm_state::{node_role, ClusterInfo, ClusterState, Command};

use super::Manager;
use crate::error::ApiError;

/// Docker's words for a token that matches neither role.
pub const INVALID_TOKEN: &str = "A valid join token is necessary to join this cluster";

fn cluster(state: &ClusterState) -> Result<&ClusterInfo, ApiError> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this node is not part of a swarm".into()))
}

fn root_ca(info: &ClusterInfo) -> Result<RootCa, ApiError> {
    RootCa::from_pem(&info.root_ca_cert_pem, &info.root_ca_key_pem)
        .map_err(|e| ApiError::Internal(format!("cluster root CA unusable: {e}")))
}

/// A node's role in the state as the node layer names it (wire types, the node file).
pub fn node_role_kind(role: NodeSpecRoleEnum) -> swarm_contract::Role {
    match role {
        NodeSpecRoleEnum::MANAGER => swarm_contract::Role::Manager,
        _ => swarm_contract::Role::Worker,
    }
}

fn pki_role(role: NodeSpecRoleEnum) -> swarm_pki::Role {
    match role {
        NodeSpecRoleEnum::MANAGER => swarm_pki::Role::Manager,
        _ => swarm_pki::Role::Worker,
    }
}

fn host_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .ok()
        .or_else(|| addr.parse().ok())
}

/// The extra addresses a node asks its certificate to name.
fn extra_ips(sans: &[String]) -> Result<Vec<IpAddr>, ApiError> {
    sans.iter()
        .map(|s| {
            s.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid certificate address {s:?}: give an IP address"
                ))
            })
        })
        .collect()
}

/// How long the cluster's node certificates last: `CAConfig.NodeCertExpiry`, SwarmKit's
/// 90 days when unset.
pub fn node_cert_validity(info: &ClusterInfo) -> Duration {
    info.spec
        .ca_config
        .as_ref()
        .and_then(|c| c.node_cert_expiry)
        .filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(n.unsigned_abs()))
        .unwrap_or(swarm_pki::NODE_CERT_VALIDITY)
}

/// The addresses a certificate may name, and nothing the requester merely claims: the
/// address its request came from, then for a manager its advertise address, the
/// cluster's extra names (`--cert-san` at init) and the extra names it was admitted with.
fn certificate_ips(
    remote: Option<IpAddr>,
    role: NodeSpecRoleEnum,
    advertise: Option<IpAddr>,
    cluster_sans: &[String],
    node_sans: &[String],
) -> Result<Vec<IpAddr>, ApiError> {
    let mut ips: Vec<IpAddr> = remote.into_iter().collect();
    if role == NodeSpecRoleEnum::MANAGER {
        ips.extend(advertise);
        ips.extend(extra_ips(cluster_sans)?);
        ips.extend(extra_ips(node_sans)?);
    }
    let mut unique = Vec::with_capacity(ips.len());
    for ip in ips {
        if !unique.contains(&ip) {
            unique.push(ip);
        }
    }
    Ok(unique)
}

/// The hostname a node joins with names it in `docker node ls` and in its certificate.
fn check_join_hostname(hostname: &str) -> Result<(), ApiError> {
    swarm_pki::check_hostname(hostname)
        .map_err(|reason| ApiError::BadRequest(format!("cannot join: {reason}")))
}

/// Too many failed joins from one address: refused until `retry_after` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

/// Counts failed joins per caller address so that guessing tokens gets slow: the first
/// [`JoinLimiter::FREE`] failures cost nothing, then each further failure blocks the
/// address for twice as long as the one before (from [`JoinLimiter::BASE`] up to
/// [`JoinLimiter::MAX`]). An address quiet for [`JoinLimiter::FORGET`] starts afresh, and
/// a successful join clears it. Time is given by the caller.
#[derive(Debug, Default)]
pub struct JoinLimiter {
    entries: HashMap<IpAddr, FailureRecord>,
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl JoinLimiter {
    pub const FREE: u32 = 5;
    pub const BASE: Duration = Duration::from_secs(2);
    pub const MAX: Duration = Duration::from_secs(5 * 60);
    pub const FORGET: Duration = Duration::from_secs(15 * 60);
    /// Addresses remembered at most; the stalest are dropped beyond it.
    const CAPACITY: usize = 10_000;

    /// Whether `addr` may try to join at `now`.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Throttled> {
        match self.entries.get(&addr).and_then(|r| r.blocked_until) {
            Some(until) if until > now => Err(Throttled {
                retry_after: until - now,
            }),
            _ => Ok(()),
        }
    }

    /// Records a failed join; returns the block it starts, if any.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) -> Option<Duration> {
        if self.entries.len() >= Self::CAPACITY && !self.entries.contains_key(&addr) {
            self.entries
                .retain(|_, r| now.saturating_duration_since(r.last) < Self::FORGET);
            if self.entries.len() >= Self::CAPACITY {
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(a, _)| *a)
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        let record = self.entries.entry(addr).or_insert(FailureRecord {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(record.last) >= Self::FORGET {
            record.failures = 0;
            record.blocked_until = None;
        }
        record.failures += 1;
        record.last = now;
        if record.failures <= Self::FREE {
            return None;
        }
        let doublings = (record.failures - Self::FREE - 1).min(16);
        let block = Self::BASE.saturating_mul(1 << doublings).min(Self::MAX);
        record.blocked_until = Some(now + block);
        Some(block)
    }

    pub fn succeeded(&mut self, addr: IpAddr) {
        self.entries.remove(&addr);
    }
}

/// One limiter per process: joins reach whichever manager the joiner dialled, and each
/// keeps its own count.
fn join_limiter() -> &'static Mutex<JoinLimiter> {
    static LIMITER: OnceLock<Mutex<JoinLimiter>> = OnceLock::new();
    LIMITER.get_or_init(Default::default)
}

/// The join call as the API answers it: [`join`], throttled per caller address, failures
/// logged with that address, 429 with `Retry-After` while an address is blocked.
pub async fn join_response(
    manager: &Manager,
    request: JoinRequest,
    remote: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let caller = remote.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    if let Some(ip) = remote {
        let verdict = join_limiter()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(ip, Instant::now());
        if let Err(Throttled { retry_after }) = verdict {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            tracing::warn!(caller = %caller, retry_after_s = secs, "join refused: too many failed joins from this address");
            let message =
                format!("too many failed attempts to join from {caller}: try again in {secs} s");
            return Ok((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                Json(serde_json::json!({ "message": message })),
            )
                .into_response());
        }
    }
    let hostname = request.hostname.chars().take(80).collect::<String>();
    match join(manager, request, remote).await {
        Ok(answer) => {
            if let Some(ip) = remote {
                join_limiter()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .succeeded(ip);
            }
            Ok(Json(answer).into_response())
        }
        Err(e) => {
            if matches!(e, ApiError::BadRequest(_) | ApiError::Forbidden(_)) {
                let block = remote.and_then(|ip| {
                    join_limiter()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .failed(ip, Instant::now())
                });
                tracing::warn!(caller = %caller, hostname = ?hostname, error = %e, blocked_s = block.map(|b| b.as_secs()), "join refused");
            }
            Err(e)
        }
    }
}

/// The control addresses of the managers, the leader's first.
pub fn manager_addrs(manager: &Manager, state: &ClusterState) -> Vec<String> {
    let mut addrs: Vec<String> = Vec::new();
    if let Some((_, leader)) = manager.raft.leader() {
        addrs.push(leader.addr);
    }
    for (_, addr) in state.managers() {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        addrs.push(manager.advertise_addr.clone());
    }
    addrs
}

/// Admits a node: checks its token, hostname and addresses, records it and signs its
/// certificate. `remote` is the address the request came from.
pub async fn join(
    manager: &Manager,
    request: JoinRequest,
    remote: Option<IpAddr>,
) -> Result<JoinResponse, ApiError> {
    let state = manager.read();
    let info = cluster(&state)?;
    let parsed =
        JoinToken::parse(&request.token).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ca = root_ca(info)?;
    if parsed.digest != ca.digest() {
        return Err(ApiError::BadRequest(
            "the join token's CA digest does not match this swarm's root CA: check the token"
                .into(),
        ));
    }
    let role = if swarm_pki::tokens_match(&request.token, &info.manager_token) {
        NodeSpecRoleEnum::MANAGER
    } else if swarm_pki::tokens_match(&request.token, &info.worker_token) {
        NodeSpecRoleEnum::WORKER
    } else {
        return Err(ApiError::BadRequest(INVALID_TOKEN.into()));
    };
    check_join_hostname(&request.hostname)?;
    let advertise: SocketAddr = request.advertise_addr.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid advertise address {:?}: give IP:PORT, for example 10.0.0.5:2377",
            request.advertise_addr.chars().take(80).collect::<String>()
        ))
    })?;
    if role != NodeSpecRoleEnum::MANAGER && !request.cert_sans.is_empty() {
        return Err(ApiError::BadRequest(
            "only a node joining with the manager token may ask for extra certificate addresses (--cert-san): a worker's certificate names the address it joins from"
                .into(),
        ));
    }
    let requested_sans: Vec<String> = extra_ips(&request.cert_sans)?
        .into_iter()
        .map(|ip| ip.to_string())
        .collect();
    let availability = match request.availability.as_deref() {
        None | Some("") | Some("active") => NodeSpecAvailabilityEnum::ACTIVE,
        Some("pause") => NodeSpecAvailabilityEnum::PAUSE,
        Some("drain") => NodeSpecAvailabilityEnum::DRAIN,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid availability {other}: use active, pause or drain"
            )))
        }
    };
    let node_id = Manager::new_id();
    let cert_pem = ca
        .sign_node_for(
            &request.csr_pem,
            &SignRequest {
                node_id: node_id.clone(),
                cluster_id: info.id.clone(),
                role: pki_role(role),
                ip_sans: certificate_ips(
                    remote,
                    role,
                    Some(advertise.ip()),
                    &info.cert_sans,
                    &requested_sans,
                )?,
                dns_sans: vec![request.hostname.clone()],
            },
            SystemTime::now(),
            node_cert_validity(info),
        )
        .map_err(|e| ApiError::BadRequest(format!("cannot sign the certificate request: {e}")))?;
    let now = manager.now();
    let mut description: NodeDescription = request.description.clone();
    description.hostname = Some(request.hostname.clone());
    let node = Node {
        id: Some(node_id.clone()),
        created_at: Some(now.clone()),
        updated_at: Some(now),
        spec: Some(NodeSpec {
            role: Some(role),
            availability: Some(availability),
            ..Default::default()
        }),
        description: Some(description),
        status: Some(NodeStatus {
            state: Some(NodeState::UNKNOWN),
            message: None,
            addr: Some(advertise.ip().to_string()),
        }),
        ..Default::default()
    };
    manager
        .propose(Command::AddNode {
            node: Box::new(node),
        })
        .await?;
    if !requested_sans.is_empty() {
        manager
            .propose(Command::SetNodeCertSans {
                id: node_id.clone(),
                sans: requested_sans,
            })
            .await?;
    }
    tracing::info!(node_id = %node_id, hostname = %request.hostname, role = %node_role_kind(role), caller = ?remote, "node joined");
    Ok(JoinResponse {
        node_id,
        cluster_id: info.id.clone(),
        role: node_role_kind(role),
        cert_pem,
        ca_pem: info.root_ca_cert_pem.clone(),
        managers: manager_addrs(manager, &state),
    })
}

/// Signs a fresh certificate for a joined node, with the role the cluster now gives it
/// and only the addresses [`certificate_ips`] allows. `remote` is the address the
/// request came from.
pub fn renew(
    manager: &Manager,
    node_id: &str,
    request: &RenewRequest,
    remote: Option<IpAddr>,
) -> Result<JoinResponse, ApiError> {
    let state = manager.read();
    let info = cluster(&state)?;
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| ApiError::NotFound(format!("node {node_id} not found")))?;
    let role = node_role(node);
    let recorded: &[String] = state
        .node_cert_sans
        .get(node_id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for asked in extra_ips(&request.cert_sans)? {
        let allowed = role == NodeSpecRoleEnum::MANAGER
            && recorded
                .iter()
                .chain(&info.cert_sans)
                .any(|s| s.parse::<IpAddr>().ok() == Some(asked));
        if !allowed {
            return Err(ApiError::BadRequest(format!(
                "certificate address {asked} was not granted to this node: extra addresses (--cert-san) are given only to managers, when they join with the manager token"
            )));
        }
    }
    let advertise = node
        .manager_status
        .as_ref()
        .and_then(|m| m.addr.as_deref())
        .and_then(host_ip)
        .or_else(|| {
            node.status
                .as_ref()
                .and_then(|s| s.addr.as_deref())
                .and_then(host_ip)
        });
    let ca = root_ca(info)?;
    let cert_pem = ca
        .sign_node_for(
            &request.csr_pem,
            &SignRequest {
                node_id: node_id.to_string(),
                cluster_id: info.id.clone(),
                role: pki_role(role),
                ip_sans: certificate_ips(remote, role, advertise, &info.cert_sans, recorded)?,
                dns_sans: vec![swarm_state::node_hostname(node).to_string()],
            },
            SystemTime::now(),
            node_cert_validity(info),
        )
        .map_err(|e| ApiError::BadRequest(format!("cannot sign the certificate request: {e}")))?;
    Ok(JoinResponse {
        node_id: node_id.to_string(),
        cluster_id: info.id.clone(),
        role: node_role_kind(role),
        cert_pem,
        ca_pem: info.root_ca_cert_pem.clone(),
        managers: manager_addrs(manager, &state),
    })
}

/// A client certificate for an administrator's docker CLI (`swarmup env`).
pub fn client_cert(manager: &Manager, name: &str) -> Result<(String, String, String), ApiError> {
    let state = manager.read();
    let info = cluster(&state)?;
    let ca = root_ca(info)?;
    let (cert, key) = ca
        .issue_client(name, &info.id)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((info.root_ca_cert_pem.clone(), cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn join_limiter_lets_a_few_failures_through_then_blocks_for_longer_and_longer() {
        let mut limiter = JoinLimiter::default();
        let a = ip("10.0.0.9");
        let t0 = Instant::now();
        for _ in 0..JoinLimiter::FREE {
            assert_eq!(limiter.failed(a, t0), None);
            assert!(limiter.check(a, t0).is_ok());
        }
        assert_eq!(limiter.failed(a, t0), Some(JoinLimiter::BASE));
        assert_eq!(
            limiter.check(a, t0),
            Err(Throttled {
                retry_after: JoinLimiter::BASE
            })
        );
        // Another address is not affected.
        assert!(limiter.check(ip("10.0.0.10"), t0).is_ok());
        let t1 = t0 + JoinLimiter::BASE;
        assert!(limiter.check(a, t1).is_ok());
        assert_eq!(limiter.failed(a, t1), Some(JoinLimiter::BASE * 2));
        assert_eq!(limiter.failed(a, t1), Some(JoinLimiter::BASE * 4));
        for _ in 0..20 {
            limiter.failed(a, t1);
        }
        assert_eq!(limiter.failed(a, t1), Some(JoinLimiter::MAX));
    }

    #[test]
    fn join_limiter_forgets_quiet_addresses_and_successes() {
        let mut limiter = JoinLimiter::default();
        let a = ip("10.0.0.9");
        let t0 = Instant::now();
        for _ in 0..=JoinLimiter::FREE {
            limiter.failed(a, t0);
        }
        assert!(limiter.check(a, t0).is_err());
        let later = t0 + JoinLimiter::FORGET;
        assert!(limiter.check(a, later).is_ok());
        assert_eq!(limiter.failed(a, later), None);
        limiter.succeeded(a);
        for _ in 0..JoinLimiter::FREE {
            assert_eq!(limiter.failed(a, later), None);
        }
    }

    #[test]
    fn only_managers_get_more_than_the_address_they_called_from() {
        let cluster = vec!["203.0.113.7".to_string()];
        let extra = vec!["198.51.100.1".to_string()];
        let worker = certificate_ips(
            Some(ip("10.0.0.5")),
            NodeSpecRoleEnum::WORKER,
            Some(ip("10.0.0.1")),
            &cluster,
            &extra,
        )
        .unwrap();
        assert_eq!(worker, vec![ip("10.0.0.5")]);
        let manager = certificate_ips(
            Some(ip("10.0.0.5")),
            NodeSpecRoleEnum::MANAGER,
            Some(ip("10.0.0.5")),
            &cluster,
            &extra,
        )
        .unwrap();
        assert_eq!(
            manager,
            vec![ip("10.0.0.5"), ip("203.0.113.7"), ip("198.51.100.1")]
        );
    }
}
