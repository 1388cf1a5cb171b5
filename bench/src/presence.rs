//! `presence`: `WatchPresence` snapshots on a node that retains many topics.
//!
//! Broadcast calls leave T retained, empty topics behind; a few hundred clients
//! take a 10 Hz topic. The steady phase measures their delivery; the second phase
//! opens N `WatchPresence` streams with a snapshot at once (over several gRPC
//! connections) and measures the same delivery while they open and stay open.
//! Reported: the time until every watcher had its whole snapshot
//! (`SNAPSHOT_END`), the subscribers' p99 before and during, and the engine's RSS
//! before, at most and at the end. Herald only (`--targets` is ignored).

use crate::pool::{Pool, Spec};
use crate::producer::Producer;
use crate::proto::herald_client::HeraldClient;
use crate::proto::{BroadcastRequest, PresenceEventKind, WatchPresenceRequest};
use crate::report::RunDoc;
use crate::scenarios::{Common, measure_phase};
use crate::servers::{Server, Target};
use crate::util::{BenchError, Result, err, rss_kib};
use crate::worker::Mode;
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

/// `presence` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PresenceArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Subscribed connections on the measured topic `bench`.
    #[arg(long, default_value_t = 300)]
    pub(crate) conns: u64,
    /// Publish rate on `bench`, Hz.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Retained, empty topics (`retained:<i>`) made before the run.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) topics: u64,
    /// Topics per Broadcast call (at most the engine's --max-broadcast-topics).
    #[arg(long, default_value_t = 1000)]
    pub(crate) broadcast_topics: u64,
    /// `WatchPresence` streams opened at once, each with a snapshot.
    #[arg(long, default_value_t = 1000)]
    pub(crate) watchers: u64,
    /// Watch streams per gRPC connection (the engine allows
    /// --grpc-max-streams-per-connection, 1024 by default).
    #[arg(long, default_value_t = 200)]
    pub(crate) streams_per_connection: u64,
    /// The topic or pattern every watcher watches.
    #[arg(long, default_value = ">")]
    pub(crate) pattern: String,
    /// Most seconds to wait, after the phase, for the last snapshot.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) open_timeout: f64,
}

/// What one watcher saw.
#[derive(Debug, Default, Clone)]
struct Opened {
    /// Seconds from the start of the phase to its SNAPSHOT_END.
    secs: Option<f64>,
    /// SNAPSHOT events before it.
    members: u64,
    /// The error that ended it early.
    error: Option<String>,
}

/// Opens `a.watchers` streams at once; sends each one's outcome on `done`, and
/// keeps every stream open (reading live events) until `stop` turns true.
async fn open_watchers(
    a: &PresenceArgs,
    grpc: std::net::SocketAddr,
    start: Instant,
    stop: watch::Receiver<bool>,
    done: tokio::sync::mpsc::Sender<Opened>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let per = a.streams_per_connection.max(1);
    let connections = a.watchers.div_ceil(per);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let ch = Channel::from_shared(format!("http://{grpc}"))
            .map_err(|e| BenchError::Msg(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(HeraldClient::new(ch).max_decoding_message_size(1 << 20));
    }
    let mut tasks = Vec::new();
    for i in 0..a.watchers {
        let mut client = clients[(i / per) as usize].clone();
        let done = done.clone();
        let mut stop = stop.clone();
        let req = WatchPresenceRequest {
            topics: vec![a.pattern.clone()],
            include_snapshot: true,
            include_connections: false,
        };
        tasks.push(tokio::spawn(async move {
            let mut seen = Opened::default();
            let mut stream = match client.watch_presence(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    seen.error = Some(e.to_string());
                    let _ = done.send(seen).await;
                    return;
                }
            };
            let mut reported = false;
            loop {
                let next = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    next = stream.message() => next,
                };
                match next {
                    Ok(Some(e)) if e.kind == PresenceEventKind::Snapshot as i32 => {
                        seen.members += 1;
                    }
                    Ok(Some(e)) if e.kind == PresenceEventKind::SnapshotEnd as i32 => {
                        seen.secs = Some(start.elapsed().as_secs_f64());
                        reported = true;
                        let _ = done.send(seen.clone()).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        seen.error = Some("the stream ended".into());
                        break;
                    }
                    Err(e) => {
                        seen.error = Some(e.to_string());
                        break;
                    }
                }
            }
            if !reported {
                let _ = done.send(seen).await;
            }
        }));
    }
    Ok(tasks)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs `presence`.
pub(crate) async fn presence(a: PresenceArgs) -> Result<()> {
    let c = &a.common;
    if a.watchers == 0 || a.broadcast_topics == 0 {
        return err("presence needs --watchers ≥ 1 and --broadcast-topics ≥ 1");
    }
    if c.targets.iter().any(|t| *t != Target::Herald) {
        eprintln!("[presence] measures Herald only (the others have no presence API)");
    }
    let mut doc = RunDoc::new("presence");
    // Retained topics must outlive the run.
    let mut args = c.herald_args.clone();
    if !args.iter().any(|x| x.starts_with("--topic-retention")) {
        args.push("--topic-retention=1h".into());
    }
    let mut server = Server::start(
        Target::Herald,
        &c.herald_bin,
        &args,
        &c.out_dir.join("logs"),
    )
    .await?;
    let Some(grpc) = server.grpc_addr else {
        return err("Herald serves no gRPC address");
    };
    let producer = Producer::connect(grpc).await?;
    let mut spec = Spec::readers(Mode::Ws, server.ws_addr, a.conns, &["bench"]);
    spec.concurrency = c.concurrency;
    spec.per_worker = c.per_worker;
    let mut pool = Pool::spawn(&spec)?;
    let ready = pool.ready(Duration::from_secs(300)).await?;
    eprintln!(
        "[presence] {} connected, {} failed",
        ready.connected, ready.failed
    );

    // Retained topics: Broadcast calls to topics nobody is subscribed to.
    let t0 = Instant::now();
    let mut client = producer.client();
    let mut made = 0u64;
    while made < a.topics {
        let n = a.broadcast_topics.min(a.topics - made);
        client
            .broadcast(BroadcastRequest {
                topics: (made..made + n).map(|i| format!("retained:{i}")).collect(),
                data: b"{}".to_vec(),
                content_type: "application/json".into(),
                ..Default::default()
            })
            .await?;
        made += n;
    }
    let retain_s = t0.elapsed().as_secs_f64();
    let topics_held = producer.info().await.map(|i| i.topics).unwrap_or(0);
    eprintln!(
        "[presence] {made} retained topics in {retain_s:.2} s; the engine holds {topics_held} topics"
    );

    let mut steady = measure_phase(
        &server,
        &producer,
        &mut pool,
        ready.connected,
        (a.rate, a.duration, c.payload),
    )
    .await?;
    steady.phase = "steady".into();
    let (rss_before, _) = server.rss();

    // The watchers open together at the start of the second phase.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(a.watchers as usize);
    let start = Instant::now();
    let pid = server.pid;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let (rss, _) = rss_kib(pid).unwrap_or((0, 0));
                samples.push((start.elapsed().as_secs_f64(), rss));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let watchers = open_watchers(&a, grpc, start, stop_rx, done_tx);
    let phase = measure_phase(
        &server,
        &producer,
        &mut pool,
        ready.connected,
        (a.rate, a.duration, c.payload),
    );
    let (tasks, with) = tokio::join!(watchers, phase);
    let tasks = tasks?;
    let mut with = with?;
    with.phase = format!("with {} snapshot watchers opening", a.watchers);

    // Every watcher's outcome, waiting for slow snapshots if need be.
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(a.open_timeout);
    while (outcomes.len() as u64) < a.watchers {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(o)) => outcomes.push(o),
            _ => break,
        }
    }
    let (rss_open, _) = server.rss();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    let (rss_closed, hwm) = server.rss();
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0).max(rss_open);

    let mut times: Vec<f64> = outcomes.iter().filter_map(|o| o.secs).collect();
    times.sort_by(f64::total_cmp);
    let opened = times.len() as u64;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    let all_open_s = times.last().copied();
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let members: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.secs.is_some())
        .map(|o| o.members)
        .collect();
    let open_text = match all_open_s {
        Some(s) if opened == a.watchers => format!("all {opened} snapshots in {s:.3} s"),
        _ => format!(
            "{opened} of {} snapshots within the wait ({} failed)",
            a.watchers,
            failed.len()
        ),
    };
    with.note = format!(
        "{open_text} (median {median:.3} s, {} SNAPSHOT events each); RSS {:.1} MiB before, max {:.1} MiB, {:.1} MiB with all open, {:.1} MiB after closing{}",
        members.first().copied().unwrap_or(0),
        mib(rss_before),
        mib(rss_max),
        mib(rss_open),
        mib(rss_closed),
        if with.note.is_empty() {
            String::new()
        } else {
            format!("; {}", with.note)
        }
    );
    with.peak_rss_mib = mib(hwm);
    with.extra.insert(
        "watchers".into(),
        json!({
            "requested": a.watchers,
            "opened": opened,
            "failed": failed.len(),
            "first_errors": failed.iter().take(5).collect::<Vec<_>>(),
            "all_open_s": all_open_s,
            "median_open_s": median,
            "snapshot_events_min": members.iter().min(),
            "snapshot_events_max": members.iter().max(),
            "pattern": a.pattern,
            "streams_per_connection": a.streams_per_connection,
        }),
    );
    with.extra.insert(
        "retained".into(),
        json!({"topics": made, "engine_topics": topics_held, "seconds": retain_s}),
    );
    with.extra.insert(
        "rss_kib".into(),
        json!({"before": rss_before, "max": rss_max, "all_open": rss_open, "closed": rss_closed}),
    );
    with.extra.insert("rss_samples_kib".into(), json!(samples));

    let alive = server.alive();
    pool.quit().await;
    server.stop().await;
    doc.summary.push(format!(
        "herald: {made} retained topics, {} subscribers on a {} Hz topic; {open_text}; subscribers' p99 {:.2} ms steady, {:.2} ms with the watchers = {}; RSS {:.1} MiB before, max {:.1} MiB",
        ready.connected,
        a.rate,
        steady.lat.p99_ms,
        with.lat.p99_ms,
        if steady.lat.p99_ms > 0.0 {
            format!("{:.2}×", with.lat.p99_ms / steady.lat.p99_ms)
        } else {
            "n/a".into()
        },
        mib(rss_before),
        mib(rss_max),
    ));
    doc.rows.push(steady.clone());
    doc.rows.push(with.clone());
    let path = doc.save(&c.out_dir, c.markdown.as_deref())?;
    println!("{}", doc.markdown());
    eprintln!("results: {}", path.display());

    if !alive {
        return err("herald died during the run (see its log under the results dir)");
    }
    if c.strict {
        for r in [&steady, &with] {
            let get = |k: &str| r.extra.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            if r.delivered < r.expected || get("seq_gaps") > 0 || get("seq_reorders") > 0 {
                return err(format!(
                    "presence {}: delivered {} of {}, {} skipped, {} out of order",
                    r.phase,
                    r.delivered,
                    r.expected,
                    get("seq_gaps"),
                    get("seq_reorders")
                ));
            }
        }
        if ready.failed > 0 {
            return err(format!("presence: {} connections failed", ready.failed));
        }
        if opened < a.watchers {
            return err(format!(
                "presence: {opened} of {} watchers got their snapshot; first errors: {:?}",
                a.watchers,
                failed.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}
