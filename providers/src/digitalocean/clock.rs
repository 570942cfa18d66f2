use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time as the DigitalOcean provider sees it: every wait (retry, rate limit, polling) goes
/// through here so that tests and benchmarks can compress waits without changing them.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch; `ratelimit-reset` is given in these.
    fn unix_now(&self) -> u64;
    async fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// A clock whose sleeps take `1/factor` of the asked time while `now()` moves by the full
/// amount, so deadlines and backoff keep their meaning in fast tests. It records every
/// sleep it was asked for.
#[derive(Debug)]
pub struct ScaledClock {
    factor: u32,
    skipped: Mutex<Duration>,
    sleeps: Mutex<Vec<Duration>>,
}

impl ScaledClock {
    /// `factor` 1 behaves like the real clock; 100 turns a 3 s poll into 30 ms.
    pub fn new(factor: u32) -> Self {
        Self {
            factor: factor.max(1),
            skipped: Mutex::new(Duration::ZERO),
            sleeps: Mutex::new(Vec::new()),
        }
    }

    /// Every sleep asked for so far, at its full length.
    pub fn sleeps(&self) -> Vec<Duration> {
        lock(&self.sleeps).clone()
    }

    fn skipped(&self) -> Duration {
        *lock(&self.skipped)
    }
}

#[async_trait::async_trait]
impl Clock for ScaledClock {
    fn now(&self) -> Instant {
        Instant::now() + self.skipped()
    }

    fn unix_now(&self) -> u64 {
        (SystemTime::now() + self.skipped())
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    async fn sleep(&self, d: Duration) {
        lock(&self.sleeps).push(d);
        let real = d / self.factor;
        tokio::time::sleep(real).await;
        *lock(&self.skipped) += d.saturating_sub(real);
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; the data
/// is still usable for counters and logs.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scaled_clock_moves_now_by_the_full_sleep() {
        let clock = ScaledClock::new(1000);
        let before = clock.now();
        let real = Instant::now();
        clock.sleep(Duration::from_secs(2)).await;
        assert!(clock.now() - before >= Duration::from_secs(2));
        assert!(real.elapsed() < Duration::from_millis(500));
        assert_eq!(clock.sleeps(), vec![Duration::from_secs(2)]);
    }
}
