//! Protecting the gateway from departments and departments from the gateway:
//! a circuit breaker per data source (stop calling a source that keeps
//! failing, probe it now and then), a rate limit per source at its declared
//! capacity with bounded waiting, and jittered backoff for query retries.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ring::rand::{SecureRandom, SystemRandom};

/// Consecutive failures that open the circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit refuses calls before letting one probe through.
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);
/// Longest a call waits for a rate-limit slot; past it the call is refused.
pub const MAX_RATE_WAIT: Duration = Duration::from_millis(100);
/// Attempts of an idempotent query, the first included.
pub const MAX_QUERY_ATTEMPTS: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(10);

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
        until: Instant,
    },
    /// One probe is out since then; everyone else is refused until it
    /// reports — or until its lease runs out, in case the probing call was
    /// cancelled and never reports.
    HalfOpen {
        since: Instant,
    },
}

/// A circuit breaker over a clock the caller passes in (tests drive it).
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
    pub fn admit(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now >= since + self.open_for => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn record(&self, success: bool, now: Instant) {
        let mut state = self.lock();
        *state = match (&*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (_, false) => State::Open {
                until: now + self.open_for,
            },
        };
    }

    /// An admitted call that never reached the department (e.g. rate
    /// limited) gives its probe slot back without counting as a success.
    pub fn release(&self, now: Instant) {
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

/// A department's declared capacity as a token bucket (burst: one tenth of a
/// second's worth, at least one).
pub fn rate_limiter(capacity_per_second: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(capacity_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new((capacity_per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// Waits for a slot at most `max_wait`; false when none came in time.
pub async fn acquire(limiter: &DefaultDirectRateLimiter, max_wait: Duration) -> bool {
    if limiter.check().is_ok() {
        return true;
    }
    tokio::time::timeout(max_wait, limiter.until_ready())
        .await
        .is_ok()
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

    #[test]
    fn the_circuit_opens_after_repeated_failures_and_probes_once() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(2));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(breaker.admit(t0));
            breaker.record(false, t0);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.record(false, t0);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(!breaker.admit(t0 + Duration::from_secs(1)));
        // After the open period: one probe, nobody else.
        let later = t0 + Duration::from_secs(3);
        assert!(breaker.admit(later));
        assert!(!breaker.admit(later));
        // A probe that never reports loses its lease after the open period.
        let stuck = later + Duration::from_secs(3);
        assert!(breaker.admit(stuck), "a lost probe does not block forever");
        // A released slot lets the next caller probe, without closing.
        breaker.release(stuck);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.admit(stuck));
        // A failed probe opens it again; a good one closes it.
        breaker.record(false, later);
        assert_eq!(breaker.state(), CircuitState::Open);
        let much_later = later + Duration::from_secs(3);
        assert!(breaker.admit(much_later));
        breaker.record(true, much_later);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(breaker.admit(much_later));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(2));
        let t = Instant::now();
        breaker.record(false, t);
        breaker.record(false, t);
        breaker.record(true, t);
        breaker.record(false, t);
        breaker.record(false, t);
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

    #[tokio::test]
    async fn the_rate_limit_refuses_past_the_bounded_wait() {
        let limiter = rate_limiter(10); // burst 1, one slot per 100 ms
        assert!(acquire(&limiter, Duration::ZERO).await);
        assert!(!acquire(&limiter, Duration::from_millis(5)).await);
        assert!(acquire(&limiter, Duration::from_millis(150)).await);
    }
}
