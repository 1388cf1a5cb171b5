//! Subscribe-control over gRPC with real WebSocket clients.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, config, grpc, publish_json, start};
use herald::proto::{
    ControlRequest, DisconnectRequest, InfoRequest, SubscribeRequest, Target, UnsubscribeRequest,
    control_request::Command, control_response, target,
};
use serde_json::json;
use tokio_stream::StreamExt;

fn conn(id: &str) -> Option<Target> {
    Some(Target {
        target: Some(target::Target::ConnectionId(id.to_owned())),
    })
}

fn user(id: &str) -> Option<Target> {
    Some(Target {
        target: Some(target::Target::UserId(id.to_owned())),
    })
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_by_connection() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut c = Client::connect(&engine).await;

    let resp = api
        .subscribe(SubscribeRequest {
            target: conn(&c.conn_id),
            topics: vec!["room:vip".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.connections, 1);
    let push = c.next_json().await;
    assert_eq!(
        push,
        json!({"type": "subscribed", "topics": ["room:vip"], "server": true})
    );
    publish_json(&mut api, "room:vip", json!("welcome")).await;
    assert_eq!(c.next_message().await["data"], "welcome");

    api.unsubscribe(UnsubscribeRequest {
        target: conn(&c.conn_id),
        topics: vec!["room:vip".into()],
    })
    .await
    .unwrap();
    let push = c.next_json().await;
    assert_eq!(
        push,
        json!({"type": "unsubscribed", "topics": ["room:vip"], "server": true})
    );
    publish_json(&mut api, "room:vip", json!("gone")).await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_user_target_reaches_every_connection_of_that_user() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut phone = Client::connect_query(&engine, "?user=alice").await;
    let mut laptop = Client::connect_query(&engine, "?user=alice").await;
    let mut bob = Client::connect_query(&engine, "?user=bob").await;

    let resp = api
        .subscribe(SubscribeRequest {
            target: user("alice"),
            topics: vec!["user:alice".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.connections, 2);
    publish_json(&mut api, "user:alice", json!({"note": 1})).await;
    assert_eq!(phone.next_message().await["data"]["note"], 1);
    assert_eq!(laptop.next_message().await["data"]["note"], 1);
    bob.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn subscribe_by_user_is_all_or_nothing() {
    let mut cfg = config();
    cfg.max_subscriptions = 2;
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    // The roomy connection comes first: a subscribe applied connection by
    // connection would change it before failing on the full one.
    let mut roomy = Client::connect_query(&engine, "?user=carol").await;
    let mut full = Client::connect_query(&engine, "?user=carol").await;
    full.subscribe(&["a", "b"]).await;

    let err = api
        .subscribe(SubscribeRequest {
            target: user("carol"),
            topics: vec!["news".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(&full.conn_id), "{}", err.message());
    let stats = api
        .presence_stats(herald::proto::PresenceStatsRequest {
            topic: "news".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.connections, 0, "nothing was applied");
    roomy.expect_silence(Duration::from_millis(200)).await;
    full.unsubscribe(&["b"]).await;
    let resp = api
        .subscribe(SubscribeRequest {
            target: user("carol"),
            topics: vec!["news".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.connections, 2);
}

#[tokio::test]
async fn disconnect_delivers_code_reason_and_reconnect_hint() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut a = Client::connect_query(&engine, "?user=carol").await;
    let mut b = Client::connect_query(&engine, "?user=carol").await;
    let mut c = Client::connect(&engine).await;

    let resp = api
        .disconnect(DisconnectRequest {
            target: conn(&c.conn_id),
            code: 4321,
            reason: "moved to another shard".into(),
            reconnect: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.connections, 1);
    let (frames, close) = c.read_until_close().await;
    assert_eq!(
        frames.last(),
        Some(
            &json!({"type": "disconnect", "code": 4321, "reason": "moved to another shard", "reconnect": true})
        )
    );
    let close = close.unwrap();
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4321, "moved to another shard")
    );

    let resp = api
        .disconnect(DisconnectRequest {
            target: user("carol"),
            reason: "banned".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.connections, 2);
    for client in [&mut a, &mut b] {
        let (frames, close) = client.read_until_close().await;
        assert_eq!(frames.last().unwrap()["reconnect"], false);
        assert_eq!(
            close.map(|c| u16::from(c.code)),
            Some(4500),
            "the default final code"
        );
    }
}

#[tokio::test]
async fn unknown_targets_and_bad_input_get_clear_statuses() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let c = Client::connect(&engine).await;

    let err = api
        .subscribe(SubscribeRequest {
            target: conn("00000000deadbeef"),
            topics: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("00000000deadbeef"));
    let err = api
        .subscribe(SubscribeRequest {
            target: conn("nonsense"),
            topics: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = api
        .subscribe(SubscribeRequest {
            target: user("nobody"),
            topics: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nobody"));
    let err = api
        .subscribe(SubscribeRequest {
            target: None,
            topics: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A zero-value target (what an SDK sends for an empty Target) is missing too.
    for target in [conn(""), Some(Target::default())] {
        let err = api
            .subscribe(SubscribeRequest {
                target,
                topics: vec!["a".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("target is missing"),
            "{}",
            err.message()
        );
    }
    let err = api
        .subscribe(SubscribeRequest {
            target: conn(&c.conn_id),
            topics: vec!["a b".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("a b"));
    let err = api
        .subscribe(SubscribeRequest {
            target: conn(&c.conn_id),
            topics: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = api
        .disconnect(DisconnectRequest {
            target: conn(&c.conn_id),
            code: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = api
        .unsubscribe(UnsubscribeRequest {
            target: conn("ffffffffffffffff"),
            topics: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A connection id stays unknown once its connection is gone, even if its slot is reused.
    let old_id = c.conn_id.clone();
    drop(c);
    common::eventually("the connection leaves", || engine.stats().connections == 0).await;
    let _reuses_the_slot = Client::connect(&engine).await;
    let err = api
        .subscribe(SubscribeRequest {
            target: conn(&old_id),
            topics: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_control_stream_answers_every_command_and_survives_a_failing_one() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::connect(&engine).await);
    }
    let mut commands: Vec<ControlRequest> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| ControlRequest {
            request_id: i as u64 + 1,
            command: Some(Command::Subscribe(SubscribeRequest {
                target: conn(&c.conn_id),
                topics: vec!["room:new".into()],
                ..Default::default()
            })),
        })
        .collect();
    // In the middle: a command for a connection that does not exist.
    commands.insert(
        25,
        ControlRequest {
            request_id: 1000,
            command: Some(Command::Unsubscribe(UnsubscribeRequest {
                target: conn("00000000deadbeef"),
                topics: vec!["room:new".into()],
            })),
        },
    );
    commands.push(ControlRequest {
        request_id: 1001,
        command: Some(Command::Disconnect(DisconnectRequest {
            target: conn(&clients[0].conn_id),
            reconnect: true,
            ..Default::default()
        })),
    });
    let mut answers = api
        .control(tokio_stream::iter(commands))
        .await
        .unwrap()
        .into_inner();
    let mut results = std::collections::BTreeMap::new();
    while let Some(answer) = answers.next().await {
        let answer = answer.unwrap();
        assert!(
            results
                .insert(answer.request_id, answer.result.unwrap())
                .is_none(),
            "one answer per command"
        );
    }
    assert_eq!(results.len(), 52);
    match &results[&1000] {
        control_response::Result::Error(e) => assert_eq!(e.code, tonic::Code::NotFound as i32),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    for id in 1..=50 {
        assert!(
            matches!(results[&id], control_response::Result::Subscribe(ref r) if r.connections == 1)
        );
    }
    assert!(
        matches!(results[&1001], control_response::Result::Disconnect(ref r) if r.connections == 1)
    );

    publish_json(&mut api, "room:new", json!("moved")).await;
    for c in clients.iter_mut().skip(1) {
        assert_eq!(c.next_message().await["data"], "moved");
    }
    let (_, close) = clients[0].read_until_close().await;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4003));
}

#[tokio::test]
async fn info_reports_identity_and_counters() {
    let mut cfg = config();
    cfg.node_id = "node-a".into();
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    let mut c = Client::connect(&engine).await;
    c.subscribe(&["a", "b"]).await;
    publish_json(&mut api, "a", json!(1)).await;
    publish_json(&mut api, "zzz", json!(1)).await;
    c.next_message().await;
    let info = api.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-a");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (info.connections, info.subscriptions, info.topics),
        (1, 2, 3)
    );
    assert_eq!(
        (
            info.messages_published,
            info.messages_delivered,
            info.messages_dropped
        ),
        (2, 1, 0)
    );
}
