//! Redis Sentinel: which server is the master now, and word when that changes.
//!
//! A shard asks the sentinels for the master on every connect
//! ([`master_addr`]), so a reconnect after a failover finds the new one. A
//! killed master breaks its connections, and that alone would do; but a
//! switch can leave the old server up (a manual `SENTINEL FAILOVER`, a master
//! demoted when it comes back), and writes would then meet a replica. So
//! each shard also holds a subscription to a sentinel's `+switch-master`
//! channel ([`watch`]) and bumps its [`Switch`], on which the shard's Redis
//! connections drop what they hold and reconnect.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use redis::Value;

use super::backoff::Backoff;
use super::stream::Tls;
use super::wire;
use super::{RedisAddr, RedisError};

/// Asks every sentinel, from the `first`th on, where `name`'s master is,
/// and believes the one with the newest configuration epoch: right after a
/// failover some sentinels still name the old master, and a minority cut
/// off from the others may keep naming it. If none answers, the last error
/// says why.
pub async fn master_addr(
    sentinels: &[RedisAddr],
    tls: &Tls,
    name: &str,
    first: usize,
) -> Result<RedisAddr, RedisError> {
    let mut last = RedisError::Topology("no sentinels given".into());
    let mut best: Option<(u64, RedisAddr)> = None;
    for i in 0..sentinels.len() {
        let s = &sentinels[(first + i) % sentinels.len()];
        match ask(s, tls, name).await {
            Ok((epoch, addr)) => {
                if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                    best = Some((epoch, addr));
                }
            }
            Err(e) => last = e,
        }
    }
    best.map(|(_, a)| a).ok_or(last)
}

async fn ask(sentinel: &RedisAddr, tls: &Tls, name: &str) -> Result<(u64, RedisAddr), RedisError> {
    let (mut stream, mut reader) = wire::connect(sentinel, tls).await.map_err(|e| {
        RedisError::Topology(format!(
            "sentinel {} unreachable: {e}",
            sentinel.socket_text()
        ))
    })?;
    let cmd = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(name)
        .get_packed_command();
    stream.send(&cmd).await?;
    parse_master(&reader.read_value(&mut stream).await?, name)
}

/// Reads a `SENTINEL MASTER` reply: the master's address and the epoch of
/// the configuration that named it.
fn parse_master(v: &Value, name: &str) -> Result<(u64, RedisAddr), RedisError> {
    // RESP2 answers a flat array of keys and values, RESP3 a map.
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(items) => items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
        Value::Map(kv) => kv.iter().map(|(k, v)| (k, v)).collect(),
        Value::ServerError(e) if e.details().is_some_and(|d| d.contains("No such master")) => {
            return Err(RedisError::Topology(format!(
                "the sentinels know no master named {name:?}"
            )))
        }
        Value::ServerError(e) => return Err(RedisError::Server(format!("{e:?}"))),
        other => return Err(RedisError::Reply(format!("{other:?}"))),
    };
    let field = |key: &str| {
        let (_, v) = pairs
            .iter()
            .find(|(k, _)| wire::text(k).as_deref() == Some(key))?;
        wire::text(v)
    };
    let bad = || RedisError::Reply(format!("SENTINEL MASTER answered {v:?}"));
    let host = field("ip").ok_or_else(bad)?;
    let port = field("port").and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let epoch = field("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Ok((
        epoch,
        RedisAddr {
            host,
            port,
            username: None,
            password: None,
            db: 0,
            tls: false,
        },
    ))
}

/// Word that the master changed, for one shard's connections. Each reader
/// remembers the generation it connected under and drops its connection
/// once it moves on.
#[derive(Default)]
pub struct Switch {
    generation: Cell<u64>,
    /// One per task waiting; a task that waits again replaces its own.
    wakers: RefCell<Vec<Waker>>,
}

impl Switch {
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn bump(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once the generation is no longer `seen`.
    pub async fn after(&self, seen: u64) {
        poll_fn(|cx| {
            if self.generation.get() != seen {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// Whether a `+switch-master` message is about `name`: its text is
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`.
fn switched(items: &[Value], name: &str) -> Option<String> {
    let [kind, _, text] = items else {
        return None;
    };
    if wire::text(kind)? != "message" {
        return None;
    }
    let text = wire::text(text)?;
    let mut words = text.split(' ');
    (words.next()? == name).then(|| words.collect::<Vec<_>>().join(" "))
}

/// Holds a subscription to `+switch-master` on one of the sentinels for the
/// shard's life, moving to the next sentinel when one goes away, and bumps
/// `switch` when `name`'s master changes. Run it as a shard task.
pub async fn watch(
    sentinels: Vec<RedisAddr>,
    tls: Tls,
    name: String,
    first: usize,
    switch: Rc<Switch>,
) {
    let mut turn = first;
    let mut backoff = Backoff::default();
    loop {
        let s = &sentinels[turn % sentinels.len()];
        turn += 1;
        if let Ok((mut stream, mut reader)) = wire::connect(s, &tls).await {
            // Switches come when they come.
            stream.set_read_timeout(None);
            let sub = redis::cmd("SUBSCRIBE")
                .arg("+switch-master")
                .get_packed_command();
            if stream.send(&sub).await.is_ok() {
                backoff.reset();
                while let Ok(v) = reader.read_value(&mut stream).await {
                    if let Value::Array(items) | Value::Push { data: items, .. } = &v {
                        if let Some(to) = switched(items, &name) {
                            tracing::warn!(master = %name, change = %to, "sentinels switched the redis master");
                            switch.bump();
                        }
                    }
                }
            }
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::wire::bulk;

    #[test]
    fn a_master_reply_parses() {
        let reply = Value::Array(
            [
                "name",
                "main",
                "ip",
                "10.0.0.7",
                "port",
                "6380",
                "config-epoch",
                "3",
            ]
            .map(bulk)
            .to_vec(),
        );
        let (epoch, a) = parse_master(&reply, "main").unwrap();
        assert_eq!((epoch, a.host.as_str(), a.port), (3, "10.0.0.7", 6380));
        let unknown = redis::parse_redis_value(b"-ERR No such master with that name\r\n").unwrap();
        let e = parse_master(&unknown, "m").unwrap_err();
        assert!(e.to_string().contains("no master named \"m\""), "{e}");
        let no_port = Value::Array(["ip", "h"].map(bulk).to_vec());
        assert!(parse_master(&no_port, "m").is_err());
    }

    #[test]
    fn only_our_masters_switch_counts() {
        let msg = |t: &str| vec![bulk("message"), bulk("+switch-master"), bulk(t)];
        assert_eq!(
            switched(&msg("main 127.0.0.1 1 127.0.0.1 2"), "main").as_deref(),
            Some("127.0.0.1 1 127.0.0.1 2")
        );
        assert_eq!(
            switched(&msg("other 127.0.0.1 1 127.0.0.1 2"), "main"),
            None
        );
        assert_eq!(switched(&msg("mainly 1 2 3 4"), "main"), None);
        let confirm = vec![bulk("subscribe"), bulk("+switch-master"), Value::Int(1)];
        assert_eq!(switched(&confirm, "main"), None);
    }

    #[test]
    fn a_switch_wakes_who_waits_on_it() {
        let s = Switch::default();
        let seen = s.generation();
        // The waiter is polled first and parks; the bump then wakes it.
        futures_lite::future::block_on(futures_lite::future::zip(s.after(seen), async {
            s.bump()
        }));
        assert_eq!(s.generation(), seen + 1);
        // A waiter that polls again does not pile up wakers.
        assert!(s.wakers.borrow().is_empty());
    }
}
