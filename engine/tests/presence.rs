//! Presence over gRPC with real WebSocket clients: pages, counts, and live
//! watches that stay exact while clients join and leave.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::{BTreeSet, HashSet},
    time::Duration,
};

use common::{Client, config, grpc, start};
use herald::proto::{
    PresenceEvent, PresenceEventKind as Kind, PresenceRequest, PresenceStatsRequest,
    WatchPresenceRequest, herald_client::HeraldClient,
};
use tonic::{Streaming, transport::Channel};

async fn all_members(
    api: &mut HeraldClient<Channel>,
    topic: &str,
    limit: u32,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
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
        pages += 1;
        ids.extend(page.members.into_iter().map(|m| m.connection_id));
        if page.next_cursor.is_empty() {
            return (ids, pages);
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

#[tokio::test]
async fn presence_pages_through_thousands_of_members() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut clients = Vec::new();
    for n in 0..3000 {
        let mut c = Client::connect_query(
            &engine,
            &format!("?user=u{}&info=%7B%22n%22%3A{n}%7D", n % 1000),
        )
        .await;
        c.subscribe(&["room:big"]).await;
        clients.push(c);
    }
    let (ids, pages) = all_members(&mut api, "room:big", 700).await;
    assert_eq!(pages, 5);
    assert_eq!(ids.len(), 3000);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 3000, "no member twice across pages");
    let expected: HashSet<_> = clients.iter().map(|c| &c.conn_id).collect();
    assert_eq!(unique, expected);

    let first = api
        .presence(PresenceRequest {
            topic: "room:big".into(),
            limit: 1,
            cursor: String::new(),
        })
        .await;
    let member = &first.unwrap().into_inner().members[0];
    assert!(
        member.user_id.starts_with('u') && member.info.starts_with("{\"n\":"),
        "{member:?}"
    );

    let stats = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:big".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.connections, stats.users), (3000, 1000));
}

#[tokio::test]
async fn stats_match_members_after_concurrent_joins_and_leaves() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut tasks = Vec::new();
    for n in 0..200 {
        let mut c = Client::connect_query(&engine, &format!("?user=u{}", n % 37)).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..(n % 7 + 3) {
                c.subscribe(&["room:churn"]).await;
                if round % 2 == 0 {
                    c.unsubscribe(&["room:churn"]).await;
                }
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let (ids, _) = all_members(&mut api, "room:churn", 50).await;
    let stats = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:churn".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.connections as usize, ids.len());
    let page = api
        .presence(PresenceRequest {
            topic: "room:churn".into(),
            limit: 10_000,
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let users: HashSet<String> = page.members.into_iter().map(|m| m.user_id).collect();
    assert_eq!(stats.users as usize, users.len());
    // Drop half: the counts follow.
    clients.truncate(100);
    common::eventually("the dropped clients leave", || {
        engine.stats().connections == 100
    })
    .await;
    let (ids, _) = all_members(&mut api, "room:churn", 50).await;
    let stats = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:churn".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.connections as usize, ids.len());
}

#[tokio::test]
async fn a_watcher_sees_joins_and_leaves_in_order() {
    let mut cfg = config();
    cfg.node_id = "n1".into();
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    let mut watch = api
        .watch_presence(WatchPresenceRequest {
            topics: vec!["room:*".into()],
            include_snapshot: false,
            include_connections: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut c = Client::connect_query(&engine, "?user=dave").await;
    c.subscribe(&["room:1", "other:1"]).await;
    c.subscribe(&["room:2"]).await;
    c.unsubscribe(&["room:1"]).await;
    drop(c);

    let mut seen = Vec::new();
    for _ in 0..6 {
        let e = next_event(&mut watch).await;
        assert_eq!(e.node_id, "n1");
        assert_eq!(e.member.as_ref().unwrap().user_id, "dave");
        seen.push((kind(&e), e.topic.clone(), e.timestamp_ms));
    }
    let kinds: Vec<_> = seen.iter().map(|(k, t, _)| (*k, t.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            (Kind::Connect, ""),
            (Kind::Join, "room:1"),
            (Kind::Join, "room:2"),
            (Kind::Leave, "room:1"),
            (Kind::Leave, "room:2"),
            (Kind::Disconnect, ""),
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 <= w[1].2),
        "timestamps never go back"
    );
}

#[tokio::test]
async fn snapshot_and_events_stay_exact_while_clients_churn() {
    let engine = start(config()).await;
    let mut api = grpc(&engine).await;
    let mut tasks = Vec::new();
    for n in 0..150 {
        let mut c = Client::connect(&engine).await;
        tasks.push(tokio::spawn(async move {
            for round in 0..40 {
                c.subscribe(&["room:c"]).await;
                if (round + n) % 3 != 0 {
                    c.unsubscribe(&["room:c"]).await;
                }
            }
            c
        }));
    }
    // Start watching in the middle of the churn.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut watch = api
        .watch_presence(WatchPresenceRequest {
            topics: vec!["room:c".into()],
            include_snapshot: true,
            include_connections: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut view = BTreeSet::new();
    loop {
        let e = next_event(&mut watch).await;
        match kind(&e) {
            Kind::Snapshot => assert!(
                view.insert(e.member.unwrap().connection_id),
                "snapshot lists a member twice"
            ),
            Kind::SnapshotEnd => break,
            other => panic!("unexpected {other:?} before the end of the snapshot"),
        }
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Apply live events until the view is quiet.
    loop {
        match tokio::time::timeout(Duration::from_millis(500), watch.message()).await {
            Err(_) => break,
            Ok(next) => {
                let e = next.unwrap().unwrap();
                let id = e.member.unwrap().connection_id;
                match Kind::try_from(e.kind).unwrap() {
                    Kind::Join => {
                        assert!(view.insert(id), "a join for a member already in the view")
                    }
                    Kind::Leave => {
                        assert!(view.remove(&id), "a leave for a member not in the view")
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    let (ids, _) = all_members(&mut api, "room:c", 1000).await;
    assert_eq!(view, ids.into_iter().collect::<BTreeSet<_>>());
    assert!(!view.is_empty());
}

#[tokio::test]
async fn a_watcher_that_stops_reading_gets_a_resync_marker() {
    let mut cfg = config();
    cfg.presence_watch_buffer = 16;
    let engine = start(cfg).await;
    // Small HTTP/2 windows so the engine feels the watcher's stall quickly.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", engine.grpc_addr()))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut watcher = HeraldClient::new(channel);
    let mut watch = watcher
        .watch_presence(WatchPresenceRequest {
            topics: vec!["room:>".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = Client::connect(&engine).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..60 {
                c.subscribe(&["room:flood:x"]).await;
                c.unsubscribe(&["room:flood:x"]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Now read: some events, then RESYNC, then the stream ends with RESOURCE_EXHAUSTED.
    let mut events = 0;
    loop {
        match tokio::time::timeout(common::WAIT, watch.message())
            .await
            .expect("the stream moves")
        {
            Ok(Some(e)) if kind(&e) == Kind::Resync => break,
            Ok(Some(_)) => events += 1,
            other => panic!("expected a RESYNC event, got {other:?} after {events} events"),
        }
    }
    assert!(events < 12_000, "events were dropped, not all delivered");
    let end = tokio::time::timeout(common::WAIT, watch.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), tonic::Code::ResourceExhausted);

    // Other clients were never slowed down: the engine still works.
    let mut api = grpc(&engine).await;
    let mut c = Client::connect(&engine).await;
    c.subscribe(&["room:after"]).await;
    common::publish_json(&mut api, "room:after", serde_json::json!(1)).await;
    c.next_message().await;
}

#[tokio::test]
async fn presence_input_errors_and_untracked_topics() {
    let mut cfg = config();
    cfg.presence_topics = "room:>, user:*".into();
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    let stats = api
        .presence_stats(PresenceStatsRequest {
            topic: "room:empty".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.connections, stats.users), (0, 0));
    let err = api
        .presence_stats(PresenceStatsRequest {
            topic: "bad topic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Cursors this engine never issued: garbage, a bare connection id (what
    // cursors used to be), a forged tag.
    for cursor in [
        "nope",
        "ffffffffffffffff",
        "ffffffffffffffff0000000000000000",
    ] {
        let err = api
            .presence(PresenceRequest {
                topic: "room:a".into(),
                limit: 0,
                cursor: cursor.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{cursor}");
    }
    let err = api
        .presence(PresenceRequest {
            topic: "room:a".into(),
            limit: 10_001,
            cursor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = api
        .watch_presence(WatchPresenceRequest {
            topics: vec!["ro*m".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = api
        .watch_presence(WatchPresenceRequest {
            topics: vec!["broadcast:global".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("broadcast:global"));
    let err = api
        .watch_presence(WatchPresenceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // More patterns than one command may name.
    let err = api
        .watch_presence(WatchPresenceRequest {
            topics: (0..257).map(|i| format!("room:{i}")).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 256"), "{}", err.message());

    // A pattern over both tracked and untracked topics only reports tracked ones.
    let mut watch = api
        .watch_presence(WatchPresenceRequest {
            topics: vec![">".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut c = Client::connect(&engine).await;
    c.subscribe(&["broadcast:global"]).await;
    c.subscribe(&["room:lobby"]).await;
    let e = next_event(&mut watch).await;
    assert_eq!((kind(&e), e.topic.as_str()), (Kind::Join, "room:lobby"));
}
