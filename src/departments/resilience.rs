//! Protecting the gateway from departments and departments from the gateway:
//! a circuit breaker per data source (stop calling a source that keeps
//! failing, probe it now and then), a rate limit per source at its declared
//! capacity with bounded waiting, and jittered backoff for query retries.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::nanos;

/// Consecutive failures that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit refuses calls before letting one probe through.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);
/// Longest a call waits for a rate-limit slot; past it the call is refused.
pub const MAX_RATE_WAIT: Duration = Duration::from_millis(100);
/// Attempts of an idempotent query, the first included.
pub const MAX_QUERY_ATTEMPTS: u32 = 3;
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(10);
/// Shortest pause between two looks at a rate limiter, so a wait rounded
/// down to nothing cannot spin.
const MIN_RATE_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Nanos,
    },
    /// One probe is out since then; everyone else is refused until it
    /// reports — or until its lease runs out, in case the probing call was
    /// cancelled and never reports.
    HalfOpen {
        since: Nanos,
    },
}

/// A circuit breaker over a monotonic clock whose readings the caller passes
/// in (a governor clock: [`crate::clock::Monotonic`] in service, governor's
/// `FakeRelativeClock` in tests).
#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(BREAKER_THRESHOLD, BREAKER_OPEN_FOR)
    }
}

fn after(now: Nanos, period: Duration) -> Nanos {
    Nanos::new(now.as_u64().saturating_add(nanos(period).as_u64()))
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go out now. After the open period exactly one
    /// caller is let through as a probe.
    pub fn admit(&self, now: Nanos) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now >= after(since, self.open_for) => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn record(&self, success: bool, now: Nanos) {
        let mut state = self.lock();
        *state = match (&*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (_, false) => State::Open {
                until: after(now, self.open_for),
            },
        };
    }

    /// An admitted call that never reached the department (e.g. rate
    /// limited) gives its probe slot back without counting as a success.
    pub fn release(&self, now: Nanos) {
        let mut state = self.lock();
        if let State::HalfOpen { .. } = *state {
            *state = State::Open { until: now };
        }
    }

    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

/// A direct (unkeyed) rate limiter on clock `C`.
pub type Limiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A department's declared capacity as a token bucket (burst: one tenth of a
/// second's worth, at least one), on `clock`.
pub fn rate_limiter<C: Clock>(capacity_per_second: u32, clock: C) -> Limiter<C> {
    let rate = NonZeroU32::new(capacity_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new((capacity_per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), clock)
}

/// Takes a slot, waiting (on tokio's timer) at most `max_wait` in all; false
/// when none came in time. A wait longer than what is left is refused at
/// once rather than slept through.
pub async fn acquire<C: Clock>(limiter: &Limiter<C>, clock: &C, max_wait: Duration) -> bool {
    let mut left = max_wait;
    loop {
        let not_until = match limiter.check() {
            Ok(()) => return true,
            Err(not_until) => not_until,
        };
        let wait = not_until.wait_time_from(clock.now()).max(MIN_RATE_POLL);
        if wait > left {
            return false;
        }
        left -= wait;
        tokio::time::sleep(wait).await;
    }
}

/// Full-jitter exponential backoff before retry `attempt` (1-based).
pub fn backoff(attempt: u32, rng: &SystemRandom) -> Duration {
    let ceiling = BACKOFF_BASE * 2u32.saturating_pow(attempt.saturating_sub(1));
    let mut bytes = [0u8; 4];
    let _ = rng.fill(&mut bytes);
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    ceiling.mul_f64(0.5 + fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn five_failures_open_the_circuit_for_two_seconds_then_one_probe_goes_out() {
        let clock = FakeRelativeClock::default();
        let breaker = CircuitBreaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert!(breaker.admit(clock.now()));
            breaker.record(false, clock.now());
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(breaker.admit(clock.now()));
        breaker.record(false, clock.now());
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(!breaker.admit(clock.now()));
        clock.advance(BREAKER_OPEN_FOR - Duration::from_millis(1));
        assert!(!breaker.admit(clock.now()), "still open just before 2 s");
        clock.advance(Duration::from_millis(1));
        assert!(breaker.admit(clock.now()), "the probe");
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(!breaker.admit(clock.now()), "nobody else while it probes");
        breaker.record(true, clock.now());
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(breaker.admit(clock.now()));
    }

    #[test]
    fn a_lost_or_released_probe_does_not_block_and_a_failed_one_reopens() {
        let clock = FakeRelativeClock::default();
        let breaker = CircuitBreaker::new(3, Duration::from_secs(2));
        for _ in 0..3 {
            breaker.record(false, clock.now());
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        clock.advance(Duration::from_secs(3));
        assert!(breaker.admit(clock.now()));
        assert!(!breaker.admit(clock.now()));
        // A probe that never reports loses its lease after the open period.
        clock.advance(Duration::from_secs(2));
        assert!(
            breaker.admit(clock.now()),
            "a lost probe does not block forever"
        );
        // A released slot lets the next caller probe, without closing.
        breaker.release(clock.now());
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.admit(clock.now()));
        // A failed probe opens it again for the whole period.
        breaker.record(false, clock.now());
        assert_eq!(breaker.state(), CircuitState::Open);
        clock.advance(Duration::from_millis(1999));
        assert!(!breaker.admit(clock.now()));
        clock.advance(Duration::from_millis(1));
        assert!(breaker.admit(clock.now()));
        breaker.record(true, clock.now());
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let clock = FakeRelativeClock::default();
        let breaker = CircuitBreaker::new(3, Duration::from_secs(2));
        breaker.record(false, clock.now());
        breaker.record(false, clock.now());
        breaker.record(true, clock.now());
        breaker.record(false, clock.now());
        breaker.record(false, clock.now());
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn backoff_grows_and_stays_within_its_ceiling() {
        let rng = SystemRandom::new();
        for attempt in 1..5 {
            let ceiling = BACKOFF_BASE * 2u32.pow(attempt - 1);
            let b = backoff(attempt, &rng);
            assert!(b <= ceiling && b >= ceiling / 2, "{b:?} vs {ceiling:?}");
        }
    }

    #[test]
    fn the_declared_capacity_admits_its_burst_then_one_slot_per_interval() {
        let clock = FakeRelativeClock::default();
        let limiter = rate_limiter(50, clock.clone()); // burst 5, one slot per 20 ms
        for _ in 0..5 {
            assert!(limiter.check().is_ok());
        }
        let refused = limiter.check().unwrap_err();
        assert_eq!(
            refused.wait_time_from(clock.now()),
            Duration::from_millis(20)
        );
        clock.advance(Duration::from_millis(19));
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
        // A second of quiet refills the burst, no more.
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            assert!(limiter.check().is_ok());
        }
        assert!(limiter.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_refuses_a_wait_longer_than_allowed_at_once() {
        let clock = FakeRelativeClock::default();
        let limiter = rate_limiter(10, clock.clone()); // burst 1, one slot per 100 ms
        assert!(acquire(&limiter, &clock, Duration::ZERO).await);
        let before = tokio::time::Instant::now();
        assert!(!acquire(&limiter, &clock, Duration::from_millis(99)).await);
        assert_eq!(
            tokio::time::Instant::now(),
            before,
            "refused without waiting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_a_slot_within_the_bound_on_the_service_clock() {
        // The service's clock follows tokio's, which is paused here.
        let clock = crate::clock::Monotonic::tokio();
        let limiter = rate_limiter(10, clock.clone());
        assert!(acquire(&limiter, &clock, Duration::ZERO).await);
        let before = tokio::time::Instant::now();
        assert!(acquire(&limiter, &clock, Duration::from_millis(150)).await);
        assert_eq!(
            tokio::time::Instant::now() - before,
            Duration::from_millis(100),
            "waited exactly for the next slot"
        );
        assert!(!acquire(&limiter, &clock, Duration::from_millis(50)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_on_a_clock_that_never_moves_gives_up_within_its_bound() {
        let clock = FakeRelativeClock::default();
        let limiter = rate_limiter(5000, clock.clone()); // one slot per 200 µs
        for _ in 0..500 {
            assert!(limiter.check().is_ok());
        }
        let before = tokio::time::Instant::now();
        assert!(!acquire(&limiter, &clock, MAX_RATE_WAIT).await);
        assert!(tokio::time::Instant::now() - before <= MAX_RATE_WAIT);
    }
}
