//! Starting and stopping a node: binds the WebSocket and gRPC listeners, runs the
//! accept loop (each accepted socket becomes a [`crate::session`]), serves gRPC with
//! health and reflection, sweeps idle topics, and shuts down gracefully.
//!
//! Health is NOT_SERVING until both listeners are up, SERVING while the node runs,
//! and NOT_SERVING again from the first moment of shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::{
    broker::{Broker, InProcess},
    config::Config,
    grpc::HeraldService,
    presence::PresenceHub,
    proto::{self, herald_server::HeraldServer},
    protocol::close,
    queue::Close,
    registry::{Limits, Registry},
    session,
};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running node.
#[derive(Debug)]
pub struct Engine {
    config: Arc<Config>,
    registry: Arc<Registry>,
    health: HealthReporter,
    ws_addr: SocketAddr,
    grpc_addr: SocketAddr,
    stop_accept: oneshot::Sender<()>,
    accept: JoinHandle<()>,
    stop_streams: watch::Sender<bool>,
    stop_grpc: oneshot::Sender<()>,
    grpc: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

const SERVICE: &str = <HeraldServer<HeraldService> as tonic::server::NamedService>::NAME;

impl Engine {
    /// Binds both listeners and starts serving. Port 0 picks free ports; see
    /// [`Engine::ws_addr`] and [`Engine::grpc_addr`].
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let ws_listener =
            TcpListener::bind(config.ws_addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.ws_addr,
                    source,
                })?;
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let ws_addr = ws_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.ws_addr,
                source,
            })?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.grpc_addr,
                source,
            })?;

        let node_id: Arc<str> = if config.node_id.is_empty() {
            Arc::from(random_node_id())
        } else {
            Arc::from(config.node_id.as_str())
        };
        // Checked by Config::validate; an unparsable list tracks nothing.
        let tracked = config.presence_patterns().unwrap_or_default();
        let presence = Arc::new(PresenceHub::new(tracked));
        let registry = Arc::new(Registry::new(
            Limits {
                max_topic_len: config.max_topic_len,
                max_subscriptions: config.max_subscriptions,
                queue_max_messages: config.queue_max_messages,
                queue_max_bytes: config.queue_max_bytes,
                idempotency_window: config.idempotency_window.0,
                topic_retention: config.topic_retention.0,
            },
            presence,
        ));
        let broker: Arc<dyn Broker> = Arc::new(InProcess::new(Arc::clone(&registry)));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let (stop_streams, streams_stopped) = watch::channel(false);
        let service = HeraldService::new(
            Arc::clone(&config),
            Arc::clone(&registry),
            broker,
            Arc::clone(&node_id),
            streams_stopped,
        );

        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let grpc_server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(config.grpc_max_streams_per_connection))
            .layer(GlobalConcurrencyLimitLayer::new(
                config.grpc_max_concurrent_calls,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                HeraldServer::new(service).max_decoding_message_size(grpc_message_limit(&config)),
            )
            .serve_with_incoming_shutdown(grpc_incoming(grpc_listener), async {
                let _ = grpc_stopped.await;
            });
        let grpc = tokio::spawn(async move {
            if let Err(e) = grpc_server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });

        let (stop_accept, accept_stopped) = oneshot::channel::<()>();
        let accept = tokio::spawn(accept_loop(
            ws_listener,
            Arc::clone(&config),
            Arc::clone(&registry),
            accept_stopped,
        ));
        let sweeper = tokio::spawn(sweep_loop(Arc::clone(&registry)));

        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(SERVICE, ServingStatus::Serving)
            .await;
        tracing::info!(node_id = %node_id, %ws_addr, ws_path = %config.ws_path, %grpc_addr, "herald is serving");
        Ok(Self {
            config,
            registry,
            health,
            ws_addr,
            grpc_addr,
            stop_accept,
            accept,
            stop_streams,
            stop_grpc,
            grpc,
            sweeper,
        })
    }

    /// The bound WebSocket address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The node's registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        self.shutdown().await;
    }

    /// Graceful shutdown: NOT_SERVING at once, end gRPC streams with UNAVAILABLE,
    /// stop accepting, send every client a
    /// 1001 "going away" close (after what is already queued), wait for them to
    /// leave within the shutdown timeout, then stop gRPC.
    pub async fn shutdown(self) {
        let started = Instant::now();
        let deadline = started + self.config.shutdown_delay.0 + self.config.shutdown_timeout.0;
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        tracing::info!(
            connections = self.registry.connection_count(),
            "shutting down"
        );
        self.stop_streams.send_replace(true);
        let _ = self.stop_accept.send(());
        let _ = self.accept.await;
        tokio::time::sleep(self.config.shutdown_delay.0).await;

        self.registry.close_all(&Close {
            code: close::GOING_AWAY,
            reason: "server shutting down".to_owned(),
            reconnect: true,
            drain: true,
        });
        while self.registry.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.registry.connection_count();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown timeout reached; dropping the remaining connections"
            );
        }

        let _ = self.stop_grpc.send(());
        let grace = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let mut grpc = self.grpc;
        if tokio::time::timeout(grace, &mut grpc).await.is_err() {
            tracing::warn!("gRPC streams still open at the shutdown deadline; closing them");
            grpc.abort();
        }
        self.sweeper.abort();
        tracing::info!(elapsed = ?started.elapsed(), "stopped");
    }
}

/// The accepted gRPC sockets, with Nagle's algorithm off: tonic's `tcp_nodelay`
/// applies only to listeners it binds itself, and without it a sequential caller
/// meets delayed ACKs (~40 ms per call).
fn grpc_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

fn grpc_message_limit(config: &Config) -> usize {
    // Room for a full-size payload plus the largest broadcast topic list.
    config.max_payload_bytes + config.max_broadcast_topics * (config.max_topic_len + 8) + 64 * 1024
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<Config>,
    registry: Arc<Registry>,
    stop: oneshot::Receiver<()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(session::serve(stream, Arc::clone(&config), Arc::clone(&registry)));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn sweep_loop(registry: Arc<Registry>) {
    let period = (registry.limits().topic_retention / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let dropped = registry.sweep();
        if dropped > 0 {
            tracing::debug!(dropped, "dropped idle topics");
        }
    }
}

/// A random 12-hex-digit node id.
fn random_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; waiting for SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
