//! The topic name rule, and topic patterns used to watch many topics at once.
//!
//! A topic is one or more segments separated by `:`; a segment is one or more of
//! `A-Z a-z 0-9 _ - = @ ~ +`. The rule keeps every topic mappable onto a NATS
//! subject (`room:general` ↔ `<prefix>.room.general`) and leaves `*` and `>` free
//! for patterns. See docs/protocol.md.

use std::fmt;

/// Why a topic name or pattern was refused. The message names the topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    /// The name is empty.
    #[error("topic is empty")]
    Empty,
    /// The name is longer than the configured limit.
    #[error("topic {topic:?} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The first bytes of the refused name.
        topic: String,
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A segment between two `:` is empty.
    #[error("topic {0:?} has an empty segment (segments are separated by ':')")]
    EmptySegment(String),
    /// A character outside the allowed set.
    #[error(
        "topic {topic:?} contains {ch:?}; allowed are A-Z a-z 0-9 _ - = @ ~ + and ':' between segments"
    )]
    BadChar {
        /// The refused name.
        topic: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// A pattern wildcard that is not the whole last segment.
    #[error("pattern {0:?}: '*' and '>' may only form the whole last segment")]
    BadWildcard(String),
}

fn is_segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b'~' | b'+')
}

fn shorten(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Checks `name` against the topic rule with a length limit of `max_len` bytes.
pub(crate) fn validate(name: &str, max_len: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > max_len {
        return Err(TopicError::TooLong {
            topic: shorten(name),
            len: name.len(),
            max: max_len,
        });
    }
    for segment in name.split(':') {
        if segment.is_empty() {
            return Err(TopicError::EmptySegment(name.to_owned()));
        }
        if let Some(ch) = segment
            .chars()
            .find(|c| !c.is_ascii() || !is_segment_char(*c as u8))
        {
            return Err(TopicError::BadChar {
                topic: name.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

/// A topic or a topic pattern: `room:general`, `room:*` (any one last segment) or
/// `room:>` (one or more trailing segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicPattern {
    /// Exactly this topic.
    Exact(String),
    /// `prefix:*`: the prefix plus exactly one more segment. Holds `prefix:`.
    OneSegment(String),
    /// `prefix:>`: the prefix plus one or more segments. Holds `prefix:`.
    Rest(String),
}

impl TopicPattern {
    /// Parses a topic or pattern, validating it with the topic rule.
    pub(crate) fn parse(pattern: &str, max_len: usize) -> Result<Self, TopicError> {
        let (head, wildcard) = match pattern.rsplit_once(':') {
            Some((head, "*")) => (Some(head), Some(false)),
            Some((head, ">")) => (Some(head), Some(true)),
            _ if pattern == "*" || pattern == ">" => (None, Some(pattern == ">")),
            _ => (None, None),
        };
        match (head, wildcard) {
            (_, None) => {
                if pattern.contains(['*', '>']) {
                    return Err(TopicError::BadWildcard(pattern.to_owned()));
                }
                validate(pattern, max_len)?;
                Ok(Self::Exact(pattern.to_owned()))
            }
            (None, Some(rest)) => {
                let prefix = String::new();
                Ok(if rest {
                    Self::Rest(prefix)
                } else {
                    Self::OneSegment(prefix)
                })
            }
            (Some(head), Some(rest)) => {
                if head.contains(['*', '>']) {
                    return Err(TopicError::BadWildcard(pattern.to_owned()));
                }
                validate(head, max_len)?;
                let prefix = format!("{head}:");
                Ok(if rest {
                    Self::Rest(prefix)
                } else {
                    Self::OneSegment(prefix)
                })
            }
        }
    }

    /// Whether `topic` (a valid topic name) matches this pattern.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t == topic,
            Self::OneSegment(prefix) => topic
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(':')),
            Self::Rest(prefix) => topic
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| !rest.is_empty()),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(t) => f.write_str(t),
            Self::OneSegment(p) => write!(f, "{p}*"),
            Self::Rest(p) => write!(f, "{p}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_examples() {
        for t in [
            "room:general",
            "user:123",
            "broadcast:global",
            "prices:EUR-USD",
            "a",
            "x=y@z~1+2_3",
        ] {
            assert_eq!(validate(t, 255), Ok(()), "{t}");
        }
    }

    #[test]
    fn refuses_what_the_rule_forbids() {
        assert_eq!(validate("", 255), Err(TopicError::Empty));
        assert!(matches!(
            validate("room::x", 255),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate(":x", 255),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate("x:", 255),
            Err(TopicError::EmptySegment(_))
        ));
        for bad in ["a b", "a.b", "a*", "a>", "é", "a\n"] {
            assert!(
                matches!(validate(bad, 255), Err(TopicError::BadChar { .. })),
                "{bad}"
            );
        }
        let long = "a".repeat(256);
        assert!(matches!(
            validate(&long, 255),
            Err(TopicError::TooLong { len: 256, .. })
        ));
        assert_eq!(validate(&long[..255], 255), Ok(()));
    }

    #[test]
    fn patterns_match_one_or_more_segments() {
        let one = TopicPattern::parse("room:*", 255).unwrap_or(TopicPattern::Exact(String::new()));
        assert!(one.matches("room:a"));
        assert!(!one.matches("room:a:b"));
        assert!(!one.matches("room"));
        assert!(!one.matches("rooms:a"));
        let rest = TopicPattern::parse("room:>", 255).unwrap_or(TopicPattern::Exact(String::new()));
        assert!(rest.matches("room:a:b"));
        assert!(!rest.matches("room"));
        let exact = TopicPattern::parse("room:a", 255).unwrap_or(TopicPattern::Rest(String::new()));
        assert!(exact.matches("room:a") && !exact.matches("room:b"));
        let all = TopicPattern::parse(">", 255).unwrap_or(TopicPattern::Exact(String::new()));
        assert!(all.matches("x") && all.matches("x:y"));
        assert!(TopicPattern::parse("ro*m:a", 255).is_err());
        assert!(TopicPattern::parse("*:a", 255).is_err());
        assert_eq!(one.to_string(), "room:*");
    }
}
