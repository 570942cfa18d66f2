//! The client side of Raft RPC: JSON over HTTP(S) to a peer's control address.
//!
//! One `reqwest::Client` (configured by the caller, with mutual TLS in production) is
//! shared by every connection, so its connection pool carries all Raft traffic.

use std::fmt::Debug;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::typ;
use crate::{MemberNode, TypeConfig, RAFT_PATH_PREFIX};

/// The largest append request sent in one RPC, serialized: half the body limit of the
/// receiving side (`server::MAX_RPC_BODY`, 64 MiB), for headroom. A batch above it is
/// handed back to openraft as `PayloadTooLarge` with a smaller entry count, so several
/// large entries queued together never make a request no follower accepts. A single
/// entry always fits: proposals are capped at `MAX_PROPOSAL_BYTES`.
pub(crate) const MAX_APPEND_BYTES: usize = 32 << 20;

/// Whether an append of `entries` entries serialized to `bytes` must be split, and into
/// how many entries at most per request.
pub(crate) fn split_hint(entries: usize, bytes: usize) -> Option<u64> {
    (entries > 1 && bytes > MAX_APPEND_BYTES).then(|| (entries / 2).max(1) as u64)
}

/// Builds one [`Connection`] per peer for openraft.
pub(crate) struct Network {
    client: reqwest::Client,
    scheme: String,
    id: u64,
}

impl Network {
    pub(crate) fn new(client: reqwest::Client, scheme: String, id: u64) -> Self {
        Network { client, scheme, id }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Connection {
        Connection {
            client: self.client.clone(),
            base: format!("{}://{}{RAFT_PATH_PREFIX}", self.scheme, node.addr),
            id: self.id,
            target,
            target_node: node.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub(crate) struct Connection {
    client: reqwest::Client,
    /// `{scheme}://{addr}/swarmup/v1/raft`.
    base: String,
    id: u64,
    target: u64,
    target_node: MemberNode,
}

/// A peer answered with something other than a Raft result (a proxy, the caller's
/// authorization layer, a daemon without Raft).
#[derive(Debug, thiserror::Error)]
#[error("raft rpc to {url} failed with http status {status}: {body}")]
struct HttpStatusError {
    url: String,
    status: reqwest::StatusCode,
    body: String,
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, typ::RPCError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(action, path, body, option).await
    }

    async fn send<Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, typ::RPCError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}/{path}", self.base);
        let timeout = option.hard_ttl();
        let transport = |e: reqwest::Error| -> typ::RPCError<E> {
            if e.is_connect() {
                // openraft backs off from an unreachable peer instead of retrying hot.
                RPCError::Unreachable(Unreachable::new(&e))
            } else if e.is_timeout() {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout,
                })
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        };
        let resp = self
            .client
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let mut body = resp.text().await.unwrap_or_default();
            body.truncate(200);
            return Err(RPCError::Network(NetworkError::new(&HttpStatusError {
                url,
                status,
                body,
            })));
        }
        // The server serializes the whole Result, so a Raft-level refusal arrives typed.
        let result: Result<Resp, typ::RaftError<E>> = resp.json().await.map_err(transport)?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.target_node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, typ::RPCError> {
        let body =
            serde_json::to_vec(&req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(hint) = split_hint(req.entries.len(), body.len()) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send(RPCTypes::AppendEntries, "append", body, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, typ::RPCError<InstallSnapshotError>> {
        self.call(RPCTypes::InstallSnapshot, "snapshot", &req, &option)
            .await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, typ::RPCError> {
        self.call(RPCTypes::Vote, "vote", &req, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_append_batches_are_split() {
        assert_eq!(split_hint(300, 1024), None);
        assert_eq!(
            split_hint(1, MAX_APPEND_BYTES * 2),
            None,
            "one entry always goes"
        );
        assert_eq!(split_hint(10, MAX_APPEND_BYTES + 1), Some(5));
        assert_eq!(split_hint(3, MAX_APPEND_BYTES + 1), Some(1));
    }
}
