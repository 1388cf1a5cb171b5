//! The physical floor (`herald-bench floor-writer`): one thread writing the same
//! WebSocket message frames a broadcaster would send straight onto plain loopback
//! TCP sockets, with no WebSocket layer, no engine and no queues. It reports its CPU
//! per write and the time of one round of writes to all sockets.

use crate::util::{Result, now_ns, self_cpu_s, stamped_payload};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `herald-bench floor-writer`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FloorArgs {
    /// Address to accept reader connections on.
    #[arg(long)]
    pub(crate) listen: SocketAddr,
}

/// The frame Herald would send for a message on topic `bench`: an unmasked text frame.
pub(crate) fn ws_frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut body =
        format!("{{\"type\":\"message\",\"topic\":\"bench\",\"seq\":{seq},\"data\":").into_bytes();
    body.extend_from_slice(payload);
    body.push(b'}');
    let mut f = Vec::with_capacity(body.len() + 4);
    f.push(0x81);
    if body.len() < 126 {
        f.push(body.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&body);
    f
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn publish(conns: &mut [TcpStream], seq: &mut u64, cmd: &Value) -> Value {
    let rate = cmd["rate"].as_f64().unwrap_or(10.0);
    let duration = cmd["duration"].as_f64().unwrap_or(5.0);
    let payload = cmd["payload"].as_u64().unwrap_or(100) as usize;
    let cpu0 = self_cpu_s();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration);
    let mut rounds_ms = Vec::new();
    let mut writes = 0u64;
    let mut failed = 0u64;
    let mut k = 0u64;
    loop {
        // A writer that cannot keep up with `rate` writes fewer rounds: it never
        // runs past `end`.
        if Instant::now() >= end {
            break;
        }
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if due >= end {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        k += 1;
        *seq += 1;
        let frame = ws_frame(*seq, &stamped_payload(payload));
        let t0 = Instant::now();
        for s in conns.iter_mut() {
            if s.write_all(&frame).is_ok() {
                writes += 1;
            } else {
                failed += 1;
            }
        }
        rounds_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = self_cpu_s() - cpu0;
    let elapsed = start.elapsed().as_secs_f64();
    let mut sorted = rounds_ms.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    json!({
        "event": "published",
        "rounds": rounds_ms.len(),
        "writes": writes,
        "failed": failed,
        "cpu_s": cpu,
        "cpu_us_per_write": if writes > 0 { cpu * 1e6 / writes as f64 } else { 0.0 },
        "round_p50_ms": pct(&sorted, 0.5),
        "round_p99_ms": pct(&sorted, 0.99),
        "round_max_ms": sorted.last().copied().unwrap_or(0.0),
        "elapsed_s": elapsed,
        "t_end_ns": now_ns(),
    })
}

fn socket2_listen(addr: SocketAddr) -> Result<TcpListener> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _g = rt.enter();
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    let l = sock.listen(4096)?.into_std()?;
    l.set_nonblocking(false)?;
    Ok(l)
}

/// Runs the floor writer until `quit` or end of stdin.
pub(crate) fn run(args: FloorArgs) -> Result<()> {
    // A deep accept queue (std's default of 128 drops connects in a storm).
    let sock = socket2_listen(args.listen)?;
    let listener: TcpListener = sock;
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let acc = conns.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            match s {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    if let Ok(mut g) = acc.lock() {
                        g.push(s);
                    }
                }
                Err(e) => eprintln!("floor accept: {e}"),
            }
        }
    });
    let mut seq = 0u64;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let cmd: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("floor: bad command {line:?}: {e}");
                continue;
            }
        };
        let reply = match cmd["cmd"].as_str() {
            Some("publish") => match conns.lock() {
                Ok(mut g) => publish(&mut g, &mut seq, &cmd),
                Err(_) => json!({"event": "published", "error": "lock poisoned"}),
            },
            Some("conns") => {
                json!({"event": "conns", "n": conns.lock().map(|g| g.len()).unwrap_or(0)})
            }
            Some("quit") => break,
            _ => json!({"event": "error", "line": line}),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}
