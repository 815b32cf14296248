//! What this replica last read, kept so that a write can be planned without reading it again.
//! Never trusted on its own: a write planned from an entry carries the revision the entry was
//! read at and checks it under the database's locks; a stale entry costs one refused write,
//! then a read.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// At most `capacity` entries; past it the map starts again empty (each is read again once).
pub struct Seen<K, V> {
    entries: Mutex<HashMap<K, Arc<V>>>,
    capacity: usize,
}

impl<K: Eq + Hash, V> Seen<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<K, Arc<V>>> {
        // Nothing is left half-done under the lock: a panic elsewhere leaves a usable map.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.entries().get(key).cloned()
    }

    pub fn remember(&self, key: K, value: V) {
        let mut entries = self.entries();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, Arc::new(value));
    }

    /// Forgets every entry whose key `stale` picks.
    pub fn forget(&self, mut stale: impl FnMut(&K) -> bool) {
        self.entries().retain(|key, _| !stale(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_kept_up_to_the_capacity_then_start_again_and_are_forgotten_by_key() {
        let seen: Seen<(u8, u8), &str> = Seen::new(2);
        seen.remember((1, 1), "a");
        seen.remember((1, 2), "b");
        assert_eq!(seen.get(&(1, 1)).as_deref(), Some(&"a"));
        seen.remember((2, 1), "c");
        assert!(seen.get(&(1, 1)).is_none(), "full: started again");
        assert_eq!(seen.get(&(2, 1)).as_deref(), Some(&"c"));
        seen.remember((2, 2), "d");
        seen.forget(|(first, _)| *first == 2);
        assert!(seen.get(&(2, 1)).is_none() && seen.get(&(2, 2)).is_none());
    }
}
