//! The Docker API's networks part (`docker network create/ls/inspect/rm/prune`), and the
//! network parts of services and tasks: resolving `--network` targets to ids, checking
//! the endpoint spec, and showing VIPs and task addresses the way Docker does.
//!
//! swarm-node serves swarm-scoped overlay networks only; a node's local networks (bridge,
//! host, none) belong to its own Docker Engine. Choices (subnet, gateway, VXLAN id) are
//! made by `manager::networks`; addresses by the leader's allocator. This file only checks,
//! proposes and renders.

use std::collections::BTreeSet;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use swarm_state::models::{
    EndpointSpecModeEnum, NetworkCreateRequest, Service, ServiceEndpointVirtualIps, ServiceSpec,
    Task,
};
use swarm_state::network::{endpoint_mode, service_networks, EndpointMode, NetworkRecord};
use swarm_state::{ports, ClusterState, Command};

use super::filters::Filters;
use super::{AdminManager, Ctx};
use crate::error::ApiError;
use crate::manager::networks::{self as choose, ErrorKind, NetworkError};
use crate::manager::Manager;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/networks", get(list_networks))
        .route("/networks/create", post(create_network))
        .route("/networks/prune", post(prune_networks))
        .route(
            "/networks/{id}",
            get(inspect_network).delete(remove_network),
        )
        .route("/networks/{id}/connect", post(connect))
        .route("/networks/{id}/disconnect", post(connect))
}

type ApiResult<T> = Result<T, ApiError>;

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        match e.kind() {
            ErrorKind::BadRequest => ApiError::BadRequest(e.to_string()),
            ErrorKind::Conflict => ApiError::Conflict(e.to_string()),
            ErrorKind::Forbidden => ApiError::Forbidden(e.to_string()),
        }
    }
}

fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("network {key} not found"))
}

fn find<'a>(state: &'a ClusterState, key: &str) -> ApiResult<&'a NetworkRecord> {
    state.find_network(key).ok_or_else(|| not_found(key))
}

// === rendering ===

/// A network as `GET /networks` and `docker network inspect` show it. The model has no
/// `Containers`; Docker shows an empty map for a swarm network seen from a manager.
pub fn network_view(record: &NetworkRecord) -> Value {
    let mut v = serde_json::to_value(&record.network).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("Containers".into(), json!({}));
    }
    v
}

/// `10.0.1.5/24`: an address with its network's prefix length, as Docker writes them.
fn with_prefix(record: &NetworkRecord, addr: std::net::Ipv4Addr) -> String {
    format!("{addr}/{}", record.subnet.prefix_len())
}

/// A network in the swarm API's shape (`ID`, `Spec`, `DriverState`, `IPAMOptions`), as
/// Docker shows it inside a task's `NetworksAttachments`.
pub fn swarm_network_view(record: &NetworkRecord) -> Value {
    let n = &record.network;
    let mut configs = json!({
        "Subnet": record.subnet.to_string(),
        "Gateway": record.gateway.to_string(),
    });
    if record.ip_range != record.subnet {
        configs["Range"] = json!(record.ip_range.to_string());
    }
    let ipam = json!({ "Driver": { "Name": "default" }, "Configs": [configs] });
    let options = n.options.clone().unwrap_or_default();
    json!({
        "ID": record.id(),
        "CreatedAt": n.created,
        "UpdatedAt": n.created,
        "Spec": {
            "Name": record.name(),
            "Labels": n.labels.clone().unwrap_or_default(),
            "DriverConfiguration": { "Name": "overlay", "Options": options.clone() },
            "Scope": "swarm",
            "Internal": record.internal(),
            "Attachable": n.attachable.unwrap_or(false),
            "Ingress": record.is_ingress(),
            "IPAMOptions": ipam.clone(),
        },
        "DriverState": { "Name": "overlay", "Options": options },
        "IPAMOptions": ipam,
    })
}

/// A service's `Endpoint.VirtualIPs`: one per network it is on, in the order of its
/// spec (after ingress when it publishes ports), once the allocator has given it one. dnsrr services have none, as Docker's.
pub fn virtual_ips(
    state: &ClusterState,
    service: &Service,
) -> Option<Vec<ServiceEndpointVirtualIps>> {
    let spec = service.spec.as_ref()?;
    if endpoint_mode(spec) != EndpointMode::Vip {
        return None;
    }
    let vips = state.service_vips.get(service.id.as_deref()?)?;
    // The ingress VIP first, as Docker lists it, then the service's own networks.
    let ingress = state
        .ingress_network()
        .filter(|_| ports::publishes_ingress(spec))
        .map(|n| n.id());
    let list: Vec<_> = ingress
        .into_iter()
        .chain(
            service_networks(spec)
                .iter()
                .filter_map(|a| a.target.as_deref()),
        )
        .filter_map(|id| {
            let record = state.networks.get(id)?;
            let addr = vips.get(id)?;
            Some(ServiceEndpointVirtualIps {
                network_id: Some(id.into()),
                addr: Some(with_prefix(record, *addr)),
            })
        })
        .collect();
    (!list.is_empty()).then_some(list)
}

/// A task as the Docker API shows it, with `NetworksAttachments` (which the model lacks):
/// each network with the task's address on it.
pub fn task_view(state: &ClusterState, task: &Task) -> Value {
    let mut shown = task.clone();
    // The task runs on ingress because its service publishes ports; like Docker, its
    // spec shows only the networks the user gave (ingress is in NetworksAttachments).
    if let (Some(ingress), Some(spec)) = (state.ingress_network(), shown.spec.as_mut()) {
        if let Some(networks) = spec.networks.as_mut() {
            networks.retain(|n| n.target.as_deref() != Some(ingress.id()));
            if networks.is_empty() {
                spec.networks = None;
            }
        }
    }
    let mut v = serde_json::to_value(&shown).unwrap_or_else(|_| json!({}));
    let attachments: Vec<Value> = task
        .id
        .as_ref()
        .and_then(|id| state.task_networks.get(id))
        .map(|list| {
            list.iter()
                .filter_map(|a| {
                    let record = state.networks.get(&a.network_id)?;
                    Some(json!({
                        "Network": swarm_network_view(record),
                        "Addresses": [with_prefix(record, a.addr)],
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    if !attachments.is_empty() {
        if let Some(o) = v.as_object_mut() {
            o.insert("NetworksAttachments".into(), Value::Array(attachments));
        }
    }
    v
}

// === services ===

fn invalid_argument(message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!(
        "rpc error: code = InvalidArgument desc = {message}"
    ))
}

/// Resolves a service spec's networks to ids, as Docker stores them: the deprecated
/// top-level `Networks` moves into `TaskTemplate.Networks`; every target (an id, a name
/// or an id prefix) must name a swarm network other than ingress, each at most once.
pub fn resolve_service_networks(state: &ClusterState, spec: &mut ServiceSpec) -> ApiResult<()> {
    let legacy = spec.networks.take().unwrap_or_default();
    let template = spec.task_template.get_or_insert_with(Default::default);
    let mut networks = template.networks.take().unwrap_or_default();
    if !legacy.is_empty() {
        if !networks.is_empty() {
            return Err(invalid_argument(
                "give the service's networks in TaskTemplate.Networks only, not also in the deprecated Networks",
            ));
        }
        networks = legacy;
    }
    let mut seen = BTreeSet::new();
    for attachment in &mut networks {
        let target = attachment.target.clone().unwrap_or_default();
        if target.is_empty() {
            return Err(invalid_argument("a network attachment needs a Target"));
        }
        let record = find(state, &target)?;
        if record.is_ingress() {
            return Err(invalid_argument(format!(
                "Service cannot be explicitly attached to the ingress network {:?}",
                record.name()
            )));
        }
        if !seen.insert(record.id().to_string()) {
            return Err(invalid_argument(format!(
                "service is attached to network {} more than once",
                record.name()
            )));
        }
        attachment.target = Some(record.id().to_string());
    }
    template.networks = (!networks.is_empty()).then_some(networks);
    Ok(())
}

/// Checks `EndpointSpec` as SwarmKit does: `--endpoint-mode vip|dnsrr`; ports with a
/// target, tcp or udp (the routing mesh serves no sctp), each published port once per
/// protocol, and no ingress port in dnsrr mode (the mesh balances over a VIP).
pub fn validate_endpoint_spec(spec: &ServiceSpec) -> ApiResult<()> {
    let Some(endpoint) = &spec.endpoint_spec else {
        return Ok(());
    };
    let ports = endpoint.ports.as_deref().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for p in ports {
        if endpoint.mode == Some(EndpointSpecModeEnum::DNSRR) && ports::is_ingress(p) {
            return Err(invalid_argument(
                "EndpointSpec: port published with ingress mode can't be used with dnsrr mode",
            ));
        }
        let target = p.target_port.unwrap_or(0);
        if !(1..=65535).contains(&target) {
            return Err(invalid_argument(format!(
                "EndpointSpec: invalid target port {target}: give the port the service listens on, from 1 to 65535"
            )));
        }
        let published = p.published_port.unwrap_or(0);
        if !(0..=65535).contains(&published) {
            return Err(invalid_argument(format!(
                "EndpointSpec: invalid published port {published}: give a port from 1 to 65535, or none to get one from 30000-32767"
            )));
        }
        let Some(protocol) = ports::protocol_of(p) else {
            return Err(ApiError::BadRequest(format!(
                "published port {target}/sctp: swarm-node publishes tcp and udp ports only: use protocol=tcp or protocol=udp"
            )));
        };
        if published != 0 && !seen.insert((protocol, published)) {
            return Err(invalid_argument(
                "EndpointSpec: duplicate published ports provided",
            ));
        }
    }
    Ok(())
}

/// Checks a spec's published ports against the other services (SwarmKit's words) and
/// that the routing mesh's network exists when the spec needs it.
pub fn check_port_use(
    state: &ClusterState,
    service_id: Option<&str>,
    spec: &ServiceSpec,
) -> ApiResult<()> {
    if let Some(why) = state.port_conflict(service_id, spec) {
        return Err(invalid_argument(why));
    }
    if ports::publishes_ingress(spec) && state.ingress_network().is_none() {
        return Err(invalid_argument(
            "service needs ingress network, but no ingress network is present",
        ));
    }
    Ok(())
}

fn service_name(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_default()
}

// === networks ===

/// The keys of a `filters` parameter that `Filters::parse` accepted.
fn filter_keys(raw: Option<&str>) -> Vec<String> {
    raw.and_then(|r| serde_json::from_str::<Value>(r).ok())
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default()
}

/// Docker's filters for `GET /networks` (the `filters` of `docker network ls`).
fn network_filter(
    raw: Option<&str>,
    state: &ClusterState,
) -> ApiResult<impl Fn(&NetworkRecord) -> bool> {
    const ACCEPTED: &[&str] = &["dangling", "driver", "id", "label", "name", "scope", "type"];
    let filters = Filters::parse(raw)?;
    if let Some(bad) = filter_keys(raw)
        .into_iter()
        .find(|k| !ACCEPTED.contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!("invalid filter '{bad}'")));
    }
    for t in filters.get("type").unwrap_or_default() {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::BadRequest(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    let dangling = match filters.get("dangling") {
        None => None,
        Some([v]) if v == "true" || v == "1" => Some(true),
        Some([v]) if v == "false" || v == "0" => Some(false),
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "invalid filter 'dangling={}'",
                v.join(",")
            )))
        }
    };
    let used: BTreeSet<String> = state
        .services
        .values()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|s| service_networks(s).iter().filter_map(|a| a.target.clone()))
        .collect();
    Ok(move |n: &NetworkRecord| {
        let driver = n.network.driver.as_deref().unwrap_or_default();
        let scope = n.network.scope.as_deref().unwrap_or_default();
        filters.matches("driver", |v| v == driver)
            && filters.matches("scope", |v| v == scope)
            && filters.matches("name", |v| n.name().contains(v))
            && filters.matches("id", |v| n.id().starts_with(v))
            && filters.labels_match("label", n.network.labels.as_ref())
            // Every network served here is user-defined, ingress included, as Docker's.
            && filters.matches("type", |v| v == "custom")
            && dangling.is_none_or(|d| d != used.contains(n.id()))
    })
}

#[derive(Debug, Deserialize, Default)]
pub struct FiltersQuery {
    filters: Option<String>,
}

async fn list_networks(
    AdminManager(manager): AdminManager,
    Query(q): Query<FiltersQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    let state = manager.read();
    let keep = network_filter(q.filters.as_deref(), &state)?;
    let mut list: Vec<&NetworkRecord> = state.networks.values().filter(|n| keep(n)).collect();
    list.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(Json(list.into_iter().map(network_view).collect()))
}

#[derive(Debug, Deserialize, Default)]
pub struct InspectQuery {
    scope: Option<String>,
    #[allow(dead_code)]
    verbose: Option<String>,
}

async fn inspect_network(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
    Query(q): Query<InspectQuery>,
) -> ApiResult<Json<Value>> {
    let state = manager.read();
    let record = find(&state, &key)?;
    // Every network here is swarm-scoped: asking for another scope finds nothing.
    if q.scope
        .as_deref()
        .is_some_and(|s| !s.is_empty() && s != "swarm")
    {
        return Err(not_found(&key));
    }
    Ok(Json(network_view(record)))
}

async fn create_network(
    AdminManager(manager): AdminManager,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let request: NetworkCreateRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid network create request: {e}")))?;
    let state = manager.read();
    let defaults = state
        .cluster
        .as_ref()
        .map(|c| c.network.clone())
        .unwrap_or_default();
    let id = Manager::new_id();
    let record = choose::plan_network(&state, &defaults, &request, &id, &manager.now())?;
    manager
        .propose(Command::CreateNetwork {
            network: Box::new(record),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "Id": id, "Warning": "" })),
    )
        .into_response())
}

/// Docker answers an in-use refusal as a failed precondition (400).
fn removal_error(e: ApiError) -> ApiError {
    match e {
        ApiError::Conflict(m) => {
            ApiError::BadRequest(format!("rpc error: code = FailedPrecondition desc = {m}"))
        }
        other => other,
    }
}

async fn remove_network(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let state = manager.read();
    let record = find(&state, &key)?;
    if record.is_ingress() {
        if let Some(s) = state
            .services
            .values()
            .find(|s| s.spec.as_ref().is_some_and(ports::publishes_ingress))
        {
            return Err(ApiError::Forbidden(format!(
                "ingress network cannot be removed because service {} depends on it",
                service_name(s)
            )));
        }
    }
    let id = record.id().to_string();
    manager
        .propose(Command::RemoveNetwork { id })
        .await
        .map_err(removal_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `docker network prune`: removes every network no service uses, except ingress.
async fn prune_networks(
    AdminManager(manager): AdminManager,
    Query(q): Query<FiltersQuery>,
) -> ApiResult<Json<Value>> {
    let filters = Filters::parse(q.filters.as_deref())?;
    if let Some(bad) = filter_keys(q.filters.as_deref())
        .into_iter()
        .find(|k| !["label", "label!"].contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "invalid filter '{bad}': swarm-node prunes networks by label and label! only"
        )));
    }
    let state = manager.read();
    let candidates: Vec<(String, String)> = state
        .networks
        .values()
        .filter(|n| !n.is_ingress())
        .filter(|n| state.services_on_network(n.id()).next().is_none())
        .filter(|n| filters.labels_match("label", n.network.labels.as_ref()))
        .filter(|n| {
            filters.get("label!").is_none()
                || !filters.labels_match("label!", n.network.labels.as_ref())
        })
        .map(|n| (n.id().to_string(), n.name().to_string()))
        .collect();
    drop(state);
    let mut deleted = Vec::new();
    for (id, name) in candidates {
        // A service may have started using it meanwhile: skip it, as Docker does.
        match manager.propose(Command::RemoveNetwork { id }).await {
            Ok(_) => deleted.push(name),
            Err(ApiError::Conflict(_)) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(json!({ "NetworksDeleted": deleted })))
}

async fn connect(AdminManager(_): AdminManager, Path(key): Path<String>) -> ApiResult<StatusCode> {
    Err(ApiError::Forbidden(format!(
        "containers join swarm network {key} through services: use `docker service create/update --network {key}`; `docker network connect` is for the node's own Docker Engine"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{
        EndpointPortConfig, EndpointPortConfigProtocolEnum as Proto,
        EndpointPortConfigPublishModeEnum as Mode, EndpointSpec, NetworkAttachmentConfig, TaskSpec,
    };
    use swarm_state::network::{Attachment, NetworkDefaults};

    fn state_with(names: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        let d = NetworkDefaults::default();
        let ingress = choose::ingress_network(&state, &d, "ingressid", "t").unwrap();
        state.networks.insert("ingressid".into(), ingress);
        for name in names {
            let id = format!("{name}id");
            let request = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("overlay".into()),
                ..Default::default()
            };
            let r = choose::plan_network(&state, &d, &request, &id, "t").unwrap();
            state.networks.insert(id, r);
        }
        state
    }

    fn attach(target: &str) -> NetworkAttachmentConfig {
        NetworkAttachmentConfig {
            target: Some(target.into()),
            ..Default::default()
        }
    }

    fn spec_on(networks: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: Some("web".into()),
            task_template: Some(TaskSpec {
                networks: Some(networks.iter().map(|n| attach(n)).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_networks_resolve_to_ids() {
        let state = state_with(&["front", "back"]);
        let mut spec = spec_on(&["front", "backid"]);
        resolve_service_networks(&state, &mut spec).unwrap();
        let targets: Vec<_> = service_networks(&spec)
            .iter()
            .map(|a| a.target.clone().unwrap())
            .collect();
        assert_eq!(targets, ["frontid", "backid"]);

        // The deprecated top-level list moves into the task template.
        let mut spec = ServiceSpec {
            networks: Some(vec![attach("back")]),
            ..Default::default()
        };
        resolve_service_networks(&state, &mut spec).unwrap();
        assert!(spec.networks.is_none());
        assert_eq!(
            spec.task_template.unwrap().networks.unwrap()[0]
                .target
                .as_deref(),
            Some("backid")
        );
    }

    #[test]
    fn bad_service_networks_are_refused_with_docker_s_words() {
        let state = state_with(&["front"]);
        let e = resolve_service_networks(&state, &mut spec_on(&["nope"])).unwrap_err();
        assert_eq!(e.to_string(), "network nope not found");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = resolve_service_networks(&state, &mut spec_on(&["ingress"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("explicitly attached to the ingress network"),
            "{e}"
        );
        let e = resolve_service_networks(&state, &mut spec_on(&["front", "frontid"])).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn endpoint_specs() {
        let mut spec = spec_on(&[]);
        spec.endpoint_spec = Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: None,
        });
        assert!(validate_endpoint_spec(&spec).is_ok());
        spec.endpoint_spec = Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(vec![EndpointPortConfig {
                target_port: Some(80),
                published_port: Some(8080),
                ..Default::default()
            }]),
        });
        let e = validate_endpoint_spec(&spec).unwrap_err();
        assert!(
            e.to_string().contains("can't be used with dnsrr mode"),
            "{e}"
        );
        spec.endpoint_spec.as_mut().unwrap().mode = Some(EndpointSpecModeEnum::VIP);
        assert!(
            validate_endpoint_spec(&spec).is_ok(),
            "published ports are served"
        );

        // Host mode goes with dnsrr; sctp and duplicates do not.
        let port = |published: i64, proto: Proto, mode: Mode| EndpointPortConfig {
            target_port: Some(80),
            published_port: Some(published),
            protocol: Some(proto),
            publish_mode: Some(mode),
            ..Default::default()
        };
        let with = |mode: EndpointSpecModeEnum, ports: Vec<EndpointPortConfig>| {
            let mut s = spec_on(&[]);
            s.endpoint_spec = Some(EndpointSpec {
                mode: Some(mode),
                ports: Some(ports),
            });
            validate_endpoint_spec(&s)
        };
        assert!(with(
            EndpointSpecModeEnum::DNSRR,
            vec![port(80, Proto::TCP, Mode::HOST)]
        )
        .is_ok());
        let e = with(
            EndpointSpecModeEnum::VIP,
            vec![port(80, Proto::SCTP, Mode::INGRESS)],
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("tcp and udp ports only"), "{e}");
        let e = with(
            EndpointSpecModeEnum::VIP,
            vec![
                port(80, Proto::TCP, Mode::INGRESS),
                port(80, Proto::TCP, Mode::HOST),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate published ports"), "{e}");
        // The same number over tcp and udp, and two dynamic ports, are different ports.
        assert!(with(
            EndpointSpecModeEnum::VIP,
            vec![
                port(80, Proto::TCP, Mode::INGRESS),
                port(80, Proto::UDP, Mode::INGRESS),
                port(0, Proto::TCP, Mode::INGRESS),
                port(0, Proto::TCP, Mode::INGRESS),
            ],
        )
        .is_ok());
    }

    #[test]
    fn port_conflicts_are_refused_before_proposing() {
        let mut state = state_with(&[]);
        let mut search = spec_on(&[]);
        search.name = Some("search".into());
        search.endpoint_spec = Some(EndpointSpec {
            mode: None,
            ports: Some(vec![EndpointPortConfig {
                target_port: Some(9200),
                published_port: Some(9200),
                ..Default::default()
            }]),
        });
        assert!(check_port_use(&state, None, &search).is_ok());
        state.services.insert(
            "sid".into(),
            Service {
                id: Some("sid".into()),
                spec: Some(search.clone()),
                ..Default::default()
            },
        );
        let e = check_port_use(&state, None, &search).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "rpc error: code = InvalidArgument desc = port '9200' is already in use by service 'search' (sid) as an ingress port"
        );
        assert!(check_port_use(&state, Some("sid"), &search).is_ok());
        state.networks.clear();
        let e = check_port_use(&state, Some("sid"), &search).unwrap_err();
        assert!(e.to_string().contains("no ingress network"), "{e}");
    }

    #[test]
    fn ingress_is_shown_in_attachments_and_vips_but_not_in_specs() {
        let mut state = state_with(&["front"]);
        let mut spec = spec_on(&["front"]);
        resolve_service_networks(&state, &mut spec).unwrap();
        spec.endpoint_spec = Some(EndpointSpec {
            mode: None,
            ports: Some(vec![EndpointPortConfig {
                target_port: Some(80),
                ..Default::default()
            }]),
        });
        let service = Service {
            id: Some("svc".into()),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        state.service_vips.insert(
            "svc".into(),
            [
                ("frontid".to_string(), "10.0.1.2".parse().unwrap()),
                ("ingressid".to_string(), "10.0.0.2".parse().unwrap()),
            ]
            .into(),
        );
        let vips = virtual_ips(&state, &service).unwrap();
        assert_eq!(vips[0].network_id.as_deref(), Some("ingressid"));
        assert_eq!(vips[1].network_id.as_deref(), Some("frontid"));

        let task = Task {
            id: Some("t1".into()),
            spec: Some(state.task_spec_of(&spec)),
            ..Default::default()
        };
        assert_eq!(
            task.spec.as_ref().unwrap().networks.as_ref().unwrap().len(),
            2
        );
        let v = task_view(&state, &task);
        assert_eq!(v["Spec"]["Networks"].as_array().unwrap().len(), 1);
        assert_eq!(v["Spec"]["Networks"][0]["Target"], "frontid");
    }

    #[test]
    fn vips_and_task_addresses_are_shown_as_docker_does() {
        let mut state = state_with(&["front", "back"]);
        let mut spec = spec_on(&["back", "front"]);
        resolve_service_networks(&state, &mut spec).unwrap();
        let service = Service {
            id: Some("svc".into()),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        assert_eq!(virtual_ips(&state, &service), None);
        state.service_vips.insert(
            "svc".into(),
            [
                ("frontid".to_string(), "10.0.1.2".parse().unwrap()),
                ("backid".to_string(), "10.0.2.2".parse().unwrap()),
            ]
            .into(),
        );
        let vips = virtual_ips(&state, &service).unwrap();
        assert_eq!(vips.len(), 2);
        assert_eq!(vips[0].network_id.as_deref(), Some("backid"));
        assert_eq!(vips[0].addr.as_deref(), Some("10.0.2.2/24"));
        // dnsrr services have no VIP.
        let mut dnsrr = service.clone();
        dnsrr.spec.as_mut().unwrap().endpoint_spec = Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: None,
        });
        assert_eq!(virtual_ips(&state, &dnsrr), None);

        let task = Task {
            id: Some("t1".into()),
            ..Default::default()
        };
        assert!(task_view(&state, &task)
            .get("NetworksAttachments")
            .is_none());
        state.task_networks.insert(
            "t1".into(),
            vec![Attachment {
                network_id: "frontid".into(),
                addr: "10.0.1.5".parse().unwrap(),
            }],
        );
        let v = task_view(&state, &task);
        let a = &v["NetworksAttachments"][0];
        assert_eq!(a["Addresses"][0], "10.0.1.5/24");
        assert_eq!(a["Network"]["ID"], "frontid");
        assert_eq!(a["Network"]["Spec"]["Name"], "front");
        assert_eq!(
            a["Network"]["IPAMOptions"]["Configs"][0]["Subnet"],
            "10.0.1.0/24"
        );
        assert_eq!(
            a["Network"]["DriverState"]["Options"]
                ["com.docker.network.driver.overlay.vxlanid_list"],
            "4097"
        );
        assert_eq!(v["ID"], "t1");
    }

    #[test]
    fn list_filters_follow_docker() {
        let mut state = state_with(&["front", "back"]);
        state.services.insert(
            "svc".into(),
            Service {
                id: Some("svc".into()),
                spec: Some(spec_on(&["frontid"])),
                ..Default::default()
            },
        );
        let names = |raw: &str| -> Vec<String> {
            let keep = network_filter(Some(raw), &state).unwrap();
            let mut v: Vec<String> = state
                .networks
                .values()
                .filter(|n| keep(n))
                .map(|n| n.name().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(r#"{"driver":{"overlay":true}}"#),
            ["back", "front", "ingress"]
        );
        assert_eq!(names(r#"{"name":{"ront":true}}"#), ["front"]);
        assert_eq!(names(r#"{"id":{"back":true}}"#), ["back"]);
        assert_eq!(names(r#"{"scope":{"local":true}}"#), Vec::<String>::new());
        assert_eq!(names(r#"{"type":{"builtin":true}}"#), Vec::<String>::new());
        assert_eq!(names(r#"{"type":{"custom":true}}"#).len(), 3);
        assert_eq!(names(r#"{"dangling":{"true":true}}"#), ["back", "ingress"]);
        assert_eq!(names(r#"{"dangling":{"false":true}}"#), ["front"]);
        assert!(network_filter(Some(r#"{"colour":{"red":true}}"#), &state).is_err());
        assert!(network_filter(Some(r#"{"type":{"odd":true}}"#), &state).is_err());
    }

    #[test]
    fn the_inspect_view_has_containers() {
        let state = state_with(&[]);
        let v = network_view(&state.networks["ingressid"]);
        assert_eq!(v["Containers"], json!({}));
        assert_eq!(v["Name"], "ingress");
        assert_eq!(v["Ingress"], true);
    }
}
