//! Where Redis is: one server and how to log in to it ([`RedisAddr`]), and
//! the topology that says which server is master ([`RedisTarget`]). Plain
//! data that imports nothing, and its URL form: the settings read it
//! (`config`), the client connects to it (`redis`), and neither has to
//! know the other.

/// Where the shards find their Redis master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server.
    Single(RedisAddr),
    /// The master that these Sentinels name `master`; asked again on every
    /// connect, so a failover is followed.
    Sentinel {
        sentinels: Vec<RedisAddr>,
        master: String,
        /// The master's user, password, database and TLS (a replica
        /// promoted shares them), not the Sentinels'.
        username: Option<String>,
        password: Option<String>,
        db: u32,
        tls: bool,
    },
    /// A Redis Cluster, found through these seed nodes (which carry the
    /// nodes' password); its slot map says where each key lives.
    Cluster { seeds: Vec<RedisAddr> },
}

/// One Redis server and how to log in to it. Its `Debug` hides the
/// password, so an address can be logged.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RedisAddr {
    pub host: String,
    pub port: u16,
    /// The ACL user; None: `default`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// Whether the connection goes over TLS.
    pub tls: bool,
}

impl std::fmt::Debug for RedisAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAddr")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisAddr {
    /// From `redis[s]://[[user]:password@]host:port[/db]` (`rediss`: over
    /// TLS). As before ACL users, `password@` with no colon is a password.
    pub fn parse(url: &str) -> Result<RedisAddr, String> {
        let (rest, tls) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => return Err("must start with redis:// or rediss://".into()),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse()
                    .map_err(|_| format!("database {d:?} is not a number"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| format!("port {p:?} is not a number"))?,
            ),
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("host is empty".into());
        }
        let (username, password) = match auth.map(|a| a.split_once(':')) {
            None => (None, None),
            Some(Some((user, pw))) => (Some(user), Some(pw)),
            Some(None) => (None, auth),
        };
        let username = username.filter(|u| !u.is_empty()).map(String::from);
        let password = password.filter(|p| !p.is_empty()).map(String::from);
        if username.is_some() && password.is_none() {
            return Err("an ACL user needs its password (user:password@)".into());
        }
        Ok(RedisAddr {
            host: host.to_string(),
            port,
            username,
            password,
            db,
            tls,
        })
    }

    /// `host:port`, with an IPv6 host in brackets, for connecting and logs.
    pub fn socket_text(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Another server of the same deployment (a cluster node, a master
    /// a Sentinel names): the same user, password and TLS, database 0.
    pub fn at(&self, host: String, port: u16) -> RedisAddr {
        RedisAddr {
            host,
            port,
            db: 0,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let a = RedisAddr {
            host: "h".into(),
            port: 1,
            password: Some("s3cret".into()),
            ..RedisAddr::default()
        };
        assert!(!format!("{a:?}").contains("s3cret"));
        assert_eq!(
            a.at("::1".into(), 7000).socket_text(),
            "[::1]:7000",
            "an IPv6 host is bracketed"
        );
    }

    #[test]
    fn urls_parse() {
        let a = RedisAddr::parse("redis://127.0.0.1:6390").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db, a.password),
            ("127.0.0.1", 6390, 0, None)
        );
        let a = RedisAddr::parse("redis://:s3cret@cache.local/2").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db, a.password.as_deref()),
            ("cache.local", 6379, 2, Some("s3cret"))
        );
        let a = RedisAddr::parse("redis://[::1]:7000").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        assert!(RedisAddr::parse("redis://:1").is_err());
        assert!(RedisAddr::parse("redis://h:notaport").is_err());
    }

    #[test]
    fn tls_urls_and_acl_users_parse() {
        let a = RedisAddr::parse("rediss://app:p:w@cache.local:6380/1").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db, a.tls),
            ("cache.local", 6380, 1, true)
        );
        assert_eq!(
            (a.username.as_deref(), a.password.as_deref()),
            (Some("app"), Some("p:w"))
        );
        // Logs may show the user, never the password.
        let shown = format!("{a:?}");
        assert!(shown.contains("app") && !shown.contains("p:w"), "{shown}");
        let a = RedisAddr::parse("redis://:pw@h").unwrap();
        assert_eq!(
            (a.username, a.password.as_deref(), a.tls),
            (None, Some("pw"), false)
        );
        // As before ACL users: no colon, a password.
        let a = RedisAddr::parse("redis://pw@h").unwrap();
        assert_eq!((a.username, a.password.as_deref()), (None, Some("pw")));
        assert!(RedisAddr::parse("redis://app:@h")
            .unwrap_err()
            .contains("password"));
        assert!(RedisAddr::parse("http://h").is_err());
    }
}
