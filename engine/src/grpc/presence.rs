//! Presence over gRPC: member pages, constant-time counts, and `WatchPresence`
//! streams (an optional exact snapshot followed by live events; see
//! [`crate::presence`] for how the two fit together without gap or duplicate).

use std::{collections::VecDeque, sync::Arc};

use futures_util::stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{HeraldService, ResponseStream};
use crate::{
    conn::{Conn, ConnId},
    presence::{Cursor, Event, EventKind, PresenceHub, WatchGuard, now_ms},
    proto::{self, PresenceEventKind},
    snapshot::Snapshot,
    topic::Topic,
    topic_name::TopicPattern,
};

/// Page size when the request does not say.
const DEFAULT_PAGE: usize = 1000;
/// Largest page a request may ask for.
const MAX_PAGE: usize = 10_000;

/// A connection as a presence member.
pub(super) fn member(conn: &Conn) -> proto::Member {
    proto::Member {
        connection_id: conn.id().to_string(),
        user_id: conn.user().map(|u| u.to_string()).unwrap_or_default(),
        info: conn.info().map(|i| i.to_string()).unwrap_or_default(),
    }
}

impl HeraldService {
    /// A page cursor: the last member's id and a tag keyed per process over the
    /// topic and that id (32 hex digits).
    fn cursor(&self, topic: &str, after: ConnId) -> String {
        format!("{after}{:016x}", self.cursor_tag(topic, after))
    }

    fn cursor_tag(&self, topic: &str, after: ConnId) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut hasher = self.cursor_key.build_hasher();
        topic.hash(&mut hasher);
        after.hash(&mut hasher);
        hasher.finish()
    }

    /// The member id a cursor this node issued for `topic` stands for.
    fn open_cursor(&self, topic: &str, cursor: &str) -> Option<ConnId> {
        let after = ConnId::parse(cursor.get(..16)?)?;
        let tag = u64::from_str_radix(cursor.get(16..)?, 16).ok()?;
        (cursor.len() == 32 && tag == self.cursor_tag(topic, after)).then_some(after)
    }

    pub(super) fn presence_page(
        &self,
        req: proto::PresenceRequest,
    ) -> Result<proto::PresenceResponse, Status> {
        self.check_topic(&req.topic)?;
        let limit = match req.limit as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum page size {MAX_PAGE}"
                )));
            }
            n => n,
        };
        let after = match req.cursor.as_str() {
            "" => None,
            c => Some(self.open_cursor(&req.topic, c).ok_or_else(|| {
                Status::invalid_argument("cursor is not one this engine issued for this topic")
            })?),
        };
        let Some(topic) = self.registry.topic(&req.topic) else {
            return Ok(proto::PresenceResponse::default());
        };
        let mut page = topic.members_after(after, limit + 1);
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last()
                .map(|c| self.cursor(&req.topic, c.id()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let members = page.iter().map(|c| member(c)).collect();
        Ok(proto::PresenceResponse {
            members,
            next_cursor,
        })
    }

    pub(super) fn watch(
        &self,
        req: proto::WatchPresenceRequest,
    ) -> Result<ResponseStream<proto::PresenceEvent>, Status> {
        if req.topics.is_empty() && !req.include_connections {
            return Err(Status::invalid_argument(
                "name at least one topic or pattern, or set include_connections",
            ));
        }
        // Every event is matched against every pattern of every watcher.
        if req.topics.len() > self.config.max_topics_per_command {
            return Err(Status::invalid_argument(format!(
                "{} topics or patterns; one WatchPresence takes at most {} (max_topics_per_command)",
                req.topics.len(),
                self.config.max_topics_per_command
            )));
        }
        let permit = Arc::clone(&self.watchers).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node serves its limit of {} WatchPresence streams (max_presence_watchers)",
                self.config.max_presence_watchers
            ))
        })?;
        let max_len = self.config.max_topic_len;
        let patterns = req
            .topics
            .iter()
            .map(|t| {
                TopicPattern::parse(t, max_len).map_err(|e| Status::invalid_argument(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hub = self.registry.presence();
        if let Some(TopicPattern::Exact(t)) = patterns
            .iter()
            .find(|p| matches!(p, TopicPattern::Exact(t) if !hub.tracks(t)))
        {
            return Err(Status::failed_precondition(format!(
                "presence events are not tracked for topic {t:?} (see presence_topics)"
            )));
        }

        // Register first, then snapshot: every change after registration is either
        // in the snapshot or arrives as an event (see crate::presence).
        let (guard, rx) = hub.watch(
            patterns.clone(),
            req.include_connections,
            self.config.presence_watch_buffer,
        );
        let state = Watch {
            phase: if req.include_snapshot {
                Phase::Snapshot
            } else {
                Phase::Live
            },
            hub: Arc::clone(hub),
            permits: hub.snapshot_permits(self.config.presence_max_snapshots),
            patterns,
            cursor: Cursor::Start,
            resolved: VecDeque::new(),
            sent: 0,
            out: VecDeque::new(),
            pending: VecDeque::new(),
            pending_limit: self.config.presence_watch_buffer,
            rx,
            guard,
            node_id: Arc::clone(&self.node_id),
            shutdown: self.shutdown.clone(),
            _permit: permit,
        };
        Ok(Box::pin(stream::unfold(state, Watch::next)))
    }
}

/// Topics a snapshot reads per turn (one permit, one range of the index).
const SNAPSHOT_TURN: usize = 256;

/// Members turned into SNAPSHOT events per step (one permit).
const SNAPSHOT_PIECE: usize = 64;

enum Phase {
    /// Sending the snapshot, one range of the topic index at a time.
    Snapshot,
    Live,
    ResyncSent,
    Done,
}

/// The state of one `WatchPresence` stream.
///
/// The snapshot is built lazily, a step at a time as the stream is read, each
/// step holding one of the node's snapshot permits. A turn reads the next range
/// of the index of topics with members ([`PresenceHub::scan`]) and each of those
/// topics' members with its sequence number, then moves every event queued so far
/// out of the watcher's buffer, dropping those the snapshot already reflects;
/// the following steps turn those members into events, a piece at a time. An event
/// of a topic is queued before that topic's snapshot is read if and only if it is
/// stamped at or below the snapshot's number, so once a range is behind the
/// cursor every later event of it is news: no per-topic state outlives its turn,
/// and a watcher holds at most one turn of topics (their member lists are the
/// shared subscriber snapshots), one piece of events and a bounded buffer.
struct Watch {
    phase: Phase,
    hub: Arc<PresenceHub>,
    permits: Arc<Semaphore>,
    patterns: Vec<TopicPattern>,
    cursor: Cursor,
    /// Topics read but not yet sent, in name order, with their members.
    resolved: VecDeque<(Arc<str>, Arc<Snapshot>)>,
    /// Members of the first topic in `resolved` already turned into events.
    sent: usize,
    /// Events ready to send.
    out: VecDeque<proto::PresenceEvent>,
    /// Live events that arrived while the snapshot was being sent.
    pending: VecDeque<Event>,
    pending_limit: usize,
    rx: mpsc::Receiver<Event>,
    guard: WatchGuard,
    node_id: Arc<str>,
    shutdown: CancellationToken,
    /// The stream's place among `max_presence_watchers`.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Watch {
    fn marker(&self, kind: PresenceEventKind) -> proto::PresenceEvent {
        proto::PresenceEvent {
            kind: kind as i32,
            topic: String::new(),
            member: None,
            node_id: self.node_id.to_string(),
            timestamp_ms: now_ms(),
        }
    }

    async fn next(mut self) -> Option<(Result<proto::PresenceEvent, Status>, Self)> {
        match self.phase {
            Phase::Done => return None,
            Phase::ResyncSent => {
                self.phase = Phase::Done;
                let status = Status::resource_exhausted(
                    "the watcher fell behind and events were lost; watch again",
                );
                return Some((Err(status), self));
            }
            Phase::Snapshot | Phase::Live => {}
        }
        loop {
            if let Some(event) = self.out.pop_front() {
                return Some((Ok(event), self));
            }
            if self.guard.watcher().overflowed() {
                self.phase = Phase::ResyncSent;
                self.resolved.clear();
                self.pending.clear();
                let resync = self.marker(PresenceEventKind::Resync);
                return Some((Ok(resync), self));
            }
            if matches!(self.phase, Phase::Snapshot) {
                if self.resolved.is_empty() && self.cursor == Cursor::End {
                    self.phase = Phase::Live;
                    let end = self.marker(PresenceEventKind::SnapshotEnd);
                    return Some((Ok(end), self));
                }
                // Every step (a range of topics, or a piece of members turned into
                // events) lets other tasks run first and holds one of the node's
                // snapshot permits, so snapshots never crowd out delivery.
                tokio::task::yield_now().await;
                let permits = Arc::clone(&self.permits);
                let permit = tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => None,
                    permit = permits.acquire() => permit.ok(),
                };
                if permit.is_none() {
                    self.phase = Phase::Done;
                    return Some((Err(Status::unavailable("server shutting down")), self));
                }
                if !self.fill() {
                    self.turn();
                }
                drop(permit);
                continue;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(self.live(&event)), self));
            }
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => None,
                event = self.rx.recv() => Some(event),
            };
            let Some(event) = next else {
                self.phase = Phase::Done;
                return Some((Err(Status::unavailable("server shutting down")), self));
            };
            let event = event?;
            return Some((Ok(self.live(&event)), self));
        }
    }

    /// Turns the next piece of members into SNAPSHOT events; false when every
    /// topic read so far has been sent.
    fn fill(&mut self) -> bool {
        while let Some((topic, members)) = self.resolved.front() {
            let now = now_ms();
            let before = self.out.len();
            self.out.extend(
                members
                    .iter()
                    .skip(self.sent)
                    .take(SNAPSHOT_PIECE)
                    .map(|c| proto::PresenceEvent {
                        kind: PresenceEventKind::Snapshot as i32,
                        topic: topic.to_string(),
                        member: Some(member(c)),
                        node_id: self.node_id.to_string(),
                        timestamp_ms: now,
                    }),
            );
            let added = self.out.len() - before;
            if added > 0 {
                self.sent += added;
                return true;
            }
            self.resolved.pop_front();
            self.sent = 0;
        }
        false
    }

    /// One turn of the snapshot (the caller holds a permit): reads the next range
    /// of topics, then sorts the events queued so far into dropped and pending.
    fn turn(&mut self) {
        let scan = self.hub.scan(&self.patterns, &self.cursor, SNAPSHOT_TURN);
        // Per topic read, the sequence number its snapshot reflects; in name order.
        let mut read: Vec<(Arc<str>, u64)> = Vec::with_capacity(scan.topics.len());
        for (name, topic) in scan.topics {
            let (members, seq) = self.read(&name, topic);
            if !members.is_empty() {
                self.resolved.push_back((Arc::clone(&name), members));
            }
            read.push((name, seq));
        }
        // Every event of these topics stamped at or below its number is queued by
        // now (it was queued under the topic's lock, or, for a topic that was empty,
        // before it left the index): take them all out.
        while let Ok(event) = self.rx.try_recv() {
            let keep = match &event.topic {
                None => true,
                Some(topic) if self.cursor.covers(topic) => true,
                Some(topic) if scan.next.covers(topic) => {
                    let at = read
                        .binary_search_by(|(name, _)| name.as_ref().cmp(topic.as_ref()))
                        .map_or(scan.seq, |i| read[i].1);
                    event.seq > at
                }
                // Not read yet: the snapshot of its range will reflect it.
                Some(_) => false,
            };
            if keep {
                if self.pending.len() >= self.pending_limit {
                    self.guard.watcher().mark_overflowed();
                    self.pending.clear();
                    break;
                }
                self.pending.push_back(event);
            }
        }
        self.cursor = scan.next;
    }

    /// The members of `topic` with their sequence number. A topic that has left
    /// the registry since the scan is replaced by its successor, or counts as
    /// empty as of a sequence number read under the index lock.
    fn read(&self, name: &str, mut topic: Arc<Topic>) -> (Arc<Snapshot>, u64) {
        loop {
            if let Some(found) = topic.presence_snapshot(&self.hub) {
                return found;
            }
            match self.hub.active_topic(name) {
                (Some(next), _) => topic = next,
                (None, seq) => return (Arc::default(), seq),
            }
        }
    }

    fn live(&self, event: &Event) -> proto::PresenceEvent {
        let kind = match event.kind {
            EventKind::Join => PresenceEventKind::Join,
            EventKind::Leave => PresenceEventKind::Leave,
            EventKind::Connect => PresenceEventKind::Connect,
            EventKind::Disconnect => PresenceEventKind::Disconnect,
        };
        proto::PresenceEvent {
            kind: kind as i32,
            topic: event.topic.as_deref().unwrap_or_default().to_owned(),
            member: Some(member(&event.conn)),
            node_id: self.node_id.to_string(),
            timestamp_ms: event.timestamp_ms,
        }
    }
}
