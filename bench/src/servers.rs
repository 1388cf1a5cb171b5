//! The systems under test as child processes: Herald itself, the naive broadcaster
//! and the floor writer, plus the nats-server a Herald cluster runs on. Starts each
//! on free loopback ports, waits until it listens, reads its CPU and memory from
//! `/proc` (and nats-server's counters from its monitoring endpoint), and stops it.

use crate::util::{BenchError, Result, TICKS_PER_S, cpu_ticks, err, rss_kib};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Which system a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Target {
    /// Plain loopback TCP writes from one thread: the physical floor.
    Floor,
    /// The deliberately naive broadcaster.
    Naive,
    /// Herald.
    Herald,
}

impl Target {
    /// Lower-case name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Floor => "floor",
            Target::Naive => "naive",
            Target::Herald => "herald",
        }
    }
}

/// A free loopback port (bound and released at once).
pub(crate) fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A running system under test.
pub(crate) struct Server {
    /// What it is.
    pub(crate) target: Target,
    child: Child,
    /// Its process id.
    pub(crate) pid: u32,
    /// WebSocket (or, for the floor, plain TCP) address.
    pub(crate) ws_addr: SocketAddr,
    /// gRPC address (Herald and naive).
    pub(crate) grpc_addr: Option<SocketAddr>,
    floor_io: Option<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

async fn wait_listening(addr: SocketAddr, child: &mut Child) -> Result<()> {
    for _ in 0..600 {
        if let Some(st) = child.try_wait()? {
            return err(format!("server exited early: {st}"));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    err(format!("server did not listen on {addr} within 30 s"))
}

impl Server {
    /// Starts `target`. `herald_bin` is Herald's binary, `extra` extra Herald flags,
    /// `log_dir` where its stderr goes.
    pub(crate) async fn start(
        target: Target,
        herald_bin: &Path,
        extra: &[String],
        log_dir: &Path,
    ) -> Result<Server> {
        let exe = std::env::current_exe()?;
        let ws_addr = free_port()?;
        std::fs::create_dir_all(log_dir)?;
        let log_path: PathBuf = log_dir.join(format!("{}.log", target.name()));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd;
        let mut grpc_addr = None;
        match target {
            Target::Herald => {
                let g = free_port()?;
                cmd = Command::new(herald_bin);
                cmd.arg("--ws-addr")
                    .arg(ws_addr.to_string())
                    .arg("--grpc-addr")
                    .arg(g.to_string())
                    .arg("--log-format")
                    .arg("text")
                    .args(extra)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                grpc_addr = Some(g);
            }
            Target::Naive => {
                let g = free_port()?;
                cmd = Command::new(&exe);
                cmd.stdin(Stdio::piped());
                cmd.arg("naive")
                    .arg("--ws-addr")
                    .arg(ws_addr.to_string())
                    .arg("--grpc-addr")
                    .arg(g.to_string())
                    .stdout(Stdio::null());
                grpc_addr = Some(g);
            }
            Target::Floor => {
                cmd = Command::new(&exe);
                cmd.arg("floor-writer")
                    .arg("--listen")
                    .arg(ws_addr.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
            }
        }
        cmd.stderr(Stdio::from(log)).kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Msg(format!("cannot start {}: {e}", target.name())))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Msg("child has no pid".into()))?;
        let mut floor_io = None;
        if target == Target::Floor {
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| BenchError::Msg("no floor stdin".into()))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| BenchError::Msg("no floor stdout".into()))?;
            floor_io = Some((stdin, BufReader::new(stdout).lines()));
        }
        wait_listening(ws_addr, &mut child).await?;
        if let Some(g) = grpc_addr {
            wait_listening(g, &mut child).await?;
        }
        Ok(Server {
            target,
            child,
            pid,
            ws_addr,
            grpc_addr,
            floor_io,
        })
    }

    /// CPU seconds used so far.
    pub(crate) fn cpu_s(&self) -> f64 {
        cpu_ticks(self.pid)
            .map(|t| t as f64 / TICKS_PER_S)
            .unwrap_or(0.0)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub(crate) fn rss(&self) -> (u64, u64) {
        rss_kib(self.pid).unwrap_or((0, 0))
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Floor only: waits until the writer has accepted `n` connections.
    pub(crate) async fn floor_wait_conns(&mut self, n: u64) -> Result<()> {
        let (stdin, lines) = self
            .floor_io
            .as_mut()
            .ok_or_else(|| BenchError::Msg("not a floor writer".into()))?;
        for _ in 0..600 {
            stdin.write_all(b"{\"cmd\":\"conns\"}\n").await?;
            stdin.flush().await?;
            let mut have = 0;
            while let Some(l) = lines.next_line().await? {
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && v["event"] == "conns"
                {
                    have = v["n"].as_u64().unwrap_or(0);
                    break;
                }
            }
            if have >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        err(format!(
            "floor writer did not accept {n} connections within 30 s"
        ))
    }

    /// Floor only: write rounds at `rate` Hz (0 = back to back) for `duration` s.
    pub(crate) async fn floor_publish(
        &mut self,
        rate: f64,
        duration: f64,
        payload: usize,
    ) -> Result<Value> {
        let (stdin, lines) = self
            .floor_io
            .as_mut()
            .ok_or_else(|| BenchError::Msg("not a floor writer".into()))?;
        let cmd = serde_json::json!({"cmd": "publish", "rate": rate, "duration": duration, "payload": payload});
        stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        stdin.flush().await?;
        let wait = Duration::from_secs_f64(duration + 120.0);
        let fut = async {
            while let Some(l) = lines.next_line().await? {
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && v["event"] == "published"
                {
                    return Ok(v);
                }
            }
            err("floor writer exited")
        };
        tokio::time::timeout(wait, fut)
            .await
            .map_err(|_| BenchError::Msg("floor writer timed out".into()))?
    }

    /// Stops the process (SIGKILL; the systems under test keep no state).
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The nats-server binary: `explicit` (--nats-server or $HERALD_NATS_SERVER), else
/// `.tools/bin/nats-server` (where scripts/install-nats-server puts it), else
/// `nats-server` on the PATH.
pub(crate) fn nats_server_bin(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let local = PathBuf::from(".tools/bin/nats-server");
    if local.is_file() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A nats-server child process with JetStream on, listening on loopback with its
/// HTTP monitoring endpoint (`-m`) on a port of its own.
pub(crate) struct NatsServer {
    child: Child,
    /// Its process id.
    pub(crate) pid: u32,
    /// Client port address.
    pub(crate) addr: SocketAddr,
    /// Monitoring (HTTP) address.
    pub(crate) monitor: SocketAddr,
    store: PathBuf,
}

impl NatsServer {
    /// Starts `bin` with JetStream storing under `work_dir/nats-store-<port>` and
    /// its log in `work_dir/nats-server.log`.
    pub(crate) async fn start(bin: &Path, work_dir: &Path) -> Result<NatsServer> {
        let addr = free_port()?;
        let monitor = free_port()?;
        let store = work_dir.join(format!("nats-store-{}", addr.port()));
        std::fs::create_dir_all(&store)?;
        let log = std::fs::File::create(work_dir.join("nats-server.log"))?;
        let mut child = Command::new(bin)
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(addr.port().to_string())
            .arg("-m")
            .arg(monitor.port().to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Msg(format!("cannot start {}: {e}", bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Msg("nats-server has no pid".into()))?;
        wait_listening(addr, &mut child).await?;
        wait_listening(monitor, &mut child).await?;
        Ok(NatsServer {
            child,
            pid,
            addr,
            monitor,
            store,
        })
    }

    /// `nats://ADDR`.
    pub(crate) fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// CPU seconds used so far.
    pub(crate) fn cpu_s(&self) -> f64 {
        cpu_ticks(self.pid)
            .map(|t| t as f64 / TICKS_PER_S)
            .unwrap_or(0.0)
    }

    /// A monitoring endpoint's JSON (`/varz`, `/subsz`, `/connz?subs=1`, …).
    pub(crate) async fn monitor(&self, path: &str) -> Result<Value> {
        http_get_json(self.monitor, path).await
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server and removes its JetStream store.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// GET `path` from a plain-HTTP server at `addr` and parse the body as JSON.
pub(crate) async fn http_get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let body = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| &buf[i + 4..])
            .ok_or_else(|| BenchError::Msg(format!("no HTTP body from {addr}{path}")))?;
        Ok::<Value, BenchError>(serde_json::from_slice(body)?)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| BenchError::Msg(format!("GET {addr}{path} timed out")))?
}
