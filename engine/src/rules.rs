//! Topic rules: the `[[topics]]` tables of the config file. A rule matches topics
//! by pattern (`user:*`, `room:>`, `broadcast:global`) and says who may subscribe
//! to them; the first rule that matches a topic and has `subscribe` decides
//! (docs/security.md). A rule without `subscribe` only carries publish settings
//! and history.
//!
//! With authentication on, a topic no rule matches is refused; in open mode (no
//! token key) such a topic is allowed, as it was before rules existed. Producers
//! (gRPC Subscribe) are never checked: they are the server.
//!
//! A rule also carries the per-pattern publish limits (`publish_rate`,
//! `publish_burst`, `message_ttl`, `history_size`, `history_ttl`); they are parsed
//! here so the file schema is complete, and applied by the publish path.

use std::sync::Arc;

use serde::Deserialize;

use crate::{
    config::Dur,
    topic_name::{TopicError, TopicPattern},
};

/// Who may subscribe to the topics of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    /// Every client, authenticated or not.
    Anyone,
    /// Every client with a verified token.
    Authenticated,
    /// The client whose user id is the segment the pattern's `*` matches.
    Owner,
    /// A client whose token lists the topic (or a pattern matching it) in `topics`.
    Granted,
    /// No client: only producers, through gRPC Subscribe.
    Server,
}

/// One `[[topics]]` table of the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// The topics this rule applies to: a topic, `prefix:*` or `prefix:>`.
    pub pattern: String,
    /// Who may subscribe; a rule without it leaves the decision to the next
    /// matching rule that has one.
    #[serde(default)]
    pub subscribe: Option<Who>,
    /// Most messages per second published to one matching topic (token bucket).
    #[serde(default)]
    pub publish_rate: Option<f64>,
    /// Burst allowed above `publish_rate`.
    #[serde(default)]
    pub publish_burst: Option<u32>,
    /// Default time to live of a message published to a matching topic.
    #[serde(default)]
    pub message_ttl: Option<Dur>,
    /// Messages kept per matching topic for clients that catch up.
    #[serde(default)]
    pub history_size: Option<usize>,
    /// How long kept messages stay.
    #[serde(default)]
    pub history_ttl: Option<Dur>,
}

/// Why the rules could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RuleError {
    /// A pattern breaks the topic rule.
    #[error("topics rule {index} ({pattern:?}): {source}")]
    Pattern {
        /// The rule's position, from 1.
        index: usize,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        source: TopicError,
    },
    /// `owner` needs a `prefix:*` pattern.
    #[error(
        "topics rule {index} ({pattern:?}): subscribe = \"owner\" needs a pattern ending in ':*' (or \"*\")"
    )]
    OwnerNeedsStar {
        /// The rule's position, from 1.
        index: usize,
        /// The pattern.
        pattern: String,
    },
    /// A limit that makes no sense.
    #[error("topics rule {index} ({pattern:?}): {what}")]
    Limit {
        /// The rule's position, from 1.
        index: usize,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        what: &'static str,
    },
}

/// What a connection may do, as far as topic rules are concerned.
#[derive(Debug, Default, Clone)]
pub(crate) struct Principal {
    /// Set when the connection presented a verified token.
    pub(crate) authenticated: bool,
    /// The verified user id (`sub`).
    pub(crate) user: Option<Arc<str>>,
    /// The token's `topics` claim.
    pub(crate) granted: Vec<TopicPattern>,
}

/// Why a subscribe was refused by the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subscribing to {topic:?} is not allowed{why}")]
pub(crate) struct Forbidden {
    /// The refused topic.
    pub(crate) topic: String,
    /// Which rule refused it, for people.
    why: String,
}

/// The compiled rules, in file order.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    rules: Vec<(TopicPattern, Who)>,
    /// Whether a topic no rule matches is refused (authentication is on).
    deny_unmatched: bool,
}

impl Rules {
    /// Compiles the rules of the config file.
    pub(crate) fn compile(rules: &[TopicRule], max_topic_len: usize) -> Result<Self, RuleError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let index = i + 1;
            let pattern = TopicPattern::parse(&rule.pattern, max_topic_len).map_err(|source| {
                RuleError::Pattern {
                    index,
                    pattern: rule.pattern.clone(),
                    source,
                }
            })?;
            if rule.subscribe == Some(Who::Owner) && !matches!(pattern, TopicPattern::OneSegment(_))
            {
                return Err(RuleError::OwnerNeedsStar {
                    index,
                    pattern: rule.pattern.clone(),
                });
            }
            let limit = |what| {
                Err(RuleError::Limit {
                    index,
                    pattern: rule.pattern.clone(),
                    what,
                })
            };
            if rule
                .publish_rate
                .is_some_and(|r| !r.is_finite() || r <= 0.0)
            {
                return limit("publish_rate must be a positive number");
            }
            if rule.publish_burst == Some(0) {
                return limit("publish_burst must be at least 1");
            }
            if rule.message_ttl.is_some_and(|d| d.0.is_zero()) {
                return limit("message_ttl must be positive");
            }
            if rule.history_ttl.is_some_and(|d| d.0.is_zero()) {
                return limit("history_ttl must be positive");
            }
            if rule.history_ttl.is_some() && rule.history_size.is_none() {
                return limit("history_ttl needs history_size");
            }
            if let Some(who) = rule.subscribe {
                compiled.push((pattern, who));
            }
        }
        Ok(Self {
            rules: compiled,
            deny_unmatched: false,
        })
    }

    /// Refuses topics no rule matches (authentication is on).
    pub(crate) fn deny_unmatched(mut self, deny: bool) -> Self {
        self.deny_unmatched = deny;
        self
    }

    /// Whether any rule needs an authenticated client to ever allow anything.
    pub(crate) fn needs_authentication(&self) -> bool {
        self.rules
            .iter()
            .any(|(_, who)| matches!(who, Who::Authenticated | Who::Owner | Who::Granted))
    }

    /// Whether a client may subscribe to `topic` (a valid topic name).
    pub(crate) fn check(&self, topic: &str, principal: &Principal) -> Result<(), Forbidden> {
        let forbidden = |why: String| {
            Err(Forbidden {
                topic: topic.to_owned(),
                why,
            })
        };
        let Some((pattern, who)) = self.rules.iter().find(|(p, _)| p.matches(topic)) else {
            if self.deny_unmatched {
                return forbidden(": no topic rule matches it".to_owned());
            }
            return Ok(());
        };
        let allowed = match who {
            Who::Anyone => true,
            Who::Authenticated => principal.authenticated,
            Who::Owner => {
                principal.authenticated
                    && match (pattern, &principal.user) {
                        (TopicPattern::OneSegment(prefix), Some(user)) => {
                            topic.strip_prefix(prefix.as_str()) == Some(&**user)
                        }
                        _ => false,
                    }
            }
            Who::Granted => {
                principal.authenticated && principal.granted.iter().any(|g| g.matches(topic))
            }
            Who::Server => false,
        };
        if allowed {
            Ok(())
        } else {
            let who = match who {
                Who::Anyone => "anyone",
                Who::Authenticated => "authenticated clients",
                Who::Owner => "its owner",
                Who::Granted => "clients whose token grants it",
                Who::Server => "the server (gRPC Subscribe)",
            };
            forbidden(format!(" (rule {pattern}: only {who})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn user(id: &str, granted: &[&str]) -> Principal {
        Principal {
            authenticated: true,
            user: Some(Arc::from(id)),
            granted: granted
                .iter()
                .filter_map(|g| TopicPattern::parse(g, 255).ok())
                .collect(),
        }
    }

    #[test]
    fn first_match_wins_and_each_kind_decides() {
        let rules = Rules::compile(
            &[
                rule("user:admin", Who::Server),
                rule("user:*", Who::Owner),
                rule("room:>", Who::Granted),
                rule("broadcast:*", Who::Authenticated),
                rule("public:*", Who::Anyone),
            ],
            255,
        )
        .unwrap()
        .deny_unmatched(true);
        let alice = user("alice", &["room:a:>"]);
        let anon = Principal::default();
        assert!(rules.check("user:alice", &alice).is_ok());
        assert!(rules.check("user:bob", &alice).is_err());
        assert!(rules.check("user:admin", &user("admin", &[])).is_err());
        assert!(rules.check("room:a:1", &alice).is_ok());
        assert!(rules.check("room:b:1", &alice).is_err());
        assert!(rules.check("broadcast:x", &alice).is_ok());
        assert!(rules.check("broadcast:x", &anon).is_err());
        assert!(rules.check("public:x", &anon).is_ok());
        let e = rules.check("other", &alice).unwrap_err();
        assert_eq!(e.topic, "other");
        assert!(Rules::default().check("other", &anon).is_ok());
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(Rules::compile(&[rule("user:>", Who::Owner)], 255).is_err());
        assert!(Rules::compile(&[rule("a b", Who::Anyone)], 255).is_err());
        let mut r = rule("x:*", Who::Anyone);
        r.publish_rate = Some(0.0);
        assert!(Rules::compile(&[r], 255).is_err());
        let parsed: TopicRule = toml::from_str(
            "pattern = \"broadcast:*\"\nsubscribe = \"authenticated\"\npublish_rate = 10\npublish_burst = 20\nmessage_ttl = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(parsed.publish_rate, Some(10.0));
        assert_eq!(parsed.message_ttl.map(|d| d.0.as_secs()), Some(5));
        assert!(toml::from_str::<TopicRule>("pattern = \"a\"\nsubscribe = \"nobody\"").is_err());
    }

    #[test]
    fn a_rule_without_subscribe_leaves_permissions_to_the_next() {
        let history: TopicRule =
            toml::from_str("pattern = \"room:*\"\nhistory_size = 100\nhistory_ttl = \"2m\"\n")
                .unwrap();
        assert_eq!(history.subscribe, None);
        let alice = user("alice", &[]);
        let anon = Principal::default();
        let rules = Rules::compile(&[history.clone(), rule("room:*", Who::Authenticated)], 255)
            .unwrap()
            .deny_unmatched(true);
        assert!(rules.check("room:a", &alice).is_ok());
        assert!(rules.check("room:a", &anon).is_err());
        // With authentication on, nothing else decides: refused.
        let alone = Rules::compile(std::slice::from_ref(&history), 255).unwrap();
        assert!(
            Rules::compile(std::slice::from_ref(&history), 255)
                .unwrap()
                .deny_unmatched(true)
                .check("room:a", &alice)
                .is_err()
        );
        // In open mode, allowed.
        assert!(alone.check("room:a", &anon).is_ok());
    }
}
