//! The writer task of one connection: drains the outgoing queue in batches (feed
//! every frame, then one flush), sends heartbeat pings, closes idle connections
//! on time, and writes the disconnect notice and close frame when the server
//! closes the connection.
//!
//! The writer owns the sending half of the socket; the session task owns the
//! receiving half. When the writer ends it tells the session through `done`:
//! `Ok(())` after a close frame was sent (the session then waits briefly for the
//! client's close reply), or a dropped sender after a write error.
//!
//! A write that has to wait for the socket is bounded by the write timeout, and
//! is abandoned at once when the connection is condemned (a close that discards
//! the backlog, such as a slow consumer's): the notice and close frame then get
//! the close grace (`--close-grace`) to leave, and the socket is dropped.

use std::{collections::VecDeque, sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, stream::SplitSink};
use tokio::{sync::oneshot, time::Instant};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, Utf8Bytes,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use crate::{
    config::Config,
    conn::Conn,
    protocol::{Reply, close},
    queue::{Batch, Close, Item, Queue},
    tls::Stream,
};

/// A batch buffer with more room than this is shrunk after use.
const SHRINK_ABOVE: usize = 1024;

/// The sending half of a connection's socket.
type Sink = SplitSink<WebSocketStream<Stream>, Message>;

/// Heartbeat and write timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Interval between pings.
    pub(crate) ping_interval: Duration,
    /// Close when nothing was received for this long.
    pub(crate) idle_timeout: Duration,
    /// Give up on a socket that accepts nothing for this long.
    pub(crate) write_timeout: Duration,
    /// How long a condemned connection's notice and close frame may take.
    pub(crate) close_grace: Duration,
}

impl Timing {
    /// The timing the configuration asks for.
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            ping_interval: config.ping_interval.0,
            idle_timeout: config.idle_timeout.0,
            write_timeout: config.write_timeout.0,
            close_grace: config.close_grace.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("socket write failed: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("socket accepted nothing for {0:?}")]
    Timeout(Duration),
    #[error("the connection was condemned while its socket was full")]
    Condemned,
}

/// The heartbeat: when to ping next, and when the client counts as idle.
struct Heartbeat {
    next_ping: Instant,
    timing: Timing,
}

/// What the heartbeat timer found when it fired.
enum Beat {
    Ping,
    Idle,
    /// The client was heard from since the timer was set: nothing is due yet.
    Nothing,
}

impl Heartbeat {
    /// The next instant something may be due: a ping, or the idle deadline.
    fn deadline(&self, conn: &Conn) -> Instant {
        self.next_ping
            .min(conn.last_seen() + self.timing.idle_timeout)
    }

    fn due(&mut self, conn: &Conn) -> Beat {
        // An idle client is closed at its deadline, whatever the ping schedule.
        let now = Instant::now();
        if now >= conn.last_seen() + self.timing.idle_timeout {
            Beat::Idle
        } else if now >= self.next_ping {
            self.next_ping = now + self.timing.ping_interval;
            Beat::Ping
        } else {
            Beat::Nothing
        }
    }
}

/// Runs the writer until the connection closes.
pub(crate) async fn run(
    mut sink: Sink,
    conn: Arc<Conn>,
    timing: Timing,
    done: oneshot::Sender<()>,
) {
    let mut batch: VecDeque<Item> = VecDeque::new();
    let mut heartbeat = Heartbeat {
        next_ping: Instant::now() + timing.ping_interval,
        timing,
    };
    let timer = tokio::time::sleep_until(heartbeat.deadline(&conn));
    tokio::pin!(timer);
    loop {
        // 1. Wait for frames, a close, or the heartbeat.
        let close = tokio::select! {
            biased;
            batch = conn.queue().take(&mut batch) => match batch {
                Batch::Frames => None,
                Batch::Close(close) => Some(close),
            },
            () = &mut timer => {
                match heartbeat.due(&conn) {
                    Beat::Idle => {
                        conn.close(Close::idle());
                    }
                    Beat::Ping => {
                        let ping = std::iter::once(Message::Ping(Bytes::new()));
                        match write(&mut sink, timing.write_timeout, ping, Some(conn.queue())).await {
                            // The close is queued: the next round writes it.
                            Ok(()) | Err(WriteError::Condemned) => {}
                            Err(e) => {
                                tracing::debug!(conn = %conn.id(), error = %e, "ping failed");
                                break;
                            }
                        }
                    }
                    Beat::Nothing => {}
                }
                timer.as_mut().reset(heartbeat.deadline(&conn));
                continue;
            }
        };
        // 2. Write the batch, dropping frames past their TTL; with a close, the
        // disconnect notice and the close frame follow. The write is awaited
        // right here, one async level down (see `write`).
        let frames = batch.len();
        let first_published = batch.front().and_then(|item| item.published);
        // The clock is read only when a frame has a TTL.
        let mut now = None;
        let mut expired = 0u64;
        let live = batch.drain(..).filter_map(|item| match item.expires {
            Some(at) if at <= *now.get_or_insert_with(Instant::now) => {
                expired += 1;
                None
            }
            _ => Some(Message::Text(item.text)),
        });
        let result = match &close {
            None => write(&mut sink, timing.write_timeout, live, Some(conn.queue())).await,
            Some(c) => {
                let (limit, last) = closing(c, timing);
                write(&mut sink, limit, live.chain(last), None).await
            }
        };
        if expired > 0 {
            conn.expired(expired);
        }
        if frames > 0 && result.is_ok() {
            conn.wrote(frames, first_published);
        }
        // After a burst, give back what a long backlog made the buffers grow to
        // (the two buffers alternate with the queue, so both shrink in turn).
        if batch.capacity() > SHRINK_ABOVE {
            batch.shrink_to(0);
        }
        // 3. Stop after a failed write or a sent close. A condemned connection's
        // close is queued: the next round writes it within the close grace.
        match result {
            Ok(()) | Err(WriteError::Condemned) => {}
            Err(e) => {
                tracing::debug!(conn = %conn.id(), error = %e, "write failed; dropping connection");
                break;
            }
        }
        if let Some(c) = close {
            tracing::debug!(conn = %conn.id(), code = c.code, reason = %c.reason, "closed by server");
            let _ = done.send(());
            return;
        }
    }
    conn.close(Close::gone());
}

/// The frames that end a connection the server closes (the disconnect notice,
/// unless the close is a plain one, then the close frame), and how long writing
/// them may take.
fn closing(c: &Close, timing: Timing) -> (Duration, impl Iterator<Item = Message> + use<>) {
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
    let limit = if c.drain {
        timing.write_timeout
    } else {
        timing.close_grace
    };
    (limit, notice.into_iter().chain(std::iter::once(frame)))
}

/// Writes frames with one flush, giving up after `limit`, or — given the
/// connection's queue — once the connection is condemned.
///
/// The writer loop awaits this directly and it nests no further `async fn`: each
/// level of async calls between the loop and the socket moves its arguments into
/// its own part of the writer's future, and with thousands of connections that
/// wake a few times a second, each part touched is a cache miss per batch. The
/// condemnation is watched only for a batch that has to wait.
async fn write(
    sink: &mut Sink,
    limit: Duration,
    frames: impl Iterator<Item = Message>,
    condemned: Option<&Queue>,
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
    // poll: arm the write timer (and watch for a condemnation) only for a batch
    // that has to wait.
    match std::future::poll_fn(|cx| Poll::Ready(all.as_mut().poll(cx))).await {
        Poll::Ready(result) => result,
        Poll::Pending => {
            let timed = tokio::time::timeout(limit, all);
            let result = match condemned {
                Some(queue) => tokio::select! {
                    result = timed => result,
                    () = queue.condemned() => return Err(WriteError::Condemned),
                },
                None => timed.await,
            };
            result.map_err(|_| WriteError::Timeout(limit))?
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
