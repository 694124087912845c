//! Fixtures for end-to-end tests: a real `redis-server` on a free port, a real
//! `shardcast` process on `127.0.0.1:0`, and a raw WebSocket client that can
//! send any bytes (well-formed or not).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
pub use shardcast_kit::process::*;
pub use shardcast_kit::redis::*;

pub mod blackhole;
pub mod mem;
pub mod node;

/// The session id of a welcome frame.
pub fn session_id(welcome: &Value) -> String {
    welcome["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without a session_id: {welcome}"))
        .to_string()
}

/// Opens sockets until `/status` shows at least one on every shard; the
/// kernel picks the shard, so this is how a test covers them all.
pub fn sockets_on_every_shard(server: &Server, shards: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for opened in 1..=64u64 {
        clients.push(server.connect("").0);
        let per_shard = wait_for(
            "/status to see every socket",
            Duration::from_secs(10),
            || {
                let (_, body) = server.get("/status");
                let v: Value = serde_json::from_str(&body).ok()?;
                (v["connections"] == opened).then(|| v["connections_per_shard"].clone())
            },
        );
        let per_shard = per_shard
            .as_array()
            .expect("connections_per_shard is an array")
            .clone();
        assert_eq!(per_shard.len(), shards);
        if per_shard.iter().all(|n| n.as_u64() > Some(0)) {
            return clients;
        }
    }
    panic!("64 sockets never reached every shard");
}

/// True once the server has closed `s` (EOF or reset); false while it is
/// open. Never blocks, so it can sit inside a `wait_for` poll.
pub fn server_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// The server API key every test server has unless told otherwise, and
/// that [`http`] sends.
pub const TEST_API_KEY: &str = "test-api-key-0123456789";

/// A JSON Web Token: `claims` signed with HMAC-SHA256 and `secret`, its
/// header naming `alg` (a test may lie there).
pub fn jwt(alg: &str, claims: &str, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let p = URL_SAFE_NO_PAD.encode(claims);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Builder for a `shardcast` process.
pub struct ServerBuilder {
    args: Vec<String>,
    /// Environment variables set for the process alone.
    envs: Vec<(String, String)>,
    /// Whether the builder's Redis runs, so the server can become ready.
    redis_live: bool,
    /// Whether to give it [`TEST_API_KEY`].
    api_key: bool,
}

impl ServerBuilder {
    pub fn arg(mut self, k: &str, v: &str) -> Self {
        self.args.push(k.into());
        self.args.push(v.into());
        self
    }

    /// Sync durability and no rate limit: a server for [`counter`]s, whose
    /// every acknowledged count must be in Redis, counting as fast as it
    /// answers.
    /// Does not wait for `/readyz` to say ready, even with a live Redis:
    /// for a server whose first connection is the test's own.
    pub fn unready(mut self) -> Self {
        self.redis_live = false;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn for_counters(self) -> Self {
        self.arg("--durability", "sync").arg("--rate-limit", "0")
    }

    pub fn shards(self, n: usize) -> Self {
        self.arg("--shards", &n.to_string())
    }

    /// No API key: the service port serves no server API.
    pub fn without_api_key(mut self) -> Self {
        self.api_key = false;
        self
    }

    pub fn start(self) -> Server {
        let given = |flag: &str| self.args.iter().any(|a| a == flag);
        let mut defaults = vec!["--pin", "false", "--log-level", "info"];
        // A second server on a first one's port (SO_REUSEPORT) names it.
        if !given("--listen") {
            defaults.extend(["--listen", "127.0.0.1:0"]);
        }
        if !given("--admin-listen") {
            defaults.extend(["--admin-listen", "127.0.0.1:0"]);
        }
        if self.api_key && !given("--api-key") {
            defaults.extend(["--api-key", TEST_API_KEY]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(defaults)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shardcast");
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = wait_for(
            "the server's listening line",
            Duration::from_secs(20),
            || {
                logs.lock().unwrap().iter().find_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    (v["msg"] == "listening")
                        .then(|| v["listen"].as_str().unwrap().parse().unwrap())
                })
            },
        );
        let server = Server {
            addr,
            child: Some(child),
            logs,
        };
        // "listening" comes once the shards serve, at most a second after
        // Redis was asked for; on a loaded machine Redis may not have
        // answered by then. A test with a live Redis starts from a ready
        // server.
        if self.redis_live {
            server.wait_ready_state("ready", Duration::from_secs(20));
        }
        server
    }
}

/// A running `shardcast` process.
pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn builder(redis: &Redis) -> ServerBuilder {
        Self::builder_url(&redis.url(), redis.is_running())
    }

    /// A server given `url` as its Redis (e.g. with a user and password in
    /// it); `live` says whether it can become ready.
    pub fn builder_url(url: &str, live: bool) -> ServerBuilder {
        ServerBuilder {
            args: vec!["--redis-url".into(), url.into()],
            redis_live: live,
            api_key: true,
            envs: Vec::new(),
        }
    }

    /// A server that finds its Redis master through `sentinels`;
    /// `master_live` says whether it can become ready.
    pub fn builder_sentinels(sentinels: &[String], name: &str, master_live: bool) -> ServerBuilder {
        ServerBuilder {
            args: vec![
                "--redis-sentinels".into(),
                sentinels.join(","),
                "--redis-master-name".into(),
                name.into(),
            ],
            redis_live: master_live,
            api_key: true,
            envs: Vec::new(),
        }
    }

    /// A server on the Redis Cluster `cluster`.
    pub fn builder_cluster(cluster: &RedisCluster) -> ServerBuilder {
        Self::builder_seeds(&cluster.seeds(), true)
    }

    /// A server given `seeds` as its cluster; `live` says whether they are
    /// one, so it can become ready.
    pub fn builder_seeds(seeds: &str, live: bool) -> ServerBuilder {
        ServerBuilder {
            args: vec!["--redis-cluster".into(), seeds.into()],
            redis_live: live,
            api_key: true,
            envs: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Log lines so far, parsed.
    pub fn log_lines(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to 20 s) for the first log line whose `msg` is `msg`.
    pub fn wait_log(&self, msg: &str) -> Value {
        wait_for(
            &format!("the log line {msg:?}"),
            Duration::from_secs(20),
            || self.log_lines().into_iter().find(|l| l["msg"] == msg),
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, "")
    }

    /// The admin listener's address, from its start-up line.
    pub fn admin(&self) -> SocketAddr {
        self.wait_log("admin listening")["admin"]
            .as_str()
            .expect("the admin line names its address")
            .parse()
            .expect("the admin address parses")
    }

    pub fn connect(&self, query: &str) -> (Client, Value) {
        Client::connect(self.addr, query)
    }

    /// Waits for `/readyz` to answer with this status word.
    pub fn wait_ready_state(&self, want: &str, limit: Duration) {
        wait_for(&format!("/readyz to say {want}"), limit, || {
            let (_, body) = self.get("/readyz");
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["status"] == want).then_some(())
        });
    }

    /// A metric's value from `/metrics` on the admin listener (which needs
    /// no key, whatever keys the server has).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = http(self.admin(), "GET", "/metrics", "");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {series} missing"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request with [`TEST_API_KEY`]; returns status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(
        addr,
        method,
        path,
        &format!("X-API-Key: {TEST_API_KEY}\r\n"),
        body,
    )
}

/// One HTTP/1.1 request with `headers` (whole lines, each ending in CRLF)
/// and no key unless they carry one; returns status and body.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    try_http_with(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http`] to a server that may be gone: Err instead of a panic.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    try_http_with(
        addr,
        method,
        path,
        &format!("X-API-Key: {TEST_API_KEY}\r\n"),
        body,
    )
}

fn try_http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    Ok(raw_response(&mut s))
}

/// GET over HTTP/1.0, for servers that keep HTTP/1.1 connections open and
/// chunk large answers (Prometheus): the answer is never chunked and the
/// connection closes after it.
pub fn get10(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    raw_response(&mut s)
}

/// Reads a response until the server closes; returns status and body.
pub fn raw_response(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The last text frame before a Close, parsed: a socket's goodbye.
pub fn goodbye(frames: &[Frame]) -> Value {
    frames
        .iter()
        .rev()
        .find(|f| f.opcode == 1)
        .unwrap_or_else(|| panic!("no goodbye before the Close: {frames:?}"))
        .json()
}

/// Whether `CLIENT LIST` output shows a connection of `user` that last ran
/// `cmd` (an ACL user's subscription, say).
pub fn client_list_has(list: &str, user: &str, cmd: &str) -> bool {
    list.lines()
        .any(|l| l.contains(&format!(" user={user} ")) && l.contains(&format!(" cmd={cmd} ")))
}

/// A frame the server sent; a compressed one (permessage-deflate, RSV1)
/// comes inflated, and says it was.
#[derive(Debug, Clone)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
    pub compressed: bool,
    /// The payload's length on the wire (compressed, when it was).
    pub wire: usize,
}

impl Frame {
    pub fn json(&self) -> Value {
        assert_eq!(
            self.opcode, 1,
            "expected a text frame, got opcode {} {:?}",
            self.opcode, self.payload
        );
        serde_json::from_slice(&self.payload).unwrap()
    }

    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// `POST /api/broadcast` with `body`; asserts the 202 and returns its JSON.
pub fn publish(server: &Server, body: Value) -> Value {
    publish_at(server.addr, body)
}

/// [`publish`] to an address, for threads that hold no `Server`.
pub fn publish_at(addr: SocketAddr, body: Value) -> Value {
    let (status, answer) = http(addr, "POST", "/api/broadcast", &body.to_string());
    assert_eq!(status, 202, "broadcast {body}: {answer}");
    serde_json::from_str(&answer).unwrap()
}

/// The next broadcast frame's JSON a socket receives (heartbeats skipped).
pub fn next_broadcast_frame(c: &mut Client) -> Value {
    next_broadcast_raw(c).json()
}

/// The next broadcast frame a socket receives, as it came (heartbeats
/// skipped).
pub fn next_broadcast_raw(c: &mut Client) -> Frame {
    loop {
        let f = c.recv();
        let v = f.json();
        if v.get("ts").is_some() {
            continue;
        }
        assert!(v["broadcast"].is_string(), "expected a broadcast, got {v}");
        return f;
    }
}

/// The next broadcast text a socket receives (heartbeats skipped).
pub fn next_broadcast(c: &mut Client) -> String {
    next_broadcast_frame(c)["broadcast"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A broadcast offset (`ms-seq`), made comparable.
pub fn offset_of(v: &Value) -> (u64, u64) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("an offset must be a string: {v}"));
    let (ms, seq) = s.split_once('-').expect("ms-seq");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// A welcome with its history offset and position checked (a well-formed
/// `ms-seq`, a token that decodes) and taken out: what is left is
/// PROTOCOL.md's welcome.
pub fn contract_welcome(w: &Value) -> Value {
    let mut w = w.clone();
    let offset = w.as_object_mut().and_then(|o| o.remove("offset"));
    let offset = offset.unwrap_or_else(|| panic!("a welcome carries an offset: {w}"));
    offset_of(&offset);
    let position = w.as_object_mut().and_then(|o| o.remove("position"));
    let position = position.unwrap_or_else(|| panic!("a welcome carries a position: {w}"));
    position_of(&position);
    w
}

/// A position token's pieces, as `(room, epoch, offset)`: room `""` for
/// the global channel, epoch `""` for a channel that had no stream.
pub fn position_of(v: &Value) -> Vec<(String, String, (u64, u64))> {
    use base64::Engine as _;
    let token = v
        .as_str()
        .unwrap_or_else(|| panic!("a position must be a string: {v}"));
    let b64 = token.strip_prefix("1.").expect("a version 1 token");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .expect("base64url");
    let list: Vec<[String; 3]> = serde_json::from_slice(&json).expect("a list of pieces");
    list.into_iter()
        .map(|[r, e, o]| {
            let offset = offset_of(&Value::String(o));
            (r, e, offset)
        })
        .collect()
}

/// A position's offset on one channel (`""`: the global one), if it names it.
pub fn piece_offset(position: &Value, room: &str) -> Option<(u64, u64)> {
    position_of(position)
        .into_iter()
        .find(|(r, _, _)| r == room)
        .map(|(_, _, o)| o)
}

/// What a [`follow`]er saw: where its first welcome put it on each channel
/// (the global one, then its room), every broadcast in the order received
/// with whether it was its room's (and its text, in `texts`), every
/// `unrecovered` frame (whether for its room, the reason, and how many
/// broadcasts came before it), and how often it came back.
#[derive(Debug)]
pub struct Followed {
    pub first: [(u64, u64); 2],
    pub got: Vec<(bool, (u64, u64))>,
    pub texts: Vec<String>,
    pub told: Vec<(bool, String, usize)>,
    pub reconnects: usize,
}

/// A client on its own thread that follows broadcasts until it has had one
/// whose text is `end` on each of its channels (channels are not ordered
/// against each other, so one end could overtake another channel's last
/// broadcasts): when the server closes it (a drain) or after every
/// `drop_every` broadcasts, it comes back with its session and its newest
/// `position`, on the next of `addrs`, retrying refused or failed connects
/// for up to 20 s. Every welcome after the first must say `recovered: true`.
pub fn follow(
    addrs: Vec<SocketAddr>,
    room: Option<String>,
    drop_every: Option<usize>,
) -> std::thread::JoinHandle<Followed> {
    let base = room
        .as_ref()
        .map_or(String::new(), |r| format!("room={r}&"));
    let (mut c, w) = Client::connect(addrs[0], base.trim_end_matches('&'));
    let ends = 1 + usize::from(room.is_some());
    let room_name = room.unwrap_or_default();
    let first = [
        piece_offset(&w["position"], "").unwrap_or_default(),
        piece_offset(&w["position"], &room_name).unwrap_or_default(),
    ];
    let id = session_id(&w);
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut texts = Vec::new();
        let mut told = Vec::new();
        let mut last = w["position"].as_str().unwrap().to_string();
        let mut reconnects = 0;
        let mut since_drop = 0;
        let mut ended = 0;
        loop {
            let gone = match c.try_recv() {
                None => true,
                Some(f) if f.opcode == 8 => true,
                Some(f) if f.opcode != 1 => false,
                Some(f) => {
                    let v = f.json();
                    if let Some(text) = v["broadcast"].as_str() {
                        got.push((v.get("room").is_some(), offset_of(&v["offset"])));
                        texts.push(text.to_string());
                        last = v["position"].as_str().unwrap().to_string();
                        ended += usize::from(text == "end");
                        if ended == ends {
                            return Followed {
                                first,
                                got,
                                texts,
                                told,
                                reconnects,
                            };
                        }
                        since_drop += 1;
                    } else if let Some(u) = v.get("unrecovered") {
                        let reason = u["reason"].as_str().unwrap_or_default().to_string();
                        told.push((u.get("room").is_some(), reason, got.len()));
                    }
                    // A drain's goodbye: the Close follows; come back now.
                    v.get("bye").is_some() || drop_every.is_some_and(|n| since_drop >= n)
                }
            };
            if !gone {
                continue;
            }
            drop(c);
            since_drop = 0;
            reconnects += 1;
            let query = format!("{base}session_id={id}&position={last}");
            c = wait_for(
                "a reconnect with a position",
                Duration::from_secs(20),
                || {
                    let addr = addrs[reconnects % addrs.len()];
                    let mut c = Client::try_connect(addr, &query).ok()?;
                    let w = c.try_recv()?.json();
                    assert_eq!(w["recovered"], true, "{w}");
                    Some(c)
                },
            );
        }
    })
}

/// Checks that each follower got, on each of its channels, every broadcast
/// of `published` (offset, and whether it went to a room) after where its
/// first welcome put it, in the channel's order, none twice, and was never
/// told one is gone; returns how many deliveries that checked.
pub fn check_followed(published: &[((u64, u64), bool)], followed: &[(bool, Followed)]) -> usize {
    let mut checked = 0;
    for (i, (in_room, f)) in followed.iter().enumerate() {
        assert!(f.told.is_empty(), "follower {i} was told {:?}", f.told);
        for (room, from) in [(false, f.first[0]), (true, f.first[1])] {
            if room && !in_room {
                assert!(
                    !f.got.iter().any(|(r, _)| *r),
                    "follower {i} got a room's broadcast"
                );
                continue;
            }
            let want: Vec<(u64, u64)> = published
                .iter()
                .filter(|(_, r)| *r == room)
                .map(|(o, _)| *o)
                .collect();
            checked += check_channel(i, room, f, from, &want, |_| false);
        }
    }
    checked
}

/// Checks one channel of a follower (`room`: its room, else the global
/// one) against `published`, the offsets accepted on it: in order, none
/// twice, every one after `from` delivered, except those inside a window
/// the follower was told of (an `unrecovered` frame between the broadcasts
/// around them); a broadcast not in `published` must be one `maybe`
/// allows by its text (published with an outcome unknown). Returns how
/// many deliveries that checked.
pub fn check_channel(
    i: usize,
    room: bool,
    f: &Followed,
    from: (u64, u64),
    published: &[(u64, u64)],
    maybe: impl Fn(&str) -> bool,
) -> usize {
    let mut want: Vec<(u64, u64)> = published.iter().copied().filter(|o| *o > from).collect();
    want.sort();
    let mut got = Vec::new();
    // Told windows, as (after, before) offsets: a broadcast strictly
    // between them may be missing.
    let mut windows = Vec::new();
    let mut told = f.told.iter().filter(|t| t.0 == room).peekable();
    let mut prev = from;
    for (k, ((r, o), text)) in f.got.iter().zip(&f.texts).enumerate() {
        if *r != room {
            continue;
        }
        while told.next_if(|t| t.2 <= k).is_some() {
            windows.push((prev, *o));
        }
        if want.binary_search(o).is_err() && !maybe(text) {
            panic!("follower {i}: got {o:?} ({text}), which was never published there");
        }
        got.push(*o);
        prev = *o;
    }
    if told.peek().is_some() {
        windows.push((prev, (u64::MAX, u64::MAX)));
    }
    let repeated: Vec<_> = got.windows(2).filter(|w| w[0] >= w[1]).collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|o| got.binary_search(o).is_err())
        .filter(|o| !windows.iter().any(|(a, b)| a < *o && *o < b))
        .collect();
    if !repeated.is_empty() || !missing.is_empty() {
        panic!(
            "follower {i}, {} channel: out of order or repeated {repeated:?}, missing \
             {missing:?} (from {from:?}, told {:?}, {} reconnects)",
            if room { "room" } else { "global" },
            f.told,
            f.reconnects
        );
    }
    got.len()
}

/// A raw client: masks what it sends, reads frames one by one.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The 101's head, as the server sent it.
    pub head: String,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Client {
    /// Upgrades on `/ws/chat/?{query}` and returns the welcome frame's JSON.
    pub fn connect(addr: SocketAddr, query: &str) -> (Client, Value) {
        let mut c = Self::try_connect(addr, query)
            .unwrap_or_else(|(status, body)| panic!("upgrade refused: {status} {body}"));
        let welcome = c.recv().json();
        (c, welcome)
    }

    /// Upgrades, or returns the refusal's status and body.
    pub fn try_connect(addr: SocketAddr, query: &str) -> Result<Client, (u16, String)> {
        Self::try_connect_with(addr, query, "")
    }

    /// Upgrades with extra header lines (each ending in `\r\n`), or returns
    /// the refusal's status and its whole answer (head and body).
    pub fn try_connect_with(
        addr: SocketAddr,
        query: &str,
        headers: &str,
    ) -> Result<Client, (u16, String)> {
        Self::try_upgrade(TcpStream::connect(addr).unwrap(), query, headers)
    }

    /// Upgrades on a stream the test made itself (small buffers, say), and
    /// leaves the welcome unread.
    pub fn upgrade_on(s: TcpStream, query: &str) -> Client {
        Self::try_upgrade(s, query, "")
            .unwrap_or_else(|(status, body)| panic!("upgrade refused: {status} {body}"))
    }

    fn try_upgrade(mut s: TcpStream, query: &str, headers: &str) -> Result<Client, (u16, String)> {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let req = format!(
            "GET /ws/chat/{q} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{headers}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        if !text.starts_with("HTTP/1.1 101") {
            let status = text
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            return Err((status, text + &String::from_utf8_lossy(&rest)));
        }
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{text}"
        );
        Ok(Client {
            stream: s,
            buf: Vec::new(),
            head: text,
        })
    }

    /// A masked frame with the given first byte (FIN + opcode).
    pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        shardcast_kit::wire::masked(&mut v, first, payload, [0xA1, 0xB2, 0xC3, 0xD4]);
        v
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_raw(&Self::frame(0x81, text.as_bytes()));
    }

    /// Sends a refresh control frame with a new token.
    pub fn send_refresh(&mut self, token: &str) {
        let mut v = Vec::new();
        shardcast_kit::wire::refresh_frame(&mut v, token, [0xA1, 0xB2, 0xC3, 0xD4]);
        self.send_raw(&v);
    }

    /// Sends a control frame holding `command` (`{"join":"lobby"}`, ...).
    pub fn send_command(&mut self, command: &Value) {
        let mut v = Vec::new();
        shardcast_kit::wire::command_frame(&mut v, command, [0xA1, 0xB2, 0xC3, 0xD4]);
        self.send_raw(&v);
    }

    pub fn send_close(&mut self, code: u16) {
        self.send_raw(&Self::frame(0x88, &code.to_be_bytes()));
    }

    /// Sends a text message and returns the count in the reply.
    pub fn count(&mut self, text: &str) -> u64 {
        self.send_text(text);
        let v = self.recv_skipping_heartbeats().json();
        v["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected a count, got {v}"))
    }

    /// The next frame; panics on timeout or EOF.
    pub fn recv(&mut self) -> Frame {
        self.try_recv()
            .expect("connection closed before a frame arrived")
    }

    /// The next frame that is not a heartbeat or broadcast.
    pub fn recv_skipping_heartbeats(&mut self) -> Frame {
        loop {
            let f = self.recv();
            if f.opcode == 1 {
                let v = f.json();
                if v.get("ts").is_some() || v.get("broadcast").is_some() {
                    continue;
                }
            }
            return f;
        }
    }

    /// The next frame, or None on EOF.
    pub fn try_recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, n)) = parse_frame(&self.buf) {
                self.buf.drain(..n);
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until the server's Close; returns the frames before it and its code.
    pub fn until_close(&mut self) -> (Vec<Frame>, Option<u16>) {
        let mut before = Vec::new();
        while let Some(f) = self.try_recv() {
            if f.opcode == 8 {
                return (before, f.close_code());
            }
            before.push(f);
        }
        (before, None)
    }

    /// True when the server closed the TCP connection (EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn parse_frame(b: &[u8]) -> Option<(Frame, usize)> {
    let (f, used) =
        shardcast_kit::wire::raw_frame(b).expect("server frames are unmasked and bounded")?;
    let compressed = f.first & 0x40 != 0;
    let wire = f.payload.len();
    let payload = if compressed {
        inflate(f.payload)
    } else {
        f.payload.to_vec()
    };
    Some((
        Frame {
            opcode: f.first & 0x0F,
            payload,
            compressed,
            wire,
        },
        used,
    ))
}

/// A permessage-deflate message's payload, inflated: raw deflate, with the
/// four bytes of the sync flush its sender left off put back.
pub fn inflate(packed: &[u8]) -> Vec<u8> {
    use miniz_oxide::inflate::stream::{inflate, InflateState};
    use miniz_oxide::{DataFormat, MZFlush};
    let mut state = InflateState::new_boxed(DataFormat::Raw);
    let input = [packed, &[0x00, 0x00, 0xff, 0xff]].concat();
    let mut out = vec![0u8; 64 << 10];
    let mut got = Vec::new();
    let mut rest = &input[..];
    loop {
        let r = inflate(&mut state, rest, &mut out, MZFlush::None);
        got.extend_from_slice(&out[..r.bytes_written]);
        rest = &rest[r.bytes_consumed..];
        assert!(
            r.status.is_ok() || (r.bytes_consumed == 0 && r.bytes_written == 0),
            "a compressed frame that does not inflate: {:?}",
            r.status
        );
        if rest.is_empty() || (r.bytes_consumed == 0 && r.bytes_written == 0) {
            return got;
        }
    }
}

/// A permessage-deflate message's payload, as a client sends it.
pub fn deflate(text: &[u8]) -> Vec<u8> {
    let mut packed = miniz_oxide::deflate::compress_to_vec(text, 6);
    // compress_to_vec ends the stream (a final block); RFC 7692 allows it.
    packed.shrink_to_fit();
    packed
}

/// A client counting in a loop on its own thread, for failover tests. Every
/// count it is answered must be the previous plus one, whether confirmed or
/// not; "not counted" (`redis_unavailable`) is sent again, as a real client
/// would; any other reply, or a close, ends the thread with a panic. It
/// stops once told to. Start the server with [`ServerBuilder::for_counters`].
pub struct Counter {
    pub id: String,
    /// The last count the server answered (confirmed or not).
    pub acked: Arc<AtomicU64>,
    /// The last count the server answered as confirmed.
    pub confirmed: Arc<AtomicU64>,
    /// Messages answered "not counted".
    pub errors: Arc<AtomicU64>,
    /// When each "counted, not confirmed" answer came.
    pub unconfirmed: Arc<Mutex<Vec<Instant>>>,
    /// The longest wait for a reply, in milliseconds.
    pub slowest_ms: Arc<AtomicU64>,
    pub handle: thread::JoinHandle<()>,
}

pub fn counter(server: &Server, stop: Arc<AtomicBool>) -> Counter {
    counter_paced(server, stop, Duration::ZERO)
}

/// A [`counter`] that sends at most one message per `pace`.
pub fn counter_paced(server: &Server, stop: Arc<AtomicBool>, pace: Duration) -> Counter {
    let (mut c, welcome) = server.connect("");
    // Long enough to see how slow a slow reply is, not just that it was.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let id = session_id(&welcome);
    let acked = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let unconfirmed = Arc::new(Mutex::new(Vec::new()));
    let handle = thread::spawn({
        let (acked, confirmed) = (acked.clone(), confirmed.clone());
        let (errors, unconfirmed) = (errors.clone(), unconfirmed.clone());
        let slowest_ms = slowest_ms.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                c.send_text("tick");
                let v = c.recv_skipping_heartbeats().json();
                slowest_ms.fetch_max(sent.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Some(n) = v["count"].as_u64() {
                    let last = acked.load(Ordering::Relaxed);
                    assert_eq!(n, last + 1, "count after {last} was {n}: a gap or a repeat");
                    acked.store(n, Ordering::Relaxed);
                    match v.get("confirmed") {
                        None => confirmed.store(n, Ordering::Relaxed),
                        Some(Value::Bool(false)) => {
                            unconfirmed.lock().unwrap().push(Instant::now())
                        }
                        Some(other) => panic!("confirmed is {other} in {v}"),
                    }
                } else {
                    assert_eq!(v["error"], "redis_unavailable", "unexpected reply {v}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    // Redis is away: the client backs off, as a real one would.
                    thread::sleep(Duration::from_millis(20));
                }
                if let Some(rest) = pace.checked_sub(sent.elapsed()) {
                    thread::sleep(rest);
                }
            }
        }
    });
    Counter {
        id,
        acked,
        confirmed,
        errors,
        unconfirmed,
        slowest_ms,
        handle,
    }
}

/// Held by the tests of one file that each run a Redis Cluster or hundreds
/// of clients: two of them at once on two CPUs starve each other's timers
/// (a failover's replies, a moved slot's subscription) past their bounds.
/// A test that panics poisons it; the next takes it all the same.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a failover test's counters were told, once checked against Redis.
pub struct Tally {
    /// Counts answered, all clients.
    pub told: u64,
    /// Messages answered "not counted".
    pub refused: u64,
    /// When each "counted, not confirmed" answer came, sorted.
    pub unconfirmed: Vec<Instant>,
    /// The longest any client waited for a reply.
    pub slowest: Duration,
}

/// Stops nothing: call once the counters were told to stop. Joins them (a
/// panic there is a gap, a repeat, a reply of no known kind, or a closed
/// socket) and holds every answer to the truth, with `stored` reading a
/// session's count where Redis has it now: each session ends with exactly
/// the count its client was last told, so no confirmed count was lost and
/// no message answered "not counted" was counted. A count answered as not
/// confirmed may reach Redis after its socket closes (the shard writes it
/// again until it is confirmed): the check waits for it.
pub fn tally(
    counters: Vec<Counter>,
    stored: impl Fn(&str) -> Option<u64>,
    why_not: impl Fn() -> String,
) -> Tally {
    let mut t = Tally {
        told: 0,
        refused: 0,
        unconfirmed: Vec::new(),
        slowest: Duration::ZERO,
    };
    for c in counters {
        if c.handle.join().is_err() {
            panic!(
                "a counter saw a gap, a repeat, an unknown reply or a close; {}",
                why_not()
            );
        }
        let acked = c.acked.load(Ordering::Relaxed);
        let confirmed = c.confirmed.load(Ordering::Relaxed);
        let now = stored(&c.id).unwrap_or(0);
        assert!(
            now >= confirmed,
            "session {}: Redis has {now}, the client was confirmed {confirmed}",
            c.id
        );
        wait_for(
            &format!("session {} to hold {acked} (it has {now})", c.id),
            Duration::from_secs(15),
            || (stored(&c.id) == Some(acked)).then_some(()),
        );
        t.told += acked;
        t.refused += c.errors.load(Ordering::Relaxed);
        t.unconfirmed.extend(c.unconfirmed.lock().unwrap().iter());
        let slowest = Duration::from_millis(c.slowest_ms.load(Ordering::Relaxed));
        t.slowest = t.slowest.max(slowest);
    }
    t.unconfirmed.sort();
    t
}

/// The highest count any of the counters was answered so far.
pub fn most_acked(counters: &[Counter]) -> u64 {
    counters
        .iter()
        .map(|c| c.acked.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}

/// Waits until every counter was confirmed at least `at_least`; on a
/// timeout, says what `why_not` finds.
pub fn wait_confirmed(
    counters: &[Counter],
    at_least: u64,
    what: &str,
    why_not: impl Fn() -> String,
) {
    wait_every(counters, |c| &c.confirmed, at_least, what, why_not);
}

/// Waits until `which` of every counter is at least `at_least` (for at
/// most 60 s); on a timeout, says what `why_not` finds.
fn wait_every(
    counters: &[Counter],
    which: impl Fn(&Counter) -> &AtomicU64,
    at_least: u64,
    what: &str,
    why_not: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !counters
        .iter()
        .all(|c| which(c).load(Ordering::Relaxed) >= at_least)
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {}",
            why_not()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A server's log lines at warn and above, and its socket closes, for a
/// failure's message.
pub fn warnings(server: &Server) -> String {
    let lines: Vec<String> = server
        .log_lines()
        .iter()
        .filter(|l| l["level"] == "warn" || l["level"] == "error" || l["msg"] == "ws close")
        .map(|l| l.to_string())
        .collect();
    format!("the server's warnings and closes: {lines:#?}")
}

/// Waits until every counter was answered at least `at_least`.
pub fn wait_counts(counters: &[Counter], at_least: u64, what: &str, why_not: impl Fn() -> String) {
    wait_every(counters, |c| &c.acked, at_least, what, why_not);
}

/// The local TCP ports of a process's sockets (IPv4 and IPv6), read from
/// /proc: its fds' socket inodes matched in the kernel's TCP tables.
pub fn tcp_ports_of(pid: u32) -> std::collections::HashSet<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(cols[9]) {
                let port = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}
