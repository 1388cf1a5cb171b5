//! JetStream streams of topics with history: where a cluster numbers, keeps and
//! replays the messages of every topic a `[[topics]]` rule gives history.
//!
//! One stream per such rule, named `<prefix>_h_<id>` (`id`: a stable hash of the
//! rule's pattern), over the subjects `<prefix>.h.<id>.>`; its per-subject limit
//! is the rule's `history_size`, its age limit the rule's `history_ttl`, its
//! duplicate window the idempotency window (capped by the age limit, as
//! JetStream requires). The stream republishes every stored message to the
//! topic's delivery subject `<prefix>.t.<topic>`, so nodes receive only what was
//! stored, in the stream's order.
//!
//! **Sequence.** Each message carries `Herald-Seq` and `Herald-Epoch` headers.
//! The publishing node takes the topic's head (the last stored message's stream
//! sequence, seq and epoch; read once, then remembered) and publishes the next
//! seq with `Nats-Expected-Last-Subject-Sequence` set to the head's stream
//! sequence: when another node published in between, JetStream refuses it, the
//! node reads the head again and retries. So every topic's seq is contiguous and
//! the same on every node. A topic whose messages are all gone (aged out or
//! removed) starts a new epoch at seq 1.
//!
//! **Idempotency.** `Nats-Msg-Id` is `<topic> <hex of the key>`: JetStream's
//! duplicate window drops a repeated key cluster-wide and answers with the
//! original's stream sequence.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishErrorKind,
        stream::{DirectGetErrorKind, StorageType},
    },
};
use bytes::Bytes;
use tokio::time::Instant;

use super::{Cluster, topic_tokens};
use crate::{
    broker::{BrokerError, Publication, Receipt},
    config::Config,
    history::{HistoryRule, HistoryRules},
    protocol::Payload,
};

/// Header: the message's sequence number in its topic.
pub(crate) const SEQ: &str = "Herald-Seq";
/// Header: the topic's epoch.
pub(crate) const EPOCH: &str = "Herald-Epoch";
/// Header: the payload's content type.
pub(crate) const CONTENT_TYPE: &str = "Herald-Type";
/// Header: the message's time to live in queues, in milliseconds.
pub(crate) const TTL_MS: &str = "Herald-Ttl-Ms";
/// Header: the idempotency key of a message of a topic without history.
pub(crate) const KEY: &str = "Herald-Key";
/// Header JetStream sets on republished messages: the stream sequence.
const STREAM_SEQ: &str = "Nats-Sequence";

/// How often a publish is retried when another node published first.
const RETRIES: usize = 16;

/// One rule's stream.
#[derive(Debug)]
pub(crate) struct StreamDef {
    id: String,
    name: String,
    rule: HistoryRule,
}

/// The last stored message of a topic, as its publishers know it.
#[derive(Debug, Clone)]
struct Head {
    stream_seq: u64,
    seq: u64,
    epoch: Arc<str>,
}

/// A topic's head, held by its publisher on this node while it publishes.
type HeadLock = Arc<tokio::sync::Mutex<Option<Head>>>;

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// Its sequence in the stream (all topics of the rule).
    pub(crate) stream_seq: u64,
    /// Its seq in the topic.
    pub(crate) seq: u64,
    /// The topic's epoch.
    pub(crate) epoch: Arc<str>,
    /// The payload.
    pub(crate) payload: Payload,
    /// Its time to live in queues.
    pub(crate) ttl: Option<Duration>,
    /// When it was stored.
    pub(crate) at: Instant,
}

/// The history streams of this cluster.
#[derive(Debug)]
pub(crate) struct Streams {
    cluster: Arc<Cluster>,
    rules: HistoryRules,
    defs: HashMap<String, Arc<StreamDef>>,
    storage: StorageType,
    replicas: usize,
    max_bytes: i64,
    dedup_window: Duration,
    max_payload: usize,
    heads: parking_lot::Mutex<HashMap<Arc<str>, HeadLock>>,
}

/// A stable id for a rule's pattern (FNV-1a, 64 bits): the same on every node.
fn pattern_id(pattern: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pattern.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("{what}: {e}"))
}

impl Streams {
    /// The streams the rules of `config` call for (none without history rules).
    pub(crate) fn new(cluster: Arc<Cluster>, config: &Config) -> Self {
        let rules = HistoryRules::compile(&config.topics, config.max_topic_len);
        let defs = rules
            .keeping()
            .map(|(pattern, rule)| {
                let id = pattern_id(&pattern);
                let name = format!("{}_h_{id}", cluster.prefix());
                (pattern, Arc::new(StreamDef { id, name, rule }))
            })
            .collect();
        Self {
            defs,
            rules,
            storage: if config.nats_history_storage == "memory" {
                StorageType::Memory
            } else {
                StorageType::File
            },
            replicas: config.nats_history_replicas,
            max_bytes: i64::try_from(config.history_max_bytes).unwrap_or(i64::MAX),
            dedup_window: config.idempotency_window.0,
            max_payload: config.max_payload_bytes,
            heads: parking_lot::Mutex::new(HashMap::new()),
            cluster,
        }
    }

    /// The stream of `topic`'s rule, when that rule keeps history.
    pub(crate) fn stream_for(&self, topic: &str) -> Option<Arc<StreamDef>> {
        let (pattern, _) = self.rules.rule_for(topic)?;
        self.defs.get(&pattern).cloned()
    }

    /// Creates or updates every stream. Called at start and after each
    /// reconnect; nodes of one cluster must share their `[[topics]]` rules.
    pub(crate) async fn ensure(&self) -> Result<(), BrokerError> {
        let prefix = self.cluster.prefix();
        for def in self.defs.values() {
            let ttl = def.rule.ttl.unwrap_or(Duration::ZERO);
            let dedup = if ttl.is_zero() {
                self.dedup_window
            } else {
                self.dedup_window.min(ttl)
            };
            let config = jetstream::stream::Config {
                name: def.name.clone(),
                subjects: vec![format!("{prefix}.h.{}.>", def.id)],
                max_messages_per_subject: i64::try_from(def.rule.size).unwrap_or(i64::MAX),
                max_age: ttl,
                max_bytes: self.max_bytes,
                duplicate_window: dedup,
                storage: self.storage,
                num_replicas: self.replicas,
                allow_direct: true,
                republish: Some(jetstream::stream::Republish {
                    source: format!("{prefix}.h.{}.>", def.id),
                    destination: format!("{prefix}.t.>"),
                    headers_only: false,
                }),
                ..Default::default()
            };
            self.cluster
                .jetstream()
                .create_or_update_stream(config)
                .await
                .map_err(|e| unavailable(&format!("stream {}", def.name), e))?;
        }
        Ok(())
    }

    fn ingest_subject(&self, def: &StreamDef, topic: &str) -> String {
        format!(
            "{}.h.{}.{}",
            self.cluster.prefix(),
            def.id,
            topic_tokens(topic)
        )
    }

    async fn stream(&self, def: &StreamDef) -> Result<jetstream::stream::Stream<()>, BrokerError> {
        self.cluster
            .jetstream()
            .get_stream_no_info(&def.name)
            .await
            .map_err(|e| unavailable("stream", e))
    }

    /// The topic's last stored message; `None` when it has none.
    async fn read_head(&self, def: &StreamDef, topic: &str) -> Result<Option<Head>, BrokerError> {
        let stream = self.stream(def).await?;
        match stream
            .direct_get_last_for_subject(self.ingest_subject(def, topic))
            .await
        {
            Ok(m) => Ok(Some(Head {
                stream_seq: m.sequence,
                seq: header_u64(&m.headers, SEQ).unwrap_or(0),
                epoch: header_str(&m.headers, EPOCH).unwrap_or_else(|| Arc::from("")),
            })),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable("reading the topic's head", e)),
        }
    }

    /// [`Streams::read_head`], tried again for a moment when it fails: a stream
    /// just created in a JetStream cluster answers direct gets only once its
    /// replicas are up.
    async fn read_head_patiently(
        &self,
        def: &StreamDef,
        topic: &str,
    ) -> Result<Option<Head>, BrokerError> {
        let mut tries = 0;
        loop {
            match self.read_head(def, topic).await {
                Err(e) if tries < 5 && self.cluster.is_connected() => {
                    tries += 1;
                    tracing::debug!(%topic, error = %e, "topic head not readable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                done => return done,
            }
        }
    }

    fn head_lock(&self, topic: &str) -> HeadLock {
        let mut heads = self.heads.lock();
        if let Some(h) = heads.get(topic) {
            return Arc::clone(h);
        }
        let h = Arc::new(tokio::sync::Mutex::new(None));
        heads.insert(Arc::from(topic), Arc::clone(&h));
        h
    }

    /// Forgets the heads no publisher is using (they are read again when needed).
    pub(crate) fn forget_idle_heads(&self) {
        self.heads.lock().retain(|_, h| Arc::strong_count(h) > 1);
    }

    /// Publishes one message of a topic with history: numbered after the
    /// topic's last stored message, stored, then republished to every node.
    pub(crate) async fn publish(
        &self,
        def: &StreamDef,
        p: &Publication,
    ) -> Result<Receipt, BrokerError> {
        if !self.cluster.is_connected() {
            return Err(BrokerError::Unavailable("NATS is not connected".into()));
        }
        let subject = self.ingest_subject(def, &p.topic);
        let lock = self.head_lock(&p.topic);
        let mut head = lock.lock().await;
        for _ in 0..RETRIES {
            let current = match head.clone() {
                Some(h) => h,
                None => self
                    .read_head_patiently(def, &p.topic)
                    .await?
                    .unwrap_or_else(|| Head {
                        stream_seq: 0,
                        seq: 0,
                        epoch: crate::history::new_epoch(),
                    }),
            };
            let seq = current.seq + 1;
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                current.stream_seq.to_string().as_str(),
            );
            headers.insert(SEQ, seq.to_string().as_str());
            headers.insert(EPOCH, &*current.epoch);
            headers.insert(CONTENT_TYPE, p.payload.content_type());
            if let Some(ttl) = p.ttl {
                headers.insert(TTL_MS, ttl.as_millis().to_string().as_str());
            }
            if let Some(key) = &p.idempotency_key {
                headers.insert("Nats-Msg-Id", msg_id(&p.topic, key).as_str());
            }
            let ack = self
                .cluster
                .jetstream()
                .publish_with_headers(subject.clone(), headers, p.payload.data().clone())
                .await
                .map_err(|e| unavailable("publish", e))?
                .await;
            match ack {
                Ok(ack) if ack.duplicate => {
                    *head = None;
                    let original = self
                        .stream(def)
                        .await?
                        .direct_get(ack.sequence)
                        .await
                        .map_err(|e| unavailable("reading the original message", e))?;
                    return Ok(Receipt {
                        seq: header_u64(&original.headers, SEQ).unwrap_or(0),
                        duplicate: true,
                        epoch: header_str(&original.headers, EPOCH)
                            .unwrap_or_else(|| Arc::from("")),
                    });
                }
                Ok(ack) => {
                    *head = Some(Head {
                        stream_seq: ack.sequence,
                        seq,
                        epoch: Arc::clone(&current.epoch),
                    });
                    return Ok(Receipt {
                        seq,
                        duplicate: false,
                        epoch: current.epoch,
                    });
                }
                Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => {
                    *head = None;
                }
                Err(e) => {
                    *head = None;
                    return Err(unavailable("publish", e));
                }
            }
        }
        Err(BrokerError::Unavailable(format!(
            "topic {:?}: {RETRIES} publishes in a row lost the race for the next sequence number",
            p.topic
        )))
    }

    /// Every stored message of `topic` after stream sequence `after`, in order.
    pub(crate) async fn read(
        &self,
        def: &StreamDef,
        topic: &str,
        after: u64,
    ) -> Result<Vec<Stored>, BrokerError> {
        let stream = self.stream(def).await?;
        let subject = self.ingest_subject(def, topic);
        let mut out = Vec::new();
        let mut next = after + 1;
        // The subject holds at most `size` messages; more may arrive meanwhile.
        for _ in 0..def.rule.size.saturating_mul(2).saturating_add(64) {
            match stream
                .direct_get_next_for_subject(subject.clone(), Some(next))
                .await
            {
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push(self.stored(m.sequence, &m.headers, m.payload, Some(m.time)));
                }
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
                Err(e) => return Err(unavailable("reading history", e)),
            }
        }
        Ok(out)
    }

    /// Drops every stored message of `topic`; returns how many there were. The
    /// topic's next message starts a new epoch.
    pub(crate) async fn purge(&self, def: &StreamDef, topic: &str) -> Result<u64, BrokerError> {
        let lock = self.head_lock(topic);
        let mut head = lock.lock().await;
        let purged = self
            .stream(def)
            .await?
            .purge()
            .filter(self.ingest_subject(def, topic))
            .await
            .map_err(|e| unavailable("removing history", e))?;
        *head = None;
        Ok(purged.purged)
    }

    /// A message as delivered or read back. A payload the engine would not have
    /// accepted (a foreign publisher on the subject) is passed on as binary, so
    /// that the topic's sequence never stalls on it.
    pub(crate) fn stored(
        &self,
        stream_seq: u64,
        headers: &HeaderMap,
        data: Bytes,
        time: Option<async_nats::datetime::DateTime>,
    ) -> Stored {
        let content_type = header_str(headers, CONTENT_TYPE)
            .map_or_else(|| "application/octet-stream".to_owned(), |s| s.to_string());
        let payload = Payload::new(data.clone(), content_type, self.max_payload)
            .unwrap_or_else(|_| Payload::binary(data));
        let at = time
            .and_then(|t| {
                let t = SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(u64::try_from(t.unix_timestamp_nanos()).ok()?);
                let age = SystemTime::now().duration_since(t).ok()?;
                Instant::now().checked_sub(age)
            })
            .unwrap_or_else(Instant::now);
        Stored {
            stream_seq: header_u64(headers, STREAM_SEQ).unwrap_or(stream_seq),
            seq: header_u64(headers, SEQ).unwrap_or(0),
            epoch: header_str(headers, EPOCH).unwrap_or_else(|| Arc::from("")),
            payload,
            ttl: header_u64(headers, TTL_MS).map(Duration::from_millis),
            at,
        }
    }
}

/// The `Nats-Msg-Id` of an idempotency key: scoped to the topic; the key in hex
/// (keys may hold any byte, header values may not).
fn msg_id(topic: &str, key: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(topic.len() + 1 + key.len() * 2);
    out.push_str(topic);
    out.push(' ');
    for b in key.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A header's value, when present.
pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<Arc<str>> {
    headers.get(name).map(|v| Arc::from(v.as_str()))
}

/// A header's value as a number, when present and numeric.
pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_ids_are_stable_and_distinct() {
        assert_eq!(pattern_id("room:*"), pattern_id("room:*"));
        assert_ne!(pattern_id("room:*"), pattern_id("room:>"));
        assert_eq!(pattern_id("room:*").len(), 16);
    }

    #[test]
    fn message_ids_scope_keys_to_topics_and_escape_them() {
        assert_eq!(msg_id("a:b", "k\r\n"), "a:b 6b0d0a");
        assert_ne!(msg_id("a", "k"), msg_id("b", "k"));
    }
}
