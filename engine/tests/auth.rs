//! Client authentication and topic permissions against a real engine: tokens in
//! the handshake URL and in a `connect` frame, every refusal class, key pinning
//! (alg none, HS-with-an-RSA-key), RS256/ES256/EdDSA PEM keys, a JWKS file, the
//! refresh flow and the expiry close, each topic rule kind and the `subscribe`
//! claim. The keys in tests/keys/ are test-only.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::PathBuf, time::Duration};

use common::{Client, config, grpc, publish_json, start};
use futures_util::SinkExt;
use herald::{
    Config, Engine,
    config::{TopicRule, Who},
    proto::{InfoRequest, PresenceRequest, SubscribeRequest, Target, target},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, jwk::Jwk};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

const SECRET: &str = "test-secret-not-for-production";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key_path(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).unwrap()
}

fn hs(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        claims,
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

fn rule(pattern: &str, subscribe: Who) -> TopicRule {
    TopicRule {
        pattern: pattern.to_owned(),
        subscribe: Some(subscribe),
        publish_rate: None,
        publish_burst: None,
        message_ttl: None,
        history_size: None,
        history_ttl: None,
    }
}

fn hs_config() -> Config {
    Config {
        token_hmac_secret: SECRET.parse().unwrap(),
        topics: vec![
            rule("user:*", Who::Owner),
            rule("room:>", Who::Granted),
            rule("broadcast:*", Who::Authenticated),
            rule("public:*", Who::Anyone),
            rule("internal:*", Who::Server),
        ],
        ..config()
    }
}

/// The handshake's HTTP refusal: status and body.
async fn refused(engine: &Engine, query: &str) -> (u16, String) {
    let url = format!("ws://{}/ws{query}", engine.ws_addr());
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

async fn assert_401(engine: &Engine, token: &str, code: &str) {
    let (status, body) = refused(engine, &format!("?token={token}")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.starts_with(&format!("{code}:")), "{code}: {body}");
}

/// Connects without a token and sends the `connect` frame.
async fn connect_frame(engine: &Engine, token: &str) -> Client {
    let url = format!("ws://{}/ws", engine.ws_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(
        json!({"type": "connect", "token": token}).to_string(),
    ))
    .await
    .unwrap();
    let mut client = Client::from_ws(ws);
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "connected", "{hello}");
    client.conn_id = hello["conn_id"].as_str().unwrap().to_owned();
    client
}

/// Connects without a token, sends `first`, and returns what came back up to
/// the close: (frames, close code).
async fn refused_frame(engine: &Engine, first: Option<Value>) -> (Vec<Value>, u16) {
    let url = format!("ws://{}/ws", engine.ws_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    if let Some(first) = first {
        ws.send(Message::text(first.to_string())).await.unwrap();
    }
    let mut client = Client::from_ws(ws);
    let (frames, close) = client.read_until_close().await;
    (frames, close.map(|c| u16::from(c.code)).unwrap_or(0))
}

async fn subscribe_reply(client: &mut Client, topics: &[&str]) -> Value {
    client
        .command(json!({"type": "subscribe", "topics": topics}))
        .await
}

#[tokio::test]
async fn a_url_token_names_the_user_subscribes_its_claim_and_shows_its_info() {
    let engine = start(hs_config()).await;
    let token = hs(json!({
        "sub": "alice", "exp": now() + 600,
        "subscribe": ["internal:alice"], "info": {"name": "Alice"},
    }));
    let mut client = Client::connect_query(&engine, &format!("?token={token}")).await;
    let announced = client.next_json().await;
    assert_eq!(
        announced,
        json!({"type": "subscribed", "topics": ["internal:alice"], "server": true})
    );
    let mut api = grpc(&engine).await;
    publish_json(&mut api, "internal:alice", json!({"n": 1})).await;
    assert_eq!(client.next_message().await["data"]["n"], 1);
    let members = api
        .presence(PresenceRequest {
            topic: "internal:alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, "alice");
    assert_eq!(members[0].info, r#"{"name":"Alice"}"#);
    let info = api.info(InfoRequest {}).await.unwrap().into_inner();
    assert!(info.client_auth);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_connect_frame_authenticates_and_nothing_else_may_come_first() {
    let engine = start(hs_config()).await;
    let mut client = connect_frame(&engine, &hs(claims("bob"))).await;
    assert_eq!(
        subscribe_reply(&mut client, &["user:bob"]).await["type"],
        "subscribed"
    );
    let again = client
        .command(json!({"type": "connect", "token": hs(claims("bob"))}))
        .await;
    assert_eq!(again["code"], "already_connected");

    let (frames, code) = refused_frame(
        &engine,
        Some(json!({"type": "subscribe", "topics": ["public:a"]})),
    )
    .await;
    assert_eq!(code, 4501);
    assert_eq!(frames[0]["code"], "not_authenticated", "{frames:?}");
    assert!(frames.iter().all(|f| f["type"] != "connected"));

    let (frames, code) =
        refused_frame(&engine, Some(json!({"type": "connect", "token": ""}))).await;
    assert_eq!(
        (frames[0]["code"].as_str(), code),
        (Some("token_missing"), 4501)
    );

    let expired = hs(json!({"sub": "bob", "exp": now() - 5}));
    let (frames, code) = refused_frame(
        &engine,
        Some(json!({"type": "connect", "id": 3, "token": expired})),
    )
    .await;
    assert_eq!(frames[0]["code"], "token_expired");
    assert_eq!(frames[0]["id"], 3);
    assert_eq!(frames[1]["type"], "disconnect");
    assert_eq!(frames[1]["reconnect"], true);
    assert_eq!(code, 4004);

    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret").unwrap(),
        claims("bob"),
    );
    let (frames, code) =
        refused_frame(&engine, Some(json!({"type": "connect", "token": forged}))).await;
    assert_eq!(
        (frames[0]["code"].as_str(), code),
        (Some("token_bad_signature"), 4501)
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_at_the_handshake_timeout() {
    let engine = start(Config {
        handshake_timeout: herald::config::Dur(Duration::from_millis(500)),
        ..hs_config()
    })
    .await;
    let started = std::time::Instant::now();
    let (frames, code) = refused_frame(&engine, None).await;
    assert_eq!(code, 4005);
    assert_eq!(frames[0]["code"], "auth_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    engine.shutdown().await;
}

#[tokio::test]
async fn every_refusal_class_gets_its_own_401() {
    let engine = start(Config {
        token_audience: "herald".into(),
        token_issuer: "backend".into(),
        ..hs_config()
    })
    .await;
    let good = |extra: Value| {
        let mut c = json!({"sub": "u", "exp": now() + 600, "aud": "herald", "iss": "backend"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // The good token passes.
    let ok = hs(good(json!({})));
    Client::connect_query(&engine, &format!("?token={ok}")).await;

    assert_401(&engine, "", "token_missing").await;
    assert_401(&engine, "not-a-jwt", "token_malformed").await;
    assert_401(&engine, "a.b.c", "token_malformed").await;
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"wrong").unwrap(),
        good(json!({})),
    );
    assert_401(&engine, &forged, "token_bad_signature").await;
    let hs384 = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        good(json!({})),
    );
    assert_401(&engine, &hs384, "token_wrong_algorithm").await;
    assert_401(
        &engine,
        &hs(good(json!({"exp": now() - 10}))),
        "token_expired",
    )
    .await;
    assert_401(
        &engine,
        &hs(good(json!({"nbf": now() + 300}))),
        "token_not_yet_valid",
    )
    .await;
    assert_401(
        &engine,
        &hs(good(json!({"aud": "other"}))),
        "token_wrong_audience",
    )
    .await;
    assert_401(
        &engine,
        &hs(good(json!({"iss": "other"}))),
        "token_wrong_issuer",
    )
    .await;
    let no_exp = hs(json!({"sub": "u", "aud": "herald", "iss": "backend"}));
    assert_401(&engine, &no_exp, "token_invalid_claims").await;
    let no_aud = hs(json!({"sub": "u", "exp": now() + 60, "iss": "backend"}));
    assert_401(&engine, &no_aud, "token_invalid_claims").await;
    assert_401(
        &engine,
        &hs(good(json!({"topics": "room:a"}))),
        "token_invalid_claims",
    )
    .await;
    assert_401(
        &engine,
        &hs(good(json!({"subscribe": ["bad topic"]}))),
        "token_invalid_claims",
    )
    .await;
    assert_401(&engine, &"x".repeat(9000), "token_malformed").await;

    // alg none: a header the verifier does not know, and no signature.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(good(json!({})).to_string())
    );
    assert_401(&engine, &none, "token_wrong_algorithm").await;

    // With a key, the user comes from the token only.
    let (status, body) = refused(&engine, &format!("?token={ok}&user=mallory")).await;
    assert_eq!(status, 400, "{body}");
    engine.shutdown().await;
}

#[tokio::test]
async fn pem_keys_verify_rs256_es256_and_eddsa_and_pin_their_algorithm() {
    let engine = start(Config {
        token_public_key: format!(
            "{},{}, {}",
            key_path("rsa-public.pem"),
            key_path("ec-public.pem"),
            key_path("ed-public.pem")
        ),
        ..config()
    })
    .await;
    let rsa = EncodingKey::from_rsa_pem(&key_file("rsa-private.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&key_file("ec-private.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&key_file("ed-private.pem")).unwrap();
    for (alg, key) in [
        (Algorithm::RS256, &rsa),
        (Algorithm::ES256, &ec),
        (Algorithm::EdDSA, &ed),
    ] {
        let token = sign(alg, key, claims("carol"));
        Client::connect_query(&engine, &format!("?token={token}")).await;
    }
    // An RS384 token from the RSA key: that key is pinned to RS256.
    assert_401(
        &engine,
        &sign(Algorithm::RS384, &rsa, claims("carol")),
        "token_wrong_algorithm",
    )
    .await;
    // The classic confusion: an HS256 token "signed" with the RSA public key.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&key_file("rsa-public.pem")).unwrap(),
        claims("carol"),
    );
    assert_401(&engine, &confused, "token_wrong_algorithm").await;
    engine.shutdown().await;

    // With an HMAC secret configured as well, the same token meets the secret.
    let engine = start(Config {
        token_hmac_secret: SECRET.parse().unwrap(),
        token_public_key: key_path("rsa-public.pem"),
        ..config()
    })
    .await;
    assert_401(&engine, &confused, "token_bad_signature").await;
    engine.shutdown().await;
}

#[tokio::test]
async fn a_jwks_file_verifies_by_kid_and_pinned_algorithm() {
    let ec = EncodingKey::from_ec_pem(&key_file("ec-private.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&key_file("ed-private.pem")).unwrap();
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let mut ed_jwk = Jwk::from_encoding_key(&ed, Algorithm::EdDSA).unwrap();
    ed_jwk.common.key_id = Some("ed-1".into());
    let dir = std::env::temp_dir().join(format!("herald-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"keys": [ec_jwk, ed_jwk]})).unwrap(),
    )
    .unwrap();
    let engine = start(Config {
        token_jwks_file: file.to_string_lossy().into_owned(),
        ..config()
    })
    .await;
    for (alg, key, kid) in [
        (Algorithm::ES256, &ec, "ec-1"),
        (Algorithm::EdDSA, &ed, "ed-1"),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = encode(&header, &claims("dave"), key).unwrap();
        Client::connect_query(&engine, &format!("?token={token}")).await;
    }
    // The EdDSA key's kid on an ES256 token: no EC key has that id, and the
    // token is checked against the EC key, which did sign it.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ed-1".into());
    let token = encode(&header, &claims("dave"), &ec).unwrap();
    Client::connect_query(&engine, &format!("?token={token}")).await;
    // HS256 is no algorithm of this JWKS.
    assert_401(&engine, &hs(claims("dave")), "token_wrong_algorithm").await;
    engine.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn refresh_keeps_a_connection_and_a_missed_refresh_closes_it_with_4004() {
    let engine = start(Config {
        token_refresh_before: herald::config::Dur(Duration::from_secs(2)),
        ..hs_config()
    })
    .await;
    // Refreshed in time: the connection outlives the first token.
    let exp = now() + 3;
    let mut client = Client::connect_query(
        &engine,
        &format!("?token={}", hs(json!({"sub": "erin", "exp": exp}))),
    )
    .await;
    let hint = client.next_json().await;
    assert_eq!(hint, json!({"type": "refresh_required", "expires_at": exp}));
    // Another user's token is refused and changes nothing.
    let other = client
        .command(json!({"type": "refresh", "token": hs(claims("frank"))}))
        .await;
    assert_eq!(other["code"], "token_wrong_subject");
    let later = now() + 600;
    let done = client
        .command(json!({"type": "refresh", "token": hs(json!({"sub": "erin", "exp": later}))}))
        .await;
    assert_eq!(done["type"], "refreshed", "{done}");
    assert_eq!(done["expires_at"], later);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pong = client.command(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    // Not refreshed: closed with 4004 (reconnect allowed) once exp passed.
    let exp = now() + 2;
    let mut client = Client::connect_query(
        &engine,
        &format!("?token={}", hs(json!({"sub": "gina", "exp": exp}))),
    )
    .await;
    let (frames, close) = client.read_until_close().await;
    assert_eq!(frames[0]["type"], "refresh_required");
    let notice = frames.iter().find(|f| f["type"] == "disconnect").unwrap();
    assert_eq!(notice["code"], 4004);
    assert_eq!(notice["reconnect"], true);
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4004));
    assert!(now() >= exp);
    engine.shutdown().await;
}

#[tokio::test]
async fn each_rule_kind_decides_and_a_forbidden_topic_refuses_the_whole_command() {
    let engine = start(hs_config()).await;
    let token =
        hs(json!({"sub": "alice", "exp": now() + 600, "topics": ["room:team:>", "room:lobby"]}));
    let mut alice = Client::connect_query(&engine, &format!("?token={token}")).await;
    for ok in [
        &["user:alice"][..],
        &["room:team:1", "room:lobby"],
        &["broadcast:all"],
        &["public:x"],
    ] {
        assert_eq!(
            subscribe_reply(&mut alice, ok).await["type"],
            "subscribed",
            "{ok:?}"
        );
    }
    for (topics, named) in [
        (&["user:bob"][..], "user:bob"),
        (&["room:other"], "room:other"),
        (&["internal:x"], "internal:x"),
        (&["unmatched"], "unmatched"),
        (&["public:y", "user:bob", "public:z"], "user:bob"),
    ] {
        let reply = subscribe_reply(&mut alice, topics).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], "forbidden", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(named),
            "{reply}"
        );
    }
    // Nothing of the refused command was applied.
    let mut api = grpc(&engine).await;
    publish_json(&mut api, "public:y", json!({"n": 1})).await;
    publish_json(&mut api, "public:x", json!({"n": 2})).await;
    assert_eq!(alice.next_message().await["topic"], "public:x");

    // The server may put the connection anywhere: gRPC Subscribe skips the rules.
    let reply = api
        .subscribe(SubscribeRequest {
            target: Some(Target {
                target: Some(target::Target::ConnectionId(alice.conn_id.clone())),
            }),
            topics: vec!["internal:x".into(), "unmatched".into()],
            ..Default::default()
        })
        .await;
    assert!(reply.is_ok(), "{reply:?}");

    // An unauthenticated client does not exist in this mode, so an anonymous one
    // is simulated by open mode below.
    engine.shutdown().await;
}

#[tokio::test]
async fn open_mode_allows_unmatched_topics_and_keeps_rules_for_the_rest() {
    let engine = start(Config {
        topics: vec![
            rule("internal:*", Who::Server),
            rule("broadcast:*", Who::Authenticated),
            rule("public:*", Who::Anyone),
        ],
        ..config()
    })
    .await;
    let mut client = Client::connect_query(&engine, "?user=anon").await;
    for ok in [&["anything:1"][..], &["public:1"]] {
        assert_eq!(subscribe_reply(&mut client, ok).await["type"], "subscribed");
    }
    for no in [&["internal:1"][..], &["broadcast:1"]] {
        assert_eq!(subscribe_reply(&mut client, no).await["code"], "forbidden");
    }
    let mut api = grpc(&engine).await;
    let info = api.info(InfoRequest {}).await.unwrap().into_inner();
    assert!(!info.client_auth);
    // A connect frame in open mode is answered, not obeyed.
    let reply = client
        .command(json!({"type": "connect", "token": "x"}))
        .await;
    assert_eq!(reply["code"], "already_connected");
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_key_files_stop_the_engine_from_starting() {
    let bad = Engine::start(Config {
        token_public_key: key_path("README.md"),
        ..config()
    })
    .await;
    assert!(bad.is_err());
    let missing = Engine::start(Config {
        token_jwks_file: "/nonexistent/jwks.json".into(),
        ..config()
    })
    .await;
    assert!(missing.is_err());
    let bad_rule = Engine::start(Config {
        topics: vec![rule("user:>", Who::Owner)],
        ..config()
    })
    .await;
    assert!(bad_rule.is_err());
}

#[tokio::test]
async fn a_subscribe_claim_recovers_from_the_positions_in_the_connect_frame() {
    let mut history = rule("internal:*", Who::Server);
    history.history_size = Some(100);
    let mut cfg = hs_config();
    cfg.topics.insert(0, history);
    let engine = start(cfg).await;
    let token = hs(json!({
        "sub": "alice", "exp": now() + 600, "subscribe": ["internal:alice"],
    }));
    let mut api = grpc(&engine).await;

    // First connection: sees message 1, then goes away.
    let mut first = connect_frame(&engine, &token).await;
    assert_eq!(first.next_json().await["server"], true);
    publish_json(&mut api, "internal:alice", json!({"n": 1})).await;
    let m1 = first.next_message().await;
    assert_eq!((m1["seq"].as_u64(), &m1["data"]["n"]), (Some(1), &json!(1)));
    let epoch = m1["epoch"].as_str().unwrap().to_owned();
    drop(first);
    publish_json(&mut api, "internal:alice", json!({"n": 2})).await;
    publish_json(&mut api, "internal:alice", json!({"n": 3})).await;

    // Reconnect with the last position: 2 and 3 first, then the push, then live.
    let url = format!("ws://{}/ws", engine.ws_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let since =
        json!({"internal:alice": {"seq": 1, "epoch": epoch}, "other:x": {"seq": 9, "epoch": "e"}});
    ws.send(Message::text(
        json!({"type": "connect", "token": token, "since": since}).to_string(),
    ))
    .await
    .unwrap();
    let mut second = Client::from_ws(ws);
    assert_eq!(second.next_json().await["type"], "connected");
    for n in [2, 3] {
        let m = second.next_json().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("message"), Some(n)),
            "{m}"
        );
    }
    let pushed = second.next_json().await;
    assert_eq!(pushed["type"], "subscribed", "{pushed}");
    assert_eq!(pushed["server"], true);
    assert_eq!(pushed["recovered"], json!({"internal:alice": true}));
    assert_eq!(pushed["positions"]["internal:alice"]["seq"], 3);
    publish_json(&mut api, "internal:alice", json!({"n": 4})).await;
    assert_eq!(second.next_message().await["seq"], 4);

    // Another epoch cannot be recovered: told so, and live messages follow.
    let url = format!("ws://{}/ws", engine.ws_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let since = json!({"internal:alice": {"seq": 1, "epoch": "0000000000000000"}});
    ws.send(Message::text(
        json!({"type": "connect", "token": token, "since": since}).to_string(),
    ))
    .await
    .unwrap();
    let mut third = Client::from_ws(ws);
    assert_eq!(third.next_json().await["type"], "connected");
    let pushed = third.next_json().await;
    assert_eq!(
        pushed["recovered"],
        json!({"internal:alice": false}),
        "{pushed}"
    );
    publish_json(&mut api, "internal:alice", json!({"n": 5})).await;
    assert_eq!(third.next_message().await["seq"], 5);
    engine.shutdown().await;
}
