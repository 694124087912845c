//! Upgrade authentication with HS256 JSON Web Tokens (`--auth-secret`).
//!
//! A token comes as `Authorization: Bearer <token>` or `?token=<token>`
//! (browsers cannot set headers on a WebSocket). Only HS256 is accepted: the
//! algorithm is not the token's choice, so `none` and key-confusion tricks
//! fail. The signature is checked in constant time before any claim is read;
//! `exp` and `nbf` are honoured (with no leeway) when present, `sub` names
//! the client in the logs, and `rooms` lists the rooms the bearer may join
//! (`"*"`: any; no claim: none). A live socket keeps its token's `exp` and is
//! closed when it passes, unless a refresh on the socket replaced the token
//! (`ws::control`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::http::Request;

/// Longest token accepted: a bound on the work a stranger can ask for.
const MAX_TOKEN: usize = 4096;

/// Why a token was refused; its text is [`AuthError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYet,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

impl AuthError {
    /// The reason as a fixed string, for a goodbye frame.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "no token",
            AuthError::Malformed => "the token is not a JWT",
            AuthError::Algorithm => "the token is not HS256",
            AuthError::Signature => "bad signature",
            AuthError::Expired => "the token has expired",
            AuthError::NotYet => "the token is not valid yet",
        }
    }
}

/// When a token that is valid now stops being valid, as an `Instant`; None
/// when it has no `exp` or one too far off to represent (never, in effect).
pub fn deadline(
    exp: Option<f64>,
    now_unix: f64,
    now: std::time::Instant,
) -> Option<std::time::Instant> {
    let left = std::time::Duration::try_from_secs_f64((exp? - now_unix).max(0.0)).ok()?;
    now.checked_add(left)
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub sub: Option<String>,
    /// Unix seconds after which the token is no longer valid.
    pub exp: Option<f64>,
    pub rooms: Rooms,
}

/// The rooms a token lets its bearer join.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rooms {
    /// No `rooms` claim, or an empty list: the global channel only.
    #[default]
    None,
    /// `"*"` in the list.
    All,
    /// These rooms, by exact name.
    Only(Box<[String]>),
}

impl Rooms {
    fn from_claim(claim: Option<Vec<String>>) -> Rooms {
        match claim {
            None => Rooms::None,
            Some(list) if list.iter().any(|r| r == "*") => Rooms::All,
            Some(list) if list.is_empty() => Rooms::None,
            Some(list) => Rooms::Only(list.into_boxed_slice()),
        }
    }

    pub fn allows(&self, room: &str) -> bool {
        match self {
            Rooms::None => false,
            Rooms::All => true,
            Rooms::Only(list) => list.iter().any(|r| r == room),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    rooms: Option<Vec<String>>,
}

/// The token of a request: the Authorization header wins over the query.
pub fn token_of(req: &Request) -> Option<&str> {
    if let Some(v) = req.header("authorization") {
        let (scheme, rest) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    req.param(&["token"])
}

/// Checks `token` against `secret` at `now` (Unix seconds).
pub fn verify(secret: &[u8], token: &str, now: f64) -> Result<Identity, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = decode_json(h)?;
    if header.alg != "HS256" {
        return Err(AuthError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| AuthError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::Signature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
    let claims: Claims = decode_json(p)?;
    // NaN compares false both ways: such a claim would never expire.
    if claims.exp.is_some_and(|exp| !exp.is_finite() || now >= exp) {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| !nbf.is_finite() || now < nbf) {
        return Err(AuthError::NotYet);
    }
    Ok(Identity {
        sub: claims.sub,
        exp: claims.exp,
        rooms: Rooms::from_claim(claims.rooms),
    })
}

/// Now, in Unix seconds, as `verify` takes it.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], header: &str, claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{h}.{p}.{s}")
    }

    const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn a_good_token_names_its_subject() {
        let t = sign(b"k", HS, r#"{"sub":"ana","exp":2000}"#);
        assert_eq!(
            verify(b"k", &t, 1000.0),
            Ok(Identity {
                sub: Some("ana".into()),
                exp: Some(2000.0),
                rooms: Rooms::None,
            })
        );
        let t = sign(b"k", HS, r#"{}"#);
        let id = verify(b"k", &t, 1000.0).unwrap();
        assert_eq!((id.sub, id.exp, id.rooms), (None, None, Rooms::None));
    }

    #[test]
    fn deadlines_follow_exp_and_never_overflow() {
        let now = std::time::Instant::now();
        assert_eq!(deadline(None, 100.0, now), None);
        assert_eq!(
            deadline(Some(102.5), 100.0, now),
            Some(now + std::time::Duration::from_millis(2500))
        );
        assert_eq!(deadline(Some(99.0), 100.0, now), Some(now));
        assert_eq!(deadline(Some(1e300), 0.0, now), None);
        let t = sign(b"k", HS, r#"{"exp":1e999}"#);
        assert!(verify(b"k", &t, 0.0).is_err(), "an infinite exp is refused");
    }

    #[test]
    fn the_rooms_claim_decides_which_rooms() {
        let rooms = |claims: &str| verify(b"k", &sign(b"k", HS, claims), 0.0).unwrap().rooms;
        let only = rooms(r#"{"rooms":["lobby","ops"]}"#);
        assert!(only.allows("lobby") && only.allows("ops"));
        assert!(!only.allows("Lobby") && !only.allows("lobby2") && !only.allows(""));
        assert!(rooms(r#"{"rooms":["a","*"]}"#).allows("anything"));
        assert!(!rooms(r#"{"rooms":[]}"#).allows("lobby"));
        assert!(
            !rooms(r#"{"sub":"x"}"#).allows("lobby"),
            "no claim: no room"
        );
        // A claim of the wrong shape is a bad token, not an open door.
        let t = sign(b"k", HS, r#"{"rooms":"*"}"#);
        assert_eq!(verify(b"k", &t, 0.0), Err(AuthError::Malformed));
    }

    #[test]
    fn bad_tokens_are_refused_for_their_reason() {
        let good = sign(b"k", HS, r#"{"sub":"ana"}"#);
        assert_eq!(verify(b"other", &good, 0.0), Err(AuthError::Signature));
        let t = sign(b"k", HS, r#"{"exp":1000}"#);
        assert_eq!(verify(b"k", &t, 1000.0), Err(AuthError::Expired));
        let t = sign(b"k", HS, r#"{"nbf":1000}"#);
        assert_eq!(verify(b"k", &t, 999.0), Err(AuthError::NotYet));
        let t = sign(b"k", r#"{"alg":"none"}"#, r#"{"sub":"x"}"#);
        assert_eq!(verify(b"k", &t, 0.0), Err(AuthError::Algorithm));
        let t = sign(b"k", r#"{"alg":"HS512"}"#, r#"{}"#);
        assert_eq!(verify(b"k", &t, 0.0), Err(AuthError::Algorithm));
        // A signature moved onto other claims does not carry over.
        let sig = good.rsplit('.').next().unwrap();
        let forged = format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(HS),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#)
        );
        assert_eq!(verify(b"k", &forged, 0.0), Err(AuthError::Signature));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(5000)] {
            assert!(verify(b"k", junk, 0.0).is_err(), "{junk:.20}");
        }
    }
}
