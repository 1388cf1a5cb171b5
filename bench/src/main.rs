//! `herald-bench`: Herald's benchmark harness. One binary with a subcommand per
//! scenario (each runs the floor, the naive baseline and Herald in turn and writes
//! results under bench/results/), plus the internal roles it spawns: `worker`
//! (load generator), `naive` (baseline broadcaster) and `floor-writer` (raw TCP).
//! See docs/benchmarks.md.

mod cluster;
mod control;
mod floor;
mod hostile;
mod naive;
mod plot;
mod pool;
mod presence;
mod producer;
mod proto;
mod recover;
mod report;
mod scenarios;
mod sdk;
mod secure;
mod servers;
mod util;
mod worker;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "herald-bench", about = "Benchmark harness for Herald")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fan-out: C connections on one topic, R Hz for D s.
    Fanout(scenarios::FanoutArgs),
    /// Saturation: the highest deliveries/s with 100% delivered and p99 within the limit.
    Saturate(scenarios::SaturateArgs),
    /// Targeted: each connection on its own user topic; messages to random users.
    Targeted(scenarios::TargetedArgs),
    /// Ingest: acked msg/s through PublishStream, calls/s through unary Publish.
    Ingest(scenarios::IngestArgs),
    /// Join storm: time for C clients to connect and subscribe.
    Join(scenarios::JoinArgs),
    /// Idle memory: engine RSS per idle subscribed connection.
    Idle(scenarios::IdleArgs),
    /// Churn: fan-out while other clients connect, subscribe and disconnect.
    Churn(scenarios::ChurnArgs),
    /// Slow consumers: fan-out plus clients that stop reading.
    Slow(scenarios::SlowArgs),
    /// Control: commands/s moving user connections between rooms over the Control stream (Herald only).
    Control(scenarios::ControlArgs),
    /// SDKs: sequential unary Publish calls and streaming publishes from the Go and Python SDKs.
    Sdk(sdk::SdkArgs),
    /// Presence: fan-out p99 and engine RSS while N WatchPresence snapshots open on a node with many retained topics (Herald only).
    Presence(presence::PresenceArgs),
    /// Recover: C clients on a topic with history drop at once and reconnect with `since` (Herald only).
    Recover(recover::RecoverArgs),
    /// Hostile: subscribers' p99 while attackers send every class of bad input (Herald only).
    Hostile(hostile::HostileArgs),
    /// Cluster: N nodes on one nats-server (publish round-robin, deliver on all) against one node without NATS (Herald only).
    Cluster(cluster::ClusterArgs),
    /// Redraw the latency chart from a saved fan-out result.
    Plot(plot::PlotArgs),
    /// (internal) a load-generator process.
    Worker(worker::WorkerArgs),
    /// (internal) the naive baseline broadcaster.
    Naive(naive::NaiveArgs),
    /// (internal) the raw-TCP floor writer.
    FloorWriter(floor::FloorArgs),
}

fn coordinator<F: std::future::Future<Output = util::Result<()>>>(f: F) -> util::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            // On Ctrl-C or SIGTERM the scenario is dropped, and with it every child
            // process it started (they are killed on drop).
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = f => r,
                _ = tokio::signal::ctrl_c() => util::err("interrupted"),
                _ = term.recv() => util::err("terminated"),
            }
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Fanout(a) => coordinator(scenarios::fanout(a)),
        Cmd::Saturate(a) => coordinator(scenarios::saturate(a)),
        Cmd::Targeted(a) => coordinator(scenarios::targeted(a)),
        Cmd::Ingest(a) => coordinator(scenarios::ingest(a)),
        Cmd::Join(a) => coordinator(scenarios::join(a)),
        Cmd::Idle(a) => coordinator(scenarios::idle(a)),
        Cmd::Churn(a) => coordinator(scenarios::churn(a)),
        Cmd::Slow(a) => coordinator(scenarios::slow(a)),
        Cmd::Control(a) => coordinator(scenarios::control(a)),
        Cmd::Sdk(a) => coordinator(sdk::sdk(a)),
        Cmd::Presence(a) => coordinator(presence::presence(a)),
        Cmd::Hostile(a) => coordinator(hostile::hostile(a)),
        Cmd::Recover(a) => coordinator(recover::recover(a)),
        Cmd::Cluster(a) => coordinator(cluster::cluster(a)),
        Cmd::Plot(a) => plot::run(a),
        Cmd::Worker(a) => worker::run(a),
        Cmd::Naive(a) => naive::run(a),
        Cmd::FloorWriter(a) => floor::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
