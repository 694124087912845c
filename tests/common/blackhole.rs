//! A TCP proxy in front of a real Redis that can make its pub/sub
//! connections die without a word: once `silence` is called, what Redis
//! sends on a connection that subscribed is read and dropped, and the
//! connection stays open. What a half-dead link, a stuck middlebox or a
//! lost route does to a subscription, with no RST and no FIN.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

pub struct Blackhole {
    pub addr: SocketAddr,
    silent: Arc<AtomicBool>,
    /// Connections seen subscribing.
    subscribers: Arc<AtomicUsize>,
}

impl Blackhole {
    /// Proxies 127.0.0.1:0 to `upstream` until the test process ends.
    pub fn start(upstream: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let subscribers = Arc::new(AtomicUsize::new(0));
        let (s, n) = (silent.clone(), subscribers.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let subscribed = Arc::new(AtomicBool::new(false));
                let (sub, n) = (subscribed.clone(), n.clone());
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    move |chunk| {
                        let up = String::from_utf8_lossy(chunk).to_ascii_uppercase();
                        if up.contains("SUBSCRIBE") && !sub.swap(true, Ordering::Relaxed) {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    },
                );
                let s = s.clone();
                pump(server, client, move |_| {
                    !(s.load(Ordering::Relaxed) && subscribed.load(Ordering::Relaxed))
                });
            }
        });
        Blackhole {
            addr,
            silent,
            subscribers,
        }
    }

    /// From now on, what Redis sends on connections that subscribed is
    /// dropped (theirs and those that subscribe later).
    pub fn silence(&self) {
        self.silent.store(true, Ordering::Relaxed);
    }

    /// How many connections have subscribed so far.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

/// Copies `from` to `to` on a thread of its own, each chunk only if `pass`
/// says so (else it is dropped), until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, pass: impl FnMut(&[u8]) -> bool + Send + 'static) {
    let mut pass = pass;
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if pass(&buf[..n]) && to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
