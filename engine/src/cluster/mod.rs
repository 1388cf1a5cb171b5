//! The cluster: this node's connection to NATS and the names it uses there.
//!
//! A node started with `--nats-url` shares its topics with every other node on the
//! same NATS (and the same `nats_prefix`). NATS carries everything between nodes;
//! there is no other cluster protocol and no static peer list. This module owns
//! the connection (options, credentials, TLS, its up/down state) and the subject
//! names; the parts that use it sit beside it:
//!
//! | file | owns |
//! |------|------|
//! | `broker` | [`crate::broker::Broker`] over NATS: publish, per-topic interest, delivery into the registry |
//! | `streams` | JetStream streams of topics with history: per-topic sequence, recovery, history reads |
//! | `nodes` | discovery: node heartbeats, the table of live nodes, departures |
//! | `gather` | scatter/gather requests between nodes (presence, control), presence event forwarding |
//!
//! Subjects (all under `<prefix>.`; a topic's `:` becomes `.`, so `room:general`
//! is the token sequence `room.general`):
//!
//! | subject | carries |
//! |---------|---------|
//! | `<prefix>.t.<topic>` | a topic's messages to the nodes with subscribers (core NATS) |
//! | `<prefix>.h.<rule>.<topic>` | publishes of topics with history, into the rule's JetStream stream |
//! | `<prefix>.nodes` | node heartbeats and departures |
//! | `<prefix>.n.<node>.<kind>` | requests to one node: presence pages, stats, snapshots, control |
//! | `<prefix>.pe.<node>` | a node's presence events, while some node watches |
//!
//! See docs/operations.md ("Cluster") for the guarantees.

pub(crate) mod broker;
pub(crate) mod gather;
pub(crate) mod nodes;
pub(crate) mod streams;

use std::{sync::Arc, time::Duration};

use async_nats::{Client, ConnectOptions, Event, jetstream};
use tokio::sync::watch;

use crate::config::Config;

/// Why the node could not set up its NATS connection.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A credentials or certificate file could not be read.
    #[error("NATS credentials {path}: {source}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The NATS options or URLs were refused.
    #[error("NATS connection: {0}")]
    Connect(String),
}

/// This node's handle on the cluster: the NATS client and the names in use.
#[derive(Debug)]
pub(crate) struct Cluster {
    client: Client,
    jetstream: jetstream::Context,
    prefix: Arc<str>,
    node_id: Arc<str>,
    timeout: Duration,
    connected: watch::Receiver<bool>,
}

impl Cluster {
    /// Connects to the NATS servers of `config.nats_url`. Returns at once: when
    /// no server answers yet, the client keeps trying in the background and
    /// [`Cluster::connected`] says so (the node starts degraded, not at all).
    pub(crate) async fn connect(config: &Config, node_id: Arc<str>) -> Result<Self, ClusterError> {
        let (tx, connected) = watch::channel(false);
        let tx = Arc::new(tx);
        let events = Arc::clone(&tx);
        let mut options = ConnectOptions::new()
            .name(format!("herald {node_id}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.nats_timeout.0)
            .ping_interval(Duration::from_secs(10))
            .subscription_capacity(64 * 1024)
            .reconnect_delay_callback(|attempts| {
                // 0, 100 ms, 200 ms, … up to 1 s: a restarted NATS is found within a second.
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .event_callback(move |event| {
                let events = Arc::clone(&events);
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!("connected to NATS");
                            events.send_replace(true);
                        }
                        Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; the node is degraded");
                            events.send_replace(false);
                        }
                        Event::Closed => {
                            events.send_replace(false);
                        }
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(
                                sid,
                                "NATS subscription fell behind; messages were dropped"
                            );
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            });
        if !config.nats_creds.as_os_str().is_empty() {
            options = options
                .credentials_file(&config.nats_creds)
                .await
                .map_err(|source| ClusterError::Credentials {
                    path: config.nats_creds.clone(),
                    source,
                })?;
        }
        if !config.nats_user.is_empty() {
            options = options.user_and_password(
                config.nats_user.clone(),
                config.nats_password.expose().to_owned(),
            );
        }
        if !config.nats_token.expose().is_empty() {
            options = options.token(config.nats_token.expose().to_owned());
        }
        if !config.nats_tls_ca.as_os_str().is_empty() {
            options = options
                .add_root_certificates(config.nats_tls_ca.clone())
                .require_tls(true);
        }
        if !config.nats_tls_cert.as_os_str().is_empty() {
            options = options
                .add_client_certificate(config.nats_tls_cert.clone(), config.nats_tls_key.clone());
        }
        let urls: Vec<async_nats::ServerAddr> = config
            .nats_url
            .iter()
            .map(|u| {
                u.parse()
                    .map_err(|e| ClusterError::Connect(format!("{u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(urls)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(config.nats_timeout.0);
        Ok(Self {
            client,
            jetstream,
            prefix: Arc::from(config.nats_prefix.as_str()),
            node_id,
            timeout: config.nats_timeout.0,
            connected,
        })
    }

    /// The NATS client.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context (with `nats_timeout` as its request timeout).
    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The first token of every subject of this cluster.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    /// The longest wait for NATS (`nats_timeout`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the node is connected to NATS now.
    pub(crate) fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Changes of the connection state (true: connected).
    pub(crate) fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// `<prefix>.<kind>.<rest>`.
    pub(crate) fn subject(&self, kind: &str, rest: &str) -> String {
        format!("{}.{kind}.{rest}", self.prefix)
    }

    /// The subject that carries `topic`'s messages to nodes: `<prefix>.t.<topic>`.
    pub(crate) fn topic_subject(&self, topic: &str) -> String {
        self.subject("t", &topic_tokens(topic))
    }
}

/// A topic as subject tokens: `room:general` → `room.general`. The topic rule
/// (segments of `A-Z a-z 0-9 _ - = @ ~ +`) makes this one to one.
pub(crate) fn topic_tokens(topic: &str) -> String {
    topic.replace(':', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_subject_tokens_map_one_to_one() {
        for topic in ["a", "room:general", "user:42:inbox", "x=1:y@z~w+v_u-t"] {
            let tokens = topic_tokens(topic);
            assert!(!tokens.contains(':'));
            assert_eq!(
                tokens.replace('.', ":"),
                topic,
                "no '.' in a topic: reversible"
            );
        }
    }
}
