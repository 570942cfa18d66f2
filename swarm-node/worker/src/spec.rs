//! From a swarm task to a Docker container: the name, the labels and the create request,
//! following what Docker's own swarm executor does so that `docker ps` on a node looks
//! the same as under Docker Swarm.

use std::collections::HashMap;
use std::time::Duration;

use swarm_state::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointPortConfig, EndpointPortConfigProtocolEnum,
    EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkAttachmentConfig,
    NetworkingConfig, PortBinding, Task, TaskSpecContainerSpecIsolationEnum,
    TaskSpecContainerSpecPrivileges, TaskSpecContainerSpecPrivilegesAppArmorModeEnum,
    TaskSpecContainerSpecPrivilegesSeccompModeEnum,
};

use crate::runtime::{labels, ContainerSpec, TaskNetwork};

/// Docker's default stop grace period for services.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a task cannot be turned into a container. The message becomes the task's error
/// when it is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("task has no id")]
    NoTaskId,
    #[error("task {0} has no container spec: only container tasks can run on this node")]
    NoContainerSpec(String),
    #[error("task {0} has no image in its container spec")]
    NoImage(String),
    #[error("task {task}: {what} is for Windows containers; this node runs Linux containers")]
    WindowsOnly { task: String, what: String },
    #[error(
        "task {task}: unsupported mount type {kind} for target {target}: use bind, volume or tmpfs"
    )]
    UnsupportedMount {
        task: String,
        kind: String,
        target: String,
    },
}

/// The names of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNaming {
    pub task_id: String,
    pub service_id: String,
    pub service_name: String,
    /// The replica slot, or the node id for tasks of global services (they have no slot).
    pub slot: String,
}

impl TaskNaming {
    /// The container name and the value of the `com.docker.swarm.task.name` label:
    /// `SERVICE.SLOT.TASKID`, exactly as Docker Swarm names task containers.
    pub fn container_name(&self) -> String {
        format!("{}.{}.{}", self.service_name, self.slot, self.task_id)
    }

    /// The short name `docker service ps` shows: `SERVICE.SLOT`.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.service_name, self.slot)
    }
}

/// Derives a task's names. Every assumption about where names come from lives here:
///
/// - SERVICE is the `com.docker.swarm.service.name` entry of the task's `Labels`, which
///   the managers set when they create the task; without it, the `ServiceID`.
/// - SLOT is `Slot` when it is positive, else the task's `NodeID` (global services), as
///   Docker's naming does.
/// - The task's own `Name` field is ignored: the container name must contain the task id
///   so that a new task of the same slot never collides with the old task's container.
pub fn task_naming(task: &Task) -> TaskNaming {
    let task_id = task.id.clone().unwrap_or_default();
    let service_id = task.service_id.clone().unwrap_or_default();
    let service_name = task
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::SERVICE_NAME))
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| service_id.clone());
    let slot = match task.slot {
        Some(slot) if slot > 0 => slot.to_string(),
        _ => task.node_id.clone().unwrap_or_else(|| "0".into()),
    };
    TaskNaming {
        task_id,
        service_id,
        service_name,
        slot,
    }
}

/// The grace period between the stop signal and the kill: `StopGracePeriod`
/// (nanoseconds) of the container spec, 10 s when unset.
pub fn stop_grace(task: &Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.stop_grace_period)
        .map(|ns| Duration::from_nanos(ns.max(0) as u64))
        .unwrap_or(DEFAULT_STOP_GRACE)
}

/// The image a task runs, if its spec names one.
pub fn task_image(task: &Task) -> Option<&str> {
    task.spec
        .as_ref()?
        .container_spec
        .as_ref()?
        .image
        .as_deref()
        .filter(|i| !i.is_empty())
}

/// Builds the container create request for a task.
///
/// Labels are layered as Docker does: the spec's labels, then the task's labels, then the
/// swarm system labels, each overriding the previous. `Command` replaces the image's
/// entrypoint and `Args` its command; `Args` alone keeps the entrypoint. Secrets and
/// configs are added later, by the executor, as bind mounts of files it has just written
/// (see [`crate::taskfiles`]); templates are expanded there too. The container joins the
/// engine's default network; [`attach`] puts it on its overlays instead.
pub fn container_spec(task: &Task) -> Result<ContainerSpec, SpecError> {
    let naming = task_naming(task);
    if naming.task_id.is_empty() {
        return Err(SpecError::NoTaskId);
    }
    let spec = task.spec.as_ref();
    let cs = spec
        .and_then(|s| s.container_spec.as_ref())
        .ok_or_else(|| SpecError::NoContainerSpec(naming.task_id.clone()))?;
    let image = task_image(task)
        .ok_or_else(|| SpecError::NoImage(naming.task_id.clone()))?
        .to_string();

    let mut container_labels: HashMap<String, String> = HashMap::new();
    container_labels.extend(cs.labels.clone().unwrap_or_default());
    container_labels.extend(task.labels.clone().unwrap_or_default());
    let system = [
        (labels::TASK, String::new()),
        (labels::TASK_ID, naming.task_id.clone()),
        (labels::TASK_NAME, naming.container_name()),
        (labels::NODE_ID, task.node_id.clone().unwrap_or_default()),
        (labels::SERVICE_ID, naming.service_id.clone()),
        (labels::SERVICE_NAME, naming.service_name.clone()),
    ];
    for (k, v) in system {
        container_labels.insert(k.to_string(), v);
    }

    let (entrypoint, cmd) = match (non_empty(&cs.command), non_empty(&cs.args)) {
        (Some(command), args) => (Some(command), Some(args.unwrap_or_default())),
        (None, Some(args)) => (None, Some(args)),
        (None, None) => (None, None),
    };

    let mounts = match &cs.mounts {
        Some(mounts) => Some(
            mounts
                .iter()
                .map(|m| check_mount(&naming.task_id, m))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };

    let limits = spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let grace = stop_grace(task);

    let windows_only = |what: &str| SpecError::WindowsOnly {
        task: naming.task_id.clone(),
        what: what.to_string(),
    };
    if matches!(
        cs.isolation,
        Some(TaskSpecContainerSpecIsolationEnum::PROCESS)
            | Some(TaskSpecContainerSpecIsolationEnum::HYPERV)
    ) {
        return Err(windows_only("isolation process or hyperv"));
    }
    if cs
        .privileges
        .as_ref()
        .and_then(|p| p.credential_spec.as_ref())
        .is_some_and(|c| c != &Default::default())
    {
        return Err(windows_only("a credential spec"));
    }
    let dns = cs.dns_config.as_ref();
    let log_config = spec.and_then(|s| s.log_driver.as_ref()).and_then(|d| {
        d.name
            .as_ref()
            .filter(|n| !n.is_empty())
            .map(|name| HostConfigLogConfig {
                typ: Some(name.clone()),
                config: d.options.clone(),
            })
    });

    let host_config = HostConfig {
        mounts,
        init: cs.init,
        readonly_rootfs: cs.read_only,
        nano_cpus: limits.and_then(|l| l.nano_cpus).filter(|v| *v > 0),
        memory: limits.and_then(|l| l.memory_bytes).filter(|v| *v > 0),
        pids_limit: limits.and_then(|l| l.pids).filter(|v| *v > 0),
        group_add: non_empty(&cs.groups),
        cap_add: non_empty(&cs.capability_add),
        cap_drop: non_empty(&cs.capability_drop),
        sysctls: cs.sysctls.clone().filter(|s| !s.is_empty()),
        ulimits: cs.ulimits.clone().filter(|u| !u.is_empty()),
        extra_hosts: cs
            .hosts
            .as_ref()
            .map(|hosts| {
                hosts
                    .iter()
                    .flat_map(|h| extra_hosts(h))
                    .collect::<Vec<_>>()
            })
            .filter(|h| !h.is_empty()),
        dns: dns.and_then(|d| non_empty(&d.nameservers)),
        dns_search: dns.and_then(|d| non_empty(&d.search)),
        dns_options: dns.and_then(|d| non_empty(&d.options)),
        oom_score_adj: cs.oom_score_adj.filter(|v| *v != 0),
        security_opt: Some(security_opts(cs.privileges.as_ref())).filter(|o| !o.is_empty()),
        log_config,
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(image.clone()),
        labels: Some(container_labels),
        entrypoint,
        cmd,
        env: non_empty(&cs.env),
        working_dir: cs.dir.clone().filter(|d| !d.is_empty()),
        user: cs.user.clone().filter(|u| !u.is_empty()),
        hostname: cs.hostname.clone().filter(|h| !h.is_empty()),
        tty: cs.tty,
        open_stdin: cs.open_stdin,
        stop_signal: cs.stop_signal.clone().filter(|s| !s.is_empty()),
        // Whole seconds, as the engine takes them; a stop without an explicit timeout
        // (e.g. of a container whose task is gone) then still honours the spec.
        stop_timeout: Some(grace.as_secs() as i64),
        healthcheck: cs.health_check.clone(),
        host_config: Some(host_config),
        ..Default::default()
    };

    Ok(ContainerSpec {
        name: naming.container_name(),
        image,
        body,
        networks: Vec::new(),
    })
}

/// The overlays a task's spec names (`TaskTemplate.Networks`, copied into every task).
pub fn task_networks(task: &Task) -> &[NetworkAttachmentConfig] {
    task.spec
        .as_ref()
        .and_then(|s| s.networks.as_deref())
        .unwrap_or_default()
}

/// Puts a container on its overlays, with the addresses the leader allocated.
///
/// The engine takes one network in the create request (API 1.41), so the first one goes
/// there: `HostConfig.NetworkMode` and its endpoint with the fixed address. The runtime
/// connects the others before the start. The first network's gateway is the container's
/// DNS server: Docker's embedded resolver answers the container's own names and forwards
/// the rest there, where the node redirects it to swarm-dns. No Docker alias is given for
/// the service name, or Docker's resolver would answer it with the task's own address
/// instead of the service's VIP.
pub fn attach(spec: &mut ContainerSpec, networks: &[TaskNetwork]) {
    let Some(first) = networks.first() else {
        return;
    };
    let host_config = spec.body.host_config.get_or_insert_with(Default::default);
    host_config.network_mode = Some(first.docker_network.clone());
    // The gateway comes first so that service names resolve; name servers the service
    // asked for (`--dns`) follow it, used by Docker's resolver when the gateway fails.
    let mut dns = vec![first.gateway.to_string()];
    dns.extend(host_config.dns.take().unwrap_or_default());
    host_config.dns = Some(dns);
    spec.body.networking_config = Some(NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            first.docker_network.clone(),
            endpoint_settings(first),
        )])),
    });
    spec.networks = networks.to_vec();
}

/// Publishes a task's host-mode ports (`--publish mode=host`) as Docker's `PortBindings`
/// on every address of the node; a published port of 0 lets the engine choose one, as
/// Docker does for host mode.
pub fn publish(spec: &mut ContainerSpec, ports: &[EndpointPortConfig]) {
    if ports.is_empty() {
        return;
    }
    let mut exposed = Vec::new();
    let mut bindings = HashMap::new();
    for p in ports {
        let Some(target) = p.target_port else {
            continue;
        };
        let proto = match p.protocol {
            Some(EndpointPortConfigProtocolEnum::UDP) => "udp",
            Some(EndpointPortConfigProtocolEnum::SCTP) => "sctp",
            _ => "tcp",
        };
        let key = format!("{target}/{proto}");
        let host_port = p
            .published_port
            .filter(|p| *p > 0)
            .map(|p| p.to_string())
            .unwrap_or_default();
        exposed.push(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(String::new()),
                host_port: Some(host_port),
            });
    }
    exposed.sort();
    exposed.dedup();
    spec.body.exposed_ports = Some(exposed);
    spec.body
        .host_config
        .get_or_insert_with(Default::default)
        .port_bindings = Some(bindings);
}

/// The endpoint of one attachment: the fixed address only. The MAC is added by the
/// runtime where the engine's API has a field for it.
pub fn endpoint_settings(net: &TaskNetwork) -> EndpointSettings {
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(net.addr.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A service's `--host` entry as the engine takes it. The service spec keeps Docker's
/// `IP NAME [NAME...]` (the CLI turns `NAME:IP` into it); a container wants `NAME:IP`.
fn extra_hosts(entry: &str) -> Vec<String> {
    let mut parts = entry.split_whitespace();
    match (parts.next(), parts.clone().next()) {
        (Some(ip), Some(_)) => parts.map(|name| format!("{name}:{ip}")).collect(),
        (Some(single), None) => vec![single.to_string()],
        _ => vec![],
    }
}

/// The container's security options from the service's privileges, in the engine's
/// words (`label=...`, `apparmor=...`, `seccomp=...`, `no-new-privileges`).
fn security_opts(privileges: Option<&TaskSpecContainerSpecPrivileges>) -> Vec<String> {
    let Some(p) = privileges else {
        return vec![];
    };
    let mut opts = Vec::new();
    if let Some(se) = &p.se_linux_context {
        if se.disable == Some(true) {
            opts.push("label=disable".to_string());
        }
        for (key, value) in [
            ("user", &se.user),
            ("role", &se.role),
            ("type", &se.typ),
            ("level", &se.level),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                opts.push(format!("label={key}:{v}"));
            }
        }
    }
    if let Some(mode) = p.app_armor.as_ref().and_then(|a| a.mode) {
        if mode == TaskSpecContainerSpecPrivilegesAppArmorModeEnum::DISABLED {
            opts.push("apparmor=unconfined".to_string());
        }
    }
    if let Some(seccomp) = &p.seccomp {
        match seccomp.mode {
            Some(TaskSpecContainerSpecPrivilegesSeccompModeEnum::UNCONFINED) => {
                opts.push("seccomp=unconfined".to_string())
            }
            Some(TaskSpecContainerSpecPrivilegesSeccompModeEnum::CUSTOM) => {
                if let Some(profile) = &seccomp.profile {
                    opts.push(format!("seccomp={profile}"));
                }
            }
            _ => {}
        }
    }
    if p.no_new_privileges == Some(true) {
        opts.push("no-new-privileges".to_string());
    }
    opts
}

fn non_empty(v: &Option<Vec<String>>) -> Option<Vec<String>> {
    v.as_ref().filter(|v| !v.is_empty()).cloned()
}

fn check_mount(task_id: &str, m: &Mount) -> Result<Mount, SpecError> {
    match m.typ {
        Some(MountType::BIND) | Some(MountType::VOLUME) | Some(MountType::TMPFS) => Ok(m.clone()),
        // The engine's default mount type is a volume.
        None => Ok(Mount {
            typ: Some(MountType::VOLUME),
            ..m.clone()
        }),
        Some(other) => Err(SpecError::UnsupportedMount {
            task: task_id.to_string(),
            kind: other.to_string(),
            target: m.target.clone().unwrap_or_default(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_state::models::{Limit, TaskSpec, TaskSpecContainerSpec, TaskSpecResources};

    fn task() -> Task {
        Task {
            id: Some("t1".into()),
            service_id: Some("svc1".into()),
            node_id: Some("node1".into()),
            slot: Some(3),
            labels: Some(HashMap::from([(
                labels::SERVICE_NAME.to_string(),
                "web".to_string(),
            )])),
            spec: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some("busybox:latest".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cs(t: &mut Task) -> &mut TaskSpecContainerSpec {
        t.spec.as_mut().unwrap().container_spec.as_mut().unwrap()
    }

    #[test]
    fn names_follow_docker_swarm() {
        let t = task();
        let n = task_naming(&t);
        assert_eq!(n.container_name(), "web.3.t1");
        assert_eq!(n.display_name(), "web.3");
    }

    #[test]
    fn global_tasks_use_the_node_id_and_service_id_is_the_fallback() {
        let mut t = task();
        t.slot = None;
        t.labels = None;
        assert_eq!(task_naming(&t).container_name(), "svc1.node1.t1");
        t.slot = Some(0);
        assert_eq!(task_naming(&t).display_name(), "svc1.node1");
    }

    #[test]
    fn system_labels_override_spec_and_task_labels() {
        let mut t = task();
        cs(&mut t).labels = Some(HashMap::from([
            ("app".to_string(), "x".to_string()),
            (labels::NODE_ID.to_string(), "forged".to_string()),
        ]));
        let spec = container_spec(&t).unwrap();
        let l = spec.body.labels.unwrap();
        assert_eq!(l["app"], "x");
        assert_eq!(l[labels::NODE_ID], "node1");
        assert_eq!(l[labels::TASK], "");
        assert_eq!(l[labels::TASK_ID], "t1");
        assert_eq!(l[labels::TASK_NAME], "web.3.t1");
        assert_eq!(l[labels::SERVICE_ID], "svc1");
        assert_eq!(l[labels::SERVICE_NAME], "web");
        assert_eq!(spec.name, "web.3.t1");
    }

    #[test]
    fn command_replaces_entrypoint_and_args_alone_keep_it() {
        let mut t = task();
        cs(&mut t).command = Some(vec!["sleep".into()]);
        cs(&mut t).args = Some(vec!["300".into()]);
        let b = container_spec(&t).unwrap().body;
        assert_eq!(b.entrypoint, Some(vec!["sleep".to_string()]));
        assert_eq!(b.cmd, Some(vec!["300".to_string()]));

        cs(&mut t).command = None;
        let b = container_spec(&t).unwrap().body;
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, Some(vec!["300".to_string()]));

        cs(&mut t).args = None;
        let b = container_spec(&t).unwrap().body;
        assert_eq!((b.entrypoint, b.cmd), (None, None));
    }

    #[test]
    fn maps_the_fields_that_matter() {
        let mut t = task();
        {
            let c = cs(&mut t);
            c.env = Some(vec!["A=1".into()]);
            c.dir = Some("/work".into());
            c.user = Some("nobody".into());
            c.hostname = Some("h".into());
            c.stop_signal = Some("SIGINT".into());
            c.stop_grace_period = Some(3_500_000_000);
            c.init = Some(true);
            c.tty = Some(true);
            c.read_only = Some(true);
            c.mounts = Some(vec![Mount {
                target: Some("/data".into()),
                typ: Some(MountType::TMPFS),
                ..Default::default()
            }]);
        }
        t.spec.as_mut().unwrap().resources = Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus: Some(500_000_000),
                memory_bytes: Some(64 << 20),
                pids: Some(100),
            }),
            ..Default::default()
        });
        let b = container_spec(&t).unwrap().body;
        assert_eq!(b.image.as_deref(), Some("busybox:latest"));
        assert_eq!(b.env, Some(vec!["A=1".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/work"));
        assert_eq!(b.user.as_deref(), Some("nobody"));
        assert_eq!(b.hostname.as_deref(), Some("h"));
        assert_eq!(b.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(b.stop_timeout, Some(3));
        assert_eq!(b.tty, Some(true));
        let h = b.host_config.unwrap();
        assert_eq!(h.init, Some(true));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.pids_limit, Some(100));
        assert_eq!(h.mounts.unwrap()[0].typ, Some(MountType::TMPFS));
        assert_eq!(stop_grace(&t), Duration::from_millis(3500));
    }

    fn nets() -> Vec<TaskNetwork> {
        vec![
            TaskNetwork {
                docker_network: "front".into(),
                addr: "10.0.1.5".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.0.1.1".parse().unwrap(),
            },
            TaskNetwork {
                docker_network: "back".into(),
                addr: "10.0.2.7".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.0.2.1".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn without_networks_the_default_bridge_is_kept() {
        let mut spec = container_spec(&task()).unwrap();
        let before = spec.clone();
        attach(&mut spec, &[]);
        assert_eq!(spec, before);
        assert!(spec.networks.is_empty());
        let h = spec.body.host_config.unwrap();
        assert_eq!((h.network_mode, h.dns), (None, None));
        assert!(spec.body.networking_config.is_none());
    }

    #[test]
    fn the_first_network_goes_in_the_create_request_with_its_gateway_as_dns() {
        let mut spec = container_spec(&task()).unwrap();
        attach(&mut spec, &nets());
        assert_eq!(spec.networks, nets());
        let h = spec.body.host_config.clone().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("front"));
        assert_eq!(h.dns, Some(vec!["10.0.1.1".to_string()]));
        let endpoints = spec
            .body
            .networking_config
            .unwrap()
            .endpoints_config
            .unwrap();
        assert_eq!(endpoints.len(), 1, "one network at create time (API 1.41)");
        let front = &endpoints["front"];
        assert_eq!(
            front.ipam_config.as_ref().unwrap().ipv4_address.as_deref(),
            Some("10.0.1.5")
        );
        // No alias: Docker's resolver would shadow the service's VIP.
        assert!(front.aliases.is_none());
    }

    #[test]
    fn task_networks_come_from_the_task_spec() {
        let mut t = task();
        assert!(task_networks(&t).is_empty());
        t.spec.as_mut().unwrap().networks = Some(vec![NetworkAttachmentConfig {
            target: Some("net1".into()),
            ..Default::default()
        }]);
        assert_eq!(task_networks(&t)[0].target.as_deref(), Some("net1"));
    }

    #[test]
    fn default_grace_is_ten_seconds() {
        let t = task();
        assert_eq!(stop_grace(&t), Duration::from_secs(10));
        assert_eq!(container_spec(&t).unwrap().body.stop_timeout, Some(10));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let mut t = task();
        cs(&mut t).mounts = Some(vec![Mount {
            target: Some("/x".into()),
            typ: Some(MountType::NPIPE),
            ..Default::default()
        }]);
        let e = container_spec(&t).unwrap_err();
        assert!(
            e.to_string().contains("unsupported mount type npipe"),
            "{e}"
        );

        cs(&mut t).mounts = None;
        cs(&mut t).image = None;
        assert_eq!(
            container_spec(&t).unwrap_err(),
            SpecError::NoImage("t1".into())
        );

        t.spec = Some(TaskSpec::default());
        assert_eq!(
            container_spec(&t).unwrap_err(),
            SpecError::NoContainerSpec("t1".into())
        );
    }

    #[test]
    fn host_mode_ports_become_port_bindings() {
        let mut spec = container_spec(&task()).unwrap();
        publish(
            &mut spec,
            &[
                EndpointPortConfig {
                    target_port: Some(80),
                    published_port: Some(8080),
                    ..Default::default()
                },
                EndpointPortConfig {
                    target_port: Some(53),
                    published_port: Some(0),
                    protocol: Some(EndpointPortConfigProtocolEnum::UDP),
                    ..Default::default()
                },
            ],
        );
        assert_eq!(
            spec.body.exposed_ports,
            Some(vec!["53/udp".to_string(), "80/tcp".to_string()])
        );
        let bindings = spec.body.host_config.unwrap().port_bindings.unwrap();
        let host = |k: &str| bindings[k].as_ref().unwrap()[0].host_port.clone().unwrap();
        assert_eq!(host("80/tcp"), "8080");
        // 0: the engine picks a free port, as Docker does for host mode.
        assert_eq!(host("53/udp"), "");
    }

    #[test]
    fn hosts_and_privileges_take_the_engine_s_form() {
        assert_eq!(
            extra_hosts("10.1.2.3 db db.local"),
            vec!["db:10.1.2.3".to_string(), "db.local:10.1.2.3".to_string()]
        );
        assert_eq!(extra_hosts("db:10.1.2.3"), vec!["db:10.1.2.3".to_string()]);
        assert!(extra_hosts("  ").is_empty());
        let p: TaskSpecContainerSpecPrivileges = serde_json::from_value(serde_json::json!({
            "SELinuxContext": {"Disable": false, "User": "u", "Level": "s0"},
            "AppArmor": {"Mode": "disabled"},
            "Seccomp": {"Mode": "unconfined"},
            "NoNewPrivileges": true
        }))
        .unwrap();
        assert_eq!(
            security_opts(Some(&p)),
            vec![
                "label=user:u",
                "label=level:s0",
                "apparmor=unconfined",
                "seccomp=unconfined",
                "no-new-privileges"
            ]
        );
    }

    #[test]
    fn windows_only_options_reject_the_task() {
        let mut t = task();
        let cs = t.spec.as_mut().unwrap().container_spec.as_mut().unwrap();
        cs.isolation = Some(TaskSpecContainerSpecIsolationEnum::HYPERV);
        let err = container_spec(&t).unwrap_err();
        assert!(err.to_string().contains("Windows"), "{err}");
    }

    #[test]
    fn requested_name_servers_follow_the_gateway_on_overlays() {
        let mut t = task();
        let cs = t.spec.as_mut().unwrap().container_spec.as_mut().unwrap();
        cs.dns_config = Some(swarm_state::models::TaskSpecContainerSpecDnsConfig {
            nameservers: Some(vec!["10.9.9.9".into()]),
            search: Some(vec!["example.org".into()]),
            options: None,
        });
        let mut spec = container_spec(&t).unwrap();
        let hc = spec.body.host_config.as_ref().unwrap();
        assert_eq!(hc.dns, Some(vec!["10.9.9.9".to_string()]));
        assert_eq!(hc.dns_search, Some(vec!["example.org".to_string()]));
        let net = TaskNetwork {
            docker_network: "swb4097".into(),
            addr: "10.0.1.5".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.0.1.1".parse().unwrap(),
        };
        attach(&mut spec, &[net]);
        let hc = spec.body.host_config.as_ref().unwrap();
        assert_eq!(
            hc.dns,
            Some(vec!["10.0.1.1".to_string(), "10.9.9.9".to_string()])
        );
    }
}
