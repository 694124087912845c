//! Where Redis is: one server and how to log in to it ([`RedisAddr`]), and
//! the topology that says which server is master ([`RedisTarget`]). Plain
//! data that imports nothing: the settings parse it (`config`), the client
//! connects to it (`redis`), and neither has to know the other.

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
}
