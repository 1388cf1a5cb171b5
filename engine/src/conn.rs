//! One connection's shared state: its id, identity, outgoing queue and liveness,
//! and the one way anything is sent to it ([`Conn::send`]). The session (reader)
//! and the writer own the socket; publishers, the registry and the control plane
//! reach the connection only through this. Which topics it is in is the
//! registry's business ([`crate::registry`]).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use crate::{
    protocol::Reply,
    queue::{Close, Item, PushError, Queue},
    stats::Counters,
};

/// A connection id: a slab slot plus a generation, so that a reused slot is never
/// mistaken for its previous owner. Shown to clients and producers as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Builds an id from a slot and a generation.
    pub(crate) fn new(slot: usize, generation: u32) -> Self {
        Self((u64::from(generation) << 32) | (slot as u64 & 0xffff_ffff))
    }

    /// The slab slot.
    pub(crate) fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    /// Parses the text form; `None` for anything that is not 16 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What became of a frame given to [`Conn::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued for the writer.
    Queued,
    /// The connection is closing; the frame is not needed.
    Closed,
    /// The queue was full: the connection is now closed as a slow consumer.
    Slow,
}

/// The shared state of one connection.
#[derive(Debug)]
pub(crate) struct Conn {
    id: ConnId,
    user: Option<Arc<str>>,
    info: Option<Arc<str>>,
    /// Frames waiting for the writer.
    queue: Queue,
    counters: Arc<Counters>,
    /// Milliseconds since `epoch` at which the last frame was received.
    last_seen_ms: AtomicU64,
    epoch: Instant,
}

impl Conn {
    /// A new connection with an empty queue; overflows are counted in `counters`.
    pub(crate) fn new(
        id: ConnId,
        user: Option<Arc<str>>,
        info: Option<Arc<str>>,
        queue: Queue,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            id,
            user,
            info,
            queue,
            counters,
            last_seen_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The connection's id.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// The user the connection belongs to, if any.
    pub(crate) fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// The client info (JSON text), if any.
    pub(crate) fn info(&self) -> Option<&Arc<str>> {
        self.info.as_ref()
    }

    /// The outgoing queue (the writer's side of it).
    pub(crate) fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Queues a frame, or — when the queue is full — closes the connection as a
    /// slow consumer, discarding its backlog. This is the only way frames reach a
    /// connection, so every overflow is handled and counted the same way.
    pub(crate) fn send(&self, item: Item) -> Sent {
        match self.queue.push(item) {
            Ok(()) => Sent::Queued,
            Err(PushError::Closed) => Sent::Closed,
            Err(PushError::Full) => {
                let slow = Close::slow_consumer();
                let code = slow.code;
                if let Some(discarded) = self.queue.close(slow) {
                    Counters::add(&self.counters.slow_disconnects, 1);
                    self.counters.closed(code);
                    // The backlog, and the frame that did not fit.
                    Counters::add(&self.counters.dropped_slow, discarded as u64 + 1);
                } else {
                    Counters::add(&self.counters.dropped_slow, 1);
                }
                Sent::Slow
            }
        }
    }

    /// Queues a reply or server push (see [`Conn::send`]).
    pub(crate) fn reply(&self, reply: Reply<'_>) -> Sent {
        self.send(Item::new(reply.encode()))
    }

    /// Asks the writer to close the connection; false if it was already closing.
    /// The first close of a connection is counted by its code.
    pub(crate) fn close(&self, close: Close) -> bool {
        let code = close.code;
        let first = self.queue.close(close).is_some();
        if first {
            self.counters.closed(code);
        }
        first
    }

    /// Counts frames the writer dropped because they outlived their TTL.
    pub(crate) fn expired(&self, n: u64) {
        Counters::add(&self.counters.dropped_expired, n);
    }

    /// Records one batch the writer took: its size, and — when its first frame is
    /// a published message — how long that message took from publish to socket
    /// (one clock read per batch).
    pub(crate) fn wrote(&self, frames: usize, first_published: Option<Instant>) {
        let stats = self.counters.writer();
        stats.batch_sizes.observe(frames as u64);
        if let Some(at) = first_published {
            let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            stats.write_latency_ns.observe(ns);
        }
    }

    /// Records that a frame was received now.
    pub(crate) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last frame was received (the connection's start if none was).
    pub(crate) fn last_seen(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn ids_round_trip_and_keep_slot_and_generation_apart() {
        let a = ConnId::new(5, 1);
        let b = ConnId::new(5, 2);
        assert_ne!(a, b);
        assert_eq!(a.slot(), 5);
        assert_eq!(ConnId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string(), "0000000100000005");
        assert_eq!(ConnId::parse("xyz"), None);
        assert_eq!(ConnId::parse("zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn an_overflow_closes_once_and_counts_the_whole_backlog() {
        let counters = Arc::new(Counters::default());
        let conn = Conn::new(
            ConnId::new(1, 1),
            None,
            None,
            Queue::new(3, 1000),
            Arc::clone(&counters),
        );
        let frame = || Item::new("x".into());
        for _ in 0..3 {
            assert_eq!(conn.send(frame()), Sent::Queued);
        }
        assert_eq!(conn.send(frame()), Sent::Slow);
        assert_eq!(conn.send(frame()), Sent::Closed);
        assert_eq!(counters.slow_disconnects.load(Ordering::Relaxed), 1);
        assert_eq!(counters.dropped_slow.load(Ordering::Relaxed), 4);
        assert_eq!(
            counters
                .closes
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>(),
            1,
            "one close, counted once"
        );
    }
}
