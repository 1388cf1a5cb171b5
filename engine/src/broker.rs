//! The seam between publishing and delivery. Every publish goes through a
//! [`Broker`]; today the only one is [`InProcess`], which delivers straight to this
//! node's registry. A broker that spans nodes (NATS) implements the same trait: it
//! forwards the publication to the other nodes and hands what it receives to
//! `Registry::publish` on each of them. No cluster logic lives anywhere else.
//!
//! History goes through the broker too: reading it (`History`), dropping it
//! (`RemoveHistory`) and subscribing with recovery (`since`). The in-process
//! broker keeps it in each topic's ring ([`crate::history`]); a broker that spans
//! nodes keeps it where its messages are (JetStream) and replays from there, so
//! no caller may assume history is in this process.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{
    history::Since,
    protocol::Payload,
    registry::{Entry, HistoryPage, Registry, SubscribeError, Subscribed},
};

/// One message on its way to a topic's subscribers, already validated.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    /// The topic.
    pub(crate) topic: String,
    /// The checked payload.
    pub(crate) payload: Payload,
    /// Drop from connection queues after this long.
    pub(crate) ttl: Option<Duration>,
    /// Deduplication key.
    pub(crate) idempotency_key: Option<String>,
}

/// What a broker reports for an accepted publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// The message's sequence number in its topic.
    pub(crate) seq: u64,
    /// The idempotency key matched an earlier message.
    pub(crate) duplicate: bool,
    /// The topic's epoch (its incarnation): `seq` counts within it.
    pub(crate) epoch: Arc<str>,
}

/// A question about a topic's history.
#[derive(Debug, Clone)]
pub(crate) struct HistoryQuery {
    /// The topic (validated).
    pub(crate) topic: String,
    /// Messages after this position (before it when `reverse`).
    pub(crate) since: Option<Since>,
    /// Most messages returned.
    pub(crate) limit: usize,
    /// Newest first.
    pub(crate) reverse: bool,
}

/// Why a broker could not take a publication.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    /// The broker is not reachable now; the publication may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A subscribe was refused; nothing of it was applied.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// A history position names an epoch the topic no longer has.
    #[error("the topic's epoch is no longer {0:?}: its history from then is gone")]
    EpochChanged(String),
}

/// A boxed future returned by [`Broker`] methods.
pub(crate) type BrokerFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// Carries publications to every node that has subscribers for their topic.
pub(crate) trait Broker: Send + Sync + std::fmt::Debug {
    /// Publishes one message. Publications to one topic through one broker are
    /// delivered in the order this method is called.
    fn publish(&self, publication: Publication) -> BrokerFuture<'_, Receipt>;

    /// Puts connections of this node into topics; for each topic named in
    /// `since`, every message after that position is delivered first, in order,
    /// with no gap and no duplicate before the live ones — or the topic is
    /// reported not recovered (epoch changed, or messages no longer kept).
    fn subscribe<'a>(
        &'a self,
        entries: &'a [Arc<Entry>],
        topics: &'a [String],
        since: &'a HashMap<String, Since>,
    ) -> BrokerFuture<'a, Subscribed>;

    /// A page of a topic's kept messages.
    fn history(&self, query: HistoryQuery) -> BrokerFuture<'_, HistoryPage>;

    /// Drops a topic's kept messages; returns how many there were.
    fn remove_history<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, u64>;

    /// The broker's kind, as `/metrics` reports it (`herald_broker_info`). A
    /// broker that spans nodes exposes its own state (connection, lag) next to it
    /// in [`crate::metrics`].
    fn kind(&self) -> &'static str;
}

/// The single-node broker: delivers to this node's registry directly.
#[derive(Debug, Clone)]
pub(crate) struct InProcess {
    registry: Arc<Registry>,
}

impl InProcess {
    /// A broker over this node's registry.
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl Broker for InProcess {
    fn publish(&self, p: Publication) -> BrokerFuture<'_, Receipt> {
        let delivery =
            self.registry
                .publish(&p.topic, &p.payload, p.ttl, p.idempotency_key.as_deref());
        Box::pin(std::future::ready(Ok(Receipt {
            seq: delivery.seq,
            duplicate: delivery.duplicate,
            epoch: delivery.epoch,
        })))
    }

    fn subscribe<'a>(
        &'a self,
        entries: &'a [Arc<Entry>],
        topics: &'a [String],
        since: &'a HashMap<String, Since>,
    ) -> BrokerFuture<'a, Subscribed> {
        let done = self
            .registry
            .subscribe_recovering(entries, topics, since)
            .map_err(BrokerError::from);
        Box::pin(std::future::ready(done))
    }

    fn history(&self, q: HistoryQuery) -> BrokerFuture<'_, HistoryPage> {
        let page = self
            .registry
            .history(&q.topic, q.since.as_ref(), q.limit, q.reverse)
            .ok_or_else(|| BrokerError::EpochChanged(q.since.map(|s| s.epoch).unwrap_or_default()));
        Box::pin(std::future::ready(page))
    }

    fn remove_history<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, u64> {
        let n = self.registry.remove_history(topic) as u64;
        Box::pin(std::future::ready(Ok(n)))
    }

    fn kind(&self) -> &'static str {
        "in_process"
    }
}
