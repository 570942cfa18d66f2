//! An in-memory container runtime for tests: containers are records, processes never
//! exist, and tests decide when a container dies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use swarm_net::BridgeSpec;
use swarm_state::models::{EngineDescription, NodeDescription, Platform, ResourceObject};
use tokio::sync::broadcast;

use crate::runtime::{
    labels, ContainerRuntime, ContainerSpec, EventAction, Health, LocalNetwork, RunState,
    RuntimeError, RuntimeEvent, TaskContainer,
};

/// One engine call, as recorded by [`FakeRuntime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    EnsureImage(String),
    Create(String),
    Start(String),
    Stop(String, Option<Duration>),
    Remove(String),
    /// A network was created (by name).
    CreateNetwork(String),
    /// A network was removed (by name).
    RemoveNetwork(String),
}

/// A network held by [`FakeRuntime`]. `spec` is `None` for one swarmup did not make.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeNetwork {
    pub id: String,
    pub name: String,
    pub spec: Option<BridgeSpec>,
    /// The node that made it.
    pub node_id: Option<String>,
}

/// A container held by [`FakeRuntime`].
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    pub id: String,
    pub spec: ContainerSpec,
    pub state: RunState,
    pub health: Health,
    /// The spec's labels, shared with every listing.
    labels: Arc<HashMap<String, String>>,
}

impl FakeContainer {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct State {
    images: HashSet<String>,
    containers: BTreeMap<String, FakeContainer>,
    /// Networks by name.
    networks: BTreeMap<String, FakeNetwork>,
    next_id: u64,
    calls: Vec<Call>,
    start_error: Option<String>,
    unavailable: bool,
    no_events: bool,
    /// How long a start takes before the container runs (an image's entrypoint coming up).
    start_delay: Duration,
}

/// The fake engine. Rules it enforces, so tests catch a misbehaving executor:
/// container names are unique, only a created container can be started (a container
/// that has run is never started again), a container's networks must exist, and a
/// network with a running container connected cannot be removed.
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    /// Events with the node id label of their container.
    events: broadcast::Sender<(Option<String>, RuntimeEvent)>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            state: Mutex::new(State::default()),
            events: broadcast::channel(1024).0,
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// A runtime that has these images locally.
    pub fn with_images(images: &[&str]) -> Self {
        let rt = Self::new();
        for i in images {
            rt.add_image(i);
        }
        rt
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_string());
    }

    /// Makes every later start fail with this engine message (`None`: starts work).
    pub fn set_start_error(&self, message: Option<&str>) {
        self.lock().start_error = message.map(str::to_string);
    }

    /// Makes every call fail as if the engine were down.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Makes every start take this long before the container runs, as a real engine's
    /// starts do: the scale harness uses it so tasks reach Running after a delay.
    pub fn set_start_delay(&self, delay: Duration) {
        self.lock().start_delay = delay;
    }

    /// Refuses event subscriptions, as if events were lost: only resyncs see changes.
    pub fn set_events_enabled(&self, enabled: bool) {
        self.lock().no_events = !enabled;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.values().cloned().collect()
    }

    /// The containers labelled with this task id.
    pub fn containers_of(&self, task_id: &str) -> Vec<FakeContainer> {
        self.containers()
            .into_iter()
            .filter(|c| c.label(labels::TASK_ID) == Some(task_id))
            .collect()
    }

    /// The process of the task's running container ends with `code`, as if it had
    /// exited or been killed behind the worker's back. Returns false if none ran.
    pub fn exit(&self, task_id: &str, code: i64) -> bool {
        let mut st = self.lock();
        let Some(c) = st
            .containers
            .values_mut()
            .find(|c| c.label(labels::TASK_ID) == Some(task_id) && c.state == RunState::Running)
        else {
            return false;
        };
        c.state = RunState::Exited { code, error: None };
        let event = event(c, EventAction::Die);
        drop(st);
        let _ = self.events.send(event);
        true
    }

    /// The health check of the task's running container reports `health`. Returns false
    /// if none runs.
    pub fn set_health(&self, task_id: &str, health: Health) -> bool {
        let mut st = self.lock();
        let Some(c) = st
            .containers
            .values_mut()
            .find(|c| c.label(labels::TASK_ID) == Some(task_id) && c.state == RunState::Running)
        else {
            return false;
        };
        c.health = health;
        let event = event(c, EventAction::Other);
        drop(st);
        let _ = self.events.send(event);
        true
    }

    /// The networks, swarmup's and others.
    pub fn network_list(&self) -> Vec<FakeNetwork> {
        self.lock().networks.values().cloned().collect()
    }

    /// Adds a network swarmup did not make (a user's), to see that it is left alone.
    pub fn add_foreign_network(&self, name: &str) {
        let mut st = self.lock();
        st.next_id += 1;
        let id = format!("net{:04}", st.next_id);
        st.networks.insert(
            name.to_string(),
            FakeNetwork {
                id,
                name: name.to_string(),
                spec: None,
                node_id: None,
            },
        );
    }

    fn check(&self, st: &State) -> Result<(), RuntimeError> {
        if st.unavailable {
            return Err(RuntimeError::Unavailable {
                endpoint: "fake".into(),
                message: "engine is down".into(),
            });
        }
        Ok(())
    }
}

fn event(c: &FakeContainer, action: EventAction) -> (Option<String>, RuntimeEvent) {
    let ev = RuntimeEvent {
        container_id: c.id.clone(),
        task_id: c.label(labels::TASK_ID).map(str::to_string),
        action,
    };
    (c.label(labels::NODE_ID).map(str::to_string), ev)
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn describe(&self) -> Result<NodeDescription, RuntimeError> {
        self.check(&self.lock())?;
        Ok(NodeDescription {
            hostname: Some("fake-host".into()),
            platform: Some(Platform {
                architecture: Some("x86_64".into()),
                os: Some("linux".into()),
            }),
            resources: Some(ResourceObject {
                nano_cpus: Some(2_000_000_000),
                memory_bytes: Some(1 << 30),
                generic_resources: None,
            }),
            engine: Some(EngineDescription {
                engine_version: Some("20.10.24-fake".into()),
                labels: None,
                plugins: None,
            }),
            tls_info: None,
        })
    }

    async fn list(&self, node_id: &str) -> Result<Vec<TaskContainer>, RuntimeError> {
        let st = self.lock();
        self.check(&st)?;
        Ok(st
            .containers
            .values()
            .filter(|c| c.label(labels::NODE_ID) == Some(node_id))
            .filter_map(|c| {
                Some(TaskContainer {
                    id: c.id.clone(),
                    name: c.spec.name.clone(),
                    task_id: c.label(labels::TASK_ID)?.to_string(),
                    state: c.state.clone(),
                    health: c.health,
                    labels: c.labels.clone(),
                })
            })
            .collect())
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        self.check(&st)?;
        st.calls.push(Call::EnsureImage(image.to_string()));
        if st.images.contains(image) {
            Ok(())
        } else {
            Err(RuntimeError::NoSuchImage(image.to_string()))
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut st = self.lock();
        self.check(&st)?;
        st.calls.push(Call::Create(spec.name.clone()));
        if st.containers.values().any(|c| c.spec.name == spec.name) {
            return Err(RuntimeError::Refused {
                op: "create",
                target: spec.name.clone(),
                message: format!("the container name \"/{}\" is already in use", spec.name),
            });
        }
        if let Some(missing) = spec
            .networks
            .iter()
            .find(|n| !st.networks.contains_key(&n.docker_network))
        {
            return Err(RuntimeError::Refused {
                op: "create",
                target: spec.name.clone(),
                message: format!("network {} not found", missing.docker_network),
            });
        }
        st.next_id += 1;
        let id = format!("fake{:04}", st.next_id);
        st.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                spec: spec.clone(),
                state: RunState::Created,
                health: Health::None,
                labels: Arc::new(spec.body.labels.clone().unwrap_or_default()),
            },
        );
        Ok(id)
    }

    async fn start(&self, container_id: &str) -> Result<(), RuntimeError> {
        let delay = self.lock().start_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.lock();
        self.check(&st)?;
        st.calls.push(Call::Start(container_id.to_string()));
        let start_error = st.start_error.clone();
        let c = st
            .containers
            .get_mut(container_id)
            .ok_or_else(|| RuntimeError::NoSuchContainer(container_id.to_string()))?;
        if c.state != RunState::Created {
            return Err(RuntimeError::Refused {
                op: "start",
                target: container_id.to_string(),
                message: format!("fake engine: container is {:?}, not created", c.state),
            });
        }
        if let Some(message) = start_error {
            return Err(RuntimeError::Refused {
                op: "start",
                target: container_id.to_string(),
                message,
            });
        }
        c.state = RunState::Running;
        let event = event(c, EventAction::Start);
        drop(st);
        let _ = self.events.send(event);
        Ok(())
    }

    async fn stop(&self, container_id: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        self.check(&st)?;
        st.calls.push(Call::Stop(container_id.to_string(), grace));
        let c = st
            .containers
            .get_mut(container_id)
            .ok_or_else(|| RuntimeError::NoSuchContainer(container_id.to_string()))?;
        if c.state != RunState::Running {
            return Ok(());
        }
        // SIGTERM honoured at once.
        c.state = RunState::Exited {
            code: 143,
            error: None,
        };
        let event = event(c, EventAction::Die);
        drop(st);
        let _ = self.events.send(event);
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        self.check(&st)?;
        st.calls.push(Call::Remove(container_id.to_string()));
        match st.containers.get(container_id) {
            None => Ok(()),
            Some(c) if c.state == RunState::Running => Err(RuntimeError::Refused {
                op: "remove",
                target: container_id.to_string(),
                message: "container is running: stop it first".into(),
            }),
            Some(_) => {
                let c = st.containers.remove(container_id).expect("checked above");
                drop(st);
                let _ = self.events.send(event(&c, EventAction::Destroy));
                Ok(())
            }
        }
    }

    async fn events(
        &self,
        node_id: &str,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> {
        {
            let st = self.lock();
            self.check(&st)?;
            if st.no_events {
                return Err(RuntimeError::Unavailable {
                    endpoint: "fake".into(),
                    message: "events are disabled".into(),
                });
            }
        }
        let rx = self.events.subscribe();
        let node_id = node_id.to_string();
        Ok(
            stream::unfold((rx, node_id), |(mut rx, node_id)| async move {
                loop {
                    match rx.recv().await {
                        Ok((node, ev)) if node.as_deref() == Some(node_id.as_str()) => {
                            return Some((Ok(ev), (rx, node_id)))
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .boxed(),
        )
    }

    async fn ensure_network(
        &self,
        spec: &BridgeSpec,
        node_id: &str,
    ) -> Result<String, RuntimeError> {
        let mut st = self.lock();
        self.check(&st)?;
        let name = spec.network_name.clone();
        if let Some(existing) = st.networks.get(&name) {
            match &existing.spec {
                None => {
                    return Err(RuntimeError::Refused {
                        op: "create network",
                        target: name.clone(),
                        message: format!(
                            "a network named {name} exists that swarmup did not create"
                        ),
                    })
                }
                Some(have) if have == spec => return Ok(existing.id.clone()),
                Some(_) => {
                    if in_use(&st, &name) {
                        return Err(RuntimeError::Refused {
                            op: "remove network",
                            target: name.clone(),
                            message: format!(
                                "error while removing network: network {name} has active endpoints"
                            ),
                        });
                    }
                    st.networks.remove(&name);
                    st.calls.push(Call::RemoveNetwork(name.clone()));
                }
            }
        }
        st.next_id += 1;
        let id = format!("net{:04}", st.next_id);
        st.calls.push(Call::CreateNetwork(name.clone()));
        st.networks.insert(
            name.clone(),
            FakeNetwork {
                id: id.clone(),
                name,
                spec: Some(spec.clone()),
                node_id: Some(node_id.to_string()),
            },
        );
        Ok(id)
    }

    async fn networks(&self) -> Result<Vec<LocalNetwork>, RuntimeError> {
        let st = self.lock();
        self.check(&st)?;
        Ok(st
            .networks
            .values()
            .filter_map(|n| {
                Some(LocalNetwork {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    network_id: n.spec.as_ref()?.network_id.clone(),
                    node_id: n.node_id.clone(),
                })
            })
            .collect())
    }

    async fn remove_network(&self, name_or_id: &str) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        self.check(&st)?;
        let Some(name) = st
            .networks
            .values()
            .find(|n| n.name == name_or_id || n.id == name_or_id)
            .map(|n| n.name.clone())
        else {
            return Ok(());
        };
        if in_use(&st, &name) {
            return Err(RuntimeError::Refused {
                op: "remove network",
                target: name.clone(),
                message: format!(
                    "error while removing network: network {name} has active endpoints"
                ),
            });
        }
        st.networks.remove(&name);
        st.calls.push(Call::RemoveNetwork(name));
        Ok(())
    }
}

/// As in Docker, only a running container holds an endpoint on its networks.
fn in_use(st: &State, network: &str) -> bool {
    st.containers.values().any(|c| {
        c.state == RunState::Running && c.spec.networks.iter().any(|n| n.docker_network == network)
    })
}
