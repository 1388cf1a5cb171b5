//! Prometheus metrics, served as text by the admin listener ([`crate::admin`]).
//!
//! Nothing is kept twice: at each scrape, one collector reads the node's
//! counters and histograms ([`crate::stats`]), the registry's gauges and the gRPC
//! call table below, and encodes them with `prometheus-client`. Every label set is
//! bounded: close codes fold into a fixed list, gRPC methods are those of the
//! served services (anything else is "unknown"), and there are no per-topic or
//! per-connection labels.
//!
//! gRPC calls are measured by a tower layer on the tonic server ([`GrpcLayer`]):
//! one lookup in a read-only table and two or three relaxed atomic adds per call.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};
use prost::Message as _;

use crate::{
    registry::Registry,
    stats::{CLOSE_CODES, Histogram, HistogramValue},
};

/// The metrics endpoint's content type (Prometheus text format 0.0.4).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything `/metrics` exposes.
#[derive(Debug)]
pub(crate) struct Metrics {
    prom: prometheus_client::registry::Registry,
}

impl Metrics {
    /// Metrics over this node's registry and gRPC calls. `broker` names the
    /// broker kind; `ready` is the readiness flag `/readyz` reports.
    pub(crate) fn new(
        registry: Arc<Registry>,
        grpc: Arc<GrpcMetrics>,
        broker: &'static str,
        ready: Arc<AtomicBool>,
        nats: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Self {
        let mut prom = prometheus_client::registry::Registry::default();
        prom.register_collector(Box::new(NodeCollector {
            registry,
            grpc,
            broker,
            ready,
            nats,
        }));
        Self { prom }
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.prom);
        out
    }
}

#[derive(Debug)]
struct NodeCollector {
    registry: Arc<Registry>,
    grpc: Arc<GrpcMetrics>,
    broker: &'static str,
    ready: Arc<AtomicBool>,
    /// The NATS connection state of a node in a cluster.
    nats: Option<tokio::sync::watch::Receiver<bool>>,
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// Encodes a histogram whose values are `per_unit` times finer than the exposed
/// unit (1e9 for nanoseconds exposed as seconds).
fn histogram<const N: usize>(
    enc: &mut MetricEncoder<'_>,
    h: &HistogramValue<N>,
    per_unit: f64,
) -> fmt::Result {
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|(bound, n)| (*bound as f64 / per_unit, *n))
        .collect();
    enc.encode_histogram::<NoLabelSet>(h.sum as f64 / per_unit, h.count, &buckets, None)
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = self.registry.stats();
        let c = self.registry.counters();
        let enc = &mut enc;
        gauge(
            enc,
            "herald_ready",
            "1 while the node serves (gRPC health SERVING), 0 while starting or shutting down",
            u64::from(self.ready.load(Ordering::Relaxed)),
        )?;
        gauge(
            enc,
            "herald_connections",
            "Open WebSocket connections",
            stats.connections,
        )?;
        gauge(
            enc,
            "herald_topics",
            "Topics held (with subscribers or retained state)",
            stats.topics,
        )?;
        gauge(
            enc,
            "herald_subscriptions",
            "Current subscriptions (connection x topic)",
            stats.subscriptions,
        )?;
        counter(
            enc,
            "herald_messages_published",
            "Messages accepted for publishing (per topic; duplicates excluded)",
            stats.published,
        )?;
        counter(
            enc,
            "herald_messages_delivered",
            "Messages queued to connections",
            stats.delivered,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "herald_messages_dropped",
                "Messages discarded, by reason: slow_consumer (a slow consumer's backlog and the message that overflowed it), expired (outlived its TTL in a queue)",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in [
                ("slow_consumer", stats.dropped_slow_consumer),
                ("expired", stats.dropped_expired),
            ] {
                m.encode_family(&[("reason", reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        counter(
            enc,
            "herald_slow_disconnects",
            "Connections closed as slow consumers (close code 4001)",
            stats.slow_disconnects,
        )?;
        gauge(
            enc,
            "herald_history_bytes",
            "Bytes held by topic history (kept frames and their bookkeeping), bounded by history_max_bytes",
            stats.history_bytes,
        )?;
        gauge(
            enc,
            "herald_history_messages",
            "Messages held by topic history, over all topics",
            stats.history_messages,
        )?;
        counter(
            enc,
            "herald_history_evicted",
            "Messages evicted from topic history by the node-wide bound (history_max_bytes), oldest first",
            stats.history_evicted,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "herald_connections_closed",
                "Connections closed, by close code (\"other\": a producer's own code in 4000-4999)",
                None,
                MetricType::Counter,
            )?;
            for (i, n) in c.closes.iter().enumerate() {
                let code = CLOSE_CODES
                    .get(i)
                    .map_or_else(|| "other".to_owned(), ToString::to_string);
                let v = n.load(Ordering::Relaxed);
                m.encode_family(&[("code", code.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        histogram(
            &mut enc.encode_descriptor(
                "herald_writer_batch_frames",
                "Frames a connection's writer took from its queue at once (the queue depth it found)",
                None,
                MetricType::Histogram,
            )?,
            &c.batch_sizes(),
            1.0,
        )?;
        histogram(
            &mut enc.encode_descriptor(
                "herald_publish_to_write_seconds",
                "Time from a publish to the socket write of the message, for the first message of each writer batch",
                None,
                MetricType::Histogram,
            )?,
            &c.write_latency_ns(),
            1e9,
        )?;
        histogram(
            &mut enc.encode_descriptor(
                "herald_fanout_duration_seconds",
                "Time to queue one published message to every subscriber of its topic (publishes to topics with subscribers)",
                None,
                MetricType::Histogram,
            )?,
            &c.fan_out_ns.read(),
            1e9,
        )?;
        self.grpc.encode(enc)?;
        enc.encode_descriptor(
            "herald_broker",
            "The broker that carries publications between nodes (in_process: a single node)",
            None,
            MetricType::Info,
        )?
        .encode_info(&[("kind", self.broker)])?;
        if let Some(nats) = &self.nats {
            gauge(
                enc,
                "herald_nats_connected",
                "1 while this node is connected to NATS (its cluster), 0 while it is not",
                u64::from(*nats.borrow()),
            )?;
        }
        enc.encode_descriptor(
            "herald_build",
            "The engine's version",
            None,
            MetricType::Info,
        )?
        .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])
    }
}

/// gRPC status code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// Buckets of the gRPC call duration histogram.
const GRPC_BUCKETS: usize = 16;
/// Upper bounds of the gRPC call duration histogram (nanoseconds).
static GRPC_BOUNDS_NS: [u64; GRPC_BUCKETS] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Calls of one gRPC method.
#[derive(Debug)]
struct MethodStats {
    service: String,
    method: String,
    by_code: [AtomicU64; CODES.len()],
    duration_ns: Histogram<GRPC_BUCKETS>,
}

/// gRPC calls by method and status code, with their durations. The method table
/// is fixed at start (the methods of the served services, then "unknown").
#[derive(Debug)]
pub(crate) struct GrpcMetrics {
    by_path: HashMap<String, usize>,
    methods: Vec<MethodStats>,
}

impl GrpcMetrics {
    /// A table of every method in these encoded file descriptor sets.
    pub(crate) fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut names = Vec::new();
        for set in descriptor_sets {
            // The sets are compiled in; one that does not decode adds nothing.
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for method in &service.method {
                        names.push((service_name.clone(), method.name().to_owned()));
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names.push(("unknown".to_owned(), "unknown".to_owned()));
        let by_path = names
            .iter()
            .enumerate()
            .map(|(i, (s, m))| (format!("/{s}/{m}"), i))
            .collect();
        let methods = names
            .into_iter()
            .map(|(service, method)| MethodStats {
                service,
                method,
                by_code: Default::default(),
                duration_ns: Histogram::new(&GRPC_BOUNDS_NS),
            })
            .collect();
        Self { by_path, methods }
    }

    /// The row of a request path ("unknown" for anything not served).
    fn method(&self, path: &str) -> usize {
        self.by_path
            .get(path)
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    fn record(&self, method: usize, code: usize, started: Instant) {
        let m = &self.methods[method];
        m.by_code[code.min(CODES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        m.duration_ns.observe(ns);
    }

    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        {
            let mut m = enc.encode_descriptor(
                "herald_grpc_requests",
                "gRPC calls finished, by service, method and status code",
                None,
                MetricType::Counter,
            )?;
            for stats in &self.methods {
                for (code, n) in stats.by_code.iter().enumerate() {
                    let v = n.load(Ordering::Relaxed);
                    if v == 0 {
                        continue;
                    }
                    let labels = [
                        ("service", stats.service.as_str()),
                        ("method", stats.method.as_str()),
                        ("code", CODES[code]),
                    ];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "herald_grpc_request_duration_seconds",
            "gRPC call durations, by service and method: from the request to the response's end (for streams, the stream's lifetime)",
            None,
            MetricType::Histogram,
        )?;
        for stats in &self.methods {
            let h = stats.duration_ns.read();
            if h.count == 0 {
                continue;
            }
            let labels = [
                ("service", stats.service.as_str()),
                ("method", stats.method.as_str()),
            ];
            histogram(&mut m.encode_family(&labels)?, &h, 1e9)?;
        }
        Ok(())
    }
}

/// The tower layer that measures every gRPC call.
#[derive(Debug, Clone)]
pub(crate) struct GrpcLayer(pub(crate) Arc<GrpcMetrics>);

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcMetered<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetered {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// A gRPC service whose calls are counted ([`GrpcLayer`]).
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetered<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

/// One call being measured: recorded once, with the status the response ends
/// with, or CANCELLED when it is dropped before its end.
#[derive(Debug)]
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: usize,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            self.metrics.record(self.method, code, self.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// The status code in a header map, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()?;
    Some(if code < CODES.len() { code } else { UNKNOWN })
}

impl<S, B> tower::Service<http::Request<tonic::body::Body>> for GrpcMetered<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut call = Call {
            method: self.metrics.method(req.uri().path()),
            metrics: Arc::clone(&self.metrics),
            started: Instant::now(),
            done: false,
        };
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match inner.call(req).await {
                Ok(response) => {
                    // A trailers-only response (most errors) carries its status
                    // in the headers.
                    if let Some(code) = grpc_status(response.headers()) {
                        call.finish(code);
                    }
                    Ok(response.map(|body| MeteredBody { body, call }))
                }
                Err(e) => {
                    call.finish(UNKNOWN);
                    Err(e)
                }
            }
        })
    }
}

/// A response body that records its call when its trailers pass.
#[derive(Debug)]
pub(crate) struct MeteredBody<B> {
    body: B,
    call: Call,
}

impl<B: http_body::Body + Unpin> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(grpc_status(trailers).unwrap_or(UNKNOWN));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(UNKNOWN),
            Poll::Ready(None) => this.call.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_table_holds_the_served_methods_and_unknown() {
        let grpc = GrpcMetrics::new(&[
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ]);
        let reflection = grpc.method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
        assert_ne!(grpc.methods[reflection].service, "unknown");
        let publish = grpc.method("/herald.v1.Herald/Publish");
        assert_eq!(grpc.methods[publish].method, "Publish");
        let check = grpc.method("/grpc.health.v1.Health/Check");
        assert_eq!(grpc.methods[check].service, "grpc.health.v1.Health");
        let other = grpc.method("/no.Such/Thing");
        assert_eq!(grpc.methods[other].service, "unknown");
        assert_eq!(other, grpc.methods.len() - 1);
    }
}
