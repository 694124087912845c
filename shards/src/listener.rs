//! Binding one listening socket per shard on a shared address (SO_REUSEPORT).
//!
//! glommio's own `TcpListener::bind` listens with a fixed backlog of 1024; a
//! connect storm of 10K sockets overflows that, so the sockets are built here
//! with socket2 and handed to each shard as a raw fd.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` listeners that share one address through SO_REUSEPORT.
///
/// With port 0 the first bind picks a free port and the others join it, so
/// tests can ask for `127.0.0.1:0` and still get one port for all shards.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false).ok();
        }
        socket.bind(&addr.into())?;
        // The kernel caps this at net.core.somaxconn; tuning/ raises that.
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        let listener: TcpListener = socket.into();
        if addr.port() == 0 {
            addr = listener.local_addr()?;
        }
        out.push(listener);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_all_listeners_one_port() {
        let ls = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        let ports: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
    }

    #[test]
    fn a_port_held_without_reuseport_is_refused() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_reuseport(plain.local_addr().unwrap(), 1, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
