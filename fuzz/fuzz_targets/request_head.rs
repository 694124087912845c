//! Fuzzes the HTTP request-head parser (`shardcast::http::parse_head`) and
//! what the server does with a parsed head: the header look-ups and the
//! WebSocket upgrade check (`shardcast::ws::handshake::validate`).
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics, whatever the bytes;
//! - a parsed request's `rest` is a proper suffix of the input, and the head
//!   before it ends with the blank line's `\n`;
//! - parsing the head alone gives the same request with an empty `rest` (the
//!   server parses a growing buffer, so later bytes must not change a head);
//! - a partial head has no complete prefix;
//! - `path` holds no `?`, there are at most 64 headers;
//! - `header(name)` returns the value of the first header of that name, and
//!   `header_has_token(name, ..)` implies such a header exists;
//! - `validate` returning Ok means a GET with the upgrade headers, and gives a
//!   28-character base64 accept key (20 bytes of SHA-1); a refusal is 400 or
//!   426 with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::http::{parse_head, HeadError, Request};
use shardcast::ws::handshake::validate;

const NAMES: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "content-length",
    "Sec-WebSocket-Key",
    "",
];

const TOKENS: &[&str] = &["websocket", "upgrade", "keep-alive", "close", ""];

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some(req)) => check_request(data, &req),
        Ok(None) => {
            // A complete prefix would make the whole input complete too.
            for cut in [data.len() / 2, data.len().saturating_sub(1)] {
                assert!(
                    !matches!(parse_head(&data[..cut]), Ok(Some(_))),
                    "a prefix of a partial head parsed as complete"
                );
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.is_empty());
            assert!(
                matches!(e, HeadError::TooLarge | HeadError::Malformed(_)),
                "parse_head can only be too large or malformed: {e:?}"
            );
        }
    }
});

fn check_request(data: &[u8], req: &Request) {
    assert!(
        data.ends_with(&req.rest),
        "rest is not a suffix of the input"
    );
    assert!(req.rest.len() < data.len(), "the head is empty");
    let head = &data[..data.len() - req.rest.len()];
    assert!(
        head.ends_with(b"\n"),
        "the head does not end with a newline"
    );

    // The head alone parses to the same request, with nothing left over.
    let again = parse_head(head)
        .expect("the head alone failed to parse")
        .expect("the head alone is partial");
    assert!(again.rest.is_empty());
    assert_eq!(again.method, req.method);
    assert_eq!(again.path, req.path);
    assert_eq!(again.query, req.query);
    assert_eq!(again.headers, req.headers);

    assert!(!req.path.contains('?'), "path kept the query separator");
    assert!(req.headers.len() <= 64, "more headers than the limit");

    for name in NAMES {
        let first = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        assert_eq!(req.header(name), first, "header({name:?})");
        for token in TOKENS {
            if req.header_has_token(name, token) {
                assert!(first.is_some(), "token {token:?} in a missing {name:?}");
            }
        }
    }

    match validate(req) {
        Ok(accept) => {
            assert_eq!(req.method, "GET");
            assert!(req.header_has_token("upgrade", "websocket"));
            assert!(req.header_has_token("connection", "upgrade"));
            assert_eq!(accept.len(), 28, "accept key {accept:?}");
            let (body, pad) = accept.split_at(27);
            assert_eq!(pad, "=", "accept key {accept:?}");
            assert!(
                body.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
                "accept key {accept:?} is not base64"
            );
        }
        Err(refusal) => {
            assert!(
                matches!(refusal.status, 400 | 426),
                "refusal status {}",
                refusal.status
            );
            assert!(!refusal.reason.is_empty());
        }
    }
}
