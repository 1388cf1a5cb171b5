//! Herald: a real-time broadcast engine. WebSocket clients subscribe to topics;
//! producers publish and steer connections over gRPC (`proto/herald/v1`).
//!
//! The public API is small: build a [`Config`], [`Engine::start`] a node, read
//! its [`Stats`], [`Engine::shutdown`] it. The `herald` binary is exactly that.
//!
//! Inside, the modules follow the data path of a message:
//!
//! | step | module | owns |
//! |------|--------|------|
//! | accept | `server` | listeners, gRPC + health + reflection, graceful shutdown |
//! | security | `apikey`, `tls` | the gRPC API-key layer; rustls for both listeners |
//! | session | `session` | handshake, the client's read loop and commands |
//! | registry | `registry` | connections (slab) and their topics, users, the topic map, the lock order |
//! | topic snapshot | `topic`, `snapshot` | subscriber sets as immutable chunked snapshots; fan-out |
//! | connection | `conn` | per-connection shared state; the one send-or-close path |
//! | queue | `queue` | each connection's bounded outgoing queue, and its close |
//! | writer | `writer` | batched socket writes, heartbeats, close frames |
//!
//! Around it: `grpc` (the producer API: publish, control, presence), `admin`
//! (the optional HTTP admin listener: `/metrics`, `/healthz`, `/readyz`, a status
//! page) with `metrics` (Prometheus exposition, the gRPC call layer), `broker`
//! (the seam where a multi-node broker plugs in), `presence` (join/leave events
//! and their watchers), `protocol` (the client wire format and close codes),
//! `topic_name` (the topic rule), `auth` (connection tokens: keys and claims),
//! `rules` (who may subscribe to which topics), `handshake` and `limits` (the
//! HTTP upgrade, origins, connection and command limits), `history` (kept
//! messages and epochs), `stats` (counters) and [`config`].
//!
//! Layers import only downwards: server → grpc → session → broker / writer →
//! registry → topic → snapshot → conn → queue.

mod admin;
mod apikey;
mod auth;
mod broker;
#[allow(
    dead_code,
    reason = "the NATS broker and cluster-wide presence build on it"
)]
mod cluster;
pub mod config;
mod conn;
mod grpc;
mod handshake;
mod history;
mod limits;
mod metrics;
mod presence;
#[cfg(test)]
mod proptests;
mod protocol;
mod queue;
mod registry;
mod rules;
mod server;
mod session;
mod snapshot;
mod stats;
mod tls;
mod topic;
mod topic_name;
mod writer;

pub use apikey::ApiKeyError;
pub use auth::KeyError;
pub use cluster::ClusterError;
pub use config::Config;
pub use conn::ConnId;
pub use server::{Engine, StartError};
pub use stats::Stats;
pub use tls::TlsError;

pub mod proto {
    //! Code generated from `proto/herald/v1/herald.proto`.
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("herald.v1");

    /// The encoded file descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));
}
