//! A topic's subscriber list, published as an immutable snapshot made of shared
//! chunks.
//!
//! Publishers walk a [`Snapshot`] without any lock. Its owner, [`Subscribers`],
//! changes the list copy-on-write: a subscribe or unsubscribe copies at most two
//! chunks of [`CHUNK`] connections and the list of chunk pointers, and every
//! other chunk is shared with the snapshots before it. A change to a topic of `n`
//! subscribers costs about `n / CHUNK + 2 * CHUNK` reference-count updates instead
//! of `n`, so a burst of 20,000 subscribes to one topic stays linear, and every
//! change can be published at once — a subscriber is in the snapshot before its
//! subscribe returns.

use std::{collections::HashMap, sync::Arc};

use crate::conn::{Conn, ConnId};

/// Connections per chunk.
pub(crate) const CHUNK: usize = 64;

type Chunk = Arc<Vec<Arc<Conn>>>;

/// An immutable list of a topic's subscribers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    chunks: Vec<Chunk>,
}

impl Snapshot {
    /// Every subscriber, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Conn>> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// Whether there is no subscriber.
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Number of subscribers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }
}

/// The mutable side of a subscriber list: where each connection sits, and the
/// chunks the next snapshot is made of.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    list: Snapshot,
    positions: HashMap<ConnId, usize>,
}

impl Subscribers {
    /// Adds a connection; false if it was already there.
    pub(crate) fn insert(&mut self, conn: Arc<Conn>) -> bool {
        let index = self.positions.len();
        match self.positions.entry(conn.id()) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(index),
        };
        match self.list.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(conn),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(conn);
                self.list.chunks.push(Arc::new(chunk));
            }
        }
        true
    }

    /// Removes a connection; false if it was not there. The last connection takes
    /// its place, so the list stays dense.
    pub(crate) fn remove(&mut self, id: ConnId) -> bool {
        let Some(index) = self.positions.remove(&id) else {
            return false;
        };
        let last = self.positions.len();
        let chunks = &mut self.list.chunks;
        let Some(tail) = chunks.last_mut() else {
            return false;
        };
        let moved = Arc::make_mut(tail).pop();
        if tail.is_empty() {
            chunks.pop();
        }
        if index != last
            && let Some(moved) = moved
        {
            self.positions.insert(moved.id(), index);
            if let Some(chunk) = chunks.get_mut(index / CHUNK) {
                Arc::make_mut(chunk)[index % CHUNK] = moved;
            }
        }
        true
    }

    /// Whether the list is empty.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The current list as a snapshot sharing every chunk.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.list.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::queue::Queue;

    fn conn(n: u32) -> Arc<Conn> {
        Arc::new(Conn::new(
            ConnId::new(n as usize, 1),
            None,
            None,
            Queue::new(1, 1),
            Default::default(),
        ))
    }

    fn ids(s: &Snapshot) -> BTreeSet<ConnId> {
        s.iter().map(|c| c.id()).collect()
    }

    #[test]
    fn follows_a_model_through_random_changes_and_keeps_old_snapshots_intact() {
        let conns: Vec<_> = (0..500).map(conn).collect();
        let mut subs = Subscribers::default();
        let mut model = BTreeSet::new();
        let mut kept = Vec::new();
        // A deterministic pseudo-random walk of inserts and removes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = &conns[(x % 500) as usize];
            if x.is_multiple_of(3) {
                assert_eq!(subs.remove(c.id()), model.remove(&c.id()));
            } else {
                assert_eq!(subs.insert(Arc::clone(c)), model.insert(c.id()));
            }
            if step % 997 == 0 {
                kept.push((subs.snapshot(), model.clone()));
            }
        }
        let now = subs.snapshot();
        assert_eq!(ids(&now), model);
        assert_eq!(now.len(), model.len());
        assert_eq!(now.iter().count(), model.len(), "no connection twice");
        for (snapshot, then) in kept {
            assert_eq!(ids(&snapshot), then, "an older snapshot never changes");
        }
        for id in model.clone() {
            assert!(subs.remove(id));
        }
        assert!(subs.is_empty() && subs.snapshot().is_empty());
    }

    #[test]
    fn a_change_copies_only_the_chunks_it_touches() {
        let conns: Vec<_> = (0..(CHUNK as u32 * 4)).map(conn).collect();
        let mut subs = Subscribers::default();
        for c in &conns {
            subs.insert(Arc::clone(c));
        }
        let before = subs.snapshot();
        subs.remove(conns[0].id());
        let after = subs.snapshot();
        let shared = before
            .chunks
            .iter()
            .zip(&after.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(
            shared, 2,
            "the first and last chunks were copied, the middle two shared"
        );
    }
}
