//! The HTTP side of the WebSocket handshake: reads the request head (bounded in
//! size; the caller bounds it in time), checks that it is a WebSocket upgrade the
//! engine serves, and answers either `101 Switching Protocols` or the HTTP error
//! RFC 6455 asks for, with a reason in the body (docs/security.md):
//!
//! | request | answer |
//! |---|---|
//! | not HTTP, head over [`MAX_HEAD_BYTES`] | 400, 431 |
//! | not `GET` | 405 with `Allow: GET` |
//! | another path | 404 |
//! | no `Upgrade: websocket` / `Connection: Upgrade` | 426 with `Upgrade: websocket` |
//! | `Sec-WebSocket-Version` not 13 | 426 with `Sec-WebSocket-Version: 13` |
//! | no valid `Sec-WebSocket-Key` | 400 |
//!
//! The checks that need the engine's state (origin, limits, identity) are the
//! session's; it refuses through [`respond`].

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The largest request head the engine reads (request line and headers; a token
/// in the URL must fit).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header lines in a request head.
const MAX_HEADERS: usize = 64;

/// A WebSocket upgrade request that passed the protocol checks.
#[derive(Debug)]
pub(crate) struct Upgrade {
    /// The query string, without `?`.
    pub(crate) query: String,
    /// The `Origin` header, when there is one.
    pub(crate) origin: Option<String>,
    /// `Sec-WebSocket-Key`.
    key: String,
    /// Bytes the client sent after the head (its first frames).
    pub(crate) tail: Vec<u8>,
}

/// An HTTP answer other than 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    /// The status code.
    pub(crate) status: u16,
    /// The reason, sent as the body.
    pub(crate) reason: String,
    /// Further headers.
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl HttpError {
    /// An error with no further headers.
    pub(crate) fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds `Retry-After` in whole seconds (at least 1), when given.
    pub(crate) fn retry_after(self, wait: Option<Duration>) -> Self {
        match wait {
            Some(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                self.header("Retry-After", secs.max(1).to_string())
            }
            None => self,
        }
    }
}

/// Why no upgrade was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed or closed before a whole head arrived: nothing to answer.
    Gone,
    /// The request must be answered with this error.
    Refuse(HttpError),
}

/// Reads the request head and checks it is an upgrade to `path`.
pub(crate) async fn read_upgrade<S: AsyncRead + Unpin>(
    stream: &mut S,
    path: &str,
) -> Result<Upgrade, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let upgrade = check(&req, path)?;
                return Ok(Upgrade {
                    tail: buf[len..].to_vec(),
                    ..upgrade
                });
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(ReadError::Refuse(HttpError::new(
                    431,
                    format!("the request head is over {MAX_HEAD_BYTES} bytes"),
                )));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Refuse(HttpError::new(
                    431,
                    format!("more than {MAX_HEADERS} header lines"),
                )));
            }
            Err(e) => {
                return Err(ReadError::Refuse(HttpError::new(
                    400,
                    format!("not an HTTP request: {e}"),
                )));
            }
        }
    }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn check(req: &httparse::Request<'_, '_>, path: &str) -> Result<Upgrade, ReadError> {
    let refuse = |e: HttpError| Err(ReadError::Refuse(e));
    let (target_path, query) = match req.path.unwrap_or("").split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.path.unwrap_or(""), ""),
    };
    if req.method != Some("GET") {
        return refuse(
            HttpError::new(
                405,
                "a WebSocket handshake is a GET request (RFC 6455, 4.1)",
            )
            .header("Allow", "GET"),
        );
    }
    if req.version != Some(1) {
        return refuse(HttpError::new(
            400,
            "a WebSocket handshake needs HTTP/1.1 (RFC 6455, 4.1)",
        ));
    }
    if target_path != path {
        return refuse(HttpError::new(
            404,
            format!("no WebSocket endpoint here; use {path}"),
        ));
    }
    if !has_token(header(req, "upgrade"), "websocket")
        || !has_token(header(req, "connection"), "upgrade")
    {
        return refuse(
            HttpError::new(
                426,
                "this is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade (RFC 6455, 4.2.1)",
            )
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade"),
        );
    }
    if header(req, "sec-websocket-version") != Some("13") {
        return refuse(
            HttpError::new(
                426,
                "unsupported Sec-WebSocket-Version; this server speaks version 13 (RFC 6455, 4.2.2)",
            )
            .header("Sec-WebSocket-Version", "13"),
        );
    }
    let key = header(req, "sec-websocket-key").unwrap_or("");
    let valid_key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !valid_key {
        return refuse(HttpError::new(
            400,
            "Sec-WebSocket-Key is missing or is not 16 bytes in base64 (RFC 6455, 4.2.1)",
        ));
    }
    Ok(Upgrade {
        query: query.to_owned(),
        origin: header(req, "origin").map(str::to_owned),
        key: key.to_owned(),
        tail: Vec::new(),
    })
}

/// Answers `101 Switching Protocols` for `upgrade`.
pub(crate) async fn accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    upgrade: &Upgrade,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(upgrade.key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// Answers with `error` and closes the sending side.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, error: &HttpError) {
    let reason = http::StatusCode::from_u16(error.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        error.status,
        error.reason.len() + 1
    );
    for (name, value) in &error.headers {
        response.push_str(name);
        response.push_str(": ");
        response.push_str(value);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&error.reason);
    response.push('\n');
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(request: &str) -> Result<Upgrade, ReadError> {
        let mut bytes = request.as_bytes();
        read_upgrade(&mut bytes, "/ws").await
    }

    fn status(r: Result<Upgrade, ReadError>) -> u16 {
        match r {
            Ok(_) => 101,
            Err(ReadError::Refuse(e)) => e.status,
            Err(ReadError::Gone) => 0,
        }
    }

    const OK: &str = "GET /ws?user=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://a.b\r\n\r\n";

    #[tokio::test]
    async fn requests_get_the_status_rfc_6455_asks_for() {
        let ok = read(OK).await.unwrap();
        assert_eq!(ok.query, "user=a");
        assert_eq!(ok.origin.as_deref(), Some("https://a.b"));
        assert_eq!(status(read(&OK.replace("GET", "POST")).await), 405);
        assert_eq!(status(read(&OK.replace("/ws?", "/x?")).await), 404);
        assert_eq!(status(read(&OK.replace("HTTP/1.1", "HTTP/1.0")).await), 400);
        assert_eq!(
            status(read(&OK.replace("Upgrade: websocket\r\n", "")).await),
            426
        );
        assert_eq!(
            status(read(&OK.replace("keep-alive, Upgrade", "close")).await),
            426
        );
        assert_eq!(
            status(read(&OK.replace("Version: 13", "Version: 8")).await),
            426
        );
        assert_eq!(
            status(read(&OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "abc")).await),
            400
        );
        assert_eq!(status(read("\x16\x03\x01garbage\r\n\r\n").await), 400);
        assert_eq!(status(read("GET /ws HTTP/1.1\r\n").await), 0);
        let long = format!("GET /ws?{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES + 10));
        assert_eq!(status(read(&long).await), 431);
        let tail = read(&format!("{OK}\x01\x00")).await.unwrap();
        assert_eq!(tail.tail, b"\x01\x00");
    }
}
