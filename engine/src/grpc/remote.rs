//! The service's side of the cluster: where a control command goes (this node,
//! one other node, or every node), how the answers of several nodes combine,
//! what this node answers the others ([`gather::Handler`]), and the `Info` list
//! of nodes.
//!
//! A connection id does not name its node (ids are a slab slot and a generation
//! that starts at a random value per process). A command by connection id is
//! applied here when this node holds the connection; otherwise every other node
//! is asked whether it holds it (`locate`), and the command goes to the one that
//! does. Two nodes holding the same id (the generation ranges of two processes
//! overlapping at the same slot) is detected and refused with
//! FAILED_PRECONDITION rather than applied twice.

use std::{pin::Pin, sync::Arc};

use bytes::Bytes;
use prost::Message as _;
use tonic::{Code, Status};

use super::{HeraldService, control::missing_target};
use crate::{
    cluster::{
        gather::{self, Answer, Locate, Located, StatsQuery, kind},
        nodes::{Beat, Nodes},
    },
    conn::ConnId,
    proto::{self, target::Target},
};

/// Where a control command goes.
pub(super) enum Route {
    /// This node's connections only (a single node, or a connection held here).
    Here,
    /// The one other node that holds the connection.
    Node(String),
    /// Every live node (a user's connections).
    Everywhere(Arc<Nodes>),
}

impl HeraldService {
    /// Where a command for `target` goes.
    pub(super) async fn route(&self, target: Option<&proto::Target>) -> Result<Route, Status> {
        let Some(nodes) = &self.nodes else {
            return Ok(Route::Here);
        };
        match target.and_then(|t| t.target.as_ref()) {
            None => Err(missing_target()),
            Some(Target::ConnectionId(id)) if id.is_empty() => Err(missing_target()),
            Some(Target::ConnectionId(id)) => {
                let Some(conn) = ConnId::parse(id) else {
                    return Err(Status::not_found(format!(
                        "no connection {id:?} on any node"
                    )));
                };
                if self.registry.get(conn).is_some() {
                    return Ok(Route::Here);
                }
                self.need_nats()?;
                let query = Locate {
                    connection_id: id.clone(),
                };
                let mut holders = Vec::new();
                let mut failed = None;
                for (node, answer) in
                    gather::ask_all::<_, Located>(nodes, kind::LOCATE, &query).await
                {
                    match answer {
                        Ok(located) if located.found => holders.push(node),
                        Ok(_) => {}
                        Err(status) => failed = Some(status),
                    }
                }
                match holders.len() {
                    1 => Ok(Route::Node(holders.swap_remove(0))),
                    0 => Err(failed.unwrap_or_else(|| {
                        Status::not_found(format!("no connection {id:?} on any node"))
                    })),
                    _ => Err(Status::failed_precondition(format!(
                        "connection id {id:?} is held by more than one node ({}); target the user instead",
                        holders.join(", ")
                    ))),
                }
            }
            Some(Target::UserId(user)) if user.is_empty() => {
                Err(Status::invalid_argument("user_id is empty"))
            }
            Some(Target::UserId(_)) => {
                // Refused whole rather than applied here only.
                self.need_nats()?;
                Ok(Route::Everywhere(Arc::clone(nodes)))
            }
        }
    }

    /// UNAVAILABLE when this node is in a cluster but has no NATS connection: an
    /// answer from this node alone would leave the others out (after three
    /// heartbeats without NATS its table of nodes is empty).
    pub(super) fn need_nats(&self) -> Result<(), Status> {
        match &self.cluster {
            Some(cluster) if !cluster.is_connected() => Err(Status::unavailable(
                "this node has no NATS connection; the other nodes cannot be reached",
            )),
            _ => Ok(()),
        }
    }

    /// Sends a command to one node and returns its answer.
    pub(super) async fn on_node<Q: prost::Message, R: prost::Message + Default>(
        &self,
        node: &str,
        kind: &str,
        query: &Q,
    ) -> Result<R, Status> {
        let nodes = self
            .nodes
            .as_ref()
            .ok_or_else(|| Status::internal("this node is not in a cluster"))?;
        match gather::ask(nodes, node, kind, query).await? {
            Answer::Ok(r) => Ok(r),
            Answer::Gone => Err(Status::not_found(format!(
                "node {node}, which held the connection, has left"
            ))),
        }
    }

    /// The nodes `Info` lists: the cluster's live nodes, or this one alone.
    pub(super) fn node_list(&self) -> Vec<proto::Node> {
        let beats = match &self.nodes {
            Some(nodes) => nodes.all(),
            None => vec![Beat {
                connections: self.registry.connection_count() as u64,
                ..Beat::clone(&self.me)
            }],
        };
        beats
            .into_iter()
            .map(|b| proto::Node {
                this_node: b.node_id == *self.node_id,
                node_id: b.node_id,
                ws_url: b.ws_url,
                grpc_addr: b.grpc_addr,
                connections: b.connections,
                started_ms: b.started_ms,
            })
            .collect()
    }

    /// Answers one request of another node.
    async fn answer(&self, kind: &str, payload: Bytes) -> Result<Bytes, Status> {
        fn decode<M: prost::Message + Default>(payload: Bytes) -> Result<M, Status> {
            M::decode(payload).map_err(|_| Status::invalid_argument("malformed cluster request"))
        }
        let out = match kind {
            kind::PRESENCE => self.presence_page(decode(payload)?)?.encode_to_vec(),
            kind::STATS => self
                .local_stats(&decode::<StatsQuery>(payload)?.topic, true)?
                .encode_to_vec(),
            kind::SNAPSHOT => self.snapshot_page(decode(payload)?)?.encode_to_vec(),
            kind::LOCATE => {
                let query: Locate = decode(payload)?;
                Located {
                    found: ConnId::parse(&query.connection_id)
                        .and_then(|id| self.registry.get(id))
                        .is_some(),
                }
                .encode_to_vec()
            }
            kind::SUBSCRIBE => self
                .subscribe_local(decode(payload)?)
                .await?
                .encode_to_vec(),
            kind::UNSUBSCRIBE => self.unsubscribe_local(decode(payload)?)?.encode_to_vec(),
            kind::DISCONNECT => self.disconnect_local(decode(payload)?)?.encode_to_vec(),
            other => {
                return Err(Status::unimplemented(format!(
                    "unknown cluster request {other:?}"
                )));
            }
        };
        Ok(out.into())
    }
}

impl gather::Handler for HeraldService {
    fn handle(
        &self,
        kind: &str,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send + '_>> {
        let kind = kind.to_owned();
        Box::pin(async move { self.answer(&kind, payload).await })
    }
}

/// Combines this node's answer with the other nodes': NOT_FOUND from a node
/// means it had none of the target's connections; any other error is the
/// answer (the nodes that succeeded keep what they did); NOT_FOUND when no node
/// had any.
pub(super) fn combine<R>(
    here: Result<R, Status>,
    there: Vec<(String, Result<R, Status>)>,
    merge: impl Fn(&mut R, R),
) -> Result<R, Status> {
    let mut total: Option<R> = None;
    let mut error = None;
    for result in std::iter::once(here).chain(there.into_iter().map(|(_, r)| r)) {
        match result {
            Ok(r) => match &mut total {
                Some(t) => merge(t, r),
                None => total = Some(r),
            },
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                error.get_or_insert(status);
            }
        }
    }
    if let Some(status) = error {
        return Err(status);
    }
    total.ok_or_else(|| Status::not_found("the target has no connections on any node"))
}

/// Adds one node's subscribe answer to the total: connections add up, a topic
/// is recovered when it was on every node.
pub(super) fn merge_subscribed(
    total: &mut proto::SubscribeResponse,
    one: proto::SubscribeResponse,
) {
    total.connections += one.connections;
    for (topic, recovered) in one.recovered {
        *total.recovered.entry(topic).or_insert(true) &= recovered;
    }
    total.positions.extend(one.positions);
}
