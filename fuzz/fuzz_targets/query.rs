//! Fuzzes query parsing: `shardcast::http::Request::param` on arbitrary
//! query strings with every name the service reads, the readers of those
//! values (room names, `since` offsets, session ids), and `parse_head` on a
//! request line that carries the query.
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics;
//! - a parameter's value is part of the query and holds no `&`;
//! - an offset that parses prints back as the same text's value, and
//!   parses again to itself;
//! - a room that passes `check_room` is 1-64 bytes of the allowed set;
//! - a request line whose target is `/ws/chat/?<query>` parses (when it
//!   does) to that path and exactly that query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::history::{Offset, SINCE_PARAM};
use shardcast::http::{parse_head, Request};
use shardcast::pubsub::{check_room, MAX_ROOM_LEN, ROOM_PARAM};
use shardcast::session::{parse_id, ID_PARAMS};

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data).into_owned();
    let req = Request {
        query,
        ..Request::default()
    };
    check(&req);

    let mut head = b"GET /ws/chat/?".to_vec();
    head.extend_from_slice(data);
    head.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    if let Ok(Some(parsed)) = parse_head(&head) {
        assert_eq!(parsed.path, "/ws/chat/");
        assert_eq!(
            parsed.query.as_bytes(),
            data,
            "the query changed on the way"
        );
        check(&parsed);
    }
});

fn check(req: &Request) {
    let names: [&[&str]; 5] = [&ID_PARAMS, &[ROOM_PARAM], &[SINCE_PARAM], &["token"], &[""]];
    for names in names {
        let Some(v) = req.param(names) else {
            continue;
        };
        assert!(req.query.contains(v), "{v:?} is not in {:?}", req.query);
        assert!(!v.contains('&'), "{v:?} holds a separator");
        if check_room(v).is_ok() {
            assert!(!v.is_empty() && v.len() <= MAX_ROOM_LEN, "room {v:?}");
            assert!(v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
        }
        if let Ok(o) = v.parse::<Offset>() {
            let shown = o.to_string();
            assert_eq!(shown.parse::<Offset>(), Ok(o), "{v:?} -> {shown:?}");
        }
        if let Some(id) = parse_id(v) {
            assert_eq!(parse_id(&id.to_string()), Some(id));
        }
    }
}
