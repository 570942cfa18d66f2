//! Wall-clock time, behind a trait so that tests can pin it.

use std::fmt;
use std::sync::Arc;

/// Gives the current time as Docker formats it (RFC 3339 with nanoseconds, UTC).
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> time::OffsetDateTime;

    fn now_rfc3339(&self) -> String {
        rfc3339(self.now())
    }
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }
}

pub type SharedClock = Arc<dyn Clock>;
