//! The writer task of one connection: drains the outgoing queue in batches (feed
//! every frame, then one flush), sends heartbeat pings, closes idle connections,
//! and writes the disconnect notice and close frame when the connection is closed
//! by the server.
//!
//! The writer owns the sending half of the socket; the session task owns the
//! receiving half. When the writer ends it tells the session through `done`:
//! `Ok(())` after a close frame was sent (the session then waits briefly for the
//! client's close reply), or a dropped sender after a write error.

use std::{collections::VecDeque, sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, stream::SplitSink};
use tokio::{net::TcpStream, sync::oneshot, time::Instant};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, Utf8Bytes,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use crate::{
    conn::Conn,
    protocol::{Reply, close},
    queue::{Batch, Close, Item},
    registry::Registry,
};

/// A batch buffer with more room than this is shrunk after use.
const SHRINK_ABOVE: usize = 1024;

/// The sending half of a connection's socket.
pub type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// Heartbeat and write timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Interval between pings.
    pub ping_interval: Duration,
    /// Close when nothing was received for this long.
    pub idle_timeout: Duration,
    /// Give up on a socket that accepts nothing for this long.
    pub write_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("socket write failed: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("socket accepted nothing for {0:?}")]
    Timeout(Duration),
}

/// Runs the writer until the connection closes.
pub async fn run(
    mut sink: Sink,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    timing: Timing,
    done: oneshot::Sender<()>,
) {
    let mut batch: VecDeque<Item> = VecDeque::new();
    let ping = tokio::time::sleep(timing.ping_interval);
    tokio::pin!(ping);
    loop {
        let close = tokio::select! {
            biased;
            batch = conn.queue.take(&mut batch) => match batch {
                Batch::Frames => None,
                Batch::Close(close) => Some(close),
            },
            () = &mut ping => {
                ping.as_mut().reset(Instant::now() + timing.ping_interval);
                if conn.last_seen().elapsed() >= timing.idle_timeout {
                    conn.queue.close(Close {
                        code: close::IDLE_TIMEOUT,
                        reason: "idle timeout".to_owned(),
                        reconnect: true,
                        drain: false,
                    });
                } else if let Err(e) = write(&mut sink, timing.write_timeout, std::iter::once(Message::Ping(Bytes::new()))).await {
                    tracing::debug!(conn = %conn.id(), error = %e, "ping failed");
                    break;
                }
                continue;
            }
        };
        // The clock is read only when a frame has a TTL.
        let mut now = None;
        let mut expired = 0u64;
        let frames = batch.drain(..).filter_map(|item| match item.expires {
            Some(at) if at <= *now.get_or_insert_with(Instant::now) => {
                expired += 1;
                None
            }
            _ => Some(Message::Text(item.text)),
        });
        let result = match &close {
            None => write(&mut sink, timing.write_timeout, frames).await,
            Some(c) => {
                let notice = (c.code != close::NORMAL).then(|| {
                    Message::Text(
                        Reply::Disconnect {
                            code: c.code,
                            reason: &c.reason,
                            reconnect: c.reconnect,
                        }
                        .encode(),
                    )
                });
                let frame = Message::Close(Some(CloseFrame {
                    code: CloseCode::from(c.code),
                    reason: Utf8Bytes::from(truncate(&c.reason, 120)),
                }));
                write(
                    &mut sink,
                    timing.write_timeout,
                    frames.chain(notice).chain(std::iter::once(frame)),
                )
                .await
            }
        };
        // After a burst, give back what a long backlog made the buffers grow to
        // (the two buffers alternate with the queue, so both shrink in turn).
        if batch.capacity() > SHRINK_ABOVE {
            batch.shrink_to(0);
        }
        if expired > 0 {
            registry
                .stats
                .dropped
                .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = result {
            tracing::debug!(conn = %conn.id(), error = %e, "write failed; dropping connection");
            conn.queue.close(Close {
                code: close::NORMAL,
                reason: String::new(),
                reconnect: false,
                drain: false,
            });
            return;
        }
        if let Some(c) = close {
            tracing::debug!(conn = %conn.id(), code = c.code, reason = %c.reason, "closed by server");
            let _ = done.send(());
            return;
        }
    }
    conn.queue.close(Close {
        code: close::NORMAL,
        reason: String::new(),
        reconnect: false,
        drain: false,
    });
}

async fn write(
    sink: &mut Sink,
    limit: Duration,
    frames: impl Iterator<Item = Message>,
) -> Result<(), WriteError> {
    let all = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await?;
        Ok::<_, WriteError>(())
    };
    tokio::pin!(all);
    // Nearly every batch fits in the socket buffer and completes on its first
    // poll: arm the write timer only for a batch that has to wait.
    match std::future::poll_fn(|cx| Poll::Ready(all.as_mut().poll(cx))).await {
        Poll::Ready(result) => result,
        Poll::Pending => tokio::time::timeout(limit, all)
            .await
            .map_err(|_| WriteError::Timeout(limit))?,
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
