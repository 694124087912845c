//! The commands and push kinds of the plain and the sharded pub/sub mode,
//! and the publishes built from them.

use crate::config::PubsubMode;
use crate::redis as rds;

use super::room::EVENTS_CHANNEL;

/// The commands and push kinds of one pub/sub mode.
#[derive(Debug, Clone, Copy)]
pub struct Verbs {
    pub publish: &'static str,
    pub(super) subscribe: &'static str,
    pub(super) unsubscribe: &'static str,
    pub(super) message: &'static [u8],
    pub(super) subscribed: &'static [u8],
    pub(super) unsubscribed: &'static [u8],
}

impl Verbs {
    pub fn of(mode: PubsubMode) -> Verbs {
        match mode {
            PubsubMode::Plain => Verbs {
                publish: "PUBLISH",
                subscribe: "SUBSCRIBE",
                unsubscribe: "UNSUBSCRIBE",
                message: b"message",
                subscribed: b"subscribe",
                unsubscribed: b"unsubscribe",
            },
            PubsubMode::Sharded => Verbs {
                publish: "SPUBLISH",
                subscribe: "SSUBSCRIBE",
                unsubscribe: "SUNSUBSCRIBE",
                message: b"smessage",
                subscribed: b"ssubscribe",
                unsubscribed: b"sunsubscribe",
            },
        }
    }

    /// Where a publish on `channel` goes in a cluster: its slot's master
    /// for a sharded channel; any node for a plain one, which PUBLISH
    /// carries to all.
    pub fn slot(&self, channel: &str) -> Option<rds::Slot> {
        (self.publish == "SPUBLISH").then(|| rds::Slot::of(channel))
    }

    /// The publish command for `channel`, ready to queue on the command
    /// connection.
    pub fn publish(&self, channel: &str, payload: &str) -> redis::Cmd {
        redis::cmd(self.publish).arg(channel).arg(payload).clone()
    }

    /// The event that closes session `id`'s sockets on every shard of
    /// every process, and where it must be sent.
    pub fn kick(&self, id: &uuid::Uuid) -> Publish {
        let event = serde_json::to_string(&crate::protocol::BusEvent::kick(id.to_string()))
            .unwrap_or_default();
        Publish {
            cmd: self.publish(EVENTS_CHANNEL, &event),
            slot: self.slot(EVENTS_CHANNEL),
        }
    }
}

/// A publish built by [`Verbs`], with the cluster slot it must go to.
pub struct Publish {
    pub cmd: redis::Cmd,
    pub slot: Option<rds::Slot>,
}
