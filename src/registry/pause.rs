//! The pause after `429 Too Many Requests`: one pause per burst, not one per answer.
//!
//! - A 429 while the registry is paused (answers to requests sent before the pause, a
//!   burst of concurrent ones) never escalates it; a longer `Retry-After` may lengthen it.
//! - A 429 that arrives after the pause ended starts the next pause: `Retry-After`
//!   when given, else 30 s doubled for each pause in a row (at most 1 h).
//! - Any other answer ends the streak: the next pause starts at 30 s again.

use std::time::{Duration, Instant};

/// The pause after a 429 without `Retry-After`, doubled for each consecutive pause.
pub(crate) const DEFAULT_PAUSE: Duration = Duration::from_secs(30);
/// No registry is paused longer than this, whatever it asks.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// What a 429 did to the pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PauseChange {
    /// A new pause began (or a running one was lengthened by `Retry-After`) and lasts
    /// `duration` from now, until `until`. `generation` identifies it.
    Started {
        duration: Duration,
        until: Instant,
        generation: u64,
        from_retry_after: bool,
    },
    /// The registry was already paused until `until`; nothing changed.
    Unchanged { until: Instant },
}

/// One registry's pause state.
#[derive(Debug, Default)]
pub struct Pause {
    until: Option<Instant>,
    /// Pauses in a row without an answer other than 429 in between.
    streak: u32,
    generation: u64,
}

impl Pause {
    /// How long the registry remains paused at `now`, if it is.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The generation of the latest pause (changes whenever a pause starts or grows).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a 429 that arrived at `now`.
    pub(crate) fn on_429(&mut self, retry_after: Option<Duration>, now: Instant) -> PauseChange {
        if let Some(until) = self.until.filter(|until| *until > now) {
            if let Some(asked) = retry_after {
                let asked = asked.min(MAX_PAUSE);
                if now + asked > until {
                    self.until = Some(now + asked);
                    self.generation += 1;
                    return PauseChange::Started {
                        duration: asked,
                        until: now + asked,
                        generation: self.generation,
                        from_retry_after: true,
                    };
                }
            }
            return PauseChange::Unchanged { until };
        }
        self.streak = self.streak.saturating_add(1);
        let backoff = DEFAULT_PAUSE.saturating_mul(1 << self.streak.saturating_sub(1).min(7));
        let duration = retry_after.unwrap_or(backoff).min(MAX_PAUSE);
        self.until = Some(now + duration);
        self.generation += 1;
        PauseChange::Started {
            duration,
            until: now + duration,
            generation: self.generation,
            from_retry_after: retry_after.is_some(),
        }
    }

    /// Records an answer other than 429: the streak ends.
    pub fn answered(&mut self) {
        self.streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(change: PauseChange) -> Duration {
        match change {
            PauseChange::Started { duration, .. } => duration,
            PauseChange::Unchanged { .. } => panic!("expected a new pause, got {change:?}"),
        }
    }

    #[test]
    fn a_burst_is_one_pause() {
        let t0 = Instant::now();
        let mut pause = Pause::default();
        assert_eq!(started(pause.on_429(None, t0)), DEFAULT_PAUSE);
        // Seven more 429s of the same burst: no escalation.
        for i in 1..8 {
            let change = pause.on_429(None, t0 + Duration::from_millis(i * 10));
            assert!(
                matches!(change, PauseChange::Unchanged { .. }),
                "{change:?}"
            );
        }
        assert_eq!(pause.remaining(t0), Some(DEFAULT_PAUSE));
        assert_eq!(pause.remaining(t0 + DEFAULT_PAUSE), None);
        // A 429 after the pause ended: the next one doubles.
        let t1 = t0 + DEFAULT_PAUSE + Duration::from_secs(1);
        assert_eq!(started(pause.on_429(None, t1)), DEFAULT_PAUSE * 2);
        let t2 = t1 + DEFAULT_PAUSE * 2;
        assert_eq!(started(pause.on_429(None, t2)), DEFAULT_PAUSE * 4);
        // An answer ends the streak.
        pause.answered();
        let t3 = t2 + DEFAULT_PAUSE * 4;
        assert_eq!(started(pause.on_429(None, t3)), DEFAULT_PAUSE);
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let t0 = Instant::now();
        let mut pause = Pause::default();
        assert_eq!(
            started(pause.on_429(Some(Duration::from_secs(90)), t0)),
            Duration::from_secs(90)
        );
        // A shorter Retry-After during the pause changes nothing; a longer one extends.
        assert!(matches!(
            pause.on_429(Some(Duration::from_secs(10)), t0),
            PauseChange::Unchanged { .. }
        ));
        let generation = pause.generation();
        assert_eq!(
            started(pause.on_429(Some(Duration::from_secs(120)), t0)),
            Duration::from_secs(120)
        );
        assert!(pause.generation() > generation);
        let later = t0 + Duration::from_secs(200);
        assert_eq!(
            started(pause.on_429(Some(Duration::from_secs(10 * 3600)), later)),
            MAX_PAUSE
        );
        // The backoff never exceeds the cap either.
        let mut pause = Pause::default();
        let mut now = t0;
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = started(pause.on_429(None, now));
            now += last;
        }
        assert_eq!(last, MAX_PAUSE);
    }
}
