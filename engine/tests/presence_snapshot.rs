//! `WatchPresence` snapshots on a node that retains many topics: a snapshot
//! visits only topics with members, is read a range at a time while the stream
//! is read, and stays exact (no gap, no duplicate against the live events) across
//! many ranges while clients join and leave.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::{Client, config, grpc, start};
use herald::{
    Config,
    proto::{
        BroadcastRequest, PresenceEvent, PresenceEventKind as Kind, PresenceRequest,
        WatchPresenceRequest, herald_client::HeraldClient,
    },
};
use tonic::{Streaming, transport::Channel};

/// Whether `topic` matches a topic pattern (docs/grpc.md, WatchPresence): exact,
/// `prefix:*` (one more segment), `prefix:>` (one or more), `>` (all).
fn matches_pattern(pattern: &str, topic: &str) -> bool {
    match pattern.rsplit_once(':') {
        _ if pattern == ">" => true,
        _ if pattern == "*" => !topic.contains(':'),
        Some((head, "*")) => topic
            .strip_prefix(head)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(|r| !r.is_empty() && !r.contains(':')),
        Some((head, ">")) => topic
            .strip_prefix(head)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(|r| !r.is_empty()),
        _ => pattern == topic,
    }
}

/// Topic → member connection ids.
type View = BTreeMap<String, BTreeSet<String>>;

fn kind(e: &PresenceEvent) -> Kind {
    Kind::try_from(e.kind).unwrap()
}

async fn next_event(stream: &mut Streaming<PresenceEvent>) -> PresenceEvent {
    tokio::time::timeout(common::WAIT, stream.message())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("the stream goes on")
}

async fn watch(
    api: &mut HeraldClient<Channel>,
    topics: &[&str],
    include_snapshot: bool,
) -> Streaming<PresenceEvent> {
    api.watch_presence(WatchPresenceRequest {
        topics: topics.iter().map(|t| t.to_string()).collect(),
        include_snapshot,
        include_connections: false,
    })
    .await
    .unwrap()
    .into_inner()
}

/// Reads SNAPSHOT events up to SNAPSHOT_END; a member listed twice fails.
async fn read_snapshot(stream: &mut Streaming<PresenceEvent>) -> View {
    let mut view = View::new();
    loop {
        let e = next_event(stream).await;
        match kind(&e) {
            Kind::Snapshot => {
                let id = e.member.unwrap().connection_id;
                assert!(
                    view.entry(e.topic.clone()).or_default().insert(id),
                    "a member listed twice in {}",
                    e.topic
                );
            }
            Kind::SnapshotEnd => return view,
            other => panic!("unexpected {other:?} before the end of the snapshot"),
        }
    }
}

/// Applies live events until none comes for `quiet`; a join of a member already
/// in the view or a leave of one not in it fails.
async fn apply_live(stream: &mut Streaming<PresenceEvent>, view: &mut View, quiet: Duration) {
    loop {
        let Ok(next) = tokio::time::timeout(quiet, stream.message()).await else {
            return;
        };
        let e = next.unwrap().expect("the stream goes on");
        let k = kind(&e);
        let id = e.member.expect("a join or leave").connection_id;
        let members = view.entry(e.topic.clone()).or_default();
        match k {
            Kind::Join => assert!(members.insert(id), "a join of a member of {}", e.topic),
            Kind::Leave => assert!(members.remove(&id), "a leave of a stranger to {}", e.topic),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The members of each of `topics` according to the Presence RPC, empty ones left out.
async fn truth(api: &mut HeraldClient<Channel>, topics: &[String]) -> View {
    let mut view = View::new();
    for topic in topics {
        let page = api
            .presence(PresenceRequest {
                topic: topic.clone(),
                limit: 10_000,
                cursor: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let ids: BTreeSet<String> = page.members.into_iter().map(|m| m.connection_id).collect();
        if !ids.is_empty() {
            view.insert(topic.clone(), ids);
        }
    }
    view
}

fn non_empty(mut view: View) -> View {
    view.retain(|_, members| !members.is_empty());
    view
}

/// Makes `n` retained, empty topics `retained:<i>` with Broadcast calls.
async fn retain_topics(api: &mut HeraldClient<Channel>, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        api.broadcast(BroadcastRequest {
            topics: chunk.iter().map(|i| format!("retained:{i}")).collect(),
            data: b"{}".to_vec().into(),
            content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn snapshots_list_only_topics_with_members_however_many_are_retained() {
    let mut cfg = config();
    cfg.presence_max_snapshots = 1;
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    retain_topics(&mut api, 30_000).await;
    let mut a = Client::connect(&engine).await;
    let mut b = Client::connect(&engine).await;
    a.subscribe(&["room:1", "room:2:deep", "lobby"]).await;
    b.subscribe(&["room:1", "retained:7"]).await;
    // One topic that had a member and lost it: empty again, so never listed.
    b.subscribe(&["room:gone"]).await;
    b.unsubscribe(&["room:gone"]).await;

    assert!(engine.stats().topics >= 30_004);

    let ids = |c: &[&Client]| c.iter().map(|c| c.conn_id.clone()).collect::<BTreeSet<_>>();
    let cases: Vec<(Vec<&str>, View)> = vec![
        (
            vec![">"],
            View::from([
                ("lobby".into(), ids(&[&a])),
                ("retained:7".into(), ids(&[&b])),
                ("room:1".into(), ids(&[&a, &b])),
                ("room:2:deep".into(), ids(&[&a])),
            ]),
        ),
        (
            vec!["room:*"],
            View::from([("room:1".into(), ids(&[&a, &b]))]),
        ),
        (
            vec!["room:>", "room:1", "room:gone"],
            View::from([
                ("room:1".into(), ids(&[&a, &b])),
                ("room:2:deep".into(), ids(&[&a])),
            ]),
        ),
        (
            vec!["retained:*"],
            View::from([("retained:7".into(), ids(&[&b]))]),
        ),
        (vec!["*"], View::from([("lobby".into(), ids(&[&a]))])),
        (vec!["nothing:>"], View::new()),
    ];
    // Many watchers at once, each with its own exact snapshot, one permit between
    // them.
    let mut tasks = Vec::new();
    for round in 0..20 {
        for (patterns, expected) in cases.clone() {
            let mut api = api.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = watch(&mut api, &patterns, true).await;
                let view = read_snapshot(&mut stream).await;
                assert_eq!(view, expected, "{patterns:?} (round {round})");
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_over_many_ranges_stay_exact_while_clients_churn() {
    let mut cfg = config();
    cfg.presence_max_snapshots = 2;
    // This test is about exactness: no watcher may fall behind.
    cfg.presence_watch_buffer = 1 << 20;
    // The churning clients send commands as fast as the engine answers them.
    cfg.client_command_rate = 0.0;
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    retain_topics(&mut api, 5_000).await;
    // 1,200 topics with members (several ranges of the index), below and beside
    // what the watchers match.
    let rooms: Vec<String> = (0..1000).map(|n| format!("room:{n:04}")).collect();
    let deep: Vec<String> = (0..200).map(|n| format!("room:{n:04}:x")).collect();
    let mut all: Vec<String> = rooms.iter().chain(&deep).cloned().collect();
    all.push("other".into());
    let mut clients = Vec::new();
    for (i, chunk) in all.chunks(200).enumerate() {
        for _ in 0..(2 + i % 2) {
            let mut c = Client::connect(&engine).await;
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            c.subscribe(&names).await;
            clients.push(c);
        }
    }

    // Churn: each client moves in and out of its own slice of topics.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churn = Vec::new();
    for n in 0..40usize {
        let mut c = Client::connect(&engine).await;
        let all = all.clone();
        let stop = std::sync::Arc::clone(&stop);
        churn.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && round < 20_000 {
                let t = &all[(n * 37 + round * 101) % all.len()];
                c.subscribe(&[t]).await;
                if !(n + round).is_multiple_of(3) {
                    c.unsubscribe(&[t]).await;
                }
                round += 1;
            }
            c
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Watchers open in the middle of the churn and read their snapshots slowly,
    // all at once, so that their ranges are read while members change.
    let patterns: Vec<Vec<&str>> = vec![
        vec![">"],
        vec!["room:*"],
        vec!["room:>"],
        vec!["room:*", "room:0007:x", "other"],
    ];
    let mut readers = Vec::new();
    for p in &patterns {
        let mut stream = watch(&mut api, p, true).await;
        readers.push(tokio::spawn(async move {
            let mut view = View::new();
            let mut n = 0;
            loop {
                let e = next_event(&mut stream).await;
                match kind(&e) {
                    Kind::Snapshot => {
                        let id = e.member.unwrap().connection_id;
                        assert!(view.entry(e.topic.clone()).or_default().insert(id));
                        n += 1;
                        if n % 25 == 0 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    Kind::SnapshotEnd => break,
                    other => panic!("unexpected {other:?} before the end of the snapshot"),
                }
            }
            (stream, view)
        }));
    }
    let mut streams = Vec::new();
    let mut views = Vec::new();
    for r in readers {
        let (stream, view) = r.await.unwrap();
        streams.push(stream);
        views.push(view);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut churned = Vec::new();
    for t in churn {
        churned.push(t.await.unwrap());
    }
    for (stream, view) in streams.iter_mut().zip(views.iter_mut()) {
        apply_live(stream, view, Duration::from_millis(700)).await;
    }
    let truth = truth(&mut api, &all).await;
    for (p, view) in patterns.iter().zip(views) {
        let expected: View = truth
            .iter()
            .filter(|(t, _)| p.iter().any(|p| matches_pattern(p, t)))
            .map(|(t, m)| (t.clone(), m.clone()))
            .collect();
        assert!(expected.len() > 256, "{p:?} spans several ranges");
        assert_eq!(non_empty(view), expected, "{p:?}");
    }
}

#[tokio::test]
async fn a_snapshot_watcher_that_stops_reading_is_told_to_resync() {
    let mut cfg = config();
    cfg.presence_watch_buffer = 16;
    cfg.max_subscriptions = 1000;
    let engine = start(cfg).await;
    let mut api = grpc(&engine).await;
    // Enough members that the snapshot outgrows the stream's HTTP/2 window.
    let topics: Vec<String> = (0..1000).map(|n| format!("room:{n}")).collect();
    let mut members = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&engine).await;
        for chunk in topics.chunks(250) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            c.subscribe(&names).await;
        }
        members.push(c);
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", engine.grpc_addr()))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut stream = watch(&mut HeraldClient::new(channel), &["room:*"], true).await;
    // Read one event, then nothing while 200 changes happen.
    assert_eq!(kind(&next_event(&mut stream).await), Kind::Snapshot);
    let mut c = Client::connect(&engine).await;
    for _ in 0..100 {
        c.subscribe(&["room:flood"]).await;
        c.unsubscribe(&["room:flood"]).await;
    }
    let mut events = 0;
    loop {
        match tokio::time::timeout(common::WAIT, stream.message())
            .await
            .expect("the stream moves")
        {
            Ok(Some(e)) if kind(&e) == Kind::Resync => break,
            Ok(Some(_)) => events += 1,
            other => panic!("expected a RESYNC event, got {other:?} after {events} events"),
        }
    }
    assert!(events < 4000 + 200, "the watcher did not get everything");
    let end = tokio::time::timeout(common::WAIT, stream.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), tonic::Code::ResourceExhausted);

    // A new watcher gets the whole, exact view.
    let mut again = watch(&mut api, &["room:*"], true).await;
    let view = read_snapshot(&mut again).await;
    assert_eq!(view, truth(&mut api, &topics).await);
}

#[test]
fn a_snapshot_limit_of_zero_is_refused() {
    let config = Config {
        presence_max_snapshots: 0,
        ..Config::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("presence_max_snapshots"), "{err}");
}
