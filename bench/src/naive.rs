//! The deliberately naive broadcaster (`herald-bench naive`): the baseline Herald must
//! beat. Every connection sits in one `Mutex<HashMap>` of unbounded senders that each
//! publish walks under the lock; WebSocket connections use tungstenite's default
//! buffers. It speaks the same wire format as Herald: WebSocket `/ws` with
//! `connected`, `subscribe`/`subscribed`, `ping`/`pong` and `message` pushes, and a
//! gRPC server with `Publish` and `PublishStream` (everything else UNIMPLEMENTED).

use crate::proto::herald_server::{Herald, HeraldServer};
use crate::proto::{
    PublishRequest, PublishResponse, PublishStreamRequest, PublishStreamResponse,
    publish_stream_response,
};
use crate::util::Result;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream::Stream;
use tokio_tungstenite::tungstenite::Message;
use tonic::{Request, Response, Status, Streaming};

/// Arguments of `herald-bench naive`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NaiveArgs {
    /// WebSocket listen address.
    #[arg(long)]
    pub(crate) ws_addr: SocketAddr,
    /// gRPC listen address.
    #[arg(long)]
    pub(crate) grpc_addr: SocketAddr,
}

struct Conn {
    tx: UnboundedSender<Message>,
    topics: HashSet<String>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, Conn>,
    seqs: HashMap<String, u64>,
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

impl State {
    fn publish(&self, req: &PublishRequest) -> std::result::Result<u64, Status> {
        let body = if req.content_type.contains("json") {
            serde_json::from_slice::<Value>(&req.data)
                .map_err(|e| Status::invalid_argument(format!("payload is not JSON: {e}")))?;
            String::from_utf8_lossy(&req.data).into_owned()
        } else {
            serde_json::to_string(&String::from_utf8_lossy(&req.data))
                .map_err(|e| Status::internal(e.to_string()))?
        };
        let field = if req.content_type.contains("json") {
            "data"
        } else {
            "text"
        };
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?;
        let seq = {
            let s = g.seqs.entry(req.topic.clone()).or_default();
            *s += 1;
            *s
        };
        let topic =
            serde_json::to_string(&req.topic).map_err(|e| Status::internal(e.to_string()))?;
        let frame =
            format!("{{\"type\":\"message\",\"topic\":{topic},\"seq\":{seq},\"{field}\":{body}}}");
        let msg = Message::text(frame);
        for c in g.conns.values() {
            if c.topics.contains(&req.topic) {
                let _ = c.tx.send(msg.clone());
            }
        }
        Ok(seq)
    }
}

async fn handle_ws(state: Arc<State>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let ws = match tokio_tungstenite::accept_async(tcp).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let id = state.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = tx.send(Message::text(
        json!({"type": "connected", "conn_id": format!("{id:016x}"),
               "ping_interval_ms": 25000, "idle_timeout_ms": 60000})
        .to_string(),
    ));
    if let Ok(mut g) = state.inner.lock() {
        g.conns.insert(
            id,
            Conn {
                tx: tx.clone(),
                topics: HashSet::new(),
            },
        );
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(m)) = stream.next().await {
        let Message::Text(t) = m else {
            if matches!(m, Message::Close(_)) {
                break;
            }
            continue;
        };
        let v: Value = match serde_json::from_str(t.as_str()) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let reply = match v["type"].as_str() {
            Some("subscribe") | Some("unsubscribe") => {
                let sub = v["type"] == "subscribe";
                let topics: Vec<String> = v["topics"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Ok(mut g) = state.inner.lock()
                    && let Some(c) = g.conns.get_mut(&id)
                {
                    for t in &topics {
                        if sub {
                            c.topics.insert(t.clone());
                        } else {
                            c.topics.remove(t);
                        }
                    }
                }
                let ty = if sub { "subscribed" } else { "unsubscribed" };
                json!({"type": ty, "id": v["id"], "topics": topics})
            }
            Some("ping") => json!({"type": "pong", "id": v["id"]}),
            _ => {
                json!({"type": "error", "id": v["id"], "code": "unknown_type", "message": "unknown type"})
            }
        };
        let _ = tx.send(Message::text(reply.to_string()));
    }
    if let Ok(mut g) = state.inner.lock() {
        g.conns.remove(&id);
    }
    drop(tx);
    writer.abort();
}

struct Svc {
    state: Arc<State>,
}

type RespStream =
    Pin<Box<dyn Stream<Item = std::result::Result<PublishStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Herald for Svc {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> std::result::Result<Response<PublishResponse>, Status> {
        let seq = self.state.publish(req.get_ref())?;
        Ok(Response::new(PublishResponse {
            sequence: seq,
            duplicate: false,
            epoch: String::new(),
        }))
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishStreamRequest>>,
    ) -> std::result::Result<Response<RespStream>, Status> {
        let mut inbound = req.into_inner();
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let result = match r.message.as_ref().map(|m| state.publish(m)) {
                    Some(Ok(seq)) => publish_stream_response::Result::Ack(PublishResponse {
                        sequence: seq,
                        duplicate: false,
                        epoch: String::new(),
                    }),
                    Some(Err(st)) => publish_stream_response::Result::Error(crate::proto::Error {
                        code: st.code() as i32,
                        message: st.message().to_string(),
                    }),
                    None => publish_stream_response::Result::Error(crate::proto::Error {
                        code: 3,
                        message: "missing message".into(),
                    }),
                };
                let resp = PublishStreamResponse {
                    client_seq: r.client_seq,
                    result: Some(result),
                    more: Vec::new(),
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Runs the naive broadcaster until killed.
pub(crate) fn run(args: NaiveArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // End with the coordinator: it holds our stdin, and its end closes it.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    rt.block_on(async move {
        let state = Arc::new(State::default());
        let listener = TcpListener::bind(args.ws_addr).await?;
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        tokio::spawn(handle_ws(st.clone(), tcp));
                    }
                    Err(e) => {
                        eprintln!("naive accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        });
        tonic::transport::Server::builder()
            .add_service(HeraldServer::new(Svc { state }))
            .serve(args.grpc_addr)
            .await?;
        Ok(())
    })
}
