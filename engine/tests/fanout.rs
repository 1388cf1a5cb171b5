//! Fan-out end to end: real WebSocket clients, a real gRPC producer.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, config, grpc, publish_json, start};
use herald::proto::{
    BroadcastRequest, PublishRequest, PublishStreamRequest, publish_result, publish_stream_response,
};
use serde_json::json;
use std::time::Duration;
use tokio_stream::StreamExt;

#[tokio::test]
async fn subscribe_then_publish_round_trip() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["room:general"]).await;

    let seq = publish_json(&mut producer, "room:general", json!({"text": "hi", "n": 1})).await;
    assert_eq!(seq, 1);
    let msg = client.next_message().await;
    assert_eq!(msg["topic"], "room:general");
    assert_eq!(msg["seq"], 1);
    assert_eq!(
        msg["data"],
        json!({"text": "hi", "n": 1}),
        "JSON arrives as a JSON value"
    );

    let text = PublishRequest {
        topic: "room:general".into(),
        data: "say \"hi\"".into(),
        content_type: "text/plain; charset=utf-8".into(),
        ..Default::default()
    };
    assert_eq!(
        producer.publish(text).await.unwrap().into_inner().sequence,
        2
    );
    let msg = client.next_message().await;
    assert_eq!(msg["text"], "say \"hi\"");

    let binary = PublishRequest {
        topic: "room:general".into(),
        data: vec![0u8, 255].into(),
        ..Default::default()
    };
    producer.publish(binary).await.unwrap();
    let msg = client.next_message().await;
    assert_eq!(msg["b64"], "AP8=");
    assert_eq!(msg["seq"], 3);
}

#[tokio::test]
async fn topics_are_isolated_and_unsubscribe_stops_delivery() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut a = Client::connect(&engine).await;
    let mut b = Client::connect(&engine).await;
    a.subscribe(&["room:a"]).await;
    b.subscribe(&["room:b"]).await;

    publish_json(&mut producer, "room:a", json!("for a")).await;
    publish_json(&mut producer, "room:b", json!("for b")).await;
    assert_eq!(a.next_message().await["data"], "for a");
    assert_eq!(b.next_message().await["data"], "for b");
    a.expect_silence(Duration::from_millis(200)).await;

    a.unsubscribe(&["room:a"]).await;
    publish_json(&mut producer, "room:a", json!("gone")).await;
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_thousand_subscribers_receive_every_message_in_order() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let mut c = Client::connect(&engine).await;
        c.subscribe(&["broadcast:global"]).await;
        clients.push(c);
    }
    for n in 1..=20u64 {
        let seq = publish_json(&mut producer, "broadcast:global", json!({"n": n})).await;
        assert_eq!(seq, n);
    }
    let readers = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            for n in 1..=20u64 {
                let msg = c.next_message().await;
                assert_eq!(msg["seq"], n);
                assert_eq!(msg["data"]["n"], n);
            }
        })
    });
    for r in readers.collect::<Vec<_>>() {
        r.await.unwrap();
    }
    assert_eq!(engine.stats().delivered, 20_000);
}

#[tokio::test]
async fn publish_stream_acks_every_message_and_survives_a_bad_one() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["ticks:a"]).await;

    let requests: Vec<PublishStreamRequest> = (1..=5u64)
        .map(|n| PublishStreamRequest {
            client_seq: n,
            message: Some(PublishRequest {
                // The third message has a bad topic; the fourth invalid JSON.
                topic: if n == 3 {
                    "bad topic".into()
                } else {
                    "ticks:a".into()
                },
                data: if n == 4 {
                    "{oops".into()
                } else {
                    format!("{{\"n\":{n}}}").into()
                },
                content_type: "application/json".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let mut acks = producer
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut results = Vec::new();
    while let Some(ack) = acks.next().await {
        results.push(ack.unwrap());
    }
    assert_eq!(
        results.iter().map(|r| r.client_seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let seqs: Vec<Option<u64>> = results
        .iter()
        .map(|r| match &r.result {
            Some(publish_stream_response::Result::Ack(a)) => Some(a.sequence),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![Some(1), Some(2), None, None, Some(3)]);
    match &results[2].result {
        Some(publish_stream_response::Result::Error(e)) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
            assert!(e.message.contains("bad topic"), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    match &results[3].result {
        Some(publish_stream_response::Result::Error(e)) => {
            assert!(e.message.contains("JSON"), "{}", e.message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
    for n in [1, 2, 5] {
        assert_eq!(client.next_message().await["data"]["n"], n);
    }
}

#[tokio::test]
async fn one_stream_request_carries_many_messages_each_answered_in_order() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["ticks:b"]).await;

    let message = |n: u64| PublishRequest {
        // The third message of the batch has a bad topic.
        topic: if n == 3 {
            "bad topic".into()
        } else {
            "ticks:b".into()
        },
        data: format!("{{\"n\":{n}}}").into(),
        content_type: "application/json".into(),
        ..Default::default()
    };
    let requests = vec![
        PublishStreamRequest {
            client_seq: 1,
            message: Some(message(1)),
            more: (2..=5).map(message).collect(),
        },
        PublishStreamRequest {
            client_seq: 6,
            message: Some(message(6)),
            more: Vec::new(),
        },
        PublishStreamRequest {
            client_seq: 7,
            message: Some(message(7)),
            more: (0..1025).map(|_| message(8)).collect(),
        },
    ];
    let mut acks = producer
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let first = acks.next().await.unwrap().unwrap();
    assert_eq!(first.client_seq, 1);
    assert!(matches!(
        first.result,
        Some(publish_stream_response::Result::Ack(ref a)) if a.sequence == 1
    ));
    let more: Vec<Option<u64>> = first
        .more
        .iter()
        .map(|r| match &r.result {
            Some(publish_result::Result::Ack(a)) => Some(a.sequence),
            _ => None,
        })
        .collect();
    assert_eq!(more, vec![Some(2), None, Some(3), Some(4)]);
    match &first.more[1].result {
        Some(publish_result::Result::Error(e)) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let second = acks.next().await.unwrap().unwrap();
    assert_eq!(second.client_seq, 6);
    assert!(second.more.is_empty());
    let third = acks.next().await.unwrap().unwrap();
    assert_eq!(third.client_seq, 7);
    assert!(matches!(
        third.result,
        Some(publish_stream_response::Result::Error(ref e)) if e.message.contains("1024")
    ));
    assert_eq!(
        third.more.len(),
        1025,
        "an oversize batch answers every message"
    );
    for n in [1, 2, 4, 5, 6] {
        assert_eq!(client.next_message().await["data"]["n"], n);
    }
    // Nothing of the oversize batch was published.
    publish_json(&mut producer, "ticks:b", json!({"n": 9})).await;
    assert_eq!(client.next_message().await["data"]["n"], 9);
}

#[tokio::test]
async fn broadcast_reaches_every_topic_and_validates_all_first() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut a = Client::connect(&engine).await;
    let mut b = Client::connect(&engine).await;
    a.subscribe(&["room:a"]).await;
    b.subscribe(&["room:b"]).await;
    publish_json(&mut producer, "room:b", json!("first")).await;
    assert_eq!(b.next_message().await["seq"], 1);

    let resp = producer
        .broadcast(BroadcastRequest {
            topics: vec!["room:a".into(), "room:b".into(), "room:nobody".into()],
            data: "{\"alert\":true}".into(),
            content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.results.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![1, 2, 1]
    );
    assert_eq!(a.next_message().await["data"]["alert"], true);
    let msg = b.next_message().await;
    assert_eq!(
        (msg["seq"].as_u64(), msg["data"]["alert"].as_bool()),
        (Some(2), Some(true))
    );

    let err = producer
        .broadcast(BroadcastRequest {
            topics: vec!["room:a".into(), "room::bad".into()],
            data: "1".into(),
            content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("room::bad"), "{}", err.message());
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn invalid_publishes_are_refused_with_a_reason() {
    let mut cfg = config();
    cfg.max_payload_bytes = 16;
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let cases = [
        (
            PublishRequest {
                topic: "".into(),
                ..Default::default()
            },
            "empty",
        ),
        (
            PublishRequest {
                topic: "a b".into(),
                ..Default::default()
            },
            "contains",
        ),
        (
            PublishRequest {
                topic: "x".repeat(300),
                ..Default::default()
            },
            "limit is 255",
        ),
        (
            PublishRequest {
                topic: "t".into(),
                data: vec![0u8; 17].into(),
                ..Default::default()
            },
            "limit is 16",
        ),
        (
            PublishRequest {
                topic: "t".into(),
                data: "nope".into(),
                content_type: "application/json".into(),
                ..Default::default()
            },
            "not valid JSON",
        ),
        (
            PublishRequest {
                topic: "t".into(),
                data: vec![0xffu8].into(),
                content_type: "text/plain".into(),
                ..Default::default()
            },
            "UTF-8",
        ),
    ];
    for (req, needle) in cases {
        let err = producer.publish(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains(needle),
            "{:?} should mention {needle:?}",
            err.message()
        );
    }
}

#[tokio::test]
async fn idempotency_keys_suppress_duplicates() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["orders:1"]).await;
    let mut req = common::json_request("orders:1", json!({"id": 1}));
    req.idempotency_key = Some("order-1".into());
    let first = producer.publish(req.clone()).await.unwrap().into_inner();
    let again = producer.publish(req).await.unwrap().into_inner();
    assert_eq!((first.sequence, first.duplicate), (1, false));
    assert_eq!((again.sequence, again.duplicate), (1, true));
    assert_eq!(client.next_message().await["seq"], 1);
    client.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn idempotency_keys_are_kept_for_the_whole_window_not_the_last_ten_thousand() {
    let engine = start(config()).await;
    let mut producer = grpc(&engine).await;
    // 15,000 keyed messages (two and a half minutes at 100/s) in one topic, in
    // batches over one stream, then the first key again.
    let keyed = |n: u64| {
        let mut req = common::json_request("orders:2", json!({ "n": n }));
        req.idempotency_key = Some(format!("order-{n}"));
        req
    };
    let requests: Vec<PublishStreamRequest> = (0..15)
        .map(|batch| PublishStreamRequest {
            client_seq: batch * 1000 + 1,
            message: Some(keyed(batch * 1000)),
            more: (batch * 1000 + 1..batch * 1000 + 1000).map(keyed).collect(),
        })
        .collect();
    let mut acks = producer
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(ack) = acks.next().await {
        answered += 1 + ack.unwrap().more.len();
    }
    assert_eq!(answered, 15_000);
    let again = producer.publish(keyed(0)).await.unwrap().into_inner();
    assert_eq!((again.sequence, again.duplicate), (1, true));
}

#[tokio::test]
async fn a_request_over_the_grpc_message_limit_is_out_of_range() {
    let mut cfg = config();
    assert_eq!(
        cfg.grpc_message_limit(),
        64 * 1024 + 1000 * (255 + 8) + 64 * 1024,
        "derived from the payload limit and the largest per-call topic list"
    );
    cfg.grpc_max_message_bytes = 4096;
    let engine = start(cfg).await;
    let mut producer = grpc(&engine).await;
    let mut req = common::json_request("big:1", json!("x".repeat(5000)));
    let err = producer.publish(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    // On a stream, the oversize request ends the stream with the same status.
    let oversize = PublishStreamRequest {
        client_seq: 1,
        message: Some(req.clone()),
        more: Vec::new(),
    };
    let mut acks = producer
        .publish_stream(tokio_stream::iter([oversize]))
        .await
        .unwrap()
        .into_inner();
    let err = acks.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    req.data = serde_json::to_vec(&json!("x".repeat(3000))).unwrap().into();
    assert_eq!(
        producer.publish(req).await.unwrap().into_inner().sequence,
        1
    );
}
