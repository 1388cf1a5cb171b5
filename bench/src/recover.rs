//! `recover`: a reconnect storm on a topic with history (Herald only).
//!
//! C clients read one topic, `bench`, published at R Hz; the topic keeps a history
//! (`--history-size`, 100 messages for 2 minutes unless told otherwise). After a
//! steady phase every client drops its connection at once (the socket closed, no
//! close frame) and reconnects at a random moment within `--jitter-ms`,
//! resubscribing with `since` = the last `seq`/`epoch` it saw; publishing goes on
//! throughout. Reported: the time until every client is live again (its
//! `subscribed` reply), how many recovered (`recovered: true`) or not, gaps and
//! duplicates in each client's `seq` over the whole run (0 expected: a recovered
//! client misses nothing and sees nothing twice), the engine CPU of the storm per
//! replayed message, the p99 of live messages before, during and after the storm,
//! and the engine's RSS before, at most during, and after it.

use crate::pool::{Pool, Report, Spec};
use crate::producer::{Producer, Topics};
use crate::report::{Row, RunDoc};
use crate::scenarios::{Common, finish, note_busy, ratio, security_note};
use crate::secure::{Auth, History, Material};
use crate::servers::{Server, Target};
use crate::util::{HistDump, Lat, Result, err, new_hist, now_ns, rss_kib, self_cpu_s};
use crate::worker::Mode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `recover` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RecoverArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections on the topic `bench`.
    #[arg(long, default_value_t = 5000)]
    pub(crate) conns: u64,
    /// Publish rate, Hz (throughout the run).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Seconds of the steady phase before the drop, and of the phase after the
    /// storm.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Each client reconnects at a uniformly random moment within this many
    /// milliseconds after the drop.
    #[arg(long, default_value_t = 1000)]
    pub(crate) jitter_ms: u64,
    /// Most seconds to wait for every client to be live again.
    #[arg(long, default_value_t = 180.0)]
    pub(crate) storm_timeout: f64,
}

/// History kept for `bench` when --history-size is not given.
const DEFAULT_HISTORY: usize = 100;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The sum of one `storm` event field over the workers.
fn sum(evs: &[Value], k: &str) -> u64 {
    evs.iter().map(|v| v[k].as_u64().unwrap_or(0)).sum()
}

/// The merged histogram of one `storm` event field.
fn merged(evs: &[Value], k: &str) -> Result<Lat> {
    let mut h = new_hist()?;
    for v in evs {
        let d: HistDump = serde_json::from_value(v[k].clone())?;
        d.add_to(&mut h)?;
    }
    Ok(Lat::of(&h))
}

/// A phase row from the report taken at its end (`prev`: the one taken at its
/// start, for the workers' CPU).
#[allow(clippy::too_many_arguments)]
fn phase_row(
    phase: &str,
    conns: u64,
    rate: f64,
    secs: f64,
    prev: &Report,
    rep: &Report,
    cpu_s: f64,
    server: &Server,
) -> Row {
    let mut r = Row {
        target: Target::Herald.name().into(),
        phase: phase.into(),
        conns,
        rate_hz: rate,
        duration_s: secs,
        delivered: rep.received,
        lat: Lat::of(&rep.hist),
        engine_cpu_s: cpu_s,
        peak_rss_mib: mib(server.rss().1),
        gen_cpu_s: rep.cpu_s - prev.cpu_s,
        ..Row::default()
    };
    if !rep.close_codes.is_empty() {
        r.note = format!("closed by server: {:?}", rep.close_codes);
    }
    r.finish();
    r
}

/// Runs `recover`.
pub(crate) async fn recover(a: RecoverArgs) -> Result<()> {
    let c = &a.common;
    if a.conns == 0 || a.rate <= 0.0 || a.duration <= 0.0 {
        return err("recover needs --conns ≥ 1, --rate > 0 and --duration > 0");
    }
    if c.targets.iter().any(|t| *t != Target::Herald) {
        eprintln!("[recover] measures Herald only (the others keep no history)");
    }
    let mut doc = RunDoc::new("recover");
    let history = c.history().unwrap_or(History {
        size: DEFAULT_HISTORY,
        ttl: c.history_ttl.clone(),
    });
    note_busy(format!("herald C={}", a.conns), c.busy_probe_ms).await;
    let secure = Material::prepare(&c.out_dir.join("secure"), c.auth, c.tls, Some(&history))?;
    let args: Vec<String> = c
        .herald_args
        .iter()
        .chain(&secure.herald_args)
        .cloned()
        .collect();
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
    let mut spec = Spec::readers(Mode::Recover, server.ws_addr, a.conns, &["bench"]);
    spec.concurrency = c.concurrency;
    spec.per_worker = c.per_worker;
    spec.extra_args = secure.worker_args.clone();
    spec.extra_args.push(format!("--jitter-ms={}", a.jitter_ms));
    let mut pool = Pool::spawn(&spec)?;
    let ready = pool.ready(Duration::from_secs(300)).await?;
    eprintln!(
        "[recover] {} connected, {} failed",
        ready.connected, ready.failed
    );
    if ready.failed > 0 {
        eprintln!("[recover] connect errors: {:?}", ready.errors);
        if c.strict {
            pool.quit().await;
            server.stop().await;
            return err(format!("recover: {} connections failed", ready.failed));
        }
    }
    let conns = ready.connected;

    // The engine's RSS, sampled every 50 ms for the whole run.
    let pid = server.pid;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                let (rss, _) = rss_kib(pid).unwrap_or((0, 0));
                samples.push((now_ns(), rss));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    // Counts start before the first message can arrive.
    let base = pool.report().await?;
    let pcpu0 = self_cpu_s();
    let cpu_start = server.cpu_s();
    // One publishing stream for the whole run, stopped after the last phase.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let p = producer.clone();
        let stop = stop.clone();
        let rate = a.rate;
        let payload = c.payload;
        tokio::spawn(async move {
            p.stream_until(
                Topics::One("bench".into()),
                rate,
                3600.0,
                payload,
                0,
                Some(stop),
            )
            .await
        })
    };

    // Before: steady fan-out.
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let cpu0 = server.cpu_s();
    let before_rep = pool.report().await?;
    let before = phase_row(
        "before the drop",
        conns,
        a.rate,
        a.duration,
        &base,
        &before_rep,
        cpu0 - cpu_start,
        &server,
    );
    let (rss_before, _) = server.rss();

    // The storm: every connection drops at once and reconnects with `since`.
    let t_drop = now_ns();
    let evs = pool
        .storm(Duration::from_secs_f64(a.storm_timeout + 10.0))
        .await?;
    let cpu1 = server.cpu_s();
    let t_end_storm = now_ns();
    let storm_rep = pool.report().await?;
    let t_live_max = evs
        .iter()
        .map(|v| v["t_live_max_ns"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let t_drop_w = evs
        .iter()
        .map(|v| v["t_drop_ns"].as_u64().unwrap_or(u64::MAX))
        .min()
        .unwrap_or(t_drop);
    let all_live_s = t_live_max.saturating_sub(t_drop_w) as f64 / 1e9;
    let storm_s = t_end_storm.saturating_sub(t_drop) as f64 / 1e9;
    let expected_conns = sum(&evs, "expected");
    let recovered = sum(&evs, "recovered");
    let not_recovered = sum(&evs, "not_recovered");
    let no_position = sum(&evs, "no_position");
    let gave_up = sum(&evs, "gave_up");
    let retries = sum(&evs, "retries");
    let replayed = sum(&evs, "replayed");
    let timed_out = evs.iter().any(|v| v["timed_out"] == true);
    let from_drop = merged(&evs, "from_drop_hist")?;
    let from_reconnect = merged(&evs, "from_reconnect_hist")?;
    let storm_cpu = cpu1 - cpu0;
    let mut storm = phase_row(
        "storm: drop, reconnect, recover",
        conns,
        a.rate,
        storm_s,
        &before_rep,
        &storm_rep,
        storm_cpu,
        &server,
    );
    // The deliveries of the storm are its live messages and the replayed ones.
    storm.delivered = storm_rep.received + replayed;
    storm.finish();
    let live_again = recovered + not_recovered + no_position;
    let steady_cpu_rate = before.engine_cpu_s / a.duration;
    let us_per_replayed = storm_cpu * 1e6 / replayed.max(1) as f64;
    let us_per_replayed_net =
        (storm_cpu - steady_cpu_rate * storm_s).max(0.0) * 1e6 / replayed.max(1) as f64;
    let us_per_reconnect = storm_cpu * 1e6 / live_again.max(1) as f64;
    storm.note = format!(
        "all {live_again} of {expected_conns} live again {all_live_s:.3} s after the drop \
         (drop → subscribed p50 {:.0} ms, p99 {:.0} ms; reconnect → subscribed p50 {:.1} ms, \
         p99 {:.1} ms); recovered true {recovered}, false {not_recovered}; without a position \
         {no_position}; gave up {gave_up}; retries {retries}; deliveries = {} live + {replayed} \
         replayed; {us_per_replayed:.1} µs engine CPU per replayed message{}",
        from_drop.p50_ms,
        from_drop.p99_ms,
        from_reconnect.p50_ms,
        from_reconnect.p99_ms,
        storm_rep.received,
        if storm.note.is_empty() {
            String::new()
        } else {
            format!("; {}", storm.note)
        }
    );
    storm.extra.insert("storm_events".into(), json!(evs));

    // After: steady fan-out again, from the end of the storm.
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let cpu2 = server.cpu_s();
    let after_rep = pool.report().await?;
    let after = phase_row(
        "after the storm",
        conns,
        a.rate,
        a.duration,
        &storm_rep,
        &after_rep,
        cpu2 - cpu1,
        &server,
    );
    let (rss_after, _) = server.rss();
    stop.store(true, Ordering::Relaxed);
    let st = match publisher.await {
        Ok(r) => r?,
        Err(e) => return err(format!("publisher: {e}")),
    };
    let live_so_far = before_rep.received + storm_rep.received + after_rep.received;
    let expected = st.acked * conns;
    pool.drain(
        expected.saturating_sub(replayed + live_so_far),
        Duration::from_secs(10),
    )
    .await?;
    let cpu3 = server.cpu_s();
    let last = pool.report().await?;
    // Where each client ended: the topic is new, so its last seq is the number
    // of messages accepted.
    let positions = pool.positions().await?;
    let behind: u64 = positions
        .iter()
        .filter(|(seq, _)| **seq < st.acked)
        .map(|(_, n)| n)
        .sum();
    let info = producer.info().await;
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    let rss_storm_max = samples
        .iter()
        .filter(|(t, _)| *t >= t_drop && *t <= t_end_storm)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let (_, hwm) = server.rss();
    let alive = server.alive();
    pool.quit().await;
    server.stop().await;

    // The whole run: every published message reached every client exactly once.
    let gaps = last.seq_gaps.saturating_sub(base.seq_gaps);
    let dups = last.seq_reorders.saturating_sub(base.seq_reorders);
    let live_total = live_so_far + last.received;
    let mut whole = Row {
        target: Target::Herald.name().into(),
        phase: "whole run".into(),
        conns,
        rate_hz: a.rate,
        duration_s: st.elapsed_s,
        published: st.acked,
        expected,
        delivered: live_total + replayed,
        engine_cpu_s: cpu3 - cpu_start,
        peak_rss_mib: mib(hwm),
        gen_cpu_s: last.cpu_s - base.cpu_s,
        ..Row::default()
    };
    whole.finish();
    let mut notes = vec![format!(
        "{gaps} seq gaps, {dups} duplicates or out of order, over every client's whole run; \
         {behind} clients ended before the last seq {}; history {} / {} on bench",
        st.acked, history.size, history.ttl
    )];
    if behind > 0 {
        notes.push(format!("last seq seen: {positions:?}"));
    }
    if st.errors > 0 {
        notes.push(format!(
            "publish errors: {} ({:?})",
            st.errors, st.first_error
        ));
    }
    if !last.errors.is_empty() {
        notes.push(format!("client errors: {:?}", last.errors));
        whole
            .extra
            .insert("client_errors".into(), json!(last.errors));
    }
    whole.note = notes.join("; ");
    if c.auth != Auth::None || c.tls {
        // The history is in the note already; this adds the tokens and TLS.
        let mut plain = c.clone();
        plain.history_size = None;
        whole.note.push_str(&security_note(&plain, Target::Herald));
    }
    whole.extra.insert("seq_gaps".into(), json!(gaps));
    whole.extra.insert("seq_reorders".into(), json!(dups));
    whole.extra.insert("last_seq_seen".into(), json!(positions));
    whole
        .extra
        .insert("producer_cpu_s".into(), json!(self_cpu_s() - pcpu0));
    whole.extra.insert(
        "rss_kib".into(),
        json!({"before": rss_before, "storm_max": rss_storm_max, "after": rss_after}),
    );
    whole.extra.insert(
        "history".into(),
        json!({
            "size": history.size,
            "ttl": history.ttl,
            "engine_messages": info.as_ref().map(|i| i.history_messages),
            "engine_bytes": info.as_ref().map(|i| i.history_bytes),
        }),
    );
    whole.extra.insert("rss_samples_kib".into(), json!(samples));

    doc.summary.push(format!(
        "herald: {conns} clients on one {} Hz topic with history {} / {}, all dropped at once and \
         reconnecting within {} ms: all live again {all_live_s:.3} s after the drop; recovered: \
         {recovered} true, {not_recovered} false ({no_position} without a position, {gave_up} \
         gave up, {retries} retried connects)",
        a.rate, history.size, history.ttl, a.jitter_ms
    ));
    doc.summary.push(format!(
        "gaps {gaps}, duplicates {dups} across the drop (target 0), {behind} clients short of \
         the last message; the clients got {:.4}% of the {} published messages ({} live + \
         {replayed} replayed of {expected})",
        whole.delivered_frac * 100.0,
        st.acked,
        live_total
    ));
    doc.summary.push(format!(
        "engine CPU during the storm ({storm_s:.2} s): {storm_cpu:.3} s = {us_per_replayed:.1} µs \
         per replayed message ({replayed} replayed; the storm's CPU covers the reconnects, \
         subscribes, replays and the live fan-out), {us_per_replayed_net:.1} µs after taking \
         off the steady fan-out's CPU rate; {us_per_reconnect:.0} µs per reconnection"
    ));
    doc.summary.push(format!(
        "live messages' p99: {:.2} ms before, {:.2} ms during the storm ({}), {:.2} ms after",
        before.lat.p99_ms,
        storm.lat.p99_ms,
        ratio(storm.lat.p99_ms, before.lat.p99_ms),
        after.lat.p99_ms
    ));
    doc.summary.push(format!(
        "engine RSS: {:.1} MiB before, {:.1} MiB at most during the storm, {:.1} MiB after{}",
        mib(rss_before),
        mib(rss_storm_max),
        mib(rss_after),
        info.as_ref()
            .map(|i| format!(
                "; history held at the end: {} messages, {:.1} KiB",
                i.history_messages,
                i.history_bytes as f64 / 1024.0
            ))
            .unwrap_or_default()
    ));
    doc.rows.push(before);
    doc.rows.push(storm);
    doc.rows.push(after);
    doc.rows.push(whole.clone());
    finish(c, doc)?;

    if !alive {
        return err("herald died during the run (see its log under the results dir)");
    }
    if c.strict {
        if gaps > 0 || dups > 0 || behind > 0 {
            return err(format!(
                "recover: {gaps} seq gaps, {dups} duplicates or out of order, {behind} clients \
                 short of the last message"
            ));
        }
        if not_recovered > 0 || no_position > 0 || gave_up > 0 || timed_out {
            return err(format!(
                "recover: {not_recovered} recovered:false, {no_position} without a position, \
                 {gave_up} gave up{}",
                if timed_out {
                    "; the storm did not end in time"
                } else {
                    ""
                }
            ));
        }
        if whole.delivered < whole.expected {
            return err(format!(
                "recover: delivered {} of {}",
                whole.delivered, whole.expected
            ));
        }
    }
    Ok(())
}
