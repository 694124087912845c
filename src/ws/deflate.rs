//! permessage-deflate (RFC 7692): the answer to a client's offer at the
//! upgrade, the shard's compressors, and its pool of inflaters.
//!
//! What is agreed keeps idle sockets free of compression state: the server
//! always answers `server_no_context_takeover` and `client_no_context_takeover`
//! (RFC 7692 7.1.1.1 and 7.1.1.2 let it, offered or not), so every message is
//! compressed and inflated on its own. A shard then needs one compressor for
//! all its sockets (a broadcast is compressed once, whatever the number of
//! readers), and an inflater only while a compressed message is arriving,
//! taken from the shard's pool and given back at its end. An idle socket holds
//! one byte: its [`Mode`].
//!
//! miniz_oxide (the pure-Rust deflate that flate2 uses by default) is used
//! directly: its window is always 32 KiB, and a client may ask the server for
//! a smaller one (`server_max_window_bits` under 15). Such a socket gets
//! Huffman-only blocks, which refer to no earlier bytes and so fit any window;
//! flate2 does not expose that strategy.

use std::cell::RefCell;

use miniz_oxide::deflate::core::{
    compress as deflate, create_comp_flags_from_zip_params, CompressionStrategy, CompressorOxide,
    TDEFLFlush, TDEFLStatus,
};
use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// The name of the extension, in offers and in the answer.
pub const EXTENSION: &str = "permessage-deflate";

/// What a socket agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Mode {
    /// No compression (not offered, not enabled, or no offer was valid).
    #[default]
    Off,
    /// Deflate with the full 32 KiB window.
    Full,
    /// The client asked for a window under 32 KiB: Huffman-only blocks.
    HuffmanOnly,
}

impl Mode {
    pub fn on(self) -> bool {
        self != Mode::Off
    }
}

/// The offer accepted: the mode, and the `Sec-WebSocket-Extensions` value
/// of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub mode: Mode,
    pub answer: String,
}

/// Reads the values of every `Sec-WebSocket-Extensions` header of an
/// upgrade and accepts the first valid permessage-deflate offer, if any.
/// An offer with an unknown or repeated parameter, or a bad value, is
/// declined (the next is tried), as RFC 7692 5 asks.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(split_list)
        .find_map(|ext| accept(&ext))
}

/// One offer: `permessage-deflate; param; param=value`.
fn accept(ext: &str) -> Option<Agreed> {
    let mut parts = ext.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits = None;
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (p, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    let mut answer = format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
    let mode = match server_bits {
        Some(bits) => {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
            if bits < 15 {
                Mode::HuffmanOnly
            } else {
                Mode::Full
            }
        }
        None => Mode::Full,
    };
    Some(Agreed { mode, answer })
}

/// A window size parameter: 8 to 15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

/// A parameter value as a token or a quoted string.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(v),
    }
}

/// A header value's list elements, split at commas outside quotes.
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The four bytes a sync flush ends with: the sender strips them, the
/// receiver puts them back (RFC 7692 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflaters kept per shard beyond those in use.
const POOL: usize = 4;

thread_local! {
    /// The shard's compressors, full and Huffman-only, made on first use.
    static COMPRESSORS: RefCell<[Option<Box<CompressorOxide>>; 2]> =
        const { RefCell::new([None, None]) };
    /// Inflaters not in use.
    static INFLATERS: RefCell<Vec<Box<InflateState>>> = const { RefCell::new(Vec::new()) };
}

/// Appends `payload` compressed as one message (no context kept), without
/// the sync flush's tail.
pub fn compress(payload: &[u8], mode: Mode, out: &mut Vec<u8>) {
    let (slot, strategy) = match mode {
        Mode::HuffmanOnly => (1, CompressionStrategy::HuffmanOnly),
        _ => (0, CompressionStrategy::Default),
    };
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        let d = c[slot].get_or_insert_with(|| {
            // Level 1: chat-sized JSON gains little from more search, and
            // the shard's CPU is the product.
            let flags = create_comp_flags_from_zip_params(1, -15, strategy as i32);
            Box::new(CompressorOxide::new(flags))
        });
        d.reset();
        let start = out.len();
        let mut pos = 0;
        loop {
            out.reserve(payload.len() / 2 + 64);
            let len = out.len();
            let spare = out.capacity() - len;
            out.resize(len + spare, 0);
            let (status, used, wrote) =
                deflate(d, &payload[pos..], &mut out[len..], TDEFLFlush::Sync);
            out.truncate(len + wrote);
            pos += used;
            let flushed = wrote < spare;
            if status != TDEFLStatus::Okay || (pos == payload.len() && flushed) {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    });
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Not valid deflate data.
    Corrupt,
    /// It inflates past the limit.
    TooBig,
}

/// One compressed message being inflated: an inflater from the shard's
/// pool, given back when this is dropped.
pub struct Inflating {
    state: Option<Box<InflateState>>,
    /// Bytes inflated so far.
    pub len: usize,
    ended: bool,
}

impl Inflating {
    pub fn start() -> Self {
        let state = INFLATERS
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| InflateState::new_boxed(DataFormat::Raw));
        Inflating {
            state: Some(state),
            len: 0,
            ended: false,
        }
    }

    /// Inflates `input`, a piece of the message, handing each inflated
    /// piece to `out`; at most `max` bytes in all.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        max: usize,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), InflateError> {
        let state = self.state.as_mut().expect("an inflater until dropped");
        let mut buf = [0u8; 8192];
        while !input.is_empty() && !self.ended {
            let r = inflate(state, input, &mut buf, MZFlush::None);
            input = &input[r.bytes_consumed..];
            self.len += r.bytes_written;
            if self.len > max {
                return Err(InflateError::TooBig);
            }
            if r.bytes_written > 0 {
                out(&buf[..r.bytes_written]);
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => self.ended = true,
                // Buf: no progress this call; more input must come.
                Ok(_) | Err(MZError::Buf) => {}
                Err(_) => return Err(InflateError::Corrupt),
            }
            if r.bytes_consumed == 0 && r.bytes_written == 0 {
                break;
            }
        }
        Ok(())
    }

    /// The message is complete: the tail the sender stripped goes in last.
    pub fn finish(&mut self, max: usize, out: &mut impl FnMut(&[u8])) -> Result<(), InflateError> {
        self.feed(&TAIL, max, out)
    }
}

impl std::fmt::Debug for Inflating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflating").field("len", &self.len).finish()
    }
}

impl Drop for Inflating {
    fn drop(&mut self) {
        if let Some(mut state) = self.state.take() {
            INFLATERS.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL {
                    state.reset(DataFormat::Raw);
                    p.push(state);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(values: &[&str]) -> Option<(Mode, String)> {
        negotiate(values.iter().copied()).map(|a| (a.mode, a.answer))
    }

    const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn offers_browsers_and_libraries_make_are_accepted() {
        // Chromium and Firefox.
        assert_eq!(
            agreed(&["permessage-deflate; client_max_window_bits"]),
            Some((Mode::Full, BOTH.into()))
        );
        // Python websockets.
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"]),
            Some((
                Mode::HuffmanOnly,
                format!("{BOTH}; server_max_window_bits=12")
            ))
        );
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=\"15\""]),
            Some((Mode::Full, format!("{BOTH}; server_max_window_bits=15")))
        );
        assert_eq!(agreed(&["Permessage-Deflate"]).unwrap().0, Mode::Full);
    }

    #[test]
    fn a_bad_offer_is_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(agreed(&[bad]), None, "{bad}");
        }
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=99, permessage-deflate"]),
            Some((Mode::Full, BOTH.into()))
        );
        assert_eq!(
            agreed(&[
                "foo; a=\"b,c\"",
                "permessage-deflate; client_no_context_takeover"
            ]),
            Some((Mode::Full, BOTH.into()))
        );
    }

    fn inflate_all(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let mut got = Vec::new();
        let mut i = Inflating::start();
        // In small pieces, as frames and reads split a message.
        for piece in data.chunks(7) {
            i.feed(piece, max, &mut |b| got.extend_from_slice(b))?;
        }
        i.finish(max, &mut |b| got.extend_from_slice(b))?;
        Ok(got)
    }

    #[test]
    fn what_is_compressed_inflates_back_in_every_mode() {
        let text = r#"{"broadcast":"hello hello hello, a chat message","offset":"1-0"}"#.repeat(40);
        for mode in [Mode::Full, Mode::HuffmanOnly] {
            for payload in [&b""[..], b"a", text.as_bytes()] {
                let mut c = Vec::new();
                compress(payload, mode, &mut c);
                assert!(!c.ends_with(&TAIL));
                assert_eq!(inflate_all(&c, 1 << 20).unwrap(), payload, "{mode:?}");
            }
        }
        let (mut full, mut huff) = (Vec::new(), Vec::new());
        compress(text.as_bytes(), Mode::Full, &mut full);
        compress(text.as_bytes(), Mode::HuffmanOnly, &mut huff);
        assert!(full.len() * 10 < text.len(), "repeats shrink with matches");
        // No matches: at least a bit per byte, whatever the repeats.
        assert!(huff.len() * 8 >= text.len());
        assert!(huff.len() < text.len());
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let mut c = Vec::new();
        compress(&zeros, Mode::Full, &mut c);
        assert!(c.len() < 8192, "{}", c.len());
        assert_eq!(inflate_all(&c, 64 << 10), Err(InflateError::TooBig));
        assert_eq!(
            inflate_all(&[0xff, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(InflateError::Corrupt)
        );
    }
}
