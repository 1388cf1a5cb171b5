//! `hostile`: a well-behaved client's delivery while others send bad input.
//!
//! A few hundred clients take a 10 Hz topic. The steady phase measures their
//! delivery; the second phase measures it again while attacker tasks in this
//! process send the classes of bad input of docs/security.md in turn, at a fixed
//! total rate: garbage instead of HTTP, upgrades without `Upgrade`, frames over the
//! size limit, invalid UTF-8, deeply nested JSON, ping and command floods — plus a
//! set of sockets that send their headers one byte at a time and are held open.
//! Reported: the subscribers' p99 before and during, how each attack was answered
//! (HTTP status or close code), and the engine's RSS. Herald only.

use crate::pool::{Pool, Spec};
use crate::producer::Producer;
use crate::report::RunDoc;
use crate::scenarios::{Common, measure_phase};
use crate::servers::{Server, Target};
use crate::util::{Result, err};
use crate::worker::Mode;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// `hostile` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HostileArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Subscribed, well-behaved connections on the measured topic `bench`.
    #[arg(long, default_value_t = 300)]
    pub(crate) conns: u64,
    /// Publish rate on `bench`, Hz.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Attacks started per second, all classes together.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) attack_rate: f64,
    /// Sockets that send their request one byte every 500 ms, held open meanwhile.
    #[arg(long, default_value_t = 100)]
    pub(crate) slow_sockets: u64,
}

/// The attack classes, in the order they take turns.
const CLASSES: [&str; 7] = [
    "garbage",
    "no_upgrade",
    "oversize_frame",
    "invalid_utf8",
    "nested_json",
    "ping_flood",
    "command_flood",
];

/// How each attack class was answered: outcome → count.
type Outcomes = Arc<Mutex<BTreeMap<String, BTreeMap<String, u64>>>>;

fn record(outcomes: &Outcomes, class: &str, outcome: String) {
    if let Ok(mut g) = outcomes.lock() {
        *g.entry(class.into())
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }
}

/// The first line of an HTTP answer, or how the socket ended.
async fn http_answer(mut s: TcpStream) -> String {
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed without an answer".into(),
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        Ok(Err(e)) => format!("error: {}", e.kind()),
        Err(_) => "no answer in 5 s".into(),
    }
}

/// A masked client frame (FIN set) with `opcode` and `payload`.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x5a, 0x17, 0xc3, 0x8e];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The close code a WebSocket connection ends with, reading everything before it.
async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                return format!("close {}", f.map(|f| u16::from(f.code)).unwrap_or(1005));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return format!("error: {e}"),
            Ok(None) => return "ended without a close frame".into(),
            Err(_) => return "still open after 10 s".into(),
        }
    }
}

/// One attack of `class` against the WebSocket listener at `ws`.
async fn attack(class: &str, ws: SocketAddr) -> String {
    let url = format!("ws://{ws}/ws");
    let connect = || async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .map(|(s, _)| s)
    };
    match class {
        "garbage" => match TcpStream::connect(ws).await {
            Ok(mut s) => {
                let _ = s
                    .write_all(b"\x16\x03\x01garbage \x00\xff not http\r\n\r\n")
                    .await;
                http_answer(s).await
            }
            Err(e) => format!("connect: {}", e.kind()),
        },
        "no_upgrade" => match TcpStream::connect(ws).await {
            Ok(mut s) => {
                let _ = s
                    .write_all(b"GET /ws HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await;
                http_answer(s).await
            }
            Err(e) => format!("connect: {}", e.kind()),
        },
        "oversize_frame" | "nested_json" | "ping_flood" | "command_flood" => {
            let mut s = match connect().await {
                Ok(s) => s,
                Err(e) => return format!("connect: {e}"),
            };
            let sent = match class {
                "oversize_frame" => s.send(Message::text("x".repeat(1 << 20))).await,
                "nested_json" => {
                    let depth = 20_000;
                    let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                    s.send(Message::text(text)).await
                }
                "ping_flood" => {
                    let mut r = Ok(());
                    for _ in 0..2000 {
                        r = s.feed(Message::Ping(vec![0u8; 8].into())).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    if r.is_ok() { s.flush().await } else { r }
                }
                _ => {
                    let mut r = Ok(());
                    for i in 0..2000 {
                        let cmd = json!({"type": "bogus", "id": i}).to_string();
                        r = s.feed(Message::text(cmd)).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    if r.is_ok() { s.flush().await } else { r }
                }
            };
            if let Err(e) = sent {
                return format!("send: {e}");
            }
            if class == "nested_json" || class == "ping_flood" {
                // Answered (an error reply, pongs) without a close: done.
                let _ = s.close(None).await;
                return "answered, connection kept".into();
            }
            close_code(&mut s).await
        }
        "invalid_utf8" => {
            let mut s = match TcpStream::connect(ws).await {
                Ok(s) => s,
                Err(e) => return format!("connect: {}", e.kind()),
            };
            let req = "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
            let _ = s.write_all(req.as_bytes()).await;
            let _ = s.write_all(&masked_frame(0x1, b"\xff\xfe not utf-8")).await;
            // Read the 101 answer and whatever follows it, up to the engine's close.
            let mut raw = s;
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::time::timeout_at(until, raw.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                }
            }
            match seen.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    // A close frame: 0x88, length, then the code.
                    let frames = &seen[end + 4..];
                    match frames.iter().position(|b| *b == 0x88) {
                        Some(i) if frames.len() >= i + 4 => {
                            format!(
                                "close {}",
                                u16::from_be_bytes([frames[i + 2], frames[i + 3]])
                            )
                        }
                        _ => "ended without a close frame".into(),
                    }
                }
                None => "no upgrade answer".into(),
            }
        }
        other => format!("unknown class {other}"),
    }
}

/// Holds a socket that sends its request one byte every 500 ms; returns how it ended.
async fn slow_headers(ws: SocketAddr, stop: Instant) -> String {
    let Ok(mut s) = TcpStream::connect(ws).await else {
        return "connect failed".into();
    };
    let req = b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n";
    let mut i = 0;
    while Instant::now() < stop {
        if s.write_all(&req[i % req.len()..=i % req.len()])
            .await
            .is_err()
        {
            return "closed by the engine".into();
        }
        i += 1;
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return "closed by the engine".into(),
            Ok(Ok(_)) => return "answered".into(),
            Err(_) => {}
        }
    }
    "still open at the end".into()
}

/// Runs `hostile`.
pub(crate) async fn hostile(a: HostileArgs) -> Result<()> {
    let c = &a.common;
    let mut doc = RunDoc::new("hostile");
    let mut server = Server::start(
        Target::Herald,
        &c.herald_bin,
        &c.herald_args,
        &c.out_dir.join("logs"),
    )
    .await?;
    let Some(grpc) = server.grpc_addr else {
        return err("Herald serves no gRPC address");
    };
    let ws = server.ws_addr;
    let producer = Producer::connect(grpc).await?;
    let mut spec = Spec::readers(Mode::Ws, ws, a.conns, &["bench"]);
    spec.concurrency = c.concurrency;
    spec.per_worker = c.per_worker;
    let mut pool = Pool::spawn(&spec)?;
    let ready = pool.ready(Duration::from_secs(300)).await?;

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

    // The attackers run for the whole second phase.
    let outcomes: Outcomes = Arc::default();
    let stop = Instant::now() + Duration::from_secs_f64(a.duration);
    let mut slow = Vec::new();
    for _ in 0..a.slow_sockets {
        slow.push(tokio::spawn(slow_headers(ws, stop)));
    }
    let attackers = {
        let outcomes = outcomes.clone();
        let rate = a.attack_rate.max(0.1);
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop {
                let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                while n < due {
                    let class = CLASSES[(n as usize) % CLASSES.len()];
                    let outcomes = outcomes.clone();
                    tasks.push(tokio::spawn(async move {
                        let outcome = attack(class, ws).await;
                        record(&outcomes, class, outcome);
                    }));
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for t in tasks {
                let _ = t.await;
            }
            n
        })
    };
    let mut under = measure_phase(
        &server,
        &producer,
        &mut pool,
        ready.connected,
        (a.rate, a.duration, c.payload),
    )
    .await?;
    let attacks = attackers.await.unwrap_or(0);
    for s in slow {
        let outcome = s.await.unwrap_or_else(|_| "task failed".into());
        record(&outcomes, "slow_headers", outcome);
    }
    let (rss_after, hwm) = server.rss();
    let outcomes = outcomes.lock().map(|g| g.clone()).unwrap_or_default();
    let answers: Vec<String> = outcomes
        .iter()
        .map(|(class, o)| {
            let o: Vec<String> = o.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
            format!("{class}: {}", o.join(", "))
        })
        .collect();
    under.phase = format!(
        "{attacks} attacks ({} /s) and {} slow-header sockets",
        a.attack_rate, a.slow_sockets
    );
    under.note = answers.join("; ");
    under.peak_rss_mib = hwm as f64 / 1024.0;
    under.extra.insert("outcomes".into(), json!(outcomes));
    under.extra.insert(
        "rss_kib".into(),
        json!({"before": rss_before, "after": rss_after}),
    );
    let alive = server.alive();
    pool.quit().await;
    server.stop().await;
    doc.summary.push(format!(
        "herald: {} subscribers on a {} Hz topic; p99 {:.2} ms steady, {:.2} ms under {attacks} attacks and {} slow-header sockets ({}); delivered {:.4}% under attack; RSS {:.1} MiB before, {:.1} MiB after",
        ready.connected,
        a.rate,
        steady.lat.p99_ms,
        under.lat.p99_ms,
        a.slow_sockets,
        if steady.lat.p99_ms > 0.0 {
            format!("{:.2}×", under.lat.p99_ms / steady.lat.p99_ms)
        } else {
            "n/a".into()
        },
        under.delivered_frac * 100.0,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
    ));
    doc.rows.push(steady.clone());
    doc.rows.push(under.clone());
    let path = doc.save(&c.out_dir, c.markdown.as_deref())?;
    println!("{}", doc.markdown());
    eprintln!("results: {}", path.display());
    if !alive {
        return err("herald died during the run (see its log under the results dir)");
    }
    if c.strict {
        for r in [&steady, &under] {
            if r.delivered < r.expected {
                return err(format!(
                    "hostile {}: delivered {} of {}",
                    r.phase, r.delivered, r.expected
                ));
            }
        }
    }
    Ok(())
}
