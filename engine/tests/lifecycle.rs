//! Connection lifecycle end to end: slow consumers, idle timeouts, mass
//! disconnects, health and graceful shutdown.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, channel, config, eventually, grpc, publish_json, start};
use futures_util::StreamExt;
use herald::{config::Dur, proto::PublishRequest};
use serde_json::json;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_the_others_keep_receiving() {
    let mut cfg = config();
    cfg.queue_max_messages = 64;
    // The notice can only reach the slow client if its writer is still waiting
    // for the socket when the client reads again: keep the write timeout out of
    // the way however slow the machine is.
    cfg.write_timeout = Dur(Duration::from_secs(120));
    cfg.close_grace = Dur(Duration::from_secs(120));
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut slow = Client::connect(&engine).await;
    slow.subscribe(&["prices:x"]).await;
    let mut healthy = Client::connect(&engine).await;
    healthy.subscribe(&["prices:x"]).await;

    // The healthy client reads everything concurrently; the slow one reads nothing.
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < 2000 {
            let msg = healthy.next_message().await;
            let seq = msg["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "in order, nothing missing");
            last = seq;
        }
        healthy
    });
    let padding = "x".repeat(16 * 1024);
    for _ in 0..2000 {
        let req = PublishRequest {
            topic: "prices:x".into(),
            data: serde_json::to_vec(&json!({ "pad": padding }))
                .unwrap()
                .into(),
            content_type: "application/json".into(),
            ..Default::default()
        };
        producer.publish(req).await.unwrap();
    }
    eventually("the slow client is found out", || {
        engine.stats().slow_disconnects >= 1
    })
    .await;

    // Once the slow client reads again it finds the notice and the close code.
    let (frames, close) = slow.read_until_close().await;
    let mut healthy = reader.await.unwrap();
    let notice = frames
        .iter()
        .find(|f| f["type"] == "disconnect")
        .expect("a disconnect notice");
    assert_eq!(notice["code"], 4001);
    assert_eq!(notice["reconnect"], true);
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4001));

    eventually("the slow client leaves the registry", || {
        engine.stats().connections == 1
    })
    .await;
    publish_json(&mut producer, "prices:x", json!("still here")).await;
    assert_eq!(healthy.next_message().await["data"], "still here");
}

#[tokio::test]
async fn a_slow_consumer_that_never_reads_again_is_dropped_after_the_close_grace() {
    let mut cfg = config();
    cfg.queue_max_messages = 64;
    cfg.write_timeout = Dur(Duration::from_secs(120));
    cfg.close_grace = Dur(Duration::from_millis(500));
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut slow = Client::connect(&engine).await;
    slow.subscribe(&["prices:y"]).await;
    let padding = "x".repeat(16 * 1024);
    let mut published = 0;
    while engine.stats().slow_disconnects == 0 {
        assert!(published < 5000, "the client was never found out");
        publish_json(&mut producer, "prices:y", json!({ "pad": padding })).await;
        published += 1;
    }
    let found_out = tokio::time::Instant::now();
    // Its writer waits on a full socket: the condemnation ends that wait, and
    // the notice gets the close grace, not the 120 s write timeout.
    eventually("the slow client is dropped", || {
        engine.stats().connections == 0
    })
    .await;
    let took = found_out.elapsed();
    assert!(took < Duration::from_secs(5), "dropped after {took:?}");
    let stats = engine.stats();
    assert_eq!(stats.slow_disconnects, 1);
    // The discarded backlog (a full queue: 64 messages or 1 MiB, about 62 of
    // these) and the one that did not fit are all counted.
    assert!(stats.dropped >= 60, "{stats:?}");
    assert_eq!(
        stats.delivered + 1,
        published,
        "every publish but the overflowing one was queued"
    );
    drop(slow);
}

#[tokio::test]
async fn an_idle_client_is_closed_at_its_deadline_not_at_the_next_ping() {
    use tokio::io::AsyncReadExt;
    let mut cfg = config();
    cfg.ping_interval = Dur(Duration::from_secs(3));
    cfg.idle_timeout = Dur(Duration::from_secs(4));
    let engine = start(cfg).await;
    let connected = tokio::time::Instant::now();
    let mut silent = common::raw_ws(&engine).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"code\":4002") {
        let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
            .await
            .expect("the close comes within 10 s")
            .unwrap();
        assert!(n > 0, "closed without a notice");
        seen.extend_from_slice(&buf[..n]);
    }
    let took = connected.elapsed();
    // Pings at 3 s and 6 s: checking only on ping ticks would close at 6 s.
    assert!(
        took >= Duration::from_millis(3900) && took <= Duration::from_secs(5),
        "closed {took:?} after connecting; the idle timeout is 4 s"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let mut cfg = config();
    cfg.ping_interval = Dur(Duration::from_millis(100));
    cfg.idle_timeout = Dur(Duration::from_millis(400));
    let engine = start(cfg).await;
    let mut silent = Client::connect(&engine).await;
    let mut lively = Client::connect(&engine).await;

    // `lively` keeps reading, so its WebSocket layer answers every ping with a pong.
    let lively_task = tokio::spawn(async move {
        lively.expect_silence(Duration::from_millis(1200)).await;
        lively
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // `silent` read nothing, so it never sent a pong: it is gone.
    let (frames, close) = silent.read_until_close().await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "disconnect" && f["code"] == 4002),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4002));
    let mut lively = lively_task.await.unwrap();
    let pong = lively.command(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    eventually("only the lively client is left", || {
        engine.stats().connections == 1
    })
    .await;
}

#[tokio::test]
async fn the_registry_is_empty_after_thousands_of_clients_drop() {
    let mut cfg = config();
    cfg.topic_retention = Dur(Duration::from_millis(200));
    let engine = start(cfg).await;
    let mut clients = Vec::new();
    for n in 0..3000 {
        let mut c = Client::connect_query(&engine, &format!("?user=u{}", n % 100)).await;
        let own = format!("user:{n}");
        c.subscribe(&["room:lobby", own.as_str()]).await;
        clients.push(c);
    }
    assert_eq!(engine.stats().connections, 3000);
    assert_eq!(engine.stats().subscriptions, 6000);
    let mut api = grpc(&engine).await;
    let lobby = || herald::proto::PresenceStatsRequest {
        topic: "room:lobby".into(),
    };
    let stats = api.presence_stats(lobby()).await.unwrap().into_inner();
    assert_eq!((stats.connections, stats.users), (3000, 100));

    // Half close politely, half just vanish.
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = c.ws.close(None).await;
        }
        drop(c);
    }
    eventually("every connection has left", || {
        engine.stats().connections == 0
    })
    .await;
    assert_eq!(engine.stats().subscriptions, 0);
    let stats = api.presence_stats(lobby()).await.unwrap().into_inner();
    assert_eq!((stats.connections, stats.users), (0, 0));
    let gone = api
        .disconnect(herald::proto::DisconnectRequest {
            target: Some(herald::proto::Target {
                target: Some(herald::proto::target::Target::UserId("u1".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        gone.code(),
        tonic::Code::NotFound,
        "the user index is empty"
    );
    eventually("idle topics are dropped", || engine.stats().topics == 0).await;
}

#[tokio::test]
async fn health_is_serving_then_not_serving_during_shutdown_and_clients_get_going_away() {
    let mut cfg = config();
    cfg.shutdown_delay = Dur(Duration::from_millis(500));
    let engine = start(cfg).await;
    let mut health = HealthClient::new(channel(&engine).await);
    for service in ["", "herald.v1.Herald"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut c = Client::connect(&engine).await;
        c.subscribe(&["room:x"]).await;
        clients.push(c);
    }
    let ws_addr = engine.ws_addr();
    let shutdown = tokio::spawn(engine.shutdown());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{ws_addr}/ws"))
            .await
            .is_err(),
        "no new connections"
    );

    for mut c in clients {
        let (frames, close) = c.read_until_close().await;
        let notice = frames
            .iter()
            .find(|f| f["type"] == "disconnect")
            .expect("a disconnect notice");
        assert_eq!(
            (notice["code"].as_u64(), notice["reconnect"].as_bool()),
            (Some(1001), Some(true))
        );
        assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    }
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
}

#[tokio::test]
async fn reflection_lists_and_describes_the_api_and_health() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let engine = start(config()).await;
    let mut reflection = ServerReflectionClient::new(channel(&engine).await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
        MessageRequest::FileContainingSymbol("herald.v1.Herald".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in ["herald.v1.Herald", "grpc.health.v1.Health"] {
        assert!(names.contains(&service), "{service} in {names:?}");
    }
    for _ in 0..2 {
        let answer = answers.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(answer, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn shutdown_delivers_what_was_queued_before_the_close() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut c = Client::connect(&engine).await;
    c.subscribe(&["room:x"]).await;
    for n in 0..100 {
        publish_json(&mut producer, "room:x", json!(n)).await;
    }
    engine.shutdown().await;
    let (frames, close) = c.read_until_close().await;
    let messages = frames.iter().filter(|f| f["type"] == "message").count();
    assert_eq!(messages, 100);
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
}

#[tokio::test]
async fn server_pings_reach_the_client() {
    let mut cfg = config();
    cfg.ping_interval = Dur(Duration::from_millis(50));
    cfg.idle_timeout = Dur(Duration::from_secs(5));
    let engine = start(cfg).await;
    let mut c = Client::connect(&engine).await;
    let ping = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) = c.ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "a ping within 2 s");
}

#[tokio::test]
async fn shutdown_ends_open_grpc_streams_with_unavailable_at_once() {
    let mut cfg = config();
    cfg.shutdown_timeout = Dur(Duration::from_secs(30));
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    let mut watch = api
        .watch_presence(herald::proto::WatchPresenceRequest {
            topics: vec!["room:*".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (publish_tx, publish_rx) = tokio::sync::mpsc::channel(1);
    let mut acks = api
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(publish_rx))
        .await
        .unwrap()
        .into_inner();
    publish_tx
        .send(herald::proto::PublishStreamRequest {
            client_seq: 1,
            message: Some(common::json_request("room:a", json!(1))),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(acks.message().await.unwrap().is_some());

    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), engine.shutdown())
        .await
        .expect("shutdown does not wait for open streams");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        watch.message().await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    assert_eq!(
        acks.message().await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    drop(publish_tx);
}

#[tokio::test]
async fn a_socket_that_accepts_nothing_is_dropped_after_the_write_timeout() {
    let mut cfg = config();
    cfg.write_timeout = Dur(Duration::from_millis(300));
    // Queues large enough that only the write timeout can end the connection.
    cfg.queue_max_messages = 1_000_000;
    cfg.queue_max_bytes = 1 << 30;
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut stuck = Client::connect(&engine).await;
    stuck.subscribe(&["bulk:x"]).await;
    let padding = "x".repeat(32 * 1024);
    // Several MiB: more than the kernel buffers on both ends hold.
    for _ in 0..400 {
        let req = PublishRequest {
            topic: "bulk:x".into(),
            data: serde_json::to_vec(&json!({ "pad": padding }))
                .unwrap()
                .into(),
            content_type: "application/json".into(),
            ..Default::default()
        };
        producer.publish(req).await.unwrap();
    }
    eventually("the stuck connection is dropped", || {
        engine.stats().connections == 0
    })
    .await;
    assert_eq!(engine.stats().slow_disconnects, 0, "not a queue overflow");
    drop(stuck);
}
