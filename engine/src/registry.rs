//! The registry: every live connection (in a slab, with generation-checked ids)
//! together with the topics it is in, the user → connections index, and the topic
//! map. It is where subscribe, unsubscribe, disconnect-cleanup and publish meet,
//! and it owns the lock order: a connection's subscription lock (several of them
//! in connection-id order) before any topic's member lock.
//!
//! The slab and the user index are locked only on connect, disconnect and lookups
//! by id or user. The topic map is lock-free (papaya), so publishers find a topic
//! without any lock; the fan-out itself is in [`Topic::publish`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::{Mutex, MutexGuard};
use slab::Slab;

use crate::{
    conn::{Conn, ConnId},
    history::{Budget, HistoryRules, Kept, Position, Recovery, Since},
    presence::{EventKind, PresenceHub},
    protocol::Payload,
    queue::{Close, Queue},
    stats::{Counters, Stats},
    topic::{Change, Dedup, Delivery, Topic},
    topic_name::{self, TopicError},
};

/// Limits the registry enforces.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Longest topic name.
    pub(crate) max_topic_len: usize,
    /// Most topics per connection.
    pub(crate) max_subscriptions: usize,
    /// Outgoing queue bound, in messages.
    pub(crate) queue_max_messages: usize,
    /// Outgoing queue bound, in bytes.
    pub(crate) queue_max_bytes: usize,
    /// How long idempotency keys are remembered.
    pub(crate) idempotency_window: Duration,
    /// Most idempotency keys the node holds in all topics together.
    pub(crate) idempotency_max_keys: usize,
    /// How long an idle topic keeps its state.
    pub(crate) topic_retention: Duration,
}

/// Why a subscribe was refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubscribeError {
    /// A topic name breaks the rule.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// A connection would exceed its subscription limit.
    #[error(
        "connection {conn}: subscribing would make {would_be} subscriptions; the limit per connection is {max}"
    )]
    TooMany {
        /// The connection.
        conn: ConnId,
        /// The count after the subscribe.
        would_be: usize,
        /// The limit.
        max: usize,
    },
    /// Every connection named has closed.
    #[error("the connection is closed")]
    Closed,
}

/// The topics a connection is in. Reached only through [`Entry`], under the lock
/// order this module keeps.
#[derive(Debug, Default)]
struct Subscriptions {
    /// The topics, in subscription order.
    topics: Vec<Arc<Topic>>,
    /// Set once the connection has left the registry: nothing may be added.
    closed: bool,
}

impl Subscriptions {
    fn contains(&self, name: &str) -> bool {
        self.topics.iter().any(|t| t.name() == name)
    }
}

/// A connection as the registry holds it: its shared state and its topics.
#[derive(Debug)]
pub(crate) struct Entry {
    conn: Arc<Conn>,
    subscriptions: Mutex<Subscriptions>,
}

impl Entry {
    /// The connection.
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

/// All connections and topics of this node.
#[derive(Debug)]
pub(crate) struct Registry {
    conns: Mutex<Slab<Arc<Entry>>>,
    generation: std::sync::atomic::AtomicU32,
    users: Mutex<HashMap<Arc<str>, Vec<Arc<Entry>>>>,
    topics: papaya::HashMap<Arc<str>, Arc<Topic>>,
    presence: Arc<PresenceHub>,
    limits: Limits,
    dedup: Dedup,
    counters: Arc<Counters>,
    /// Which topics keep history, and how much.
    history_rules: HistoryRules,
    /// The node-wide bound over all history.
    budget: Budget,
}

/// Per topic asked to recover, in name order: how it went.
pub(crate) type Recoveries = Vec<(String, Recovery)>;

/// What a subscribe did, per connection reached.
#[derive(Debug, Default)]
pub(crate) struct Subscribed {
    /// For each connection reached: the recovery of each topic it asked to
    /// recover (topics named in `since`).
    pub(crate) connections: Vec<(Arc<Conn>, Recoveries)>,
}

/// A page of a topic's history (see [`Registry::history`]).
#[derive(Debug, Default)]
pub(crate) struct HistoryPage {
    /// The messages, in the order asked for.
    pub(crate) messages: Vec<Kept>,
    /// The topic's position now (an empty epoch: no such topic on this node).
    pub(crate) position: Position,
    /// The oldest sequence number still kept; 0 when none is.
    pub(crate) first_seq: u64,
}

impl Default for Position {
    fn default() -> Self {
        Self {
            seq: 0,
            epoch: Arc::from(""),
        }
    }
}

/// A random starting generation, so that connection ids from before a restart do
/// not name new connections.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

impl Registry {
    /// An empty registry whose membership changes feed `presence`.
    pub(crate) fn new(limits: Limits, presence: Arc<PresenceHub>) -> Self {
        Self {
            conns: Mutex::new(Slab::new()),
            generation: std::sync::atomic::AtomicU32::new(random_u32()),
            users: Mutex::new(HashMap::new()),
            topics: papaya::HashMap::new(),
            presence,
            dedup: Dedup::new(limits.idempotency_window, limits.idempotency_max_keys),
            limits,
            counters: Arc::new(Counters::default()),
            history_rules: HistoryRules::default(),
            budget: Budget::new(usize::MAX),
        }
    }

    /// Keeps history for the topics `rules` name, within `max_bytes` for the node.
    pub(crate) fn with_history(mut self, rules: HistoryRules, max_bytes: usize) -> Self {
        self.history_rules = rules;
        self.budget = Budget::new(max_bytes);
        self
    }

    /// The presence event source.
    pub(crate) fn presence(&self) -> &Arc<PresenceHub> {
        &self.presence
    }

    /// The registry's limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The node's counters, with the connection and topic gauges.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self
            .counters
            .snapshot(self.connection_count(), self.topics.len());
        stats.history_bytes = self.budget.bytes() as u64;
        stats.history_messages = self.budget.messages() as u64;
        stats.history_evicted = self.budget.evicted();
        stats
    }

    /// The node's counters and histograms, for the metrics endpoint.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Checks a topic name against the rule and the configured length.
    pub(crate) fn validate_topic(&self, name: &str) -> Result<(), TopicError> {
        topic_name::validate(name, self.limits.max_topic_len)
    }

    /// Adds a new connection and gives it an id.
    pub(crate) fn register(&self, user: Option<Arc<str>>, info: Option<Arc<str>>) -> Arc<Entry> {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = {
            let mut conns = self.conns.lock();
            let slot = conns.vacant_entry();
            let id = ConnId::new(slot.key(), generation);
            let queue = Queue::new(self.limits.queue_max_messages, self.limits.queue_max_bytes);
            let conn = Conn::new(id, user, info, queue, Arc::clone(&self.counters));
            let entry = Arc::new(Entry {
                conn: Arc::new(conn),
                subscriptions: Mutex::new(Subscriptions::default()),
            });
            slot.insert(Arc::clone(&entry));
            entry
        };
        if let Some(user) = entry.conn.user() {
            self.users
                .lock()
                .entry(Arc::clone(user))
                .or_default()
                .push(Arc::clone(&entry));
        }
        self.presence
            .connection_changed(EventKind::Connect, &entry.conn);
        entry
    }

    /// Removes a connection from every topic and from the registry. Safe to call
    /// more than once.
    pub(crate) fn unregister(&self, entry: &Entry) {
        let conn = &entry.conn;
        let left = {
            let mut subs = entry.subscriptions.lock();
            if subs.closed {
                return;
            }
            subs.closed = true;
            let topics = std::mem::take(&mut subs.topics);
            for topic in &topics {
                topic.remove(conn, &self.presence);
            }
            topics.len()
        };
        Counters::sub(&self.counters.subscriptions, left as u64);
        {
            let mut conns = self.conns.lock();
            let slot = conn.id().slot();
            if conns.get(slot).is_some_and(|e| e.conn.id() == conn.id()) {
                conns.remove(slot);
            }
        }
        if let Some(user) = conn.user() {
            let mut users = self.users.lock();
            if let Some(list) = users.get_mut(user) {
                list.retain(|e| e.conn.id() != conn.id());
                if list.is_empty() {
                    users.remove(user);
                }
            }
        }
        self.presence
            .connection_changed(EventKind::Disconnect, conn);
    }

    /// The live connection with this id.
    pub(crate) fn get(&self, id: ConnId) -> Option<Arc<Entry>> {
        self.conns
            .lock()
            .get(id.slot())
            .filter(|e| e.conn.id() == id)
            .cloned()
    }

    /// Every live connection of a user.
    pub(crate) fn user_conns(&self, user: &str) -> Vec<Arc<Entry>> {
        self.users.lock().get(user).cloned().unwrap_or_default()
    }

    /// Number of live connections.
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.lock().len()
    }

    /// The topic, if this node holds it.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.pin().get(name).cloned()
    }

    fn topic_or_create(&self, name: &str) -> Arc<Topic> {
        let topics = self.topics.pin();
        if let Some(topic) = topics.get(name) {
            return Arc::clone(topic);
        }
        let name: Arc<str> = Arc::from(name);
        let tracked = self.presence.tracks(&name);
        let history = self.history_rules.for_topic(&name);
        Arc::clone(topics.get_or_insert_with(Arc::clone(&name), || {
            Arc::new(Topic::new(name, tracked, history))
        }))
    }

    fn forget_topic(&self, topic: &Arc<Topic>) {
        let _ = self
            .topics
            .pin()
            .remove_if(topic.name(), |_, v| Arc::ptr_eq(v, topic));
    }

    /// Locks the subscription lists of `entries` in connection-id order (the lock
    /// order that lets several of them be held at once), skipping closed ones.
    fn lock_open<'a>(entries: &'a [Arc<Entry>]) -> Vec<(&'a Entry, MutexGuard<'a, Subscriptions>)> {
        let mut sorted: Vec<&Entry> = entries.iter().map(|e| &**e).collect();
        sorted.sort_unstable_by_key(|e| e.conn.id());
        sorted.dedup_by_key(|e| e.conn.id());
        sorted
            .into_iter()
            .map(|e| (e, e.subscriptions.lock()))
            .filter(|(_, subs)| !subs.closed)
            .collect()
    }

    /// Adds every open connection of `entries` to `names`, all or nothing: the
    /// names are validated and every connection's limit is checked before any of
    /// them changes. When this returns, publishers already see the new
    /// subscriptions. Topics already subscribed are left as they are.
    ///
    /// For each topic named in `since`, a connection joining it recovers: it is sent every message after its position, in
    /// order and before any live message, when the topic still keeps them all
    /// ([`Topic::add_recovering`]). A connection already in such a topic reports
    /// it not recovered, with the topic's position.
    pub(crate) fn subscribe_recovering(
        &self,
        entries: &[Arc<Entry>],
        names: &[String],
        since: &HashMap<String, Since>,
    ) -> Result<Subscribed, SubscribeError> {
        for name in names {
            self.validate_topic(name)?;
        }
        let mut locked = Self::lock_open(entries);
        if locked.is_empty() {
            return Err(SubscribeError::Closed);
        }
        let mut plans = Vec::with_capacity(locked.len());
        for (entry, subs) in &locked {
            let mut fresh: Vec<&String> = names.iter().filter(|n| !subs.contains(n)).collect();
            fresh.sort_unstable();
            fresh.dedup();
            let would_be = subs.topics.len() + fresh.len();
            if would_be > self.limits.max_subscriptions {
                return Err(SubscribeError::TooMany {
                    conn: entry.conn.id(),
                    would_be,
                    max: self.limits.max_subscriptions,
                });
            }
            plans.push(fresh);
        }
        let mut added = 0;
        let mut done = Subscribed::default();
        for ((entry, subs), fresh) in locked.iter_mut().zip(plans) {
            let mut recoveries = Vec::new();
            for name in fresh.iter().copied() {
                let topic = loop {
                    let topic = self.topic_or_create(name);
                    let change = match since.get(name) {
                        Some(since) => {
                            let (change, recovery) = topic.add_recovering(
                                &entry.conn,
                                since,
                                &self.presence,
                                &self.budget,
                            );
                            if change != Change::Removed {
                                recoveries.push((name.clone(), recovery));
                            }
                            change
                        }
                        None => topic.add(&entry.conn, &self.presence),
                    };
                    match change {
                        Change::Removed => self.forget_topic(&topic),
                        change => {
                            added += u64::from(change == Change::Changed);
                            break topic;
                        }
                    }
                };
                subs.topics.push(topic);
            }
            // Topics asked to recover that the connection was already in.
            for name in since.keys() {
                if !fresh.contains(&name)
                    && let Some(topic) = subs.topics.iter().find(|t| t.name() == name)
                {
                    let recovery = Recovery {
                        recovered: false,
                        position: topic.position(),
                    };
                    recoveries.push((name.clone(), recovery));
                }
            }
            recoveries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            recoveries.dedup_by(|a, b| a.0 == b.0);
            done.connections.push((Arc::clone(&entry.conn), recoveries));
        }
        Counters::add(&self.counters.subscriptions, added);
        Ok(done)
    }

    /// A page of `name`'s history: after `since` oldest first, or before it
    /// newest first (`reverse`); `None` when `since` names another epoch.
    pub(crate) fn history(
        &self,
        name: &str,
        since: Option<&Since>,
        limit: usize,
        reverse: bool,
    ) -> Option<HistoryPage> {
        let Some(topic) = self.topic(name) else {
            if since.is_some_and(|s| !s.epoch.is_empty()) {
                return None;
            }
            return Some(HistoryPage::default());
        };
        let (messages, position, first_seq) = topic.history(since, limit, reverse, &self.budget)?;
        Some(HistoryPage {
            messages,
            position,
            first_seq,
        })
    }

    /// Drops `name`'s kept messages; returns how many there were.
    pub(crate) fn remove_history(&self, name: &str) -> usize {
        self.topic(name)
            .map_or(0, |t| t.remove_history(&self.budget))
    }

    /// Removes every open connection of `entries` from `names` (names a
    /// connection is not in are ignored). When this returns, publishers no longer
    /// see them in those topics. Invalid names are refused. Returns how many
    /// connections were open.
    pub(crate) fn unsubscribe(
        &self,
        entries: &[Arc<Entry>],
        names: &[String],
    ) -> Result<usize, SubscribeError> {
        for name in names {
            self.validate_topic(name)?;
        }
        let mut locked = Self::lock_open(entries);
        let mut removed = 0;
        for (entry, subs) in &mut locked {
            let mut left = Vec::new();
            subs.topics.retain(|t| {
                let leave = names.iter().any(|n| n.as_str() == t.name());
                if leave {
                    left.push(Arc::clone(t));
                }
                !leave
            });
            removed += left
                .iter()
                .filter(|topic| topic.remove(&entry.conn, &self.presence) == Change::Changed)
                .count();
        }
        Counters::sub(&self.counters.subscriptions, removed as u64);
        Ok(locked.len())
    }

    /// Publishes one message to one topic on this node (the caller validated the
    /// topic and payload).
    pub(crate) fn publish(
        &self,
        name: &str,
        payload: &Payload,
        ttl: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Delivery {
        self.number_and_fan_out(name, payload, ttl, idempotency_key, true)
    }

    /// Numbers and fans out a message another node published (a cluster's topic
    /// without history): as [`Registry::publish`], but counted as delivered
    /// only — the publishing node counted it as published.
    pub(crate) fn receive(
        &self,
        name: &str,
        payload: &Payload,
        ttl: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Delivery {
        self.number_and_fan_out(name, payload, ttl, idempotency_key, false)
    }

    /// Counts a message this node accepted and handed to the cluster.
    pub(crate) fn count_published(&self) {
        Counters::add(&self.counters.published, 1);
    }

    fn number_and_fan_out(
        &self,
        name: &str,
        payload: &Payload,
        ttl: Option<Duration>,
        idempotency_key: Option<&str>,
        count_published: bool,
    ) -> Delivery {
        loop {
            let topic = self.topic_or_create(name);
            match topic.publish(payload, ttl, idempotency_key, &self.dedup, &self.budget) {
                Ok(delivery) => {
                    if count_published && !delivery.duplicate {
                        Counters::add(&self.counters.published, 1);
                    }
                    self.count_fan_out(&delivery);
                    return delivery;
                }
                Err(_removed) => self.forget_topic(&topic),
            }
        }
    }

    /// Delivers one message numbered elsewhere (see [`Topic::deliver`]): the
    /// cluster's delivery path for topics whose sequence lives in JetStream.
    /// Counted as delivered only (the publishing node counted it as published).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &self,
        name: &str,
        seq: u64,
        epoch: &Arc<str>,
        payload: &Payload,
        ttl: Option<Duration>,
        published: tokio::time::Instant,
        fan_out: bool,
    ) -> Delivery {
        loop {
            let topic = self.topic_or_create(name);
            match topic.deliver(seq, epoch, payload, ttl, published, fan_out, &self.budget) {
                Ok(delivery) => {
                    self.count_fan_out(&delivery);
                    return delivery;
                }
                Err(_removed) => self.forget_topic(&topic),
            }
        }
    }

    /// Counts what one fan-out queued and how long it took (a duplicate, or a
    /// message only kept, queued nothing).
    fn count_fan_out(&self, delivery: &Delivery) {
        Counters::add(&self.counters.delivered, delivery.queued);
        if let Some(took) = delivery.fan_out {
            let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            self.counters.fan_out_ns.observe(ns);
        }
    }

    /// Whether `name` has subscribers on this node.
    pub(crate) fn has_members(&self, name: &str) -> bool {
        self.topic(name).is_some_and(|t| t.counts().0 > 0)
    }

    /// Drops topics that have had no members and no messages for the retention
    /// period. Returns how many were dropped.
    pub(crate) fn sweep(&self) -> usize {
        let retention = self.limits.topic_retention;
        let idle: Vec<Arc<Topic>> = {
            let topics = self.topics.pin();
            topics
                .values()
                .filter(|t| t.retire_if_idle(retention, &self.dedup, &self.budget))
                .cloned()
                .collect()
        };
        // Entries of retired topics and expired messages leave the node-wide FIFO
        // as it is trimmed.
        self.budget.enforce();
        for topic in &idle {
            self.forget_topic(topic);
        }
        idle.len()
    }

    /// Asks every connection to close.
    pub(crate) fn close_all(&self, close: &Close) {
        let all: Vec<Arc<Entry>> = self
            .conns
            .lock()
            .iter()
            .map(|(_, e)| Arc::clone(e))
            .collect();
        for entry in all {
            entry.conn.close(close.clone());
        }
    }
}
