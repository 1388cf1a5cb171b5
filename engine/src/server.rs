//! Starting and stopping a node: binds the WebSocket and gRPC listeners, runs the
//! accept loop (each accepted socket becomes a [`crate::session`]), serves gRPC with
//! health and reflection, sweeps idle topics, and shuts down gracefully.
//!
//! Health is NOT_SERVING until both listeners are up, SERVING while the node runs,
//! and NOT_SERVING again from the first moment of shutdown.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::{
    admin,
    apikey::{self, ApiKeyLayer, ApiKeys},
    auth::{ClientAccess, KeyError},
    broker::{Broker, InProcess},
    cluster::{Cluster, ClusterError, broker::NatsBroker},
    config::{Config, ConfigError},
    grpc::{self, HeraldService},
    history::HistoryRules,
    limits::ConnLimits,
    metrics::{GrpcLayer, GrpcMetrics, Metrics},
    presence::PresenceHub,
    proto::{self, herald_server::HeraldServer},
    queue::Close,
    registry::{Limits, Registry},
    session,
    stats::Stats,
    tls,
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
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token keys or topic rules could not be loaded.
    #[error("client authentication: {0}")]
    Auth(#[from] KeyError),
    /// A TLS certificate, key or CA file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The API keys are unusable.
    #[error(transparent)]
    ApiKeys(#[from] apikey::ApiKeyError),
    /// The NATS options are unusable (`nats_url` and friends).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A running node: its listeners, its tasks, and how to stop them.
#[derive(Debug)]
pub struct Engine {
    config: Arc<Config>,
    registry: Arc<Registry>,
    health: HealthReporter,
    ws_addr: SocketAddr,
    grpc_addr: SocketAddr,
    /// Cancelled at the start of shutdown: the accept loop and open gRPC streams end.
    shutdown: CancellationToken,
    /// The accept loop and every session (with its writer).
    sessions: TaskTracker,
    /// Cancelled once the connections are gone: the gRPC server stops.
    stop_grpc: CancellationToken,
    grpc: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    /// Set while gRPC health is SERVING (what `/readyz` reports).
    ready: Arc<AtomicBool>,
    /// The admin listener, when there is one.
    admin: Option<AdminListener>,
}

/// The running admin listener.
#[derive(Debug)]
struct AdminListener {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

const SERVICE: &str = <HeraldServer<HeraldService> as tonic::server::NamedService>::NAME;

impl Engine {
    /// Binds both listeners and starts serving. Port 0 picks free ports; see
    /// [`Engine::ws_addr`] and [`Engine::grpc_addr`].
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        // 0. Who may connect and subscribe; keys and certificates, before anything listens.
        let access = Arc::new(ClientAccess::from_config(&config)?);
        log_access(&access);
        let api_keys = Arc::new(ApiKeys::load(&config)?);
        let ws_tls = tls::ws_acceptor(&config)?;
        let limits = Arc::new(
            ConnLimits::new(&config).map_err(|e| StartError::Config(ConfigError::Invalid(e)))?,
        );
        let grpc_builder = tls::grpc_builder(&config)?;
        // 1. Bind.
        let (ws_listener, ws_addr) = bind(config.ws_addr, config.listen_backlog)?;
        let (grpc_listener, grpc_addr) = bind(config.grpc_addr, config.listen_backlog)?;
        let admin_listener = match config.admin_socket_addr()? {
            Some(addr) => Some(bind(addr, config.listen_backlog)?),
            None => None,
        };

        // 2. The node's state.
        let node_id: Arc<str> = if config.node_id.is_empty() {
            Arc::from(random_node_id())
        } else {
            Arc::from(config.node_id.as_str())
        };
        // Checked by Config::validate; an unparsable list tracks nothing.
        let tracked = config.presence_patterns().unwrap_or_default();
        let registry = Registry::new(
            Limits {
                max_topic_len: config.max_topic_len,
                max_subscriptions: config.max_subscriptions,
                queue_max_messages: config.queue_max_messages,
                queue_max_bytes: config.queue_max_bytes,
                idempotency_window: config.idempotency_window.0,
                idempotency_max_keys: config.idempotency_max_keys,
                topic_retention: config.topic_retention.0,
            },
            Arc::new(PresenceHub::new(tracked)),
        );
        let history = HistoryRules::compile(&config.topics, config.max_topic_len);
        let registry = Arc::new(registry.with_history(history, config.history_max_bytes));
        let cluster = if config.clustered() {
            Some(Arc::new(
                Cluster::connect(&config, Arc::clone(&node_id)).await?,
            ))
        } else {
            None
        };
        let nodes = crate::cluster::nodes::spawn(
            cluster.as_ref(),
            &config,
            &node_id,
            Arc::clone(&registry),
            ws_addr,
            grpc_addr,
        );
        let shutdown = CancellationToken::new();
        let broker: Arc<dyn Broker> = match &cluster {
            Some(cluster) => Arc::new(NatsBroker::start(
                Arc::clone(cluster),
                Arc::clone(&registry),
                &config,
                shutdown.clone(),
            )),
            None => Arc::new(InProcess::new(Arc::clone(&registry))),
        };
        let broker_kind = broker.kind();
        let ready = Arc::new(AtomicBool::new(false));
        let grpc_metrics = Arc::new(GrpcMetrics::new(&[
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ]));

        // 3. gRPC: the API, health and reflection.
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let service = HeraldService::new(
            Arc::clone(&config),
            Arc::clone(&registry),
            Arc::clone(&broker),
            Arc::clone(&node_id),
            cluster.clone(),
            shutdown.clone(),
        )
        .with_nodes(nodes.clone());
        let stop_grpc = CancellationToken::new();
        let grpc_server = grpc_builder
            .max_concurrent_streams(Some(config.grpc_max_streams_per_connection))
            .http2_keepalive_interval(
                Some(config.grpc_keepalive_interval.0).filter(|d| !d.is_zero()),
            )
            .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout.0))
            // Outermost, the metrics count every call, refused ones too; then a
            // call without a valid key takes no concurrency slot.
            .layer(GrpcLayer(Arc::clone(&grpc_metrics)))
            .layer(ApiKeyLayer::new(Arc::clone(&api_keys)))
            .layer(GlobalConcurrencyLimitLayer::new(
                config.grpc_max_concurrent_calls,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                HeraldServer::new(service).max_decoding_message_size(config.grpc_message_limit()),
            )
            .serve_with_incoming_shutdown(
                grpc::incoming(grpc_listener, grpc::Timeouts::from_config(&config)),
                stop_grpc.clone().cancelled_owned(),
            );
        let grpc = tokio::spawn(async move {
            if let Err(e) = grpc_server.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });

        // 4. WebSocket sessions and the topic sweeper.
        let sessions = TaskTracker::new();
        let ctx = Arc::new(session::Ctx {
            config: Arc::clone(&config),
            registry: Arc::clone(&registry),
            broker: Arc::clone(&broker),
            access,
            limits: Arc::clone(&limits),
        });
        sessions.spawn(accept_loop(
            ws_listener,
            ws_tls.clone(),
            ctx,
            sessions.clone(),
            shutdown.clone(),
        ));
        let sweeper = tokio::spawn(sweep_loop(Arc::clone(&registry), limits));
        log_security(&config, &api_keys, ws_tls.is_some());
        let stop_watch = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop_watch.cancelled() => {}
                () = apikey::watch(api_keys) => {}
            }
        });

        // 5. The admin listener: metrics, health, status page.
        let admin = admin_listener.map(|(listener, addr)| {
            let state = admin::State {
                metrics: Metrics::new(
                    Arc::clone(&registry),
                    grpc_metrics,
                    broker_kind,
                    Arc::clone(&ready),
                    cluster.as_ref().map(|c| c.connected()),
                ),
                registry: Arc::clone(&registry),
                ready: Arc::clone(&ready),
                node_id: Arc::clone(&node_id),
                started: std::time::Instant::now(),
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(admin::serve(listener, Arc::new(state), stop.clone()));
            AdminListener { addr, stop, task }
        });

        if let Some(nodes) = &nodes.1 {
            nodes.settle().await;
        }
        set_health(&health, ServingStatus::Serving).await;
        if let Some(cluster) = &cluster {
            tokio::spawn(follow_cluster(
                cluster.connected(),
                health.clone(),
                shutdown.clone(),
            ));
        }
        ready.store(true, Ordering::SeqCst);
        let admin_addr = admin.as_ref().map(|a| a.addr.to_string());
        tracing::info!(node_id = %node_id, %ws_addr, ws_path = %config.ws_path, %grpc_addr, admin_addr = %admin_addr.as_deref().unwrap_or("off"), "herald is serving");
        Ok(Self {
            config,
            registry,
            health,
            ws_addr,
            grpc_addr,
            shutdown,
            sessions,
            stop_grpc,
            grpc,
            sweeper,
            ready,
            admin,
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

    /// The bound admin (metrics, health, status page) address, if the admin
    /// listener is on (`admin_addr`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The node's counters now.
    pub fn stats(&self) -> Stats {
        self.registry.stats()
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        self.shutdown().await;
    }

    /// Graceful shutdown: NOT_SERVING at once, open gRPC streams end with
    /// UNAVAILABLE, no new WebSocket connections; after the shutdown delay every
    /// client gets a 1001 "going away" close (after what is already queued), and
    /// the sessions are awaited until the shutdown timeout; then gRPC stops.
    pub async fn shutdown(self) {
        let started = Instant::now();
        let deadline = started + self.config.shutdown_delay.0 + self.config.shutdown_timeout.0;
        self.ready.store(false, Ordering::SeqCst);
        set_health(&self.health, ServingStatus::NotServing).await;
        tracing::info!(
            connections = self.registry.connection_count(),
            "shutting down"
        );
        self.shutdown.cancel();
        tokio::time::sleep(self.config.shutdown_delay.0).await;

        self.registry.close_all(&Close::going_away());
        self.sessions.close();
        if tokio::time::timeout_at(deadline, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.registry.connection_count(),
                "shutdown timeout reached; dropping the remaining connections"
            );
        }

        self.stop_grpc.cancel();
        let grace = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let mut grpc = self.grpc;
        if tokio::time::timeout(grace, &mut grpc).await.is_err() {
            tracing::warn!("gRPC streams still open at the shutdown deadline; closing them");
            grpc.abort();
        }
        self.sweeper.abort();
        // The admin listener goes last: /readyz says 503 for the whole shutdown.
        if let Some(admin) = self.admin {
            admin.stop.cancel();
            let _ = admin.task.await;
        }
        tracing::info!(elapsed = ?started.elapsed(), "stopped");
    }
}

/// Keeps `herald.v1.Herald` NOT_SERVING while the node has no NATS connection
/// (its publishes would fail, its presence answers would miss the other nodes);
/// the server as a whole ("") stays SERVING: its WebSocket clients are kept and
/// still get what is published on this node.
async fn follow_cluster(
    mut connected: tokio::sync::watch::Receiver<bool>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    loop {
        let up = *connected.borrow_and_update();
        if shutdown.is_cancelled() {
            return;
        }
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(SERVICE, status).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = connected.changed() => if changed.is_err() { return },
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE, status).await;
}

/// Binds a listener with the configured backlog.
fn bind(addr: SocketAddr, backlog: u32) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(backlog).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// Says at start how the listeners are secured, and warns when the API is open.
fn log_security(config: &Config, api_keys: &ApiKeys, ws_tls: bool) {
    let grpc_tls = config.grpc_tls_files().is_some();
    let client_certs = config.grpc_client_ca_path().is_some();
    if api_keys.is_open() {
        tracing::warn!(
            "no API key configured: anyone who reaches the gRPC port can publish and disconnect (set --api-key or --api-keys-file)"
        );
    } else {
        tracing::info!(keys = api_keys.count(), file = ?api_keys.file(), "gRPC calls need an API key");
    }
    tracing::info!(ws_tls, grpc_tls, client_certs, "TLS");
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<session::Ctx>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    sessions.spawn(session::serve(stream, peer, tls.clone(), Arc::clone(&ctx)));
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

/// Says at start whether clients are authenticated.
fn log_access(access: &ClientAccess) {
    match &access.tokens {
        Some(tokens) => {
            tracing::info!(algorithms = ?tokens.algorithms(), "clients authenticate with tokens");
        }
        None => {
            tracing::warn!(
                "no token key is configured: clients are NOT authenticated and may claim any \
                 user id (open mode); set --token-hmac-secret, --token-public-key or --token-jwks-file"
            );
            if access.rules.needs_authentication() {
                tracing::warn!(
                    "topic rules of kind authenticated, owner or granted admit no client in open mode"
                );
            }
        }
    }
}

/// Drops idle topics, and forgets the connect-rate state of quiet addresses.
async fn sweep_loop(registry: Arc<Registry>, limits: Arc<ConnLimits>) {
    let period = (registry.limits().topic_retention / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        limits.retain_recent();
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
