//! Herald: a real-time broadcast engine. WebSocket clients subscribe to topics;
//! producers publish and steer connections over gRPC (`proto/herald/v1`).
//!
//! The crate follows the data path of a message:
//!
//! | step | module | owns |
//! |------|--------|------|
//! | accept | [`server`] | listeners, gRPC + health + reflection, graceful shutdown |
//! | session | [`session`] | handshake, the client's read loop and commands |
//! | registry | [`registry`] | connections (slab), users, the topic map |
//! | topic snapshot | [`topic`], [`snapshot`] | subscriber sets as immutable chunked snapshots; fan-out |
//! | queue | [`queue`] | each connection's bounded outgoing queue |
//! | writer | [`writer`] | batched socket writes, heartbeats, close frames |
//!
//! Around it: [`grpc`] (the producer API), [`broker`] (the seam where a
//! multi-node broker plugs in), [`protocol`] (the client wire format),
//! [`topic_name`] (the topic rule), [`conn`] (per-connection shared state),
//! [`presence`] (presence events and their watchers) and [`config`].

#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod config;
pub mod conn;
pub mod grpc;
pub mod presence;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod topic;
pub mod topic_name;
pub mod writer;

pub use config::Config;
pub use server::Engine;

pub mod proto {
    //! Code generated from `proto/herald/v1/herald.proto`.
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("herald.v1");

    /// The encoded file descriptor set served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));
}
