//! The socket table: boxed entries found by the id each one carries.
//!
//! A map from id to box spends 16 bytes a slot on the id and the pointer; this
//! table keeps the pointer only (8 bytes a slot, and hashbrown's one control
//! byte), since the entry already knows its id. At 19,000 sockets in a table
//! of 32,768 slots that is 15 bytes per socket less than the map.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// What the table holds: anything that knows its own id.
pub trait Keyed {
    fn key(&self) -> u64;
}

impl<T: Keyed> Keyed for Box<T> {
    fn key(&self) -> u64 {
        (**self).key()
    }
}

/// Entries by id; an entry's id must not change while it is in the table.
pub struct Table<T> {
    entries: HashTable<T>,
    hasher: RandomState,
}

impl<T: Keyed> Default for Table<T> {
    fn default() -> Self {
        Self {
            entries: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<T: Keyed> Table<T> {
    fn hash(&self, key: u64) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `entry`, or replaces the one with its id (returned).
    pub fn insert(&mut self, entry: T) -> Option<T> {
        let key = entry.key();
        let hash = self.hash(key);
        let hasher = &self.hasher;
        match self
            .entries
            .entry(hash, |e| e.key() == key, |e| hasher.hash_one(e.key()))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), entry))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
                None
            }
        }
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let hash = self.hash(key);
        self.entries.find_mut(hash, |e| e.key() == key)
    }

    pub fn remove(&mut self, key: u64) -> Option<T> {
        let hash = self.hash(key);
        match self.entries.find_entry(hash, |e| e.key() == key) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// Every entry, in no order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(u64, &'static str);

    impl Keyed for E {
        fn key(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn entries_are_found_by_their_own_id() {
        let mut t: Table<Box<E>> = Table::default();
        assert!(t.is_empty());
        for id in 0..10_000u64 {
            assert!(t.insert(Box::new(E(id * 7, "a"))).is_none());
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.get_mut(700).map(|e| e.1), Some("a"));
        assert!(t.get_mut(701).is_none());
        // Replacing keeps one entry per id.
        assert_eq!(t.insert(Box::new(E(700, "b"))).map(|e| e.1), Some("a"));
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.get_mut(700).map(|e| e.1), Some("b"));
        for id in (0..10_000u64).step_by(2) {
            assert_eq!(t.remove(id * 7).map(|e| e.0), Some(id * 7));
        }
        assert!(t.remove(0).is_none());
        assert_eq!(t.len(), 5_000);
        let mut left: Vec<u64> = t.iter_mut().map(|e| e.0).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            (1..10_000u64).step_by(2).map(|i| i * 7).collect::<Vec<_>>()
        );
    }
}
