//! Limits over real sockets (docs/security.md, "Limits"): the origin allow-list,
//! connection limits and the connect rate at the handshake, per-topic publish
//! rates and TTLs, and the gRPC port's stream and connection limits.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::IpAddr, time::Duration};

use common::{Client, config, grpc, json_request, publish_json, start};
use herald::{
    Engine,
    config::{Dur, TopicRule, Who},
    proto::WatchPresenceRequest,
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// What a handshake got: 101, or the refusal's status, Retry-After and body.
enum Outcome {
    /// The open connection, kept so that it holds its places.
    #[allow(dead_code)]
    Open(Box<Client>),
    Refused(u16, Option<String>, String),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Open(_) => f.write_str("Open"),
            Outcome::Refused(status, retry, body) => {
                write!(f, "Refused({status}, {retry:?}, {body:?})")
            }
        }
    }
}

impl Outcome {
    fn status(&self) -> u16 {
        match self {
            Outcome::Open(_) => 101,
            Outcome::Refused(status, ..) => *status,
        }
    }
}

/// Connects from `from` (a loopback address), with an optional `Origin`.
async fn connect(engine: &Engine, from: [u8; 4], query: &str, origin: Option<&str>) -> Outcome {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((IpAddr::from(from), 0).into()).unwrap();
    let tcp = socket.connect(engine.ws_addr()).await.unwrap();
    let mut request = format!("ws://{}/ws{query}", engine.ws_addr())
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
    {
        Ok((ws, _)) => {
            let mut client = Client::from_ws(ws);
            let hello = client.next_json().await;
            assert_eq!(hello["type"], "connected");
            Outcome::Open(Box::new(client))
        }
        Err(tungstenite::Error::Http(resp)) => Outcome::Refused(
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

#[tokio::test]
async fn browsers_from_other_origins_get_403_and_non_browsers_pass() {
    let mut cfg = config();
    cfg.allowed_origins = "https://app.example.com, *.example.org".into();
    let engine = start(cfg).await;
    let local = [127, 0, 0, 1];
    for origin in ["https://app.example.com", "https://chat.example.org"] {
        assert_eq!(
            connect(&engine, local, "", Some(origin)).await.status(),
            101,
            "{origin}"
        );
    }
    assert_eq!(connect(&engine, local, "", None).await.status(), 101);
    for origin in [
        "https://evil.example",
        "http://app.example.com",
        "https://example.org",
        "null",
    ] {
        match connect(&engine, local, "", Some(origin)).await {
            Outcome::Refused(403, _, body) => {
                assert!(body.starts_with("origin_forbidden"), "{body}")
            }
            other => panic!("{origin}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn connection_limits_per_node_ip_and_user_refuse_at_the_handshake() {
    let mut cfg = config();
    cfg.max_connections = 3;
    cfg.max_connections_per_ip = 2;
    cfg.max_connections_per_user = 1;
    let engine = start(cfg).await;

    let a1 = connect(&engine, [127, 0, 0, 1], "?user=alice", None).await;
    assert_eq!(a1.status(), 101);
    match connect(&engine, [127, 0, 0, 2], "?user=alice", None).await {
        Outcome::Refused(429, _, body) => {
            assert!(body.starts_with("too_many_connections"), "{body}")
        }
        other => panic!("{other:?}"),
    }
    let b = connect(&engine, [127, 0, 0, 1], "?user=bob", None).await;
    assert_eq!(b.status(), 101);
    match connect(&engine, [127, 0, 0, 1], "", None).await {
        Outcome::Refused(429, _, body) => assert!(body.contains("127.0.0.1"), "{body}"),
        other => panic!("{other:?}"),
    }
    let c = connect(&engine, [127, 0, 0, 3], "", None).await;
    assert_eq!(c.status(), 101);
    match connect(&engine, [127, 0, 0, 4], "", None).await {
        Outcome::Refused(503, retry, body) => {
            assert_eq!(retry.as_deref(), Some("5"));
            assert!(body.starts_with("node_full"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    // A closed connection gives its places back.
    drop(a1);
    common::eventually("alice's connection is gone", || {
        engine.stats().connections == 2
    })
    .await;
    let mut again = None;
    for _ in 0..50 {
        let outcome = connect(&engine, [127, 0, 0, 2], "?user=alice", None).await;
        if outcome.status() == 101 {
            again = Some(outcome);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "alice could not connect again");
}

#[tokio::test]
async fn the_per_ip_connect_rate_answers_429_with_retry_after() {
    let mut cfg = config();
    cfg.ip_connect_rate = 1.0;
    cfg.ip_connect_burst = 2;
    let engine = start(cfg).await;
    let _one = connect(&engine, [127, 0, 0, 1], "", None).await;
    let _two = connect(&engine, [127, 0, 0, 1], "", None).await;
    match connect(&engine, [127, 0, 0, 1], "", None).await {
        Outcome::Refused(429, Some(retry), body) => {
            assert_eq!(retry, "1");
            assert!(body.starts_with("too_many_connects"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    // Another address has its own bucket.
    assert_eq!(
        connect(&engine, [127, 0, 0, 9], "", None).await.status(),
        101
    );
}

fn rule(pattern: &str, rate: Option<f64>, burst: Option<u32>, ttl: Option<Duration>) -> TopicRule {
    TopicRule {
        pattern: pattern.into(),
        subscribe: Some(Who::Anyone),
        publish_rate: rate,
        publish_burst: burst,
        message_ttl: ttl.map(Dur),
        history_size: None,
        history_ttl: None,
    }
}

#[tokio::test]
async fn publishes_over_a_topic_rate_are_resource_exhausted_with_the_wait() {
    let mut cfg = config();
    cfg.topics = vec![rule("broadcast:*", Some(2.0), Some(3), None)];
    let engine = start(cfg).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["broadcast:global"]).await;
    let mut producer = grpc(&engine).await;
    for i in 0..3 {
        publish_json(&mut producer, "broadcast:global", json!(i)).await;
    }
    let refused = producer
        .publish(json_request("broadcast:global", json!("over")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("retry after"), "{refused}");
    let wait: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .expect("the retry-after-ms trailer")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=500).contains(&wait), "{wait}");
    // Another topic of the same pattern has its own bucket; others are free.
    publish_json(&mut producer, "broadcast:other", json!(1)).await;
    for i in 0..20 {
        publish_json(&mut producer, "free", json!(i)).await;
    }
    // A broadcast naming a topic over its rate is refused whole.
    let refused = producer
        .broadcast(herald::proto::BroadcastRequest {
            topics: vec!["free".into(), "broadcast:global".into()],
            data: b"1".to_vec().into(),
            content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // After the wait, the topic takes publishes again.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    publish_json(&mut producer, "broadcast:global", json!("later")).await;
    for want in [json!(0), json!(1), json!(2), json!("later")] {
        assert_eq!(client.next_message().await["data"], want);
    }
}

#[tokio::test]
async fn a_rule_s_message_ttl_applies_to_publishes_without_one() {
    let mut cfg = config();
    cfg.topics = vec![rule("ttl:*", None, None, Some(Duration::from_millis(50)))];
    // Room for a backlog larger than the socket buffers, without a slow-consumer close.
    cfg.queue_max_bytes = 256 * 1024 * 1024;
    cfg.write_timeout = Dur(Duration::from_secs(120));
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["pad", "ttl:x"]).await;
    // The client stops reading: 32 MiB fills the socket buffers and the queue.
    let padding = "x".repeat(16 * 1024);
    for _ in 0..2048 {
        publish_json(&mut producer, "pad", json!({ "pad": padding })).await;
    }
    for i in 0..5 {
        publish_json(&mut producer, "ttl:x", json!({ "short": i })).await;
    }
    // One with its own, longer TTL survives.
    let mut req = json_request("ttl:x", json!("own ttl"));
    req.ttl_ms = Some(60_000);
    producer.publish(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    loop {
        let msg = client.next_message().await;
        assert!(
            msg["data"].get("short").is_none(),
            "an expired message: {msg}"
        );
        if msg["data"] == "own ttl" {
            break;
        }
    }
    assert_eq!(engine.stats().dropped, 5);
}

#[tokio::test]
async fn watch_presence_streams_are_limited_per_node_and_abandoned_ones_free_their_place() {
    let mut cfg = config();
    cfg.max_presence_watchers = 1;
    let engine = start(cfg).await;
    let request = || WatchPresenceRequest {
        topics: vec!["room:>".into()],
        ..Default::default()
    };
    let mut first_client = grpc(&engine).await;
    let first = first_client.watch_presence(request()).await.unwrap();
    let refused = grpc(&engine)
        .await
        .watch_presence(request())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    // The watcher goes away without closing its stream cleanly.
    drop(first);
    drop(first_client);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(stream) = grpc(&engine).await.watch_presence(request()).await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the abandoned stream kept its place");
}

/// Whether the server closes `tcp` within `wait`.
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn silent_and_idle_grpc_sockets_are_closed() {
    let mut cfg = config();
    cfg.grpc_setup_timeout = Dur(Duration::from_millis(300));
    cfg.grpc_idle_timeout = Dur(Duration::from_millis(600));
    cfg.grpc_keepalive_interval = Dur(Duration::ZERO);
    let engine = start(cfg).await;
    // Silent sockets, and one that sends half a preface and stops.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(engine.grpc_addr()).await.unwrap());
    }
    let mut half = TcpStream::connect(engine.grpc_addr()).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for tcp in silent.iter_mut().chain(std::iter::once(&mut half)) {
        assert!(closed_within(tcp, Duration::from_secs(3)).await);
    }
    // A connection that completes HTTP/2 setup, then goes quiet.
    let mut quiet = TcpStream::connect(engine.grpc_addr()).await.unwrap();
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = quiet.read(&mut buf).await.unwrap();
    assert!(n >= 9, "the server's SETTINGS");
    quiet
        .write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(closed_within(&mut quiet, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the idle timeout"
    );
    // The API still serves.
    let mut producer = grpc(&engine).await;
    publish_json(&mut producer, "after", json!(1)).await;
}
