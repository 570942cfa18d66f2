//! The certificate authority side of joining: checks join tokens, creates the node and
//! signs its certificate with the role the token grants.

use std::net::IpAddr;

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

pub fn role_name(role: NodeSpecRoleEnum) -> &'static str {
    match role {
        NodeSpecRoleEnum::MANAGER => "manager",
        _ => "worker",
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

pub async fn join(manager: &Manager, request: JoinRequest) -> Result<JoinResponse, ApiError> {
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
        .sign_node(
            &request.csr_pem,
            &SignRequest {
                node_id: node_id.clone(),
                cluster_id: info.id.clone(),
                role: pki_role(role),
                ip_sans: host_ip(&request.advertise_addr)
                    .into_iter()
                    .chain(extra_ips(&request.cert_sans)?)
                    .collect(),
                dns_sans: vec![request.hostname.clone()],
            },
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
            addr: host_ip(&request.advertise_addr).map(|ip| ip.to_string()),
        }),
        ..Default::default()
    };
    manager
        .propose(Command::AddNode {
            node: Box::new(node),
        })
        .await?;
    tracing::info!(node_id = %node_id, hostname = %request.hostname, role = role_name(role), "node joined");
    Ok(JoinResponse {
        node_id,
        cluster_id: info.id.clone(),
        role: role_name(role).into(),
        cert_pem,
        ca_pem: info.root_ca_cert_pem.clone(),
        managers: manager_addrs(manager, &state),
    })
}

/// Signs a fresh certificate for a joined node, with the role the cluster now gives it.
pub fn renew(
    manager: &Manager,
    node_id: &str,
    request: &RenewRequest,
) -> Result<JoinResponse, ApiError> {
    let state = manager.read();
    let info = cluster(&state)?;
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| ApiError::NotFound(format!("node {node_id} not found")))?;
    let role = node_role(node);
    let addr = node
        .status
        .as_ref()
        .and_then(|s| s.addr.clone())
        .unwrap_or_default();
    let ca = root_ca(info)?;
    let cert_pem = ca
        .sign_node(
            &request.csr_pem,
            &SignRequest {
                node_id: node_id.to_string(),
                cluster_id: info.id.clone(),
                role: pki_role(role),
                ip_sans: host_ip(&addr)
                    .into_iter()
                    .chain(extra_ips(&request.cert_sans)?)
                    .collect(),
                dns_sans: vec![swarm_state::node_hostname(node).to_string()],
            },
        )
        .map_err(|e| ApiError::BadRequest(format!("cannot sign the certificate request: {e}")))?;
    Ok(JoinResponse {
        node_id: node_id.to_string(),
        cluster_id: info.id.clone(),
        role: role_name(role).into(),
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
