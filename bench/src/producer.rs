//! The producer: publishes stamped payloads over Herald's gRPC API (which the naive
//! baseline also serves). Paced streaming publish at a fixed rate, flat-out streaming
//! publish with a window of unacknowledged messages, and concurrent unary calls.

use crate::proto::herald_client::HeraldClient;
use crate::proto::{
    InfoRequest, InfoResponse, PublishRequest, PublishStreamRequest, publish_stream_response,
};
use crate::util::{Result, Rng, stamped_payload};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Where each message goes.
#[derive(Debug, Clone)]
pub(crate) enum Topics {
    /// Always this topic.
    One(String),
    /// `user:N` with N uniformly random in `0..n`.
    RandomUser(u64),
}

impl Topics {
    fn pick(&self, rng: &mut Rng) -> String {
        match self {
            Topics::One(t) => t.clone(),
            Topics::RandomUser(n) => format!("user:{}", rng.below(*n)),
        }
    }
}

/// Counts of a publishing phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct PubStats {
    /// Requests sent.
    pub(crate) sent: u64,
    /// Acknowledged (accepted) messages or successful calls.
    pub(crate) acked: u64,
    /// Refused messages or failed calls.
    pub(crate) errors: u64,
    /// Seconds from the first send to the last answer.
    pub(crate) elapsed_s: f64,
    /// The first error text, if any.
    pub(crate) first_error: Option<String>,
}

/// A gRPC producer.
#[derive(Clone)]
pub(crate) struct Producer {
    client: HeraldClient<Channel>,
}

fn request(topic: String, payload: usize) -> PublishRequest {
    PublishRequest {
        topic,
        data: stamped_payload(payload),
        content_type: "application/json".into(),
        idempotency_key: None,
        ttl_ms: None,
    }
}

impl Producer {
    /// Connects to the gRPC server at `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Producer> {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| crate::util::BenchError::Msg(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Producer {
            client: HeraldClient::new(ch).max_decoding_message_size(1 << 20),
        })
    }

    /// The gRPC client (for the Control stream).
    pub(crate) fn client(&self) -> HeraldClient<Channel> {
        self.client.clone()
    }

    /// Publishes one stamped message with unary Publish.
    pub(crate) async fn publish_one(&self, topic: &str, payload: usize) -> Result<()> {
        let mut c = self.client.clone();
        c.publish(request(topic.to_string(), payload)).await?;
        Ok(())
    }

    /// The engine's Info counters, if it serves them.
    pub(crate) async fn info(&self) -> Option<InfoResponse> {
        let mut c = self.client.clone();
        match c.info(InfoRequest {}).await {
            Ok(r) => Some(r.into_inner()),
            Err(e) => {
                eprintln!("Info: {e}");
                None
            }
        }
    }

    /// Streams messages at `rate` per second for `duration` seconds (`window` caps the
    /// unacknowledged ones; 0 = no cap). With `rate` 0, sends as fast as the window allows.
    pub(crate) async fn stream(
        &self,
        topics: Topics,
        rate: f64,
        duration: f64,
        payload: usize,
        window: usize,
    ) -> Result<PubStats> {
        self.stream_until(topics, rate, duration, payload, window, None)
            .await
    }

    /// Like `stream`, but also ends as soon as `stop` turns true.
    pub(crate) async fn stream_until(
        &self,
        topics: Topics,
        rate: f64,
        duration: f64,
        payload: usize,
        window: usize,
        stop: Option<Arc<AtomicBool>>,
    ) -> Result<PubStats> {
        let stopped = || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        let (tx, rx) = tokio::sync::mpsc::channel::<PublishStreamRequest>(4096);
        let sem = Arc::new(Semaphore::new(if window == 0 { 1 << 24 } else { window }));
        let acked = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut client = self.client.clone();
        let (s2, a2, e2) = (sem.clone(), acked.clone(), errors.clone());
        let reader = tokio::spawn(async move {
            let mut first_error = None;
            let mut resp = client
                .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(r) = resp.next().await {
                let r = r?;
                match r.result {
                    Some(publish_stream_response::Result::Ack(_)) => {
                        a2.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        e2.fetch_add(1, Ordering::Relaxed);
                        if first_error.is_none() {
                            first_error = Some(format!("{other:?}"));
                        }
                    }
                }
                s2.add_permits(1);
            }
            Ok::<_, crate::util::BenchError>(first_error)
        });
        let mut rng = Rng::new(7);
        let start = Instant::now();
        let mut sent = 0u64;
        'outer: loop {
            let elapsed = start.elapsed().as_secs_f64();
            if elapsed >= duration || stopped() {
                break;
            }
            let due = if rate > 0.0 {
                (elapsed * rate) as u64 + 1
            } else {
                u64::MAX
            };
            while sent < due {
                if start.elapsed().as_secs_f64() >= duration {
                    break 'outer;
                }
                if let Ok(p) = sem.clone().acquire_owned().await {
                    p.forget();
                }
                sent += 1;
                let req = PublishStreamRequest {
                    client_seq: sent,
                    message: Some(request(topics.pick(&mut rng), payload)),
                    more: Vec::new(),
                };
                if tx.send(req).await.is_err() {
                    break 'outer;
                }
            }
            if rate > 0.0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        drop(tx);
        let first_error = match tokio::time::timeout(Duration::from_secs(60), reader).await {
            Ok(Ok(Ok(fe))) => fe,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("acks did not finish within 60 s".into()),
        };
        Ok(PubStats {
            sent,
            acked: acked.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            elapsed_s: start.elapsed().as_secs_f64(),
            first_error,
        })
    }

    /// `concurrency` loops of unary Publish calls for `duration` seconds.
    pub(crate) async fn unary(
        &self,
        topic: &str,
        duration: f64,
        payload: usize,
        concurrency: usize,
    ) -> PubStats {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(duration);
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let mut c = self.client.clone();
            let topic = topic.to_string();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut bad, mut first) = (0u64, 0u64, None);
                while Instant::now() < end {
                    match c.publish(request(topic.clone(), payload)).await {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            bad += 1;
                            if first.is_none() {
                                first = Some(e.to_string());
                            }
                        }
                    }
                }
                (ok, bad, first)
            }));
        }
        let mut st = PubStats::default();
        for t in tasks {
            if let Ok((ok, bad, first)) = t.await {
                st.acked += ok;
                st.errors += bad;
                if st.first_error.is_none() {
                    st.first_error = first;
                }
            }
        }
        st.sent = st.acked + st.errors;
        st.elapsed_s = start.elapsed().as_secs_f64();
        st
    }
}
