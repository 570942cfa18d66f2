//! `--provider ssh`: machines the user already has, reached over SSH.
//!
//! The provider creates nothing and removes nothing: it turns the user's `--host` list
//! into [`Machine`] records (the first hosts are the managers), and refuses to power
//! machines it does not own. Reaching them (host keys, login, what swarmup installed and
//! removes again) is bootstrap's work, driven by the CLI: a provider never opens SSH.
//!
//! A host is written `[NAME=][USER@]HOST[:PORT]`: `root@10.0.0.5`, `node2.example.org`,
//! `web=deploy@192.0.2.7:2222`, `[2001:db8::5]:2222`. USER defaults to root (another
//! user needs passwordless sudo), PORT to 22. The machine is called `CLUSTER-NAME`, where
//! NAME defaults to the host's first DNS label (`node2`) or its address with dashes
//! (`10-0-0-5`, `10-0-0-5-2222` on another port than 22), so that `swarmup ssh CLUSTER node2` works and the SSH config aliases
//! never shadow the host's own name.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::{
    ClusterPlan, DestroyReport, DryRun, Machine, PowerState, Progress, Provider, ProviderError,
    Role, SshEndpoint,
};

/// The user swarmup logs in as when a host names none.
pub const DEFAULT_USER: &str = "root";
pub const DEFAULT_PORT: u16 = 22;

/// One `--host` as the user wrote it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// What the user wrote, for records and messages.
    pub written: String,
    /// `NAME=` when given.
    pub name: Option<String>,
    pub user: String,
    /// The host name or address, without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

const HOST_FORMAT: &str = "use [NAME=][USER@]HOST[:PORT], e.g. root@10.0.0.5, node2.example.org or web=deploy@[2001:db8::5]:2222";

impl HostSpec {
    /// Parses `[NAME=][USER@]HOST[:PORT]`.
    pub fn parse(written: &str) -> Result<HostSpec, ProviderError> {
        let bad = |why: &str| {
            ProviderError::InvalidRequest(format!(
                "invalid --host {written:?}: {why}; {HOST_FORMAT}"
            ))
        };
        let text = written.trim();
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (name, rest) = match text.split_once('=') {
            Some((n, r)) => {
                if !is_label(n) {
                    return Err(bad(&format!(
                        "the name {n:?} is not 1 to 40 lowercase letters, digits and '-'"
                    )));
                }
                (Some(n.to_string()), r)
            }
            None => (None, text),
        };
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => {
                let ok = !u.is_empty()
                    && u.len() <= 32
                    && u.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    && !u.starts_with('-');
                if !ok {
                    return Err(bad(&format!("the user {u:?} is not a login name")));
                }
                (u.to_string(), h)
            }
            None => (DEFAULT_USER.to_string(), rest),
        };
        let (host, port) = split_port(hostport).map_err(|why| bad(&why))?;
        let host_ok = host.parse::<IpAddr>().is_ok() || is_dns_name(&host);
        if !host_ok {
            return Err(bad(&format!(
                "{host:?} is neither an address nor a host name"
            )));
        }
        Ok(HostSpec {
            written: text.to_string(),
            name,
            user,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The part of the machine name after `CLUSTER-`.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if self.host.parse::<IpAddr>().is_ok() {
            let addr = self.host.replace(['.', ':'], "-");
            let addr = addr.trim_matches('-');
            // Machines behind one address (port forwards) differ by their port.
            return match self.port {
                DEFAULT_PORT => addr.to_string(),
                port => format!("{addr}-{port}"),
            };
        }
        self.host
            .split('.')
            .next()
            .unwrap_or(&self.host)
            .to_string()
    }

    /// `HOST` or `[HOST]:PORT`, the way OpenSSH's known_hosts names an endpoint.
    pub fn known_hosts_name(&self) -> String {
        known_hosts_name(&self.host, self.port)
    }
}

/// `HOST` for port 22, `[HOST]:PORT` otherwise (OpenSSH's known_hosts form).
pub fn known_hosts_name(host: &str, port: u16) -> String {
    if port == DEFAULT_PORT {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        // All digits and dots is a mistyped address, not a name.
        && !s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address.
fn split_port(s: &str) -> Result<(String, u16), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("the port {p:?} is not a number from 1 to 65535")),
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "a '[' without its ']'".to_string())?;
        return match after {
            "" => Ok((host.to_string(), DEFAULT_PORT)),
            a => match a.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), port(p)?)),
                None => Err(format!("{a:?} after ']' is not :PORT")),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s.to_string(), DEFAULT_PORT)),
        1 => {
            let (h, p) = s.split_once(':').expect("one colon");
            Ok((h.to_string(), port(p)?))
        }
        // More colons: an IPv6 address without a port.
        _ => Ok((s.to_string(), DEFAULT_PORT)),
    }
}

/// Parses every `--host` and refuses what would make two machines of one: the same
/// endpoint twice, or two hosts that would get the same machine name.
pub fn parse_hosts(written: &[String], cluster: &str) -> Result<Vec<HostSpec>, ProviderError> {
    if written.is_empty() {
        return Err(ProviderError::InvalidRequest(
            "--provider ssh needs the machines: --host [USER@]HOST[:PORT] for each (repeat the flag), or hosts: in the cluster file".into(),
        ));
    }
    let specs = written
        .iter()
        .map(|w| HostSpec::parse(w))
        .collect::<Result<Vec<_>, _>>()?;
    let mut endpoints = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for s in &specs {
        if !endpoints.insert((s.host.clone(), s.port)) {
            return Err(ProviderError::InvalidRequest(format!(
                "--host {} is given twice: list each machine once",
                s.known_hosts_name()
            )));
        }
        let label = s.label();
        if !labels.insert(label.clone()) {
            return Err(ProviderError::InvalidRequest(format!(
                "two hosts would both be machine {cluster}-{label}: name them, e.g. --host {label}2={}",
                s.written.split_once('=').map_or(s.written.as_str(), |(_, r)| r)
            )));
        }
    }
    Ok(specs)
}

/// One host with its address and the machine it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// `CLUSTER-LABEL`.
    pub machine: String,
    pub role: Role,
    pub spec: HostSpec,
    /// The address swarmup connects to and the swarm advertises.
    pub addr: IpAddr,
}

impl SshHost {
    pub fn to_machine(&self) -> Machine {
        Machine {
            name: self.machine.clone(),
            role: self.role,
            provider_id: self.spec.written.clone(),
            private_addr: self.addr,
            ssh: SshEndpoint {
                host: self.addr,
                port: self.spec.port,
                user: self.spec.user.clone(),
            },
            power: PowerState::Running,
        }
    }
}

/// Each host with its address; refuses two hosts that are one machine (a name and its
/// address, say).
pub fn resolve_all(
    specs: &[HostSpec],
    resolve: impl Fn(&HostSpec) -> Result<IpAddr, ProviderError>,
) -> Result<Vec<(HostSpec, IpAddr)>, ProviderError> {
    let mut out: Vec<(HostSpec, IpAddr)> = Vec::with_capacity(specs.len());
    for spec in specs {
        let addr = resolve(spec)?;
        let endpoint = SocketAddr::new(addr, spec.port);
        if let Some((other, _)) = out
            .iter()
            .find(|(o, a)| SocketAddr::new(*a, o.port) == endpoint)
        {
            return Err(ProviderError::InvalidRequest(format!(
                "--host {} and --host {} are the same machine ({endpoint}): list it once",
                spec.written, other.written
            )));
        }
        out.push((spec.clone(), addr));
    }
    Ok(out)
}

/// The machines of `specs`, the first `managers` of them managers, in the given order.
pub fn plan_hosts(
    specs: &[HostSpec],
    cluster: &str,
    managers: usize,
    resolve: impl Fn(&HostSpec) -> Result<IpAddr, ProviderError>,
) -> Result<Vec<SshHost>, ProviderError> {
    Ok(resolve_all(specs, resolve)?
        .into_iter()
        .enumerate()
        .map(|(i, (spec, addr))| SshHost {
            machine: format!("{cluster}-{}", spec.label()),
            role: if i < managers {
                Role::Manager
            } else {
                Role::Worker
            },
            spec,
            addr,
        })
        .collect())
}

/// The host's address: itself, or the first address the resolver gives for its name.
pub fn resolve(spec: &HostSpec) -> Result<IpAddr, ProviderError> {
    if let Ok(ip) = spec.host.parse() {
        return Ok(ip);
    }
    let mut addrs = (spec.host.as_str(), spec.port)
        .to_socket_addrs()
        .map_err(|e| {
            ProviderError::InvalidRequest(format!(
                "cannot resolve --host {}: {e}; give its address instead",
                spec.written
            ))
        })?
        .collect::<Vec<_>>();
    // IPv4 first: it is what most private networks between machines use.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.first().map(|a| a.ip()).ok_or_else(|| {
        ProviderError::InvalidRequest(format!(
            "--host {} resolves to no address: give its address instead",
            spec.written
        ))
    })
}

/// The provider of machines that exist already.
#[derive(Debug, Clone, Default)]
pub struct SshProvider {
    hosts: Vec<(HostSpec, IpAddr)>,
}

impl SshProvider {
    /// The hosts of a `create`, with their addresses ([`resolve_all`]); none for the
    /// other verbs, which read the cluster's record.
    pub fn new(hosts: Vec<(HostSpec, IpAddr)>) -> Self {
        SshProvider { hosts }
    }

    /// The host that becomes `machine` (`CLUSTER-LABEL`).
    fn host(&self, cluster: &str, machine: &str) -> Option<SshHost> {
        self.hosts
            .iter()
            .find(|(s, _)| format!("{cluster}-{}", s.label()) == machine)
            .map(|(spec, addr)| SshHost {
                machine: machine.to_string(),
                role: Role::Worker,
                spec: spec.clone(),
                addr: *addr,
            })
    }

    fn not_owned(cluster: &str, verb: &str) -> ProviderError {
        ProviderError::InvalidRequest(format!(
            "cluster {cluster} runs on machines swarmup does not own (--provider ssh): it cannot {verb} them; use the machine's own console, or `swarmup ssh {cluster} NODE -- systemctl stop swarm-node` to take a node out"
        ))
    }
}

#[async_trait::async_trait]
impl Provider for SshProvider {
    fn name(&self) -> &'static str {
        "ssh"
    }

    async fn preflight(&self, plan: &ClusterPlan) -> Result<(), ProviderError> {
        for m in &plan.machines {
            if self.host(&plan.cluster, &m.name).is_none() {
                return Err(ProviderError::InvalidRequest(format!(
                    "machine {} of cluster {} has no --host: list every machine of the cluster",
                    m.name, plan.cluster
                )));
            }
        }
        Ok(())
    }

    async fn create(
        &self,
        plan: &ClusterPlan,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        self.preflight(plan).await?;
        Ok(plan
            .machines
            .iter()
            .filter_map(|m| {
                let mut h = self.host(&plan.cluster, &m.name)?;
                h.role = m.role;
                progress.machine(
                    &h.machine,
                    &format!("existing machine {} ({})", h.spec.written, h.addr),
                );
                Some(h.to_machine())
            })
            .collect())
    }

    /// The provider keeps nothing of its own: the CLI falls back to the cluster's record.
    async fn list(&self, _cluster: &str) -> Result<Vec<Machine>, ProviderError> {
        Ok(Vec::new())
    }

    async fn clusters(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// Nothing of the provider's own to remove: the machines stay, and what swarmup
    /// installed on them is removed over SSH before this is called.
    async fn destroy(&self, _cluster: &str) -> Result<DestroyReport, ProviderError> {
        Ok(DestroyReport::default())
    }

    async fn power_off(&self, cluster: &str, _machine: &str) -> Result<(), ProviderError> {
        Err(Self::not_owned(cluster, "power off"))
    }

    async fn power_on(&self, cluster: &str, _machine: &str) -> Result<Machine, ProviderError> {
        Err(Self::not_owned(cluster, "power on"))
    }

    async fn rollback_run(
        &self,
        cluster: &str,
        _new_cluster: bool,
    ) -> Result<DestroyReport, ProviderError> {
        Err(ProviderError::InvalidRequest(format!(
            "the ssh provider made no machines to roll back: `swarmup destroy {cluster}` removes what swarmup installed on them"
        )))
    }

    async fn dry_run(&self, plan: &ClusterPlan) -> Result<DryRun, ProviderError> {
        let mut shown = DryRun::plain("your machines (ssh)", plan);
        shown.columns = vec!["HOST".into(), "ADDRESS".into()];
        for m in &mut shown.machines {
            if let Some(h) = self.host(&plan.cluster, &m.name) {
                let endpoint = format!("{}@{}", h.spec.user, h.spec.known_hosts_name());
                let address = h.addr.to_string();
                m.json
                    .insert("host".into(), serde_json::json!(h.spec.written));
                m.json.insert("address".into(), serde_json::json!(address));
                m.cells = vec![endpoint, address];
            }
        }
        shown.details = vec![(
            "machines".into(),
            "kept: swarmup installs Docker if missing, swarm-node and a firewall".into(),
        )];
        Ok(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> HostSpec {
        HostSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn hosts_are_name_user_host_and_port() {
        let h = spec("root@10.0.0.5");
        assert_eq!(
            (h.name.as_deref(), h.user.as_str(), h.host.as_str(), h.port),
            (None, "root", "10.0.0.5", 22)
        );
        assert_eq!(h.label(), "10-0-0-5");
        let h = spec("node2.Example.org");
        assert_eq!(
            (h.user.as_str(), h.host.as_str()),
            ("root", "node2.example.org")
        );
        assert_eq!(h.label(), "node2");
        let h = spec("web=deploy@192.0.2.7:2222");
        assert_eq!(
            (h.name.as_deref(), h.user.as_str(), h.port),
            (Some("web"), "deploy", 2222)
        );
        assert_eq!(h.label(), "web");
        assert_eq!(h.known_hosts_name(), "[192.0.2.7]:2222");
        assert_eq!(spec("192.0.2.7:2222").label(), "192-0-2-7-2222");
        let h = spec("[2001:db8::5]:2200");
        assert_eq!((h.host.as_str(), h.port), ("2001:db8::5", 2200));
        assert_eq!(h.label(), "2001-db8--5-2200");
        let h = spec("2001:db8::5");
        assert_eq!((h.host.as_str(), h.port), ("2001:db8::5", 22));
        assert_eq!(h.known_hosts_name(), "2001:db8::5");
    }

    #[test]
    fn malformed_hosts_are_refused_in_one_line() {
        for (bad, why) in [
            ("", "empty"),
            ("@10.0.0.5", "not a login name"),
            ("r oot@10.0.0.5", "not a login name"),
            ("10.0.0.5:0", "port"),
            ("10.0.0.5:ssh", "port"),
            ("10.0.0.500", "neither an address"),
            ("host_1", "neither an address"),
            ("Web=10.0.0.5", "the name"),
            ("[2001:db8::5", "without its ']'"),
            ("[2001:db8::5]x", "not :PORT"),
        ] {
            let err = HostSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("[NAME=][USER@]HOST[:PORT]"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn no_duplicate_endpoints_or_names() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = parse_hosts(&[], "c").unwrap_err().to_string();
        assert!(err.contains("needs the machines: --host"), "{err}");
        let err = parse_hosts(&list(&["10.0.0.5", "admin@10.0.0.5"]), "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--host 10.0.0.5 is given twice"), "{err}");
        assert!(parse_hosts(&list(&["10.0.0.5", "10.0.0.5:2222"]), "c").is_ok());
        let err = parse_hosts(&list(&["a.one.org", "a.two.org"]), "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("both be machine c-a"), "{err}");
        assert!(parse_hosts(&list(&["a.one.org", "b=a.two.org"]), "c").is_ok());
    }

    #[test]
    fn the_first_hosts_are_managers_and_one_address_is_one_machine() {
        let specs = parse_hosts(
            &[
                "10.0.0.5".into(),
                "n2.example.org".into(),
                "w=10.0.0.7".into(),
            ],
            "prod",
        )
        .unwrap();
        let fake = |s: &HostSpec| -> Result<IpAddr, ProviderError> {
            Ok(match s.host.as_str() {
                "n2.example.org" => "10.0.0.6".parse().unwrap(),
                other => other.parse().unwrap(),
            })
        };
        let hosts = plan_hosts(&specs, "prod", 1, fake).unwrap();
        let names: Vec<_> = hosts.iter().map(|h| h.machine.as_str()).collect();
        assert_eq!(names, ["prod-10-0-0-5", "prod-n2", "prod-w"]);
        assert_eq!(hosts[0].role, Role::Manager);
        assert_eq!(hosts[1].role, Role::Worker);
        let m = hosts[1].to_machine();
        assert_eq!(m.ssh.host.to_string(), "10.0.0.6");
        assert_eq!(m.private_addr, m.ssh.host);
        assert_eq!(m.provider_id, "n2.example.org");

        let specs = parse_hosts(&["10.0.0.6".into(), "n2.example.org".into()], "prod").unwrap();
        let err = plan_hosts(&specs, "prod", 1, fake).unwrap_err().to_string();
        assert!(err.contains("are the same machine (10.0.0.6:22)"), "{err}");
    }

    #[tokio::test]
    async fn machines_it_does_not_own_are_not_powered() {
        let p = SshProvider::default();
        let err = p
            .power_off("prod", "prod-n1")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not own"), "{err}");
        assert!(p.power_on("prod", "prod-n1").await.is_err());
        assert!(p.destroy("prod").await.unwrap().removed.is_empty());
        assert!(p.list("prod").await.unwrap().is_empty());
    }
}
