//! The node's counters: updated with relaxed atomics where things happen, read as
//! a [`Stats`] snapshot by `Info` and by embedders of the crate, and exposed in
//! full (with the histograms) by the admin listener's `/metrics`.
//!
//! Nothing here takes a lock: a counter is one relaxed atomic add, a histogram
//! observation two (its bucket and its sum). The delivery path adds per publish
//! and per writer batch, never per message per subscriber; the per-batch
//! histograms are striped by thread, so that writers running on different cores
//! never update the same cache lines.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::protocol::close;

/// Engine-wide counters. Each is a relaxed atomic: readers see recent, not
/// synchronised, values.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages accepted for publishing (per topic).
    pub(crate) published: AtomicU64,
    /// Messages queued to connections.
    pub(crate) delivered: AtomicU64,
    /// Messages discarded because their connection was a slow consumer: every
    /// frame its queue held when it was closed, and the one that did not fit.
    pub(crate) dropped_slow: AtomicU64,
    /// Messages discarded because they outlived their TTL in a queue.
    pub(crate) dropped_expired: AtomicU64,
    /// Connections closed as slow consumers, whatever overflowed their queue.
    pub(crate) slow_disconnects: AtomicU64,
    /// Current subscriptions (connection × topic).
    pub(crate) subscriptions: AtomicU64,
    /// Connections closed, by close code ([`CLOSE_CODES`], then "other").
    pub(crate) closes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// What the writers observe per batch, striped by thread.
    writers: [WriterStats; WRITER_STRIPES],
    /// Time to queue one message to every subscriber, in nanoseconds (per publish
    /// to a topic with subscribers).
    pub(crate) fan_out_ns: Histogram<FAN_OUT_BUCKETS>,
}

/// How many stripes the per-batch writer histograms are spread over.
const WRITER_STRIPES: usize = 16;

/// The stripe the next thread to observe a writer batch gets.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The calling thread's writer stripe; `usize::MAX` until it first observes.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's writer stripe. Threads take the stripes in turn, so the
/// runtime's workers (one per core) each update only their own cache lines: a
/// stripe per connection instead had both cores' writers pulling the same lines
/// back and forth on every batch.
fn stripe() -> usize {
    STRIPE.with(|stripe| {
        let mut i = stripe.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % WRITER_STRIPES;
            stripe.set(i);
        }
        i
    })
}

/// The per-batch histograms of the writers of one stripe, on their own cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WriterStats {
    /// Frames the writer took from a queue at once (per batch).
    pub(crate) batch_sizes: Histogram<BATCH_BUCKETS>,
    /// Publish → socket write, in nanoseconds (the first message of each batch).
    pub(crate) write_latency_ns: Histogram<LATENCY_BUCKETS>,
}

/// The close codes counted one by one; any other (a producer's own code in
/// 4000-4999) is counted as "other", so the label set stays bounded.
pub(crate) const CLOSE_CODES: [u16; 9] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::INVALID_PAYLOAD,
    close::TOO_BIG,
    close::SLOW_CONSUMER,
    close::IDLE_TIMEOUT,
    close::DISCONNECT_RECONNECT,
    close::DISCONNECT_FINAL,
];

/// Buckets of the writer batch size histogram (frames).
pub(crate) const BATCH_BUCKETS: usize = 14;
/// Upper bounds of [`WriterStats::batch_sizes`].
pub(crate) const BATCH_BOUNDS: [u64; BATCH_BUCKETS] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
];

/// Buckets of the publish → write latency histogram.
pub(crate) const LATENCY_BUCKETS: usize = 18;
/// Upper bounds of [`WriterStats::write_latency_ns`] (nanoseconds).
pub(crate) const LATENCY_BOUNDS_NS: [u64; LATENCY_BUCKETS] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Buckets of the fan-out duration histogram.
pub(crate) const FAN_OUT_BUCKETS: usize = 16;
/// Upper bounds of [`Counters::fan_out_ns`] (nanoseconds).
pub(crate) const FAN_OUT_BOUNDS_NS: [u64; FAN_OUT_BUCKETS] = [
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// The writer histograms of the calling thread's stripe.
    pub(crate) fn writer(&self) -> &WriterStats {
        &self.writers[stripe()]
    }

    /// Every stripe's batch sizes, added up.
    pub(crate) fn batch_sizes(&self) -> HistogramValue<BATCH_BUCKETS> {
        HistogramValue::total(self.writers.iter().map(|w| w.batch_sizes.read()))
    }

    /// Every stripe's publish → write latencies, added up.
    pub(crate) fn write_latency_ns(&self) -> HistogramValue<LATENCY_BUCKETS> {
        HistogramValue::total(self.writers.iter().map(|w| w.write_latency_ns.read()))
    }

    /// Counts one connection closed with `code`.
    pub(crate) fn closed(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        Self::add(&self.closes[i], 1);
    }
}

/// A histogram with fixed integer bounds and lock-free observations. Buckets are
/// stored non-cumulatively (one of them is incremented per observation); the
/// count is their total, so an observation costs two relaxed atomic adds.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// One per bound, then the overflow (+Inf) bucket.
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram with these (ascending) upper bounds.
    pub(crate) const fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub(crate) fn observe(&self, value: u64) {
        // The first bound that holds the value, by binary search.
        let i = self.bounds.partition_point(|b| *b < value);
        let bucket = self.buckets.get(i).unwrap_or(&self.overflow);
        bucket.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The histogram now: the sum, the count, and the observations in each
    /// bucket (those above the last bound are the count minus the rest).
    pub(crate) fn read(&self) -> HistogramValue<N> {
        let mut buckets = [(0u64, 0u64); N];
        let mut total = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            total += n;
            buckets[i] = (self.bounds[i], n);
        }
        total += self.overflow.load(Ordering::Relaxed);
        HistogramValue {
            sum: self.sum.load(Ordering::Relaxed),
            count: total,
            buckets,
        }
    }
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistogramValue<const N: usize> {
    /// The sum of the observed values.
    pub(crate) sum: u64,
    /// How many values were observed.
    pub(crate) count: u64,
    /// (upper bound, observations above the previous bound and at or below
    /// this one), ascending.
    pub(crate) buckets: [(u64, u64); N],
}

impl<const N: usize> HistogramValue<N> {
    /// The sum of several histograms with the same bounds.
    fn total(values: impl Iterator<Item = Self>) -> Self {
        let mut total: Option<Self> = None;
        for v in values {
            match &mut total {
                None => total = Some(v),
                Some(t) => {
                    t.sum += v.sum;
                    t.count += v.count;
                    for (a, b) in t.buckets.iter_mut().zip(v.buckets) {
                        a.1 += b.1;
                    }
                }
            }
        }
        total.unwrap_or(Self {
            sum: 0,
            count: 0,
            buckets: [(0, 0); N],
        })
    }
}

impl Default for Histogram<BATCH_BUCKETS> {
    fn default() -> Self {
        Self::new(&BATCH_BOUNDS)
    }
}

impl Default for Histogram<LATENCY_BUCKETS> {
    fn default() -> Self {
        Self::new(&LATENCY_BOUNDS_NS)
    }
}

impl Default for Histogram<FAN_OUT_BUCKETS> {
    fn default() -> Self {
        Self::new(&FAN_OUT_BOUNDS_NS)
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
    /// Messages discarded: slow consumers' backlogs and TTL expiries (the sum of
    /// `dropped_slow_consumer` and `dropped_expired`).
    pub dropped: u64,
    /// Messages discarded with a slow consumer's backlog.
    pub dropped_slow_consumer: u64,
    /// Messages discarded because they outlived their TTL.
    pub dropped_expired: u64,
    /// Connections closed as slow consumers.
    pub slow_disconnects: u64,
    /// Bytes held by topic history (frames and bookkeeping), bounded by
    /// `history_max_bytes`.
    pub history_bytes: u64,
    /// Messages held by topic history.
    pub history_messages: u64,
    /// Messages evicted from history by the node-wide bound.
    pub history_evicted: u64,
}

impl Counters {
    /// The counters as plain numbers, with the given gauges.
    pub(crate) fn snapshot(&self, connections: usize, topics: usize) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let dropped_slow_consumer = load(&self.dropped_slow);
        let dropped_expired = load(&self.dropped_expired);
        Stats {
            connections: connections as u64,
            topics: topics as u64,
            subscriptions: load(&self.subscriptions),
            published: load(&self.published),
            delivered: load(&self.delivered),
            dropped: dropped_slow_consumer + dropped_expired,
            dropped_slow_consumer,
            dropped_expired,
            slow_disconnects: load(&self.slow_disconnects),
            history_bytes: 0,
            history_messages: 0,
            history_evicted: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_the_first_bound_that_holds_the_value() {
        let h = Histogram::new(&[1, 10, 100]);
        for v in [0, 1, 5, 10, 11, 1000] {
            h.observe(v);
        }
        let v = h.read();
        assert_eq!(v.count, 6);
        assert_eq!(v.sum, 1027);
        assert_eq!(v.buckets, [(1, 2), (10, 2), (100, 1)]);
    }

    #[test]
    fn writer_stripes_add_up() {
        let c = Counters::default();
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| {
                    c.writer().batch_sizes.observe(3);
                    c.writer().batch_sizes.observe(3);
                });
            }
        });
        c.writer().write_latency_ns.observe(20_000);
        let sizes = c.batch_sizes();
        assert_eq!((sizes.count, sizes.sum), (40, 120));
        assert_eq!(sizes.buckets[2], (4, 40));
        let latency = c.write_latency_ns();
        assert_eq!((latency.count, latency.sum), (1, 20_000));
        assert_eq!(latency.buckets[1], (25_000, 1));
    }

    #[test]
    fn close_codes_outside_the_known_set_share_one_slot() {
        let c = Counters::default();
        c.closed(close::SLOW_CONSUMER);
        c.closed(4123);
        c.closed(4444);
        let i = CLOSE_CODES
            .iter()
            .position(|x| *x == close::SLOW_CONSUMER)
            .unwrap();
        assert_eq!(c.closes[i].load(Ordering::Relaxed), 1);
        assert_eq!(c.closes[CLOSE_CODES.len()].load(Ordering::Relaxed), 2);
    }
}
