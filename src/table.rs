//! A table of entries found by the key each one carries: the shard's
//! sockets by connection id, its cached sessions by session id.
//!
//! A map from key to entry spends a slot on a copy of the key beside the
//! pointer; this table keeps what the entry is (a pointer to a session: 8
//! bytes a slot, and hashbrown's one control byte) and asks it for its key.
//! The session cache spends 24 bytes less per session than a map by id, the
//! socket table 8 bytes less per socket.
//!
//! Periodic walks go by position, a part of the slots per tick
//! ([`Table::for_part`]), not by key: picking a part by key reads every
//! entry at every tick. [`Rounds`] makes such a walk exact, every entry once
//! per round, even when the table moves its entries mid-round.

use std::hash::{BuildHasher, Hash, RandomState};
use std::rc::Rc;

use hashbrown::HashTable;

/// What the table holds: anything that knows its own key.
pub trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> &Self::Key;
}

impl<T: Keyed> Keyed for Box<T> {
    type Key = T::Key;
    fn key(&self) -> &T::Key {
        (**self).key()
    }
}

impl<T: Keyed> Keyed for Rc<T> {
    type Key = T::Key;
    fn key(&self) -> &T::Key {
        (**self).key()
    }
}

/// What a [`Rounds`] walk needs of an entry: a byte of its own that says
/// which round last visited it.
pub trait Stamped {
    fn stamp(&mut self) -> &mut u8;
}

impl<T: Stamped> Stamped for Box<T> {
    fn stamp(&mut self) -> &mut u8 {
        (**self).stamp()
    }
}

/// Entries by key; an entry's key must not change while it is in the table.
pub struct Table<T> {
    entries: HashTable<T>,
    hasher: RandomState,
    /// Inserts that moved every entry (the table grew or rehashed), so far:
    /// a walk by position that spans one may see an entry twice or miss it.
    moves: u64,
}

impl<T: Keyed> Default for Table<T> {
    fn default() -> Self {
        Self {
            entries: HashTable::new(),
            hasher: RandomState::new(),
            moves: 0,
        }
    }
}

impl<T: Keyed> Table<T> {
    fn hash(&self, key: &T::Key) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `entry`, or replaces the one with its key (returned).
    pub fn insert(&mut self, entry: T) -> Option<T> {
        // hashbrown makes room before it looks: with no slot left to fill
        // (its capacity is what it holds plus what it may still take), it
        // grows or rehashes in place, and either moves every entry.
        if self.entries.len() == self.entries.capacity() {
            self.moves += 1;
        }
        let hash = self.hash(entry.key());
        let hasher = &self.hasher;
        match self.entries.entry(
            hash,
            |e| e.key() == entry.key(),
            |e| hasher.hash_one(e.key()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), entry))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
                None
            }
        }
    }

    pub fn get(&self, key: &T::Key) -> Option<&T> {
        self.entries.find(self.hash(key), |e| e.key() == key)
    }

    pub fn get_mut(&mut self, key: &T::Key) -> Option<&mut T> {
        let hash = self.hash(key);
        self.entries.find_mut(hash, |e| e.key() == key)
    }

    pub fn remove(&mut self, key: &T::Key) -> Option<T> {
        let hash = self.hash(key);
        match self.entries.find_entry(hash, |e| e.key() == key) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// Calls `visit` for each entry in part `index` of `of` of the table's
    /// slots, by position: a walk over every part visits every entry once,
    /// each part in time to its share of the slots, not to the whole table.
    /// Entries keep their slots until the table grows or rehashes; a walk
    /// across that may see an entry twice or miss it once.
    pub fn for_part(&mut self, index: u64, of: u64, mut visit: impl FnMut(&mut T)) {
        let slots = self.entries.num_buckets() as u128;
        let of = u128::from(of.max(1));
        let lo = (slots * u128::from(index) / of) as usize;
        let hi = (slots * (u128::from(index) + 1) / of) as usize;
        for i in lo..hi {
            if let Some(entry) = self.entries.get_bucket_mut(i) {
                visit(entry);
            }
        }
    }

    /// Part `index` of `of` of round `rounds`: like [`Table::for_part`],
    /// but an entry the round already visited is skipped, and the round's
    /// last part also visits, in one go, every entry the round missed
    /// because the table moved its entries mid-round (rare: a growth, or a
    /// rehash after much churn). A round is the parts `0..of` in order, `of`
    /// fixed within it. An entry inserted mid-round is visited in it if its
    /// slot is still ahead, in the next one otherwise.
    pub fn for_part_once(
        &mut self,
        rounds: &Rounds,
        index: u64,
        of: u64,
        mut visit: impl FnMut(&mut T),
    ) where
        T: Stamped,
    {
        if index == 0 {
            rounds.begin(self.moves);
        }
        let now = rounds.current();
        let mut once = |e: &mut T| {
            if *e.stamp() != now {
                *e.stamp() = now;
                visit(e);
            }
        };
        self.for_part(index, of, &mut once);
        if index + 1 >= of && rounds.moved_since_begin(self.moves) {
            self.entries.iter_mut().for_each(once);
        }
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter()
    }

    /// Every entry, in no order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut()
    }
}

/// The state of exact walks over one table: which round is on, and where
/// the table's moves stood when it began. Entries carry the round that last
/// visited them ([`Stamped`]); a new entry takes [`Rounds::fresh`]. A byte
/// is enough: a live entry is visited every round, so its stamp is never
/// more than two rounds behind.
#[derive(Debug, Default)]
pub struct Rounds {
    current: std::cell::Cell<u8>,
    moves_at_begin: std::cell::Cell<u64>,
}

impl Rounds {
    fn begin(&self, moves: u64) {
        self.current.set(self.current.get().wrapping_add(1));
        self.moves_at_begin.set(moves);
    }

    fn current(&self) -> u8 {
        self.current.get()
    }

    fn moved_since_begin(&self, moves: u64) -> bool {
        moves != self.moves_at_begin.get()
    }

    /// The stamp of a new entry: due in the round that is on.
    pub fn fresh(&self) -> u8 {
        self.current.get().wrapping_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(u64, &'static str);

    impl Keyed for E {
        type Key = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
    }

    #[test]
    fn entries_are_found_by_their_own_key() {
        let mut t: Table<Box<E>> = Table::default();
        assert!(t.is_empty());
        for id in 0..10_000u64 {
            assert!(t.insert(Box::new(E(id * 7, "a"))).is_none());
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.get_mut(&700).map(|e| e.1), Some("a"));
        assert!(t.get_mut(&701).is_none());
        // Replacing keeps one entry per key.
        assert_eq!(t.insert(Box::new(E(700, "b"))).map(|e| e.1), Some("a"));
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.get(&700).map(|e| e.1), Some("b"));
        for id in (0..10_000u64).step_by(2) {
            assert_eq!(t.remove(&(id * 7)).map(|e| e.0), Some(id * 7));
        }
        assert!(t.remove(&0).is_none());
        assert!(t.get(&0).is_none());
        assert_eq!(t.len(), 5_000);
        let mut left: Vec<u64> = t.iter_mut().map(|e| e.0).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            (1..10_000u64).step_by(2).map(|i| i * 7).collect::<Vec<_>>()
        );
        assert_eq!(t.iter().count(), 5_000);
    }

    #[test]
    fn the_parts_of_a_table_hold_every_entry_once() {
        let mut t: Table<Box<E>> = Table::default();
        for id in 0..5_000u64 {
            t.insert(Box::new(E(id, "a")));
        }
        for of in [1u64, 2, 7, 19, 64, 5_000, 100_000] {
            let mut seen = vec![0u32; 5_000];
            for index in 0..of {
                t.for_part(index, of, |e| seen[e.0 as usize] += 1);
            }
            assert!(seen.iter().all(|&n| n == 1), "{of} parts");
        }
        let mut n = 0;
        t.for_part(3, 4, |e| {
            e.1 = "b";
            n += 1;
        });
        assert!((1_000..1_500).contains(&n), "a quarter of the slots: {n}");
        assert_eq!(t.iter().filter(|e| e.1 == "b").count(), n);
    }

    #[derive(Debug)]
    struct S {
        id: u64,
        stamp: u8,
        seen: u32,
        /// In the table when the round began.
        there: bool,
    }

    impl Keyed for S {
        type Key = u64;
        fn key(&self) -> &u64 {
            &self.id
        }
    }

    impl Stamped for S {
        fn stamp(&mut self) -> &mut u8 {
            &mut self.stamp
        }
    }

    /// Rounds over a table that grows mid-round (after a different part
    /// each time), then rounds with none: each entry there at a round's
    /// start is visited exactly once in it, and one inserted mid-round at
    /// most once in it.
    #[test]
    fn a_round_visits_each_entry_once_while_the_table_grows() {
        let rounds = Rounds::default();
        let mut t: Table<Box<S>> = Table::default();
        let mut next = 0u64;
        let mut add = |t: &mut Table<Box<S>>| {
            let stamp = rounds.fresh();
            t.insert(Box::new(S {
                id: next,
                stamp,
                seen: 0,
                there: false,
            }));
            next += 1;
        };
        for _ in 0..100 {
            add(&mut t);
        }
        let of = 8;
        let mut moved = 0;
        for round in 0..300u64 {
            t.iter_mut().for_each(|e| (e.seen, e.there) = (0, true));
            for index in 0..of {
                t.for_part_once(&rounds, index, of, |e| e.seen += 1);
                if round < 7 && index == round % (of - 1) {
                    // Up to the insert that moves every entry.
                    let moves = t.moves;
                    while t.moves == moves {
                        add(&mut t);
                    }
                    moved += 1;
                }
            }
            for e in t.iter() {
                if e.there {
                    assert_eq!(e.seen, 1, "round {round}: {} was there at its start", e.id);
                } else {
                    assert!(e.seen <= 1, "round {round}: {} inserted in it", e.id);
                }
            }
        }
        assert_eq!(moved, 7);
        // 300 rounds: the byte stamp wrapped without a round skipped.
        assert!(t.len() > 5_000, "{}", t.len());
    }

    /// Where each entry sits, by slot.
    fn slots(t: &Table<Box<E>>) -> Vec<Option<u64>> {
        (0..t.entries.num_buckets())
            .map(|i| t.entries.get_bucket(i).map(|e| e.0))
            .collect()
    }

    /// Every insert that moves an entry to another slot is counted, while
    /// the table grows and then under churn (removes leave tombstones,
    /// which hashbrown clears by rehashing in place).
    #[test]
    fn an_insert_that_moves_entries_is_counted() {
        let mut t: Table<Box<E>> = Table::default();
        let (mut counted, mut in_place) = (0, 0);
        let mut insert = |t: &mut Table<Box<E>>, id: u64| {
            let (before, moves) = (slots(t), t.moves);
            t.insert(Box::new(E(id, "a")));
            let after = slots(t);
            let kept = before.len() == after.len()
                && before
                    .iter()
                    .zip(&after)
                    .all(|(b, a)| b.is_none() || b == a);
            if !kept {
                assert_eq!(t.moves, moves + 1, "inserting {id} moved entries uncounted");
            }
            counted += t.moves - moves;
            in_place += u64::from(t.moves > moves && before.len() == after.len());
        };
        // Growth: up to the load limit of 128 slots (112 entries).
        let mut live: Vec<u64> = (0..112).collect();
        for &id in &live {
            insert(&mut t, id);
        }
        // Churn at under half that load: removes leave tombstones now and
        // then, until no slot is left to fill and the table rehashes.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = 112;
        for step in 0..6_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let gone = live.swap_remove(seed as usize % live.len());
            assert!(t.remove(&gone).is_some());
            if step < 62 {
                continue;
            }
            insert(&mut t, next);
            live.push(next);
            next += 1;
        }
        assert!(counted >= 4, "{counted} moves counted");
        assert!(in_place >= 1, "churn rehashed in place: {in_place}");
    }

    /// Keys that are not integers (the session cache's ids) hash the same
    /// way through an `Rc`.
    #[test]
    fn shared_entries_are_found_by_a_borrowed_key() {
        #[derive(Debug)]
        struct S(String);
        impl Keyed for S {
            type Key = String;
            fn key(&self) -> &String {
                &self.0
            }
        }
        let mut t: Table<Rc<S>> = Table::default();
        let a = Rc::new(S("a".into()));
        assert!(t.insert(a.clone()).is_none());
        assert!(t.get(&"a".to_string()).is_some_and(|e| Rc::ptr_eq(e, &a)));
        let again = Rc::new(S("a".into()));
        let old = t.insert(again.clone()).expect("replaced");
        assert!(Rc::ptr_eq(&old, &a));
        assert_eq!(t.len(), 1);
        assert!(t
            .remove(&"a".to_string())
            .is_some_and(|e| Rc::ptr_eq(&e, &again)));
        assert!(t.is_empty());
    }
}
