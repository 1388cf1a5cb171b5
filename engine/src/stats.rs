//! The node's counters: updated with relaxed atomics where things happen, read as
//! a [`Stats`] snapshot by `Info` and by embedders of the crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Engine-wide counters. Each is a relaxed atomic: readers see recent, not
/// synchronised, values.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages accepted for publishing (per topic).
    pub(crate) published: AtomicU64,
    /// Messages queued to connections.
    pub(crate) delivered: AtomicU64,
    /// Messages discarded: every frame a slow consumer's queue held when it was
    /// closed, the one that did not fit, and frames that outlived their TTL.
    pub(crate) dropped: AtomicU64,
    /// Connections closed as slow consumers, whatever overflowed their queue.
    pub(crate) slow_disconnects: AtomicU64,
    /// Current subscriptions (connection × topic).
    pub(crate) subscriptions: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A point-in-time copy of the node's counters (what `Info` reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Topics held (with subscribers or retained state).
    pub topics: u64,
    /// Current subscriptions (connection × topic).
    pub subscriptions: u64,
    /// Messages accepted for publishing (per topic).
    pub published: u64,
    /// Messages queued to connections.
    pub delivered: u64,
    /// Messages discarded: slow consumers' backlogs and TTL expiries.
    pub dropped: u64,
    /// Connections closed as slow consumers.
    pub slow_disconnects: u64,
}

impl Counters {
    /// The counters as plain numbers, with the given gauges.
    pub(crate) fn snapshot(&self, connections: usize, topics: usize) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections: connections as u64,
            topics: topics as u64,
            subscriptions: load(&self.subscriptions),
            published: load(&self.published),
            delivered: load(&self.delivered),
            dropped: load(&self.dropped),
            slow_disconnects: load(&self.slow_disconnects),
        }
    }
}
