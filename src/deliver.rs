//! What a shard does with what Redis pub/sub brings it: kicks, and
//! broadcasts delivered to its sockets in each channel's order, with gaps
//! found and read back from history ([`crate::history::gap`]), and a probe
//! that catches a subscription that died without a word.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::context::Context;
use crate::history::{Arrival, Chan, Lost, Piece};
use crate::protocol::{self, BusEvent};
use crate::pubsub::Target;
use crate::ws::codec::TextFrame;
use crate::ws::counter::{Conn, Sockets};

thread_local! {
    /// A global broadcast's frames, one per room with members here.
    static SCRATCH: std::cell::Cell<std::collections::HashMap<Chan, TextFrame>> =
        std::cell::Cell::new(std::collections::HashMap::new());
}

/// How long a probe that found the stream ahead of the shard waits for the
/// broadcast that may be on its way before it takes it for a gap.
const PROBE_GRACE: Duration = Duration::from_millis(500);

/// A broadcast or kick from Redis, delivered to this shard's sockets.
pub fn on_bus_event(ctx: &Rc<Context>, plane: &Rc<Sockets>, target: Target<'_>, payload: &[u8]) {
    if target == Target::Head {
        on_head(ctx, plane, payload);
        return;
    }
    let event = match serde_json::from_slice::<BusEvent>(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed event from redis");
            return;
        }
    };
    if let Some(msg) = event.broadcast {
        let room = match target {
            Target::Room(r) => ctx.pubsub.room_name(r),
            _ => None,
        };
        let offset = event.offset.and_then(|o| o.parse().ok());
        let Some(offset) = offset else {
            // History off: the frame of before, one for all.
            let text = protocol::broadcast(&msg, None, room.as_deref(), false);
            let frame = TextFrame::new(text.as_bytes(), plane.limits().deflate_min);
            let n = send(ctx, plane, room.as_ref(), &[], |_| &frame);
            ctx.metrics().broadcasts_delivered_total.add(n);
            return;
        };
        let piece = Piece {
            epoch: event.epoch.and_then(|e| e.parse().ok()),
            offset,
        };
        let prev = event
            .prev
            .filter(|p| !p.is_empty())
            .and_then(|p| p.parse().ok());
        arrived(ctx, plane, room, piece, prev, &msg);
    } else if let Some(diff) = event.presence {
        // Presence changes travel on their room's channel only.
        let Target::Room(r) = target else { return };
        let Some(room) = ctx.pubsub.room_name(r) else {
            return;
        };
        let text = protocol::presence(&room, &diff);
        let frame = TextFrame::new(text.as_bytes(), plane.limits().deflate_min);
        send(ctx, plane, Some(&room), &[], |_| &frame);
    } else if let Some(id) = event.kick {
        // Kicks travel on the events channel only.
        if target != Target::Events {
            return;
        }
        let Some(id) = crate::session::parse_id(&id) else {
            return;
        };
        ctx.store.forget(&id);
        plane.kick(&id);
    }
}

/// A live broadcast with history, as its channel's order says.
fn arrived(
    ctx: &Rc<Context>,
    plane: &Rc<Sockets>,
    room: Chan,
    piece: Piece,
    prev: Option<crate::history::Offset>,
    msg: &str,
) {
    match ctx.history.arrive(room.as_ref(), piece, prev, msg) {
        Arrival::Deliver => deliver(ctx, plane, room.as_ref(), piece, msg),
        Arrival::Duplicate | Arrival::Held => {}
        Arrival::Gap => spawn_repair(ctx, plane, room),
        Arrival::Rewound => {
            deliver(ctx, plane, room.as_ref(), piece, msg);
            spawn_end_life(ctx, room, piece);
        }
        Arrival::NewLife { first } => {
            tell(ctx, plane, room.as_ref(), Lost::EpochChanged);
            if first {
                deliver(ctx, plane, room.as_ref(), piece, msg);
            } else {
                // The new life's start is read back from its stream.
                ctx.history.set_head(room.as_ref(), None);
                spawn_repair(ctx, plane, room);
            }
        }
    }
}

/// The global channel's head, read on every fresh subscription connection
/// before it subscribes: the first sets where the shard starts; a later
/// one (the connection was lost and made again) shows what was published
/// meanwhile, which is read back, and every room is probed the same way.
fn on_head(ctx: &Rc<Context>, plane: &Rc<Sockets>, payload: &[u8]) {
    let h = &ctx.history;
    let now = std::str::from_utf8(payload)
        .ok()
        .and_then(Piece::parse_head)
        .unwrap_or_default();
    let Some(ours) = h.head(None) else {
        h.set_head(None, Some(now));
        return;
    };
    if behind(ours, now) && h.begin_repair(None) {
        spawn_repair(ctx, plane, None);
    }
    // A head older than what the shard delivered may be a rewound stream,
    // or only a read that crossed a live broadcast on another connection:
    // the probe reads again and tells the two apart.
    let again = rewound(ours, now);
    let (ctx, plane) = (ctx.clone(), plane.clone());
    glommio::spawn_local(async move {
        if again {
            probe(&ctx, &plane, None).await;
        }
        probe_rooms(&ctx, &plane).await
    })
    .detach();
}

/// Whether a stream whose head is `now` has broadcasts the shard, at
/// `ours`, has not delivered.
fn behind(ours: Piece, now: Piece) -> bool {
    match (ours.epoch, now.epoch) {
        (_, None) => false,
        (a, b) if a == b => now.offset > ours.offset,
        _ => true,
    }
}

/// Whether a stream whose head is `now` lacks broadcasts the shard, at
/// `ours`, delivered in the same life: Redis lost its newest writes.
fn rewound(ours: Piece, now: Piece) -> bool {
    ours.epoch.is_some() && ours.epoch == now.epoch && now.offset < ours.offset
}

/// Ends the life of a channel's stream that lacks what the shard
/// delivered (`seen`, of the rewound life) on a task of its own: its
/// offsets now name different broadcasts in different copies, so the
/// next publish starts a new life, and every reader is told
/// (`epoch_changed`) when it reaches them. One shard that saw the loss is
/// enough; the script leaves a later life alone.
fn spawn_end_life(ctx: &Rc<Context>, room: Chan, seen: Piece) {
    let Some(epoch) = seen.epoch else { return };
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let r = room.as_deref();
        match ctx.history.end_life(ctx.redis(), room.as_ref(), epoch).await {
            Ok(ended) => {
                if ended {
                    ctx.metrics().history_rewound_total.inc();
                }
                tracing::warn!(
                    room = r,
                    delivered = %seen.offset,
                    ended,
                    "the stream lacks broadcasts this shard delivered (Redis lost its newest \
                     writes); its life is ended, and its readers will be told"
                );
            }
            Err(e) => {
                tracing::warn!(room = r, error = %e, "a rewound stream's life not ended; the next probe tries again")
            }
        }
    })
    .detach();
}

/// Delivers a broadcast the channel's order allows: its frame (with each
/// reader's position) to the channel's sockets here, but those that
/// recovered it already.
fn deliver(ctx: &Context, plane: &Sockets, room: Option<&Rc<str>>, piece: Piece, msg: &str) {
    let h = &ctx.history;
    // Sockets that recovered this one already (rare, and brief).
    let skip = h.skip(room, piece);
    h.on_live(room, piece, msg);
    let min = plane.limits().deflate_min;
    let encode = |other: Option<&Rc<str>>| {
        TextFrame::new(h.live_frame(msg, room, piece, other).as_bytes(), min)
    };
    let n = if let Some(r) = room {
        // Members by `?room=` get their two-channel position; those that
        // joined on the open socket, the room's alone (made only if any).
        let home = encode(None);
        let joined = std::cell::OnceCell::new();
        send(ctx, plane, room, &skip, |c| {
            if c.room() == Some(r) {
                &home
            } else {
                joined.get_or_init(|| TextFrame::new(h.joined_frame(msg, r, piece).as_bytes(), min))
            }
        })
    } else {
        // A frame per room with members here, and one for sockets in none;
        // the table is kept between broadcasts, not made anew each time.
        let mut frames = SCRATCH.take();
        frames.insert(None, encode(None));
        ctx.pubsub.for_each_room(|r| {
            frames.insert(Some(r.clone()), encode(Some(r)));
        });
        let none = &frames[&None];
        let n = send(ctx, plane, None, &skip, |c| {
            frames.get(&c.room().cloned()).unwrap_or(none)
        });
        // Kept empty: the table's room, not last broadcast's frames.
        frames.clear();
        SCRATCH.set(frames);
        n
    };
    let m = ctx.metrics();
    m.broadcasts_delivered_total.add(n);
    // Offsets are Redis's clock at the append: the lag from append to send.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    m.broadcast_lag.observe_ns(
        now_ms
            .saturating_sub(piece.offset.ms)
            .saturating_mul(1_000_000),
    );
}

/// Tells a channel's sockets that broadcasts of it are gone, and why.
fn tell(ctx: &Context, plane: &Sockets, room: Option<&Rc<str>>, why: Lost) {
    ctx.metrics().history_gaps_unrecoverable_total.inc();
    tracing::warn!(
        room = room.map(|r| &**r),
        reason = why.as_str(),
        "broadcasts lost on a live channel; its sockets are told"
    );
    let text = protocol::unrecovered(room.map(|r| &**r), why);
    let frame = TextFrame::new(text.as_bytes(), plane.limits().deflate_min);
    send(ctx, plane, room, &[], |_| &frame);
}

/// Sends a frame (as `frame` picks it per socket) to a channel's sockets
/// here (a room's members, or all for the global one), but those in
/// `skip`.
fn send<'f>(
    ctx: &Context,
    plane: &Sockets,
    room: Option<&Rc<str>>,
    skip: &[u64],
    frame: impl Fn(&Conn) -> &'f TextFrame,
) -> u64 {
    match room {
        Some(r) => {
            let mut members = Vec::new();
            ctx.pubsub.for_each_member(r, |c| {
                if skip.binary_search(&c).is_err() {
                    members.push(c)
                }
            });
            plane.send_to_with(&members, frame)
        }
        None => plane.fan_out_with(skip, frame),
    }
}

/// Reads a channel's gap back on a task of its own; the channel was marked
/// as under repair (it holds its broadcasts) by whoever found the gap.
fn spawn_repair(ctx: &Rc<Context>, plane: &Rc<Sockets>, room: Chan) {
    ctx.metrics().history_gaps_total.inc();
    let (ctx, plane) = (ctx.clone(), plane.clone());
    glommio::spawn_local(async move { repair(&ctx, &plane, room).await }).detach();
}

/// Reads a channel's gap back from its stream and delivers it, then what
/// the channel held meanwhile, in order, none twice; goes round until
/// nothing more is held. What the stream no longer has is told.
async fn repair(ctx: &Rc<Context>, plane: &Rc<Sockets>, room: Chan) {
    let h = &ctx.history;
    let r = room.as_ref();
    loop {
        let from = h.head(r).unwrap_or_default();
        let want = from.epoch.map(|e| e.to_string()).unwrap_or_default();
        let read = match h.read(ctx.redis(), r, from, &want).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(room = r.map(|r| &**r), error = %e, "history not read to fill a gap");
                tell(ctx, plane, r, Lost::Unavailable);
                flush_held(ctx, plane, r);
                return;
            }
        };
        match read.lost {
            Some(Lost::Rewound) => {
                // The stream lost what the shard delivered: its life is
                // ended, and what it has after its own head now still goes
                // out (the next round reads it from there).
                spawn_end_life(ctx, room.clone(), from);
                h.set_head(r, read.head);
                continue;
            }
            Some(Lost::EpochChanged) => {
                tell(ctx, plane, r, Lost::EpochChanged);
                // The new life is read from its start on the next round.
                h.set_head(r, None);
                continue;
            }
            Some(why) => tell(ctx, plane, r, why),
            None => {}
        }
        let epoch = read.head.and_then(|p| p.epoch);
        let mut filled = 0;
        for (offset, message) in read.missed {
            let piece = Piece { epoch, offset };
            if behind(h.head(r).unwrap_or_default(), piece) {
                deliver(ctx, plane, r, piece, &message);
                filled += 1;
            }
        }
        ctx.metrics().history_gap_recovered_total.add(filled);
        let (held, overflowed) = h.take_held(r);
        if overflowed {
            tell(ctx, plane, r, Lost::Overflow);
        }
        let mut again = false;
        let mut told = false;
        for m in held {
            let head = h.head(r).unwrap_or_default();
            if !behind(head, m.piece) {
                continue;
            }
            let next = match m.prev {
                Some(p) => head.epoch == m.piece.epoch && p == head.offset,
                None => head.epoch != m.piece.epoch,
            };
            if next {
                deliver(ctx, plane, r, m.piece, &m.message);
            } else if filled == 0 {
                // The stream gave nothing and still does not reach this
                // one's predecessor: that range is gone. Say so, once,
                // and go on from here.
                if !told {
                    tell(ctx, plane, r, Lost::Trimmed);
                    told = true;
                }
                deliver(ctx, plane, r, m.piece, &m.message);
            } else {
                // Published while the read was out: the stream has it and
                // what came before it; the next round reads them.
                again = true;
                break;
            }
        }
        if !again && h.end_repair(r) {
            return;
        }
    }
}

/// Redis could not be read: what the channel held goes out as it is, and
/// the repair ends.
fn flush_held(ctx: &Context, plane: &Sockets, room: Option<&Rc<str>>) {
    let h = &ctx.history;
    loop {
        let (held, _) = h.take_held(room);
        for m in held {
            if behind(h.head(room).unwrap_or_default(), m.piece) {
                deliver(ctx, plane, room, m.piece, &m.message);
            }
        }
        if h.end_repair(room) {
            return;
        }
    }
}

/// Probes every channel this shard delivers every `every`: a subscription
/// that died without a word shows as a stream ahead of the shard.
pub async fn probe_every(ctx: Rc<Context>, plane: Rc<Sockets>, every: Duration) {
    loop {
        glommio::timer::sleep(every).await;
        probe(&ctx, &plane, None).await;
        probe_rooms(&ctx, &plane).await;
    }
}

async fn probe_rooms(ctx: &Rc<Context>, plane: &Rc<Sockets>) {
    let mut rooms = Vec::new();
    ctx.pubsub.for_each_room(|r| rooms.push(r.clone()));
    for r in rooms {
        probe(ctx, plane, Some(r)).await;
    }
}

/// Compares one channel's stream head with what the shard delivered, and
/// starts a repair when the stream is ahead past a grace period.
async fn probe(ctx: &Rc<Context>, plane: &Rc<Sockets>, room: Chan) {
    let h = &ctx.history;
    let r = room.as_ref();
    let Some(sent) = h.head(r).filter(|_| !h.repairing(r)) else {
        return;
    };
    let Ok(now) = h.read_head(ctx.redis(), r).await else {
        return;
    };
    // Against what the shard had delivered before the read went out: all
    // of that was in Redis already (appended before it was published);
    // what came live while the read was out may be newer than its answer.
    if rewound(sent, now) {
        spawn_end_life(ctx, room, sent);
        return;
    }
    if !h.head(r).is_some_and(|ours| behind(ours, now)) {
        return;
    }
    glommio::timer::sleep(PROBE_GRACE).await;
    if h.head(r).is_some_and(|ours| behind(ours, now)) && h.begin_repair(r) {
        tracing::info!(
            room = r.map(|r| &**r),
            "probe: the stream is ahead of what this shard delivered; reading the gap"
        );
        spawn_repair(ctx, plane, room);
    }
}
