//! Coordinator side of the worker processes: spawning `herald-bench worker` children
//! with their share of connections and source addresses, sending them commands and
//! collecting their JSON events (readiness, counts, histograms, generator CPU).

use crate::util::{BenchError, HistDump, Result, Rng, err, new_hist};
use crate::worker::Mode;
use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Most connections one worker process holds (the per-process limit is 20,000 files).
pub(crate) const MAX_PER_WORKER: u64 = 10_000;

/// One running worker process.
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// What a group of workers should do.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Connection mode.
    pub(crate) mode: Mode,
    /// Server address.
    pub(crate) target: SocketAddr,
    /// Total connections.
    pub(crate) conns: u64,
    /// Shared topics.
    pub(crate) topics: Vec<String>,
    /// Subscribe each to `user:<index>` too.
    pub(crate) user_topics: bool,
    /// Connect each as user `u<index>`.
    pub(crate) user_ids: bool,
    /// Churn rate (per second) and duration (s).
    pub(crate) churn: Option<(f64, f64)>,
    /// Connects in flight per worker.
    pub(crate) concurrency: usize,
    /// Max connections per worker process.
    pub(crate) per_worker: u64,
    /// Further worker arguments (token key, TLS CA).
    pub(crate) extra_args: Vec<String>,
}

impl Spec {
    /// A subscribed-readers spec.
    pub(crate) fn readers(mode: Mode, target: SocketAddr, conns: u64, topics: &[&str]) -> Self {
        Spec {
            mode,
            target,
            conns,
            topics: topics.iter().map(|s| s.to_string()).collect(),
            user_topics: false,
            user_ids: false,
            churn: None,
            concurrency: 128,
            per_worker: MAX_PER_WORKER,
            extra_args: Vec::new(),
        }
    }
}

/// Source addresses for one worker: 127.A.B.1..=4 with random A, B so that
/// successive runs never meet their own TIME_WAIT sockets.
fn src_ips(rng: &mut Rng) -> String {
    let a = 1 + rng.below(250);
    let b = 1 + rng.below(250);
    (1..=4)
        .map(|c| format!("127.{a}.{b}.{c}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A group of workers.
pub(crate) struct Pool {
    /// The workers.
    pub(crate) workers: Vec<Worker>,
}

/// Merged results of one `report` round.
#[derive(Debug)]
pub(crate) struct Report {
    /// Messages received.
    pub(crate) received: u64,
    /// Server-initiated subscribed/unsubscribed pushes received.
    pub(crate) pushes: u64,
    /// Latency histogram (µs).
    pub(crate) hist: Histogram<u64>,
    /// Connections closed so far.
    pub(crate) closed: u64,
    /// Messages skipped in some connection's `seq` order, since the worker started.
    pub(crate) seq_gaps: u64,
    /// Messages that arrived with a `seq` not above the previous one, likewise.
    pub(crate) seq_reorders: u64,
    /// Close codes seen.
    pub(crate) close_codes: BTreeMap<String, u64>,
    /// A few errors.
    pub(crate) errors: Vec<String>,
    /// Sum of the workers' CPU seconds since they started.
    pub(crate) cpu_s: f64,
}

/// Readiness of a group.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    /// Connections up.
    pub(crate) connected: u64,
    /// Connections that failed.
    pub(crate) failed: u64,
    /// Earliest connect start (unix ns).
    pub(crate) t_first_ns: u64,
    /// Latest subscribe done (unix ns).
    pub(crate) t_last_ns: u64,
    /// A few errors.
    pub(crate) errors: Vec<String>,
    /// Workers' CPU seconds until ready.
    pub(crate) cpu_s: f64,
}

impl Worker {
    async fn send(&mut self, cmd: &str) -> Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let fut = async {
            while let Some(line) = self.lines.next_line().await? {
                let v: Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if v["event"] == name {
                    return Ok(v);
                }
            }
            err(format!("worker exited before sending {name}"))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| BenchError::Msg(format!("timed out waiting for worker event {name}")))?
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl Pool {
    /// Spawns the workers for `spec` (they start connecting at once).
    pub(crate) fn spawn(spec: &Spec) -> Result<Pool> {
        let exe = std::env::current_exe()?;
        let n_workers = match spec.mode {
            Mode::Churn => 1,
            _ => spec.conns.div_ceil(spec.per_worker.max(1)).max(1),
        };
        let mut rng = Rng::new(u64::from(std::process::id()));
        let mut workers = Vec::new();
        let mut first = 0;
        for i in 0..n_workers {
            let conns = (spec.conns - first).div_ceil(n_workers - i);
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .arg("--mode")
                .arg(match spec.mode {
                    Mode::Ws => "ws",
                    Mode::Slow => "slow",
                    Mode::Tcp => "tcp",
                    Mode::Churn => "churn",
                    Mode::Recover => "recover",
                })
                .arg("--target")
                .arg(spec.target.to_string())
                .arg("--src-ips")
                .arg(src_ips(&mut rng))
                .arg("--conns")
                .arg(conns.to_string())
                .arg("--first")
                .arg(first.to_string())
                .arg("--concurrency")
                .arg(spec.concurrency.to_string());
            if !spec.topics.is_empty() {
                cmd.arg("--topics").arg(spec.topics.join(","));
            }
            if spec.user_topics {
                cmd.arg("--user-topics");
            }
            if spec.user_ids {
                cmd.arg("--user-ids");
            }
            if let Some((rate, dur)) = spec.churn {
                cmd.arg("--rate")
                    .arg(rate.to_string())
                    .arg("--duration")
                    .arg(dur.to_string());
            }
            cmd.args(&spec.extra_args);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = cmd.spawn()?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| BenchError::Msg("no worker stdin".into()))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| BenchError::Msg("no worker stdout".into()))?;
            workers.push(Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
            first += conns;
        }
        Ok(Pool { workers })
    }

    /// Waits until every worker has all its connections up (or failed).
    pub(crate) async fn ready(&mut self, timeout: Duration) -> Result<Ready> {
        let evs = futures_util::future::join_all(
            self.workers.iter_mut().map(|w| w.event("ready", timeout)),
        )
        .await;
        let mut r = Ready {
            t_first_ns: u64::MAX,
            ..Ready::default()
        };
        for ev in evs {
            let v = ev?;
            r.connected += v["connected"].as_u64().unwrap_or(0);
            r.failed += v["failed"].as_u64().unwrap_or(0);
            r.t_first_ns = r
                .t_first_ns
                .min(v["t_first_ns"].as_u64().unwrap_or(u64::MAX));
            r.t_last_ns = r.t_last_ns.max(v["t_last_ns"].as_u64().unwrap_or(0));
            r.cpu_s += v["cpu_s"].as_f64().unwrap_or(0.0);
            r.errors.extend(strs(&v["errors"]));
        }
        r.errors.truncate(8);
        Ok(r)
    }

    /// Messages received so far by all workers (since the last report).
    pub(crate) async fn count(&mut self) -> Result<u64> {
        self.count_of("received").await
    }

    /// A `count` event field (`received` or `pushes`) summed over the workers.
    async fn count_of(&mut self, field: &str) -> Result<u64> {
        let mut total = 0;
        for w in &mut self.workers {
            w.send("count").await?;
        }
        for w in &mut self.workers {
            total += w.event("count", Duration::from_secs(30)).await?[field]
                .as_u64()
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Polls until `expected` server-initiated pushes arrived (since the last
    /// report) or `max_wait` passed; returns the count.
    pub(crate) async fn drain_pushes(&mut self, expected: u64, max_wait: Duration) -> Result<u64> {
        let start = tokio::time::Instant::now();
        loop {
            let n = self.count_of("pushes").await?;
            if n >= expected || start.elapsed() >= max_wait {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `expected` messages arrived or `max_wait` passed; returns the count.
    pub(crate) async fn drain(&mut self, expected: u64, max_wait: Duration) -> Result<u64> {
        let start = tokio::time::Instant::now();
        loop {
            let n = self.count().await?;
            if n >= expected || start.elapsed() >= max_wait {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Collects and resets every worker's counters and histogram.
    pub(crate) async fn report(&mut self) -> Result<Report> {
        for w in &mut self.workers {
            w.send("report").await?;
        }
        let mut r = Report {
            received: 0,
            pushes: 0,
            hist: new_hist()?,
            closed: 0,
            seq_gaps: 0,
            seq_reorders: 0,
            close_codes: BTreeMap::new(),
            errors: Vec::new(),
            cpu_s: 0.0,
        };
        for w in &mut self.workers {
            let v = w.event("report", Duration::from_secs(60)).await?;
            r.received += v["received"].as_u64().unwrap_or(0);
            r.pushes += v["pushes"].as_u64().unwrap_or(0);
            r.closed += v["closed"].as_u64().unwrap_or(0);
            r.seq_gaps += v["seq_gaps"].as_u64().unwrap_or(0);
            r.seq_reorders += v["seq_reorders"].as_u64().unwrap_or(0);
            r.cpu_s += v["cpu_s"].as_f64().unwrap_or(0.0);
            let d: HistDump = serde_json::from_value(v["hist"].clone())?;
            d.add_to(&mut r.hist)?;
            if let Some(m) = v["close_codes"].as_object() {
                for (k, c) in m {
                    *r.close_codes.entry(k.clone()).or_default() += c.as_u64().unwrap_or(0);
                }
            }
            r.errors.extend(strs(&v["errors"]));
        }
        r.errors.truncate(8);
        Ok(r)
    }

    /// Sends `start` (churn workers) to every worker.
    pub(crate) async fn start(&mut self) -> Result<()> {
        for w in &mut self.workers {
            w.send("start").await?;
        }
        Ok(())
    }

    /// Waits for every churn worker's `churn_done` event.
    pub(crate) async fn churn_done(&mut self, timeout: Duration) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for w in &mut self.workers {
            out.push(w.event("churn_done", timeout).await?);
        }
        Ok(out)
    }

    /// Recover workers: drops every connection at once (`drop`), then waits for
    /// each worker's `storm` event (all its connections live again, or given up).
    pub(crate) async fn storm(&mut self, timeout: Duration) -> Result<Vec<Value>> {
        for w in &mut self.workers {
            w.send("drop").await?;
        }
        let mut out = Vec::new();
        for w in &mut self.workers {
            out.push(w.event("storm", timeout).await?);
        }
        Ok(out)
    }

    /// Recover workers: how many connections last saw each `seq`.
    pub(crate) async fn positions(&mut self) -> Result<BTreeMap<u64, u64>> {
        for w in &mut self.workers {
            w.send("positions").await?;
        }
        let mut at = BTreeMap::new();
        for w in &mut self.workers {
            let v = w.event("positions", Duration::from_secs(30)).await?;
            if let Some(m) = v["at"].as_object() {
                for (seq, n) in m {
                    if let Ok(seq) = seq.parse::<u64>() {
                        *at.entry(seq).or_default() += n.as_u64().unwrap_or(0);
                    }
                }
            }
        }
        Ok(at)
    }

    /// Tells the workers to quit and waits for them (killing any that hang).
    pub(crate) async fn quit(mut self) {
        for w in &mut self.workers {
            let _ = w.send("quit").await;
        }
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}
