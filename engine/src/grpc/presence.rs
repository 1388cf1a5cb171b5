//! Presence over gRPC: member pages, constant-time counts, and `WatchPresence`
//! streams (an optional exact snapshot followed by live events; see
//! [`crate::presence`] for how the two fit together without gap or duplicate).

use std::{collections::HashMap, sync::Arc};

use futures_util::stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{HeraldService, ResponseStream};
use crate::{
    conn::{Conn, ConnId},
    presence::{Event, EventKind, WatchGuard, now_ms},
    proto::{self, PresenceEventKind},
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
        let after =
            match req.cursor.as_str() {
                "" => None,
                c => Some(ConnId::parse(c).ok_or_else(|| {
                    Status::invalid_argument("cursor is not one this engine issued")
                })?),
            };
        let Some(topic) = self.registry.topic(&req.topic) else {
            return Ok(proto::PresenceResponse::default());
        };
        let mut page = topic.members_after(after, limit + 1);
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|c| c.id().to_string()).unwrap_or_default()
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
        let mut initial = Vec::new();
        let mut seen = HashMap::new();
        if req.include_snapshot {
            for topic in self.registry.topics() {
                if !topic.tracked() || !patterns.iter().any(|p| p.matches(topic.name())) {
                    continue;
                }
                let (members, seq) = topic.presence_snapshot(hub);
                let now = now_ms();
                initial.extend(members.iter().map(|c| proto::PresenceEvent {
                    kind: PresenceEventKind::Snapshot as i32,
                    topic: topic.name().to_owned(),
                    member: Some(member(c)),
                    node_id: self.node_id.to_string(),
                    timestamp_ms: now,
                }));
                seen.insert(Arc::clone(topic.name_arc()), seq);
            }
            initial.push(self.marker(PresenceEventKind::SnapshotEnd));
        }
        let state = Watch {
            phase: Phase::Live,
            initial: initial.into_iter(),
            rx,
            seen,
            guard,
            node_id: Arc::clone(&self.node_id),
            resync: self.marker(PresenceEventKind::Resync),
            shutdown: self.shutdown.clone(),
        };
        Ok(Box::pin(stream::unfold(state, Watch::next)))
    }

    fn marker(&self, kind: PresenceEventKind) -> proto::PresenceEvent {
        proto::PresenceEvent {
            kind: kind as i32,
            topic: String::new(),
            member: None,
            node_id: self.node_id.to_string(),
            timestamp_ms: now_ms(),
        }
    }
}

enum Phase {
    Live,
    ResyncSent,
    Done,
}

/// The state of one `WatchPresence` stream.
struct Watch {
    phase: Phase,
    initial: std::vec::IntoIter<proto::PresenceEvent>,
    rx: mpsc::Receiver<Event>,
    /// Per snapshotted topic, the last event sequence the snapshot reflects.
    seen: HashMap<Arc<str>, u64>,
    guard: WatchGuard,
    node_id: Arc<str>,
    resync: proto::PresenceEvent,
    shutdown: CancellationToken,
}

impl Watch {
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
            Phase::Live => {}
        }
        if let Some(event) = self.initial.next() {
            return Some((Ok(event), self));
        }
        loop {
            if self.guard.watcher().overflowed() {
                self.phase = Phase::ResyncSent;
                let resync = self.resync.clone();
                return Some((Ok(resync), self));
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
            if let Some(topic) = &event.topic
                && self.seen.get(topic).is_some_and(|s| event.seq <= *s)
            {
                continue;
            }
            let kind = match event.kind {
                EventKind::Join => PresenceEventKind::Join,
                EventKind::Leave => PresenceEventKind::Leave,
                EventKind::Connect => PresenceEventKind::Connect,
                EventKind::Disconnect => PresenceEventKind::Disconnect,
            };
            let out = proto::PresenceEvent {
                kind: kind as i32,
                topic: event.topic.as_deref().unwrap_or_default().to_owned(),
                member: Some(member(&event.conn)),
                node_id: self.node_id.to_string(),
                timestamp_ms: event.timestamp_ms,
            };
            return Some((Ok(out), self));
        }
    }
}
