//! Published ports (`docker service create -p`): the routing mesh's ports (ingress mode)
//! and the ports bound on a task's own node (host mode).
//!
//! A service's spec says which ports it wants; the leader's allocator turns that into the
//! service's `Endpoint.Ports`, choosing a port from [`DYNAMIC_PORTS`] for an ingress port
//! given without a published port, as SwarmKit does. The choice travels in
//! [`crate::Command::Allocate`] and `apply` checks it again: an ingress port belongs to
//! one service at a time, per protocol.
//!
//! Ingress ports make the service depend on the `ingress` network: its tasks get an
//! address there (after their own networks, so the container's default route and DNS
//! stay on the service's own first network) and the service gets a VIP there. The user's
//! spec never names ingress; the tasks' specs do (see [`ClusterState::task_spec_of`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use crate::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum as Proto,
    EndpointPortConfigPublishModeEnum as Mode, NetworkAttachmentConfig, ServiceSpec, TaskSpec,
};
use crate::network::{NetworkRecord, Protocol};
use crate::{ApplyError, ClusterState};

/// Where ingress ports given without a published port come from (SwarmKit's range).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

/// A published port as the mesh knows it: protocol and port number.
pub type PortKey = (Protocol, u16);

/// The ports of a spec (`EndpointSpec.Ports`), in the order given.
pub fn spec_ports(spec: &ServiceSpec) -> &[EndpointPortConfig] {
    spec.endpoint_spec
        .as_ref()
        .and_then(|e| e.ports.as_deref())
        .unwrap_or_default()
}

/// Ingress is the default publish mode.
pub fn is_ingress(port: &EndpointPortConfig) -> bool {
    matches!(
        port.publish_mode,
        None | Some(Mode::EMPTY) | Some(Mode::INGRESS)
    )
}

/// The protocol of a port (tcp when unset); `None` for sctp, which is not served.
pub fn protocol_of(port: &EndpointPortConfig) -> Option<Protocol> {
    match port.protocol {
        None | Some(Proto::EMPTY) | Some(Proto::TCP) => Some(Protocol::Tcp),
        Some(Proto::UDP) => Some(Protocol::Udp),
        Some(Proto::SCTP) => None,
    }
}

/// The published port, 0 when none was given (or it is out of range).
pub fn published_of(port: &EndpointPortConfig) -> u16 {
    port.published_port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

/// The port's key when it names a published port.
pub fn key_of(port: &EndpointPortConfig) -> Option<PortKey> {
    let published = published_of(port);
    if published == 0 {
        return None;
    }
    Some((protocol_of(port)?, published))
}

/// True when a spec publishes a port through the routing mesh.
pub fn publishes_ingress(spec: &ServiceSpec) -> bool {
    spec_ports(spec).iter().any(is_ingress)
}

/// A port with its defaults written out, as Docker shows it in `Endpoint.Ports`.
pub fn normalized(port: &EndpointPortConfig) -> EndpointPortConfig {
    let mut p = port.clone();
    if matches!(p.protocol, None | Some(Proto::EMPTY)) {
        p.protocol = Some(Proto::TCP);
    }
    p.publish_mode = Some(if is_ingress(port) {
        Mode::INGRESS
    } else {
        Mode::HOST
    });
    p
}

impl ClusterState {
    /// The routing mesh's network (`Ingress: true`), if the swarm has one.
    pub fn ingress_network(&self) -> Option<&NetworkRecord> {
        self.networks.values().find(|n| n.is_ingress())
    }

    /// A service's allocated `Endpoint.Ports` (empty until the allocator has run).
    pub fn endpoint_ports(&self, service_id: &str) -> &[EndpointPortConfig] {
        self.service_ports
            .get(service_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// True while some service publishes (or still holds) an ingress port.
    pub fn has_ingress_ports(&self) -> bool {
        self.services
            .values()
            .any(|s| s.spec.as_ref().is_some_and(publishes_ingress))
            || self
                .service_ports
                .values()
                .any(|ports| ports.iter().any(is_ingress))
    }

    /// The task spec a service's tasks run: its template, plus the ingress network last
    /// when it publishes ingress ports. Tasks whose spec differs are replaced by a rolling
    /// update, so adding or removing the service's last ingress port redeploys it, as in
    /// Docker.
    pub fn task_spec_of(&self, spec: &ServiceSpec) -> TaskSpec {
        let mut template = spec.task_template.clone().unwrap_or_default();
        if publishes_ingress(spec) {
            if let Some(ingress) = self.ingress_network() {
                let mut networks = crate::network::service_networks(spec).to_vec();
                networks.push(NetworkAttachmentConfig {
                    target: Some(ingress.id().to_string()),
                    ..Default::default()
                });
                template.networks = Some(networks);
            }
        }
        template
    }

    /// SwarmKit's port conflict check for a new or updated spec: a published port may not
    /// be used by another service in ingress mode, nor be an ingress port of this one
    /// while another publishes it in host mode (host-mode ports of different services may
    /// share a number: the scheduler keeps them on different nodes). `None` when free.
    pub fn port_conflict(&self, service_id: Option<&str>, spec: &ServiceSpec) -> Option<String> {
        let mut ingress = BTreeSet::new();
        let mut host = BTreeSet::new();
        for p in spec_ports(spec) {
            if let Some(key) = key_of(p) {
                if is_ingress(p) {
                    ingress.insert(key);
                } else {
                    host.insert(key);
                }
            }
        }
        if ingress.is_empty() && host.is_empty() {
            return None;
        }
        for (id, service) in &self.services {
            if Some(id.as_str()) == service_id {
                continue;
            }
            let name = service
                .spec
                .as_ref()
                .and_then(|s| s.name.as_deref())
                .unwrap_or_default();
            let theirs = service
                .spec
                .as_ref()
                .map(spec_ports)
                .unwrap_or_default()
                .iter()
                .chain(self.endpoint_ports(id));
            for p in theirs {
                let Some(key) = key_of(p) else {
                    continue;
                };
                let port = key.1;
                if is_ingress(p) {
                    if ingress.contains(&key) || host.contains(&key) {
                        return Some(format!(
                            "port '{port}' is already in use by service '{name}' ({id}) as an ingress port"
                        ));
                    }
                } else if ingress.contains(&key) {
                    return Some(format!(
                        "port '{port}' is already in use by service '{name}' ({id}) as a host-published port"
                    ));
                }
            }
        }
        None
    }

    /// Checks and records the `Endpoint.Ports` of an allocation: every ingress port has a
    /// number and belongs to one service only, whatever the proposer believed.
    pub(crate) fn check_ports(
        &self,
        ports: &[(String, Vec<EndpointPortConfig>)],
    ) -> Result<(), ApplyError> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut after: BTreeMap<&str, &[EndpointPortConfig]> = self
            .service_ports
            .iter()
            .map(|(id, p)| (id.as_str(), p.as_slice()))
            .collect();
        for (service_id, list) in ports {
            if !self.services.contains_key(service_id) {
                return Err(crate::not_found("service", service_id));
            }
            after.insert(service_id, list);
        }
        let mut owners: BTreeMap<PortKey, &str> = BTreeMap::new();
        for (service_id, list) in after {
            for p in list.iter().filter(|p| is_ingress(p)) {
                let key = key_of(p).ok_or_else(|| {
                    ApplyError::Invalid(format!(
                        "service {service_id}: an ingress port needs a published port and tcp or udp"
                    ))
                })?;
                if let Some(other) = owners.insert(key, service_id) {
                    if other != service_id {
                        return Err(ApplyError::Conflict(format!(
                            "port '{}' is already in use by service {other} as an ingress port",
                            key.1
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{EndpointSpec, Service};

    fn port(published: i64, target: i64, mode: Mode) -> EndpointPortConfig {
        EndpointPortConfig {
            protocol: Some(Proto::TCP),
            target_port: Some(target),
            published_port: Some(published),
            publish_mode: Some(mode),
            ..Default::default()
        }
    }

    fn spec(name: &str, ports: Vec<EndpointPortConfig>) -> ServiceSpec {
        ServiceSpec {
            name: Some(name.into()),
            endpoint_spec: Some(EndpointSpec {
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn conflicts_use_swarmkit_s_words() {
        let mut state = ClusterState::default();
        state.services.insert(
            "s1".into(),
            Service {
                id: Some("s1".into()),
                spec: Some(spec("search", vec![port(9200, 9200, Mode::INGRESS)])),
                ..Default::default()
            },
        );
        state.services.insert(
            "s2".into(),
            Service {
                id: Some("s2".into()),
                spec: Some(spec("edge", vec![port(80, 80, Mode::HOST)])),
                ..Default::default()
            },
        );
        let new = spec("other", vec![port(9200, 80, Mode::INGRESS)]);
        assert_eq!(
            state.port_conflict(None, &new).unwrap(),
            "port '9200' is already in use by service 'search' (s1) as an ingress port"
        );
        // The service itself, on update, does not conflict with itself.
        assert_eq!(state.port_conflict(Some("s1"), &new), None);
        // A host port next to another's ingress port, and the reverse.
        let host = spec("other", vec![port(9200, 80, Mode::HOST)]);
        assert!(state.port_conflict(None, &host).is_some());
        let ing = spec("other", vec![port(80, 80, Mode::INGRESS)]);
        assert_eq!(
            state.port_conflict(None, &ing).unwrap(),
            "port '80' is already in use by service 'edge' (s2) as a host-published port"
        );
        // Host ports of different services may share a number; udp is another port.
        assert_eq!(
            state.port_conflict(None, &spec("x", vec![port(80, 80, Mode::HOST)])),
            None
        );
        let mut udp = port(9200, 9200, Mode::INGRESS);
        udp.protocol = Some(Proto::UDP);
        assert_eq!(state.port_conflict(None, &spec("x", vec![udp])), None);
    }

    #[test]
    fn the_ingress_network_goes_last_in_the_task_spec() {
        let mut state = ClusterState::default();
        let mut ingress = crate::network::tests::record("ing", "10.0.0.0/24");
        ingress.network.ingress = Some(true);
        state.networks.insert("ing".into(), ingress);
        let mut s = spec("web", vec![port(0, 80, Mode::INGRESS)]);
        s.task_template = Some(TaskSpec {
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some("own".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let targets: Vec<_> = state
            .task_spec_of(&s)
            .networks
            .unwrap()
            .into_iter()
            .map(|n| n.target.unwrap())
            .collect();
        assert_eq!(targets, ["own", "ing"]);
        // Host-mode ports need no ingress.
        let host = spec("web", vec![port(0, 80, Mode::HOST)]);
        assert_eq!(state.task_spec_of(&host).networks, None);
    }
}
