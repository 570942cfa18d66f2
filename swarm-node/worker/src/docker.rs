//! The real runtime: the node's Docker Engine over its unix socket, through bollard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerSummaryStateEnum, EventMessage};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use swarm_state::models::{EngineDescription, NodeDescription, Platform, ResourceObject};

use crate::runtime::{
    labels, ContainerRuntime, ContainerSpec, EventAction, RunState, RuntimeError, RuntimeEvent,
    TaskContainer,
};

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
                labels,
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
                Err(RuntimeError::NoSuchImage(image.to_string()))
            }
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), spec.body.clone())
            .await
            .map_err(|e| self.error("create", &spec.name, e))?;
        for w in &created.warnings {
            tracing::warn!(container = %spec.name, "engine warning: {w}");
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn api_versions_parse() {
        let v = parse_api_version("1.41").unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(parse_api_version("x").is_none());
    }
}
