//! The server side of Raft RPC: three JSON endpoints that hand requests to the local node.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{typ, ClusterRaft, TypeConfig, RAFT_PATH_PREFIX};

/// Append batches and snapshot chunks are bigger than axum's 2 MiB default allows.
const MAX_RPC_BODY: usize = 64 << 20;

/// The Raft RPC routes (`POST {RAFT_PATH_PREFIX}/vote`, `/append`, `/snapshot`), to be
/// merged into the node's control API. They do no authorization of their own: the caller
/// must only let other managers through.
pub fn router(raft: ClusterRaft) -> Router {
    Router::new()
        .route(&format!("{RAFT_PATH_PREFIX}/vote"), post(vote))
        .route(&format!("{RAFT_PATH_PREFIX}/append"), post(append))
        .route(&format!("{RAFT_PATH_PREFIX}/snapshot"), post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(raft)
}

// Each handler answers 200 with the serialized `Result`, so a Raft-level error (for
// instance a stopped node) reaches the caller as a typed remote error.

async fn vote(
    State(raft): State<ClusterRaft>,
    Json(req): Json<VoteRequest<u64>>,
) -> Json<Result<VoteResponse<u64>, typ::RaftError>> {
    Json(raft.raft().vote(req).await)
}

async fn append(
    State(raft): State<ClusterRaft>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<u64>, typ::RaftError>> {
    Json(raft.raft().append_entries(req).await)
}

async fn snapshot(
    State(raft): State<ClusterRaft>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<u64>, typ::RaftError<InstallSnapshotError>>> {
    Json(raft.raft().install_snapshot(req).await)
}
