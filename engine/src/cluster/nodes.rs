//! Discovery: the node heartbeats on `<prefix>.nodes` and the table of live nodes.
//!
//! Every node publishes a heartbeat every `node_heartbeat` with its id, its
//! advertised WebSocket URL and gRPC address, its start time, its connection
//! count and whether it serves cluster-wide `WatchPresence` streams. Every node
//! listens to the same subject and keeps a table of the others; a node whose
//! heartbeat has not arrived for [`MISSED_BEATS`] intervals is dropped, and a node
//! that shuts down gracefully says so (a heartbeat with `gone`) and is dropped at
//! once. Changes of the table are broadcast ([`Nodes::changes`]) so that
//! presence watchers can turn a vanished node's members into leave events.
//!
//! Nothing but these heartbeats is needed to find the other nodes: no static peer
//! list, no other protocol than NATS subjects under the cluster prefix.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::{sync::broadcast, time::Instant};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::{config::Config, presence::now_ms, registry::Registry};

/// A node is gone when this many heartbeat intervals pass without one.
pub(crate) const MISSED_BEATS: u32 = 3;

/// One heartbeat, as sent on `<prefix>.nodes`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Beat {
    /// The node's id.
    #[prost(string, tag = "1")]
    pub(crate) node_id: String,
    /// Its advertised WebSocket URL.
    #[prost(string, tag = "2")]
    pub(crate) ws_url: String,
    /// Its advertised gRPC address.
    #[prost(string, tag = "3")]
    pub(crate) grpc_addr: String,
    /// When it started (ms since the Unix epoch).
    #[prost(int64, tag = "4")]
    pub(crate) started_ms: i64,
    /// Its open WebSocket connections.
    #[prost(uint64, tag = "5")]
    pub(crate) connections: u64,
    /// Cluster-wide `WatchPresence` streams it serves (the other nodes forward
    /// their presence events while any node has one).
    #[prost(uint32, tag = "6")]
    pub(crate) watchers: u32,
    /// The node is leaving (graceful shutdown).
    #[prost(bool, tag = "7")]
    pub(crate) gone: bool,
}

/// A change of the table of live nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A node was heard from for the first time (or again after it was dropped).
    Joined(Arc<str>),
    /// A node left: it said so, or missed [`MISSED_BEATS`] heartbeats.
    Left(Arc<str>),
}

#[derive(Debug)]
struct Peer {
    beat: Beat,
    seen: Instant,
}

/// This node's view of the cluster's nodes.
#[derive(Debug)]
pub(crate) struct Nodes {
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    me: Beat,
    heartbeat: Duration,
    peers: Mutex<BTreeMap<Arc<str>, Peer>>,
    changes: broadcast::Sender<Change>,
    /// Cluster-wide presence watchers served by this node.
    watchers: AtomicUsize,
    /// When the last remote interest in presence events was seen (a heartbeat
    /// with watchers, or a snapshot request).
    interest: Mutex<Option<Instant>>,
    stop: CancellationToken,
    /// Set once this node's first heartbeat is out.
    announced: tokio::sync::watch::Sender<bool>,
}

/// Counts one cluster-wide watcher of this node while it lives.
#[derive(Debug)]
pub(crate) struct WatcherGuard(Arc<Nodes>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// This node's description and, in a cluster (`cluster`), its heartbeats and
/// its table of the other nodes, started now. `ws_addr` and `grpc_addr` are the
/// bound addresses (the advertised ones default to them).
pub(crate) fn spawn(
    cluster: Option<&Arc<Cluster>>,
    config: &Config,
    node_id: &str,
    registry: Arc<Registry>,
    ws_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> (Beat, Option<Arc<Nodes>>) {
    let ws_url = if config.advertise_ws_url.is_empty() {
        format!("ws://{ws_addr}{}", config.ws_path)
    } else {
        config.advertise_ws_url.clone()
    };
    let grpc_addr = if config.advertise_grpc_addr.is_empty() {
        grpc_addr.to_string()
    } else {
        config.advertise_grpc_addr.clone()
    };
    let me = Beat {
        node_id: node_id.to_owned(),
        ws_url,
        grpc_addr,
        started_ms: now_ms(),
        connections: 0,
        watchers: 0,
        gone: false,
    };
    let Some(cluster) = cluster else {
        return (me, None);
    };
    let (changes, _) = broadcast::channel(256);
    let nodes = Arc::new(Nodes {
        cluster: Arc::clone(cluster),
        registry,
        me: me.clone(),
        heartbeat: config.node_heartbeat.0,
        peers: Mutex::new(BTreeMap::new()),
        changes,
        watchers: AtomicUsize::new(0),
        interest: Mutex::new(None),
        stop: CancellationToken::new(),
        announced: tokio::sync::watch::channel(false).0,
    });
    tokio::spawn(Arc::clone(&nodes).run());
    (me, Some(nodes))
}

impl Nodes {
    /// The subject of the heartbeats.
    fn subject(&self) -> String {
        format!("{}.nodes", self.cluster.prefix())
    }

    /// The cluster.
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The registry of this node.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The heartbeat interval.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// This node's heartbeat now.
    pub(crate) fn me(&self) -> Beat {
        Beat {
            connections: self.registry.connection_count() as u64,
            watchers: self.watchers.load(Ordering::Relaxed) as u32,
            ..self.me.clone()
        }
    }

    /// The other live nodes, in id order.
    pub(crate) fn peers(&self) -> Vec<Beat> {
        self.peers.lock().values().map(|p| p.beat.clone()).collect()
    }

    /// Every live node, this one included, in id order.
    pub(crate) fn all(&self) -> Vec<Beat> {
        let mut all = self.peers();
        let me = self.me();
        let at = all.partition_point(|b| b.node_id < me.node_id);
        all.insert(at, me);
        all
    }

    /// Whether `node_id` is a live node (this one included).
    pub(crate) fn is_live(&self, node_id: &str) -> bool {
        node_id == self.me.node_id || self.peers.lock().contains_key(node_id)
    }

    /// Whether a heartbeat of `node_id` arrived after `at`.
    pub(crate) fn heard_since(&self, node_id: &str, at: Instant) -> bool {
        self.peers.lock().get(node_id).is_some_and(|p| p.seen > at)
    }

    /// Changes of the table from now on.
    pub(crate) fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Counts a cluster-wide watcher until the guard drops; the heartbeats say
    /// so, and the other nodes forward their presence events meanwhile.
    pub(crate) fn watching(self: &Arc<Self>) -> WatcherGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatcherGuard(Arc::clone(self))
    }

    /// Notes that some node wants presence events now.
    pub(crate) fn note_interest(&self) {
        *self.interest.lock() = Some(Instant::now());
    }

    /// Whether some node has wanted presence events within the last
    /// [`MISSED_BEATS`] heartbeats.
    pub(crate) fn has_interest(&self) -> bool {
        self.interest
            .lock()
            .is_some_and(|at| at.elapsed() < self.heartbeat * MISSED_BEATS)
    }

    /// Stops the heartbeats and announces the departure (graceful shutdown).
    pub(crate) fn depart(&self) {
        self.stop.cancel();
    }

    async fn run(self: Arc<Self>) {
        let subject = self.subject();
        let mut beats = loop {
            match self.cluster.client().subscribe(subject.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to node heartbeats; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(self.heartbeat) => {}
                    }
                }
            }
        };
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                _ = ticker.tick() => {
                    self.publish(self.me()).await;
                    self.announced.send_replace(true);
                    self.sweep();
                }
                msg = beats.next() => match msg {
                    // A node heard for the first time hears from this one at
                    // once, so a new node knows the cluster within a round trip.
                    Some(msg) => if self.heard(&msg.payload) {
                        self.publish(self.me()).await;
                    },
                    None => break,
                },
            }
        }
        let gone = Beat {
            gone: true,
            ..self.me()
        };
        self.publish(gone).await;
        let _ = tokio::time::timeout(self.cluster.timeout(), self.cluster.client().flush()).await;
        tracing::info!("left the cluster");
    }

    async fn publish(&self, beat: Beat) {
        use prost::Message as _;
        if let Err(e) = self
            .cluster
            .client()
            .publish(self.subject(), beat.encode_to_vec().into())
            .await
        {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }

    /// Waits until this node has announced itself and heard the nodes already
    /// there (they answer a newcomer's first heartbeat at once): at most
    /// `nats_timeout` plus a short window, and not at all while NATS is down.
    /// The node serves once this returns, so its first presence and control
    /// answers already cover the whole cluster.
    pub(crate) async fn settle(&self) {
        if !self.cluster.is_connected() {
            return;
        }
        let mut announced = self.announced.subscribe();
        if tokio::time::timeout(self.cluster.timeout(), announced.wait_for(|a| *a))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(self.heartbeat.min(Duration::from_millis(200))).await;
    }

    /// Takes in one heartbeat; true when it is from a node not known before.
    fn heard(&self, payload: &[u8]) -> bool {
        use prost::Message as _;
        let Ok(beat) = Beat::decode(payload) else {
            tracing::debug!("ignored a malformed node heartbeat");
            return false;
        };
        if beat.node_id == self.me.node_id || beat.node_id.is_empty() {
            return false;
        }
        if beat.watchers > 0 {
            self.note_interest();
        }
        let id: Arc<str> = Arc::from(beat.node_id.as_str());
        let change = {
            let mut peers = self.peers.lock();
            if beat.gone {
                peers.remove(&id).map(|_| Change::Left(id))
            } else {
                let fresh = peers
                    .insert(
                        Arc::clone(&id),
                        Peer {
                            beat,
                            seen: Instant::now(),
                        },
                    )
                    .is_none();
                fresh.then_some(Change::Joined(id))
            }
        };
        let joined = matches!(change, Some(Change::Joined(_)));
        if let Some(change) = change {
            tracing::info!(?change, "cluster nodes changed");
            let _ = self.changes.send(change);
        }
        joined
    }

    /// Drops the nodes not heard from for [`MISSED_BEATS`] heartbeats.
    fn sweep(&self) {
        let limit = self.heartbeat * MISSED_BEATS;
        let gone: Vec<Arc<str>> = {
            let mut peers = self.peers.lock();
            let gone: Vec<Arc<str>> = peers
                .iter()
                .filter(|(_, p)| p.seen.elapsed() > limit)
                .map(|(id, _)| Arc::clone(id))
                .collect();
            for id in &gone {
                peers.remove(id);
            }
            gone
        };
        for id in gone {
            tracing::warn!(node = %id, "node missed {MISSED_BEATS} heartbeats; dropped");
            let _ = self.changes.send(Change::Left(id));
        }
    }
}
