//! Where a client is in the broadcast streams: an offset per channel, the
//! epoch of the stream it was read from, and the opaque token (`position`)
//! that carries them between the server and the client.
//!
//! A token is `1.` and the base64url (no padding) of a JSON list with one
//! `[channel, epoch, offset]` per channel: `""` for the global channel, a
//! room's name for a room; `epoch` 16 hex digits, or `""` when the channel
//! had no stream when the position was made (whatever it holds later is
//! new to the client). Clients never read it: they keep the newest one
//! they were sent and pass it back whole.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The query parameter that carries a position back.
pub const POSITION_PARAM: &str = "position";
/// The query parameter of before: one offset for all the socket's channels.
pub const SINCE_PARAM: &str = "since";
/// Longest token accepted (a handful of channels fit many times over).
const MAX_TOKEN: usize = 1024;
/// Channels one token may name.
const MAX_CHANNELS: usize = 16;

/// A broadcast's place in its channel's stream: its stream id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a `since` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("since must be an offset as the server sent it: <milliseconds>-<sequence>, e.g. 1767225600000-0")]
pub struct OffsetError;

impl FromStr for Offset {
    type Err = OffsetError;

    /// Digits, a dash, digits; each part fits in 64 bits. Nothing else: an
    /// offset is echoed from a frame, never typed.
    fn from_str(s: &str) -> Result<Self, OffsetError> {
        let (ms, seq) = s.split_once('-').ok_or(OffsetError)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OffsetError);
            }
            p.parse::<u64>().map_err(|_| OffsetError)
        };
        Ok(Offset {
            ms: part(ms)?,
            seq: part(seq)?,
        })
    }
}

/// One life of a channel's stream: a random id made with the stream and
/// kept beside it, so that offsets from a stream that was lost and made
/// again are told apart from this one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    pub fn random() -> Epoch {
        Epoch(rand::random())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(());
        }
        u64::from_str_radix(s, 16).map(Epoch).map_err(|_| ())
    }
}

/// Where a client is on one channel. `epoch` None: the channel had no
/// stream then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Piece {
    pub epoch: Option<Epoch>,
    pub offset: Offset,
}

impl Piece {
    /// The head a publish keeps beside its stream: `<epoch>:<offset>`.
    pub fn parse_head(s: &str) -> Option<Piece> {
        let (e, o) = s.split_once(':')?;
        Some(Piece {
            epoch: Some(e.parse().ok()?),
            offset: o.parse().ok()?,
        })
    }

    /// The newer of two pieces of one channel: another epoch wins, as the
    /// stream it names is the one there now.
    pub fn newer(self, other: Piece) -> Piece {
        if self.epoch == other.epoch {
            if other.offset > self.offset {
                other
            } else {
                self
            }
        } else {
            other
        }
    }
}

/// Why a position was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("position must be a token as the server sent it")]
pub struct PositionError;

/// A client's place on each of its channels (None: the global channel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub channels: Vec<(Option<String>, Piece)>,
}

impl Position {
    /// The piece of one channel, if the position names it.
    pub fn of(&self, room: Option<&str>) -> Option<Piece> {
        self.channels
            .iter()
            .find(|(r, _)| r.as_deref() == room)
            .map(|(_, p)| *p)
    }

    /// Adds the channels of `other` this position does not name: a client
    /// passes its upgrade's token and one per room it joined on its socket,
    /// and the first to name a channel is the one read.
    pub fn merge(&mut self, other: Position) {
        for (room, piece) in other.channels {
            if !self.channels.iter().any(|(r, _)| *r == room) {
                self.channels.push((room, piece));
            }
        }
    }

    /// The token a client passes back.
    pub fn token(&self) -> String {
        let list: Vec<[String; 3]> = self
            .channels
            .iter()
            .map(|(room, p)| {
                [
                    room.clone().unwrap_or_default(),
                    p.epoch.map(|e| e.to_string()).unwrap_or_default(),
                    p.offset.to_string(),
                ]
            })
            .collect();
        let json = serde_json::to_vec(&list).unwrap_or_default();
        format!("1.{}", URL_SAFE_NO_PAD.encode(json))
    }
}

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, PositionError> {
        if s.len() > MAX_TOKEN {
            return Err(PositionError);
        }
        let b64 = s.strip_prefix("1.").ok_or(PositionError)?;
        let json = URL_SAFE_NO_PAD.decode(b64).map_err(|_| PositionError)?;
        let list: Vec<[String; 3]> = serde_json::from_slice(&json).map_err(|_| PositionError)?;
        if list.len() > MAX_CHANNELS {
            return Err(PositionError);
        }
        let mut channels: Vec<(Option<String>, Piece)> = Vec::with_capacity(list.len());
        for [room, epoch, offset] in list {
            let room = if room.is_empty() {
                None
            } else {
                crate::pubsub::check_room(&room).map_err(|_| PositionError)?;
                Some(room)
            };
            if channels.iter().any(|(r, _)| *r == room) {
                return Err(PositionError);
            }
            let epoch = if epoch.is_empty() {
                None
            } else {
                Some(epoch.parse().map_err(|_| PositionError)?)
            };
            let offset = offset.parse().map_err(|_| PositionError)?;
            channels.push((room, Piece { epoch, offset }));
        }
        Ok(Position { channels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_strictly_and_order_numerically() {
        let o: Offset = "1767225600000-3".parse().unwrap();
        assert_eq!(
            o,
            Offset {
                ms: 1767225600000,
                seq: 3
            }
        );
        assert_eq!(o.to_string(), "1767225600000-3");
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            " 1-2",
            "1-2 ",
            "+1-2",
            "1-99999999999999999999",
            "1767225600000-0x1",
            "%31-2",
        ] {
            assert_eq!(bad.parse::<Offset>(), Err(OffsetError), "{bad:?}");
        }
        let a: Offset = "9-10".parse().unwrap();
        let b: Offset = "10-0".parse().unwrap();
        let c: Offset = "10-2".parse().unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn a_position_goes_round_its_token() {
        let e = Epoch(0x0123_4567_89ab_cdef);
        let p = Position {
            channels: vec![
                (
                    None,
                    Piece {
                        epoch: Some(e),
                        offset: Offset { ms: 5, seq: 1 },
                    },
                ),
                (
                    Some("lobby".into()),
                    Piece {
                        epoch: None,
                        offset: Offset::default(),
                    },
                ),
            ],
        };
        let t = p.token();
        assert!(t.starts_with("1."), "{t}");
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert_eq!(t.parse::<Position>(), Ok(p.clone()));
        assert_eq!(p.of(Some("lobby")).unwrap().epoch, None);
        assert_eq!(p.of(None).unwrap().epoch, Some(e));
        assert_eq!(p.of(Some("other")), None);
    }

    #[test]
    fn a_bad_token_is_refused() {
        let enc = |json: &str| format!("1.{}", URL_SAFE_NO_PAD.encode(json));
        for bad in [
            String::new(),
            "2.W10".into(),
            "1.***".into(),
            enc("{}"),
            enc(r#"[["","0123456789abcdef"]]"#),
            enc(r#"[["","0123456789ABCDEF","1-0"]]"#),
            enc(r#"[["","0123","1-0"]]"#),
            enc(r#"[["","","1"]]"#),
            enc(r#"[["bad room","","1-0"]]"#),
            enc(r#"[["","","1-0"],["","","2-0"]]"#),
            format!("1.{}", "A".repeat(MAX_TOKEN)),
        ] {
            assert_eq!(bad.parse::<Position>(), Err(PositionError), "{bad:?}");
        }
        assert_eq!(enc("[]").parse::<Position>(), Ok(Position::default()));
    }

    #[test]
    fn heads_parse_and_the_newer_piece_wins() {
        let h = Piece::parse_head("00000000000000ff:12-3").unwrap();
        assert_eq!(h.epoch, Some(Epoch(255)));
        assert_eq!(h.offset, Offset { ms: 12, seq: 3 });
        assert_eq!(Piece::parse_head("ff:12-3"), None);
        assert_eq!(Piece::parse_head("00000000000000ff"), None);
        let later = Piece {
            offset: Offset { ms: 13, seq: 0 },
            ..h
        };
        assert_eq!(h.newer(later), later);
        assert_eq!(later.newer(h), later);
        let other = Piece {
            epoch: Some(Epoch(1)),
            offset: Offset { ms: 1, seq: 0 },
        };
        assert_eq!(later.newer(other), other, "a new life of the stream wins");
    }
}
