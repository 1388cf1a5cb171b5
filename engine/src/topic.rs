//! One topic: its subscriber set, published as an immutable snapshot for the
//! fan-out path, and its publishing state (epoch, sequence numbers, idempotency
//! keys, and the history ring when a `[[topics]]` rule asks for one).
//!
//! Two locks, never held by the same caller except the retention sweep:
//! - `members` is taken by subscribe, unsubscribe and disconnect. It guards the
//!   authoritative member map. Publishing never takes it.
//! - `publishing` is taken by publishers only. It keeps sequence numbers and the
//!   order of messages in the topic: a message is fanned out completely before the
//!   next one starts, so every subscriber sees the topic in `seq` order.
//!
//! The fan-out path loads the current [`Snapshot`] (one atomic reference-count
//! increment) and walks it without locks. Every membership change publishes a new
//! snapshot at once, under the member lock; snapshots share unchanged chunks
//! ([`crate::snapshot`]), so a change costs a small fraction of the topic's size
//! and a subscriber is visible to publishers before its subscribe returns.
//!
//! A subscribe that recovers (`since`) takes the publishing lock, then the member
//! lock: it joins the snapshot and queues the missed messages from the ring while
//! no publisher of the topic can run, so every later message is queued after the
//! replay and every earlier one is in it — no gap, no duplicate.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::time::Instant;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    conn::{Conn, ConnId, Sent},
    history::{Budget, HistoryRule, Kept, Position, Recovery, Ring, Since},
    presence::PresenceHub,
    protocol::{self, Payload},
    queue::Item,
    snapshot::{Snapshot, Subscribers},
};

#[derive(Debug)]
struct Members {
    /// By id, for presence pages in a stable order.
    conns: BTreeMap<ConnId, Arc<Conn>>,
    /// Connections per non-empty user id, for constant-time unique-user counts.
    users: HashMap<Arc<str>, u32>,
    /// What the next snapshot is made of.
    subscribers: Subscribers,
    last_active: Instant,
    /// Set when the topic left the registry: callers must look it up again.
    removed: bool,
}

/// How long idempotency keys are remembered, and how many the whole node may hold.
#[derive(Debug)]
pub(crate) struct Dedup {
    window: Duration,
    max_keys: usize,
    held: AtomicUsize,
}

impl Dedup {
    /// Keys are kept for `window`; at most `max_keys` in all topics together.
    pub(crate) fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            held: AtomicUsize::new(0),
        }
    }

    /// Keys held by the node now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Publishing {
    seq: u64,
    /// This incarnation's id: random for a topic this node numbers; the
    /// sequencer's (JetStream's) for a topic whose messages are numbered there.
    epoch: Arc<str>,
    keys: HashMap<Box<str>, u64>,
    key_order: VecDeque<(Instant, Box<str>)>,
    last_active: Instant,
    /// Kept messages, for topics whose rule keeps history.
    history: Option<Box<Ring>>,
}

impl Publishing {
    /// Forgets keys older than the window, then looks `key` up.
    fn recall(&mut self, key: &str, now: Instant, dedup: &Dedup) -> Option<u64> {
        let mut expired = 0;
        while self
            .key_order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= dedup.window)
        {
            self.forget_oldest();
            expired += 1;
        }
        if expired > 0 {
            dedup.held.fetch_sub(expired, Ordering::Relaxed);
        }
        self.keys.get(key).copied()
    }

    /// Remembers `key` for the window. When the node holds its maximum, this
    /// topic's oldest key makes room (or, with none, the key is not kept).
    fn remember(&mut self, key: &str, seq: u64, now: Instant, dedup: &Dedup) {
        if dedup.held.fetch_add(1, Ordering::Relaxed) >= dedup.max_keys {
            if self.key_order.is_empty() {
                dedup.held.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            self.forget_oldest();
            dedup.held.fetch_sub(1, Ordering::Relaxed);
        }
        let key: Box<str> = key.into();
        self.keys.insert(key.clone(), seq);
        self.key_order.push_back((now, key));
    }

    fn forget_oldest(&mut self) {
        if let Some((_, old)) = self.key_order.pop_front() {
            self.keys.remove(&old);
        }
    }
}

/// A topic's subscriber set and publishing state.
#[derive(Debug)]
pub(crate) struct Topic {
    name: Arc<str>,
    snapshot: ArcSwap<Snapshot>,
    members: Mutex<Members>,
    publishing: Mutex<Publishing>,
    removed: AtomicBool,
    /// Whether join/leave events are produced for this topic.
    tracked: bool,
}

/// What one publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The message's sequence number in the topic.
    pub(crate) seq: u64,
    /// The topic's epoch.
    pub(crate) epoch: Arc<str>,
    /// The idempotency key matched an earlier message: nothing was sent.
    pub(crate) duplicate: bool,
    /// Connections the message was queued to.
    pub(crate) queued: u64,
    /// How long the fan-out took, when the topic had subscribers.
    pub(crate) fan_out: Option<Duration>,
}

/// A publish that arrived after the topic left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed;

/// The outcome of adding or removing a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The member set changed, and publishers already see the change.
    Changed,
    /// Nothing to do (already a member, or not one).
    Unchanged,
    /// The topic has left the registry; look it up again.
    Removed,
}

impl Topic {
    /// A new, empty topic; `tracked` switches join/leave events on.
    pub(crate) fn new(name: Arc<str>, tracked: bool, history: Option<HistoryRule>) -> Self {
        let now = Instant::now();
        Self {
            name,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            members: Mutex::new(Members {
                conns: BTreeMap::new(),
                users: HashMap::new(),
                subscribers: Subscribers::default(),
                last_active: now,
                removed: false,
            }),
            publishing: Mutex::new(Publishing {
                seq: 0,
                // A topic created again (after a restart or its retirement) has
                // another, so positions from before never match.
                epoch: crate::history::new_epoch(),
                keys: HashMap::new(),
                key_order: VecDeque::new(),
                last_active: now,
                history: history.map(|rule| Box::new(Ring::new(rule))),
            }),
            removed: AtomicBool::new(false),
            tracked,
        }
    }

    /// The topic's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The topic's name, shared.
    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The last sequence number and the epoch.
    pub(crate) fn position(&self) -> Position {
        let p = self.publishing.lock();
        Position {
            seq: p.seq,
            epoch: Arc::clone(&p.epoch),
        }
    }

    /// Adds a connection that last saw `since` in this topic: under the publishing
    /// lock (so no message is being fanned out), decides whether every message
    /// after `since` is still kept, adds the connection, and queues those
    /// messages to it before any publisher can queue a live one. The caller holds
    /// the connection's subscription lock.
    pub(crate) fn add_recovering(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        since: &Since,
        hub: &PresenceHub,
        budget: &Budget,
    ) -> (Change, Recovery) {
        let mut p = self.publishing.lock();
        let position = Position {
            seq: p.seq,
            epoch: Arc::clone(&p.epoch),
        };
        if self.removed.load(Ordering::Acquire) {
            return (
                Change::Removed,
                Recovery {
                    recovered: false,
                    position,
                },
            );
        }
        let now = Instant::now();
        if let Some(ring) = p.history.as_deref_mut() {
            ring.expire(now, budget);
        }
        let recovered = *since.epoch == *p.epoch
            && since.seq <= p.seq
            && (since.seq == p.seq
                || p.history
                    .as_deref()
                    .and_then(Ring::first_seq)
                    .is_some_and(|first| first <= since.seq + 1));
        let change = self.add(conn, hub);
        if change == Change::Changed
            && recovered
            && let Some(ring) = p.history.as_deref()
        {
            for kept in ring.after(since.seq) {
                conn.send(Item {
                    text: kept.text.clone(),
                    expires: kept.expires,
                    published: None,
                });
            }
        }
        drop(p);
        (
            change,
            Recovery {
                recovered: recovered && change == Change::Changed,
                position,
            },
        )
    }

    /// A page of kept messages: after `since` (oldest first), or before it when
    /// `reverse` (newest first, from the newest without `since`); at most
    /// `limit`. `None` when `since` names another epoch.
    pub(crate) fn history(
        &self,
        since: Option<&Since>,
        limit: usize,
        reverse: bool,
        budget: &Budget,
    ) -> Option<(Vec<Kept>, Position, u64)> {
        let mut p = self.publishing.lock();
        if since.is_some_and(|s| !s.epoch.is_empty() && *s.epoch != *p.epoch) {
            return None;
        }
        let seq = p.seq;
        let epoch = Arc::clone(&p.epoch);
        let Some(ring) = p.history.as_deref_mut() else {
            return Some((Vec::new(), Position { seq, epoch }, 0));
        };
        ring.expire(Instant::now(), budget);
        let items: Vec<Kept> = match (since, reverse) {
            (Some(s), false) => ring.after(s.seq).take(limit).cloned().collect(),
            (None, false) => ring.after(0).take(limit).cloned().collect(),
            (since, true) => {
                let before = since.map_or(u64::MAX, |s| s.seq);
                ring.after(0)
                    .rev()
                    .filter(|k| k.seq < before)
                    .take(limit)
                    .cloned()
                    .collect()
            }
        };
        let first = ring.first_seq().unwrap_or(0);
        Some((items, Position { seq, epoch }, first))
    }

    /// Drops every kept message; returns how many. Sequence numbers go on, so a
    /// client behind the current one can no longer recover.
    pub(crate) fn remove_history(&self, budget: &Budget) -> usize {
        let mut p = self.publishing.lock();
        match p.history.as_deref_mut() {
            Some(ring) => {
                let n = ring.after(0).count();
                ring.clear(budget);
                n
            }
            None => 0,
        }
    }

    /// Evicts kept messages up to `seq` (the node-wide bound); returns how many.
    pub(crate) fn evict_through(&self, seq: u64, budget: &Budget) -> usize {
        let mut p = self.publishing.lock();
        p.history
            .as_deref_mut()
            .map_or(0, |ring| ring.evict_through(seq, budget))
    }

    /// Adds a connection. The caller holds the connection's subscription lock.
    pub(crate) fn add(self: &Arc<Self>, conn: &Arc<Conn>, hub: &PresenceHub) -> Change {
        let old = {
            let mut m = self.members.lock();
            if m.removed {
                return Change::Removed;
            }
            if m.conns.insert(conn.id(), Arc::clone(conn)).is_some() {
                return Change::Unchanged;
            }
            if let Some(user) = conn.user() {
                *m.users.entry(Arc::clone(user)).or_insert(0) += 1;
            }
            m.subscribers.insert(Arc::clone(conn));
            if self.tracked {
                hub.joined(self, conn, m.conns.len() == 1);
            }
            self.publish_snapshot(&m)
        };
        drop(old);
        Change::Changed
    }

    /// Removes a connection. The caller holds the connection's subscription lock.
    pub(crate) fn remove(self: &Arc<Self>, conn: &Arc<Conn>, hub: &PresenceHub) -> Change {
        let old = {
            let mut m = self.members.lock();
            if m.conns.remove(&conn.id()).is_none() {
                return Change::Unchanged;
            }
            if let Some(user) = conn.user()
                && let Some(n) = m.users.get_mut(user)
            {
                *n -= 1;
                if *n == 0 {
                    m.users.remove(user);
                }
            }
            m.subscribers.remove(conn.id());
            m.last_active = Instant::now();
            if self.tracked {
                hub.left(self, conn, m.conns.is_empty());
            }
            self.publish_snapshot(&m)
        };
        drop(old);
        Change::Changed
    }

    /// Makes the member set visible to publishers; returns the previous snapshot
    /// so the caller can release it outside the lock.
    fn publish_snapshot(&self, m: &Members) -> Arc<Snapshot> {
        self.snapshot.swap(Arc::new(m.subscribers.snapshot()))
    }

    /// Number of member connections and of distinct users among them.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let m = self.members.lock();
        (m.conns.len(), m.users.len())
    }

    /// Every member (the subscriber snapshot, shared, not copied), with the
    /// presence sequence number that separates the events already reflected in it
    /// from later ones; `None` once the topic has left the registry.
    pub(crate) fn presence_snapshot(&self, hub: &PresenceHub) -> Option<(Arc<Snapshot>, u64)> {
        let m = self.members.lock();
        if m.removed {
            return None;
        }
        Some((self.snapshot.load_full(), hub.current_seq()))
    }

    /// Up to `limit` members with ids greater than `after`, in id order.
    pub(crate) fn members_after(&self, after: Option<ConnId>, limit: usize) -> Vec<Arc<Conn>> {
        let m = self.members.lock();
        let range = match after {
            Some(id) => m
                .conns
                .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded)),
            None => m.conns.range(..),
        };
        range.take(limit).map(|(_, c)| Arc::clone(c)).collect()
    }

    /// Publishes one message: checks the idempotency key, assigns the next
    /// sequence number, then fans the message out — all under the publishing
    /// lock, so every subscriber sees the topic in `seq` order.
    pub(crate) fn publish(
        self: &Arc<Self>,
        payload: &Payload,
        ttl: Option<Duration>,
        idempotency_key: Option<&str>,
        dedup: &Dedup,
        budget: &Budget,
    ) -> Result<Delivery, Removed> {
        let mut p = self.publishing.lock();
        if self.removed.load(Ordering::Acquire) {
            return Err(Removed);
        }
        let now = Instant::now();
        p.last_active = now;
        // 1. The idempotency window.
        if let Some(key) = idempotency_key
            && let Some(seq) = p.recall(key, now, dedup)
        {
            return Ok(Delivery {
                seq,
                epoch: Arc::clone(&p.epoch),
                duplicate: true,
                queued: 0,
                fan_out: None,
            });
        }
        // 2. The sequence number.
        p.seq += 1;
        let seq = p.seq;
        if let Some(key) = idempotency_key {
            p.remember(key, seq, now, dedup);
        }
        // 3. History, then the fan-out: the frame is encoded once for both.
        let expires = ttl.filter(|t| !t.is_zero()).map(|t| now + t);
        Ok(self.keep_and_fan_out(p, seq, payload, now, expires, true, budget))
    }

    /// Delivers one message numbered elsewhere (a cluster's sequencer) at `seq`
    /// in `epoch`: kept in the ring when the topic keeps history and, with
    /// `fan_out`, queued to every subscriber. A message at or before the topic's
    /// position in the same epoch is a duplicate and is dropped; a new epoch
    /// replaces the ring (its messages belong to the old incarnation). The caller
    /// delivers in order and fills gaps first. `published` is when the message
    /// was stored (for the history TTL).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        self: &Arc<Self>,
        seq: u64,
        epoch: &Arc<str>,
        payload: &Payload,
        ttl: Option<Duration>,
        published: Instant,
        fan_out: bool,
        budget: &Budget,
    ) -> Result<Delivery, Removed> {
        let mut p = self.publishing.lock();
        if self.removed.load(Ordering::Acquire) {
            return Err(Removed);
        }
        let now = Instant::now();
        p.last_active = now;
        if *p.epoch == **epoch {
            if seq <= p.seq {
                return Ok(Delivery {
                    seq,
                    epoch: Arc::clone(epoch),
                    duplicate: true,
                    queued: 0,
                    fan_out: None,
                });
            }
        } else {
            p.epoch = Arc::clone(epoch);
            if let Some(ring) = p.history.as_deref_mut() {
                ring.clear(budget);
            }
        }
        p.seq = seq;
        let expires = ttl.filter(|t| !t.is_zero()).map(|t| now + t);
        Ok(self.keep_and_fan_out(p, seq, payload, published, expires, fan_out, budget))
    }

    /// Keeps the message in the ring (when the topic keeps history) and fans it
    /// out (with `fan_out`), encoding it once for both; releases the publishing
    /// lock after the fan-out.
    #[allow(clippy::too_many_arguments)]
    fn keep_and_fan_out(
        self: &Arc<Self>,
        mut p: parking_lot::MutexGuard<'_, Publishing>,
        seq: u64,
        payload: &Payload,
        now: Instant,
        expires: Option<Instant>,
        fan_out: bool,
        budget: &Budget,
    ) -> Delivery {
        let epoch = Arc::clone(&p.epoch);
        let encoded = p.history.as_deref_mut().map(|ring| {
            let text = protocol::encode_message(&self.name, seq, &epoch, payload);
            ring.push(
                Arc::downgrade(self),
                seq,
                now,
                text.clone(),
                expires,
                payload.content_type(),
                budget,
            );
            text
        });
        let kept = encoded.is_some();
        let (queued, fan_out) = if fan_out {
            self.fan_out(seq, &epoch, payload, encoded, now, expires)
        } else {
            (0, None)
        };
        drop(p);
        if kept {
            budget.enforce();
        }
        Delivery {
            seq,
            epoch,
            duplicate: false,
            queued,
            fan_out,
        }
    }

    /// Encodes the message once and queues it to every subscriber of the current
    /// snapshot, without any lock and without ever waiting on a client: a full
    /// queue closes that connection as a slow consumer. Returns how many took it
    /// and, with any subscriber, how long since `published` it took (one clock
    /// read per publish; each frame carries `published` for the writer).
    fn fan_out(
        &self,
        seq: u64,
        epoch: &str,
        payload: &Payload,
        encoded: Option<Utf8Bytes>,
        published: Instant,
        expires: Option<Instant>,
    ) -> (u64, Option<Duration>) {
        let snapshot = self.snapshot.load_full();
        if snapshot.is_empty() {
            return (0, None);
        }
        let text =
            encoded.unwrap_or_else(|| protocol::encode_message(&self.name, seq, epoch, payload));
        let mut queued = 0;
        for conn in snapshot.iter() {
            let item = Item {
                text: text.clone(),
                expires,
                published: Some(published),
            };
            if conn.send(item) == Sent::Queued {
                queued += 1;
            }
        }
        (queued, Some(published.elapsed()))
    }

    /// If the topic has had no members and no publishes for `retention`, marks it
    /// removed, releases its idempotency keys and returns true. Takes both locks
    /// (publishing first).
    /// A topic with history waits for its history TTL too (when longer), and
    /// drops its ring on retirement: created again, it has a new epoch.
    pub(crate) fn retire_if_idle(
        &self,
        retention: Duration,
        dedup: &Dedup,
        budget: &Budget,
    ) -> bool {
        let mut p = self.publishing.lock();
        let now = Instant::now();
        let retention = match p.history.as_deref_mut() {
            Some(ring) => {
                ring.expire(now, budget);
                retention.max(ring.ttl().unwrap_or(Duration::ZERO))
            }
            None => retention,
        };
        let mut m = self.members.lock();
        let idle = m.conns.is_empty()
            && now.duration_since(m.last_active) >= retention
            && now.duration_since(p.last_active) >= retention;
        if idle {
            m.removed = true;
            self.removed.store(true, Ordering::Release);
            dedup.held.fetch_sub(p.key_order.len(), Ordering::Relaxed);
            if let Some(ring) = p.history.as_deref_mut() {
                ring.clear(budget);
            }
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_for_the_whole_window_within_the_node_bound() {
        let topic = Arc::new(Topic::new(Arc::from("t"), false, None));
        let payload = Payload::new("1".into(), "application/json".into(), 100).unwrap();
        let dedup = Dedup::new(Duration::from_secs(300), 25_000);
        let budget = Budget::new(usize::MAX);
        let publish = |key: &str| {
            topic
                .publish(&payload, None, Some(key), &dedup, &budget)
                .unwrap()
        };
        for n in 0..20_000 {
            assert!(!publish(&format!("k{n}")).duplicate);
        }
        let first = publish("k0");
        assert!(first.duplicate, "20,000 keys in one topic are all kept");
        assert_eq!(first.seq, 1);
        assert_eq!(dedup.held(), 20_000);
        // Over the node bound, this topic's oldest keys make room.
        for n in 20_000..30_000 {
            publish(&format!("k{n}"));
        }
        assert_eq!(dedup.held(), 25_000);
        assert!(!publish("k0").duplicate, "the oldest key made room");
        assert!(publish("k29999").duplicate);
    }
}
