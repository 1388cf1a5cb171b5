//! Presence events: the watchers of `WatchPresence` and how join, leave, connect
//! and disconnect events reach them.
//!
//! Events are produced where membership changes, under the topic's member lock,
//! and stamped with a node-wide sequence number. A watcher that asks for a
//! snapshot reads each topic's members under the same lock together with the
//! current sequence number, and later drops every event of that topic stamped at
//! or below it: events before the snapshot are in it, events after it are not, so
//! the view is exact — nothing missing, nothing twice.
//!
//! The watcher list is an arc-swap snapshot, so producing an event takes no lock
//! beyond the member lock already held, and with no watcher it costs one atomic
//! load. Each watcher has a bounded buffer; when it is full the watcher is marked
//! overflowed and receives a RESYNC event instead of a silently wrong view.
//! Publishing never produces presence events.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::{conn::Conn, topic_name::TopicPattern};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// A connection joined a topic.
    Join,
    /// A connection left a topic.
    Leave,
    /// A connection opened.
    Connect,
    /// A connection closed.
    Disconnect,
}

/// One presence event.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// What happened.
    pub(crate) kind: EventKind,
    /// The topic (join and leave only).
    pub(crate) topic: Option<Arc<str>>,
    /// The connection.
    pub(crate) conn: Arc<Conn>,
    /// Node-wide order of membership changes.
    pub(crate) seq: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) timestamp_ms: i64,
}

/// One `WatchPresence` subscriber.
#[derive(Debug)]
pub(crate) struct Watcher {
    patterns: Vec<TopicPattern>,
    connections: bool,
    tx: mpsc::Sender<Event>,
    overflowed: AtomicBool,
}

impl Watcher {
    /// Whether the watcher lost events and must start over.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    fn wants(&self, event: &Event) -> bool {
        match &event.topic {
            Some(topic) => self.patterns.iter().any(|p| p.matches(topic)),
            None => self.connections,
        }
    }

    fn offer(&self, event: &Event) {
        if self.overflowed() || !self.wants(event) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event.clone()) {
            self.overflowed.store(true, Ordering::Release);
        }
    }
}

/// Removes its watcher from the hub when dropped (when the stream ends).
#[derive(Debug)]
pub(crate) struct WatchGuard {
    hub: Arc<PresenceHub>,
    watcher: Arc<Watcher>,
}

impl WatchGuard {
    /// The watcher.
    pub(crate) fn watcher(&self) -> &Arc<Watcher> {
        &self.watcher
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.hub.watchers.rcu(|list| {
            list.iter()
                .filter(|w| !Arc::ptr_eq(w, &self.watcher))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

/// The node's presence event source.
#[derive(Debug)]
pub(crate) struct PresenceHub {
    seq: AtomicU64,
    watchers: ArcSwap<Vec<Arc<Watcher>>>,
    tracked: Vec<TopicPattern>,
}

impl PresenceHub {
    /// A hub producing join/leave events for topics matching `tracked`.
    pub(crate) fn new(tracked: Vec<TopicPattern>) -> Self {
        Self {
            seq: AtomicU64::new(0),
            watchers: ArcSwap::from_pointee(Vec::new()),
            tracked,
        }
    }

    /// Whether join/leave events are produced for `topic`.
    pub(crate) fn tracks(&self, topic: &str) -> bool {
        self.tracked.iter().any(|p| p.matches(topic))
    }

    /// The sequence number of the latest event. Read under a topic's member lock
    /// it separates that topic's past events from its future ones.
    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Registers a watcher with a buffer of `buffer` events.
    pub(crate) fn watch(
        self: &Arc<Self>,
        patterns: Vec<TopicPattern>,
        connections: bool,
        buffer: usize,
    ) -> (WatchGuard, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let watcher = Arc::new(Watcher {
            patterns,
            connections,
            tx,
            overflowed: AtomicBool::new(false),
        });
        self.watchers.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(Arc::clone(&watcher));
            list
        });
        (
            WatchGuard {
                hub: Arc::clone(self),
                watcher,
            },
            rx,
        )
    }

    /// Produces a join or leave event. Called under the topic's member lock.
    pub(crate) fn member_changed(&self, kind: EventKind, topic: &Arc<str>, conn: &Arc<Conn>) {
        self.emit(kind, Some(topic), conn);
    }

    /// Produces a connect or disconnect event.
    pub(crate) fn connection_changed(&self, kind: EventKind, conn: &Arc<Conn>) {
        self.emit(kind, None, conn);
    }

    fn emit(&self, kind: EventKind, topic: Option<&Arc<str>>, conn: &Arc<Conn>) {
        let watchers = self.watchers.load();
        if watchers.is_empty() {
            return;
        }
        let event = Event {
            kind,
            topic: topic.cloned(),
            conn: Arc::clone(conn),
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            timestamp_ms: now_ms(),
        };
        for watcher in watchers.iter() {
            watcher.offer(&event);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
