//! Poison-tolerant locking of std mutexes, as every part of pullwatch locks them.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, recovering the data if a holder panicked: every value pullwatch
/// guards this way is valid at every point, so a poisoned lock carries nothing
/// half-written.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisoned_locks_still_give_the_data() {
        let mutex = std::sync::Arc::new(Mutex::new(5));
        let clone = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert_eq!(*lock(&mutex), 5);
    }
}
