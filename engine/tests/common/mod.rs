//! Shared helpers for the engine's integration tests: a real engine on port 0,
//! real WebSocket clients and a real gRPC client.
#![allow(dead_code, missing_docs, unreachable_pub)]

pub mod nats;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::{Config, Engine, proto::herald_client::HeraldClient};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame},
};
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(10);

/// A config that listens on free loopback ports.
pub fn config() -> Config {
    Config {
        ws_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Engine {
    Engine::start(config).await.expect("engine starts")
}

pub async fn grpc(engine: &Engine) -> HeraldClient<Channel> {
    HeraldClient::connect(format!("http://{}", engine.grpc_addr()))
        .await
        .expect("gRPC connects")
}

pub async fn channel(engine: &Engine) -> Channel {
    Channel::from_shared(format!("http://{}", engine.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub fn json_request(topic: &str, value: Value) -> herald::proto::PublishRequest {
    herald::proto::PublishRequest {
        topic: topic.to_owned(),
        data: serde_json::to_vec(&value).unwrap().into(),
        content_type: "application/json".to_owned(),
        ..Default::default()
    }
}

pub async fn publish_json(grpc: &mut HeraldClient<Channel>, topic: &str, value: Value) -> u64 {
    grpc.publish(json_request(topic, value))
        .await
        .expect("publish succeeds")
        .into_inner()
        .sequence
}

/// One WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub conn_id: String,
    next_id: u64,
}

impl Client {
    pub async fn connect(engine: &Engine) -> Self {
        Self::connect_query(engine, "").await
    }

    pub async fn connect_query(engine: &Engine, query: &str) -> Self {
        let url = format!("ws://{}/ws{}", engine.ws_addr(), query);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        let mut client = Self {
            ws,
            conn_id: String::new(),
            next_id: 0,
        };
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "connected", "first frame: {hello}");
        client.conn_id = hello["conn_id"].as_str().unwrap().to_owned();
        client
    }

    /// A client on a socket whose handshake is done and whose first frame has
    /// not been read yet.
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            ws,
            conn_id: String::new(),
            next_id: 0,
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a command with a fresh id and returns the reply with that id.
    pub async fn command(&mut self, mut value: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        value["id"] = json!(id);
        self.send_json(value).await;
        loop {
            let frame = self.next_json().await;
            if frame["id"] == json!(id) {
                return frame;
            }
        }
    }

    pub async fn subscribe(&mut self, topics: &[&str]) {
        let reply = self
            .command(json!({"type": "subscribe", "topics": topics}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    pub async fn unsubscribe(&mut self, topics: &[&str]) {
        let reply = self
            .command(json!({"type": "unsubscribe", "topics": topics}))
            .await;
        assert_eq!(reply["type"], "unsubscribed", "{reply}");
    }

    /// The next text frame as JSON (pings and pongs are skipped).
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Frame::Json(v) => v,
            Frame::Closed(c) => panic!("expected a frame, the connection closed: {c:?}"),
        }
    }

    pub async fn next_frame(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Frame::Json(serde_json::from_str(&t).expect("valid JSON"));
                }
                Some(Ok(Message::Close(c))) => return Frame::Closed(c),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Closed(None),
            }
        }
    }

    /// Waits for the next `message` push (skipping other frames).
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "message" {
                return frame;
            }
        }
    }

    /// Asserts that no `message` arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_ne!(v["type"], "message", "unexpected message {v}");
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Reads until the close frame, returning every JSON frame before it.
    pub async fn read_until_close(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut frames = Vec::new();
        loop {
            match self.next_frame().await {
                Frame::Json(v) => frames.push(v),
                Frame::Closed(c) => return (frames, c),
            }
        }
    }
}

#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<CloseFrame>),
}

/// A raw TCP connection that has completed the WebSocket handshake and then
/// only reads when told to: it never answers pings and never sends a frame.
pub async fn raw_ws(engine: &Engine) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(engine.ws_addr()).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        engine.ws_addr()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Polls `cond` until it holds or the wait runs out.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
