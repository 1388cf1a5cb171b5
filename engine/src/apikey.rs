//! API keys for the gRPC port: a tower layer in front of every gRPC service
//! except `grpc.health.v1.Health` (probes carry no key).
//!
//! A call must carry `authorization: Bearer <key>` with one of the configured
//! keys; otherwise it is answered UNAUTHENTICATED with no message, before any
//! other layer (the concurrency limit) or service sees it. The presented key is
//! compared with every configured key in constant time (`subtle`): the time taken
//! depends on the number and lengths of the keys, never on their contents.
//!
//! Keys come from `--api-key` (repeatable; `HERALD_API_KEYS`, comma-separated; or
//! `api_key = [...]` in the config file) and from `--api-keys-file` (one key per
//! line, `#` starts a comment). The file is read again on SIGHUP and whenever its
//! contents change (checked every [`FILE_CHECK_INTERVAL`]); a file that cannot be
//! read or holds no key keeps the keys in force. With no key configured at all the
//! API is open, as it was before keys existed, and the engine warns at start.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use futures_util::future::{Either, Ready, ready};
use subtle::{Choice, ConstantTimeEq};
use tonic::codegen::http;
use tower::{Layer, Service, util::Oneshot};

use crate::config::Config;

/// How often the keys file is checked for changes.
pub(crate) const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Paths under this prefix never need a key.
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// Why the API keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The keys file could not be read.
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is not usable in an `authorization` header.
    #[error("{origin}: an API key must be 1 to 4096 visible ASCII characters without spaces")]
    Invalid {
        /// Where the key came from.
        origin: String,
    },
    /// The keys file holds no key (a file that empties would open the API).
    #[error("the API keys file {0} holds no key")]
    Empty(PathBuf),
}

/// The keys in force, shared by the layer and the reloader.
#[derive(Debug)]
pub(crate) struct ApiKeys {
    /// Keys from flags, the environment or the config file.
    fixed: Vec<Box<[u8]>>,
    /// The keys file, if one is configured.
    file: Option<PathBuf>,
    /// `fixed` plus the file's keys, as last loaded.
    current: ArcSwap<Vec<Box<[u8]>>>,
}

impl ApiKeys {
    /// Loads the configured keys (reading the keys file, if any).
    pub(crate) fn load(config: &Config) -> Result<Self, ApiKeyError> {
        let mut fixed = Vec::with_capacity(config.api_key.len());
        for (i, key) in config.api_key.iter().enumerate() {
            let key = key.expose().trim();
            // `HERALD_API_KEYS=` (set but empty) or `a,,b`: no key, not a bad one.
            if key.is_empty() {
                continue;
            }
            check_key(key, || format!("API key #{}", i + 1))?;
            fixed.push(Box::from(key.as_bytes()));
        }
        let file = config.api_keys_path().map(Path::to_owned);
        let mut current = fixed.clone();
        if let Some(path) = &file {
            current.extend(read_file(path)?);
        }
        Ok(Self {
            fixed,
            file,
            current: ArcSwap::from_pointee(current),
        })
    }

    /// True when no key is configured: every call is let through.
    pub(crate) fn is_open(&self) -> bool {
        self.current.load().is_empty()
    }

    /// How many keys are in force.
    pub(crate) fn count(&self) -> usize {
        self.current.load().len()
    }

    /// The keys file, if one is configured.
    pub(crate) fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the keys file again. `Ok(true)` when the keys changed; on an error
    /// the keys in force stay.
    pub(crate) fn reload(&self) -> Result<bool, ApiKeyError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let mut keys = self.fixed.clone();
        keys.extend(read_file(path)?);
        if **self.current.load() == keys {
            return Ok(false);
        }
        self.current.store(Arc::new(keys));
        Ok(true)
    }

    /// Whether the `authorization` header carries a key in force.
    fn allows(&self, authorization: Option<&http::HeaderValue>) -> bool {
        let keys = self.current.load();
        if keys.is_empty() {
            return true;
        }
        let Some(presented) = authorization.and_then(|v| bearer(v.as_bytes())) else {
            return false;
        };
        // No early exit: every key is compared.
        let mut found = Choice::from(0);
        for key in keys.iter() {
            found |= key.as_ref().ct_eq(presented);
        }
        found.into()
    }
}

/// The token of a `Bearer <token>` header value (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn check_key(key: &str, origin: impl FnOnce() -> String) -> Result<(), ApiKeyError> {
    if key.is_empty() || key.len() > 4096 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiKeyError::Invalid { origin: origin() });
    }
    Ok(())
}

/// The keys in a keys file: one per line, blank lines and `#` comments ignored.
fn read_file(path: &Path) -> Result<Vec<Box<[u8]>>, ApiKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| ApiKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if line.is_empty() {
            continue;
        }
        check_key(line, || format!("{} line {}", path.display(), n + 1))?;
        keys.push(Box::from(line.as_bytes()));
    }
    if keys.is_empty() {
        return Err(ApiKeyError::Empty(path.to_owned()));
    }
    Ok(keys)
}

/// Re-reads the keys file on SIGHUP and whenever its contents change, until the
/// task is aborted. Does nothing without a keys file.
pub(crate) async fn watch(keys: Arc<ApiKeys>) {
    let Some(path) = keys.file().map(Path::to_owned) else {
        return;
    };
    let mut hangup = hangup_signal();
    let mut ticker = tokio::time::interval(FILE_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        let hup = tokio::select! {
            _ = ticker.tick() => false,
            () = next_hangup(&mut hangup) => true,
        };
        match keys.reload() {
            Ok(changed) => {
                last_error = None;
                if changed || hup {
                    tracing::info!(file = %path.display(), keys = keys.count(), changed, "API keys file read");
                }
            }
            Err(e) => {
                // Said once per distinct error, not every few seconds.
                let text = e.to_string();
                if hup || last_error.as_deref() != Some(&text) {
                    tracing::error!(error = %text, keys = keys.count(), "API keys file not reloaded; the keys in force stay");
                }
                last_error = Some(text);
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the API keys file is still checked for changes");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    match hangup {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

/// The tower layer that checks API keys.
#[derive(Debug, Clone)]
pub(crate) struct ApiKeyLayer {
    keys: Arc<ApiKeys>,
}

impl ApiKeyLayer {
    pub(crate) fn new(keys: Arc<ApiKeys>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            keys: Arc::clone(&self.keys),
            inner,
        }
    }
}

/// The service made by [`ApiKeyLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ApiKeyService<S> {
    keys: Arc<ApiKeys>,
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        Either<Ready<Result<Self::Response, S::Error>>, Oneshot<S, http::Request<ReqBody>>>;

    /// Always ready: the inner service (and its concurrency limit) is asked only
    /// for calls that pass the check.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        if !req.uri().path().starts_with(OPEN_PREFIX)
            && !self
                .keys
                .allows(req.headers().get(http::header::AUTHORIZATION))
        {
            return Either::Left(ready(Ok(tonic::Status::unauthenticated("").into_http())));
        }
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        Either::Right(Oneshot::new(inner, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(list: &[&str]) -> ApiKeys {
        let config = Config {
            api_key: list.iter().map(|k| Secret::new((*k).to_owned())).collect(),
            ..Config::default()
        };
        ApiKeys::load(&config).unwrap()
    }

    fn header(v: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn bearer_keys_are_matched_exactly() {
        let k = keys(&["alpha-key", "beta-key"]);
        assert!(!k.is_open());
        assert!(k.allows(Some(&header("Bearer alpha-key"))));
        assert!(k.allows(Some(&header("bearer beta-key"))));
        assert!(!k.allows(Some(&header("Bearer alpha-ke"))));
        assert!(!k.allows(Some(&header("Bearer alpha-keyy"))));
        assert!(!k.allows(Some(&header("alpha-key"))));
        assert!(!k.allows(Some(&header("Basic alpha-key"))));
        assert!(!k.allows(Some(&header("Bearer "))));
        assert!(!k.allows(None));
    }

    #[test]
    fn no_keys_means_open() {
        let k = keys(&[]);
        assert!(k.is_open());
        assert!(keys(&["", " "]).is_open(), "empty entries are no keys");
        assert!(k.allows(None));
    }

    #[test]
    fn bad_keys_are_refused() {
        let config = Config {
            api_key: vec![Secret::new("has space".to_owned())],
            ..Config::default()
        };
        assert!(ApiKeys::load(&config).is_err());
    }

    #[test]
    fn keys_file_comments_reload_and_emptiness() {
        let dir = std::env::temp_dir().join(format!("herald-apikey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(
            &path,
            "# producers\nfirst-key\n\n  second-key  # old, remove soon\n",
        )
        .unwrap();
        let config = Config {
            api_keys_file: path.clone(),
            ..Config::default()
        };
        let k = ApiKeys::load(&config).unwrap();
        assert_eq!(k.count(), 2);
        assert!(k.allows(Some(&header("Bearer second-key"))));
        std::fs::write(&path, "third-key\n").unwrap();
        assert!(k.reload().unwrap());
        assert!(!k.allows(Some(&header("Bearer second-key"))));
        assert!(k.allows(Some(&header("Bearer third-key"))));
        std::fs::write(&path, "# nothing left\n").unwrap();
        assert!(k.reload().is_err());
        assert!(
            k.allows(Some(&header("Bearer third-key"))),
            "keys in force stay"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
