//! The gRPC listener's accepted sockets, before tonic sees them: Nagle off, TCP
//! keepalive on, and every socket wrapped in [`GrpcIo`], which ends a connection
//! that never completes its setup or that goes quiet (docs/security.md).
//!
//! tonic's own `tcp_nodelay`/`tcp_keepalive` apply only to listeners it binds
//! itself, and tonic has no setup or idle timeout for HTTP/2 connections (its
//! `timeout` is per request, and `max_connection_age` would also end healthy
//! long-lived streams); so these live here, below TLS and HTTP/2.
//!
//! - Setup: the connection must make a round trip within `grpc_setup_timeout`:
//!   the client sends something, the server answers, the client sends again (the
//!   HTTP/2 SETTINGS acknowledgement, or the TLS Finished). A socket that stays
//!   silent, or sends a few bytes and stops, is closed.
//! - Idle: once set up, a connection from which nothing was received for
//!   `grpc_idle_timeout` is closed. Answers to HTTP/2 keepalive pings count, so
//!   with keepalive on a healthy idle connection stays and a dead peer goes after
//!   `grpc_keepalive_timeout`.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt as _, wrappers::TcpListenerStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::Config;

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    setup: Duration,
    /// `None`: never idle out.
    idle: Option<Duration>,
    tcp_keepalive: Option<Duration>,
}

impl Timeouts {
    /// The configured timeouts.
    pub(crate) fn from_config(config: &Config) -> Self {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Self {
            setup: config.grpc_setup_timeout.0,
            idle: nonzero(config.grpc_idle_timeout.0),
            tcp_keepalive: nonzero(config.grpc_tcp_keepalive.0),
        }
    }
}

/// The accepted sockets of `listener`, configured and wrapped.
pub(crate) fn incoming(
    listener: TcpListener,
    timeouts: Timeouts,
) -> impl Stream<Item = io::Result<GrpcIo>> {
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        // Without it a sequential caller meets delayed ACKs (~40 ms per call).
        stream.set_nodelay(true)?;
        if let Some(time) = timeouts.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(time)
                .with_interval(Duration::from_secs(10));
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
        }
        Ok(GrpcIo::new(stream, timeouts))
    })
}

/// An accepted gRPC socket that fails its reads once the connection has not
/// completed its setup in time, or has been idle too long; hyper then closes it.
#[derive(Debug)]
pub(crate) struct GrpcIo {
    inner: TcpStream,
    timeouts: Timeouts,
    accepted: Instant,
    last_read: Instant,
    /// Set once the server has written something.
    wrote: bool,
    /// Set once the client sent something after the server wrote.
    set_up: bool,
    /// Fires at the setup deadline, then (re-armed lazily) at the idle deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

impl GrpcIo {
    fn new(inner: TcpStream, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timeouts,
            accepted: now,
            last_read: now,
            wrote: false,
            set_up: false,
            timer: Some(Box::pin(tokio::time::sleep_until(now + timeouts.setup))),
        }
    }

    /// When the connection is closed if nothing else is read.
    fn deadline(&self) -> Option<Instant> {
        if self.set_up {
            self.timeouts.idle.map(|idle| self.last_read + idle)
        } else {
            Some(self.accepted + self.timeouts.setup)
        }
    }

    /// Polls the timer: `Ready` with the error once a deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.deadline();
            match deadline {
                Some(at) if at <= Instant::now() => {
                    let what = if self.set_up {
                        "gRPC connection idle"
                    } else {
                        "gRPC connection setup timed out"
                    };
                    tracing::debug!(what, "closing a gRPC connection");
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
                }
                // Activity moved the deadline: re-arm and poll again.
                Some(at) => {
                    if let Some(timer) = self.timer.as_mut() {
                        timer.as_mut().reset(at);
                    }
                }
                None => self.timer = None,
            }
        }
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                    if this.wrote {
                        this.set_up = true;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for GrpcIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
