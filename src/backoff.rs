//! Reconnect pauses with "full jitter" (each pause random below a window that doubles
//! per attempt, up to a cap): what the agent waits before reconnecting to the
//! aggregator, so a fleet that lost the same aggregator comes back spread over the
//! whole window rather than in one burst.

use std::time::Duration;

/// Reconnect pauses with full jitter: each one random in `[0, window)`, the window
/// doubling from the base after every attempt up to the cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    window: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            window: base,
            rng: fastrand::Rng::new(),
        }
    }

    /// The window the next pause is drawn from.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Back to the base window (the last session lived).
    pub fn reset(&mut self) {
        self.window = self.base;
    }

    /// The next pause; the window then doubles, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.window.mul_f64(self.rng.f64());
        self.window = (self.window * 2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_pauses_spread_over_a_doubling_window() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        // Many agents' first pauses cover the window, not a sliver of it.
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(base, max).next_pause())
            .collect();
        assert!(firsts.iter().all(|p| *p < base));
        let below_a_second = firsts.iter().filter(|p| p.as_secs_f64() < 1.0).count();
        let above_four = firsts.iter().filter(|p| p.as_secs_f64() >= 4.0).count();
        assert!((100..300).contains(&below_a_second), "{below_a_second}");
        assert!((100..300).contains(&above_four), "{above_four}");
        // The window doubles per attempt up to the cap, and a reset starts over.
        let mut backoff = Backoff::new(base, max);
        let windows: Vec<Duration> = (0..6)
            .map(|_| {
                let window = backoff.window();
                backoff.next_pause();
                window
            })
            .collect();
        assert_eq!(
            windows.iter().map(Duration::as_secs).collect::<Vec<_>>(),
            [5, 10, 20, 40, 60, 60]
        );
        backoff.reset();
        assert!(backoff.next_pause() < base);
    }
}
