//! The bytes of one Redis connection: plain TCP or TLS over it, and the
//! process's one TLS client, which every shard's connections share.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use super::wire::REPLY_TIMEOUT;
use super::{RedisAddr, RedisError};

/// Why the TLS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS client: {0}")]
    Client(String),
}

/// The process's TLS client, or none when no Redis link uses TLS. Built
/// once at start; cheap to clone into shards.
#[derive(Clone, Default)]
pub struct Tls {
    connector: Option<TlsConnector>,
}

impl Tls {
    /// A client that trusts the CAs in `ca`, or else the Mozilla roots
    /// compiled in: they are the same on every host and in an image with
    /// no CA store, and a private CA is what a bundle of one's own is for.
    /// Where no link uses TLS, [`Tls::default`] builds none.
    pub fn new(ca: Option<RootCertStore>) -> Result<Tls, TlsError> {
        let roots = ca.unwrap_or_else(|| RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        // ring, named here rather than left to the crate's features: its
        // lack of post-quantum key exchange (hence the deprecation) is the
        // price of a build with no cmake, which aws-lc-rs needs.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            connector: Some(TlsConnector::from(Arc::new(client))),
        })
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.connector.is_some() {
            "Tls(on)"
        } else {
            "Tls(off)"
        })
    }
}

/// One Redis connection's stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Connects to `addr`, and shakes hands when it asks for TLS; each
    /// step within `REPLY_TIMEOUT`.
    pub async fn open(addr: &RedisAddr, tls: &Tls) -> Result<Stream, RedisError> {
        let target = addr.socket_text();
        let tcp = glommio::timer::timeout(REPLY_TIMEOUT, async {
            TcpStream::connect(target.as_str())
                .await
                .map_err(|e| glommio::GlommioError::IoError(io::Error::other(e.to_string())))
        })
        .await
        .map_err(|e| RedisError::Io(e.to_string()))?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
        if !addr.tls {
            return Ok(Stream::Plain(tcp));
        }
        let failed = |e: String| RedisError::Tls(format!("with {target}: {e}"));
        let connector = tls
            .connector
            .as_ref()
            .ok_or_else(|| failed("no TLS client was set up".into()))?;
        let name = ServerName::try_from(addr.host.clone()).map_err(|e| failed(e.to_string()))?;
        let tls = glommio::timer::timeout(REPLY_TIMEOUT, async {
            connector
                .connect(name, tcp)
                .await
                .map_err(glommio::GlommioError::IoError)
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// How long a read may wait; None: forever (a subscription's pushes
    /// come when they come).
    pub fn set_read_timeout(&self, limit: Option<Duration>) {
        self.tcp().set_read_timeout(limit).ok();
    }

    /// Writes all of `bytes` and flushes: TLS may keep the tail of a
    /// write in its buffer until then.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), RedisError> {
        let io = |e: io::Error| RedisError::Io(e.to_string());
        self.write_all(bytes).await.map_err(io)?;
        self.flush().await.map_err(io)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s).poll_close(cx),
        }
    }
}
