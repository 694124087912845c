//! The text the orchestrator broadcasts: `{kind}:{seq}:{t_ns}`, where `t_ns`
//! is its monotonic clock right before the POST is written. Every process on
//! the machine shares that clock, so a receiver's latency is `now - t_ns`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A global broadcast every socket must get once.
    Fanout,
    /// A broadcast to room `seq` only.
    Room,
    /// A global broadcast published after a room one: its arrival proves the
    /// room one would have arrived already.
    Barrier,
    /// A global broadcast posted steadily while a node dies: every socket
    /// must get each one, once, in order, its node's victims through `since`.
    Stream,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fanout => "fanout",
            Kind::Room => "room",
            Kind::Barrier => "barrier",
            Kind::Stream => "stream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub kind: Kind,
    pub seq: u32,
    pub t_ns: u64,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind.as_str(), self.seq, self.t_ns)
    }
}

/// Reads a tag back; anything else (someone else's broadcast) is None.
pub fn parse(text: &str) -> Option<Tag> {
    let mut parts = text.split(':');
    let kind = match parts.next()? {
        "fanout" => Kind::Fanout,
        "room" => Kind::Room,
        "barrier" => Kind::Barrier,
        "stream" => Kind::Stream,
        _ => return None,
    };
    let seq = digits(parts.next()?)?;
    let t_ns = digits(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(Tag {
        kind,
        seq: u32::try_from(seq).ok()?,
        t_ns,
    })
}

/// Plain decimal only: `str::parse` would also take a leading `+`.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = Tag {
            kind: Kind::Fanout,
            seq: 3,
            t_ns: 123_456_789_012,
        };
        assert_eq!(t.to_string(), "fanout:3:123456789012");
        assert_eq!(parse(&t.to_string()), Some(t));
        assert_eq!(
            parse("room:0:17"),
            Some(Tag {
                kind: Kind::Room,
                seq: 0,
                t_ns: 17
            })
        );
        assert_eq!(parse("barrier:0:9").map(|t| t.kind), Some(Kind::Barrier));
        assert_eq!(parse("stream:4:9").map(|t| t.kind), Some(Kind::Stream));
    }

    #[test]
    fn foreign_text_is_not_a_tag() {
        for s in [
            "",
            "hello",
            "fanout",
            "fanout:1",
            "fanout:1:",
            "fanout::5",
            "fanout:1:2:3",
            "fanout:+1:2",
            "fanout:1:-2",
            "fanout:x:2",
            "fanout:99999999999:2",
            "Fanout:1:2",
            "room:0:18446744073709551616",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }
}
