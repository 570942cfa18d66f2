//! Docker-style security for a swarm: the cluster root CA, node certificates that carry
//! the node's role and id, join tokens in Docker's format, and the mutual-TLS server and
//! client plumbing every node uses on its control port.
//!
//! The trust model follows SwarmKit. The root CA signs every node certificate; its
//! subject is CN = node id, OU = role, O = cluster id. A joining node has no certificate
//! yet: it downloads the root CA without verifying the server ([`fetch_ca_pinned`]) and
//! trusts it only if its digest equals the one in the join token, then sends a CSR with
//! the token over a connection verified against that CA ([`bootstrap_client`]). From then
//! on every call is mutual TLS and the server learns the caller's identity from its
//! certificate ([`Peer`]).

mod ca;
mod error;
mod identity;
mod pem;
mod serve;
mod tls;
mod token;

pub use ca::{
    check_hostname, NodeKey, RootCa, SignRequest, ADMIN_CERT_VALIDITY, CA_VALIDITY,
    NODE_CERT_VALIDITY,
};
pub use error::PkiError;
pub use identity::{
    certificate_validity, renewal_plan, Identity, PeerIdentity, RenewalPlan, Role, CA_CERT_FILE,
    CERTIFICATES_DIR, LOCAL_ADMIN_NAME, NODE_CERT_FILE, NODE_KEY_FILE, OU_ADMIN,
};
pub use serve::{
    serve_tls, serve_tls_with, serve_unix, serve_unix_with, Origin, Peer, ServeOptions,
};
pub use tls::{
    bootstrap_client, ca_digest, client_config, crypto_provider, fetch_ca_pinned, http_client,
    server_config, ClientIdentityHandle, TlsAcceptorHandle, CA_PATH,
};
pub use token::{tokens_match, JoinToken, ParsedToken};
