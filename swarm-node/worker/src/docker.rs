//! The real runtime: the node's Docker Engine over its unix socket, through bollard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerSummaryStateEnum, EventMessage, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkInspect,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, InspectNetworkOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use swarm_net::BridgeSpec;
use swarm_state::models::{EngineDescription, NodeDescription, Platform, ResourceObject};
use swarm_state::network::{mac_text, MTU_OPTION};

use crate::runtime::{
    labels, ContainerRuntime, ContainerSpec, EventAction, Health, LocalNetwork, RunState,
    RuntimeError, RuntimeEvent, TaskContainer,
};
use crate::spec::endpoint_settings;

/// The option naming the kernel bridge of a Docker bridge network.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// From this API version on, an endpoint takes a MAC address. Docker 28 gives random MACs
/// unless told, while every node derives a remote address's MAC from the address; older
/// engines derive it from the address themselves, as we do.
const ENDPOINT_MAC_API: (usize, usize) = (1, 44);

/// Where the engine listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Timeout for ordinary engine requests (until the response headers arrive).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An API version every engine since Docker 1.12 accepts: used only to ask the engine
/// which version it speaks, since engines reject clients newer than themselves.
const PROBE_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 24,
};

/// The node's Docker Engine.
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    /// Exit details of stopped containers by id. A stopped container's exit code does
    /// not change (the worker never restarts one), so each is inspected once.
    exits: Mutex<HashMap<String, (i64, Option<String>)>>,
}

impl DockerRuntime {
    /// Connects to the engine at `socket` (a path, or `unix://PATH`) and settles on the
    /// newest API version both sides speak.
    pub async fn connect(socket: &str) -> Result<Self, RuntimeError> {
        let path = socket.trim_start_matches("unix://").to_string();
        let unavailable = |e: BollardError| RuntimeError::Unavailable {
            endpoint: path.clone(),
            message: e.to_string(),
        };
        let probe = Docker::connect_with_unix(&path, REQUEST_TIMEOUT.as_secs(), &PROBE_VERSION)
            .map_err(unavailable)?;
        let version = probe.version().await.map_err(unavailable)?;
        let server = version
            .api_version
            .as_deref()
            .and_then(parse_api_version)
            .ok_or_else(|| RuntimeError::Unavailable {
                endpoint: path.clone(),
                message: format!(
                    "engine reported no usable API version ({:?})",
                    version.api_version
                ),
            })?;
        let chosen = if (server.major_version, server.minor_version)
            < (
                API_DEFAULT_VERSION.major_version,
                API_DEFAULT_VERSION.minor_version,
            ) {
            server
        } else {
            *API_DEFAULT_VERSION
        };
        let docker = Docker::connect_with_unix(&path, REQUEST_TIMEOUT.as_secs(), &chosen)
            .map_err(unavailable)?;
        tracing::debug!(
            socket = %path,
            api = %format!("{}.{}", chosen.major_version, chosen.minor_version),
            "connected to docker engine"
        );
        Ok(DockerRuntime {
            docker,
            endpoint: path,
            exits: Mutex::new(HashMap::new()),
        })
    }

    /// Connects to the engine named by `DOCKER_HOST` when it is a `unix://` address, else
    /// to [`DEFAULT_SOCKET`].
    pub async fn connect_default() -> Result<Self, RuntimeError> {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| h.starts_with("unix://"))
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        Self::connect(&socket).await
    }

    /// The API version in use, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }

    /// The bollard client, for callers that need engine calls beyond the runtime's
    /// (tests, diagnostics).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn error(&self, op: &'static str, target: &str, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } if op != "create" => RuntimeError::NoSuchContainer(target.to_string()),
            BollardError::DockerResponseServerError { message, .. } => RuntimeError::Refused {
                op,
                target: target.to_string(),
                message,
            },
            other => RuntimeError::Unavailable {
                endpoint: self.endpoint.clone(),
                message: format!("{op} {target}: {other}"),
            },
        }
    }

    /// Maps a failed network request: the engine's refusals keep their wording.
    fn network_error(&self, op: &'static str, target: &str, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError { message, .. } => RuntimeError::Refused {
                op,
                target: target.to_string(),
                message,
            },
            other => RuntimeError::Unavailable {
                endpoint: self.endpoint.clone(),
                message: format!("{op} {target}: {other}"),
            },
        }
    }

    fn sets_endpoint_mac(&self) -> bool {
        let v = self.docker.client_version();
        (v.major_version, v.minor_version) >= ENDPOINT_MAC_API
    }

    /// The network of exactly this name, if any (the engine also matches id prefixes).
    async fn find_network(&self, name: &str) -> Result<Option<NetworkInspect>, RuntimeError> {
        match self
            .docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) if n.name.as_deref() == Some(name) => Ok(Some(n)),
            Ok(_)
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.network_error("inspect network", name, e)),
        }
    }

    fn exits(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, Option<String>)>> {
        self.exits.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn exit_details(&self, id: &str) -> Result<(i64, Option<String>), RuntimeError> {
        if let Some(found) = self.exits().get(id) {
            return Ok(found.clone());
        }
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.error("inspect", id, e))?;
        let state = inspect.state.unwrap_or_default();
        let details = (
            state.exit_code.unwrap_or(0),
            state.error.filter(|e| !e.is_empty()),
        );
        self.exits().insert(id.to_string(), details.clone());
        Ok(details)
    }
}

fn parse_api_version(v: &str) -> Option<ClientVersion> {
    let (major, minor) = v.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// Splits `IMAGE` into what the engine's pull takes: the repository and a tag or
/// digest. Without either, the tag is `latest` (an empty tag would pull every tag).
fn pull_reference(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        // `repo:tag@digest` pulls by digest; the tag is only a label.
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        return (repo.to_string(), digest.to_string());
    }
    match image.rsplit_once(':') {
        // A colon after the last slash separates the tag; before it, a registry port.
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// The create request of the bridge network standing for an overlay.
fn network_request(spec: &BridgeSpec, node_id: &str) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: spec.network_name.clone(),
        driver: Some("bridge".into()),
        internal: Some(spec.internal),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(spec.subnet.to_string()),
                gateway: Some(spec.gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        options: Some(HashMap::from([
            (BRIDGE_NAME_OPTION.to_string(), spec.bridge.clone()),
            (MTU_OPTION.to_string(), spec.mtu.to_string()),
        ])),
        labels: Some(HashMap::from([
            (labels::NETWORK_ID.to_string(), spec.network_id.clone()),
            (labels::NETWORK_NODE.to_string(), node_id.to_string()),
        ])),
        ..Default::default()
    }
}

/// True when an existing network has every setting the overlay needs.
fn network_matches(n: &NetworkInspect, spec: &BridgeSpec) -> bool {
    let option = |k: &str| {
        n.options
            .as_ref()
            .and_then(|o| o.get(k))
            .map(String::as_str)
    };
    let ipam_ok = n
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .is_some_and(|c| {
            c.len() == 1
                && c[0].subnet.as_deref() == Some(spec.subnet.to_string().as_str())
                && c[0].gateway.as_deref() == Some(spec.gateway.to_string().as_str())
        });
    n.driver.as_deref() == Some("bridge")
        && ipam_ok
        && option(BRIDGE_NAME_OPTION) == Some(spec.bridge.as_str())
        && option(MTU_OPTION) == Some(spec.mtu.to_string().as_str())
        && n.internal.unwrap_or(false) == spec.internal
        && n.labels
            .as_ref()
            .and_then(|l| l.get(labels::NETWORK_ID))
            .map(String::as_str)
            == Some(spec.network_id.as_str())
}

/// The health in a container's list entry. The list API (1.41) has it only in the
/// `Status` text, which the engine writes as `Up 3 seconds (health: starting)`,
/// `(healthy)` or `(unhealthy)`; inspecting every running container on every pass
/// would cost a call each.
fn health_of(status: &str) -> Health {
    if status.ends_with("(health: starting)") {
        Health::Starting
    } else if status.ends_with("(unhealthy)") {
        Health::Unhealthy
    } else if status.ends_with("(healthy)") {
        Health::Healthy
    } else {
        Health::None
    }
}

fn node_filter(node_id: &str) -> String {
    format!("{}={node_id}", labels::NODE_ID)
}

fn event_from(msg: EventMessage) -> Option<RuntimeEvent> {
    let actor = msg.actor?;
    let action = match msg.action.as_deref()? {
        "start" => EventAction::Start,
        "die" => EventAction::Die,
        "destroy" => EventAction::Destroy,
        _ => EventAction::Other,
    };
    Some(RuntimeEvent {
        container_id: actor.id?,
        task_id: actor.attributes.and_then(|mut a| a.remove(labels::TASK_ID)),
        action,
    })
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn describe(&self) -> Result<NodeDescription, RuntimeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.error("describe", "engine", e))?;
        let engine_labels: HashMap<String, String> = info
            .labels
            .unwrap_or_default()
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        Ok(NodeDescription {
            hostname: info.name,
            platform: Some(Platform {
                architecture: info.architecture,
                os: info.os_type,
            }),
            resources: Some(ResourceObject {
                nano_cpus: info.ncpu.map(|n| n * 1_000_000_000),
                memory_bytes: info.mem_total,
                generic_resources: None,
            }),
            engine: Some(EngineDescription {
                engine_version: info.server_version,
                labels: (!engine_labels.is_empty()).then_some(engine_labels),
                plugins: None,
            }),
            tls_info: None,
        })
    }

    async fn list(&self, node_id: &str) -> Result<Vec<TaskContainer>, RuntimeError> {
        let filters = HashMap::from([("label", vec![node_filter(node_id)])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("list containers of node", node_id, e))?;
        let mut out = Vec::with_capacity(summaries.len());
        let mut stopped = Vec::new();
        for s in summaries {
            let (Some(id), Some(labels)) = (s.id, s.labels) else {
                continue;
            };
            let Some(task_id) = labels.get(labels::TASK_ID).cloned() else {
                continue;
            };
            let state = match s.state {
                Some(ContainerSummaryStateEnum::CREATED) => RunState::Created,
                Some(ContainerSummaryStateEnum::RUNNING)
                | Some(ContainerSummaryStateEnum::PAUSED)
                | Some(ContainerSummaryStateEnum::RESTARTING)
                | Some(ContainerSummaryStateEnum::STOPPING) => RunState::Running,
                Some(ContainerSummaryStateEnum::EXITED) | Some(ContainerSummaryStateEnum::DEAD) => {
                    // Filled in below, from an inspection.
                    RunState::Exited {
                        code: 0,
                        error: None,
                    }
                }
                Some(ContainerSummaryStateEnum::REMOVING) => RunState::Removing,
                Some(ContainerSummaryStateEnum::EMPTY) | None => continue,
            };
            if matches!(state, RunState::Exited { .. }) {
                stopped.push(out.len());
            } else {
                // Whatever it did before, it is not stopped now.
                self.exits().remove(&id);
            }
            let name = s
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            out.push(TaskContainer {
                id,
                name,
                task_id,
                state,
                health: health_of(s.status.as_deref().unwrap_or_default()),
                labels: std::sync::Arc::new(labels),
            });
        }
        for i in stopped {
            match self.exit_details(&out[i].id).await {
                Ok((code, error)) => out[i].state = RunState::Exited { code, error },
                // Removed in the meantime: it will be missing from the next list.
                Err(RuntimeError::NoSuchContainer(_)) => out[i].state = RunState::Removing,
                Err(e) => return Err(e),
            }
        }
        let present: std::collections::HashSet<&str> = out.iter().map(|c| c.id.as_str()).collect();
        self.exits().retain(|id, _| present.contains(id.as_str()));
        Ok(out)
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.error("inspect image", image, e)),
        }
        let (repo, tag) = pull_reference(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(&repo)
            .tag(&tag)
            .build();
        let pulled: Result<Vec<_>, _> = self
            .docker
            .create_image(Some(options), None, None)
            .try_collect()
            .await;
        match pulled {
            Ok(_) => match self.docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(_) => Err(RuntimeError::NoSuchImage(image.to_string())),
            },
            Err(e) => {
                tracing::info!(image, error = %e, "image is not present and could not be pulled");
                Err(match e {
                    // The engine's own reason, as `docker pull` would print it.
                    BollardError::DockerResponseServerError { message, .. }
                    | BollardError::DockerStreamError { error: message } => {
                        RuntimeError::PullFailed {
                            image: image.to_string(),
                            pull_error: message.trim().to_string(),
                        }
                    }
                    other => self.error("pull", image, other),
                })
            }
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let mac = self.sets_endpoint_mac();
        let mut body = spec.body.clone();
        if mac {
            let endpoints = body
                .networking_config
                .as_mut()
                .and_then(|c| c.endpoints_config.as_mut());
            for (name, ep) in endpoints.into_iter().flatten() {
                if let Some(n) = spec.networks.iter().find(|n| &n.docker_network == name) {
                    ep.mac_address = Some(mac_text(n.addr));
                }
            }
        }
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.error("create", &spec.name, e))?;
        for w in &created.warnings {
            tracing::warn!(container = %spec.name, "engine warning: {w}");
        }
        // The create request takes one network; the others are connected before the start,
        // so the application never runs without them.
        for net in spec.networks.iter().skip(1) {
            let mut endpoint = endpoint_settings(net);
            if mac {
                endpoint.mac_address = Some(mac_text(net.addr));
            }
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint),
            };
            if let Err(e) = self
                .docker
                .connect_network(&net.docker_network, request)
                .await
            {
                let e = self.network_error("connect network", &net.docker_network, e);
                // Without this network the task must not run; a retry creates it anew
                // under the same name.
                if let Err(removal) = self.remove(&created.id).await {
                    tracing::warn!(container = %spec.name, error = %removal, "cannot remove a half-connected container");
                }
                return Err(e);
            }
        }
        Ok(created.id)
    }

    async fn start(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(container_id, None)
            .await
            .map_err(|e| self.error("start", container_id, e))
    }

    async fn stop(&self, container_id: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let mut options = StopContainerOptionsBuilder::default();
        // The request lasts as long as the grace period: give it that much more time.
        let mut client = self.docker.clone();
        if let Some(grace) = grace {
            let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
            options = options.t(secs);
            client = client.with_timeout(REQUEST_TIMEOUT + grace);
        } else {
            client = client.with_timeout(REQUEST_TIMEOUT * 4);
        }
        match client
            .stop_container(container_id, Some(options.build()))
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.error("stop", container_id, e)),
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default().v(true).build();
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            // 409: removal already in progress.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => {}
            Err(e) => return Err(self.error("remove", container_id, e)),
        }
        self.exits().remove(container_id);
        Ok(())
    }

    async fn events(
        &self,
        node_id: &str,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            (
                "event",
                vec![
                    "start".to_string(),
                    "die".to_string(),
                    "destroy".to_string(),
                    // The engine matches `health_status: healthy` and the rest by prefix.
                    "health_status".to_string(),
                ],
            ),
            ("label", vec![node_filter(node_id)]),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let endpoint = self.endpoint.clone();
        let stream = self
            .docker
            .events(Some(options))
            .filter_map(move |item| {
                let out = match item {
                    Ok(msg) => event_from(msg).map(Ok),
                    Err(e) => Some(Err(RuntimeError::Unavailable {
                        endpoint: endpoint.clone(),
                        message: format!("event stream: {e}"),
                    })),
                };
                std::future::ready(out)
            })
            .boxed();
        Ok(stream)
    }

    async fn ensure_network(
        &self,
        spec: &BridgeSpec,
        node_id: &str,
    ) -> Result<String, RuntimeError> {
        let name = spec.network_name.as_str();
        if let Some(existing) = self.find_network(name).await? {
            let ours = existing
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::NETWORK_ID));
            if !ours {
                return Err(RuntimeError::Refused {
                    op: "create network",
                    target: name.to_string(),
                    message: format!(
                        "a Docker network named {name} exists that swarmup did not create; remove it (docker network rm {name}) so that the overlay network {name} can be set up on this node"
                    ),
                });
            }
            let id = existing.id.clone().unwrap_or_default();
            if network_matches(&existing, spec) {
                return Ok(id);
            }
            tracing::info!(network = %name, "docker network has other settings than the overlay; creating it again");
            match self.docker.remove_network(&id).await {
                Ok(())
                | Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(self.network_error("remove network", name, e)),
            }
        }
        match self
            .docker
            .create_network(network_request(spec, node_id))
            .await
        {
            Ok(created) => {
                if !created.warning.is_empty() {
                    tracing::warn!(network = %name, "engine warning: {}", created.warning);
                }
                tracing::info!(network = %name, bridge = %spec.bridge, subnet = %spec.subnet, "docker network created");
                Ok(created.id)
            }
            // Made meanwhile by someone else: check that one.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => match self.find_network(name).await? {
                Some(n) if network_matches(&n, spec) => Ok(n.id.unwrap_or_default()),
                _ => Err(RuntimeError::Refused {
                    op: "create network",
                    target: name.to_string(),
                    message: format!("a network named {name} appeared with other settings"),
                }),
            },
            Err(e) => Err(self.network_error("create network", name, e)),
        }
    }

    async fn networks(&self) -> Result<Vec<LocalNetwork>, RuntimeError> {
        let filters = HashMap::from([("label", vec![labels::NETWORK_ID.to_string()])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.network_error("list networks", "engine", e))?;
        Ok(list
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels?;
                Some(LocalNetwork {
                    network_id: labels.get(labels::NETWORK_ID)?.clone(),
                    node_id: labels.get(labels::NETWORK_NODE).cloned(),
                    id: n.id?,
                    name: n.name?,
                })
            })
            .collect())
    }

    async fn remove_network(&self, name_or_id: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(name_or_id).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.network_error("remove network", name_or_id, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_read_from_the_status_text() {
        assert_eq!(
            health_of("Up 3 seconds (health: starting)"),
            Health::Starting
        );
        assert_eq!(health_of("Up 2 minutes (healthy)"), Health::Healthy);
        assert_eq!(health_of("Up 2 minutes (unhealthy)"), Health::Unhealthy);
        assert_eq!(health_of("Up 2 minutes"), Health::None);
        assert_eq!(health_of(""), Health::None);
    }

    #[test]
    fn pull_reference_defaults_to_latest_and_keeps_registry_ports() {
        assert_eq!(
            pull_reference("busybox"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            pull_reference("busybox:1.36"),
            ("busybox".into(), "1.36".into())
        );
        assert_eq!(
            pull_reference("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app".into(), "latest".into())
        );
        assert_eq!(
            pull_reference("127.0.0.1:5000/app:v2"),
            ("127.0.0.1:5000/app".into(), "v2".into())
        );
        assert_eq!(
            pull_reference("app:v2@sha256:abc"),
            ("app".into(), "sha256:abc".into())
        );
        assert_eq!(
            pull_reference("reg:5000/app@sha256:abc"),
            ("reg:5000/app".into(), "sha256:abc".into())
        );
    }

    #[test]
    fn network_requests_carry_every_setting_and_match_themselves() {
        let spec = BridgeSpec {
            network_id: "n1".into(),
            network_name: "front".into(),
            bridge: "swb4097".into(),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            mtu: 1450,
            internal: true,
        };
        let req = network_request(&spec, "node1");
        assert_eq!(req.name, "front");
        assert_eq!(req.driver.as_deref(), Some("bridge"));
        let opts = req.options.clone().unwrap();
        assert_eq!(opts[BRIDGE_NAME_OPTION], "swb4097");
        assert_eq!(opts[MTU_OPTION], "1450");
        assert_eq!(req.labels.clone().unwrap()[labels::NETWORK_ID], "n1");
        assert_eq!(req.labels.clone().unwrap()[labels::NETWORK_NODE], "node1");
        let inspect = NetworkInspect {
            name: Some(req.name.clone()),
            id: Some("abc".into()),
            driver: req.driver.clone(),
            ipam: req.ipam.clone(),
            internal: req.internal,
            options: req.options.clone(),
            labels: req.labels.clone(),
            ..Default::default()
        };
        assert!(network_matches(&inspect, &spec));
        let other = BridgeSpec {
            mtu: 1400,
            ..spec.clone()
        };
        assert!(!network_matches(&inspect, &other));
        let other = BridgeSpec {
            gateway: "10.0.1.254".parse().unwrap(),
            ..spec.clone()
        };
        assert!(!network_matches(&inspect, &other));
    }

    #[test]
    fn api_versions_parse() {
        let v = parse_api_version("1.41").unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(parse_api_version("x").is_none());
    }
}
