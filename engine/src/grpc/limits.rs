//! Per-topic publish limits from the `[[topics]]` rules: `publish_rate` and
//! `publish_burst` (a token bucket per topic, keyed by the topic name) and
//! `message_ttl` (the time to live of a publish that names none). The first rule
//! whose pattern matches a topic decides, as for subscribing; a topic whose rule
//! sets no limit (or that no rule matches) is not limited.
//!
//! A publish over the rate is RESOURCE_EXHAUSTED, with the wait in the message
//! and in the `retry-after-ms` trailer (docs/grpc.md).

use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, RateLimiter, clock::Clock as _};
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{limits::quota, rules::TopicRule, topic_name::TopicPattern};

/// The trailer that carries how long to wait, in milliseconds.
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";

/// One rule's limits.
struct Limit {
    pattern: TopicPattern,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    ttl: Option<Duration>,
}

/// The publish limits of every rule, in rule order.
pub(crate) struct PublishLimits {
    /// Empty when no rule sets a publish limit: the publish path skips the lookup.
    limits: Vec<Limit>,
}

impl std::fmt::Debug for PublishLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishLimits")
            .field("rules", &self.limits.len())
            .finish()
    }
}

impl PublishLimits {
    /// The limits of the rules (checked by `Config::validate`; a rule whose
    /// pattern does not parse limits nothing).
    pub(crate) fn new(rules: &[TopicRule], max_topic_len: usize) -> Self {
        let any = rules
            .iter()
            .any(|r| r.publish_rate.is_some() || r.message_ttl.is_some());
        if !any {
            return Self { limits: Vec::new() };
        }
        let limits = rules
            .iter()
            .filter_map(|rule| {
                let pattern = TopicPattern::parse(&rule.pattern, max_topic_len).ok()?;
                Some(Limit {
                    pattern,
                    rate: rule
                        .publish_rate
                        .and_then(|rate| quota(rate, rule.publish_burst.unwrap_or(0)))
                        .map(RateLimiter::dashmap),
                    ttl: rule.message_ttl.map(|d| d.0),
                })
            })
            .collect();
        Self { limits }
    }

    /// Takes a publish token for `topic` (a valid topic name). `Ok` carries the
    /// rule's default TTL; `Err` is RESOURCE_EXHAUSTED with the wait.
    pub(crate) fn admit(&self, topic: &str) -> Result<Option<Duration>, Status> {
        if self.limits.is_empty() {
            return Ok(None);
        }
        let Some(limit) = self.limits.iter().find(|l| l.pattern.matches(topic)) else {
            return Ok(None);
        };
        if let Some(rate) = &limit.rate
            && let Err(not_until) = rate.check_key(&topic.to_owned())
        {
            let wait = not_until.wait_time_from(rate.clock().now());
            return Err(over_rate(topic, &limit.pattern, wait));
        }
        Ok(limit.ttl)
    }

    /// Forgets the buckets of topics that have been quiet long enough to be full.
    pub(crate) fn retain_recent(&self) {
        for rate in self.limits.iter().filter_map(|l| l.rate.as_ref()) {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    /// Whether any rule limits publishing (the sweeper has work).
    pub(crate) fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}

/// RESOURCE_EXHAUSTED for a publish to `topic` over its rule's rate.
fn over_rate(topic: &str, pattern: &TopicPattern, wait: Duration) -> Status {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut metadata = MetadataMap::new();
    if let Ok(value) = ms.to_string().parse() {
        metadata.insert(RETRY_AFTER_MS, value);
    }
    Status::with_metadata(
        Code::ResourceExhausted,
        format!("topic {topic:?} is over the publish rate of rule {pattern}; retry after {ms} ms"),
        metadata,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Dur, rules::Who};

    fn rule(pattern: &str, rate: Option<f64>, burst: Option<u32>, ttl: Option<u64>) -> TopicRule {
        TopicRule {
            pattern: pattern.to_owned(),
            subscribe: Some(Who::Anyone),
            publish_rate: rate,
            publish_burst: burst,
            message_ttl: ttl.map(|s| Dur(Duration::from_secs(s))),
            history_size: None,
            history_ttl: None,
        }
    }

    #[test]
    fn the_first_matching_rule_limits_each_topic_on_its_own() {
        let limits = PublishLimits::new(
            &[
                rule("broadcast:free", None, None, None),
                rule("broadcast:*", Some(1.0), Some(2), Some(5)),
            ],
            255,
        );
        assert_eq!(
            limits.admit("broadcast:a").unwrap(),
            Some(Duration::from_secs(5))
        );
        assert!(limits.admit("broadcast:a").is_ok());
        let refused = limits.admit("broadcast:a").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("retry after"), "{refused:?}");
        let ms: u64 = refused
            .metadata()
            .get(RETRY_AFTER_MS)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1000).contains(&ms));
        // Another topic of the pattern has its own bucket.
        assert!(limits.admit("broadcast:b").is_ok());
        // The first rule matches and sets no limit.
        for _ in 0..10 {
            assert_eq!(limits.admit("broadcast:free").unwrap(), None);
        }
        assert_eq!(limits.admit("other").unwrap(), None);
        assert!(PublishLimits::new(&[rule("a", None, None, None)], 255).is_empty());
    }
}
