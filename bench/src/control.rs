//! The producer side of Herald's `Control` RPC: one bidirectional stream of
//! subscribe / unsubscribe commands with a bounded number of unanswered ones. Each
//! answer is matched to its command (answers come back in order), counted, and the
//! command's send→answer time goes into an HDR histogram (µs).

use crate::proto::herald_client::HeraldClient;
use crate::proto::{
    ControlRequest, SubscribeRequest, Target, UnsubscribeRequest, control_request,
    control_response, target,
};
use crate::util::{BenchError, Result, err, new_hist};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Counters of answered commands (cumulative since the stream opened).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Counts {
    /// Commands answered.
    pub(crate) answered: u64,
    /// Commands answered with an error.
    pub(crate) errors: u64,
    /// Answers whose request id was not the oldest unanswered command's.
    pub(crate) misordered: u64,
    /// Connections reached by successful subscribes.
    pub(crate) sub_reached: u64,
    /// Connections reached by successful unsubscribes.
    pub(crate) unsub_reached: u64,
}

impl Counts {
    /// The counts since `base`.
    pub(crate) fn since(&self, base: &Counts) -> Counts {
        Counts {
            answered: self.answered - base.answered,
            errors: self.errors - base.errors,
            misordered: self.misordered - base.misordered,
            sub_reached: self.sub_reached - base.sub_reached,
            unsub_reached: self.unsub_reached - base.unsub_reached,
        }
    }
}

#[derive(Default)]
struct Shared {
    answered: AtomicU64,
    errors: AtomicU64,
    misordered: AtomicU64,
    sub_reached: AtomicU64,
    unsub_reached: AtomicU64,
    /// (request id, send time) of the unanswered commands, oldest first.
    pending: Mutex<VecDeque<(u64, Instant)>>,
    hist: Mutex<Option<Histogram<u64>>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.first_error.lock()
            && g.is_none()
        {
            *g = Some(e);
        }
    }
}

/// An open Control stream.
pub(crate) struct ControlStream {
    tx: Option<mpsc::Sender<ControlRequest>>,
    window: usize,
    sem: Arc<Semaphore>,
    sh: Arc<Shared>,
    next_id: u64,
    reader: JoinHandle<Result<()>>,
}

fn user(id: &str) -> Option<Target> {
    Some(Target {
        target: Some(target::Target::UserId(id.to_string())),
    })
}

impl ControlStream {
    /// Opens the stream; at most `window` commands are unanswered at a time.
    pub(crate) fn open(mut client: HeraldClient<Channel>, window: usize) -> Result<ControlStream> {
        let window = window.clamp(1, 1 << 20);
        let (tx, rx) = mpsc::channel::<ControlRequest>(window.min(4096));
        let sem = Arc::new(Semaphore::new(window));
        let sh = Arc::new(Shared::default());
        if let Ok(mut g) = sh.hist.lock() {
            *g = Some(new_hist()?);
        }
        let (s2, sh2) = (sem.clone(), sh.clone());
        let reader = tokio::spawn(async move {
            let mut resp = client
                .control(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(r) = resp.next().await {
                let r = r?;
                let now = Instant::now();
                let front = sh2.pending.lock().ok().and_then(|mut g| g.pop_front());
                match front {
                    Some((id, t0)) => {
                        if id != r.request_id {
                            sh2.misordered.fetch_add(1, Ordering::Relaxed);
                        }
                        let us = now.saturating_duration_since(t0).as_micros() as u64;
                        if let Ok(mut g) = sh2.hist.lock()
                            && let Some(h) = g.as_mut()
                        {
                            h.saturating_record(us.max(1));
                        }
                    }
                    None => {
                        sh2.misordered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match r.result {
                    Some(control_response::Result::Subscribe(s)) => {
                        sh2.sub_reached
                            .fetch_add(u64::from(s.connections), Ordering::Relaxed);
                    }
                    Some(control_response::Result::Unsubscribe(s)) => {
                        sh2.unsub_reached
                            .fetch_add(u64::from(s.connections), Ordering::Relaxed);
                    }
                    Some(control_response::Result::Error(e)) => {
                        sh2.error(format!(
                            "request {}: {} {}",
                            r.request_id, e.code, e.message
                        ));
                    }
                    other => sh2.error(format!("request {}: {other:?}", r.request_id)),
                }
                sh2.answered.fetch_add(1, Ordering::Relaxed);
                s2.add_permits(1);
            }
            Ok(())
        });
        Ok(ControlStream {
            tx: Some(tx),
            window,
            sem,
            sh,
            next_id: 0,
            reader,
        })
    }

    async fn send(&mut self, cmd: control_request::Command) -> Result<()> {
        match self.sem.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => return err("control stream semaphore closed"),
        }
        self.next_id += 1;
        let id = self.next_id;
        if let Ok(mut g) = self.sh.pending.lock() {
            g.push_back((id, Instant::now()));
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| BenchError::Msg("control stream closed".into()))?;
        if tx
            .send(ControlRequest {
                request_id: id,
                command: Some(cmd),
            })
            .await
            .is_err()
        {
            return err(format!(
                "control stream ended: {}",
                self.first_error().unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Sends Subscribe(user `uid` → `topic`), waiting while the window is full.
    pub(crate) async fn subscribe(&mut self, uid: &str, topic: &str) -> Result<()> {
        self.send(control_request::Command::Subscribe(SubscribeRequest {
            target: user(uid),
            topics: vec![topic.to_string()],
            ..Default::default()
        }))
        .await
    }

    /// Sends Unsubscribe(user `uid` from `topic`), waiting while the window is full.
    pub(crate) async fn unsubscribe(&mut self, uid: &str, topic: &str) -> Result<()> {
        self.send(control_request::Command::Unsubscribe(UnsubscribeRequest {
            target: user(uid),
            topics: vec![topic.to_string()],
        }))
        .await
    }

    /// Waits until every command sent so far is answered (or `timeout` passed).
    pub(crate) async fn settle(&self, timeout: Duration) -> Result<()> {
        let n = u32::try_from(self.window).unwrap_or(u32::MAX);
        match tokio::time::timeout(timeout, self.sem.acquire_many(n)).await {
            Ok(Ok(_all)) => Ok(()),
            Ok(Err(_)) => err("control stream semaphore closed"),
            Err(_) => err(format!(
                "{} control commands unanswered after {timeout:?}{}",
                self.next_id - self.sh.answered.load(Ordering::Relaxed),
                self.first_error()
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            )),
        }
    }

    /// The counters so far.
    pub(crate) fn counts(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            answered: l(&self.sh.answered),
            errors: l(&self.sh.errors),
            misordered: l(&self.sh.misordered),
            sub_reached: l(&self.sh.sub_reached),
            unsub_reached: l(&self.sh.unsub_reached),
        }
    }

    /// The first failed command's error, if any.
    pub(crate) fn first_error(&self) -> Option<String> {
        self.sh.first_error.lock().ok().and_then(|g| g.clone())
    }

    /// Returns the send→answer histogram (µs) so far and starts a new one.
    pub(crate) fn take_hist(&self) -> Result<Histogram<u64>> {
        let fresh = new_hist()?;
        match self.sh.hist.lock() {
            Ok(mut g) => Ok(g.replace(fresh).unwrap_or(new_hist()?)),
            Err(_) => err("control histogram lock poisoned"),
        }
    }

    /// Ends the stream and waits for the engine to close its side.
    pub(crate) async fn close(mut self) -> Result<()> {
        self.tx = None;
        match tokio::time::timeout(Duration::from_secs(10), self.reader).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => err(format!("control reader: {e}")),
            Err(_) => err("control stream did not end within 10 s"),
        }
    }
}
