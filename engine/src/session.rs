//! One client session: the WebSocket handshake (path, user, info), registration,
//! then the read loop that handles the client's commands. The session owns the
//! receiving half of the socket and spawns the connection's writer
//! ([`crate::writer`]) for the sending half. However the session ends, the
//! connection leaves every topic and the registry.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream::SplitStream};
use tokio::{net::TcpStream, sync::oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::StatusCode,
        protocol::WebSocketConfig,
    },
};

use crate::{
    config::Config,
    conn::Conn,
    protocol::{self, Command, Reply, close},
    queue::Close,
    registry::{Entry, Registry, SubscribeError},
    tls::{self, Stream},
    writer::{self, Timing},
};

/// How long a session waits for the client's close reply after the server closed.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Who is connecting, as decided during the handshake. This is the one place where
/// an authenticator will decide the user.
#[derive(Debug, Default)]
struct Identity {
    user: Option<Arc<str>>,
    info: Option<Arc<str>>,
}

/// Serves one accepted TCP connection until it closes: handshake (TLS first when
/// the listener serves it), registration and writer, the read loop, then cleanup.
pub(crate) async fn serve(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    config: Arc<Config>,
    registry: Arc<Registry>,
) {
    let Some((ws, identity)) = handshake(stream, tls.as_ref(), &config).await else {
        return;
    };
    let entry = registry.register(identity.user, identity.info);
    let conn = Arc::clone(entry.conn());
    let (sink, mut stream) = ws.split();
    let (done_tx, mut done_rx) = oneshot::channel();
    let timing = Timing::from_config(&config);
    let writer = tokio::spawn(writer::run(sink, Arc::clone(&conn), timing, done_tx));
    conn.reply(Reply::Connected {
        conn_id: &conn.id().to_string(),
        ping_interval_ms: timing.ping_interval.as_millis() as u64,
        idle_timeout_ms: timing.idle_timeout.as_millis() as u64,
    });
    tracing::debug!(conn = %conn.id(), user = ?conn.user(), "connected");

    read_loop(&entry, &mut stream, &mut done_rx, &registry, &config).await;

    registry.unregister(&entry);
    conn.close(Close::gone());
    // The writer ends promptly: a gone close abandons any write in progress.
    let _ = writer.await;
    tracing::debug!(conn = %conn.id(), "disconnected");
}

/// The TLS handshake when the listener serves TLS, then the WebSocket handshake:
/// the path, then the identity from the query; both within the handshake timeout.
/// `None` when the client is refused or the handshake fails or times out.
async fn handshake(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    config: &Config,
) -> Option<(WebSocketStream<Stream>, Identity)> {
    let _ = stream.set_nodelay(true);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let mut identity = Identity::default();
    // The error type is fixed by tungstenite's handshake callback.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != config.ws_path {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no WebSocket endpoint here; use {}", config.ws_path),
            ));
        }
        identity = parse_identity(req.uri().query().unwrap_or(""), config)
            .map_err(|msg| refuse(StatusCode::BAD_REQUEST, msg))?;
        Ok(resp)
    };
    let handshake = async {
        let stream = tls::accept(stream, tls)
            .await
            .map_err(tungstenite::Error::Io)?;
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config)).await
    };
    match tokio::time::timeout(config.handshake_timeout.0, handshake).await {
        Ok(Ok(ws)) => Some((ws, identity)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("handshake timed out");
            None
        }
    }
}

/// Reads the client's frames until the socket ends, a read fails, or the writer
/// has sent the server's close frame.
async fn read_loop(
    entry: &Arc<Entry>,
    stream: &mut SplitStream<WebSocketStream<Stream>>,
    done_rx: &mut oneshot::Receiver<()>,
    registry: &Registry,
    config: &Config,
) {
    let conn = entry.conn();
    loop {
        let next = tokio::select! {
            biased;
            done = &mut *done_rx => {
                if done.is_ok() {
                    // The server sent a close frame: read until the client answers.
                    let _ = tokio::time::timeout(CLOSE_LINGER, async {
                        while let Some(Ok(_)) = stream.next().await {}
                    }).await;
                }
                return;
            }
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Ok(message)) => {
                conn.touch();
                handle_message(entry, registry, config, message);
            }
            Some(Err(e)) => {
                if let Some(close) = close_for(&e) {
                    conn.close(close);
                    // Let the writer send the close frame, then stop.
                    let _ = tokio::time::timeout(CLOSE_LINGER, &mut *done_rx).await;
                }
                tracing::debug!(conn = %conn.id(), error = %e, "read ended");
                return;
            }
        }
    }
}

fn handle_message(entry: &Arc<Entry>, registry: &Registry, config: &Config, message: Message) {
    let conn = entry.conn();
    let text = match message {
        Message::Text(text) => text,
        Message::Binary(_) => {
            return send_error(
                conn,
                None,
                "binary_unsupported",
                "binary frames are not supported; send JSON text frames",
            );
        }
        // Pings are answered by the WebSocket layer; pongs and the close handshake
        // only count as activity.
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return,
    };
    let command = match protocol::parse_command(&text) {
        Ok(command) => command,
        Err(e) => return send_error(conn, e.id, e.code, &e.message),
    };
    let one = std::slice::from_ref(entry);
    match command {
        Command::Ping { id } => {
            conn.reply(Reply::Pong { id });
        }
        Command::Subscribe { id, topics } | Command::Unsubscribe { id, topics }
            if topics.len() > config.max_topics_per_command =>
        {
            let message = format!(
                "{} topics in one command; the limit is {}",
                topics.len(),
                config.max_topics_per_command
            );
            send_error(conn, id, "too_many_topics", &message);
        }
        Command::Subscribe { id, topics } => match registry.subscribe(one, &topics) {
            Ok(_) => {
                conn.reply(Reply::Subscribed {
                    id,
                    topics: &topics,
                    server: false,
                });
            }
            Err(e) => send_error(conn, id, subscribe_error_code(&e), &e.to_string()),
        },
        Command::Unsubscribe { id, topics } => match registry.unsubscribe(one, &topics) {
            Ok(_) => {
                conn.reply(Reply::Unsubscribed {
                    id,
                    topics: &topics,
                    server: false,
                });
            }
            Err(e) => send_error(conn, id, subscribe_error_code(&e), &e.to_string()),
        },
    }
}

fn subscribe_error_code(e: &SubscribeError) -> &'static str {
    match e {
        SubscribeError::InvalidTopic(_) => "invalid_topic",
        SubscribeError::TooMany { .. } => "too_many_subscriptions",
        SubscribeError::Closed => "closed",
    }
}

fn send_error(conn: &Conn, id: Option<u64>, code: &str, message: &str) {
    conn.reply(Reply::Error { id, code, message });
}

/// The close a read error calls for; `None` when the socket is simply gone.
fn close_for(e: &tungstenite::Error) -> Option<Close> {
    match e {
        tungstenite::Error::Capacity(_) => Some(Close::protocol(close::TOO_BIG, "message too big")),
        tungstenite::Error::Utf8(_) => Some(Close::protocol(
            close::INVALID_PAYLOAD,
            "invalid UTF-8 in text frame",
        )),
        tungstenite::Error::Protocol(_) => {
            Some(Close::protocol(close::PROTOCOL_ERROR, "protocol error"))
        }
        _ => None,
    }
}

fn refuse(status: StatusCode, message: String) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(message));
    *resp.status_mut() = status;
    resp
}

fn parse_identity(query: &str, config: &Config) -> Result<Identity, String> {
    let mut identity = Identity::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| format!("query parameter {key:?} is not valid percent-encoded UTF-8"))?;
        match key {
            "user" => {
                if value.is_empty()
                    || value.len() > config.max_user_id_len
                    || value.chars().any(char::is_control)
                {
                    return Err(format!(
                        "user must be 1 to {} bytes without control characters",
                        config.max_user_id_len
                    ));
                }
                identity.user = Some(Arc::from(value));
            }
            "info" => {
                if value.len() > config.max_info_bytes {
                    return Err(format!(
                        "info is {} bytes; the limit is {}",
                        value.len(),
                        config.max_info_bytes
                    ));
                }
                let parsed: serde_json::Value = serde_json::from_str(&value)
                    .map_err(|e| format!("info is not valid JSON: {e}"))?;
                identity.info = Some(Arc::from(parsed.to_string()));
            }
            _ => {}
        }
    }
    Ok(identity)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(
            percent_decode("%7B%22a%22%3A1%7D").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%f"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn identity_from_query() {
        let config = Config::default();
        let id = parse_identity("user=alice&info=%7B%22n%22%3A1%7D", &config).unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert_eq!(id.info.as_deref(), Some("{\"n\":1}"));
        assert!(parse_identity("info=nope", &config).is_err());
        assert!(parse_identity("user=", &config).is_err());
        assert!(parse_identity(&format!("user={}", "x".repeat(200)), &config).is_err());
    }
}
