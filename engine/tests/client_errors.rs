//! Bad input from WebSocket clients gets documented errors, never harm.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, config, grpc, publish_json, start};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_frames_get_error_replies_and_the_connection_stays_usable() {
    let mut cfg = config();
    cfg.max_subscriptions = 3;
    cfg.max_topics_per_command = 4;
    let engine = start(cfg).await;
    let mut c = Client::connect(&engine).await;

    c.send_text("not json").await;
    let e = c.next_json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_frame"))
    );

    c.send_text(r#"{"type":"dance","id":7}"#).await;
    let e = c.next_json().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("unknown_type"), Some(7))
    );

    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(c.next_json().await["code"], "binary_unsupported");

    let e = c
        .command(json!({"type": "subscribe", "topics": ["ok", "not ok"]}))
        .await;
    assert_eq!(e["code"], "invalid_topic");
    assert!(e["message"].as_str().unwrap().contains("not ok"));

    let e = c
        .command(json!({"type": "subscribe", "topics": ["a", "b", "c", "d", "e"]}))
        .await;
    assert_eq!(e["code"], "too_many_topics");

    let e = c
        .command(json!({"type": "subscribe", "topics": ["a", "b", "c", "d"]}))
        .await;
    assert_eq!(e["code"], "too_many_subscriptions");

    let e = c.command(json!({"type": "subscribe"})).await;
    assert_eq!(e["code"], "bad_frame");

    // Nothing was subscribed by the failed commands; the connection still works.
    assert_eq!(engine.stats().subscriptions, 0);
    c.subscribe(&["a", "b", "c"]).await;
    let mut producer = grpc(&engine).await;
    publish_json(&mut producer, "c", json!(1)).await;
    assert_eq!(c.next_message().await["topic"], "c");
    assert_eq!(c.command(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009_and_others_are_unaffected() {
    let mut cfg = config();
    cfg.max_frame_bytes = 1024;
    let engine = start(cfg).await;
    let mut bystander = Client::connect(&engine).await;
    bystander.subscribe(&["room:x"]).await;
    let mut c = Client::connect(&engine).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096));
    let _ = c.ws.send(Message::text(big)).await;
    let (_, close) = c.read_until_close().await;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1009));

    let mut producer = grpc(&engine).await;
    publish_json(&mut producer, "room:x", json!("fine")).await;
    assert_eq!(bystander.next_message().await["data"], "fine");
}

#[tokio::test]
async fn the_handshake_refuses_wrong_paths_and_bad_identities() {
    let engine = start(config()).await;
    let addr = engine.ws_addr();
    let wrong = tokio_tungstenite::connect_async(format!("ws://{addr}/nope"))
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("404"), "{wrong}");
    let bad_info = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?info=notjson"))
        .await
        .unwrap_err();
    assert!(bad_info.to_string().contains("400"), "{bad_info}");
    let mut ok = Client::connect_query(&engine, "?user=alice&info=%7B%22a%22%3A1%7D").await;
    ok.subscribe(&["who:here"]).await;
    let members = grpc(&engine)
        .await
        .presence(herald::proto::PresenceRequest {
            topic: "who:here".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].connection_id, ok.conn_id);
    assert_eq!(members[0].user_id, "alice");
    assert_eq!(members[0].info, "{\"a\":1}");
}
