//! Wall-clock time, behind a trait so that tests can pin it: the node layer's one clock,
//! defined with the worker (which swarm-node links) and used by managers too.

pub use swarm_worker::clock::{parse_rfc3339, rfc3339, Clock, SharedClock, SystemClock};
