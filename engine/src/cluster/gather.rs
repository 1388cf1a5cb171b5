//! Scatter/gather between nodes: the request subjects every node answers on, the
//! wire messages of cluster-wide presence and control, and the forwarding of a
//! node's presence events to the other nodes' watchers.
//!
//! Each node answers requests on `<prefix>.n.<node>.<kind>` (core NATS
//! request/reply, one request per node, all in parallel, each bounded by
//! `nats_timeout`). A node that no longer has a subscription there (it died and
//! NATS closed its connection) answers "no responders" at once and counts as
//! having nothing; a node that does not answer in time makes the call
//! UNAVAILABLE. What a request does is the [`Handler`]'s business (the gRPC
//! service implements it over its registry).
//!
//! Presence events go to `<prefix>.pe.<node>` — only while some node serves a
//! cluster-wide `WatchPresence` (heartbeats say so, and every watcher's snapshot
//! request turns forwarding on before the snapshot is read) and for
//! [`super::nodes::MISSED_BEATS`] heartbeats after.

use std::{pin::Pin, sync::Arc};

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::nodes::Nodes;
use crate::presence::{Event, EventKind};

/// The request kinds, the last token of their subject.
pub(crate) mod kind {
    /// A page of a topic's members (`PresenceRequest` → `PresenceResponse`).
    pub(crate) const PRESENCE: &str = "presence";
    /// A topic's counts and user hashes ([`super::StatsQuery`] → [`super::StatsReply`]).
    pub(crate) const STATS: &str = "stats";
    /// A page of a watcher's snapshot ([`super::SnapshotQuery`] → [`super::SnapshotPage`]).
    pub(crate) const SNAPSHOT: &str = "snapshot";
    /// Whether the node holds a connection ([`super::Locate`] → [`super::Located`]).
    pub(crate) const LOCATE: &str = "locate";
    /// `SubscribeRequest` → `SubscribeResponse`, on this node's connections only.
    pub(crate) const SUBSCRIBE: &str = "subscribe";
    /// `UnsubscribeRequest` → `UnsubscribeResponse`, likewise.
    pub(crate) const UNSUBSCRIBE: &str = "unsubscribe";
    /// `DisconnectRequest` → `DisconnectResponse`, likewise.
    pub(crate) const DISCONNECT: &str = "disconnect";
}

/// A topic's counts on one node.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatsQuery {
    /// The topic.
    #[prost(string, tag = "1")]
    pub(crate) topic: String,
}

/// A topic's counts on one node, with its users as 64-bit FNV-1a hashes of
/// their ids when it has at most [`MAX_USER_HASHES`] of them.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatsReply {
    /// Member connections.
    #[prost(uint64, tag = "1")]
    pub(crate) connections: u64,
    /// Distinct users among them.
    #[prost(uint64, tag = "2")]
    pub(crate) users: u64,
    /// The users' hashes; empty when there are more than [`MAX_USER_HASHES`].
    #[prost(fixed64, repeated, tag = "3")]
    pub(crate) user_hashes: Vec<u64>,
}

/// Most user hashes one node sends for a topic (8 bytes each: 400 KB, within
/// NATS' default 1 MB message limit).
pub(crate) const MAX_USER_HASHES: usize = 50_000;

/// The 64-bit FNV-1a hash of a user id (stable across builds and nodes).
pub(crate) fn user_hash(user: &str) -> u64 {
    user.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A page of one node's members of the topics matching a watcher's patterns.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SnapshotQuery {
    /// The watcher's topics and patterns.
    #[prost(string, repeated, tag = "1")]
    pub(crate) patterns: Vec<String>,
    /// Start after this topic (empty: from the first)…
    #[prost(string, tag = "2")]
    pub(crate) after_topic: String,
    /// …and, within it, after this connection id (empty: its first member).
    #[prost(string, tag = "3")]
    pub(crate) after_conn: String,
}

/// One member of one topic.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Membership {
    /// The topic.
    #[prost(string, tag = "1")]
    pub(crate) topic: String,
    /// The member.
    #[prost(message, optional, tag = "2")]
    pub(crate) member: Option<crate::proto::Member>,
}

/// A page of a node's snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SnapshotPage {
    /// The node's presence sequence number read before the page: its forwarded
    /// events at or below it are reflected in the page.
    #[prost(uint64, tag = "1")]
    pub(crate) seq: u64,
    /// The forwarder run whose events follow (see [`Forwarded::run`]).
    #[prost(uint64, tag = "2")]
    pub(crate) run: u64,
    /// Members, in topic then connection-id order.
    #[prost(message, repeated, tag = "3")]
    pub(crate) members: Vec<Membership>,
    /// Whether the snapshot goes on after this page.
    #[prost(bool, tag = "4")]
    pub(crate) more: bool,
}

/// Members per snapshot page.
pub(crate) const SNAPSHOT_PAGE: usize = 1000;

/// Which node holds a connection.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Locate {
    /// The connection id.
    #[prost(string, tag = "1")]
    pub(crate) connection_id: String,
}

/// Whether the node holds the connection.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Located {
    /// It does.
    #[prost(bool, tag = "1")]
    pub(crate) found: bool,
}

/// One presence event of a node, as forwarded to `<prefix>.pe.<node>`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Forwarded {
    /// The node.
    #[prost(string, tag = "1")]
    pub(crate) node_id: String,
    /// `PresenceEventKind` (JOIN, LEAVE, CONNECT, DISCONNECT; RESYNC when the
    /// node lost events).
    #[prost(int32, tag = "2")]
    pub(crate) kind: i32,
    /// The topic (joins and leaves).
    #[prost(string, tag = "3")]
    pub(crate) topic: String,
    /// The member.
    #[prost(message, optional, tag = "4")]
    pub(crate) member: Option<crate::proto::Member>,
    /// The node's presence sequence number of the event.
    #[prost(uint64, tag = "5")]
    pub(crate) seq: u64,
    /// When it happened (ms since the Unix epoch).
    #[prost(int64, tag = "6")]
    pub(crate) timestamp_ms: i64,
    /// Which forwarding run of the node sent it: a watcher that sees a run it
    /// did not snapshot may have missed events and resyncs.
    #[prost(uint64, tag = "7")]
    pub(crate) run: u64,
}

/// A node's id as one subject token: itself when it is made of
/// `A-Z a-z 0-9 - _`, else its bytes in hex.
pub(crate) fn token(node_id: &str) -> String {
    if !node_id.is_empty()
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        node_id.to_owned()
    } else {
        node_id.bytes().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a node does with the requests of the others.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request of `kind` (see [`kind`]).
    fn handle(
        &self,
        kind: &str,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send + '_>>;
}

/// Reply tag: the rest is the answer.
const OK: u8 = 0;
/// Reply tag: the rest is a `herald.v1.Error`.
const ERR: u8 = 1;

fn reply_bytes(result: Result<Bytes, Status>) -> Bytes {
    let mut out = Vec::new();
    match result {
        Ok(body) => {
            out.push(OK);
            out.extend_from_slice(&body);
        }
        Err(status) => {
            out.push(ERR);
            crate::proto::Error {
                code: status.code() as i32,
                message: status.message().to_owned(),
            }
            .encode(&mut out)
            .unwrap_or_default();
        }
    }
    out.into()
}

fn parse_reply(payload: &[u8]) -> Result<Bytes, Status> {
    match payload.split_first() {
        Some((&OK, body)) => Ok(Bytes::copy_from_slice(body)),
        Some((&ERR, body)) => {
            let e = crate::proto::Error::decode(body)
                .map_err(|_| Status::internal("a node sent a malformed error"))?;
            Err(Status::new(Code::from_i32(e.code), e.message))
        }
        _ => Err(Status::internal("a node sent a malformed answer")),
    }
}

/// Answers the other nodes' requests until `stop`.
pub(crate) async fn serve(nodes: Arc<Nodes>, handler: Arc<dyn Handler>, stop: CancellationToken) {
    let cluster = nodes.cluster();
    let subject = format!("{}.n.{}.*", cluster.prefix(), token(cluster.node_id()));
    let mut requests = loop {
        match cluster.client().subscribe(subject.clone()).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to cluster requests; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(nodes.heartbeat()) => {}
                }
            }
        }
    };
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return,
            msg = requests.next() => match msg {
                Some(msg) => msg,
                None => return,
            },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Some(kind) = msg.subject.rsplit('.').next().map(str::to_owned) else {
            continue;
        };
        let handler = Arc::clone(&handler);
        let client = cluster.client().clone();
        tokio::spawn(async move {
            let answer = reply_bytes(handler.handle(&kind, msg.payload).await);
            if let Err(e) = client.publish(reply, answer).await {
                tracing::debug!(error = %e, "cluster answer not sent");
            }
        });
    }
}

/// What asking a node gave.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// Its answer.
    Ok(T),
    /// It has no responder: it is gone.
    Gone,
}

/// Asks node `node_id` one request of `kind`, within `nats_timeout`. `Gone` when
/// the node no longer listens, or sent neither an answer nor a heartbeat for the
/// whole wait; UNAVAILABLE when NATS is down or a node that still heartbeats does
/// not answer in time; the node's own error when it refused.
pub(crate) async fn ask<Q: prost::Message, R: prost::Message + Default>(
    nodes: &Nodes,
    node_id: &str,
    kind: &str,
    query: &Q,
) -> Result<Answer<R>, Status> {
    use async_nats::client::RequestErrorKind;
    let cluster = nodes.cluster();
    if !cluster.is_connected() {
        return Err(Status::unavailable(
            "this node has no NATS connection; the other nodes cannot be asked",
        ));
    }
    let subject = format!("{}.n.{}.{kind}", cluster.prefix(), token(node_id));
    let request = async_nats::Request::new()
        .payload(query.encode_to_vec().into())
        .timeout(Some(cluster.timeout()));
    let asked = tokio::time::Instant::now();
    let msg = match cluster.client().send_request(subject, request).await {
        Ok(msg) => msg,
        Err(e) if e.kind() == RequestErrorKind::NoResponders => return Ok(Answer::Gone),
        // A node that stayed silent for the whole wait, when that wait is longer
        // than its heartbeat interval, has died (SIGKILL, a lost host) before
        // the cluster noticed: counted as gone rather than failing the call.
        Err(e)
            if e.kind() == RequestErrorKind::TimedOut
                && cluster.timeout() > nodes.heartbeat()
                && !nodes.heard_since(node_id, asked) =>
        {
            tracing::debug!(node = node_id, "no answer and no heartbeat: taken as gone");
            return Ok(Answer::Gone);
        }
        Err(e) => {
            return Err(Status::unavailable(format!(
                "node {node_id} did not answer: {e}"
            )));
        }
    };
    let body = parse_reply(&msg.payload)?;
    R::decode(body)
        .map(Answer::Ok)
        .map_err(|_| Status::internal(format!("node {node_id} sent a malformed answer")))
}

/// Asks every other live node, in parallel; the answers in node-id order
/// (nodes that are gone are left out).
pub(crate) async fn ask_all<Q: prost::Message, R: prost::Message + Default>(
    nodes: &Nodes,
    kind: &str,
    query: &Q,
) -> Vec<(String, Result<R, Status>)> {
    let peers = nodes.peers();
    let asks = peers.iter().map(|peer| async move {
        let answer = ask::<Q, R>(nodes, &peer.node_id, kind, query).await;
        (peer.node_id.clone(), answer)
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(node, answer)| match answer {
            Ok(Answer::Ok(r)) => Some((node, Ok(r))),
            Ok(Answer::Gone) => None,
            Err(status) => Some((node, Err(status))),
        })
        .collect()
}

/// The subject a node forwards its presence events to.
pub(crate) fn events_subject(prefix: &str, node_id: &str) -> String {
    format!("{prefix}.pe.{}", token(node_id))
}

/// The subject of every node's forwarded presence events.
pub(crate) fn all_events_subject(prefix: &str) -> String {
    format!("{prefix}.pe.*")
}

/// Forwards this node's presence events to NATS while some node watches.
#[derive(Debug)]
pub(crate) struct Forwarder {
    nodes: Arc<Nodes>,
    /// The running forwarder: its run id and its stop.
    running: parking_lot::Mutex<Option<(u64, CancellationToken)>>,
    buffer: usize,
}

impl Forwarder {
    /// A forwarder whose event buffer holds `buffer` events.
    pub(crate) fn new(nodes: Arc<Nodes>, buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            nodes,
            running: parking_lot::Mutex::new(None),
            buffer,
        })
    }

    /// Makes sure events are being forwarded (registering the forwarder with the
    /// presence hub before returning, so every event stamped from now on goes
    /// out); returns the run id.
    pub(crate) fn ensure(self: &Arc<Self>) -> u64 {
        self.nodes.note_interest();
        let mut running = self.running.lock();
        if let Some((run, stop)) = &*running
            && !stop.is_cancelled()
        {
            return *run;
        }
        let run = random_run();
        let stop = CancellationToken::new();
        let hub = self.nodes.registry().presence();
        let (guard, rx) = hub.watch(
            vec![crate::topic_name::TopicPattern::Rest(String::new())],
            true,
            self.buffer,
        );
        *running = Some((run, stop.clone()));
        tokio::spawn(Arc::clone(self).forward(run, stop, guard, rx));
        run
    }

    async fn forward(
        self: Arc<Self>,
        run: u64,
        stop: CancellationToken,
        guard: crate::presence::WatchGuard,
        mut rx: tokio::sync::mpsc::Receiver<Event>,
    ) {
        let cluster = self.nodes.cluster();
        let node_id = cluster.node_id().to_string();
        let subject = events_subject(cluster.prefix(), &node_id);
        let mut check = tokio::time::interval(self.nodes.heartbeat());
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                _ = check.tick() => {
                    if !self.nodes.has_interest() {
                        break;
                    }
                    continue;
                }
                event = rx.recv() => event,
            };
            let Some(event) = event else { break };
            let message = forwarded(&node_id, run, &event);
            if let Err(e) = cluster
                .client()
                .publish(subject.clone(), message.encode_to_vec().into())
                .await
            {
                tracing::debug!(error = %e, "presence event not forwarded");
            }
            if guard.watcher().overflowed() {
                break;
            }
        }
        // Whoever follows this run learns that it ended (and may have lost events).
        let end = Forwarded {
            node_id: node_id.clone(),
            kind: crate::proto::PresenceEventKind::Resync as i32,
            run,
            ..Default::default()
        };
        let _ = cluster
            .client()
            .publish(subject, end.encode_to_vec().into())
            .await;
        stop.cancel();
        let mut running = self.running.lock();
        if running.as_ref().is_some_and(|(r, _)| *r == run) {
            *running = None;
        }
        drop(guard);
    }
}

fn forwarded(node_id: &str, run: u64, event: &Event) -> Forwarded {
    use crate::proto::PresenceEventKind as K;
    let kind = match event.kind {
        EventKind::Join => K::Join,
        EventKind::Leave => K::Leave,
        EventKind::Connect => K::Connect,
        EventKind::Disconnect => K::Disconnect,
    };
    Forwarded {
        node_id: node_id.to_owned(),
        kind: kind as i32,
        topic: event.topic.as_deref().unwrap_or_default().to_owned(),
        member: Some(member(&event.conn)),
        seq: event.seq,
        timestamp_ms: event.timestamp_ms,
        run,
    }
}

/// A connection as a presence member.
pub(crate) fn member(conn: &crate::conn::Conn) -> crate::proto::Member {
    crate::proto::Member {
        connection_id: conn.id().to_string(),
        user_id: conn.user().map(|u| u.to_string()).unwrap_or_default(),
        info: conn.info().map(|i| i.to_string()).unwrap_or_default(),
    }
}

fn random_run() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(crate::presence::now_ms());
    hasher.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_are_single_subject_tokens() {
        assert_eq!(token("node-1_a"), "node-1_a");
        assert_eq!(token("a.b"), "612e62");
        assert!(!token("x y>*").contains(['.', ' ', '>', '*']));
    }

    #[test]
    fn errors_travel_with_their_code() {
        let bytes = reply_bytes(Err(Status::failed_precondition("too many")));
        let e = parse_reply(&bytes).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.message(), "too many");
        let ok = reply_bytes(Ok(Bytes::from_static(b"abc")));
        assert_eq!(parse_reply(&ok).unwrap(), Bytes::from_static(b"abc"));
        assert!(parse_reply(b"").is_err());
    }

    #[test]
    fn user_hashes_are_fnv1a() {
        assert_eq!(user_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(user_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(user_hash("alice"), user_hash("bob"));
    }
}
