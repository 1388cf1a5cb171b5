//! Authentication and TLS for a benchmark run: `--auth hs256|es256` starts Herald
//! with a token key and topic rules and has every worker connection present a
//! connection token; `--tls` serves the WebSocket listener as `wss://` with a
//! certificate from a CA made for the run. Keys, certificates and the rules file
//! are written under the results directory; workers get the files they need.
//!
//! Tokens are minted by each worker for all of its connections before it opens
//! the first one, so signing never counts in a connect time.

use crate::util::{BenchError, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// How benchmark clients authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Auth {
    /// No token: Herald runs open.
    #[default]
    None,
    /// HS256 tokens (an HMAC secret).
    Hs256,
    /// ES256 tokens (a P-256 key pair; Herald holds the public key).
    Es256,
}

/// History kept for the benchmark topic `bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct History {
    /// Messages kept (`history_size`).
    pub(crate) size: usize,
    /// How long each is kept (`history_ttl`, e.g. `2m`).
    pub(crate) ttl: String,
}

/// The files of one run and the arguments that use them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Material {
    /// Extra arguments for Herald.
    pub(crate) herald_args: Vec<String>,
    /// Extra arguments for every worker.
    pub(crate) worker_args: Vec<String>,
}

impl Material {
    /// Writes what `auth`, `tls` and `history` need into `dir`; no files when all
    /// are off.
    pub(crate) fn prepare(
        dir: &Path,
        auth: Auth,
        tls: bool,
        history: Option<&History>,
    ) -> Result<Self> {
        let mut m = Self::default();
        if auth == Auth::None && !tls && history.is_none() {
            return Ok(m);
        }
        std::fs::create_dir_all(dir)?;
        let pki = |e: rcgen::Error| BenchError::Msg(format!("key generation: {e}"));
        match auth {
            Auth::None => {}
            Auth::Hs256 => {
                let secret = random_hex(32);
                let key = write(dir, "token-secret", &secret)?;
                m.herald_args.push(format!("--token-hmac-secret={secret}"));
                m.worker_args
                    .extend(["--token-alg=hs256".into(), arg("--token-key", &key)]);
            }
            Auth::Es256 => {
                let pair = KeyPair::generate().map_err(pki)?;
                let public = write(dir, "token-public.pem", &pair.public_key_pem())?;
                let private = write(dir, "token-private.pem", &pair.serialize_pem())?;
                m.herald_args.push(arg("--token-public-key", &public));
                m.worker_args
                    .extend(["--token-alg=es256".into(), arg("--token-key", &private)]);
            }
        }
        let rules = rules(auth, history);
        if !rules.is_empty() {
            let config = write(dir, "rules.toml", &rules)?;
            m.herald_args.push(arg("--config", &config));
        }
        if tls {
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "herald-bench CA");
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(pki)?)
                .map_err(pki)?;
            let key = KeyPair::generate().map_err(pki)?;
            let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(pki)?
                .signed_by(&key, &ca)
                .map_err(pki)?;
            let ca_file = write(dir, "ca.pem", &ca.pem())?;
            let cert_file = write(dir, "server.pem", &cert.pem())?;
            let key_file = write(dir, "server.key", &key.serialize_pem())?;
            m.herald_args.extend([
                arg("--tls-cert", &cert_file),
                arg("--tls-key", &key_file),
                // The producer speaks plain gRPC: only the fan-out path is measured.
                "--grpc-plaintext=true".into(),
            ]);
            m.worker_args.push(arg("--tls-ca", &ca_file));
        }
        Ok(m)
    }
}

/// The `[[topics]]` rules of a run: the history rule for `bench` first (the first
/// matching rule decides, for permissions and history alike), then, with
/// authentication on, the rules without which nothing could be subscribed.
fn rules(auth: Auth, history: Option<&History>) -> String {
    let mut rules = String::new();
    if let Some(h) = history {
        // `subscribe` is required in a rule; `anyone` keeps an open run open.
        let who = if auth == Auth::None {
            "anyone"
        } else {
            "authenticated"
        };
        rules.push_str(&format!(
            "[[topics]]\npattern = \"bench\"\nsubscribe = \"{who}\"\nhistory_size = {}\nhistory_ttl = \"{}\"\n\n",
            h.size, h.ttl
        ));
    }
    if auth != Auth::None {
        // Authentication on: nothing may be subscribed without a rule.
        rules.push_str(
            "[[topics]]\npattern = \"user:*\"\nsubscribe = \"owner\"\n\n\
             [[topics]]\npattern = \"*\"\nsubscribe = \"authenticated\"\n",
        );
    }
    rules
}

fn arg(flag: &str, path: &Path) -> String {
    format!("{flag}={}", path.display())
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path)
}

fn random_hex(bytes: usize) -> String {
    // A benchmark secret: unpredictable enough for a run on loopback.
    let mut rng = crate::util::Rng::new(u64::from(std::process::id()));
    (0..bytes)
        .map(|_| format!("{:02x}", rng.below(256)))
        .collect()
}

/// Mints connection tokens in a worker.
pub(crate) struct Minter {
    header: jsonwebtoken::Header,
    key: jsonwebtoken::EncodingKey,
}

impl Minter {
    /// Reads the key for `alg` (`hs256`: the secret; `es256`: a PKCS#8 PEM).
    pub(crate) fn load(alg: &str, key_file: &Path) -> Result<Self> {
        let raw = std::fs::read(key_file)?;
        let bad = |e: jsonwebtoken::errors::Error| BenchError::Msg(format!("token key: {e}"));
        let (alg, key) = match alg {
            "hs256" => (
                jsonwebtoken::Algorithm::HS256,
                jsonwebtoken::EncodingKey::from_secret(raw.trim_ascii()).map_err(bad)?,
            ),
            "es256" => (
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_pem(&raw).map_err(bad)?,
            ),
            other => return Err(BenchError::Msg(format!("unknown token alg {other:?}"))),
        };
        Ok(Self {
            header: jsonwebtoken::Header::new(alg),
            key,
        })
    }

    /// A token for user `sub`, valid for an hour.
    pub(crate) fn mint(&self, sub: &str) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + 3600});
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| BenchError::Msg(format!("minting a token: {e}")))
    }
}

/// A TLS connector trusting the run's CA.
pub(crate) fn tls_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let ca = CertificateDer::from_pem_file(ca_file)
        .map_err(|e| BenchError::Msg(format!("{}: {e}", ca_file.display())))?;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| BenchError::Msg(format!("CA certificate: {e}")))?;
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_rules_file_for_history_and_auth() {
        let h = History {
            size: 100,
            ttl: "2m".into(),
        };
        assert_eq!(rules(Auth::None, None), "");
        let open = rules(Auth::None, Some(&h));
        assert!(open.starts_with("[[topics]]\npattern = \"bench\"\nsubscribe = \"anyone\"\nhistory_size = 100\nhistory_ttl = \"2m\"\n"));
        let both = rules(Auth::Hs256, Some(&h));
        let bench = both.find("pattern = \"bench\"").unwrap();
        let any = both.find("pattern = \"*\"").unwrap();
        assert!(bench < any, "the history rule must match first: {both}");
        assert!(both.contains("subscribe = \"authenticated\"\nhistory_size"));
    }
}
