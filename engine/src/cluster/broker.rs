//! The NATS broker: [`Broker`] for a node that is part of a cluster.
//!
//! **Publish.** A message of a topic without history is published once to the
//! topic's subject `<prefix>.t.<topic>` (core NATS); a message of a topic with
//! history goes into its JetStream stream ([`super::streams`]), which
//! republishes it to the same subject once stored. The publishing node does not
//! deliver it directly: it receives it back like every other node, so every node
//! delivers the topic in the order NATS gives it.
//!
//! **Interest.** A node subscribes to a topic's subject while the topic has local
//! subscribers: a subscribe waits until the NATS subscription is in place (so a
//! message published after the answer reaches the client), and a topic's
//! interest is dropped `nats_interest_linger` after its last local subscriber
//! left, so that clients that come and go do not turn into subscribe/unsubscribe
//! traffic.
//!
//! **Delivery.** One task per topic with interest reads the subject and hands
//! each message to the registry: a topic without history is numbered by this
//! node as it receives it ([`Registry::receive`]); a topic with history keeps
//! the sequence JetStream gave it ([`Registry::deliver`]). For those the task
//! first loads the topic's stored messages into the local ring (without sending
//! them: a subscriber asks for them with `since`), fills any gap it sees from the
//! stream, and catches up after a reconnect — so recovery works on any node.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::{sync::watch, task::AbortHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster,
    streams::{self, Stored, StreamDef, Streams},
};
use crate::{
    broker::{Broker, BrokerError, BrokerFuture, HistoryQuery, InProcess, Publication, Receipt},
    config::Config,
    history::{Kept, Position, Since},
    protocol::{self, Payload},
    registry::{Entry, HistoryPage, Registry, Subscribed},
};

/// A topic this node receives from NATS.
#[derive(Debug)]
struct Interest {
    /// True once the subscription is in place (and, for a topic with history,
    /// its stored messages are loaded).
    ready: watch::Receiver<bool>,
    task: AbortHandle,
    /// Since when the topic has had no local subscriber.
    empty_since: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    streams: Streams,
    interest: parking_lot::Mutex<HashMap<Arc<str>, Interest>>,
    linger: Duration,
    max_payload: usize,
    no_epoch: Arc<str>,
}

/// The broker of a node in a cluster.
#[derive(Debug)]
pub(crate) struct NatsBroker {
    inner: Arc<Inner>,
    /// This node's own answers, for what the cluster does not hold.
    local: InProcess,
}

/// Where a topic with history stands on this node: its last delivered message.
#[derive(Debug, Clone)]
struct Last {
    epoch: Arc<str>,
    seq: u64,
    stream_seq: u64,
}

impl NatsBroker {
    /// The broker, and its upkeep task (streams after each reconnect, interest
    /// that outlived its subscribers) until `shutdown`.
    pub(crate) fn start(
        cluster: Arc<Cluster>,
        registry: Arc<Registry>,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Self {
        let local = InProcess::new(Arc::clone(&registry));
        let inner = Arc::new(Inner {
            streams: Streams::new(Arc::clone(&cluster), config),
            cluster,
            registry,
            interest: parking_lot::Mutex::new(HashMap::new()),
            linger: config.nats_interest_linger.0,
            max_payload: config.max_payload_bytes,
            no_epoch: Arc::from(""),
        });
        tokio::spawn(Arc::clone(&inner).upkeep(shutdown));
        Self { inner, local }
    }
}

impl Inner {
    async fn upkeep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut connected = self.cluster.connected();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // The streams are made (or updated) on every connect, and retried every
        // second until that works (a JetStream cluster may still be electing).
        let mut streams_due = true;
        loop {
            if streams_due && *connected.borrow_and_update() {
                match self.streams.ensure().await {
                    Ok(()) => streams_due = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "history streams not set up yet; retrying")
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.drop_all_interest();
                    return;
                }
                changed = connected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    streams_due = true;
                }
                _ = tick.tick() => {
                    self.sweep_interest();
                    self.streams.forget_idle_heads();
                }
            }
        }
    }

    /// Drops the interest of topics that have had no local subscriber for the
    /// linger time.
    fn sweep_interest(&self) {
        let now = Instant::now();
        let mut interest = self.interest.lock();
        interest.retain(|topic, i| {
            if i.task.is_finished() {
                return false;
            }
            if self.registry.has_members(topic) {
                i.empty_since = None;
                return true;
            }
            let since = *i.empty_since.get_or_insert(now);
            if now.duration_since(since) < self.linger {
                return true;
            }
            i.task.abort();
            false
        });
    }

    fn drop_all_interest(&self) {
        for (_, i) in self.interest.lock().drain() {
            i.task.abort();
        }
    }

    /// The topic's interest, started when there is none.
    fn interest_in(self: &Arc<Self>, topic: &str) -> watch::Receiver<bool> {
        let mut interest = self.interest.lock();
        if let Some(i) = interest.get_mut(topic)
            && !i.task.is_finished()
        {
            i.empty_since = None;
            return i.ready.clone();
        }
        let topic: Arc<str> = Arc::from(topic);
        let (tx, ready) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(self).follow(Arc::clone(&topic), tx)).abort_handle();
        interest.insert(
            topic,
            Interest {
                ready: ready.clone(),
                task,
                empty_since: None,
            },
        );
        ready
    }

    /// Makes sure this node receives `topics`, waiting (at most `nats_timeout`)
    /// until it does. While NATS is down the wait is skipped: the subscriptions
    /// are restored when it is back.
    async fn await_interest<'a>(self: &Arc<Self>, topics: impl Iterator<Item = &'a String>) {
        let ready: Vec<_> = topics.map(|t| self.interest_in(t)).collect();
        let deadline = Instant::now() + self.cluster.timeout();
        for mut r in ready {
            if !self.cluster.is_connected() {
                return;
            }
            if tokio::time::timeout_at(deadline, r.wait_for(|ready| *ready))
                .await
                .is_err()
            {
                tracing::warn!("NATS interest not confirmed within nats_timeout");
                return;
            }
        }
    }

    /// The task that receives one topic from NATS and delivers it on this node.
    async fn follow(self: Arc<Self>, topic: Arc<str>, ready: watch::Sender<bool>) {
        let client = self.cluster.client();
        let mut subscription = match client.subscribe(self.cluster.topic_subject(&topic)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot subscribe to the topic's subject");
                return;
            }
        };
        if self.cluster.is_connected() {
            let _ = tokio::time::timeout(self.cluster.timeout(), client.flush()).await;
        }
        let def = self.streams.stream_for(&topic);
        let mut last: Option<Last> = None;
        if let Some(def) = &def
            && self.cluster.is_connected()
        {
            self.catch_up(def, &topic, &mut last, false).await;
        }
        ready.send_replace(true);
        let mut connected = self.cluster.connected();
        connected.borrow_and_update();
        loop {
            tokio::select! {
                message = subscription.next() => {
                    let Some(message) = message else { return };
                    match &def {
                        None => self.deliver_numbering(&topic, &message),
                        Some(def) => self.deliver_numbered(def, &topic, &message, &mut last).await,
                    }
                }
                changed = connected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *connected.borrow_and_update() && let Some(def) = &def {
                        // Back after a disconnection: what was stored meanwhile.
                        let fan_out = last.is_some();
                        self.catch_up(def, &topic, &mut last, fan_out).await;
                    }
                }
            }
        }
    }

    /// A message of a topic without history: numbered by this node.
    fn deliver_numbering(&self, topic: &str, message: &async_nats::Message) {
        let Some(headers) = &message.headers else {
            let payload = Payload::binary(message.payload.clone());
            self.registry.receive(topic, &payload, None, None);
            return;
        };
        let content_type = headers
            .get(streams::CONTENT_TYPE)
            .map_or("application/octet-stream", |v| v.as_str());
        let payload = Payload::new(
            message.payload.clone(),
            content_type.to_owned(),
            self.max_payload,
        )
        .unwrap_or_else(|_| Payload::binary(message.payload.clone()));
        let ttl = streams::header_u64(headers, streams::TTL_MS).map(Duration::from_millis);
        let key = headers.get(streams::KEY).map(|v| v.as_str());
        self.registry.receive(topic, &payload, ttl, key);
    }

    /// A message of a topic with history, numbered by its stream: delivered in
    /// order; a gap is filled from the stream first.
    async fn deliver_numbered(
        &self,
        def: &StreamDef,
        topic: &str,
        message: &async_nats::Message,
        last: &mut Option<Last>,
    ) {
        let empty = async_nats::HeaderMap::new();
        let headers = message.headers.as_ref().unwrap_or(&empty);
        let stored = self
            .streams
            .stored(0, headers, message.payload.clone(), None);
        if let Some(l) = last.as_ref() {
            let gap = if *l.epoch == *stored.epoch {
                stored.seq > l.seq + 1
            } else {
                stored.seq > 1
            };
            if gap {
                self.catch_up(def, topic, last, true).await;
            }
        }
        self.deliver_stored(topic, &stored, true, last);
    }

    fn deliver_stored(&self, topic: &str, m: &Stored, fan_out: bool, last: &mut Option<Last>) {
        let delivery = self.registry.deliver(
            topic,
            m.seq,
            &m.epoch,
            &m.payload,
            m.ttl,
            if fan_out { Instant::now() } else { m.at },
            fan_out,
        );
        if !delivery.duplicate || last.is_none() {
            *last = Some(Last {
                epoch: Arc::clone(&m.epoch),
                seq: m.seq,
                stream_seq: m.stream_seq,
            });
        }
    }

    /// Delivers what the stream holds of `topic` after the last delivered
    /// message (everything when nothing was delivered yet); with `fan_out` to the
    /// subscribers, else only into the ring.
    async fn catch_up(&self, def: &StreamDef, topic: &str, last: &mut Option<Last>, fan_out: bool) {
        let after = last.as_ref().map_or(0, |l| l.stream_seq);
        match self.streams.read(def, topic, after).await {
            Ok(stored) => {
                for m in &stored {
                    self.deliver_stored(topic, m, fan_out, last);
                }
            }
            Err(e) => tracing::warn!(%topic, error = %e, "cannot read the topic's stream"),
        }
    }

    /// A page of a topic with history, read from its stream.
    async fn history_page(
        &self,
        def: &StreamDef,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let stored = self.streams.read(def, &q.topic, 0).await?;
        let Some(newest) = stored.last() else {
            if q.since.as_ref().is_some_and(|s| !s.epoch.is_empty()) {
                return Err(epoch_changed(q.since.as_ref()));
            }
            return Ok(HistoryPage::default());
        };
        let epoch = Arc::clone(&newest.epoch);
        if q.since
            .as_ref()
            .is_some_and(|s| !s.epoch.is_empty() && *s.epoch != *epoch)
        {
            return Err(epoch_changed(q.since.as_ref()));
        }
        let current: Vec<&Stored> = stored.iter().filter(|m| m.epoch == epoch).collect();
        let keep = |m: &&&Stored| match (&q.since, q.reverse) {
            (Some(s), false) => m.seq > s.seq,
            (Some(s), true) => m.seq < s.seq,
            (None, _) => true,
        };
        let picked: Vec<&Stored> = if q.reverse {
            current
                .iter()
                .rev()
                .filter(keep)
                .take(q.limit)
                .copied()
                .collect()
        } else {
            current.iter().filter(keep).take(q.limit).copied().collect()
        };
        let messages = picked
            .into_iter()
            .map(|m| Kept {
                seq: m.seq,
                at: m.at,
                text: protocol::encode_message(&q.topic, m.seq, &epoch, &m.payload),
                expires: None,
                content_type: Arc::from(m.payload.content_type()),
            })
            .collect();
        Ok(HistoryPage {
            messages,
            position: Position {
                seq: newest.seq,
                epoch,
            },
            first_seq: current.first().map_or(0, |m| m.seq),
        })
    }
}

fn epoch_changed(since: Option<&Since>) -> BrokerError {
    BrokerError::EpochChanged(since.map(|s| s.epoch.to_string()).unwrap_or_default())
}

impl Broker for NatsBroker {
    fn publish(&self, p: Publication) -> BrokerFuture<'_, Receipt> {
        Box::pin(async move {
            let inner = &self.inner;
            if let Some(def) = inner.streams.stream_for(&p.topic) {
                let receipt = inner.streams.publish(&def, &p).await?;
                if !receipt.duplicate {
                    inner.registry.count_published();
                }
                return Ok(receipt);
            }
            if !inner.cluster.is_connected() {
                return Err(BrokerError::Unavailable("NATS is not connected".into()));
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(streams::CONTENT_TYPE, p.payload.content_type());
            if let Some(ttl) = p.ttl {
                headers.insert(streams::TTL_MS, ttl.as_millis().to_string().as_str());
            }
            if let Some(key) = &p.idempotency_key {
                headers.insert(streams::KEY, key.as_str());
            }
            inner
                .cluster
                .client()
                .publish_with_headers(
                    inner.cluster.topic_subject(&p.topic),
                    headers,
                    p.payload.data().clone(),
                )
                .await
                .map_err(|e| BrokerError::Unavailable(format!("publish: {e}")))?;
            inner.registry.count_published();
            // Numbered by each node as it receives it: no cluster-wide position.
            Ok(Receipt {
                seq: 0,
                duplicate: false,
                epoch: Arc::clone(&inner.no_epoch),
            })
        })
    }

    fn subscribe<'a>(
        &'a self,
        entries: &'a [Arc<Entry>],
        topics: &'a [String],
        since: &'a HashMap<String, Since>,
    ) -> BrokerFuture<'a, Subscribed> {
        Box::pin(async move {
            let inner = &self.inner;
            for topic in topics {
                inner
                    .registry
                    .validate_topic(topic)
                    .map_err(|e| BrokerError::Subscribe(e.into()))?;
            }
            // Recovery reads the ring, which the topic's task fills first.
            inner
                .await_interest(topics.iter().filter(|t| since.contains_key(*t)))
                .await;
            let done = inner
                .registry
                .subscribe_recovering(entries, topics, since)?;
            // Once members, the topics keep their interest (see sweep_interest).
            inner.await_interest(topics.iter()).await;
            Ok(done)
        })
    }

    /// Topics with history are read from their stream; the others keep none,
    /// and this node answers for them as a single node would.
    fn history(&self, q: HistoryQuery) -> BrokerFuture<'_, HistoryPage> {
        match self.inner.streams.stream_for(&q.topic) {
            Some(def) => Box::pin(async move { self.inner.history_page(&def, &q).await }),
            None => self.local.history(q),
        }
    }

    fn remove_history<'a>(&'a self, topic: &'a str) -> BrokerFuture<'a, u64> {
        match self.inner.streams.stream_for(topic) {
            Some(def) => Box::pin(async move {
                // The local ring goes too; the stream is what counts.
                self.inner.registry.remove_history(topic);
                self.inner.streams.purge(&def, topic).await
            }),
            None => self.local.remove_history(topic),
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}
