//! Limits on what one caller may hold of a manager at once.
//!
//! A long poll (`assignments`, `netmap`) holds a request open for up to ten seconds, and
//! a node needs one of each: a certificate that opens hundreds would hold as many
//! watchers of the cluster state, each woken and each cloning the state on every commit.
//! So each node may have [`MAX_LONG_POLLS_PER_NODE`] of each kind open on a manager;
//! beyond that the call is answered `429 Too Many Requests` at once, with Docker's error
//! body. The worker's agent backs off after an error, so a node that somehow exceeds
//! the cap slows down rather than spins.
//!
//! Calls anyone may make without a certificate (`join`) read small bodies only
//! ([`small_body`]): a join request is a CSR and a token, about two kilobytes.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, Mutex};

use axum::extract::{DefaultBodyLimit, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::MethodRouter;
use serde::Deserialize;
use swarm_pki::{Peer, Role};

use crate::error::error_response;

/// Long polls of one kind that one node may have open on a manager at once (a node's
/// agent uses one; a few more cover a poll the node gave up on that the manager has not
/// noticed yet).
pub const MAX_LONG_POLLS_PER_NODE: usize = 4;

/// The largest body [`small_body`] routes read.
pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;

/// `route` with bodies limited to [`MAX_SMALL_BODY_BYTES`], a larger one answered 413
/// with Docker's body naming that limit.
pub fn small_body<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    route
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES))
        .layer(axum::middleware::map_response(
            |response: Response| async move {
                if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "request body too large: the limit is {MAX_SMALL_BODY_BYTES} bytes"
                        ),
                    )
                } else {
                    response
                }
            },
        ))
}

/// Which long poll a slot is for.
pub trait PollKind {
    const NAME: &'static str;
}

/// The `assignments` long poll.
#[derive(Debug)]
pub struct OfAssignments;

impl PollKind for OfAssignments {
    const NAME: &'static str = "assignments";
}

/// The `netmap` long poll.
#[derive(Debug)]
pub struct OfNetmap;

impl PollKind for OfNetmap {
    const NAME: &'static str = "netmap";
}

/// Who holds a long poll: the caller's node and the node it asks about (a manager may
/// ask about others; a worker only about itself).
type PollKey = (&'static str, String, String);

/// Counts of open long polls, with a cap per key.
#[derive(Debug)]
pub struct LongPolls {
    cap: usize,
    open: Arc<Mutex<HashMap<PollKey, usize>>>,
}

/// One open long poll; dropping it (when the handler answers or the client goes away)
/// frees its place.
#[derive(Debug)]
pub struct PollPermit {
    open: Arc<Mutex<HashMap<PollKey, usize>>>,
    key: PollKey,
}

impl Drop for PollPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl LongPolls {
    pub fn new(cap: usize) -> LongPolls {
        LongPolls {
            cap,
            open: Arc::default(),
        }
    }

    /// A place for one more long poll of `kind` by `caller` about `node`, if the cap
    /// allows.
    pub fn try_start(&self, kind: &'static str, caller: &str, node: &str) -> Option<PollPermit> {
        let key = (kind, caller.to_owned(), node.to_owned());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.entry(key.clone()).or_default();
        if *held >= self.cap {
            return None;
        }
        *held += 1;
        Some(PollPermit {
            open: self.open.clone(),
            key,
        })
    }
}

/// The node's long polls (one process serves one node).
static LONG_POLLS: LazyLock<LongPolls> = LazyLock::new(|| LongPolls::new(MAX_LONG_POLLS_PER_NODE));

#[derive(Debug, Deserialize)]
struct NodeParam {
    node: String,
}

/// An extractor that holds a place for a long poll of kind `K` for as long as the
/// handler runs, or answers 429. Callers that are not nodes, and requests without a
/// `node` parameter, take no place: the handler refuses them itself.
#[derive(Debug)]
pub struct LongPollSlot<K: PollKind> {
    _permit: Option<PollPermit>,
    _kind: PhantomData<K>,
}

impl<K: PollKind, S: Send + Sync> FromRequestParts<S> for LongPollSlot<K> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let caller = parts
            .extensions
            .get::<Peer>()
            .and_then(|p| p.identity.clone())
            .filter(|i| matches!(i.role, Role::Worker | Role::Manager));
        let node = Query::<NodeParam>::try_from_uri(&parts.uri).ok();
        let (Some(caller), Some(Query(NodeParam { node }))) = (caller, node) else {
            return Ok(LongPollSlot {
                _permit: None,
                _kind: PhantomData,
            });
        };
        match LONG_POLLS.try_start(K::NAME, &caller.node_id, &node) {
            Some(permit) => Ok(LongPollSlot {
                _permit: Some(permit),
                _kind: PhantomData,
            }),
            None => Err(error_response(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "node {} already has {MAX_LONG_POLLS_PER_NODE} {} requests open: wait for one to answer",
                    caller.node_id,
                    K::NAME
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_has_its_own_cap_per_kind() {
        let polls = LongPolls::new(2);
        let a = polls.try_start("assignments", "w1", "w1").unwrap();
        let _b = polls.try_start("assignments", "w1", "w1").unwrap();
        assert!(polls.try_start("assignments", "w1", "w1").is_none());
        // Another kind, another node, or a manager asking about w1 are counted apart.
        assert!(polls.try_start("netmap", "w1", "w1").is_some());
        assert!(polls.try_start("assignments", "w2", "w2").is_some());
        assert!(polls.try_start("assignments", "m1", "w1").is_some());
        // A finished poll frees its place.
        drop(a);
        assert!(polls.try_start("assignments", "w1", "w1").is_some());
    }

    #[test]
    fn finished_polls_leave_no_entries() {
        let polls = LongPolls::new(1);
        drop(polls.try_start("netmap", "w1", "w1").unwrap());
        assert!(polls.open.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn small_body_routes_refuse_large_bodies_under_a_larger_default() {
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/join",
                small_body(axum::routing::post(|body: String| async move {
                    body.len().to_string()
                })),
            )
            .layer(DefaultBodyLimit::max(2 * 1024 * 1024));
        let call = |size: usize| {
            let app = app.clone();
            async move {
                let request = axum::http::Request::post("/join")
                    .body(axum::body::Body::from(vec![b'a'; size]))
                    .unwrap();
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        assert_eq!(call(2000).await, (StatusCode::OK, "2000".to_string()));
        let (status, body) = call(MAX_SMALL_BODY_BYTES + 1).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            body,
            r#"{"message":"request body too large: the limit is 65536 bytes"}"#
        );
    }

    async fn extract(peer: Option<Peer>, uri: &str) -> Result<(), StatusCode> {
        let mut request = axum::http::Request::builder().uri(uri).body(()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let (mut parts, ()) = request.into_parts();
        // Held until the end of the test's scope by leaking: each call counts.
        match LongPollSlot::<OfNetmap>::from_request_parts(&mut parts, &()).await {
            Ok(slot) => {
                std::mem::forget(slot);
                Ok(())
            }
            Err(response) => Err(response.status()),
        }
    }

    #[tokio::test]
    async fn the_cap_answers_429_and_skips_callers_the_handler_refuses() {
        let worker = Peer {
            identity: Some(swarm_pki::PeerIdentity {
                node_id: "limits-test-worker".into(),
                role: Role::Worker,
                cluster_id: "c".into(),
            }),
            origin: swarm_pki::Origin::Unknown,
        };
        let uri = "/swarmup/v1/netmap?node=limits-test-worker&since=3";
        for _ in 0..MAX_LONG_POLLS_PER_NODE {
            assert_eq!(extract(Some(worker.clone()), uri).await, Ok(()));
        }
        assert_eq!(
            extract(Some(worker.clone()), uri).await,
            Err(StatusCode::TOO_MANY_REQUESTS)
        );
        // Anonymous callers and requests without a node take no place.
        for _ in 0..10 {
            assert_eq!(extract(None, uri).await, Ok(()));
            assert_eq!(
                extract(Some(worker.clone()), "/swarmup/v1/netmap").await,
                Ok(())
            );
        }
    }
}
