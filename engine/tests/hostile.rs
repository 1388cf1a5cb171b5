//! Hostile and malformed input over real sockets (docs/security.md, "Bad input"):
//! each gets its documented answer, and a well-behaved client on the same engine
//! keeps receiving throughout. Frame-size (1009), malformed commands and unknown
//! types are in client_errors.rs, oversized gRPC requests in fanout.rs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, config, grpc, publish_json, raw_ws, start};
use herald::{Engine, config::Dur};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A subscribed client that must keep receiving.
struct Bystander {
    client: Client,
    n: u64,
}

impl Bystander {
    async fn new(engine: &Engine) -> Self {
        let mut client = Client::connect(engine).await;
        client.subscribe(&["calm"]).await;
        Self { client, n: 0 }
    }

    async fn still_receives(&mut self, engine: &Engine) {
        self.n += 1;
        let mut producer = grpc(engine).await;
        publish_json(&mut producer, "calm", json!(self.n)).await;
        assert_eq!(self.client.next_message().await["data"], json!(self.n));
    }
}

/// Sends raw bytes and reads the HTTP answer until the server closes.
async fn http_answer(engine: &Engine, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(engine.ws_addr()).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn upgrade(method: &str, extra: &str) -> Vec<u8> {
    format!("{method} /ws HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
}

#[tokio::test]
async fn requests_that_are_not_websocket_upgrades_get_their_http_status() {
    let engine = start(config()).await;
    let mut calm = Bystander::new(&engine).await;

    let garbage = http_answer(
        &engine,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    )
    .await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    assert!(garbage.contains("not an HTTP request"), "{garbage}");

    let full =
        format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n");
    let post = http_answer(&engine, &upgrade("POST", &full)).await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("Allow: GET"), "{post}");

    let plain = http_answer(&engine, &upgrade("GET", "")).await;
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    assert!(plain.contains("Upgrade: websocket"), "{plain}");

    let version = http_answer(
        &engine,
        &upgrade("GET", &full.replace("Version: 13", "Version: 8")),
    )
    .await;
    assert!(version.starts_with("HTTP/1.1 426 "), "{version}");
    assert!(version.contains("Sec-WebSocket-Version: 13"), "{version}");

    let no_key = http_answer(&engine, &upgrade("GET", &full.replace(KEY, ""))).await;
    assert!(no_key.starts_with("HTTP/1.1 400 "), "{no_key}");
    assert!(no_key.contains("Sec-WebSocket-Key"), "{no_key}");

    let huge = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\n{full}\r\n",
        "t".repeat(20_000)
    );
    let huge = http_answer(&engine, huge.as_bytes()).await;
    assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");

    let long_user = format!(
        "GET /ws?user={} HTTP/1.1\r\nHost: x\r\n{full}\r\n",
        "u".repeat(500)
    );
    let long_user = http_answer(&engine, long_user.as_bytes()).await;
    assert!(long_user.starts_with("HTTP/1.1 400 "), "{long_user}");
    let big_info = format!(
        "GET /ws?info=%22{}%22 HTTP/1.1\r\nHost: x\r\n{full}\r\n",
        "i".repeat(5000)
    );
    let big_info = http_answer(&engine, big_info.as_bytes()).await;
    assert!(big_info.starts_with("HTTP/1.1 400 "), "{big_info}");

    calm.still_receives(&engine).await;
    assert_eq!(engine.stats().connections, 1);
}

#[tokio::test]
async fn a_request_head_sent_byte_by_byte_is_cut_off_at_the_handshake_timeout() {
    let mut cfg = config();
    cfg.handshake_timeout = Dur(Duration::from_millis(800));
    let engine = start(cfg).await;
    let mut calm = Bystander::new(&engine).await;
    let mut tcp = TcpStream::connect(engine.ws_addr()).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = upgrade("GET", "Upgrade: websocket\r\n");
    let mut closed = false;
    for byte in request.iter().cycle().take(200) {
        if tcp.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was never cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    calm.still_receives(&engine).await;
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [1u8, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until the close frame; its code (`None` when the socket
/// ended without one).
async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let read = async {
        loop {
            let mut head = [0u8; 2];
            tcp.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    tcp.read_exact(&mut l).await.ok()?;
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    tcp.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            tcp.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
    };
    tokio::time::timeout(common::WAIT, read)
        .await
        .expect("the server closes")
}

/// Sends the frames while reading (so that the close frame is read before the
/// server's reset for unread frames can discard it), and returns the close code.
async fn close_after(engine: &Engine, frames: &[Vec<u8>]) -> Option<u16> {
    let tcp = raw_ws(engine).await.into_std().unwrap();
    let mut reader = TcpStream::from_std(tcp.try_clone().unwrap()).unwrap();
    let mut writer = TcpStream::from_std(tcp).unwrap();
    let bytes = frames.concat();
    let send = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        writer
    });
    let code = close_code(&mut reader).await;
    drop(send.await);
    code
}

#[tokio::test]
async fn broken_frames_close_with_their_websocket_codes() {
    let mut cfg = config();
    cfg.max_frame_bytes = 1024;
    let engine = start(cfg).await;
    let mut calm = Bystander::new(&engine).await;

    // Invalid UTF-8 in a text frame.
    let code = close_after(&engine, &[frame(0x81, &[0xff, 0xfe, 0xfd], true)]).await;
    assert_eq!(code, Some(1007));
    calm.still_receives(&engine).await;

    // An unmasked client frame.
    let code = close_after(&engine, &[frame(0x81, br#"{"type":"ping"}"#, false)]).await;
    assert_eq!(code, Some(1002));
    // A reserved opcode.
    let code = close_after(&engine, &[frame(0x83, b"x", true)]).await;
    assert_eq!(code, Some(1002));
    // Reserved bits set.
    let code = close_after(&engine, &[frame(0xc1, b"x", true)]).await;
    assert_eq!(code, Some(1002));
    // A continuation without a start.
    let code = close_after(&engine, &[frame(0x80, b"x", true)]).await;
    assert_eq!(code, Some(1002));
    calm.still_receives(&engine).await;

    // A fragmented message whose fragments are each small but grow past the limit.
    let part = vec![b'a'; 600];
    let code = close_after(
        &engine,
        &[
            frame(0x01, &part, true),
            frame(0x00, &part, true),
            frame(0x80, &part, true),
        ],
    )
    .await;
    assert_eq!(code, Some(1009));
    // A frame header announcing 2^62 bytes.
    let mut lie = vec![0x81, 0x80 | 127];
    lie.extend_from_slice(&(1u64 << 62).to_be_bytes());
    lie.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_after(&engine, &[lie]).await, Some(1009));

    calm.still_receives(&engine).await;
    common::eventually("the broken connections are gone", || {
        engine.stats().connections == 1
    })
    .await;
}

#[tokio::test]
async fn invalid_and_deeply_nested_json_get_bad_frame_and_the_connection_stays() {
    let engine = start(config()).await;
    let mut calm = Bystander::new(&engine).await;
    let mut c = Client::connect(&engine).await;
    for text in [
        "{\"type\":".to_owned(),
        "[".repeat(30_000),
        format!("{}{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)),
        "\"\\ud800\"".to_owned(),
        "{\"type\":\"subscribe\",\"topics\":\"notalist\"}".to_owned(),
        "{\"type\":\"subscribe\",\"topics\":[1,2]}".to_owned(),
        "{\"type\":\"ping\",\"id\":-1}".to_owned(),
    ] {
        c.send_text(&text).await;
        let e = c.next_json().await;
        assert_eq!(e["code"], "bad_frame", "{text:.40}: {e}");
    }
    assert_eq!(c.command(json!({"type": "ping"})).await["type"], "pong");
    calm.still_receives(&engine).await;
}

#[tokio::test]
async fn a_ping_flood_and_a_subscribe_burst_are_cut_off_as_floods() {
    // The defaults: 100 commands/s, burst 200, 100 refusals close (4006).
    let engine = start(config()).await;
    let mut calm = Bystander::new(&engine).await;

    let ping = frame(0x89, b"flood", true);
    let flood: Vec<Vec<u8>> = vec![ping; 5_000];
    assert_eq!(close_after(&engine, &flood).await, Some(4006));
    calm.still_receives(&engine).await;

    // 10,000 subscribe commands in one burst: the first ones are served, then
    // `rate_limited`, then the connection is closed.
    let mut burst = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let cmd = json!({"type": "subscribe", "id": i, "topics": [format!("burst:{i}")]});
        burst.push(frame(0x81, cmd.to_string().as_bytes(), true));
    }
    assert_eq!(close_after(&engine, &burst).await, Some(4006));
    calm.still_receives(&engine).await;
    common::eventually("the flooding connections are gone", || {
        let s = engine.stats();
        s.connections == 1 && s.subscriptions == 1
    })
    .await;
}

#[tokio::test]
async fn excess_commands_get_rate_limited_errors_with_their_ids() {
    let mut cfg = config();
    cfg.client_command_rate = 2.0;
    cfg.client_command_burst = 3;
    cfg.client_command_flood = 0;
    let engine = start(cfg).await;
    let mut c = Client::connect(&engine).await;
    for i in 1..=6 {
        c.send_json(json!({"type": "ping", "id": i})).await;
    }
    let mut limited = Vec::new();
    for _ in 1..=6 {
        let reply = c.next_json().await;
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            limited.push(reply["id"].as_u64().unwrap());
        } else {
            assert_eq!(reply["type"], "pong");
        }
    }
    assert_eq!(limited, vec![4, 5, 6]);
    // The bucket refills: after a pause the connection is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.command(json!({"type": "ping"})).await["type"], "pong");
}
