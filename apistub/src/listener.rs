//! The listening socket, and a power switch for restarts: going down closes the port
//! (clients get "connection refused") and resets every open connection under its client
//! (no clean end of a response or of a watch stream), coming up binds the same address again.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, info, warn};

/// Whether the server is up, and how many times it went down so far (connections accepted
/// in an earlier epoch are reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Power {
    pub up: bool,
    pub epoch: u64,
}

/// A TCP listener that follows the power switch.
pub(crate) struct Switched {
    addr: SocketAddr,
    listener: Option<TcpListener>,
    power: watch::Receiver<Power>,
}

impl Switched {
    pub fn new(listener: TcpListener, addr: SocketAddr, power: watch::Receiver<Power>) -> Self {
        Switched {
            addr,
            listener: Some(listener),
            power,
        }
    }

    /// Binds the address again after a restart; the port was ours a moment ago, so only
    /// a short race with the kernel's cleanup is retried.
    async fn rebind(&self) -> TcpListener {
        let mut delay = Duration::from_millis(10);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    info!(addr = %self.addr, "plinth-apistub serving again");
                    return listener;
                }
                Err(error) => {
                    warn!(addr = %self.addr, %error, "cannot bind again yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

impl axum::serve::Listener for Switched {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            let power = *self.power.borrow_and_update();
            if !power.up {
                if self.listener.take().is_some() {
                    info!(addr = %self.addr, "plinth-apistub down: port closed");
                }
                if self.power.changed().await.is_err() {
                    // The server is being dropped; axum stops polling us soon.
                    std::future::pending::<()>().await;
                }
                continue;
            }
            let listener = match self.listener.take() {
                Some(listener) => listener,
                None => self.rebind().await,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => Some(accepted),
                _ = self.power.changed() => None,
            };
            self.listener = Some(listener);
            match accepted {
                Some(Ok((tcp, peer))) => {
                    // Go's net package (and so the real API server) disables Nagle's
                    // algorithm; without this, small responses wait for a delayed ACK.
                    if let Err(error) = tcp.set_nodelay(true) {
                        warn!(%error, "cannot set TCP_NODELAY");
                    }
                    return (Connection::new(tcp, self.power.clone(), power.epoch), peer);
                }
                Some(Err(error)) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

type Cut = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// An accepted connection that is reset when the server goes down.
pub(crate) struct Connection {
    tcp: TcpStream,
    /// Resolves when the epoch this connection was accepted in ends.
    cut: Cut,
    reset: bool,
}

impl Connection {
    fn new(tcp: TcpStream, mut power: watch::Receiver<Power>, epoch: u64) -> Self {
        let cut = Box::pin(async move {
            // A closed channel means the server is gone: the connection goes with it.
            let _ = power.wait_for(|p| p.epoch != epoch).await;
        });
        Connection {
            tcp,
            cut,
            reset: false,
        }
    }

    /// `Err` once the server went down since this connection was accepted; the socket is
    /// then closed with a reset (SO_LINGER 0) when hyper drops it.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.reset && self.cut.as_mut().poll(cx).is_ready() {
            self.reset = true;
            if let Err(error) = self.tcp.set_zero_linger() {
                debug!(%error, "cannot set SO_LINGER 0");
            }
        }
        if self.reset {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "plinth-apistub restarted",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
