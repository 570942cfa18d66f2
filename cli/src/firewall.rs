//! `swarmup firewall sync`: the provider's cloud firewall lets in exactly the ports the
//! cluster's services publish. Also run after `swarmup service create` and `service rm`.
//!
//! The published ports come from the cluster's own Docker API (`GET /services`,
//! `Endpoint.Ports`), so services made with the stock docker CLI count too. Where they may
//! come from (`--publish-from`) is kept in the cluster record for the next sync.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard_stubs::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum as Proto,
    EndpointPortConfigPublishModeEnum as Mode, Service,
};
use swarmup_providers::{FirewallSync, PortProtocol, PowerState, PublishedPort, Role};

use crate::commands::{cluster_machines, pick_cluster, provider_of};
use crate::output::Output;
use crate::records::{ClusterDir, ClusterRecord};

/// `provider_options` key of the cluster record: the `--publish-from` CIDRs, comma-separated.
pub const OPT_PUBLISH_FROM: &str = "publish_from";

/// How long a sync waits for the leader to allocate ports a service asked for without a
/// number (the allocation follows the create within a Raft round trip).
const ALLOCATION_WAIT: Duration = Duration::from_secs(20);

/// Checks one `--publish-from` value: an IPv4 or IPv6 address or CIDR.
pub fn check_cidr(cidr: &str) -> Result<()> {
    let (addr, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr, None),
    };
    let ok = addr.parse::<IpAddr>().is_ok_and(|ip| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
    });
    if !ok {
        bail!("invalid --publish-from {cidr:?}: give an address or CIDR such as 192.0.2.0/24 or 2001:db8::/48");
    }
    Ok(())
}

/// The ports the services publish, what cannot be opened (with why), and the services
/// whose ports are not allocated yet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub ports: Vec<PublishedPort>,
    pub notes: Vec<String>,
    pub pending: Vec<String>,
}

fn protocol(p: &EndpointPortConfig) -> PortProtocol {
    match p.protocol {
        Some(Proto::UDP) => PortProtocol::Udp,
        Some(Proto::SCTP) => PortProtocol::Sctp,
        _ => PortProtocol::Tcp,
    }
}

/// What the firewall must let in for `services`: every published port, ingress and host
/// mode alike (a cloud firewall applies to every droplet of the cluster, and a host-mode
/// task may land on any of them).
pub fn published_ports(services: &[Service]) -> Published {
    let mut out = Published::default();
    for s in services {
        let name = s
            .spec
            .as_ref()
            .and_then(|s| s.name.clone())
            .or_else(|| s.id.clone())
            .unwrap_or_default();
        let asked: Vec<EndpointPortConfig> = s
            .spec
            .as_ref()
            .and_then(|s| s.endpoint_spec.as_ref())
            .and_then(|e| e.ports.clone())
            .unwrap_or_default();
        let allocated: Vec<EndpointPortConfig> = s
            .endpoint
            .as_ref()
            .and_then(|e| e.ports.clone())
            .unwrap_or_default();
        let ports = if allocated.is_empty() && !asked.is_empty() {
            // Not allocated yet: numbered ports are known already, unnumbered ones are not.
            if asked
                .iter()
                .any(|p| p.publish_mode != Some(Mode::HOST) && p.published_port.unwrap_or(0) == 0)
            {
                out.pending.push(name.clone());
            }
            asked
        } else {
            allocated
        };
        for p in &ports {
            let number = p.published_port.unwrap_or(0);
            match u16::try_from(number) {
                Ok(port) if port > 0 => out.ports.push(PublishedPort {
                    port,
                    protocol: protocol(p),
                }),
                _ if p.publish_mode == Some(Mode::HOST) => out.notes.push(format!(
                    "service {name}: host-mode port {}/{} has no published port (each task's \
                     engine picks one): publish a fixed port to open it in the firewall",
                    p.target_port.unwrap_or(0),
                    protocol(p)
                )),
                _ => {}
            }
        }
    }
    out.ports.sort();
    out.ports.dedup();
    out
}

/// The CIDRs recorded by an earlier `--publish-from`.
fn recorded_from(record: &ClusterRecord) -> Vec<String> {
    record
        .provider_options
        .get(OPT_PUBLISH_FROM)
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `swarmup firewall sync NAME [--publish-from CIDR]...`.
pub async fn sync(out: &Output, name: &str, publish_from: Vec<String>) -> Result<()> {
    for c in &publish_from {
        check_cidr(c)?;
    }
    let (dir, mut record) = pick_cluster(Some(name))?;
    let from = if publish_from.is_empty() {
        recorded_from(&record)
    } else {
        publish_from
    };
    let result = run(&dir, &record, &from).await?;
    // Remembered only once the provider took them, so a refused list is not kept.
    if !from.is_empty() && recorded_from(&record) != from {
        record
            .provider_options
            .insert(OPT_PUBLISH_FROM.to_string(), from.join(","));
        dir.save(&record)?;
    }
    if out.json() {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    match &result {
        FirewallSync::NoCloudFirewall { message } => out.say(message),
        FirewallSync::Synced {
            firewall,
            opened,
            closed,
            skipped,
        } => {
            for s in skipped {
                eprintln!("Warning: {s}");
            }
            if opened.is_empty() && closed.is_empty() {
                out.say(&format!(
                    "firewall {firewall} already allows exactly the published ports"
                ));
            }
            for r in opened {
                out.say(&format!("opened {r}"));
            }
            for r in closed {
                out.say(&format!("closed {r}"));
            }
        }
    }
    Ok(())
}

/// The sync after `swarmup service create` or `service rm`: silent where the provider has
/// no cloud firewall, and changes reported on stderr so that stdout stays what docker
/// prints (the service id or name).
pub async fn after_service_change(out: &Output, cluster: Option<&str>) -> Result<()> {
    let (dir, record) = pick_cluster(cluster)?;
    let from = recorded_from(&record);
    let result = run(&dir, &record, &from).await.with_context(|| {
        format!(
            "the service changed, but the cloud firewall was not updated: run `swarmup firewall sync {}`",
            record.name
        )
    })?;
    if let FirewallSync::Synced {
        firewall,
        opened,
        closed,
        skipped,
    } = &result
    {
        for s in skipped {
            eprintln!("Warning: {s}");
        }
        if !out.quiet {
            for r in opened {
                eprintln!("firewall {firewall}: opened {r}");
            }
            for r in closed {
                eprintln!("firewall {firewall}: closed {r}");
            }
        }
    }
    Ok(())
}

async fn run(dir: &ClusterDir, record: &ClusterRecord, from: &[String]) -> Result<FirewallSync> {
    let provider = provider_of(record).await?;
    if !provider.has_cloud_firewall() {
        // Nothing to read from the cluster: the provider only says why there is nothing to do.
        return Ok(provider
            .sync_published_ports(&record.name, &[], from)
            .await?);
    }
    if record.engine == swarmup_bootstrap::docker_swarm::Engine::Docker {
        bail!(
            "cluster {} runs Docker's own swarm mode: `firewall sync` reads the ports through swarm-node's API and works only for swarm-node clusters",
            record.name
        );
    }
    let published = read_published(dir, record).await?;
    let mut result = provider
        .sync_published_ports(&record.name, &published.ports, from)
        .await?;
    if let FirewallSync::Synced { skipped, .. } = &mut result {
        skipped.extend(published.notes);
    }
    Ok(result)
}

/// The published ports, once every service's ports are allocated (or the wait is over).
async fn read_published(dir: &ClusterDir, record: &ClusterRecord) -> Result<Published> {
    let api = DockerApi::open(dir, record).await?;
    let deadline = Instant::now() + ALLOCATION_WAIT;
    loop {
        let services: Vec<Service> = api.services().await?;
        let published = published_ports(&services);
        if published.pending.is_empty() {
            return Ok(published);
        }
        if Instant::now() >= deadline {
            bail!(
                "the ports of {} were not allocated within {}s: check `swarmup service ls --cluster {}`",
                published.pending.join(", "),
                ALLOCATION_WAIT.as_secs(),
                record.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Just enough of a Docker API client to list services: the managers in turn, over mutual
/// TLS with the client certificate `create` stored.
struct DockerApi {
    client: reqwest::Client,
    managers: Vec<SocketAddr>,
}

impl DockerApi {
    async fn open(dir: &ClusterDir, record: &ClusterRecord) -> Result<DockerApi> {
        let machines = cluster_machines(record).await?;
        let mut managers: Vec<_> = machines
            .iter()
            .filter(|m| m.role == Role::Manager)
            .collect();
        // Running managers first; the others are still worth a try.
        managers.sort_by_key(|m| m.power != PowerState::Running);
        let managers: Vec<SocketAddr> = managers
            .iter()
            .map(|m| SocketAddr::new(m.ssh.host, swarmup_providers::CONTROL_PORT))
            .collect();
        if managers.is_empty() {
            bail!("cluster {} has no manager to ask", record.name);
        }
        crate::client_cert::refresh_and_tell(dir, &machines).await?;
        let client = crate::client_cert::tls_client(dir, Some(Duration::from_secs(30)))?;
        Ok(DockerApi { client, managers })
    }

    async fn services(&self) -> Result<Vec<Service>> {
        let mut last = String::new();
        for manager in &self.managers {
            match self
                .client
                .get(format!("https://{manager}/v1.41/services"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    return r
                        .json()
                        .await
                        .context("unexpected answer from the manager to GET /services");
                }
                Ok(r) => {
                    let status = r.status();
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let message = v["message"].as_str().unwrap_or("no reason given");
                    if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                        bail!("listing services: {message}");
                    }
                    last = format!("{manager}: {message}");
                }
                Err(e) => last = format!("{manager}: {e}"),
            }
        }
        bail!("no manager answered ({last}): check the cluster with `swarmup ls`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_stubs::models::{EndpointSpec, ServiceEndpoint, ServiceSpec};

    fn service(name: &str, asked: &[&str], allocated: Option<&[&str]>) -> Service {
        let parse = |v: &[&str]| -> Vec<EndpointPortConfig> {
            v.iter()
                .map(|p| crate::publish::parse(p).unwrap())
                .collect()
        };
        Service {
            id: Some(format!("id-{name}")),
            spec: Some(ServiceSpec {
                name: Some(name.into()),
                endpoint_spec: Some(EndpointSpec {
                    ports: Some(parse(asked)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            endpoint: allocated.map(|a| ServiceEndpoint {
                ports: Some(parse(a)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tcp(port: u16) -> PublishedPort {
        PublishedPort {
            port,
            protocol: PortProtocol::Tcp,
        }
    }

    #[test]
    fn every_published_port_counts_once_whatever_its_mode() {
        let services = [
            service("es", &["9200:9200"], Some(&["9200:9200"])),
            service(
                "dns",
                &["53:53/udp", "mode=host,published=9300,target=80"],
                Some(&["53:53/udp", "mode=host,published=9300,target=80"]),
            ),
            service("es2", &["9200:9200"], Some(&["9200:9200"])),
            service("quiet", &[], None),
        ];
        let p = published_ports(&services);
        assert_eq!(
            p.ports,
            [
                PublishedPort {
                    port: 53,
                    protocol: PortProtocol::Udp
                },
                tcp(9200),
                tcp(9300)
            ]
        );
        assert!(p.notes.is_empty() && p.pending.is_empty());
    }

    #[test]
    fn allocated_ports_win_and_unallocated_ones_are_waited_for() {
        // 80 asked without a number: the leader picked 30001.
        let done = service("web", &["80"], Some(&["30001:80"]));
        assert_eq!(published_ports(&[done]).ports, [tcp(30001)]);
        let waiting = service("web", &["80", "8080:8080"], None);
        let p = published_ports(&[waiting]);
        assert_eq!(p.pending, ["web"]);
        assert_eq!(p.ports, [tcp(8080)]);
        let numbered = service("web", &["8080:8080"], None);
        let p = published_ports(&[numbered]);
        assert!(p.pending.is_empty());
        assert_eq!(p.ports, [tcp(8080)]);
    }

    #[test]
    fn a_host_port_without_a_number_cannot_be_opened_and_says_so() {
        let s = service(
            "agent",
            &["mode=host,target=80"],
            Some(&["mode=host,target=80"]),
        );
        let p = published_ports(&[s]);
        assert!(p.ports.is_empty() && p.pending.is_empty());
        assert_eq!(p.notes.len(), 1);
        assert!(p.notes[0].contains("agent"), "{:?}", p.notes);
    }

    #[test]
    fn publish_from_takes_addresses_and_cidrs_only() {
        for ok in [
            "192.0.2.0/24",
            "203.0.113.7",
            "2001:db8::/48",
            "0.0.0.0/0",
            "::/0",
        ] {
            assert!(check_cidr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "192.0.2.0/33",
            "example.com",
            "10.0.0.0/",
            "1.2.3/8",
            "::/129",
            "",
        ] {
            let e = check_cidr(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid --publish-from") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn recorded_sources_are_read_back() {
        let mut r = ClusterRecord {
            name: "c".into(),
            provider: "digitalocean".into(),
            created_at: String::new(),
            machines: vec![],
            last_seen: vec![],
            provider_options: Default::default(),
            engine: Default::default(),
        };
        assert!(recorded_from(&r).is_empty());
        r.provider_options
            .insert(OPT_PUBLISH_FROM.into(), "192.0.2.0/24,2001:db8::/48".into());
        assert_eq!(recorded_from(&r), ["192.0.2.0/24", "2001:db8::/48"]);
    }
}
