//! Hostile clients cannot hurt well-behaved ones: for each attack, witness
//! sockets opened before it (at least one on every shard) keep counting
//! exactly n+1, n+2, ... during and after it, their counts reach Redis, new
//! clients still get served, and each attacker gets the refusal the contract
//! names.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);
const SHARDS: usize = 2;

/// A well-behaved client whose count must never skip, repeat or stall.
struct Witness {
    c: Client,
    id: String,
    n: u64,
}

impl Witness {
    fn step(&mut self) {
        self.n += 1;
        let got = self.c.count(&format!("witness message {}", self.n));
        assert_eq!(got, self.n, "witness {} lost its count", self.id);
    }

    /// Closes cleanly; the goodbye and Redis both hold the exact total.
    fn finish(mut self, redis: &Redis) {
        self.c.send_close(1000);
        let (before, code) = self.c.until_close();
        assert_eq!(code, Some(1000), "witness {}", self.id);
        assert_eq!(
            before.last().map(Frame::json),
            Some(json!({"bye": true, "total": self.n}))
        );
        assert_eq!(redis.session_count(&self.id), Some(self.n));
    }
}

/// Opens witnesses until `/status` shows one on every shard.
fn witnesses(server: &Server) -> Vec<Witness> {
    let mut ws = Vec::new();
    for opened in 1..=64u64 {
        let (c, welcome) = server.connect("");
        let id = welcome["session_id"].as_str().unwrap().to_string();
        ws.push(Witness { c, id, n: 0 });
        let per_shard = wait_for("/status to see every witness", LIMIT, || {
            let (_, body) = server.get("/status");
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["connections"] == opened).then(|| v["connections_per_shard"].clone())
        });
        if per_shard
            .as_array()
            .is_some_and(|a| a.len() == SHARDS && a.iter().all(|n| n.as_u64() > Some(0)))
        {
            return ws;
        }
    }
    panic!("64 witnesses never reached every shard");
}

fn step_all(ws: &mut [Witness]) {
    for w in ws {
        w.step();
    }
}

/// Runs `attack` on its own thread while the witnesses keep counting. The
/// attack calls its checkpoint while the damage is live (bad frames sent,
/// hanging sockets open); the checkpoint returns only after every witness
/// counted once more and a brand-new client was served.
fn under_attack<F>(server: &Server, redis: &Redis, attack: F)
where
    F: FnOnce(SocketAddr, &mut dyn FnMut()) + Send + 'static,
{
    let mut ws = witnesses(server);
    for _ in 0..3 {
        step_all(&mut ws);
    }
    let (at_checkpoint, checkpoints) = mpsc::channel::<()>();
    let (resume, resumed) = mpsc::channel::<()>();
    let addr = server.addr;
    let attacker = std::thread::spawn(move || {
        let mut checkpoint = move || {
            at_checkpoint.send(()).unwrap();
            resumed.recv().unwrap();
        };
        attack(addr, &mut checkpoint);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    loop {
        assert!(Instant::now() < deadline, "the attack did not finish");
        step_all(&mut ws);
        match checkpoints.recv_timeout(Duration::from_millis(1)) {
            Ok(()) => {
                step_all(&mut ws);
                let (mut fresh, welcome) = server.connect("");
                assert_eq!(welcome["resumed"], false);
                assert_eq!(fresh.count("new client during the attack"), 1);
                seen += 1;
                resume.send(()).unwrap();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Err(panic) = attacker.join() {
        std::panic::resume_unwind(panic);
    }
    assert!(seen > 0, "the attack never reached its checkpoint");
    for _ in 0..3 {
        step_all(&mut ws);
    }
    let (mut after, _) = server.connect("");
    assert_eq!(after.count("new client after the attack"), 1);
    assert_eq!(server.get("/healthz").0, 200);
    for w in ws {
        w.finish(redis);
    }
}

/// Reads until the server ends the connection; returns what it sent.
/// Panics if the connection is still open after `LIMIT`.
fn read_until_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the server left the socket open; it sent {out:?}")
            }
            Err(_) => return out,
        }
    }
}

fn raw_socket(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    // Writes to a socket the server stopped reading must not hang the test.
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Upgraded attackers each send their bytes, wait at the checkpoint, then
/// must each get the Close code `want` names for their index.
fn frame_attack(
    addr: SocketAddr,
    checkpoint: &mut dyn FnMut(),
    attackers: usize,
    bytes: impl Fn(usize) -> Vec<u8>,
    want: impl Fn(usize) -> u16,
) {
    let mut clients: Vec<Client> = (0..attackers)
        .map(|i| {
            let (mut c, _) = Client::connect(addr, "");
            let _ = c.stream.write_all(&bytes(i));
            c
        })
        .collect();
    checkpoint();
    for (i, c) in clients.iter_mut().enumerate() {
        let (before, code) = c.until_close();
        assert_eq!(
            code,
            Some(want(i)),
            "attacker {i}: frames before {before:?}"
        );
        assert!(
            before
                .iter()
                .all(|f| f.opcode != 1 || f.json().get("count").is_none()),
            "attacker {i} was counted: {before:?}"
        );
    }
}

#[test]
fn binary_and_invalid_utf8_frames() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(SHARDS).start();
    under_attack(&server, &redis, |addr, checkpoint| {
        frame_attack(
            addr,
            checkpoint,
            40,
            |i| match i % 4 {
                0 => Client::frame(0x82, b"\x00\x01\x02binary"),
                1 => Client::frame(0x81, &[0xff, 0xfe, 0xfd]),
                2 => Client::frame(0x02, &[0u8; 64]),
                _ => {
                    let mut m = Client::frame(0x01, b"fine so far");
                    m.extend(Client::frame(0x80, &[0xED, 0xA0, 0x80]));
                    m
                }
            },
            |i| if i % 2 == 0 { 1003 } else { 1007 },
        );
    });
}

#[test]
fn oversize_and_unmasked_frames() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(SHARDS).start();
    under_attack(&server, &redis, |addr, checkpoint| {
        frame_attack(
            addr,
            checkpoint,
            30,
            |i| match i % 3 {
                // A 1 GiB length: refusable from the header alone, no payload follows.
                0 => {
                    let mut h = vec![0x81, 0x80 | 127];
                    h.extend_from_slice(&(1u64 << 30).to_be_bytes());
                    h.extend_from_slice(&[9, 9, 9, 9]);
                    h
                }
                // A real 100 KiB text message, over the default 64 KiB.
                1 => Client::frame(0x81, &vec![b'x'; 100 << 10]),
                _ => vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
            },
            |i| if i % 3 == 2 { 1002 } else { 1009 },
        );
    });
}

#[test]
fn garbage_instead_of_an_http_head() {
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(SHARDS)
        .arg("--handshake-timeout", "1s")
        .start();
    under_attack(&server, &redis, |addr, checkpoint| {
        // Fixed seeds: a failure names the exact bytes that caused it.
        let mut sockets: Vec<(u64, TcpStream)> = (0..40u64)
            .map(|seed| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut bytes = vec![0u8; rng.random_range(1..8192)];
                rng.fill(&mut bytes[..]);
                let mut s = raw_socket(addr);
                let _ = s.write_all(&bytes);
                (seed, s)
            })
            .collect();
        checkpoint();
        for (seed, s) in &mut sockets {
            let got = read_until_closed(s, &format!("garbage seed {seed}"));
            let status = status_of(&got);
            assert!(
                got.is_empty() || status == 400 || status == 431,
                "seed {seed}: garbage got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    });
}

#[test]
fn garbage_after_a_successful_upgrade() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(SHARDS).start();
    under_attack(&server, &redis, |addr, checkpoint| {
        let mut clients: Vec<(u64, Client)> = (0..20u64)
            .map(|seed| {
                let (mut c, _) = Client::connect(addr, "");
                c.stream.set_write_timeout(Some(LIMIT)).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + seed);
                // Enough that any frame it starts is overrun or invalid.
                let mut bytes = vec![0u8; 256 << 10];
                rng.fill(&mut bytes[..]);
                let _ = c.stream.write_all(&bytes);
                (seed, c)
            })
            .collect();
        checkpoint();
        for (seed, c) in &mut clients {
            // Whatever the bytes parsed as, the server must end the connection.
            read_until_closed(&mut c.stream, &format!("garbage seed {}", 1000 + *seed));
        }
    });
}

#[test]
fn get_without_upgrade() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(SHARDS).start();
    under_attack(&server, &redis, |addr, checkpoint| {
        let heads = [
            "GET /ws/chat/ HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /ws/chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\r\n",
            "GET /ws/chat/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\r\n",
        ];
        let mut sockets: Vec<(usize, TcpStream)> = (0..30)
            .map(|i| {
                let mut s = raw_socket(addr);
                s.write_all(heads[i % heads.len()].as_bytes()).unwrap();
                (i, s)
            })
            .collect();
        checkpoint();
        for (i, s) in &mut sockets {
            let status = status_of(&read_until_closed(s, heads[*i % heads.len()]));
            assert!(
                status == 400 || status == 426,
                "{:?} got {status}",
                heads[*i % heads.len()]
            );
        }
    });
}

#[test]
fn wrong_version_or_missing_key() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(SHARDS).start();
    under_attack(&server, &redis, |addr, checkpoint| {
        let base =
            "GET /ws/chat/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        let cases = [
            (
                format!("{base}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"),
                426,
            ),
            (
                format!("{base}Sec-WebSocket-Version: 99\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"),
                426,
            ),
            (format!("{base}Sec-WebSocket-Version: 13\r\n\r\n"), 400),
            (
                format!("{base}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!\r\n\r\n"),
                400,
            ),
        ];
        let mut sockets: Vec<(usize, TcpStream)> = (0..40)
            .map(|i| {
                let mut s = raw_socket(addr);
                s.write_all(cases[i % cases.len()].0.as_bytes()).unwrap();
                (i, s)
            })
            .collect();
        checkpoint();
        for (i, s) in &mut sockets {
            let (head, want) = &cases[*i % cases.len()];
            assert_eq!(status_of(&read_until_closed(s, head)), *want, "{head:?}");
        }
    });
}

/// The server's resident memory, from its own /metrics.
fn rss_of(addr: SocketAddr) -> f64 {
    let (_, body) = http(addr, "GET", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .expect("process_resident_memory_bytes")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn slowloris_heads_that_never_finish() {
    const SOCKETS: usize = 5_000;
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(SHARDS)
        .arg("--handshake-timeout", "1s")
        .start();
    // A head in progress holds a 1 KiB buffer, its task (the upgrade's and
    // the answers' larger state is boxed, made only once a head is complete)
    // and its timer: about 4.5 KB each (22.7 MB measured for 5,000; 35 MB
    // before that state was boxed). A buffer of max_header_bytes per socket
    // (16 KiB), or the upgrade's state in every task, would break this bound.
    const RSS_BOUND: f64 = 30e6;
    let rss_before = rss_of(server.addr);
    under_attack(&server, &redis, move |addr, checkpoint| {
        let mut sockets: Vec<TcpStream> = (0..SOCKETS)
            .map(|_| {
                let mut s = raw_socket(addr);
                s.write_all(b"GET /ws/chat/ HTTP/1.1\r\nHost: test\r\nUpgrade: webs")
                    .unwrap();
                s
            })
            .collect();
        // All hanging at once: the witnesses and a new client must still be served.
        checkpoint();
        let grown = rss_of(addr) - rss_before;
        eprintln!(
            "RSS grew {:.1} MB for {SOCKETS} half-open heads",
            grown / 1e6
        );
        assert!(
            grown < RSS_BOUND,
            "{SOCKETS} half-open heads took {grown} bytes of RSS"
        );
        // A slowloris keeps trickling; bytes that do not finish the head change nothing.
        for s in &mut sockets {
            let _ = s.write_all(b"o");
        }
        wait_for("the server to drop every slow socket", LIMIT, || {
            sockets.iter_mut().all(server_closed).then_some(())
        });
    });
    let dropped = server.metric("ws_errors_total{kind=\"handshake_timeout\"}");
    assert!(
        dropped >= SOCKETS as f64,
        "only {dropped} handshake timeouts counted"
    );
}

#[test]
fn header_block_of_64_kib() {
    let redis = Redis::start();
    let server = Server::builder(&redis).shards(SHARDS).start();
    under_attack(&server, &redis, |addr, checkpoint| {
        let mut head = b"GET /ws/chat/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n".to_vec();
        for i in 0..16 {
            head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(4096)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut sockets: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut s = raw_socket(addr);
                let _ = s.write_all(&head);
                s
            })
            .collect();
        checkpoint();
        for s in &mut sockets {
            assert_eq!(status_of(&read_until_closed(s, "64 KiB of headers")), 431);
        }
    });
}

#[test]
fn a_flood_past_the_connection_cap_gets_503_and_the_witness_counts_on() {
    const CAP: usize = 20;
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--max-connections", &CAP.to_string())
        .start();
    let (mut witness, _) = server.connect("");
    assert_eq!(witness.count("before"), 1);
    // Fill every slot but the witness's, then knock 50 more times.
    let mut held: Vec<Client> = (1..CAP).map(|_| server.connect("").0).collect();
    let mut refused = 0;
    for _ in 0..50 {
        match Client::try_connect(server.addr, "") {
            Err((503, body)) => {
                assert!(body.contains("connection limit"), "{body}");
                refused += 1;
            }
            Err((status, body)) => panic!("expected 503, got {status} {body}"),
            Ok(_) => panic!("a connection past the cap was accepted"),
        }
        assert_eq!(witness.count("during"), refused as u64 + 1);
    }
    assert_eq!(refused, 50);
    // Freed slots take new clients at once.
    for mut c in held.drain(..5) {
        c.send_close(1000);
        let _ = c.until_close();
    }
    wait_for("a freed slot", LIMIT, || {
        Client::try_connect(server.addr, "").ok()
    });
    assert_eq!(witness.count("after"), 52);
    assert_eq!(
        server.metric("ws_errors_total{kind=\"over_capacity\"}"),
        50.0
    );
    // Logged, but not 50 times: at most one line a second per shard.
    let lines = server
        .log_lines()
        .iter()
        .filter(|l| l["msg"] == "connection limit reached: 503")
        .count();
    assert!(
        (1..=5).contains(&lines),
        "{lines} log lines for 50 refusals"
    );
}

#[test]
fn a_reader_that_never_reads_is_closed_and_nothing_piles_up() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let redis = Redis::start();
    let server = Server::builder(&redis)
        .shards(1)
        .arg("--outbound-queue", "4")
        // The witness counts as fast as it can; the rate limit is not under test.
        .arg("--rate-limit", "0")
        .start();
    let (slow, _) = server.connect("");
    // A small receive window, so the kernel's buffers fill sooner; from here
    // on this socket is never read.
    socket2::SockRef::from(&slow.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let rss_before = rss_of(server.addr);
    let stop = AtomicBool::new(false);
    let addr = server.addr;
    let counted = std::thread::scope(|scope| {
        // The witness keeps counting (and reading every broadcast) throughout.
        let witness = scope.spawn(|| {
            let (mut w, _) = Client::connect(addr, "");
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n = w.count("x");
            }
            n
        });
        let body = serde_json::json!({ "message": "b".repeat(60_000) }).to_string();
        wait_for(
            "the slow reader to be closed",
            Duration::from_secs(40),
            || {
                for _ in 0..10 {
                    assert_eq!(http(addr, "POST", "/api/broadcast", &body).0, 202);
                }
                let m = server.metric("ws_errors_total{kind=\"slow_reader\"}");
                (m >= 1.0).then_some(())
            },
        );
        stop.store(true, Ordering::SeqCst);
        witness.join().unwrap()
    });
    assert!(counted > 0, "the witness counted throughout");
    // The witness's close was sent as its thread ended; it lands shortly.
    wait_for("every socket closed", Duration::from_secs(10), || {
        (server.metric("ws_connections_active") == 0.0).then_some(())
    });
    let grown = rss_of(server.addr) - rss_before;
    assert!(
        grown < 32e6,
        "the server buffered {grown} bytes for one slow reader"
    );
    // The line is read from the server's stderr by another thread: waited
    // for, not looked up once.
    server.wait_log("closing a slow reader: its backlog passed the bound");
    drop(slow);
}
