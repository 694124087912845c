//! Fuzzes the cluster slot map as it is built from a `CLUSTER SLOTS` reply
//! (`shardcast::redis::cluster::SlotMap::parse`), read off the wire by the
//! same RESP reader.
//!
//! Properties (a violation panics, which libFuzzer reports as a crash):
//! - nothing panics, whatever the ranges, hosts and ports;
//! - a map that is accepted has 1 to 16,384 masters, each with the asked
//!   node's password, and no more uncovered slots than there are slots;
//! - a slot's owner is one of the map's masters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::config::RedisAddr;
use shardcast::redis::cluster::{SlotMap, SLOTS};
use shardcast::redis::{RespStream, Slot};

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    let Ok(Some(reply)) = RespStream::new().next(data, &mut pos) else {
        return;
    };
    let asked = RedisAddr {
        host: "10.0.0.1".into(),
        port: 7000,
        username: Some("app".into()),
        password: Some("secret".into()),
        db: 0,
        tls: true,
    };
    let Ok(map) = SlotMap::parse(&reply, &asked) else {
        return;
    };
    let masters = map.masters();
    assert!(!masters.is_empty() && masters.len() <= SLOTS as usize);
    assert!(masters
        .iter()
        .all(|m| (&m.username, &m.password, m.tls) == (&asked.username, &asked.password, true)));
    assert!(map.uncovered() <= SLOTS as usize);
    for key in [&data[..pos], b"shardcast:events".as_slice(), b"{a}"] {
        if let Some(owner) = map.owner(Slot::of(key)) {
            assert!(masters.contains(owner), "an owner that is not a master");
        }
    }
});
