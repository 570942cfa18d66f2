//! The worker half of a swarm node: runs the tasks the managers assign to this node as
//! containers on the node's Docker Engine, and reports what becomes of them.
//!
//! - [`runtime`]: the [`ContainerRuntime`] trait, with [`DockerRuntime`] (bollard) and
//!   [`FakeRuntime`] (in memory, for tests).
//! - [`spec`]: task → container name, labels and create request, as Docker Swarm does.
//! - [`plan()`]: the pure decision function; [`Executor`] carries its steps out.
//! - [`agent`]: heartbeats, assignments and status reports with the managers.
//! - [`taskfiles`]: secrets and configs as read-only files in task containers, from
//!   one tmpfs per task on the host ([`HostTaskFiles`]; [`FakeTaskFiles`] for tests).
//! - [`netagent`]: follows the node's network map: Docker bridge networks for the
//!   overlays, the data plane through `swarm-net`, and which tasks may start.
//!
//! **Architecture Invariant:** this is the only crate that talks to the Docker Engine.

pub mod agent;
pub mod clock;
pub mod docker;
pub mod executor;
pub mod fake;
pub mod netagent;
pub mod plan;
pub mod runtime;
pub mod spec;
pub mod taskfiles;
pub mod template;

pub use agent::{run, Agent, AgentConfig, AgentError};
pub use clock::{Clock, FixedClock, SystemClock};
pub use docker::DockerRuntime;
pub use executor::{Assigned, AssignedTasks, Executor};
pub use fake::FakeRuntime;
pub use netagent::{NetAgent, NetmapError, NetmapSource};
pub use plan::{plan, Action, ReadyNetworks, StatusChange};
pub use runtime::{
    ContainerRuntime, ContainerSpec, LocalNetwork, RunState, RuntimeError, TaskContainer,
    TaskNetwork,
};
pub use taskfiles::{FakeTaskFiles, HostTaskFiles, TaskFile, TaskFiles};
