//! How hard pullwatch may press on registries: a global bound on checks in flight,
//! and per registry a concurrency bound, a request rate and a pause after 429.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::classify::Challenge;

/// Limits for every registry.
#[derive(Clone, Copy, Debug)]
pub struct RegistryLimits {
    pub max_concurrency: usize,
    pub requests_per_second: NonZeroU32,
}

/// The pause applied after a 429 without Retry-After; doubled for each consecutive 429.
const DEFAULT_PAUSE: Duration = Duration::from_secs(30);
/// No registry is paused longer than this, whatever it asks.
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// What pullwatch knows about one registry host.
pub struct RegistryState {
    pub host: String,
    pub slots: Semaphore,
    limiter: DefaultDirectRateLimiter,
    pause: Mutex<Pause>,
    /// The scheme that answered last (https unless only http works and is allowed).
    pub plain_http: Mutex<Option<bool>>,
    /// The authentication scheme the registry challenged with.
    pub challenge: Mutex<Option<Challenge>>,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    consecutive: u32,
}

impl RegistryState {
    fn new(host: &str, limits: RegistryLimits) -> Self {
        RegistryState {
            host: host.to_string(),
            slots: Semaphore::new(limits.max_concurrency.max(1)),
            limiter: RateLimiter::direct(Quota::per_second(limits.requests_per_second)),
            pause: Mutex::new(Pause::default()),
            plain_http: Mutex::new(None),
            challenge: Mutex::new(None),
        }
    }

    /// Waits for the registry's request rate to allow one more request.
    pub async fn before_request(&self) {
        self.limiter.until_ready().await;
    }

    /// How long the registry remains paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let pause = lock(&self.pause);
        pause
            .until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Records a 429: pauses for Retry-After when given, else a doubling default.
    /// Returns the pause and its end as Unix seconds (for the metric).
    pub fn rate_limited(&self, retry_after: Option<Duration>) -> (Duration, f64) {
        let mut pause = lock(&self.pause);
        pause.consecutive = pause.consecutive.saturating_add(1);
        let backoff = DEFAULT_PAUSE.saturating_mul(1 << pause.consecutive.saturating_sub(1).min(7));
        let duration = retry_after.unwrap_or(backoff).min(MAX_PAUSE);
        let until = Instant::now() + duration;
        pause.until = Some(pause.until.map_or(until, |current| current.max(until)));
        let unix = SystemTime::now()
            .checked_add(duration)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        (duration, unix)
    }

    /// Any answer other than 429 ends the backoff streak.
    pub fn answered(&self) {
        let mut pause = lock(&self.pause);
        pause.consecutive = 0;
    }
}

/// Registry states by host, created on first use.
pub struct Registries {
    limits: RegistryLimits,
    states: Mutex<HashMap<String, Arc<RegistryState>>>,
}

impl Registries {
    pub fn new(limits: RegistryLimits) -> Self {
        Registries {
            limits,
            states: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, host: &str) -> Arc<RegistryState> {
        lock(&self.states)
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(RegistryState::new(host, self.limits)))
            .clone()
    }
}

pub use pullwatch::support::lock;

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RegistryState {
        RegistryState::new(
            "r",
            RegistryLimits {
                max_concurrency: 2,
                requests_per_second: NonZeroU32::new(100).unwrap(),
            },
        )
    }

    #[test]
    fn retry_after_sets_the_pause_and_backoff_doubles_without_it() {
        let s = state();
        assert_eq!(s.paused_for(), None);
        let (d, unix) = s.rate_limited(Some(Duration::from_secs(90)));
        assert_eq!(d, Duration::from_secs(90));
        assert!(unix > 1_600_000_000.0);
        let left = s.paused_for().unwrap();
        assert!(left > Duration::from_secs(85) && left <= Duration::from_secs(90));
        let (d2, _) = s.rate_limited(None);
        assert_eq!(d2, DEFAULT_PAUSE * 2, "second consecutive 429 doubles");
        s.answered();
        let (d3, _) = s.rate_limited(None);
        assert_eq!(d3, DEFAULT_PAUSE);
        let (d4, _) = s.rate_limited(Some(Duration::from_secs(10 * 3600)));
        assert_eq!(d4, MAX_PAUSE);
    }

    #[test]
    fn registries_are_shared_per_host() {
        let r = Registries::new(RegistryLimits {
            max_concurrency: 1,
            requests_per_second: NonZeroU32::new(1).unwrap(),
        });
        assert!(Arc::ptr_eq(&r.get("a"), &r.get("a")));
        assert!(!Arc::ptr_eq(&r.get("a"), &r.get("b")));
    }
}
