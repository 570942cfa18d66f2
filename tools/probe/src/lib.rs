//! `swarmup-probe`: measurements inside busybox containers on swarmup's overlay networks.
//! Built as a fully static binary, so it resolves no names: every target is an address.

pub mod args;
pub mod dns;
pub mod report;
pub mod run;
pub mod watch;
