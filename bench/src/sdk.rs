//! `sdk`: what the producer SDKs cost on top of the engine. One Herald, then each
//! SDK's benchmark driver in turn — the Go driver (`bench/sdk/go`, modes unary and
//! stream) and the Python one (`bench/sdk/python/driver.py`, modes unary,
//! unary-async, stream and stream-async). Unary modes make sequential Publish
//! calls, one at a time (latency = each call); stream modes push through the SDK's
//! streaming publisher with as many messages in flight as it allows (latency =
//! publish → ack). Every driver prints one JSON line:
//! `{"sdk","mode","messages","seconds","per_s","p50_us","p99_us","errors"}`.

use crate::report::{Row, RunDoc};
use crate::scenarios::Common;
use crate::servers::{Server, Target};
use crate::util::{BenchError, Lat, Result, cpu_busy_pct, err};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The Python driver, relative to the repository root.
const PYTHON_DRIVER: &str = "bench/sdk/python/driver.py";
/// The Go driver's package, relative to the repository root.
const GO_DRIVER_DIR: &str = "bench/sdk/go";
/// Where the Go driver is built when `--go-driver` is not given.
const GO_DRIVER_BIN: &str = "target/sdk-bench/herald-sdk-bench-go";
/// The per-call p50 a unary mode must stay under with `--strict`, µs.
const UNARY_P50_LIMIT_US: f64 = 1000.0;

/// Options of `sdk`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SdkArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// SDKs to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "go,python")]
    pub(crate) sdks: Vec<Sdk>,
    /// Seconds of publishing per mode.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// The Python interpreter that runs the Python driver (with the SDK installed).
    #[arg(long, default_value = "sdk-python/.venv/bin/python")]
    pub(crate) python: PathBuf,
    /// The Go driver's binary; without it, the driver is built with `go build`
    /// into target/sdk-bench/ when missing there.
    #[arg(long)]
    pub(crate) go_driver: Option<PathBuf>,
    /// Topic the drivers publish to (nobody subscribes: this measures the
    /// producer path).
    #[arg(long, default_value = "bench:sdk")]
    pub(crate) topic: String,
}

/// An SDK with a benchmark driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Sdk {
    /// The Go SDK (sdk-go).
    Go,
    /// The Python SDK (sdk-python).
    Python,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Go => "go",
            Sdk::Python => "python",
        }
    }

    fn modes(self) -> &'static [&'static str] {
        match self {
            Sdk::Go => &["unary", "stream"],
            Sdk::Python => &["unary", "unary-async", "stream", "stream-async"],
        }
    }
}

/// A driver's one line of output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DriverResult {
    /// "go" or "python".
    pub(crate) sdk: String,
    /// The mode it ran.
    pub(crate) mode: String,
    /// Successful calls (unary) or acked messages (stream).
    pub(crate) messages: u64,
    /// Measured seconds.
    pub(crate) seconds: f64,
    /// messages / seconds.
    pub(crate) per_s: f64,
    /// Median latency, µs.
    pub(crate) p50_us: f64,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: f64,
    /// Failed calls or refused messages.
    pub(crate) errors: u64,
}

/// How to start one SDK's driver: the program and the arguments before the flags.
struct Driver {
    program: PathBuf,
    args: Vec<String>,
}

/// The Go driver: `--go-driver`, or the one built into target/sdk-bench/ (built
/// now if missing).
async fn go_driver(given: Option<&Path>) -> Result<Driver> {
    if let Some(p) = given {
        if !p.is_file() {
            return err(format!("--go-driver {}: no such file", p.display()));
        }
        return Ok(Driver {
            program: p.to_path_buf(),
            args: vec![],
        });
    }
    let bin = std::env::current_dir()?.join(GO_DRIVER_BIN);
    if !bin.is_file() {
        eprintln!(
            "[sdk] building the Go driver: (cd {GO_DRIVER_DIR} && go build -o {GO_DRIVER_BIN} .)"
        );
        let st = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(".")
            .current_dir(GO_DRIVER_DIR)
            .status()
            .await
            .map_err(|e| {
                BenchError::Msg(format!("cannot run `go build` for the Go driver: {e}"))
            })?;
        if !st.success() {
            return err(format!("`go build` of {GO_DRIVER_DIR} failed: {st}"));
        }
    }
    Ok(Driver {
        program: bin,
        args: vec![],
    })
}

/// The Python driver, or why it cannot run. `Ok(None)`: the driver is not in
/// the repository (yet).
fn python_driver(python: &Path) -> Result<Option<Driver>> {
    if !Path::new(PYTHON_DRIVER).is_file() {
        return Ok(None);
    }
    if !python.is_file() {
        return err(format!(
            "no Python interpreter at {} for {PYTHON_DRIVER}; create it with `python3 -m venv sdk-python/.venv && sdk-python/.venv/bin/pip install -e sdk-python`, or pass --python",
            python.display()
        ));
    }
    Ok(Some(Driver {
        program: python.to_path_buf(),
        args: vec![PYTHON_DRIVER.to_string()],
    }))
}

/// Runs one mode of a driver against `addr` and reads its JSON line.
async fn run_driver(
    d: &Driver,
    sdk: Sdk,
    mode: &str,
    addr: &str,
    a: &SdkArgs,
    log_dir: &Path,
) -> Result<DriverResult> {
    std::fs::create_dir_all(log_dir)?;
    let log_path = log_dir.join(format!("sdk-{}-{mode}.log", sdk.name()));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(&d.program);
    cmd.args(&d.args)
        .arg("--addr")
        .arg(addr)
        .arg("--mode")
        .arg(mode)
        .arg("--duration")
        .arg(a.duration.to_string())
        .arg("--topic")
        .arg(format!("{}-{}-{mode}", a.topic, sdk.name()))
        .arg("--payload-bytes")
        .arg(a.common.payload.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::Msg(format!("cannot start {}: {e}", d.program.display())))?;
    let limit = Duration::from_secs_f64(a.duration + 120.0);
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r?,
        Err(_) => {
            return err(format!(
                "{} {mode}: no result within {limit:?} (log: {})",
                sdk.name(),
                log_path.display()
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail = || {
        let s = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    if !out.status.success() {
        return err(format!(
            "{} {mode}: the driver failed ({}); its log {}:\n{}",
            sdk.name(),
            out.status,
            log_path.display(),
            tail()
        ));
    }
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines.as_slice() else {
        return err(format!(
            "{} {mode}: the driver printed {} lines on stdout, not exactly one JSON line: {stdout:?}",
            sdk.name(),
            lines.len()
        ));
    };
    let r: DriverResult = serde_json::from_str(line).map_err(|e| {
        BenchError::Msg(format!(
            "{} {mode}: bad driver output {line:?}: {e}",
            sdk.name()
        ))
    })?;
    if r.sdk != sdk.name() || r.mode != mode {
        return err(format!(
            "{} {mode}: the driver answered for sdk {:?} mode {:?}",
            sdk.name(),
            r.sdk,
            r.mode
        ));
    }
    Ok(r)
}

fn herald_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `sdk`.
pub(crate) async fn sdk(a: SdkArgs) -> Result<()> {
    let c = &a.common;
    if a.duration.is_nan() || a.duration <= 0.0 {
        return err("sdk needs --duration > 0");
    }
    if c.targets.iter().any(|t| *t != Target::Herald) {
        eprintln!("[sdk] measures Herald only (the SDKs speak Herald's API)");
    }
    let mut doc = RunDoc::new("sdk");
    let mut skipped = Vec::new();
    let mut drivers = Vec::new();
    for &sdk in &a.sdks {
        match sdk {
            Sdk::Go => drivers.push((sdk, go_driver(a.go_driver.as_deref()).await?)),
            Sdk::Python => match python_driver(&a.python)? {
                Some(d) => drivers.push((sdk, d)),
                None => {
                    let msg = format!(
                        "python: SKIPPED — {PYTHON_DRIVER} is not in this checkout, so the Python modes ({}) were not run",
                        Sdk::Python.modes().join(", ")
                    );
                    eprintln!("[sdk] {msg}");
                    skipped.push(msg);
                }
            },
        }
    }
    if drivers.is_empty() {
        return err("sdk: no driver to run");
    }

    let probe = c.busy_probe_ms;
    let busy = tokio::task::spawn_blocking(move || cpu_busy_pct(probe))
        .await
        .unwrap_or(0.0);
    eprintln!("[sdk] other CPU use before start: {busy:.0}%");
    doc.busy_before_pct.push(("herald".into(), busy));
    let mut server = Server::start(
        Target::Herald,
        &c.herald_bin,
        &c.herald_args,
        &c.out_dir.join("logs"),
    )
    .await?;
    let addr = server
        .grpc_addr
        .ok_or_else(|| BenchError::Msg("Herald has no gRPC address".into()))?
        .to_string();
    let version = herald_version(&c.herald_bin);

    let mut results = Vec::new();
    let mut failure = None;
    'outer: for (sdk, d) in &drivers {
        for mode in sdk.modes() {
            eprintln!("[sdk] {} {mode}: {} s", sdk.name(), a.duration);
            let cpu0 = server.cpu_s();
            match run_driver(d, *sdk, mode, &addr, &a, &c.out_dir.join("logs")).await {
                Ok(r) => {
                    let engine_cpu = server.cpu_s() - cpu0;
                    eprintln!(
                        "[sdk] {} {mode}: {:.0} msg/s, p50 {:.0} µs, p99 {:.0} µs, {} errors",
                        r.sdk, r.per_s, r.p50_us, r.p99_us, r.errors
                    );
                    results.push((r, engine_cpu));
                }
                Err(e) => {
                    failure = Some(e);
                    break 'outer;
                }
            }
        }
    }
    let alive = server.alive();
    let (_, hwm) = server.rss();
    server.stop().await;
    if let Some(e) = failure {
        return Err(e);
    }
    if !alive {
        return err("herald died during the run (see its log under the results dir)");
    }

    for (r, engine_cpu) in &results {
        let mut extra = serde_json::Map::new();
        extra.insert("driver".into(), serde_json::to_value(r)?);
        doc.rows.push(Row {
            target: r.sdk.clone(),
            phase: r.mode.clone(),
            rate_hz: r.per_s,
            duration_s: r.seconds,
            published: r.messages,
            lat: Lat {
                n: r.messages,
                p50_ms: r.p50_us / 1000.0,
                p99_ms: r.p99_us / 1000.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            },
            engine_cpu_s: *engine_cpu,
            peak_rss_mib: hwm as f64 / 1024.0,
            note: format!("{} errors", r.errors),
            extra,
            ..Row::default()
        });
    }
    doc.summary.push(format!(
        "engine: {version} ({}); payload {} bytes of opaque data to a topic nobody subscribes to; {} s per mode",
        c.herald_bin.display(),
        c.payload,
        a.duration
    ));
    let mut problems = Vec::new();
    for (r, _) in &results {
        if r.errors > 0 {
            problems.push(format!("{} {}: {} errors", r.sdk, r.mode, r.errors));
        }
        if r.messages == 0 {
            problems.push(format!("{} {}: no message went through", r.sdk, r.mode));
        }
        if r.mode == "unary" {
            let ok = r.p50_us < UNARY_P50_LIMIT_US;
            doc.summary.push(format!(
                "{} unary: sequential Publish calls take p50 {:.0} µs, p99 {:.0} µs each ({:.0} calls/s) — target p50 < 1 ms {}",
                r.sdk,
                r.p50_us,
                r.p99_us,
                r.per_s,
                if ok { "met" } else { "NOT met" }
            ));
            if !ok {
                problems.push(format!(
                    "{} unary: p50 {:.0} µs ≥ {UNARY_P50_LIMIT_US:.0} µs",
                    r.sdk, r.p50_us
                ));
            }
        }
    }
    doc.summary.extend(skipped.iter().cloned());

    doc.load_end = crate::util::loadavg();
    let path = doc.save(&c.out_dir, None)?;
    let md = markdown(&doc, &results);
    if let Some(p) = &c.markdown {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?;
        f.write_all(md.as_bytes())?;
    }
    println!("{md}");
    eprintln!("results: {}", path.display());
    if c.strict && !problems.is_empty() {
        return err(format!("sdk: {}", problems.join("; ")));
    }
    Ok(())
}

/// The markdown section: the run's header, then one row per SDK and mode.
fn markdown(doc: &RunDoc, results: &[(DriverResult, f64)]) -> String {
    let mut s = format!(
        "\n### {} — {} UTC\n\n```\n{}\n```\n\n{} cores; load average {} at start, {} at end.",
        doc.scenario, doc.date, doc.command, doc.cores, doc.load_start, doc.load_end
    );
    if !doc.revision.is_empty() {
        s.push_str(&format!(" Revision {}.", doc.revision));
    }
    if let Some((_, busy)) = doc.busy_before_pct.first() {
        s.push_str(&format!(
            " Other CPU use in the second before the engine started: {busy:.0}% of all cores{}.",
            if *busy > 15.0 {
                " — figures taken under load, noisy"
            } else {
                " (quiet)"
            }
        ));
    }
    s.push_str("\n\n| sdk | mode | msg/s | p50 µs | p99 µs | errors | engine CPU µs per message (whole driver run) |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for (r, cpu) in results {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} |\n",
            r.sdk,
            r.mode,
            r.per_s,
            r.p50_us,
            r.p99_us,
            r.errors,
            cpu * 1e6 / r.messages.max(1) as f64
        ));
    }
    s.push_str(
        "\nunary: sequential Publish calls, one at a time (latency = each call); stream: the SDK's streaming publisher, as many messages in flight as it allows (latency = publish → ack).\n",
    );
    if !doc.summary.is_empty() {
        s.push('\n');
        for l in &doc.summary {
            s.push_str(&format!("- {l}\n"));
        }
    }
    s
}
