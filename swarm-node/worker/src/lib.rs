//! The worker half of a swarm node: runs the tasks the managers assign to this node as
//! containers on the node's Docker Engine, and reports what becomes of them.
//!
//! - [`runtime`]: the [`ContainerRuntime`] trait, with [`DockerRuntime`] (bollard) and
//!   [`FakeRuntime`] (in memory, for tests).
//! - [`spec`]: task → container name, labels and create request, as Docker Swarm does.
//! - [`plan()`]: the pure decision function; [`Executor`] carries its steps out.
//! - [`agent`]: heartbeats, assignments and status reports with the managers.
//!
//! **Architecture Invariant:** this is the only crate that talks to the Docker Engine.

pub mod agent;
pub mod clock;
pub mod docker;
pub mod executor;
pub mod fake;
pub mod plan;
pub mod runtime;
pub mod spec;

pub use agent::{run, Agent, AgentConfig, AgentError};
pub use clock::{Clock, FixedClock, SystemClock};
pub use docker::DockerRuntime;
pub use executor::{AssignedTasks, Executor};
pub use fake::FakeRuntime;
pub use plan::{plan, Action, StatusChange};
pub use runtime::{ContainerRuntime, ContainerSpec, RunState, RuntimeError, TaskContainer};
