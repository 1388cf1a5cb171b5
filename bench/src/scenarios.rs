//! The benchmark scenarios, one subcommand each: fan-out, saturation, targeted
//! delivery, ingest, join storm, idle memory, churn, slow consumers and producer
//! control (Herald only). Each runs every requested target (floor, naive, Herald)
//! in turn on the same machine, in one command, and records the rows and the
//! comparisons against the targets.

use crate::control::ControlStream;
use crate::plot;
use crate::pool::{MAX_PER_WORKER, Pool, Ready, Report, Spec};
use crate::producer::{Producer, Topics};
use crate::report::{Row, RunDoc};
use crate::secure::{Auth, History, Material};
use crate::servers::{Server, Target};
use crate::util::{BenchError, Lat, Result, err, now_ns, self_cpu_s};
use crate::worker::Mode;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Systems to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "floor,naive,herald")]
    pub(crate) targets: Vec<Target>,
    /// Herald's binary.
    #[arg(long, env = "HERALD_BIN", default_value = "target/release/herald")]
    pub(crate) herald_bin: PathBuf,
    /// An extra flag for Herald (repeatable), e.g. --herald-arg=--queue-max-messages=4096.
    #[arg(long = "herald-arg", allow_hyphen_values = true)]
    pub(crate) herald_args: Vec<String>,
    /// Where result JSON files (and server logs) go.
    #[arg(long, default_value = "bench/results")]
    pub(crate) out_dir: PathBuf,
    /// Append a markdown section with the results to this file.
    #[arg(long)]
    pub(crate) markdown: Option<PathBuf>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// Most connections per worker process.
    #[arg(long, default_value_t = MAX_PER_WORKER)]
    pub(crate) per_worker: u64,
    /// Connects in flight per worker process.
    #[arg(long, default_value_t = 128)]
    pub(crate) concurrency: usize,
    /// Milliseconds to watch the machine's CPU use before each target starts.
    #[arg(long, default_value_t = 1000)]
    pub(crate) busy_probe_ms: u64,
    /// Fail (exit non-zero) when a delivery is missing or a connection fails.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Herald only: clients authenticate with connection tokens of this kind
    /// (`?token=`), and topic rules are on.
    #[arg(long, value_enum, default_value_t = Auth::None)]
    pub(crate) auth: Auth,
    /// Herald only: serve and connect over `wss://` (a CA made for the run).
    #[arg(long)]
    pub(crate) tls: bool,
    /// Herald only: the topic `bench` keeps this many messages of history (a
    /// `[[topics]]` rule with `history_size`, in the run's config file).
    #[arg(long)]
    pub(crate) history_size: Option<usize>,
    /// Herald only, with --history-size: how long each kept message stays.
    #[arg(long, default_value = "2m")]
    pub(crate) history_ttl: String,
}

impl Common {
    /// The history for `bench` asked for with --history-size.
    pub(crate) fn history(&self) -> Option<History> {
        self.history_size.map(|size| History {
            size,
            ttl: self.history_ttl.clone(),
        })
    }
}

struct Setup {
    server: Server,
    /// Worker arguments for tokens and TLS (empty when both are off).
    worker_args: Vec<String>,
    pool: Pool,
    producer: Option<Producer>,
    ready: Ready,
    t_spawn_ns: u64,
}

impl Setup {
    async fn start(
        c: &Common,
        target: Target,
        conns: u64,
        topics: &[&str],
        user_topics: bool,
    ) -> Result<Setup> {
        Self::start_with(c, target, conns, topics, user_topics, false).await
    }

    /// Like `start`; with `user_ids` each connection connects as user `u<index>`.
    async fn start_with(
        c: &Common,
        target: Target,
        conns: u64,
        topics: &[&str],
        user_topics: bool,
        user_ids: bool,
    ) -> Result<Setup> {
        note_busy(format!("{} C={conns}", target.name()), c.busy_probe_ms).await;
        let secure = if target == Target::Herald {
            Material::prepare(
                &c.out_dir.join("secure"),
                c.auth,
                c.tls,
                c.history().as_ref(),
            )?
        } else {
            Material::default()
        };
        let herald_args: Vec<String> = c
            .herald_args
            .iter()
            .chain(&secure.herald_args)
            .cloned()
            .collect();
        let server =
            Server::start(target, &c.herald_bin, &herald_args, &c.out_dir.join("logs")).await?;
        let producer = match server.grpc_addr {
            Some(a) => Some(Producer::connect(a).await?),
            None => None,
        };
        let mode = if target == Target::Floor {
            Mode::Tcp
        } else {
            Mode::Ws
        };
        let mut spec = Spec::readers(mode, server.ws_addr, conns, topics);
        spec.user_topics = user_topics;
        spec.user_ids = user_ids;
        spec.concurrency = c.concurrency;
        spec.per_worker = c.per_worker;
        spec.extra_args = secure.worker_args.clone();
        let t_spawn_ns = now_ns();
        let mut pool = Pool::spawn(&spec)?;
        let ready = pool.ready(Duration::from_secs(300)).await?;
        let mut server = server;
        if target == Target::Floor {
            server.floor_wait_conns(ready.connected).await?;
        }
        eprintln!(
            "[{}] {} connected, {} failed in {:.2} s",
            target.name(),
            ready.connected,
            ready.failed,
            ready.t_last_ns.saturating_sub(t_spawn_ns) as f64 / 1e9
        );
        if ready.failed > 0 {
            eprintln!("[{}] connect errors: {:?}", target.name(), ready.errors);
            if c.strict {
                pool.quit().await;
                server.stop().await;
                return err(format!(
                    "{}: {} connections failed",
                    target.name(),
                    ready.failed
                ));
            }
        }
        Ok(Setup {
            server,
            worker_args: secure.worker_args,
            pool,
            producer,
            ready,
            t_spawn_ns,
        })
    }

    fn producer(&self) -> Result<&Producer> {
        self.producer
            .as_ref()
            .ok_or_else(|| BenchError::Msg("this target has no producer API".into()))
    }

    async fn stop(mut self) -> Result<()> {
        let alive = self.server.alive();
        self.pool.quit().await;
        let name = self.server.target.name();
        self.server.stop().await;
        if !alive {
            return err(format!(
                "{name} died during the run (see its log under the results dir)"
            ));
        }
        Ok(())
    }

    /// Publishes at `rate` for `duration` s (floor: writes rounds), waits for the
    /// deliveries and measures them. `per_msg` is the deliveries each message makes.
    async fn measure(
        &mut self,
        topics: Topics,
        rate: f64,
        duration: f64,
        payload: usize,
        per_msg: u64,
        drain: f64,
    ) -> Result<Row> {
        let base = self.pool.report().await?;
        let cpu0 = self.server.cpu_s();
        let pcpu0 = self_cpu_s();
        let mut extra = serde_json::Map::new();
        let mut note = Vec::new();
        let published = if self.server.target == Target::Floor {
            let v = self.server.floor_publish(rate, duration, payload).await?;
            for k in [
                "cpu_us_per_write",
                "round_p50_ms",
                "round_p99_ms",
                "round_max_ms",
                "writes",
                "failed",
            ] {
                extra.insert(k.into(), v[k].clone());
            }
            note.push(format!(
                "{:.2} µs CPU/write, round p50 {:.2} ms max {:.2} ms",
                v["cpu_us_per_write"].as_f64().unwrap_or(0.0),
                v["round_p50_ms"].as_f64().unwrap_or(0.0),
                v["round_max_ms"].as_f64().unwrap_or(0.0)
            ));
            v["rounds"].as_u64().unwrap_or(0)
        } else {
            let st = self
                .producer()?
                .stream(topics, rate, duration, payload, 0)
                .await?;
            if st.errors > 0 || st.first_error.is_some() {
                note.push(format!(
                    "publish errors: {} ({:?})",
                    st.errors, st.first_error
                ));
            }
            st.acked
        };
        let per = if per_msg == 0 {
            self.ready.connected
        } else {
            per_msg
        };
        let expected = published * per;
        self.pool
            .drain(expected, Duration::from_secs_f64(drain))
            .await?;
        let cpu1 = self.server.cpu_s();
        let rep = self.pool.report().await?;
        extra.insert("producer_cpu_s".into(), json!(self_cpu_s() - pcpu0));
        Ok(self.row(
            rate,
            duration,
            published,
            expected,
            &base,
            rep,
            cpu1 - cpu0,
            extra,
            note,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        rate: f64,
        duration: f64,
        published: u64,
        expected: u64,
        base: &Report,
        rep: Report,
        engine_cpu_s: f64,
        mut extra: serde_json::Map<String, Value>,
        mut note: Vec<String>,
    ) -> Row {
        if !rep.close_codes.is_empty() {
            note.push(format!("closed by server: {:?}", rep.close_codes));
        }
        let gaps = rep.seq_gaps.saturating_sub(base.seq_gaps);
        let reorders = rep.seq_reorders.saturating_sub(base.seq_reorders);
        if gaps > 0 || reorders > 0 {
            note.push(format!(
                "seq order broken: {gaps} skipped, {reorders} out of order"
            ));
        }
        extra.insert("seq_gaps".into(), json!(gaps));
        extra.insert("seq_reorders".into(), json!(reorders));
        if !rep.errors.is_empty() {
            extra.insert("client_errors".into(), json!(rep.errors));
        }
        let (_, hwm) = self.server.rss();
        let mut r = Row {
            target: self.server.target.name().into(),
            conns: self.ready.connected,
            rate_hz: rate,
            duration_s: duration,
            published,
            expected,
            delivered: rep.received,
            lat: Lat::of(&rep.hist),
            engine_cpu_s,
            peak_rss_mib: hwm as f64 / 1024.0,
            gen_cpu_s: rep.cpu_s - base.cpu_s,
            note: note.join("; "),
            extra,
            ..Row::default()
        };
        r.finish();
        r
    }
}

fn check_complete(c: &Common, r: &Row) -> Result<()> {
    let get = |k: &str| r.extra.get(k).and_then(Value::as_u64).unwrap_or(0);
    if c.strict && (get("seq_gaps") > 0 || get("seq_reorders") > 0) {
        return err(format!(
            "{} {}: per-connection seq order broken: {} skipped, {} out of order",
            r.target,
            r.phase,
            get("seq_gaps"),
            get("seq_reorders")
        ));
    }
    if c.strict && r.delivered < r.expected {
        return err(format!(
            "{} {}: delivered {} of {} ({:.4}%)",
            r.target,
            r.phase,
            r.delivered,
            r.expected,
            r.delivered_frac * 100.0
        ));
    }
    Ok(())
}

/// Other CPU use measured before each target started, for the run's record.
static BUSY: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

/// Measures and records other CPU use for `ms` milliseconds before `what` starts.
pub(crate) async fn note_busy(what: String, ms: u64) -> f64 {
    let busy = tokio::task::spawn_blocking(move || crate::util::cpu_busy_pct(ms))
        .await
        .unwrap_or(0.0);
    eprintln!("[{what}] other CPU use before start: {busy:.0}%");
    if let Ok(mut g) = BUSY.lock() {
        g.push((what, busy));
    }
    busy
}

pub(crate) fn finish(c: &Common, mut doc: RunDoc) -> Result<()> {
    doc.busy_before_pct = BUSY.lock().map(|g| g.clone()).unwrap_or_default();
    let path = doc.save(&c.out_dir, c.markdown.as_deref())?;
    println!("{}", doc.markdown());
    eprintln!("results: {}", path.display());
    Ok(())
}

fn find<'a>(doc: &'a RunDoc, target: &str, phase: &str, conns: u64) -> Option<&'a Row> {
    doc.rows
        .iter()
        .find(|r| r.target == target && r.phase == phase && (conns == 0 || r.conns == conns))
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

// ---------------------------------------------------------------------------

/// `fanout`: C connections on one topic, R Hz for D s.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connection counts, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,19000")]
    pub(crate) conns: Vec<u64>,
    /// Publish rates (Hz) matching --conns (the last one repeats).
    #[arg(long, value_delimiter = ',', default_value = "10,10,2")]
    pub(crate) rates: Vec<f64>,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Most seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) drain: f64,
    /// Runs per connection count and target; the table shows the median by p99.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: u32,
    /// Draw latency against connection count into this PNG.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
}

/// Runs `fanout`.
pub(crate) async fn fanout(a: FanoutArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("fanout");
    for (i, &conns) in a.conns.iter().enumerate() {
        let rate = a.rates.get(i).or(a.rates.last()).copied().unwrap_or(10.0);
        let mut runs: Vec<(Target, Vec<Row>)> =
            c.targets.iter().map(|t| (*t, Vec::new())).collect();
        // Repetitions interleave the targets so that drifting load hits them alike.
        for rep in 0..a.repeat.max(1) {
            for (t, rows) in runs.iter_mut() {
                let mut s = Setup::start(c, *t, conns, &["bench"], false).await?;
                let mut row = s
                    .measure(
                        Topics::One("bench".into()),
                        rate,
                        a.duration,
                        c.payload,
                        0,
                        a.drain,
                    )
                    .await?;
                row.phase = format!("fanout run {}", rep + 1);
                row.detail = true;
                let security = security_note(c, *t);
                if !security.is_empty() {
                    row.note = format!("{}{security}", row.note)
                        .trim_start_matches("; ")
                        .to_owned();
                }
                s.stop().await?;
                eprintln!(
                    "[{}] C={conns} run {}: {:.4}% delivered, p50 {:.2} ms, p99 {:.2} ms, {:.2} µs CPU/delivery",
                    t.name(),
                    rep + 1,
                    row.delivered_frac * 100.0,
                    row.lat.p50_ms,
                    row.lat.p99_ms,
                    row.cpu_s_per_m
                );
                check_complete(c, &row)?;
                doc.rows.push(row.clone());
                rows.push(row);
            }
        }
        for (_, mut rows) in runs {
            if rows.is_empty() {
                continue;
            }
            rows.sort_by(|x, y| x.lat.p99_ms.total_cmp(&y.lat.p99_ms));
            let n = rows.len();
            let mut m = rows[(n - 1) / 2].clone();
            m.phase = "fanout".into();
            m.detail = false;
            if n > 1 {
                let cpu: Vec<f64> = rows.iter().map(|r| r.cpu_s_per_m).collect();
                let (lo, hi) = (
                    cpu.iter().copied().fold(f64::MAX, f64::min),
                    cpu.iter().copied().fold(0.0, f64::max),
                );
                let note = format!(
                    "median of {n} runs by p99 (p99 {:.2}–{:.2} ms, CPU {lo:.2}–{hi:.2} µs/delivery)",
                    rows[0].lat.p99_ms,
                    rows[n - 1].lat.p99_ms
                );
                m.note = if m.note.is_empty() {
                    note
                } else {
                    format!("{note}; {}", m.note)
                };
            }
            doc.rows.push(m);
        }
        fanout_summary(&mut doc, conns);
    }
    if let Some(p) = &a.plot {
        plot::latency_vs_connections(&doc.rows, p)?;
        eprintln!("plot: {}", p.display());
    }
    finish(c, doc)
}

fn fanout_summary(doc: &mut RunDoc, conns: u64) {
    let floor = find(doc, "floor", "fanout", conns).cloned();
    let naive = find(doc, "naive", "fanout", conns).cloned();
    let Some(h) = find(doc, "herald", "fanout", conns).cloned() else {
        return;
    };
    let mut l = format!(
        "C={}: Herald delivered {:.4}%, p99 {:.2} ms, {:.2} µs CPU per delivery",
        h.conns,
        h.delivered_frac * 100.0,
        h.lat.p99_ms,
        h.cpu_s_per_m
    );
    if let Some(f) = &floor {
        let round = f
            .extra
            .get("round_p50_ms")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let wr = f
            .extra
            .get("cpu_us_per_write")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        l.push_str(&format!(
            "; CPU = {} the floor's {:.2} µs/write (target ≤ 1.3×); p99 = {} the floor's {:.2} ms round time (target ≤ 1.5×)",
            ratio(h.cpu_s_per_m, wr),
            wr,
            ratio(h.lat.p99_ms, round),
            round
        ));
    }
    if let Some(n) = &naive {
        l.push_str(&format!(
            "; against naive: CPU {}, p99 {} (target ≤ 1×)",
            ratio(h.cpu_s_per_m, n.cpu_s_per_m),
            ratio(h.lat.p99_ms, n.lat.p99_ms)
        ));
    }
    doc.summary.push(l);
}

// ---------------------------------------------------------------------------

/// `saturate`: raise the publish rate step by step until deliveries stop being
/// complete or p99 passes the limit.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SaturateArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "5000,19000")]
    pub(crate) conns: Vec<u64>,
    /// Deliveries per second of the first step.
    #[arg(long, default_value_t = 20_000.0)]
    pub(crate) start_deliveries: f64,
    /// Rate factor between steps.
    #[arg(long, default_value_t = 1.25)]
    pub(crate) factor: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) step_duration: f64,
    /// Most steps.
    #[arg(long, default_value_t = 20)]
    pub(crate) max_steps: u32,
    /// p99 limit in ms for a step to pass.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) p99_limit_ms: f64,
    /// Keep stepping while delivery is complete and p99 stays under this (ms), to
    /// find the throughput limit even where one round alone exceeds the p99 limit.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) p99_stop_ms: f64,
}

/// Runs `saturate`.
pub(crate) async fn saturate(a: SaturateArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("saturate");
    for &conns in &a.conns {
        // Per target: (name, best with p99 within the limit, best complete at all).
        let mut best: Vec<(String, f64, f64)> = Vec::new();
        for &t in &c.targets {
            let mut s = Setup::start(c, t, conns, &["bench"], false).await?;
            let mut rate = a.start_deliveries / conns.max(1) as f64;
            let mut best_limit: Option<Row> = None;
            let mut best_complete: Option<Row> = None;
            let mut failing: Option<Row> = None;
            for step in 0..a.max_steps {
                let mut row = s
                    .measure(
                        Topics::One("bench".into()),
                        rate,
                        a.step_duration,
                        c.payload,
                        0,
                        5.0,
                    )
                    .await?;
                // The publisher must also have kept the rate (within 2%): a writer
                // or producer that falls behind publishes fewer, later messages.
                let kept_rate = row.published as f64 >= 0.98 * rate * a.step_duration;
                let complete = row.expected > 0
                    && kept_rate
                    && row.delivered >= row.expected
                    && row.lat.p99_ms <= a.p99_stop_ms
                    && s.server.alive();
                let within = complete && row.lat.p99_ms <= a.p99_limit_ms;
                row.phase = format!(
                    "step {step}: {}",
                    if within {
                        "pass"
                    } else if complete {
                        "complete, p99 over the limit"
                    } else {
                        "FAIL"
                    }
                );
                if !kept_rate {
                    row.note = format!(
                        "published {} of {:.0} due{}{}",
                        row.published,
                        rate * a.step_duration,
                        if row.note.is_empty() { "" } else { "; " },
                        row.note
                    );
                }
                row.detail = true;
                eprintln!(
                    "[{}] C={conns} rate {rate:.2} Hz ({} published): {:.0} deliveries/s, {:.4}% delivered, p99 {:.1} ms -> {}",
                    t.name(),
                    row.published,
                    row.deliveries_per_s,
                    row.delivered_frac * 100.0,
                    row.lat.p99_ms,
                    row.phase
                );
                doc.rows.push(row.clone());
                if within {
                    best_limit = Some(row.clone());
                }
                if !complete {
                    failing = Some(row);
                    break;
                }
                best_complete = Some(row);
                rate *= a.factor;
            }
            s.stop().await?;
            let dps = |r: &Option<Row>| r.as_ref().map(|r| r.deliveries_per_s).unwrap_or(0.0);
            best.push((t.name().into(), dps(&best_limit), dps(&best_complete)));
            for (r, phase) in [
                (
                    best_limit,
                    format!("highest step with p99 ≤ {} ms", a.p99_limit_ms),
                ),
                (best_complete, "highest complete step".to_string()),
                (failing, "first failing step".to_string()),
            ] {
                if let Some(mut r) = r {
                    r.detail = false;
                    r.phase = phase;
                    doc.rows.push(r);
                }
            }
        }
        let get = |n: &str| {
            best.iter()
                .find(|(t, _, _)| t == n)
                .map(|(_, l, c)| (*l, *c))
        };
        let mut l = format!(
            "C={conns}: highest deliveries/s with 100% delivered and p99 ≤ {} ms (in brackets: 100% delivered, the rate kept, any p99 up to {} ms):",
            a.p99_limit_ms, a.p99_stop_ms
        );
        for (t, lim, comp) in &best {
            l.push_str(&format!(" {t} {lim:.0} ({comp:.0});"));
        }
        if let (Some(h), Some(f)) = (get("herald"), get("floor")) {
            l.push_str(&format!(
                " Herald = {} ({}) the floor (target ≥ 0.80×)",
                ratio(h.0, f.0),
                ratio(h.1, f.1)
            ));
        }
        doc.summary.push(l);
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// `targeted`: each connection on its own `user:N` topic plus one shared topic;
/// messages go to random users.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TargetedArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections.
    #[arg(long, default_value_t = 5000)]
    pub(crate) conns: u64,
    /// Messages per second (each to one random user).
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
}

/// Runs `targeted`.
pub(crate) async fn targeted(a: TargetedArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("targeted");
    for &t in c.targets.iter().filter(|t| **t != Target::Floor) {
        let mut s = Setup::start(c, t, a.conns, &["bench:shared"], true).await?;
        let mut row = s
            .measure(
                Topics::RandomUser(a.conns),
                a.rate,
                a.duration,
                c.payload,
                1,
                10.0,
            )
            .await?;
        row.phase = "targeted".into();
        s.stop().await?;
        check_complete(c, &row)?;
        doc.rows.push(row);
    }
    if let (Some(h), Some(n)) = (
        find(&doc, "herald", "targeted", 0),
        find(&doc, "naive", "targeted", 0),
    ) {
        doc.summary.push(format!(
            "Herald {:.2} µs CPU per delivery, p99 {:.2} ms; naive {:.2} µs, p99 {:.2} ms (the naive broadcaster walks every connection on each publish)",
            h.cpu_s_per_m, h.lat.p99_ms, n.cpu_s_per_m, n.lat.p99_ms
        ));
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// `ingest`: acked messages/s through PublishStream and calls/s through unary
/// Publish, to a topic with one subscriber.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IngestArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Unacknowledged messages allowed on the stream.
    #[arg(long, default_value_t = 2000)]
    pub(crate) window: usize,
    /// Concurrent unary calls.
    #[arg(long, default_value_t = 64)]
    pub(crate) unary_concurrency: usize,
}

/// Runs `ingest`.
pub(crate) async fn ingest(a: IngestArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("ingest");
    for &t in c.targets.iter().filter(|t| **t != Target::Floor) {
        for phase in ["stream", "unary"] {
            // A fresh engine and subscriber per phase: a subscriber closed as a slow
            // consumer in the first phase must not hide the second one's deliveries.
            let mut s = Setup::start(c, t, 1, &["bench:ingest"], false).await?;
            let base = s.pool.report().await?;
            let cpu0 = s.server.cpu_s();
            let p = s.producer()?.clone();
            let st = if phase == "stream" {
                p.stream(
                    Topics::One("bench:ingest".into()),
                    0.0,
                    a.duration,
                    c.payload,
                    a.window,
                )
                .await?
            } else {
                p.unary("bench:ingest", a.duration, c.payload, a.unary_concurrency)
                    .await
            };
            s.pool.drain(st.acked, Duration::from_secs(10)).await?;
            let cpu1 = s.server.cpu_s();
            let rep = s.pool.report().await?;
            let per_s = st.acked as f64 / st.elapsed_s.max(1e-9);
            let mut extra = serde_json::Map::new();
            extra.insert("acked_per_s".into(), json!(per_s));
            extra.insert("publish".into(), json!(st));
            let mut note = vec![format!("{per_s:.0} acked/s ({phase})")];
            if st.errors > 0 {
                note.push(format!("{} errors: {:?}", st.errors, st.first_error));
            }
            let mut row = s.row(
                per_s,
                st.elapsed_s,
                st.acked,
                st.acked,
                &base,
                rep,
                cpu1 - cpu0,
                extra,
                note,
            );
            row.phase = phase.into();
            doc.rows.push(row);
            s.stop().await?;
        }
    }
    for (t, target) in [("stream", 200_000.0), ("unary", 20_000.0)] {
        if let Some(h) = find(&doc, "herald", t, 0) {
            let naive = find(&doc, "naive", t, 0)
                .map(|n| format!(", naive {:.0}/s", n.rate_hz))
                .unwrap_or_default();
            doc.summary.push(format!(
                "{t}: Herald {:.0}/s (target ≥ {target:.0}/s){naive}; its subscriber got {:.4}%{}",
                h.rate_hz,
                h.delivered_frac * 100.0,
                if h.note.contains("4001") {
                    " (closed as a slow consumer, 4001)"
                } else {
                    ""
                }
            ));
        }
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// `join`: time for C clients to connect and subscribe to one topic.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct JoinArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,19000")]
    pub(crate) conns: Vec<u64>,
}

/// Runs `join`.
pub(crate) async fn join(a: JoinArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("join");
    for &conns in &a.conns {
        for &t in &c.targets {
            let s = Setup::start(c, t, conns, &["bench"], false).await?;
            let join_s = s.ready.t_last_ns.saturating_sub(s.t_spawn_ns) as f64 / 1e9;
            // From the first connect on: without worker start-up or token minting.
            let connect_s = s.ready.t_last_ns.saturating_sub(s.ready.t_first_ns) as f64 / 1e9;
            let engine_cpu_us_per_conn = s.server.cpu_s() * 1e6 / s.ready.connected.max(1) as f64;
            let (_, hwm) = s.server.rss();
            let mut row = Row {
                target: t.name().into(),
                phase: "join".into(),
                conns: s.ready.connected,
                duration_s: join_s,
                engine_cpu_s: s.server.cpu_s(),
                peak_rss_mib: hwm as f64 / 1024.0,
                gen_cpu_s: s.ready.cpu_s,
                note: format!(
                    "{join_s:.3} s to connect{} ({connect_s:.3} s from the first connect); \
                     {:.0} joins/s; {engine_cpu_us_per_conn:.0} µs engine CPU per connection; \
                     {} failed{}",
                    if t == Target::Floor {
                        ""
                    } else {
                        " and subscribe"
                    },
                    s.ready.connected as f64 / join_s.max(1e-9),
                    s.ready.failed,
                    security_note(c, t),
                ),
                ..Row::default()
            };
            row.extra.insert("join_s".into(), json!(join_s));
            row.extra.insert("connect_s".into(), json!(connect_s));
            row.extra.insert(
                "engine_cpu_us_per_conn".into(),
                json!(engine_cpu_us_per_conn),
            );
            row.extra.insert("failed".into(), json!(s.ready.failed));
            row.extra.insert("errors".into(), json!(s.ready.errors));
            s.stop().await?;
            if c.strict && row.conns < conns {
                return err(format!(
                    "{}: only {} of {conns} joined",
                    t.name(),
                    row.conns
                ));
            }
            doc.rows.push(row);
        }
    }
    for &t in &c.targets {
        let pts: Vec<(u64, f64)> = doc
            .rows
            .iter()
            .filter(|r| r.target == t.name())
            .map(|r| (r.conns, r.duration_s))
            .collect();
        if let Some(&(c0, s0)) = pts.first() {
            let per0 = s0 / c0.max(1) as f64;
            let growth: Vec<String> = pts
                .iter()
                .map(|&(cn, sn)| {
                    format!(
                        "C={cn}: {sn:.2} s ({:.2}× per connection)",
                        (sn / cn.max(1) as f64) / per0.max(1e-12)
                    )
                })
                .collect();
            doc.summary.push(format!(
                "{}: {} (near-linear = about 1×; Herald target at 19k ≤ 3 s)",
                t.name(),
                growth.join(", ")
            ));
        }
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// `idle`: engine RSS per idle subscribed connection.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections.
    #[arg(long, default_value_t = 19_000)]
    pub(crate) conns: u64,
    /// Seconds to wait after the last subscribe before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle: f64,
}

/// Runs `idle`.
pub(crate) async fn idle(a: IdleArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("idle");
    for &t in c.targets.iter().filter(|t| **t != Target::Floor) {
        note_busy(format!("{} C={}", t.name(), a.conns), c.busy_probe_ms).await;
        // Start the server alone first to read its baseline.
        let server =
            Server::start(t, &c.herald_bin, &c.herald_args, &c.out_dir.join("logs")).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss0, _) = server.rss();
        let mut spec = Spec::readers(Mode::Ws, server.ws_addr, a.conns, &["bench"]);
        spec.concurrency = c.concurrency;
        spec.per_worker = c.per_worker;
        let mut pool = Pool::spawn(&spec)?;
        let ready = pool.ready(Duration::from_secs(300)).await?;
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        let (rss1, hwm) = server.rss();
        let per_conn = (rss1.saturating_sub(rss0) * 1024) as f64 / ready.connected.max(1) as f64;
        let mut row = Row {
            target: t.name().into(),
            phase: "idle".into(),
            conns: ready.connected,
            peak_rss_mib: hwm as f64 / 1024.0,
            gen_cpu_s: ready.cpu_s,
            note: format!(
                "RSS {:.1} MiB → {:.1} MiB: {:.0} bytes ({:.2} KiB) per connection",
                rss0 as f64 / 1024.0,
                rss1 as f64 / 1024.0,
                per_conn,
                per_conn / 1024.0
            ),
            ..Row::default()
        };
        row.extra.insert("rss_before_kib".into(), json!(rss0));
        row.extra.insert("rss_after_kib".into(), json!(rss1));
        row.extra.insert("bytes_per_conn".into(), json!(per_conn));
        let s = Setup {
            server,
            worker_args: Vec::new(),
            pool,
            producer: None,
            ready,
            t_spawn_ns: 0,
        };
        s.stop().await?;
        doc.summary.push(format!(
            "{}: {:.2} KiB RSS per idle subscribed connection at C={} (Herald target ≤ 8 KiB)",
            t.name(),
            per_conn / 1024.0,
            row.conns
        ));
        doc.rows.push(row);
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------
// Shared by `churn` and `slow`: a steady phase of fan-out on `bench`, then the
// same fan-out again while a second pool of clients disturbs the target.

/// The targets `churn` and `slow` measure: all requested but the floor.
fn measured_targets(c: &Common) -> impl Iterator<Item = Target> + '_ {
    c.targets.iter().copied().filter(|t| *t != Target::Floor)
}

impl Setup {
    /// One phase of fan-out on `bench` to every connection, 10 s to drain.
    async fn measure_bench(&mut self, rate: f64, duration: f64, payload: usize) -> Result<Row> {
        self.measure(
            Topics::One("bench".into()),
            rate,
            duration,
            payload,
            0,
            10.0,
        )
        .await
    }
}

/// Starts `target` with `conns` connections on `bench` and measures the
/// undisturbed phase, `steady`.
async fn start_steady(
    c: &Common,
    target: Target,
    conns: u64,
    rate: f64,
    duration: f64,
) -> Result<(Setup, Row)> {
    let mut s = Setup::start(c, target, conns, &["bench"], false).await?;
    let mut steady = s.measure_bench(rate, duration, c.payload).await?;
    steady.phase = "steady".into();
    Ok((s, steady))
}

/// The second pool of clients (churning or slow) against the target `s` runs.
fn side_spec(
    c: &Common,
    s: &Setup,
    mode: Mode,
    conns: u64,
    topics: &[&str],
    churn: Option<(f64, f64)>,
) -> Spec {
    Spec {
        mode,
        target: s.server.ws_addr,
        conns,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        user_topics: false,
        user_ids: false,
        churn,
        concurrency: c.concurrency,
        per_worker: c.per_worker,
        extra_args: s.worker_args.clone(),
    }
}

/// `; HS256 tokens, wss://, history 100 / 2m on bench` for a Herald run with
/// authentication, TLS or history on.
pub(crate) fn security_note(c: &Common, t: Target) -> String {
    if t != Target::Herald || (c.auth == Auth::None && !c.tls && c.history_size.is_none()) {
        return String::new();
    }
    let mut parts = Vec::new();
    match c.auth {
        Auth::None => {}
        Auth::Hs256 => parts.push("HS256 tokens".to_owned()),
        Auth::Es256 => parts.push("ES256 tokens".to_owned()),
    }
    if c.tls {
        parts.push("wss://".to_owned());
    }
    if let Some(h) = c.history() {
        parts.push(format!("history {} / {} on bench", h.size, h.ttl));
    }
    format!("; {}", parts.join(", "))
}

/// Puts `own` before what `measure` noted in `row`, joined by "; ".
fn prepend_note(row: &mut Row, own: String) {
    row.note = if row.note.is_empty() {
        own
    } else {
        format!("{own}; {}", row.note)
    };
}

/// "p99 of the steady phase, p99 with `what` = their ratio" for the summary.
fn steady_vs_with(steady: &Row, with: &Row, what: &str) -> String {
    format!(
        "{:.2} ms steady, {:.2} ms with {what} = {}",
        steady.lat.p99_ms,
        with.lat.p99_ms,
        ratio(with.lat.p99_ms, steady.lat.p99_ms)
    )
}

/// Stops the target and checks both phases' deliveries (under `--strict`).
async fn stop_and_check(c: &Common, s: Setup, steady: &Row, with: &Row) -> Result<()> {
    s.stop().await?;
    check_complete(c, steady)?;
    check_complete(c, with)
}

// ---------------------------------------------------------------------------

/// `churn`: fan-out while other clients connect, subscribe and disconnect.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Steady subscribed connections.
    #[arg(long, default_value_t = 5000)]
    pub(crate) conns: u64,
    /// Publish rate, Hz.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Churning clients per second.
    #[arg(long, default_value_t = 500.0)]
    pub(crate) churn_rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
}

/// Runs `churn`.
pub(crate) async fn churn(a: ChurnArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("churn");
    for t in measured_targets(c) {
        let (mut s, steady) = start_steady(c, t, a.conns, a.rate, a.duration).await?;
        let spec = side_spec(
            c,
            &s,
            Mode::Churn,
            0,
            &["bench"],
            Some((a.churn_rate, a.duration)),
        );
        let mut churners = Pool::spawn(&spec)?;
        churners.ready(Duration::from_secs(30)).await?;
        churners.start().await?;
        let mut with = s.measure_bench(a.rate, a.duration, c.payload).await?;
        with.phase = format!("with {} joins/s", a.churn_rate);
        let done = churners
            .churn_done(Duration::from_secs_f64(a.duration + 120.0))
            .await?;
        churners.quit().await;
        let cycles: u64 = done.iter().map(|v| v["cycles"].as_u64().unwrap_or(0)).sum();
        let failed: u64 = done.iter().map(|v| v["failed"].as_u64().unwrap_or(0)).sum();
        let mut h = crate::util::new_hist()?;
        for v in &done {
            let d: crate::util::HistDump = serde_json::from_value(v["cycle_hist"].clone())?;
            d.add_to(&mut h)?;
        }
        let cyc = Lat::of(&h);
        let churn_cpu: f64 = done
            .iter()
            .map(|v| v["cpu_s"].as_f64().unwrap_or(0.0))
            .sum();
        with.gen_cpu_s += churn_cpu;
        prepend_note(
            &mut with,
            format!(
                "{cycles} connect+subscribe+close cycles ({failed} failed), cycle p50 {:.1} ms p99 {:.1} ms",
                cyc.p50_ms, cyc.p99_ms
            ),
        );
        with.extra.insert("churn".into(), json!(done));
        stop_and_check(c, s, &steady, &with).await?;
        if c.strict && failed > 0 {
            return err(format!("{}: {failed} churn cycles failed", t.name()));
        }
        doc.summary.push(format!(
            "{}: p99 {} (Herald target ≤ 1.2×)",
            t.name(),
            steady_vs_with(&steady, &with, "churn")
        ));
        doc.rows.push(steady);
        doc.rows.push(with);
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// `slow`: fan-out plus clients that stop reading.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SlowArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Normal subscribed connections.
    #[arg(long, default_value_t = 5000)]
    pub(crate) conns: u64,
    /// Publish rate on the shared topic, Hz.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Clients that stop reading.
    #[arg(long, default_value_t = 20)]
    pub(crate) slow: u64,
    /// Payload of the bulk topic only the slow clients are on, bytes.
    #[arg(long, default_value_t = 16_384)]
    pub(crate) slow_payload: usize,
    /// Publish rate of the bulk topic, Hz.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) slow_rate: f64,
}

/// Runs `slow`.
pub(crate) async fn slow(a: SlowArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("slow");
    for t in measured_targets(c) {
        let (mut s, steady) = start_steady(c, t, a.conns, a.rate, a.duration).await?;
        let (rss_steady, _) = s.server.rss();
        let spec = side_spec(c, &s, Mode::Slow, a.slow, &["bench", "bench:bulk"], None);
        let mut slow_pool = Pool::spawn(&spec)?;
        slow_pool.ready(Duration::from_secs(60)).await?;
        let producer = s.producer()?.clone();
        let pid = s.server.pid;
        let bulk = producer.stream(
            Topics::One("bench:bulk".into()),
            a.slow_rate,
            a.duration,
            a.slow_payload,
            0,
        );
        let sampler = async {
            let mut samples = Vec::new();
            let t0 = tokio::time::Instant::now();
            while t0.elapsed().as_secs_f64() < a.duration + 2.0 {
                let (rss, _) = crate::util::rss_kib(pid).unwrap_or((0, 0));
                samples.push((t0.elapsed().as_secs_f64(), rss));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            samples
        };
        let main = s.measure_bench(a.rate, a.duration, c.payload);
        let (with, bulk, samples) = tokio::join!(main, bulk, sampler);
        let mut with = with?;
        let bulk = bulk?;
        let info = producer.info().await;
        slow_pool.quit().await;
        let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let last_rss = samples.last().map(|s| s.1).unwrap_or(0);
        with.phase = format!("with {} slow clients", a.slow);
        prepend_note(
            &mut with,
            format!(
                "RSS {:.1} MiB before, max {:.1} MiB, end {:.1} MiB; bulk {} msgs of {} B{}",
                rss_steady as f64 / 1024.0,
                max_rss as f64 / 1024.0,
                last_rss as f64 / 1024.0,
                bulk.acked,
                a.slow_payload,
                info.as_ref()
                    .map(|i| format!(
                        "; engine: {} slow disconnects, {} dropped",
                        i.slow_disconnects, i.messages_dropped
                    ))
                    .unwrap_or_default(),
            ),
        );
        with.extra.insert("rss_samples_kib".into(), json!(samples));
        with.extra.insert("bulk".into(), json!(bulk));
        stop_and_check(c, s, &steady, &with).await?;
        doc.summary.push(format!(
            "{}: others' p99 {} (Herald target < 1.10×); RSS max {:.1} MiB vs {:.1} MiB before",
            t.name(),
            steady_vs_with(&steady, &with, "slow clients"),
            max_rss as f64 / 1024.0,
            rss_steady as f64 / 1024.0
        ));
        doc.rows.push(steady);
        doc.rows.push(with);
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// `control`: C connections, each its own user `uN`; one Control stream moves the
/// users between R rooms (Subscribe to the next room, then Unsubscribe from the
/// previous one) as fast as a window of unanswered commands allows, for D s.
/// Herald only (the floor and the naive baseline have no Control API), so
/// `--targets` is ignored.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ControlArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections, each with its own user id `u<index>`.
    #[arg(long, default_value_t = 5000)]
    pub(crate) conns: u64,
    /// Rooms (`room:0`, `room:1`, …) the users move between.
    #[arg(long, default_value_t = 8)]
    pub(crate) rooms: u64,
    /// Seconds of commands.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Unanswered commands allowed on the stream.
    #[arg(long, default_value_t = 1000)]
    pub(crate) window: usize,
}

/// Runs `control`.
pub(crate) async fn control(a: ControlArgs) -> Result<()> {
    let c = &a.common;
    if a.rooms < 2 || a.conns == 0 {
        return err("control needs --rooms ≥ 2 and --conns ≥ 1");
    }
    if c.targets.iter().any(|t| *t != Target::Herald) {
        eprintln!("[control] measures Herald only (the others have no Control API)");
    }
    let mut doc = RunDoc::new("control");
    let t = Target::Herald;
    let mut s = Setup::start_with(c, t, a.conns, &[], false, true).await?;
    let room = |r: u64| format!("room:{r}");
    let uid = |u: u64| format!("u{u}");
    let mut ctl = ControlStream::open(s.producer()?.client(), a.window)?;

    // Warm-up, not measured: every user into room N mod R.
    let mut cur: Vec<u64> = (0..a.conns).map(|u| u % a.rooms).collect();
    for (u, r) in cur.iter().enumerate() {
        ctl.subscribe(&uid(u as u64), &room(*r)).await?;
    }
    ctl.settle(Duration::from_secs(60)).await?;
    let warm = ctl.counts();
    let warm_pushes = s
        .pool
        .drain_pushes(warm.sub_reached, Duration::from_secs(10))
        .await?;
    eprintln!(
        "[control] warm-up: {} subscribes answered, {} errors, {} connections reached, {warm_pushes} pushes seen",
        warm.answered, warm.errors, warm.sub_reached
    );
    let base = s.pool.report().await?;
    ctl.take_hist()?;

    // Measured: Subscribe(next room) then Unsubscribe(previous room), user after user.
    let cpu0 = s.server.cpu_s();
    let pcpu0 = self_cpu_s();
    let start = tokio::time::Instant::now();
    let mut k = 0usize;
    while start.elapsed().as_secs_f64() < a.duration {
        let u = k % cur.len();
        let Some(slot) = cur.get_mut(u) else { break };
        let old = *slot;
        let new = (old + 1) % a.rooms;
        *slot = new;
        let id = uid(u as u64);
        ctl.subscribe(&id, &room(new)).await?;
        ctl.unsubscribe(&id, &room(old)).await?;
        k += 1;
    }
    ctl.settle(Duration::from_secs(60)).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = s.server.cpu_s();
    let producer_cpu = self_cpu_s() - pcpu0;
    let run = ctl.counts().since(&warm);
    let hist = ctl.take_hist()?;
    let first_error = ctl.first_error();
    ctl.close().await?;
    let pushes_expected = run.sub_reached + run.unsub_reached;
    s.pool
        .drain_pushes(pushes_expected, Duration::from_secs(10))
        .await?;
    let rep = s.pool.report().await?;
    let pushes = rep.pushes;
    let per_s = run.answered as f64 / elapsed.max(1e-9);
    let engine_cpu = cpu1 - cpu0;
    let us_per_cmd = engine_cpu * 1e6 / run.answered.max(1) as f64;

    // End to end: one message per room must reach exactly the connections last
    // moved into it (each connection is in exactly one room now).
    let mut members = vec![0u64; a.rooms as usize];
    for &r in &cur {
        if let Some(m) = members.get_mut(r as usize) {
            *m += 1;
        }
    }
    let p = s.producer()?.clone();
    let mut mismatches = Vec::new();
    let mut got_total = 0u64;
    for (r, &want) in members.iter().enumerate() {
        let before = s.pool.count().await?;
        p.publish_one(&room(r as u64), c.payload).await?;
        s.pool.drain(before + want, Duration::from_secs(10)).await?;
        // A little longer, so that deliveries to connections not in the room show.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let got = s.pool.count().await?.saturating_sub(before);
        got_total += got;
        if got != want {
            mismatches.push(format!("room:{r} reached {got} of its {want}"));
        }
    }
    let check = s.pool.report().await?;
    let check_lat = Lat::of(&check.hist);
    let info = p.info().await;

    let mut note = vec![format!(
        "{per_s:.0} commands/s (msg/s column), latency = command send → answer; {us_per_cmd:.2} µs engine CPU per command (= ms per 1,000); {} errors; pushes {pushes} of {pushes_expected}; producer CPU {producer_cpu:.2} s",
        run.errors
    )];
    if let Some(e) = &first_error {
        note.push(format!("first error: {e}"));
    }
    if run.misordered > 0 {
        note.push(format!("{} answers out of order", run.misordered));
    }
    let mut extra = serde_json::Map::new();
    extra.insert("commands_per_s".into(), json!(per_s));
    extra.insert("counts".into(), json!(run));
    extra.insert("warmup".into(), json!(warm));
    extra.insert("window".into(), json!(a.window));
    extra.insert("rooms".into(), json!(a.rooms));
    extra.insert("engine_us_per_command".into(), json!(us_per_cmd));
    extra.insert("producer_cpu_s".into(), json!(producer_cpu));
    extra.insert("pushes_expected".into(), json!(pushes_expected));
    extra.insert("pushes_received".into(), json!(pushes));
    extra.insert(
        "check".into(),
        json!({
            "room_members": members,
            "delivered": got_total,
            "mismatches": mismatches,
            "latency": check_lat,
            "engine_subscriptions": info.as_ref().map(|i| i.subscriptions),
        }),
    );
    let mut row = s.row(
        per_s,
        elapsed,
        run.answered,
        pushes_expected,
        &base,
        rep,
        engine_cpu,
        extra,
        note,
    );
    row.phase = "control".into();
    row.delivered = pushes;
    row.lat = Lat::of(&hist);
    row.finish();
    s.stop().await?;

    let check_ok = mismatches.is_empty() && got_total == a.conns;
    doc.summary.push(format!(
        "herald: {per_s:.0} commands/s over one Control stream ({} answered in {elapsed:.2} s, window {}, {} users moving between {} rooms); send → answer p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} errors; engine {us_per_cmd:.2} ms CPU per 1,000 commands; generator CPU {:.2} s (workers) + {producer_cpu:.2} s (producer)",
        run.answered,
        a.window,
        row.conns,
        a.rooms,
        row.lat.p50_ms,
        row.lat.p99_ms,
        row.lat.max_ms,
        run.errors,
        row.gen_cpu_s
    ));
    doc.summary.push(format!(
        "effect: {pushes} of {pushes_expected} server-initiated subscribed/unsubscribed pushes arrived; then one message per room reached {got_total} connections for {} users, {} (p99 {:.2} ms){}",
        a.conns,
        if check_ok {
            "each room exactly the connections last moved into it".to_string()
        } else {
            format!("MISMATCH: {}", mismatches.join(", "))
        },
        check_lat.p99_ms,
        info.as_ref()
            .map(|i| format!("; engine reports {} subscriptions", i.subscriptions))
            .unwrap_or_default()
    ));
    doc.rows.push(row);
    if c.strict {
        if run.errors > 0 || warm.errors > 0 || run.misordered > 0 {
            return err(format!(
                "control: {} errors ({} in warm-up), {} out of order: {first_error:?}",
                run.errors, warm.errors, run.misordered
            ));
        }
        if pushes < pushes_expected {
            return err(format!(
                "control: {pushes} of {pushes_expected} pushes arrived"
            ));
        }
        if !check_ok {
            return err(format!(
                "control: end check failed: {got_total} of {} delivered; {}",
                a.conns,
                mismatches.join(", ")
            ));
        }
    }
    finish(c, doc)
}

// ---------------------------------------------------------------------------

/// One phase of publishing to `bench` at `rate` Hz for `duration` s with
/// `payload`-byte messages, measured at every reader (`presence`, `hostile`).
pub(crate) async fn measure_phase(
    server: &Server,
    producer: &Producer,
    pool: &mut Pool,
    connected: u64,
    (rate, duration, payload): (f64, f64, usize),
) -> Result<Row> {
    let base = pool.report().await?;
    let cpu0 = server.cpu_s();
    let pcpu0 = self_cpu_s();
    let st = producer
        .stream(Topics::One("bench".into()), rate, duration, payload, 0)
        .await?;
    let expected = st.acked * connected;
    pool.drain(expected, Duration::from_secs(10)).await?;
    let cpu1 = server.cpu_s();
    let rep: Report = pool.report().await?;
    let mut note = Vec::new();
    if st.errors > 0 {
        note.push(format!(
            "publish errors: {} ({:?})",
            st.errors, st.first_error
        ));
    }
    if !rep.close_codes.is_empty() {
        note.push(format!("closed by server: {:?}", rep.close_codes));
    }
    let gaps = rep.seq_gaps.saturating_sub(base.seq_gaps);
    let reorders = rep.seq_reorders.saturating_sub(base.seq_reorders);
    if gaps > 0 || reorders > 0 {
        note.push(format!(
            "seq order broken: {gaps} skipped, {reorders} out of order"
        ));
    }
    let mut extra = serde_json::Map::new();
    extra.insert("seq_gaps".into(), json!(gaps));
    extra.insert("seq_reorders".into(), json!(reorders));
    extra.insert("producer_cpu_s".into(), json!(self_cpu_s() - pcpu0));
    let (_, hwm) = server.rss();
    let mut row = Row {
        target: server.target.name().into(),
        conns: connected,
        rate_hz: rate,
        duration_s: duration,
        published: st.acked,
        expected,
        delivered: rep.received,
        lat: Lat::of(&rep.hist),
        engine_cpu_s: cpu1 - cpu0,
        peak_rss_mib: hwm as f64 / 1024.0,
        gen_cpu_s: rep.cpu_s - base.cpu_s,
        note: note.join("; "),
        extra,
        ..Row::default()
    };
    row.finish();
    Ok(row)
}
