//! The admin listener end to end: a real engine on port 0 with `admin_addr`, real
//! HTTP requests over a plain TCP socket, real WebSocket and gRPC traffic.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{Client, WAIT, channel, config, grpc, json_request, publish_json, start};
use futures_util::StreamExt;
use herald::{
    Config, Engine,
    config::{Dur, TopicRule, Who},
    proto::{InfoRequest, PublishRequest, PublishStreamRequest, RemoveHistoryRequest},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn admin_config() -> Config {
    Config {
        admin_addr: "127.0.0.1:0".into(),
        ..config()
    }
}

/// One HTTP/1.1 response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one request on a fresh connection and reads the whole response.
async fn http(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an answer within the wait")
        .expect("the admin listener answers");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    Reply {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

fn admin(engine: &Engine) -> SocketAddr {
    engine.admin_addr().expect("the admin listener is on")
}

async fn scrape(engine: &Engine) -> String {
    let reply = http(admin(engine), "GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.body
}

/// The value of one series (name and labels exactly as exposed).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Scrapes until every series has its expected value, or fails with the last
/// scrape (counters of a finished write are recorded just after the write).
async fn expect_metrics(engine: &Engine, expected: &[(&str, f64)]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = scrape(engine).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, want)| value(&metrics, series) != Some(*want))
            .map(|(series, want)| {
                format!("{series}: want {want}, got {:?}", value(&metrics, series))
            })
            .collect();
        if wrong.is_empty() {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never matched:\n{}\n\n{metrics}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_admin_listener_is_off_unless_configured_and_a_bad_address_is_refused() {
    let engine = start(config()).await;
    assert_eq!(engine.admin_addr(), None);
    engine.shutdown().await;

    let bad = Config {
        admin_addr: "localhost".into(),
        ..config()
    };
    let err = Engine::start(bad).await.expect_err("an invalid admin_addr");
    assert!(err.to_string().contains("admin_addr"), "{err}");
}

#[tokio::test]
async fn a_publish_to_n_subscribers_is_counted_once_per_publish_and_per_delivery() {
    const N: usize = 5;
    const MESSAGES: usize = 3;
    let engine = start(admin_config()).await;
    let mut producer = grpc(&engine).await;
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut c = Client::connect(&engine).await;
        c.subscribe(&["news:metrics"]).await;
        clients.push(c);
    }
    for i in 0..MESSAGES {
        publish_json(&mut producer, "news:metrics", json!(i)).await;
    }
    for c in &mut clients {
        for i in 0..MESSAGES {
            assert_eq!(c.next_message().await["data"], json!(i));
        }
    }
    // Each client was written its "connected", its "subscribed" and the messages.
    let frames = (N * (2 + MESSAGES)) as f64;
    let metrics = expect_metrics(
        &engine,
        &[
            ("herald_ready", 1.0),
            ("herald_connections", N as f64),
            ("herald_topics", 1.0),
            ("herald_subscriptions", N as f64),
            ("herald_messages_published_total", MESSAGES as f64),
            ("herald_messages_delivered_total", (N * MESSAGES) as f64),
            (
                "herald_messages_dropped_total{reason=\"slow_consumer\"}",
                0.0,
            ),
            ("herald_messages_dropped_total{reason=\"expired\"}", 0.0),
            ("herald_slow_disconnects_total", 0.0),
            ("herald_fanout_duration_seconds_count", MESSAGES as f64),
            ("herald_writer_batch_frames_sum", frames),
            ("herald_broker_info{kind=\"in_process\"}", 1.0),
        ],
    )
    .await;
    // Every message was in some batch: at least one latency sample per client,
    // at most one per message per client.
    let latencies = value(&metrics, "herald_publish_to_write_seconds_count").unwrap();
    assert!(
        (N as f64..=(N * MESSAGES) as f64).contains(&latencies),
        "{latencies}"
    );
    assert!(value(&metrics, "herald_publish_to_write_seconds_sum").unwrap() > 0.0);
    let batches = value(&metrics, "herald_writer_batch_frames_count").unwrap();
    assert!((1.0..=frames).contains(&batches), "{batches}");
    assert_eq!(
        value(&metrics, "herald_writer_batch_frames_bucket{le=\"+Inf\"}"),
        Some(batches)
    );
    // No per-topic or per-connection labels anywhere.
    assert!(!metrics.contains("news:metrics"));

    // Clients that leave are counted by their close code (1000: the client closed).
    for mut c in clients {
        c.ws.close(None).await.unwrap();
        while c.ws.next().await.is_some() {}
    }
    expect_metrics(
        &engine,
        &[
            ("herald_connections", 0.0),
            ("herald_subscriptions", 0.0),
            ("herald_connections_closed_total{code=\"1000\"}", N as f64),
            ("herald_connections_closed_total{code=\"4001\"}", 0.0),
        ],
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_backlog_is_counted_as_dropped_by_reason() {
    let mut cfg = admin_config();
    cfg.queue_max_messages = 64;
    cfg.write_timeout = Dur(Duration::from_secs(120));
    cfg.close_grace = Dur(Duration::from_millis(500));
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut slow = Client::connect(&engine).await;
    slow.subscribe(&["prices:slow"]).await;
    let padding = "x".repeat(16 * 1024);
    let mut published = 0;
    while engine.stats().slow_disconnects == 0 {
        assert!(published < 5000, "the client was never found out");
        publish_json(&mut producer, "prices:slow", json!({ "pad": padding })).await;
        published += 1;
    }
    common::eventually("the slow client is dropped", || {
        engine.stats().connections == 0
    })
    .await;
    let stats = engine.stats();
    assert!(stats.dropped_slow_consumer >= 60, "{stats:?}");
    assert_eq!(stats.dropped_expired, 0);
    assert_eq!(stats.dropped, stats.dropped_slow_consumer);
    expect_metrics(
        &engine,
        &[
            ("herald_slow_disconnects_total", 1.0),
            (
                "herald_messages_dropped_total{reason=\"slow_consumer\"}",
                stats.dropped_slow_consumer as f64,
            ),
            ("herald_messages_dropped_total{reason=\"expired\"}", 0.0),
            ("herald_connections_closed_total{code=\"4001\"}", 1.0),
            ("herald_messages_published_total", published as f64),
            ("herald_messages_delivered_total", stats.delivered as f64),
        ],
    )
    .await;
    // Info's messages_dropped is the sum of the reasons.
    let info = producer.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.messages_dropped, stats.dropped);
    drop(slow);
    engine.shutdown().await;
}

#[tokio::test]
async fn messages_that_outlive_their_ttl_in_a_queue_are_counted_as_expired() {
    const EXPIRING: u64 = 7;
    let mut cfg = admin_config();
    // Room for a backlog larger than the socket buffers, without a slow-consumer close.
    cfg.queue_max_bytes = 256 * 1024 * 1024;
    cfg.write_timeout = Dur(Duration::from_secs(120));
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["ttl:x"]).await;

    // The client stops reading: 32 MiB fills the loopback socket buffers, and
    // the rest waits in the connection's queue.
    let padding = "x".repeat(16 * 1024);
    for _ in 0..2048 {
        publish_json(&mut producer, "ttl:x", json!({ "pad": padding })).await;
    }
    // Behind that backlog, messages with a 50 ms TTL; they expire in the queue.
    for i in 0..EXPIRING {
        let mut req = json_request("ttl:x", json!({ "short": i }));
        req.ttl_ms = Some(50);
        producer.publish(req).await.unwrap();
    }
    publish_json(&mut producer, "ttl:x", json!("last")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Reading again lets the writer drain the queue, dropping the expired ones.
    loop {
        let msg = client.next_message().await;
        assert!(
            msg["data"].get("short").is_none(),
            "an expired message: {msg}"
        );
        if msg["data"] == "last" {
            break;
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.slow_disconnects, 0);
    expect_metrics(
        &engine,
        &[
            (
                "herald_messages_dropped_total{reason=\"expired\"}",
                EXPIRING as f64,
            ),
            (
                "herald_messages_dropped_total{reason=\"slow_consumer\"}",
                0.0,
            ),
            (
                "herald_messages_published_total",
                (2048 + EXPIRING + 1) as f64,
            ),
        ],
    )
    .await;
    let info = producer.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.messages_dropped, EXPIRING);
    assert_eq!(engine.stats().dropped_expired, EXPIRING);
    engine.shutdown().await;
}

#[tokio::test]
async fn history_bytes_messages_and_evictions_are_exported() {
    const BOUND: usize = 8 * 1024;
    let engine = start(Config {
        history_max_bytes: BOUND,
        topics: vec![TopicRule {
            pattern: "hist:*".to_owned(),
            subscribe: Some(Who::Anyone),
            publish_rate: None,
            publish_burst: None,
            message_ttl: None,
            history_size: Some(1000),
            history_ttl: None,
        }],
        ..admin_config()
    })
    .await;
    expect_metrics(
        &engine,
        &[
            ("herald_history_bytes", 0.0),
            ("herald_history_messages", 0.0),
            ("herald_history_evicted_total", 0.0),
        ],
    )
    .await;

    let mut producer = grpc(&engine).await;
    let pad = "x".repeat(200);
    for n in 0..100 {
        publish_json(&mut producer, "hist:metrics", json!({ "n": n, "pad": pad })).await;
        // A topic without history holds nothing.
        publish_json(
            &mut producer,
            "plain:metrics",
            json!({ "n": n, "pad": pad }),
        )
        .await;
    }
    let stats = engine.stats();
    assert!(stats.history_evicted > 0, "{stats:?}");
    assert!(
        stats.history_messages > 0 && stats.history_messages + stats.history_evicted == 100,
        "{stats:?}"
    );
    assert!(
        stats.history_bytes > 0 && stats.history_bytes <= BOUND as u64,
        "{stats:?}"
    );
    expect_metrics(
        &engine,
        &[
            ("herald_history_bytes", stats.history_bytes as f64),
            ("herald_history_messages", stats.history_messages as f64),
            ("herald_history_evicted_total", stats.history_evicted as f64),
        ],
    )
    .await;

    // Removing a topic's history empties the gauges; evictions stay counted.
    producer
        .remove_history(RemoveHistoryRequest {
            topic: "hist:metrics".into(),
        })
        .await
        .unwrap();
    let metrics = expect_metrics(
        &engine,
        &[
            ("herald_history_messages", 0.0),
            ("herald_history_evicted_total", stats.history_evicted as f64),
        ],
    )
    .await;
    assert_eq!(
        value(&metrics, "herald_history_bytes"),
        Some(engine.stats().history_bytes as f64)
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn grpc_calls_are_counted_by_method_and_status_code() {
    let engine = start(admin_config()).await;
    let mut producer = grpc(&engine).await;
    publish_json(&mut producer, "calls:a", json!(1)).await;
    publish_json(&mut producer, "calls:a", json!(2)).await;
    let refused = producer
        .publish(PublishRequest {
            topic: "no spaces allowed".into(),
            data: b"1".to_vec().into(),
            content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .expect_err("an invalid topic");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    producer.info(InfoRequest {}).await.unwrap();

    // A stream that ends when the client closes its side.
    let requests = tokio_stream::iter([PublishStreamRequest {
        client_seq: 1,
        message: Some(json_request("calls:a", json!(3))),
        ..Default::default()
    }]);
    let mut responses = producer
        .publish_stream(requests)
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());
    assert!(
        responses.message().await.unwrap().is_none(),
        "the stream ends"
    );

    let mut health = HealthClient::new(channel(&engine).await);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    // A method nobody serves.
    let mut raw = tonic::client::Grpc::new(channel(&engine).await);
    raw.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<InfoRequest, InfoRequest>::default();
    let missing = raw
        .unary(
            tonic::Request::new(InfoRequest {}),
            http::uri::PathAndQuery::from_static("/herald.v1.Herald/NoSuchMethod"),
            codec,
        )
        .await
        .expect_err("an unknown method");
    assert_eq!(missing.code(), tonic::Code::Unimplemented);

    let herald = |method: &str, code: &str| {
        format!(
            "herald_grpc_requests_total{{service=\"herald.v1.Herald\",method=\"{method}\",code=\"{code}\"}}"
        )
    };
    let publish_ok = herald("Publish", "OK");
    let publish_invalid = herald("Publish", "INVALID_ARGUMENT");
    let info_ok = herald("Info", "OK");
    let stream_ok = herald("PublishStream", "OK");
    let health_ok = "herald_grpc_requests_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"}";
    let unknown =
        "herald_grpc_requests_total{service=\"unknown\",method=\"unknown\",code=\"UNIMPLEMENTED\"}";
    let publish_count = "herald_grpc_request_duration_seconds_count{service=\"herald.v1.Herald\",method=\"Publish\"}";
    let metrics = expect_metrics(
        &engine,
        &[
            (&publish_ok, 2.0),
            (&publish_invalid, 1.0),
            (&info_ok, 1.0),
            (&stream_ok, 1.0),
            (health_ok, 1.0),
            (unknown, 1.0),
            (publish_count, 3.0),
        ],
    )
    .await;
    assert!(
        value(
            &metrics,
            "herald_grpc_request_duration_seconds_sum{service=\"herald.v1.Herald\",method=\"Publish\"}"
        )
        .unwrap()
            > 0.0
    );
    assert!(
        !metrics.contains("NoSuchMethod"),
        "unknown paths are not labels"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn readyz_agrees_with_grpc_health_and_turns_503_at_the_first_moment_of_shutdown() {
    let mut cfg = admin_config();
    cfg.shutdown_delay = Dur(Duration::from_millis(800));
    let engine = start(cfg).await;
    let addr = admin(&engine);
    let mut health = HealthClient::new(channel(&engine).await);
    let grpc_status = |status: i32| ServingStatus::try_from(status).unwrap();

    let ready = http(addr, "GET", "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    let healthz = http(addr, "GET", "/healthz").await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(grpc_status(status), ServingStatus::Serving);

    // A client keeps the node in its shutdown delay for a while.
    let mut client = Client::connect(&engine).await;
    let shutdown = tokio::spawn(engine.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let not_ready = http(addr, "GET", "/readyz").await;
    assert_eq!(
        (not_ready.status, not_ready.body.as_str()),
        (503, "not ready\n")
    );
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(grpc_status(status), ServingStatus::NotServing, "they agree");
    assert_eq!(
        http(addr, "GET", "/healthz").await.status,
        200,
        "still alive"
    );
    let metrics = http(addr, "GET", "/metrics").await.body;
    assert_eq!(value(&metrics, "herald_ready"), Some(0.0));

    let (_, close) = client.read_until_close().await;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    // The admin listener stopped with the node.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_status_page_and_its_json_load() {
    let engine = start(admin_config()).await;
    let addr = admin(&engine);
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["status:a", "status:b"]).await;

    let page = http(addr, "GET", "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("<canvas"), "a chart");
    assert!(page.body.contains("status.json"), "it polls the JSON");
    for external in ["src=", "href=", "http://", "https://", "@import"] {
        assert!(
            !page.body.contains(external),
            "no external assets: {external}"
        );
    }

    let status = http(addr, "GET", "/status.json").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let s: Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(s["ready"], true);
    assert_eq!(s["connections"], 1);
    assert_eq!(s["topics"], 2);
    assert_eq!(s["subscriptions"], 2);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["node_id"].as_str().is_some_and(|id| !id.is_empty()));
    for key in [
        "uptime_seconds",
        "messages_published",
        "messages_delivered",
        "messages_dropped",
        "messages_dropped_slow_consumer",
        "messages_dropped_expired",
        "slow_disconnects",
    ] {
        assert!(s[key].is_number(), "{key} in {s}");
    }

    // Anything else gets a clear answer, never a crash.
    let missing = http(addr, "GET", "/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("/metrics"), "{}", missing.body);
    let post = http(addr, "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = http(addr, "HEAD", "/metrics").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let garbage = {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"\x00\x01 not http at all\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await;
        String::from_utf8_lossy(&raw).into_owned()
    };
    assert!(
        garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
        "{garbage}"
    );
    assert_eq!(
        http(addr, "GET", "/healthz").await.status,
        200,
        "still serving"
    );
    engine.shutdown().await;
}
