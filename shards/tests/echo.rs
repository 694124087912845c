//! The runtime with an echo handler: shards start, share one port, obey
//! control messages, and report failures to start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use shards::{Control, RuntimeConfig, ShardContext};

async fn echo_shard(mut ctx: ShardContext) {
    let listener = ctx.listener;
    let accept = async {
        loop {
            let Ok(mut s) = listener.accept().await else {
                continue;
            };
            let id = ctx.id;
            glommio::spawn_local(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // Prefix the shard id so the test sees which shard answered.
                    let mut out = vec![b'0' + id as u8];
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    };
    let control = async {
        while let Some(c) = ctx.control.recv().await {
            if c == Control::Stop {
                break;
            }
        }
    };
    future::or(accept, control).await;
}

fn cfg(shards: usize) -> RuntimeConfig {
    RuntimeConfig {
        shards,
        pin: false,
        ..RuntimeConfig::default()
    }
}

#[test]
fn shards_share_one_port_and_stop_on_command() {
    let rt = shards::start(&cfg(2), echo_shard).expect("runtime starts");
    assert_eq!(rt.shards(), 2);
    let addr = rt.local_addr();
    assert_ne!(addr.port(), 0);

    let mut seen = [0usize; 2];
    for i in 0..200u32 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len() + 1];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[1..], msg.as_bytes());
        seen[(buf[0] - b'0') as usize] += 1;
    }
    // The kernel spreads accepts over both listeners; both must have served.
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "one shard served nothing: {seen:?}"
    );

    rt.broadcast(Control::Stop);
    assert!(
        rt.wait_exited(Duration::from_secs(5)),
        "shards did not exit on Stop"
    );
    for r in rt.join() {
        r.expect("shard thread ended cleanly");
    }
}

#[test]
fn a_shard_that_cannot_start_fails_start() {
    // An io_memory far beyond the memlock limit makes the executor fail while
    // building, which glommio only reports at join(); start must catch it.
    let bad = RuntimeConfig {
        io_memory: 64 << 30,
        ..cfg(1)
    };
    let err = match shards::start(&bad, echo_shard) {
        Ok(_) => panic!("start succeeded with an impossible io_memory"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("did not start"), "{err}");
}
