//! A cluster on a real nats-server: engines on loopback share topics through
//! NATS. Delivery across nodes, one order, history numbered and recovered by
//! JetStream on any node, and a NATS restart.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, channel, config, grpc, json_request, nats::NatsServer, start};
use herald::{
    Config, Engine,
    config::{Dur, TopicRule, Who},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn health(engine: &Engine, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel(engine).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn metrics(engine: &Engine) -> String {
    let mut tcp = tokio::net::TcpStream::connect(engine.admin_addr().unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body
}

async fn eventually_status(engine: &Engine, service: &str, want: ServingStatus) {
    for _ in 0..100 {
        if health(engine, service).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service:?} never became {want:?}");
}

fn node(nats: &str, id: &str) -> Config {
    Config {
        nats_url: vec![nats.to_owned()],
        node_id: id.to_owned(),
        nats_history_storage: "memory".to_owned(),
        topics: vec![TopicRule {
            pattern: "chat:*".to_owned(),
            subscribe: Some(Who::Anyone),
            publish_rate: None,
            publish_burst: None,
            message_ttl: None,
            history_size: Some(100),
            history_ttl: Some(Dur(Duration::from_secs(600))),
        }],
        ..config()
    }
}

async fn nodes(nats: &NatsServer, n: usize) -> Vec<Engine> {
    let mut engines = Vec::new();
    for i in 0..n {
        engines.push(start(node(&nats.url(), &format!("node-{i}"))).await);
    }
    engines
}

async fn publish(engine: &Engine, topic: &str, n: u64) -> herald::proto::PublishResponse {
    grpc(engine)
        .await
        .publish(json_request(topic, json!({ "n": n })))
        .await
        .expect("publish succeeds")
        .into_inner()
}

/// Publishes go through NATS once it is connected; the first may race the
/// connection, so wait until a publish is taken.
async fn until_connected(engine: &Engine) {
    let mut client = grpc(engine).await;
    for _ in 0..100 {
        if client
            .publish(json_request("warmup", json!(0)))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node never connected to NATS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_node_reaches_every_node_once_in_publisher_order() {
    let nats = NatsServer::start();
    let engines = nodes(&nats, 3).await;
    for e in &engines {
        until_connected(e).await;
    }
    let mut clients = Vec::new();
    for e in &engines {
        let mut c = Client::connect(e).await;
        c.subscribe(&["room:a"]).await;
        clients.push(c);
    }
    for round in 0..4u64 {
        for (i, e) in engines.iter().enumerate() {
            publish(e, "room:a", round * 3 + i as u64).await;
        }
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let mut order = Vec::new();
        let mut last_seq = 0;
        for _ in 0..12 {
            let m = c.next_message().await;
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, last_seq + 1, "per-node seq is contiguous: {m}");
            last_seq = seq;
            order.push(m["data"]["n"].as_u64().unwrap());
        }
        c.expect_silence(Duration::from_millis(300)).await;
        orders.push(order);
    }
    // Every message once everywhere, and each node's publishes in the order it
    // made them (a topic without history has no order across publishing nodes:
    // docs/operations.md).
    for order in &orders {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>(), "every message once");
        for publisher in 0..3u64 {
            let mine: Vec<u64> = order
                .iter()
                .copied()
                .filter(|n| n % 3 == publisher)
                .collect();
            assert!(
                mine.is_sorted(),
                "node {publisher}'s messages in order: {order:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_topics_have_one_sequence_and_recover_on_another_node() {
    let nats = NatsServer::start();
    let engines = nodes(&nats, 3).await;
    for e in &engines {
        until_connected(e).await;
    }
    let mut a = Client::connect(&engines[0]).await;
    a.subscribe(&["chat:x"]).await;
    let mut b = Client::connect(&engines[1]).await;
    b.subscribe(&["chat:x"]).await;
    let mut epoch = String::new();
    for n in 1..=3u64 {
        let ack = publish(&engines[(n % 3) as usize], "chat:x", n).await;
        assert_eq!(ack.sequence, n, "JetStream numbers the topic");
        if epoch.is_empty() {
            epoch = ack.epoch.clone();
        }
        assert_eq!(ack.epoch, epoch);
    }
    for c in [&mut a, &mut b] {
        for n in 1..=3u64 {
            let m = c.next_message().await;
            assert_eq!(m["seq"], json!(n), "{m}");
            assert_eq!(m["epoch"], json!(epoch));
            assert_eq!(m["data"]["n"], json!(n));
        }
    }
    // `a` leaves; three more are published; it comes back on node 2, which has
    // never had the topic, and recovers exactly what it missed.
    drop(a);
    for n in 4..=6u64 {
        assert_eq!(publish(&engines[1], "chat:x", n).await.sequence, n);
    }
    let mut again = Client::connect(&engines[2]).await;
    again
        .send_json(json!({"type": "subscribe", "id": 1, "topics": ["chat:x"],
            "since": {"chat:x": {"seq": 3, "epoch": epoch}}}))
        .await;
    let mut got: Vec<Value> = Vec::new();
    loop {
        let f = again.next_json().await;
        if f["type"] == "subscribed" {
            assert_eq!(f["recovered"]["chat:x"], json!(true), "{f}");
            break;
        }
        if f["type"] == "message" {
            got.push(f);
        }
    }
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5, 6]);
    publish(&engines[0], "chat:x", 7).await;
    assert_eq!(again.next_message().await["seq"], json!(7));
    // The History call reads the stream on any node.
    let page = grpc(&engines[0])
        .await
        .history(herald::proto::HistoryRequest {
            topic: "chat:x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 7);
    assert_eq!(page.position.unwrap().sequence, 7);
    // An idempotency key is deduplicated cluster-wide.
    let mut keyed = json_request("chat:x", json!({"n": 8}));
    keyed.idempotency_key = Some("k-8".into());
    let first = grpc(&engines[0])
        .await
        .publish(keyed.clone())
        .await
        .unwrap()
        .into_inner();
    let second = grpc(&engines[2])
        .await
        .publish(keyed)
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_degrades_then_delivery_resumes() {
    let mut nats = NatsServer::start();
    let engines = vec![
        start(Config {
            admin_addr: "127.0.0.1:0".into(),
            ..node(&nats.url(), "node-0")
        })
        .await,
        start(node(&nats.url(), "node-1")).await,
    ];
    for e in &engines {
        until_connected(e).await;
    }
    let mut c = Client::connect(&engines[1]).await;
    c.subscribe(&["room:r", "chat:r"]).await;
    publish(&engines[0], "room:r", 1).await;
    assert_eq!(c.next_message().await["data"]["n"], json!(1));

    eventually_status(&engines[0], "herald.v1.Herald", ServingStatus::Serving).await;
    let m = metrics(&engines[0]).await;
    assert!(m.contains("herald_nats_connected 1"), "{m}");
    assert!(m.contains("kind=\"nats\""), "{m}");

    nats.kill();
    // The node reports the outage but keeps serving its clients.
    eventually_status(&engines[0], "herald.v1.Herald", ServingStatus::NotServing).await;
    assert_eq!(health(&engines[0], "").await, ServingStatus::Serving);
    assert!(
        metrics(&engines[0])
            .await
            .contains("herald_nats_connected 0")
    );
    // Publishes answer UNAVAILABLE instead of hanging.
    let mut g = grpc(&engines[0]).await;
    let mut refused = false;
    for _ in 0..50 {
        let started = std::time::Instant::now();
        match g.publish(json_request("room:r", json!({"n": 2}))).await {
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                assert!(started.elapsed() < Duration::from_secs(3));
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(refused, "a publish while NATS is down is refused");
    nats.restart();
    let restarted = std::time::Instant::now();
    // Delivery resumes (both kinds of topic) once the nodes are back.
    let mut n = 100;
    loop {
        n += 1;
        let ok = g
            .publish(json_request("room:r", json!({ "n": n })))
            .await
            .is_ok();
        if ok {
            let m = c.next_message().await;
            assert_eq!(m["data"]["n"], json!(n));
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "NATS never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "delivery resumed {:?} after the restart",
        restarted.elapsed()
    );
    eventually_status(&engines[0], "herald.v1.Herald", ServingStatus::Serving).await;
    let ack = loop {
        match g.publish(json_request("chat:r", json!({"n": 1}))).await {
            Ok(a) => break a.into_inner(),
            Err(_) if restarted.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("history publishes never came back: {e:?}"),
        }
    };
    let m = c.next_message().await;
    assert_eq!(m["seq"], json!(ack.sequence));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cluster_losing_a_server_loses_no_message_of_a_history_topic() {
    let mut servers = NatsServer::start_cluster();
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let cluster_node = |id: &str| Config {
        nats_url: urls.clone(),
        nats_history_replicas: 3,
        nats_history_storage: "file".to_owned(),
        ..node(&urls[0], id)
    };
    let a = start(cluster_node("node-a")).await;
    let b = start(cluster_node("node-b")).await;
    let mut g = grpc(&a).await;
    // The JetStream cluster elects its leaders first; the streams follow.
    let started = std::time::Instant::now();
    let keyed = |n: u64| {
        let mut r = json_request("chat:ha", json!({ "n": n }));
        r.idempotency_key = Some(format!("m-{n}"));
        r
    };
    while g.publish(keyed(0)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no JetStream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = Client::connect(&b).await;
    c.subscribe(&["chat:ha"]).await;
    // 200 messages, one server killed after the first 100; a publish refused
    // during the failover is retried with the same key, as a producer would.
    for n in 1..=200u64 {
        if n == 101 {
            servers[0].kill();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while g.publish(keyed(n)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "publish {n} never taken"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut seen = Vec::new();
    let mut last_seq = 1; // the warm-up message came before the subscribe
    while seen.len() < 200 {
        let m = c.next_message().await;
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "contiguous, no duplicate: {m}");
        last_seq = seq;
        seen.push(m["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());
    c.expect_silence(Duration::from_millis(300)).await;
}
