//! WebSocket framing for the server side of RFC 6455, streaming: a frame's
//! payload is unmasked and checked as it arrives, so a socket never needs a
//! buffer as large as a message. tungstenite parses and formats frame headers.
//!
//! The counter never needs a message's bytes, only that it is valid UTF-8 and
//! within `max_message_bytes`; so text is validated incrementally (which also
//! fails fast on a bad byte) and then forgotten.

use std::io::Cursor;

pub use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::deflate::{self, InflateError, Inflating, Mode};
use tungstenite::protocol::frame::FrameHeader;

/// A reason to close the connection, with the close code the contract names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// 1002: a frame the protocol forbids.
    Protocol(&'static str),
    /// 1003: a binary message the endpoint does not take (the service
    /// takes binary messages only as control frames: see `ws::control`).
    Binary,
    /// 1007: text that is not UTF-8.
    InvalidUtf8,
    /// 1009: a message over `max_message_bytes`.
    TooBig,
}

impl WsError {
    pub fn code(self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::Binary => 1003,
            WsError::InvalidUtf8 => 1007,
            WsError::TooBig => 1009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            WsError::Protocol(r) => r,
            WsError::Binary => "binary message is not a control frame",
            WsError::InvalidUtf8 => "text is not valid UTF-8",
            WsError::TooBig => "message too big",
        }
    }
}

/// What a call to [`Decoder::decode`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete text message (all fragments), valid UTF-8.
    Text,
    /// A complete binary message (all fragments); its bytes went to the
    /// decoder's [`Payload`].
    Binary,
    /// A ping; the payload is at this range of the buffer given to `decode`.
    Ping(std::ops::Range<usize>),
    /// A pong: nothing to do.
    Pong,
    /// The peer's Close: its code (None when the frame had no payload).
    Close(Option<u16>),
}

/// Incremental UTF-8 check that carries an incomplete character between pieces.
#[derive(Debug, Default)]
struct Utf8Stream {
    carry: [u8; 4],
    /// Bytes in `carry`: at most 3 (one byte is a socket's whole cost).
    len: u8,
}

impl Utf8Stream {
    fn push(&mut self, mut data: &[u8]) -> Result<(), WsError> {
        if self.len > 0 {
            // Finish the carried character with at most 3 new bytes.
            let have = usize::from(self.len);
            let need = utf8_width(self.carry[0]).ok_or(WsError::InvalidUtf8)?;
            let take = (need - have).min(data.len());
            self.carry[have..have + take].copy_from_slice(&data[..take]);
            let have = have + take;
            self.len = have as u8;
            data = &data[take..];
            if have < need {
                return match std::str::from_utf8(&self.carry[..have]) {
                    Err(e) if e.error_len().is_some() => Err(WsError::InvalidUtf8),
                    _ => Ok(()),
                };
            }
            std::str::from_utf8(&self.carry[..need]).map_err(|_| WsError::InvalidUtf8)?;
            self.len = 0;
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                // An incomplete character: at most 3 bytes.
                self.carry[..rest.len()].copy_from_slice(rest);
                self.len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(WsError::InvalidUtf8),
        }
    }

    fn finish(&mut self) -> Result<(), WsError> {
        let ok = self.len == 0;
        self.len = 0;
        if ok {
            Ok(())
        } else {
            Err(WsError::InvalidUtf8)
        }
    }
}

fn utf8_width(first: u8) -> Option<usize> {
    match first {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

/// Unmasks `data` in place; `offset` is how far into the payload it starts.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

#[derive(Debug)]
struct DataFrame {
    mask: [u8; 4],
    fin: bool,
    /// A frame is at most `max_message` (64 MiB at most): four bytes do,
    /// here and for how far into it the payload has come.
    remaining: u32,
    offset: u32,
}

/// Where a data frame's payload goes once it is unmasked and checked.
/// The service keeps no text ([`Discard`] drops it; [`Controls`] keeps only
/// small binary messages, the control frames); the conformance echo keeps
/// whole messages (`ws::echo`).
pub trait Payload {
    /// Whether binary messages are accepted (else they close with 1003).
    const BINARY: bool;
    /// Whether a binary message may come in fragments (else its first,
    /// non-final frame closes with 1003).
    const BINARY_FRAGMENTS: bool = true;
    /// A checked piece of the message in progress.
    fn piece(&mut self, data: &[u8], binary: bool);
    /// The message in progress is complete.
    fn complete(&mut self, binary: bool);
}

/// A sink that keeps nothing and takes no binary message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl Payload for Discard {
    const BINARY: bool = false;
    fn piece(&mut self, _: &[u8], _: bool) {}
    fn complete(&mut self, _: bool) {}
}

/// Largest control frame kept: a refresh carries one token (at most 4 KiB).
pub const MAX_CONTROL: usize = 8 << 10;

/// The service's sink: text is counted, never kept; a binary message (a
/// control frame) is kept up to [`MAX_CONTROL`] bytes. One pointer per
/// socket while no control frame is in progress: the one socket in many that
/// ever sends one pays for the rest.
#[derive(Debug, Default)]
pub struct Controls {
    message: Option<Box<Kept>>,
}

/// A control frame in progress.
#[derive(Debug, Default)]
struct Kept {
    bytes: Vec<u8>,
    /// It went past [`MAX_CONTROL`]; its bytes are dropped.
    overflow: bool,
}

impl Controls {
    /// The last complete binary message: its bytes, or None when it was
    /// over [`MAX_CONTROL`].
    pub fn take(&mut self) -> Option<Vec<u8>> {
        match self.message.take() {
            None => Some(Vec::new()),
            Some(k) if k.overflow => None,
            Some(k) => Some(k.bytes),
        }
    }
}

impl Payload for Controls {
    const BINARY: bool = true;
    // A control frame is one frame: no client needs to fragment a token, and
    // a binary stream that is not a control frame is refused at its start.
    const BINARY_FRAGMENTS: bool = false;

    #[inline]
    fn piece(&mut self, data: &[u8], binary: bool) {
        if !binary {
            return;
        }
        let kept = self.message.get_or_insert_with(Default::default);
        if kept.overflow {
            return;
        }
        if kept.bytes.len() + data.len() > MAX_CONTROL {
            kept.overflow = true;
            kept.bytes = Vec::new();
        } else {
            kept.bytes.extend_from_slice(data);
        }
    }

    fn complete(&mut self, _: bool) {}
}

/// The per-socket decoder state: a few dozen bytes.
#[derive(Debug)]
pub struct Decoder<P: Payload = Controls> {
    /// At most 64 MiB (the setting's bound): four bytes do.
    max_message: u32,
    /// What the socket agreed of permessage-deflate: when on, a message's
    /// first frame may set RSV1.
    deflate: Mode,
    /// The message in progress is compressed: its inflater (from the
    /// shard's pool, only while it arrives). Boxed, so an idle socket
    /// pays one pointer for it, not the inflater's few words.
    inflating: Option<Box<Inflating>>,
    frame: Option<DataFrame>,
    /// A message is in progress (a first fragment arrived, no final yet).
    in_message: bool,
    /// The message in progress is text (only text is checked for UTF-8).
    text: bool,
    message_len: u32,
    utf8: Utf8Stream,
    payload: P,
}

impl Decoder<Controls> {
    /// The service's decoder: text checked and dropped, control frames kept.
    pub fn new(max_message: usize) -> Self {
        Self::with(max_message, Controls::default())
    }
}

impl<P: Payload> Decoder<P> {
    /// A decoder that hands every checked payload piece to `payload`.
    pub fn with(max_message: usize, payload: P) -> Self {
        Self {
            max_message: max_message.min(u32::MAX as usize) as u32,
            deflate: Mode::Off,
            inflating: None,
            frame: None,
            in_message: false,
            text: true,
            message_len: 0,
            utf8: Utf8Stream::default(),
            payload,
        }
    }

    pub fn payload_mut(&mut self) -> &mut P {
        &mut self.payload
    }

    /// What the socket agreed of permessage-deflate.
    pub fn set_deflate(&mut self, mode: Mode) {
        self.deflate = mode;
    }

    pub fn deflate(&self) -> Mode {
        self.deflate
    }

    /// Decodes from `buf` (bytes received and not yet consumed). Returns the
    /// event, if one completed, and how many bytes were consumed. Payload bytes
    /// are unmasked in place. `(None, 0)` means: read more.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<(Option<Event>, usize), WsError> {
        if let Some(f) = &mut self.frame {
            let take = (f.remaining as usize).min(buf.len());
            let chunk = &mut buf[..take];
            unmask(chunk, f.mask, f.offset as usize);
            match &mut self.inflating {
                Some(inflating) => {
                    let (text, max) = (self.text, self.max_message as usize);
                    let (utf8, payload) = (&mut self.utf8, &mut self.payload);
                    inflate(inflating, Some(chunk), text, max, utf8, payload)?;
                }
                None => {
                    if self.text {
                        self.utf8.push(chunk)?;
                    }
                    self.payload.piece(chunk, !self.text);
                }
            }
            // `take` is at most `remaining`, a u32.
            f.offset += take as u32;
            f.remaining -= take as u32;
            if f.remaining > 0 {
                return Ok((None, take));
            }
            let fin = f.fin;
            self.frame = None;
            return Ok((self.finish_frame(fin)?, take));
        }
        self.decode_header(buf)
    }

    /// A frame's header at the start of `buf`, and what follows it. This
    /// and the helpers below are inlined: they are `decode`, split to read.
    #[inline]
    fn decode_header(&mut self, buf: &mut [u8]) -> Result<(Option<Event>, usize), WsError> {
        let mut cur = Cursor::new(&buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((None, 0)),
            Err(_) => return Err(WsError::Protocol("reserved opcode")),
        };
        let head = cur.position() as usize;
        // RSV1 marks a compressed message, on its first frame only.
        let first_data = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv2 || header.rsv3 || (header.rsv1 && !(self.deflate.on() && first_data)) {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Protocol("client frames must be masked"));
        };
        let data = match header.opcode {
            OpCode::Control(ctl) => return control(ctl, header.is_final, len, mask, buf, head),
            OpCode::Data(data) => data,
        };
        self.start_frame(data, header.is_final, len, mask)?;
        if header.rsv1 {
            self.inflating = Some(Box::new(Inflating::start()));
        }
        if len == 0 {
            self.frame = None;
            return Ok((self.finish_frame(header.is_final)?, head));
        }
        let (ev, n) = self.decode(&mut buf[head..])?;
        Ok((ev, head + n))
    }

    /// Checks a data frame against the message in progress and the size
    /// limit, and makes it the frame whose payload comes next.
    #[inline]
    fn start_frame(
        &mut self,
        data: Data,
        fin: bool,
        len: u64,
        mask: [u8; 4],
    ) -> Result<(), WsError> {
        match data {
            Data::Continue if !self.in_message => {
                return Err(WsError::Protocol("continuation without a message"))
            }
            Data::Text | Data::Binary if self.in_message => {
                return Err(WsError::Protocol("new message inside a fragmented one"))
            }
            Data::Binary if !P::BINARY => return Err(WsError::Binary),
            Data::Binary if !fin && !P::BINARY_FRAGMENTS => return Err(WsError::Binary),
            Data::Reserved(_) => return Err(WsError::Protocol("reserved opcode")),
            Data::Text | Data::Binary => {
                self.in_message = true;
                self.text = data == Data::Text;
                self.message_len = 0;
            }
            Data::Continue => {}
        }
        if (self.message_len as u64).saturating_add(len) > self.max_message as u64 {
            return Err(WsError::TooBig);
        }
        // Under max_message, so it fits.
        self.message_len += len as u32;
        self.frame = Some(DataFrame {
            mask,
            fin,
            remaining: len as u32,
            offset: 0,
        });
        Ok(())
    }

    fn finish_frame(&mut self, fin: bool) -> Result<Option<Event>, WsError> {
        if !fin {
            return Ok(None);
        }
        self.in_message = false;
        if let Some(mut inflating) = self.inflating.take() {
            let (text, max) = (self.text, self.max_message as usize);
            inflate(
                &mut inflating,
                None,
                text,
                max,
                &mut self.utf8,
                &mut self.payload,
            )?;
        }
        if self.text {
            self.utf8.finish()?;
        }
        self.payload.complete(!self.text);
        Ok(Some(if self.text {
            Event::Text
        } else {
            Event::Binary
        }))
    }
}

/// Inflates a piece of a compressed message (None: its end), at most `max`
/// bytes in all, and checks (text) and keeps what comes out as a plain
/// message's bytes are.
fn inflate<P: Payload>(
    inflating: &mut Inflating,
    piece: Option<&[u8]>,
    text: bool,
    max: usize,
    utf8: &mut Utf8Stream,
    payload: &mut P,
) -> Result<(), WsError> {
    let mut bad = Ok(());
    let mut out = |b: &[u8]| {
        if text && bad.is_ok() {
            bad = utf8.push(b);
        }
        payload.piece(b, !text);
    };
    match piece {
        Some(p) => inflating.feed(p, max, &mut out),
        None => inflating.finish(max, &mut out),
    }
    .map_err(inflate_error)?;
    bad
}

fn inflate_error(e: InflateError) -> WsError {
    match e {
        InflateError::Corrupt => WsError::Protocol("invalid compressed data"),
        InflateError::TooBig => WsError::TooBig,
    }
}

/// A control frame whose header ends at `head`: acted on only once all of
/// it is in `buf`, as it is small (at most 125 bytes) and never fragmented.
#[inline]
fn control(
    ctl: Control,
    fin: bool,
    len: u64,
    mask: [u8; 4],
    buf: &mut [u8],
    head: usize,
) -> Result<(Option<Event>, usize), WsError> {
    if !fin {
        return Err(WsError::Protocol("fragmented control frame"));
    }
    if len > 125 {
        return Err(WsError::Protocol("control frame too long"));
    }
    let len = len as usize;
    if buf.len() < head + len {
        return Ok((None, 0));
    }
    let payload = &mut buf[head..head + len];
    unmask(payload, mask, 0);
    let ev = match ctl {
        Control::Ping => Event::Ping(head..head + len),
        Control::Pong => Event::Pong,
        Control::Close => Event::Close(parse_close(payload)?),
        Control::Reserved(_) => return Err(WsError::Protocol("reserved opcode")),
    };
    Ok((Some(ev), head + len))
}

/// Reads a Close payload: empty, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Appends an unmasked server frame.
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    encode_with(out, opcode, payload, false);
}

/// Appends an unmasked server frame whose payload is `payload` as it goes
/// on the wire: compressed (RSV1 set) when `compressed`.
pub fn encode_with(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], compressed: bool) {
    let header = FrameHeader {
        is_final: true,
        rsv1: compressed,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

pub fn encode_text(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, OpCode::Data(Data::Text), payload);
}

/// [`encode_for`] of a text message.
pub fn encode_text_for(out: &mut Vec<u8>, payload: &[u8], mode: Mode, min: usize) {
    encode_for(out, OpCode::Data(Data::Text), payload, mode, min);
}

/// Appends a data frame for a socket that agreed `mode` of
/// permessage-deflate: compressed when it did and the payload has at
/// least `min` bytes, else as it is.
pub fn encode_for(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mode: Mode, min: usize) {
    if !mode.on() || payload.len() < min {
        return encode(out, opcode, payload);
    }
    let mut packed = Vec::with_capacity(payload.len() / 2 + 16);
    deflate::compress(payload, mode, &mut packed);
    encode_with(out, opcode, &packed, true);
}

/// One text message for many sockets: encoded once as it is, and once
/// compressed per deflate mode, only when a socket of that mode takes it.
#[derive(Debug)]
pub struct TextFrame {
    /// The frame as it is; its payload is the text.
    plain: Vec<u8>,
    len: usize,
    min: usize,
    packed: [std::cell::OnceCell<Vec<u8>>; 2],
}

impl TextFrame {
    /// `text`, compressed for the sockets that agreed to it when it has at
    /// least `min` bytes.
    pub fn new(text: &[u8], min: usize) -> Self {
        let mut plain = Vec::with_capacity(text.len() + 10);
        encode_text(&mut plain, text);
        Self {
            plain,
            len: text.len(),
            min,
            packed: Default::default(),
        }
    }

    /// The frame's bytes for a socket of `mode`.
    pub fn for_mode(&self, mode: Mode) -> &[u8] {
        let slot = match mode {
            Mode::Off => return &self.plain,
            _ if self.len < self.min => return &self.plain,
            Mode::Full => 0,
            Mode::HuffmanOnly => 1,
        };
        self.packed[slot].get_or_init(|| {
            let text = &self.plain[self.plain.len() - self.len..];
            let mut f = Vec::new();
            encode_text_for(&mut f, text, mode, 0);
            f
        })
    }
}

pub fn encode_ping(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, OpCode::Control(Control::Ping), payload);
}

pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, OpCode::Control(Control::Pong), payload);
}

pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    // A control frame carries at most 125 bytes.
    let mut r = reason.len().min(123);
    while !reason.is_char_boundary(r) {
        r -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..r]);
    encode(out, OpCode::Control(Control::Close), &p);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        shardcast_kit::wire::masked(&mut v, first, payload, MASK);
        v
    }

    /// Feeds `bytes` in pieces of `step` and collects events or the error.
    fn run(bytes: &[u8], step: usize, max: usize) -> Result<Vec<Event>, WsError> {
        run_with(Decoder::new(max), bytes, step).map(|(ev, _)| ev)
    }

    /// [`run`] with a given decoder; also returns the decoder.
    fn run_with(
        mut d: Decoder,
        bytes: &[u8],
        step: usize,
    ) -> Result<(Vec<Event>, Decoder), WsError> {
        let mut buf: Vec<u8> = Vec::new();
        let mut out = vec![];
        for piece in bytes.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                let (ev, n) = d.decode(&mut buf)?;
                buf.drain(..n);
                match ev {
                    Some(e) => out.push(e),
                    None if n == 0 || buf.is_empty() => break,
                    None => {}
                }
            }
        }
        Ok((out, d))
    }

    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        deflate::compress(text, Mode::Full, &mut c);
        c
    }

    fn deflating(max: usize) -> Decoder {
        let mut d = Decoder::new(max);
        d.set_deflate(Mode::Full);
        d
    }

    #[test]
    fn a_compressed_message_in_any_split_is_one_checked_event() {
        let text = "héllo wörld ✓ ".repeat(20);
        let packed = deflated(text.as_bytes());
        let bytes = frame(0xC1, &packed);
        for step in 1..bytes.len() {
            let (ev, _) = run_with(deflating(1024), &bytes, step).unwrap();
            assert_eq!(ev, vec![Event::Text], "step {step}");
        }
        // In fragments: RSV1 on the first only.
        let mut b = frame(0x41, &packed[..5]);
        b.extend(frame(0x80, &packed[5..]));
        assert_eq!(
            run_with(deflating(1024), &b, 3).unwrap().0,
            vec![Event::Text]
        );
        // A control frame's bytes come out inflated.
        let (ev, mut d) = run_with(deflating(1024), &frame(0xC2, &deflated(b"{}")), 4).unwrap();
        assert_eq!(ev, vec![Event::Binary]);
        assert_eq!(d.payload_mut().take(), Some(b"{}".to_vec()));
    }

    #[test]
    fn rsv1_is_refused_where_no_compression_was_agreed_or_allowed() {
        let packed = deflated(b"hi");
        let reserved = Err(WsError::Protocol("reserved bits set"));
        assert_eq!(run(&frame(0xC1, &packed), 1, 1024), reserved);
        let mut cont = frame(0x01, b"a");
        cont.extend(frame(0xC0, b"b"));
        assert_eq!(run_with(deflating(1024), &cont, 1).map(|x| x.0), reserved);
        assert_eq!(
            run_with(deflating(1024), &frame(0xC9, b""), 1).map(|x| x.0),
            reserved,
            "a ping"
        );
    }

    #[test]
    fn compressed_bad_text_a_bomb_and_garbage_close_the_socket() {
        let bad = frame(0xC1, &deflated(b"ok \xff\xfe"));
        assert_eq!(
            run_with(deflating(1024), &bad, 2).map(|x| x.0),
            Err(WsError::InvalidUtf8)
        );
        let bomb = frame(0xC1, &deflated(&vec![b'a'; 1 << 20]));
        assert_eq!(
            run_with(deflating(64 << 10), &bomb, 64).map(|x| x.0),
            Err(WsError::TooBig)
        );
        assert_eq!(
            run_with(deflating(1024), &frame(0xC1, &[0xff; 8]), 3).map(|x| x.0),
            Err(WsError::Protocol("invalid compressed data"))
        );
    }

    #[test]
    fn a_shared_frame_is_compressed_once_per_mode_and_only_when_it_pays() {
        let text = "{\"broadcast\":\"deploy at 18:00\"}".repeat(10);
        let f = TextFrame::new(text.as_bytes(), 128);
        let mut plain = Vec::new();
        encode_text(&mut plain, text.as_bytes());
        assert_eq!(f.for_mode(Mode::Off), &plain[..]);
        let full = f.for_mode(Mode::Full);
        assert_eq!(full[0], 0xC1, "FIN, RSV1, text");
        assert!(full.len() < plain.len() / 2);
        assert!(std::ptr::eq(full, f.for_mode(Mode::Full)), "made once");
        assert_eq!(f.for_mode(Mode::HuffmanOnly)[0], 0xC1);
        let short = TextFrame::new(b"{\"count\":1}", 128);
        assert_eq!(short.for_mode(Mode::Full)[0], 0x81, "under the threshold");
    }

    #[test]
    fn text_in_any_split_is_one_event() {
        let bytes = frame(0x81, "héllo wörld ✓".as_bytes());
        for step in 1..bytes.len() {
            assert_eq!(
                run(&bytes, step, 1024).unwrap(),
                vec![Event::Text],
                "step {step}"
            );
        }
    }

    #[test]
    fn fragments_count_once_and_controls_may_interleave() {
        let mut b = frame(0x01, "ab".as_bytes());
        b.extend(frame(0x89, b"p"));
        b.extend(frame(0x00, "€".as_bytes()[..1].as_ref())); // split character
        b.extend(frame(0x80, "€".as_bytes()[1..].as_ref()));
        let ev = run(&b, 3, 1024).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[0], Event::Ping(_)));
        assert_eq!(ev[1], Event::Text);
    }

    #[test]
    fn empty_text_counts() {
        assert_eq!(run(&frame(0x81, b""), 1, 10).unwrap(), vec![Event::Text]);
    }

    #[test]
    fn binary_messages_are_kept_as_controls_up_to_the_cap() {
        let mut d = Decoder::new(1 << 20);
        let whole = frame(0x82, b"{\"refresh\":\"t\"}");
        for step in 1..whole.len() {
            assert_eq!(
                run(&whole, step, 1024).unwrap(),
                vec![Event::Binary],
                "step {step}"
            );
        }
        let mut b = whole.clone();
        assert_eq!(d.decode(&mut b).unwrap(), (Some(Event::Binary), b.len()));
        assert_eq!(
            d.payload_mut().take().as_deref(),
            Some(&b"{\"refresh\":\"t\"}"[..])
        );
        // A control frame is one frame: a fragmented binary message is
        // refused at its first frame.
        let mut first = frame(0x02, b"{\"refresh\":");
        assert_eq!(d.decode(&mut first).unwrap_err(), WsError::Binary);
        let mut d = Decoder::new(1 << 20);
        let mut big = frame(0x82, &vec![b'x'; MAX_CONTROL + 1]);
        assert_eq!(d.decode(&mut big).unwrap().0, Some(Event::Binary));
        assert_eq!(d.payload_mut().take(), None, "over the cap: not kept");
        let mut small = frame(0x82, b"ok");
        d.decode(&mut small).unwrap();
        assert_eq!(d.payload_mut().take().as_deref(), Some(&b"ok"[..]));
        // What every idle socket pays for control frames: one pointer.
        assert_eq!(std::mem::size_of::<Controls>(), 8);
        // And for a compressed message in progress: one pointer too.
        assert_eq!(std::mem::size_of::<Option<Box<Inflating>>>(), 8);
    }

    #[test]
    fn errors_map_to_close_codes() {
        let mut text_only = Decoder::with(1024, Discard);
        let mut b = frame(0x82, b"x");
        assert_eq!(text_only.decode(&mut b).unwrap_err().code(), 1003);
        assert_eq!(
            run(&frame(0x81, &[0xff, 0xfe]), 64, 1024)
                .unwrap_err()
                .code(),
            1007
        );
        assert_eq!(
            run(&frame(0x81, &[b'a'; 200]), 64, 100).unwrap_err().code(),
            1009
        );
        assert_eq!(run(&frame(0xC1, b"x"), 64, 1024).unwrap_err().code(), 1002); // rsv1
        assert_eq!(run(&frame(0x83, b"x"), 64, 1024).unwrap_err().code(), 1002); // opcode 3
        assert_eq!(run(&frame(0x80, b"x"), 64, 1024).unwrap_err().code(), 1002); // lone continuation
        assert_eq!(run(&frame(0x09, b"x"), 64, 1024).unwrap_err().code(), 1002); // fragmented ping
        assert_eq!(
            run(&frame(0x89, &[0u8; 126]), 256, 1024)
                .unwrap_err()
                .code(),
            1002
        );
        assert_eq!(run(&[0x81, 0x01, b'a'], 64, 1024).unwrap_err().code(), 1002); // unmasked
        let mut b = frame(0x01, b"a");
        b.extend(frame(0x81, b"b"));
        assert_eq!(run(&b, 64, 1024).unwrap_err().code(), 1002);
    }

    #[test]
    fn too_big_is_caught_across_fragments_before_the_payload() {
        let mut b = frame(0x01, &[b'a'; 60]);
        b.extend(frame(0x80, &[b'a'; 60]));
        assert_eq!(run(&b, 1024, 100).unwrap_err(), WsError::TooBig);
        // Only the header of a huge frame is needed to refuse it.
        let huge = [0x81, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(run(&huge, 14, 65536).unwrap_err(), WsError::TooBig);
    }

    #[test]
    fn invalid_utf8_fails_in_the_fragment_that_has_it() {
        // The first fragment already holds a byte no UTF-8 text can contain.
        let b = frame(0x01, &[b'a', 0xC0, 0x80]);
        assert_eq!(run(&b, 64, 1024).unwrap_err(), WsError::InvalidUtf8);
        // A message that ends inside a character is invalid too.
        let b = frame(0x81, &"€".as_bytes()[..2]);
        assert_eq!(run(&b, 64, 1024).unwrap_err(), WsError::InvalidUtf8);
    }

    #[test]
    fn close_frames() {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        assert_eq!(
            run(&frame(0x88, &p), 64, 1024).unwrap(),
            vec![Event::Close(Some(1000))]
        );
        assert_eq!(
            run(&frame(0x88, b""), 64, 1024).unwrap(),
            vec![Event::Close(None)]
        );
        assert_eq!(run(&frame(0x88, b"x"), 64, 1024).unwrap_err().code(), 1002);
        assert_eq!(
            run(&frame(0x88, &1005u16.to_be_bytes()), 64, 1024)
                .unwrap_err()
                .code(),
            1002
        );
        let mut p = 4000u16.to_be_bytes().to_vec();
        p.extend_from_slice(&[0xff]);
        assert_eq!(run(&frame(0x88, &p), 64, 1024).unwrap_err().code(), 1007);
    }

    #[test]
    fn large_frames_stream_through_a_small_buffer() {
        let text = "x".repeat(70_000);
        let bytes = frame(0x81, text.as_bytes());
        assert_eq!(run(&bytes, 512, 100_000).unwrap(), vec![Event::Text]);
    }

    #[test]
    fn encode_round_trips_headers() {
        let mut out = vec![];
        encode_text(&mut out, b"{\"count\":1}");
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] as usize, 11);
        let mut out = vec![];
        encode_close(&mut out, 1001, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        assert!(out[1] <= 125);
        assert_eq!(&out[2..4], &1001u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
