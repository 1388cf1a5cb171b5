//! Client authentication: the keys that verify connection tokens (JWT), and the
//! verified claims a connection runs with (docs/protocol.md, "Authentication";
//! docs/security.md).
//!
//! Keys come from the configuration: an HMAC secret (HS256, HS384 or HS512),
//! public keys in PEM files (RS256/384/512, PS256/384/512, ES256/384, EdDSA) and
//! a JWKS file. Every key pins one algorithm: a token is only checked against keys
//! of the algorithm its header names, so `alg: none` (not an algorithm the
//! verifier knows) and an HS token "signed" with an RSA public key are refused.
//! Verification is done by the `jsonwebtoken` crate.
//!
//! Without any key the engine runs open: no token is asked for and the client
//! names its user in the query, as before authentication existed.

use std::{path::Path, str::FromStr, sync::Arc, time::SystemTime};

use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet,
};
use serde::Deserialize;

use crate::{
    config::Config,
    rules::{RuleError, Rules},
    topic_name::{self, TopicPattern},
};

/// The longest token accepted, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why the configured keys or topic rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The `[[topics]]` rules are invalid.
    #[error("{0}")]
    Rules(String),
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file does not hold a usable key.
    #[error("key file {path}: {detail}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// Why a token was refused. Each class has a documented code (docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// No token was given.
    #[error("a token is required: pass ?token= or send a connect frame first")]
    Missing,
    /// Not a JWT, or its header or claims are not readable.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// No configured key of the token's algorithm verifies the signature.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The header names an algorithm no configured key is pinned to.
    #[error("the token's algorithm {0:?} is not accepted")]
    WrongAlgorithm(String),
    /// `exp` is in the past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` is not the configured audience.
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    /// A claim is missing or has the wrong shape or size.
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
    /// A refresh token names another user than the connection's.
    #[error("the refresh token's sub is not the connection's user")]
    WrongSubject,
}

impl TokenError {
    /// The documented code: the `error` frame's `code`, and the first word of an
    /// HTTP 401 body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed(_) => "token_malformed",
            Self::BadSignature => "token_bad_signature",
            Self::WrongAlgorithm(_) => "token_wrong_algorithm",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongAudience => "token_wrong_audience",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::InvalidClaims(_) => "token_invalid_claims",
            Self::WrongSubject => "token_wrong_subject",
        }
    }
}

/// A verified token: who the connection is and what the token grants.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    /// `sub`: the connection's user id.
    pub(crate) user: Arc<str>,
    /// `info`, re-encoded as compact JSON.
    pub(crate) info: Option<Arc<str>>,
    /// `exp` as seconds since the epoch; `None` when the token has none.
    pub(crate) exp: Option<u64>,
    /// `topics`: topics or patterns the connection may subscribe to (rule `granted`).
    pub(crate) granted: Vec<TopicPattern>,
    /// `subscribe`: topics the engine subscribes the connection to at connect.
    pub(crate) subscribe: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// One verification key, pinned to one algorithm.
struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The configured verification keys and claim checks.
#[derive(Debug)]
pub(crate) struct Authenticator {
    keys: Vec<Key>,
    max_user_id_len: usize,
    max_info_bytes: usize,
    max_topic_len: usize,
    max_subscriptions: usize,
}

/// The algorithm a PEM key is pinned to when its file name carries no `ALG=`
/// prefix.
fn default_alg(family: AlgorithmFamily) -> Algorithm {
    match family {
        AlgorithmFamily::Rsa => Algorithm::RS256,
        AlgorithmFamily::Ec => Algorithm::ES256,
        AlgorithmFamily::Ed => Algorithm::EdDSA,
        AlgorithmFamily::Hmac => Algorithm::HS256,
    }
}

/// Splits `ALG=path` into the algorithm and the path; a plain path has no prefix.
fn split_alg(spec: &str) -> (Option<Algorithm>, &str) {
    if let Some((alg, path)) = spec.split_once('=')
        && let Ok(alg) = Algorithm::from_str(alg.trim())
    {
        return (Some(alg), path.trim());
    }
    (None, spec)
}

fn read(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(Path::new(path)).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_key(path: &str, pin: Option<Algorithm>) -> Result<(Algorithm, DecodingKey), KeyError> {
    let pem = read(path)?;
    let invalid = |detail: String| KeyError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let key = DecodingKey::from_ec_pem(&pem)
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .or_else(|_| DecodingKey::from_rsa_pem(&pem))
        .map_err(|e| invalid(format!("not an RSA, EC or Ed25519 public key in PEM: {e}")))?;
    let alg = pin.unwrap_or_else(|| default_alg(key.family()));
    if alg.family() != key.family() {
        return Err(invalid(format!(
            "{alg:?} is not an algorithm of this {:?} key",
            key.family()
        )));
    }
    Ok((alg, key))
}

fn jwks_keys(path: &str) -> Result<Vec<(Algorithm, Option<String>, DecodingKey)>, KeyError> {
    let text = read(path)?;
    let invalid = |detail: String| KeyError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {i}: {e}")))?;
        if key.family() == AlgorithmFamily::Hmac {
            return Err(invalid(format!(
                "key {i}: symmetric keys do not belong in a JWKS file; use the HMAC secret"
            )));
        }
        let alg = match jwk.common.key_algorithm {
            Some(kalg) => Algorithm::from_str(&kalg.to_string())
                .map_err(|_| invalid(format!("key {i}: algorithm {kalg} cannot verify tokens")))?,
            None => default_alg(key.family()),
        };
        if alg.family() != key.family() {
            return Err(invalid(format!(
                "key {i}: {alg:?} is not an algorithm of this key"
            )));
        }
        keys.push((alg, jwk.common.key_id.clone(), key));
    }
    Ok(keys)
}

impl Authenticator {
    /// Loads the configured keys; `None` when none is configured (open mode).
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, KeyError> {
        let mut found: Vec<(Algorithm, Option<String>, DecodingKey)> = Vec::new();
        let secret = config.token_hmac_secret.expose();
        if !secret.is_empty() {
            let (alg, secret) = match split_alg(secret) {
                (Some(alg), rest) if alg.family() == AlgorithmFamily::Hmac => (alg, rest),
                _ => (Algorithm::HS256, secret),
            };
            let key =
                DecodingKey::from_secret(secret.as_bytes()).map_err(|e| KeyError::Invalid {
                    path: "token_hmac_secret".to_owned(),
                    detail: e.to_string(),
                })?;
            found.push((alg, None, key));
        }
        for spec in config
            .token_public_key
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (pin, path) = split_alg(spec);
            let (alg, key) = pem_key(path, pin)?;
            found.push((alg, None, key));
        }
        if !config.token_jwks_file.is_empty() {
            let keys = jwks_keys(&config.token_jwks_file)?;
            if keys.is_empty() {
                return Err(KeyError::Invalid {
                    path: config.token_jwks_file.clone(),
                    detail: "the JWKS document has no keys".to_owned(),
                });
            }
            found.extend(keys);
        }
        if found.is_empty() {
            return Ok(None);
        }
        let keys = found
            .into_iter()
            .map(|(alg, kid, key)| Key {
                alg,
                kid,
                key,
                validation: validation(alg, config),
            })
            .collect();
        Ok(Some(Self {
            keys,
            max_user_id_len: config.max_user_id_len,
            max_info_bytes: config.max_info_bytes,
            max_topic_len: config.max_topic_len,
            max_subscriptions: config.max_subscriptions,
        }))
    }

    /// The algorithms of the configured keys, for the start-up log.
    pub(crate) fn algorithms(&self) -> Vec<String> {
        let mut algs: Vec<String> = self.keys.iter().map(|k| format!("{:?}", k.alg)).collect();
        algs.dedup();
        algs
    }

    /// Verifies a token: signature, algorithm, time and audience/issuer claims,
    /// then the Herald claims.
    pub(crate) fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "the token is {} bytes; the limit is {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let (alg, kid) = read_header(token)?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| format!("{:?}", k.alg) == alg)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::WrongAlgorithm(alg));
        }
        // A token that names its key is checked against that key when one has
        // this id; otherwise against every key of its algorithm.
        let named: Vec<&Key> = match &kid {
            Some(kid) => candidates
                .iter()
                .copied()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => Vec::new(),
        };
        let candidates = if named.is_empty() { candidates } else { named };
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return self.claims(data.claims),
                Err(e) => {
                    let e = classify(e.kind());
                    if e != TokenError::BadSignature {
                        // The signature verified; the claims are what is wrong.
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn claims(&self, claims: Claims) -> Result<Verified, TokenError> {
        let bad = |m: String| Err(TokenError::InvalidClaims(m));
        if claims.sub.is_empty()
            || claims.sub.len() > self.max_user_id_len
            || claims.sub.chars().any(char::is_control)
        {
            return bad(format!(
                "sub must be 1 to {} bytes without control characters",
                self.max_user_id_len
            ));
        }
        let info = match claims.info {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => {
                let text = value.to_string();
                if text.len() > self.max_info_bytes {
                    return bad(format!(
                        "info is {} bytes; the limit is {}",
                        text.len(),
                        self.max_info_bytes
                    ));
                }
                Some(Arc::from(text))
            }
        };
        let granted = claims
            .topics
            .iter()
            .map(|t| TopicPattern::parse(t, self.max_topic_len))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TokenError::InvalidClaims(format!("topics: {e}")))?;
        if claims.subscribe.len() > self.max_subscriptions {
            return bad(format!(
                "subscribe names {} topics; the limit per connection is {}",
                claims.subscribe.len(),
                self.max_subscriptions
            ));
        }
        for topic in &claims.subscribe {
            if let Err(e) = topic_name::validate(topic, self.max_topic_len) {
                return bad(format!("subscribe: {e}"));
            }
        }
        let mut subscribe = claims.subscribe;
        let mut seen = std::collections::HashSet::new();
        subscribe.retain(|t| seen.insert(t.clone()));
        Ok(Verified {
            user: Arc::from(claims.sub),
            info,
            exp: claims.exp,
            granted,
            subscribe,
        })
    }
}

fn validation(alg: Algorithm, config: &Config) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.token_leeway.0.as_secs();
    v.validate_nbf = true;
    let mut required = vec!["sub"];
    if config.token_allow_no_exp {
        v.validate_exp = true;
    } else {
        required.push("exp");
    }
    if config.token_audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[config.token_audience.as_str()]);
        required.push("aud");
    }
    if !config.token_issuer.is_empty() {
        v.set_issuer(&[config.token_issuer.as_str()]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

/// Reads the header's `alg` and `kid` without trusting anything else in it, so
/// that an algorithm the verifier does not know (`none`) is named in the refusal.
fn read_header(token: &str) -> Result<(String, Option<String>), TokenError> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "a JWT has three base64url parts separated by '.'".to_owned(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the header is not base64url".to_owned()))?;
    let header: Header = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("the header is not a JWT header: {e}")))?;
    Ok((header.alg, header.kid))
}

fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenError::WrongAlgorithm("of another key".to_owned())
        }
        ErrorKind::MissingRequiredClaim(c) => {
            TokenError::InvalidClaims(format!("the {c} claim is required"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            TokenError::InvalidClaims(format!("the {c} claim has the wrong type"))
        }
        ErrorKind::Json(e) => TokenError::InvalidClaims(e.to_string()),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            TokenError::Malformed("the payload or signature is not readable".to_owned())
        }
        _ => TokenError::BadSignature,
    }
}

/// Everything that decides what a client may do: the token keys (none in open
/// mode), the topic rules and the expiry timing.
#[derive(Debug)]
pub(crate) struct ClientAccess {
    /// The token verifier; `None` in open mode.
    pub(crate) tokens: Option<Authenticator>,
    /// The topic rules.
    pub(crate) rules: Rules,
    /// Clock skew allowed on `exp` (the connection is closed this long after it).
    pub(crate) leeway: std::time::Duration,
    /// How long before expiry `refresh_required` is sent.
    pub(crate) refresh_before: std::time::Duration,
}

impl ClientAccess {
    /// Loads the keys and compiles the rules of `config`.
    pub(crate) fn from_config(config: &Config) -> Result<Self, KeyError> {
        let tokens = Authenticator::from_config(config)?;
        let rules = Rules::compile(&config.topics, config.max_topic_len)
            .map_err(|e: RuleError| KeyError::Rules(e.to_string()))?
            .deny_unmatched(tokens.is_some());
        Ok(Self {
            tokens,
            rules,
            leeway: config.token_leeway.0,
            refresh_before: config.token_refresh_before.0,
        })
    }

    /// When a token with this `exp` stops being valid.
    pub(crate) fn expiry(&self, exp: Option<u64>) -> Option<SystemTime> {
        exp.map(|exp| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(exp) + self.leeway)
    }
}

/// Whether `config` names any token key (the engine refuses to start when a
/// named key cannot be loaded, so a running node then authenticates clients).
pub(crate) fn configured(config: &Config) -> bool {
    !config.token_hmac_secret.expose().is_empty()
        || !config.token_public_key.trim().is_empty()
        || !config.token_jwks_file.is_empty()
}

/// Seconds since the Unix epoch, now.
#[cfg(test)]
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn config(secret: &str) -> Config {
        Config {
            token_hmac_secret: secret.parse().unwrap(),
            ..Config::default()
        }
    }

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn open_without_keys() {
        assert!(
            Authenticator::from_config(&Config::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn hs256_tokens_verify_and_refusals_are_classified() {
        let auth = Authenticator::from_config(&config("s3cret"))
            .unwrap()
            .unwrap();
        let exp = now_secs() + 60;
        let ok = hs(
            json!({"sub": "u1", "exp": exp, "topics": ["room:*"], "subscribe": ["a", "a"], "info": {"n": 1}}),
            "s3cret",
        );
        let v = auth.verify(&ok).unwrap();
        assert_eq!(&*v.user, "u1");
        assert_eq!(v.subscribe, vec!["a".to_owned()]);
        assert_eq!(v.info.as_deref(), Some("{\"n\":1}"));
        assert!(v.granted[0].matches("room:x"));
        let bad = hs(json!({"sub": "u1", "exp": exp}), "other");
        assert_eq!(auth.verify(&bad).unwrap_err(), TokenError::BadSignature);
        let old = hs(json!({"sub": "u1", "exp": now_secs() - 10}), "s3cret");
        assert_eq!(auth.verify(&old).unwrap_err(), TokenError::Expired);
        let early = hs(json!({"sub": "u1", "exp": exp, "nbf": exp}), "s3cret");
        assert_eq!(auth.verify(&early).unwrap_err(), TokenError::NotYetValid);
        let no_exp = hs(json!({"sub": "u1"}), "s3cret");
        assert!(matches!(
            auth.verify(&no_exp),
            Err(TokenError::InvalidClaims(_))
        ));
        assert!(matches!(auth.verify("a.b"), Err(TokenError::Malformed(_))));
        assert_eq!(auth.verify("").unwrap_err(), TokenError::Missing);
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"sub": "u1", "exp": exp}).to_string())
        );
        assert_eq!(
            auth.verify(&none).unwrap_err(),
            TokenError::WrongAlgorithm("none".into())
        );
        let bad_topic = hs(
            json!({"sub": "u1", "exp": exp, "subscribe": ["a b"]}),
            "s3cret",
        );
        assert!(matches!(
            auth.verify(&bad_topic),
            Err(TokenError::InvalidClaims(_))
        ));
    }
}
