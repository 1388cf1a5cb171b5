//! Presence events: the watchers of `WatchPresence` and how join, leave, connect
//! and disconnect events reach them.
//!
//! Events are produced where membership changes, under the topic's member lock,
//! and stamped with a node-wide sequence number. A watcher that asks for a
//! snapshot reads each topic's members under the same lock together with the
//! current sequence number, and drops every event of that topic stamped at or
//! below it: events before the snapshot are in it, events after it are not, so
//! the view is exact — nothing missing, nothing twice.
//!
//! Snapshots only visit topics that have members. The hub keeps the tracked
//! topics with at least one member in a name-ordered index, changed only when a
//! topic gains its first member or loses its last, so an exact topic is one
//! lookup and a pattern one range of the index, however many empty topics the
//! node retains. A topic that is not in the index when a snapshot reads a range
//! of it was empty then: its last change before (a leave, produced before the
//! topic leaves the index) is stamped at or below the sequence number read under
//! the index lock, and its next change (a join, produced after the topic enters
//! the index) above it. [`PresenceHub::scan`] returns that number with each range.
//!
//! The watcher list is an arc-swap snapshot, so producing an event takes no lock
//! beyond the member lock already held (and the index lock for a first join or
//! last leave), and with no watcher it costs one atomic load. Each watcher has a
//! bounded buffer; when it is full the watcher is marked overflowed and receives a
//! RESYNC event instead of a silently wrong view. Publishing never produces
//! presence events.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};

use crate::{conn::Conn, topic::Topic, topic_name::TopicPattern};

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

    /// Marks the watcher as having lost events.
    pub(crate) fn mark_overflowed(&self) {
        self.overflowed.store(true, Ordering::Release);
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

/// How far a snapshot has read the index of topics with members, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Nothing read yet.
    Start,
    /// Every topic up to and including this name has been read.
    After(Arc<str>),
    /// Everything has been read.
    End,
}

impl Cursor {
    /// Whether `topic` lies in the part already read.
    pub(crate) fn covers(&self, topic: &str) -> bool {
        match self {
            Self::Start => false,
            Self::After(last) => topic <= &**last,
            Self::End => true,
        }
    }
}

/// One range of a snapshot: the topics with members that match, read under the
/// index lock, and the sequence number read under the same lock.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Matching topics with members, in name order.
    pub(crate) topics: Vec<(Arc<str>, Arc<Topic>)>,
    /// Every matching topic between the previous cursor and `next` that is not
    /// in `topics` was empty then: its events up to `seq` are behind the
    /// snapshot, its events after `seq` are news.
    pub(crate) seq: u64,
    /// Where the next range starts.
    pub(crate) next: Cursor,
}

/// The node's presence event source.
#[derive(Debug)]
pub(crate) struct PresenceHub {
    seq: AtomicU64,
    watchers: ArcSwap<Vec<Arc<Watcher>>>,
    tracked: Vec<TopicPattern>,
    /// Tracked topics with at least one member, by name.
    active: Mutex<BTreeMap<Arc<str>, Arc<Topic>>>,
    /// Limits the snapshots reading topics at once (see [`Self::snapshot_permits`]).
    snapshot_permits: OnceLock<Arc<Semaphore>>,
}

impl PresenceHub {
    /// A hub producing join/leave events for topics matching `tracked`.
    pub(crate) fn new(tracked: Vec<TopicPattern>) -> Self {
        Self {
            seq: AtomicU64::new(0),
            watchers: ArcSwap::from_pointee(Vec::new()),
            tracked,
            active: Mutex::new(BTreeMap::new()),
            snapshot_permits: OnceLock::new(),
        }
    }

    /// The node-wide permits for reading snapshot ranges, `limit` of them (fixed
    /// by the first call; the engine always passes its configured value).
    pub(crate) fn snapshot_permits(&self, limit: usize) -> Arc<Semaphore> {
        Arc::clone(
            self.snapshot_permits
                .get_or_init(|| Arc::new(Semaphore::new(limit.max(1)))),
        )
    }

    /// Number of tracked topics that have members.
    #[cfg(test)]
    pub(crate) fn active_topics(&self) -> usize {
        self.active.lock().len()
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

    /// Produces a join event; `first` when the topic had no member before. Called
    /// under the topic's member lock, after the member was added. A first member
    /// enters the index before the event is stamped (see the module docs).
    pub(crate) fn joined(&self, topic: &Arc<Topic>, conn: &Arc<Conn>, first: bool) {
        if first {
            self.active
                .lock()
                .insert(Arc::clone(topic.name_arc()), Arc::clone(topic));
        }
        self.emit(EventKind::Join, Some(topic.name_arc()), conn);
    }

    /// Produces a leave event; `last` when the topic has no member left. Called
    /// under the topic's member lock, after the member was removed. A topic's
    /// last member leaves the index after the event is stamped and queued.
    pub(crate) fn left(&self, topic: &Arc<Topic>, conn: &Arc<Conn>, last: bool) {
        self.emit(EventKind::Leave, Some(topic.name_arc()), conn);
        if last {
            let mut active = self.active.lock();
            if active
                .get(topic.name())
                .is_some_and(|t| Arc::ptr_eq(t, topic))
            {
                active.remove(topic.name());
            }
        }
    }

    /// The next range of a snapshot over `patterns`: up to `limit` matching topics
    /// with members, after `after`, with the sequence number that separates the
    /// past of the range's empty topics from their future. Costs a few index
    /// lookups per topic returned; empty topics are never visited.
    pub(crate) fn scan(&self, patterns: &[TopicPattern], after: &Cursor, limit: usize) -> Scan {
        let active = self.active.lock();
        let seq = self.current_seq();
        let mut topics = Vec::new();
        let mut last = match after {
            Cursor::Start => None,
            Cursor::After(name) => Some(Arc::clone(name)),
            Cursor::End => {
                return Scan {
                    topics,
                    seq,
                    next: Cursor::End,
                };
            }
        };
        loop {
            if topics.len() >= limit.max(1) {
                let next = last.map_or(Cursor::Start, Cursor::After);
                return Scan { topics, seq, next };
            }
            let found = patterns
                .iter()
                .filter_map(|p| next_match(&active, p, last.as_deref()))
                .min_by(|a, b| a.0.cmp(b.0));
            let Some((name, topic)) = found else {
                return Scan {
                    topics,
                    seq,
                    next: Cursor::End,
                };
            };
            last = Some(Arc::clone(name));
            topics.push((Arc::clone(name), Arc::clone(topic)));
        }
    }

    /// The topic with members named `name`, if there is one, with the sequence
    /// number read under the index lock (as in [`Scan::seq`]).
    pub(crate) fn active_topic(&self, name: &str) -> (Option<Arc<Topic>>, u64) {
        let active = self.active.lock();
        (active.get(name).cloned(), self.current_seq())
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

type Index = BTreeMap<Arc<str>, Arc<Topic>>;

/// The first topic in `index` after `after` that `pattern` matches. A `prefix:*`
/// pattern skips each deeper subtree in one step.
fn next_match<'a>(
    index: &'a Index,
    pattern: &TopicPattern,
    after: Option<&str>,
) -> Option<(&'a Arc<str>, &'a Arc<Topic>)> {
    let (prefix, one_segment) = match pattern {
        TopicPattern::Exact(topic) => {
            if after.is_some_and(|a| topic.as_str() <= a) {
                return None;
            }
            return index.get_key_value(topic.as_str());
        }
        TopicPattern::OneSegment(prefix) => (prefix.as_str(), true),
        TopicPattern::Rest(prefix) => (prefix.as_str(), false),
    };
    let mut from: String = match after {
        Some(a) if a >= prefix => a.to_owned(),
        _ => String::new(),
    };
    let mut inclusive = from.is_empty();
    if inclusive {
        from.push_str(prefix);
    }
    loop {
        let lower = if inclusive {
            Bound::Included(from.as_str())
        } else {
            Bound::Excluded(from.as_str())
        };
        let (name, topic) = index.range::<str, _>((lower, Bound::Unbounded)).next()?;
        let rest = name.strip_prefix(prefix)?;
        match rest.find(':') {
            Some(colon) if one_segment => {
                // Skip every topic below `prefix` + this segment: ';' follows ':'.
                from.clear();
                from.push_str(&name[..prefix.len() + colon]);
                from.push(';');
                inclusive = true;
            }
            _ if rest.is_empty() => {
                from.clear();
                from.push_str(name);
                inclusive = false;
            }
            _ => return Some((name, topic)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> TopicPattern {
        TopicPattern::parse(p, 255).unwrap_or(TopicPattern::Exact(String::new()))
    }

    /// A hub whose index holds `names`, as if each topic had a member.
    fn hub_with(names: &[String]) -> PresenceHub {
        let hub = PresenceHub::new(vec![pattern(">")]);
        {
            let mut active = hub.active.lock();
            for name in names {
                let name: Arc<str> = Arc::from(name.as_str());
                active.insert(Arc::clone(&name), Arc::new(Topic::new(name, true, None)));
            }
        }
        hub
    }

    /// Every name `patterns` select, read through `scan` in ranges of `limit`.
    fn scan_all(hub: &PresenceHub, patterns: &[TopicPattern], limit: usize) -> Vec<String> {
        let mut cursor = Cursor::Start;
        let mut names = Vec::new();
        let mut ranges = 0;
        while cursor != Cursor::End {
            let scan = hub.scan(patterns, &cursor, limit);
            assert!(scan.topics.len() <= limit);
            for (name, topic) in &scan.topics {
                assert_eq!(name.as_ref(), topic.name());
                assert!(!cursor.covers(name), "a range starts after the cursor");
                assert!(scan.next.covers(name), "a range ends at the new cursor");
            }
            names.extend(scan.topics.iter().map(|(n, _)| n.to_string()));
            cursor = scan.next;
            ranges += 1;
            assert!(ranges < 10_000, "the scan ends");
        }
        names
    }

    #[test]
    fn scans_return_exactly_the_matching_topics_in_order_without_duplicates() {
        // A deterministic pseudo-random tree of names, 1 to 4 segments deep.
        let segments = ["a", "b", "room", "room-x", "r", "z9", "A", "_", "~"];
        let mut names = std::collections::BTreeSet::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut name = Vec::new();
            for depth in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                name.push(segments[(x % segments.len() as u64) as usize]);
                if depth > 0 && x.is_multiple_of(3) {
                    break;
                }
            }
            names.insert(name.join(":"));
        }
        let names: Vec<String> = names.into_iter().collect();
        let hub = hub_with(&names);
        let cases: &[&[&str]] = &[
            &[">"],
            &["*"],
            &["room:*"],
            &["room:>"],
            &["room:a"],
            &["room:a", "room:*"],
            &["room:*", "room:a:>", "b:*", "nothing:here"],
            &["a:b", "a:b:c", "z9:>", "room-x:*", "*"],
            &["missing"],
        ];
        for case in cases {
            let patterns: Vec<_> = case.iter().map(|p| pattern(p)).collect();
            let expected: Vec<String> = names
                .iter()
                .filter(|n| patterns.iter().any(|p| p.matches(n)))
                .cloned()
                .collect();
            for limit in [1, 7, 256, 100_000] {
                assert_eq!(
                    scan_all(&hub, &patterns, limit),
                    expected,
                    "{case:?} in ranges of {limit}"
                );
            }
        }
    }

    #[test]
    fn one_segment_patterns_pass_over_deeper_topics() {
        // 10,000 topics below room:deep, one topic room:x that matches room:*.
        let mut names: Vec<String> = (0..10_000).map(|n| format!("room:deep:{n}")).collect();
        names.push("room:x".into());
        let hub = hub_with(&names);
        let index = hub.active.lock();
        let p = pattern("room:*");
        let first = next_match(&index, &p, None).map(|(n, _)| n.to_string());
        assert_eq!(first.as_deref(), Some("room:x"));
        assert!(next_match(&index, &p, Some("room:x")).is_none());
    }

    #[test]
    fn the_index_follows_first_joins_and_last_leaves() {
        let hub = PresenceHub::new(vec![pattern(">")]);
        let topic = Arc::new(Topic::new(Arc::from("room:1"), true, None));
        let conn = |n: usize| {
            Arc::new(Conn::new(
                crate::conn::ConnId::new(n, 1),
                None,
                None,
                crate::queue::Queue::new(1, 1),
                Default::default(),
            ))
        };
        let (a, b) = (conn(1), conn(2));
        assert_eq!(topic.add(&a, &hub), crate::topic::Change::Changed);
        assert_eq!(hub.active_topics(), 1);
        assert_eq!(topic.add(&b, &hub), crate::topic::Change::Changed);
        assert_eq!(topic.remove(&a, &hub), crate::topic::Change::Changed);
        assert_eq!(hub.active_topics(), 1, "one member is left");
        assert_eq!(topic.remove(&b, &hub), crate::topic::Change::Changed);
        assert_eq!(hub.active_topics(), 0);
        let (found, _) = hub.active_topic("room:1");
        assert!(found.is_none());
    }
}
