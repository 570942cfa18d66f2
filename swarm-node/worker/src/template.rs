//! Docker's service templates: `{{.Node.Hostname}}`, `{{.Task.Slot}}` and the other
//! placeholders in `--hostname`, `--env` and `--mount`, expanded on the node that runs
//! the task, as Docker's executor does. Docker evaluates Go's text/template; swarm-node
//! knows the placeholders Docker documents and refuses anything else in `{{ }}` with a
//! message naming it, so a task never starts with a half-expanded value.

use swarm_state::models::Task;

use crate::runtime::ContainerSpec;
use crate::spec::task_naming;

/// What the placeholders of one task stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateContext {
    pub service_id: String,
    pub service_name: String,
    pub node_id: String,
    pub node_hostname: String,
    pub task_id: String,
    /// `SERVICE.SLOT.TASKID` (the node id instead of the slot for global services).
    pub task_name: String,
    /// The replica slot; empty for global services, as in Docker.
    pub task_slot: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template: {field} in {text:?} is not supported: use .Service.ID, .Service.Name, .Node.ID, .Node.Hostname, .Node.Platform.OS, .Node.Platform.Architecture, .Task.ID, .Task.Name or .Task.Slot")]
    Unsupported { field: String, text: String },
    #[error("template: unclosed action in {0:?}")]
    Unclosed(String),
}

impl TemplateContext {
    /// The context of `task` on the node named `node_hostname`.
    pub fn of(task: &Task, node_hostname: &str) -> TemplateContext {
        let naming = task_naming(task);
        TemplateContext {
            service_id: naming.service_id.clone(),
            service_name: naming.service_name.clone(),
            node_id: task.node_id.clone().unwrap_or_default(),
            node_hostname: node_hostname.to_string(),
            task_id: naming.task_id.clone(),
            task_name: naming.container_name(),
            task_slot: task
                .slot
                .filter(|s| *s > 0)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        }
    }

    fn field(&self, name: &str) -> Option<String> {
        Some(match name {
            ".Service.ID" => self.service_id.clone(),
            ".Service.Name" => self.service_name.clone(),
            ".Node.ID" => self.node_id.clone(),
            ".Node.Hostname" => self.node_hostname.clone(),
            ".Node.Platform.OS" => std::env::consts::OS.to_string(),
            ".Node.Platform.Architecture" => std::env::consts::ARCH.to_string(),
            ".Task.ID" => self.task_id.clone(),
            ".Task.Name" => self.task_name.clone(),
            ".Task.Slot" => self.task_slot.clone(),
            _ => return None,
        })
    }
}

/// Expands every `{{ .Field }}` of `text`.
pub fn expand(text: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError::Unclosed(text.to_string()))?;
        // Go's `{{- x -}}` trims the surrounding spaces; the field is what is left.
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let value = ctx
            .field(action)
            .ok_or_else(|| TemplateError::Unsupported {
                field: action.to_string(),
                text: text.to_string(),
            })?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands the templated fields of a container about to be created: the hostname, every
/// environment entry and the mounts' sources and targets (and volume labels), the fields
/// Docker expands.
pub fn expand_container(
    spec: &mut ContainerSpec,
    ctx: &TemplateContext,
) -> Result<(), TemplateError> {
    let body = &mut spec.body;
    if let Some(h) = body.hostname.as_mut() {
        *h = expand(h, ctx)?;
    }
    if let Some(env) = body.env.as_mut() {
        for e in env.iter_mut() {
            *e = expand(e, ctx)?;
        }
    }
    if let Some(mounts) = body.host_config.as_mut().and_then(|h| h.mounts.as_mut()) {
        for m in mounts.iter_mut() {
            if let Some(s) = m.source.as_mut() {
                *s = expand(s, ctx)?;
            }
            if let Some(t) = m.target.as_mut() {
                *t = expand(t, ctx)?;
            }
            if let Some(labels) = m.volume_options.as_mut().and_then(|v| v.labels.as_mut()) {
                for v in labels.values_mut() {
                    *v = expand(v, ctx)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TemplateContext {
        TemplateContext {
            service_id: "svc1".into(),
            service_name: "web".into(),
            node_id: "node1id".into(),
            node_hostname: "node1".into(),
            task_id: "task1".into(),
            task_name: "web.2.task1".into(),
            task_slot: "2".into(),
        }
    }

    #[test]
    fn docker_s_placeholders_expand() {
        let c = ctx();
        assert_eq!(
            expand("{{.Node.Hostname}}-{{.Service.Name}}", &c).unwrap(),
            "node1-web"
        );
        assert_eq!(
            expand("SLOT={{ .Task.Slot }} ID={{.Task.ID}} N={{.Task.Name}}", &c).unwrap(),
            "SLOT=2 ID=task1 N=web.2.task1"
        );
        assert_eq!(
            expand("/data/{{.Node.ID}}/{{.Service.ID}}", &c).unwrap(),
            "/data/node1id/svc1"
        );
        assert_eq!(expand("plain text", &c).unwrap(), "plain text");
        assert_eq!(expand("{{- .Task.Slot -}}", &c).unwrap(), "2");
        assert_eq!(
            expand(".Node.Platform.OS={{.Node.Platform.OS}}", &c).unwrap(),
            format!(".Node.Platform.OS={}", std::env::consts::OS)
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        let c = ctx();
        let err = expand("{{.Service.Labels}}", &c).unwrap_err();
        assert!(err.to_string().contains(".Service.Labels"), "{err}");
        let err = expand("{{index .Service.Labels \"a\"}}", &c).unwrap_err();
        assert!(matches!(err, TemplateError::Unsupported { .. }));
        assert_eq!(
            expand("x{{.Task.Slot", &c).unwrap_err(),
            TemplateError::Unclosed("x{{.Task.Slot".into())
        );
    }

    #[test]
    fn a_task_s_context_follows_docker_s_names() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "ID": "t9", "ServiceID": "s9", "NodeID": "n9", "Slot": 3,
            "Labels": {"com.docker.swarm.service.name": "api"}
        }))
        .unwrap();
        let c = TemplateContext::of(&task, "host9");
        assert_eq!(c.task_name, "api.3.t9");
        assert_eq!(c.task_slot, "3");
        assert_eq!(c.service_name, "api");
        let global: Task = serde_json::from_value(serde_json::json!({
            "ID": "t8", "ServiceID": "s8", "NodeID": "n8",
            "Labels": {"com.docker.swarm.service.name": "agent"}
        }))
        .unwrap();
        let c = TemplateContext::of(&global, "host8");
        assert_eq!(
            (c.task_name.as_str(), c.task_slot.as_str()),
            ("agent.n8.t8", "")
        );
    }
}
