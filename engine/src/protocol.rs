//! The WebSocket client protocol (docs/protocol.md): parsing client commands,
//! encoding server frames, close codes, and how a payload's content type decides
//! its representation in a `message` push.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::history::Since;

/// Close codes the engine uses (docs/protocol.md, "Close codes").
pub(crate) mod close {
    /// A normal close (used when the connection is already going).
    pub(crate) const NORMAL: u16 = 1000;
    /// The server is shutting down; reconnect.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message exceeded the size limit.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The outgoing queue overflowed.
    pub(crate) const SLOW_CONSUMER: u16 = 4001;
    /// Nothing was received for longer than the idle timeout.
    pub(crate) const IDLE_TIMEOUT: u16 = 4002;
    /// Disconnected by a producer; reconnect allowed.
    pub(crate) const DISCONNECT_RECONNECT: u16 = 4003;
    /// The connection's token expired without a refresh; reconnect with a fresh token.
    pub(crate) const TOKEN_EXPIRED: u16 = 4004;
    /// No `connect` frame arrived within the handshake timeout; reconnect allowed.
    pub(crate) const AUTH_TIMEOUT: u16 = 4005;
    /// The connection flooded the server with commands over its rate; reconnect
    /// allowed, after a backoff.
    pub(crate) const RATE_LIMITED: u16 = 4006;
    /// The user already holds its limit of connections (refused after a `connect`
    /// frame); reconnect allowed, after a backoff.
    pub(crate) const TOO_MANY_CONNECTIONS: u16 = 4007;
    /// The token was refused, or a command came before `connect`; do not reconnect
    /// with the same token.
    pub(crate) const UNAUTHORIZED: u16 = 4501;
    /// Disconnected by a producer; do not reconnect.
    pub(crate) const DISCONNECT_FINAL: u16 = 4500;

    /// Whether a client receiving `code` should reconnect.
    #[cfg(test)]
    pub(crate) fn reconnect_hint(code: u16) -> bool {
        matches!(code, GOING_AWAY | 4000..=4499)
    }
}

/// A command sent by a client, as parsed from one text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Join topics.
    Subscribe {
        /// The client's request id.
        id: Option<u64>,
        /// Topic names, not yet validated.
        topics: Vec<String>,
        /// Per topic, the last position the client saw: recover what it missed.
        since: HashMap<String, Since>,
    },
    /// Leave topics.
    Unsubscribe {
        /// The client's request id.
        id: Option<u64>,
        /// Topic names, not yet validated.
        topics: Vec<String>,
    },
    /// Application-level round trip.
    Ping {
        /// The client's request id.
        id: Option<u64>,
    },
    /// Authenticate with a token (the first frame when the handshake had none).
    Connect {
        /// The client's request id.
        id: Option<u64>,
        /// The token.
        token: String,
        /// Positions to recover from, for topics the token's `subscribe` claim
        /// joins (others are ignored).
        since: HashMap<String, Since>,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// The client's request id.
        id: Option<u64>,
        /// The new token.
        token: String,
    },
}

/// A frame that could not be turned into a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct CommandError {
    /// The request id, when the frame had a readable one.
    pub(crate) id: Option<u64>,
    /// The documented error code.
    pub(crate) code: &'static str,
    /// What was wrong.
    pub(crate) message: String,
}

#[derive(Deserialize)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    since: Option<HashMap<String, RawSince>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSince {
    seq: u64,
    epoch: String,
}

#[derive(Deserialize)]
struct RawId {
    #[serde(default)]
    id: Option<u64>,
}

/// The `id` of a client frame, when it is a JSON object with a readable one.
pub(crate) fn command_id(text: &str) -> Option<u64> {
    serde_json::from_str::<RawId>(text).ok().and_then(|r| r.id)
}

/// Parses one client text frame.
/// The `since` object of a command, as positions by topic.
fn since_map(raw: Option<HashMap<String, RawSince>>) -> HashMap<String, Since> {
    raw.unwrap_or_default()
        .into_iter()
        .map(|(t, s)| {
            (
                t,
                Since {
                    seq: s.seq,
                    epoch: s.epoch,
                },
            )
        })
        .collect()
}

pub(crate) fn parse_command(text: &str) -> Result<Command, CommandError> {
    let raw: RawCommand = serde_json::from_str(text).map_err(|e| CommandError {
        id: command_id(text),
        code: "bad_frame",
        message: format!("frame is not a valid command object: {e}"),
    })?;
    let id = raw.id;
    let topics = |topics: Option<Vec<String>>| {
        topics.ok_or_else(|| CommandError {
            id,
            code: "bad_frame",
            message: format!("{} needs a \"topics\" array", raw.kind),
        })
    };
    match raw.kind.as_str() {
        "subscribe" => {
            let topics = topics(raw.topics)?;
            let since = since_map(raw.since);
            if let Some(stray) = since.keys().find(|t| !topics.contains(t)) {
                return Err(CommandError {
                    id,
                    code: "bad_frame",
                    message: format!("\"since\" names {stray:?}, which is not in \"topics\""),
                });
            }
            Ok(Command::Subscribe { id, topics, since })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            id,
            topics: topics(raw.topics)?,
        }),
        "ping" => Ok(Command::Ping { id }),
        "connect" | "refresh" => {
            let token = raw.token.ok_or_else(|| CommandError {
                id,
                code: "bad_frame",
                message: format!("{} needs a \"token\" string", raw.kind),
            })?;
            Ok(if raw.kind == "connect" {
                Command::Connect {
                    id,
                    token,
                    since: since_map(raw.since),
                }
            } else {
                Command::Refresh { id, token }
            })
        }
        other => Err(CommandError {
            id,
            code: "unknown_type",
            message: format!(
                "unknown command type {other:?}; expected subscribe, unsubscribe, ping, connect or refresh"
            ),
        }),
    }
}

/// A server frame other than `message` (those are built by [`encode_message`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Reply<'a> {
    /// The first frame on every connection.
    Connected {
        /// The connection's id.
        conn_id: &'a str,
        /// How often the server pings.
        ping_interval_ms: u64,
        /// How long the server waits for any frame before closing.
        idle_timeout_ms: u64,
    },
    /// Topics joined.
    Subscribed {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The topics.
        topics: &'a [String],
        /// Set when a producer made the change.
        #[serde(skip_serializing_if = "is_false")]
        server: bool,
        /// Per topic subscribed with `since`: whether everything missed is (being)
        /// delivered.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<&'a BTreeMap<String, bool>>,
        /// Per topic subscribed with `since`: the position live messages follow.
        #[serde(skip_serializing_if = "Option::is_none")]
        positions: Option<&'a BTreeMap<String, WirePosition>>,
    },
    /// Topics left.
    Unsubscribed {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The topics.
        topics: &'a [String],
        /// Set when a producer made the change.
        #[serde(skip_serializing_if = "is_false")]
        server: bool,
    },
    /// The token expires soon: send `refresh` with a new one.
    #[serde(rename = "refresh_required")]
    RefreshRequired {
        /// When the current token expires (seconds since the Unix epoch).
        expires_at: u64,
    },
    /// Answer to `refresh`: the new token is in force.
    Refreshed {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// When the new token expires (seconds since the Unix epoch); absent when it
        /// has no `exp`.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A command failed.
    Error {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The documented error code.
        code: &'a str,
        /// What was wrong.
        message: &'a str,
    },
    /// The server is about to close the connection.
    Disconnect {
        /// The close code that follows.
        code: u16,
        /// Why.
        reason: &'a str,
        /// Whether to reconnect.
        reconnect: bool,
    },
}

/// A topic position as the `subscribed` reply reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct WirePosition {
    /// The last sequence number published before live delivery began.
    pub(crate) seq: u64,
    /// The topic's epoch.
    pub(crate) epoch: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Reply<'_> {
    /// Encodes the reply as one text frame.
    #[expect(
        clippy::expect_used,
        reason = "plain structs of strings and numbers always serialise"
    )]
    pub(crate) fn encode(&self) -> Utf8Bytes {
        Utf8Bytes::from(serde_json::to_string(self).expect("a reply serialises"))
    }
}

/// How a payload reaches WebSocket clients, decided by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// Embedded as a JSON value in `data`.
    Json,
    /// A JSON string in `text`.
    Text,
    /// Base64 in `b64`.
    Binary,
}

impl PayloadKind {
    /// Classifies a content type (`application/json; charset=utf-8`, `text/plain`, …).
    pub(crate) fn of(content_type: &str) -> Self {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let is = |s: &str| essence.eq_ignore_ascii_case(s);
        let ends_json = essence.len() >= 5
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|t| t.eq_ignore_ascii_case("+json"));
        if is("application/json") || ends_json {
            Self::Json
        } else if essence
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("text/"))
        {
            Self::Text
        } else {
            Self::Binary
        }
    }
}

/// Why a payload cannot be published with its content type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    /// Over the size limit.
    #[error("payload is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Declared JSON but is not.
    #[error("payload declared as {content_type:?} is not valid JSON: {detail}")]
    NotJson {
        /// The declared type.
        content_type: String,
        /// The parser's message.
        detail: String,
    },
    /// Declared text but is not UTF-8.
    #[error("payload declared as {0:?} is not valid UTF-8")]
    NotUtf8(String),
    /// A content type too long or with control characters.
    #[error("content type is invalid (at most 255 printable ASCII characters)")]
    BadContentType,
}

/// A payload checked against its content type, ready to be encoded into pushes.
/// Only [`Payload::new`] makes one, so a JSON payload is always valid JSON and a
/// text payload always UTF-8.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    /// The bytes as published.
    data: Bytes,
    /// How they are represented to clients.
    kind: PayloadKind,
    /// The declared content type (kept for binary payloads).
    content_type: String,
}

impl Payload {
    /// Checks `data` against `content_type` and the size limit.
    pub(crate) fn new(
        data: Bytes,
        content_type: String,
        max_len: usize,
    ) -> Result<Self, PayloadError> {
        if data.len() > max_len {
            return Err(PayloadError::TooLarge {
                len: data.len(),
                max: max_len,
            });
        }
        if content_type.len() > 255 || content_type.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(PayloadError::BadContentType);
        }
        let kind = PayloadKind::of(&content_type);
        match kind {
            PayloadKind::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&data).map_err(|e| {
                    PayloadError::NotJson {
                        content_type: content_type.clone(),
                        detail: e.to_string(),
                    }
                })?;
            }
            PayloadKind::Text => {
                if std::str::from_utf8(&data).is_err() {
                    return Err(PayloadError::NotUtf8(content_type));
                }
            }
            PayloadKind::Binary => {}
        }
        Ok(Self {
            data,
            kind,
            content_type,
        })
    }

    /// The declared content type.
    pub(crate) fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The bytes as published.
    pub(crate) fn data(&self) -> &Bytes {
        &self.data
    }

    /// Bytes of unknown content, passed on as they are (base64 for clients):
    /// what another node forwarded that this one would not have accepted.
    pub(crate) fn binary(data: Bytes) -> Self {
        Self {
            data,
            kind: PayloadKind::Binary,
            content_type: "application/octet-stream".to_owned(),
        }
    }
}

/// Encodes the `message` push for one published message: done once per topic and
/// shared (by reference count) with every subscriber.
#[expect(
    clippy::expect_used,
    reason = "Payload::new checked JSON and text payloads to be UTF-8, and strings always serialise"
)]
pub(crate) fn encode_message(topic: &str, seq: u64, epoch: &str, payload: &Payload) -> Utf8Bytes {
    use std::fmt::Write as _;
    let mut out =
        String::with_capacity(60 + topic.len() + epoch.len() + payload.data.len() * 4 / 3 + 8);
    // Topic names and epochs are restricted to characters that need no JSON
    // escaping (history::decode_payload relies on it).
    let _ = write!(
        out,
        r#"{{"type":"message","topic":"{topic}","seq":{seq},"epoch":"{epoch}","#
    );
    match payload.kind {
        PayloadKind::Json => {
            out.push_str(r#""data":"#);
            let json = std::str::from_utf8(&payload.data).expect("checked JSON is UTF-8");
            out.push_str(json.trim());
        }
        PayloadKind::Text => {
            out.push_str(r#""text":"#);
            let text = std::str::from_utf8(&payload.data).expect("checked text is UTF-8");
            out.push_str(&serde_json::to_string(text).expect("a string serialises"));
        }
        PayloadKind::Binary => {
            out.push_str(r#""b64":""#);
            base64::engine::general_purpose::STANDARD.encode_string(&payload.data, &mut out);
            out.push('"');
            if !payload.content_type.is_empty() {
                out.push_str(r#","content_type":"#);
                let content_type = serde_json::to_string(&payload.content_type);
                out.push_str(&content_type.expect("a string serialises"));
            }
        }
    }
    out.push('}');
    Utf8Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(data: &'static [u8], ct: &str) -> Payload {
        Payload::new(Bytes::from_static(data), ct.to_owned(), 1024).unwrap()
    }

    #[test]
    fn json_is_embedded_as_a_value() {
        let frame = encode_message(
            "room:a",
            7,
            "e1",
            &payload(br#"{"price": 1.5}"#, "application/json"),
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["topic"], "room:a");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["epoch"], "e1");
        assert_eq!(v["data"]["price"], 1.5);
    }

    #[test]
    fn text_and_binary_have_their_own_fields() {
        let t: serde_json::Value = serde_json::from_str(&encode_message(
            "t",
            1,
            "e",
            &payload(b"he said \"hi\"\n", "text/plain; charset=utf-8"),
        ))
        .unwrap();
        assert_eq!(t["text"], "he said \"hi\"\n");
        let b: serde_json::Value = serde_json::from_str(&encode_message(
            "t",
            2,
            "e",
            &payload(b"\x00\xff", "image/png"),
        ))
        .unwrap();
        assert_eq!(b["b64"], "AP8=");
        assert_eq!(b["content_type"], "image/png");
        let e: serde_json::Value =
            serde_json::from_str(&encode_message("t", 3, "e", &payload(b"ab", ""))).unwrap();
        assert_eq!(e["b64"], "YWI=");
        assert!(e.get("content_type").is_none());
    }

    #[test]
    fn payloads_are_checked_against_their_type() {
        let bad_json = Payload::new(Bytes::from_static(b"{nope"), "application/json".into(), 100);
        assert!(matches!(bad_json, Err(PayloadError::NotJson { .. })));
        let bad_text = Payload::new(Bytes::from_static(b"\xff"), "text/plain".into(), 100);
        assert!(matches!(bad_text, Err(PayloadError::NotUtf8(_))));
        let big = Payload::new(Bytes::from_static(b"12345"), String::new(), 4);
        assert!(matches!(
            big,
            Err(PayloadError::TooLarge { len: 5, max: 4 })
        ));
        assert_eq!(PayloadKind::of("application/vnd.x+JSON"), PayloadKind::Json);
        assert_eq!(PayloadKind::of("TEXT/html"), PayloadKind::Text);
        assert_eq!(PayloadKind::of(""), PayloadKind::Binary);
    }

    #[test]
    fn commands_parse_and_errors_keep_the_id() {
        assert_eq!(
            parse_command(r#"{"type":"subscribe","id":4,"topics":["a"]}"#),
            Ok(Command::Subscribe {
                id: Some(4),
                topics: vec!["a".into()],
                since: HashMap::new(),
            })
        );
        let Ok(Command::Subscribe { since, .. }) = parse_command(
            r#"{"type":"subscribe","topics":["a"],"since":{"a":{"seq":41,"epoch":"x"}}}"#,
        ) else {
            panic!("subscribe with since parses");
        };
        assert_eq!(since["a"].seq, 41);
        let e = parse_command(
            r#"{"type":"subscribe","topics":["a"],"since":{"b":{"seq":1,"epoch":""}}}"#,
        )
        .err();
        assert_eq!(e.map(|e| e.code), Some("bad_frame"));
        assert_eq!(
            parse_command(r#"{"type":"ping"}"#),
            Ok(Command::Ping { id: None })
        );
        let e = parse_command(r#"{"type":"jump","id":9}"#).err();
        assert_eq!(
            e.as_ref().map(|e| (e.code, e.id)),
            Some(("unknown_type", Some(9)))
        );
        let e = parse_command(r#"{"type":"subscribe","id":2}"#).err();
        assert_eq!(e.map(|e| (e.code, e.id)), Some(("bad_frame", Some(2))));
        let e = parse_command("not json").err();
        assert_eq!(e.map(|e| e.code), Some("bad_frame"));
        let e = parse_command(r#"{"type":"subscribe","id":3,"topics":"a"}"#).err();
        assert_eq!(e.map(|e| (e.code, e.id)), Some(("bad_frame", Some(3))));
    }

    #[test]
    fn reconnect_hint_follows_the_code_ranges() {
        assert!(close::reconnect_hint(close::GOING_AWAY));
        assert!(close::reconnect_hint(close::SLOW_CONSUMER));
        assert!(close::reconnect_hint(4499));
        assert!(!close::reconnect_hint(4500));
        assert!(!close::reconnect_hint(close::TOO_BIG));
    }
}
