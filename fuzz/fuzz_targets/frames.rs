//! Fuzzes the server's streaming WebSocket frame decoder
//! (`shardcast::ws::codec::Decoder`), driven the way the socket plane
//! (src/ws/plane.rs) drives it: the bytes arrive in 1-3 reads, each appended to
//! what the previous one left unconsumed; `decode` runs while bytes remain and
//! stops when it consumed nothing and completed no event; the first error (a
//! close code) or the peer's Close ends the connection.
//!
//! Input layout: byte 0 is the control byte (bit 7: mode, bits 3-4: how many
//! cut points, bits 0-2: `max_message` from `MAX_MESSAGE`), bytes 1-4 are two
//! big-endian u16 cut points (taken modulo the stream length + 1), the rest is
//! the stream (raw mode) or the recipe for a valid message (built mode).
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics; `decode` never reports more bytes consumed than it was
//!   given, an event always consumes bytes, a ping's range lies in the
//!   consumed bytes and holds at most 125; a binary message (a control
//!   frame, always one frame) comes with the same bytes however it was cut;
//! - the decode loop ends: at most buffer length + 2 calls per read;
//! - an error is one of the contract's close codes 1002, 1003, 1007, 1009,
//!   with a reason; a Close event's code is one a peer may send;
//! - raw mode: the outcome (events, ping payloads, close code, error code,
//!   bytes left over) does not depend on how the stream was cut into reads;
//! - both modes: a stream of at most `EVERY_CUT_MAX` bytes gives the same
//!   outcome split in two at every byte boundary, and read one byte at a
//!   time (the plane keeps an incomplete frame's bytes and decodes them
//!   again with the next read);
//! - built mode: a valid masked text message (valid UTF-8, 1-4 fragments cut
//!   anywhere, even inside a character, pings between fragments, an optional
//!   Close after it) yields exactly the pings, one `Event::Text` and the Close;
//!   or, when the message is longer than `max_message`, the pings before the
//!   fragment that crossed the limit and then 1009.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::ws::codec::{Decoder, Event};
use shardcast_kit::wire::masked;

const MAX_MESSAGE: [usize; 8] = [0, 1, 7, 125, 126, 1024, 4096, 65536];
const HEADER: usize = 5;
/// Longest stream split at every byte boundary: that check is quadratic.
const EVERY_CUT_MAX: usize = 1024;

/// An event with what the socket would use of it (a ping's payload bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text,
    /// A binary message (a control frame): its kept bytes, None when over
    /// the control cap.
    Binary(Option<Vec<u8>>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// How a connection's input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Decoding failed: the close code the server sends.
    Error(u16),
    /// The peer's Close.
    Close,
    /// All bytes read; this many were left unconsumed (an incomplete frame).
    Exhausted(usize),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    end: End,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let ctl = data[0];
    let max_message = MAX_MESSAGE[(ctl & 7) as usize];
    let ncuts = (((ctl >> 3) & 3) as usize).min(2);
    let raw_cuts = [
        u16::from_be_bytes([data[1], data[2]]) as usize,
        u16::from_be_bytes([data[3], data[4]]) as usize,
    ];
    let body = &data[HEADER..];
    if ctl & 0x80 == 0 {
        let cuts = cuts(&raw_cuts[..ncuts], body.len());
        let split = drive(body, &cuts, max_message);
        let whole = drive(body, &[], max_message);
        assert_eq!(split, whole, "outcome depends on the reads, cuts {cuts:?}");
        every_cut(body, max_message, &whole);
    } else {
        let (stream, expected) = build(body, max_message);
        let cuts = cuts(&raw_cuts[..ncuts], stream.len());
        let got = drive(&stream, &cuts, max_message);
        assert_eq!(
            got, expected,
            "valid message, max_message {max_message}, cuts {cuts:?}"
        );
        every_cut(&stream, max_message, &expected);
    }
});

/// Checks that `stream` gives `want` however the reads split it: in two
/// at every byte boundary, and one byte per read.
fn every_cut(stream: &[u8], max_message: usize, want: &Outcome) {
    if stream.len() > EVERY_CUT_MAX {
        return;
    }
    for cut in 1..stream.len() {
        let got = drive(stream, &[cut], max_message);
        assert_eq!(&got, want, "split at byte {cut}");
    }
    let bytes: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(
        &drive(stream, &bytes, max_message),
        want,
        "one byte per read"
    );
}

/// Sorted cut points within `0..=len`.
fn cuts(raw: &[usize], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|&x| x % (len + 1)).collect();
    c.sort_unstable();
    c
}

/// Feeds `stream` to a fresh decoder in reads ending at `cuts` (then the end),
/// as the socket loop does, and records what happened.
fn drive(stream: &[u8], cuts: &[usize], max_message: usize) -> Outcome {
    let mut dec = Decoder::new(max_message);
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut prev = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        pending.extend_from_slice(&stream[prev..cut]);
        prev = cut;
        let bound = pending.len() + 2;
        let mut calls = 0;
        let mut start = 0;
        while start < pending.len() {
            calls += 1;
            assert!(
                calls <= bound,
                "decode loop did not end: {calls} calls on {} bytes",
                pending.len()
            );
            let buf = &mut pending[start..];
            let len = buf.len();
            let (ev, n) = match dec.decode(buf) {
                Ok(x) => x,
                Err(e) => {
                    let code = e.code();
                    assert!(
                        matches!(code, 1002 | 1003 | 1007 | 1009),
                        "close code {code} for {e:?}"
                    );
                    assert!(!e.reason().is_empty());
                    return Outcome {
                        events,
                        end: End::Error(code),
                    };
                }
            };
            assert!(n <= len, "consumed {n} of {len} bytes");
            let ev = match ev {
                None if n == 0 => break,
                None => None,
                Some(Event::Text) => Some(Ev::Text),
                Some(Event::Binary) => Some(Ev::Binary(dec.payload_mut().take())),
                Some(Event::Pong) => Some(Ev::Pong),
                Some(Event::Ping(r)) => {
                    assert!(
                        r.start <= r.end && r.end <= n && r.len() <= 125,
                        "ping range {r:?} with {n} consumed"
                    );
                    Some(Ev::Ping(buf[r].to_vec()))
                }
                Some(Event::Close(code)) => {
                    if let Some(c) = code {
                        assert!(
                            matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999),
                            "close event with code {c}"
                        );
                    }
                    Some(Ev::Close(code))
                }
            };
            start += n;
            if let Some(ev) = ev {
                assert!(n > 0, "event {ev:?} consumed nothing");
                let close = matches!(ev, Ev::Close(_));
                events.push(ev);
                if close {
                    return Outcome {
                        events,
                        end: End::Close,
                    };
                }
            }
        }
        pending.drain(..start);
    }
    Outcome {
        events,
        end: End::Exhausted(pending.len()),
    }
}

/// Builds a valid text message from the recipe in `body`, and the outcome the
/// decoder must give for it.
///
/// Recipe: bytes 0-3 the mask, byte 4 flags (bits 0-1: fragments - 1, bits
/// 2-4: a ping after fragment 1, 2, 3; bit 5: a Close after the message; bits
/// 6 and 7 both: a payload around 64 KiB), byte 5 the ping's length, bytes 6-8 the
/// fragment boundaries, the rest the text (made valid UTF-8).
fn build(body: &[u8], max_message: usize) -> (Vec<u8>, Outcome) {
    let at = |i: usize| body.get(i).copied().unwrap_or(0);
    let mask = [at(0), at(1), at(2), at(3)];
    let flags = at(4);
    let fragments = 1 + (flags & 3) as usize;
    let mut text = String::from_utf8_lossy(body.get(9..).unwrap_or(&[]))
        .into_owned()
        .into_bytes();
    if flags & 0xC0 == 0xC0 {
        // Rare, each run streams 64 KiB: 65535, 65536 or 65537 bytes, both
        // sides of the 16/64-bit length boundary and of the largest
        // max_message. The text (at most 3 x 4096 bytes) is shorter.
        let want = 65535 + (at(5) % 3) as usize;
        if text.len() < want {
            text.resize(want, b'x');
        }
    }
    let ping: Vec<u8> = text.iter().copied().take((at(5) % 126) as usize).collect();

    // Fragment boundaries anywhere, even inside a character.
    let mut bounds: Vec<usize> = (0..fragments - 1)
        .map(|i| at(6 + i) as usize * text.len() / 255)
        .collect();
    bounds.sort_unstable();
    bounds.insert(0, 0);
    bounds.push(text.len());

    let mut stream = Vec::new();
    let mut events = Vec::new();
    let mut end = None;
    let mut total = 0usize;
    for i in 0..fragments {
        let part = &text[bounds[i]..bounds[i + 1]];
        let last = i + 1 == fragments;
        let opcode = if i == 0 { 0x01 } else { 0x00 };
        let fin = if last { 0x80 } else { 0x00 };
        let key = mask.map(|b| b ^ i as u8);
        masked(&mut stream, fin | opcode, part, key);
        total += part.len();
        if end.is_none() && total > max_message {
            end = Some(End::Error(1009));
        }
        if end.is_none() && last {
            events.push(Ev::Text);
        }
        if !last && flags & (4 << i) != 0 {
            masked(&mut stream, 0x89, &ping, key.map(|b| !b));
            if end.is_none() {
                events.push(Ev::Ping(ping.clone()));
            }
        }
    }
    if flags & 0x20 != 0 {
        let code = [1000u16, 1001, 3000, 4999][(mask[0] & 3) as usize];
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice("bye ✓".as_bytes());
        masked(&mut stream, 0x88, &p, mask);
        if end.is_none() {
            events.push(Ev::Close(Some(code)));
            end = Some(End::Close);
        }
    }
    let end = end.unwrap_or(End::Exhausted(0));
    (stream, Outcome { events, end })
}
