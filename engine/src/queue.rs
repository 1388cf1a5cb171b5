//! The per-connection outgoing queue: bounded by messages and by bytes, filled by
//! publishers without ever waiting, drained in whole batches by the connection's
//! writer, and the place where a connection's close is decided ([`Close`]).
//!
//! A push takes the queue's own small mutex (shared only with that connection's
//! writer) and wakes the writer only when it waits; the writer's waker lives under
//! the same mutex, so waiting and waking need no other synchronisation. The writer
//! swaps the whole queue out at once, so a burst of messages costs one wake-up and
//! one lock per batch on its side. Two buffers alternate between the publisher
//! side and the writer, so the steady state allocates nothing.

use std::{
    borrow::Cow,
    collections::VecDeque,
    future::poll_fn,
    task::{Context, Poll, Waker},
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::close;

/// One frame waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// The encoded text frame (shared with every other subscriber).
    pub(crate) text: Utf8Bytes,
    /// Drop instead of sending when still queued at this instant.
    pub(crate) expires: Option<Instant>,
    /// When the message was published (for the publish → write latency); `None`
    /// for replies and server pushes.
    pub(crate) published: Option<Instant>,
}

impl Item {
    /// A frame without an expiry.
    pub(crate) fn new(text: Utf8Bytes) -> Self {
        Self {
            text,
            expires: None,
            published: None,
        }
    }
}

/// Why and how a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    /// The close code (docs/protocol.md).
    pub(crate) code: u16,
    /// The reason, for people.
    pub(crate) reason: Cow<'static, str>,
    /// Whether the client is told to reconnect.
    pub(crate) reconnect: bool,
    /// Send what is already queued before the close (graceful), or discard it and
    /// give the close only a short grace period (slow consumer, protocol error).
    pub(crate) drain: bool,
}

impl Close {
    const fn fixed(code: u16, reason: &'static str, reconnect: bool, drain: bool) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
            reconnect,
            drain,
        }
    }

    /// The outgoing queue overflowed (4001): the backlog is discarded.
    pub(crate) const fn slow_consumer() -> Self {
        Self::fixed(close::SLOW_CONSUMER, "slow consumer", true, false)
    }

    /// Nothing was received for the idle timeout (4002).
    pub(crate) const fn idle() -> Self {
        Self::fixed(close::IDLE_TIMEOUT, "idle timeout", true, false)
    }

    /// The node is shutting down (1001): what is queued is sent first.
    pub(crate) const fn going_away() -> Self {
        Self::fixed(close::GOING_AWAY, "server shutting down", true, true)
    }

    /// The socket is gone or the session ended: nothing more is written.
    pub(crate) const fn gone() -> Self {
        Self::fixed(close::NORMAL, "", false, false)
    }

    /// The client broke the WebSocket protocol (1002, 1007, 1009).
    pub(crate) const fn protocol(code: u16, reason: &'static str) -> Self {
        Self::fixed(code, reason, false, false)
    }

    /// A producer disconnected the connection: what is queued is sent first.
    pub(crate) fn by_producer(code: u16, reason: String, reconnect: bool) -> Self {
        Self {
            code,
            reason: Cow::Owned(reason),
            reconnect,
            drain: true,
        }
    }
}

/// A push that was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue is at its limit: the connection is a slow consumer.
    Full,
    /// The connection is closing; the frame is not needed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    bytes: usize,
    close: Option<Close>,
    /// Set once a close that discards the backlog was requested: the writer
    /// abandons a write that is waiting on the socket.
    condemned: bool,
    /// Set once the writer has taken the close: nothing more is accepted.
    finished: bool,
    /// The writer, when it waits for the queue to fill or for a condemnation.
    waker: Option<Waker>,
}

impl State {
    fn park(&mut self, cx: &Context<'_>) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
    }
}

/// The bounded outgoing queue of one connection.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    max_messages: u32,
    max_bytes: u32,
}

/// What the writer gets from one [`Queue::take`].
#[derive(Debug)]
pub(crate) enum Batch {
    /// Frames to write.
    Frames,
    /// Frames to write (if `drain`), then this close.
    Close(Close),
}

impl Queue {
    /// A queue holding at most `max_messages` frames and `max_bytes` bytes.
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_messages: u32::try_from(max_messages).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
        }
    }

    /// Queues a frame without waiting.
    pub(crate) fn push(&self, item: Item) -> Result<(), PushError> {
        let len = item.text.len();
        let waker = {
            let mut state = self.state.lock();
            if state.close.is_some() || state.finished {
                return Err(PushError::Closed);
            }
            if state.items.len() >= self.max_messages as usize
                || state.bytes + len > self.max_bytes as usize
            {
                return Err(PushError::Full);
            }
            state.bytes += len;
            state.items.push_back(item);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Asks the writer to close the connection. The first close wins: returns
    /// `None` if the connection was already closing, otherwise how many queued
    /// frames this close discarded (none when it drains).
    pub(crate) fn close(&self, close: Close) -> Option<usize> {
        let (discarded, waker) = {
            let mut state = self.state.lock();
            if state.close.is_some() || state.finished {
                return None;
            }
            let mut discarded = 0;
            if !close.drain {
                discarded = state.items.len();
                state.items.clear();
                state.bytes = 0;
                state.condemned = true;
            }
            state.close = Some(close);
            (discarded, state.waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Some(discarded)
    }

    /// Waits until there is something to take, then moves every queued frame
    /// into `out` (which must be empty; its capacity is reused) and reports a
    /// pending close.
    pub(crate) async fn take(&self, out: &mut VecDeque<Item>) -> Batch {
        poll_fn(|cx| self.poll_take(cx, out)).await
    }

    fn poll_take(&self, cx: &mut Context<'_>, out: &mut VecDeque<Item>) -> Poll<Batch> {
        let mut state = self.state.lock();
        if let Some(close) = state.close.take() {
            state.finished = true;
            state.bytes = 0;
            std::mem::swap(&mut state.items, out);
            return Poll::Ready(Batch::Close(close));
        }
        if state.items.is_empty() {
            state.park(cx);
            return Poll::Pending;
        }
        state.bytes = 0;
        std::mem::swap(&mut state.items, out);
        Poll::Ready(Batch::Frames)
    }

    /// Resolves once a close that discards the backlog has been requested: the
    /// writer races its pending socket writes against this, so a condemned
    /// connection does not wait out the write timeout behind a full socket.
    pub(crate) async fn condemned(&self) {
        poll_fn(|cx| {
            let mut state = self.state.lock();
            if state.condemned {
                return Poll::Ready(());
            }
            state.park(cx);
            Poll::Pending
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(s: &'static str) -> Item {
        Item::new(Utf8Bytes::from_static(s))
    }

    #[tokio::test]
    async fn bounded_by_messages_and_bytes() {
        let q = Queue::new(2, 100);
        assert_eq!(q.push(item("a")), Ok(()));
        assert_eq!(q.push(item("b")), Ok(()));
        assert_eq!(q.push(item("c")), Err(PushError::Full));
        let mut out = VecDeque::new();
        assert!(matches!(q.take(&mut out).await, Batch::Frames));
        assert_eq!(out.len(), 2);
        let q = Queue::new(10, 3);
        assert_eq!(q.push(item("ab")), Ok(()));
        assert_eq!(q.push(item("cd")), Err(PushError::Full));
    }

    #[tokio::test]
    async fn close_discards_or_keeps_queued_frames_and_refuses_more() {
        let q = Queue::new(10, 100);
        q.push(item("a")).unwrap();
        q.push(item("b")).unwrap();
        assert_eq!(q.close(Close::slow_consumer()), Some(2), "both discarded");
        assert_eq!(q.close(Close::going_away()), None, "the first close wins");
        assert_eq!(q.push(item("c")), Err(PushError::Closed));
        let mut out = VecDeque::new();
        match q.take(&mut out).await {
            Batch::Close(c) => assert_eq!(c.code, close::SLOW_CONSUMER),
            Batch::Frames => panic!("expected a close"),
        }
        assert!(out.is_empty());
        q.condemned().await;

        let q = Queue::new(10, 100);
        q.push(item("a")).unwrap();
        assert_eq!(q.close(Close::going_away()), Some(0));
        let mut out = VecDeque::new();
        assert!(matches!(q.take(&mut out).await, Batch::Close(_)));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn take_waits_for_the_first_push_and_condemned_for_a_discarding_close() {
        let q = std::sync::Arc::new(Queue::new(10, 100));
        let pusher = std::sync::Arc::clone(&q);
        let waiting = tokio::spawn(async move {
            let mut out = VecDeque::new();
            let batch = q.take(&mut out).await;
            let frames = (matches!(batch, Batch::Frames), out.len());
            q.condemned().await;
            frames
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        pusher.push(item("a")).unwrap();
        tokio::task::yield_now().await;
        pusher.push(item("b")).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a push does not condemn");
        pusher.close(Close::slow_consumer());
        assert_eq!(waiting.await.unwrap(), (true, 1));
    }
}
