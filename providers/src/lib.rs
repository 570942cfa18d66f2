//! Providers create, list, power and destroy the machines of a cluster.
//!
//! Every provider sits behind [`Provider`]. A provider never opens SSH: it hands back
//! [`Machine`] records that say how to reach each machine, and `swarmup-bootstrap` does
//! the rest over SSH.

pub mod lab;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod digitalocean;
pub mod ssh;
pub mod virtualbox;

// The records bootstrap and the CLI share with providers live in their own small crate,
// so that bootstrap links no cloud client; providers re-export them.
pub use swarmup_machine::{
    workshop, ClusterPlan, HostKey, Machine, MachinePlan, NoProgress, PowerState, Progress, Role,
    SshEndpoint, CONTROL_PORT, DATA_PORT, DOCKER_GOSSIP_PORT, TUNNEL_PORT,
};

/// What a destroy removed, for the report printed to the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyReport {
    /// One line per removed thing, e.g. `droplet 1234 (web-node1)`.
    pub removed: Vec<String>,
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        })
    }
}

/// A port the cluster's services publish (ingress or host mode), as the cluster's cloud
/// firewall must let it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub port: u16,
    pub protocol: PortProtocol,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// What [`Provider::sync_published_ports`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum FirewallSync {
    /// The provider puts no cloud firewall in front of its machines; the message says
    /// what that means for published ports.
    NoCloudFirewall { message: String },
    /// The firewall now allows exactly the published ports. `opened` and `closed` name
    /// the rules that changed (`9200/tcp from 0.0.0.0/0, ::/0`); both are empty when the
    /// firewall already was in sync and nothing was sent.
    Synced {
        firewall: String,
        opened: Vec<String>,
        closed: Vec<String>,
        /// Published ports the firewall cannot express (e.g. sctp), with the reason.
        skipped: Vec<String>,
    },
}

/// How many requests a cloud provider's client sent. `calls` are first attempts of
/// ordinary requests, `polls` first attempts of status polls, `retries` every further
/// attempt of either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApiCallCount {
    pub calls: u64,
    pub polls: u64,
    pub retries: u64,
}

impl fmt::Display for ApiCallCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} api calls, {} polls, {} retries",
            self.calls, self.polls, self.retries
        )
    }
}

/// Who may reach the machines' Docker API when the user names no sources (`--ssh-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAdminSources {
    /// The address this host reaches the machines from: they see it unchanged.
    ThisHost,
    /// Anywhere: the machines see this host through NAT, at an address unknown here
    /// (every call still needs a client certificate from the cluster's CA).
    Anywhere,
}

/// What `create --dry-run` shows: the plan as the provider would carry it out, laid out
/// for the CLI's table (MACHINE, ROLE, then `columns`) and for `--output json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DryRun {
    /// The provider as a sentence names it ("DigitalOcean").
    pub title: String,
    /// Columns after MACHINE and ROLE.
    pub columns: Vec<String>,
    /// One per machine of the plan, in the plan's order.
    pub machines: Vec<DryRunMachine>,
    /// A last row (totals): its cells after MACHINE.
    pub total: Option<Vec<String>>,
    /// Lines under the table: a label and its value.
    pub details: Vec<(String, String)>,
    /// Said on stderr: the plan works but the user should know.
    pub warnings: Vec<String>,
    /// The provider's own plan, for scripts (`null` when it has nothing more to say).
    pub plan: serde_json::Value,
}

/// One machine of a [`DryRun`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRunMachine {
    pub name: String,
    pub role: Role,
    /// The cells of [`DryRun::columns`].
    pub cells: Vec<String>,
    /// What `--output json` adds to `name` and `role`.
    pub json: serde_json::Map<String, serde_json::Value>,
}

impl DryRun {
    /// The plan with nothing beyond names and roles.
    pub fn plain(title: &str, plan: &ClusterPlan) -> Self {
        DryRun {
            title: title.to_string(),
            machines: plan
                .machines
                .iter()
                .map(|m| DryRunMachine {
                    name: m.name.clone(),
                    role: m.role,
                    cells: Vec::new(),
                    json: serde_json::Map::new(),
                })
                .collect(),
            plan: serde_json::Value::Null,
            ..DryRun::default()
        }
    }
}

/// Errors a provider returns. Messages are one line, name what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Prerequisite(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no machine {machine} in cluster {cluster}")]
    UnknownMachine { cluster: String, machine: String },
    #[error("{0}")]
    Api(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The one interface every provider implements.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The name users type after `--provider`.
    fn name(&self) -> &'static str;

    /// Checks what the provider needs before anything is created (root, binaries,
    /// credentials, limits). Creates nothing.
    async fn preflight(&self, plan: &ClusterPlan) -> Result<(), ProviderError>;

    /// Creates the machines of `plan` that do not exist yet and returns all machines of
    /// the cluster. Safe to call again: existing machines are kept, never duplicated.
    async fn create(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError>;

    /// The machines of a cluster, empty if the provider knows none.
    async fn list(&self, cluster: &str) -> Result<Vec<Machine>, ProviderError>;

    /// The names of the clusters this provider can see.
    async fn clusters(&self) -> Result<Vec<String>, ProviderError>;

    /// Removes every machine and every other resource of the cluster.
    async fn destroy(&self, cluster: &str) -> Result<DestroyReport, ProviderError>;

    /// Powers a machine off: everything on it stops and it drops off the network.
    async fn power_off(&self, cluster: &str, machine: &str) -> Result<(), ProviderError>;

    /// Powers a machine back on.
    async fn power_on(&self, cluster: &str, machine: &str) -> Result<Machine, ProviderError>;

    /// Whether the provider puts a cloud firewall in front of the machines, which
    /// [`Provider::sync_published_ports`] must open for published ports.
    fn has_cloud_firewall(&self) -> bool {
        false
    }

    /// Makes the cluster's cloud firewall let in exactly `ports` (from `from`, or from
    /// anywhere when empty), keeping the provider's own rules as they are. Providers
    /// without a cloud firewall have nothing to open.
    async fn sync_published_ports(
        &self,
        cluster: &str,
        ports: &[PublishedPort],
        from: &[String],
    ) -> Result<FirewallSync, ProviderError> {
        let _ = (cluster, ports, from);
        Ok(FirewallSync::NoCloudFirewall {
            message: format!(
                "the {} provider has no cloud firewall, so there is nothing to open: \
                 the nodes' own firewall rules do not block published ports",
                self.name()
            ),
        })
    }
    /// `create --dry-run`: what `create` would make of `plan` (and what it costs), reading
    /// only. `plan`'s keys may be throwaway ones: a dry run writes nothing, not even keys.
    async fn dry_run(&self, plan: &ClusterPlan) -> Result<DryRun, ProviderError> {
        Ok(DryRun::plain(self.name(), plan))
    }

    /// Removes what the last `create` of `cluster` made after it failed
    /// (`--rollback-on-failure`). `new_cluster`: the cluster did not exist before that run,
    /// so everything of it goes. Providers that cannot tell which machines the run made
    /// refuse for a cluster that existed before.
    async fn rollback_run(
        &self,
        cluster: &str,
        new_cluster: bool,
    ) -> Result<DestroyReport, ProviderError> {
        if new_cluster {
            return self.destroy(cluster).await;
        }
        Err(ProviderError::InvalidRequest(format!(
            "the {} provider cannot remove single machines of cluster {cluster}, which existed before this run: run the same create again to finish it, or `swarmup destroy {cluster}`",
            self.name()
        )))
    }

    /// Who may reach the Docker API when the user names no sources.
    fn default_admin_sources(&self) -> DefaultAdminSources {
        DefaultAdminSources::ThisHost
    }

    /// The requests sent to the provider's API so far, for `create --output json`; `None`
    /// for providers without one.
    fn api_call_count(&self) -> Option<ApiCallCount> {
        None
    }

    /// The registry the provider runs for the cluster, which every node trusts
    /// (`HOST:PORT`, for `docker push HOST:PORT/app:1`); `None` when there is none.
    async fn registry(&self, cluster: &str) -> Result<Option<String>, ProviderError> {
        let _ = cluster;
        Ok(None)
    }

    /// Creates several clusters together (a workshop's), one result per plan in the
    /// same order: one cluster failing leaves the others' results intact. The default
    /// creates them one after another; a provider whose calls can be shared across
    /// clusters (DigitalOcean: ten droplets per call, one poll for all) overrides it.
    async fn create_many(
        &self,
        plans: &[ClusterPlan],
        progress: &dyn Progress,
    ) -> Vec<Result<Vec<Machine>, ProviderError>> {
        create_each(self, plans, progress).await
    }

    /// The checks before [`Provider::create_many`], for all the plans at once (a
    /// workshop's quota is the sum of its clusters'). The default checks each plan.
    async fn preflight_many(&self, plans: &[ClusterPlan]) -> Result<(), ProviderError> {
        preflight_each(self, plans).await
    }

    /// The dry run of [`Provider::create_many`] for a workshop that lives `ttl`: the
    /// machines of every plan, and for providers with prices the calls, the quota and
    /// the cost. The default is each plan's own dry run, one after another.
    async fn dry_run_many(
        &self,
        plans: &[ClusterPlan],
        ttl: std::time::Duration,
    ) -> Result<DryRun, ProviderError> {
        let _ = ttl;
        let mut all = DryRun::default();
        for plan in plans {
            let one = self.dry_run(plan).await?;
            if all.title.is_empty() {
                all.title = one.title;
                all.columns = one.columns;
            }
            all.machines.extend(one.machines);
            all.warnings.extend(one.warnings);
        }
        Ok(all)
    }

    /// Every cluster of this provider with the tags it was created with
    /// ([`ClusterPlan::tags`]), found without local state, so that a workshop can be
    /// listed, reaped or destroyed from a machine that never created it. The default
    /// knows the clusters but no tags.
    async fn cluster_tags(&self) -> Result<BTreeMap<String, Vec<String>>, ProviderError> {
        Ok(self
            .clusters()
            .await?
            .into_iter()
            .map(|c| (c, Vec::new()))
            .collect())
    }

    /// Destroys every cluster carrying `tag`, and what the provider made for them
    /// together (a workshop's shared firewall). The default destroys, one by one, the
    /// clusters [`Provider::cluster_tags`] finds with the tag.
    async fn destroy_tagged(&self, tag: &str) -> Result<DestroyReport, ProviderError> {
        let mut report = DestroyReport::default();
        for (cluster, tags) in self.cluster_tags().await? {
            if tags.iter().any(|t| t == tag) {
                report.removed.extend(self.destroy(&cluster).await?.removed);
            }
        }
        Ok(report)
    }
}

/// [`Provider::preflight_many`] done plainly: each plan's own `preflight`.
pub async fn preflight_each<P: Provider + ?Sized>(
    provider: &P,
    plans: &[ClusterPlan],
) -> Result<(), ProviderError> {
    for plan in plans {
        provider.preflight(plan).await?;
    }
    Ok(())
}

/// [`Provider::create_many`] done plainly: each plan's own `create`, one after another.
pub async fn create_each<P: Provider + ?Sized>(
    provider: &P,
    plans: &[ClusterPlan],
    progress: &dyn Progress,
) -> Vec<Result<Vec<Machine>, ProviderError>> {
    let mut results = Vec::with_capacity(plans.len());
    for plan in plans {
        results.push(provider.create(plan, progress).await);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_provider_without_a_cloud_firewall_says_there_is_nothing_to_open() {
        let lab = lab::LabProvider::new(lab::LabConfig::default());
        assert!(!lab.has_cloud_firewall());
        let ports = [PublishedPort {
            port: 9200,
            protocol: PortProtocol::Tcp,
        }];
        let FirewallSync::NoCloudFirewall { message } =
            lab.sync_published_ports("c1", &ports, &[]).await.unwrap()
        else {
            panic!("the lab has no cloud firewall");
        };
        assert!(
            message.contains("lab provider has no cloud firewall"),
            "{message}"
        );
        assert!(
            message.contains("do not block published ports"),
            "{message}"
        );
    }
}
