//! One connection's shared state: its id, identity, outgoing queue, subscriptions
//! and liveness. The session (reader) and the writer own the socket; everything
//! else — publishers, the registry, the control plane — reaches the connection
//! only through this.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use crate::{queue::Queue, topic::Topic};

/// A connection id: a slab slot plus a generation, so that a reused slot is never
/// mistaken for its previous owner. Shown to clients and producers as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Builds an id from a slot and a generation.
    pub fn new(slot: usize, generation: u32) -> Self {
        Self((u64::from(generation) << 32) | (slot as u64 & 0xffff_ffff))
    }

    /// The slab slot.
    pub fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    /// Parses the text form; `None` for anything that is not 16 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The topics a connection is in. Guarded by the connection's own mutex, which is
/// always taken before a topic's member lock.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// The topics, in subscription order.
    pub topics: Vec<Arc<Topic>>,
    /// Set once the connection has left the registry: nothing may be added.
    pub closed: bool,
}

impl Subscriptions {
    /// Whether the connection is in `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.topics.iter().any(|t| t.name() == name)
    }
}

/// The shared state of one connection.
#[derive(Debug)]
pub struct Conn {
    id: ConnId,
    user: Option<Arc<str>>,
    info: Option<Arc<str>>,
    /// Frames waiting for the writer.
    pub queue: Queue,
    /// The topics the connection is in.
    subscriptions: Mutex<Subscriptions>,
    /// Milliseconds since `epoch` at which the last frame was received.
    last_seen_ms: AtomicU64,
    epoch: Instant,
}

impl Conn {
    /// A new connection with an empty queue of the given limits.
    pub fn new(id: ConnId, user: Option<Arc<str>>, info: Option<Arc<str>>, queue: Queue) -> Self {
        Self {
            id,
            user,
            info,
            queue,
            subscriptions: Mutex::new(Subscriptions::default()),
            last_seen_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The user the connection belongs to, if any.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// The client info (JSON text), if any.
    pub fn info(&self) -> Option<&Arc<str>> {
        self.info.as_ref()
    }

    /// Locks the subscription list.
    pub fn subscriptions(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        // Every update is a single push, retain or flag: a poisoned lock is usable.
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a frame was received now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last frame was received (the connection's start if none was).
    pub fn last_seen(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_keep_slot_and_generation_apart() {
        let a = ConnId::new(5, 1);
        let b = ConnId::new(5, 2);
        assert_ne!(a, b);
        assert_eq!(a.slot(), 5);
        assert_eq!(ConnId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string(), "0000000100000005");
        assert_eq!(ConnId::parse("xyz"), None);
        assert_eq!(ConnId::parse("zzzzzzzzzzzzzzzz"), None);
    }
}
