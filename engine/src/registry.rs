//! The registry: every live connection (in a slab, with generation-checked ids),
//! the user → connections index, and the topic map. It is where subscribe,
//! unsubscribe, disconnect-cleanup and publish meet.
//!
//! Locks: the slab and the user index are taken only on connect, disconnect and
//! lookups by id or user. The topic map is lock-free (papaya), so publishers find
//! a topic without any lock; the fan-out itself is in [`Topic::publish`].

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use slab::Slab;

use crate::{
    conn::{Conn, ConnId},
    presence::{EventKind, PresenceHub},
    protocol::Payload,
    queue::{Close, Queue},
    topic::{Change, Delivery, Topic},
    topic_name::{self, TopicError},
};

/// Engine-wide counters, reported by `Info`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages accepted for publishing (per topic).
    pub published: AtomicU64,
    /// Messages queued to connections.
    pub delivered: AtomicU64,
    /// Messages dropped: queue overflow or TTL expiry.
    pub dropped: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_disconnects: AtomicU64,
    /// Current subscriptions (connection × topic).
    pub subscriptions: AtomicU64,
}

/// Limits the registry enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest topic name.
    pub max_topic_len: usize,
    /// Most topics per connection.
    pub max_subscriptions: usize,
    /// Outgoing queue bound, in messages.
    pub queue_max_messages: usize,
    /// Outgoing queue bound, in bytes.
    pub queue_max_bytes: usize,
    /// How long idempotency keys are remembered.
    pub idempotency_window: Duration,
    /// How long an idle topic keeps its state.
    pub topic_retention: Duration,
}

/// Why a subscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// A topic name breaks the rule.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The connection would exceed its subscription limit.
    #[error("subscribing would make {would_be} subscriptions; the limit per connection is {max}")]
    TooMany {
        /// The count after the subscribe.
        would_be: usize,
        /// The limit.
        max: usize,
    },
    /// The connection has closed.
    #[error("connection {0} is closed")]
    Closed(ConnId),
}

/// All connections and topics of this node.
#[derive(Debug)]
pub struct Registry {
    conns: Mutex<Slab<Arc<Conn>>>,
    generation: AtomicU32,
    users: Mutex<HashMap<Arc<str>, Vec<Arc<Conn>>>>,
    topics: papaya::HashMap<Arc<str>, Arc<Topic>>,
    presence: Arc<PresenceHub>,
    limits: Limits,
    /// Counters.
    pub stats: Stats,
}

/// A random starting generation, so that connection ids from before a restart do
/// not name new connections.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here are single inserts and removals: a poisoned lock is
    // still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// An empty registry whose membership changes feed `presence`.
    pub fn new(limits: Limits, presence: Arc<PresenceHub>) -> Self {
        Self {
            conns: Mutex::new(Slab::new()),
            generation: AtomicU32::new(random_u32()),
            users: Mutex::new(HashMap::new()),
            topics: papaya::HashMap::new(),
            presence,
            limits,
            stats: Stats::default(),
        }
    }

    /// The presence event source.
    pub fn presence(&self) -> &Arc<PresenceHub> {
        &self.presence
    }

    /// Every topic this node holds.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.pin().values().cloned().collect()
    }

    /// The registry's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks a topic name against the rule and the configured length.
    pub fn validate_topic(&self, name: &str) -> Result<(), TopicError> {
        topic_name::validate(name, self.limits.max_topic_len)
    }

    /// Adds a new connection and gives it an id.
    pub fn register(&self, user: Option<Arc<str>>, info: Option<Arc<str>>) -> Arc<Conn> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let conn = {
            let mut conns = lock(&self.conns);
            let entry = conns.vacant_entry();
            let id = ConnId::new(entry.key(), generation);
            let queue = Queue::new(self.limits.queue_max_messages, self.limits.queue_max_bytes);
            let conn = Arc::new(Conn::new(id, user, info, queue));
            entry.insert(Arc::clone(&conn));
            conn
        };
        if let Some(user) = conn.user() {
            lock(&self.users)
                .entry(Arc::clone(user))
                .or_default()
                .push(Arc::clone(&conn));
        }
        self.presence.connection_changed(EventKind::Connect, &conn);
        conn
    }

    /// Removes a connection from every topic and from the registry. Safe to call
    /// more than once.
    pub fn unregister(&self, conn: &Arc<Conn>) {
        let topics = {
            let mut subs = conn.subscriptions();
            if subs.closed {
                return;
            }
            subs.closed = true;
            let topics = std::mem::take(&mut subs.topics);
            for topic in &topics {
                topic.remove(conn, &self.presence);
            }
            topics
        };
        self.stats
            .subscriptions
            .fetch_sub(topics.len() as u64, Ordering::Relaxed);
        {
            let mut conns = lock(&self.conns);
            let slot = conn.id().slot();
            if conns.get(slot).is_some_and(|c| c.id() == conn.id()) {
                conns.remove(slot);
            }
        }
        if let Some(user) = conn.user() {
            let mut users = lock(&self.users);
            if let Some(list) = users.get_mut(user) {
                list.retain(|c| c.id() != conn.id());
                if list.is_empty() {
                    users.remove(user);
                }
            }
        }
        self.presence
            .connection_changed(EventKind::Disconnect, conn);
    }

    /// The live connection with this id.
    pub fn get(&self, id: ConnId) -> Option<Arc<Conn>> {
        lock(&self.conns)
            .get(id.slot())
            .filter(|c| c.id() == id)
            .cloned()
    }

    /// Every live connection of a user.
    pub fn user_conns(&self, user: &str) -> Vec<Arc<Conn>> {
        lock(&self.users).get(user).cloned().unwrap_or_default()
    }

    /// Every live connection.
    pub fn all_conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns)
            .iter()
            .map(|(_, c)| Arc::clone(c))
            .collect()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Number of topics held (with subscribers or retained state).
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The topic, if this node holds it.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.pin().get(name).cloned()
    }

    fn topic_or_create(&self, name: &str) -> Arc<Topic> {
        let topics = self.topics.pin();
        if let Some(topic) = topics.get(name) {
            return Arc::clone(topic);
        }
        let name: Arc<str> = Arc::from(name);
        let tracked = self.presence.tracks(&name);
        Arc::clone(
            topics.get_or_insert_with(Arc::clone(&name), || Arc::new(Topic::new(name, tracked))),
        )
    }

    fn forget_topic(&self, topic: &Arc<Topic>) {
        let _ = self
            .topics
            .pin()
            .remove_if(topic.name(), |_, v| Arc::ptr_eq(v, topic));
    }

    /// Adds `conn` to `names` (all validated first; all or nothing). When this
    /// returns, publishers already see the new subscriptions. Topics already
    /// subscribed are left as they are.
    pub fn subscribe(&self, conn: &Arc<Conn>, names: &[String]) -> Result<(), SubscribeError> {
        for name in names {
            self.validate_topic(name)?;
        }
        let mut subs = conn.subscriptions();
        if subs.closed {
            return Err(SubscribeError::Closed(conn.id()));
        }
        let mut fresh: Vec<&String> = names.iter().filter(|n| !subs.contains(n)).collect();
        fresh.sort_unstable();
        fresh.dedup();
        let would_be = subs.topics.len() + fresh.len();
        if would_be > self.limits.max_subscriptions {
            return Err(SubscribeError::TooMany {
                would_be,
                max: self.limits.max_subscriptions,
            });
        }
        let mut added = 0;
        for name in fresh {
            loop {
                let topic = self.topic_or_create(name);
                match topic.add(conn, &self.presence) {
                    Change::Removed => self.forget_topic(&topic),
                    change => {
                        added += u64::from(change == Change::Changed);
                        subs.topics.push(topic);
                        break;
                    }
                }
            }
        }
        self.stats.subscriptions.fetch_add(added, Ordering::Relaxed);
        Ok(())
    }

    /// Removes `conn` from `names` (names it is not in are ignored). When this
    /// returns, publishers no longer see it in those topics. Invalid names are
    /// refused.
    pub fn unsubscribe(&self, conn: &Arc<Conn>, names: &[String]) -> Result<(), SubscribeError> {
        for name in names {
            self.validate_topic(name)?;
        }
        let mut subs = conn.subscriptions();
        let mut left = Vec::new();
        subs.topics.retain(|t| {
            let leave = names.iter().any(|n| n.as_str() == t.name());
            if leave {
                left.push(Arc::clone(t));
            }
            !leave
        });
        let removed = left
            .iter()
            .filter(|topic| topic.remove(conn, &self.presence) == Change::Changed)
            .count();
        self.stats
            .subscriptions
            .fetch_sub(removed as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes one message to one topic on this node (the caller validated the
    /// topic and payload).
    pub fn publish(
        &self,
        name: &str,
        payload: &Payload,
        ttl: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Delivery {
        loop {
            let topic = self.topic_or_create(name);
            match topic.publish(
                payload,
                ttl,
                idempotency_key,
                self.limits.idempotency_window,
            ) {
                Ok(delivery) => {
                    if !delivery.duplicate {
                        self.stats.published.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .delivered
                            .fetch_add(delivery.queued, Ordering::Relaxed);
                    }
                    if delivery.slow > 0 {
                        self.stats
                            .slow_disconnects
                            .fetch_add(delivery.slow, Ordering::Relaxed);
                        self.stats
                            .dropped
                            .fetch_add(delivery.slow, Ordering::Relaxed);
                    }
                    return delivery;
                }
                Err(_removed) => self.forget_topic(&topic),
            }
        }
    }

    /// Drops topics that have had no members and no messages for the retention
    /// period. Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let retention = self.limits.topic_retention;
        let idle: Vec<Arc<Topic>> = {
            let topics = self.topics.pin();
            topics
                .values()
                .filter(|t| t.retire_if_idle(retention))
                .cloned()
                .collect()
        };
        for topic in &idle {
            self.forget_topic(topic);
        }
        idle.len()
    }

    /// Asks every connection to close.
    pub fn close_all(&self, close: &Close) {
        for conn in self.all_conns() {
            conn.queue.close(close.clone());
        }
    }
}
