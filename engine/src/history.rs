//! Message history: the per-topic ring of recent messages that reconnecting
//! clients recover from, the node-wide memory bound over all rings, topic epochs,
//! and the `[[topics]]` rules that decide which topics keep history.
//!
//! A ring holds the frames fan-out already encoded (`Utf8Bytes`, shared by
//! reference count with every connection queue): history never copies a payload.
//! A ring lives inside its topic's publishing state ([`crate::topic`]) and is
//! only touched under the topic's publishing lock, which is what makes recovery
//! gapless (docs/architecture.md, "History and recovery").
//!
//! Rings hold contiguous sequence numbers: every message of a topic with history
//! is appended, and messages only ever leave from the front — by the rule's
//! `history_size`, by its `history_ttl`, by the node-wide bound, or all at once
//! by `RemoveHistory`. So "the first sequence still held" is all a client needs
//! to know whether it can recover.
//!
//! The node-wide bound ([`Budget`]) keeps one FIFO of every message appended to
//! any ring, in publish order. When the node holds more than `history_max_bytes`,
//! the oldest entries of that FIFO are evicted first, whatever their topic: the
//! globally oldest messages go first. An entry whose message already left its
//! ring (size, TTL) stays in the FIFO until it reaches the front and is counted
//! in the bound meanwhile (a few dozen bytes), so the bound covers the FIFO too.
//!
//! `Budget` names [`Topic`] (to evict from it) while topics hold rings: like
//! presence, this pair of modules refers to each other.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{rules::TopicRule, topic::Topic, topic_name::TopicPattern};

/// How much history a topic keeps, from the first `[[topics]]` rule matching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryRule {
    /// Most messages kept.
    pub(crate) size: usize,
    /// How long a message is kept; `None`: until size, the node bound or the
    /// topic's retirement removes it.
    pub(crate) ttl: Option<Duration>,
}

/// The history settings of every `[[topics]]` rule, in file order (the first
/// rule that matches a topic decides, as for subscribe permissions).
#[derive(Debug, Default)]
pub(crate) struct HistoryRules {
    rules: Vec<(TopicPattern, Option<HistoryRule>)>,
}

impl HistoryRules {
    /// Compiles the rules (already validated by [`crate::rules::Rules::compile`]);
    /// a rule whose pattern does not parse is skipped.
    pub(crate) fn compile(rules: &[TopicRule], max_topic_len: usize) -> Self {
        let rules = rules
            .iter()
            .filter_map(|r| {
                let pattern = TopicPattern::parse(&r.pattern, max_topic_len).ok()?;
                let history = r.history_size.filter(|n| *n > 0).map(|size| HistoryRule {
                    size,
                    ttl: r.history_ttl.map(|d| d.0),
                });
                Some((pattern, history))
            })
            .collect();
        Self { rules }
    }

    /// The rules that keep history: their pattern (as written) and settings.
    pub(crate) fn keeping(&self) -> impl Iterator<Item = (String, HistoryRule)> + '_ {
        self.rules
            .iter()
            .filter_map(|(p, h)| h.map(|h| (p.to_string(), h)))
    }

    /// The first rule matching `topic`, when it keeps history: its pattern (as
    /// written) and settings.
    pub(crate) fn rule_for(&self, topic: &str) -> Option<(String, HistoryRule)> {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(topic))
            .and_then(|(p, h)| h.map(|h| (p.to_string(), h)))
    }

    /// The history a topic keeps; `None` when the first matching rule keeps none
    /// or no rule matches.
    pub(crate) fn for_topic(&self, topic: &str) -> Option<HistoryRule> {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(topic))
            .and_then(|(_, h)| *h)
    }
}

/// Checks a pattern the way [`HistoryRules::compile`] reads it.
#[cfg(test)]
pub(crate) fn check_pattern(pattern: &str) -> Result<(), crate::topic_name::TopicError> {
    TopicPattern::parse(pattern, 255).map(|_| ())
}

/// A new random epoch: 16 hex digits, different for every topic incarnation and
/// across restarts.
pub(crate) fn new_epoch() -> Arc<str> {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    Arc::from(format!("{:016x}", hasher.finish()))
}

/// A client's position in a topic: the last sequence number it saw, in which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Since {
    /// The last sequence number seen.
    pub(crate) seq: u64,
    /// The epoch it belongs to.
    pub(crate) epoch: String,
}

/// Where a topic stands: its last sequence number and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The last sequence number published (0: none yet).
    pub(crate) seq: u64,
    /// The topic's epoch; empty when the topic does not exist on this node.
    pub(crate) epoch: Arc<str>,
}

/// The outcome of a subscribe with a `since` position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Every message after `since` was (or will be) delivered, in order, before
    /// any live message.
    pub(crate) recovered: bool,
    /// The topic's position when the subscriber joined: live messages start right
    /// after `position.seq`.
    pub(crate) position: Position,
}

/// One kept message.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// When it was published.
    pub(crate) at: Instant,
    /// The encoded `message` frame, shared with fan-out.
    pub(crate) text: Utf8Bytes,
    /// The message's own time to live in queues.
    pub(crate) expires: Option<Instant>,
    /// The content type it was published with.
    pub(crate) content_type: Arc<str>,
}

impl Kept {
    /// When it was published, on the wall clock.
    pub(crate) fn published_at(&self) -> SystemTime {
        SystemTime::now()
            .checked_sub(self.at.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// What the node-wide bound charges per kept message besides its frame: the ring
/// slot and the FIFO entry.
const KEPT_COST: usize = std::mem::size_of::<Kept>();
const ORDER_COST: usize = std::mem::size_of::<(Weak<Topic>, u64)>();

/// The node-wide memory bound over every topic's history.
#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: usize,
    bytes: AtomicUsize,
    messages: AtomicUsize,
    evicted: AtomicU64,
    /// Every message appended to a ring, oldest first.
    order: Mutex<VecDeque<(Weak<Topic>, u64)>>,
}

impl Budget {
    /// A bound of `max_bytes` over all rings.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            bytes: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// Bytes held now (frames, ring slots and FIFO entries).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Messages held now.
    pub(crate) fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Messages evicted by the node-wide bound so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Records a message appended to `topic`'s ring. Called under that topic's
    /// publishing lock, so each topic's entries are in sequence order.
    fn appended(&self, topic: Weak<Topic>, seq: u64, len: usize) {
        self.bytes
            .fetch_add(len + KEPT_COST + ORDER_COST, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.order.lock().push_back((topic, seq));
    }

    fn released(&self, len: usize) {
        self.bytes.fetch_sub(len + KEPT_COST, Ordering::Relaxed);
        self.messages.fetch_sub(1, Ordering::Relaxed);
    }

    /// Evicts the oldest messages of the node, whatever their topic, until the
    /// bound holds. Called with no topic lock held: it takes each victim's
    /// publishing lock in turn.
    pub(crate) fn enforce(&self) {
        while self.bytes() > self.max_bytes {
            let Some((topic, seq)) = self.order.lock().pop_front() else {
                return;
            };
            self.bytes.fetch_sub(ORDER_COST, Ordering::Relaxed);
            if let Some(topic) = topic.upgrade() {
                let n = topic.evict_through(seq, self);
                self.evicted.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// One topic's kept messages (contiguous sequence numbers, oldest first).
#[derive(Debug)]
pub(crate) struct Ring {
    rule: HistoryRule,
    items: VecDeque<Kept>,
    /// The content type of the last message, shared by the next ones with the same.
    last_content_type: Arc<str>,
}

impl Ring {
    /// An empty ring following `rule`.
    pub(crate) fn new(rule: HistoryRule) -> Self {
        Self {
            rule,
            items: VecDeque::new(),
            last_content_type: Arc::from(""),
        }
    }

    /// The rule's TTL, if any.
    pub(crate) fn ttl(&self) -> Option<Duration> {
        self.rule.ttl
    }

    /// Appends a message (the caller holds the topic's publishing lock), making
    /// room by the rule's size first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        topic: Weak<Topic>,
        seq: u64,
        at: Instant,
        text: Utf8Bytes,
        expires: Option<Instant>,
        content_type: &str,
        budget: &Budget,
    ) {
        self.expire(at, budget);
        while self.items.len() >= self.rule.size {
            self.pop_front(budget);
        }
        if &*self.last_content_type != content_type {
            self.last_content_type = Arc::from(content_type);
        }
        budget.appended(topic, seq, text.len());
        self.items.push_back(Kept {
            seq,
            at,
            text,
            expires,
            content_type: Arc::clone(&self.last_content_type),
        });
    }

    fn pop_front(&mut self, budget: &Budget) -> bool {
        match self.items.pop_front() {
            Some(kept) => {
                budget.released(kept.text.len());
                true
            }
            None => false,
        }
    }

    /// Drops messages older than the rule's TTL.
    pub(crate) fn expire(&mut self, now: Instant, budget: &Budget) {
        let Some(ttl) = self.rule.ttl else { return };
        while self
            .items
            .front()
            .is_some_and(|k| now.saturating_duration_since(k.at) >= ttl)
        {
            self.pop_front(budget);
        }
    }

    /// Drops every message up to `seq`; returns how many.
    pub(crate) fn evict_through(&mut self, seq: u64, budget: &Budget) -> usize {
        let mut n = 0;
        while self.items.front().is_some_and(|k| k.seq <= seq) {
            self.pop_front(budget);
            n += 1;
        }
        n
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self, budget: &Budget) {
        while self.pop_front(budget) {}
    }

    /// The oldest sequence number kept.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.items.front().map(|k| k.seq)
    }

    /// The kept messages with a sequence number greater than `seq`, oldest first.
    pub(crate) fn after(&self, seq: u64) -> impl DoubleEndedIterator<Item = &Kept> {
        let skip = match self.first_seq() {
            Some(first) if seq >= first => usize::try_from(seq - first + 1).unwrap_or(usize::MAX),
            _ => 0,
        };
        self.items.range(skip.min(self.items.len())..)
    }
}

/// The payload of a `message` frame, decoded back for gRPC `History`: the frame
/// is the only copy history keeps. `None` if the frame is not one the engine
/// encoded.
pub(crate) fn decode_payload(frame: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    // Topic names and epochs need no escaping, so the payload field is the first
    // of these keys after the header.
    let header_end = frame.find(r#""epoch":""#)?;
    let rest = &frame[header_end + 9..];
    let rest = &rest[rest.find('"')? + 2..];
    let body = rest.strip_suffix('}')?;
    if let Some(json) = body.strip_prefix(r#""data":"#) {
        Some(json.as_bytes().to_vec())
    } else if let Some(text) = body.strip_prefix(r#""text":"#) {
        serde_json::from_str::<String>(text)
            .ok()
            .map(String::into_bytes)
    } else {
        let b64 = body.strip_prefix(r#""b64":""#)?;
        let end = b64.find('"')?;
        base64::engine::general_purpose::STANDARD
            .decode(&b64[..end])
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Payload, encode_message};

    fn frame(data: &'static [u8], ct: &str) -> Utf8Bytes {
        let payload = Payload::new(bytes::Bytes::from_static(data), ct.into(), 1024).unwrap();
        encode_message("room:a", 3, "00ff", &payload)
    }

    #[test]
    fn payloads_decode_back_from_frames() {
        let cases: [(&[u8], &str); 4] = [
            (br#"{"a":[1,2]}"#, "application/json"),
            (b"he said \"hi\"\n}", "text/plain"),
            (b"\x00\xff}", "image/png"),
            (b"", ""),
        ];
        for (data, ct) in cases {
            assert_eq!(decode_payload(&frame(data, ct)).as_deref(), Some(data));
        }
        assert!(check_pattern("room:*").is_ok());
    }

    #[test]
    fn a_ring_keeps_contiguous_messages_within_size_and_budget() {
        let budget = Budget::new(usize::MAX);
        let mut ring = Ring::new(HistoryRule { size: 3, ttl: None });
        let now = Instant::now();
        for seq in 1..=5 {
            ring.push(
                Weak::new(),
                seq,
                now,
                frame(b"1", "application/json"),
                None,
                "application/json",
                &budget,
            );
        }
        assert_eq!(ring.first_seq(), Some(3));
        assert_eq!(ring.after(3).map(|k| k.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(ring.after(0).count(), 3);
        assert_eq!(ring.after(9).count(), 0);
        assert_eq!(budget.messages(), 3);
        ring.clear(&budget);
        assert_eq!(budget.messages(), 0);
        assert_eq!(
            budget.bytes(),
            5 * ORDER_COST,
            "FIFO entries stay until popped"
        );
    }
}
