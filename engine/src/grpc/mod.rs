//! The `herald.v1.Herald` gRPC service: validates producer requests, hands
//! publications to the broker, steers connections ([`control`]) and answers
//! presence questions ([`presence`]).

mod control;
mod incoming;
mod limits;
mod presence;
mod remote;

pub(crate) use incoming::{Timeouts, incoming};

use std::{pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    broker::{Broker, BrokerError, HistoryQuery, Publication, Receipt},
    cluster::{
        Cluster,
        gather::{self, Forwarder},
        nodes::{Beat, Nodes},
    },
    config::Config,
    history::Since,
    proto::{self, herald_server::Herald},
    protocol::Payload,
    registry::Registry,
};

/// How many stream responses may wait for a slow reader before the engine stops
/// reading that stream's requests.
const STREAM_BUFFER: usize = 1024;

/// Most messages one `PublishStream` request may carry in `more`.
const MAX_STREAM_BATCH: usize = 1024;

/// Presence events a node buffers for forwarding to the other nodes.
const FORWARD_BUFFER: usize = 64 * 1024;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service state.
#[derive(Debug, Clone)]
pub(crate) struct HeraldService {
    config: Arc<Config>,
    registry: Arc<Registry>,
    broker: Arc<dyn Broker>,
    node_id: Arc<str>,
    started: Instant,
    /// Keys the tags of presence page cursors (random per process), so that a
    /// cursor this node did not issue is refused.
    cursor_key: std::collections::hash_map::RandomState,
    /// Cancelled when the node starts shutting down.
    shutdown: CancellationToken,
    /// Per-topic publish rates and default TTLs of the topic rules.
    publish_limits: Arc<limits::PublishLimits>,
    /// One permit per open WatchPresence stream (`max_presence_watchers`).
    watchers: Arc<tokio::sync::Semaphore>,
    /// The cluster this node is part of (`nats_url`); `None` for a single node.
    cluster: Option<Arc<Cluster>>,
    /// This node as `Info` lists it.
    me: Arc<Beat>,
    /// The cluster's live nodes (with `cluster`): where presence and control
    /// requests go.
    nodes: Option<Arc<Nodes>>,
    /// Forwards this node's presence events while some node watches.
    forwarder: Option<Arc<Forwarder>>,
}

impl HeraldService {
    /// A service over this node's registry, publishing through `broker`.
    pub(crate) fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        broker: Arc<dyn Broker>,
        node_id: Arc<str>,
        cluster: Option<Arc<Cluster>>,
        shutdown: CancellationToken,
    ) -> Self {
        let publish_limits = Arc::new(limits::PublishLimits::new(
            &config.topics,
            config.max_topic_len,
        ));
        if !publish_limits.is_empty() {
            let limits = Arc::clone(&publish_limits);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = ticker.tick() => limits.retain_recent(),
                    }
                }
            });
        }
        Self {
            watchers: Arc::new(tokio::sync::Semaphore::new(config.max_presence_watchers)),
            config,
            registry,
            broker,
            node_id,
            started: Instant::now(),
            cursor_key: std::collections::hash_map::RandomState::new(),
            shutdown,
            publish_limits,
            cluster,
            me: Arc::new(Beat::default()),
            nodes: None,
            forwarder: None,
        }
    }

    /// Adds this node's description and, in a cluster, the table of nodes: the
    /// service then answers the other nodes' requests and makes presence and
    /// control cluster-wide; it announces its departure when shutting down.
    pub(crate) fn with_nodes(mut self, (me, nodes): (Beat, Option<Arc<Nodes>>)) -> Self {
        self.me = Arc::new(me);
        if let Some(nodes) = nodes {
            self.forwarder = Some(Forwarder::new(Arc::clone(&nodes), FORWARD_BUFFER));
            self.nodes = Some(Arc::clone(&nodes));
            let handler: Arc<dyn gather::Handler> = Arc::new(self.clone());
            tokio::spawn(gather::serve(
                Arc::clone(&nodes),
                handler,
                self.shutdown.clone(),
            ));
            let stop = self.shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                nodes.depart();
            });
        }
        self
    }

    fn check_topic(&self, topic: &str) -> Result<(), Status> {
        self.registry
            .validate_topic(topic)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Validates a publish request into a publication for `topic`.
    fn publication(
        &self,
        topic: String,
        data: Bytes,
        content_type: String,
        idempotency_key: Option<String>,
        ttl_ms: Option<u32>,
    ) -> Result<Publication, Status> {
        self.check_topic(&topic)?;
        let mut p = self.message(topic, data, content_type, idempotency_key, ttl_ms)?;
        let default_ttl = self.publish_limits.admit(&p.topic)?;
        if p.ttl.is_none() {
            p.ttl = default_ttl;
        }
        Ok(p)
    }

    /// Validates everything of a publication but its topic.
    fn message(
        &self,
        topic: String,
        data: Bytes,
        content_type: String,
        idempotency_key: Option<String>,
        ttl_ms: Option<u32>,
    ) -> Result<Publication, Status> {
        let payload = Payload::new(data, content_type, self.config.max_payload_bytes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(Status::invalid_argument(
                "idempotency_key must be 1 to 256 bytes",
            ));
        }
        Ok(Publication {
            topic,
            payload,
            ttl: ttl_ms
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(u64::from(ms))),
            idempotency_key,
        })
    }

    async fn publish_one(
        &self,
        req: proto::PublishRequest,
    ) -> Result<proto::PublishResponse, Status> {
        let p = self.publication(
            req.topic,
            req.data,
            req.content_type,
            req.idempotency_key,
            req.ttl_ms,
        )?;
        let receipt = self.broker.publish(p).await.map_err(broker_status)?;
        Ok(response(receipt))
    }
}

impl HeraldService {
    /// Publishes the message of one `PublishStream` request and its `more`, in
    /// order, and answers each.
    async fn publish_batch(
        &self,
        req: proto::PublishStreamRequest,
    ) -> proto::PublishStreamResponse {
        use proto::{publish_result, publish_stream_response};
        let client_seq = req.client_seq;
        if req.more.len() > MAX_STREAM_BATCH {
            let status = Status::invalid_argument(format!(
                "{} messages in `more`; the limit per request is {MAX_STREAM_BATCH}",
                req.more.len()
            ));
            let error = item_error(&status);
            return proto::PublishStreamResponse {
                client_seq,
                result: Some(publish_stream_response::Result::Error(error.clone())),
                more: vec![
                    proto::PublishResult {
                        result: Some(publish_result::Result::Error(error)),
                    };
                    req.more.len()
                ],
            };
        }
        let result = match req.message {
            None => Err(Status::invalid_argument("message is missing")),
            Some(message) => self.publish_one(message).await,
        };
        let result = Some(match result {
            Ok(ack) => publish_stream_response::Result::Ack(ack),
            Err(status) => publish_stream_response::Result::Error(item_error(&status)),
        });
        let mut more = Vec::with_capacity(req.more.len());
        for message in req.more {
            let result = match self.publish_one(message).await {
                Ok(ack) => publish_result::Result::Ack(ack),
                Err(status) => publish_result::Result::Error(item_error(&status)),
            };
            more.push(proto::PublishResult {
                result: Some(result),
            });
        }
        proto::PublishStreamResponse {
            client_seq,
            result,
            more,
        }
    }
}

fn response(r: Receipt) -> proto::PublishResponse {
    proto::PublishResponse {
        sequence: r.seq,
        duplicate: r.duplicate,
        epoch: r.epoch.to_string(),
    }
}

fn broker_status(e: BrokerError) -> Status {
    match e {
        BrokerError::Unavailable(_) => Status::unavailable(e.to_string()),
        BrokerError::Subscribe(e) => control::subscribe_status(e),
        BrokerError::EpochChanged(_) => Status::failed_precondition(e.to_string()),
    }
}

/// Most messages one History page may ask for, and the default.
const MAX_HISTORY_LIMIT: u32 = 10_000;
const DEFAULT_HISTORY_LIMIT: u32 = 100;

fn since_of(p: proto::StreamPosition) -> Since {
    Since {
        seq: p.sequence,
        epoch: p.epoch,
    }
}

/// The next request of a bidirectional stream; `None` once the client has closed it,
/// a request failed to decode (the client is sent that status, e.g. OUT_OF_RANGE),
/// or the node is shutting down (the client is then sent UNAVAILABLE).
async fn next_request<Req, Resp>(
    requests: &mut Streaming<Req>,
    stop: Pin<&mut impl Future<Output = ()>>,
    tx: &mpsc::Sender<Result<Resp, Status>>,
) -> Option<Req> {
    let next = tokio::select! {
        biased;
        () = stop => {
            let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
            return None;
        }
        next = requests.next() => next,
    };
    match next {
        Some(Ok(req)) => Some(req),
        Some(Err(status)) => {
            // A request the engine cannot decode (over the message limit, say) or
            // a stream the client cancelled: either way the stream ends, and a
            // client still listening learns why.
            tracing::debug!(%status, "request stream failed");
            // Never wait for a client that does not read its answers.
            let _ = tx.try_send(Err(status));
            None
        }
        None => None,
    }
}

/// A per-item error inside a stream, from a status.
fn item_error(status: &Status) -> proto::Error {
    proto::Error {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

#[tonic::async_trait]
impl Herald for HeraldService {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        self.publish_one(request.into_inner())
            .await
            .map(Response::new)
    }

    type PublishStreamStream = ResponseStream<proto::PublishStreamResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<proto::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let service = self.clone();
        tokio::spawn(async move {
            // One request at a time, in order: this keeps per-topic order.
            let stop = service.shutdown.clone().cancelled_owned();
            tokio::pin!(stop);
            while let Some(req) = next_request(&mut requests, stop.as_mut(), &tx).await {
                let response = service.publish_batch(req).await;
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn broadcast(
        &self,
        request: Request<proto::BroadcastRequest>,
    ) -> Result<Response<proto::BroadcastResponse>, Status> {
        let req = request.into_inner();
        if req.topics.is_empty() {
            return Err(Status::invalid_argument("topics is empty"));
        }
        if req.topics.len() > self.config.max_broadcast_topics {
            return Err(Status::invalid_argument(format!(
                "{} topics; the limit per broadcast is {}",
                req.topics.len(),
                self.config.max_broadcast_topics
            )));
        }
        for topic in &req.topics {
            self.check_topic(topic)?;
        }
        let template = self.message(
            String::new(),
            req.data,
            req.content_type,
            req.idempotency_key,
            req.ttl_ms,
        )?;
        // Every topic's publish rate before anything is published: a broadcast
        // is refused whole (the tokens of the topics before the refused one are
        // spent).
        let ttls = req
            .topics
            .iter()
            .map(|t| self.publish_limits.admit(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(req.topics.len());
        for (topic, default_ttl) in req.topics.into_iter().zip(ttls) {
            let p = Publication {
                topic,
                ttl: template.ttl.or(default_ttl),
                ..template.clone()
            };
            results.push(response(
                self.broker.publish(p).await.map_err(broker_status)?,
            ));
        }
        Ok(Response::new(proto::BroadcastResponse { results }))
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<proto::SubscribeResponse>, Status> {
        self.subscribe_now(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn unsubscribe(
        &self,
        request: Request<proto::UnsubscribeRequest>,
    ) -> Result<Response<proto::UnsubscribeResponse>, Status> {
        self.unsubscribe_now(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn disconnect(
        &self,
        request: Request<proto::DisconnectRequest>,
    ) -> Result<Response<proto::DisconnectResponse>, Status> {
        self.disconnect_now(request.into_inner())
            .await
            .map(Response::new)
    }

    type ControlStream = ResponseStream<proto::ControlResponse>;

    async fn control(
        &self,
        request: Request<Streaming<proto::ControlRequest>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(control::run(self.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn presence(
        &self,
        request: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        self.presence_across(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn presence_stats(
        &self,
        request: Request<proto::PresenceStatsRequest>,
    ) -> Result<Response<proto::PresenceStatsResponse>, Status> {
        self.stats_across(request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchPresenceStream = ResponseStream<proto::PresenceEvent>;

    async fn watch_presence(
        &self,
        request: Request<proto::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        self.watch_across(request.into_inner()).map(Response::new)
    }

    async fn info(
        &self,
        _: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        let stats = self.registry.stats();
        Ok(Response::new(proto::InfoResponse {
            node_id: self.node_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            connections: stats.connections,
            topics: stats.topics,
            subscriptions: stats.subscriptions,
            messages_published: stats.published,
            messages_delivered: stats.delivered,
            messages_dropped: stats.dropped,
            slow_disconnects: stats.slow_disconnects,
            client_auth: crate::auth::configured(&self.config),
            history_bytes: stats.history_bytes,
            history_messages: stats.history_messages,
            nodes: self.node_list(),
        }))
    }

    async fn history(
        &self,
        request: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryResponse>, Status> {
        let req = request.into_inner();
        self.check_topic(&req.topic)?;
        if req.limit > MAX_HISTORY_LIMIT {
            return Err(Status::invalid_argument(format!(
                "limit {} is over {MAX_HISTORY_LIMIT}",
                req.limit
            )));
        }
        let limit = if req.limit == 0 {
            DEFAULT_HISTORY_LIMIT
        } else {
            req.limit
        };
        let page = self
            .broker
            .history(HistoryQuery {
                topic: req.topic,
                since: req.since.map(since_of),
                limit: limit as usize,
                reverse: req.reverse,
            })
            .await
            .map_err(broker_status)?;
        let messages = page
            .messages
            .iter()
            .map(|kept| proto::HistoryMessage {
                sequence: kept.seq,
                data: crate::history::decode_payload(&kept.text)
                    .unwrap_or_default()
                    .into(),
                content_type: kept.content_type.to_string(),
                timestamp_ms: kept
                    .published_at()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            })
            .collect();
        Ok(Response::new(proto::HistoryResponse {
            messages,
            position: Some(proto::StreamPosition {
                sequence: page.position.seq,
                epoch: page.position.epoch.to_string(),
            }),
            first_sequence: page.first_seq,
        }))
    }

    async fn remove_history(
        &self,
        request: Request<proto::RemoveHistoryRequest>,
    ) -> Result<Response<proto::RemoveHistoryResponse>, Status> {
        let req = request.into_inner();
        self.check_topic(&req.topic)?;
        let removed = self
            .broker
            .remove_history(&req.topic)
            .await
            .map_err(broker_status)?;
        Ok(Response::new(proto::RemoveHistoryResponse { removed }))
    }
}
