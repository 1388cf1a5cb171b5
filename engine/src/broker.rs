//! The seam between publishing and delivery. Every publish goes through a
//! [`Broker`]; today the only one is [`InProcess`], which delivers straight to this
//! node's registry. A broker that spans nodes (NATS) implements the same trait: it
//! forwards the publication to the other nodes and hands what it receives to
//! `Registry::publish` on each of them. No cluster logic lives anywhere else.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{protocol::Payload, registry::Registry};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// The message's sequence number in its topic.
    pub(crate) seq: u64,
    /// The idempotency key matched an earlier message.
    pub(crate) duplicate: bool,
}

/// Why a broker could not take a publication.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    /// The broker is not reachable now; the publication may be retried.
    #[expect(dead_code, reason = "only brokers that span nodes can be unreachable")]
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// A boxed future returned by [`Broker`] methods.
pub(crate) type BrokerFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// Carries publications to every node that has subscribers for their topic.
pub(crate) trait Broker: Send + Sync + std::fmt::Debug {
    /// Publishes one message. Publications to one topic through one broker are
    /// delivered in the order this method is called.
    fn publish(&self, publication: Publication) -> BrokerFuture<'_, Receipt>;

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
        })))
    }

    fn kind(&self) -> &'static str {
        "in_process"
    }
}
