//! The per-connection outgoing queue: bounded by messages and by bytes, filled by
//! publishers without ever waiting, drained in whole batches by the connection's
//! writer.
//!
//! A push takes the queue's own small mutex (shared only with that connection's
//! writer) and wakes the writer only when the queue goes from empty to non-empty;
//! the writer's waker lives under the same mutex, so waiting and waking need no
//! other synchronisation. The writer swaps the whole queue out at once, so a burst
//! of messages costs one wake-up and one lock per batch on its side. Two buffers
//! alternate between the publisher side and the writer, so the steady state
//! allocates nothing.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::Mutex,
    task::{Context, Poll, Waker},
};

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One frame waiting to be written.
#[derive(Debug, Clone)]
pub struct Item {
    /// The encoded text frame (shared with every other subscriber).
    pub text: Utf8Bytes,
    /// Drop instead of sending when still queued at this instant.
    pub expires: Option<Instant>,
}

/// Why and how a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code (docs/protocol.md).
    pub code: u16,
    /// The reason, for people.
    pub reason: String,
    /// Whether the client is told to reconnect.
    pub reconnect: bool,
    /// Send what is already queued before the close (graceful), or drop it (slow
    /// consumer, kill).
    pub drain: bool,
}

/// A push that was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
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
    /// Set once the writer has taken the close: nothing more is accepted.
    finished: bool,
    /// The writer, when it waits for an empty queue to fill.
    waker: Option<Waker>,
}

/// The bounded outgoing queue of one connection.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    max_messages: u32,
    max_bytes: u32,
}

/// What the writer gets from one [`Queue::take`].
#[derive(Debug)]
pub enum Batch {
    /// Frames to write.
    Frames,
    /// Frames to write (if `drain`), then this close.
    Close(Close),
}

impl Queue {
    /// A queue holding at most `max_messages` frames and `max_bytes` bytes.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_messages: u32::try_from(max_messages).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent
        // (every update is a single push or swap), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting.
    pub fn push(&self, item: Item) -> Result<(), PushError> {
        let len = item.text.len();
        let waker = {
            let mut state = self.lock();
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

    /// Asks the writer to close the connection. The first close wins; returns
    /// whether this call was it.
    pub fn close(&self, close: Close) -> bool {
        let waker = {
            let mut state = self.lock();
            if state.close.is_some() || state.finished {
                return false;
            }
            if !close.drain {
                state.items.clear();
                state.bytes = 0;
            }
            state.close = Some(close);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Waits until there is something to take, then moves every queued frame
    /// into `out` (which must be empty; its capacity is reused) and reports a
    /// pending close.
    pub async fn take(&self, out: &mut VecDeque<Item>) -> Batch {
        poll_fn(|cx| self.poll_take(cx, out)).await
    }

    fn poll_take(&self, cx: &mut Context<'_>, out: &mut VecDeque<Item>) -> Poll<Batch> {
        let mut state = self.lock();
        if let Some(close) = state.close.take() {
            state.finished = true;
            state.bytes = 0;
            std::mem::swap(&mut state.items, out);
            return Poll::Ready(Batch::Close(close));
        }
        if state.items.is_empty() {
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        state.bytes = 0;
        std::mem::swap(&mut state.items, out);
        Poll::Ready(Batch::Frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(s: &'static str) -> Item {
        Item {
            text: Utf8Bytes::from_static(s),
            expires: None,
        }
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
    async fn close_drops_or_keeps_queued_frames_and_refuses_more() {
        let q = Queue::new(10, 100);
        q.push(item("a")).ok();
        assert!(q.close(Close {
            code: 4001,
            reason: "slow".into(),
            reconnect: true,
            drain: false
        }));
        assert!(!q.close(Close {
            code: 1001,
            reason: "x".into(),
            reconnect: true,
            drain: true
        }));
        assert_eq!(q.push(item("b")), Err(PushError::Closed));
        let mut out = VecDeque::new();
        match q.take(&mut out).await {
            Batch::Close(c) => assert_eq!(c.code, 4001),
            Batch::Frames => panic!("expected a close"),
        }
        assert!(out.is_empty());

        let q = Queue::new(10, 100);
        q.push(item("a")).ok();
        q.close(Close {
            code: 1001,
            reason: "bye".into(),
            reconnect: true,
            drain: true,
        });
        let mut out = VecDeque::new();
        assert!(matches!(q.take(&mut out).await, Batch::Close(_)));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn take_waits_for_the_first_push() {
        let q = std::sync::Arc::new(Queue::new(10, 100));
        let pusher = std::sync::Arc::clone(&q);
        let waiting = tokio::spawn(async move {
            let mut out = VecDeque::new();
            let batch = q.take(&mut out).await;
            (matches!(batch, Batch::Frames), out.len())
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        pusher.push(item("a")).ok();
        assert_eq!(waiting.await.ok(), Some((true, 1)));
    }
}
