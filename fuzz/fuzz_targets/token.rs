//! Fuzzes token verification (`shardcast::auth::verify`) and the token's
//! way out of a request (`shardcast::auth::token_of`): whatever the token,
//! the secret and the clock (NaN and infinities included), verification
//! returns. Only that is checked; the result is dropped, since what an
//! identity holds is another module's business.
//!
//! Input layout: byte 0 picks the secret's length (0-32) and whether the
//! target signs the token itself (bit 7); then the secret, 8 bytes of clock
//! (an f64's bits), and the token. A token the target signs is
//! `<header>.<claims>` from the input with a good HS256 signature appended,
//! so the fuzzer reaches the claims (`exp`, `nbf`, `sub`) that an unsigned
//! token never gets past the signature check to.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use shardcast::auth::{token_of, verify};
use shardcast::http::parse_head;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (secret, rest) = rest.split_at(((ctl & 0x3f) as usize % 33).min(rest.len()));
    let (clock, rest) = rest.split_at(8.min(rest.len()));
    let mut bits = [0u8; 8];
    bits[..clock.len()].copy_from_slice(clock);
    let now = f64::from_bits(u64::from_le_bytes(bits));
    let mut token = String::from_utf8_lossy(rest).into_owned();
    if ctl & 0x80 != 0 {
        // The input's header and claims (as JSON, base64url'd here), signed.
        let (header, claims) = token.split_once('\n').unwrap_or((&token, ""));
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return;
        };
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        token = format!("{signed}.{sig}");
    }
    let _ = verify(secret, &token, now);

    // The same token as a request carries it, in the query and in the header.
    for head in [
        format!("GET /ws/chat/?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("GET /ws/chat/ HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"),
    ] {
        if let Ok(Some(req)) = parse_head(head.as_bytes()) {
            if let Some(t) = token_of(&req) {
                let _ = verify(secret, t, now);
            }
        }
    }
});
