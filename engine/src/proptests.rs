//! Property tests (bounded: a few hundred cases each, seconds in all) of the
//! parsers that read untrusted input: client commands ([`crate::protocol`]),
//! topic names and patterns ([`crate::topic_name`]) and connection tokens
//! ([`crate::auth`]). Whatever the input: no panic, and every refusal is one
//! of the documented errors (docs/protocol.md, docs/security.md).

use proptest::prelude::*;
use serde_json::json;

use crate::{
    auth::Authenticator,
    config::Config,
    protocol::{Command, parse_command},
    topic_name::{TopicError, TopicPattern, validate},
};

const CASES: u32 = 512;

/// The documented token refusal codes.
const TOKEN_CODES: &[&str] = &[
    "token_missing",
    "token_malformed",
    "token_bad_signature",
    "token_wrong_algorithm",
    "token_expired",
    "token_not_yet_valid",
    "token_wrong_audience",
    "token_wrong_issuer",
    "token_invalid_claims",
];

/// Strings that look like commands: JSON objects with some of the fields, of
/// the right or wrong types.
fn command_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just(json!("subscribe")),
        Just(json!("unsubscribe")),
        Just(json!("ping")),
        Just(json!("connect")),
        Just(json!("refresh")),
        "[a-z]{0,8}".prop_map(|s| json!(s)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(null)),
    ];
    let id = prop_oneof![
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,4}".prop_map(|s| json!(s)),
    ];
    let topics = prop_oneof![
        prop::collection::vec(".{0,12}", 0..6).prop_map(|v| json!(v)),
        ".{0,6}".prop_map(|s| json!(s)),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(|v| json!(v)),
    ];
    (
        prop::option::of(kind),
        prop::option::of(id),
        prop::option::of(topics),
        prop::option::of(".{0,40}"),
    )
        .prop_map(|(kind, id, topics, token)| {
            let mut object = serde_json::Map::new();
            for (key, value) in [
                ("type", kind),
                ("id", id),
                ("topics", topics),
                ("token", token.map(|t| json!(t))),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            serde_json::Value::Object(object).to_string()
        })
}

fn token_authenticator() -> Authenticator {
    let config = Config {
        token_hmac_secret: "proptest-secret".parse().unwrap_or_default(),
        ..Config::default()
    };
    match Authenticator::from_config(&config) {
        Ok(Some(auth)) => auth,
        other => panic!("an HMAC authenticator: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_text_parses_or_is_a_documented_command_error(text in ".{0,200}") {
        if let Err(e) = parse_command(&text) {
            prop_assert!(matches!(e.code, "bad_frame" | "unknown_type"), "{}", e.code);
        }
    }

    #[test]
    fn command_shaped_json_parses_exactly_when_it_is_a_command(text in command_like()) {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match parse_command(&text) {
            Ok(command) => {
                let kind = value["type"].as_str().unwrap_or_default();
                let matches = match &command {
                    Command::Subscribe { .. } => kind == "subscribe",
                    Command::Unsubscribe { .. } => kind == "unsubscribe",
                    Command::Ping { .. } => kind == "ping",
                    Command::Connect { .. } => kind == "connect",
                    Command::Refresh { .. } => kind == "refresh",
                };
                prop_assert!(matches, "{text} parsed as {command:?}");
            }
            Err(e) => {
                prop_assert!(matches!(e.code, "bad_frame" | "unknown_type"), "{}", e.code);
                if e.code == "unknown_type" {
                    prop_assert!(value["type"].is_string());
                }
            }
        }
    }

    #[test]
    fn topic_validation_accepts_exactly_the_topic_rule(name in "[a-z:*>_ \u{e9}\u{0}-]{0,20}|.{0,20}", max in 1usize..24) {
        match validate(&name, max) {
            Ok(()) => {
                prop_assert!(!name.is_empty() && name.len() <= max);
                prop_assert!(name.split(':').all(|s| !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=@~+".contains(&b))));
            }
            Err(TopicError::Empty) => prop_assert!(name.is_empty()),
            Err(TopicError::TooLong { len, .. }) => prop_assert!(len > max),
            Err(TopicError::EmptySegment(_) | TopicError::BadChar { .. } | TopicError::BadWildcard(_)) => {}
        }
        if let Ok(pattern) = TopicPattern::parse(&name, max) {
            // A pattern matches without panicking, and an exact one matches itself.
            let _ = pattern.matches(&name);
            if validate(&name, max).is_ok() {
                prop_assert!(pattern.matches(&name));
            }
        }
    }

    #[test]
    fn any_token_text_is_refused_with_a_documented_code(token in ".{0,120}|[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}") {
        let auth = token_authenticator();
        match auth.verify(&token) {
            Ok(v) => prop_assert!(false, "a random token verified: {v:?}"),
            Err(e) => prop_assert!(TOKEN_CODES.contains(&e.code()), "{}", e.code()),
        }
    }

    #[test]
    fn a_tampered_token_is_refused(position in 0usize..400, replacement in "[A-Za-z0-9_.=-]") {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let auth = token_authenticator();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0) + 600;
        let claims = json!({"sub": "alice", "exp": exp, "info": {"n": [1, 2, {"x": null}]}, "topics": ["room:*"]});
        let key = EncodingKey::from_secret(b"proptest-secret");
        let token = key
            .ok()
            .and_then(|key| encode(&Header::default(), &claims, &key).ok())
            .unwrap_or_default();
        prop_assert!(auth.verify(&token).is_ok());
        let at = position % token.len();
        let mut tampered = token.clone();
        tampered.replace_range(at..=at, &replacement);
        match auth.verify(&tampered) {
            // The same token, or one whose last base64 character carries only
            // unused bits of the signature.
            Ok(v) => prop_assert!(tampered == token || at == token.len() - 1, "{v:?}"),
            Err(e) => prop_assert!(TOKEN_CODES.contains(&e.code()), "{}", e.code()),
        }
    }
}
