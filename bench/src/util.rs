//! Shared plumbing: the error type, wall-clock stamps, `/proc` readings (CPU ticks,
//! RSS), the stamped benchmark payload and its parsing on the receive side, and the
//! compact histogram form that workers send to the coordinator.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything that can go wrong in the harness.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// An I/O error (sockets, files, child processes).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON (de)serialisation error.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A gRPC call failed.
    #[error("grpc status: {0}")]
    Grpc(#[from] tonic::Status),
    /// The gRPC transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A WebSocket error.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// A histogram could not be created or recorded into.
    #[error("histogram: {0}")]
    Hist(String),
    /// Anything else, described.
    #[error("{0}")]
    Msg(String),
}

/// Result with [`BenchError`].
pub(crate) type Result<T> = std::result::Result<T, BenchError>;

/// Builds a [`BenchError::Msg`].
pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(BenchError::Msg(msg.into()))
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, fixed at 100 on Linux).
pub(crate) const TICKS_PER_S: f64 = 100.0;

/// utime + stime of a process in clock ticks, from `/proc/PID/stat`.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| BenchError::Msg(format!("bad /proc/{pid}/stat")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Msg(format!("bad /proc/{pid}/stat field {i}")))
    };
    Ok(get(11)? + get(12)?)
}

/// CPU seconds of the current process.
pub(crate) fn self_cpu_s() -> f64 {
    cpu_ticks(std::process::id())
        .map(|t| t as f64 / TICKS_PER_S)
        .unwrap_or(0.0)
}

/// Resident memory of a process: (VmRSS, VmHWM) in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The 1-minute load average, if readable.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// Share of all cores busy over the next `ms` milliseconds, in percent (0–100). Taken
/// while the harness runs nothing, it shows how much other work shares the machine.
pub(crate) fn cpu_busy_pct(ms: u64) -> f64 {
    let Some((t0, i0)) = cpu_jiffies() else {
        return 0.0;
    };
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let Some((t1, i1)) = cpu_jiffies() else {
        return 0.0;
    };
    let dt = t1.saturating_sub(t0);
    if dt == 0 {
        return 0.0;
    }
    100.0 * dt.saturating_sub(i1.saturating_sub(i0)) as f64 / dt as f64
}

/// A JSON payload of about `size` bytes carrying the send time: `{"t":NANOS,"pad":"..."}`.
pub(crate) fn stamped_payload(size: usize) -> Vec<u8> {
    let head = format!("{{\"t\":{},\"pad\":\"", now_ns());
    let pad = size.saturating_sub(head.len() + 2).max(1);
    let mut v = Vec::with_capacity(head.len() + pad + 2);
    v.extend_from_slice(head.as_bytes());
    v.resize(head.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// The send stamp in a received frame: the digits after the first `"t":`.
pub(crate) fn parse_stamp(frame: &[u8]) -> Option<u64> {
    let key = b"\"t\":";
    let pos = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &frame[pos..] {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// The `seq` of a received message frame: the digits after the first `"seq":`.
pub(crate) fn parse_seq(frame: &[u8]) -> Option<u64> {
    let key = b"\"seq\":";
    let pos = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = frame[pos..].iter().take_while(|b| b.is_ascii_digit());
    let mut v: u64 = 0;
    let mut any = false;
    for &b in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// The `epoch` of a received message frame: the bytes between the quotes after the
/// first `"epoch":"`.
pub(crate) fn parse_epoch(frame: &[u8]) -> Option<&[u8]> {
    let key = b"\"epoch\":\"";
    let start = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let len = frame[start..].iter().position(|&b| b == b'"')?;
    Some(&frame[start..start + len])
}

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
pub(crate) fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| BenchError::Hist(e.to_string()))
}

/// A histogram as (value, count) pairs of its non-empty buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HistDump(pub Vec<(u64, u64)>);

impl HistDump {
    /// Dumps a histogram.
    pub(crate) fn from_hist(h: &Histogram<u64>) -> Self {
        HistDump(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds the dump into a histogram.
    pub(crate) fn add_to(&self, h: &mut Histogram<u64>) -> Result<()> {
        for &(v, c) in &self.0 {
            h.record_n(v.max(1), c)
                .map_err(|e| BenchError::Hist(e.to_string()))?;
        }
        Ok(())
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Lat {
    /// Samples.
    pub(crate) n: u64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile.
    pub(crate) p999_ms: f64,
    /// Maximum.
    pub(crate) max_ms: f64,
}

impl Lat {
    /// Summarises a microsecond histogram.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Lat::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Lat {
            n: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A small xorshift generator (no need for cryptographic quality here).
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeds from the clock and a salt.
    pub(crate) fn new(salt: u64) -> Self {
        Rng((now_ns() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = stamped_payload(100);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert!(v["t"].as_u64().is_some());
        let frame = format!(
            "{{\"type\":\"message\",\"topic\":\"b\",\"seq\":3,\"data\":{}}}",
            String::from_utf8(p).unwrap()
        );
        assert_eq!(parse_stamp(frame.as_bytes()), v["t"].as_u64());
        assert_eq!(parse_stamp(b"{\"type\":\"subscribed\"}"), None);
        assert_eq!(parse_seq(frame.as_bytes()), Some(3));
        assert_eq!(parse_epoch(frame.as_bytes()), None);
        let with_epoch =
            br#"{"type":"message","topic":"b","seq":4,"epoch":"9f2c3a1b7e01d4c8","data":{}}"#;
        assert_eq!(parse_epoch(with_epoch), Some(&b"9f2c3a1b7e01d4c8"[..]));
    }
}
