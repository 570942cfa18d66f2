//! Cluster commands (`swarmup node ls`, `swarmup service …`): the Docker Engine API of the
//! cluster's managers over mutual TLS, with the client certificate `create` stored, and
//! Docker's table layouts. A cluster on Docker's own swarm mode (`--engine docker`) is
//! reached over SSH instead, through `docker system dial-stdio` on a manager: the path
//! the docker CLI takes for `DOCKER_HOST=ssh://NODE`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bollard_stubs::models::{
    EndpointSpec, Node, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task,
    TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecRestartPolicy,
};
use swarmup_bootstrap::docker_swarm::{self, Engine};
use swarmup_bootstrap::{Connector, RemoteShell, SshConnector};
use swarmup_providers::{Machine, PowerState, Role};

use crate::commands::pick_cluster;
use crate::output::{table, Output};
use crate::{NodeCommand, ServiceCommand};

/// A Docker API client for one cluster, trying its managers in turn.
struct ClusterApi {
    client: reqwest::Client,
    managers: Vec<String>,
    /// Docker's own swarm mode: the managers over SSH instead of `managers`.
    ssh: Option<SshManagers>,
}

/// The managers of a cluster on Docker's own swarm mode, reached over SSH; a connection
/// is opened on first use and kept for the command's other calls.
struct SshManagers {
    connector: SshConnector,
    machines: Vec<Machine>,
    open: tokio::sync::Mutex<Option<std::sync::Arc<dyn RemoteShell>>>,
}

impl SshManagers {
    async fn call(
        &self,
        method: &reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let mut open = self.open.lock().await;
        let mut last = String::new();
        if let Some(shell) = open.as_ref() {
            match docker_swarm::docker_api(
                &**shell,
                method.as_str(),
                &format!("/v1.41{path}"),
                body.as_deref(),
                Duration::from_secs(30),
            )
            .await
            {
                Ok((status, text)) => return Ok((status, json_of(&text))),
                Err(e) => last = e,
            }
        }
        for m in &self.machines {
            let shell = match self.connector.connect(m, Duration::from_secs(20)).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("{}: {e}", m.name);
                    continue;
                }
            };
            match docker_swarm::docker_api(
                &*shell,
                method.as_str(),
                &format!("/v1.41{path}"),
                body.as_deref(),
                Duration::from_secs(30),
            )
            .await
            {
                Ok((status, text)) => {
                    *open = Some(shell);
                    return Ok((status, json_of(&text)));
                }
                Err(e) => {
                    last = e;
                    shell.close().await;
                }
            }
        }
        bail!("no manager answered over SSH ({last}): check the cluster with `swarmup ls`")
    }
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

impl ClusterApi {
    async fn open(cluster: Option<&str>) -> Result<ClusterApi> {
        let (dir, record) = pick_cluster(cluster)?;
        let machines = crate::commands::cluster_machines(&record).await?;
        if record.engine == Engine::Docker {
            // Running managers first; the others in case the record's power is stale.
            let mut managers: Vec<Machine> = machines
                .iter()
                .filter(|m| m.role == Role::Manager)
                .cloned()
                .collect();
            managers.sort_by_key(|m| m.power != PowerState::Running);
            if managers.is_empty() {
                bail!("cluster {} has no manager to ask", record.name);
            }
            return Ok(ClusterApi {
                client: reqwest::Client::new(),
                managers: Vec::new(),
                ssh: Some(SshManagers {
                    connector: SshConnector::new(crate::commands::ssh_options(&dir)),
                    machines: managers,
                    open: tokio::sync::Mutex::new(None),
                }),
            });
        }
        crate::client_cert::refresh_and_tell(&dir, &machines).await?;
        let client = crate::client_cert::tls_client(&dir, None)?;
        let mut managers: Vec<String> = machines
            .iter()
            .filter(|m| m.role == Role::Manager && m.power == PowerState::Running)
            .map(|m| {
                std::net::SocketAddr::new(m.ssh.host, swarmup_providers::CONTROL_PORT).to_string()
            })
            .collect();
        if managers.is_empty() {
            managers = machines
                .iter()
                .filter(|m| m.role == Role::Manager)
                .map(|m| {
                    std::net::SocketAddr::new(m.ssh.host, swarmup_providers::CONTROL_PORT)
                        .to_string()
                })
                .collect();
        }
        if managers.is_empty() {
            bail!("cluster {} has no manager to ask", record.name);
        }
        Ok(ClusterApi {
            client,
            managers,
            ssh: None,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        if let Some(ssh) = &self.ssh {
            let (status, value) = ssh.call(&method, path, body.as_ref()).await?;
            if (200..300).contains(&status) {
                return Ok(value);
            }
            bail!("{}", value["message"].as_str().unwrap_or("no reason given"));
        }
        let mut last = String::new();
        for manager in &self.managers {
            let mut request = self
                .client
                .request(method.clone(), format!("https://{manager}/v1.41{path}"))
                .timeout(Duration::from_secs(30));
            if let Some(b) = &body {
                request = request.json(b);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let bytes = response.bytes().await?;
                    let value: serde_json::Value =
                        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                    if status.is_success() {
                        return Ok(value);
                    }
                    let message = value["message"].as_str().unwrap_or("no reason given");
                    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                        last = format!("{manager}: {message}");
                        continue;
                    }
                    bail!("{message}");
                }
                Err(e) => last = format!("{manager}: {e}"),
            }
        }
        bail!("no manager answered ({last}): check the cluster with `swarmup ls`")
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let v = self.call(reqwest::Method::GET, path, None).await?;
        serde_json::from_value(v).context("unexpected answer from the manager")
    }
}

fn short(id: &str, n: usize) -> String {
    id.chars().take(n).collect()
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// What the cluster itself says of its nodes: (nodes, managers, ready), for `swarmup ls`.
pub async fn node_counts(cluster: &str) -> Result<(usize, usize, usize)> {
    let api = ClusterApi::open(Some(cluster)).await?;
    let nodes: Vec<Node> = tokio::time::timeout(Duration::from_secs(5), api.get("/nodes"))
        .await
        .context("the cluster did not answer in time")??;
    let managers = nodes.iter().filter(|n| n.manager_status.is_some()).count();
    let ready = nodes
        .iter()
        .filter(|n| {
            n.status.as_ref().and_then(|s| s.state) == Some(bollard_stubs::models::NodeState::READY)
        })
        .count();
    Ok((nodes.len(), managers, ready))
}

/// What the cluster itself says for `workshop status`: (nodes, ready, services).
pub async fn cluster_summary(cluster: &str) -> Result<(usize, usize, usize)> {
    let (nodes, ready_nodes, api) = {
        let api = ClusterApi::open(Some(cluster)).await?;
        let nodes: Vec<Node> = tokio::time::timeout(Duration::from_secs(5), api.get("/nodes"))
            .await
            .context("the cluster did not answer in time")??;
        let ready = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().and_then(|s| s.state)
                    == Some(bollard_stubs::models::NodeState::READY)
            })
            .count();
        (nodes.len(), ready, api)
    };
    let services: Vec<Service> = tokio::time::timeout(Duration::from_secs(5), api.get("/services"))
        .await
        .context("the cluster did not answer in time")??;
    Ok((nodes, ready_nodes, services.len()))
}

pub async fn node(out: &Output, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls { sel } => {
            let api = ClusterApi::open(sel.cluster.as_deref()).await?;
            let nodes: Vec<Node> = api.get("/nodes").await?;
            if out.json() {
                println!("{}", serde_json::to_string(&nodes)?);
                return Ok(());
            }
            if out.quiet {
                // As `docker node ls -q`: the full ids, one per line.
                for n in &nodes {
                    println!("{}", n.id.as_deref().unwrap_or_default());
                }
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let manager_status = match &n.manager_status {
                        Some(m) if m.leader == Some(true) => "Leader".to_string(),
                        Some(m) => m
                            .reachability
                            .map(|r| title(&r.to_string()))
                            .unwrap_or_default(),
                        None => String::new(),
                    };
                    vec![
                        n.id.clone().unwrap_or_default(),
                        n.description
                            .as_ref()
                            .and_then(|d| d.hostname.clone())
                            .unwrap_or_default(),
                        n.status
                            .as_ref()
                            .and_then(|s| s.state)
                            .map(|s| title(&s.to_string()))
                            .unwrap_or_default(),
                        n.spec
                            .as_ref()
                            .and_then(|s| s.availability)
                            .map(|a| title(a.as_ref()))
                            .unwrap_or_default(),
                        manager_status,
                        n.description
                            .as_ref()
                            .and_then(|d| d.engine.as_ref())
                            .and_then(|e| e.engine_version.clone())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            rows.sort_by(|a, b| a[1].cmp(&b[1]));
            println!(
                "{}",
                table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATUS",
                        "AVAILABILITY",
                        "MANAGER STATUS",
                        "ENGINE VERSION"
                    ],
                    &rows
                )
            );
            Ok(())
        }
    }
}

/// `5s`, `500ms`, `1m` as nanoseconds, for Docker's duration fields.
fn duration_ns(s: &str) -> Result<i64> {
    let err =
        || anyhow::anyhow!("invalid duration {s:?}: use a number with a unit, for example 5s");
    let i = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(err)?;
    let (n, unit) = s.split_at(i);
    let v: f64 = n.parse().map_err(|_| err())?;
    let factor = match unit {
        "ns" => 1.0,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return Err(err()),
    };
    Ok((v * factor) as i64)
}

fn service_name(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_default()
}

pub async fn service(out: &Output, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Create {
            sel,
            name,
            replicas,
            mode,
            env,
            constraint,
            restart_delay,
            publish,
            image,
            args,
        } => {
            let ports = publish
                .iter()
                .map(|p| crate::publish::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let mode = match mode.as_str() {
                "replicated" => ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(replicas),
                    }),
                    ..Default::default()
                },
                "global" => ServiceSpecMode {
                    global: Some(HashMap::new()),
                    ..Default::default()
                },
                other => bail!("invalid --mode {other}: use replicated or global"),
            };
            let spec = ServiceSpec {
                name,
                mode: Some(mode),
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        image: Some(image),
                        args: (!args.is_empty()).then_some(args),
                        env: (!env.is_empty()).then_some(env),
                        ..Default::default()
                    }),
                    placement: (!constraint.is_empty()).then(|| TaskSpecPlacement {
                        constraints: Some(constraint),
                        ..Default::default()
                    }),
                    restart_policy: restart_delay
                        .map(|d| -> Result<_> {
                            Ok(TaskSpecRestartPolicy {
                                delay: Some(duration_ns(&d)?),
                                ..Default::default()
                            })
                        })
                        .transpose()?,
                    ..Default::default()
                }),
                endpoint_spec: (!ports.is_empty()).then(|| EndpointSpec {
                    ports: Some(ports),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let api = ClusterApi::open(sel.cluster.as_deref()).await?;
            let created = api
                .call(
                    reqwest::Method::POST,
                    "/services/create",
                    Some(serde_json::to_value(&spec)?),
                )
                .await?;
            let id = created["ID"].as_str().unwrap_or_default();
            if out.json() {
                println!("{created}");
            } else {
                println!("{id}");
            }
            Ok(())
        }
        ServiceCommand::Ls { sel } => {
            let api = ClusterApi::open(sel.cluster.as_deref()).await?;
            let services: Vec<Service> = api.get("/services?status=true").await?;
            if out.json() {
                println!("{}", serde_json::to_string(&services)?);
                return Ok(());
            }
            if out.quiet {
                for s in &services {
                    println!("{}", s.id.as_deref().unwrap_or_default());
                }
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    let global = s
                        .spec
                        .as_ref()
                        .and_then(|s| s.mode.as_ref())
                        .is_some_and(|m| m.global.is_some());
                    let st = s.service_status.clone().unwrap_or_default();
                    vec![
                        short(s.id.as_deref().unwrap_or_default(), 12),
                        service_name(s),
                        if global { "global" } else { "replicated" }.to_string(),
                        format!(
                            "{}/{}",
                            st.running_tasks.unwrap_or(0),
                            st.desired_tasks.unwrap_or(0)
                        ),
                        s.spec
                            .as_ref()
                            .and_then(|s| s.task_template.as_ref())
                            .and_then(|t| t.container_spec.as_ref())
                            .and_then(|c| c.image.clone())
                            .unwrap_or_default(),
                        crate::publish::ports_column(
                            s.endpoint
                                .as_ref()
                                .and_then(|e| e.ports.as_deref())
                                .unwrap_or_default(),
                        ),
                    ]
                })
                .collect();
            rows.sort_by(|a, b| a[1].cmp(&b[1]));
            println!(
                "{}",
                table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
            );
            Ok(())
        }
        ServiceCommand::Ps { sel, services } => {
            if services.is_empty() {
                bail!("name at least one service: swarmup service ps SERVICE");
            }
            let api = ClusterApi::open(sel.cluster.as_deref()).await?;
            let nodes: Vec<Node> = api.get("/nodes").await?;
            let hostnames: HashMap<String, String> = nodes
                .iter()
                .map(|n| {
                    (
                        n.id.clone().unwrap_or_default(),
                        n.description
                            .as_ref()
                            .and_then(|d| d.hostname.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            let mut rows = Vec::new();
            let mut all_tasks = Vec::new();
            for key in &services {
                let service: Service = api.get(&format!("/services/{key}")).await?;
                let id = service.id.clone().unwrap_or_default();
                let filter = serde_json::json!({"service": {id.clone(): true}}).to_string();
                let mut tasks: Vec<Task> = api
                    .get(&format!("/tasks?filters={}", urlencode(&filter)))
                    .await?;
                tasks.sort_by(|a, b| {
                    (a.slot, b.created_at.clone()).cmp(&(b.slot, a.created_at.clone()))
                });
                let mut last_slot = None;
                for t in &tasks {
                    let first_of_slot = last_slot != Some(t.slot);
                    last_slot = Some(t.slot);
                    let status = t.status.clone().unwrap_or_default();
                    rows.push(vec![
                        short(t.id.as_deref().unwrap_or_default(), 12),
                        format!(
                            "{}{}.{}",
                            if first_of_slot { "" } else { " \\_ " },
                            service_name(&service),
                            t.slot.map(|s| s.to_string()).unwrap_or_else(|| short(
                                t.node_id.as_deref().unwrap_or_default(),
                                12
                            ))
                        ),
                        t.spec
                            .as_ref()
                            .and_then(|s| s.container_spec.as_ref())
                            .and_then(|c| c.image.clone())
                            .unwrap_or_default(),
                        t.node_id
                            .as_ref()
                            .and_then(|n| hostnames.get(n).cloned())
                            .unwrap_or_default(),
                        t.desired_state
                            .map(|s| title(&s.to_string()))
                            .unwrap_or_default(),
                        status
                            .state
                            .map(|s| title(&s.to_string()))
                            .unwrap_or_default(),
                        status.err.unwrap_or_default(),
                    ]);
                }
                all_tasks.extend(tasks);
            }
            if out.json() {
                println!("{}", serde_json::to_string(&all_tasks)?);
            } else if out.quiet {
                for t in &all_tasks {
                    println!("{}", t.id.as_deref().unwrap_or_default());
                }
            } else {
                println!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "NAME",
                            "IMAGE",
                            "NODE",
                            "DESIRED STATE",
                            "CURRENT STATE",
                            "ERROR"
                        ],
                        &rows
                    )
                );
            }
            Ok(())
        }
        ServiceCommand::Rm { sel, services } => {
            if services.is_empty() {
                bail!("name at least one service: swarmup service rm SERVICE");
            }
            let api = ClusterApi::open(sel.cluster.as_deref()).await?;
            for s in &services {
                api.call(reqwest::Method::DELETE, &format!("/services/{s}"), None)
                    .await?;
                out.say(s);
            }
            if out.json() {
                println!("{}", serde_json::json!({ "removed": services }));
            }
            Ok(())
        }
        ServiceCommand::Scale { sel, scales } => {
            if scales.is_empty() {
                bail!("say what to scale: swarmup service scale SERVICE=REPLICAS");
            }
            let mut wanted = Vec::new();
            for s in &scales {
                let (name, n) = s.split_once('=').with_context(|| {
                    format!("invalid scale {s:?}: use SERVICE=REPLICAS, for example web=5")
                })?;
                let n: i64 = n.parse().ok().filter(|n| *n >= 0).with_context(|| {
                    format!("invalid replica count in {s:?}: use a number of 0 or more")
                })?;
                wanted.push((name.to_string(), n));
            }
            let api = ClusterApi::open(sel.cluster.as_deref()).await?;
            let mut scaled = serde_json::Map::new();
            for (name, n) in wanted {
                let service: Service = api.get(&format!("/services/{name}")).await?;
                let mut spec = service.spec.clone().unwrap_or_default();
                if spec.mode.as_ref().is_some_and(|m| m.global.is_some()) {
                    bail!("{name}: scale can only be used with replicated mode");
                }
                spec.mode = Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated { replicas: Some(n) }),
                    ..Default::default()
                });
                let version = service.version.as_ref().and_then(|v| v.index).unwrap_or(0);
                let id = service.id.clone().unwrap_or_default();
                api.call(
                    reqwest::Method::POST,
                    &format!("/services/{id}/update?version={version}"),
                    Some(serde_json::to_value(&spec)?),
                )
                .await?;
                out.say(&format!("{name} scaled to {n}"));
                scaled.insert(name, n.into());
            }
            if out.json() {
                println!("{}", serde_json::json!({ "scaled": scaled }));
            }
            Ok(())
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(duration_ns("5s").unwrap(), 5_000_000_000);
        assert_eq!(duration_ns("250ms").unwrap(), 250_000_000);
        assert!(duration_ns("5").is_err());
        assert!(duration_ns("fast").is_err());
    }

    #[test]
    fn filters_are_url_encoded() {
        assert_eq!(urlencode(r#"{"a":1}"#), "%7B%22a%22%3A1%7D");
    }
}
