//! The counter: what the service's sockets do on the plane. Every text
//! message is counted in the socket's session and answered `{"count":n}`
//! (after Redis has it, in sync durability), under the socket's rate limit;
//! a binary message is a control frame (a token refresh, a room joined or
//! left); a token's expiry ends the socket at the sweep; a socket that
//! leaves the table gets its goodbye from `goodbye`.

use std::rc::Rc;
use std::time::Instant;

use crate::auth;
use crate::config::Durability;
use crate::context::{Context, Slot};
use crate::history::{Channel, Position, Recovery, Since};
use crate::metrics::{Denial, ErrorKind};
use crate::presence;
use crate::protocol::{self, Member};
use crate::pubsub;
use crate::session::Session;
use crate::store::Commit;
use crate::ws::codec::{self, Controls, WsError};
use crate::ws::control::{self, Command};
use crate::ws::goodbye::{self, Ended, Exit};
use crate::ws::plane::{
    Beat, Flow, Handler, Idle, Left, Limits, Message, Plane, PlaneError, Slice,
};
use crate::ws::rooms;

/// The shard's counting sockets.
pub type Sockets = Plane<Counter>;

/// Token bucket for one socket; the rate and burst are the shard's.
struct Bucket {
    tokens: f32,
    last: Instant,
    strikes: u32,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f32, burst: f32) -> bool {
        if rate == 0.0 {
            return true;
        }
        let refill = now.duration_since(self.last).as_secs_f32() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// What a socket's token granted, kept while it is open (with
/// `--auth-secret` only; boxed so a socket without one pays a pointer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`: a refresh must name the same one.
    pub sub: Option<Box<str>>,
    /// When the token expires; the sweep closes the socket past it.
    pub expires: Option<Instant>,
    /// The rooms the token lets the socket join.
    pub rooms: auth::Rooms,
}

/// The rooms a socket joined on the open socket, in join order. A box of
/// its own keeps the common case (none) at one pointer per socket, where a
/// `Vec` would take three.
#[derive(Default)]
struct JoinedRooms(Vec<Rc<str>>);

/// A counting socket's own state, beside the plane's.
pub struct Conn {
    /// Its place under `max_connections`, given back when its close ends.
    slot: Slot,
    pub session: Rc<Session>,
    /// The room of the upgrade's `?room=`: its broadcasts and the global
    /// channel's carry the socket's position on both.
    room: Option<Rc<str>>,
    /// Rooms joined on the open socket (boxed: most sockets have none).
    joined: Option<Box<JoinedRooms>>,
    grant: Option<Box<Grant>>,
    bucket: Bucket,
    messages: u64,
}

/// The counter's settings, copied out of the config once, and the shard.
pub struct Counter {
    ctx: Rc<Context>,
    rate: f32,
    burst: f32,
    strikes: u32,
    sync: bool,
    max_rooms: usize,
}

/// The shard's plane of counting sockets.
pub fn plane(ctx: Rc<Context>) -> Result<Rc<Sockets>, PlaneError> {
    let cfg = ctx.cfg();
    let limits = Limits::of(cfg);
    let counter = Counter {
        rate: cfg.rate_limit as f32,
        burst: cfg.rate_burst as f32,
        strikes: cfg.rate_strikes,
        sync: cfg.durability == Durability::Sync,
        max_rooms: cfg.max_rooms_per_socket,
        ctx,
    };
    Plane::new(counter, limits)
}

impl Conn {
    /// The room of the socket's upgrade, if it named one and is still in it.
    pub fn room(&self) -> Option<&Rc<str>> {
        self.room.as_ref()
    }

    /// Every room the socket is in: its upgrade's, then those it joined.
    pub fn rooms(&self) -> impl Iterator<Item = &Rc<str>> {
        self.room
            .iter()
            .chain(self.joined.iter().flat_map(|j| j.0.iter()))
    }

    fn in_room(&self, room: &str) -> bool {
        self.rooms().any(|r| &**r == room)
    }

    /// Takes `room` off the socket; None when it was not in it.
    fn take_room(&mut self, room: &str) -> Option<Rc<str>> {
        if self.room.as_deref() == Some(room) {
            return self.room.take();
        }
        let j = self.joined.as_mut()?;
        let i = j.0.iter().position(|r| &**r == room)?;
        let name = j.0.remove(i);
        if j.0.is_empty() {
            self.joined = None;
        }
        Some(name)
    }
}

impl Counter {
    /// A socket's state as it joins the plane, counted as open.
    /// `rooms`: the upgrade's room, and those its session had, joined again.
    pub fn open(
        &self,
        slot: Slot,
        session: Rc<Session>,
        rooms: (Option<Rc<str>>, Vec<Rc<str>>),
        grant: Option<Box<Grant>>,
    ) -> Conn {
        let (room, joined) = rooms;
        let m = self.ctx.metrics();
        m.connections_active.inc();
        m.connections_total.inc();
        Conn {
            slot,
            session,
            room,
            joined: (!joined.is_empty()).then(|| Box::new(JoinedRooms(joined))),
            grant,
            bucket: Bucket {
                tokens: self.burst,
                last: Instant::now(),
                strikes: 0,
            },
            messages: 0,
        }
    }

    fn text(
        &self,
        plane: &Rc<Sockets>,
        conn: u64,
        c: &mut Conn,
        arrived: Instant,
        out: &mut Vec<u8>,
    ) -> Flow {
        // One clock read serves the rate limit and the latency histogram.
        let now = Instant::now();
        match self.admit(c, now, out) {
            Err(exit) => return Flow::End(exit),
            Ok(false) => return Flow::Go,
            Ok(true) => {}
        }
        let count = c.session.increment();
        if self.sync {
            persist_then_answer(plane, conn, c.session.clone(), count, arrived);
            return Flow::Park;
        }
        self.ctx.store.enqueue(&c.session);
        self.counted(c, (count, true), arrived, now, out);
        Flow::Go
    }

    fn binary(
        &self,
        plane: &Rc<Sockets>,
        conn: u64,
        c: &mut Conn,
        msg: (&mut Controls, Instant),
        out: &mut Vec<u8>,
    ) -> Flow {
        let (payload, arrived) = msg;
        // A control frame costs a message of the rate limit, so commands
        // cannot be a way around it.
        match self.admit(c, Instant::now(), out) {
            Err(exit) => return Flow::End(exit),
            Ok(false) => return Flow::Go,
            Ok(true) => {}
        }
        let Some(bytes) = payload.take() else {
            return Flow::End(Exit::Invalid(WsError::Protocol("control frame too long")));
        };
        let reply = match control::parse(&bytes) {
            Err(e) => {
                tracing::info!(error = %e, "binary message is not a control frame");
                return Flow::End(Exit::Invalid(WsError::Binary));
            }
            Ok(Command::Refresh(token)) => match self.refresh(c, &token) {
                Ok(text) => text,
                Err(why) => return Flow::End(Exit::TokenRefused(why)),
            },
            Ok(Command::Join { room, position }) => {
                match self.join(conn, c, room, position.as_deref()) {
                    Ok(join) => {
                        join_then_answer(plane, conn, join, arrived);
                        return Flow::Park;
                    }
                    Err(reply) => reply,
                }
            }
            Ok(Command::Leave(room)) => self.leave(conn, c, &room),
        };
        codec::encode_text(out, reply.as_bytes());
        Flow::Go
    }

    /// The checks of a join that need no Redis: Ok with what the join
    /// task needs, or Err with the answer (a refusal, which leaves the
    /// socket open, or the position of a room the socket is in already).
    fn join(
        &self,
        conn: u64,
        c: &Conn,
        room: String,
        position: Option<&str>,
    ) -> Result<LiveJoin, String> {
        if let Err(e) = pubsub::check_room(&room) {
            return Err(protocol::room_refusal(
                "invalid_room",
                None,
                Some(&e.to_string()),
            ));
        }
        if let Some(grant) = &c.grant {
            if !grant.rooms.allows(&room) {
                self.ctx.metrics().denied(Denial::RoomNotAllowed);
                tracing::info!(
                    conn_id = conn,
                    room,
                    sub = grant.sub.as_deref(),
                    "join refused: room not in the token"
                );
                return Err(protocol::room_refusal(
                    "forbidden",
                    Some(&room),
                    Some("the token's rooms claim does not name this room"),
                ));
            }
        }
        let since = match position.map(str::parse::<Position>) {
            None => None,
            Some(Ok(p)) => Some(Since::Position(p)),
            Some(Err(e)) => {
                return Err(protocol::room_refusal(
                    "invalid_position",
                    Some(&room),
                    Some(&e.to_string()),
                ))
            }
        };
        if c.in_room(&room) {
            // Nothing to recover: the socket has had the room's broadcasts.
            let h = &self.ctx.history;
            let position = h.enabled().then(|| {
                let chan = Channel {
                    chan: self.ctx.pubsub.room_name(&room),
                    head: None,
                    alone: true,
                };
                Recovery::token(&h.position_now(&[chan]))
            });
            return Err(protocol::joined(&room, position.as_deref(), None, false));
        }
        if c.rooms().count() >= self.max_rooms {
            return Err(protocol::room_refusal(
                "too_many_rooms",
                Some(&room),
                Some("the socket is in as many rooms as it may be"),
            ));
        }
        Ok(LiveJoin { room, since })
    }

    /// A leave: the room's broadcasts stop with the next one.
    fn leave(&self, conn: u64, c: &mut Conn, room: &str) -> String {
        if let Err(e) = pubsub::check_room(room) {
            return protocol::room_refusal("invalid_room", None, Some(&e.to_string()));
        }
        if let Some(name) = c.take_room(room) {
            self.ctx.pubsub.leave(room, conn);
            let entry = presence_entry(&self.ctx, conn, c);
            self.ctx.presence.left(&name, entry, || presence_member(c));
            save_rooms(&self.ctx, c);
        }
        protocol::left(room)
    }

    /// The rate limit for one message: Ok(true) when it may go on, Ok(false)
    /// when it is refused (the error reply is in `out`), Err when the socket
    /// has been refused too often in a row.
    fn admit(&self, c: &mut Conn, now: Instant, out: &mut Vec<u8>) -> Result<bool, Exit> {
        if c.bucket.take(now, self.rate, self.burst) {
            return Ok(true);
        }
        self.ctx.metrics().error(ErrorKind::RateLimited);
        if let Some(unlogged) = self.ctx.log_gate(ErrorKind::RateLimited) {
            tracing::info!(unlogged, "rate limited: message not counted");
        }
        if c.bucket.strikes >= self.strikes {
            return Err(Exit::RateLimited);
        }
        codec::encode_text(out, protocol::error("rate_limited").as_bytes());
        Ok(false)
    }

    /// A refresh: the new token must verify, name the same subject and
    /// still allow every room the socket is in; then it replaces the old
    /// one and its `exp` is the socket's new deadline. Returns the reply, or why the
    /// socket must close (4001).
    fn refresh(&self, c: &mut Conn, token: &str) -> Result<String, &'static str> {
        let (Some(secret), Some(grant)) = (&self.ctx.cfg().auth_secret, c.grant.as_ref()) else {
            // Without auth there is nothing to refresh; the socket stays.
            return Ok(protocol::error("auth_off"));
        };
        let now_unix = auth::unix_now();
        let id = auth::verify(secret.as_bytes(), token, now_unix).map_err(|e| e.reason())?;
        if id.sub.as_deref() != grant.sub.as_deref() {
            return Err("the token names another subject");
        }
        if c.rooms().any(|r| !id.rooms.allows(r)) {
            return Err("the token does not name the socket's room");
        }
        let grant = c.grant.as_mut().expect("checked above");
        grant.expires = auth::deadline(id.exp, now_unix, Instant::now());
        grant.rooms = id.rooms;
        tracing::debug!(sub = id.sub, exp = id.exp, "token refreshed");
        Ok(protocol::refreshed(id.exp))
    }

    /// Appends the reply to a counted message.
    fn counted(
        &self,
        c: &mut Conn,
        (count, confirmed): (u64, bool),
        arrived: Instant,
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        let m = self.ctx.metrics();
        c.messages += 1;
        m.messages_total.inc();
        // The reply is under 126 bytes: a two-byte header, no allocation.
        let at = out.len();
        out.extend_from_slice(&[0x81, 0]);
        protocol::count(out, count, confirmed);
        out[at + 1] = (out.len() - at - 2) as u8;
        m.message_duration
            .observe_ns(now.saturating_duration_since(arrived).as_nanos() as u64);
    }

    /// A sync write came back: one of three answers, each true. Confirmed:
    /// the count's plain reply. Not counted: only when no write can have
    /// carried the increment, which is then taken back. Otherwise (the
    /// master took it without its replicas, or a try's outcome is unknown,
    /// or another socket counted since) the increment stays, is written
    /// again by the flush, and is answered as counted, not confirmed.
    fn answer(
        &self,
        c: &mut Conn,
        count: u64,
        arrived: Instant,
        commit: Commit,
        out: &mut Vec<u8>,
    ) {
        let confirmed = match commit {
            Commit::Confirmed => true,
            Commit::Failed if c.session.undo(count) => {
                self.ctx.metrics().error(ErrorKind::RedisUnavailable);
                codec::encode_text(out, protocol::error("redis_unavailable").as_bytes());
                return;
            }
            Commit::Unconfirmed | Commit::Failed => false,
        };
        if !confirmed {
            self.ctx.metrics().error(ErrorKind::Unconfirmed);
        }
        self.counted(c, (count, confirmed), arrived, Instant::now(), out);
    }
}

/// Sync durability: the socket is parked while Redis takes the count, then
/// answered and resumed.
fn persist_then_answer(
    plane: &Rc<Sockets>,
    conn: u64,
    session: Rc<Session>,
    count: u64,
    arrived: Instant,
) {
    let plane = plane.clone();
    glommio::spawn_local(async move {
        // glommio polls a spawned task once, at once, inside this call,
        // while the plane still holds its socket table; a write that fails
        // without waiting (Redis down) would then resume into it.
        futures_lite::future::yield_now().await;
        let counter = plane.handler();
        let wait = counter.ctx.cfg().sync_timeout;
        // The commit stops trying at `wait`, but a try already sent may
        // take longer (a WAIT, a slow reply): the reply does not wait for
        // it. The try goes on by itself, and its session cannot be taken
        // back while it flies, so the answer then is "counted, not
        // confirmed", which is true.
        let (done, commit) = futures_channel::oneshot::channel();
        let ctx = counter.ctx.clone();
        let s = session.clone();
        glommio::spawn_local(async move {
            let _ = done.send(Box::pin(ctx.store.commit(&s, wait)).await);
        })
        .detach();
        let commit =
            glommio::timer::timeout(wait, async { Ok(commit.await.unwrap_or(Commit::Failed)) })
                .await
                .unwrap_or(Commit::Failed);
        plane.resume(conn, arrived, |c, out| {
            counter.answer(c, count, arrived, commit, out)
        });
    })
    .detach();
}

/// A join the socket may make, checked; what its task needs.
struct LiveJoin {
    room: String,
    since: Option<Since>,
}

/// A join on an open socket: the socket is parked while the room's
/// subscription is confirmed and what it asked to recover is read; then, in
/// one loop turn, it is answered (`joined`, what it missed) and becomes a
/// member, so the room's next live broadcast follows what it recovered.
fn join_then_answer(plane: &Rc<Sockets>, conn: u64, join: LiveJoin, arrived: Instant) {
    let plane = plane.clone();
    glommio::spawn_local(async move {
        // As in `persist_then_answer`: not inside the plane's own call.
        futures_lite::future::yield_now().await;
        let ctx = plane.handler().ctx.clone();
        let LiveJoin { room, since } = join;
        let Some(j) = Box::pin(rooms::join(&ctx, &room, conn, true)).await else {
            let no = protocol::room_refusal("too_many_rooms", Some(&room), None);
            plane.resume(conn, arrived, |_, out| {
                codec::encode_text(out, no.as_bytes())
            });
            return;
        };
        let asked = since.is_some();
        let chans = [Channel {
            chan: Some(j.name.clone()),
            head: j.head,
            alone: true,
        }];
        let (recovery, said) = Box::pin(rooms::recover(&ctx, since, &chans, false)).await;
        let mut admitted = false;
        plane.resume(conn, arrived, |c, out| {
            if !ctx.pubsub.admit(&j.name, conn) {
                return;
            }
            admitted = true;
            if asked && ctx.history.enabled() {
                for (chan, has) in &recovery.has {
                    ctx.history.set_floor(conn, chan.clone(), *has);
                }
            }
            c.joined
                .get_or_insert_with(Default::default)
                .0
                .push(j.name.clone());
            save_rooms(&ctx, c);
            let entry = presence_entry(&ctx, conn, c);
            ctx.presence.joined(&j.name, entry, || presence_member(c));
            for joined in &said.joined {
                codec::encode_text(out, joined.as_bytes());
            }
            for (chan, why) in &recovery.lost {
                codec::encode_text(out, protocol::unrecovered(chan.as_deref(), *why).as_bytes());
            }
            for t in &recovery.texts {
                codec::encode_text(out, t.as_bytes());
            }
            tracing::debug!(
                conn_id = conn,
                room,
                asked,
                missed = recovery.texts.len(),
                "room joined"
            );
        });
        if !admitted {
            // The socket ended while it waited.
            ctx.pubsub.leave(&j.name, conn);
        }
    })
    .detach();
}

/// A socket's presence entry (see [`presence::entry`]).
pub fn presence_entry(ctx: &Context, conn: u64, c: &Conn) -> String {
    let sub = c.grant.as_ref().and_then(|g| g.sub.as_deref());
    presence::entry(&c.session.id, sub, ctx.store.writer(), conn)
}

/// A socket as a room's member.
pub fn presence_member(c: &Conn) -> Member {
    Member {
        session_id: c.session.id.to_string(),
        sub: c
            .grant
            .as_ref()
            .and_then(|g| g.sub.as_deref())
            .map(String::from),
    }
}

/// Writes the rooms the socket joined on its open socket as its session's,
/// for a resume to join again; on a task of its own, not waited for.
fn save_rooms(ctx: &Rc<Context>, c: &Conn) {
    let rooms: Vec<Rc<str>> = c.joined.iter().flat_map(|j| j.0.iter().cloned()).collect();
    let (ctx, id) = (ctx.clone(), c.session.id);
    glommio::spawn_local(async move {
        if let Err(e) = Box::pin(ctx.store.set_rooms(&id, &rooms)).await {
            tracing::warn!(session_id = %id, error = %e, "session's rooms not written; a resume will not join them again");
        }
    })
    .detach();
}

impl Handler for Counter {
    type State = Conn;
    type Payload = Controls;

    fn payload(&self) -> Controls {
        Controls::default()
    }

    fn message(&self, plane: &Rc<Sockets>, msg: Message<'_, Self>, out: &mut Vec<u8>) -> Flow {
        if msg.binary {
            let m = (msg.payload, msg.arrived);
            self.binary(plane, msg.conn, msg.state, m, out)
        } else {
            self.text(plane, msg.conn, msg.state, msg.arrived, out)
        }
    }

    fn expired(&self, c: &Conn, now: Instant) -> Option<Exit> {
        let expires = c.grant.as_ref().and_then(|g| g.expires)?;
        (now >= expires).then_some(Exit::TokenExpired)
    }

    fn timed(&self, c: &Conn) -> bool {
        c.grant.as_ref().is_some_and(|g| g.expires.is_some())
    }

    fn ended(&self, left: Left<Conn>) {
        let Left {
            conn,
            fd,
            state,
            exit,
            unsent,
            opened,
        } = left;
        for room in state.rooms() {
            self.ctx.pubsub.leave(room, conn);
            let entry = presence_entry(&self.ctx, conn, &state);
            self.ctx
                .presence
                .left(room, entry, || presence_member(&state));
        }
        self.ctx.metrics().connections_active.dec();
        let ended = Ended {
            conn,
            fd,
            slot: state.slot,
            session: state.session,
            exit,
            unsent,
            opened,
            messages: state.messages,
        };
        // The close keeps the socket's slot, so a drain waits for it.
        glommio::spawn_local(goodbye::close(ended)).detach();
    }
}

impl Plane<Counter> {
    /// The session was deleted: its sockets close with 1008.
    pub fn kick(&self, id: &uuid::Uuid) {
        self.end_where(|c| c.session.id == *id, Exit::Kick);
    }

    /// The heartbeat for one slice of the table: `frame` to each of its
    /// sockets, and each one's session renewed when due, so an open but
    /// silent socket keeps its session alive; the idle Ping goes with it
    /// where one is due.
    pub fn heartbeat(&self, frame: &[u8], slice: Slice, idle: Option<Idle>) -> Beat {
        let ctx = &self.handler().ctx;
        let now = ctx.store.now();
        self.send_slice(frame, slice, idle, |conn, c| {
            ctx.store.renew(&c.session, now);
            for r in c.rooms() {
                ctx.presence.renew(r, || presence_entry(ctx, conn, c));
            }
        })
    }
}
#[cfg(test)]
mod tests {
    /// An idle socket is its table entry, one allocation: at 160 bytes it
    /// sits in the allocator's 160-byte class; one byte more and it takes
    /// 192 (the 192 bytes it had before its decoder's counts and its last
    /// read's clock shrank to four bytes each; 272 before that took 320).
    /// Grow it only knowingly, and box what a socket holds rarely (see
    /// `Spill`, `JoinedRooms`, `Grant`).
    #[test]
    fn an_idle_sockets_entry_stays_in_the_160_byte_class() {
        assert_eq!(crate::ws::plane::sock_size::<super::Counter>(), 160);
        assert_eq!(std::mem::size_of::<super::Conn>(), 80);
    }
}
