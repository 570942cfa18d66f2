//! DigitalOcean: one droplet per machine in one region's VPC, behind one cloud firewall.
//!
//! Everything swarmup makes is tagged `swarmup` and `swarmup:CLUSTER` (plus
//! `swarmup-role:manager|worker` on droplets), and the firewall and a generated SSH key are
//! named `swarmup-CLUSTER`. Any machine holding the token can therefore list, resume and
//! destroy a cluster without local state.
//!
//! A workshop's clusters (plans carrying one `swarmup-workshop:NAME` tag) are made
//! together by `create_many`: checks once, one firewall `swarmup-workshop-NAME` selected by
//! the workshop tag, one listing by that tag every few seconds (`workshop.rs`).
//!
//! Requests go through [`DoClient`], which honours DigitalOcean's rate-limit headers, waits
//! out 429s, backs off on 5xx and retries lost connections only for requests that are
//! harmless to repeat. Every wait goes through a [`Clock`] and has a deadline.

mod client;
mod clock;
mod error;
mod firewall;
mod provider;
mod types;
mod workshop;

pub use client::{md5_fingerprint, ApiCallCount, DoClient, RetryPolicy, DEFAULT_API_URL};
pub use clock::{Clock, ScaledClock, SystemClock};
pub use error::DoError;
pub use firewall::{
    cluster_firewall, is_published_port_rule, published_rules, with_published_rules, MAX_RULES,
    SSH_FROM_ANYWHERE,
};
pub use provider::{
    cluster_tag, resource_name, role_tag, DigitalOceanOptions, DigitalOceanProvider, DoPlan,
    SshKeyChoice, UserData, MAX_NAMES_PER_CALL, MAX_USER_DATA, TAG_ALL,
};
pub use types::{
    Account, Action, ApiErrorBody, Droplet, DropletCreate, Firewall, FirewallCreate, InboundRule,
    NetworkV4, Networks, OutboundRule, Region, RegionRef, Size, SshKey, Targets, Vpc,
};
pub use workshop::{common_workshop, workshop_resource_name, WorkshopPlan};
