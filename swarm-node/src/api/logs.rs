//! `docker service logs SERVICE|TASK`: the leader asks each task's node for its
//! container's log (through that node's own engine endpoint, see [`super::proxy`]) and
//! multiplexes them in Docker's stream format, every line prefixed with the details the
//! docker CLI reads (`com.docker.swarm.node.id=...,com.docker.swarm.service.id=...,
//! com.docker.swarm.task.id=...`). With `follow`, tasks that start later join the stream,
//! which ends when the client goes. A manager that is not the leader hands the request
//! to the leader, which knows where every node listens (its heartbeats say).

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use swarm_pki::Peer;
use swarm_state::models::Task;
use swarm_state::proto::PREFIX;
use tokio::sync::mpsc;

use super::{require_admin, Ctx};
use crate::error::{ApiError, NO_LEADER};
use crate::manager::Manager;

/// The query of Docker's logs endpoints, as the docker CLI sends it.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct LogsQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    tail: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    // `details` is not read: every line carries the swarm details, which the docker CLI
    // needs to name the task (it always asks for them).
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1") | Some("true") | Some("True"))
}

impl LogsQuery {
    /// The query the engine gets for one container.
    fn engine_query(&self) -> String {
        let mut q = vec![
            format!(
                "stdout={}",
                u8::from(flag(&self.stdout) || self.stdout.is_none())
            ),
            format!(
                "stderr={}",
                u8::from(flag(&self.stderr) || self.stderr.is_none())
            ),
            format!("follow={}", u8::from(flag(&self.follow))),
            format!("timestamps={}", u8::from(flag(&self.timestamps))),
        ];
        if let Some(t) = self.tail.as_deref().filter(|t| !t.is_empty()) {
            q.push(format!("tail={}", urlencode(t)));
        }
        if let Some(s) = self.since.as_deref().filter(|s| !s.is_empty()) {
            q.push(format!("since={}", urlencode(s)));
        }
        q.join("&")
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One line of Docker's multiplexed stream: stream 1 (stdout) or 2 (stderr).
fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.freeze()
}

/// The details prefix of a task's lines, as dockerd writes it for service logs.
fn details(task: &Task) -> String {
    format!(
        "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={}",
        task.node_id.as_deref().unwrap_or_default(),
        task.service_id.as_deref().unwrap_or_default(),
        task.id.as_deref().unwrap_or_default(),
    )
}

/// Inserts the details into one engine line: after the timestamp when there is one.
fn with_details(line: &[u8], details: &str, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + details.len() + 2);
    if timestamps {
        if let Some(space) = line.iter().position(|b| *b == b' ') {
            out.extend_from_slice(&line[..=space]);
            out.extend_from_slice(details.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&line[space + 1..]);
            return out;
        }
    }
    out.extend_from_slice(details.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line);
    out
}

/// Splits whole frames off the front of `buf` (Docker's 8-byte header + payload).
fn take_frames(buf: &mut BytesMut) -> Vec<(u8, Bytes)> {
    let mut frames = Vec::new();
    while buf.len() >= 8 {
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            break;
        }
        let stream = buf[0];
        buf.advance(8);
        frames.push((stream, buf.split_to(len).freeze()));
    }
    frames
}

/// The container of a task, once its node reported one.
fn container_of(task: &Task) -> Option<String> {
    task.status
        .as_ref()?
        .container_status
        .as_ref()?
        .container_id
        .clone()
        .filter(|c| !c.is_empty())
}

/// Streams one task's log into `out`; returns when it ends or the client has gone.
async fn stream_task(
    manager: &Manager,
    task: Task,
    node_addr: String,
    query: LogsQuery,
    out: mpsc::Sender<Bytes>,
) {
    let Some(container) = container_of(&task) else {
        return;
    };
    let timestamps = flag(&query.timestamps);
    let details = details(&task);
    let url = format!(
        "{}://{node_addr}/v1.41/containers/{container}/logs?{}",
        manager.scheme,
        query.engine_query()
    );
    let mut response = match manager.nodes.get(url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            tracing::debug!(task = ?task.id, status = %r.status(), "task log unavailable");
            return;
        }
        Err(e) => {
            tracing::debug!(task = ?task.id, error = %e, "task log unavailable");
            return;
        }
    };
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            () = out.closed() => return,
        };
        let Ok(Some(chunk)) = chunk else { return };
        buf.extend_from_slice(&chunk);
        for (stream, payload) in take_frames(&mut buf) {
            let line = with_details(&payload, &details, timestamps);
            if out.send(frame(stream, &line)).await.is_err() {
                return;
            }
        }
    }
}

/// Which tasks a logs request covers.
#[derive(Debug, Clone)]
enum Subject {
    Service(String),
    Task(String),
}

impl Subject {
    fn tasks(&self, manager: &Manager) -> Result<Vec<Task>, ApiError> {
        let state = manager.read();
        match self {
            Subject::Service(key) => {
                let service = state
                    .find_service(key)
                    .ok_or_else(|| ApiError::NotFound(format!("service {key} not found")))?;
                let id = service.id.clone().unwrap_or_default();
                Ok(state.tasks_of_service(&id).cloned().collect())
            }
            Subject::Task(key) => {
                let task = state
                    .tasks
                    .get(key)
                    .map(|t| &**t)
                    .or_else(|| {
                        let matches: Vec<&Task> = state
                            .tasks
                            .values()
                            .map(|t| &**t)
                            .filter(|t| {
                                t.id.as_deref()
                                    .is_some_and(|id| id.starts_with(key.as_str()))
                            })
                            .collect();
                        (matches.len() == 1).then(|| matches[0])
                    })
                    .ok_or_else(|| ApiError::NotFound(format!("task {key} not found")))?;
                Ok(vec![(*task).clone()])
            }
        }
    }
}

async fn logs(
    ctx: Ctx,
    peer: Peer,
    subject: Subject,
    query: LogsQuery,
    path_and_query: String,
) -> Result<Response, ApiError> {
    require_admin(&ctx, &peer)?;
    let manager = ctx.require_manager()?;
    // Refuse an unknown service or task here rather than after a hand-over.
    let tasks = subject.tasks(&manager)?;
    if !manager.raft.is_leader() {
        return hand_to_leader(&manager, &path_and_query).await;
    }
    let follow = flag(&query.follow);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let manager_for_streams = manager.clone();
    tokio::spawn(async move {
        let manager = manager_for_streams;
        let mut started: HashSet<String> = HashSet::new();
        let mut streams = tokio::task::JoinSet::new();
        let mut tasks = tasks;
        loop {
            for task in tasks {
                let Some(id) = task.id.clone() else { continue };
                let (Some(_), Some(node)) = (container_of(&task), task.node_id.clone()) else {
                    continue;
                };
                let Some(addr) = manager.dispatcher.control_addr(&node) else {
                    continue;
                };
                if !started.insert(id) {
                    continue;
                }
                let (manager, query, tx) = (manager.clone(), query.clone(), tx.clone());
                streams.spawn(async move { stream_task(&manager, task, addr, query, tx).await });
            }
            if !follow {
                while streams.join_next().await.is_some() {}
                return;
            }
            // Following: tasks that start later join; the client leaving ends it all.
            tokio::select! {
                () = tx.closed() => {
                    streams.abort_all();
                    return;
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tasks = match subject.tasks(&manager) {
                Ok(t) => t,
                Err(_) => return,
            };
        }
    });
    let body = body_of(rx);
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "application/vnd.docker.multiplexed-stream",
        )],
        body,
    )
        .into_response())
}

/// A response body fed by a channel of chunks.
fn body_of(rx: mpsc::Receiver<Bytes>) -> Body {
    use futures_util::StreamExt;
    Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, std::io::Error>),
    )
}

/// A follower passes the request to the leader and streams its answer back.
async fn hand_to_leader(manager: &Manager, path_and_query: &str) -> Result<Response, ApiError> {
    let Some((_, leader)) = manager.raft.leader() else {
        return Err(ApiError::Unavailable(NO_LEADER.into()));
    };
    let url = format!("{}://{}{path_and_query}", manager.scheme, leader.addr);
    let mut response = manager.peers.get(url).send().await.map_err(|e| {
        ApiError::Unavailable(format!("cannot reach the leader at {}: {e}", leader.addr))
    })?;
    let status = response.status();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = response.chunk().await {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let body = body_of(rx);
    Ok((status, body).into_response())
}

pub async fn service_logs(
    State(ctx): State<Ctx>,
    peer: Peer,
    Path(key): Path<String>,
    Query(query): Query<LogsQuery>,
    uri: super::proxy::OriginalUri,
) -> Result<Response, ApiError> {
    let pq = path_of(&uri.0);
    logs(ctx, peer, Subject::Service(key), query, pq).await
}

pub async fn task_logs(
    State(ctx): State<Ctx>,
    peer: Peer,
    Path(key): Path<String>,
    Query(query): Query<LogsQuery>,
    uri: super::proxy::OriginalUri,
) -> Result<Response, ApiError> {
    let pq = path_of(&uri.0);
    logs(ctx, peer, Subject::Task(key), query, pq).await
}

fn path_of(uri: &http::Uri) -> String {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // Not under the internal prefix: this is the Docker API's own path.
    debug_assert!(!pq.starts_with(PREFIX));
    pq.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_and_lines_get_their_details() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(1, b"hello\n"));
        buf.extend_from_slice(&frame(2, b"oops\n")[..6]);
        let frames = take_frames(&mut buf);
        assert_eq!(frames, vec![(1, Bytes::from_static(b"hello\n"))]);
        assert_eq!(buf.len(), 6, "a partial frame waits for the rest");
        let line = with_details(b"2026-12-05T10:00:00.000000000Z hello\n", "a=b", true);
        assert_eq!(line, b"2026-12-05T10:00:00.000000000Z a=b hello\n");
        assert_eq!(with_details(b"hello\n", "a=b", false), b"a=b hello\n");
    }

    #[test]
    fn the_engine_gets_docker_s_query() {
        let q = LogsQuery {
            follow: Some("1".into()),
            tail: Some("all".into()),
            since: Some("2026-12-05T10:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            q.engine_query(),
            "stdout=1&stderr=1&follow=1&timestamps=0&tail=all&since=2026-12-05T10%3A00%3A00Z"
        );
    }
}
