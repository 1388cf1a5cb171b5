//! Presence, control and discovery across nodes: a real nats-server, several
//! engines on it (in-process, and one `herald` process killed with SIGKILL),
//! real WebSocket clients and real gRPC.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Client, Frame, config, grpc, nats::NatsServer, start};
use herald::{
    Config, Engine,
    proto::{
        DisconnectRequest, InfoRequest, PresenceEvent, PresenceEventKind as Kind, PresenceRequest,
        PresenceStatsRequest, SubscribeRequest, Target, UnsubscribeRequest, WatchPresenceRequest,
        herald_client::HeraldClient, target,
    },
};
use tonic::{Code, Streaming, transport::Channel};

fn node(nats: &NatsServer, id: &str) -> Config {
    Config {
        nats_url: vec![nats.url()],
        node_id: id.to_owned(),
        ..config()
    }
}

/// Waits until the engine's Info lists `n` nodes; returns their ids.
async fn wait_for_nodes(api: &mut HeraldClient<Channel>, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = api.info(InfoRequest {}).await.unwrap().into_inner();
        if info.nodes.len() == n {
            return info.nodes.into_iter().map(|n| n.node_id).collect();
        }
        assert!(Instant::now() < deadline, "nodes: {:?}", info.nodes);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_members(api: &mut HeraldClient<Channel>, topic: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api
            .presence(PresenceRequest {
                topic: topic.into(),
                limit,
                cursor: cursor.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.members.len() <= limit as usize);
        ids.extend(page.members.into_iter().map(|m| m.connection_id));
        if page.next_cursor.is_empty() {
            return ids;
        }
        cursor = page.next_cursor;
    }
}

async fn next_event(stream: &mut Streaming<PresenceEvent>) -> PresenceEvent {
    tokio::time::timeout(common::WAIT, stream.message())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

fn kind(e: &PresenceEvent) -> Kind {
    Kind::try_from(e.kind).unwrap()
}

fn user(id: &str) -> Option<Target> {
    Some(Target {
        target: Some(target::Target::UserId(id.into())),
    })
}

fn conn(id: &str) -> Option<Target> {
    Some(Target {
        target: Some(target::Target::ConnectionId(id.into())),
    })
}

/// Reads frames until one of type `ty` arrives.
async fn expect_frame(client: &mut Client, ty: &str) -> serde_json::Value {
    loop {
        let frame = client.next_json().await;
        if frame["type"] == ty {
            return frame;
        }
    }
}

async fn cluster(nats: &NatsServer) -> (Engine, Engine, Engine) {
    let a = start(node(nats, "node-a")).await;
    let b = start(node(nats, "node-b")).await;
    let c = start(node(nats, "node-c")).await;
    for engine in [&a, &b, &c] {
        wait_for_nodes(&mut grpc(engine).await, 3).await;
    }
    (a, b, c)
}

#[tokio::test]
async fn info_presence_stats_and_control_span_the_nodes() {
    let nats = NatsServer::start();
    let (a, b, c) = cluster(&nats).await;

    // Info lists every node with its addresses; the answering node is marked.
    let info = grpc(&b)
        .await
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = info.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);
    for (n, engine) in info.nodes.iter().zip([&a, &b, &c]) {
        assert_eq!(n.this_node, n.node_id == "node-b");
        assert_eq!(n.ws_url, format!("ws://{}/ws", engine.ws_addr()));
        assert_eq!(n.grpc_addr, engine.grpc_addr().to_string());
    }

    // alice on a and b, bob on c, carol on a; all in room:1.
    let mut alice_a = Client::connect_query(&a, "?user=alice").await;
    let mut alice_b = Client::connect_query(&b, "?user=alice").await;
    let mut bob_c = Client::connect_query(&c, "?user=bob").await;
    let mut carol_a = Client::connect_query(&a, "?user=carol").await;
    for client in [&mut alice_a, &mut alice_b, &mut bob_c, &mut carol_a] {
        client.subscribe(&["room:1"]).await;
    }
    let expected: BTreeSet<String> = [&alice_a, &alice_b, &bob_c, &carol_a]
        .iter()
        .map(|c| c.conn_id.clone())
        .collect();
    for engine in [&a, &b, &c] {
        let mut api = grpc(engine).await;
        for limit in [1, 2, 3, 100] {
            let ids = all_members(&mut api, "room:1", limit).await;
            assert_eq!(ids.len(), 4, "limit {limit}: {ids:?}");
            assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
        }
        let stats = api
            .presence_stats(PresenceStatsRequest {
                topic: "room:1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.connections, 4);
        assert_eq!(stats.users, 3, "alice counts once");
    }

    // Control by user reaches both of alice's nodes and counts them all.
    let mut api = grpc(&c).await;
    let done = api
        .subscribe(SubscribeRequest {
            target: user("alice"),
            topics: vec!["room:2".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.connections, 2);
    for client in [&mut alice_a, &mut alice_b] {
        let frame = expect_frame(client, "subscribed").await;
        assert_eq!(frame["topics"][0], "room:2");
    }
    let stats = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.connections, stats.users), (2, 1));
    let done = api
        .unsubscribe(UnsubscribeRequest {
            target: user("alice"),
            topics: vec!["room:2".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.connections, 2);
    let missing = api
        .subscribe(SubscribeRequest {
            target: user("nobody"),
            topics: vec!["room:2".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // By connection id: the node that holds it, from any node.
    let done = api
        .subscribe(SubscribeRequest {
            target: conn(&carol_a.conn_id),
            topics: vec!["room:3".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.connections, 1);
    expect_frame(&mut carol_a, "subscribed").await;
    let done = api
        .disconnect(DisconnectRequest {
            target: conn(&alice_b.conn_id),
            reason: "bye".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.connections, 1);
    let (_, close) = alice_b.read_until_close().await;
    assert!(close.is_some());
    let gone = api
        .disconnect(DisconnectRequest {
            target: conn("00000000deadbeef"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // NATS down: calls that need the other nodes answer UNAVAILABLE, in time.
    let mut nats = nats;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let down = api
        .disconnect(DisconnectRequest {
            target: user("alice"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    let down = api
        .presence(PresenceRequest {
            topic: "room:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Also once the other nodes have left this node's table.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let down = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    drop(bob_c);
    for engine in [a, b, c] {
        engine.shutdown().await;
    }
}

#[tokio::test]
async fn watchers_see_every_node_and_the_members_of_nodes_that_leave() {
    let nats = NatsServer::start();
    let (a, b, c) = cluster(&nats).await;
    let mut on_a = Client::connect_query(&a, "?user=ann").await;
    let mut on_b = Client::connect_query(&b, "?user=ben").await;
    let mut on_c = Client::connect_query(&c, "?user=cid").await;
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        client.subscribe(&["room:w"]).await;
    }

    // Snapshot of all three nodes, then SNAPSHOT_END.
    let mut api = grpc(&a).await;
    let mut watch = api
        .watch_presence(WatchPresenceRequest {
            topics: vec!["room:*".into()],
            include_snapshot: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut snapshot = BTreeSet::new();
    loop {
        let e = next_event(&mut watch).await;
        match kind(&e) {
            Kind::Snapshot => {
                snapshot.insert((e.node_id, e.member.unwrap().connection_id));
            }
            Kind::SnapshotEnd => break,
            other => panic!("unexpected {other:?} before SNAPSHOT_END"),
        }
    }
    let expected: BTreeSet<(String, String)> =
        [("node-a", &on_a), ("node-b", &on_b), ("node-c", &on_c)]
            .iter()
            .map(|(n, c)| ((*n).to_owned(), c.conn_id.clone()))
            .collect();
    assert_eq!(snapshot, expected);

    // Live events of another node.
    let mut late = Client::connect_query(&b, "?user=lea").await;
    late.subscribe(&["room:w"]).await;
    let e = next_event(&mut watch).await;
    assert_eq!((kind(&e), e.node_id.as_str()), (Kind::Join, "node-b"));
    assert_eq!(e.member.unwrap().connection_id, late.conn_id);
    late.unsubscribe(&["room:w"]).await;
    let e = next_event(&mut watch).await;
    assert_eq!((kind(&e), e.topic.as_str()), (Kind::Leave, "room:w"));

    // A node that shuts down announces it: its members leave at once.
    let started = Instant::now();
    drop(on_c);
    c.shutdown().await;
    let e = next_event(&mut watch).await;
    assert_eq!((kind(&e), e.node_id.as_str()), (Kind::Leave, "node-c"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_for_nodes(&mut api, 2).await;

    // A node killed with SIGKILL: its members leave within four heartbeats.
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--ws-addr", &format!("127.0.0.1:{ws_port}")])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .args(["--nats-url", &nats.url()])
        .args(["--node-id", "node-k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_nodes(&mut api, 3).await;
    let url = format!("ws://127.0.0.1:{ws_port}/ws?user=kim");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut kim = Client::from_ws(ws);
    let hello = kim.next_json().await;
    kim.conn_id = hello["conn_id"].as_str().unwrap().to_owned();
    kim.subscribe(&["room:w"]).await;
    let e = next_event(&mut watch).await;
    assert_eq!((kind(&e), e.node_id.as_str()), (Kind::Join, "node-k"));
    let killed = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((kind(&e), e.node_id.as_str()), (Kind::Leave, "node-k"));
    assert_eq!(e.member.unwrap().connection_id, kim.conn_id);
    let after = killed.elapsed();
    assert!(after < Duration::from_secs(5), "left after {after:?}");
    assert!(matches!(kim.next_frame().await, Frame::Closed(_)));

    // The survivors still answer for the cluster.
    let stats = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:w".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.connections, 2);
    drop(on_a);
    drop(on_b);
    a.shutdown().await;
    b.shutdown().await;
}
