//! Wall-clock time for the node's side of swarmup (manager and worker alike), behind a
//! trait so tests can fix it. swarm-node re-exports this one; there is no other.

use std::sync::{Arc, Mutex};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Gives the current time; Docker's API writes it as RFC 3339 with nanoseconds, UTC.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;

    /// The current time as RFC 3339 text, the form Docker's API uses.
    fn now_rfc3339(&self) -> String {
        rfc3339(self.now())
    }
}

/// A clock shared by every part of a node.
pub type SharedClock = Arc<dyn Clock>;

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that says what it is told.
#[derive(Debug)]
pub struct FixedClock(Mutex<OffsetDateTime>);

impl FixedClock {
    /// `now` in RFC 3339; an unreadable time is the epoch.
    pub fn new(now: &str) -> Self {
        FixedClock(Mutex::new(
            parse_rfc3339(now).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ))
    }

    pub fn set(&self, now: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
