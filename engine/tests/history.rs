//! History and recovery against a real engine: reconnecting clients recover with
//! no gap and no duplicate, replay racing fast live publishing, what cannot be
//! recovered (restart, size, TTL), the node-wide memory bound, and the gRPC
//! History / RemoveHistory calls.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{Client, config, grpc, json_request, publish_json, start};
use herald::{
    config::{Dur, TopicRule, Who},
    proto::{
        HistoryRequest, PublishStreamRequest, RemoveHistoryRequest, StreamPosition,
        SubscribeRequest, Target, target,
    },
};
use serde_json::{Value, json};

fn rule(pattern: &str, size: usize, ttl: Option<Duration>) -> TopicRule {
    TopicRule {
        pattern: pattern.to_owned(),
        subscribe: Some(Who::Anyone),
        publish_rate: None,
        publish_burst: None,
        message_ttl: None,
        history_size: Some(size),
        history_ttl: ttl.map(Dur),
    }
}

fn with_history(rules: Vec<TopicRule>) -> herald::Config {
    herald::Config {
        topics: rules,
        ..config()
    }
}

/// What a client has seen of one topic, checked frame by frame.
#[derive(Debug, Default)]
struct Seen {
    seq: u64,
    epoch: String,
    messages: u64,
}

impl Seen {
    /// Takes one `message` frame: it must be the next in sequence, same epoch.
    fn take(&mut self, frame: &Value) {
        let seq = frame["seq"].as_u64().unwrap();
        let epoch = frame["epoch"].as_str().unwrap();
        if self.epoch.is_empty() {
            self.epoch = epoch.to_owned();
        }
        assert_eq!(epoch, self.epoch, "epoch changed: {frame}");
        assert_eq!(
            seq,
            self.seq + 1,
            "gap or duplicate after {}: {frame}",
            self.seq
        );
        assert_eq!(frame["data"]["n"].as_u64(), Some(seq), "{frame}");
        self.seq = seq;
        self.messages += 1;
    }

    fn since(&self, topic: &str) -> Value {
        json!({ topic: { "seq": self.seq, "epoch": self.epoch } })
    }
}

/// Subscribes with `since` and takes every message up to and including the
/// `subscribed` reply; returns the reply.
async fn resubscribe(client: &mut Client, topic: &str, seen: &mut Seen) -> Value {
    let since = seen.since(topic);
    client
        .send_json(json!({"type": "subscribe", "id": 1, "topics": [topic], "since": since}))
        .await;
    loop {
        let frame = client.next_json().await;
        match frame["type"].as_str() {
            Some("message") => seen.take(&frame),
            Some("subscribed") => return frame,
            _ => panic!("unexpected frame {frame}"),
        }
    }
}

/// Publishes `{"n": seq}` to `topic` every `every` until `stop`; the payload
/// carries the sequence the engine will give it (one publisher per topic).
fn publisher(
    engine: &herald::Engine,
    topic: &'static str,
    every: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let published = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&published);
    let addr = engine.grpc_addr();
    let task = tokio::spawn(async move {
        let mut grpc =
            herald::proto::herald_client::HeraldClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let seq = publish_json(&mut grpc, topic, json!({ "n": n })).await;
            assert_eq!(seq, n);
            count.store(n, Ordering::Relaxed);
            if let Some(every) = every {
                tokio::time::sleep(every).await;
            }
        }
    });
    (task, published)
}

/// Reads messages until `seen` reaches `seq`.
async fn catch_up(client: &mut Client, seen: &mut Seen, seq: u64) {
    while seen.seq < seq {
        let frame = client.next_message().await;
        seen.take(&frame);
    }
}

/// A client that drops and reconnects over and over while its topic receives
/// 100 messages a second recovers every time: no gap, no duplicate, strict order.
/// 200 reconnects by default (about 6 s); HERALD_TEST_RECONNECTS=1000, as
/// scripts/test sets it, runs 1,000 (about 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_many_times_recovers_every_message() {
    let reconnects: usize = std::env::var("HERALD_TEST_RECONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let engine = start(with_history(vec![rule(
        "room:*",
        1000,
        Some(Duration::from_secs(120)),
    )]))
    .await;
    let mut seen = Seen::default();
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["room:a"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (task, published) = publisher(
        &engine,
        "room:a",
        Some(Duration::from_millis(10)),
        Arc::clone(&stop),
    );
    let first = client.next_message().await;
    // Start from the first message the publisher sent.
    assert_eq!(first["seq"], 1, "{first}");
    seen.take(&first);
    let mut recovered_messages = 0;
    for round in 0..reconnects {
        // Read a little live traffic, then drop without a close handshake.
        let live = if round % 2 == 0 { 1 } else { 0 };
        for _ in 0..live {
            let frame = client.next_message().await;
            seen.take(&frame);
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(5 + (round % 4) as u64 * 5)).await;
        client = Client::connect(&engine).await;
        let before = seen.messages;
        let reply = resubscribe(&mut client, "room:a", &mut seen).await;
        assert_eq!(reply["recovered"]["room:a"], true, "round {round}: {reply}");
        assert_eq!(reply["positions"]["room:a"]["epoch"], seen.epoch.as_str());
        let position = reply["positions"]["room:a"]["seq"].as_u64().unwrap();
        catch_up(&mut client, &mut seen, position).await;
        recovered_messages += seen.messages - before;
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let last = published.load(Ordering::Relaxed);
    catch_up(&mut client, &mut seen, last).await;
    assert_eq!(seen.messages, last, "every message exactly once");
    assert!(recovered_messages > 0);
    engine.shutdown().await;
}

/// Replay racing a publisher that runs as fast as it can: every reconnect
/// recovers with no gap and no duplicate between replayed and live messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_racing_fast_live_publishing_has_no_gap_and_no_duplicate() {
    let engine = start(with_history(vec![rule("fast:*", 100_000, None)])).await;
    let mut seen = Seen::default();
    let mut client = Client::connect(&engine).await;
    client.subscribe(&["fast:x"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (task, published) = publisher(&engine, "fast:x", None, Arc::clone(&stop));
    let first = client.next_message().await;
    seen.take(&first);
    for round in 0..30 {
        for _ in 0..(round % 5) {
            let frame = client.next_message().await;
            seen.take(&frame);
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(round % 7)).await;
        client = Client::connect(&engine).await;
        let reply = resubscribe(&mut client, "fast:x", &mut seen).await;
        assert_eq!(reply["recovered"]["fast:x"], true, "{reply}");
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let last = published.load(Ordering::Relaxed);
    catch_up(&mut client, &mut seen, last).await;
    assert_eq!(seen.messages, last);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_restarted_engine_has_a_new_epoch_and_cannot_recover() {
    let engine = start(with_history(vec![rule("room:*", 100, None)])).await;
    let mut g = grpc(&engine).await;
    let ack = g
        .publish(json_request("room:r", json!({"n": 1})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.sequence, 1);
    assert_eq!(ack.epoch.len(), 16, "{ack:?}");
    engine.shutdown().await;

    let engine = start(with_history(vec![rule("room:*", 100, None)])).await;
    let mut g = grpc(&engine).await;
    let again = g
        .publish(json_request("room:r", json!({"n": 1})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.sequence, 1);
    assert_ne!(again.epoch, ack.epoch, "a new incarnation, a new epoch");
    let mut client = Client::connect(&engine).await;
    let reply = client
        .command(json!({"type": "subscribe", "topics": ["room:r"],
            "since": {"room:r": {"seq": 0, "epoch": ack.epoch}}}))
        .await;
    assert_eq!(reply["recovered"]["room:r"], false, "{reply}");
    assert_eq!(
        reply["positions"]["room:r"],
        json!({"seq": 1, "epoch": again.epoch})
    );
    client.expect_silence(Duration::from_millis(200)).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn history_beyond_its_size_or_ttl_is_not_recovered_nor_replayed() {
    let engine = start(with_history(vec![rule(
        "room:*",
        5,
        Some(Duration::from_millis(400)),
    )]))
    .await;
    let mut g = grpc(&engine).await;
    let mut epoch = String::new();
    for n in 1..=10 {
        epoch = g
            .publish(json_request("room:s", json!({"n": n})))
            .await
            .unwrap()
            .into_inner()
            .epoch;
    }
    let since = |seq: u64| json!({"room:s": {"seq": seq, "epoch": epoch}});
    // Seq 3..5 were pushed out by the size (5 kept: 6..10).
    let mut client = Client::connect(&engine).await;
    let reply = client
        .command(json!({"type": "subscribe", "topics": ["room:s"], "since": since(4)}))
        .await;
    assert_eq!(reply["recovered"]["room:s"], false, "{reply}");
    client.expect_silence(Duration::from_millis(100)).await;
    // From 5, everything missed is kept.
    let mut client = Client::connect(&engine).await;
    let mut seen = Seen {
        seq: 5,
        epoch: epoch.clone(),
        messages: 0,
    };
    let reply = resubscribe(&mut client, "room:s", &mut seen).await;
    assert_eq!(reply["recovered"]["room:s"], true, "{reply}");
    assert_eq!(seen.seq, 10, "6..10 replayed before the reply");
    // Once the TTL has passed, nothing is replayed and the client is told.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut client = Client::connect(&engine).await;
    let reply = client
        .command(json!({"type": "subscribe", "topics": ["room:s"], "since": since(9)}))
        .await;
    assert_eq!(reply["recovered"]["room:s"], false, "{reply}");
    assert_eq!(reply["positions"]["room:s"]["seq"], 10);
    client.expect_silence(Duration::from_millis(100)).await;
    // Up to date: nothing missed, so recovered even with nothing kept.
    let mut client = Client::connect(&engine).await;
    let reply = client
        .command(json!({"type": "subscribe", "topics": ["room:s"], "since": since(10)}))
        .await;
    assert_eq!(reply["recovered"]["room:s"], true, "{reply}");
    let page = g
        .history(HistoryRequest {
            topic: "room:s".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.messages.is_empty(),
        "expired messages are never returned"
    );
    assert_eq!(page.first_sequence, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_topics_with_history_stay_under_the_node_bound() {
    const BOUND: usize = 2 * 1024 * 1024;
    let engine = start(herald::Config {
        history_max_bytes: BOUND,
        ..with_history(vec![rule("t:>", 100, None)])
    })
    .await;
    let mut g = grpc(&engine).await;
    let payload = json!({"pad": "x".repeat(100)});
    // 10,000 topics × 5 messages, in batches of 1,000 over one stream.
    let requests: Vec<PublishStreamRequest> = (0..50)
        .map(|batch| {
            let mut msgs: Vec<_> = (0..1000)
                .map(|i| {
                    json_request(
                        &format!("t:{}", (batch * 1000 + i) % 10_000),
                        payload.clone(),
                    )
                })
                .collect();
            let first = msgs.remove(0);
            PublishStreamRequest {
                client_seq: batch * 1000 + 1,
                message: Some(first),
                more: msgs,
            }
        })
        .collect();
    let mut responses = g
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut peak = 0;
    let mut answered = 0;
    while let Some(r) = responses.message().await.unwrap() {
        answered += 1 + r.more.len();
        peak = peak.max(engine.stats().history_bytes);
    }
    assert_eq!(answered, 50_000);
    let stats = engine.stats();
    // A message in flight may pass the bound until its publish evicts.
    assert!(
        stats.history_bytes <= BOUND as u64 && peak <= BOUND as u64 + 1024,
        "{stats:?}, peak {peak}"
    );
    assert!(stats.history_evicted > 0, "{stats:?}");
    assert!(stats.history_messages > 1000, "{stats:?}");
    // The oldest messages went first: the last topics published keep theirs.
    let newest = g
        .history(HistoryRequest {
            topic: "t:9999".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newest.messages.last().map(|m| m.sequence), Some(5));
    let oldest = g
        .history(HistoryRequest {
            topic: "t:0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        oldest.messages.is_empty() || oldest.first_sequence > 1,
        "{oldest:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn grpc_history_pages_both_ways_and_remove_history_empties_it() {
    let engine = start(with_history(vec![rule("room:*", 100, None)])).await;
    let mut g = grpc(&engine).await;
    for n in 1..=7 {
        publish_json(&mut g, "room:h", json!({ "n": n })).await;
    }
    let text = herald::proto::PublishRequest {
        topic: "room:h".into(),
        data: "plain \"text\"".into(),
        content_type: "text/plain; charset=utf-8".into(),
        ..Default::default()
    };
    let epoch = g.publish(text).await.unwrap().into_inner().epoch;
    let page = |since: Option<u64>, limit: u32, reverse: bool| HistoryRequest {
        topic: "room:h".into(),
        since: since.map(|sequence| StreamPosition {
            sequence,
            epoch: epoch.clone(),
        }),
        limit,
        reverse,
    };
    let seqs = |r: &herald::proto::HistoryResponse| -> Vec<u64> {
        r.messages.iter().map(|m| m.sequence).collect()
    };
    let first = g.history(page(None, 3, false)).await.unwrap().into_inner();
    assert_eq!(seqs(&first), [1, 2, 3]);
    assert_eq!(first.messages[0].data.as_ref(), br#"{"n":1}"#);
    assert_eq!(first.messages[0].content_type, "application/json");
    assert!(first.messages[0].timestamp_ms > 0);
    assert_eq!(first.first_sequence, 1);
    assert_eq!(
        first.position,
        Some(StreamPosition {
            sequence: 8,
            epoch: epoch.clone()
        })
    );
    let next = g
        .history(page(Some(3), 3, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&next), [4, 5, 6]);
    let newest = g.history(page(None, 2, true)).await.unwrap().into_inner();
    assert_eq!(seqs(&newest), [8, 7]);
    assert_eq!(newest.messages[0].data.as_ref(), b"plain \"text\"");
    assert_eq!(newest.messages[0].content_type, "text/plain; charset=utf-8");
    let older = g
        .history(page(Some(7), 10, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&older), [6, 5, 4, 3, 2, 1]);
    // Another epoch is refused; a bad limit too.
    let stale = HistoryRequest {
        topic: "room:h".into(),
        since: Some(StreamPosition {
            sequence: 1,
            epoch: "0000000000000000".into(),
        }),
        ..Default::default()
    };
    let e = g.history(stale).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = g.history(page(None, 10_001, false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Unknown topics and topics without history answer an empty page.
    let none = g
        .history(HistoryRequest {
            topic: "other:x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.messages.is_empty());

    let removed = g
        .remove_history(RemoveHistoryRequest {
            topic: "room:h".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 8);
    assert_eq!(engine.stats().history_messages, 0);
    let mut client = Client::connect(&engine).await;
    let reply = client
        .command(json!({"type": "subscribe", "topics": ["room:h"],
            "since": {"room:h": {"seq": 5, "epoch": epoch}}}))
        .await;
    assert_eq!(reply["recovered"]["room:h"], false, "{reply}");
    engine.shutdown().await;
}

/// A producer's Subscribe with `since` recovers the connection the same way.
#[tokio::test]
async fn a_server_side_subscribe_recovers_too() {
    let engine = start(with_history(vec![rule("room:*", 100, None)])).await;
    let mut g = grpc(&engine).await;
    let mut epoch = String::new();
    for n in 1..=4 {
        epoch = g
            .publish(json_request("room:g", json!({"n": n})))
            .await
            .unwrap()
            .into_inner()
            .epoch;
    }
    let mut client = Client::connect(&engine).await;
    let answer = g
        .subscribe(SubscribeRequest {
            target: Some(Target {
                target: Some(target::Target::ConnectionId(client.conn_id.clone())),
            }),
            topics: vec!["room:g".into()],
            since: [(
                "room:g".to_owned(),
                StreamPosition {
                    sequence: 2,
                    epoch: epoch.clone(),
                },
            )]
            .into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.recovered.get("room:g"), Some(&true));
    assert_eq!(answer.positions["room:g"].sequence, 4);
    let mut seen = Seen {
        seq: 2,
        epoch,
        messages: 0,
    };
    catch_up(&mut client, &mut seen, 4).await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["server"], true);
    assert_eq!(reply["recovered"]["room:g"], true);
    publish_json(&mut g, "room:g", json!({"n": 5})).await;
    catch_up(&mut client, &mut seen, 5).await;
    engine.shutdown().await;
}
