//! The server API's keys (`--api-key`): which key a request presents
//! (`Authorization: apikey <KEY>` or `X-API-Key: <KEY>`), and whether it is
//! one of the configured keys, compared in constant time. Several keys may
//! be configured at once, so a key is rotated by adding the new one,
//! moving the callers over, then removing the old one.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::Request;
use crate::metrics::Denial;

/// Why a request was not let into the server API; `as_str` is the metric's
/// `reason` label and the JSON error's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No key was presented.
    #[error("no API key: send Authorization: apikey <KEY> or X-API-Key")]
    MissingKey,
    /// A key was presented and matches none of the configured ones.
    #[error("the API key is not valid")]
    InvalidKey,
    /// No key is configured, so this listener does not serve the API.
    #[error("the server API is not served here: configure api_key, or use the admin listener")]
    Disabled,
}

impl Denied {
    pub const ALL: [Denied; 3] = [Denied::MissingKey, Denied::InvalidKey, Denied::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            Denied::MissingKey => "missing_key",
            Denied::InvalidKey => "invalid_key",
            Denied::Disabled => "api_disabled",
        }
    }

    /// The HTTP status: a listener without the API answers as if the path
    /// did not exist.
    pub fn status(self) -> u16 {
        match self {
            Denied::Disabled => 404,
            _ => 401,
        }
    }
}

impl From<Denied> for Denial {
    fn from(d: Denied) -> Denial {
        match d {
            Denied::MissingKey => Denial::MissingKey,
            Denied::InvalidKey => Denial::InvalidKey,
            Denied::Disabled => Denial::ApiDisabled,
        }
    }
}

/// The configured keys, kept as SHA-256 digests: every comparison is over
/// 32 bytes whatever the keys' lengths, so a key's length does not show in
/// the time an answer takes either.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of the configured keys. Every configured key is
    /// compared, match or not, so the time does not tell which one matched.
    pub fn accepts(&self, key: &str) -> bool {
        let d = digest(key);
        let mut found = subtle::Choice::from(0);
        for k in &self.digests {
            found |= k.ct_eq(&d);
        }
        bool::from(found)
    }

    /// Checks the key `req` presents.
    pub fn check(&self, req: &Request) -> Result<(), Denied> {
        if self.is_empty() {
            return Err(Denied::Disabled);
        }
        match presented(req) {
            None => Err(Denied::MissingKey),
            Some(k) if self.accepts(k) => Ok(()),
            Some(_) => Err(Denied::InvalidKey),
        }
    }
}

/// The key a request presents: `Authorization: apikey <KEY>` (the scheme in
/// any case) or `X-API-Key: <KEY>`. An Authorization header of another
/// scheme presents no key.
pub fn presented(req: &Request) -> Option<&str> {
    let from_auth = req.header("authorization").and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("apikey").then(|| rest.trim())
    });
    from_auth
        .or_else(|| req.header("x-api-key").map(str::trim))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Request::default()
        }
    }

    #[test]
    fn either_header_presents_a_key() {
        let keys = ApiKeys::new(&["old-key-0123456789".into(), "new-key-0123456789".into()]);
        for h in [
            ("Authorization", "apikey old-key-0123456789"),
            ("authorization", "ApiKey  new-key-0123456789 "),
            ("X-API-Key", "new-key-0123456789"),
            ("x-api-key", " old-key-0123456789"),
        ] {
            assert_eq!(keys.check(&req(&[h])), Ok(()), "{h:?}");
        }
    }

    #[test]
    fn wrong_missing_and_other_schemes_are_refused() {
        let keys = ApiKeys::new(&["the-key-0123456789".into()]);
        assert_eq!(keys.check(&req(&[])), Err(Denied::MissingKey));
        assert_eq!(
            keys.check(&req(&[("Authorization", "Bearer the-key-0123456789")])),
            Err(Denied::MissingKey),
            "a bearer token is not an API key"
        );
        assert_eq!(
            keys.check(&req(&[("X-API-Key", "")])),
            Err(Denied::MissingKey)
        );
        for wrong in [
            "the-key-012345678",
            "the-key-01234567890",
            "THE-KEY-0123456789",
        ] {
            assert_eq!(
                keys.check(&req(&[("X-API-Key", wrong)])),
                Err(Denied::InvalidKey),
                "{wrong}"
            );
        }
        assert_eq!(ApiKeys::default().check(&req(&[])), Err(Denied::Disabled));
        assert!(!format!("{keys:?}").contains("the-key"));
    }
}
