//! The container runtime seen by the executor: the handful of engine operations a worker
//! needs, behind a trait so the executor can be tested without a Docker Engine.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use swarm_net::BridgeSpec;
use swarm_state::models::{ContainerCreateBody, NodeDescription};

/// Labels Docker Swarm puts on every task container. The executor finds its containers
/// (and adopts them after a restart) through these, so they are the contract with
/// containers created by earlier runs of this node.
pub mod labels {
    pub const TASK: &str = "com.docker.swarm.task";
    pub const TASK_ID: &str = "com.docker.swarm.task.id";
    pub const TASK_NAME: &str = "com.docker.swarm.task.name";
    pub const NODE_ID: &str = "com.docker.swarm.node.id";
    pub const SERVICE_ID: &str = "com.docker.swarm.service.id";
    pub const SERVICE_NAME: &str = "com.docker.swarm.service.name";
    /// On the Docker bridge networks standing for overlays: the overlay's network id.
    /// Only networks carrying it are ever changed or removed by the worker.
    pub const NETWORK_ID: &str = "com.swarmup.network.id";
    /// On those networks: the node that made it. Nodes sharing one engine (tests) remove
    /// only their own.
    pub const NETWORK_NODE: &str = "com.swarmup.node.id";
}

/// One overlay attachment of a task container, as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNetwork {
    /// The Docker bridge network standing for the overlay on this node (its name).
    pub docker_network: String,
    /// The task's address on it, chosen by the leader's allocator.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// What the engine says about one task container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Created, never started (or a start that failed).
    Created,
    /// Running, paused or restarting: a process exists.
    Running,
    /// The process ended. `error` is the engine's own message, e.g. when start failed.
    Exited { code: i64, error: Option<String> },
    /// The engine is removing it; it is about to disappear.
    Removing,
}

/// What the engine's health check says of a running container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Health {
    /// The container has no health check.
    #[default]
    None,
    /// Checked, not yet healthy: Docker shows the task as Starting.
    Starting,
    Healthy,
    Unhealthy,
}

/// A container that belongs to a task of this node (it carries the task labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContainer {
    pub id: String,
    /// The name without Docker's leading slash.
    pub name: String,
    /// The value of the `com.docker.swarm.task.id` label.
    pub task_id: String,
    pub state: RunState,
    pub health: Health,
    /// Shared: a node lists its containers after every change, and copying each one's
    /// labels every time cost more than the rest of the listing.
    pub labels: std::sync::Arc<HashMap<String, String>>,
}

/// Everything needed to create one task container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The container name, `SERVICE.SLOT.TASKID`.
    pub name: String,
    pub image: String,
    /// The body of the create request. With networks, it already names the first one
    /// (`HostConfig.NetworkMode`, `NetworkingConfig`) and its gateway as DNS server.
    pub body: ContainerCreateBody,
    /// Overlay attachments in the service's order; empty: the engine's default bridge.
    /// The runtime connects the second and later ones before the container starts.
    pub networks: Vec<TaskNetwork>,
}

/// A Docker network the worker made for an overlay (it carries [`labels::NETWORK_ID`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNetwork {
    /// The engine's id of the network.
    pub id: String,
    pub name: String,
    /// The overlay's network id, from the label.
    pub network_id: String,
    /// The node that made it, from [`labels::NETWORK_NODE`].
    pub node_id: Option<String>,
}

/// The kinds of engine events the executor reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Start,
    Die,
    Destroy,
    Other,
}

/// One container event for a container of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub container_id: String,
    pub task_id: Option<String>,
    pub action: EventAction,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached (socket missing, connection refused, timeout).
    /// Worth retrying: nothing was decided about the task.
    #[error("docker engine at {endpoint} unavailable: {message}")]
    Unavailable { endpoint: String, message: String },
    /// Docker's own wording, which `docker service ps` users know.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// The image is not on the node and the engine could not pull it: Docker's own
    /// wording first, then the engine's reason, then where a swarmup cluster gets images
    /// from (a lab reaches no public registry).
    #[error("No such image: {image}: pull failed: {pull_error}; {IMAGE_HINT}")]
    PullFailed { image: String, pull_error: String },
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    /// The engine refused the request; retrying the same request will not help.
    #[error("docker engine refused to {op} {target}: {message}")]
    Refused {
        op: &'static str,
        target: String,
        message: String,
    },
}

/// What to do about an image the nodes cannot pull.
pub const IMAGE_HINT: &str = "copy it into every node with `docker save IMAGE | swarmup image load CLUSTER`, or push it to a registry the nodes can reach (a lab cluster runs one with `swarmup create --registry`)";

impl RuntimeError {
    /// True when the failure says nothing about the task itself.
    pub fn is_temporary(&self) -> bool {
        matches!(self, RuntimeError::Unavailable { .. })
    }
}

/// The engine operations a worker needs. Implementations must be cheap to call
/// concurrently: the executor runs stops and starts of different tasks in parallel.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug {
    /// Describes the engine and its host as a swarm node description.
    async fn describe(&self) -> Result<NodeDescription, RuntimeError>;

    /// All containers (running or not) labelled with `com.docker.swarm.node.id=node_id`.
    async fn list(&self, node_id: &str) -> Result<Vec<TaskContainer>, RuntimeError>;

    /// Makes sure `image` is present locally: a local image wins, a pull is only tried
    /// when it is absent. Fails with [`RuntimeError::PullFailed`] (or
    /// [`RuntimeError::NoSuchImage`]) when neither works.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError>;

    /// Creates the container and returns its id. Does not start it.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;

    async fn start(&self, container_id: &str) -> Result<(), RuntimeError>;

    /// Stops with the container's stop signal, then kills after `grace`. `None` uses the
    /// grace period the container was created with. Stopping a stopped container is fine.
    async fn stop(&self, container_id: &str, grace: Option<Duration>) -> Result<(), RuntimeError>;

    /// Removes a stopped container (and its anonymous volumes). Removing a container that
    /// is already gone is fine.
    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError>;

    /// Start, die and destroy events of the containers labelled with this node id, from
    /// now on. The stream ends or fails when the engine connection breaks; the caller
    /// reconnects and resynchronises.
    async fn events(
        &self,
        node_id: &str,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError>;

    /// Makes sure the bridge network standing for an overlay exists with exactly these
    /// settings (name, subnet, gateway, kernel bridge name, MTU, internal, label) and
    /// returns its engine id. One with other settings is removed and created again; a
    /// network of that name without our label is never touched: that is refused. A new
    /// network is labelled with `node_id` as its maker.
    async fn ensure_network(
        &self,
        spec: &BridgeSpec,
        node_id: &str,
    ) -> Result<String, RuntimeError>;

    /// The networks carrying [`labels::NETWORK_ID`].
    async fn networks(&self) -> Result<Vec<LocalNetwork>, RuntimeError>;

    /// Removes a network by name or id. Gone already is fine; the engine refuses while a
    /// container is connected.
    async fn remove_network(&self, name_or_id: &str) -> Result<(), RuntimeError>;
}

#[cfg(test)]
mod pull_tests {
    use super::*;

    #[test]
    fn a_failed_pull_says_dockers_words_then_what_to_do() {
        let e = RuntimeError::PullFailed {
            image: "10.247.3.1:5000/app:1".into(),
            pull_error: "manifest unknown".into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "No such image: 10.247.3.1:5000/app:1: pull failed: manifest unknown; "
            ),
            "{text}"
        );
        assert!(text.contains("swarmup image load"), "{text}");
        assert!(text.contains("swarmup create --registry"), "{text}");
        assert!(!e.is_temporary());
    }
}
