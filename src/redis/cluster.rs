//! Redis Cluster from one shard: which master holds each hash slot (from
//! `CLUSTER SLOTS`), one [`Link`] per master, and requests routed by slot,
//! following `MOVED` (the map was stale), `ASK` (a slot half-way through a
//! migration) and `TRYAGAIN` (a multi-key call that met a migration).
//!
//! Every request names one slot: the callers keep each request's keys in
//! one slot (a session's keys share its `{id}` tag; history's keys share
//! one tag), which is what makes a pipeline or a script valid on a cluster.
//!
//! The map is asked again when a link breaks or a redirect says it is
//! stale, and every few seconds otherwise, so a failover (a replica
//! promoted) and a reshard are followed without a restart. Links open for
//! every master in the map at once rather than on first use: the cluster's
//! `up` then means what it says, that every slot's master answers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::LazyLock;
use std::time::Duration;

use redis::ServerErrorKind;

use super::link::{Link, LinkState};
use super::observe::{Observer, RedirectKind};
use super::sentinel::Switch;
use super::stream::Tls;
use super::{wire, RedisAddr, RedisError, RedisTarget, Value};

/// Hash slots in a cluster.
pub const SLOTS: u16 = 16384;
/// Ranges a `CLUSTER SLOTS` reply may hold: a real one has at most one per
/// slot. More is a reply from something that is not a cluster node, and
/// would make reading it (a fill of the slot table per range) costly.
const MAX_RANGES: usize = SLOTS as usize;
/// Redirects one request may follow before it is failed.
const REDIRECTS: usize = 8;
/// Pause before a `TRYAGAIN` is tried again: a migration moves keys in
/// batches, so a few milliseconds usually see it through.
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);
/// How often the map is asked again while all is well, and while not.
const REFRESH_CALM: Duration = Duration::from_secs(5);
const REFRESH_TROUBLED: Duration = Duration::from_millis(250);

/// A key's hash slot: the `redis` crate computes it (CRC16 of the key, or
/// of its `{tag}`), this keeps its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(u16);

/// The crate's slot type does not give its number away; every slot is
/// hashed once into this table to read it back.
static NUMBERS: LazyLock<HashMap<redis::cluster_routing::Slot, u16>> = LazyLock::new(|| {
    (0..SLOTS)
        .filter_map(|n| Some((redis::cluster_routing::Slot::new(n)?, n)))
        .collect()
});

impl Slot {
    pub fn of(key: impl AsRef<[u8]>) -> Slot {
        Slot(NUMBERS[&redis::cluster_routing::Slot::for_key(key)])
    }

    pub fn number(self) -> u16 {
        self.0
    }
}

/// Which master holds each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Per slot, an index into `masters`; `NONE` for a slot no one serves.
    owner: Box<[u16]>,
    masters: Vec<RedisAddr>,
}

const NONE: u16 = u16::MAX;

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply from `asked`: ranges of slots, each
    /// with its master first. An empty host means the node that answered.
    /// The masters get its user, password and TLS, which a cluster's
    /// nodes share.
    pub fn parse(v: &Value, asked: &RedisAddr) -> Result<SlotMap, RedisError> {
        let bad = || RedisError::Reply(format!("CLUSTER SLOTS answered {v:?}"));
        let ranges = match v {
            Value::Array(r) => r,
            Value::ServerError(e) => {
                return Err(RedisError::Topology(format!(
                    "{} is not a cluster node: {e:?}",
                    asked.socket_text()
                )))
            }
            _ => return Err(bad()),
        };
        if ranges.len() > MAX_RANGES {
            return Err(RedisError::Reply(format!(
                "CLUSTER SLOTS answered {} ranges, more than there are slots",
                ranges.len()
            )));
        }
        let mut map = SlotMap {
            owner: vec![NONE; SLOTS as usize].into_boxed_slice(),
            masters: Vec::new(),
        };
        // Each master's index, so a long reply is read in linear time.
        let mut seen: HashMap<RedisAddr, u16> = HashMap::new();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(bad());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad());
            };
            let host = master.first().and_then(wire::text).ok_or_else(bad)?;
            let port = match master.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            let host = if host.is_empty() || host == "?" {
                asked.host.clone()
            } else {
                host
            };
            let addr = asked.at(host, port);
            let start = usize::try_from(*start).map_err(|_| bad())?;
            let end = usize::try_from(*end).map_err(|_| bad())?;
            if start > end || end >= SLOTS as usize {
                return Err(bad());
            }
            let index = match seen.get(&addr) {
                Some(&i) => i,
                None => {
                    let i = map.index_of(addr.clone()).ok_or_else(bad)?;
                    seen.insert(addr, i);
                    i
                }
            };
            map.owner[start..=end].fill(index);
        }
        if map.masters.is_empty() {
            return Err(RedisError::Topology(format!(
                "{} serves no slots: the cluster is not set up",
                asked.socket_text()
            )));
        }
        Ok(map)
    }

    /// `addr`'s index in `masters`, added if new; None once the table
    /// holds as many masters as an index can name (`NONE` is not one).
    fn index_of(&mut self, addr: RedisAddr) -> Option<u16> {
        if let Some(i) = self.masters.iter().position(|m| *m == addr) {
            return u16::try_from(i).ok();
        }
        let i = u16::try_from(self.masters.len())
            .ok()
            .filter(|&i| i < NONE)?;
        self.masters.push(addr);
        Some(i)
    }

    pub fn owner(&self, slot: Slot) -> Option<&RedisAddr> {
        self.masters.get(self.owner[slot.0 as usize] as usize)
    }

    pub fn masters(&self) -> &[RedisAddr] {
        &self.masters
    }

    /// Slots no master serves.
    pub fn uncovered(&self) -> usize {
        self.owner.iter().filter(|&&o| o == NONE).count()
    }

    /// What a `MOVED` said: `slot` is `addr`'s now. A table already full
    /// of masters is left as it is: the refresh the `MOVED` asks for
    /// replaces it.
    fn moved(&mut self, slot: Slot, addr: RedisAddr) {
        if let Some(index) = self.index_of(addr) {
            self.owner[slot.0 as usize] = index;
        }
    }
}

/// Where a reply sends its request instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot is this master's now (the map was stale).
    Moved(Slot, RedisAddr),
    /// Ask this node, once, with `ASKING` first (a slot in migration).
    Ask(RedisAddr),
    /// A multi-key request met a migration: try again shortly.
    TryAgain,
}

/// A redirect the service cannot follow: the server that sent it is not
/// speaking the cluster protocol as it should. A protocol error on the
/// link that carried it, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// The slot is not one of the cluster's 0..16383.
    #[error("{kind} names slot {slot}, past the cluster's last slot {last}", last = SLOTS - 1)]
    SlotOutOfRange { kind: &'static str, slot: u64 },
    /// Not `<slot> <host>:<port>`.
    #[error("{kind} redirect is not `<slot> <host>:<port>`: {text:?}")]
    Malformed { kind: &'static str, text: String },
}

/// Longest part of a malformed redirect kept for its error: the text is
/// the peer's, and goes to the log.
const SHOWN: usize = 64;

/// Reads one reply as a redirect: `Ok(None)` for any reply that is not
/// one (a value, another error); for `MOVED` and `ASK` the slot (checked to
/// be a cluster slot) and the node, which gets the user, password and TLS of `like`.
pub fn parse_redirect(reply: &Value, like: &RedisAddr) -> Result<Option<Redirect>, RedirectError> {
    let Value::ServerError(e) = reply else {
        return Ok(None);
    };
    let kind = match e.kind() {
        Some(ServerErrorKind::TryAgain) => return Ok(Some(Redirect::TryAgain)),
        Some(ServerErrorKind::Moved) => "MOVED",
        Some(ServerErrorKind::Ask) => "ASK",
        _ => return Ok(None),
    };
    let text = e.details().unwrap_or("");
    let bad = || RedirectError::Malformed {
        kind,
        text: text.chars().take(SHOWN).collect(),
    };
    let mut words = text.split_ascii_whitespace();
    let (Some(slot), Some(node), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad());
    };
    if slot.is_empty() || !slot.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Digits past u64 are out of range too, not malformed.
    let n = slot.parse::<u64>().unwrap_or(u64::MAX);
    let slot = u16::try_from(n)
        .ok()
        .filter(|&s| s < SLOTS)
        .ok_or(RedirectError::SlotOutOfRange { kind, slot: n })?;
    let addr = addr_of(node, like).ok_or_else(bad)?;
    Ok(Some(match kind {
        "MOVED" => Redirect::Moved(Slot(slot), addr),
        _ => Redirect::Ask(addr),
    }))
}

/// The first redirect among a request's replies, or the first that cannot
/// be followed. A request's keys share a slot, so its keyed commands are
/// all redirected or none is.
fn redirect(values: &[Value], like: &RedisAddr) -> Result<Option<Redirect>, RedirectError> {
    for v in values {
        if let Some(r) = parse_redirect(v, like)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// `packed` with `ASKING` before each of its commands, which an `ASK`
/// redirect needs (it lasts one command). The commands are taken back
/// apart with the crate's parser (each is an array of bulk strings) and
/// packed again.
fn with_asking(packed: &[u8]) -> Result<(Vec<u8>, usize), RedisError> {
    let asking = redis::cmd("ASKING").get_packed_command();
    let mut out = Vec::with_capacity(packed.len() * 2);
    let mut n = 0;
    for v in wire::values(packed)? {
        let Value::Array(parts) = v else {
            return Err(RedisError::Reply("a packed command is not an array".into()));
        };
        let mut cmd = redis::Cmd::new();
        for p in parts {
            match p {
                Value::BulkString(b) => cmd.arg(b),
                other => return Err(RedisError::Reply(format!("a command part {other:?}"))),
            };
        }
        out.extend_from_slice(&asking);
        out.extend(cmd.get_packed_command());
        n += 2;
    }
    Ok((out, n))
}

/// Parses `host:port` from a redirect.
/// Parses `host:port` from a redirect: a node like `like`.
fn addr_of(text: &str, like: &RedisAddr) -> Option<RedisAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(like.at(host.to_string(), port.parse().ok()?))
}

/// One shard's view of a cluster and its links to the masters.
pub struct Cluster {
    seeds: Vec<RedisAddr>,
    /// A seed, whose user, password and TLS every node shares.
    like: RedisAddr,
    tls: Tls,
    map: RefCell<Option<SlotMap>>,
    links: RefCell<HashMap<RedisAddr, Link>>,
    /// Bumped when the map should be asked again now.
    stale: Switch,
    /// Bumped on every link's connect, so the store knows to write again.
    epoch: Cell<u64>,
    /// The last refused redirect logged, so a node that keeps sending the
    /// same one is logged once.
    told: RefCell<Option<String>>,
    up: Cell<bool>,
    init: Rc<[u8]>,
    init_replies: usize,
    /// Itself, for the links' callbacks.
    me: Weak<Cluster>,
    observer: Rc<dyn Observer>,
    shard: usize,
}

impl Cluster {
    /// Seeds carry the user, password and TLS the cluster's nodes share.
    pub fn new(
        seeds: Vec<RedisAddr>,
        tls: Tls,
        (init, init_replies): (Rc<[u8]>, usize),
        observer: Rc<dyn Observer>,
        shard: usize,
    ) -> Rc<Cluster> {
        Rc::new_cyclic(|me| Cluster {
            like: seeds.first().cloned().unwrap_or_default(),
            tls,
            seeds,
            map: RefCell::new(None),
            links: RefCell::new(HashMap::new()),
            stale: Switch::default(),
            epoch: Cell::new(0),
            told: RefCell::new(None),
            up: Cell::new(false),
            init,
            init_replies,
            me: me.clone(),
            observer,
            shard,
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// The master that serves `slot`, as the map says now.
    pub fn owner(&self, slot: Slot) -> Option<RedisAddr> {
        self.map.borrow().as_ref()?.owner(slot).cloned()
    }

    /// The masters in the map now.
    pub fn masters(&self) -> Vec<RedisAddr> {
        self.map
            .borrow()
            .as_ref()
            .map(|m| m.masters().to_vec())
            .unwrap_or_default()
    }

    /// Takes in a `MOVED` that came back some other way than through
    /// [`Cluster::exec`] (a refused subscription): the map learns the
    /// slot's master, is read again soon, and the slot is returned. A
    /// redirect that cannot be followed is counted and logged here, and
    /// returned for the caller to reset the connection it came on.
    pub fn moved(&self, reply: &Value) -> Result<Option<Slot>, RedirectError> {
        let r = parse_redirect(reply, &self.like).inspect_err(|e| self.refused(e))?;
        let Some(Redirect::Moved(slot, addr)) = r else {
            return Ok(None);
        };
        if let Some(m) = self.map.borrow_mut().as_mut() {
            m.moved(slot, addr);
        }
        self.stale.bump();
        Ok(Some(slot))
    }

    /// Counts a redirect that cannot be followed, and logs it when it says
    /// something new: a node that answers every command so would otherwise
    /// log every request.
    fn refused(&self, e: &RedirectError) {
        self.observer.redirect(RedirectKind::Refused);
        let why = e.to_string();
        if self.told.borrow().as_deref() != Some(why.as_str()) {
            tracing::warn!(error = %why, "redis cluster: redirect refused; resetting the link");
            self.told.replace(Some(why));
        }
    }

    /// Has the map read again soon: something said it is out of date.
    pub fn mark_stale(&self) {
        self.stale.bump();
    }

    /// Sends a request whose keys are all in `slot` (any master for none)
    /// and follows the cluster's redirects.
    pub async fn exec(
        &self,
        slot: Option<Slot>,
        bytes: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, RedisError> {
        let mut to = self.route(slot)?;
        let mut ask = false;
        for _ in 0..REDIRECTS {
            let link = self.link(&to);
            let mut values = if ask {
                let (wrapped, n) = with_asking(&bytes)?;
                let v = link.exec(wrapped, n).await?;
                // Drop the ASKINGs' OKs.
                v.into_iter().skip(1).step_by(2).collect()
            } else {
                link.exec(bytes.clone(), replies).await?
            };
            let r = match redirect(&values, &self.like) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(values),
                Err(e) => {
                    // The node speaks the protocol wrong: this request
                    // fails, and its connection starts over.
                    self.refused(&e);
                    link.reset();
                    self.stale.bump();
                    return Err(RedisError::Reply(e.to_string()));
                }
            };
            ask = false;
            self.observer.redirect(match r {
                Redirect::Moved(..) => RedirectKind::Moved,
                Redirect::Ask(_) => RedirectKind::Ask,
                Redirect::TryAgain => RedirectKind::TryAgain,
            });
            match r {
                Redirect::Moved(slot, addr) => {
                    if let Some(m) = self.map.borrow_mut().as_mut() {
                        m.moved(slot, addr.clone());
                    }
                    self.stale.bump();
                    to = addr;
                }
                Redirect::Ask(addr) => {
                    to = addr;
                    ask = true;
                }
                Redirect::TryAgain => {
                    glommio::timer::sleep(TRYAGAIN_PAUSE).await;
                    to = self.route(slot)?;
                }
            }
            values.clear();
        }
        Err(RedisError::Topology(format!(
            "more than {REDIRECTS} redirects for one request"
        )))
    }

    fn route(&self, slot: Option<Slot>) -> Result<RedisAddr, RedisError> {
        let map = self.map.borrow();
        let map = map.as_ref().ok_or(RedisError::Unavailable)?;
        match slot {
            Some(s) => map.owner(s).cloned().ok_or_else(|| {
                RedisError::Topology(format!("no master serves slot {}", s.number()))
            }),
            None => map
                .masters()
                .first()
                .cloned()
                .ok_or(RedisError::Unavailable),
        }
    }

    /// The link to `addr`, opened (and its task started) if there is none.
    fn link(&self, addr: &RedisAddr) -> Link {
        if let Some(l) = self.links.borrow().get(addr) {
            return l.clone();
        }
        let me = self.me.clone();
        let link = Link::new(
            RedisTarget::Single(addr.clone()),
            self.tls.clone(),
            Rc::new(Switch::default()),
            (self.init.clone(), self.init_replies),
            Rc::new(move |state| {
                if let Some(c) = me.upgrade() {
                    c.on_link(state)
                }
            }),
            self.observer.clone(),
            self.shard,
        );
        self.links.borrow_mut().insert(addr.clone(), link.clone());
        glommio::spawn_local(link.clone().run()).detach();
        link
    }

    fn on_link(&self, state: LinkState) {
        match state {
            LinkState::Up => self.epoch.set(self.epoch.get() + 1),
            LinkState::Lost | LinkState::Unreachable => {
                // A master gone may be a failover under way.
                self.observer.interrupted();
                self.stale.bump();
            }
        }
        self.update_up();
    }

    /// Up when there is a map, it covers every slot, and every master's
    /// link is connected.
    fn update_up(&self) {
        let up = self.map.borrow().as_ref().is_some_and(|m| {
            m.uncovered() == 0 && {
                let links = self.links.borrow();
                m.masters()
                    .iter()
                    .all(|a| links.get(a).is_some_and(Link::is_up))
            }
        });
        if self.up.replace(up) != up {
            self.observer.up(up);
        }
    }

    /// Asks the known masters, then the seeds, for the slot map.
    async fn ask_map(&self) -> Result<SlotMap, RedisError> {
        let mut nodes: Vec<RedisAddr> = self
            .map
            .borrow()
            .as_ref()
            .map(|m| m.masters().to_vec())
            .unwrap_or_default();
        nodes.extend(self.seeds.iter().cloned());
        let mut last = RedisError::Topology("no cluster seeds given".into());
        // Each shard starts from a different node.
        for i in 0..nodes.len() {
            match slots_of(&nodes[(i + self.shard) % nodes.len()], &self.tls).await {
                Ok(m) => return Ok(m),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Keeps the map fresh and a link open to every master in it; runs for
    /// the shard's life. Run it as a shard task.
    pub async fn run(self: Rc<Self>) {
        let mut told: Option<String> = None;
        loop {
            let seen = self.stale.generation();
            // A link that cannot connect says so (and marks the map stale),
            // so a good map is asked again only when calm.
            let pause = match self.ask_map().await {
                Ok(map) => {
                    told = None;
                    let whole = map.uncovered() == 0;
                    self.apply(map);
                    if whole {
                        REFRESH_CALM
                    } else {
                        REFRESH_TROUBLED
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    if told.as_deref() != Some(&why) {
                        tracing::warn!(error = %why, "redis cluster: cannot read the slot map; retrying");
                        told = Some(why);
                    }
                    self.observer.interrupted();
                    REFRESH_TROUBLED
                }
            };
            self.update_up();
            futures_lite::future::or(glommio::timer::sleep(pause), async {
                self.stale.after(seen).await;
                // Redirects come in bursts: one refresh for the burst.
                glommio::timer::sleep(REFRESH_TROUBLED).await;
            })
            .await;
        }
    }

    fn apply(&self, map: SlotMap) {
        let changed = self.map.borrow().as_ref() != Some(&map);
        if changed {
            let masters: Vec<String> = map.masters().iter().map(RedisAddr::socket_text).collect();
            tracing::info!(masters = ?masters, uncovered = map.uncovered(), "redis cluster slot map");
        }
        for a in map.masters() {
            self.link(a);
        }
        self.links.borrow_mut().retain(|a, l| {
            let keep = map.masters().contains(a);
            if !keep {
                l.stop();
            }
            keep
        });
        self.map.replace(Some(map));
    }
}

/// Asks one node for the slot map.
async fn slots_of(node: &RedisAddr, tls: &Tls) -> Result<SlotMap, RedisError> {
    let (mut stream, mut reader) = wire::connect(node, tls).await?;
    stream
        .send(&redis::cmd("CLUSTER").arg("SLOTS").get_packed_command())
        .await?;
    SlotMap::parse(&reader.read_value(&mut stream).await?, node)
}

/// The master that serves `slot` now, asked of the seeds: for a connection
/// that must sit on one node (the subscription).
pub async fn owner_of(
    seeds: &[RedisAddr],
    tls: &Tls,
    slot: Slot,
    first: usize,
) -> Result<RedisAddr, RedisError> {
    let mut last = RedisError::Topology("no cluster seeds given".into());
    for i in 0..seeds.len() {
        match slots_of(&seeds[(first + i) % seeds.len()], tls).await {
            Ok(m) => {
                return m.owner(slot).cloned().ok_or_else(|| {
                    RedisError::Topology(format!("no master serves slot {}", slot.number()))
                })
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::wire::bulk;

    #[test]
    fn slots_are_the_clusters() {
        // Values from the Redis Cluster specification and redis-cli.
        assert_eq!(Slot::of("123456789").number(), 12739);
        assert_eq!(Slot::of("foo").number(), 12182);
        assert_eq!(Slot::of("{user1000}.following"), Slot::of("user1000"));
        assert_eq!(
            Slot::of("shardcast:{a}:s"),
            Slot::of("shardcast:{a}:del"),
            "a session's keys share a slot"
        );
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    #[test]
    fn a_slots_reply_maps_every_slot_to_its_master() {
        let asked = RedisAddr {
            password: Some("pw".into()),
            ..RedisAddr::default()
        }
        .at("10.0.0.1".into(), 7000);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("", 7000),
                node("10.0.0.2", 7003),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node("10.0.0.3", 7001),
            ]),
        ]);
        let map = SlotMap::parse(&reply, &asked).unwrap();
        assert_eq!(map.masters().len(), 2);
        let first = map.owner(Slot(0)).unwrap();
        assert_eq!((first.host.as_str(), first.port), ("10.0.0.1", 7000));
        assert_eq!(first.password.as_deref(), Some("pw"));
        assert_eq!(map.owner(Slot(16383)).unwrap().port, 7001);
        assert_eq!(map.uncovered(), 0);
        let half = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(99),
            node("h", 1),
        ])]);
        assert_eq!(SlotMap::parse(&half, &asked).unwrap().uncovered(), 16284);
        let not_cluster =
            redis::parse_redis_value(b"-ERR This instance has cluster support disabled\r\n")
                .unwrap();
        let e = SlotMap::parse(&not_cluster, &asked).unwrap_err();
        assert!(e.to_string().contains("not a cluster node"), "{e}");
        let empty = Value::Array(vec![]);
        assert!(SlotMap::parse(&empty, &asked).is_err());
    }

    #[test]
    fn redirects_are_read_from_error_replies() {
        let v = |s: &[u8]| redis::parse_redis_value(s).unwrap();
        let at = |port| RedisAddr::default().at("127.0.0.1".into(), port);
        assert_eq!(
            redirect(
                &[v(b"-MOVED 3999 127.0.0.1:6381\r\n")],
                &RedisAddr::default()
            ),
            Ok(Some(Redirect::Moved(Slot(3999), at(6381))))
        );
        assert_eq!(
            redirect(
                &[Value::Okay, v(b"-ASK 3999 127.0.0.1:6382\r\n")],
                &RedisAddr::default()
            ),
            Ok(Some(Redirect::Ask(at(6382))))
        );
        assert_eq!(
            redirect(
                &[v(
                    b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
                )],
                &RedisAddr::default()
            ),
            Ok(Some(Redirect::TryAgain))
        );
        assert_eq!(
            redirect(&[v(b"-ERR no\r\n"), Value::Int(1)], &RedisAddr::default()),
            Ok(None)
        );
        let like = RedisAddr {
            password: Some("pw".into()),
            ..RedisAddr::default()
        };
        let Ok(Some(Redirect::Moved(_, a))) =
            redirect(&[v(b"-MOVED 16383 10.0.0.9:7000\r\n")], &like)
        else {
            panic!("the last slot is a slot");
        };
        assert_eq!(a.password.as_deref(), Some("pw"));
        let a = addr_of("127.0.0.1:6381", &RedisAddr::default()).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 6381));
        assert_eq!(
            addr_of("[::1]:7000", &RedisAddr::default()).unwrap().host,
            "::1"
        );
    }

    /// A `MOVED` past the last slot indexed the slot table and panicked
    /// the shard; now it is refused, whatever the numbers say.
    #[test]
    fn a_redirect_to_no_slot_is_refused() {
        let v = |s: &str| redis::parse_redis_value(s.as_bytes()).unwrap();
        for (reply, slot) in [
            ("-MOVED 16384 127.0.0.1:6381\r\n", 16384),
            ("-MOVED 65535 127.0.0.1:6381\r\n", 65535),
            ("-ASK 65536 127.0.0.1:6381\r\n", 65536),
            ("-MOVED 99999999999999999999999 h:1\r\n", u64::MAX),
        ] {
            match parse_redirect(&v(reply), &RedisAddr::default()) {
                Err(RedirectError::SlotOutOfRange { slot: s, .. }) => {
                    assert_eq!(s, slot, "{reply}")
                }
                other => panic!("{reply}: {other:?}"),
            }
        }
        for reply in [
            "-MOVED\r\n",
            "-MOVED 12\r\n",
            "-MOVED -1 h:1\r\n",
            "-MOVED +1 h:1\r\n",
            "-MOVED 12 h\r\n",
            "-MOVED 12 h:99999\r\n",
            "-ASK 12 h:1 more\r\n",
        ] {
            assert!(
                matches!(
                    parse_redirect(&v(reply), &RedisAddr::default()),
                    Err(RedirectError::Malformed { .. })
                ),
                "{reply}"
            );
        }
        // A stale map taking in a redirect keeps to its table.
        let asked = RedisAddr::default().at("10.0.0.1".into(), 7000);
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node("", 7000),
        ])]);
        let mut map = SlotMap::parse(&reply, &asked).unwrap();
        let Ok(Some(Redirect::Moved(slot, to))) =
            parse_redirect(&v("-MOVED 16383 10.0.0.2:7001\r\n"), &RedisAddr::default())
        else {
            panic!("a good MOVED");
        };
        map.moved(slot, to);
        assert_eq!(map.owner(Slot(16383)).unwrap().port, 7001);
    }

    /// A reply naming more masters than an index can hold wrapped the
    /// index (`as u16`) onto another master or onto `NONE`; a reply with
    /// more ranges than slots is refused before any is read.
    #[test]
    fn a_slots_reply_cannot_overflow_the_table() {
        let asked = RedisAddr::default().at("10.0.0.1".into(), 7000);
        let ranges = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| {
                        let slot = (i % SLOTS as usize) as i64;
                        Value::Array(vec![
                            Value::Int(slot),
                            Value::Int(slot),
                            node(&format!("10.1.{}.{}", i / 256, i % 256), 7000),
                        ])
                    })
                    .collect(),
            )
        };
        let full = SlotMap::parse(&ranges(MAX_RANGES), &asked).unwrap();
        assert_eq!(full.uncovered(), 0);
        assert_eq!(full.masters().len(), MAX_RANGES);
        assert!(SlotMap::parse(&ranges(MAX_RANGES + 1), &asked).is_err());
        let mut map = full.clone();
        map.masters.resize(NONE as usize, asked.clone());
        let before = map.clone();
        map.moved(Slot(5), RedisAddr::default().at("10.9.9.9".into(), 1));
        assert_eq!(map, before, "a full table takes no new master");
    }

    #[test]
    fn asking_goes_before_every_command() {
        let mut p = redis::pipe();
        p.cmd("SET").arg("k").arg("v").cmd("WAIT").arg(1).arg(10);
        let (out, n) = with_asking(&p.get_packed_pipeline()).unwrap();
        assert_eq!(n, 4);
        let mut want = redis::pipe();
        want.cmd("ASKING")
            .cmd("SET")
            .arg("k")
            .arg("v")
            .cmd("ASKING")
            .cmd("WAIT")
            .arg(1)
            .arg(10);
        assert_eq!(out, want.get_packed_pipeline());
    }
}
