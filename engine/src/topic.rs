//! One topic: its subscriber set, published as an immutable snapshot for the
//! fan-out path, and its publishing state (sequence numbers, idempotency keys).
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

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::{
    conn::{Conn, ConnId},
    presence::PresenceHub,
    protocol::{self, Payload, close},
    queue::{Close, Item, PushError},
    snapshot::{Snapshot, Subscribers},
};

/// Idempotency keys remembered per topic at most; the oldest go first.
const MAX_KEYS_PER_TOPIC: usize = 10_000;

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

#[derive(Debug)]
struct Publishing {
    seq: u64,
    keys: HashMap<Box<str>, u64>,
    key_order: VecDeque<(Instant, Box<str>)>,
    last_active: Instant,
}

/// A topic's subscriber set and publishing state.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    snapshot: ArcSwap<Snapshot>,
    members: Mutex<Members>,
    publishing: Mutex<Publishing>,
    removed: AtomicBool,
    /// Whether join/leave events are produced for this topic.
    tracked: bool,
}

/// What one publish did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The message's sequence number in the topic.
    pub seq: u64,
    /// The idempotency key matched an earlier message: nothing was sent.
    pub duplicate: bool,
    /// Connections the message was queued to.
    pub queued: u64,
    /// Connections that were closed because their queue was full.
    pub slow: u64,
}

/// A publish that arrived after the topic left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed;

/// The outcome of adding or removing a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The member set changed, and publishers already see the change.
    Changed,
    /// Nothing to do (already a member, or not one).
    Unchanged,
    /// The topic has left the registry; look it up again.
    Removed,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves the state consistent before anything can
    // panic, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Topic {
    /// A new, empty topic; `tracked` switches join/leave events on.
    pub fn new(name: Arc<str>, tracked: bool) -> Self {
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
                keys: HashMap::new(),
                key_order: VecDeque::new(),
                last_active: now,
            }),
            removed: AtomicBool::new(false),
            tracked,
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Adds a connection. The caller holds the connection's subscription lock.
    pub fn add(self: &Arc<Self>, conn: &Arc<Conn>, hub: &PresenceHub) -> Change {
        let old = {
            let mut m = lock(&self.members);
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
    pub fn remove(self: &Arc<Self>, conn: &Arc<Conn>, hub: &PresenceHub) -> Change {
        let old = {
            let mut m = lock(&self.members);
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

    /// The current subscriber snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Number of member connections and of distinct users among them.
    pub fn counts(&self) -> (usize, usize) {
        let m = lock(&self.members);
        (m.conns.len(), m.users.len())
    }

    /// Whether join/leave events are produced for this topic.
    pub fn tracked(&self) -> bool {
        self.tracked
    }

    /// Every member (the subscriber snapshot, shared, not copied), with the
    /// presence sequence number that separates the events already reflected in it
    /// from later ones; `None` once the topic has left the registry.
    pub fn presence_snapshot(&self, hub: &PresenceHub) -> Option<(Arc<Snapshot>, u64)> {
        let m = lock(&self.members);
        if m.removed {
            return None;
        }
        Some((self.snapshot.load_full(), hub.current_seq()))
    }

    /// Up to `limit` members with ids greater than `after`, in id order.
    pub fn members_after(&self, after: Option<ConnId>, limit: usize) -> Vec<Arc<Conn>> {
        let m = lock(&self.members);
        let range = match after {
            Some(id) => m
                .conns
                .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded)),
            None => m.conns.range(..),
        };
        range.take(limit).map(|(_, c)| Arc::clone(c)).collect()
    }

    /// Assigns the next sequence number, encodes the message once and queues it to
    /// every subscriber in the current snapshot. Never waits on a client: a full
    /// queue closes that connection as a slow consumer.
    pub fn publish(
        &self,
        payload: &Payload,
        ttl: Option<Duration>,
        idempotency_key: Option<&str>,
        idempotency_window: Duration,
    ) -> Result<Delivery, Removed> {
        let mut p = lock(&self.publishing);
        if self.removed.load(Ordering::Acquire) {
            return Err(Removed);
        }
        let now = Instant::now();
        p.last_active = now;
        if let Some(key) = idempotency_key {
            while let Some((at, _)) = p.key_order.front() {
                if now.duration_since(*at) < idempotency_window
                    && p.key_order.len() < MAX_KEYS_PER_TOPIC
                {
                    break;
                }
                if let Some((_, old)) = p.key_order.pop_front() {
                    p.keys.remove(&old);
                }
            }
            if let Some(&seq) = p.keys.get(key) {
                return Ok(Delivery {
                    seq,
                    duplicate: true,
                    ..Delivery::default()
                });
            }
        }
        p.seq += 1;
        let seq = p.seq;
        if let Some(key) = idempotency_key {
            let key: Box<str> = key.into();
            p.keys.insert(key.clone(), seq);
            p.key_order.push_back((now, key));
        }

        let snapshot = self.snapshot.load_full();
        if snapshot.is_empty() {
            return Ok(Delivery {
                seq,
                ..Delivery::default()
            });
        }
        let text = protocol::encode_message(&self.name, seq, payload);
        let expires = ttl.filter(|t| !t.is_zero()).map(|t| now + t);
        let mut delivery = Delivery {
            seq,
            ..Delivery::default()
        };
        for conn in snapshot.iter() {
            match conn.queue.push(Item {
                text: text.clone(),
                expires,
            }) {
                Ok(()) => delivery.queued += 1,
                Err(PushError::Closed) => {}
                Err(PushError::Full) => {
                    if conn.queue.close(Close {
                        code: close::SLOW_CONSUMER,
                        reason: "slow consumer".to_owned(),
                        reconnect: true,
                        drain: false,
                    }) {
                        delivery.slow += 1;
                    }
                }
            }
        }
        Ok(delivery)
    }

    /// If the topic has had no members and no publishes for `retention`, marks it
    /// removed and returns true. Takes both locks (publishing first).
    pub fn retire_if_idle(&self, retention: Duration) -> bool {
        let p = lock(&self.publishing);
        let mut m = lock(&self.members);
        let now = Instant::now();
        let idle = m.conns.is_empty()
            && now.duration_since(m.last_active) >= retention
            && now.duration_since(p.last_active) >= retention;
        if idle {
            m.removed = true;
            self.removed.store(true, Ordering::Release);
        }
        idle
    }
}
