//! Limits on WebSocket clients (docs/security.md, "Limits"): which browser origins
//! may connect, how many connections the node, one user and one IP address may
//! hold, how fast one IP address may open them, and how fast one connection may
//! send commands. The rate limits are GCRA token buckets from `governor`.
//!
//! Admission happens during the handshake ([`crate::handshake`]); a [`Slot`]
//! holds the connection's place in the counts until the session ends.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::Config;

/// What a node at its connection limit tells clients to wait.
pub(crate) const NODE_FULL_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The window in which refused commands count towards a flood.
pub(crate) const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// A token bucket quota of `rate` per second with room for `burst` (0: the rate
/// rounded up); `None` when the rate is 0 (no limit).
pub(crate) fn quota(rate: f64, burst: u32) -> Option<Quota> {
    if !rate.is_finite() || rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let burst = if burst == 0 {
        rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
    } else {
        burst
    };
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?))
}

/// The origins allowed to open WebSocket connections.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Origins {
    /// Empty: any origin.
    allowed: Vec<OriginRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// The whole origin, lowercased: `https://app.example.com`.
    Exact(String),
    /// `*.example.com` (any scheme) or `https://*.example.com`: the scheme, when
    /// given, and the suffix `.example.com` (a host with at least one more label).
    Subdomains {
        scheme: Option<String>,
        suffix: String,
    },
}

impl Origins {
    /// Parses the comma-separated `allowed_origins` option.
    pub(crate) fn parse(list: &str) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let lower = entry.to_ascii_lowercase();
            let (scheme, rest) = match lower.split_once("://") {
                Some((scheme, rest)) => (Some(scheme.to_owned()), rest.to_owned()),
                None => (None, lower.clone()),
            };
            if rest.is_empty() || rest.contains('/') || rest.chars().any(char::is_whitespace) {
                return Err(format!(
                    "allowed_origins: {entry:?} is not an origin such as https://app.example.com or *.example.com"
                ));
            }
            if let Some(domain) = rest.strip_prefix("*.") {
                if domain.is_empty() || domain.contains('*') {
                    return Err(format!("allowed_origins: {entry:?} has an empty domain"));
                }
                allowed.push(OriginRule::Subdomains {
                    scheme,
                    suffix: format!(".{domain}"),
                });
            } else if rest.contains('*') {
                return Err(format!(
                    "allowed_origins: {entry:?}: a wildcard may only stand for the leading labels (*.example.com)"
                ));
            } else if scheme.is_none() {
                return Err(format!(
                    "allowed_origins: {entry:?} needs its scheme (https://{entry}), or a wildcard (*.{entry})"
                ));
            } else {
                allowed.push(OriginRule::Exact(lower));
            }
        }
        Ok(Self { allowed })
    }

    /// Whether a handshake with this `Origin` header may proceed.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        let (scheme, host) = origin.split_once("://").unwrap_or(("", origin.as_str()));
        self.allowed.iter().any(|rule| match rule {
            OriginRule::Exact(exact) => *exact == origin,
            OriginRule::Subdomains { scheme: s, suffix } => {
                s.as_deref().is_none_or(|s| s == scheme)
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        })
    }
}

/// Why a handshake was refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The HTTP status (429 or 503).
    pub(crate) status: u16,
    /// The error code (also the close reason after a `connect` frame).
    pub(crate) code: &'static str,
    /// For people.
    pub(crate) message: String,
    /// When to try again, if the client should.
    pub(crate) retry_after: Option<Duration>,
}

/// The node's connection counts and the per-IP connection rate.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// The origins allowed to connect.
    pub(crate) origins: Origins,
    max_node: usize,
    max_per_user: usize,
    max_per_ip: usize,
    node: AtomicUsize,
    per_user: Mutex<HashMap<Arc<str>, usize>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    ip_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ConnLimits {
    /// The limits of the configuration; an error when `allowed_origins` is invalid.
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        Ok(Self {
            origins: Origins::parse(&config.allowed_origins)?,
            max_node: config.max_connections,
            max_per_user: config.max_connections_per_user,
            max_per_ip: config.max_connections_per_ip,
            node: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            ip_rate: quota(config.ip_connect_rate, config.ip_connect_burst)
                .map(RateLimiter::dashmap),
        })
    }

    /// Admits a connection from `ip`: the per-IP rate, the node's count and the
    /// per-IP count. The slot keeps its place until dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        if let Some(rate) = &self.ip_rate
            && let Err(not_until) = rate.check_key(&ip)
        {
            let wait = not_until.wait_time_from(rate.clock().now());
            return Err(Refusal {
                status: 429,
                code: "too_many_connects",
                message: format!(
                    "too many new connections from {ip}; try again in {} ms",
                    wait.as_millis()
                ),
                retry_after: Some(wait),
            });
        }
        let node = self.node.fetch_add(1, Ordering::AcqRel);
        let mut slot = Slot {
            limits: Arc::clone(self),
            ip: None,
            user: None,
        };
        if self.max_node > 0 && node >= self.max_node {
            return Err(Refusal {
                status: 503,
                code: "node_full",
                message: format!(
                    "this node holds its limit of {} connections; try again later or elsewhere",
                    self.max_node
                ),
                retry_after: Some(NODE_FULL_RETRY_AFTER),
            });
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                return Err(Refusal {
                    status: 429,
                    code: "too_many_connections",
                    message: format!("{ip} holds its limit of {} connections", self.max_per_ip),
                    retry_after: None,
                });
            }
            *count += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Admits one more connection of `user` into `slot`.
    pub(crate) fn admit_user(&self, slot: &mut Slot, user: &Arc<str>) -> Result<(), Refusal> {
        if self.max_per_user == 0 || slot.user.is_some() {
            return Ok(());
        }
        let mut per_user = self.per_user.lock();
        let count = per_user.entry(Arc::clone(user)).or_insert(0);
        if *count >= self.max_per_user {
            return Err(Refusal {
                status: 429,
                code: "too_many_connections",
                message: format!(
                    "user {user:?} holds its limit of {} connections",
                    self.max_per_user
                ),
                retry_after: None,
            });
        }
        *count += 1;
        slot.user = Some(Arc::clone(user));
        Ok(())
    }

    /// Forgets the rate state of addresses that have been quiet long enough to
    /// have a full bucket again.
    pub(crate) fn retain_recent(&self) {
        if let Some(rate) = &self.ip_rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.node.load(Ordering::Acquire)
    }
}

/// A connection's place in the node's, its IP's and its user's counts.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.node.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            release(&self.limits.per_ip, &ip);
        }
        if let Some(user) = &self.user {
            release(&self.limits.per_user, user);
        }
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut counts = counts.lock();
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// One connection's command rate: a token bucket, and the refusals of the
/// current flood window.
#[derive(Debug)]
pub(crate) struct CommandRate {
    bucket: Option<DefaultDirectRateLimiter>,
    flood: u32,
    window_start: Instant,
    refused: u32,
}

/// What to do with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Allow,
    /// Refuse it (`rate_limited`): the bucket is empty for this long.
    Refuse(Duration),
    /// The connection floods: close it.
    Flood,
}

impl CommandRate {
    /// The configured rate.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            bucket: quota(config.client_command_rate, config.client_command_burst)
                .map(RateLimiter::direct),
            flood: config.client_command_flood,
            window_start: Instant::now(),
            refused: 0,
        }
    }

    /// Takes a token for one command.
    pub(crate) fn check(&mut self) -> Verdict {
        let Some(bucket) = &self.bucket else {
            return Verdict::Allow;
        };
        let Err(not_until) = bucket.check() else {
            return Verdict::Allow;
        };
        let now = Instant::now();
        if now.duration_since(self.window_start) > FLOOD_WINDOW {
            self.window_start = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.flood > 0 && self.refused >= self.flood {
            return Verdict::Flood;
        }
        Verdict::Refuse(not_until.wait_time_from(bucket.clock().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let any = Origins::parse("").unwrap();
        assert!(any.allows("https://evil.example"));
        let o =
            Origins::parse("https://app.example.com, *.example.org ,http://*.local.test").unwrap();
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("HTTPS://App.Example.com"));
        assert!(!o.allows("http://app.example.com"));
        assert!(!o.allows("https://app.example.com.evil.io"));
        assert!(o.allows("https://a.example.org"));
        assert!(o.allows("http://a.b.example.org"));
        assert!(!o.allows("https://example.org"));
        assert!(!o.allows("https://badexample.org"));
        assert!(o.allows("http://x.local.test"));
        assert!(!o.allows("https://x.local.test"));
        assert!(!o.allows("null"));
        assert!(Origins::parse("app.example.com").is_err());
        assert!(Origins::parse("https://a.*.com").is_err());
        assert!(Origins::parse("https://a.com/path").is_err());
        assert!(Origins::parse("*.").is_err());
    }

    #[test]
    fn quotas() {
        assert!(quota(0.0, 5).is_none());
        assert!(quota(f64::NAN, 5).is_none());
        assert_eq!(quota(2.5, 0).map(|q| q.burst_size().get()), Some(3));
        assert_eq!(quota(10.0, 20).map(|q| q.burst_size().get()), Some(20));
        assert!(quota(1e-9, 1).is_some());
    }

    #[test]
    fn counts_are_released_with_their_slots() {
        let config = Config {
            max_connections: 2,
            max_connections_per_ip: 1,
            max_connections_per_user: 1,
            ..Config::default()
        };
        let limits = Arc::new(ConnLimits::new(&config).unwrap());
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let c: IpAddr = [127, 0, 0, 3].into();
        let mut first = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err().status, 429);
        let alice: Arc<str> = Arc::from("alice");
        limits.admit_user(&mut first, &alice).unwrap();
        let mut second = limits.admit(b).unwrap();
        assert_eq!(
            limits.admit_user(&mut second, &alice).unwrap_err().status,
            429
        );
        assert_eq!(limits.admit(c).unwrap_err().status, 503);
        drop(first);
        assert_eq!(limits.count(), 1);
        let mut third = limits.admit(a).unwrap();
        limits.admit_user(&mut third, &alice).unwrap();
        drop((second, third));
        assert_eq!(limits.count(), 0);
        assert!(limits.per_ip.lock().is_empty());
        assert!(limits.per_user.lock().is_empty());
    }

    #[test]
    fn the_ip_rate_refuses_with_a_wait() {
        let config = Config {
            ip_connect_rate: 1.0,
            ip_connect_burst: 2,
            ..Config::default()
        };
        let limits = Arc::new(ConnLimits::new(&config).unwrap());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let _a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        let refused = limits.admit(ip).unwrap_err();
        assert_eq!(refused.status, 429);
        assert!(refused.retry_after.unwrap() <= Duration::from_secs(1));
        assert!(limits.admit([10, 0, 0, 2].into()).is_ok());
    }

    #[test]
    fn a_command_flood_is_detected() {
        let config = Config {
            client_command_rate: 1.0,
            client_command_burst: 3,
            client_command_flood: 5,
            ..Config::default()
        };
        let mut rate = CommandRate::new(&config);
        for _ in 0..3 {
            assert_eq!(rate.check(), Verdict::Allow);
        }
        for _ in 0..4 {
            assert!(matches!(rate.check(), Verdict::Refuse(_)));
        }
        assert_eq!(rate.check(), Verdict::Flood);
        let off = Config {
            client_command_rate: 0.0,
            ..Config::default()
        };
        let mut rate = CommandRate::new(&off);
        for _ in 0..10_000 {
            assert_eq!(rate.check(), Verdict::Allow);
        }
    }
}
