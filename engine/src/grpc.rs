//! The `herald.v1.Herald` gRPC service: validates producer requests and hands
//! publications to the broker. RPCs whose feature has not landed yet answer
//! UNIMPLEMENTED.

use std::{pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    broker::{Broker, BrokerError, Publication, Receipt},
    config::Config,
    proto::{self, herald_server::Herald},
    protocol::Payload,
    registry::Registry,
};

/// How many stream responses may wait for a slow reader before the engine stops
/// reading that stream's requests.
const STREAM_BUFFER: usize = 1024;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service state.
#[derive(Debug, Clone)]
pub struct HeraldService {
    config: Arc<Config>,
    registry: Arc<Registry>,
    broker: Arc<dyn Broker>,
}

impl HeraldService {
    /// A service over this node's registry, publishing through `broker`.
    pub fn new(config: Arc<Config>, registry: Arc<Registry>, broker: Arc<dyn Broker>) -> Self {
        Self {
            config,
            registry,
            broker,
        }
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
        self.registry
            .validate_topic(&topic)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
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

fn response(r: Receipt) -> proto::PublishResponse {
    proto::PublishResponse {
        sequence: r.seq,
        duplicate: r.duplicate,
    }
}

fn broker_status(e: BrokerError) -> Status {
    match e {
        BrokerError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented by this engine version yet"
    )))
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
            while let Some(next) = requests.next().await {
                let req = match next {
                    Ok(req) => req,
                    Err(status) => {
                        tracing::debug!(%status, "publish stream ended by the client");
                        break;
                    }
                };
                let client_seq = req.client_seq;
                let result = match req.message {
                    None => Err(Status::invalid_argument("message is missing")),
                    Some(message) => service.publish_one(message).await,
                };
                let result = Some(match result {
                    Ok(ack) => proto::publish_stream_response::Result::Ack(ack),
                    Err(status) => proto::publish_stream_response::Result::Error(proto::Error {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                });
                if tx
                    .send(Ok(proto::PublishStreamResponse { client_seq, result }))
                    .await
                    .is_err()
                {
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
            self.registry
                .validate_topic(topic)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let mut topics = req.topics.into_iter();
        let first = topics.next().unwrap_or_default();
        let template = self.publication(
            first,
            req.data,
            req.content_type,
            req.idempotency_key,
            req.ttl_ms,
        )?;
        let mut publications = Vec::with_capacity(topics.len() + 1);
        for topic in topics {
            publications.push(Publication {
                topic,
                ..template.clone()
            });
        }
        publications.insert(0, template);
        let mut results = Vec::with_capacity(publications.len());
        for p in publications {
            results.push(response(
                self.broker.publish(p).await.map_err(broker_status)?,
            ));
        }
        Ok(Response::new(proto::BroadcastResponse { results }))
    }

    async fn subscribe(
        &self,
        _: Request<proto::SubscribeRequest>,
    ) -> Result<Response<proto::SubscribeResponse>, Status> {
        unimplemented("Subscribe")
    }

    async fn unsubscribe(
        &self,
        _: Request<proto::UnsubscribeRequest>,
    ) -> Result<Response<proto::UnsubscribeResponse>, Status> {
        unimplemented("Unsubscribe")
    }

    async fn disconnect(
        &self,
        _: Request<proto::DisconnectRequest>,
    ) -> Result<Response<proto::DisconnectResponse>, Status> {
        unimplemented("Disconnect")
    }

    type ControlStream = ResponseStream<proto::ControlResponse>;

    async fn control(
        &self,
        _: Request<Streaming<proto::ControlRequest>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        unimplemented("Control")
    }

    async fn presence(
        &self,
        _: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        unimplemented("Presence")
    }

    async fn presence_stats(
        &self,
        _: Request<proto::PresenceStatsRequest>,
    ) -> Result<Response<proto::PresenceStatsResponse>, Status> {
        unimplemented("PresenceStats")
    }

    type WatchPresenceStream = ResponseStream<proto::PresenceEvent>;

    async fn watch_presence(
        &self,
        _: Request<proto::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        unimplemented("WatchPresence")
    }

    async fn info(
        &self,
        _: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        unimplemented("Info")
    }
}
