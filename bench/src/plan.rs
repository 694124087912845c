//! What one worker process is told to do: the target, its share of the
//! sockets and of the load, and what the coordinator's `go` means for it.
//! The coordinator builds plans from the command line; workers get theirs as
//! JSON on their command line.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Request target, query included (`/ws/chat/`).
    pub path: String,
    pub sockets: u32,
    /// Connections are spread over this many source addresses from 127.0.0.1
    /// up, so each source has a whole ephemeral port range of its own.
    pub sources: u32,
    /// New connections per second; 0 opens them all at once.
    pub connect_rate: f64,
    pub load: Load,
    /// Bytes of each text message.
    pub payload: usize,
    /// A reply, upgrade or close that takes longer than this is an error.
    pub timeout_ms: u64,
    /// Messages each socket sends, and has answered, before it counts as ready.
    pub prime: u32,
    pub on_go: OnGo,
    /// After a drain goodbye, reconnect with the session id once
    /// `retry_after_ms` has passed, and expect the count to continue.
    pub reconnect: bool,
    /// Whether a goodbye must precede the server's Close echo. Servers built
    /// on tungstenite's protocol layer cannot send one.
    pub expect_bye: bool,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Load {
    /// Sockets only hold.
    Idle,
    /// Each socket keeps `window` messages in flight from its welcome on.
    Closed { window: u32 },
    /// `rate` messages per second over all of this worker's sockets, sent on
    /// schedule whatever the replies do, from `go` on.
    Open { rate: f64 },
    /// From its welcome on, each socket sends at random intervals: a
    /// `chatter_share` of them every 2-10 s, the others every 30-120 s. After
    /// a `churn` share of its sends (once the reply is in) a socket closes
    /// and comes back with its session id 0.5-2 s later, which must find its
    /// count where it left it.
    Mix { chatter_share: f64, churn: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnGo {
    /// Marks the start of the measured window.
    Measure,
    /// Drops every socket at once (RST, no Close), then reconnects each with
    /// its session id and checks that the count continues.
    DropAndResume,
    /// Nothing: the server is about to be told to drain; every socket must get
    /// the shutdown goodbye and Close 1001.
    ExpectDrain,
}

/// The parts of a ws:// URL a client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("`{url}`: only ws:// URLs are supported"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        let addr = crate::scale::node::resolve(authority).map_err(|e| format!("`{url}`: {e}"))?;
        let path = if path.is_empty() { "/" } else { path };
        Ok(Target {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The chat route of a server on a loopback address.
    pub fn chat(addr: SocketAddr) -> Target {
        Target {
            addr,
            host: addr.to_string(),
            path: "/ws/chat/".into(),
        }
    }
}

impl Plan {
    /// The settings every run starts from; the command line and the suite
    /// change what they name.
    pub fn new(t: Target, sockets: u32, load: Load) -> Plan {
        Plan {
            addr: t.addr,
            host: t.host,
            path: t.path,
            sockets,
            sources: 16,
            connect_rate: 0.0,
            load,
            payload: 32,
            timeout_ms: 10_000,
            prime: 0,
            on_go: OnGo::Measure,
            reconnect: false,
            expect_bye: true,
            seed: 1,
        }
    }

    /// The URL the plan's sockets connect to, for the report.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.host, self.path)
    }

    /// The source address of the `i`-th connection.
    pub fn source(&self, i: u32) -> Option<Ipv4Addr> {
        match self.addr {
            SocketAddr::V4(a) if a.ip().is_loopback() && self.sources > 1 => Some(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % self.sources.min(254)) as u8,
            )),
            _ => None,
        }
    }

    /// Splits this plan over `k` workers: sockets and open-loop rate shared out,
    /// each worker seeded apart.
    pub fn split(&self, k: u32) -> Vec<Plan> {
        let k = k.max(1).min(self.sockets.max(1));
        (0..k)
            .map(|w| {
                let mut p = self.clone();
                p.sockets = self.sockets / k + u32::from(w < self.sockets % k);
                p.connect_rate = self.connect_rate / f64::from(k);
                if let Load::Open { rate } = self.load {
                    p.load = Load::Open {
                        rate: rate * f64::from(p.sockets) / f64::from(self.sockets.max(1)),
                    };
                }
                p.seed = self
                    .seed
                    .wrapping_add(u64::from(w).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                p
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sockets: u32, load: Load) -> Plan {
        let mut p = Plan::new(
            Target::chat("127.0.0.1:8080".parse().unwrap()),
            sockets,
            load,
        );
        (p.sources, p.connect_rate) = (8, 1000.0);
        p
    }

    #[test]
    fn urls() {
        let t = Target::parse("ws://127.0.0.1:8080/ws/chat/").unwrap();
        assert_eq!(t, Target::chat("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            Plan::new(t, 1, Load::Idle).url(),
            "ws://127.0.0.1:8080/ws/chat/"
        );
        let t = Target::parse("ws://[::1]:9/ws/chat?room=a").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.path, "/ws/chat?room=a");
        let t = Target::parse("ws://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        assert!(Target::parse("http://x/").is_err());
        assert!(Target::parse("wss://x/").is_err());
        assert!(Target::parse("ws:///x").is_err());
    }

    #[test]
    fn split_shares_sockets_and_rate_exactly() {
        let parts = plan(10_001, Load::Open { rate: 20_000.0 }).split(3);
        assert_eq!(parts.iter().map(|p| p.sockets).sum::<u32>(), 10_001);
        let total: f64 = parts
            .iter()
            .map(|p| match p.load {
                Load::Open { rate } => rate,
                _ => unreachable!(),
            })
            .sum();
        assert!((total - 20_000.0).abs() < 1e-6);
        assert!((parts.iter().map(|p| p.connect_rate).sum::<f64>() - 1000.0).abs() < 1e-9);
        assert_ne!(parts[0].seed, parts[1].seed);
    }

    #[test]
    fn never_more_workers_than_sockets() {
        assert_eq!(plan(2, Load::Idle).split(8).len(), 2);
        assert_eq!(plan(5, Load::Idle).split(0).len(), 1);
    }

    #[test]
    fn sources_cycle_over_loopback_addresses() {
        let p = plan(10, Load::Idle);
        assert_eq!(p.source(0), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(p.source(9), Some(Ipv4Addr::new(127, 0, 0, 2)));
        let mut v6 = p.clone();
        v6.addr = "[::1]:80".parse().unwrap();
        assert_eq!(v6.source(3), None);
    }
}
