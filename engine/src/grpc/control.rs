//! Subscribe-control: moving connections into and out of topics, disconnecting
//! them, and the `Control` stream that carries the same commands.
//!
//! Every command takes effect before it is answered: once a subscribe's answer
//! is sent, publishers already see the new subscriptions.
//!
//! In a cluster a command by user reaches that user's connections on every live
//! node (each node applies it to its own connections, all or nothing there) and
//! answers with the sum; a command by connection id goes to the one node that
//! holds the connection (this node first, else the node that answers a
//! `locate`). See [`super::remote`]. A `Control` stream
//! applies its commands one after another, in the order they arrive, and answers
//! each with its own result; one failing command never ends the stream.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{
    HeraldService, item_error, next_request,
    remote::{Route, combine, merge_subscribed},
};
use crate::{
    cluster::gather::{self, kind},
    conn::ConnId,
    history::Since,
    proto::{self, control_request::Command, control_response, target::Target},
    protocol::{Reply, close},
    queue::Close,
    registry::{Entry, SubscribeError},
};

pub(super) fn missing_target() -> Status {
    Status::invalid_argument("target is missing: set connection_id or user_id")
}

pub(super) fn subscribe_status(e: SubscribeError) -> Status {
    match e {
        SubscribeError::InvalidTopic(_) => Status::invalid_argument(e.to_string()),
        SubscribeError::TooMany { .. } => Status::failed_precondition(e.to_string()),
        SubscribeError::Closed => Status::not_found("the target's connections have closed"),
    }
}

impl HeraldService {
    /// The connections a target names: NOT_FOUND when there are none.
    fn targets(&self, target: Option<proto::Target>) -> Result<Vec<Arc<Entry>>, Status> {
        match target.and_then(|t| t.target) {
            // A zero-value target (an empty connection id) names nothing either.
            None => Err(missing_target()),
            Some(Target::ConnectionId(id)) if id.is_empty() => Err(missing_target()),
            Some(Target::ConnectionId(id)) => ConnId::parse(&id)
                .and_then(|id| self.registry.get(id))
                .map(|entry| vec![entry])
                .ok_or_else(|| Status::not_found(format!("no connection {id:?} on this node"))),
            Some(Target::UserId(user)) => {
                if user.is_empty() {
                    return Err(Status::invalid_argument("user_id is empty"));
                }
                let entries = self.registry.user_conns(&user);
                if entries.is_empty() {
                    return Err(Status::not_found(format!(
                        "user {user:?} has no connections on this node"
                    )));
                }
                Ok(entries)
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

    /// Puts the target's connections into topics — all of them or, when one
    /// would exceed its subscription limit, none — and tells each of them.
    /// With `since`, the subscribe goes through the broker and each connection
    /// recovers what it missed of those topics (see `Broker::subscribe`).
    pub(super) async fn subscribe_now(
        &self,
        req: proto::SubscribeRequest,
    ) -> Result<proto::SubscribeResponse, Status> {
        self.check_subscribe(&req)?;
        match self.route(req.target.as_ref()).await? {
            Route::Here => self.subscribe_local(req).await,
            Route::Node(node) => self.on_node(&node, kind::SUBSCRIBE, &req).await,
            Route::Everywhere(nodes) => {
                let (here, there) = tokio::join!(
                    self.subscribe_local(req.clone()),
                    gather::ask_all(&nodes, kind::SUBSCRIBE, &req)
                );
                combine(here, there, merge_subscribed)
            }
        }
    }

    fn check_subscribe(&self, req: &proto::SubscribeRequest) -> Result<(), Status> {
        self.check_topics(&req.topics)?;
        if let Some(stray) = req.since.keys().find(|t| !req.topics.contains(t)) {
            return Err(Status::invalid_argument(format!(
                "since names {stray:?}, which is not in topics"
            )));
        }
        Ok(())
    }

    /// [`Self::subscribe_now`] on this node's connections only.
    pub(super) async fn subscribe_local(
        &self,
        req: proto::SubscribeRequest,
    ) -> Result<proto::SubscribeResponse, Status> {
        self.check_subscribe(&req)?;
        let entries = self.targets(req.target)?;
        if req.since.is_empty() {
            let subscribed = self
                .broker
                .subscribe(&entries, &req.topics, &HashMap::new())
                .await
                .map_err(super::broker_status)?
                .connections
                .len();
            for entry in &entries {
                entry.conn().reply(Reply::Subscribed {
                    id: None,
                    topics: &req.topics,
                    server: true,
                    recovered: None,
                    positions: None,
                });
            }
            return Ok(proto::SubscribeResponse {
                connections: subscribed as u32,
                ..Default::default()
            });
        }
        let since: HashMap<String, Since> = req
            .since
            .into_iter()
            .map(|(t, p)| (t, super::since_of(p)))
            .collect();
        let done = self
            .broker
            .subscribe(&entries, &req.topics, &since)
            .await
            .map_err(super::broker_status)?;
        let mut response = proto::SubscribeResponse {
            connections: done.connections.len() as u32,
            ..Default::default()
        };
        for (conn, recoveries) in done.connections {
            for (topic, r) in &recoveries {
                let all = response.recovered.entry(topic.clone()).or_insert(true);
                *all &= r.recovered;
                response.positions.insert(
                    topic.clone(),
                    proto::StreamPosition {
                        sequence: r.position.seq,
                        epoch: r.position.epoch.to_string(),
                    },
                );
            }
            let (recovered, positions) = crate::session::recovery_maps(recoveries);
            conn.reply(Reply::Subscribed {
                id: None,
                topics: &req.topics,
                server: true,
                recovered: Some(&recovered),
                positions: Some(&positions),
            });
        }
        Ok(response)
    }

    /// Takes the target's connections out of topics and tells each of them.
    pub(super) async fn unsubscribe_now(
        &self,
        req: proto::UnsubscribeRequest,
    ) -> Result<proto::UnsubscribeResponse, Status> {
        self.check_topics(&req.topics)?;
        match self.route(req.target.as_ref()).await? {
            Route::Here => self.unsubscribe_local(req),
            Route::Node(node) => self.on_node(&node, kind::UNSUBSCRIBE, &req).await,
            Route::Everywhere(nodes) => {
                let there = gather::ask_all(&nodes, kind::UNSUBSCRIBE, &req).await;
                combine(self.unsubscribe_local(req), there, |a, b| {
                    a.connections += b.connections;
                })
            }
        }
    }

    /// [`Self::unsubscribe_now`] on this node's connections only.
    pub(super) fn unsubscribe_local(
        &self,
        req: proto::UnsubscribeRequest,
    ) -> Result<proto::UnsubscribeResponse, Status> {
        self.check_topics(&req.topics)?;
        let entries = self.targets(req.target)?;
        let open = self
            .registry
            .unsubscribe(&entries, &req.topics)
            .map_err(subscribe_status)?;
        for entry in &entries {
            entry.conn().reply(Reply::Unsubscribed {
                id: None,
                topics: &req.topics,
                server: true,
            });
        }
        Ok(proto::UnsubscribeResponse {
            connections: open as u32,
        })
    }

    /// Closes the target's connections with the requested code and reason.
    pub(super) async fn disconnect_now(
        &self,
        req: proto::DisconnectRequest,
    ) -> Result<proto::DisconnectResponse, Status> {
        check_disconnect(&req)?;
        match self.route(req.target.as_ref()).await? {
            Route::Here => self.disconnect_local(req),
            Route::Node(node) => self.on_node(&node, kind::DISCONNECT, &req).await,
            Route::Everywhere(nodes) => {
                let there = gather::ask_all(&nodes, kind::DISCONNECT, &req).await;
                combine(self.disconnect_local(req), there, |a, b| {
                    a.connections += b.connections;
                })
            }
        }
    }

    /// [`Self::disconnect_now`] on this node's connections only.
    pub(super) fn disconnect_local(
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
        let entries = self.targets(req.target)?;
        let close = Close::by_producer(code, req.reason, req.reconnect);
        let closed = entries
            .iter()
            .filter(|e| e.conn().close(close.clone()))
            .count();
        Ok(proto::DisconnectResponse {
            connections: closed as u32,
        })
    }

    /// Applies one control command.
    async fn apply(&self, command: Option<Command>) -> Result<control_response::Result, Status> {
        use control_response::Result as R;
        match command {
            None => Err(Status::invalid_argument("command is missing")),
            Some(Command::Subscribe(req)) => self.subscribe_now(req).await.map(R::Subscribe),
            Some(Command::Unsubscribe(req)) => self.unsubscribe_now(req).await.map(R::Unsubscribe),
            Some(Command::Disconnect(req)) => self.disconnect_now(req).await.map(R::Disconnect),
        }
    }
}

/// The code and reason of a disconnect, checked before any node is asked.
fn check_disconnect(req: &proto::DisconnectRequest) -> Result<(), Status> {
    if req.code != 0 && !(4000..=4999).contains(&req.code) {
        return Err(Status::invalid_argument(format!(
            "code {} is outside 4000-4999",
            req.code
        )));
    }
    if req.reason.len() > 120 {
        return Err(Status::invalid_argument("reason is longer than 120 bytes"));
    }
    Ok(())
}

/// Serves one `Control` stream until the producer closes it or the node shuts down.
pub(super) async fn run(
    service: HeraldService,
    mut requests: Streaming<proto::ControlRequest>,
    tx: mpsc::Sender<Result<proto::ControlResponse, Status>>,
) {
    let stop = service.shutdown.clone().cancelled_owned();
    tokio::pin!(stop);
    while let Some(req) = next_request(&mut requests, stop.as_mut(), &tx).await {
        let result = match service.apply(req.command).await {
            Ok(result) => result,
            Err(status) => control_response::Result::Error(item_error(&status)),
        };
        let response = proto::ControlResponse {
            request_id: req.request_id,
            result: Some(result),
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}
