//! What the server's text frames mean under the contract. `{"count":n}` is
//! nearly every frame a run sees, so it is read by hand without a JSON parser;
//! everything else goes through serde_json with borrowed fields. A
//! broadcast's text and offset are kept (borrowed): the scale run's tags
//! are in them.

use std::borrow::Cow;

use serde::Deserialize;

/// Length of a UUID in its text form.
pub const ID_LEN: usize = 36;

#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Welcome(Welcome<'a>),
    Count(u64),
    Heartbeat,
    Broadcast {
        text: Cow<'a, str>,
        offset: Option<&'a str>,
    },
    Bye {
        total: u64,
        /// `retry_after_ms` of a drain goodbye; None for a plain goodbye.
        retry_after_ms: Option<u64>,
        shutdown: bool,
    },
    RateLimited,
    /// Valid JSON that the contract does not name, or not JSON at all.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome<'a> {
    pub session: [u8; ID_LEN],
    pub count: u64,
    pub resumed: bool,
    /// With history: the newest offset, and after a `since`, whether
    /// every missed broadcast follows.
    pub offset: Option<&'a str>,
    pub recovered: Option<bool>,
}

#[derive(Deserialize)]
struct Any<'a> {
    session_id: Option<&'a str>,
    count: Option<u64>,
    resumed: Option<bool>,
    ts: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    broadcast: Option<Cow<'a, str>>,
    offset: Option<&'a str>,
    recovered: Option<bool>,
    bye: Option<bool>,
    total: Option<u64>,
    reason: Option<&'a str>,
    retry_after_ms: Option<u64>,
    error: Option<&'a str>,
}

pub fn parse(text: &[u8]) -> Reply<'_> {
    if let Some(n) = fast_count(text) {
        return Reply::Count(n);
    }
    let Ok(m) = serde_json::from_slice::<Any>(text) else {
        return Reply::Unknown;
    };
    match m {
        Any {
            session_id: Some(id),
            count: Some(count),
            resumed: Some(resumed),
            offset,
            recovered,
            ..
        } if id.len() == ID_LEN => {
            let mut session = [0u8; ID_LEN];
            session.copy_from_slice(id.as_bytes());
            Reply::Welcome(Welcome {
                session,
                count,
                resumed,
                offset,
                recovered,
            })
        }
        Any {
            bye: Some(true),
            total: Some(total),
            reason,
            retry_after_ms,
            ..
        } => Reply::Bye {
            total,
            retry_after_ms,
            shutdown: reason == Some("shutdown"),
        },
        Any {
            count: Some(n),
            session_id: None,
            ..
        } => Reply::Count(n),
        Any { ts: Some(_), .. } => Reply::Heartbeat,
        Any {
            broadcast: Some(text),
            offset,
            ..
        } => Reply::Broadcast { text, offset },
        Any {
            error: Some("rate_limited"),
            ..
        } => Reply::RateLimited,
        _ => Reply::Unknown,
    }
}

/// `{"count":<digits>}` exactly, as the server writes it.
fn fast_count(text: &[u8]) -> Option<u64> {
    let digits = text.strip_prefix(b"{\"count\":")?.strip_suffix(b"}")?;
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b7d2a4e-5c1f-4e8a-9d3b-6f2e1a0c9b8d";

    #[test]
    fn counts_take_the_fast_path_and_the_slow_one() {
        assert_eq!(parse(b"{\"count\":0}"), Reply::Count(0));
        assert_eq!(parse(b"{\"count\":18446744073}"), Reply::Count(18446744073));
        assert_eq!(parse(b"{ \"count\": 7 }"), Reply::Count(7));
        assert_eq!(fast_count(b"{\"count\":}"), None);
        assert_eq!(fast_count(b"{\"count\":1a}"), None);
    }

    #[test]
    fn welcome_keeps_the_session() {
        let w = format!("{{\"session_id\":\"{ID}\",\"count\":5,\"resumed\":true}}");
        let mut session = [0u8; ID_LEN];
        session.copy_from_slice(ID.as_bytes());
        let want = Welcome {
            session,
            count: 5,
            resumed: true,
            offset: None,
            recovered: None,
        };
        assert_eq!(parse(w.as_bytes()), Reply::Welcome(want));
        let w = format!(
            "{{\"session_id\":\"{ID}\",\"count\":0,\"resumed\":false,\"offset\":\"5-1\",\"recovered\":true}}"
        );
        match parse(w.as_bytes()) {
            Reply::Welcome(w) => assert_eq!((w.offset, w.recovered), (Some("5-1"), Some(true))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn goodbyes_heartbeats_and_errors() {
        assert_eq!(
            parse(b"{\"bye\":true,\"total\":3}"),
            Reply::Bye {
                total: 3,
                retry_after_ms: None,
                shutdown: false
            }
        );
        assert_eq!(
            parse(b"{\"bye\":true,\"total\":9,\"reason\":\"shutdown\",\"retry_after_ms\":250}"),
            Reply::Bye {
                total: 9,
                retry_after_ms: Some(250),
                shutdown: true
            }
        );
        assert_eq!(
            parse(b"{\"ts\":\"2026-01-01T00:00:00.000Z\"}"),
            Reply::Heartbeat
        );
        assert_eq!(
            parse(b"{\"broadcast\":\"hi \\\"x\\\"\"}"),
            Reply::Broadcast {
                text: "hi \"x\"".into(),
                offset: None
            }
        );
        assert_eq!(
            parse(b"{\"broadcast\":\"x\",\"offset\":\"7-0\",\"room\":\"r\"}"),
            Reply::Broadcast {
                text: "x".into(),
                offset: Some("7-0")
            }
        );
        assert_eq!(parse(b"{\"error\":\"rate_limited\"}"), Reply::RateLimited);
        assert_eq!(parse(b"{\"what\":1}"), Reply::Unknown);
        assert_eq!(parse(b"not json"), Reply::Unknown);
        assert_eq!(
            parse(b"{\"session_id\":\"short\",\"count\":0,\"resumed\":false}"),
            Reply::Unknown
        );
    }
}
