//! TLS for both listeners, with rustls (the `ring` provider).
//!
//! - WebSocket: `tls_cert`/`tls_key` make the listener speak `wss://`. The TLS
//!   handshake runs inside the session's handshake timeout, and a session's socket
//!   is a [`Stream`]: plain TCP or TLS over TCP, one `match` per read or write.
//! - gRPC: tonic's own rustls acceptor, with `grpc_tls_cert`/`grpc_tls_key` or,
//!   when those are not given, the same `tls_cert`/`tls_key` (unless
//!   `grpc_plaintext` keeps gRPC in plain text); `grpc_client_ca`
//!   requires every gRPC client to present a certificate signed by that CA.
//!
//! Every file is read and checked at start (a certificate and its key must match),
//! so a bad file stops the engine with a message naming it.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};

use crate::config::Config;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    File {
        /// Which file it is (certificate, key, client CA).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate and key (for example, they do not match).
    #[error("TLS certificate {cert} with key {key}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// tonic refused the gRPC TLS configuration.
    #[error("gRPC TLS: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// A WebSocket session's socket: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Stream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (boxed: a TLS connection's state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Completes the TLS handshake when the listener serves TLS; the caller bounds it
/// in time.
pub(crate) async fn accept(stream: TcpStream, tls: Option<&TlsAcceptor>) -> io::Result<Stream> {
    match tls {
        None => Ok(Stream::Plain(stream)),
        Some(acceptor) => Ok(Stream::Tls(Box::new(acceptor.accept(stream).await?))),
    }
}

/// The WebSocket listener's TLS acceptor, or `None` when it serves plain `ws://`.
pub(crate) fn ws_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    let Some((cert, key)) = config.ws_tls_files() else {
        return Ok(None);
    };
    let mut server = server_config(cert, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The gRPC server builder, with TLS (and client-certificate verification) when
/// configured.
pub(crate) fn grpc_builder(config: &Config) -> Result<tonic::transport::Server, TlsError> {
    let builder = tonic::transport::Server::builder();
    let Some((cert, key)) = config.grpc_tls_files() else {
        return Ok(builder);
    };
    // Checked here with rustls for clear errors; tonic builds its own acceptor.
    server_config(cert, key)?;
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "key")?,
        ))
        .timeout(config.handshake_timeout.0);
    if let Some(ca) = config.grpc_client_ca_path() {
        let certs = certificates(ca, "client CA")?;
        let mut roots = rustls::RootCertStore::empty();
        let (_, unusable) = roots.add_parsable_certificates(certs);
        if unusable > 0 || roots.is_empty() {
            return Err(file_error(
                "client CA",
                ca,
                format!("{unusable} certificate(s) cannot be used as a trust anchor"),
            ));
        }
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client CA",
        )?));
    }
    Ok(builder.tls_config(tls)?)
}

/// A rustls server configuration for one certificate chain and its key.
fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates(cert, "certificate")?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_error(
            "key",
            key,
            format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| file_error(what, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(
            what,
            path,
            "no PEM certificate in it".to_owned(),
        ));
    }
    Ok(certs)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(what, path, e.to_string()))
}

fn file_error(what: &'static str, path: &Path, message: String) -> TlsError {
    TlsError::File {
        what,
        path: path.to_owned(),
        message,
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
