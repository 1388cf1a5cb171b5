//! The HTTP admin listener (`--admin-addr`, off by default), apart from the
//! public WebSocket port:
//!
//! | path | answer |
//! |------|--------|
//! | `/metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 while gRPC health says SERVING; 503 while starting and from the first moment of shutdown |
//! | `/` | a status page that polls `/status.json` |
//! | `/status.json` | the node's counters as JSON |
//!
//! It is plain HTTP/1.1 (hyper), answers GET and HEAD only, and stops last in a
//! shutdown, so `/readyz` reports 503 for the whole of it.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, registry::Registry};

/// Time a client gets to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct State {
    /// The Prometheus exposition.
    pub(crate) metrics: Metrics,
    /// The node's connections and topics.
    pub(crate) registry: Arc<Registry>,
    /// Set while gRPC health is SERVING.
    pub(crate) ready: Arc<AtomicBool>,
    /// This node's id.
    pub(crate) node_id: Arc<str>,
    /// When the node started.
    pub(crate) started: Instant,
}

/// Serves admin requests until `stop` is cancelled; open admin connections are
/// then dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _peer)) => {
                let state = Arc::clone(&state);
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = handle(&state, &req);
                        std::future::ready(Ok::<_, Infallible>(response))
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    conns.abort_all();
}

fn handle<B>(state: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/metrics" => body(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            state.metrics.encode(),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n".to_owned())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
            }
        }
        "/status.json" => body(
            StatusCode::OK,
            "application/json",
            status_json(state).to_string(),
        ),
        "/" => body(
            StatusCode::OK,
            "text/html; charset=utf-8",
            STATUS_PAGE.to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; this listener serves /metrics, /healthz, /readyz, /status.json and /\n"
                .to_owned(),
        ),
    }
}

fn text(status: StatusCode, s: String) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", s)
}

fn body(status: StatusCode, content_type: &'static str, s: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(s)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The status page's data: the node, its readiness and its counters.
fn status_json(state: &State) -> serde_json::Value {
    let s = state.registry.stats();
    serde_json::json!({
        "node_id": &*state.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "ready": state.ready.load(Ordering::SeqCst),
        "connections": s.connections,
        "topics": s.topics,
        "subscriptions": s.subscriptions,
        "messages_published": s.published,
        "messages_delivered": s.delivered,
        "messages_dropped": s.dropped,
        "messages_dropped_slow_consumer": s.dropped_slow_consumer,
        "messages_dropped_expired": s.dropped_expired,
        "slow_disconnects": s.slow_disconnects,
    })
}

/// The status page: plain HTML with inline script and styles, no external assets.
/// It polls `/status.json` every second and charts the last five minutes.
const STATUS_PAGE: &str = include_str!("admin_status.html");
