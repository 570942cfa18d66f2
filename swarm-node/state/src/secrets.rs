//! Secrets and configs: the objects, which services use them, and which of them a node
//! receives.
//!
//! Both are stored with their data, as the Docker API's `Secret` and `Config`, in the
//! replicated state, which the Raft crate encrypts at rest. The data leaves the managers
//! only inside a node's own assignments ([`ClusterState::files_for_node`]), and only for
//! the secrets and configs that node's live tasks reference.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::models::{Config, Secret, ServiceSpec, Task, TaskState};
use crate::proto::FileData;
use crate::{not_found, ApplyError, ClusterState};

/// Which of the two kinds of file object a command or a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FileKind {
    Secret,
    Config,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

impl FileKind {
    /// The word Docker uses in messages.
    pub fn word(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

/// The ids of the secrets and of the configs a service spec references.
pub fn references(spec: &ServiceSpec) -> (Vec<String>, Vec<String>) {
    let container = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref());
    let secrets = container
        .and_then(|c| c.secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|s| s.secret_id.clone())
        .collect();
    let configs = container
        .and_then(|c| c.configs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.config_id.clone())
        .collect();
    (secrets, configs)
}

fn secret_name(s: &Secret) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .unwrap_or_default()
}

fn config_name(c: &Config) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .unwrap_or_default()
}

/// A task whose container may still need its files: not yet past running, and not told
/// to stop. A task told to stop keeps the files it already has until its container goes.
fn may_start(task: &Task) -> bool {
    let desired = task.desired_state.unwrap_or(TaskState::RUNNING);
    let observed = task
        .status
        .as_ref()
        .and_then(|s| s.state)
        .unwrap_or(TaskState::NEW);
    desired <= TaskState::RUNNING && observed <= TaskState::RUNNING
}

/// Where a secret's file appears in the container: a relative target goes under
/// `/run/secrets/`, as dockerd does.
pub fn secret_path(target: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/run/secrets/{target}")
    }
}

/// A config's relative target is relative to `/`.
pub fn config_path(target: &str) -> String {
    if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    }
}

impl ClusterState {
    /// A secret by full id, exact name, or unique id prefix (Docker's lookup order).
    pub fn find_secret(&self, key: &str) -> Option<&Secret> {
        if let Some(s) = self.secrets.get(key) {
            return Some(s);
        }
        if let Some(s) = self.secrets.values().find(|s| secret_name(s) == key) {
            return Some(s);
        }
        crate::unique_prefix(self.secrets.iter(), key)
    }

    /// A config by full id, exact name, or unique id prefix.
    pub fn find_config(&self, key: &str) -> Option<&Config> {
        if let Some(c) = self.configs.get(key) {
            return Some(c);
        }
        if let Some(c) = self.configs.values().find(|c| config_name(c) == key) {
            return Some(c);
        }
        crate::unique_prefix(self.configs.iter(), key)
    }

    /// The names of the services whose spec references the secret or config `id`.
    pub fn file_users(&self, kind: FileKind, id: &str) -> Vec<String> {
        self.services
            .values()
            .filter_map(|s| s.spec.as_ref())
            .filter(|spec| {
                let (secrets, configs) = references(spec);
                match kind {
                    FileKind::Secret => secrets.iter().any(|s| s == id),
                    FileKind::Config => configs.iter().any(|c| c == id),
                }
            })
            .map(|spec| spec.name.clone().unwrap_or_default())
            .collect()
    }

    /// SwarmKit's refusal of a spec that references secrets or configs that do not
    /// exist: `secret not found: a, b`.
    pub fn missing_files(&self, spec: &ServiceSpec) -> Option<String> {
        let container = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())?;
        let missing_secrets: Vec<String> = container
            .secrets
            .iter()
            .flatten()
            .filter(|r| {
                !r.secret_id
                    .as_ref()
                    .is_some_and(|id| self.secrets.contains_key(id))
            })
            .map(|r| {
                r.secret_name
                    .clone()
                    .or(r.secret_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        if !missing_secrets.is_empty() {
            return Some(format!(
                "rpc error: code = InvalidArgument desc = secret not found: {}",
                missing_secrets.join(", ")
            ));
        }
        let missing_configs: Vec<String> = container
            .configs
            .iter()
            .flatten()
            .filter(|r| {
                !r.config_id
                    .as_ref()
                    .is_some_and(|id| self.configs.contains_key(id))
            })
            .map(|r| {
                r.config_name
                    .clone()
                    .or(r.config_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        if !missing_configs.is_empty() {
            return Some(format!(
                "rpc error: code = InvalidArgument desc = config not found: {}",
                missing_configs.join(", ")
            ));
        }
        None
    }

    /// The data of the secrets and configs that `node_id`'s tasks which may still start
    /// reference, and of nothing else: what the node's assignments carry.
    pub fn files_for_node<'a>(
        &self,
        tasks: impl IntoIterator<Item = &'a Task>,
    ) -> (BTreeMap<String, FileData>, BTreeMap<String, FileData>) {
        let mut secret_ids = BTreeSet::new();
        let mut config_ids = BTreeSet::new();
        for task in tasks.into_iter().filter(|t| may_start(t)) {
            let Some(container) = task.spec.as_ref().and_then(|s| s.container_spec.as_ref()) else {
                continue;
            };
            secret_ids.extend(
                container
                    .secrets
                    .iter()
                    .flatten()
                    .filter_map(|r| r.secret_id.clone()),
            );
            config_ids.extend(
                container
                    .configs
                    .iter()
                    .flatten()
                    .filter_map(|r| r.config_id.clone()),
            );
        }
        let with_data = |ids: BTreeSet<String>| {
            ids.into_iter()
                .filter_map(|id| {
                    let data = self.file_data.get(&id)?.clone();
                    Some((id, data))
                })
                .collect()
        };
        let secrets = with_data(secret_ids);
        let configs = with_data(config_ids);
        (secrets, configs)
    }

    pub(crate) fn create_secret(
        &mut self,
        secret: &Secret,
        data: &FileData,
        index: u64,
    ) -> Result<(), ApplyError> {
        let id = secret.id.clone().unwrap_or_default();
        let name = secret_name(secret);
        if id.is_empty() || name.is_empty() {
            return Err(ApplyError::Invalid(
                "a secret needs an id and a name".into(),
            ));
        }
        if self.secrets.contains_key(&id) || self.secrets.values().any(|s| secret_name(s) == name) {
            return Err(ApplyError::Conflict(format!(
                "rpc error: code = AlreadyExists desc = secret {name} already exists"
            )));
        }
        let mut secret = secret.clone();
        secret.version = crate::version(index);
        if let Some(spec) = secret.spec.as_mut() {
            spec.data = None;
        }
        self.file_data.insert(id.clone(), data.clone());
        self.secrets.insert(id, secret);
        Ok(())
    }

    pub(crate) fn create_config(
        &mut self,
        config: &Config,
        data: &FileData,
        index: u64,
    ) -> Result<(), ApplyError> {
        let id = config.id.clone().unwrap_or_default();
        let name = config_name(config);
        if id.is_empty() || name.is_empty() {
            return Err(ApplyError::Invalid(
                "a config needs an id and a name".into(),
            ));
        }
        if self.configs.contains_key(&id) || self.configs.values().any(|c| config_name(c) == name) {
            return Err(ApplyError::Conflict(format!(
                "rpc error: code = AlreadyExists desc = config {name} already exists"
            )));
        }
        let mut config = config.clone();
        config.version = crate::version(index);
        if let Some(spec) = config.spec.as_mut() {
            spec.data = None;
        }
        self.file_data.insert(id.clone(), data.clone());
        self.configs.insert(id, config);
        Ok(())
    }

    /// Labels are all an update may change (checked by the API, which sees the data).
    pub(crate) fn update_file_labels(
        &mut self,
        kind: FileKind,
        id: &str,
        given: u64,
        labels: &Option<HashMap<String, String>>,
        at: &str,
        index: u64,
    ) -> Result<(), ApplyError> {
        let (version, updated_at, spec_labels) = match kind {
            FileKind::Secret => {
                let s = self
                    .secrets
                    .get_mut(id)
                    .ok_or_else(|| not_found("secret", id))?;
                let spec = s.spec.get_or_insert_with(Default::default);
                (&mut s.version, &mut s.updated_at, &mut spec.labels)
            }
            FileKind::Config => {
                let c = self
                    .configs
                    .get_mut(id)
                    .ok_or_else(|| not_found("config", id))?;
                let spec = c.spec.get_or_insert_with(Default::default);
                (&mut c.version, &mut c.updated_at, &mut spec.labels)
            }
        };
        crate::check_version(kind.word(), id, crate::version_of(version), given)?;
        *spec_labels = labels.clone();
        *version = crate::version(index);
        *updated_at = Some(at.to_string());
        Ok(())
    }

    /// Refused while a service uses it, with SwarmKit's words.
    pub(crate) fn remove_file(&mut self, kind: FileKind, id: &str) -> Result<(), ApplyError> {
        let name = match kind {
            FileKind::Secret => self.secrets.get(id).map(|s| secret_name(s).to_string()),
            FileKind::Config => self.configs.get(id).map(|c| config_name(c).to_string()),
        }
        .ok_or_else(|| not_found(kind.word(), id))?;
        let users = self.file_users(kind, id);
        if !users.is_empty() {
            let noun = if users.len() == 1 {
                "service"
            } else {
                "services"
            };
            return Err(ApplyError::Invalid(format!(
                "rpc error: code = InvalidArgument desc = {} '{name}' is in use by the following {noun}: {}",
                kind.word(),
                users.join(", ")
            )));
        }
        match kind {
            FileKind::Secret => {
                self.secrets.remove(id);
            }
            FileKind::Config => {
                self.configs.remove(id);
            }
        }
        self.file_data.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{
        SecretSpec, Service, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecSecrets,
        TaskStatus,
    };
    use crate::Command;

    fn secret(id: &str, name: &str, data: &str) -> Command {
        Command::CreateSecret {
            secret: Box::new(Secret {
                id: Some(id.into()),
                spec: Some(SecretSpec {
                    name: Some(name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            data: FileData(data.into()),
        }
    }

    fn using(secret_id: &str) -> TaskSpec {
        TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("busybox".into()),
                secrets: Some(vec![TaskSpecContainerSpecSecrets {
                    secret_id: Some(secret_id.into()),
                    secret_name: Some(secret_id.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, spec: TaskSpec, desired: TaskState, observed: TaskState) -> Task {
        Task {
            id: Some(id.into()),
            spec: Some(spec),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(observed),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_unique_and_a_used_secret_stays() {
        let mut state = ClusterState::default();
        assert!(state.apply(&secret("s1", "pw", "eA=="), 1).error.is_none());
        let again = state.apply(&secret("s2", "pw", "eQ=="), 2).error;
        assert!(matches!(again, Some(ApplyError::Conflict(_))), "{again:?}");
        let service = Service {
            id: Some("svc".into()),
            spec: Some(ServiceSpec {
                name: Some("db".into()),
                task_template: Some(using("s1")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let create = Command::CreateService {
            service: Box::new(service),
        };
        assert!(state.apply(&create, 3).error.is_none());
        let rm = Command::RemoveFile {
            kind: FileKind::Secret,
            id: "s1".into(),
        };
        let refused = state.apply(&rm, 4).error.unwrap().to_string();
        assert!(
            refused.ends_with("secret 'pw' is in use by the following service: db"),
            "{refused}"
        );
        // A service may not reference a secret that is not there.
        let mut other = ServiceSpec {
            name: Some("web".into()),
            task_template: Some(using("nope")),
            ..Default::default()
        };
        assert!(state
            .missing_files(&other)
            .unwrap()
            .contains("secret not found: nope"));
        other.task_template = Some(using("s1"));
        assert!(state.missing_files(&other).is_none());
    }

    #[test]
    fn a_node_gets_only_what_its_live_tasks_use() {
        let mut state = ClusterState::default();
        state.apply(&secret("s1", "a", "YQ=="), 1);
        state.apply(&secret("s2", "b", "Yg=="), 2);
        state.apply(&secret("s3", "c", "Yw=="), 3);
        let tasks = [
            task("t1", using("s1"), TaskState::RUNNING, TaskState::RUNNING),
            // Told to stop: its container keeps the files it has; no need to send again.
            task("t2", using("s2"), TaskState::SHUTDOWN, TaskState::RUNNING),
            task("t3", using("s3"), TaskState::RUNNING, TaskState::FAILED),
        ];
        let (secrets, configs) = state.files_for_node(&tasks);
        assert_eq!(secrets.keys().collect::<Vec<_>>(), ["s1"]);
        assert_eq!(secrets["s1"], FileData("YQ==".into()));
        assert!(configs.is_empty());
        assert!(
            !format!("{secrets:?}").contains("YQ=="),
            "Debug hides the data"
        );
    }

    #[test]
    fn targets_follow_dockers_rules() {
        assert_eq!(secret_path("db_pw"), "/run/secrets/db_pw");
        assert_eq!(secret_path("/etc/pw"), "/etc/pw");
        assert_eq!(config_path("nginx.conf"), "/nginx.conf");
    }
}
