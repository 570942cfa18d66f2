use crate::ProviderError;

/// What went wrong talking to the DigitalOcean API. Every message is one line that names
/// the request and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DoError {
    #[error("invalid DigitalOcean api url {url}: {reason}")]
    BadUrl { url: String, reason: String },

    #[error("could not set up the https client for {url}: {detail}")]
    Client { url: String, detail: String },

    #[error(
        "the DigitalOcean api token was rejected ({message}): check the token, or create one \
         with read and write scope at https://cloud.digitalocean.com/account/api/tokens"
    )]
    Unauthorized { message: String },

    #[error("{method} {path}: not found ({message})")]
    NotFound {
        method: String,
        path: String,
        message: String,
    },

    #[error("DigitalOcean refused {method} {path} with {status} {id}: {message}")]
    Refused {
        method: String,
        path: String,
        status: u16,
        id: String,
        message: String,
    },

    #[error(
        "DigitalOcean kept rate limiting {method} {path} ({}, {message}): \
         wait a few minutes and run the command again",
        attempts_text(*.attempts)
    )]
    RateLimited {
        method: String,
        path: String,
        attempts: u32,
        message: String,
    },

    #[error(
        "DigitalOcean answered {status} to {method} {path} ({}, {message}): \
         the service may be having trouble, check https://status.digitalocean.com and run \
         the command again",
        attempts_text(*.attempts)
    )]
    Server {
        method: String,
        path: String,
        status: u16,
        attempts: u32,
        message: String,
    },

    #[error("lost the connection to {host} during {method} {path} ({detail}): {advice}")]
    Connection {
        host: String,
        method: String,
        path: String,
        detail: String,
        advice: &'static str,
    },

    #[error("unexpected answer to {method} {path}: {detail}")]
    Decode {
        method: String,
        path: String,
        detail: String,
    },

    #[error(
        "gave up on {method} {path} after {elapsed_secs} s: the next wait of {wait_secs} s \
         would pass the {deadline_secs} s deadline (last answer: {last}): run the command again later"
    )]
    Deadline {
        method: String,
        path: String,
        elapsed_secs: u64,
        wait_secs: u64,
        deadline_secs: u64,
        last: String,
    },
}

impl DoError {
    /// The HTTP status DigitalOcean answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            DoError::Unauthorized { .. } => Some(401),
            DoError::NotFound { .. } => Some(404),
            DoError::Refused { status, .. } | DoError::Server { status, .. } => Some(*status),
            DoError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, DoError::NotFound { .. })
    }
}

impl From<DoError> for ProviderError {
    fn from(e: DoError) -> Self {
        match e {
            DoError::Unauthorized { .. } | DoError::BadUrl { .. } | DoError::Client { .. } => {
                ProviderError::Prerequisite(e.to_string())
            }
            other => ProviderError::Api(other.to_string()),
        }
    }
}

fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// DigitalOcean messages are prose that may span lines; keep every error on one line.
pub(crate) fn one_line(s: &str) -> String {
    let joined: Vec<&str> = s.split_whitespace().collect();
    let line = joined.join(" ");
    line.trim_end_matches('.').to_string()
}
