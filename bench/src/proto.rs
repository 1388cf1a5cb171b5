//! The generated herald.v1 gRPC types, client and server (from proto/herald/v1).

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used
)]

tonic::include_proto!("herald.v1");
