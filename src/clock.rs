//! Wall-clock time, handed in rather than read from below, so tests drive
//! deadlines, overdue sweeps and dates with a [`ManualClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::FakeRelativeClock;
use governor::nanos::Nanos;

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_unix_ms(&self) -> i64;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        system_now_unix_ms()
    }
}

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// The system's wall clock read directly; for the binary's edges (file
/// names, command-line reports) where nothing needs to control time.
pub fn system_now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_unix_ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(now_unix_ms)))
    }

    pub fn set(&self, now_unix_ms: i64) {
        self.0.store(now_unix_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Monotonic time for rate limits and circuit breakers, as governor's
/// [`governor::clock::Clock`] so one handle drives the limiters and the
/// breakers alike. The default reads tokio's clock: real time in production,
/// the paused clock under `tokio::time::pause`. A test of a served node hands
/// in a [`FakeRelativeClock`] instead and advances it by hand, since pausing
/// tokio's clock does not mix with real sockets.
#[derive(Debug, Clone)]
pub struct Monotonic(MonotonicSource);

#[derive(Debug, Clone)]
enum MonotonicSource {
    Tokio(tokio::time::Instant),
    Fake(FakeRelativeClock),
}

impl Monotonic {
    /// Tokio's clock, counted from now.
    pub fn tokio() -> Self {
        Self(MonotonicSource::Tokio(tokio::time::Instant::now()))
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::tokio()
    }
}

impl From<FakeRelativeClock> for Monotonic {
    fn from(fake: FakeRelativeClock) -> Self {
        Self(MonotonicSource::Fake(fake))
    }
}

impl governor::clock::Clock for Monotonic {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.0 {
            MonotonicSource::Tokio(origin) => nanos(origin.elapsed()),
            MonotonicSource::Fake(fake) => fake.now(),
        }
    }
}

/// A duration as [`Nanos`], saturating instead of panicking past ~584 years.
pub fn nanos(duration: Duration) -> Nanos {
    Nanos::new(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_unix_ms(), 1_000);
        clock.advance(500);
        assert_eq!(clock.now_unix_ms(), 1_500);
        clock.set(7);
        assert_eq!(clock.now_unix_ms(), 7);
    }

    #[test]
    fn a_fake_monotonic_clock_moves_only_when_advanced() {
        use governor::clock::Clock as _;
        let fake = FakeRelativeClock::default();
        let clock = Monotonic::from(fake.clone());
        let start = clock.now();
        fake.advance(Duration::from_millis(250));
        assert_eq!(
            Duration::from(clock.now()),
            Duration::from(start) + Duration::from_millis(250)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_monotonic_clock_follows_paused_time() {
        use governor::clock::Clock as _;
        let clock = Monotonic::tokio();
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            Duration::from(clock.now()),
            Duration::from(start) + Duration::from_secs(2)
        );
    }
}
