//! Results: one row per measured (target, parameters) point, written as a JSON file
//! under the results directory and, when asked, appended to a markdown file as a
//! section with the exact command, the date, the core count and the load.

use crate::util::{Lat, Result, loadavg, now_ns};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One measured point.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Row {
    /// floor, naive or herald.
    pub(crate) target: String,
    /// What the row is (scenario phase or step).
    pub(crate) phase: String,
    /// Subscribed connections.
    pub(crate) conns: u64,
    /// Publish rate, messages per second.
    pub(crate) rate_hz: f64,
    /// Publishing time, seconds.
    pub(crate) duration_s: f64,
    /// Messages accepted by the engine (rounds for the floor).
    pub(crate) published: u64,
    /// Deliveries expected.
    pub(crate) expected: u64,
    /// Deliveries seen by the clients.
    pub(crate) delivered: u64,
    /// delivered / expected.
    pub(crate) delivered_frac: f64,
    /// Publish→receive latency.
    pub(crate) lat: Lat,
    /// Deliveries per second of publishing time.
    pub(crate) deliveries_per_s: f64,
    /// Engine CPU seconds (utime+stime) during the phase.
    pub(crate) engine_cpu_s: f64,
    /// Engine CPU seconds per million deliveries (= µs per delivery).
    pub(crate) cpu_s_per_m: f64,
    /// Engine peak RSS (VmHWM), MiB.
    pub(crate) peak_rss_mib: f64,
    /// Load-generator worker CPU seconds during the phase.
    pub(crate) gen_cpu_s: f64,
    /// Anything else worth a glance.
    pub(crate) note: String,
    /// Scenario-specific figures.
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
    /// A detail row: kept in the JSON, left out of the markdown table.
    pub(crate) detail: bool,
}

impl Row {
    /// Fills the derived fields from the raw ones.
    pub(crate) fn finish(&mut self) {
        self.delivered_frac = if self.expected > 0 {
            self.delivered as f64 / self.expected as f64
        } else {
            0.0
        };
        if self.duration_s > 0.0 {
            self.deliveries_per_s = self.delivered as f64 / self.duration_s;
        }
        if self.delivered > 0 {
            self.cpu_s_per_m = self.engine_cpu_s * 1e6 / self.delivered as f64;
        }
    }
}

/// A whole run of one scenario command.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunDoc {
    /// Scenario name.
    pub(crate) scenario: String,
    /// The exact command line.
    pub(crate) command: String,
    /// UTC date and time.
    pub(crate) date: String,
    /// Cores available.
    pub(crate) cores: usize,
    /// Load average when the run started.
    pub(crate) load_start: String,
    /// Load average when it ended.
    pub(crate) load_end: String,
    /// The repository revision the run was made at (`git describe`), if known.
    pub(crate) revision: String,
    /// CPU busy (percent of all cores) in the second before each target started,
    /// while the harness ran nothing: other work sharing the machine.
    pub(crate) busy_before_pct: Vec<(String, f64)>,
    /// The measured points.
    pub(crate) rows: Vec<Row>,
    /// Comparisons against the targets, one sentence each.
    pub(crate) summary: Vec<String>,
}

/// `YYYY-MM-DD HH:MM:SS` UTC for unix seconds.
pub(crate) fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl RunDoc {
    /// Starts a run record.
    pub(crate) fn new(scenario: &str) -> Self {
        let command = std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" ");
        RunDoc {
            scenario: scenario.into(),
            command,
            date: utc(now_ns() / 1_000_000_000),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            load_start: loadavg(),
            load_end: String::new(),
            busy_before_pct: Vec::new(),
            revision: std::process::Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
            rows: Vec::new(),
            summary: Vec::new(),
        }
    }

    /// Writes the JSON file (and the markdown section if `md` is set); returns the JSON path.
    pub(crate) fn save(&mut self, out_dir: &Path, md: Option<&Path>) -> Result<PathBuf> {
        self.load_end = loadavg();
        std::fs::create_dir_all(out_dir)?;
        let stamp = self.date.replace([' ', ':'], "-");
        let path = out_dir.join(format!("{}-{stamp}.json", self.scenario));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        if let Some(md) = md {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(md)?;
            f.write_all(self.markdown().as_bytes())?;
        }
        Ok(path)
    }

    /// The markdown section of this run.
    pub(crate) fn markdown(&self) -> String {
        let mut s = format!(
            "\n### {} — {} UTC\n\n```\n{}\n```\n\n{} cores; load average {} at start, {} at end (it includes this run's own previous steps).",
            self.scenario, self.date, self.command, self.cores, self.load_start, self.load_end
        );
        if !self.revision.is_empty() {
            s.push_str(&format!(" Revision {}.", self.revision));
        }
        if !self.busy_before_pct.is_empty() {
            let max = self.busy_before_pct.iter().map(|b| b.1).fold(0.0, f64::max);
            s.push_str(&format!(
                " Other CPU use in the second before each target started: at most {max:.0}% of all cores{}.",
                if max > 15.0 {
                    " — figures taken under load, noisy"
                } else {
                    " (quiet)"
                }
            ));
        }
        s.push_str("\n\n");
        s.push_str("| target | phase | C | msg/s | delivered | p50 ms | p99 ms | p99.9 ms | max ms | deliveries/s | engine CPU s per M deliveries | engine peak RSS MiB | generator CPU s | notes |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in self.rows.iter().filter(|r| !r.detail) {
            let ms = |v: f64| {
                if r.lat.n > 0 {
                    format!("{v:.2}")
                } else {
                    "–".into()
                }
            };
            let (dps, cpm) = if r.expected > 0 || r.delivered > 0 {
                (
                    format!("{:.0}", r.deliveries_per_s),
                    format!("{:.2}", r.cpu_s_per_m),
                )
            } else {
                ("–".into(), "–".into())
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {} |\n",
                r.target,
                r.phase,
                r.conns,
                fmt_rate(r.rate_hz),
                if r.expected > 0 {
                    format!("{:.4}%", r.delivered_frac * 100.0)
                } else {
                    "–".into()
                },
                ms(r.lat.p50_ms),
                ms(r.lat.p99_ms),
                ms(r.lat.p999_ms),
                ms(r.lat.max_ms),
                dps,
                cpm,
                r.peak_rss_mib,
                r.gen_cpu_s,
                r.note.replace('|', "/"),
            ));
        }
        if !self.summary.is_empty() {
            s.push('\n');
            for l in &self.summary {
                s.push_str(&format!("- {l}\n"));
            }
        }
        s
    }
}

fn fmt_rate(r: f64) -> String {
    if r == 0.0 {
        "–".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.2}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_764_073_800), "2025-11-25 12:30:00");
    }
}
