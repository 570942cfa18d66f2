//! The parts of DigitalOcean's API v2 shapes that swarmup reads or sends. Unknown fields are
//! ignored; fields DigitalOcean may send as `null` default to empty.

use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize};

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn ports_or_all<S: serde::Serializer>(ports: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(ports.as_deref().unwrap_or("0"))
}

/// `{"id": "...", "message": "..."}`, the body of every 4xx and 5xx answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiErrorBody {
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub droplet_limit: u32,
    #[serde(default, deserialize_with = "null_default")]
    pub email: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status_message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Region {
    pub slug: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default)]
    pub available: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub sizes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Size {
    pub slug: String,
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub vcpus: u32,
    #[serde(default)]
    pub disk: u64,
    #[serde(default)]
    pub price_monthly: f64,
    #[serde(default)]
    pub price_hourly: f64,
    #[serde(default, deserialize_with = "null_default")]
    pub regions: Vec<String>,
    #[serde(default)]
    pub available: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SshKey {
    pub id: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub fingerprint: String,
    #[serde(default, deserialize_with = "null_default")]
    pub public_key: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SshKeyCreate<'a> {
    pub name: &'a str,
    pub public_key: &'a str,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkV4 {
    pub ip_address: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Networks {
    #[serde(default, deserialize_with = "null_default")]
    pub v4: Vec<NetworkV4>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegionRef {
    #[serde(default, deserialize_with = "null_default")]
    pub slug: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    /// `new`, `active`, `off` or `archive`.
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_default")]
    pub networks: Networks,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub region: RegionRef,
    #[serde(default, deserialize_with = "null_default")]
    pub size_slug: String,
    #[serde(default)]
    pub vpc_uuid: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: String,
    #[serde(default)]
    pub locked: bool,
}

impl Droplet {
    fn ipv4(&self, kind: &str) -> Option<Ipv4Addr> {
        self.networks
            .v4
            .iter()
            .filter(|n| n.kind == kind)
            .find_map(|n| n.ip_address.parse().ok())
    }

    /// The address on the internet, used for SSH.
    pub fn public_ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4("public")
    }

    /// The address in the region's VPC, which the swarm advertises.
    pub fn private_ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4("private")
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// `POST /v2/droplets` with `names` (at most 10). Every droplet of one call gets the same
/// tags and user data.
#[derive(Debug, Clone, Serialize)]
pub struct DropletCreate {
    pub names: Vec<String>,
    pub region: String,
    pub size: String,
    pub image: String,
    pub ssh_keys: Vec<u64>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_uuid: Option<String>,
    pub monitoring: bool,
    pub ipv6: bool,
    pub backups: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub id: u64,
    /// `in-progress`, `completed` or `errored`.
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default)]
    pub resource_id: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Vpc {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub region: String,
    #[serde(default, deserialize_with = "null_default")]
    pub ip_range: String,
    #[serde(default)]
    pub default: bool,
}

/// Who a firewall rule lets in or out. Empty lists are left out of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub droplet_ids: Vec<u64>,
    /// Kept so that a rule naming a load balancer or a Kubernetes cluster survives a
    /// `PUT`, which replaces every rule.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub load_balancer_uids: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub kubernetes_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRule {
    /// `tcp`, `udp` or `icmp`.
    pub protocol: String,
    /// `"22"`, `"8000-9000"` or `"0"` for all (icmp too). The specification requires it in
    /// every rule sent; a rule read without it is sent back as `"0"`.
    #[serde(default, serialize_with = "ports_or_all")]
    pub ports: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub sources: Targets,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRule {
    pub protocol: String,
    #[serde(default, serialize_with = "ports_or_all")]
    pub ports: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub destinations: Targets,
}

/// The body of `POST /v2/firewalls` and `PUT /v2/firewalls/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallCreate {
    pub name: String,
    pub inbound_rules: Vec<InboundRule>,
    pub outbound_rules: Vec<OutboundRule>,
    pub tags: Vec<String>,
    /// `PUT` resets what it is not given, so droplets someone attached by hand are sent
    /// back as they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub droplet_ids: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Firewall {
    pub id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub droplet_ids: Vec<u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub inbound_rules: Vec<InboundRule>,
    #[serde(default, deserialize_with = "null_default")]
    pub outbound_rules: Vec<OutboundRule>,
}
