//! `herald-bench cluster`: Herald as a cluster — N engine processes (`--nats-url`,
//! distinct ports, `--node-id node-<i>`) on one nats-server with JetStream — against
//! the same shape on one node without NATS. Owns the deployment of both shapes
//! (engines, nats-server, one pool of load-generator workers per node), the
//! round-robin publisher (one PublishStream per node, message k through node
//! k mod N), and the phases measured on each:
//!
//! - `fanout`: one topic, every connection subscribed, a fixed rate;
//! - `saturate`: the rate raised step by step until a step loses a delivery or its
//!   p99 passes the limit (the single-node runs repeat the cluster's rates);
//! - `ingest`: flat-out streaming publish through the first node, to a topic
//!   without subscribers and to one with subscribers on the other nodes (with
//!   `--history-size` both keep history, i.e. go through JetStream);
//! - `churn`: clients connect, subscribe to their own `user:N` topic and leave at a
//!   rate on the first node, counting the SUB/UNSUB the node sends to NATS
//!   (nats-server `/subsz`, read again after the node's interest linger).
//!
//! Per node it reports engine CPU per delivery, delivered ratio and publish →
//! delivery p50/p99; in total also nats-server's CPU. The summary compares each
//! figure with the single-node runs (CPU ratio target ≤ 1.15×; the p50 the NATS
//! hop adds, target ≤ 1 ms, is isolated by `--nodes 1` against the same
//! connections on one node without NATS).

use crate::pool::{Pool, Ready, Report, Spec};
use crate::producer::{Producer, PubStats};
use crate::proto::{PublishRequest, PublishStreamRequest, publish_stream_response};
use crate::report::{Row, RunDoc};
use crate::scenarios::{Common, finish, note_busy, ratio};
use crate::secure::Material;
use crate::servers::{NatsServer, Server, Target, nats_server_bin};
use crate::util::{BenchError, Lat, Result, err, new_hist, self_cpu_s, stamped_payload};
use crate::worker::Mode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::StreamExt;

/// What a deployment is measured on, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Phase {
    /// One topic, every connection subscribed, `--rate` Hz for `--duration` s.
    Fanout,
    /// Rate steps until a step fails (`--p99-limit-ms`, 100% delivered).
    Saturate,
    /// Flat-out PublishStream through the first node.
    Ingest,
    /// Per-user topic churn on the first node.
    Churn,
}

/// `cluster`: N nodes on one nats-server against one node without NATS.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Engine processes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: u64,
    /// Subscribed connections in all, spread evenly over the nodes.
    #[arg(long, default_value_t = 5000)]
    pub(crate) conns: u64,
    /// Phases to run on every deployment, in this order.
    #[arg(long, value_delimiter = ',', default_value = "fanout,ingest,churn")]
    pub(crate) phases: Vec<Phase>,
    /// Connection counts of the single-node runs (no NATS) measured with the same
    /// phases. Default: the per-node share, and also the total when one process can
    /// hold it (≤ 18,000). `0` alone: no single-node run.
    #[arg(long, value_delimiter = ',')]
    pub(crate) single_conns: Vec<u64>,
    /// fanout: publish rate, Hz (round-robin over the nodes).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// fanout: seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Most seconds to wait for the last deliveries of a phase.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) drain: f64,
    /// saturate: deliveries per second of the first step (the cluster's rate; the
    /// single-node runs publish at the same msg/s).
    #[arg(long, default_value_t = 20_000.0)]
    pub(crate) start_deliveries: f64,
    /// saturate: rate factor between steps.
    #[arg(long, default_value_t = 1.25)]
    pub(crate) factor: f64,
    /// saturate: seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) step_duration: f64,
    /// saturate: most steps.
    #[arg(long, default_value_t = 16)]
    pub(crate) max_steps: u32,
    /// saturate: p99 limit in ms for a step to pass.
    #[arg(long, default_value_t = 250.0)]
    pub(crate) p99_limit_ms: f64,
    /// saturate: keep stepping while delivery is complete and p99 stays under this
    /// (ms), to find the throughput limit even where one round alone passes the
    /// p99 limit.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) p99_stop_ms: f64,
    /// ingest: seconds per topic.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) ingest_duration: f64,
    /// ingest: unacknowledged messages allowed on the stream.
    #[arg(long, default_value_t = 2000)]
    pub(crate) window: usize,
    /// ingest: subscribers of the subscribed topic on each other node (on the node
    /// itself in a single-node run).
    #[arg(long, default_value_t = 1)]
    pub(crate) ingest_subscribers: u64,
    /// churn: connect + subscribe `user:N` + close cycles per second on the first node.
    #[arg(long, default_value_t = 200.0)]
    pub(crate) churn_rate: f64,
    /// churn: seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) churn_duration: f64,
    /// churn: seconds to wait after the last cycle before reading the counters
    /// again (the engine keeps a topic's NATS interest `nats_interest_linger`, 5 s
    /// by default, after its last subscriber leaves, and sweeps once a second).
    #[arg(long, default_value_t = 7.5)]
    pub(crate) linger_wait: f64,
    /// The nats-server binary (default: .tools/bin/nats-server, else the PATH).
    #[arg(long, env = "HERALD_NATS_SERVER")]
    pub(crate) nats_server: Option<PathBuf>,
}

/// One engine process of a deployment with its producer and its readers.
struct Node {
    /// `node-<i>` (cluster) or `node` (single node).
    name: String,
    server: Server,
    producer: Producer,
    pool: Pool,
    ready: Ready,
}

/// The engines (and nats-server) of one measured shape.
struct Deploy {
    /// `cluster 3×1667` or `single 5000`.
    label: String,
    nats: Option<NatsServer>,
    nodes: Vec<Node>,
    worker_args: Vec<String>,
}

/// One phase's rows on one deployment: per node and in total.
#[derive(Debug, Clone)]
struct Measured {
    /// Deployment label.
    label: String,
    /// `fanout`, `step N`, `ingest empty`, `ingest subscribed`, `churn`.
    key: String,
    /// Whether the deployment is the cluster.
    clustered: bool,
    nodes: Vec<Row>,
    total: Row,
    /// Every delivery arrived (and the rate was kept); saturate: p99 within the
    /// stop limit too.
    complete: bool,
    /// complete; saturate: p99 within the limit too.
    pass: bool,
}

/// NATS counters of one engine's connection: (in_msgs, out_msgs, subscriptions).
type ConnStats = BTreeMap<String, (u64, u64, u64)>;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl Deploy {
    /// Starts `nodes` engines (on one nats-server when `clustered`) and `conns`
    /// readers of `bench` spread evenly over them.
    async fn start(
        c: &Common,
        a: &ClusterArgs,
        nodes: u64,
        conns: u64,
        clustered: bool,
    ) -> Result<Deploy> {
        let nodes = nodes.max(1);
        let label = if clustered {
            format!("cluster {nodes}×{}", conns.div_ceil(nodes))
        } else {
            format!("single {conns}")
        };
        note_busy(label.clone(), c.busy_probe_ms).await;
        let logs = c.out_dir.join("logs");
        let secure = Material::prepare(
            &c.out_dir.join("secure"),
            c.auth,
            c.tls,
            c.history().as_ref(),
        )?;
        if let Some(h) = c.history() {
            // The ingest topics (`bench:ingest`, `bench:ingest-empty`) keep history
            // too, so that ingest measures publishing into JetStream.
            use std::io::Write;
            let rules = c.out_dir.join("secure").join("rules.toml");
            let mut f = std::fs::OpenOptions::new().append(true).open(&rules)?;
            write!(
                f,
                "\n[[topics]]\npattern = \"bench:*\"\nsubscribe = \"{}\"\nhistory_size = {}\nhistory_ttl = \"{}\"\n",
                if c.auth == crate::secure::Auth::None {
                    "anyone"
                } else {
                    "authenticated"
                },
                h.size,
                h.ttl
            )?;
        }
        let nats = if clustered {
            let bin = nats_server_bin(a.nats_server.as_deref());
            std::fs::create_dir_all(&logs)?;
            Some(NatsServer::start(&bin, &logs).await?)
        } else {
            None
        };
        let mut servers = Vec::new();
        for i in 0..nodes {
            let name = if clustered {
                format!("node-{}", i + 1)
            } else {
                "node".to_string()
            };
            let mut args: Vec<String> = c
                .herald_args
                .iter()
                .chain(&secure.herald_args)
                .cloned()
                .collect();
            if let Some(n) = &nats {
                args.extend([
                    "--nats-url".into(),
                    n.url(),
                    "--node-id".into(),
                    name.clone(),
                ]);
            }
            let dir = logs.join(format!("{}-{name}", label.replace(['×', ' '], "-")));
            servers.push((
                name,
                Server::start(Target::Herald, &c.herald_bin, &args, &dir).await?,
            ));
        }
        if let Some(n) = &nats {
            wait_nats_clients(n, nodes).await?;
        }
        let mut pending = Vec::new();
        let mut given = 0;
        for (i, (name, server)) in servers.into_iter().enumerate() {
            let share = (conns - given).div_ceil(nodes - i as u64);
            given += share;
            let producer =
                Producer::connect(server.grpc_addr.ok_or_else(|| {
                    BenchError::Msg("Herald started without a gRPC address".into())
                })?)
                .await?;
            let mut spec = Spec::readers(Mode::Ws, server.ws_addr, share, &["bench"]);
            spec.concurrency = c.concurrency;
            spec.per_worker = c.per_worker;
            spec.extra_args = secure.worker_args.clone();
            let pool = Pool::spawn(&spec)?;
            pending.push((name, server, producer, pool));
        }
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (name, server, producer, mut pool) in pending {
            let ready = pool.ready(Duration::from_secs(300)).await?;
            out.push(Node {
                name,
                server,
                producer,
                pool,
                ready,
            });
        }
        let connected: u64 = out.iter().map(|n| n.ready.connected).sum();
        let failed: u64 = out.iter().map(|n| n.ready.failed).sum();
        eprintln!(
            "[{label}] {connected} connected, {failed} failed in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let d = Deploy {
            label,
            nats,
            nodes: out,
            worker_args: secure.worker_args,
        };
        if failed > 0 {
            for n in &d.nodes {
                if n.ready.failed > 0 {
                    eprintln!("[{}] connect errors: {:?}", n.name, n.ready.errors);
                }
            }
            if c.strict {
                let label = d.label.clone();
                d.stop().await?;
                return err(format!("{label}: {failed} connections failed"));
            }
        }
        Ok(d)
    }

    fn clustered(&self) -> bool {
        self.nats.is_some()
    }

    fn connected(&self) -> u64 {
        self.nodes.iter().map(|n| n.ready.connected).sum()
    }

    /// Stops everything; an error if an engine or nats-server died on the way.
    async fn stop(mut self) -> Result<()> {
        let mut dead = Vec::new();
        for n in &mut self.nodes {
            if !n.server.alive() {
                dead.push(n.name.clone());
            }
        }
        if let Some(n) = &mut self.nats
            && !n.alive()
        {
            dead.push("nats-server".into());
        }
        for n in self.nodes {
            n.pool.quit().await;
            n.server.stop().await;
        }
        if let Some(n) = self.nats {
            n.stop().await;
        }
        if !dead.is_empty() {
            return err(format!(
                "{}: {} died during the run (see the logs under the results dir)",
                self.label,
                dead.join(", ")
            ));
        }
        Ok(())
    }

    /// Every engine's NATS connection counters, by node name.
    async fn conn_stats(&self) -> ConnStats {
        let mut out = ConnStats::new();
        let Some(n) = &self.nats else {
            return out;
        };
        match n.monitor("/connz?subs=1").await {
            Ok(v) => {
                for conn in v["connections"].as_array().into_iter().flatten() {
                    if let Some(name) = conn["name"]
                        .as_str()
                        .and_then(|s| s.strip_prefix("herald "))
                    {
                        out.insert(
                            name.to_string(),
                            (
                                u(&conn["in_msgs"]),
                                u(&conn["out_msgs"]),
                                u(&conn["subscriptions"]),
                            ),
                        );
                    }
                }
            }
            Err(e) => eprintln!("[{}] connz: {e}", self.label),
        }
        out
    }

    /// nats-server's CPU seconds so far (0 without NATS).
    fn nats_cpu(&self) -> f64 {
        self.nats.as_ref().map(|n| n.cpu_s()).unwrap_or(0.0)
    }

    /// Publishes to `bench` at `rate` Hz for `duration` s round-robin through the
    /// nodes, waits for every reader's copy and measures per node and in total.
    async fn measure(
        &mut self,
        key: &str,
        rate: f64,
        duration: f64,
        payload: usize,
        drain: f64,
    ) -> Result<Measured> {
        let mut bases = Vec::new();
        for n in &mut self.nodes {
            bases.push(n.pool.report().await?);
        }
        let cpu0: Vec<f64> = self.nodes.iter().map(|n| n.server.cpu_s()).collect();
        let ncpu0 = self.nats_cpu();
        let stats0 = self.conn_stats().await;
        let pcpu0 = self_cpu_s();
        let producers: Vec<Producer> = self.nodes.iter().map(|n| n.producer.clone()).collect();
        let pubs = publish_rr(&producers, "bench", rate, duration, payload, 0).await?;
        let acked: u64 = pubs.iter().map(|p| p.acked).sum();
        let drains = self.nodes.iter_mut().map(|n| {
            let want = acked * n.ready.connected;
            n.pool.drain(want, Duration::from_secs_f64(drain))
        });
        for r in futures_util::future::join_all(drains).await {
            r?;
        }
        let cpu1: Vec<f64> = self.nodes.iter().map(|n| n.server.cpu_s()).collect();
        let ncpu = self.nats_cpu() - ncpu0;
        let stats1 = self.conn_stats().await;
        let producer_cpu = self_cpu_s() - pcpu0;
        let mut reps = Vec::new();
        for n in &mut self.nodes {
            reps.push(n.pool.report().await?);
        }
        let mut rows = Vec::new();
        let mut hist = new_hist()?;
        for (i, n) in self.nodes.iter().enumerate() {
            let (base, rep) = (&bases[i], &reps[i]);
            hist.add(&rep.hist)
                .map_err(|e| BenchError::Hist(e.to_string()))?;
            let mut note = Vec::new();
            let mut extra = serde_json::Map::new();
            let p = &pubs[i];
            extra.insert("published_via_node".into(), json!(p));
            if p.errors > 0 {
                note.push(format!(
                    "publish errors via this node: {} ({:?})",
                    p.errors, p.first_error
                ));
            }
            if let (Some(a), Some(b)) = (stats0.get(&n.name), stats1.get(&n.name)) {
                let (pin, pout) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
                extra.insert("nats_msgs_from_node".into(), json!(pin));
                extra.insert("nats_msgs_to_node".into(), json!(pout));
                note.push(format!("NATS msgs in {pin} / out {pout}"));
            }
            client_notes(base, rep, &mut note, &mut extra);
            let (_, hwm) = n.server.rss();
            let mut row = Row {
                target: format!("{} {}", self.label, n.name),
                phase: key.to_string(),
                conns: n.ready.connected,
                rate_hz: rate,
                duration_s: duration,
                published: acked,
                expected: acked * n.ready.connected,
                delivered: rep.received,
                lat: Lat::of(&rep.hist),
                engine_cpu_s: cpu1[i] - cpu0[i],
                peak_rss_mib: hwm as f64 / 1024.0,
                gen_cpu_s: rep.cpu_s - base.cpu_s,
                note: note.join("; "),
                extra,
                ..Row::default()
            };
            row.finish();
            rows.push(row);
        }
        let engine_cpu: f64 = rows.iter().map(|r| r.engine_cpu_s).sum();
        let delivered: u64 = rows.iter().map(|r| r.delivered).sum();
        let mut extra = serde_json::Map::new();
        extra.insert("nats_cpu_s".into(), json!(ncpu));
        extra.insert("producer_cpu_s".into(), json!(producer_cpu));
        let per_node: Vec<f64> = rows.iter().map(|r| r.cpu_s_per_m).collect();
        extra.insert("node_cpu_us_per_delivery".into(), json!(per_node));
        let mut note = vec![format!(
            "per node µs/delivery {}",
            per_node
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        )];
        if self.clustered() && delivered > 0 {
            let with = (engine_cpu + ncpu) * 1e6 / delivered as f64;
            extra.insert("cpu_us_per_delivery_with_nats".into(), json!(with));
            note.push(format!(
                "nats-server {ncpu:.2} s CPU; {with:.2} µs/delivery with it"
            ));
        }
        let mut total = Row {
            target: format!("{} total", self.label),
            phase: key.to_string(),
            conns: self.connected(),
            rate_hz: rate,
            duration_s: duration,
            published: acked,
            expected: acked * self.connected(),
            delivered,
            lat: Lat::of(&hist),
            engine_cpu_s: engine_cpu,
            peak_rss_mib: rows.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
            gen_cpu_s: rows.iter().map(|r| r.gen_cpu_s).sum(),
            note: note.join("; "),
            extra,
            ..Row::default()
        };
        total.finish();
        let kept_rate = rate <= 0.0 || acked as f64 >= 0.98 * rate * duration;
        let pass = kept_rate && total.expected > 0 && total.delivered >= total.expected;
        if !kept_rate {
            total.note = format!(
                "published {acked} of {:.0} due; {}",
                rate * duration,
                total.note
            );
        }
        eprintln!(
            "[{}] {key}: {rate:.2} Hz, {acked} published, {:.4}% delivered, p50 {:.2} ms, p99 {:.2} ms, {:.2} µs CPU/delivery (nodes {})",
            self.label,
            total.delivered_frac * 100.0,
            total.lat.p50_ms,
            total.lat.p99_ms,
            total.cpu_s_per_m,
            rows.iter()
                .map(|r| format!("{:.2}", r.cpu_s_per_m))
                .collect::<Vec<_>>()
                .join("/")
        );
        Ok(Measured {
            label: self.label.clone(),
            key: key.to_string(),
            clustered: self.clustered(),
            nodes: rows,
            total,
            complete: pass,
            pass,
        })
    }

    /// `saturate`: steps of `rates`; stops after the first failing step.
    async fn saturate(&mut self, a: &ClusterArgs, rates: &[f64]) -> Result<Vec<Measured>> {
        let mut out = Vec::new();
        for (k, &rate) in rates.iter().enumerate() {
            let mut m = self
                .measure(
                    &format!("step {k}"),
                    rate,
                    a.step_duration,
                    a.common.payload,
                    5.0,
                )
                .await?;
            let alive = self.all_alive();
            m.complete = m.complete && alive && m.total.lat.p99_ms <= a.p99_stop_ms;
            m.pass = m.complete && m.total.lat.p99_ms <= a.p99_limit_ms;
            let verdict = if m.pass {
                "pass"
            } else if m.complete {
                "complete, p99 over the limit"
            } else {
                "FAIL"
            };
            m.total.phase = format!("step {k}: {verdict}");
            for r in &mut m.nodes {
                r.phase = m.total.phase.clone();
            }
            let failed = !m.complete;
            out.push(m);
            if failed {
                break;
            }
        }
        Ok(out)
    }

    fn all_alive(&mut self) -> bool {
        let mut ok = self.nodes.iter_mut().all(|n| n.server.alive());
        if let Some(n) = &mut self.nats {
            ok &= n.alive();
        }
        ok
    }

    /// `ingest`: flat-out PublishStream through the first node, first to a topic
    /// nobody subscribes, then to one with `subs` readers on every other node (on
    /// the node itself when it is alone).
    async fn ingest(&mut self, a: &ClusterArgs) -> Result<Vec<Measured>> {
        let c = &a.common;
        let mut side = Vec::new();
        let targets: Vec<_> = if self.nodes.len() > 1 {
            self.nodes[1..].iter().map(|n| n.server.ws_addr).collect()
        } else {
            self.nodes.iter().map(|n| n.server.ws_addr).collect()
        };
        for t in targets {
            let mut spec = Spec::readers(Mode::Ws, t, a.ingest_subscribers, &["bench:ingest"]);
            spec.extra_args = self.worker_args.clone();
            let mut p = Pool::spawn(&spec)?;
            p.ready(Duration::from_secs(60)).await?;
            side.push(p);
        }
        let subs = a.ingest_subscribers * side.len() as u64;
        let mut out = Vec::new();
        let first = vec![self.nodes[0].producer.clone()];
        for (key, topic) in [
            ("ingest empty", "bench:ingest-empty"),
            ("ingest subscribed", "bench:ingest"),
        ] {
            let mut bases = Vec::new();
            for p in &mut side {
                bases.push(p.report().await?);
            }
            let cpu0: Vec<f64> = self.nodes.iter().map(|n| n.server.cpu_s()).collect();
            let ncpu0 = self.nats_cpu();
            let pubs =
                publish_rr(&first, topic, 0.0, a.ingest_duration, c.payload, a.window).await?;
            let st = pubs.first().cloned().unwrap_or_default();
            let expected = if topic == "bench:ingest" {
                st.acked * a.ingest_subscribers
            } else {
                0
            };
            if expected > 0 {
                let drains = side
                    .iter_mut()
                    .map(|p| p.drain(expected, Duration::from_secs_f64(a.drain)));
                for r in futures_util::future::join_all(drains).await {
                    r?;
                }
            }
            let cpu1: Vec<f64> = self.nodes.iter().map(|n| n.server.cpu_s()).collect();
            let ncpu = self.nats_cpu() - ncpu0;
            let mut hist = new_hist()?;
            let mut delivered = 0;
            let mut gen_cpu = 0.0;
            let mut note = Vec::new();
            let mut extra = serde_json::Map::new();
            for (i, p) in side.iter_mut().enumerate() {
                let rep = p.report().await?;
                hist.add(&rep.hist)
                    .map_err(|e| BenchError::Hist(e.to_string()))?;
                delivered += rep.received;
                gen_cpu += rep.cpu_s - bases[i].cpu_s;
                client_notes(&bases[i], &rep, &mut note, &mut extra);
            }
            let per_s = st.acked as f64 / st.elapsed_s.max(1e-9);
            let node_cpu: Vec<f64> = cpu1.iter().zip(&cpu0).map(|(b, a)| b - a).collect();
            note.insert(
                0,
                format!(
                    "{per_s:.0} acked/s through {}; engine CPU s per node {}{}",
                    self.nodes[0].name,
                    node_cpu
                        .iter()
                        .map(|v| format!("{v:.2}"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    if self.clustered() {
                        format!("; nats-server {ncpu:.2} s")
                    } else {
                        String::new()
                    }
                ),
            );
            if st.errors > 0 {
                note.push(format!("{} errors: {:?}", st.errors, st.first_error));
            }
            extra.insert("acked_per_s".into(), json!(per_s));
            extra.insert("publish".into(), json!(st));
            extra.insert("node_cpu_s".into(), json!(node_cpu));
            extra.insert("nats_cpu_s".into(), json!(ncpu));
            let mut row = Row {
                target: format!("{} total", self.label),
                phase: key.to_string(),
                conns: if expected > 0 { subs } else { 0 },
                rate_hz: per_s,
                duration_s: st.elapsed_s,
                published: st.acked,
                expected: expected * side.len() as u64,
                delivered,
                lat: Lat::of(&hist),
                engine_cpu_s: node_cpu.iter().sum(),
                gen_cpu_s: gen_cpu,
                note: note.join("; "),
                extra,
                ..Row::default()
            };
            row.finish();
            eprintln!(
                "[{}] {key}: {per_s:.0} acked/s, {} errors, {delivered} of {} delivered",
                self.label, st.errors, row.expected
            );
            out.push(Measured {
                label: self.label.clone(),
                key: key.to_string(),
                clustered: self.clustered(),
                nodes: Vec::new(),
                total: row,
                complete: st.errors == 0,
                pass: st.errors == 0,
            });
        }
        for p in side {
            p.quit().await;
        }
        Ok(out)
    }

    /// `churn`: clients connect to the first node, subscribe to their own
    /// `user:N` and close, `churn_rate` a second for `churn_duration` s; counts the
    /// SUB/UNSUB nats-server saw and the CPU it cost, up to `linger_wait` s after.
    async fn churn(&mut self, a: &ClusterArgs) -> Result<Measured> {
        let c = &a.common;
        let spec = Spec {
            mode: Mode::Churn,
            target: self.nodes[0].server.ws_addr,
            conns: 0,
            topics: Vec::new(),
            user_topics: true,
            user_ids: false,
            churn: Some((a.churn_rate, a.churn_duration)),
            concurrency: c.concurrency,
            per_worker: c.per_worker,
            extra_args: self.worker_args.clone(),
        };
        let mut churners = Pool::spawn(&spec)?;
        churners.ready(Duration::from_secs(30)).await?;
        let subsz = |v: &Value| (u(&v["num_inserts"]), u(&v["num_removes"]));
        let sub0 = match &self.nats {
            Some(n) => subsz(&n.monitor("/subsz").await?),
            None => (0, 0),
        };
        let stats0 = self.conn_stats().await;
        // What the node and nats-server use while nothing churns (heartbeats,
        // timers of the idle connections), subtracted from the churn window.
        let (i0, ni0, ti) = (
            self.nodes[0].server.cpu_s(),
            self.nats_cpu(),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_s = ti.elapsed().as_secs_f64();
        let idle_rate = (self.nodes[0].server.cpu_s() - i0) / idle_s;
        let nats_idle_rate = (self.nats_cpu() - ni0) / idle_s;
        let cpu0: Vec<f64> = self.nodes.iter().map(|n| n.server.cpu_s()).collect();
        let ncpu0 = self.nats_cpu();
        let t0 = Instant::now();
        churners.start().await?;
        let done = churners
            .churn_done(Duration::from_secs_f64(a.churn_duration + 120.0))
            .await?;
        let churn_s = t0.elapsed().as_secs_f64();
        let mut peak_subs = 0;
        let sub_end = match &self.nats {
            Some(n) => {
                let v = n.monitor("/subsz").await?;
                peak_subs = u(&v["num_subscriptions"]);
                subsz(&v)
            }
            None => (0, 0),
        };
        tokio::time::sleep(Duration::from_secs_f64(a.linger_wait)).await;
        let sub1 = match &self.nats {
            Some(n) => subsz(&n.monitor("/subsz").await?),
            None => (0, 0),
        };
        let stats1 = self.conn_stats().await;
        let cpu1: Vec<f64> = self.nodes.iter().map(|n| n.server.cpu_s()).collect();
        let window_s = t0.elapsed().as_secs_f64();
        let ncpu = (self.nats_cpu() - ncpu0 - nats_idle_rate * window_s).max(0.0);
        churners.quit().await;
        let cycles: u64 = done.iter().map(|v| u(&v["cycles"])).sum();
        let failed: u64 = done.iter().map(|v| u(&v["failed"])).sum();
        let gen_cpu: f64 = done
            .iter()
            .map(|v| v["cpu_s"].as_f64().unwrap_or(0.0))
            .sum();
        let mut h = new_hist()?;
        for v in &done {
            let d: crate::util::HistDump = serde_json::from_value(v["cycle_hist"].clone())?;
            d.add_to(&mut h)?;
        }
        let node0_raw = cpu1[0] - cpu0[0];
        let node0_cpu = (node0_raw - idle_rate * window_s).max(0.0);
        let (subs, unsubs) = (sub1.0.saturating_sub(sub0.0), sub1.1.saturating_sub(sub0.1));
        let unsubs_at_end = sub_end.1.saturating_sub(sub0.1);
        let per_cycle_us = node0_cpu * 1e6 / cycles.max(1) as f64;
        let name0 = self.nodes[0].name.clone();
        let subs_left = stats1.get(&name0).map(|s| s.2).unwrap_or(0);
        let subs_before = stats0.get(&name0).map(|s| s.2).unwrap_or(0);
        let (msgs_in, msgs_out) = match (stats0.get(&name0), stats1.get(&name0)) {
            (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
            _ => (0, 0),
        };
        let mut note = vec![format!(
            "{cycles} connect+subscribe user:N+close cycles on {name0} in {churn_s:.1} s ({failed} failed), cycle p50 {:.1} ms p99 {:.1} ms; engine {per_cycle_us:.0} µs CPU per cycle (measured to {:.1} s after the last, less the {:.0} ms/s the node used idle before: {node0_raw:.2} s raw)",
            Lat::of(&h).p50_ms,
            Lat::of(&h).p99_ms,
            a.linger_wait,
            idle_rate * 1000.0
        )];
        let mut extra = serde_json::Map::new();
        extra.insert("cycles".into(), json!(cycles));
        extra.insert("failed".into(), json!(failed));
        extra.insert("churn_s".into(), json!(churn_s));
        extra.insert("engine_us_per_cycle".into(), json!(per_cycle_us));
        extra.insert("engine_idle_cpu_per_s".into(), json!(idle_rate));
        extra.insert("engine_cpu_raw_s".into(), json!(node0_raw));
        extra.insert("nats_idle_cpu_per_s".into(), json!(nats_idle_rate));
        extra.insert("cycle_latency".into(), json!(Lat::of(&h)));
        if self.clustered() {
            note.push(format!(
                "nats-server: {subs} SUB and {unsubs} UNSUB ({unsubs_at_end} UNSUB by the last cycle, the rest after the linger); {:.2} SUB+UNSUB per cycle; {peak_subs} subscriptions at the end of churn, {name0} holds {subs_left} (had {subs_before}); {name0} sent {msgs_in} and received {msgs_out} NATS messages meanwhile; nats-server {:.0} µs CPU per cycle",
                (subs + unsubs) as f64 / cycles.max(1) as f64,
                ncpu * 1e6 / cycles.max(1) as f64
            ));
            extra.insert("nats_sub".into(), json!(subs));
            extra.insert("nats_unsub".into(), json!(unsubs));
            extra.insert("nats_unsub_by_end_of_churn".into(), json!(unsubs_at_end));
            extra.insert("nats_cpu_s".into(), json!(ncpu));
            extra.insert("nats_subscriptions_end_of_churn".into(), json!(peak_subs));
            extra.insert("node_subscriptions_after".into(), json!(subs_left));
            extra.insert("node_nats_msgs_sent".into(), json!(msgs_in));
            extra.insert("node_nats_msgs_received".into(), json!(msgs_out));
        }
        let mut row = Row {
            target: format!("{} {name0}", self.label),
            phase: "churn".into(),
            conns: self.nodes[0].ready.connected,
            rate_hz: a.churn_rate,
            duration_s: churn_s,
            lat: Lat::of(&h),
            engine_cpu_s: node0_cpu,
            peak_rss_mib: self.nodes[0].server.rss().1 as f64 / 1024.0,
            gen_cpu_s: gen_cpu,
            note: note.join("; "),
            extra,
            ..Row::default()
        };
        row.finish();
        eprintln!("[{}] churn: {}", self.label, row.note);
        Ok(Measured {
            label: self.label.clone(),
            key: "churn".into(),
            clustered: self.clustered(),
            nodes: Vec::new(),
            total: row,
            complete: failed == 0,
            pass: failed == 0,
        })
    }
}

/// Close codes, seq order and client errors of one pool's report into a row.
fn client_notes(
    base: &Report,
    rep: &Report,
    note: &mut Vec<String>,
    extra: &mut serde_json::Map<String, Value>,
) {
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
    let g = extra.get("seq_gaps").map(u).unwrap_or(0);
    let r = extra.get("seq_reorders").map(u).unwrap_or(0);
    extra.insert("seq_gaps".into(), json!(g + gaps));
    extra.insert("seq_reorders".into(), json!(r + reorders));
    if !rep.errors.is_empty() {
        extra.insert("client_errors".into(), json!(rep.errors));
    }
}

/// Waits until nats-server lists `n` engine connections (named `herald <node-id>`).
async fn wait_nats_clients(nats: &NatsServer, n: u64) -> Result<()> {
    for _ in 0..300 {
        if let Ok(v) = nats.monitor("/connz").await {
            let engines = v["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["name"].as_str().is_some_and(|s| s.starts_with("herald ")))
                .count() as u64;
            if engines >= n {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    err(format!(
        "{n} engines did not connect to nats-server within 30 s"
    ))
}

/// Streams stamped messages to `topic` at `rate` Hz (0: as fast as `window`
/// unacknowledged messages allow) for `duration` s, message k through
/// `producers[k % N]`, each node over its own PublishStream. Counts per node.
async fn publish_rr(
    producers: &[Producer],
    topic: &str,
    rate: f64,
    duration: f64,
    payload: usize,
    window: usize,
) -> Result<Vec<PubStats>> {
    let sem = Arc::new(Semaphore::new(if window == 0 { 1 << 24 } else { window }));
    let mut txs = Vec::new();
    let mut readers = Vec::new();
    for p in producers {
        let (tx, rx) = tokio::sync::mpsc::channel::<PublishStreamRequest>(4096);
        let mut client = p.client();
        let sem = sem.clone();
        readers.push(tokio::spawn(async move {
            let (mut acked, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut resp = client
                .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(r) = resp.next().await {
                match r?.result {
                    Some(publish_stream_response::Result::Ack(_)) => acked += 1,
                    other => {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(format!("{other:?}"));
                        }
                    }
                }
                sem.add_permits(1);
            }
            Ok::<_, BenchError>((acked, errors, first_error))
        }));
        txs.push(tx);
    }
    let n = txs.len().max(1);
    let mut sent = vec![0u64; n];
    let start = Instant::now();
    let mut k = 0u64;
    'outer: loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= duration {
            break;
        }
        let due = if rate > 0.0 {
            (elapsed * rate) as u64 + 1
        } else {
            u64::MAX
        };
        while k < due {
            if start.elapsed().as_secs_f64() >= duration {
                break 'outer;
            }
            if let Ok(p) = sem.clone().acquire_owned().await {
                p.forget();
            }
            let i = (k % n as u64) as usize;
            sent[i] += 1;
            k += 1;
            let req = PublishStreamRequest {
                client_seq: sent[i],
                message: Some(PublishRequest {
                    topic: topic.to_string(),
                    data: stamped_payload(payload),
                    content_type: "application/json".into(),
                    idempotency_key: None,
                    ttl_ms: None,
                }),
                more: Vec::new(),
            };
            if txs[i].send(req).await.is_err() {
                break 'outer;
            }
        }
        if rate > 0.0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(txs);
    let mut out = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let (acked, errors, first_error) =
            match tokio::time::timeout(Duration::from_secs(60), r).await {
                Ok(Ok(Ok(v))) => v,
                Ok(Ok(Err(e))) => (0, 0, Some(e.to_string())),
                Ok(Err(e)) => (0, 0, Some(e.to_string())),
                Err(_) => (0, 0, Some("acks did not finish within 60 s".into())),
            };
        out.push(PubStats {
            sent: sent[i],
            acked,
            errors,
            elapsed_s: start.elapsed().as_secs_f64(),
            first_error,
        });
    }
    Ok(out)
}

/// Runs every phase of `a` on one deployment. `rates`: the saturate steps.
async fn run_phases(d: &mut Deploy, a: &ClusterArgs, rates: &[f64]) -> Result<Vec<Measured>> {
    let mut out = Vec::new();
    for p in &a.phases {
        match p {
            Phase::Fanout => {
                out.push(
                    d.measure("fanout", a.rate, a.duration, a.common.payload, a.drain)
                        .await?,
                );
            }
            Phase::Saturate => out.extend(d.saturate(a, rates).await?),
            Phase::Ingest => out.extend(d.ingest(a).await?),
            Phase::Churn => out.push(d.churn(a).await?),
        }
    }
    Ok(out)
}

/// Under `--strict`: every delivery of a fan-out phase arrived, in order.
fn check(a: &ClusterArgs, m: &Measured) -> Result<()> {
    if !a.common.strict || m.key.starts_with("step") || m.key.starts_with("ingest") {
        return Ok(());
    }
    let r = &m.total;
    let get = |row: &Row, k: &str| row.extra.get(k).map(u).unwrap_or(0);
    for n in &m.nodes {
        if get(n, "seq_gaps") > 0 || get(n, "seq_reorders") > 0 {
            return err(format!(
                "{} {}: per-connection seq order broken: {} skipped, {} out of order",
                n.target,
                n.phase,
                get(n, "seq_gaps"),
                get(n, "seq_reorders")
            ));
        }
    }
    if m.key == "churn" {
        if !m.pass {
            return err(format!("{} churn: cycles failed: {}", m.label, r.note));
        }
        return Ok(());
    }
    if r.delivered < r.expected {
        return err(format!(
            "{} {}: delivered {} of {} ({:.4}%)",
            m.label,
            m.key,
            r.delivered,
            r.expected,
            r.delivered_frac * 100.0
        ));
    }
    Ok(())
}

/// Runs `cluster`.
pub(crate) async fn cluster(a: ClusterArgs) -> Result<()> {
    let c = &a.common;
    if a.conns == 0 || a.nodes == 0 {
        return err("cluster needs --conns ≥ 1 and --nodes ≥ 1");
    }
    let share = a.conns.div_ceil(a.nodes);
    let singles: Vec<u64> = if a.single_conns.is_empty() {
        let mut v = vec![share];
        if a.conns != share && a.conns <= 18_000 {
            v.push(a.conns);
        }
        v
    } else {
        a.single_conns.iter().copied().filter(|&n| n > 0).collect()
    };
    let rate0 = a.start_deliveries / a.conns as f64;
    let rates: Vec<f64> = (0..a.max_steps)
        .map(|k| rate0 * a.factor.powi(k as i32))
        .collect();
    let mut doc = RunDoc::new("cluster");
    let mut all: Vec<Measured> = Vec::new();

    // The cluster first: the single-node runs repeat its saturation steps.
    let mut d = Deploy::start(c, &a, a.nodes, a.conns, true).await?;
    let res = run_phases(&mut d, &a, &rates).await;
    let stopped = d.stop().await;
    let ms = res?;
    stopped?;
    for m in &ms {
        check(&a, m)?;
    }
    let steps_run = ms.iter().filter(|m| m.key.starts_with("step")).count();
    all.extend(ms);
    let single_rates: Vec<f64> = rates.iter().copied().take(steps_run.max(1)).collect();
    for &n in &singles {
        let mut d = Deploy::start(c, &a, 1, n, false).await?;
        let res = run_phases(&mut d, &a, &single_rates).await;
        let stopped = d.stop().await;
        let ms = res?;
        stopped?;
        for m in &ms {
            check(&a, m)?;
        }
        all.extend(ms);
    }

    for m in &all {
        let step = m.key.starts_with("step");
        for r in &m.nodes {
            let mut r = r.clone();
            r.detail = step || m.nodes.len() == 1;
            doc.rows.push(r);
        }
        let mut t = m.total.clone();
        t.detail = step;
        doc.rows.push(t);
    }
    summarize(&a, &all, &mut doc);
    finish(c, doc)
}

/// The comparisons: CPU per delivery per node against one node, the p50 the NATS
/// hop adds, the highest passing rate, ingest and churn.
fn summarize(a: &ClusterArgs, all: &[Measured], doc: &mut RunDoc) {
    let cluster: Vec<&Measured> = all.iter().filter(|m| m.clustered).collect();
    let singles: Vec<&Measured> = all.iter().filter(|m| !m.clustered).collect();
    let single_of = |key: &str| -> Vec<&Measured> {
        singles.iter().copied().filter(|m| m.key == key).collect()
    };
    let compare = |m: &Measured| -> String {
        let mut parts = Vec::new();
        for s in single_of(&m.key) {
            let node_ratios: Vec<String> = m
                .nodes
                .iter()
                .map(|n| ratio(n.cpu_s_per_m, s.total.cpu_s_per_m))
                .collect();
            // Only the same process and load with and without NATS isolates the
            // hop; against a node with a share of the work the p50 also holds
            // the other nodes' competition for the cores.
            let hop = if m.nodes.len() == 1 && m.total.conns == s.total.conns {
                " (the NATS hop: target ≤ 1 ms)"
            } else {
                ""
            };
            parts.push(format!(
                "against {} ({:.2} µs/delivery, p50 {:.2} ms, p99 {:.2} ms): CPU per node {} (target ≤ 1.15×), total {}; p50 {:+.2} ms{hop}, p99 {:+.2} ms",
                s.label,
                s.total.cpu_s_per_m,
                s.total.lat.p50_ms,
                s.total.lat.p99_ms,
                node_ratios.join(" / "),
                ratio(m.total.cpu_s_per_m, s.total.cpu_s_per_m),
                m.total.lat.p50_ms - s.total.lat.p50_ms,
                m.total.lat.p99_ms - s.total.lat.p99_ms,
            ));
        }
        parts.join("; ")
    };
    let describe = |m: &Measured| -> String {
        let with = m
            .total
            .extra
            .get("cpu_us_per_delivery_with_nats")
            .and_then(Value::as_f64)
            .map(|v| format!(" ({v:.2} with nats-server)"))
            .unwrap_or_default();
        format!(
            "{} at {:.2} Hz: {:.4}% delivered, p50 {:.2} ms, p99 {:.2} ms, {:.0} deliveries/s; engine µs/delivery per node {}, total {:.2}{with}",
            m.label,
            m.total.rate_hz,
            m.total.delivered_frac * 100.0,
            m.total.lat.p50_ms,
            m.total.lat.p99_ms,
            m.total.deliveries_per_s,
            m.nodes
                .iter()
                .map(|n| format!("{:.2}", n.cpu_s_per_m))
                .collect::<Vec<_>>()
                .join(" / "),
            m.total.cpu_s_per_m
        )
    };
    for m in cluster.iter().filter(|m| m.key == "fanout") {
        doc.summary
            .push(format!("fanout: {}; {}", describe(m), compare(m)));
    }
    let steps: Vec<&&Measured> = cluster
        .iter()
        .filter(|m| m.key.starts_with("step"))
        .collect();
    if !steps.is_empty() {
        match steps.iter().rev().find(|m| m.pass) {
            Some(best) => {
                doc.summary.push(format!(
                    "saturate: highest step with 100% delivered and p99 ≤ {} ms: {}; {}",
                    a.p99_limit_ms,
                    describe(best),
                    compare(best)
                ));
                let mut t = best.total.clone();
                t.detail = false;
                t.phase = format!("highest passing step ({})", best.key);
                doc.rows.push(t);
            }
            None => doc
                .summary
                .push("saturate: no step passed (see the step rows)".into()),
        }
        if let Some(best) = steps.iter().rev().find(|m| m.complete && !m.pass) {
            doc.summary.push(format!(
                "saturate: highest complete step (p99 up to {} ms): {}; {}",
                a.p99_stop_ms,
                describe(best),
                compare(best)
            ));
            let mut t = best.total.clone();
            t.detail = false;
            t.phase = format!("highest complete step ({})", best.key);
            doc.rows.push(t);
        }
        if let Some(f) = steps.iter().find(|m| !m.complete) {
            doc.summary
                .push(format!("saturate: first failing step: {}", describe(f)));
        }
        for s in singles.iter().filter(|m| m.key.starts_with("step")) {
            if !s.complete {
                doc.summary.push(format!(
                    "saturate: {} failed at {} ({:.2} Hz): {:.4}% delivered, p99 {:.2} ms",
                    s.label,
                    s.key,
                    s.total.rate_hz,
                    s.total.delivered_frac * 100.0,
                    s.total.lat.p99_ms
                ));
            }
        }
    }
    for key in ["ingest empty", "ingest subscribed"] {
        for m in cluster.iter().filter(|m| m.key == key) {
            let mut l = format!(
                "{key}: {} {:.0} acked/s through one node ({:.4}% of {} deliveries to {} subscribers on the other nodes)",
                m.label,
                m.total.rate_hz,
                m.total.delivered_frac * 100.0,
                m.total.expected,
                m.total.conns
            );
            for s in single_of(key) {
                l.push_str(&format!(
                    "; {} {:.0} acked/s = {}",
                    s.label,
                    s.total.rate_hz,
                    ratio(m.total.rate_hz, s.total.rate_hz)
                ));
            }
            doc.summary.push(l);
        }
    }
    for m in cluster.iter().filter(|m| m.key == "churn") {
        let us = |m: &Measured| {
            m.total
                .extra
                .get("engine_us_per_cycle")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        };
        let mut l = format!("churn: {}: {}", m.label, m.total.note);
        for s in single_of("churn") {
            l.push_str(&format!(
                "; {} {:.0} µs per cycle: cluster = {}",
                s.label,
                us(s),
                ratio(us(m), us(s))
            ));
        }
        doc.summary.push(l);
    }
}
