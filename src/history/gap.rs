//! Gaps on live sockets: what a shard does with each live broadcast given
//! what it delivered last on the channel, and the queue a channel keeps
//! while a gap in it is read back from its stream.
//!
//! Every broadcast says the offset before it in its stream (`prev`), so a
//! shard knows one went missing the moment the next one arrives: its
//! subscription dropped and came back, or Redis lost a message on the way.
//! The channel then holds its live broadcasts while the missing range is
//! read from the stream; the range goes out first, in order, then what was
//! held, with anything already delivered dropped: no duplicate, no
//! reordering. A range history no longer has is told to the channel's
//! sockets (`unrecovered`), never left silent.

use std::rc::Rc;

use super::position::{Offset, Piece};
use super::{Chan, History};

/// Broadcasts a channel holds at most while its gap is read; past that the
/// oldest go, and the sockets are told.
const HELD_MAX: usize = 8192;

/// What to do with a live broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Next in order: deliver it.
    Deliver,
    /// Already delivered (a repair read it first): drop it.
    Duplicate,
    /// The channel is being repaired: held, to go out after the range.
    Held,
    /// Something before it is missing: held, and a repair must start.
    Gap,
    /// The stream is another life than the one the shard was delivering:
    /// what was published in the old one after the head is gone. The
    /// sockets are told; then like [`Arrival::Gap`] when it is not the
    /// first of the new life, else delivered.
    NewLife { first: bool },
    /// Next in the stream's order now, but the stream says its predecessor
    /// is older than what the shard delivered: the stream lost broadcasts
    /// the shard delivered (Redis lost its newest writes). Deliver it, and
    /// end the stream's life: its offsets no longer name one broadcast
    /// each.
    Rewound,
}

/// A broadcast held while its channel is repaired.
pub struct Held {
    pub piece: Piece,
    pub prev: Option<Offset>,
    pub message: Rc<str>,
}

/// A channel under repair: what it holds, and whether some was dropped.
#[derive(Default)]
pub struct Repair {
    pub held: Vec<Held>,
    pub overflowed: bool,
}

impl History {
    /// Decides a live broadcast's fate on `room`'s channel (None: global):
    /// `prev` is the offset before it in its stream (None: the first of a
    /// life). A held broadcast is kept for [`History::take_held`].
    pub fn arrive(
        &self,
        room: Option<&Rc<str>>,
        piece: Piece,
        prev: Option<Offset>,
        message: &str,
    ) -> Arrival {
        let key: Chan = room.cloned();
        let mut repairs = self.repairs.borrow_mut();
        let hold = |repairs: &mut std::collections::HashMap<Chan, Repair>| {
            let r = repairs.entry(key.clone()).or_default();
            if r.held.len() == HELD_MAX {
                r.held.remove(0);
                r.overflowed = true;
            }
            r.held.push(Held {
                piece,
                prev,
                message: Rc::from(message),
            });
        };
        if repairs.contains_key(&key) {
            hold(&mut repairs);
            return Arrival::Held;
        }
        // The first broadcast since the shard subscribed may be older than
        // the head read at the join (published between the two): that one
        // is new here, not a repeat.
        let tentative = self.take_tentative(room);
        let Some(head) = self.head(room) else {
            // The first broadcast heard since the shard joined the channel.
            return Arrival::Deliver;
        };
        if piece.epoch != head.epoch {
            let first = prev.is_none();
            if !first {
                hold(&mut repairs);
            }
            if head.epoch.is_none() {
                // The channel had no stream: nothing of before was lost.
                return if first {
                    Arrival::Deliver
                } else {
                    Arrival::Gap
                };
            }
            return Arrival::NewLife { first };
        }
        if piece.offset <= head.offset {
            if tentative {
                self.set_head(room, Some(piece));
                return Arrival::Deliver;
            }
            return Arrival::Duplicate;
        }
        match prev {
            Some(p) if p == head.offset => Arrival::Deliver,
            Some(p) if p < head.offset => Arrival::Rewound,
            _ => {
                hold(&mut repairs);
                Arrival::Gap
            }
        }
    }

    /// Marks `room`'s channel as under repair (a probe found its stream
    /// ahead of what the shard delivered): broadcasts are held from now.
    /// False when a repair already runs.
    pub fn begin_repair(&self, room: Option<&Rc<str>>) -> bool {
        let mut repairs = self.repairs.borrow_mut();
        let key: Chan = room.cloned();
        if repairs.contains_key(&key) {
            return false;
        }
        repairs.insert(key, Repair::default());
        true
    }

    /// Whether `room`'s channel is under repair.
    pub fn repairing(&self, room: Option<&Rc<str>>) -> bool {
        self.repairs.borrow().contains_key(&room.cloned())
    }

    /// What the channel held, oldest first, and whether some was dropped;
    /// the repair goes on (and holds what comes next) until
    /// [`History::end_repair`].
    pub fn take_held(&self, room: Option<&Rc<str>>) -> (Vec<Held>, bool) {
        let mut repairs = self.repairs.borrow_mut();
        match repairs.get_mut(&room.cloned()) {
            Some(r) => (
                std::mem::take(&mut r.held),
                std::mem::replace(&mut r.overflowed, false),
            ),
            None => (Vec::new(), false),
        }
    }

    /// Ends the repair if nothing came while the last held ones went out;
    /// false when more is held (the caller takes it and goes on).
    pub fn end_repair(&self, room: Option<&Rc<str>>) -> bool {
        let mut repairs = self.repairs.borrow_mut();
        let key: Chan = room.cloned();
        match repairs.get(&key) {
            Some(r) if !r.held.is_empty() || r.overflowed => false,
            _ => {
                repairs.remove(&key);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::position::Epoch;
    use super::*;
    use crate::redis::replicas::Replicas;

    fn history() -> History {
        History::new(10, 1000, "PUBLISH", Rc::new(Replicas::new(0)), 100)
    }

    fn at(epoch: u64, ms: u64) -> Piece {
        Piece {
            epoch: Some(Epoch(epoch)),
            offset: Offset { ms, seq: 0 },
        }
    }

    fn off(ms: u64) -> Option<Offset> {
        Some(Offset { ms, seq: 0 })
    }

    #[test]
    fn in_order_is_delivered_a_repeat_dropped_a_skip_held() {
        let h = history();
        assert_eq!(
            h.arrive(None, at(1, 5), off(4), "a"),
            Arrival::Deliver,
            "first heard"
        );
        h.on_live(None, at(1, 5), "a");
        assert_eq!(h.arrive(None, at(1, 6), off(5), "b"), Arrival::Deliver);
        h.on_live(None, at(1, 6), "b");
        assert_eq!(h.arrive(None, at(1, 6), off(5), "b"), Arrival::Duplicate);
        assert_eq!(h.arrive(None, at(1, 9), off(8), "d"), Arrival::Gap);
        assert!(h.repairing(None));
        assert_eq!(h.arrive(None, at(1, 10), off(9), "e"), Arrival::Held);
        let (held, overflowed) = h.take_held(None);
        let got: Vec<&str> = held.iter().map(|m| &*m.message).collect();
        assert_eq!((got, overflowed), (vec!["d", "e"], false));
        assert!(h.end_repair(None));
        assert!(!h.repairing(None));
        // Rooms are their own channels.
        let lobby: Rc<str> = Rc::from("lobby");
        assert_eq!(
            h.arrive(Some(&lobby), at(2, 1), None, "x"),
            Arrival::Deliver
        );
    }

    #[test]
    fn another_life_is_told_and_a_missed_start_is_read_back() {
        let h = history();
        h.on_live(None, at(1, 5), "a");
        assert_eq!(
            h.arrive(None, at(2, 7), None, "new"),
            Arrival::NewLife { first: true }
        );
        assert!(!h.repairing(None));
        assert_eq!(
            h.arrive(None, at(3, 9), off(8), "later"),
            Arrival::NewLife { first: false }
        );
        assert!(h.repairing(None), "the start of that life is read back");
        // A channel with no stream before loses nothing by a new life.
        let h = history();
        h.set_head(None, None);
        assert_eq!(h.arrive(None, at(1, 1), None, "first"), Arrival::Deliver);
        assert_eq!(h.arrive(None, at(1, 3), off(2), "skip"), Arrival::Gap);
    }

    #[test]
    fn a_predecessor_older_than_what_was_delivered_is_a_rewound_stream() {
        let h = history();
        h.on_live(None, at(1, 5), "a");
        h.on_live(None, at(1, 6), "b");
        // The stream lost 6 (and maybe 5): what comes next names 4.
        assert_eq!(h.arrive(None, at(1, 9), off(4), "c"), Arrival::Rewound);
        assert!(!h.repairing(None), "nothing to read back: it is delivered");
        h.on_live(None, at(1, 9), "c");
        assert_eq!(h.arrive(None, at(1, 10), off(9), "d"), Arrival::Deliver);
    }

    #[test]
    fn a_probe_repair_holds_and_ends_only_once_drained() {
        let h = history();
        h.on_live(None, at(1, 5), "a");
        assert!(h.begin_repair(None));
        assert!(!h.begin_repair(None), "one repair a channel");
        assert_eq!(h.arrive(None, at(1, 6), off(5), "b"), Arrival::Held);
        assert!(!h.end_repair(None), "something is held");
        assert_eq!(h.take_held(None).0.len(), 1);
        assert!(h.end_repair(None));
        for i in 0..HELD_MAX as u64 + 1 {
            if i == 0 {
                assert!(h.begin_repair(None));
            }
            h.arrive(None, at(1, 10 + i), off(9 + i), "m");
        }
        let (held, overflowed) = h.take_held(None);
        assert_eq!((held.len(), overflowed), (HELD_MAX, true));
    }
}
