//! Choosing subnets and VXLAN ids for new networks.
//!
//! `docker network create` and `init` (for the `ingress` network) come here with what the
//! user asked for; [`plan_network`] checks it the way Docker does and fills in what was
//! left out: the subnet (the first free one of the cluster's default address pool), the
//! gateway (the subnet's first host), the VXLAN id (the lowest free one from 4096). The
//! result is a complete [`NetworkRecord`] that travels in `Command::CreateNetwork`, so
//! every replica records the same choice and `apply` stays pure.
//!
//! Everything here is a pure function of the state and the request.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use swarm_state::models::{ConfigReference, Ipam, IpamConfig, Network, NetworkCreateRequest};
use swarm_state::network::{
    Ipv4Net, NetworkDefaults, NetworkRecord, ENCRYPTED_OPTION, FIRST_VNI, INGRESS_NAME, MAX_VNI,
    MTU_OPTION, VXLAN_ID_OPTION,
};
use swarm_state::ClusterState;

/// The only driver swarm-node serves.
pub const OVERLAY: &str = "overlay";

/// Docker's limit for pool subnet sizes: a /29 still leaves room for a few tasks next to
/// the gateway and the node addresses.
pub const MAX_SUBNET_SIZE: u8 = 29;

/// Docker's range for `--data-path-port`.
pub const DATA_PATH_PORTS: std::ops::RangeInclusive<u32> = 1024..=49151;

/// Names the node's own engine owns; a swarm network may not take them.
const PREDEFINED: &[&str] = &["bridge", "host", "none", "default"];

/// Why a network cannot be created as asked. The texts follow Docker's where Docker has
/// one, so scripts that look for them keep working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("network with name {0} already exists")]
    NameExists(String),
    #[error("invalid network name {0:?}: name must be valid as a DNS name component (letters, digits, '-' and '_', starting and ending with a letter or digit, at most 63 characters)")]
    InvalidName(String),
    #[error("{0} is a pre-defined network and cannot be created")]
    Predefined(String),
    #[error("swarm-node serves only swarm-scoped overlay networks, not the {0:?} driver: use --driver overlay (local networks such as bridge belong to each node's own Docker Engine)")]
    Driver(String),
    #[error("swarm-node serves only swarm-scoped networks, not scope {0:?}: leave --scope unset or use swarm")]
    Scope(String),
    #[error("IPv6 is not supported on swarm-node overlay networks: leave --ipv6 unset and give IPv4 subnets only")]
    Ipv6,
    #[error("{0}")]
    Unsupported(String),
    #[error("ipam configuration: invalid subnet {0}: give an IPv4 CIDR such as 10.10.0.0/24")]
    InvalidSubnet(String),
    #[error("ipam configuration: subnet {0} is too small: use a prefix of /30 or shorter")]
    SubnetTooSmall(String),
    #[error("ipam configuration: invalid gateway {0}")]
    InvalidGateway(String),
    #[error("ipam configuration: subnet {subnet} does not contain gateway {gateway}")]
    GatewayOutside { subnet: String, gateway: String },
    #[error("ipam configuration: invalid range {0}")]
    InvalidRange(String),
    #[error("ipam configuration: subnet {subnet} does not contain range {range}")]
    RangeOutside { subnet: String, range: String },
    #[error("Pool overlaps with other one on this address space: {subnet} overlaps network {other} ({other_subnet})")]
    Overlap {
        subnet: String,
        other: String,
        other_subnet: String,
    },
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network: the default address pool {pools} is used up; give --subnet or remove unused networks")]
    PoolExhausted { pools: String },
    #[error("no free VXLAN id is left")]
    VniExhausted,
    #[error(
        "invalid VXLAN id {0:?}: give one number from 1 to 16777215 that no other network uses"
    )]
    InvalidVni(String),
    #[error("invalid MTU {0:?} in com.docker.network.driver.mtu: give a number from 68 to 65535")]
    InvalidMtu(String),
    #[error("ingress network ({0}) is already present")]
    IngressExists(String),
    #[error("invalid --default-addr-pool {0:?}: give an IPv4 CIDR such as 10.0.0.0/8")]
    InvalidPool(String),
    #[error("invalid --default-addr-pool-mask-length {size}: {why}")]
    InvalidSubnetSize { size: u8, why: String },
    #[error("invalid --data-path-port {0}: use a port from 1024 to 49151 (default 4789)")]
    InvalidDataPathPort(u32),
}

/// What an API caller should see for an error: the HTTP status class Docker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Conflict,
    Forbidden,
}

impl NetworkError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetworkError::NameExists(_) | NetworkError::IngressExists(_) => ErrorKind::Conflict,
            NetworkError::Predefined(_) | NetworkError::Overlap { .. } => ErrorKind::Forbidden,
            _ => ErrorKind::BadRequest,
        }
    }
}

/// Checks `init`'s network flags like `docker swarm init` and returns the settings.
/// An empty `pools` means Docker's default, 10.0.0.0/8.
pub fn network_defaults(
    pools: &[String],
    subnet_size: u8,
    data_path_port: u32,
) -> Result<NetworkDefaults, NetworkError> {
    if subnet_size > MAX_SUBNET_SIZE || subnet_size == 0 {
        return Err(NetworkError::InvalidSubnetSize {
            size: subnet_size,
            why: format!("use a mask length from 1 to {MAX_SUBNET_SIZE} (default 24)"),
        });
    }
    if !DATA_PATH_PORTS.contains(&data_path_port) {
        return Err(NetworkError::InvalidDataPathPort(data_path_port));
    }
    let mut defaults = NetworkDefaults {
        subnet_size,
        data_path_port: data_path_port as u16,
        ..Default::default()
    };
    if !pools.is_empty() {
        defaults.default_addr_pool = pools
            .iter()
            .map(|p| {
                p.trim()
                    .parse::<Ipv4Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| NetworkError::InvalidPool(p.clone()))
            })
            .collect::<Result<_, _>>()?;
    }
    for pool in &defaults.default_addr_pool {
        if subnet_size < pool.prefix_len() {
            return Err(NetworkError::InvalidSubnetSize {
                size: subnet_size,
                why: format!(
                    "subnets of pool {pool} cannot be larger than the pool: use {} or more",
                    pool.prefix_len()
                ),
            });
        }
    }
    Ok(defaults)
}

/// Docker's rule for swarm object names: a DNS name component of at most 63 characters.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first subnet of `size` bits in the pools that overlaps no existing network.
pub fn free_subnet(state: &ClusterState, defaults: &NetworkDefaults) -> Option<Ipv4Net> {
    let mut taken: Vec<Ipv4Net> = state.networks.values().map(|n| n.subnet).collect();
    // Never hand out the nodes' tunnel addresses (see `swarm_state::network`).
    taken.push(swarm_state::network::tunnel_subnet());
    let size = defaults.subnet_size;
    let step = 1u64 << (32 - u32::from(size));
    for pool in &defaults.default_addr_pool {
        if size < pool.prefix_len() {
            continue;
        }
        let end = u64::from(u32::from(pool.broadcast()));
        let mut cursor = u64::from(u32::from(pool.network()));
        while cursor + step - 1 <= end {
            let candidate =
                Ipv4Net::new(Ipv4Addr::from(cursor as u32), size).expect("prefix up to 32");
            match taken.iter().find(|t| overlaps(t, &candidate)) {
                None => return Some(candidate),
                // Skip past whichever of the two ends later: a large network takes many
                // candidates at once.
                Some(t) => {
                    let past = u64::from(u32::from(t.broadcast())).max(cursor + step - 1) + 1;
                    cursor = past.div_ceil(step) * step;
                }
            }
        }
    }
    None
}

/// The lowest VXLAN id from [`FIRST_VNI`] that no network uses.
pub fn free_vni(state: &ClusterState) -> Option<u32> {
    let used: BTreeSet<u32> = state.networks.values().map(|n| n.vni).collect();
    (FIRST_VNI..=MAX_VNI).find(|v| !used.contains(v))
}

fn parse_v4_net(text: &str, invalid: fn(String) -> NetworkError) -> Result<Ipv4Net, NetworkError> {
    if text.contains(':') {
        return Err(NetworkError::Ipv6);
    }
    text.trim()
        .parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|_| invalid(text.to_string()))
}

fn check_request(state: &ClusterState, request: &NetworkCreateRequest) -> Result<(), NetworkError> {
    let name = request.name.as_str();
    if PREDEFINED.contains(&name) {
        return Err(NetworkError::Predefined(name.into()));
    }
    if !valid_name(name) {
        return Err(NetworkError::InvalidName(name.into()));
    }
    if state.networks.values().any(|n| n.name() == name) {
        return Err(NetworkError::NameExists(name.into()));
    }
    let driver = request.driver.as_deref().unwrap_or(OVERLAY);
    if driver != OVERLAY && !driver.is_empty() {
        return Err(NetworkError::Driver(driver.into()));
    }
    match request.scope.as_deref() {
        None | Some("") | Some("swarm") => {}
        Some(other) => return Err(NetworkError::Scope(other.into())),
    }
    if request.enable_ipv6 == Some(true) {
        return Err(NetworkError::Ipv6);
    }
    if request.enable_ipv4 == Some(false) {
        return Err(NetworkError::Unsupported(
            "overlay networks need IPv4: leave --ipv4 enabled".into(),
        ));
    }
    if request.config_only == Some(true)
        || request
            .config_from
            .as_ref()
            .and_then(|c| c.network.as_deref())
            .is_some_and(|n| !n.is_empty())
    {
        return Err(NetworkError::Unsupported(
            "configuration-only networks (--config-only, --config-from) are not supported by swarm-node".into(),
        ));
    }
    if request.ingress == Some(true) {
        if let Some(ingress) = state.networks.values().find(|n| n.is_ingress()) {
            return Err(NetworkError::IngressExists(ingress.name().into()));
        }
    }
    if let Some(ipam) = &request.ipam {
        if let Some(d) = ipam
            .driver
            .as_deref()
            .filter(|d| !d.is_empty() && *d != "default")
        {
            return Err(NetworkError::Unsupported(format!(
                "IPAM driver {d:?} is not supported by swarm-node: leave --ipam-driver unset"
            )));
        }
        let configs = ipam.config.as_deref().unwrap_or_default();
        if configs
            .iter()
            .any(|c| c.subnet.as_deref().is_some_and(|s| s.contains(':')))
        {
            return Err(NetworkError::Ipv6);
        }
        if configs.len() > 1 {
            return Err(NetworkError::Unsupported(
                "swarm-node networks take one subnet: give --subnet once".into(),
            ));
        }
        if configs.iter().any(|c| {
            c.auxiliary_addresses
                .as_ref()
                .is_some_and(|a| !a.is_empty())
        }) {
            return Err(NetworkError::Unsupported(
                "auxiliary addresses (--aux-address) are not supported by swarm-node".into(),
            ));
        }
    }
    Ok(())
}

fn given(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str).filter(|s| !s.is_empty())
}

/// Subnet, gateway and address range for a request: the user's, checked, or the first
/// free subnet of the pool with its first host as gateway.
fn choose_addresses(
    state: &ClusterState,
    defaults: &NetworkDefaults,
    config: Option<&IpamConfig>,
) -> Result<(Ipv4Net, Ipv4Addr, Option<Ipv4Net>), NetworkError> {
    let subnet_text = given(config.and_then(|c| c.subnet.as_ref()));
    let gateway_text = given(config.and_then(|c| c.gateway.as_ref()));
    let range_text = given(config.and_then(|c| c.ip_range.as_ref()));
    let subnet = match subnet_text {
        Some(s) => {
            let subnet = parse_v4_net(s, NetworkError::InvalidSubnet)?;
            if subnet.prefix_len() > 30 {
                return Err(NetworkError::SubnetTooSmall(s.into()));
            }
            if let Some(other) = state
                .networks
                .values()
                .find(|n| overlaps(&n.subnet, &subnet))
            {
                return Err(NetworkError::Overlap {
                    subnet: subnet.to_string(),
                    other: other.name().into(),
                    other_subnet: other.subnet.to_string(),
                });
            }
            // The nodes' WireGuard addresses: a network there would capture the
            // encrypted overlays' tunnel traffic.
            let tunnel = swarm_state::network::tunnel_subnet();
            if overlaps(&tunnel, &subnet) {
                return Err(NetworkError::Overlap {
                    subnet: subnet.to_string(),
                    other: "(swarm-node's tunnel between nodes)".into(),
                    other_subnet: tunnel.to_string(),
                });
            }
            subnet
        }
        None => {
            if gateway_text.is_some() || range_text.is_some() {
                return Err(NetworkError::Unsupported(
                    "--gateway and --ip-range need --subnet".into(),
                ));
            }
            free_subnet(state, defaults).ok_or_else(|| NetworkError::PoolExhausted {
                pools: defaults
                    .default_addr_pool
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
        }
    };
    let subnet_shown = subnet_text.unwrap_or_default().to_string();
    let gateway = match gateway_text {
        Some(g) => {
            if g.contains(':') {
                return Err(NetworkError::Ipv6);
            }
            let gateway: Ipv4Addr = g
                .parse()
                .map_err(|_| NetworkError::InvalidGateway(g.into()))?;
            if !subnet.contains(&gateway)
                || gateway == subnet.network()
                || gateway == subnet.broadcast()
            {
                return Err(NetworkError::GatewayOutside {
                    subnet: subnet_shown,
                    gateway: g.into(),
                });
            }
            gateway
        }
        None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
    };
    let range = match range_text {
        Some(r) => {
            let range = parse_v4_net(r, NetworkError::InvalidRange)?;
            if !subnet.contains(&range) {
                return Err(NetworkError::RangeOutside {
                    subnet: subnet_shown,
                    range: r.into(),
                });
            }
            Some(range)
        }
        None => None,
    };
    Ok((subnet, gateway, range))
}

fn choose_vni(
    state: &ClusterState,
    options: &HashMap<String, String>,
) -> Result<u32, NetworkError> {
    let Some(text) = options.get(VXLAN_ID_OPTION) else {
        return free_vni(state).ok_or(NetworkError::VniExhausted);
    };
    // Docker takes a comma-separated list, one id per subnet; we have one subnet.
    let first = text.split(',').next().unwrap_or_default().trim();
    let vni: u32 = first
        .parse()
        .map_err(|_| NetworkError::InvalidVni(text.clone()))?;
    if vni == 0 || vni > MAX_VNI || state.networks.values().any(|n| n.vni == vni) {
        return Err(NetworkError::InvalidVni(text.clone()));
    }
    Ok(vni)
}

/// Checks a `docker network create` request and makes the network: the choices of
/// subnet, gateway and VNI, and the Docker view of it. `id` and `created` come from the
/// proposing manager.
pub fn plan_network(
    state: &ClusterState,
    defaults: &NetworkDefaults,
    request: &NetworkCreateRequest,
    id: &str,
    created: &str,
) -> Result<NetworkRecord, NetworkError> {
    check_request(state, request)?;
    let config = request
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_deref())
        .and_then(|c| c.first());
    let (subnet, gateway, range) = choose_addresses(state, defaults, config)?;
    let user_options = request.options.clone().unwrap_or_default();
    let vni = choose_vni(state, &user_options)?;
    let mtu = match user_options.get(MTU_OPTION) {
        None => None,
        Some(text) => Some(
            text.trim()
                .parse::<u32>()
                .ok()
                .filter(|m| (68..=65535).contains(m))
                .ok_or_else(|| NetworkError::InvalidMtu(text.clone()))?,
        ),
    };
    // Docker takes the option with any value, `--opt encrypted` giving an empty one.
    let encrypted = user_options.contains_key(ENCRYPTED_OPTION);
    if encrypted && request.ingress == Some(true) {
        return Err(NetworkError::Unsupported(
            "the ingress network cannot be encrypted: the routing mesh carries published ports in clear, as Docker's".into(),
        ));
    }
    let mut options = user_options;
    options.insert(VXLAN_ID_OPTION.into(), vni.to_string());
    let network = Network {
        name: Some(request.name.clone()),
        id: Some(id.into()),
        created: Some(created.into()),
        scope: Some("swarm".into()),
        driver: Some(OVERLAY.into()),
        enable_ipv4: None,
        enable_ipv6: Some(false),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.to_string()),
                ip_range: range.map(|r| r.to_string()),
                gateway: Some(gateway.to_string()),
                auxiliary_addresses: None,
            }]),
            options: None,
        }),
        internal: Some(request.internal.unwrap_or(false)),
        attachable: Some(request.attachable.unwrap_or(false)),
        ingress: Some(request.ingress.unwrap_or(false)),
        config_from: Some(ConfigReference {
            network: Some(String::new()),
        }),
        config_only: Some(false),
        options: Some(options),
        labels: Some(request.labels.clone().unwrap_or_default()),
        peers: None,
    };
    Ok(NetworkRecord {
        network,
        vni,
        subnet,
        gateway,
        ip_range: range.unwrap_or(subnet),
        encrypted,
        mtu,
    })
}

/// The `ingress` network every swarm has from `init`, as Docker's: the pool's first
/// subnet (10.0.0.0/24 by default), its first host as gateway, the first VXLAN id.
pub fn ingress_network(
    state: &ClusterState,
    defaults: &NetworkDefaults,
    id: &str,
    created: &str,
) -> Result<NetworkRecord, NetworkError> {
    let request = NetworkCreateRequest {
        name: INGRESS_NAME.into(),
        driver: Some(OVERLAY.into()),
        ingress: Some(true),
        ..Default::default()
    };
    plan_network(state, defaults, &request, id, created)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-01T10:00:00Z";

    fn request(name: &str) -> NetworkCreateRequest {
        NetworkCreateRequest {
            name: name.into(),
            driver: Some("overlay".into()),
            ..Default::default()
        }
    }

    fn with_subnet(
        name: &str,
        subnet: &str,
        gateway: Option<&str>,
        range: Option<&str>,
    ) -> NetworkCreateRequest {
        NetworkCreateRequest {
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.into()),
                    gateway: gateway.map(Into::into),
                    ip_range: range.map(Into::into),
                    auxiliary_addresses: None,
                }]),
                options: None,
            }),
            ..request(name)
        }
    }

    /// Plans and records a network, as a commit would.
    fn create(state: &mut ClusterState, r: &NetworkCreateRequest) -> NetworkRecord {
        let id = format!("id{}", state.networks.len());
        let record = plan_network(state, &NetworkDefaults::default(), r, &id, NOW).unwrap();
        state.networks.insert(id, record.clone());
        record
    }

    fn plan(state: &ClusterState, r: &NetworkCreateRequest) -> Result<NetworkRecord, NetworkError> {
        plan_network(state, &NetworkDefaults::default(), r, "x", NOW)
    }

    #[test]
    fn ingress_is_docker_s() {
        let state = ClusterState::default();
        let ingress = ingress_network(&state, &NetworkDefaults::default(), "ing", NOW).unwrap();
        assert_eq!(
            ingress.subnet.to_string(),
            swarm_state::network::INGRESS_SUBNET
        );
        assert_eq!(ingress.gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ingress.vni, FIRST_VNI);
        assert!(ingress.is_ingress());
        assert_eq!(ingress.name(), "ingress");
        let options = ingress.network.options.as_ref().unwrap();
        assert_eq!(options[VXLAN_ID_OPTION], "4096");
    }

    #[test]
    fn new_networks_take_the_next_free_subnet_and_vni() {
        let mut state = ClusterState::default();
        create(
            &mut state,
            &NetworkCreateRequest {
                ingress: Some(true),
                ..request("ingress")
            },
        );
        let a = create(&mut state, &request("a"));
        assert_eq!(a.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(a.gateway, Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(a.ip_range, a.subnet);
        assert_eq!(a.vni, 4097);
        // A user subnet in the middle of the pool is skipped by later choices.
        create(&mut state, &with_subnet("b", "10.0.2.0/23", None, None));
        let c = create(&mut state, &request("c"));
        assert_eq!(c.subnet.to_string(), "10.0.4.0/24");
        assert_eq!(c.vni, 4099);
        // A freed subnet and VNI are the first taken again.
        state.networks.retain(|_, n| n.name() != "a");
        let d = create(&mut state, &request("d"));
        assert_eq!(d.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(d.vni, 4097);
    }

    #[test]
    fn encrypted_networks_are_made_and_keep_off_the_tunnel_subnet() {
        let mut r = request("secure");
        r.options = Some([(ENCRYPTED_OPTION.to_string(), String::new())].into());
        let n = plan(&ClusterState::default(), &r).unwrap();
        assert!(n.encrypted);
        let v = serde_json::to_value(&n.network).unwrap();
        assert_eq!(v["Options"]["encrypted"], "");

        // The nodes' tunnel addresses are never a network's, given or chosen.
        let e = plan(
            &ClusterState::default(),
            &with_subnet("clash", "10.255.3.0/24", None, None),
        )
        .unwrap_err();
        assert!(e.to_string().contains("10.255.0.0/16"), "{e}");
        let defaults = NetworkDefaults {
            default_addr_pool: vec!["10.254.0.0/15".parse().unwrap()],
            subnet_size: 24,
            ..Default::default()
        };
        let mut state = ClusterState::default();
        assert_eq!(
            free_subnet(&state, &defaults).unwrap().to_string(),
            "10.254.0.0/24"
        );
        create(&mut state, &with_subnet("top", "10.254.0.0/16", None, None));
        assert_eq!(
            free_subnet(&state, &defaults),
            None,
            "10.255.0.0/16 is skipped"
        );
        let mut ingress = request("ingress2");
        ingress.ingress = Some(true);
        ingress.options = r.options.clone();
        assert!(plan(&ClusterState::default(), &ingress).is_err());
    }

    #[test]
    fn the_docker_view_is_an_overlay_network() {
        let mut r = with_subnet(
            "web",
            "10.20.0.0/16",
            Some("10.20.0.254"),
            Some("10.20.5.0/24"),
        );
        r.labels = Some([("a".to_string(), "b".to_string())].into());
        r.options = Some([(MTU_OPTION.to_string(), "1400".to_string())].into());
        r.attachable = Some(true);
        let n = plan(&ClusterState::default(), &r).unwrap();
        assert_eq!(n.mtu, Some(1400));
        assert!(!n.encrypted);
        assert_eq!(n.gateway, Ipv4Addr::new(10, 20, 0, 254));
        assert_eq!(n.ip_range.to_string(), "10.20.5.0/24");
        let v = serde_json::to_value(&n.network).unwrap();
        assert_eq!(v["Scope"], "swarm");
        assert_eq!(v["Driver"], "overlay");
        assert_eq!(v["EnableIPv6"], false);
        assert_eq!(v["Attachable"], true);
        assert_eq!(v["Ingress"], false);
        assert_eq!(v["ConfigFrom"]["Network"], "");
        assert_eq!(v["IPAM"]["Driver"], "default");
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/16");
        assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "10.20.0.254");
        assert_eq!(v["IPAM"]["Config"][0]["IPRange"], "10.20.5.0/24");
        assert_eq!(v["Options"][VXLAN_ID_OPTION], "4096");
        assert!(
            v["Options"].get("encrypted").is_none(),
            "not encrypted unless asked"
        );
        assert_eq!(v["Labels"]["a"], "b");
        assert_eq!(v["Created"], NOW);
        assert!(v.get("Peers").is_none());
    }

    #[test]
    fn docker_s_refusals() {
        let mut state = ClusterState::default();
        create(&mut state, &with_subnet("used", "10.9.0.0/16", None, None));
        let e = plan(&state, &request("used")).unwrap_err();
        assert_eq!(e.to_string(), "network with name used already exists");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let e = plan(&state, &with_subnet("x", "10.9.3.0/24", None, None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Pool overlaps with other one on this address space"),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        let e = plan(&state, &with_subnet("x", "10.0.0.0/8", None, None)).unwrap_err();
        assert!(matches!(e, NetworkError::Overlap { .. }));
        let e = plan(&state, &with_subnet("x", "10.300.0.0/16", None, None)).unwrap_err();
        assert!(
            e.to_string().contains("invalid subnet 10.300.0.0/16"),
            "{e}"
        );
        let e = plan(
            &state,
            &with_subnet("x", "10.1.0.0/24", Some("10.2.0.1"), None),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ipam configuration: subnet 10.1.0.0/24 does not contain gateway 10.2.0.1"
        );
        let e = plan(
            &state,
            &with_subnet("x", "10.1.0.0/24", None, Some("10.1.0.0/23")),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ipam configuration: subnet 10.1.0.0/24 does not contain range 10.1.0.0/23"
        );
        let e = plan(&state, &with_subnet("x", "fd00::/64", None, None)).unwrap_err();
        assert_eq!(e, NetworkError::Ipv6);
        let e = plan(
            &state,
            &NetworkCreateRequest {
                enable_ipv6: Some(true),
                ..request("x")
            },
        )
        .unwrap_err();
        assert_eq!(e, NetworkError::Ipv6);
        let e = plan(
            &state,
            &NetworkCreateRequest {
                driver: Some("bridge".into()),
                ..request("x")
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("only swarm-scoped overlay networks"),
            "{e}"
        );
        let e = plan(
            &state,
            &NetworkCreateRequest {
                scope: Some("local".into()),
                ..request("x")
            },
        )
        .unwrap_err();
        assert!(matches!(e, NetworkError::Scope(_)));
        let e = plan(&state, &request("bridge")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        assert!(matches!(
            plan(&state, &request("-bad")),
            Err(NetworkError::InvalidName(_))
        ));
        assert!(matches!(
            plan(&state, &request(&"n".repeat(64))),
            Err(NetworkError::InvalidName(_))
        ));
        let mut r = request("x");
        r.options = Some([(MTU_OPTION.to_string(), "big".to_string())].into());
        assert!(matches!(plan(&state, &r), Err(NetworkError::InvalidMtu(_))));
        create(
            &mut state,
            &NetworkCreateRequest {
                ingress: Some(true),
                ..request("ingress")
            },
        );
        let e = plan(
            &state,
            &NetworkCreateRequest {
                ingress: Some(true),
                ..request("ing2")
            },
        )
        .unwrap_err();
        assert_eq!(e, NetworkError::IngressExists("ingress".into()));
    }

    #[test]
    fn a_used_up_pool_says_so() {
        let defaults = network_defaults(&["192.168.0.0/23".into()], 24, 4789).unwrap();
        let mut state = ClusterState::default();
        for name in ["a", "b"] {
            let r = plan_network(&state, &defaults, &request(name), name, NOW).unwrap();
            state.networks.insert(name.into(), r);
        }
        assert_eq!(state.networks["b"].subnet.to_string(), "192.168.1.0/24");
        let e = plan_network(&state, &defaults, &request("c"), "c", NOW).unwrap_err();
        assert!(e.to_string().contains("192.168.0.0/23 is used up"), "{e}");
        // A user subnet outside the pool still works.
        assert!(plan_network(
            &state,
            &defaults,
            &with_subnet("c", "172.30.0.0/24", None, None),
            "c",
            NOW
        )
        .is_ok());
    }

    #[test]
    fn a_large_network_is_skipped_at_once() {
        let mut state = ClusterState::default();
        create(&mut state, &with_subnet("big", "10.0.0.0/9", None, None));
        let n = create(&mut state, &request("next"));
        assert_eq!(n.subnet.to_string(), "10.128.0.0/24");
    }

    #[test]
    fn a_chosen_vxlan_id_is_kept_when_free() {
        let mut state = ClusterState::default();
        let mut r = request("a");
        r.options = Some([(VXLAN_ID_OPTION.to_string(), "5000".to_string())].into());
        assert_eq!(create(&mut state, &r).vni, 5000);
        r.name = "b".into();
        assert!(matches!(plan(&state, &r), Err(NetworkError::InvalidVni(_))));
    }

    #[test]
    fn init_flags_are_checked_like_docker_s() {
        let d = network_defaults(&[], 24, 4789).unwrap();
        assert_eq!(d, NetworkDefaults::default());
        let d =
            network_defaults(&["10.20.0.0/16".into(), "10.30.0.0/16".into()], 26, 7789).unwrap();
        assert_eq!(d.default_addr_pool.len(), 2);
        assert_eq!(d.subnet_size, 26);
        assert_eq!(d.data_path_port, 7789);
        assert!(matches!(
            network_defaults(&["nope".into()], 24, 4789),
            Err(NetworkError::InvalidPool(_))
        ));
        assert!(matches!(
            network_defaults(&["10.0.0.0/8".into()], 30, 4789),
            Err(NetworkError::InvalidSubnetSize { .. })
        ));
        assert!(matches!(
            network_defaults(&["10.0.0.0/16".into()], 8, 4789),
            Err(NetworkError::InvalidSubnetSize { .. })
        ));
        assert_eq!(
            network_defaults(&[], 24, 80),
            Err(NetworkError::InvalidDataPathPort(80))
        );
        assert_eq!(
            network_defaults(&[], 24, 50000),
            Err(NetworkError::InvalidDataPathPort(50000))
        );
    }

    #[test]
    fn a_custom_pool_gives_ingress_its_first_subnet() {
        let defaults = network_defaults(&["172.28.0.0/16".into()], 24, 4789).unwrap();
        let n = ingress_network(&ClusterState::default(), &defaults, "i", NOW).unwrap();
        assert_eq!(n.subnet.to_string(), "172.28.0.0/24");
        assert_eq!(n.gateway, Ipv4Addr::new(172, 28, 0, 1));
    }
}
