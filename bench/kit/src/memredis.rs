//! An in-memory Redis on a loopback port, for the fast test tier: RESP2 and
//! the few commands shardcast sends (connection set-up, strings, hashes,
//! expiry, pub/sub, `WAIT`), with its Lua scripts stood in for by Rust
//! functions the caller registers under their SHA1.
//!
//! Not a Redis: no persistence, no replication, no cluster, one database.
//! What it does answer, it answers as `redis-server` does; the full tier
//! holds the two against each other (tests/memredis.rs).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest request this accepts, in arguments and in bytes per argument: a
/// test never comes near, a broken client gets an error rather than an
/// allocation it chose.
const MAX_ARGS: usize = 1 << 16;
const MAX_ARG_BYTES: usize = 16 << 20;

/// A reply, written as RESP2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(&'static str),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn bulk(b: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(Some(b.into()))
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Status(s) => out.extend(format!("+{s}\r\n").as_bytes()),
            Reply::Error(e) => out.extend(format!("-{e}\r\n").as_bytes()),
            Reply::Int(n) => out.extend(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(None) => out.extend(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => {
                out.extend(format!("${}\r\n", b.len()).as_bytes());
                out.extend(b);
                out.extend(b"\r\n");
            }
            Reply::Array(items) => {
                out.extend(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.write(out);
                }
            }
        }
    }
}

/// A hash's fields, in order (so `HGETALL` answers alike every time).
type Fields = BTreeMap<Vec<u8>, Vec<u8>>;

enum Data {
    Str(Vec<u8>),
    Hash(Fields),
}

struct Entry {
    data: Data,
    expires: Option<Instant>,
}

/// The keyspace, handed to scripts.
#[derive(Default)]
pub struct Db {
    keys: HashMap<Vec<u8>, Entry>,
}

impl Db {
    /// Drops `key` when its time is up, as Redis does on access.
    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let expired = self
            .keys
            .get(key)
            .and_then(|e| e.expires)
            .is_some_and(|t| t <= Instant::now());
        if expired {
            self.keys.remove(key);
        }
        self.keys.get_mut(key)
    }

    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.live(key).is_some()
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
        match self.live(key).map(|e| &e.data) {
            None => Ok(None),
            Some(Data::Str(v)) => Ok(Some(v.clone())),
            Some(Data::Hash(_)) => Err(wrong_type()),
        }
    }

    /// `SET key value` with an optional TTL; clears an old TTL as Redis does.
    pub fn set(&mut self, key: &[u8], value: &[u8], ttl: Option<Duration>) {
        let expires = ttl.map(|t| Instant::now() + t);
        let data = Data::Str(value.to_vec());
        self.keys.insert(key.to_vec(), Entry { data, expires });
    }

    pub fn del(&mut self, key: &[u8]) -> bool {
        self.live(key);
        self.keys.remove(key).is_some()
    }

    fn hash(&mut self, key: &[u8]) -> Result<Option<&mut Fields>, Reply> {
        match self.live(key).map(|e| &mut e.data) {
            None => Ok(None),
            Some(Data::Hash(h)) => Ok(Some(h)),
            Some(Data::Str(_)) => Err(wrong_type()),
        }
    }

    pub fn hget(&mut self, key: &[u8], field: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
        Ok(self.hash(key)?.and_then(|h| h.get(field).cloned()))
    }

    pub fn hset(&mut self, key: &[u8], field: &[u8], value: &[u8]) -> Result<bool, Reply> {
        if self.hash(key)?.is_none() {
            let data = Data::Hash(Fields::new());
            self.keys.insert(
                key.to_vec(),
                Entry {
                    data,
                    expires: None,
                },
            );
        }
        let h = self.hash(key)?.expect("made above");
        Ok(h.insert(field.to_vec(), value.to_vec()).is_none())
    }

    pub fn hgetall(&mut self, key: &[u8]) -> Result<Fields, Reply> {
        Ok(self.hash(key)?.cloned().unwrap_or_default())
    }

    pub fn pexpire(&mut self, key: &[u8], ms: u64) -> bool {
        match self.live(key) {
            Some(e) => {
                e.expires = Some(Instant::now() + Duration::from_millis(ms));
                true
            }
            None => false,
        }
    }

    /// Milliseconds left: -2 for no key, -1 for no expiry.
    pub fn pttl(&mut self, key: &[u8]) -> i64 {
        match self.live(key) {
            None => -2,
            Some(Entry { expires: None, .. }) => -1,
            Some(Entry {
                expires: Some(t), ..
            }) => t.saturating_duration_since(Instant::now()).as_millis() as i64,
        }
    }
}

fn wrong_type() -> Reply {
    Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
}

/// A script's stand-in: the keyspace, KEYS, ARGV; its reply.
pub type ScriptFn = Arc<dyn Fn(&mut Db, &[Vec<u8>], &[Vec<u8>]) -> Reply + Send + Sync>;

/// A connection's writing half, shared with publishers on other threads.
type Writer = Arc<Mutex<TcpStream>>;

#[derive(Default)]
struct State {
    db: Db,
    /// Channel -> (connection id, its writer).
    channels: HashMap<Vec<u8>, Vec<(u64, Writer)>>,
    /// Every open connection, so that stopping closes them.
    conns: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    /// Script source -> SHA1, and SHA1 -> its stand-in.
    sources: HashMap<Vec<u8>, String>,
    scripts: HashMap<String, ScriptFn>,
    stopped: AtomicBool,
    next_conn: AtomicU64,
}

/// Scripts to stand in for, then [`MemRedisBuilder::start`].
#[derive(Default)]
pub struct MemRedisBuilder {
    sources: HashMap<Vec<u8>, String>,
    scripts: HashMap<String, ScriptFn>,
}

impl MemRedisBuilder {
    /// `source` is the Lua text the client loads, `sha1` its hash (the
    /// client's own, so the two cannot disagree), `run` what it does.
    pub fn script(mut self, source: &str, sha1: &str, run: ScriptFn) -> Self {
        self.sources.insert(source.as_bytes().to_vec(), sha1.into());
        self.scripts.insert(sha1.into(), run);
        self
    }

    /// Listens on `127.0.0.1:0` and serves until dropped.
    pub fn start(self) -> MemRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            sources: self.sources,
            scripts: self.scripts,
            stopped: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                thread::spawn(move || serve(&s, stream));
            }
        });
        MemRedis {
            addr,
            shared,
            accept: Some(accept),
        }
    }
}

/// A running in-memory Redis; dropping it closes every connection.
pub struct MemRedis {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl MemRedis {
    pub fn builder() -> MemRedisBuilder {
        MemRedisBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Runs `f` on the keyspace, as a test's look behind the client's back.
    pub fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> T) -> T {
        f(&mut self.shared.state.lock().unwrap().db)
    }
}

impl Drop for MemRedis {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for c in self.shared.state.lock().unwrap().conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request: an array of bulk strings. None at EOF or on bytes that
/// are not one (the connection is then closed, as Redis does after a
/// protocol error).
fn read_request(r: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.strip_prefix('*')?.trim_end().parse().ok()?;
    if n == 0 || n > MAX_ARGS {
        return None;
    }
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.strip_prefix('$')?.trim_end().parse().ok()?;
        if len > MAX_ARG_BYTES {
            return None;
        }
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

fn serve(shared: &Shared, stream: TcpStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    shared
        .state
        .lock()
        .unwrap()
        .conns
        .push(stream.try_clone().unwrap());
    let mut reader = BufReader::new(stream);
    let mut subscribed = 0usize;
    while let Some(args) = read_request(&mut reader) {
        let mut out = Vec::new();
        for reply in answer(shared, id, &writer, &mut subscribed, &args) {
            if let Reply::Error(e) = &reply {
                // Shown with a failing test's output: what the fake refused.
                let req: Vec<_> = args
                    .iter()
                    .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned())
                    .collect();
                eprintln!("memredis: {req:?} -> {e}");
            }
            reply.write(&mut out);
        }
        if writer.lock().unwrap().write_all(&out).is_err() {
            break;
        }
    }
    let mut st = shared.state.lock().unwrap();
    for subs in st.channels.values_mut() {
        subs.retain(|(c, _)| *c != id);
    }
}

fn arity(args: &[Vec<u8>], n: usize) -> Result<(), Reply> {
    if args.len() == n {
        return Ok(());
    }
    let name = String::from_utf8_lossy(&args[0]).to_lowercase();
    Err(Reply::Error(format!(
        "ERR wrong number of arguments for '{name}' command"
    )))
}

fn number<T: std::str::FromStr>(arg: &[u8]) -> Result<T, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::Error("ERR value is not an integer or out of range".into()))
}

/// The replies to one request (a `SUBSCRIBE` of n channels answers n times).
fn answer(
    shared: &Shared,
    id: u64,
    writer: &Writer,
    subscribed: &mut usize,
    args: &[Vec<u8>],
) -> Vec<Reply> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    if *subscribed > 0 && !matches!(name.as_str(), "SUBSCRIBE" | "UNSUBSCRIBE" | "PING") {
        return vec![Reply::Error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            name.to_lowercase()
        ))];
    }
    let mut st = shared.state.lock().unwrap();
    match name.as_str() {
        "SUBSCRIBE" => args[1..]
            .iter()
            .map(|ch| {
                let subs = st.channels.entry(ch.clone()).or_default();
                if !subs.iter().any(|(c, _)| *c == id) {
                    subs.push((id, writer.clone()));
                    *subscribed += 1;
                }
                Reply::Array(vec![
                    Reply::bulk("subscribe"),
                    Reply::bulk(ch.clone()),
                    Reply::Int(*subscribed as i64),
                ])
            })
            .collect(),
        "UNSUBSCRIBE" => args[1..]
            .iter()
            .map(|ch| {
                if let Some(subs) = st.channels.get_mut(ch) {
                    let before = subs.len();
                    subs.retain(|(c, _)| *c != id);
                    *subscribed -= before - subs.len();
                }
                Reply::Array(vec![
                    Reply::bulk("unsubscribe"),
                    Reply::bulk(ch.clone()),
                    Reply::Int(*subscribed as i64),
                ])
            })
            .collect(),
        "PING" if *subscribed > 0 => vec![Reply::Array(vec![Reply::bulk("pong"), Reply::bulk("")])],
        _ => vec![command(shared, &mut st, args).unwrap_or_else(|e| e)],
    }
}

fn command(shared: &Shared, st: &mut State, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let db = &mut st.db;
    Ok(match name.as_str() {
        "PING" => Reply::Status("PONG"),
        "AUTH" | "SELECT" => Reply::Status("OK"),
        "ROLE" => Reply::Array(vec![
            Reply::bulk("master"),
            Reply::Int(0),
            Reply::Array(vec![]),
        ]),
        "WAIT" => {
            arity(args, 3)?;
            Reply::Int(0)
        }
        "GET" => {
            arity(args, 2)?;
            Reply::Bulk(db.get(&args[1])?)
        }
        "SET" => {
            let ttl = match args.len() {
                3 => None,
                5 if args[3].eq_ignore_ascii_case(b"PX") => {
                    Some(Duration::from_millis(number(&args[4])?))
                }
                5 if args[3].eq_ignore_ascii_case(b"EX") => {
                    Some(Duration::from_secs(number(&args[4])?))
                }
                _ => return Err(Reply::Error("ERR syntax error".into())),
            };
            db.set(&args[1], &args[2], ttl);
            Reply::Status("OK")
        }
        "DEL" | "EXISTS" => {
            let del = name == "DEL";
            let n = args[1..]
                .iter()
                .filter(|k| if del { db.del(k) } else { db.exists(k) })
                .count();
            Reply::Int(n as i64)
        }
        "HGET" => {
            arity(args, 3)?;
            Reply::Bulk(db.hget(&args[1], &args[2])?)
        }
        "HSET" => {
            arity(args, 4)?;
            Reply::Int(db.hset(&args[1], &args[2], &args[3])? as i64)
        }
        "HGETALL" => {
            arity(args, 2)?;
            let pairs = db.hgetall(&args[1])?;
            Reply::Array(
                pairs
                    .into_iter()
                    .flat_map(|(f, v)| [Reply::bulk(f), Reply::bulk(v)])
                    .collect(),
            )
        }
        "PEXPIRE" => {
            arity(args, 3)?;
            Reply::Int(db.pexpire(&args[1], number(&args[2])?) as i64)
        }
        "PTTL" => {
            arity(args, 2)?;
            Reply::Int(db.pttl(&args[1]))
        }
        "PUBLISH" => {
            arity(args, 3)?;
            let subs = st.channels.get(&args[1]).cloned().unwrap_or_default();
            let mut msg = Vec::new();
            Reply::Array(vec![
                Reply::bulk("message"),
                Reply::bulk(args[1].clone()),
                Reply::bulk(args[2].clone()),
            ])
            .write(&mut msg);
            let mut n = 0;
            for (_, w) in &subs {
                n += w.lock().unwrap().write_all(&msg).is_ok() as i64;
            }
            Reply::Int(n)
        }
        "SCRIPT" if args.len() == 3 && args[1].eq_ignore_ascii_case(b"LOAD") => {
            // A script with no stand-in loads, as on Redis, but cannot run:
            // its EVALSHA answers NOSCRIPT. (The service loads every script at
            // connect, also those of features a test leaves off.)
            let sha = shared.sources.get(&args[2]);
            Reply::bulk(sha.cloned().unwrap_or_else(|| "0".repeat(40)))
        }
        "EVALSHA" => {
            let sha = String::from_utf8_lossy(args.get(1).map_or(&[][..], |a| a));
            let Some(run) = shared.scripts.get(sha.as_ref()) else {
                return Err(Reply::Error(
                    "NOSCRIPT No matching script. Please use EVAL.".into(),
                ));
            };
            let nkeys: usize = number(args.get(2).map_or(&[][..], |a| a))?;
            if 3 + nkeys > args.len() {
                return Err(Reply::Error(
                    "ERR Number of keys can't be greater than number of args".into(),
                ));
            }
            let (keys, argv) = args[3..].split_at(nkeys);
            run(db, keys, argv)
        }
        _ => Reply::Error(format!(
            "ERR unknown command '{}', with args beginning with: ",
            String::from_utf8_lossy(&args[0])
        )),
    })
}
