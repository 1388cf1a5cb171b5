//! Subscribe-control: moving connections into and out of topics, disconnecting
//! them, and the `Control` stream that carries the same commands.
//!
//! Every command is applied at once, in the order it arrives; what remains is to
//! wait until the change is visible to publishers before answering. On a
//! `Control` stream those waits overlap, so a producer can move thousands of
//! connections per second while each command still gets its own answer.

use std::{future::Future, pin::Pin, sync::Arc};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{HeraldService, item_error};
use crate::{
    conn::{Conn, ConnId},
    proto::{self, control_request::Command, control_response, target::Target},
    protocol::{Reply, close},
    queue::Close,
    registry::{Pending, SubscribeError},
    session,
};

/// Commands of one `Control` stream that may be waiting for visibility at once.
const MAX_IN_FLIGHT: usize = 4096;

type Answer<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl HeraldService {
    /// The connections a target names: NOT_FOUND when there are none.
    fn targets(&self, target: Option<proto::Target>) -> Result<Vec<Arc<Conn>>, Status> {
        match target.and_then(|t| t.target) {
            None => Err(Status::invalid_argument(
                "target is missing: set connection_id or user_id",
            )),
            Some(Target::ConnectionId(id)) => ConnId::parse(&id)
                .and_then(|id| self.registry.get(id))
                .map(|conn| vec![conn])
                .ok_or_else(|| Status::not_found(format!("no connection {id:?} on this node"))),
            Some(Target::UserId(user)) => {
                if user.is_empty() {
                    return Err(Status::invalid_argument("user_id is empty"));
                }
                let conns = self.registry.user_conns(&user);
                if conns.is_empty() {
                    return Err(Status::not_found(format!(
                        "user {user:?} has no connections on this node"
                    )));
                }
                Ok(conns)
            }
        }
    }

    fn check_topics(&self, topics: &[String]) -> Result<(), Status> {
        if topics.is_empty() {
            return Err(Status::invalid_argument("topics is empty"));
        }
        if topics.len() > self.config.max_topics_per_command {
            return Err(Status::invalid_argument(format!(
                "{} topics in one command; the limit is {}",
                topics.len(),
                self.config.max_topics_per_command
            )));
        }
        topics.iter().try_for_each(|t| self.check_topic(t))
    }

    /// Applies a subscribe now; the returned future answers once it is visible.
    pub(super) fn subscribe_now(
        &self,
        req: proto::SubscribeRequest,
    ) -> Result<Answer<proto::SubscribeResponse>, Status> {
        self.check_topics(&req.topics)?;
        let mut done = Vec::new();
        for conn in self.targets(req.target)? {
            match self.registry.subscribe(&conn, &req.topics) {
                Ok(pending) => done.push((conn, pending)),
                Err(SubscribeError::Closed(_)) => {}
                Err(e @ SubscribeError::TooMany { .. }) => {
                    return Err(Status::failed_precondition(format!(
                        "connection {}: {e}",
                        conn.id()
                    )));
                }
                Err(e @ SubscribeError::InvalidTopic(_)) => {
                    return Err(Status::invalid_argument(e.to_string()));
                }
            }
        }
        if done.is_empty() {
            return Err(Status::not_found("the target's connections have closed"));
        }
        Ok(Box::pin(async move {
            let connections = announce(done, &req.topics, |topics| Reply::Subscribed {
                id: None,
                topics,
                server: true,
            })
            .await;
            proto::SubscribeResponse { connections }
        }))
    }

    /// Applies an unsubscribe now; the returned future answers once it is visible.
    pub(super) fn unsubscribe_now(
        &self,
        req: proto::UnsubscribeRequest,
    ) -> Result<Answer<proto::UnsubscribeResponse>, Status> {
        self.check_topics(&req.topics)?;
        let mut done = Vec::new();
        for conn in self.targets(req.target)? {
            let pending = self
                .registry
                .unsubscribe(&conn, &req.topics)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            done.push((conn, pending));
        }
        Ok(Box::pin(async move {
            let connections = announce(done, &req.topics, |topics| Reply::Unsubscribed {
                id: None,
                topics,
                server: true,
            })
            .await;
            proto::UnsubscribeResponse { connections }
        }))
    }

    /// Closes the target's connections with the requested code and reason.
    pub(super) fn disconnect_now(
        &self,
        req: proto::DisconnectRequest,
    ) -> Result<proto::DisconnectResponse, Status> {
        let code = match req.code {
            0 if req.reconnect => close::DISCONNECT_RECONNECT,
            0 => close::DISCONNECT_FINAL,
            c @ 4000..=4999 => c as u16,
            c => {
                return Err(Status::invalid_argument(format!(
                    "code {c} is outside 4000-4999"
                )));
            }
        };
        if req.reason.len() > 120 {
            return Err(Status::invalid_argument("reason is longer than 120 bytes"));
        }
        let conns = self.targets(req.target)?;
        let close = Close {
            code,
            reason: req.reason,
            reconnect: req.reconnect,
            drain: true,
        };
        let closed = conns
            .iter()
            .filter(|c| c.queue.close(close.clone()))
            .count();
        Ok(proto::DisconnectResponse {
            connections: closed as u32,
        })
    }

    /// Applies one control command now; the future gives its result.
    fn apply(&self, command: Option<Command>) -> Result<Answer<control_response::Result>, Status> {
        use control_response::Result as R;
        match command {
            None => Err(Status::invalid_argument("command is missing")),
            Some(Command::Subscribe(req)) => {
                let done = self.subscribe_now(req)?;
                Ok(Box::pin(async move { R::Subscribe(done.await) }))
            }
            Some(Command::Unsubscribe(req)) => {
                let done = self.unsubscribe_now(req)?;
                Ok(Box::pin(async move { R::Unsubscribe(done.await) }))
            }
            Some(Command::Disconnect(req)) => {
                let done = self.disconnect_now(req)?;
                Ok(Box::pin(std::future::ready(R::Disconnect(done))))
            }
        }
    }
}

/// Waits until each connection's change is visible to publishers, then tells the
/// connection with a server-initiated push. Returns how many connections there were.
async fn announce(
    done: Vec<(Arc<Conn>, Pending)>,
    topics: &[String],
    reply: impl for<'a> Fn(&'a [String]) -> Reply<'a>,
) -> u32 {
    let connections = done.len() as u32;
    for (conn, pending) in done {
        pending.visible().await;
        session::send(&conn, reply(topics));
    }
    connections
}

/// Serves one `Control` stream until the producer closes it.
pub(super) async fn run(
    service: HeraldService,
    mut requests: Streaming<proto::ControlRequest>,
    tx: mpsc::Sender<Result<proto::ControlResponse, Status>>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    let stop = HeraldService::shutting_down(service.shutdown.clone());
    tokio::pin!(stop);
    while open || !in_flight.is_empty() {
        tokio::select! {
            () = &mut stop => {
                let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                return;
            }
            next = requests.next(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                let req = match next {
                    Some(Ok(req)) => req,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "control stream ended by the client");
                        open = false;
                        continue;
                    }
                    None => {
                        open = false;
                        continue;
                    }
                };
                let request_id = req.request_id;
                match service.apply(req.command) {
                    Ok(answer) => in_flight.push(async move { (request_id, answer.await) }),
                    Err(status) => {
                        let result = Some(control_response::Result::Error(item_error(&status)));
                        if tx.send(Ok(proto::ControlResponse { request_id, result })).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some((request_id, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let response = proto::ControlResponse { request_id, result: Some(result) };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        }
    }
}
