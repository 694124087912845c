//! `scale` against a small in-test cluster: three nodes sharing one session
//! map and one subscriber list, as Redis would make them. An honest cluster
//! passes every assertion; a cluster with one flaw fails the assertion that
//! names it. The kill phase needs real processes and is left to real runs.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Every global broadcast reaches each socket twice.
    DuplicateFanout,
    /// A room broadcast reaches every socket.
    RoomToAll,
    /// A resumed session comes back one count short.
    ResumeLoses,
}

struct Sub {
    id: u64,
    room: String,
    out: mpsc::Sender<Message>,
}

struct Cluster {
    flaw: Flaw,
    sessions: Mutex<HashMap<String, u64>>,
    subs: Mutex<Vec<Sub>>,
    ids: AtomicU64,
}

/// Starts three nodes and returns their addresses.
fn cluster(flaw: Flaw) -> Vec<SocketAddr> {
    let c = Arc::new(Cluster {
        flaw,
        sessions: Mutex::new(HashMap::new()),
        subs: Mutex::new(Vec::new()),
        ids: AtomicU64::new(1),
    });
    (0..3)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let c = c.clone();
            thread::spawn(move || {
                for s in l.incoming().map_while(Result::ok) {
                    let c = c.clone();
                    thread::spawn(move || {
                        let _ = serve(&c, s);
                    });
                }
            });
            addr
        })
        .collect()
}

/// An HTTP request: its target, its headers (names lowercased) and its body.
struct Request {
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one HTTP request head (and its body, if it announces one).
fn read_request(s: &mut TcpStream) -> io::Result<Request> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(b[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Request {
        target,
        headers,
        body,
    })
}

fn serve(c: &Cluster, mut s: TcpStream) -> io::Result<()> {
    let Request {
        target,
        headers,
        body,
    } = read_request(&mut s)?;
    if target == "/api/broadcast" {
        return broadcast(c, s, &body);
    }
    let key = headers
        .iter()
        .find(|(k, _)| k == "sec-websocket-key")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let query: HashMap<&str, &str> = target
        .split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
        .unwrap_or_default();
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    )?;
    let known = query
        .get("session_id")
        .and_then(|id| Some((id.to_string(), *c.sessions.lock().unwrap().get(*id)?)));
    let (session, mut count, resumed) = match known {
        Some((id, n)) if c.flaw == Flaw::ResumeLoses => (id, n.saturating_sub(1), true),
        Some((id, n)) => (id, n, true),
        None => {
            let n = c.ids.fetch_add(1, Ordering::Relaxed);
            (format!("00000000-0000-4000-8000-{n:012x}"), 0, false)
        }
    };
    c.sessions.lock().unwrap().insert(session.clone(), count);
    // One writer per socket, so replies and broadcasts never interleave
    // mid-frame; it ends when the socket's last sender is gone.
    let (tx, rx) = mpsc::channel::<Message>();
    let mut w = WebSocket::from_raw_socket(s.try_clone()?, Role::Server, None);
    thread::spawn(move || {
        for m in rx {
            if w.send(m).is_err() {
                break;
            }
        }
        let _ = w.get_mut().shutdown(Shutdown::Write);
    });
    let text = |v: Value| Message::text(v.to_string());
    let _ = tx.send(text(
        json!({"session_id": session, "count": count, "resumed": resumed}),
    ));
    let id = c.ids.fetch_add(1, Ordering::Relaxed);
    c.subs.lock().unwrap().push(Sub {
        id,
        room: query.get("room").unwrap_or(&"").to_string(),
        out: tx.clone(),
    });
    let mut r = WebSocket::from_raw_socket(s, Role::Server, None);
    loop {
        match r.read() {
            Ok(Message::Text(_)) => {
                count += 1;
                c.sessions.lock().unwrap().insert(session.clone(), count);
                let _ = tx.send(text(json!({ "count": count })));
            }
            Ok(Message::Close(echo)) => {
                let _ = tx.send(text(json!({"bye": true, "total": count})));
                let _ = tx.send(Message::Close(echo));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    c.subs.lock().unwrap().retain(|s| s.id != id);
    Ok(())
}

fn broadcast(c: &Cluster, mut s: TcpStream, body: &[u8]) -> io::Result<()> {
    let b: Value = serde_json::from_slice(body).unwrap_or_default();
    let message = b["message"].as_str().unwrap_or("").to_string();
    let room = b["room"].as_str().map(str::to_string);
    let f = Message::text(json!({ "broadcast": message }).to_string());
    let copies = if room.is_none() && c.flaw == Flaw::DuplicateFanout {
        2
    } else {
        1
    };
    let mut n = 0;
    for sub in c.subs.lock().unwrap().iter() {
        let member = room.as_ref().is_none_or(|r| *r == sub.room);
        if member || c.flaw == Flaw::RoomToAll {
            n += 1;
            for _ in 0..copies {
                let _ = sub.out.send(f.clone());
            }
        }
    }
    let answer = json!({"status": "accepted", "shards": n}).to_string();
    write!(
        s,
        "HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

/// Runs `scale` against the cluster; returns its exit code and JSON report.
fn scale(nodes: &[SocketAddr]) -> (i32, Value) {
    let dir = std::env::temp_dir().join(format!(
        "shardcast-bench-scale-{}-{}",
        std::process::id(),
        nodes[0].port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast-bench"));
    cmd.arg("scale");
    for n in nodes {
        cmd.args(["--node", &format!("http://{n}")]);
    }
    let out = cmd
        .args([
            "-n",
            "30",
            "--procs",
            "2",
            "--rooms",
            "2",
            "--broadcasts",
            "2",
        ])
        .args(["--no-kill", "--timeout", "5s", "--quiet", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let report: Value = match std::fs::read(&json) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => panic!("no report: {}", String::from_utf8_lossy(&out.stderr)),
    };
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap(), report)
}

fn failing(r: &Value) -> Vec<String> {
    r["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["pass"] == false)
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_honest_cluster_passes_every_assertion() {
    let (code, r) = scale(&cluster(Flaw::None));
    assert_eq!(code, 0, "{r:#}");
    assert!(failing(&r).is_empty(), "{r:#}");
    let p = &r["phases"];
    assert_eq!(p["connect"]["connected"], 30);
    assert_eq!(p["fanout"]["deliveries"], 60);
    // Sockets 0-2, 6-8, ... are in room-0 with 3 nodes and 2 rooms.
    assert_eq!(p["room"]["members"], 15);
    assert_eq!(p["room"]["delivered"], 15);
    assert_eq!(p["resume"]["moved"], 10);
    assert_eq!(p["resume"]["hops"], 30);
    assert_eq!(p["close"]["closed"], 30);
    assert!(p["kill"].is_null());
    assert_eq!(
        (r["procs"].as_u64(), r["ok"].as_bool()),
        (Some(2), Some(true))
    );
}

#[test]
fn duplicated_broadcasts_fail_the_fanout() {
    let (code, r) = scale(&cluster(Flaw::DuplicateFanout));
    assert_eq!(code, 1, "{r:#}");
    // The barrier is a global broadcast too, so it shows up twice as well.
    assert_eq!(
        failing(&r),
        vec!["fanout.duplicates", "room.barrier_duplicates"],
        "{r:#}"
    );
    assert_eq!(r["phases"]["fanout"]["duplicates"], 60);
    assert_eq!(r["phases"]["room"]["barrier_duplicates"], 30);
}

#[test]
fn a_room_broadcast_to_everyone_fails_the_room() {
    let (code, r) = scale(&cluster(Flaw::RoomToAll));
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(failing(&r), vec!["room.strays"], "{r:#}");
    assert_eq!(r["phases"]["room"]["strays"], 15);
}

#[test]
fn a_session_that_loses_a_count_fails_the_resume() {
    let (code, r) = scale(&cluster(Flaw::ResumeLoses));
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["phases"]["resume"]["mismatches"], 10, "{r:#}");
    assert_eq!(r["faults"]["welcome_mismatch"], 10, "{r:#}");
    let f = failing(&r);
    for name in [
        "resume.moved",
        "resume.mismatches",
        "close.goodbyes",
        "faults",
    ] {
        assert!(f.contains(&name.to_string()), "{name}: {f:?}");
    }
}
