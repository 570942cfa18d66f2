//! When a VIP has stopped sending to a task: the pure bookkeeping of `udp-watch`.
//!
//! A request is bad when it fails (a killed task simply does not answer) or when the task
//! to avoid answers it. The watch is over once something bad was seen and then `streak`
//! requests in a row were good; the first of those is the moment the VIP was clean.

/// What one request gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by another task.
    Good,
    /// No answer in time, or an error.
    Failed,
    /// Answered by the task to avoid.
    Avoided,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    streak_needed: u32,
    streak: u32,
    streak_start_ms: u64,
    pub requests: u64,
    pub failures: u64,
    pub avoided: u64,
    pub last_bad_ms: Option<u64>,
    pub last_avoided_ms: Option<u64>,
    pub first_failure_ms: Option<u64>,
}

impl Watch {
    pub fn new(streak: u32) -> Watch {
        Watch {
            streak_needed: streak.max(1),
            ..Watch::default()
        }
    }

    /// Records the outcome of a request sent at `at_ms`; true once the watch is over.
    pub fn observe(&mut self, at_ms: u64, outcome: Outcome) -> bool {
        self.requests += 1;
        match outcome {
            Outcome::Good => {
                if self.streak == 0 {
                    self.streak_start_ms = at_ms;
                }
                self.streak += 1;
            }
            Outcome::Failed | Outcome::Avoided => {
                self.streak = 0;
                self.last_bad_ms = Some(at_ms);
                if outcome == Outcome::Failed {
                    self.failures += 1;
                    self.first_failure_ms.get_or_insert(at_ms);
                } else {
                    self.avoided += 1;
                    self.last_avoided_ms = Some(at_ms);
                }
            }
        }
        self.done()
    }

    pub fn done(&self) -> bool {
        self.last_bad_ms.is_some() && self.streak >= self.streak_needed
    }

    /// When the clean streak began, once the watch is over.
    pub fn clean_at_ms(&self) -> Option<u64> {
        self.done().then_some(self.streak_start_ms)
    }

    /// The one-line report; times are milliseconds since the Unix epoch, 0 for never.
    pub fn line(&self) -> String {
        format!(
            "clean_at_ms={} first_failure_ms={} last_bad_ms={} last_avoided_ms={} requests={} failures={} avoided={}",
            self.clean_at_ms().unwrap_or(0),
            self.first_failure_ms.unwrap_or(0),
            self.last_bad_ms.unwrap_or(0),
            self.last_avoided_ms.unwrap_or(0),
            self.requests,
            self.failures,
            self.avoided
        )
    }
}

/// Classifies an answer of `udp-echo` by the `who=` word.
pub fn classify(answer: Option<&str>, avoid: &str) -> Outcome {
    match answer {
        None => Outcome::Failed,
        Some(line) => match crate::report::words(line).get("who") {
            Some(who) if *who == avoid => Outcome::Avoided,
            Some(_) => Outcome::Good,
            None => Outcome::Failed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn good_answers_alone_never_end_the_watch() {
        let mut w = Watch::new(3);
        for t in 0..10 {
            assert!(!w.observe(t, Good));
        }
        assert_eq!(w.clean_at_ms(), None);
    }

    #[test]
    fn clean_from_the_first_of_a_full_streak_after_the_last_bad() {
        let mut w = Watch::new(3);
        let script = [
            (0, Avoided),
            (10, Good),
            (20, Avoided),
            (30, Failed),
            (40, Good),
            (50, Failed),
            (60, Good),
            (70, Good),
        ];
        for (t, o) in script {
            assert!(!w.observe(t, o), "over too early at {t}");
        }
        assert!(w.observe(80, Good));
        assert_eq!(w.clean_at_ms(), Some(60));
        assert_eq!(w.first_failure_ms, Some(30));
        assert_eq!(w.last_avoided_ms, Some(20));
        assert_eq!(
            w.line(),
            "clean_at_ms=60 first_failure_ms=30 last_bad_ms=50 last_avoided_ms=20 requests=9 failures=2 avoided=2"
        );
    }

    #[test]
    fn answers_are_classified_by_who() {
        assert_eq!(classify(None, "x"), Failed);
        assert_eq!(classify(Some("who=x from=1.2.3.4"), "x"), Avoided);
        assert_eq!(classify(Some("who=y from=1.2.3.4"), "x"), Good);
        assert_eq!(classify(Some("garbage"), "x"), Failed);
    }
}
