//! A socket's rooms on the way in: joining one (its subscription confirmed
//! before anything is read, so nothing falls between) and recovering what a
//! socket missed on its channels, at the upgrade and at a join on an open
//! socket. Knows nothing of the plane: its callers hand the socket over.

use std::rc::Rc;
use std::time::Duration;

use crate::context::Context;
use crate::history::{Chan, Channel, Piece, Recovery, Since};
use crate::metrics::ErrorKind;
use crate::protocol::{self, WelcomeHistory};

/// How long a join waits for Redis to confirm its room's subscription.
const ROOM_JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A room a socket joined: its shared name and, with history, its head as
/// read at the join when the shard had delivered nothing there.
pub struct Joined {
    pub name: Rc<str>,
    pub head: Option<Piece>,
}

/// Adds socket `conn` to `room` (pending: an open socket, handed the room's
/// broadcasts only once its recovery is sent) and waits a bounded time for
/// Redis to confirm the room's subscription, so that a client told it is in
/// gets every room broadcast published after that. None when the shard
/// holds all the rooms it may (`max_rooms`).
pub async fn join(ctx: &Context, room: &str, conn: u64, pending: bool) -> Option<Joined> {
    let joined = if pending {
        ctx.pubsub.join_pending(room, conn)
    } else {
        ctx.pubsub.join(room, conn)
    };
    let (name, confirmed) = match joined {
        Ok(j) => j,
        Err(e) => {
            ctx.metrics().error(ErrorKind::TooManyRooms);
            if let Some(unlogged) = ctx.log_gate(ErrorKind::TooManyRooms) {
                tracing::warn!(limit = ctx.cfg().max_rooms, unlogged, "room refused: {e}");
            }
            return None;
        }
    };
    let fresh = confirmed.is_some();
    if let Some(confirmed) = confirmed {
        // Bounded: with the subscription connection down the socket still
        // joins, and gets the room's broadcasts once it is back.
        let waited = glommio::timer::timeout(ROOM_JOIN_TIMEOUT, async {
            let _ = confirmed.await;
            Ok(())
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                room,
                "room subscription not confirmed in time; joining anyway"
            );
        }
    }
    // The room's head for the position, read once the subscription holds
    // (so nothing falls between the two), when this shard has delivered
    // nothing there since it subscribed.
    let h = &ctx.history;
    if fresh {
        h.forget_head(&name);
    }
    let mut head = None;
    if h.enabled() && h.head(Some(&name)).is_none() {
        match h.read_head(ctx.redis(), Some(&name)).await {
            Ok(p) => {
                h.set_tentative_head(&name, p);
                head = Some(p);
            }
            Err(e) => {
                tracing::warn!(room, error = %e, "room head not read; the position leaves the room out");
            }
        }
    }
    Some(Joined { name, head })
}

/// What a recovery says: the welcome's part (the upgrade's channels), and
/// the answer for each room joined on its own (`joined`, its position and
/// whether what follows is all it missed there).
pub struct Said {
    pub welcome: WelcomeHistory,
    pub joined: Vec<String>,
}

/// What a socket that asked to recover missed on `chans`, and what its
/// welcome and its `joined` answers say about history. Without history
/// they say nothing of it, except `recovered: false` to a client that asked.
/// `restored`: the rooms joined on their own (`alone`) are a resumed
/// session's, joined again at its upgrade.
pub async fn recover(
    ctx: &Context,
    since: Option<Since>,
    chans: &[Channel],
    restored: bool,
) -> (Recovery, Said) {
    let h = &ctx.history;
    let asked = since.is_some();
    let alone = chans.iter().filter(|c| c.alone);
    if !h.enabled() {
        let recovered = asked.then_some(false);
        let said = Said {
            welcome: WelcomeHistory {
                recovered,
                ..WelcomeHistory::default()
            },
            joined: alone
                .map(|c| protocol::joined(name(c), None, recovered, restored))
                .collect(),
        };
        return (Recovery::default(), said);
    }
    let recovery = match since {
        None => Recovery {
            start: h.position_now(chans),
            ..Recovery::default()
        },
        Some(since) => {
            let m = ctx.metrics();
            let recovery = h.recover(ctx.redis(), &since, chans).await;
            m.recoveries_total.inc();
            if !recovery.complete() {
                m.recoveries_incomplete_total.inc();
            }
            m.recovered_messages_total.add(recovery.texts.len() as u64);
            recovery
        }
    };
    let is_alone = |chan: &Chan| chans.iter().any(|c| c.alone && c.chan == *chan);
    // Whether everything missed on the channels `of` picks is in `texts`.
    let complete =
        |of: &dyn Fn(&Chan) -> bool| asked.then(|| !recovery.lost.iter().any(|(c, _)| of(c)));
    let upgrade: Vec<(Chan, Piece)> = recovery
        .start
        .iter()
        .filter(|(c, _)| !is_alone(c))
        .cloned()
        .collect();
    let welcome = WelcomeHistory {
        offset: upgrade
            .iter()
            .find(|(c, _)| c.is_none())
            .map(|(_, p)| p.offset),
        position: Some(Recovery::token(&upgrade)),
        recovered: complete(&|c| !is_alone(c)),
    };
    let joined = alone
        .map(|c| {
            let start: Vec<(Chan, Piece)> = recovery
                .start
                .iter()
                .filter(|(s, _)| *s == c.chan)
                .cloned()
                .collect();
            let token = Recovery::token(&start);
            let recovered = complete(&|l| *l == c.chan);
            protocol::joined(name(c), Some(&token), recovered, restored)
        })
        .collect();
    (recovery, Said { welcome, joined })
}

fn name(c: &Channel) -> &str {
    c.chan.as_deref().unwrap_or_default()
}
