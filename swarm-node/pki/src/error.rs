use std::path::PathBuf;

/// Everything that can go wrong in this crate. Messages are one line, lowercase, and name
/// what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid join token: {0}")]
    InvalidToken(String),

    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),

    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    #[error("invalid private key: {0}")]
    InvalidKey(String),

    #[error("invalid signing request: {0}")]
    InvalidRequest(String),

    #[error("cannot create a certificate: {0}")]
    Generate(String),

    #[error("cannot build the tls configuration: {0}")]
    Tls(String),

    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the node identity in {} is unusable: {source}", dir.display())]
    UnusableIdentity {
        dir: PathBuf,
        #[source]
        source: Box<PkiError>,
    },

    #[error("the manager at {addr} presented a CA whose digest does not match the join token: check the token or the address")]
    CaDigestMismatch { addr: String },

    #[error("cannot fetch the root CA from {addr}: {reason}")]
    FetchCa { addr: String, reason: String },

    #[error("cannot build the http client: {0}")]
    HttpClient(String),
}

impl PkiError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PkiError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
