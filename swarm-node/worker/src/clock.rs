//! Wall-clock time for report timestamps, behind a trait so tests can fix it.

use std::sync::Mutex;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time as RFC 3339 text, the form Docker's API uses.
    fn now(&self) -> String;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> String {
        OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
    }
}

/// A clock that says what it is told.
#[derive(Debug)]
pub struct FixedClock(Mutex<String>);

impl FixedClock {
    pub fn new(now: &str) -> Self {
        FixedClock(Mutex::new(now.to_string()))
    }

    pub fn set(&self, now: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now.to_string();
    }
}

impl Clock for FixedClock {
    fn now(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
