//! API keys on the gRPC port, and TLS on both listeners: a real engine on
//! loopback, real gRPC and WebSocket clients, certificates made by a test CA
//! generated here (rcgen) into a temporary directory.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use common::{WAIT, config, json_request, start};
use futures_util::{SinkExt, StreamExt};
use herald::{
    Config, Engine,
    config::Secret,
    proto::{InfoRequest, herald_client::HeraldClient},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};
use tokio_tungstenite::tungstenite::Message;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

// ---------------------------------------------------------------- API keys

fn keyed(keys: &[&str]) -> Config {
    Config {
        api_key: keys.iter().map(|k| Secret::new((*k).to_owned())).collect(),
        ..config()
    }
}

async fn plain_channel(engine: &Engine) -> Channel {
    Channel::from_shared(format!("http://{}", engine.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

async fn info(grpc: &mut HeraldClient<Channel>, key: Option<&str>) -> Result<(), tonic::Status> {
    grpc.info(with_key(InfoRequest {}, key)).await.map(drop)
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_unauthenticated_without_detail() {
    let engine = start(keyed(&["first-key-0123456789", "second-key-0123456789"])).await;
    let mut grpc = HeraldClient::new(plain_channel(&engine).await);

    for key in [
        None,
        Some("wrong"),
        Some("first-key-012345678"),
        Some("first-key-01234567890"),
    ] {
        let status = info(&mut grpc, key).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "key {key:?}");
        assert_eq!(status.message(), "", "no detail for key {key:?}");
    }
    // Not a bearer token at all.
    let mut request = tonic::Request::new(InfoRequest {});
    request
        .metadata_mut()
        .insert("authorization", "first-key-0123456789".parse().unwrap());
    let status = grpc.info(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Every configured key works, for unary calls and streams alike; a refused
    // publish sent nothing.
    info(&mut grpc, Some("first-key-0123456789")).await.unwrap();
    info(&mut grpc, Some("second-key-0123456789"))
        .await
        .unwrap();
    let refused = grpc
        .publish(with_key(json_request("t:x", json!(1)), Some("nope")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let published = grpc
        .publish(with_key(
            json_request("t:x", json!(2)),
            Some("second-key-0123456789"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        published.sequence, 1,
        "the refused publish took no sequence"
    );
    let status = grpc
        .watch_presence(with_key(
            herald::proto::WatchPresenceRequest {
                topics: vec!["room:>".into()],
                ..Default::default()
            },
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    engine.shutdown().await;
}

#[tokio::test]
async fn health_stays_open_and_reflection_needs_a_key() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let engine = start(keyed(&["the-key-0123456789"])).await;
    let channel = plain_channel(&engine).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "herald.v1.Herald"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let status = reflection
        .server_reflection_info(with_key(list(), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = reflection
        .server_reflection_info(with_key(list(), Some("bad")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut answers = reflection
        .server_reflection_info(with_key(list(), Some("the-key-0123456789")))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(answer, Some(MessageResponse::ListServicesResponse(ref l)) if l.service.iter().any(|s| s.name == "herald.v1.Herald")),
        "{answer:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn without_keys_the_api_is_open() {
    let engine = start(config()).await;
    let mut grpc = HeraldClient::new(plain_channel(&engine).await);
    info(&mut grpc, None).await.unwrap();
    info(&mut grpc, Some("anything")).await.unwrap();
    engine.shutdown().await;
}

#[tokio::test]
async fn the_keys_file_is_read_at_start_and_again_when_it_changes() {
    let dir = TempDir::new("keys");
    let file = dir.path().join("api-keys");
    std::fs::write(&file, "# producers\nold-key-0123456789\n").unwrap();
    let engine = start(Config {
        api_keys_file: file.clone(),
        ..keyed(&["flag-key-0123456789"])
    })
    .await;
    let mut grpc = HeraldClient::new(plain_channel(&engine).await);
    info(&mut grpc, Some("old-key-0123456789")).await.unwrap();
    info(&mut grpc, Some("flag-key-0123456789")).await.unwrap();

    // Rotation: the new key is added, then the old one removed.
    std::fs::write(&file, "new-key-0123456789 # rotated in\n").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while info(&mut grpc, Some("old-key-0123456789")).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "file not re-read");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    info(&mut grpc, Some("new-key-0123456789")).await.unwrap();
    info(&mut grpc, Some("flag-key-0123456789")).await.unwrap();

    // A file emptied by mistake does not open the API: the keys in force stay.
    std::fs::write(&file, "").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    info(&mut grpc, Some("new-key-0123456789")).await.unwrap();
    assert_eq!(
        info(&mut grpc, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn unusable_keys_and_files_stop_the_start_with_a_reason() {
    let dir = TempDir::new("badkeys");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nothing\n").unwrap();
    for (config, expect) in [
        (keyed(&["with space"]), "visible ASCII"),
        (
            Config {
                api_keys_file: dir.path().join("missing"),
                ..config()
            },
            "cannot read",
        ),
        (
            Config {
                api_keys_file: empty,
                ..config()
            },
            "holds no key",
        ),
    ] {
        let error = Engine::start(config).await.unwrap_err().to_string();
        assert!(error.contains(expect), "{error}");
    }
}

// ---------------------------------------------------------------- TLS

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("herald-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA with a server certificate (localhost, 127.0.0.1) and a client
/// certificate, written as PEM files.
struct Pki {
    dir: TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new("pki");
        let ca = ca("herald test CA");
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["producer".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Self {
            ca_pem: ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            dir,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config serving TLS on both listeners.
    fn config(&self) -> Config {
        Config {
            tls_cert: self.file("server.pem"),
            tls_key: self.file("server.key"),
            ..config()
        }
    }

    async fn grpc(
        &self,
        engine: &Engine,
        client_cert: bool,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if client_cert {
            tls = tls.identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ));
        }
        Channel::from_shared(format!("https://{}", engine.grpc_addr()))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    fn ws_connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::CertificateDer::from(rcgen_pem_to_der(&self.ca_pem));
        roots.add(ca).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn rcgen_pem_to_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The next text frame as JSON, skipping pings.
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_wss_client_receives_a_publish_sent_over_grpc_tls() {
    let pki = Pki::new();
    let engine = start(Config {
        api_key: vec![Secret::new("tls-key-0123456789".into())],
        ..pki.config()
    })
    .await;

    // WSS: TLS to the WebSocket port, then the upgrade.
    let tcp = TcpStream::connect(engine.ws_addr()).await.unwrap();
    let tls = pki
        .ws_connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/ws?user=alice", engine.ws_addr().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    ws.send(Message::text(
        json!({"type": "subscribe", "id": 1, "topics": ["news:tls"]}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    // gRPC over TLS, with the API key.
    let mut grpc = HeraldClient::new(pki.grpc(&engine, false).await.unwrap());
    grpc.publish(with_key(
        json_request("news:tls", json!({"secure": true})),
        Some("tls-key-0123456789"),
    ))
    .await
    .unwrap();
    let message = next_json(&mut ws).await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["topic"], "news:tls");
    assert_eq!(message["data"], json!({"secure": true}));

    // Plain text reaches neither port.
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/ws", engine.ws_addr())).await;
    assert!(plain.is_err(), "plain ws:// on a TLS port");
    let plain = Channel::from_shared(format!("http://{}", engine.grpc_addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let answer = HeraldClient::new(channel)
            .info(with_key(InfoRequest {}, Some("tls-key-0123456789")))
            .await;
        assert!(answer.is_err(), "plain-text gRPC on a TLS port: {answer:?}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let engine = start(Config {
        handshake_timeout: herald::config::Dur(std::time::Duration::from_millis(300)),
        ..pki.config()
    })
    .await;
    let mut silent = TcpStream::connect(engine.ws_addr()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    engine.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_grpc_client_without_a_certificate() {
    let pki = Pki::new();
    std::fs::write(pki.file("client-ca.pem"), &pki.ca_pem).unwrap();
    let engine = start(Config {
        grpc_client_ca: pki.file("client-ca.pem"),
        ..pki.config()
    })
    .await;

    // Without a client certificate: the handshake fails, no call gets through.
    let refused = match pki.grpc(&engine, false).await {
        Err(_) => true,
        // TLS 1.3: the client may finish its side before the server refuses.
        Ok(channel) => HeraldClient::new(channel)
            .info(InfoRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // With a certificate signed by the CA: served.
    let mut grpc = HeraldClient::new(pki.grpc(&engine, true).await.unwrap());
    grpc.info(InfoRequest {}).await.unwrap();

    // With a certificate from another CA: refused.
    let other = ca("another CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["intruder".to_owned()])
        .unwrap()
        .signed_by(&key, &other)
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(cert.pem(), key.serialize_pem()));
    let refused = match Channel::from_shared(format!("https://{}", engine.grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => HeraldClient::new(channel)
            .info(InfoRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");

    // Health needs TLS (and the client certificate) too, but no key.
    let mut health = HealthClient::new(pki.grpc(&engine, true).await.unwrap());
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    engine.shutdown().await;
}

#[tokio::test]
async fn a_separate_grpc_certificate_and_bad_files_are_reported() {
    let pki = Pki::new();
    // gRPC only: WebSocket stays plain.
    let engine = start(Config {
        grpc_tls_cert: pki.file("server.pem"),
        grpc_tls_key: pki.file("server.key"),
        ..config()
    })
    .await;
    let mut grpc = HeraldClient::new(pki.grpc(&engine, false).await.unwrap());
    grpc.info(InfoRequest {}).await.unwrap();
    let c = common::Client::connect(&engine).await;
    assert!(!c.conn_id.is_empty());
    engine.shutdown().await;

    // WebSocket only: wss://, and gRPC in plain text.
    let engine = start(Config {
        grpc_plaintext: true,
        ..pki.config()
    })
    .await;
    let mut grpc = HeraldClient::new(plain_channel(&engine).await);
    grpc.info(InfoRequest {}).await.unwrap();
    let tcp = TcpStream::connect(engine.ws_addr()).await.unwrap();
    let tls = pki
        .ws_connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/ws", engine.ws_addr().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    engine.shutdown().await;

    // A key that does not belong to the certificate, a missing file, a file
    // without PEM: the start fails, naming the problem.
    let other_key = KeyPair::generate().unwrap();
    std::fs::write(pki.file("other.key"), other_key.serialize_pem()).unwrap();
    std::fs::write(pki.file("junk.pem"), "not a certificate\n").unwrap();
    for (cert, key, expect) in [
        ("server.pem", "other.key", "server.pem"),
        ("missing.pem", "server.key", "missing.pem"),
        ("junk.pem", "server.key", "no PEM certificate"),
        ("server.pem", "junk.pem", "no usable PEM private key"),
    ] {
        let error = Engine::start(Config {
            tls_cert: pki.file(cert),
            tls_key: pki.file(key),
            ..config()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains(expect), "{cert}/{key}: {error}");
    }
    let config = Config {
        grpc_client_ca: pki.file("ca.pem"),
        ..config()
    };
    assert!(config.validate().is_err(), "a client CA without gRPC TLS");
    let config = Config {
        tls_cert: pki.file("server.pem"),
        ..common::config()
    };
    assert!(config.validate().is_err(), "a certificate without its key");
}
