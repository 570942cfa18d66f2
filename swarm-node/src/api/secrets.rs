//! The Docker API's secrets and configs (`docker secret …`, `docker config …`), and the
//! secret and config references of service specs.
//!
//! The two kinds differ only in their size limit and in whether inspect shows the data
//! (configs do, secrets never), so one set of handlers serves both, told apart by
//! [`FileKind`]. The data is checked here and stored in the replicated state (encrypted
//! at rest by the Raft crate); it reaches a node only inside that node's assignments.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use swarm_state::models::{Config, ConfigSpec, Secret, SecretSpec, ServiceSpec};
use swarm_state::proto::FileData;
use swarm_state::secrets::{config_path, secret_path, FileKind};
use swarm_state::{ClusterState, Command};

use super::filters::Filters;
use super::{AdminManager, Ctx};
use crate::error::ApiError;
use crate::manager::Manager;

type ApiResult<T> = Result<T, ApiError>;

/// SwarmKit's limits: a secret's data is under 500 KiB, a config's under 1000 KiB.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/secrets", get(list_of::<Secrets>))
        .route("/secrets/create", post(create_of::<Secrets>))
        .route(
            "/secrets/{id}",
            get(inspect_secret).delete(remove_of::<Secrets>),
        )
        .route("/secrets/{id}/update", post(update_of::<Secrets>))
        .route("/configs", get(list_of::<Configs>))
        .route("/configs/create", post(create_of::<Configs>))
        .route(
            "/configs/{id}",
            get(inspect_config).delete(remove_of::<Configs>),
        )
        .route("/configs/{id}/update", post(update_of::<Configs>))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    filters: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    version: Option<String>,
}

fn max_bytes(kind: FileKind) -> usize {
    match kind {
        FileKind::Secret => MAX_SECRET_BYTES,
        FileKind::Config => MAX_CONFIG_BYTES,
    }
}

fn not_found(kind: FileKind, key: &str) -> ApiError {
    ApiError::NotFound(format!("{} {key} not found", kind.word()))
}

/// Decodes Docker's base64 data. Go clients send the standard alphabet (the swagger says
/// URL-safe), so both are accepted, padded or not; the error names the first bad byte as
/// Go's decoder does.
pub fn decode_data(data: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut first_error = None;
    for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        match engine.decode(data) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let offset = match first_error {
        Some(base64::DecodeError::InvalidByte(at, _)) => at,
        Some(base64::DecodeError::InvalidLastSymbol(at, _)) => at,
        _ => data.len(),
    };
    Err(format!("illegal base64 data at input byte {offset}"))
}

/// SwarmKit's rule for secret and config names.
fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(ok)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// What a create or update body says, whichever the kind.
#[derive(Debug, Default)]
struct Spec {
    name: String,
    labels: Option<HashMap<String, String>>,
    /// Decoded, for checks; stored again as standard base64.
    data: Option<Vec<u8>>,
}

fn parse_spec(kind: FileKind, body: &[u8]) -> ApiResult<Spec> {
    let word = kind.word();
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid {word} spec: {e}")))?;
    let bad = |e: serde_json::Error| ApiError::BadRequest(format!("invalid {word} spec: {e}"));
    let (name, labels, data, driver, templating) = match kind {
        FileKind::Secret => {
            let s: SecretSpec = serde_json::from_value(value).map_err(bad)?;
            (s.name, s.labels, s.data, s.driver, s.templating)
        }
        FileKind::Config => {
            let s: ConfigSpec = serde_json::from_value(value).map_err(bad)?;
            (s.name, s.labels, s.data, None, s.templating)
        }
    };
    if driver.is_some_and(|d| !d.name.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "{word} drivers are not supported by swarmup: give the {word}'s value itself (docker {word} create NAME FILE)"
        )));
    }
    if templating.is_some_and(|d| !d.name.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "templated {word}s are not supported by swarmup: give the {word}'s final value"
        )));
    }
    let data = data
        .map(|d| decode_data(&d))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("invalid {word} spec: {e}")))?;
    Ok(Spec {
        name: name.unwrap_or_default(),
        labels,
        data,
    })
}

fn check_new(kind: FileKind, spec: &Spec) -> ApiResult<()> {
    if !valid_name(&spec.name) {
        return Err(ApiError::BadRequest(format!(
            "rpc error: code = InvalidArgument desc = invalid name {:?}, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]",
            spec.name
        )));
    }
    let len = spec.data.as_ref().map_or(0, Vec::len);
    let max = max_bytes(kind);
    if len == 0 || len >= max {
        return Err(ApiError::BadRequest(format!(
            "rpc error: code = InvalidArgument desc = {} data must be larger than 0 and less than {max} bytes",
            kind.word()
        )));
    }
    Ok(())
}

async fn create(manager: &Manager, kind: FileKind, body: &[u8]) -> ApiResult<Response> {
    let spec = parse_spec(kind, body)?;
    check_new(kind, &spec)?;
    let exists = match kind {
        FileKind::Secret => manager
            .read()
            .secrets
            .values()
            .any(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(&spec.name)),
        FileKind::Config => manager
            .read()
            .configs
            .values()
            .any(|c| c.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(&spec.name)),
    };
    if exists {
        return Err(ApiError::Conflict(format!(
            "rpc error: code = AlreadyExists desc = {} {} already exists",
            kind.word(),
            spec.name
        )));
    }
    let id = Manager::new_id();
    let now = manager.now();
    // Stored as standard base64, whichever alphabet the client used.
    let data =
        FileData(base64::engine::general_purpose::STANDARD.encode(spec.data.unwrap_or_default()));
    let command = match kind {
        FileKind::Secret => Command::CreateSecret {
            secret: Box::new(Secret {
                id: Some(id.clone()),
                version: None,
                created_at: Some(now.clone()),
                updated_at: Some(now),
                spec: Some(SecretSpec {
                    name: Some(spec.name),
                    labels: Some(spec.labels.unwrap_or_default()),
                    data: None,
                    driver: None,
                    templating: None,
                }),
            }),
            data,
        },
        FileKind::Config => Command::CreateConfig {
            config: Box::new(Config {
                id: Some(id.clone()),
                version: None,
                created_at: Some(now.clone()),
                updated_at: Some(now),
                spec: Some(ConfigSpec {
                    name: Some(spec.name),
                    labels: Some(spec.labels.unwrap_or_default()),
                    data: None,
                    templating: None,
                }),
            }),
            data,
        },
    };
    manager.propose(command).await?;
    Ok((StatusCode::CREATED, Json(json!({ "ID": id }))).into_response())
}

/// A secret as the API shows it: never its data (the state keeps it apart anyway).
fn secret_view(secret: &Secret) -> Value {
    let mut secret = secret.clone();
    if let Some(spec) = secret.spec.as_mut() {
        spec.data = None;
    }
    serde_json::to_value(secret).unwrap_or_else(|_| json!({}))
}

/// A config as the API shows it: with its data, as Docker does.
fn config_view(state: &ClusterState, config: &Config) -> Value {
    let mut config = config.clone();
    let id = config.id.clone().unwrap_or_default();
    if let Some(spec) = config.spec.as_mut() {
        spec.data = state.file_data.get(&id).map(|d| d.0.clone());
    }
    serde_json::to_value(config).unwrap_or_else(|_| json!({}))
}

/// Docker's list filters: `names` exact, `name` a prefix, `id` an id prefix (any of
/// these may match), and every `label`.
fn list(state: &ClusterState, kind: FileKind, raw: Option<&str>) -> ApiResult<Vec<Value>> {
    let filters = Filters::parse(raw)?;
    filters.accept(&["id", "label", "name", "names"])?;
    let named = ["id", "name", "names"]
        .iter()
        .any(|k| filters.get(k).is_some());
    let keep = |id: &str, name: &str, labels: Option<&HashMap<String, String>>| {
        let by_name = !named
            || filters
                .get("names")
                .is_some_and(|v| v.iter().any(|n| n == name))
            || filters
                .get("name")
                .is_some_and(|v| v.iter().any(|n| name.starts_with(n.as_str())))
            || filters
                .get("id")
                .is_some_and(|v| v.iter().any(|p| id.starts_with(p.as_str())));
        by_name && filters.labels_match("label", labels)
    };
    Ok(match kind {
        FileKind::Secret => state
            .secrets
            .iter()
            .filter(|(id, s)| {
                let spec = s.spec.as_ref();
                keep(
                    id,
                    spec.and_then(|s| s.name.as_deref()).unwrap_or_default(),
                    spec.and_then(|s| s.labels.as_ref()),
                )
            })
            .map(|(_, s)| secret_view(s))
            .collect(),
        FileKind::Config => state
            .configs
            .iter()
            .filter(|(id, c)| {
                let spec = c.spec.as_ref();
                keep(
                    id,
                    spec.and_then(|s| s.name.as_deref()).unwrap_or_default(),
                    spec.and_then(|s| s.labels.as_ref()),
                )
            })
            .map(|(_, c)| config_view(state, c))
            .collect(),
    })
}

/// The id, version, name and decoded data of the object `key` names.
fn lookup(
    state: &ClusterState,
    kind: FileKind,
    key: &str,
) -> ApiResult<(String, u64, String, Vec<u8>)> {
    let (id, version, spec_name) = match kind {
        FileKind::Secret => {
            let s = state.find_secret(key).ok_or_else(|| not_found(kind, key))?;
            let spec = s.spec.clone().unwrap_or_default();
            (s.id.clone(), s.version.clone(), spec.name)
        }
        FileKind::Config => {
            let c = state.find_config(key).ok_or_else(|| not_found(kind, key))?;
            let spec = c.spec.clone().unwrap_or_default();
            (c.id.clone(), c.version.clone(), spec.name)
        }
    };
    let id = id.unwrap_or_default();
    // The data lives apart from the object (see `ClusterState::file_data`).
    let data = state
        .file_data
        .get(&id)
        .and_then(|d| decode_data(&d.0).ok())
        .unwrap_or_default();
    Ok((
        id,
        swarm_state::version_of(&version),
        spec_name.unwrap_or_default(),
        data,
    ))
}

async fn update(
    manager: &Manager,
    kind: FileKind,
    key: &str,
    raw_version: Option<&str>,
    body: &[u8],
) -> ApiResult<StatusCode> {
    let version = super::docker::required_version(kind.word(), raw_version)?;
    let spec = parse_spec(kind, body)?;
    let (id, _, name, data) = lookup(&manager.read(), kind, key)?;
    // As SwarmKit: the name must stay, and data may be sent again only unchanged (which
    // `docker stack deploy` does for every secret it finds).
    if spec.name != name || spec.data.as_ref().is_some_and(|d| *d != data) {
        return Err(ApiError::BadRequest(
            "rpc error: code = InvalidArgument desc = only updates to Labels are allowed".into(),
        ));
    }
    manager
        .propose(Command::UpdateFileLabels {
            kind,
            id,
            version,
            labels: Some(spec.labels.unwrap_or_default()),
            at: manager.now(),
        })
        .await?;
    Ok(StatusCode::OK)
}

async fn remove(manager: &Manager, kind: FileKind, key: &str) -> ApiResult<StatusCode> {
    let (id, ..) = lookup(&manager.read(), kind, key)?;
    manager.propose(Command::RemoveFile { kind, id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The kind a handler serves, as a type, so that one generic handler serves both
/// `/secrets` and `/configs`.
trait Kind {
    const KIND: FileKind;
}

struct Secrets;
struct Configs;

impl Kind for Secrets {
    const KIND: FileKind = FileKind::Secret;
}

impl Kind for Configs {
    const KIND: FileKind = FileKind::Config;
}

async fn list_of<K: Kind>(
    AdminManager(manager): AdminManager,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    list(&manager.read(), K::KIND, q.filters.as_deref()).map(Json)
}

async fn create_of<K: Kind>(
    AdminManager(manager): AdminManager,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    create(&manager, K::KIND, &body).await
}

async fn update_of<K: Kind>(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
    Query(q): Query<VersionQuery>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    update(&manager, K::KIND, &key, q.version.as_deref(), &body).await
}

async fn remove_of<K: Kind>(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    remove(&manager, K::KIND, &key).await
}

async fn inspect_secret(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
) -> ApiResult<Json<Value>> {
    let state = manager.read();
    let secret = state
        .find_secret(&key)
        .ok_or_else(|| not_found(FileKind::Secret, &key))?;
    Ok(Json(secret_view(secret)))
}

async fn inspect_config(
    AdminManager(manager): AdminManager,
    Path(key): Path<String>,
) -> ApiResult<Json<Value>> {
    let state = manager.read();
    let config = state
        .find_config(&key)
        .ok_or_else(|| not_found(FileKind::Config, &key))?;
    Ok(Json(config_view(&state, config)))
}

// === references in service specs ===

/// Checks a service spec's secret and config references as SwarmKit does, and fills in
/// an id from the name where a client gave only the name. Every reference needs a file
/// target, targets may not collide, and the objects must exist.
pub fn resolve_references(state: &ClusterState, spec: &mut ServiceSpec) -> ApiResult<()> {
    let Some(container) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
    else {
        return Ok(());
    };
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for r in container.secrets.iter_mut().flatten() {
        if r.secret_id.as_deref().unwrap_or_default().is_empty() {
            r.secret_id = r
                .secret_name
                .as_deref()
                .and_then(|n| state.find_secret(n))
                .and_then(|s| s.id.clone());
        }
        let name = r.secret_name.clone().or(r.secret_id.clone());
        let file = r.file.as_ref().map(|f| FileRef {
            name: f.name.as_deref(),
            uid: f.uid.as_deref(),
            gid: f.gid.as_deref(),
        });
        check_reference(
            FileKind::Secret,
            &name.unwrap_or_default(),
            file,
            &mut targets,
        )?;
    }
    for r in container.configs.iter_mut().flatten() {
        if r.config_id.as_deref().unwrap_or_default().is_empty() {
            r.config_id = r
                .config_name
                .as_deref()
                .and_then(|n| state.find_config(n))
                .and_then(|c| c.id.clone());
        }
        let name = r
            .config_name
            .clone()
            .or(r.config_id.clone())
            .unwrap_or_default();
        if r.runtime.is_some() {
            return Err(invalid(format!(
                "config {name}: runtime targets (credential specs) are not supported by swarmup: give a file target"
            )));
        }
        let file = r.file.as_ref().map(|f| FileRef {
            name: f.name.as_deref(),
            uid: f.uid.as_deref(),
            gid: f.gid.as_deref(),
        });
        check_reference(FileKind::Config, &name, file, &mut targets)?;
    }
    match state.missing_files(spec) {
        Some(why) => Err(ApiError::BadRequest(why)),
        None => Ok(()),
    }
}

fn invalid(m: String) -> ApiError {
    ApiError::BadRequest(format!("rpc error: code = InvalidArgument desc = {m}"))
}

/// The file part of a secret or config reference (two model types of one shape).
struct FileRef<'a> {
    name: Option<&'a str>,
    uid: Option<&'a str>,
    gid: Option<&'a str>,
}

/// One reference's file target: present, numeric owners, and a path in the container
/// that no other reference of the service takes.
fn check_reference(
    kind: FileKind,
    name: &str,
    file: Option<FileRef<'_>>,
    targets: &mut BTreeMap<String, String>,
) -> ApiResult<()> {
    let word = kind.word();
    let Some(file) = file else {
        return Err(invalid(format!(
            "malformed {word} reference {name}: give a file target"
        )));
    };
    let target = file.name.unwrap_or_default();
    if target.is_empty() {
        return Err(invalid(format!(
            "malformed file reference for {word} {name}: the target is empty"
        )));
    }
    check_ids(file.uid, file.gid, name)?;
    let path = match kind {
        FileKind::Secret => secret_path(target),
        FileKind::Config => config_path(target),
    };
    if let Some(other) = targets.insert(path, name.to_string()) {
        return Err(invalid(format!(
            "{word} references '{other}' and '{name}' have a conflicting target: '{target}'"
        )));
    }
    Ok(())
}

/// Owners are numeric, as the container's files are written on the host before its
/// users exist anywhere else.
fn check_ids(uid: Option<&str>, gid: Option<&str>, name: &str) -> ApiResult<()> {
    for (what, v) in [("uid", uid), ("gid", gid)] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            if v.parse::<u32>().is_err() {
                return Err(ApiError::BadRequest(format!(
                    "rpc error: code = InvalidArgument desc = {name}: {what} {v:?} must be a number"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_in_either_base64_alphabet_decodes() {
        assert_eq!(decode_data("aGk/Pz8=").unwrap(), b"hi???");
        assert_eq!(decode_data("aGk_Pz8=").unwrap(), b"hi???");
        assert_eq!(decode_data("aGk_Pz8").unwrap(), b"hi???");
        assert_eq!(
            decode_data("aGk!").unwrap_err(),
            "illegal base64 data at input byte 3"
        );
    }

    #[test]
    fn names_follow_swarmkits_rule() {
        assert!(valid_name("db_password.v2"));
        assert!(!valid_name("-db"));
        assert!(!valid_name("db."));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn sizes_are_bounded_per_kind() {
        let spec = |n: usize| Spec {
            name: "x".into(),
            data: Some(vec![b'a'; n]),
            ..Default::default()
        };
        assert!(check_new(FileKind::Secret, &spec(0)).is_err());
        assert!(check_new(FileKind::Secret, &spec(1)).is_ok());
        assert!(check_new(FileKind::Secret, &spec(MAX_SECRET_BYTES - 1)).is_ok());
        assert!(check_new(FileKind::Secret, &spec(MAX_SECRET_BYTES)).is_err());
        assert!(check_new(FileKind::Config, &spec(MAX_SECRET_BYTES)).is_ok());
        assert!(check_new(FileKind::Config, &spec(MAX_CONFIG_BYTES)).is_err());
    }

    #[test]
    fn an_update_may_send_the_same_data_again_but_not_other_data() {
        let mut state = ClusterState::default();
        let create = Command::CreateSecret {
            secret: Box::new(Secret {
                id: Some("s1".into()),
                spec: Some(SecretSpec {
                    name: Some("pw".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            data: FileData("YWJj".into()),
        };
        assert!(state.apply(&create, 1).error.is_none());
        let (id, version, name, data) = lookup(&state, FileKind::Secret, "pw").unwrap();
        assert_eq!((id.as_str(), version, name.as_str()), ("s1", 1, "pw"));
        assert_eq!(
            data, b"abc",
            "the stored data, for comparison with the update's"
        );
    }

    #[test]
    fn references_need_a_free_target_and_existing_objects() {
        use swarm_state::models::{
            TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
            TaskSpecContainerSpecSecrets,
        };
        let mut state = ClusterState::default();
        let create = Command::CreateSecret {
            secret: Box::new(Secret {
                id: Some("s1".into()),
                spec: Some(SecretSpec {
                    name: Some("pw".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            data: FileData("YWJj".into()),
        };
        state.apply(&create, 1);
        let reference = |target: Option<&str>, uid: &str| TaskSpecContainerSpecSecrets {
            file: target.map(|t| TaskSpecContainerSpecFile {
                name: Some(t.into()),
                uid: Some(uid.into()),
                gid: Some("0".into()),
                mode: Some(0o444),
            }),
            secret_id: None,
            secret_name: Some("pw".into()),
        };
        let spec = |refs: Vec<TaskSpecContainerSpecSecrets>| ServiceSpec {
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    secrets: Some(refs),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ok = spec(vec![reference(Some("pw"), "1000")]);
        resolve_references(&state, &mut ok).unwrap();
        let resolved = ok
            .task_template
            .unwrap()
            .container_spec
            .unwrap()
            .secrets
            .unwrap();
        assert_eq!(
            resolved[0].secret_id.as_deref(),
            Some("s1"),
            "the id from the name"
        );
        let err = |mut s: ServiceSpec| resolve_references(&state, &mut s).unwrap_err().to_string();
        assert!(err(spec(vec![reference(None, "0")])).contains("give a file target"));
        assert!(err(spec(vec![reference(Some("pw"), "bob")])).contains("must be a number"));
        assert!(err(spec(vec![
            reference(Some("pw"), "0"),
            reference(Some("/run/secrets/pw"), "0")
        ]))
        .contains("have a conflicting target"));
    }

    #[test]
    fn drivers_and_templates_are_refused() {
        let body = br#"{"Name":"x","Data":"eA==","Driver":{"Name":"vault"}}"#;
        assert!(parse_spec(FileKind::Secret, body)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        let body = br#"{"Name":"x","Data":"eA==","Templating":{"Name":"golang"}}"#;
        assert!(parse_spec(FileKind::Config, body).is_err());
    }
}
