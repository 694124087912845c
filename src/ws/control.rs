//! Control frames: what a client may ask of its open socket, sent as a
//! binary WebSocket message holding one JSON object. Text messages are the
//! counter's and are all counted; a control frame is never text, so no chat
//! message can be taken for one. The commands: `refresh` a token, `join` a
//! room (from a position, to recover what was missed there), `leave` one.

use serde::Deserialize;

/// A command a client sent on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{"refresh": "<token>"}`: replace the socket's token with a newer one
    /// for the same subject, before the old one expires.
    Refresh(String),
    /// `{"join": "<room>"}`, or with `"position": "<token>"` to be sent
    /// what the room had after it: add the room to the socket.
    Join {
        room: String,
        position: Option<String>,
    },
    /// `{"leave": "<room>"}`: take the room off the socket.
    Leave(String),
}

/// Why a binary message is not a control frame (the socket closes with 1003).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a control frame: {0}")]
pub struct NotControl(String);

/// Every key a command may have; which ones go together is checked after.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    refresh: Option<String>,
    join: Option<String>,
    leave: Option<String>,
    position: Option<String>,
}

/// Reads a control frame's payload: one command, with only its own keys.
pub fn parse(payload: &[u8]) -> Result<Command, NotControl> {
    let k: Keys = serde_json::from_slice(payload).map_err(|e| NotControl(e.to_string()))?;
    match (k.refresh, k.join, k.leave, k.position) {
        (Some(t), None, None, None) => Ok(Command::Refresh(t)),
        (None, Some(room), None, position) => Ok(Command::Join { room, position }),
        (None, None, Some(room), None) => Ok(Command::Leave(room)),
        (None, None, None, _) => Err(NotControl("no command".into())),
        _ => Err(NotControl(
            "more than one command, or a key of another".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_parses_with_its_own_keys_and_nothing_else_does() {
        assert_eq!(
            parse(br#"{"refresh":"a.b.c"}"#),
            Ok(Command::Refresh("a.b.c".into()))
        );
        assert_eq!(
            parse(br#"{"join":"lobby"}"#),
            Ok(Command::Join {
                room: "lobby".into(),
                position: None
            })
        );
        assert_eq!(
            parse(br#"{"position":"1.W10","join":"lobby"}"#),
            Ok(Command::Join {
                room: "lobby".into(),
                position: Some("1.W10".into())
            })
        );
        assert_eq!(
            parse(br#"{"leave":"lobby"}"#),
            Ok(Command::Leave("lobby".into()))
        );
        for bad in [
            &br#"{"refresh":1}"#[..],
            br#"{"refresh":"t","x":1}"#,
            br#"{"refresh":"t","join":"r"}"#,
            br#"{"leave":"r","position":"1.W10"}"#,
            br#"{"refresh":"t","position":"1.W10"}"#,
            br#"{"position":"1.W10"}"#,
            br#"{"join":["a","b"]}"#,
            br#"{"join":null}"#,
            br#"{}"#,
            b"refresh",
            b"",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
