//! One client session: the WebSocket handshake (path, user, info, or a token),
//! authentication by a `connect` frame when the handshake carried no token,
//! registration, then the read loop that handles the client's commands and the
//! token's expiry. The session owns the receiving half of the socket and spawns
//! the connection's writer ([`crate::writer`]) for the sending half. However the
//! session ends, the connection leaves every topic and the registry.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{SinkExt, StreamExt, stream::SplitStream};
use tokio::{net::TcpStream, sync::oneshot, time::Instant};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message, Utf8Bytes,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

use crate::{
    auth::{ClientAccess, TokenError, Verified},
    broker::{Broker, BrokerError},
    config::Config,
    conn::Conn,
    handshake::{self, HttpError, ReadError, Upgrade},
    history::{Recovery, Since},
    limits::{CommandRate, ConnLimits, Refusal, Slot, Verdict},
    protocol::{self, Command, Reply, WirePosition, close},
    queue::Close,
    registry::{Entry, Registry, SubscribeError},
    rules::Principal,
    tls::{self, Stream},
    writer::{self, Timing},
};

/// How long a session waits for the client's close reply after the server closed.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What every session of the listener shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The configuration.
    pub(crate) config: Arc<Config>,
    /// The node's connections and topics.
    pub(crate) registry: Arc<Registry>,
    /// Subscribes that recover (`since`) go through the broker, which keeps history.
    pub(crate) broker: Arc<dyn Broker>,
    /// Token keys and topic rules.
    pub(crate) access: Arc<ClientAccess>,
    /// Origins and connection limits.
    pub(crate) limits: Arc<ConnLimits>,
}

/// Who is connecting, as decided during the handshake. This is the one place where
/// an authenticator will decide the user.
#[derive(Debug, Default)]
struct Identity {
    user: Option<Arc<str>>,
    info: Option<Arc<str>>,
    /// The `token` query parameter.
    token: Option<String>,
    /// The verified token, when the handshake carried one.
    verified: Option<Verified>,
}

/// The token state of an authenticated connection, kept by its read loop.
#[derive(Debug, Default)]
struct TokenState {
    principal: Principal,
    /// When the token stops being valid: the connection is closed (4004).
    expires: Option<Instant>,
    /// When `refresh_required` is sent; cleared once it was.
    refresh_at: Option<Instant>,
    /// The token's `exp`, as told to the client.
    exp: Option<u64>,
}

impl TokenState {
    fn set(&mut self, verified: &Verified, access: &ClientAccess) {
        self.principal = Principal {
            authenticated: true,
            user: Some(Arc::clone(&verified.user)),
            granted: verified.granted.clone(),
        };
        self.exp = verified.exp;
        let now = Instant::now();
        self.expires = access.expiry(verified.exp).map(|at| {
            now + at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        self.refresh_at = self.expires.map(|at| {
            at.checked_sub(access.refresh_before)
                .unwrap_or(now)
                .max(now)
        });
    }
}

/// Serves one accepted TCP connection until it closes: handshake (TLS first when
/// the listener serves it, and the `connect` frame when authentication is on and
/// the handshake had no token), registration and writer, the read loop, then cleanup.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    let (config, registry, access) = (&ctx.config, &ctx.registry, &ctx.access);
    let deadline = Instant::now() + config.handshake_timeout.0;
    // The handshake's futures (read buffers, the TLS acceptor, header parsing) are
    // boxed: inline, they would size this task's future, and so every connection's
    // memory, for its whole life rather than for its first milliseconds.
    let Some((mut ws, mut identity, mut slot)) =
        Box::pin(handshake(stream, peer, tls.as_ref(), &ctx)).await
    else {
        return;
    };
    // Positions the connect frame asks to recover the token's subscribe claim from.
    let mut claim_since = HashMap::new();
    if let Some(tokens) = &access.tokens
        && identity.verified.is_none()
    {
        let Some((verified, since)) = Box::pin(wait_for_connect(&mut ws, tokens, deadline)).await
        else {
            return;
        };
        claim_since = since;
        if let Err(refusal) = ctx.limits.admit_user(&mut slot, &verified.user) {
            refuse_frame(
                &mut ws,
                None,
                refusal.code,
                &refusal.message,
                close::TOO_MANY_CONNECTIONS,
                true,
            )
            .await;
            return;
        }
        identity.verified = Some(verified);
    }
    let mut token = TokenState::default();
    if let Some(verified) = &identity.verified {
        identity.user = Some(Arc::clone(&verified.user));
        identity.info = verified.info.clone();
        token.set(verified, access);
    }
    let entry = registry.register(identity.user, identity.info);
    let conn = Arc::clone(entry.conn());
    let (sink, mut stream) = ws.split();
    let (done_tx, mut done_rx) = oneshot::channel();
    let timing = Timing::from_config(config);
    let writer = tokio::spawn(writer::run(sink, Arc::clone(&conn), timing, done_tx));
    conn.reply(Reply::Connected {
        conn_id: &conn.id().to_string(),
        ping_interval_ms: timing.ping_interval.as_millis() as u64,
        idle_timeout_ms: timing.idle_timeout.as_millis() as u64,
    });
    // The token's `subscribe` claim. The topics and their number were checked with
    // the token; a new connection has no other topics. With positions from the
    // connect frame it recovers like a client's subscribe with `since` (missed
    // messages first, then the `subscribed` push saying what was recovered);
    // otherwise it is announced, then applied, so that every message of these
    // topics follows the announcement.
    claim_since.retain(|topic, _| {
        identity
            .verified
            .as_ref()
            .is_some_and(|v| v.subscribe.contains(topic))
    });
    if let Some(topics) = identity.verified.as_ref().map(|v| &v.subscribe)
        && !topics.is_empty()
        && !claim_since.is_empty()
    {
        let one = std::slice::from_ref(&entry);
        match ctx.broker.subscribe(one, topics, &claim_since).await {
            Ok(done) => {
                let recoveries = done.connections.into_iter().next().map(|(_, r)| r);
                let (recovered, positions) = recovery_maps(recoveries.unwrap_or_default());
                conn.reply(Reply::Subscribed {
                    id: None,
                    topics,
                    server: true,
                    recovered: Some(&recovered),
                    positions: Some(&positions),
                });
            }
            Err(e) => tracing::warn!(conn = %conn.id(), error = %e, "subscribe claim not applied"),
        }
    } else if let Some(topics) = identity.verified.as_ref().map(|v| &v.subscribe)
        && !topics.is_empty()
    {
        conn.reply(Reply::Subscribed {
            id: None,
            topics,
            server: true,
            recovered: None,
            positions: None,
        });
        let one = std::slice::from_ref(&entry);
        if let Err(e) = ctx.broker.subscribe(one, topics, &HashMap::new()).await {
            tracing::warn!(conn = %conn.id(), error = %e, "subscribe claim not applied");
        }
    }
    tracing::debug!(conn = %conn.id(), user = ?conn.user(), "connected");

    let mut session = Session {
        entry: &entry,
        registry,
        broker: &*ctx.broker,
        config,
        access,
        token,
        commands: CommandRate::new(config),
        flooded: false,
    };
    read_loop(&mut session, &mut stream, &mut done_rx).await;

    registry.unregister(&entry);
    conn.close(Close::gone());
    // The writer ends promptly: a gone close abandons any write in progress.
    let _ = writer.await;
    drop(slot);
    tracing::debug!(conn = %conn.id(), "disconnected");
}

/// The TLS handshake when the listener serves TLS, then the WebSocket handshake
/// ([`crate::handshake`]): the request, the origin, the connection limits and the
/// identity from the query (or the token in it); all within the handshake
/// timeout. `None` when the client is refused (it has been answered) or the
/// handshake fails or times out.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&TlsAcceptor>,
    ctx: &Ctx,
) -> Option<(WebSocketStream<Stream>, Identity, Slot)> {
    let config = &*ctx.config;
    let _ = stream.set_nodelay(true);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let work = async {
        let mut stream = match tls::accept(stream, tls).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return None;
            }
        };
        let upgrade = match handshake::read_upgrade(&mut stream, &config.ws_path).await {
            Ok(upgrade) => upgrade,
            Err(ReadError::Gone) => return None,
            Err(ReadError::Refuse(e)) => {
                tracing::debug!(status = e.status, reason = %e.reason, "handshake refused");
                handshake::respond(&mut stream, &e).await;
                return None;
            }
        };
        match admit(&upgrade, peer, ctx) {
            Ok((identity, slot)) => {
                if let Err(e) = handshake::accept(&mut stream, &upgrade).await {
                    tracing::debug!(error = %e, "handshake failed");
                    return None;
                }
                let ws = WebSocketStream::from_partially_read(
                    stream,
                    upgrade.tail,
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                Some((ws, identity, slot))
            }
            Err(e) => {
                tracing::debug!(status = e.status, reason = %e.reason, "handshake refused");
                handshake::respond(&mut stream, &e).await;
                None
            }
        }
    };
    match tokio::time::timeout(config.handshake_timeout.0, work).await {
        Ok(done) => done,
        Err(_) => {
            tracing::debug!("handshake timed out");
            None
        }
    }
}

/// The engine's checks of an upgrade request, cheapest first: the origin, the
/// connection limits, the identity (a token is verified here), the user's limit.
fn admit(upgrade: &Upgrade, peer: SocketAddr, ctx: &Ctx) -> Result<(Identity, Slot), HttpError> {
    let (config, access, limits) = (&*ctx.config, &*ctx.access, &ctx.limits);
    if let Some(origin) = &upgrade.origin
        && !limits.origins.allows(origin)
    {
        return Err(HttpError::new(
            403,
            format!("origin_forbidden: origin {origin:?} may not connect to this server"),
        ));
    }
    let mut slot = limits.admit(peer.ip()).map_err(limit_error)?;
    let mut identity =
        parse_identity(&upgrade.query, config).map_err(|m| HttpError::new(400, m))?;
    if let Some(tokens) = &access.tokens {
        if identity.user.is_some() || identity.info.is_some() {
            return Err(HttpError::new(
                400,
                "token authentication is on: the user and info come from the token, \
                 not from ?user= or ?info=",
            ));
        }
        if let Some(token) = identity.token.take() {
            let verified = tokens.verify(&token).map_err(|e| {
                tracing::debug!(code = e.code(), "handshake token refused");
                HttpError::new(401, format!("{}: {e}", e.code()))
            })?;
            identity.verified = Some(verified);
        }
    }
    let user = identity
        .verified
        .as_ref()
        .map(|v| &v.user)
        .or(identity.user.as_ref());
    if let Some(user) = user {
        limits.admit_user(&mut slot, user).map_err(limit_error)?;
    }
    Ok((identity, slot))
}

fn limit_error(refusal: Refusal) -> HttpError {
    HttpError::new(
        refusal.status,
        format!("{}: {}", refusal.code, refusal.message),
    )
    .retry_after(refusal.retry_after)
}

/// Waits for the first frame of a connection whose handshake carried no token:
/// it must be `{"type":"connect","token":…}` and arrive before `deadline`.
/// WebSocket pings are answered meanwhile; anything else is refused. `None` when
/// the connection was refused (it has been sent an `error` and a close) or is gone.
async fn wait_for_connect(
    ws: &mut WebSocketStream<Stream>,
    tokens: &crate::auth::Authenticator,
    deadline: Instant,
) -> Option<(Verified, HashMap<String, Since>)> {
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(next) => next,
            Err(_) => {
                let reason = "no connect frame within the handshake timeout";
                refuse_frame(ws, None, "auth_timeout", reason, close::AUTH_TIMEOUT, true).await;
                return None;
            }
        };
        let text = match next {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => Utf8Bytes::from_static(""),
        };
        let (id, token, since) = match protocol::parse_command(&text) {
            Ok(Command::Connect { id, token, since }) => (id, token, since),
            Ok(_) | Err(_) => {
                let message = "authenticate first: the first frame must be {\"type\":\"connect\",\"token\":\"…\"}";
                refuse_frame(
                    ws,
                    None,
                    "not_authenticated",
                    message,
                    close::UNAUTHORIZED,
                    false,
                )
                .await;
                return None;
            }
        };
        return match tokens.verify(&token) {
            Ok(verified) => Some((verified, since)),
            Err(e) => {
                tracing::debug!(code = e.code(), "connect token refused");
                let (code, reconnect) = if e == TokenError::Expired {
                    (close::TOKEN_EXPIRED, true)
                } else {
                    (close::UNAUTHORIZED, false)
                };
                refuse_frame(ws, id, e.code(), &e.to_string(), code, reconnect).await;
                None
            }
        };
    }
}

/// Refuses an unauthenticated connection: an `error`, a `disconnect` notice and
/// the close frame, then a short wait for the client's close reply.
async fn refuse_frame(
    ws: &mut WebSocketStream<Stream>,
    id: Option<u64>,
    error: &str,
    message: &str,
    code: u16,
    reconnect: bool,
) {
    let frames = [
        Message::Text(
            Reply::Error {
                id,
                code: error,
                message,
            }
            .encode(),
        ),
        Message::Text(
            Reply::Disconnect {
                code,
                reason: error,
                reconnect,
            }
            .encode(),
        ),
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(error.to_owned()),
        })),
    ];
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        for frame in frames {
            if ws.feed(frame).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What the read loop works with.
struct Session<'a> {
    entry: &'a Arc<Entry>,
    registry: &'a Registry,
    /// Subscribes that recover (`since`) go through the broker, which keeps history.
    broker: &'a dyn Broker,
    config: &'a Config,
    access: &'a ClientAccess,
    token: TokenState,
    commands: CommandRate,
    /// Set once the connection was closed for a command flood.
    flooded: bool,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the client's frames until the socket ends, a read fails, or the writer
/// has sent the server's close frame. Sends `refresh_required` before the token
/// expires and closes the connection (4004) when it does.
async fn read_loop(
    session: &mut Session<'_>,
    stream: &mut SplitStream<WebSocketStream<Stream>>,
    done_rx: &mut oneshot::Receiver<()>,
) {
    let conn = Arc::clone(session.entry.conn());
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
            () = sleep_until(session.token.expires) => {
                tracing::debug!(conn = %conn.id(), "token expired");
                session.token.expires = None;
                session.token.refresh_at = None;
                conn.close(Close::by_producer(
                    close::TOKEN_EXPIRED,
                    "token expired".to_owned(),
                    true,
                ));
                continue;
            }
            () = sleep_until(session.token.refresh_at) => {
                session.token.refresh_at = None;
                if let Some(expires_at) = session.token.exp {
                    conn.reply(Reply::RefreshRequired { expires_at });
                }
                continue;
            }
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Ok(message)) => {
                conn.touch();
                if session.flooded {
                    // Closing: read (and drop) what the client still sends until the
                    // close frame is out, so the socket does not end in a reset.
                    continue;
                }
                let counted = matches!(
                    message,
                    Message::Text(_) | Message::Binary(_) | Message::Ping(_)
                );
                let verdict = if counted {
                    session.commands.check()
                } else {
                    Verdict::Allow
                };
                match verdict {
                    Verdict::Allow => handle_message(session, message).await,
                    Verdict::Refuse(wait) => refuse_command(&conn, &message, wait),
                    Verdict::Flood => {
                        tracing::debug!(conn = %conn.id(), "command flood; closing");
                        session.flooded = true;
                        conn.close(Close {
                            code: close::RATE_LIMITED,
                            reason: "command flood".into(),
                            reconnect: true,
                            drain: false,
                        });
                    }
                }
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

/// Answers a command over the connection's rate with `rate_limited` (pings get
/// no answer: they only count towards the flood).
fn refuse_command(conn: &Conn, message: &Message, wait: Duration) {
    let id = match message {
        Message::Text(text) => protocol::command_id(text),
        Message::Binary(_) => None,
        _ => return,
    };
    let message = format!(
        "too many commands; the next is accepted in {} ms",
        wait.as_millis().max(1)
    );
    send_error(conn, id, "rate_limited", &message);
}

async fn handle_message(session: &mut Session<'_>, message: Message) {
    let (entry, registry, config) = (session.entry, session.registry, session.config);
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
        Command::Subscribe { id, topics, .. } | Command::Unsubscribe { id, topics }
            if topics.len() > config.max_topics_per_command =>
        {
            let message = format!(
                "{} topics in one command; the limit is {}",
                topics.len(),
                config.max_topics_per_command
            );
            send_error(conn, id, "too_many_topics", &message);
        }
        Command::Subscribe { id, topics, since } => {
            // Topic rules first (on valid names; an invalid name is refused by the
            // registry below): a forbidden topic refuses the whole command.
            let forbidden = topics
                .iter()
                .filter(|t| registry.validate_topic(t).is_ok())
                .find_map(|t| {
                    session
                        .access
                        .rules
                        .check(t, &session.token.principal)
                        .err()
                });
            if let Some(e) = forbidden {
                return send_error(conn, id, "forbidden", &e.to_string());
            }
            subscribe(conn, session.broker, one, id, &topics, &since).await;
        }
        Command::Connect { id, .. } => {
            let message = if session.access.tokens.is_some() {
                "the connection is already authenticated; use refresh to replace its token"
            } else {
                "token authentication is off on this server; no connect frame is needed"
            };
            send_error(conn, id, "already_connected", message);
        }
        Command::Refresh { id, token } => refresh(session, id, &token),
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

/// A client's subscribe, through the broker (in a cluster it answers once the
/// node receives the topics from the other nodes). With `since`, the broker
/// replays what the connection missed (before any live message) and the reply,
/// which follows the replayed messages, says per topic whether it could.
async fn subscribe(
    conn: &Conn,
    broker: &dyn Broker,
    one: &[Arc<Entry>],
    id: Option<u64>,
    topics: &[String],
    since: &HashMap<String, Since>,
) {
    match broker.subscribe(one, topics, since).await {
        Ok(done) => {
            let maps = (!since.is_empty()).then(|| {
                let recoveries = done.connections.into_iter().next().map(|(_, r)| r);
                recovery_maps(recoveries.unwrap_or_default())
            });
            conn.reply(Reply::Subscribed {
                id,
                topics,
                server: false,
                recovered: maps.as_ref().map(|(r, _)| r),
                positions: maps.as_ref().map(|(_, p)| p),
            });
        }
        Err(BrokerError::Subscribe(e)) => {
            send_error(conn, id, subscribe_error_code(&e), &e.to_string());
        }
        Err(e) => send_error(conn, id, "unavailable", &e.to_string()),
    }
}

/// The `recovered` and `positions` maps of a `subscribed` reply.
pub(crate) fn recovery_maps(
    recoveries: Vec<(String, Recovery)>,
) -> (BTreeMap<String, bool>, BTreeMap<String, WirePosition>) {
    let mut recovered = BTreeMap::new();
    let mut positions = BTreeMap::new();
    for (topic, r) in recoveries {
        recovered.insert(topic.clone(), r.recovered);
        positions.insert(
            topic,
            WirePosition {
                seq: r.position.seq,
                epoch: r.position.epoch.to_string(),
            },
        );
    }
    (recovered, positions)
}

/// `refresh`: a new token for the same user replaces the connection's token
/// (its expiry and its `topics` grants). A refused token changes nothing: the
/// connection keeps running until the old token expires.
fn refresh(session: &mut Session<'_>, id: Option<u64>, token: &str) {
    let conn = session.entry.conn();
    let Some(tokens) = &session.access.tokens else {
        return send_error(
            conn,
            id,
            "already_connected",
            "token authentication is off on this server; there is nothing to refresh",
        );
    };
    let verified = match tokens.verify(token) {
        Ok(v) if Some(&v.user) == session.token.principal.user.as_ref() => v,
        Ok(_) => {
            let e = TokenError::WrongSubject;
            return send_error(conn, id, e.code(), &e.to_string());
        }
        Err(e) => return send_error(conn, id, e.code(), &e.to_string()),
    };
    session.token.set(&verified, session.access);
    conn.reply(Reply::Refreshed {
        id,
        expires_at: verified.exp,
    });
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
            "token" => identity.token = Some(value),
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
