//! Channel names, and the rules a room name must follow.

/// The channel of whole-service events ([`crate::protocol::BusEvent`]).
pub const EVENTS_CHANNEL: &str = "shardcast:events";
pub(super) const ROOM_PREFIX: &str = "shardcast:room:";
/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;

/// Why a socket cannot be in the room it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    Invalid,
    #[error("too many rooms on this shard")]
    TooMany,
}

/// Checks a room name from a query string or a broadcast body. The set is
/// narrow on purpose: names go into Redis channel names and log lines, and
/// need no escaping or percent-decoding anywhere.
pub fn check_room(name: &str) -> Result<(), RoomError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ROOM_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RoomError::Invalid)
    }
}

/// The query parameter that names a socket's room.
pub const ROOM_PARAM: &str = "room";

pub fn room_channel(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_narrow() {
        for ok in ["lobby", "a", "team-7", "eu.west:1", "x_y", &"r".repeat(64)] {
            assert_eq!(check_room(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a%20b", "é", "a/b", "a*", &"r".repeat(65)] {
            assert_eq!(check_room(bad), Err(RoomError::Invalid), "{bad}");
        }
    }
}
