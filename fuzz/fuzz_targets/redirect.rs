//! Fuzzes the reading of Redis Cluster redirects
//! (`shardcast::redis::cluster::parse_redirect`): the error replies
//! `MOVED <slot> <host>:<port>`, `ASK ...` and `TRYAGAIN`, as a node sends
//! them, through the same RESP reader.
//!
//! Input layout: byte 0 picks the reply's code (bits 0-1: MOVED, ASK,
//! TRYAGAIN or none), whether the cluster has a user and password (bit 2)
//! and TLS (bit 3); the rest is the text after the code (line breaks
//! dropped).
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics, whatever the slot's digits or the address;
//! - a redirect that is followed names a cluster slot (0-16383) and an
//!   address with the cluster's user, password and TLS;
//! - one that is refused says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::config::RedisAddr;
use shardcast::redis::cluster::{parse_redirect, Redirect, SLOTS};
use shardcast::redis::RespStream;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let code = ["MOVED ", "ASK ", "TRYAGAIN ", ""][(ctl & 3) as usize];
    let login = ctl & 4 != 0;
    let like = RedisAddr {
        username: login.then(|| "app".to_string()),
        password: login.then(|| "secret".to_string()),
        tls: ctl & 8 != 0,
        ..RedisAddr::default()
    };
    let same = |a: &RedisAddr| {
        assert_eq!(
            (&a.username, &a.password, a.tls),
            (&like.username, &like.password, like.tls)
        )
    };
    let mut line = b"-".to_vec();
    line.extend_from_slice(code.as_bytes());
    line.extend(rest.iter().filter(|&&b| b != b'\r' && b != b'\n'));
    line.extend_from_slice(b"\r\n");
    let mut pos = 0;
    let Ok(Some(reply)) = RespStream::new().next(&line, &mut pos) else {
        return;
    };
    match parse_redirect(&reply, &like) {
        Ok(Some(Redirect::Moved(slot, addr))) => {
            assert!(slot.number() < SLOTS, "slot {}", slot.number());
            same(&addr);
        }
        Ok(Some(Redirect::Ask(addr))) => same(&addr),
        Ok(Some(Redirect::TryAgain)) | Ok(None) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
