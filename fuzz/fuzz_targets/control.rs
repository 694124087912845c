//! Fuzzes the control frames a client sends on its socket
//! (`shardcast::ws::control::parse`) and the readers a join's values go
//! through (`pubsub::check_room`, the position token): whatever the bytes,
//! each returns. A room that passes the check is also held to what the
//! check promises: 1 to 64 bytes of its character set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::history::Position;
use shardcast::pubsub::check_room;
use shardcast::ws::control::{parse, Command};

fuzz_target!(|data: &[u8]| {
    let room = match parse(data) {
        Ok(Command::Join { room, position }) => {
            if let Some(p) = position {
                let _ = p.parse::<Position>();
            }
            room
        }
        Ok(Command::Leave(room)) => room,
        Ok(Command::Refresh(_)) | Err(_) => return,
    };
    if check_room(&room).is_ok() {
        assert!((1..=64).contains(&room.len()), "{room:?}");
        assert!(room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
    }
});
