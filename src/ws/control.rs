//! Control frames: what a client may ask of its open socket, sent as a
//! binary WebSocket message holding one JSON object. Text messages are the
//! counter's and are all counted; a control frame is never text, so no chat
//! message can be taken for one. Today there is one command, `refresh`.

use serde::Deserialize;

/// A command a client sent on its socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    /// `{"refresh": "<token>"}`: replace the socket's token with a newer one
    /// for the same subject, before the old one expires.
    Refresh(String),
}

/// Why a binary message is not a control frame (the socket closes with 1003).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a control frame: {0}")]
pub struct NotControl(String);

/// Reads a control frame's payload.
pub fn parse(payload: &[u8]) -> Result<Command, NotControl> {
    serde_json::from_slice(payload).map_err(|e| NotControl(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_parses_and_nothing_else_does() {
        assert_eq!(
            parse(br#"{"refresh":"a.b.c"}"#),
            Ok(Command::Refresh("a.b.c".into()))
        );
        for bad in [
            &br#"{"refresh":1}"#[..],
            br#"{"refresh":"t","x":1}"#,
            br#"{"join":"room"}"#,
            br#"{}"#,
            b"refresh",
            b"",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
