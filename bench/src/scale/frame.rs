//! The server's text frames as a scale run needs them. Unlike
//! [`crate::reply`], a broadcast keeps its text: the tag inside is the point.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Welcome {
        session: String,
        count: u64,
        resumed: bool,
        /// With history: the newest offset, and after a `since`, whether
        /// every missed broadcast follows.
        offset: Option<String>,
        recovered: Option<bool>,
    },
    Count(u64),
    Heartbeat,
    Broadcast {
        text: String,
        offset: Option<String>,
    },
    Bye {
        total: u64,
    },
    /// Valid JSON the contract does not name, or not JSON at all.
    Unknown,
}

#[derive(Deserialize)]
struct Any {
    session_id: Option<String>,
    count: Option<u64>,
    resumed: Option<bool>,
    ts: Option<serde::de::IgnoredAny>,
    broadcast: Option<String>,
    offset: Option<String>,
    recovered: Option<bool>,
    bye: Option<bool>,
    total: Option<u64>,
}

pub fn parse(text: &str) -> Frame {
    let Ok(m) = serde_json::from_str::<Any>(text) else {
        return Frame::Unknown;
    };
    match m {
        Any {
            session_id: Some(session),
            count: Some(count),
            resumed: Some(resumed),
            offset,
            recovered,
            ..
        } => Frame::Welcome {
            session,
            count,
            resumed,
            offset,
            recovered,
        },
        Any {
            bye: Some(true),
            total: Some(total),
            ..
        } => Frame::Bye { total },
        Any {
            count: Some(n),
            session_id: None,
            ..
        } => Frame::Count(n),
        Any {
            broadcast: Some(text),
            offset,
            ..
        } => Frame::Broadcast { text, offset },
        Any { ts: Some(_), .. } => Frame::Heartbeat,
        _ => Frame::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_frame() {
        let id = "0b7d2a4e-5c1f-4e8a-9d3b-6f2e1a0c9b8d";
        assert_eq!(
            parse(&format!(
                r#"{{"session_id":"{id}","count":4,"resumed":true}}"#
            )),
            Frame::Welcome {
                session: id.into(),
                count: 4,
                resumed: true,
                offset: None,
                recovered: None,
            }
        );
        assert_eq!(
            parse(&format!(
                r#"{{"session_id":"{id}","count":0,"resumed":false,"offset":"5-1","recovered":true}}"#
            )),
            Frame::Welcome {
                session: id.into(),
                count: 0,
                resumed: false,
                offset: Some("5-1".into()),
                recovered: Some(true),
            }
        );
        assert_eq!(parse(r#"{"count":7}"#), Frame::Count(7));
        assert_eq!(parse(r#"{"ts":"2026-01-01T00:00:00Z"}"#), Frame::Heartbeat);
        assert_eq!(
            parse(r#"{"broadcast":"fanout:1:2"}"#),
            Frame::Broadcast {
                text: "fanout:1:2".into(),
                offset: None
            }
        );
        assert_eq!(
            parse(r#"{"broadcast":"x","offset":"7-0","room":"r"}"#),
            Frame::Broadcast {
                text: "x".into(),
                offset: Some("7-0".into())
            }
        );
        assert_eq!(parse(r#"{"bye":true,"total":9}"#), Frame::Bye { total: 9 });
        assert_eq!(parse(r#"{"count":"x"}"#), Frame::Unknown);
        assert_eq!(parse("nope"), Frame::Unknown);
        assert_eq!(parse(r#"{"other":1}"#), Frame::Unknown);
    }
}
