use serde::{Deserialize, Serialize};

/// Which requests a fault hits; an empty matcher hits every API request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Matcher {
    /// `GET`, `POST`, ... (any case).
    pub method: Option<String>,
    /// e.g. `/v2/droplets`.
    pub path_prefix: Option<String>,
}

impl Matcher {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

/// Answer the next `count` matching requests with 429 and `retry-after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitFault {
    pub count: u32,
    pub retry_after_secs: u64,
    #[serde(flatten)]
    pub on: Matcher,
}

impl Default for RateLimitFault {
    fn default() -> Self {
        Self {
            count: 1,
            retry_after_secs: 1,
            on: Matcher::default(),
        }
    }
}

/// Answer the next `count` matching requests with a 5xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerErrorFault {
    pub count: u32,
    pub status: u16,
    #[serde(flatten)]
    pub on: Matcher,
}

impl Default for ServerErrorFault {
    fn default() -> Self {
        Self {
            count: 1,
            status: 500,
            on: Matcher::default(),
        }
    }
}

/// Close the connection of the next `count` matching requests without an answer, before
/// handling them or, with `after_handling`, after (the request took effect but the client
/// never hears of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DropFault {
    pub count: u32,
    pub after_handling: bool,
    #[serde(flatten)]
    pub on: Matcher,
}

impl Default for DropFault {
    fn default() -> Self {
        Self {
            count: 1,
            after_handling: false,
            on: Matcher::default(),
        }
    }
}

/// The next `count` droplet create calls make only their first `succeed` droplets and
/// answer `status` for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartialCreateFault {
    pub count: u32,
    pub succeed: u32,
    pub status: u16,
}

impl Default for PartialCreateFault {
    fn default() -> Self {
        Self {
            count: 1,
            succeed: 1,
            status: 500,
        }
    }
}

/// What `POST /_fake/faults` takes and [`crate::FakeDo::set_faults`] applies. Fields left
/// out keep their current value. The counted faults wear off; the settings below them
/// stay until changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub rate_limit: Option<RateLimitFault>,
    pub server_error: Option<ServerErrorFault>,
    pub drop_connection: Option<DropFault>,
    pub partial_create: Option<PartialCreateFault>,
    /// The account's `droplet_limit`.
    pub droplet_limit: Option<u32>,
    /// How long a new droplet stays `new`.
    pub boot_delay_ms: Option<u64>,
    /// How long a power action stays `in-progress`.
    pub action_delay_ms: Option<u64>,
    /// Sets `ratelimit-remaining`, which then counts down by one per request.
    pub ratelimit_remaining: Option<u64>,
    /// How long every API request takes before it is answered, like a round trip to a
    /// far-away API.
    pub api_latency_ms: Option<u64>,
}

/// What the gate decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Injected {
    Drop { after_handling: bool },
    RateLimit { retry_after_secs: u64 },
    ServerError { status: u16 },
}

impl Faults {
    /// Takes one use of the first counted fault that matches.
    pub(crate) fn take(&mut self, method: &str, path: &str) -> Option<Injected> {
        if let Some(f) = &mut self.drop_connection {
            if f.count > 0 && f.on.matches(method, path) {
                f.count -= 1;
                let hit = Injected::Drop {
                    after_handling: f.after_handling,
                };
                if f.count == 0 {
                    self.drop_connection = None;
                }
                return Some(hit);
            }
        }
        if let Some(f) = &mut self.rate_limit {
            if f.count > 0 && f.on.matches(method, path) {
                f.count -= 1;
                let hit = Injected::RateLimit {
                    retry_after_secs: f.retry_after_secs,
                };
                if f.count == 0 {
                    self.rate_limit = None;
                }
                return Some(hit);
            }
        }
        if let Some(f) = &mut self.server_error {
            if f.count > 0 && f.on.matches(method, path) {
                f.count -= 1;
                let hit = Injected::ServerError { status: f.status };
                if f.count == 0 {
                    self.server_error = None;
                }
                return Some(hit);
            }
        }
        None
    }

    /// Takes one use of the partial-create fault: how many droplets to make.
    pub(crate) fn take_partial(&mut self) -> Option<(u32, u16)> {
        let f = self.partial_create.as_mut()?;
        if f.count == 0 {
            self.partial_create = None;
            return None;
        }
        f.count -= 1;
        let hit = (f.succeed, f.status);
        if f.count == 0 {
            self.partial_create = None;
        }
        Some(hit)
    }

    /// Overlays the counted faults of `other`; the settings are applied by the caller.
    pub(crate) fn merge_counted(&mut self, other: &Faults) {
        if other.rate_limit.is_some() {
            self.rate_limit = other.rate_limit.clone();
        }
        if other.server_error.is_some() {
            self.server_error = other.server_error.clone();
        }
        if other.drop_connection.is_some() {
            self.drop_connection = other.drop_connection.clone();
        }
        if other.partial_create.is_some() {
            self.partial_create = other.partial_create.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_wear_off_and_respect_matchers() {
        let mut f: Faults = serde_json::from_str(
            r#"{"server_error":{"count":2,"status":503,"method":"GET"},
                "rate_limit":{"count":1,"retry_after_secs":3,"path_prefix":"/v2/sizes"}}"#,
        )
        .unwrap();
        assert_eq!(f.take("POST", "/v2/droplets"), None);
        assert_eq!(
            f.take("GET", "/v2/sizes"),
            Some(Injected::RateLimit {
                retry_after_secs: 3
            })
        );
        assert_eq!(
            f.take("GET", "/v2/sizes"),
            Some(Injected::ServerError { status: 503 })
        );
        assert_eq!(
            f.take("GET", "/v2/account"),
            Some(Injected::ServerError { status: 503 })
        );
        assert_eq!(f.take("GET", "/v2/account"), None);
        assert_eq!(f, Faults::default());
    }
}
