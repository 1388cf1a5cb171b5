//! Presence over gRPC: member pages, constant-time counts, and `WatchPresence`
//! streams (an optional exact snapshot followed by live events; see
//! [`crate::presence`] for how the two fit together without gap or duplicate).
//!
//! In a cluster every answer covers every live node:
//!
//! - `Presence` pages walk the nodes in the order of their subject tokens
//!   ([`gather::token`]; the node id itself for ids of `A-Z a-z 0-9 - _`), each
//!   node's members in its own order; the cursor is `<token>.<that node's own
//!   cursor>`, so it stays valid while its node lives and moves on to the next
//!   node when it is gone. A page may span several nodes.
//! - `PresenceStats` adds the connections of every node; a user is counted once
//!   however many nodes hold its connections: each node sends its users' 64-bit
//!   hashes (at most [`gather::MAX_USER_HASHES`] per node) and their union is
//!   counted; when a node has more users than that, the answer is the sum of
//!   the nodes' counts (an upper bound).
//! - `WatchPresence` ([`Across`]) sends this node's snapshot, then every other
//!   node's (pages over NATS), then one SNAPSHOT_END, then the live events of
//!   every node. A node that leaves the cluster (its departure, or three missed
//!   heartbeats) has each of its members the watcher has seen sent as a LEAVE.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use futures_util::{StreamExt, stream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{HeraldService, ResponseStream};
use crate::{
    cluster::{
        gather::{
            self, Answer, Forwarded, MAX_USER_HASHES, SNAPSHOT_PAGE, SnapshotPage, SnapshotQuery,
            StatsQuery, StatsReply, kind,
        },
        nodes::{Change, Nodes, WatcherGuard},
    },
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

    /// A page of a topic's members on this node.
    pub(super) fn presence_page(
        &self,
        req: proto::PresenceRequest,
    ) -> Result<proto::PresenceResponse, Status> {
        self.check_topic(&req.topic)?;
        let limit = page_limit(req.limit)?;
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

    /// A page of a topic's members in the whole cluster.
    pub(super) async fn presence_across(
        &self,
        req: proto::PresenceRequest,
    ) -> Result<proto::PresenceResponse, Status> {
        let Some(nodes) = &self.nodes else {
            return self.presence_page(req);
        };
        self.check_topic(&req.topic)?;
        let limit = page_limit(req.limit)?;
        self.need_nats()?;
        let (from, mut local) = match req.cursor.split_once('.') {
            Some((token, local)) => (token.to_owned(), local.to_owned()),
            None if req.cursor.is_empty() => (String::new(), String::new()),
            None => {
                return Err(Status::invalid_argument(
                    "cursor is not one this cluster issued for this topic",
                ));
            }
        };
        let mut all: Vec<(String, String)> = nodes
            .all()
            .into_iter()
            .map(|b| (gather::token(&b.node_id), b.node_id))
            .collect();
        all.sort();
        let start = all.partition_point(|(token, _)| *token < from);
        if all.get(start).is_none_or(|(token, _)| *token != from) {
            // The cursor's node has left: its members have too.
            local.clear();
        }
        let mut members = Vec::new();
        let mut next_cursor = String::new();
        for (token, node) in all.iter().skip(start) {
            let remaining = limit - members.len();
            if remaining == 0 {
                next_cursor = format!("{token}.");
                break;
            }
            let query = proto::PresenceRequest {
                topic: req.topic.clone(),
                limit: remaining as u32,
                cursor: std::mem::take(&mut local),
            };
            let page = if *node == *self.node_id {
                self.presence_page(query)?
            } else {
                match gather::ask(nodes, node, kind::PRESENCE, &query).await? {
                    Answer::Ok(page) => page,
                    Answer::Gone => continue,
                }
            };
            members.extend(page.members);
            if !page.next_cursor.is_empty() {
                next_cursor = format!("{token}.{}", page.next_cursor);
                break;
            }
        }
        Ok(proto::PresenceResponse {
            members,
            next_cursor,
        })
    }

    /// A topic's counts on this node; with `hashes`, its users' hashes too
    /// (when it has at most [`MAX_USER_HASHES`] of them).
    pub(super) fn local_stats(&self, topic: &str, hashes: bool) -> Result<StatsReply, Status> {
        self.check_topic(topic)?;
        let Some(topic) = self.registry.topic(topic) else {
            return Ok(StatsReply::default());
        };
        let (connections, users) = topic.counts();
        let mut user_hashes = Vec::new();
        if hashes && users > 0 && users <= MAX_USER_HASHES {
            let mut seen = std::collections::HashSet::with_capacity(users);
            let mut after = None;
            loop {
                let page = topic.members_after(after, 4096);
                for conn in &page {
                    if let Some(user) = conn.user() {
                        seen.insert(gather::user_hash(user));
                    }
                }
                match page.last() {
                    Some(last) if page.len() == 4096 => after = Some(last.id()),
                    _ => break,
                }
            }
            user_hashes = seen.into_iter().collect();
        }
        Ok(StatsReply {
            connections: connections as u64,
            users: users as u64,
            user_hashes,
        })
    }

    /// A topic's counts in the whole cluster (see the module docs for users).
    pub(super) async fn stats_across(
        &self,
        req: proto::PresenceStatsRequest,
    ) -> Result<proto::PresenceStatsResponse, Status> {
        let Some(nodes) = &self.nodes else {
            let here = self.local_stats(&req.topic, false)?;
            return Ok(proto::PresenceStatsResponse {
                connections: here.connections,
                users: here.users,
            });
        };
        let here = self.local_stats(&req.topic, true)?;
        self.need_nats()?;
        let query = StatsQuery {
            topic: req.topic.clone(),
        };
        let there = gather::ask_all::<_, StatsReply>(nodes, kind::STATS, &query).await;
        let mut connections = 0;
        let mut sum = 0;
        let mut exact = true;
        let mut users = std::collections::HashSet::new();
        for reply in std::iter::once(Ok(here)).chain(there.into_iter().map(|(_, r)| r)) {
            let reply = reply?;
            connections += reply.connections;
            sum += reply.users;
            exact &= reply.users == 0 || !reply.user_hashes.is_empty();
            users.extend(reply.user_hashes);
        }
        Ok(proto::PresenceStatsResponse {
            connections,
            users: if exact { users.len() as u64 } else { sum },
        })
    }

    /// A page of this node's members of the topics matching a remote watcher's
    /// patterns. Forwarding of this node's events is on before the page's
    /// sequence number is read.
    pub(super) fn snapshot_page(&self, query: SnapshotQuery) -> Result<SnapshotPage, Status> {
        let patterns = query
            .patterns
            .iter()
            .map(|t| {
                TopicPattern::parse(t, self.config.max_topic_len)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let run = self.forwarder.as_ref().map_or(0, |f| f.ensure());
        let hub = self.registry.presence();
        let seq = hub.current_seq();
        let mut members: Vec<gather::Membership> = Vec::new();
        let mut push = |topic: &str, conns: Vec<Arc<Conn>>| {
            members.extend(conns.iter().map(|c| gather::Membership {
                topic: topic.to_owned(),
                member: Some(member(c)),
            }));
        };
        let mut cursor = Cursor::Start;
        let mut len = 0;
        if !query.after_topic.is_empty() {
            let after = match query.after_conn.as_str() {
                "" => None,
                id => Some(
                    ConnId::parse(id)
                        .ok_or_else(|| Status::invalid_argument("malformed snapshot position"))?,
                ),
            };
            if patterns.iter().any(|p| p.matches(&query.after_topic))
                && let (Some(topic), _) = hub.active_topic(&query.after_topic)
            {
                let conns = topic.members_after(after, SNAPSHOT_PAGE + 1);
                len += conns.len();
                push(&query.after_topic, conns);
            }
            cursor = Cursor::After(Arc::from(query.after_topic.as_str()));
        }
        while len <= SNAPSHOT_PAGE && cursor != Cursor::End {
            let scan = hub.scan(&patterns, &cursor, SNAPSHOT_TURN);
            for (name, topic) in scan.topics {
                if len > SNAPSHOT_PAGE {
                    break;
                }
                let conns = topic.members_after(None, SNAPSHOT_PAGE + 1 - len);
                len += conns.len();
                push(&name, conns);
            }
            cursor = scan.next;
        }
        let more = members.len() > SNAPSHOT_PAGE;
        members.truncate(SNAPSHOT_PAGE);
        Ok(SnapshotPage {
            seq,
            run,
            members,
            more,
        })
    }

    /// A `WatchPresence` stream: this node's, or the cluster's.
    pub(super) fn watch_across(
        &self,
        req: proto::WatchPresenceRequest,
    ) -> Result<ResponseStream<proto::PresenceEvent>, Status> {
        let Some(nodes) = &self.nodes else {
            return self.watch(req);
        };
        let local = self.watch(req.clone())?;
        let max_len = self.config.max_topic_len;
        let patterns = req
            .topics
            .iter()
            .map(|t| {
                TopicPattern::parse(t, max_len).map_err(|e| Status::invalid_argument(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = Across {
            nodes: Arc::clone(nodes),
            me: self.node_id.to_string(),
            patterns,
            topics: req.topics,
            snapshot: req.include_snapshot,
            connections: req.include_connections,
            local,
            events: None,
            changes: nodes.changes(),
            connected: nodes.cluster().connected(),
            known: HashMap::new(),
            fetching: VecDeque::new(),
            position: None,
            out: VecDeque::new(),
            phase: Step::Start,
            _guard: nodes.watching(),
            shutdown: self.shutdown.clone(),
        };
        Ok(Box::pin(stream::unfold(state, Across::next)))
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

/// The page size a request asks for.
fn page_limit(limit: u32) -> Result<usize, Status> {
    match limit as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(Status::invalid_argument(format!(
            "limit {n} is over the maximum page size {MAX_PAGE}"
        ))),
        n => Ok(n),
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

/// Where a cluster-wide watch is.
enum Step {
    /// Subscribing to the other nodes' events.
    Start,
    /// Sending this node's snapshot.
    Local,
    /// Reading the other nodes' snapshots.
    Remote,
    /// Live events of every node.
    Live,
    /// Ends with this status next.
    Ending(Status),
    /// Ended.
    Done,
}

/// What a watcher knows of another node: the sequence number its snapshot
/// reflects, the forwarding run that follows it, and its members of the watched
/// topics (so that they can leave when the node does).
struct Remote {
    seq: u64,
    run: u64,
    members: HashMap<(String, String), proto::Member>,
}

/// A cluster-wide `WatchPresence` stream: this node's watch ([`Watch`]) plus the
/// other nodes' snapshots (read over NATS, a page at a time) and their forwarded
/// events.
///
/// Order: the events subscription is in place before any node is asked for its
/// snapshot, and each node turns its forwarding on before it reads the
/// snapshot's sequence number; the node's events at or below that number are
/// dropped, later ones are sent after SNAPSHOT_END. Events of different topics
/// may be stamped and forwarded in different orders, so one in flight while a
/// page is read can repeat what the page shows (a JOIN of a listed member or a
/// LEAVE of an unlisted one); applied in order as set changes they give the
/// exact membership. Events of a node the watcher has not read yet are dropped:
/// its snapshot, read next, reflects them.
struct Across {
    nodes: Arc<Nodes>,
    me: String,
    patterns: Vec<TopicPattern>,
    topics: Vec<String>,
    snapshot: bool,
    connections: bool,
    local: ResponseStream<proto::PresenceEvent>,
    events: Option<async_nats::Subscriber>,
    changes: tokio::sync::broadcast::Receiver<Change>,
    connected: tokio::sync::watch::Receiver<bool>,
    known: HashMap<String, Remote>,
    /// Nodes whose snapshot is to be read, with the kind their members are sent
    /// as (SNAPSHOT at the start, JOIN for a node that joins later).
    fetching: VecDeque<(String, PresenceEventKind)>,
    /// Where the snapshot being read goes on: after this topic and connection.
    position: Option<(String, String)>,
    out: VecDeque<proto::PresenceEvent>,
    phase: Step,
    _guard: WatcherGuard,
    shutdown: CancellationToken,
}

impl Across {
    fn event(
        kind: PresenceEventKind,
        node: &str,
        topic: &str,
        member: Option<proto::Member>,
    ) -> proto::PresenceEvent {
        proto::PresenceEvent {
            kind: kind as i32,
            topic: topic.to_owned(),
            member,
            node_id: node.to_owned(),
            timestamp_ms: now_ms(),
        }
    }

    /// Ends the stream with a RESYNC: events may have been lost.
    fn resync(&mut self, why: &str) {
        self.out
            .push_back(Self::event(PresenceEventKind::Resync, &self.me, "", None));
        self.phase = Step::Ending(Status::resource_exhausted(format!("{why}; watch again")));
    }

    async fn next(mut self) -> Option<(Result<proto::PresenceEvent, Status>, Self)> {
        loop {
            if let Some(event) = self.out.pop_front() {
                return Some((Ok(event), self));
            }
            match std::mem::replace(&mut self.phase, Step::Done) {
                Step::Done => return None,
                Step::Ending(status) => return Some((Err(status), self)),
                Step::Start => self.start().await,
                Step::Local => {
                    self.phase = Step::Local;
                    let item = self.local.next().await;
                    match item {
                        Some(Ok(e)) if e.kind == PresenceEventKind::SnapshotEnd as i32 => {
                            self.phase = Step::Remote;
                        }
                        Some(Ok(e)) => return Some((Ok(e), self)),
                        Some(Err(status)) => {
                            self.phase = Step::Done;
                            return Some((Err(status), self));
                        }
                        None => self.phase = Step::Done,
                    }
                }
                Step::Remote => {
                    self.phase = Step::Remote;
                    if self.fetching.is_empty() {
                        self.phase = Step::Live;
                        if self.snapshot {
                            let end =
                                Self::event(PresenceEventKind::SnapshotEnd, &self.me, "", None);
                            return Some((Ok(end), self));
                        }
                    } else {
                        self.fetch().await;
                    }
                }
                Step::Live => {
                    self.phase = Step::Live;
                    if self.fetching.is_empty() {
                        if let Some(item) = self.live().await {
                            return Some((item, self));
                        }
                    } else {
                        self.fetch().await;
                    }
                }
            }
        }
    }

    async fn start(&mut self) {
        let cluster = self.nodes.cluster();
        if !cluster.is_connected() {
            self.phase = Step::Ending(Status::unavailable(
                "this node has no NATS connection; the other nodes cannot be watched",
            ));
            return;
        }
        let subject = gather::all_events_subject(cluster.prefix());
        match cluster.client().subscribe(subject).await {
            Ok(sub) => self.events = Some(sub),
            Err(e) => {
                self.phase = Step::Ending(Status::unavailable(format!(
                    "cannot follow the other nodes' presence events: {e}"
                )));
                return;
            }
        }
        self.fetching = self
            .nodes
            .peers()
            .into_iter()
            .map(|b| (b.node_id, PresenceEventKind::Snapshot))
            .collect();
        self.phase = if self.snapshot {
            Step::Local
        } else {
            Step::Remote
        };
    }

    /// Reads the next page of the snapshot of the first node in `fetching`.
    async fn fetch(&mut self) {
        let Some((node, as_kind)) = self.fetching.front().cloned() else {
            return;
        };
        let (after_topic, after_conn) = self.position.take().unwrap_or_default();
        let first = after_topic.is_empty();
        let query = SnapshotQuery {
            patterns: self.topics.clone(),
            after_topic,
            after_conn,
        };
        let page: SnapshotPage = match gather::ask(&self.nodes, &node, kind::SNAPSHOT, &query).await
        {
            Ok(Answer::Ok(page)) => page,
            Ok(Answer::Gone) => {
                self.fetching.pop_front();
                self.known.remove(&node);
                return;
            }
            Err(status) => {
                self.phase = Step::Ending(status);
                return;
            }
        };
        if first {
            self.known.insert(
                node.clone(),
                Remote {
                    seq: page.seq,
                    run: page.run,
                    members: HashMap::new(),
                },
            );
        }
        let send = as_kind == PresenceEventKind::Join || self.snapshot;
        let Some(remote) = self.known.get_mut(&node) else {
            return;
        };
        let mut last = None;
        for m in page.members {
            let Some(member) = m.member else { continue };
            last = Some((m.topic.clone(), member.connection_id.clone()));
            if send {
                self.out
                    .push_back(Self::event(as_kind, &node, &m.topic, Some(member.clone())));
            }
            remote
                .members
                .insert((m.topic, member.connection_id.clone()), member);
        }
        match last {
            Some(position) if page.more => self.position = Some(position),
            _ => {
                self.fetching.pop_front();
            }
        }
    }

    /// The next live item, or `None` when only state changed.
    async fn live(&mut self) -> Option<Result<proto::PresenceEvent, Status>> {
        let Some(events) = self.events.as_mut() else {
            self.phase = Step::Done;
            return None;
        };
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {
                self.phase = Step::Done;
                Some(Err(Status::unavailable("server shutting down")))
            }
            item = self.local.next() => {
                match &item {
                    Some(Ok(_)) => {}
                    _ => self.phase = Step::Done,
                }
                item
            }
            change = self.changes.recv() => {
                match change {
                    Ok(Change::Joined(node)) => {
                        let node = node.to_string();
                        if node != self.me
                            && !self.known.contains_key(&node)
                            && !self.fetching.iter().any(|(n, _)| *n == node)
                        {
                            self.fetching.push_back((node, PresenceEventKind::Join));
                        }
                    }
                    Ok(Change::Left(node)) => self.left(&node),
                    Err(_) => self.resync("missed changes of the cluster's nodes"),
                }
                None
            }
            changed = self.connected.changed() => {
                if changed.is_err() || !*self.connected.borrow_and_update() {
                    self.resync("this node lost its NATS connection");
                }
                None
            }
            msg = events.next() => {
                match msg {
                    Some(msg) => self.remote_event(&msg.payload),
                    None => self.resync("the other nodes' events stopped"),
                }
                None
            }
        }
    }

    /// A node left: its members leave.
    fn left(&mut self, node: &str) {
        self.fetching.retain(|(n, _)| n != node);
        if self.fetching.is_empty() {
            self.position = None;
        }
        let Some(remote) = self.known.remove(node) else {
            return;
        };
        let mut members: Vec<_> = remote.members.into_iter().collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        for ((topic, _), member) in members {
            self.out.push_back(Self::event(
                PresenceEventKind::Leave,
                node,
                &topic,
                Some(member),
            ));
        }
    }

    /// One forwarded event of another node.
    fn remote_event(&mut self, payload: &[u8]) {
        use prost::Message as _;
        let Ok(f) = Forwarded::decode(payload) else {
            return;
        };
        let Some(remote) = self.known.get_mut(&f.node_id) else {
            return;
        };
        let resync = f.kind == PresenceEventKind::Resync as i32;
        if f.run != remote.run {
            if !resync {
                self.resync(&format!(
                    "node {} restarted its event forwarding",
                    f.node_id
                ));
            }
            return;
        }
        if resync {
            self.resync(&format!("node {} lost presence events", f.node_id));
            return;
        }
        if f.seq <= remote.seq {
            return;
        }
        let Some(member) = f.member else { return };
        let kind = PresenceEventKind::try_from(f.kind).unwrap_or(PresenceEventKind::Unspecified);
        match kind {
            PresenceEventKind::Join | PresenceEventKind::Leave => {
                if !self.patterns.iter().any(|p| p.matches(&f.topic)) {
                    return;
                }
                let key = (f.topic.clone(), member.connection_id.clone());
                if kind == PresenceEventKind::Join {
                    remote.members.insert(key, member.clone());
                } else {
                    remote.members.remove(&key);
                }
            }
            PresenceEventKind::Connect | PresenceEventKind::Disconnect => {
                if !self.connections {
                    return;
                }
            }
            _ => return,
        }
        self.out.push_back(proto::PresenceEvent {
            kind: kind as i32,
            topic: f.topic,
            member: Some(member),
            node_id: f.node_id,
            timestamp_ms: f.timestamp_ms,
        });
    }
}
