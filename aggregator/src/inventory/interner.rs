//! One shared copy of each repeated value of the inventory: namespaces, images,
//! container and secret names repeat across thousands of workloads, and every later
//! stage (index, scheduler, store) holds the same `Arc` rather than a copy.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// A pool of shared values. Values nobody else holds any more are dropped when the
/// pool has doubled since it was last swept, so it stays within twice the live set
/// without a sweep per removal.
#[derive(Debug)]
pub(crate) struct Interner<T: ?Sized + Eq + Hash> {
    values: HashSet<Arc<T>>,
    swept_at: usize,
}

impl<T: ?Sized + Eq + Hash> Clone for Interner<T> {
    fn clone(&self) -> Self {
        Interner {
            values: self.values.clone(),
            swept_at: self.swept_at,
        }
    }
}

impl<T: ?Sized + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            values: HashSet::new(),
            swept_at: 0,
        }
    }
}

/// Below this many values the pool is never swept.
const SWEEP_FLOOR: usize = 1024;

impl<T: ?Sized + Eq + Hash> Interner<T> {
    /// The shared copy of `value`, made by `make` the first time.
    pub(crate) fn get_or_insert_with(
        &mut self,
        value: &T,
        make: impl FnOnce(&T) -> Arc<T>,
    ) -> Arc<T> {
        match self.values.get(value) {
            Some(shared) => shared.clone(),
            None => self.insert_new(make(value)),
        }
    }

    fn insert_new(&mut self, shared: Arc<T>) -> Arc<T> {
        if self.values.len() >= SWEEP_FLOOR.max(self.swept_at * 2) {
            self.sweep();
        }
        self.values.insert(shared.clone());
        shared
    }

    /// Drops the values only the pool holds.
    pub(crate) fn sweep(&mut self) {
        self.values.retain(|value| Arc::strong_count(value) > 1);
        self.values.shrink_to_fit();
        self.swept_at = self.values.len();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

impl<T: Eq + Hash> Interner<T> {
    /// The shared copy of `value`, which becomes it the first time.
    pub(crate) fn intern_value(&mut self, value: T) -> Arc<T> {
        match self.values.get(&value) {
            Some(shared) => shared.clone(),
            None => self.insert_new(Arc::new(value)),
        }
    }
}

impl Interner<str> {
    /// The shared copy of `value`.
    pub(crate) fn intern(&mut self, value: &str) -> Arc<str> {
        self.get_or_insert_with(value, |v| Arc::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation() {
        let mut pool = Interner::<str>::default();
        let a = pool.intern("team-a");
        let b = pool.intern(&String::from("team-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &pool.intern("team-b")));
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn values_nobody_holds_go_when_the_pool_doubles() {
        let mut pool = Interner::<str>::default();
        let kept = pool.intern("kept");
        for i in 0..SWEEP_FLOOR * 3 {
            pool.intern(&format!("gone-{i}"));
        }
        // Swept at the floor and again at twice what survived (1): never more than
        // the floor plus what came since, and the value still held survives.
        assert!(pool.len() <= SWEEP_FLOOR + 1, "{} values", pool.len());
        pool.sweep();
        assert_eq!(pool.len(), 1);
        assert!(Arc::ptr_eq(&kept, &pool.intern("kept")));
    }
}
