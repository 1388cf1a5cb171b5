//! The load-generator worker process (`herald-bench worker`): holds its share of the
//! client connections on a single-threaded runtime, records publish→receive latency
//! of every stamped message in an HDR histogram, and talks to the coordinator with
//! JSON lines (events on stdout, commands on stdin: `report`, `count`, `start`,
//! `drop`, `positions`, `quit`). It also counts the server-initiated `subscribed` /
//! `unsubscribed` pushes.
//!
//! Modes: `ws` (subscribed WebSocket readers), `slow` (WebSocket clients that stop
//! reading once subscribed), `tcp` (plain TCP readers of the floor writer),
//! `churn` (connect, subscribe, close, at a fixed rate) and `recover` (subscribed
//! readers that keep the last `seq`/`epoch` they saw; on `drop` every connection
//! closes its socket at once, reconnects after a random jitter and resubscribes
//! with `since`, and the worker reports the storm in a `storm` event).

use crate::secure::{Minter, tls_connector};
use crate::util::{
    BenchError, HistDump, Result, Rng, err, new_hist, now_ns, parse_epoch, parse_seq, parse_stamp,
    self_cpu_s,
};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What the worker's connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Subscribed WebSocket readers.
    Ws,
    /// WebSocket clients that subscribe and then never read again.
    Slow,
    /// Plain TCP readers of the floor writer.
    Tcp,
    /// Connect, subscribe and close, `rate` times a second for `duration` seconds.
    Churn,
    /// Subscribed readers of one topic that, on `drop`, reconnect with `since`.
    Recover,
}

/// Arguments of `herald-bench worker`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Connection mode.
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    /// Server address (host:port).
    #[arg(long)]
    pub(crate) target: SocketAddr,
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    pub(crate) path: String,
    /// Source addresses to bind, used round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) src_ips: Vec<IpAddr>,
    /// Number of connections (ws, slow, tcp).
    #[arg(long, default_value_t = 0)]
    pub(crate) conns: u64,
    /// Global index of the first connection (for `user:N` topics).
    #[arg(long, default_value_t = 0)]
    pub(crate) first: u64,
    /// Topics every connection subscribes to.
    #[arg(long, value_delimiter = ',')]
    pub(crate) topics: Vec<String>,
    /// Also subscribe each connection (churn: each cycle) to `user:<index>`.
    #[arg(long)]
    pub(crate) user_topics: bool,
    /// Connect each connection as user `u<index>` (`?user=u<index>`).
    #[arg(long)]
    pub(crate) user_ids: bool,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 128)]
    pub(crate) concurrency: usize,
    /// Churn: connect/subscribe/close cycles per second.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Churn: seconds to churn for.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) duration: f64,
    /// Recover: after a `drop`, each connection reconnects at a uniformly random
    /// moment within this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) jitter_ms: u64,
    /// Receive buffer (SO_RCVBUF) for slow clients, bytes.
    #[arg(long, default_value_t = 4096)]
    pub(crate) slow_rcvbuf: u32,
    /// Connect with a token (`?token=`) of this kind: `hs256` or `es256`; each
    /// connection is user `u<index>`.
    #[arg(long, requires = "token_key")]
    pub(crate) token_alg: Option<String>,
    /// The token signing key: the HMAC secret, or an EC private key (PEM).
    #[arg(long)]
    pub(crate) token_key: Option<PathBuf>,
    /// Connect over TLS (`wss://`), trusting this CA certificate (PEM).
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
}

/// What every connection of a worker shares: tokens and the TLS connector.
#[derive(Default)]
struct Secure {
    /// One token per connection index, minted before the first connect.
    tokens: Vec<String>,
    /// A token minter for churn cycles (tokens minted per cycle).
    minter: Option<Minter>,
    tls: Option<TlsConnector>,
}

impl Secure {
    fn load(a: &WorkerArgs) -> Result<Self> {
        let minter = match (&a.token_alg, &a.token_key) {
            (Some(alg), Some(key)) => Some(Minter::load(alg, key)?),
            _ => None,
        };
        let tokens = match (&minter, a.mode) {
            (Some(m), Mode::Ws | Mode::Slow | Mode::Recover) => (0..a.conns)
                .map(|i| m.mint(&format!("u{}", a.first + i)))
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        let tls = a.tls_ca.as_deref().map(tls_connector).transpose()?;
        Ok(Self {
            tokens,
            minter,
            tls,
        })
    }

    /// The handshake path of connection `idx`.
    fn path(&self, a: &WorkerArgs, idx: u64) -> Result<String> {
        if let Some(token) = self.tokens.get(idx as usize) {
            return Ok(format!("{}?token={token}", a.path));
        }
        if let Some(m) = &self.minter {
            return Ok(format!("{}?token={}", a.path, m.mint(&format!("c{idx}"))?));
        }
        Ok(if a.user_ids {
            format!("{}?user=u{}", a.path, a.first + idx)
        } else {
            a.path.clone()
        })
    }
}

/// A client socket: plain TCP or TLS over it.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    /// Server-initiated `subscribed` / `unsubscribed` pushes (`"server":true`).
    pushes: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    seq_gaps: AtomicU64,
    seq_reorders: AtomicU64,
    t_first: AtomicU64,
    t_last: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
    close_codes: Mutex<BTreeMap<u16, u64>>,
    errors: Mutex<Vec<String>>,
    /// Recover mode: connections reading live (not between a drop and their
    /// resubscription).
    holders: AtomicU64,
    /// Recover mode: messages whose epoch differed from the connection's last one.
    epoch_changes: AtomicU64,
    /// Recover mode: the current storm.
    storm: Storm,
    /// Recover mode: each connection's last `seq`.
    positions: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Shared {
    /// Records a frame; `last` is the connection's last seen `seq` (0 = none yet).
    fn record_seq(&self, frame: &[u8], last: &mut u64) {
        if frame.starts_with(b"{\"type\":\"subscribed\"")
            || frame.starts_with(b"{\"type\":\"unsubscribed\"")
        {
            if frame.windows(13).any(|w| w == b"\"server\":true") {
                self.pushes.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if let Some(seq) = parse_seq(frame) {
            if *last != 0 && seq != *last + 1 {
                if seq <= *last {
                    self.seq_reorders.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.seq_gaps.fetch_add(seq - *last - 1, Ordering::Relaxed);
                }
            }
            *last = seq;
        }
        self.record(frame);
    }

    fn record(&self, frame: &[u8]) {
        if let Some(t) = parse_stamp(frame) {
            let lat_us = now_ns().saturating_sub(t) / 1000;
            self.received.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = self.hist.lock()
                && let Some(h) = g.as_mut()
            {
                h.saturating_record(lat_us.max(1));
            }
        }
    }

    fn error(&self, e: String) {
        if let Ok(mut g) = self.errors.lock()
            && g.len() < 8
        {
            g.push(e);
        }
    }

    fn close_code(&self, code: u16) {
        if let Ok(mut g) = self.close_codes.lock() {
            *g.entry(code).or_default() += 1;
        }
    }

    fn take_hist(&self) -> HistDump {
        match self.hist.lock() {
            Ok(mut g) => match g.as_mut() {
                Some(h) => {
                    let d = HistDump::from_hist(h);
                    h.reset();
                    d
                }
                None => HistDump::default(),
            },
            Err(_) => HistDump::default(),
        }
    }
}

// ---------------------------------------------------------------------------
// Recover mode.

/// Where a connection is in its topic: the last message it saw.
#[derive(Debug, Default)]
struct Position {
    /// Its `seq` (0 = none seen yet).
    seq: u64,
    /// Its `epoch` (empty = none seen yet).
    epoch: String,
    /// `seq`, for the worker's `positions` event.
    shown: Arc<AtomicU64>,
}

/// How a resubscription went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The first subscribe (no `since`).
    First,
    /// `since` sent, `recovered: true`.
    Recovered,
    /// `since` sent, `recovered: false`: the missed messages are lost.
    NotRecovered,
    /// Reconnected without `since`: the connection had seen no message.
    NoPosition,
}

/// The counts of one storm (from a `drop` until every connection is live again),
/// reset by each `drop`.
#[derive(Default)]
struct Storm {
    /// When the `drop` arrived (unix ns).
    t_drop: AtomicU64,
    /// Connections that were reading live when it arrived.
    expected: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    no_position: AtomicU64,
    /// Connections that gave up reconnecting.
    gave_up: AtomicU64,
    /// Reconnect attempts that failed and were retried.
    retries: AtomicU64,
    /// Messages that arrived on a reconnection before its `subscribed` reply.
    replayed: AtomicU64,
    /// The latest `subscribed` reply (unix ns).
    t_live_max: AtomicU64,
    /// Per connection, µs from the drop to its `subscribed` reply, and from the
    /// start of its reconnect (after the jitter) to that reply.
    hists: Mutex<Option<(Histogram<u64>, Histogram<u64>)>>,
}

impl Storm {
    fn start(&self, live: u64) -> Result<()> {
        for c in [
            &self.recovered,
            &self.not_recovered,
            &self.no_position,
            &self.gave_up,
            &self.retries,
            &self.replayed,
            &self.t_live_max,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        if let Ok(mut g) = self.hists.lock() {
            *g = Some((new_hist()?, new_hist()?));
        }
        self.expected.store(live, Ordering::Relaxed);
        self.t_drop.store(now_ns(), Ordering::Relaxed);
        Ok(())
    }

    fn done(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
            + self.not_recovered.load(Ordering::Relaxed)
            + self.no_position.load(Ordering::Relaxed)
            + self.gave_up.load(Ordering::Relaxed)
    }

    /// Records one connection live again; the outcome counter goes last, so a
    /// reader that sees every connection done sees its times too.
    fn live_again(&self, outcome: Outcome, t_reconnect: u64) {
        let now = now_ns();
        self.t_live_max.fetch_max(now, Ordering::Relaxed);
        let t_drop = self.t_drop.load(Ordering::Relaxed);
        if let Ok(mut g) = self.hists.lock()
            && let Some((from_drop, from_reconnect)) = g.as_mut()
        {
            from_drop.saturating_record((now.saturating_sub(t_drop) / 1000).max(1));
            from_reconnect.saturating_record((now.saturating_sub(t_reconnect) / 1000).max(1));
        }
        let c = match outcome {
            Outcome::Recovered => &self.recovered,
            Outcome::NotRecovered => &self.not_recovered,
            Outcome::NoPosition | Outcome::First => &self.no_position,
        };
        c.fetch_add(1, Ordering::Release);
    }
}

impl Shared {
    /// Follows a connection's position through a frame; returns whether it was a
    /// message. A `seq` not one above the last counts as a gap (higher) or a
    /// duplicate (not higher; the position stays); a new epoch starts afresh.
    fn track(&self, frame: &[u8], pos: &mut Position) -> bool {
        if !frame.starts_with(b"{\"type\":\"message\"") {
            return false;
        }
        let Some(seq) = parse_seq(frame) else {
            return false;
        };
        if let Some(epoch) = parse_epoch(frame)
            && epoch != pos.epoch.as_bytes()
        {
            if !pos.epoch.is_empty() {
                self.epoch_changes.fetch_add(1, Ordering::Relaxed);
            }
            pos.epoch = String::from_utf8_lossy(epoch).into_owned();
            pos.seq = seq;
            pos.shown.store(seq, Ordering::Relaxed);
            return true;
        }
        if pos.seq != 0 {
            if seq <= pos.seq {
                self.seq_reorders.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if seq > pos.seq + 1 {
                self.seq_gaps
                    .fetch_add(seq - pos.seq - 1, Ordering::Relaxed);
            }
        }
        pos.seq = seq;
        pos.shown.store(seq, Ordering::Relaxed);
        true
    }
}

/// Connects and subscribes to `topic`, with `since` = `pos` when `reconnect` and
/// a position is known. Messages before the `subscribed` reply are the replay (on
/// a reconnection) and advance `pos`; `recovered: false` moves `pos` to where
/// live delivery continues.
#[allow(clippy::too_many_arguments)]
async fn recover_subscribe(
    sh: &Shared,
    a: &WorkerArgs,
    secure: &Secure,
    src: IpAddr,
    path: &str,
    topic: &str,
    pos: &mut Position,
    reconnect: bool,
) -> Result<(WebSocketStream<Io>, Outcome)> {
    let mut ws = ws_open(src, a.target, path, None, secure.tls.as_ref()).await?;
    let since = reconnect && !pos.epoch.is_empty();
    let mut sub = json!({"type": "subscribe", "id": 1, "topics": [topic]});
    if since {
        sub["since"] = json!({ topic: {"seq": pos.seq, "epoch": pos.epoch} });
    }
    ws.send(Message::text(sub.to_string())).await?;
    loop {
        let frame = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => return err(format!("closed while subscribing: {f:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return err("eof while subscribing"),
        };
        let b = frame.as_bytes();
        if sh.track(b, pos) {
            if reconnect {
                sh.storm.replayed.fetch_add(1, Ordering::Relaxed);
            } else {
                sh.record(b);
            }
            continue;
        }
        if b.starts_with(b"{\"type\":\"error\"") {
            return err(format!("subscribe refused: {}", frame.as_str()));
        }
        if !b.starts_with(b"{\"type\":\"subscribed\"") {
            continue;
        }
        let outcome = match (reconnect, since) {
            (false, _) => Outcome::First,
            (true, false) => Outcome::NoPosition,
            (true, true) => {
                let v: serde_json::Value = serde_json::from_slice(b)?;
                if v["recovered"][topic] == true {
                    Outcome::Recovered
                } else {
                    let p = &v["positions"][topic];
                    pos.seq = p["seq"].as_u64().unwrap_or(0);
                    pos.shown.store(pos.seq, Ordering::Relaxed);
                    pos.epoch = p["epoch"].as_str().unwrap_or_default().to_owned();
                    Outcome::NotRecovered
                }
            }
        };
        return Ok((ws, outcome));
    }
}

/// Reads live messages until a `drop` (true) or the end of the connection (false).
async fn recover_read(
    sh: &Shared,
    ws: &mut WebSocketStream<Io>,
    pos: &mut Position,
    drops: &mut watch::Receiver<u64>,
) -> bool {
    loop {
        tokio::select! {
            r = drops.changed() => return r.is_ok(),
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if sh.track(t.as_bytes(), pos) {
                        sh.record(t.as_bytes());
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    sh.close_code(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                    return false;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    sh.error(format!("read: {e}"));
                    return false;
                }
                None => return false,
            },
        }
    }
}

/// Most attempts to reconnect after a drop.
const RECONNECT_ATTEMPTS: u32 = 5;

/// A recover-mode connection: subscribes, reads live, and on every `drop` closes
/// its socket at once (no close frame, as when a network drops), waits a random
/// jitter, reconnects and resubscribes with `since` = the last seq/epoch it saw.
async fn recover_connection(
    sh: Arc<Shared>,
    a: Arc<WorkerArgs>,
    secure: Arc<Secure>,
    sem: Arc<Semaphore>,
    idx: u64,
    mut drops: watch::Receiver<u64>,
) {
    let src = a.src_ips[(idx as usize) % a.src_ips.len()];
    let mut rng = Rng::new(a.first + idx);
    let (topic, path) = match (a.topics.first(), secure.path(&a, idx)) {
        (Some(t), Ok(p)) => (t.clone(), p),
        (None, _) => {
            sh.error("recover mode needs a topic".into());
            mark_done(&sh, false);
            return;
        }
        (_, Err(e)) => {
            sh.error(format!("token: {e}"));
            mark_done(&sh, false);
            return;
        }
    };
    let mut pos = Position::default();
    if let Ok(mut g) = sh.positions.lock() {
        g.push(pos.shown.clone());
    }
    let permit = sem.acquire().await;
    let first = tokio::time::timeout(
        Duration::from_secs(60),
        recover_subscribe(&sh, &a, &secure, src, &path, &topic, &mut pos, false),
    )
    .await;
    drop(permit);
    let mut ws = match first {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            sh.error(format!("connect: {e}"));
            mark_done(&sh, false);
            return;
        }
        Err(_) => {
            sh.error("connect+subscribe timed out".into());
            mark_done(&sh, false);
            return;
        }
    };
    sh.holders.fetch_add(1, Ordering::Relaxed);
    mark_done(&sh, true);
    loop {
        let dropped = recover_read(&sh, &mut ws, &mut pos, &mut drops).await;
        sh.holders.fetch_sub(1, Ordering::Relaxed);
        drop(ws);
        if !dropped {
            sh.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let jitter_us = rng.below(a.jitter_ms * 1000 + 1);
        tokio::time::sleep(Duration::from_micros(jitter_us)).await;
        let t_reconnect = now_ns();
        let mut attempt = 0;
        ws = loop {
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                recover_subscribe(&sh, &a, &secure, src, &path, &topic, &mut pos, true),
            )
            .await;
            let e = match r {
                Ok(Ok((ws, outcome))) => {
                    sh.holders.fetch_add(1, Ordering::Relaxed);
                    sh.storm.live_again(outcome, t_reconnect);
                    break ws;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            attempt += 1;
            if attempt >= RECONNECT_ATTEMPTS {
                sh.error(format!("reconnect: gave up after {attempt} attempts: {e}"));
                sh.storm.gave_up.fetch_add(1, Ordering::Release);
                sh.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            sh.storm.retries.fetch_add(1, Ordering::Relaxed);
            sh.error(format!("reconnect attempt {attempt}: {e}"));
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        };
    }
}

/// Waits until every connection that was live at the `drop` is live again (or
/// gave up), at most `max_wait`, and reports the storm.
async fn storm_report(sh: Arc<Shared>, max_wait: Duration) {
    let start = tokio::time::Instant::now();
    let expected = sh.storm.expected.load(Ordering::Relaxed);
    while sh.storm.done() < expected && start.elapsed() < max_wait {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st = &sh.storm;
    let (from_drop, from_reconnect) = match st.hists.lock() {
        Ok(g) => g
            .as_ref()
            .map(|(d, r)| (HistDump::from_hist(d), HistDump::from_hist(r)))
            .unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let errors = sh.errors.lock().map(|g| g.clone()).unwrap_or_default();
    emit(json!({
        "event": "storm",
        "expected": expected,
        "timed_out": st.done() < expected,
        "t_drop_ns": st.t_drop.load(Ordering::Relaxed),
        "t_live_max_ns": st.t_live_max.load(Ordering::Acquire),
        "recovered": st.recovered.load(Ordering::Acquire),
        "not_recovered": st.not_recovered.load(Ordering::Acquire),
        "no_position": st.no_position.load(Ordering::Acquire),
        "gave_up": st.gave_up.load(Ordering::Acquire),
        "retries": st.retries.load(Ordering::Relaxed),
        "replayed": st.replayed.load(Ordering::Relaxed),
        "from_drop_hist": from_drop,
        "from_reconnect_hist": from_reconnect,
        "errors": errors,
        "cpu_s": self_cpu_s(),
    }));
}

// ---------------------------------------------------------------------------

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Opens a TCP connection from `src` (port chosen by the kernel) to `dst`.
pub(crate) async fn tcp_connect(
    src: IpAddr,
    dst: SocketAddr,
    rcvbuf: Option<u32>,
) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b)?;
    }
    sock.bind(SocketAddr::new(src, 0))?;
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Opens a WebSocket connection (over TLS with `tls`), not yet subscribed.
async fn ws_open(
    src: IpAddr,
    dst: SocketAddr,
    path: &str,
    rcvbuf: Option<u32>,
    tls: Option<&TlsConnector>,
) -> Result<WebSocketStream<Io>> {
    let tcp = tcp_connect(src, dst, rcvbuf).await?;
    let (io, url) = match tls {
        Some(tls) => {
            let name = rustls_pki_types::ServerName::IpAddress(dst.ip().into());
            let stream = tls.connect(name, tcp).await?;
            (Io::Tls(Box::new(stream)), format!("wss://{dst}{path}"))
        }
        None => (Io::Plain(tcp), format!("ws://{dst}{path}")),
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, io, Some(ws_config())).await?;
    Ok(ws)
}

/// Connects a WebSocket client and subscribes it; returns once `subscribed` arrived
/// (with no topics: once the `connected` frame arrived).
pub(crate) async fn ws_connect_subscribe(
    src: IpAddr,
    dst: SocketAddr,
    path: &str,
    topics: &[String],
    rcvbuf: Option<u32>,
    tls: Option<&TlsConnector>,
) -> Result<WebSocketStream<Io>> {
    let mut ws = ws_open(src, dst, path, rcvbuf, tls).await?;
    let wanted = if topics.is_empty() {
        "\"type\":\"connected\""
    } else {
        let sub = json!({"type": "subscribe", "id": 1, "topics": topics}).to_string();
        ws.send(Message::text(sub)).await?;
        "\"type\":\"subscribed\""
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let s = t.as_str();
                if s.contains(wanted) {
                    return Ok(ws);
                }
                if s.contains("\"type\":\"error\"") {
                    return err(format!("subscribe refused: {s}"));
                }
            }
            Some(Ok(Message::Close(f))) => return err(format!("closed while subscribing: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return err("eof while subscribing"),
        }
    }
}

async fn ws_read_loop(sh: &Shared, mut ws: WebSocketStream<Io>) {
    let mut last = 0u64;
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Text(t)) => sh.record_seq(t.as_bytes(), &mut last),
            Ok(Message::Close(f)) => {
                sh.close_code(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                sh.error(format!("read: {e}"));
                break;
            }
        }
    }
    sh.closed.fetch_add(1, Ordering::Relaxed);
}

/// Reads unmasked WebSocket frames written by the floor writer straight onto TCP.
async fn tcp_read_loop(sh: &Shared, mut s: TcpStream) {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0usize;
    let mut last = 0u64;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match s.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                sh.error(format!("tcp read: {e}"));
                break;
            }
        };
        filled += n;
        let mut pos = 0;
        while filled - pos >= 2 {
            let b1 = buf[pos + 1] & 0x7f;
            let (hdr, len) = match b1 {
                126 if filled - pos >= 4 => (
                    4,
                    usize::from(u16::from_be_bytes([buf[pos + 2], buf[pos + 3]])),
                ),
                126 | 127 => break,
                l => (2, usize::from(l)),
            };
            if filled - pos < hdr + len {
                break;
            }
            sh.record_seq(&buf[pos + hdr..pos + hdr + len], &mut last);
            pos += hdr + len;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
    }
    sh.closed.fetch_add(1, Ordering::Relaxed);
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

fn mark_done(sh: &Shared, ok: bool) {
    let now = now_ns();
    if ok {
        sh.connected.fetch_add(1, Ordering::Relaxed);
    } else {
        sh.failed.fetch_add(1, Ordering::Relaxed);
    }
    sh.t_last.fetch_max(now, Ordering::Relaxed);
}

async fn hold_connection(
    sh: Arc<Shared>,
    a: Arc<WorkerArgs>,
    secure: Arc<Secure>,
    sem: Arc<Semaphore>,
    idx: u64,
) {
    let src = a.src_ips[(idx as usize) % a.src_ips.len()];
    let mut topics = a.topics.clone();
    if a.user_topics {
        topics.push(format!("user:{}", a.first + idx));
    }
    let rcvbuf = (a.mode == Mode::Slow).then_some(a.slow_rcvbuf);
    let path = match secure.path(&a, idx) {
        Ok(path) => path,
        Err(e) => {
            sh.error(format!("token: {e}"));
            mark_done(&sh, false);
            return;
        }
    };
    let permit = sem.acquire().await;
    let res = match a.mode {
        Mode::Tcp => tcp_connect(src, a.target, None).await.map(either_tcp),
        _ => tokio::time::timeout(
            Duration::from_secs(60),
            ws_connect_subscribe(src, a.target, &path, &topics, rcvbuf, secure.tls.as_ref()),
        )
        .await
        .map_err(|_| BenchError::Msg("connect+subscribe timed out".into()))
        .and_then(|r| r.map(either_ws)),
    };
    drop(permit);
    match res {
        Ok(conn) => {
            mark_done(&sh, true);
            match conn {
                Conn::Tcp(s) => tcp_read_loop(&sh, s).await,
                Conn::Ws(ws) if a.mode == Mode::Slow => {
                    // Never read again; keep the socket open until the process ends.
                    let _keep = ws;
                    std::future::pending::<()>().await;
                }
                Conn::Ws(ws) => ws_read_loop(&sh, *ws).await,
            }
        }
        Err(e) => {
            sh.error(format!("connect: {e}"));
            mark_done(&sh, false);
        }
    }
}

enum Conn {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<Io>>),
}

fn either_tcp(s: TcpStream) -> Conn {
    Conn::Tcp(s)
}

fn either_ws(s: WebSocketStream<Io>) -> Conn {
    Conn::Ws(Box::new(s))
}

/// One churn cycle: connect, subscribe (with `--user-topics` also to the cycle's own
/// `user:<first + idx>`), close.
async fn churn_cycle(sh: Arc<Shared>, a: Arc<WorkerArgs>, secure: Arc<Secure>, idx: u64) {
    let src = a.src_ips[(idx as usize) % a.src_ips.len()];
    let mut topics = a.topics.clone();
    if a.user_topics {
        topics.push(format!("user:{}", a.first + idx));
    }
    let t0 = now_ns();
    let path = match secure.path(&a, idx) {
        Ok(path) => path,
        Err(e) => {
            sh.error(format!("token: {e}"));
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        ws_connect_subscribe(src, a.target, &path, &topics, None, secure.tls.as_ref()),
    )
    .await;
    match r {
        Ok(Ok(mut ws)) => {
            let cycle_us = (now_ns().saturating_sub(t0) / 1000).max(1);
            if let Ok(mut g) = sh.hist.lock()
                && let Some(h) = g.as_mut()
            {
                h.saturating_record(cycle_us);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
            sh.connected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            sh.error(format!("churn: {e}"));
            sh.failed.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            sh.error("churn: timed out".into());
            sh.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn churn(sh: Arc<Shared>, a: Arc<WorkerArgs>, secure: Arc<Secure>) {
    let total = (a.rate * a.duration).round() as u64;
    let start = tokio::time::Instant::now();
    let t0 = now_ns();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut started = 0u64;
    while started < total {
        let due = ((start.elapsed().as_secs_f64() * a.rate) as u64 + 1).min(total);
        while started < due {
            tasks.push(tokio::spawn(churn_cycle(
                sh.clone(),
                a.clone(),
                secure.clone(),
                started,
            )));
            started += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let errors = sh.errors.lock().map(|g| g.clone()).unwrap_or_default();
    emit(json!({
        "event": "churn_done",
        "cycles": sh.connected.load(Ordering::Relaxed),
        "failed": sh.failed.load(Ordering::Relaxed),
        "elapsed_s": (now_ns() - t0) as f64 / 1e9,
        "cycle_hist": sh.take_hist(),
        "errors": errors,
        "cpu_s": self_cpu_s(),
    }));
}

/// Runs the worker process until `quit` or end of stdin.
pub(crate) fn run(args: WorkerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let a = Arc::new(args);
        let sh = Arc::new(Shared::default());
        if let Ok(mut g) = sh.hist.lock() {
            *g = Some(new_hist()?);
        }
        let n = a.conns;
        let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
        // Tokens are minted before the clock starts.
        let secure = Arc::new(Secure::load(&a)?);
        let t_first = now_ns();
        sh.t_first.store(t_first, Ordering::Relaxed);
        let (drop_tx, drop_rx) = watch::channel(0u64);
        if a.mode != Mode::Churn {
            for i in 0..n {
                if a.mode == Mode::Recover {
                    tokio::spawn(recover_connection(
                        sh.clone(),
                        a.clone(),
                        secure.clone(),
                        sem.clone(),
                        i,
                        drop_rx.clone(),
                    ));
                    continue;
                }
                tokio::spawn(hold_connection(
                    sh.clone(),
                    a.clone(),
                    secure.clone(),
                    sem.clone(),
                    i,
                ));
            }
            // Wait until every connection is up (or failed).
            loop {
                let done = sh.connected.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed);
                if done >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let errors = sh.errors.lock().map(|g| g.clone()).unwrap_or_default();
        emit(json!({
            "event": "ready",
            "connected": sh.connected.load(Ordering::Relaxed),
            "failed": sh.failed.load(Ordering::Relaxed),
            "t_first_ns": t_first,
            "t_last_ns": sh.t_last.load(Ordering::Relaxed).max(t_first),
            "errors": errors,
            "cpu_s": self_cpu_s(),
        }));
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            match line.trim() {
                "count" => emit(json!({
                    "event": "count",
                    "received": sh.received.load(Ordering::Relaxed),
                    "pushes": sh.pushes.load(Ordering::Relaxed),
                })),
                "report" => {
                    let hist = sh.take_hist();
                    let codes = sh.close_codes.lock().map(|g| g.clone()).unwrap_or_default();
                    let errors = sh.errors.lock().map(|g| g.clone()).unwrap_or_default();
                    emit(json!({
                        "event": "report",
                        "received": sh.received.swap(0, Ordering::Relaxed),
                        "pushes": sh.pushes.swap(0, Ordering::Relaxed),
                        "hist": hist,
                        "closed": sh.closed.load(Ordering::Relaxed),
                        "seq_gaps": sh.seq_gaps.load(Ordering::Relaxed),
                        "seq_reorders": sh.seq_reorders.load(Ordering::Relaxed),
                        "close_codes": codes,
                        "errors": errors,
                        "cpu_s": self_cpu_s(),
                    }));
                }
                "start" if a.mode == Mode::Churn => {
                    tokio::spawn(churn(sh.clone(), a.clone(), secure.clone()));
                }
                "positions" if a.mode == Mode::Recover => {
                    let seqs: Vec<u64> = sh
                        .positions
                        .lock()
                        .map(|g| g.iter().map(|p| p.load(Ordering::Relaxed)).collect())
                        .unwrap_or_default();
                    let mut at: BTreeMap<u64, u64> = BTreeMap::new();
                    for s in seqs {
                        *at.entry(s).or_default() += 1;
                    }
                    emit(json!({"event": "positions", "at": at}));
                }
                "drop" if a.mode == Mode::Recover => {
                    sh.storm.start(sh.holders.load(Ordering::Relaxed))?;
                    drop_tx.send_modify(|g| *g += 1);
                    tokio::spawn(storm_report(sh.clone(), Duration::from_secs(180)));
                }
                "quit" => break,
                other => eprintln!("worker: unknown command {other:?}"),
            }
        }
        Ok(())
    })
}
